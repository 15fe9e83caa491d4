//! The GC client against the fake GC: registration content, heartbeat cadence and figures,
//! faults (down, slow, 500, 401, forgotten controller, refused registration) and meeting-ended
//! notifications.

#[path = "control_support.rs"]
mod support;

use std::time::Duration;

use mc::control::gc::{Health, Heartbeat, HeartbeatKind, MeetingEndedNotice, RegisterRequest};
use mc::core::protocol::EndReason;
use mc_test_support::fake_gc::{FakeGc, FakeGcConfig, Fault, Received};
use support::*;

fn gc_rig(fast: u64, comp: u64) -> Rig {
    rig(RigOpts {
        gc: Some((fast, comp)),
        ..RigOpts::default()
    })
}

fn heartbeat(r: &Received) -> Heartbeat {
    r.json()
        .unwrap_or_else(|| panic!("not a heartbeat: {}", r.body))
}

fn assert_traceparent(tp: Option<&str>) {
    let tp = tp.expect("traceparent header");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len(), parts[3]),
        ("00", 32, 16, "01"),
        "{tp}"
    );
}

#[test]
fn registration_carries_the_controller_description() {
    let rig = gc_rig(60_000, 60_000);
    assert!(wait_for(|| registered(&rig)));
    let regs = rig.gc().registrations();
    assert_eq!(regs.len(), 1);
    let r = &regs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.status, 200);
    assert_eq!(r.authorization.as_deref(), Some("Bearer gc-secret"));
    assert_traceparent(r.traceparent.as_deref());
    let body: RegisterRequest = r.json().unwrap();
    assert_eq!(
        body,
        RegisterRequest {
            id: "mc-test-1".into(),
            region: "eu-test".into(),
            quic_endpoint: "mc1.test:4433".into(),
            webtransport_url: "https://mc1.test:4433/wt".into(),
            control_url: format!("http://{}", rig.addr()),
            shards: 2,
            max_meetings: 1000,
            max_participants: 5000,
            version: "9.9.9-test".into(),
        }
    );
    assert_eq!(rig.gc().known_controllers(), vec!["mc-test-1".to_owned()]);
    let (s, b) = http(&rig, "GET", "/ready", None, None);
    assert_eq!(
        (s, json(&b)["mode"].as_str().map(str::to_owned)),
        (200, Some("gc".to_owned()))
    );
    assert_eq!(
        rig.metric("mc_gc_registrations_total", &[("status", "success")]),
        Some(1.0)
    );
}

