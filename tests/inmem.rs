//! Signaling logic over real QUIC, in memory: quiche clients and the sans-IO endpoints of two
//! shards wired by `mc_test_support::Harness`, on a virtual clock. No sockets, no sleeping,
//! no retries: every test is deterministic and reads what each client received right after
//! the harness settled. The real-socket end-to-end tests (`signaling.rs`, `resume.rs`,
//! `hostile.rs`) keep what needs the kernel, the executors or the real clock.

use std::time::Duration;

use mc::core::ids::ShardId;
use mc::core::protocol::{ClientMessage, EndReason, ErrorCode, LeaveReason, Role, ServerMessage};
use mc::core::shard::{close_code, ShardEvent};
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
    assert_eq!(h.endpoint(S0).core().stats().joins["handoff"], 1);
    h.expect(a, "b joined", |m| {
        matches!(m, ServerMessage::ParticipantJoined { participant } if participant.participant_id == b_id)
    });
    // Served by the owner in both directions.
    for i in 0..20 {
        h.send(b, &ClientMessage::Ping { id: i });
        h.expect(b, "pong", |m| matches!(m, ServerMessage::Pong { id } if *id == i));
    }
    h.send(
        b,
        &ClientMessage::Message {
            payload: serde_json::json!("from b"),
            to: None,
        },
    );
    h.expect(a, "b's message", |m| {
        matches!(m, ServerMessage::Message { from, .. } if *from == b_id)
    });
    h.send(
        a,
        &ClientMessage::Message {
            payload: serde_json::json!("from a"),
            to: Some(vec![b_id.clone()]),
        },
    );
    h.expect(b, "a's message", |m| {
        matches!(m, ServerMessage::Message { from, .. } if *from == a_id)
    });
    // With steering, the client moved to CIDs naming shard 1: forwarding has stopped.
    let forwarded = h.endpoint(S0).stats().datagrams_forwarded;
    for i in 100..110 {
        h.send(b, &ClientMessage::Ping { id: i });
        h.expect(b, "pong", |m| matches!(m, ServerMessage::Pong { id } if *id == i));
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
        h.expect(b, "pong", |m| matches!(m, ServerMessage::Pong { id } if *id == i));
    }
    let after = h.endpoint(S0).stats().datagrams_forwarded;
    assert!(
        after >= before + 10,
        "each ping's datagram is forwarded: {before} → {after}"
    );
    assert_eq!(h.endpoint(S1).stats().datagrams_from_peers, after);
    assert_eq!(h.endpoint(S0).connection_count(), 0);
}
