//! One shard's QUIC endpoint: its quiche `Config`, its connection table, CID routing,
//! forwarding and handoff. Synchronous: the glommio glue in `runtime::shard` feeds it
//! datagrams, peer messages and ticks, and drains [`Endpoint::take_output`].
//!
//! The seam with the core is narrow: stream bytes in (`Shard::handle_stream_data`), frames
//! out (`Shard::pop_frame`), connection opened/closed, and the core's actions.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::core::codec::Frame;
use crate::core::ids::{ConnId, ShardId};
use crate::core::router::{encode_cid, shard_of_cid, CID_LEN};
use crate::core::shard::{Action, HandoffJoin, Now, Shard, ShardEvent};
use crate::quic::cid::{CidKey, FastMap, FastSet};
use crate::quic::datagrams::Datagrams;
use crate::webtransport::{H3Config, H3Event, H3Server};

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

enum App {
    /// Native QUIC: the signaling stream is the first client bidi stream.
    Native { stream: Option<u64> },
    /// WebTransport over HTTP/3.
    Wt(Box<WtApp>),
}

struct WtApp {
    h3: H3Server,
    /// Session (CONNECT stream id) of the accepted session.
    session: Option<u64>,
    /// The WebTransport bidirectional stream carrying signaling.
    stream: Option<u64>,
    /// Transmits the transport could not take yet, in order.
    pending: VecDeque<(u64, Vec<u8>, bool)>,
    /// A session requested on another shard, to accept once the connection arrives here.
    requested: Option<u64>,
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

    /// Runs queued core work and carries out the core's actions.
    pub fn drive(&mut self, now: Now) {
        self.drive_core(now);
    }

    /// Refuses new connections, closes every connection (code 0) and lets the core drain.
    pub fn shutdown(&mut self) {
        self.stopping = true;
        self.core.set_draining(true);
        for e in self.conns.values_mut() {
            let _ = e.conn.close(true, 0x0, b"shutting down");
        }
        self.dirty.extend(self.conns.keys().copied());
    }

