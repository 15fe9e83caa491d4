//! Process wiring for the `mc` subcommands: configuration → dev material → keys → shards →
//! control thread. Everything that can be wrong in the configuration is checked here, before
//! a socket is bound, and reported as one line with exit code 64.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{
    parse_duration, read_secret, AdminArgs, Config, ConfigError, LogFormat, ServeArgs, TokenArgs,
    EXIT_USAGE,
};
use crate::control::{self, ControlConfig};
use crate::core::binding::BindingKey;
use crate::core::ids::{MeetingId, ShardId};
use crate::core::protocol::Role;
use crate::core::shard::ShardConfig;
use crate::core::token::TokenVerifier;
use crate::quic::endpoint::EndpointConfig;
use crate::runtime::{self, cpus, RuntimeConfig};

fn usage(e: impl std::fmt::Display) -> i32 {
    eprintln!("mc: {e}");
    EXIT_USAGE
}

/// Installs the log subscriber. `level` was checked by [`Config::resolve`]; a filter that
/// still fails to parse is a usage error, never a silent default.
fn init_logging(format: LogFormat, level: &str) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(level)
        .map_err(|e| format!("--log-level: `{level}` is not a log filter: {e}"))?;
    // Through a queue: a thread that logs never waits for stderr (crate::logging).
    let queue = crate::logging::install_stderr()
        .map_err(|e| format!("cannot start the log writer thread: {e}"))?;
    // Colours only for a terminal: a file or a log collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(queue);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
    Ok(())
}

/// `mc serve`.
pub fn serve(args: ServeArgs) -> i32 {
    let mut cfg = match Config::resolve(args) {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    if let Err(e) = init_logging(cfg.log_format, &cfg.log_level) {
        return usage(e);
    }
    if cfg.dev {
        let material = match crate::dev::ensure_dev_material(&cfg.dev_dir, SystemTime::now(), &[]) {
            Ok(m) => m,
            Err(e) => return usage(format!("--dev: {e}")),
        };
        cfg.tls_cert.get_or_insert(material.cert_pem_path.clone());
        cfg.tls_key.get_or_insert(material.key_pem_path.clone());
        cfg.jwks.get_or_insert(material.jwks_path.clone());
        cfg.binding_secret_file
            .get_or_insert(material.binding_secret_path.clone());
        println!("mc dev mode: material in {}", material.dir.display());
        println!(
            "  certificate SHA-256 (serverCertificateHashes): {}",
            material.cert_sha256_hex
        );
        println!(
            "  certificate SHA-256 (base64): {}",
            material.cert_sha256_b64
        );
        println!(
            "  mint a token:  mc token --dev-dir {} --meeting standup --role host",
            material.dir.display()
        );
    }
    match build_and_run(cfg) {
        Ok(code) => code,
        Err(Failure::Usage(e)) => usage(e),
        Err(Failure::Start(e)) => {
            eprintln!("mc: {e}");
            tracing::error!(error = %e, "startup failed");
            1
        }
    }
}

enum Failure {
    Usage(String),
    Start(String),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Usage(e.0)
    }
}

