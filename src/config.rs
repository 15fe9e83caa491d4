//! Command line, environment and config file.
//!
//! Every `serve` knob is a flag, an `MC_*` environment variable and a key of the TOML file
//! given with `--config`; precedence is flag > env > file > default. The result is validated
//! before anything is bound: a bad value is one clear line and exit code 64 (`EX_USAGE`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

/// `EX_USAGE`: the exit code of a bad flag, environment variable or config file.
pub const EXIT_USAGE: i32 = 64;
/// Default of `--max-queue-delay` (see docs/performance.md, "Overload").
pub const DEFAULT_MAX_QUEUE_DELAY: std::time::Duration = std::time::Duration::from_millis(20);
/// Default of `--turn-budget` (see docs/performance.md, "Batching").
pub const DEFAULT_TURN_BUDGET: std::time::Duration = std::time::Duration::from_millis(16);
/// Default of `--turn-max-datagrams`.
pub const DEFAULT_TURN_MAX_DATAGRAMS: usize = 8192;

/// A configuration error: printed as one line, exit code 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// `mc`: thread-per-core sharded meeting controller.
#[derive(Debug, Parser)]
#[command(name = "mc", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the meeting controller.
    Serve(Box<ServeArgs>),
    /// Mint a meeting token with the development signing key (written by `serve --dev`).
    Token(TokenArgs),
    /// Call the admin API of a running controller.
    Admin(AdminArgs),
}

/// `mc token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Meeting id the token is for.
    #[arg(long)]
    pub meeting: String,
    /// Role: host or participant.
    #[arg(long, default_value = "participant")]
    pub role: String,
    /// User id (`sub`); random when absent.
    #[arg(long)]
    pub sub: Option<String>,
    /// Validity, e.g. `1h`.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// Development directory holding the signing key.
    #[arg(long, env = "MC_DEV_DIR")]
    pub dev_dir: Option<PathBuf>,
}

/// `mc admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Control URL of the controller.
    #[arg(long, env = "MC_ADMIN_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// File holding the admin bearer token.
    #[arg(long, env = "MC_ADMIN_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// Request timeout.
    #[arg(long, default_value = "5s")]
    pub timeout: String,
    /// Print the controller's JSON answer instead of a table (`list`, `shards`; the other
    /// verbs always print JSON).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub verb: AdminVerbArg,
}

/// `mc admin` verbs.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminVerbArg {
    /// List meetings.
    List,
    /// Show one meeting with its participants.
    Show {
        /// Meeting id.
        id: String,
    },
    /// End a meeting (`meeting_ended{ended_by_admin}`; the GC is told).
    End {
        /// Meeting id.
        id: String,
    },
    /// Stop taking new meetings and joins.
    Drain,
    /// Resume taking new meetings and joins.
    Undrain,
    /// Force a re-registration with the GC.
    Reregister,
    /// Per-shard figures.
    Shards,
    /// Move a live meeting to another controller (participants follow; see
    /// docs/control-plane.md "Meeting migration").
    Migrate {
        /// Meeting id.
        id: String,
        /// Target controller id (default: the GC chooses).
        #[arg(long)]
        to: Option<String>,
    },
}

