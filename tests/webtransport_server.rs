//! `H3Server` against hand-built client bytes: every refusal path a peer can trigger ends in a
//! proper HTTP/3 answer, a stream reset, or a connection error with the right code — never a panic.

use mc::webtransport::{
    frame::{self, setting, FrameDecoder, FrameItem, Settings},
    qpack, varint, ErrorCode, H3Config, H3Error, H3Event, H3Server, Transmit,
};

const CONTROL: u64 = 2;
const ENCODER: u64 = 6;

fn control_stream(extra: &[(u64, u64)]) -> Vec<u8> {
    let mut s = Settings::new();
    s.set(setting::H3_DATAGRAM, 1)
        .set(setting::ENABLE_WEBTRANSPORT, 1);
    for &(id, v) in extra {
        s.set(id, v);
    }
    let mut out = vec![0x00];
    s.encode(&mut out);
    out
}

/// A server that has seen the client's control stream, with its own opening transmits drained.
fn ready(cfg: H3Config) -> H3Server {
    let mut server = H3Server::new(cfg);
    while server.poll_transmit().is_some() {}
    server
        .on_stream_data(CONTROL, &control_stream(&[]), false)
        .unwrap();
    server
}

fn headers_frame(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    qpack::encode_field_section(fields, &mut block);
    let mut out = Vec::new();
    frame::encode_frame(frame::HEADERS, &block, &mut out);
    out
}

fn wt_connect(path: &str) -> Vec<u8> {
    headers_frame(&[
        (":method", "CONNECT"),
        (":protocol", "webtransport"),
        (":scheme", "https"),
        (":authority", "localhost:4433"),
        (":path", path),
    ])
}

fn wt_stream_prefix(session: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint::encode(frame::WEBTRANSPORT_STREAM, &mut out);
    varint::encode(session, &mut out);
    out
}

fn events(server: &mut H3Server) -> Vec<H3Event> {
    std::iter::from_fn(|| server.poll_event()).collect()
}

fn transmits(server: &mut H3Server) -> Vec<Transmit> {
    std::iter::from_fn(|| server.poll_transmit()).collect()
}

/// The `:status` of the response the server queued on `stream`, and whether it ended the stream.
fn response(server: &mut H3Server, stream: u64) -> (u16, bool) {
    let ts: Vec<Transmit> = transmits(server)
        .into_iter()
        .filter(|t| t.stream_id == stream)
        .collect();
    let bytes: Vec<u8> = ts.iter().flat_map(|t| t.data.clone()).collect();
    let fin = ts.last().is_some_and(|t| t.fin);
    let mut dec = FrameDecoder::new(4096);
    let mut input = &bytes[..];
    let Some(FrameItem::Headers(block)) = dec.next(&mut input).unwrap() else {
        panic!("no HEADERS on stream {stream}");
    };
    let fields = qpack::decode_field_section(&block, 4096).unwrap();
    assert_eq!(fields[0].name, b":status");
    let status = std::str::from_utf8(&fields[0].value)
        .unwrap()
        .parse()
        .unwrap();
    (status, fin)
}

fn reset(stream_id: u64, code: ErrorCode) -> H3Event {
    H3Event::ResetStream { stream_id, code }
}

fn conn_error(result: Result<(), H3Error>) -> ErrorCode {
    result.expect_err("expected a connection error").code
}

// ---- control stream -------------------------------------------------------------------------

#[test]
fn control_stream_must_start_with_settings() {
    let mut server = H3Server::new(H3Config::default());
    let mut bytes = vec![0x00];
    frame::encode_goaway(0, &mut bytes);
    assert_eq!(
        conn_error(server.on_stream_data(CONTROL, &bytes, false)),
        ErrorCode::H3_MISSING_SETTINGS
    );
}

#[test]
fn second_settings_frame_is_unexpected() {
    let mut server = ready(H3Config::default());
    let mut again = Vec::new();
    Settings::new().encode(&mut again);
    assert_eq!(
        conn_error(server.on_stream_data(CONTROL, &again, false)),
        ErrorCode::H3_FRAME_UNEXPECTED
    );
}

#[test]
fn request_frames_on_control_stream_are_unexpected() {
    for ty in [
        frame::DATA,
        frame::HEADERS,
        frame::PUSH_PROMISE,
        0x02,
        0x06,
        0x08,
        0x09,
    ] {
        let mut server = ready(H3Config::default());
        let mut bytes = Vec::new();
        frame::encode_frame(ty, b"xy", &mut bytes);
        assert_eq!(
            conn_error(server.on_stream_data(CONTROL, &bytes, false)),
            ErrorCode::H3_FRAME_UNEXPECTED,
            "type {ty:#x}"
        );
    }
}

