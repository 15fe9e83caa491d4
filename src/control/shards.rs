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

    fn send(&self, idx: usize, req: ShardRequest) -> Result<Receiver<ShardReply>, LinkError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let msg = ControlMsg {
            req,
            reply: Some(tx),
        };
        match self.handles[idx].tx.try_send(msg) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => {
                self.memo()[idx].control_drops += 1;
                Err(LinkError::Full)
            }
            Err(TrySendError::Disconnected(_)) => Err(LinkError::Gone),
        }
    }

    fn record(&self, idx: usize, reply: &ShardReply, at: Instant) {
        let mut memo = self.memo();
        let m = &mut memo[idx];
        m.last_answer = Some(at);
        if let ShardReply::Snapshot(s) = reply {
            m.last = Some((**s).clone());
        }
    }

    /// Sends `req` to one shard and waits up to `timeout`.
    pub fn request(
        &self,
        idx: usize,
        req: ShardRequest,
        timeout: Duration,
    ) -> Result<ShardReply, LinkError> {
        let rx = self.send(idx, req)?;
        let reply = rx.recv_timeout(timeout).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => LinkError::Timeout,
            crossbeam_channel::RecvTimeoutError::Disconnected => LinkError::Gone,
        })?;
        self.record(idx, &reply, Instant::now());
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
            .map(|(i, rx)| {
                let rx = rx?;
                let reply = rx.recv_deadline(deadline).map_err(|e| match e {
                    crossbeam_channel::RecvTimeoutError::Timeout => LinkError::Timeout,
                    crossbeam_channel::RecvTimeoutError::Disconnected => LinkError::Gone,
                })?;
                self.record(i, &reply, Instant::now());
                Ok(reply)
            })
            .collect()
    }

    /// One non-blocking liveness round: collects answers to earlier pings, and pings every shard
    /// that has none outstanding. A stuck shard therefore never delays the others' liveness.
    pub fn ping(&self, outstanding: &mut Vec<Option<Receiver<ShardReply>>>) {
        outstanding.resize_with(self.handles.len(), || None);
        for (i, slot) in outstanding.iter_mut().enumerate() {
            if let Some(rx) = slot {
                match rx.try_recv() {
                    Ok(reply) => {
                        self.record(i, &reply, Instant::now());
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
            let _ = h.tx.try_send(ControlMsg {
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
