//! What every quiche test client shares, in memory or over a socket: its transport settings,
//! the reader that turns a signaling stream into server messages, and how a close is seen.

use mc::core::codec::{self, FrameDecoder};
use mc::core::protocol::ServerMessage;
use mc::quic::endpoint::{ALPN_H3, ALPN_MC};

/// First bidirectional client stream: native signaling.
pub const SIGNALING_STREAM: u64 = 0;

/// A test client's QUIC transport parameters.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// The one ALPN offered.
    pub alpn: Vec<u8>,
    /// `max_idle_timeout` in ms (0: none).
    pub idle_timeout_ms: u64,
    /// Connection-level flow-control window.
    pub max_data: u64,
    /// Receive window of the streams the client opens (small = a slow reader).
    pub stream_window: u64,
    /// Upper bound of the receive window's auto-tuning; `None` leaves quiche's default.
    pub max_stream_window: Option<u64>,
    /// Receive window of bidirectional streams the server opens.
    pub remote_stream_window: u64,
    /// Receive window of unidirectional streams; `None` = not set (0).
    pub uni_stream_window: Option<u64>,
    /// Streams of each kind the server may open.
    pub max_streams: u64,
    /// `active_connection_id_limit`; `None` leaves quiche's default.
    pub active_cids: Option<u64>,
    /// QUIC DATAGRAM support (WebTransport).
    pub datagrams: bool,
}

impl ClientSettings {
    /// A native signaling client (`mc/1`, 30 s idle timeout, 4 MiB stream window).
    pub fn signaling() -> Self {
        Self {
            alpn: ALPN_MC.to_vec(),
            idle_timeout_ms: 30_000,
            max_data: 8 << 20,
            stream_window: 4 << 20,
            max_stream_window: Some(4 << 20),
            remote_stream_window: 4 << 20,
            uni_stream_window: None,
            max_streams: 4,
            active_cids: Some(4),
            datagrams: false,
        }
    }

    /// A client with stream-level freedom offering `alpn`: 16 streams of each kind, 1 MiB
    /// windows (stray streams, wrong ALPNs, raw HTTP/3 frames).
    pub fn raw(alpn: &[u8]) -> Self {
        Self {
            alpn: alpn.to_vec(),
            idle_timeout_ms: 30_000,
            max_data: 8 << 20,
            stream_window: 1 << 20,
            max_stream_window: None,
            remote_stream_window: 1 << 20,
            uni_stream_window: Some(1 << 20),
            max_streams: 16,
            active_cids: None,
            datagrams: false,
        }
    }

    /// A WebTransport client: [`ClientSettings::raw`] with `h3` and QUIC datagrams.
    pub fn webtransport() -> Self {
        Self {
            datagrams: true,
            ..Self::raw(ALPN_H3)
        }
    }

    /// The same with a stream receive window of `window` bytes (and no auto-tuning above it).
    pub fn with_stream_window(mut self, window: u64) -> Self {
        self.stream_window = window;
        self.max_stream_window = Some(window);
        self
    }

    /// The quiche configuration (peer certificates are not verified).
    pub fn quiche_config(&self) -> quiche::Config {
        let mut cfg = quiche::Config::new(quiche::PROTOCOL_VERSION).expect("quiche config");
        cfg.set_application_protos(&[&self.alpn])
            .expect("valid ALPN");
        cfg.verify_peer(false);
        cfg.set_max_idle_timeout(self.idle_timeout_ms);
        cfg.set_max_recv_udp_payload_size(1350);
        cfg.set_max_send_udp_payload_size(1350);
        cfg.set_initial_max_data(self.max_data);
        cfg.set_initial_max_stream_data_bidi_local(self.stream_window);
        if let Some(w) = self.max_stream_window {
            cfg.set_max_stream_window(w);
        }
        cfg.set_initial_max_stream_data_bidi_remote(self.remote_stream_window);
        if let Some(w) = self.uni_stream_window {
            cfg.set_initial_max_stream_data_uni(w);
        }
        cfg.set_initial_max_streams_bidi(self.max_streams);
        cfg.set_initial_max_streams_uni(self.max_streams);
        if let Some(n) = self.active_cids {
            cfg.set_active_connection_id_limit(n);
        }
        if self.datagrams {
            cfg.enable_dgram(true, 16, 16);
        }
        cfg
    }
}

