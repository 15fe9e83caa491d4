//! HTTP/3 frames (RFC 9114 §7): `type (varint) | length (varint) | payload`.
//!
//! [`FrameDecoder`] reads frames from a stream that arrives in pieces. It buffers only the
//! payloads it must parse whole (HEADERS up to a limit, SETTINGS, GOAWAY, MAX_PUSH_ID,
//! CANCEL_PUSH), streams DATA payloads out as borrowed slices, and skips unknown and reserved
//! frame types without buffering them.

use super::error::{ErrorCode, H3Error};
use super::varint::{self, PartialVarint};

/// DATA frame type.
pub const DATA: u64 = 0x00;
/// HEADERS frame type.
pub const HEADERS: u64 = 0x01;
/// CANCEL_PUSH frame type.
pub const CANCEL_PUSH: u64 = 0x03;
/// SETTINGS frame type.
pub const SETTINGS: u64 = 0x04;
/// PUSH_PROMISE frame type.
pub const PUSH_PROMISE: u64 = 0x05;
/// GOAWAY frame type.
pub const GOAWAY: u64 = 0x07;
/// MAX_PUSH_ID frame type.
pub const MAX_PUSH_ID: u64 = 0x0d;
/// WEBTRANSPORT_STREAM signal: starts a WebTransport bidirectional stream; it has no length.
pub const WEBTRANSPORT_STREAM: u64 = 0x41;

/// Largest SETTINGS payload accepted (a few dozen settings).
pub const MAX_SETTINGS_LEN: usize = 4096;

/// Whether `ty` is an HTTP/2 frame type reserved in HTTP/3 (RFC 9114 §7.2.8); receiving one
/// is a connection error of type H3_FRAME_UNEXPECTED.
pub const fn is_http2_reserved(ty: u64) -> bool {
    matches!(ty, 0x02 | 0x06 | 0x08 | 0x09)
}

/// Whether `v` is a reserved "grease" value `0x1f * N + 0x21` (frame and stream types,
/// settings, error codes).
pub const fn is_grease(v: u64) -> bool {
    v >= 0x21 && (v - 0x21).is_multiple_of(0x1f)
}

/// SETTINGS identifiers.
pub mod setting {
    /// QPACK dynamic table capacity the decoder allows (RFC 9204 §5).
    pub const QPACK_MAX_TABLE_CAPACITY: u64 = 0x01;
    /// Largest field section the sender accepts (RFC 9114 §7.2.4.1).
    pub const MAX_FIELD_SECTION_SIZE: u64 = 0x06;
    /// Streams that may be blocked on the QPACK dynamic table (RFC 9204 §5).
    pub const QPACK_BLOCKED_STREAMS: u64 = 0x07;
    /// Extended CONNECT is allowed (RFC 9220).
    pub const ENABLE_CONNECT_PROTOCOL: u64 = 0x08;
    /// HTTP Datagrams (RFC 9297).
    pub const H3_DATAGRAM: u64 = 0x33;
    /// HTTP Datagrams, pre-RFC codepoint (draft-ietf-masque-h3-datagram-04), still sent by Chrome.
    pub const H3_DATAGRAM_DRAFT04: u64 = 0x00ff_d277;
    /// WebTransport enabled (draft-ietf-webtrans-http3-02..06).
    pub const ENABLE_WEBTRANSPORT: u64 = 0x2b60_3742;
    /// Maximum concurrent WebTransport sessions (draft-ietf-webtrans-http3-07..12).
    pub const WEBTRANSPORT_MAX_SESSIONS: u64 = 0xc671_706a;

    /// HTTP/2 settings with no HTTP/3 meaning: receiving one is H3_SETTINGS_ERROR.
    pub const fn is_http2_reserved(id: u64) -> bool {
        matches!(id, 0x00 | 0x02 | 0x03 | 0x04 | 0x05)
    }
}

/// The content of a SETTINGS frame, in the order received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings(Vec<(u64, u64)>);

impl Settings {
    /// No settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `id` to `value`, replacing an earlier value.
    pub fn set(&mut self, id: u64, value: u64) -> &mut Self {
        match self.0.iter_mut().find(|(i, _)| *i == id) {
            Some(entry) => entry.1 = value,
            None => self.0.push((id, value)),
        }
        self
    }

