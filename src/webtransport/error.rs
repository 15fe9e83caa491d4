//! HTTP/3, QPACK and WebTransport error codes, and the connection error type.

use std::fmt;

/// An HTTP/3 application error code, as carried by CONNECTION_CLOSE, RESET_STREAM and
/// STOP_SENDING.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u64);

impl ErrorCode {
    /// No error (RFC 9114 §8.1).
    pub const H3_NO_ERROR: Self = Self(0x100);
    /// Peer violated the protocol in a way without a more specific code.
    pub const H3_GENERAL_PROTOCOL_ERROR: Self = Self(0x101);
    /// Internal error in the HTTP stack.
    pub const H3_INTERNAL_ERROR: Self = Self(0x102);
    /// The peer created a stream that will not be accepted.
    pub const H3_STREAM_CREATION_ERROR: Self = Self(0x103);
    /// A stream required by the connection was closed or reset.
    pub const H3_CLOSED_CRITICAL_STREAM: Self = Self(0x104);
    /// A frame not permitted in the current state or on the current stream.
    pub const H3_FRAME_UNEXPECTED: Self = Self(0x105);
    /// A frame that fails its layout requirements or has an invalid size.
    pub const H3_FRAME_ERROR: Self = Self(0x106);
    /// The peer is generating excessive load.
    pub const H3_EXCESSIVE_LOAD: Self = Self(0x107);
    /// A stream or push id was used incorrectly.
    pub const H3_ID_ERROR: Self = Self(0x108);
    /// An error in the payload of a SETTINGS frame.
    pub const H3_SETTINGS_ERROR: Self = Self(0x109);
    /// No SETTINGS frame at the start of the control stream.
    pub const H3_MISSING_SETTINGS: Self = Self(0x10a);
    /// The server rejected a request without any application processing.
    pub const H3_REQUEST_REJECTED: Self = Self(0x10b);
    /// The request or its response is cancelled.
    pub const H3_REQUEST_CANCELLED: Self = Self(0x10c);
    /// The client's stream terminated without a fully formed request.
    pub const H3_REQUEST_INCOMPLETE: Self = Self(0x10d);
    /// A malformed HTTP message.
    pub const H3_MESSAGE_ERROR: Self = Self(0x10e);
    /// The TCP connection of a CONNECT request was reset or abnormally closed.
    pub const H3_CONNECT_ERROR: Self = Self(0x10f);
    /// The request should be retried over HTTP/1.1.
    pub const H3_VERSION_FALLBACK: Self = Self(0x110);
    /// A field section could not be decompressed (RFC 9204 §6).
    pub const QPACK_DECOMPRESSION_FAILED: Self = Self(0x200);
    /// An error on the peer's QPACK encoder stream.
    pub const QPACK_ENCODER_STREAM_ERROR: Self = Self(0x201);
    /// An error on the peer's QPACK decoder stream.
    pub const QPACK_DECODER_STREAM_ERROR: Self = Self(0x202);
    /// A WebTransport stream whose session could not be found or was refused
    /// (draft-ietf-webtrans-http3).
    pub const WEBTRANSPORT_BUFFERED_STREAM_REJECTED: Self = Self(0x3994_bd84);
    /// The WebTransport session of this stream is gone (draft-ietf-webtrans-http3-07+).
    pub const WEBTRANSPORT_SESSION_GONE: Self = Self(0x170d_7b68);

    const WT_APP_FIRST: u64 = 0x52e4_a40f_a8db;

    /// The HTTP/3 code carrying WebTransport application error `code` on a stream reset
    /// (draft-07+: `first + n + n / 0x1e`, which skips the reserved `0x1f * N + 0x21` codes).
    pub const fn webtransport_application(code: u32) -> Self {
        let n = code as u64;
        Self(Self::WT_APP_FIRST + n + n / 0x1e)
    }

    /// The WebTransport application error code inside this HTTP/3 code, if it is one.
    pub fn to_webtransport_application(self) -> Option<u32> {
        let h = self.0;
        let last = Self::webtransport_application(u32::MAX).0;
        if h < Self::WT_APP_FIRST || h > last || h.wrapping_sub(0x21).is_multiple_of(0x1f) {
            return None;
        }
        let shifted = h - Self::WT_APP_FIRST;
        u32::try_from(shifted - shifted / 0x1f).ok()
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorCode({:#x})", self.0)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A connection error: the connection must be closed with [`H3Error::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("HTTP/3 connection error {code}: {reason}")]
pub struct H3Error {
    /// The code to close the QUIC connection with (application close).
    pub code: ErrorCode,
    /// Short reason phrase, safe to send as the CONNECTION_CLOSE reason.
    pub reason: &'static str,
}

impl H3Error {
    pub(crate) const fn new(code: ErrorCode, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webtransport_application_codes_map_both_ways() {
        assert_eq!(ErrorCode::webtransport_application(0).0, 0x52e4_a40f_a8db);
        assert_eq!(
            ErrorCode::webtransport_application(u32::MAX).0,
            0x52e5_ac98_3162
        );
        for code in [0u32, 1, 0x1d, 0x1e, 0x1f, 0x100, 0x101, 1_000_000, u32::MAX] {
            let h = ErrorCode::webtransport_application(code);
            assert_ne!((h.0 - 0x21) % 0x1f, 0, "mapped onto a reserved code");
            assert_eq!(h.to_webtransport_application(), Some(code));
        }
        assert_eq!(ErrorCode::H3_NO_ERROR.to_webtransport_application(), None);
        // 0x52e4a40fa8db + 0x1e lands on a reserved codepoint: not an application code.
        let reserved = ErrorCode(0x52e4_a40f_a8db + 0x1e);
        assert_eq!((reserved.0 - 0x21) % 0x1f, 0);
        assert_eq!(reserved.to_webtransport_application(), None);
    }
}