/// `mc serve` flags. Every value is optional here so the file and defaults can fill it.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML config file (see config/mc.toml).
    #[arg(help_heading = "Other", long, env = "MC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Development mode: self-signed certificate, generated keys, no files needed.
    #[arg(help_heading = "TLS, keys and development mode", long, env = "MC_DEV")]
    pub dev: bool,
    /// Directory for development material.
    #[arg(
        help_heading = "TLS, keys and development mode",
        long,
        env = "MC_DEV_DIR"
    )]
    pub dev_dir: Option<PathBuf>,
    /// UDP address for QUIC and WebTransport [default: 0.0.0.0:4433].
    #[arg(help_heading = "Network", long, env = "MC_LISTEN")]
    pub listen: Option<String>,
    /// TCP address of the control HTTP server [default: 0.0.0.0:8080; 127.0.0.1:8080 with
    /// --dev].
    #[arg(help_heading = "Network", long, env = "MC_CONTROL_LISTEN")]
    pub control_listen: Option<String>,
    /// Number of shards [default: one per usable CPU].
    #[arg(help_heading = "Shards and CPUs", long, env = "MC_SHARDS")]
    pub shards: Option<String>,
    /// CPUs to pin shards to, e.g. `0-3,6` [default: the process's affinity ∩ online CPUs].
    #[arg(help_heading = "Shards and CPUs", long, env = "MC_CPUS")]
    pub cpus: Option<String>,
    /// glommio io_memory per shard executor, bytes [default: 1048576].
    #[arg(help_heading = "Shards and CPUs", long, env = "MC_IO_MEMORY")]
    pub io_memory: Option<String>,
    /// How long an idle shard polls for work before it sleeps, 0 to sleep at once (trades CPU
    /// for wake-up latency; for dedicated cores) [default: 0s].
    #[arg(help_heading = "Shards and CPUs", long, env = "MC_SPIN_BEFORE_PARK")]
    pub spin_before_park: Option<String>,
    /// Overload shedding: datagrams that waited longer than this in a shard's UDP receive
    /// queue are dropped unread, so latency stays bounded past the knee; 0 to never drop
    /// [default: 20ms].
    #[arg(help_heading = "Shards and CPUs", long, env = "MC_MAX_QUEUE_DELAY")]
    pub max_queue_delay: Option<String>,
    /// Longest a shard keeps reading its socket before it flushes: longer turns coalesce more
    /// frames per packet under load (less CPU per delivery), at up to this much added latency
    /// [default: 16ms].
    #[arg(help_heading = "Shards and CPUs", long, env = "MC_TURN_BUDGET")]
    pub turn_budget: Option<String>,
    /// Most datagrams a shard reads before it flushes [default: 8192].
    #[arg(help_heading = "Shards and CPUs", long, env = "MC_TURN_MAX_DATAGRAMS")]
    pub turn_max_datagrams: Option<String>,
    /// TLS certificate chain (PEM).
    #[arg(
        help_heading = "TLS, keys and development mode",
        long,
        env = "MC_TLS_CERT"
    )]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(
        help_heading = "TLS, keys and development mode",
        long,
        env = "MC_TLS_KEY"
    )]
    pub tls_key: Option<PathBuf>,
    /// JWKS file with the Ed25519 keys meeting tokens are signed with.
    #[arg(help_heading = "TLS, keys and development mode", long, env = "MC_JWKS")]
    pub jwks: Option<PathBuf>,
    /// Bound of every queue (inbox, per-connection outbound) [default: 1024].
    #[arg(help_heading = "Limits", long, env = "MC_MAILBOX_SIZE")]
    pub mailbox_size: Option<String>,
    /// QUIC idle timeout [default: 30s].
    #[arg(help_heading = "Timeouts", long, env = "MC_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// Server keep-alive (PING) interval, 0 to disable [default: 10s].
    #[arg(help_heading = "Timeouts", long, env = "MC_KEEP_ALIVE")]
    pub keep_alive: Option<String>,
    /// Connections per shard [default: 10000].
    #[arg(help_heading = "Limits", long, env = "MC_MAX_CONNECTIONS_PER_SHARD")]
    pub max_connections_per_shard: Option<String>,
    /// How long a dropped participant is kept for resume [default: 30s].
    #[arg(help_heading = "Timeouts", long, env = "MC_RESUME_WINDOW")]
    pub resume_window: Option<String>,
    /// How long an empty meeting is kept [default: 60s].
    #[arg(help_heading = "Timeouts", long, env = "MC_EMPTY_MEETING_TIMEOUT")]
    pub empty_meeting_timeout: Option<String>,
    /// How long a connection may go without joining [default: 10s].
    #[arg(help_heading = "Timeouts", long, env = "MC_JOIN_TIMEOUT")]
    pub join_timeout: Option<String>,
    /// Accepted clock skew for token `iat` [default: 60s].
    #[arg(help_heading = "Timeouts", long, env = "MC_CLOCK_SKEW")]
    pub clock_skew: Option<String>,
    /// Participants per meeting [default: 1000].
    #[arg(help_heading = "Limits", long, env = "MC_MAX_PARTICIPANTS_PER_MEETING")]
    pub max_participants_per_meeting: Option<String>,
    /// Meetings per controller [default: 10000].
    #[arg(help_heading = "Limits", long, env = "MC_MAX_MEETINGS")]
    pub max_meetings: Option<String>,
    /// Participants per controller [default: 100000].
    #[arg(help_heading = "Limits", long, env = "MC_MAX_PARTICIPANTS")]
    pub max_participants: Option<String>,
    /// Drops to one participant before it is disconnected as a slow consumer [default: 64].
    #[arg(help_heading = "Limits", long, env = "MC_SLOW_CONSUMER_DROPS")]
    pub slow_consumer_drops: Option<String>,
    /// Sustained messages per second per connection [default: 50].
    #[arg(help_heading = "Limits", long, env = "MC_RATE_LIMIT")]
    pub rate_limit: Option<String>,
    /// Message burst per connection [default: 100].
    #[arg(help_heading = "Limits", long, env = "MC_RATE_BURST")]
    pub rate_burst: Option<String>,
    /// Log format: json or text [default: json, text with --dev].
    #[arg(help_heading = "Logging", long, env = "MC_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. `info` or `mc=debug` [default: RUST_LOG if set, else info].
    #[arg(help_heading = "Logging", long, env = "MC_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Global Controller base URL; absent = standalone.
    #[arg(help_heading = "GC and control plane", long, env = "MC_GC_URL")]
    pub gc_url: Option<String>,
    /// File with the bearer token for calls to the GC.
    #[arg(help_heading = "GC and control plane", long, env = "MC_GC_TOKEN_FILE")]
    pub gc_token_file: Option<PathBuf>,
    /// PEM file of the CA certificate(s) an https:// GC's certificate is checked against,
    /// instead of the public web roots.
    #[arg(help_heading = "GC and control plane", long, env = "MC_GC_CA_FILE")]
    pub gc_ca_file: Option<PathBuf>,
    /// File with the bearer token the GC uses to call us.
    #[arg(
        help_heading = "GC and control plane",
        long,
        env = "MC_GC_INBOUND_TOKEN_FILE"
    )]
    pub gc_inbound_token_file: Option<PathBuf>,
    /// File with the admin API bearer token; absent = admin API disabled.
    #[arg(
        help_heading = "GC and control plane",
        long,
        env = "MC_ADMIN_TOKEN_FILE"
    )]
    pub admin_token_file: Option<PathBuf>,
    /// File with the resume binding-token secret (≥ 32 bytes).
    #[arg(
        help_heading = "TLS, keys and development mode",
        long,
        env = "MC_BINDING_SECRET_FILE"
    )]
    pub binding_secret_file: Option<PathBuf>,
    /// Controller id reported to the GC [default: hostname].
    #[arg(help_heading = "GC and control plane", long, env = "MC_MC_ID")]
    pub mc_id: Option<String>,
    /// Region reported to the GC [default: local].
    #[arg(help_heading = "GC and control plane", long, env = "MC_REGION")]
    pub region: Option<String>,
    /// QUIC endpoint clients should use, e.g. `mc-1.example.com:4433`.
    #[arg(help_heading = "GC and control plane", long, env = "MC_ADVERTISE_QUIC")]
    pub advertise_quic: Option<String>,
    /// WebTransport URL clients should use, e.g. `https://mc-1.example.com:4433`.
    #[arg(help_heading = "WebTransport", long, env = "MC_ADVERTISE_WEBTRANSPORT")]
    pub advertise_webtransport: Option<String>,
    /// How long a drain waits for meetings to end [default: 60s].
    #[arg(help_heading = "GC and control plane", long, env = "MC_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<String>,
    /// Timeout of every GC request [default: 2s].
    #[arg(help_heading = "GC and control plane", long, env = "MC_GC_TIMEOUT")]
    pub gc_timeout: Option<String>,
    /// Origins allowed to open WebTransport sessions, comma separated, `*` for any
    /// [default: any with --dev, none otherwise].
    #[arg(help_heading = "WebTransport", long, env = "MC_ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,
    /// Always validate client addresses with a QUIC Retry before the handshake.
    #[arg(help_heading = "Limits", long, env = "MC_RETRY")]
    pub retry: bool,
    /// Handshakes in progress per shard above which Retry is required [default: 256].
    #[arg(help_heading = "Limits", long, env = "MC_RETRY_HANDSHAKE_THRESHOLD")]
    pub retry_handshake_threshold: Option<String>,
    /// Handshakes in progress per shard above which new ones are dropped [default: 4096].
    #[arg(help_heading = "Limits", long, env = "MC_MAX_HANDSHAKES_PER_SHARD")]
    pub max_handshakes_per_shard: Option<String>,
    /// Test-only hooks (a `message` with a magic payload panics its meeting).
    #[arg(
        help_heading = "Other",
        long,
        env = "MC_ENABLE_TEST_HOOKS",
        hide = true
    )]
    pub enable_test_hooks: bool,
    /// Do not attach the kernel CID-steering program (datagrams are then spread by 4-tuple
    /// and forwarded between shards in user space). For diagnosis and tests.
    #[arg(long, env = "MC_DISABLE_CID_STEERING", hide = true)]
    pub disable_cid_steering: bool,
}

