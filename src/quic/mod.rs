//! quiche adapter: per-shard socket endpoint, connection table, CID routing, forwarding and
//! handoff. Moves bytes and time between quiche and the sans-IO core.

pub mod datagrams;
pub mod endpoint;
pub mod retry;
