//! Joins: validation and token check where the join arrives, the handoff of a join for a
//! meeting another shard owns (one [`JoinRequest`] travels with the connection), new
//! participants, resumes and the `join_response`.

use std::cmp::Reverse;

use super::stats::{JoinResult, MigrationOutcome, TokenFailure};
use super::{close_code, Action, Conn, ConnState, Now, Shard, Timer};
use crate::core::codec::{self, Request};
use crate::core::ids::{ConnId, MeetingId, ParticipantId};
use crate::core::meeting::{Meeting, Participant};
use crate::core::protocol::{
    ErrorCode, ResumeRequest, Role, ServerMessage, MAX_DISPLAY_NAME_BYTES, MAX_REQUEST_ID_LEN,
    MAX_TOKEN_BYTES,
};
use crate::core::token::Claims;

/// A join as the client sent it, before any check.
pub(super) struct JoinAttempt {
    /// `meeting_id` as sent.
    pub(super) meeting_id: String,
    /// The meeting token.
    pub(super) token: String,
    /// Display name.
    pub(super) display_name: String,
    /// Join `request_id`.
    pub(super) request_id: Option<String>,
    /// Resume request.
    pub(super) resume: Option<ResumeRequest>,
    /// The client follows `migrate` (its `join.capabilities`).
    pub(super) follows_migrate: bool,
}

/// A join checked and verified on the shard that received it: the one value the rest of the
/// join works from, here or on the meeting's shard after a handoff.
#[derive(Debug)]
pub struct JoinRequest {
    /// The meeting.
    pub meeting_id: MeetingId,
    /// Verified token claims.
    pub claims: Claims,
    /// Display name.
    pub display_name: String,
    /// Join `request_id`.
    pub request_id: Option<String>,
    /// Resume request.
    pub resume: Option<ResumeRequest>,
    /// The client follows `migrate` (its `join.capabilities`).
    pub follows_migrate: bool,
}

/// A verified join travelling with its connection to the meeting's shard.
#[derive(Debug)]
pub struct HandoffJoin {
    /// The join (its meeting is owned by the target shard).
    pub join: JoinRequest,
    /// Frames the previous shard decoded from the connection (the join included).
    pub received: u64,
    /// Messages already decoded after the join, in order.
    pub queued: Vec<Request>,
    /// Stream bytes not yet decoded.
    pub leftover: Vec<u8>,
}

impl Shard {
    /// A connection handed over by another shard, with the join it carried.
    pub fn handle_adopted(&mut self, conn: ConnId, handoff: HandoffJoin, now: Now) {
        let HandoffJoin {
            join,
            received,
            queued,
            leftover,
        } = handoff;
        let mut c = Conn::new(now.mono, self.cfg.rate_burst);
        c.decoder.push(&leftover);
        c.received = received;
        self.conns.insert(conn, c);
        self.timers.push(Reverse((
            now.mono + self.cfg.join_timeout,
            Timer::JoinTimeout(conn),
        )));
        self.join_local(conn, join, now);
        for msg in queued {
            self.enqueue(conn, msg);
        }
        self.decode_frames(conn, now);
    }

