//! The control thread: control HTTP server (GC assignments, health, readiness, metrics, admin
//! API), the GC client, and the drain sequence. See `docs/control-plane.md` for the operator view
//! and `control-plane-v1` for the contract.
//!
//! Threads owned here, none of them on a shard core:
//!
//! - the **control thread** (the process's main thread under [`run`]) runs a current-thread
//!   tokio runtime: the HTTP server, the shard liveness poller and the drain sequence. Anything
//!   that waits for a shard runs on tokio's blocking pool, so a stuck shard never stalls the
//!   server;
//! - **`mc-gc`**: the blocking GC client (registration, heartbeats, meeting-ended notifications),
//!   which also drains the shards' event channel.
//!
//! The seam to the shards is [`crate::runtime::link`]: the control side only sends requests and
//! reads answers and events; shards take no lock on its behalf.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::core::protocol::EndReason;
use crate::core::router::Router;
use crate::runtime::link::{RuntimeLink, ShardReply, ShardRequest};

pub mod admin;
mod admission;
mod auth;
pub mod gc;
mod http;
mod metrics;
pub mod migrate_wire;
mod migration;
mod procstat;
mod shards;

pub use admin::{admin_cli, admin_command, admin_command_as, AdminError, AdminOutput, AdminVerb};
pub use gc::{parse_ca_certs, GcTiming};

use gc::{GcCommand, GcWorker};
use metrics::{Facts, Metrics};
use shards::ShardPool;

/// Exit code after a completed drain.
pub const EXIT_DRAINED: i32 = 0;
/// Exit code when the control server cannot start (e.g. the listen address is taken).
pub const EXIT_STARTUP_FAILED: i32 = 1;
/// Exit code when a second SIGTERM/SIGINT cut a drain short (128 + SIGINT, the shell convention
/// for an interrupted program).
pub const EXIT_FORCED: i32 = 130;

/// Everything the control thread needs from the configuration. Tokens are the file contents,
/// already read and trimmed by the caller.
#[derive(Clone)]
pub struct ControlConfig {
    /// Control HTTP server address (`--control-listen`).
    pub control_listen: SocketAddr,
    /// GC base URL; `None` = standalone.
    pub gc_url: Option<String>,
    /// Bearer token for calls to the GC.
    pub gc_token: Option<String>,
    /// Trust roots for an https:// GC (`--gc-ca-file`); empty = the public web roots.
    pub gc_ca_certs: Vec<ureq::tls::Certificate<'static>>,
    /// Bearer token the GC presents on `POST /internal/v1/meetings`; `None` = endpoint disabled.
    pub gc_inbound_token: Option<String>,
    /// Admin API bearer token; `None` = admin API disabled (404).
    pub admin_token: Option<String>,
    /// This controller's id.
    pub mc_id: String,
    /// Region reported at registration.
    pub region: String,
    /// QUIC endpoint clients use (`host:port`).
    pub advertise_quic: String,
    /// WebTransport URL clients use.
    pub advertise_webtransport: String,
    /// Meetings this controller takes (controller-wide).
    pub max_meetings: usize,
    /// Participants this controller takes (reported to the GC).
    pub max_participants: usize,
    /// How long a SIGTERM drain waits for meetings to end before ending them.
    pub drain_timeout: Duration,
    /// Timeout of every GC call.
    pub gc_timeout: Duration,
    /// Build version (`mc_build_info`, registration).
    pub version: String,
    /// CPU of every shard, index = shard id.
    pub shard_cpus: Vec<Option<usize>>,
}

impl fmt::Debug for ControlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |t: &Option<String>| t.as_ref().map(|_| "<redacted>");
        f.debug_struct("ControlConfig")
            .field("control_listen", &self.control_listen)
            .field("gc_url", &self.gc_url)
            .field("gc_token", &redact(&self.gc_token))
            .field("gc_ca_certs", &self.gc_ca_certs.len())
            .field("gc_inbound_token", &redact(&self.gc_inbound_token))
            .field("admin_token", &redact(&self.admin_token))
            .field("mc_id", &self.mc_id)
            .field("region", &self.region)
            .field("advertise_quic", &self.advertise_quic)
            .field("advertise_webtransport", &self.advertise_webtransport)
            .field("max_meetings", &self.max_meetings)
            .field("max_participants", &self.max_participants)
            .field("drain_timeout", &self.drain_timeout)
            .field("gc_timeout", &self.gc_timeout)
            .field("version", &self.version)
            .field("shard_cpus", &self.shard_cpus)
            .finish()
    }
}

