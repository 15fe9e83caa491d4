//! The glommio glue of one shard: a `LocalExecutor` pinned to one CPU running one task, the
//! shard loop, over one [`ShardHost`].
//!
//! The loop works in turns. A turn takes what other shards sent ([`PeerMsg`]s), then drains the
//! socket without blocking (`recvmmsg`, [`RECV_BATCH`] per call) up to
//! [`TurnLimits::max_datagrams`] datagrams or [`TurnLimits::budget`], fires due timers and
//! serves control requests, and only then flushes — each connection once — and sends everything
//! with `sendmmsg`. So a connection's frames from many inbound datagrams share packets, ACKs are
//! coalesced, and a busy socket costs one pass per turn instead of one per datagram.
//!
//! When a turn leaves nothing to do, the loop sleeps in `ppoll` on the socket and the shard's
//! [`Wake`] eventfd until the next timer, at most [`MAX_TICK`]. It does not await the socket
//! through glommio's rings: a wake-up through the executor costs about ten system calls (its
//! preemption timers are cancelled and re-armed on every pass) where `ppoll` costs one, and at
//! 20 k deliveries/s that difference was a third of the shard's CPU (docs/performance.md).
//! Other threads queue work on channels and then call [`Wake::wake`]. glommio still runs the
//! task, pins it, and performs the rare send that has to wait for room in the socket buffer.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use glommio::net::UdpSocket;

use crate::core::ids::ShardId;
use crate::core::shard::Now;
use crate::quic::endpoint::PeerMsg;
use crate::runtime::host::{clock, ShardHost};
use crate::runtime::udp::{self, RECV_BATCH};
use crate::runtime::wake::{self, Wake};

/// Longest sleep of a shard: bounds how late periodic work (keep-alive sweeps, close grace
/// periods) runs.
pub const MAX_TICK: Duration = Duration::from_millis(5);
/// Shortest time between two timer passes: a deadline that does not move when handled cannot
/// make the loop spin.
const MIN_TICK: Duration = Duration::from_micros(200);

/// Bounds of one socket turn (`--turn-max-datagrams`, `--turn-budget`, `--max-queue-delay`).
#[derive(Debug, Clone, Copy)]
pub struct TurnLimits {
    /// Most datagrams read in one turn before its packets are flushed.
    pub max_datagrams: usize,
    /// Longest a turn keeps reading before it flushes, whatever the count. Under load a longer
    /// turn coalesces more frames per connection into each packet (fewer packets, less CPU per
    /// delivery) at the price of up to this much added latency; see docs/performance.md.
    pub budget: Duration,
    /// Datagrams that waited longer than this in the socket's receive queue are dropped
    /// unprocessed (zero: never).
    pub max_queue_delay: Duration,
}

/// One shard's way to another: the channel and the receiver's wake-up line.
#[derive(Debug, Clone)]
pub struct PeerSender {
    /// Channel to the other shard.
    pub tx: Sender<PeerMsg>,
    /// Its wake-up line.
    pub wake: Wake,
}

/// Everything a shard thread needs, moved into it.
pub struct ShardParts {
    /// Shard id.
    pub shard: ShardId,
    /// Bound UDP socket (SO_REUSEPORT) for the shared port.
    pub socket: OwnedFd,
    /// Local address to report to quiche.
    pub local: SocketAddr,
    /// Senders to every other shard (index = shard id; `None` for self).
    pub peer_tx: Vec<Option<PeerSender>>,
    /// Receivers from every other shard.
    pub peer_rx: Vec<Receiver<PeerMsg>>,
    /// This shard's wake-up line (the control thread and other shards hold clones).
    pub wake: Wake,
    /// Bounds of a socket turn.
    pub turn: TurnLimits,
    /// How long an idle shard keeps polling before it sleeps (zero: sleep at once).
    pub spin: Duration,
}

/// The shard's socket and the reusable `recvmmsg`/`sendmmsg` arrays that use it.
struct Wire {
    socket: UdpSocket,
    batcher: udp::Batcher,
    receiver: udp::Receiver,
}