/// A random 16-byte source connection id.
pub fn random_scid() -> [u8; 16] {
    let mut scid = [0u8; 16];
    rand::Rng::fill(&mut rand::thread_rng(), &mut scid[..]);
    scid
}

/// Decodes every complete signaling frame of `bytes` (after what `decoder` holds) into `into`.
/// Panics if the server broke framing or sent a frame that is not a server message.
pub fn decode_frames(decoder: &mut FrameDecoder, bytes: &[u8], into: &mut Vec<ServerMessage>) {
    decoder.push(bytes);
    loop {
        match decoder.next_frame() {
            Ok(Some(body)) => {
                let m: ServerMessage =
                    codec::decode(body).unwrap_or_else(|e| panic!("server sent a bad frame: {e}"));
                into.push(m);
            }
            Ok(None) => return,
            Err(e) => panic!("server broke framing: {e}"),
        }
    }
}

/// Reads everything readable on `stream` and decodes its signaling frames into `into`; `buf`
/// is scratch space.
pub fn read_signaling(
    conn: &mut quiche::Connection,
    stream: u64,
    decoder: &mut FrameDecoder,
    into: &mut Vec<ServerMessage>,
    buf: &mut [u8],
) {
    while let Ok((n, _fin)) = conn.stream_recv(stream, buf) {
        decode_frames(decoder, &buf[..n], into);
        if n == 0 {
            break;
        }
    }
}

/// Removes and returns the first message `pred` matches.
pub fn take_first(
    received: &mut Vec<ServerMessage>,
    pred: impl Fn(&ServerMessage) -> bool,
) -> Option<ServerMessage> {
    let i = received.iter().position(pred)?;
    Some(received.remove(i))
}

/// How the server closed a client's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// Application close (`true`) or transport close.
    pub app: bool,
    /// Close code.
    pub code: u64,
}

/// How the peer closed `conn`, once it is closed or draining.
pub fn closed(conn: &quiche::Connection) -> Option<Closed> {
    if !conn.is_closed() && !conn.is_draining() {
        return None;
    }
    conn.peer_error().map(|e| Closed {
        app: e.is_app,
        code: e.error_code,
    })
}

/// The participant id of a `join_response`.
pub fn participant_id(m: &ServerMessage) -> String {
    match m {
        ServerMessage::JoinResponse { participant_id, .. } => participant_id.clone(),
        other => panic!("not a join_response: {other:?}"),
    }
}

/// A `join` of `meeting` with `token` as `name`: no request id, no resume, no capabilities.
pub fn join_message(meeting: &str, token: &str, name: &str) -> mc::core::protocol::ClientMessage {
    mc::core::protocol::ClientMessage::Join {
        meeting_id: meeting.into(),
        token: token.into(),
        display_name: name.into(),
        request_id: None,
        resume: None,
        capabilities: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_decode_in_order() {
        let mut bytes = codec::encode(&ServerMessage::Pong { id: 1 }).to_vec();
        bytes.extend_from_slice(&codec::encode(&ServerMessage::Pong { id: 2 }));
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for chunk in bytes.chunks(3) {
            decode_frames(&mut dec, chunk, &mut got);
        }
        assert_eq!(
            got,
            [ServerMessage::Pong { id: 1 }, ServerMessage::Pong { id: 2 }]
        );
        assert_eq!(
            take_first(&mut got, |m| matches!(m, ServerMessage::Pong { id: 2 })),
            Some(ServerMessage::Pong { id: 2 })
        );
        assert_eq!(got, [ServerMessage::Pong { id: 1 }]);
    }

    #[test]
    #[should_panic(expected = "server broke framing")]
    fn a_zero_length_frame_from_the_server_fails_the_test() {
        decode_frames(&mut FrameDecoder::new(), &[0, 0, 0, 0], &mut Vec::new());
    }

    #[test]
    fn every_profile_builds_a_quiche_configuration() {
        for s in [
            ClientSettings::signaling().with_stream_window(512),
            ClientSettings::webtransport(),
            ClientSettings::raw(b"h2"),
        ] {
            let _ = s.quiche_config();
        }
    }
}
