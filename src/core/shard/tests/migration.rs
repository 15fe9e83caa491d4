//! Sans-IO tests of live-meeting migration: export → import → commit on two shards of two
//! "controllers" sharing the binding secret, with a fake clock.

use super::*;
use crate::core::migration::{ExportError, ImportError, ImportOutcome, MigrationTarget};
use crate::core::protocol::CAPABILITY_MIGRATE;

fn target_info() -> MigrationTarget {
    MigrationTarget {
        controller_id: "mc-b".into(),
        quic_endpoint: "127.0.0.1:5433".into(),
        webtransport_url: "https://127.0.0.1:5433/meetings".into(),
    }
}

impl Harness {
    fn capable(&mut self, meeting: &str, role: Role) -> (ConnId, String) {
        let c = self.open();
        match self.join_as(c, meeting, role, None, true).first() {
            Some(ServerMessage::JoinResponse { participant_id, .. }) => (c, participant_id.clone()),
            other => panic!("join failed: {other:?}"),
        }
    }
}

/// The `migrate` notice of `msgs`: (participant id, binding token, messages handled).
fn notice(msgs: &[ServerMessage]) -> (String, String, u64) {
    match msgs.last() {
        Some(ServerMessage::Migrate {
            participant_id,
            binding_token,
            controller_id,
            quic_endpoint,
            messages_handled,
            ..
        }) => {
            assert_eq!(controller_id, "mc-b");
            assert_eq!(quic_endpoint, "127.0.0.1:5433");
            (
                participant_id.clone(),
                binding_token.clone(),
                *messages_handled,
            )
        }
        other => panic!("no migrate notice: {other:?}"),
    }
}

