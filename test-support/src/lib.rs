//! Test doubles for `mc`, shared by the integration tests, the benches and the load generator.
//! The production library ships none of them.
//!
//! - [`Harness`] (below): quiche clients and sans-IO endpoints in memory, on a virtual clock.
//! - [`udp::Client`] and [`wt::WtClient`]: blocking quiche clients over loopback sockets (native
//!   signaling and WebTransport) for the end-to-end tests against the `mc` binary, on one
//!   socket pump ([`udp::QuicConn`]); they share their settings ([`ClientSettings`]) and
//!   signaling reader ([`read_signaling`]) with the harness's clients.
//! - [`fake_gc::FakeGc`]: a fake Global Controller (also the `mc-fake-gc` binary).
//! - [`fake_shards`]: a stand-in for the shard runtime behind the control link, for tests of
//!   the control thread.
//!
//! [`Harness`] is an in-memory network with a virtual clock (after quinn-proto's `Pair`): real
//! quiche clients and one or two sans-IO [`mc::quic::endpoint::Endpoint`]s, wired without
//! sockets. Datagrams move between client and endpoint buffers, messages between shards move
//! from one endpoint's output to the other's `handle_peer`, and time only moves when a test
//! says so ([`Harness::advance`]). [`Harness::drive`] pumps until nothing moves any more, so a
//! test reads what every client received right after it, with no waiting.
//!
//! ```no_run
//! use mc::core::protocol::{ClientMessage, Role, ServerMessage};
//! use mc::core::ids::ShardId;
//! use mc_test_support::Harness;
//!
//! let mut h = Harness::new(2);
//! let a = h.connect(ShardId(0));
//! let b = h.connect(ShardId(1));
//! h.join(a, "standup", Role::Host, "a");
//! h.join(b, "standup", Role::Participant, "b");
//! h.send(a, &ClientMessage::Ping { id: 7 });
//! h.expect(a, "pong", |m| matches!(m, ServerMessage::Pong { id: 7 }));
//! ```
//!
//! quiche connections keep reading the real clock for their own transport timers (loss
//! recovery, idle timeout, draining). The harness disables idle timeouts and never loses a
//! datagram, so those timers have nothing to do within a test; everything of `mc`'s (join
//! timeout, resume window, close grace, keep-alive) runs on the virtual clock. One consequence:
//! a connection the server closed stays in quiche's draining state (three PTOs of real time)
//! until reaped, so tests observe closes from the client side ([`Harness::closed`]).

mod client;
mod clock;
pub mod fake_gc;
pub mod fake_shards;
mod harness;
pub mod udp;
pub mod wt;

pub use client::{
    closed, decode_frames, join_message, participant_id, random_scid, read_signaling, take_first,
    ClientSettings, Closed, SIGNALING_STREAM,
};
pub use clock::Clock;
pub use harness::{ClientId, ClientOptions, Harness, HarnessConfig, Steering, WireStats};
