//! The control HTTP server in front of fake shards: GC assignments, the admin API, liveness,
//! readiness and routing errors.

#[path = "control_support.rs"]
mod support;

use mc::control::{admin_command, AdminError, AdminVerb};
use mc::core::protocol::MediaHandler;
use serde_json::json;
use std::time::Duration;
use support::*;

fn assign_body(id: &str) -> String {
    json!({ "meeting_id": id, "media_handlers": [{ "id": "mh-1", "url": "https://mh1.test:4443/m" }] }).to_string()
}

fn assign(rig: &Rig, id: &str) -> (u16, serde_json::Value) {
    let (s, b) = http(
        rig,
        "POST",
        "/internal/v1/meetings",
        Some(INBOUND),
        Some(&assign_body(id)),
    );
    (s, json(&b))
}

#[test]
fn assignment_is_routed_to_the_owning_shard_and_idempotent() {
    let rig = rig(RigOpts::default());
    for id in ["standup", "retro-42", "all.hands_7"] {
        let (s, b) = assign(&rig, id);
        assert_eq!(s, 200, "{b}");
        let shard = rig.shards.shard_of(id);
        assert_eq!(b, json!({ "accepted": true, "shard": shard }));
        assert!(rig.shards.meetings(shard).contains(&id.to_owned()));
        assert_eq!(
            rig.shards.media_handlers(id).unwrap(),
            vec![MediaHandler {
                id: "mh-1".into(),
                url: "https://mh1.test:4443/m".into()
            }]
        );
        // Same meeting twice → same answer.
        assert_eq!(
            assign(&rig, id),
            (200, json!({ "accepted": true, "shard": shard }))
        );
    }
    let total: usize = (0..2).map(|i| rig.shards.meetings(i).len()).sum();
    assert_eq!(total, 3);
}

#[test]
fn assignment_rejects_beyond_controller_and_shard_capacity() {
    let rig = rig(RigOpts {
        max_meetings: 2,
        ..RigOpts::default()
    });
    assert_eq!(assign(&rig, "m-a").0, 200);
    assert_eq!(assign(&rig, "m-b").0, 200);
    let (s, b) = assign(&rig, "m-c");
    assert_eq!(
        (s, b),
        (
            409,
            json!({ "accepted": false, "rejection_reason": "at_capacity" })
        )
    );
    // An existing meeting keeps being accepted (idempotence beats capacity).
    assert_eq!(assign(&rig, "m-a").0, 200);

    let per_shard = support::rig(RigOpts {
        shards: 1,
        max_meetings_per_shard: 1,
        ..RigOpts::default()
    });
    assert_eq!(assign(&per_shard, "one").0, 200);
    assert_eq!(
        assign(&per_shard, "two"),
        (
            409,
            json!({ "accepted": false, "rejection_reason": "at_capacity" })
        )
    );
}

#[test]
fn assignment_while_draining_is_refused_but_existing_meetings_stay_accepted() {
    let rig = rig(RigOpts::default());
    assert_eq!(assign(&rig, "early").0, 200);
    assert_eq!(http(&rig, "POST", "/admin/drain", Some(ADMIN), None).0, 200);
    assert_eq!(
        assign(&rig, "late"),
        (
            503,
            json!({ "accepted": false, "rejection_reason": "draining" })
        )
    );
    assert_eq!(assign(&rig, "early").0, 200);
    assert_eq!(
        http(&rig, "POST", "/admin/undrain", Some(ADMIN), None).0,
        200
    );
    assert_eq!(assign(&rig, "late").0, 200);
}

#[test]
fn assignment_to_a_stuck_shard_is_unhealthy() {
    let rig = rig(RigOpts {
        stale_after: Duration::from_millis(300),
        ..RigOpts::default()
    });
    let id = "stuck-meeting";
    let shard = rig.shards.shard_of(id);
    rig.shards.set_stuck(shard, true);
    assert!(wait_for(
        || http(&rig, "GET", "/health", None, None).0 == 503
    ));
    assert_eq!(
        assign(&rig, id),
        (
            503,
            json!({ "accepted": false, "rejection_reason": "unhealthy" })
        )
    );
    rig.shards.set_stuck(shard, false);
    assert!(wait_for(|| assign(&rig, id).0 == 200));
}

