//! Scenario `rolling-drain`: a rolling restart under load, with meetings migrating.
//!
//! The generator runs the fleet itself: an in-process fake GC (`mc_test_support::fake_gc`) and
//! `--controllers` `mc serve` processes sharing one binding secret and signing key. It assigns
//! `--meetings` meetings per controller, joins `--participants` per meeting (announcing the
//! `migrate` capability) and sends `--rate` messages per second per participant. Then it sends
//! SIGTERM to each controller in turn, waits for it to exit, restarts it under the same id (it
//! re-registers) and waits `--drain-interval` before the next one. Participants follow every
//! `migrate` notice: they reconnect to the target, resume with the migrate token and resend
//! the messages the old controller did not handle.
//!
//! Messages start once every participant has joined (one sent before a slow joiner's join is
//! not owed to it). After the last restart the run waits until no participant is still on its
//! way to a target (up to the resume window plus a margin): messages held for it at the target
//! are delivered when it arrives. A participant still moving then, or whose resume was closed,
//! is lost.
//!
//! Reported: meetings ended, participants lost, messages sent / refused / delivered / lost /
//! out of order, reconnect gap per participant (notice → `join_response` at the target) and
//! migration time per meeting (first notice → last participant back), p50 / p99 / max.
//!
//! The engine is deliberately simple (one non-blocking socket per connection, polled by
//! `--threads` threads): correctness figures at any scale, latency figures at moderate scale.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use hdrhistogram::Histogram;
use mc::core::codec::{self, FrameDecoder};
use mc::core::protocol::{
    ClientMessage, ErrorCode, ResumeRequest, Role, ServerMessage, CAPABILITY_MIGRATE,
};
use mc::core::shard::MIGRATING_REFUSAL;
use mc::core::token::TokenSigner;
use mc_test_support::fake_gc::{FakeGc, FakeGcConfig};
use serde_json::{json, Value};

use crate::transport::{SignalingStream, StreamContext, TransportKind};

const INBOUND_TOKEN: &str = "rolling-drain-inbound";
const GC_TOKEN: &str = "rolling-drain-gc";
/// Longest wait for every participant's first `join_response` before the messages start.
const JOIN_WAIT: Duration = Duration::from_secs(60);
/// Longest wait, after the last restart, for participants still on their way to a target: the
/// controllers' resume window (30 s by default) plus a margin. One still moving then is lost.
const RETURN_WAIT: Duration = Duration::from_secs(40);

/// Settings of the scenario.
#[derive(Debug, Clone)]
pub struct RollingSettings {
    /// Controllers in the fleet.
    pub controllers: usize,
    /// `mc` binary.
    pub mc_binary: PathBuf,
    /// Shards per controller.
    pub shards: u16,
    /// Meetings per controller.
    pub meetings_per_controller: u32,
    /// Participants per meeting.
    pub participants: u32,
    /// Messages per second per participant.
    pub rate: f64,
    /// Native QUIC or WebTransport.
    pub transport: TransportKind,
    /// Worker threads.
    pub threads: usize,
    /// Time under load before the first drain and after each restart.
    pub drain_interval: Duration,
    /// `--drain-timeout` given to the controllers.
    pub drain_timeout: Duration,
    /// Print JSON on stdout.
    pub json: bool,
}

// ------------------------------------------------------------------------------------------
// The fleet
// ------------------------------------------------------------------------------------------

struct Controller {
    id: String,
    child: Child,
    quic: SocketAddr,
    control: SocketAddr,
    dir: PathBuf,
}

struct Fleet {
    gc: FakeGc,
    master: PathBuf,
    secrets: PathBuf,
    settings: RollingSettings,
    controllers: Vec<Controller>,
}

