//! Who may call: bearer tokens with scopes, per-caller quotas, and the caller of the call
//! being served (a task-local, so that the services record the token's name on labels,
//! monitors and alerts and charge model tokens without passing it through every function).

pub mod quota;
pub mod scope;
pub mod tls;
pub mod tokens;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::config::{AccessConfig, Limits};
use crate::error::{Result, ServiceError};
use quota::CallerQuota;
pub use quota::QuotaLimits;
pub use scope::{scope_of, Scope};
use tokens::{TokenFile, TokenRecord};

/// The caller of the request being served.
#[derive(Debug)]
pub struct Caller {
    /// The token's name; None when the server runs without tokens.
    pub name: Option<String>,
    pub scopes: Vec<Scope>,
    /// None when the caller has no quota: nothing to count.
    quota: Option<Arc<Mutex<CallerQuota>>>,
}

impl Caller {
    /// Charges model tokens to this caller's quota.
    pub fn charge_model_tokens(&self, tokens: usize) {
        if let Some(Ok(mut quota)) = self.quota.as_ref().map(|q| q.lock()) {
            quota.charge_model_tokens(tokens, Instant::now());
        }
    }
}

tokio::task_local! {
    static CALLER: Arc<Caller>;
}

/// Runs `work` as `caller`'s (what [`current`] returns inside it).
pub async fn as_caller<F: std::future::Future>(caller: Arc<Caller>, work: F) -> F::Output {
    CALLER.scope(caller, work).await
}

/// The caller of the call this task serves (None outside a call, e.g. in tests that call a
/// service directly). Tasks a call spawns take it along explicitly.
pub fn current() -> Option<Arc<Caller>> {
    CALLER.try_with(Arc::clone).ok()
}

/// The authenticated name of the current caller, if the server checks tokens.
pub fn current_name() -> Option<String> {
    current().and_then(|c| c.name.clone())
}

/// Charges model tokens to the current caller (nothing outside a call).
pub fn charge_model_tokens(tokens: usize) {
    if let Some(caller) = current() {
        caller.charge_model_tokens(tokens);
    }
}

/// How callers are checked: the token file (None: every caller may do everything, which
/// the server allows only on loopback or with `insecure`).
pub struct Access {
    /// The server's TLS files (read when it starts serving).
    pub tls: tls::TlsSettings,
    tokens: Option<Tokens>,
    defaults: QuotaLimits,
    quotas: Mutex<HashMap<String, Arc<Mutex<CallerQuota>>>>,
    /// Argon2 checks are deliberately slow: at most one runs at a time, so a flood of bad
    /// tokens costs at most one core.
    verifying: Semaphore,
}

struct Tokens {
    file: TokenFile,
    loaded: Mutex<Loaded>,
}

#[derive(Default)]
struct Loaded {
    /// (inode, modification time, length) of the file as last read.
    stamp: Option<(u64, std::time::SystemTime, u64)>,
    records: HashMap<String, TokenRecord>,
    /// SHA-256 of tokens whose secret already verified against the current file.
    verified: HashMap<[u8; 32], String>,
}

impl Access {
    pub fn new(config: &AccessConfig, limits: &Limits) -> Result<Access> {
        let defaults = QuotaLimits {
            requests_per_second: (limits.caller_requests_per_second > 0.0).then_some(limits.caller_requests_per_second),
            model_tokens_per_minute: (limits.caller_model_tokens_per_minute > 0).then_some(limits.caller_model_tokens_per_minute),
        };
        // The TLS files are read now, so that a wrong path stops the server before it serves.
        config.tls.server_config()?;
        let tokens = match &config.tokens_file {
            Some(path) => {
                let tokens = Tokens { file: TokenFile::new(path.clone()), loaded: Mutex::new(Loaded::default()) };
                tokens.refresh(true)?;
                Some(tokens)
            }
            None => None,
        };
        Ok(Access { tls: config.tls.clone(), tokens, defaults, quotas: Mutex::new(HashMap::new()), verifying: Semaphore::new(1) })
    }

    /// Whether callers need a token.
    pub fn checks_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// Live tokens in the file now.
    pub fn live_tokens(&self) -> usize {
        self.tokens.as_ref().and_then(|t| t.loaded.lock().ok().map(|l| l.records.values().filter(|r| r.is_live()).count())).unwrap_or(0)
    }

