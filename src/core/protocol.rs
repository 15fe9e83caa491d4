//! Signaling v1 message types (`../shared/spec/signaling-v1.md` §3) and their limits.
//!
//! Both directions derive `Serialize` and `Deserialize` so that the server, the integration
//! tests and the load generator share one definition of the wire format.

use serde::{Deserialize, Serialize};

/// Maximum serialized size of a `message.payload` (16 KiB).
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;
/// Maximum size of a join token (8 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Maximum size of a display name in bytes of UTF-8.
pub const MAX_DISPLAY_NAME_BYTES: usize = 256;
/// Maximum length of a `request_id`.
pub const MAX_REQUEST_ID_LEN: usize = 64;
/// Maximum number of recipients in `message.to`.
pub const MAX_RECIPIENTS: usize = 1024;

/// `resume` object of a join (signaling v1 §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeRequest {
    /// The participant to take over.
    pub participant_id: String,
    /// The single-use binding token from the last `join_response`.
    pub binding_token: String,
}

/// `join.capabilities` entry of clients that follow [`ServerMessage::Migrate`].
pub const CAPABILITY_MIGRATE: &str = "migrate";

/// Messages a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Join a meeting; must be the first message of a connection.
    Join {
        /// Meeting to join (validated by the shard, not by serde, to answer with a clear error).
        meeting_id: String,
        /// Meeting token (compact JWS).
        token: String,
        /// Name shown to the others.
        display_name: String,
        /// Echoed in `join_response` / `error`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        /// Take over a participant after a disconnect.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<ResumeRequest>,
        /// Optional features the client understands (extension; e.g. [`CAPABILITY_MIGRATE`]).
        /// Unknown entries are ignored.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        capabilities: Vec<String>,
    },
    /// Leave voluntarily.
    Leave {},
    /// Set own mute state.
    Mute {
        /// Audio muted.
        audio: bool,
        /// Video muted.
        video: bool,
    },
    /// Application signaling relayed to `to` or to everyone else.
    Message {
        /// Opaque JSON value.
        payload: serde_json::Value,
        /// Recipients; absent means every other participant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<Vec<String>>,
    },
    /// Liveness probe answered by `pong`.
    Ping {
        /// Echoed id.
        id: u64,
    },
    /// Host forces a participant's mute state.
    HostMute {
        /// Target participant.
        participant_id: String,
        /// Audio host-muted.
        audio: bool,
        /// Video host-muted.
        video: bool,
    },
    /// Host removes a participant.
    Kick {
        /// Target participant.
        participant_id: String,
    },
    /// Host ends the meeting for everyone.
    EndMeeting {},
    /// Any `type` this version does not know (answered with `invalid_request`).
    #[serde(other)]
    Unknown,
}

impl ClientMessage {
    /// A short static name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Join { .. } => "join",
            ClientMessage::Leave {} => "leave",
            ClientMessage::Mute { .. } => "mute",
            ClientMessage::Message { .. } => "message",
            ClientMessage::Ping { .. } => "ping",
            ClientMessage::HostMute { .. } => "host_mute",
            ClientMessage::Kick { .. } => "kick",
            ClientMessage::EndMeeting {} => "end_meeting",
            ClientMessage::Unknown => "unknown",
        }
    }
}

/// A participant's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// May use host-only actions.
    Host,
    /// Regular participant.
    Participant,
}

/// Participant object of the roster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// Participant id.
    pub participant_id: String,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Self or host audio mute.
    pub audio_muted: bool,
    /// Self or host video mute.
    pub video_muted: bool,
    /// Unix epoch milliseconds of the join.
    pub joined_at_ms: u64,
}

/// A media handler assigned to the meeting by the GC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaHandler {
    /// Media handler id.
    pub id: String,
    /// Its URL.
    pub url: String,
}

/// Why a participant left (in `participant_left`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// Sent `leave`.
    Voluntary,
    /// Kicked by a host.
    Kicked,
    /// Disconnected by the server (slow consumer, flooding).
    ConnectionLost,
    /// Did not come back within the resume window.
    Timeout,
    /// The meeting ended.
    MeetingEnded,
}

