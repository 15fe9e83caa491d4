//! Client messages of a joined participant: one function per message type.

use std::collections::HashSet;

use super::join::JoinAttempt;
use super::stats::DropReason;
use super::{close_code, Now, Shard, MIGRATING_REFUSAL, TEST_PANIC_PAYLOAD};
use crate::core::codec::{self, RawPayload, Request};
use crate::core::ids::{ConnId, MeetingId, ParticipantId};
use crate::core::protocol::{
    ClientMessage, EndReason, ErrorCode, LeaveReason, Role, ServerMessage, CAPABILITY_MIGRATE,
    MAX_PAYLOAD_BYTES, MAX_RECIPIENTS,
};

/// The sender of a client message: its connection, meeting and participant.
#[derive(Clone, Copy)]
struct From<'a> {
    conn: ConnId,
    meeting: &'a MeetingId,
    participant: &'a ParticipantId,
}

impl Shard {
    /// Routes one client message of `conn` (its join, or a message of a joined participant)
    /// to the function handling its type.
    pub(super) fn dispatch(&mut self, conn: ConnId, msg: Request, now: Now) {
        let Some((mid, pid)) = self.joined(conn) else {
            if let Request::Client(ClientMessage::Join {
                meeting_id,
                token,
                display_name,
                request_id,
                resume,
                capabilities,
            }) = msg
            {
                let attempt = JoinAttempt {
                    meeting_id,
                    token,
                    display_name,
                    request_id,
                    resume,
                    follows_migrate: capabilities.iter().any(|c| c == CAPABILITY_MIGRATE),
                };
                self.handle_join(conn, attempt, now);
            }
            return;
        };
        if let Some(m) = self.meetings.get_mut(&mid) {
            m.last_activity = now.mono;
            if m.migrating.is_some() && !matches!(msg, Request::Client(ClientMessage::Ping { .. }))
            {
                // Frozen for export: refuse visibly; the sender resends after the move.
                self.count_drop(DropReason::Migrating);
                self.send(
                    conn,
                    &ServerMessage::error(ErrorCode::Conflict, MIGRATING_REFUSAL, None),
                );
                return;
            }
        }
        let from = From {
            conn,
            meeting: &mid,
            participant: &pid,
        };
        let msg = match msg {
            Request::Relay { payload, to } => return self.relay(from, payload, to, now),
            Request::Client(msg) => msg,
        };
        match msg {
            ClientMessage::Join { request_id, .. } => self.on_join_again(from, request_id),
            ClientMessage::Leave {} => self.on_leave(from, now),
            ClientMessage::Mute { audio, video } => self.on_mute(from, audio, video, now),
            // The rare payload only the full decoder takes (see `codec::decode_request`).
            ClientMessage::Message { payload, to } => {
                match serde_json::value::to_raw_value(&payload) {
                    Ok(payload) => self.relay(from, payload, to, now),
                    Err(_) => self.send(
                        conn,
                        &ServerMessage::error(
                            ErrorCode::InvalidRequest,
                            "payload is not JSON",
                            None,
                        ),
                    ),
                }
            }
            ClientMessage::Ping { id } => self.send(conn, &ServerMessage::Pong { id }),
            ClientMessage::HostMute {
                participant_id,
                audio,
                video,
            } => self.on_host_mute(from, &participant_id, audio, video, now),
            ClientMessage::Kick { participant_id } => self.on_kick(from, &participant_id, now),
            ClientMessage::EndMeeting {} => self.on_end_meeting(from, now),
            ClientMessage::Unknown => self.send(
                conn,
                &ServerMessage::error(ErrorCode::InvalidRequest, "unknown message type", None),
            ),
        }
    }

    /// `join` on a connection that already joined.
    fn on_join_again(&mut self, from: From<'_>, request_id: Option<String>) {
        self.send(
            from.conn,
            &ServerMessage::error(ErrorCode::Conflict, "already joined", request_id),
        );
    }

    /// `leave`: the participant leaves and its connection closes at once: nothing that is
    /// still queued for it matters to a client that said it is done.
    fn on_leave(&mut self, from: From<'_>, now: Now) {
        self.remove_participant(from.meeting, from.participant, LeaveReason::Voluntary, now);
        self.close_now(from.conn, close_code::NORMAL, "leave");
    }

    /// `mute`: the participant's own audio/video state, announced to everyone.
    fn on_mute(&mut self, from: From<'_>, audio: bool, video: bool, now: Now) {
        let Some(m) = self.meetings.get_mut(from.meeting) else {
            return;
        };
        let Some(p) = m.get_mut(from.participant) else {
            return;
        };
        p.audio_self = audio;
        p.video_self = video;
        let update = p.mute_update();
        self.broadcast(from.meeting, None, &update, now);
    }

