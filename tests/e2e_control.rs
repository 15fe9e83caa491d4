//! The control plane against the real server: metrics for every shard, admin API, drain
//! under traffic, and GC integration with the fake GC (a real HTTP server).

mod support;

use std::time::{Duration, Instant};

use mc::core::protocol::{ClientMessage, EndReason, ErrorCode, MediaHandler, Role, ServerMessage};
use mc_test_support::fake_gc::{FakeGc, FakeGcConfig};
use support::{
    http_request, metric_sum, metric_values, participant_id, unique_dir, Client, Server,
};

const T: Duration = Duration::from_secs(10);

fn write_secret(dir: &std::path::Path, name: &str, value: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, value).unwrap();
    p.display().to_string()
}

#[test]
fn metrics_have_every_named_series_for_every_shard() {
    let server = Server::start("metrics", &["--shards", "2"]);
    let mut a = Client::connect(server.quic);
    a.join_ok(
        "metered",
        &server.token("metered", Role::Participant, "a"),
        "a",
    );
    let mut b = Client::connect(server.quic);
    b.join_ok(
        "metered",
        &server.token("metered", Role::Participant, "b"),
        "b",
    );
    a.send(&ClientMessage::Message {
        payload: serde_json::json!("x"),
        to: None,
    });
    b.expect("message", |m| matches!(m, ServerMessage::Message { .. }));
    let m = server.metrics_when(T, |m| {
        metric_sum(m, "mc_connections_active", "") == 2.0
            && metric_sum(
                m,
                "mc_message_processing_duration_seconds_count",
                "actor_type=\"connection\"",
            ) >= 4.0
    });
    for name in [
        "mc_actor_mailbox_depth",
        "mc_message_processing_duration_seconds_bucket",
        "mc_meetings_active",
        "mc_connections_active",
        "mc_messages_dropped_total",
        "mc_actor_panics_total",
    ] {
        for shard in ["0", "1"] {
            assert!(
                metric_values(&m, name)
                    .iter()
                    .any(|(l, _)| l.contains(&format!("shard=\"{shard}\""))),
                "{name} has no series for shard {shard}\n{m}"
            );
        }
    }
    for actor in ["controller", "meeting", "connection"] {
        assert!(
            m.contains(&format!("mc_actor_mailbox_depth{{actor_type=\"{actor}\""))
                || m.contains(&format!("actor_type=\"{actor}\"")),
            "{actor}"
        );
    }
    assert!(m.contains("mc_gc_registered"), "mc_gc_registered missing");
    assert_eq!(
        metric_sum(&m, "mc_meetings_active", ""),
        1.0,
        "one meeting in total"
    );
    assert_eq!(metric_sum(&m, "mc_connections_active", ""), 2.0);
    // The message was processed by the meeting actor: its histogram counted it.
    assert!(
        metric_sum(
            &m,
            "mc_message_processing_duration_seconds_count",
            "actor_type=\"meeting\""
        ) >= 1.0
    );
    assert!(
        metric_sum(
            &m,
            "mc_message_processing_duration_seconds_count",
            "actor_type=\"connection\""
        ) >= 4.0
    );
    // promtool agrees the exposition is valid.
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!text.contains("error"), "promtool: {text}");
    } else {
        eprintln!("WARNING: promtool not installed; exposition format not checked by promtool");
    }
}

