//! Bare-quiche baseline: the fan-out pattern of a meeting with no meeting logic at all.
//!
//! One sender and `n` receivers, each a quiche client/server connection pair held in memory
//! (packets are handed from one connection to the other in a loop: no sockets, no syscalls).
//! Per iteration the sender writes one frame on stream 0, the server side reads it, then writes
//! one pre-encoded frame on stream 0 of each of the `n` receivers, and every receiver reads it.
//! Throughput is deliveries (`n` per iteration).
//!
//! `quiche_handshake` measures connection setup the same way (TLS 1.3 handshake and the first
//! stream frame), the baseline for `join-storm`.
//!
//! Two views of the same work:
//! * `both_ends` — all QUIC work of a delivery, client and server, on one core;
//! * `server_side` — only the time spent in the server connections' calls (`stream_send`,
//!   `send`, `recv`, `stream_recv`), i.e. what the QUIC stack alone costs a controller per
//!   delivery. `docs/performance.md` states mc's throughput as a fraction of this.

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mc::core::codec;
use mc::core::protocol::{ClientMessage, ServerMessage};
use serde_json::json;

const STREAM: u64 = 0;

struct Pair {
    client: quiche::Connection,
    server: quiche::Connection,
    client_addr: SocketAddr,
    server_addr: SocketAddr,
}

/// Certificate files for the in-memory servers, removed on drop.
struct CertDir(PathBuf);