    /// The value of `id`, if present.
    pub fn get(&self, id: u64) -> Option<u64> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| *v)
    }

    /// All `(id, value)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().copied()
    }

    /// Whether the peer offers WebTransport under any draft we speak.
    pub fn supports_webtransport(&self) -> bool {
        self.get(setting::ENABLE_WEBTRANSPORT) == Some(1)
            || self
                .get(setting::WEBTRANSPORT_MAX_SESSIONS)
                .is_some_and(|v| v > 0)
    }

    /// Whether the peer (a server) allows extended CONNECT.
    pub fn enables_connect_protocol(&self) -> bool {
        self.get(setting::ENABLE_CONNECT_PROTOCOL) == Some(1)
    }

    /// Parses a SETTINGS payload (RFC 9114 §7.2.4).
    ///
    /// Truncated pairs are H3_FRAME_ERROR; duplicates, HTTP/2-only identifiers and boolean
    /// settings with values other than 0 or 1 are H3_SETTINGS_ERROR. Unknown identifiers are kept.
    pub fn decode(mut payload: &[u8]) -> Result<Self, H3Error> {
        const TRUNCATED: H3Error = H3Error::new(ErrorCode::H3_FRAME_ERROR, "truncated SETTINGS");
        let mut out = Settings::new();
        while !payload.is_empty() {
            let (id, n) = varint::decode(payload).ok_or(TRUNCATED)?;
            payload = &payload[n..];
            let (value, n) = varint::decode(payload).ok_or(TRUNCATED)?;
            payload = &payload[n..];
            if setting::is_http2_reserved(id) {
                return Err(H3Error::new(
                    ErrorCode::H3_SETTINGS_ERROR,
                    "HTTP/2 setting in SETTINGS",
                ));
            }
            if out.get(id).is_some() {
                return Err(H3Error::new(
                    ErrorCode::H3_SETTINGS_ERROR,
                    "duplicate setting",
                ));
            }
            let boolean = matches!(
                id,
                setting::ENABLE_CONNECT_PROTOCOL
                    | setting::H3_DATAGRAM
                    | setting::H3_DATAGRAM_DRAFT04
                    | setting::ENABLE_WEBTRANSPORT
            );
            if boolean && value > 1 {
                return Err(H3Error::new(
                    ErrorCode::H3_SETTINGS_ERROR,
                    "boolean setting not 0 or 1",
                ));
            }
            out.0.push((id, value));
        }
        Ok(out)
    }

    /// Appends a whole SETTINGS frame.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut payload = Vec::with_capacity(8 * self.0.len());
        for (id, value) in &self.0 {
            varint::encode(*id, &mut payload);
            varint::encode(*value, &mut payload);
        }
        encode_frame(SETTINGS, &payload, out);
    }
}

/// Appends a frame header.
pub fn encode_header(ty: u64, len: u64, out: &mut Vec<u8>) {
    varint::encode(ty, out);
    varint::encode(len, out);
}

