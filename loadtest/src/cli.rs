//! Command line. Every number of every scenario is a flag; [`Args::validate`] turns the flags
//! into a [`Settings`] or one clear line (exit code 64) before any socket is opened.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::transport::TransportKind;

/// `EX_USAGE`: a bad flag.
pub const EXIT_USAGE: i32 = 64;

/// Load generator for the meeting controller (signaling v1).
///
/// Timeline of a run: connections join during `--ramp`; the steady phase lasts `--duration`,
/// of which the first `--warmup` is not measured; senders stop at the end of the steady phase
/// and deliveries get up to `--drain` to arrive before everything is counted.
#[derive(Debug, Parser)]
#[command(name = "mc-loadtest", version, about, long_about = None)]
pub struct Args {
    /// Workload shape.
    #[arg(long, value_enum, default_value = "meetings")]
    pub scenario: Scenario,

    /// Signaling transport.
    #[arg(long, value_enum, default_value = "quic")]
    pub transport: TransportKind,

    /// UDP address of the controller.
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub server: String,

    /// TLS server name sent in the handshake (the certificate is not verified).
    #[arg(long, default_value = "localhost")]
    pub server_name: String,

    /// Meetings (`meetings`, `churn`).
    #[arg(long, default_value_t = 200)]
    pub meetings: u32,

    /// Participants per meeting [default: 5; 1000 for large-meeting; 2 for join-storm].
    #[arg(long)]
    pub participants: Option<u32>,

    /// Messages per second sent by each sender, open loop
    /// [default: 3; 1 for large-meeting; 0 for join-storm].
    #[arg(long)]
    pub rate: Option<f64>,

    /// Fraction of participants that send (`large-meeting`).
    #[arg(long, default_value_t = 0.01)]
    pub sender_fraction: f64,

    /// Connect-and-join attempts per second (`join-storm`).
    #[arg(long, default_value_t = 200.0)]
    pub join_rate: f64,

    /// Leave-and-rejoin events per second over the whole run (`churn`).
    #[arg(long, default_value_t = 10.0)]
    pub churn_rate: f64,

    /// Pause between a churned participant's leave and its new connection (`churn`).
    #[arg(long, default_value = "500ms", value_parser = duration)]
    pub rejoin_delay: Duration,

    /// How long each `join-storm` participant stays before leaving [default: to the end].
    #[arg(long, value_parser = duration)]
    pub hold: Option<Duration>,

    /// Ramp-up: joins spread over this long (`join-storm`: the join rate rises linearly)
    /// [default: 5s; 30s for large-meeting, whose joins cost O(n²) frames].
    #[arg(long, value_parser = duration)]
    pub ramp: Option<Duration>,

    /// Steady phase.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub duration: Duration,

    /// Start of the steady phase left out of the measurements.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub warmup: Duration,

    /// Longest wait for outstanding deliveries after the senders stop.
    #[arg(long, default_value = "3s", value_parser = duration)]
    pub drain: Duration,

    /// Extra bytes of padding in every message payload.
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,

    /// Event-loop threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Pin each thread to one CPU (threads take CPUs from `--first-cpu` on, wrapping).
    #[arg(long)]
    pub pin: bool,

    /// First CPU index used by `--pin` (keep the server's CPUs free).
    #[arg(long, default_value_t = 0)]
    pub first_cpu: usize,

    /// QUIC connections sharing one UDP socket (1 = one source port per connection).
    #[arg(long, default_value_t = 1)]
    pub conns_per_socket: usize,

    /// A connection not joined within this long counts as failed.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub connect_timeout: Duration,

    /// QUIC idle timeout.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub idle_timeout: Duration,

    /// A joined participant acknowledges after this many received datagrams ... (RFC 9000
    /// §13.2.2 recommends 2, as browsers do; 1 = after every receive, quiche's own habit).
    #[arg(long, default_value_t = 2)]
    pub ack_every: u32,

    /// ... or at the latest this long after the first unacknowledged one (below the 25 ms
    /// max_ack_delay the client announces).
    #[arg(long, default_value = "5ms", value_parser = duration)]
    pub ack_delay: Duration,

    /// The event loop wakes this long after its earliest deadline, so deadlines that close
    /// together are served by one wake-up and leave in one `sendmmsg` (50 µs is Linux's default
    /// timer slack, what a client sleeping in `poll` gets, the bare-quiche anchor's client
    /// included); 0 wakes for every deadline on time. At most 1 ms.
    #[arg(long, default_value = "50us", value_parser = duration)]
    pub timer_slack: Duration,

