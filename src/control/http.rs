//! The control HTTP server (hyper 1, HTTP/1.1) and its routes (control plane v1 §2–§3).
//!
//! | path | auth | answer |
//! |---|---|---|
//! | `GET /health`, `GET /ready`, `GET /metrics` | none | see `docs/control-plane.md` |
//! | `POST /internal/v1/meetings` | GC inbound token | assignment |
//! | `/admin/*` | admin token | admin API; 404 when no admin token is configured |
//!
//! Every body is JSON (except `/metrics`); request bodies are capped at [`MAX_BODY`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::admission::{ConnKey, Refusal};
use super::shards::{self, ShardView};
use super::{auth, blocking, metrics, DrainSource, Shared};
use crate::core::ids::MeetingId;
use crate::core::protocol::{EndReason, MediaHandler};
use crate::core::shard::AssignOutcome;
use crate::runtime::link::{LinkError, ShardReply, ShardRequest, ACTOR_TYPES};

/// Largest accepted request body.
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// Requests that may wait on shards or the GC at once (`/metrics`, `/admin/*`, assignments);
/// more answer `503 busy`. `/health` and `/ready` never wait and are not counted. Bounding these
/// bounds the connections that cannot be evicted (see `admission`).
pub(crate) const MAX_WAITING_REQUESTS: usize = 32;
/// Media handlers per assignment.
pub(crate) const MAX_MEDIA_HANDLERS: usize = 16;
/// Length of a media handler id.
const MAX_HANDLER_ID_LEN: usize = 128;
/// Length of a media handler URL.
const MAX_HANDLER_URL_LEN: usize = 2048;

type Resp = Response<Full<Bytes>>;

/// Accepts connections until the task is aborted. Admission (table, per-address share,
/// eviction of idle connections) is `admission`'s; this loop carries it out.
pub(crate) async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let summaries = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(shared.timing.refusal_log_interval).await;
                shared.flush_refusal_log();
            }
        })
    };
    // Aborting this task (shutdown) also stops the summary task.
    let _summaries = AbortOnDrop(summaries.abort_handle());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::debug!(error = %e, "control accept failed");
                shared.refused(Refusal::AcceptError);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (admitted, evicted) = shared.admission().admit(peer.ip(), Instant::now());
        for ev in evicted {
            if let Some(h) = ev.handle {
                h.abort();
            }
            shared.refused(ev.reason);
        }
        let key = match admitted {
            Ok(k) => k,
            Err(reason) => {
                shared.refused(reason);
                continue; // dropping the stream closes it
            }
        };
        let task = tokio::spawn(serve(Arc::clone(&shared), stream, peer, key));
        shared.admission().attach(key, task.abort_handle());
        // Let the new connection read its request before the next accept: a flood's queued
        // connections are then admitted one at a time behind it, so a probe is served before
        // any of them could evict it.
        tokio::task::yield_now().await;
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Releases a connection's table entry when its task ends or is aborted.
struct Admitted {
    shared: Arc<Shared>,
    key: ConnKey,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.shared.admission().release(self.key);
    }
}

/// Marks a connection busy for the life of one request handler.
struct InRequest {
    shared: Arc<Shared>,
    key: ConnKey,
}

impl InRequest {
    fn begin(shared: Arc<Shared>, key: ConnKey) -> Self {
        shared.admission().begin_request(key);
        Self { shared, key }
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.shared
            .admission()
            .end_request(self.key, Instant::now());
    }
}

