//! Command line, environment and config file.
//!
//! Every `serve` knob is a flag, an `MC_*` environment variable and a key of the TOML file
//! given with `--config`; precedence is flag > env > file > default. The result is validated
//! before anything is bound: a bad value is one clear line and exit code 64 (`EX_USAGE`).
//!
//! Each setting is declared once, in the `declare_settings!` list below; the flag, the variable,
//! the file key, the default, the range, the help text and heading and the [`Config`] field all
//! come from that entry ([`settings()`] lists them; the machinery is in `setting.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

mod setting;

use setting::{
    declare_settings, Address, Ctx, Given, NumSrc, Number, Parsed, PathSrc, Source, Switch,
    SwitchSrc, Text, TextSrc, Time,
};
pub use setting::{Heading, Place, Setting};

/// `EX_USAGE`: the exit code of a bad flag, environment variable or config file.
pub const EXIT_USAGE: i32 = 64;

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

// Every `mc serve` setting, declared once: its help (the doc comment), heading, name (the
// `Config` field and file key; the flag and `MC_*` variable follow from it), value type,
// source and kind (default, range, parser). The order is that of the file keys in the
// unknown-key message and of the flags within a `--help` heading.
//
// A new setting is one entry here, plus its row in docs/configuration.md (under the section
// of its heading, in this order) and its `# key = default` line in config/mc.toml (under the
// same heading); tests/config_file.rs fails until the three agree.
declare_settings! {
    config_file:
        /// TOML config file (see config/mc.toml).
        [Other] config;

    context:
        /// Development mode: self-signed certificate, generated keys, no files needed.
        [Tls] dev: bool, SwitchSrc = Switch;

    file:
        /// Directory for development material.
        [Tls] dev_dir: PathBuf, PathSrc = Parsed {
            default: None,
            parse: |_, raw, _| Ok(raw.unwrap_or_else(crate::dev::default_dev_dir)),
        };
        /// UDP address for QUIC and WebTransport.
        [Network] listen: SocketAddr, TextSrc = Address {
            default: "0.0.0.0:4433",
            dev_default: None,
        };
        /// TCP address of the control HTTP server.
        [Network] control_listen: SocketAddr, TextSrc = Address {
            default: "0.0.0.0:8080",
            // Development mode keeps metrics and the admin API on this machine.
            dev_default: Some("127.0.0.1:8080"),
        };
        /// Number of shards.
        [Shards] shards: Option<usize>, NumSrc = Parsed {
            default: Some("one per usable CPU"),
            parse: parse_shards,
        };
        /// CPUs to pin shards to, e.g. `0-3,6`.
        [Shards] cpus: Option<Vec<usize>>, TextSrc = Parsed {
            default: Some("the process's affinity ∩ online CPUs"),
            parse: parse_cpus,
        };
        /// glommio io_memory per shard executor, bytes.
        [Shards] io_memory: usize, NumSrc = Number {
            default: 1 << 20,
            min: 64 << 10,
            max: 1 << 30,
        };
        /// How long an idle shard polls for work before it sleeps, 0 to sleep at once (trades
        /// CPU for wake-up latency; for dedicated cores).
        [Shards] spin_before_park: Duration, TextSrc = Time {
            default: Duration::ZERO,
            min: Duration::ZERO,
            max: Duration::from_millis(10),
        };
        /// Overload shedding: datagrams that waited longer than this in a shard's UDP receive
        /// queue are dropped unread, so latency stays bounded past the knee; 0 to never drop.
        [Shards] max_queue_delay: Duration, TextSrc = Time {
            default: Duration::from_millis(20),
            min: Duration::ZERO,
            max: Duration::from_secs(10),
        };
        /// Longest a shard keeps reading its socket before it flushes: longer turns coalesce
        /// more frames per packet under load (less CPU per delivery), at up to this much added
        /// latency.
        [Shards] turn_budget: Duration, TextSrc = Time {
            default: Duration::from_millis(16),
            min: Duration::from_micros(100),
            max: Duration::from_millis(100),
        };
        /// Most datagrams a shard reads before it flushes.
        [Shards] turn_max_datagrams: usize, NumSrc = Number { default: 8192, min: 64, max: 65536 };
        /// TLS certificate chain (PEM).
        [Tls] tls_cert: Option<PathBuf>, PathSrc = Given::new();
        /// TLS private key (PEM).
        [Tls] tls_key: Option<PathBuf>, PathSrc = Given::new();
        /// JWKS file with the Ed25519 keys meeting tokens are signed with.
        [Tls] jwks: Option<PathBuf>, PathSrc = Given::new();
        /// Bound of every queue (inbox, per-connection outbound).
        [Limits] mailbox_size: usize, NumSrc = Number { default: 1024, min: 1, max: 1_000_000 };
        /// QUIC idle timeout.
        [Timeouts] idle_timeout: Duration, TextSrc = Time {
            default: Duration::from_secs(30),
            min: Duration::from_millis(100),
            max: HOUR,
        };
        /// Server keep-alive (PING) interval, 0 to disable.
        [Timeouts] keep_alive: Duration, TextSrc = Time {
            default: Duration::from_secs(10),
            min: Duration::ZERO,
            max: HOUR,
        };
        /// Connections per shard.
        [Limits] max_connections_per_shard: usize, NumSrc = Number {
            default: 10_000,
            min: 1,
            max: 10_000_000,
        };
        /// How long a dropped participant is kept for resume.
        [Timeouts] resume_window: Duration, TextSrc = Time {
            default: Duration::from_secs(30),
            min: Duration::ZERO,
            max: HOUR,
        };
        /// How long an empty meeting is kept.
        [Timeouts] empty_meeting_timeout: Duration, TextSrc = Time {
            default: Duration::from_secs(60),
            min: Duration::ZERO,
            max: DAY,
        };
        /// How long a connection may go without joining.
        [Timeouts] join_timeout: Duration, TextSrc = Time {
            default: Duration::from_secs(10),
            min: Duration::from_millis(100),
            max: HOUR,
        };
        /// Accepted clock skew for token `iat`.
        [Timeouts] clock_skew: Duration, TextSrc = Time {
            default: Duration::from_secs(60),
            min: Duration::ZERO,
            max: HOUR,
        };
        /// Participants per meeting.
        [Limits] max_participants_per_meeting: usize, NumSrc = Number {
            default: 1000,
            min: 1,
            max: 1_000_000,
        };
        /// Meetings per controller.
        [Limits] max_meetings: usize, NumSrc = Number { default: 10_000, min: 1, max: 100_000_000 };
        /// Participants per controller.
        [Limits] max_participants: usize, NumSrc = Number {
            default: 100_000,
            min: 1,
            max: 100_000_000,
        };
        /// Drops to one participant before it is disconnected as a slow consumer.
        [Limits] slow_consumer_drops: u32, NumSrc = Number { default: 64, min: 1, max: 1_000_000 };
        /// Sustained messages per second per connection.
        [Limits] rate_limit: f64, NumSrc = Number { default: 50.0, min: 0.1, max: 1_000_000.0 };
        /// Message burst per connection.
        [Limits] rate_burst: f64, NumSrc = Number { default: 100.0, min: 1.0, max: 1_000_000.0 };
        /// Log format: json or text.
        [Logging] log_format: LogFormat, TextSrc = Parsed {
            default: Some("json, text with --dev"),
            parse: parse_log_format,
        };
        /// Log filter, e.g. `info` or `mc=debug`.
        [Logging] log_level: String, TextSrc = Parsed {
            default: Some("RUST_LOG if set, else info"),
            parse: parse_log_level,
        };
        /// Global Controller base URL; absent = standalone.
        [Gc] gc_url: Option<String>, TextSrc = Parsed { default: None, parse: parse_gc_url };
        /// File with the bearer token for calls to the GC.
        [Gc] gc_token_file: Option<PathBuf>, PathSrc = Given::new();
        /// PEM file of the CA certificate(s) an https:// GC's certificate is checked against,
        /// instead of the public web roots.
        [Gc] gc_ca_file: Option<PathBuf>, PathSrc = Given::new();
        /// File with the bearer token the GC uses to call us.
        [Gc] gc_inbound_token_file: Option<PathBuf>, PathSrc = Given::new();
        /// File with the admin API bearer token; absent = admin API disabled.
        [Gc] admin_token_file: Option<PathBuf>, PathSrc = Given::new();
        /// File with the resume binding-token secret (≥ 32 bytes).
        [Tls] binding_secret_file: Option<PathBuf>, PathSrc = Given::new();
        /// Controller id reported to the GC.
        [Gc] mc_id: String, TextSrc = Parsed {
            default: Some("hostname"),
            parse: |_, raw, _| Ok(raw.unwrap_or_else(hostname)),
        };
        /// Region reported to the GC.
        [Gc] region: String, TextSrc = Text { default: "local" };
        /// QUIC endpoint clients should use, e.g. `mc-1.example.com:4433`.
        [Gc] advertise_quic: Option<String>, TextSrc = Given::new();
        /// WebTransport URL clients should use, e.g. `https://mc-1.example.com:4433`.
        [WebTransport] advertise_webtransport: Option<String>, TextSrc = Given::new();
        /// How long a drain waits for meetings to end.
        [Gc] drain_timeout: Duration, TextSrc = Time {
            default: Duration::from_secs(60),
            min: Duration::ZERO,
            max: DAY,
        };
        /// Timeout of every GC request.
        [Gc] gc_timeout: Duration, TextSrc = Time {
            default: Duration::from_secs(2),
            min: Duration::from_millis(10),
            max: Duration::from_secs(60),
        };
        /// Origins allowed to open WebTransport sessions, comma separated, `*` for any.
        [WebTransport] allowed_origins: Option<Vec<String>>, TextSrc = Parsed {
            default: Some("any with --dev, none otherwise"),
            parse: parse_allowed_origins,
        };
        /// Always validate client addresses with a QUIC Retry before the handshake.
        [Limits] retry: bool, SwitchSrc = Switch;
        /// Handshakes in progress per shard above which Retry is required.
        [Limits] retry_handshake_threshold: usize, NumSrc = Number {
            default: 256,
            min: 0,
            max: 10_000_000,
        };
        /// Handshakes in progress per shard above which new ones are dropped.
        [Limits] max_handshakes_per_shard: usize, NumSrc = Number {
            default: 4096,
            min: 1,
            max: 10_000_000,
        };

    hidden:
        /// Test-only hooks (a `message` with a magic payload panics its meeting).
        [Other] enable_test_hooks: bool, SwitchSrc = Switch;
        /// Do not attach the kernel CID-steering program (datagrams are then spread by
        /// 4-tuple and forwarded between shards in user space). For diagnosis and tests.
        [Other] disable_cid_steering: bool, SwitchSrc = Switch;
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable lines (development).
    Text,
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

/// The most shards `--shards` takes.
const MAX_SHARDS: usize = 1024;

/// `--shards`: 1..=[`MAX_SHARDS`], or one per CPU when unset.
fn parse_shards(flag: &str, raw: Option<String>, _: &Ctx) -> Result<Option<usize>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    match raw.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_SHARDS).contains(&n) => Ok(Some(n)),
        _ => err(format!(
            "--{flag}: `{raw}` must be a number from 1 to {MAX_SHARDS}"
        )),
    }
}