    /// Authenticates the request's bearer token, checks that it grants what `method`
    /// needs, and admits the call under its caller's quota.
    pub async fn authorize(&self, method: &str, authorization: Option<&str>, peer: Option<SocketAddr>) -> Result<Arc<Caller>> {
        let needed = scope_of(method);
        let (key, name, scopes, limits) = match &self.tokens {
            None => (None, None, vec![Scope::Admin], self.defaults),
            Some(tokens) => {
                let record = self.authenticate(tokens, authorization).await?;
                let scopes = record.scopes();
                if !scope::grants(&scopes, needed) {
                    let held: Vec<&str> = scopes.iter().map(|s| s.name()).collect();
                    return Err(ServiceError::PermissionDenied(format!("{method} needs the scope \"{needed}\"; the token of {:?} has {}", record.name, held.join(", "))));
                }
                let limits = QuotaLimits {
                    requests_per_second: record.requests_per_second.or(self.defaults.requests_per_second),
                    model_tokens_per_minute: record.model_tokens_per_minute.or(self.defaults.model_tokens_per_minute),
                };
                (Some(record.id.clone()), Some(record.name), scopes, limits)
            }
        };
        // Without a quota there is nothing to count: no lock and no map entry per call.
        if limits.requests_per_second.is_none() && limits.model_tokens_per_minute.is_none() {
            return Ok(Arc::new(Caller { name, scopes, quota: None }));
        }
        // A token's bucket, or (without tokens) the peer address's.
        let key = match key {
            Some(token_id) => format!("token {token_id}"),
            None => format!("peer {}", peer.map_or_else(|| "unknown".into(), |p| p.ip().to_string())),
        };
        let quota = self.quota_of(&key, limits);
        let admitted = quota.lock().map_err(|_| ServiceError::Internal("quota lock poisoned".into()))?.admit(scope::is_model_call(method), Instant::now());
        if let Err((retry_after, what)) = admitted {
            let who = name.as_deref().map(|n| format!("{n:?}")).unwrap_or(key);
            return Err(ServiceError::Throttled { message: format!("{who} is over its quota of {what}; retry in {:.2} s", retry_after.as_secs_f64()), retry_after });
        }
        Ok(Arc::new(Caller { name, scopes, quota: Some(quota) }))
    }

    fn quota_of(&self, key: &str, limits: QuotaLimits) -> Arc<Mutex<CallerQuota>> {
        let mut quotas = self.quotas.lock().unwrap_or_else(|p| p.into_inner());
        let quota = quotas.entry(key.to_string()).or_insert_with(|| Arc::new(Mutex::new(CallerQuota::new(limits, Instant::now()))));
        // A token whose quota changed in the file starts afresh with the new one.
        let changed = quota.lock().map(|q| q.limits != limits).unwrap_or(true);
        if changed {
            *quota = Arc::new(Mutex::new(CallerQuota::new(limits, Instant::now())));
        }
        quota.clone()
    }

    async fn authenticate(&self, tokens: &Tokens, authorization: Option<&str>) -> Result<TokenRecord> {
        let unauthenticated = |why: &str| ServiceError::Unauthenticated(why.to_string());
        let header = authorization
            .ok_or_else(|| unauthenticated("this server needs a token: send the header `authorization: Bearer <token>` (the CLI's --token or LOUPE_TOKEN; tokens come from `loupe token create`)"))?;
        let token = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")).ok_or_else(|| unauthenticated("the authorization header must be `Bearer <token>`"))?.trim();
        let (id, secret) = tokens::parse_token(token).ok_or_else(|| unauthenticated("the token is not a loupe token (loupe_<id>_<secret>)"))?;
        tokens.refresh(false)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let record = {
            let loaded = tokens.loaded.lock().map_err(|_| ServiceError::Internal("token lock poisoned".into()))?;
            let record = loaded.records.get(id).filter(|r| r.is_live()).cloned().ok_or_else(|| unauthenticated("the token is unknown or revoked"))?;
            if loaded.verified.get(&digest).is_some_and(|verified_id| verified_id == id) {
                return Ok(record);
            }
            record
        };
        let _one_at_a_time = self.verifying.acquire().await.map_err(|_| ServiceError::Internal("token check closed".into()))?;
        let (secret, hash) = (secret.to_string(), record.hash.clone());
        let ok = tokio::task::spawn_blocking(move || tokens::verify_secret(&secret, &hash)).await.map_err(|e| ServiceError::Internal(format!("token check: {e}")))?;
        if !ok {
            return Err(unauthenticated("the token is unknown or revoked"));
        }
        if let Ok(mut loaded) = tokens.loaded.lock() {
            loaded.verified.insert(digest, id.to_string());
        }
        Ok(record)
    }
}

impl Tokens {
    /// Re-reads the file when it changed (a stat per call; token files are tiny). A file
    /// that stops parsing while serving keeps the tokens last read (and says so in the log):
    /// a half-edited file must not lock every caller out or let anyone in.
    fn refresh(&self, first: bool) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let stamp = match std::fs::metadata(self.file.path()) {
            Ok(m) => Some((m.ino(), m.modified().unwrap_or(std::time::UNIX_EPOCH), m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ServiceError::Internal(format!("token file {}: {e}", self.file.path().display()))),
        };
        let mut loaded = self.loaded.lock().map_err(|_| ServiceError::Internal("token lock poisoned".into()))?;
        if loaded.stamp == stamp && stamp.is_some() {
            return Ok(());
        }
        let records = match self.file.load() {
            Ok(records) => records,
            Err(e) if !first => {
                tracing::warn!(error = %e, "cannot re-read the token file; keeping the tokens read before");
                loaded.stamp = stamp;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        *loaded = Loaded { stamp, records: records.into_iter().map(|r| (r.id.clone(), r)).collect(), verified: HashMap::new() };
        Ok(())
    }
}
