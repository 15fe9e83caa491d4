//! A blocking WebTransport client over a loopback socket, built on `mc::webtransport::H3Client`
//! and the shared socket pump ([`QuicConn`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mc::core::codec::{self, FrameDecoder};
use mc::core::protocol::{ClientMessage, ServerMessage};
use mc::webtransport::{ClientConfig, ClientEvent, H3Client};

use crate::client::{decode_frames, take_first, ClientSettings};
use crate::udp::{Phase, QuicConn};

/// The HTTP/3 side of a [`WtClient`]: the session state and what arrived on its stream.
struct Session {
    h3: H3Client,
    session: Option<u64>,
    rejected: Option<String>,
    closed_session: Option<(u32, String)>,
    decoder: FrameDecoder,
    received: Vec<ServerMessage>,
}

impl Session {
    /// Feeds what the connection has readable to HTTP/3 ([`Phase::Received`]), or writes what
    /// HTTP/3 has to send ([`Phase::Sending`]).
    fn on_io(&mut self, conn: &mut quiche::Connection, phase: Phase) {
        match phase {
            Phase::Received => self.read(conn),
            Phase::Sending => {
                // HTTP/3 bytes (SETTINGS first) may only be written once the handshake is done.
                while conn.is_established() {
                    let Some(tx) = self.h3.poll_transmit() else {
                        break;
                    };
                    let _ = conn.stream_send(tx.stream_id, &tx.data, tx.fin);
                }
            }
        }
    }

    fn read(&mut self, conn: &mut quiche::Connection) {
        let mut buf = [0u8; 65535];
        while let Some(sid) = conn.stream_readable_next() {
            while let Ok((n, fin)) = conn.stream_recv(sid, &mut buf) {
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
                    decode_frames(&mut self.decoder, &data, &mut self.received)
                }
                ClientEvent::SessionClosed { code, reason, .. } => {
                    self.closed_session = Some((code, reason))
                }
                _ => {}
            }
        }
    }
}

/// A WebTransport client: one session, one bidirectional stream carrying signaling frames.
pub struct WtClient {
    quic: QuicConn,
    app: Session,
    /// The WebTransport stream, once opened.
    pub stream: Option<u64>,
}

impl WtClient {
    /// Handshakes with ALPN h3 and sends an extended CONNECT for `path`.
    pub fn connect(server: SocketAddr, path: &str, origin: Option<&str>) -> WtClient {
        let mut c = WtClient {
            quic: QuicConn::start(server, &ClientSettings::webtransport()),
            app: Session {
                h3: H3Client::new(ClientConfig::default()),
                session: None,
                rejected: None,
                closed_session: None,
                decoder: FrameDecoder::new(),
                received: Vec::new(),
            },
            stream: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.quic.conn.is_established() {
            assert!(Instant::now() < deadline, "h3 handshake failed");
            c.io(Duration::from_millis(10));
        }
        let authority = format!("localhost:{}", server.port());
        c.app.h3.connect(&authority, path, origin);
        c
    }

    /// The session id, once the server accepted the session.
    pub fn session(&self) -> Option<u64> {
        self.app.session
    }

    /// Why the server refused the session, if it did.
    pub fn rejected(&self) -> Option<&str> {
        self.app.rejected.as_deref()
    }

    /// Messages received and not taken yet, in order.
    pub fn received(&self) -> &[ServerMessage] {
        &self.app.received
    }

    /// Takes the messages received so far.
    pub fn take_received(&mut self) -> Vec<ServerMessage> {
        std::mem::take(&mut self.app.received)
    }

    /// Waits for the session answer; true when established (and then opens the stream).
    pub fn wait_session(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.app.session.is_none()
            && self.app.rejected.is_none()
            && Instant::now() < deadline
            && !self.quic.conn.is_closed()
        {
            self.io(Duration::from_millis(5));
        }
        if let Some(s) = self.app.session {
            self.stream = self.app.h3.open_bidi_stream(s);
            self.pump();
        }
        self.app.session.is_some()
    }

    /// Sends one message on the WebTransport stream.
    pub fn send(&mut self, msg: &ClientMessage) {
        self.send_raw(&codec::encode(msg));
    }

    /// Writes raw bytes on the WebTransport stream (malformed frames).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stream = self.stream.expect("no WebTransport stream");
        assert!(self.app.h3.send_stream_data(stream, bytes, false));
        self.pump();
    }

    /// Waits until the QUIC connection is closed; returns the session close capsule's
    /// `(code, reason)` if one arrived before, and the connection's close code.
    pub fn wait_closed(&mut self, timeout: Duration) -> (Option<(u32, String)>, Option<u64>) {
        let deadline = Instant::now() + timeout;
        while !self.quic.conn.is_closed() && Instant::now() < deadline {
            self.io(Duration::from_millis(5));
        }
        assert!(
            self.quic.conn.is_closed(),
            "the server did not close the connection"
        );
        (self.app.closed_session.clone(), self.peer_error_code())
    }

    /// Waits up to 10 s for a message `pred` matches (removing and returning it); panics
    /// (naming `what`) without one.
    pub fn expect(&mut self, what: &str, pred: impl Fn(&ServerMessage) -> bool) -> ServerMessage {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(m) = take_first(&mut self.app.received, &pred) {
                return m;
            }
            assert!(
                Instant::now() < deadline && !self.quic.conn.is_closed(),
                "expected {what}; got {:?}",
                self.app.received
            );
            self.io(Duration::from_millis(5));
        }
    }

    /// True once quiche considers the connection closed.
    pub fn is_closed(&self) -> bool {
        self.quic.conn.is_closed()
    }

    /// The close code the server sent, if any.
    pub fn peer_error_code(&self) -> Option<u64> {
        self.quic.conn.peer_error().map(|e| e.error_code)
    }

    /// Writes what HTTP/3 has pending and sends it.
    fn pump(&mut self) {
        self.app.on_io(&mut self.quic.conn, Phase::Sending);
        self.quic.flush();
    }

    /// Sends and receives for about `budget`.
    pub fn io(&mut self, budget: Duration) {
        let app = &mut self.app;
        self.quic
            .io_with(budget, |conn, phase| app.on_io(conn, phase));
    }
}
