//! Real headless Chromium joins a meeting over WebTransport next to a native QUIC participant.
//! Needs `chromium` and `node`; run by `.ci/stages/30-browser.sh` (`-- --ignored`), which
//! installs them and fails loudly when it cannot.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mc::core::protocol::{ClientMessage, Role, ServerMessage};
use support::{Client, Server};

#[test]
#[ignore = "needs chromium and node; run by .ci/stages/30-browser.sh"]
fn chromium_joins_over_webtransport_and_meets_a_native_participant() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "CHROMIUM NOT INSTALLED at {chromium}: this test cannot pass without it"
    );
    let server = Server::start("browser", &["--shards", "2"]);
    let hash = server
        .stdout_lines
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.split("(serverCertificateHashes): ")
                .nth(1)
                .map(str::to_owned)
        })
        .expect("certificate hash line");
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