/// Flushes the endpoint at `now` and performs its output: peer messages, then the packets
/// with `sendmmsg`.
async fn flush(host: &mut ShardHost, wire: &mut Wire, peers: &[Option<PeerSender>], now: Now) {
    let mut now = now;
    loop {
        let mut out = host.flush(now);
        let mut awaited = false;
        for (to, msg) in out.peers.drain(..) {
            let kind = msg.kind();
            let sent = match peers.get(usize::from(to.0)).and_then(Option::as_ref) {
                Some(p) => {
                    let ok = p.tx.try_send(msg).is_ok();
                    p.wake.wake();
                    ok
                }
                None => false,
            };
            if !sent {
                host.count_peer_drop(kind);
            }
        }
        let fd = wire.socket.as_raw_fd();
        let mut i = 0;
        while i < out.packets.len() {
            let r = wire.batcher.send(fd, &out.packets, i);
            i = r.next;
            if r.would_block {
                // Socket buffer full: wait for room with one awaited send, then batch again.
                if let Some((pkt, to)) = out.packets.get(i) {
                    awaited = true;
                    if let Err(e) = wire.socket.send_to(pkt, to).await {
                        tracing::debug!(error = %e, %to, "send_to failed");
                    }
                }
                i += 1;
            }
        }
        host.recycle(out);
        if !awaited {
            return;
        }
        // Time passed while this waited for the socket: flush what became due.
        now = clock();
    }
}

/// What one [`read_turn`] did.
struct TurnRead {
    /// Datagrams read (handed over or dropped as stale/oversized).
    read: usize,
    /// Time of the last batch.
    now: Now,
    /// The turn stopped at its bounds: the socket may hold more.
    more: bool,
    /// `recvmmsg` failed.
    failed: bool,
}

/// One socket turn started at `now`: drain the socket without blocking within the turn's
/// bounds, feeding every datagram to the endpoint.
fn read_turn(
    host: &mut ShardHost,
    wire: &mut Wire,
    local: SocketAddr,
    now: Now,
    limits: TurnLimits,
) -> TurnRead {
    let started = now.mono;
    let mut now = now;
    let mut read = 0;
    let fd = wire.socket.as_raw_fd();
    let rx = &mut wire.receiver;
    let delay_ns = u64::try_from(limits.max_queue_delay.as_nanos()).unwrap_or(u64::MAX);
    while read < limits.max_datagrams {
        // Datagrams the kernel stamped before this instant waited too long: skip them.
        let stale_before = if delay_ns == 0 {
            0
        } else {
            now.unix_ms
                .saturating_mul(1_000_000)
                .saturating_sub(delay_ns)
                .max(1)
        };
        let got = match rx.recv(fd, stale_before) {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!(error = %e, "recvmmsg failed");
                return TurnRead {
                    read,
                    now,
                    more: false,
                    failed: true,
                };
            }
        };
        host.count_unread(got.truncated, got.stale);
        if got.read == 0 {
            break;
        }
        if read > 0 {
            now = clock();
        }
        let ep = host.endpoint_mut();
        for i in 0..got.count {
            if let Some((buf, from)) = rx.datagram(i) {
                ep.handle_datagram(buf, from, local, now);
            }
        }
        read += got.read;
        if got.read < RECV_BATCH {
            break;
        }
        if now.mono.saturating_duration_since(started) >= limits.budget {
            return TurnRead {
                read,
                now,
                more: true,
                failed: false,
            };
        }
    }
    TurnRead {
        read,
        now,
        more: read >= limits.max_datagrams,
        failed: false,
    }
}

