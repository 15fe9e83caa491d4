//! One shard's QUIC endpoint: its quiche `Config`, its connection table, CID routing,
//! forwarding and handoff. Synchronous and sans-IO: the shard host (`runtime::host`) feeds it
//! datagrams, peer messages and ticks with the time, and drains [`Endpoint::take_output`].
//!
//! The seam with the core is narrow: stream bytes in (`Shard::handle_stream_data`), frames
//! out (`Shard::pop_frame`), connection opened/closed, and the core's actions.
//!
//! Split along its seams: this file holds the types and the public entry points;
//! [`accept`] routes datagrams by CID, forwards, answers with Retry / Version Negotiation and
//! accepts new connections; [`conn`] is per-connection I/O (quiche ↔ streams ↔ core, frames
//! out, close sequencing, timers, flushing); [`handoff`] moves connections between shards;
//! [`app`] is the one seam between a connection's transport and its application — native
//! signaling or WebTransport ([`webtransport`]: HTTP/3 events mapped onto the same core seam).

mod accept;
mod app;
mod conn;
mod handoff;
mod webtransport;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::core::codec::Frame;
use crate::core::ids::{ConnId, ShardId};
use crate::core::router::{encode_cid, shard_of_cid, CID_LEN};
use crate::core::shard::{Action, HandoffJoin, Now, Shard, ShardEvent};
use crate::quic::cid::{CidKey, FastMap, FastSet};
use crate::quic::datagrams::Datagrams;
use app::{App, AppCtx, AppEvent, Received};

/// ALPN of native QUIC signaling.
pub const ALPN_MC: &[u8] = b"mc/1";
/// ALPN of HTTP/3 (WebTransport).
pub const ALPN_H3: &[u8] = b"h3";
/// Smallest datagram that may open a connection (RFC 9000 §14.1).
pub const MIN_INITIAL_DATAGRAM: usize = 1200;
/// Largest UDP payload we send.
pub const MAX_DATAGRAM: usize = 1350;
/// Bytes read from a stream per `stream_recv`.
const READ_BUF: usize = 16 * 1024;
/// How long CIDs of a connection handed to another shard keep being forwarded by CID lookup.
const MOVED_TTL: Duration = Duration::from_secs(120);

/// Transport tunables of an endpoint.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// This shard.
    pub shard: ShardId,
    /// Shards in the process.
    pub shard_count: u16,
    /// Node id for the CID layout.
    pub node_id: u16,
    /// TLS certificate chain (PEM path).
    pub tls_cert: String,
    /// TLS key (PEM path).
    pub tls_key: String,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// Keep-alive interval (zero = off).
    pub keep_alive: Duration,
    /// Connections this shard accepts.
    pub max_connections: usize,
    /// WebTransport origins (`None` = any).
    pub allowed_origins: Option<Vec<String>>,
    /// Always require address validation (Retry) before a handshake.
    pub retry_always: bool,
    /// Handshakes in progress on this shard above which Retry is required.
    pub retry_threshold: usize,
    /// Handshakes in progress on this shard above which new Initials are dropped.
    pub max_handshakes: usize,
    /// Key for Retry tokens (shared by all shards).
    pub retry_key: crate::quic::retry::RetryKey,
}

/// Builds a shard's quiche configuration.
pub fn quiche_config(cfg: &EndpointConfig) -> Result<quiche::Config, quiche::Error> {
    let mut c = quiche::Config::new(quiche::PROTOCOL_VERSION)?;
    c.load_cert_chain_from_pem_file(&cfg.tls_cert)?;
    c.load_priv_key_from_pem_file(&cfg.tls_key)?;
    c.set_application_protos(&[ALPN_MC, ALPN_H3])?;
    c.set_max_idle_timeout(u64::try_from(cfg.idle_timeout.as_millis()).unwrap_or(u64::MAX));
    c.set_max_recv_udp_payload_size(MAX_DATAGRAM);
    c.set_max_send_udp_payload_size(MAX_DATAGRAM);
    c.set_initial_max_data(4 * 1024 * 1024);
    c.set_initial_max_stream_data_bidi_local(1024 * 1024);
    c.set_initial_max_stream_data_bidi_remote(1024 * 1024);
    c.set_initial_max_stream_data_uni(256 * 1024);
    c.set_initial_max_streams_bidi(16);
    c.set_initial_max_streams_uni(16);
    c.set_disable_active_migration(true);
    c.set_active_connection_id_limit(4);
    c.enable_dgram(true, 16, 16);
    Ok(c)
}

