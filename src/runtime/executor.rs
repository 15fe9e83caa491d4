//! The glommio glue of one shard: a `LocalExecutor` pinned to one CPU running three kinds of
//! tasks over one [`ShardHost`]: the socket reader, one reader per peer shard, and a ticker
//! (timers and control requests). No task holds the host across an `.await`.
//!
//! The socket reader works in turns: it awaits one datagram, then drains the socket without
//! blocking (`recvmmsg`, [`RECV_BATCH`] per call) up to [`TurnLimits::max_datagrams`] datagrams or
//! [`TurnLimits::budget`], and only then flushes — each connection once — and sends everything with
//! `sendmmsg`. So a connection's frames from many inbound datagrams share packets, ACKs are
//! coalesced, and a busy socket costs one wake-up per turn instead of one per datagram.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::shared_channel::{
    ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use glommio::net::UdpSocket;

use crate::core::ids::ShardId;
use crate::core::shard::Now;
use crate::quic::endpoint::PeerMsg;
use crate::runtime::host::{clock, ShardHost};
use crate::runtime::udp::{self, RECV_BATCH};

/// Longest sleep of the ticker: bounds the latency of control requests.
const MAX_TICK: Duration = Duration::from_millis(5);
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

/// Everything a shard thread needs, moved into it.
pub struct ShardParts {
    /// Shard id.
    pub shard: ShardId,
    /// Bound UDP socket (SO_REUSEPORT) for the shared port.
    pub socket: OwnedFd,
    /// Local address to report to quiche.
    pub local: SocketAddr,
    /// Senders to every other shard (index = shard id; `None` for self).
    pub peer_tx: Vec<Option<SharedSender<PeerMsg>>>,
    /// Receivers from every other shard.
    pub peer_rx: Vec<SharedReceiver<PeerMsg>>,
    /// Bounds of a socket turn.
    pub turn: TurnLimits,
}

type Peers = Rc<Vec<Option<ConnectedSender<PeerMsg>>>>;

/// The shard's socket and the reusable `recvmmsg`/`sendmmsg` arrays that use it.
struct Wire {
    socket: UdpSocket,
    batcher: RefCell<udp::Batcher>,
    receiver: RefCell<udp::Receiver>,
}

type Host = Rc<RefCell<ShardHost>>;

/// Flushes the endpoint at `now` and performs its output: peer messages, then the packets
/// with `sendmmsg`.
async fn flush(host: &Host, wire: &Rc<Wire>, peers: &Peers, now: Now) {
    let mut now = now;
    loop {
        let mut out = host.borrow_mut().flush(now);
        let mut awaited = false;
        for (to, msg) in out.peers.drain(..) {
            let kind = msg.kind();
            let sent = match peers.get(usize::from(to.0)).and_then(Option::as_ref) {
                Some(tx) => tx.try_send(msg).is_ok(),
                None => false,
            };
            if !sent {
                host.borrow_mut().count_peer_drop(kind);
            }
        }
        let mut i = 0;
        while i < out.packets.len() {
            // Not held across an await: the borrow ends with the call.
            let r = wire
                .batcher
                .borrow_mut()
                .send(wire.socket.as_raw_fd(), &out.packets, i);
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
        host.borrow_mut().recycle(out);
        if !awaited {
            return;
        }
        // Other tasks ran while this one waited for the socket: flush what they left.
        now = clock();
    }
}

/// One socket turn started at `now`: `first` (a datagram the awaited read returned, if any),
/// then drain the socket without blocking within the turn's bounds, feeding every datagram to
/// the endpoint. Returns how many datagrams the turn read (0: the socket was empty) and the
/// time of its last batch.
fn read_turn(
    host: &Host,
    wire: &Wire,
    first: Option<(&mut [u8], SocketAddr)>,
    local: SocketAddr,
    now: Now,
    limits: TurnLimits,
) -> (usize, Now) {
    let started = now.mono;
    let mut now = now;
    let mut h = host.borrow_mut();
    let mut handled = 0;
    if let Some((first, from)) = first {
        h.endpoint_mut().handle_datagram(first, from, local, now);
        handled += 1;
    }
    let mut rx = wire.receiver.borrow_mut();
    let delay_ns = u64::try_from(limits.max_queue_delay.as_nanos()).unwrap_or(u64::MAX);
    while handled < limits.max_datagrams {
        // Datagrams the kernel stamped before this instant waited too long: skip them.
        let stale_before = if delay_ns == 0 {
            0
        } else {
            now.unix_ms
                .saturating_mul(1_000_000)
                .saturating_sub(delay_ns)
                .max(1)
        };
        let got = match rx.recv(wire.socket.as_raw_fd(), stale_before) {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!(error = %e, "recvmmsg failed");
                break;
            }
        };
        h.count_unread(got.truncated, got.stale);
        if got.read == 0 {
            break;
        }
        now = clock();
        let ep = h.endpoint_mut();
        for i in 0..got.count {
            if let Some((buf, from)) = rx.datagram(i) {
                ep.handle_datagram(buf, from, local, now);
            }
        }
        handled += got.read;
        if got.read < RECV_BATCH || now.mono.saturating_duration_since(started) >= limits.budget {
            break;
        }
    }
    (handled, now)
}

