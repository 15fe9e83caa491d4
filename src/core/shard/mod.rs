//! The shard state machine: every connection and meeting one core owns.
//!
//! Inputs are `handle_*` methods (stream bytes, connection closed, adopted connection, timers,
//! control commands); outputs are pulled with `poll_*` (frames per connection, actions, the
//! next deadline). No sockets, no clocks: each input carries a [`Now`].
//!
//! Invariants:
//! - a meeting lives on exactly the shard the [`Router`] names, and so do all its connections
//!   (a join for a foreign meeting yields [`Action::Handoff`]); fan-out never crosses a shard;
//! - every meeting's events are produced in one sequence, so all participants see one order;
//! - every queue is bounded: the inbox by `mailbox_size`, each connection's outbound queue by
//!   `mailbox_size`; overflow is dropped and counted, never blocking.
//!
//! Split along its seams: [`intake`] (connections, decoding, rate limit, outbound queues and
//! slow consumers), [`join`] (validation, token check, handoff with one [`JoinRequest`],
//! resume), [`messages`] (one function per client message), [`meetings`] (fan-out, leaving,
//! timers), [`control`] (control commands), [`migration`] (export, import, commit, abort) and
//! [`stats`] (typed counters).

mod control;
mod intake;
mod join;
mod meetings;
mod messages;
mod migration;
pub mod stats;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::binding::BindingKey;
use super::codec::{self, Frame, FrameDecoder};
use super::ids::{ConnId, MeetingId, ParticipantId, ShardId};
use super::meeting::Meeting;
use super::router::Router;
use super::token::TokenVerifier;

pub use join::{HandoffJoin, JoinRequest};
pub use stats::{
    CoreStats, DropReason, JoinResult, MigrationOutcome, PanicActor, TokenFailure, JOIN_RESULTS,
    MIGRATION_OUTCOMES, TOKEN_FAILURE_REASONS,
};

/// QUIC application close codes of signaling v1 §6.
pub mod close_code {
    /// Normal close (leave, meeting ended).
    pub const NORMAL: u64 = 0x0;
    /// Bad frame / protocol violation.
    pub const PROTOCOL: u64 = 0x101;
    /// Unauthorized.
    pub const UNAUTHORIZED: u64 = 0x102;
    /// Capacity exceeded / draining.
    pub const CAPACITY: u64 = 0x103;
    /// Slow consumer or flooding.
    pub const SLOW_OR_FLOOD: u64 = 0x104;
    /// Internal error.
    pub const INTERNAL: u64 = 0x105;
}

/// Payload that makes a meeting panic when test hooks are enabled (`--enable-test-hooks`).
pub const TEST_PANIC_PAYLOAD: &str = "__mc_test_panic__";

/// The current time, as both a monotonic instant and a wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic time for timers.
    pub mono: Instant,
    /// Unix epoch milliseconds for tokens and `joined_at_ms`.
    pub unix_ms: u64,
}

/// Tunables of one shard.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// This shard.
    pub shard: ShardId,
    /// Number of shards in the process.
    pub shard_count: u16,
    /// Bound of the inbox and of every connection's outbound queue.
    pub mailbox_size: usize,
    /// Drops to one connection after which it is disconnected as a slow consumer.
    pub slow_consumer_drops: u32,
    /// How long a dropped participant is kept for resume.
    pub resume_window: Duration,
    /// How long an empty meeting is kept.
    pub empty_meeting_timeout: Duration,
    /// How long a connection may stay without a successful join.
    pub join_timeout: Duration,
    /// Participants per meeting, including those within their resume window.
    pub max_participants_per_meeting: usize,
    /// Meetings this shard may hold.
    pub max_meetings: usize,
    /// Participants this shard may hold (its share of `--max-participants`).
    pub max_participants: usize,
    /// GC mode: joins need a prior assignment.
    pub gc_mode: bool,
    /// Sustained messages per second per connection.
    pub rate_limit: f64,
    /// Burst of messages per connection.
    pub rate_burst: f64,
    /// `rate_limited` answers after which a connection is disconnected.
    pub flood_strikes: u32,
    /// Enables [`TEST_PANIC_PAYLOAD`].
    pub test_hooks: bool,
}