/// Serves one admitted connection: HTTP/1.1 with keep-alive, closed if its first request has
/// not arrived within the first-request deadline.
async fn serve(shared: Arc<Shared>, stream: tokio::net::TcpStream, peer: SocketAddr, key: ConnKey) {
    let _admitted = Admitted {
        shared: Arc::clone(&shared),
        key,
    };
    let header_timeout = shared.timing.http_header_timeout;
    let first_deadline = shared.timing.http_first_request_timeout;
    let svc_shared = Arc::clone(&shared);
    let svc = service_fn(move |req| {
        let shared = Arc::clone(&svc_shared);
        async move {
            let _busy = InRequest::begin(Arc::clone(&shared), key);
            handle(shared, req).await
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let first_request = async {
        tokio::time::sleep(first_deadline).await;
        if shared.admission().started(key) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = &mut conn => {
            if let Err(e) = r {
                tracing::debug!(peer = %peer, error = %e, "control connection ended with an error");
            }
        }
        () = first_request => {
            shared.refused(Refusal::FirstRequestTimeout);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Response helpers
// ------------------------------------------------------------------------------------------

pub(super) fn json_resp(status: StatusCode, body: &impl Serialize) -> Resp {
    let mut bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub(super) fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Resp {
    json_resp(
        status,
        &json!({ "error": code, "message": message.to_string() }),
    )
}

fn not_found() -> Resp {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("use {allow}"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

fn unauthorized(realm: &'static str) -> Resp {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or wrong bearer token",
    );
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_str(&format!("Bearer realm=\"{realm}\""))
            .unwrap_or(HeaderValue::from_static("Bearer")),
    );
    r
}

fn shard_unavailable(shard: usize, e: LinkError) -> Resp {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "shard_unavailable",
        format!("shard {shard}: {e}"),
    )
}

fn internal() -> Resp {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
}

fn authorization(req: &Request<Incoming>) -> Option<&[u8]> {
    req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes)
}

// ------------------------------------------------------------------------------------------
// Routing
// ------------------------------------------------------------------------------------------

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    // Migration imports carry a whole meeting: their own body limit, checked there.
    if let Some(id) = super::migration::import_path(req.uri().path()) {
        let id = id.to_owned();
        return Ok(super::migration::import(shared, req, id).await);
    }
    let declared_len = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > MAX_BODY as u64) {
        return Ok(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("bodies are limited to {MAX_BODY} bytes"),
        ));
    }
    let path = req.uri().path().to_owned();
    // Everything but the probes may wait on shards or the GC: bounded, so waiting requests
    // can never hold the connection table (the probes answer from memory).
    let gate = Arc::clone(&shared);
    let _waiting = match path.as_str() {
        "/health" | "/ready" => None,
        _ => match gate.waiting.try_acquire() {
            Ok(p) => Some(p),
            Err(_) => {
                shared.refused(Refusal::Busy);
                let mut r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "too many control requests in progress; retry shortly",
                );
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                return Ok(r);
            }
        },
    };
    let resp = match path.as_str() {
        "/health" => match *req.method() {
            Method::GET => health(&shared),
            _ => method_not_allowed("GET"),
        },
        "/ready" => match *req.method() {
            Method::GET => ready(&shared),
            _ => method_not_allowed("GET"),
        },
        "/metrics" => match *req.method() {
            Method::GET => metrics_page(shared).await,
            _ => method_not_allowed("GET"),
        },
        "/internal/v1/meetings" => assign(shared, req).await,
        p if p == "/admin" || p.starts_with("/admin/") => admin(shared, req, &path).await,
        _ => not_found(),
    };
    Ok(resp)
}

fn health(shared: &Shared) -> Resp {
    let stuck = shared.pool.stuck(shared.timing.health_stale_after);
    if stuck.is_empty() {
        return json_resp(
            StatusCode::OK,
            &json!({ "status": "ok", "shards": shared.pool.len() }),
        );
    }
    let names: Vec<String> = stuck
        .iter()
        .map(|(s, d)| format!("shard {s} silent for {:.1}s", d.as_secs_f64()))
        .collect();
    tracing::warn!(stuck = ?names, "liveness failing");
    json_resp(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({
            "status": "stuck",
            "stuck_shards": stuck.iter().map(|(s, d)| json!({ "shard": s, "silent_ms": d.as_millis() as u64 })).collect::<Vec<_>>(),
            "message": names.join("; "),
        }),
    )
}

fn ready(shared: &Shared) -> Resp {
    let not_ready = |reason: &str, extra: serde_json::Value| {
        let mut body = json!({ "ready": false, "reason": reason });
        if let (Some(o), serde_json::Value::Object(e)) = (body.as_object_mut(), extra) {
            o.extend(e);
        }
        json_resp(StatusCode::SERVICE_UNAVAILABLE, &body)
    };
    if shared.draining.load(Ordering::SeqCst) {
        return not_ready("draining", json!({}));
    }
    let silent: Vec<u16> = shared
        .pool
        .views()
        .iter()
        .filter(|v| !v.answered_within(shared.timing.health_stale_after))
        .map(|v| v.shard)
        .collect();
    if !silent.is_empty() {
        return not_ready("shards_not_answering", json!({ "shards": silent }));
    }
    if shared.gc_mode() && !shared.registered.load(Ordering::SeqCst) {
        return not_ready("not_registered", json!({}));
    }
    let mode = if shared.gc_mode() { "gc" } else { "standalone" };
    json_resp(StatusCode::OK, &json!({ "ready": true, "mode": mode }))
}

async fn metrics_page(shared: Arc<Shared>) -> Resp {
    let s = Arc::clone(&shared);
    let Some(text) = blocking(move || {
        s.pool.refresh(s.timing.snapshot_timeout);
        s.metrics.encode()
    })
    .await
    else {
        return internal();
    };
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    r
}

// ------------------------------------------------------------------------------------------
// GC assignment
// ------------------------------------------------------------------------------------------

/// `POST /internal/v1/meetings` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    meeting_id: String,
    media_handlers: Vec<HandlerBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandlerBody {
    id: String,
    url: String,
}

/// Validates an assignment body.
fn parse_assignment(bytes: &[u8]) -> Result<(MeetingId, Vec<MediaHandler>), String> {
    let body: AssignBody =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid body: {e}"))?;
    let id = MeetingId::parse(&body.meeting_id).map_err(|e| e.to_string())?;
    if body.media_handlers.len() > MAX_MEDIA_HANDLERS {
        return Err(format!("at most {MAX_MEDIA_HANDLERS} media_handlers"));
    }
    let mut handlers: Vec<MediaHandler> = Vec::with_capacity(body.media_handlers.len());
    for (i, h) in body.media_handlers.into_iter().enumerate() {
        let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        if h.id.is_empty() || h.id.len() > MAX_HANDLER_ID_LEN || !printable(&h.id) {
            return Err(format!(
                "media_handlers[{i}].id must be 1..={MAX_HANDLER_ID_LEN} printable ASCII characters"
            ));
        }
        if h.url.len() > MAX_HANDLER_URL_LEN || !printable(&h.url) || !has_scheme_and_host(&h.url) {
            return Err(format!(
                "media_handlers[{i}].url must be an absolute URL (scheme://host...) of at most {MAX_HANDLER_URL_LEN} characters"
            ));
        }
        if handlers.iter().any(|x| x.id == h.id) {
            return Err(format!("media_handlers[{i}].id is a duplicate"));
        }
        handlers.push(MediaHandler {
            id: h.id,
            url: h.url,
        });
    }
    Ok((id, handlers))
}

fn has_scheme_and_host(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && rest
            .split(['/', '?', '#'])
            .next()
            .is_some_and(|host| !host.is_empty())
}

/// The assignment decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Accepted(u16),
    AtCapacity,
    Draining,
    Unhealthy,
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Resp> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("bodies are limited to {MAX_BODY} bytes"),
        )),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("cannot read body: {e}"),
        )),
    }
}