/// Messages between shards.
pub enum PeerMsg {
    /// A datagram the sender's socket received for a connection the receiver owns.
    Datagram {
        /// Bytes.
        data: Vec<u8>,
        /// Peer address.
        from: SocketAddr,
        /// Local address.
        to: SocketAddr,
    },
    /// A connection moving to the meeting's shard.
    Handoff(Box<Handoff>),
}

/// What kind of [`PeerMsg`] (kept when the message itself is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMsgKind {
    /// A forwarded datagram.
    Datagram,
    /// A connection handoff.
    Handoff,
}

impl PeerMsg {
    /// Its kind.
    pub fn kind(&self) -> PeerMsgKind {
        match self {
            PeerMsg::Datagram { .. } => PeerMsgKind::Datagram,
            PeerMsg::Handoff(_) => PeerMsgKind::Handoff,
        }
    }
}

/// A connection in transit between shards.
pub struct Handoff {
    id: ConnId,
    entry: ConnEntry,
    /// The verified join (native QUIC), or `None` for a WebTransport session handed over at
    /// its CONNECT, before any signaling.
    join: Option<HandoffJoin>,
}

struct ConnEntry {
    conn: quiche::Connection,
    app: App,
    opened: bool,
    partial: Option<(Frame, usize)>,
    closing: Option<Closing>,
    last_send: Instant,
    /// Time of this connection's armed entry in `Endpoint::timers` (entries at other times
    /// are stale).
    deadline: Option<Instant>,
    /// Every key of `Endpoint::cids` naming this connection on this shard, so closing or
    /// moving it never scans the whole CID map.
    cids: Vec<CidKey>,
}

struct Closing {
    code: u64,
    reason: &'static str,
    fin_sent: bool,
    close_after: Option<Instant>,
    hard_deadline: Instant,
    /// The application's session close was attempted (WebTransport: its close capsule).
    session_closed: bool,
}

/// Why a datagram was dropped before it reached a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramDrop {
    /// No valid QUIC header, or a CID longer than QUIC allows.
    Unparseable,
    /// Could open a connection but is smaller than RFC 9000's 1200 bytes (never answered, so
    /// the server cannot amplify).
    TooShort,
    /// A non-Initial packet for a connection this shard does not know (expired, reaped).
    UnknownConnection,
    /// An Initial while the shard shuts down.
    Stopping,
    /// quiche refused to create a connection from the Initial.
    AcceptFailed,
    /// Larger than a receive slot; the kernel truncated it.
    Oversized,
    /// Waited in the socket's receive queue longer than `--max-queue-delay` (shed unread
    /// under overload).
    QueueDelay,
}

impl DatagramDrop {
    /// Every reason, in index order.
    pub const ALL: [DatagramDrop; 7] = [
        DatagramDrop::Unparseable,
        DatagramDrop::TooShort,
        DatagramDrop::UnknownConnection,
        DatagramDrop::Stopping,
        DatagramDrop::AcceptFailed,
        DatagramDrop::Oversized,
        DatagramDrop::QueueDelay,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            DatagramDrop::Unparseable => "unparseable",
            DatagramDrop::TooShort => "too_short",
            DatagramDrop::UnknownConnection => "unknown_connection",
            DatagramDrop::Stopping => "stopping",
            DatagramDrop::AcceptFailed => "accept_failed",
            DatagramDrop::Oversized => "oversized",
            DatagramDrop::QueueDelay => "queue_delay",
        }
    }
}

/// Counters of the transport layer.
#[derive(Debug, Default, Clone)]
pub struct TransportStats {
    /// Handshakes completed on this shard.
    pub handshakes: u64,
    /// Datagrams read from this shard's socket.
    pub datagrams_received: u64,
    /// Datagrams forwarded to the owning shard.
    pub datagrams_forwarded: u64,
    /// Datagrams received from other shards.
    pub datagrams_from_peers: u64,
    /// Connections handed off.
    pub handoffs_out: u64,
    /// Connections adopted.
    pub handoffs_in: u64,
    /// Datagrams dropped before reaching a connection, by reason
    /// (index: [`DatagramDrop`] as `usize`).
    pub datagrams_dropped: [u64; DatagramDrop::ALL.len()],
    /// Connections refused at the per-shard limit.
    pub refused: u64,
    /// Retry packets sent.
    pub retries: u64,
    /// Initials with an invalid or expired Retry token.
    pub bad_retry_tokens: u64,
    /// Initials dropped because too many handshakes were in progress.
    pub handshakes_shed: u64,
}

/// Output the glue must perform.
#[derive(Default)]
pub struct Output {
    /// UDP datagrams to send.
    pub packets: Datagrams,
    /// Messages for other shards.
    pub peers: Vec<(ShardId, PeerMsg)>,
    /// Events for the control thread (meeting ended, …).
    pub events: Vec<ShardEvent>,
}