fn temp_dir(tag: &str) -> anyhow::Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let d = std::env::temp_dir().join(format!("mc-rolling-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

impl Fleet {
    fn new(settings: &RollingSettings) -> anyhow::Result<Fleet> {
        let gc = FakeGc::start(
            "127.0.0.1:0".parse()?,
            FakeGcConfig {
                fast_heartbeat_interval_ms: 1000,
                comprehensive_heartbeat_interval_ms: 5000,
                token: Some(GC_TOKEN.into()),
            },
        )?;
        let master = temp_dir("master")?;
        mc::dev::ensure_dev_material(&master, SystemTime::now(), &[])
            .map_err(|e| anyhow!("development material: {e}"))?;
        let secrets = temp_dir("secrets")?;
        std::fs::write(secrets.join("gc-token"), GC_TOKEN)?;
        std::fs::write(secrets.join("gc-inbound"), INBOUND_TOKEN)?;
        Ok(Fleet {
            gc,
            master,
            secrets,
            settings: settings.clone(),
            controllers: Vec::new(),
        })
    }

    fn signer(&self) -> anyhow::Result<TokenSigner> {
        mc::dev::load_signer(&self.master).map_err(|e| anyhow!("signing key: {e}"))
    }

    /// Starts controller `id` and waits until it has registered with the GC.
    fn start(&mut self, id: &str) -> anyhow::Result<Controller> {
        let dir = temp_dir(id)?;
        for e in std::fs::read_dir(&self.master)? {
            let e = e?;
            std::fs::copy(e.path(), dir.join(e.file_name()))?;
        }
        let registered_before = self.registrations(id);
        let s = |n: &str| self.secrets.join(n).display().to_string();
        let mut child = Command::new(&self.settings.mc_binary)
            .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
            .args(["--control-listen", "127.0.0.1:0", "--log-level", "warn"])
            .arg("--dev-dir")
            .arg(&dir)
            .args(["--shards", &self.settings.shards.to_string()])
            .args(["--gc-url", &self.gc.url()])
            .args(["--gc-token-file", &s("gc-token")])
            .args(["--gc-inbound-token-file", &s("gc-inbound")])
            .args(["--mc-id", id])
            .args([
                "--drain-timeout",
                &format!("{}ms", self.settings.drain_timeout.as_millis()),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", self.settings.mc_binary.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("listening ") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow!("{id} did not print its listening line"))?;
        let field = |k: &str| -> anyhow::Result<SocketAddr> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .ok_or_else(|| anyhow!("no {k} in {line:?}"))?
                .parse()
                .map_err(|e| anyhow!("{k}: {e}"))
        };
        let c = Controller {
            id: id.to_owned(),
            child,
            quic: field("quic=")?,
            control: field("control=")?,
            dir,
        };
        let ok = self.gc.wait_until(Duration::from_secs(30), |r| {
            r.iter()
                .filter(|x| x.is_register() && x.status == 200 && x.body["id"] == id)
                .count()
                > registered_before
        });
        if !ok {
            bail!("{id} did not register with the fake GC");
        }
        Ok(c)
    }

    fn registrations(&self, id: &str) -> usize {
        self.gc
            .registrations()
            .iter()
            .filter(|x| x.status == 200 && x.body["id"] == id)
            .count()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.controllers {
            let _ = c.child.kill();
            let _ = c.child.wait();
            let _ = std::fs::remove_dir_all(&c.dir);
        }
        let _ = std::fs::remove_dir_all(&self.master);
        let _ = std::fs::remove_dir_all(&self.secrets);
    }
}

// ------------------------------------------------------------------------------------------
// Participants
// ------------------------------------------------------------------------------------------

struct Link {
    sock: UdpSocket,
    local: SocketAddr,
    conn: quiche::Connection,
    stream: Box<dyn SignalingStream>,
    ready: bool,
    decoder: FrameDecoder,
    /// Frames not yet taken by the stream.
    out: Vec<u8>,
    /// Every frame sent on this connection, its join first (for the resend after a move).
    sent: Vec<codec::Frame>,
}

struct Part {
    idx: u32,
    meeting: String,
    role: Role,
    transport: TransportKind,
    link: Option<Link>,
    pid: String,
    seq: u64,
    next_send: Instant,
    moving_since: Option<Instant>,
    migrations: u32,
    /// Per sender: (deliveries, last seq).
    from: HashMap<u32, (u64, u64)>,
    stats: PartStats,
}

#[derive(Debug, Default, Clone)]
struct PartStats {
    sent: u64,
    refused: u64,
    delivered: u64,
    out_of_order: u64,
    ended: bool,
    lost: bool,
    left_seen: u64,
    errors: u64,
    /// (meeting, k-th move, notice, back) for each followed migration.
    moves: Vec<(String, u32, Instant, Instant)>,
}

fn connect(addr: SocketAddr, transport: TransportKind, meeting: &str) -> anyhow::Result<Link> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_nonblocking(true)?;
    let local = sock.local_addr()?;
    // One client configuration per thread and transport: `quiche::Config::new` builds a TLS
    // context and loads the system CA store each time (about 4 ms and 1 MB per connection).
    thread_local! {
        static CFGS: std::cell::RefCell<HashMap<&'static str, quiche::Config>> =
            std::cell::RefCell::new(HashMap::new());
    }
    CFGS.with(|c| -> anyhow::Result<Link> {
        let mut map = c.borrow_mut();
        let cfg = match map.entry(transport.name()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(transport.client_config(Duration::from_secs(30))?)
            }
        };
        connect_with(addr, transport, meeting, sock, local, cfg)
    })
}

fn connect_with(
    addr: SocketAddr,
    transport: TransportKind,
    meeting: &str,
    sock: UdpSocket,
    local: SocketAddr,
    cfg: &mut quiche::Config,
) -> anyhow::Result<Link> {
    let mut scid = [0u8; 16];
    rand::Rng::fill(&mut rand::thread_rng(), &mut scid[..]);
    let conn = quiche::connect(
        Some("localhost"),
        &quiche::ConnectionId::from_ref(&scid),
        local,
        addr,
        cfg,
    )?;
    let stream = transport.open(&StreamContext {
        meeting_id: meeting.to_owned(),
        authority: format!("localhost:{}", addr.port()),
    });
    Ok(Link {
        sock,
        local,
        conn,
        stream,
        ready: false,
        decoder: FrameDecoder::new(),
        out: Vec::new(),
        sent: Vec::new(),
    })
}

fn endpoint(s: &str) -> Option<SocketAddr> {
    let s = s.strip_prefix("https://").unwrap_or(s);
    s.split('/').next()?.parse().ok()
}

struct Shared {
    signer: TokenSigner,
    /// Participants that got their first `join_response`.
    joined: AtomicUsize,
    /// Participants between a `migrate` notice and their `join_response` at the target.
    moving: AtomicUsize,
    sending: AtomicBool,
    stop: AtomicBool,
    interval: Option<Duration>,
}

impl Part {
    fn join_frame(&self, shared: &Shared, resume: Option<ResumeRequest>) -> codec::Frame {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let sub = format!("rd-user-{}", self.idx);
        codec::encode(&ClientMessage::Join {
            meeting_id: self.meeting.clone(),
            token: mc::dev::mint_token(&shared.signer, &self.meeting, self.role, &sub, 3600, now),
            display_name: format!("rd-{}", self.idx),
            request_id: None,
            resume,
            capabilities: vec![CAPABILITY_MIGRATE.into()],
        })
    }

    fn queue(&mut self, f: codec::Frame) {
        if let Some(l) = self.link.as_mut() {
            l.out.extend_from_slice(&f);
            l.sent.push(f);
        }
    }

    /// One turn: read, handle, write. True if anything happened.
    fn turn(&mut self, shared: &Shared, scratch: &mut [u8], now: Instant) -> bool {
        let mut busy = false;
        let mut inbound: Vec<ServerMessage> = Vec::new();
        if let Some(l) = self.link.as_mut() {
            while let Ok((n, from)) = l.sock.recv_from(scratch) {
                busy = true;
                let _ = l
                    .conn
                    .recv(&mut scratch[..n], quiche::RecvInfo { from, to: l.local });
            }
            if l.conn.timeout_instant().is_some_and(|t| now >= t) {
                l.conn.on_timeout();
            }
            if !l.ready {
                l.ready = l.stream.poll_ready(&mut l.conn).unwrap_or(false);
            }
            if l.ready {
                let dec = &mut l.decoder;
                let closed = l
                    .stream
                    .recv(&mut l.conn, scratch, &mut |b| dec.push(b))
                    .is_err();
                while let Ok(Some(body)) = l.decoder.next_frame() {
                    if let Ok(m) = codec::decode::<ServerMessage>(body) {
                        inbound.push(m);
                    }
                }
                let follows = inbound
                    .iter()
                    .any(|m| matches!(m, ServerMessage::Migrate { .. }));
                if closed && !follows {
                    // Also while moving: a target that closes the resume is a failed move.
                    self.stats.lost |= !self.stats.ended;
                }
                if !l.out.is_empty() {
                    if let Ok(n) = l.stream.send(&mut l.conn, &l.out) {
                        l.out.drain(..n);
                    }
                }
            }
            let follows = inbound
                .iter()
                .any(|m| matches!(m, ServerMessage::Migrate { .. }));
            if l.conn.is_closed() && !follows && !self.stats.ended {
                self.stats.lost = true;
            }
        }
        for m in inbound {
            busy = true;
            self.on_message(shared, m, now);
        }
        if shared.sending.load(Ordering::Relaxed)
            && self.moving_since.is_none()
            && !self.pid.is_empty()
        {
            if let Some(iv) = shared.interval {
                if now >= self.next_send {
                    self.next_send += iv;
                    if self.next_send < now {
                        self.next_send = now + iv;
                    }
                    let f = codec::encode(&ClientMessage::Message {
                        payload: json!({ "rd": self.idx, "seq": self.seq }),
                        to: None,
                    });
                    self.seq += 1;
                    self.stats.sent += 1;
                    self.queue(f);
                    busy = true;
                }
            }
        }
        if let Some(l) = self.link.as_mut() {
            if l.ready && !l.out.is_empty() {
                if let Ok(n) = l.stream.send(&mut l.conn, &l.out) {
                    l.out.drain(..n);
                }
            }
            let mut buf = [0u8; 1500];
            while let Ok((n, info)) = l.conn.send(&mut buf) {
                let _ = l.sock.send_to(&buf[..n], info.to);
            }
        }
        busy
    }

    fn on_message(&mut self, shared: &Shared, m: ServerMessage, now: Instant) {
        match m {
            ServerMessage::JoinResponse { participant_id, .. } => {
                if self.pid.is_empty() {
                    self.pid = participant_id;
                    shared.joined.fetch_add(1, Ordering::Relaxed);
                } else if participant_id != self.pid {
                    self.stats.lost = true; // came back as someone else
                }
                if let Some(t) = self.moving_since.take() {
                    shared.moving.fetch_sub(1, Ordering::Relaxed);
                    self.stats
                        .moves
                        .push((self.meeting.clone(), self.migrations, t, now));
                }
            }
            ServerMessage::Migrate {
                quic_endpoint,
                webtransport_url,
                binding_token,
                messages_handled,
                ..
            } => {
                self.migrations += 1;
                if self.moving_since.replace(now).is_none() {
                    shared.moving.fetch_add(1, Ordering::Relaxed);
                }
                let target = match self.transport {
                    TransportKind::Quic => endpoint(&quic_endpoint),
                    TransportKind::Webtransport => endpoint(&webtransport_url),
                };
                let old = self.link.take();
                let resend: Vec<codec::Frame> = old
                    .map(|l| {
                        l.sent
                            .into_iter()
                            .skip(usize::try_from(messages_handled).unwrap_or(usize::MAX))
                            .collect()
                    })
                    .unwrap_or_default();
                let Some(addr) = target else {
                    self.stats.lost = true;
                    return;
                };
                match connect(addr, self.transport, &self.meeting) {
                    Ok(l) => self.link = Some(l),
                    Err(_) => {
                        self.stats.lost = true;
                        return;
                    }
                }
                let join = self.join_frame(
                    shared,
                    Some(ResumeRequest {
                        participant_id: self.pid.clone(),
                        binding_token,
                    }),
                );
                self.queue(join);
                for f in resend {
                    // Joins are never resent (the first frame of the old connection).
                    let is_join = codec::decode::<ClientMessage>(&f[4..])
                        .is_ok_and(|m| matches!(m, ClientMessage::Join { .. }));
                    if !is_join {
                        self.queue(f);
                    }
                }
            }
            ServerMessage::Message { payload, .. } => {
                let (Some(from), Some(seq)) = (
                    payload["rd"].as_u64().and_then(|v| u32::try_from(v).ok()),
                    payload["seq"].as_u64(),
                ) else {
                    return;
                };
                self.stats.delivered += 1;
                let e = self.from.entry(from).or_insert((0, 0));
                if e.0 > 0 && seq <= e.1 {
                    self.stats.out_of_order += 1;
                }
                e.0 += 1;
                e.1 = seq;
            }
            ServerMessage::Error {
                code: ErrorCode::Conflict,
                message,
                ..
            } if message == MIGRATING_REFUSAL => self.stats.refused += 1,
            ServerMessage::Error { .. } => self.stats.errors += 1,
            ServerMessage::MeetingEnded { .. } => self.stats.ended = true,
            ServerMessage::ParticipantLeft { .. } => self.stats.left_seen += 1,
            _ => {}
        }
    }
}

// ------------------------------------------------------------------------------------------
// The run
// ------------------------------------------------------------------------------------------

fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}