/// Appends a whole frame.
pub fn encode_frame(ty: u64, payload: &[u8], out: &mut Vec<u8>) {
    encode_header(ty, payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// Appends a GOAWAY frame carrying `id`.
pub fn encode_goaway(id: u64, out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(8);
    varint::encode(id, &mut payload);
    encode_frame(GOAWAY, &payload, out);
}

/// One thing read from a stream of frames.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameItem<'a> {
    /// A DATA frame begins; `len` payload bytes follow as [`FrameItem::Data`] pieces.
    DataStart {
        /// Payload length.
        len: u64,
    },
    /// A piece of the current DATA frame's payload.
    Data(&'a [u8]),
    /// A complete HEADERS frame: its encoded field section.
    Headers(Vec<u8>),
    /// A complete SETTINGS frame, unparsed (see [`Settings::decode`]): where SETTINGS is not
    /// allowed, that is the error, whatever the payload.
    Settings(Vec<u8>),
    /// A GOAWAY frame with its stream or push id.
    Goaway(u64),
    /// A MAX_PUSH_ID frame.
    MaxPushId(u64),
    /// A CANCEL_PUSH frame.
    CancelPush(u64),
    /// A PUSH_PROMISE or HTTP/2-reserved frame type (its payload is skipped). Never valid
    /// in this implementation: callers make it a connection error.
    Unexpected(u64),
    /// The WEBTRANSPORT_STREAM signal (0x41). Valid only as the first bytes of a bidirectional
    /// stream, which callers check before handing the stream to a decoder.
    WebTransportStream,
}

/// Why a frame could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A buffered frame is longer than its limit.
    TooLarge {
        /// Frame type.
        ty: u64,
        /// Announced payload length.
        len: u64,
    },
    /// A frame or its payload breaks the frame layout or settings rules.
    Invalid(H3Error),
}

impl FrameError {
    /// The connection error to close with when the frame is on a critical stream.
    pub fn into_connection_error(self) -> H3Error {
        match self {
            Self::TooLarge { ty: HEADERS, .. } => {
                H3Error::new(ErrorCode::H3_EXCESSIVE_LOAD, "HEADERS frame too large")
            }
            Self::TooLarge { .. } => H3Error::new(ErrorCode::H3_FRAME_ERROR, "frame too large"),
            Self::Invalid(e) => e,
        }
    }
}

#[derive(Debug)]
enum State {
    Type,
    Length { ty: u64 },
    Buffer { ty: u64, len: usize, buf: Vec<u8> },
    Data { remaining: u64 },
    Skip { remaining: u64 },
}

/// Incremental frame reader for one stream.
#[derive(Debug)]
pub struct FrameDecoder {
    state: State,
    varint: PartialVarint,
    max_headers: usize,
}

impl FrameDecoder {
    /// A decoder that accepts HEADERS frames up to `max_headers` bytes.
    pub fn new(max_headers: usize) -> Self {
        Self {
            state: State::Type,
            varint: PartialVarint::default(),
            max_headers,
        }
    }

    /// True between frames (no partial frame pending): a FIN here is clean.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Type) && self.varint.is_empty()
    }

    /// Reads the next item from `input`, advancing it past the bytes used.
    ///
    /// Returns `Ok(None)` when `input` is used up without completing an item.
    pub fn next<'a>(&mut self, input: &mut &'a [u8]) -> Result<Option<FrameItem<'a>>, FrameError> {
        loop {
            match &mut self.state {
                State::Type => {
                    let Some(ty) = self.varint.feed(input) else {
                        return Ok(None);
                    };
                    if ty == WEBTRANSPORT_STREAM {
                        return Ok(Some(FrameItem::WebTransportStream));
                    }
                    self.state = State::Length { ty };
                }
                State::Length { ty } => {
                    let ty = *ty;
                    let Some(len) = self.varint.feed(input) else {
                        return Ok(None);
                    };
                    if let Some(item) = self.start_payload(ty, len)? {
                        return Ok(Some(item));
                    }
                }
                State::Buffer { ty, len, buf } => {
                    let take = (*len - buf.len()).min(input.len());
                    buf.extend_from_slice(&input[..take]);
                    *input = &input[take..];
                    if buf.len() < *len {
                        return Ok(None);
                    }
                    let (ty, payload) = (*ty, std::mem::take(buf));
                    self.state = State::Type;
                    return parse_buffered(ty, payload).map(Some);
                }
                State::Data { remaining } => {
                    if *remaining == 0 {
                        self.state = State::Type;
                        continue;
                    }
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    let (piece, rest) = input.split_at(take);
                    *input = rest;
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.state = State::Type;
                    }
                    return Ok(Some(FrameItem::Data(piece)));
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

    fn start_payload(
        &mut self,
        ty: u64,
        len: u64,
    ) -> Result<Option<FrameItem<'static>>, FrameError> {
        let limit = match ty {
            DATA => {
                self.state = State::Data { remaining: len };
                return Ok(Some(FrameItem::DataStart { len }));
            }
            HEADERS => self.max_headers,
            SETTINGS => MAX_SETTINGS_LEN,
            GOAWAY | MAX_PUSH_ID | CANCEL_PUSH => 8,
            _ if ty == PUSH_PROMISE || is_http2_reserved(ty) => {
                self.state = State::Skip { remaining: len };
                return Ok(Some(FrameItem::Unexpected(ty)));
            }
            _ => {
                self.state = State::Skip { remaining: len };
                return Ok(None);
            }
        };
        if len > limit as u64 {
            // Skip the payload so the caller may keep reading if it treats this as a stream error.
            self.state = State::Skip { remaining: len };
            return Err(if ty == HEADERS {
                FrameError::TooLarge { ty, len }
            } else {
                FrameError::Invalid(H3Error::new(
                    ErrorCode::H3_FRAME_ERROR,
                    "frame payload too long",
                ))
            });
        }
        let len = len as usize;
        if len == 0 {
            self.state = State::Type;
            return parse_buffered(ty, Vec::new()).map(Some);
        }
        self.state = State::Buffer {
            ty,
            len,
            buf: Vec::with_capacity(len.min(1024)),
        };
        Ok(None)
    }
}

