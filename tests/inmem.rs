//! Signaling logic over real QUIC, in memory: quiche clients and the sans-IO endpoints of two
//! shards wired by `mc_test_support::Harness`, on a virtual clock. No sockets, no sleeping,
//! no retries: every test is deterministic and reads what each client received right after
//! the harness settled. The real-socket end-to-end tests (`signaling.rs`, `resume.rs`,
//! `hostile.rs`) keep what needs the kernel, the executors or the real clock.

use std::time::Duration;

use mc::core::ids::ShardId;
use mc::core::protocol::{ClientMessage, EndReason, ErrorCode, LeaveReason, Role, ServerMessage};
use mc::core::shard::{close_code, DropReason, JoinResult, PanicActor, ShardEvent};
use mc_test_support::{
    participant_id, ClientId, ClientOptions, Closed, Harness, HarnessConfig, Steering,
};

const S0: ShardId = ShardId(0);
const S1: ShardId = ShardId(1);

fn other(s: ShardId) -> ShardId {
    ShardId(1 - s.0)
}

fn is_error(code: ErrorCode) -> impl Fn(&ServerMessage) -> bool {
    move |m| matches!(m, ServerMessage::Error { code: c, .. } if *c == code)
}

fn app_close(code: u64) -> Option<Closed> {
    Some(Closed { app: true, code })
}

fn binding_token(m: &ServerMessage) -> String {
    match m {
        ServerMessage::JoinResponse { binding_token, .. } => binding_token.clone(),
        other => panic!("not a join_response: {other:?}"),
    }
}

fn count(h: &Harness, c: ClientId, pred: impl Fn(&ServerMessage) -> bool) -> usize {
    h.received(c).iter().filter(|m| pred(m)).count()
}

fn is_message(m: &ServerMessage) -> bool {
    matches!(m, ServerMessage::Message { .. })
}

/// Events of the meeting's one order, as strings (joins left out).
fn event_log(h: &Harness, c: ClientId) -> Vec<String> {
    h.received(c)
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Message { from, payload } => Some(format!("msg {from} {payload}")),
            ServerMessage::MuteUpdate {
                participant_id,
                audio_muted,
                ..
            } => Some(format!("mute {participant_id} {audio_muted}")),
            _ => None,
        })
        .collect()
}

/// Churn about `pid` that a witness must not see while `pid` resumes.
fn churn_about(h: &Harness, c: ClientId, pid: &str) -> Vec<ServerMessage> {
    h.received(c)
        .iter()
        .filter(|m| match m {
            ServerMessage::ParticipantLeft { participant_id, .. } => participant_id == pid,
            ServerMessage::ParticipantJoined { participant } => participant.participant_id == pid,
            _ => false,
        })
        .cloned()
        .collect()
}

// ----------------------------------------------------------------------------------------
// Ordering across shards, handoff, forwarding
// ----------------------------------------------------------------------------------------