#[test]
fn assignment_auth_and_input_errors() {
    let rig = rig(RigOpts::default());
    let path = "/internal/v1/meetings";
    let good = assign_body("m1");
    assert_eq!(http(&rig, "POST", path, None, Some(&good)).0, 401);
    assert_eq!(http(&rig, "POST", path, Some("wrong"), Some(&good)).0, 401);
    assert_eq!(
        http(&rig, "POST", path, Some(ADMIN), Some(&good)).0,
        401,
        "admin token is not the GC's"
    );
    assert_eq!(http(&rig, "GET", path, Some(INBOUND), None).0, 405);
    let bad = [
        "not json".to_owned(),
        json!({ "meeting_id": "has space", "media_handlers": [] }).to_string(),
        json!({ "meeting_id": "x".repeat(129), "media_handlers": [] }).to_string(),
        json!({ "meeting_id": "m" }).to_string(),
        json!({ "meeting_id": "m", "media_handlers": [], "surprise": true }).to_string(),
        json!({ "meeting_id": "m", "media_handlers": [{ "id": "a", "url": "nope" }] }).to_string(),
        json!({ "meeting_id": "m", "media_handlers": [{ "id": "a" }] }).to_string(),
        json!({ "meeting_id": "m", "media_handlers": (0..17).map(|i| json!({"id": format!("h{i}"), "url": "https://h"})).collect::<Vec<_>>() }).to_string(),
    ];
    for body in &bad {
        let (s, b) = http(&rig, "POST", path, Some(INBOUND), Some(body));
        assert_eq!(s, 400, "{body} → {b}");
        assert_eq!(json(&b)["error"], "invalid_request");
    }
    let huge = json!({ "meeting_id": "m", "media_handlers": [{ "id": "a", "url": format!("https://{}", "h".repeat(70 * 1024)) }] }).to_string();
    assert_eq!(http(&rig, "POST", path, Some(INBOUND), Some(&huge)).0, 413);
    assert!(rig.shards.meetings(0).is_empty() && rig.shards.meetings(1).is_empty());
    assert_eq!(http(&rig, "POST", path, Some(INBOUND), Some(&good)).0, 200);
}

#[test]
fn assignment_endpoint_is_disabled_without_an_inbound_token() {
    let rig = rig(RigOpts {
        inbound: false,
        ..RigOpts::default()
    });
    assert_eq!(
        http(
            &rig,
            "POST",
            "/internal/v1/meetings",
            Some(INBOUND),
            Some(&assign_body("m"))
        )
        .0,
        404
    );
}

#[test]
fn admin_api_is_disabled_without_a_token_and_closed_to_wrong_tokens() {
    let off = rig(RigOpts {
        admin: false,
        ..RigOpts::default()
    });
    for (m, p) in [
        ("GET", "/admin/meetings"),
        ("POST", "/admin/drain"),
        ("GET", "/admin/shards"),
        ("GET", "/admin/whatever"),
    ] {
        let (s, b) = http(&off, m, p, Some(ADMIN), None);
        assert_eq!(s, 404, "{m} {p}");
        assert_eq!(json(&b)["error"], "admin_disabled");
    }
    assert!(matches!(
        admin_command(&off.url(), ADMIN, AdminVerb::List, Duration::from_secs(5)),
        Err(AdminError::Disabled)
    ));

    let on = rig(RigOpts::default());
    for (m, p) in [
        ("GET", "/admin/meetings"),
        ("POST", "/admin/drain"),
        ("DELETE", "/admin/meetings/x"),
    ] {
        assert_eq!(http(&on, m, p, None, None).0, 401, "{m} {p} without token");
        assert_eq!(
            http(&on, m, p, Some("admin-secreT"), None).0,
            401,
            "{m} {p} wrong token"
        );
        assert_eq!(
            http(&on, m, p, Some(INBOUND), None).0,
            401,
            "{m} {p} GC token"
        );
    }
    assert_eq!(
        http(&on, "GET", "/ready", None, None).0,
        200,
        "failed drain attempts changed nothing"
    );
    assert!(matches!(
        admin_command(&on.url(), "nope", AdminVerb::List, Duration::from_secs(5)),
        Err(AdminError::Unauthorized)
    ));
}

