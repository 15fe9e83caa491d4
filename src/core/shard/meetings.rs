//! Meeting operations: fan-out to a meeting's connections, participants leaving, a meeting
//! failing after a panic, and the timers (join timeout, resume window, empty meeting, moved
//! tombstones).

use std::cmp::Reverse;

use super::stats::{JoinResult, MigrationOutcome};
use super::{close_code, Action, ConnState, Now, Shard, ShardEvent, Timer};
use crate::core::codec::{self, Frame};
use crate::core::ids::{MeetingId, ParticipantId};
use crate::core::protocol::{EndReason, ErrorCode, LeaveReason, ServerMessage};

impl Shard {
    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now.mono {
                break;
            }
            let Some(Reverse((_, timer))) = self.timers.pop() else {
                break;
            };
            match timer {
                Timer::JoinTimeout(conn) => {
                    if let Some(c) = self.conns.get(&conn) {
                        if matches!(c.state, ConnState::AwaitingJoin)
                            && now.mono >= c.opened + self.cfg.join_timeout
                        {
                            self.reject(
                                conn,
                                ErrorCode::InvalidRequest,
                                "no join received in time",
                                None,
                                close_code::PROTOCOL,
                                "join timeout",
                            );
                            self.count_join(JoinResult::Timeout);
                        }
                    }
                }
                Timer::ResumeExpiry(mid, pid) => {
                    let expired = self
                        .meetings
                        .get(&mid)
                        .and_then(|m| m.get(&pid))
                        .is_some_and(|p| {
                            p.conn.is_none()
                                && p.disconnected_at
                                    .is_some_and(|t| now.mono >= t + self.cfg.resume_window)
                        });
                    if expired {
                        let was_held = self
                            .meetings
                            .get(&mid)
                            .and_then(|m| m.get(&pid))
                            .is_some_and(|p| p.held.is_some());
                        if was_held {
                            self.count_migration(MigrationOutcome::Lost);
                            tracing::info!(shard = %self.cfg.shard, meeting = %mid, participant = %pid, "migrated participant did not come back");
                        }
                        self.remove_participant(&mid, &pid, LeaveReason::Timeout, now);
                    }
                }
                Timer::MovedExpiry(mid) => self.migration.forget_moved(&mid, now.mono),
                Timer::EmptyMeeting(mid) => {
                    let expired = self.meetings.get(&mid).is_some_and(|m| {
                        m.empty_since
                            .is_some_and(|t| now.mono >= t + self.cfg.empty_meeting_timeout)
                    });
                    if expired {
                        self.meetings.remove(&mid);
                        self.actions
                            .push_back(Action::Notify(ShardEvent::MeetingEnded {
                                meeting_id: mid.to_string(),
                                reason: EndReason::EmptyTimeout.as_str(),
                            }));
                    }
                }
            }
        }
    }

    pub(super) fn remove_participant(
        &mut self,
        mid: &MeetingId,
        pid: &ParticipantId,
        reason: LeaveReason,
        now: Now,
    ) {
        let Some(m) = self.meetings.get_mut(mid) else {
            return;
        };
        let Some(p) = m.remove(pid, now.mono) else {
            return;
        };
        let empty = m.is_empty();
        tracing::debug!(shard = %self.cfg.shard, meeting = %mid, participant = %pid, ?reason, "left");
        if let Some(c) = p.conn.and_then(|c| self.conns.get_mut(&c)) {
            if let ConnState::Joined { .. } = c.state {
                c.state = ConnState::Closing;
            }
        }
        self.broadcast(
            mid,
            None,
            &ServerMessage::ParticipantLeft {
                participant_id: pid.to_string(),
                reason,
            },
            now,
        );
        if empty {
            self.timers.push(Reverse((
                now.mono + self.cfg.empty_meeting_timeout,
                Timer::EmptyMeeting(mid.clone()),
            )));
        }
    }

    pub(super) fn fail_meeting(&mut self, mid: &MeetingId) {
        let Some(m) = self.meetings.remove(mid) else {
            return;
        };
        tracing::error!(shard = %self.cfg.shard, meeting = %mid, "meeting ended after a panic while handling its message");
        let frame = codec::encode_server(&ServerMessage::error(
            ErrorCode::Internal,
            "the meeting ended because of an internal error",
            None,
        ));
        for conn in m.connections_except(None) {
            self.push_frame(conn, frame.clone());
            self.close(conn, close_code::INTERNAL, "internal error");
        }
        self.actions
            .push_back(Action::Notify(ShardEvent::MeetingEnded {
                meeting_id: mid.to_string(),
                reason: "internal_error",
            }));
    }

    pub(super) fn broadcast(
        &mut self,
        mid: &MeetingId,
        except: Option<&ParticipantId>,
        msg: &ServerMessage,
        now: Now,
    ) {
        let frame = codec::encode_server(msg);
        self.broadcast_frame(mid, except, frame, now);
    }

    pub(super) fn broadcast_frame(
        &mut self,
        mid: &MeetingId,
        except: Option<&ParticipantId>,
        frame: Frame,
        now: Now,
    ) {
        let Some(m) = self.meetings.get(mid) else {
            return;
        };
        let holding = m.is_holding();
        for conn in m.connections_except(except) {
            self.push_frame(conn, frame.clone());
        }
        if holding {
            self.hold_all(mid, except, &frame);
        }
        self.reap_slow_consumers(now);
    }
}