async fn assign(shared: Arc<Shared>, req: Request<Incoming>) -> Resp {
    let Some(token) = shared.cfg.gc_inbound_token.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "GC assignments are disabled (no inbound token configured)",
        );
    };
    if req.method() != Method::POST {
        return method_not_allowed("POST");
    }
    if !auth::authorized(authorization(&req), &token) {
        return unauthorized("mc-internal");
    }
    let bytes = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (meeting_id, handlers) = match parse_assignment(&bytes) {
        Ok(x) => x,
        Err(msg) => return error(StatusCode::BAD_REQUEST, "invalid_request", msg),
    };
    let _serial = shared.assign_lock.lock().await;
    let s = Arc::clone(&shared);
    let id = meeting_id.clone();
    let Some(decision) = blocking(move || decide_assignment(&s, id, handlers)).await else {
        return internal();
    };
    match decision {
        Decision::Accepted(shard) => {
            tracing::info!(meeting = %meeting_id, shard, "meeting assigned");
            json_resp(StatusCode::OK, &json!({ "accepted": true, "shard": shard }))
        }
        rejected => {
            let (status, reason) = match rejected {
                Decision::AtCapacity => (StatusCode::CONFLICT, "at_capacity"),
                Decision::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "unhealthy"),
            };
            tracing::info!(meeting = %meeting_id, reason, "assignment rejected");
            json_resp(
                status,
                &json!({ "accepted": false, "rejection_reason": reason }),
            )
        }
    }
}