/// Internal timings of the control thread. Defaults are the production values; tests shrink
/// them.
#[derive(Debug, Clone)]
pub struct ControlTiming {
    /// How often every shard is asked for a snapshot (the liveness ping).
    pub health_poll: Duration,
    /// A shard silent for longer is stuck: `/health` answers 503 naming it.
    pub health_stale_after: Duration,
    /// How long one snapshot round waits (scrape, heartbeat, poll).
    pub snapshot_timeout: Duration,
    /// How long other shard requests wait (assignment, admin, drain steps).
    pub request_timeout: Duration,
    /// Drain: how often meeting and connection counts are checked.
    pub drain_poll: Duration,
    /// Drain: how long to wait for connections to close after ending meetings.
    pub close_wait: Duration,
    /// Drain: how long the GC client may spend delivering the last meeting-ended notifications.
    pub gc_flush: Duration,
    /// HTTP: time allowed to send the headers of a request after the first.
    pub http_header_timeout: Duration,
    /// HTTP: time a new connection has to deliver its first request (headers); a connection
    /// that sends nothing, or drips, is closed after it.
    pub http_first_request_timeout: Duration,
    /// At most one log line per this interval summarises refused and unanswered connections.
    pub refusal_log_interval: Duration,
    /// GC client timings.
    pub gc: GcTiming,
}

impl Default for ControlTiming {
    fn default() -> Self {
        Self {
            health_poll: Duration::from_secs(1),
            health_stale_after: Duration::from_secs(3),
            snapshot_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(2),
            drain_poll: Duration::from_millis(250),
            close_wait: Duration::from_secs(2),
            gc_flush: Duration::from_secs(3),
            http_header_timeout: Duration::from_secs(10),
            http_first_request_timeout: Duration::from_secs(2),
            refusal_log_interval: Duration::from_secs(10),
            gc: GcTiming::default(),
        }
    }
}

/// How the control thread is started.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// Timings.
    pub timing: ControlTiming,
    /// Install SIGTERM/SIGINT handlers (the default). Tests that run several controllers in one
    /// process turn this off and use [`ControlHandle::terminate`] instead.
    pub handle_signals: bool,
}

impl Default for ControlOptions {
    fn default() -> Self {
        Self {
            timing: ControlTiming::default(),
            handle_signals: true,
        }
    }
}

/// Why a drain is in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrainSource {
    /// `POST /admin/drain`: reversible, no deadline, no exit.
    Admin,
    /// SIGTERM/SIGINT: ends with the process exiting.
    Signal,
}

/// State shared by the HTTP handlers, the poller, the drain sequence and the GC thread.
pub(crate) struct Shared {
    pub cfg: ControlConfig,
    pub timing: ControlTiming,
    pub pool: Arc<ShardPool>,
    pub router: Router,
    /// Current drain; the lock is held across a whole transition so shards get orders in order.
    pub drain: Mutex<Option<DrainSource>>,
    pub draining: Arc<AtomicBool>,
    pub registered: Arc<AtomicBool>,
    pub metrics: Metrics,
    pub gc_tx: crossbeam_channel::Sender<GcCommand>,
    /// Serialises assignments so the controller-wide capacity check sees its own decisions.
    pub assign_lock: tokio::sync::Mutex<()>,
    /// Control HTTP connections held (see `admission`).
    pub admission: Mutex<admission::Admission<tokio::task::AbortHandle>>,
    /// Summary lines of refused connections.
    pub refusal_log: Mutex<admission::RefusalLog>,
    /// Requests that may wait on shards or the GC at once.
    pub waiting: tokio::sync::Semaphore,
}

