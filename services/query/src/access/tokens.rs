//! Bearer tokens, stored hashed in a JSON file: `loupe token create/list/revoke` write it,
//! the server reads it (and re-reads it when it changes, so a revocation takes effect
//! without a restart).
//!
//! A token is `loupe_<id>_<secret>`: the id (public, 12 hex digits) finds the record, the
//! secret (32 random bytes, hex) is checked against its Argon2id hash. The file never holds
//! a secret, so reading it does not let anyone call the server.

use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::scope::Scope;
use crate::error::{Result, ServiceError};

const PREFIX: &str = "loupe_";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;

/// One token as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    /// Who calls with it: recorded on labels, monitors and alerts.
    pub name: String,
    pub scopes: Vec<String>,
    /// Argon2id PHC string of the secret.
    pub hash: String,
    /// RFC 3339.
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// Quotas of this token (None: the server's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_tokens_per_minute: Option<u64>,
}

impl TokenRecord {
    pub fn scopes(&self) -> Vec<Scope> {
        self.scopes.iter().filter_map(|s| s.parse().ok()).collect()
    }

    pub fn is_live(&self) -> bool {
        self.revoked_at.is_none()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFileContents {
    tokens: Vec<TokenRecord>,
}

/// What `create` needs besides the file.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub requests_per_second: Option<f64>,
    pub model_tokens_per_minute: Option<u64>,
}

/// The token file at `path`.
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        TokenFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every record, revoked ones included; an absent file has none.
    pub fn load(&self) -> Result<Vec<TokenRecord>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ServiceError::InvalidArgument(format!("token file {}: {e}", self.path.display()))),
        };
        let contents: TokenFileContents = serde_json::from_str(&text).map_err(|e| ServiceError::InvalidArgument(format!("token file {}: {e}", self.path.display())))?;
        for record in &contents.tokens {
            for scope in &record.scopes {
                scope.parse::<Scope>().map_err(|e| ServiceError::InvalidArgument(format!("token file {}: token {}: {e}", self.path.display(), record.id)))?;
            }
        }
        Ok(contents.tokens)
    }

    /// Makes a token and stores its hash; returns the record and the token (shown once).
    pub fn create(&self, new: NewToken) -> Result<(TokenRecord, String)> {
        check_name(&new.name)?;
        if new.scopes.is_empty() {
            return Err(ServiceError::InvalidArgument("scopes: give at least one scope (read, inspect, steer, monitor, monitor-admin, label, admin)".into()));
        }
        if let Some(rps) = new.requests_per_second {
            if !(rps.is_finite() && rps > 0.0) {
                return Err(ServiceError::InvalidArgument(format!("requests_per_second is {rps}: expected a positive number")));
            }
        }
        if new.model_tokens_per_minute == Some(0) {
            return Err(ServiceError::InvalidArgument("model_tokens_per_minute is 0: expected a positive number".into()));
        }
        let mut rng = rand::rng();
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
        let (id, secret) = (hex(&id), hex(&secret));
        let mut scopes = new.scopes.clone();
        scopes.sort();
        scopes.dedup();
        let record = TokenRecord {
            id: id.clone(),
            name: new.name,
            scopes: scopes.iter().map(|s| s.name().to_string()).collect(),
            hash: hash_secret(&secret)?,
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            revoked_at: None,
            requests_per_second: new.requests_per_second,
            model_tokens_per_minute: new.model_tokens_per_minute,
        };
        self.update(|tokens| {
            tokens.push(record.clone());
            Ok(())
        })?;
        Ok((record, format!("{PREFIX}{id}_{secret}")))
    }

    /// Revokes the token with this id (or the live tokens with this name).
    pub fn revoke(&self, id_or_name: &str) -> Result<Vec<TokenRecord>> {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let mut revoked = Vec::new();
        self.update(|tokens| {
            for t in tokens.iter_mut().filter(|t| t.is_live() && (t.id == id_or_name || t.name == id_or_name)) {
                t.revoked_at = Some(now.clone());
                revoked.push(t.clone());
            }
            if revoked.is_empty() {
                return Err(ServiceError::NotFound(format!("no live token has the id or name {id_or_name:?} (see `loupe token list`)")));
            }
            Ok(())
        })?;
        Ok(revoked)
    }

    /// Read, change and replace the file under an exclusive lock, atomically (a crash
    /// leaves the old file or the new one, never half of one).
    fn update(&self, change: impl FnOnce(&mut Vec<TokenRecord>) -> Result<()>) -> Result<()> {
        let io = |e: std::io::Error| ServiceError::InvalidArgument(format!("token file {}: {e}", self.path.display()));
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(self.path.with_extension("lock")).map_err(io)?;
        lock_exclusive(&lock).map_err(io)?;
        let mut tokens = self.load()?;
        change(&mut tokens)?;
        let text = serde_json::to_string_pretty(&TokenFileContents { tokens }).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        temp.write_all(text.as_bytes()).map_err(io)?;
        temp.as_file().sync_all().map_err(io)?;
        set_owner_only(temp.path()).map_err(io)?;
        temp.persist(&self.path).map_err(|e| io(e.error))?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }
}

