//! The sans-IO core: no sockets, no executors, no clocks. Time comes in as a parameter.

// No clock reads here: every entry point takes `now` (clippy.toml).
#![warn(clippy::disallowed_methods)]

pub mod binding;
pub mod codec;
pub mod ids;
pub mod meeting;
pub mod migration;
pub mod protocol;
pub mod router;
pub mod shard;
pub mod token;
