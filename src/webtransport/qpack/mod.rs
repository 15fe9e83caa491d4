//! QPACK field compression (RFC 9204) without a dynamic table.
//!
//! We advertise `SETTINGS_QPACK_MAX_TABLE_CAPACITY = 0` and `SETTINGS_QPACK_BLOCKED_STREAMS = 0`,
//! so a peer may only use the static table and literals: field sections always have a Required
//! Insert Count of 0 and never block. Decoding handles indexed static lines, literals with a
//! static name reference, literals with a literal name, and Huffman-coded strings. Encoding uses
//! the static table and plain (non-Huffman) literals.

pub mod huffman;
pub mod static_table;

use super::error::{ErrorCode, H3Error};

use static_table::STATIC_TABLE;

/// Per-field overhead counted in a field section's size (RFC 9114 §4.2.2).
pub const FIELD_OVERHEAD: usize = 32;

/// One decoded field line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Field name (lowercase in valid HTTP/3 messages; checked by the message layer).
    pub name: Vec<u8>,
    /// Field value.
    pub value: Vec<u8>,
}

impl Field {
    /// A field from string slices.
    pub fn new(name: &str, value: &str) -> Self {
        Self {
            name: name.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        }
    }
}

/// Why a field section could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QpackError {
    /// The section is malformed or refers to the dynamic table, which we never allow:
    /// connection error QPACK_DECOMPRESSION_FAILED.
    #[error("QPACK decompression failed: {0}")]
    Decompression(&'static str),
    /// The decoded section is larger than the limit (a stream-level problem).
    #[error("field section too large")]
    TooLarge,
}