#[test]
fn a_meeting_moves_with_roster_roles_mute_and_held_messages() {
    let mut src = Harness::single();
    let mut dst = Harness::single();
    let (a, pa) = src.capable("mv", Role::Host);
    let (b, pb) = src.capable("mv", Role::Participant);
    let (c, pc) = src.capable("mv", Role::Participant);
    src.send(
        b,
        &ClientMessage::Mute {
            audio: true,
            video: false,
        },
    );
    src.send(
        a,
        &ClientMessage::HostMute {
            participant_id: pc.clone(),
            audio: false,
            video: true,
        },
    );
    for conn in [a, b, c] {
        src.recv(conn);
    }
    let now = src.now();
    let before = src
        .shard
        .meeting(&MeetingId::parse("mv").unwrap(), now)
        .unwrap();

    let mid = MeetingId::parse("mv").unwrap();
    let export = src.shard.begin_export(&mid, "mig-1", "mc-a", now).unwrap();
    assert_eq!(export.participants.len(), 3);
    assert_eq!(
        src.shard.begin_export(&mid, "mig-2", "mc-a", now),
        Err(ExportError::InProgress)
    );
    // Frozen: a message is refused visibly and reaches nobody.
    src.broadcast(a, serde_json::json!("during freeze"));
    let refused = src.recv(a);
    assert!(
        matches!(&refused[..], [ServerMessage::Error { code: ErrorCode::Conflict, message, .. }] if message == MIGRATING_REFUSAL),
        "{refused:?}"
    );
    assert!(src.recv(b).is_empty());

    let now = dst.now();
    assert_eq!(
        dst.shard.import_meeting(&export, now),
        Ok(ImportOutcome::Imported)
    );
    assert_eq!(
        dst.shard.import_meeting(&export, now),
        Ok(ImportOutcome::Repeated)
    );
    assert_eq!(dst.shard.participant_count(), 3);

    let now = src.now();
    assert_eq!(src.shard.commit_export(&mid, target_info(), now), Some(3));
    assert_eq!(src.shard.meeting_count(), 0);
    let mut tokens = std::collections::HashMap::new();
    // A: join, host_mute, the refused message; B: join, mute; C: join.
    for (conn, pid, handled) in [(a, &pa, 3), (b, &pb, 2), (c, &pc, 1)] {
        let (p, t, n) = notice(&src.recv(conn));
        assert_eq!((&p, n), (pid, handled));
        tokens.insert(p, t);
    }
    let closes = src.closes();
    assert_eq!(closes.len(), 3);
    assert!(closes.iter().all(|(_, code)| *code == close_code::NORMAL));
    assert!(
        !src.actions().iter().any(|a| matches!(a, Action::Notify(_))),
        "the GC is not told the meeting ended"
    );

    // A comes back first: same id and role, the roster with everyone's mute state, no churn.
    let a2 = dst.open();
    let msgs = dst.join_as(a2, "mv", Role::Participant, Some((&pa, &tokens[&pa])), true);
    let ServerMessage::JoinResponse {
        participant_id,
        role,
        participants,
        ..
    } = &msgs[0]
    else {
        panic!("{msgs:?}")
    };
    assert_eq!((participant_id, *role), (&pa, Role::Host));
    let ids: Vec<&str> = participants
        .iter()
        .map(|p| p.participant_id.as_str())
        .collect();
    assert_eq!(ids, [pb.as_str(), pc.as_str()], "join order kept");
    assert!(participants[0].audio_muted && !participants[0].video_muted);
    assert!(!participants[1].audio_muted && participants[1].video_muted);
    // A talks while B and C are still on their way: held for them, not lost.
    dst.broadcast(a2, serde_json::json!("m1"));
    dst.send(
        a2,
        &ClientMessage::Mute {
            audio: true,
            video: true,
        },
    );
    dst.recv(a2);

    // C presents B's token (another participant's): refused, its own slot stays.
    let bad = dst.open();
    let msgs = dst.join_as(
        bad,
        "mv",
        Role::Participant,
        Some((&pc, &tokens[&pb])),
        true,
    );
    assert_eq!(error_code(&msgs[0]), Some(ErrorCode::Unauthorized));

    let b2 = dst.open();
    let msgs = dst.join_as(b2, "mv", Role::Participant, Some((&pb, &tokens[&pb])), true);
    assert!(
        matches!(&msgs[0], ServerMessage::JoinResponse { participant_id, .. } if *participant_id == pb)
    );
    assert!(
        matches!(&msgs[1], ServerMessage::Message { from, payload } if *from == pa && payload == "m1"),
        "{msgs:?}"
    );
    assert!(
        matches!(&msgs[2], ServerMessage::MuteUpdate { participant_id, .. } if *participant_id == pa)
    );
    assert!(dst.recv(a2).is_empty(), "nothing announced for a returner");

    // A replayed token is refused.
    let again = dst.open();
    let msgs = dst.join_as(
        again,
        "mv",
        Role::Participant,
        Some((&pb, &tokens[&pb])),
        true,
    );
    assert_eq!(error_code(&msgs[0]), Some(ErrorCode::Unauthorized));

    // The operator view matches the source's, apart from connection state and the mute A set.
    let now = dst.now();
    let after = dst.shard.meeting(&mid, now).unwrap();
    let key = |d: &MeetingDetail| -> Vec<(String, String, Role, u64)> {
        d.participants
            .iter()
            .map(|p| {
                (
                    p.participant_id.clone(),
                    p.display_name.clone(),
                    p.role,
                    p.joined_at_ms,
                )
            })
            .collect()
    };
    assert_eq!(key(&before), key(&after));

    // C never comes back: it leaves with `timeout` after the window, counted as lost.
    dst.advance(Duration::from_secs(31));
    for conn in [a2, b2] {
        let msgs = dst.recv(conn);
        assert!(
            msgs.iter().any(|m| matches!(m, ServerMessage::ParticipantLeft { participant_id, reason: LeaveReason::Timeout } if *participant_id == pc)),
            "{msgs:?}"
        );
    }
    let st = dst.shard.stats();
    assert_eq!(st.migration[MigrationOutcome::Imported], 1);
    assert_eq!(st.migration[MigrationOutcome::Returned], 2);
    assert_eq!(st.migration[MigrationOutcome::Lost], 1);
    assert_eq!(st.joins[JoinResult::Migrated], 2);
    assert_eq!(src.shard.stats().migration[MigrationOutcome::Notified], 3);
    assert_eq!(src.shard.stats().migration[MigrationOutcome::Exported], 1);
    assert_eq!(src.shard.stats().dropped[DropReason::Migrating], 1);
}

