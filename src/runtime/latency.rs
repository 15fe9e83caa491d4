//! Processing-latency recording inside a shard: plain counters, no locks, no atomics.
//! The control thread gets copies through [`LatencyRecorder::snapshot`].

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::link::{LatencySnapshot, LATENCY_BUCKETS};

/// Window over which p50/p99 are computed (two windows are kept and merged).
const WINDOW: Duration = Duration::from_secs(10);

/// Prometheus-style buckets plus a windowed HDR histogram for percentiles.
#[derive(Debug)]
pub struct LatencyRecorder {
    buckets: Vec<u64>,
    count: u64,
    sum_seconds: f64,
    current: Histogram<u64>,
    previous: Histogram<u64>,
    window_start: Instant,
}

fn new_hist() -> Histogram<u64> {
    // 1 ns .. 60 s at 2 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000_000, 2)
        .unwrap_or_else(|_| Histogram::new(2).unwrap_or_else(|_| unreachable!()))
}

impl LatencyRecorder {
    /// An empty recorder.
    pub fn new(now: Instant) -> Self {
        Self {
            buckets: vec![0; LATENCY_BUCKETS.len() + 1],
            count: 0,
            sum_seconds: 0.0,
            current: new_hist(),
            previous: new_hist(),
            window_start: now,
        }
    }

    /// Records one observation.
    pub fn record(&mut self, d: Duration, now: Instant) {
        self.record_n(d, 1, now);
    }

    /// Records `n` observations of the same duration (every message of a batch that was
    /// handled within `d`).
    pub fn record_n(&mut self, d: Duration, n: u64, now: Instant) {
        if n == 0 {
            return;
        }
        let secs = d.as_secs_f64();
        let idx = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[idx] += n;
        self.count += n;
        self.sum_seconds += secs * n as f64;
        self.rotate(now);
        let ns = u64::try_from(d.as_nanos())
            .unwrap_or(u64::MAX)
            .clamp(1, 60_000_000_000);
        self.current.saturating_record_n(ns, n);
    }

    fn rotate(&mut self, now: Instant) {
        if now.saturating_duration_since(self.window_start) >= WINDOW {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.reset();
            self.window_start = now;
        }
    }

    /// Cumulative buckets and recent percentiles.
    pub fn snapshot(&mut self, now: Instant) -> LatencySnapshot {
        self.rotate(now);
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        let mut acc = 0;
        for b in &self.buckets {
            acc += b;
            cumulative.push(acc);
        }
        let mut merged = self.previous.clone();
        let _ = merged.add(&self.current);
        let (p50, p99) = if merged.is_empty() {
            (0.0, 0.0)
        } else {
            (
                merged.value_at_quantile(0.5) as f64 / 1e6,
                merged.value_at_quantile(0.99) as f64 / 1e6,
            )
        };
        LatencySnapshot {
            buckets: cumulative,
            count: self.count,
            sum_seconds: self.sum_seconds,
            p50_ms: p50,
            p99_ms: p99,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_percentiles_follow_data() {
        let t0 = Instant::now();
        let mut r = LatencyRecorder::new(t0);
        for _ in 0..99 {
            r.record(Duration::from_micros(20), t0);
        }
        r.record(Duration::from_millis(200), t0);
        let s = r.snapshot(t0);
        assert_eq!(s.count, 100);
        assert_eq!(*s.buckets.last().unwrap(), 100);
        let i25us = LATENCY_BUCKETS
            .iter()
            .position(|b| *b == 0.000_025)
            .unwrap();
        assert_eq!(s.buckets[i25us], 99);
        assert!(s.p50_ms > 0.015 && s.p50_ms < 0.025, "{}", s.p50_ms);
        assert!(s.p99_ms < 1.0);
        assert!((s.sum_seconds - (99.0 * 20e-6 + 0.2)).abs() < 1e-9);
        // After two windows without data the percentiles reset, the counters do not.
        let later = t0 + WINDOW * 2 + Duration::from_secs(1);
        r.record(Duration::from_millis(5), later);
        let s = r.snapshot(later + WINDOW);
        assert_eq!(s.count, 101);
        assert!(s.p50_ms > 4.0 && s.p50_ms < 6.0, "{}", s.p50_ms);
    }

    #[test]
    fn a_batch_counts_once_per_message() {
        let t0 = Instant::now();
        let mut r = LatencyRecorder::new(t0);
        r.record_n(Duration::from_micros(300), 64, t0);
        r.record_n(Duration::from_micros(300), 0, t0);
        let s = r.snapshot(t0);
        assert_eq!(s.count, 64);
        assert!((s.sum_seconds - 64.0 * 300e-6).abs() < 1e-9);
        let i500 = LATENCY_BUCKETS.iter().position(|b| *b == 0.000_5).unwrap();
        assert_eq!(s.buckets[i500], 64);
        assert_eq!(s.buckets[i500 - 1], 0);
        assert!(s.p99_ms > 0.29 && s.p99_ms < 0.31, "{}", s.p99_ms);
    }
}
