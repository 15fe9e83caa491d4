//! Batched UDP I/O for the event loop: `sendmmsg` from fixed slots (receiving uses the server's
//! own `mc::runtime::udp::Receiver`), and connection-ID demultiplexing of received datagrams
//! without parsing the QUIC header.
//!
//! All buffers are allocated once per worker; nothing here allocates per datagram. Sockets are
//! connected to the server, so no addresses are passed in either direction.

use std::io;
use std::os::fd::RawFd;

/// Datagrams queued before a `sendmmsg` call.
pub const SEND_BATCH: usize = 64;
/// What a flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Datagrams handed to the kernel.
    pub sent: usize,
    /// Datagrams dropped because the socket buffer was full (QUIC retransmits them).
    pub blocked: usize,
    /// Datagrams dropped on another error, and that error's kind.
    pub failed: usize,
    /// The error of the failed ones.
    pub error: Option<io::ErrorKind>,
}

/// Outgoing datagrams of one socket, sent together by `sendmmsg`.
pub struct SendBatch {
    slot: usize,
    bufs: Vec<u8>,
    lens: Vec<usize>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// The socket the queued datagrams are for.
    fd: Option<RawFd>,
}

impl SendBatch {
    /// Empty queue of [`SEND_BATCH`] slots of `slot` bytes.
    pub fn new(slot: usize) -> Self {
        Self {
            slot,
            bufs: vec![0u8; SEND_BATCH * slot],
            lens: Vec::with_capacity(SEND_BATCH),
            iovs: (0..SEND_BATCH)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: `mmsghdr` is plain old data; all-zero is a valid (empty) value.
            hdrs: (0..SEND_BATCH)
                .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
                .collect(),
            fd: None,
        }
    }

    /// Datagrams queued.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// The next free slot for a datagram to `fd`. Flushes first when the queue is full or holds
    /// datagrams for another socket; what that flush did is added to `done`.
    pub fn slot(&mut self, fd: RawFd, done: &mut Flushed) -> &mut [u8] {
        if self.fd != Some(fd) || self.lens.len() == SEND_BATCH {
            let f = self.flush();
            done.sent += f.sent;
            done.blocked += f.blocked;
            done.failed += f.failed;
            done.error = done.error.or(f.error);
            self.fd = Some(fd);
        }
        let start = self.lens.len() * self.slot;
        &mut self.bufs[start..start + self.slot]
    }

    /// Queues the first `len` bytes of the slot last returned by [`SendBatch::slot`].
    pub fn commit(&mut self, len: usize) {
        self.lens.push(len.min(self.slot));
    }

    /// Sends everything queued (without blocking).
    pub fn flush(&mut self) -> Flushed {
        let mut done = Flushed::default();
        let Some(fd) = self.fd else {
            self.lens.clear();
            return done;
        };
        let n = self.lens.len();
        let base = self.bufs.as_mut_ptr();
        for i in 0..n {
            // SAFETY: `i < SEND_BATCH`, so the slot lies inside `bufs`.
            self.iovs[i].iov_base = unsafe { base.add(i * self.slot) }.cast();
            self.iovs[i].iov_len = self.lens[i];
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = std::ptr::null_mut();
            h.msg_namelen = 0;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        let mut at = 0;
        while at < n {
            // SAFETY: headers `at..n` point at live iovecs over initialized bytes of `bufs`,
            // all owned by `self` and unchanged during the call; the kernel only reads them.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[at..].as_mut_ptr(),
                    (n - at) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                at += r as usize;
                done.sent += r as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    // The socket buffer is full: this datagram is lost, try the rest.
                    done.blocked += 1;
                    at += 1;
                }
                kind => {
                    done.failed += n - at;
                    done.error = Some(kind);
                    break;
                }
            }
        }
        self.lens.clear();
        done
    }
}

/// The destination connection ID of a datagram the server sent to one of our connections,
/// whose source connection IDs are all `len` bytes long. `None` when the datagram is too short.
pub fn dcid(pkt: &[u8], len: usize) -> Option<&[u8]> {
    let first = *pkt.first()?;
    if first & 0x80 == 0 {
        // Short header: flags, then the DCID (its length is known to the receiver only).
        pkt.get(1..1 + len)
    } else {
        // Long header: flags, 4-byte version, DCID length, DCID.
        let l = *pkt.get(5)? as usize;
        pkt.get(6..6 + l)
    }
}

/// A connection ID that names participant `p` of a worker in its first four bytes, followed by
/// random bytes that tell one connection epoch from the next.
pub fn make_scid<const N: usize>(p: usize, random: &[u8; N]) -> [u8; N] {
    let mut cid = *random;
    let idx = u32::try_from(p).unwrap_or(u32::MAX).to_le_bytes();
    cid[..4].copy_from_slice(&idx);
    cid
}

/// The participant a connection ID made by [`make_scid`] names.
pub fn scid_owner(cid: &[u8]) -> Option<usize> {
    let b: [u8; 4] = cid.get(..4)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(b)).ok()
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd as _;

    use super::*;

    #[test]
    fn demux_reads_the_cid_of_both_header_forms() {
        let cid = make_scid(1234, &[7u8; 16]);
        assert_eq!(scid_owner(&cid), Some(1234));
        assert_eq!(&cid[4..], &[7u8; 12]);

        let mut short = vec![0x40];
        short.extend_from_slice(&cid);
        short.extend_from_slice(b"protected payload");
        assert_eq!(dcid(&short, 16), Some(&cid[..]));

        let mut long = vec![0xc0, 0, 0, 0, 1, 16];
        long.extend_from_slice(&cid);
        long.extend_from_slice(&[8, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(dcid(&long, 16), Some(&cid[..]));

        assert_eq!(dcid(&[], 16), None);
        assert_eq!(dcid(&[0x40, 1, 2], 16), None);
        assert_eq!(dcid(&[0xc0, 0, 0, 0, 1, 20, 1], 16), None);
    }

    #[test]
    fn batches_round_trip_over_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        rx.connect(tx.local_addr().unwrap()).unwrap();

        let mut out = SendBatch::new(1350);
        let mut done = Flushed::default();
        let total = SEND_BATCH + 5; // more than one batch: the queue flushes itself when full
        for i in 0..total {
            let slot = out.slot(tx.as_raw_fd(), &mut done);
            slot[..2].copy_from_slice(&(i as u16).to_be_bytes());
            out.commit(2 + i % 7);
        }
        assert_eq!(out.len(), 5);
        let last = out.flush();
        assert_eq!(done.sent + last.sent, total);
        assert_eq!(done.blocked + last.blocked + done.failed + last.failed, 0);

        let mut inb = mc::runtime::udp::Receiver::default();
        let mut seen = Vec::new();
        while seen.len() < total {
            let got = inb.recv(rx.as_raw_fd(), 0).unwrap();
            if got.read == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            for i in 0..got.count {
                let (p, _) = inb.datagram(i).unwrap();
                let k = u16::from_be_bytes([p[0], p[1]]) as usize;
                assert_eq!(p.len(), 2 + k % 7);
                seen.push(k);
            }
        }
        assert_eq!(seen, (0..total).collect::<Vec<_>>());
        assert_eq!(inb.recv(rx.as_raw_fd(), 0).unwrap().read, 0);
        assert!(inb.datagram(0).is_none());
    }
}