#[test]
fn unknown_and_grease_frames_on_control_stream_are_skipped() {
    let mut server = ready(H3Config::default());
    let mut bytes = Vec::new();
    frame::encode_frame(0x21 + 0x1f * 3, b"grease", &mut bytes);
    frame::encode_frame(0xabcd, &[0; 300], &mut bytes);
    frame::encode_frame(frame::MAX_PUSH_ID, &[0x05], &mut bytes);
    frame::encode_goaway(0, &mut bytes);
    server.on_stream_data(CONTROL, &bytes, false).unwrap();
    assert!(events(&mut server).is_empty());
}

#[test]
fn garbage_on_control_stream_is_a_connection_error() {
    // Truncated SETTINGS payload (an id without its value).
    let mut server = H3Server::new(H3Config::default());
    let mut bytes = vec![0x00];
    frame::encode_frame(frame::SETTINGS, &[0x06], &mut bytes);
    assert_eq!(
        conn_error(server.on_stream_data(CONTROL, &bytes, false)),
        ErrorCode::H3_FRAME_ERROR
    );
    // HTTP/2-only setting.
    let mut server = H3Server::new(H3Config::default());
    let mut bytes = vec![0x00];
    frame::encode_frame(frame::SETTINGS, &[0x02, 0x01], &mut bytes);
    assert_eq!(
        conn_error(server.on_stream_data(CONTROL, &bytes, false)),
        ErrorCode::H3_SETTINGS_ERROR
    );
    // Duplicate setting.
    let mut server = H3Server::new(H3Config::default());
    let mut bytes = vec![0x00];
    frame::encode_frame(frame::SETTINGS, &[0x06, 0x01, 0x06, 0x02], &mut bytes);
    assert_eq!(
        conn_error(server.on_stream_data(CONTROL, &bytes, false)),
        ErrorCode::H3_SETTINGS_ERROR
    );
    // GOAWAY whose payload is not one varint.
    let mut server = ready(H3Config::default());
    let mut bytes = Vec::new();
    frame::encode_frame(frame::GOAWAY, &[0x40], &mut bytes);
    assert_eq!(
        conn_error(server.on_stream_data(CONTROL, &bytes, false)),
        ErrorCode::H3_FRAME_ERROR
    );
    // A WEBTRANSPORT_STREAM signal on the control stream.
    let mut server = ready(H3Config::default());
    assert_eq!(
        conn_error(server.on_stream_data(CONTROL, &[0x40, 0x41], false)),
        ErrorCode::H3_FRAME_ERROR
    );
}

#[test]
fn settings_split_across_reads() {
    let mut server = H3Server::new(H3Config::default());
    let bytes = control_stream(&[(setting::WEBTRANSPORT_MAX_SESSIONS, 1)]);
    for b in &bytes {
        server
            .on_stream_data(CONTROL, std::slice::from_ref(b), false)
            .unwrap();
    }
    let s = server.peer_settings().unwrap();
    assert_eq!(s.get(setting::WEBTRANSPORT_MAX_SESSIONS), Some(1));
}

#[test]
fn critical_streams_may_not_close() {
    let mut server = ready(H3Config::default());
    assert_eq!(
        conn_error(server.on_stream_data(CONTROL, &[], true)),
        ErrorCode::H3_CLOSED_CRITICAL_STREAM
    );
    let mut server = ready(H3Config::default());
    assert_eq!(
        conn_error(server.on_stream_reset(CONTROL)),
        ErrorCode::H3_CLOSED_CRITICAL_STREAM
    );
    let mut server = ready(H3Config::default());
    server.on_stream_data(ENCODER, &[0x02], false).unwrap();
    assert_eq!(
        conn_error(server.on_stream_reset(ENCODER)),
        ErrorCode::H3_CLOSED_CRITICAL_STREAM
    );
}

#[test]
fn duplicate_control_or_qpack_streams() {
    let mut server = ready(H3Config::default());
    assert_eq!(
        conn_error(server.on_stream_data(10, &control_stream(&[]), false)),
        ErrorCode::H3_STREAM_CREATION_ERROR
    );
    let mut server = ready(H3Config::default());
    server.on_stream_data(6, &[0x03], false).unwrap();
    assert_eq!(
        conn_error(server.on_stream_data(10, &[0x03], false)),
        ErrorCode::H3_STREAM_CREATION_ERROR
    );
}