/// 12 participants, half of them arriving on the shard that does not own the meeting; every
/// one of them sees the others' messages and mutes in one order.
fn ordered_stream(steering: Steering) -> Harness {
    let mut cfg = HarnessConfig::new(2);
    cfg.steering = steering;
    let mut h = Harness::with_config(cfg);
    let meeting = "standup";
    let owner = h.shard_for(meeting);
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for i in 0..12 {
        let role = if i == 0 {
            Role::Host
        } else {
            Role::Participant
        };
        let c = h.connect(if i % 2 == 0 { S0 } else { S1 });
        let jr = h.join(c, meeting, role, &format!("user-{i}"));
        let ServerMessage::JoinResponse {
            participants,
            role: r,
            ..
        } = &jr
        else {
            unreachable!()
        };
        assert_eq!(participants.len(), i, "the roster holds everyone before");
        assert_eq!(*r, role);
        ids.push(participant_id(&jr));
        clients.push(c);
    }
    for (i, c) in clients.iter().enumerate() {
        for id in &ids[i + 1..] {
            h.expect(*c, "participant_joined", |m| {
                matches!(m, ServerMessage::ParticipantJoined { participant } if participant.participant_id == *id)
            });
        }
    }
    // Interleave messages and mutes from everyone, in several batches.
    for round in 0..3 {
        for (i, c) in clients.iter().enumerate() {
            h.queue(
                *c,
                &ClientMessage::Message {
                    payload: serde_json::json!({ "round": round, "i": i }),
                    to: None,
                },
            );
            if i % 3 == 0 {
                h.queue(
                    *c,
                    &ClientMessage::Mute {
                        audio: round % 2 == 0,
                        video: false,
                    },
                );
            }
        }
        h.drive();
    }
    let expected_msgs = 3 * (clients.len() - 1);
    let expected_mutes = 3 * clients.len().div_ceil(3);
    let logs: Vec<Vec<String>> = clients.iter().map(|c| event_log(&h, *c)).collect();
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(count(&h, *c, is_message), expected_msgs, "participant {i}");
        assert_eq!(
            count(&h, *c, |m| matches!(m, ServerMessage::MuteUpdate { .. })),
            expected_mutes,
            "participant {i}"
        );
        // Everyone saw the same sequence, apart from not receiving their own messages.
        let own = |j: usize| format!("msg {} ", ids[j]);
        let without = |log: &Vec<String>| -> Vec<String> {
            log.iter()
                .filter(|e| !e.starts_with(&own(0)) && !e.starts_with(&own(i)))
                .cloned()
                .collect()
        };
        assert_eq!(
            without(&logs[0]),
            without(&logs[i]),
            "participant {i} saw a different order"
        );
    }
    // Every participant arriving on the other shard was handed to the owner exactly once.
    let arrived_elsewhere = clients.len() / 2;
    assert_eq!(
        h.endpoint(other(owner)).stats().handoffs_out,
        arrived_elsewhere as u64
    );
    assert_eq!(
        h.endpoint(owner).stats().handoffs_in,
        arrived_elsewhere as u64
    );
    assert_eq!(h.endpoint(owner).connection_count(), clients.len());
    assert_eq!(h.endpoint(other(owner)).connection_count(), 0);
    assert_eq!(h.endpoint(owner).core().participant_count(), clients.len());
    h
}

#[test]
fn participants_on_different_shards_see_one_ordered_stream() {
    let h = ordered_stream(Steering::ByCid);
    let owner = h.shard_for("standup");
    // Steering by CID delivers the handed-off connections' packets to the owner directly, apart
    // from the ones in flight before the client switched to the owner's fresh CIDs.
    let forwarded = h.endpoint(other(owner)).stats().datagrams_forwarded;
    assert!(forwarded < 6 * 3, "forwarded {forwarded} with steering");
}

#[test]
fn without_steering_every_datagram_of_a_moved_connection_is_forwarded() {
    let h = ordered_stream(Steering::Off);
    let owner = h.shard_for("standup");
    let forwarded = h.endpoint(other(owner)).stats().datagrams_forwarded;
    assert!(forwarded > 6 * 3, "forwarded only {forwarded}");
    assert_eq!(
        h.endpoint(owner).stats().datagrams_from_peers,
        forwarded,
        "every forwarded datagram reached the owner"
    );
}

#[test]
fn a_join_on_the_wrong_shard_is_handed_off_and_served_by_the_owner() {
    let mut h = Harness::new(2);
    let meeting = h.meeting_on(S1, "room");
    let a = h.connect(S1);
    let a_id = participant_id(&h.join(a, &meeting, Role::Host, "a"));
    // b's datagrams reach shard 0; its join names shard 1's meeting.
    let b = h.connect(S0);
    assert_eq!(h.endpoint(S0).connection_count(), 1);
    let jr = h.join(b, &meeting, Role::Participant, "b");
    let b_id = participant_id(&jr);
    let ServerMessage::JoinResponse { participants, .. } = &jr else {
        unreachable!()
    };
    assert_eq!(participants.len(), 1);
    assert_eq!(participants[0].participant_id, a_id);
    assert_eq!(h.endpoint(S0).stats().handoffs_out, 1);
    assert_eq!(h.endpoint(S1).stats().handoffs_in, 1);
    assert_eq!(h.endpoint(S0).connection_count(), 0);
    assert_eq!(h.endpoint(S1).connection_count(), 2);
    assert_eq!(h.endpoint(S0).core().participant_count(), 0);
    assert_eq!(h.endpoint(S1).core().participant_count(), 2);
    assert_eq!(h.endpoint(S0).core().stats().joins[JoinResult::Handoff], 1);
    h.expect(a, "b joined", |m| {
        matches!(m, ServerMessage::ParticipantJoined { participant } if participant.participant_id == b_id)
    });
    // Served by the owner in both directions.
    for i in 0..20 {
        h.send(b, &ClientMessage::Ping { id: i });
        h.expect(
            b,
            "pong",
            |m| matches!(m, ServerMessage::Pong { id } if *id == i),
        );
    }
    h.send(
        b,
        &ClientMessage::Message {
            payload: serde_json::json!("from b"),
            to: None,
        },
    );
    h.expect(
        a,
        "b's message",
        |m| matches!(m, ServerMessage::Message { from, .. } if *from == b_id),
    );
    h.send(
        a,
        &ClientMessage::Message {
            payload: serde_json::json!("from a"),
            to: Some(vec![b_id.clone()]),
        },
    );
    h.expect(
        b,
        "a's message",
        |m| matches!(m, ServerMessage::Message { from, .. } if *from == a_id),
    );
    // With steering, the client moved to CIDs naming shard 1: forwarding has stopped.
    let forwarded = h.endpoint(S0).stats().datagrams_forwarded;
    for i in 100..110 {
        h.send(b, &ClientMessage::Ping { id: i });
        h.expect(
            b,
            "pong",
            |m| matches!(m, ServerMessage::Pong { id } if *id == i),
        );
    }
    assert_eq!(h.endpoint(S0).stats().datagrams_forwarded, forwarded);
}

