"""The Python client and the CLI against a real `loupe serve` with mutual TLS and tokens
(started by scripts/test_python_client.sh with certificates from `loupe tls create` and
tokens from `loupe token create`)."""

import os
import subprocess

import pytest

import loupe

ADDRESS = os.environ.get("LOUPE_TEST_SECURE_SERVER", "")
CERTS = os.environ.get("LOUPE_TEST_CERTS", "")
READ = os.environ.get("LOUPE_TEST_READ_TOKEN", "")
LABEL = os.environ.get("LOUPE_TEST_LABEL_TOKEN", "")
LOUPE = os.environ.get("LOUPE_BINARY", "loupe")

pytestmark = pytest.mark.skipif(not ADDRESS, reason="needs the TLS server of scripts/test_python_client.sh")


def secure_client(token=READ, client_cert=True):
    cert = dict(client_cert=f"{CERTS}/client.pem", client_key=f"{CERTS}/client.key") if client_cert else {}
    return loupe.Client(ADDRESS, timeout=30, token=token, tls_ca=f"{CERTS}/ca.pem", **cert)


def test_tls_and_a_read_token_search():
    with secure_client() as c:
        assert c.dictionaries()
        assert isinstance(c.search("the", limit=3), list)


def test_missing_token_and_missing_scope_are_refused():
    with secure_client(token="") as c:
        with pytest.raises(loupe.LoupeError) as e:
            c.dictionaries()
        assert e.value.code == "UNAUTHENTICATED"
    with secure_client() as c:
        d = c.dictionaries()[0]
        with pytest.raises(loupe.LoupeError) as e:
            c.label(d.dictionary_id, 0, "not allowed")
        assert e.value.code == "PERMISSION_DENIED" and '"label"' in e.value.message


def test_no_client_certificate_no_connection():
    with secure_client(client_cert=False) as c:
        with pytest.raises(loupe.LoupeError) as e:
            c.dictionaries()
        assert e.value.code == "UNAVAILABLE"


def test_labels_over_tls_and_quotas_give_a_retry_hint():
    with secure_client(token=LABEL) as c:
        d = c.dictionaries()[0]
        c.label(d.dictionary_id, 1, "labelled over TLS", author="someone-else")
        codes = []
        for _ in range(12):  # the token's quota is 5 requests per second
            try:
                c.search("the", limit=1)
            except loupe.LoupeError as e:
                codes.append(e)
        assert codes and codes[0].code == "RESOURCE_EXHAUSTED", codes
        assert 0 < codes[0].retry_after <= 1.0
    out = subprocess.run([LOUPE, "show", f"{d.dictionary_id}/1", "--json", "--server", ADDRESS, "--tls-ca", f"{CERTS}/ca.pem",
                          "--client-cert", f"{CERTS}/client.pem", "--client-key", f"{CERTS}/client.key", "--token", READ],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "labelled over TLS" in out.stdout


def test_the_cli_says_what_is_missing():
    base = [LOUPE, "dictionaries", "--server", ADDRESS, "--tls-ca", f"{CERTS}/ca.pem", "--client-cert", f"{CERTS}/client.pem", "--client-key", f"{CERTS}/client.key"]
    env = {k: v for k, v in os.environ.items() if k != "LOUPE_TOKEN"}
    out = subprocess.run(base, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode != 0 and "token" in out.stderr and "Unauthenticated" in out.stderr, out.stderr
    out = subprocess.run(base + ["--token", READ], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    listed = subprocess.run([LOUPE, "token", "list", "--json"], capture_output=True, text=True, timeout=60)
    assert "py-reader" in listed.stdout and READ.split("_")[2] not in listed.stdout, "lists tokens, never secrets"