/// Blocking part of an assignment: controller-wide checks, then the owning shard decides.
/// A meeting that already exists is accepted whatever the state, so repeating an assignment
/// always gets the same answer.
fn decide_assignment(shared: &Shared, id: MeetingId, handlers: Vec<MediaHandler>) -> Decision {
    let shard = shared.router.shard_for(&id);
    let idx = usize::from(shard.0);
    let t = &shared.timing;
    let views = shared.pool.refresh(t.snapshot_timeout);
    if !views
        .get(idx)
        .is_some_and(|v| v.answered_within(t.health_stale_after))
    {
        return Decision::Unhealthy;
    }
    let draining = shared.draining.load(Ordering::SeqCst);
    if draining || shards::totals(&views).meetings >= shared.cfg.max_meetings {
        match shared.pool.request(
            idx,
            ShardRequest::ShowMeeting(id.clone()),
            t.request_timeout,
        ) {
            Ok(ShardReply::Meeting(Some(_))) => {}
            Ok(ShardReply::Meeting(None)) if draining => return Decision::Draining,
            Ok(ShardReply::Meeting(None)) => return Decision::AtCapacity,
            Ok(_) | Err(_) => return Decision::Unhealthy,
        }
    }
    match shared.pool.request(
        idx,
        ShardRequest::Assign {
            meeting_id: id,
            media_handlers: handlers,
        },
        t.request_timeout,
    ) {
        Ok(ShardReply::Assigned(AssignOutcome::Accepted)) => Decision::Accepted(shard.0),
        Ok(ShardReply::Assigned(AssignOutcome::AtCapacity)) => Decision::AtCapacity,
        Ok(ShardReply::Assigned(AssignOutcome::Draining)) => Decision::Draining,
        Ok(other) => {
            tracing::error!(shard = idx, reply = ?other, "unexpected answer to an assignment");
            Decision::Unhealthy
        }
        Err(e) => {
            tracing::warn!(shard = idx, error = %e, "assignment not answered");
            Decision::Unhealthy
        }
    }
}

// ------------------------------------------------------------------------------------------
// Admin API
// ------------------------------------------------------------------------------------------

