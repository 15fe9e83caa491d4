//! Interop of `H3Server` with real WebTransport clients: headless Chromium running
//! `tests/browser/join.html`, and aioquic running `tests/interop/wt_client.py`.
//!
//! The server here is a small loopback harness — quiche + `H3Server` + a stand-in for the
//! signaling core that answers `join` and relays `message` — so these tests check the HTTP/3 and
//! WebTransport layer against real clients without the rest of the controller. The same client
//! scripts run against the real server with its address, certificate hash and tokens.
//!
//! Ignored by default (they need `/usr/bin/chromium` + node, or python3 + aioquic):
//! `cargo test --test webtransport_interop -- --ignored`.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mc::webtransport::{is_bidi, H3Config, H3Event, H3Server};
use sha2::{Digest, Sha256};

struct Cert {
    dir: PathBuf,
    sha256_hex: String,
}

fn make_cert() -> Cert {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let now = std::time::SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(10 * 24 * 3600)).into();
    let cert = params.self_signed(&key).unwrap();
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("mc-wt-interop-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let sha256_hex = Sha256::digest(cert.der())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Cert { dir, sha256_hex }
}

/// One participant of the stand-in meeting.
struct Conn {
    quic: quiche::Connection,
    h3: H3Server,
    /// Writes quiche did not take yet, per stream, in order.
    pending: Vec<(u64, Vec<u8>, bool)>,
    signaling: Option<u64>,
    session: Option<u64>,
    inbox: Vec<u8>,
    participant: Option<String>,
}

impl Conn {
    fn queue(&mut self, stream: u64, data: Vec<u8>, fin: bool) {
        self.pending.push((stream, data, fin));
    }

    fn flush(&mut self) {
        if !self.quic.is_established() {
            return;
        }
        while let Some(t) = self.h3.poll_transmit() {
            self.pending.push((t.stream_id, t.data, t.fin));
        }
        let mut i = 0;
        while i < self.pending.len() {
            let id = self.pending[i].0;
            // Keep per-stream order: skip streams with an earlier blocked write.
            if self.pending[..i].iter().any(|(s, ..)| *s == id) {
                i += 1;
                continue;
            }
            let data = std::mem::take(&mut self.pending[i].1);
            let fin = self.pending[i].2;
            match self.quic.stream_send(id, &data, fin) {
                Ok(n) if n == data.len() => {
                    self.pending.remove(i);
                }
                Ok(n) => {
                    self.pending[i].1 = data[n..].to_vec();
                    i += 1;
                }
                Err(quiche::Error::Done) => {
                    self.pending[i].1 = data;
                    i += 1;
                }
                Err(_) => {
                    self.pending.remove(i);
                }
            }
        }
    }
}

fn frame(json: &serde_json::Value) -> Vec<u8> {
    let body = serde_json::to_vec(json).unwrap();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

struct Harness {
    addr: SocketAddr,
    cert: Cert,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.cert.dir);
    }
}

fn start_harness() -> Harness {
    let cert = make_cert();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
    config
        .load_cert_chain_from_pem_file(cert.dir.join("cert.pem").to_str().unwrap())
        .unwrap();
    config
        .load_priv_key_from_pem_file(cert.dir.join("key.pem").to_str().unwrap())
        .unwrap();
    config.set_application_protos(&[b"h3"]).unwrap();
    config.set_max_idle_timeout(30_000);
    config.set_max_recv_udp_payload_size(1350);
    config.set_max_send_udp_payload_size(1350);
    config.set_initial_max_data(4 << 20);
    config.set_initial_max_stream_data_bidi_local(1 << 20);
    config.set_initial_max_stream_data_bidi_remote(1 << 20);
    config.set_initial_max_stream_data_uni(1 << 20);
    config.set_initial_max_streams_bidi(16);
    config.set_initial_max_streams_uni(16);
    config.set_disable_active_migration(true);
    config.enable_dgram(true, 1024, 1024);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = thread::spawn(move || serve(socket, config, stop2));
    Harness {
        addr,
        cert,
        stop,
        thread: Some(thread),
    }
}

