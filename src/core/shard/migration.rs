//! The shard's side of live-meeting migration (see [`crate::core::migration`]): export, commit
//! and abort on the source shard, import on the target shard, the held frames of participants
//! not back yet, and tombstones that redirect late resumes.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::time::Instant;

use super::stats::{DropReason, MigrationOutcome};
use super::{close_code, Now, Shard, Timer};
use crate::core::binding::BindingError;
use crate::core::codec::Frame;
use crate::core::ids::{ConnId, MeetingId, ParticipantId};
use crate::core::meeting::{Meeting, Participant};
use crate::core::migration::{
    self, ExportError, ImportError, ImportOutcome, MeetingExport, MigrationTarget,
    ParticipantExport, EXPORT_VERSION, SECRET_CHECK_PARTICIPANT,
};
use crate::core::protocol::{ResumeRequest, ServerMessage};
use crate::core::token::Claims;

/// How long the secret-check token of an export stays valid (an import is attempted within
/// seconds of its export).
const SECRET_CHECK_TTL_MS: u64 = 10 * 60 * 1000;

/// One participant's migrate token, issued at export.
#[derive(Debug, Clone)]
struct Grant {
    id: ParticipantId,
    user: String,
    /// Nonce of the binding token of its latest `join_response` here (for late resumes).
    old_nonce: Option<u64>,
    /// The single-use token the target accepts.
    token: String,
}

/// An export waiting for its commit or abort.
#[derive(Debug)]
struct PendingExport {
    migration_id: String,
    grants: Vec<Grant>,
}

/// A meeting that moved away: late resumes are told where it went.
#[derive(Debug)]
struct Moved {
    target: MigrationTarget,
    grants: Vec<Grant>,
    until: Instant,
}

/// Migration bookkeeping of one shard.
#[derive(Debug, Default)]
pub(super) struct MigrationState {
    exports: HashMap<MeetingId, PendingExport>,
    moved: HashMap<MeetingId, Moved>,
}

impl MigrationState {
    /// Drops the tombstone of `mid` once it has expired.
    pub(super) fn forget_moved(&mut self, mid: &MeetingId, now: Instant) {
        if self.moved.get(mid).is_some_and(|m| now >= m.until) {
            self.moved.remove(mid);
        }
    }
}

impl Shard {
    /// Starts moving a meeting away: freezes it (client messages to it are refused with an
    /// `error` until [`Shard::commit_export`] or [`Shard::abort_export`]) and returns its state
    /// with a fresh single-use binding token per participant.
    pub fn begin_export(
        &mut self,
        meeting_id: &MeetingId,
        migration_id: &str,
        source_controller_id: &str,
        now: Now,
    ) -> Result<MeetingExport, ExportError> {
        let Some(m) = self.meetings.get(meeting_id) else {
            return Err(ExportError::NotFound);
        };
        if m.migrating.is_some() || self.migration.exports.contains_key(meeting_id) {
            return Err(ExportError::InProgress);
        }
        if m.participants().any(|p| !p.follows_migrate) {
            return Err(ExportError::ClientsUnsupported);
        }
        if m.is_holding() {
            return Err(ExportError::Returning);
        }
        let window_ms = u64::try_from(self.cfg.resume_window.as_millis()).unwrap_or(u64::MAX);
        // Bounded: the slot at the target lasts one resume window; the token a little longer
        // so a client that got the notice at the end of a slow commit still fits.
        let expires = now.unix_ms.saturating_add(window_ms.saturating_mul(2));
        let people: Vec<Participant> = m.participants().cloned().collect();
        let (media_handlers, assigned, created_unix_ms) =
            (m.media_handlers.clone(), m.assigned, m.created_unix_ms);
        let mut grants = Vec::with_capacity(people.len());
        let mut exported = Vec::with_capacity(people.len());
        for p in people {
            let nonce = self.next_nonce();
            let token = self
                .binding
                .issue(meeting_id.as_str(), p.id.as_str(), nonce, expires);
            exported.push(ParticipantExport {
                participant_id: p.id.to_string(),
                user: p.user.clone(),
                display_name: p.display_name.clone(),
                role: p.role,
                joined_at_ms: p.joined_at_ms,
                audio_self: p.audio_self,
                video_self: p.video_self,
                audio_host: p.audio_host,
                video_host: p.video_host,
                binding_nonce: nonce,
            });
            grants.push(Grant {
                id: p.id,
                user: p.user,
                old_nonce: p.binding_nonce,
                token,
            });
        }
        let check_nonce = self.next_nonce();
        let secret_check = self.binding.issue(
            meeting_id.as_str(),
            SECRET_CHECK_PARTICIPANT,
            check_nonce,
            now.unix_ms.saturating_add(SECRET_CHECK_TTL_MS),
        );
        let export = MeetingExport {
            version: EXPORT_VERSION,
            migration_id: migration_id.to_owned(),
            source_controller_id: source_controller_id.to_owned(),
            meeting_id: meeting_id.to_string(),
            media_handlers,
            assigned,
            created_unix_ms,
            participants: exported,
            secret_check,
            secret_check_nonce: check_nonce,
        };
        if let Some(m) = self.meetings.get_mut(meeting_id) {
            m.migrating = Some(migration_id.to_owned());
        }
        self.migration.exports.insert(
            meeting_id.clone(),
            PendingExport {
                migration_id: migration_id.to_owned(),
                grants,
            },
        );
        tracing::info!(shard = %self.cfg.shard, meeting = %meeting_id, migration = migration_id, "meeting frozen for export");
        Ok(export)
    }