#[test]
fn a_meeting_is_not_moved_on_while_participants_of_its_last_move_are_on_their_way() {
    let mut src = Harness::single();
    let mut dst = Harness::single();
    let (a, pa) = src.capable("hop", Role::Host);
    let (b, pb) = src.capable("hop", Role::Participant);
    let (c, _pc) = src.capable("hop", Role::Participant);
    for conn in [a, b, c] {
        src.recv(conn);
    }
    let mid = MeetingId::parse("hop").unwrap();
    let now = src.now();
    let export = src.shard.begin_export(&mid, "mig-1", "mc-a", now).unwrap();
    let now = dst.now();
    assert_eq!(
        dst.shard.import_meeting(&export, now),
        Ok(ImportOutcome::Imported)
    );
    let now = src.now();
    assert_eq!(src.shard.commit_export(&mid, target_info(), now), Some(3));
    let (_, ta, _) = notice(&src.recv(a));
    let (_, tb, _) = notice(&src.recv(b));

    // A is back and talks; B and C are still on their way (they know only this controller).
    let a2 = dst.open();
    dst.join_as(a2, "hop", Role::Host, Some((&pa, &ta)), true);
    dst.broadcast(a2, serde_json::json!("m1"));
    assert!(dst.recv(a2).is_empty());
    // Moving the meeting on now would drop what is held for them and strand them: refused,
    // and the meeting is not frozen (A's next message is not refused).
    let now = dst.now();
    assert_eq!(
        dst.shard.begin_export(&mid, "mig-2", "mc-b", now),
        Err(ExportError::Returning)
    );
    dst.broadcast(a2, serde_json::json!("m2"));
    assert!(dst.recv(a2).is_empty(), "not refused");

    // B comes back and gets everything said meanwhile, in order; C is still missing.
    let b2 = dst.open();
    let msgs = dst.join_as(b2, "hop", Role::Participant, Some((&pb, &tb)), true);
    let said: Vec<&serde_json::Value> = msgs
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Message { payload, .. } => Some(payload),
            _ => None,
        })
        .collect();
    assert_eq!(said, ["m1", "m2"], "{msgs:?}");
    let now = dst.now();
    assert_eq!(
        dst.shard.begin_export(&mid, "mig-3", "mc-b", now),
        Err(ExportError::Returning)
    );

    // C's window ends: it leaves with `timeout`, and the meeting can move on.
    dst.advance(Duration::from_secs(31));
    dst.recv(a2);
    dst.recv(b2);
    let now = dst.now();
    let again = dst.shard.begin_export(&mid, "mig-4", "mc-b", now).unwrap();
    assert_eq!(again.participants.len(), 2);
    assert_eq!(ExportError::Returning.reason(), "participants_returning");
}

#[test]
fn an_aborted_export_leaves_the_meeting_running() {
    let mut h = Harness::single();
    let (a, _) = h.capable("ab", Role::Host);
    let (b, _) = h.capable("ab", Role::Participant);
    h.recv(a);
    let mid = MeetingId::parse("ab").unwrap();
    let now = h.now();
    h.shard.begin_export(&mid, "m", "mc-a", now).unwrap();
    assert!(h.shard.abort_export(&mid));
    assert!(!h.shard.abort_export(&mid));
    h.broadcast(a, serde_json::json!(1));
    assert!(matches!(h.recv(b)[..], [ServerMessage::Message { .. }]));
    assert!(h.actions().is_empty());
    assert_eq!(h.shard.commit_export(&mid, target_info(), now), None);
    assert_eq!(h.shard.meeting_count(), 1);
}

