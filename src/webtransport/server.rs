//! The server side of one HTTP/3 connection that serves WebTransport sessions.
//!
//! Sans-IO: the QUIC adapter feeds it every stream's bytes ([`H3Server::on_stream_data`],
//! [`H3Server::on_stream_reset`]), writes whatever [`H3Server::poll_transmit`] returns, and acts
//! on [`H3Server::poll_event`]. No sockets, no quiche types, no clock.

use std::collections::{BTreeMap, VecDeque};

use crate::core::ids::MeetingId;

use super::capsule::{self, Capsule, CapsuleDecoder};
use super::control::{self, Connection, Role, Transmit};
use super::error::{ErrorCode, H3Error};
use super::frame::{self, setting, FrameDecoder, FrameError, FrameItem, Settings};
use super::qpack::{self, Field, QpackError};
use super::varint::{self, PartialVarint};

/// The path prefix of meeting sessions: `/meetings/{meeting_id}`.
pub const MEETINGS_PATH: &str = "/meetings/";
/// Response header Chrome requires when it negotiated draft-02 semantics.
pub const DRAFT_HEADER: (&str, &str) = ("sec-webtransport-http3-draft", "draft02");

/// Limits and policy of an [`H3Server`].
#[derive(Debug, Clone)]
pub struct H3Config {
    /// Origins allowed to open sessions (`scheme://host[:port]`, compared ASCII
    /// case-insensitively); `None` allows any. A request without an `origin` header (a
    /// non-browser client) is allowed either way: browsers always send one.
    pub allowed_origins: Option<Vec<String>>,
    /// Concurrent WebTransport sessions per connection (advertised in SETTINGS).
    pub max_sessions: u32,
    /// Largest field section accepted, encoded or decoded (advertised in SETTINGS).
    pub max_field_section_size: usize,
    /// Concurrent request streams per connection; more are refused with H3_REQUEST_REJECTED.
    pub max_requests: usize,
    /// WebTransport streams held while their session is not (yet) accepted.
    pub max_buffered_streams: usize,
    /// Bytes held per such stream.
    pub max_buffered_bytes: usize,
    /// WebTransport streams a session may open over its lifetime.
    pub max_streams_per_session: usize,
}

impl Default for H3Config {
    fn default() -> Self {
        Self {
            allowed_origins: None,
            max_sessions: 1,
            max_field_section_size: 16 * 1024,
            max_requests: 16,
            max_buffered_streams: 8,
            max_buffered_bytes: 64 * 1024,
            max_streams_per_session: 16,
        }
    }
}

/// Something the adapter must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum H3Event {
    /// A valid extended CONNECT for a meeting. Answer with [`H3Server::accept_session`] or
    /// [`H3Server::reject_session`]; WebTransport streams that arrive meanwhile are held.
    SessionRequested {
        /// Session id (the CONNECT stream id).
        session_id: u64,
        /// The meeting named by the path.
        meeting_id: MeetingId,
        /// The `:path` as sent (query included).
        path: String,
        /// The `:authority`.
        authority: String,
        /// The `origin` header, if any (already checked against the allowed origins).
        origin: Option<String>,
    },
    /// Payload of a WebTransport bidirectional stream of an accepted session, after the
    /// `0x41 | session id` prefix. `fin` ends the peer's direction.
    StreamData {
        /// Session the stream belongs to.
        session_id: u64,
        /// QUIC stream id.
        stream_id: u64,
        /// Payload bytes (may be empty when only `fin` is news).
        data: Vec<u8>,
        /// The peer finished its direction.
        fin: bool,
    },
    /// The peer ended a session (CLOSE_WEBTRANSPORT_SESSION, FIN or reset of the CONNECT stream).
    SessionClosed {
        /// Session id.
        session_id: u64,
        /// Application error code (0 without a capsule).
        code: u32,
        /// Reason (empty without a capsule).
        reason: String,
    },
    /// Abort this stream in both directions that exist (RESET_STREAM and STOP_SENDING on a
    /// bidirectional stream, STOP_SENDING on a peer unidirectional stream) with `code`.
    ResetStream {
        /// QUIC stream id.
        stream_id: u64,
        /// HTTP/3 error code.
        code: ErrorCode,
    },
}

#[derive(Debug)]
struct SessionRequest {
    meeting_id: MeetingId,
    path: String,
    authority: String,
    origin: Option<String>,
}

#[derive(Debug)]
enum ReqState {
    /// Waiting for the request HEADERS.
    Headers,
    /// A WebTransport request that arrived before the peer's SETTINGS.
    AwaitingSettings(SessionRequest),
    /// `SessionRequested` emitted; the adapter decides.
    Pending,
    /// 200 sent; capsules flow on the stream.
    Accepted,
    /// Answered, rejected or closed: further peer bytes are dropped.
    Done { was_session: bool },
}

