//! Control commands from the control thread: drain, GC assignments, ending meetings, operator
//! views.

use std::cmp::Reverse;

use super::{close_code, Action, AssignOutcome, ConnState, Now, Shard, ShardEvent, Timer};
use crate::core::codec;
use crate::core::ids::{ConnId, MeetingId};
use crate::core::meeting::{Meeting, MeetingDetail, MeetingSummary};
use crate::core::protocol::{EndReason, ErrorCode, MediaHandler, ServerMessage};

impl Shard {
    /// Starts or stops refusing new meetings and joins.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// True while draining.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// GC assignment of a meeting to this controller (idempotent).
    pub fn assign_meeting(
        &mut self,
        meeting_id: MeetingId,
        media_handlers: Vec<MediaHandler>,
        now: Now,
    ) -> AssignOutcome {
        if let Some(m) = self.meetings.get_mut(&meeting_id) {
            m.assigned = true;
            m.media_handlers = media_handlers;
            return AssignOutcome::Accepted;
        }
        if self.draining {
            return AssignOutcome::Draining;
        }
        if self.meetings.len() >= self.cfg.max_meetings {
            return AssignOutcome::AtCapacity;
        }
        let mut m = Meeting::new(
            meeting_id.clone(),
            now.mono,
            now.unix_ms,
            &self.participants,
        );
        m.assigned = true;
        m.media_handlers = media_handlers;
        self.meetings.insert(meeting_id.clone(), m);
        self.timers.push(Reverse((
            now.mono + self.cfg.empty_meeting_timeout,
            Timer::EmptyMeeting(meeting_id),
        )));
        AssignOutcome::Accepted
    }

    /// Ends a meeting for everyone with `reason`; false if it is not here.
    pub fn end_meeting(&mut self, meeting_id: &MeetingId, reason: EndReason, _now: Now) -> bool {
        let Some(m) = self.meetings.remove(meeting_id) else {
            return false;
        };
        let frame = codec::encode_server(&ServerMessage::MeetingEnded { reason });
        for conn in m.connections_except(None) {
            self.push_frame(conn, frame.clone());
            self.close(conn, close_code::NORMAL, "meeting ended");
        }
        self.actions
            .push_back(Action::Notify(ShardEvent::MeetingEnded {
                meeting_id: meeting_id.to_string(),
                reason: reason.as_str(),
            }));
        true
    }

    /// Ends every meeting (drain deadline); returns how many ended.
    pub fn end_all(&mut self, reason: EndReason, now: Now) -> usize {
        let ids: Vec<MeetingId> = self.meetings.keys().cloned().collect();
        for id in &ids {
            self.end_meeting(id, reason, now);
        }
        let pending: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, ConnState::AwaitingJoin))
            .map(|(id, _)| *id)
            .collect();
        for conn in pending {
            self.reject(
                conn,
                ErrorCode::CapacityExceeded,
                "controller is draining",
                None,
                close_code::CAPACITY,
                "draining",
            );
        }
        ids.len()
    }

    /// Operator list of meetings.
    pub fn meetings(&self, now: Now) -> Vec<MeetingSummary> {
        let mut v: Vec<_> = self
            .meetings
            .values()
            .map(|m| m.summary(self.cfg.shard.0, now.mono))
            .collect();
        v.sort_by(|a, b| a.meeting_id.cmp(&b.meeting_id));
        v
    }

    /// Operator view of one meeting.
    pub fn meeting(&self, id: &MeetingId, now: Now) -> Option<MeetingDetail> {
        self.meetings
            .get(id)
            .map(|m| m.detail(self.cfg.shard.0, now.mono))
    }
}
