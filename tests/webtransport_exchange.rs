//! `H3Client` and `H3Server` driven against each other in memory: every byte one side emits is
//! fed to the other, as the QUIC adapter does over real streams.

use mc::webtransport::{
    frame::{self, setting, Settings},
    varint, ClientConfig, ClientEvent, ErrorCode, H3Client, H3Config, H3Error, H3Event, H3Server,
    Rejection, Transmit,
};

/// How transmits are cut before delivery.
#[derive(Clone, Copy)]
enum Delivery {
    Whole,
    ByteByByte,
}

struct Pair {
    server: H3Server,
    client: H3Client,
    delivery: Delivery,
    server_events: Vec<H3Event>,
    client_events: Vec<ClientEvent>,
}

fn deliver(
    t: &Transmit,
    delivery: Delivery,
    mut f: impl FnMut(u64, &[u8], bool) -> Result<(), H3Error>,
) -> Result<(), H3Error> {
    match delivery {
        Delivery::Whole => f(t.stream_id, &t.data, t.fin),
        Delivery::ByteByByte => {
            if t.data.is_empty() {
                return f(t.stream_id, &[], t.fin);
            }
            for (i, b) in t.data.iter().enumerate() {
                f(
                    t.stream_id,
                    std::slice::from_ref(b),
                    t.fin && i + 1 == t.data.len(),
                )?;
            }
            Ok(())
        }
    }
}

impl Pair {
    fn new(cfg: H3Config, delivery: Delivery) -> Self {
        Self {
            server: H3Server::new(cfg),
            client: H3Client::new(ClientConfig::default()),
            delivery,
            server_events: Vec::new(),
            client_events: Vec::new(),
        }
    }

    /// Moves bytes both ways until neither side has anything to send.
    fn drive(&mut self) -> Result<(), H3Error> {
        loop {
            let mut moved = false;
            while let Some(t) = self.client.poll_transmit() {
                moved = true;
                let server = &mut self.server;
                deliver(&t, self.delivery, |id, d, fin| {
                    server.on_stream_data(id, d, fin)
                })?;
            }
            while let Some(t) = self.server.poll_transmit() {
                moved = true;
                let client = &mut self.client;
                deliver(&t, self.delivery, |id, d, fin| {
                    client.on_stream_data(id, d, fin)
                })?;
            }
            while let Some(e) = self.server.poll_event() {
                self.server_events.push(e);
            }
            while let Some(e) = self.client.poll_event() {
                self.client_events.push(e);
            }
            if !moved {
                return Ok(());
            }
        }
    }

    /// Opens session on stream 0 for `/meetings/m-1`, accepts it and opens WT stream 4.
    fn establish(&mut self) -> (u64, u64) {
        let session = self.client.connect(
            "localhost:4433",
            "/meetings/m-1",
            Some("https://app.example"),
        );
        self.drive().unwrap();
        let requested = self.server_events.drain(..).collect::<Vec<_>>();
        assert!(
            matches!(&requested[..], [H3Event::SessionRequested { session_id, meeting_id, path, authority, origin }]
                if *session_id == session
                    && meeting_id.as_str() == "m-1"
                    && path == "/meetings/m-1"
                    && authority == "localhost:4433"
                    && origin.as_deref() == Some("https://app.example")),
            "{requested:?}"
        );
        assert!(self.server.accept_session(session));
        self.drive().unwrap();
        assert_eq!(
            self.client_events.drain(..).collect::<Vec<_>>(),
            [ClientEvent::SessionEstablished {
                session_id: session
            }]
        );
        let stream = self.client.open_bidi_stream(session).unwrap();
        (session, stream)
    }
}

/// A signaling v1 frame: 4-byte big-endian length, then JSON.
fn signaling_frame(json: &str) -> Vec<u8> {
    let mut out = (json.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out
}

fn server_payload(events: &[H3Event], stream: u64) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    let mut fin = false;
    for e in events {
        if let H3Event::StreamData {
            stream_id,
            data: d,
            fin: f,
            ..
        } = e
        {
            if *stream_id == stream {
                data.extend_from_slice(d);
                fin |= *f;
            }
        }
    }
    (data, fin)
}

fn client_payload(events: &[ClientEvent], stream: u64) -> Vec<u8> {
    let mut data = Vec::new();
    for e in events {
        if let ClientEvent::StreamData {
            stream_id, data: d, ..
        } = e
        {
            if *stream_id == stream {
                data.extend_from_slice(d);
            }
        }
    }
    data
}

