//! QUIC variable-length integers (RFC 9000 §16): 1, 2, 4 or 8 bytes, the two high bits of the
//! first byte giving the length, values up to 2^62 - 1.

/// Largest value a varint can carry.
pub const MAX: u64 = (1 << 62) - 1;

/// Decodes one varint from the start of `buf`.
///
/// Returns the value and the number of bytes it took, or `None` when `buf` holds only part of it.
pub fn decode(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    let bytes = buf.get(..len)?;
    let mut v = u64::from(first & 0x3f);
    for b in &bytes[1..] {
        v = (v << 8) | u64::from(*b);
    }
    Some((v, len))
}

/// How many bytes `v` takes on the wire.
pub const fn encoded_len(v: u64) -> usize {
    if v < 1 << 6 {
        1
    } else if v < 1 << 14 {
        2
    } else if v < 1 << 30 {
        4
    } else {
        8
    }
}

/// Appends `v` in its shortest encoding.
///
/// Every value this crate encodes (stream ids, lengths, setting ids, error codes) is below
/// [`MAX`]; a larger one is a bug, caught in debug builds and cut to 62 bits otherwise.
pub fn encode(v: u64, out: &mut Vec<u8>) {
    debug_assert!(v <= MAX, "varint out of range: {v}");
    let v = v & MAX;
    match encoded_len(v) {
        1 => out.push(v as u8),
        2 => out.extend_from_slice(&(v as u16 | 0x4000).to_be_bytes()),
        4 => out.extend_from_slice(&(v as u32 | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// A varint read from a stream that may arrive in pieces (at most 8 bytes are held).
#[derive(Debug, Default, Clone)]
pub(crate) struct PartialVarint {
    buf: [u8; 8],
    len: usize,
}

impl PartialVarint {
    /// Takes bytes from the front of `input` until one varint is complete.
    ///
    /// Returns the value once complete; `input` is advanced past the bytes used.
    pub(crate) fn feed(&mut self, input: &mut &[u8]) -> Option<u64> {
        while let Some((&b, rest)) = input.split_first() {
            self.buf[self.len] = b;
            self.len += 1;
            *input = rest;
            if let Some((v, used)) = decode(&self.buf[..self.len]) {
                debug_assert_eq!(used, self.len);
                self.len = 0;
                return Some(v);
            }
        }
        None
    }

    /// True when no byte of a varint is pending.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode(v, &mut out);
        out
    }

    #[test]
    fn rfc9000_appendix_a_examples() {
        // RFC 9000 §A.1 sample encodings.
        let cases: [(&[u8], u64); 4] = [
            (
                &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c],
                151_288_809_941_952_652,
            ),
            (&[0x9d, 0x7f, 0x3e, 0x7d], 494_878_333),
            (&[0x7b, 0xbd], 15_293),
            (&[0x25], 37),
        ];
        for (bytes, v) in cases {
            assert_eq!(decode(bytes), Some((v, bytes.len())));
            assert_eq!(enc(v), bytes);
        }
        // A two-byte encoding of 37 is valid too (not minimal).
        assert_eq!(decode(&[0x40, 0x25]), Some((37, 2)));
    }

    #[test]
    fn boundaries_round_trip() {
        for v in [0, 63, 64, 16_383, 16_384, (1 << 30) - 1, 1 << 30, MAX] {
            let bytes = enc(v);
            assert_eq!(bytes.len(), encoded_len(v));
            assert_eq!(decode(&bytes), Some((v, bytes.len())));
        }
    }

    #[test]
    fn incomplete_input_is_none() {
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[0x40]), None);
        assert_eq!(decode(&[0x80, 0, 0]), None);
        assert_eq!(decode(&[0xc0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn partial_varint_across_chunks() {
        let bytes = enc(494_878_333);
        let mut p = PartialVarint::default();
        let mut a: &[u8] = &bytes[..1];
        assert_eq!(p.feed(&mut a), None);
        assert!(!p.is_empty());
        let mut rest: &[u8] = &[&bytes[1..], &[0xaa][..]].concat();
        assert_eq!(p.feed(&mut rest), Some(494_878_333));
        assert_eq!(rest, &[0xaa]);
        assert!(p.is_empty());
    }
}