#[test]
fn admin_lists_shows_and_ends_meetings() {
    let rig = rig(RigOpts::default());
    let s1 = rig.shards.add_meeting("alpha", 3, 2);
    let s2 = rig.shards.add_meeting("beta", 1, 1);
    let (s, b) = http(&rig, "GET", "/admin/meetings", Some(ADMIN), None);
    assert_eq!(s, 200);
    let b = json(&b);
    assert_eq!(b["count"], 2);
    assert_eq!(b["meetings"][0]["meeting_id"], "alpha");
    assert_eq!(b["meetings"][0]["shard"], s1);
    assert_eq!(b["meetings"][0]["participants"], 3);
    assert!(b["meetings"][0]["age_ms"].is_u64() && b["meetings"][0]["idle_ms"].is_u64());
    assert_eq!(b["meetings"][1]["meeting_id"], "beta");
    assert_eq!(b["meetings"][1]["shard"], s2);

    let (s, b) = http(&rig, "GET", "/admin/meetings/alpha", Some(ADMIN), None);
    assert_eq!(s, 200);
    let b = json(&b);
    assert_eq!(b["meeting_id"], "alpha");
    assert_eq!(b["participants"].as_array().map(Vec::len), Some(3));
    assert_eq!(b["participants"][0]["role"], "host");

    assert_eq!(
        http(&rig, "GET", "/admin/meetings/nope", Some(ADMIN), None).0,
        404
    );
    assert_eq!(
        http(&rig, "GET", "/admin/meetings/bad%20id", Some(ADMIN), None).0,
        400
    );
    assert_eq!(
        http(&rig, "POST", "/admin/meetings", Some(ADMIN), None).0,
        405
    );
    assert_eq!(
        http(&rig, "PUT", "/admin/meetings/alpha", Some(ADMIN), None).0,
        405
    );
    assert_eq!(http(&rig, "GET", "/admin/drain", Some(ADMIN), None).0, 405);
    assert_eq!(
        http(&rig, "GET", "/admin/nothing", Some(ADMIN), None).0,
        404
    );

    let (s, b) = http(&rig, "DELETE", "/admin/meetings/alpha", Some(ADMIN), None);
    assert_eq!(s, 200, "{b}");
    assert_eq!(json(&b)["ended"], true);
    assert!(rig
        .shards
        .requests(s1)
        .contains(&"EndMeeting(alpha,ended_by_admin)".to_owned()));
    assert!(!rig.shards.meetings(s1).contains(&"alpha".to_owned()));
    assert_eq!(
        http(&rig, "DELETE", "/admin/meetings/alpha", Some(ADMIN), None).0,
        404
    );

    // The same through the admin client.
    let url = rig.url();
    let t = Duration::from_secs(5);
    let table = admin_command(&url, ADMIN, AdminVerb::List, t).unwrap();
    assert!(table.lines().next().unwrap().starts_with("MEETING"));
    assert!(table.contains("beta") && !table.contains("alpha"));
    let shown = admin_command(&url, ADMIN, AdminVerb::Show { id: "beta".into() }, t).unwrap();
    assert_eq!(json(&shown)["meeting_id"], "beta");
    assert!(matches!(
        admin_command(&url, ADMIN, AdminVerb::Show { id: "gone".into() }, t),
        Err(AdminError::MeetingNotFound)
    ));
    admin_command(&url, ADMIN, AdminVerb::End { id: "beta".into() }, t).unwrap();
    assert!(rig.shards.meetings(s2).is_empty());
    let shards = admin_command(&url, ADMIN, AdminVerb::Shards, t).unwrap();
    assert_eq!(shards.lines().count(), 3, "{shards}");
    assert!(matches!(
        admin_command(&url, ADMIN, AdminVerb::Reregister, t),
        Err(AdminError::Status { status: 409, .. })
    ));
}

#[test]
fn admin_shards_reports_per_shard_figures() {
    let rig = rig(RigOpts::default());
    rig.shards.add_meeting("gamma", 4, 3);
    let g = rig.shards.shard_of("gamma");
    rig.shards.edit_snapshot(g, |s| {
        s.mailbox_depth = [1, 7, 9];
        s.processing[1].p50_ms = 0.25;
        s.processing[1].p99_ms = 3.5;
        s.datagrams_forwarded = 77;
        s.handoffs_out = 5;
        s.cpu_seconds = 1.5;
    });
    let (s, b) = http(&rig, "GET", "/admin/shards", Some(ADMIN), None);
    assert_eq!(s, 200);
    let b = json(&b);
    let sh = &b["shards"][usize::from(g)];
    assert_eq!(sh["shard"], g);
    assert_eq!(sh["cpu"], usize::from(g) as u64);
    assert_eq!(sh["up"], true);
    assert_eq!(sh["meetings"], 1);
    assert_eq!(sh["participants"], 4);
    assert_eq!(sh["connections"], 3);
    assert!(sh["mailbox_depth"]["controller"].as_u64().unwrap() >= 1);
    assert_eq!(sh["mailbox_depth"]["meeting"], 7);
    assert_eq!(sh["mailbox_depth"]["connection"], 9);
    assert_eq!(sh["processing"]["meeting"]["p99_ms"], 3.5);
    assert_eq!(sh["processing"]["meeting"]["p50_ms"], 0.25);
    assert_eq!(sh["datagrams_forwarded"], 77);
    assert_eq!(sh["handoffs_out"], 5);
    assert_eq!(sh["cpu_seconds"], 1.5);
    assert_eq!(b["shards"].as_array().map(Vec::len), Some(2));
}

