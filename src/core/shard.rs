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

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::binding::BindingKey;
use super::codec::{self, Frame, FrameDecoder};
use super::ids::{ConnId, MeetingId, ParticipantId, ShardId};
use super::meeting::{Meeting, MeetingDetail, MeetingSummary, Participant};
use super::protocol::{
    ClientMessage, EndReason, ErrorCode, LeaveReason, MediaHandler, ResumeRequest, Role,
    ServerMessage, CAPABILITY_MIGRATE, MAX_DISPLAY_NAME_BYTES, MAX_PAYLOAD_BYTES, MAX_RECIPIENTS,
    MAX_REQUEST_ID_LEN, MAX_TOKEN_BYTES,
};
use super::router::Router;
use super::token::{Claims, TokenVerifier};

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

/// A join verified on the shard that received it, travelling with its connection.
#[derive(Debug)]
pub struct HandoffJoin {
    /// The meeting (owned by the target shard).
    pub meeting_id: MeetingId,
    /// Verified token claims.
    pub claims: Claims,
    /// Display name.
    pub display_name: String,
    /// Join `request_id`.
    pub request_id: Option<String>,
    /// Resume request.
    pub resume: Option<ResumeRequest>,
    /// The client follows `migrate` (its `join.capabilities`).
    pub follows_migrate: bool,
    /// Frames the previous shard decoded from the connection (the join included).
    pub received: u64,
    /// Messages already decoded after the join, in order.
    pub queued: Vec<ClientMessage>,
    /// Stream bytes not yet decoded.
    pub leftover: Vec<u8>,
}

