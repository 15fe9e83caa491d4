//! One event-loop thread: many simulated participants, each a quiche client connection on a
//! non-blocking UDP socket (shared by `--conns-per-socket` connections), driven by mio readiness
//! and one min-heap of deadlines (connects, scheduled sends, leaves, quiche timers).
//!
//! The hot path is batched and allocation-free: datagrams come in by `recvmmsg` and are routed to
//! their connection by the participant index inside our connection ID; every connection touched
//! by a batch is serviced once afterwards (one read of its stream, one round of `send`, so one
//! acknowledgement for several packets), and its datagrams leave by `sendmmsg`. Delivered
//! payloads are scanned for their three numbers instead of being decoded (see
//! [`crate::payload`]).
//!
//! Sends are open loop: a sender's `k`-th message is due at `phase + k / rate` whatever happened
//! to the previous ones, and carries that intended time, so a stall anywhere (server, network,
//! this loop) shows up as latency instead of silently lowering the offered load.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mc::core::codec;
use mc::core::protocol::{ClientMessage, ServerMessage};
use mc::core::token::TokenSigner;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use rand::Rng as _;
use serde_json::Value;

use crate::accounting::{MemberKey, ReceiverLog, Recorded, SenderLedger};
use crate::ack::{AckPolicy, AckStep};
use crate::cli::{Scenario, Settings};
use crate::clock::Clock;
use crate::cpu::{self, ThreadUse, WindowMeter};
use crate::inbound::{Inbound, Item};
use crate::payload::{self, Delivery};
use crate::plan::{display_name, parse_display_name, ParticipantPlan, Timeline};
use crate::stats::{record, Counters, ErrorCounts, Latencies, Tick};
use crate::timer::TimerFd;
use crate::transport::{SignalingStream, StreamContext, StreamError};
use crate::udp::{self, Flushed, SendBatch};
use mc::runtime::udp::{Receiver, RECV_BATCH};

/// Length of the connection IDs this client chooses (packets are routed back by them).
const SCID_LEN: usize = 16;
/// Largest UDP payload sent or accepted.
/// Bytes a connection may have waiting for flow control before sends are skipped (and counted).
const BACKLOG_LIMIT: usize = 4 << 20;
/// How long a leaving participant waits for the server to close before closing itself.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for connections to close at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Event-loop token of the deadline timer (sockets use their index).
const TIMER_TOKEN: Token = Token(usize::MAX);
/// quiche timers further away than this are re-checked at this interval instead, which keeps the
/// heap free of long-lived stale entries.
const TIMER_HORIZON: Duration = Duration::from_secs(1);

/// State shared by all workers and the main thread.
#[derive(Debug, Default)]
pub struct Shared {
    /// Set by the main thread when the drain is over.
    pub stop: AtomicBool,
    /// Deliveries the senders currently expect (live, for the end of the drain).
    pub expected: AtomicU64,
    /// Deliveries received so far.
    pub delivered: AtomicU64,
    /// Connections started but neither joined nor failed yet (the drain waits for them).
    pub pending_joins: AtomicU64,
}

/// Everything a worker needs.
pub struct WorkerInput {
    /// Worker index.
    pub thread: usize,
    /// Settings.
    pub settings: Arc<Settings>,
    /// Meeting ids by index.
    pub meeting_ids: Arc<Vec<String>>,
    /// Phases.
    pub timeline: Timeline,
    /// Messages per second per sender.
    pub rate: f64,
    /// Churn events per second for this worker.
    pub churn_per_thread: f64,
    /// The participants this worker runs.
    pub participants: Vec<ParticipantPlan>,
    /// Token signer.
    pub signer: Arc<TokenSigner>,
    /// Process clock.
    pub clock: Clock,
    /// Start of the run.
    pub t0: Instant,
    /// Shared flags and counters.
    pub shared: Arc<Shared>,
    /// Progress channel.
    pub ticks: Sender<Tick>,
}

/// What a worker hands back.
#[derive(Debug)]
pub struct WorkerOutput {
    /// Latencies of the measured window.
    pub window: Latencies,
    /// Final counters.
    pub counters: Counters,
    /// Errors by label.
    pub errors: ErrorCounts,
    /// Sender ledgers.
    pub ledgers: Vec<SenderLedger>,
    /// Receiver logs.
    pub receivers: Vec<ReceiverLog>,
    /// This thread's CPU use over the measured window (`None` when the run ended before it).
    pub cpu: Option<ThreadUse>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// Open a new connection (a new epoch).
    Connect(usize),
    /// A quiche timer of this generation.
    Timer(usize, u64),
    /// The next scheduled message of this epoch.
    Send(usize, u32),
    /// Leave (and rejoin later when `true`).
    Leave(usize, u32, bool),
    /// Not joined by now: failed.
    JoinDeadline(usize, u32),
    /// The server did not close after `leave`.
    LeaveDeadline(usize, u32),
    /// One churn event.
    Churn,
    /// The delayed acknowledgement of this generation is due.
    Ack(usize, u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No connection (not started yet, between churn epochs, or finished).
    Idle,
    /// QUIC handshake running.
    Handshaking,
    /// Transport-specific stream setup.
    Opening,
    /// `join` sent.
    Joining,
    /// In the meeting.
    Joined,
    /// `leave` sent, waiting for the server to close.
    Leaving,
    /// Closed by us, waiting for quiche to finish.
    Closing,
}

struct Participant {
    plan: ParticipantPlan,
    sock: usize,
    epoch: u32,
    started: bool,
    phase: Phase,
    conn: Option<quiche::Connection>,
    stream: Option<Box<dyn SignalingStream>>,
    scid: [u8; SCID_LEN],
    out: Vec<u8>,
    out_pos: usize,
    inbound: Inbound,
    intended_start: Instant,
    join_sent: Instant,
    timer_at: Option<Instant>,
    timer_gen: u64,
    dirty: bool,
    /// Something other than a received datagram needs packets out (data, a timer, a phase
    /// change): the next service sends whatever quiche has.
    must_send: bool,
    /// When to acknowledge received datagrams.
    ack: AckPolicy,
    next_send: Instant,
    seq: u64,
    ledger: SenderLedger,
    roster: HashMap<String, MemberKey>,
    recv: Option<ReceiverLog>,
    rejoin: bool,
    close_expected: bool,
    failed: bool,
    /// Counted in [`Shared::pending_joins`].
    pending: bool,
}

impl Participant {
    fn member(&self) -> MemberKey {
        MemberKey {
            idx: self.plan.idx,
            epoch: self.epoch,
        }
    }

