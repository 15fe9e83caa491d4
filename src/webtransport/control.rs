//! Connection-level HTTP/3 state shared by [`H3Server`](super::H3Server) and
//! [`H3Client`](super::H3Client): our own unidirectional streams (control stream with SETTINGS,
//! QPACK encoder and decoder streams), the peer's unidirectional streams, and the queue of bytes
//! to write.

use std::collections::{BTreeMap, VecDeque};

use super::error::{ErrorCode, H3Error};
use super::frame::{self, FrameDecoder, FrameItem, Settings};
use super::qpack::{self, DecoderStreamReader};
use super::varint::{self, PartialVarint};

/// Unidirectional stream type: control stream.
pub const STREAM_CONTROL: u64 = 0x00;
/// Unidirectional stream type: push stream.
pub const STREAM_PUSH: u64 = 0x01;
/// Unidirectional stream type: QPACK encoder stream.
pub const STREAM_QPACK_ENCODER: u64 = 0x02;
/// Unidirectional stream type: QPACK decoder stream.
pub const STREAM_QPACK_DECODER: u64 = 0x03;
/// Unidirectional stream type: WebTransport unidirectional stream.
pub const STREAM_WEBTRANSPORT_UNI: u64 = 0x54;

/// Bytes to write on one stream, in the order returned by `poll_transmit`.
///
/// `data` may be empty when only `fin` matters. The writer must deliver every `Transmit` of a
/// stream in order, keeping any part the transport did not take for later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// QUIC stream id.
    pub stream_id: u64,
    /// Bytes to append to the stream.
    pub data: Vec<u8>,
    /// Whether the stream ends after `data`.
    pub fin: bool,
}

/// Whether `id` is a bidirectional stream.
pub const fn is_bidi(id: u64) -> bool {
    id & 0x2 == 0
}

/// Whether `id` was opened by the client.
pub const fn is_client_initiated(id: u64) -> bool {
    id & 0x1 == 0
}

/// Which side of the connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Server,
    Client,
}

#[derive(Debug)]
enum PeerUni {
    /// Stream type not read yet.
    Type(PartialVarint),
    Control {
        frames: FrameDecoder,
        settings_seen: bool,
    },
    Encoder,
    Decoder(DecoderStreamReader),
    /// Aborted or of no interest: bytes are dropped.
    Ignored,
}

/// What a piece of a peer unidirectional stream asks of the owner.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct UniOutcome {
    /// Stop reading the stream with this code (unknown or unwanted stream type).
    pub(crate) abort: Option<ErrorCode>,
    /// The peer's SETTINGS arrived with this piece.
    pub(crate) settings_arrived: bool,
    /// A GOAWAY arrived with this id.
    pub(crate) goaway: Option<u64>,
}

/// Connection-level state: local critical streams, peer unidirectional streams, output queue.
#[derive(Debug)]
pub(crate) struct Connection {
    role: Role,
    peer_settings: Option<Settings>,
    peer_goaway: Option<u64>,
    peer_uni: BTreeMap<u64, PeerUni>,
    seen_control: bool,
    seen_encoder: bool,
    seen_decoder: bool,
    max_field_section_size: usize,
    transmits: VecDeque<Transmit>,
}

impl Connection {
    /// Queues our control stream (type + SETTINGS) and QPACK streams.
    pub(crate) fn new(role: Role, settings: &Settings, max_field_section_size: usize) -> Self {
        let first = match role {
            Role::Server => 3,
            Role::Client => 2,
        };
        let mut control = Vec::with_capacity(64);
        varint::encode(STREAM_CONTROL, &mut control);
        settings.encode(&mut control);
        let mut transmits = VecDeque::new();
        for (id, data) in [
            (first, control),
            (first + 4, vec![STREAM_QPACK_ENCODER as u8]),
            (first + 8, vec![STREAM_QPACK_DECODER as u8]),
        ] {
            transmits.push_back(Transmit {
                stream_id: id,
                data,
                fin: false,
            });
        }
        Self {
            role,
            peer_settings: None,
            peer_goaway: None,
            peer_uni: BTreeMap::new(),
            seen_control: false,
            seen_encoder: false,
            seen_decoder: false,
            max_field_section_size,
            transmits,
        }
    }

    /// The id of our control stream.
    pub(crate) fn control_stream_id(&self) -> u64 {
        match self.role {
            Role::Server => 3,
            Role::Client => 2,
        }
    }

    pub(crate) fn peer_settings(&self) -> Option<&Settings> {
        self.peer_settings.as_ref()
    }

    pub(crate) fn peer_goaway(&self) -> Option<u64> {
        self.peer_goaway
    }

    pub(crate) fn push(&mut self, stream_id: u64, data: Vec<u8>, fin: bool) {
        self.transmits.push_back(Transmit {
            stream_id,
            data,
            fin,
        });
    }

    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Handles bytes of a peer-initiated unidirectional stream.
    pub(crate) fn on_uni_data(
        &mut self,
        stream_id: u64,
        data: &[u8],
        fin: bool,
    ) -> Result<UniOutcome, H3Error> {
        let mut stream = self
            .peer_uni
            .remove(&stream_id)
            .unwrap_or_else(|| PeerUni::Type(PartialVarint::default()));
        let mut out = UniOutcome::default();
        self.uni_data(&mut stream, data, &mut out)?;
        match stream {
            PeerUni::Control { .. } | PeerUni::Encoder | PeerUni::Decoder(_) if fin => {
                return Err(H3Error::new(
                    ErrorCode::H3_CLOSED_CRITICAL_STREAM,
                    "critical stream closed",
                ));
            }
            // A stream that ends before its type, or an ignored one, is forgotten.
            _ if fin => {}
            _ => {
                self.peer_uni.insert(stream_id, stream);
            }
        }
        Ok(out)
    }