    /// `host_mute` (hosts only): another participant's host-side mute state.
    fn on_host_mute(&mut self, from: From<'_>, target: &str, audio: bool, video: bool, now: Now) {
        let Some(target) = self.host_target(from, target) else {
            return;
        };
        let Some(m) = self.meetings.get_mut(from.meeting) else {
            return;
        };
        let Some(p) = m.get_mut(&target) else { return };
        p.audio_host = audio;
        p.video_host = video;
        let update = p.mute_update();
        self.broadcast(from.meeting, None, &update, now);
    }

    /// `kick` (hosts only): the target gets `meeting_ended{kicked}` and leaves.
    fn on_kick(&mut self, from: From<'_>, target: &str, now: Now) {
        let Some(target) = self.host_target(from, target) else {
            return;
        };
        if target == *from.participant {
            self.send(
                from.conn,
                &ServerMessage::error(
                    ErrorCode::InvalidRequest,
                    "a host cannot kick itself; use leave",
                    None,
                ),
            );
            return;
        }
        let target_conn = self
            .meetings
            .get(from.meeting)
            .and_then(|m| m.get(&target))
            .and_then(|p| p.conn);
        if let Some(tc) = target_conn {
            self.send(
                tc,
                &ServerMessage::MeetingEnded {
                    reason: EndReason::Kicked,
                },
            );
            self.close(tc, close_code::NORMAL, "kicked");
        }
        self.remove_participant(from.meeting, &target, LeaveReason::Kicked, now);
    }

    /// `end_meeting` (hosts only): the meeting ends for everyone.
    fn on_end_meeting(&mut self, from: From<'_>, now: Now) {
        if !self.is_host(from.meeting, from.participant) {
            self.send(
                from.conn,
                &ServerMessage::error(
                    ErrorCode::Forbidden,
                    "only a host may end the meeting",
                    None,
                ),
            );
            return;
        }
        self.end_meeting(from.meeting, EndReason::EndedByHost, now);
    }

    /// `message`: relayed to everyone else, or to the listed participants.
    fn relay(&mut self, from: From<'_>, payload: RawPayload, to: Option<Vec<String>>, now: Now) {
        let From {
            conn,
            meeting: mid,
            participant: pid,
        } = from;
        if self.cfg.test_hooks
            && serde_json::from_str::<&str>(payload.get()).ok() == Some(TEST_PANIC_PAYLOAD)
        {
            panic!("test hook: deliberate panic in meeting {mid}");
        }
        // The payload is relayed as sent, so its size as sent is what the limit bounds.
        if payload.get().len() > MAX_PAYLOAD_BYTES {
            self.send(
                conn,
                &ServerMessage::error(
                    ErrorCode::InvalidRequest,
                    "payload is larger than 16 KiB",
                    None,
                ),
            );
            return;
        }
        let frame = codec::encode_relayed(pid, &payload);
        match to {
            None => self.broadcast_frame(mid, Some(pid), frame, now),
            Some(list) => {
                if list.len() > MAX_RECIPIENTS {
                    self.send(
                        conn,
                        &ServerMessage::error(
                            ErrorCode::InvalidRequest,
                            "too many recipients",
                            None,
                        ),
                    );
                    return;
                }
                let Some(m) = self.meetings.get(mid) else {
                    return;
                };
                let mut unknown = 0usize;
                let mut targets = Vec::with_capacity(list.len());
                let mut held = Vec::new();
                let mut seen = HashSet::new();
                for id in &list {
                    if !seen.insert(id.as_str()) {
                        continue;
                    }
                    match m.find(id) {
                        Some(p) => {
                            targets.extend(p.conn);
                            if p.conn.is_none() && p.held.is_some() {
                                held.push(p.id.clone());
                            }
                        }
                        None => unknown += 1,
                    }
                }
                for t in targets {
                    self.push_frame(t, frame.clone());
                }
                if !held.is_empty() {
                    self.hold_for(mid, &held, &frame);
                }
                if unknown > 0 {
                    self.send(
                        conn,
                        &ServerMessage::error(
                            ErrorCode::NotFound,
                            format!("{unknown} recipient(s) are not in the meeting"),
                            None,
                        ),
                    );
                }
                self.reap_slow_consumers(now);
            }
        }
    }

    fn is_host(&self, mid: &MeetingId, pid: &ParticipantId) -> bool {
        self.meetings
            .get(mid)
            .and_then(|m| m.get(pid))
            .is_some_and(|p| p.role == Role::Host)
    }

    /// The participant a host action names, if the sender is a host and the target exists
    /// (else the sender gets an `error`).
    fn host_target(&mut self, from: From<'_>, target: &str) -> Option<ParticipantId> {
        let From {
            conn,
            meeting: mid,
            participant: pid,
        } = from;
        if !self.is_host(mid, pid) {
            self.send(
                conn,
                &ServerMessage::error(ErrorCode::Forbidden, "only a host may do this", None),
            );
            return None;
        }
        match self.meetings.get(mid).and_then(|m| m.find(target)) {
            Some(p) => Some(p.id.clone()),
            None => {
                self.send(
                    conn,
                    &ServerMessage::error(
                        ErrorCode::NotFound,
                        "no such participant in this meeting",
                        None,
                    ),
                );
                None
            }
        }
    }
}