    fn backlog(&self) -> usize {
        self.out.len() - self.out_pos
    }

    fn write(&mut self, msg: &ClientMessage) {
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        self.out.extend_from_slice(&codec::encode(msg));
    }
}

struct Sock {
    /// Owns the descriptor; datagrams go through `fd` in batches.
    _io: UdpSocket,
    fd: RawFd,
    local: SocketAddr,
}

/// Everything but the participants and sockets, so handlers can borrow both halves.
struct Ctx {
    thread: usize,
    settings: Arc<Settings>,
    meeting_ids: Arc<Vec<String>>,
    signer: Arc<TokenSigner>,
    clock: Clock,
    t0: Instant,
    steady_start: Instant,
    window_start: Instant,
    steady_end: Instant,
    window_ns: (u64, u64),
    interval: Option<Duration>,
    churn_interval: Option<Duration>,
    token_ttl: u64,
    pad: usize,
    heap: BinaryHeap<Reverse<(Instant, u64, Ev)>>,
    heap_seq: u64,
    dirty: Vec<usize>,
    live: Latencies,
    window: Latencies,
    counters: Counters,
    errors: ErrorCounts,
    finished: Vec<ReceiverLog>,
    pending_expected: u64,
    pending_delivered: u64,
    shared: Arc<Shared>,
    recording: bool,
    storm: bool,
    /// Connections not yet closed.
    open_conns: usize,
}

impl Ctx {
    fn schedule(&mut self, at: Instant, ev: Ev) {
        self.heap_seq += 1;
        self.heap.push(Reverse((at, self.heap_seq, ev)));
    }

    fn error(&mut self, label: impl Into<String>) {
        *self.errors.entry(label.into()).or_default() += 1;
    }

    fn in_window(&self, intended: Instant) -> bool {
        intended >= self.window_start && intended < self.steady_end
    }

