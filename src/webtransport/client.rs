//! The client side of an HTTP/3 connection that opens WebTransport sessions; used by the load
//! generator and tests. Sans-IO like [`H3Server`](super::H3Server): the caller moves stream
//! bytes between it and a QUIC connection.
//!
//! Flow: [`H3Client::connect`] sends an extended CONNECT on the next client bidirectional stream
//! (0 first) once the server's SETTINGS allow it; [`ClientEvent::SessionEstablished`] follows a
//! 2xx; [`H3Client::open_bidi_stream`] then opens a WebTransport stream (4 after a session on 0)
//! with the `0x41 | session id` prefix, and [`H3Client::send_stream_data`] writes its payload.

use std::collections::{BTreeMap, VecDeque};

use super::capsule::{self, Capsule, CapsuleDecoder};
use super::control::{self, Connection, Role, Transmit};
use super::error::{ErrorCode, H3Error};
use super::frame::{self, setting, FrameDecoder, FrameError, FrameItem, Settings};
use super::qpack::{self, QpackError};
use super::varint::{self, PartialVarint};

/// Limits of an [`H3Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Largest response field section accepted (advertised in SETTINGS).
    pub max_field_section_size: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_field_section_size: 16 * 1024,
        }
    }
}

/// Why a session was not established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The server answered with this non-2xx status.
    Status(u16),
    /// The server reset the CONNECT stream or ended it without a response.
    Reset,
    /// The server's SETTINGS do not offer extended CONNECT and WebTransport.
    Unsupported,
}

