//! A fake Global Controller for tests, the load generator and manual runs: a real HTTP server
//! speaking the GC side of control plane v1 §1 (register, heartbeat, meeting ended), recording
//! every request it receives, with faults switchable at runtime. It can also play the GC's
//! other role and assign meetings to a controller ([`FakeGc::assign`]).
//!
//! ```no_run
//! use mc_test_support::fake_gc::{Fault, FakeGc, FakeGcConfig};
//! let gc = FakeGc::start("127.0.0.1:0".parse().unwrap(), FakeGcConfig::default()).unwrap();
//! // ... point a controller at gc.url() ...
//! gc.set_fault(Fault::Status500);
//! assert!(gc.wait_until(std::time::Duration::from_secs(5), |r| !r.is_empty()));
//! ```

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use mc::control::gc::{Health, Heartbeat, MeetingEndedNotice, RegisterRequest};
use mc::control::migrate_wire::{MigrateRequest, MigrateTarget};
use mc::core::protocol::MediaHandler;

/// What the fake GC answers at registration.
#[derive(Debug, Clone)]
pub struct FakeGcConfig {
    /// `fast_heartbeat_interval_ms` of the register answer.
    pub fast_heartbeat_interval_ms: u64,
    /// `comprehensive_heartbeat_interval_ms` of the register answer.
    pub comprehensive_heartbeat_interval_ms: u64,
    /// Bearer token controllers must present; `None` accepts any.
    pub token: Option<String>,
}

impl Default for FakeGcConfig {
    fn default() -> Self {
        Self {
            fast_heartbeat_interval_ms: 10_000,
            comprehensive_heartbeat_interval_ms: 30_000,
            token: None,
        }
    }
}

/// A fault, switchable at runtime with [`FakeGc::set_fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Behave.
    None,
    /// Close the listener (new connections are refused) and drop requests on open ones.
    Down,
    /// Wait this long before answering (use more than the controller's GC timeout).
    Slow(Duration),
    /// Answer every request with 500.
    Status500,
    /// Answer every request with 401.
    Unauthorized401,
    /// Forget every registered controller once: heartbeats get 404 until it registers again.
    ForgetController,
    /// Answer registrations with `200 {accepted: false}`.
    AcceptFalse,
}

/// One request the fake GC received.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived (before any injected delay).
    pub at: Instant,
    /// When it arrived, Unix epoch ms.
    pub unix_ms: u64,
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// `Authorization` header.
    pub authorization: Option<String>,
    /// `traceparent` header.
    pub traceparent: Option<String>,
    /// Body as JSON (`Null` if empty, a string if not JSON).
    pub body: Value,
    /// Status the fake answered with.
    pub status: u16,
}

impl Received {
    /// The body as a typed value.
    pub fn json<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_value(self.body.clone()).ok()
    }

    /// True for `POST /api/v1/controllers/register`.
    pub fn is_register(&self) -> bool {
        self.path == "/api/v1/controllers/register"
    }

    /// True for a heartbeat.
    pub fn is_heartbeat(&self) -> bool {
        self.path.starts_with("/api/v1/controllers/") && self.path.ends_with("/heartbeat")
    }

    /// True for a meeting-ended notification.
    pub fn is_meeting_ended(&self) -> bool {
        self.path.starts_with("/api/v1/meetings/") && self.path.ends_with("/ended")
    }

    /// The meeting id of a meeting-ended notification.
    pub fn ended_meeting_id(&self) -> Option<&str> {
        self.path
            .strip_prefix("/api/v1/meetings/")?
            .strip_suffix("/ended")
    }
}

/// What the fake GC knows of a registered controller (for migration targets).
#[derive(Debug, Clone)]
struct ControllerRecord {
    reg: RegisterRequest,
    /// Health of its last heartbeat (`None` before the first).
    health: Option<Health>,
    /// Meetings: from its last heartbeat, plus the migrations sent to it since.
    meetings: usize,
    /// Participants, likewise.
    participants: usize,
}

#[derive(Debug)]
struct State {
    cfg: FakeGcConfig,
    fault: Fault,
    known: HashSet<String>,
    controllers: BTreeMap<String, ControllerRecord>,
    /// Meeting → controller chosen by the last migration of it.
    placements: BTreeMap<String, String>,
    received: Vec<Received>,
}

