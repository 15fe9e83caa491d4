//! Real headless Chromium joins a meeting over WebTransport next to a native QUIC participant.
//! Needs `chromium` and `node`; run by `.ci/stages/30-browser.sh` (`-- --ignored`), which
//! installs them and fails loudly when it cannot.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mc::core::protocol::{ClientMessage, LeaveReason, Role, ServerMessage};
use support::{Client, Server};

/// The Chromium binary (`CHROMIUM`, default `/usr/bin/chromium`); fails loudly without it.
fn chromium() -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "CHROMIUM NOT INSTALLED at {chromium}: this test cannot pass without it"
    );
    chromium
}

/// The certificate hash `server` printed for `serverCertificateHashes`.
fn cert_hash(server: &Server) -> String {
    server
        .stdout_lines
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.split("(serverCertificateHashes): ")
                .nth(1)
                .map(str::to_owned)
        })
        .expect("certificate hash line")
}

#[test]
#[ignore = "needs chromium and node; run by .ci/stages/30-browser.sh"]
fn chromium_joins_over_webtransport_and_meets_a_native_participant() {
    let chromium = chromium();
    let server = Server::start("browser", &["--shards", "2"]);
    let hash = cert_hash(&server);
    let meeting = "browser-room";
    let mut native = Client::connect(server.quic);
    native.join_ok(
        meeting,
        &server.token(meeting, Role::Host, "native"),
        "native host",
    );

    // 127.0.0.1, not localhost: Chromium may resolve localhost to ::1 first, and the test
    // server listens on IPv4 loopback only.
    let url = format!(
        "https://127.0.0.1:{}/meetings/{meeting}",
        server.quic.port()
    );
    let token = server.token(meeting, Role::Participant, "browser");
    let mut node = Command::new("node")
        .args([
            "tests/browser/run.mjs",
            "--url",
            &url,
            "--hash",
            &hash,
            "--token",
            &token,
            "--chromium",
            &chromium,
            "--timeout",
            "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node not installed");
    // When the browser joins, greet it.
    let joined = native.wait_for(Duration::from_secs(60), |m| {
        matches!(m, ServerMessage::ParticipantJoined { .. })
    });
    assert!(joined.is_some(), "the browser never joined");
    native.send(&ClientMessage::Message {
        payload: serde_json::json!({ "hello": "browser" }),
        to: None,
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        native.io(Duration::from_millis(20));
        if let Some(s) = node.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "browser run timed out");
    };
    let mut out = String::new();
    use std::io::Read;
    node.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    eprintln!("{out}");
    assert!(status.success(), "browser run failed: {out}");
    // The browser left voluntarily after receiving the message.
    native.expect("participant_left", |m| {
        matches!(m, ServerMessage::ParticipantLeft { .. })
    });
}

/// For each way the server ends a session, what Chromium's `WebTransport.closed` reports: it
/// must resolve with the signaling close code and reason of the CLOSE_WEBTRANSPORT_SESSION
/// capsule, after the final frames and a FIN on the signaling stream.
#[test]
#[ignore = "needs chromium and node; run by .ci/stages/30-browser.sh"]
fn chromium_reads_the_signaling_close_code_and_reason_of_each_server_close() {
    let chromium = chromium();
    let server = Server::start(
        "browser-close",
        &["--shards", "2", "--rate-limit", "20", "--rate-burst", "20"],
    );
    let hash = cert_hash(&server);
    let url = format!("https://127.0.0.1:{}/meetings/", server.quic.port());
    let token = |m: &str, who: &str| server.token(m, Role::Participant, who);
    let params = [
        format!("token_leave={}", token("close-leave", "l")),
        format!("token_frame={}", token("close-frame", "f")),
        format!("token_flood={}", token("close-flood", "x")),
    ];
    let mut args = vec![
        "tests/browser/run.mjs".to_owned(),
        "--page".into(),
        "close-codes.html".into(),
        "--url".into(),
        url,
        "--hash".into(),
        hash,
        "--chromium".into(),
        chromium,
        "--timeout".into(),
        "90".into(),
    ];
    for p in params {
        args.push("--param".into());
        args.push(p);
    }
    let out = Command::new("node")
        .args(&args)
        .stderr(Stdio::inherit())
        .output()
        .expect("node not installed");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{text}");
    let report: serde_json::Value = serde_json::from_str(&text).expect("the page's JSON report");
    let cases = &report["cases"];
    for (case, code, reason, last_error) in [
        ("leave", 0x0, "leave", None),
        (
            "unauthorized",
            0x102,
            "unauthorized",
            Some("error:unauthorized"),
        ),
        (
            "invalid_frame",
            0x101,
            "bad frame",
            Some("error:invalid_request"),
        ),
        ("flood", 0x104, "flooding", Some("error:rate_limited")),
    ] {
        let c = &cases[case];
        assert_eq!(c["settled"], "resolved", "{case}: {c}");
        assert_eq!(c["closeCode"], code, "{case}: {c}");
        assert_eq!(c["reason"], reason, "{case}: {c}");
        // The last signaling frames arrived and the stream ended cleanly before the close.
        assert_eq!(c["stream_end"], "fin", "{case}: {c}");
        if let Some(e) = last_error {
            assert!(c["received"][e].as_u64().unwrap_or(0) >= 1, "{case}: {c}");
        }
    }
    assert!(out.status.success(), "browser run failed: {text}");
}

/// Chromium joins a meeting on one controller with the `migrate` capability; the controller is
/// drained (SIGTERM) and the page follows the meeting to the other controller over
/// WebTransport, keeping its participant id, and receives a message sent there.
#[test]
#[ignore = "needs chromium and node; run by .ci/stages/30-browser.sh"]
fn chromium_follows_a_meeting_to_another_controller() {
    use support::fleet::Fleet;
    use support::follow::{pump_until, Member, Transport};

    let chromium = chromium();
    let mut fleet = Fleet::new("20s");
    fleet.start("mc-a", true);
    fleet.start("mc-b", true);
    let meeting = "browser-move";
    fleet.assign("mc-a", meeting);
    let a = fleet.server("mc-a");
    // The fleet shares one development certificate, so one hash serves both controllers.
    let hash = cert_hash(a);
    let signer = a.signer.clone();
    let mut native = vec![Member::join(
        &signer,
        a.quic,
        "mc-a",
        meeting,
        "native",
        Role::Host,
        Transport::Native,
    )];
    let url = format!("https://127.0.0.1:{}/meetings/{meeting}", a.quic.port());
    let token = a.token(meeting, Role::Participant, "browser");
    let mut node = Command::new("node")
        .args([
            "tests/browser/run.mjs",
            "--url",
            &url,
            "--hash",
            &hash,
            "--token",
            &token,
            "--migrate",
            "1",
            "--chromium",
            &chromium,
            "--timeout",
            "90",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node not installed");
    assert!(
        pump_until(&mut native, Duration::from_secs(60), |m| m[0]
            .log
            .iter()
            .any(|x| matches!(x, ServerMessage::ParticipantJoined { .. }))),
        "the browser never joined"
    );
    native[0].log.clear();
    fleet.server("mc-a").sigterm();
    assert!(
        pump_until(&mut native, Duration::from_secs(30), |m| m[0].controller
            == "mc-b"
            && !m[0].moving()),
        "the native participant did not follow"
    );
    native[0].say(1);
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        pump_until(&mut native, Duration::from_millis(20), |_| false);
        if let Some(s) = node.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "browser run timed out");
    };
    let mut out = String::new();
    use std::io::Read;
    node.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    eprintln!("{out}");
    assert!(status.success(), "browser run failed: {out}");
    let result: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["moved_to"], "mc-b");
    // The browser left voluntarily at the target; no meeting ended anywhere.
    assert!(
        pump_until(&mut native, Duration::from_secs(10), |m| m[0]
            .log
            .iter()
            .any(|x| matches!(
                x,
                ServerMessage::ParticipantLeft {
                    reason: LeaveReason::Voluntary,
                    ..
                }
            ))),
        "no voluntary leave from the browser at the target"
    );
    // Nothing else: no participant_left/joined around the move.
    assert_eq!(native[0].churn().len(), 1, "{:?}", native[0].churn());
    assert!(fleet.gc.meetings_ended().is_empty());
}