impl Shared {
    fn new(
        cfg: ControlConfig,
        timing: ControlTiming,
        link_shards: Vec<crate::runtime::link::ShardHandle>,
        gc_tx: crossbeam_channel::Sender<GcCommand>,
    ) -> Self {
        let mut handles = link_shards;
        for (i, h) in handles.iter_mut().enumerate() {
            if h.cpu.is_none() {
                h.cpu = cfg.shard_cpus.get(i).copied().flatten();
            }
        }
        let router = Router::new(u16::try_from(handles.len()).unwrap_or(u16::MAX));
        let pool = Arc::new(ShardPool::new(handles));
        let draining = Arc::new(AtomicBool::new(false));
        let registered = Arc::new(AtomicBool::new(false));
        let metrics = Metrics::new(
            Arc::clone(&pool),
            Facts {
                version: cfg.version.clone(),
                max_meetings: cfg.max_meetings,
                max_participants: cfg.max_participants,
                draining: Arc::clone(&draining),
                registered: Arc::clone(&registered),
                stale_after: timing.health_stale_after,
            },
        );
        let refusal_log = Mutex::new(admission::RefusalLog::new(timing.refusal_log_interval));
        Self {
            cfg,
            timing,
            pool,
            router,
            drain: Mutex::new(None),
            draining,
            registered,
            metrics,
            gc_tx,
            assign_lock: tokio::sync::Mutex::new(()),
            admission: Mutex::new(admission::Admission::new()),
            refusal_log,
            waiting: tokio::sync::Semaphore::new(http::MAX_WAITING_REQUESTS),
        }
    }

    /// The connection table.
    fn admission(
        &self,
    ) -> std::sync::MutexGuard<'_, admission::Admission<tokio::task::AbortHandle>> {
        self.admission.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a refusal and writes the summary line when one is due.
    fn refused(&self, r: admission::Refusal) {
        self.metrics.control_refusal(r);
        let due = self
            .refusal_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note(r, Instant::now());
        if let Some(s) = due {
            log_refusals(s, self.timing.refusal_log_interval);
        }
    }

    /// Writes the summary line of refusals not logged yet, when one is due.
    fn flush_refusal_log(&self) {
        let due = self
            .refusal_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .due(Instant::now());
        if let Some(s) = due {
            log_refusals(s, self.timing.refusal_log_interval);
        }
    }

    fn drain_state(&self) -> std::sync::MutexGuard<'_, Option<DrainSource>> {
        self.drain.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when the controller talks to a GC.
    pub fn gc_mode(&self) -> bool {
        self.cfg.gc_url.is_some()
    }

    /// Starts (or escalates) a drain and tells every shard and the GC; returns the drain now in
    /// force. Blocking.
    pub fn begin_drain(&self, source: DrainSource) -> DrainSource {
        let mut state = self.drain_state();
        let next = match (*state, source) {
            (Some(DrainSource::Signal), _) => DrainSource::Signal,
            (_, s) => s,
        };
        let was = state.replace(next);
        self.draining.store(true, Ordering::SeqCst);
        if was.is_none() {
            tracing::info!(source = ?next, "draining: no new meetings or joins");
            let _ = self.gc_tx.send(GcCommand::DrainChanged);
        }
        self.set_shards_draining(true);
        next
    }

    /// Ends an admin drain. Fails for a signal drain (the process is on its way out).
    pub fn end_drain(&self) -> Result<bool, UndrainRefused> {
        let mut state = self.drain_state();
        match *state {
            None => Ok(false),
            Some(DrainSource::Signal) => Err(UndrainRefused),
            Some(DrainSource::Admin) => {
                *state = None;
                self.draining.store(false, Ordering::SeqCst);
                tracing::info!("drain reverted: taking new meetings again");
                let _ = self.gc_tx.send(GcCommand::DrainChanged);
                self.set_shards_draining(false);
                Ok(true)
            }
        }
    }

