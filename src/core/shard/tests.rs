//! Sans-IO tests of the shard state machine, driven with a fake clock.
#![allow(clippy::disallowed_methods)] // tests may take a real instant as their fake clock's origin

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::*;
use crate::core::binding::BindingKey;
use crate::core::codec::{decode, encode, FrameDecoder};
use crate::core::ids::{ConnId, ShardId};
use crate::core::meeting::MeetingDetail;
use crate::core::protocol::{
    ClientMessage, EndReason, ErrorCode, LeaveReason, MediaHandler, ResumeRequest, Role,
    ServerMessage,
};
use crate::core::token::TokenVerifier;
use crate::core::token::{MintClaims, TokenSigner};

const START_UNIX_MS: u64 = 1_800_000_000_000;

struct Harness {
    shard: Shard,
    signer: TokenSigner,
    t0: Instant,
    elapsed: Duration,
    next_conn: u64,
    decoders: std::collections::HashMap<ConnId, FrameDecoder>,
}

impl Harness {
    fn new(cfg: ShardConfig) -> Self {
        let signer = TokenSigner::from_seed(&[9u8; 32], "k1");
        let verifier = TokenVerifier::from_jwks_json(&signer.jwks_json(), 60).unwrap();
        let binding = BindingKey::new(&[7u8; 32]).unwrap();
        Self {
            shard: Shard::new(cfg, Arc::new(verifier), Arc::new(binding)),
            signer,
            t0: Instant::now(),
            elapsed: Duration::ZERO,
            next_conn: 0,
            decoders: Default::default(),
        }
    }

    fn single() -> Self {
        Self::new(ShardConfig::for_tests(ShardId(0), 1))
    }

    fn now(&self) -> Now {
        Now {
            mono: self.t0 + self.elapsed,
            unix_ms: START_UNIX_MS + self.elapsed.as_millis() as u64,
        }
    }

    fn advance(&mut self, d: Duration) {
        self.elapsed += d;
        let now = self.now();
        self.shard.handle_timeout(now);
    }

    fn token(&self, meeting: &str, role: Role) -> String {
        let now = self.now().unix_ms / 1000;
        self.signer.mint(&MintClaims {
            sub: format!("user-{meeting}"),
            meeting_id: meeting.into(),
            role,
            iat: now,
            exp: now + 600,
            jti: None,
        })
    }

    fn open(&mut self) -> ConnId {
        self.next_conn += 1;
        let c = ConnId::new(ShardId(0), self.next_conn);
        let now = self.now();
        self.shard.handle_connection_opened(c, now);
        c
    }

    fn send(&mut self, conn: ConnId, msg: &ClientMessage) {
        let now = self.now();
        self.shard.handle_stream_data(conn, &encode(msg), now);
        self.shard.process_all(now);
    }

    /// A `message` to everyone in the meeting.
    fn broadcast(&mut self, conn: ConnId, payload: serde_json::Value) {
        self.send(conn, &ClientMessage::Message { payload, to: None });
    }

    fn join(&mut self, conn: ConnId, meeting: &str, role: Role) -> Vec<ServerMessage> {
        self.join_as(conn, meeting, role, None, false)
    }

    /// A join with an optional resume (participant id, binding token) and, with `caps`, the
    /// `migrate` capability (plus one this server does not know).
    fn join_as(
        &mut self,
        conn: ConnId,
        meeting: &str,
        role: Role,
        resume: Option<(&str, &str)>,
        caps: bool,
    ) -> Vec<ServerMessage> {
        let token = self.token(meeting, role);
        self.send(
            conn,
            &ClientMessage::Join {
                meeting_id: meeting.into(),
                token,
                display_name: format!("name-{}", conn.0),
                request_id: None,
                resume: resume.map(|(p, t)| ResumeRequest {
                    participant_id: p.into(),
                    binding_token: t.into(),
                }),
                capabilities: if caps {
                    vec![
                        crate::core::protocol::CAPABILITY_MIGRATE.into(),
                        "future-thing".into(),
                    ]
                } else {
                    Vec::new()
                },
            },
        );
        self.recv(conn)
    }

    /// Joins and returns the participant id.
    fn joined(&mut self, meeting: &str, role: Role) -> (ConnId, String) {
        let c = self.open();
        let msgs = self.join(c, meeting, role);
        match msgs.first() {
            Some(ServerMessage::JoinResponse { participant_id, .. }) => (c, participant_id.clone()),
            other => panic!("join failed: {other:?}"),
        }
    }