#[test]
fn meetings_with_clients_that_do_not_follow_migrate_stay() {
    let mut h = Harness::single();
    h.capable("old", Role::Host);
    h.joined("old", Role::Participant); // no capability
    let mid = MeetingId::parse("old").unwrap();
    let now = h.now();
    assert_eq!(
        h.shard.begin_export(&mid, "m", "mc-a", now),
        Err(ExportError::ClientsUnsupported)
    );
    assert_eq!(
        h.shard
            .begin_export(&MeetingId::parse("none").unwrap(), "m", "mc-a", now),
        Err(ExportError::NotFound)
    );
}

#[test]
fn refused_imports_leave_nothing_behind() {
    let mut src = Harness::single();
    src.capable("imp", Role::Host);
    src.capable("imp", Role::Participant);
    let mid = MeetingId::parse("imp").unwrap();
    let now = src.now();
    let export = src.shard.begin_export(&mid, "mig-9", "mc-a", now).unwrap();

    // Another binding secret: every resume would fail, so the import is refused.
    let signer = TokenSigner::from_seed(&[9u8; 32], "k1");
    let verifier = TokenVerifier::from_jwks_json(&signer.jwks_json(), 60).unwrap();
    let mut other = Shard::new(
        ShardConfig::for_tests(ShardId(0), 1),
        Arc::new(verifier),
        Arc::new(BindingKey::new(&[8u8; 32]).unwrap()),
    );
    assert_eq!(
        other.import_meeting(&export, now),
        Err(ImportError::SecretMismatch)
    );
    assert_eq!(other.meeting_count(), 0);

    let mut dst = Harness::single();
    dst.shard.set_draining(true);
    assert_eq!(
        dst.shard.import_meeting(&export, now),
        Err(ImportError::Draining)
    );
    dst.shard.set_draining(false);

    let mut cfg = ShardConfig::for_tests(ShardId(0), 1);
    cfg.max_participants = 1;
    let mut small = Harness::new(cfg);
    assert_eq!(
        small.shard.import_meeting(&export, now),
        Err(ImportError::AtCapacity)
    );
    assert_eq!(small.shard.meeting_count(), 0);

    let mut dup = export.clone();
    dup.participants[1].participant_id = dup.participants[0].participant_id.clone();
    assert!(matches!(
        dst.shard.import_meeting(&dup, now),
        Err(ImportError::Invalid(_))
    ));
    let mut forged = export.clone();
    forged.secret_check_nonce ^= 1;
    assert_eq!(
        dst.shard.import_meeting(&forged, now),
        Err(ImportError::SecretMismatch)
    );
    assert_eq!(dst.shard.meeting_count(), 0);

    // A meeting of that id already here from elsewhere: conflict, untouched.
    dst.capable("imp", Role::Host);
    assert_eq!(
        dst.shard.import_meeting(&export, now),
        Err(ImportError::Conflict)
    );
    assert_eq!(dst.shard.participant_count(), 1);

    // Imports that land on the wrong shard are refused.
    let mut two = Harness::new(ShardConfig::for_tests(ShardId(1), 2));
    let owner = Router::new(2).shard_for(&mid);
    if owner != ShardId(1) {
        assert!(matches!(
            two.shard.import_meeting(&export, now),
            Err(ImportError::Invalid(_))
        ));
    }
}

