//! Threads for CPU-bound work off the async runtime: the bounded pool that runs model-bound
//! work (forward passes), so that search and dashboard calls never wait behind the model (its
//! own threads, at a lower OS priority than the ones answering requests, as are the model's
//! compute threads); and a fixed set of request threads for searches.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::error::{Result, ServiceError};

/// Runs the model's compute threads (the global rayon pool that candle, gemm and loupe's CPU
/// kernels share) at a lower OS priority than the threads answering requests: on a machine
/// whose cores the model saturates, a search or a dashboard still gets a core at once, and
/// the model takes what is left. Call before anything uses rayon; later calls do nothing.
pub fn lower_model_priority() {
    if rayon::ThreadPoolBuilder::new().start_handler(|_| lower_this_thread()).build_global().is_err() {
        tracing::debug!("the rayon pool already exists; model threads keep their priority");
    }
}

/// Nice value of model threads (0 is normal, 19 the lowest priority).
const MODEL_NICE: libc::c_int = 10;

/// Lowers the calling thread to model priority (as the model workers and compute threads run).
pub fn lower_this_thread() {
    // SAFETY: setpriority on the calling thread (on Linux, PRIO_PROCESS with who = 0 is the
    // calling thread); raising the nice value needs no privilege.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, MODEL_NICE);
    }
}

/// Pins each thread that calls it, once, to its own CPU of those the process may run on, in
/// the order the threads first call it (the i-th caller to the i-th allowed CPU, wrapping).
///
/// For the runtime's async workers (`limits.pin_workers`, [`crate::config::PinWorkers`]): on
/// the 2-core machine both workers were seen runnable on one vCPU, taking turns in 4 ms
/// slices while the other vCPU ran the benchmark's clients and sat idle between bursts, until
/// their queue had grown (a 50-200 ms stall in which every request due finished at once).
/// The kernel's balancer moves unpinned threads around pinned ones instead.
pub struct PinToCpus {
    cpus: Vec<usize>,
    next: AtomicUsize,
}

thread_local! {
    static PINNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl PinToCpus {
    /// The CPUs the calling thread may run on now (from an unpinned thread, as the runtime's
    /// builder is, the process's affinity mask); empty where unknown.
    pub fn allowed() -> Self {
        PinToCpus { cpus: cpus_of_this_thread(), next: AtomicUsize::new(0) }
    }

    /// How many CPUs the threads are pinned to in turn.
    pub fn cpus(&self) -> usize {
        self.cpus.len()
    }

    /// Pins the calling thread unless it is pinned already; cheap after the first call.
    pub fn pin_this_thread_once(&self) {
        if PINNED.with(|p| p.replace(true)) || self.cpus.is_empty() {
            return;
        }
        let cpu = self.cpus[self.next.fetch_add(1, Ordering::Relaxed) % self.cpus.len()];
        if let Err(e) = set_this_thread(&[cpu]) {
            tracing::warn!(cpu, error = %e, "cannot pin a worker thread; it stays where the kernel puts it");
        }
    }

    /// Lets the calling thread run on every one of the CPUs again. A new thread inherits its
    /// creator's affinity, and the runtime's blocking-pool threads are created by whichever
    /// (pinned) worker first needed one: without this, the pool's threads were seen split
    /// between the two CPUs, each held to the one its creator was pinned to.
    pub fn free_this_thread(&self) {
        if self.cpus.is_empty() {
            return;
        }
        if let Err(e) = set_this_thread(&self.cpus) {
            tracing::warn!(error = %e, "cannot widen a new thread's CPU set; it keeps its creator's");
        }
    }
}

/// The CPUs the calling thread may run on, as the kernel reports them (its affinity mask).
#[cfg(target_os = "linux")]
pub(crate) fn cpus_of_this_thread() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and sched_getaffinity writes at most
    // its size into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn cpus_of_this_thread() -> Vec<usize> {
    Vec::new()
}

/// Restricts the calling thread to `cpus`.
#[cfg(target_os = "linux")]
fn set_this_thread(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: as above; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_this_thread(_cpus: &[usize]) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "thread affinity is set on Linux only"))
}

type Job = Box<dyn FnOnce() + Send>;

/// `workers` threads of their own (at model priority when `model`), taking jobs from one queue.
fn start_threads(workers: usize, name: &'static str, model: bool) -> std::sync::mpsc::Sender<Job> {
    let (sender, receiver) = std::sync::mpsc::channel::<Job>();
    let receiver = Arc::new(std::sync::Mutex::new(receiver));
    for i in 0..workers {
        let receiver = receiver.clone();
        let spawned = std::thread::Builder::new().name(format!("loupe-{name}-{i}")).spawn(move || {
            if model {
                lower_this_thread();
            }
            loop {
                let job = match receiver.lock() {
                    Ok(receiver) => receiver.recv(),
                    Err(_) => return,
                };
                match job {
                    Ok(job) => job(),
                    Err(_) => return, // the pool was dropped
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a {name} thread");
        }
    }
    sender
}

pub struct ModelWorkers {
    permits: Arc<Semaphore>,
    jobs: std::sync::mpsc::Sender<Job>,
    workers: usize,
    /// Calls running or waiting.
    in_flight: AtomicUsize,
    max_waiting: usize,
}

impl ModelWorkers {
    pub fn new(workers: usize, max_waiting: usize) -> Self {
        let workers = workers.max(1);
        let jobs = start_threads(workers, "model", true);
        ModelWorkers { permits: Arc::new(Semaphore::new(workers)), jobs, workers, in_flight: AtomicUsize::new(0), max_waiting }
    }

    /// Calls running or waiting now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Runs `work` on a model thread once a worker is free; refuses at once when the queue
    /// is full, and gives up when `deadline` passes first.
    ///
    /// `work` gets a flag that is raised when its caller stops waiting (the deadline passed
    /// or the call was dropped because the client went away): model work passes it to
    /// `Hooks::cancel_when`, so the worker is free again within one layer.
    pub async fn run<T: Send + 'static>(&self, deadline: Option<Duration>, work: impl FnOnce(Arc<AtomicBool>) -> Result<T> + Send + 'static) -> Result<T> {
        let queued = self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _guard = InFlight(&self.in_flight);
        if queued >= self.workers + self.max_waiting {
            return Err(ServiceError::ResourceExhausted(format!("the model is busy: {queued} requests are running or waiting (limit {}); retry later", self.workers + self.max_waiting)));
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancel.clone());
        let job = async {
            let permit = self.permits.clone().acquire_owned().await.map_err(|_| ServiceError::Unavailable("the server is shutting down".into()))?;
            let (done, result) = tokio::sync::oneshot::channel();
            let job: Job = Box::new(move || {
                let _permit = permit;
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(cancel)));
                let _ = done.send(outcome.unwrap_or_else(|_| Err(ServiceError::Internal("the model worker panicked".into()))));
            });
            self.jobs.send(job).map_err(|_| ServiceError::Unavailable("the model workers stopped".into()))?;
            result.await.map_err(|_| ServiceError::Internal("the model worker dropped the call".into()))?
        };
        match deadline {
            Some(deadline) => {
                tokio::time::timeout(deadline, job).await.map_err(|_| ServiceError::DeadlineExceeded(format!("the deadline of {} ms passed before the model finished", deadline.as_millis())))?
            }
            None => job.await,
        }
    }
}

