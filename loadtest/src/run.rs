//! Orchestration: load the key, raise limits, start the workers and the metrics sampler, print
//! progress every second, end the drain, merge the results.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crossbeam_channel::RecvTimeoutError;
use mc::core::token::TokenSigner;

use crate::accounting::{tally, ReceiverLog, SenderLedger};
use crate::cli::{KeySource, Settings, UsageError};
use crate::clock::Clock;
use crate::cpu::{self, ThreadUse};
use crate::hlog::IntervalLog;
use crate::kernel::UdpDrops;
use crate::metrics::{HttpUrl, ServerFigures};
use crate::plan::Plan;
use crate::report::{GeneratorReport, Report, ServerReport};
use crate::stats::{add_errors, Counters, ErrorCounts, Latencies, Percentiles, Tick};
use crate::worker::{self, Shared, WorkerInput, WorkerOutput};

/// Loads the token signer named by the settings.
pub fn load_signer(key: &KeySource) -> Result<TokenSigner, UsageError> {
    match key {
        KeySource::File { path, kid } => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| UsageError(format!("--signing-key {}: {e}", path.display())))?;
            TokenSigner::from_pkcs8_pem(&pem, kid)
                .map_err(|e| UsageError(format!("--signing-key {}: {e}", path.display())))
        }
        KeySource::DevDir(dir) => mc::dev::load_signer(dir).map_err(|e| {
            UsageError(format!(
                "no signing key in dev dir {} ({e}); start `mc serve --dev` first or pass --signing-key and --kid",
                dir.display()
            ))
        }),
    }
}

/// Per-second scrapes of `/metrics`: the mailbox depth peak and the latest value.
struct Sampler {
    stop: Arc<AtomicBool>,
    last_mailbox: Arc<AtomicU64>,
    peak_mailbox: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    handle: JoinHandle<()>,
}

