//! Hostile input against the real server (2 shards) on loopback.
//!
//! One server hosts a **control meeting** with two well-behaved participants. Every case below
//! attacks the server in its own way (bad frames, bad JSON, bad joins, bad tokens, abuse of
//! host actions, floods, idle and slow connections, stray streams and datagrams); after each
//! one the control meeting must still deliver in both directions. Cases assert what a client
//! can observe — the error code, the QUIC close code, what other participants see, metric
//! counters — and every wait is bounded.
//!
//! `hostile_inputs_leave_the_control_meeting_served` runs the cases against a server with
//! `--join-timeout 1s --resume-window 2s`; `hostile_flood_and_drip_leave_the_control_meeting_served`
//! runs the cases that need a low rate limit or a long join timeout against a second server.
//! The cases are listed in `docs/security.md`.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use mc::core::codec;
use mc::core::protocol::{
    ClientMessage, EndReason, ErrorCode, LeaveReason, ResumeRequest, Role, ServerMessage,
};
use mc::core::token::MintClaims;
use mc_test_support::udp::QuicConn;
use mc_test_support::{join_message, ClientSettings};
use support::{metric_sum_where, participant_id, unix_secs, Client, Closed, Server};

const T: Duration = Duration::from_secs(10);
const CONTROL: &str = "control";

// -----------------------------------------------------------------------------------------
// The rig: a server and its control meeting
// -----------------------------------------------------------------------------------------

struct Rig {
    server: Server,
    x: Client,
    y: Client,
    x_id: String,
    y_id: String,
    seq: u64,
}

impl Rig {
    fn start(tag: &str, flags: &[&str]) -> Rig {
        let server = Server::start(tag, flags);
        let mut x = Client::connect(server.quic);
        let x_id = participant_id(&x.join_ok(
            CONTROL,
            &server.token(CONTROL, Role::Host, "control-x"),
            "x",
        ));
        let mut y = Client::connect(server.quic);
        let y_id = participant_id(&y.join_ok(
            CONTROL,
            &server.token(CONTROL, Role::Participant, "control-y"),
            "y",
        ));
        x.expect("y joined", |m| {
            matches!(m, ServerMessage::ParticipantJoined { .. })
        });
        let mut rig = Rig {
            server,
            x,
            y,
            x_id,
            y_id,
            seq: 0,
        };
        rig.check("start");
        rig
    }

    /// The control meeting delivers both ways, and nobody left it.
    fn check(&mut self, case: &str) {
        self.seq += 1;
        let n = self.seq;
        let (x_id, y_id) = (self.x_id.clone(), self.y_id.clone());
        self.x.send(&ClientMessage::Message {
            payload: serde_json::json!({ "after": case, "n": n }),
            to: None,
        });
        self.y.send(&ClientMessage::Message {
            payload: serde_json::json!({ "after": case, "n": n }),
            to: Some(vec![x_id.clone()]),
        });
        let want = serde_json::json!({ "after": case, "n": n });
        for (c, from) in [(&mut self.y, &x_id), (&mut self.x, &y_id)] {
            let got = c.wait_for(T, |m| {
                matches!(m, ServerMessage::Message { from: f, payload } if f == from && *payload == want)
            });
            assert!(
                got.is_some(),
                "control meeting did not deliver after case {case}: received {:?}, closed {:?}",
                c.received,
                c.closed()
            );
            assert!(
                c.closed().is_none(),
                "control client closed after case {case}"
            );
            assert!(
                !c.received
                    .iter()
                    .any(|m| matches!(m, ServerMessage::ParticipantLeft { .. })),
                "control meeting lost someone after case {case}: {:?}",
                c.received
            );
        }
    }

    /// Lets the control clients acknowledge (keeps them alive during long cases).
    fn pump(&mut self) {
        self.x.io(Duration::from_millis(1));
        self.y.io(Duration::from_millis(1));
    }

    fn token(&self, meeting: &str, role: Role, sub: &str) -> String {
        self.server.token(meeting, role, sub)
    }

    fn connect(&self) -> Client {
        Client::connect(self.server.quic)
    }

    /// A new participant of `meeting`; returns the client and its id.
    fn joined(&self, meeting: &str, role: Role, sub: &str) -> (Client, String) {
        let mut c = self.connect();
        let jr = c.join_ok(meeting, &self.token(meeting, role, sub), sub);
        let id = participant_id(&jr);
        (c, id)
    }

    fn metrics(&self) -> String {
        self.server.metrics()
    }

    /// The sum of `name` over series matching `labels`, scraped until it reaches `want` or `T`
    /// passes (the last value is returned either way). A scrape serves a shard's last good
    /// snapshot when the shard does not answer within the scrape's deadline, so on a loaded
    /// machine a counter can trail the event that raised it by a scrape or two.
    fn metric_reaching(&self, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
        let sum = |m: &str| metric_sum_where(m, name, labels);
        sum(&self.server.metrics_when(T, |m| sum(m) >= want))
    }
}

// -----------------------------------------------------------------------------------------
// Helpers
// -----------------------------------------------------------------------------------------

fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn is_error(code: ErrorCode) -> impl Fn(&ServerMessage) -> bool {
    move |m| matches!(m, ServerMessage::Error { code: c, .. } if *c == code)
}

/// The server answers `error{code}` and closes the connection with `close`.
fn expect_rejected(c: &mut Client, what: &str, code: ErrorCode, close: u64) {
    let err = c.expect(what, is_error(code));
    if let ServerMessage::Error { message, .. } = &err {
        assert!(!message.is_empty(), "{what}: empty error message");
    }
    assert_eq!(
        c.wait_closed(T),
        Some(Closed {
            app: true,
            code: close
        }),
        "{what}: close code"
    );
}

/// The server answers `error{code}` and the connection keeps working (ping → pong).
fn expect_answered_and_open(c: &mut Client, what: &str, code: ErrorCode) {
    c.expect(what, is_error(code));
    let id = 0x5eed_u64 + u64::from(what.len() as u32);
    c.send(&ClientMessage::Ping { id });
    c.expect(
        &format!("{what}: pong after the error"),
        |m| matches!(m, ServerMessage::Pong { id: i } if *i == id),
    );
    assert!(c.closed().is_none(), "{what}: connection closed");
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

fn claims_json(meeting: &str, iat: u64, exp: u64) -> String {
    format!(
        r#"{{"sub":"eve","token_type":"meeting","meeting_id":"{meeting}","role":"host","iat":{iat},"exp":{exp}}}"#
    )
}

/// Joins with `token` and expects `unauthorized` + `0x102`, and the counter of `reason` to grow.
fn expect_token_refused(rig: &mut Rig, what: &str, meeting: &str, token: &str, reason: &str) {
    let before = metric_sum_where(
        &rig.metrics(),
        "mc_token_failures_total",
        &[("reason", reason)],
    );
    let mut c = rig.connect();
    c.send(&join_message(meeting, token, "eve"));
    let err = c.expect(what, is_error(ErrorCode::Unauthorized));
    if let ServerMessage::Error { message, .. } = &err {
        for leak in ["kid", "alg", "expired", "signature", "meeting_id", "exp"] {
            assert!(
                !message.to_lowercase().contains(leak),
                "{what}: the client learns the reason ({leak}): {message}"
            );
        }
    }
    assert_eq!(
        c.wait_closed(T),
        Some(Closed {
            app: true,
            code: 0x102
        }),
        "{what}"
    );
    let after = rig.metric_reaching(
        "mc_token_failures_total",
        &[("reason", reason)],
        before + 1.0,
    );
    assert!(
        after > before,
        "{what}: mc_token_failures_total{{reason=\"{reason}\"}} stayed at {before}"
    );
}

/// Waits (bounded) until `c` sees `participant_left` for `pid`, pumping the rig meanwhile.
fn wait_left(rig: &mut Rig, c: &mut Client, pid: &str, within: Duration) -> Option<LeaveReason> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        rig.pump();
        if let Some(ServerMessage::ParticipantLeft { reason, .. }) =
            c.wait_for(Duration::from_millis(50), |m| {
                matches!(m, ServerMessage::ParticipantLeft { participant_id, .. } if participant_id == pid)
            })
        {
            return Some(reason);
        }
    }
    None
}

// -----------------------------------------------------------------------------------------
// A QUIC client with stream-level control (for stray streams, ALPN and captures)
// -----------------------------------------------------------------------------------------

/// A connection offering `alpn`, handshaken (or failed) within `T`.
fn raw_conn(server: SocketAddr, alpn: &[u8]) -> QuicConn {
    QuicConn::connect(server, &ClientSettings::raw(alpn), T)
}

/// Pumps until `stream_send` on `stream` reports STOP_SENDING, returning its code.
fn wait_stopped(c: &mut QuicConn, stream: u64, within: Duration) -> Option<u64> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        c.io(Duration::from_millis(5));
        match c.conn.stream_send(stream, b"", false) {
            Err(quiche::Error::StreamStopped(code)) => return Some(code),
            Err(quiche::Error::InvalidStreamState(_)) => return None,
            _ => {}
        }
    }
    None
}

// -----------------------------------------------------------------------------------------
// Cases: framing
// -----------------------------------------------------------------------------------------

