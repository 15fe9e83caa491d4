//! Resume binding tokens (signaling v1 §5).
//!
//! A binding token is handed to a participant in `join_response` and proves, on a later
//! `join` with `resume`, that the new connection belongs to the same participant. It is an HMAC
//! with a server secret over the meeting id, the participant id, a nonce and an expiry, so it is
//! bound to one participant of one meeting and cannot be forged or moved.
//!
//! # Format
//!
//! Unpadded base64url of 49 bytes (66 characters):
//! `version (1 byte, = 1) ‖ nonce (u64 BE) ‖ expires_unix_ms (u64 BE) ‖ HMAC-SHA256 (32 bytes)`.
//! The MAC covers a domain-separation label, the version, both ids (each length-prefixed, so
//! no two id pairs share an encoding), the nonce and the expiry.
//!
//! # Single use
//!
//! This module only checks authenticity and expiry. Single use is the caller's job: it records
//! the nonce of the last token issued to each participant, accepts a resume only if the
//! verified [`BindingClaims::nonce`] equals it, and then issues a fresh token with a new nonce.
//! An older or replayed token then no longer matches.

use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Shortest accepted secret, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"mc binding token";
const MAC_LEN: usize = 32;
const RAW_LEN: usize = 1 + 8 + 8 + MAC_LEN;
/// Base64 for secret files: padding optional.
const LENIENT_CONFIG: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const LENIENT_URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT_CONFIG);
const LENIENT_STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT_CONFIG);
/// Length of every binding token, in characters (unpadded base64url of 49 bytes).
pub const TOKEN_LEN: usize = (RAW_LEN * 4).div_ceil(3);

/// Why a binding secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingKeyError {
    /// The secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("binding secret must be at least {MIN_SECRET_LEN} bytes, got {len}")]
    TooShort {
        /// Length of the (decoded) secret.
        len: usize,
    },
    /// The file looked like hex (only hex digits) but has an odd number of digits.
    #[error("binding secret file looks like hex but has an odd number of digits")]
    BadHex,
    /// The file starts with `base64:` but the rest is not valid base64.
    #[error("binding secret file has a base64: prefix but invalid base64")]
    BadBase64,
}

/// Why a binding token was refused. All map to `unauthorized` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// Not a binding token of this format (wrong length, encoding or version).
    #[error("binding token is malformed")]
    Malformed,
    /// The MAC does not match: forged, tampered, for another meeting or participant, or issued
    /// under another secret.
    #[error("binding token does not match")]
    BadMac,
    /// Authentic but past its expiry.
    #[error("binding token has expired")]
    Expired,
}

impl BindingError {
    /// A stable snake_case label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            BindingError::Malformed => "binding_malformed",
            BindingError::BadMac => "binding_bad_mac",
            BindingError::Expired => "binding_expired",
        }
    }
}

/// What a verified binding token carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingClaims {
    /// The nonce chosen at issue; the caller compares it with the last one it issued.
    pub nonce: u64,
    /// Expiry, Unix milliseconds.
    pub expires_unix_ms: u64,
}

/// The server secret that issues and checks binding tokens. `Debug` never shows the secret.
#[derive(Clone)]
pub struct BindingKey {
    mac: HmacSha256,
}

impl fmt::Debug for BindingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BindingKey(<redacted>)")
    }
}