    fn uni_data(
        &mut self,
        stream: &mut PeerUni,
        mut data: &[u8],
        out: &mut UniOutcome,
    ) -> Result<(), H3Error> {
        if let PeerUni::Type(partial) = stream {
            let Some(ty) = partial.feed(&mut data) else {
                return Ok(());
            };
            *stream = self.open_uni(ty, out)?;
        }
        match stream {
            PeerUni::Type(_) | PeerUni::Ignored => Ok(()),
            PeerUni::Encoder => qpack::check_encoder_stream(data),
            PeerUni::Decoder(reader) => reader.feed(data),
            PeerUni::Control {
                frames,
                settings_seen,
            } => {
                while let Some(item) = frames
                    .next(&mut data)
                    .map_err(|e| e.into_connection_error())?
                {
                    let first = !std::mem::replace(settings_seen, true);
                    self.control_frame(item, first, out)?;
                }
                Ok(())
            }
        }
    }

    fn open_uni(&mut self, ty: u64, out: &mut UniOutcome) -> Result<PeerUni, H3Error> {
        let once = |seen: &mut bool, what: &'static str| {
            if std::mem::replace(seen, true) {
                Err(H3Error::new(ErrorCode::H3_STREAM_CREATION_ERROR, what))
            } else {
                Ok(())
            }
        };
        Ok(match ty {
            STREAM_CONTROL => {
                once(&mut self.seen_control, "second control stream")?;
                PeerUni::Control {
                    frames: FrameDecoder::new(self.max_field_section_size),
                    settings_seen: false,
                }
            }
            STREAM_QPACK_ENCODER => {
                once(&mut self.seen_encoder, "second QPACK encoder stream")?;
                PeerUni::Encoder
            }
            STREAM_QPACK_DECODER => {
                once(&mut self.seen_decoder, "second QPACK decoder stream")?;
                PeerUni::Decoder(DecoderStreamReader::default())
            }
            STREAM_PUSH => {
                return Err(match self.role {
                    Role::Server => H3Error::new(
                        ErrorCode::H3_STREAM_CREATION_ERROR,
                        "push stream from a client",
                    ),
                    // We never send MAX_PUSH_ID, so any push id is beyond the limit.
                    Role::Client => {
                        H3Error::new(ErrorCode::H3_ID_ERROR, "push stream without MAX_PUSH_ID")
                    }
                });
            }
            STREAM_WEBTRANSPORT_UNI => {
                // Signaling uses one bidirectional stream; unidirectional streams are refused.
                out.abort = Some(ErrorCode::webtransport_application(0));
                PeerUni::Ignored
            }
            _ => {
                out.abort = Some(ErrorCode::H3_STREAM_CREATION_ERROR);
                PeerUni::Ignored
            }
        })
    }

    fn control_frame(
        &mut self,
        item: FrameItem<'_>,
        first: bool,
        out: &mut UniOutcome,
    ) -> Result<(), H3Error> {
        match item {
            FrameItem::Settings(payload) if first => {
                self.peer_settings = Some(Settings::decode(&payload)?);
                out.settings_arrived = true;
            }
            _ if first => {
                return Err(H3Error::new(
                    ErrorCode::H3_MISSING_SETTINGS,
                    "control stream does not start with SETTINGS",
                ));
            }
            FrameItem::Settings(_) => {
                return Err(H3Error::new(
                    ErrorCode::H3_FRAME_UNEXPECTED,
                    "second SETTINGS frame",
                ));
            }
            FrameItem::Goaway(id) => {
                if self.role == Role::Client {
                    if !is_bidi(id) || !is_client_initiated(id) {
                        return Err(H3Error::new(
                            ErrorCode::H3_ID_ERROR,
                            "GOAWAY with a non-request stream id",
                        ));
                    }
                    if self.peer_goaway.is_some_and(|prev| id > prev) {
                        return Err(H3Error::new(ErrorCode::H3_ID_ERROR, "GOAWAY id increased"));
                    }
                }
                self.peer_goaway = Some(id);
                out.goaway = Some(id);
            }
            FrameItem::MaxPushId(_) if self.role == Role::Server => {}
            FrameItem::CancelPush(_) => {}
            FrameItem::WebTransportStream => {
                return Err(H3Error::new(
                    ErrorCode::H3_FRAME_ERROR,
                    "WEBTRANSPORT_STREAM on the control stream",
                ));
            }
            FrameItem::MaxPushId(_)
            | FrameItem::DataStart { .. }
            | FrameItem::Data(_)
            | FrameItem::Headers(_)
            | FrameItem::Unexpected(_) => {
                return Err(H3Error::new(
                    ErrorCode::H3_FRAME_UNEXPECTED,
                    "frame not allowed on the control stream",
                ));
            }
        }
        Ok(())
    }

    /// Handles a reset of a peer unidirectional stream.
    pub(crate) fn on_uni_reset(&mut self, stream_id: u64) -> Result<(), H3Error> {
        match self.peer_uni.remove(&stream_id) {
            Some(PeerUni::Control { .. } | PeerUni::Encoder | PeerUni::Decoder(_)) => {
                Err(H3Error::new(
                    ErrorCode::H3_CLOSED_CRITICAL_STREAM,
                    "critical stream reset",
                ))
            }
            _ => Ok(()),
        }
    }

    /// Queues a GOAWAY frame on our control stream.
    pub(crate) fn send_goaway(&mut self, id: u64) {
        let mut data = Vec::with_capacity(10);
        frame::encode_goaway(id, &mut data);
        let control = self.control_stream_id();
        self.push(control, data, false);
    }
}