fn serve(socket: UdpSocket, mut config: quiche::Config, stop: Arc<AtomicBool>) {
    let local = socket.local_addr().unwrap();
    let mut conns: HashMap<Vec<u8>, Conn> = HashMap::new();
    let mut buf = vec![0u8; 65535];
    let mut out = vec![0u8; 1350];
    let mut next_participant = 0u32;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        match socket.recv_from(&mut buf) {
            Ok((len, from)) => {
                let pkt = &mut buf[..len];
                let Ok(hdr) = quiche::Header::from_slice(pkt, quiche::MAX_CONN_ID_LEN) else {
                    continue;
                };
                let key = if conns.contains_key(hdr.dcid.as_ref()) {
                    hdr.dcid.to_vec()
                } else {
                    if hdr.ty != quiche::Type::Initial {
                        continue;
                    }
                    if !quiche::version_is_supported(hdr.version) {
                        let n = quiche::negotiate_version(&hdr.scid, &hdr.dcid, &mut out).unwrap();
                        let _ = socket.send_to(&out[..n], from);
                        continue;
                    }
                    let scid: Vec<u8> = (0..quiche::MAX_CONN_ID_LEN)
                        .map(|_| rand::random::<u8>())
                        .collect();
                    let scid_ref = quiche::ConnectionId::from_ref(&scid);
                    let quic = quiche::accept(&scid_ref, None, local, from, &mut config).unwrap();
                    conns.insert(
                        scid.clone(),
                        Conn {
                            quic,
                            h3: H3Server::new(H3Config::default()),
                            pending: Vec::new(),
                            signaling: None,
                            session: None,
                            inbox: Vec::new(),
                            participant: None,
                        },
                    );
                    scid
                };
                let c = conns.get_mut(&key).unwrap();
                let _ = c.quic.recv(pkt, quiche::RecvInfo { from, to: local });
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("recv: {e}"),
        }
        // Application step for every connection.
        let keys: Vec<Vec<u8>> = conns.keys().cloned().collect();
        let mut relays: Vec<(Vec<u8>, String, serde_json::Value)> = Vec::new();
        for key in &keys {
            let c = conns.get_mut(key).unwrap();
            c.quic.on_timeout();
            if !c.quic.is_established() {
                continue;
            }
            while c.quic.dgram_recv(&mut buf).is_ok() {}
            let readable: Vec<u64> = c.quic.readable().collect();
            for id in readable {
                loop {
                    match c.quic.stream_recv(id, &mut buf) {
                        Ok((n, fin)) => {
                            if std::env::var_os("MC_WT_DEBUG").is_some() {
                                eprintln!("stream {id}: {n} bytes fin={fin}");
                            }
                            if let Err(e) = c.h3.on_stream_data(id, &buf[..n], fin) {
                                eprintln!("h3 connection error: {e}");
                                let _ = c.quic.close(true, e.code.0, e.reason.as_bytes());
                            }
                            if fin {
                                break;
                            }
                        }
                        Err(quiche::Error::StreamReset(_)) => {
                            let _ = c.h3.on_stream_reset(id);
                            break;
                        }
                        Err(e) => {
                            if std::env::var_os("MC_WT_DEBUG").is_some() {
                                eprintln!("stream {id}: recv {e:?}");
                            }
                            break;
                        }
                    }
                }
            }
            while let Some(ev) = c.h3.poll_event() {
                if std::env::var_os("MC_WT_DEBUG").is_some() {
                    eprintln!("event: {ev:?}");
                }
                match ev {
                    H3Event::SessionRequested { session_id, .. } => {
                        c.session = Some(session_id);
                        c.h3.accept_session(session_id);
                    }
                    H3Event::StreamData {
                        stream_id, data, ..
                    } => {
                        c.signaling = Some(stream_id);
                        c.inbox.extend_from_slice(&data);
                    }
                    H3Event::SessionClosed { .. } => {
                        let _ = c.quic.close(true, 0x100, b"");
                    }
                    H3Event::ResetStream { stream_id, code } => {
                        let _ = c
                            .quic
                            .stream_shutdown(stream_id, quiche::Shutdown::Read, code.0);
                        if is_bidi(stream_id) {
                            let _ =
                                c.quic
                                    .stream_shutdown(stream_id, quiche::Shutdown::Write, code.0);
                        }
                    }
                }
            }
            // The stand-in signaling core: `join` → join_response; `message` → relay.
            while c.inbox.len() >= 4 {
                let n = u32::from_be_bytes(c.inbox[..4].try_into().unwrap()) as usize;
                if c.inbox.len() < 4 + n {
                    break;
                }
                let msg: serde_json::Value = serde_json::from_slice(&c.inbox[4..4 + n]).unwrap();
                c.inbox.drain(..4 + n);
                let stream = c.signaling.unwrap();
                match msg["type"].as_str() {
                    Some("join") => {
                        next_participant += 1;
                        let pid = format!("p0-{next_participant}");
                        c.participant = Some(pid.clone());
                        let resp = serde_json::json!({
                            "type": "join_response",
                            "participant_id": pid,
                            "meeting_id": msg["meeting_id"],
                            "role": "participant",
                            "participants": [],
                            "media_handlers": [],
                            "binding_token": "b",
                            "resume_window_ms": 30000,
                            "request_id": msg["request_id"],
                        });
                        c.queue(stream, frame(&resp), false);
                    }
                    Some("message") => {
                        let from = c.participant.clone().unwrap_or_default();
                        relays.push((key.clone(), from, msg["payload"].clone()));
                    }
                    Some("leave") => {
                        if let Some(s) = c.session {
                            c.h3.close_session(s, 0, "left");
                        }
                    }
                    _ => {}
                }
            }
        }
        for (sender, from, payload) in relays {
            let m = serde_json::json!({"type": "message", "from": from, "payload": payload});
            for (key, c) in conns.iter_mut() {
                if *key != sender {
                    if let Some(stream) = c.signaling {
                        c.queue(stream, frame(&m), false);
                    }
                }
            }
        }
        for c in conns.values_mut() {
            c.flush();
            while let Ok((n, info)) = c.quic.send(&mut out) {
                let _ = socket.send_to(&out[..n], info.to);
            }
        }
        conns.retain(|_, c| !c.quic.is_closed());
    }
}

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
#[ignore = "needs /usr/bin/chromium and node"]
fn chromium_joins_over_webtransport() {
    let h = start_harness();
    let url = format!("https://127.0.0.1:{}/meetings/m1", h.addr.port());
    let out = Command::new("node")
        .arg(repo_path("tests/browser/run.mjs"))
        .args(["--url", &url, "--hash", &h.cert.sha256_hex])
        .args([
            "--token",
            "token-a",
            "--token2",
            "token-b",
            "--timeout",
            "40",
        ])
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"ok\": true"), "{stdout}");
}

#[test]
#[ignore = "needs python3 with aioquic"]
fn aioquic_joins_over_webtransport() {
    let h = start_harness();
    let out = Command::new("python3")
        .arg(repo_path("tests/interop/wt_client.py"))
        .args(["--host", "127.0.0.1", "--port", &h.addr.port().to_string()])
        .args(["--meeting", "m1", "--hash", &h.cert.sha256_hex])
        .args(["--token", "token-a", "--token2", "token-b"])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "aioquic run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("PASS"), "{stdout}");
}

/// Manual use: `MC_WT_SERVE_SECS=60 cargo test --test webtransport_interop -- --ignored
/// --nocapture serve_harness` prints a port and certificate hash to point a browser or
/// `tests/interop/wt_client.py` at. Does nothing without the variable.
#[test]
#[ignore = "manual: serves the harness for MC_WT_SERVE_SECS seconds"]
fn serve_harness() {
    let Some(secs) = std::env::var("MC_WT_SERVE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    let h = start_harness();
    println!("port {} hash {}", h.addr.port(), h.cert.sha256_hex);
    thread::sleep(Duration::from_secs(secs));
}
