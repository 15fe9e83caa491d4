//! Quiche clients over real UDP sockets on loopback, for the end-to-end tests that start the
//! `mc` binary: blocking, every wait bounded by the wall clock.
//!
//! [`QuicConn`] is the one socket pump (send what quiche has, receive, fire quiche's timers);
//! [`Client`] speaks native signaling on stream 0 over it, [`crate::wt::WtClient`] WebTransport.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use mc::core::codec::{self, FrameDecoder};
use mc::core::protocol::{ClientMessage, ServerMessage};

use crate::client::{
    closed, join_message, read_signaling, take_first, ClientSettings, Closed, SIGNALING_STREAM,
};

/// What [`QuicConn::io_with`] tells the application about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A datagram was just processed: read what became readable.
    Received,
    /// quiche is about to be asked for packets: write what is pending.
    Sending,
}

/// A quiche client connection on its own loopback UDP socket.
pub struct QuicConn {
    sock: UdpSocket,
    /// The connection (for stream-level control and close codes).
    pub conn: quiche::Connection,
    local: SocketAddr,
    out: Vec<u8>,
}

impl QuicConn {
    /// Binds an ephemeral loopback socket and starts a handshake with `server`, without waiting.
    pub fn start(server: SocketAddr, settings: &ClientSettings) -> QuicConn {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a loopback UDP socket");
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .expect("socket read timeout");
        let local = sock.local_addr().expect("local address");
        let scid = crate::client::random_scid();
        let conn = quiche::connect(
            Some("localhost"),
            &quiche::ConnectionId::from_ref(&scid),
            local,
            server,
            &mut settings.quiche_config(),
        )
        .expect("client connection");
        QuicConn {
            sock,
            conn,
            local,
            out: vec![0; 1500],
        }
    }

    /// [`QuicConn::start`], then pumps until the handshake completed, the connection closed or
    /// `within` passed (the caller checks which).
    pub fn connect(server: SocketAddr, settings: &ClientSettings, within: Duration) -> QuicConn {
        let mut c = Self::start(server, settings);
        c.handshake(within);
        c
    }

    /// Pumps until the handshake completed, the connection closed or `within` passed; true if
    /// established.
    pub fn handshake(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.conn.is_established() && !self.conn.is_closed() && Instant::now() < deadline {
            self.io(Duration::from_millis(10));
        }
        self.conn.is_established()
    }

    /// The client's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends every packet quiche has ready.
    pub fn flush(&mut self) {
        while let Ok((n, info)) = self.conn.send(&mut self.out) {
            let _ = self.sock.send_to(&self.out[..n], info.to);
        }
    }

    /// Sends and receives for about `budget` (at least one receive attempt).
    pub fn io(&mut self, budget: Duration) {
        self.io_with(budget, |_, _| {});
    }

    /// [`QuicConn::io`], calling `app` after each received datagram ([`Phase::Received`]) and
    /// before each flush ([`Phase::Sending`]).
    pub fn io_with(
        &mut self,
        budget: Duration,
        mut app: impl FnMut(&mut quiche::Connection, Phase),
    ) {
        app(&mut self.conn, Phase::Sending);
        self.flush();
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
                    app(&mut self.conn, Phase::Received);
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
            app(&mut self.conn, Phase::Sending);
            self.flush();
            if Instant::now() >= deadline {
                return;
            }
        }
    }

    /// Writes all of `bytes` on `stream`, pumping while flow control holds them back, for at
    /// most `within`. `Ok(false)` if time ran out first; the stream's error if it has one.
    pub fn write_stream(
        &mut self,
        stream: u64,
        bytes: &[u8],
        within: Duration,
        mut app: impl FnMut(&mut quiche::Connection, Phase),
    ) -> Result<bool, quiche::Error> {
        let mut off = 0;
        let deadline = Instant::now() + within;
        while off < bytes.len() {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            match self.conn.stream_send(stream, &bytes[off..], false) {
                Ok(n) => off += n,
                Err(quiche::Error::Done) => {}
                Err(e) => return Err(e),
            }
            self.io_with(Duration::from_millis(1), &mut app);
        }
        self.flush();
        Ok(true)
    }

    /// [`QuicConn::write_stream`] for at most 10 s with no application.
    pub fn send_on(&mut self, stream: u64, bytes: &[u8]) -> Result<bool, quiche::Error> {
        self.write_stream(stream, bytes, Duration::from_secs(10), |_, _| {})
    }

    /// Decodes every signaling frame readable on `stream` (`decoder` keeps partial frames).
    pub fn read_frames(&mut self, stream: u64, decoder: &mut FrameDecoder) -> Vec<ServerMessage> {
        let mut out = Vec::new();
        let mut buf = [0u8; 65535];
        read_signaling(&mut self.conn, stream, decoder, &mut out, &mut buf);
        out
    }
}

/// A blocking native signaling client (`mc/1`, stream 0).
pub struct Client {
    quic: QuicConn,
    decoder: FrameDecoder,
    /// Messages received and not taken yet, in order.
    pub received: Vec<ServerMessage>,
    /// When false, the client stops reading its stream (to simulate a slow consumer).
    pub reading: bool,
}

