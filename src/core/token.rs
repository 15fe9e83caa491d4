//! Meeting tokens (signaling v1 §4): compact JWS signed with Ed25519 (`"alg":"EdDSA"`).
//!
//! [`TokenVerifier`] is the sans-IO check run on every `join`: it holds the public keys of a
//! JWKS and turns a token string plus the current time into [`Claims`] or a [`TokenError`] whose
//! [`TokenError::reason`] is a metric label. Nothing about the failure reaches the client (the
//! caller answers `unauthorized`), and neither the token nor its claims should be logged.
//!
//! [`TokenSigner`] is the issuing side, used by `mc token`, the tests and the load generator.
//!
//! # Verification order
//!
//! 1. size (≤ [`MAX_TOKEN_LEN`]) and shape: exactly three segments of unpadded base64url;
//! 2. header: a JSON object with `alg` exactly `"EdDSA"`, a `kid` naming a JWKS key, no `crit`;
//! 3. the Ed25519 signature over `header_b64 "." payload_b64`, checked with `verify_strict`;
//! 4. only then the claims: presence and types, `token_type`, `meeting_id`, `exp`, `iat`, `nbf`.
//!
//! # Time rules
//!
//! All times are Unix seconds. A token is expired when `now >= exp`; the clock skew grants no
//! grace on `exp` (a token's lifetime is the issuer's decision). The skew applies to the claims
//! that may legitimately be slightly ahead of our clock: `iat` is rejected when
//! `iat > now + skew`, and an optional `nbf` when `nbf > now + skew`.

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::core::protocol::Role;

/// Longest accepted token, in bytes. Anything longer is rejected before decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Deepest JSON nesting accepted in a token's header or claims (objects and arrays).
pub const MAX_JSON_DEPTH: usize = 8;

/// The only accepted `alg` header value.
const ALG_EDDSA: &str = "EdDSA";

/// The required value of the `token_type` claim.
const TOKEN_TYPE_MEETING: &str = "meeting";

/// The verified claims of a meeting token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user id (`sub`), non-empty.
    pub sub: String,
    /// The meeting the token admits to; equal to the one asked for.
    pub meeting_id: String,
    /// The role granted in the meeting.
    pub role: Role,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issue time, Unix seconds.
    pub iat: u64,
    /// Optional token id.
    pub jti: Option<String>,
}

/// Why a meeting token was refused. Every variant maps to `unauthorized` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is longer than [`MAX_TOKEN_LEN`].
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLarge,
    /// The token is not three unpadded base64url segments holding a JSON object header and
    /// claims, or its JSON is too deep or has duplicate fields.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is absent or anything but exactly `EdDSA`.
    #[error("token alg is not EdDSA")]
    BadAlg,
    /// The header carries a `crit` parameter; no JWS extensions are understood.
    #[error("token header has unsupported crit parameter")]
    UnsupportedCrit,
    /// The header has no `kid` string.
    #[error("token header has no kid")]
    MissingKid,
    /// The header's `kid` names no key of the JWKS.
    #[error("token kid is not in the JWKS")]
    UnknownKid,
    /// The signature is not 64 bytes or does not verify under the named key.
    #[error("token signature does not verify")]
    BadSignature,
    /// A required claim is absent (or `null`).
    #[error("token claim `{0}` is missing")]
    MissingClaim(&'static str),
    /// A claim has the wrong JSON type or an invalid value (e.g. a negative or fractional time,
    /// an empty `sub`).
    #[error("token claim `{0}` is invalid")]
    InvalidClaim(&'static str),
    /// `token_type` is not `"meeting"`.
    #[error("token_type is not meeting")]
    WrongType,
    /// `meeting_id` differs from the meeting being joined.
    #[error("token is for another meeting")]
    WrongMeeting,
    /// `role` is not `"host"` or `"participant"`.
    #[error("token role is not host or participant")]
    BadRole,
    /// `now >= exp`.
    #[error("token has expired")]
    Expired,
    /// `iat` is further in the future than the allowed clock skew.
    #[error("token was issued in the future")]
    IssuedInFuture,
    /// `nbf` is further in the future than the allowed clock skew.
    #[error("token is not valid yet")]
    NotYetValid,
}

impl TokenError {
    /// A stable snake_case label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::TooLarge => "too_large",
            TokenError::Malformed(_) => "malformed",
            TokenError::BadAlg => "bad_alg",
            TokenError::UnsupportedCrit => "unsupported_crit",
            TokenError::MissingKid => "missing_kid",
            TokenError::UnknownKid => "unknown_kid",
            TokenError::BadSignature => "bad_signature",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::InvalidClaim(_) => "invalid_claim",
            TokenError::WrongType => "wrong_type",
            TokenError::WrongMeeting => "wrong_meeting",
            TokenError::BadRole => "bad_role",
            TokenError::Expired => "expired",
            TokenError::IssuedInFuture => "issued_in_future",
            TokenError::NotYetValid => "not_yet_valid",
        }
    }
}