/// The `[serve]`-level keys of the TOML file (same names as the flags, with `_`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    dev: Option<bool>,
    dev_dir: Option<PathBuf>,
    listen: Option<String>,
    control_listen: Option<String>,
    shards: Option<toml::Value>,
    cpus: Option<String>,
    io_memory: Option<toml::Value>,
    spin_before_park: Option<String>,
    max_queue_delay: Option<String>,
    turn_budget: Option<String>,
    turn_max_datagrams: Option<toml::Value>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    jwks: Option<PathBuf>,
    mailbox_size: Option<toml::Value>,
    idle_timeout: Option<String>,
    keep_alive: Option<String>,
    max_connections_per_shard: Option<toml::Value>,
    resume_window: Option<String>,
    empty_meeting_timeout: Option<String>,
    join_timeout: Option<String>,
    clock_skew: Option<String>,
    max_participants_per_meeting: Option<toml::Value>,
    max_meetings: Option<toml::Value>,
    max_participants: Option<toml::Value>,
    slow_consumer_drops: Option<toml::Value>,
    rate_limit: Option<toml::Value>,
    rate_burst: Option<toml::Value>,
    log_format: Option<String>,
    log_level: Option<String>,
    gc_url: Option<String>,
    gc_token_file: Option<PathBuf>,
    gc_ca_file: Option<PathBuf>,
    gc_inbound_token_file: Option<PathBuf>,
    admin_token_file: Option<PathBuf>,
    binding_secret_file: Option<PathBuf>,
    mc_id: Option<String>,
    region: Option<String>,
    advertise_quic: Option<String>,
    advertise_webtransport: Option<String>,
    drain_timeout: Option<String>,
    gc_timeout: Option<String>,
    allowed_origins: Option<String>,
    retry: Option<bool>,
    retry_handshake_threshold: Option<toml::Value>,
    max_handshakes_per_shard: Option<toml::Value>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable lines (development).
    Text,
}