    /// Whether a connection started at `intended` counts in the join and handshake figures:
    /// in `join-storm` only inside the measured window, elsewhere every join (they happen
    /// during the ramp by design).
    fn join_measured(&self, intended: Instant) -> bool {
        !self.storm || self.in_window(intended)
    }
}

fn mark(ctx: &mut Ctx, part: &mut Participant, p: usize) {
    part.must_send = true;
    mark_read(ctx, part, p);
}

/// A datagram arrived: read what it carried at once, send its acknowledgement per the
/// acknowledgement policy (see `service`).
fn mark_read(ctx: &mut Ctx, part: &mut Participant, p: usize) {
    if !part.dirty {
        part.dirty = true;
        ctx.dirty.push(p);
    }
}

/// Runs one worker to completion.
pub fn run(input: WorkerInput) -> anyhow::Result<WorkerOutput> {
    let WorkerInput {
        thread,
        settings,
        meeting_ids,
        timeline,
        rate,
        churn_per_thread,
        participants,
        signer,
        clock,
        t0,
        shared,
        ticks,
    } = input;

    if let Some(first) = settings.pin_from {
        if let Some(cores) = core_affinity::get_core_ids() {
            if !cores.is_empty() {
                core_affinity::set_for_current(cores[(first + thread) % cores.len()]);
            }
        }
    }

    let mut config = settings.transport.client_config(settings.idle_timeout)?;
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut timer = TimerFd::new(poll.registry(), TIMER_TOKEN)?;

    let total_secs = (timeline.drain_end + Duration::from_secs(3600)).as_secs();
    let mut ctx = Ctx {
        thread,
        meeting_ids,
        signer,
        clock,
        t0,
        steady_start: t0 + timeline.steady_start,
        window_start: t0 + timeline.window_start,
        steady_end: t0 + timeline.steady_end,
        window_ns: (
            clock.unix_ns(t0 + timeline.window_start),
            clock.unix_ns(t0 + timeline.steady_end),
        ),
        interval: (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate)),
        churn_interval: (churn_per_thread > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / churn_per_thread)),
        token_ttl: total_secs,
        pad: settings.payload_bytes,
        heap: BinaryHeap::new(),
        heap_seq: 0,
        dirty: Vec::new(),
        live: Latencies::new(),
        window: Latencies::new(),
        counters: Counters::default(),
        errors: ErrorCounts::new(),
        finished: Vec::new(),
        pending_expected: 0,
        pending_delivered: 0,
        shared,
        recording: true,
        storm: settings.scenario == Scenario::JoinStorm,
        open_conns: 0,
        settings,
    };

    let per_socket = ctx.settings.conns_per_socket;
    let mut parts: Vec<Participant> = participants
        .into_iter()
        .enumerate()
        .map(|(i, plan)| Participant {
            sock: i / per_socket,
            ledger: SenderLedger::new(plan.idx),
            plan,
            epoch: 0,
            started: false,
            phase: Phase::Idle,
            conn: None,
            stream: None,
            scid: [0; SCID_LEN],
            out: Vec::new(),
            out_pos: 0,
            inbound: Inbound::new(),
            intended_start: t0,
            join_sent: t0,
            timer_at: None,
            timer_gen: 0,
            dirty: false,
            must_send: false,
            ack: AckPolicy::default(),
            next_send: t0,
            seq: 0,
            roster: HashMap::new(),
            recv: None,
            rejoin: false,
            close_expected: false,
            failed: false,
            pending: false,
        })
        .collect();
    let mut socks: Vec<Option<Sock>> = Vec::new();
    socks.resize_with(parts.len().div_ceil(per_socket), || None);

    for (p, part) in parts.iter().enumerate() {
        let at = t0 + part.plan.join_at;
        ctx.schedule(at, Ev::Connect(p));
    }
    if let Some(iv) = ctx.churn_interval {
        let phase = iv.mul_f64(rand::thread_rng().gen::<f64>());
        let at = ctx.steady_start + phase;
        ctx.schedule(at, Ev::Churn);
    }

    let mut bufs = Buffers {
        msgs: Vec::new(),
        recv: Receiver::default(),
        send: SendBatch::new(crate::transport::MAX_DATAGRAM),
        flushed: Flushed::default(),
        stream: vec![0u8; 65536],
        batch: Vec::new(),
    };
    let mut next_tick = t0 + Duration::from_secs(1);
    let mut closing_since: Option<Instant> = None;
    let mut meter = WindowMeter::default();

    loop {
        let now = Instant::now();
        meter.observe(now, ctx.window_start, ctx.steady_end);
        if closing_since.is_none() && ctx.shared.stop.load(Ordering::Relaxed) {
            finish(&mut ctx, &mut parts, now);
            closing_since = Some(now);
        }
        if let Some(since) = closing_since {
            if ctx.open_conns == 0 || now.duration_since(since) > CLOSE_TIMEOUT {
                break;
            }
        }

        // Deadlines.
        while let Some(Reverse((at, _, ev))) = ctx.heap.peek().copied() {
            if at > now {
                break;
            }
            ctx.heap.pop();
            fire(
                &mut ctx,
                &mut parts,
                &mut socks,
                &mut poll,
                &mut config,
                ev,
                at,
                now,
            );
        }
        service_dirty(&mut ctx, &mut parts, &mut socks, &mut bufs, now);
        flush_shared(&mut ctx);

        if now >= next_tick {
            next_tick += Duration::from_secs(1);
            let _ = ticks.send(Tick {
                thread: ctx.thread,
                latencies: std::mem::take(&mut ctx.live),
                counters: ctx.counters,
                errors: ctx.errors.clone(),
                cpu: cpu::thread_cpu(),
            });
        }

        // The timerfd wakes the loop at the next deadline; the poll timeout is only a backstop
        // (and bounds how late the stop flag is noticed).
        let mut deadline = next_tick;
        if let Some(Reverse((at, _, _))) = ctx.heap.peek() {
            deadline = deadline.min(*at);
        }
        let wait = if deadline <= now {
            Some(Duration::ZERO)
        } else {
            timer.arm(deadline + ctx.settings.timer_slack, now)?;
            Some(Duration::from_millis(60))
        };
        match poll.poll(&mut events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        for event in &events {
            if event.token() == TIMER_TOKEN {
                timer.acknowledge();
                continue;
            }
            let s = event.token().0;
            if event.is_readable() {
                drain_socket(&mut ctx, &mut parts, &mut socks, s, &mut bufs);
            }
        }
        // Receive times are taken once per batch, after reading it.
        service_dirty(&mut ctx, &mut parts, &mut socks, &mut bufs, Instant::now());
    }

    // The samples recorded since the last tick (the drain's last moments).
    let _ = ticks.send(Tick {
        thread: ctx.thread,
        latencies: std::mem::take(&mut ctx.live),
        counters: ctx.counters,
        errors: ctx.errors.clone(),
        cpu: cpu::thread_cpu(),
    });
    let ledgers = parts
        .iter_mut()
        .filter(|p| !p.ledger.ranges.is_empty())
        .map(|p| std::mem::take(&mut p.ledger))
        .collect();
    Ok(WorkerOutput {
        window: ctx.window,
        counters: ctx.counters,
        errors: ctx.errors,
        ledgers,
        receivers: ctx.finished,
        cpu: meter.result(),
    })
}

/// Buffers reused by every turn of the loop (nothing on the hot path allocates).
struct Buffers {
    msgs: Vec<Item>,
    recv: Receiver,
    send: SendBatch,
    /// What `sendmmsg` calls did since the last report into the error counts.
    flushed: Flushed,
    stream: Vec<u8>,
    batch: Vec<usize>,
}

fn open_socket(server: SocketAddr, shared: bool) -> io::Result<(UdpSocket, SocketAddr)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if server.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    if shared {
        // Several connections share the queue; a burst of fan-out must not overflow it.
        let _ = s.set_recv_buffer_size(8 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
    }
    let any: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    s.bind(&any.into())?;
    s.connect(&server.into())?;
    let local = s
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("socket has no IP address"))?;
    let std: std::net::UdpSocket = s.into();
    Ok((UdpSocket::from_std(std), local))
}

