//! The application seam: what runs over a connection once its handshake completed. Native
//! signaling (`mc/1`: the first client bidirectional stream carries signaling frames) or
//! WebTransport (`h3`: a session to `/meetings/{id}` whose bidirectional stream carries them).
//!
//! The endpoint talks to [`App`] only and never asks which one it is: stream bytes go in
//! ([`App::on_stream_data`]), and come back either as signaling bytes for the core
//! ([`Received::Signaling`], native: the caller's buffer, no copy) or as [`AppEvent`]s the
//! endpoint polls ([`App::poll_event`], WebTransport). The two kinds are a private enum behind
//! this type, so each method is one direct `match`: no allocation and no dynamic dispatch per
//! packet or frame.

use super::webtransport::WtApp;
use super::ALPN_H3;
use crate::core::ids::{ConnId, MeetingId, ShardId};

/// A connection's application protocol.
pub(super) struct App(Kind);

enum Kind {
    Native(Native),
    Wt(Box<WtApp>),
}

/// Native QUIC signaling.
struct Native {
    /// The signaling stream: the first client-initiated bidirectional stream.
    stream: Option<u64>,
}

/// What [`App::on_stream_data`] made of stream bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Received {
    /// The bytes are signaling: hand them to the core (and end the connection on `fin`).
    Signaling,
    /// The application consumed them: poll its events ([`App::poll_event`]).
    Events,
    /// Not signaling (another stream, refused); nothing to do.
    Ignored,
    /// A protocol error: the connection is closing; stop reading.
    Failed,
}

/// What the application asks of the endpoint.
#[derive(Debug)]
pub(super) enum AppEvent {
    /// Signaling bytes for the core; `fin`: the client finished its signaling stream.
    Signaling {
        /// Bytes.
        data: Vec<u8>,
        /// The stream ended.
        fin: bool,
    },
    /// The transport names the connection's meeting; its join must name the same one.
    SessionMeeting(MeetingId),
    /// The meeting the transport names lives on another shard: hand the connection there
    /// before any signaling (that shard accepts the session, [`App::on_adopted`]).
    MoveTo(ShardId),
    /// The peer ended the application (the connection closes with code 0).
    Closed,
}

/// What the application needs to know from the endpoint while it produces events.
#[derive(Debug, Clone, Copy)]
pub(super) struct AppCtx {
    /// This shard.
    pub(super) shard: ShardId,
    /// Shards in the process (to name a meeting's shard).
    pub(super) shard_count: u16,
    /// The connection (for logs).
    pub(super) conn: ConnId,
    /// The core refuses new meetings and joins.
    pub(super) draining: bool,
    /// The signaling stream already ended cleanly (final frames and FIN sent).
    pub(super) signaling_finished: bool,
}

impl App {
    /// The application of a connection whose handshake has not completed (native until the
    /// ALPN says otherwise).
    pub(super) fn native() -> Self {
        Self(Kind::Native(Native { stream: None }))
    }

    /// The application the handshake negotiated (`alpn`).
    pub(super) fn negotiated(alpn: &[u8], allowed_origins: &Option<Vec<String>>) -> Self {
        if alpn == ALPN_H3 {
            Self(Kind::Wt(Box::new(WtApp::new(allowed_origins.clone()))))
        } else {
            Self::native()
        }
    }

    /// Whether this is a native (`mc/1`) connection.
    pub(super) fn is_native(&self) -> bool {
        matches!(self.0, Kind::Native(_))
    }

    /// The stream signaling frames are written to, once known.
    pub(super) fn signaling_stream(&self) -> Option<u64> {
        match &self.0 {
            Kind::Native(n) => n.stream,
            Kind::Wt(wt) => wt.signaling_stream(),
        }
    }

    /// The QUIC application close code for a signaling close code. Native connections carry
    /// the signaling code itself (signaling v1 §6). On HTTP/3 the connection's codes are
    /// HTTP/3 codes (RFC 9114 §8.1: `0x101`..`0x105` are H3 protocol errors there), so the
    /// signaling code travels in the session's CLOSE_WEBTRANSPORT_SESSION capsule
    /// ([`App::close_session`]) and the connection closes with H3_NO_ERROR.
    pub(super) fn close_code(&self, code: u64) -> u64 {
        match &self.0 {
            Kind::Native(_) => code,
            Kind::Wt(_) => crate::webtransport::ErrorCode::H3_NO_ERROR.0,
        }
    }

    /// Bytes read from stream `sid` (`fin`: the peer finished it).
    pub(super) fn on_stream_data(
        &mut self,
        conn: &mut quiche::Connection,
        sid: u64,
        data: &[u8],
        fin: bool,
    ) -> Received {
        match &mut self.0 {
            Kind::Native(n) => {
                let ours = match n.stream {
                    None if sid.is_multiple_of(4) => {
                        n.stream = Some(sid);
                        true
                    }
                    Some(s) => s == sid,
                    None => false,
                };
                if ours {
                    Received::Signaling
                } else {
                    let _ = conn.stream_shutdown(sid, quiche::Shutdown::Read, 0x101);
                    Received::Ignored
                }
            }
            Kind::Wt(wt) => wt.on_stream_data(conn, sid, data, fin),
        }
    }

    /// The peer reset stream `sid`; true when events may follow ([`App::poll_event`]).
    pub(super) fn on_stream_reset(&mut self, conn: &mut quiche::Connection, sid: u64) -> bool {
        match &mut self.0 {
            Kind::Native(_) => false,
            Kind::Wt(wt) => {
                wt.on_stream_reset(conn, sid);
                true
            }
        }
    }

    /// Writes what the application has to send and returns its next event, if any. Native
    /// signaling has none: its bytes come back from [`App::on_stream_data`] directly.
    pub(super) fn poll_event(
        &mut self,
        conn: &mut quiche::Connection,
        ctx: &AppCtx,
    ) -> Option<AppEvent> {
        match &mut self.0 {
            Kind::Native(_) => None,
            Kind::Wt(wt) => wt.poll_event(conn, ctx),
        }
    }

    /// Ends the application's session with the signaling close `code` and `reason` before the
    /// connection closes; true if something was queued (close the connection a grace later).
    pub(super) fn close_session(&mut self, code: u64, reason: &str) -> bool {
        match &mut self.0 {
            Kind::Native(_) => false,
            Kind::Wt(wt) => wt.close_session(code, reason),
        }
    }

    /// The connection arrived from another shard: answers a session requested there. Returns
    /// the meeting the accepted session names, if any.
    pub(super) fn on_adopted(&mut self, draining: bool) -> Option<MeetingId> {
        match &mut self.0 {
            Kind::Native(_) => None,
            Kind::Wt(wt) => wt.on_adopted(draining),
        }
    }
}