/// The validated `serve` configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Development mode.
    pub dev: bool,
    /// Development material directory.
    pub dev_dir: PathBuf,
    /// QUIC/WebTransport UDP address.
    pub listen: SocketAddr,
    /// Control HTTP address.
    pub control_listen: SocketAddr,
    /// Requested shard count.
    pub shards: Option<usize>,
    /// Requested CPUs.
    pub cpus: Option<Vec<usize>>,
    /// glommio io_memory per executor.
    pub io_memory: usize,
    /// How long an idle shard polls before it sleeps (zero = sleep at once).
    pub spin_before_park: Duration,
    /// Datagrams older than this in a shard's receive queue are dropped unread (zero: never).
    pub max_queue_delay: Duration,
    /// Longest a socket turn reads before it flushes.
    pub turn_budget: Duration,
    /// Most datagrams a socket turn reads before it flushes.
    pub turn_max_datagrams: usize,
    /// TLS certificate (None only with `dev`, filled in by the dev setup).
    pub tls_cert: Option<PathBuf>,
    /// TLS key.
    pub tls_key: Option<PathBuf>,
    /// JWKS path.
    pub jwks: Option<PathBuf>,
    /// Queue bound.
    pub mailbox_size: usize,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// Keep-alive interval (zero = off).
    pub keep_alive: Duration,
    /// Connections per shard.
    pub max_connections_per_shard: usize,
    /// Resume window.
    pub resume_window: Duration,
    /// Empty meeting timeout.
    pub empty_meeting_timeout: Duration,
    /// Join timeout.
    pub join_timeout: Duration,
    /// Token clock skew.
    pub clock_skew: Duration,
    /// Participants per meeting.
    pub max_participants_per_meeting: usize,
    /// Meetings per controller.
    pub max_meetings: usize,
    /// Participants per controller.
    pub max_participants: usize,
    /// Slow-consumer threshold.
    pub slow_consumer_drops: u32,
    /// Messages per second per connection.
    pub rate_limit: f64,
    /// Burst per connection.
    pub rate_burst: f64,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// GC base URL.
    pub gc_url: Option<String>,
    /// GC token file.
    pub gc_token_file: Option<PathBuf>,
    /// CA certificates for an https:// GC (`None`: the public web roots).
    pub gc_ca_file: Option<PathBuf>,
    /// Inbound GC token file.
    pub gc_inbound_token_file: Option<PathBuf>,
    /// Admin token file.
    pub admin_token_file: Option<PathBuf>,
    /// Binding secret file.
    pub binding_secret_file: Option<PathBuf>,
    /// Controller id.
    pub mc_id: String,
    /// Region.
    pub region: String,
    /// Advertised QUIC endpoint.
    pub advertise_quic: Option<String>,
    /// Advertised WebTransport URL.
    pub advertise_webtransport: Option<String>,
    /// Drain timeout.
    pub drain_timeout: Duration,
    /// GC request timeout.
    pub gc_timeout: Duration,
    /// WebTransport origins (`None` = any).
    pub allowed_origins: Option<Vec<String>>,
    /// Always require QUIC address validation.
    pub retry: bool,
    /// Handshakes in progress per shard above which Retry is required.
    pub retry_handshake_threshold: usize,
    /// Handshakes in progress per shard above which new ones are dropped.
    pub max_handshakes_per_shard: usize,
    /// Test hooks.
    pub enable_test_hooks: bool,
    /// Skip the reuseport steering program.
    pub disable_cid_steering: bool,
}