impl ShardConfig {
    /// Defaults for tests and benches.
    pub fn for_tests(shard: ShardId, shard_count: u16) -> Self {
        Self {
            shard,
            shard_count,
            mailbox_size: 1024,
            slow_consumer_drops: 64,
            resume_window: Duration::from_secs(30),
            empty_meeting_timeout: Duration::from_secs(60),
            join_timeout: Duration::from_secs(10),
            max_participants_per_meeting: 1000,
            max_meetings: 100_000,
            max_participants: 1_000_000,
            gc_mode: false,
            rate_limit: 100.0,
            rate_burst: 200.0,
            flood_strikes: 50,
            test_hooks: false,
        }
    }
}

/// Something the I/O layer must do.
#[derive(Debug)]
pub enum Action {
    /// Close `conn` with `code`.
    Close {
        /// The connection.
        conn: ConnId,
        /// Application close code.
        code: u64,
        /// Short reason (for the QUIC close frame and logs).
        reason: &'static str,
        /// Deliver every queued frame (and the end of the signaling stream) first, and close
        /// once they had time to arrive. Without it the close is immediate and what is still
        /// queued is dropped: for a client that said it is done (`leave`).
        linger: bool,
    },
    /// Move `conn` to shard `to` and call [`Shard::handle_adopted`] there.
    Handoff {
        /// The connection (forgotten by this shard).
        conn: ConnId,
        /// The meeting's shard.
        to: ShardId,
        /// The verified join.
        join: Box<HandoffJoin>,
    },
    /// Tell the control thread.
    Notify(ShardEvent),
}

/// Events for the control thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardEvent {
    /// A meeting ended (the GC is told).
    MeetingEnded {
        /// The meeting.
        meeting_id: String,
        /// Why (wire reason or `internal_error`).
        reason: &'static str,
    },
}

/// Answer to a GC assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignOutcome {
    /// The meeting is (now) assigned here.
    Accepted,
    /// The shard holds `max_meetings` meetings.
    AtCapacity,
    /// The controller is draining.
    Draining,
}

/// The `error` message of client messages refused while their meeting is being moved.
pub const MIGRATING_REFUSAL: &str =
    "the meeting is moving to another controller; message not delivered";

enum ConnState {
    AwaitingJoin,
    Joined {
        meeting: MeetingId,
        participant: ParticipantId,
    },
    Closing,
}

struct Conn {
    decoder: FrameDecoder,
    state: ConnState,
    outbound: VecDeque<Frame>,
    drops: u32,
    /// Listed in `Shard::slow` (crossed the slow-consumer threshold, not yet reaped).
    slow_listed: bool,
    tokens: f64,
    refilled: Instant,
    strikes: u32,
    opened: Instant,
    /// The meeting the transport already names (the WebTransport session path): a join must
    /// name the same one.
    session_meeting: Option<MeetingId>,
    /// Frames decoded from this connection (its join included).
    received: u64,
}