impl QpackError {
    /// The connection error for [`QpackError::Decompression`].
    pub fn into_connection_error(self) -> H3Error {
        match self {
            Self::Decompression(reason) => {
                H3Error::new(ErrorCode::QPACK_DECOMPRESSION_FAILED, reason)
            }
            Self::TooLarge => H3Error::new(ErrorCode::H3_EXCESSIVE_LOAD, "field section too large"),
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Result<u8, QpackError> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or(QpackError::Decompression("truncated field line"))
    }

    /// An integer with an `n`-bit prefix (RFC 7541 §5.1), at most 2^62 - 1.
    fn int(&mut self, n: u8) -> Result<u64, QpackError> {
        const OVERFLOW: QpackError = QpackError::Decompression("integer overflow");
        let mask = ((1u16 << n) - 1) as u8;
        let mut v = u64::from(self.peek()? & mask);
        self.pos += 1;
        if v < u64::from(mask) {
            return Ok(v);
        }
        let mut shift = 0u32;
        loop {
            let b = self.peek()?;
            self.pos += 1;
            if shift > 56 {
                return Err(OVERFLOW);
            }
            v = v
                .checked_add(u64::from(b & 0x7f) << shift)
                .filter(|v| *v < 1 << 62)
                .ok_or(OVERFLOW)?;
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
    }

    /// A string literal whose Huffman flag is `h_mask` in the first byte and whose length has an
    /// `n`-bit prefix; at most `budget` bytes once decoded.
    fn string(&mut self, h_mask: u8, n: u8, budget: usize) -> Result<Vec<u8>, QpackError> {
        let huffman = self.peek()? & h_mask != 0;
        let len = self.int(n)?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| self.pos.checked_add(l))
            .filter(|end| *end <= self.buf.len())
            .ok_or(QpackError::Decompression("truncated string literal"))?;
        let raw = &self.buf[self.pos..end];
        self.pos = end;
        if huffman {
            huffman::decode(raw, budget).map_err(|e| match e {
                huffman::HuffmanError::TooLong => QpackError::TooLarge,
                _ => QpackError::Decompression("bad Huffman string"),
            })
        } else if raw.len() > budget {
            Err(QpackError::TooLarge)
        } else {
            Ok(raw.to_vec())
        }
    }
}

fn static_entry(index: u64) -> Result<(&'static str, &'static str), QpackError> {
    usize::try_from(index)
        .ok()
        .and_then(|i| STATIC_TABLE.get(i))
        .copied()
        .ok_or(QpackError::Decompression("static index out of range"))
}

const DYNAMIC: QpackError = QpackError::Decompression("dynamic table reference");

/// Decodes one encoded field section (the payload of a HEADERS frame).
///
/// `max_size` bounds the decoded size as RFC 9114 §4.2.2 counts it: the sum over fields of
/// name length + value length + 32.
pub fn decode_field_section(block: &[u8], max_size: usize) -> Result<Vec<Field>, QpackError> {
    let mut r = Reader { buf: block, pos: 0 };
    // Required Insert Count (8-bit prefix), then sign bit + Delta Base (7-bit prefix).
    if r.int(8)? != 0 {
        return Err(DYNAMIC);
    }
    r.int(7)?;
    let mut fields = Vec::new();
    let mut size = 0usize;
    while r.pos < block.len() {
        let budget = max_size.saturating_sub(size + FIELD_OVERHEAD);
        if size + FIELD_OVERHEAD > max_size {
            return Err(QpackError::TooLarge);
        }
        let first = r.peek()?;
        let field = if first & 0x80 != 0 {
            // 1T xxxxxx: indexed field line.
            if first & 0x40 == 0 {
                return Err(DYNAMIC);
            }
            let (name, value) = static_entry(r.int(6)?)?;
            Field::new(name, value)
        } else if first & 0x40 != 0 {
            // 01NT xxxx: literal field line with name reference.
            if first & 0x10 == 0 {
                return Err(DYNAMIC);
            }
            let (name, _) = static_entry(r.int(4)?)?;
            let value = r.string(0x80, 7, budget.saturating_sub(name.len()))?;
            Field {
                name: name.as_bytes().to_vec(),
                value,
            }
        } else if first & 0x20 != 0 {
            // 001N Hxxx: literal field line with literal name.
            let name = r.string(0x08, 3, budget)?;
            let value = r.string(0x80, 7, budget - name.len())?;
            Field { name, value }
        } else {
            // 0001xxxx (post-base index) and 0000Nxxx (post-base name reference).
            return Err(DYNAMIC);
        };
        size += field.name.len() + field.value.len() + FIELD_OVERHEAD;
        if size > max_size {
            return Err(QpackError::TooLarge);
        }
        fields.push(field);
    }
    Ok(fields)
}

fn encode_int(v: u64, n: u8, flags: u8, out: &mut Vec<u8>) {
    let mask = ((1u16 << n) - 1) as u8;
    if v < u64::from(mask) {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | mask);
    let mut rest = v - u64::from(mask);
    while rest >= 0x80 {
        out.push((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

fn encode_plain_string(s: &str, out: &mut Vec<u8>) {
    encode_int(s.len() as u64, 7, 0x00, out);
    out.extend_from_slice(s.as_bytes());
}

/// Appends an encoded field section for `fields` (names must already be lowercase).
///
/// Uses an indexed static line when the static table holds the exact pair, a literal with a
/// static name reference when it holds the name, and a literal with a literal name otherwise.
/// Strings are not Huffman-coded.
pub fn encode_field_section(fields: &[(&str, &str)], out: &mut Vec<u8>) {
    // Required Insert Count 0, Delta Base 0.
    out.extend_from_slice(&[0x00, 0x00]);
    for &(name, value) in fields {
        if let Some(i) = static_table::find_exact(name, value) {
            encode_int(i as u64, 6, 0xc0, out);
        } else if let Some(i) = static_table::find_name(name) {
            encode_int(i as u64, 4, 0x50, out);
            encode_plain_string(value, out);
        } else {
            encode_int(name.len() as u64, 3, 0x20, out);
            out.extend_from_slice(name.as_bytes());
            encode_plain_string(value, out);
        }
    }
}

/// Checks bytes of the peer's QPACK encoder stream (after the stream type).
///
/// With a table capacity of 0 the only acceptable instruction is "Set Dynamic Table Capacity"
/// to 0 (the single byte `0x20`); any insert or duplicate, or a capacity above 0, is
/// QPACK_ENCODER_STREAM_ERROR (RFC 9204 §4.3).
pub(crate) fn check_encoder_stream(data: &[u8]) -> Result<(), H3Error> {
    if data.iter().all(|&b| b == 0x20) {
        Ok(())
    } else {
        Err(H3Error::new(
            ErrorCode::QPACK_ENCODER_STREAM_ERROR,
            "dynamic table use beyond capacity 0",
        ))
    }
}

/// Reader for the peer's QPACK decoder stream (after the stream type).
///
/// We never reference the dynamic table, so Section Acknowledgment and Insert Count Increment
/// are errors (RFC 9204 §4.4); Stream Cancellation is allowed and ignored.
#[derive(Debug, Default)]
pub(crate) struct DecoderStreamReader {
    /// Continuation bytes left to read in a Stream Cancellation's stream id.
    in_int: Option<u8>,
}

impl DecoderStreamReader {
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<(), H3Error> {
        const ERR: H3Error = H3Error::new(
            ErrorCode::QPACK_DECODER_STREAM_ERROR,
            "unexpected QPACK decoder instruction",
        );
        for &b in data {
            match self.in_int {
                Some(0) => return Err(ERR),
                Some(left) => {
                    self.in_int = (b & 0x80 != 0).then_some(left - 1);
                }
                None if b & 0xc0 == 0x40 => {
                    // Stream Cancellation, 6-bit prefix: 0x3f means continuation bytes follow.
                    if b & 0x3f == 0x3f {
                        self.in_int = Some(9);
                    }
                }
                None => return Err(ERR),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn pairs(fields: &[Field]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|f| {
                (
                    String::from_utf8(f.name.clone()).unwrap(),
                    String::from_utf8(f.value.clone()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn rfc9204_b1_literal_with_name_reference() {
        // RFC 9204 Appendix B.1, stream 0: ":path: /index.html" via static name ref 1.
        let block = hex("0000 510b 2f69 6e64 6578 2e68 746d 6c");
        let fields = decode_field_section(&block, 4096).unwrap();
        assert_eq!(pairs(&fields), [(":path".into(), "/index.html".into())]);
    }

    #[test]
    fn rfc9204_b2_dynamic_references_are_refused() {
        // RFC 9204 Appendix B.2, stream 4: Required Insert Count 2, post-base indexed lines.
        let block = hex("0381 10 11");
        assert_eq!(decode_field_section(&block, 4096), Err(DYNAMIC));
        // B.4-style indexed dynamic line (1 0 xxxxxx) with RIC 0 is refused as well.
        assert_eq!(decode_field_section(&hex("0000 80"), 4096), Err(DYNAMIC));
        // Literal with dynamic name reference (01 N 0 xxxx).
        assert_eq!(
            decode_field_section(&hex("0000 4001 61"), 4096),
            Err(DYNAMIC)
        );
        // Literal with post-base name reference (0000 N xxx).
        assert_eq!(
            decode_field_section(&hex("0000 0001 61"), 4096),
            Err(DYNAMIC)
        );
    }

    #[test]
    fn chrome_style_extended_connect_with_huffman() {
        // What a browser sends: static refs, a Huffman-coded literal name (:protocol) and
        // Huffman values.
        let mut block = vec![0x00, 0x00];
        block.push(0xc0 | 15); // :method CONNECT
        block.push(0xc0 | 23); // :scheme https
        let huff = |s: &str| {
            let mut v = Vec::new();
            huffman::encode(s.as_bytes(), &mut v);
            v
        };
        // :authority (static name 0), Huffman value.
        let v = huff("localhost:4433");
        block.push(0x50);
        block.push(0x80 | v.len() as u8);
        block.extend_from_slice(&v);
        // :path (static name 1), Huffman value.
        let v = huff("/meetings/m-1");
        block.push(0x51);
        block.push(0x80 | v.len() as u8);
        block.extend_from_slice(&v);
        // :protocol as literal name, Huffman name (H bit 0x08, 3-bit length prefix).
        let n = huff(":protocol");
        assert!(n.len() >= 7);
        block.push(0x20 | 0x08 | 0x07);
        block.push(n.len() as u8 - 7);
        block.extend_from_slice(&n);
        let v = huff("webtransport");
        block.push(0x80 | v.len() as u8);
        block.extend_from_slice(&v);
        // origin (static name 90 needs a continuation byte: 15 + 75).
        block.push(0x5f);
        block.push(90 - 15);
        block.push(22);
        block.extend_from_slice(b"https://localhost:4433");
        let fields = decode_field_section(&block, 4096).unwrap();
        assert_eq!(
            pairs(&fields),
            [
                (":method".into(), "CONNECT".into()),
                (":scheme".into(), "https".into()),
                (":authority".into(), "localhost:4433".into()),
                (":path".into(), "/meetings/m-1".into()),
                (":protocol".into(), "webtransport".into()),
                ("origin".into(), "https://localhost:4433".into()),
            ]
        );
    }

    #[test]
    fn encode_round_trips_and_uses_static_table() {
        let fields = [
            (":status", "200"),
            ("sec-webtransport-http3-draft", "draft02"),
            (":status", "405"),
            ("origin", "https://example.com"),
        ];
        let mut out = Vec::new();
        encode_field_section(&fields, &mut out);
        assert_eq!(&out[..3], &[0x00, 0x00, 0xc0 | 25]);
        let back = decode_field_section(&out, 4096).unwrap();
        let want: Vec<Field> = fields.iter().map(|(n, v)| Field::new(n, v)).collect();
        assert_eq!(back, want);
    }

    #[test]
    fn prefix_integers() {
        // RFC 7541 C.1: 10 in a 5-bit prefix; 1337 in a 5-bit prefix; 42 in an 8-bit prefix.
        let mut out = Vec::new();
        encode_int(10, 5, 0, &mut out);
        assert_eq!(out, [0x0a]);
        out.clear();
        encode_int(1337, 5, 0, &mut out);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        let mut r = Reader { buf: &out, pos: 0 };
        assert_eq!(r.int(5), Ok(1337));
        out.clear();
        encode_int(42, 8, 0, &mut out);
        assert_eq!(out, [0x2a]);
        // Overlong continuation.
        let bad = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        let mut r = Reader { buf: &bad, pos: 0 };
        assert!(r.int(8).is_err());
    }

    #[test]
    fn malformed_sections() {
        for (block, why) in [
            (hex(""), "empty"),
            (hex("00"), "no delta base"),
            (hex("0000 ff"), "truncated index"),
            (hex("0000 ff7f"), "static index out of range"),
            (hex("0000 5105 2f"), "truncated literal"),
            (hex("0000 5181 00"), "Huffman padding of zeros"),
            (hex("0000 2561 6263"), "truncated literal name"),
        ] {
            assert!(
                matches!(
                    decode_field_section(&block, 4096),
                    Err(QpackError::Decompression(_))
                ),
                "{why}"
            );
        }
    }

    #[test]
    fn size_limit_counts_overhead_and_static_expansion() {
        // 100 indexed lines of "content-security-policy" (index 85): 2 bytes each on the wire,
        // ~90 bytes each decoded.
        let mut block = vec![0x00, 0x00];
        for _ in 0..100 {
            block.extend_from_slice(&[0xff, 85 - 63]);
        }
        assert_eq!(
            decode_field_section(&block, 4096),
            Err(QpackError::TooLarge)
        );
        assert_eq!(decode_field_section(&block, 100_000).unwrap().len(), 100);
        // A literal value longer than the limit.
        let mut out = Vec::new();
        let long = "x".repeat(5000);
        encode_field_section(&[("x-long", &long)], &mut out);
        assert_eq!(decode_field_section(&out, 4096), Err(QpackError::TooLarge));
    }

    #[test]
    fn qpack_streams() {
        assert!(check_encoder_stream(&[0x20, 0x20]).is_ok());
        assert_eq!(
            check_encoder_stream(&[0x3f, 0xe1, 0x1f]).unwrap_err().code,
            ErrorCode::QPACK_ENCODER_STREAM_ERROR
        );
        let mut r = DecoderStreamReader::default();
        // Stream Cancellation for stream 4, then for stream 100 (needs a continuation byte).
        r.feed(&[0x44, 0x7f]).unwrap();
        r.feed(&[100 - 63]).unwrap();
        // Section Acknowledgment.
        assert_eq!(
            r.feed(&[0x84]).unwrap_err().code,
            ErrorCode::QPACK_DECODER_STREAM_ERROR
        );
        // Insert Count Increment.
        let mut r = DecoderStreamReader::default();
        assert_eq!(
            r.feed(&[0x01]).unwrap_err().code,
            ErrorCode::QPACK_DECODER_STREAM_ERROR
        );
    }
}