impl CertDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("mc-bench-quiche-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("self-signed certificate");
        std::fs::write(dir.join("cert.pem"), ck.cert.pem()).expect("write cert");
        std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).expect("write key");
        Self(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn transport_params(cfg: &mut quiche::Config) {
    cfg.set_application_protos(&[b"mc/1"]).expect("alpn");
    cfg.set_max_recv_udp_payload_size(1350);
    cfg.set_max_send_udp_payload_size(1350);
    cfg.set_initial_max_data(8 << 20);
    cfg.set_initial_max_stream_data_bidi_local(2 << 20);
    cfg.set_initial_max_stream_data_bidi_remote(2 << 20);
    cfg.set_initial_max_streams_bidi(4);
    cfg.set_disable_active_migration(true);
}

fn configs(certs: &CertDir) -> (quiche::Config, quiche::Config) {
    let mut client = quiche::Config::new(quiche::PROTOCOL_VERSION).expect("config");
    transport_params(&mut client);
    client.verify_peer(false);
    let mut server = quiche::Config::new(quiche::PROTOCOL_VERSION).expect("config");
    transport_params(&mut server);
    server
        .load_cert_chain_from_pem_file(&certs.path("cert.pem"))
        .expect("cert");
    server
        .load_priv_key_from_pem_file(&certs.path("key.pem"))
        .expect("key");
    (client, server)
}

/// Moves every pending packet from `from` to `to`; true if anything moved. Time spent in the
/// server connection's own calls is added to `server_time`.
fn pump(pair: &mut Pair, to_server: bool, buf: &mut [u8], server_time: &mut Duration) -> bool {
    let mut moved = false;
    loop {
        let started = Instant::now();
        let sent = if to_server {
            pair.client.send(buf)
        } else {
            pair.server.send(buf)
        };
        if !to_server {
            *server_time += started.elapsed();
        }
        let n = match sent {
            Ok((n, _)) => n,
            Err(quiche::Error::Done) => return moved,
            Err(e) => panic!("send: {e}"),
        };
        moved = true;
        if to_server {
            let info = quiche::RecvInfo {
                from: pair.client_addr,
                to: pair.server_addr,
            };
            let started = Instant::now();
            pair.server.recv(&mut buf[..n], info).expect("server recv");
            *server_time += started.elapsed();
        } else {
            let info = quiche::RecvInfo {
                from: pair.server_addr,
                to: pair.client_addr,
            };
            pair.client.recv(&mut buf[..n], info).expect("client recv");
        }
    }
}

fn drive(pair: &mut Pair, buf: &mut [u8], server_time: &mut Duration) {
    loop {
        let a = pump(pair, true, buf, server_time);
        let b = pump(pair, false, buf, server_time);
        if !a && !b {
            return;
        }
    }
}

fn read_all(conn: &mut quiche::Connection, buf: &mut [u8]) -> usize {
    let mut total = 0;
    while let Ok((n, _)) = conn.stream_recv(STREAM, buf) {
        total += n;
    }
    total
}

fn new_pair(i: u32, client_cfg: &mut quiche::Config, server_cfg: &mut quiche::Config) -> Pair {
    handshake(i, client_cfg, server_cfg).0
}

/// A connected pair with stream 0 open, and the time its server side spent.
fn handshake(
    i: u32,
    client_cfg: &mut quiche::Config,
    server_cfg: &mut quiche::Config,
) -> (Pair, Duration) {
    let client_addr: SocketAddr =
        format!("10.{}.{}.{}:5000", i >> 16 & 0xff, i >> 8 & 0xff, i & 0xff)
            .parse()
            .expect("addr");
    let server_addr: SocketAddr = "192.168.0.1:4433".parse().expect("addr");
    let mut ccid = [0u8; 16];
    let mut scid = [0u8; 16];
    ccid[..4].copy_from_slice(&i.to_be_bytes());
    scid[..4].copy_from_slice(&i.to_be_bytes());
    scid[15] = 1;
    let client = quiche::connect(
        Some("localhost"),
        &quiche::ConnectionId::from_ref(&ccid),
        client_addr,
        server_addr,
        client_cfg,
    )
    .expect("connect");
    let started = Instant::now();
    let server = quiche::accept(
        &quiche::ConnectionId::from_ref(&scid),
        None,
        server_addr,
        client_addr,
        server_cfg,
    )
    .expect("accept");
    let mut server_time = started.elapsed();
    let mut pair = Pair {
        client,
        server,
        client_addr,
        server_addr,
    };
    let mut buf = vec![0u8; 65536];
    while !(pair.client.is_established() && pair.server.is_established()) {
        drive(&mut pair, &mut buf, &mut server_time);
    }
    // Open stream 0 the way a client does: with its first frame.
    let hello = codec::encode(&ClientMessage::Leave {});
    pair.client
        .stream_send(STREAM, &hello, false)
        .expect("open stream 0");
    drive(&mut pair, &mut buf, &mut server_time);
    let started = Instant::now();
    read_all(&mut pair.server, &mut buf);
    server_time += started.elapsed();
    (pair, server_time)
}

/// One message in, `n` frames out; returns the server-side time.
fn fan_out_once(
    sender: &mut Pair,
    receivers: &mut [Pair],
    in_frame: &[u8],
    out_frame: &[u8],
    buf: &mut [u8],
    stream_buf: &mut [u8],
) -> Duration {
    let mut server_time = Duration::ZERO;
    sender
        .client
        .stream_send(STREAM, in_frame, false)
        .expect("send");
    drive(sender, buf, &mut server_time);
    let started = Instant::now();
    let got = read_all(&mut sender.server, stream_buf);
    server_time += started.elapsed();
    debug_assert_eq!(got, in_frame.len());
    for r in receivers.iter_mut() {
        let started = Instant::now();
        let n = r
            .server
            .stream_send(STREAM, out_frame, false)
            .expect("send");
        server_time += started.elapsed();
        debug_assert_eq!(n, out_frame.len());
        drive(r, buf, &mut server_time);
        black_box(read_all(&mut r.client, stream_buf));
        // Let the receiver acknowledge what it read.
        drive(r, buf, &mut server_time);
    }
    server_time
}

fn baseline(c: &mut Criterion) {
    let certs = CertDir::new();
    let (mut client_cfg, mut server_cfg) = configs(&certs);
    let payload = json!({"t": 1_750_000_000_123_456_789u64, "s": 123_456, "from": 42});
    let in_frame = codec::encode(&ClientMessage::Message {
        payload: payload.clone(),
        to: None,
    });
    let out_frame = codec::encode_server(&ServerMessage::Message {
        from: "p0-2a".into(),
        payload,
    });
    let mut buf = vec![0u8; 65536];
    let mut stream_buf = vec![0u8; 65536];

    let mut g = c.benchmark_group("quiche_fanout");
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(20);
    for n in [10usize, 100, 1000] {
        let mut sender = new_pair(0, &mut client_cfg, &mut server_cfg);
        let mut receivers: Vec<Pair> = (1..=n as u32)
            .map(|i| new_pair(i, &mut client_cfg, &mut server_cfg))
            .collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("both_ends", n), |b| {
            b.iter(|| {
                fan_out_once(
                    &mut sender,
                    &mut receivers,
                    &in_frame,
                    &out_frame,
                    &mut buf,
                    &mut stream_buf,
                )
            })
        });
        g.bench_function(BenchmarkId::new("server_side", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += fan_out_once(
                        &mut sender,
                        &mut receivers,
                        &in_frame,
                        &out_frame,
                        &mut buf,
                        &mut stream_buf,
                    );
                }
                total
            })
        });
    }
    g.finish();

    // Connection setup: TLS 1.3 handshake plus the first stream frame, in memory.
    let mut g = c.benchmark_group("quiche_handshake");
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(20);
    g.throughput(Throughput::Elements(1));
    let mut next = 10_000u32;
    g.bench_function("both_ends", |b| {
        b.iter(|| {
            next += 1;
            handshake(next, &mut client_cfg, &mut server_cfg).0
        })
    });
    g.bench_function("server_side", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                next += 1;
                total += handshake(next, &mut client_cfg, &mut server_cfg).1;
            }
            total
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = baseline
}
criterion_main!(benches);
