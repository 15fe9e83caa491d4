//! quiche adapter: per-shard socket endpoint, connection table, CID routing, forwarding and
//! handoff. Moves bytes and time between quiche and the sans-IO core.

// No clock reads here: every entry point takes `now` (clippy.toml).
#![warn(clippy::disallowed_methods)]

pub mod cid;
pub mod datagrams;
pub mod endpoint;
pub mod retry;