/// Parses a duration like `30s`, `500ms`, `2m`, `1h`, `1m30s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("`{s}` is not a duration (use e.g. 30s, 500ms, 2m)"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{s}` is out of range"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "us" => Duration::from_micros(n),
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => {
                return Err(format!(
                    "`{s}` has an unknown unit `{unit}` (use us, ms, s, m, h)"
                ))
            }
        };
        total = total.saturating_add(d);
    }
    Ok(total)
}

/// Parses a CPU list like `0-3,6`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let a: usize = a
            .parse()
            .map_err(|_| format!("`{s}` is not a CPU list (e.g. 0-3,6)"))?;
        let b: usize = b
            .parse()
            .map_err(|_| format!("`{s}` is not a CPU list (e.g. 0-3,6)"))?;
        if a > b || b > 4095 {
            return Err(format!("`{part}` is not a valid CPU range"));
        }
        cpus.extend(a..=b);
    }
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() {
        return Err("the CPU list is empty".into());
    }
    Ok(cpus)
}

/// Picks the first present value: flag/env, then file.
fn pick<T>(flag: Option<T>, file: Option<T>) -> Option<T> {
    flag.or(file)
}

fn toml_to_string(v: toml::Value) -> String {
    match v {
        toml::Value::String(s) => s,
        other => other.to_string(),
    }
}

struct Resolver;

impl Resolver {
    fn number<T>(
        name: &str,
        flag: Option<String>,
        file: Option<toml::Value>,
        default: T,
        range: (T, T),
    ) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(raw) = pick(flag, file.map(toml_to_string)) else {
            return Ok(default);
        };
        let Ok(v) = raw.trim().parse::<T>() else {
            return err(format!("--{name}: `{raw}` is not a number"));
        };
        if v < range.0 || v > range.1 {
            return err(format!(
                "--{name}: {v} is out of range ({}..={})",
                range.0, range.1
            ));
        }
        Ok(v)
    }

    fn duration(
        name: &str,
        flag: Option<String>,
        file: Option<String>,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(raw) = pick(flag, file) else {
            return Ok(default);
        };
        let d = parse_duration(&raw).map_err(|e| ConfigError(format!("--{name}: {e}")))?;
        if d < min || d > max {
            return err(format!(
                "--{name}: {raw} is out of range ({:?}..={:?})",
                min, max
            ));
        }
        Ok(d)
    }

    fn addr(
        name: &str,
        flag: Option<String>,
        file: Option<String>,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let raw = pick(flag, file).unwrap_or_else(|| default.to_owned());
        raw.trim().parse().map_err(|_| {
            ConfigError(format!(
                "--{name}: `{raw}` is not an address like 0.0.0.0:4433"
            ))
        })
    }
}

