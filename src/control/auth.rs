//! Bearer-token checks in constant time.
//!
//! Both sides are hashed with SHA-256 first so the comparison takes the same time whatever the
//! length or content of the presented token; the digests are then compared without an early exit.

use sha2::{Digest, Sha256};

/// Extracts the token of an `Authorization: Bearer <token>` header value.
pub(crate) fn bearer(header: Option<&[u8]>) -> Option<&[u8]> {
    let v = header?;
    let (scheme, rest) = v.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let start = rest.iter().position(|b| *b != b' ')?;
    let end = rest.iter().rposition(|b| *b != b' ')? + 1;
    Some(&rest[start..end])
}

/// Constant-time equality of two secrets.
pub(crate) fn token_matches(presented: &[u8], expected: &str) -> bool {
    let a = Sha256::digest(presented);
    let b = Sha256::digest(expected.as_bytes());
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    diff == 0 && !expected.is_empty()
}

/// True if `header` carries `Bearer <expected>`.
pub(crate) fn authorized(header: Option<&[u8]>, expected: &str) -> bool {
    bearer(header).is_some_and(|t| token_matches(t, expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(Some(b"Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(Some(b"bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(Some(b"Basic abc")), None);
        assert_eq!(bearer(Some(b"Bearer ")), None);
        assert_eq!(bearer(Some(b"Bear")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn token_comparison() {
        assert!(authorized(Some(b"Bearer s3cret"), "s3cret"));
        assert!(!authorized(Some(b"Bearer s3cre"), "s3cret"));
        assert!(!authorized(Some(b"Bearer s3cretx"), "s3cret"));
        assert!(!authorized(None, "s3cret"));
        assert!(
            !token_matches(b"", ""),
            "an empty configured token never matches"
        );
    }
}