    /// Everything queued for `conn`, decoded.
    fn recv(&mut self, conn: ConnId) -> Vec<ServerMessage> {
        let mut out = Vec::new();
        let dec = self.decoders.entry(conn).or_default();
        while let Some(f) = self.shard.pop_frame(conn) {
            dec.push(&f);
            while let Ok(Some(body)) = dec.next_frame() {
                out.push(decode(body).unwrap());
            }
        }
        out
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.shard.poll_action()).collect()
    }

    fn closes(&mut self) -> Vec<(ConnId, u64)> {
        self.actions()
            .into_iter()
            .filter_map(|a| match a {
                Action::Close { conn, code, .. } => Some((conn, code)),
                _ => None,
            })
            .collect()
    }
}

fn error_code(m: &ServerMessage) -> Option<ErrorCode> {
    match m {
        ServerMessage::Error { code, .. } => Some(*code),
        _ => None,
    }
}

#[test]
fn join_roster_and_join_order() {
    let mut h = Harness::single();
    let (a, a_id) = h.joined("m", Role::Host);
    let (b, b_id) = h.joined("m", Role::Participant);
    let c = h.open();
    let msgs = h.join(c, "m", Role::Participant);
    let ServerMessage::JoinResponse {
        participants,
        role,
        resume_window_ms,
        binding_token,
        ..
    } = &msgs[0]
    else {
        panic!("{msgs:?}")
    };
    assert_eq!(*role, Role::Participant);
    assert_eq!(*resume_window_ms, 30_000);
    assert!(!binding_token.is_empty());
    let roster: Vec<&str> = participants
        .iter()
        .map(|p| p.participant_id.as_str())
        .collect();
    assert_eq!(
        roster,
        vec![a_id.as_str(), b_id.as_str()],
        "roster in join order, joiner excluded"
    );
    assert_eq!(participants[0].joined_at_ms, START_UNIX_MS);
    let a_msgs = h.recv(a);
    assert_eq!(a_msgs.len(), 2, "a saw b and c join: {a_msgs:?}");
    assert!(
        matches!(&a_msgs[0], ServerMessage::ParticipantJoined { participant } if participant.participant_id == b_id)
    );
    assert_eq!(h.recv(b).len(), 1);
    assert_eq!(h.shard.participant_count(), 3);
    assert_eq!(h.shard.stats().joins[JoinResult::Ok], 3);
}

#[test]
fn everyone_sees_the_same_event_order() {
    let mut h = Harness::single();
    let conns: Vec<(ConnId, String)> = (0..5).map(|_| h.joined("ord", Role::Participant)).collect();
    for (c, _) in &conns {
        h.recv(*c);
    }
    // Interleave messages and mutes from everyone in one batch, as a busy meeting would.
    let now = h.now();
    for round in 0..4 {
        for (i, (c, _)) in conns.iter().enumerate() {
            let msg = if (i + round) % 2 == 0 {
                ClientMessage::Message {
                    payload: serde_json::json!([round, i]),
                    to: None,
                }
            } else {
                ClientMessage::Mute {
                    audio: round % 2 == 0,
                    video: true,
                }
            };
            h.shard.handle_stream_data(*c, &encode(&msg), now);
        }
    }
    h.shard.process_all(now);
    let logs: Vec<Vec<String>> = conns
        .iter()
        .map(|(c, _)| {
            h.recv(*c)
                .iter()
                .map(|m| serde_json::to_string(m).unwrap())
                .collect()
        })
        .collect();
    // Mute updates go to everyone (sender included) and messages to everyone else, so after
    // removing each participant's own messages from the reference every log is identical.
    for (i, log) in logs.iter().enumerate() {
        let others: Vec<&String> = logs[(i + 1) % logs.len()]
            .iter()
            .filter(|e| !e.contains(&format!("\"from\":\"{}\"", conns[i].1)))
            .collect();
        let mine: Vec<&String> = log
            .iter()
            .filter(|e| !e.contains(&format!("\"from\":\"{}\"", conns[(i + 1) % logs.len()].1)))
            .collect();
        assert_eq!(mine, others, "participant {i} saw a different order");
    }
}