/// A token as a caller presents it, split into id and secret.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_of = |s: &str, bytes: usize| s.len() == bytes * 2 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, ID_BYTES) && hex_of(secret, SECRET_BYTES)).then_some((id, secret))
}

fn hash_secret(secret: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| ServiceError::Internal(format!("salt: {e}")))?;
    Ok(Argon2::default().hash_password(secret.as_bytes(), &salt).map_err(|e| ServiceError::Internal(format!("hashing a token: {e}")))?.to_string())
}

/// Whether `secret` matches the stored hash (Argon2id, constant-time comparison).
pub fn verify_secret(secret: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(secret.as_bytes(), &parsed).is_ok())
}

/// A token's name: one line of printable text, as labels are.
fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(ServiceError::InvalidArgument("name: give the name of who will call with this token".into()));
    }
    loupe_store::labels::check_label(name).map_err(|e| ServiceError::InvalidArgument(format!("name: {e}")))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn lock_exclusive(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor this function borrows; released when it closes.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str, scopes: &[Scope]) -> NewToken {
        NewToken { name: name.into(), scopes: scopes.to_vec(), requests_per_second: None, model_tokens_per_minute: None }
    }

    #[test]
    fn created_tokens_verify_and_the_file_holds_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::new(dir.path().join("tokens.json"));
        let (record, token) = file.create(new("alice", &[Scope::Read, Scope::Label, Scope::Read])).unwrap();
        assert_eq!(record.scopes, vec!["read", "label"]);
        let (id, secret) = parse_token(&token).unwrap();
        assert_eq!(id, record.id);
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(!text.contains(secret), "the secret is not stored");
        let stored = file.load().unwrap();
        assert!(verify_secret(secret, &stored[0].hash));
        assert!(!verify_secret(&"0".repeat(64), &stored[0].hash));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(file.path()).unwrap().permissions());
        assert_eq!(mode & 0o077, 0, "only the owner reads the token file");
    }

    #[test]
    fn revoke_by_id_or_name_and_bad_input_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::new(dir.path().join("tokens.json"));
        let (a, _) = file.create(new("alice", &[Scope::Read])).unwrap();
        file.create(new("bob", &[Scope::Admin])).unwrap();
        assert_eq!(file.revoke(&a.id).unwrap().len(), 1);
        assert_eq!(file.revoke("bob").unwrap()[0].name, "bob");
        assert!(file.load().unwrap().iter().all(|t| !t.is_live()));
        assert!(matches!(file.revoke("bob"), Err(ServiceError::NotFound(_))));
        assert!(file.create(new("", &[Scope::Read])).unwrap_err().to_string().contains("name"));
        assert!(file.create(new("eve\x1b[31m", &[Scope::Read])).unwrap_err().to_string().contains("name"));
        assert!(file.create(new("eve", &[])).unwrap_err().to_string().contains("scopes"));
        assert_eq!(parse_token("loupe_zz_00"), None);
        assert_eq!(parse_token("Bearer x"), None);
    }
}
