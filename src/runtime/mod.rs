//! Shard runtime: one glommio executor pinned per core, the UDP sockets they share via
//! SO_REUSEPORT, and the channels between shards and to the control thread.

pub mod cpus;
pub mod executor;
pub mod host;
pub mod latency;
pub mod link;
pub mod steering;
pub mod udp;
pub mod wake;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};

use crate::core::binding::BindingKey;
use crate::core::ids::ShardId;
use crate::core::shard::{Shard, ShardConfig};
use crate::core::token::TokenVerifier;
use crate::quic::endpoint::{quiche_config, Endpoint, EndpointConfig, PeerMsg};
use link::{RuntimeLink, ShardHandle};

/// Capacity of each shard → shard channel (forwarded datagrams and handoffs).
const PEER_CHANNEL: usize = 4096;

/// What the runtime needs to start.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// CPUs, one shard each.
    pub cpus: Vec<usize>,
    /// Pin shards (off only in unusual test setups).
    pub pin: bool,
    /// UDP address.
    pub listen: SocketAddr,
    /// glommio io_memory per executor.
    pub io_memory: usize,
    /// How long an idle shard polls before it sleeps (zero = sleep at once).
    pub spin_before_park: Duration,
    /// Bounds of a shard's socket turn (batching and overload shedding).
    pub turn: executor::TurnLimits,
    /// Transport settings (the `shard` field is filled per shard).
    pub endpoint: EndpointConfig,
    /// Core settings (the `shard` field is filled per shard).
    pub core: ShardConfig,
    /// Capacity of each control mailbox.
    pub control_mailbox: usize,
    /// Attach the kernel CID-steering program to the socket group.
    pub cid_steering: bool,
}

/// Why the runtime did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Socket creation or bind failed.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS material or quiche configuration rejected.
    #[error("QUIC/TLS configuration: {0}")]
    Quic(String),
    /// The executor could not start (often: locked memory limit too low for --io-memory).
    #[error("shard {shard} failed to start: {reason}")]
    Executor {
        /// Shard.
        shard: u16,
        /// Cause.
        reason: String,
    },
}

/// The running shards.
pub struct Runtime {
    /// Control-thread side.
    pub link: RuntimeLink,
    /// The bound UDP address (port resolved when 0 was asked).
    pub local_addr: SocketAddr,
    /// Shard threads.
    pub threads: Vec<JoinHandle<()>>,
}

fn bind_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    let _ = s.set_recv_buffer_size(4 << 20);
    if let Ok(got) = s.recv_buffer_size() {
        // The kernel caps SO_RCVBUF at net.core.rmem_max (often 208 KiB): bursts then overflow.
        if got < (1 << 20) {
            tracing::warn!(
                bytes = got,
                "UDP receive buffer capped by net.core.rmem_max; raise it (see docs/deployment.md) to avoid drops under load"
            );
        }
    }
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s)
}

