//! Resume across shards (signaling v1 §5), end to end: the real server with two shards, real
//! QUIC clients. A participant that loses its connection comes back on a new connection (new
//! UDP source port, so possibly another shard) with `resume{participant_id, binding_token}` and
//! keeps its id and mute state, with no churn seen by the others. Binding tokens are single use
//! and bound to their participant; after the window the participant is gone for good.

mod support;

use std::time::{Duration, Instant};

use mc::core::protocol::{
    ClientMessage, ErrorCode, LeaveReason, ResumeRequest, Role, ServerMessage,
};
use support::{participant_id, Client, Closed, Server};

const T: Duration = Duration::from_secs(10);
const MEETING: &str = "resume-room";

/// `--resume-window`, `--idle-timeout`: a vanished connection is noticed after 2 s and its
/// participant kept 5 s more.
const SERVER_FLAGS: &[&str] = &[
    "--shards",
    "2",
    "--resume-window",
    "5s",
    "--idle-timeout",
    "2s",
    "--keep-alive",
    "300ms",
];

/// Per-shard values of a counter such as `mc_handshakes_total{shard="1"} 4`.
fn per_shard(metrics: &str, name: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let Some(labels) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, value)) = labels.split_once("} ") else {
            continue;
        };
        let Some(shard) = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("shard=\""))
            .and_then(|s| s.trim_end_matches('"').parse::<usize>().ok())
        else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        if out.len() <= shard {
            out.resize(shard + 1, 0.0);
        }
        out[shard] += v;
    }
    out
}

/// Connects a new client and tells which shard completed its handshake (the shard its UDP
/// 4-tuple hashed to), from the per-shard handshake counters. Must not race other handshakes.
fn connect_and_locate(server: &Server, keep: &mut [&mut Client]) -> (Client, Option<usize>) {
    let before = per_shard(&server.metrics(), "mc_handshakes_total");
    let c = Client::connect(server.quic);
    let deadline = Instant::now() + T;
    loop {
        let after = per_shard(&server.metrics(), "mc_handshakes_total");
        let grew: Vec<usize> = (0..after.len())
            .filter(|i| after[*i] > before.get(*i).copied().unwrap_or(0.0))
            .collect();
        if grew.len() == 1 {
            return (c, Some(grew[0]));
        }
        if Instant::now() >= deadline {
            return (c, None);
        }
        pump(keep, Duration::from_millis(20));
    }
}

/// Gives every client a chance to read and acknowledge for about `d` (the idle timeout is 2 s,
/// so clients that stay in the meeting must keep talking).
fn pump(clients: &mut [&mut Client], d: Duration) {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        for c in clients.iter_mut() {
            c.io(Duration::from_millis(2));
        }
    }
}

fn is_error(code: ErrorCode) -> impl Fn(&ServerMessage) -> bool {
    move |m| matches!(m, ServerMessage::Error { code: c, .. } if *c == code)
}

fn binding_token(m: &ServerMessage) -> String {
    match m {
        ServerMessage::JoinResponse { binding_token, .. } => binding_token.clone(),
        other => panic!("not a join_response: {other:?}"),
    }
}

fn resume_join(server: &Server, sub: &str, pid: &str, binding: &str) -> ClientMessage {
    ClientMessage::Join {
        meeting_id: MEETING.into(),
        token: server.token(MEETING, Role::Participant, sub),
        display_name: "b again".into(),
        request_id: Some("resume".into()),
        resume: Some(ResumeRequest {
            participant_id: pid.into(),
            binding_token: binding.into(),
        }),
        capabilities: Vec::new(),
    }
}

/// Churn about `pid` that a witness must never see while `pid` is within its window.
fn churn_about(c: &Client, pid: &str) -> Vec<ServerMessage> {
    c.received
        .iter()
        .filter(|m| match m {
            ServerMessage::ParticipantLeft { participant_id, .. } => participant_id == pid,
            ServerMessage::ParticipantJoined { participant } => participant.participant_id == pid,
            _ => false,
        })
        .cloned()
        .collect()
}

/// Sends `payload` from `from` to everyone and waits until `to` has it.
fn relay(
    from: &mut Client,
    to: &mut Client,
    keep: &mut [&mut Client],
    from_id: &str,
    payload: serde_json::Value,
) {
    from.send(&ClientMessage::Message {
        payload: payload.clone(),
        to: None,
    });
    expect_pumping(
        to,
        keep,
        "relayed message",
        |m| matches!(m, ServerMessage::Message { from: f, payload: p } if f == from_id && *p == payload),
    );
}