/// Why a JWKS document was refused. The whole set is refused: a JWKS with one bad key is a
/// configuration mistake worth fixing rather than skipping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// The document is not valid JSON.
    #[error("JWKS is not valid JSON: {0}")]
    NotJson(String),
    /// The document is not an object with a `keys` array.
    #[error("JWKS must be an object with a \"keys\" array")]
    NotKeySet,
    /// The `keys` array is empty.
    #[error("JWKS has no keys")]
    NoKeys,
    /// A key is not a JSON object.
    #[error("JWKS key #{index} is not an object")]
    KeyNotObject {
        /// Position in `keys`.
        index: usize,
    },
    /// A key has no `kid` string, or an empty one.
    #[error("JWKS key #{index} has no kid")]
    MissingKid {
        /// Position in `keys`.
        index: usize,
    },
    /// A key's `kty` is not `OKP`.
    #[error("JWKS key {kid:?}: kty must be \"OKP\"")]
    WrongKeyType {
        /// The key's id.
        kid: String,
    },
    /// A key's `crv` is not `Ed25519`.
    #[error("JWKS key {kid:?}: crv must be \"Ed25519\"")]
    WrongCurve {
        /// The key's id.
        kid: String,
    },
    /// A key declares a `use` other than `sig`.
    #[error("JWKS key {kid:?}: use must be \"sig\" when present")]
    WrongUse {
        /// The key's id.
        kid: String,
    },
    /// A key declares an `alg` other than `EdDSA`.
    #[error("JWKS key {kid:?}: alg must be \"EdDSA\" when present")]
    WrongAlg {
        /// The key's id.
        kid: String,
    },
    /// A key carries private material (`d`); the controller only needs public keys.
    #[error(
        "JWKS key {kid:?} contains a private key (\"d\"); give the controller public keys only"
    )]
    PrivateKey {
        /// The key's id.
        kid: String,
    },
    /// A key's `x` is missing or not unpadded base64url.
    #[error("JWKS key {kid:?}: x must be unpadded base64url")]
    BadXEncoding {
        /// The key's id.
        kid: String,
    },
    /// A key's `x` does not decode to 32 bytes.
    #[error("JWKS key {kid:?}: x must decode to 32 bytes, got {len}")]
    BadXLength {
        /// The key's id.
        kid: String,
        /// Decoded length.
        len: usize,
    },
    /// A key's `x` is not a usable Ed25519 public key (not a curve point, or a weak key).
    #[error("JWKS key {kid:?}: x is not a valid Ed25519 public key")]
    InvalidKey {
        /// The key's id.
        kid: String,
    },
    /// Two keys share a `kid`.
    #[error("JWKS has two keys with kid {kid:?}")]
    DuplicateKid {
        /// The repeated id.
        kid: String,
    },
}

/// Checks meeting tokens against the public keys of a JWKS.
///
/// Key rules (strict, the whole JWKS is refused otherwise): every key needs `kty: "OKP"`,
/// `crv: "Ed25519"`, a non-empty unique `kid` and a 32-byte `x`; `use`, when present, must be
/// `"sig"` and `alg`, when present, `"EdDSA"`; private keys (`d`) are refused. Other members
/// are ignored.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Vec<(String, VerifyingKey)>,
    clock_skew_secs: u64,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field(
                "kids",
                &self.keys.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("clock_skew_secs", &self.clock_skew_secs)
            .finish()
    }
}

impl TokenVerifier {
    /// Parses a JWKS document; `clock_skew_secs` is the tolerance applied to `iat` and `nbf`.
    pub fn from_jwks_json(json: &str, clock_skew_secs: u64) -> Result<Self, JwksError> {
        let doc: Value =
            serde_json::from_str(json).map_err(|e| JwksError::NotJson(e.to_string()))?;
        let list = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NotKeySet)?;
        if list.is_empty() {
            return Err(JwksError::NoKeys);
        }
        let mut keys: Vec<(String, VerifyingKey)> = Vec::with_capacity(list.len());
        for (index, jwk) in list.iter().enumerate() {
            let jwk = jwk.as_object().ok_or(JwksError::KeyNotObject { index })?;
            let kid = match jwk.get("kid").and_then(Value::as_str) {
                Some(kid) if !kid.is_empty() => kid.to_owned(),
                _ => return Err(JwksError::MissingKid { index }),
            };
            let key = parse_jwk(jwk, &kid)?;
            if keys.iter().any(|(k, _)| *k == kid) {
                return Err(JwksError::DuplicateKid { kid });
            }
            keys.push((kid, key));
        }
        Ok(Self {
            keys,
            clock_skew_secs,
        })
    }

    /// Number of keys loaded.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The allowed clock skew, seconds.
    pub fn clock_skew_secs(&self) -> u64 {
        self.clock_skew_secs
    }

    /// Verifies `token` for a join of `meeting_id` at `now_unix_secs`.
    pub fn verify(
        &self,
        token: &str,
        meeting_id: &str,
        now_unix_secs: u64,
    ) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("not three segments"));
        };

        // Header: decide on the algorithm and key before touching anything else.
        let header_bytes = decode_segment(header_b64)?;
        check_depth(&header_bytes)?;
        let header: RawHeader = serde_json::from_slice(&header_bytes)
            .map_err(|_| TokenError::Malformed("header is not a JSON object"))?;
        match header.alg {
            Some(Value::String(ref alg)) if alg == ALG_EDDSA => {}
            _ => return Err(TokenError::BadAlg),
        }
        if header.crit.is_some() {
            return Err(TokenError::UnsupportedCrit);
        }
        let kid = match header.kid {
            Some(Value::String(kid)) => kid,
            _ => return Err(TokenError::MissingKid),
        };
        let key = self
            .keys
            .iter()
            .find(|(k, _)| *k == kid)
            .map(|(_, key)| key)
            .ok_or(TokenError::UnknownKid)?;

        // Signature over the exact received bytes of the first two segments.
        let sig_bytes = decode_segment(sig_b64)?;
        let sig_array: [u8; 64] = sig_bytes
            .as_slice()
            .try_into()
            .map_err(|_| TokenError::BadSignature)?;
        let signature = Signature::from_bytes(&sig_array);
        let signed_len = header_b64.len() + 1 + payload_b64.len();
        let signing_input = token
            .get(..signed_len)
            .ok_or(TokenError::Malformed("not three segments"))?;
        key.verify_strict(signing_input.as_bytes(), &signature)
            .map_err(|_| TokenError::BadSignature)?;

        // Claims, now authenticated.
        let payload = decode_segment(payload_b64)?;
        check_depth(&payload)?;
        let raw: RawClaims = serde_json::from_slice(&payload)
            .map_err(|_| TokenError::Malformed("claims are not a JSON object"))?;
        self.check_claims(raw, meeting_id, now_unix_secs)
    }

    fn check_claims(
        &self,
        raw: RawClaims,
        meeting_id: &str,
        now: u64,
    ) -> Result<Claims, TokenError> {
        let sub = required_string(raw.sub, "sub")?;
        if sub.is_empty() {
            return Err(TokenError::InvalidClaim("sub"));
        }
        let token_type = required_string(raw.token_type, "token_type")?;
        let claim_meeting = required_string(raw.meeting_id, "meeting_id")?;
        let role = match raw.role {
            None => return Err(TokenError::MissingClaim("role")),
            Some(Value::String(r)) if r == "host" => Role::Host,
            Some(Value::String(r)) if r == "participant" => Role::Participant,
            Some(_) => return Err(TokenError::BadRole),
        };
        let exp = required_time(raw.exp, "exp")?;
        let iat = required_time(raw.iat, "iat")?;
        let nbf = match raw.nbf {
            None => None,
            Some(v) => Some(v.as_u64().ok_or(TokenError::InvalidClaim("nbf"))?),
        };
        let jti = match raw.jti {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err(TokenError::InvalidClaim("jti")),
        };

        if token_type != TOKEN_TYPE_MEETING {
            return Err(TokenError::WrongType);
        }
        if claim_meeting != meeting_id {
            return Err(TokenError::WrongMeeting);
        }
        if now >= exp {
            return Err(TokenError::Expired);
        }
        let latest = now.saturating_add(self.clock_skew_secs);
        if iat > latest {
            return Err(TokenError::IssuedInFuture);
        }
        if nbf.is_some_and(|nbf| nbf > latest) {
            return Err(TokenError::NotYetValid);
        }
        Ok(Claims {
            sub,
            meeting_id: claim_meeting,
            role,
            exp,
            iat,
            jti,
        })
    }
}

