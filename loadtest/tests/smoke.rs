//! Smoke test of the load generator against the real server: a short `meetings` run on loopback
//! must lose no delivery and report sane, ordered percentiles. No timing thresholds: this runs
//! on shared CI machines.
//!
//! The server binary belongs to the `mc` package. A workspace test run (`cargo nextest run
//! --workspace`, the README's test command) builds it next to this test's binaries, with the
//! same features, so nothing is rebuilt here; run alone, the test builds it once.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

const LOADTEST: &str = env!("CARGO_BIN_EXE_mc-loadtest");

/// `target/<profile>` of this test executable (`target/<profile>/deps/<test>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of the `mc` server binary of this build.
fn server_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(find_or_build_server).clone()
}

fn find_or_build_server() -> PathBuf {
    let dir = profile_dir();
    let bin = dir.join(format!("mc{}", std::env::consts::EXE_SUFFIX));
    if bin.is_file() {
        return bin;
    }
    let target = dir.parent().expect("target dir").to_path_buf();
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "mc", "--bin", "mc", "--target-dir"])
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd.status().expect("run cargo build -p mc");
    assert!(status.success(), "cargo build -p mc --bin mc failed");
    assert!(bin.is_file(), "{} missing after build", bin.display());
    bin
}

fn unique_dir(tag: &str) -> PathBuf {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mc-loadtest-{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The server, killed on drop.
struct Server {
    child: Child,
    quic: SocketAddr,
    control: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(dev_dir: &Path) -> Server {
    let mut child = Command::new(server_binary())
        .args([
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--control-listen",
            "127.0.0.1:0",
        ])
        .arg("--dev-dir")
        .arg(dev_dir)
        .args([
            "--shards",
            "2",
            "--io-memory",
            "262144",
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn mc serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("listening ") {
                let _ = tx.send(line);
            }
        }
    });
    let line = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(l) => l,
        Err(_) => {
            let _ = child.kill();
            panic!("mc serve did not print its `listening` line");
        }
    };
    let field = |k: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in `{line}`"))
    };
    let (quic, control) = (field("quic="), field("control="));
    Server {
        child,
        quic,
        control,
    }
}