#[test]
fn push_stream_from_client_is_refused() {
    let mut server = ready(H3Config::default());
    assert_eq!(
        conn_error(server.on_stream_data(6, &[0x01, 0x00], false)),
        ErrorCode::H3_STREAM_CREATION_ERROR
    );
}

#[test]
fn unknown_uni_streams_are_stopped_not_fatal() {
    let mut server = ready(H3Config::default());
    let mut grease = Vec::new();
    varint::encode(0x21 + 0x1f * 9, &mut grease);
    grease.extend_from_slice(b"anything");
    server.on_stream_data(6, &grease, false).unwrap();
    let mut wt_uni = Vec::new();
    varint::encode(0x54, &mut wt_uni);
    varint::encode(0, &mut wt_uni);
    server.on_stream_data(10, &wt_uni, false).unwrap();
    assert_eq!(
        events(&mut server),
        [
            reset(6, ErrorCode::H3_STREAM_CREATION_ERROR),
            reset(10, ErrorCode::webtransport_application(0))
        ]
    );
    // More bytes on the stopped stream are dropped quietly.
    server.on_stream_data(6, b"more", true).unwrap();
    assert!(events(&mut server).is_empty());
}

#[test]
fn qpack_stream_misuse() {
    // An insert on the encoder stream exceeds the table capacity of 0.
    let mut server = ready(H3Config::default());
    assert_eq!(
        conn_error(server.on_stream_data(ENCODER, &[0x02, 0xc0 | 17, 0x01, b'x'], false)),
        ErrorCode::QPACK_ENCODER_STREAM_ERROR
    );
    // Setting capacity 0 is fine.
    let mut server = ready(H3Config::default());
    server
        .on_stream_data(ENCODER, &[0x02, 0x20], false)
        .unwrap();
    // A Section Acknowledgment on the decoder stream for a section we never sent.
    let mut server = ready(H3Config::default());
    assert_eq!(
        conn_error(server.on_stream_data(10, &[0x03, 0x80], false)),
        ErrorCode::QPACK_DECODER_STREAM_ERROR
    );
}

// ---- requests -------------------------------------------------------------------------------

#[test]
fn get_to_meeting_path_is_405_and_elsewhere_404() {
    let mut server = ready(H3Config::default());
    for (stream, path, want) in [
        (0, "/meetings/m-1", 405),
        (4, "/", 404),
        (8, "/meetings/", 404),
    ] {
        let req = headers_frame(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", path),
        ]);
        server.on_stream_data(stream, &req, true).unwrap();
        assert_eq!(response(&mut server, stream), (want, true), "{path}");
    }
    assert!(events(&mut server).is_empty());
}

#[test]
fn other_methods_are_answered() {
    let mut server = ready(H3Config::default());
    let post = headers_frame(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", "/meetings/m-1"),
    ]);
    let mut bytes = post;
    frame::encode_frame(frame::DATA, b"body", &mut bytes);
    server.on_stream_data(0, &bytes, true).unwrap();
    assert_eq!(response(&mut server, 0), (405, true));
    // Plain CONNECT (a proxy request) to a server that is no proxy.
    let connect = headers_frame(&[(":method", "CONNECT"), (":authority", "example.com:443")]);
    server.on_stream_data(4, &connect, false).unwrap();
    assert_eq!(response(&mut server, 4), (405, true));
}