    fn set_shards_draining(&self, on: bool) {
        for (i, r) in self
            .pool
            .fan_out(&ShardRequest::SetDraining(on), self.timing.request_timeout)
            .into_iter()
            .enumerate()
        {
            if let Err(e) = r {
                // The poller re-sends once the shard answers again.
                tracing::warn!(shard = i, error = %e, draining = on, "shard did not take the drain order");
            }
        }
    }

    /// Live shards whose last snapshot disagrees with the controller's drain state.
    fn draining_mismatches(&self) -> Vec<usize> {
        let want = self.draining.load(Ordering::SeqCst);
        self.pool
            .views()
            .iter()
            .filter(|v| {
                v.seen
                    && v.answered_within(self.timing.health_stale_after)
                    && v.snapshot.draining != want
            })
            .map(|v| usize::from(v.shard))
            .collect()
    }

    /// Re-sends the drain order to shards that disagree (e.g. they were stuck). Blocking.
    fn reconcile_draining(&self) {
        let Ok(state) = self.drain.try_lock() else {
            return; // a transition is in progress
        };
        let want = state.is_some();
        for i in self.draining_mismatches() {
            let _ = self.pool.request(
                i,
                ShardRequest::SetDraining(want),
                self.timing.request_timeout,
            );
        }
    }
}

fn log_refusals(s: admission::RefusalSummary, interval: Duration) {
    use admission::Refusal as R;
    tracing::warn!(
        first_request_timeout = s.of(R::FirstRequestTimeout),
        evicted = s.of(R::Evicted),
        peer_limit = s.of(R::PeerLimit),
        table_full = s.of(R::TableFull),
        busy = s.of(R::Busy),
        accept_error = s.of(R::AcceptError),
        at_most_every_s = interval.as_secs_f64(),
        "control port: connections closed unanswered or refused since the last summary (see mc_control_refusals_total)"
    );
}

/// `/admin/undrain` during a SIGTERM drain.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UndrainRefused;

/// The URL the GC should use to reach this controller's control server. When listening on
/// every address, the host of the advertised QUIC endpoint is used.
pub(crate) fn control_url(cfg: &ControlConfig) -> String {
    let port = cfg.control_listen.port();
    let host = match cfg.control_listen.ip() {
        ip if !ip.is_unspecified() => match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        },
        _ => match cfg.advertise_quic.rsplit_once(':') {
            Some((host, p)) if !host.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                host.to_owned()
            }
            _ if !cfg.advertise_quic.is_empty() => cfg.advertise_quic.clone(),
            _ => "127.0.0.1".to_owned(),
        },
    };
    format!("http://{host}:{port}")
}

/// Commands from a [`ControlHandle`].
#[derive(Debug, Clone, Copy)]
enum ControlCmd {
    /// Same as SIGTERM.
    Terminate,
}

/// Runs the control thread on the calling thread until the process should exit; returns the exit
/// code: [`EXIT_DRAINED`] after a completed SIGTERM drain, [`EXIT_FORCED`] after a second signal,
/// [`EXIT_STARTUP_FAILED`] if the control server cannot start.
pub fn run(cfg: ControlConfig, link: RuntimeLink) -> i32 {
    let listener = match bind(cfg.control_listen) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %cfg.control_listen, error = %e, "cannot listen for control HTTP");
            return EXIT_STARTUP_FAILED;
        }
    };
    serve(listener, cfg, link, ControlOptions::default(), None)
}

/// A control thread started with [`start`] / [`start_with`].
#[derive(Debug)]
pub struct ControlHandle {
    addr: SocketAddr,
    cmds: mpsc::UnboundedSender<ControlCmd>,
    done: crossbeam_channel::Receiver<i32>,
    code: Option<i32>,
    thread: Option<JoinHandle<()>>,
}

impl ControlHandle {
    /// The bound control address (the real port when started with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<local_addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Behaves like SIGTERM: the first call starts the drain, a second one exits at once.
    pub fn terminate(&self) {
        let _ = self.cmds.send(ControlCmd::Terminate);
    }

