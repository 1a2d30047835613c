//! CPU time the hypervisor took from this machine's vCPUs (the `steal` column of `/proc/stat`)
//! while a benchmark ran. On the shared 2-core VM, open-loop tails of 17-40 ms came with the
//! load generator's own lag jumping to 25-30 ms and 50 ms of steal in one 100 ms window: a
//! stall of the whole machine, not of the server. Printing the steal beside each open loop
//! tells the two apart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the sampler reads the counter (the kernel counts it in 10 ms ticks).
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// The window over which the worst steal is reported.
const WINDOW_MS: f64 = 100.0;

/// Steal over the measured part of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stolen {
    /// Milliseconds of CPU time stolen, summed over all vCPUs.
    pub total_ms: f64,
    /// The most stolen within any 100 ms (summed over all vCPUs).
    pub worst_100ms_ms: f64,
}

/// Reads `/proc/stat` on a thread of its own until stopped.
pub struct StealSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(Instant, f64)>>,
}

impl StealSampler {
    /// None where the counter cannot be read (not Linux, no /proc).
    pub fn start() -> Option<Self> {
        steal_ms_now()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("loupe-steal-sampler".into())
            .spawn(move || {
                let mut samples = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    if let Some(ms) = steal_ms_now() {
                        samples.push((Instant::now(), ms));
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
                samples
            })
            .ok()?;
        Some(StealSampler { stop, thread })
    }

    /// Stops sampling; the steal from `from` on.
    pub fn stop(self, from: Instant) -> Option<Stolen> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.thread.join().ok()?;
        let since: Vec<(f64, f64)> = samples.iter().filter(|(at, _)| *at >= from).map(|(at, ms)| ((*at - from).as_secs_f64() * 1e3, *ms)).collect();
        Some(stolen(&since))
    }
}

/// Total and worst-window steal of cumulative samples `(time_ms, steal_ms)`, in time order.
fn stolen(samples: &[(f64, f64)]) -> Stolen {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Stolen { total_ms: 0.0, worst_100ms_ms: 0.0 };
    };
    let mut worst = 0.0f64;
    let mut start = 0;
    for &(at, ms) in samples {
        while at - samples[start].0 > WINDOW_MS {
            start += 1;
        }
        worst = worst.max(ms - samples[start].1);
    }
    Stolen { total_ms: last.1 - first.1, worst_100ms_ms: worst }
}

/// Steal so far, in milliseconds summed over all CPUs.
fn steal_ms_now() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    steal_ticks(&text).map(|ticks| ticks as f64 * 1e3 / clock_ticks_per_second())
}

/// The steal column (the eighth number) of `/proc/stat`'s aggregate `cpu` line.
fn steal_ticks(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    #[cfg(unix)]
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    #[cfg(not(unix))]
    let ticks = 100;
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_number_of_the_cpu_line() {
        let stat = "cpu  676560 0 40707 114985 1234 0 8476 2622 0 0\ncpu0 338280 0 20353 57492 617 0 4238 1311 0 0\nintr 1 2\n";
        assert_eq!(steal_ticks(stat), Some(2622));
        assert_eq!(steal_ticks("cpu0 1 2 3\n"), None, "no aggregate line");
        assert_eq!(steal_ticks("cpu  1 2 3\n"), None, "an old kernel without the column");
    }

    #[test]
    fn worst_window_is_the_most_stolen_within_100_ms() {
        // 20 ms samples; 10 ms stolen at 40 ms, 50 ms more between 200 and 260 ms.
        let samples = [(0.0, 5.0), (20.0, 5.0), (40.0, 15.0), (60.0, 15.0), (200.0, 15.0), (220.0, 35.0), (240.0, 45.0), (260.0, 65.0), (400.0, 65.0)];
        let s = stolen(&samples);
        assert_eq!(s.total_ms, 60.0);
        assert_eq!(s.worst_100ms_ms, 50.0);
        assert_eq!(stolen(&[]), Stolen { total_ms: 0.0, worst_100ms_ms: 0.0 });
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_sampler_reads_this_machine() {
        let sampler = StealSampler::start().expect("/proc/stat on Linux");
        let from = Instant::now();
        std::thread::sleep(Duration::from_millis(120));
        let s = sampler.stop(from).unwrap();
        assert!(s.total_ms >= 0.0 && s.worst_100ms_ms <= s.total_ms, "{s:?}");
    }
}