impl Client {
    /// Connects with the default settings; panics if the handshake fails within 10 s.
    pub fn connect(server: SocketAddr) -> Client {
        Self::try_connect(server, Duration::from_secs(10)).expect("handshake")
    }

    /// Connects with the default settings; an error if the handshake fails within `timeout`.
    pub fn try_connect(server: SocketAddr, timeout: Duration) -> Result<Client, String> {
        Self::try_connect_with(server, timeout, &ClientSettings::signaling())
    }

    /// A client whose stream receive window is `window` bytes (to simulate a slow reader).
    pub fn connect_with_stream_window(server: SocketAddr, window: u64) -> Client {
        let settings = ClientSettings::signaling().with_stream_window(window);
        Self::try_connect_with(server, Duration::from_secs(10), &settings).expect("handshake")
    }

    /// Connects with `settings`; an error if the handshake fails within `timeout`.
    pub fn try_connect_with(
        server: SocketAddr,
        timeout: Duration,
        settings: &ClientSettings,
    ) -> Result<Client, String> {
        let mut c = Client {
            quic: QuicConn::start(server, settings),
            decoder: FrameDecoder::new(),
            received: Vec::new(),
            reading: true,
        };
        let deadline = Instant::now() + timeout;
        while !c.quic.conn.is_established() {
            if Instant::now() > deadline || c.quic.conn.is_closed() {
                return Err(format!("handshake failed: {:?}", c.quic.conn.peer_error()));
            }
            c.io(Duration::from_millis(10));
        }
        Ok(c)
    }

    /// The client's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.quic.local_addr()
    }

    /// Sends and receives for about `budget`.
    pub fn io(&mut self, budget: Duration) {
        let (quic, app) = self.split();
        quic.io_with(budget, app);
    }

    /// Writes raw bytes on the signaling stream (panics if that takes more than 10 s).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let (quic, app) = self.split();
        let sent = quic
            .write_stream(SIGNALING_STREAM, bytes, Duration::from_secs(10), app)
            .unwrap_or_else(|e| panic!("stream_send: {e:?}"));
        assert!(sent, "could not send");
    }

    /// The socket pump and the application that reads stream 0 (while reading).
    fn split(
        &mut self,
    ) -> (
        &mut QuicConn,
        impl FnMut(&mut quiche::Connection, Phase) + '_,
    ) {
        let reading = self.reading;
        let decoder = &mut self.decoder;
        let received = &mut self.received;
        let app = move |conn: &mut quiche::Connection, phase| {
            if phase == Phase::Received && reading {
                let mut buf = [0u8; 65535];
                read_signaling(conn, SIGNALING_STREAM, decoder, received, &mut buf);
            }
        };
        (&mut self.quic, app)
    }

    /// Sends one message.
    pub fn send(&mut self, msg: &ClientMessage) {
        self.send_raw(&codec::encode(msg));
    }

    /// Sends a plain `join`.
    pub fn join(&mut self, meeting: &str, token: &str, name: &str) {
        self.send(&join_message(meeting, token, name));
    }

    /// Waits until `pred` matches a received message (removing and returning it); `None` once
    /// `timeout` passed or the connection closed without one.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&ServerMessage) -> bool,
    ) -> Option<ServerMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = take_first(&mut self.received, &pred) {
                return Some(m);
            }
            if Instant::now() >= deadline || self.quic.conn.is_closed() {
                // One last look.
                return take_first(&mut self.received, &pred);
            }
            self.io(Duration::from_millis(5));
        }
    }

    /// [`Client::wait_for`] for 10 s; panics (naming `what`) without a match.
    pub fn expect(&mut self, what: &str, pred: impl Fn(&ServerMessage) -> bool) -> ServerMessage {
        match self.wait_for(Duration::from_secs(10), pred) {
            Some(m) => m,
            None => panic!(
                "expected {what}; got {:?}; closed={:?}",
                self.received,
                self.closed()
            ),
        }
    }

    /// Joins and returns the join_response.
    pub fn join_ok(&mut self, meeting: &str, token: &str, name: &str) -> ServerMessage {
        self.join(meeting, token, name);
        self.expect("join_response", |m| {
            matches!(m, ServerMessage::JoinResponse { .. })
        })
    }

    /// How the server closed the connection, once it did.
    pub fn closed(&self) -> Option<Closed> {
        closed(&self.quic.conn)
    }

    /// Waits for the server to close the connection and returns how.
    pub fn wait_closed(&mut self, timeout: Duration) -> Option<Closed> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.closed() {
                return Some(c);
            }
            self.io(Duration::from_millis(5));
        }
        None
    }

    /// Closes the connection (application close 0).
    pub fn close(&mut self) {
        let _ = self.quic.conn.close(true, 0, b"bye");
        self.quic.flush();
    }

    /// Drops the connection silently (no CONNECTION_CLOSE), like a vanished mobile client.
    pub fn vanish(self) {}

    /// True once quiche considers the connection closed.
    pub fn is_closed(&self) -> bool {
        self.quic.conn.is_closed()
    }
}