#[test]
fn a_late_resume_at_the_source_is_redirected() {
    let mut src = Harness::single();
    let (a, _) = src.capable("late", Role::Host);
    let b = src.open();
    let first = src.join_as(b, "late", Role::Participant, None, true);
    let ServerMessage::JoinResponse {
        participant_id: pb,
        binding_token,
        ..
    } = first[0].clone()
    else {
        panic!()
    };
    src.recv(a);
    let now = src.now();
    src.shard.handle_connection_closed(b, now); // B is within its resume window
    let mid = MeetingId::parse("late").unwrap();
    src.shard.begin_export(&mid, "mig", "mc-a", now).unwrap();
    assert_eq!(src.shard.commit_export(&mid, target_info(), now), Some(1));
    src.actions();

    // B comes back to the old controller with its old binding token: told where to go.
    let b2 = src.open();
    let msgs = src.join_as(
        b2,
        "late",
        Role::Participant,
        Some((&pb, &binding_token)),
        true,
    );
    let (p, _, handled) = notice(&msgs);
    assert_eq!((p, handled), (pb.clone(), 1));
    // A forged token is not redirected.
    let b3 = src.open();
    let msgs = src.join_as(b3, "late", Role::Participant, Some((&pb, "x")), true);
    assert_eq!(error_code(&msgs[0]), Some(ErrorCode::Unauthorized));
    // After the window the tombstone is gone.
    src.advance(Duration::from_secs(31));
    let b4 = src.open();
    let msgs = src.join_as(
        b4,
        "late",
        Role::Participant,
        Some((&pb, &binding_token)),
        true,
    );
    assert_eq!(error_code(&msgs[0]), Some(ErrorCode::Unauthorized));
}

#[test]
fn joiners_at_the_target_never_reuse_an_imported_id() {
    let mut src = Harness::single();
    src.capable("ids", Role::Host);
    src.capable("ids", Role::Participant);
    let mid = MeetingId::parse("ids").unwrap();
    let now = src.now();
    let export = src.shard.begin_export(&mid, "mig", "mc-a", now).unwrap();
    let mut dst = Harness::single();
    dst.shard.import_meeting(&export, now).unwrap();
    let (_, p) = dst.capable("ids", Role::Participant);
    assert!(
        export.participants.iter().all(|e| e.participant_id != p),
        "{p}"
    );
}

#[test]
fn messages_still_queued_at_commit_are_reported_as_not_handled() {
    let mut src = Harness::single();
    let (a, _) = src.capable("q", Role::Host);
    let (b, _) = src.capable("q", Role::Participant);
    let mid = MeetingId::parse("q").unwrap();
    let now = src.now();
    src.shard.begin_export(&mid, "mig", "mc-a", now).unwrap();
    // Two messages arrive but are not processed before the commit.
    for i in 0..2 {
        let f = encode(&ClientMessage::Message {
            payload: serde_json::json!(i),
            to: None,
        });
        src.shard.handle_stream_data(a, &f, now);
    }
    assert_eq!(src.shard.inbox_depth(), 2);
    assert_eq!(src.shard.commit_export(&mid, target_info(), now), Some(2));
    let (_, _, handled) = notice(&src.recv(a));
    assert_eq!(
        handled, 1,
        "only the join was handled; the client resends the two messages"
    );
    assert_eq!(src.shard.inbox_depth(), 0);
    src.shard.process_all(now);
    assert!(matches!(
        src.recv(b).last(),
        Some(ServerMessage::Migrate { .. })
    ));
}

