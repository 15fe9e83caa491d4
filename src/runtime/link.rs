//! The seam between the control thread and the shards: bounded crossbeam channels carrying
//! requests (with a reply channel) one way and events the other way.
//!
//! The control thread never touches shard state; it asks. Queueing a request wakes a sleeping
//! shard ([`ShardHandle::try_send`]), which serves it in its next turn, so a request waits at
//! most for the turn in progress.

use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::core::ids::{MeetingId, ShardId};
use crate::core::meeting::{MeetingDetail, MeetingSummary};
use crate::core::migration::{
    ExportError, ImportError, ImportOutcome, MeetingExport, MigrationTarget,
};
use crate::core::protocol::{EndReason, MediaHandler};
use crate::core::shard::{AssignOutcome, ShardEvent};
use crate::runtime::wake::Wake;

/// Upper bounds (seconds) of the processing-duration histogram buckets.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Actor types of the metrics: index into [`ShardSnapshot::processing`] and mailbox depths.
pub const ACTOR_TYPES: [&str; 3] = ["controller", "meeting", "connection"];

/// A request from the control thread to one shard.
#[derive(Debug, Clone)]
pub enum ShardRequest {
    /// Gauges, counters and histograms (also the liveness ping).
    Snapshot,
    /// GC assignment.
    Assign {
        /// The meeting (routed to its owning shard by the caller).
        meeting_id: MeetingId,
        /// Media handlers for `join_response`.
        media_handlers: Vec<MediaHandler>,
    },
    /// All meetings of the shard.
    ListMeetings,
    /// One meeting.
    ShowMeeting(MeetingId),
    /// End one meeting.
    EndMeeting(MeetingId, EndReason),
    /// Start/stop draining (refuse new meetings and joins).
    SetDraining(bool),
    /// End every meeting (drain deadline) and refuse new ones.
    EndAll(EndReason),
    /// Close every connection and stop the executor.
    Shutdown,
    /// Migration: freeze a meeting and export its state.
    Export {
        /// The meeting (routed to its owning shard by the caller).
        meeting_id: MeetingId,
        /// Unique id of this migration.
        migration_id: String,
        /// This controller's id.
        source: String,
    },
    /// Migration: the target imported the meeting; send participants there.
    CommitExport(MeetingId, MigrationTarget),
    /// Migration: the move failed; the meeting continues here.
    AbortExport(MeetingId),
    /// Migration: recreate a meeting exported by another controller.
    Import(Box<MeetingExport>),
}

/// A shard's answer.
#[derive(Debug, Clone)]
pub enum ShardReply {
    /// For [`ShardRequest::Snapshot`].
    Snapshot(Box<ShardSnapshot>),
    /// For [`ShardRequest::Assign`].
    Assigned(AssignOutcome),
    /// For [`ShardRequest::ListMeetings`].
    Meetings(Vec<MeetingSummary>),
    /// For [`ShardRequest::ShowMeeting`].
    Meeting(Option<Box<MeetingDetail>>),
    /// For [`ShardRequest::EndMeeting`]: whether it existed.
    Ended(bool),
    /// For [`ShardRequest::EndAll`]: how many meetings ended.
    EndedAll(usize),
    /// For requests with nothing to report.
    Done,
    /// For [`ShardRequest::Export`].
    Exported(Result<Box<MeetingExport>, ExportError>),
    /// For [`ShardRequest::CommitExport`]: participants notified (`None`: no export pending).
    Committed(Option<usize>),
    /// For [`ShardRequest::AbortExport`]: whether an export was pending.
    Aborted(bool),
    /// For [`ShardRequest::Import`].
    Imported(Result<ImportOutcome, ImportError>),
}

/// A request plus where to answer.
#[derive(Debug)]
pub struct ControlMsg {
    /// The request.
    pub req: ShardRequest,
    /// Reply channel (capacity ≥ 1); `None` for fire-and-forget.
    pub reply: Option<Sender<ShardReply>>,
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The shard's control mailbox is full (counted as a drop).
    #[error("shard control mailbox is full")]
    Full,
    /// The shard has stopped.
    #[error("shard has stopped")]
    Gone,
    /// No answer within the timeout.
    #[error("shard did not answer in time")]
    Timeout,
}

/// The control thread's handle on one shard.
#[derive(Debug, Clone)]
pub struct ShardHandle {
    /// The shard.
    pub shard: ShardId,
    /// The CPU it is pinned to.
    pub cpu: Option<usize>,
    /// Its control mailbox.
    pub tx: Sender<ControlMsg>,
    /// Its wake-up line: written after a request is queued if the shard sleeps.
    pub wake: Wake,
}

