//! Server frames in: `mc::core::codec::FrameDecoder` plus one tolerance.
//!
//! A frame longer than 65536 bytes is a protocol violation (signaling v1 §2). A client would
//! close the connection; the load generator counts it (`server_frame_over_64KiB`) and keeps
//! reading, so that one oversized message (e.g. a large meeting's roster in `join_response`)
//! does not end the measurement of everything after it. Lengths above [`HARD_LIMIT`] still end
//! the connection.

use mc::core::codec::{self, FrameDecoder, FrameError, HEADER_LEN};
use mc::core::protocol::ServerMessage;

use crate::payload::{self, Delivery};

/// Longest oversized frame still read through.
pub const HARD_LIMIT: usize = 16 << 20;

/// What reading produced besides messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Anomalies {
    /// Frames over 64 KiB read through.
    pub oversized: u64,
    /// Frames whose body was not a known server message.
    pub undecodable: u64,
    /// A framing error that ends the connection (zero length, or over [`HARD_LIMIT`]).
    pub fatal: Option<&'static str>,
}

/// One frame read: a delivery of the generator's own payload (scanned without decoding), or
/// any other server message (decoded by the codec).
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A `message` carrying `t`, `s` and `from`.
    Delivery(Delivery),
    /// Anything else (boxed: deliveries, the common case, stay small to move).
    Message(Box<ServerMessage>),
}

fn decode(body: &[u8]) -> Option<Item> {
    if let Some(d) = payload::parse_delivery(body) {
        return Some(Item::Delivery(d));
    }
    codec::decode::<ServerMessage>(body)
        .ok()
        .map(|m| Item::Message(Box::new(m)))
}

/// The frame reader of one connection.
#[derive(Debug, Default)]
pub struct Inbound {
    decoder: FrameDecoder,
    /// An oversized frame being collected: its length and the body so far.
    oversized: Option<(usize, Vec<u8>)>,
}

impl Inbound {
    /// A reader at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds stream bytes; decoded messages are appended to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Item>) -> Anomalies {
        let mut found = Anomalies::default();
        let mut pending: Vec<u8>;
        let mut input: &[u8] = bytes;
        loop {
            if let Some((len, body)) = self.oversized.as_mut() {
                let take = (*len - body.len()).min(input.len());
                body.extend_from_slice(&input[..take]);
                input = &input[take..];
                if body.len() < *len {
                    return found;
                }
                match decode(body) {
                    Some(m) => out.push(m),
                    None => found.undecodable += 1,
                }
                self.oversized = None;
            }
            self.decoder.push(input);
            loop {
                match self.decoder.next_frame() {
                    Ok(None) => return found,
                    Ok(Some(body)) => match decode(body) {
                        Some(m) => out.push(m),
                        None => found.undecodable += 1,
                    },
                    Err(FrameError::Empty) => {
                        found.fatal = Some("bad_frame:empty_frame");
                        return found;
                    }
                    Err(FrameError::TooLarge(len)) => {
                        let len = len as usize;
                        if len > HARD_LIMIT {
                            found.fatal = Some("bad_frame:frame_over_16MiB");
                            return found;
                        }
                        found.oversized += 1;
                        let rest = self.decoder.take_remaining();
                        self.oversized = Some((len, Vec::with_capacity(len)));
                        pending = rest[HEADER_LEN..].to_vec();
                        break;
                    }
                }
            }
            input = &pending;
        }
    }
}

#[cfg(test)]
mod tests {
    use mc::core::protocol::ServerMessage;

    use super::*;

    fn pong(id: u64) -> Vec<u8> {
        codec::encode_server(&ServerMessage::Pong { id }).to_vec()
    }

    fn raw_frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn decodes_split_and_packed_frames() {
        let mut bytes = pong(1);
        bytes.extend(pong(2));
        bytes.extend(pong(3));
        let mut r = Inbound::new();
        let mut out = Vec::new();
        for chunk in bytes.chunks(5) {
            assert_eq!(r.feed(chunk, &mut out), Anomalies::default());
        }
        assert_eq!(
            out,
            vec![
                Item::Message(Box::new(ServerMessage::Pong { id: 1 })),
                Item::Message(Box::new(ServerMessage::Pong { id: 2 })),
                Item::Message(Box::new(ServerMessage::Pong { id: 3 }))
            ]
        );
    }

    #[test]
    fn reads_through_an_oversized_frame() {
        let big = ServerMessage::Message {
            from: "p1".into(),
            payload: serde_json::Value::String("x".repeat(70_000)),
        };
        let mut bytes = pong(1);
        bytes.extend_from_slice(&codec::encode_server(&big));
        bytes.extend(pong(2));
        for chunk_size in [7, 1000, 100_000] {
            let mut r = Inbound::new();
            let mut out = Vec::new();
            let mut total = Anomalies::default();
            for chunk in bytes.chunks(chunk_size) {
                let a = r.feed(chunk, &mut out);
                total.oversized += a.oversized;
                assert_eq!(a.fatal, None);
            }
            assert_eq!(total.oversized, 1, "chunks of {chunk_size}");
            assert_eq!(out.len(), 3, "chunks of {chunk_size}");
            assert_eq!(out[1], Item::Message(Box::new(big.clone())));
            assert_eq!(
                out[2],
                Item::Message(Box::new(ServerMessage::Pong { id: 2 }))
            );
        }
    }

    #[test]
    fn deliveries_take_the_fast_path_and_the_rest_the_codec() {
        let delivery = codec::encode_server(&ServerMessage::Message {
            from: "p1".into(),
            payload: serde_json::json!({"t": 5, "s": 6, "from": 7, "pad": "xx"}),
        });
        let foreign = ServerMessage::Message {
            from: "p2".into(),
            payload: serde_json::json!({"hello": "world"}),
        };
        let mut bytes = delivery.to_vec();
        bytes.extend_from_slice(&codec::encode_server(&foreign));
        bytes.extend(pong(9));
        let mut out = Vec::new();
        assert_eq!(Inbound::new().feed(&bytes, &mut out), Anomalies::default());
        assert_eq!(
            out,
            vec![
                Item::Delivery(Delivery {
                    t: 5,
                    seq: 6,
                    from: 7
                }),
                Item::Message(Box::new(foreign)),
                Item::Message(Box::new(ServerMessage::Pong { id: 9 })),
            ]
        );
    }

    #[test]
    fn fatal_and_undecodable() {
        let mut out = Vec::new();
        let a = Inbound::new().feed(&0u32.to_be_bytes(), &mut out);
        assert_eq!(a.fatal, Some("bad_frame:empty_frame"));
        let a = Inbound::new().feed(&u32::MAX.to_be_bytes(), &mut out);
        assert_eq!(a.fatal, Some("bad_frame:frame_over_16MiB"));
        let a = Inbound::new().feed(&raw_frame(br#"{"type":"nope"}"#), &mut out);
        assert_eq!(a.undecodable, 1);
        assert!(out.is_empty());
    }
}
