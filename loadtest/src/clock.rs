//! One process-wide mapping between the monotonic clock and Unix time.
//!
//! Every intended send time travels in a payload as Unix nanoseconds, and every receive time is
//! converted with the same mapping, so a wall-clock step during a run cannot distort latencies.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A fixed `(Instant, Unix ns)` pair taken once at start-up.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_unix_ns: u64,
}

impl Clock {
    /// Reads both clocks now.
    pub fn new() -> Self {
        let base = Instant::now();
        let base_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self { base, base_unix_ns }
    }

    /// `at` as Unix nanoseconds.
    pub fn unix_ns(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.base).as_nanos();
        self.base_unix_ns
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    /// `at` as whole Unix seconds (token `iat`).
    pub fn unix_secs(&self, at: Instant) -> u64 {
        self.unix_ns(at) / 1_000_000_000
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn round_trips() {
        let c = Clock::new();
        let later = Instant::now() + Duration::from_millis(1500);
        let gap = c.unix_ns(later) - c.unix_ns(c.base);
        assert_eq!(u128::from(gap), (later - c.base).as_nanos());
    }
}