impl Config {
    /// Resolves flags (already merged with env by clap), the config file and defaults.
    pub fn resolve(args: ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let dev = args.dev || file.dev.unwrap_or(false);
        let shards = match pick(args.shards, file.shards.map(toml_to_string)) {
            None => None,
            Some(raw) => match raw.trim().parse::<usize>() {
                Ok(n) if (1..=1024).contains(&n) => Some(n),
                _ => return err(format!("--shards: `{raw}` must be a number from 1 to 1024")),
            },
        };
        let cpus = match pick(args.cpus, file.cpus) {
            None => None,
            Some(raw) => {
                Some(parse_cpu_list(&raw).map_err(|e| ConfigError(format!("--cpus: {e}")))?)
            }
        };
        let log_format = match pick(args.log_format, file.log_format).as_deref() {
            None if dev => LogFormat::Text,
            None | Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => return err(format!("--log-format: `{other}` must be json or text")),
        };
        let gc_url = pick(args.gc_url, file.gc_url).filter(|u| !u.trim().is_empty());
        if let Some(u) = &gc_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return err(format!(
                    "--gc-url: `{u}` must start with http:// or https://"
                ));
            }
        }
        let allowed_origins = match pick(args.allowed_origins, file.allowed_origins) {
            None if dev => None,
            None => Some(Vec::new()),
            Some(raw) if raw.trim() == "*" => None,
            Some(raw) => Some(
                raw.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect(),
            ),
        };
        let hour = Duration::from_secs(3600);
        let cfg = Config {
            dev,
            dev_dir: pick(args.dev_dir, file.dev_dir).unwrap_or_else(crate::dev::default_dev_dir),
            listen: Resolver::addr("listen", args.listen, file.listen, "0.0.0.0:4433")?,
            control_listen: Resolver::addr(
                "control-listen",
                args.control_listen,
                file.control_listen,
                // Development mode keeps metrics and the admin API on this machine.
                if dev {
                    "127.0.0.1:8080"
                } else {
                    "0.0.0.0:8080"
                },
            )?,
            shards,
            cpus,
            io_memory: Resolver::number(
                "io-memory",
                args.io_memory,
                file.io_memory,
                1 << 20,
                (64 << 10, 1 << 30),
            )?,
            spin_before_park: Resolver::duration(
                "spin-before-park",
                args.spin_before_park,
                file.spin_before_park,
                Duration::ZERO,
                Duration::ZERO,
                Duration::from_millis(10),
            )?,
            max_queue_delay: Resolver::duration(
                "max-queue-delay",
                args.max_queue_delay,
                file.max_queue_delay,
                DEFAULT_MAX_QUEUE_DELAY,
                Duration::ZERO,
                Duration::from_secs(10),
            )?,
            turn_budget: Resolver::duration(
                "turn-budget",
                args.turn_budget,
                file.turn_budget,
                DEFAULT_TURN_BUDGET,
                Duration::from_micros(100),
                Duration::from_millis(100),
            )?,
            turn_max_datagrams: Resolver::number(
                "turn-max-datagrams",
                args.turn_max_datagrams,
                file.turn_max_datagrams,
                DEFAULT_TURN_MAX_DATAGRAMS,
                (64, 65536),
            )?,
            tls_cert: pick(args.tls_cert, file.tls_cert),
            tls_key: pick(args.tls_key, file.tls_key),
            jwks: pick(args.jwks, file.jwks),
            mailbox_size: Resolver::number(
                "mailbox-size",
                args.mailbox_size,
                file.mailbox_size,
                1024,
                (1, 1_000_000),
            )?,
            idle_timeout: Resolver::duration(
                "idle-timeout",
                args.idle_timeout,
                file.idle_timeout,
                Duration::from_secs(30),
                Duration::from_millis(100),
                hour,
            )?,
            keep_alive: Resolver::duration(
                "keep-alive",
                args.keep_alive,
                file.keep_alive,
                Duration::from_secs(10),
                Duration::ZERO,
                hour,
            )?,
            max_connections_per_shard: Resolver::number(
                "max-connections-per-shard",
                args.max_connections_per_shard,
                file.max_connections_per_shard,
                10_000,
                (1, 10_000_000),
            )?,
            resume_window: Resolver::duration(
                "resume-window",
                args.resume_window,
                file.resume_window,
                Duration::from_secs(30),
                Duration::ZERO,
                hour,
            )?,
            empty_meeting_timeout: Resolver::duration(
                "empty-meeting-timeout",
                args.empty_meeting_timeout,
                file.empty_meeting_timeout,
                Duration::from_secs(60),
                Duration::ZERO,
                24 * hour,
            )?,
            join_timeout: Resolver::duration(
                "join-timeout",
                args.join_timeout,
                file.join_timeout,
                Duration::from_secs(10),
                Duration::from_millis(100),
                hour,
            )?,
            clock_skew: Resolver::duration(
                "clock-skew",
                args.clock_skew,
                file.clock_skew,
                Duration::from_secs(60),
                Duration::ZERO,
                hour,
            )?,
            max_participants_per_meeting: Resolver::number(
                "max-participants-per-meeting",
                args.max_participants_per_meeting,
                file.max_participants_per_meeting,
                1000,
                (1, 1_000_000),
            )?,
            max_meetings: Resolver::number(
                "max-meetings",
                args.max_meetings,
                file.max_meetings,
                10_000,
                (1, 100_000_000),
            )?,
            max_participants: Resolver::number(
                "max-participants",
                args.max_participants,
                file.max_participants,
                100_000,
                (1, 100_000_000),
            )?,
            slow_consumer_drops: Resolver::number(
                "slow-consumer-drops",
                args.slow_consumer_drops,
                file.slow_consumer_drops,
                64,
                (1, 1_000_000),
            )?,
            rate_limit: Resolver::number(
                "rate-limit",
                args.rate_limit,
                file.rate_limit,
                50.0,
                (0.1, 1_000_000.0),
            )?,
            rate_burst: Resolver::number(
                "rate-burst",
                args.rate_burst,
                file.rate_burst,
                100.0,
                (1.0, 1_000_000.0),
            )?,
            log_format,
            log_level: match pick(args.log_level, file.log_level) {
                Some(f) => check_log_filter("--log-level", &f)?,
                None => match std::env::var("RUST_LOG") {
                    Ok(f) if !f.trim().is_empty() => check_log_filter("RUST_LOG", &f)?,
                    _ => "info".into(),
                },
            },
            gc_url,
            gc_token_file: pick(args.gc_token_file, file.gc_token_file),
            gc_ca_file: pick(args.gc_ca_file, file.gc_ca_file),
            gc_inbound_token_file: pick(args.gc_inbound_token_file, file.gc_inbound_token_file),
            admin_token_file: pick(args.admin_token_file, file.admin_token_file),
            binding_secret_file: pick(args.binding_secret_file, file.binding_secret_file),
            mc_id: pick(args.mc_id, file.mc_id).unwrap_or_else(hostname),
            region: pick(args.region, file.region).unwrap_or_else(|| "local".into()),
            advertise_quic: pick(args.advertise_quic, file.advertise_quic),
            advertise_webtransport: pick(args.advertise_webtransport, file.advertise_webtransport),
            drain_timeout: Resolver::duration(
                "drain-timeout",
                args.drain_timeout,
                file.drain_timeout,
                Duration::from_secs(60),
                Duration::ZERO,
                24 * hour,
            )?,
            gc_timeout: Resolver::duration(
                "gc-timeout",
                args.gc_timeout,
                file.gc_timeout,
                Duration::from_secs(2),
                Duration::from_millis(10),
                Duration::from_secs(60),
            )?,
            allowed_origins,
            retry: args.retry || file.retry.unwrap_or(false),
            retry_handshake_threshold: Resolver::number(
                "retry-handshake-threshold",
                args.retry_handshake_threshold,
                file.retry_handshake_threshold,
                256,
                (0, 10_000_000),
            )?,
            max_handshakes_per_shard: Resolver::number(
                "max-handshakes-per-shard",
                args.max_handshakes_per_shard,
                file.max_handshakes_per_shard,
                4096,
                (1, 10_000_000),
            )?,
            enable_test_hooks: args.enable_test_hooks,
            disable_cid_steering: args.disable_cid_steering,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.dev {
            for (name, v) in [
                ("tls-cert", &self.tls_cert),
                ("tls-key", &self.tls_key),
                ("jwks", &self.jwks),
            ] {
                match v {
                    None => return err(format!("--{name} is required (or use --dev)")),
                    Some(p) if !p.is_file() => {
                        return err(format!("--{name}: {} is not a readable file", p.display()))
                    }
                    Some(_) => {}
                }
            }
            if self.binding_secret_file.is_none() {
                return err("--binding-secret-file is required (or use --dev)");
            }
        }
        for (name, v) in [
            ("gc-token-file", &self.gc_token_file),
            ("gc-ca-file", &self.gc_ca_file),
            ("gc-inbound-token-file", &self.gc_inbound_token_file),
            ("admin-token-file", &self.admin_token_file),
            ("binding-secret-file", &self.binding_secret_file),
        ] {
            if let Some(p) = v {
                if !p.is_file() {
                    return err(format!("--{name}: {} is not a readable file", p.display()));
                }
            }
        }
        if self.gc_ca_file.is_some()
            && !self
                .gc_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"))
        {
            return err(
                "--gc-ca-file needs an https:// --gc-url (it verifies the GC's certificate)",
            );
        }
        if self.gc_url.is_some() && self.gc_token_file.is_none() {
            return err("--gc-url needs --gc-token-file");
        }
        if self.gc_url.is_some() && self.gc_inbound_token_file.is_none() {
            return err(
                "--gc-url needs --gc-inbound-token-file (the GC authenticates its assignments)",
            );
        }
        if self.mc_id.is_empty()
            || self.mc_id.len() > 128
            || !self
                .mc_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return err(format!(
                "--mc-id: `{}` must be 1..128 characters of [A-Za-z0-9_.-]",
                self.mc_id
            ));
        }
        if self.rate_burst < 1.0 {
            return err("--rate-burst must be at least 1");
        }
        Ok(())
    }
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("--config: cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        let msg = e.message().replace('\n', " ");
        ConfigError(format!("--config: {}: {msg}", path.display()))
    })
}