#[test]
fn messages_handled_counts_what_a_handed_off_connection_carried() {
    let router = Router::new(2);
    let meeting = (0..100)
        .map(|i| format!("ho-{i}"))
        .find(|m| router.shard_for(&MeetingId::parse(m).unwrap()) == ShardId(1))
        .unwrap();
    let mut s0 = Harness::new(ShardConfig::for_tests(ShardId(0), 2));
    let mut s1 = Harness::new(ShardConfig::for_tests(ShardId(1), 2));
    let (_, _) = s1.capable(&meeting, Role::Host);
    // A connection arrives on shard 0 with its join and two messages in one read.
    let c = s0.open();
    let now = s0.now();
    let mut bytes = encode(&ClientMessage::Join {
        meeting_id: meeting.clone(),
        token: s0.token(&meeting, Role::Participant),
        display_name: "x".into(),
        request_id: None,
        resume: None,
        capabilities: vec![CAPABILITY_MIGRATE.into()],
    })
    .to_vec();
    for i in 0..2 {
        bytes.extend_from_slice(&encode(&ClientMessage::Ping { id: i }));
    }
    s0.shard.handle_stream_data(c, &bytes, now);
    let Some(Action::Handoff { conn, join, .. }) = s0.shard.poll_action() else {
        panic!("no handoff")
    };
    s1.shard.handle_adopted(conn, *join, now);
    s1.shard.process_all(now);
    s1.recv(conn);
    let mid = MeetingId::parse(&meeting).unwrap();
    s1.shard.begin_export(&mid, "mig", "mc-a", now).unwrap();
    s1.shard.commit_export(&mid, target_info(), now).unwrap();
    let (_, _, handled) = notice(&s1.recv(conn));
    assert_eq!(handled, 3, "join and both pings were handled");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Msg(u8),
        Mute(u8, bool),
        Tick(u16),
        /// Freeze for export, then either move (true) or abort (false).
        Move(bool),
        /// A participant still on its way follows its notice.
        Follow(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..4).prop_map(Op::Msg),
            1 => ((0u8..4), any::<bool>()).prop_map(|(a, b)| Op::Mute(a, b)),
            2 => (0u16..500).prop_map(Op::Tick),
            1 => any::<bool>().prop_map(Op::Move),
            3 => (0u8..4).prop_map(Op::Follow),
        ]
    }

    struct Member {
        pid: String,
        /// (shard index, connection) while connected.
        conn: Option<(usize, ConnId)>,
        /// Migrate token while on its way.
        token: Option<String>,
        /// Frames sent on the current connection (its join included).
        frames: u64,
        sent: u64,
        refused: u64,
        got: std::collections::HashMap<String, Vec<u64>>,
    }

    fn drain(h: &mut Harness, m: &mut Member) -> Vec<ServerMessage> {
        let Some((_, c)) = m.conn else {
            return Vec::new();
        };
        let msgs = h.recv(c);
        for msg in &msgs {
            match msg {
                ServerMessage::Message { from, payload } => {
                    m.got
                        .entry(from.clone())
                        .or_default()
                        .push(payload.as_u64().unwrap());
                }
                ServerMessage::Error { message, .. } if message == MIGRATING_REFUSAL => {
                    m.refused += 1
                }
                _ => {}
            }
        }
        msgs
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Moves back and forth between two controllers, aborts, messages, mutes and lagging
        /// followers: nobody leaves or joins, ids never change, and every message is delivered
        /// to everyone else exactly once, in order, unless its sender saw it refused.
        #[test]
        fn moves_lose_nothing(ops in proptest::collection::vec(op(), 1..40)) {
            let mut hs = [Harness::single(), Harness::single()];
            let mid = MeetingId::parse("pm").unwrap();
            let mut cur = 0usize;
            let mut members: Vec<Member> = (0..4)
                .map(|i| {
                    let role = if i == 0 { Role::Host } else { Role::Participant };
                    let (c, pid) = hs[0].capable("pm", role);
                    Member { pid, conn: Some((0, c)), token: None, frames: 1, sent: 0, refused: 0, got: Default::default() }
                })
                .collect();
            for h in hs.iter_mut() { let _ = h.actions(); }
            for m in members.iter_mut() { drain(&mut hs[0], m); }
            let mut moves = 0;
            for op in ops {
                match op {
                    Op::Msg(s) | Op::Mute(s, _) if members[s as usize].conn.is_some() => {
                        let m = &mut members[s as usize];
                        let (i, c) = m.conn.unwrap();
                        match op {
                            Op::Msg(_) => {
                                hs[i].broadcast(c, serde_json::json!(m.sent));
                                m.sent += 1;
                            }
                            Op::Mute(_, b) => hs[i].send(c, &ClientMessage::Mute { audio: b, video: false }),
                            _ => {}
                        }
                        m.frames += 1;
                    }
                    Op::Tick(ms) => {
                        for h in hs.iter_mut() { h.advance(Duration::from_millis(u64::from(ms))); }
                    }
                    Op::Move(commit) => {
                        if members.iter().any(|m| m.token.is_some()) {
                            continue; // one move at a time: the last one is not complete
                        }
                        moves += 1;
                        let now = hs[cur].now();
                        let export = hs[cur].shard.begin_export(&mid, &format!("m{moves}"), "src", now).unwrap();
                        // A message while frozen is refused, visibly.
                        let m0 = &mut members[0];
                        let (i, c) = m0.conn.unwrap();
                        hs[i].broadcast(c, serde_json::json!(m0.sent));
                        m0.sent += 1;
                        m0.frames += 1;
                        if !commit {
                            prop_assert!(hs[cur].shard.abort_export(&mid));
                        } else {
                            let other = 1 - cur;
                            let now = hs[other].now();
                            prop_assert_eq!(hs[other].shard.import_meeting(&export, now), Ok(ImportOutcome::Imported));
                            let now = hs[cur].now();
                            prop_assert_eq!(hs[cur].shard.commit_export(&mid, target_info(), now), Some(4));
                            for m in members.iter_mut() {
                                let msgs = drain(&mut hs[cur], m);
                                let (pid, token, handled) = notice(&msgs);
                                prop_assert_eq!(&pid, &m.pid);
                                prop_assert_eq!(handled, m.frames, "every frame was handled");
                                m.conn = None;
                                m.token = Some(token);
                            }
                            let _ = hs[cur].actions();
                            cur = other;
                        }
                    }
                    Op::Follow(s) if members[s as usize].token.is_some() => {
                        let m = &mut members[s as usize];
                        let token = m.token.take().unwrap();
                        let c = hs[cur].open();
                        let msgs = hs[cur].join_as(c, "pm", Role::Participant, Some((&m.pid, &token)), true);
                        let back = matches!(&msgs[0], ServerMessage::JoinResponse { participant_id, .. } if *participant_id == m.pid);
                        prop_assert!(back, "resume failed: {:?}", msgs);
                        m.conn = Some((cur, c));
                        m.frames = 1;
                        // Held frames follow the join_response: count them.
                        for msg in &msgs[1..] {
                            if let ServerMessage::Message { from, payload } = msg {
                                m.got.entry(from.clone()).or_default().push(payload.as_u64().unwrap());
                            }
                        }
                    }
                    _ => {}
                }
                for m in members.iter_mut() {
                    if let Some((i, _)) = m.conn {
                        for msg in drain(&mut hs[i], m) {
                            prop_assert!(!matches!(msg, ServerMessage::ParticipantLeft { .. } | ServerMessage::ParticipantJoined { .. } | ServerMessage::MeetingEnded { .. }), "{:?}", msg);
                        }
                    }
                }
            }
            // Everyone still on its way comes back.
            for m in members.iter_mut() {
                if let Some(token) = m.token.take() {
                    let c = hs[cur].open();
                    let msgs = hs[cur].join_as(c, "pm", Role::Participant, Some((&m.pid, &token)), true);
                    for msg in &msgs[1..] {
                        if let ServerMessage::Message { from, payload } = msg {
                            m.got.entry(from.clone()).or_default().push(payload.as_u64().unwrap());
                        }
                    }
                    m.conn = Some((cur, c));
                }
            }
            for r in &members {
                for s in &members {
                    if r.pid == s.pid { continue; }
                    let got = r.got.get(&s.pid).cloned().unwrap_or_default();
                    prop_assert!(got.windows(2).all(|w| w[0] < w[1]), "{:?}", got);
                    prop_assert_eq!(got.len() as u64, s.sent - s.refused, "{} from {}", r.pid, s.pid);
                }
            }
            prop_assert_eq!(hs[cur].shard.participant_count(), 4);
            prop_assert_eq!(hs[1 - cur].shard.meeting_count(), 0);
        }
    }
}