/// `--cpus`: a CPU list, or the usable CPUs when unset.
fn parse_cpus(flag: &str, raw: Option<String>, _: &Ctx) -> Result<Option<Vec<usize>>, ConfigError> {
    raw.map(|raw| parse_cpu_list(&raw).map_err(|e| ConfigError(format!("--{flag}: {e}"))))
        .transpose()
}

/// `--log-format`: json, or text; text by default in development mode.
fn parse_log_format(flag: &str, raw: Option<String>, ctx: &Ctx) -> Result<LogFormat, ConfigError> {
    match raw.as_deref() {
        None if ctx.dev => Ok(LogFormat::Text),
        None | Some("json") => Ok(LogFormat::Json),
        Some("text") => Ok(LogFormat::Text),
        Some(other) => err(format!("--{flag}: `{other}` must be json or text")),
    }
}

/// `--log-level`: a log filter; by default `RUST_LOG` when set and non-empty, else `info`.
fn parse_log_level(flag: &str, raw: Option<String>, _: &Ctx) -> Result<String, ConfigError> {
    match raw {
        Some(f) => check_log_filter(&format!("--{flag}"), &f),
        None => match std::env::var("RUST_LOG") {
            Ok(f) if !f.trim().is_empty() => check_log_filter("RUST_LOG", &f),
            _ => Ok("info".into()),
        },
    }
}

