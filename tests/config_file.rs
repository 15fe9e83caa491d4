//! `config/mc.toml` and the configuration contract of `mc serve`.
//!
//! * The shipped file documents every config-file key exactly once, and its `# key = value`
//!   lines, uncommented, resolve to exactly the built-in defaults: the file and the code cannot
//!   drift apart.
//! * Bad flags, environment variables and files stop the real binary during validation with
//!   exit code 64 and one stderr line naming the flag; none of these cases binds a socket.
//! * `--help` works and lists the main flags.
//! * Every declared setting (`mc::config::settings()`) is one flag with its `MC_*` variable and
//!   file key, under the same heading in `--help`, docs/configuration.md and config/mc.toml,
//!   with the same default and range; the deploy manifests set only declared variables.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use mc::config::{settings, Cli, Command, Config, Heading, LogFormat, Place, Setting, EXIT_USAGE};

/// The shipped configuration file.
const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/mc.toml");

/// Keys without a fixed default: the file shows them with an example value, which the
/// defaults check leaves commented (paths must exist, the others are computed at start-up).
const EXAMPLE_KEYS: &[&str] = &[
    "dev_dir",
    "tls_cert",
    "tls_key",
    "jwks",
    "binding_secret_file",
    "shards",
    "cpus",
    "gc_url",
    "gc_token_file",
    "gc_ca_file",
    "gc_inbound_token_file",
    "admin_token_file",
    "mc_id",
    "advertise_quic",
    "advertise_webtransport",
    "allowed_origins",
];

/// How long any `mc` invocation may take before the test kills it.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(20);

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "mc-config-file-{name}-{}-{nanos}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Resolves `mc serve <args>` in-process, as `main` does.
fn resolve(args: &[&str]) -> Result<Config, String> {
    let mut argv = vec!["mc", "serve"];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    match cli.command {
        Command::Serve(a) => Config::resolve(*a).map_err(|e| e.to_string()),
        other => panic!("not serve: {other:?}"),
    }
}

/// `(key, value)` of a line `# key = value`, the form the file uses for every key.
fn documented_key(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("# ")?;
    let (key, value) = rest.split_once(" = ")?;
    let is_key = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    is_key.then_some((key, value))
}