/// Binds the sockets, builds the channel mesh and starts one pinned executor per CPU.
pub fn start(
    cfg: RuntimeConfig,
    verifier: Arc<TokenVerifier>,
    binding: Arc<BindingKey>,
) -> Result<Runtime, StartError> {
    let n = cfg.cpus.len();
    let shard_count = u16::try_from(n).unwrap_or(u16::MAX);
    // Port 0: let the kernel pick a port nobody holds (a plain bind never shares a port, an
    // SO_REUSEPORT autobind may land on another process's group), then bind it N times.
    let listen = if cfg.listen.port() == 0 {
        std::net::UdpSocket::bind(cfg.listen)
            .and_then(|s| s.local_addr())
            .map_err(|source| StartError::Bind {
                addr: cfg.listen,
                source,
            })?
    } else {
        cfg.listen
    };
    let first = bind_socket(listen).map_err(|source| StartError::Bind {
        addr: listen,
        source,
    })?;
    let local_addr = first
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(cfg.listen);
    let mut sockets = vec![first];
    for _ in 1..n {
        sockets.push(bind_socket(local_addr).map_err(|source| StartError::Bind {
            addr: local_addr,
            source,
        })?);
    }
    if n > 1 && cfg.cid_steering {
        match steering::attach(&sockets[0]) {
            Ok(()) => tracing::info!("reuseport steering by connection ID attached"),
            Err(e) => {
                tracing::warn!(error = %e, "reuseport steering unavailable; datagrams are spread by 4-tuple and forwarded between shards")
            }
        }
    }
    // Validate the TLS material once, on this thread, for a clear startup error.
    let mut probe = cfg.endpoint.clone();
    probe.shard_count = shard_count;
    quiche_config(&probe)
        .map_err(|e| StartError::Quic(format!("{e} (check --tls-cert/--tls-key)")))?;

    // Shard → shard mesh, and each shard's wake-up line.
    let mut wakes = Vec::with_capacity(n);
    for i in 0..n {
        wakes.push(wake::Wake::new().map_err(|e| StartError::Executor {
            shard: i as u16,
            reason: format!("eventfd: {e}"),
        })?);
    }
    let mut txs: Vec<Vec<Option<executor::PeerSender>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut rxs: Vec<Vec<crossbeam_channel::Receiver<PeerMsg>>> =
        (0..n).map(|_| Vec::new()).collect();
    for (from, row) in txs.iter_mut().enumerate() {
        for (to, slot) in row.iter_mut().enumerate() {
            if from != to {
                let (tx, rx) = crossbeam_channel::bounded(PEER_CHANNEL);
                *slot = Some(executor::PeerSender {
                    tx,
                    wake: wakes[to].clone(),
                });
                rxs[to].push(rx);
            }
        }
    }
    let (events_tx, events_rx) = crossbeam_channel::bounded(4096);
    let mut handles = Vec::with_capacity(n);
    let mut threads = Vec::with_capacity(n);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<u16, String>>(n);
    for (i, ((socket, tx_row), rx_row)) in sockets.into_iter().zip(txs).zip(rxs).enumerate() {
        let shard = ShardId(i as u16);
        let cpu = cfg.cpus[i];
        let (control_tx, control_rx) = crossbeam_channel::bounded(cfg.control_mailbox);
        handles.push(ShardHandle {
            shard,
            cpu: Some(cpu),
            tx: control_tx,
            wake: wakes[i].clone(),
        });
        let mut ecfg = cfg.endpoint.clone();
        ecfg.shard = shard;
        ecfg.shard_count = shard_count;
        let mut ccfg = cfg.core.clone();
        ccfg.shard = shard;
        ccfg.shard_count = shard_count;
        let (verifier, binding, events_tx, ready_tx) = (
            verifier.clone(),
            binding.clone(),
            events_tx.clone(),
            ready_tx.clone(),
        );
        let parts = executor::ShardParts {
            shard,
            socket: socket.into(),
            local: local_addr,
            peer_tx: tx_row,
            peer_rx: rx_row,
            wake: wakes[i].clone(),
            turn: cfg.turn,
            spin: cfg.spin_before_park,
        };
        let placement = if cfg.pin {
            Placement::Fixed(cpu)
        } else {
            Placement::Unbound
        };
        let name = format!("mc-shard-{i}");
        // The shard loop does its own spinning (`spin`) and sleeping; glommio's preemption
        // timer only decides how often the loop lets the executor run its own work.
        let builder = LocalExecutorBuilder::new(placement)
            .name(&name)
            .io_memory(cfg.io_memory)
            .preempt_timer(Duration::from_millis(10));
        let ready_fail = ready_tx.clone();
        let spawned = builder.spawn(move || async move {
            let span = tracing::info_span!("shard", shard = i);
            let _g = span.enter();
            let qcfg = match quiche_config(&ecfg) {
                Ok(q) => q,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("quiche config: {e}")));
                    return;
                }
            };
            let core = Shard::new(ccfg, verifier, binding);
            let started = std::time::Instant::now();
            let ep = Endpoint::new(ecfg, qcfg, core, started);
            let host = host::ShardHost::new(ep, control_rx, events_tx, Some(cpu), started);
            let _ = ready_tx.send(Ok(i as u16));
            executor::run(parts, host).await;
        });
        match spawned {
            Ok(h) => threads.push(std::thread::spawn(move || {
                if let Err(e) = h.join() {
                    tracing::error!(shard = i, error = %e, "shard executor failed");
                }
            })),
            Err(e) => {
                let _ = ready_fail.send(Err(e.to_string()));
            }
        }
    }
    drop(ready_tx);
    for _ in 0..n {
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(_)) => {}
            Ok(Err(reason)) => {
                return Err(StartError::Executor {
                    shard: 0,
                    reason: format!(
                        "{reason} (glommio needs locked memory: raise `ulimit -l` or lower --io-memory)"
                    ),
                })
            }
            Err(_) => {
                return Err(StartError::Executor {
                    shard: 0,
                    reason: "executor did not start within 30 s".into(),
                })
            }
        }
    }
    Ok(Runtime {
        link: RuntimeLink {
            shards: handles,
            events: events_rx,
        },
        local_addr,
        threads,
    })
}
