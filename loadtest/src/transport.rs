//! The seam between a QUIC connection and the signaling byte stream it carries.
//!
//! Signaling v1 §1 defines two ways to get the stream: native QUIC (ALPN `mc/1`, the first
//! client-initiated bidirectional stream) and WebTransport over HTTP/3 (ALPN `h3`, extended
//! CONNECT to `/meetings/{meeting_id}`, then one WebTransport bidirectional stream). Everything
//! above this module (framing, joins, schedules, accounting) is the same for both, so the event
//! loop only talks to a [`SignalingStream`].
//!
//! Adding a transport means: a variant of [`TransportKind`] (and its CLI name), its ALPN list and
//! config tweaks in [`TransportKind::configure`], and a [`SignalingStream`] implementation that
//! does its own setup in [`SignalingStream::poll_ready`] (e.g. the HTTP/3 SETTINGS and CONNECT
//! exchange) before reporting ready.

use std::collections::VecDeque;

use clap::ValueEnum;

/// Largest UDP payload a generator connection sends or accepts.
pub const MAX_DATAGRAM: usize = 1350;
use mc::webtransport::{ClientConfig, ClientEvent, H3Client};

/// Why the signaling stream failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// quiche refused an operation on the stream.
    Quic(quiche::Error),
    /// The server finished or reset the stream.
    Closed,
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Quic(e) => write!(f, "stream error: {e}"),
            StreamError::Closed => f.write_str("signaling stream closed by the server"),
        }
    }
}

/// What a connection needs to set up its signaling stream.
#[derive(Debug, Clone)]
// Native QUIC needs neither field; WebTransport builds its CONNECT request from them.
#[allow(dead_code)]
pub struct StreamContext {
    /// The meeting being joined (WebTransport puts it in the CONNECT path).
    pub meeting_id: String,
    /// Host name of the server (`:authority` for WebTransport).
    pub authority: String,
}

/// One signaling byte stream carried by a quiche connection.
pub trait SignalingStream: Send {
    /// Drives any setup after the QUIC handshake; `Ok(true)` once frames may be sent.
    fn poll_ready(&mut self, conn: &mut quiche::Connection) -> Result<bool, StreamError>;

    /// Writes as much of `data` as flow control allows; returns the bytes taken.
    fn send(&mut self, conn: &mut quiche::Connection, data: &[u8]) -> Result<usize, StreamError>;

    /// Hands every readable byte to `sink`. `Err(Closed)` once the server ended the stream.
    fn recv(
        &mut self,
        conn: &mut quiche::Connection,
        scratch: &mut [u8],
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), StreamError>;
}

/// The transports the load generator can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportKind {
    /// Native QUIC, ALPN `mc/1`, signaling on client bidirectional stream 0.
    Quic,
    /// WebTransport over HTTP/3 (ALPN `h3`), the same client code as the server's tests
    /// (`mc::webtransport::H3Client`).
    Webtransport,
}