#[test]
fn admin_api_lists_shows_and_ends_meetings() {
    let dir = unique_dir("admin-secrets");
    let token_file = write_secret(&dir, "admin", "s3cret-admin-token\n");
    let server = Server::start(
        "admin",
        &["--shards", "2", "--admin-token-file", &token_file],
    );
    let auth = Some("s3cret-admin-token");
    assert_eq!(server.http("GET", "/admin/meetings", None).0, 401);
    assert_eq!(server.http("GET", "/admin/meetings", Some("wrong")).0, 401);

    let mut host = Client::connect(server.quic);
    let host_id =
        participant_id(&host.join_ok("ops", &server.token("ops", Role::Host, "h"), "host"));
    let mut p = Client::connect(server.quic);
    p.join_ok("ops", &server.token("ops", Role::Participant, "p"), "p");
    let mut other = Client::connect(server.quic);
    other.join_ok("other", &server.token("other", Role::Participant, "o"), "o");

    let (status, body) = server.http("GET", "/admin/meetings", auth);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let text = v.to_string();
    assert!(
        text.contains("\"ops\"") && text.contains("\"other\""),
        "{text}"
    );
    let (status, body) = server.http("GET", "/admin/meetings/ops", auth);
    assert_eq!(status, 200);
    assert!(body.contains(&host_id), "{body}");
    assert_eq!(server.http("GET", "/admin/meetings/nope", auth).0, 404);
    let (status, body) = server.http("GET", "/admin/shards", auth);
    assert_eq!(status, 200);
    assert!(
        body.contains("mailbox") || body.contains("meetings"),
        "{body}"
    );

    let (status, _) = server.http("DELETE", "/admin/meetings/ops", auth);
    assert_eq!(status, 200);
    for c in [&mut host, &mut p] {
        c.expect("meeting_ended by admin", |m| {
            matches!(
                m,
                ServerMessage::MeetingEnded {
                    reason: EndReason::EndedByAdmin
                }
            )
        });
        assert_eq!(
            c.wait_closed(T),
            Some(support::Closed { app: true, code: 0 })
        );
    }
    // The other meeting is untouched.
    assert!(other.closed().is_none());
    other.send(&ClientMessage::Ping { id: 5 });
    other.expect("pong", |m| matches!(m, ServerMessage::Pong { id: 5 }));
    let (_, body) = server.http("GET", "/admin/meetings", auth);
    assert!(!body.contains("\"ops\""), "{body}");

    // Drain/undrain flip readiness.
    wait_ready(&server);
    assert_eq!(server.http("POST", "/admin/drain", auth).0, 200);
    assert_eq!(server.http("GET", "/ready", None).0, 503);
    let mut late = Client::connect(server.quic);
    late.join("fresh", &server.token("fresh", Role::Host, "l"), "late");
    late.expect("capacity_exceeded while draining", |m| {
        matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::CapacityExceeded,
                ..
            }
        )
    });
    assert_eq!(server.http("POST", "/admin/undrain", auth).0, 200);
    assert_eq!(server.http("GET", "/ready", None).0, 200);
    let mut again = Client::connect(server.quic);
    again.join_ok("fresh", &server.token("fresh", Role::Host, "l"), "late");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn admin_is_disabled_without_a_token() {
    let server = Server::start("noadmin", &["--shards", "1"]);
    assert_eq!(server.http("GET", "/admin/meetings", None).0, 404);
    assert_eq!(
        server.http("GET", "/admin/meetings", Some("anything")).0,
        404
    );
    wait_ready(&server);
    assert_eq!(server.http("GET", "/health", None).0, 200);
}

/// Readiness needs one round of shard answers after start.
fn wait_ready(server: &Server) {
    let deadline = Instant::now() + T;
    while server.http("GET", "/ready", None).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "never ready: {}",
            server.http("GET", "/ready", None).1
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_drains_under_traffic_without_losing_messages() {
    let mut server = Server::start("drain", &["--shards", "2", "--drain-timeout", "3s"]);
    let mut sender = Client::connect(server.quic);
    sender.join_ok("live", &server.token("live", Role::Participant, "s"), "s");
    let mut receiver = Client::connect(server.quic);
    receiver.join_ok("live", &server.token("live", Role::Participant, "r"), "r");

    let mut sent = 0u64;
    let send_one = |c: &mut Client, n: &mut u64| {
        c.send(&ClientMessage::Message {
            payload: serde_json::json!({ "n": *n }),
            to: None,
        });
        *n += 1;
    };
    for _ in 0..10 {
        send_one(&mut sender, &mut sent);
    }
    wait_ready(&server);
    server.sigterm();
    // Readiness goes false while the meeting keeps running.
    let deadline = Instant::now() + T;
    while server.http("GET", "/ready", None).0 != 503 {
        assert!(Instant::now() < deadline, "readiness did not go false");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut newcomer = Client::connect(server.quic);
    newcomer.join("live", &server.token("live", Role::Participant, "n"), "n");
    newcomer.expect("capacity_exceeded while draining", |m| {
        matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::CapacityExceeded,
                ..
            }
        )
    });
    // Keep sending until the drain deadline ends the meeting.
    let start = Instant::now();
    let mut ended = false;
    while start.elapsed() < Duration::from_secs(15) {
        if sender
            .received
            .iter()
            .any(|m| matches!(m, ServerMessage::MeetingEnded { .. }))
        {
            ended = true;
            break;
        }
        if start.elapsed() < Duration::from_secs(2) {
            send_one(&mut sender, &mut sent);
        }
        sender.io(Duration::from_millis(20));
        receiver.io(Duration::from_millis(1));
    }
    assert!(ended, "meeting_ended not received");
    assert!(sender.received.contains(&ServerMessage::MeetingEnded {
        reason: EndReason::ControllerDraining
    }));
    receiver.expect("meeting_ended draining", |m| {
        matches!(
            m,
            ServerMessage::MeetingEnded {
                reason: EndReason::ControllerDraining
            }
        )
    });
    // Every message sent before the deadline reached the receiver, in order, before meeting_ended.
    let got: Vec<u64> = receiver
        .received
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Message { payload, .. } => payload["n"].as_u64(),
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        (0..sent).collect::<Vec<_>>(),
        "messages lost or reordered during drain"
    );
    assert_eq!(
        server.wait_exit(Duration::from_secs(20)),
        Some(0),
        "drain must exit 0"
    );
}