#[test]
fn join_for_a_meeting_on_another_shard_is_handed_off_with_what_followed() {
    let mut cfg = ShardConfig::for_tests(ShardId(0), 4);
    cfg.shard = ShardId(0);
    let mut h = Harness::new(cfg);
    let router = Router::new(4);
    let meeting = (0..100)
        .map(|i| format!("m{i}"))
        .find(|m| router.shard_for_str(m) != ShardId(0))
        .unwrap();
    let owner = router.shard_for_str(&meeting);
    let c = h.open();
    let token = h.token(&meeting, Role::Participant);
    let mut bytes = encode(&ClientMessage::Join {
        meeting_id: meeting.clone(),
        token,
        display_name: "x".into(),
        request_id: Some("r".into()),
        resume: None,
        capabilities: Vec::new(),
    })
    .to_vec();
    bytes.extend_from_slice(&encode(&ClientMessage::Ping { id: 7 }));
    bytes.extend_from_slice(&[0, 0, 0, 20, b'{']);
    let now = h.now();
    h.shard.handle_stream_data(c, &bytes, now);
    h.shard.process_all(now);
    let actions = h.actions();
    let Some(Action::Handoff { conn, to, join }) = actions.into_iter().next() else {
        panic!("no handoff")
    };
    assert_eq!((conn, to), (c, owner));
    // Nothing after the join was decoded on this shard: it travels as raw bytes, in order.
    assert!(join.queued.is_empty());
    let mut rest = encode(&ClientMessage::Ping { id: 7 }).to_vec();
    rest.extend_from_slice(&[0, 0, 0, 20, b'{']);
    assert_eq!(join.leftover, rest);
    assert_eq!(
        h.shard.connection_count(),
        0,
        "the connection left this shard"
    );
    assert!(h.recv(c).is_empty());

    // The owning shard adopts it: join_response, then the pong, in that order.
    let mut cfg = ShardConfig::for_tests(owner, 4);
    cfg.shard = owner;
    let mut h2 = Harness::new(cfg);
    let now = h2.now();
    h2.shard.handle_adopted(c, *join, now);
    h2.shard.process_all(now);
    let got = h2.recv(c);
    assert!(
        matches!(got[0], ServerMessage::JoinResponse { ref request_id, .. } if request_id.as_deref() == Some("r"))
    );
    assert_eq!(got[1], ServerMessage::Pong { id: 7 });
    assert_eq!(h2.shard.meeting_count(), 1);
}

#[test]
fn bad_tokens_are_rejected_before_handoff() {
    let mut h = Harness::new(ShardConfig::for_tests(ShardId(0), 4));
    let c = h.open();
    let other = TokenSigner::from_seed(&[1u8; 32], "k1");
    let now = h.now().unix_ms / 1000;
    let forged = other.mint(&MintClaims {
        sub: "u".into(),
        meeting_id: "zz".into(),
        role: Role::Host,
        iat: now,
        exp: now + 60,
        jti: None,
    });
    h.send(
        c,
        &ClientMessage::Join {
            meeting_id: "zz".into(),
            token: forged,
            display_name: "x".into(),
            request_id: None,
            resume: None,
            capabilities: Vec::new(),
        },
    );
    let msgs = h.recv(c);
    assert_eq!(error_code(&msgs[0]), Some(ErrorCode::Unauthorized));
    let actions = h.actions();
    assert!(actions.iter().all(|a| !matches!(a, Action::Handoff { .. })));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Close {
            code: close_code::UNAUTHORIZED,
            ..
        }
    )));
    assert_eq!(
        h.shard.stats().token_failures[TokenFailure::BadSignature],
        1
    );
}

#[test]
fn first_message_must_be_join() {
    let mut h = Harness::single();
    let c = h.open();
    h.send(
        c,
        &ClientMessage::Mute {
            audio: true,
            video: true,
        },
    );
    assert_eq!(error_code(&h.recv(c)[0]), Some(ErrorCode::InvalidRequest));
    assert_eq!(h.closes(), vec![(c, close_code::PROTOCOL)]);
}

#[test]
fn frame_errors_close_with_0x101_and_the_participant_leaves() {
    let mut h = Harness::single();
    let (other, _) = h.joined("f", Role::Participant);
    let (c, c_id) = h.joined("f", Role::Participant);
    h.recv(other);
    let now = h.now();
    h.shard.handle_stream_data(c, &[0, 1, 0, 1], now); // 65537
    assert_eq!(error_code(&h.recv(c)[0]), Some(ErrorCode::InvalidRequest));
    assert_eq!(h.closes(), vec![(c, close_code::PROTOCOL)]);
    assert_eq!(
        h.recv(other),
        vec![ServerMessage::ParticipantLeft {
            participant_id: c_id,
            reason: LeaveReason::ConnectionLost
        }]
    );
    assert_eq!(h.shard.participant_count(), 1);
}

