//! WebTransport against the real server (2 shards): sessions, signaling over a WebTransport
//! stream, mixing with native QUIC participants, and HTTP/3 refusals.

mod support;

use std::time::Duration;

use mc::core::protocol::{ClientMessage, ErrorCode, Role, ServerMessage};
use support::wt::WtClient;
use support::{participant_id, Client, Server};

const T: Duration = Duration::from_secs(10);

fn join(meeting: &str, token: String, name: &str) -> ClientMessage {
    ClientMessage::Join {
        meeting_id: meeting.into(),
        token,
        display_name: name.into(),
        request_id: None,
        resume: None,
        capabilities: Vec::new(),
    }
}

#[test]
fn browser_style_participants_meet_native_ones() {
    let server = Server::start("wt", &["--shards", "2"]);
    // Several meetings so that sessions land on shards other than their meeting's.
    for m in ["wt-a", "wt-b", "wt-c", "wt-d"] {
        let mut native = Client::connect(server.quic);
        let native_id =
            participant_id(&native.join_ok(m, &server.token(m, Role::Host, "n"), "native"));
        let mut wt = WtClient::connect(
            server.quic,
            &format!("/meetings/{m}"),
            Some("https://app.example"),
        );
        assert!(wt.wait_session(T), "session refused: {:?}", wt.rejected());
        wt.send(&join(m, server.token(m, Role::Participant, "w"), "browser"));
        let jr = wt.expect("join_response", |m| {
            matches!(m, ServerMessage::JoinResponse { .. })
        });
        let ServerMessage::JoinResponse {
            participants,
            participant_id: wt_id,
            ..
        } = jr
        else {
            unreachable!()
        };
        assert_eq!(participants.len(), 1);
        assert_eq!(participants[0].participant_id, native_id);
        native.expect("participant_joined", |x| matches!(x, ServerMessage::ParticipantJoined { participant } if participant.participant_id == wt_id));
        native.send(&ClientMessage::Message {
            payload: serde_json::json!({"hello": "browser"}),
            to: None,
        });
        wt.expect(
            "message from native",
            |x| matches!(x, ServerMessage::Message { from, .. } if *from == native_id),
        );
        wt.send(&ClientMessage::Message {
            payload: serde_json::json!({"hello": "native"}),
            to: None,
        });
        native.expect(
            "message from browser",
            |x| matches!(x, ServerMessage::Message { from, .. } if *from == wt_id),
        );
        // Leaving over WebTransport ends the participant like a QUIC leave.
        wt.send(&ClientMessage::Leave {});
        native.expect("participant_left", |x| {
            matches!(x, ServerMessage::ParticipantLeft { .. })
        });
    }
    let m = server.metrics();
    assert!(m.contains("mc_connection_handoffs_total"));
}

#[test]
fn refusals_are_answered_per_http3_and_the_server_keeps_serving() {
    let server = Server::start("wt-neg", &["--shards", "2"]);
    // Wrong path.
    let mut c = WtClient::connect(server.quic, "/not-meetings/x", None);
    assert!(!c.wait_session(T));
    eprintln!(
        "wrong path: rejected={:?} closed={} err={:?}",
        c.rejected(),
        c.is_closed(),
        c.peer_error_code()
    );
    assert!(c.rejected().is_some(), "wrong path must be refused");
    // Invalid meeting id in the path.
    let mut c = WtClient::connect(server.quic, "/meetings/bad%20id", None);
    assert!(!c.wait_session(T));
    // A valid session with a bad token still gets the signaling error.
    let mut c = WtClient::connect(server.quic, "/meetings/ok", None);
    assert!(c.wait_session(T));
    c.send(&join("ok", "garbage".into(), "x"));
    c.expect("unauthorized", |m| {
        matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::Unauthorized,
                ..
            }
        )
    });
    // And the server still serves native clients.
    let mut n = Client::connect(server.quic);
    n.join_ok("ok", &server.token("ok", Role::Host, "h"), "h");
}

/// HTTP/3's H3_NO_ERROR: how a WebTransport connection closes once its session carried the
/// signaling close code.
const H3_NO_ERROR: u64 = 0x100;

fn joined(server: &Server, meeting: &str, name: &str) -> WtClient {
    let mut wt = WtClient::connect(server.quic, &format!("/meetings/{meeting}"), None);
    assert!(wt.wait_session(T), "session refused: {:?}", wt.rejected());
    wt.send(&join(
        meeting,
        server.token(meeting, Role::Participant, name),
        name,
    ));
    wt.expect("join_response", |m| {
        matches!(m, ServerMessage::JoinResponse { .. })
    });
    wt
}

