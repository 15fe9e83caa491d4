//! The control thread's view of the shards: fan-out requests with one deadline, and a cache of
//! the last good snapshot and the last answer time of every shard.
//!
//! Everything here runs on the control side (a blocking helper thread or the GC thread). The
//! shards never take a lock: they answer on a per-request reply channel.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TrySendError};

use crate::runtime::link::{
    ControlMsg, LinkError, ShardHandle, ShardReply, ShardRequest, ShardSnapshot,
};

/// What the control thread remembers about one shard.
#[derive(Debug, Clone, Default)]
struct ShardMemo {
    /// Last snapshot the shard answered with.
    last: Option<ShardSnapshot>,
    /// When the shard last answered anything.
    last_answer: Option<Instant>,
    /// Requests that found its control mailbox full.
    control_drops: u64,
    /// Sequence number of the next request sent to the shard.
    next_seq: u64,
    /// Sequence number of the request `last` answered.
    last_seq: u64,
}

/// One shard as seen at a sample instant.
#[derive(Debug, Clone)]
pub(crate) struct ShardView {
    /// Shard index.
    pub shard: u16,
    /// The CPU it is pinned to (from the handle; the snapshot may also carry it).
    pub cpu: Option<usize>,
    /// Last good snapshot (zeros if the shard never answered).
    pub snapshot: ShardSnapshot,
    /// True if a snapshot was ever received.
    pub seen: bool,
    /// Time since the last answer, if any.
    pub silent_for: Option<Duration>,
    /// Requests waiting in its control mailbox right now.
    pub pending: usize,
    /// Requests dropped because its control mailbox was full.
    pub control_drops: u64,
}

impl ShardView {
    /// `controller` mailbox depth. The runtime reports its control-mailbox length as seen when
    /// it answered; the control side sees the same channel at sample time. Both measure one
    /// queue, so the larger is taken rather than the sum.
    pub fn controller_depth(&self) -> usize {
        self.snapshot.mailbox_depth[0].max(self.pending)
    }

    /// Mailbox depth summed over actor types.
    pub fn total_depth(&self) -> usize {
        self.controller_depth() + self.snapshot.mailbox_depth[1] + self.snapshot.mailbox_depth[2]
    }

    /// Worst p99 processing latency over actor types (ms).
    pub fn worst_p99_ms(&self) -> f64 {
        self.snapshot
            .processing
            .iter()
            .map(|l| l.p99_ms)
            .fold(0.0, f64::max)
    }

    /// True if the shard answered within `window`.
    pub fn answered_within(&self, window: Duration) -> bool {
        self.silent_for.is_some_and(|d| d <= window)
    }
}

/// Meetings, participants (those within the resume window included) and open connections
/// over every shard's last good snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub meetings: usize,
    pub participants: usize,
    pub connections: usize,
}

/// Sums the views' meetings, participants and connections.
pub(crate) fn totals(views: &[ShardView]) -> Totals {
    views.iter().fold(Totals::default(), |t, v| Totals {
        meetings: t.meetings + v.snapshot.meetings,
        participants: t.participants + v.snapshot.participants,
        connections: t.connections + v.snapshot.connections,
    })
}

/// A request on its way: where the answer will arrive, and the request's sequence number.
#[derive(Debug)]
pub(crate) struct Pending {
    rx: Receiver<ShardReply>,
    seq: u64,
}

/// Handles on every shard plus the cache.
#[derive(Debug)]
pub(crate) struct ShardPool {
    handles: Vec<ShardHandle>,
    memo: Mutex<Vec<ShardMemo>>,
    created: Instant,
}