impl TransportKind {
    /// ALPN protocols to offer.
    pub fn alpn(self) -> &'static [&'static [u8]] {
        match self {
            TransportKind::Quic => &[b"mc/1"],
            TransportKind::Webtransport => &[b"h3"],
        }
    }

    /// A client configuration for this transport: every generator connection uses it (build it
    /// once and share it: each `quiche::Config` is a TLS context with the system CA store).
    pub fn client_config(
        self,
        idle_timeout: std::time::Duration,
    ) -> quiche::Result<quiche::Config> {
        let mut cfg = quiche::Config::new(quiche::PROTOCOL_VERSION)?;
        cfg.set_application_protos(self.alpn())?;
        // The development server certificate is self-signed; latency, not trust, is measured.
        cfg.verify_peer(false);
        cfg.set_max_idle_timeout(u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX));
        cfg.set_max_recv_udp_payload_size(MAX_DATAGRAM);
        cfg.set_max_send_udp_payload_size(MAX_DATAGRAM);
        cfg.set_initial_max_data(8 << 20);
        cfg.set_initial_max_stream_data_bidi_local(2 << 20);
        cfg.set_initial_max_stream_data_bidi_remote(2 << 20);
        cfg.set_initial_max_stream_data_uni(1 << 20);
        cfg.set_disable_active_migration(true);
        self.configure(&mut cfg);
        Ok(cfg)
    }

    /// Transport-specific quiche settings (stream limits, datagrams, ...).
    pub fn configure(self, cfg: &mut quiche::Config) {
        match self {
            TransportKind::Quic => {
                // Only stream 0 is used; the server opens none.
                cfg.set_initial_max_streams_bidi(4);
                cfg.set_initial_max_streams_uni(0);
            }
            TransportKind::Webtransport => {
                // The server opens its control and QPACK streams; datagrams must be enabled
                // when HTTP/3 datagrams are advertised.
                cfg.set_initial_max_streams_bidi(16);
                cfg.set_initial_max_streams_uni(16);
                cfg.set_initial_max_stream_data_uni(1 << 20);
                cfg.enable_dgram(true, 16, 16);
            }
        }
    }

    /// A fresh, not yet ready, signaling stream for one connection.
    pub fn open(self, ctx: &StreamContext) -> Box<dyn SignalingStream> {
        match self {
            TransportKind::Quic => Box::new(QuicStream0),
            TransportKind::Webtransport => Box::new(WtStream::new(ctx)),
        }
    }

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Quic => "quic",
            TransportKind::Webtransport => "webtransport",
        }
    }
}

/// Signaling on the first client-initiated bidirectional stream (id 0).
#[derive(Debug, Default)]
pub struct QuicStream0;

const STREAM_ID: u64 = 0;

impl SignalingStream for QuicStream0 {
    fn poll_ready(&mut self, conn: &mut quiche::Connection) -> Result<bool, StreamError> {
        Ok(conn.is_established())
    }

    fn send(&mut self, conn: &mut quiche::Connection, data: &[u8]) -> Result<usize, StreamError> {
        if data.is_empty() {
            return Ok(0);
        }
        match conn.stream_send(STREAM_ID, data, false) {
            Ok(n) => Ok(n),
            Err(quiche::Error::Done) => Ok(0),
            Err(quiche::Error::StreamStopped(_)) | Err(quiche::Error::StreamReset(_)) => {
                Err(StreamError::Closed)
            }
            Err(e) => Err(StreamError::Quic(e)),
        }
    }

    fn recv(
        &mut self,
        conn: &mut quiche::Connection,
        scratch: &mut [u8],
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), StreamError> {
        loop {
            match conn.stream_recv(STREAM_ID, scratch) {
                Ok((n, fin)) => {
                    sink(&scratch[..n]);
                    if fin {
                        return Err(StreamError::Closed);
                    }
                }
                Err(quiche::Error::Done) | Err(quiche::Error::InvalidStreamState(_)) => {
                    return Ok(())
                }
                Err(quiche::Error::StreamReset(_)) => return Err(StreamError::Closed),
                Err(e) => return Err(StreamError::Quic(e)),
            }
        }
    }
}

/// Signaling on one WebTransport bidirectional stream of a session to `/meetings/{id}`.
pub struct WtStream {
    h3: H3Client,
    authority: String,
    path: String,
    connect_sent: bool,
    session: Option<u64>,
    stream: Option<u64>,
    pending: VecDeque<(u64, Vec<u8>, bool)>,
    pending_bytes: usize,
    inbound: Vec<u8>,
    closed: bool,
}

/// Bytes the HTTP/3 layer may hold for quiche before `send` reports back-pressure.
const WT_PENDING_LIMIT: usize = 256 * 1024;

impl WtStream {
    fn new(ctx: &StreamContext) -> Self {
        Self {
            h3: H3Client::new(ClientConfig::default()),
            authority: ctx.authority.clone(),
            path: format!("/meetings/{}", ctx.meeting_id),
            connect_sent: false,
            session: None,
            stream: None,
            pending: VecDeque::new(),
            pending_bytes: 0,
            inbound: Vec::new(),
            closed: false,
        }
    }

