//! Live-meeting migration end to end: a fake GC and real `mc` processes on loopback, native
//! and WebTransport participants that follow `migrate`.
//!
//! * `rolling_restart_moves_every_meeting_without_ending_it` — three controllers, SIGTERM to
//!   each in turn, each restarted and re-registered: no meeting ends, nobody is lost, every
//!   message is delivered in order or refused visibly, roster/roles/mute are unchanged;
//! * `refused_migrations_fall_back_to_todays_drain` — import rejected (binding secrets
//!   differ), unknown target, GC down, clients without the capability: the meeting stays,
//!   nothing is imported, and a SIGTERM drain ends it as before, counted.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mc::core::protocol::{ClientMessage, EndReason, ErrorCode, ResumeRequest, Role, ServerMessage};
use mc_test_support::fake_gc::Fault;
use serde_json::Value;
use support::fleet::{Fleet, INBOUND};
use support::follow::{pump_all, pump_until, Member, Transport};
use support::{http_request, metric_sum, Client};

const T: Duration = Duration::from_secs(20);
/// Checks every pair of one meeting: what `r` got from `s` is in order and is everything `s`
/// sent minus what `s` saw refused.
fn delivered(members: &[Member], sent: &BTreeMap<String, u64>) -> Result<(), String> {
    for s in members {
        let expected = sent[&s.name] as usize - s.refused;
        for r in members
            .iter()
            .filter(|r| r.meeting == s.meeting && r.name != s.name)
        {
            let got = r.seqs_from(&s.name);
            if !got.windows(2).all(|w| w[0] < w[1]) {
                return Err(format!(
                    "{} got {}'s messages out of order: {got:?}",
                    r.name, s.name
                ));
            }
            if got.len() != expected {
                return Err(format!(
                    "{} got {} of {}'s messages, expected {expected} (sent {}, refused {})",
                    r.name,
                    got.len(),
                    s.name,
                    sent[&s.name],
                    s.refused
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn rolling_restart_moves_every_meeting_without_ending_it() {
    let mut fleet = Fleet::new("20s");
    for id in ["mc-a", "mc-b", "mc-c"] {
        fleet.start(id, true);
    }
    let signer = fleet.server("mc-a").signer.clone();
    // Meetings of several sizes, native and WebTransport participants.
    let plan: [(&str, &str, &[Transport]); 3] = [
        ("m-two", "mc-a", &[Transport::Native, Transport::Native]),
        (
            "m-four",
            "mc-a",
            &[
                Transport::Native,
                Transport::WebTransport,
                Transport::Native,
                Transport::Native,
            ],
        ),
        (
            "m-three",
            "mc-b",
            &[
                Transport::WebTransport,
                Transport::Native,
                Transport::Native,
            ],
        ),
    ];
    let mut members = Vec::new();
    for (meeting, mc, transports) in plan {
        fleet.assign(mc, meeting);
        for (i, t) in transports.iter().enumerate() {
            let role = if i == 0 {
                Role::Host
            } else {
                Role::Participant
            };
            let name = format!("{meeting}-{i}");
            members.push(Member::join(
                &signer,
                fleet.server(mc).quic,
                mc,
                meeting,
                &name,
                role,
                *t,
            ));
        }
    }
    // Some mute state: self mute and a host mute in each meeting.
    let mut i = 0;
    while i < members.len() {
        let meeting = members[i].meeting.clone();
        let target = members[i + 1].pid.clone();
        members[i].send(ClientMessage::HostMute {
            participant_id: target,
            audio: true,
            video: false,
        });
        members[i + 1].send(ClientMessage::Mute {
            audio: false,
            video: true,
        });
        i += members.iter().filter(|m| m.meeting == meeting).count();
    }
    pump_all(&mut members, Duration::from_millis(500));
    for m in &mut members {
        m.log.clear();
    }
    let meetings = ["m-two", "m-four", "m-three"];
    let before: BTreeMap<&str, Vec<Value>> = meetings
        .iter()
        .map(|m| {
            let at = if *m == "m-three" { "mc-b" } else { "mc-a" };
            (*m, fleet.roster(at, m))
        })
        .collect();

    let mut sent: BTreeMap<String, u64> = members.iter().map(|m| (m.name.clone(), 0)).collect();
    let talk = |members: &mut Vec<Member>, sent: &mut BTreeMap<String, u64>| {
        for m in members.iter_mut() {
            if !m.moving() {
                let n = sent.get_mut(&m.name).unwrap();
                m.say(*n);
                *n += 1;
            }
        }
    };
    for _ in 0..3 {
        talk(&mut members, &mut sent);
        pump_all(&mut members, Duration::from_millis(30));
    }

    for id in ["mc-a", "mc-b", "mc-c"] {
        fleet.server(id).sigterm();
        // Keep talking while the controller drains and its meetings move.
        let deadline = Instant::now() + T;
        let code = loop {
            talk(&mut members, &mut sent);
            pump_all(&mut members, Duration::from_millis(40));
            if let Ok(Some(status)) = fleet.servers.get_mut(id).unwrap().child.try_wait() {
                break status.code();
            }
            assert!(Instant::now() < deadline, "{id} did not exit");
        };
        assert_eq!(code, Some(0), "{id} drained");
        assert!(
            members.iter().all(|m| m.controller != id),
            "every participant left {id}"
        );
        fleet.start(id, true); // the rolling restart: same id, re-registered
        assert!(
            pump_until(&mut members, T, |ms| ms.iter().all(|m| !m.moving())),
            "participants did not all arrive"
        );
        talk(&mut members, &mut sent);
    }

    let ok = pump_until(&mut members, T, |ms| delivered(ms, &sent).is_ok());
    assert!(ok, "{}", delivered(&members, &sent).unwrap_err());
    for m in &members {
        assert!(m.ended.is_none(), "{} saw {:?}", m.name, m.ended);
        assert!(m.churn().is_empty(), "{} saw churn {:?}", m.name, m.churn());
        assert!(m.errors.is_empty(), "{} got errors {:?}", m.name, m.errors);
        assert!(!m.gaps.is_empty(), "{} never moved", m.name);
    }
    assert!(
        fleet.gc.meetings_ended().is_empty(),
        "no meeting ended: {:?}",
        fleet.gc.meetings_ended()
    );
    for meeting in meetings {
        let at = members
            .iter()
            .find(|m| m.meeting == meeting)
            .unwrap()
            .controller
            .clone();
        assert_eq!(fleet.gc.placement(meeting).as_deref(), Some(at.as_str()));
        assert_eq!(
            fleet.roster(&at, meeting),
            before[meeting],
            "{meeting} on {at}"
        );
    }
    let gaps: Vec<Duration> = members.iter().flat_map(|m| m.gaps.clone()).collect();
    eprintln!(
        "participants {} migrations followed {} refused {} longest gap {:?}",
        members.len(),
        gaps.len(),
        members.iter().map(|m| m.refused).sum::<usize>(),
        gaps.iter().max()
    );

    // A migrate token is single use, and only its participant's.
    let m = &members[0];
    let at = fleet.server(&m.controller).quic;
    let token = m.last_migrate_token.clone().unwrap();
    for pid in [m.pid.clone(), members[1].pid.clone()] {
        let mut c = Client::connect(at);
        c.send(&ClientMessage::Join {
            meeting_id: m.meeting.clone(),
            token: fleet
                .server("mc-a")
                .token(&m.meeting, Role::Participant, &m.sub),
            display_name: "thief".into(),
            request_id: None,
            resume: Some(ResumeRequest {
                participant_id: pid,
                binding_token: token.clone(),
            }),
            capabilities: vec!["migrate".into()],
        });
        c.expect("unauthorized", |x| {
            matches!(
                x,
                ServerMessage::Error {
                    code: ErrorCode::Unauthorized,
                    ..
                }
            )
        });
    }
}

#[test]
fn refused_migrations_fall_back_to_todays_drain() {
    let mut fleet = Fleet::new("2s");
    fleet.start("mc-a", true);
    fleet.start("mc-x", false); // its own binding secret: imports are refused
    let signer = fleet.server("mc-a").signer.clone();
    fleet.assign("mc-a", "r1");
    let a = fleet.server("mc-a").quic;
    let mut members = vec![
        Member::join(
            &signer,
            a,
            "mc-a",
            "r1",
            "r1-0",
            Role::Host,
            Transport::Native,
        ),
        Member::join(
            &signer,
            a,
            "mc-a",
            "r1",
            "r1-1",
            Role::Participant,
            Transport::Native,
        ),
    ];
    let migrate = |fleet: &Fleet, to: &str| {
        fleet.admin(
            "mc-a",
            "POST",
            "/admin/meetings/r1/migrate",
            Some(&format!("{{\"to\":\"{to}\"}}")),
        )
    };

    let (status, body) = migrate(&fleet, "mc-x");
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("import_rejected")),
        "{body}"
    );
    let (_, listed) = fleet.admin("mc-x", "GET", "/admin/meetings", None);
    assert_eq!(listed["count"], 0, "nothing half-imported: {listed}");

    // The import endpoint: bearer token, body shape and size are checked before anything.
    let x = fleet.server("mc-x").control;
    let path = "/internal/v1/meetings/r1/import";
    assert_eq!(
        http_request(x, "POST", path, Some("wrong"), Some("{}")).0,
        401
    );
    let (status, text) = http_request(x, "POST", path, Some(INBOUND), Some("{\"x\":1}"));
    assert_eq!(status, 400, "{text}");
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    assert_eq!(
        http_request(x, "POST", path, Some(INBOUND), Some(&big)).0,
        413
    );

    let (status, body) = migrate(&fleet, "mc-nowhere");
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("gc_refused")),
        "{body}"
    );

    // The same through the CLI: `mc admin migrate ID --to MC`, exit code 1 with the reason.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mc"))
        .args([
            "admin",
            "--url",
            &format!("http://{}", fleet.server("mc-a").control),
        ])
        .arg("--token-file")
        .arg(fleet.secrets.join("admin"))
        .args(["migrate", "r1", "--to", "mc-gone"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unknown_target"), "{stderr}");

    fleet.gc.set_fault(Fault::Down);
    let (status, body) = migrate(&fleet, "mc-x");
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("gc_unavailable")),
        "{body}"
    );
    fleet.gc.set_fault(Fault::None);

    let (status, body) = fleet.admin("mc-a", "POST", "/admin/meetings/nope/migrate", None);
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("meeting_not_found")),
        "{body}"
    );

    // After every refusal the meeting runs on: messages flow, nobody was told to move.
    members[0].say(0);
    assert!(pump_until(&mut members, T, |ms| ms[1].seqs_from("r1-0") == [0]));
    assert!(members.iter().all(|m| m.gaps.is_empty() && m.refused == 0));

    // A meeting with a client that does not follow `migrate` is never exported.
    fleet.assign("mc-a", "old");
    let mut legacy = Client::connect(a);
    legacy.join_ok(
        "old",
        &fleet.server("mc-a").token("old", Role::Host, "l"),
        "l",
    );
    let (status, body) = fleet.admin("mc-a", "POST", "/admin/meetings/old/migrate", None);
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("clients_unsupported")),
        "{body}"
    );

    let m = fleet.server("mc-a").metrics();
    for (reason, n) in [
        ("import_rejected", 1.0),
        ("gc_refused", 2.0),
        ("gc_unavailable", 1.0),
        ("not_found", 1.0),
        ("clients_unsupported", 1.0),
    ] {
        assert_eq!(
            metric_sum(
                &m,
                "mc_migrations_failed_total",
                &format!("reason=\"{reason}\"")
            ),
            n,
            "{reason}"
        );
    }
    assert_eq!(metric_sum(&m, "mc_migrations_completed_total", ""), 0.0);

    // SIGTERM: the only other controller refuses the import, so the meetings stay and end at
    // the drain deadline exactly as without migration.
    fleet.server("mc-a").sigterm();
    assert!(pump_until(&mut members, T, |ms| ms
        .iter()
        .all(|m| m.ended.is_some())));
    for mb in &members {
        assert!(
            matches!(
                mb.ended,
                Some(ServerMessage::MeetingEnded {
                    reason: EndReason::ControllerDraining
                })
            ),
            "{:?}",
            mb.ended
        );
    }
    legacy.expect("meeting_ended", |x| {
        matches!(x, ServerMessage::MeetingEnded { .. })
    });
    assert!(fleet.gc.wait_until(T, |r| {
        let ended: Vec<_> = r
            .iter()
            .filter(|x| x.is_meeting_ended() && x.body["reason"] == "controller_draining")
            .collect();
        ended.len() >= 2
    }));
    assert_eq!(
        fleet.servers.get_mut("mc-a").unwrap().wait_exit(T),
        Some(0),
        "drain exits 0"
    );
    let (_, listed) = fleet.admin("mc-x", "GET", "/admin/meetings", None);
    assert_eq!(listed["count"], 0, "nothing imported: {listed}");
}