async fn admin(shared: Arc<Shared>, req: Request<Incoming>, path: &str) -> Resp {
    let Some(token) = shared.cfg.admin_token.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "admin_disabled",
            "the admin API is disabled",
        );
    };
    if !auth::authorized(authorization(&req), &token) {
        return unauthorized("mc-admin");
    }
    let segments: Vec<&str> = path
        .trim_start_matches("/admin")
        .split('/')
        .skip(1)
        .collect();
    let method = req.method().clone();
    match (segments.as_slice(), method) {
        (["meetings"], Method::GET) => list_meetings(shared).await,
        (["meetings"], _) => method_not_allowed("GET"),
        (["meetings", id], m) if m == Method::GET || m == Method::DELETE => {
            let Ok(id) = MeetingId::parse(id) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "invalid meeting id",
                );
            };
            if m == Method::GET {
                show_meeting(shared, id).await
            } else {
                end_meeting(shared, id).await
            }
        }
        (["meetings", _], _) => method_not_allowed("GET, DELETE"),
        (["meetings", id, "migrate"], Method::POST) => {
            super::migration::admin_migrate(shared, req, id).await
        }
        (["meetings", _, "migrate"], _) => method_not_allowed("POST"),
        (["shards"], Method::GET) => shards(shared).await,
        (["shards"], _) => method_not_allowed("GET"),
        (["drain"], Method::POST) => {
            let s = Arc::clone(&shared);
            match blocking(move || s.begin_drain(DrainSource::Admin)).await {
                Some(source) => json_resp(
                    StatusCode::OK,
                    &json!({ "draining": true, "source": source_name(source) }),
                ),
                None => internal(),
            }
        }
        (["undrain"], Method::POST) => {
            let s = Arc::clone(&shared);
            match blocking(move || s.end_drain()).await {
                Some(Ok(changed)) => json_resp(
                    StatusCode::OK,
                    &json!({ "draining": false, "changed": changed }),
                ),
                Some(Err(_)) => error(
                    StatusCode::CONFLICT,
                    "signal_drain",
                    "a SIGTERM drain cannot be reverted; the process is shutting down",
                ),
                None => internal(),
            }
        }
        (["reregister"], Method::POST) => {
            if !shared.gc_mode() {
                return error(StatusCode::CONFLICT, "standalone", "no GC is configured");
            }
            let _ = shared.gc_tx.send(super::gc::GcCommand::Reregister);
            json_resp(StatusCode::ACCEPTED, &json!({ "reregistering": true }))
        }
        (["drain"] | ["undrain"] | ["reregister"], _) => method_not_allowed("POST"),
        _ => not_found(),
    }
}

fn source_name(s: DrainSource) -> &'static str {
    match s {
        DrainSource::Admin => "admin",
        DrainSource::Signal => "signal",
    }
}

async fn list_meetings(shared: Arc<Shared>) -> Resp {
    let s = Arc::clone(&shared);
    let Some(replies) = blocking(move || {
        s.pool
            .fan_out(&ShardRequest::ListMeetings, s.timing.request_timeout)
    })
    .await
    else {
        return internal();
    };
    let mut meetings = Vec::new();
    let mut missing = Vec::new();
    for (i, r) in replies.into_iter().enumerate() {
        match r {
            Ok(ShardReply::Meetings(m)) => meetings.extend(m),
            _ => missing.push(i),
        }
    }
    meetings.sort_by(|a, b| a.meeting_id.cmp(&b.meeting_id));
    json_resp(
        StatusCode::OK,
        &json!({ "count": meetings.len(), "meetings": meetings, "missing_shards": missing }),
    )
}

async fn show_meeting(shared: Arc<Shared>, id: MeetingId) -> Resp {
    let idx = usize::from(shared.router.shard_for(&id).0);
    let s = Arc::clone(&shared);
    let reply = blocking(move || {
        s.pool
            .request(idx, ShardRequest::ShowMeeting(id), s.timing.request_timeout)
    })
    .await;
    match reply {
        Some(Ok(ShardReply::Meeting(Some(m)))) => json_resp(StatusCode::OK, &m),
        Some(Ok(ShardReply::Meeting(None))) => error(
            StatusCode::NOT_FOUND,
            "meeting_not_found",
            "no such meeting",
        ),
        Some(Err(e)) => shard_unavailable(idx, e),
        _ => internal(),
    }
}

async fn end_meeting(shared: Arc<Shared>, id: MeetingId) -> Resp {
    let idx = usize::from(shared.router.shard_for(&id).0);
    let s = Arc::clone(&shared);
    let req_id = id.clone();
    let reply = blocking(move || {
        s.pool.request(
            idx,
            ShardRequest::EndMeeting(req_id, EndReason::EndedByAdmin),
            s.timing.request_timeout,
        )
    })
    .await;
    match reply {
        Some(Ok(ShardReply::Ended(true))) => {
            tracing::info!(meeting = %id, shard = idx, "meeting ended by admin");
            json_resp(
                StatusCode::OK,
                &json!({ "ended": true, "meeting_id": id, "shard": idx, "reason": EndReason::EndedByAdmin.as_str() }),
            )
        }
        Some(Ok(ShardReply::Ended(false))) => error(
            StatusCode::NOT_FOUND,
            "meeting_not_found",
            "no such meeting",
        ),
        Some(Err(e)) => shard_unavailable(idx, e),
        _ => internal(),
    }
}

