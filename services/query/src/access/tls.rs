//! TLS: the server's identity (and the CA of client certificates, for mutual TLS) from PEM
//! files, and a small certificate authority for setups without one (`loupe tls create`).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::error::{Result, ServiceError};

/// The server's TLS files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain of the server.
    pub cert: Option<PathBuf>,
    /// PEM private key of the server.
    pub key: Option<PathBuf>,
    /// PEM CA certificate(s): when set, clients must present a certificate it signed.
    pub client_ca: Option<PathBuf>,
}

impl TlsSettings {
    /// Whether TLS is asked for at all; cert and key must then both be given.
    pub fn enabled(&self) -> Result<bool> {
        match (&self.cert, &self.key) {
            (Some(_), Some(_)) => Ok(true),
            (None, None) if self.client_ca.is_none() => Ok(false),
            (None, None) => Err(ServiceError::InvalidArgument("tls.client_ca is set without tls.cert and tls.key: mutual TLS needs the server's own certificate and key".into())),
            (Some(_), None) => Err(ServiceError::InvalidArgument("tls.cert is set without tls.key (the server's private key, PEM)".into())),
            (None, Some(_)) => Err(ServiceError::InvalidArgument("tls.key is set without tls.cert (the server's certificate chain, PEM)".into())),
        }
    }

    /// tonic's server configuration, reading and checking the files now.
    pub fn server_config(&self) -> Result<Option<ServerTlsConfig>> {
        if !self.enabled()? {
            return Ok(None);
        }
        // tonic builds the server's rustls config with the process-wide provider: ring, as
        // tonic's own client uses (an error only means one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (cert, key) = (self.cert.as_deref().unwrap_or(Path::new("")), self.key.as_deref().unwrap_or(Path::new("")));
        let cert_pem = read_pem(cert, "tls.cert", "CERTIFICATE")?;
        let key_pem = read_pem(key, "tls.key", "PRIVATE KEY")?;
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem));
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read_pem(ca, "tls.client_ca", "CERTIFICATE")?)).client_auth_optional(false);
        }
        Ok(Some(config))
    }
}

/// A PEM file's text, with an error naming the setting when it is missing or not PEM.
pub fn read_pem(path: &Path, setting: &str, kind: &str) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| ServiceError::InvalidArgument(format!("{setting} {}: {e}", path.display())))?;
    if !text.contains("-----BEGIN ") || !text.contains(kind) {
        return Err(ServiceError::InvalidArgument(format!("{setting} {}: expected a PEM file with a {kind} block", path.display())));
    }
    Ok(text)
}

/// The files [`create_certificates`] writes.
pub struct CertificateFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A new CA and a server and a client certificate it signs, as PEM files in `dir`: the
/// server's names are `hosts` (DNS names or IP addresses), the client's common name is
/// `client_name`. Keys are written readable by their owner only. Existing files are kept
/// unless `overwrite`.
pub fn create_certificates(dir: &Path, hosts: &[String], client_name: &str, overwrite: bool) -> Result<CertificateFiles> {
    let files =
        CertificateFiles { ca: dir.join("ca.pem"), server_cert: dir.join("server.pem"), server_key: dir.join("server.key"), client_cert: dir.join("client.pem"), client_key: dir.join("client.key") };
    if hosts.is_empty() {
        return Err(ServiceError::InvalidArgument("hosts: give at least one DNS name or IP address for the server's certificate".into()));
    }
    if !overwrite {
        if let Some(existing) = [&files.ca, &files.server_cert, &files.server_key, &files.client_cert, &files.client_key].into_iter().find(|p| p.exists()) {
            return Err(ServiceError::AlreadyExists(format!("{} exists: remove it or pass --overwrite", existing.display())));
        }
    }
    let failed = |e: rcgen::Error| ServiceError::Internal(format!("making certificates: {e}"));
    let ca_key = KeyPair::generate().map_err(failed)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "loupe CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(failed)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |names: Vec<String>, common_name: &str, usage: ExtendedKeyUsagePurpose| -> Result<(String, String)> {
        let key = KeyPair::generate().map_err(failed)?;
        let mut params = CertificateParams::new(names).map_err(|e| ServiceError::InvalidArgument(format!("hosts: {e}")))?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        Ok((params.signed_by(&key, &issuer).map_err(failed)?.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(hosts.to_vec(), &hosts[0], ExtendedKeyUsagePurpose::ServerAuth)?;
    let (client_cert, client_key) = leaf(Vec::new(), client_name, ExtendedKeyUsagePurpose::ClientAuth)?;

    std::fs::create_dir_all(dir).map_err(|e| ServiceError::InvalidArgument(format!("{}: {e}", dir.display())))?;
    for (path, text, secret) in [
        (&files.ca, ca_cert.pem(), false),
        (&files.server_cert, server_cert, false),
        (&files.server_key, server_key, true),
        (&files.client_cert, client_cert, false),
        (&files.client_key, client_key, true),
    ] {
        write_file(path, &text, secret).map_err(|e| ServiceError::InvalidArgument(format!("{}: {e}", path.display())))?;
    }
    Ok(files)
}

fn write_file(path: &Path, text: &str, secret: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(if secret { 0o600 } else { 0o644 }).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_what_is_missing() {
        let only_cert = TlsSettings { cert: Some("c.pem".into()), ..TlsSettings::default() };
        assert!(only_cert.enabled().unwrap_err().to_string().contains("tls.key"));
        let only_ca = TlsSettings { client_ca: Some("ca.pem".into()), ..TlsSettings::default() };
        assert!(only_ca.enabled().unwrap_err().to_string().contains("tls.client_ca"));
        assert!(!TlsSettings::default().enabled().unwrap());
    }

    #[test]
    fn created_certificates_load_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = create_certificates(dir.path(), &["localhost".into(), "127.0.0.1".into()], "tests", false).unwrap();
        let settings = TlsSettings { cert: Some(files.server_cert.clone()), key: Some(files.server_key.clone()), client_ca: Some(files.ca.clone()) };
        assert!(settings.server_config().unwrap().is_some());
        assert!(matches!(create_certificates(dir.path(), &["localhost".into()], "tests", false), Err(ServiceError::AlreadyExists(_))));
        let swapped = TlsSettings { cert: Some(files.server_key.clone()), key: Some(files.server_key), client_ca: None };
        let err = swapped.server_config().unwrap_err().to_string();
        assert!(err.contains("tls.cert") && err.contains("CERTIFICATE"), "{err}");
        let missing = TlsSettings { cert: Some(dir.path().join("none.pem")), key: Some(files.client_key), client_ca: None };
        assert!(missing.server_config().unwrap_err().to_string().contains("none.pem"));
    }
}
