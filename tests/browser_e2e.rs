//! Real headless Chromium joins a meeting over WebTransport next to a native QUIC participant.
//! Needs `chromium` and `node`; run by `.ci/stages/30-browser.sh` (`-- --ignored`), which
//! installs them and fails loudly when it cannot.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mc::core::protocol::{ClientMessage, Role, ServerMessage};
use support::{Client, Server};

fn chromium() -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "CHROMIUM NOT INSTALLED at {chromium}: this test cannot pass without it"
    );
    chromium
}

fn certificate_hash(server: &Server) -> String {
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
    let hash = certificate_hash(&server);
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
    let hash = certificate_hash(&server);
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
