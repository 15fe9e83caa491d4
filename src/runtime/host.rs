//! The shard host: owns one shard's [`Endpoint`] and everything around it that is not QUIC —
//! the clock, the control mailbox, the event channel to the control thread, processing-latency
//! recorders, snapshots and CPU accounting. The glommio tasks in [`super::executor`] call it;
//! it reads the clock once per batch and passes that `now` down.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};

use crate::core::ids::ShardId;
use crate::core::shard::{Now, ShardEvent};
use crate::quic::endpoint::{DatagramDrop, Endpoint, Output, PeerMsg, PeerMsgKind};
use crate::runtime::latency::LatencyRecorder;
use crate::runtime::link::{ControlMsg, ShardReply, ShardRequest, ShardSnapshot};

/// Reads the wall clock and the monotonic clock (once per batch).
pub fn clock() -> Now {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Now {
        mono: Instant::now(),
        unix_ms,
    }
}

/// CPU time consumed by the calling thread.
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Processing-latency recorders, one per actor type of the metrics
/// ([`crate::runtime::link::ACTOR_TYPES`]).
#[derive(Debug)]
pub struct Processing {
    /// Control requests, each from dequeue to answer.
    pub controller: LatencyRecorder,
    /// Signaling messages the core processed (join, chat, mute, …): every message of a turn is
    /// counted with the turn's time, from its start until its packets were handed to the kernel.
    pub meeting: LatencyRecorder,
    /// Datagrams: every datagram of a turn is counted with the batch's time from the first
    /// datagram's arrival in user space until the batch's packets were handed to the kernel.
    pub connection: LatencyRecorder,
}

impl Processing {
    fn new(now: Instant) -> Self {
        Self {
            controller: LatencyRecorder::new(now),
            meeting: LatencyRecorder::new(now),
            connection: LatencyRecorder::new(now),
        }
    }
}

/// One shard: its endpoint and the shard's non-QUIC duties.
pub struct ShardHost {
    ep: Endpoint,
    control_rx: Receiver<ControlMsg>,
    events_tx: Sender<(ShardId, ShardEvent)>,
    lat: Processing,
    /// Drops counted here rather than in the core, by (actor_type, reason).
    drops: BTreeMap<(&'static str, &'static str), u64>,
    cpu: Option<usize>,
    /// Core messages already recorded in `lat.meeting`.
    core_messages_seen: u64,
    /// Reads the kernel's drop count of this shard's socket (set by the I/O glue).
    kernel_drops: Option<Box<dyn Fn() -> Option<u64>>>,
}

