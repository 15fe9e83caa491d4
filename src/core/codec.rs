//! Framing of signaling v1 §2: a 4-byte big-endian length `N` (1..=65536), then `N` bytes of
//! one UTF-8 JSON object.

use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

use super::protocol::{ClientMessage, ServerMessage};

/// Largest allowed frame body.
pub const MAX_FRAME_LEN: usize = 65536;
/// Length prefix size.
pub const HEADER_LEN: usize = 4;

/// An encoded frame (header + body), cheap to clone for fan-out.
pub type Frame = Arc<[u8]>;

/// A framing violation; the connection must be closed with `0x101`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A zero length prefix.
    #[error("frame length 0")]
    Empty,
    /// A length prefix above 65536.
    #[error("frame length {0} exceeds 65536")]
    TooLarge(u32),
}

/// Why a frame body is not a usable message (connection stays open unless it was the join).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body is not valid UTF-8.
    #[error("frame is not valid UTF-8")]
    Utf8,
    /// The body is not a JSON object of a known shape.
    #[error("malformed message: {0}")]
    Json(String),
}

/// Incremental frame splitter for one byte stream.
///
/// Holds at most one partial frame (≤ 65540 bytes) plus what the last `push` added.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    pos: usize,
}

impl FrameDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends stream bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the unconsumed bytes out (used when a connection is handed to another shard).
    pub fn take_remaining(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.pos);
        self.buf.clear();
        self.pos = 0;
        rest
    }

    /// Returns the next complete frame body, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let avail = &self.buf[self.pos..];
        let Some(header) = avail.first_chunk::<HEADER_LEN>() else {
            self.compact();
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header);
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len as usize > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge(len));
        }
        let len = len as usize;
        if avail.len() < HEADER_LEN + len {
            self.compact();
            return Ok(None);
        }
        let start = self.pos + HEADER_LEN;
        self.pos = start + len;
        Ok(Some(&self.buf[start..start + len]))
    }

    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }
}

/// Encodes any serializable message as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Frame {
    let mut out = vec![0u8; HEADER_LEN];
    // Serializing our own message types into a Vec cannot fail.
    if serde_json::to_writer(&mut out, msg).is_err() {
        out.truncate(HEADER_LEN);
        out.extend_from_slice(b"{}");
    }
    let len = (out.len() - HEADER_LEN) as u32;
    out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    out.into()
}

/// Encodes a server message as one frame.
pub fn encode_server(msg: &ServerMessage) -> Frame {
    encode(msg)
}

/// Decodes a frame body as `T`.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|_| DecodeError::Utf8)?;
    serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))
}

/// Decodes a client message body.
pub fn decode_client(body: &[u8]) -> Result<ClientMessage, DecodeError> {
    decode(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::protocol::ErrorCode;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn splits_frames_across_pushes_and_packs() {
        let mut d = FrameDecoder::new();
        let mut bytes = frame(br#"{"type":"ping","id":1}"#);
        bytes.extend(frame(br#"{"type":"ping","id":2}"#));
        // Drip one byte at a time.
        let mut got = Vec::new();
        for b in &bytes {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(decode_client(f).unwrap());
            }
        }
        assert_eq!(
            got,
            vec![ClientMessage::Ping { id: 1 }, ClientMessage::Ping { id: 2 }]
        );
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn rejects_zero_and_oversized_lengths() {
        let mut d = FrameDecoder::new();
        d.push(&0u32.to_be_bytes());
        assert_eq!(d.next_frame(), Err(FrameError::Empty));
        let mut d = FrameDecoder::new();
        d.push(&65537u32.to_be_bytes());
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge(65537)));
        let mut d = FrameDecoder::new();
        d.push(&u32::MAX.to_be_bytes());
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge(u32::MAX)));
    }

    #[test]
    fn accepts_exactly_max_len() {
        let mut d = FrameDecoder::new();
        let body = vec![b' '; MAX_FRAME_LEN];
        d.push(&frame(&body));
        assert_eq!(
            d.next_frame().unwrap().map(<[u8]>::len),
            Some(MAX_FRAME_LEN)
        );
    }

    #[test]
    fn truncated_frame_waits() {
        let mut d = FrameDecoder::new();
        let f = frame(br#"{"type":"leave"}"#);
        d.push(&f[..f.len() - 1]);
        assert_eq!(d.next_frame(), Ok(None));
        d.push(&f[f.len() - 1..]);
        assert!(d.next_frame().unwrap().is_some());
    }

    #[test]
    fn body_errors() {
        assert!(matches!(
            decode_client(&[0xff, 0xfe]),
            Err(DecodeError::Utf8)
        ));
        assert!(matches!(decode_client(b"[1,2]"), Err(DecodeError::Json(_))));
        assert!(matches!(
            decode_client(b"{\"type\":"),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            decode_client(br#"{"type":"ping","id":"x"}"#),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            decode_client(br#"{"id":1}"#),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn unknown_type_and_unknown_fields() {
        assert_eq!(
            decode_client(br#"{"type":"dance","x":1}"#).unwrap(),
            ClientMessage::Unknown
        );
        assert_eq!(
            decode_client(br#"{"type":"ping","id":5,"extra":{"a":[1]}}"#).unwrap(),
            ClientMessage::Ping { id: 5 }
        );
    }

    #[test]
    fn take_remaining_returns_unconsumed_bytes() {
        let mut d = FrameDecoder::new();
        let mut bytes = frame(br#"{"type":"leave"}"#);
        bytes.extend_from_slice(&[0, 0, 0, 9, b'{']);
        d.push(&bytes);
        assert!(d.next_frame().unwrap().is_some());
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.take_remaining(), vec![0, 0, 0, 9, b'{']);
    }

    #[test]
    fn server_messages_round_trip() {
        let m = ServerMessage::error(ErrorCode::RateLimited, "slow down", Some("r1".into()));
        let f = encode_server(&m);
        let mut d = FrameDecoder::new();
        d.push(&f);
        let body = d.next_frame().unwrap().unwrap().to_vec();
        let back: ServerMessage = decode(&body).unwrap();
        assert_eq!(back, m);
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains(r#""type":"error""#) && text.contains(r#""code":"rate_limited""#));
    }
}
