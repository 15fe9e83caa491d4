//! The endpoint's data path, in memory: real quiche clients in meetings send chat messages to
//! one shard's `Endpoint` (no sockets, virtual clock), the endpoint decodes, fans out and
//! packs the copies into packets, and the clients read them. Only the endpoint's own calls
//! (`handle_datagram`, `flush`, timers) are timed, so the reported throughput is deliveries
//! (one message received by one participant) per second of endpoint work; the clients' QUIC
//! and JSON work is left out.
//!
//! `cargo bench --bench datapath` (add `-- --quick` for a fast look); see docs/performance.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mc::core::ids::ShardId;
use mc::core::protocol::{ClientMessage, Role, ServerMessage};
use mc_test_support::{ClientId, Harness, HarnessConfig};

/// Meetings of one shape.
struct Shape {
    name: &'static str,
    meetings: usize,
    participants: usize,
    /// Participants of each meeting that send one message per round.
    senders: usize,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "100_meetings_x5_all_send",
        meetings: 100,
        participants: 5,
        senders: 5,
    },
    Shape {
        name: "1_meeting_x200_4_senders",
        meetings: 1,
        participants: 200,
        senders: 4,
    },
];

/// One shard with the meetings of `shape` joined, and each meeting's clients.
fn build(shape: &Shape) -> (Harness, Vec<Vec<ClientId>>) {
    let mut cfg = HarnessConfig::new(1);
    // The virtual clock stands still while the bench runs: no rate limit to refill.
    cfg.core.rate_limit = 1e12;
    cfg.core.rate_burst = 1e12;
    cfg.core.mailbox_size = 1 << 16;
    cfg.core.slow_consumer_drops = u32::MAX;
    let mut h = Harness::with_config(cfg);
    let mut meetings = Vec::new();
    for m in 0..shape.meetings {
        let meeting = format!("bench-{m}");
        let mut clients = Vec::new();
        for p in 0..shape.participants {
            let c = h.connect(ShardId(0));
            h.join(c, &meeting, Role::Participant, &format!("p{p}"));
            clients.push(c);
        }
        meetings.push(clients);
    }
    for c in meetings.iter().flatten() {
        h.take_received(*c);
    }
    (h, meetings)
}

/// One round: every sender of every meeting sends one message, everything is delivered.
/// Returns the deliveries.
fn round(h: &mut Harness, meetings: &[Vec<ClientId>], shape: &Shape, seq: u64) -> usize {
    let msg = ClientMessage::Message {
        payload: serde_json::json!({ "kind": "chat", "text": "hello, everyone", "seq": seq }),
        to: None,
    };
    for clients in meetings {
        for c in &clients[..shape.senders] {
            h.queue(*c, &msg);
        }
    }
    h.drive();
    let mut delivered = 0;
    for c in meetings.iter().flatten() {
        delivered += h
            .take_received(*c)
            .iter()
            .filter(|m| matches!(m, ServerMessage::Message { .. }))
            .count();
    }
    delivered
}

fn datapath(c: &mut Criterion) {
    let mut group = c.benchmark_group("endpoint_datapath");
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_millis(500));
    group.measurement_time(std::time::Duration::from_secs(3));
    for shape in SHAPES {
        let (mut h, meetings) = build(shape);
        let per_round = shape.meetings * shape.senders * (shape.participants - 1);
        group.throughput(Throughput::Elements(per_round as u64));
        let mut seq = 0;
        group.bench_function(shape.name, |b| {
            b.iter_custom(|iters| {
                h.take_endpoint_busy();
                h.set_measuring(true);
                for _ in 0..iters {
                    seq += 1;
                    let delivered = round(&mut h, &meetings, shape, seq);
                    assert_eq!(delivered, per_round, "every message reached every other");
                }
                h.set_measuring(false);
                h.take_endpoint_busy()
            })
        });
        let wire = h.wire();
        eprintln!(
            "{}: {} clients, {per_round} deliveries per round; datagrams so far: {} in, {} out",
            shape.name,
            h.client_count(),
            wire.to_server,
            wire.to_clients
        );
    }
    group.finish();
}

criterion_group!(benches, datapath);
criterion_main!(benches);