    /// A join received on `conn`: checked, its token verified, then joined here or handed to
    /// the meeting's shard.
    pub(super) fn handle_join(&mut self, conn: ConnId, attempt: JoinAttempt, now: Now) {
        let JoinAttempt {
            meeting_id,
            token,
            display_name,
            request_id,
            resume,
            follows_migrate,
        } = attempt;
        if let Some(r) = &request_id {
            if r.len() > MAX_REQUEST_ID_LEN {
                self.bad_join(conn, "request_id is longer than 64 characters", None);
                return;
            }
        }
        let meeting = match MeetingId::parse(&meeting_id) {
            Ok(m) => m,
            Err(e) => {
                self.bad_join(conn, &e.to_string(), request_id);
                return;
            }
        };
        let session = self
            .conns
            .get(&conn)
            .and_then(|c| c.session_meeting.as_ref());
        if let Some(path) = session.filter(|path| **path != meeting) {
            let message =
                format!("meeting_id {meeting} does not match the session path /meetings/{path}");
            self.bad_join(conn, &message, request_id);
            return;
        }
        if display_name.len() > MAX_DISPLAY_NAME_BYTES {
            self.bad_join(conn, "display_name is longer than 256 bytes", request_id);
            return;
        }
        if display_name.chars().any(char::is_control) {
            self.bad_join(conn, "display_name contains control characters", request_id);
            return;
        }
        if token.len() > MAX_TOKEN_BYTES {
            self.count_token_failure(TokenFailure::TooLarge);
            self.unauthorized(conn, request_id);
            return;
        }
        if let Some(r) = &resume {
            if r.participant_id.len() > 64 || r.binding_token.len() > 512 {
                self.count_token_failure(TokenFailure::BadBinding);
                self.unauthorized(conn, request_id);
                return;
            }
        }
        let claims = match self
            .verifier
            .verify(&token, meeting.as_str(), now.unix_ms / 1000)
        {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(shard = %self.cfg.shard, conn = %conn, meeting = %meeting, reason = e.reason(), "token rejected");
                self.count_token_failure(TokenFailure::of(&e));
                self.unauthorized(conn, request_id);
                return;
            }
        };
        let join = JoinRequest {
            meeting_id: meeting,
            claims,
            display_name,
            request_id,
            resume,
            follows_migrate,
        };
        let owner = self.router.shard_for(&join.meeting_id);
        if owner != self.cfg.shard {
            let Some(mut c) = self.conns.remove(&conn) else {
                return;
            };
            let mut queued = Vec::new();
            for m in std::mem::take(&mut self.inbox) {
                if m.conn == conn {
                    queued.push(m.msg);
                } else {
                    self.inbox.push_back(m);
                }
            }
            self.count_join(JoinResult::Handoff);
            self.actions.push_back(Action::Handoff {
                conn,
                to: owner,
                join: Box::new(HandoffJoin {
                    join,
                    received: c.received,
                    queued,
                    leftover: c.decoder.take_remaining(),
                }),
            });
            return;
        }
        self.join_local(conn, join, now);
    }

    /// A verified join for a meeting of this shard: a resume, or a new participant.
    pub(super) fn join_local(&mut self, conn: ConnId, mut join: JoinRequest, now: Now) {
        if let Some(r) = join.resume.take() {
            self.resume(conn, join, r, now);
            return;
        }
        let JoinRequest {
            meeting_id,
            claims,
            display_name,
            request_id,
            follows_migrate,
            ..
        } = join;
        if self.draining {
            self.count_join(JoinResult::CapacityExceeded);
            self.reject(
                conn,
                ErrorCode::CapacityExceeded,
                "controller is draining",
                request_id,
                close_code::CAPACITY,
                "draining",
            );
            return;
        }
        if self.participant_count() >= self.cfg.max_participants {
            self.count_join(JoinResult::CapacityExceeded);
            self.reject(
                conn,
                ErrorCode::CapacityExceeded,
                "controller is at participant capacity",
                request_id,
                close_code::CAPACITY,
                "capacity",
            );
            return;
        }
        if !self.meetings.contains_key(&meeting_id) {
            if self.cfg.gc_mode {
                self.count_join(JoinResult::NotFound);
                self.reject(
                    conn,
                    ErrorCode::NotFound,
                    "meeting is not hosted on this controller",
                    request_id,
                    close_code::NORMAL,
                    "unknown meeting",
                );
                return;
            }
            if self.meetings.len() >= self.cfg.max_meetings {
                self.count_join(JoinResult::CapacityExceeded);
                self.reject(
                    conn,
                    ErrorCode::CapacityExceeded,
                    "controller is at meeting capacity",
                    request_id,
                    close_code::CAPACITY,
                    "capacity",
                );
                return;
            }
            self.meetings.insert(
                meeting_id.clone(),
                Meeting::new(
                    meeting_id.clone(),
                    now.mono,
                    now.unix_ms,
                    &self.participants,
                ),
            );
        }
        let Some(m) = self.meetings.get(&meeting_id) else {
            return;
        };
        if m.len() >= self.cfg.max_participants_per_meeting {
            self.count_join(JoinResult::CapacityExceeded);
            self.reject(
                conn,
                ErrorCode::CapacityExceeded,
                "meeting is full",
                request_id,
                close_code::CAPACITY,
                "meeting full",
            );
            return;
        }
        // Imported meetings carry ids minted elsewhere: skip any already taken.
        let pid = loop {
            self.participant_seq += 1;
            let pid = ParticipantId::new(self.cfg.shard, self.participant_seq);
            if m.get(&pid).is_none() {
                break pid;
            }
        };
        let p = Participant {
            id: pid.clone(),
            user: claims.sub,
            display_name,
            role: claims.role,
            joined_at_ms: now.unix_ms,
            audio_self: false,
            video_self: false,
            audio_host: false,
            video_host: false,
            conn: Some(conn),
            disconnected_at: None,
            binding_nonce: None,
            follows_migrate,
            held: None,
        };
        let info = p.info();
        let role = p.role;
        if let Some(m) = self.meetings.get_mut(&meeting_id) {
            m.add(p, now.mono);
        }
        self.finish_join(conn, &meeting_id, &pid, role, request_id, now);
        self.count_join(JoinResult::Ok);
        // Per-participant events are debug: at thousands of joins per second an info line each
        // (formatted and written on the shard thread) costs more than the join's own logic.
        // Meeting-level events (created, ended) stay at info; rates are in the metrics.
        tracing::debug!(shard = %self.cfg.shard, meeting = %meeting_id, participant = %pid, "joined");
        self.broadcast(
            &meeting_id,
            Some(&pid),
            &ServerMessage::ParticipantJoined { participant: info },
            now,
        );
    }

    /// A verified join that resumes participant `r` (after a lost connection, on another
    /// shard, or back after a migration).
    pub(super) fn resume(&mut self, conn: ConnId, join: JoinRequest, r: ResumeRequest, now: Now) {
        let JoinRequest {
            meeting_id,
            claims,
            request_id,
            follows_migrate,
            ..
        } = join;
        if !self.meetings.contains_key(&meeting_id)
            && self.redirect_moved(conn, &meeting_id, &claims, &r, follows_migrate, now)
        {
            return;
        }
        let found = self
            .meetings
            .get(&meeting_id)
            .and_then(|m| m.find(&r.participant_id))
            .map(|p| {
                (
                    p.id.clone(),
                    p.user.clone(),
                    p.binding_nonce,
                    p.conn,
                    p.role,
                )
            });
        let Some((pid, user, nonce, old_conn, role)) = found else {
            self.count_token_failure(TokenFailure::ResumeUnknownParticipant);
            self.unauthorized(conn, request_id);
            return;
        };
        let verified = self.binding.verify(
            &r.binding_token,
            meeting_id.as_str(),
            pid.as_str(),
            now.unix_ms,
        );
        let ok = match verified {
            Ok(b) => Some(b.nonce) == nonce && user == claims.sub,
            Err(_) => false,
        };
        if !ok {
            self.count_token_failure(TokenFailure::BadBinding);
            self.unauthorized(conn, request_id);
            return;
        }
        if let Some(old) = old_conn {
            if old != conn {
                if let Some(c) = self.conns.get_mut(&old) {
                    c.state = ConnState::Closing;
                }
                self.actions.push_back(Action::Close {
                    conn: old,
                    code: close_code::NORMAL,
                    reason: "resumed elsewhere",
                    linger: true,
                });
            }
        }
        if let Some(p) = self
            .meetings
            .get_mut(&meeting_id)
            .and_then(|m| m.get_mut(&pid))
        {
            p.conn = Some(conn);
            p.disconnected_at = None;
            p.follows_migrate = follows_migrate;
        }
        self.finish_join(conn, &meeting_id, &pid, role, request_id, now);
        let held = self
            .meetings
            .get_mut(&meeting_id)
            .and_then(|m| m.take_held(&pid));
        match held {
            Some(frames) => {
                // Back after a migration: what happened meanwhile follows the join_response.
                for f in frames {
                    self.push_frame(conn, f);
                }
                self.count_join(JoinResult::Migrated);
                self.count_migration(MigrationOutcome::Returned);
            }
            None => self.count_join(JoinResult::Resumed),
        }
    }

    pub(super) fn finish_join(
        &mut self,
        conn: ConnId,
        meeting_id: &MeetingId,
        pid: &ParticipantId,
        role: Role,
        request_id: Option<String>,
        now: Now,
    ) {
        self.nonce_seq += 1;
        let nonce = (u64::from(self.cfg.shard.0) << 48) | self.nonce_seq;
        let window_ms = u64::try_from(self.cfg.resume_window.as_millis()).unwrap_or(u64::MAX);
        let binding_token = self.binding.issue(
            meeting_id.as_str(),
            pid.as_str(),
            nonce,
            now.unix_ms
                .saturating_add(window_ms)
                .saturating_add(86_400_000),
        );
        let Some(m) = self.meetings.get_mut(meeting_id) else {
            return;
        };
        if let Some(p) = m.get_mut(pid) {
            p.binding_nonce = Some(nonce);
        }
        let mut roster = m.roster_for(pid);
        let mut response = ServerMessage::JoinResponse {
            participant_id: pid.to_string(),
            meeting_id: meeting_id.to_string(),
            role,
            participants: Vec::new(),
            media_handlers: m.media_handlers.clone(),
            binding_token,
            resume_window_ms: window_ms,
            request_id,
        };
        // A frame body may not exceed 64 KiB. A large roster (long names) would: the first
        // participants that fit go in `join_response`, the rest follow immediately as
        // `participant_joined` to the joiner alone, before any later event of the meeting.
        let base = json_len(&response).unwrap_or(0);
        let mut budget = codec::MAX_FRAME_LEN.saturating_sub(base + 16);
        let mut fit = 0;
        for p in &roster {
            let size = json_len(p).map_or(usize::MAX, |n| n.saturating_add(1));
            if size > budget {
                break;
            }
            budget -= size;
            fit += 1;
        }
        let overflow = roster.split_off(fit);
        if let ServerMessage::JoinResponse { participants, .. } = &mut response {
            *participants = roster;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = ConnState::Joined {
                meeting: meeting_id.clone(),
                participant: pid.clone(),
            };
        }
        self.send(conn, &response);
        for participant in overflow {
            self.send(conn, &ServerMessage::ParticipantJoined { participant });
        }
    }

    pub(super) fn bad_join(&mut self, conn: ConnId, message: &str, request_id: Option<String>) {
        self.count_join(JoinResult::InvalidRequest);
        self.reject(
            conn,
            ErrorCode::InvalidRequest,
            message,
            request_id,
            close_code::PROTOCOL,
            "bad join",
        );
    }

    pub(super) fn unauthorized(&mut self, conn: ConnId, request_id: Option<String>) {
        self.count_join(JoinResult::Unauthorized);
        self.reject(
            conn,
            ErrorCode::Unauthorized,
            "not authorized to join this meeting",
            request_id,
            close_code::UNAUTHORIZED,
            "unauthorized",
        );
    }
}

/// Length of `v` as JSON, counted without building the bytes (the roster split measures every
/// participant of a meeting on each join).
pub(super) fn json_len<T: serde::Serialize + ?Sized>(v: &T) -> Option<usize> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    serde_json::to_writer(&mut c, v).ok()?;
    Some(c.0)
}