fn build_and_run(cfg: Config) -> Result<i32, Failure> {
    let path_str = |p: &Option<std::path::PathBuf>, flag: &str| -> Result<String, Failure> {
        p.as_ref()
            .map(|p| p.display().to_string())
            .ok_or_else(|| Failure::Usage(format!("--{flag} is required (or use --dev)")))
    };
    let tls_cert = path_str(&cfg.tls_cert, "tls-cert")?;
    let tls_key = path_str(&cfg.tls_key, "tls-key")?;
    let jwks_path = path_str(&cfg.jwks, "jwks")?;
    let jwks = std::fs::read_to_string(&jwks_path)
        .map_err(|e| Failure::Usage(format!("--jwks: cannot read {jwks_path}: {e}")))?;
    let verifier = TokenVerifier::from_jwks_json(&jwks, cfg.clock_skew.as_secs())
        .map_err(|e| Failure::Usage(format!("--jwks: {jwks_path}: {e}")))?;
    let binding_path = cfg
        .binding_secret_file
        .clone()
        .ok_or_else(|| Failure::Usage("--binding-secret-file is required (or use --dev)".into()))?;
    let secret = std::fs::read(&binding_path).map_err(|e| {
        Failure::Usage(format!(
            "--binding-secret-file: cannot read {}: {e}",
            binding_path.display()
        ))
    })?;
    let binding = BindingKey::from_file_contents(&secret)
        .map_err(|e| Failure::Usage(format!("--binding-secret-file: {e}")))?;
    let secret_opt =
        |p: &Option<std::path::PathBuf>, flag: &str| -> Result<Option<String>, Failure> {
            match p {
                Some(p) => Ok(Some(read_secret(flag, p)?)),
                None => Ok(None),
            }
        };
    let gc_token = secret_opt(&cfg.gc_token_file, "gc-token-file")?;
    let gc_inbound_token = secret_opt(&cfg.gc_inbound_token_file, "gc-inbound-token-file")?;
    let admin_token = secret_opt(&cfg.admin_token_file, "admin-token-file")?;
    let gc_ca_certs = match &cfg.gc_ca_file {
        None => Vec::new(),
        Some(p) => {
            let pem = std::fs::read(p).map_err(|e| {
                Failure::Usage(format!("--gc-ca-file: cannot read {}: {e}", p.display()))
            })?;
            control::parse_ca_certs(&pem)
                .map_err(|e| Failure::Usage(format!("--gc-ca-file: {}: {e}", p.display())))?
        }
    };

    let usable = cpus::usable_cpus();
    let chosen = cpus::select(&usable, cfg.cpus.as_deref(), cfg.shards)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let shards = chosen.len();
    tracing::info!(usable = ?usable, chosen = ?chosen, shards, "CPU placement");

    let per_shard_meetings = cfg.max_meetings.div_ceil(shards).max(1);
    let rt_cfg = RuntimeConfig {
        cpus: chosen.clone(),
        pin: true,
        listen: cfg.listen,
        io_memory: cfg.io_memory,
        spin_before_park: cfg.spin_before_park,
        turn: crate::runtime::executor::TurnLimits {
            max_datagrams: cfg.turn_max_datagrams,
            budget: cfg.turn_budget,
            max_queue_delay: cfg.max_queue_delay,
        },
        endpoint: EndpointConfig {
            shard: ShardId(0),
            shard_count: shards as u16,
            node_id: 0,
            tls_cert,
            tls_key,
            idle_timeout: cfg.idle_timeout,
            keep_alive: cfg.keep_alive,
            max_connections: cfg.max_connections_per_shard,
            allowed_origins: cfg.allowed_origins.clone(),
            retry_always: cfg.retry,
            retry_threshold: cfg.retry_handshake_threshold,
            max_handshakes: cfg.max_handshakes_per_shard,
            retry_key: crate::quic::retry::RetryKey::new(rand::random()),
        },
        core: ShardConfig {
            shard: ShardId(0),
            shard_count: shards as u16,
            mailbox_size: cfg.mailbox_size,
            slow_consumer_drops: cfg.slow_consumer_drops,
            resume_window: cfg.resume_window,
            empty_meeting_timeout: cfg.empty_meeting_timeout,
            join_timeout: cfg.join_timeout,
            max_participants_per_meeting: cfg.max_participants_per_meeting,
            max_meetings: per_shard_meetings,
            max_participants: cfg.max_participants.div_ceil(shards).max(1),
            gc_mode: cfg.gc_url.is_some(),
            rate_limit: cfg.rate_limit,
            rate_burst: cfg.rate_burst,
            flood_strikes: 50,
            test_hooks: cfg.enable_test_hooks,
        },
        control_mailbox: cfg.mailbox_size.max(64),
        cid_steering: !cfg.disable_cid_steering,
    };
    let rt = runtime::start(rt_cfg, Arc::new(verifier), Arc::new(binding))
        .map_err(|e| Failure::Start(e.to_string()))?;
    let quic_addr = rt.local_addr;
    let advertise_quic = cfg
        .advertise_quic
        .clone()
        .unwrap_or_else(|| quic_addr.to_string());
    let advertise_wt = cfg
        .advertise_webtransport
        .clone()
        .unwrap_or_else(|| format!("https://{quic_addr}"));
    let ccfg = ControlConfig {
        control_listen: cfg.control_listen,
        gc_url: cfg.gc_url.clone(),
        gc_token,
        gc_ca_certs,
        gc_inbound_token,
        admin_token,
        mc_id: cfg.mc_id.clone(),
        region: cfg.region.clone(),
        advertise_quic,
        advertise_webtransport: advertise_wt,
        max_meetings: cfg.max_meetings,
        max_participants: cfg.max_participants,
        drain_timeout: cfg.drain_timeout,
        gc_timeout: cfg.gc_timeout,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        shard_cpus: chosen.iter().map(|c| Some(*c)).collect(),
    };
    let handle = control::start(ccfg, rt.link).map_err(|e| {
        Failure::Start(format!(
            "cannot serve control HTTP on {}: {e}",
            cfg.control_listen
        ))
    })?;
    println!(
        "listening quic={quic_addr} control={} shards={shards} cpus={chosen:?}",
        handle.local_addr()
    );
    tracing::info!(quic = %quic_addr, control = %handle.local_addr(), shards, mc_id = %cfg.mc_id, "mc serving");
    let code = handle.wait();
    // Shards stop after the control thread's Shutdown; never let a stuck one keep the
    // process alive past the drain (the exit code is already decided).
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    std::thread::spawn(move || {
        for t in rt.threads {
            let _ = t.join();
        }
        let _ = done_tx.send(());
    });
    if done_rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .is_err()
    {
        tracing::warn!("a shard did not stop within 5 s of shutdown; exiting anyway");
    }
    tracing::info!(code, "mc exiting");
    Ok(code)
}

/// `mc token`.
pub fn token(args: TokenArgs) -> i32 {
    let dir = args.dev_dir.unwrap_or_else(crate::dev::default_dev_dir);
    if let Err(e) = MeetingId::parse(&args.meeting) {
        return usage(format!("--meeting: {e}"));
    }
    let role = match args.role.as_str() {
        "host" => Role::Host,
        "participant" => Role::Participant,
        other => return usage(format!("--role: `{other}` must be host or participant")),
    };
    let ttl = match parse_duration(&args.ttl) {
        Ok(d) if d >= Duration::from_secs(1) => d,
        Ok(_) => return usage("--ttl: must be at least 1s"),
        Err(e) => return usage(format!("--ttl: {e}")),
    };
    let signer = match crate::dev::load_signer(&dir) {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let sub = args
        .sub
        .unwrap_or_else(|| format!("user-{:08x}", rand::random::<u32>()));
    println!(
        "{}",
        crate::dev::mint_token(&signer, &args.meeting, role, &sub, ttl.as_secs(), now)
    );
    0
}

/// `mc admin`.
pub fn admin(args: AdminArgs) -> i32 {
    let token = match read_secret("token-file", &args.token_file) {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    let timeout = match parse_duration(&args.timeout) {
        Ok(d) => d,
        Err(e) => return usage(format!("--timeout: {e}")),
    };
    let output = if args.json {
        control::AdminOutput::Json
    } else {
        control::AdminOutput::Table
    };
    control::admin_cli(&args.url, &token, args.verb, timeout, output)
}
