//! The HPACK/QPACK Huffman code (RFC 7541 Appendix B; RFC 9204 §4.1.2 reuses it).
//!
//! The code is canonical: codes of one length are consecutive and shorter codes sort first, so
//! decoding needs only, per length, the first code and where its symbols start in the
//! length-sorted symbol list.

use std::sync::OnceLock;

/// `(code, bit length)` for symbols 0..=255 and EOS (256), from RFC 7541 Appendix B.
#[rustfmt::skip]
const CODES: [(u32, u8); 257] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28), // 0
    (0xfffffe4, 28), (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28), // 4
    (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28), // 8
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28), // 12
    (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28), // 16
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28), // 20
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28), // 24
    (0xffffff8, 28), (0xffffff9, 28), (0xffffffa, 28), (0xffffffb, 28), // 28
    (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12), // 32
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11), // 36
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11), // 40
    (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6), // 44
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6), // 48
    (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6), // 52
    (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8), // 56
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10), // 60
    (0x1ffa, 13), (0x21, 6), (0x5d, 7), (0x5e, 7), // 64
    (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7), // 68
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7), // 72
    (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7), // 76
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7), // 80
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7), // 84
    (0xfc, 8), (0x73, 7), (0xfd, 8), (0x1ffb, 13), // 88
    (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6), // 92
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5), // 96
    (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6), // 100
    (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7), // 104
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5), // 108
    (0x2b, 6), (0x76, 7), (0x2c, 6), (0x8, 5), // 112
    (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7), // 116
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15), // 120
    (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28), // 124
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20), // 128
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23), // 132
    (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23), // 136
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23), // 140
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23), // 144
    (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23), // 148
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23), // 152
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24), // 156
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22), // 160
    (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21), // 164
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24), // 168
    (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23), // 172
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21), // 176
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23), // 180
    (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22), // 184
    (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23), // 188
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19), // 192
    (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25), // 196
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27), // 200
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25), // 204
    (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27), // 208
    (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24), // 212
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26), // 216
    (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27), // 220
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21), // 224
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23), // 228
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25), // 232
    (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23), // 236
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26), // 240
    (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27), // 244
    (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27), // 248
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26), // 252
    (0x3fffffff, 30), // 256
];

const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// Why a Huffman string could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HuffmanError {
    /// The EOS symbol appeared inside the string.
    Eos,
    /// The padding is longer than 7 bits or not a prefix of EOS (all ones).
    Padding,
    /// The decoded string would exceed the caller's limit.
    TooLong,
}

struct Table {
    /// Symbols sorted by (code length, symbol).
    symbols: Vec<u16>,
    /// Per length: first code of that length, number of codes, index of its first symbol.
    first_code: [u32; MAX_LEN + 1],
    count: [u32; MAX_LEN + 1],
    first_index: [u32; MAX_LEN + 1],
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut symbols: Vec<u16> = (0..=EOS).collect();
        symbols.sort_by_key(|&s| (CODES[usize::from(s)].1, s));
        let mut t = Table {
            symbols,
            first_code: [0; MAX_LEN + 1],
            count: [0; MAX_LEN + 1],
            first_index: [0; MAX_LEN + 1],
        };
        for (i, &s) in t.symbols.iter().enumerate() {
            let (code, len) = CODES[usize::from(s)];
            let len = usize::from(len);
            if t.count[len] == 0 {
                t.first_code[len] = code;
                t.first_index[len] = i as u32;
            }
            t.count[len] += 1;
        }
        t
    })
}

