//! QUIC adapter (in progress)
