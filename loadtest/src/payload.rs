//! The load generator's own message payload, on the hot path in both directions.
//!
//! Every `message` carries `{"t": <intended Unix ns>, "s": <sequence>, "from": <participant
//! index>}` plus an optional `"pad"` string. Building it as a `serde_json::Value` and reading it
//! back through `ServerMessage` costs several allocations per delivery, more than the QUIC work
//! of receiving it; so frames are written straight into the connection's output buffer and
//! delivered `message` frames are scanned for the three numbers without building anything.
//! Anything the scanner does not recognise falls back to `mc::core::codec` (see
//! [`crate::inbound`]); the tests check both directions against the codec.

use mc::core::codec::HEADER_LEN;

/// The three numbers of a delivered payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Intended send time, Unix nanoseconds.
    pub t: u64,
    /// The sender's sequence number.
    pub seq: u64,
    /// The sender's participant index.
    pub from: u64,
}

/// Appends one framed `{"type":"message","payload":{...}}` to `out` (length prefix included).
pub fn encode_message(out: &mut Vec<u8>, t: u64, seq: u64, from: u32, pad: usize) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.extend_from_slice(br#"{"type":"message","payload":{"t":"#);
    push_u64(out, t);
    out.extend_from_slice(br#","s":"#);
    push_u64(out, seq);
    out.extend_from_slice(br#","from":"#);
    push_u64(out, u64::from(from));
    if pad > 0 {
        out.extend_from_slice(br#","pad":""#);
        out.resize(out.len() + pad, b'x');
        out.push(b'"');
    }
    out.extend_from_slice(b"}}");
    let len = (out.len() - start - HEADER_LEN) as u32;
    out[start..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Reads `t`, `s` and `from` out of a server `message` frame body. `None` for any other
/// message, and for anything unusual (escapes in keys, nested values besides the payload,
/// missing fields): the caller then decodes the frame with the codec.
pub fn parse_delivery(body: &[u8]) -> Option<Delivery> {
    let mut r = Scan { b: body, i: 0 };
    r.expect(b'{')?;
    let (mut is_message, mut found) = (false, None);
    if r.peek_ws()? == b'}' {
        return None;
    }
    loop {
        let key = r.key()?;
        match key {
            b"type" => is_message = r.string()? == b"message",
            b"payload" => found = Some(r.payload()?),
            _ => r.skip_scalar()?,
        }
        match r.next_ws()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    if r.peek_ws().is_some() {
        return None; // trailing bytes
    }
    if is_message {
        found
    } else {
        None
    }
}

/// The index of the first `"` or `\\` in `b`, eight bytes at a time.
fn quote_or_backslash(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_le_bytes(w);
        if has_zero(x ^ (ONES * u64::from(b'"'))) | has_zero(x ^ (ONES * u64::from(b'\\'))) != 0 {
            break;
        }
        i += 8;
    }
    b[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\')
        .map(|at| i + at)
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    /// The next non-whitespace byte, not consumed.
    fn peek_ws(&mut self) -> Option<u8> {
        while let Some(&c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(c);
            }
            self.i += 1;
        }
        None
    }

    /// The next non-whitespace byte, consumed.
    fn next_ws(&mut self) -> Option<u8> {
        let c = self.peek_ws()?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next_ws()? == c).then_some(())
    }

    /// A string without escapes (its raw bytes).
    fn string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let rest = &self.b[self.i..];
        let end = quote_or_backslash(rest)?;
        if rest[end] == b'\\' {
            return None;
        }
        self.i += end + 1;
        Some(&rest[..end])
    }

    /// An object key and its colon.
    fn key(&mut self) -> Option<&'a [u8]> {
        let k = self.string()?;
        self.expect(b':')?;
        Some(k)
    }

    /// A string (escapes allowed), number, `true`, `false` or `null`.
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek_ws()? {
            b'"' => {
                self.i += 1;
                loop {
                    let rest = &self.b[self.i..];
                    let at = quote_or_backslash(rest)?;
                    if rest[at] == b'"' {
                        self.i += at + 1;
                        return Some(());
                    }
                    self.i += at + 2; // the backslash and the escaped byte
                    if self.i > self.b.len() {
                        return None;
                    }
                }
            }
            b'{' | b'[' => None,
            _ => {
                let rest = &self.b[self.i..];
                let n = rest
                    .iter()
                    .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                    .unwrap_or(rest.len());
                if n == 0 {
                    return None;
                }
                self.i += n;
                Some(())
            }
        }
    }

    /// A non-negative integer that fits `u64`.
    fn uint(&mut self) -> Option<u64> {
        self.peek_ws()?;
        let mut v: u64 = 0;
        let start = self.i;
        while let Some(&c) = self.b.get(self.i) {
            if !c.is_ascii_digit() {
                break;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.i += 1;
        }
        if self.i == start {
            return None;
        }
        // `1.5` or `1e3` is not an integer.
        match self.b.get(self.i) {
            Some(b'.' | b'e' | b'E') => None,
            _ => Some(v),
        }
    }

    /// The payload object: `t`, `s` and `from` required, other scalar members skipped.
    fn payload(&mut self) -> Option<Delivery> {
        self.expect(b'{')?;
        let (mut t, mut seq, mut from) = (None, None, None);
        if self.peek_ws()? != b'}' {
            loop {
                match self.key()? {
                    b"t" => t = Some(self.uint()?),
                    b"s" => seq = Some(self.uint()?),
                    b"from" => from = Some(self.uint()?),
                    _ => self.skip_scalar()?,
                }
                match self.next_ws()? {
                    b',' => {}
                    b'}' => break,
                    _ => return None,
                }
            }
        } else {
            self.i += 1;
        }
        Some(Delivery {
            t: t?,
            seq: seq?,
            from: from?,
        })
    }
}

#[cfg(test)]
mod tests {
    use mc::core::codec;
    use mc::core::protocol::{ClientMessage, ServerMessage};
    use serde_json::{json, Value};

    use super::*;

    fn slow_payload(t: u64, s: u64, from: u32, pad: usize) -> Value {
        let mut v = json!({"t": t, "s": s, "from": from});
        if pad > 0 {
            v["pad"] = Value::String("x".repeat(pad));
        }
        v
    }

    #[test]
    fn encoded_frames_decode_like_the_codec_frames() {
        for (t, s, from, pad) in [
            (0, 0, 0, 0),
            (1_790_000_000_123_456_789, 42, 7, 50),
            (u64::MAX, u64::MAX, u32::MAX, 1),
        ] {
            let mut out = b"prefix".to_vec();
            encode_message(&mut out, t, s, from, pad);
            let frame = &out[6..];
            let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(len, frame.len() - HEADER_LEN);
            let fast = codec::decode_client(&frame[HEADER_LEN..]).unwrap();
            let slow_msg = ClientMessage::Message {
                payload: slow_payload(t, s, from, pad),
                to: None,
            };
            let slow = codec::decode_client(&codec::encode(&slow_msg)[HEADER_LEN..]).unwrap();
            assert_eq!(fast, slow);
            assert_eq!(fast, slow_msg);
        }
    }

    #[test]
    fn parses_what_the_server_sends() {
        for pad in [0, 50] {
            let frame = codec::encode_server(&ServerMessage::Message {
                from: "p-123".into(),
                payload: slow_payload(1_790_000_000_123_456_789, 99, 12, pad),
            });
            assert_eq!(
                parse_delivery(&frame[HEADER_LEN..]),
                Some(Delivery {
                    t: 1_790_000_000_123_456_789,
                    seq: 99,
                    from: 12
                })
            );
        }
    }

    #[test]
    fn tolerates_order_whitespace_and_extra_members() {
        let body = br#" { "payload" : { "pad" : "a\"b\\" , "x": null, "from":3, "s" : 2 ,"t":1 } ,
            "from":"q\"x", "extra": true, "type" : "message" } "#;
        assert_eq!(
            parse_delivery(body),
            Some(Delivery {
                t: 1,
                seq: 2,
                from: 3
            })
        );
    }

    #[test]
    fn finds_quotes_and_backslashes_anywhere() {
        for len in 0..40 {
            for at in 0..len {
                for c in [b'"', b'\\'] {
                    let mut b = vec![b'x'; len];
                    b[at] = c;
                    if at + 3 < len {
                        b[at + 3] = b'"';
                    }
                    assert_eq!(quote_or_backslash(&b), Some(at), "{len} {at}");
                }
            }
            assert_eq!(quote_or_backslash(&vec![b'x'; len]), None);
        }
        // Bytes above 0x7f next to a match must not hide it or fake one.
        assert_eq!(quote_or_backslash(&[0xff, 0xa2, 0xdc, 0x22, 0x80]), Some(3));
        assert_eq!(quote_or_backslash(&[0xa2; 16]), None);
    }

    #[test]
    fn leaves_everything_else_to_the_codec() {
        let pong = codec::encode_server(&ServerMessage::Pong { id: 1 });
        assert_eq!(parse_delivery(&pong[HEADER_LEN..]), None);
        for body in [
            &br#"{"type":"message","from":"p","payload":{"t":1,"s":2}}"#[..],
            br#"{"type":"message","from":"p","payload":{"t":1,"s":2,"from":-3}}"#,
            br#"{"type":"message","from":"p","payload":{"t":1.5,"s":2,"from":3}}"#,
            br#"{"type":"message","from":"p","payload":{"t":99999999999999999999,"s":2,"from":3}}"#,
            br#"{"type":"message","from":"p","payload":{"t":1,"s":2,"from":3,"n":{}}}"#,
            br#"{"type":"message","from":"p","payload":"text"}"#,
            br#"{"type":"pong","payload":{"t":1,"s":2,"from":3}}"#,
            br#"{"payload":{"t":1,"s":2,"from":3}}"#,
            br#"{"type":"message","payload":{"t":1,"s":2,"from":3}} trailing"#,
            br#"{"type":"message","payload":{"t":1,"s":2,"from":3}"#,
            br#"{"type":"mess\u0061ge","payload":{"t":1,"s":2,"from":3}}"#,
            b"",
            b"{}",
            b"{\"type\":\"message\",\"from\":\"ends with a backslash\\",
            b"{\"type\":\"message\",\"payload\":{\"t\":1,\"s\":2,\"from\":3,\"pad\":\"unterminated}}",
        ] {
            assert_eq!(parse_delivery(body), None, "{}", String::from_utf8_lossy(body));
        }
    }
}