#[allow(clippy::too_many_arguments)]
fn fire(
    ctx: &mut Ctx,
    parts: &mut [Participant],
    socks: &mut [Option<Sock>],
    poll: &mut Poll,
    config: &mut quiche::Config,
    ev: Ev,
    at: Instant,
    now: Instant,
) {
    match ev {
        Ev::Connect(p) => connect(ctx, parts, socks, poll, config, p, at),
        Ev::Timer(p, gen) => {
            let part = &mut parts[p];
            if part.timer_gen == gen && part.timer_at.is_some() {
                part.timer_at = None;
                if let Some(conn) = part.conn.as_mut() {
                    conn.on_timeout();
                    mark(ctx, part, p);
                }
            }
        }
        Ev::Send(p, epoch) => send_due(ctx, &mut parts[p], p, epoch, now),
        Ev::Leave(p, epoch, rejoin) => {
            if parts[p].epoch == epoch {
                leave(ctx, &mut parts[p], p, rejoin, now);
            }
        }
        Ev::JoinDeadline(p, epoch) => {
            let part = &mut parts[p];
            let pending = matches!(
                part.phase,
                Phase::Handshaking | Phase::Opening | Phase::Joining
            );
            if part.epoch == epoch && pending && part.conn.is_some() {
                let label = if part.phase == Phase::Handshaking {
                    "handshake_timeout"
                } else {
                    "join_timeout"
                };
                ctx.error(label);
                ctx.counters.join_failures += 1;
                part.failed = true;
                close_locally(ctx, part, p, b"join timeout");
            }
        }
        Ev::LeaveDeadline(p, epoch) => {
            let part = &mut parts[p];
            if part.epoch == epoch && part.phase == Phase::Leaving && part.conn.is_some() {
                ctx.error("leave_timeout");
                close_locally(ctx, part, p, b"leave timeout");
            }
        }
        Ev::Ack(p, generation) => {
            let part = &mut parts[p];
            if part.ack.fire(generation) {
                mark(ctx, part, p);
            }
        }
        Ev::Churn => {
            if let Some(iv) = ctx.churn_interval {
                if let Some(p) = pick_joined(parts) {
                    leave(ctx, &mut parts[p], p, true, now);
                }
                let next = at + iv;
                if next < ctx.steady_end {
                    ctx.schedule(next, Ev::Churn);
                }
            }
        }
    }
}

fn pick_joined(parts: &[Participant]) -> Option<usize> {
    if parts.is_empty() {
        return None;
    }
    let mut rng = rand::thread_rng();
    for _ in 0..16 {
        let p = rng.gen_range(0..parts.len());
        if parts[p].phase == Phase::Joined {
            return Some(p);
        }
    }
    let start = rng.gen_range(0..parts.len());
    (0..parts.len())
        .map(|i| (start + i) % parts.len())
        .find(|&p| parts[p].phase == Phase::Joined)
}

fn connect(
    ctx: &mut Ctx,
    parts: &mut [Participant],
    socks: &mut [Option<Sock>],
    poll: &mut Poll,
    config: &mut quiche::Config,
    p: usize,
    at: Instant,
) {
    let part = &mut parts[p];
    if part.conn.is_some() || ctx.shared.stop.load(Ordering::Relaxed) {
        return;
    }
    if part.started {
        part.epoch += 1;
    }
    part.started = true;
    part.ack.reset();
    let server = ctx.settings.server;
    let s = part.sock;
    if socks[s].is_none() {
        match open_socket(server, ctx.settings.conns_per_socket > 1) {
            Ok((mut io, local)) => {
                if let Err(e) = poll
                    .registry()
                    .register(&mut io, Token(s), Interest::READABLE)
                {
                    ctx.error(format!("socket_register:{}", e.kind()));
                    ctx.counters.join_failures += 1;
                    return;
                }
                let fd = io.as_raw_fd();
                socks[s] = Some(Sock { _io: io, fd, local });
            }
            Err(e) => {
                ctx.error(format!("socket_open:{}", e.kind()));
                ctx.counters.join_failures += 1;
                return;
            }
        }
    }
    let Some(sock) = socks[s].as_mut() else {
        return;
    };
    // Datagrams are routed back by the participant index inside our connection ID; the random
    // rest tells this connection from an earlier epoch's.
    let mut random = [0u8; SCID_LEN];
    rand::thread_rng().fill(&mut random[..]);
    part.scid = udp::make_scid(p, &random);
    let scid = quiche::ConnectionId::from_ref(&part.scid);
    let conn = match quiche::connect(
        Some(&ctx.settings.server_name),
        &scid,
        sock.local,
        server,
        config,
    ) {
        Ok(c) => c,
        Err(e) => {
            ctx.error(format!("quic_connect:{e}"));
            ctx.counters.join_failures += 1;
            return;
        }
    };
    let meeting_id = ctx.meeting_ids[part.plan.meeting as usize].clone();
    part.stream = Some(ctx.settings.transport.open(&StreamContext {
        meeting_id,
        authority: ctx.settings.server_name.clone(),
    }));
    part.conn = Some(conn);
    ctx.open_conns += 1;
    part.phase = Phase::Handshaking;
    part.intended_start = at;
    part.out.clear();
    part.out_pos = 0;
    part.inbound = Inbound::new();
    part.timer_at = None;
    part.close_expected = false;
    part.failed = false;
    part.rejoin = false;
    ctx.counters.connects += 1;
    part.pending = true;
    ctx.shared.pending_joins.fetch_add(1, Ordering::Relaxed);
    let epoch = part.epoch;
    ctx.schedule(
        at + ctx.settings.connect_timeout,
        Ev::JoinDeadline(p, epoch),
    );
    mark(ctx, part, p);
}