impl ShardHost {
    /// A host around `ep`, answering `control_rx` and reporting to `events_tx`.
    pub fn new(
        ep: Endpoint,
        control_rx: Receiver<ControlMsg>,
        events_tx: Sender<(ShardId, ShardEvent)>,
        cpu: Option<usize>,
        now: Instant,
    ) -> Self {
        Self {
            ep,
            control_rx,
            events_tx,
            lat: Processing::new(now),
            drops: BTreeMap::new(),
            cpu,
            core_messages_seen: 0,
            kernel_drops: None,
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    /// The endpoint, to feed it datagrams.
    pub fn endpoint_mut(&mut self) -> &mut Endpoint {
        &mut self.ep
    }

    /// Lets snapshots report the kernel's drop count of the shard's socket.
    pub fn set_kernel_drops_probe(&mut self, probe: Box<dyn Fn() -> Option<u64>>) {
        self.kernel_drops = Some(probe);
    }

    /// Records one turn that took `took` until its packets were sent: each of its `datagrams`
    /// and each signaling message the core processed in it count with that time.
    pub fn record_turn(&mut self, took: std::time::Duration, datagrams: u64, done: Instant) {
        self.lat.connection.record_n(took, datagrams, done);
        let processed = self.ep.core().stats().messages_processed;
        let delta = processed.saturating_sub(self.core_messages_seen);
        self.core_messages_seen = processed;
        self.lat.meeting.record_n(took, delta, done);
    }

    /// Counts datagrams read from the socket but not handed to the endpoint: `oversized` ones
    /// the kernel truncated, `stale` ones that queued longer than `--max-queue-delay`.
    pub fn count_unread(&mut self, oversized: usize, stale: usize) {
        self.ep
            .count_drops(DatagramDrop::Oversized, oversized as u64);
        self.ep.count_drops(DatagramDrop::QueueDelay, stale as u64);
    }

    /// A message from another shard.
    pub fn handle_peer(&mut self, msg: PeerMsg, now: Now) {
        self.ep.handle_peer(msg, now);
    }

    /// Timers, then control requests.
    pub fn handle_tick(&mut self, now: Now) {
        self.ep.handle_timeout(now);
        self.serve_control(now);
        self.ep.drive(now);
    }

    /// Generates the packets of every touched connection and takes the output to perform;
    /// events are sent to the control thread here. Give the output back with
    /// [`ShardHost::recycle`].
    pub fn flush(&mut self, now: Now) -> Output {
        self.ep.flush(now);
        let mut out = self.ep.take_output();
        for ev in out.events.drain(..) {
            if self.events_tx.try_send((self.ep.shard(), ev)).is_err() {
                self.bump_drop("controller", "event_queue_full");
            }
        }
        out
    }

    /// Returns a performed output for reuse.
    pub fn recycle(&mut self, out: Output) {
        self.ep.recycle(out);
    }

    /// Counts a peer message that could not be delivered (channel full).
    pub fn count_peer_drop(&mut self, kind: PeerMsgKind) {
        match kind {
            PeerMsgKind::Datagram => self.bump_drop("connection", "forward_queue_full"),
            PeerMsgKind::Handoff => self.bump_drop("connection", "handoff_queue_full"),
        }
    }

    fn bump_drop(&mut self, actor: &'static str, reason: &'static str) {
        *self.drops.entry((actor, reason)).or_default() += 1;
    }

    /// True once a `Shutdown` request was served.
    pub fn stopping(&self) -> bool {
        self.ep.stopping()
    }

    /// True once a `Shutdown` request was served and every connection is gone.
    pub fn stopped(&self) -> bool {
        self.ep.stopped()
    }

    /// True when control requests are waiting.
    pub fn control_pending(&self) -> bool {
        !self.control_rx.is_empty()
    }

    /// Serves every queued control request.
    pub fn serve_control(&mut self, t: Now) {
        while let Ok(msg) = self.control_rx.try_recv() {
            let started = Instant::now();
            let reply = self.answer(msg.req, t);
            if let Some(tx) = msg.reply {
                let _ = tx.try_send(reply);
            }
            self.lat.controller.record(started.elapsed(), started);
        }
    }

    fn answer(&mut self, req: ShardRequest, t: Now) -> ShardReply {
        match req {
            ShardRequest::Snapshot => ShardReply::Snapshot(Box::new(self.snapshot(t))),
            ShardRequest::Assign {
                meeting_id,
                media_handlers,
            } => ShardReply::Assigned(self.ep.core_mut().assign_meeting(
                meeting_id,
                media_handlers,
                t,
            )),
            ShardRequest::ListMeetings => ShardReply::Meetings(self.ep.core().meetings(t)),
            ShardRequest::ShowMeeting(id) => {
                ShardReply::Meeting(self.ep.core().meeting(&id, t).map(Box::new))
            }
            ShardRequest::EndMeeting(id, reason) => {
                ShardReply::Ended(self.ep.core_mut().end_meeting(&id, reason, t))
            }
            ShardRequest::SetDraining(d) => {
                self.ep.core_mut().set_draining(d);
                ShardReply::Done
            }
            ShardRequest::EndAll(reason) => {
                let core = self.ep.core_mut();
                core.set_draining(true);
                ShardReply::EndedAll(core.end_all(reason, t))
            }
            ShardRequest::Shutdown => {
                self.ep.shutdown();
                ShardReply::Done
            }
            ShardRequest::Export {
                meeting_id,
                migration_id,
                source,
            } => ShardReply::Exported(
                self.ep
                    .core_mut()
                    .begin_export(&meeting_id, &migration_id, &source, t)
                    .map(Box::new),
            ),
            ShardRequest::CommitExport(id, target) => {
                ShardReply::Committed(self.ep.core_mut().commit_export(&id, target, t))
            }
            ShardRequest::AbortExport(id) => {
                ShardReply::Aborted(self.ep.core_mut().abort_export(&id))
            }
            ShardRequest::Import(export) => {
                ShardReply::Imported(self.ep.core_mut().import_meeting(&export, t))
            }
        }
    }

    /// Everything the control thread reports about this shard.
    pub fn snapshot(&mut self, t: Now) -> ShardSnapshot {
        let core = self.ep.core();
        let s = core.stats();
        let mut dropped: Vec<(&'static str, &'static str, u64)> =
            s.dropped.iter().map(|((a, r), n)| (*a, *r, *n)).collect();
        for ((a, r), n) in &self.drops {
            dropped.push((a, r, *n));
        }
        let ts = self.ep.stats();
        ShardSnapshot {
            shard: self.ep.shard().0,
            cpu: self.cpu,
            meetings: core.meeting_count(),
            participants: core.participant_count(),
            connections: self.ep.connection_count(),
            mailbox_depth: [
                self.control_rx.len(),
                core.inbox_depth(),
                core.outbound_depth(),
            ],
            processing: [
                self.lat.controller.snapshot(t.mono),
                self.lat.meeting.snapshot(t.mono),
                self.lat.connection.snapshot(t.mono),
            ],
            dropped,
            panics: s.panics.iter().map(|(a, n)| (*a, *n)).collect(),
            joins: s.joins.iter().map(|(a, n)| (*a, *n)).collect(),
            token_failures: s.token_failures.iter().map(|(a, n)| (*a, *n)).collect(),
            migration: s.migration.iter().map(|(a, n)| (*a, *n)).collect(),
            handshakes: ts.handshakes,
            retries: ts.retries,
            handshakes_shed: ts.handshakes_shed,
            datagrams_received: ts.datagrams_received,
            datagrams_forwarded: ts.datagrams_forwarded,
            datagrams_from_peers: ts.datagrams_from_peers,
            datagrams_dropped: DatagramDrop::ALL
                .iter()
                .map(|d| (d.as_str(), ts.datagrams_dropped[*d as usize]))
                .collect(),
            connections_refused: ts.refused,
            retry_tokens_invalid: ts.bad_retry_tokens,
            udp_receive_drops: self.kernel_drops.as_ref().and_then(|probe| probe()),
            handoffs_out: ts.handoffs_out,
            handoffs_in: ts.handoffs_in,
            cpu_seconds: thread_cpu_seconds(),
            draining: core.is_draining(),
        }
    }
}
