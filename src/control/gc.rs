//! The GC client: registration, heartbeats and meeting-ended notifications (control plane v1 §1).
//!
//! It runs on its own thread (`mc-gc`) with a blocking HTTP client, so a slow or dead GC never
//! delays the control HTTP server and never touches a shard. The thread also drains the shards'
//! event channel; in standalone mode (no GC URL) it only discards those events.
//!
//! State machine:
//!
//! ```text
//!   Unregistered --register 200 {accepted:true}--> Registered
//!        ^  |                                           |
//!        |  +-- failure / accepted:false: retry after    | heartbeat 404, /admin/reregister
//!        |      backoff (full jitter, base → cap)        |
//!        +-----------------------------------------------+
//! ```
//!
//! While registered, fast and comprehensive heartbeats go out on their own cadences (a
//! comprehensive heartbeat also counts as the fast one). A failed heartbeat is counted and the
//! next tick simply tries again.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{never, select, Receiver};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::procstat::{self, CpuMeter};
use super::shards::{self, ShardView};
use super::Shared;
use crate::core::ids::ShardId;
use crate::core::shard::ShardEvent;

/// Intervals and limits of the GC client. The defaults are the production values; tests shrink
/// them so nothing waits ten seconds.
#[derive(Debug, Clone)]
pub struct GcTiming {
    /// First registration retry delay (upper bound of the jitter window).
    pub backoff_base: Duration,
    /// Largest registration retry delay.
    pub backoff_cap: Duration,
    /// Fast heartbeat interval when the GC does not give one.
    pub default_fast: Duration,
    /// Comprehensive heartbeat interval when the GC does not give one.
    pub default_comprehensive: Duration,
    /// Intervals from the GC below this are raised to it.
    pub min_interval: Duration,
    /// Intervals from the GC above this are lowered to it.
    pub max_interval: Duration,
    /// Attempts per meeting-ended notification.
    pub notify_attempts: u32,
    /// Delay before the second attempt of a notification (doubles after).
    pub notify_retry: Duration,
    /// Pending notifications kept; beyond that the oldest is dropped and counted.
    pub notify_queue: usize,
}

impl Default for GcTiming {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(30),
            default_fast: Duration::from_secs(10),
            default_comprehensive: Duration::from_secs(30),
            min_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(300),
            notify_attempts: 3,
            notify_retry: Duration::from_secs(1),
            notify_queue: 4096,
        }
    }
}

// ------------------------------------------------------------------------------------------
// Wire types (control plane v1 §1)
// ------------------------------------------------------------------------------------------

/// `POST /api/v1/controllers/register` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Controller id.
    pub id: String,
    /// Region.
    pub region: String,
    /// QUIC endpoint clients connect to (`host:port`).
    pub quic_endpoint: String,
    /// WebTransport URL.
    pub webtransport_url: String,
    /// Where the GC reaches this controller's control server.
    pub control_url: String,
    /// Number of shards.
    pub shards: usize,
    /// Meetings this controller takes.
    pub max_meetings: usize,
    /// Participants this controller takes.
    pub max_participants: usize,
    /// Build version.
    pub version: String,
}

/// `POST /api/v1/controllers/register` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// Whether the GC took the registration.
    pub accepted: bool,
    /// Human text (logged).
    #[serde(default)]
    pub message: String,
    /// Fast heartbeat interval.
    #[serde(default)]
    pub fast_heartbeat_interval_ms: Option<u64>,
    /// Comprehensive heartbeat interval.
    #[serde(default)]
    pub comprehensive_heartbeat_interval_ms: Option<u64>,
}

/// Heartbeat kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeartbeatKind {
    /// Capacity and per-shard load.
    Fast,
    /// Also the process's own CPU and memory.
    Comprehensive,
}

impl HeartbeatKind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HeartbeatKind::Fast => "fast",
            HeartbeatKind::Comprehensive => "comprehensive",
        }
    }
}

/// Health reported to the GC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Every shard answers and no mailbox is critically deep.
    Healthy,
    /// A shard is silent, or a mailbox holds more than 500 messages.
    Degraded,
    /// Draining: takes no new meetings.
    Draining,
    /// No shard answers.
    Unhealthy,
}

/// Capacity block of a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Configured meeting limit.
    pub max_meetings: usize,
    /// Meetings now (sum over shards).
    pub current_meetings: usize,
    /// Configured participant limit.
    pub max_participants: usize,
    /// Participants now (sum over shards).
    pub current_participants: usize,
}