/// The shipped file with every `# key = default` line uncommented, `dev = true` (so no TLS or
/// JWKS file is needed) and the example-only keys left commented.
fn uncommented_defaults() -> String {
    let text = std::fs::read_to_string(SHIPPED).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        match documented_key(line) {
            Some(("dev", _)) => out.push_str("dev = true"),
            Some((key, _)) if EXAMPLE_KEYS.contains(&key) => out.push_str(line),
            Some(_) => out.push_str(&line[2..]),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The keys `FileConfig` accepts, read from the "expected one of" list of its error for an
/// unknown key (so a key added to the code shows up here without touching this test).
fn accepted_keys() -> BTreeSet<String> {
    let dir = TempDir::new("keys");
    let p = dir.write("unknown.toml", "dev = true\nnot_a_key = 1\n");
    let e = resolve(&["--config", p.to_str().unwrap()]).unwrap_err();
    let (_, list) = e
        .split_once("expected one of")
        .unwrap_or_else(|| panic!("no key list in: {e}"));
    let keys: BTreeSet<String> = list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(keys.len() > 30, "{keys:?}");
    keys
}

#[test]
fn every_file_key_is_documented_exactly_once() {
    let text = std::fs::read_to_string(SHIPPED).unwrap();
    let mut seen = Vec::new();
    let mut comment_above = String::new();
    for line in text.lines() {
        if let Some((key, _)) = documented_key(line) {
            let words = comment_above
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let example = words.contains("example shown");
            assert_eq!(
                example,
                EXAMPLE_KEYS.contains(&key),
                "`{key}`: the comment must say \"example shown\" exactly for keys without a \
                 fixed default"
            );
            assert!(
                !comment_above.trim().is_empty(),
                "`{key}` has no comment line"
            );
            seen.push(key.to_owned());
            comment_above.clear();
        } else if let Some(comment) = line.strip_prefix('#') {
            comment_above.push_str(comment);
            comment_above.push('\n');
        } else {
            comment_above.clear();
        }
    }
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "a key is documented twice: {seen:?}"
    );
    assert_eq!(unique, accepted_keys(), "config/mc.toml vs FileConfig");
    for k in EXAMPLE_KEYS {
        assert!(unique.contains(*k), "{k}");
    }
}

#[test]
fn shipped_file_parses_and_sets_nothing() {
    let with_file = resolve(&["--config", SHIPPED, "--dev"]).unwrap();
    let without = resolve(&["--dev"]).unwrap();
    assert_eq!(format!("{with_file:?}"), format!("{without:?}"));
}

#[test]
fn uncommented_defaults_are_the_code_defaults() {
    let dir = TempDir::new("defaults");
    let p = dir.write("mc.toml", &uncommented_defaults());
    let c = resolve(&["--config", p.to_str().unwrap()]).unwrap();

    // Exactly what the code resolves with no file at all. The file states the production
    // log format (json) and control address (all interfaces); with dev on and nothing set,
    // the code picks text and loopback. The file's log filter is `info`, which the code picks
    // too unless RUST_LOG is set.
    let mut base = resolve(&["--dev"]).unwrap();
    assert_eq!(base.log_format, LogFormat::Text);
    base.log_format = LogFormat::Json;
    assert_eq!(base.control_listen, "127.0.0.1:8080".parse().unwrap());
    base.control_listen = "0.0.0.0:8080".parse().unwrap();
    base.log_level = "info".into();
    assert_eq!(format!("{c:?}"), format!("{base:?}"));

    // And the documented values themselves.
    let secs = Duration::from_secs;
    assert!(c.dev);
    assert_eq!(c.listen, "0.0.0.0:4433".parse::<SocketAddr>().unwrap());
    assert_eq!(
        c.control_listen,
        "0.0.0.0:8080".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.shards, None);
    assert_eq!(c.cpus, None);
    assert_eq!(c.io_memory, 1_048_576);
    assert_eq!(c.spin_before_park, Duration::ZERO);
    assert_eq!(c.mailbox_size, 1024);
    assert_eq!(c.max_connections_per_shard, 10_000);
    assert_eq!(c.max_participants_per_meeting, 1000);
    assert_eq!(c.max_meetings, 10_000);
    assert_eq!(c.max_participants, 100_000);
    assert_eq!(c.slow_consumer_drops, 64);
    assert_eq!(c.rate_limit, 50.0);
    assert_eq!(c.rate_burst, 100.0);
    assert_eq!(c.idle_timeout, secs(30));
    assert_eq!(c.keep_alive, secs(10));
    assert_eq!(c.join_timeout, secs(10));
    assert_eq!(c.resume_window, secs(30));
    assert_eq!(c.empty_meeting_timeout, secs(60));
    assert_eq!(c.clock_skew, secs(60));
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.log_level, "info");
    assert_eq!(c.region, "local");
    assert_eq!(c.gc_timeout, secs(2));
    assert_eq!(c.drain_timeout, secs(60));
    assert_eq!(c.gc_url, None);
    assert_eq!(c.tls_cert, None);
    assert_eq!(c.jwks, None);
    assert_eq!(c.admin_token_file, None);
    assert_eq!(c.allowed_origins, None, "any origin with dev");
}

