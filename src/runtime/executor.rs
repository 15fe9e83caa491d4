//! The glommio glue of one shard: a `LocalExecutor` pinned to one CPU running three kinds of
//! tasks over one [`Endpoint`]: the socket reader, one reader per peer shard, and a ticker
//! (timers and control requests). No task holds the endpoint across an `.await`.

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
use crate::quic::endpoint::{Endpoint, PeerMsg};
use crate::runtime::udp;

/// Longest sleep of the ticker: bounds the latency of control requests.
const MAX_TICK: Duration = Duration::from_millis(5);

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
}

type Peers = Rc<Vec<Option<ConnectedSender<PeerMsg>>>>;

/// The shard's socket and the reusable `sendmmsg` arrays that write to it.
struct Wire {
    socket: UdpSocket,
    batcher: RefCell<udp::Batcher>,
}

async fn flush(ep: &Rc<RefCell<Endpoint>>, wire: &Rc<Wire>, peers: &Peers) {
    loop {
        let mut out = {
            let mut e = ep.borrow_mut();
            e.flush();
            e.take_output()
        };
        if out.packets.is_empty() && out.peers.is_empty() {
            ep.borrow_mut().recycle(out);
            return;
        }
        for (to, msg) in out.peers.drain(..) {
            let kind = msg.kind();
            let sent = match peers.get(usize::from(to.0)).and_then(Option::as_ref) {
                Some(tx) => tx.try_send(msg).is_ok(),
                None => false,
            };
            if !sent {
                ep.borrow_mut().count_peer_drop(kind);
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
                    if let Err(e) = wire.socket.send_to(pkt, to).await {
                        tracing::debug!(error = %e, %to, "send_to failed");
                    }
                }
                i += 1;
            }
        }
        ep.borrow_mut().recycle(out);
    }
}

/// Runs the shard until a `Shutdown` request completes.
pub async fn run(parts: ShardParts, ep: Endpoint) {
    let ShardParts {
        shard,
        socket,
        local,
        peer_tx,
        peer_rx,
    } = parts;
    // SAFETY: the fd is a bound, non-blocking UDP socket we own.
    let wire = Rc::new(Wire {
        socket: unsafe { UdpSocket::from_raw_fd(socket.into_raw_fd()) },
        batcher: RefCell::new(udp::Batcher::default()),
    });
    let mut ep = ep;
    let fd = wire.socket.as_raw_fd();
    ep.set_kernel_drops_probe(Box::new(move || udp::receive_drops(fd)));
    let ep = Rc::new(RefCell::new(ep));
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
        let (ep, wire, peers) = (ep.clone(), wire.clone(), peers.clone());
        tasks.push(glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                ep.borrow_mut().on_peer(msg);
                flush(&ep, &wire, &peers).await;
                glommio::yield_if_needed().await;
            }
        }));
    }
    {
        let (ep, wire, peers) = (ep.clone(), wire.clone(), peers.clone());
        tasks.push(glommio::spawn_local(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                match wire.socket.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        ep.borrow_mut().on_datagram(&mut buf[..n], from, local);
                        flush(&ep, &wire, &peers).await;
                        // A busy socket must not starve the ticker (timers, control requests).
                        glommio::yield_if_needed().await;
                    }
                    Err(e) => {
                        tracing::warn!(shard = %shard, error = %e, "recv_from failed");
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }));
    }
    tracing::info!(shard = %shard, %local, "shard serving");
    let mut stop_since: Option<Instant> = None;
    loop {
        let wait = {
            let e = ep.borrow();
            e.next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(MAX_TICK)
                .clamp(Duration::from_micros(200), MAX_TICK)
        };
        glommio::timer::sleep(wait).await;
        ep.borrow_mut().on_tick();
        flush(&ep, &wire, &peers).await;
        let (stopping, stopped) = {
            let e = ep.borrow();
            (e.stopping(), e.stopped())
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