    /// Ed25519 PKCS#8 PEM key to mint tokens with (else the dev dir's key).
    #[arg(long)]
    pub signing_key: Option<PathBuf>,

    /// Key id of `--signing-key`, as published in the controller's JWKS.
    #[arg(long)]
    pub kid: Option<String>,

    /// Directory written by `mc serve --dev` [default: mc's default dev dir].
    #[arg(long, env = "MC_DEV_DIR")]
    pub dev_dir: Option<PathBuf>,

    /// Prefix of meeting ids [default: `lt-<random>`, distinct per run].
    #[arg(long)]
    pub meeting_prefix: Option<String>,

    /// Controller metrics URL (`http://host:port/metrics`, or https) scraped before, during
    /// and after.
    #[arg(long)]
    pub metrics_url: Option<String>,

    /// Print the result as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// Write a latency-by-percentile SVG plot here.
    #[arg(long)]
    pub plot: Option<PathBuf>,

    /// Write an HdrHistogram interval log here: one interval per second, tagged `delivery`,
    /// `join` and `handshake`, in microseconds (HdrHistogram's log tools read it).
    #[arg(long)]
    pub hlog: Option<PathBuf>,

    /// No per-second progress line.
    #[arg(long)]
    pub quiet: bool,

    /// Send `leave` at the end instead of closing the connections.
    #[arg(long)]
    pub leave_at_end: bool,
    /// `rolling-drain`: controllers in the fleet the generator starts.
    #[arg(long, default_value_t = 3)]
    pub controllers: usize,
    /// `rolling-drain`: the `mc` binary to start [default: `mc` next to this executable].
    #[arg(long)]
    pub mc_binary: Option<PathBuf>,
    /// `rolling-drain`: shards per controller.
    #[arg(long, default_value_t = 2)]
    pub mc_shards: u16,
    /// `rolling-drain`: time under load before the first drain and after each restart.
    #[arg(long, default_value = "3s", value_parser = duration)]
    pub drain_interval: Duration,
    /// `rolling-drain`: `--drain-timeout` of the controllers (meetings that cannot move end then).
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub mc_drain_timeout: Duration,
}

/// Workload shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// `--meetings` × `--participants`, everyone sends `--rate` messages per second.
    Meetings,
    /// One meeting of `--participants`; `--sender-fraction` of them send.
    LargeMeeting,
    /// Connect and join at `--join-rate`; measures handshakes per second and join latency.
    JoinStorm,
    /// Like `meetings`, plus `--churn-rate` leave-and-rejoin events per second.
    Churn,
    /// Runs a fake GC and `--controllers` controllers itself, `--meetings` meetings per
    /// controller, then restarts the controllers one after another (SIGTERM, re-register)
    /// while participants follow `migrate`.
    RollingDrain,
}

impl Scenario {
    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Meetings => "meetings",
            Scenario::LargeMeeting => "large-meeting",
            Scenario::JoinStorm => "join-storm",
            Scenario::Churn => "churn",
            Scenario::RollingDrain => "rolling-drain",
        }
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    mc::config::parse_duration(s)
}

/// Where join tokens come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A PEM file and its key id.
    File {
        /// PKCS#8 PEM.
        path: PathBuf,
        /// Key id.
        kid: String,
    },
    /// The controller's development directory.
    DevDir(PathBuf),
}

/// Validated settings of one run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Workload.
    pub scenario: Scenario,
    /// Transport.
    pub transport: TransportKind,
    /// Server address.
    pub server: SocketAddr,
    /// TLS server name.
    pub server_name: String,
    /// Meetings.
    pub meetings: u32,
    /// Participants per meeting.
    pub participants: u32,
    /// Messages per second per sender.
    pub rate: f64,
    /// Fraction of senders (large-meeting).
    pub sender_fraction: f64,
    /// Joins per second (join-storm).
    pub join_rate: f64,
    /// Churn events per second (churn).
    pub churn_rate: f64,
    /// Pause before a churned participant reconnects.
    pub rejoin_delay: Duration,
    /// Stay time of a join-storm participant.
    pub hold: Option<Duration>,
    /// Ramp.
    pub ramp: Duration,
    /// Steady phase.
    pub duration: Duration,
    /// Unmeasured start of the steady phase.
    pub warmup: Duration,
    /// Drain limit.
    pub drain: Duration,
    /// Payload padding.
    pub payload_bytes: usize,
    /// Threads.
    pub threads: usize,
    /// Pinning: the first CPU, or `None` to leave threads unpinned.
    pub pin_from: Option<usize>,
    /// Connections per UDP socket.
    pub conns_per_socket: usize,
    /// Received datagrams a joined participant acknowledges at once.
    pub ack_every: u32,
    /// Longest a joined participant delays an acknowledgement.
    pub ack_delay: Duration,
    /// How late after its earliest deadline the event loop wakes.
    pub timer_slack: Duration,
    /// Connect-and-join deadline.
    pub connect_timeout: Duration,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// Token key.
    pub key: KeySource,
    /// Meeting id prefix.
    pub meeting_prefix: String,
    /// Metrics URL.
    pub metrics_url: Option<String>,
    /// JSON output.
    pub json: bool,
    /// SVG output.
    pub plot: Option<PathBuf>,
    /// HdrHistogram interval log output.
    pub hlog: Option<PathBuf>,
    /// No progress line.
    pub quiet: bool,
    /// Leave rather than close at the end.
    pub leave_at_end: bool,
}