impl Sampler {
    fn start(url: HttpUrl) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let last_mailbox = Arc::new(AtomicU64::new(0));
        let peak_mailbox = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let (s, l, p, e) = (
            stop.clone(),
            last_mailbox.clone(),
            peak_mailbox.clone(),
            errors.clone(),
        );
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let started = Instant::now();
                match ServerFigures::scrape(&url) {
                    Ok(f) => {
                        let depth = f.mailbox_max.max(0.0) as u64;
                        l.store(depth, Ordering::Relaxed);
                        p.fetch_max(depth, Ordering::Relaxed);
                    }
                    Err(_) => {
                        e.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let next = started + Duration::from_secs(1);
                while Instant::now() < next && !s.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        Self {
            stop,
            last_mailbox,
            peak_mailbox,
            errors,
            handle,
        }
    }
}

fn scrape_or_count(
    url: &HttpUrl,
    errors: &mut u64,
    quiet: bool,
    when: &str,
) -> Option<ServerFigures> {
    match ServerFigures::scrape(url) {
        Ok(f) => Some(f),
        Err(e) => {
            *errors += 1;
            if !quiet {
                eprintln!("metrics scrape {when} failed: {e}");
            }
            None
        }
    }
}

/// Runs the whole load test.
pub fn run(settings: Settings) -> anyhow::Result<Report> {
    let signer = Arc::new(load_signer(&settings.key).map_err(|e| anyhow::Error::new(Usage(e)))?);
    let plan = Plan::build(&settings);
    let threads = settings.threads;

    // One socket per `conns_per_socket` participants, plus slack for the runtime.
    let sockets: u64 = (0..threads)
        .map(|t| {
            let n = plan
                .participants
                .iter()
                .filter(|p| p.idx as usize % threads == t)
                .count();
            n.div_ceil(settings.conns_per_socket) as u64
        })
        .sum();
    let needed = sockets + 64 * threads as u64 + 64;
    let limit = crate::limits::raise_nofile(needed).context("reading RLIMIT_NOFILE")?;
    if limit < needed {
        return Err(anyhow::Error::new(Usage(UsageError(format!(
            "{needed} file descriptors needed but the limit is {limit}: raise it (`ulimit -n {needed}` \
             or LimitNOFILE=) or share sockets with --conns-per-socket"
        )))));
    }

    let metrics_url = match &settings.metrics_url {
        Some(u) => Some(HttpUrl::parse(u).map_err(|e| anyhow::Error::new(Usage(UsageError(e))))?),
        None => None,
    };
    let mut scrape_errors = 0u64;
    let before = metrics_url
        .as_ref()
        .and_then(|u| scrape_or_count(u, &mut scrape_errors, settings.quiet, "before the run"));
    let sampler = metrics_url.clone().map(Sampler::start);

    let drops_before = UdpDrops::read(settings.server.port());
    let settings = Arc::new(settings);
    let clock = Clock::new();
    let t0 = Instant::now() + Duration::from_millis(200);
    let mut hlog = match &settings.hlog {
        Some(path) => {
            let wall = std::time::UNIX_EPOCH + Duration::from_nanos(clock.unix_ns(t0));
            let comment = format!(
                "mc-loadtest {} over {} to {}",
                settings.scenario.name(),
                settings.transport.name(),
                settings.server
            );
            Some(IntervalLog::create(path, t0, wall, &comment).map_err(|e| {
                anyhow::Error::new(Usage(UsageError(format!(
                    "--hlog: cannot create {}: {e}",
                    path.display()
                ))))
            })?)
        }
        None => None,
    };
    let shared = Arc::new(Shared::default());
    let (tick_tx, tick_rx) = crossbeam_channel::unbounded::<Tick>();
    let meeting_ids = Arc::new(plan.meeting_ids.clone());
    let mut handles = Vec::new();
    for thread in 0..threads {
        let input = WorkerInput {
            thread,
            settings: settings.clone(),
            meeting_ids: meeting_ids.clone(),
            timeline: plan.timeline,
            rate: plan.rate,
            churn_per_thread: plan.churn_per_thread,
            participants: plan.for_thread(thread, threads),
            signer: signer.clone(),
            clock,
            t0,
            shared: shared.clone(),
            ticks: tick_tx.clone(),
        };
        let h = std::thread::Builder::new()
            .name(format!("lt-worker-{thread}"))
            .spawn(move || worker::run(input))
            .context("spawning a worker thread")?;
        handles.push(h);
    }
    drop(tick_tx);

    // Progress and phase control.
    let tl = plan.timeline;
    let mut last: Vec<Option<Tick>> = (0..threads).map(|_| None).collect();
    let mut live = Latencies::new();
    let mut prev = Counters::default();
    let mut next_print = t0 + Duration::from_secs(1);
    let mut window_scrape: Option<(ServerFigures, u64)> = None;
    let mut end_scrape: Option<(ServerFigures, u64)> = None;
    let mut window_started = false;
    let mut window_ended = false;
    // The generator's own CPU: process CPU time and deliveries at the window's edges, and each
    // worker's share of the last second (from its ticks, one per second).
    let mut gen_start: Option<(Duration, u64, Instant)> = None;
    let mut gen_end: Option<(Duration, u64, Instant)> = None;
    let mut busy = vec![0.0f64; threads];
    loop {
        match tick_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(t) => {
                if let Some(h) = &mut hlog {
                    h.add(&t.latencies);
                }
                take_tick(t, &mut last, &mut live, &mut busy);
                while let Ok(t) = tick_rx.try_recv() {
                    if let Some(h) = &mut hlog {
                        h.add(&t.latencies);
                    }
                    take_tick(t, &mut last, &mut live, &mut busy);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        if handles.iter().any(JoinHandle::is_finished) {
            // A worker failed early: stop the others and report what there is.
            shared.stop.store(true, Ordering::Relaxed);
            break;
        }
        if !window_started && now >= t0 + tl.window_start {
            window_started = true;
            gen_start = Some((
                cpu::process_cpu(),
                shared.delivered.load(Ordering::Relaxed),
                Instant::now(),
            ));
            if let Some(u) = &metrics_url {
                window_scrape =
                    scrape_or_count(u, &mut scrape_errors, settings.quiet, "at the window start")
                        .map(|f| (f, shared.delivered.load(Ordering::Relaxed)));
            }
        }
        if !window_ended && now >= t0 + tl.steady_end {
            window_ended = true;
            gen_end = Some((
                cpu::process_cpu(),
                shared.delivered.load(Ordering::Relaxed),
                Instant::now(),
            ));
            if let Some(u) = &metrics_url {
                end_scrape =
                    scrape_or_count(u, &mut scrape_errors, settings.quiet, "at the window end")
                        .map(|f| (f, shared.delivered.load(Ordering::Relaxed)));
            }
        }
        if now >= next_print {
            next_print += Duration::from_secs(1);
            if let Some(h) = &mut hlog {
                h.close_interval(now).map_err(|e| hlog_error(h, &e))?;
            }
            let mut total = Counters::default();
            let mut errors = ErrorCounts::new();
            for t in last.iter().flatten() {
                total.add(&t.counters);
                add_errors(&mut errors, &t.errors);
            }
            if !settings.quiet {
                let mailbox = sampler
                    .as_ref()
                    .map(|s| s.last_mailbox.load(Ordering::Relaxed).to_string())
                    .unwrap_or_else(|| "-".into());
                eprintln!(
                    "{}",
                    progress_line(
                        now.saturating_duration_since(t0),
                        &tl,
                        &total,
                        &prev,
                        &live,
                        &errors,
                        &format!("mailbox {mailbox}  {}", generator_busy(&busy)),
                    )
                );
            }
            prev = total;
        }
        if now >= t0 + tl.steady_end {
            let expected = shared.expected.load(Ordering::Relaxed);
            let delivered = shared.delivered.load(Ordering::Relaxed);
            let joining = shared.pending_joins.load(Ordering::Relaxed);
            if (delivered >= expected && joining == 0) || now >= t0 + tl.drain_end {
                shared.stop.store(true, Ordering::Relaxed);
                break;
            }
        }
    }
    shared.stop.store(true, Ordering::Relaxed);

    let mut outputs: Vec<WorkerOutput> = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    for h in handles {
        match h.join() {
            Ok(Ok(o)) => outputs.push(o),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(anyhow::anyhow!("a worker thread panicked")),
        }
    }
    if let Some(e) = failure {
        return Err(e.context("worker failed"));
    }
    if let Some(mut h) = hlog {
        // The workers' last reports: what they recorded after their last tick.
        while let Ok(t) = tick_rx.try_recv() {
            h.add(&t.latencies);
        }
        let path = h.path().display().to_string();
        h.finish(Instant::now())
            .map_err(|e| anyhow::anyhow!("--hlog: writing {path}: {e}"))?;
    }

    let mut latencies = Latencies::new();
    let mut counters = Counters::default();
    let mut errors = ErrorCounts::new();
    let mut ledgers: Vec<SenderLedger> = Vec::new();
    let mut receivers: Vec<ReceiverLog> = Vec::new();
    let thread_use: Vec<Option<ThreadUse>> = outputs.iter().map(|o| o.cpu).collect();
    for o in outputs {
        latencies.add(&o.window);
        counters.add(&o.counters);
        add_errors(&mut errors, &o.errors);
        ledgers.extend(o.ledgers);
        receivers.extend(o.receivers);
    }
    let tally = tally(&ledgers, &receivers);
    let kernel = UdpDrops::read(settings.server.port()).since(&drops_before);

    let server = match (&metrics_url, before) {
        (Some(url), Some(before)) => {
            let after = scrape_or_count(url, &mut scrape_errors, settings.quiet, "after the run");
            let (peak, sampler_errors) = match sampler {
                Some(s) => {
                    s.stop.store(true, Ordering::Relaxed);
                    let _ = s.handle.join();
                    (
                        s.peak_mailbox.load(Ordering::Relaxed) as f64,
                        s.errors.load(Ordering::Relaxed),
                    )
                }
                None => (0.0, 0),
            };
            after.map(|after| {
                let window = match (&window_scrape, &end_scrape) {
                    (Some((a, _)), Some((b, _))) => Some((a, b)),
                    _ => None,
                };
                let deliveries = match (&window_scrape, &end_scrape) {
                    (Some((_, a)), Some((_, b))) => b - a,
                    _ => 0,
                };
                ServerReport::from_scrapes(
                    &before,
                    &after,
                    window,
                    deliveries,
                    counters.joins_window,
                    peak,
                    scrape_errors + sampler_errors,
                )
            })
        }
        _ => {
            if let Some(s) = sampler {
                s.stop.store(true, Ordering::Relaxed);
                let _ = s.handle.join();
            }
            None
        }
    };

    Ok(Report {
        settings: Arc::unwrap_or_clone(settings),
        planned: plan.participants.len() as u64,
        window_secs: tl.window().as_secs_f64(),
        counters,
        latencies,
        tally,
        errors,
        server,
        kernel,
        generator: GeneratorReport::new(gen_start, gen_end, thread_use),
    })
}

/// A failed write of the interval log ends the run: the log would have a gap.
fn hlog_error(h: &IntervalLog, e: &std::io::Error) -> anyhow::Error {
    anyhow::anyhow!("--hlog: writing {}: {e}", h.path().display())
}

/// A usage problem found after parsing (e.g. the key cannot be loaded): exit code 64.
#[derive(Debug)]
pub struct Usage(pub UsageError);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Usage {}

/// Keeps a worker's latest tick; its CPU time since the previous one (a second earlier) is its
/// busy share.
fn take_tick(t: Tick, last: &mut [Option<Tick>], live: &mut Latencies, busy: &mut [f64]) {
    live.add(&t.latencies);
    let i = t.thread;
    let before = last[i].as_ref().map_or(Duration::ZERO, |p| p.cpu);
    busy[i] = t.cpu.saturating_sub(before).as_secs_f64();
    last[i] = Some(t);
}

/// The busiest worker's CPU share of the last second, flagged above [`cpu::SATURATED`].
fn generator_busy(busy: &[f64]) -> String {
    let gen = busy.iter().copied().fold(0.0f64, f64::max);
    let flag = if gen > cpu::SATURATED {
        " GENERATOR SATURATED"
    } else {
        ""
    };
    format!("gen cpu {:>3.0}%{flag}", gen * 100.0)
}

fn progress_line(
    elapsed: Duration,
    tl: &crate::plan::Timeline,
    total: &Counters,
    prev: &Counters,
    live: &Latencies,
    errors: &ErrorCounts,
    tail: &str,
) -> String {
    let phase = if elapsed < tl.steady_start {
        "ramp"
    } else if elapsed < tl.window_start {
        "warmup"
    } else if elapsed < tl.steady_end {
        "measure"
    } else {
        "drain"
    };
    let d = Percentiles::of(&live.delivery);
    let j = Percentiles::of(&live.join);
    let errs: u64 = errors.values().sum();
    format!(
        "[{:>4}s {phase:<7}] joined {:>6}  sent {:>7}/s  delivered {:>8}/s  joins {:>5}/s  \
         delivery p99 {:>8.3} ms max {:>8.3} ms  join p99 {:>8.3} ms  gaps {}  errors {}  {}",
        elapsed.as_secs(),
        total.joined_now,
        total.sent.saturating_sub(prev.sent),
        total.delivered.saturating_sub(prev.delivered),
        total.joins.saturating_sub(prev.joins),
        d.p99 as f64 / 1000.0,
        d.max as f64 / 1000.0,
        j.p99 as f64 / 1000.0,
        total.gaps,
        errs,
        tail,
    )
}
