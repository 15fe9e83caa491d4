//! Test support: start the real `mc` binary (its path is known to this package's integration
//! tests only) and talk to it with the blocking quiche clients of `mc-test-support`.
#![allow(dead_code, unused_imports)] // each test binary uses a different part

pub mod fleet;
pub mod follow;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mc::core::protocol::Role;
use mc::core::token::{MintClaims, TokenSigner};
pub use mc_test_support::udp::Client;
pub use mc_test_support::{participant_id, Closed};

/// The WebTransport client.
pub mod wt {
    pub use mc_test_support::wt::WtClient;
}

/// A running server process; killed on drop.
pub struct Server {
    pub child: Child,
    pub quic: SocketAddr,
    pub control: SocketAddr,
    pub dev_dir: PathBuf,
    pub signer: TokenSigner,
    pub stdout_lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The server's log (stderr), also passed through to the test's stderr.
    pub stderr_lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The read end of a stderr pipe that nobody reads ([`Server::start_with_unread_log`]).
    pub unread_stderr: Option<std::process::ChildStderr>,
}

pub fn unique_dir(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let d = std::env::temp_dir().join(format!("mc-test-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Server {
    /// Starts `mc serve --dev` on loopback with ephemeral ports and `extra` flags.
    pub fn start(tag: &str, extra: &[&str]) -> Server {
        let dev_dir = unique_dir(tag);
        Self::start_in(dev_dir, extra)
    }

    pub fn start_in(dev_dir: PathBuf, extra: &[&str]) -> Server {
        let level = std::env::var("MC_TEST_LOG").unwrap_or_else(|_| "warn".into());
        Self::launch(dev_dir, &level, extra, true)
    }

    /// Starts a server whose stderr is a one-page pipe that nobody reads, as behind a log
    /// collector that has stopped: once a few lines have filled it, every `write` to it would
    /// block.
    pub fn start_with_unread_log(tag: &str, level: &str, extra: &[&str]) -> Server {
        Self::launch(unique_dir(tag), level, extra, false)
    }

    fn launch(dev_dir: PathBuf, level: &str, extra: &[&str], read_stderr: bool) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mc"));
        cmd.args([
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--control-listen",
            "127.0.0.1:0",
        ])
        .arg("--dev-dir")
        .arg(&dev_dir)
        .args(["--io-memory", "262144", "--log-level", level])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn mc");
        let stderr = child.stderr.take().unwrap();
        let err_lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut unread_stderr = None;
        if read_stderr {
            let err_lines2 = err_lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    err_lines2.lock().unwrap().push(line);
                }
            });
        } else {
            use std::os::fd::AsRawFd;
            // SAFETY: fcntl on a pipe descriptor we own; the result is checked.
            let r = unsafe { libc::fcntl(stderr.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
            assert!(r >= 0, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
            unread_stderr = Some(stderr);
        }
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("listening ") {
                    let _ = tx.send(line.clone());
                }
                lines2.lock().unwrap().push(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server did not print its listening line");
        let field = |k: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap()
                .parse()
                .unwrap()
        };
        let quic = field("quic=");
        let control = field("control=");
        let pem = std::fs::read_to_string(dev_dir.join("signing-key.pem")).unwrap();
        let signer = TokenSigner::from_pkcs8_pem(&pem, mc::dev::DEV_KID).unwrap();
        Server {
            child,
            quic,
            control,
            dev_dir,
            signer,
            stdout_lines: lines,
            stderr_lines: err_lines,
            unread_stderr,
        }
    }

    pub fn token(&self, meeting: &str, role: Role, sub: &str) -> String {
        let now = unix_secs();
        self.signer.mint(&MintClaims {
            sub: sub.into(),
            meeting_id: meeting.into(),
            role,
            iat: now,
            exp: now + 3600,
            jti: None,
        })
    }

    /// Plain HTTP GET against the control server; returns (status, body).
    pub fn http(&self, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
        http_request(self.control, method, path, auth, None)
    }

    pub fn metrics(&self) -> String {
        self.http("GET", "/metrics", None).1
    }

    /// Scrapes `/metrics` until `settled` holds or `within` passes, and returns the last
    /// exposition either way. A scrape serves a shard's last good snapshot when the shard does
    /// not answer within the scrape deadline, so on a loaded machine figures can trail events.
    #[allow(dead_code)] // not every test binary that includes this module scrapes
    pub fn metrics_when(&self, within: Duration, settled: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let m = self.metrics();
            if settled(&m) || Instant::now() >= deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Waits for exit up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dev_dir);
    }
}

pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: Bearer {a}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn dev_dir_signer(dir: &Path) -> TokenSigner {
    let pem = std::fs::read_to_string(dir.join("signing-key.pem")).unwrap();
    TokenSigner::from_pkcs8_pem(&pem, mc::dev::DEV_KID).unwrap()
}

/// Every series of `name` in a Prometheus text exposition: `(labels, value)`, where `labels`
/// is the `name{...}` part (empty braces absent for series without labels).
pub fn metric_values<'a>(metrics: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| {
            let (labels, v) = l.rsplit_once(' ')?;
            Some((labels, v.parse().ok()?))
        })
        .collect()
}

/// Sum of every series of `name` (a counter or gauge) whose labels contain `label_filter`
/// (`""` for all), read from a Prometheus text exposition.
pub fn metric_sum(metrics: &str, name: &str, label_filter: &str) -> f64 {
    metric_values(metrics, name)
        .into_iter()
        .filter(|(l, _)| l.contains(label_filter))
        .map(|(_, v)| v)
        .sum()
}

/// Sum of every series of `name` whose labels include every `label="value"` given.
pub fn metric_sum_where(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_values(metrics, name)
        .into_iter()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}