#[derive(Debug)]
struct Request {
    frames: FrameDecoder,
    capsules: CapsuleDecoder,
    state: ReqState,
    fin_sent: bool,
    fin_received: bool,
}

#[derive(Debug)]
struct WtStream {
    session_id: u64,
    /// Payload held until the session is accepted.
    held: Vec<u8>,
    fin_received: bool,
    /// The session was accepted and data flows as events.
    flowing: bool,
}

#[derive(Debug)]
enum Bidi {
    /// The first varint (frame type or WebTransport signal) is incomplete.
    Start(Vec<u8>),
    /// WEBTRANSPORT_STREAM seen; reading the session id.
    WtPrefix(PartialVarint),
    Request(Box<Request>),
    Wt(WtStream),
    /// Aborted: bytes are dropped until the stream ends.
    Ignored,
}

/// Per-connection HTTP/3 + WebTransport server state machine.
#[derive(Debug)]
pub struct H3Server {
    cfg: H3Config,
    conn: Connection,
    streams: BTreeMap<u64, Bidi>,
    /// Request streams that ended, newest last, with whether they carried a session.
    retired: VecDeque<(u64, bool)>,
    events: VecDeque<H3Event>,
    goaway: Option<u64>,
    next_request_id: u64,
}

const RETIRED_MEMORY: usize = 64;

impl H3Server {
    /// A server for one connection; queues the control stream (SETTINGS) and QPACK streams.
    pub fn new(cfg: H3Config) -> Self {
        let mut settings = Settings::new();
        settings
            .set(setting::QPACK_MAX_TABLE_CAPACITY, 0)
            .set(setting::QPACK_BLOCKED_STREAMS, 0)
            .set(
                setting::MAX_FIELD_SECTION_SIZE,
                cfg.max_field_section_size as u64,
            )
            .set(setting::ENABLE_CONNECT_PROTOCOL, 1)
            .set(setting::H3_DATAGRAM, 1)
            .set(setting::H3_DATAGRAM_DRAFT04, 1)
            .set(setting::ENABLE_WEBTRANSPORT, 1)
            .set(
                setting::WEBTRANSPORT_MAX_SESSIONS,
                u64::from(cfg.max_sessions.max(1)),
            );
        let conn = Connection::new(Role::Server, &settings, cfg.max_field_section_size);
        Self {
            cfg,
            conn,
            streams: BTreeMap::new(),
            retired: VecDeque::new(),
            events: VecDeque::new(),
            goaway: None,
            next_request_id: 0,
        }
    }

