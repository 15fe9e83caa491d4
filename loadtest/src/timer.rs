//! A `timerfd` registered with the event loop, so deadlines fire with microsecond precision.
//!
//! `epoll_wait` (and so `mio::Poll::poll`) takes whole milliseconds: a send due in 0.3 ms would
//! leave up to 1 ms late, and that lateness would be reported as server latency. The worker arms
//! this timer for its next deadline instead.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// A non-blocking monotonic timer file descriptor.
#[derive(Debug)]
pub struct TimerFd {
    fd: OwnedFd,
    armed: Option<Instant>,
}

impl TimerFd {
    /// Creates the timer and registers it under `token`.
    pub fn new(registry: &Registry, token: Token) -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        // Wake-ups within a microsecond of the deadline instead of the default 50 µs slack.
        // SAFETY: PR_SET_TIMERSLACK takes an integer argument and affects this thread only.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
        }
        Ok(Self { fd, armed: None })
    }

    /// Makes the timer fire at `at` (re-arming only when the deadline changed).
    pub fn arm(&mut self, at: Instant, now: Instant) -> io::Result<()> {
        if self.armed == Some(at) {
            return Ok(());
        }
        // A zero it_value would disarm: fire after at least 1 µs.
        let wait = at
            .saturating_duration_since(now)
            .max(Duration::from_micros(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec and the old value pointer may be null.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed = Some(at);
        Ok(())
    }

    /// Clears the expiration after the timer fired.
    pub fn acknowledge(&mut self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `buf`; EAGAIN when it had not fired is fine.
        let _ = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast::<libc::c_void>(),
                buf.len(),
            )
        };
        self.armed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_close_to_the_deadline() {
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(4);
        let mut t = TimerFd::new(poll.registry(), Token(7)).unwrap();
        let start = Instant::now();
        let at = start + Duration::from_micros(300);
        t.arm(at, start).unwrap();
        poll.poll(&mut events, Some(Duration::from_secs(1)))
            .unwrap();
        let woke = Instant::now();
        assert!(events.iter().any(|e| e.token() == Token(7)));
        assert!(woke >= at);
        // Far below epoll's millisecond rounding (generous for loaded machines).
        assert!(woke - start < Duration::from_millis(50));
        t.acknowledge();
    }
}
