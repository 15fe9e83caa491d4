//! Stateless address-validation tokens for QUIC Retry (RFC 9000 §8.1.2).
//!
//! A token binds the client's address and the original destination CID to a time with an
//! HMAC under a process-wide random key, so any shard can validate a token another shard
//! issued and a spoofed source address cannot complete a handshake (no amplification).

use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long a Retry token stays valid.
pub const TOKEN_LIFETIME_SECS: u64 = 10;
const VERSION: u8 = 1;
const MAC_LEN: usize = 16;

/// The key tokens are signed with (random per process).
#[derive(Clone)]
pub struct RetryKey([u8; 32]);

impl std::fmt::Debug for RetryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RetryKey(<redacted>)")
    }
}

impl RetryKey {
    /// A key from secret bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn mac(&self, peer: &SocketAddr, issued: u64, odcid: &[u8]) -> [u8; MAC_LEN] {
        // Any key length is valid for HMAC.
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        match peer {
            SocketAddr::V4(a) => m.update(&a.ip().octets()),
            SocketAddr::V6(a) => m.update(&a.ip().octets()),
        }
        m.update(&peer.port().to_be_bytes());
        m.update(&issued.to_be_bytes());
        m.update(odcid);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// A token for `peer` whose first Initial had destination CID `odcid`.
    pub fn mint(&self, peer: &SocketAddr, odcid: &[u8], now_unix_secs: u64) -> Vec<u8> {
        let mut t = Vec::with_capacity(1 + 8 + 1 + odcid.len() + MAC_LEN);
        t.push(VERSION);
        t.extend_from_slice(&now_unix_secs.to_be_bytes());
        t.push(odcid.len() as u8);
        t.extend_from_slice(odcid);
        t.extend_from_slice(&self.mac(peer, now_unix_secs, odcid));
        t
    }

    /// The original destination CID if `token` is valid for `peer` now.
    pub fn validate(&self, peer: &SocketAddr, token: &[u8], now_unix_secs: u64) -> Option<Vec<u8>> {
        let (&version, rest) = token.split_first()?;
        if version != VERSION || rest.len() < 9 {
            return None;
        }
        let issued = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
        let len = usize::from(*rest.get(8)?);
        let odcid = rest.get(9..9 + len)?;
        let mac = rest.get(9 + len..)?;
        if len > quiche::MAX_CONN_ID_LEN || mac.len() != MAC_LEN {
            return None;
        }
        if issued > now_unix_secs + 1 || now_unix_secs.saturating_sub(issued) > TOKEN_LIFETIME_SECS
        {
            return None;
        }
        let expected = self.mac(peer, issued, odcid);
        // Constant-time comparison.
        let diff = expected
            .iter()
            .zip(mac)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (diff == 0).then(|| odcid.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let k = RetryKey::new([3; 32]);
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let t = k.mint(&peer, b"odcid-123", 1000);
        assert_eq!(k.validate(&peer, &t, 1005), Some(b"odcid-123".to_vec()));
        assert_eq!(k.validate(&peer, &t, 1011), None, "expired");
        assert_eq!(
            k.validate(&"10.0.0.2:5000".parse().unwrap(), &t, 1001),
            None,
            "other address"
        );
        assert_eq!(
            k.validate(&"10.0.0.1:5001".parse().unwrap(), &t, 1001),
            None,
            "other port"
        );
        let mut bad = t.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(k.validate(&peer, &bad, 1001), None, "tampered");
        assert_eq!(
            RetryKey::new([4; 32]).validate(&peer, &t, 1001),
            None,
            "other key"
        );
        for junk in [&b""[..], &[1], &[2; 40], &t[..t.len() - 1]] {
            assert_eq!(k.validate(&peer, junk, 1001), None);
        }
    }
}