impl Output {
    /// True when there is nothing to perform.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty() && self.peers.is_empty() && self.events.is_empty()
    }
}

/// A shard's endpoint: turns datagrams, peer messages and time into packets, peer messages and
/// core inputs. It reads no clock: every entry point takes `now`.
pub struct Endpoint {
    cfg: EndpointConfig,
    qcfg: quiche::Config,
    core: Shard,
    conns: FastMap<ConnId, ConnEntry>,
    cids: FastMap<CidKey, ConnId>,
    moved: FastMap<CidKey, (ShardId, Instant)>,
    dirty: FastSet<ConnId>,
    /// Scratch list of `dirty` drained by a flush (kept for its allocation).
    flushing: Vec<ConnId>,
    timers: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, ConnId)>>,
    closing: FastSet<ConnId>,
    next_conn: u64,
    out: Output,
    /// An emptied `Output` given back by the glue, reused by the next `take_output`.
    spare: Output,
    stats: TransportStats,
    last_sweep: Instant,
    stopping: bool,
    /// Connections accepted here whose handshake has not completed.
    handshaking: usize,
    /// Stream read buffer, kept to avoid zeroing it per readable connection.
    read_buf: Option<Box<[u8; READ_BUF]>>,
}

impl Endpoint {
    /// An endpoint around a core shard, created at `now`.
    pub fn new(cfg: EndpointConfig, qcfg: quiche::Config, core: Shard, now: Instant) -> Self {
        Self {
            cfg,
            qcfg,
            core,
            conns: FastMap::default(),
            cids: FastMap::default(),
            moved: FastMap::default(),
            dirty: FastSet::default(),
            flushing: Vec::new(),
            timers: std::collections::BinaryHeap::new(),
            closing: FastSet::default(),
            next_conn: 0,
            out: Output::default(),
            spare: Output::default(),
            stats: TransportStats::default(),
            last_sweep: now,
            stopping: false,
            handshaking: 0,
            read_buf: Some(Box::new([0u8; READ_BUF])),
        }
    }

    /// This endpoint's shard.
    pub fn shard(&self) -> ShardId {
        self.cfg.shard
    }

    /// True once [`Endpoint::shutdown`] was called and every connection is gone.
    pub fn stopped(&self) -> bool {
        self.stopping && self.conns.is_empty()
    }

    /// True once [`Endpoint::shutdown`] was called.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// Transport counters.
    pub fn stats(&self) -> &TransportStats {
        &self.stats
    }

    /// Live connections (including handshaking ones).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The sans-IO core, for queries.
    pub fn core(&self) -> &Shard {
        &self.core
    }

    /// The sans-IO core, for commands; call [`Endpoint::drive`] afterwards so its actions are
    /// carried out.
    pub fn core_mut(&mut self) -> &mut Shard {
        &mut self.core
    }

    /// Refuses new connections, closes every connection (code 0) and lets the core drain.
    pub fn shutdown(&mut self) {
        self.stopping = true;
        self.core.set_draining(true);
        for e in self.conns.values_mut() {
            let _ = e.conn.close(true, e.app.close_code(0x0), b"shutting down");
        }
        self.dirty.extend(self.conns.keys().copied());
    }

    /// Counts `n` datagrams dropped before they reached a connection (also used by the I/O
    /// glue for datagrams it did not hand over).
    pub fn count_drops(&mut self, why: DatagramDrop, n: u64) {
        self.stats.datagrams_dropped[why as usize] += n;
    }

    /// Takes what must be sent. Give it back with [`Endpoint::recycle`] once sent so its
    /// buffers are reused.
    pub fn take_output(&mut self) -> Output {
        let spare = std::mem::take(&mut self.spare);
        std::mem::replace(&mut self.out, spare)
    }

    /// Returns an `Output` taken with [`Endpoint::take_output`] after it was performed.
    pub fn recycle(&mut self, mut out: Output) {
        out.packets.clear();
        out.peers.clear();
        out.events.clear();
        self.spare = out;
    }

    /// The earliest deadline of any connection or core timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let q = self.timers.peek().map(|std::cmp::Reverse((t, _))| *t);
        match (q, self.core.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A datagram read from this shard's socket at `now`. Packets it causes are generated by
    /// the next [`Endpoint::flush`], so a batch of datagrams is answered by one flush.
    pub fn handle_datagram(&mut self, buf: &mut [u8], from: SocketAddr, to: SocketAddr, now: Now) {
        self.stats.datagrams_received += 1;
        self.route(buf, from, to, false, now);
    }
}