    /// Next bytes to write. The first three open our control (3), QPACK encoder (7) and QPACK
    /// decoder (11) streams; later ones carry responses, capsules and FINs.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.conn.poll_transmit()
    }

    /// Next event for the adapter.
    pub fn poll_event(&mut self) -> Option<H3Event> {
        self.events.pop_front()
    }

    /// The peer's SETTINGS, once received.
    pub fn peer_settings(&self) -> Option<&Settings> {
        self.conn.peer_settings()
    }

    /// Handles bytes read from a peer stream (every stream of the connection goes through here).
    ///
    /// An error is a connection error: close the QUIC connection with its code.
    pub fn on_stream_data(
        &mut self,
        stream_id: u64,
        data: &[u8],
        fin: bool,
    ) -> Result<(), H3Error> {
        if !control::is_client_initiated(stream_id) {
            // We open no bidirectional streams, and our unidirectional ones carry nothing inbound.
            return Ok(());
        }
        if !control::is_bidi(stream_id) {
            let out = self.conn.on_uni_data(stream_id, data, fin)?;
            if let Some(code) = out.abort {
                self.reset(stream_id, code);
            }
            if out.settings_arrived {
                self.settings_arrived();
            }
            return Ok(());
        }
        self.on_bidi_data(stream_id, data, fin)
    }

    /// The peer reset its sending side of a stream (RESET_STREAM) or asked us to stop sending
    /// (STOP_SENDING). An error means a critical stream went away: close the connection.
    pub fn on_stream_reset(&mut self, stream_id: u64) -> Result<(), H3Error> {
        if !control::is_client_initiated(stream_id) {
            return Ok(());
        }
        if !control::is_bidi(stream_id) {
            return self.conn.on_uni_reset(stream_id);
        }
        if let Some(Bidi::Request(req)) = self.streams.remove(&stream_id) {
            let was_session = match req.state {
                ReqState::Pending | ReqState::Accepted => {
                    self.events.push_back(H3Event::SessionClosed {
                        session_id: stream_id,
                        code: 0,
                        reason: String::new(),
                    });
                    self.end_session(stream_id, ErrorCode::WEBTRANSPORT_SESSION_GONE);
                    if !req.fin_sent {
                        self.reset(stream_id, ErrorCode::H3_REQUEST_CANCELLED);
                    }
                    true
                }
                ReqState::Done { was_session } => was_session,
                ReqState::Headers | ReqState::AwaitingSettings(_) => {
                    self.end_session(stream_id, ErrorCode::WEBTRANSPORT_BUFFERED_STREAM_REJECTED);
                    false
                }
            };
            self.retire(stream_id, was_session);
        }
        Ok(())
    }

    /// Accepts a requested session: queues `200` with the draft header and releases the
    /// WebTransport streams held for it. Returns false (and does nothing) when the session is no
    /// longer pending, e.g. because the peer already gave up.
    pub fn accept_session(&mut self, session_id: u64) -> bool {
        let Some(Bidi::Request(req)) = self.streams.get_mut(&session_id) else {
            return false;
        };
        if !matches!(req.state, ReqState::Pending) {
            return false;
        }
        req.state = ReqState::Accepted;
        let mut block = Vec::with_capacity(48);
        qpack::encode_field_section(&[(":status", "200"), DRAFT_HEADER], &mut block);
        let mut data = Vec::with_capacity(block.len() + 4);
        frame::encode_frame(frame::HEADERS, &block, &mut data);
        self.conn.push(session_id, data, false);
        for (&stream_id, stream) in self.streams.iter_mut() {
            if let Bidi::Wt(wt) = stream {
                if wt.session_id == session_id && !wt.flowing {
                    wt.flowing = true;
                    if !wt.held.is_empty() || wt.fin_received {
                        self.events.push_back(H3Event::StreamData {
                            session_id,
                            stream_id,
                            data: std::mem::take(&mut wt.held),
                            fin: wt.fin_received,
                        });
                    }
                }
            }
        }
        true
    }

    /// Rejects a requested session with an HTTP status (4xx/5xx; anything else becomes 500) and
    /// FIN, and refuses the WebTransport streams held for it. Returns false when the session is
    /// no longer pending.
    pub fn reject_session(&mut self, session_id: u64, status: u16) -> bool {
        let Some(Bidi::Request(req)) = self.streams.get_mut(&session_id) else {
            return false;
        };
        if !matches!(req.state, ReqState::Pending) {
            return false;
        }
        req.state = ReqState::Done { was_session: false };
        req.fin_sent = true;
        let fin_received = req.fin_received;
        let status = if (400..=599).contains(&status) {
            status
        } else {
            500
        };
        self.respond(session_id, status, true);
        self.end_session(session_id, ErrorCode::WEBTRANSPORT_BUFFERED_STREAM_REJECTED);
        if fin_received {
            self.streams.remove(&session_id);
            self.retire(session_id, false);
        }
        true
    }

    /// Closes an accepted session: queues CLOSE_WEBTRANSPORT_SESSION and FIN on the CONNECT
    /// stream, and asks for its WebTransport streams to be reset with WEBTRANSPORT_SESSION_GONE.
    /// Returns false when the session is not open.
    ///
    /// To make a final signaling frame reach the peer, write it and FIN the WebTransport stream,
    /// and call this once it is acknowledged (or after a short grace period).
    pub fn close_session(&mut self, session_id: u64, code: u32, reason: &str) -> bool {
        let Some(Bidi::Request(req)) = self.streams.get_mut(&session_id) else {
            return false;
        };
        if !matches!(req.state, ReqState::Accepted) {
            return false;
        }
        req.state = ReqState::Done { was_session: true };
        req.fin_sent = true;
        let fin_received = req.fin_received;
        let mut caps = Vec::with_capacity(16 + reason.len().min(capsule::MAX_CLOSE_REASON));
        capsule::encode_close(code, reason, &mut caps);
        let mut data = Vec::with_capacity(caps.len() + 4);
        frame::encode_frame(frame::DATA, &caps, &mut data);
        self.conn.push(session_id, data, true);
        self.end_session(session_id, ErrorCode::WEBTRANSPORT_SESSION_GONE);
        if fin_received {
            self.streams.remove(&session_id);
            self.retire(session_id, true);
        }
        true
    }

    /// Asks the peer to wind an accepted session down (DRAIN_WEBTRANSPORT_SESSION). Returns false
    /// when the session is not open.
    pub fn drain_session(&mut self, session_id: u64) -> bool {
        let Some(Bidi::Request(req)) = self.streams.get(&session_id) else {
            return false;
        };
        if !matches!(req.state, ReqState::Accepted) {
            return false;
        }
        let mut caps = Vec::with_capacity(5);
        capsule::encode_drain(&mut caps);
        let mut data = Vec::with_capacity(8);
        frame::encode_frame(frame::DATA, &caps, &mut data);
        self.conn.push(session_id, data, false);
        true
    }

    /// Sends GOAWAY: requests on streams not yet seen are refused from now on (graceful
    /// shutdown). Sessions already requested or open carry on.
    pub fn send_goaway(&mut self) {
        let id = self.next_request_id.min(self.goaway.unwrap_or(u64::MAX));
        self.goaway = Some(id);
        self.conn.send_goaway(id);
    }

    fn on_bidi_data(&mut self, stream_id: u64, mut data: &[u8], fin: bool) -> Result<(), H3Error> {
        let stream = match self.streams.remove(&stream_id) {
            Some(s) => s,
            None if self.retired.iter().any(|(id, _)| *id == stream_id) => return Ok(()),
            None => Bidi::Start(Vec::new()),
        };
        let stream = match stream {
            Bidi::Start(mut buf) => {
                // Read the first varint whole: 0x41 opens a WebTransport stream, anything else is
                // the first frame type of a request.
                let need = buf
                    .first()
                    .or(data.first())
                    .map_or(1, |b| 1usize << (b >> 6));
                let take = (need - buf.len()).min(data.len());
                buf.extend_from_slice(&data[..take]);
                data = &data[take..];
                match varint::decode(&buf) {
                    None => {
                        if !fin {
                            self.streams.insert(stream_id, Bidi::Start(buf));
                        }
                        return Ok(());
                    }
                    Some((frame::WEBTRANSPORT_STREAM, _)) => {
                        Bidi::WtPrefix(PartialVarint::default())
                    }
                    Some(_) => match self.open_request(stream_id) {
                        Some(mut req) => {
                            let mut prefix = &buf[..];
                            self.request_data(stream_id, &mut req, &mut prefix, false)?;
                            Bidi::Request(req)
                        }
                        None => Bidi::Ignored,
                    },
                }
            }
            other => other,
        };
        let keep = match stream {
            Bidi::Start(_) => unreachable!("handled above"),
            Bidi::WtPrefix(mut partial) => match partial.feed(&mut data) {
                None if fin => None,
                None => Some(Bidi::WtPrefix(partial)),
                Some(session_id) => self.open_wt(stream_id, session_id, data, fin)?,
            },
            Bidi::Wt(mut wt) => {
                if self.wt_data(stream_id, &mut wt, data, fin) {
                    Some(Bidi::Wt(wt))
                } else {
                    (!fin).then_some(Bidi::Ignored)
                }
            }
            Bidi::Request(mut req) => {
                self.request_data(stream_id, &mut req, &mut data, fin)?;
                self.request_after(stream_id, req, fin)
            }
            Bidi::Ignored => (!fin).then_some(Bidi::Ignored),
        };
        if let Some(s) = keep {
            self.streams.insert(stream_id, s);
        }
        Ok(())
    }

    /// Admission of a new request stream; `None` when it was refused.
    fn open_request(&mut self, stream_id: u64) -> Option<Box<Request>> {
        self.next_request_id = self.next_request_id.max(stream_id + 4);
        let live = self
            .streams
            .values()
            .filter(|s| matches!(s, Bidi::Request(_)))
            .count();
        if self.goaway.is_some_and(|g| stream_id >= g) || live >= self.cfg.max_requests {
            self.reset(stream_id, ErrorCode::H3_REQUEST_REJECTED);
            return None;
        }
        Some(Box::new(Request {
            frames: FrameDecoder::new(self.cfg.max_field_section_size),
            capsules: CapsuleDecoder::new(),
            state: ReqState::Headers,
            fin_sent: false,
            fin_received: false,
        }))
    }

    fn request_data(
        &mut self,
        stream_id: u64,
        req: &mut Request,
        data: &mut &[u8],
        fin: bool,
    ) -> Result<(), H3Error> {
        loop {
            if matches!(req.state, ReqState::Done { .. }) {
                return Ok(());
            }
            let item = match req.frames.next(data) {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(FrameError::TooLarge { .. }) => {
                    self.abort_request(stream_id, req, ErrorCode::H3_EXCESSIVE_LOAD);
                    return Ok(());
                }
                Err(FrameError::Invalid(e)) => return Err(e),
            };
            match item {
                FrameItem::Headers(block) => {
                    if matches!(req.state, ReqState::Headers) {
                        self.request_headers(stream_id, req, &block)?;
                    }
                    // A later HEADERS is a trailer section: nothing in it matters here.
                }
                FrameItem::DataStart { .. } | FrameItem::Data(_)
                    if matches!(req.state, ReqState::Headers) =>
                {
                    return Err(H3Error::new(
                        ErrorCode::H3_FRAME_UNEXPECTED,
                        "DATA before HEADERS",
                    ));
                }
                FrameItem::DataStart { .. } => {}
                FrameItem::Data(mut chunk) => loop {
                    match req.capsules.next(&mut chunk) {
                        Ok(None) => break,
                        Ok(Some(Capsule::DrainSession)) => {}
                        Ok(Some(Capsule::CloseSession { code, reason })) => {
                            self.peer_closed(stream_id, req, code, reason);
                            break;
                        }
                        Err(_) => {
                            self.abort_request(stream_id, req, ErrorCode::H3_MESSAGE_ERROR);
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
        if fin && !req.frames.is_idle() {
            return Err(H3Error::new(
                ErrorCode::H3_FRAME_ERROR,
                "request stream ended inside a frame",
            ));
        }
        Ok(())
    }

    /// Bookkeeping after request bytes: the peer's FIN, and whether to keep the stream.
    fn request_after(&mut self, stream_id: u64, mut req: Box<Request>, fin: bool) -> Option<Bidi> {
        if fin {
            req.fin_received = true;
            match std::mem::replace(&mut req.state, ReqState::Done { was_session: false }) {
                ReqState::Headers => {
                    self.reset(stream_id, ErrorCode::H3_REQUEST_INCOMPLETE);
                    req.fin_sent = true;
                    self.end_session(stream_id, ErrorCode::WEBTRANSPORT_BUFFERED_STREAM_REJECTED);
                }
                ReqState::AwaitingSettings(_) => {
                    self.reset(stream_id, ErrorCode::H3_REQUEST_CANCELLED);
                    req.fin_sent = true;
                    self.end_session(stream_id, ErrorCode::WEBTRANSPORT_BUFFERED_STREAM_REJECTED);
                }
                ReqState::Pending | ReqState::Accepted => {
                    self.peer_closed(stream_id, &mut req, 0, String::new());
                }
                done @ ReqState::Done { .. } => req.state = done,
            }
        }
        if req.fin_received && req.fin_sent {
            let was_session = matches!(req.state, ReqState::Done { was_session: true });
            self.retire(stream_id, was_session);
            return None;
        }
        Some(Bidi::Request(req))
    }

    fn request_headers(
        &mut self,
        stream_id: u64,
        req: &mut Request,
        block: &[u8],
    ) -> Result<(), H3Error> {
        let fields = match qpack::decode_field_section(block, self.cfg.max_field_section_size) {
            Ok(f) => f,
            Err(QpackError::TooLarge) => {
                self.abort_request(stream_id, req, ErrorCode::H3_EXCESSIVE_LOAD);
                return Ok(());
            }
            Err(e @ QpackError::Decompression(_)) => return Err(e.into_connection_error()),
        };
        match classify(&fields, &self.cfg) {
            Verdict::Malformed => self.abort_request(stream_id, req, ErrorCode::H3_MESSAGE_ERROR),
            Verdict::Respond(status) => {
                self.respond(stream_id, status, true);
                req.fin_sent = true;
                req.state = ReqState::Done { was_session: false };
                self.end_session(stream_id, ErrorCode::WEBTRANSPORT_BUFFERED_STREAM_REJECTED);
            }
            Verdict::Session(request) => {
                let sessions = self
                    .streams
                    .values()
                    .filter(|s| {
                        matches!(
                            s,
                            Bidi::Request(r) if matches!(
                                r.state,
                                ReqState::AwaitingSettings(_) | ReqState::Pending | ReqState::Accepted
                            )
                        )
                    })
                    .count();
                if sessions >= self.cfg.max_sessions as usize {
                    self.abort_request(stream_id, req, ErrorCode::H3_REQUEST_REJECTED);
                } else if self.conn.peer_settings().is_none() {
                    // draft-ietf-webtrans-http3: no WebTransport request is processed before
                    // the client's SETTINGS.
                    req.state = ReqState::AwaitingSettings(request);
                } else {
                    req.state = ReqState::Pending;
                    self.emit_requested(stream_id, request);
                }
            }
        }
        Ok(())
    }

    fn settings_arrived(&mut self) {
        let mut ready = Vec::new();
        for (&id, stream) in self.streams.iter_mut() {
            if let Bidi::Request(req) = stream {
                if matches!(req.state, ReqState::AwaitingSettings(_)) {
                    if let ReqState::AwaitingSettings(r) =
                        std::mem::replace(&mut req.state, ReqState::Pending)
                    {
                        ready.push((id, r));
                    }
                }
            }
        }
        for (id, r) in ready {
            self.emit_requested(id, r);
        }
    }

    fn emit_requested(&mut self, session_id: u64, r: SessionRequest) {
        self.events.push_back(H3Event::SessionRequested {
            session_id,
            meeting_id: r.meeting_id,
            path: r.path,
            authority: r.authority,
            origin: r.origin,
        });
    }

    /// The peer ended the session (capsule or FIN): report it, end our side, drop its streams.
    fn peer_closed(&mut self, stream_id: u64, req: &mut Request, code: u32, reason: String) {
        self.events.push_back(H3Event::SessionClosed {
            session_id: stream_id,
            code,
            reason,
        });
        req.state = ReqState::Done { was_session: true };
        if !req.fin_sent {
            req.fin_sent = true;
            self.conn.push(stream_id, Vec::new(), true);
        }
        self.end_session(stream_id, ErrorCode::WEBTRANSPORT_SESSION_GONE);
    }

    /// Stream error on a request stream: reset it and refuse anything tied to it.
    fn abort_request(&mut self, stream_id: u64, req: &mut Request, code: ErrorCode) {
        let was_session = matches!(req.state, ReqState::Pending | ReqState::Accepted);
        if was_session {
            self.events.push_back(H3Event::SessionClosed {
                session_id: stream_id,
                code: 0,
                reason: String::new(),
            });
        }
        self.reset(stream_id, code);
        req.state = ReqState::Done { was_session };
        req.fin_sent = true;
        req.fin_received = true;
        let code = if was_session {
            ErrorCode::WEBTRANSPORT_SESSION_GONE
        } else {
            ErrorCode::WEBTRANSPORT_BUFFERED_STREAM_REJECTED
        };
        self.end_session(stream_id, code);
    }

    /// Resets every WebTransport stream of `session_id` with `code` and forgets them.
    fn end_session(&mut self, session_id: u64, code: ErrorCode) {
        let ids: Vec<(u64, bool)> = self
            .streams
            .iter()
            .filter_map(|(id, s)| match s {
                Bidi::Wt(wt) if wt.session_id == session_id => Some((*id, wt.fin_received)),
                _ => None,
            })
            .collect();
        for (id, peer_done) in ids {
            if peer_done {
                self.streams.remove(&id);
            } else {
                self.streams.insert(id, Bidi::Ignored);
            }
            self.reset(id, code);
        }
    }

    /// A WebTransport stream's prefix is complete.
    fn open_wt(
        &mut self,
        stream_id: u64,
        session_id: u64,
        data: &[u8],
        fin: bool,
    ) -> Result<Option<Bidi>, H3Error> {
        if !control::is_bidi(session_id) || !control::is_client_initiated(session_id) {
            return Err(H3Error::new(
                ErrorCode::H3_ID_ERROR,
                "WebTransport session id is not a client request stream",
            ));
        }
        let refuse = |this: &mut Self, code| {
            this.reset(stream_id, code);
            Ok((!fin).then_some(Bidi::Ignored))
        };
        let (flowing, held_ok) = match self.streams.get(&session_id) {
            Some(Bidi::Request(req)) => match req.state {
                ReqState::Accepted => (true, true),
                ReqState::Headers | ReqState::AwaitingSettings(_) | ReqState::Pending => {
                    (false, true)
                }
                ReqState::Done { was_session: true } => {
                    return refuse(self, ErrorCode::WEBTRANSPORT_SESSION_GONE);
                }
                ReqState::Done { was_session: false } => (false, false),
            },
            Some(Bidi::Start(_)) => (false, true),
            Some(_) => (false, false),
            None => match self.retired.iter().find(|(id, _)| *id == session_id) {
                Some((_, true)) => return refuse(self, ErrorCode::WEBTRANSPORT_SESSION_GONE),
                Some((_, false)) => (false, false),
                // Not seen yet: the CONNECT may still be on its way (reordering).
                None => (false, true),
            },
        };
        if !held_ok {
            return refuse(self, ErrorCode::WEBTRANSPORT_BUFFERED_STREAM_REJECTED);
        }
        let of_session = self
            .streams
            .values()
            .filter(|s| matches!(s, Bidi::Wt(wt) if wt.session_id == session_id))
            .count();
        let held = self
            .streams
            .values()
            .filter(|s| matches!(s, Bidi::Wt(wt) if !wt.flowing))
            .count();
        if of_session >= self.cfg.max_streams_per_session
            || (!flowing && held >= self.cfg.max_buffered_streams)
        {
            return refuse(self, ErrorCode::WEBTRANSPORT_BUFFERED_STREAM_REJECTED);
        }
        let mut wt = WtStream {
            session_id,
            held: Vec::new(),
            fin_received: false,
            flowing,
        };
        if !self.wt_data(stream_id, &mut wt, data, fin) {
            return Ok((!fin).then_some(Bidi::Ignored));
        }
        Ok(Some(Bidi::Wt(wt)))
    }

    /// Delivers or holds WebTransport stream bytes; false when the stream had to be refused.
    fn wt_data(&mut self, stream_id: u64, wt: &mut WtStream, data: &[u8], fin: bool) -> bool {
        if wt.fin_received {
            return true;
        }
        wt.fin_received = fin;
        if wt.flowing {
            if !data.is_empty() || fin {
                self.events.push_back(H3Event::StreamData {
                    session_id: wt.session_id,
                    stream_id,
                    data: data.to_vec(),
                    fin,
                });
            }
            return true;
        }
        if wt.held.len() + data.len() > self.cfg.max_buffered_bytes {
            self.reset(stream_id, ErrorCode::WEBTRANSPORT_BUFFERED_STREAM_REJECTED);
            return false;
        }
        wt.held.extend_from_slice(data);
        true
    }

    fn respond(&mut self, stream_id: u64, status: u16, fin: bool) {
        let status_text = status.to_string();
        let mut fields: Vec<(&str, &str)> = vec![(":status", &status_text)];
        if status == 405 {
            fields.push(("allow", "CONNECT"));
        }
        let mut block = Vec::with_capacity(32);
        qpack::encode_field_section(&fields, &mut block);
        let mut data = Vec::with_capacity(block.len() + 4);
        frame::encode_frame(frame::HEADERS, &block, &mut data);
        self.conn.push(stream_id, data, fin);
    }

    fn reset(&mut self, stream_id: u64, code: ErrorCode) {
        self.events
            .push_back(H3Event::ResetStream { stream_id, code });
    }

    fn retire(&mut self, stream_id: u64, was_session: bool) {
        if self.retired.len() == RETIRED_MEMORY {
            self.retired.pop_front();
        }
        self.retired.push_back((stream_id, was_session));
    }
}

enum Verdict {
    /// RFC 9114 §4.1.2: a malformed request is a stream error H3_MESSAGE_ERROR.
    Malformed,
    /// Answer with this status and FIN.
    Respond(u16),
    /// A WebTransport session request for a meeting.
    Session(SessionRequest),
}

/// Connection-specific fields that make an HTTP/3 message malformed (RFC 9114 §4.2).
const CONNECTION_SPECIFIC: [&[u8]; 5] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"upgrade",
];

fn is_token_char(b: u8) -> bool {
    b.is_ascii_lowercase()
        || b.is_ascii_digit()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Validates a request's fields and decides what to do with it.
fn classify(fields: &[Field], cfg: &H3Config) -> Verdict {
    let mut method = None;
    let mut scheme = None;
    let mut path = None;
    let mut authority = None;
    let mut protocol = None;
    let mut origin: Option<&[u8]> = None;
    let mut origins = 0;
    let mut regular = false;
    for f in fields {
        if f.value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
            return Verdict::Malformed;
        }
        if let Some(pseudo) = f.name.strip_prefix(b":") {
            if regular {
                return Verdict::Malformed;
            }
            let slot = match pseudo {
                b"method" => &mut method,
                b"scheme" => &mut scheme,
                b"path" => &mut path,
                b"authority" => &mut authority,
                b"protocol" => &mut protocol,
                _ => return Verdict::Malformed,
            };
            if slot.replace(&f.value[..]).is_some() {
                return Verdict::Malformed;
            }
            continue;
        }
        regular = true;
        if f.name.is_empty() || !f.name.iter().all(|&b| is_token_char(b)) {
            return Verdict::Malformed;
        }
        if CONNECTION_SPECIFIC.contains(&&f.name[..]) || (f.name == b"te" && f.value != b"trailers")
        {
            return Verdict::Malformed;
        }
        if f.name == b"origin" {
            origins += 1;
            origin = Some(&f.value[..]);
        }
    }
    let text = |v: Option<&[u8]>| {
        v.and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned)
    };
    let Some(method) = method else {
        return Verdict::Malformed;
    };
    if method != b"CONNECT" {
        if protocol.is_some() || scheme.is_none() || path.is_none_or(<[u8]>::is_empty) {
            return Verdict::Malformed;
        }
        return match path.and_then(meeting_of) {
            Some(_) => Verdict::Respond(405),
            None => Verdict::Respond(404),
        };
    }
    let Some(protocol) = protocol else {
        // Classic CONNECT (RFC 9114 §4.4): only :method and :authority. We are no proxy.
        if scheme.is_some() || path.is_some() || authority.is_none_or(<[u8]>::is_empty) {
            return Verdict::Malformed;
        }
        return Verdict::Respond(405);
    };
    // Extended CONNECT (RFC 9220): :scheme, :path and :authority are required.
    let (Some(scheme), Some(path), Some(authority)) = (scheme, path, authority) else {
        return Verdict::Malformed;
    };
    if path.is_empty() || authority.is_empty() {
        return Verdict::Malformed;
    }
    if protocol != b"webtransport" && protocol != b"webtransport-h3" {
        return Verdict::Respond(501);
    }
    if scheme != b"https" || origins > 1 {
        return Verdict::Respond(400);
    }
    let Some(meeting_id) = meeting_of(path) else {
        return Verdict::Respond(404);
    };
    let origin = match origin {
        None => None,
        Some(o) => match std::str::from_utf8(o) {
            Ok(o) => Some(o.to_owned()),
            Err(_) => return Verdict::Respond(403),
        },
    };
    if let (Some(allowed), Some(o)) = (&cfg.allowed_origins, &origin) {
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(o)) {
            return Verdict::Respond(403);
        }
    }
    let (Some(path), Some(authority)) = (text(Some(path)), text(Some(authority))) else {
        return Verdict::Respond(400);
    };
    Verdict::Session(SessionRequest {
        meeting_id,
        path,
        authority,
        origin,
    })
}

/// The meeting id of a `/meetings/{meeting_id}` path (a query string is ignored).
pub fn meeting_of(path: &[u8]) -> Option<MeetingId> {
    let path = std::str::from_utf8(path).ok()?;
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    MeetingId::parse(path.strip_prefix(MEETINGS_PATH)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<Field> {
        pairs.iter().map(|(n, v)| Field::new(n, v)).collect()
    }

    fn wt_request(extra: &[(&str, &str)]) -> Vec<Field> {
        let mut f = fields(&[
            (":method", "CONNECT"),
            (":protocol", "webtransport"),
            (":scheme", "https"),
            (":authority", "localhost:4433"),
            (":path", "/meetings/m-1"),
        ]);
        f.extend(fields(extra));
        f
    }

    fn verdict(f: &[Field], cfg: &H3Config) -> String {
        match classify(f, cfg) {
            Verdict::Malformed => "malformed".into(),
            Verdict::Respond(s) => s.to_string(),
            Verdict::Session(r) => format!("session {}", r.meeting_id),
        }
    }

    #[test]
    fn classify_requests() {
        let cfg = H3Config::default();
        assert_eq!(verdict(&wt_request(&[]), &cfg), "session m-1");
        assert_eq!(
            verdict(&wt_request(&[("origin", "https://app.example")]), &cfg),
            "session m-1"
        );
        let get = |p: &str| {
            fields(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", "h"),
                (":path", p),
            ])
        };
        assert_eq!(verdict(&get("/meetings/m-1"), &cfg), "405");
        assert_eq!(verdict(&get("/"), &cfg), "404");
        assert_eq!(
            verdict(
                &fields(&[(":method", "CONNECT"), (":authority", "h:1")]),
                &cfg
            ),
            "405"
        );
        // CONNECT without :protocol but with :path is malformed (RFC 9114 §4.4).
        let mut f = wt_request(&[]);
        f.remove(1);
        assert_eq!(verdict(&f, &cfg), "malformed");
        let mut f = wt_request(&[]);
        f[1] = Field::new(":protocol", "websocket");
        assert_eq!(verdict(&f, &cfg), "501");
        let mut f = wt_request(&[]);
        f[4] = Field::new(":path", "/rooms/m-1");
        assert_eq!(verdict(&f, &cfg), "404");
        let mut f = wt_request(&[]);
        f[4] = Field::new(":path", "/meetings/bad id");
        assert_eq!(verdict(&f, &cfg), "404");
        let mut f = wt_request(&[]);
        f[4] = Field::new(":path", "/meetings/m-1?x=1");
        assert_eq!(verdict(&f, &cfg), "session m-1");
        let mut f = wt_request(&[]);
        f[2] = Field::new(":scheme", "http");
        assert_eq!(verdict(&f, &cfg), "400");
    }

    #[test]
    fn classify_malformed() {
        let cfg = H3Config::default();
        let cases: Vec<Vec<Field>> = vec![
            wt_request(&[("Upper", "x")]),
            wt_request(&[("connection", "close")]),
            wt_request(&[("te", "gzip")]),
            wt_request(&[("x-bad", "a\r\nb")]),
            wt_request(&[(":status", "200")]),
            wt_request(&[(":path", "/meetings/m-2")]),
            {
                let mut f = fields(&[("user-agent", "x")]);
                f.extend(wt_request(&[]));
                f
            },
            wt_request(&[])[1..].to_vec(),
            fields(&[(":method", "GET"), (":scheme", "https"), (":path", "")]),
            fields(&[
                (":method", "GET"),
                (":protocol", "webtransport"),
                (":scheme", "https"),
                (":path", "/"),
            ]),
        ];
        for (i, f) in cases.iter().enumerate() {
            assert_eq!(verdict(f, &cfg), "malformed", "case {i}");
        }
        assert_eq!(
            verdict(&wt_request(&[("te", "trailers")]), &cfg),
            "session m-1"
        );
    }

    #[test]
    fn origin_policy() {
        let cfg = H3Config {
            allowed_origins: Some(vec!["https://app.example".into()]),
            ..H3Config::default()
        };
        assert_eq!(
            verdict(&wt_request(&[("origin", "https://APP.example")]), &cfg),
            "session m-1"
        );
        assert_eq!(
            verdict(&wt_request(&[("origin", "https://evil.example")]), &cfg),
            "403"
        );
        assert_eq!(verdict(&wt_request(&[]), &cfg), "session m-1");
        assert_eq!(
            verdict(
                &wt_request(&[
                    ("origin", "https://app.example"),
                    ("origin", "https://app.example")
                ]),
                &cfg
            ),
            "400"
        );
    }
}
