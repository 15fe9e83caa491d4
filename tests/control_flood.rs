//! The control port under TCP connection floods (docs/security.md, "Control port"): 500
//! connections that send nothing, and separately 500 that drip one byte a second, all from the
//! probes' own address and reopened as soon as the server closes them. Throughout, `/health`
//! and `/ready` answer 200 within a second; afterwards `/metrics` counts the refusals and the
//! log holds a few summary lines, not one per connection.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::Server;

const ATTACKERS: usize = 500;
/// How long the probes run under the flood (longer than the 2 s first-request deadline, so
/// held connections are also timed out).
const FLOOD_FOR: Duration = Duration::from_secs(6);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Attack {
    /// Connect and send nothing.
    Silent,
    /// Connect and send one byte of a request every second.
    Drip,
}

struct Flood {
    stop: Arc<AtomicBool>,
    /// Connections opened, reopenings included.
    opened: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Flood {
    fn start(addr: SocketAddr, attack: Attack) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let (s, o) = (Arc::clone(&stop), Arc::clone(&opened));
        let thread = std::thread::spawn(move || {
            let request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
            let mut conns: Vec<Option<(TcpStream, usize)>> = (0..ATTACKERS).map(|_| None).collect();
            let mut last_drip = Instant::now() - Duration::from_secs(1);
            while !s.load(Ordering::Relaxed) {
                let drip = attack == Attack::Drip && last_drip.elapsed() >= Duration::from_secs(1);
                if drip {
                    last_drip = Instant::now();
                }
                for slot in conns.iter_mut() {
                    if s.load(Ordering::Relaxed) {
                        break;
                    }
                    // Reopen what the server closed.
                    let alive = match slot {
                        Some((c, sent)) => {
                            let mut b = [0u8; 256];
                            let closed = matches!(c.read(&mut b), Ok(0))
                                || matches!(c.read(&mut b), Err(e) if e.kind() != ErrorKind::WouldBlock);
                            if closed {
                                false
                            } else if drip {
                                // One byte of a request that never completes.
                                let i = (*sent).min(request.len() - 3);
                                *sent += 1;
                                c.write_all(&request[i..=i]).is_ok()
                            } else {
                                true
                            }
                        }
                        None => false,
                    };
                    if !alive {
                        *slot = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                            .ok()
                            .and_then(|c| c.set_nonblocking(true).ok().map(|()| (c, 0)));
                        if slot.is_some() {
                            o.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Flood {
            stop,
            opened,
            thread: Some(thread),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `GET path` on a fresh connection; the status if the whole answer came within `limit`.
fn get_within(addr: SocketAddr, path: &str, limit: Duration) -> Result<u16, String> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .map_err(|e| format!("read after {:?}: {e}", start.elapsed()))?;
    let took = start.elapsed();
    if took > limit {
        return Err(format!("answered after {took:?}"));
    }
    String::from_utf8_lossy(&resp)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP answer ({} bytes)", resp.len()))
}

fn refusals(metrics: &str, reason: &str) -> f64 {
    let key = format!("mc_control_refusals_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in the exposition"))
}

fn probes_stay_answered_under(attack: Attack) {
    let server = Server::start("control-flood", &["--shards", "2"]);
    let before = server.metrics();
    for reason in [
        "first_request_timeout",
        "evicted",
        "peer_limit",
        "table_full",
        "busy",
    ] {
        assert_eq!(refusals(&before, reason), 0.0, "{reason} before the flood");
    }
    let flood = Flood::start(server.control, attack);
    // Let the flood fill the server's share for this address first.
    let filled = Instant::now() + Duration::from_secs(10);
    while flood.opened.load(Ordering::Relaxed) < ATTACKERS as u64 {
        assert!(
            Instant::now() < filled,
            "the flood could not open its connections"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let until = Instant::now() + FLOOD_FOR;
    let mut probes = 0;
    while Instant::now() < until {
        for path in ["/health", "/ready"] {
            match get_within(server.control, path, Duration::from_secs(1)) {
                Ok(200) => probes += 1,
                other => panic!("{path} under the flood: {other:?}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let opened = flood.opened.load(Ordering::Relaxed);
    drop(flood);
    assert!(probes >= 20, "{probes} probes");
    assert!(
        opened > ATTACKERS as u64,
        "the server never closed a flooding connection"
    );

    let m = server.metrics();
    let peer_limit = refusals(&m, "peer_limit");
    // 500 connections from one address against a share of 64: at least 436 closed for it.
    assert!(
        peer_limit >= (ATTACKERS - 64) as f64,
        "peer_limit = {peer_limit}"
    );
    // Nobody was turned away unanswered: there was always an idle connection to close.
    assert_eq!(refusals(&m, "table_full"), 0.0);
    assert_eq!(refusals(&m, "busy"), 0.0);

    let log = server.stderr_lines.lock().unwrap().clone();
    let summaries = log.iter().filter(|l| l.contains("control port:")).count();
    assert!(
        (1..=3).contains(&summaries),
        "{summaries} summary lines for thousands of refusals"
    );
    let control_lines = log
        .iter()
        .filter(|l| l.contains("control") && (l.contains("WARN") || l.contains("ERROR")))
        .count();
    assert_eq!(control_lines, summaries, "only summary lines: {log:#?}");
}

#[test]
fn probes_answer_while_500_silent_connections_flood_the_control_port() {
    probes_stay_answered_under(Attack::Silent);
}

#[test]
fn probes_answer_while_500_dripping_connections_flood_the_control_port() {
    probes_stay_answered_under(Attack::Drip);
}

#[test]
fn a_connection_without_a_complete_first_request_is_closed_after_the_deadline() {
    let server = Server::start("control-first-request", &["--shards", "1"]);
    let mut silent = TcpStream::connect(server.control).unwrap();
    let mut drip = TcpStream::connect(server.control).unwrap();
    let start = Instant::now();
    drip.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut b = [0u8; 64];
    // One byte every half second, never a whole request.
    let drip_closed = loop {
        if drip.write_all(b"G").is_err() {
            break true;
        }
        match drip.read(&mut b) {
            Ok(0) => break true,
            Ok(n) => panic!("answered a partial request: {:?}", &b[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break true,
        }
        if start.elapsed() > Duration::from_secs(15) {
            break false;
        }
    };
    assert!(drip_closed, "a dripping connection was kept");
    silent
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    assert!(
        matches!(silent.read(&mut b), Ok(0) | Err(_)),
        "a silent connection got an answer"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "closed before the 2 s deadline"
    );
    let m = server.metrics();
    assert_eq!(refusals(&m, "first_request_timeout"), 2.0);
    // A client that sends its request at once is served as before.
    assert_eq!(
        get_within(server.control, "/health", Duration::from_secs(5)),
        Ok(200)
    );
}
