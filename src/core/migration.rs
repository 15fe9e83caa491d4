//! Live-meeting migration between controllers: what leaves one controller and arrives at
//! another (sans-IO). The shard side is in `shard/migration.rs`; the control side asks the GC
//! for a target and carries the [`MeetingExport`] over HTTP.
//!
//! A migration has three steps on the source shard and one on the target:
//!
//! 1. **export** — the meeting is frozen (client messages to it are refused with a visible
//!    `error`, nothing is silently lost) and its state is exported, with a fresh single-use
//!    binding token per participant whose nonce travels in the export;
//! 2. **import** (target) — the meeting is recreated with every participant within its resume
//!    window; frames for participants not yet back are held for them;
//! 3. **commit** — every connected participant gets `migrate{...}` and its connection closes;
//!    the meeting is forgotten here (a tombstone answers late resumes with the same notice);
//! 4. or **abort** — the meeting is unfrozen and continues here as if nothing happened.

use serde::{Deserialize, Serialize};

use super::ids::{MeetingId, ParticipantId};
use super::protocol::{MediaHandler, Role, MAX_DISPLAY_NAME_BYTES};

/// Version of the export format.
pub const EXPORT_VERSION: u32 = 1;
/// Largest migration id.
pub const MAX_MIGRATION_ID_LEN: usize = 128;
/// Participant id used for the binding-secret check token (never a real participant id: real
/// ones never start with `!`).
pub const SECRET_CHECK_PARTICIPANT: &str = "!secret-check";

/// One participant in an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantExport {
    /// Its id (kept at the target).
    pub participant_id: String,
    /// The token `sub` a resume must present.
    pub user: String,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Original join time, Unix ms.
    pub joined_at_ms: u64,
    /// Self-muted audio.
    pub audio_self: bool,
    /// Self-muted video.
    pub video_self: bool,
    /// Audio muted by a host.
    pub audio_host: bool,
    /// Video muted by a host.
    pub video_host: bool,
    /// Nonce of the migrate binding token; the target accepts only that token (single use).
    pub binding_nonce: u64,
}

/// A meeting's state, as carried from the source controller to the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeetingExport {
    /// [`EXPORT_VERSION`].
    pub version: u32,
    /// Unique per migration; a repeated import with the same id is accepted again (idempotent).
    pub migration_id: String,
    /// The controller the meeting leaves.
    pub source_controller_id: String,
    /// The meeting.
    pub meeting_id: String,
    /// Media handlers of the GC assignment.
    pub media_handlers: Vec<MediaHandler>,
    /// Assigned by a GC (as opposed to created by a standalone join).
    pub assigned: bool,
    /// Creation time at the source, Unix ms.
    pub created_unix_ms: u64,
    /// Participants in join order.
    pub participants: Vec<ParticipantExport>,
    /// A binding token for ([`SECRET_CHECK_PARTICIPANT`], `migration_id` as nonce source)
    /// issued by the source: the target refuses the import when it cannot verify it, i.e. when
    /// the two controllers do not share the binding secret (every resume would fail).
    pub secret_check: String,
    /// Nonce of `secret_check`.
    pub secret_check_nonce: u64,
}

/// Why an export could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// No such meeting on this shard.
    #[error("no such meeting")]
    NotFound,
    /// The meeting is already being exported.
    #[error("the meeting is already moving")]
    InProgress,
    /// A participant's client did not announce the `migrate` capability: the meeting keeps the
    /// controller's normal drain behaviour.
    #[error("a participant's client does not follow migrate")]
    ClientsUnsupported,
    /// The meeting arrived here by an earlier move and some participants are still on their way
    /// (frames are held for them here; they know only this controller). Moving it on now would
    /// strand them: try again once they are back or their resume window has ended.
    #[error("participants of an earlier move are still on their way here")]
    Returning,
}