/// A flag value that cannot work.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad<T>(msg: impl Into<String>) -> Result<T, UsageError> {
    Err(UsageError(msg.into()))
}

impl Args {
    /// Checks every value and fills the per-scenario defaults.
    pub fn validate(self) -> Result<Settings, UsageError> {
        let server = match self.server.to_socket_addrs() {
            Ok(mut addrs) => match addrs.next() {
                Some(a) => a,
                None => return bad(format!("--server {}: no address", self.server)),
            },
            Err(e) => return bad(format!("--server {}: {e}", self.server)),
        };
        let participants = self.participants.unwrap_or(match self.scenario {
            Scenario::LargeMeeting => 1000,
            Scenario::JoinStorm => 2,
            Scenario::Meetings | Scenario::Churn | Scenario::RollingDrain => 5,
        });
        let rate = self.rate.unwrap_or(match self.scenario {
            Scenario::LargeMeeting => 1.0,
            Scenario::JoinStorm => 0.0,
            Scenario::Meetings | Scenario::Churn | Scenario::RollingDrain => 3.0,
        });
        let ramp = self.ramp.unwrap_or(match self.scenario {
            Scenario::LargeMeeting => Duration::from_secs(30),
            _ => Duration::from_secs(5),
        });
        if participants == 0 {
            return bad("--participants must be at least 1");
        }
        if matches!(
            self.scenario,
            Scenario::Meetings | Scenario::Churn | Scenario::RollingDrain
        ) && self.meetings == 0
        {
            return bad("--meetings must be at least 1");
        }
        if !(rate.is_finite() && (0.0..=100_000.0).contains(&rate)) {
            return bad("--rate must be between 0 and 100000 messages per second");
        }
        if !(self.sender_fraction.is_finite() && (0.0..=1.0).contains(&self.sender_fraction)) {
            return bad("--sender-fraction must be between 0 and 1");
        }
        if self.scenario == Scenario::JoinStorm
            && !(self.join_rate.is_finite() && self.join_rate > 0.0)
        {
            return bad("--join-rate must be above 0");
        }
        if self.scenario == Scenario::Churn
            && !(self.churn_rate.is_finite() && self.churn_rate >= 0.0)
        {
            return bad("--churn-rate must be 0 or more");
        }
        if self.duration.is_zero() {
            return bad("--duration must be above 0");
        }
        if self.warmup >= self.duration {
            return bad("--warmup must be shorter than --duration");
        }
        if self.threads == 0 || self.threads > 1024 {
            return bad("--threads must be between 1 and 1024");
        }
        if self.conns_per_socket == 0 {
            return bad("--conns-per-socket must be at least 1");
        }
        if self.ack_every == 0 || self.ack_every > 64 {
            return bad("--ack-every must be between 1 and 64");
        }
        if self.ack_delay > Duration::from_millis(20) {
            return bad(
                "--ack-delay must be at most 20ms (below the announced max_ack_delay of 25 ms)",
            );
        }
        if self.timer_slack > Duration::from_millis(1) {
            return bad("--timer-slack must be at most 1ms");
        }
        if self.connect_timeout.is_zero() || self.idle_timeout.is_zero() {
            return bad("--connect-timeout and --idle-timeout must be above 0");
        }
        if self.payload_bytes > 15 * 1024 {
            return bad("--payload-bytes must be at most 15360 (payloads are limited to 16 KiB)");
        }
        let key = match (self.signing_key, self.kid) {
            (Some(path), Some(kid)) if !kid.is_empty() => KeySource::File { path, kid },
            (Some(_), _) => return bad("--signing-key needs a non-empty --kid"),
            (None, Some(_)) => return bad("--kid needs --signing-key"),
            (None, None) => {
                KeySource::DevDir(self.dev_dir.unwrap_or_else(mc::dev::default_dev_dir))
            }
        };
        let meeting_prefix = match self.meeting_prefix {
            Some(p) => {
                if p.is_empty()
                    || p.len() > 96
                    || !p
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                {
                    return bad("--meeting-prefix must be 1..96 characters of [A-Za-z0-9_.-]");
                }
                p
            }
            None => format!("lt-{:08x}", rand::random::<u32>()),
        };
        if let Some(url) = &self.metrics_url {
            if let Err(e) = crate::metrics::HttpUrl::parse(url) {
                return bad(format!("--metrics-url: {e}"));
            }
        }
        let total = u64::from(participants)
            * match self.scenario {
                Scenario::Meetings | Scenario::Churn | Scenario::RollingDrain => {
                    u64::from(self.meetings)
                }
                Scenario::LargeMeeting => 1,
                Scenario::JoinStorm => 0,
            };
        if total > 2_000_000 {
            return bad("more than 2,000,000 participants in one process is not supported");
        }
        Ok(Settings {
            scenario: self.scenario,
            transport: self.transport,
            server,
            server_name: self.server_name,
            meetings: self.meetings,
            participants,
            rate,
            sender_fraction: self.sender_fraction,
            join_rate: self.join_rate,
            churn_rate: self.churn_rate,
            rejoin_delay: self.rejoin_delay,
            hold: self.hold,
            ramp,
            duration: self.duration,
            warmup: self.warmup,
            drain: self.drain,
            payload_bytes: self.payload_bytes,
            threads: self.threads,
            pin_from: self.pin.then_some(self.first_cpu),
            conns_per_socket: self.conns_per_socket,
            ack_every: self.ack_every,
            ack_delay: self.ack_delay,
            timer_slack: self.timer_slack,
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            key,
            meeting_prefix,
            metrics_url: self.metrics_url,
            json: self.json,
            plot: self.plot,
            hlog: self.hlog,
            quiet: self.quiet,
            leave_at_end: self.leave_at_end,
        })
    }
}

