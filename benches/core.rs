//! Criterion benches of the core paths: framing, token checks, meeting placement, fan-out in the
//! sans-IO shard, and one cross-shard channel hop.
//!
//! Run with `cargo bench --bench core`; numbers for the reference machine are in
//! `docs/performance.md`. Measurement times are short so the whole suite takes a few minutes.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mc::core::binding::BindingKey;
use mc::core::codec::{self, FrameDecoder};
use mc::core::ids::{ConnId, ShardId};
use mc::core::protocol::{ClientMessage, Role, ServerMessage};
use mc::core::router::Router;
use mc::core::shard::{Now, Shard, ShardConfig};
use mc::core::token::{MintClaims, TokenSigner, TokenVerifier};
use serde_json::json;

/// A `message` payload like the load generator's: intended time, sequence number, sender.
fn payload() -> serde_json::Value {
    json!({"t": 1_750_000_000_123_456_789u64, "s": 123_456, "from": 42})
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now() -> Now {
    Now {
        mono: Instant::now(),
        unix_ms: unix_secs() * 1000,
    }
}

fn codec_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let client = ClientMessage::Message {
        payload: payload(),
        to: None,
    };
    let server = ServerMessage::Message {
        from: "p0-2a".into(),
        payload: payload(),
    };
    let server_frame = codec::encode_server(&server);
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_client_message", |b| {
        b.iter(|| codec::encode(black_box(&client)))
    });
    g.bench_function("encode_server_message", |b| {
        b.iter(|| codec::encode_server(black_box(&server)))
    });
    let client_frame = codec::encode(&client);
    g.bench_function("decode_client_message", |b| {
        let mut d = FrameDecoder::new();
        b.iter(|| {
            d.push(black_box(&client_frame));
            let body = d.next_frame().ok().flatten().map(<[u8]>::to_vec);
            body.map(|b| codec::decode_client(&b))
        })
    });
    g.bench_function("decode_server_message", |b| {
        let mut d = FrameDecoder::new();
        b.iter(|| {
            d.push(black_box(&server_frame));
            let body = d.next_frame().ok().flatten().map(<[u8]>::to_vec);
            body.map(|b| codec::decode::<ServerMessage>(&b))
        })
    });
    // 64 frames arriving in one read: splitting cost per frame without JSON.
    let mut packed = Vec::new();
    for _ in 0..64 {
        packed.extend_from_slice(&server_frame);
    }
    g.throughput(Throughput::Elements(64));
    g.bench_function("split_64_frames", |b| {
        let mut d = FrameDecoder::new();
        b.iter(|| {
            d.push(black_box(&packed));
            let mut n = 0;
            while let Ok(Some(f)) = d.next_frame() {
                n += f.len();
            }
            n
        })
    });
    g.finish();
}

fn token_benches(c: &mut Criterion) {
    let signer = TokenSigner::from_seed(&[7; 32], "bench-1");
    let verifier = TokenVerifier::from_jwks_json(&signer.jwks_json(), 60).expect("valid JWKS");
    let now = unix_secs();
    let claims = MintClaims {
        sub: "user-42".into(),
        meeting_id: "standup-7".into(),
        role: Role::Participant,
        iat: now,
        exp: now + 3600,
        jti: Some("j-1".into()),
    };
    let token = signer.mint(&claims);
    let mut g = c.benchmark_group("token");
    g.throughput(Throughput::Elements(1));
    g.bench_function("mint", |b| b.iter(|| signer.mint(black_box(&claims))));
    g.bench_function("verify", |b| {
        b.iter(|| verifier.verify(black_box(&token), "standup-7", now))
    });
    g.finish();
}

fn router_benches(c: &mut Criterion) {
    let ids: Vec<String> = (0..1024).map(|i| format!("meeting-{i:08}")).collect();
    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(1));
    for shards in [2u16, 64] {
        let r = Router::new(shards);
        g.bench_with_input(BenchmarkId::new("shard_for_str", shards), &r, |b, r| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 1023;
                r.shard_for_str(black_box(&ids[i]))
            })
        });
    }
    g.finish();
}

/// A shard holding one meeting of `n` joined participants, outbound queues drained.
fn meeting_of(n: u64) -> (Shard, Vec<ConnId>) {
    let signer = TokenSigner::from_seed(&[9; 32], "bench-1");
    let verifier =
        Arc::new(TokenVerifier::from_jwks_json(&signer.jwks_json(), 60).expect("valid JWKS"));
    let binding = Arc::new(BindingKey::new(&[3; 32]).expect("32-byte secret"));
    let mut cfg = ShardConfig::for_tests(ShardId(0), 1);
    // The bench measures fan-out, not the per-connection rate limiter.
    cfg.rate_limit = 1e12;
    cfg.rate_burst = 1e12;
    cfg.max_participants_per_meeting = cfg.max_participants_per_meeting.max(n as usize);
    let mut shard = Shard::new(cfg, verifier, binding);
    let t = now();
    let secs = t.unix_ms / 1000;
    let mut conns = Vec::new();
    for i in 0..n {
        let conn = ConnId::new(ShardId(0), i);
        shard.handle_connection_opened(conn, t);
        let token = signer.mint(&MintClaims {
            sub: format!("u{i}"),
            meeting_id: "bench-meeting".into(),
            role: if i == 0 {
                Role::Host
            } else {
                Role::Participant
            },
            iat: secs,
            exp: secs + 3600,
            jti: None,
        });
        let join = codec::encode(&ClientMessage::Join {
            meeting_id: "bench-meeting".into(),
            token,
            display_name: format!("user {i}"),
            request_id: None,
            resume: None,
            capabilities: Vec::new(),
        });
        shard.handle_stream_data(conn, &join, t);
        shard.process_all(t);
        drain(&mut shard);
        conns.push(conn);
    }
    (shard, conns)
}