#[test]
fn host_only_actions() {
    let mut h = Harness::single();
    let (host, _) = h.joined("h", Role::Host);
    let (p, p_id) = h.joined("h", Role::Participant);
    let (q, q_id) = h.joined("h", Role::Participant);
    for c in [host, p, q] {
        h.recv(c);
    }
    for msg in [
        ClientMessage::Kick {
            participant_id: q_id.clone(),
        },
        ClientMessage::HostMute {
            participant_id: q_id.clone(),
            audio: true,
            video: true,
        },
        ClientMessage::EndMeeting {},
    ] {
        h.send(p, &msg);
        assert_eq!(
            error_code(&h.recv(p)[0]),
            Some(ErrorCode::Forbidden),
            "{msg:?}"
        );
    }
    assert!(h.recv(q).is_empty(), "nothing happened to q");
    h.send(
        host,
        &ClientMessage::Kick {
            participant_id: "p0-999".into(),
        },
    );
    assert_eq!(error_code(&h.recv(host)[0]), Some(ErrorCode::NotFound));
    h.send(
        host,
        &ClientMessage::HostMute {
            participant_id: p_id.clone(),
            audio: true,
            video: false,
        },
    );
    for c in [host, p, q] {
        let m = h.recv(c);
        assert_eq!(
            m,
            vec![ServerMessage::MuteUpdate {
                participant_id: p_id.clone(),
                audio_muted: true,
                video_muted: false,
                audio_host_muted: true,
                video_host_muted: false
            }]
        );
    }
    // Self unmute cannot lift a host mute.
    h.send(
        p,
        &ClientMessage::Mute {
            audio: false,
            video: false,
        },
    );
    assert!(matches!(
        h.recv(q)[0],
        ServerMessage::MuteUpdate {
            audio_muted: true,
            audio_host_muted: true,
            ..
        }
    ));
    h.recv(p);
    h.recv(host);
    h.send(
        host,
        &ClientMessage::Kick {
            participant_id: q_id.clone(),
        },
    );
    assert_eq!(
        h.recv(q),
        vec![ServerMessage::MeetingEnded {
            reason: EndReason::Kicked
        }]
    );
    assert_eq!(
        h.recv(p),
        vec![ServerMessage::ParticipantLeft {
            participant_id: q_id,
            reason: LeaveReason::Kicked
        }]
    );
    assert!(h.closes().contains(&(q, close_code::NORMAL)));
    h.recv(host);
    h.send(host, &ClientMessage::EndMeeting {});
    for c in [host, p] {
        assert_eq!(
            h.recv(c),
            vec![ServerMessage::MeetingEnded {
                reason: EndReason::EndedByHost
            }]
        );
    }
    let actions = h.actions();
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::Close { code: 0, .. }))
            .count(),
        2
    );
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Notify(ShardEvent::MeetingEnded {
            reason: "ended_by_host",
            ..
        })
    )));
    assert_eq!(h.shard.meeting_count(), 0);
}

#[test]
fn grace_window_then_timeout_and_empty_meeting_removal() {
    let mut h = Harness::single();
    let (a, _) = h.joined("g", Role::Participant);
    let (b, b_id) = h.joined("g", Role::Participant);
    h.recv(a);
    let now = h.now();
    h.shard.handle_connection_closed(b, now);
    h.advance(Duration::from_secs(29));
    assert!(h.recv(a).is_empty(), "no churn within the resume window");
    assert_eq!(h.shard.participant_count(), 2);
    h.advance(Duration::from_secs(2));
    assert_eq!(
        h.recv(a),
        vec![ServerMessage::ParticipantLeft {
            participant_id: b_id,
            reason: LeaveReason::Timeout
        }]
    );
    // a leaves: the meeting is empty and removed after the empty-meeting timeout.
    h.send(a, &ClientMessage::Leave {});
    assert_eq!(h.shard.meeting_count(), 1);
    // A leave closes at once (nothing queued for the leaver is worth delivering); error
    // closes, by contrast, linger so that the error message arrives first.
    assert!(h.actions().iter().any(|x| matches!(
        x,
        Action::Close { conn, code: 0, reason: "leave", linger: false } if *conn == a
    )));
    h.advance(Duration::from_secs(59));
    assert_eq!(h.shard.meeting_count(), 1);
    h.advance(Duration::from_secs(2));
    assert_eq!(h.shard.meeting_count(), 0);
    assert!(h.actions().iter().any(|a| matches!(
        a,
        Action::Notify(ShardEvent::MeetingEnded {
            reason: "empty_timeout",
            ..
        })
    )));
}

#[test]
fn join_timeout_closes_idle_connections() {
    let mut h = Harness::single();
    let c = h.open();
    h.advance(Duration::from_secs(9));
    assert!(h.closes().is_empty());
    h.advance(Duration::from_secs(2));
    assert_eq!(h.closes(), vec![(c, close_code::PROTOCOL)]);
}

/// Outbound queues of `mailbox` frames, cut off after `drops` drops, no rate limit in the way.
fn slow_consumer_cfg(mailbox: usize, drops: u32) -> ShardConfig {
    let mut cfg = ShardConfig::for_tests(ShardId(0), 1);
    cfg.mailbox_size = mailbox;
    cfg.slow_consumer_drops = drops;
    cfg.rate_burst = 10_000.0;
    cfg
}

