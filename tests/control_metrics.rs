//! `/metrics`: every name the spec and the runbook rely on, for every shard, with values taken
//! from the shards at scrape time, in a format `promtool check metrics` accepts.

#[path = "control_support.rs"]
mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use mc::runtime::link::{LatencySnapshot, LATENCY_BUCKETS};
use support::*;

/// Per-shard series (name, extra labels that must exist on it).
const PER_SHARD: &[(&str, &[(&str, &str)])] = &[
    ("mc_actor_mailbox_depth", &[("actor_type", "controller")]),
    ("mc_actor_mailbox_depth", &[("actor_type", "meeting")]),
    ("mc_actor_mailbox_depth", &[("actor_type", "connection")]),
    (
        "mc_message_processing_duration_seconds_bucket",
        &[("actor_type", "meeting"), ("le", "+Inf")],
    ),
    (
        "mc_message_processing_duration_seconds_count",
        &[("actor_type", "connection")],
    ),
    (
        "mc_message_processing_duration_seconds_sum",
        &[("actor_type", "controller")],
    ),
    ("mc_meetings_active", &[]),
    ("mc_connections_active", &[]),
    ("mc_participants_active", &[]),
    (
        "mc_messages_dropped_total",
        &[("actor_type", "meeting"), ("reason", "mailbox_full")],
    ),
    ("mc_actor_panics_total", &[("actor_type", "controller")]),
    ("mc_actor_panics_total", &[("actor_type", "meeting")]),
    ("mc_actor_panics_total", &[("actor_type", "connection")]),
    ("mc_handshakes_total", &[]),
    ("mc_datagrams_forwarded_total", &[]),
    ("mc_connection_handoffs_total", &[]),
    ("mc_shard_cpu_seconds_total", &[]),
    ("mc_shard_up", &[]),
];

/// Process-wide series.
const GLOBAL: &[(&str, &[(&str, &str)])] = &[
    (
        "mc_gc_heartbeats_total",
        &[("kind", "fast"), ("status", "success")],
    ),
    (
        "mc_gc_heartbeats_total",
        &[("kind", "comprehensive"), ("status", "timeout")],
    ),
    (
        "mc_gc_heartbeats_total",
        &[("kind", "fast"), ("status", "not_found")],
    ),
    (
        "mc_gc_heartbeats_total",
        &[("kind", "fast"), ("status", "unauthorized")],
    ),
    (
        "mc_gc_heartbeats_total",
        &[("kind", "fast"), ("status", "error")],
    ),
    (
        "mc_gc_heartbeat_duration_seconds_bucket",
        &[("kind", "fast"), ("le", "+Inf")],
    ),
    (
        "mc_gc_heartbeat_duration_seconds_count",
        &[("kind", "comprehensive")],
    ),
    ("mc_gc_registered", &[]),
    ("mc_gc_registrations_total", &[("status", "success")]),
    (
        "mc_gc_meeting_ended_notifications_total",
        &[("status", "success")],
    ),
    (
        "mc_control_refusals_total",
        &[("reason", "first_request_timeout")],
    ),
    ("mc_control_refusals_total", &[("reason", "evicted")]),
    ("mc_control_refusals_total", &[("reason", "peer_limit")]),
    ("mc_control_refusals_total", &[("reason", "table_full")]),
    ("mc_control_refusals_total", &[("reason", "busy")]),
    ("mc_control_refusals_total", &[("reason", "accept_error")]),
    ("mc_draining", &[]),
    ("mc_shards", &[]),
    ("mc_capacity_max_meetings", &[]),
    ("mc_capacity_max_participants", &[]),
    ("mc_build_info", &[("version", "9.9.9-test")]),
];