impl ExportError {
    /// Metric/log label.
    pub fn reason(self) -> &'static str {
        match self {
            ExportError::NotFound => "not_found",
            ExportError::InProgress => "in_progress",
            ExportError::ClientsUnsupported => "clients_unsupported",
            ExportError::Returning => "participants_returning",
        }
    }
}

/// Why an import was refused. Nothing is kept of a refused import.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The export is malformed (bad ids, names, duplicates, version).
    #[error("invalid export: {0}")]
    Invalid(String),
    /// The two controllers do not share the binding secret.
    #[error("binding secret differs from the source controller's")]
    SecretMismatch,
    /// This controller is draining.
    #[error("controller is draining")]
    Draining,
    /// No room for the meeting or its participants.
    #[error("controller is at capacity")]
    AtCapacity,
    /// A different meeting of that id (or another migration of it) is already here.
    #[error("the meeting already exists here")]
    Conflict,
}

impl ImportError {
    /// Wire/metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            ImportError::Invalid(_) => "invalid",
            ImportError::SecretMismatch => "secret_mismatch",
            ImportError::Draining => "draining",
            ImportError::AtCapacity => "at_capacity",
            ImportError::Conflict => "conflict",
        }
    }
}

/// What an accepted import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    /// The meeting is now here.
    Imported,
    /// The same migration was imported before; nothing changed.
    Repeated,
}

/// Where participants are sent by a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationTarget {
    /// Target controller id.
    pub controller_id: String,
    /// Target QUIC endpoint.
    pub quic_endpoint: String,
    /// Target WebTransport URL.
    pub webtransport_url: String,
}

/// Validated participant of an import.
pub(crate) struct ValidParticipant {
    pub id: ParticipantId,
    pub p: ParticipantExport,
}

/// Checks an export's shape (not its secret): version, ids, names, duplicates, sizes.
pub(crate) fn validate(
    e: &MeetingExport,
    max_participants_per_meeting: usize,
) -> Result<(MeetingId, Vec<ValidParticipant>), ImportError> {
    let bad = |m: String| Err(ImportError::Invalid(m));
    if e.version != EXPORT_VERSION {
        return bad(format!("unsupported export version {}", e.version));
    }
    if e.migration_id.is_empty()
        || e.migration_id.len() > MAX_MIGRATION_ID_LEN
        || !e.migration_id.bytes().all(|b| b.is_ascii_graphic())
    {
        return bad("migration_id must be 1..=128 printable ASCII characters".into());
    }
    let id =
        MeetingId::parse(&e.meeting_id).map_err(|err| ImportError::Invalid(err.to_string()))?;
    if e.participants.len() > max_participants_per_meeting {
        return bad(format!(
            "{} participants exceed the per-meeting limit of {max_participants_per_meeting}",
            e.participants.len()
        ));
    }
    if e.media_handlers.len() > 16 {
        return bad("at most 16 media_handlers".into());
    }
    let mut out: Vec<ValidParticipant> = Vec::with_capacity(e.participants.len());
    for (i, p) in e.participants.iter().enumerate() {
        let Some(pid) = ParticipantId::from_wire(&p.participant_id)
            .filter(|_| p.participant_id.bytes().all(|b| b.is_ascii_graphic()))
            .filter(|_| !p.participant_id.starts_with('!'))
        else {
            return bad(format!("participants[{i}].participant_id is invalid"));
        };
        if out.iter().any(|o| o.id == pid) {
            return bad(format!("participants[{i}].participant_id is a duplicate"));
        }
        if p.user.is_empty() || p.user.len() > 1024 {
            return bad(format!("participants[{i}].user must be 1..=1024 bytes"));
        }
        if p.display_name.len() > MAX_DISPLAY_NAME_BYTES
            || p.display_name.chars().any(char::is_control)
        {
            return bad(format!("participants[{i}].display_name is invalid"));
        }
        out.push(ValidParticipant {
            id: pid,
            p: p.clone(),
        });
    }
    Ok((id, out))
}