impl ShardHandle {
    /// Queues `msg` without waiting and wakes the shard.
    pub fn try_send(&self, msg: ControlMsg) -> Result<(), TrySendError<ControlMsg>> {
        self.tx.try_send(msg)?;
        self.wake.wake();
        Ok(())
    }

    /// Sends `req` and waits up to `timeout` for the answer.
    pub fn request(&self, req: ShardRequest, timeout: Duration) -> Result<ShardReply, LinkError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.try_send(ControlMsg {
            req,
            reply: Some(tx),
        })
        .map_err(|e| match e {
            TrySendError::Full(_) => LinkError::Full,
            TrySendError::Disconnected(_) => LinkError::Gone,
        })?;
        rx.recv_timeout(timeout).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => LinkError::Timeout,
            crossbeam_channel::RecvTimeoutError::Disconnected => LinkError::Gone,
        })
    }

    /// Messages waiting in the shard's control mailbox (the `controller` mailbox depth).
    pub fn pending(&self) -> usize {
        self.tx.len()
    }
}

/// Per-actor-type processing latency, cumulative since start.
#[derive(Debug, Clone, Default)]
pub struct LatencySnapshot {
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`] (`le` semantics), then `+Inf`.
    pub buckets: Vec<u64>,
    /// Number of observations.
    pub count: u64,
    /// Sum of observations in seconds.
    pub sum_seconds: f64,
    /// Median over the recent window (ms).
    pub p50_ms: f64,
    /// 99th percentile over the recent window (ms).
    pub p99_ms: f64,
}

/// Everything the control thread knows about a shard, sampled at one instant.
#[derive(Debug, Clone, Default)]
pub struct ShardSnapshot {
    /// The shard.
    pub shard: u16,
    /// Its CPU.
    pub cpu: Option<usize>,
    /// Meetings hosted.
    pub meetings: usize,
    /// Participants (incl. within the resume window).
    pub participants: usize,
    /// Live connections (incl. handshaking).
    pub connections: usize,
    /// Mailbox depth per actor type, in [`ACTOR_TYPES`] order.
    pub mailbox_depth: [usize; 3],
    /// Processing latency per actor type, in [`ACTOR_TYPES`] order.
    pub processing: [LatencySnapshot; 3],
    /// Drops by (actor_type, reason).
    pub dropped: Vec<(&'static str, &'static str, u64)>,
    /// Caught panics by actor type.
    pub panics: Vec<(&'static str, u64)>,
    /// Join attempts by result.
    pub joins: Vec<(&'static str, u64)>,
    /// Token failures by reason.
    pub token_failures: Vec<(&'static str, u64)>,
    /// Migration events by outcome (`core::shard::MIGRATION_OUTCOMES`).
    pub migration: Vec<(&'static str, u64)>,
    /// Completed QUIC handshakes.
    pub handshakes: u64,
    /// Retry packets sent.
    pub retries: u64,
    /// Initials dropped by the handshake limit.
    pub handshakes_shed: u64,
    /// Datagrams received by this shard's socket.
    pub datagrams_received: u64,
    /// Datagrams this shard received for another shard's connection and forwarded.
    pub datagrams_forwarded: u64,
    /// Datagrams another shard forwarded to this one.
    pub datagrams_from_peers: u64,
    /// Datagrams dropped before reaching a connection, by reason.
    pub datagrams_dropped: Vec<(&'static str, u64)>,
    /// Connections refused at `--max-connections-per-shard`.
    pub connections_refused: u64,
    /// Initials whose Retry token was invalid or expired (dropped).
    pub retry_tokens_invalid: u64,
    /// Datagrams the kernel dropped for this shard's socket (receive queue full), if known.
    pub udp_receive_drops: Option<u64>,
    /// Connections handed to another shard.
    pub handoffs_out: u64,
    /// Connections adopted from another shard.
    pub handoffs_in: u64,
    /// CPU time of the shard thread.
    pub cpu_seconds: f64,
    /// Draining.
    pub draining: bool,
}

/// What the runtime gives the control thread.
#[derive(Debug)]
pub struct RuntimeLink {
    /// One handle per shard, index = shard id.
    pub shards: Vec<ShardHandle>,
    /// Events from all shards (e.g. meeting ended → tell the GC).
    pub events: Receiver<(ShardId, ShardEvent)>,
}