fn case_zero_length_frame(rig: &mut Rig) {
    let mut c = rig.connect();
    c.send_raw(&0u32.to_be_bytes());
    expect_rejected(&mut c, "zero length", ErrorCode::InvalidRequest, 0x101);
}

fn case_length_above_65536(rig: &mut Rig) {
    let mut c = rig.connect();
    c.send_raw(&65_537u32.to_be_bytes());
    expect_rejected(&mut c, "length 65537", ErrorCode::InvalidRequest, 0x101);
    let mut c = rig.connect();
    c.send_raw(&u32::MAX.to_be_bytes());
    expect_rejected(&mut c, "length 2^32-1", ErrorCode::InvalidRequest, 0x101);
}

/// A joined participant that breaks framing is closed with 0x101 and leaves the meeting at once
/// with `connection_lost` (it cannot resume a stream it corrupted); it is not left behind.
fn case_frame_error_after_join_releases_the_participant(rig: &mut Rig) {
    let (mut w, _) = rig.joined("ghost-room", Role::Participant, "w");
    let (mut c, id) = rig.joined("ghost-room", Role::Participant, "ghost");
    w.expect("ghost joined", |m| {
        matches!(m, ServerMessage::ParticipantJoined { .. })
    });
    c.send_raw(&0u32.to_be_bytes());
    expect_rejected(
        &mut c,
        "zero length after join",
        ErrorCode::InvalidRequest,
        0x101,
    );
    let left = wait_left(rig, &mut w, &id, Duration::from_secs(8));
    assert_eq!(
        left,
        Some(LeaveReason::ConnectionLost),
        "participant_left for a participant closed with 0x101"
    );
    let (_, jr_roster) = {
        let mut n = rig.connect();
        let jr = n.join_ok(
            "ghost-room",
            &rig.token("ghost-room", Role::Participant, "n"),
            "n",
        );
        (n, jr)
    };
    if let ServerMessage::JoinResponse { participants, .. } = jr_roster {
        assert!(
            participants.iter().all(|p| p.participant_id != id),
            "the closed participant is still in the roster"
        );
    }
}

fn case_truncated_frame_then_close(rig: &mut Rig) {
    let (mut w, _) = rig.joined("trunc-room", Role::Participant, "w");
    let (mut c, id) = rig.joined("trunc-room", Role::Participant, "t");
    w.expect("t joined", |m| {
        matches!(m, ServerMessage::ParticipantJoined { .. })
    });
    let f = codec::encode(&ClientMessage::Ping { id: 1 });
    c.send_raw(&f[..f.len() / 2]);
    c.io(Duration::from_millis(20));
    c.close();
    // A close without leave keeps the participant for the resume window (2 s), then timeout.
    assert_eq!(
        wait_left(rig, &mut w, &id, Duration::from_secs(10)),
        Some(LeaveReason::Timeout)
    );
    // Half a frame before any join, then close: nothing to answer, nothing leaks.
    let mut c = rig.connect();
    let j = codec::encode(&join_message(
        "trunc-room",
        &rig.token("trunc-room", Role::Participant, "u"),
        "u",
    ));
    c.send_raw(&j[..j.len() - 1]);
    c.close();
}

fn case_garbage_bytes(rig: &mut Rig) {
    // An HTTP request: "GET " is a length of 1 195 725 856.
    let mut c = rig.connect();
    c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_rejected(&mut c, "http request", ErrorCode::InvalidRequest, 0x101);
    // A plausible length, then noise.
    let mut noise = vec![0u8; 64];
    let mut x: u32 = 0x1234_5678;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let mut c = rig.connect();
    c.send_raw(&frame(&noise));
    expect_rejected(
        &mut c,
        "noise as first frame",
        ErrorCode::InvalidRequest,
        0x101,
    );
    // Not JSON objects.
    for body in [&b"[1,2,3]"[..], b"\"join\"", b"null", b"{", b"{}"] {
        let mut c = rig.connect();
        c.send_raw(&frame(body));
        expect_rejected(
            &mut c,
            "non-object first frame",
            ErrorCode::InvalidRequest,
            0x101,
        );
    }
}

fn case_garbage_after_join_keeps_the_connection(rig: &mut Rig) {
    let (mut c, _) = rig.joined("junk-room", Role::Participant, "j");
    for body in [
        &b"[1,2,3]"[..],
        b"\"ping\"",
        b"null",
        b"{",
        b"{}",
        b"{\"id\":1}",
    ] {
        c.send_raw(&frame(body));
        expect_answered_and_open(&mut c, "junk after join", ErrorCode::InvalidRequest);
    }
}

fn case_huge_json_string(rig: &mut Rig) {
    // A 64 KiB frame holding one string: legal framing, payload over 16 KiB.
    let (mut w, _) = rig.joined("huge-room", Role::Participant, "w");
    let (mut c, _) = rig.joined("huge-room", Role::Participant, "h");
    let prefix = br#"{"type":"message","payload":""#;
    let suffix = br#""}"#;
    let pad = codec::MAX_FRAME_LEN - prefix.len() - suffix.len();
    let mut body = prefix.to_vec();
    body.extend(std::iter::repeat_n(b'x', pad));
    body.extend_from_slice(suffix);
    assert_eq!(body.len(), codec::MAX_FRAME_LEN);
    c.send_raw(&frame(&body));
    expect_answered_and_open(&mut c, "64 KiB payload", ErrorCode::InvalidRequest);
    // A 64 KiB join (huge display name) is refused and closed.
    let mut j = rig.connect();
    let name = "n".repeat(60_000);
    j.send(&join_message(
        "huge-room",
        &rig.token("huge-room", Role::Participant, "hj"),
        &name,
    ));
    expect_rejected(&mut j, "64 KiB join", ErrorCode::InvalidRequest, 0x101);
    w.io(Duration::from_millis(50));
    assert!(
        !w.received
            .iter()
            .any(|m| matches!(m, ServerMessage::Message { .. })),
        "oversized payload was relayed"
    );
}