#[test]
fn slow_consumer_is_cut_off_without_hurting_the_others() {
    let mut h = Harness::new(slow_consumer_cfg(8, 4));
    let (sender, _) = h.joined("s", Role::Participant);
    let (good, _) = h.joined("s", Role::Participant);
    let (slow, slow_id) = h.joined("s", Role::Participant);
    h.recv(sender);
    for i in 0..20 {
        h.broadcast(sender, serde_json::json!(i));
        // `good` drains its queue as a fast reader would; `slow` never does.
        let got = h.recv(good);
        assert!(
            got.iter()
                .any(|m| matches!(m, ServerMessage::Message { .. })),
            "message {i} reached the good reader"
        );
    }
    assert!(h.shard.stats().dropped[DropReason::SlowConsumer] >= 4);
    assert_eq!(h.shard.stats().slow_consumers, 1);
    assert!(h.closes().contains(&(slow, close_code::SLOW_OR_FLOOD)));
    let seen_left = h.recv(sender);
    assert!(seen_left.contains(&ServerMessage::ParticipantLeft {
        participant_id: slow_id,
        reason: LeaveReason::ConnectionLost
    }));
}

#[test]
fn several_slow_consumers_in_one_meeting_are_each_cut_off_once() {
    let mut h = Harness::new(slow_consumer_cfg(4, 2));
    let (sender, _) = h.joined("s", Role::Participant);
    let (good, good_id) = h.joined("s", Role::Participant);
    let slow: Vec<_> = (0..3).map(|_| h.joined("s", Role::Participant)).collect();
    h.recv(sender);
    h.recv(good);
    for i in 0..12 {
        h.broadcast(sender, serde_json::json!(i));
        h.recv(sender);
        h.recv(good);
    }
    assert_eq!(h.shard.stats().slow_consumers, 3);
    let closes = h.closes();
    for (conn, _) in &slow {
        assert_eq!(
            closes
                .iter()
                .filter(|c| **c == (*conn, close_code::SLOW_OR_FLOOD))
                .count(),
            1,
            "{closes:?}"
        );
    }
    assert!(!closes.iter().any(|(c, _)| *c == good || *c == sender));
    // The good reader is still in the meeting and still gets messages.
    h.broadcast(sender, serde_json::json!("after"));
    assert!(h.recv(good).iter().any(|m| matches!(
        m,
        ServerMessage::Message { from, .. } if *from != good_id
    )));
}

#[test]
fn rate_limit_then_flood_disconnect() {
    let mut cfg = ShardConfig::for_tests(ShardId(0), 1);
    cfg.rate_limit = 1.0;
    cfg.rate_burst = 3.0;
    cfg.flood_strikes = 5;
    let mut h = Harness::new(cfg);
    let (c, _) = h.joined("r", Role::Participant); // the join used one token
    for id in 0..2 {
        h.send(c, &ClientMessage::Ping { id });
    }
    assert_eq!(h.recv(c).len(), 2);
    h.send(c, &ClientMessage::Ping { id: 9 });
    assert_eq!(error_code(&h.recv(c)[0]), Some(ErrorCode::RateLimited));
    // Refill after a second.
    h.advance(Duration::from_secs(1));
    h.send(c, &ClientMessage::Ping { id: 10 });
    assert_eq!(h.recv(c), vec![ServerMessage::Pong { id: 10 }]);
    for id in 0..10 {
        h.send(c, &ClientMessage::Ping { id });
    }
    assert!(h.closes().contains(&(c, close_code::SLOW_OR_FLOOD)));
}

#[test]
fn gc_mode_assignment() {
    let mut cfg = ShardConfig::for_tests(ShardId(0), 1);
    cfg.gc_mode = true;
    cfg.max_meetings = 2;
    let mut h = Harness::new(cfg);
    let c = h.open();
    assert_eq!(
        error_code(&h.join(c, "unassigned", Role::Host)[0]),
        Some(ErrorCode::NotFound)
    );
    let mh = vec![MediaHandler {
        id: "mh-1".into(),
        url: "https://mh-1".into(),
    }];
    let now = h.now();
    let mid = MeetingId::parse("a1").unwrap();
    assert_eq!(
        h.shard.assign_meeting(mid.clone(), mh.clone(), now),
        AssignOutcome::Accepted
    );
    assert_eq!(
        h.shard.assign_meeting(mid, mh.clone(), now),
        AssignOutcome::Accepted,
        "idempotent"
    );
    assert_eq!(
        h.shard
            .assign_meeting(MeetingId::parse("a2").unwrap(), vec![], now),
        AssignOutcome::Accepted
    );
    assert_eq!(
        h.shard
            .assign_meeting(MeetingId::parse("a3").unwrap(), vec![], now),
        AssignOutcome::AtCapacity
    );
    let c = h.open();
    let msgs = h.join(c, "a1", Role::Host);
    assert!(
        matches!(&msgs[0], ServerMessage::JoinResponse { media_handlers, .. } if *media_handlers == mh)
    );
    h.shard.set_draining(true);
    assert_eq!(
        h.shard
            .assign_meeting(MeetingId::parse("a4").unwrap(), vec![], now),
        AssignOutcome::Draining
    );
    let c = h.open();
    assert_eq!(
        error_code(&h.join(c, "a2", Role::Host)[0]),
        Some(ErrorCode::CapacityExceeded)
    );
}

