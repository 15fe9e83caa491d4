//! One meeting's state: its roster, mute states and lifecycle timestamps.
//!
//! A `Meeting` never talks to connections; the shard turns its answers into frames. Every
//! method takes the time it needs as a parameter.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::codec::Frame;
use super::ids::{ConnId, MeetingId, ParticipantId};
use super::protocol::{MediaHandler, ParticipantInfo, Role, ServerMessage};

/// A participant of a meeting, connected or within its resume window.
#[derive(Debug, Clone)]
pub struct Participant {
    /// Its id.
    pub id: ParticipantId,
    /// The token's `sub`.
    pub user: String,
    /// Display name from the join.
    pub display_name: String,
    /// Role from the token.
    pub role: Role,
    /// Unix epoch milliseconds of the join.
    pub joined_at_ms: u64,
    /// Self-muted audio.
    pub audio_self: bool,
    /// Self-muted video.
    pub video_self: bool,
    /// Audio muted by a host.
    pub audio_host: bool,
    /// Video muted by a host.
    pub video_host: bool,
    /// The connection serving it; `None` while it is within the resume window.
    pub conn: Option<ConnId>,
    /// When its connection went away.
    pub disconnected_at: Option<Instant>,
    /// Nonce of the binding token currently valid for resume (single use).
    pub binding_nonce: Option<u64>,
    /// Its client announced the `migrate` capability in its latest `join`.
    pub follows_migrate: bool,
    /// Imported by a migration and not back yet: frames due to it wait here (bounded) and are
    /// delivered after its resume, so nothing sent meanwhile is lost.
    pub held: Option<VecDeque<Frame>>,
}

impl Participant {
    /// The roster entry others see.
    pub fn info(&self) -> ParticipantInfo {
        ParticipantInfo {
            participant_id: self.id.to_string(),
            display_name: self.display_name.clone(),
            role: self.role,
            audio_muted: self.audio_self || self.audio_host,
            video_muted: self.video_self || self.video_host,
            joined_at_ms: self.joined_at_ms,
        }
    }

    /// The `mute_update` describing this participant.
    pub fn mute_update(&self) -> ServerMessage {
        ServerMessage::MuteUpdate {
            participant_id: self.id.to_string(),
            audio_muted: self.audio_self || self.audio_host,
            video_muted: self.video_self || self.video_host,
            audio_host_muted: self.audio_host,
            video_host_muted: self.video_host,
        }
    }
}

/// A meeting owned by one shard.
#[derive(Debug)]
pub struct Meeting {
    /// Its id.
    pub id: MeetingId,
    /// Participants in join order (key: per-meeting join sequence).
    participants: BTreeMap<u64, Participant>,
    next_seq: u64,
    /// Media handlers from the GC assignment.
    pub media_handlers: Vec<MediaHandler>,
    /// Assigned by the GC (as opposed to created by a standalone join).
    pub assigned: bool,
    /// Creation time.
    pub created_at: Instant,
    /// Creation time, Unix epoch ms.
    pub created_unix_ms: u64,
    /// Last processed message or membership change.
    pub last_activity: Instant,
    /// Since when the meeting has had no participant at all.
    pub empty_since: Option<Instant>,
    /// Being exported to another controller: client messages are refused until commit/abort.
    pub migrating: Option<String>,
    /// Id of the migration that brought it here (a repeated import of it is a no-op).
    pub imported_by: Option<String>,
    /// Participants with a `held` queue.
    holding: usize,
    /// The owning shard's participant count, kept by `add`, `remove` and drop.
    tally: Arc<AtomicUsize>,
}

impl Drop for Meeting {
    fn drop(&mut self) {
        self.tally
            .fetch_sub(self.participants.len(), Ordering::Relaxed);
    }
}

impl Meeting {
    /// A new, empty meeting whose participants are counted into `tally` (its shard's total).
    pub fn new(id: MeetingId, now: Instant, unix_ms: u64, tally: &Arc<AtomicUsize>) -> Self {
        Self {
            id,
            participants: BTreeMap::new(),
            next_seq: 0,
            media_handlers: Vec::new(),
            assigned: false,
            created_at: now,
            created_unix_ms: unix_ms,
            last_activity: now,
            empty_since: Some(now),
            migrating: None,
            imported_by: None,
            holding: 0,
            tally: Arc::clone(tally),
        }
    }

    /// True while some imported participant has not come back (fan-outs also fill `held`).
    pub fn is_holding(&self) -> bool {
        self.holding > 0
    }

    /// Appends `frame` to the held queue of every participant not back yet (except `except`);
    /// a full queue (`cap`) drops the frame for that participant. Returns the drops.
    pub fn hold(&mut self, except: Option<&ParticipantId>, frame: &Frame, cap: usize) -> u64 {
        let mut drops = 0;
        for p in self.participants.values_mut() {
            if Some(&p.id) == except || p.conn.is_some() {
                continue;
            }
            if let Some(q) = p.held.as_mut() {
                if q.len() >= cap {
                    drops += 1;
                } else {
                    q.push_back(frame.clone());
                }
            }
        }
        drops
    }

    /// Takes the held frames of `id` (it is back).
    pub fn take_held(&mut self, id: &ParticipantId) -> Option<VecDeque<Frame>> {
        let held = self.get_mut(id)?.held.take();
        if held.is_some() {
            self.holding -= 1;
        }
        held
    }

    /// Adds an imported participant that has a held queue.
    pub fn add_held(&mut self, mut p: Participant, now: Instant) {
        p.held = Some(VecDeque::new());
        self.holding += 1;
        self.add(p, now);
    }