#[test]
fn example_values_that_need_no_file_are_valid() {
    // Uncomment the examples that need no existing file and no GC; they must parse as shown.
    let text = uncommented_defaults();
    let mut out = String::new();
    for line in text.lines() {
        match documented_key(line) {
            Some((key, _))
                if [
                    "dev_dir",
                    "shards",
                    "cpus",
                    "mc_id",
                    "advertise_quic",
                    "advertise_webtransport",
                    "allowed_origins",
                ]
                .contains(&key) =>
            {
                out.push_str(&line[2..])
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    let dir = TempDir::new("examples");
    let p = dir.write("mc.toml", &out);
    let c = resolve(&["--config", p.to_str().unwrap()]).unwrap();
    assert_eq!(c.shards, Some(4));
    assert_eq!(c.cpus, Some(vec![0, 1, 2, 3]));
    assert_eq!(c.mc_id, "mc-1");
    assert_eq!(c.dev_dir, PathBuf::from("/var/lib/mc/dev"));
    assert_eq!(
        c.allowed_origins,
        Some(vec!["https://meet.example.com".to_owned()])
    );
}

/// What one run of the binary did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the `mc` binary with `args` and extra `env` (every ambient `MC_*` variable and
/// `RUST_LOG` removed),
/// killing it after [`PROCESS_TIMEOUT`].
fn run_mc(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Process::new(env!("CARGO_BIN_EXE_mc"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MC_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("spawn mc");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for mc") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`mc {}` still running after {PROCESS_TIMEOUT:?}; killed",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// Asserts a usage failure: exit 64 and exactly one stderr line, `mc: ...`, containing every
/// `needle`. Returns that line.
fn assert_usage_error(run: &Run, what: &str, needles: &[&str]) -> String {
    assert_eq!(
        run.code,
        Some(EXIT_USAGE),
        "{what}: exit code; stderr: {}",
        run.stderr
    );
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "{what}: one stderr line, got {lines:?}");
    let line = lines[0];
    assert!(line.starts_with("mc: "), "{what}: {line}");
    for n in needles {
        assert!(line.contains(n), "{what}: `{n}` not in: {line}");
    }
    line.to_owned()
}

/// A CPU number this process cannot run on (so `--cpus` with it fails before any shard starts).
fn unusable_cpu() -> usize {
    let usable = mc::runtime::cpus::usable_cpus();
    (999..=4095)
        .find(|c| !usable.contains(c))
        .expect("an unusable CPU number")
}

#[test]
fn bad_configuration_exits_64_with_one_line_naming_the_flag() {
    let dir = TempDir::new("bad");
    let dev_dir = dir.path().join("dev");
    let dev_dir = dev_dir.to_str().unwrap();
    let unknown = dir.write("unknown.toml", "dev = true\nmailbox_sise = 77\n");
    let unknown = unknown.to_str().unwrap();
    let cpu = unusable_cpu().to_string();
    let token = dir.write("gc-token", "secret\n");
    let token = token.to_str().unwrap();
    let not_pem = dir.write("ca.pem", "not a certificate\n");
    let not_pem = not_pem.to_str().unwrap();

    #[allow(clippy::type_complexity)] // (name, args, env, expected stderr words)
    let cases: Vec<(&str, Vec<&str>, Vec<(&str, &str)>, Vec<&str>)> = vec![
        (
            "flag out of range",
            vec![
                "serve",
                "--dev",
                "--dev-dir",
                dev_dir,
                "--mailbox-size",
                "0",
            ],
            vec![],
            vec!["--mailbox-size", "out of range"],
        ),
        (
            "missing config file",
            vec!["serve", "--config", "/nonexistent/mc.toml"],
            vec![],
            vec!["--config", "/nonexistent/mc.toml"],
        ),
        (
            "unknown config key",
            vec!["serve", "--config", unknown],
            vec![],
            vec!["--config", "mailbox_sise"],
        ),
        (
            "bad environment value",
            vec!["serve", "--dev", "--dev-dir", dev_dir],
            vec![("MC_MAILBOX_SIZE", "abc")],
            vec!["--mailbox-size", "abc"],
        ),
        (
            "no TLS or JWKS without --dev",
            vec!["serve"],
            vec![],
            vec!["--tls-cert is required"],
        ),
        (
            "bad duration",
            vec![
                "serve",
                "--dev",
                "--dev-dir",
                dev_dir,
                "--idle-timeout",
                "forever",
            ],
            vec![],
            vec!["--idle-timeout"],
        ),
        (
            "log filter that does not parse",
            vec![
                "serve",
                "--dev",
                "--dev-dir",
                dev_dir,
                "--log-level",
                "mc=loud",
            ],
            vec![],
            vec!["--log-level", "mc=loud"],
        ),
        (
            "GC CA file without a certificate",
            vec![
                "serve",
                "--dev",
                "--dev-dir",
                dev_dir,
                "--gc-url",
                "https://gc.test",
                "--gc-token-file",
                token,
                "--gc-inbound-token-file",
                token,
                "--gc-ca-file",
                not_pem,
            ],
            vec![],
            vec!["--gc-ca-file", "no PEM CERTIFICATE block"],
        ),
        (
            "GC CA file for a plain-HTTP GC",
            vec!["serve", "--dev", "--dev-dir", dev_dir],
            vec![
                ("MC_GC_URL", "http://gc.test"),
                ("MC_GC_TOKEN_FILE", token),
                ("MC_GC_INBOUND_TOKEN_FILE", token),
                ("MC_GC_CA_FILE", not_pem),
            ],
            vec!["--gc-ca-file needs an https:// --gc-url"],
        ),
        (
            "RUST_LOG that does not parse",
            vec!["serve", "--dev", "--dev-dir", dev_dir],
            vec![("RUST_LOG", "mc=loud")],
            vec!["RUST_LOG", "mc=loud"],
        ),
        (
            "spin longer than 10 ms",
            vec!["serve", "--dev", "--dev-dir", dev_dir],
            vec![("MC_SPIN_BEFORE_PARK", "1s")],
            vec!["--spin-before-park", "out of range"],
        ),
        (
            "queue delay longer than 10 s",
            vec![
                "serve",
                "--dev",
                "--dev-dir",
                dev_dir,
                "--max-queue-delay",
                "11s",
            ],
            vec![],
            vec!["--max-queue-delay", "out of range"],
        ),
        (
            "turn budget above 100 ms",
            vec![
                "serve",
                "--dev",
                "--dev-dir",
                dev_dir,
                "--turn-budget",
                "1s",
            ],
            vec![],
            vec!["--turn-budget", "out of range"],
        ),
        (
            "turn of fewer datagrams than one receive batch",
            vec!["serve", "--dev", "--dev-dir", dev_dir],
            vec![("MC_TURN_MAX_DATAGRAMS", "10")],
            vec!["--turn-max-datagrams", "out of range"],
        ),
        (
            "CPU outside the affinity mask",
            vec!["serve", "--dev", "--dev-dir", dev_dir, "--cpus", &cpu],
            vec![],
            vec!["--cpus", &cpu],
        ),
    ];
    for (what, args, env, needles) in &cases {
        let run = run_mc(args, env);
        assert_usage_error(&run, what, needles);
        assert!(
            !run.stdout.contains("listening"),
            "{what}: the server started: {}",
            run.stdout
        );
    }
}

/// Asserts clap's full report of a command-line error: exit 64, the error, the pointer to
/// `--help`, and the `needles` (clap's tip and usage line where clap prints them).
fn assert_clap_error(run: &Run, what: &str, needles: &[&str]) {
    assert_eq!(
        run.code,
        Some(EXIT_USAGE),
        "{what}: exit code; stderr: {}",
        run.stderr
    );
    let err = &run.stderr;
    assert!(err.starts_with("error: "), "{what}: {err}");
    assert!(
        err.contains("For more information, try '--help'."),
        "{what}: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{what}: `{n}` not in: {err}");
    }
    assert!(!run.stdout.contains("listening"), "{what}: {}", run.stdout);
}

#[test]
fn bad_flags_print_clap_usage_and_tip_and_exit_64() {
    let run = run_mc(&["serve", "--dev", "--mailbox", "5"], &[]);
    assert_clap_error(
        &run,
        "misspelt flag",
        &[
            "unexpected argument '--mailbox'",
            "tip: a similar argument exists: '--mailbox-size'",
            "Usage: mc serve --dev --mailbox-size <MAILBOX_SIZE>",
        ],
    );
    let run = run_mc(&["serve"], &[("MC_DEV", "yes")]);
    assert_clap_error(
        &run,
        "boolean environment value other than true/false",
        &["'yes'", "--dev"],
    );
    let run = run_mc(&["admin", "--token-file", "/x", "lsit"], &[]);
    assert_clap_error(
        &run,
        "misspelt subcommand",
        &[
            "unrecognized subcommand 'lsit'",
            "tip: a similar subcommand exists: 'list'",
            "Usage: mc admin",
        ],
    );
}

#[test]
fn rust_log_sets_the_filter_when_log_level_is_not_given() {
    let dir = TempDir::new("rust-log");
    let dev_dir = dir.path().join("dev");
    let dev_dir = dev_dir.to_str().unwrap();
    let base = ["serve", "--dev", "--dev-dir", dev_dir];
    let resolve_with = |extra: &[&str]| {
        let mut argv = vec!["mc"];
        argv.extend_from_slice(&base);
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(a) => Config::resolve(*a),
            _ => unreachable!(),
        }
    };
    // The process's own RUST_LOG is what the resolver reads: compare with it.
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            assert_eq!(resolve_with(&[]).unwrap().log_level, v);
        }
        _ => assert_eq!(resolve_with(&[]).unwrap().log_level, "info"),
    }
    assert_eq!(
        resolve_with(&["--log-level", "mc=debug"])
            .unwrap()
            .log_level,
        "mc=debug"
    );

    // A real process that logs and exits: the control port is taken, so it logs the CPU
    // placement (info), then `startup failed` (error) and exits 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let args = [
        "serve",
        "--dev",
        "--dev-dir",
        dev_dir,
        "--listen",
        "127.0.0.1:0",
        "--control-listen",
        &taken,
        "--shards",
        "1",
        "--io-memory",
        "262144",
    ];
    let run = run_mc(&args, &[("RUST_LOG", "error")]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("startup failed"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("CPU placement"),
        "RUST_LOG=error hides info events: {}",
        run.stderr
    );
    let run = run_mc(&args, &[("RUST_LOG", "mc=info")]);
    assert!(run.stderr.contains("CPU placement"), "{}", run.stderr);
    let mut with_flag = args.to_vec();
    with_flag.extend(["--log-level", "info"]);
    let run = run_mc(&with_flag, &[("RUST_LOG", "error")]);
    assert!(
        run.stderr.contains("CPU placement"),
        "--log-level wins over RUST_LOG: {}",
        run.stderr
    );
}

#[test]
fn precedence_is_flag_then_env_then_file() {
    // Each level carries a different bad value; the error names the one that won.
    let dir = TempDir::new("precedence");
    let file = dir.write("mc.toml", "dev = true\nmailbox_size = 0\n");
    let file = file.to_str().unwrap();
    let dev_dir = dir.path().join("dev");
    let dev_dir = dev_dir.to_str().unwrap();
    let base = ["serve", "--dev-dir", dev_dir, "--config", file];

    let run = run_mc(&base, &[]);
    assert_usage_error(&run, "file", &["--mailbox-size", "0 is out of range"]);

    let run = run_mc(&base, &[("MC_MAILBOX_SIZE", "from-env")]);
    assert_usage_error(&run, "env over file", &["--mailbox-size", "`from-env`"]);

    let mut with_flag = base.to_vec();
    with_flag.extend(["--mailbox-size", "from-flag"]);
    let run = run_mc(&with_flag, &[("MC_MAILBOX_SIZE", "from-env")]);
    assert_usage_error(&run, "flag over env", &["--mailbox-size", "`from-flag`"]);

    // The file is read through MC_CONFIG too.
    let run = run_mc(&["serve", "--dev-dir", dev_dir], &[("MC_CONFIG", file)]);
    assert_usage_error(&run, "MC_CONFIG", &["--mailbox-size", "0 is out of range"]);
}

#[test]
fn help_exits_0_and_lists_the_main_flags() {
    let run = run_mc(&["--help"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    for sub in ["serve", "token", "admin"] {
        assert!(run.stdout.contains(sub), "{sub} in: {}", run.stdout);
    }

    let run = run_mc(&["serve", "--help"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    for flag in [
        "--listen",
        "--control-listen",
        "--shards",
        "--cpus",
        "--tls-cert",
        "--tls-key",
        "--jwks",
        "--mailbox-size",
        "--dev",
        "--config",
    ] {
        assert!(run.stdout.contains(flag), "{flag} in: {}", run.stdout);
    }
    assert!(
        !run.stdout.contains("--enable-test-hooks"),
        "test hooks stay hidden"
    );
}

/// The `mc serve` subcommand as clap builds it.
fn serve_command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
        .find_subcommand("serve")
        .expect("serve subcommand")
        .clone()
}

/// The declared settings of `heading`, in declaration order.
fn declared_under(heading: Heading) -> Vec<Setting> {
    settings()
        .into_iter()
        .filter(|s| s.heading == heading)
        .collect()
}

#[test]
fn every_setting_is_one_flag_with_its_variable_heading_and_default() {
    let cmd = serve_command();
    let all = settings();
    let declared: BTreeSet<&str> = all.iter().map(|s| s.name).collect();
    assert_eq!(declared.len(), all.len(), "a setting is declared twice");
    let args: BTreeSet<String> = cmd
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .filter(|id| id != "help" && id != "version")
        .collect();
    assert_eq!(
        args,
        declared.iter().map(|s| s.to_string()).collect(),
        "serve's arguments vs the declared settings"
    );
    for s in &all {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == s.name)
            .unwrap_or_else(|| panic!("no argument for {}", s.name));
        let flag = s.flag();
        assert_eq!(flag, s.name.replace('_', "-"));
        assert_eq!(arg.get_long(), Some(flag.as_str()), "{}", s.name);
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some(format!("MC_{}", s.name.to_ascii_uppercase()).as_str()),
            "{}",
            s.name
        );
        assert_eq!(
            arg.get_help_heading(),
            Some(s.heading.title()),
            "{}",
            s.name
        );
        assert_eq!(arg.is_hide_set(), s.place == Place::Hidden, "{}", s.name);
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        assert!(help.starts_with(&s.help), "{}: {help}", s.name);
        assert!(!s.help.is_empty() && !s.help.ends_with('.'), "{}", s.name);
        match &s.default_help {
            Some(d) => assert!(
                help.ends_with(&format!(" [default: {d}]"))
                    && help.matches("[default:").count() == 1,
                "{}: the default is shown once, at the end: {help}",
                s.name
            ),
            None => assert!(!help.contains("[default:"), "{}: {help}", s.name),
        }
        assert_eq!(s.file_key().is_some(), s.place == Place::File, "{}", s.name);
    }
    // The file takes every setting but `--config` itself and the hidden test switches.
    let file_keys: BTreeSet<String> = all
        .iter()
        .filter_map(|s| s.file_key())
        .map(str::to_owned)
        .collect();
    assert_eq!(
        file_keys,
        accepted_keys(),
        "declared file keys vs the keys the file accepts"
    );
}

/// Production mode (no `--dev`) with every file it requires given as `file`, except `except`'s.
fn production(file: &str, except: &str) -> Vec<String> {
    ["tls_cert", "tls_key", "jwks", "binding_secret_file"]
        .into_iter()
        .filter(|name| *name != except)
        .flat_map(|name| [format!("--{}", name.replace('_', "-")), file.to_owned()])
        .collect()
}

/// Resolves `args`, as `Config`'s debug output.
fn resolve_owned(args: &[String]) -> Result<String, String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    resolve(&args).map(|c| format!("{c:?}"))
}

#[test]
fn every_fixed_default_is_a_valid_value_that_changes_nothing() {
    let dir = TempDir::new("defaults-valid");
    let file = dir.write("some-file", "x\n");
    let file = file.to_str().unwrap();
    let base = resolve_owned(&production(file, "")).unwrap();
    let mut checked = 0;
    for s in settings() {
        let Some(d) = &s.default_value else { continue };
        let mut args = production(file, "");
        args.extend([format!("--{}", s.flag()), d.clone()]);
        let c = resolve_owned(&args)
            .unwrap_or_else(|e| panic!("--{} {d}: the declared default is refused: {e}", s.flag()));
        assert_eq!(c, base, "--{} {d}", s.flag());
        checked += 1;
    }
    assert!(checked > 25, "{checked}");
}

/// A value of `s` other than its default (with the flags it needs), for the flag/file test.
fn sample(s: &Setting, file: &str) -> (String, Vec<String>) {
    let tokens = vec![
        "--gc-token-file".to_owned(),
        file.to_owned(),
        "--gc-inbound-token-file".to_owned(),
        file.to_owned(),
    ];
    let mut https_gc = vec!["--gc-url".to_owned(), "https://gc.test".to_owned()];
    https_gc.extend(tokens.clone());
    if let Some(range) = &s.range {
        let (_, max) = range.split_once("..=").unwrap();
        return (max.to_owned(), vec![]);
    }
    let v = match s.name {
        "dev_dir" => "/var/lib/mc/dev",
        "listen" | "control_listen" => "127.0.0.1:9",
        "shards" => "4",
        "cpus" => "0-3",
        "tls_cert"
        | "tls_key"
        | "jwks"
        | "binding_secret_file"
        | "admin_token_file"
        | "gc_token_file"
        | "gc_inbound_token_file" => file,
        "log_format" => "text",
        "log_level" => "mc=debug",
        "gc_url" => return ("https://gc.test".into(), tokens),
        "gc_ca_file" => return (file.into(), https_gc),
        "mc_id" => "mc-7",
        "region" => "eu-1",
        "advertise_quic" => "mc-7.example.com:4433",
        "advertise_webtransport" => "https://mc-7.example.com:4433",
        "allowed_origins" => "https://meet.example.com",
        other => panic!("`{other}`: add a sample value to this test"),
    };
    (v.to_owned(), vec![])
}

#[test]
fn flag_and_file_key_set_the_same_setting() {
    let dir = TempDir::new("same");
    let base_file = dir.write("base-file", "x\n");
    let base_file = base_file.to_str().unwrap();
    let other = dir.write("other-file", "y\n");
    let other = other.to_str().unwrap();
    let cmd = serve_command();
    let mut checked = 0;
    for s in settings().into_iter().filter(|s| s.place == Place::File) {
        let key = s.file_key().unwrap();
        let flag = format!("--{}", s.flag());
        let takes_value = cmd
            .get_arguments()
            .find(|a| a.get_id() == s.name)
            .unwrap()
            .get_action()
            .takes_values();
        let (flag_args, file_line, extra) = if takes_value {
            let (v, extra) = sample(&s, other);
            (
                vec![flag.clone(), v.clone()],
                format!("{key} = {v:?}"),
                extra,
            )
        } else {
            (vec![flag.clone()], format!("{key} = true"), vec![])
        };
        let p = dir.write(&format!("{key}.toml"), &format!("{file_line}\n"));
        let mut base = production(base_file, s.name);
        base.extend(extra.iter().cloned());
        let mut by_flag = base.clone();
        by_flag.extend(flag_args);
        let mut by_file = base;
        by_file.extend(["--config".to_owned(), p.to_str().unwrap().to_owned()]);
        let mut untouched = production(base_file, "");
        untouched.extend(extra);
        let by_flag = resolve_owned(&by_flag).unwrap_or_else(|e| panic!("{flag}: {e}"));
        let by_file = resolve_owned(&by_file).unwrap_or_else(|e| panic!("{file_line}: {e}"));
        assert_eq!(by_flag, by_file, "{flag} and `{key}` resolve differently");
        let untouched = resolve_owned(&untouched).unwrap();
        assert_ne!(by_flag, untouched, "{flag} {file_line}: changed nothing");
        checked += 1;
    }
    assert!(checked > 40, "{checked}");
}

/// The cells of the docs table rows of `mc serve` settings, per `### heading`, in order.
fn docs_tables() -> Vec<(String, Vec<String>, Vec<Vec<String>>)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let section = text
        .split("\n## `mc serve` settings\n")
        .nth(1)
        .expect("a `mc serve` settings section");
    let section = section.split("\n## ").next().unwrap();
    let mut out: Vec<(String, Vec<String>, Vec<Vec<String>>)> = Vec::new();
    for line in section.lines() {
        if let Some(title) = line.strip_prefix("### ") {
            out.push((title.to_owned(), Vec::new(), Vec::new()));
        } else if line.starts_with('|') && !line.starts_with("|---") {
            let cells: Vec<String> = line
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect();
            let (_, header, rows) = out.last_mut().expect("a table under a ### heading");
            if header.is_empty() {
                *header = cells;
            } else {
                rows.push(cells);
            }
        }
    }
    out
}