#[test]
fn controller_participant_capacity() {
    let mut cfg = ShardConfig::for_tests(ShardId(0), 1);
    cfg.max_participants = 3;
    let mut h = Harness::new(cfg);
    h.joined("x", Role::Participant);
    h.joined("y", Role::Participant);
    h.joined("y", Role::Participant);
    let c = h.open();
    assert_eq!(
        error_code(&h.join(c, "z", Role::Participant)[0]),
        Some(ErrorCode::CapacityExceeded)
    );
    assert_eq!(
        h.shard.meeting_count(),
        2,
        "the refused join created no meeting"
    );
}

#[test]
fn a_roster_larger_than_one_frame_is_completed_with_participant_joined() {
    let mut h = Harness::single();
    let long = "n".repeat(250);
    for _ in 0..300 {
        let c = h.open();
        let token = h.token("big", Role::Participant);
        h.send(
            c,
            &ClientMessage::Join {
                meeting_id: "big".into(),
                token,
                display_name: long.clone(),
                request_id: None,
                resume: None,
                capabilities: Vec::new(),
            },
        );
        h.recv(c);
    }
    let c = h.open();
    let token = h.token("big", Role::Participant);
    let now = h.now();
    let join = ClientMessage::Join {
        meeting_id: "big".into(),
        token,
        display_name: "late".into(),
        request_id: None,
        resume: None,
        capabilities: Vec::new(),
    };
    h.shard.handle_stream_data(c, &encode(&join), now);
    let mut frames = Vec::new();
    while let Some(f) = h.shard.pop_frame(c) {
        frames.push(f);
    }
    let sizes: Vec<usize> = frames.iter().map(|f| f.len()).collect();
    assert!(
        frames
            .iter()
            .all(|f| f.len() - 4 <= crate::core::codec::MAX_FRAME_LEN),
        "every frame within 64 KiB: {:?}",
        &sizes[..sizes.len().min(5)]
    );
    let msgs: Vec<ServerMessage> = frames.iter().map(|f| decode(&f[4..]).unwrap()).collect();
    let ServerMessage::JoinResponse { participants, .. } = &msgs[0] else {
        panic!()
    };
    let extra = msgs[1..]
        .iter()
        .filter(|m| matches!(m, ServerMessage::ParticipantJoined { .. }))
        .count();
    assert!(extra > 0, "the roster did not fit and was completed");
    assert_eq!(
        participants.len() + extra,
        300,
        "everyone is announced exactly once"
    );
}

#[test]
fn meeting_capacity() {
    let mut cfg = ShardConfig::for_tests(ShardId(0), 1);
    cfg.max_participants_per_meeting = 2;
    let mut h = Harness::new(cfg);
    h.joined("cap", Role::Participant);
    h.joined("cap", Role::Participant);
    let c = h.open();
    assert_eq!(
        error_code(&h.join(c, "cap", Role::Participant)[0]),
        Some(ErrorCode::CapacityExceeded)
    );
    assert!(h.closes().contains(&(c, close_code::CAPACITY)));
}

#[test]
fn panic_in_one_meeting_is_contained() {
    let mut cfg = ShardConfig::for_tests(ShardId(0), 1);
    cfg.test_hooks = true;
    let mut h = Harness::new(cfg);
    let (a, _) = h.joined("bad", Role::Participant);
    let (b, _) = h.joined("bad", Role::Participant);
    let (x, _) = h.joined("good", Role::Participant);
    let (y, _) = h.joined("good", Role::Participant);
    for c in [a, b, x, y] {
        h.recv(c);
    }
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    h.broadcast(a, serde_json::json!(TEST_PANIC_PAYLOAD));
    std::panic::set_hook(prev);
    for c in [a, b] {
        assert_eq!(error_code(&h.recv(c)[0]), Some(ErrorCode::Internal));
    }
    assert_eq!(h.shard.stats().panics[PanicActor::Meeting], 1);
    assert_eq!(h.shard.meeting_count(), 1);
    h.broadcast(x, serde_json::json!("hi"));
    assert!(matches!(h.recv(y)[0], ServerMessage::Message { .. }));
}

