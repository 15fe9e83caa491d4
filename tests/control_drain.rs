//! The SIGTERM drain sequence, driven through `ControlHandle::terminate` (which is what the
//! signal handler does): refuse new work, wait for meetings, end the rest with
//! `controller_draining`, stop the shards, exit 0 — or exit at once on a second signal.

#[path = "control_support.rs"]
mod support;

use std::time::Duration;

use mc::control::{EXIT_DRAINED, EXIT_FORCED};
use mc::core::protocol::EndReason;
use support::*;

fn position(log: &[String], entry: &str) -> usize {
    log.iter()
        .position(|e| e == entry)
        .unwrap_or_else(|| panic!("{entry} not in {log:?}"))
}

#[test]
fn drain_waits_for_meetings_to_end_then_exits_zero() {
    let mut rig = rig(RigOpts {
        drain_timeout: Duration::from_secs(3600),
        ..RigOpts::default()
    });
    rig.shards.add_meeting("keep-1", 2, 2);
    rig.shards.add_meeting("keep-2", 1, 1);
    assert_eq!(http(&rig, "GET", "/ready", None, None).0, 200);

    rig.ctl.terminate();
    assert!(wait_for(|| (0..2).all(|i| rig.shards.is_draining(i))));
    assert!(wait_for(|| http(&rig, "GET", "/ready", None, None).0 == 503));
    assert_eq!(
        json(&http(&rig, "GET", "/ready", None, None).1)["reason"],
        "draining"
    );
    // Existing meetings keep running; new assignments are refused; a SIGTERM drain is final.
    assert_eq!(rig.ctl.wait_timeout(Duration::from_millis(200)), None);
    let body = r#"{"meeting_id":"newcomer","media_handlers":[]}"#;
    assert_eq!(
        http(
            &rig,
            "POST",
            "/internal/v1/meetings",
            Some(INBOUND),
            Some(body)
        )
        .0,
        503
    );
    assert_eq!(
        http(&rig, "POST", "/admin/undrain", Some(ADMIN), None).0,
        409
    );
    assert_eq!(http(&rig, "GET", "/health", None, None).0, 200);

    assert!(rig.shards.end_meeting("keep-1", EndReason::EndedByHost));
    assert!(rig.shards.end_meeting("keep-2", EndReason::EndedByHost));
    assert_eq!(rig.ctl.wait_timeout(PATIENCE), Some(EXIT_DRAINED));
    for i in 0..2 {
        assert!(rig.shards.is_shut_down(i));
        let log = rig.shards.requests(i);
        assert!(
            position(&log, "SetDraining(true)") < position(&log, "EndAll(controller_draining)")
        );
        assert!(position(&log, "EndAll(controller_draining)") < position(&log, "Shutdown"));
    }
}

/// A controller registered with the fake GC (heartbeats too rare to matter), with this drain
/// timeout.
fn registered_rig(drain_timeout: Duration) -> Rig {
    let rig = rig(RigOpts {
        gc: Some((60_000, 60_000)),
        drain_timeout,
        ..RigOpts::default()
    });
    assert!(wait_for(|| registered(&rig)));
    rig
}

#[test]
fn drain_timeout_ends_remaining_meetings_and_tells_the_gc() {
    let mut rig = registered_rig(Duration::from_millis(300));
    let ids = ["stay-1", "stay-2", "stay-3"];
    for id in ids {
        rig.shards.add_meeting(id, 2, 2);
    }
    rig.ctl.terminate();
    assert_eq!(rig.ctl.wait_timeout(PATIENCE), Some(EXIT_DRAINED));
    for i in 0..2 {
        assert!(rig.shards.meetings(i).is_empty());
        assert!(rig.shards.is_shut_down(i));
    }
    let gc = rig.gc();
    // The GC heard `draining` before the end, then one notification per meeting.
    assert!(gc
        .heartbeats()
        .iter()
        .any(|r| r.body["health"] == "draining"));
    let ended = gc.meetings_ended();
    for id in ids {
        let r = ended
            .iter()
            .find(|r| r.ended_meeting_id() == Some(id))
            .unwrap_or_else(|| panic!("GC not told about {id}"));
        assert_eq!(r.body["reason"], "controller_draining");
        assert_eq!(r.body["controller_id"], "mc-test-1");
    }
}

