//! The virtual clock: a monotonic instant and a wall clock that only move when told to.

use std::time::{Duration, Instant};

use mc::core::shard::Now;

/// Wall-clock time at which every virtual clock starts: 2026-01-01T00:00:00Z. Fixed, so tokens,
/// binding tokens and `joined_at_ms` are the same on every run.
pub const UNIX_ORIGIN_MS: u64 = 1_767_225_600_000;

/// Virtual time. The monotonic origin is one real instant read at creation (an `Instant` cannot
/// be made any other way); from then on only [`Clock::advance`] moves it.
#[derive(Debug, Clone)]
pub struct Clock {
    origin: Instant,
    elapsed: Duration,
}

impl Clock {
    /// A clock at its origin.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            elapsed: Duration::ZERO,
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Now {
        Now {
            mono: self.origin + self.elapsed,
            unix_ms: UNIX_ORIGIN_MS + u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Unix seconds of the current virtual time (for token `iat`/`exp`).
    pub fn unix_secs(&self) -> u64 {
        self.now().unix_ms / 1000
    }

    /// Time since the clock was created.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&mut self, d: Duration) {
        self.elapsed += d;
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