impl ShardPool {
    /// Wraps the runtime's handles (index = shard id).
    pub fn new(handles: Vec<ShardHandle>) -> Self {
        let memo = vec![ShardMemo::default(); handles.len()];
        Self {
            handles,
            memo: Mutex::new(memo),
            created: Instant::now(),
        }
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, Vec<ShardMemo>> {
        // A poisoned cache only means a panic elsewhere mid-update; the data is still usable.
        self.memo.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `req` on shard `idx` and returns the reply channel with the request's sequence
    /// number. Numbering and queueing happen under one lock, so sequence order is queue order,
    /// which a shard answers in: a higher number is a newer answer.
    fn send(&self, idx: usize, req: ShardRequest) -> Result<Pending, LinkError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let msg = ControlMsg {
            req,
            reply: Some(tx),
        };
        let mut memo = self.memo();
        let m = &mut memo[idx];
        match self.handles[idx].try_send(msg) {
            Ok(()) => {
                m.next_seq += 1;
                Ok(Pending {
                    rx,
                    seq: m.next_seq,
                })
            }
            Err(TrySendError::Full(_)) => {
                m.control_drops += 1;
                Err(LinkError::Full)
            }
            Err(TrySendError::Disconnected(_)) => Err(LinkError::Gone),
        }
    }

    /// Remembers an answer. A snapshot replaces the cached one only if it answers a later
    /// request: a liveness ping's answer collected late never hides a newer scrape's figures.
    fn record(&self, idx: usize, seq: u64, reply: &ShardReply) {
        let mut memo = self.memo();
        let m = &mut memo[idx];
        // Read under the lock, so concurrent recorders store answer times in order.
        m.last_answer = Some(Instant::now());
        if let ShardReply::Snapshot(s) = reply {
            if seq > m.last_seq {
                m.last = Some((**s).clone());
                m.last_seq = seq;
            }
        }
    }

    /// Sends `req` to one shard and waits up to `timeout`.
    pub fn request(
        &self,
        idx: usize,
        req: ShardRequest,
        timeout: Duration,
    ) -> Result<ShardReply, LinkError> {
        let p = self.send(idx, req)?;
        let reply = p.rx.recv_timeout(timeout).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => LinkError::Timeout,
            crossbeam_channel::RecvTimeoutError::Disconnected => LinkError::Gone,
        })?;
        self.record(idx, p.seq, &reply);
        Ok(reply)
    }

    /// Sends `req` to every shard at once and collects the answers until one shared deadline.
    pub fn fan_out(
        &self,
        req: &ShardRequest,
        timeout: Duration,
    ) -> Vec<Result<ShardReply, LinkError>> {
        let deadline = Instant::now() + timeout;
        let pending: Vec<_> = (0..self.handles.len())
            .map(|i| self.send(i, req.clone()))
            .collect();
        pending
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let p = p?;
                let reply = p.rx.recv_deadline(deadline).map_err(|e| match e {
                    crossbeam_channel::RecvTimeoutError::Timeout => LinkError::Timeout,
                    crossbeam_channel::RecvTimeoutError::Disconnected => LinkError::Gone,
                })?;
                self.record(i, p.seq, &reply);
                Ok(reply)
            })
            .collect()
    }

    /// One non-blocking liveness round: collects answers to earlier pings, and pings every shard
    /// that has none outstanding. A stuck shard therefore never delays the others' liveness.
    pub fn ping(&self, outstanding: &mut Vec<Option<Pending>>) {
        outstanding.resize_with(self.handles.len(), || None);
        for (i, slot) in outstanding.iter_mut().enumerate() {
            if let Some(p) = slot {
                match p.rx.try_recv() {
                    Ok(reply) => {
                        self.record(i, p.seq, &reply);
                        *slot = None;
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => continue,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => *slot = None,
                }
            }
            *slot = self.send(i, ShardRequest::Snapshot).ok();
        }
    }

    /// Sends `req` to every shard without waiting for answers (last-resort shutdown).
    pub fn broadcast_no_reply(&self, req: &ShardRequest) {
        for h in &self.handles {
            let _ = h.try_send(ControlMsg {
                req: req.clone(),
                reply: None,
            });
        }
    }

    /// Asks every shard for a snapshot (one shared deadline) and returns the views; a shard
    /// that does not answer keeps its last good snapshot.
    pub fn refresh(&self, timeout: Duration) -> Vec<ShardView> {
        let _ = self.fan_out(&ShardRequest::Snapshot, timeout);
        self.views()
    }

    /// The cached views, without asking the shards.
    pub fn views(&self) -> Vec<ShardView> {
        let now = Instant::now();
        let memo = self.memo().clone();
        memo.into_iter()
            .enumerate()
            .map(|(i, m)| {
                let h = &self.handles[i];
                let shard = h.shard.0;
                let seen = m.last.is_some();
                let mut snapshot = m.last.unwrap_or_default();
                snapshot.shard = shard;
                if snapshot.cpu.is_none() {
                    snapshot.cpu = h.cpu;
                }
                ShardView {
                    shard,
                    cpu: snapshot.cpu,
                    snapshot,
                    seen,
                    silent_for: m.last_answer.map(|t| now.saturating_duration_since(t)),
                    pending: h.pending(),
                    control_drops: m.control_drops,
                }
            })
            .collect()
    }

    /// Shards that have not answered within `window` (a shard that never answered gets a grace
    /// period of `window` from start-up), with how long they have been silent.
    pub fn stuck(&self, window: Duration) -> Vec<(u16, Duration)> {
        let since_start = self.created.elapsed();
        self.views()
            .into_iter()
            .filter_map(|v| {
                let silent = v.silent_for.unwrap_or(since_start);
                (silent > window).then_some((v.shard, silent))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::ShardId;
    use crossbeam_channel::Receiver as Rx;

    fn pool() -> (ShardPool, Rx<ControlMsg>) {
        let (tx, rx) = crossbeam_channel::bounded(8);
        let handle = ShardHandle {
            shard: ShardId(0),
            cpu: None,
            tx,
            wake: crate::runtime::wake::Wake::none(),
        };
        (ShardPool::new(vec![handle]), rx)
    }

    #[test]
    fn totals_sum_meetings_and_participants_over_shards() {
        let view = |meetings, participants, connections| ShardView {
            shard: 0,
            cpu: None,
            snapshot: ShardSnapshot {
                meetings,
                participants,
                connections,
                ..ShardSnapshot::default()
            },
            seen: true,
            silent_for: None,
            pending: 0,
            control_drops: 0,
        };
        assert_eq!(totals(&[]), Totals::default());
        assert_eq!(
            totals(&[view(2, 5, 4), view(0, 0, 1), view(3, 1, 2)]),
            Totals {
                meetings: 5,
                participants: 6,
                connections: 7,
            }
        );
    }

    /// Plays the shard: answers the oldest queued request with a snapshot of `meetings`.
    fn answer(rx: &Rx<ControlMsg>, meetings: usize) {
        let msg = rx.recv_timeout(Duration::from_secs(5)).expect("a request");
        let snap = ShardSnapshot {
            meetings,
            ..ShardSnapshot::default()
        };
        if let Some(reply) = msg.reply {
            reply
                .send(ShardReply::Snapshot(Box::new(snap)))
                .expect("requester waits");
        }
    }

    #[test]
    fn a_late_ping_answer_never_hides_a_newer_refresh() {
        let (pool, rx) = pool();
        let mut outstanding = Vec::new();
        pool.ping(&mut outstanding); // request 1, answered before the state changes
        answer(&rx, 1);
        std::thread::scope(|s| {
            let refresh = s.spawn(|| pool.refresh(Duration::from_secs(5)));
            answer(&rx, 2); // request 2, after the change
            assert_eq!(refresh.join().expect("refresh")[0].snapshot.meetings, 2);
        });
        pool.ping(&mut outstanding); // collects request 1's answer only now
        assert_eq!(pool.views()[0].snapshot.meetings, 2);
        answer(&rx, 3); // the new ping's answer is newer than the refresh
        pool.ping(&mut outstanding);
        assert_eq!(pool.views()[0].snapshot.meetings, 3);
    }

    #[test]
    fn a_full_mailbox_is_counted_and_keeps_the_last_snapshot() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let pool = ShardPool::new(vec![ShardHandle {
            shard: ShardId(0),
            cpu: None,
            tx,
            wake: crate::runtime::wake::Wake::none(),
        }]);
        std::thread::scope(|s| {
            let refresh = s.spawn(|| pool.refresh(Duration::from_secs(5)));
            answer(&rx, 4);
            refresh.join().expect("refresh");
        });
        let mut outstanding = Vec::new();
        pool.ping(&mut outstanding); // fills the one-slot mailbox
        let views = pool.refresh(Duration::from_millis(10)); // finds it full
        assert_eq!(views[0].control_drops, 1);
        assert_eq!(views[0].snapshot.meetings, 4);
        assert_eq!(views[0].pending, 1);
    }
}
