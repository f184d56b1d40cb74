//! A fixed-bucket latency histogram for `/metrics`: lock-free (one atomic add per bucket hit
//! plus the sum and count), rendered in the Prometheus text format. The counters beside it are
//! plain atomics too; a metrics registry crate would add a map lookup per observation and a
//! second exposition path for what is a dozen series.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds, seconds: from a millisecond (the gateway's own time) to two minutes (a long
/// generation).
pub const BOUNDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
];

/// One histogram series.
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BOUNDS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// How many were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Appends the series `name{labels}` (labels already formatted, e.g. `endpoint="/v1/x"`,
    /// or empty). The `# TYPE` line is the caller's, once per family.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0u64;
        for (b, n) in BOUNDS.iter().zip(&self.buckets) {
            cum += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_are_cumulative_and_sum_is_seconds() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(500));
        let mut s = String::new();
        h.render(&mut s, "x_seconds", "a=\"b\"");
        assert!(
            s.contains("x_seconds_bucket{a=\"b\",le=\"0.001\"} 1\n"),
            "{s}"
        );
        assert!(
            s.contains("x_seconds_bucket{a=\"b\",le=\"0.025\"} 2\n"),
            "{s}"
        );
        assert!(
            s.contains("x_seconds_bucket{a=\"b\",le=\"120\"} 2\n"),
            "{s}"
        );
        assert!(
            s.contains("x_seconds_bucket{a=\"b\",le=\"+Inf\"} 3\n"),
            "{s}"
        );
        assert!(s.contains("x_seconds_sum{a=\"b\"} 500.0205\n"), "{s}");
        assert!(s.contains("x_seconds_count{a=\"b\"} 3\n"), "{s}");
    }
}