    /// Cancels an export: the meeting continues here. False if no export of it was pending.
    pub fn abort_export(&mut self, meeting_id: &MeetingId) -> bool {
        let Some(pending) = self.migration.exports.remove(meeting_id) else {
            return false;
        };
        if let Some(m) = self.meetings.get_mut(meeting_id) {
            m.migrating = None;
        }
        tracing::info!(shard = %self.cfg.shard, meeting = %meeting_id, migration = %pending.migration_id, "export aborted; the meeting stays");
        true
    }

    /// Completes an export once the target imported the meeting: every connected participant
    /// gets `migrate{...}` and its connection closes; the meeting is forgotten here (the GC is
    /// not told it ended: it chose the target). Returns the participants notified, or `None`
    /// if no export of it was pending.
    pub fn commit_export(
        &mut self,
        meeting_id: &MeetingId,
        target: MigrationTarget,
        now: Now,
    ) -> Option<usize> {
        let pending = self.migration.exports.remove(meeting_id)?;
        let m = self.meetings.remove(meeting_id)?;
        let window_ms = u64::try_from(self.cfg.resume_window.as_millis()).unwrap_or(u64::MAX);
        let mut notified = 0;
        for g in &pending.grants {
            let Some(conn) = m.get(&g.id).and_then(|p| p.conn) else {
                continue;
            };
            self.send_migrate(conn, meeting_id, g, &target, window_ms);
            notified += 1;
        }
        for _ in 0..notified {
            self.count_migration(MigrationOutcome::Notified);
        }
        self.count_migration(MigrationOutcome::Exported);
        tracing::info!(shard = %self.cfg.shard, meeting = %meeting_id, target = %target.controller_id, participants = m.len(), notified, "meeting moved");
        let until = now.mono + self.cfg.resume_window;
        self.timers
            .push(Reverse((until, Timer::MovedExpiry(meeting_id.clone()))));
        self.migration.moved.insert(
            meeting_id.clone(),
            Moved {
                target,
                grants: pending.grants,
                until,
            },
        );
        Some(notified)
    }

    fn send_migrate(
        &mut self,
        conn: ConnId,
        meeting_id: &MeetingId,
        g: &Grant,
        target: &MigrationTarget,
        window_ms: u64,
    ) {
        // Messages still waiting in the inbox are dropped by the close below: not handled.
        let waiting = self.inbox.iter().filter(|m| m.conn == conn).count() as u64;
        let messages_handled = self
            .conns
            .get(&conn)
            .map_or(0, |c| c.received.saturating_sub(waiting));
        self.send(
            conn,
            &ServerMessage::Migrate {
                meeting_id: meeting_id.to_string(),
                participant_id: g.id.to_string(),
                controller_id: target.controller_id.clone(),
                quic_endpoint: target.quic_endpoint.clone(),
                webtransport_url: target.webtransport_url.clone(),
                binding_token: g.token.clone(),
                resume_window_ms: window_ms,
                messages_handled,
            },
        );
        self.close(conn, close_code::NORMAL, "migrated");
    }

    /// A resume for a meeting that moved away: a participant that proves itself (its latest
    /// binding token here or its migrate token, and the same `sub`) gets the `migrate` notice
    /// again. Returns false when the meeting did not move or the proof fails (the caller
    /// answers as for any unknown participant).
    pub(super) fn redirect_moved(
        &mut self,
        conn: ConnId,
        meeting_id: &MeetingId,
        claims: &Claims,
        r: &ResumeRequest,
        follows_migrate: bool,
        now: Now,
    ) -> bool {
        if !follows_migrate {
            return false;
        }
        let Some(moved) = self.migration.moved.get(meeting_id) else {
            return false;
        };
        if now.mono >= moved.until {
            return false;
        }
        let Some(g) = moved
            .grants
            .iter()
            .find(|g| g.id.as_str() == r.participant_id)
        else {
            return false;
        };
        let proven = g.user == claims.sub
            && match self.binding.verify(
                &r.binding_token,
                meeting_id.as_str(),
                g.id.as_str(),
                now.unix_ms,
            ) {
                Ok(b) => Some(b.nonce) == g.old_nonce || r.binding_token == g.token,
                Err(_) => false,
            };
        if !proven {
            return false;
        }
        let (g, target) = (g.clone(), moved.target.clone());
        let window_ms = u64::try_from(self.cfg.resume_window.as_millis()).unwrap_or(u64::MAX);
        self.send_migrate(conn, meeting_id, &g, &target, window_ms);
        self.count_migration(MigrationOutcome::Notified);
        true
    }