/// One shard in a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardLoad {
    /// Shard index.
    pub shard: u16,
    /// Meetings.
    pub meetings: usize,
    /// Participants.
    pub participants: usize,
    /// Queued messages over all actor types.
    pub mailbox_depth: usize,
    /// Worst p99 processing latency over actor types (ms).
    pub p99_processing_ms: f64,
}

/// Process block of a comprehensive heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProcessLoad {
    /// CPU use since the previous comprehensive heartbeat, % of one core.
    pub cpu_percent: f64,
    /// Resident memory.
    pub rss_bytes: u64,
}

/// `POST /api/v1/controllers/{id}/heartbeat` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Which heartbeat.
    pub kind: HeartbeatKind,
    /// Health.
    pub health: Health,
    /// Capacity figures.
    pub capacity: Capacity,
    /// Per-shard load.
    pub shards: Vec<ShardLoad>,
    /// Process figures (comprehensive only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessLoad>,
}

/// `POST /api/v1/meetings/{meeting_id}/ended` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeetingEndedNotice {
    /// This controller.
    pub controller_id: String,
    /// Wire reason (`ended_by_host`, `ended_by_admin`, `controller_draining`, ...).
    pub reason: String,
}

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

/// Outcome of one GC call, as the `status` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallStatus {
    Success,
    Error,
    Timeout,
    NotFound,
    Unauthorized,
}

impl CallStatus {
    pub(crate) const ALL: [CallStatus; 5] = [
        CallStatus::Success,
        CallStatus::Error,
        CallStatus::Timeout,
        CallStatus::NotFound,
        CallStatus::Unauthorized,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CallStatus::Success => "success",
            CallStatus::Error => "error",
            CallStatus::Timeout => "timeout",
            CallStatus::NotFound => "not_found",
            CallStatus::Unauthorized => "unauthorized",
        }
    }

    fn from_http(status: u16) -> Self {
        match status {
            200..=299 => CallStatus::Success,
            401 | 403 => CallStatus::Unauthorized,
            404 => CallStatus::NotFound,
            _ => CallStatus::Error,
        }
    }
}

/// Registration retry delay for the `attempt`-th consecutive failure (0-based): full jitter
/// over `[base/2, min(cap, base·2^attempt)]`. The floor keeps a dead GC from being hammered.
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration, rng: &mut impl Rng) -> Duration {
    let ceiling = base
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(cap)
        .min(cap);
    let floor = (base / 2).min(ceiling);
    let (lo, hi) = (floor.as_micros() as u64, ceiling.as_micros() as u64);
    Duration::from_micros(if hi > lo { rng.gen_range(lo..=hi) } else { hi })
}

/// A W3C `traceparent` header value (`00-<trace-id>-<span-id>-01`) with random, non-zero ids.
pub fn traceparent(rng: &mut impl Rng) -> String {
    let trace: u128 = rng.gen_range(1..=u128::MAX);
    let span: u64 = rng.gen_range(1..=u64::MAX);
    format!("00-{trace:032x}-{span:016x}-01")
}