#[test]
fn without_steering_a_handed_off_connection_is_served_through_forwarding() {
    let mut cfg = HarnessConfig::new(2);
    cfg.steering = Steering::Off;
    let mut h = Harness::with_config(cfg);
    let meeting = h.meeting_on(S1, "room");
    let b = h.connect(S0);
    h.join(b, &meeting, Role::Participant, "b");
    let before = h.endpoint(S0).stats().datagrams_forwarded;
    for i in 0..10 {
        h.send(b, &ClientMessage::Ping { id: i });
        h.expect(
            b,
            "pong",
            |m| matches!(m, ServerMessage::Pong { id } if *id == i),
        );
    }
    let after = h.endpoint(S0).stats().datagrams_forwarded;
    assert!(
        after >= before + 10,
        "each ping's datagram is forwarded: {before} → {after}"
    );
    assert_eq!(h.endpoint(S1).stats().datagrams_from_peers, after);
    assert_eq!(h.endpoint(S0).connection_count(), 0);
}

// ----------------------------------------------------------------------------------------
// Resume
// ----------------------------------------------------------------------------------------

/// A resume that must fail: `unauthorized` without naming the reason, then close `0x102`.
fn expect_refused(h: &mut Harness, home: ShardId, what: &str, join: &ClientMessage) {
    let c = h.connect(home);
    h.send(c, join);
    let err = h.expect(c, what, is_error(ErrorCode::Unauthorized));
    if let ServerMessage::Error { message, .. } = &err {
        assert!(
            !message.contains("binding") && !message.contains("nonce"),
            "{what}: the message names the reason: {message}"
        );
    }
    h.advance(Duration::from_millis(100));
    assert_eq!(h.closed(c), app_close(close_code::UNAUTHORIZED), "{what}");
}