/// A running fake GC. Dropping it stops the server.
#[derive(Debug)]
pub struct FakeGc {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    listening: watch::Sender<bool>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeGc {
    /// Binds `addr` (port 0 picks one) and serves on a thread of its own.
    pub fn start(addr: SocketAddr, cfg: FakeGcConfig) -> io::Result<FakeGc> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            cfg,
            fault: Fault::None,
            known: HashSet::new(),
            controllers: BTreeMap::new(),
            placements: BTreeMap::new(),
            received: Vec::new(),
        }));
        let (listen_tx, listen_rx) = watch::channel(true);
        let (stop_tx, stop_rx) = oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let st = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("fake-gc".into())
            .spawn(move || rt.block_on(serve(listener, addr, st, listen_rx, stop_rx)))?;
        Ok(FakeGc {
            addr,
            state,
            listening: listen_tx,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, the controller's `--gc-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Switches the fault (takes effect for the next request).
    pub fn set_fault(&self, fault: Fault) {
        {
            let mut s = lock(&self.state);
            if fault == Fault::ForgetController {
                s.known.clear();
            }
            s.fault = fault;
        }
        let _ = self.listening.send(fault != Fault::Down);
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        lock(&self.state).fault
    }

    /// Changes the intervals returned by later registrations.
    pub fn set_intervals(&self, fast_ms: u64, comprehensive_ms: u64) {
        let mut s = lock(&self.state);
        s.cfg.fast_heartbeat_interval_ms = fast_ms;
        s.cfg.comprehensive_heartbeat_interval_ms = comprehensive_ms;
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        lock(&self.state).received.clone()
    }

    /// Requests received from index `from` on (for tailing).
    pub fn requests_since(&self, from: usize) -> Vec<Received> {
        lock(&self.state)
            .received
            .get(from..)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }

    /// Registration requests.
    pub fn registrations(&self) -> Vec<Received> {
        self.filtered(Received::is_register)
    }

    /// Heartbeats.
    pub fn heartbeats(&self) -> Vec<Received> {
        self.filtered(Received::is_heartbeat)
    }

    /// Meeting-ended notifications.
    pub fn meetings_ended(&self) -> Vec<Received> {
        self.filtered(Received::is_meeting_ended)
    }

    fn filtered(&self, f: impl Fn(&Received) -> bool) -> Vec<Received> {
        lock(&self.state)
            .received
            .iter()
            .filter(|r| f(r))
            .cloned()
            .collect()
    }

    /// Controllers currently registered.
    pub fn known_controllers(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.state).known.iter().cloned().collect();
        v.sort();
        v
    }

    /// Migration requests (`POST /api/v1/meetings/{id}/migrate`).
    pub fn migrations(&self) -> Vec<Received> {
        self.filtered(|r| r.path.starts_with("/api/v1/meetings/") && r.path.ends_with("/migrate"))
    }

    /// The controller the last successful migration of `meeting_id` went to.
    pub fn placement(&self, meeting_id: &str) -> Option<String> {
        lock(&self.state).placements.get(meeting_id).cloned()
    }

    /// Forgets everything received so far.
    pub fn clear(&self) {
        lock(&self.state).received.clear();
    }

    /// Polls every 10 ms until `pred` holds over the received requests, or `timeout` passes.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&lock(&self.state).received) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Assigns a meeting to the controller at `mc_control_url` the way the GC does
    /// (`POST /internal/v1/meetings`). Returns the status and JSON body; status 0 with
    /// `{"error": ...}` if the controller could not be reached.
    pub fn assign(
        &self,
        mc_control_url: &str,
        inbound_token: &str,
        meeting_id: &str,
        media_handlers: &[MediaHandler],
    ) -> (u16, Value) {
        let body = json!({ "meeting_id": meeting_id, "media_handlers": media_handlers });
        post_json(
            &format!(
                "{}/internal/v1/meetings",
                mc_control_url.trim_end_matches('/')
            ),
            inbound_token,
            &body,
        )
    }
}