fn ms(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{} is not a number in {v:#}", path.join(".")))
}

fn count(v: &Value, path: &[&str]) -> u64 {
    ms(v, path) as u64
}

#[test]
fn meetings_run_loses_nothing_and_reports_sane_percentiles() {
    smoke("quic");
}

#[test]
fn webtransport_meetings_run_loses_nothing() {
    smoke("webtransport");
}

fn smoke(transport: &str) {
    let bin = LOADTEST;
    let dir = unique_dir(&format!("smoke-{transport}"));
    let dev_dir = dir.join("dev");
    let server = start_server(&dev_dir);
    let plot = dir.join("latency.svg");
    let hlog = dir.join("latency.hlog");

    let out = Command::new(bin)
        .args([
            "--scenario",
            "meetings",
            "--meetings",
            "4",
            "--participants",
            "3",
        ])
        .args([
            "--rate",
            "20",
            "--ramp",
            "1s",
            "--duration",
            "3s",
            "--warmup",
            "1s",
        ])
        .args(["--drain", "5s", "--threads", "2", "--json", "--quiet"])
        .args(["--transport", transport])
        .arg("--server")
        .arg(server.quic.to_string())
        .arg("--dev-dir")
        .arg(&dev_dir)
        .arg("--metrics-url")
        .arg(format!("http://{}/metrics", server.control))
        .arg("--plot")
        .arg(&plot)
        .arg("--hlog")
        .arg(&hlog)
        .output()
        .expect("run mc-loadtest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mc-loadtest failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}); stderr: {stderr}"));

    // Everybody joined and stayed.
    assert_eq!(count(&report, &["connections", "joins"]), 12, "{report:#}");
    assert_eq!(
        count(&report, &["connections", "join_failures"]),
        0,
        "{report:#}"
    );
    assert_eq!(
        count(&report, &["connections", "disconnects"]),
        0,
        "{report:#}"
    );
    assert_eq!(report["errors"], serde_json::json!({}), "{report:#}");

    // Every owed delivery arrived: 12 senders, each message owed to at most the 2 others (on a
    // slow machine a sender may speak before it has seen a late joiner: that delivery is not
    // owed, and counts as unexpected if it arrives).
    let expected = count(&report, &["deliveries", "expected"]);
    let unexpected = count(&report, &["deliveries", "unexpected"]);
    let sent = count(&report, &["messages", "sent"]);
    assert!(sent > 0, "{report:#}");
    assert!(expected + unexpected <= 2 * sent, "{report:#}");
    assert!(expected >= sent, "{report:#}");
    assert_eq!(
        count(&report, &["deliveries", "received"]),
        expected,
        "{report:#}"
    );
    assert_eq!(count(&report, &["deliveries", "lost"]), 0, "{report:#}");
    assert_eq!(
        count(&report, &["deliveries", "duplicates"]),
        0,
        "{report:#}"
    );

    // Percentiles are ordered and backed by samples.
    for kind in ["delivery", "join", "handshake"] {
        let l = &report["latency"][kind];
        assert!(count(l, &["count"]) > 0, "{kind}: {report:#}");
        let (p50, p99, max) = (ms(l, &["p50_ms"]), ms(l, &["p99_ms"]), ms(l, &["max_ms"]));
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{kind}: {l}");
        assert!(ms(l, &["p90_ms"]) <= ms(l, &["p99_9_ms"]), "{kind}: {l}");
    }
    assert_eq!(count(&report, &["latency", "join", "count"]), 12);
    assert!(count(&report, &["messages", "delivered_window"]) > 0);

    // The controller's own view agrees: nothing dropped.
    let server_view = &report["server"];
    assert!(
        server_view.is_object(),
        "metrics were not scraped: {report:#}"
    );
    assert_eq!(ms(server_view, &["messages_dropped"]), 0.0, "{report:#}");
    // The controller's kernel drop counter is scraped (its value depends on how busy the CI
    // machine is, so only its presence is checked: QUIC recovers such drops, `lost` above).
    assert!(server_view["udp_receive_drops"].is_number(), "{report:#}");

    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.contains("delivery latency"));

    // The interval log parses with HdrHistogram's reader and holds every sample: each of the
    // 12 joins and handshakes once, and at least the measured window's deliveries.
    let totals = read_hlog(&hlog);
    assert_eq!(totals.get("join").copied(), Some(12), "{totals:?}");
    assert_eq!(totals.get("handshake").copied(), Some(12), "{totals:?}");
    let delivered = totals.get("delivery").copied().unwrap_or(0);
    assert!(
        delivered >= count(&report, &["latency", "delivery", "count"]),
        "{totals:?} vs {report:#}"
    );

    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Samples per tag over all intervals of an HdrHistogram interval log; checks that every
/// interval starts where the previous one of its tag ended.
fn read_hlog(path: &Path) -> std::collections::BTreeMap<String, u64> {
    use base64::Engine as _;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    let bytes = std::fs::read(path).expect("hlog written");
    let mut de = hdrhistogram::serialization::Deserializer::new();
    let mut totals = std::collections::BTreeMap::new();
    let mut ends: std::collections::BTreeMap<String, Duration> = Default::default();
    let mut base_time = false;
    for entry in IntervalLogIterator::new(&bytes) {
        match entry.expect("interval log line parses") {
            LogEntry::BaseTime(_) => base_time = true,
            LogEntry::StartTime(_) => {}
            LogEntry::Interval(i) => {
                let tag = i.tag().expect("tagged").as_str().to_owned();
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(i.encoded_histogram())
                    .expect("base64");
                let h: hdrhistogram::Histogram<u64> =
                    de.deserialize(&mut raw.as_slice()).expect("histogram");
                let end = ends.entry(tag.clone()).or_insert(Duration::ZERO);
                // Contiguous, up to the log's millisecond rounding.
                let gap = i.start_timestamp().abs_diff(*end);
                assert!(gap <= Duration::from_millis(2), "{tag}: gap of {gap:?}");
                *end = i.start_timestamp() + i.duration();
                *totals.entry(tag).or_insert(0) += h.len();
            }
        }
    }
    assert!(base_time, "BaseTime header");
    totals
}