#[test]
fn resume_on_the_other_shard_keeps_the_participant_without_churn() {
    let mut h = Harness::new(2);
    let meeting = h.meeting_on(S1, "resume-room");
    let host = h.connect(S1);
    let host_id = participant_id(&h.join(host, &meeting, Role::Host, "h"));
    let peer = h.connect(S0);
    let peer_jr = h.join(peer, &meeting, Role::Participant, "c");
    let peer_id = participant_id(&peer_jr);
    let b = h.connect(S1);
    let b_jr = h.join(b, &meeting, Role::Participant, "b");
    let b_id = participant_id(&b_jr);
    let mut binding = binding_token(&b_jr);
    for w in [host, peer] {
        h.expect(w, "b joined", |m| {
            matches!(m, ServerMessage::ParticipantJoined { participant } if participant.participant_id == b_id)
        });
    }
    h.send(
        b,
        &ClientMessage::Mute {
            audio: true,
            video: false,
        },
    );
    for c in [host, peer, b] {
        h.expect(c, "mute_update", |m| {
            matches!(m, ServerMessage::MuteUpdate { participant_id, audio_muted: true, .. } if *participant_id == b_id)
        });
    }

    // Round 1: b's connection is still up (the client noticed a network change first) and it
    // resumes through shard 0, which hands the new connection to the meeting's shard.
    // Round 2: b closed its connection cleanly, then resumes through shard 1 directly.
    let mut spent = Vec::new();
    let mut current = b;
    for (round, home) in [(1, S0), (2, S1)] {
        if round == 2 {
            h.close(current);
        }
        let r = h.connect(home);
        let resume = h.resume_message(&meeting, "b", &b_id, &binding);
        h.send(r, &resume);
        let jr = h.expect(r, "join_response of the resume", |m| {
            matches!(m, ServerMessage::JoinResponse { .. })
        });
        let ServerMessage::JoinResponse {
            participant_id: resumed,
            participants,
            request_id,
            role,
            ..
        } = &jr
        else {
            unreachable!()
        };
        assert_eq!(*resumed, b_id, "round {round}: same participant id");
        assert_eq!(*role, Role::Participant);
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
        spent.push(std::mem::replace(&mut binding, fresh));
        if round == 1 {
            // The live connection was taken over and closed normally.
            h.advance(Duration::from_millis(100));
            assert_eq!(h.closed(current), app_close(close_code::NORMAL));
        }
        // Messages flow both ways on the resumed connection.
        h.send(
            host,
            &ClientMessage::Message {
                payload: serde_json::json!({ "to_b": round }),
                to: None,
            },
        );
        h.expect(
            r,
            "host's message",
            |m| matches!(m, ServerMessage::Message { from, .. } if *from == host_id),
        );
        h.send(
            r,
            &ClientMessage::Message {
                payload: serde_json::json!({ "from_b": round }),
                to: None,
            },
        );
        for w in [host, peer] {
            h.expect(
                w,
                "b's message",
                |m| matches!(m, ServerMessage::Message { from, .. } if *from == b_id),
            );
        }
        current = r;
    }
    assert_eq!(h.endpoint(S0).stats().handoffs_out, 2, "peer and round 1");
    assert_eq!(h.endpoint(S1).core().stats().joins[JoinResult::Resumed], 2);
    for w in [host, peer] {
        assert_eq!(churn_about(&h, w, &b_id), vec![], "churn seen by a witness");
        assert_eq!(
            count(&h, w, |m| matches!(m, ServerMessage::MuteUpdate { .. })),
            0,
            "no new mute_update"
        );
    }
    // The mute state survived: a newcomer's roster shows b muted.
    let newcomer = h.connect(S0);
    let njr = h.join(newcomer, &meeting, Role::Participant, "d");
    let ServerMessage::JoinResponse { participants, .. } = &njr else {
        unreachable!()
    };
    let b_info = participants
        .iter()
        .find(|p| p.participant_id == b_id)
        .expect("b is in the roster");
    assert!(b_info.audio_muted && !b_info.video_muted, "{b_info:?}");
    assert_eq!(participants.len(), 3);

    // Spent, forged and foreign binding tokens are refused, and the refusals leave b alone.
    for (i, old) in spent.iter().enumerate() {
        let join = h.resume_message(&meeting, "b", &b_id, old);
        expect_refused(&mut h, ShardId(i as u16), "reused binding token", &join);
    }
    let forged = "A".repeat(mc::core::binding::TOKEN_LEN);
    let join = h.resume_message(&meeting, "b", &b_id, &forged);
    expect_refused(&mut h, S0, "forged binding token", &join);
    let join = h.resume_message(&meeting, "b", &b_id, &binding_token(&peer_jr));
    expect_refused(&mut h, S1, "c's binding token for b", &join);
    let join = h.resume_message(&meeting, "mallory", &b_id, &binding);
    expect_refused(&mut h, S0, "right binding, other user's token", &join);
    h.send(
        host,
        &ClientMessage::Message {
            payload: serde_json::json!("still b"),
            to: Some(vec![b_id.clone()]),
        },
    );
    h.expect(
        current,
        "message after the refusals",
        |m| matches!(m, ServerMessage::Message { from, .. } if *from == host_id),
    );
    assert_eq!(h.closed(current), None);
    assert_eq!(churn_about(&h, host, &b_id), vec![]);
}

// ----------------------------------------------------------------------------------------
// Slow consumers, timeouts, drain
// ----------------------------------------------------------------------------------------

