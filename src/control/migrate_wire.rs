//! Wire types and blocking HTTP calls of live-meeting migration (a control-plane extension,
//! `docs/control-plane.md` § "Meeting migration"):
//!
//! * `POST {gc}/api/v1/meetings/{id}/migrate` — the draining controller asks the GC where a
//!   meeting should go; the GC names a target controller or refuses;
//! * `POST {target}/internal/v1/meetings/{id}/import` — the draining controller hands the
//!   meeting's state to the target.
//!
//! Both calls are made from the control side (never a shard thread) with a short timeout.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::migration::MeetingExport;

/// `POST /api/v1/meetings/{id}/migrate` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// The controller the meeting leaves (never chosen as the target).
    pub controller_id: String,
    /// Participants of the meeting (the target must have room for them).
    pub participants: usize,
    /// Operator's choice of target (`mc admin migrate --to`); the GC refuses when that
    /// controller cannot take the meeting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// `200` answer of the GC: where the meeting goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateTarget {
    /// Target controller id.
    pub target_controller_id: String,
    /// Its control server (`http://host:port`), where the state is imported.
    pub control_url: String,
    /// Its QUIC endpoint (`host:port`), for native clients.
    pub quic_endpoint: String,
    /// Its WebTransport URL, for browsers.
    pub webtransport_url: String,
}

/// `409` answer of the GC, and the error body of a refused import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Machine-readable reason (`no_target`, `unknown_target`, `target_unavailable`, ...).
    pub error: String,
    /// Human text.
    #[serde(default)]
    pub message: String,
}

/// Why a call of the migration did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The other side answered with a refusal (a `4xx`/`5xx` with a reason).
    #[error("refused: {reason}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The `error` field of the answer (or `http_<status>`).
        reason: String,
    },
    /// The other side could not be reached or answered something unreadable.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl CallError {
    /// A short label for logs and metrics.
    pub fn reason(&self) -> &str {
        match self {
            CallError::Refused { reason, .. } => reason,
            CallError::Unavailable(_) => "unavailable",
        }
    }
}

/// `200` answer of an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportAccepted {
    /// Always true.
    pub imported: bool,
    /// The shard that holds the meeting now.
    pub shard: u16,
    /// True when the same migration had already been imported (a retry).
    #[serde(default)]
    pub repeated: bool,
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .user_agent(concat!("mc/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// Posts `body` with a bearer token; `(status, text)`.
fn post<T: Serialize>(
    url: &str,
    token: &str,
    body: &T,
    timeout: Duration,
) -> Result<(u16, String), CallError> {
    let mut resp = agent(timeout)
        .post(url)
        .header("Authorization", format!("Bearer {token}"))
        .send_json(body)
        .map_err(|e| CallError::Unavailable(e.to_string()))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .map_err(|e| CallError::Unavailable(format!("unreadable answer: {e}")))?;
    Ok((status, text))
}

fn refusal(status: u16, text: &str) -> CallError {
    let reason = serde_json::from_str::<Refusal>(text)
        .map(|r| r.error)
        .unwrap_or_else(|_| format!("http_{status}"));
    CallError::Refused { status, reason }
}

/// Asks the GC at `gc_url` where `meeting_id` should go.
pub fn request_target(
    gc_url: &str,
    gc_token: &str,
    meeting_id: &str,
    req: &MigrateRequest,
    timeout: Duration,
) -> Result<MigrateTarget, CallError> {
    let url = format!(
        "{}/api/v1/meetings/{meeting_id}/migrate",
        gc_url.trim_end_matches('/')
    );
    let (status, text) = post(&url, gc_token, req, timeout)?;
    if status != 200 {
        return Err(refusal(status, &text));
    }
    serde_json::from_str(&text)
        .map_err(|e| CallError::Unavailable(format!("unreadable migrate answer: {e}")))
}

/// Sends the meeting's state to the target controller's control server.
pub fn send_import(
    control_url: &str,
    token: &str,
    export: &MeetingExport,
    timeout: Duration,
) -> Result<ImportAccepted, CallError> {
    let url = format!(
        "{}/internal/v1/meetings/{}/import",
        control_url.trim_end_matches('/'),
        export.meeting_id
    );
    let (status, text) = post(&url, token, export, timeout)?;
    if status != 200 {
        return Err(refusal(status, &text));
    }
    serde_json::from_str(&text)
        .map_err(|e| CallError::Unavailable(format!("unreadable import answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_shape() {
        let r = MigrateRequest {
            controller_id: "mc-1".into(),
            participants: 3,
            to: None,
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"controller_id":"mc-1","participants":3})
        );
        assert!(serde_json::from_str::<MigrateRequest>(
            r#"{"controller_id":"a","participants":1,"bogus":1}"#
        )
        .is_err());
    }

    #[test]
    fn refusals_name_their_reason() {
        assert_eq!(
            refusal(409, r#"{"error":"no_target","message":"x"}"#).reason(),
            "no_target"
        );
        assert_eq!(refusal(502, "<html>").reason(), "http_502");
    }

    #[test]
    fn unreachable_gc_is_unavailable() {
        // Port 9 on loopback (discard) is closed in test environments.
        let e = request_target(
            "http://127.0.0.1:9",
            "t",
            "m",
            &MigrateRequest {
                controller_id: "a".into(),
                participants: 1,
                to: None,
            },
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(matches!(e, CallError::Unavailable(_)), "{e:?}");
    }
}
