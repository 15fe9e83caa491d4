//! `FrameDecoder::push` / `next_frame` and `decode_client` on arbitrary bytes, pushed in
//! arbitrary chunks.
//!
//! Input: `[n: u8][n chunk lengths: u8 each][stream bytes…]`. The stream is pushed in chunks of
//! those lengths (cycled; a length of 0 means one byte), and every frame is decoded.
//!
//! Checked: no panic; every frame has 1..=65536 bytes; the chunked decoder yields exactly the
//! frames (and the error) of a decoder that got the whole stream at once; the buffer never
//! holds more than one partial frame plus the last push; a decoded message survives
//! encode → decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mc::core::codec::{self, FrameDecoder, FrameError, HEADER_LEN, MAX_FRAME_LEN};

/// All frames of `stream` pushed in one go, and the error that ended them, if any.
fn reference(stream: &[u8]) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut d = FrameDecoder::new();
    d.push(stream);
    let mut frames = Vec::new();
    loop {
        match d.next_frame() {
            Ok(Some(f)) => frames.push(f.to_vec()),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (lens, stream) = rest.split_at(n);
    let (want_frames, want_err) = reference(stream);

    let mut d = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut err = None;
    let mut off = 0;
    let mut i = 0;
    'outer: while off < stream.len() {
        let len = lens
            .get(i % lens.len().max(1))
            .map_or(stream.len(), |l| usize::from(*l).max(1));
        i += 1;
        let end = (off + len).min(stream.len());
        d.push(&stream[off..end]);
        off = end;
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    assert!(
                        !f.is_empty() && f.len() <= MAX_FRAME_LEN,
                        "frame of {} bytes",
                        f.len()
                    );
                    frames.push(f.to_vec());
                }
                Ok(None) => break,
                Err(e) => {
                    err = Some(e);
                    break 'outer;
                }
            }
        }
        assert!(
            d.buffered() < HEADER_LEN + MAX_FRAME_LEN + 256,
            "decoder holds {} bytes",
            d.buffered()
        );
    }
    assert_eq!(frames, want_frames, "chunking changed the frames");
    assert_eq!(err, want_err, "chunking changed the error");

    for f in &frames {
        if let Ok(msg) = codec::decode_client(f) {
            let again = codec::encode(&msg);
            let len = u32::from_be_bytes([again[0], again[1], again[2], again[3]]) as usize;
            assert_eq!(
                len,
                again.len() - HEADER_LEN,
                "length prefix of our own frame"
            );
            let back = codec::decode_client(&again[HEADER_LEN..]).expect("own encoding decodes");
            assert_eq!(back, msg, "encode/decode round trip");
        }
    }
});