#[test]
fn a_slow_consumer_is_disconnected_and_the_meeting_carries_on() {
    let mut cfg = HarnessConfig::new(2);
    cfg.core.mailbox_size = 16;
    cfg.core.slow_consumer_drops = 8;
    cfg.core.rate_limit = 100_000.0;
    cfg.core.rate_burst = 100_000.0;
    let mut h = Harness::with_config(cfg);
    let meeting = "busy";
    let sender = h.connect(S0);
    h.join(sender, meeting, Role::Participant, "s");
    let good = h.connect(S1);
    h.join(good, meeting, Role::Participant, "g");
    let slow = h.connect_with(S0, ClientOptions { stream_window: 512 });
    let slow_id = participant_id(&h.join(slow, meeting, Role::Participant, "w"));
    h.set_reading(slow, false);
    let pad = "x".repeat(1000);
    let total = 200;
    for i in 0..total {
        h.send(
            sender,
            &ClientMessage::Message {
                payload: serde_json::json!({ "i": i, "pad": pad }),
                to: None,
            },
        );
    }
    h.expect(good, "participant_left connection_lost", |m| {
        matches!(m, ServerMessage::ParticipantLeft { participant_id, reason: LeaveReason::ConnectionLost } if *participant_id == slow_id)
    });
    assert_eq!(
        count(&h, good, is_message),
        total,
        "the good reader lost nothing"
    );
    let owner = h.shard_for(meeting);
    let stats = h.endpoint(owner).core().stats();
    assert_eq!(stats.slow_consumers, 1);
    assert!(stats.dropped[DropReason::SlowConsumer] >= 8);
    assert_eq!(h.closed(sender), None);
    // The slow connection's queued frames never drain: it is closed at the hard deadline.
    assert_eq!(h.closed(slow), None);
    h.advance(Duration::from_secs(3));
    assert_eq!(h.closed(slow), app_close(close_code::SLOW_OR_FLOOD));
    assert_eq!(h.closed(good), None);
}

#[test]
fn a_connection_without_a_join_is_closed_at_the_join_timeout() {
    let mut cfg = HarnessConfig::new(2);
    cfg.core.join_timeout = Duration::from_secs(5);
    let mut h = Harness::with_config(cfg);
    // A handshake and nothing else; a stream opened with a partial header; a joined client.
    let idle = h.connect(S1);
    let partial = h.connect(S0);
    h.send_raw(partial, &[0, 0]);
    let joined = h.connect(S1);
    h.join(joined, "punctual", Role::Participant, "p");
    h.advance(Duration::from_millis(4900));
    assert_eq!(h.closed(idle), None, "not before the timeout");
    assert_eq!(h.closed(partial), None, "not before the timeout");
    assert!(h.received(partial).is_empty());
    h.advance(Duration::from_millis(200));
    // The partial stream gets its error, then the close after a short grace.
    h.expect(
        partial,
        "invalid_request",
        is_error(ErrorCode::InvalidRequest),
    );
    h.advance(Duration::from_millis(100));
    assert_eq!(h.closed(partial), app_close(close_code::PROTOCOL));
    // The idle connection has no stream to answer on: it is closed at the close deadline.
    h.advance(Duration::from_secs(2));
    assert_eq!(h.closed(idle), app_close(close_code::PROTOCOL));
    let joins = |s: ShardId| h.endpoint(s).core().stats().joins[JoinResult::Timeout];
    assert_eq!(joins(S0) + joins(S1), 2);
    assert_eq!(
        h.closed(joined),
        None,
        "a joined connection is not affected"
    );
}

#[test]
fn drain_refuses_new_joins_keeps_meetings_then_ends_them_in_order() {
    let mut h = Harness::new(2);
    let m0 = h.meeting_on(S0, "drain");
    let m1 = h.meeting_on(S1, "drain");
    let mut members = Vec::new();
    for (i, m) in [&m0, &m0, &m1, &m1].into_iter().enumerate() {
        let c = h.connect(ShardId((i % 2) as u16));
        members.push((
            c,
            participant_id(&h.join(c, m, Role::Participant, &format!("u{i}"))),
        ));
    }
    for s in [S0, S1] {
        h.command(s, |core, _| core.set_draining(true));
    }
    // New joins are refused, on either shard and for either meeting.
    for (home, m) in [(S0, &m0), (S1, &m0), (S0, &m1)] {
        let c = h.connect(home);
        let join = h.join_message(m, Role::Participant, "late");
        h.send(c, &join);
        h.expect(
            c,
            "capacity_exceeded",
            is_error(ErrorCode::CapacityExceeded),
        );
        h.advance(Duration::from_millis(100));
        assert_eq!(h.closed(c), app_close(close_code::CAPACITY));
    }
    // Meetings in progress carry on.
    h.send(
        members[0].0,
        &ClientMessage::Message {
            payload: serde_json::json!("still here"),
            to: None,
        },
    );
    h.expect(members[1].0, "message during the drain", is_message);
    assert!(h.events().is_empty(), "no meeting ended yet");
    // A connection that has not joined yet is refused by end_all as well.
    let pending = h.connect(S1);
    h.send_raw(pending, &[0, 0]);
    // The deadline: every meeting ends with controller_draining, then its connections close.
    let ended: usize = [S0, S1]
        .into_iter()
        .map(|s| {
            h.command(s, |core, now| {
                core.end_all(EndReason::ControllerDraining, now)
            })
        })
        .sum();
    assert_eq!(ended, 2);
    for (c, _) in &members {
        let got = h.take_received(*c);
        assert_eq!(
            got.last(),
            Some(&ServerMessage::MeetingEnded {
                reason: EndReason::ControllerDraining
            }),
            "meeting_ended is the last message: {got:?}"
        );
        assert_eq!(h.closed(*c), None, "closed only after the grace");
    }
    h.expect(
        pending,
        "capacity_exceeded",
        is_error(ErrorCode::CapacityExceeded),
    );
    h.advance(Duration::from_millis(100));
    for (c, _) in &members {
        assert_eq!(h.closed(*c), app_close(close_code::NORMAL));
    }
    assert_eq!(h.closed(pending), app_close(close_code::CAPACITY));
    // The control thread hears of each meeting once, from its shard.
    let mut events = h.events().to_vec();
    events.sort_by_key(|(s, _)| s.0);
    assert_eq!(
        events,
        vec![
            (
                S0,
                ShardEvent::MeetingEnded {
                    meeting_id: m0.clone(),
                    reason: "controller_draining"
                }
            ),
            (
                S1,
                ShardEvent::MeetingEnded {
                    meeting_id: m1.clone(),
                    reason: "controller_draining"
                }
            ),
        ]
    );
    // Shutdown: no new connection gets in.
    h.shutdown(S0);
    h.shutdown(S1);
    let refused_before = h.endpoint(S0).stats().datagrams_dropped;
    let late = h.start_connect(S0);
    assert!(!h.client_conn(late).is_established());
    assert!(h.endpoint(S0).stats().datagrams_dropped > refused_before);
}