/// Something the I/O layer must do.
#[derive(Debug)]
pub enum Action {
    /// Send every queued frame of `conn`, then close it with `code`.
    Close {
        /// The connection.
        conn: ConnId,
        /// Application close code.
        code: u64,
        /// Short reason (for the QUIC close frame and logs).
        reason: &'static str,
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

/// Counters and gauges of the core, read by the runtime for metrics.
#[derive(Debug, Clone, Default)]
pub struct CoreStats {
    /// Drops by `(actor_type, reason)`.
    pub dropped: BTreeMap<(&'static str, &'static str), u64>,
    /// Caught panics by actor type.
    pub panics: BTreeMap<&'static str, u64>,
    /// Join attempts by result.
    pub joins: BTreeMap<&'static str, u64>,
    /// Token failures by reason.
    pub token_failures: BTreeMap<&'static str, u64>,
    /// Client messages processed.
    pub messages_processed: u64,
    /// Frames queued to connections.
    pub frames_out: u64,
    /// Connections disconnected as slow consumers.
    pub slow_consumers: u64,
    /// Migration events by outcome (see [`MIGRATION_OUTCOMES`]).
    pub migration: BTreeMap<&'static str, u64>,
}

/// Migration outcomes counted by shards, pre-created at zero: meetings `exported` (committed
/// here) and `imported` (arrived here), participants `notified` (told to move), `returned`
/// (resumed at the target) and `lost` (imported but never came back within the window).
pub const MIGRATION_OUTCOMES: &[&str] = &["exported", "imported", "notified", "returned", "lost"];

/// The `error` message of client messages refused while their meeting is being moved.
pub const MIGRATING_REFUSAL: &str =
    "the meeting is moving to another controller; message not delivered";

/// Join results, pre-created so every series exists from the start.
pub const JOIN_RESULTS: &[&str] = &[
    "ok",
    "resumed",
    "migrated",
    "handoff",
    "unauthorized",
    "invalid_request",
    "not_found",
    "capacity_exceeded",
    "timeout",
];

/// Token failure reasons counted even before they first happen.
pub const TOKEN_FAILURE_REASONS: &[&str] = &[
    "malformed",
    "bad_alg",
    "unknown_kid",
    "bad_signature",
    "expired",
    "issued_in_future",
    "wrong_meeting",
    "wrong_type",
    "bad_binding",
];

impl CoreStats {
    /// Counters with every well-known label pre-created at zero.
    pub fn zeroed() -> Self {
        let mut s = Self::default();
        for r in JOIN_RESULTS {
            s.joins.insert(r, 0);
        }
        for r in TOKEN_FAILURE_REASONS {
            s.token_failures.insert(r, 0);
        }
        s.panics.insert("meeting", 0);
        for o in MIGRATION_OUTCOMES {
            s.migration.insert(o, 0);
        }
        for (a, r) in [
            ("meeting", "mailbox_full"),
            ("connection", "slow_consumer"),
            ("connection", "rate_limited"),
            ("meeting", "migrating"),
            ("connection", "migration_hold"),
        ] {
            s.dropped.insert((a, r), 0);
        }
        s
    }
}

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
    msg: ClientMessage,
}

/// The state machine of one shard.
pub struct Shard {
    cfg: ShardConfig,
    router: Router,
    verifier: Arc<TokenVerifier>,
    binding: Arc<BindingKey>,
    conns: HashMap<ConnId, Conn>,
    meetings: HashMap<MeetingId, Meeting>,
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
    migration: migration_state::MigrationState,
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
            migration: migration_state::MigrationState::default(),
        }
    }

    /// This shard's id.
    pub fn id(&self) -> ShardId {
        self.cfg.shard
    }

    // ----------------------------------------------------------------------------------
    // Inputs
    // ----------------------------------------------------------------------------------

    /// A new connection whose signaling stream is open (handshake done).
    pub fn handle_connection_opened(&mut self, conn: ConnId, now: Now) {
        self.conns
            .insert(conn, Conn::new(now.mono, self.cfg.rate_burst));
        self.timers.push(Reverse((
            now.mono + self.cfg.join_timeout,
            Timer::JoinTimeout(conn),
        )));
    }

    /// `conn`'s transport names its meeting (a WebTransport session to `/meetings/{id}`): its
    /// join must name the same meeting, else it is refused with `invalid_request` and close
    /// `0x101` before any token check or handoff.
    pub fn bind_session_meeting(&mut self, conn: ConnId, meeting: MeetingId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session_meeting = Some(meeting);
        }
    }

    /// Bytes arrived on `conn`'s signaling stream.
    pub fn handle_stream_data(&mut self, conn: ConnId, bytes: &[u8], now: Now) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if matches!(c.state, ConnState::Closing) {
            return;
        }
        c.decoder.push(bytes);
        self.decode_frames(conn, now);
    }

    /// `conn` is gone (peer close, idle timeout, or our own close completed).
    pub fn handle_connection_closed(&mut self, conn: ConnId, now: Now) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.inbox.retain(|m| m.conn != conn);
        if let ConnState::Joined {
            meeting,
            participant,
        } = c.state
        {
            if let Some(m) = self.meetings.get_mut(&meeting) {
                if let Some(p) = m.get_mut(&participant) {
                    if p.conn == Some(conn) {
                        p.conn = None;
                        p.disconnected_at = Some(now.mono);
                        self.timers.push(Reverse((
                            now.mono + self.cfg.resume_window,
                            Timer::ResumeExpiry(meeting.clone(), participant.clone()),
                        )));
                    }
                }
            }
        }
    }

    /// A connection handed over by another shard, with the join it carried.
    pub fn handle_adopted(&mut self, conn: ConnId, join: HandoffJoin, now: Now) {
        let mut c = Conn::new(now.mono, self.cfg.rate_burst);
        c.decoder.push(&join.leftover);
        c.received = join.received;
        self.conns.insert(conn, c);
        self.timers.push(Reverse((
            now.mono + self.cfg.join_timeout,
            Timer::JoinTimeout(conn),
        )));
        self.join_local(
            conn,
            join.meeting_id,
            join.claims,
            join.display_name,
            join.request_id,
            join.resume,
            join.follows_migrate,
            now,
        );
        for msg in join.queued {
            self.enqueue(conn, msg);
        }
        self.decode_frames(conn, now);
    }

    /// Processes one queued client message; returns false when the inbox is empty.
    pub fn process_next(&mut self, now: Now) -> bool {
        let Some(Inbound { conn, msg }) = self.inbox.pop_front() else {
            return false;
        };
        self.stats.messages_processed += 1;
        self.process(conn, msg, now);
        true
    }

    /// Processes every queued client message.
    pub fn process_all(&mut self, now: Now) {
        while self.process_next(now) {}
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now.mono {
                break;
            }
            let Some(Reverse((_, timer))) = self.timers.pop() else {
                break;
            };
            match timer {
                Timer::JoinTimeout(conn) => {
                    if let Some(c) = self.conns.get(&conn) {
                        if matches!(c.state, ConnState::AwaitingJoin)
                            && now.mono >= c.opened + self.cfg.join_timeout
                        {
                            self.reject(
                                conn,
                                ErrorCode::InvalidRequest,
                                "no join received in time",
                                None,
                                close_code::PROTOCOL,
                                "join timeout",
                            );
                            self.count_join("timeout");
                        }
                    }
                }
                Timer::ResumeExpiry(mid, pid) => {
                    let expired = self
                        .meetings
                        .get(&mid)
                        .and_then(|m| m.get(&pid))
                        .is_some_and(|p| {
                            p.conn.is_none()
                                && p.disconnected_at
                                    .is_some_and(|t| now.mono >= t + self.cfg.resume_window)
                        });
                    if expired {
                        let was_held = self
                            .meetings
                            .get(&mid)
                            .and_then(|m| m.get(&pid))
                            .is_some_and(|p| p.held.is_some());
                        if was_held {
                            self.count_migration("lost");
                            tracing::info!(shard = %self.cfg.shard, meeting = %mid, participant = %pid, "migrated participant did not come back");
                        }
                        self.remove_participant(&mid, &pid, LeaveReason::Timeout, now);
                    }
                }
                Timer::MovedExpiry(mid) => self.migration.forget_moved(&mid, now.mono),
                Timer::EmptyMeeting(mid) => {
                    let expired = self.meetings.get(&mid).is_some_and(|m| {
                        m.empty_since
                            .is_some_and(|t| now.mono >= t + self.cfg.empty_meeting_timeout)
                    });
                    if expired {
                        self.meetings.remove(&mid);
                        self.actions
                            .push_back(Action::Notify(ShardEvent::MeetingEnded {
                                meeting_id: mid.to_string(),
                                reason: EndReason::EmptyTimeout.as_str(),
                            }));
                    }
                }
            }
        }
    }

    // ----------------------------------------------------------------------------------
    // Control commands
    // ----------------------------------------------------------------------------------

    /// Starts or stops refusing new meetings and joins.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// True while draining.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// GC assignment of a meeting to this controller (idempotent).
    pub fn assign_meeting(
        &mut self,
        meeting_id: MeetingId,
        media_handlers: Vec<MediaHandler>,
        now: Now,
    ) -> AssignOutcome {
        if let Some(m) = self.meetings.get_mut(&meeting_id) {
            m.assigned = true;
            m.media_handlers = media_handlers;
            return AssignOutcome::Accepted;
        }
        if self.draining {
            return AssignOutcome::Draining;
        }
        if self.meetings.len() >= self.cfg.max_meetings {
            return AssignOutcome::AtCapacity;
        }
        let mut m = Meeting::new(meeting_id.clone(), now.mono, now.unix_ms);
        m.assigned = true;
        m.media_handlers = media_handlers;
        self.meetings.insert(meeting_id.clone(), m);
        self.timers.push(Reverse((
            now.mono + self.cfg.empty_meeting_timeout,
            Timer::EmptyMeeting(meeting_id),
        )));
        AssignOutcome::Accepted
    }

    /// Ends a meeting for everyone with `reason`; false if it is not here.
    pub fn end_meeting(&mut self, meeting_id: &MeetingId, reason: EndReason, _now: Now) -> bool {
        let Some(m) = self.meetings.remove(meeting_id) else {
            return false;
        };
        let frame = codec::encode_server(&ServerMessage::MeetingEnded { reason });
        for conn in m.connections_except(None) {
            self.push_frame(conn, frame.clone());
            self.close(conn, close_code::NORMAL, "meeting ended");
        }
        self.actions
            .push_back(Action::Notify(ShardEvent::MeetingEnded {
                meeting_id: meeting_id.to_string(),
                reason: reason.as_str(),
            }));
        true
    }

    /// Ends every meeting (drain deadline); returns how many ended.
    pub fn end_all(&mut self, reason: EndReason, now: Now) -> usize {
        let ids: Vec<MeetingId> = self.meetings.keys().cloned().collect();
        for id in &ids {
            self.end_meeting(id, reason, now);
        }
        let pending: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, ConnState::AwaitingJoin))
            .map(|(id, _)| *id)
            .collect();
        for conn in pending {
            self.reject(
                conn,
                ErrorCode::CapacityExceeded,
                "controller is draining",
                None,
                close_code::CAPACITY,
                "draining",
            );
        }
        ids.len()
    }

    /// Operator list of meetings.
    pub fn meetings(&self, now: Now) -> Vec<MeetingSummary> {
        let mut v: Vec<_> = self
            .meetings
            .values()
            .map(|m| m.summary(self.cfg.shard.0, now.mono))
            .collect();
        v.sort_by(|a, b| a.meeting_id.cmp(&b.meeting_id));
        v
    }

    /// Operator view of one meeting.
    pub fn meeting(&self, id: &MeetingId, now: Now) -> Option<MeetingDetail> {
        self.meetings
            .get(id)
            .map(|m| m.detail(self.cfg.shard.0, now.mono))
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
        self.meetings.values().map(Meeting::len).sum()
    }

    /// Connections on this shard.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Core counters.
    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }

    // ----------------------------------------------------------------------------------
    // Internals
    // ----------------------------------------------------------------------------------

    fn decode_frames(&mut self, conn: ConnId, now: Now) {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            if matches!(c.state, ConnState::Closing) {
                return;
            }
            let awaiting = matches!(c.state, ConnState::AwaitingJoin);
            let decoded = match c.decoder.next_frame() {
                Ok(None) => return,
                Ok(Some(body)) => {
                    c.received += 1;
                    codec::decode_client(body)
                }
                Err(e) => {
                    // A framing error ends the connection; a joined participant leaves with
                    // `connection_lost` (it cannot resume a stream it corrupted).
                    let joined = self.joined(conn);
                    self.reject(
                        conn,
                        ErrorCode::InvalidRequest,
                        &format!("bad frame: {e}"),
                        None,
                        close_code::PROTOCOL,
                        "bad frame",
                    );
                    if let Some((mid, pid)) = joined {
                        self.remove_participant(&mid, &pid, LeaveReason::ConnectionLost, now);
                    }
                    return;
                }
            };
            match decoded {
                Ok(msg) => {
                    if awaiting && !matches!(msg, ClientMessage::Join { .. }) {
                        self.reject(
                            conn,
                            ErrorCode::InvalidRequest,
                            "the first message must be join",
                            None,
                            close_code::PROTOCOL,
                            "join expected",
                        );
                        self.count_join("invalid_request");
                        return;
                    }
                    if !self.rate_ok(conn, now) {
                        continue;
                    }
                    if awaiting {
                        // Nothing may be processed for this connection before its join, and
                        // the join is verified right away so a handoff can carry what follows.
                        if let ClientMessage::Join { .. } = msg {
                            self.stats.messages_processed += 1;
                            self.process(conn, msg, now);
                        }
                    } else {
                        self.enqueue(conn, msg);
                    }
                }
                Err(e) => {
                    if awaiting {
                        self.reject(
                            conn,
                            ErrorCode::InvalidRequest,
                            &format!("{e}"),
                            None,
                            close_code::PROTOCOL,
                            "bad join",
                        );
                        self.count_join("invalid_request");
                        return;
                    }
                    self.send(
                        conn,
                        &ServerMessage::error(ErrorCode::InvalidRequest, e.to_string(), None),
                    );
                }
            }
        }
    }

    fn enqueue(&mut self, conn: ConnId, msg: ClientMessage) {
        if self.inbox.len() >= self.cfg.mailbox_size {
            self.count_drop("meeting", "mailbox_full");
            return;
        }
        self.inbox.push_back(Inbound { conn, msg });
    }

    fn rate_ok(&mut self, conn: ConnId, now: Now) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let elapsed = now.mono.saturating_duration_since(c.refilled).as_secs_f64();
        c.refilled = now.mono;
        c.tokens = (c.tokens + elapsed * self.cfg.rate_limit).min(self.cfg.rate_burst);
        if c.tokens >= 1.0 {
            c.tokens -= 1.0;
            return true;
        }
        c.strikes += 1;
        let strikes = c.strikes;
        self.count_drop("connection", "rate_limited");
        if strikes > self.cfg.flood_strikes {
            self.disconnect_lost(conn, now, "flooding");
        } else {
            self.send(
                conn,
                &ServerMessage::error(
                    ErrorCode::RateLimited,
                    "message rate limit exceeded; message dropped",
                    None,
                ),
            );
        }
        false
    }

    fn process(&mut self, conn: ConnId, msg: ClientMessage, now: Now) {
        let meeting = match self.conns.get(&conn).map(|c| &c.state) {
            None | Some(ConnState::Closing) => return,
            Some(ConnState::AwaitingJoin) => None,
            Some(ConnState::Joined { meeting, .. }) => Some(meeting.clone()),
        };
        let result = catch_unwind(AssertUnwindSafe(|| self.dispatch(conn, msg, now)));
        if result.is_err() {
            *self.stats.panics.entry("meeting").or_default() += 1;
            match meeting {
                Some(mid) => self.fail_meeting(&mid),
                None => self.reject(
                    conn,
                    ErrorCode::Internal,
                    "internal error",
                    None,
                    close_code::INTERNAL,
                    "internal error",
                ),
            }
        }
    }

    fn dispatch(&mut self, conn: ConnId, msg: ClientMessage, now: Now) {
        let joined = match self.conns.get(&conn).map(|c| &c.state) {
            Some(ConnState::Joined {
                meeting,
                participant,
            }) => Some((meeting.clone(), participant.clone())),
            _ => None,
        };
        let Some((mid, pid)) = joined else {
            if let ClientMessage::Join {
                meeting_id,
                token,
                display_name,
                request_id,
                resume,
                capabilities,
            } = msg
            {
                let follows_migrate = capabilities.iter().any(|c| c == CAPABILITY_MIGRATE);
                self.handle_join(
                    conn,
                    meeting_id,
                    token,
                    display_name,
                    request_id,
                    (resume, follows_migrate),
                    now,
                );
            }
            return;
        };
        if let Some(m) = self.meetings.get_mut(&mid) {
            m.last_activity = now.mono;
            if m.migrating.is_some() && !matches!(msg, ClientMessage::Ping { .. }) {
                // Frozen for export: refuse visibly; the sender resends after the move.
                self.count_drop("meeting", "migrating");
                self.send(
                    conn,
                    &ServerMessage::error(ErrorCode::Conflict, MIGRATING_REFUSAL, None),
                );
                return;
            }
        }
        match msg {
            ClientMessage::Join { request_id, .. } => self.send(
                conn,
                &ServerMessage::error(ErrorCode::Conflict, "already joined", request_id),
            ),
            ClientMessage::Leave {} => {
                self.remove_participant(&mid, &pid, LeaveReason::Voluntary, now);
                self.close(conn, close_code::NORMAL, "leave");
            }
            ClientMessage::Mute { audio, video } => {
                let Some(m) = self.meetings.get_mut(&mid) else {
                    return;
                };
                let Some(p) = m.get_mut(&pid) else { return };
                p.audio_self = audio;
                p.video_self = video;
                let update = p.mute_update();
                self.broadcast(&mid, None, &update, now);
            }
            ClientMessage::Message { payload, to } => {
                self.relay(conn, &mid, &pid, payload, to, now)
            }
            ClientMessage::Ping { id } => self.send(conn, &ServerMessage::Pong { id }),
            ClientMessage::HostMute {
                participant_id,
                audio,
                video,
            } => {
                let Some(target) = self.host_target(conn, &mid, &pid, &participant_id) else {
                    return;
                };
                let Some(m) = self.meetings.get_mut(&mid) else {
                    return;
                };
                let Some(p) = m.get_mut(&target) else { return };
                p.audio_host = audio;
                p.video_host = video;
                let update = p.mute_update();
                self.broadcast(&mid, None, &update, now);
            }
            ClientMessage::Kick { participant_id } => {
                let Some(target) = self.host_target(conn, &mid, &pid, &participant_id) else {
                    return;
                };
                if target == pid {
                    self.send(
                        conn,
                        &ServerMessage::error(
                            ErrorCode::InvalidRequest,
                            "a host cannot kick itself; use leave",
                            None,
                        ),
                    );
                    return;
                }
                let target_conn = self
                    .meetings
                    .get(&mid)
                    .and_then(|m| m.get(&target))
                    .and_then(|p| p.conn);
                if let Some(tc) = target_conn {
                    self.send(
                        tc,
                        &ServerMessage::MeetingEnded {
                            reason: EndReason::Kicked,
                        },
                    );
                    self.close(tc, close_code::NORMAL, "kicked");
                }
                self.remove_participant(&mid, &target, LeaveReason::Kicked, now);
            }
            ClientMessage::EndMeeting {} => {
                if !self.is_host(&mid, &pid) {
                    self.send(
                        conn,
                        &ServerMessage::error(
                            ErrorCode::Forbidden,
                            "only a host may end the meeting",
                            None,
                        ),
                    );
                    return;
                }
                self.end_meeting(&mid, EndReason::EndedByHost, now);
            }
            ClientMessage::Unknown => self.send(
                conn,
                &ServerMessage::error(ErrorCode::InvalidRequest, "unknown message type", None),
            ),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_join(
        &mut self,
        conn: ConnId,
        meeting_id: String,
        token: String,
        display_name: String,
        request_id: Option<String>,
        (resume, follows_migrate): (Option<ResumeRequest>, bool),
        now: Now,
    ) {
        if let Some(r) = &request_id {
            if r.len() > MAX_REQUEST_ID_LEN {
                self.bad_join(conn, "request_id is longer than 64 characters", None);
                return;
            }
        }
        let meeting = match MeetingId::parse(&meeting_id) {
            Ok(m) => m,
            Err(e) => {
                self.bad_join(conn, &e.to_string(), request_id);
                return;
            }
        };
        let session = self
            .conns
            .get(&conn)
            .and_then(|c| c.session_meeting.as_ref());
        if let Some(path) = session.filter(|path| **path != meeting) {
            let message =
                format!("meeting_id {meeting} does not match the session path /meetings/{path}");
            self.bad_join(conn, &message, request_id);
            return;
        }
        if display_name.len() > MAX_DISPLAY_NAME_BYTES {
            self.bad_join(conn, "display_name is longer than 256 bytes", request_id);
            return;
        }
        if display_name.chars().any(char::is_control) {
            self.bad_join(conn, "display_name contains control characters", request_id);
            return;
        }
        if token.len() > MAX_TOKEN_BYTES {
            self.count_token_failure("too_large");
            self.unauthorized(conn, request_id);
            return;
        }
        if let Some(r) = &resume {
            if r.participant_id.len() > 64 || r.binding_token.len() > 512 {
                self.count_token_failure("bad_binding");
                self.unauthorized(conn, request_id);
                return;
            }
        }
        let claims = match self
            .verifier
            .verify(&token, meeting.as_str(), now.unix_ms / 1000)
        {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(shard = %self.cfg.shard, conn = %conn, meeting = %meeting, reason = e.reason(), "token rejected");
                self.count_token_failure(e.reason());
                self.unauthorized(conn, request_id);
                return;
            }
        };
        let owner = self.router.shard_for(&meeting);
        if owner != self.cfg.shard {
            let Some(mut c) = self.conns.remove(&conn) else {
                return;
            };
            let mut queued = Vec::new();
            self.inbox.retain(|m| {
                if m.conn == conn {
                    queued.push(m.msg.clone());
                    false
                } else {
                    true
                }
            });
            self.count_join("handoff");
            self.actions.push_back(Action::Handoff {
                conn,
                to: owner,
                join: Box::new(HandoffJoin {
                    meeting_id: meeting,
                    claims,
                    display_name,
                    request_id,
                    resume,
                    follows_migrate,
                    received: c.received,
                    queued,
                    leftover: c.decoder.take_remaining(),
                }),
            });
            return;
        }
        self.join_local(
            conn,
            meeting,
            claims,
            display_name,
            request_id,
            resume,
            follows_migrate,
            now,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn join_local(
        &mut self,
        conn: ConnId,
        meeting_id: MeetingId,
        claims: Claims,
        display_name: String,
        request_id: Option<String>,
        resume: Option<ResumeRequest>,
        follows_migrate: bool,
        now: Now,
    ) {
        if let Some(r) = resume {
            self.resume(
                conn,
                meeting_id,
                claims,
                r,
                request_id,
                follows_migrate,
                now,
            );
            return;
        }
        if self.draining {
            self.count_join("capacity_exceeded");
            self.reject(
                conn,
                ErrorCode::CapacityExceeded,
                "controller is draining",
                request_id,
                close_code::CAPACITY,
                "draining",
            );
            return;
        }
        if self.participant_count() >= self.cfg.max_participants {
            self.count_join("capacity_exceeded");
            self.reject(
                conn,
                ErrorCode::CapacityExceeded,
                "controller is at participant capacity",
                request_id,
                close_code::CAPACITY,
                "capacity",
            );
            return;
        }
        if !self.meetings.contains_key(&meeting_id) {
            if self.cfg.gc_mode {
                self.count_join("not_found");
                self.reject(
                    conn,
                    ErrorCode::NotFound,
                    "meeting is not hosted on this controller",
                    request_id,
                    close_code::NORMAL,
                    "unknown meeting",
                );
                return;
            }
            if self.meetings.len() >= self.cfg.max_meetings {
                self.count_join("capacity_exceeded");
                self.reject(
                    conn,
                    ErrorCode::CapacityExceeded,
                    "controller is at meeting capacity",
                    request_id,
                    close_code::CAPACITY,
                    "capacity",
                );
                return;
            }
            self.meetings.insert(
                meeting_id.clone(),
                Meeting::new(meeting_id.clone(), now.mono, now.unix_ms),
            );
        }
        let Some(m) = self.meetings.get(&meeting_id) else {
            return;
        };
        if m.len() >= self.cfg.max_participants_per_meeting {
            self.count_join("capacity_exceeded");
            self.reject(
                conn,
                ErrorCode::CapacityExceeded,
                "meeting is full",
                request_id,
                close_code::CAPACITY,
                "meeting full",
            );
            return;
        }
        // Imported meetings carry ids minted elsewhere: skip any already taken.
        let pid = loop {
            self.participant_seq += 1;
            let pid = ParticipantId::new(self.cfg.shard, self.participant_seq);
            if m.get(&pid).is_none() {
                break pid;
            }
        };
        let p = Participant {
            id: pid.clone(),
            user: claims.sub,
            display_name,
            role: claims.role,
            joined_at_ms: now.unix_ms,
            audio_self: false,
            video_self: false,
            audio_host: false,
            video_host: false,
            conn: Some(conn),
            disconnected_at: None,
            binding_nonce: None,
            follows_migrate,
            held: None,
        };
        let info = p.info();
        let role = p.role;
        if let Some(m) = self.meetings.get_mut(&meeting_id) {
            m.add(p, now.mono);
        }
        self.finish_join(conn, &meeting_id, &pid, role, request_id, now);
        self.count_join("ok");
        // Per-participant events are debug: at thousands of joins per second an info line each
        // (formatted and written on the shard thread) costs more than the join's own logic.
        // Meeting-level events (created, ended) stay at info; rates are in the metrics.
        tracing::debug!(shard = %self.cfg.shard, meeting = %meeting_id, participant = %pid, "joined");
        self.broadcast(
            &meeting_id,
            Some(&pid),
            &ServerMessage::ParticipantJoined { participant: info },
            now,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn resume(
        &mut self,
        conn: ConnId,
        meeting_id: MeetingId,
        claims: Claims,
        r: ResumeRequest,
        request_id: Option<String>,
        follows_migrate: bool,
        now: Now,
    ) {
        if !self.meetings.contains_key(&meeting_id)
            && self.redirect_moved(conn, &meeting_id, &claims, &r, follows_migrate, now)
        {
            return;
        }
        let found = self
            .meetings
            .get(&meeting_id)
            .and_then(|m| m.find(&r.participant_id))
            .map(|p| {
                (
                    p.id.clone(),
                    p.user.clone(),
                    p.binding_nonce,
                    p.conn,
                    p.role,
                )
            });
        let Some((pid, user, nonce, old_conn, role)) = found else {
            self.count_token_failure("resume_unknown_participant");
            self.unauthorized(conn, request_id);
            return;
        };
        let verified = self.binding.verify(
            &r.binding_token,
            meeting_id.as_str(),
            pid.as_str(),
            now.unix_ms,
        );
        let ok = match verified {
            Ok(b) => Some(b.nonce) == nonce && user == claims.sub,
            Err(_) => false,
        };
        if !ok {
            self.count_token_failure("bad_binding");
            self.unauthorized(conn, request_id);
            return;
        }
        if let Some(old) = old_conn {
            if old != conn {
                if let Some(c) = self.conns.get_mut(&old) {
                    c.state = ConnState::Closing;
                }
                self.actions.push_back(Action::Close {
                    conn: old,
                    code: close_code::NORMAL,
                    reason: "resumed elsewhere",
                });
            }
        }
        if let Some(p) = self
            .meetings
            .get_mut(&meeting_id)
            .and_then(|m| m.get_mut(&pid))
        {
            p.conn = Some(conn);
            p.disconnected_at = None;
            p.follows_migrate = follows_migrate;
        }
        self.finish_join(conn, &meeting_id, &pid, role, request_id, now);
        let held = self
            .meetings
            .get_mut(&meeting_id)
            .and_then(|m| m.take_held(&pid));
        match held {
            Some(frames) => {
                // Back after a migration: what happened meanwhile follows the join_response.
                for f in frames {
                    self.push_frame(conn, f);
                }
                self.count_join("migrated");
                self.count_migration("returned");
            }
            None => self.count_join("resumed"),
        }
    }

    fn finish_join(
        &mut self,
        conn: ConnId,
        meeting_id: &MeetingId,
        pid: &ParticipantId,
        role: Role,
        request_id: Option<String>,
        now: Now,
    ) {
        self.nonce_seq += 1;
        let nonce = (u64::from(self.cfg.shard.0) << 48) | self.nonce_seq;
        let window_ms = u64::try_from(self.cfg.resume_window.as_millis()).unwrap_or(u64::MAX);
        let binding_token = self.binding.issue(
            meeting_id.as_str(),
            pid.as_str(),
            nonce,
            now.unix_ms
                .saturating_add(window_ms)
                .saturating_add(86_400_000),
        );
        let Some(m) = self.meetings.get_mut(meeting_id) else {
            return;
        };
        if let Some(p) = m.get_mut(pid) {
            p.binding_nonce = Some(nonce);
        }
        let mut roster = m.roster_for(pid);
        let mut response = ServerMessage::JoinResponse {
            participant_id: pid.to_string(),
            meeting_id: meeting_id.to_string(),
            role,
            participants: Vec::new(),
            media_handlers: m.media_handlers.clone(),
            binding_token,
            resume_window_ms: window_ms,
            request_id,
        };
        // A frame body may not exceed 64 KiB. A large roster (long names) would: the first
        // participants that fit go in `join_response`, the rest follow immediately as
        // `participant_joined` to the joiner alone, before any later event of the meeting.
        let base = json_len(&response).unwrap_or(0);
        let mut budget = codec::MAX_FRAME_LEN.saturating_sub(base + 16);
        let mut fit = 0;
        for p in &roster {
            let size = json_len(p).map_or(usize::MAX, |n| n.saturating_add(1));
            if size > budget {
                break;
            }
            budget -= size;
            fit += 1;
        }
        let overflow = roster.split_off(fit);
        if let ServerMessage::JoinResponse { participants, .. } = &mut response {
            *participants = roster;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = ConnState::Joined {
                meeting: meeting_id.clone(),
                participant: pid.clone(),
            };
        }
        self.send(conn, &response);
        for participant in overflow {
            self.send(conn, &ServerMessage::ParticipantJoined { participant });
        }
    }

    fn relay(
        &mut self,
        conn: ConnId,
        mid: &MeetingId,
        pid: &ParticipantId,
        payload: serde_json::Value,
        to: Option<Vec<String>>,
        now: Now,
    ) {
        if self.cfg.test_hooks && payload.as_str() == Some(TEST_PANIC_PAYLOAD) {
            panic!("test hook: deliberate panic in meeting {mid}");
        }
        let size = serde_json::to_vec(&payload).map_or(usize::MAX, |v| v.len());
        if size > MAX_PAYLOAD_BYTES {
            self.send(
                conn,
                &ServerMessage::error(
                    ErrorCode::InvalidRequest,
                    "payload is larger than 16 KiB",
                    None,
                ),
            );
            return;
        }
        let frame = codec::encode_server(&ServerMessage::Message {
            from: pid.to_string(),
            payload,
        });
        match to {
            None => self.broadcast_frame(mid, Some(pid), frame, now),
            Some(list) => {
                if list.len() > MAX_RECIPIENTS {
                    self.send(
                        conn,
                        &ServerMessage::error(
                            ErrorCode::InvalidRequest,
                            "too many recipients",
                            None,
                        ),
                    );
                    return;
                }
                let Some(m) = self.meetings.get(mid) else {
                    return;
                };
                let mut unknown = 0usize;
                let mut targets = Vec::with_capacity(list.len());
                let mut held = Vec::new();
                let mut seen = HashSet::new();
                for id in &list {
                    if !seen.insert(id.as_str()) {
                        continue;
                    }
                    match m.find(id) {
                        Some(p) => {
                            targets.extend(p.conn);
                            if p.conn.is_none() && p.held.is_some() {
                                held.push(p.id.clone());
                            }
                        }
                        None => unknown += 1,
                    }
                }
                for t in targets {
                    self.push_frame(t, frame.clone());
                }
                if !held.is_empty() {
                    self.hold_for(mid, &held, &frame);
                }
                if unknown > 0 {
                    self.send(
                        conn,
                        &ServerMessage::error(
                            ErrorCode::NotFound,
                            format!("{unknown} recipient(s) are not in the meeting"),
                            None,
                        ),
                    );
                }
                self.reap_slow_consumers(now);
            }
        }
    }

    fn is_host(&self, mid: &MeetingId, pid: &ParticipantId) -> bool {
        self.meetings
            .get(mid)
            .and_then(|m| m.get(pid))
            .is_some_and(|p| p.role == Role::Host)
    }

    fn host_target(
        &mut self,
        conn: ConnId,
        mid: &MeetingId,
        pid: &ParticipantId,
        target: &str,
    ) -> Option<ParticipantId> {
        if !self.is_host(mid, pid) {
            self.send(
                conn,
                &ServerMessage::error(ErrorCode::Forbidden, "only a host may do this", None),
            );
            return None;
        }
        match self.meetings.get(mid).and_then(|m| m.find(target)) {
            Some(p) => Some(p.id.clone()),
            None => {
                self.send(
                    conn,
                    &ServerMessage::error(
                        ErrorCode::NotFound,
                        "no such participant in this meeting",
                        None,
                    ),
                );
                None
            }
        }
    }

    fn remove_participant(
        &mut self,
        mid: &MeetingId,
        pid: &ParticipantId,
        reason: LeaveReason,
        now: Now,
    ) {
        let Some(m) = self.meetings.get_mut(mid) else {
            return;
        };
        let Some(p) = m.remove(pid, now.mono) else {
            return;
        };
        let empty = m.is_empty();
        tracing::debug!(shard = %self.cfg.shard, meeting = %mid, participant = %pid, ?reason, "left");
        if let Some(c) = p.conn.and_then(|c| self.conns.get_mut(&c)) {
            if let ConnState::Joined { .. } = c.state {
                c.state = ConnState::Closing;
            }
        }
        self.broadcast(
            mid,
            None,
            &ServerMessage::ParticipantLeft {
                participant_id: pid.to_string(),
                reason,
            },
            now,
        );
        if empty {
            self.timers.push(Reverse((
                now.mono + self.cfg.empty_meeting_timeout,
                Timer::EmptyMeeting(mid.clone()),
            )));
        }
    }

    fn fail_meeting(&mut self, mid: &MeetingId) {
        let Some(m) = self.meetings.remove(mid) else {
            return;
        };
        tracing::error!(shard = %self.cfg.shard, meeting = %mid, "meeting ended after a panic while handling its message");
        let frame = codec::encode_server(&ServerMessage::error(
            ErrorCode::Internal,
            "the meeting ended because of an internal error",
            None,
        ));
        for conn in m.connections_except(None) {
            self.push_frame(conn, frame.clone());
            self.close(conn, close_code::INTERNAL, "internal error");
        }
        self.actions
            .push_back(Action::Notify(ShardEvent::MeetingEnded {
                meeting_id: mid.to_string(),
                reason: "internal_error",
            }));
    }

    fn joined(&self, conn: ConnId) -> Option<(MeetingId, ParticipantId)> {
        match self.conns.get(&conn).map(|c| &c.state) {
            Some(ConnState::Joined {
                meeting,
                participant,
            }) => Some((meeting.clone(), participant.clone())),
            _ => None,
        }
    }

    fn disconnect_lost(&mut self, conn: ConnId, now: Now, why: &'static str) {
        let joined = self.joined(conn);
        self.close(conn, close_code::SLOW_OR_FLOOD, why);
        if let Some((mid, pid)) = joined {
            self.remove_participant(&mid, &pid, LeaveReason::ConnectionLost, now);
        }
    }

    fn broadcast(
        &mut self,
        mid: &MeetingId,
        except: Option<&ParticipantId>,
        msg: &ServerMessage,
        now: Now,
    ) {
        let frame = codec::encode_server(msg);
        self.broadcast_frame(mid, except, frame, now);
    }

    fn broadcast_frame(
        &mut self,
        mid: &MeetingId,
        except: Option<&ParticipantId>,
        frame: Frame,
        now: Now,
    ) {
        let Some(m) = self.meetings.get(mid) else {
            return;
        };
        let holding = m.is_holding();
        for conn in m.connections_except(except) {
            self.push_frame(conn, frame.clone());
        }
        if holding {
            self.hold_all(mid, except, &frame);
        }
        self.reap_slow_consumers(now);
    }

    /// Disconnects connections that crossed the slow-consumer threshold (after a fan-out, so
    /// the `participant_left` it causes is itself a clean fan-out).
    ///
    /// Only the connections listed when they crossed the threshold are looked at: a fan-out
    /// never scans the shard's connection table.
    fn reap_slow_consumers(&mut self, now: Now) {
        while let Some(v) = self.slow.pop() {
            let Some(c) = self.conns.get_mut(&v) else {
                continue;
            };
            c.slow_listed = false;
            if !matches!(c.state, ConnState::Joined { .. }) {
                continue;
            }
            self.stats.slow_consumers += 1;
            tracing::warn!(shard = %self.cfg.shard, conn = %v, "slow consumer disconnected");
            self.disconnect_lost(v, now, "slow consumer");
        }
    }

    fn push_frame(&mut self, conn: ConnId, frame: Frame) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.outbound.len() >= self.cfg.mailbox_size {
            c.drops += 1;
            if c.drops >= self.cfg.slow_consumer_drops && !c.slow_listed {
                c.slow_listed = true;
                self.slow.push(conn);
            }
            *self
                .stats
                .dropped
                .entry(("connection", "slow_consumer"))
                .or_default() += 1;
            return;
        }
        c.outbound.push_back(frame);
        self.stats.frames_out += 1;
        if self.writable_set.insert(conn) {
            self.writable.push(conn);
        }
    }

    fn send(&mut self, conn: ConnId, msg: &ServerMessage) {
        self.push_frame(conn, codec::encode_server(msg));
    }

    fn close(&mut self, conn: ConnId, code: u64, reason: &'static str) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.state = ConnState::Closing;
        self.inbox.retain(|m| m.conn != conn);
        self.actions.push_back(Action::Close { conn, code, reason });
    }

    fn reject(
        &mut self,
        conn: ConnId,
        code: ErrorCode,
        message: &str,
        request_id: Option<String>,
        close: u64,
        reason: &'static str,
    ) {
        self.send(conn, &ServerMessage::error(code, message, request_id));
        self.close(conn, close, reason);
    }

    fn bad_join(&mut self, conn: ConnId, message: &str, request_id: Option<String>) {
        self.count_join("invalid_request");
        self.reject(
            conn,
            ErrorCode::InvalidRequest,
            message,
            request_id,
            close_code::PROTOCOL,
            "bad join",
        );
    }

    fn unauthorized(&mut self, conn: ConnId, request_id: Option<String>) {
        self.count_join("unauthorized");
        self.reject(
            conn,
            ErrorCode::Unauthorized,
            "not authorized to join this meeting",
            request_id,
            close_code::UNAUTHORIZED,
            "unauthorized",
        );
    }

    fn count_join(&mut self, result: &'static str) {
        *self.stats.joins.entry(result).or_default() += 1;
    }

    fn count_token_failure(&mut self, reason: &'static str) {
        *self.stats.token_failures.entry(reason).or_default() += 1;
    }

    fn count_migration(&mut self, outcome: &'static str) {
        *self.stats.migration.entry(outcome).or_default() += 1;
    }

    fn count_drop(&mut self, actor: &'static str, reason: &'static str) {
        *self.stats.dropped.entry((actor, reason)).or_default() += 1;
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

/// Length of `v` as JSON, counted without building the bytes (the roster split measures every
/// participant of a meeting on each join).
fn json_len<T: serde::Serialize + ?Sized>(v: &T) -> Option<usize> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    serde_json::to_writer(&mut c, v).ok()?;
    Some(c.0)
}

#[path = "shard_migration.rs"]
mod migration_state;

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;
