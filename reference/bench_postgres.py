#!/usr/bin/env python3
"""loupe against PostgreSQL on the same store, queries, clients and cores (run by hand).

Loads a loupe store into PostgreSQL (Debian's packages) the way Neuronpedia keeps features:
a `features` table (statistics, logits, histogram, label) and an `activations` table (one row
per example window, tokens and values as arrays, a B-tree on the feature), with a
tsvector/GIN full-text index over the text tantivy indexes (label, top tokens, top contexts,
logit tokens). Then runs the same dashboard (GetFeature: the feature row and its examples)
and search (SearchFeatures: 20 best hits) workloads against both at the same concurrency
with pgbench and `loupe bench serve`, closed loop and open loop at the same offered rate,
and prints loupe/Postgres ratios. Both servers run as their own processes (`loupe serve`;
`--loupe-in-process` serves loupe from inside the bench), and both servers and all clients
share this machine's cores.

    python3 reference/bench_postgres.py --store target/bench-store-1m --seconds 10 \
        --json benchmarks/results/DATE-bench-postgres.json

Needs postgresql (initdb, pg_ctl, pgbench, psql) and a built `loupe` (default:
$CARGO_TARGET_DIR/release/loupe). Runs PostgreSQL as the `postgres` user when run as root.
"""

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PORT = 55432
LOUPE_PORT = 50078


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, **kw)


def as_postgres(cmd):
    return ["runuser", "-u", "postgres", "--"] + cmd if os.geteuid() == 0 else cmd


def psql(sql, db="bench"):
    return run(as_postgres([str(PG_BIN / "psql"), "-h", "/tmp", "-p", str(PORT), "-d", db, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql]), capture_output=True).stdout


def start_cluster(data: Path):
    data.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    run(as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-E", "UTF8", "--no-locale"]), stdout=subprocess.DEVNULL)
    # A read-only benchmark: durability settings do not matter; memory as a tuned server has.
    conf = "shared_buffers = 4GB\neffective_cache_size = 12GB\nwork_mem = 64MB\nmax_connections = 300\nfsync = off\nsynchronous_commit = off\nlisten_addresses = ''\n"
    with open(data / "postgresql.conf", "a") as f:
        f.write(conf)
    run(as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", f"-p {PORT} -k /tmp", "-l", str(data / "log"), "-w", "start"]), stdout=subprocess.DEVNULL)
    run(as_postgres([str(PG_BIN / "createdb"), "-h", "/tmp", "-p", str(PORT), "bench"]))


def stop_cluster(data: Path):
    subprocess.run(as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]), stdout=subprocess.DEVNULL)