/// `--gc-url`: http:// or https://; empty means unset (standalone).
fn parse_gc_url(flag: &str, raw: Option<String>, _: &Ctx) -> Result<Option<String>, ConfigError> {
    let url = raw.filter(|u| !u.trim().is_empty());
    if let Some(u) = &url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return err(format!(
                "--{flag}: `{u}` must start with http:// or https://"
            ));
        }
    }
    Ok(url)
}

/// `--allowed-origins`: a comma-separated list, `*` for any (`None`); by default any in
/// development mode, none otherwise.
fn parse_allowed_origins(
    _: &str,
    raw: Option<String>,
    ctx: &Ctx,
) -> Result<Option<Vec<String>>, ConfigError> {
    Ok(match raw {
        None if ctx.dev => None,
        None => Some(Vec::new()),
        Some(raw) if raw.trim() == "*" => None,
        Some(raw) => Some(
            raw.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        ),
    })
}

impl Config {
    /// Resolves flags (already merged with env by clap), the config file and defaults, then
    /// checks the settings against each other.
    pub fn resolve(mut args: ServeArgs) -> Result<Self, ConfigError> {
        let file = match args.config.take() {
            Some(path) => load_file(&path)?,
            None => FileConfig::default(),
        };
        let cfg = resolve_settings(args, file)?;
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
    use super::setting::format_duration;
    use super::*;
    use clap::CommandFactory;

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
    fn durations_are_written_as_they_are_read() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_micros(100), "100us"),
            (Duration::from_millis(20), "20ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(60), "60s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(24 * 3600), "24h"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d), "{text}");
        }
    }

    #[test]
    fn a_rate_outside_every_order_is_out_of_range() {
        for (flag, raw) in [
            ("--rate-limit", "NaN"),
            ("--rate-burst", "nan"),
            ("--rate-limit", "inf"),
        ] {
            let e = serve(&["--dev", flag, raw]).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{flag}: ")), "{e}");
            assert!(e.contains("is out of range"), "{e}");
        }
    }

    #[test]
    fn switches_given_as_off_leave_the_file_value() {
        // `--dev`/`MC_DEV=false` is "not given": it cannot turn off `dev = true` in the file.
        let mut m = Cli::command()
            .try_get_matches_from(["mc", "serve"])
            .unwrap()
            .subcommand_matches("serve")
            .unwrap()
            .clone();
        let args = <ServeArgs as clap::FromArgMatches>::from_arg_matches_mut(&mut m).unwrap();
        assert_eq!(args.dev, None);
        let args = ServeArgs {
            retry: Some(true),
            ..ServeArgs::default()
        };
        let file = FileConfig {
            dev: Some(true),
            ..FileConfig::default()
        };
        let c = resolve_settings(args, file).unwrap();
        assert!(c.dev && c.retry);
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