impl BindingKey {
    /// Wraps a secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: &[u8]) -> Result<Self, BindingKeyError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(BindingKeyError::TooShort { len: secret.len() });
        }
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = <HmacSha256 as Mac>::new_from_slice(secret)
            .map_err(|_| BindingKeyError::TooShort { len: secret.len() })?;
        Ok(Self { mac })
    }

    /// Reads a secret from the contents of a secret file. Three forms are accepted, decided on
    /// the contents with surrounding ASCII whitespace trimmed:
    ///
    /// * only hex digits: hex text (what `mc serve --dev` writes, and `openssl rand -hex 32`);
    /// * `base64:` followed by standard or url-safe base64, padded or not;
    /// * anything else: the raw bytes of the file, untrimmed.
    ///
    /// In every form the decoded secret must be at least [`MIN_SECRET_LEN`] bytes.
    pub fn from_file_contents(bytes: &[u8]) -> Result<Self, BindingKeyError> {
        let trimmed = bytes.trim_ascii();
        if !trimmed.is_empty() && trimmed.iter().all(u8::is_ascii_hexdigit) {
            let secret = decode_hex(trimmed).ok_or(BindingKeyError::BadHex)?;
            return Self::new(&secret);
        }
        if let Some(b64) = trimmed.strip_prefix(b"base64:") {
            let b64 = b64.trim_ascii();
            let secret = LENIENT_URL_SAFE
                .decode(b64)
                .or_else(|_| LENIENT_STANDARD.decode(b64))
                .map_err(|_| BindingKeyError::BadBase64)?;
            return Self::new(&secret);
        }
        Self::new(bytes)
    }

    /// Issues a token binding `participant_id` of `meeting_id`, carrying `nonce`, valid until
    /// `expires_unix_ms`. The result is url-safe and [`TOKEN_LEN`] characters long.
    pub fn issue(
        &self,
        meeting_id: &str,
        participant_id: &str,
        nonce: u64,
        expires_unix_ms: u64,
    ) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[0] = VERSION;
        raw[1..9].copy_from_slice(&nonce.to_be_bytes());
        raw[9..17].copy_from_slice(&expires_unix_ms.to_be_bytes());
        let tag = self
            .keyed(meeting_id, participant_id, nonce, expires_unix_ms)
            .finalize()
            .into_bytes();
        raw[17..].copy_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks `token` for `participant_id` of `meeting_id` at `now_unix_ms`. The MAC is compared
    /// in constant time and checked before the expiry. Does not enforce single use (see the
    /// module docs).
    pub fn verify(
        &self,
        token: &str,
        meeting_id: &str,
        participant_id: &str,
        now_unix_ms: u64,
    ) -> Result<BindingClaims, BindingError> {
        if token.len() != TOKEN_LEN {
            return Err(BindingError::Malformed);
        }
        let mut raw = [0u8; RAW_LEN];
        let n = URL_SAFE_NO_PAD
            .decode_slice(token, &mut raw)
            .map_err(|_| BindingError::Malformed)?;
        if n != RAW_LEN {
            return Err(BindingError::Malformed);
        }
        let (head, tag) = raw.split_at(17);
        let (version, rest) = head.split_at(1);
        if version != [VERSION] {
            return Err(BindingError::Malformed);
        }
        let (nonce, expiry) = rest.split_at(8);
        let nonce = u64::from_be_bytes(nonce.try_into().map_err(|_| BindingError::Malformed)?);
        let expires_unix_ms =
            u64::from_be_bytes(expiry.try_into().map_err(|_| BindingError::Malformed)?);
        self.keyed(meeting_id, participant_id, nonce, expires_unix_ms)
            .verify_slice(tag)
            .map_err(|_| BindingError::BadMac)?;
        if now_unix_ms >= expires_unix_ms {
            return Err(BindingError::Expired);
        }
        Ok(BindingClaims {
            nonce,
            expires_unix_ms,
        })
    }

    /// A MAC state fed with everything the token binds.
    fn keyed(
        &self,
        meeting_id: &str,
        participant_id: &str,
        nonce: u64,
        expires_unix_ms: u64,
    ) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(&[VERSION]);
        for id in [meeting_id, participant_id] {
            mac.update(&(id.len() as u64).to_be_bytes());
            mac.update(id.as_bytes());
        }
        mac.update(&nonce.to_be_bytes());
        mac.update(&expires_unix_ms.to_be_bytes());
        mac
    }
}