#[test]
fn resume_takes_over_without_churn_and_is_single_use() {
    let mut h = Harness::single();
    let (a, _) = h.joined("res", Role::Participant);
    let b = h.open();
    let first = h.join(b, "res", Role::Participant);
    let ServerMessage::JoinResponse {
        participant_id,
        binding_token,
        ..
    } = first[0].clone()
    else {
        panic!()
    };
    h.recv(a);
    let now = h.now();
    h.shard.handle_connection_closed(b, now);
    h.advance(Duration::from_secs(5));
    let resume = |h: &mut Harness, token: &str, pid: &str| {
        let c = h.open();
        let t = h.token("res", Role::Participant);
        h.send(
            c,
            &ClientMessage::Join {
                meeting_id: "res".into(),
                token: t,
                display_name: "again".into(),
                request_id: None,
                resume: Some(ResumeRequest {
                    participant_id: pid.into(),
                    binding_token: token.into(),
                }),
                capabilities: Vec::new(),
            },
        );
        (c, h.recv(c))
    };
    let (c2, msgs) = resume(&mut h, &binding_token, &participant_id);
    assert!(
        matches!(&msgs[0], ServerMessage::JoinResponse { participant_id: p, .. } if *p == participant_id)
    );
    assert!(h.recv(a).is_empty(), "no left/joined churn for the others");
    // Reuse of the same binding token fails.
    let (_, msgs) = resume(&mut h, &binding_token, &participant_id);
    assert_eq!(error_code(&msgs[0]), Some(ErrorCode::Unauthorized));
    // And the resumed participant is live: messages reach it.
    h.broadcast(a, serde_json::json!(1));
    assert!(matches!(h.recv(c2)[0], ServerMessage::Message { .. }));
    // After the window passes without a connection, timeout still applies.
    h.advance(Duration::from_secs(40));
    assert_eq!(h.shard.participant_count(), 2);
}

#[test]
fn inbox_overflow_is_dropped_and_counted() {
    let mut cfg = ShardConfig::for_tests(ShardId(0), 1);
    cfg.mailbox_size = 4;
    let mut h = Harness::new(cfg);
    let (c, _) = h.joined("i", Role::Participant);
    let now = h.now();
    for id in 0..10 {
        h.shard
            .handle_stream_data(c, &encode(&ClientMessage::Ping { id }), now);
    }
    assert_eq!(h.shard.inbox_depth(), 4);
    h.shard.process_all(now);
    assert_eq!(h.recv(c).len(), 4);
    assert_eq!(h.shard.stats().dropped[DropReason::MailboxFull], 6);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Join(u8),
        Leave(u8),
        Drop(u8),
        Msg(u8),
        Mute(u8, bool),
        Tick(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6).prop_map(Op::Join),
            (0u8..6).prop_map(Op::Leave),
            (0u8..6).prop_map(Op::Drop),
            (0u8..6).prop_map(Op::Msg),
            ((0u8..6), any::<bool>()).prop_map(|(a, b)| Op::Mute(a, b)),
            (0u16..40_000).prop_map(Op::Tick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_sequences_keep_the_invariants(ops in proptest::collection::vec(op(), 1..60)) {
            let mut h = Harness::single();
            // slot -> (conn, participant id) of a live connection
            let mut live: std::collections::BTreeMap<u8, (ConnId, String)> = Default::default();
            let mut logs: std::collections::HashMap<ConnId, Vec<String>> = Default::default();
            for op in ops {
                match op {
                    Op::Join(s) if !live.contains_key(&s) => {
                        let (c, id) = h.joined("prop", Role::Participant);
                        live.insert(s, (c, id));
                    }
                    Op::Leave(s) => if let Some((c, _)) = live.remove(&s) { h.send(c, &ClientMessage::Leave {}); },
                    Op::Drop(s) => if let Some((c, _)) = live.remove(&s) { let n = h.now(); h.shard.handle_connection_closed(c, n); },
                    Op::Msg(s) => if let Some((c, _)) = live.get(&s).cloned() { h.broadcast(c, serde_json::json!(s)); },
                    Op::Mute(s, m) => if let Some((c, _)) = live.get(&s).cloned() { h.send(c, &ClientMessage::Mute { audio: m, video: m }); },
                    Op::Tick(ms) => h.advance(Duration::from_millis(u64::from(ms))),
                    _ => {}
                }
                for (c, _) in live.values() {
                    for m in h.recv(*c) {
                        if let ServerMessage::MuteUpdate { .. } | ServerMessage::ParticipantLeft { .. } | ServerMessage::ParticipantJoined { .. } = m {
                            logs.entry(*c).or_default().push(serde_json::to_string(&m).unwrap());
                        }
                    }
                }
                // One participant per live connection; the roster never exceeds the joins.
                let in_meeting = h.shard.meeting(&MeetingId::parse("prop").unwrap(), h.now());
                if let Some(d) = in_meeting {
                    let connected = d.participants.iter().filter(|p| p.connected).count();
                    prop_assert_eq!(connected, live.len());
                    let ids: std::collections::HashSet<&String> = d.participants.iter().map(|p| &p.participant_id).collect();
                    prop_assert_eq!(ids.len(), d.participants.len());
                    for (_, id) in live.values() {
                        prop_assert!(ids.contains(id));
                    }
                } else {
                    prop_assert!(live.is_empty());
                }
            }
            // Every pair of participants alive at the end saw the same suffix of shared events.
            let ends: Vec<&Vec<String>> = live.values().filter_map(|(c, _)| logs.get(c)).collect();
            for w in ends.windows(2) {
                let (x, y) = (w[0], w[1]);
                let n = x.len().min(y.len());
                prop_assert_eq!(&x[x.len() - n..], &y[y.len() - n..]);
            }
        }
    }
}