/// Hands up to `limit` messages from other shards to the host. Returns (messages, forwarded
/// datagrams among them).
fn drain_peers(
    host: &mut ShardHost,
    peer_rx: &[Receiver<PeerMsg>],
    now: Now,
    limit: usize,
) -> (usize, u64) {
    let (mut n, mut datagrams) = (0, 0);
    for rx in peer_rx {
        while n < limit {
            let Ok(msg) = rx.try_recv() else { break };
            datagrams += u64::from(matches!(msg, PeerMsg::Datagram { .. }));
            host.handle_peer(msg, now);
            n += 1;
        }
    }
    (n, datagrams)
}

/// When the next timer pass is due, the last one having run at `last`.
fn next_tick(host: &ShardHost, last: Instant) -> Instant {
    let cap = last + MAX_TICK;
    let due = host.endpoint().poll_timeout().map_or(cap, |d| d.min(cap));
    due.max(last + MIN_TICK)
}

/// Runs the shard until a `Shutdown` request completes.
pub async fn run(parts: ShardParts, host: ShardHost) {
    let ShardParts {
        shard,
        socket,
        local,
        peer_tx,
        peer_rx,
        wake,
        turn,
        spin,
    } = parts;
    // SAFETY: the fd is a bound, non-blocking UDP socket we own.
    let mut wire = Wire {
        socket: unsafe { UdpSocket::from_raw_fd(socket.into_raw_fd()) },
        batcher: udp::Batcher::default(),
        receiver: udp::Receiver::default(),
    };
    let mut host = host;
    let fd = wire.socket.as_raw_fd();
    if !turn.max_queue_delay.is_zero() {
        if let Err(e) = udp::enable_arrival_timestamps(fd) {
            tracing::warn!(shard = %shard, error = %e, "SO_TIMESTAMPNS unavailable: --max-queue-delay is not enforced");
        }
    }
    host.set_kernel_drops_probe(Box::new(move || udp::receive_drops(fd)));
    tracing::info!(shard = %shard, %local, "shard serving");
    let mut last_tick = Instant::now();
    let mut last_busy = last_tick;
    let mut stop_since: Option<Instant> = None;
    loop {
        let started = clock();
        let (peer_msgs, forwarded) = drain_peers(&mut host, &peer_rx, started, turn.max_datagrams);
        let r = read_turn(&mut host, &mut wire, local, started, turn);
        let now = r.now;
        let tick = now.mono >= next_tick(&host, last_tick) || host.control_pending();
        if tick {
            host.handle_tick(now);
            last_tick = now.mono;
        }
        if peer_msgs > 0 || r.read > 0 || tick {
            flush(&mut host, &mut wire, &peer_tx, now).await;
            let done = Instant::now();
            host.record_turn(done - started.mono, r.read as u64 + forwarded, done);
            last_busy = done;
        }
        if tick && host.stopping() {
            let since = *stop_since.get_or_insert(now.mono);
            if host.stopped() || since.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
        // Lets glommio run its own work (an awaited send) now and then; free unless its
        // preemption timer fired.
        glommio::yield_if_needed().await;
        if r.more || peer_msgs >= turn.max_datagrams {
            continue;
        }
        // Nothing left: sleep until a datagram, a wake-up or the next timer.
        let now = Instant::now();
        let due = next_tick(&host, last_tick);
        if due <= now || now.saturating_duration_since(last_busy) < spin {
            continue;
        }
        wake.prepare_sleep();
        if host.control_pending() || peer_rx.iter().any(|rx| !rx.is_empty()) {
            wake.awake(false);
            continue;
        }
        // A failed read sleeps without the socket (it may stay readable with an error).
        let socket = if r.failed { -1 } else { fd };
        let woken = wake::sleep(socket, &wake, (due - now).min(MAX_TICK));
        wake.awake(woken.signalled);
    }
    tracing::info!(shard = %shard, "shard stopped");
}

/// Wraps a std socket fd (used by tests that bind their own sockets).
pub fn owned_fd_from_std(sock: std::net::UdpSocket) -> OwnedFd {
    // SAFETY: into_raw_fd transfers ownership.
    unsafe { OwnedFd::from_raw_fd(sock.into_raw_fd()) }
}