#[test]
fn bad_flags_exit_with_usage_code() {
    let bin = LOADTEST;
    let out = Command::new(bin)
        .args(["--warmup", "10s", "--duration", "5s"])
        .output()
        .expect("run mc-loadtest");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--warmup"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");

    for (args, needle) in [
        (["--ack-every", "0"], "--ack-every"),
        (["--ack-delay", "30ms"], "--ack-delay"),
        (["--timer-slack", "2ms"], "--timer-slack"),
    ] {
        let out = Command::new(bin)
            .args(args)
            .output()
            .expect("run mc-loadtest");
        assert_eq!(out.status.code(), Some(64));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    }

    let dir = unique_dir("nokey");
    let out = Command::new(bin)
        .arg("--dev-dir")
        .arg(&dir)
        .output()
        .expect("run mc-loadtest");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mc serve --dev"));
    let _ = std::fs::remove_dir_all(&dir);

    // A flag clap rejects: its whole report (error, tip, usage) and the same exit code.
    let out = Command::new(bin)
        .args(["--meetngs", "5"])
        .output()
        .expect("run mc-loadtest");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "error: unexpected argument '--meetngs' found",
        "tip: a similar argument exists: '--meetings'",
        "Usage: mc-loadtest --meetings <MEETINGS>",
        "For more information, try '--help'.",
    ] {
        assert!(stderr.contains(needle), "`{needle}` in: {stderr}");
    }
    let out = Command::new(bin)
        .args(["--scenario", "meetigns"])
        .output()
        .expect("run mc-loadtest");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid value 'meetigns'"), "{stderr}");
    assert!(
        stderr.contains("tip: a similar value exists: 'meetings'"),
        "{stderr}"
    );

    let out = Command::new(bin)
        .arg("--help")
        .output()
        .expect("run mc-loadtest");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--hlog"));
}

#[test]
fn rolling_drain_moves_every_meeting_and_loses_nothing() {
    let out = Command::new(LOADTEST)
        .args([
            "--scenario",
            "rolling-drain",
            "--controllers",
            "2",
            "--meetings",
            "2",
            "--participants",
            "3",
            "--rate",
            "5",
            "--drain-interval",
            "1s",
            "--json",
        ])
        .arg("--mc-binary")
        .arg(server_binary())
        .stderr(Stdio::inherit())
        .output()
        .expect("run mc-loadtest");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert!(out.status.success(), "{report:#}");
    assert_eq!(count(&report, &["meetings_ended"]), 0, "{report:#}");
    assert_eq!(count(&report, &["participants_lost"]), 0, "{report:#}");
    assert_eq!(
        count(&report, &["participant_left_events"]),
        0,
        "{report:#}"
    );
    assert_eq!(count(&report, &["messages", "lost"]), 0, "{report:#}");
    assert_eq!(
        count(&report, &["messages", "out_of_order"]),
        0,
        "{report:#}"
    );
    assert!(count(&report, &["messages", "delivered"]) > 0, "{report:#}");
    // Every participant moved at least once (each controller was restarted once).
    assert!(
        count(&report, &["reconnect_gap", "count"]) >= 12,
        "{report:#}"
    );
    assert!(
        count(&report, &["migration_time_per_meeting", "count"]) >= 4,
        "{report:#}"
    );
    let p50 = ms(&report, &["reconnect_gap", "p50_ms"]);
    let p99 = ms(&report, &["reconnect_gap", "p99_ms"]);
    assert!(p50 > 0.0 && p50 <= p99, "{report:#}");
}

#[test]
fn rolling_drain_needs_two_controllers() {
    let st = Command::new(LOADTEST)
        .args(["--scenario", "rolling-drain", "--controllers", "1"])
        .stderr(Stdio::null())
        .status()
        .expect("run mc-loadtest");
    assert_eq!(st.code(), Some(64));
}
