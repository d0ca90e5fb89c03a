//! Latency samples and their percentiles, and the resident memory of a process.

use std::time::Duration;

/// Samples of one latency.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    /// Adds one.
    pub fn push(&mut self, sample: Duration) {
        self.0.push(sample);
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `p`-quantile (0.0..=1.0), nearest rank; zero without samples.
    pub fn quantile(&self, p: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted
            .get(rank.min(sorted.len() - 1))
            .copied()
            .unwrap_or_default()
    }

    /// `p50 X ms, p99 Y ms`.
    pub fn summary(&self) -> String {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms",
            ms(self.quantile(0.50)),
            ms(self.quantile(0.99))
        )
    }

    /// `p50 X ms, p99 Y ms, max Z ms over N`.
    pub fn detail(&self) -> String {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {}",
            ms(self.quantile(0.50)),
            ms(self.quantile(0.99)),
            ms(self.quantile(1.0)),
            self.len()
        )
    }
}

/// Milliseconds as a float.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// The resident set of process `pid`, in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The CPU time process `pid` has run so far, summed over its live threads (the first field
/// of each `/proc/PID/task/TID/schedstat`, in nanoseconds; threads that already exited are
/// not counted).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(task) = task else { continue };
        // A thread may exit between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
        total = total.saturating_add(ns);
    }
    Some(Duration::from_nanos(total))
}
