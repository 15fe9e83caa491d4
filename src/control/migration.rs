//! Live-meeting migration, control side: the sequence export → GC target → import at the
//! target → commit (or abort) for one meeting, the drain hook that moves every meeting, the
//! import endpoint (`POST /internal/v1/meetings/{id}/import`) and the admin endpoint
//! (`POST /admin/meetings/{id}/migrate`). See `docs/control-plane.md` § "Meeting migration".
//!
//! Everything blocking here runs on the control runtime's blocking pool, never on a shard.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::http::{error as err, json_resp};
use super::migrate_wire::{self, CallError, MigrateRequest, MigrateTarget};
use super::{auth, blocking, shards, Shared};
use crate::core::ids::MeetingId;
use crate::core::migration::{
    ExportError, ImportError, ImportOutcome, MeetingExport, MigrationTarget,
};
use crate::runtime::link::{ShardReply, ShardRequest};

/// Largest import body: a 1,000-participant meeting with maximal display names fits.
pub(crate) const MAX_IMPORT_BODY: usize = 2 * 1024 * 1024;

/// Reasons of `mc_migrations_failed_total`, pre-created at zero.
pub(crate) const FAILURE_REASONS: [&str; 10] = [
    "not_configured",
    "not_found",
    "in_progress",
    "clients_unsupported",
    "participants_returning",
    "gc_refused",
    "gc_unavailable",
    "import_rejected",
    "import_unavailable",
    "shard_unavailable",
];

/// Why a meeting did not move. In every case it stays (and, on SIGTERM, ends at the drain
/// deadline as before).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Failure {
    /// No GC, GC token or inbound token configured.
    #[error("migration needs --gc-url, --gc-token-file and --gc-inbound-token-file")]
    NotConfigured,
    /// The shard refused the export.
    #[error("{0}")]
    Export(ExportError),
    /// The GC refused or could not be reached.
    #[error("GC {0}")]
    Gc(CallError),
    /// The target refused the import or could not be reached.
    #[error("import {0}")]
    Import(CallError),
    /// The owning shard did not answer.
    #[error("shard did not answer: {0}")]
    Shard(String),
}

