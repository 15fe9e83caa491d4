//! The generator's own CPU time, so a report can tell when the figures are the generator's
//! rather than the server's.

use std::time::Duration;

/// Share of its wall time above which a worker thread counts as saturated.
pub const SATURATED: f64 = 0.9;

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// CPU time of the calling thread (user + system).
pub fn thread_cpu() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of the whole process (all threads, user + system).
pub fn process_cpu() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// One worker thread's CPU use over the measured window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ThreadUse {
    /// CPU seconds the thread used in the window.
    pub cpu_seconds: f64,
    /// Wall seconds between the two readings.
    pub wall_seconds: f64,
}

impl ThreadUse {
    /// Share of the window the thread was running (1.0 = its core was never idle for it).
    pub fn busy(&self) -> f64 {
        if self.wall_seconds > 0.0 {
            self.cpu_seconds / self.wall_seconds
        } else {
            0.0
        }
    }
}

/// A thread's window reading in progress: taken at the window start, completed at its end.
#[derive(Debug, Clone, Copy, Default)]
pub struct WindowMeter {
    start: Option<(std::time::Instant, Duration)>,
    done: Option<ThreadUse>,
}

impl WindowMeter {
    /// Call on every loop turn: reads the thread clock once when `now` enters `[start, end)`
    /// and once when it reaches `end`.
    pub fn observe(
        &mut self,
        now: std::time::Instant,
        start: std::time::Instant,
        end: std::time::Instant,
    ) {
        if self.done.is_some() || now < start {
            return;
        }
        match self.start {
            None if now < end => self.start = Some((now, thread_cpu())),
            None => {}
            Some((t0, c0)) if now >= end => {
                self.done = Some(ThreadUse {
                    cpu_seconds: thread_cpu().saturating_sub(c0).as_secs_f64(),
                    wall_seconds: now.duration_since(t0).as_secs_f64(),
                });
            }
            Some(_) => {}
        }
    }

    /// The reading, once the window is over.
    pub fn result(&self) -> Option<ThreadUse> {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_spinning_thread_is_busy() {
        let t0 = Instant::now();
        let mut m = WindowMeter::default();
        m.observe(t0, t0 + Duration::from_secs(1), t0 + Duration::from_secs(2));
        assert!(m.result().is_none());
        let start = Instant::now();
        let end = start + Duration::from_millis(60);
        m.observe(start, start, end);
        let mut x = 0u64;
        while Instant::now() < end {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        m.observe(Instant::now(), start, end);
        let u = m.result().unwrap();
        assert!(u.wall_seconds >= 0.06, "{u:?}");
        // The spin ran on this thread the whole time unless the machine preempted it a lot.
        assert!(u.busy() > 0.3 && u.busy() <= 1.05, "{u:?}");
        assert!(process_cpu() >= thread_cpu());
    }
}