// ----------------------------------------------------------------------------------------
// Tokens, protocol violations, host actions, panics
// ----------------------------------------------------------------------------------------

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[test]
fn every_token_failure_is_unauthorized_and_closes() {
    use mc::core::token::{MintClaims, TokenSigner};
    let mut h = Harness::new(2);
    let now = h.now().unix_ms / 1000;
    let foreign = TokenSigner::from_seed(&[9; 32], mc::dev::DEV_KID);
    let mint = |s: &TokenSigner, meeting: &str, iat: u64, exp: u64| {
        s.mint(&MintClaims {
            sub: "u".into(),
            meeting_id: meeting.into(),
            role: Role::Participant,
            iat,
            exp,
            jti: None,
        })
    };
    let claims = |ty: &str| {
        format!(
            r#"{{"sub":"u","token_type":"{ty}","meeting_id":"m1","role":"host","iat":{now},"exp":{}}}"#,
            now + 600
        )
    };
    let signer = h.signer();
    let cases = vec![
        ("expired", mint(signer, "m1", now - 7200, now - 3600)),
        ("wrong meeting", mint(signer, "other", now, now + 600)),
        (
            "issued in the future",
            mint(signer, "m1", now + 3600, now + 7200),
        ),
        (
            "foreign key, same kid",
            mint(&foreign, "m1", now, now + 600),
        ),
        ("garbage", "not-a-jwt".to_owned()),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(r#"{"alg":"none","kid":"dev-1"}"#),
                b64(&claims("meeting"))
            ),
        ),
        (
            "wrong token_type",
            signer.sign_raw(r#"{"alg":"EdDSA","kid":"dev-1"}"#, &claims("session")),
        ),
        (
            "unknown kid",
            signer.sign_raw(r#"{"alg":"EdDSA","kid":"nope"}"#, &claims("meeting")),
        ),
    ];
    for (i, (what, token)) in cases.into_iter().enumerate() {
        let c = h.connect(ShardId((i % 2) as u16));
        h.send(
            c,
            &ClientMessage::Join {
                meeting_id: "m1".into(),
                token,
                display_name: "x".into(),
                request_id: None,
                resume: None,
                capabilities: Vec::new(),
            },
        );
        let err = h.expect(c, what, is_error(ErrorCode::Unauthorized));
        if let ServerMessage::Error { message, .. } = err {
            assert!(
                !message.to_lowercase().contains("expired") && !message.contains("kid"),
                "{what}: the message leaks the reason: {message}"
            );
        }
        h.advance(Duration::from_millis(100));
        assert_eq!(h.closed(c), app_close(close_code::UNAUTHORIZED), "{what}");
    }
    let unauthorized: u64 = [S0, S1]
        .iter()
        .map(|s| h.endpoint(*s).core().stats().joins[JoinResult::Unauthorized])
        .sum();
    assert_eq!(unauthorized, 8);
    // A good token still works afterwards.
    let ok = h.connect(S1);
    h.join(ok, "m1", Role::Participant, "fine");
}

#[test]
fn protocol_violations_are_answered_and_closed() {
    let mut h = Harness::new(2);
    let closes_with_invalid_request = |h: &mut Harness, home: ShardId, bytes: &[u8], what: &str| {
        let c = h.connect(home);
        h.send_raw(c, bytes);
        h.expect(c, what, is_error(ErrorCode::InvalidRequest));
        h.advance(Duration::from_millis(100));
        assert_eq!(h.closed(c), app_close(close_code::PROTOCOL), "{what}");
    };
    let ping = mc::core::codec::encode(&ClientMessage::Ping { id: 1 });
    closes_with_invalid_request(&mut h, S0, &ping, "first message not a join");
    closes_with_invalid_request(&mut h, S1, &70_000u32.to_be_bytes(), "length above 65536");
    closes_with_invalid_request(&mut h, S0, &0u32.to_be_bytes(), "zero length");
    let bad_join = mc::core::codec::encode(&ClientMessage::Join {
        meeting_id: "bad id!".into(),
        token: "x".into(),
        display_name: "n".into(),
        request_id: None,
        resume: None,
        capabilities: Vec::new(),
    });
    closes_with_invalid_request(&mut h, S1, &bad_join, "malformed meeting id");

    // After a join, malformed JSON, unknown types and invalid UTF-8 are answered and the
    // connection stays.
    let c = h.connect(S0);
    h.join(c, "m2", Role::Participant, "n");
    let frame = |body: &[u8]| {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    };
    for (what, body) in [
        ("bad json", &b"{not json"[..]),
        ("unknown type", &br#"{"type":"teleport","to":"mars"}"#[..]),
        ("invalid utf-8", &[0xff, 0xfe][..]),
    ] {
        h.send_raw(c, &frame(body));
        h.expect(c, what, is_error(ErrorCode::InvalidRequest));
    }
    h.send(c, &ClientMessage::Ping { id: 42 });
    h.expect(c, "pong", |m| matches!(m, ServerMessage::Pong { id: 42 }));
    assert_eq!(h.closed(c), None);

    // A join dripped one byte at a time (through the other shard) and two frames in one write.
    let c = h.connect(S1);
    let join = mc::core::codec::encode(&ClientMessage::Join {
        meeting_id: "m3".into(),
        token: h.token("m3", Role::Participant, "u"),
        display_name: "drip".into(),
        request_id: Some("r-1".into()),
        resume: None,
        capabilities: Vec::new(),
    });
    for b in join.iter() {
        h.send_raw(c, std::slice::from_ref(b));
    }
    let jr = h.expect(c, "join_response", |m| {
        matches!(m, ServerMessage::JoinResponse { .. })
    });
    assert!(
        matches!(jr, ServerMessage::JoinResponse { request_id: Some(ref r), .. } if r == "r-1")
    );
    let mut two = mc::core::codec::encode(&ClientMessage::Ping { id: 1 }).to_vec();
    two.extend_from_slice(&mc::core::codec::encode(&ClientMessage::Ping { id: 2 }));
    h.send_raw(c, &two);
    h.expect(c, "pong 1", |m| matches!(m, ServerMessage::Pong { id: 1 }));
    h.expect(c, "pong 2", |m| matches!(m, ServerMessage::Pong { id: 2 }));
}

#[test]
fn host_actions_leave_and_kick() {
    let mut h = Harness::new(2);
    let room = "room";
    let host = h.connect(S0);
    let host_id = participant_id(&h.join(host, room, Role::Host, "host"));
    let a = h.connect(S1);
    let a_id = participant_id(&h.join(a, room, Role::Participant, "a"));
    let b = h.connect(S0);
    let b_id = participant_id(&h.join(b, room, Role::Participant, "b"));

    // A participant may not use host actions.
    for msg in [
        ClientMessage::Kick {
            participant_id: b_id.clone(),
        },
        ClientMessage::EndMeeting {},
        ClientMessage::HostMute {
            participant_id: host_id.clone(),
            audio: true,
            video: true,
        },
    ] {
        h.send(a, &msg);
        h.expect(a, "forbidden", is_error(ErrorCode::Forbidden));
    }
    // Host mute reaches everyone, the target included.
    h.send(
        host,
        &ClientMessage::HostMute {
            participant_id: a_id.clone(),
            audio: true,
            video: false,
        },
    );
    for c in [host, a, b] {
        h.expect(c, "mute_update", |m| {
            matches!(m, ServerMessage::MuteUpdate { participant_id, audio_host_muted: true, audio_muted: true, .. } if *participant_id == a_id)
        });
    }
    h.send(
        host,
        &ClientMessage::Kick {
            participant_id: "p0-ffff".into(),
        },
    );
    h.expect(host, "not_found", is_error(ErrorCode::NotFound));
    // A direct message reaches only its recipient.
    h.send(
        host,
        &ClientMessage::Message {
            payload: serde_json::json!("psst"),
            to: Some(vec![b_id.clone()]),
        },
    );
    h.expect(
        b,
        "direct message",
        |m| matches!(m, ServerMessage::Message { from, .. } if *from == host_id),
    );
    assert_eq!(
        count(&h, a, is_message),
        0,
        "a must not see b's direct message"
    );
    // Kick b: b gets meeting_ended{kicked} and a clean close, the others participant_left.
    h.send(
        host,
        &ClientMessage::Kick {
            participant_id: b_id.clone(),
        },
    );
    h.expect(b, "meeting_ended kicked", |m| {
        matches!(
            m,
            ServerMessage::MeetingEnded {
                reason: EndReason::Kicked
            }
        )
    });
    h.expect(a, "participant_left kicked", |m| {
        matches!(m, ServerMessage::ParticipantLeft { participant_id, reason: LeaveReason::Kicked } if *participant_id == b_id)
    });
    // The kicked connection lingers until its last frames had time to arrive (a close grace
    // of at least 50 ms), then closes cleanly.
    assert_eq!(h.closed(b), None);
    h.advance(Duration::from_millis(100));
    assert_eq!(h.closed(b), app_close(close_code::NORMAL));
    // a leaves voluntarily: closed at once, no grace (the virtual clock does not move).
    h.send(a, &ClientMessage::Leave {});
    assert_eq!(h.closed(a), app_close(close_code::NORMAL));
    h.expect(host, "participant_left voluntary", |m| {
        matches!(m, ServerMessage::ParticipantLeft { participant_id, reason: LeaveReason::Voluntary } if *participant_id == a_id)
    });
    // The host ends the meeting for everyone; the control thread hears of it once.
    let c = h.connect(S1);
    h.join(c, room, Role::Participant, "c");
    h.send(host, &ClientMessage::EndMeeting {});
    for cl in [host, c] {
        h.expect(cl, "meeting_ended", |m| {
            matches!(
                m,
                ServerMessage::MeetingEnded {
                    reason: EndReason::EndedByHost
                }
            )
        });
    }
    h.advance(Duration::from_millis(100));
    for cl in [host, c] {
        assert_eq!(h.closed(cl), app_close(close_code::NORMAL));
    }
    assert_eq!(
        h.events(),
        &[(
            h.shard_for(room),
            ShardEvent::MeetingEnded {
                meeting_id: room.into(),
                reason: "ended_by_host"
            }
        )]
    );
}

#[test]
fn a_panicking_meeting_leaves_others_served() {
    let mut cfg = HarnessConfig::new(2);
    cfg.core.test_hooks = true;
    let mut h = Harness::with_config(cfg);
    let doomed = h.meeting_on(S0, "doomed");
    let fine = h.meeting_on(S0, "fine");
    let victim = h.connect(S0);
    h.join(victim, &doomed, Role::Participant, "v");
    let bystander = h.connect(S1);
    h.join(bystander, &doomed, Role::Participant, "b");
    let other = h.connect(S1);
    h.join(other, &fine, Role::Participant, "o");
    let other2 = h.connect(S0);
    h.join(other2, &fine, Role::Participant, "o2");
    h.send(
        victim,
        &ClientMessage::Message {
            payload: serde_json::json!(mc::core::shard::TEST_PANIC_PAYLOAD),
            to: None,
        },
    );
    for c in [victim, bystander] {
        h.expect(c, "internal error", is_error(ErrorCode::Internal));
    }
    h.advance(Duration::from_millis(100));
    for c in [victim, bystander] {
        assert_eq!(h.closed(c), app_close(close_code::INTERNAL));
    }
    h.send(
        other,
        &ClientMessage::Message {
            payload: serde_json::json!("still here"),
            to: None,
        },
    );
    h.expect(other2, "message in the other meeting", is_message);
    // A new join to the failed meeting starts it afresh.
    let again = h.connect(S1);
    h.join(again, &doomed, Role::Participant, "v");
    assert_eq!(h.endpoint(S0).core().stats().panics[PanicActor::Meeting], 1);
}
