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

use clap::ValueEnum;

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
}

impl TransportKind {
    /// ALPN protocols to offer.
    pub fn alpn(self) -> &'static [&'static [u8]] {
        match self {
            TransportKind::Quic => &[b"mc/1"],
        }
    }

    /// Transport-specific quiche settings (stream limits, datagrams, ...).
    pub fn configure(self, cfg: &mut quiche::Config) {
        match self {
            TransportKind::Quic => {
                // Only stream 0 is used; the server opens none.
                cfg.set_initial_max_streams_bidi(4);
                cfg.set_initial_max_streams_uni(0);
            }
        }
    }

    /// A fresh, not yet ready, signaling stream for one connection.
    pub fn open(self, _ctx: &StreamContext) -> Box<dyn SignalingStream> {
        match self {
            TransportKind::Quic => Box::new(QuicStream0),
        }
    }

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Quic => "quic",
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
