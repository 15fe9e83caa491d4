//! Keys and maps of the connection table's hot lookups.
//!
//! Every datagram looks its destination CID up, and every flush walks the set of touched
//! connections, so these maps use a fast hasher (foldhash, randomly seeded per map: a peer that
//! chooses its initial DCID cannot aim collisions at a known seed) and CIDs are stored inline
//! (no allocation per key).

use std::collections::{HashMap, HashSet};

/// A map with the fast, per-instance seeded hasher.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// A set with the fast, per-instance seeded hasher.
pub type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// Longest connection ID QUIC v1 allows (RFC 9000 §17.2).
pub const MAX_CID_LEN: usize = 20;

/// A connection ID stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CidKey {
    len: u8,
    bytes: [u8; MAX_CID_LEN],
}

impl CidKey {
    /// The key of `cid`, or `None` when it is longer than QUIC allows.
    pub fn new(cid: &[u8]) -> Option<Self> {
        let mut bytes = [0u8; MAX_CID_LEN];
        bytes.get_mut(..cid.len())?.copy_from_slice(cid);
        Some(Self {
            len: cid.len() as u8,
            bytes,
        })
    }

    /// The CID's bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for CidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.as_slice() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_different_lengths_differ_even_with_the_same_prefix() {
        let a = CidKey::new(&[1, 2, 3]).unwrap();
        let b = CidKey::new(&[1, 2, 3, 0]).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_slice(), &[1, 2, 3]);
        let mut m: FastMap<CidKey, u8> = FastMap::default();
        m.insert(a, 1);
        m.insert(b, 2);
        assert_eq!(m.get(&CidKey::new(&[1, 2, 3]).unwrap()), Some(&1));
        assert_eq!(m.get(&b), Some(&2));
    }

    #[test]
    fn a_cid_longer_than_quic_allows_has_no_key() {
        assert!(CidKey::new(&[0u8; 21]).is_none());
        assert!(CidKey::new(&[0u8; 20]).is_some());
        assert!(CidKey::new(&[]).is_some());
    }
}