    /// Number of participants, including those within their resume window.
    pub fn len(&self) -> usize {
        self.participants.len()
    }

    /// True when nobody is in the meeting.
    pub fn is_empty(&self) -> bool {
        self.participants.is_empty()
    }

    /// Number of participants with a live connection.
    pub fn connected(&self) -> usize {
        self.participants
            .values()
            .filter(|p| p.conn.is_some())
            .count()
    }

    /// Adds a participant; returns its join sequence.
    pub fn add(&mut self, p: Participant, now: Instant) {
        if self.participants.insert(self.next_seq, p).is_none() {
            self.tally.fetch_add(1, Ordering::Relaxed);
        }
        self.next_seq += 1;
        self.empty_since = None;
        self.last_activity = now;
    }

    /// Removes a participant by id.
    pub fn remove(&mut self, id: &ParticipantId, now: Instant) -> Option<Participant> {
        let key = self
            .participants
            .iter()
            .find_map(|(k, p)| (p.id == *id).then_some(*k))?;
        let p = self.participants.remove(&key);
        if p.is_some() {
            self.tally.fetch_sub(1, Ordering::Relaxed);
        }
        if p.as_ref().is_some_and(|p| p.held.is_some()) {
            self.holding -= 1;
        }
        self.last_activity = now;
        if self.participants.is_empty() {
            self.empty_since = Some(now);
        }
        p
    }

    /// Looks a participant up by id.
    pub fn get(&self, id: &ParticipantId) -> Option<&Participant> {
        self.participants.values().find(|p| p.id == *id)
    }

    /// Looks a participant up by id, mutably.
    pub fn get_mut(&mut self, id: &ParticipantId) -> Option<&mut Participant> {
        self.participants.values_mut().find(|p| p.id == *id)
    }

    /// Looks a participant up by its wire id.
    pub fn find(&self, wire_id: &str) -> Option<&Participant> {
        self.participants
            .values()
            .find(|p| p.id.as_str() == wire_id)
    }

    /// Participants in join order.
    pub fn participants(&self) -> impl Iterator<Item = &Participant> {
        self.participants.values()
    }

    /// Connections of every connected participant except `except`, in join order.
    pub fn connections_except(&self, except: Option<&ParticipantId>) -> Vec<ConnId> {
        self.participants
            .values()
            .filter(|p| Some(&p.id) != except)
            .filter_map(|p| p.conn)
            .collect()
    }

    /// The roster as seen by `joiner` (the joiner excluded).
    pub fn roster_for(&self, joiner: &ParticipantId) -> Vec<ParticipantInfo> {
        self.participants
            .values()
            .filter(|p| p.id != *joiner)
            .map(Participant::info)
            .collect()
    }

    /// Operator view of the meeting.
    pub fn summary(&self, shard: u16, now: Instant) -> MeetingSummary {
        MeetingSummary {
            meeting_id: self.id.to_string(),
            shard,
            participants: self.len(),
            connected: self.connected(),
            assigned: self.assigned,
            created_unix_ms: self.created_unix_ms,
            age_ms: millis(now.saturating_duration_since(self.created_at)),
            idle_ms: millis(now.saturating_duration_since(self.last_activity)),
        }
    }

    /// Operator view of the meeting with its participants.
    pub fn detail(&self, shard: u16, now: Instant) -> MeetingDetail {
        MeetingDetail {
            summary: self.summary(shard, now),
            media_handlers: self.media_handlers.clone(),
            participants: self
                .participants
                .values()
                .map(|p| ParticipantAdmin {
                    participant_id: p.id.to_string(),
                    user: p.user.clone(),
                    display_name: p.display_name.clone(),
                    role: p.role,
                    connected: p.conn.is_some(),
                    audio_muted: p.audio_self || p.audio_host,
                    video_muted: p.video_self || p.video_host,
                    joined_at_ms: p.joined_at_ms,
                    disconnected_for_ms: p
                        .disconnected_at
                        .map(|t| millis(now.saturating_duration_since(t))),
                })
                .collect(),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One meeting in `GET /admin/meetings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MeetingSummary {
    /// Meeting id.
    pub meeting_id: String,
    /// Owning shard.
    pub shard: u16,
    /// Participants, including those within their resume window.
    pub participants: usize,
    /// Participants with a live connection.
    pub connected: usize,
    /// Assigned by the GC.
    pub assigned: bool,
    /// Creation time, Unix epoch ms.
    pub created_unix_ms: u64,
    /// Age.
    pub age_ms: u64,
    /// Time since the last message or membership change.
    pub idle_ms: u64,
}

/// One participant in `GET /admin/meetings/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ParticipantAdmin {
    /// Participant id.
    pub participant_id: String,
    /// Token subject.
    pub user: String,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Has a live connection.
    pub connected: bool,
    /// Effective audio mute.
    pub audio_muted: bool,
    /// Effective video mute.
    pub video_muted: bool,
    /// Join time, Unix epoch ms.
    pub joined_at_ms: u64,
    /// How long it has been disconnected (within the resume window).
    pub disconnected_for_ms: Option<u64>,
}

/// `GET /admin/meetings/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MeetingDetail {
    /// Summary fields.
    #[serde(flatten)]
    pub summary: MeetingSummary,
    /// Media handlers from the GC.
    pub media_handlers: Vec<MediaHandler>,
    /// Participants in join order.
    pub participants: Vec<ParticipantAdmin>,
}