LOAD = r"""
CREATE UNLOGGED TABLE raw_features (doc jsonb);
CREATE UNLOGGED TABLE raw_examples (doc jsonb);
\copy raw_features FROM '{features}' WITH (FORMAT csv, QUOTE e'\x01', DELIMITER e'\x02')
\copy raw_examples FROM '{examples}' WITH (FORMAT csv, QUOTE e'\x01', DELIMITER e'\x02')
CREATE TABLE features AS SELECT
  doc->>'dictionary_id' AS dictionary_id, (doc->>'feature')::int AS feature,
  (doc->>'max_activation')::real AS max_activation, (doc->>'mean_activation')::real AS mean_activation,
  (doc->>'density')::float8 AS density, (doc->>'fire_count')::bigint AS fire_count,
  (doc->>'histogram_width')::real AS histogram_width, doc->'histogram_counts' AS histogram_counts,
  doc->'top_logits' AS top_logits, doc->'bottom_logits' AS bottom_logits, doc->'neighbours' AS neighbours,
  (doc->>'decoder_norm')::real AS decoder_norm, doc->>'label' AS label,
  to_tsvector('simple', coalesce(doc->>'label', '') || ' ' ||
    (SELECT coalesce(string_agg(t, ' '), '') FROM jsonb_array_elements_text(doc->'top_tokens') t) || ' ' ||
    (SELECT coalesce(string_agg(t, ' '), '') FROM jsonb_array_elements_text(doc->'top_contexts') t) || ' ' ||
    (SELECT coalesce(string_agg(l->>'token', ' '), '') FROM jsonb_array_elements(doc->'top_logits') l)) AS tsv
FROM raw_features;
ALTER TABLE features ADD PRIMARY KEY (dictionary_id, feature);
CREATE INDEX features_tsv ON features USING gin (tsv);
CREATE TABLE activations AS SELECT
  doc->>'dictionary_id' AS dictionary_id, (doc->>'feature')::int AS feature,
  CASE WHEN doc->>'kind' = 'Top' THEN -1 ELSE (doc->'kind'->'Interval'->>'index')::int END AS interval,
  (doc->'kind'->'Interval'->>'low')::real AS interval_low, (doc->'kind'->'Interval'->>'high')::real AS interval_high,
  (doc->>'rank')::int AS rank, (doc->>'max_activation')::real AS max_value, (doc->>'max_position')::int AS max_position,
  (doc->>'window')::bigint AS window_id,
  ARRAY(SELECT jsonb_array_elements_text(doc->'token_ids')::int) AS token_ids,
  ARRAY(SELECT jsonb_array_elements_text(doc->'tokens')) AS tokens,
  ARRAY(SELECT jsonb_array_elements_text(doc->'activations')::real) AS activation_values,
  (doc->>'document_id')::bigint AS document_id, (doc->>'document_offset')::int AS document_offset
FROM raw_examples;
CREATE INDEX activations_feature ON activations (dictionary_id, feature, interval, rank);
DROP TABLE raw_features;
DROP TABLE raw_examples;
VACUUM ANALYZE;
"""


def load(store: Path, loupe: str, work: Path, dictionary):
    features, examples = work / "features.jsonl", work / "examples.jsonl"
    for table, path in (("features", features), ("examples", examples)):
        print(f"exporting {table} from {store} ...", file=sys.stderr)
        extra = (["--dictionary", dictionary] if dictionary else []) + (["--no-decoders"] if table == "features" else [])
        run([loupe, "export", "--store", str(store), "--table", table, "--out", str(path)] + extra)
        os.chmod(path, 0o644)
    script = work / "load.sql"
    script.write_text(LOAD.format(features=features, examples=examples))
    os.chmod(script, 0o644)
    print("loading into PostgreSQL (tables, B-tree and GIN indexes) ...", file=sys.stderr)
    t = time.time()
    run(as_postgres([str(PG_BIN / "psql"), "-h", "/tmp", "-p", str(PORT), "-d", "bench", "-v", "ON_ERROR_STOP=1", "-q", "-f", str(script)]))
    return time.time() - t


def queries_of(work: Path, count: int):
    """Search queries: the words each feature's strongest example fires on (as `loupe bench
    serve` picks them)."""
    words = []
    with open(work / "examples.jsonl") as lines:
        for line in lines:
            # Each feature's strongest example (cheap checks before parsing the line).
            if '"kind":"Top"' not in line or '"rank":0,' not in line:
                continue
            e = json.loads(line)
            word = e["tokens"][e["max_position"]].strip().lower()
            if len(word) >= 2 and word.isalnum() and word not in words:
                words.append(word)
            if len(words) == count:
                break
    path = work / "queries.txt"
    path.write_text("\n".join(words) + "\n")
    os.chmod(path, 0o644)
    return words, path