    fn pump(&mut self, conn: &mut quiche::Connection) -> Result<(), StreamError> {
        while let Some(tx) = self.h3.poll_transmit() {
            self.pending_bytes += tx.data.len();
            self.pending.push_back((tx.stream_id, tx.data, tx.fin));
        }
        while let Some((sid, data, fin)) = self.pending.pop_front() {
            match conn.stream_send(sid, &data, fin) {
                Ok(n) if n == data.len() => self.pending_bytes -= n,
                Ok(n) => {
                    self.pending_bytes -= n;
                    self.pending.push_front((sid, data[n..].to_vec(), fin));
                    break;
                }
                Err(quiche::Error::Done) => {
                    self.pending.push_front((sid, data, fin));
                    break;
                }
                Err(quiche::Error::StreamStopped(_)) | Err(quiche::Error::StreamReset(_)) => {
                    return Err(StreamError::Closed)
                }
                Err(e) => return Err(StreamError::Quic(e)),
            }
        }
        Ok(())
    }

    fn read_all(
        &mut self,
        conn: &mut quiche::Connection,
        scratch: &mut [u8],
    ) -> Result<(), StreamError> {
        while let Some(sid) = conn.stream_readable_next() {
            loop {
                match conn.stream_recv(sid, scratch) {
                    Ok((n, fin)) => {
                        if self.h3.on_stream_data(sid, &scratch[..n], fin).is_err() {
                            return Err(StreamError::Closed);
                        }
                        if fin || n == 0 {
                            break;
                        }
                    }
                    Err(quiche::Error::StreamReset(_)) => {
                        let _ = self.h3.on_stream_reset(sid);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        let mut scratch_dgram = [0u8; 64];
        while conn.dgram_recv(&mut scratch_dgram).is_ok() {}
        while let Some(ev) = self.h3.poll_event() {
            match ev {
                ClientEvent::SessionEstablished { session_id } => {
                    self.session = Some(session_id);
                    self.stream = self.h3.open_bidi_stream(session_id);
                }
                ClientEvent::StreamData { data, fin, .. } => {
                    self.inbound.extend_from_slice(&data);
                    if fin {
                        self.closed = true;
                    }
                }
                ClientEvent::SessionRejected { .. } | ClientEvent::SessionClosed { .. } => {
                    self.closed = true
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl SignalingStream for WtStream {
    fn poll_ready(&mut self, conn: &mut quiche::Connection) -> Result<bool, StreamError> {
        if !conn.is_established() {
            return Ok(false);
        }
        if !self.connect_sent {
            let (authority, path) = (self.authority.clone(), self.path.clone());
            self.h3.connect(&authority, &path, None);
            self.connect_sent = true;
        }
        let mut scratch = vec![0u8; 16 * 1024];
        self.read_all(conn, &mut scratch)?;
        self.pump(conn)?;
        if self.closed && self.stream.is_none() {
            return Err(StreamError::Closed);
        }
        Ok(self.stream.is_some())
    }

    fn send(&mut self, conn: &mut quiche::Connection, data: &[u8]) -> Result<usize, StreamError> {
        let Some(stream) = self.stream else {
            return Ok(0);
        };
        if data.is_empty() || self.pending_bytes >= WT_PENDING_LIMIT {
            self.pump(conn)?;
            return Ok(0);
        }
        if !self.h3.send_stream_data(stream, data, false) {
            return Err(StreamError::Closed);
        }
        self.pump(conn)?;
        Ok(data.len())
    }

    fn recv(
        &mut self,
        conn: &mut quiche::Connection,
        scratch: &mut [u8],
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), StreamError> {
        self.read_all(conn, scratch)?;
        self.pump(conn)?;
        if !self.inbound.is_empty() {
            sink(&self.inbound);
            self.inbound.clear();
        }
        if self.closed {
            return Err(StreamError::Closed);
        }
        Ok(())
    }
}