/// Runs the scenario and prints its report; the exit code is non-zero if a meeting ended, a
/// participant was lost or a message was lost.
pub fn run(settings: RollingSettings) -> anyhow::Result<bool> {
    if settings.controllers < 2 {
        bail!("rolling-drain needs --controllers 2 or more");
    }
    let mut fleet = Fleet::new(&settings)?;
    let ids: Vec<String> = (0..settings.controllers)
        .map(|i| format!("mc-{i}"))
        .collect();
    for id in &ids {
        let c = fleet.start(id)?;
        fleet.controllers.push(c);
    }
    let signer = fleet.signer()?;
    // Meetings, assigned round robin.
    let mut parts = Vec::new();
    let mut idx = 0u32;
    let total_meetings = settings.meetings_per_controller as usize * settings.controllers;
    for m in 0..total_meetings {
        let c = &fleet.controllers[m % settings.controllers];
        let meeting = format!("rd-{m}");
        let (status, body) = fleet.gc.assign(
            &format!("http://{}", c.control),
            INBOUND_TOKEN,
            &meeting,
            &[],
        );
        if status != 200 {
            bail!("assigning {meeting}: {status} {body}");
        }
        for p in 0..settings.participants {
            parts.push((
                idx,
                meeting.clone(),
                c.quic,
                if p == 0 {
                    Role::Host
                } else {
                    Role::Participant
                },
            ));
            idx += 1;
        }
    }
    let shared = Arc::new(Shared {
        signer,
        joined: AtomicUsize::new(0),
        moving: AtomicUsize::new(0),
        sending: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        interval: (settings.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / settings.rate)),
    });
    let threads = settings.threads.max(1);
    let mut buckets: Vec<Vec<Part>> = (0..threads).map(|_| Vec::new()).collect();
    let started = Instant::now();
    for (i, (idx, meeting, addr, role)) in parts.into_iter().enumerate() {
        let mut p = Part {
            idx,
            meeting,
            role,
            transport: settings.transport,
            link: None,
            pid: String::new(),
            seq: 0,
            next_send: started,
            moving_since: None,
            migrations: 0,
            from: HashMap::new(),
            stats: PartStats::default(),
        };
        p.link = Some(connect(addr, settings.transport, &p.meeting)?);
        let join = p.join_frame(&shared, None);
        p.queue(join);
        buckets[i % threads].push(p);
    }
    let handles: Vec<_> = buckets
        .into_iter()
        .map(|mut ps| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut scratch = vec![0u8; 65535];
                while !shared.stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    let mut busy = false;
                    for p in ps.iter_mut() {
                        busy |= p.turn(&shared, &mut scratch, now);
                    }
                    if !busy {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                ps
            })
        })
        .collect();

    eprintln!(
        "rolling-drain: {} controllers, {total_meetings} meetings, {idx} participants; warming up",
        settings.controllers
    );
    std::thread::sleep(settings.drain_interval.min(Duration::from_secs(5)));
    // Messages start once everyone is in: one sent before a slow joiner's join is not owed to
    // it, and the figures count every message as owed to every other participant.
    let everyone = idx as usize;
    if !wait_for(JOIN_WAIT, || {
        shared.joined.load(Ordering::Relaxed) >= everyone
    }) {
        shared.stop.store(true, Ordering::Relaxed);
        bail!(
            "only {} of {everyone} participants joined within {JOIN_WAIT:?}",
            shared.joined.load(Ordering::Relaxed)
        );
    }
    shared.sending.store(true, Ordering::Relaxed);
    std::thread::sleep(settings.drain_interval);
    let mut exits = Vec::new();
    let mut drain_times = Vec::new();
    for i in 0..fleet.controllers.len() {
        let id = fleet.controllers[i].id.clone();
        eprintln!("rolling-drain: SIGTERM {id}");
        let t = Instant::now();
        // SAFETY: kill(2) with a pid of a child we spawned and have not reaped.
        unsafe {
            libc::kill(fleet.controllers[i].child.id() as i32, libc::SIGTERM);
        }
        let deadline = t + settings.drain_timeout + Duration::from_secs(30);
        let code = loop {
            if let Some(st) = fleet.controllers[i].child.try_wait()? {
                break st.code();
            }
            if Instant::now() >= deadline {
                bail!("{id} did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        drain_times.push((id.clone(), t.elapsed()));
        exits.push((id.clone(), code));
        let _ = std::fs::remove_dir_all(&fleet.controllers[i].dir);
        let c = fleet.start(&id)?;
        fleet.controllers[i] = c;
        std::thread::sleep(settings.drain_interval);
    }
    shared.sending.store(false, Ordering::Relaxed);
    // Messages for a participant still on its way are held for it at the target: wait until
    // everyone is back (or could no longer be) before counting. One still moving is lost.
    wait_for(RETURN_WAIT, || shared.moving.load(Ordering::Relaxed) == 0);
    std::thread::sleep(Duration::from_secs(3));
    shared.stop.store(true, Ordering::Relaxed);
    let mut all: Vec<Part> = Vec::new();
    for h in handles {
        all.extend(h.join().map_err(|_| anyhow!("a worker panicked"))?);
    }

    // Figures.
    let mut by_meeting: BTreeMap<&str, Vec<&Part>> = BTreeMap::new();
    for p in &all {
        by_meeting.entry(p.meeting.as_str()).or_default().push(p);
    }
    let (mut expected, mut delivered, mut out_of_order) = (0u64, 0u64, 0u64);
    let mut gap = Histogram::<u64>::new(3)?;
    let mut move_time = Histogram::<u64>::new(3)?;
    let mut meetings_ended = 0;
    for ps in by_meeting.values() {
        if ps.iter().any(|p| p.stats.ended) {
            meetings_ended += 1;
        }
        for s in ps {
            let got: u64 = ps
                .iter()
                .filter(|r| r.idx != s.idx)
                .map(|r| r.from.get(&s.idx).map_or(0, |e| e.0))
                .sum();
            expected += (s.stats.sent - s.stats.refused.min(s.stats.sent)) * (ps.len() as u64 - 1);
            delivered += got;
        }
        out_of_order += ps.iter().map(|p| p.stats.out_of_order).sum::<u64>();
        let mut moves: BTreeMap<u32, (Instant, Instant)> = BTreeMap::new();
        for p in ps {
            for (_, k, notice, back) in &p.stats.moves {
                let e = moves.entry(*k).or_insert((*notice, *back));
                e.0 = e.0.min(*notice);
                e.1 = e.1.max(*back);
                let _ = gap.record(back.duration_since(*notice).as_micros() as u64);
            }
        }
        for (a, b) in moves.values() {
            let _ = move_time.record(b.duration_since(*a).as_micros() as u64);
        }
    }
    let lost_participants = all
        .iter()
        .filter(|p| p.stats.lost || p.moving_since.is_some())
        .count();
    let left_events: u64 = all.iter().map(|p| p.stats.left_seen).sum();
    let sent: u64 = all.iter().map(|p| p.stats.sent).sum();
    let refused: u64 = all.iter().map(|p| p.stats.refused).sum();
    let report = json!({
        "scenario": "rolling-drain",
        "controllers": settings.controllers,
        "meetings": total_meetings,
        "participants": all.len(),
        "transport": settings.transport.name(),
        "rate": settings.rate,
        "controller_exits": exits.iter().map(|(id, c)| json!({"controller": id, "code": c})).collect::<Vec<_>>(),
        "drain_seconds": drain_times.iter().map(|(id, d)| json!({"controller": id, "seconds": d.as_secs_f64()})).collect::<Vec<_>>(),
        "meetings_ended": meetings_ended,
        "participants_lost": lost_participants,
        "participant_left_events": left_events,
        "messages": {
            "sent": sent, "refused": refused, "expected_deliveries": expected,
            "delivered": delivered, "lost": expected.saturating_sub(delivered),
            "out_of_order": out_of_order,
            "other_errors": all.iter().map(|p| p.stats.errors).sum::<u64>(),
        },
        "reconnect_gap": percentiles(&gap),
        "migration_time_per_meeting": percentiles(&move_time),
    });
    let clean = meetings_ended == 0
        && lost_participants == 0
        && left_events == 0
        && expected <= delivered
        && out_of_order == 0;
    print_report(&report, settings.json);
    Ok(clean)
}

/// Polls `done` every 20 ms for up to `limit`; true once it holds.
fn wait_for(limit: Duration, done: impl Fn() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn print_report(r: &Value, json_out: bool) {
    let ms = |v: &Value, k: &str| v[k].as_f64().map_or("-".into(), |x| format!("{x:.1}"));
    let gap = &r["reconnect_gap"];
    let mv = &r["migration_time_per_meeting"];
    let m = &r["messages"];
    let table = format!(
        "scenario rolling-drain: {} controllers, {} meetings, {} participants ({})\n\
         meetings ended          {}\n\
         participants lost       {}\n\
         messages                sent {} refused {} delivered {}/{} lost {} out of order {}\n\
         reconnect gap (ms)      p50 {} p99 {} max {} (n={})\n\
         migration/meeting (ms)  p50 {} p99 {} max {} (n={})\n",
        r["controllers"],
        r["meetings"],
        r["participants"],
        r["transport"],
        r["meetings_ended"],
        r["participants_lost"],
        m["sent"],
        m["refused"],
        m["delivered"],
        m["expected_deliveries"],
        m["lost"],
        m["out_of_order"],
        ms(gap, "p50_ms"),
        ms(gap, "p99_ms"),
        ms(gap, "max_ms"),
        gap["count"],
        ms(mv, "p50_ms"),
        ms(mv, "p99_ms"),
        ms(mv, "max_ms"),
        mv["count"],
    );
    if json_out {
        eprint!("{table}");
        println!("{r:#}");
    } else {
        print!("{table}");
    }
}

/// Default `mc` binary: next to this executable.
pub fn default_mc_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("mc")))
        .unwrap_or_else(|| Path::new("mc").to_path_buf())
}
