//! Waking a sleeping shard from another thread.
//!
//! A shard sleeps in `ppoll` on its UDP socket and its eventfd (see [`super::executor`]).
//! Whoever queues work for it on a channel (the control thread, another shard) calls
//! [`Wake::wake`] afterwards. The shard announces that it is about to sleep
//! ([`Wake::prepare_sleep`]), then looks at its channels once more and sleeps only if they are
//! empty; a sender writes the eventfd only if it sees that announcement. With both sides
//! ordered by a sequentially consistent fence, one of them always sees the other: either the
//! shard finds the message, or the sender finds the shard asleep and writes. An awake shard
//! costs its senders no system call.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug)]
struct Inner {
    fd: OwnedFd,
    sleeping: AtomicBool,
}

/// A shard's wake-up line (cheap to clone); [`Wake::none`] for a shard that never sleeps on it
/// (test doubles).
#[derive(Debug, Clone)]
pub struct Wake {
    inner: Option<Arc<Inner>>,
}

impl Wake {
    /// A new eventfd-backed wake-up line.
    pub fn new() -> io::Result<Wake> {
        // SAFETY: plain syscall; the result is checked before it is wrapped.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Wake {
            inner: Some(Arc::new(Inner {
                // SAFETY: `fd` is a fresh descriptor owned by nobody else.
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
                sleeping: AtomicBool::new(false),
            })),
        })
    }

    /// A line that wakes nobody.
    pub fn none() -> Wake {
        Wake { inner: None }
    }

    /// Call after queueing work for the shard: wakes it if it sleeps (or is about to).
    pub fn wake(&self) {
        let Some(inner) = &self.inner else { return };
        // Orders the caller's channel push before the read of `sleeping` (pairs with the fence
        // in `prepare_sleep`).
        fence(Ordering::SeqCst);
        if inner.sleeping.load(Ordering::Relaxed) && inner.sleeping.swap(false, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our eventfd. A full counter (EAGAIN)
            // still leaves the eventfd readable, which is all a wake-up needs.
            let _ = unsafe {
                libc::write(
                    inner.fd.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
        }
    }

    /// The shard's side, before it looks at its channels for the last time and sleeps.
    pub fn prepare_sleep(&self) {
        if let Some(inner) = &self.inner {
            inner.sleeping.store(true, Ordering::Relaxed);
            // Orders the store before the channel checks that follow (pairs with `wake`).
            fence(Ordering::SeqCst);
        }
    }

    /// The shard's side, once awake (whether or not it slept): stop announcing sleep and
    /// consume a pending wake-up so the eventfd stops being readable.
    pub fn awake(&self, signalled: bool) {
        if let Some(inner) = &self.inner {
            inner.sleeping.store(false, Ordering::Relaxed);
            if signalled {
                let mut v: u64 = 0;
                // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
                let _ = unsafe {
                    libc::read(
                        inner.fd.as_raw_fd(),
                        (&mut v as *mut u64).cast(),
                        std::mem::size_of::<u64>(),
                    )
                };
            }
        }
    }

    /// The eventfd to poll (None for [`Wake::none`]).
    pub fn fd(&self) -> Option<RawFd> {
        self.inner.as_ref().map(|i| i.fd.as_raw_fd())
    }
}

/// What ended a [`sleep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Woken {
    /// The socket has datagrams.
    pub readable: bool,
    /// The wake-up line was written.
    pub signalled: bool,
}

/// Blocks the calling thread until `socket` is readable, `wake` is written or `timeout`
/// passes (`ppoll`; an interrupted wait returns as a timeout).
pub fn sleep(socket: RawFd, wake: &Wake, timeout: std::time::Duration) -> Woken {
    let mut fds = [
        libc::pollfd {
            fd: socket,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.fd().unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    let n = if wake.fd().is_some() { 2 } else { 1 };
    // SAFETY: `fds` outlives the call and `n` ≤ its length; `ts` is a valid timespec.
    let r = unsafe { libc::ppoll(fds.as_mut_ptr(), n, &ts, std::ptr::null()) };
    if r <= 0 {
        return Woken {
            readable: false,
            signalled: false,
        };
    }
    Woken {
        readable: fds[0].revents != 0,
        signalled: n == 2 && fds[1].revents != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn socket() -> std::net::UdpSocket {
        std::net::UdpSocket::bind("127.0.0.1:0").expect("bind")
    }

    #[test]
    fn a_sleeping_shard_is_woken_by_another_thread() {
        let s = socket();
        let w = Wake::new().expect("eventfd");
        w.prepare_sleep();
        let other = w.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.wake();
        });
        let started = Instant::now();
        let woke = sleep(s.as_raw_fd(), &w, Duration::from_secs(10));
        t.join().expect("waker");
        assert!(woke.signalled && !woke.readable, "{woke:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        w.awake(woke.signalled);
        // Consumed: the next sleep times out.
        let again = sleep(s.as_raw_fd(), &w, Duration::from_millis(20));
        assert_eq!(
            again,
            Woken {
                readable: false,
                signalled: false
            }
        );
    }

    #[test]
    fn an_awake_shard_is_not_signalled() {
        let s = socket();
        let w = Wake::new().expect("eventfd");
        w.wake();
        w.wake();
        let woke = sleep(s.as_raw_fd(), &w, Duration::from_millis(20));
        assert!(
            !woke.signalled,
            "a wake-up of an awake shard wrote the eventfd"
        );
    }

    #[test]
    fn a_datagram_ends_the_sleep() {
        let s = socket();
        let w = Wake::new().expect("eventfd");
        let c = socket();
        c.send_to(b"x", s.local_addr().expect("addr"))
            .expect("send");
        let woke = sleep(s.as_raw_fd(), &w, Duration::from_secs(10));
        assert!(woke.readable && !woke.signalled, "{woke:?}");
    }

    #[test]
    fn the_timeout_ends_the_sleep() {
        let s = socket();
        let started = Instant::now();
        let woke = sleep(s.as_raw_fd(), &Wake::none(), Duration::from_millis(30));
        assert!(!woke.readable && !woke.signalled);
        // Nothing else ends it early (a signal would; test threads get none).
        assert!(started.elapsed() >= Duration::from_millis(25));
    }
}