    /// Recreates a meeting exported by another controller. Every participant starts within its
    /// resume window (the target's) and can resume only with its migrate token. Idempotent: the
    /// same migration imported again answers [`ImportOutcome::Repeated`]. A refused import
    /// leaves nothing behind.
    pub fn import_meeting(
        &mut self,
        export: &MeetingExport,
        now: Now,
    ) -> Result<ImportOutcome, ImportError> {
        let (id, people) = migration::validate(export, self.cfg.max_participants_per_meeting)?;
        if self.router.shard_for(&id) != self.cfg.shard {
            return Err(ImportError::Invalid(
                "the meeting belongs to another shard".into(),
            ));
        }
        match self.binding.verify(
            &export.secret_check,
            id.as_str(),
            SECRET_CHECK_PARTICIPANT,
            now.unix_ms,
        ) {
            Ok(c) if c.nonce == export.secret_check_nonce => {}
            Ok(_) => return Err(ImportError::SecretMismatch),
            Err(BindingError::Expired) => {
                return Err(ImportError::Invalid("the export is stale".into()))
            }
            Err(_) => return Err(ImportError::SecretMismatch),
        }
        if let Some(m) = self.meetings.get(&id) {
            return if m.imported_by.as_deref() == Some(export.migration_id.as_str()) {
                Ok(ImportOutcome::Repeated)
            } else {
                Err(ImportError::Conflict)
            };
        }
        if self.draining {
            return Err(ImportError::Draining);
        }
        if self.meetings.len() >= self.cfg.max_meetings
            || self.participant_count() + people.len() > self.cfg.max_participants
        {
            return Err(ImportError::AtCapacity);
        }
        let mut m = Meeting::new(
            id.clone(),
            now.mono,
            export.created_unix_ms,
            &self.participants,
        );
        m.assigned = export.assigned;
        m.media_handlers = export.media_handlers.clone();
        m.imported_by = Some(export.migration_id.clone());
        for v in people {
            let p = v.p;
            m.add_held(
                Participant {
                    id: v.id.clone(),
                    user: p.user,
                    display_name: p.display_name,
                    role: p.role,
                    joined_at_ms: p.joined_at_ms,
                    audio_self: p.audio_self,
                    video_self: p.video_self,
                    audio_host: p.audio_host,
                    video_host: p.video_host,
                    conn: None,
                    disconnected_at: Some(now.mono),
                    binding_nonce: Some(p.binding_nonce),
                    follows_migrate: true,
                    held: None,
                },
                now.mono,
            );
            self.timers.push(Reverse((
                now.mono + self.cfg.resume_window,
                Timer::ResumeExpiry(id.clone(), v.id),
            )));
        }
        if m.is_empty() {
            self.timers.push(Reverse((
                now.mono + self.cfg.empty_meeting_timeout,
                Timer::EmptyMeeting(id.clone()),
            )));
        }
        tracing::info!(shard = %self.cfg.shard, meeting = %id, source = %export.source_controller_id, migration = %export.migration_id, participants = m.len(), "meeting imported");
        self.meetings.insert(id, m);
        self.count_migration(MigrationOutcome::Imported);
        Ok(ImportOutcome::Imported)
    }

    /// Holds `frame` for every participant of `mid` not back yet (except `except`).
    pub(super) fn hold_all(
        &mut self,
        mid: &MeetingId,
        except: Option<&ParticipantId>,
        frame: &Frame,
    ) {
        let cap = self.cfg.mailbox_size;
        let drops = self
            .meetings
            .get_mut(mid)
            .map_or(0, |m| m.hold(except, frame, cap));
        self.count_hold_drops(drops);
    }

    /// Holds `frame` for the listed participants of `mid` not back yet.
    pub(super) fn hold_for(&mut self, mid: &MeetingId, ids: &[ParticipantId], frame: &Frame) {
        let cap = self.cfg.mailbox_size;
        let Some(m) = self.meetings.get_mut(mid) else {
            return;
        };
        let mut drops = 0;
        for id in ids {
            if let Some(q) = m.get_mut(id).and_then(|p| p.held.as_mut()) {
                if q.len() >= cap {
                    drops += 1;
                } else {
                    q.push_back(frame.clone());
                }
            }
        }
        self.count_hold_drops(drops);
    }

    fn count_hold_drops(&mut self, drops: u64) {
        if drops > 0 {
            self.stats.dropped.add(DropReason::MigrationHold, drops);
        }
    }

    fn next_nonce(&mut self) -> u64 {
        self.nonce_seq += 1;
        (u64::from(self.cfg.shard.0) << 48) | self.nonce_seq
    }
}