/// Validates one JWK (already known to have a `kid`) and returns its public key.
fn parse_jwk(jwk: &Map<String, Value>, kid: &str) -> Result<VerifyingKey, JwksError> {
    let kid_owned = || kid.to_owned();
    if jwk.get("kty").and_then(Value::as_str) != Some("OKP") {
        return Err(JwksError::WrongKeyType { kid: kid_owned() });
    }
    if jwk.get("crv").and_then(Value::as_str) != Some("Ed25519") {
        return Err(JwksError::WrongCurve { kid: kid_owned() });
    }
    if jwk.get("use").is_some_and(|u| u.as_str() != Some("sig")) {
        return Err(JwksError::WrongUse { kid: kid_owned() });
    }
    if jwk
        .get("alg")
        .is_some_and(|a| a.as_str() != Some(ALG_EDDSA))
    {
        return Err(JwksError::WrongAlg { kid: kid_owned() });
    }
    if jwk.contains_key("d") {
        return Err(JwksError::PrivateKey { kid: kid_owned() });
    }
    let x = jwk
        .get("x")
        .and_then(Value::as_str)
        .and_then(|x| URL_SAFE_NO_PAD.decode(x).ok())
        .ok_or_else(|| JwksError::BadXEncoding { kid: kid_owned() })?;
    let x: [u8; 32] = x.as_slice().try_into().map_err(|_| JwksError::BadXLength {
        kid: kid_owned(),
        len: x.len(),
    })?;
    let key =
        VerifyingKey::from_bytes(&x).map_err(|_| JwksError::InvalidKey { kid: kid_owned() })?;
    if key.is_weak() {
        return Err(JwksError::InvalidKey { kid: kid_owned() });
    }
    Ok(key)
}

/// The header members we read. Unknown members are ignored; duplicates are refused by serde.
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<Value>,
    kid: Option<Value>,
    crit: Option<IgnoredAny>,
}

/// The claims we read, untyped so each rule can report its own error. Duplicate members are
/// refused by serde; `null` reads as absent.
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<Value>,
    token_type: Option<Value>,
    meeting_id: Option<Value>,
    role: Option<Value>,
    exp: Option<Value>,
    iat: Option<Value>,
    nbf: Option<Value>,
    jti: Option<Value>,
}

fn required_string(v: Option<Value>, name: &'static str) -> Result<String, TokenError> {
    match v {
        None => Err(TokenError::MissingClaim(name)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(TokenError::InvalidClaim(name)),
    }
}

/// A required NumericDate: a non-negative integer (floats, negatives and strings are refused).
fn required_time(v: Option<Value>, name: &'static str) -> Result<u64, TokenError> {
    v.ok_or(TokenError::MissingClaim(name))?
        .as_u64()
        .ok_or(TokenError::InvalidClaim(name))
}

/// Decodes one segment: unpadded base64url with canonical trailing bits, nothing else.
fn decode_segment(segment: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed("segment is not unpadded base64url"))
}

/// Refuses JSON nested deeper than [`MAX_JSON_DEPTH`], in one pass without parsing.
fn check_depth(json: &[u8]) -> Result<(), TokenError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(TokenError::Malformed("JSON nested too deeply"));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Why a signing key could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignerKeyError {
    /// The PEM is not a PKCS#8 Ed25519 private key.
    #[error("not a PKCS#8 Ed25519 private key PEM: {0}")]
    BadPem(String),
    /// The key id is empty.
    #[error("key id (kid) is empty")]
    EmptyKid,
}