fn send_join(ctx: &mut Ctx, part: &mut Participant, now: Instant) {
    let meeting_id = ctx.meeting_ids[part.plan.meeting as usize].clone();
    let token = mc::dev::mint_token(
        &ctx.signer,
        &meeting_id,
        part.plan.role,
        &format!("lt-user-{}", part.plan.idx),
        ctx.token_ttl,
        ctx.clock.unix_secs(now),
    );
    part.write(&ClientMessage::Join {
        meeting_id,
        token,
        display_name: display_name(part.plan.idx, part.epoch),
        request_id: None,
        resume: None,
        capabilities: Vec::new(),
    });
    part.join_sent = now;
    part.phase = Phase::Joining;
}

fn send_due(ctx: &mut Ctx, part: &mut Participant, p: usize, epoch: u32, now: Instant) {
    let Some(iv) = ctx.interval else { return };
    if part.epoch != epoch || part.phase != Phase::Joined {
        return;
    }
    while part.next_send <= now && part.next_send < ctx.steady_end {
        let intended = part.next_send;
        part.next_send += iv;
        if part.backlog() > BACKLOG_LIMIT {
            ctx.counters.backlog_skips += 1;
            continue;
        }
        if part.out_pos == part.out.len() {
            part.out.clear();
            part.out_pos = 0;
        }
        let t = ctx.clock.unix_ns(intended);
        payload::encode_message(&mut part.out, t, part.seq, part.plan.idx, ctx.pad);
        part.seq += 1;
        ctx.counters.sent += 1;
        if ctx.in_window(intended) {
            ctx.counters.sent_window += 1;
        }
        ctx.pending_expected += part.ledger.audience() as u64;
    }
    if part.next_send < ctx.steady_end {
        let at = part.next_send;
        ctx.schedule(at, Ev::Send(p, epoch));
    }
    mark(ctx, part, p);
}

fn leave(ctx: &mut Ctx, part: &mut Participant, p: usize, rejoin: bool, now: Instant) {
    if part.phase != Phase::Joined {
        return;
    }
    part.write(&ClientMessage::Leave {});
    part.phase = Phase::Leaving;
    part.rejoin = rejoin;
    part.close_expected = true;
    // Nothing more is sent by this membership.
    part.ledger.close_all(part.seq);
    part.roster.clear();
    let epoch = part.epoch;
    ctx.schedule(now + LEAVE_TIMEOUT, Ev::LeaveDeadline(p, epoch));
    mark(ctx, part, p);
}

fn close_locally(ctx: &mut Ctx, part: &mut Participant, p: usize, reason: &[u8]) {
    if let Some(conn) = part.conn.as_mut() {
        part.close_expected = true;
        if part.phase == Phase::Joined || part.phase == Phase::Leaving {
            ctx.counters.joined_now = ctx.counters.joined_now.saturating_sub(1);
        }
        part.phase = Phase::Closing;
        let _ = conn.close(true, 0x0, reason);
        mark(ctx, part, p);
    }
}

/// Reads one `recvmmsg` batch from socket `s` and hands each datagram to its connection.
/// Returns how many datagrams the call read.
fn read_socket(
    ctx: &mut Ctx,
    parts: &mut [Participant],
    socks: &mut [Option<Sock>],
    s: usize,
    batch: &mut Receiver,
) -> usize {
    let Some(sock) = socks.get_mut(s).and_then(Option::as_mut) else {
        return 0;
    };
    let info = quiche::RecvInfo {
        from: ctx.settings.server,
        to: sock.local,
    };
    let got = match batch.recv(sock.fd, 0) {
        Ok(got) => got,
        Err(e) => {
            // ICMP errors (e.g. the server is not listening) surface here.
            ctx.error(format!("udp_recv:{}", e.kind()));
            return 0;
        }
    };
    for _ in 0..got.truncated {
        ctx.error("udp_truncated");
    }
    for i in 0..got.count {
        let Some((pkt, _)) = batch.datagram(i) else {
            continue;
        };
        let Some(p) = route(parts, s, pkt) else {
            continue;
        };
        let part = &mut parts[p];
        let Some(conn) = part.conn.as_mut() else {
            continue;
        };
        match conn.recv(pkt, info) {
            Ok(_) | Err(quiche::Error::Done) => {}
            Err(e) => ctx.error(format!("quic_recv:{e}")),
        }
        part.ack.received();
        mark_read(ctx, part, p);
    }
    got.read
}

/// Reads socket `s` until its queue is empty: one `recvmmsg` batch at a time, servicing the
/// connections a full batch touched before reading the next (so that acknowledgements and
/// stream data do not wait for the whole queue). A short batch means the queue was drained; a
/// datagram arriving later raises a new readiness event.
fn drain_socket(
    ctx: &mut Ctx,
    parts: &mut [Participant],
    socks: &mut [Option<Sock>],
    s: usize,
    bufs: &mut Buffers,
) {
    loop {
        if read_socket(ctx, parts, socks, s, &mut bufs.recv) < RECV_BATCH {
            return;
        }
        service_dirty(ctx, parts, socks, bufs, Instant::now());
    }
}