#[test]
fn heartbeats_follow_the_given_cadence_and_report_real_figures() {
    let rig = gc_rig(40, 120);
    let a = rig.shards.add_meeting("hb-a", 3, 3);
    let b = rig.shards.add_meeting("hb-b", 2, 1);
    rig.shards.edit_snapshot(a, |s| {
        s.mailbox_depth = [0, 4, 6];
        s.processing[2].p99_ms = 7.5;
    });
    let expect_meetings = 2;
    let expect_participants = 5;
    let gc = rig.gc();
    assert!(gc.wait_until(PATIENCE, |rs| {
        let hbs: Vec<&Received> = rs.iter().filter(|r| r.is_heartbeat()).collect();
        let fast = hbs.iter().filter(|r| r.body["kind"] == "fast").count();
        let comp = hbs
            .iter()
            .filter(|r| r.body["kind"] == "comprehensive")
            .count();
        fast >= 4 && comp >= 3
    }));
    let hbs = gc.heartbeats();
    assert_eq!(
        hbs[0].body["kind"], "comprehensive",
        "the first heartbeat is the full picture"
    );
    for r in &hbs {
        assert_eq!(r.path, "/api/v1/controllers/mc-test-1/heartbeat");
        assert_eq!(r.authorization.as_deref(), Some("Bearer gc-secret"));
        assert_traceparent(r.traceparent.as_deref());
        let h = heartbeat(r);
        assert_eq!(
            h.process.is_some(),
            h.kind == HeartbeatKind::Comprehensive,
            "process only on comprehensive"
        );
        if let Some(p) = h.process {
            assert!(p.rss_bytes > 0 && p.cpu_percent >= 0.0);
        }
    }
    // Spacing: never faster than the intervals the GC handed out.
    for (kind, iv) in [("fast", 40u128), ("comprehensive", 120u128)] {
        let times: Vec<_> = hbs
            .iter()
            .filter(|r| r.body["kind"] == kind)
            .map(|r| r.at)
            .collect();
        for w in times.windows(2) {
            let gap = w[1].duration_since(w[0]).as_millis();
            assert!(
                gap >= iv,
                "{kind} heartbeats {gap} ms apart, interval {iv} ms"
            );
        }
    }
    // Figures: the sums of what the shards report.
    let h = heartbeat(hbs.last().unwrap());
    assert_eq!(h.health, Health::Healthy);
    assert_eq!(h.capacity.max_meetings, 1000);
    assert_eq!(h.capacity.max_participants, 5000);
    assert_eq!(h.capacity.current_meetings, expect_meetings);
    assert_eq!(h.capacity.current_participants, expect_participants);
    assert_eq!(h.shards.len(), 2);
    let sa = &h.shards[usize::from(a)];
    assert_eq!(sa.shard, a);
    if a == b {
        assert_eq!((sa.meetings, sa.participants), (2, 5));
    } else {
        assert_eq!((sa.meetings, sa.participants), (1, 3));
        let sb = &h.shards[usize::from(b)];
        assert_eq!((sb.meetings, sb.participants), (1, 2));
    }
    assert!(sa.mailbox_depth >= 10);
    assert_eq!(sa.p99_processing_ms, 7.5);
    assert!(
        rig.metric(
            "mc_gc_heartbeats_total",
            &[("kind", "fast"), ("status", "success")]
        )
        .unwrap()
            >= 4.0
    );
    assert!(
        rig.metric(
            "mc_gc_heartbeat_duration_seconds_count",
            &[("kind", "comprehensive")]
        )
        .unwrap()
            >= 3.0
    );

    // A drain is reported at once, without waiting for the cadence.
    assert_eq!(http(&rig, "POST", "/admin/drain", Some(ADMIN), None).0, 200);
    assert!(gc.wait_until(PATIENCE, |rs| rs
        .iter()
        .any(|r| r.is_heartbeat() && r.body["health"] == "draining")));
}

#[test]
fn gc_down_at_start_then_up_registers() {
    let gc = FakeGc::start(
        "127.0.0.1:0".parse().unwrap(),
        FakeGcConfig {
            fast_heartbeat_interval_ms: 50,
            comprehensive_heartbeat_interval_ms: 100,
            token: Some(GC_TOKEN.into()),
        },
    )
    .unwrap();
    gc.set_fault(Fault::Down);
    let rig = rig_with_gc(RigOpts::default(), Some(gc));
    assert!(wait_for(|| rig
        .metric("mc_gc_registrations_total", &[("status", "error")])
        .unwrap_or(0.0)
        >= 3.0));
    let (s, b) = http(&rig, "GET", "/ready", None, None);
    assert_eq!(
        (s, json(&b)["reason"].clone()),
        (503, serde_json::json!("not_registered"))
    );
    assert_eq!(
        http(&rig, "GET", "/health", None, None).0,
        200,
        "alive while the GC is away"
    );
    assert_eq!(
        rig.gc().requests().len(),
        0,
        "nothing got through while down"
    );

    rig.gc().set_fault(Fault::None);
    assert!(wait_for(|| registered(&rig)));
    assert!(wait_for(|| http(&rig, "GET", "/ready", None, None).0 == 200));
    assert!(rig.gc().wait_until(PATIENCE, |rs| rs
        .iter()
        .any(|r| r.is_heartbeat() && r.status == 200)));
}