/// The claims [`TokenSigner::mint`] puts in a meeting token (`token_type` is always `meeting`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintClaims {
    /// User id.
    pub sub: String,
    /// Meeting the token admits to.
    pub meeting_id: String,
    /// Role in the meeting.
    pub role: Role,
    /// Issue time, Unix seconds.
    pub iat: u64,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Optional token id.
    pub jti: Option<String>,
}

/// An Ed25519 private key with its `kid`, issuing meeting tokens.
///
/// `Debug` shows the `kid` only, never the key.
#[derive(Clone)]
pub struct TokenSigner {
    kid: String,
    key: SigningKey,
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The fixed DER prefix of an RFC 8410 PKCS#8 v1 Ed25519 private key; the 32-byte seed follows.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

impl TokenSigner {
    /// Generates a fresh key from the operating system's RNG.
    pub fn generate(kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// Builds a signer from a 32-byte Ed25519 seed (fixed keys for tests and benches).
    pub fn from_seed(seed: &[u8; 32], kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            key: SigningKey::from_bytes(seed),
        }
    }

    /// Loads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) Ed25519 key.
    pub fn from_pkcs8_pem(pem: &str, kid: &str) -> Result<Self, SignerKeyError> {
        if kid.is_empty() {
            return Err(SignerKeyError::EmptyKid);
        }
        let key = SigningKey::from_pkcs8_pem(pem.trim())
            .map_err(|e| SignerKeyError::BadPem(e.to_string()))?;
        Ok(Self {
            kid: kid.to_owned(),
            key,
        })
    }