impl Failure {
    /// Label of `mc_migrations_failed_total`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Failure::NotConfigured => "not_configured",
            Failure::Export(e) => e.reason(),
            Failure::Gc(CallError::Refused { .. }) => "gc_refused",
            Failure::Gc(CallError::Unavailable(_)) => "gc_unavailable",
            Failure::Import(CallError::Refused { .. }) => "import_rejected",
            Failure::Import(CallError::Unavailable(_)) => "import_unavailable",
            Failure::Shard(_) => "shard_unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Failure::NotConfigured
            | Failure::Export(ExportError::ClientsUnsupported | ExportError::Returning) => {
                StatusCode::CONFLICT
            }
            Failure::Export(ExportError::NotFound) => StatusCode::NOT_FOUND,
            Failure::Export(ExportError::InProgress) => StatusCode::CONFLICT,
            Failure::Gc(CallError::Refused { .. }) | Failure::Import(CallError::Refused { .. }) => {
                StatusCode::CONFLICT
            }
            Failure::Gc(_) | Failure::Import(_) => StatusCode::BAD_GATEWAY,
            Failure::Shard(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A completed move.
#[derive(Debug, Clone)]
pub(crate) struct Moved {
    pub target: MigrateTarget,
    pub participants: usize,
    pub notified: usize,
    pub took: Duration,
}

static MIGRATION_SEQ: AtomicU64 = AtomicU64::new(0);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Moves one meeting to the controller the GC names (or `to`). Blocking. Counted and logged.
pub(crate) fn migrate_meeting(
    shared: &Shared,
    id: &MeetingId,
    to: Option<String>,
) -> Result<Moved, Failure> {
    shared.metrics.migration_started();
    let result = run(shared, id, to, Instant::now());
    record(shared, id, &result);
    result
}

/// Counts and logs one migration's outcome (`started` is counted by the caller).
fn record(shared: &Shared, id: &MeetingId, result: &Result<Moved, Failure>) {
    match result {
        Ok(m) => {
            shared.metrics.migration_completed(m.took);
            tracing::info!(meeting = %id, target = %m.target.target_controller_id, participants = m.participants, notified = m.notified, took_ms = m.took.as_millis() as u64, "meeting migrated");
        }
        Err(f) => {
            shared.metrics.migration_failed(f.reason());
            tracing::warn!(meeting = %id, reason = f.reason(), error = %f, "meeting not migrated; it stays here");
        }
    }
}

fn run(
    shared: &Shared,
    id: &MeetingId,
    to: Option<String>,
    started: Instant,
) -> Result<Moved, Failure> {
    let cfg = &shared.cfg;
    let (Some(gc_url), Some(gc_token), Some(inbound)) = (
        cfg.gc_url.as_deref(),
        cfg.gc_token.as_deref(),
        cfg.gc_inbound_token.as_deref(),
    ) else {
        return Err(Failure::NotConfigured);
    };
    let idx = usize::from(shared.router.shard_for(id).0);
    let timeout = shared.timing.request_timeout;
    let migration_id = format!(
        "{}:{}:{}:{}",
        cfg.mc_id,
        id,
        unix_ms(),
        MIGRATION_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let export = match shared.pool.request(
        idx,
        ShardRequest::Export {
            meeting_id: id.clone(),
            migration_id,
            source: cfg.mc_id.clone(),
        },
        timeout,
    ) {
        Ok(ShardReply::Exported(Ok(e))) => e,
        Ok(ShardReply::Exported(Err(e))) => return Err(Failure::Export(e)),
        Ok(other) => return Err(Failure::Shard(format!("unexpected answer {other:?}"))),
        Err(e) => {
            // The export may still happen after the timeout: make sure it is undone.
            abort(shared, idx, id);
            return Err(Failure::Shard(e.to_string()));
        }
    };
    let participants = export.participants.len();
    let req = MigrateRequest {
        controller_id: cfg.mc_id.clone(),
        participants,
        to,
    };
    let target =
        match migrate_wire::request_target(gc_url, gc_token, id.as_str(), &req, cfg.gc_timeout) {
            Ok(t) => t,
            Err(e) => {
                abort(shared, idx, id);
                return Err(Failure::Gc(e));
            }
        };
    let import_timeout = cfg.gc_timeout.max(timeout);
    let mut imported =
        migrate_wire::send_import(&target.control_url, inbound, &export, import_timeout);
    if matches!(imported, Err(CallError::Unavailable(_))) {
        // Imports are idempotent per migration id: one retry covers a lost answer.
        imported = migrate_wire::send_import(&target.control_url, inbound, &export, import_timeout);
    }
    if let Err(e) = imported {
        abort(shared, idx, id);
        return Err(Failure::Import(e));
    }
    let notified = match shared.pool.request(
        idx,
        ShardRequest::CommitExport(
            id.clone(),
            MigrationTarget {
                controller_id: target.target_controller_id.clone(),
                quic_endpoint: target.quic_endpoint.clone(),
                webtransport_url: target.webtransport_url.clone(),
            },
        ),
        timeout,
    ) {
        Ok(ShardReply::Committed(Some(n))) => n,
        Ok(other) => return Err(Failure::Shard(format!("unexpected answer {other:?}"))),
        Err(e) => return Err(Failure::Shard(e.to_string())),
    };
    Ok(Moved {
        target,
        participants,
        notified,
        took: started.elapsed(),
    })
}

fn abort(shared: &Shared, idx: usize, id: &MeetingId) {
    if let Err(e) = shared.pool.request(
        idx,
        ShardRequest::AbortExport(id.clone()),
        shared.timing.request_timeout,
    ) {
        tracing::warn!(meeting = %id, shard = idx, error = %e, "export abort not answered");
    }
}

/// True when this controller is configured to move meetings (GC mode with both tokens).
pub(crate) fn enabled(shared: &Shared) -> bool {
    let c = &shared.cfg;
    c.gc_url.is_some() && c.gc_token.is_some() && c.gc_inbound_token.is_some()
}

/// SIGTERM drain: tries to move every meeting until `deadline`. Meetings that do not move stay
/// and end at the drain deadline as before. A meeting whose participants of an earlier move are
/// still on their way here is tried again every `drain_poll` until they are back (or their
/// resume window ended): moving it on earlier would strand them, since they know only this
/// controller. Returns (moved, stayed).
pub(crate) fn migrate_all(shared: &Shared, deadline: Instant) -> (usize, usize) {
    let mut ids = Vec::new();
    for r in shared
        .pool
        .fan_out(&ShardRequest::ListMeetings, shared.timing.request_timeout)
    {
        if let Ok(ShardReply::Meetings(ms)) = r {
            ids.extend(
                ms.into_iter()
                    .filter_map(|m| MeetingId::parse(&m.meeting_id).ok()),
            );
        }
    }
    let (mut moved, mut stayed) = (0, 0);
    let mut gc_down = false;
    loop {
        let mut waiting = Vec::new();
        for id in ids {
            if gc_down || Instant::now() >= deadline {
                stayed += 1;
                continue;
            }
            let result = run(shared, &id, None, Instant::now());
            if matches!(result, Err(Failure::Export(ExportError::Returning))) {
                // Not an attempt yet (nothing was exported): not counted until it gives up.
                waiting.push(id);
                continue;
            }
            shared.metrics.migration_started();
            record(shared, &id, &result);
            match result {
                Ok(_) => moved += 1,
                Err(Failure::Gc(CallError::Unavailable(_))) => {
                    // A GC that cannot be reached will not answer for the next meeting either:
                    // the rest stay rather than each waiting out the GC timeout.
                    stayed += 1;
                    gc_down = true;
                }
                Err(_) => stayed += 1,
            }
        }
        if waiting.is_empty() {
            break;
        }
        let now = Instant::now();
        if gc_down || now >= deadline {
            for id in &waiting {
                shared.metrics.migration_started();
                record(shared, id, &Err(Failure::Export(ExportError::Returning)));
            }
            stayed += waiting.len();
            break;
        }
        tracing::info!(
            meetings = waiting.len(),
            "drain: waiting for participants of earlier moves before moving their meetings on"
        );
        std::thread::sleep(shared.timing.drain_poll.min(deadline - now));
        ids = waiting;
    }
    tracing::info!(
        moved,
        stayed,
        "drain: meetings migrated to other controllers"
    );
    (moved, stayed)
}

// ------------------------------------------------------------------------------------------
// HTTP
// ------------------------------------------------------------------------------------------

type Resp = Response<Full<Bytes>>;

/// The meeting id of `/internal/v1/meetings/{id}/import`, if `path` is that.
pub(crate) fn import_path(path: &str) -> Option<&str> {
    path.strip_prefix("/internal/v1/meetings/")?
        .strip_suffix("/import")
}

/// `POST /internal/v1/meetings/{id}/import`.
pub(crate) async fn import(shared: Arc<Shared>, req: Request<Incoming>, raw_id: String) -> Resp {
    let Some(token) = shared.cfg.gc_inbound_token.clone() else {
        return err(
            StatusCode::NOT_FOUND,
            "not_found",
            "imports are disabled (no inbound token configured)",
        );
    };
    if req.method() != Method::POST {
        let mut r = err(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST",
        );
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    if !auth::authorized(
        req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes),
        &token,
    ) {
        let mut r = err(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        );
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"mc-internal\""),
        );
        return r;
    }
    let bytes = match Limited::new(req.into_body(), MAX_IMPORT_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return err(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("imports are limited to {MAX_IMPORT_BODY} bytes"),
            )
        }
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("cannot read body: {e}"),
            )
        }
    };
    let export: MeetingExport = match serde_json::from_slice(&bytes) {
        Ok(e) => e,
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("invalid body: {e}"),
            )
        }
    };
    let Ok(id) = MeetingId::parse(&raw_id) else {
        return err(
            StatusCode::BAD_REQUEST,
            "invalid",
            "invalid meeting id in the path",
        );
    };
    if export.meeting_id != id.as_str() {
        return err(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the path and body name different meetings",
        );
    }
    // Serialised with assignments so the controller-wide capacity check sees both.
    let _serial = shared.assign_lock.lock().await;
    let s = Arc::clone(&shared);
    let Some(answer) = blocking(move || import_blocking(&s, id, export)).await else {
        return err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        );
    };
    answer
}

