//! Framing of signaling v1 §2: a 4-byte big-endian length `N` (1..=65536), then `N` bytes of
//! one UTF-8 JSON object.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ids::ParticipantId;
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
    thread_local! {
        // One growing buffer per thread: a frame costs one allocation (the shared `Arc`).
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut out) => {
            let frame = encode_into(&mut out, msg);
            if out.capacity() > 4 * MAX_FRAME_LEN {
                // A rare huge frame does not pin its buffer for the thread's life.
                *out = Vec::new();
            }
            frame
        }
        Err(_) => encode_into(&mut Vec::new(), msg),
    })
}

fn encode_into<T: Serialize>(out: &mut Vec<u8>, msg: &T) -> Frame {
    out.clear();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    // Serializing our own message types into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, msg).is_err() {
        out.truncate(HEADER_LEN);
        out.extend_from_slice(b"{}");
    }
    let len = (out.len() - HEADER_LEN) as u32;
    out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Frame::from(&out[..])
}

/// A `message` payload exactly as the client wrote it: checked to be one JSON value, relayed
/// byte for byte (never parsed into a tree and written again).
pub type RawPayload = Box<RawValue>;

/// A decoded client frame: `message`, the hot path, with its payload kept raw; every other
/// type (and the rare `message` only the full decoder takes) as a [`ClientMessage`].
#[derive(Debug)]
pub enum Request {
    /// `message`.
    Relay {
        /// The payload as sent.
        payload: RawPayload,
        /// Recipients; absent means every other participant.
        to: Option<Vec<String>>,
    },
    /// Any other message, or a `message` decoded into a tree.
    Client(ClientMessage),
}

/// The fields of a `message` frame, borrowed from its body.
#[derive(Deserialize)]
struct RelayFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(default)]
    to: Option<Vec<String>>,
}

/// Decodes a client frame body: a `message` straight into a [`Request::Relay`] (its payload
/// validated but not parsed into a tree), anything else through [`decode_client`].
pub fn decode_request(body: &[u8]) -> Result<Request, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|_| DecodeError::Utf8)?;
    // Other types (a join, a ping) skip the first parse: only a body naming `"message"` can
    // be one (an escaped type name takes the full decoder, which is as correct).
    let fast = if text.contains("\"message\"") {
        serde_json::from_str::<RelayFrame<'_>>(text).ok()
    } else {
        None
    };
    if let Some(f) = fast {
        if f.kind == "message" && !needs_full_decode(f.payload.get()) {
            return Ok(Request::Relay {
                payload: f.payload.to_owned(),
                to: f.to,
            });
        }
    }
    serde_json::from_str(text)
        .map(Request::Client)
        .map_err(|e| DecodeError::Json(e.to_string()))
}

