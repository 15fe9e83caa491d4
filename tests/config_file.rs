//! `config/mc.toml` and the configuration contract of `mc serve`.
//!
//! * The shipped file documents every config-file key exactly once, and its `# key = value`
//!   lines, uncommented, resolve to exactly the built-in defaults: the file and the code cannot
//!   drift apart.
//! * Bad flags, environment variables and files stop the real binary during validation with
//!   exit code 64 and one stderr line naming the flag; none of these cases binds a socket.
//! * `--help` works and lists the main flags.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use mc::config::{Cli, Command, Config, LogFormat, EXIT_USAGE};

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