#[test]
fn gc_registration_assignment_heartbeats_and_meeting_end() {
    let gc = FakeGc::start(
        "127.0.0.1:0".parse().unwrap(),
        FakeGcConfig {
            fast_heartbeat_interval_ms: 300,
            comprehensive_heartbeat_interval_ms: 700,
            token: Some("gc-out".into()),
        },
    )
    .unwrap();
    let dir = unique_dir("gc-secrets");
    let out = write_secret(&dir, "gc-token", "gc-out");
    let inbound = write_secret(&dir, "gc-inbound", "gc-in");
    let server = Server::start(
        "gc",
        &[
            "--shards",
            "2",
            "--gc-url",
            &gc.url(),
            "--gc-token-file",
            &out,
            "--gc-inbound-token-file",
            &inbound,
            "--mc-id",
            "mc-test-1",
            "--region",
            "eu-1",
        ],
    );
    assert!(
        gc.wait_until(T, |r| r.iter().any(|x| x.is_register())),
        "no registration"
    );
    let reg = gc.registrations().remove(0);
    assert_eq!(reg.authorization.as_deref(), Some("Bearer gc-out"));
    assert!(reg.traceparent.is_some());
    assert_eq!(reg.body["id"], "mc-test-1");
    assert_eq!(reg.body["region"], "eu-1");
    assert_eq!(reg.body["shards"], 2);

    let control = format!("http://{}", server.control);
    // Unassigned meeting → not_found.
    let mut c = Client::connect(server.quic);
    c.join(
        "unassigned",
        &server.token("unassigned", Role::Host, "u"),
        "u",
    );
    c.expect("not_found", |m| {
        matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::NotFound,
                ..
            }
        )
    });
    // Wrong inbound token.
    assert_eq!(gc.assign(&control, "nope", "m-1", &[]).0, 401);
    let mh = vec![MediaHandler {
        id: "mh-7".into(),
        url: "https://mh-7.example".into(),
    }];
    let (status, body) = gc.assign(&control, "gc-in", "m-1", &mh);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], true);
    let (status2, body2) = gc.assign(&control, "gc-in", "m-1", &mh);
    assert_eq!((status2, &body2), (200, &body), "assignment is idempotent");
    let mut host = Client::connect(server.quic);
    let jr = host.join_ok("m-1", &server.token("m-1", Role::Host, "h"), "host");
    assert!(
        matches!(&jr, ServerMessage::JoinResponse { media_handlers, .. } if *media_handlers == mh)
    );
    let mut p = Client::connect(server.quic);
    p.join_ok("m-1", &server.token("m-1", Role::Participant, "p"), "p");

    // Heartbeats carry the true counts.
    let ok = gc.wait_until(T, |r| {
        r.iter().any(|x| {
            x.is_heartbeat()
                && x.body["capacity"]["current_meetings"] == 1
                && x.body["capacity"]["current_participants"] == 2
        })
    });
    assert!(
        ok,
        "no heartbeat with 1 meeting / 2 participants: {:?}",
        gc.heartbeats().last().map(|h| h.body.clone())
    );
    assert!(gc.wait_until(T, |r| r.iter().any(|x| x.is_heartbeat()
        && x.body["kind"] == "comprehensive"
        && x.body["process"]["rss_bytes"].as_u64().unwrap_or(0) > 0)));

    // The host ends the meeting: the GC is told.
    host.send(&ClientMessage::EndMeeting {});
    p.expect("meeting_ended", |m| {
        matches!(m, ServerMessage::MeetingEnded { .. })
    });
    assert!(
        gc.wait_until(T, |r| r.iter().any(|x| x.ended_meeting_id() == Some("m-1"))),
        "GC not told the meeting ended"
    );
    std::fs::remove_dir_all(&dir).ok();
    drop(server);
    let _ = http_request;
}
