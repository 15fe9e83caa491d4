//! The HTTP/3 + WebTransport server state machine (`webtransport::H3Server`) fed arbitrary
//! stream data, resets and application decisions.
//!
//! Input: a sequence of records `[op: u8][stream: u8][len: u16 BE][len bytes]`:
//! `op % 8` = 0 data, 1 data with FIN, 2 reset, 3 accept the first requested session,
//! 4 reject it (status from the stream byte), 5 close it, 6 drain it, 7 GOAWAY. The stream byte
//! is the QUIC stream id. The seeds in `corpus/h3_server` are the client side of real
//! sessions (SETTINGS, QPACK streams, extended CONNECT, WebTransport stream with a join).
//!
//! Checked: no panic; an error is a connection error (the adapter closes), after which
//! nothing more is fed; events name client-initiated streams; session ids are bidi streams;
//! everything the server transmits goes to a stream it may write (its own unidirectional
//! streams or a client bidirectional one).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mc::webtransport::{is_bidi, is_client_initiated, H3Config, H3Event, H3Server};

fuzz_target!(|data: &[u8]| {
    let mut server = H3Server::new(H3Config::default());
    let mut requested: Vec<u64> = Vec::new();
    let mut rest = data;
    while rest.len() >= 4 {
        let (op, stream) = (rest[0], u64::from(rest[1]));
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]])).min(rest.len() - 4);
        let payload = &rest[4..4 + len];
        rest = &rest[4 + len..];
        let result = match op % 8 {
            0 => server.on_stream_data(stream, payload, false),
            1 => server.on_stream_data(stream, payload, true),
            2 => server.on_stream_reset(stream),
            3 => {
                if let Some(s) = requested.first() {
                    server.accept_session(*s);
                }
                Ok(())
            }
            4 => {
                if let Some(s) = requested.first() {
                    server.reject_session(*s, 400 + u16::from(rest.len() as u8 % 100));
                }
                Ok(())
            }
            5 => {
                if let Some(s) = requested.first() {
                    server.close_session(*s, u32::from(op), "bye");
                }
                Ok(())
            }
            6 => {
                if let Some(s) = requested.first() {
                    server.drain_session(*s);
                }
                Ok(())
            }
            _ => {
                server.send_goaway();
                Ok(())
            }
        };
        while let Some(tx) = server.poll_transmit() {
            let server_uni = !is_client_initiated(tx.stream_id) && !is_bidi(tx.stream_id);
            let client_bidi = is_client_initiated(tx.stream_id) && is_bidi(tx.stream_id);
            assert!(
                server_uni || client_bidi,
                "transmit on stream {} the server may not write",
                tx.stream_id
            );
        }
        while let Some(ev) = server.poll_event() {
            match ev {
                H3Event::SessionRequested { session_id, .. } => {
                    assert!(is_client_initiated(session_id) && is_bidi(session_id));
                    requested.push(session_id);
                }
                H3Event::StreamData {
                    session_id,
                    stream_id,
                    ..
                } => {
                    assert!(is_client_initiated(stream_id) && is_bidi(stream_id));
                    assert!(is_bidi(session_id));
                }
                H3Event::SessionClosed { session_id, .. } => {
                    requested.retain(|s| *s != session_id);
                }
                H3Event::ResetStream { .. } => {}
            }
        }
        if result.is_err() {
            // A connection error: the adapter closes the QUIC connection.
            return;
        }
    }
});