    /// Waits up to `timeout` for the control thread to finish; its exit code if it did.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<i32> {
        if self.code.is_none() {
            self.code = self.done.recv_timeout(timeout).ok();
        }
        if self.code.is_some() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        self.code
    }

    /// Waits for the control thread to finish and returns its exit code.
    pub fn wait(mut self) -> i32 {
        loop {
            if let Some(code) = self.wait_timeout(Duration::from_secs(3600)) {
                return code;
            }
        }
    }
}

impl Drop for ControlHandle {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            // Two terminations = immediate exit.
            self.terminate();
            self.terminate();
            let _ = t.join();
        }
    }
}

/// Starts the control thread on a new thread (thread name `mc-control`) with production timings
/// and SIGTERM/SIGINT handling, for a `main` that also has other threads to join.
pub fn start(cfg: ControlConfig, link: RuntimeLink) -> io::Result<ControlHandle> {
    start_with(cfg, link, ControlOptions::default())
}

/// Starts the control thread on a new thread. The listener is bound before this returns.
pub fn start_with(
    cfg: ControlConfig,
    link: RuntimeLink,
    opts: ControlOptions,
) -> io::Result<ControlHandle> {
    let listener = bind(cfg.control_listen)?;
    let addr = listener.local_addr()?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let thread = std::thread::Builder::new()
        .name("mc-control".into())
        .spawn(move || {
            let code = serve(listener, cfg, link, opts, Some(cmd_rx));
            let _ = done_tx.send(code);
        })?;
    Ok(ControlHandle {
        addr,
        cmds: cmd_tx,
        done: done_rx,
        code: None,
        thread: Some(thread),
    })
}

/// Length of the control listener's accept queue. A connection flood makes the kernel queue
/// newcomers faster than they are accepted for a moment; a short queue (std's 128) would drop
/// a probe's SYN then, and its retry comes a second later.
const ACCEPT_BACKLOG: i32 = 4096;

fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(ACCEPT_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn serve(
    listener: std::net::TcpListener,
    mut cfg: ControlConfig,
    link: RuntimeLink,
    opts: ControlOptions,
    cmds: Option<mpsc::UnboundedReceiver<ControlCmd>>,
) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("mc-control-blocking")
        // Shard waits are bounded by their timeouts; this bounds how many run at once.
        .max_blocking_threads(64)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the control runtime");
            return EXIT_STARTUP_FAILED;
        }
    };
    // The real port (when configured with port 0) is what the GC must be told.
    if let Ok(bound) = listener.local_addr() {
        cfg.control_listen = bound;
    }
    let (gc_tx, gc_rx) = crossbeam_channel::unbounded();
    let RuntimeLink { shards, events } = link;
    let shared = Arc::new(Shared::new(cfg, opts.timing, shards, gc_tx));
    let gc_shared = Arc::clone(&shared);
    let gc_thread = match std::thread::Builder::new()
        .name("mc-gc".into())
        .spawn(move || GcWorker::new(gc_shared, events, gc_rx).run())
    {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the GC client thread");
            return EXIT_STARTUP_FAILED;
        }
    };
    let code = rt.block_on(control_main(
        Arc::clone(&shared),
        listener,
        cmds,
        opts.handle_signals,
    ));

    // Let the GC client deliver the last meeting-ended notifications after a clean drain.
    let flush_until = (code == EXIT_DRAINED).then(|| Instant::now() + shared.timing.gc_flush);
    let _ = shared.gc_tx.send(GcCommand::Shutdown { flush_until });
    if let Some(until) = flush_until {
        let hard_stop = until + shared.cfg.gc_timeout + Duration::from_secs(1);
        while !gc_thread.is_finished() && Instant::now() < hard_stop {
            std::thread::sleep(Duration::from_millis(10));
        }
        if gc_thread.is_finished() {
            let _ = gc_thread.join();
        }
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    tracing::info!(code, "control thread finished");
    code
}