#[test]
fn connect_without_protocol_but_with_path_is_malformed() {
    let mut server = ready(H3Config::default());
    let req = headers_frame(&[
        (":method", "CONNECT"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", "/meetings/m-1"),
    ]);
    server.on_stream_data(0, &req, false).unwrap();
    assert_eq!(events(&mut server), [reset(0, ErrorCode::H3_MESSAGE_ERROR)]);
    assert!(transmits(&mut server).is_empty());
    // The rest of the stream is dropped.
    server.on_stream_data(0, b"junk", true).unwrap();
    assert!(events(&mut server).is_empty());
}

#[test]
fn wrong_path_unknown_protocol_and_bad_origin() {
    let cfg = H3Config {
        allowed_origins: Some(vec!["https://app.example".into()]),
        ..H3Config::default()
    };
    let mut server = ready(cfg);
    server
        .on_stream_data(0, &wt_connect("/rooms/x"), false)
        .unwrap();
    assert_eq!(response(&mut server, 0), (404, true));
    let mut req = wt_connect("/meetings/m-1");
    let mut block = Vec::new();
    qpack::encode_field_section(
        &[
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", "/meetings/m-1"),
        ],
        &mut block,
    );
    let mut ws = Vec::new();
    frame::encode_frame(frame::HEADERS, &block, &mut ws);
    server.on_stream_data(4, &ws, false).unwrap();
    assert_eq!(response(&mut server, 4), (501, true));
    let mut block = Vec::new();
    qpack::encode_field_section(
        &[
            (":method", "CONNECT"),
            (":protocol", "webtransport"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", "/meetings/m-1"),
            ("origin", "https://evil.example"),
        ],
        &mut block,
    );
    req.clear();
    frame::encode_frame(frame::HEADERS, &block, &mut req);
    server.on_stream_data(8, &req, false).unwrap();
    assert_eq!(response(&mut server, 8), (403, true));
    assert!(events(&mut server).is_empty());
}

#[test]
fn malformed_headers_reset_the_stream() {
    let mut server = ready(H3Config::default());
    let req = headers_frame(&[
        (":method", "CONNECT"),
        (":protocol", "webtransport"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", "/meetings/m-1"),
        ("X-Upper", "1"),
    ]);
    server.on_stream_data(0, &req, false).unwrap();
    assert_eq!(events(&mut server), [reset(0, ErrorCode::H3_MESSAGE_ERROR)]);
}

#[test]
fn request_stream_frame_errors() {
    // DATA before HEADERS.
    let mut server = ready(H3Config::default());
    let mut bytes = Vec::new();
    frame::encode_frame(frame::DATA, b"x", &mut bytes);
    assert_eq!(
        conn_error(server.on_stream_data(0, &bytes, false)),
        ErrorCode::H3_FRAME_UNEXPECTED
    );
    // SETTINGS, GOAWAY, MAX_PUSH_ID on a request stream.
    for ty in [
        frame::SETTINGS,
        frame::GOAWAY,
        frame::MAX_PUSH_ID,
        frame::CANCEL_PUSH,
    ] {
        let mut server = ready(H3Config::default());
        let mut bytes = Vec::new();
        frame::encode_frame(ty, &[0x00], &mut bytes);
        assert_eq!(
            conn_error(server.on_stream_data(0, &bytes, false)),
            ErrorCode::H3_FRAME_UNEXPECTED,
            "type {ty:#x}"
        );
    }
    // The WebTransport signal after a request started.
    let mut server = ready(H3Config::default());
    let mut bytes = wt_connect("/meetings/m-1");
    bytes.extend_from_slice(&wt_stream_prefix(0));
    assert_eq!(
        conn_error(server.on_stream_data(0, &bytes, false)),
        ErrorCode::H3_FRAME_ERROR
    );
    // A stream that ends inside a frame.
    let mut server = ready(H3Config::default());
    let req = wt_connect("/meetings/m-1");
    assert_eq!(
        conn_error(server.on_stream_data(0, &req[..req.len() - 2], true)),
        ErrorCode::H3_FRAME_ERROR
    );
}

#[test]
fn dynamic_table_reference_fails_decompression() {
    let mut server = ready(H3Config::default());
    let mut bytes = Vec::new();
    // Required Insert Count 1: the table capacity we allow is 0.
    frame::encode_frame(frame::HEADERS, &[0x02, 0x00, 0x80], &mut bytes);
    assert_eq!(
        conn_error(server.on_stream_data(0, &bytes, false)),
        ErrorCode::QPACK_DECOMPRESSION_FAILED
    );
}

#[test]
fn oversized_headers_are_refused() {
    let mut server = ready(H3Config::default());
    let mut bytes = Vec::new();
    frame::encode_header(frame::HEADERS, 16 * 1024 + 1, &mut bytes);
    bytes.extend_from_slice(&[0; 100]);
    server.on_stream_data(0, &bytes, false).unwrap();
    assert_eq!(
        events(&mut server),
        [reset(0, ErrorCode::H3_EXCESSIVE_LOAD)]
    );
    // A small frame that decodes to more than the limit (static-table expansion).
    let mut server = ready(H3Config::default());
    let mut block = vec![0x00, 0x00];
    for _ in 0..400 {
        block.extend_from_slice(&[0xff, 85 - 63]);
    }
    let mut bytes = Vec::new();
    frame::encode_frame(frame::HEADERS, &block, &mut bytes);
    server.on_stream_data(0, &bytes, false).unwrap();
    assert_eq!(
        events(&mut server),
        [reset(0, ErrorCode::H3_EXCESSIVE_LOAD)]
    );
}

#[test]
fn stream_ending_without_headers_is_incomplete() {
    let mut server = ready(H3Config::default());
    let mut bytes = Vec::new();
    frame::encode_frame(0x21, b"", &mut bytes);
    server.on_stream_data(0, &bytes, true).unwrap();
    assert_eq!(
        events(&mut server),
        [reset(0, ErrorCode::H3_REQUEST_INCOMPLETE)]
    );
}

#[test]
fn too_many_concurrent_requests() {
    let mut server = ready(H3Config {
        max_requests: 2,
        max_sessions: 5,
        ..H3Config::default()
    });
    for id in [0, 4] {
        server
            .on_stream_data(id, &wt_connect("/meetings/m-1"), false)
            .unwrap();
    }
    server
        .on_stream_data(8, &wt_connect("/meetings/m-1"), false)
        .unwrap();
    let evs = events(&mut server);
    assert_eq!(evs.len(), 3);
    assert_eq!(evs[2], reset(8, ErrorCode::H3_REQUEST_REJECTED));
}

// ---- WebTransport streams -------------------------------------------------------------------

fn requested(server: &mut H3Server, session: u64) {
    server
        .on_stream_data(session, &wt_connect("/meetings/m-1"), false)
        .unwrap();
    let evs = events(server);
    assert!(
        matches!(&evs[..], [H3Event::SessionRequested { session_id, .. }] if *session_id == session),
        "{evs:?}"
    );
}

#[test]
fn session_id_that_is_not_a_request_stream_is_an_id_error() {
    for bad in [1, 2, 3, 6] {
        let mut server = ready(H3Config::default());
        assert_eq!(
            conn_error(server.on_stream_data(4, &wt_stream_prefix(bad), false)),
            ErrorCode::H3_ID_ERROR,
            "session {bad}"
        );
    }
}

#[test]
fn stream_for_rejected_or_non_webtransport_request_is_refused() {
    let mut server = ready(H3Config::default());
    requested(&mut server, 0);
    server
        .on_stream_data(4, &wt_stream_prefix(0), false)
        .unwrap();
    assert!(server.reject_session(0, 404));
    assert_eq!(
        events(&mut server),
        [reset(4, ErrorCode::WEBTRANSPORT_BUFFERED_STREAM_REJECTED)]
    );
    // A stream that names the rejected session afterwards.
    server
        .on_stream_data(8, &wt_stream_prefix(0), false)
        .unwrap();
    assert_eq!(
        events(&mut server),
        [reset(8, ErrorCode::WEBTRANSPORT_BUFFERED_STREAM_REJECTED)]
    );
    // A stream that names a GET request.
    let get = headers_frame(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "h"),
        (":path", "/"),
    ]);
    server.on_stream_data(12, &get, false).unwrap();
    server
        .on_stream_data(16, &wt_stream_prefix(12), false)
        .unwrap();
    assert_eq!(
        events(&mut server),
        [reset(16, ErrorCode::WEBTRANSPORT_BUFFERED_STREAM_REJECTED)]
    );
}

#[test]
fn stream_for_closed_session_is_gone() {
    let mut server = ready(H3Config::default());
    requested(&mut server, 0);
    assert!(server.accept_session(0));
    assert!(server.close_session(0, 0, "done"));
    server.on_stream_data(0, &[], true).unwrap();
    assert!(events(&mut server).is_empty());
    server
        .on_stream_data(4, &wt_stream_prefix(0), false)
        .unwrap();
    assert_eq!(
        events(&mut server),
        [reset(4, ErrorCode::WEBTRANSPORT_SESSION_GONE)]
    );
}

#[test]
fn streams_for_unknown_sessions_are_held_within_bounds() {
    let mut server = ready(H3Config {
        max_buffered_streams: 2,
        max_buffered_bytes: 10,
        ..H3Config::default()
    });
    // Session 100 has not been seen: held.
    server
        .on_stream_data(4, &wt_stream_prefix(100), false)
        .unwrap();
    server
        .on_stream_data(8, &wt_stream_prefix(100), false)
        .unwrap();
    assert!(events(&mut server).is_empty());
    // A third one is over the limit.
    server
        .on_stream_data(12, &wt_stream_prefix(100), false)
        .unwrap();
    assert_eq!(
        events(&mut server),
        [reset(12, ErrorCode::WEBTRANSPORT_BUFFERED_STREAM_REJECTED)]
    );
    // Holding more than 10 bytes on one stream is refused too.
    server.on_stream_data(4, b"0123456789A", false).unwrap();
    assert_eq!(
        events(&mut server),
        [reset(4, ErrorCode::WEBTRANSPORT_BUFFERED_STREAM_REJECTED)]
    );
}

#[test]
fn session_stream_limit() {
    let mut server = ready(H3Config {
        max_streams_per_session: 1,
        ..H3Config::default()
    });
    requested(&mut server, 0);
    assert!(server.accept_session(0));
    server
        .on_stream_data(4, &wt_stream_prefix(0), false)
        .unwrap();
    server
        .on_stream_data(8, &wt_stream_prefix(0), false)
        .unwrap();
    assert_eq!(
        events(&mut server),
        [reset(8, ErrorCode::WEBTRANSPORT_BUFFERED_STREAM_REJECTED)]
    );
}

#[test]
fn accepted_response_carries_draft_header() {
    let mut server = ready(H3Config::default());
    requested(&mut server, 0);
    assert!(server.accept_session(0));
    let ts = transmits(&mut server);
    assert_eq!(ts.len(), 1);
    assert!(!ts[0].fin);
    let mut dec = FrameDecoder::new(4096);
    let mut input = &ts[0].data[..];
    let Some(FrameItem::Headers(block)) = dec.next(&mut input).unwrap() else {
        panic!()
    };
    let fields = qpack::decode_field_section(&block, 4096).unwrap();
    let text: Vec<(String, String)> = fields
        .iter()
        .map(|f| {
            (
                String::from_utf8_lossy(&f.name).into(),
                String::from_utf8_lossy(&f.value).into(),
            )
        })
        .collect();
    assert_eq!(
        text,
        [
            (":status".into(), "200".into()),
            ("sec-webtransport-http3-draft".into(), "draft02".into())
        ]
    );
}

#[test]
fn capsule_errors_and_peer_close() {
    // A CLOSE capsule too short for its error code.
    let mut server = ready(H3Config::default());
    requested(&mut server, 0);
    assert!(server.accept_session(0));
    server
        .on_stream_data(4, &wt_stream_prefix(0), false)
        .unwrap();
    let mut bytes = Vec::new();
    frame::encode_frame(frame::DATA, &[0x68, 0x43, 0x02, 0x00, 0x00], &mut bytes);
    server.on_stream_data(0, &bytes, false).unwrap();
    let evs = events(&mut server);
    assert!(
        evs.contains(&reset(0, ErrorCode::H3_MESSAGE_ERROR)),
        "{evs:?}"
    );
    assert!(evs.contains(&reset(4, ErrorCode::WEBTRANSPORT_SESSION_GONE)));
    // A well-formed close split over two DATA frames, each split byte by byte.
    let mut server = ready(H3Config::default());
    requested(&mut server, 0);
    assert!(server.accept_session(0));
    let mut caps = Vec::new();
    mc::webtransport::capsule::encode_close(42, "later", &mut caps);
    let mut bytes = Vec::new();
    frame::encode_frame(frame::DATA, &caps[..3], &mut bytes);
    frame::encode_frame(0x21, b"grease", &mut bytes);
    frame::encode_frame(frame::DATA, &caps[3..], &mut bytes);
    for b in &bytes {
        server
            .on_stream_data(0, std::slice::from_ref(b), false)
            .unwrap();
    }
    assert_eq!(
        events(&mut server),
        [H3Event::SessionClosed {
            session_id: 0,
            code: 42,
            reason: "later".into()
        }]
    );
    // The server ends its side of the CONNECT stream.
    let ts = transmits(&mut server);
    assert!(ts.iter().any(|t| t.stream_id == 0 && t.fin));
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap deterministic fuzz: pseudo-random bytes on every kind of stream.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..2000 {
        let mut server = ready(H3Config::default());
        let len = (next() % 64) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 3 == 0 {
            // Start like a real request to reach deeper states.
            let mut prefixed = wt_connect("/meetings/m-1");
            prefixed.append(&mut bytes);
            bytes = prefixed;
        }
        let stream = [0u64, 4, 6, 10, 14][round % 5];
        let fin = next() % 2 == 0;
        let _ = server.on_stream_data(stream, &bytes, fin);
        while server.poll_event().is_some() {}
        if round % 7 == 0 {
            let _ = server.accept_session(0);
            let _ = server.on_stream_data(4, &bytes, fin);
        }
    }
}
