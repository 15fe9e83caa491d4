//! The WebTransport application: HTTP/3 on the connection, one session to
//! `/meetings/{id}`, and its bidirectional stream carrying signaling. Behind [`super::app::App`]:
//! HTTP/3 events become the same [`AppEvent`]s as native signaling, and a session whose meeting
//! lives on another shard asks to move the connection there before any signaling.

use std::collections::VecDeque;

use super::app::{AppCtx, AppEvent, Received};
use crate::core::ids::MeetingId;
use crate::core::router::Router;
use crate::webtransport::{H3Config, H3Event, H3Server};

/// One connection's WebTransport state.
pub(super) struct WtApp {
    h3: H3Server,
    /// Session (CONNECT stream id) of the accepted session.
    session: Option<u64>,
    /// The WebTransport bidirectional stream carrying signaling.
    stream: Option<u64>,
    /// Transmits the transport could not take yet, in order.
    pending: VecDeque<(u64, Vec<u8>, bool)>,
    /// A session requested on another shard, to accept once the connection arrives here.
    requested: Option<u64>,
    /// The meeting of that session's path, which its join must name.
    meeting: Option<MeetingId>,
}

impl WtApp {
    pub(super) fn new(allowed_origins: Option<Vec<String>>) -> Self {
        Self {
            h3: H3Server::new(H3Config {
                allowed_origins,
                ..H3Config::default()
            }),
            session: None,
            stream: None,
            pending: VecDeque::new(),
            requested: None,
            meeting: None,
        }
    }

    pub(super) fn signaling_stream(&self) -> Option<u64> {
        self.stream
    }

    pub(super) fn on_stream_data(
        &mut self,
        conn: &mut quiche::Connection,
        sid: u64,
        data: &[u8],
        fin: bool,
    ) -> Received {
        match self.h3.on_stream_data(sid, data, fin) {
            Ok(()) => Received::Events,
            Err(err) => {
                let _ = conn.close(true, err.code.0, err.reason.as_bytes());
                Received::Failed
            }
        }
    }

    pub(super) fn on_stream_reset(&mut self, conn: &mut quiche::Connection, sid: u64) {
        if let Err(err) = self.h3.on_stream_reset(sid) {
            let _ = conn.close(true, err.code.0, err.reason.as_bytes());
        }
    }

    /// Writes what HTTP/3 wants written and turns its next event into an [`AppEvent`]
    /// (events it answers itself — a second session, a second signaling stream, resets — are
    /// handled here).
    pub(super) fn poll_event(
        &mut self,
        conn: &mut quiche::Connection,
        ctx: &AppCtx,
    ) -> Option<AppEvent> {
        loop {
            while let Some(tx) = self.h3.poll_transmit() {
                self.pending.push_back((tx.stream_id, tx.data, tx.fin));
            }
            while let Some((sid, data, fin)) = self.pending.pop_front() {
                match conn.stream_send(sid, &data, fin) {
                    Ok(n) if n == data.len() => {}
                    Ok(n) => {
                        self.pending.push_front((sid, data[n..].to_vec(), fin));
                        break;
                    }
                    Err(quiche::Error::Done) => {
                        self.pending.push_front((sid, data, fin));
                        break;
                    }
                    Err(_) => {}
                }
            }
            // Datagrams are not part of signaling: discard what arrives.
            let mut scratch = [0u8; 64];
            while conn.dgram_recv(&mut scratch).is_ok() {}
            let ev = self.h3.poll_event()?;
            tracing::debug!(shard = %ctx.shard, conn = %ctx.conn, event = ?ev, "http/3 event");
            match ev {
                H3Event::SessionRequested {
                    session_id,
                    meeting_id,
                    ..
                } => {
                    if self.session.is_some() {
                        self.h3.reject_session(session_id, 429);
                        continue;
                    }
                    if ctx.draining {
                        self.h3.reject_session(session_id, 503);
                        continue;
                    }
                    self.session = Some(session_id);
                    let owner = Router::new(ctx.shard_count).shard_for(&meeting_id);
                    if owner == ctx.shard {
                        self.h3.accept_session(session_id);
                        return Some(AppEvent::SessionMeeting(meeting_id));
                    }
                    // Move the connection to the meeting's shard before any signaling; that
                    // shard accepts the session.
                    self.meeting = Some(meeting_id);
                    self.requested = Some(session_id);
                    return Some(AppEvent::MoveTo(owner));
                }
                H3Event::StreamData {
                    session_id,
                    stream_id,
                    data,
                    fin,
                } => {
                    if self.session != Some(session_id) {
                        continue;
                    }
                    match self.stream {
                        None => self.stream = Some(stream_id),
                        Some(s) if s != stream_id => {
                            // One signaling stream per session.
                            let _ = conn.stream_shutdown(stream_id, quiche::Shutdown::Read, 0x101);
                            let _ = conn.stream_shutdown(stream_id, quiche::Shutdown::Write, 0x101);
                            continue;
                        }
                        Some(_) => {}
                    }
                    return Some(AppEvent::Signaling { data, fin });
                }
                H3Event::SessionClosed { .. } => return Some(AppEvent::Closed),
                H3Event::ResetStream { stream_id, code } => {
                    // The signaling stream already ended cleanly (final frame + FIN) before the
                    // session closed: leave it alone. A reset would discard what is not yet
                    // acknowledged, and a STOP_SENDING on it, racing the close capsule, made
                    // Chromium report "Connection lost" instead of the session's close code
                    // (the browser close-code test failed 5 of 10 runs with it, 0 of 20
                    // without); the connection closes a grace later anyway.
                    if self.stream == Some(stream_id) && ctx.signaling_finished {
                        continue;
                    }
                    let _ = conn.stream_shutdown(stream_id, quiche::Shutdown::Read, code.0);
                    if stream_id & 0x2 == 0 {
                        let _ = conn.stream_shutdown(stream_id, quiche::Shutdown::Write, code.0);
                    }
                }
            }
        }
    }

    /// Queues the session's CLOSE_WEBTRANSPORT_SESSION capsule with the signaling close code.
    pub(super) fn close_session(&mut self, code: u64, reason: &str) -> bool {
        let code = u32::try_from(code).unwrap_or(u32::MAX);
        self.session
            .is_some_and(|s| self.h3.close_session(s, code, reason))
    }

    /// Accepts (or, while draining, refuses) the session requested on the previous shard.
    pub(super) fn on_adopted(&mut self, draining: bool) -> Option<MeetingId> {
        let session = self.requested.take()?;
        if draining {
            self.h3.reject_session(session, 503);
            None
        } else {
            self.h3.accept_session(session);
            self.meeting.take()
        }
    }
}