#[test]
fn refused_registration_is_retried_with_backoff() {
    let gc = FakeGc::start("127.0.0.1:0".parse().unwrap(), FakeGcConfig::default()).unwrap();
    gc.set_fault(Fault::AcceptFalse);
    let rig = rig_with_gc(RigOpts::default(), Some(gc));
    assert!(rig
        .gc()
        .wait_until(PATIENCE, |rs| rs.iter().filter(|r| r.is_register()).count()
            >= 3));
    assert!(
        rig.metric("mc_gc_registrations_total", &[("status", "rejected")])
            .unwrap()
            >= 3.0
    );
    assert_eq!(http(&rig, "GET", "/ready", None, None).0, 503);
    assert!(
        rig.gc().heartbeats().is_empty(),
        "no heartbeat before acceptance"
    );
    rig.gc().set_fault(Fault::None);
    assert!(wait_for(|| registered(&rig)));
}

#[test]
fn failed_heartbeats_are_counted_and_the_server_keeps_serving() {
    let rig = rig(RigOpts {
        gc: Some((30, 60)),
        gc_timeout: Duration::from_millis(200),
        ..RigOpts::default()
    });
    assert!(wait_for(|| registered(&rig)));
    let hb = |status: &str| {
        ["fast", "comprehensive"]
            .iter()
            .map(|k| {
                rig.metric("mc_gc_heartbeats_total", &[("kind", k), ("status", status)])
                    .unwrap()
            })
            .sum::<f64>()
    };

    rig.gc().set_fault(Fault::Slow(Duration::from_millis(1500)));
    assert!(wait_for(|| hb("timeout") >= 2.0));
    // Meanwhile the control server answers and takes assignments.
    assert_eq!(http(&rig, "GET", "/health", None, None).0, 200);
    let body = r#"{"meeting_id":"during-slow-gc","media_handlers":[]}"#;
    assert_eq!(
        http(
            &rig,
            "POST",
            "/internal/v1/meetings",
            Some(INBOUND),
            Some(body)
        )
        .0,
        200
    );
    assert_eq!(
        http(&rig, "GET", "/ready", None, None).0,
        200,
        "still registered: failures are not a 404"
    );

    rig.gc().set_fault(Fault::Status500);
    assert!(wait_for(|| hb("error") >= 2.0));
    rig.gc().set_fault(Fault::Unauthorized401);
    assert!(wait_for(|| hb("unauthorized") >= 2.0));

    let before = hb("success");
    rig.gc().set_fault(Fault::None);
    assert!(wait_for(|| hb("success") >= before + 2.0));
    assert_eq!(
        rig.gc().registrations().len(),
        1,
        "no re-registration for plain failures"
    );
}

#[test]
fn forgotten_controller_re_registers() {
    let rig = gc_rig(30, 60);
    assert!(wait_for(|| registered(&rig)));
    assert!(rig.gc().wait_until(PATIENCE, |rs| rs
        .iter()
        .any(|r| r.is_heartbeat() && r.status == 200)));
    rig.gc().set_fault(Fault::ForgetController);
    assert!(rig.gc().wait_until(PATIENCE, |rs| rs
        .iter()
        .filter(|r| r.is_register() && r.status == 200)
        .count()
        >= 2));
    assert!(rig.gc().heartbeats().iter().any(|r| r.status == 404));
    let nf: f64 = ["fast", "comprehensive"]
        .iter()
        .map(|k| {
            rig.metric(
                "mc_gc_heartbeats_total",
                &[("kind", k), ("status", "not_found")],
            )
            .unwrap()
        })
        .sum();
    assert!(nf >= 1.0);
    assert!(wait_for(|| registered(&rig)));
    // Heartbeats flow again after the new registration.
    let regs = rig.gc().registrations();
    let last_reg = regs.last().unwrap().at;
    assert!(rig.gc().wait_until(PATIENCE, |rs| rs
        .iter()
        .any(|r| r.is_heartbeat() && r.status == 200 && r.at > last_reg)));
}

#[test]
fn admin_reregister_forces_a_new_registration() {
    let rig = gc_rig(60_000, 60_000);
    assert!(wait_for(|| registered(&rig)));
    let (s, _) = http(&rig, "POST", "/admin/reregister", Some(ADMIN), None);
    assert_eq!(s, 202);
    assert!(rig
        .gc()
        .wait_until(PATIENCE, |rs| rs.iter().filter(|r| r.is_register()).count()
            >= 2));
    assert!(wait_for(|| registered(&rig)));
}