/// Clamps an interval from the GC: absent or zero → `default`, otherwise into `[min, max]`.
pub fn clamp_interval(
    ms: Option<u64>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Duration {
    match ms {
        None | Some(0) => default,
        Some(ms) => Duration::from_millis(ms).clamp(min, max.max(min)),
    }
}

/// Health from the shard views.
pub(crate) fn health(views: &[ShardView], draining: bool, stale_after: Duration) -> Health {
    if draining {
        return Health::Draining;
    }
    let alive = views
        .iter()
        .filter(|v| v.answered_within(stale_after))
        .count();
    if alive == 0 {
        Health::Unhealthy
    } else if alive < views.len()
        || views
            .iter()
            .any(|v| v.total_depth() > DEGRADED_MAILBOX_DEPTH)
    {
        Health::Degraded
    } else {
        Health::Healthy
    }
}

/// Mailbox depth above which the controller reports `degraded` (the runbook's critical level).
pub(crate) const DEGRADED_MAILBOX_DEPTH: usize = 500;

/// Builds the heartbeat body from the shard views.
pub(crate) fn heartbeat_body(
    kind: HeartbeatKind,
    views: &[ShardView],
    health: Health,
    max_meetings: usize,
    max_participants: usize,
    process: Option<ProcessLoad>,
) -> Heartbeat {
    let totals = shards::totals(views);
    Heartbeat {
        kind,
        health,
        capacity: Capacity {
            max_meetings,
            current_meetings: totals.meetings,
            max_participants,
            current_participants: totals.participants,
        },
        shards: views
            .iter()
            .map(|v| ShardLoad {
                shard: v.shard,
                meetings: v.snapshot.meetings,
                participants: v.snapshot.participants,
                mailbox_depth: v.total_depth(),
                p99_processing_ms: v.worst_p99_ms(),
            })
            .collect(),
        process: if kind == HeartbeatKind::Comprehensive {
            process
        } else {
            None
        },
    }
}

// ------------------------------------------------------------------------------------------
// The thread
// ------------------------------------------------------------------------------------------

/// Commands from the control thread.
#[derive(Debug)]
pub(crate) enum GcCommand {
    /// Forget the registration and register again now.
    Reregister,
    /// Draining started or stopped: send a fast heartbeat now.
    DrainChanged,
    /// Stop. With a deadline, first try every queued notification once until then.
    Shutdown { flush_until: Option<Instant> },
}

/// A meeting-ended notification waiting to go out.
#[derive(Debug)]
struct Notice {
    meeting_id: String,
    reason: &'static str,
    attempts: u32,
    due: Instant,
}

enum Reg {
    Unregistered {
        attempt: u32,
        due: Instant,
    },
    Registered {
        fast: Duration,
        comp: Duration,
        next_fast: Instant,
        next_comp: Instant,
    },
}

/// Raw result of one HTTP call.
struct Reply {
    status: CallStatus,
    http: Option<u16>,
    body: String,
}

pub(crate) struct GcWorker {
    shared: Arc<Shared>,
    events: Receiver<(ShardId, ShardEvent)>,
    commands: Receiver<GcCommand>,
    agent: ureq::Agent,
    base_url: Option<String>,
    reg: Reg,
    queue: VecDeque<Notice>,
    cpu: CpuMeter,
}

impl GcWorker {
    pub(crate) fn new(
        shared: Arc<Shared>,
        events: Receiver<(ShardId, ShardEvent)>,
        commands: Receiver<GcCommand>,
    ) -> Self {
        let mut agent = ureq::Agent::config_builder()
            .timeout_global(Some(shared.cfg.gc_timeout))
            .http_status_as_error(false)
            .user_agent(format!("mc/{}", shared.cfg.version));
        if !shared.cfg.gc_ca_certs.is_empty() {
            // A private CA replaces the public web roots for the GC link (`--gc-ca-file`).
            agent = agent.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(
                        &shared.cfg.gc_ca_certs,
                    ))
                    .build(),
            );
        }
        let agent = agent.build().into();
        let base_url = shared
            .cfg
            .gc_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_owned());
        Self {
            shared,
            events,
            commands,
            agent,
            base_url,
            reg: Reg::Unregistered {
                attempt: 0,
                due: Instant::now(),
            },
            queue: VecDeque::new(),
            cpu: CpuMeter::new(),
        }
    }

    /// Runs until [`GcCommand::Shutdown`] or until the control side goes away.
    pub(crate) fn run(mut self) {
        let mut events = Some(self.events.clone());
        loop {
            let now = Instant::now();
            if self.base_url.is_some() {
                self.do_due_work(now);
            }
            let wait = self
                .next_due()
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            let ev_rx = events.clone().unwrap_or_else(never);
            select! {
                recv(self.commands) -> cmd => match cmd {
                    Ok(GcCommand::Shutdown { flush_until }) => {
                        self.shutdown(flush_until);
                        return;
                    }
                    Ok(cmd) => self.command(cmd),
                    Err(_) => return,
                },
                recv(ev_rx) -> ev => match ev {
                    Ok((shard, ev)) => self.event(shard, ev),
                    Err(_) => events = None,
                },
                default(wait) => {}
            }
        }
    }

    fn command(&mut self, cmd: GcCommand) {
        match cmd {
            GcCommand::Reregister => {
                tracing::info!("re-registration requested");
                self.unregister(Instant::now());
            }
            GcCommand::DrainChanged => {
                if let Reg::Registered { next_fast, .. } = &mut self.reg {
                    *next_fast = Instant::now();
                }
            }
            GcCommand::Shutdown { .. } => {}
        }
    }

    fn event(&mut self, shard: ShardId, ev: ShardEvent) {
        let ShardEvent::MeetingEnded { meeting_id, reason } = ev;
        if self.base_url.is_none() {
            tracing::debug!(shard = %shard, meeting = %meeting_id, reason, "meeting ended");
            return;
        }
        if self.queue.len() >= self.shared.timing.gc.notify_queue.max(1) {
            if let Some(old) = self.queue.pop_front() {
                tracing::warn!(meeting = %old.meeting_id, "meeting-ended queue full; oldest notification dropped");
                self.shared.metrics.gc_notification("dropped");
            }
        }
        self.queue.push_back(Notice {
            meeting_id,
            reason,
            attempts: 0,
            due: Instant::now(),
        });
    }

    fn unregister(&mut self, now: Instant) {
        self.shared.registered.store(false, Ordering::SeqCst);
        self.reg = Reg::Unregistered {
            attempt: 0,
            due: now,
        };
    }

    fn next_due(&self) -> Option<Instant> {
        self.base_url.as_ref()?;
        let reg = match &self.reg {
            Reg::Unregistered { due, .. } => *due,
            Reg::Registered {
                next_fast,
                next_comp,
                ..
            } => (*next_fast).min(*next_comp),
        };
        let notice = self.queue.iter().map(|n| n.due).min();
        Some(notice.map_or(reg, |n| n.min(reg)))
    }

    fn do_due_work(&mut self, now: Instant) {
        match self.reg {
            Reg::Unregistered { attempt, due } if due <= now => self.register(attempt),
            Reg::Registered { next_comp, .. } if next_comp <= now => {
                self.heartbeat(HeartbeatKind::Comprehensive)
            }
            Reg::Registered { next_fast, .. } if next_fast <= now => {
                self.heartbeat(HeartbeatKind::Fast)
            }
            _ => {}
        }
        // One notification per turn so heartbeats keep their cadence behind a backlog.
        let now = Instant::now();
        if let Some(i) = self.queue.iter().position(|n| n.due <= now) {
            if let Some(n) = self.queue.remove(i) {
                self.notify(n);
            }
        }
    }

    fn post<T: Serialize>(&self, path: &str, body: &T) -> (Reply, Duration) {
        let base = self.base_url.as_deref().unwrap_or_default();
        let url = format!("{base}{path}");
        let token = self.shared.cfg.gc_token.as_deref().unwrap_or_default();
        let tp = traceparent(&mut rand::thread_rng());
        let started = Instant::now();
        let result = self
            .agent
            .post(&url)
            .header("Authorization", format!("Bearer {token}"))
            .header("traceparent", &tp)
            .send_json(body);
        let reply = match result {
            Ok(mut resp) => {
                let http = resp.status().as_u16();
                let body = resp
                    .body_mut()
                    .with_config()
                    .limit(64 * 1024)
                    .read_to_string()
                    .unwrap_or_default();
                Reply {
                    status: CallStatus::from_http(http),
                    http: Some(http),
                    body,
                }
            }
            Err(e) => {
                let status = if is_timeout(&e) {
                    CallStatus::Timeout
                } else {
                    CallStatus::Error
                };
                tracing::debug!(url = %url, traceparent = %tp, error = %e, "GC call failed");
                Reply {
                    status,
                    http: None,
                    body: e.to_string(),
                }
            }
        };
        (reply, started.elapsed())
    }

    fn register(&mut self, attempt: u32) {
        let cfg = &self.shared.cfg;
        let body = RegisterRequest {
            id: cfg.mc_id.clone(),
            region: cfg.region.clone(),
            quic_endpoint: cfg.advertise_quic.clone(),
            webtransport_url: cfg.advertise_webtransport.clone(),
            control_url: super::control_url(cfg),
            shards: self.shared.pool.len(),
            max_meetings: cfg.max_meetings,
            max_participants: cfg.max_participants,
            version: cfg.version.clone(),
        };
        let (reply, _) = self.post("/api/v1/controllers/register", &body);
        let timing = &self.shared.timing.gc;
        let outcome = match reply.status {
            CallStatus::Success => match serde_json::from_str::<RegisterResponse>(&reply.body) {
                Ok(r) if r.accepted => Ok(r),
                Ok(r) => Err((
                    "rejected",
                    format!("GC did not accept the registration: {}", r.message),
                )),
                Err(e) => Err(("error", format!("unreadable register answer: {e}"))),
            },
            s => Err((
                s.as_str(),
                match reply.http {
                    Some(code) => format!("GC answered {code}"),
                    None => reply.body.clone(),
                },
            )),
        };
        let now = Instant::now();
        match outcome {
            Ok(r) => {
                let fast = clamp_interval(
                    r.fast_heartbeat_interval_ms,
                    timing.default_fast,
                    timing.min_interval,
                    timing.max_interval,
                );
                let comp = clamp_interval(
                    r.comprehensive_heartbeat_interval_ms,
                    timing.default_comprehensive,
                    timing.min_interval,
                    timing.max_interval,
                );
                tracing::info!(
                    fast_ms = fast.as_millis() as u64,
                    comprehensive_ms = comp.as_millis() as u64,
                    message = %r.message,
                    "registered with GC"
                );
                self.shared.metrics.gc_registration("success");
                self.shared.registered.store(true, Ordering::SeqCst);
                // Tell the GC the full picture at once; the fast cadence starts after it.
                self.reg = Reg::Registered {
                    fast,
                    comp,
                    next_fast: now + fast,
                    next_comp: now,
                };
            }
            Err((status, why)) => {
                let delay = backoff_delay(
                    attempt,
                    timing.backoff_base,
                    timing.backoff_cap,
                    &mut rand::thread_rng(),
                );
                tracing::warn!(
                    attempt = attempt + 1,
                    retry_in_ms = delay.as_millis() as u64,
                    reason = %why,
                    "GC registration failed"
                );
                self.shared.metrics.gc_registration(status);
                self.reg = Reg::Unregistered {
                    attempt: attempt.saturating_add(1),
                    due: now + delay,
                };
            }
        }
    }

    fn heartbeat(&mut self, kind: HeartbeatKind) {
        let shared = Arc::clone(&self.shared);
        let views = shared.pool.refresh(shared.timing.snapshot_timeout);
        let draining = shared.draining.load(Ordering::SeqCst);
        let process = (kind == HeartbeatKind::Comprehensive).then(|| ProcessLoad {
            cpu_percent: self.cpu.sample().unwrap_or(0.0),
            rss_bytes: procstat::rss_bytes().unwrap_or(0),
        });
        let body = heartbeat_body(
            kind,
            &views,
            health(&views, draining, shared.timing.health_stale_after),
            shared.cfg.max_meetings,
            shared.cfg.max_participants,
            process,
        );
        let path = format!("/api/v1/controllers/{}/heartbeat", shared.cfg.mc_id);
        let (reply, took) = self.post(&path, &body);
        shared
            .metrics
            .gc_heartbeat(kind.as_str(), reply.status.as_str(), took);
        let now = Instant::now();
        match reply.status {
            CallStatus::Success => {}
            CallStatus::NotFound => {
                tracing::warn!(
                    kind = kind.as_str(),
                    "GC does not know this controller; registering again"
                );
                self.unregister(now);
                return;
            }
            s => tracing::warn!(
                kind = kind.as_str(),
                status = s.as_str(),
                "GC heartbeat failed"
            ),
        }
        if let Reg::Registered {
            fast,
            comp,
            next_fast,
            next_comp,
        } = &mut self.reg
        {
            *next_fast = now + *fast;
            if kind == HeartbeatKind::Comprehensive {
                *next_comp = now + *comp;
            }
        }
    }

    fn notify(&mut self, mut n: Notice) -> bool {
        let body = MeetingEndedNotice {
            controller_id: self.shared.cfg.mc_id.clone(),
            reason: n.reason.to_owned(),
        };
        let path = format!("/api/v1/meetings/{}/ended", n.meeting_id);
        let (reply, _) = self.post(&path, &body);
        self.shared.metrics.gc_notification(reply.status.as_str());
        n.attempts += 1;
        match reply.status {
            CallStatus::Success => return true,
            CallStatus::NotFound => {
                tracing::info!(meeting = %n.meeting_id, "GC does not know the ended meeting");
                return true;
            }
            _ => {}
        }
        let timing = &self.shared.timing.gc;
        if n.attempts >= timing.notify_attempts.max(1) {
            tracing::warn!(meeting = %n.meeting_id, attempts = n.attempts, "giving up telling the GC a meeting ended");
            self.shared.metrics.gc_notification("dropped");
        } else {
            let factor = 1u32 << (n.attempts - 1).min(16);
            n.due = Instant::now() + timing.notify_retry.saturating_mul(factor);
            self.queue.push_back(n);
        }
        false
    }

    fn shutdown(&mut self, flush_until: Option<Instant>) {
        let Some(deadline) = flush_until else {
            return;
        };
        while let Ok((shard, ev)) = self.events.try_recv() {
            self.event(shard, ev);
        }
        if self.base_url.is_none() {
            return;
        }
        while Instant::now() < deadline {
            let Some(n) = self.queue.pop_front() else {
                break;
            };
            // One attempt each: the process is about to exit.
            let n = Notice {
                attempts: self.shared.timing.gc.notify_attempts.saturating_sub(1),
                ..n
            };
            self.notify(n);
        }
        let left = self.queue.len();
        if left > 0 {
            tracing::warn!(
                left,
                "exiting with meeting-ended notifications not delivered"
            );
        }
    }
}

