//! Test support: start the real `mc` binary and talk to it with a blocking quiche client.
#![allow(dead_code)]

pub mod fleet;
pub mod follow;
pub mod wt;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mc::core::codec::{self, FrameDecoder};
use mc::core::protocol::{ClientMessage, Role, ServerMessage};
use mc::core::token::{MintClaims, TokenSigner};

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
        .args(["--io-memory", "262144", "--log-level"])
        .arg(std::env::var("MC_TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn mc");
        let stderr = child.stderr.take().unwrap();
        let err_lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let err_lines2 = err_lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                err_lines2.lock().unwrap().push(line);
            }
        });
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

/// How a client connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub app: bool,
    pub code: u64,
}

/// A blocking QUIC client speaking signaling v1 on stream 0.
pub struct Client {
    sock: UdpSocket,
    conn: quiche::Connection,
    peer: SocketAddr,
    local: SocketAddr,
    decoder: FrameDecoder,
    pub received: Vec<ServerMessage>,
    out: Vec<u8>,
    /// When false, the client stops reading its stream (to simulate a slow consumer).
    pub reading: bool,
}

impl Client {
    pub fn connect(server: SocketAddr) -> Client {
        Self::try_connect(server, Duration::from_secs(10)).expect("handshake")
    }

    pub fn try_connect(server: SocketAddr, timeout: Duration) -> Result<Client, String> {
        Self::try_connect_window(server, timeout, 4 << 20)
    }

    /// A client whose stream receive window is `window` bytes (to simulate a slow reader).
    pub fn connect_with_stream_window(server: SocketAddr, window: u64) -> Client {
        Self::try_connect_window(server, Duration::from_secs(10), window).expect("handshake")
    }

    pub fn try_connect_window(
        server: SocketAddr,
        timeout: Duration,
        window: u64,
    ) -> Result<Client, String> {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let local = sock.local_addr().unwrap();
        let mut cfg = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
        cfg.set_application_protos(&[b"mc/1"]).unwrap();
        cfg.verify_peer(false);
        cfg.set_max_idle_timeout(30_000);
        cfg.set_max_recv_udp_payload_size(1350);
        cfg.set_max_send_udp_payload_size(1350);
        cfg.set_initial_max_data(8 << 20);
        cfg.set_initial_max_stream_data_bidi_local(window);
        cfg.set_max_stream_window(window);
        cfg.set_initial_max_stream_data_bidi_remote(4 << 20);
        cfg.set_initial_max_streams_bidi(4);
        cfg.set_initial_max_streams_uni(4);
        cfg.set_active_connection_id_limit(4);
        let mut scid = [0u8; 16];
        rand::Rng::fill(&mut rand::thread_rng(), &mut scid[..]);
        let scid = quiche::ConnectionId::from_ref(&scid);
        let conn = quiche::connect(Some("localhost"), &scid, local, server, &mut cfg).unwrap();
        let mut c = Client {
            sock,
            conn,
            peer: server,
            local,
            decoder: FrameDecoder::new(),
            received: Vec::new(),
            out: vec![0; 1500],
            reading: true,
        };
        let deadline = Instant::now() + timeout;
        while !c.conn.is_established() {
            if Instant::now() > deadline || c.conn.is_closed() {
                return Err(format!("handshake failed: {:?}", c.conn.peer_error()));
            }
            c.io(Duration::from_millis(10));
        }
        Ok(c)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends and receives for about `budget`.
    pub fn io(&mut self, budget: Duration) {
        self.flush();
        let deadline = Instant::now() + budget;
        let mut buf = [0u8; 65535];
        loop {
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let _ = self.conn.recv(
                        &mut buf[..n],
                        quiche::RecvInfo {
                            from,
                            to: self.local,
                        },
                    );
                    self.read_stream();
                    self.flush();
                }
                Err(_) => {
                    if self.conn.timeout().is_some_and(|t| t.is_zero()) {
                        self.conn.on_timeout();
                    }
                    if let Some(t) = self.conn.timeout_instant() {
                        if Instant::now() >= t {
                            self.conn.on_timeout();
                        }
                    }
                    self.flush();
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
    }

    fn flush(&mut self) {
        while let Ok((n, info)) = self.conn.send(&mut self.out) {
            let _ = self.sock.send_to(&self.out[..n], info.to);
        }
    }

    fn read_stream(&mut self) {
        if !self.reading {
            return;
        }
        let mut buf = [0u8; 65535];
        while let Ok((n, _fin)) = self.conn.stream_recv(0, &mut buf) {
            self.decoder.push(&buf[..n]);
            while let Ok(Some(body)) = self.decoder.next_frame() {
                let m: ServerMessage = codec::decode(body).expect("server sent a bad frame");
                self.received.push(m);
            }
            if n == 0 {
                break;
            }
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let mut off = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while off < bytes.len() {
            match self.conn.stream_send(0, &bytes[off..], false) {
                Ok(n) => off += n,
                Err(quiche::Error::Done) => {}
                Err(e) => panic!("stream_send: {e:?}"),
            }
            self.io(Duration::from_millis(1));
            assert!(Instant::now() < deadline, "could not send");
        }
        self.flush();
    }

    pub fn send(&mut self, msg: &ClientMessage) {
        let f = codec::encode(msg);
        self.send_raw(&f);
    }

    pub fn join(&mut self, meeting: &str, token: &str, name: &str) {
        self.send(&ClientMessage::Join {
            meeting_id: meeting.into(),
            token: token.into(),
            display_name: name.into(),
            request_id: None,
            resume: None,
            capabilities: Vec::new(),
        });
    }

    /// Waits until `pred` matches a received message (removing and returning it).
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&ServerMessage) -> bool,
    ) -> Option<ServerMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.received.iter().position(&pred) {
                return Some(self.received.remove(i));
            }
            if Instant::now() >= deadline || self.conn.is_closed() {
                // One last look.
                return self
                    .received
                    .iter()
                    .position(&pred)
                    .map(|i| self.received.remove(i));
            }
            self.io(Duration::from_millis(5));
        }
    }

    pub fn expect(&mut self, what: &str, pred: impl Fn(&ServerMessage) -> bool) -> ServerMessage {
        match self.wait_for(Duration::from_secs(10), pred) {
            Some(m) => m,
            None => panic!(
                "expected {what}; got {:?}; closed={:?}",
                self.received,
                self.closed()
            ),
        }
    }

    /// Joins and returns the join_response.
    pub fn join_ok(&mut self, meeting: &str, token: &str, name: &str) -> ServerMessage {
        self.join(meeting, token, name);
        self.expect("join_response", |m| {
            matches!(m, ServerMessage::JoinResponse { .. })
        })
    }

    pub fn closed(&self) -> Option<Closed> {
        if !self.conn.is_closed() && !self.conn.is_draining() {
            return None;
        }
        self.conn.peer_error().map(|e| Closed {
            app: e.is_app,
            code: e.error_code,
        })
    }

    /// Waits for the server to close the connection and returns how.
    pub fn wait_closed(&mut self, timeout: Duration) -> Option<Closed> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.closed() {
                return Some(c);
            }
            self.io(Duration::from_millis(5));
        }
        None
    }

    pub fn close(&mut self) {
        let _ = self.conn.close(true, 0, b"bye");
        self.flush();
    }

    /// Drops the connection silently (no CONNECTION_CLOSE), like a vanished mobile client.
    pub fn vanish(self) {}

    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }
}

pub fn participant_id(m: &ServerMessage) -> String {
    match m {
        ServerMessage::JoinResponse { participant_id, .. } => participant_id.clone(),
        other => panic!("not a join_response: {other:?}"),
    }
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