/// True when the JSON text `raw` may hold what a tree parser refuses: a number out of range
/// (one with an exponent, or more than 300 digits in a row) or nesting deeper than
/// [`FAST_MAX_DEPTH`]. Such a payload takes the full decoder, which refuses numbers that do not
/// fit an `f64` and nesting beyond serde_json's limit: relayed verbatim, either could break the
/// recipients' own JSON parsers.
fn needs_full_decode(raw: &str) -> bool {
    let b = raw.as_bytes();
    let (mut i, mut in_string, mut run, mut depth) = (0, false, 0usize, 0usize);
    while i < b.len() {
        let c = b[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else if c.is_ascii_digit() {
            run += 1;
            if run > 300 {
                return true;
            }
        } else {
            // An exponent marker right after a digit or a decimal point (`true`/`false` have
            // their `e` after a letter).
            if (c == b'e' || c == b'E') && i > 0 && (b[i - 1].is_ascii_digit() || b[i - 1] == b'.')
            {
                return true;
            }
            match c {
                b'[' | b'{' => {
                    depth += 1;
                    if depth > FAST_MAX_DEPTH {
                        return true;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            run = 0;
            in_string = c == b'"';
        }
        i += 1;
    }
    false
}

/// Deepest payload nesting relayed without the full decoder (serde_json's own limit is 128).
const FAST_MAX_DEPTH: usize = 64;

/// The server's `message` (signaling v1 §4) around a raw payload: the same bytes
/// [`encode_server`] writes for `ServerMessage::Message`, without building a tree.
pub fn encode_relayed(from: &ParticipantId, payload: &RawValue) -> Frame {
    #[derive(Serialize)]
    struct Relayed<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        from: &'a str,
        payload: &'a RawValue,
    }
    encode(&Relayed {
        kind: "message",
        from: from.as_str(),
        payload,
    })
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
    fn a_message_is_decoded_raw_and_relayed_byte_for_byte() {
        let body =
            br#"{"to":["p0-1"],"type":"message","payload":{"b": [1, 2.50, "\u00e9"],"a":12.50}}"#;
        let Request::Relay { payload, to } = decode_request(body).unwrap() else {
            panic!("not a relay request");
        };
        assert_eq!(payload.get(), r#"{"b": [1, 2.50, "\u00e9"],"a":12.50}"#);
        assert_eq!(to, Some(vec!["p0-1".to_owned()]));
        let pid = ParticipantId::from_wire("p0-2").unwrap();
        let frame = encode_relayed(&pid, &payload);
        assert_eq!(
            &frame[HEADER_LEN..],
            br#"{"type":"message","from":"p0-2","payload":{"b": [1, 2.50, "\u00e9"],"a":12.50}}"#
        );
        // What a client decodes is the message it would have got from a re-serialized tree.
        let tree: ServerMessage = serde_json::from_slice(&frame[HEADER_LEN..]).unwrap();
        assert_eq!(
            tree,
            ServerMessage::Message {
                from: "p0-2".to_owned(),
                payload: serde_json::json!({"b": [1, 2.5, "é"], "a": 12.5}),
            }
        );
    }

    #[test]
    fn payloads_with_numbers_a_tree_refuses_are_refused() {
        for bad in [
            &br#"{"type":"message","payload":1e400}"#[..],
            br#"{"type":"message","payload":{"a":[-2.5E+999]}}"#,
        ] {
            assert!(
                matches!(decode_request(bad), Err(DecodeError::Json(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(r#"{{"type":"message","payload":{}}}"#, "9".repeat(400));
        assert!(decode_request(long.as_bytes()).is_err());
        // In range, with an exponent: taken by the full decoder.
        assert!(matches!(
            decode_request(br#"{"type":"message","payload":[1e3,"1e999",true,false]}"#).unwrap(),
            Request::Client(ClientMessage::Message { .. })
        ));
        assert!(!needs_full_decode(
            r#"{"k":"x\"1e999","t":true,"f":false,"n":-0.5}"#
        ));
        assert!(needs_full_decode("[1.e5]"));
    }

    #[test]
    fn payloads_nested_deeper_than_a_tree_allows_are_refused() {
        for depth in [129, 200, 10_000] {
            let body = format!(
                r#"{{"type":"message","payload":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            assert!(
                matches!(decode_request(body.as_bytes()), Err(DecodeError::Json(_))),
                "depth {depth}"
            );
        }
        // Deeper than the fast path takes, within serde_json's limit: the full decoder's.
        let body = format!(
            r#"{{"type":"message","payload":{}{}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(matches!(
            decode_request(body.as_bytes()),
            Ok(Request::Client(ClientMessage::Message { .. }))
        ));
        let body = format!(
            r#"{{"type":"message","payload":{}{}}}"#,
            "[".repeat(FAST_MAX_DEPTH),
            "]".repeat(FAST_MAX_DEPTH)
        );
        assert!(matches!(
            decode_request(body.as_bytes()),
            Ok(Request::Relay { .. })
        ));
    }

    #[test]
    fn compact_relays_match_the_tree_encoding() {
        let body = br#"{"type":"message","payload":{"k":"v","n":[1,2,{"x":null}]}}"#;
        let Request::Relay { payload, .. } = decode_request(body).unwrap() else {
            panic!("not a relay request");
        };
        let pid = ParticipantId::from_wire("p1-a").unwrap();
        let tree = ServerMessage::Message {
            from: pid.to_string(),
            payload: serde_json::from_str(payload.get()).unwrap(),
        };
        assert_eq!(encode_relayed(&pid, &payload), encode_server(&tree));
    }

    #[test]
    fn other_types_and_bad_messages_take_the_full_decoder() {
        assert!(matches!(
            decode_request(br#"{"type":"ping","id":3}"#).unwrap(),
            Request::Client(ClientMessage::Ping { id: 3 })
        ));
        // A payload on another type does not make it a message.
        assert!(matches!(
            decode_request(br#"{"type":"ping","id":3,"payload":1}"#).unwrap(),
            Request::Client(ClientMessage::Ping { id: 3 })
        ));
        // An escaped type name is still `message` (through the full decoder).
        assert!(matches!(
            decode_request(br#"{"type":"mess\u0061ge","payload":[]}"#).unwrap(),
            Request::Client(ClientMessage::Message { .. })
        ));
        for bad in [
            &br#"{"type":"message"}"#[..],
            br#"{"type":"message","payload":}"#,
            br#"{"type":"message","payload":1,"to":"p0-1"}"#,
            br#"{"type":"message","payload":[1,}"#,
        ] {
            assert!(
                matches!(decode_request(bad), Err(DecodeError::Json(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(decode_request(&[0xff]), Err(DecodeError::Utf8)));
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
