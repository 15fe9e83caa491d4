//! Shard runtime (in progress)