fn shard_json(v: &ShardView, stale_after: Duration) -> serde_json::Value {
    let s = &v.snapshot;
    let mut depth = serde_json::Map::new();
    let mut processing = serde_json::Map::new();
    for (i, at) in ACTOR_TYPES.iter().enumerate() {
        let d = if i == 0 {
            v.controller_depth()
        } else {
            s.mailbox_depth[i]
        };
        depth.insert((*at).to_owned(), json!(d));
        let l = &s.processing[i];
        processing.insert(
            (*at).to_owned(),
            json!({ "p50_ms": l.p50_ms, "p99_ms": l.p99_ms, "count": l.count }),
        );
    }
    json!({
        "shard": v.shard,
        "cpu": v.cpu,
        "up": v.answered_within(stale_after),
        "silent_ms": v.silent_for.map(|d| d.as_millis() as u64),
        "draining": s.draining,
        "meetings": s.meetings,
        "connections": s.connections,
        "participants": s.participants,
        "mailbox_depth": depth,
        "processing": processing,
        "datagrams_received": s.datagrams_received,
        "datagrams_forwarded": s.datagrams_forwarded,
        "udp_receive_drops": s.udp_receive_drops,
        "handoffs_out": s.handoffs_out,
        "handoffs_in": s.handoffs_in,
        "handshakes": s.handshakes,
        "cpu_seconds": s.cpu_seconds,
    })
}

async fn shards(shared: Arc<Shared>) -> Resp {
    let s = Arc::clone(&shared);
    let Some(views) = blocking(move || s.pool.refresh(s.timing.snapshot_timeout)).await else {
        return internal();
    };
    let stale = shared.timing.health_stale_after;
    json_resp(
        StatusCode::OK,
        &json!({
            "draining": shared.draining.load(Ordering::SeqCst),
            "shards": views.iter().map(|v| shard_json(v, stale)).collect::<Vec<_>>(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_validation() {
        let ok = br#"{"meeting_id":"m-1","media_handlers":[{"id":"mh1","url":"https://mh1.example:443/x"}]}"#;
        let (id, h) = parse_assignment(ok).unwrap();
        assert_eq!(id.as_str(), "m-1");
        assert_eq!(h.len(), 1);
        assert!(parse_assignment(br#"{"meeting_id":"m","media_handlers":[]}"#).is_ok());
        for bad in [
            &br#"{"meeting_id":"a b","media_handlers":[]}"#[..],
            br#"{"meeting_id":"","media_handlers":[]}"#,
            br#"{"meeting_id":"m"}"#,
            br#"{"meeting_id":"m","media_handlers":[],"extra":1}"#,
            br#"{"meeting_id":"m","media_handlers":[{"id":"x","url":"not a url"}]}"#,
            br#"{"meeting_id":"m","media_handlers":[{"id":"x","url":"https://"}]}"#,
            br#"{"meeting_id":"m","media_handlers":[{"id":"","url":"https://h"}]}"#,
            br#"{"meeting_id":"m","media_handlers":[{"id":"x","url":"https://h"},{"id":"x","url":"https://g"}]}"#,
            br#"{"meeting_id":5,"media_handlers":[]}"#,
            b"not json",
        ] {
            assert!(parse_assignment(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let many: Vec<String> = (0..=MAX_MEDIA_HANDLERS)
            .map(|i| format!(r#"{{"id":"h{i}","url":"quic://h{i}:1"}}"#))
            .collect();
        let body = format!(
            r#"{{"meeting_id":"m","media_handlers":[{}]}}"#,
            many.join(",")
        );
        assert!(parse_assignment(body.as_bytes()).is_err());
    }
}
