//! Connection intake: a connection opens or closes, its stream bytes are decoded into frames,
//! rate-limited and queued in the inbox; frames out are queued per connection, and connections
//! that stop reading (slow consumers) or flood are cut off.

use std::cmp::Reverse;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::stats::{DropReason, JoinResult, PanicActor};
use super::{close_code, Action, Conn, ConnState, Inbound, Now, Shard, Timer};
use crate::core::codec::{self, Frame, Request};
use crate::core::ids::{ConnId, MeetingId, ParticipantId};
use crate::core::protocol::{ClientMessage, ErrorCode, LeaveReason, ServerMessage};

impl Shard {
    /// A new connection whose signaling stream is open (handshake done).
    pub fn handle_connection_opened(&mut self, conn: ConnId, now: Now) {
        self.conns
            .insert(conn, Conn::new(now.mono, self.cfg.rate_burst));
        self.timers.push(Reverse((
            now.mono + self.cfg.join_timeout,
            Timer::JoinTimeout(conn),
        )));
    }

    /// `conn`'s transport names its meeting (a WebTransport session to `/meetings/{id}`): its
    /// join must name the same meeting, else it is refused with `invalid_request` and close
    /// `0x101` before any token check or handoff.
    pub fn bind_session_meeting(&mut self, conn: ConnId, meeting: MeetingId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session_meeting = Some(meeting);
        }
    }

    /// Bytes arrived on `conn`'s signaling stream.
    pub fn handle_stream_data(&mut self, conn: ConnId, bytes: &[u8], now: Now) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if matches!(c.state, ConnState::Closing) {
            return;
        }
        c.decoder.push(bytes);
        self.decode_frames(conn, now);
    }

    /// `conn` is gone (peer close, idle timeout, or our own close completed).
    pub fn handle_connection_closed(&mut self, conn: ConnId, now: Now) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.inbox.retain(|m| m.conn != conn);
        if let ConnState::Joined {
            meeting,
            participant,
        } = c.state
        {
            if let Some(m) = self.meetings.get_mut(&meeting) {
                if let Some(p) = m.get_mut(&participant) {
                    if p.conn == Some(conn) {
                        p.conn = None;
                        p.disconnected_at = Some(now.mono);
                        self.timers.push(Reverse((
                            now.mono + self.cfg.resume_window,
                            Timer::ResumeExpiry(meeting.clone(), participant.clone()),
                        )));
                    }
                }
            }
        }
    }

    /// Processes one queued client message; returns false when the inbox is empty.
    pub fn process_next(&mut self, now: Now) -> bool {
        let Some(Inbound { conn, msg }) = self.inbox.pop_front() else {
            return false;
        };
        self.stats.messages_processed += 1;
        self.process(conn, msg, now);
        true
    }

    /// Processes every queued client message.
    pub fn process_all(&mut self, now: Now) {
        while self.process_next(now) {}
    }

    pub(super) fn decode_frames(&mut self, conn: ConnId, now: Now) {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            if matches!(c.state, ConnState::Closing) {
                return;
            }
            let awaiting = matches!(c.state, ConnState::AwaitingJoin);
            let decoded = match c.decoder.next_frame() {
                Ok(None) => return,
                Ok(Some(body)) => {
                    c.received += 1;
                    codec::decode_request(body)
                }
                Err(e) => {
                    // A framing error ends the connection; a joined participant leaves with
                    // `connection_lost` (it cannot resume a stream it corrupted).
                    let joined = self.joined(conn);
                    self.reject(
                        conn,
                        ErrorCode::InvalidRequest,
                        &format!("bad frame: {e}"),
                        None,
                        close_code::PROTOCOL,
                        "bad frame",
                    );
                    if let Some((mid, pid)) = joined {
                        self.remove_participant(&mid, &pid, LeaveReason::ConnectionLost, now);
                    }
                    return;
                }
            };
            match decoded {
                Ok(msg) => {
                    let is_join = matches!(msg, Request::Client(ClientMessage::Join { .. }));
                    if awaiting && !is_join {
                        self.reject(
                            conn,
                            ErrorCode::InvalidRequest,
                            "the first message must be join",
                            None,
                            close_code::PROTOCOL,
                            "join expected",
                        );
                        self.count_join(JoinResult::InvalidRequest);
                        return;
                    }
                    if !self.rate_ok(conn, now) {
                        continue;
                    }
                    if awaiting {
                        // Nothing may be processed for this connection before its join, and
                        // the join is verified right away so a handoff can carry what follows.
                        if is_join {
                            self.stats.messages_processed += 1;
                            self.process(conn, msg, now);
                        }
                    } else {
                        self.enqueue(conn, msg);
                    }
                }
                Err(e) => {
                    if awaiting {
                        self.reject(
                            conn,
                            ErrorCode::InvalidRequest,
                            &format!("{e}"),
                            None,
                            close_code::PROTOCOL,
                            "bad join",
                        );
                        self.count_join(JoinResult::InvalidRequest);
                        return;
                    }
                    self.send(
                        conn,
                        &ServerMessage::error(ErrorCode::InvalidRequest, e.to_string(), None),
                    );
                }
            }
        }
    }

    pub(super) fn enqueue(&mut self, conn: ConnId, msg: Request) {
        if self.inbox.len() >= self.cfg.mailbox_size {
            self.count_drop(DropReason::MailboxFull);
            return;
        }
        self.inbox.push_back(Inbound { conn, msg });
    }

    pub(super) fn rate_ok(&mut self, conn: ConnId, now: Now) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let elapsed = now.mono.saturating_duration_since(c.refilled).as_secs_f64();
        c.refilled = now.mono;
        c.tokens = (c.tokens + elapsed * self.cfg.rate_limit).min(self.cfg.rate_burst);
        if c.tokens >= 1.0 {
            c.tokens -= 1.0;
            return true;
        }
        c.strikes += 1;
        let strikes = c.strikes;
        self.count_drop(DropReason::RateLimited);
        if strikes > self.cfg.flood_strikes {
            self.disconnect_lost(conn, now, "flooding");
        } else {
            self.send(
                conn,
                &ServerMessage::error(
                    ErrorCode::RateLimited,
                    "message rate limit exceeded; message dropped",
                    None,
                ),
            );
        }
        false
    }

    pub(super) fn process(&mut self, conn: ConnId, msg: Request, now: Now) {
        let meeting = match self.conns.get(&conn).map(|c| &c.state) {
            None | Some(ConnState::Closing) => return,
            Some(ConnState::AwaitingJoin) => None,
            Some(ConnState::Joined { meeting, .. }) => Some(meeting.clone()),
        };
        let result = catch_unwind(AssertUnwindSafe(|| self.dispatch(conn, msg, now)));
        if result.is_err() {
            self.stats.panics.incr(PanicActor::Meeting);
            match meeting {
                Some(mid) => self.fail_meeting(&mid),
                None => self.reject(
                    conn,
                    ErrorCode::Internal,
                    "internal error",
                    None,
                    close_code::INTERNAL,
                    "internal error",
                ),
            }
        }
    }

    pub(super) fn joined(&self, conn: ConnId) -> Option<(MeetingId, ParticipantId)> {
        match self.conns.get(&conn).map(|c| &c.state) {
            Some(ConnState::Joined {
                meeting,
                participant,
            }) => Some((meeting.clone(), participant.clone())),
            _ => None,
        }
    }

    pub(super) fn disconnect_lost(&mut self, conn: ConnId, now: Now, why: &'static str) {
        let joined = self.joined(conn);
        self.close(conn, close_code::SLOW_OR_FLOOD, why);
        if let Some((mid, pid)) = joined {
            self.remove_participant(&mid, &pid, LeaveReason::ConnectionLost, now);
        }
    }

    /// Disconnects connections that crossed the slow-consumer threshold (after a fan-out, so
    /// the `participant_left` it causes is itself a clean fan-out).
    ///
    /// Only the connections listed when they crossed the threshold are looked at: a fan-out
    /// never scans the shard's connection table.
    pub(super) fn reap_slow_consumers(&mut self, now: Now) {
        while let Some(v) = self.slow.pop() {
            let Some(c) = self.conns.get_mut(&v) else {
                continue;
            };
            c.slow_listed = false;
            if !matches!(c.state, ConnState::Joined { .. }) {
                continue;
            }
            self.stats.slow_consumers += 1;
            tracing::warn!(shard = %self.cfg.shard, conn = %v, "slow consumer disconnected");
            self.disconnect_lost(v, now, "slow consumer");
        }
    }

    pub(super) fn push_frame(&mut self, conn: ConnId, frame: Frame) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.outbound.len() >= self.cfg.mailbox_size {
            c.drops += 1;
            if c.drops >= self.cfg.slow_consumer_drops && !c.slow_listed {
                c.slow_listed = true;
                self.slow.push(conn);
            }
            self.count_drop(DropReason::SlowConsumer);
            return;
        }
        c.outbound.push_back(frame);
        self.stats.frames_out += 1;
        if self.writable_set.insert(conn) {
            self.writable.push(conn);
        }
    }

    pub(super) fn send(&mut self, conn: ConnId, msg: &ServerMessage) {
        self.push_frame(conn, codec::encode_server(msg));
    }

    /// Closes `conn` once its queued frames are delivered.
    pub(super) fn close(&mut self, conn: ConnId, code: u64, reason: &'static str) {
        self.close_with(conn, code, reason, true);
    }

    /// Closes `conn` at once; what is queued for it is dropped.
    pub(super) fn close_now(&mut self, conn: ConnId, code: u64, reason: &'static str) {
        self.close_with(conn, code, reason, false);
    }

    fn close_with(&mut self, conn: ConnId, code: u64, reason: &'static str, linger: bool) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.state = ConnState::Closing;
        self.inbox.retain(|m| m.conn != conn);
        self.actions.push_back(Action::Close {
            conn,
            code,
            reason,
            linger,
        });
    }

    pub(super) fn reject(
        &mut self,
        conn: ConnId,
        code: ErrorCode,
        message: &str,
        request_id: Option<String>,
        close: u64,
        reason: &'static str,
    ) {
        self.send(conn, &ServerMessage::error(code, message, request_id));
        self.close(conn, close, reason);
    }
}