#[test]
fn drain_ends_meetings_without_participants_at_once() {
    let mut rig = registered_rig(Duration::from_secs(3600));
    // Assigned, nobody joined yet: a draining controller takes no joins, so it never will.
    rig.shards.add_meeting("nobody-came", 0, 0);
    // Its only participant is disconnected but may still resume: the drain waits for it.
    rig.shards.add_meeting("resuming", 1, 0);
    rig.ctl.terminate();
    assert!(wait_for(|| (0..2).all(|i| rig.shards.is_draining(i))));
    assert_eq!(rig.ctl.wait_timeout(Duration::from_millis(300)), None);
    assert!(!rig
        .shards
        .meetings(rig.shards.shard_of("nobody-came"))
        .is_empty());

    // The meeting with the participant ends: only the empty one is left, and it does not
    // hold the exit for its empty-meeting timeout (or the hour of drain timeout).
    assert!(rig.shards.end_meeting("resuming", EndReason::EndedByHost));
    assert_eq!(rig.ctl.wait_timeout(PATIENCE), Some(EXIT_DRAINED));
    for i in 0..2 {
        assert!(rig.shards.meetings(i).is_empty());
        assert!(rig.shards.is_shut_down(i));
    }
    let ended = rig.gc().meetings_ended();
    let r = ended
        .iter()
        .find(|r| r.ended_meeting_id() == Some("nobody-came"))
        .expect("GC told about the empty meeting");
    assert_eq!(r.body["reason"], "controller_draining");
}

#[test]
fn drain_waits_for_connections_to_close() {
    let mut rig = rig(RigOpts {
        drain_timeout: Duration::from_millis(50),
        ..RigOpts::default()
    });
    rig.shards.set_loose_connections(0, 5);
    rig.ctl.terminate();
    assert_eq!(rig.ctl.wait_timeout(PATIENCE), Some(EXIT_DRAINED));
    // EndAll closed the handshaking connections (the fake models that), then Shutdown followed.
    let log = rig.shards.requests(0);
    let end_all = position(&log, "EndAll(controller_draining)");
    assert!(
        log[end_all..].iter().any(|e| e == "Snapshot"),
        "connections were checked after EndAll"
    );
    assert!(end_all < position(&log, "Shutdown"));
}

#[test]
fn second_terminate_exits_at_once() {
    let mut rig = rig(RigOpts {
        drain_timeout: Duration::from_secs(3600),
        ..RigOpts::default()
    });
    rig.shards.add_meeting("forever", 1, 1);
    rig.ctl.terminate();
    assert!(wait_for(|| (0..2).all(|i| rig.shards.is_draining(i))));
    rig.ctl.terminate();
    assert_eq!(rig.ctl.wait_timeout(PATIENCE), Some(EXIT_FORCED));
    // The shards were told to stop (without waiting for them).
    assert!(wait_for(|| (0..2).all(|i| rig.shards.is_shut_down(i))));
    assert!(
        !rig.shards
            .meetings(rig.shards.shard_of("forever"))
            .is_empty(),
        "no EndAll on a forced exit"
    );
}

#[test]
fn admin_drain_becomes_final_on_terminate() {
    let mut rig = rig(RigOpts {
        drain_timeout: Duration::from_millis(50),
        ..RigOpts::default()
    });
    assert_eq!(http(&rig, "POST", "/admin/drain", Some(ADMIN), None).0, 200);
    rig.ctl.terminate();
    assert_eq!(rig.ctl.wait_timeout(PATIENCE), Some(EXIT_DRAINED));
}
