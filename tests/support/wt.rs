//! A blocking WebTransport client over quiche, built on `mc::webtransport::H3Client`.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use mc::core::codec::{self, FrameDecoder};
use mc::core::protocol::{ClientMessage, ServerMessage};
use mc::webtransport::{ClientConfig, ClientEvent, H3Client};

pub struct WtClient {
    sock: UdpSocket,
    conn: quiche::Connection,
    local: SocketAddr,
    h3: H3Client,
    pub session: Option<u64>,
    pub stream: Option<u64>,
    pub rejected: Option<String>,
    pub closed_session: Option<(u32, String)>,
    decoder: FrameDecoder,
    pub received: Vec<ServerMessage>,
    out: Vec<u8>,
}

impl WtClient {
    /// Handshakes with ALPN h3 and sends an extended CONNECT for `path`.
    pub fn connect(server: SocketAddr, path: &str, origin: Option<&str>) -> WtClient {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let local = sock.local_addr().unwrap();
        let mut cfg = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
        cfg.set_application_protos(&[b"h3"]).unwrap();
        cfg.verify_peer(false);
        cfg.set_max_idle_timeout(30_000);
        cfg.set_max_recv_udp_payload_size(1350);
        cfg.set_max_send_udp_payload_size(1350);
        cfg.set_initial_max_data(8 << 20);
        cfg.set_initial_max_stream_data_bidi_local(1 << 20);
        cfg.set_initial_max_stream_data_bidi_remote(1 << 20);
        cfg.set_initial_max_stream_data_uni(1 << 20);
        cfg.set_initial_max_streams_bidi(16);
        cfg.set_initial_max_streams_uni(16);
        cfg.enable_dgram(true, 16, 16);
        let mut scid = [0u8; 16];
        rand::Rng::fill(&mut rand::thread_rng(), &mut scid[..]);
        let conn = quiche::connect(
            Some("localhost"),
            &quiche::ConnectionId::from_ref(&scid),
            local,
            server,
            &mut cfg,
        )
        .unwrap();
        let mut c = WtClient {
            sock,
            conn,
            local,
            h3: H3Client::new(ClientConfig::default()),
            session: None,
            stream: None,
            rejected: None,
            closed_session: None,
            decoder: FrameDecoder::new(),
            received: Vec::new(),
            out: vec![0; 1500],
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.conn.is_established() {
            assert!(Instant::now() < deadline, "h3 handshake failed");
            c.io(Duration::from_millis(10));
        }
        let authority = format!("localhost:{}", server.port());
        c.h3.connect(&authority, path, origin);
        c
    }

    /// Waits for the session answer; true when established.
    pub fn wait_session(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.session.is_none()
            && self.rejected.is_none()
            && Instant::now() < deadline
            && !self.conn.is_closed()
        {
            self.io(Duration::from_millis(5));
        }
        if let Some(s) = self.session {
            self.stream = self.h3.open_bidi_stream(s);
            self.pump();
        }
        self.session.is_some()
    }

    pub fn send(&mut self, msg: &ClientMessage) {
        let f = codec::encode(msg);
        let stream = self.stream.expect("no WebTransport stream");
        assert!(self.h3.send_stream_data(stream, &f, false));
        self.pump();
    }

    /// Writes raw bytes on the WebTransport stream (malformed frames).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stream = self.stream.expect("no WebTransport stream");
        assert!(self.h3.send_stream_data(stream, bytes, false));
        self.pump();
    }

    /// Waits until the QUIC connection is closed; returns the session close capsule's
    /// `(code, reason)` if one arrived before, and the connection's close code.
    pub fn wait_closed(&mut self, timeout: Duration) -> (Option<(u32, String)>, Option<u64>) {
        let deadline = Instant::now() + timeout;
        while !self.conn.is_closed() && Instant::now() < deadline {
            self.io(Duration::from_millis(5));
        }
        assert!(
            self.conn.is_closed(),
            "the server did not close the connection"
        );
        (self.closed_session.clone(), self.peer_error_code())
    }

    pub fn expect(&mut self, what: &str, pred: impl Fn(&ServerMessage) -> bool) -> ServerMessage {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = self.received.iter().position(&pred) {
                return self.received.remove(i);
            }
            assert!(
                Instant::now() < deadline && !self.conn.is_closed(),
                "expected {what}; got {:?}",
                self.received
            );
            self.io(Duration::from_millis(5));
        }
    }

    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    pub fn peer_error_code(&self) -> Option<u64> {
        self.conn.peer_error().map(|e| e.error_code)
    }

    fn pump(&mut self) {
        // HTTP/3 bytes (SETTINGS first) may only be written once the handshake is done.
        while self.conn.is_established() {
            let Some(tx) = self.h3.poll_transmit() else {
                break;
            };
            let _ = self.conn.stream_send(tx.stream_id, &tx.data, tx.fin);
        }
        self.flush();
    }

    fn flush(&mut self) {
        while let Ok((n, info)) = self.conn.send(&mut self.out) {
            let _ = self.sock.send_to(&self.out[..n], info.to);
        }
    }

    pub fn io(&mut self, budget: Duration) {
        self.pump();
        let deadline = Instant::now() + budget;
        let mut buf = [0u8; 65535];
        loop {
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let _ = self.conn.recv(
                        &mut buf[..n],
                        quiche::RecvInfo {
                            from,
                            to: self.local,
                        },
                    );
                    self.read();
                }
                Err(_) => {
                    if self
                        .conn
                        .timeout_instant()
                        .is_some_and(|t| Instant::now() >= t)
                    {
                        self.conn.on_timeout();
                    }
                }
            }
            self.pump();
            if Instant::now() >= deadline {
                break;
            }
        }
    }

    fn read(&mut self) {
        let mut buf = [0u8; 65535];
        while let Some(sid) = self.conn.stream_readable_next() {
            while let Ok((n, fin)) = self.conn.stream_recv(sid, &mut buf) {
                let _ = self.h3.on_stream_data(sid, &buf[..n], fin);
                if n == 0 {
                    break;
                }
            }
        }
        while let Some(ev) = self.h3.poll_event() {
            match ev {
                ClientEvent::SessionEstablished { session_id } => self.session = Some(session_id),
                ClientEvent::SessionRejected { reason, .. } => {
                    self.rejected = Some(format!("{reason:?}"))
                }
                ClientEvent::StreamData { data, .. } => {
                    self.decoder.push(&data);
                    while let Ok(Some(body)) = self.decoder.next_frame() {
                        self.received
                            .push(codec::decode(body).expect("bad frame from server"));
                    }
                }
                ClientEvent::SessionClosed { code, reason, .. } => {
                    self.closed_session = Some((code, reason))
                }
                _ => {}
            }
        }
    }
}