fn import_blocking(shared: &Shared, id: MeetingId, export: MeetingExport) -> Resp {
    let idx = usize::from(shared.router.shard_for(&id).0);
    let t = &shared.timing;
    if shared.draining.load(Ordering::SeqCst) {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "controller is draining",
        );
    }
    let views = shared.pool.refresh(t.snapshot_timeout);
    if !views
        .get(idx)
        .is_some_and(|v| v.answered_within(t.health_stale_after))
    {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy",
            format!("shard {idx} is not answering"),
        );
    }
    let shards::Totals {
        meetings,
        participants,
        ..
    } = shards::totals(&views);
    let source = export.source_controller_id.clone();
    let n = export.participants.len();
    let full =
        meetings >= shared.cfg.max_meetings || participants + n > shared.cfg.max_participants;
    let reply = if full {
        // Still ask the shard: a repeated import of a meeting already here is answered again.
        match shared.pool.request(
            idx,
            ShardRequest::ShowMeeting(id.clone()),
            t.request_timeout,
        ) {
            Ok(ShardReply::Meeting(Some(_))) => shared.pool.request(
                idx,
                ShardRequest::Import(Box::new(export)),
                t.request_timeout,
            ),
            Ok(_) => {
                return err(
                    StatusCode::CONFLICT,
                    "at_capacity",
                    "controller is at capacity",
                )
            }
            Err(e) => return err(StatusCode::SERVICE_UNAVAILABLE, "unhealthy", e.to_string()),
        }
    } else {
        shared.pool.request(
            idx,
            ShardRequest::Import(Box::new(export)),
            t.request_timeout,
        )
    };
    match reply {
        Ok(ShardReply::Imported(Ok(outcome))) => {
            let repeated = outcome == ImportOutcome::Repeated;
            tracing::info!(meeting = %id, shard = idx, source = %source, participants = n, repeated, "meeting import accepted");
            json_resp(
                StatusCode::OK,
                &json!({ "imported": true, "shard": idx, "repeated": repeated }),
            )
        }
        Ok(ShardReply::Imported(Err(e))) => {
            tracing::warn!(meeting = %id, source = %source, reason = e.reason(), error = %e, "meeting import refused");
            let status = match e {
                ImportError::Invalid(_) => StatusCode::BAD_REQUEST,
                ImportError::SecretMismatch => StatusCode::FORBIDDEN,
                ImportError::Draining => StatusCode::SERVICE_UNAVAILABLE,
                ImportError::AtCapacity | ImportError::Conflict => StatusCode::CONFLICT,
            };
            err(status, e.reason(), &e)
        }
        Ok(other) => {
            tracing::error!(shard = idx, reply = ?other, "unexpected answer to an import");
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                "unhealthy",
                "unexpected shard answer",
            )
        }
        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, "unhealthy", e.to_string()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminMigrateBody {
    #[serde(default)]
    to: Option<String>,
}

