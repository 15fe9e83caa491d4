//! Capsules (RFC 9297 §3.2) on a WebTransport CONNECT stream: `type | length | value`, carried in
//! the payload of the stream's DATA frames. We act on CLOSE_WEBTRANSPORT_SESSION and
//! DRAIN_WEBTRANSPORT_SESSION and skip every other capsule type unbuffered, as RFC 9297 requires
//! for unknown types.

use super::varint::{self, PartialVarint};

/// DATAGRAM capsule (RFC 9297 §3.5); skipped.
pub const DATAGRAM: u64 = 0x00;
/// CLOSE_WEBTRANSPORT_SESSION: a 32-bit application error code and a UTF-8 reason.
pub const CLOSE_WEBTRANSPORT_SESSION: u64 = 0x2843;
/// DRAIN_WEBTRANSPORT_SESSION: no payload; asks the peer to wind the session down.
pub const DRAIN_WEBTRANSPORT_SESSION: u64 = 0x78ae;
/// Longest close reason in bytes.
pub const MAX_CLOSE_REASON: usize = 1024;

/// A capsule we act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capsule {
    /// The peer closes the session.
    CloseSession {
        /// Application error code.
        code: u32,
        /// Reason text (invalid UTF-8 replaced).
        reason: String,
    },
    /// The peer asks for a graceful end of the session.
    DrainSession,
}

/// A capsule that breaks its layout (the CONNECT stream gets H3_MESSAGE_ERROR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed capsule: {0}")]
pub struct CapsuleError(pub &'static str);

/// Appends a CLOSE_WEBTRANSPORT_SESSION capsule. A reason longer than 1024 bytes is cut at a
/// character boundary.
pub fn encode_close(code: u32, reason: &str, out: &mut Vec<u8>) {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    varint::encode(CLOSE_WEBTRANSPORT_SESSION, out);
    varint::encode(4 + reason.len() as u64, out);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
}

/// Appends a DRAIN_WEBTRANSPORT_SESSION capsule.
pub fn encode_drain(out: &mut Vec<u8>) {
    varint::encode(DRAIN_WEBTRANSPORT_SESSION, out);
    varint::encode(0, out);
}

#[derive(Debug)]
enum State {
    Type,
    Length { ty: u64 },
    Buffer { len: usize, buf: Vec<u8> },
    Skip { remaining: u64 },
}

/// Incremental capsule reader over the concatenated DATA payloads of a CONNECT stream.
#[derive(Debug)]
pub struct CapsuleDecoder {
    state: State,
    varint: PartialVarint,
}

impl Default for CapsuleDecoder {
    fn default() -> Self {
        Self {
            state: State::Type,
            varint: PartialVarint::default(),
        }
    }
}

impl CapsuleDecoder {
    /// A decoder at the start of a capsule stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// True between capsules.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Type) && self.varint.is_empty()
    }

    /// Reads the next capsule we act on from `input`, advancing it; `Ok(None)` when `input` is
    /// used up first.
    pub fn next(&mut self, input: &mut &[u8]) -> Result<Option<Capsule>, CapsuleError> {
        loop {
            match &mut self.state {
                State::Type => {
                    let Some(ty) = self.varint.feed(input) else {
                        return Ok(None);
                    };
                    self.state = State::Length { ty };
                }
                State::Length { ty } => {
                    let ty = *ty;
                    let Some(len) = self.varint.feed(input) else {
                        return Ok(None);
                    };
                    match ty {
                        CLOSE_WEBTRANSPORT_SESSION => {
                            if !(4..=4 + MAX_CLOSE_REASON as u64).contains(&len) {
                                return Err(CapsuleError("bad CLOSE_WEBTRANSPORT_SESSION length"));
                            }
                            self.state = State::Buffer {
                                len: len as usize,
                                buf: Vec::with_capacity(len as usize),
                            };
                        }
                        DRAIN_WEBTRANSPORT_SESSION => {
                            self.state = State::Skip { remaining: len };
                            return Ok(Some(Capsule::DrainSession));
                        }
                        _ => self.state = State::Skip { remaining: len },
                    }
                }
                State::Buffer { len, buf } => {
                    let take = (*len - buf.len()).min(input.len());
                    buf.extend_from_slice(&input[..take]);
                    *input = &input[take..];
                    if buf.len() < *len {
                        return Ok(None);
                    }
                    let buf = std::mem::take(buf);
                    self.state = State::Type;
                    let code = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    let reason = String::from_utf8_lossy(&buf[4..]).into_owned();
                    return Ok(Some(Capsule::CloseSession { code, reason }));
                }
                State::Skip { remaining } => {
                    let take = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    *input = &input[take..];
                    *remaining -= take as u64;
                    if *remaining > 0 {
                        return Ok(None);
                    }
                    self.state = State::Type;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(dec: &mut CapsuleDecoder, mut input: &[u8]) -> Result<Vec<Capsule>, CapsuleError> {
        let mut out = Vec::new();
        while let Some(c) = dec.next(&mut input)? {
            out.push(c);
        }
        Ok(out)
    }

    #[test]
    fn close_capsule_wire_format() {
        let mut out = Vec::new();
        encode_close(0x101, "bye", &mut out);
        // 0x2843 as a 2-byte varint, length 7, code, reason.
        assert_eq!(
            out,
            [0x68, 0x43, 0x07, 0x00, 0x00, 0x01, 0x01, b'b', b'y', b'e']
        );
        let mut drain = Vec::new();
        encode_drain(&mut drain);
        assert_eq!(drain, [0x80, 0x00, 0x78, 0xae, 0x00]);
    }

    #[test]
    fn decodes_across_pieces_and_skips_unknown() {
        let mut wire = Vec::new();
        // A DATAGRAM capsule and an unknown capsule, both skipped.
        wire.extend_from_slice(&[0x00, 0x03, 1, 2, 3]);
        varint::encode(0x1234_5678, &mut wire);
        varint::encode(2, &mut wire);
        wire.extend_from_slice(&[9, 9]);
        encode_drain(&mut wire);
        encode_close(7, "done", &mut wire);
        let want = [
            Capsule::DrainSession,
            Capsule::CloseSession {
                code: 7,
                reason: "done".into(),
            },
        ];
        assert_eq!(read_all(&mut CapsuleDecoder::new(), &wire).unwrap(), want);
        let mut dec = CapsuleDecoder::new();
        let mut got = Vec::new();
        for b in &wire {
            got.extend(read_all(&mut dec, std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(got, want);
        assert!(dec.is_idle());
    }

    #[test]
    fn long_reason_is_cut_at_char_boundary() {
        let reason = "é".repeat(600); // 1200 bytes
        let mut out = Vec::new();
        encode_close(1, &reason, &mut out);
        let got = read_all(&mut CapsuleDecoder::new(), &out).unwrap();
        let Capsule::CloseSession { reason: r, .. } = &got[0] else {
            panic!()
        };
        assert_eq!(r.len(), 1024);
        assert!(reason.starts_with(r.as_str()));
    }

    #[test]
    fn bad_close_lengths() {
        let mut wire = Vec::new();
        varint::encode(CLOSE_WEBTRANSPORT_SESSION, &mut wire);
        varint::encode(3, &mut wire);
        assert!(read_all(&mut CapsuleDecoder::new(), &wire).is_err());
        let mut wire = Vec::new();
        varint::encode(CLOSE_WEBTRANSPORT_SESSION, &mut wire);
        varint::encode(4 + 1025, &mut wire);
        assert!(read_all(&mut CapsuleDecoder::new(), &wire).is_err());
    }
}
