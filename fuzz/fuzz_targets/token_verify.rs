//! `TokenVerifier::verify` on arbitrary token strings against a fixed JWKS.
//!
//! Input: `[now: u64 BE][meeting selector: u8][token bytes…]` (the token as lossy UTF-8). The
//! seeds in `corpus/token_verify` are real tokens signed with the fixed key below, so the
//! fuzzer starts from inputs that pass the signature check and mutates from there.
//!
//! Checked: no panic; an accepted token is for the meeting asked for, not expired at `now`, not
//! issued beyond the skew, has a non-empty `sub`; every refusal has a known metric label.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mc::core::token::{TokenSigner, TokenVerifier};

/// Seed of the key the corpus tokens are signed with (see `examples/seed_corpus.rs`).
pub const SEED: [u8; 32] = [7; 32];
pub const KID: &str = "fuzz-1";
const SKEW: u64 = 60;
const MEETINGS: [&str; 4] = ["m-1", "standup", "", "m-2"];

const REASONS: &[&str] = &[
    "too_large",
    "malformed",
    "bad_alg",
    "unsupported_crit",
    "missing_kid",
    "unknown_kid",
    "bad_signature",
    "missing_claim",
    "invalid_claim",
    "wrong_type",
    "wrong_meeting",
    "bad_role",
    "expired",
    "issued_in_future",
    "not_yet_valid",
];

fn verifier() -> &'static TokenVerifier {
    static V: OnceLock<TokenVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let signer = TokenSigner::from_seed(&SEED, KID);
        // A second, unrelated key in the set, so kid selection matters.
        let other = TokenSigner::from_seed(&[8; 32], "fuzz-2");
        let a: serde_json::Value = serde_json::from_str(&signer.jwks_json()).unwrap();
        let b: serde_json::Value = serde_json::from_str(&other.jwks_json()).unwrap();
        let jwks = serde_json::json!({ "keys": [a["keys"][0], b["keys"][0]] });
        TokenVerifier::from_jwks_json(&jwks.to_string(), SKEW).expect("fixed JWKS")
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let now = u64::from_be_bytes(data[..8].try_into().unwrap());
    let meeting = MEETINGS[usize::from(data[8]) % MEETINGS.len()];
    let token = String::from_utf8_lossy(&data[9..]);
    match verifier().verify(&token, meeting, now) {
        Ok(c) => {
            assert_eq!(c.meeting_id, meeting);
            assert!(now < c.exp, "accepted an expired token");
            assert!(
                c.iat <= now.saturating_add(SKEW),
                "accepted a token from the future"
            );
            assert!(!c.sub.is_empty());
        }
        Err(e) => assert!(
            REASONS.contains(&e.reason()),
            "unknown reason {}",
            e.reason()
        ),
    }
});