/// The certificates of a PEM file (`--gc-ca-file`): at least one `CERTIFICATE` block, every
/// block well-formed. Private keys and other blocks are refused: the file is public material.
pub fn parse_ca_certs(pem: &[u8]) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item.map_err(|e| format!("not a PEM file: {e}"))? {
            ureq::tls::PemItem::Certificate(c) => certs.push(c),
            ureq::tls::PemItem::PrivateKey(_) => {
                return Err("holds a private key; give only the CA certificate(s)".into())
            }
            _ => return Err("holds a PEM block that is not a certificate".into()),
        }
    }
    if certs.is_empty() {
        return Err("holds no PEM CERTIFICATE block".into());
    }
    Ok(certs)
}

fn is_timeout(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Timeout(_) => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_stays_within_bounds_and_reaches_the_cap() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (base, cap) = (Duration::from_secs(1), Duration::from_secs(30));
        for attempt in 0..64 {
            let ceiling = (base * 2u32.saturating_pow(attempt.min(20))).min(cap);
            for _ in 0..200 {
                let d = backoff_delay(attempt, base, cap, &mut rng);
                assert!(d >= base / 2, "attempt {attempt}: {d:?} below floor");
                assert!(d <= ceiling, "attempt {attempt}: {d:?} above {ceiling:?}");
            }
        }
        assert!(backoff_delay(0, base, cap, &mut rng) <= base);
        let late: Vec<_> = (0..500)
            .map(|_| backoff_delay(10, base, cap, &mut rng))
            .collect();
        assert!(late.iter().all(|d| *d <= cap));
        assert!(
            late.iter().any(|d| *d > Duration::from_secs(20)),
            "jitter spans up to the cap"
        );
        assert!(
            late.iter().any(|d| *d < Duration::from_secs(10)),
            "jitter is full, not equal"
        );
    }

    #[test]
    fn traceparent_is_w3c() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let a = traceparent(&mut rng);
        let b = traceparent(&mut rng);
        assert_ne!(a, b);
        for tp in [a, b] {
            let parts: Vec<&str> = tp.split('-').collect();
            assert_eq!(parts.len(), 4, "{tp}");
            assert_eq!(parts[0], "00");
            assert_eq!(parts[1].len(), 32);
            assert_eq!(parts[2].len(), 16);
            assert_eq!(parts[3], "01");
            for p in &parts[1..3] {
                assert!(p
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
                assert!(p.bytes().any(|c| c != b'0'), "all-zero ids are invalid");
            }
        }
    }

    #[test]
    fn intervals_are_clamped() {
        let (d, min, max) = (
            Duration::from_secs(10),
            Duration::from_secs(1),
            Duration::from_secs(300),
        );
        assert_eq!(clamp_interval(None, d, min, max), d);
        assert_eq!(clamp_interval(Some(0), d, min, max), d);
        assert_eq!(clamp_interval(Some(5), d, min, max), min);
        assert_eq!(clamp_interval(Some(u64::MAX), d, min, max), max);
        assert_eq!(
            clamp_interval(Some(15_000), d, min, max),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn heartbeat_wire_shape() {
        let hb = Heartbeat {
            kind: HeartbeatKind::Fast,
            health: Health::Draining,
            capacity: Capacity {
                max_meetings: 10,
                current_meetings: 2,
                max_participants: 100,
                current_participants: 5,
            },
            shards: vec![],
            process: None,
        };
        let v = serde_json::to_value(&hb).unwrap();
        assert_eq!(v["kind"], "fast");
        assert_eq!(v["health"], "draining");
        assert!(v.get("process").is_none(), "process only on comprehensive");
    }
}