    /// Counts a datagram dropped before it reached a connection (also used by the I/O glue
    /// for datagrams it could not read whole).
    pub fn count_drop(&mut self, why: DatagramDrop) {
        self.stats.datagrams_dropped[why as usize] += 1;
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

    // ------------------------------------------------------------------------------
    // Datagrams
    // ------------------------------------------------------------------------------

    /// A datagram read from this shard's socket at `now`. Packets it causes are generated by
    /// the next [`Endpoint::flush`], so a batch of datagrams is answered by one flush.
    pub fn handle_datagram(&mut self, buf: &mut [u8], from: SocketAddr, to: SocketAddr, now: Now) {
        self.stats.datagrams_received += 1;
        self.route(buf, from, to, false, now);
    }

    fn route(
        &mut self,
        buf: &mut [u8],
        from: SocketAddr,
        to: SocketAddr,
        forwarded: bool,
        now: Now,
    ) {
        let hdr = match quiche::Header::from_slice(buf, CID_LEN) {
            Ok(h) => h,
            Err(_) => {
                self.count_drop(DatagramDrop::Unparseable);
                return;
            }
        };
        let dcid: &[u8] = &hdr.dcid;
        let Some(key) = CidKey::new(dcid) else {
            self.count_drop(DatagramDrop::Unparseable);
            return;
        };
        if let Some(id) = self.cids.get(&key).copied() {
            self.recv(id, buf, from, to, now);
            return;
        }
        if !forwarded {
            let owner = shard_of_cid(dcid, self.cfg.shard_count)
                .filter(|s| *s != self.cfg.shard)
                .or_else(|| self.moved.get(&key).map(|(s, _)| *s));
            if let Some(owner) = owner {
                self.stats.datagrams_forwarded += 1;
                self.out.peers.push((
                    owner,
                    PeerMsg::Datagram {
                        data: buf.to_vec(),
                        from,
                        to,
                    },
                ));
                return;
            }
        }
        // RFC 9000 §14.1/§5.2.2: a datagram that could open a connection must be at least 1200
        // bytes; smaller ones get no answer at all (no Version Negotiation, no Retry), so the
        // server can never be used to amplify.
        if buf.len() < MIN_INITIAL_DATAGRAM {
            self.count_drop(if hdr.ty == quiche::Type::Initial {
                DatagramDrop::TooShort
            } else {
                DatagramDrop::UnknownConnection
            });
            return;
        }
        if !quiche::version_is_supported(hdr.version) {
            let _ = self.out.packets.push_with(MAX_DATAGRAM, |out| {
                quiche::negotiate_version(&hdr.scid, &hdr.dcid, out).map(|len| (len, from))
            });
            return;
        }
        if hdr.ty != quiche::Type::Initial {
            self.count_drop(DatagramDrop::UnknownConnection);
            return;
        }
        if self.stopping {
            self.count_drop(DatagramDrop::Stopping);
            return;
        }
        let handshaking = self.handshaking;
        if handshaking >= self.cfg.max_handshakes {
            self.stats.handshakes_shed += 1;
            return;
        }
        let now_secs = now.unix_ms / 1000;
        let mut validated_odcid: Option<Vec<u8>> = None;
        if !hdr.token.as_ref().is_none_or(|t| t.is_empty()) {
            let token = hdr.token.clone().unwrap_or_default();
            match self.cfg.retry_key.validate(&from, &token, now_secs) {
                Some(odcid) => validated_odcid = Some(odcid),
                None => {
                    // A token we cannot validate: drop (RFC 9000 §8.1.3 allows closing with
                    // INVALID_TOKEN; dropping keeps us silent towards spoofed sources).
                    self.stats.bad_retry_tokens += 1;
                    return;
                }
            }
        }
        let need_retry = self.cfg.retry_always || handshaking >= self.cfg.retry_threshold;
        if need_retry && validated_odcid.is_none() {
            let new_scid = self.fresh_cid();
            let token = self.cfg.retry_key.mint(&from, &hdr.dcid, now_secs);
            let sent = self.out.packets.push_with(MAX_DATAGRAM, |out| {
                quiche::retry(
                    &hdr.scid,
                    &hdr.dcid,
                    &quiche::ConnectionId::from_ref(&new_scid),
                    &token,
                    hdr.version,
                    out,
                )
                .map(|len| (len, from))
            });
            if sent.is_ok() {
                self.stats.retries += 1;
            }
            return;
        }
        // After a Retry the client uses the CID we chose in it as DCID; keep that one.
        let scid: [u8; CID_LEN] = match (&validated_odcid, <[u8; CID_LEN]>::try_from(&hdr.dcid[..]))
        {
            (Some(_), Ok(c)) if shard_of_cid(&c, self.cfg.shard_count) == Some(self.cfg.shard) => c,
            _ => self.fresh_cid(),
        };
        let qscid = quiche::ConnectionId::from_ref(&scid);
        let original = validated_odcid
            .as_deref()
            .map(quiche::ConnectionId::from_ref);
        let mut conn = match quiche::accept(&qscid, original.as_ref(), to, from, &mut self.qcfg) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(shard = %self.cfg.shard, error = %e, "accept failed");
                self.count_drop(DatagramDrop::AcceptFailed);
                return;
            }
        };
        if self.conns.len() >= self.cfg.max_connections {
            self.stats.refused += 1;
            let _ = conn.close(false, 0x2, b"server busy");
        }
        self.next_conn += 1;
        let id = ConnId::new(self.cfg.shard, self.next_conn);
        let scid_key = CidKey::new(&scid).unwrap_or(key);
        self.cids.insert(scid_key, id);
        self.cids.insert(key, id);
        self.handshaking += 1;
        self.conns.insert(
            id,
            ConnEntry {
                conn,
                app: App::Native { stream: None },
                opened: false,
                partial: None,
                closing: None,
                last_send: now.mono,
                deadline: None,
                cids: vec![scid_key, key],
            },
        );
        self.recv(id, buf, from, to, now);
    }

    fn fresh_cid(&mut self) -> [u8; CID_LEN] {
        let mut random = [0u8; CID_LEN - 5];
        rand::thread_rng().fill_bytes(&mut random);
        encode_cid(self.cfg.node_id, self.cfg.shard, &random)
    }

    fn recv(&mut self, id: ConnId, buf: &mut [u8], from: SocketAddr, to: SocketAddr, now: Now) {
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        if let Err(err) = e.conn.recv(buf, quiche::RecvInfo { from, to }) {
            if err != quiche::Error::Done {
                tracing::debug!(shard = %self.cfg.shard, conn = %id, error = %err, "recv failed");
            }
        }
        self.after_io(id, now);
    }

    /// Reads streams, feeds the core, writes frames; marks the connection for sending.
    fn after_io(&mut self, id: ConnId, t: Now) {
        self.dirty.insert(id);
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        if !e.opened && (e.conn.is_established() || e.conn.is_in_early_data()) {
            e.opened = true;
            self.handshaking = self.handshaking.saturating_sub(1);
            self.stats.handshakes += 1;
            if e.conn.application_proto() == ALPN_H3 {
                let h3 = H3Server::new(H3Config {
                    allowed_origins: self.cfg.allowed_origins.clone(),
                    ..H3Config::default()
                });
                e.app = App::Wt(Box::new(WtApp {
                    h3,
                    session: None,
                    stream: None,
                    pending: VecDeque::new(),
                    requested: None,
                }));
            }
            self.core.handle_connection_opened(id, t);
        }
        self.read_streams(id, t);
        self.drive_core(t);
    }

    fn read_streams(&mut self, id: ConnId, t: Now) {
        // The buffer is lent out for the call (and put back), so it is not zeroed each time.
        let mut buf = self
            .read_buf
            .take()
            .unwrap_or_else(|| Box::new([0u8; READ_BUF]));
        self.read_streams_into(id, t, &mut buf[..]);
        self.read_buf = Some(buf);
    }

    fn read_streams_into(&mut self, id: ConnId, t: Now, buf: &mut [u8]) {
        loop {
            let Some(e) = self.conns.get_mut(&id) else {
                return;
            };
            if !e.opened {
                return;
            }
            let Some(sid) = e.conn.stream_readable_next() else {
                break;
            };
            loop {
                let Some(e) = self.conns.get_mut(&id) else {
                    return;
                };
                let (n, fin) = match e.conn.stream_recv(sid, buf) {
                    Ok(v) => v,
                    Err(quiche::Error::StreamReset(_)) => {
                        if let App::Wt(wt) = &mut e.app {
                            if let Err(err) = wt.h3.on_stream_reset(sid) {
                                let _ = e.conn.close(true, err.code.0, err.reason.as_bytes());
                            }
                            self.drain_h3(id, t);
                        }
                        break;
                    }
                    Err(_) => break,
                };
                match &mut e.app {
                    App::Native { stream } => {
                        let ours = match stream {
                            None if sid % 4 == 0 => {
                                *stream = Some(sid);
                                true
                            }
                            Some(s) => *s == sid,
                            None => false,
                        };
                        if ours {
                            self.core.handle_stream_data(id, &buf[..n], t);
                            if fin {
                                // The client finished its signaling stream: treat as close.
                                self.close_conn(id, 0, b"stream finished");
                            }
                        } else {
                            let _ = e.conn.stream_shutdown(sid, quiche::Shutdown::Read, 0x101);
                        }
                    }
                    App::Wt(wt) => {
                        if let Err(err) = wt.h3.on_stream_data(sid, &buf[..n], fin) {
                            let _ = e.conn.close(true, err.code.0, err.reason.as_bytes());
                            break;
                        }
                        self.drain_h3(id, t);
                    }
                }
                if n == 0 || fin {
                    break;
                }
            }
        }
    }

    /// Writes what HTTP/3 wants written and acts on its events.
    fn drain_h3(&mut self, id: ConnId, t: Now) {
        loop {
            let Some(e) = self.conns.get_mut(&id) else {
                return;
            };
            let App::Wt(wt) = &mut e.app else {
                return;
            };
            while let Some(tx) = wt.h3.poll_transmit() {
                wt.pending.push_back((tx.stream_id, tx.data, tx.fin));
            }
            while let Some((sid, data, fin)) = wt.pending.pop_front() {
                match e.conn.stream_send(sid, &data, fin) {
                    Ok(n) if n == data.len() => {}
                    Ok(n) => {
                        wt.pending.push_front((sid, data[n..].to_vec(), fin));
                        break;
                    }
                    Err(quiche::Error::Done) => {
                        wt.pending.push_front((sid, data, fin));
                        break;
                    }
                    Err(_) => {}
                }
            }
            // Datagrams are not part of signaling: discard what arrives.
            let mut scratch = [0u8; 64];
            while e.conn.dgram_recv(&mut scratch).is_ok() {}
            let Some(ev) = wt.h3.poll_event() else {
                return;
            };
            tracing::debug!(shard = %self.cfg.shard, conn = %id, event = ?ev, "http/3 event");
            match ev {
                H3Event::SessionRequested {
                    session_id,
                    meeting_id,
                    ..
                } => {
                    if wt.session.is_some() {
                        wt.h3.reject_session(session_id, 429);
                        continue;
                    }
                    if self.core.is_draining() {
                        wt.h3.reject_session(session_id, 503);
                        continue;
                    }
                    wt.session = Some(session_id);
                    let owner = crate::core::router::Router::new(self.cfg.shard_count)
                        .shard_for(&meeting_id);
                    if owner == self.cfg.shard {
                        wt.h3.accept_session(session_id);
                    } else {
                        // Move the connection to the meeting's shard before any signaling;
                        // that shard accepts the session.
                        wt.requested = Some(session_id);
                        self.hand_off_early(id, owner, t);
                        return;
                    }
                }
                H3Event::StreamData {
                    session_id,
                    stream_id,
                    data,
                    fin,
                } => {
                    if wt.session != Some(session_id) {
                        continue;
                    }
                    match wt.stream {
                        None => wt.stream = Some(stream_id),
                        Some(s) if s != stream_id => {
                            // One signaling stream per session.
                            let _ =
                                e.conn
                                    .stream_shutdown(stream_id, quiche::Shutdown::Read, 0x101);
                            let _ =
                                e.conn
                                    .stream_shutdown(stream_id, quiche::Shutdown::Write, 0x101);
                            continue;
                        }
                        Some(_) => {}
                    }
                    self.core.handle_stream_data(id, &data, t);
                    if fin {
                        self.close_conn(id, 0, b"stream finished");
                    }
                }
                H3Event::SessionClosed { .. } => {
                    self.close_conn(id, 0, b"session closed");
                }
                H3Event::ResetStream { stream_id, code } => {
                    let _ = e
                        .conn
                        .stream_shutdown(stream_id, quiche::Shutdown::Read, code.0);
                    if stream_id & 0x2 == 0 {
                        let _ = e
                            .conn
                            .stream_shutdown(stream_id, quiche::Shutdown::Write, code.0);
                    }
                }
            }
        }
    }

    /// Hands a connection to `to` before it joined (WebTransport CONNECT for a foreign meeting).
    fn hand_off_early(&mut self, id: ConnId, to: ShardId, t: Now) {
        // The core knows the connection only as one awaiting its join: forget it here.
        self.core.handle_connection_closed(id, t);
        let Some(entry) = self.conns.remove(&id) else {
            return;
        };
        self.move_out(id, to, entry, None, t);
    }

    fn close_conn(&mut self, id: ConnId, code: u64, reason: &[u8]) {
        if let Some(e) = self.conns.get_mut(&id) {
            let _ = e.conn.close(true, code, reason);
            self.dirty.insert(id);
        }
    }

    /// Runs queued core work, applies its actions and writes its frames.
    fn drive_core(&mut self, t: Now) {
        self.core.process_all(t);
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Close { conn, code, reason } => {
                    if let Some(e) = self.conns.get_mut(&conn) {
                        if e.closing.is_none() {
                            e.closing = Some(Closing {
                                code,
                                reason,
                                fin_sent: false,
                                close_after: None,
                                hard_deadline: t.mono + Duration::from_secs(2),
                            });
                            self.closing.insert(conn);
                            self.dirty.insert(conn);
                        }
                    }
                }
                Action::Handoff { conn, to, join } => self.hand_off(conn, to, *join, t),
                Action::Notify(ev) => self.out.events.push(ev),
            }
        }
        while let Some(conn) = self.core.poll_writable() {
            self.write_frames(conn, t);
            self.dirty.insert(conn);
        }
    }

    fn write_frames(&mut self, id: ConnId, t: Now) {
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        let sid = match &e.app {
            App::Native { stream } => *stream,
            App::Wt(wt) => wt.stream,
        };
        let Some(sid) = sid else {
            return;
        };
        loop {
            let (frame, off) = match e.partial.take() {
                Some(p) => p,
                None => match self.core.pop_frame(id) {
                    Some(f) => (f, 0),
                    None => break,
                },
            };
            match e.conn.stream_send(sid, &frame[off..], false) {
                Ok(n) if off + n == frame.len() => {}
                Ok(n) => {
                    e.partial = Some((frame, off + n));
                    break;
                }
                Err(quiche::Error::Done) => {
                    e.partial = Some((frame, off));
                    break;
                }
                Err(_) => break,
            }
        }
        if let Some(c) = &mut e.closing {
            if !c.fin_sent
                && e.partial.is_none()
                && self.core.queued_frames(id) == 0
                && e.conn.stream_send(sid, b"", true).is_ok()
            {
                {
                    c.fin_sent = true;
                    let rtt = e
                        .conn
                        .path_stats()
                        .next()
                        .map_or(Duration::from_millis(100), |p| p.rtt);
                    let grace = (rtt * 3).clamp(Duration::from_millis(50), Duration::from_secs(1));
                    c.close_after = Some(t.mono + grace);
                }
            }
        }
    }

    fn hand_off(&mut self, id: ConnId, to: ShardId, join: HandoffJoin, t: Now) {
        let Some(entry) = self.conns.remove(&id) else {
            return;
        };
        self.move_out(id, to, entry, Some(join), t);
    }

    fn move_out(
        &mut self,
        id: ConnId,
        to: ShardId,
        entry: ConnEntry,
        join: Option<HandoffJoin>,
        t: Now,
    ) {
        let expires = t.mono + MOVED_TTL;
        let mut entry = entry;
        for cid in std::mem::take(&mut entry.cids) {
            if self.cids.get(&cid) == Some(&id) {
                self.cids.remove(&cid);
                self.moved.insert(cid, (to, expires));
            }
        }
        self.dirty.remove(&id);
        self.closing.remove(&id);
        self.stats.handoffs_out += 1;
        tracing::debug!(shard = %self.cfg.shard, conn = %id, to = %to, "handing connection to the meeting's shard");
        self.out
            .peers
            .push((to, PeerMsg::Handoff(Box::new(Handoff { id, entry, join }))));
    }

    /// A message from another shard, received at `now`.
    pub fn handle_peer(&mut self, msg: PeerMsg, now: Now) {
        match msg {
            PeerMsg::Datagram { mut data, from, to } => {
                self.stats.datagrams_from_peers += 1;
                self.route(&mut data, from, to, true, now);
            }
            PeerMsg::Handoff(h) => self.adopt(*h, now),
        }
    }

    fn adopt(&mut self, h: Handoff, t: Now) {
        let Handoff {
            id,
            mut entry,
            join,
        } = h;
        self.stats.handoffs_in += 1;
        // Timers live in the owning shard's heap: re-arm here.
        entry.deadline = None;
        entry.cids = entry
            .conn
            .source_ids()
            .filter_map(|c| CidKey::new(c))
            .collect();
        for cid in &entry.cids {
            self.cids.insert(*cid, id);
        }
        // Issue CIDs that name this shard, as many as the peer accepts, so every older CID is
        // retired (RETIRE_PRIOR_TO) and the client's packets name their owner from now on;
        // the kernel steering program then delivers them here directly.
        let fresh = (entry.conn.scids_left() + entry.conn.active_scids()).clamp(1, 8);
        for _ in 0..fresh {
            let cid = self.fresh_cid();
            let mut token = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut token);
            if entry
                .conn
                .new_scid(
                    &quiche::ConnectionId::from_ref(&cid),
                    u128::from_be_bytes(token),
                    true,
                )
                .is_ok()
            {
                if let Some(key) = CidKey::new(&cid) {
                    self.cids.insert(key, id);
                    entry.cids.push(key);
                }
            }
        }
        if let App::Wt(wt) = &mut entry.app {
            if let Some(session) = wt.requested.take() {
                if self.core.is_draining() {
                    wt.h3.reject_session(session, 503);
                } else {
                    wt.h3.accept_session(session);
                }
            }
        }
        self.conns.insert(id, entry);
        match join {
            Some(join) => self.core.handle_adopted(id, join, t),
            None => self.core.handle_connection_opened(id, t),
        }
        // A WebTransport session accepted before the handoff: nothing else to do; its
        // stream bytes arrive with the connection's next packets.
        self.after_io(id, t);
    }

    // ------------------------------------------------------------------------------
    // Timers, control, sending
    // ------------------------------------------------------------------------------

    /// Fires due connection and core timers and sweeps keep-alives at `t`.
    pub fn handle_timeout(&mut self, t: Now) {
        while let Some(std::cmp::Reverse((at, id))) = self.timers.peek().copied() {
            if at > t.mono {
                break;
            }
            self.timers.pop();
            if let Some(e) = self.conns.get_mut(&id) {
                // Entries that are not the armed one are stale: skip them.
                if e.deadline == Some(at) {
                    e.deadline = None;
                    match e.conn.timeout_instant() {
                        Some(d) if d <= t.mono => {
                            e.conn.on_timeout();
                            self.dirty.insert(id);
                        }
                        Some(d) => {
                            e.deadline = Some(d);
                            self.timers.push(std::cmp::Reverse((d, id)));
                        }
                        None => {}
                    }
                }
            }
        }
        self.core.handle_timeout(t);
        let closing: Vec<ConnId> = self.closing.iter().copied().collect();
        for id in closing {
            let Some(e) = self.conns.get_mut(&id) else {
                self.closing.remove(&id);
                continue;
            };
            let Some(c) = &e.closing else { continue };
            let due = c.close_after.is_some_and(|a| t.mono >= a) || t.mono >= c.hard_deadline;
            if due && !e.conn.is_closed() && !e.conn.is_draining() {
                let _ = e.conn.close(true, c.code, c.reason.as_bytes());
                self.closing.remove(&id);
                self.dirty.insert(id);
            } else if !c.fin_sent {
                self.write_frames(id, t);
                self.dirty.insert(id);
            }
        }
        let sweep_every = if self.cfg.keep_alive.is_zero() {
            Duration::from_secs(1)
        } else {
            (self.cfg.keep_alive / 2).min(Duration::from_secs(1))
        };
        if t.mono.saturating_duration_since(self.last_sweep) >= sweep_every {
            self.last_sweep = t.mono;
            self.sweep(t.mono);
        }
        self.drive_core(t);
    }

    fn sweep(&mut self, now: Instant) {
        self.moved.retain(|_, (_, exp)| *exp > now);
        if self.cfg.keep_alive.is_zero() {
            return;
        }
        for (id, e) in &mut self.conns {
            if e.opened && now.saturating_duration_since(e.last_send) >= self.cfg.keep_alive {
                let _ = e.conn.send_ack_eliciting();
                self.dirty.insert(*id);
            }
        }
    }

    /// Generates packets for every connection touched since the last call and reaps closed ones.
    /// Each connection is flushed once however many datagrams touched it, so quiche packs
    /// every frame queued since the last flush into as few packets as it can.
    pub fn flush(&mut self, t: Now) {
        let mut batch = std::mem::take(&mut self.flushing);
        while !self.dirty.is_empty() {
            batch.extend(self.dirty.drain());
            for id in batch.drain(..) {
                self.flush_one(id, t);
            }
        }
        self.flushing = batch;
    }

    fn flush_one(&mut self, id: ConnId, t: Now) {
        // Frames may be waiting for flow-control credit that just arrived.
        if self.core.queued_frames(id) > 0
            || self.conns.get(&id).is_some_and(|e| e.partial.is_some())
        {
            self.write_frames(id, t);
        }
        if self
            .conns
            .get(&id)
            .is_some_and(|e| matches!(e.app, App::Wt(_)))
        {
            self.drain_h3(id, t);
        }
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        loop {
            let conn = &mut e.conn;
            match self.out.packets.push_with(MAX_DATAGRAM, |buf| {
                conn.send(buf).map(|(len, info)| (len, info.to))
            }) {
                Ok(_) => {
                    e.last_send = t.mono;
                }
                Err(quiche::Error::Done) => break,
                Err(err) => {
                    tracing::debug!(shard = %self.cfg.shard, conn = %id, error = %err, "send failed");
                    let _ = e.conn.close(false, 0x1, b"internal error");
                    break;
                }
            }
        }
        if e.conn.is_closed() {
            self.reap(id, t);
            return;
        }
        while let Some(retired) = e.conn.retired_scid_next() {
            let Some(retired) = CidKey::new(retired.as_ref()) else {
                continue;
            };
            if self.cids.get(&retired) == Some(&id) {
                self.cids.remove(&retired);
            }
            e.cids.retain(|c| *c != retired);
        }
        // Arm the heap only when the connection's deadline moves earlier than the entry
        // already armed; a later deadline is found when that entry fires (on_tick re-arms).
        // Most sends push the idle/PTO deadline later, so this keeps the heap to about one
        // entry per connection instead of one per flush.
        if let Some(d) = e.conn.timeout_instant() {
            if e.deadline.is_none_or(|armed| d < armed) {
                e.deadline = Some(d);
                self.timers.push(std::cmp::Reverse((d, id)));
            }
        }
    }

    fn reap(&mut self, id: ConnId, t: Now) {
        if let Some(e) = self.conns.remove(&id) {
            if !e.opened {
                self.handshaking = self.handshaking.saturating_sub(1);
            }
            if let Some(err) = e.conn.peer_error() {
                tracing::debug!(shard = %self.cfg.shard, conn = %id, code = err.error_code, "peer closed");
            }
            for cid in &e.cids {
                // A client-chosen CID may have been reused by another connection since.
                if self.cids.get(cid) == Some(&id) {
                    self.cids.remove(cid);
                }
            }
        }
        self.closing.remove(&id);
        self.core.handle_connection_closed(id, t);
        self.drive_core(t);
    }
}