#[test]
fn drain_and_undrain_flip_readiness_and_the_shards() {
    let rig = rig(RigOpts::default());
    let (s, b) = http(&rig, "GET", "/ready", None, None);
    assert_eq!((s, json(&b)["mode"].clone()), (200, json!("standalone")));
    assert_eq!(rig.metric("mc_draining", &[]), Some(0.0));

    let out = admin_command(&rig.url(), ADMIN, AdminVerb::Drain, Duration::from_secs(5)).unwrap();
    assert_eq!(json(&out)["draining"], true);
    let (s, b) = http(&rig, "GET", "/ready", None, None);
    assert_eq!(s, 503);
    assert_eq!(json(&b)["reason"], "draining");
    assert!((0..2).all(|i| rig.shards.is_draining(i)));
    assert_eq!(rig.metric("mc_draining", &[]), Some(1.0));
    assert_eq!(
        http(&rig, "GET", "/health", None, None).0,
        200,
        "draining is alive"
    );

    admin_command(
        &rig.url(),
        ADMIN,
        AdminVerb::Undrain,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(http(&rig, "GET", "/ready", None, None).0, 200);
    assert!((0..2).all(|i| !rig.shards.is_draining(i)));
    assert_eq!(rig.metric("mc_draining", &[]), Some(0.0));
    let (s, b) = http(&rig, "POST", "/admin/undrain", Some(ADMIN), None);
    assert_eq!((s, json(&b)["changed"].clone()), (200, json!(false)));
}

#[test]
fn health_names_a_stuck_shard_and_recovers() {
    let rig = rig(RigOpts {
        shards: 3,
        stale_after: Duration::from_millis(300),
        ..RigOpts::default()
    });
    assert_eq!(
        json(&http(&rig, "GET", "/health", None, None).1)["shards"],
        3
    );
    rig.shards.set_stuck(1, true);
    assert!(wait_for(
        || http(&rig, "GET", "/health", None, None).0 == 503
    ));
    let b = json(&http(&rig, "GET", "/health", None, None).1);
    assert_eq!(b["stuck_shards"].as_array().map(Vec::len), Some(1), "{b}");
    assert_eq!(b["stuck_shards"][0]["shard"], 1);
    assert!(b["message"].as_str().unwrap().contains("shard 1"));
    let (s, r) = http(&rig, "GET", "/ready", None, None);
    assert_eq!(s, 503);
    assert_eq!(json(&r)["shards"], json!([1]));
    // The control server keeps serving everything else meanwhile.
    assert_eq!(http(&rig, "GET", "/metrics", None, None).0, 200);
    assert_eq!(rig.metric("mc_shard_up", &[("shard", "1")]), Some(0.0));
    rig.shards.set_stuck(1, false);
    assert!(wait_for(
        || http(&rig, "GET", "/health", None, None).0 == 200
    ));
    assert!(wait_for(|| http(&rig, "GET", "/ready", None, None).0 == 200));
}

#[test]
fn unknown_paths_and_methods() {
    let rig = rig(RigOpts::default());
    let (s, b) = http(&rig, "GET", "/nope", None, None);
    assert_eq!(s, 404);
    assert_eq!(json(&b)["error"], "not_found");
    assert_eq!(http(&rig, "POST", "/health", None, None).0, 405);
    assert_eq!(http(&rig, "DELETE", "/metrics", None, None).0, 405);
    assert_eq!(http(&rig, "POST", "/ready", None, Some("{}")).0, 405);
    assert_eq!(
        http(
            &rig,
            "GET",
            "/internal/v1/meetings/extra",
            Some(INBOUND),
            None
        )
        .0,
        404
    );
}

#[test]
fn requests_waiting_on_shards_are_bounded_and_the_probes_still_answer() {
    let rig = rig(RigOpts {
        shards: 2,
        stale_after: Duration::from_secs(30),
        ..RigOpts::default()
    });
    for s in 0..2 {
        rig.shards.set_stuck(s, true);
    }
    // 40 admin listings at once, each waiting 2 s on the stuck shards: 32 may wait, the rest
    // are refused at once.
    let url = rig.url();
    let listings: Vec<_> = (0..40)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || raw_http(&url, "GET", "/admin/meetings", Some(ADMIN), None))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile the probes answer.
    assert_eq!(http(&rig, "GET", "/health", None, None).0, 200);
    assert_eq!(http(&rig, "GET", "/ready", None, None).0, 200);
    let mut busy = 0;
    for t in listings {
        let (status, body) = t.join().unwrap();
        match status {
            200 => {}
            503 => {
                assert_eq!(json(&body)["error"], "busy", "{body}");
                busy += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    // All 40 overlap unless the machine delays some by seconds: 8 refused, never more.
    assert!((1..=8).contains(&busy), "{busy} refused");
    for s in 0..2 {
        rig.shards.set_stuck(s, false);
    }
    assert_eq!(
        rig.metric("mc_control_refusals_total", &[("reason", "busy")]),
        Some(f64::from(busy))
    );
    // Capacity is back once they are answered.
    assert_eq!(http(&rig, "GET", "/metrics", None, None).0, 200);
}