fn case_deep_json(rig: &mut Rig) {
    let (mut c, _) = rig.joined("deep-room", Role::Participant, "d");
    let depth = 10_000;
    let mut body = br#"{"type":"message","payload":"#.to_vec();
    body.extend(std::iter::repeat_n(b'[', depth));
    body.extend(std::iter::repeat_n(b']', depth));
    body.push(b'}');
    c.send_raw(&frame(&body));
    expect_answered_and_open(&mut c, "10 000 nested arrays", ErrorCode::InvalidRequest);
    // Nested objects, as the first frame.
    let mut body = br#"{"type":"join","x":"#.to_vec();
    for _ in 0..depth {
        body.extend_from_slice(br#"{"a":"#);
    }
    body.push(b'1');
    body.extend(std::iter::repeat_n(b'}', depth + 1));
    let mut j = rig.connect();
    j.send_raw(&frame(&body));
    expect_rejected(
        &mut j,
        "10 000 nested objects",
        ErrorCode::InvalidRequest,
        0x101,
    );
}

fn case_wrong_types(rig: &mut Rig) {
    let (mut c, _) = rig.joined("types-room", Role::Participant, "t");
    for body in [
        br#"{"type":"ping","id":"x"}"#.as_slice(),
        br#"{"type":"ping","id":-1}"#,
        br#"{"type":"ping","id":1.5}"#,
        br#"{"type":"mute","audio":1,"video":false}"#,
        br#"{"type":"mute","audio":"true","video":false}"#,
        br#"{"type":"message"}"#,
        br#"{"type":"message","payload":1,"to":"p0-1"}"#,
        br#"{"type":7}"#,
    ] {
        c.send_raw(&frame(body));
        expect_answered_and_open(&mut c, "wrong type", ErrorCode::InvalidRequest);
    }
    // Wrong types in a join close the connection.
    let mut j = rig.connect();
    j.send_raw(&frame(
        br#"{"type":"join","meeting_id":5,"token":"x","display_name":"n"}"#,
    ));
    expect_rejected(
        &mut j,
        "numeric meeting_id",
        ErrorCode::InvalidRequest,
        0x101,
    );
}

fn case_unknown_fields_are_accepted(rig: &mut Rig) {
    let mut c = rig.connect();
    let token = rig.token("uf-room", Role::Participant, "u");
    let join = format!(
        r#"{{"type":"join","meeting_id":"uf-room","token":"{token}","display_name":"u","future":{{"a":[1,2]}},"v":2}}"#
    );
    c.send_raw(&frame(join.as_bytes()));
    c.expect("join_response", |m| {
        matches!(m, ServerMessage::JoinResponse { .. })
    });
    c.send_raw(&frame(
        br#"{"type":"ping","id":77,"extra":{"nested":[null,true]}}"#,
    ));
    c.expect("pong 77", |m| matches!(m, ServerMessage::Pong { id: 77 }));
}

fn case_unknown_type(rig: &mut Rig) {
    let (mut c, _) = rig.joined("ut-room", Role::Participant, "u");
    c.send_raw(&frame(br#"{"type":"teleport","to":"mars"}"#));
    expect_answered_and_open(&mut c, "unknown type", ErrorCode::InvalidRequest);
    c.send_raw(&frame(br#"{"type":"JOIN"}"#));
    expect_answered_and_open(&mut c, "type in capitals", ErrorCode::InvalidRequest);
}

fn case_invalid_utf8(rig: &mut Rig) {
    let (mut c, _) = rig.joined("utf-room", Role::Participant, "u");
    c.send_raw(&frame(&[0xff, 0xfe, 0xfd]));
    expect_answered_and_open(&mut c, "invalid utf-8", ErrorCode::InvalidRequest);
    // Invalid UTF-8 inside a JSON string.
    let mut body = br#"{"type":"message","payload":""#.to_vec();
    body.extend_from_slice(&[0xc3, 0x28]);
    body.extend_from_slice(br#""}"#);
    c.send_raw(&frame(&body));
    expect_answered_and_open(
        &mut c,
        "invalid utf-8 in a string",
        ErrorCode::InvalidRequest,
    );
    // Before the join: closed.
    let mut j = rig.connect();
    j.send_raw(&frame(&[0xc0, 0x80]));
    expect_rejected(
        &mut j,
        "invalid utf-8 first",
        ErrorCode::InvalidRequest,
        0x101,
    );
}

fn case_first_message_not_join(rig: &mut Rig) {
    for msg in [
        ClientMessage::Ping { id: 1 },
        ClientMessage::Leave {},
        ClientMessage::Message {
            payload: serde_json::json!("hi"),
            to: None,
        },
        ClientMessage::EndMeeting {},
    ] {
        let mut c = rig.connect();
        c.send(&msg);
        expect_rejected(&mut c, msg.kind(), ErrorCode::InvalidRequest, 0x101);
    }
    let mut c = rig.connect();
    c.send_raw(&frame(br#"{"type":"dance"}"#));
    expect_rejected(
        &mut c,
        "unknown type first",
        ErrorCode::InvalidRequest,
        0x101,
    );
}

// -----------------------------------------------------------------------------------------
// Cases: join fields
// -----------------------------------------------------------------------------------------

fn bad_join(rig: &mut Rig, what: &str, meeting: &str, token_meeting: &str, name: &str) {
    let mut c = rig.connect();
    c.send(&join_message(
        meeting,
        &rig.token(token_meeting, Role::Participant, "u"),
        name,
    ));
    expect_rejected(&mut c, what, ErrorCode::InvalidRequest, 0x101);
}

fn case_meeting_id_too_long(rig: &mut Rig) {
    let long = "m".repeat(129);
    bad_join(rig, "meeting_id of 129", &long, &long, "u");
    // 128 is fine.
    let ok = "m".repeat(128);
    let mut c = rig.connect();
    c.join_ok(&ok, &rig.token(&ok, Role::Participant, "u"), "u");
}

fn case_meeting_id_bad_chars(rig: &mut Rig) {
    for id in [
        "a b", "a/b", "../etc", "é", "a\u{0}b", "a\nb", "<script>", "a%20b", "a:b",
    ] {
        bad_join(rig, &format!("meeting_id {id:?}"), id, id, "u");
    }
}

fn case_meeting_id_empty(rig: &mut Rig) {
    bad_join(rig, "empty meeting_id", "", "", "u");
}

fn case_display_name_too_long(rig: &mut Rig) {
    bad_join(
        rig,
        "display_name 300 bytes",
        "dn-room",
        "dn-room",
        &"n".repeat(300),
    );
    // 257 bytes of UTF-8 in fewer characters.
    bad_join(
        rig,
        "display_name 258 bytes",
        "dn-room",
        "dn-room",
        &"é".repeat(129),
    );
    let mut c = rig.connect();
    c.join_ok(
        "dn-room",
        &rig.token("dn-room", Role::Participant, "u"),
        &"é".repeat(128),
    );
}

fn case_display_name_control_chars(rig: &mut Rig) {
    for name in [
        "a\u{0}b",
        "line\nbreak",
        "tab\t",
        "esc\u{1b}[31m",
        "del\u{7f}",
        "c1\u{85}",
    ] {
        bad_join(
            rig,
            &format!("display_name {name:?}"),
            "cc-room",
            "cc-room",
            name,
        );
    }
}

fn case_request_id_too_long(rig: &mut Rig) {
    let mut c = rig.connect();
    c.send(&ClientMessage::Join {
        meeting_id: "rq-room".into(),
        token: rig.token("rq-room", Role::Participant, "u"),
        display_name: "u".into(),
        request_id: Some("r".repeat(65)),
        resume: None,
        capabilities: Vec::new(),
    });
    expect_rejected(&mut c, "request_id of 65", ErrorCode::InvalidRequest, 0x101);
}

fn case_join_twice(rig: &mut Rig) {
    let (mut c, _) = rig.joined("twice-room", Role::Participant, "u");
    c.send(&ClientMessage::Join {
        meeting_id: "twice-room".into(),
        token: rig.token("twice-room", Role::Participant, "u"),
        display_name: "again".into(),
        request_id: Some("second".into()),
        resume: None,
        capabilities: Vec::new(),
    });
    let err = c.expect("conflict", is_error(ErrorCode::Conflict));
    assert!(
        matches!(err, ServerMessage::Error { request_id: Some(ref r), .. } if r == "second"),
        "request_id echoed: {err:?}"
    );
    c.send(&ClientMessage::Ping { id: 2 });
    c.expect("pong", |m| matches!(m, ServerMessage::Pong { id: 2 }));
    // A join for another meeting on the same connection: also conflict.
    c.send(&join_message(
        "other-room",
        &rig.token("other-room", Role::Participant, "u"),
        "u",
    ));
    expect_answered_and_open(&mut c, "join of another meeting", ErrorCode::Conflict);
}

// -----------------------------------------------------------------------------------------
// Cases: tokens
// -----------------------------------------------------------------------------------------

fn case_token_too_large(rig: &mut Rig) {
    let big = format!("{}.{}.{}", b64("{}"), "A".repeat(8 * 1024), "B");
    expect_token_refused(rig, "token > 8 KiB", "tok-room", &big, "too_large");
}

fn case_token_replayed_is_accepted(rig: &mut Rig) {
    // Meeting tokens are bearer tokens: the same token joins twice, as two participants.
    let token = rig.token("replay-room", Role::Participant, "same-user");
    let mut a = rig.connect();
    let a_id = participant_id(&a.join_ok("replay-room", &token, "first"));
    let mut b = rig.connect();
    let b_id = participant_id(&b.join_ok("replay-room", &token, "second"));
    assert_ne!(a_id, b_id);
}

fn case_token_expired(rig: &mut Rig) {
    let now = unix_secs();
    let t = rig.server.signer.mint(&MintClaims {
        sub: "eve".into(),
        meeting_id: "tok-room".into(),
        role: Role::Host,
        iat: now - 7200,
        exp: now - 1,
        jti: None,
    });
    expect_token_refused(rig, "expired", "tok-room", &t, "expired");
}

fn case_token_for_another_meeting(rig: &mut Rig) {
    let t = rig.token("elsewhere", Role::Host, "eve");
    expect_token_refused(rig, "other meeting", "tok-room", &t, "wrong_meeting");
}

fn case_token_alg_none(rig: &mut Rig) {
    let now = unix_secs();
    let claims = b64(&claims_json("tok-room", now, now + 600));
    for header in [
        r#"{"alg":"none","kid":"dev-1"}"#,
        r#"{"alg":"None","kid":"dev-1"}"#,
        r#"{"alg":"NONE"}"#,
    ] {
        let t = format!("{}.{claims}.", b64(header));
        expect_token_refused(rig, header, "tok-room", &t, "bad_alg");
    }
    // alg none, but a signature copied from a valid token.
    let valid = rig.token("tok-room", Role::Host, "eve");
    let sig = valid.rsplit('.').next().unwrap();
    let t = format!("{}.{claims}.{sig}", b64(r#"{"alg":"none","kid":"dev-1"}"#));
    expect_token_refused(
        rig,
        "alg none with a real signature",
        "tok-room",
        &t,
        "bad_alg",
    );
}

fn case_token_hs256_with_public_key(rig: &mut Rig) {
    use hmac::{Hmac, Mac};
    // The classic confusion: HMAC-sign with the public key the server trusts.
    let jwks = rig.server.signer.jwks_json();
    let doc: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    let x = doc["keys"][0]["x"].as_str().unwrap().to_owned();
    let x_raw = URL_SAFE_NO_PAD.decode(&x).unwrap();
    let now = unix_secs();
    let signing_input = format!(
        "{}.{}",
        b64(&format!(
            r#"{{"alg":"HS256","kid":"{}"}}"#,
            mc::dev::DEV_KID
        )),
        b64(&claims_json("tok-room", now, now + 600))
    );
    for secret in [x_raw.as_slice(), x.as_bytes(), jwks.as_bytes()] {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(signing_input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        let t = format!("{signing_input}.{sig}");
        expect_token_refused(
            rig,
            "HS256 keyed with the public key",
            "tok-room",
            &t,
            "bad_alg",
        );
    }
}

fn case_token_wrong_kid(rig: &mut Rig) {
    let now = unix_secs();
    let t = rig.server.signer.sign_raw(
        r#"{"alg":"EdDSA","kid":"not-a-key"}"#,
        &claims_json("tok-room", now, now + 600),
    );
    expect_token_refused(rig, "unknown kid", "tok-room", &t, "unknown_kid");
    // A key of our own, announced under the server's kid.
    let other = mc::core::token::TokenSigner::generate(mc::dev::DEV_KID);
    let t = other.sign_raw(
        &format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, mc::dev::DEV_KID),
        &claims_json("tok-room", now, now + 600),
    );
    expect_token_refused(
        rig,
        "foreign key under the server's kid",
        "tok-room",
        &t,
        "bad_signature",
    );
}

fn case_token_missing_kid(rig: &mut Rig) {
    let now = unix_secs();
    let t = rig.server.signer.sign_raw(
        r#"{"alg":"EdDSA"}"#,
        &claims_json("tok-room", now, now + 600),
    );
    expect_token_refused(rig, "missing kid", "tok-room", &t, "missing_kid");
    let t = rig.server.signer.sign_raw(
        r#"{"alg":"EdDSA","kid":7}"#,
        &claims_json("tok-room", now, now + 600),
    );
    expect_token_refused(rig, "numeric kid", "tok-room", &t, "missing_kid");
}

fn case_token_garbage(rig: &mut Rig) {
    for t in ["", "a", "a.b", "a.b.c.d", "....", "é.é.é", "eyJ.eyJ.sig"] {
        expect_token_refused(rig, &format!("token {t:?}"), "tok-room", t, "malformed");
    }
}

fn case_token_tampered_claims(rig: &mut Rig) {
    // A valid participant token whose claims are swapped for role host: signature fails.
    let now = unix_secs();
    let valid = rig.token("tok-room", Role::Participant, "eve");
    let mut parts = valid.split('.');
    let (h, _, s) = (parts.next().unwrap(), parts.next(), parts.next().unwrap());
    let t = format!("{h}.{}.{s}", b64(&claims_json("tok-room", now, now + 600)));
    expect_token_refused(rig, "claims swapped", "tok-room", &t, "bad_signature");
}

// -----------------------------------------------------------------------------------------
// Cases: actions inside a meeting
// -----------------------------------------------------------------------------------------

fn case_host_actions_by_participant(rig: &mut Rig) {
    let (mut host, host_id) = rig.joined("ha-room", Role::Host, "h");
    let (mut p, _) = rig.joined("ha-room", Role::Participant, "p");
    for msg in [
        ClientMessage::Kick {
            participant_id: host_id.clone(),
        },
        ClientMessage::HostMute {
            participant_id: host_id.clone(),
            audio: true,
            video: true,
        },
        ClientMessage::EndMeeting {},
    ] {
        p.send(&msg);
        expect_answered_and_open(&mut p, msg.kind(), ErrorCode::Forbidden);
    }
    host.io(Duration::from_millis(50));
    assert!(
        !host.received.iter().any(|m| matches!(
            m,
            ServerMessage::MuteUpdate { .. } | ServerMessage::MeetingEnded { .. }
        )),
        "a participant's host action had an effect: {:?}",
        host.received
    );
    assert!(host.closed().is_none());
}

fn case_kick_and_host_mute_of_non_member(rig: &mut Rig) {
    let (mut host, host_id) = rig.joined("nm-room", Role::Host, "h");
    // A member of another meeting, an unknown id, an empty and an oversized id.
    let (_other, other_id) = rig.joined("nm-elsewhere", Role::Participant, "o");
    let long = "p".repeat(10_000);
    for target in [other_id.as_str(), "p0-ffff", "", long.as_str()] {
        host.send(&ClientMessage::Kick {
            participant_id: target.into(),
        });
        expect_answered_and_open(&mut host, "kick of a non-member", ErrorCode::NotFound);
        host.send(&ClientMessage::HostMute {
            participant_id: target.into(),
            audio: true,
            video: true,
        });
        expect_answered_and_open(&mut host, "host_mute of a non-member", ErrorCode::NotFound);
    }
    // Kicking oneself is refused.
    host.send(&ClientMessage::Kick {
        participant_id: host_id,
    });
    expect_answered_and_open(&mut host, "self kick", ErrorCode::InvalidRequest);
}

fn case_message_to_unknown_ids(rig: &mut Rig) {
    let (mut a, _) = rig.joined("to-room", Role::Participant, "a");
    let (mut b, b_id) = rig.joined("to-room", Role::Participant, "b");
    let (mut c, _) = rig.joined("to-room", Role::Participant, "c");
    let (_, foreign) = rig.joined("to-elsewhere", Role::Participant, "f");
    a.send(&ClientMessage::Message {
        payload: serde_json::json!("direct"),
        to: Some(vec![
            "p9-1".into(),
            b_id.clone(),
            foreign,
            String::new(),
            b_id.clone(),
        ]),
    });
    let err = a.expect("not_found", is_error(ErrorCode::NotFound));
    if let ServerMessage::Error { message, .. } = err {
        assert!(
            message.starts_with('3'),
            "three unknown recipients: {message}"
        );
    }
    b.expect("delivered to the known one", |m| {
        matches!(m, ServerMessage::Message { payload, .. } if *payload == serde_json::json!("direct"))
    });
    c.io(Duration::from_millis(50));
    b.io(Duration::from_millis(50));
    let n = |cl: &Client| {
        cl.received
            .iter()
            .filter(|m| matches!(m, ServerMessage::Message { .. }))
            .count()
    };
    assert_eq!(n(&b), 0, "a duplicate recipient got the message twice");
    assert_eq!(n(&c), 0, "a participant outside `to` got the message");
    // More than 1024 recipients.
    a.send(&ClientMessage::Message {
        payload: serde_json::json!(1),
        to: Some((0..1025).map(|i| format!("p0-{i}")).collect()),
    });
    expect_answered_and_open(&mut a, "1025 recipients", ErrorCode::InvalidRequest);
}

fn case_payload_over_16_kib(rig: &mut Rig) {
    let (mut a, _) = rig.joined("pl-room", Role::Participant, "a");
    let (mut b, _) = rig.joined("pl-room", Role::Participant, "b");
    // Serialized size 16 KiB + 1: a string of 16 383 bytes plus its quotes.
    a.send(&ClientMessage::Message {
        payload: serde_json::json!("x".repeat(16 * 1024 - 1)),
        to: None,
    });
    expect_answered_and_open(&mut a, "payload 16 KiB + 1", ErrorCode::InvalidRequest);
    // Exactly 16 KiB is relayed.
    a.send(&ClientMessage::Message {
        payload: serde_json::json!("y".repeat(16 * 1024 - 2)),
        to: None,
    });
    let got = b.expect("16 KiB payload", |m| {
        matches!(m, ServerMessage::Message { .. })
    });
    assert!(
        matches!(got, ServerMessage::Message { payload, .. } if payload.as_str().is_some_and(|s| s.starts_with('y')))
    );
    // A payload that is small on the wire but large once escaped.
    a.send(&ClientMessage::Message {
        payload: serde_json::json!("\u{1}".repeat(3000)),
        to: None,
    });
    expect_answered_and_open(
        &mut a,
        "payload that grows when escaped",
        ErrorCode::InvalidRequest,
    );
}

fn case_resume_with_own_binding_token_for_another(rig: &mut Rig) {
    let (mut a, a_id) = rig.joined("hijack-room", Role::Participant, "victim");
    let mut m = rig.connect();
    let jr = m.join_ok(
        "hijack-room",
        &rig.token("hijack-room", Role::Participant, "mallory"),
        "m",
    );
    let ServerMessage::JoinResponse {
        binding_token,
        participant_id: m_id,
        ..
    } = jr
    else {
        unreachable!()
    };
    let before = metric_sum_where(
        &rig.metrics(),
        "mc_token_failures_total",
        &[("reason", "bad_binding")],
    );
    let attempt = |rig: &mut Rig, pid: &str, sub: &str, binding: &str| {
        let mut c = rig.connect();
        c.send(&ClientMessage::Join {
            meeting_id: "hijack-room".into(),
            token: rig.token("hijack-room", Role::Participant, sub),
            display_name: "m".into(),
            request_id: None,
            resume: Some(ResumeRequest {
                participant_id: pid.into(),
                binding_token: binding.into(),
            }),
            capabilities: Vec::new(),
        });
        expect_rejected(
            &mut c,
            "resume of another participant",
            ErrorCode::Unauthorized,
            0x102,
        );
    };
    // Mallory's own binding token, the victim's participant id, with either user's token.
    attempt(rig, &a_id, "mallory", &binding_token);
    attempt(rig, &a_id, "victim", &binding_token);
    // An oversized binding token and a participant id that is not in this meeting.
    attempt(rig, &a_id, "victim", &"A".repeat(4096));
    attempt(rig, "p0-ffffff", "mallory", &binding_token);
    let after = rig.metric_reaching(
        "mc_token_failures_total",
        &[("reason", "bad_binding")],
        before + 2.0,
    );
    assert!(
        after >= before + 2.0,
        "bad_binding counted: {before} -> {after}"
    );
    // The victim is untouched, and Mallory's own token still resumes Mallory.
    a.send(&ClientMessage::Ping { id: 3 });
    a.expect("victim still served", |m| {
        matches!(m, ServerMessage::Pong { id: 3 })
    });
    let mut again = rig.connect();
    again.send(&ClientMessage::Join {
        meeting_id: "hijack-room".into(),
        token: rig.token("hijack-room", Role::Participant, "mallory"),
        display_name: "m".into(),
        request_id: None,
        resume: Some(ResumeRequest {
            participant_id: m_id.clone(),
            binding_token,
        }),
        capabilities: Vec::new(),
    });
    let jr = again.expect("own resume", |m| {
        matches!(m, ServerMessage::JoinResponse { .. })
    });
    assert_eq!(participant_id(&jr), m_id);
    assert_eq!(m.wait_closed(T), Some(Closed { app: true, code: 0 }));
}

fn case_leave_then_keep_sending(rig: &mut Rig) {
    let (mut w, _) = rig.joined("lv-room", Role::Participant, "w");
    let (mut c, id) = rig.joined("lv-room", Role::Participant, "l");
    w.expect("l joined", |m| {
        matches!(m, ServerMessage::ParticipantJoined { .. })
    });
    let mut burst = codec::encode(&ClientMessage::Leave {}).to_vec();
    for i in 0..20 {
        burst.extend_from_slice(&codec::encode(&ClientMessage::Message {
            payload: serde_json::json!({ "after_leave": i }),
            to: None,
        }));
    }
    c.send_raw(&burst);
    // Keep sending while the server closes (writes may fail once it is closed).
    for i in 0..20 {
        if c.closed().is_some() {
            break;
        }
        c.send(&ClientMessage::Message {
            payload: serde_json::json!({ "later": i }),
            to: None,
        });
    }
    assert_eq!(c.wait_closed(T), Some(Closed { app: true, code: 0 }));
    assert_eq!(wait_left(rig, &mut w, &id, T), Some(LeaveReason::Voluntary));
    w.io(Duration::from_millis(100));
    assert!(
        !w.received
            .iter()
            .any(|m| matches!(m, ServerMessage::Message { .. })),
        "messages sent after leave were relayed: {:?}",
        w.received
    );
}

fn case_end_meeting_then_keep_sending(rig: &mut Rig) {
    let (mut host, _) = rig.joined("end-room", Role::Host, "h");
    let (mut p, _) = rig.joined("end-room", Role::Participant, "p");
    let mut burst = codec::encode(&ClientMessage::EndMeeting {}).to_vec();
    burst.extend_from_slice(&codec::encode(&ClientMessage::Kick {
        participant_id: "x".into(),
    }));
    host.send_raw(&burst);
    for c in [&mut host, &mut p] {
        c.expect("meeting_ended", |m| {
            matches!(
                m,
                ServerMessage::MeetingEnded {
                    reason: EndReason::EndedByHost
                }
            )
        });
        assert_eq!(c.wait_closed(T), Some(Closed { app: true, code: 0 }));
    }
}

// -----------------------------------------------------------------------------------------
// Cases: time and resources
// -----------------------------------------------------------------------------------------

fn case_join_never_sent(rig: &mut Rig) {
    let before = metric_sum_where(&rig.metrics(), "mc_joins_total", &[("result", "timeout")]);
    // A handshake and nothing else; and a stream opened with a partial header only.
    let mut idle = rig.connect();
    let mut partial = rig.connect();
    partial.send_raw(&[0, 0]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while (idle.closed().is_none() || partial.closed().is_none()) && Instant::now() < deadline {
        rig.pump();
        idle.io(Duration::from_millis(5));
        partial.io(Duration::from_millis(5));
    }
    let timed_out = Some(Closed {
        app: true,
        code: 0x101,
    });
    assert_eq!(idle.closed(), timed_out, "idle connection");
    assert_eq!(partial.closed(), timed_out, "partial header");
    partial.expect("error before close", is_error(ErrorCode::InvalidRequest));
    let after = rig.metric_reaching("mc_joins_total", &[("result", "timeout")], before + 2.0);
    assert!(
        after >= before + 2.0,
        "mc_joins_total{{result=\"timeout\"}}: {before} -> {after}"
    );
}

fn case_slowloris_join(rig: &mut Rig) {
    // One byte per 200 ms of a valid join: the 1 s join timeout closes it long before the
    // ~500 bytes are in.
    let mut c = rig.connect();
    let join = codec::encode(&join_message(
        "slow-room",
        &rig.token("slow-room", Role::Participant, "s"),
        "s",
    ));
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent < join.len() && c.closed().is_none() && Instant::now() < deadline {
        c.send_raw(&join[sent..=sent]);
        sent += 1;
        let next = Instant::now() + Duration::from_millis(200);
        while Instant::now() < next && c.closed().is_none() {
            rig.pump();
            c.io(Duration::from_millis(5));
        }
    }
    if sent == join.len() {
        // Completed within the timeout (only possible with a long --join-timeout).
        c.expect("join_response", |m| {
            matches!(m, ServerMessage::JoinResponse { .. })
        });
    } else {
        c.expect("join timeout error", is_error(ErrorCode::InvalidRequest));
        assert_eq!(
            c.wait_closed(T),
            Some(Closed {
                app: true,
                code: 0x101
            })
        );
    }
}

fn case_connection_storm(rig: &mut Rig) {
    const N: usize = 200;
    let before = metric_sum_where(&rig.metrics(), "mc_handshakes_total", &[]);
    let mut clients = Vec::with_capacity(N);
    let mut failed = 0;
    for i in 0..N {
        match Client::try_connect(rig.server.quic, Duration::from_secs(5)) {
            Ok(c) => clients.push(c),
            Err(_) => failed += 1,
        }
        if i % 10 == 0 {
            rig.pump();
        }
    }
    eprintln!(
        "storm: {} connected, {failed} refused or timed out",
        clients.len()
    );
    assert!(
        !clients.is_empty(),
        "no connection of the storm got through"
    );
    // The control meeting is served while they sit there.
    rig.check("connection storm (while idle)");
    // Every idle connection is closed by the join timeout.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open = clients.iter().filter(|c| c.closed().is_none()).count();
        if open == 0 || Instant::now() >= deadline {
            break;
        }
        rig.pump();
        for c in clients.iter_mut().filter(|c| c.closed().is_none()) {
            c.io(Duration::ZERO);
        }
    }
    let codes: Vec<Option<Closed>> = clients.iter().map(Client::closed).collect();
    let not_timed_out: Vec<&Option<Closed>> = codes
        .iter()
        .filter(|c| {
            **c != Some(Closed {
                app: true,
                code: 0x101,
            })
        })
        .collect();
    assert!(
        not_timed_out.is_empty(),
        "{} of {} storm connections were not closed with 0x101: {:?}",
        not_timed_out.len(),
        clients.len(),
        &not_timed_out[..not_timed_out.len().min(5)]
    );
    let after = rig.metric_reaching("mc_handshakes_total", &[], before + clients.len() as f64);
    assert!(
        after - before >= clients.len() as f64,
        "handshakes {before} -> {after}"
    );
}

fn case_many_streams(rig: &mut Rig) {
    // Join on stream 0, then open more bidi streams and unidirectional ones: they are refused
    // with STOP_SENDING 0x101, carry no signaling, and stream 0 keeps working.
    let mut c = raw_conn(rig.server.quic, b"mc/1");
    assert!(c.conn.is_established(), "handshake");
    let token = rig.token("streams-room", Role::Participant, "s");
    c.send_on(
        0,
        &codec::encode(&join_message("streams-room", &token, "s")),
    )
    .unwrap();
    let mut dec = codec::FrameDecoder::new();
    let mut got = Vec::new();
    let deadline = Instant::now() + T;
    while !got
        .iter()
        .any(|m| matches!(m, ServerMessage::JoinResponse { .. }))
        && Instant::now() < deadline
    {
        c.io(Duration::from_millis(5));
        got.extend(c.read_frames(0, &mut dec));
    }
    assert!(
        got.iter()
            .any(|m| matches!(m, ServerMessage::JoinResponse { .. })),
        "{got:?}"
    );
    let ping = codec::encode(&ClientMessage::Ping { id: 99 });
    let extra_bidi: Vec<u64> = (1..12).map(|i| i * 4).collect();
    let uni: Vec<u64> = (0..4).map(|i| i * 4 + 2).collect();
    for s in extra_bidi.iter().chain(&uni) {
        let _ = c.send_on(*s, &ping);
    }
    for s in extra_bidi.iter().chain(&uni) {
        assert_eq!(
            wait_stopped(&mut c, *s, T),
            Some(0x101),
            "stream {s} was not refused with STOP_SENDING 0x101"
        );
    }
    c.io(Duration::from_millis(50));
    let mut extra = Vec::new();
    for s in &extra_bidi {
        extra.extend(c.read_frames(*s, &mut codec::FrameDecoder::new()));
    }
    got.extend(c.read_frames(0, &mut dec));
    assert!(extra.is_empty(), "answers on stray streams: {extra:?}");
    assert!(
        !got.iter()
            .any(|m| matches!(m, ServerMessage::Pong { id: 99 })),
        "a ping on a stray stream was answered on stream 0"
    );
    c.send_on(0, &codec::encode(&ClientMessage::Ping { id: 100 }))
        .unwrap();
    let deadline = Instant::now() + T;
    while !got
        .iter()
        .any(|m| matches!(m, ServerMessage::Pong { id: 100 }))
        && Instant::now() < deadline
    {
        c.io(Duration::from_millis(5));
        got.extend(c.read_frames(0, &mut dec));
    }
    assert!(got
        .iter()
        .any(|m| matches!(m, ServerMessage::Pong { id: 100 })));
    assert!(!c.conn.is_closed());
    let _ = c.conn.close(true, 0, b"done");
    c.flush();
}

fn case_stream_finished_by_client(rig: &mut Rig) {
    // FIN on the signaling stream right after the join: treated as a close (no leave), so the
    // participant is kept for the resume window and then times out.
    let (mut w, _) = rig.joined("fin-room", Role::Participant, "w");
    let mut c = raw_conn(rig.server.quic, b"mc/1");
    let token = rig.token("fin-room", Role::Participant, "f");
    c.send_on(0, &codec::encode(&join_message("fin-room", &token, "f")))
        .unwrap();
    let _ = c.conn.stream_send(0, b"", true);
    let joined = w.expect("f joined", |m| {
        matches!(m, ServerMessage::ParticipantJoined { .. })
    });
    let ServerMessage::ParticipantJoined { participant } = joined else {
        unreachable!()
    };
    let deadline = Instant::now() + T;
    while !c.conn.is_closed() && Instant::now() < deadline {
        c.io(Duration::from_millis(5));
    }
    assert!(c.conn.is_closed(), "connection not closed after FIN");
    assert_eq!(
        wait_left(rig, &mut w, &participant.participant_id, T),
        Some(LeaveReason::Timeout)
    );
}

fn case_wrong_alpn(rig: &mut Rig) {
    for alpn in [&b"h2"[..], b"mc/2", b"\0"] {
        let c = raw_conn(rig.server.quic, alpn);
        assert!(
            !c.conn.is_established(),
            "handshake with ALPN {alpn:?} succeeded"
        );
        let err = c.conn.peer_error().or(c.conn.local_error());
        assert!(
            err.is_some_and(|e| !e.is_app && e.error_code == 0x178),
            "ALPN {alpn:?}: expected no_application_protocol (0x178), got {err:?}"
        );
    }
}

fn case_udp_garbage(rig: &mut Rig) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let dst = rig.server.quic;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = || {
        x ^= x << 7;
        x ^= x >> 9;
        x
    };
    let mut largest_answer_ratio = 0.0f64;
    let mut answers = 0;
    let mut drain = |sock: &UdpSocket, sent: usize| {
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            answers += 1;
            largest_answer_ratio = largest_answer_ratio.max(n as f64 / sent as f64);
        }
    };
    // Random datagrams of many sizes.
    for len in [0usize, 1, 2, 7, 20, 64, 500, 1199, 1200, 1350, 1500, 9000] {
        let d: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        let _ = sock.send_to(&d, dst);
        drain(&sock, len.max(1));
    }
    // Long-header Initials of an unknown version, small and full size.
    for len in [30usize, 1200] {
        let mut d = vec![0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 8];
        d.extend_from_slice(&[1; 8]);
        d.push(8);
        d.extend_from_slice(&[2; 8]);
        d.resize(len, 0);
        let _ = sock.send_to(&d, dst);
        drain(&sock, len);
    }
    // Short-header packets whose DCID names shard 0, shard 1 and shard 7 in our CID layout but
    // no live connection: routed (by the kernel steering program or by forwarding) to the
    // named shard if it exists, then dropped as unknown, never answered.
    let before = metric_sum_where(&rig.metrics(), "mc_datagrams_received_total", &[]);
    const PER_SHARD: usize = 20;
    for shard in [0u16, 1, 7] {
        for _ in 0..PER_SHARD {
            let mut random = [0u8; 11];
            for b in random.iter_mut() {
                *b = rnd() as u8;
            }
            let cid = mc::core::router::encode_cid(0, mc::core::ids::ShardId(shard), &random);
            let mut d = vec![0x40];
            d.extend_from_slice(&cid);
            d.extend((0..40).map(|_| rnd() as u8));
            let _ = sock.send_to(&d, dst);
        }
    }
    drain(&sock, 57);
    let want = before + 3.0 * PER_SHARD as f64;
    let after = rig.metric_reaching("mc_datagrams_received_total", &[], want);
    assert!(
        after >= want,
        "forged short-header packets were not all received: {before} -> {after}"
    );
    eprintln!(
        "udp garbage: {answers} answers, largest answer/request ratio {largest_answer_ratio:.2}"
    );
    assert!(
        largest_answer_ratio <= 3.0,
        "an unauthenticated datagram was answered with more than 3x its size"
    );
}

fn case_ping_id_limits(rig: &mut Rig) {
    let (mut c, _) = rig.joined("ping-room", Role::Participant, "p");
    c.send_raw(&frame(br#"{"type":"ping","id":18446744073709551615}"#));
    c.expect("pong u64::MAX", |m| {
        matches!(m, ServerMessage::Pong { id: u64::MAX })
    });
    c.send_raw(&frame(br#"{"type":"ping","id":18446744073709551616}"#));
    expect_answered_and_open(&mut c, "ping id 2^64", ErrorCode::InvalidRequest);
    c.send_raw(&frame(br#"{"type":"message","payload":1e400}"#));
    expect_answered_and_open(&mut c, "number out of range", ErrorCode::InvalidRequest);
}

fn case_duplicate_keys(rig: &mut Rig) {
    let (mut w, _) = rig.joined("dup-room", Role::Participant, "w");
    let (mut c, _) = rig.joined("dup-room", Role::Participant, "d");
    // Two `type` keys: one decision, no crash; the connection stays usable.
    c.send_raw(&frame(br#"{"type":"ping","type":"leave","id":1}"#));
    c.send(&ClientMessage::Ping { id: 2 });
    c.expect("pong 2", |m| matches!(m, ServerMessage::Pong { id: 2 }));
    assert!(
        c.closed().is_none(),
        "a duplicate type key closed the connection"
    );
    // Two `payload` keys in a message.
    c.send_raw(&frame(br#"{"type":"message","payload":1,"payload":2}"#));
    c.send(&ClientMessage::Ping { id: 3 });
    c.expect("pong 3", |m| matches!(m, ServerMessage::Pong { id: 3 }));
    w.io(Duration::from_millis(20));
    assert!(w.closed().is_none());
}

fn case_test_hook_payload_is_inert(rig: &mut Rig) {
    // The panic hook of the test builds does nothing unless the server enabled it.
    let (mut a, _) = rig.joined("hook-room", Role::Participant, "a");
    let (mut b, _) = rig.joined("hook-room", Role::Participant, "b");
    a.send(&ClientMessage::Message {
        payload: serde_json::json!(mc::core::shard::TEST_PANIC_PAYLOAD),
        to: None,
    });
    b.expect("relayed as any payload", |m| {
        matches!(m, ServerMessage::Message { payload, .. } if payload.as_str() == Some(mc::core::shard::TEST_PANIC_PAYLOAD))
    });
    assert!(a.closed().is_none() && b.closed().is_none());
}

fn case_token_wrong_type_and_future(rig: &mut Rig) {
    let now = unix_secs();
    let t = rig.server.signer.sign_raw(
        &format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, mc::dev::DEV_KID),
        &format!(
            r#"{{"sub":"eve","token_type":"session","meeting_id":"tok-room","role":"host","iat":{now},"exp":{}}}"#,
            now + 600
        ),
    );
    expect_token_refused(rig, "token_type session", "tok-room", &t, "wrong_type");
    let t = rig.server.signer.mint(&MintClaims {
        sub: "eve".into(),
        meeting_id: "tok-room".into(),
        role: Role::Host,
        iat: now + 3600,
        exp: now + 7200,
        jti: None,
    });
    expect_token_refused(
        rig,
        "issued in the future",
        "tok-room",
        &t,
        "issued_in_future",
    );
    // Meeting ids are case-sensitive.
    let t = rig.token("TOK-ROOM", Role::Host, "eve");
    expect_token_refused(
        rig,
        "meeting id in another case",
        "tok-room",
        &t,
        "wrong_meeting",
    );
}

fn case_gone_participants_cannot_resume(rig: &mut Rig) {
    let (mut host, _) = rig.joined("gone-room", Role::Host, "h");
    let mut k = rig.connect();
    let jr = k.join_ok(
        "gone-room",
        &rig.token("gone-room", Role::Participant, "k"),
        "k",
    );
    let ServerMessage::JoinResponse {
        participant_id: k_id,
        binding_token: k_binding,
        ..
    } = jr
    else {
        unreachable!()
    };
    let mut l = rig.connect();
    let jr = l.join_ok(
        "gone-room",
        &rig.token("gone-room", Role::Participant, "l"),
        "l",
    );
    let ServerMessage::JoinResponse {
        participant_id: l_id,
        binding_token: l_binding,
        ..
    } = jr
    else {
        unreachable!()
    };
    host.send(&ClientMessage::Kick {
        participant_id: k_id.clone(),
    });
    k.expect("kicked", |m| {
        matches!(
            m,
            ServerMessage::MeetingEnded {
                reason: EndReason::Kicked
            }
        )
    });
    l.send(&ClientMessage::Leave {});
    assert_eq!(l.wait_closed(T), Some(Closed { app: true, code: 0 }));
    for (what, sub, pid, binding) in [
        ("kicked participant resumes", "k", &k_id, &k_binding),
        ("participant that left resumes", "l", &l_id, &l_binding),
    ] {
        let mut c = rig.connect();
        c.send(&ClientMessage::Join {
            meeting_id: "gone-room".into(),
            token: rig.token("gone-room", Role::Participant, sub),
            display_name: sub.into(),
            request_id: None,
            resume: Some(ResumeRequest {
                participant_id: pid.clone(),
                binding_token: binding.clone(),
            }),
            capabilities: Vec::new(),
        });
        expect_rejected(&mut c, what, ErrorCode::Unauthorized, 0x102);
    }
}

fn case_reset_signaling_stream(rig: &mut Rig) {
    // The client resets its sending side of stream 0 and asks the server to stop sending on
    // it: the shard must not spin on the reset stream, and the control meeting (possibly on
    // the same shard) goes on.
    let (mut w, _) = rig.joined("reset-room", Role::Participant, "w");
    let mut c = raw_conn(rig.server.quic, b"mc/1");
    let token = rig.token("reset-room", Role::Participant, "r");
    c.send_on(0, &codec::encode(&join_message("reset-room", &token, "r")))
        .unwrap();
    w.expect("r joined", |m| {
        matches!(m, ServerMessage::ParticipantJoined { .. })
    });
    let _ = c.conn.stream_shutdown(0, quiche::Shutdown::Write, 0x77);
    let _ = c.conn.stream_shutdown(0, quiche::Shutdown::Read, 0x77);
    c.io(Duration::from_millis(50));
    rig.check("reset_signaling_stream (while reset)");
    w.send(&ClientMessage::Message {
        payload: serde_json::json!("to a reset stream"),
        to: None,
    });
    w.send(&ClientMessage::Ping { id: 5 });
    w.expect("pong", |m| matches!(m, ServerMessage::Pong { id: 5 }));
    c.io(Duration::from_millis(50));
    let _ = c.conn.close(true, 0, b"bye");
    c.flush();
}

fn case_h3_frame_unexpected(rig: &mut Rig) {
    // HTTP/3 (WebTransport) connection with a SETTINGS frame on a request stream: an HTTP/3
    // connection error, not a crash; the control meeting goes on.
    let mut c = raw_conn(rig.server.quic, b"h3");
    assert!(c.conn.is_established(), "h3 handshake");
    let _ = c.send_on(0, &[0x04, 0x00]);
    let deadline = Instant::now() + T;
    while !c.conn.is_closed() && Instant::now() < deadline {
        c.io(Duration::from_millis(5));
    }
    let err = c.conn.peer_error();
    assert!(
        err.is_some_and(|e| e.is_app && e.error_code == 0x105),
        "expected H3_FRAME_UNEXPECTED (0x105), got {err:?}"
    );
}

fn case_meeting_full(rig: &mut Rig) {
    // --max-participants-per-meeting 4 on this server.
    let mut members = Vec::new();
    for i in 0..4 {
        members.push(rig.joined("full-room", Role::Participant, &format!("m{i}")));
    }
    let mut c = rig.connect();
    c.send(&join_message(
        "full-room",
        &rig.token("full-room", Role::Participant, "late"),
        "late",
    ));
    expect_rejected(
        &mut c,
        "fifth participant",
        ErrorCode::CapacityExceeded,
        0x103,
    );
    for (m, _) in members.iter_mut() {
        m.io(Duration::from_millis(5));
        assert!(
            !m.received
                .iter()
                .any(|msg| matches!(msg, ServerMessage::ParticipantJoined { participant } if participant.display_name == "late")),
            "the refused joiner was announced"
        );
    }
}

// -----------------------------------------------------------------------------------------
// Cases for the second server (--rate-limit 20 --rate-burst 20, default join timeout)
// -----------------------------------------------------------------------------------------

fn case_flooding(rig: &mut Rig) {
    let (mut w, _) = rig.joined("flood-room", Role::Participant, "w");
    let (mut f, f_id) = rig.joined("flood-room", Role::Participant, "f");
    w.expect("f joined", |m| {
        matches!(m, ServerMessage::ParticipantJoined { .. })
    });
    let before = metric_sum_where(
        &rig.metrics(),
        "mc_messages_dropped_total",
        &[("actor_type", "connection"), ("reason", "rate_limited")],
    );
    let mut burst = Vec::new();
    for id in 0..200 {
        burst.extend_from_slice(&codec::encode(&ClientMessage::Ping { id }));
    }
    f.send_raw(&burst);
    let closed = f.wait_closed(T);
    assert!(
        f.received.iter().any(|m| matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            }
        )),
        "no rate_limited error before the disconnect"
    );
    let pongs = f
        .received
        .iter()
        .filter(|m| matches!(m, ServerMessage::Pong { .. }))
        .count();
    assert!(
        pongs < 150,
        "{pongs} pongs: most of the flood was not dropped"
    );
    assert_eq!(
        closed,
        Some(Closed {
            app: true,
            code: 0x104
        })
    );
    assert_eq!(
        wait_left(rig, &mut w, &f_id, T),
        Some(LeaveReason::ConnectionLost)
    );
    let after = rig.metric_reaching(
        "mc_messages_dropped_total",
        &[("actor_type", "connection"), ("reason", "rate_limited")],
        before + 1.0,
    );
    assert!(after > before, "rate_limited drops counted");
}

fn case_rate_limited_but_polite(rig: &mut Rig) {
    // A short burst over the limit: rate_limited answers, messages dropped, connection stays.
    let (mut c, _) = rig.joined("polite-room", Role::Participant, "p");
    let mut burst = Vec::new();
    for id in 0..30 {
        burst.extend_from_slice(&codec::encode(&ClientMessage::Ping { id }));
    }
    c.send_raw(&burst);
    c.expect("rate_limited", is_error(ErrorCode::RateLimited));
    std::thread::sleep(Duration::from_millis(1100));
    c.send(&ClientMessage::Ping { id: 1000 });
    c.expect("pong after the bucket refilled", |m| {
        matches!(m, ServerMessage::Pong { id: 1000 })
    });
    assert!(c.closed().is_none());
}

fn case_one_byte_drip_of_a_valid_join(rig: &mut Rig) {
    let mut c = rig.connect();
    let join = codec::encode(&ClientMessage::Join {
        meeting_id: "drip-room".into(),
        token: rig.token("drip-room", Role::Participant, "d"),
        display_name: "drip".into(),
        request_id: Some("drip".into()),
        resume: None,
        capabilities: Vec::new(),
    });
    for b in join.iter() {
        c.send_raw(std::slice::from_ref(b));
    }
    let jr = c.expect("join_response", |m| {
        matches!(m, ServerMessage::JoinResponse { .. })
    });
    assert!(
        matches!(jr, ServerMessage::JoinResponse { request_id: Some(ref r), .. } if r == "drip")
    );
}

// -----------------------------------------------------------------------------------------
// The suites
// -----------------------------------------------------------------------------------------

type Case = (&'static str, fn(&mut Rig));

/// Cases for the server with `--join-timeout 1s --resume-window 2s`.
const MAIN_CASES: &[Case] = &[
    ("zero_length_frame", case_zero_length_frame),
    ("length_above_65536", case_length_above_65536),
    (
        "frame_error_after_join_releases_the_participant",
        case_frame_error_after_join_releases_the_participant,
    ),
    (
        "truncated_frame_then_close",
        case_truncated_frame_then_close,
    ),
    ("garbage_bytes", case_garbage_bytes),
    (
        "garbage_after_join_keeps_the_connection",
        case_garbage_after_join_keeps_the_connection,
    ),
    ("huge_json_string", case_huge_json_string),
    ("deep_json", case_deep_json),
    ("wrong_types", case_wrong_types),
    (
        "unknown_fields_are_accepted",
        case_unknown_fields_are_accepted,
    ),
    ("unknown_type", case_unknown_type),
    ("invalid_utf8", case_invalid_utf8),
    ("first_message_not_join", case_first_message_not_join),
    ("meeting_id_too_long", case_meeting_id_too_long),
    ("meeting_id_bad_chars", case_meeting_id_bad_chars),
    ("meeting_id_empty", case_meeting_id_empty),
    ("display_name_too_long", case_display_name_too_long),
    (
        "display_name_control_chars",
        case_display_name_control_chars,
    ),
    ("request_id_too_long", case_request_id_too_long),
    ("join_twice", case_join_twice),
    ("token_too_large", case_token_too_large),
    (
        "token_replayed_is_accepted",
        case_token_replayed_is_accepted,
    ),
    ("token_expired", case_token_expired),
    ("token_for_another_meeting", case_token_for_another_meeting),
    ("token_alg_none", case_token_alg_none),
    (
        "token_hs256_with_public_key",
        case_token_hs256_with_public_key,
    ),
    ("token_wrong_kid", case_token_wrong_kid),
    ("token_missing_kid", case_token_missing_kid),
    ("token_garbage", case_token_garbage),
    ("token_tampered_claims", case_token_tampered_claims),
    (
        "host_actions_by_participant",
        case_host_actions_by_participant,
    ),
    (
        "kick_and_host_mute_of_non_member",
        case_kick_and_host_mute_of_non_member,
    ),
    ("message_to_unknown_ids", case_message_to_unknown_ids),
    ("payload_over_16_kib", case_payload_over_16_kib),
    (
        "resume_with_own_binding_token_for_another",
        case_resume_with_own_binding_token_for_another,
    ),
    ("leave_then_keep_sending", case_leave_then_keep_sending),
    (
        "end_meeting_then_keep_sending",
        case_end_meeting_then_keep_sending,
    ),
    ("join_never_sent", case_join_never_sent),
    ("slowloris_join", case_slowloris_join),
    ("many_streams", case_many_streams),
    ("stream_finished_by_client", case_stream_finished_by_client),
    ("wrong_alpn", case_wrong_alpn),
    ("udp_garbage", case_udp_garbage),
    ("ping_id_limits", case_ping_id_limits),
    ("duplicate_keys", case_duplicate_keys),
    (
        "test_hook_payload_is_inert",
        case_test_hook_payload_is_inert,
    ),
    (
        "token_wrong_type_and_future",
        case_token_wrong_type_and_future,
    ),
    (
        "gone_participants_cannot_resume",
        case_gone_participants_cannot_resume,
    ),
    ("reset_signaling_stream", case_reset_signaling_stream),
    ("h3_frame_unexpected", case_h3_frame_unexpected),
    ("connection_storm", case_connection_storm),
];

/// Cases for the server with `--rate-limit 20 --rate-burst 20` and the default join timeout.
const RATE_CASES: &[Case] = &[
    (
        "one_byte_drip_of_a_valid_join",
        case_one_byte_drip_of_a_valid_join,
    ),
    ("rate_limited_but_polite", case_rate_limited_but_polite),
    ("flooding", case_flooding),
    ("meeting_full", case_meeting_full),
];

const MAIN_FLAGS: &[&str] = &[
    "--shards",
    "2",
    "--join-timeout",
    "1s",
    "--resume-window",
    "2s",
];
const RATE_FLAGS: &[&str] = &[
    "--shards",
    "2",
    "--rate-limit",
    "20",
    "--rate-burst",
    "20",
    "--max-participants-per-meeting",
    "4",
];

fn run(rig: &mut Rig, cases: &[Case]) {
    for (name, case) in cases {
        eprintln!("hostile case: {name}");
        case(rig);
        rig.check(name);
    }
    let panics = metric_sum_where(&rig.metrics(), "mc_actor_panics_total", &[]);
    assert_eq!(panics, 0.0, "a hostile case made an actor panic");
}

#[test]
fn hostile_inputs_leave_the_control_meeting_served() {
    let mut rig = Rig::start("hostile", MAIN_FLAGS);
    run(&mut rig, MAIN_CASES);
}

#[test]
fn hostile_flood_and_drip_leave_the_control_meeting_served() {
    let mut rig = Rig::start("hostile-rate", RATE_FLAGS);
    run(&mut rig, RATE_CASES);
}

/// A long-header packet: `first` byte, `version`, DCID, SCID, then (Initial) an empty token
/// and a length, padded with zeros to `len` bytes.
fn long_header(first: u8, version: u32, dcid: &[u8], scid: &[u8], len: usize) -> Vec<u8> {
    let mut d = vec![first];
    d.extend_from_slice(&version.to_be_bytes());
    d.push(dcid.len() as u8);
    d.extend_from_slice(dcid);
    d.push(scid.len() as u8);
    d.extend_from_slice(scid);
    d.push(0); // token length
    d.extend_from_slice(&[0x44, 0x00]); // length (varint)
    d.resize(len.max(d.len()), 0);
    d
}

/// The destination CID of a long-header packet the server sent (Retry or Version Negotiation).
fn answered_dcid(p: &[u8]) -> Option<Vec<u8>> {
    let n = usize::from(*p.get(5)?);
    p.get(6..6 + n).map(<[u8]>::to_vec)
}

/// Sends each probe (small datagrams, which RFC 9000 §5.2.2 and §14.1 require a server to
/// drop), then a full-size fence packet, and returns the probes' SCIDs that were answered
/// before the fence's answer arrived. Probes and fence share their DCID so they reach the same
/// shard socket and are handled in order.
fn answered_before_fence(
    server: SocketAddr,
    version: u32,
    probe_lens: &[usize],
) -> Vec<(usize, usize)> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let dcid = [0x5a; 8];
    for (i, len) in probe_lens.iter().enumerate() {
        let scid = [i as u8 + 1; 8];
        sock.send_to(&long_header(0xc0, version, &dcid, &scid, *len), server)
            .unwrap();
    }
    let fence = [0xfe; 8];
    sock.send_to(&long_header(0xc0, version, &dcid, &fence, 1200), server)
        .unwrap();
    let mut answered = Vec::new();
    let deadline = Instant::now() + T;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        match answered_dcid(&buf[..n]) {
            Some(d) if d == fence => return answered,
            Some(d) if d.len() == 8 && d[0] >= 1 && usize::from(d[0]) <= probe_lens.len() => {
                answered.push((probe_lens[usize::from(d[0]) - 1], n));
            }
            _ => {}
        }
    }
    panic!("the full-size fence packet was never answered");
}

#[test]
fn small_unknown_version_datagrams_are_dropped() {
    // No shedding by queue age: on a starved machine it could drop the single fence packet.
    let server = Server::start("hostile-vn", &["--shards", "2", "--max-queue-delay", "0"]);
    let answered = answered_before_fence(server.quic, 0x1a2a_3a4a, &[24, 100, 1199]);
    assert_eq!(
        answered,
        vec![],
        "(probe size, answer size) of answered small datagrams"
    );
}

#[test]
fn small_initials_get_no_retry() {
    // No shedding by queue age: on a starved machine it could drop the single fence packet.
    let server = Server::start(
        "hostile-retry",
        &["--shards", "2", "--retry", "--max-queue-delay", "0"],
    );
    let answered = answered_before_fence(server.quic, 1, &[24, 100, 1199]);
    assert_eq!(
        answered,
        vec![],
        "(probe size, answer size) of answered small Initials"
    );
}

/// A join into a meeting whose roster does not fit in one 64 KiB frame: 171 participants with
/// 256-byte display names (the spec's maximum) make a `join_response` of about 66 KB, which a
/// client holding to the spec's framing (N ≤ 65536) must refuse.
#[test]
fn join_response_fits_in_one_frame() {
    const N: usize = 175;
    let server = Server::start("hostile-roster", &["--shards", "2"]);
    let name = "n".repeat(mc::core::protocol::MAX_DISPLAY_NAME_BYTES);
    let mut members = Vec::with_capacity(N);
    for i in 0..N {
        let mut c = raw_conn(server.quic, b"mc/1");
        let token = server.token("big-room", Role::Participant, &format!("u{i}"));
        c.send_on(0, &codec::encode(&join_message("big-room", &token, &name)))
            .unwrap();
        members.push(c);
    }
    // Let every join land, then join once more and read the raw length prefix.
    for c in members.iter_mut() {
        c.io(Duration::from_millis(1));
    }
    let mut last = raw_conn(server.quic, b"mc/1");
    let token = server.token("big-room", Role::Participant, "last");
    last.send_on(0, &codec::encode(&join_message("big-room", &token, &name)))
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 65535];
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        last.io(Duration::from_millis(5));
        while let Ok((n, _)) = last.conn.stream_recv(0, &mut buf) {
            raw.extend_from_slice(&buf[..n]);
        }
        if raw.len() >= 4 {
            let len = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
            if raw.len() >= 4 + len.min(1 << 20) {
                break;
            }
        }
        for c in members.iter_mut().step_by(10) {
            c.io(Duration::ZERO);
        }
    }
    assert!(raw.len() >= 4, "no answer to the last join");
    let len = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
    let body: serde_json::Value = serde_json::from_slice(&raw[4..4 + len]).expect("json");
    let roster = body["participants"].as_array().map_or(0, Vec::len);
    assert!(
        len <= codec::MAX_FRAME_LEN,
        "join_response of {len} bytes for a roster of {roster}: over the 65536-byte frame limit"
    );
}

/// Handshake state per shard is bounded and short-lived: Initials that cannot start a
/// handshake (datagrams under 1200 bytes, which RFC 9000 §14.1 says to discard) must not
/// occupy handshake slots, so a legitimate client still gets in afterwards, and whatever
/// state they created is gone after the idle timeout.
#[test]
fn junk_initials_do_not_lock_out_clients() {
    let server = Server::start(
        "hostile-junk-initials",
        &[
            "--shards",
            "2",
            "--max-handshakes-per-shard",
            "50",
            "--idle-timeout",
            "2s",
        ],
    );
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let before = metric_sum_where(&server.metrics(), "mc_connections_active", &[]);
    for i in 0..300u32 {
        let mut dcid = [0u8; 8];
        dcid[..4].copy_from_slice(&i.to_be_bytes());
        let scid = [0x33; 8];
        let len = if i % 2 == 0 { 60 } else { 1200 };
        sock.send_to(&long_header(0xc0, 1, &dcid, &scid, len), server.quic)
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let m = server.metrics();
    eprintln!(
        "after junk: connections {} -> {}, shed {}",
        before,
        metric_sum_where(&m, "mc_connections_active", &[]),
        metric_sum_where(&m, "mc_handshakes_shed_total", &[])
    );
    let c = Client::try_connect(server.quic, Duration::from_secs(5));
    assert!(
        c.is_ok(),
        "a legitimate client was locked out: {:?}",
        c.err()
    );
}