/// Decodes an even-length string of hex digits; `None` on odd length or a non-hex byte.
fn decode_hex(hex: &[u8]) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    hex.chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => Some((digit(*hi)? * 16 + digit(*lo)?) as u8),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    const NOW: u64 = 1_700_000_000_000;

    fn key() -> BindingKey {
        BindingKey::new(&[0x5a; 32]).unwrap()
    }

    #[test]
    fn round_trip() {
        let k = key();
        let t = k.issue("m1", "p0-1", 42, NOW + 30_000);
        assert_eq!(t.len(), TOKEN_LEN);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(
            k.verify(&t, "m1", "p0-1", NOW),
            Ok(BindingClaims {
                nonce: 42,
                expires_unix_ms: NOW + 30_000
            })
        );
        // Distinct nonces give distinct tokens.
        assert_ne!(t, k.issue("m1", "p0-1", 43, NOW + 30_000));
    }

    #[test]
    fn wrong_meeting() {
        let k = key();
        let t = k.issue("m1", "p0-1", 1, NOW + 1);
        let err = k.verify(&t, "m2", "p0-1", NOW).unwrap_err();
        assert_eq!(err, BindingError::BadMac);
        assert_eq!(err.reason(), "binding_bad_mac");
    }

    #[test]
    fn wrong_participant() {
        let k = key();
        let t = k.issue("m1", "p0-1", 1, NOW + 1);
        assert_eq!(k.verify(&t, "m1", "p0-2", NOW), Err(BindingError::BadMac));
    }

    #[test]
    fn ids_are_length_prefixed() {
        // ("ab", "c") and ("a", "bc") must not share a MAC.
        let k = key();
        let t = k.issue("ab", "c", 1, NOW + 1);
        assert_eq!(k.verify(&t, "a", "bc", NOW), Err(BindingError::BadMac));
    }

    #[test]
    fn tampered() {
        let k = key();
        let t = k.issue("m1", "p0-1", 7, NOW + 1000);
        let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for i in 1..RAW_LEN {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let bad = URL_SAFE_NO_PAD.encode(&bad);
            assert_eq!(
                k.verify(&bad, "m1", "p0-1", NOW),
                Err(BindingError::BadMac),
                "byte {i}"
            );
        }
        // Extending the expiry is caught too.
        raw[9..17].copy_from_slice(&(NOW + 10_000_000).to_be_bytes());
        let extended = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(
            k.verify(&extended, "m1", "p0-1", NOW + 2000),
            Err(BindingError::BadMac)
        );
    }

    #[test]
    fn expired() {
        let k = key();
        let t = k.issue("m1", "p0-1", 1, NOW);
        assert!(k.verify(&t, "m1", "p0-1", NOW - 1).is_ok());
        let err = k.verify(&t, "m1", "p0-1", NOW).unwrap_err();
        assert_eq!(err, BindingError::Expired);
        assert_eq!(err.reason(), "binding_expired");
    }

    #[test]
    fn garbage() {
        let k = key();
        let good = k.issue("m1", "p0-1", 1, NOW + 1);
        let mut wrong_version = URL_SAFE_NO_PAD.decode(&good).unwrap();
        wrong_version[0] = 2;
        let cases = [
            String::new(),
            "x".into(),
            "!".repeat(TOKEN_LEN),
            "A".repeat(TOKEN_LEN + 1),
            format!("{good}="),
            good[..TOKEN_LEN - 1].to_string(),
            good.replace('-', "+").replace('_', "/")
                + if good.contains(['-', '_']) { "" } else { "+" },
            URL_SAFE_NO_PAD.encode(&wrong_version),
            "é".repeat(TOKEN_LEN / 2),
        ];
        for c in cases {
            let err = k.verify(&c, "m1", "p0-1", NOW).unwrap_err();
            assert_eq!(err, BindingError::Malformed, "{c:?}");
            assert_eq!(err.reason(), "binding_malformed");
        }
    }

    #[test]
    fn different_key() {
        let t = key().issue("m1", "p0-1", 1, NOW + 1);
        let other = BindingKey::new(&[0x5b; 32]).unwrap();
        assert_eq!(
            other.verify(&t, "m1", "p0-1", NOW),
            Err(BindingError::BadMac)
        );
    }

    #[test]
    fn fixed_vector() {
        // If the format or the MAC input changes, tokens issued before an upgrade stop working;
        // this makes such a change deliberate.
        const FIXED: &str = "AQAAAAAAAAAqAAABi8_l3TAH9JZbV9XbC_G5Y1j6Irp0ZQu_vCk-gQaiN_ZyGfc04Q";
        let k = key();
        assert_eq!(k.issue("m1", "p0-1", 42, 1_700_000_030_000), FIXED);
        assert_eq!(
            k.verify(FIXED, "m1", "p0-1", NOW),
            Ok(BindingClaims {
                nonce: 42,
                expires_unix_ms: 1_700_000_030_000
            })
        );
    }

    #[test]
    fn secret_length() {
        assert_eq!(
            BindingKey::new(&[1; 31]).unwrap_err(),
            BindingKeyError::TooShort { len: 31 }
        );
        assert!(BindingKey::new(&[1; 64]).is_ok());
    }

    #[test]
    fn debug_hides_secret() {
        let k = BindingKey::from_file_contents(b"supersecretsupersecretsupersecret!!").unwrap();
        let shown = format!("{k:?}");
        assert!(!shown.contains("supersecret"));
        assert_eq!(shown, "BindingKey(<redacted>)");
    }

    #[test]
    fn file_contents_forms() {
        let secret = [0xab_u8; 32];
        let reference = BindingKey::new(&secret).unwrap().issue("m", "p", 1, NOW);
        let same = |k: BindingKey| k.verify(&reference, "m", "p", 0).is_ok();

        let hex = "ab".repeat(32);
        assert!(same(
            BindingKey::from_file_contents(hex.as_bytes()).unwrap()
        ));
        assert!(same(
            BindingKey::from_file_contents(format!("  {}\n", hex.to_uppercase()).as_bytes())
                .unwrap()
        ));
        let b64 = STANDARD.encode(secret);
        assert!(same(
            BindingKey::from_file_contents(format!("base64:{b64}\n").as_bytes()).unwrap()
        ));
        let b64url = URL_SAFE_NO_PAD.encode(secret);
        assert!(same(
            BindingKey::from_file_contents(format!("base64:{b64url}").as_bytes()).unwrap()
        ));
        assert!(same(BindingKey::from_file_contents(&secret).unwrap()));

        assert_eq!(
            BindingKey::from_file_contents("a".repeat(63).as_bytes()).unwrap_err(),
            BindingKeyError::BadHex
        );
        assert_eq!(
            BindingKey::from_file_contents(b"abcd\n").unwrap_err(),
            BindingKeyError::TooShort { len: 2 }
        );
        assert_eq!(
            BindingKey::from_file_contents(b"base64:!!!").unwrap_err(),
            BindingKeyError::BadBase64
        );
        assert_eq!(
            BindingKey::from_file_contents(b"").unwrap_err(),
            BindingKeyError::TooShort { len: 0 }
        );
    }

    #[test]
    fn decode_hex_rejects_non_hex() {
        assert_eq!(decode_hex(b"0aFf"), Some(vec![0x0a, 0xff]));
        assert_eq!(decode_hex(b"0g"), None);
        assert_eq!(decode_hex(b"abc"), None);
    }
}