def warm_page_cache(root: Path):
    """Reads every file under `root` once, so that the OS page cache holds them."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def pgbench(script: str, clients: int, seconds: float, work: Path, rate=None):
    """Runs a pgbench script: QPS and latency percentiles from its per-transaction log."""
    path = work / "script.sql"
    path.write_text(script)
    os.chmod(path, 0o644)
    logs = work / "pglogs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    os.chmod(logs, 0o777)
    cmd = [str(PG_BIN / "pgbench"), "-h", "/tmp", "-p", str(PORT), "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(int(seconds)), "-f", str(path), "-l", "--log-prefix", str(logs / "tx"), "bench"]
    if rate:
        cmd += ["-R", str(rate)]
    out = run(as_postgres(cmd), capture_output=True, cwd=str(logs)).stdout
    latencies, lags = [], []
    for log in logs.iterdir():
        for line in log.read_text().splitlines():
            fields = line.split()
            # client transaction time_us script epoch epoch_us [schedule_lag_us]
            lag = int(fields[6]) if rate and len(fields) > 6 else 0
            latencies.append((int(fields[2]) + lag) / 1e3)
            lags.append(lag / 1e3)
    tps = next(float(l.split("=")[1].split()[0]) for l in out.splitlines() if l.startswith("tps ="))
    return {"qps": tps, "p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99), "p999_ms": percentile(latencies, 0.999),
            "schedule_lag_p99_ms": percentile(lags, 0.99), "transactions": len(latencies)}


def percentile(values, q: float) -> float:
    """The value at quantile `q` of `values` (0 when there are none), as `loupe bench serve` picks it."""
    ordered = sorted(values)
    return ordered[round((len(ordered) - 1) * q)] if ordered else 0.0


@contextlib.contextmanager
def loupe_server(loupe: str, store: Path, caches: str):
    """`loupe serve` on the store as its own process, as PostgreSQL runs (caches "off" or "on")."""
    env = dict(os.environ)
    if caches == "off":
        env.update(LOUPE_DASHBOARD_CACHE_BYTES="0", LOUPE_SEARCH_CACHE_BYTES="0")
    addr = f"127.0.0.1:{LOUPE_PORT}"
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen([loupe, "serve", "--store", str(store), "--no-model", "--addr", addr], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            for _ in range(240):
                log.seek(0)
                started = [line for line in log.read().splitlines() if "async workers" in line]
                if started:
                    break
                if server.poll() is not None:
                    log.seek(0)
                    sys.exit(f"loupe serve exited with {server.returncode}:\n{log.read()}")
                time.sleep(0.5)
            else:
                sys.exit("loupe serve did not start serving within 120 s")
            # e.g. "2 async workers on 2 CPUs, each pinned to a CPU of its own (pin_workers = auto)"
            yield f"http://{addr}", started[0]
        finally:
            server.terminate()
            server.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=Path("target/bench-store-1m"))
    ap.add_argument("--loupe", default=str(Path(os.environ.get("CARGO_TARGET_DIR", "/work/target")) / "release" / "loupe"))
    ap.add_argument("--clients", default="1,16,64")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--queries", type=int, default=200, help="distinct search queries")
    ap.add_argument("--open-loop", type=float, default=0.5, help="offered rate as a fraction of loupe's best QPS (same rate for both)")
    ap.add_argument("--dictionary", help="the dictionary to load (default: the store's only one)")
    ap.add_argument("--keep", type=Path, help="keep the PostgreSQL cluster and exports here (reused when present)")
    ap.add_argument("--decode-replies", action="store_true",
                    help="loupe's clients build every reply into messages; by default they receive replies whole as bytes, as pgbench receives rows without converting them")
    ap.add_argument("--loupe-in-process", action="store_true",
                    help="serve loupe from inside `loupe bench serve` (its own runtime) instead of a separate `loupe serve` process, as PostgreSQL is")
    ap.add_argument("--json", type=Path, help="write the raw figures here")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]

    work = args.keep or Path(tempfile.mkdtemp(prefix="loupe-pg-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)  # the postgres user reads and writes under it
    data = work / "pgdata"
    fresh = not data.exists()
    load_seconds = None
    try:
        if fresh:
            start_cluster(data)
            load_seconds = load(args.store, args.loupe, work, args.dictionary)
        else:
            run(as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", f"-p {PORT} -k /tmp", "-l", str(data / "log"), "-w", "start"]), stdout=subprocess.DEVNULL)
        n_features = int(psql("SELECT count(*) FROM features"))
        dictionary = psql("SELECT dictionary_id FROM features LIMIT 1").strip()
        words, queries_path = queries_of(work, args.queries)
        psql("DROP TABLE IF EXISTS bench_queries; CREATE TABLE bench_queries (id int PRIMARY KEY, query tsquery)")
        values = ",".join(f"({i + 1}, plainto_tsquery('simple', '{w}'))" for i, w in enumerate(words))
        psql(f"INSERT INTO bench_queries VALUES {values}; ANALYZE bench_queries")
        quoted = dictionary.replace("'", "''")
        dashboard = (
            f"\\set f random(0, {n_features - 1})\n"
            f"SELECT * FROM features WHERE dictionary_id = '{quoted}' AND feature = :f;\n"
            f"SELECT * FROM activations WHERE dictionary_id = '{quoted}' AND feature = :f ORDER BY interval, rank;\n"
        )
        search = (
            f"\\set q random(1, {len(words)})\n"
            "SELECT f.dictionary_id, f.feature, f.label, f.max_activation, f.density, ts_rank(f.tsv, q.query) AS score "
            "FROM features f, bench_queries q WHERE q.id = :q AND f.tsv @@ q.query ORDER BY score DESC LIMIT 20;\n"
        )
        # Both stores' files are read once into the OS page cache, as a served store's are
        # after a while, so that neither side measures the disk (a build between runs had
        # left two thirds of loupe's dashboards out of the cache and made its tail a disk's).
        warm_page_cache(args.store)
        warm_page_cache(data)
        # Then one pass over the workload each.
        pgbench(dashboard, 16, 3, work)
        pgbench(search, 16, 3, work)

        print("measuring loupe (caches off, then on) ...", file=sys.stderr)
        loupe, loupe_workers = {}, {}
        for caches in ("off", "on"):
            cmd = [args.loupe, "bench", "serve", "--synthetic-only", "--calls", "search,feature", "--clients", args.clients,
                   "--seconds", str(args.seconds), "--queries", str(queries_path), "--open-loop", str(args.open_loop), "--json"]
            if args.decode_replies:
                cmd.append("--decode-replies")
            if args.loupe_in_process:
                cmd += ["--synthetic", str(args.store)]
                if caches == "off":
                    cmd += ["--dashboard-cache-bytes", "0", "--search-cache-bytes", "0"]
                loupe[caches] = json.loads(run(cmd, capture_output=True).stdout)["rows"]
            else:
                with loupe_server(args.loupe, args.store, caches) as (url, workers):
                    loupe[caches] = json.loads(run(cmd + ["--server", url], capture_output=True).stdout)["rows"]
                    loupe_workers[caches] = workers

        rows = []
        for call, script in (("GetFeature", dashboard), ("SearchFeatures", search)):
            for c in clients:
                pg = pgbench(script, c, args.seconds, work)
                for caches in ("off", "on"):
                    ours = next(r for r in loupe[caches] if r["call"] == call and r.get("clients") == c)
                    rows.append({"call": call, "clients": c, "loupe_caches": caches, "loupe_qps": ours["qps"], "postgres_qps": pg["qps"], "ratio_qps": ours["qps"] / pg["qps"],
                                 "loupe_fraction_of_floor_qps": ours.get("fraction_of_floor_qps"),
                                 "loupe_p50_ms": ours["p50_ms"], "loupe_p99_ms": ours["p99_ms"], "postgres_p50_ms": pg["p50_ms"], "postgres_p99_ms": pg["p99_ms"]})
            for caches in ("off", "on"):
                ours = next(r for r in loupe[caches] if r["call"] == f"{call} open loop")
                pg = pgbench(script, 64, args.seconds, work, rate=round(ours["offered_qps"]))
                rows.append({"call": f"{call} open loop", "loupe_caches": caches, "offered_qps": ours["offered_qps"], "loupe_achieved_qps": ours["achieved_qps"], "postgres_achieved_qps": pg["qps"],
                             "loupe_p50_ms": ours["p50_ms"], "loupe_p99_ms": ours["p99_ms"], "loupe_p999_ms": ours["p999_ms"], "postgres_p50_ms": pg["p50_ms"], "postgres_p99_ms": pg["p99_ms"], "postgres_p999_ms": pg["p999_ms"],
                             "loupe_client_lag_p99_ms": ours.get("client_lag_p99_ms"), "postgres_schedule_lag_p99_ms": pg["schedule_lag_p99_ms"],
                             # CPU time the hypervisor stole during loupe's open loop (all vCPUs; ms)
                             "loupe_steal_ms": ours.get("steal_ms"), "loupe_steal_worst_100ms_ms": ours.get("steal_worst_100ms_ms")})
        server_version = psql("SHOW server_version").strip()
    finally:
        stop_cluster(data)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"store {args.store}: {n_features} features of {dictionary}; {len(words)} search queries; {os.cpu_count()} cores shared by servers and clients")
    if load_seconds:
        print(f"PostgreSQL load (export, COPY, tables, indexes, VACUUM ANALYZE): {load_seconds:.0f} s")
    print(f"{'call':<26} {'clients':>7} {'caches':>6} {'loupe QPS':>10} {'PG QPS':>9} {'ratio':>6} {'loupe p99':>10} {'PG p99':>8} {'loupe/floor':>11}")
    for r in rows:
        if "offered_qps" in r:
            steal = f" (steal {r['loupe_steal_ms']:.0f} ms, worst 100 ms {r['loupe_steal_worst_100ms_ms']:.0f})" if r.get("loupe_steal_ms") is not None else ""
            print(f"{r['call']:<26} {'64':>7} {r['loupe_caches']:>6} offered {r['offered_qps']:.0f}/s: loupe {r['loupe_achieved_qps']:.0f}/s p99 {r['loupe_p99_ms']:.2f} ms{steal}; "
                  f"PostgreSQL {r['postgres_achieved_qps']:.0f}/s p99 {r['postgres_p99_ms']:.2f} ms")
        else:
            print(f"{r['call']:<26} {r['clients']:>7} {r['loupe_caches']:>6} {r['loupe_qps']:>10.0f} {r['postgres_qps']:>9.0f} {r['ratio_qps']:>5.2f}x {r['loupe_p99_ms']:>8.2f}ms {r['postgres_p99_ms']:>6.2f}ms {r['loupe_fraction_of_floor_qps'] or 0:>10.2f}x")
    print("targets: GetFeature >= 1.5x PostgreSQL's dashboard QPS, SearchFeatures >= 1.0x PostgreSQL full-text (64 clients)")
    print(f"loupe's clients {'decoded every reply into messages' if args.decode_replies else 'received every reply whole, as bytes (pgbench: rows, unconverted)'}")
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], text=True, capture_output=True).stdout.strip()
        report = {"store": str(args.store), "features": n_features, "queries": len(words), "seconds": args.seconds, "load_seconds": load_seconds, "cores": os.cpu_count(),
                  "postgres": server_version, "commit": commit, "loupe": str(args.loupe),
                  "loupe_server": "inside loupe bench serve" if args.loupe_in_process else "separate loupe serve process",
                  # The server's settings from the environment (LOUPE_PIN_WORKERS, ...), as it ran.
                  "loupe_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("LOUPE_")},
                  # What the server did with its async workers, from its start-up line, per cache setting.
                  "loupe_workers": loupe_workers,
                  "loupe_replies": "decoded into messages" if args.decode_replies else "received whole, kept as bytes", "rows": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
