//! Shard runtime: one glommio executor pinned per core, and the channels between them.

pub mod link;