#[test]
fn every_metric_exists_for_every_shard() {
    let rig = rig(RigOpts {
        shards: 3,
        ..RigOpts::default()
    });
    let text = rig.metrics();
    for shard in ["0", "1", "2"] {
        for (name, labels) in PER_SHARD {
            let mut l = labels.to_vec();
            l.push(("shard", shard));
            assert!(
                metric_value(&text, name, &l).is_some(),
                "missing {name}{l:?}\n{text}"
            );
        }
    }
    for (name, labels) in GLOBAL {
        assert!(
            metric_value(&text, name, labels).is_some(),
            "missing {name}{labels:?}"
        );
    }
    assert_eq!(metric_value(&text, "mc_shards", &[]), Some(3.0));
    assert_eq!(
        metric_value(&text, "mc_capacity_max_meetings", &[]),
        Some(1000.0)
    );
    assert_eq!(
        metric_value(&text, "mc_capacity_max_participants", &[]),
        Some(5000.0)
    );
    assert_eq!(metric_value(&text, "mc_build_info", &[]), Some(1.0));
    assert_eq!(
        metric_value(&text, "mc_gc_registered", &[]),
        Some(0.0),
        "standalone"
    );
    // Counters carry `_total` exactly once, and TYPE lines name the family correctly.
    assert!(!text.contains("_total_total"));
    assert!(text.contains("# TYPE mc_messages_dropped_total counter"));
    assert!(text.contains("# TYPE mc_message_processing_duration_seconds histogram"));
    assert!(text.contains("# TYPE mc_actor_mailbox_depth gauge"));
    // Cardinality rule: only these label names exist, none of them per meeting or participant.
    let allowed = [
        "shard",
        "actor_type",
        "reason",
        "result",
        "kind",
        "status",
        "le",
        "version",
        // Migration: `exported`/`imported` and `notified`/`returned`/`lost`.
        "direction",
        "outcome",
    ];
    // The migration series exist at zero before any migration (alerts and dashboards get data).
    for (name, labels) in [
        ("mc_migrations_started_total", &[][..]),
        ("mc_migrations_completed_total", &[][..]),
        (
            "mc_migrations_failed_total",
            &[("reason", "gc_refused")][..],
        ),
        (
            "mc_migration_participants_total",
            &[("shard", "1"), ("outcome", "lost")][..],
        ),
        (
            "mc_migration_meetings_total",
            &[("shard", "0"), ("direction", "imported")][..],
        ),
    ] {
        assert_eq!(
            metric_value(&text, name, labels),
            Some(0.0),
            "{name} {labels:?}"
        );
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(labels) = line
            .split_once('{')
            .and_then(|(_, r)| r.split_once('}'))
            .map(|(l, _)| l)
        else {
            continue;
        };
        for pair in labels.split(',') {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            assert!(allowed.contains(&key), "unexpected label {key} in {line}");
        }
    }
}