fn metric(m: &str, name: &str, label: &str) -> f64 {
    m.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn sessions_close_with_the_signaling_code_and_reason_then_h3_no_error() {
    let server = Server::start(
        "wt-close",
        &["--shards", "2", "--rate-limit", "20", "--rate-burst", "20"],
    );
    // leave: 0x0.
    let mut wt = joined(&server, "close-leave", "a");
    wt.send(&ClientMessage::Leave {});
    assert_eq!(
        wt.wait_closed(T),
        (Some((0x0, "leave".into())), Some(H3_NO_ERROR))
    );

    // Unauthorized join: the error frame, then 0x102.
    let mut wt = WtClient::connect(server.quic, "/meetings/close-auth", None);
    assert!(wt.wait_session(T));
    wt.send(&join("close-auth", "not-a-token".into(), "b"));
    wt.expect("unauthorized", |m| {
        matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::Unauthorized,
                ..
            }
        )
    });
    let (capsule, quic) = wt.wait_closed(T);
    assert_eq!(capsule.map(|c| c.0), Some(0x102));
    assert_eq!(quic, Some(H3_NO_ERROR));

    // A zero-length frame after the join: 0x101.
    let mut wt = joined(&server, "close-frame", "c");
    wt.send_raw(&[0, 0, 0, 0]);
    wt.expect("invalid_request", |m| {
        matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::InvalidRequest,
                ..
            }
        )
    });
    assert_eq!(
        wt.wait_closed(T),
        (Some((0x101, "bad frame".into())), Some(H3_NO_ERROR))
    );

    // Flooding: rate_limited errors, then 0x104.
    let mut wt = joined(&server, "close-flood", "d");
    let mut burst = Vec::new();
    for id in 0..200 {
        burst.extend_from_slice(&mc::core::codec::encode(&ClientMessage::Ping { id }));
    }
    wt.send_raw(&burst);
    let (capsule, quic) = wt.wait_closed(T);
    assert!(wt.received().iter().any(|m| matches!(
        m,
        ServerMessage::Error {
            code: ErrorCode::RateLimited,
            ..
        }
    )));
    assert_eq!(capsule, Some((0x104, "flooding".into())));
    assert_eq!(quic, Some(H3_NO_ERROR));

    // Native QUIC clients keep seeing the signaling code as the QUIC close code.
    let mut n = Client::connect(server.quic);
    n.join_ok(
        "close-native",
        &server.token("close-native", Role::Host, "n"),
        "n",
    );
    n.send(&ClientMessage::Leave {});
    let closed = n.wait_closed(T);
    assert_eq!(
        closed,
        Some(support::Closed {
            app: true,
            code: 0x0
        })
    );
}

#[test]
fn a_join_naming_another_meeting_than_the_session_path_is_refused() {
    let server = Server::start("wt-path", &["--shards", "2"]);
    // Meetings on both shards, so whichever shard owns the path's meeting, some join names a
    // meeting of the other one: a second handoff would have been needed.
    let meetings = ["path-a", "path-b", "path-c", "path-d", "path-e", "path-f"];
    for (i, path) in meetings.iter().enumerate() {
        let other = meetings[(i + 1) % meetings.len()];
        let mut wt = WtClient::connect(server.quic, &format!("/meetings/{path}"), None);
        assert!(wt.wait_session(T));
        // A valid token for the meeting the join names.
        wt.send(&ClientMessage::Join {
            meeting_id: other.into(),
            token: server.token(other, Role::Host, "x"),
            display_name: "x".into(),
            request_id: Some("j1".into()),
            resume: None,
            capabilities: Vec::new(),
        });
        let err = wt.expect("invalid_request", |m| {
            matches!(
                m,
                ServerMessage::Error {
                    code: ErrorCode::InvalidRequest,
                    ..
                }
            )
        });
        let ServerMessage::Error {
            message,
            request_id,
            ..
        } = err
        else {
            unreachable!()
        };
        assert_eq!(request_id.as_deref(), Some("j1"));
        assert_eq!(
            message,
            format!("meeting_id {other} does not match the session path /meetings/{path}")
        );
        assert_eq!(
            wt.wait_closed(T),
            (Some((0x101, "bad join".into())), Some(H3_NO_ERROR))
        );
    }
    let m = server.metrics();
    assert_eq!(metric(&m, "mc_joins_total", "result=\"handoff\""), 0.0);
    assert_eq!(
        metric(&m, "mc_joins_total", "result=\"invalid_request\""),
        meetings.len() as f64
    );
    assert_eq!(metric(&m, "mc_token_failures_total", "reason="), 0.0);
    // Nobody joined anything.
    assert_eq!(metric(&m, "mc_participants_active", "shard="), 0.0);
}