impl Args {
    /// Settings of `--scenario rolling-drain`.
    pub fn rolling(&self) -> Result<crate::rolling::RollingSettings, UsageError> {
        if self.controllers < 2 {
            return bad("--controllers must be at least 2 for rolling-drain");
        }
        if self.meetings == 0 {
            return bad("--meetings must be at least 1");
        }
        let participants = self.participants.unwrap_or(3);
        if participants < 2 {
            return bad("--participants must be at least 2 for rolling-drain");
        }
        let rate = self.rate.unwrap_or(2.0);
        if !(rate.is_finite() && rate >= 0.0) {
            return bad("--rate must be a non-negative number");
        }
        Ok(crate::rolling::RollingSettings {
            controllers: self.controllers,
            mc_binary: self
                .mc_binary
                .clone()
                .unwrap_or_else(crate::rolling::default_mc_binary),
            shards: self.mc_shards.max(1),
            meetings_per_controller: self.meetings,
            participants,
            rate,
            transport: self.transport,
            threads: self.threads.max(1),
            drain_interval: self.drain_interval,
            drain_timeout: self.mc_drain_timeout,
            json: self.json,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, UsageError> {
        let mut all = vec!["mc-loadtest", "--dev-dir", "/nonexistent"];
        all.extend_from_slice(args);
        Args::try_parse_from(all).unwrap().validate()
    }

    #[test]
    fn scenario_defaults() {
        let s = parse(&["--scenario", "large-meeting"]).unwrap();
        assert_eq!((s.participants, s.rate), (1000, 1.0));
        assert_eq!(s.ramp, Duration::from_secs(30));
        let s = parse(&[]).unwrap();
        assert_eq!((s.meetings, s.participants, s.rate), (200, 5, 3.0));
        assert_eq!(s.ramp, Duration::from_secs(5));
        assert!(s.meeting_prefix.starts_with("lt-"));
    }

    #[test]
    fn rejects_bad_values() {
        for args in [
            &["--warmup", "30s", "--duration", "30s"][..],
            &["--threads", "0"],
            &["--participants", "0"],
            &["--sender-fraction", "1.5"],
            &["--rate=-1"],
            &["--meeting-prefix", "a b"],
            &["--metrics-url", "ftp://x/metrics"],
            &["--metrics-url", "127.0.0.1:8080"],
            &["--signing-key", "k.pem", "--kid", ""],
            &["--server", "nowhere"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }
}