    /// The key as a PKCS#8 v1 PEM (RFC 8410), readable by [`TokenSigner::from_pkcs8_pem`] and
    /// OpenSSL. The result is secret.
    pub fn to_pkcs8_pem(&self) -> String {
        let mut der = Vec::with_capacity(48);
        der.extend_from_slice(&PKCS8_ED25519_PREFIX);
        der.extend_from_slice(self.key.as_bytes());
        let b64 = STANDARD.encode(&der);
        format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWKS holding this key, for [`TokenVerifier::from_jwks_json`].
    pub fn jwks_json(&self) -> String {
        let mut jwk = Map::new();
        jwk.insert("kty".into(), "OKP".into());
        jwk.insert("crv".into(), "Ed25519".into());
        jwk.insert("use".into(), "sig".into());
        jwk.insert("alg".into(), ALG_EDDSA.into());
        jwk.insert("kid".into(), self.kid.clone().into());
        jwk.insert(
            "x".into(),
            URL_SAFE_NO_PAD
                .encode(self.key.verifying_key().as_bytes())
                .into(),
        );
        let mut doc = Map::new();
        doc.insert("keys".into(), Value::Array(vec![Value::Object(jwk)]));
        Value::Object(doc).to_string()
    }

    /// Mints a meeting token: header `{"alg":"EdDSA","typ":"JWT","kid":…}`, claims from
    /// `claims` plus `token_type: "meeting"`.
    pub fn mint(&self, claims: &MintClaims) -> String {
        let mut header = Map::new();
        header.insert("alg".into(), ALG_EDDSA.into());
        header.insert("typ".into(), "JWT".into());
        header.insert("kid".into(), self.kid.clone().into());

        let role = match claims.role {
            Role::Host => "host",
            Role::Participant => "participant",
        };
        let mut payload = Map::new();
        payload.insert("sub".into(), claims.sub.clone().into());
        payload.insert("token_type".into(), TOKEN_TYPE_MEETING.into());
        payload.insert("meeting_id".into(), claims.meeting_id.clone().into());
        payload.insert("role".into(), role.into());
        payload.insert("iat".into(), claims.iat.into());
        payload.insert("exp".into(), claims.exp.into());
        if let Some(jti) = &claims.jti {
            payload.insert("jti".into(), jti.clone().into());
        }
        self.sign_raw(
            &Value::Object(header).to_string(),
            &Value::Object(payload).to_string(),
        )
    }

    /// Signs arbitrary header and payload text as a compact JWS, for tests that need tokens
    /// [`TokenSigner::mint`] would never produce.
    pub fn sign_raw(&self, header_json: &str, payload_json: &str) -> String {
        let mut token = URL_SAFE_NO_PAD.encode(header_json);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload_json, &mut token);
        let signature = self.key.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEETING: &str = "m-1";
    const NOW: u64 = 1_700_000_000;
    const SKEW: u64 = 60;

    fn signer() -> TokenSigner {
        TokenSigner::from_seed(&[7; 32], "k1")
    }

    fn verifier() -> TokenVerifier {
        TokenVerifier::from_jwks_json(&signer().jwks_json(), SKEW).unwrap()
    }

    fn claims() -> MintClaims {
        MintClaims {
            sub: "user-1".into(),
            meeting_id: MEETING.into(),
            role: Role::Participant,
            iat: NOW - 10,
            exp: NOW + 3600,
            jti: Some("j-1".into()),
        }
    }

    fn valid_payload() -> Value {
        serde_json::json!({
            "sub": "user-1", "token_type": "meeting", "meeting_id": MEETING,
            "role": "host", "iat": NOW - 10, "exp": NOW + 3600
        })
    }

    const HEADER: &str = r#"{"alg":"EdDSA","kid":"k1"}"#;

    /// Signs `payload` with a good header and verifies it at `NOW`.
    fn verify_payload(payload: &Value) -> Result<Claims, TokenError> {
        let token = signer().sign_raw(HEADER, &payload.to_string());
        verifier().verify(&token, MEETING, NOW)
    }

    fn with(key: &str, value: Value) -> Value {
        let mut p = valid_payload();
        p[key] = value;
        p
    }

    fn without(key: &str) -> Value {
        let mut p = valid_payload();
        p.as_object_mut().unwrap().remove(key);
        p
    }

    #[test]
    fn valid_token_is_accepted() {
        let token = signer().mint(&claims());
        let got = verifier().verify(&token, MEETING, NOW).unwrap();
        assert_eq!(
            got,
            Claims {
                sub: "user-1".into(),
                meeting_id: MEETING.into(),
                role: Role::Participant,
                exp: NOW + 3600,
                iat: NOW - 10,
                jti: Some("j-1".into()),
            }
        );
        let host = verify_payload(&valid_payload()).unwrap();
        assert_eq!(host.role, Role::Host);
        assert_eq!(host.jti, None);
    }

    #[test]
    fn rfc8037_signing_vector() {
        // RFC 8037 Appendix A.1 / A.4.
        let d = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .unwrap();
        let signer = TokenSigner::from_seed(&d.try_into().unwrap(), "rfc");
        let jwks: Value = serde_json::from_str(&signer.jwks_json()).unwrap();
        assert_eq!(
            jwks["keys"][0]["x"],
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
        assert_eq!(
            signer.sign_raw(r#"{"alg":"EdDSA"}"#, "Example of Ed25519 signing"),
            "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.\
             hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
    }

    /// A fixed key and token: if minting or verification changes format, this fails.
    #[test]
    fn fixed_vector() {
        const JWKS: &str = r#"{"keys":[{"alg":"EdDSA","crv":"Ed25519","kid":"fixed-1","kty":"OKP","use":"sig","x":"GX9rI-FshTLGq8g4-s1ep4m-DHaykgM0A5v6iz02jWE"}]}"#;
        const TOKEN: &str = "eyJhbGciOiJFZERTQSIsImtpZCI6ImZpeGVkLTEiLCJ0eXAiOiJKV1QifQ.\
            eyJleHAiOjE3MDAwMDM2MDAsImlhdCI6MTcwMDAwMDAwMCwianRpIjoidC0xIiwibWVldGluZ19pZCI6InN0YW5kdXAiLCJyb2xlIjoiaG9zdCIsInN1YiI6ImFsaWNlIiwidG9rZW5fdHlwZSI6Im1lZXRpbmcifQ.\
            5dORkRRYoExH4ZKJJMkzv8TJg4uU2T2vp_xPbzfW4JxlJslFoSpFlHEyx4NMWOjXeg8xovJ75brktCuCwROdCw";
        let signer = TokenSigner::from_seed(&[42; 32], "fixed-1");
        assert_eq!(signer.jwks_json(), JWKS);
        let minted = signer.mint(&MintClaims {
            sub: "alice".into(),
            meeting_id: "standup".into(),
            role: Role::Host,
            iat: 1_700_000_000,
            exp: 1_700_003_600,
            jti: Some("t-1".into()),
        });
        assert_eq!(minted, TOKEN);
        let v = TokenVerifier::from_jwks_json(JWKS, 0).unwrap();
        let c = v.verify(TOKEN, "standup", 1_700_000_000).unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.role, Role::Host);
        assert_eq!(c.jti.as_deref(), Some("t-1"));
    }

    #[test]
    fn too_large() {
        let big = "a".repeat(MAX_TOKEN_LEN + 1);
        let err = verifier().verify(&big, MEETING, NOW).unwrap_err();
        assert_eq!(err, TokenError::TooLarge);
        assert_eq!(err.reason(), "too_large");
        // A genuinely signed but oversized token is refused too.
        let token = signer().sign_raw(
            HEADER,
            &with("pad", Value::String("x".repeat(MAX_TOKEN_LEN))).to_string(),
        );
        assert_eq!(
            verifier().verify(&token, MEETING, NOW),
            Err(TokenError::TooLarge)
        );
    }

    #[test]
    fn wrong_segment_count() {
        let token = signer().mint(&claims());
        let v = verifier();
        for bad in [
            String::new(),
            "abc".to_string(),
            "a.b".to_string(),
            format!("{token}.x"),
            format!("{token}."),
        ] {
            let err = v.verify(&bad, MEETING, NOW).unwrap_err();
            assert_eq!(err.reason(), "malformed", "{bad}");
        }
    }

    #[test]
    fn base64_padding_and_alphabet_are_rejected() {
        let v = verifier();
        // A header whose encoding needs padding: `{"alg":"EdDSA","kid":"k1"}` is 26 bytes.
        let token = signer().sign_raw(HEADER, &valid_payload().to_string());
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        assert_eq!(HEADER.len() % 3, 2);
        parts[0].push('=');
        let padded = parts.join(".");
        assert_eq!(
            v.verify(&padded, MEETING, NOW),
            Err(TokenError::Malformed("segment is not unpadded base64url"))
        );
        // Standard alphabet instead of url-safe.
        let std_sig = STANDARD
            .encode(
                URL_SAFE_NO_PAD
                    .decode(token.rsplit('.').next().unwrap())
                    .unwrap(),
            )
            .trim_end_matches('=')
            .to_string();
        let (head, _) = token.rsplit_once('.').unwrap();
        let std_token = format!("{head}.{std_sig}");
        if std_token != token {
            assert_eq!(
                v.verify(&std_token, MEETING, NOW).unwrap_err().reason(),
                "malformed"
            );
        }
        let with_plus = format!("{head}.{}", "+".repeat(86));
        assert_eq!(
            v.verify(&with_plus, MEETING, NOW).unwrap_err().reason(),
            "malformed"
        );
    }

    #[test]
    fn header_not_json() {
        let token = signer().sign_raw("not json", &valid_payload().to_string());
        assert_eq!(
            verifier()
                .verify(&token, MEETING, NOW)
                .unwrap_err()
                .reason(),
            "malformed"
        );
        let token = signer().sign_raw("[1,2]", &valid_payload().to_string());
        assert_eq!(
            verifier()
                .verify(&token, MEETING, NOW)
                .unwrap_err()
                .reason(),
            "malformed"
        );
    }

    #[test]
    fn bad_alg_variants() {
        let v = verifier();
        let payload = valid_payload().to_string();
        for alg in [
            r#""none""#,
            r#""HS256""#,
            r#""ES256""#,
            r#""RS256""#,
            r#""eddsa""#,
            r#""EDDSA""#,
            r#""Ed25519""#,
            r#"" EdDSA""#,
            "null",
            "1",
            r#"["EdDSA"]"#,
        ] {
            let header = format!(r#"{{"alg":{alg},"kid":"k1"}}"#);
            let token = signer().sign_raw(&header, &payload);
            let err = v.verify(&token, MEETING, NOW).unwrap_err();
            assert_eq!(err, TokenError::BadAlg, "{alg}");
            assert_eq!(err.reason(), "bad_alg");
        }
        let token = signer().sign_raw(r#"{"kid":"k1"}"#, &payload);
        assert_eq!(v.verify(&token, MEETING, NOW), Err(TokenError::BadAlg));
    }

    #[test]
    fn alg_none_with_empty_signature_is_rejected() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#);
        let payload = URL_SAFE_NO_PAD.encode(valid_payload().to_string());
        let token = format!("{header}.{payload}.");
        assert_eq!(
            verifier().verify(&token, MEETING, NOW),
            Err(TokenError::BadAlg)
        );
        // Even with a valid alg, an empty signature does not verify.
        let header = URL_SAFE_NO_PAD.encode(HEADER);
        let token = format!("{header}.{payload}.");
        assert_eq!(
            verifier().verify(&token, MEETING, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn crit_header_is_rejected() {
        let token = signer().sign_raw(
            r#"{"alg":"EdDSA","kid":"k1","crit":["exp"]}"#,
            &valid_payload().to_string(),
        );
        let err = verifier().verify(&token, MEETING, NOW).unwrap_err();
        assert_eq!(err, TokenError::UnsupportedCrit);
        assert_eq!(err.reason(), "unsupported_crit");
    }

    #[test]
    fn typ_is_optional() {
        for header in [
            r#"{"alg":"EdDSA","kid":"k1"}"#,
            r#"{"alg":"EdDSA","kid":"k1","typ":"JWT"}"#,
        ] {
            let token = signer().sign_raw(header, &valid_payload().to_string());
            assert!(verifier().verify(&token, MEETING, NOW).is_ok(), "{header}");
        }
    }

    #[test]
    fn missing_kid() {
        for header in [r#"{"alg":"EdDSA"}"#, r#"{"alg":"EdDSA","kid":7}"#] {
            let token = signer().sign_raw(header, &valid_payload().to_string());
            let err = verifier().verify(&token, MEETING, NOW).unwrap_err();
            assert_eq!(err, TokenError::MissingKid);
            assert_eq!(err.reason(), "missing_kid");
        }
    }

    #[test]
    fn unknown_kid() {
        let other = TokenSigner::from_seed(&[7; 32], "k2");
        let token = other.mint(&claims());
        let err = verifier().verify(&token, MEETING, NOW).unwrap_err();
        assert_eq!(err, TokenError::UnknownKid);
        assert_eq!(err.reason(), "unknown_kid");
    }

    #[test]
    fn wrong_key_same_kid_is_bad_signature() {
        let impostor = TokenSigner::from_seed(&[8; 32], "k1");
        let token = impostor.mint(&claims());
        let err = verifier().verify(&token, MEETING, NOW).unwrap_err();
        assert_eq!(err, TokenError::BadSignature);
        assert_eq!(err.reason(), "bad_signature");
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let token = signer().mint(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims();
        forged.role = Role::Host;
        let forged_token = signer().mint(&forged);
        let forged_payload = forged_token.split('.').nth(1).unwrap();
        let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(
            verifier().verify(&tampered, MEETING, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tampered_signature_is_rejected() {
        let token = signer().mint(&claims());
        let (head, sig) = token.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig[10] ^= 1;
        let tampered = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&sig));
        assert_eq!(
            verifier().verify(&tampered, MEETING, NOW),
            Err(TokenError::BadSignature)
        );
        let short = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&sig[..63]));
        assert_eq!(
            verifier().verify(&short, MEETING, NOW),
            Err(TokenError::BadSignature)
        );
        let tampered_header = {
            let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","kid":"k1","x":1}"#);
            let rest = token.split_once('.').unwrap().1;
            format!("{header}.{rest}")
        };
        assert_eq!(
            verifier().verify(&tampered_header, MEETING, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn claims_not_json_after_valid_signature() {
        let token = signer().sign_raw(HEADER, "not json");
        assert_eq!(
            verifier()
                .verify(&token, MEETING, NOW)
                .unwrap_err()
                .reason(),
            "malformed"
        );
    }

    #[test]
    fn duplicate_claims_are_rejected() {
        let payload = format!(
            r#"{{"sub":"u","token_type":"meeting","meeting_id":"{MEETING}","role":"participant","role":"host","iat":{},"exp":{}}}"#,
            NOW,
            NOW + 60
        );
        let token = signer().sign_raw(HEADER, &payload);
        assert_eq!(
            verifier()
                .verify(&token, MEETING, NOW)
                .unwrap_err()
                .reason(),
            "malformed"
        );
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let deep = format!("{}1{}", "[".repeat(20), "]".repeat(20));
        let payload = format!(
            r#"{{"x":{deep},"sub":"u","token_type":"meeting","meeting_id":"{MEETING}","role":"host","iat":{NOW},"exp":{}}}"#,
            NOW + 60
        );
        let token = signer().sign_raw(HEADER, &payload);
        assert_eq!(
            verifier().verify(&token, MEETING, NOW),
            Err(TokenError::Malformed("JSON nested too deeply"))
        );
        // Brackets inside strings do not count.
        let payload = with("note", Value::String("[[[[[[[[[[[[[[[[[[".into()));
        assert!(verify_payload(&payload).is_ok());
        let header = format!(r#"{{"alg":"EdDSA","kid":"k1","x":{deep}}}"#);
        let token = signer().sign_raw(&header, &valid_payload().to_string());
        assert_eq!(
            verifier().verify(&token, MEETING, NOW),
            Err(TokenError::Malformed("JSON nested too deeply"))
        );
    }

    #[test]
    fn missing_claims() {
        for claim in ["sub", "token_type", "meeting_id", "role", "exp", "iat"] {
            let err = verify_payload(&without(claim)).unwrap_err();
            assert_eq!(err, TokenError::MissingClaim(claim));
            assert_eq!(err.reason(), "missing_claim");
            let err = verify_payload(&with(claim, Value::Null)).unwrap_err();
            assert_eq!(err, TokenError::MissingClaim(claim));
        }
    }

    #[test]
    fn sub_must_be_non_empty_string() {
        for bad in [
            serde_json::json!(""),
            serde_json::json!(5),
            serde_json::json!({}),
        ] {
            let err = verify_payload(&with("sub", bad)).unwrap_err();
            assert_eq!(err, TokenError::InvalidClaim("sub"));
            assert_eq!(err.reason(), "invalid_claim");
        }
    }

    #[test]
    fn wrong_token_type() {
        for bad in ["refresh", "Meeting", "meeting "] {
            let err = verify_payload(&with("token_type", bad.into())).unwrap_err();
            assert_eq!(err, TokenError::WrongType);
            assert_eq!(err.reason(), "wrong_type");
        }
        assert_eq!(
            verify_payload(&with("token_type", 1.into())),
            Err(TokenError::InvalidClaim("token_type"))
        );
    }

    #[test]
    fn wrong_meeting() {
        let token = signer().mint(&claims());
        for other in ["m-2", "M-1", "m-1 ", ""] {
            let err = verifier().verify(&token, other, NOW).unwrap_err();
            assert_eq!(err, TokenError::WrongMeeting);
            assert_eq!(err.reason(), "wrong_meeting");
        }
    }

    #[test]
    fn bad_role() {
        for bad in [
            serde_json::json!("admin"),
            serde_json::json!("Host"),
            serde_json::json!(""),
            serde_json::json!(1),
            serde_json::json!(["host"]),
        ] {
            let err = verify_payload(&with("role", bad)).unwrap_err();
            assert_eq!(err, TokenError::BadRole);
            assert_eq!(err.reason(), "bad_role");
        }
    }

    #[test]
    fn times_must_be_non_negative_integers() {
        for claim in ["exp", "iat", "nbf"] {
            for bad in [
                serde_json::json!(-1),
                serde_json::json!(1.7e9),
                serde_json::json!(1_700_000_000.5),
                serde_json::json!("1700003600"),
                serde_json::json!(true),
            ] {
                let err = verify_payload(&with(claim, bad.clone())).unwrap_err();
                assert_eq!(err, TokenError::InvalidClaim(claim), "{claim} {bad}");
            }
        }
    }

    #[test]
    fn exp_boundary() {
        let exp = NOW + 100;
        let p = with("exp", exp.into());
        let token = signer().sign_raw(HEADER, &p.to_string());
        let v = verifier();
        assert!(v.verify(&token, MEETING, exp - 1).is_ok());
        let err = v.verify(&token, MEETING, exp).unwrap_err();
        assert_eq!(err, TokenError::Expired);
        assert_eq!(err.reason(), "expired");
        assert_eq!(v.verify(&token, MEETING, exp + 1), Err(TokenError::Expired));
    }

    #[test]
    fn iat_within_skew_accepted_beyond_rejected() {
        assert!(verify_payload(&with("iat", (NOW + SKEW).into())).is_ok());
        let err = verify_payload(&with("iat", (NOW + SKEW + 1).into())).unwrap_err();
        assert_eq!(err, TokenError::IssuedInFuture);
        assert_eq!(err.reason(), "issued_in_future");
        // With zero skew, any future iat fails.
        let strict = TokenVerifier::from_jwks_json(&signer().jwks_json(), 0).unwrap();
        let token = signer().sign_raw(HEADER, &with("iat", (NOW + 1).into()).to_string());
        assert_eq!(
            strict.verify(&token, MEETING, NOW),
            Err(TokenError::IssuedInFuture)
        );
    }

    #[test]
    fn skew_does_not_overflow() {
        let v = TokenVerifier::from_jwks_json(&signer().jwks_json(), u64::MAX).unwrap();
        let token = signer().sign_raw(HEADER, &with("iat", u64::MAX.into()).to_string());
        assert!(v.verify(&token, MEETING, NOW).is_ok());
    }

    #[test]
    fn nbf_rules() {
        assert!(verify_payload(&with("nbf", (NOW + SKEW).into())).is_ok());
        let err = verify_payload(&with("nbf", (NOW + SKEW + 1).into())).unwrap_err();
        assert_eq!(err, TokenError::NotYetValid);
        assert_eq!(err.reason(), "not_yet_valid");
    }

    #[test]
    fn jti_must_be_a_string() {
        assert_eq!(
            verify_payload(&with("jti", 5.into())),
            Err(TokenError::InvalidClaim("jti"))
        );
        let ok = verify_payload(&with("jti", "abc".into())).unwrap();
        assert_eq!(ok.jti.as_deref(), Some("abc"));
    }

    #[test]
    fn key_rotation() {
        let old = TokenSigner::from_seed(&[1; 32], "old");
        let new = TokenSigner::from_seed(&[2; 32], "new");
        let x = |s: &TokenSigner| {
            let doc: Value = serde_json::from_str(&s.jwks_json()).unwrap();
            doc["keys"][0].clone()
        };
        let jwks = serde_json::json!({ "keys": [x(&old), x(&new)] }).to_string();
        let v = TokenVerifier::from_jwks_json(&jwks, SKEW).unwrap();
        assert_eq!(v.key_count(), 2);
        assert!(v.verify(&old.mint(&claims()), MEETING, NOW).is_ok());
        assert!(v.verify(&new.mint(&claims()), MEETING, NOW).is_ok());
        // A token claiming the new kid but signed by the old key fails.
        let crossed = TokenSigner::from_seed(&[1; 32], "new").mint(&claims());
        assert_eq!(
            v.verify(&crossed, MEETING, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn generated_signer_round_trips_pem() {
        let s = TokenSigner::generate("gen");
        let pem = s.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let back = TokenSigner::from_pkcs8_pem(&pem, "gen").unwrap();
        assert_eq!(back.jwks_json(), s.jwks_json());
        let v = TokenVerifier::from_jwks_json(&back.jwks_json(), 0).unwrap();
        assert!(v.verify(&s.mint(&claims()), MEETING, NOW).is_ok());
        assert!(!format!("{s:?}").contains(&pem));
        assert!(matches!(
            TokenSigner::from_pkcs8_pem("garbage", "k"),
            Err(SignerKeyError::BadPem(_))
        ));
        assert_eq!(
            TokenSigner::from_pkcs8_pem(&pem, "").unwrap_err(),
            SignerKeyError::EmptyKid
        );
    }

    #[test]
    fn reads_pkcs8_v2_from_other_tools() {
        // `openssl genpkey -algorithm ed25519` output is v1; ed25519-dalek's own encoder may emit
        // v2 with the public key. Both load.
        use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePrivateKey as _};
        let key = SigningKey::from_bytes(&[9; 32]);
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let s = TokenSigner::from_pkcs8_pem(&pem, "k").unwrap();
        assert_eq!(
            s.to_pkcs8_pem(),
            TokenSigner::from_seed(&[9; 32], "k").to_pkcs8_pem()
        );
    }

    fn jwks_err(json: &str) -> JwksError {
        TokenVerifier::from_jwks_json(json, 0).unwrap_err()
    }

    const X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn jwk(extra: &str) -> String {
        format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"a","x":"{X}"{extra}}}]}}"#)
    }

    #[test]
    fn jwks_accepts_minimal_and_annotated_keys() {
        assert_eq!(
            TokenVerifier::from_jwks_json(&jwk(""), 0)
                .unwrap()
                .key_count(),
            1
        );
        let v = TokenVerifier::from_jwks_json(&jwk(r#","use":"sig","alg":"EdDSA","ext":1"#), 0);
        assert!(v.is_ok());
    }

    #[test]
    fn jwks_errors() {
        assert!(matches!(jwks_err("{"), JwksError::NotJson(_)));
        assert_eq!(jwks_err("[]"), JwksError::NotKeySet);
        assert_eq!(jwks_err(r#"{"keys":{}}"#), JwksError::NotKeySet);
        assert_eq!(jwks_err(r#"{"keys":[]}"#), JwksError::NoKeys);
        assert_eq!(
            jwks_err(r#"{"keys":[1]}"#),
            JwksError::KeyNotObject { index: 0 }
        );
        assert_eq!(
            jwks_err(&format!(
                r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{X}"}}]}}"#
            )),
            JwksError::MissingKid { index: 0 }
        );
        let kid = || "a".to_string();
        assert_eq!(
            jwks_err(&jwk("").replace("OKP", "EC")),
            JwksError::WrongKeyType { kid: kid() }
        );
        assert_eq!(
            jwks_err(&jwk("").replace("Ed25519", "X25519")),
            JwksError::WrongCurve { kid: kid() }
        );
        assert_eq!(
            jwks_err(&jwk(r#","use":"enc""#)),
            JwksError::WrongUse { kid: kid() }
        );
        assert_eq!(
            jwks_err(&jwk(r#","alg":"ES256""#)),
            JwksError::WrongAlg { kid: kid() }
        );
        assert_eq!(
            jwks_err(&jwk(r#","d":"secret""#)),
            JwksError::PrivateKey { kid: kid() }
        );
        assert_eq!(
            jwks_err(&jwk("").replace(X, &format!("{X}="))),
            JwksError::BadXEncoding { kid: kid() }
        );
        assert_eq!(
            jwks_err(&jwk("").replace(X, "AAAA")),
            JwksError::BadXLength { kid: kid(), len: 3 }
        );
        // The identity point is a weak key.
        let identity = URL_SAFE_NO_PAD.encode({
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        });
        assert_eq!(
            jwks_err(&jwk("").replace(X, &identity)),
            JwksError::InvalidKey { kid: kid() }
        );
        let dup = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"a","x":"{X}"}},{{"kty":"OKP","crv":"Ed25519","kid":"a","x":"{X}"}}]}}"#
        );
        assert_eq!(jwks_err(&dup), JwksError::DuplicateKid { kid: kid() });
        // Messages name the problem.
        assert!(JwksError::NoKeys.to_string().contains("no keys"));
    }
}