fn full_exchange(delivery: Delivery) {
    let mut p = Pair::new(H3Config::default(), delivery);
    let (session, stream) = p.establish();
    assert_eq!((session, stream), (0, 4));

    let join =
        signaling_frame(r#"{"type":"join","meeting_id":"m-1","token":"t","display_name":"a"}"#);
    assert!(p.client.send_stream_data(stream, &join, false));
    p.drive().unwrap();
    assert_eq!(server_payload(&p.server_events, stream), (join, false));
    assert!(p.server_events.iter().all(|e| matches!(
        e,
        H3Event::StreamData {
            session_id: 0,
            stream_id: 4,
            ..
        }
    )));
    p.server_events.clear();

    // Server → client: the adapter writes the payload straight onto the WT stream.
    let reply = signaling_frame(r#"{"type":"join_response","participant_id":"p0-1"}"#);
    p.client.on_stream_data(stream, &reply, false).unwrap();
    p.drive().unwrap();
    assert_eq!(client_payload(&p.client_events, stream), reply);
    p.client_events.clear();

    // Client closes the session with a code and a reason.
    assert!(p.client.close_session(session, 0x101, "bye"));
    p.drive().unwrap();
    assert!(p.server_events.contains(&H3Event::SessionClosed {
        session_id: session,
        code: 0x101,
        reason: "bye".into()
    }));
    assert!(p.server_events.contains(&H3Event::ResetStream {
        stream_id: stream,
        code: ErrorCode::WEBTRANSPORT_SESSION_GONE
    }));
    assert!(p.client_events.contains(&ClientEvent::ResetStream {
        stream_id: stream,
        code: ErrorCode::WEBTRANSPORT_SESSION_GONE
    }));
    // Neither side accepts the session any more.
    assert!(!p.server.close_session(session, 0, ""));
    assert!(!p.client.send_stream_data(stream, b"x", false));
}

#[test]
fn full_exchange_whole_transmits() {
    full_exchange(Delivery::Whole);
}

#[test]
fn full_exchange_one_byte_at_a_time() {
    full_exchange(Delivery::ByteByByte);
}

#[test]
fn first_transmits_open_critical_streams() {
    let mut server = H3Server::new(H3Config::default());
    let ids: Vec<u64> = std::iter::from_fn(|| server.poll_transmit())
        .map(|t| t.stream_id)
        .collect();
    assert_eq!(ids, [3, 7, 11]);
    let mut client = H3Client::new(ClientConfig::default());
    let firsts: Vec<Transmit> = std::iter::from_fn(|| client.poll_transmit()).collect();
    assert_eq!(
        firsts.iter().map(|t| t.stream_id).collect::<Vec<_>>(),
        [2, 6, 10]
    );
    assert_eq!(firsts[0].data[0], 0x00);
    assert_eq!(firsts[1].data, [0x02]);
    assert_eq!(firsts[2].data, [0x03]);
}

#[test]
fn server_settings_offer_webtransport_every_draft() {
    let mut p = Pair::new(
        H3Config {
            max_sessions: 3,
            ..H3Config::default()
        },
        Delivery::Whole,
    );
    p.drive().unwrap();
    let s = p.client.peer_settings().unwrap();
    assert_eq!(s.get(setting::ENABLE_CONNECT_PROTOCOL), Some(1));
    assert_eq!(s.get(setting::H3_DATAGRAM), Some(1));
    assert_eq!(s.get(setting::H3_DATAGRAM_DRAFT04), Some(1));
    assert_eq!(s.get(setting::ENABLE_WEBTRANSPORT), Some(1));
    assert_eq!(s.get(setting::WEBTRANSPORT_MAX_SESSIONS), Some(3));
    assert_eq!(s.get(setting::QPACK_MAX_TABLE_CAPACITY), Some(0));
    assert_eq!(s.get(setting::QPACK_BLOCKED_STREAMS), Some(0));
    assert_eq!(s.get(setting::MAX_FIELD_SECTION_SIZE), Some(16384));
    assert!(p.server.peer_settings().unwrap().supports_webtransport());
}

#[test]
fn server_closes_session_with_capsule() {
    let mut p = Pair::new(H3Config::default(), Delivery::Whole);
    let (session, stream) = p.establish();
    p.client.send_stream_data(stream, b"hello", false);
    p.drive().unwrap();
    p.server_events.clear();
    assert!(p.server.close_session(session, 0x103, "capacity exceeded"));
    assert_eq!(
        p.server.poll_event(),
        Some(H3Event::ResetStream {
            stream_id: stream,
            code: ErrorCode::WEBTRANSPORT_SESSION_GONE
        })
    );
    p.drive().unwrap();
    assert!(p.client_events.contains(&ClientEvent::SessionClosed {
        session_id: session,
        code: 0x103,
        reason: "capacity exceeded".into()
    }));
    // The client answered with FIN; the server reports nothing more for a session it closed.
    assert!(p
        .server_events
        .iter()
        .all(|e| !matches!(e, H3Event::SessionClosed { .. })));
}

#[test]
fn drain_and_goaway_reach_the_client() {
    let mut p = Pair::new(H3Config::default(), Delivery::Whole);
    let (session, _) = p.establish();
    assert!(p.server.drain_session(session));
    p.server.send_goaway();
    p.drive().unwrap();
    assert!(p.client_events.contains(&ClientEvent::SessionDraining {
        session_id: session
    }));
    assert!(p
        .client_events
        .contains(&ClientEvent::GoAway { stream_id: 4 }));
    assert_eq!(p.client.peer_goaway(), Some(4));
    // A request after GOAWAY is refused without processing.
    p.client_events.clear();
    let second = p.client.connect("localhost", "/meetings/m-2", None);
    p.drive().unwrap();
    assert!(p.server_events.contains(&H3Event::ResetStream {
        stream_id: second,
        code: ErrorCode::H3_REQUEST_REJECTED
    }));
}

#[test]
fn rejected_session_gets_status() {
    let mut p = Pair::new(H3Config::default(), Delivery::Whole);
    let session = p.client.connect("localhost", "/meetings/full", None);
    p.drive().unwrap();
    assert!(matches!(
        p.server_events[..],
        [H3Event::SessionRequested { session_id: 0, .. }]
    ));
    assert!(p.server.reject_session(session, 503));
    assert!(!p.server.accept_session(session));
    p.drive().unwrap();
    assert_eq!(
        p.client_events,
        [ClientEvent::SessionRejected {
            session_id: session,
            reason: Rejection::Status(503)
        }]
    );
    assert_eq!(p.client.open_bidi_stream(session), None);
}

#[test]
fn wrong_path_and_origin_are_answered() {
    let cfg = H3Config {
        allowed_origins: Some(vec!["https://app.example".into()]),
        ..H3Config::default()
    };
    let mut p = Pair::new(cfg, Delivery::Whole);
    let a = p
        .client
        .connect("localhost", "/rooms/m-1", Some("https://app.example"));
    let b = p
        .client
        .connect("localhost", "/meetings/m-1", Some("https://evil.example"));
    let c = p.client.connect("localhost", "/meetings/a%20b", None);
    p.drive().unwrap();
    assert!(p.server_events.is_empty(), "{:?}", p.server_events);
    let rejected = |id, status| ClientEvent::SessionRejected {
        session_id: id,
        reason: Rejection::Status(status),
    };
    assert_eq!(
        p.client_events,
        [rejected(a, 404), rejected(b, 403), rejected(c, 404)]
    );
}

#[test]
fn second_session_over_the_limit_is_refused() {
    let mut p = Pair::new(H3Config::default(), Delivery::Whole);
    let (_, _) = p.establish();
    let second = p.client.connect("localhost", "/meetings/m-2", None);
    p.drive().unwrap();
    assert_eq!(
        p.server_events,
        [H3Event::ResetStream {
            stream_id: second,
            code: ErrorCode::H3_REQUEST_REJECTED
        }]
    );
    // The adapter resets the stream; the client learns it from the transport.
    p.client.on_stream_reset(second).unwrap();
    assert_eq!(
        p.client.poll_event(),
        Some(ClientEvent::SessionRejected {
            session_id: second,
            reason: Rejection::Reset
        })
    );
}

#[test]
fn client_waits_for_server_settings_before_connect() {
    let mut server = H3Server::new(H3Config::default());
    let mut client = H3Client::new(ClientConfig::default());
    let session = client.connect("localhost", "/meetings/m-1", None);
    let sent: Vec<u64> = std::iter::from_fn(|| client.poll_transmit())
        .map(|t| t.stream_id)
        .collect();
    assert_eq!(sent, [2, 6, 10], "CONNECT must wait for SETTINGS");
    while let Some(t) = server.poll_transmit() {
        client.on_stream_data(t.stream_id, &t.data, t.fin).unwrap();
    }
    let t = client.poll_transmit().unwrap();
    assert_eq!(t.stream_id, session);
    assert!(!t.fin);
}

#[test]
fn client_refuses_server_without_webtransport() {
    let mut client = H3Client::new(ClientConfig::default());
    let session = client.connect("localhost", "/meetings/m-1", None);
    let mut control = vec![0x00];
    let mut s = Settings::new();
    s.set(setting::ENABLE_CONNECT_PROTOCOL, 1);
    s.encode(&mut control);
    client.on_stream_data(3, &control, false).unwrap();
    assert_eq!(
        client.poll_event(),
        Some(ClientEvent::SessionRejected {
            session_id: session,
            reason: Rejection::Unsupported
        })
    );
}

#[test]
fn webtransport_stream_before_connect_is_held_until_accept() {
    // The client's CONNECT (stream 0) is delayed behind its WT stream (stream 4).
    let mut server = H3Server::new(H3Config::default());
    let mut client = H3Client::new(ClientConfig::default());
    while let Some(t) = server.poll_transmit() {
        client.on_stream_data(t.stream_id, &t.data, t.fin).unwrap();
    }
    let session = client.connect("localhost", "/meetings/m-1", None);
    let transmits: Vec<Transmit> = std::iter::from_fn(|| client.poll_transmit()).collect();
    let mut wt = Vec::new();
    varint::encode(frame::WEBTRANSPORT_STREAM, &mut wt);
    varint::encode(session, &mut wt);
    wt.extend_from_slice(b"early");
    server.on_stream_data(4, &wt, false).unwrap();
    assert_eq!(server.poll_event(), None);
    for t in &transmits {
        server.on_stream_data(t.stream_id, &t.data, t.fin).unwrap();
    }
    assert!(matches!(
        server.poll_event(),
        Some(H3Event::SessionRequested { session_id: 0, .. })
    ));
    server.on_stream_data(4, b" bytes", true).unwrap();
    assert_eq!(server.poll_event(), None);
    assert!(server.accept_session(session));
    assert_eq!(
        server.poll_event(),
        Some(H3Event::StreamData {
            session_id: 0,
            stream_id: 4,
            data: b"early bytes".to_vec(),
            fin: true
        })
    );
}

#[test]
fn request_before_client_settings_waits_for_them() {
    let mut server = H3Server::new(H3Config::default());
    let mut client = H3Client::new(ClientConfig::default());
    while let Some(t) = server.poll_transmit() {
        client.on_stream_data(t.stream_id, &t.data, t.fin).unwrap();
    }
    client.connect("localhost", "/meetings/m-1", None);
    let transmits: Vec<Transmit> = std::iter::from_fn(|| client.poll_transmit()).collect();
    let (uni, bidi): (Vec<_>, Vec<_>) = transmits.iter().partition(|t| t.stream_id % 4 == 2);
    for t in &bidi {
        server.on_stream_data(t.stream_id, &t.data, t.fin).unwrap();
    }
    assert_eq!(
        server.poll_event(),
        None,
        "no session before the client's SETTINGS"
    );
    for t in &uni {
        server.on_stream_data(t.stream_id, &t.data, t.fin).unwrap();
    }
    assert!(matches!(
        server.poll_event(),
        Some(H3Event::SessionRequested { session_id: 0, .. })
    ));
}

#[test]
fn connect_stream_fin_or_reset_closes_session() {
    for reset in [false, true] {
        let mut p = Pair::new(H3Config::default(), Delivery::Whole);
        let (session, stream) = p.establish();
        p.client.send_stream_data(stream, b"x", false);
        p.drive().unwrap();
        p.server_events.clear();
        if reset {
            p.server.on_stream_reset(session).unwrap();
        } else {
            p.server.on_stream_data(session, &[], true).unwrap();
        }
        let events: Vec<H3Event> = std::iter::from_fn(|| p.server.poll_event()).collect();
        assert!(
            events.contains(&H3Event::SessionClosed {
                session_id: session,
                code: 0,
                reason: String::new()
            }),
            "{events:?}"
        );
        assert!(events.contains(&H3Event::ResetStream {
            stream_id: stream,
            code: ErrorCode::WEBTRANSPORT_SESSION_GONE
        }));
        // Later data on the dead WT stream is dropped, not reported.
        p.server.on_stream_data(stream, b"late", false).unwrap();
        assert_eq!(p.server.poll_event(), None);
    }
}

#[test]
fn accept_after_peer_gave_up_is_a_no_op() {
    let mut p = Pair::new(H3Config::default(), Delivery::Whole);
    let session = p.client.connect("localhost", "/meetings/m-1", None);
    p.drive().unwrap();
    p.server.on_stream_reset(session).unwrap();
    assert!(p
        .server
        .poll_event()
        .is_some_and(|e| matches!(e, H3Event::SessionClosed { .. })));
    assert!(!p.server.accept_session(session));
    assert!(!p.server.reject_session(session, 404));
}