/// `POST /admin/meetings/{id}/migrate` with an optional `{"to": "<controller id>"}` (auth is
/// checked by the caller).
pub(crate) async fn admin_migrate(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    raw_id: &str,
) -> Resp {
    let Ok(id) = MeetingId::parse(raw_id) else {
        return err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "invalid meeting id",
        );
    };
    let bytes = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return err(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "body too large or unreadable",
            )
        }
    };
    let body: AdminMigrateBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        AdminMigrateBody::default()
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(b) => b,
            Err(e) => {
                return err(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("invalid body: {e}"),
                )
            }
        }
    };
    if body
        .to
        .as_ref()
        .is_some_and(|t| t.is_empty() || t.len() > 256)
    {
        return err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`to` must be 1..=256 characters",
        );
    }
    let s = Arc::clone(&shared);
    let mid = id.clone();
    let Some(result) = blocking(move || migrate_meeting(&s, &mid, body.to)).await else {
        return err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        );
    };
    match result {
        Ok(m) => json_resp(
            StatusCode::OK,
            &json!({
                "migrated": true,
                "meeting_id": id,
                "target_controller_id": m.target.target_controller_id,
                "participants": m.participants,
                "participants_notified": m.notified,
                "took_ms": m.took.as_millis() as u64,
            }),
        ),
        Err(f) => {
            let code = match &f {
                Failure::Export(ExportError::NotFound) => "meeting_not_found",
                other => other.reason(),
            };
            err(f.status(), code, &f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_paths() {
        assert_eq!(import_path("/internal/v1/meetings/m-1/import"), Some("m-1"));
        assert_eq!(import_path("/internal/v1/meetings"), None);
        assert_eq!(import_path("/internal/v1/meetings/m/other"), None);
    }

    #[test]
    fn every_failure_has_a_seeded_reason() {
        let all = [
            Failure::NotConfigured,
            Failure::Export(ExportError::NotFound),
            Failure::Export(ExportError::InProgress),
            Failure::Export(ExportError::ClientsUnsupported),
            Failure::Export(ExportError::Returning),
            Failure::Gc(CallError::Refused {
                status: 409,
                reason: "no_target".into(),
            }),
            Failure::Gc(CallError::Unavailable("x".into())),
            Failure::Import(CallError::Refused {
                status: 409,
                reason: "at_capacity".into(),
            }),
            Failure::Import(CallError::Unavailable("x".into())),
            Failure::Shard("x".into()),
        ];
        for f in all {
            assert!(FAILURE_REASONS.contains(&f.reason()), "{f:?}");
        }
    }
}
