//! The one-writer lock: `flock` on a local store; a lease object with an expiry on object
//! storage, where there is no lock that dies with its process.
//!
//! The lease is `writer.lock`, taken by creating it (`If-None-Match: *`), renewed a few
//! times per term by a conditional update on its ETag (`If-Match`), and taken over by the
//! same conditional update once it has expired (its holder died: `kill -9`, a lost node).
//! A holder whose renewal fails has lost it, and [`WriterLock::check`] says so before the
//! commit publishes. Even a holder that stalls past its term cannot publish over another
//! writer: a generation record is created only if absent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::PutMode;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::location::{spawn_io, Location, PutFailure, Version};

const LOCK: &str = "writer.lock";
/// A lease's term unless `LOUPE_LEASE_SECONDS` says otherwise.
const DEFAULT_TERM: Duration = Duration::from_secs(30);

/// Held by the one writer; released when dropped (or, locally, when the process dies; on
/// object storage, when its term runs out without renewal).
pub struct WriterLock {
    _held: Held,
}

enum Held {
    /// The open file is the lock: `flock` holds while it is open.
    Local(#[allow(dead_code)] std::fs::File),
    Lease(Lease),
}

impl WriterLock {
    /// Fails if the lease was lost (renewal failed or was refused): the writer must not
    /// publish.
    pub fn check(&self) -> Result<()> {
        match &self._held {
            Held::Local(_) => Ok(()),
            Held::Lease(lease) if lease.lost.load(Ordering::SeqCst) => {
                Err(StoreError::Conflict { path: lease.location.to_string(), reason: "this writer's lease on writer.lock expired or was taken over before the commit finished; nothing of it is visible, run it again".into() })
            }
            Held::Lease(_) => Ok(()),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct LeaseRecord {
    holder: String,
    expires_at_ms: u64,
}

struct Lease {
    location: Location,
    lost: Arc<AtomicBool>,
    version: Arc<Mutex<Version>>,
    renewal: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
        if !self.lost.load(Ordering::SeqCst) {
            // Let the next writer in now rather than at the end of the term.
            let (location, version) = (self.location.clone(), self.version.lock().unwrap_or_else(|p| p.into_inner()).clone());
            let released = async move {
                // Expire it in place (conditionally: never another holder's lease).
                let record = serde_json::to_vec(&LeaseRecord { holder: String::new(), expires_at_ms: 0 }).expect("a lease serializes");
                let _ = location.put_object(LOCK, record, PutMode::Update(version)).await;
            };
            let _ = futures::executor::block_on(spawn_io(released));
        }
    }
}

fn term() -> Duration {
    std::env::var("LOUPE_LEASE_SECONDS").ok().and_then(|s| s.parse::<f64>().ok()).filter(|s| *s > 0.0).map_or(DEFAULT_TERM, Duration::from_secs_f64)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown-host".into());
    format!("{host} pid {} at {}", std::process::id(), now_ms())
}

/// Takes the writer lock of `root`. A local lock held by a live process fails at once; a
/// lease held by another writer is waited for until its term ends (a writer that died
/// frees it then) and fails if it is still renewed after that.
pub async fn lock_writer(root: &Location) -> Result<WriterLock> {
    lock_writer_with_term(root, term()).await
}

/// [`lock_writer`] with a lease term of `term` on object storage.
pub async fn lock_writer_with_term(root: &Location, term: Duration) -> Result<WriterLock> {
    if let Some(path) = root.local_path() {
        let path = path.join(LOCK);
        let file = std::fs::File::options().create(true).truncate(false).write(true).open(&path).map_err(|e| StoreError::io(&path, e))?;
        return match file.try_lock() {
            Ok(()) => Ok(WriterLock { _held: Held::Local(file) }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked { path: root.to_string(), holder: "another process on this machine".into() }),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::io(path, e)),
        };
    }
    let me = holder();
    let give_up = now_ms() + term.as_millis() as u64 * 2;
    loop {
        let record = |expires_at_ms| serde_json::to_vec(&LeaseRecord { holder: me.clone(), expires_at_ms }).expect("a lease serializes");
        let taken = match root.get_versioned(LOCK).await? {
            None => root.put_object(LOCK, record(now_ms() + term.as_millis() as u64), PutMode::Create).await,
            Some((bytes, version)) => {
                let theirs: Option<LeaseRecord> = serde_json::from_slice(&bytes).ok();
                match theirs {
                    Some(theirs) if theirs.expires_at_ms > now_ms() => {
                        if now_ms() > give_up {
                            return Err(StoreError::Locked { path: root.to_string(), holder: format!("{}, whose lease is renewed and runs to {}; if that writer is gone, retry once it has expired", theirs.holder, crate::clock::rfc3339(theirs.expires_at_ms / 1000)) });
                        }
                        let wait = (theirs.expires_at_ms - now_ms()).clamp(50, 1000);
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                        continue;
                    }
                    // Expired, released, or unreadable: take it over, unless someone else
                    // does first.
                    _ => root.put_object(LOCK, record(now_ms() + term.as_millis() as u64), PutMode::Update(version)).await,
                }
            }
        };
        match taken {
            Ok(version) => return Ok(WriterLock { _held: Held::Lease(start_renewing(root.clone(), version, me, term)) }),
            Err(PutFailure::Lost) => continue,
            Err(PutFailure::Store(e)) => return Err(e),
        }
    }
}

fn start_renewing(location: Location, version: Version, me: String, term: Duration) -> Lease {
    let lost = Arc::new(AtomicBool::new(false));
    let version = Arc::new(Mutex::new(version));
    let renewal = {
        let (location, lost, version) = (location.clone(), lost.clone(), version.clone());
        spawn_io(async move {
            loop {
                tokio::time::sleep(term / 3).await;
                let record = serde_json::to_vec(&LeaseRecord { holder: me.clone(), expires_at_ms: now_ms() + term.as_millis() as u64 }).expect("a lease serializes");
                let current = version.lock().unwrap_or_else(|p| p.into_inner()).clone();
                match location.put_object(LOCK, record, PutMode::Update(current)).await {
                    Ok(renewed) => *version.lock().unwrap_or_else(|p| p.into_inner()) = renewed,
                    Err(PutFailure::Lost) => {
                        lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    // A failed request is retried at the next renewal; the term is three
                    // renewals long.
                    Err(PutFailure::Store(error)) => tracing::warn!(%error, "renewing the writer lease"),
                }
            }
        })
    };
    Lease { location, lost, version, renewal }
}