/// SIGTERM/SIGINT, or nothing when signals are not handled.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new(enabled: bool) -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        if !enabled {
            return Self {
                term: None,
                int: None,
            };
        }
        let open = |k: SignalKind, name: &str| match signal(k) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(signal = name, error = %e, "cannot install signal handler");
                None
            }
        };
        Self {
            term: open(SignalKind::terminate(), "SIGTERM"),
            int: open(SignalKind::interrupt(), "SIGINT"),
        }
    }

    async fn next(&mut self) -> &'static str {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            if let Some(sig) = s.as_mut() {
                if sig.recv().await.is_some() {
                    return;
                }
            }
            std::future::pending().await
        }
        tokio::select! {
            _ = recv(&mut self.term) => "SIGTERM",
            _ = recv(&mut self.int) => "SIGINT",
        }
    }
}

async fn next_cmd(cmds: &mut Option<mpsc::UnboundedReceiver<ControlCmd>>) -> ControlCmd {
    if let Some(rx) = cmds {
        if let Some(c) = rx.recv().await {
            return c;
        }
    }
    std::future::pending().await
}

/// Runs `f` on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "blocking control task failed");
            None
        }
    }
}

async fn control_main(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    mut cmds: Option<mpsc::UnboundedReceiver<ControlCmd>>,
    handle_signals: bool,
) -> i32 {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot use the control listener");
            return EXIT_STARTUP_FAILED;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            addr = %addr,
            shards = shared.pool.len(),
            gc = shared.gc_mode(),
            admin = shared.cfg.admin_token.is_some(),
            "control server listening"
        );
    }
    let server = tokio::spawn(http::accept_loop(listener, Arc::clone(&shared)));
    let poller = tokio::spawn(poll_shards(Arc::clone(&shared)));
    let mut signals = Signals::new(handle_signals);

    let cause = tokio::select! {
        s = signals.next() => s,
        _ = next_cmd(&mut cmds) => "terminate request",
    };
    tracing::info!(
        cause,
        drain_timeout_ms = shared.cfg.drain_timeout.as_millis() as u64,
        "drain started"
    );
    let code = {
        let drain = drain_to_exit(Arc::clone(&shared));
        tokio::pin!(drain);
        tokio::select! {
            code = &mut drain => code,
            s = signals.next() => {
                tracing::warn!(signal = s, "second signal: exiting without completing the drain");
                shared.pool.broadcast_no_reply(&ShardRequest::Shutdown);
                EXIT_FORCED
            }
            _ = next_cmd(&mut cmds) => {
                tracing::warn!("second terminate request: exiting without completing the drain");
                shared.pool.broadcast_no_reply(&ShardRequest::Shutdown);
                EXIT_FORCED
            }
        }
    };
    server.abort();
    poller.abort();
    code
}

/// Liveness ping every `health_poll` (non-blocking), then drain-order reconciliation if a shard
/// disagrees with the controller.
async fn poll_shards(shared: Arc<Shared>) {
    let mut outstanding = Vec::new();
    loop {
        shared.pool.ping(&mut outstanding);
        if !shared.draining_mismatches().is_empty() {
            let s = Arc::clone(&shared);
            blocking(move || s.reconcile_draining()).await;
        }
        tokio::time::sleep(shared.timing.health_poll).await;
    }
}