/// The participant of socket `s` a datagram is for: the index inside its destination
/// connection ID, if that participant's current connection on this socket has exactly that ID
/// (datagrams for an earlier epoch's connection are dropped).
fn route(parts: &[Participant], s: usize, pkt: &[u8]) -> Option<usize> {
    let dcid = udp::dcid(pkt, SCID_LEN)?;
    let p = udp::scid_owner(dcid)?;
    let part = parts.get(p)?;
    (part.sock == s && part.conn.is_some() && part.scid[..] == *dcid).then_some(p)
}

fn service_dirty(
    ctx: &mut Ctx,
    parts: &mut [Participant],
    socks: &mut [Option<Sock>],
    bufs: &mut Buffers,
    now: Instant,
) {
    while !ctx.dirty.is_empty() {
        // Handlers may mark participants again; those are serviced in the next round.
        std::mem::swap(&mut bufs.batch, &mut ctx.dirty);
        let mut batch = std::mem::take(&mut bufs.batch);
        // Participants of one socket are neighbours: in index order their datagrams queue up
        // for one `sendmmsg` per socket.
        batch.sort_unstable();
        for p in batch.drain(..) {
            parts[p].dirty = false;
            service(ctx, &mut parts[p], socks, bufs, p, now);
        }
        bufs.batch = batch;
    }
    let last = bufs.send.flush();
    let done = std::mem::take(&mut bufs.flushed);
    count_sends(ctx, done);
    count_sends(ctx, last);
}

/// Error counts for datagrams that did not leave.
fn count_sends(ctx: &mut Ctx, f: Flushed) {
    if f.blocked > 0 {
        // QUIC recovers a dropped datagram; count it so a saturated socket is visible.
        *ctx.errors.entry("udp_send_blocked".to_owned()).or_default() += f.blocked as u64;
    }
    if f.failed > 0 {
        let label = format!("udp_send:{}", f.error.unwrap_or(io::ErrorKind::Other));
        *ctx.errors.entry(label).or_default() += f.failed as u64;
    }
}

fn service(
    ctx: &mut Ctx,
    part: &mut Participant,
    socks: &mut [Option<Sock>],
    bufs: &mut Buffers,
    p: usize,
    now: Instant,
) {
    if part.conn.is_none() || part.stream.is_none() {
        return;
    }
    let established = part.conn.as_ref().is_some_and(|c| c.is_established());
    if part.phase == Phase::Handshaking && established {
        let us = now
            .saturating_duration_since(part.intended_start)
            .as_micros() as u64;
        ctx.counters.handshakes += 1;
        if ctx.recording {
            record(&mut ctx.live.handshake, us);
            if ctx.join_measured(part.intended_start) {
                record(&mut ctx.window.handshake, us);
            }
            if ctx.in_window(part.intended_start) {
                ctx.counters.handshakes_window += 1;
            }
        }
        part.phase = Phase::Opening;
    }
    if part.phase == Phase::Opening {
        let ready = match (part.conn.as_mut(), part.stream.as_mut()) {
            (Some(conn), Some(stream)) => stream.poll_ready(conn),
            _ => return,
        };
        match ready {
            Ok(true) => send_join(ctx, part, now),
            Ok(false) => {}
            Err(e) => {
                ctx.error(format!("stream_setup:{e}"));
                ctx.counters.join_failures += 1;
                part.failed = true;
                close_locally(ctx, part, p, b"stream setup failed");
            }
        }
    }

    // Read.
    if matches!(part.phase, Phase::Joining | Phase::Joined | Phase::Leaving) {
        let mut msgs = std::mem::take(&mut bufs.msgs);
        let mut found = crate::inbound::Anomalies::default();
        if let (Some(conn), Some(stream)) = (part.conn.as_mut(), part.stream.as_mut()) {
            let inbound = &mut part.inbound;
            let res = stream.recv(conn, &mut bufs.stream, &mut |bytes| {
                // Bytes after a fatal framing error are not read.
                if found.fatal.is_none() {
                    let a = inbound.feed(bytes, &mut msgs);
                    found.oversized += a.oversized;
                    found.undecodable += a.undecodable;
                    found.fatal = a.fatal;
                }
            });
            match res {
                Ok(()) | Err(StreamError::Closed) => {}
                Err(e) => ctx.error(format!("stream_recv:{e}")),
            }
        }
        for _ in 0..found.oversized {
            ctx.error("server_frame_over_64KiB");
        }
        for _ in 0..found.undecodable {
            ctx.error("bad_message");
        }
        for item in msgs.drain(..) {
            match item {
                Item::Delivery(d) => on_delivery(ctx, part, d, now),
                Item::Message(msg) => on_message(ctx, part, p, *msg, now),
            }
        }
        bufs.msgs = msgs;
        if let Some(label) = found.fatal {
            ctx.error(label);
            close_locally(ctx, part, p, b"bad frame");
        }
    }

    // Write.
    if let (Some(conn), Some(stream)) = (part.conn.as_mut(), part.stream.as_mut()) {
        let open = part.phase != Phase::Closing && !conn.is_closed() && !conn.is_draining();
        if open && part.out_pos < part.out.len() {
            part.must_send = true;
            match stream.send(conn, &part.out[part.out_pos..]) {
                Ok(n) => part.out_pos += n,
                Err(e) => ctx.error(format!("stream_send:{e}")),
            }
            if part.out_pos == part.out.len() {
                part.out.clear();
                part.out_pos = 0;
            }
        }
    }

    // Packets out. A joined participant with nothing to say acknowledges like a browser (RFC
    // 9000 §13.2.2): after every `--ack-every` received datagrams or `--ack-delay` after the
    // first unacknowledged one. Anything else (data, timers, handshake, leave) goes out now.
    let Some(sock) = socks.get_mut(part.sock).and_then(Option::as_mut) else {
        return;
    };
    let Some(conn) = part.conn.as_mut() else {
        return;
    };
    let may_defer = !part.must_send && part.phase == Phase::Joined && !conn.is_closed();
    let step = part.ack.step(
        may_defer,
        ctx.settings.ack_every,
        ctx.settings.ack_delay,
        now,
    );
    if let AckStep::Arm(at, generation) = step {
        ctx.schedule(at, Ev::Ack(p, generation));
    }
    if step == AckStep::Send {
        part.must_send = false;
        loop {
            let slot = bufs.send.slot(sock.fd, &mut bufs.flushed);
            match conn.send(slot) {
                Ok((n, _)) => bufs.send.commit(n),
                Err(quiche::Error::Done) => break,
                Err(e) => {
                    ctx.error(format!("quic_send:{e}"));
                    let _ = conn.close(false, 0x1, b"");
                    break;
                }
            }
        }
    }

    if conn.is_closed() {
        on_closed(ctx, part, p, now);
        return;
    }

    // Timer: only ever move it earlier; a later deadline is picked up when the armed one fires.
    if let Some(t) = conn.timeout_instant() {
        let t = t.min(now + TIMER_HORIZON);
        if part.timer_at.is_none_or(|armed| t < armed) {
            part.timer_gen += 1;
            part.timer_at = Some(t);
            let gen = part.timer_gen;
            ctx.schedule(t, Ev::Timer(p, gen));
        }
    }
}