impl Conn {
    fn new(now: Instant, burst: f64) -> Self {
        Self {
            decoder: FrameDecoder::new(),
            state: ConnState::AwaitingJoin,
            outbound: VecDeque::new(),
            drops: 0,
            slow_listed: false,
            tokens: burst,
            refilled: now,
            strikes: 0,
            opened: now,
            session_meeting: None,
            received: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    JoinTimeout(ConnId),
    ResumeExpiry(MeetingId, ParticipantId),
    EmptyMeeting(MeetingId),
    /// Forget the tombstone of a meeting that moved away.
    MovedExpiry(MeetingId),
}

struct Inbound {
    conn: ConnId,
    msg: codec::Request,
}

/// The state machine of one shard.
pub struct Shard {
    cfg: ShardConfig,
    router: Router,
    verifier: Arc<TokenVerifier>,
    binding: Arc<BindingKey>,
    conns: HashMap<ConnId, Conn>,
    meetings: HashMap<MeetingId, Meeting>,
    /// Participants of all `meetings` (each meeting keeps it: `Meeting::new`, `add`, `remove`, drop).
    participants: Arc<AtomicUsize>,
    inbox: VecDeque<Inbound>,
    writable: Vec<ConnId>,
    writable_set: HashSet<ConnId>,
    /// Connections that crossed the slow-consumer threshold since the last reap.
    slow: Vec<ConnId>,
    actions: VecDeque<Action>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    participant_seq: u64,
    nonce_seq: u64,
    draining: bool,
    stats: CoreStats,
    /// Exports in progress and tombstones of meetings that moved away.
    migration: migration::MigrationState,
}

impl Shard {
    /// A shard with no connections and no meetings.
    pub fn new(cfg: ShardConfig, verifier: Arc<TokenVerifier>, binding: Arc<BindingKey>) -> Self {
        Self {
            router: Router::new(cfg.shard_count),
            cfg,
            verifier,
            binding,
            conns: HashMap::new(),
            meetings: HashMap::new(),
            participants: Arc::default(),
            inbox: VecDeque::new(),
            writable: Vec::new(),
            writable_set: HashSet::new(),
            slow: Vec::new(),
            actions: VecDeque::new(),
            timers: BinaryHeap::new(),
            participant_seq: 0,
            nonce_seq: 0,
            draining: false,
            stats: CoreStats::zeroed(),
            migration: migration::MigrationState::default(),
        }
    }

    /// This shard's id.
    pub fn id(&self) -> ShardId {
        self.cfg.shard
    }

    // ----------------------------------------------------------------------------------
    // Outputs and gauges
    // ----------------------------------------------------------------------------------

    /// The next connection with newly queued frames.
    pub fn poll_writable(&mut self) -> Option<ConnId> {
        let c = self.writable.pop()?;
        self.writable_set.remove(&c);
        Some(c)
    }

    /// The next frame to write to `conn`.
    pub fn pop_frame(&mut self, conn: ConnId) -> Option<Frame> {
        self.conns.get_mut(&conn)?.outbound.pop_front()
    }

    /// Puts a frame the transport could not take back at the head of `conn`'s queue.
    pub fn unpop_frame(&mut self, conn: ConnId, frame: Frame) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.outbound.push_front(frame);
        }
    }

    /// Frames queued to `conn`.
    pub fn queued_frames(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, |c| c.outbound.len())
    }

    /// The next action for the I/O layer.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The earliest timer deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Messages waiting in the inbox (the `meeting` mailbox).
    pub fn inbox_depth(&self) -> usize {
        self.inbox.len()
    }

    /// Frames waiting in all connections' outbound queues (the `connection` mailbox).
    pub fn outbound_depth(&self) -> usize {
        self.conns.values().map(|c| c.outbound.len()).sum()
    }

    /// Meetings on this shard.
    pub fn meeting_count(&self) -> usize {
        self.meetings.len()
    }

    /// Participants on this shard, including those within their resume window.
    pub fn participant_count(&self) -> usize {
        let n = self.participants.load(Ordering::Relaxed);
        debug_assert_eq!(n, self.meetings.values().map(Meeting::len).sum::<usize>());
        n
    }

    /// Connections on this shard.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Core counters.
    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }

    pub(super) fn count_join(&mut self, result: JoinResult) {
        self.stats.joins.incr(result);
    }

    pub(super) fn count_token_failure(&mut self, reason: TokenFailure) {
        self.stats.token_failures.incr(reason);
    }

    pub(super) fn count_migration(&mut self, outcome: MigrationOutcome) {
        self.stats.migration.incr(outcome);
    }

    pub(super) fn count_drop(&mut self, why: DropReason) {
        self.stats.dropped.incr(why);
    }
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("shard", &self.cfg.shard)
            .field("meetings", &self.meetings.len())
            .field("connections", &self.conns.len())
            .finish()
    }
}

#[cfg(test)]
mod tests;