/// `POST` a JSON body with a bearer token; `(status, body)`, status 0 if unreachable.
pub fn post_json(url: &str, token: &str, body: &Value) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    match agent
        .post(url)
        .header("Authorization", format!("Bearer {token}"))
        .send_json(body)
    {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let text = r.body_mut().read_to_string().unwrap_or_default();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        }
        Err(e) => (0, json!({ "error": e.to_string() })),
    }
}

impl Drop for FakeGc {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Error returned by the service to drop a connection without answering (fault `Down`).
#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fake GC is down")
    }
}

impl std::error::Error for Refused {}

enum Step {
    Stop,
    Accepted(tokio::net::TcpStream),
    Listen(bool),
    Nothing,
}

async fn serve(
    first: std::net::TcpListener,
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    mut listen_rx: watch::Receiver<bool>,
    mut stop_rx: oneshot::Receiver<()>,
) {
    let mut listener = tokio::net::TcpListener::from_std(first).ok();
    loop {
        let step = match listener.as_ref() {
            Some(l) => tokio::select! {
                _ = &mut stop_rx => Step::Stop,
                r = listen_rx.changed() => if r.is_err() { Step::Stop } else { Step::Listen(*listen_rx.borrow()) },
                acc = l.accept() => match acc { Ok((s, _)) => Step::Accepted(s), Err(_) => Step::Nothing },
            },
            None => tokio::select! {
                _ = &mut stop_rx => Step::Stop,
                r = listen_rx.changed() => if r.is_err() { Step::Stop } else { Step::Listen(*listen_rx.borrow()) },
            },
        };
        match step {
            Step::Stop => return,
            Step::Listen(false) => listener = None,
            Step::Listen(true) => {
                if listener.is_none() {
                    listener = rebind(addr).await;
                }
            }
            Step::Accepted(stream) => {
                let st = Arc::clone(&state);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(Arc::clone(&st), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Step::Nothing => {}
        }
    }
}

async fn rebind(addr: SocketAddr) -> Option<tokio::net::TcpListener> {
    for _ in 0..500 {
        if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
            return Some(l);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn header(req: &Request<Incoming>, name: impl hyper::header::AsHeaderName) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Refused> {
    let at = Instant::now();
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let fault = lock(&state).fault;
    if fault == Fault::Down {
        return Err(Refused);
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let authorization = header(&req, AUTHORIZATION);
    let traceparent = header(&req, "traceparent");
    let bytes = Limited::new(req.into_body(), 1024 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    if let Fault::Slow(d) = fault {
        tokio::time::sleep(d).await;
    }
    let (status, answer) = {
        let mut s = lock(&state);
        let (status, answer) = decide(&mut s, &method, &path, authorization.as_deref(), &body);
        s.received.push(Received {
            at,
            unix_ms,
            method: method.to_string(),
            path,
            authorization,
            traceparent,
            body,
            status: status.as_u16(),
        });
        (status, answer)
    };
    let mut r = Response::new(Full::new(Bytes::from(answer.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

fn decide(
    s: &mut State,
    method: &Method,
    path: &str,
    auth: Option<&str>,
    body: &Value,
) -> (StatusCode, Value) {
    match s.fault {
        Fault::Status500 => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": "injected" }),
            )
        }
        Fault::Unauthorized401 => {
            return (StatusCode::UNAUTHORIZED, json!({ "error": "injected" }))
        }
        _ => {}
    }
    if let Some(token) = &s.cfg.token {
        if auth != Some(format!("Bearer {token}").as_str()) {
            return (StatusCode::UNAUTHORIZED, json!({ "error": "bad token" }));
        }
    }
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, json!({ "error": "method" }));
    }
    if path == "/api/v1/controllers/register" {
        let Ok(reg) = serde_json::from_value::<RegisterRequest>(body.clone()) else {
            return (
                StatusCode::BAD_REQUEST,
                json!({ "error": "bad register body" }),
            );
        };
        if s.fault == Fault::AcceptFalse {
            return (
                StatusCode::OK,
                json!({ "accepted": false, "message": "registration refused (injected)" }),
            );
        }
        s.known.insert(reg.id.clone());
        // A (re)registration starts with a clean slate: the old process's drain is over.
        s.controllers.insert(
            reg.id.clone(),
            ControllerRecord {
                reg,
                health: None,
                meetings: 0,
                participants: 0,
            },
        );
        return (
            StatusCode::OK,
            json!({
                "accepted": true,
                "message": "welcome",
                "fast_heartbeat_interval_ms": s.cfg.fast_heartbeat_interval_ms,
                "comprehensive_heartbeat_interval_ms": s.cfg.comprehensive_heartbeat_interval_ms,
            }),
        );
    }
    if let Some(id) = path
        .strip_prefix("/api/v1/controllers/")
        .and_then(|p| p.strip_suffix("/heartbeat"))
    {
        let Ok(hb) = serde_json::from_value::<Heartbeat>(body.clone()) else {
            return (
                StatusCode::BAD_REQUEST,
                json!({ "error": "bad heartbeat body" }),
            );
        };
        if !s.known.contains(id) {
            return (
                StatusCode::NOT_FOUND,
                json!({ "error": "unknown controller" }),
            );
        }
        if let Some(c) = s.controllers.get_mut(id) {
            c.health = Some(hb.health);
            c.meetings = hb.capacity.current_meetings;
            c.participants = hb.capacity.current_participants;
        }
        return (StatusCode::OK, json!({}));
    }
    if let Some(meeting) = path
        .strip_prefix("/api/v1/meetings/")
        .and_then(|p| p.strip_suffix("/migrate"))
    {
        let Ok(req) = serde_json::from_value::<MigrateRequest>(body.clone()) else {
            return (
                StatusCode::BAD_REQUEST,
                json!({ "error": "invalid_request", "message": "bad migrate body" }),
            );
        };
        return match choose_target(s, &req) {
            Ok(t) => {
                if let Some(c) = s.controllers.get_mut(&t.target_controller_id) {
                    c.meetings += 1;
                    c.participants += req.participants;
                }
                s.placements
                    .insert(meeting.to_owned(), t.target_controller_id.clone());
                (StatusCode::OK, serde_json::to_value(&t).unwrap_or_default())
            }
            Err((reason, message)) => (
                StatusCode::CONFLICT,
                json!({ "error": reason, "message": message }),
            ),
        };
    }
    if path.starts_with("/api/v1/meetings/") && path.ends_with("/ended") {
        if serde_json::from_value::<MeetingEndedNotice>(body.clone()).is_err() {
            return (
                StatusCode::BAD_REQUEST,
                json!({ "error": "bad notification body" }),
            );
        }
        return (StatusCode::OK, json!({}));
    }
    (StatusCode::NOT_FOUND, json!({ "error": "not found" }))
}

/// The migration target: a registered controller other than the source, not draining, not
/// unhealthy, with room for one more meeting and its participants; the least loaded (by
/// meetings, then id). With `to`, only that controller, if it qualifies.
fn choose_target(s: &State, req: &MigrateRequest) -> Result<MigrateTarget, (&'static str, String)> {
    let eligible = |c: &ControllerRecord| {
        c.reg.id != req.controller_id
            && s.known.contains(&c.reg.id)
            && !matches!(c.health, Some(Health::Draining | Health::Unhealthy))
            && c.meetings < c.reg.max_meetings
            && c.participants + req.participants <= c.reg.max_participants
    };
    let chosen = match &req.to {
        Some(to) => {
            let Some(c) = s
                .controllers
                .get(to)
                .filter(|c| s.known.contains(&c.reg.id))
            else {
                return Err((
                    "unknown_target",
                    format!("no controller {to} is registered"),
                ));
            };
            if !eligible(c) {
                return Err((
                    "target_unavailable",
                    format!("controller {to} is the source, draining, unhealthy or full"),
                ));
            }
            c
        }
        None => s
            .controllers
            .values()
            .filter(|c| eligible(c))
            .min_by(|a, b| a.meetings.cmp(&b.meetings).then(a.reg.id.cmp(&b.reg.id)))
            .ok_or((
                "no_target",
                "no other controller can take the meeting".to_owned(),
            ))?,
    };
    Ok(MigrateTarget {
        target_controller_id: chosen.reg.id.clone(),
        control_url: chosen.reg.control_url.clone(),
        quic_endpoint: chosen.reg.quic_endpoint.clone(),
        webtransport_url: chosen.reg.webtransport_url.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            cfg: FakeGcConfig::default(),
            fault: Fault::None,
            known: HashSet::new(),
            controllers: BTreeMap::new(),
            placements: BTreeMap::new(),
            received: Vec::new(),
        }
    }

    fn register(s: &mut State, id: &str, max_meetings: usize) {
        let body = json!({
            "id": id, "region": "r", "quic_endpoint": format!("{id}:4433"),
            "webtransport_url": format!("https://{id}:4433"), "control_url": format!("http://{id}:8080"),
            "shards": 1, "max_meetings": max_meetings, "max_participants": 100, "version": "t",
        });
        let (st, _) = decide(
            s,
            &Method::POST,
            "/api/v1/controllers/register",
            None,
            &body,
        );
        assert_eq!(st, StatusCode::OK);
    }

    fn heartbeat(s: &mut State, id: &str, health: &str, meetings: usize) {
        let body = json!({
            "kind": "fast", "health": health,
            "capacity": {"max_meetings": 10, "current_meetings": meetings, "max_participants": 100, "current_participants": 0},
            "shards": [],
        });
        let (st, _) = decide(
            s,
            &Method::POST,
            &format!("/api/v1/controllers/{id}/heartbeat"),
            None,
            &body,
        );
        assert_eq!(st, StatusCode::OK);
    }

    fn migrate(s: &mut State, from: &str, to: Option<&str>) -> (StatusCode, Value) {
        let mut body = json!({ "controller_id": from, "participants": 2 });
        if let Some(t) = to {
            body["to"] = json!(t);
        }
        decide(s, &Method::POST, "/api/v1/meetings/m1/migrate", None, &body)
    }

    #[test]
    fn migration_targets_are_live_other_controllers_with_room() {
        let mut s = state();
        register(&mut s, "a", 10);
        let (st, body) = migrate(&mut s, "a", None);
        assert_eq!(
            (st, body["error"].as_str()),
            (StatusCode::CONFLICT, Some("no_target"))
        );
        register(&mut s, "b", 10);
        register(&mut s, "c", 10);
        heartbeat(&mut s, "b", "healthy", 3);
        heartbeat(&mut s, "c", "healthy", 1);
        let (st, body) = migrate(&mut s, "a", None);
        assert_eq!(st, StatusCode::OK);
        assert_eq!(body["target_controller_id"], "c", "least loaded");
        assert_eq!(body["control_url"], "http://c:8080");
        assert_eq!(body["quic_endpoint"], "c:4433");
        assert_eq!(body["webtransport_url"], "https://c:4433");
        // A draining controller is never chosen, even when asked for by name.
        heartbeat(&mut s, "c", "draining", 0);
        let (_, body) = migrate(&mut s, "a", None);
        assert_eq!(body["target_controller_id"], "b");
        let (st, body) = migrate(&mut s, "a", Some("c"));
        assert_eq!(
            (st, body["error"].as_str()),
            (StatusCode::CONFLICT, Some("target_unavailable"))
        );
        let (st, body) = migrate(&mut s, "a", Some("zz"));
        assert_eq!(
            (st, body["error"].as_str()),
            (StatusCode::CONFLICT, Some("unknown_target"))
        );
        // The source itself is never a target.
        let (st, _) = migrate(&mut s, "b", Some("b"));
        assert_eq!(st, StatusCode::CONFLICT);
        // Full controllers are skipped.
        heartbeat(&mut s, "b", "healthy", 10);
        let (st, _) = migrate(&mut s, "a", None);
        assert_eq!(st, StatusCode::CONFLICT);
        // A controller that re-registers after its restart is a target again.
        register(&mut s, "c", 10);
        let (_, body) = migrate(&mut s, "a", None);
        assert_eq!(body["target_controller_id"], "c");
        assert_eq!(s.placements.get("m1").map(String::as_str), Some("c"));
        let (st, _) = decide(
            &mut s,
            &Method::POST,
            "/api/v1/meetings/m1/migrate",
            None,
            &json!({"x": 1}),
        );
        assert_eq!(st, StatusCode::BAD_REQUEST);
    }
}