/// The standard `process_*` family describes this process (the control thread runs in the test
/// process): its own RSS, CPU time, descriptors and start time, read at scrape time.
#[test]
fn process_family_describes_this_process() {
    let rig = rig(RigOpts::default());
    // Spend at least 50 ms of CPU first (the kernel counts in 10 ms ticks).
    let own_cpu_ticks = || {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        f[0] + f[1]
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut x = 0u64;
    while (own_cpu_ticks() as f64) / hz < 0.05 {
        for i in 0..1_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
    let text = rig.metrics();
    for (name, kind) in [
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}")),
            "{name} {kind}:\n{text}"
        );
    }
    let value = |name: &str| {
        metric_value(&text, name, &[]).unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    // Resident memory: at least what /proc/self/statm says now, give or take the scrape's own
    // allocations (same order of magnitude, not zero).
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: f64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    let rss = value("process_resident_memory_bytes");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    let rss_now = pages * page;
    assert!(rss > 1e6 && rss < 4.0 * rss_now, "{rss} vs {rss_now}");
    let fds = value("process_open_fds");
    let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as f64;
    assert!(fds >= 3.0 && fds <= open_now + 16.0, "{fds} vs {open_now}");
    let max = value("process_max_fds");
    assert!(max >= fds, "{max} < {fds}");
    // The limit is this process's soft RLIMIT_NOFILE, as the shell reports it.
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let soft: f64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(max, soft);
    let cpu = value("process_cpu_seconds_total");
    assert!(cpu >= 0.05, "{cpu}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value("process_start_time_seconds");
    assert!(
        started <= now + 2.0 && started > now - 3600.0,
        "{started} vs {now}"
    );
    // CPU time only grows.
    let later = metric_value(&rig.metrics(), "process_cpu_seconds_total", &[]).unwrap();
    assert!(later >= cpu, "{later} < {cpu}");
}

#[test]
fn values_are_the_shards_figures_at_scrape_time() {
    let rig = rig(RigOpts::default());
    let m = rig.shards.add_meeting("metrics-1", 5, 4);
    rig.shards.set_loose_connections(m, 2);
    let mut l = LatencySnapshot {
        count: 10,
        sum_seconds: 0.004,
        ..Default::default()
    };
    l.buckets = (0..=LATENCY_BUCKETS.len())
        .map(|i| if i < 4 { 6 } else { 10 })
        .collect();
    rig.shards.edit_snapshot(m, |s| {
        s.mailbox_depth = [2, 11, 13];
        s.processing[1] = l.clone();
        s.dropped = vec![
            ("meeting", "mailbox_full", 4),
            ("connection", "rate_limited", 9),
        ];
        s.panics = vec![("meeting", 1)];
        s.joins = vec![("ok", 12), ("not_found", 2)];
        s.token_failures = vec![("expired", 3)];
        s.handshakes = 20;
        s.datagrams_forwarded = 31;
        s.udp_receive_drops = Some(17);
        s.datagrams_from_peers = 5;
        s.datagrams_dropped = vec![("unparseable", 2), ("queue_delay", 7)];
        s.connections_refused = 3;
        s.retry_tokens_invalid = 4;
        s.handoffs_out = 6;
        s.cpu_seconds = 2.5;
    });
    let sh = m.to_string();
    let sh = sh.as_str();
    let text = rig.metrics();
    let v = |name: &str, labels: &[(&str, &str)]| {
        let mut l = labels.to_vec();
        l.push(("shard", sh));
        metric_value(&text, name, &l).unwrap_or_else(|| panic!("missing {name}{l:?}"))
    };
    assert_eq!(v("mc_meetings_active", &[]), 1.0);
    assert_eq!(v("mc_participants_active", &[]), 5.0);
    assert_eq!(v("mc_connections_active", &[]), 6.0);
    assert!(v("mc_actor_mailbox_depth", &[("actor_type", "controller")]) >= 2.0);
    assert_eq!(
        v("mc_actor_mailbox_depth", &[("actor_type", "meeting")]),
        11.0
    );
    assert_eq!(
        v("mc_actor_mailbox_depth", &[("actor_type", "connection")]),
        13.0
    );
    assert_eq!(
        v(
            "mc_message_processing_duration_seconds_count",
            &[("actor_type", "meeting")]
        ),
        10.0
    );
    assert_eq!(
        v(
            "mc_message_processing_duration_seconds_sum",
            &[("actor_type", "meeting")]
        ),
        0.004
    );
    let le3 = format!("{}", LATENCY_BUCKETS[3]);
    assert_eq!(
        v(
            "mc_message_processing_duration_seconds_bucket",
            &[("actor_type", "meeting"), ("le", le3.as_str())]
        ),
        6.0
    );
    assert_eq!(
        v(
            "mc_message_processing_duration_seconds_bucket",
            &[("actor_type", "meeting"), ("le", "+Inf")]
        ),
        10.0
    );
    assert_eq!(
        v(
            "mc_messages_dropped_total",
            &[("actor_type", "meeting"), ("reason", "mailbox_full")]
        ),
        4.0
    );
    assert_eq!(
        v(
            "mc_messages_dropped_total",
            &[("actor_type", "connection"), ("reason", "rate_limited")]
        ),
        9.0
    );
    assert_eq!(
        v("mc_actor_panics_total", &[("actor_type", "meeting")]),
        1.0
    );
    assert_eq!(
        v("mc_actor_panics_total", &[("actor_type", "connection")]),
        0.0
    );
    assert_eq!(v("mc_joins_total", &[("result", "ok")]), 12.0);
    assert_eq!(v("mc_token_failures_total", &[("reason", "expired")]), 3.0);
    assert_eq!(v("mc_handshakes_total", &[]), 20.0);
    assert_eq!(v("mc_datagrams_forwarded_total", &[]), 31.0);
    assert_eq!(v("mc_udp_receive_drops_total", &[]), 17.0);
    assert_eq!(v("mc_datagrams_from_peers_total", &[]), 5.0);
    assert_eq!(
        v("mc_datagrams_dropped_total", &[("reason", "queue_delay")]),
        7.0
    );
    assert_eq!(
        v("mc_datagrams_dropped_total", &[("reason", "unparseable")]),
        2.0
    );
    assert_eq!(v("mc_connections_refused_total", &[]), 3.0);
    assert_eq!(v("mc_retry_tokens_invalid_total", &[]), 4.0);
    // A shard whose kernel does not report drops has no series rather than a false zero.
    let other = if m == 0 { "1" } else { "0" };
    assert_eq!(
        metric_value(&text, "mc_udp_receive_drops_total", &[("shard", other)]),
        None
    );
    assert_eq!(v("mc_connection_handoffs_total", &[]), 6.0);
    assert_eq!(v("mc_shard_cpu_seconds_total", &[]), 2.5);

    // A change on the shard shows at the next scrape, with no waiting for a poll.
    rig.shards.add_meeting("metrics-2-on-any-shard", 1, 1);
    let total: f64 = (0..2)
        .map(|i| {
            rig.metric("mc_meetings_active", &[("shard", &i.to_string())])
                .unwrap()
        })
        .sum();
    assert_eq!(total, 2.0);
}

#[test]
fn exposition_passes_promtool() {
    let rig = rig(RigOpts {
        shards: 2,
        gc: Some((50, 100)),
        ..RigOpts::default()
    });
    rig.shards.add_meeting("p-1", 2, 2);
    rig.shards.edit_snapshot(0, |s| {
        s.joins = vec![("ok", 1)];
        s.token_failures = vec![("bad_signature", 1)];
    });
    assert!(wait_for(|| registered(&rig)));
    let text = rig.metrics();
    let promtool = ["/usr/bin/promtool", "promtool"].into_iter().find(|p| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(promtool) = promtool else {
        eprintln!("\n*** SKIPPED: promtool not found; `promtool check metrics` was NOT run ***\n");
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