#[test]
fn ended_meetings_are_reported_to_the_gc() {
    let rig = gc_rig(60_000, 60_000);
    assert!(wait_for(|| registered(&rig)));
    rig.shards.add_meeting("by-admin", 2, 2);
    rig.shards.add_meeting("by-host", 1, 1);
    assert_eq!(
        http(
            &rig,
            "DELETE",
            "/admin/meetings/by-admin",
            Some(ADMIN),
            None
        )
        .0,
        200
    );
    assert!(rig.shards.end_meeting("by-host", EndReason::EndedByHost));
    let gc = rig.gc();
    assert!(gc.wait_until(PATIENCE, |rs| rs
        .iter()
        .filter(|r| r.is_meeting_ended())
        .count()
        >= 2));
    let ended = gc.meetings_ended();
    let find = |id: &str| {
        ended
            .iter()
            .find(|r| r.ended_meeting_id() == Some(id))
            .unwrap_or_else(|| panic!("{id} not reported"))
    };
    let admin: MeetingEndedNotice = find("by-admin").json().unwrap();
    assert_eq!(
        admin,
        MeetingEndedNotice {
            controller_id: "mc-test-1".into(),
            reason: "ended_by_admin".into()
        }
    );
    let host: MeetingEndedNotice = find("by-host").json().unwrap();
    assert_eq!(host.reason, "ended_by_host");
    assert_eq!(
        find("by-host").authorization.as_deref(),
        Some("Bearer gc-secret")
    );
    assert_traceparent(find("by-host").traceparent.as_deref());
    assert!(wait_for(|| rig
        .metric(
            "mc_gc_meeting_ended_notifications_total",
            &[("status", "success")]
        )
        .unwrap()
        >= 2.0));
}

#[test]
fn failed_notifications_are_retried_then_dropped() {
    let rig = gc_rig(60_000, 60_000);
    assert!(wait_for(|| registered(&rig)));
    rig.gc().set_fault(Fault::Status500);
    rig.shards.add_meeting("retry-me", 1, 1);
    assert!(rig.shards.end_meeting("retry-me", EndReason::EndedByHost));
    let status = |s: &str| {
        rig.metric("mc_gc_meeting_ended_notifications_total", &[("status", s)])
            .unwrap()
    };
    assert!(wait_for(|| status("dropped") >= 1.0));
    // notify_attempts = 3 in the test timing: three tries, then given up and counted.
    assert_eq!(status("error"), 3.0);
    let tries = rig
        .gc()
        .meetings_ended()
        .iter()
        .filter(|r| r.ended_meeting_id() == Some("retry-me"))
        .count();
    assert_eq!(tries, 3);

    rig.gc().set_fault(Fault::None);
    rig.shards.add_meeting("deliver-me", 1, 1);
    assert!(rig
        .shards
        .end_meeting("deliver-me", EndReason::EmptyTimeout));
    assert!(wait_for(|| status("success") >= 1.0));
    let ok = rig.gc().meetings_ended();
    let r = ok
        .iter()
        .find(|r| r.ended_meeting_id() == Some("deliver-me"))
        .unwrap();
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (200, Some("empty_timeout"))
    );
}

#[test]
fn standalone_makes_no_gc_traffic() {
    let gc = FakeGc::start("127.0.0.1:0".parse().unwrap(), FakeGcConfig::default()).unwrap();
    let rig = rig(RigOpts::default()); // no gc_url
    rig.shards.add_meeting("solo", 1, 1);
    assert_eq!(
        http(&rig, "DELETE", "/admin/meetings/solo", Some(ADMIN), None).0,
        200
    );
    assert_eq!(http(&rig, "GET", "/ready", None, None).0, 200);
    assert_eq!(rig.metric("mc_gc_registered", &[]), Some(0.0));
    assert_eq!(
        rig.metric("mc_gc_registrations_total", &[("status", "error")]),
        Some(0.0)
    );
    assert!(gc.requests().is_empty());
}