#[test]
fn json_len_counts_exactly_what_serialization_writes() {
    let msg = ServerMessage::ParticipantLeft {
        participant_id: "p-\"quoted\"-é".into(),
        reason: LeaveReason::ConnectionLost,
    };
    assert_eq!(
        join::json_len(&msg),
        Some(serde_json::to_vec(&msg).expect("serializes").len())
    );
}

#[test]
fn a_join_for_another_meeting_than_the_session_path_is_refused_without_handoff() {
    let mut h = Harness::new(ShardConfig::for_tests(ShardId(0), 4));
    let router = Router::new(4);
    let mine = (0..100)
        .map(|i| format!("m{i}"))
        .find(|m| router.shard_for_str(m) == ShardId(0))
        .unwrap();
    let foreign = (0..100)
        .map(|i| format!("m{i}"))
        .find(|m| router.shard_for_str(m) != ShardId(0))
        .unwrap();
    let c = h.open();
    h.shard
        .bind_session_meeting(c, MeetingId::parse(&mine).unwrap());
    // A valid token for the other meeting: the mismatch is refused before the token matters.
    let token = h.token(&foreign, Role::Host);
    h.send(
        c,
        &ClientMessage::Join {
            meeting_id: foreign.clone(),
            token,
            display_name: "x".into(),
            request_id: Some("r1".into()),
            resume: None,
            capabilities: Vec::new(),
        },
    );
    let msgs = h.recv(c);
    assert_eq!(error_code(&msgs[0]), Some(ErrorCode::InvalidRequest));
    let ServerMessage::Error {
        message,
        request_id,
        ..
    } = &msgs[0]
    else {
        unreachable!()
    };
    assert_eq!(request_id.as_deref(), Some("r1"));
    assert!(
        message.contains("does not match the session path"),
        "{message}"
    );
    let actions = h.actions();
    assert!(actions.iter().all(|a| !matches!(a, Action::Handoff { .. })));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Close {
            code: close_code::PROTOCOL,
            ..
        }
    )));
    let stats = h.shard.stats();
    assert_eq!(stats.joins[JoinResult::InvalidRequest], 1);
    assert_eq!(stats.joins[JoinResult::Handoff], 0);
    assert_eq!(stats.token_failures.values().sum::<u64>(), 0);

    // The session's own meeting joins as usual.
    let c2 = h.open();
    h.shard
        .bind_session_meeting(c2, MeetingId::parse(&mine).unwrap());
    let msgs = h.join(c2, &mine, Role::Host);
    assert!(
        matches!(msgs[0], ServerMessage::JoinResponse { .. }),
        "{msgs:?}"
    );
}

#[test]
fn payloads_reach_recipients_as_sent_or_through_the_full_decoder() {
    let mut h = Harness::single();
    let (a, a_id) = h.joined("relay", Role::Participant);
    let (b, _) = h.joined("relay", Role::Participant);
    h.recv(a);
    h.recv(b);
    // Frames of exactly these bytes: `encode` writes a `RawValue` verbatim.
    let framed = |body: &str| encode(&RawValue::from_string(body.to_owned()).unwrap()).to_vec();
    // Raw path: the payload's bytes as written (spacing, `2.50`).
    let mut frame = framed(r#"{"type":"message","payload":{"x": [1, 2.50]}}"#);
    // Full-decoder path: a number with an exponent, relayed in its compact form.
    frame.extend_from_slice(&framed(r#"{"type":"message","payload":[1e3]}"#));
    let now = h.now();
    h.shard.handle_stream_data(a, &frame, now);
    h.shard.process_all(now);
    let mut raw = Vec::new();
    while let Some(f) = h.shard.pop_frame(b) {
        raw.extend_from_slice(&f[4..]);
        raw.push(b'\n');
    }
    let text = String::from_utf8(raw).unwrap();
    assert_eq!(
        text,
        format!(
            "{{\"type\":\"message\",\"from\":\"{a_id}\",\"payload\":{{\"x\": [1, 2.50]}}}}\n\
             {{\"type\":\"message\",\"from\":\"{a_id}\",\"payload\":[1000.0]}}\n"
        )
    );
    assert!(h.recv(a).is_empty(), "the sender gets nothing back");
}

mod migration;