/// A fixed set of threads, one per core, for CPU-bound request work (tantivy searches, 0.05-2
/// ms each). `spawn_blocking` grew tokio's blocking pool to ~500 threads under 64 concurrent
/// searches on 2 cores: each new thread's allocator heap faulted in fresh (huge) pages, a
/// third of the server's time, and hundreds of threads took turns on two cores.
pub struct RequestThreads {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl RequestThreads {
    /// `threads` threads named `loupe-{name}-{i}`.
    pub fn new(threads: usize, name: &'static str) -> Self {
        RequestThreads { jobs: start_threads(threads.max(1), name, false) }
    }

    /// One thread per core.
    pub fn per_core(name: &'static str) -> Self {
        Self::new(std::thread::available_parallelism().map_or(2, usize::from), name)
    }

    /// Runs `work` on a request thread (queued in arrival order while all are busy).
    pub async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let _ = done.send(outcome.unwrap_or_else(|_| Err(ServiceError::Internal("a request thread panicked".into()))));
        });
        self.jobs.send(job).map_err(|_| ServiceError::Unavailable("the request threads stopped".into()))?;
        result.await.map_err(|_| ServiceError::Internal("a request thread dropped the call".into()))?
    }
}

/// Raises the work's cancel flag when the caller's future ends, however it ends; harmless
/// when the work is already done.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_threads_run_many_calls_on_a_fixed_set_of_threads() {
        let threads = Arc::new(RequestThreads::new(2, "request"));
        let calls: Vec<_> = (0..200u64)
            .map(|i| {
                let threads = threads.clone();
                tokio::spawn(async move {
                    threads
                        .run(move || {
                            std::thread::sleep(Duration::from_micros(200));
                            Ok((i * i, std::thread::current().name().unwrap_or_default().to_string()))
                        })
                        .await
                })
            })
            .collect();
        let mut names = std::collections::BTreeSet::new();
        for (i, call) in calls.into_iter().enumerate() {
            let (square, name) = call.await.unwrap().unwrap();
            assert_eq!(square, (i * i) as u64);
            names.insert(name);
        }
        assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["loupe-request-0", "loupe-request-1"]);
        let err = threads.run(|| -> Result<()> { panic!("a bad search") }).await.unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        assert_eq!(threads.run(|| Ok(7)).await.unwrap(), 7, "a panic leaves the thread serving");
    }

    /// Work that runs until it is cancelled (or 20 s pass), and says which.
    fn until_cancelled(saw: Arc<AtomicBool>) -> impl FnOnce(Arc<AtomicBool>) -> Result<()> + Send + 'static {
        move |cancel| {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if cancel.load(Ordering::Relaxed) {
                    saw.store(true, Ordering::SeqCst);
                    return Err(ServiceError::Internal("cancelled".into()));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_passed_deadline_cancels_the_work_and_frees_the_worker() {
        let workers = ModelWorkers::new(1, 0);
        let saw = Arc::new(AtomicBool::new(false));
        let err = workers.run(Some(Duration::from_millis(30)), until_cancelled(saw.clone())).await.unwrap_err();
        assert!(matches!(err, ServiceError::DeadlineExceeded(_)), "{err}");
        // The one worker frees itself: the next call gets it (and is not refused as busy).
        let value = workers.run(None, |_| Ok(7)).await.unwrap();
        assert_eq!(value, 7);
        assert!(saw.load(Ordering::SeqCst), "the work saw its cancel flag");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_call_cancels_its_work() {
        let workers = Arc::new(ModelWorkers::new(1, 0));
        let saw = Arc::new(AtomicBool::new(false));
        let call = tokio::spawn({
            let (workers, saw) = (workers.clone(), saw.clone());
            async move { workers.run(None, until_cancelled(saw)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A full queue answers RESOURCE_EXHAUSTED while the work runs.
        assert!(matches!(workers.run(None, |_| Ok(())).await, Err(ServiceError::ResourceExhausted(_))));
        call.abort(); // what tonic does when the client goes away
        let _ = call.await;
        assert_eq!(workers.run(None, |_| Ok(1)).await.unwrap(), 1);
        assert!(saw.load(Ordering::SeqCst));
    }
}
