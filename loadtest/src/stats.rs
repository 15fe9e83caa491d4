//! Histograms and counters. Each worker thread owns its own (no sharing on the hot path) and
//! sends the main thread a [`Tick`] every second; the final figures come back when it ends.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

/// Highest recordable latency: one hour, in microseconds.
const MAX_US: u64 = 3_600_000_000;

/// An empty latency histogram in microseconds, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // Bounds are constants within hdrhistogram's limits.
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// The three latency distributions of a run, in microseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    /// Intended send time → receipt, at every receiver.
    pub delivery: Histogram<u64>,
    /// `join` written → `join_response` read.
    pub join: Histogram<u64>,
    /// Intended connect time → QUIC handshake complete.
    pub handshake: Histogram<u64>,
}

impl Latencies {
    /// Empty histograms.
    pub fn new() -> Self {
        Self {
            delivery: histogram(),
            join: histogram(),
            handshake: histogram(),
        }
    }

    /// Adds `other`'s samples.
    pub fn add(&mut self, other: &Latencies) {
        // Same bounds everywhere, so adding cannot fail.
        let _ = self.delivery.add(&other.delivery);
        let _ = self.join.add(&other.join);
        let _ = self.handshake.add(&other.handshake);
    }
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

/// Records `us` microseconds, clamped to the histogram's range.
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_US));
}

/// Counters of one thread (cumulative) or of the whole run (summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connection attempts started.
    pub connects: u64,
    /// QUIC handshakes completed.
    pub handshakes: u64,
    /// Of those, with an intended start inside the measured window.
    pub handshakes_window: u64,
    /// Successful joins.
    pub joins: u64,
    /// Of those, with an intended start inside the measured window.
    pub joins_window: u64,
    /// Joins answered with an error or not answered in time.
    pub join_failures: u64,
    /// Connections currently joined (a gauge).
    pub joined_now: u64,
    /// Messages sent.
    pub sent: u64,
    /// Messages sent with an intended time inside the window.
    pub sent_window: u64,
    /// Messages received.
    pub delivered: u64,
    /// Messages received with an intended time inside the window.
    pub delivered_window: u64,
    /// Sequence numbers a receiver saw skipped (live hint of loss; the tally is exact).
    pub gaps: u64,
    /// Messages received twice.
    pub duplicates: u64,
    /// Connections that ended without being asked to.
    pub disconnects: u64,
    /// Sends skipped because more than the backlog limit was waiting for flow control.
    pub backlog_skips: u64,
}

impl Counters {
    /// Sums two sets of counters.
    pub fn add(&mut self, o: &Counters) {
        self.connects += o.connects;
        self.handshakes += o.handshakes;
        self.handshakes_window += o.handshakes_window;
        self.joins += o.joins;
        self.joins_window += o.joins_window;
        self.join_failures += o.join_failures;
        self.joined_now += o.joined_now;
        self.sent += o.sent;
        self.sent_window += o.sent_window;
        self.delivered += o.delivered;
        self.delivered_window += o.delivered_window;
        self.gaps += o.gaps;
        self.duplicates += o.duplicates;
        self.disconnects += o.disconnects;
        self.backlog_skips += o.backlog_skips;
    }
}

/// Errors by label: `error:<code>` for protocol errors, `close:0x…` for server closes,
/// `meeting_ended:<reason>`, `handshake_timeout`, `join_timeout`, …
pub type ErrorCounts = BTreeMap<String, u64>;

/// Adds `b` into `a`.
pub fn add_errors(a: &mut ErrorCounts, b: &ErrorCounts) {
    for (k, v) in b {
        *a.entry(k.clone()).or_default() += v;
    }
}

/// A worker's once-a-second report.
#[derive(Debug)]
pub struct Tick {
    /// Worker index.
    pub thread: usize,
    /// Samples recorded since the previous tick (all phases).
    pub latencies: Latencies,
    /// Cumulative counters.
    pub counters: Counters,
    /// Cumulative errors.
    pub errors: ErrorCounts,
    /// The thread's CPU time so far.
    pub cpu: std::time::Duration,
}

/// Summary of one distribution, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Percentiles {
    /// Summarizes `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_ordered() {
        let mut h = histogram();
        for v in 1..=10_000 {
            record(&mut h, v);
        }
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 10_002);
        assert!(p.p50 <= p.p90 && p.p90 <= p.p99 && p.p99 <= p.p999 && p.p999 <= p.max);
        assert!((4990..=5010).contains(&p.p50), "{}", p.p50);
        assert_eq!(Percentiles::of(&histogram()), Percentiles::default());
    }
}