/// Something the caller must know or act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The server accepted the session with a 2xx response.
    SessionEstablished {
        /// Session id (the CONNECT stream id).
        session_id: u64,
    },
    /// The session was refused.
    SessionRejected {
        /// Session id.
        session_id: u64,
        /// How it was refused.
        reason: Rejection,
    },
    /// Payload of a WebTransport stream of an open session.
    StreamData {
        /// Session id.
        session_id: u64,
        /// QUIC stream id.
        stream_id: u64,
        /// Payload bytes (may be empty when only `fin` is news).
        data: Vec<u8>,
        /// The server finished its direction.
        fin: bool,
    },
    /// The server asked to wind the session down (DRAIN_WEBTRANSPORT_SESSION).
    SessionDraining {
        /// Session id.
        session_id: u64,
    },
    /// The server ended the session (capsule, FIN or reset of the CONNECT stream).
    SessionClosed {
        /// Session id.
        session_id: u64,
        /// Application error code (0 without a capsule).
        code: u32,
        /// Reason (empty without a capsule).
        reason: String,
    },
    /// Abort this stream in both directions that exist with `code`.
    ResetStream {
        /// QUIC stream id.
        stream_id: u64,
        /// HTTP/3 error code.
        code: ErrorCode,
    },
    /// The server sent GOAWAY: requests on streams from `stream_id` on will not be processed.
    GoAway {
        /// First unprocessed request stream id.
        stream_id: u64,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum SessionState {
    /// CONNECT held until the server's SETTINGS arrive.
    Held(Vec<u8>),
    /// CONNECT sent; waiting for the final response.
    Connecting,
    Open,
    Closed,
}

#[derive(Debug)]
struct Session {
    frames: FrameDecoder,
    capsules: CapsuleDecoder,
    state: SessionState,
    fin_sent: bool,
}

#[derive(Debug)]
enum WtState {
    /// A server-opened stream whose prefix is being read.
    Prefix(PartialVarint, bool),
    /// Belongs to this session.
    Open(u64),
    /// Dropped.
    Ignored,
}

/// Per-connection HTTP/3 + WebTransport client state machine.
#[derive(Debug)]
pub struct H3Client {
    cfg: ClientConfig,
    conn: Connection,
    next_bidi: u64,
    sessions: BTreeMap<u64, Session>,
    wt: BTreeMap<u64, WtState>,
    events: VecDeque<ClientEvent>,
}

impl H3Client {
    /// A client for one connection; queues the control stream (SETTINGS) and QPACK streams on
    /// client unidirectional streams 2, 6 and 10.
    pub fn new(cfg: ClientConfig) -> Self {
        let mut settings = Settings::new();
        settings
            .set(setting::QPACK_MAX_TABLE_CAPACITY, 0)
            .set(setting::QPACK_BLOCKED_STREAMS, 0)
            .set(
                setting::MAX_FIELD_SECTION_SIZE,
                cfg.max_field_section_size as u64,
            )
            .set(setting::H3_DATAGRAM, 1)
            .set(setting::H3_DATAGRAM_DRAFT04, 1)
            .set(setting::ENABLE_WEBTRANSPORT, 1)
            .set(setting::WEBTRANSPORT_MAX_SESSIONS, 1);
        let conn = Connection::new(Role::Client, &settings, cfg.max_field_section_size);
        Self {
            cfg,
            conn,
            next_bidi: 0,
            sessions: BTreeMap::new(),
            wt: BTreeMap::new(),
            events: VecDeque::new(),
        }
    }

    /// Next bytes to write, in order.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.conn.poll_transmit()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The server's SETTINGS, once received.
    pub fn peer_settings(&self) -> Option<&Settings> {
        self.conn.peer_settings()
    }

    /// The id in the server's latest GOAWAY, if any.
    pub fn peer_goaway(&self) -> Option<u64> {
        self.conn.peer_goaway()
    }

    /// Starts a WebTransport session: an extended CONNECT to `https://{authority}{path}`, sent
    /// once the server's SETTINGS allow it. Returns the session id (the request stream id).
    pub fn connect(&mut self, authority: &str, path: &str, origin: Option<&str>) -> u64 {
        let id = self.alloc_bidi();
        let mut fields = vec![
            (":method", "CONNECT"),
            (":protocol", "webtransport"),
            (":scheme", "https"),
            (":authority", authority),
            (":path", path),
        ];
        if let Some(origin) = origin {
            fields.push(("origin", origin));
        }
        fields.push(("sec-webtransport-http3-draft02", "1"));
        let mut block = Vec::with_capacity(128);
        qpack::encode_field_section(&fields, &mut block);
        let mut data = Vec::with_capacity(block.len() + 4);
        frame::encode_frame(frame::HEADERS, &block, &mut data);
        self.sessions.insert(
            id,
            Session {
                frames: FrameDecoder::new(self.cfg.max_field_section_size),
                capsules: CapsuleDecoder::new(),
                state: SessionState::Held(data),
                fin_sent: false,
            },
        );
        if self.conn.peer_settings().is_some() {
            self.release_held();
        }
        id
    }

    /// Opens a WebTransport bidirectional stream on an open session and queues its prefix.
    /// Returns the stream id, or `None` when the session is not open.
    pub fn open_bidi_stream(&mut self, session_id: u64) -> Option<u64> {
        if self.sessions.get(&session_id)?.state != SessionState::Open {
            return None;
        }
        let id = self.alloc_bidi();
        let mut prefix = Vec::with_capacity(10);
        varint::encode(frame::WEBTRANSPORT_STREAM, &mut prefix);
        varint::encode(session_id, &mut prefix);
        self.conn.push(id, prefix, false);
        self.wt.insert(id, WtState::Open(session_id));
        Some(id)
    }

    /// Queues payload on a WebTransport stream of an open session; false when the stream is
    /// unknown or its session is gone.
    pub fn send_stream_data(&mut self, stream_id: u64, data: &[u8], fin: bool) -> bool {
        if !matches!(self.wt.get(&stream_id), Some(WtState::Open(_))) {
            return false;
        }
        self.conn.push(stream_id, data.to_vec(), fin);
        true
    }

    /// Closes an open session: CLOSE_WEBTRANSPORT_SESSION and FIN on the CONNECT stream, and
    /// resets of its WebTransport streams. False when the session is not open.
    pub fn close_session(&mut self, session_id: u64, code: u32, reason: &str) -> bool {
        let Some(s) = self.sessions.get_mut(&session_id) else {
            return false;
        };
        if s.state != SessionState::Open {
            return false;
        }
        s.state = SessionState::Closed;
        s.fin_sent = true;
        let mut caps = Vec::new();
        capsule::encode_close(code, reason, &mut caps);
        let mut data = Vec::with_capacity(caps.len() + 4);
        frame::encode_frame(frame::DATA, &caps, &mut data);
        self.conn.push(session_id, data, true);
        self.end_session(session_id);
        true
    }

    /// Handles bytes read from a stream. An error is a connection error.
    pub fn on_stream_data(
        &mut self,
        stream_id: u64,
        data: &[u8],
        fin: bool,
    ) -> Result<(), H3Error> {
        if !control::is_bidi(stream_id) {
            if control::is_client_initiated(stream_id) {
                return Ok(());
            }
            let out = self.conn.on_uni_data(stream_id, data, fin)?;
            if let Some(code) = out.abort {
                self.events
                    .push_back(ClientEvent::ResetStream { stream_id, code });
            }
            if let Some(id) = out.goaway {
                self.events.push_back(ClientEvent::GoAway { stream_id: id });
            }
            if out.settings_arrived {
                self.release_held();
            }
            return Ok(());
        }
        if self.sessions.contains_key(&stream_id) {
            return self.session_data(stream_id, data, fin);
        }
        if control::is_client_initiated(stream_id) {
            if let Some(WtState::Open(session_id)) = self.wt.get(&stream_id) {
                if !data.is_empty() || fin {
                    self.events.push_back(ClientEvent::StreamData {
                        session_id: *session_id,
                        stream_id,
                        data: data.to_vec(),
                        fin,
                    });
                }
            }
            return Ok(());
        }
        self.server_bidi_data(stream_id, data, fin)
    }

    /// The server reset a stream or asked us to stop sending on it.
    pub fn on_stream_reset(&mut self, stream_id: u64) -> Result<(), H3Error> {
        if !control::is_bidi(stream_id) {
            if control::is_client_initiated(stream_id) {
                // STOP_SENDING on one of our streams: control and QPACK streams are critical.
                return if stream_id <= 10 {
                    Err(H3Error::new(
                        ErrorCode::H3_CLOSED_CRITICAL_STREAM,
                        "critical stream stopped",
                    ))
                } else {
                    Ok(())
                };
            }
            return self.conn.on_uni_reset(stream_id);
        }
        if let Some(s) = self.sessions.get_mut(&stream_id) {
            match std::mem::replace(&mut s.state, SessionState::Closed) {
                SessionState::Connecting | SessionState::Held(_) => {
                    self.events.push_back(ClientEvent::SessionRejected {
                        session_id: stream_id,
                        reason: Rejection::Reset,
                    });
                }
                SessionState::Open => {
                    self.events.push_back(ClientEvent::SessionClosed {
                        session_id: stream_id,
                        code: 0,
                        reason: String::new(),
                    });
                    self.end_session(stream_id);
                }
                SessionState::Closed => {}
            }
            return Ok(());
        }
        self.wt.remove(&stream_id);
        Ok(())
    }

    fn alloc_bidi(&mut self) -> u64 {
        let id = self.next_bidi;
        self.next_bidi += 4;
        id
    }

    fn release_held(&mut self) {
        let ok = self
            .conn
            .peer_settings()
            .is_some_and(|s| s.enables_connect_protocol() && s.supports_webtransport());
        for (&id, s) in self.sessions.iter_mut() {
            if let SessionState::Held(_) = s.state {
                let SessionState::Held(data) =
                    std::mem::replace(&mut s.state, SessionState::Connecting)
                else {
                    continue;
                };
                if ok {
                    self.conn.push(id, data, false);
                } else {
                    s.state = SessionState::Closed;
                    self.events.push_back(ClientEvent::SessionRejected {
                        session_id: id,
                        reason: Rejection::Unsupported,
                    });
                }
            }
        }
    }

    fn session_data(&mut self, id: u64, mut data: &[u8], fin: bool) -> Result<(), H3Error> {
        let Some(mut s) = self.sessions.remove(&id) else {
            return Ok(());
        };
        let result = self.session_frames(id, &mut s, &mut data, fin);
        self.sessions.insert(id, s);
        result
    }

    fn session_frames(
        &mut self,
        id: u64,
        s: &mut Session,
        data: &mut &[u8],
        fin: bool,
    ) -> Result<(), H3Error> {
        while s.state != SessionState::Closed {
            let item = match s.frames.next(data) {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(FrameError::TooLarge { .. }) => {
                    self.abort_session(id, s, ErrorCode::H3_EXCESSIVE_LOAD);
                    return Ok(());
                }
                Err(FrameError::Invalid(e)) => return Err(e),
            };
            match item {
                FrameItem::Headers(block) if s.state == SessionState::Connecting => {
                    let fields = match qpack::decode_field_section(
                        &block,
                        self.cfg.max_field_section_size,
                    ) {
                        Ok(f) => f,
                        Err(QpackError::TooLarge) => {
                            self.abort_session(id, s, ErrorCode::H3_EXCESSIVE_LOAD);
                            return Ok(());
                        }
                        Err(e) => return Err(e.into_connection_error()),
                    };
                    let status = match fields.first() {
                        Some(f) if f.name == b":status" && f.value.len() == 3 => {
                            std::str::from_utf8(&f.value)
                                .ok()
                                .and_then(|v| v.parse::<u16>().ok())
                                .filter(|v| (100..=599).contains(v))
                        }
                        _ => None,
                    };
                    match status {
                        None => {
                            self.abort_session(id, s, ErrorCode::H3_MESSAGE_ERROR);
                            return Ok(());
                        }
                        Some(100..=199) => {} // interim response
                        Some(200..=299) => {
                            s.state = SessionState::Open;
                            self.events
                                .push_back(ClientEvent::SessionEstablished { session_id: id });
                        }
                        Some(code) => {
                            s.state = SessionState::Closed;
                            self.events.push_back(ClientEvent::SessionRejected {
                                session_id: id,
                                reason: Rejection::Status(code),
                            });
                        }
                    }
                }
                FrameItem::Headers(_) => {} // trailers
                FrameItem::DataStart { .. } | FrameItem::Data(_)
                    if s.state == SessionState::Connecting =>
                {
                    return Err(H3Error::new(
                        ErrorCode::H3_FRAME_UNEXPECTED,
                        "DATA before HEADERS",
                    ));
                }
                FrameItem::DataStart { .. } => {}
                FrameItem::Data(mut chunk) => loop {
                    match s.capsules.next(&mut chunk) {
                        Ok(None) => break,
                        Ok(Some(Capsule::DrainSession)) => {
                            self.events
                                .push_back(ClientEvent::SessionDraining { session_id: id });
                        }
                        Ok(Some(Capsule::CloseSession { code, reason })) => {
                            self.server_closed(id, s, code, reason);
                            break;
                        }
                        Err(_) => {
                            self.abort_session(id, s, ErrorCode::H3_MESSAGE_ERROR);
                            return Ok(());
                        }
                    }
                },
                FrameItem::WebTransportStream => {
                    return Err(H3Error::new(
                        ErrorCode::H3_FRAME_ERROR,
                        "WEBTRANSPORT_STREAM inside a request stream",
                    ));
                }
                FrameItem::Unexpected(frame::PUSH_PROMISE) => {
                    return Err(H3Error::new(
                        ErrorCode::H3_ID_ERROR,
                        "PUSH_PROMISE without MAX_PUSH_ID",
                    ));
                }
                FrameItem::Settings(_)
                | FrameItem::Goaway(_)
                | FrameItem::MaxPushId(_)
                | FrameItem::CancelPush(_)
                | FrameItem::Unexpected(_) => {
                    return Err(H3Error::new(
                        ErrorCode::H3_FRAME_UNEXPECTED,
                        "frame not allowed on a request stream",
                    ));
                }
            }
        }
        if fin && s.state != SessionState::Closed {
            if !s.frames.is_idle() {
                return Err(H3Error::new(
                    ErrorCode::H3_FRAME_ERROR,
                    "request stream ended inside a frame",
                ));
            }
            if s.state == SessionState::Open {
                self.server_closed(id, s, 0, String::new());
            } else {
                s.state = SessionState::Closed;
                self.events.push_back(ClientEvent::SessionRejected {
                    session_id: id,
                    reason: Rejection::Reset,
                });
            }
        }
        Ok(())
    }

    fn server_closed(&mut self, id: u64, s: &mut Session, code: u32, reason: String) {
        s.state = SessionState::Closed;
        self.events.push_back(ClientEvent::SessionClosed {
            session_id: id,
            code,
            reason,
        });
        if !s.fin_sent {
            s.fin_sent = true;
            self.conn.push(id, Vec::new(), true);
        }
        self.end_session(id);
    }

    fn abort_session(&mut self, id: u64, s: &mut Session, code: ErrorCode) {
        match std::mem::replace(&mut s.state, SessionState::Closed) {
            SessionState::Open => self.events.push_back(ClientEvent::SessionClosed {
                session_id: id,
                code: 0,
                reason: String::new(),
            }),
            _ => self.events.push_back(ClientEvent::SessionRejected {
                session_id: id,
                reason: Rejection::Reset,
            }),
        }
        s.fin_sent = true;
        self.events.push_back(ClientEvent::ResetStream {
            stream_id: id,
            code,
        });
        self.end_session(id);
    }

    fn end_session(&mut self, session_id: u64) {
        let ids: Vec<u64> = self
            .wt
            .iter()
            .filter(|(_, w)| matches!(w, WtState::Open(s) if *s == session_id))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.wt.remove(&id);
            self.events.push_back(ClientEvent::ResetStream {
                stream_id: id,
                code: ErrorCode::WEBTRANSPORT_SESSION_GONE,
            });
        }
    }

    /// A server-initiated bidirectional stream: only WebTransport streams are allowed.
    fn server_bidi_data(
        &mut self,
        stream_id: u64,
        mut data: &[u8],
        fin: bool,
    ) -> Result<(), H3Error> {
        let state = self
            .wt
            .remove(&stream_id)
            .unwrap_or_else(|| WtState::Prefix(PartialVarint::default(), false));
        let state = match state {
            WtState::Prefix(mut partial, mut signal_seen) => loop {
                match partial.feed(&mut data) {
                    None => break WtState::Prefix(partial, signal_seen),
                    Some(frame::WEBTRANSPORT_STREAM) if !signal_seen => signal_seen = true,
                    Some(session) if signal_seen => break self.server_wt_open(stream_id, session),
                    Some(_) => {
                        return Err(H3Error::new(
                            ErrorCode::H3_STREAM_CREATION_ERROR,
                            "server-initiated bidirectional stream that is not WebTransport",
                        ));
                    }
                }
            },
            other => other,
        };
        if let WtState::Open(session_id) = state {
            if !data.is_empty() || fin {
                self.events.push_back(ClientEvent::StreamData {
                    session_id,
                    stream_id,
                    data: data.to_vec(),
                    fin,
                });
            }
        }
        if !fin {
            self.wt.insert(stream_id, state);
        }
        Ok(())
    }

    fn server_wt_open(&mut self, stream_id: u64, session_id: u64) -> WtState {
        if self
            .sessions
            .get(&session_id)
            .is_some_and(|s| s.state == SessionState::Open)
        {
            WtState::Open(session_id)
        } else {
            self.events.push_back(ClientEvent::ResetStream {
                stream_id,
                code: ErrorCode::WEBTRANSPORT_BUFFERED_STREAM_REJECTED,
            });
            WtState::Ignored
        }
    }
}