/// Like `Client::expect`, but keeps the other clients of `keep` alive while waiting.
fn expect_pumping(
    target: &mut Client,
    keep: &mut [&mut Client],
    what: &str,
    pred: impl Fn(&ServerMessage) -> bool,
) -> ServerMessage {
    let deadline = Instant::now() + T;
    loop {
        if let Some(m) = target.wait_for(Duration::from_millis(20), &pred) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "expected {what}; got {:?}; closed={:?}",
            target.received,
            target.closed()
        );
        pump(keep, Duration::from_millis(1));
    }
}

/// A resume attempt that must fail: `unauthorized`, then close `0x102`.
fn expect_refused(server: &Server, keep: &mut [&mut Client], what: &str, join: &ClientMessage) {
    pump(keep, Duration::from_millis(10));
    let mut c = Client::connect(server.quic);
    c.send(join);
    let err = c.expect(what, is_error(ErrorCode::Unauthorized));
    if let ServerMessage::Error { message, .. } = &err {
        assert!(
            !message.contains("binding") && !message.contains("nonce"),
            "{what}: the message names the reason: {message}"
        );
    }
    assert_eq!(
        c.wait_closed(T),
        Some(Closed {
            app: true,
            code: 0x102
        }),
        "{what}"
    );
    pump(keep, Duration::from_millis(10));
}