fn parse_buffered(ty: u64, payload: Vec<u8>) -> Result<FrameItem<'static>, FrameError> {
    let single_varint = |p: &[u8]| match varint::decode(p) {
        Some((v, n)) if n == p.len() => Ok(v),
        _ => Err(FrameError::Invalid(H3Error::new(
            ErrorCode::H3_FRAME_ERROR,
            "malformed id frame",
        ))),
    };
    Ok(match ty {
        HEADERS => FrameItem::Headers(payload),
        SETTINGS => FrameItem::Settings(payload),
        GOAWAY => FrameItem::Goaway(single_varint(&payload)?),
        MAX_PUSH_ID => FrameItem::MaxPushId(single_varint(&payload)?),
        _ => FrameItem::CancelPush(single_varint(&payload)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(dec: &mut FrameDecoder, mut input: &[u8]) -> Result<Vec<String>, FrameError> {
        let mut out = Vec::new();
        while let Some(item) = dec.next(&mut input)? {
            out.push(format!("{item:?}"));
        }
        assert!(input.is_empty());
        Ok(out)
    }

    fn chrome_settings_payload() -> Vec<u8> {
        // What Chrome sends on its control stream for WebTransport: QPACK capacity and blocked
        // streams, max field section size, H3_DATAGRAM (both codepoints), ENABLE_WEBTRANSPORT,
        // WEBTRANSPORT_MAX_SESSIONS and a grease setting.
        let mut p = Vec::new();
        for (id, v) in [
            (0x01, 0),
            (0x06, 262_144),
            (0x07, 0),
            (0x33, 1),
            (0x00ff_d277, 1),
            (0x2b60_3742, 1),
            (0xc671_706a, 1),
            (0x1f * 7 + 0x21, 0x1234),
        ] {
            varint::encode(id, &mut p);
            varint::encode(v, &mut p);
        }
        p
    }

    #[test]
    fn settings_parse_chrome_values() {
        let s = Settings::decode(&chrome_settings_payload()).unwrap();
        assert_eq!(s.get(setting::MAX_FIELD_SECTION_SIZE), Some(262_144));
        assert_eq!(s.get(setting::H3_DATAGRAM), Some(1));
        assert_eq!(s.get(setting::H3_DATAGRAM_DRAFT04), Some(1));
        assert!(s.supports_webtransport());
        assert!(!s.enables_connect_protocol());
        assert_eq!(s.get(0x1f * 7 + 0x21), Some(0x1234));
        assert_eq!(s.iter().count(), 8);
    }

    #[test]
    fn settings_round_trip_and_webtransport_detection() {
        let mut s = Settings::new();
        s.set(setting::ENABLE_CONNECT_PROTOCOL, 1)
            .set(setting::WEBTRANSPORT_MAX_SESSIONS, 4)
            .set(setting::WEBTRANSPORT_MAX_SESSIONS, 2);
        let mut wire = Vec::new();
        s.encode(&mut wire);
        let mut dec = FrameDecoder::new(1024);
        let mut input = &wire[..];
        let Some(FrameItem::Settings(payload)) = dec.next(&mut input).unwrap() else {
            panic!("no settings");
        };
        let back = Settings::decode(&payload).unwrap();
        assert_eq!(back, s);
        assert!(back.supports_webtransport() && back.enables_connect_protocol());
        assert!(!Settings::new().supports_webtransport());
        let mut only_draft02 = Settings::new();
        only_draft02.set(setting::ENABLE_WEBTRANSPORT, 1);
        assert!(only_draft02.supports_webtransport());
    }

    #[test]
    fn settings_errors() {
        let mut dup = Vec::new();
        for (id, v) in [(0x06, 1), (0x06, 2)] {
            varint::encode(id, &mut dup);
            varint::encode(v, &mut dup);
        }
        assert_eq!(
            Settings::decode(&dup).unwrap_err().code,
            ErrorCode::H3_SETTINGS_ERROR
        );
        // HTTP/2 SETTINGS_ENABLE_PUSH (0x02).
        assert_eq!(
            Settings::decode(&[0x02, 0x00]).unwrap_err().code,
            ErrorCode::H3_SETTINGS_ERROR
        );
        // ENABLE_CONNECT_PROTOCOL = 2.
        assert_eq!(
            Settings::decode(&[0x08, 0x02]).unwrap_err().code,
            ErrorCode::H3_SETTINGS_ERROR
        );
        // Identifier without a value.
        assert_eq!(
            Settings::decode(&[0x06]).unwrap_err().code,
            ErrorCode::H3_FRAME_ERROR
        );
        // Truncated value varint.
        assert_eq!(
            Settings::decode(&[0x06, 0x40]).unwrap_err().code,
            ErrorCode::H3_FRAME_ERROR
        );
        assert_eq!(Settings::decode(&[]).unwrap(), Settings::new());
    }

    #[test]
    fn frames_split_at_every_byte() {
        let mut wire = Vec::new();
        encode_frame(HEADERS, b"hdrs", &mut wire);
        encode_frame(0x21, b"grease payload", &mut wire); // reserved type: skipped
        encode_frame(DATA, b"hello", &mut wire);
        encode_frame(0x1234, b"", &mut wire); // unknown, empty
        encode_goaway(8, &mut wire);
        encode_frame(DATA, b"", &mut wire);
        let whole = read_all(&mut FrameDecoder::new(64), &wire).unwrap();
        assert_eq!(
            whole,
            [
                "Headers([104, 100, 114, 115])",
                "DataStart { len: 5 }",
                "Data([104, 101, 108, 108, 111])",
                "Goaway(8)",
                "DataStart { len: 0 }",
            ]
        );
        // Same stream one byte at a time: DATA arrives in 1-byte pieces.
        let mut dec = FrameDecoder::new(64);
        let mut items = Vec::new();
        for b in &wire {
            items.extend(read_all(&mut dec, std::slice::from_ref(b)).unwrap());
        }
        assert!(dec.is_idle());
        let data: Vec<_> = items.iter().filter(|i| i.starts_with("Data(")).collect();
        assert_eq!(data.len(), 5);
        assert_eq!(items.iter().filter(|i| i.starts_with("Headers")).count(), 1);
        assert_eq!(items.last().unwrap(), "DataStart { len: 0 }");
    }

    #[test]
    fn partial_frame_is_not_idle() {
        let mut wire = Vec::new();
        encode_frame(HEADERS, b"abcdef", &mut wire);
        let mut dec = FrameDecoder::new(64);
        assert!(read_all(&mut dec, &wire[..4]).unwrap().is_empty());
        assert!(!dec.is_idle());
        let mut dec = FrameDecoder::new(64);
        assert!(read_all(&mut dec, &[0x40]).unwrap().is_empty());
        assert!(!dec.is_idle());
    }

    #[test]
    fn size_limits() {
        let mut wire = Vec::new();
        encode_header(HEADERS, 65, &mut wire);
        let err = read_all(&mut FrameDecoder::new(64), &wire).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                ty: HEADERS,
                len: 65
            }
        );
        assert_eq!(
            err.into_connection_error().code,
            ErrorCode::H3_EXCESSIVE_LOAD
        );

        let mut wire = Vec::new();
        encode_header(SETTINGS, MAX_SETTINGS_LEN as u64 + 1, &mut wire);
        let err = read_all(&mut FrameDecoder::new(64), &wire).unwrap_err();
        assert_eq!(err.into_connection_error().code, ErrorCode::H3_FRAME_ERROR);

        // GOAWAY with trailing garbage.
        let mut wire = Vec::new();
        encode_frame(GOAWAY, &[0x04, 0x00], &mut wire);
        let err = read_all(&mut FrameDecoder::new(64), &wire).unwrap_err();
        assert_eq!(err.into_connection_error().code, ErrorCode::H3_FRAME_ERROR);

        // A huge DATA frame is streamed, not buffered.
        let mut wire = Vec::new();
        encode_header(DATA, 1 << 40, &mut wire);
        wire.extend_from_slice(&[7; 100]);
        let items = read_all(&mut FrameDecoder::new(64), &wire).unwrap();
        assert_eq!(items.len(), 2);
    }

    #[test]
    fn unexpected_and_signal_types() {
        let mut wire = Vec::new();
        encode_frame(0x06, b"12345678", &mut wire); // HTTP/2 PING
        encode_frame(PUSH_PROMISE, b"xx", &mut wire);
        varint::encode(WEBTRANSPORT_STREAM, &mut wire);
        let items = read_all(&mut FrameDecoder::new(64), &wire).unwrap();
        assert_eq!(
            items,
            ["Unexpected(6)", "Unexpected(5)", "WebTransportStream"]
        );
        assert!(is_grease(0x21) && is_grease(0x21 + 0x1f * 1000) && !is_grease(0x41));
    }
}