/// Runs the shard until a `Shutdown` request completes.
pub async fn run(parts: ShardParts, host: ShardHost) {
    let ShardParts {
        shard,
        socket,
        local,
        peer_tx,
        peer_rx,
        turn,
    } = parts;
    // SAFETY: the fd is a bound, non-blocking UDP socket we own.
    let wire = Rc::new(Wire {
        socket: unsafe { UdpSocket::from_raw_fd(socket.into_raw_fd()) },
        batcher: RefCell::new(udp::Batcher::default()),
        receiver: RefCell::new(udp::Receiver::default()),
    });
    let mut host = host;
    let fd = wire.socket.as_raw_fd();
    if !turn.max_queue_delay.is_zero() {
        if let Err(e) = udp::enable_arrival_timestamps(fd) {
            tracing::warn!(shard = %shard, error = %e, "SO_TIMESTAMPNS unavailable: --max-queue-delay is not enforced");
        }
    }
    host.set_kernel_drops_probe(Box::new(move || udp::receive_drops(fd)));
    let host: Host = Rc::new(RefCell::new(host));
    // Connect both directions concurrently: a sender's connect waits for its receiver. The
    // reactor only re-checks pending connections when it wakes up, so keep it awake with a
    // short timer until the mesh is connected (otherwise a late peer can leave us parked).
    let nudge = glommio::spawn_local(async {
        loop {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    });
    let rx_tasks: Vec<_> = peer_rx
        .into_iter()
        .map(|rx| glommio::spawn_local(async move { rx.connect().await }))
        .collect();
    let tx_tasks: Vec<_> = peer_tx
        .into_iter()
        .map(|tx| {
            glommio::spawn_local(async move {
                match tx {
                    Some(tx) => Some(tx.connect().await),
                    None => None,
                }
            })
        })
        .collect();
    let mut connected = Vec::with_capacity(tx_tasks.len());
    for t in tx_tasks {
        connected.push(t.await);
    }
    let peers: Peers = Rc::new(connected);
    let mut receivers = Vec::new();
    for t in rx_tasks {
        receivers.push(t.await);
    }
    drop(nudge);

    let mut tasks = Vec::new();
    for rx in receivers {
        let rx: ConnectedReceiver<PeerMsg> = rx;
        let (host, wire, peers) = (host.clone(), wire.clone(), peers.clone());
        tasks.push(glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                let now = clock();
                let datagrams = u64::from(matches!(msg, PeerMsg::Datagram { .. }));
                host.borrow_mut().handle_peer(msg, now);
                flush(&host, &wire, &peers, now).await;
                let done = Instant::now();
                host.borrow_mut()
                    .record_turn(done - now.mono, datagrams, done);
                glommio::yield_if_needed().await;
            }
        }));
    }
    {
        let (host, wire, peers) = (host.clone(), wire.clone(), peers.clone());
        tasks.push(glommio::spawn_local(async move {
            let mut buf = vec![0u8; 65536];
            let mut first: Option<(usize, SocketAddr)> = None;
            loop {
                // Read without waiting while the socket has datagrams: a busy shard goes from
                // turn to turn with `recvmmsg` alone and never parks on the ring.
                let started = clock();
                let (handled, now) = read_turn(
                    &host,
                    &wire,
                    first.take().map(|(n, from)| (&mut buf[..n], from)),
                    local,
                    started,
                    turn,
                );
                if handled == 0 {
                    // Empty: sleep until the next datagram (it starts the next turn).
                    match wire.socket.recv_from(&mut buf).await {
                        Ok((n, from)) => first = Some((n, from)),
                        Err(e) => {
                            tracing::warn!(shard = %shard, error = %e, "recv_from failed");
                            glommio::timer::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    continue;
                }
                flush(&host, &wire, &peers, now).await;
                let done = Instant::now();
                host.borrow_mut()
                    .record_turn(done - started.mono, handled as u64, done);
                // A busy socket must not starve the ticker (timers, control requests).
                glommio::yield_if_needed().await;
            }
        }));
    }
    tracing::info!(shard = %shard, %local, "shard serving");
    let mut stop_since: Option<Instant> = None;
    loop {
        let wait = {
            let h = host.borrow();
            h.endpoint()
                .poll_timeout()
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(MAX_TICK)
                .clamp(Duration::from_micros(200), MAX_TICK)
        };
        glommio::timer::sleep(wait).await;
        let now = clock();
        host.borrow_mut().handle_tick(now);
        flush(&host, &wire, &peers, now).await;
        let done = Instant::now();
        host.borrow_mut().record_turn(done - now.mono, 0, done);
        let (stopping, stopped) = {
            let h = host.borrow();
            (h.stopping(), h.stopped())
        };
        if stopping {
            let since = *stop_since.get_or_insert_with(Instant::now);
            if stopped || since.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
    }
    tracing::info!(shard = %shard, "shard stopped");
    drop(tasks);
}

/// Wraps a std socket fd (used by tests that bind their own sockets).
pub fn owned_fd_from_std(sock: std::net::UdpSocket) -> OwnedFd {
    // SAFETY: into_raw_fd transfers ownership.
    unsafe { OwnedFd::from_raw_fd(sock.into_raw_fd()) }
}