#[test]
fn resume_on_any_shard_keeps_the_participant_without_churn() {
    let server = Server::start("resume", SERVER_FLAGS);

    let mut host = Client::connect(server.quic);
    let host_id =
        participant_id(&host.join_ok(MEETING, &server.token(MEETING, Role::Host, "h"), "host"));
    let mut peer = Client::connect(server.quic);
    let peer_jr = peer.join_ok(MEETING, &server.token(MEETING, Role::Participant, "c"), "c");
    let peer_id = participant_id(&peer_jr);
    let peer_binding = binding_token(&peer_jr);

    let (mut b, b_shard) = connect_and_locate(&server, &mut [&mut host, &mut peer]);
    let b_jr = b.join_ok(MEETING, &server.token(MEETING, Role::Participant, "b"), "b");
    let b_id = participant_id(&b_jr);
    let mut binding = binding_token(&b_jr);
    for w in [&mut host, &mut peer] {
        w.expect("b joined", |m| {
            matches!(m, ServerMessage::ParticipantJoined { participant } if participant.participant_id == b_id)
        });
    }
    // Mute before vanishing; the state must survive every resume.
    b.send(&ClientMessage::Mute {
        audio: true,
        video: false,
    });
    for c in [&mut host, &mut peer, &mut b] {
        c.expect("mute_update", |m| {
            matches!(m, ServerMessage::MuteUpdate { participant_id, audio_muted: true, video_muted: false, .. } if *participant_id == b_id)
        });
    }

    // Resume until a new connection landed on another shard than the original one (the kernel
    // spreads source ports over the two sockets), at least twice and at most 20 times (each try is a coin flip).
    let mut shards_seen = vec![b_shard];
    let mut old_tokens = Vec::new();
    let mut current = b;
    let mut round = 0;
    loop {
        round += 1;
        // Alternate a silent vanish (noticed by the idle timeout) and a clean QUIC close.
        if round % 2 == 1 {
            current.vanish();
        } else {
            current.close();
            drop(current);
        }
        pump(&mut [&mut host, &mut peer], Duration::from_millis(300));

        let (mut r, shard) = connect_and_locate(&server, &mut [&mut host, &mut peer]);
        r.send(&resume_join(&server, "b", &b_id, &binding));
        let jr = expect_pumping(
            &mut r,
            &mut [&mut host, &mut peer],
            "join_response of the resume",
            |m| matches!(m, ServerMessage::JoinResponse { .. }),
        );
        let ServerMessage::JoinResponse {
            participant_id: ref resumed_id,
            ref participants,
            ref request_id,
            role,
            ..
        } = jr
        else {
            unreachable!()
        };
        assert_eq!(*resumed_id, b_id, "round {round}: same participant id");
        assert_eq!(role, Role::Participant);
        assert_eq!(request_id.as_deref(), Some("resume"));
        let mut others: Vec<&str> = participants
            .iter()
            .map(|p| p.participant_id.as_str())
            .collect();
        others.sort_unstable();
        let mut expected = vec![host_id.as_str(), peer_id.as_str()];
        expected.sort_unstable();
        assert_eq!(others, expected, "round {round}: roster of the others");
        let fresh = binding_token(&jr);
        assert_ne!(fresh, binding, "round {round}: a new binding token");
        assert!(!old_tokens.contains(&fresh));
        old_tokens.push(std::mem::replace(&mut binding, fresh));
        shards_seen.push(shard);

        // Messages flow both ways on the resumed connection.
        relay(
            &mut host,
            &mut r,
            &mut [&mut peer],
            &host_id,
            serde_json::json!({ "to_b": round }),
        );
        relay(
            &mut r,
            &mut peer,
            &mut [&mut host],
            &b_id,
            serde_json::json!({ "from_b": round }),
        );
        relay(
            &mut r,
            &mut host,
            &mut [&mut peer],
            &b_id,
            serde_json::json!({ "from_b_h": round }),
        );

        current = r;
        let moved = shards_seen[1..]
            .iter()
            .any(|s| s.is_some() && *s != shards_seen[0]);
        if (moved && round >= 2) || round >= 20 {
            break;
        }
    }
    eprintln!("landing shards (original first): {shards_seen:?}");
    if shards_seen.iter().all(Option::is_some) {
        assert!(
            shards_seen[1..].iter().any(|s| *s != shards_seen[0]),
            "20 resumes all landed on the original shard: {shards_seen:?}"
        );
    }

    // Nobody saw b leave or join again.
    for w in [&host, &peer] {
        assert_eq!(churn_about(w, &b_id), vec![], "churn seen by a witness");
    }
    // Mute state kept: a newcomer's roster shows b muted, and the host saw no new mute_update.
    let mut newcomer = Client::connect(server.quic);
    let njr = newcomer.join_ok(MEETING, &server.token(MEETING, Role::Participant, "d"), "d");
    let ServerMessage::JoinResponse { participants, .. } = &njr else {
        unreachable!()
    };
    let b_info = participants
        .iter()
        .find(|p| p.participant_id == b_id)
        .expect("b is in the newcomer's roster");
    assert!(b_info.audio_muted && !b_info.video_muted, "{b_info:?}");
    assert!(host
        .received
        .iter()
        .all(|m| !matches!(m, ServerMessage::MuteUpdate { participant_id, .. } if *participant_id == b_id)));
    assert_eq!(participants.len(), 3, "host, c and b");

    // Every old binding token is spent.
    for (i, old) in old_tokens.iter().enumerate() {
        expect_refused(
            &server,
            &mut [&mut host, &mut peer, &mut current, &mut newcomer],
            &format!("reused binding token #{i}"),
            &resume_join(&server, "b", &b_id, old),
        );
    }
    // A forged token of the right shape, and another participant's token.
    let forged = "A".repeat(mc::core::binding::TOKEN_LEN);
    let keep = &mut [&mut host, &mut peer, &mut current, &mut newcomer];
    expect_refused(
        &server,
        keep,
        "forged",
        &resume_join(&server, "b", &b_id, &forged),
    );
    expect_refused(
        &server,
        keep,
        "c's binding token for b",
        &resume_join(&server, "b", &b_id, &peer_binding),
    );
    // The right binding token with someone else's meeting token (another `sub`).
    expect_refused(
        &server,
        keep,
        "right binding, other user's meeting token",
        &resume_join(&server, "mallory", &b_id, &binding),
    );
    // None of the refusals consumed the live token or disturbed b.
    relay(
        &mut host,
        &mut current,
        &mut [&mut peer, &mut newcomer],
        &host_id,
        serde_json::json!("still b"),
    );
    assert_eq!(churn_about(&host, &b_id), vec![]);
    assert_eq!(churn_about(&peer, &b_id), vec![]);

    // Vanish for good: after idle timeout + window the others see participant_left{timeout},
    // and the last binding token no longer works.
    current.vanish();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut left = None;
    while left.is_none() && Instant::now() < deadline {
        pump(&mut [&mut peer, &mut newcomer], Duration::from_millis(50));
        left = host.wait_for(Duration::from_millis(50), |m| {
            matches!(m, ServerMessage::ParticipantLeft { participant_id, .. } if *participant_id == b_id)
        });
    }
    assert_eq!(
        left,
        Some(ServerMessage::ParticipantLeft {
            participant_id: b_id.clone(),
            reason: LeaveReason::Timeout
        })
    );
    peer.expect("participant_left timeout", |m| {
        matches!(m, ServerMessage::ParticipantLeft { participant_id, reason: LeaveReason::Timeout } if *participant_id == b_id)
    });
    expect_refused(
        &server,
        &mut [&mut host, &mut peer, &mut newcomer],
        "resume after the window",
        &resume_join(&server, "b", &b_id, &binding),
    );

    let resumed_in = |m: &str| support::metric_sum(m, "mc_joins_total", "result=\"resumed\"");
    let want = (shards_seen.len() - 1) as f64;
    let resumed = resumed_in(&server.metrics_when(T, |m| resumed_in(m) >= want));
    assert_eq!(
        resumed,
        (shards_seen.len() - 1) as f64,
        "mc_joins_total{{result=\"resumed\"}}"
    );
}