fn hostname() -> String {
    let from_env = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty());
    let raw = from_env
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_else(|| "mc".into());
    let cleaned: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .take(128)
        .collect();
    if cleaned.is_empty() {
        "mc".into()
    } else {
        cleaned
    }
}

/// Reports a command-line parse failure the way clap renders it (the error, clap's tip, the
/// usage line) and returns the exit code: 0 for `--help`/`--version` (printed to stdout),
/// [`EXIT_USAGE`] for everything else (printed to stderr).
pub fn clap_exit(e: &clap::Error) -> i32 {
    use clap::error::ErrorKind;
    let _ = e.print();
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
        _ => EXIT_USAGE,
    }
}

/// Checks a log filter (`info`, `mc=debug,quiche=warn`, ...); `source` names where it came
/// from (`--log-level` or `RUST_LOG`) in the error.
pub fn check_log_filter(source: &str, filter: &str) -> Result<String, ConfigError> {
    match tracing_subscriber::EnvFilter::builder().parse(filter) {
        Ok(_) => Ok(filter.to_owned()),
        Err(e) => err(format!("{source}: `{filter}` is not a log filter: {e}")),
    }
}

/// Reads a secret file (token), trimmed; errors name the flag.
pub fn read_secret(flag: &str, path: &Path) -> Result<String, ConfigError> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("--{flag}: cannot read {}: {e}", path.display())))?;
    let s = s.trim().to_owned();
    if s.is_empty() {
        return err(format!("--{flag}: {} is empty", path.display()));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["mc", "serve"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| ConfigError(e.to_string()))?;
        match cli.command {
            Command::Serve(a) => Config::resolve(*a),
            _ => unreachable!(),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("50us"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,6"), Ok(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_cpu_list("1"), Ok(vec![1]));
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("").is_err());
    }

    #[test]
    fn dev_needs_no_files_and_has_defaults() {
        let c = serve(&["--dev"]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:4433".parse().unwrap());
        assert_eq!(
            c.control_listen,
            "127.0.0.1:8080".parse().unwrap(),
            "--dev keeps the control server on loopback"
        );
        let c = serve(&["--dev", "--control-listen", "0.0.0.0:9090"]).unwrap();
        assert_eq!(c.control_listen, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(c.mailbox_size, 1024);
        assert_eq!(c.resume_window, Duration::from_secs(30));
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.allowed_origins.is_none());
    }

    #[test]
    fn production_requires_tls_and_jwks() {
        let e = serve(&[]).unwrap_err().to_string();
        assert!(e.contains("--tls-cert is required"), "{e}");
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (args, needle) in [
            (vec!["--dev", "--mailbox-size", "0"], "--mailbox-size"),
            (vec!["--dev", "--mailbox-size", "lots"], "--mailbox-size"),
            (vec!["--dev", "--listen", "nowhere"], "--listen"),
            (vec!["--dev", "--shards", "0"], "--shards"),
            (vec!["--dev", "--cpus", "9-2"], "--cpus"),
            (vec!["--dev", "--idle-timeout", "forever"], "--idle-timeout"),
            (vec!["--dev", "--log-format", "xml"], "--log-format"),
            (vec!["--dev", "--gc-url", "ftp://x"], "--gc-url"),
            (vec!["--dev", "--gc-url", "http://gc"], "--gc-token-file"),
            (
                vec!["--dev", "--admin-token-file", "/nonexistent/x"],
                "--admin-token-file",
            ),
            (vec!["--dev", "--mc-id", "a b"], "--mc-id"),
            (
                vec!["--dev", "--gc-ca-file", "/nonexistent/ca.pem"],
                "--gc-ca-file",
            ),
            (
                vec!["--dev", "--gc-ca-file", "Cargo.toml"],
                "needs an https:// --gc-url",
            ),
        ] {
            let e = serve(&args).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn file_then_flag_precedence() {
        let dir = std::env::temp_dir().join(format!("mc-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mc.toml");
        std::fs::write(
            &path,
            "dev = true\nmailbox_size = 77\nresume_window = \"5s\"\nlisten = \"127.0.0.1:9999\"\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = serve(&["--config", p]).unwrap();
        assert_eq!(c.mailbox_size, 77);
        assert_eq!(c.resume_window, Duration::from_secs(5));
        assert_eq!(c.listen, "127.0.0.1:9999".parse().unwrap());
        let c = serve(&["--config", p, "--mailbox-size", "5"]).unwrap();
        assert_eq!(c.mailbox_size, 5, "flag beats file");

        std::fs::write(&path, "dev = true\nmailbox_sise = 77\n").unwrap();
        let e = serve(&["--config", p]).unwrap_err().to_string();
        assert!(e.contains("mailbox_sise"), "{e}");
        std::fs::write(&path, "dev = true\nmailbox_size = \"x\"\n").unwrap();
        let e = serve(&["--config", p]).unwrap_err().to_string();
        assert!(e.contains("--mailbox-size"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
