//! `mc`: a thread-per-core sharded Meeting Controller.
//!
//! See `docs/ARCHITECTURE.md` for the codemap. In short: [`core`] is the sans-IO heart
//! (protocol, meetings, shards, router, tokens); [`runtime`] runs one pinned glommio executor per
//! shard; [`quic`] and [`webtransport`] adapt quiche to the core; [`control`] is the control
//! thread (HTTP server, metrics, GC client, admin, drain).

pub mod app;
pub mod config;
pub mod control;
pub mod core;
pub mod dev;
pub mod logging;
pub mod quic;
pub mod runtime;
pub mod webtransport;