fn on_message(ctx: &mut Ctx, part: &mut Participant, p: usize, msg: ServerMessage, now: Instant) {
    match msg {
        ServerMessage::JoinResponse { participants, .. } => {
            if part.phase != Phase::Joining {
                return;
            }
            part.phase = Phase::Joined;
            settle(ctx, part);
            ctx.counters.joins += 1;
            ctx.counters.joined_now += 1;
            let us = now.saturating_duration_since(part.join_sent).as_micros() as u64;
            if ctx.recording {
                record(&mut ctx.live.join, us);
                if ctx.join_measured(part.intended_start) {
                    record(&mut ctx.window.join, us);
                }
                if ctx.in_window(part.intended_start) {
                    ctx.counters.joins_window += 1;
                }
            }
            part.recv = Some(ReceiverLog::new(part.member()));
            if part.plan.sender {
                for info in participants {
                    if let Some((idx, epoch)) = parse_display_name(&info.display_name) {
                        let key = MemberKey { idx, epoch };
                        part.roster.insert(info.participant_id, key);
                        part.ledger.open(key, part.seq);
                    }
                }
                if let Some(iv) = ctx.interval {
                    part.next_send = first_slot(ctx.steady_start, iv, part.plan.idx, now);
                    if part.next_send < ctx.steady_end {
                        let (at, epoch) = (part.next_send, part.epoch);
                        ctx.schedule(at, Ev::Send(p, epoch));
                    }
                }
            }
            if let Some(leave_at) = part.plan.leave_at {
                let epoch = part.epoch;
                let at = (ctx.t0 + leave_at).max(now);
                ctx.schedule(at, Ev::Leave(p, epoch, false));
            }
        }
        ServerMessage::ParticipantJoined { participant } => {
            if part.plan.sender && part.phase == Phase::Joined {
                if let Some((idx, epoch)) = parse_display_name(&participant.display_name) {
                    let key = MemberKey { idx, epoch };
                    part.roster.insert(participant.participant_id, key);
                    part.ledger.open(key, part.seq);
                }
            }
        }
        ServerMessage::ParticipantLeft { participant_id, .. } => {
            if let Some(key) = part.roster.remove(&participant_id) {
                part.ledger.close(key, part.seq);
            }
        }
        ServerMessage::Message { payload, .. } => {
            // Not the generator's payload shape (the fast path took all of those).
            let field = |k: &str| payload.get(k).and_then(Value::as_u64);
            match (field("t"), field("s"), field("from")) {
                (Some(t), Some(seq), Some(from)) => {
                    on_delivery(ctx, part, Delivery { t, seq, from }, now)
                }
                _ => ctx.error("unparsable_payload"),
            }
        }
        ServerMessage::Error { code, .. } => {
            ctx.error(format!("error:{}", code.as_str()));
            if part.phase == Phase::Joining && !part.failed {
                part.failed = true;
                ctx.counters.join_failures += 1;
            }
        }
        ServerMessage::MeetingEnded { reason } => {
            ctx.error(format!("meeting_ended:{}", reason.as_str()));
        }
        // `migrate` is never sent: the generator does not announce the capability.
        ServerMessage::MuteUpdate { .. }
        | ServerMessage::Pong { .. }
        | ServerMessage::Migrate { .. } => {}
    }
}

/// The first send slot at or after `now` of a sender whose schedule starts at `start` with a
/// per-sender phase (spread so that senders do not fire in lockstep).
fn first_slot(start: Instant, iv: Duration, idx: u32, now: Instant) -> Instant {
    // A fixed pseudo-random phase per participant: reproducible and evenly spread.
    let frac = f64::from(idx.wrapping_mul(2_654_435_761)) / f64::from(u32::MAX);
    let base = start + iv.mul_f64(frac);
    if now <= base {
        return base;
    }
    let behind = now.duration_since(base).as_secs_f64() / iv.as_secs_f64();
    base + iv.mul_f64(behind.ceil())
}