fn drain(shard: &mut Shard) -> usize {
    let mut frames = 0;
    while let Some(c) = shard.poll_writable() {
        while let Some(f) = shard.pop_frame(c) {
            black_box(&f);
            frames += 1;
        }
    }
    frames
}

fn fanout_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    g.measurement_time(Duration::from_secs(3));
    let frame = codec::encode(&ClientMessage::Message {
        payload: payload(),
        to: None,
    });
    for n in [10u64, 100, 1000] {
        let (mut shard, conns) = meeting_of(n);
        let sender = conns[0];
        // One message in, n - 1 frames out: throughput is deliveries.
        g.throughput(Throughput::Elements(n - 1));
        g.bench_function(BenchmarkId::new("message_to_meeting_of", n), |b| {
            b.iter(|| {
                let t = now();
                shard.handle_stream_data(sender, &frame, t);
                shard.process_all(t);
                let out = drain(&mut shard);
                debug_assert_eq!(out as u64, n - 1);
                out
            })
        });
    }
    // A small meeting on a busy shard: the cost of one fan-out must not grow with the
    // number of other connections the shard serves.
    for others in [0u64, 10_000] {
        let (mut shard, conns) = meeting_of(5);
        let t = now();
        for i in 0..others {
            shard.handle_connection_opened(ConnId::new(ShardId(0), 1_000_000 + i), t);
        }
        let sender = conns[0];
        g.throughput(Throughput::Elements(4));
        g.bench_function(
            BenchmarkId::new("meeting_of_5_beside_other_connections", others),
            |b| {
                b.iter(|| {
                    let t = now();
                    shard.handle_stream_data(sender, &frame, t);
                    shard.process_all(t);
                    drain(&mut shard)
                })
            },
        );
    }
    g.finish();
}

/// Round trips of a `u64` between two threads; a hop is half a round trip (throughput counts
/// two hops per iteration).
fn hop_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross_shard_hop");
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(20);
    g.throughput(Throughput::Elements(2));
    g.bench_function("crossbeam_bounded_round_trip", |b| {
        b.iter_custom(|iters| {
            let (to_tx, to_rx) = crossbeam_channel::bounded::<u64>(1024);
            let (back_tx, back_rx) = crossbeam_channel::bounded::<u64>(1024);
            let echo = std::thread::spawn(move || {
                while let Ok(v) = to_rx.recv() {
                    if back_tx.send(v).is_err() {
                        break;
                    }
                }
            });
            let start = Instant::now();
            for i in 0..iters {
                to_tx.send(i).expect("echo thread alive");
                black_box(back_rx.recv().expect("echo thread alive"));
            }
            let elapsed = start.elapsed();
            drop(to_tx);
            let _ = echo.join();
            elapsed
        })
    });
    match glommio_round_trips(1) {
        Ok(_) => {
            g.bench_function("glommio_shared_channel_round_trip", |b| {
                b.iter_custom(|iters| glommio_round_trips(iters).expect("executors start"))
            });
        }
        Err(e) => eprintln!("skipping glommio shared_channel bench: {e}"),
    }
    g.finish();
}

/// `iters` round trips between two glommio executors over two `shared_channel`s, timed inside
/// the driving executor.
fn glommio_round_trips(iters: u64) -> Result<Duration, String> {
    use glommio::channels::shared_channel;
    use glommio::{LocalExecutorBuilder, Placement};

    let (to_tx, to_rx) = shared_channel::new_bounded::<u64>(1024);
    let (back_tx, back_rx) = shared_channel::new_bounded::<u64>(1024);
    let echo = LocalExecutorBuilder::new(Placement::Unbound)
        .name("bench-echo")
        .io_memory(1 << 20)
        .spawn(move || async move {
            let rx = to_rx.connect().await;
            let tx = back_tx.connect().await;
            while let Some(v) = rx.recv().await {
                if tx.send(v).await.is_err() {
                    break;
                }
            }
        })
        .map_err(|e| e.to_string())?;
    let driver = LocalExecutorBuilder::new(Placement::Unbound)
        .name("bench-driver")
        .io_memory(1 << 20)
        .spawn(move || async move {
            let tx = to_tx.connect().await;
            let rx = back_rx.connect().await;
            let start = Instant::now();
            for i in 0..iters {
                if tx.send(i).await.is_err() {
                    break;
                }
                black_box(rx.recv().await);
            }
            start.elapsed()
        })
        .map_err(|e| e.to_string())?;
    let elapsed = driver.join().map_err(|e| e.to_string())?;
    echo.join().map_err(|e| e.to_string())?;
    Ok(elapsed)
}

criterion_group! {
    name = benches;
    // Short runs: the suite must finish in a few minutes on a 2-core machine.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = codec_benches, token_benches, router_benches, fanout_benches, hop_benches
}
criterion_main!(benches);
