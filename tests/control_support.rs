//! Shared helpers of the `control_*` tests: a controller on loopback in front of fake shards,
//! optionally registered with a fake GC, plus small HTTP and metrics helpers.
//!
//! Included by the other `control_*` files with `#[path]`; compiled alone it holds no tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mc::control::{
    start_with, ControlConfig, ControlHandle, ControlOptions, ControlTiming, GcTiming,
};
use mc_test_support::fake_gc::{FakeGc, FakeGcConfig};
use mc_test_support::fake_shards::{fake_runtime, FakeShards, FakeShardsConfig};

pub const ADMIN: &str = "admin-secret";
pub const INBOUND: &str = "inbound-secret";
pub const GC_TOKEN: &str = "gc-secret";
/// Upper bound of every wait; never reached when things work.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct Rig {
    pub ctl: ControlHandle,
    pub shards: FakeShards,
    pub gc: Option<FakeGc>,
}

pub struct RigOpts {
    pub shards: u16,
    pub max_meetings: usize,
    pub max_meetings_per_shard: usize,
    pub admin: bool,
    pub inbound: bool,
    /// Start a fake GC answering with these `(fast, comprehensive)` intervals (ms).
    pub gc: Option<(u64, u64)>,
    pub gc_timeout: Duration,
    pub drain_timeout: Duration,
    pub stale_after: Duration,
}

impl Default for RigOpts {
    fn default() -> Self {
        Self {
            shards: 2,
            max_meetings: 1000,
            max_meetings_per_shard: 1000,
            admin: true,
            inbound: true,
            gc: None,
            gc_timeout: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(60),
            stale_after: Duration::from_secs(2),
        }
    }
}

pub fn timing(stale_after: Duration) -> ControlTiming {
    ControlTiming {
        health_poll: Duration::from_millis(50),
        health_stale_after: stale_after,
        snapshot_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_secs(2),
        drain_poll: Duration::from_millis(20),
        close_wait: Duration::from_millis(500),
        gc_flush: Duration::from_secs(3),
        http_header_timeout: Duration::from_secs(5),
        http_first_request_timeout: Duration::from_secs(2),
        refusal_log_interval: Duration::from_secs(10),
        gc: GcTiming {
            backoff_base: Duration::from_millis(20),
            backoff_cap: Duration::from_millis(200),
            default_fast: Duration::from_millis(100),
            default_comprehensive: Duration::from_millis(300),
            min_interval: Duration::from_millis(10),
            max_interval: Duration::from_secs(60),
            notify_attempts: 3,
            notify_retry: Duration::from_millis(20),
            notify_queue: 64,
        },
    }
}

pub fn config(o: &RigOpts, gc_url: Option<String>) -> ControlConfig {
    ControlConfig {
        control_listen: "127.0.0.1:0".parse().unwrap(),
        gc_url,
        gc_token: Some(GC_TOKEN.into()),
        gc_ca_certs: Vec::new(),
        gc_inbound_token: o.inbound.then(|| INBOUND.into()),
        admin_token: o.admin.then(|| ADMIN.into()),
        mc_id: "mc-test-1".into(),
        region: "eu-test".into(),
        advertise_quic: "mc1.test:4433".into(),
        advertise_webtransport: "https://mc1.test:4433/wt".into(),
        max_meetings: o.max_meetings,
        max_participants: 5000,
        drain_timeout: o.drain_timeout,
        gc_timeout: o.gc_timeout,
        version: "9.9.9-test".into(),
        shard_cpus: (0..o.shards).map(|i| Some(usize::from(i) + 10)).collect(),
    }
}

pub fn rig(o: RigOpts) -> Rig {
    let gc = o.gc.map(|(fast, comp)| {
        FakeGc::start(
            "127.0.0.1:0".parse().unwrap(),
            FakeGcConfig {
                fast_heartbeat_interval_ms: fast,
                comprehensive_heartbeat_interval_ms: comp,
                token: Some(GC_TOKEN.into()),
            },
        )
        .unwrap()
    });
    rig_with_gc(o, gc)
}

/// Like [`rig`] with a fake GC prepared by the caller (e.g. started `Down`).
pub fn rig_with_gc(o: RigOpts, gc: Option<FakeGc>) -> Rig {
    let cfg = config(&o, gc.as_ref().map(FakeGc::url));
    let rig = start_rig(&o, cfg, gc);
    // Every shard has answered at least once before a test starts.
    assert!(
        wait_for(|| http(&rig, "GET", "/health", None, None).0 == 200 && all_seen(&rig)),
        "controller did not come up"
    );
    rig
}

/// A control thread over `o`'s fake shards with configuration `cfg`, not waited for.
pub fn start_rig(o: &RigOpts, cfg: ControlConfig, gc: Option<FakeGc>) -> Rig {
    let (link, shards) = fake_runtime(FakeShardsConfig {
        shards: o.shards,
        max_meetings_per_shard: o.max_meetings_per_shard,
        mailbox: 64,
    });
    let ctl = start_with(
        cfg,
        link,
        ControlOptions {
            timing: timing(o.stale_after),
            handle_signals: false,
        },
    )
    .unwrap();
    Rig { ctl, shards, gc }
}

fn all_seen(rig: &Rig) -> bool {
    let text = rig.metrics();
    (0..rig.shards.len())
        .all(|i| metric_value(&text, "mc_shard_up", &[("shard", &i.to_string())]) == Some(1.0))
}

impl Rig {
    pub fn url(&self) -> String {
        self.ctl.url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.ctl.local_addr()
    }

    pub fn gc(&self) -> &FakeGc {
        self.gc.as_ref().expect("rig has a fake GC")
    }

    pub fn metrics(&self) -> String {
        let (status, body) = http(self, "GET", "/metrics", None, None);
        assert_eq!(status, 200);
        body
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics(), name, labels)
    }
}

/// The controller reports itself registered with the GC.
pub fn registered(rig: &Rig) -> bool {
    rig.metric("mc_gc_registered", &[]) == Some(1.0)
}

/// Polls every 10 ms until `f` holds (true) or [`PATIENCE`] runs out (false).
pub fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One HTTP request to the controller; `(status, body)`.
pub fn http(
    rig: &Rig,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    raw_http(&rig.url(), method, path, token, body)
}

pub fn raw_http(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .allow_non_standard_methods(true)
        .build()
        .into();
    let url = format!("{base}{path}");
    let mut req = ureq::http::Request::builder().method(method).uri(&url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header("Content-Type", "application/json");
    }
    let req = req.body(body.unwrap_or_default().to_owned()).unwrap();
    let mut resp = agent.run(req).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, text)
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Value of the sample `name{labels...}` (labels given are a subset of the sample's labels).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = match series.find('{') {
                Some(i) => (&series[..i], &series[i..]),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}