fn on_delivery(ctx: &mut Ctx, part: &mut Participant, d: Delivery, now: Instant) {
    let Delivery { t, seq, from } = d;
    ctx.counters.delivered += 1;
    ctx.pending_delivered += 1;
    let us = ctx.clock.unix_ns(now).saturating_sub(t) / 1000;
    if ctx.recording {
        record(&mut ctx.live.delivery, us);
        if t >= ctx.window_ns.0 && t < ctx.window_ns.1 {
            record(&mut ctx.window.delivery, us);
            ctx.counters.delivered_window += 1;
        }
    }
    let Ok(from) = u32::try_from(from) else {
        return;
    };
    if let Some(log) = part.recv.as_mut() {
        match log.record(from, seq) {
            Recorded::New { skipped } => ctx.counters.gaps += skipped,
            Recorded::Duplicate => ctx.counters.duplicates += 1,
            Recorded::Late => ctx.counters.gaps = ctx.counters.gaps.saturating_sub(1),
        }
    }
}

/// The connection's join attempt is over (joined, refused or gone).
fn settle(ctx: &Ctx, part: &mut Participant) {
    if part.pending {
        part.pending = false;
        ctx.shared.pending_joins.fetch_sub(1, Ordering::Relaxed);
    }
}

fn on_closed(ctx: &mut Ctx, part: &mut Participant, p: usize, now: Instant) {
    let Some(conn) = part.conn.take() else { return };
    ctx.open_conns -= 1;
    settle(ctx, part);
    part.stream = None;
    part.timer_at = None;
    let phase = part.phase;
    if matches!(phase, Phase::Joined | Phase::Leaving) {
        ctx.counters.joined_now = ctx.counters.joined_now.saturating_sub(1);
    }
    let normal_leave = phase == Phase::Leaving
        && conn.peer_error().is_none_or(|e| e.error_code == 0)
        && !conn.is_timed_out();
    if !part.close_expected || (phase == Phase::Leaving && !normal_leave) {
        let label = if let Some(e) = conn.peer_error() {
            if e.is_app {
                format!("close:0x{:x}", e.error_code)
            } else {
                format!("close_transport:0x{:x}", e.error_code)
            }
        } else if conn.is_timed_out() {
            if conn.is_established() {
                "idle_timeout".to_owned()
            } else {
                "handshake_timeout".to_owned()
            }
        } else if let Some(e) = conn.local_error() {
            format!("local_close:0x{:x}", e.error_code)
        } else {
            "closed".to_owned()
        };
        if !part.failed {
            ctx.error(label);
            if phase == Phase::Joined {
                ctx.counters.disconnects += 1;
            } else if matches!(phase, Phase::Handshaking | Phase::Opening | Phase::Joining) {
                ctx.counters.join_failures += 1;
            }
        }
    }
    part.ledger.close_all(part.seq);
    part.roster.clear();
    if let Some(mut log) = part.recv.take() {
        log.departed = true;
        ctx.finished.push(log);
    }
    part.phase = Phase::Idle;
    if part.rejoin {
        part.rejoin = false;
        let at = now + ctx.settings.rejoin_delay;
        if at < ctx.steady_end {
            ctx.schedule(at, Ev::Connect(p));
        }
    }
}

/// End of the run: freeze the accounting, then leave or close every connection.
fn finish(ctx: &mut Ctx, parts: &mut [Participant], now: Instant) {
    flush_shared(ctx);
    ctx.recording = false;
    for (p, part) in parts.iter_mut().enumerate() {
        part.ledger.close_all(part.seq);
        part.roster.clear();
        if let Some(log) = part.recv.take() {
            // Still connected at the end of the drain: owes the full ranges.
            ctx.finished.push(log);
        }
        part.rejoin = false;
        if part.conn.is_none() {
            continue;
        }
        if ctx.settings.leave_at_end && part.phase == Phase::Joined {
            leave(ctx, part, p, false, now);
        } else {
            close_locally(ctx, part, p, b"done");
        }
    }
    // Drop pending connects, sends and churn; keep timers so closes complete.
    let keep: Vec<_> = ctx
        .heap
        .drain()
        .filter(|Reverse((_, _, ev))| {
            matches!(ev, Ev::Timer(..) | Ev::LeaveDeadline(..) | Ev::Ack(..))
        })
        .collect();
    ctx.heap.extend(keep);
}

fn flush_shared(ctx: &mut Ctx) {
    if ctx.pending_expected > 0 {
        ctx.shared
            .expected
            .fetch_add(ctx.pending_expected, Ordering::Relaxed);
        ctx.pending_expected = 0;
    }
    if ctx.pending_delivered > 0 {
        ctx.shared
            .delivered
            .fetch_add(ctx.pending_delivered, Ordering::Relaxed);
        ctx.pending_delivered = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_slot_keeps_the_schedule() {
        let start = Instant::now();
        let iv = Duration::from_millis(100);
        let a = first_slot(start, iv, 7, start);
        assert!(a >= start && a < start + iv);
        // Joining late lands on a later slot of the same grid.
        let late = first_slot(start, iv, 7, start + Duration::from_millis(1234));
        assert!(late >= start + Duration::from_millis(1234));
        let k = (late - a).as_secs_f64() / iv.as_secs_f64();
        assert!((k - k.round()).abs() < 1e-6, "{k}");
        // Different participants get different phases.
        assert_ne!(
            first_slot(start, iv, 1, start),
            first_slot(start, iv, 2, start)
        );
    }
}
