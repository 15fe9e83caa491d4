//! Minimal HTTP/3 for WebTransport sessions over raw QUIC streams.
//!
//! quiche's `h3` module understands extended CONNECT but drops WebTransport streams, so we speak
//! HTTP/3 ourselves, sans-IO: [`H3Server`] and [`H3Client`] take stream bytes in and hand stream
//! bytes and events out, and the QUIC adapter (or a test) moves them. Only what WebTransport
//! needs is here: SETTINGS, HEADERS with static-table QPACK, DATA carrying capsules, GOAWAY, and
//! the WebTransport stream prefix. See `docs/webtransport.md`.
//!
//! Layers, bottom up: [`varint`] → [`frame`] / [`qpack`] / [`capsule`] → `control` (connection
//! streams) → [`server`] / [`client`].

pub mod capsule;
pub mod client;
mod control;
pub mod error;
pub mod frame;
pub mod qpack;
pub mod server;
pub mod varint;

pub use client::{ClientConfig, ClientEvent, H3Client, Rejection};
pub use control::{
    is_bidi, is_client_initiated, Transmit, STREAM_CONTROL, STREAM_PUSH, STREAM_QPACK_DECODER,
    STREAM_QPACK_ENCODER, STREAM_WEBTRANSPORT_UNI,
};
pub use error::{ErrorCode, H3Error};
pub use server::{H3Config, H3Event, H3Server};