/// Why a meeting ended for a participant (in `meeting_ended`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// A host sent `end_meeting`.
    EndedByHost,
    /// An operator ended it through the admin API.
    EndedByAdmin,
    /// This participant was kicked.
    Kicked,
    /// The controller is draining.
    ControllerDraining,
    /// It stayed empty past the empty-meeting timeout.
    EmptyTimeout,
}

impl EndReason {
    /// The wire string of this reason.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::EndedByHost => "ended_by_host",
            EndReason::EndedByAdmin => "ended_by_admin",
            EndReason::Kicked => "kicked",
            EndReason::ControllerDraining => "controller_draining",
            EndReason::EmptyTimeout => "empty_timeout",
        }
    }
}

/// Error codes of signaling v1 §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed or unexpected message.
    InvalidRequest,
    /// Token or binding token rejected.
    Unauthorized,
    /// Host-only action by a participant.
    Forbidden,
    /// Unknown meeting or participant.
    NotFound,
    /// Conflicting state (e.g. already joined).
    Conflict,
    /// Meeting full, controller full or draining.
    CapacityExceeded,
    /// Per-connection rate limit hit.
    RateLimited,
    /// Server fault.
    Internal,
}

impl ErrorCode {
    /// The wire string of this code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::CapacityExceeded => "capacity_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Messages the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Successful join.
    JoinResponse {
        /// The joiner's id.
        participant_id: String,
        /// The meeting.
        meeting_id: String,
        /// The joiner's role.
        role: Role,
        /// Everyone else in the meeting.
        participants: Vec<ParticipantInfo>,
        /// Media handlers assigned by the GC (possibly empty).
        media_handlers: Vec<MediaHandler>,
        /// Opaque token for `resume`.
        binding_token: String,
        /// How long a dropped participant is kept for resume.
        resume_window_ms: u64,
        /// Echo of the join's `request_id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// Someone joined.
    ParticipantJoined {
        /// Who.
        participant: ParticipantInfo,
    },
    /// Someone left.
    ParticipantLeft {
        /// Who.
        participant_id: String,
        /// Why.
        reason: LeaveReason,
    },
    /// Someone's mute state changed.
    MuteUpdate {
        /// Who.
        participant_id: String,
        /// Effective audio mute (self or host).
        audio_muted: bool,
        /// Effective video mute (self or host).
        video_muted: bool,
        /// Audio muted by a host.
        audio_host_muted: bool,
        /// Video muted by a host.
        video_host_muted: bool,
    },
    /// Relayed application message.
    Message {
        /// Sender.
        from: String,
        /// Opaque payload.
        payload: serde_json::Value,
    },
    /// Answer to `ping`.
    Pong {
        /// Echoed id.
        id: u64,
    },
    /// The meeting ended for this participant.
    MeetingEnded {
        /// Why.
        reason: EndReason,
    },
    /// Extension: the meeting moves to another controller. The client connects to the target
    /// and sends `join` with `resume{participant_id, binding_token}` from this message. Sent only
    /// to clients whose `join` listed [`CAPABILITY_MIGRATE`]; the connection is closed (`0x0`)
    /// right after.
    Migrate {
        /// The meeting.
        meeting_id: String,
        /// The participant (unchanged at the target).
        participant_id: String,
        /// Target controller id.
        controller_id: String,
        /// Target QUIC endpoint (`host:port`) for native clients.
        quic_endpoint: String,
        /// Target WebTransport URL for browsers.
        webtransport_url: String,
        /// Single-use binding token the target accepts for this participant.
        binding_token: String,
        /// How long the target keeps the participant's slot.
        resume_window_ms: u64,
        /// How many messages of this connection (its `join` included) were handled here —
        /// delivered, answered or refused with an `error` — in the order sent. Any later
        /// message was not handled: the client sends it again at the target.
        messages_handled: u64,
    },
    /// A request failed.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human text, no internals.
        message: String,
        /// Echo of the failing request's `request_id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
}

impl ServerMessage {
    /// Builds an `error` message.
    pub fn error(code: ErrorCode, message: impl Into<String>, request_id: Option<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
            request_id,
        }
    }
}