#[test]
fn docs_list_every_setting_under_its_heading_with_the_declared_values() {
    let tables = docs_tables();
    let titles: Vec<&str> = tables.iter().map(|(t, _, _)| t.as_str()).collect();
    let expected: Vec<&str> = Heading::ALL.iter().map(|h| h.title()).collect();
    assert_eq!(titles, expected, "docs sections vs --help headings");
    for ((_, header, rows), heading) in tables.iter().zip(Heading::ALL) {
        let col = |name: &str| header.iter().position(|h| h == name);
        let declared = declared_under(heading);
        let flags: Vec<String> = rows
            .iter()
            .map(|r| {
                let cell = &r[0];
                let end = cell[1..].find('`').expect("a `--flag` cell") + 1;
                cell[1..end].to_owned()
            })
            .collect();
        let want: Vec<String> = declared.iter().map(|s| format!("--{}", s.flag())).collect();
        assert_eq!(flags, want, "{}: rows vs declarations", heading.title());
        for (s, row) in declared.iter().zip(rows) {
            let what = format!("docs row of --{}", s.flag());
            assert_eq!(row.len(), header.len(), "{what}: {row:?}");
            assert_eq!(
                row[0].ends_with("(hidden)"),
                s.place == Place::Hidden,
                "{what}"
            );
            assert_eq!(row[col("env").unwrap()], format!("`{}`", s.env()), "{what}");
            let key = match s.file_key() {
                Some(k) => format!("`{k}`"),
                None => "—".to_owned(),
            };
            assert_eq!(row[col("file key").unwrap()], key, "{what}");
            if let (Some(d), Some(c)) = (&s.default_value, col("default")) {
                assert!(
                    row[c].contains(&format!("`{d}`")),
                    "{what}: default `{d}` not in {}",
                    row[c]
                );
            }
            if let (Some(r), Some(c)) = (&s.range, col("valid")) {
                assert!(row[c].starts_with(r), "{what}: range {r} vs {}", row[c]);
            }
        }
    }
}

