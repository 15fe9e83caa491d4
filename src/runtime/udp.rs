//! Batched UDP sends: one `sendmmsg(2)` per up to [`BATCH`] messages instead of one
//! `sendmsg(2)` per datagram. A fan-out of one message to a 1000-participant meeting is ~1000
//! datagrams to 1000 destinations, so batching is what saves the system calls; several
//! datagrams to one destination in a row also share one message (UDP GSO).

use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::quic::datagrams::Datagrams;

/// Datagrams per `sendmmsg` call.
pub const BATCH: usize = 64;

/// What one [`Batcher::send`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Index of the first datagram not yet handled.
    pub next: usize,
    /// Datagrams the kernel refused, each logged at debug level and skipped (UDP is unreliable
    /// and QUIC retransmits).
    pub failed: usize,
    /// The socket buffer is full: datagram `next` must wait until the socket is writable.
    pub would_block: bool,
}

fn sockaddr(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            // The slot is reused: clear what an earlier IPv6 address left here.
            sin.sin_zero = [0; 8];
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in6.
            let sin6 =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Most segments in one GSO message (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO message: the payload of one IP datagram, with room for the headers.
const GSO_MAX_BYTES: usize = 65_000;

/// Ancillary bytes of one `UDP_SEGMENT` control message (`CMSG_SPACE(sizeof(u16))`), as u64s
/// for alignment.
const GSO_CMSG_WORDS: usize = 3;

/// The `sendmmsg` argument arrays of one shard, allocated once and reused by every call, so a
/// flush of one datagram does not zero 13 KiB of headers first.
///
/// Consecutive datagrams to one destination (a connection's flush that produced several
/// packets, a handshake flight) go out as one message with UDP generic segmentation offload
/// (`UDP_SEGMENT`): the kernel walks its send path once and cuts the datagrams at the end. A
/// kernel or device that refuses GSO (`EIO`) turns it off for this batcher; the datagrams are
/// then sent one per message, as before.
pub struct Batcher {
    addrs: Box<[libc::sockaddr_storage; BATCH]>,
    iovs: Box<[libc::iovec; BATCH]>,
    hdrs: Box<[libc::mmsghdr; BATCH]>,
    cmsgs: Box<[[u64; GSO_CMSG_WORDS]; BATCH]>,
    /// Datagrams carried by each message of the current call.
    segs: [usize; BATCH],
    gso: bool,
}

impl Default for Batcher {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Batcher {
    /// A batcher; `gso` false sends every datagram as its own message.
    pub fn new(gso: bool) -> Self {
        // SAFETY: all-zero is a valid value of these plain C structs.
        unsafe {
            Self {
                addrs: Box::new(zeroed()),
                iovs: Box::new(zeroed()),
                hdrs: Box::new(zeroed()),
                cmsgs: Box::new(zeroed()),
                segs: [0; BATCH],
                gso,
            }
        }
    }

    /// Whether consecutive datagrams to one destination are still sent with GSO.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// How many datagrams from `i` can go out as one GSO message, and their bytes: consecutive,
    /// contiguous in the buffer, of one group (one connection's flush), to the same
    /// destination, all as long as the first except a shorter last.
    fn run_len(&self, d: &Datagrams, i: usize, single_before: usize) -> (usize, usize) {
        let Some((first, to)) = d.get(i) else {
            return (0, 0);
        };
        if !self.gso || i < single_before {
            return (1, first.len());
        }
        let seg = first.len();
        let (mut n, mut bytes) = (1, seg);
        while n < GSO_MAX_SEGMENTS {
            let Some((next, next_to)) = d.get(i + n) else {
                break;
            };
            if next_to != to
                || next.is_empty()
                || next.len() > seg
                || bytes + next.len() > GSO_MAX_BYTES
                || !d.continues(i + n - 1)
            {
                break;
            }
            bytes += next.len();
            n += 1;
            if next.len() < seg {
                break;
            }
        }
        (n, bytes)
    }

    /// Sends datagrams `from..` of `d` on the non-blocking UDP socket `fd` without waiting:
    /// as many as the socket buffer takes, [`BATCH`] messages per system call.
    pub fn send(&mut self, fd: RawFd, d: &Datagrams, from: usize) -> Sent {
        let mut r = Sent {
            next: from,
            failed: 0,
            would_block: false,
        };
        // Datagrams before this index are sent one per message (a GSO message that failed).
        let mut single_before = 0;
        while r.next < d.len() {
            let mut n = 0;
            let mut i = r.next;
            while n < BATCH && i < d.len() {
                let Some((pkt, to)) = d.get(i) else { break };
                // `pkt` starts `segs` datagrams that lie back to back: one iovec covers them.
                let (segs, bytes) = self.run_len(d, i, single_before);
                let len = sockaddr(to, &mut self.addrs[n]);
                self.iovs[n] = libc::iovec {
                    iov_base: pkt.as_ptr() as *mut libc::c_void,
                    iov_len: bytes,
                };
                // SAFETY: all-zero is a valid msghdr (no control data, no flags).
                let mut h: libc::msghdr = unsafe { zeroed() };
                h.msg_name = (&mut self.addrs[n] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = len;
                h.msg_iov = &mut self.iovs[n];
                h.msg_iovlen = 1;
                if segs > 1 {
                    set_segment_size(&mut h, &mut self.cmsgs[n], pkt.len());
                }
                self.hdrs[n] = libc::mmsghdr {
                    msg_hdr: h,
                    msg_len: 0,
                };
                self.segs[n] = segs;
                i += segs;
                n += 1;
            }
            // SAFETY: `hdrs[..n]` point into `addrs`, `iovs`, `cmsgs` and `d`'s buffer, all
            // alive and unaliased for the duration of the call; the kernel only reads them (and
            // writes `msg_len`).
            let ret = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if ret >= 0 {
                let done = ret as usize;
                r.next += self.segs[..done.min(n)].iter().sum::<usize>();
                if done == 0 {
                    r.would_block = true;
                    return r;
                }
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.kind() {
                std::io::ErrorKind::WouldBlock => {
                    r.would_block = true;
                    return r;
                }
                std::io::ErrorKind::Interrupted => continue,
                _ if self.segs[0] > 1 => {
                    // The first message was a GSO message: send its datagrams one by one (the
                    // error may be theirs, not GSO's). EIO is the kernel refusing GSO itself.
                    if err.raw_os_error() == Some(libc::EIO) {
                        tracing::info!(error = %err, "UDP GSO refused: sending datagrams one by one");
                        self.gso = false;
                    }
                    single_before = r.next + self.segs[0];
                }
                _ => {
                    // The first datagram of the call was refused (unreachable, too big…): skip it.
                    tracing::debug!(error = %err, to = ?d.get(r.next).map(|(_, to)| to), "sendmmsg refused a datagram");
                    r.failed += 1;
                    r.next += 1;
                }
            }
        }
        r
    }
}

/// Attaches a `UDP_SEGMENT` control message (segment size `seg`) to `h`, stored in `buf`.
fn set_segment_size(h: &mut libc::msghdr, buf: &mut [u64; GSO_CMSG_WORDS], seg: usize) {
    // SAFETY: `buf` is 8-byte aligned and CMSG_SPACE(2) (24) bytes long, enough for one
    // cmsghdr with a u16 payload; CMSG_FIRSTHDR/CMSG_DATA stay inside it.
    unsafe {
        let space = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
        debug_assert!(space <= size_of::<[u64; GSO_CMSG_WORDS]>());
        h.msg_control = buf.as_mut_ptr().cast();
        h.msg_controllen = space as _;
        let c = libc::CMSG_FIRSTHDR(h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        let seg = u16::try_from(seg).unwrap_or(u16::MAX);
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
    }
}

/// Datagrams per `recvmmsg` call.
pub const RECV_BATCH: usize = 64;
/// Bytes of one receive slot. Larger datagrams are truncated by the kernel and dropped here:
/// we advertise `max_udp_payload_size` 1350 and Initials are padded to about 1200-1500 bytes.
pub const RECV_SLOT: usize = 2048;

/// Ancillary bytes per slot: room for one `SCM_TIMESTAMPNS` (a `timespec`).
const CMSG_SPACE: usize = 64;

/// What one [`Receiver::recv`] call read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Datagrams now in slots `0..count`.
    pub count: usize,
    /// Datagrams the kernel truncated (larger than [`RECV_SLOT`]); they are not in the slots.
    pub truncated: usize,
    /// Datagrams that waited in the socket's queue longer than allowed, skipped unprocessed.
    pub stale: usize,
    /// Datagrams read from the socket by this call (`count + truncated + stale`, plus any
    /// with an unreadable source address).
    pub read: usize,
}

/// Asks the kernel to stamp every datagram of `fd` with its arrival time (`SO_TIMESTAMPNS`,
/// wall clock), which [`Receiver::recv`] uses to skip datagrams that queued too long.
pub fn enable_arrival_timestamps(fd: RawFd) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid pointer to an int of the stated length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn timespec_ns(ts: &libc::timespec) -> u64 {
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// The arrival time the kernel attached to a received message, if any.
fn arrival_ns(h: &libc::msghdr) -> Option<u64> {
    // SAFETY: `h` was filled by recvmmsg; its control buffer and length are valid, and the
    // CMSG_* macros stay within `msg_controllen`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                return Some(timespec_ns(&ts));
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// Batched non-blocking receives: one `recvmmsg(2)` reads up to [`RECV_BATCH`] datagrams into
/// slots allocated once per shard.
pub struct Receiver {
    bufs: Box<[[u8; RECV_SLOT]; RECV_BATCH]>,
    /// Ancillary data per slot, u64-aligned as `cmsghdr` requires.
    ctrl: Box<[[u64; CMSG_SPACE / 8]; RECV_BATCH]>,
    addrs: Box<[libc::sockaddr_storage; RECV_BATCH]>,
    iovs: Box<[libc::iovec; RECV_BATCH]>,
    /// Point into the boxes above (heap memory that never moves), wired once in `default`.
    hdrs: Box<[libc::mmsghdr; RECV_BATCH]>,
    /// Headers the last call let the kernel fill (their in/out lengths need resetting).
    used: usize,
    /// `(slot, len, from)` of the datagrams read by the last call.
    got: Vec<(usize, usize, SocketAddr)>,
}

impl Default for Receiver {
    fn default() -> Self {
        // SAFETY: all-zero is a valid value of these plain C structs and byte arrays.
        let mut r = unsafe {
            Self {
                bufs: Box::new(zeroed()),
                ctrl: Box::new(zeroed()),
                addrs: Box::new(zeroed()),
                iovs: Box::new(zeroed()),
                hdrs: Box::new(zeroed()),
                used: RECV_BATCH,
                got: Vec::with_capacity(RECV_BATCH),
            }
        };
        for k in 0..RECV_BATCH {
            r.iovs[k] = libc::iovec {
                iov_base: r.bufs[k].as_mut_ptr().cast(),
                iov_len: RECV_SLOT,
            };
            let h = &mut r.hdrs[k].msg_hdr;
            h.msg_name = (&mut r.addrs[k] as *mut libc::sockaddr_storage).cast();
            h.msg_iov = &mut r.iovs[k];
            h.msg_iovlen = 1;
            h.msg_control = r.ctrl[k].as_mut_ptr().cast();
        }
        r
    }
}

fn socket_addr(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote a sockaddr_in here (family and length checked).
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the kernel wrote a sockaddr_in6 here (family and length checked).
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

impl Receiver {
    /// Reads what the non-blocking UDP socket `fd` holds, up to [`RECV_BATCH`] datagrams,
    /// without waiting. `Ok` with `read` 0 means the socket is empty. Datagrams stamped
    /// (see [`enable_arrival_timestamps`]) before `stale_before_ns` (wall clock, ns; 0 keeps
    /// all) are skipped and counted as stale.
    pub fn recv(&mut self, fd: RawFd, stale_before_ns: u64) -> std::io::Result<Received> {
        let Self {
            addrs,
            hdrs,
            used,
            got,
            ..
        } = self;
        got.clear();
        // The kernel shrinks the name and control lengths of the headers it fills; restore
        // them (the pointers never change). An empty read touches none.
        for h in hdrs.iter_mut().take(*used) {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_controllen = CMSG_SPACE as _;
        }
        *used = 0;
        let ret = loop {
            // SAFETY: `hdrs` point into `addrs`, `iovs`, `ctrl` and `bufs`, heap memory owned by
            // `self`, alive and not otherwise borrowed during the call; the kernel writes at
            // most `iov_len`/`msg_namelen`/`msg_controllen` bytes into each.
            let ret = unsafe {
                libc::recvmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    RECV_BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if ret >= 0 {
                break ret as usize;
            }
            let err = std::io::Error::last_os_error();
            match err.kind() {
                std::io::ErrorKind::WouldBlock => {
                    return Ok(Received {
                        count: 0,
                        truncated: 0,
                        stale: 0,
                        read: 0,
                    })
                }
                std::io::ErrorKind::Interrupted => continue,
                _ => return Err(err),
            }
        };
        *used = ret;
        let (mut truncated, mut stale) = (0, 0);
        for (k, h) in hdrs.iter().enumerate().take(ret) {
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                truncated += 1;
                continue;
            }
            if stale_before_ns > 0 && arrival_ns(&h.msg_hdr).is_some_and(|t| t < stale_before_ns) {
                stale += 1;
                continue;
            }
            match socket_addr(&addrs[k], h.msg_hdr.msg_namelen) {
                Some(from) => got.push((k, h.msg_len as usize, from)),
                None => truncated += 1,
            }
        }
        Ok(Received {
            count: got.len(),
            truncated,
            stale,
            read: ret,
        })
    }

    /// The `i`-th datagram read by the last [`Receiver::recv`]: its bytes (mutable: quiche
    /// decrypts in place) and its source.
    pub fn datagram(&mut self, i: usize) -> Option<(&mut [u8], SocketAddr)> {
        let (slot, len, from) = *self.got.get(i)?;
        Some((self.bufs.get_mut(slot)?.get_mut(..len)?, from))
    }
}

/// Datagrams the kernel dropped for this socket since it was opened, mostly because its
/// receive queue was full (`SO_MEMINFO`, the `drops` column of `/proc/net/udp`). One
/// non-blocking `getsockopt`; `None` where the kernel does not report it.
pub fn receive_drops(fd: RawFd) -> Option<u64> {
    const VARS: usize = libc::SK_MEMINFO_DROPS as usize + 1;
    let mut info = [0u32; VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes; the kernel writes at most `len` and updates it.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let have = usize::try_from(len).unwrap_or(0) / size_of::<u32>();
    (ret == 0 && have >= VARS).then(|| u64::from(info[libc::SK_MEMINFO_DROPS as usize]))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::fd::AsRawFd;

    /// The wall clock in nanoseconds since the epoch (the clock of `SO_TIMESTAMPNS`).
    fn wall_clock_ns() -> u64 {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        since.map_or(0, |d| d.as_nanos() as u64)
    }

    fn recv_all(sock: &std::net::UdpSocket, n: usize) -> Vec<Vec<u8>> {
        sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 2048];
        (0..n)
            .map(|_| {
                let (len, _) = sock.recv_from(&mut buf).expect("datagram arrives");
                buf[..len].to_vec()
            })
            .collect()
    }

    #[test]
    fn sends_more_than_one_batch_to_several_destinations_in_order() {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_nonblocking(true).unwrap();
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("[::1]:0");
        let mut d = Datagrams::default();
        let total = BATCH * 2 + 5;
        for i in 0..total {
            d.push(&(i as u32).to_be_bytes(), a.local_addr().unwrap());
        }
        let r = Batcher::default().send(tx.as_raw_fd(), &d, 0);
        assert_eq!(
            r,
            Sent {
                next: total,
                failed: 0,
                would_block: false
            }
        );
        let got = recv_all(&a, total);
        let want: Vec<Vec<u8>> = (0..total)
            .map(|i| (i as u32).to_be_bytes().to_vec())
            .collect();
        assert_eq!(got, want);

        // An IPv6 destination from an IPv4 socket is refused; the rest still goes out.
        if let Ok(b) = b {
            let mut d = Datagrams::default();
            d.push(b"v6", b.local_addr().unwrap());
            d.push(b"after", a.local_addr().unwrap());
            let r = Batcher::default().send(tx.as_raw_fd(), &d, 0);
            assert_eq!((r.next, r.failed), (2, 1), "{r:?}");
            assert_eq!(recv_all(&a, 1), vec![b"after".to_vec()]);
        }
    }

    /// Datagram `i` of a test batch: `len` bytes, each the low byte of `i`.
    fn numbered(i: usize, len: usize) -> Vec<u8> {
        vec![i as u8; len]
    }

    #[test]
    fn runs_to_one_destination_become_one_message_each() {
        let (a, b) = (
            SocketAddr::from(([127, 0, 0, 1], 1)),
            SocketAddr::from(([127, 0, 0, 1], 2)),
        );
        let mut d = Datagrams::default();
        // 0-2: a run (equal sizes, shorter last); 3: longer than the run before, a new one;
        // 4: another destination; 5-6: equal sizes.
        for (i, (len, to)) in [
            (1200, a),
            (1200, a),
            (700, a),
            (1300, a),
            (1200, b),
            (40, a),
            (40, a),
        ]
        .into_iter()
        .enumerate()
        {
            d.push(&numbered(i, len), to);
        }
        // 7: same destination and size as 5-6 but another group (another connection's flush).
        d.new_group();
        d.push(&numbered(7, 40), a);
        let (six, seven) = (d.get(6).unwrap().0, d.get(7).unwrap().0);
        assert_eq!(
            six.as_ptr_range().end,
            seven.as_ptr(),
            "back to back in the buffer"
        );
        assert!(!d.continues(6));
        let g = Batcher::new(true);
        let runs: Vec<usize> = [0, 3, 4, 5]
            .iter()
            .map(|&i| g.run_len(&d, i, 0).0)
            .collect();
        assert_eq!(runs, vec![3, 1, 1, 2]);
        assert_eq!(g.run_len(&d, 6, 0).0, 1);
        // A datagram after a shorter one ends the run.
        assert_eq!(g.run_len(&d, 2, 0).0, 1);
        // Indexes before `single_before`, and a batcher without GSO, send one per message.
        assert_eq!(g.run_len(&d, 0, 3), (1, 1200));
        assert_eq!(Batcher::new(false).run_len(&d, 0, 0), (1, 1200));
        assert_eq!(g.run_len(&d, 0, 0), (3, 3100));
        // At most GSO_MAX_SEGMENTS per message.
        let mut many = Datagrams::default();
        for i in 0..GSO_MAX_SEGMENTS + 3 {
            many.push(&numbered(i, 10), a);
        }
        assert_eq!(g.run_len(&many, 0, 0).0, GSO_MAX_SEGMENTS);
        assert_eq!(g.run_len(&many, GSO_MAX_SEGMENTS, 0).0, 3);
    }

    #[test]
    fn gso_runs_arrive_as_the_datagrams_they_were() {
        for gso in [true, false] {
            let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            tx.set_nonblocking(true).unwrap();
            let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
            let plan = [
                (1200, to_a),
                (1200, to_a),
                (1200, to_a),
                (500, to_a),
                (1200, to_b),
                (1200, to_b),
                (90, to_a),
            ];
            let mut d = Datagrams::default();
            for (i, (len, to)) in plan.iter().enumerate() {
                d.push(&numbered(i, *len), *to);
            }
            let mut batcher = Batcher::new(gso);
            let r = batcher.send(tx.as_raw_fd(), &d, 0);
            assert_eq!((r.next, r.failed, r.would_block), (plan.len(), 0, false));
            assert_eq!(batcher.gso(), gso, "loopback takes GSO");
            let want = |to| -> Vec<Vec<u8>> {
                plan.iter()
                    .enumerate()
                    .filter(|(_, (_, t))| *t == to)
                    .map(|(i, (len, _))| numbered(i, *len))
                    .collect()
            };
            assert_eq!(recv_all(&a, 5), want(to_a), "gso {gso}");
            assert_eq!(recv_all(&b, 2), want(to_b), "gso {gso}");
        }
    }

    #[test]
    fn receiver_reads_a_batch_with_sources_and_stops_when_empty() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let total = RECV_BATCH + 6;
        for i in 0..total {
            let from = if i % 2 == 0 { &a } else { &b };
            from.send_to(&(i as u32).to_be_bytes(), to).unwrap();
        }
        // Too large for a slot: truncated by the kernel and reported, not delivered.
        a.send_to(&[7u8; RECV_SLOT + 1], to).unwrap();
        let mut r = Receiver::default();
        let mut seen = Vec::new();
        let mut truncated = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while seen.len() < total || truncated == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} arrived",
                seen.len()
            );
            let got = r.recv(rx.as_raw_fd(), 0).unwrap();
            assert!(got.count <= RECV_BATCH);
            truncated += got.truncated;
            for i in 0..got.count {
                let (bytes, from) = r.datagram(i).unwrap();
                seen.push((u32::from_be_bytes(bytes.try_into().unwrap()), from));
            }
        }
        assert_eq!(truncated, 1);
        for (i, (n, from)) in seen.iter().enumerate() {
            assert_eq!(*n as usize, i);
            let want = if i % 2 == 0 { &a } else { &b };
            assert_eq!(*from, want.local_addr().unwrap());
        }
        let empty = r.recv(rx.as_raw_fd(), 0).unwrap();
        assert_eq!((empty.count, empty.truncated, empty.read), (0, 0, 0));
        assert!(r.datagram(0).is_none());
    }

    #[test]
    fn receiver_skips_datagrams_that_queued_longer_than_allowed() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        enable_arrival_timestamps(rx.as_raw_fd()).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        // The kernel turns arrival stamping on asynchronously after the first socket asks for
        // it; until then a datagram is stamped when it is read. Wait until a probe that
        // waited 2 ms in the queue is seen as stale.
        let mut r = Receiver::default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "arrival stamps never took effect"
            );
            tx.send_to(b"probe", to).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
            let cutoff = wall_clock_ns();
            let mut stale = 0;
            loop {
                let got = r.recv(rx.as_raw_fd(), cutoff).unwrap();
                stale += got.stale;
                if got.read == 0 {
                    break;
                }
            }
            if stale > 0 {
                break;
            }
        }
        tx.send_to(b"old", to).unwrap();
        // Everything stamped before this instant is stale; the kernel's stamp of "old" is
        // earlier than any later reading of the same clock.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let cutoff = wall_clock_ns();
        std::thread::sleep(std::time::Duration::from_millis(5));
        tx.send_to(b"new", to).unwrap();
        let (mut seen, mut stale) = (Vec::new(), 0);
        while seen.len() + stale < 2 {
            assert!(std::time::Instant::now() < deadline);
            let got = r.recv(rx.as_raw_fd(), cutoff).unwrap();
            stale += got.stale;
            for i in 0..got.count {
                seen.push(r.datagram(i).unwrap().0.to_vec());
            }
        }
        assert_eq!(stale, 1);
        assert_eq!(seen, vec![b"new".to_vec()]);
        // Without a cutoff nothing is stale.
        tx.send_to(b"again", to).unwrap();
        let got = loop {
            let got = r.recv(rx.as_raw_fd(), 0).unwrap();
            if got.read > 0 {
                break got;
            }
            assert!(std::time::Instant::now() < deadline);
        };
        assert_eq!((got.count, got.stale), (1, 0));
    }

    #[test]
    fn receive_drops_counts_datagrams_a_full_queue_refused() {
        let rx = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        rx.set_recv_buffer_size(2048).unwrap(); // the kernel's minimum: a few datagrams
        rx.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let to = rx.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(receive_drops(rx.as_raw_fd()), Some(0));
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            let _ = tx.send_to(&[1u8; 1000], to);
        }
        // Nobody reads `rx`: most of the 200 datagrams did not fit.
        let drops = receive_drops(rx.as_raw_fd()).expect("Linux reports SO_MEMINFO");
        assert!(drops >= 100, "{drops}");
        assert!(drops <= 200, "{drops}");
    }

    #[test]
    fn ipv6_sockets_send_with_scope_and_port() {
        let Ok(tx) = std::net::UdpSocket::bind("[::1]:0") else {
            eprintln!("SKIPPED: no IPv6 loopback on this machine");
            return;
        };
        tx.set_nonblocking(true).unwrap();
        let rx = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let mut d = Datagrams::default();
        d.push(b"hello", rx.local_addr().unwrap());
        let r = Batcher::default().send(tx.as_raw_fd(), &d, 0);
        assert_eq!((r.next, r.failed), (1, 0));
        assert_eq!(recv_all(&rx, 1), vec![b"hello".to_vec()]);
    }
}