/// The SIGTERM drain: refuse new work, wait for meetings to end (or the deadline), end the rest,
/// wait for connections to close, stop the shards.
async fn drain_to_exit(shared: Arc<Shared>) -> i32 {
    let s = Arc::clone(&shared);
    blocking(move || s.begin_drain(DrainSource::Signal)).await;

    let deadline = Instant::now() + shared.cfg.drain_timeout;
    if migration::enabled(&shared) {
        // Move what can move; the rest continues below exactly as without migration.
        let s = Arc::clone(&shared);
        blocking(move || migration::migrate_all(&s, deadline)).await;
    }
    loop {
        let s = Arc::clone(&shared);
        let views = blocking(move || s.pool.refresh(s.timing.snapshot_timeout))
            .await
            .unwrap_or_default();
        let shards::Totals {
            meetings,
            participants,
            ..
        } = shards::totals(&views);
        let now = Instant::now();
        if meetings == 0 {
            tracing::info!("drain: every meeting has ended");
            break;
        }
        // A draining controller takes no joins (resumes of participants it still holds
        // excepted, and those count here), so a meeting without participants can never
        // have one again: waiting out its empty-meeting timeout only delays the exit.
        if participants == 0 {
            tracing::info!(
                meetings,
                "drain: no participant left; ending the empty meetings"
            );
            break;
        }
        if now >= deadline {
            tracing::info!(meetings, "drain timeout: ending the remaining meetings");
            break;
        }
        tokio::time::sleep(shared.timing.drain_poll.min(deadline - now)).await;
    }

    // Also catches a meeting created in a race with the drain order.
    let s = Arc::clone(&shared);
    let ended = blocking(move || {
        s.pool.fan_out(
            &ShardRequest::EndAll(EndReason::ControllerDraining),
            s.timing.request_timeout,
        )
    })
    .await
    .unwrap_or_default();
    let ended_total: usize = ended
        .iter()
        .filter_map(|r| match r {
            Ok(ShardReply::EndedAll(n)) => Some(*n),
            _ => None,
        })
        .sum();
    for (i, r) in ended.iter().enumerate() {
        if let Err(e) = r {
            tracing::warn!(shard = i, error = %e, "shard did not take the end-all order");
        }
    }
    tracing::info!(
        meetings = ended_total,
        "drain: meetings ended with controller_draining"
    );

    let close_deadline = Instant::now() + shared.timing.close_wait;
    loop {
        let s = Arc::clone(&shared);
        let views = blocking(move || s.pool.refresh(s.timing.snapshot_timeout))
            .await
            .unwrap_or_default();
        let connections = shards::totals(&views).connections;
        let now = Instant::now();
        if connections == 0 {
            break;
        }
        if now >= close_deadline {
            tracing::warn!(
                connections,
                "drain: connections still open; shutting down anyway"
            );
            break;
        }
        tokio::time::sleep(shared.timing.drain_poll.min(close_deadline - now)).await;
    }

    let s = Arc::clone(&shared);
    let stopped = blocking(move || {
        s.pool
            .fan_out(&ShardRequest::Shutdown, s.timing.request_timeout)
    })
    .await
    .unwrap_or_default();
    for (i, r) in stopped.iter().enumerate() {
        if let Err(e) = r {
            tracing::warn!(shard = i, error = %e, "shard did not confirm shutdown");
        }
    }
    tracing::info!("drain complete");
    EXIT_DRAINED
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(listen: &str, quic: &str) -> ControlConfig {
        ControlConfig {
            control_listen: listen.parse().unwrap(),
            gc_url: None,
            gc_token: Some("t".into()),
            gc_ca_certs: Vec::new(),
            gc_inbound_token: None,
            admin_token: Some("a".into()),
            mc_id: "mc-1".into(),
            region: "r".into(),
            advertise_quic: quic.into(),
            advertise_webtransport: String::new(),
            max_meetings: 1,
            max_participants: 1,
            drain_timeout: Duration::from_secs(1),
            gc_timeout: Duration::from_secs(1),
            version: "0".into(),
            shard_cpus: vec![],
        }
    }

    #[test]
    fn control_url_derivation() {
        assert_eq!(
            control_url(&cfg("10.0.0.5:8080", "x:1")),
            "http://10.0.0.5:8080"
        );
        assert_eq!(
            control_url(&cfg("0.0.0.0:8080", "mc1.example.net:4433")),
            "http://mc1.example.net:8080"
        );
        assert_eq!(
            control_url(&cfg("[::]:8080", "[2001:db8::1]:4433")),
            "http://[2001:db8::1]:8080"
        );
        assert_eq!(control_url(&cfg("[::1]:9000", "x:1")), "http://[::1]:9000");
        assert_eq!(
            control_url(&cfg("0.0.0.0:8080", "")),
            "http://127.0.0.1:8080"
        );
    }

    #[test]
    fn debug_redacts_tokens() {
        let s = format!("{:?}", cfg("127.0.0.1:1", "x:1"));
        assert!(!s.contains("\"t\"") && !s.contains("\"a\""), "{s}");
        assert!(s.contains("<redacted>"));
    }
}