#[test]
fn shipped_file_shows_each_key_under_its_heading_with_the_declared_default() {
    let text = std::fs::read_to_string(SHIPPED).unwrap();
    let mut section = None;
    let mut found = BTreeSet::new();
    let all = settings();
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("# --- ") {
            section = Some(title.trim_end_matches(['-', ' ']).to_owned());
            continue;
        }
        let Some((key, value)) = documented_key(line) else {
            continue;
        };
        let s = all
            .iter()
            .find(|s| s.file_key() == Some(key))
            .unwrap_or_else(|| panic!("`{key}` is not a declared file key"));
        assert_eq!(section.as_deref(), Some(s.heading.title()), "`{key}`");
        if let Some(d) = &s.default_value {
            assert!(
                value == d || value == format!("\"{d}\""),
                "`{key} = {value}`: the declared default is {d}"
            );
        }
        found.insert(key);
    }
    assert_eq!(
        found.len(),
        all.iter().filter(|s| s.file_key().is_some()).count()
    );
}

#[test]
fn help_groups_the_flags_under_the_docs_headings() {
    let run = run_mc(&["serve", "--help"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // Heading lines end with `:` at column 0; flags start with `--` after the indent.
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for line in run.stdout.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            groups.push((line.trim_end_matches(':').to_owned(), Vec::new()));
        } else if let Some(rest) = line.trim_start().strip_prefix("--") {
            if line.starts_with("      --") {
                let flag = rest.split([' ', '<']).next().unwrap();
                if let Some((_, flags)) = groups.last_mut() {
                    flags.push(format!("--{flag}"));
                }
            }
        }
    }
    let groups: Vec<(String, Vec<String>)> =
        groups.into_iter().filter(|(t, _)| t != "Options").collect();
    let want: Vec<(String, Vec<String>)> = Heading::ALL
        .iter()
        .map(|h| {
            let flags = declared_under(*h)
                .iter()
                .filter(|s| s.place != Place::Hidden)
                .map(|s| format!("--{}", s.flag()))
                .collect();
            (h.title().to_owned(), flags)
        })
        .collect();
    assert_eq!(groups, want, "{}", run.stdout);
    assert!(
        run.stdout.contains("[default: 0.0.0.0:4433]"),
        "{}",
        run.stdout
    );
}

#[test]
fn deploy_manifests_set_only_declared_variables() {
    let declared: BTreeSet<String> = settings().iter().map(Setting::env).collect();
    let mut stack = vec![PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy"
    ))];
    let mut seen = 0;
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if !p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for line in text.lines().map(str::trim_start) {
            if line.starts_with('#') {
                continue;
            }
            // `MC_X: value` (a ConfigMap key) or `- name: MC_X` (a container variable).
            let name = line
                .strip_prefix("- name: ")
                .or_else(|| line.strip_prefix("name: "))
                .map(str::trim)
                .or_else(|| line.split_once(':').map(|(k, _)| k.trim()))
                .filter(|k| k.starts_with("MC_"));
            if let Some(name) = name {
                assert!(
                    declared.contains(name),
                    "{}: `{name}` is not a `mc serve` variable",
                    p.display()
                );
                seen += 1;
            }
        }
    }
    assert!(seen > 20, "{seen}");
}