/// Decodes a Huffman-coded string, refusing output longer than `max_len`.
pub fn decode(input: &[u8], max_len: usize) -> Result<Vec<u8>, HuffmanError> {
    let t = table();
    let mut out = Vec::with_capacity((input.len() * 8 / 5).min(max_len));
    let mut code: u32 = 0;
    let mut len: usize = 0;
    for byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let offset = code.wrapping_sub(t.first_code[len]);
            if t.count[len] > 0 && code >= t.first_code[len] && offset < t.count[len] {
                let sym = t.symbols[(t.first_index[len] + offset) as usize];
                if sym == EOS {
                    return Err(HuffmanError::Eos);
                }
                if out.len() == max_len {
                    return Err(HuffmanError::TooLong);
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
            } else if len == MAX_LEN {
                // Every 30-bit pattern is a code, so this is unreachable with a valid table.
                return Err(HuffmanError::Padding);
            }
        }
    }
    // Leftover bits must be fewer than 8 and all ones (the most significant bits of EOS).
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HuffmanError::Padding);
    }
    Ok(out)
}

/// Huffman-encodes `input`, padding the last byte with ones.
pub fn encode(input: &[u8], out: &mut Vec<u8>) {
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &b in input {
        let (code, len) = CODES[usize::from(b)];
        acc = (acc << len) | u64::from(code);
        bits += u32::from(len);
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1u64 << bits) - 1;
    }
    if bits > 0 {
        let pad = 8 - bits;
        out.push(((acc << pad) | ((1u64 << pad) - 1)) as u8);
    }
}

/// Length in bytes of the Huffman encoding of `input`.
pub fn encoded_len(input: &[u8]) -> usize {
    let bits: usize = input
        .iter()
        .map(|&b| usize::from(CODES[usize::from(b)].1))
        .sum();
    bits.div_ceil(8)
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

    /// RFC 7541 Appendix C.4 and C.6 Huffman-coded strings.
    const VECTORS: [(&str, &str); 11] = [
        ("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff"),
        ("no-cache", "a8eb 1064 9cbf"),
        ("custom-key", "25a8 49e9 5ba9 7d7f"),
        ("custom-value", "25a8 49e9 5bb8 e8b4 bf"),
        ("302", "6402"),
        ("private", "aec3 771a 4b"),
        ("Mon, 21 Oct 2013 20:13:21 GMT", "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff"),
        ("https://www.example.com", "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3"),
        ("307", "640e ff"),
        ("gzip", "9bd9 ab"),
        (
            "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
            "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ),
    ];

    #[test]
    fn rfc7541_appendix_c_vectors() {
        for (text, coded) in VECTORS {
            let coded = hex(coded);
            assert_eq!(decode(&coded, 1024).unwrap(), text.as_bytes(), "{text}");
            let mut enc = Vec::new();
            encode(text.as_bytes(), &mut enc);
            assert_eq!(enc, coded, "{text}");
            assert_eq!(encoded_len(text.as_bytes()), coded.len());
        }
    }

    #[test]
    fn table_is_canonical_and_complete() {
        let t = table();
        // Kraft equality: a complete prefix code.
        let kraft: f64 = CODES.iter().map(|&(_, l)| 2f64.powi(-i32::from(l))).sum();
        assert!((kraft - 1.0).abs() < 1e-12);
        let mut prev: Option<(u32, u8)> = None;
        for &s in &t.symbols {
            let (code, len) = CODES[usize::from(s)];
            if let Some((pc, pl)) = prev {
                assert_eq!(code, (pc + 1) << (len - pl), "symbol {s}");
            }
            prev = Some((code, len));
        }
    }

    #[test]
    fn all_bytes_round_trip() {
        let all: Vec<u8> = (0..=255).collect();
        let mut enc = Vec::new();
        encode(&all, &mut enc);
        assert_eq!(decode(&enc, 256).unwrap(), all);
        assert_eq!(decode(&enc, 255), Err(HuffmanError::TooLong));
    }

    #[test]
    fn bad_padding_and_eos() {
        // "0" is 00000 (5 bits); padding with zeros instead of ones.
        assert_eq!(decode(&[0x00], 10), Err(HuffmanError::Padding));
        // A full byte of padding (8 ones) after a complete symbol.
        assert_eq!(decode(&[0x07, 0xff], 10), Err(HuffmanError::Padding));
        // EOS (30 ones) encoded explicitly.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], 10),
            Err(HuffmanError::Eos)
        );
        assert_eq!(decode(&[], 10).unwrap(), b"");
    }
}
