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
        assert!(wt.wait_session(T), "session refused: {:?}", wt.rejected);
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
        c.rejected,
        c.is_closed(),
        c.peer_error_code()
    );
    assert!(c.rejected.is_some(), "wrong path must be refused");
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
