//! Where things live: `meeting_id → shard`, and the shard encoded in server connection IDs.
//!
//! **Meeting placement.** `shard = jump_consistent_hash(fnv1a64(meeting_id), shard_count)`.
//! FNV-1a is stable across builds, platforms and processes (unlike `std`'s `RandomState`), and
//! the jump consistent hash (Lamping & Veach, 2014) spreads keys uniformly and moves only
//! `1/n` of them when the shard count changes from `n-1` to `n`.
//!
//! **Connection IDs** (16 bytes, server-chosen, leaves room for a node id as in QUIC-LB):
//!
//! ```text
//! byte 0      config octet: bits 7..5 = config rotation (0b000), bits 4..0 = CID length - 1 (15)
//! bytes 1..3  node id (u16 big-endian; 0 until multi-node load balancing uses it)
//! bytes 3..5  shard id (u16 big-endian)
//! bytes 5..16 random
//! ```
//!
//! Any shard can read the owner of a packet from its destination CID without shared state.

use super::ids::{MeetingId, ShardId};

/// Length of every server-chosen connection ID.
pub const CID_LEN: usize = 16;
const CONFIG_OCTET: u8 = (CID_LEN as u8) - 1;

/// 64-bit FNV-1a.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Jump consistent hash: maps `key` to a bucket in `0..buckets` (`buckets >= 1`).
pub fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let buckets = i64::from(buckets.max(1));
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// The meeting → shard map of one process.
#[derive(Debug, Clone, Copy)]
pub struct Router {
    shards: u16,
}

impl Router {
    /// A router over `shards` shards (at least 1).
    pub fn new(shards: u16) -> Self {
        Self {
            shards: shards.max(1),
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u16 {
        self.shards
    }

    /// The shard that owns `meeting`.
    pub fn shard_for(&self, meeting: &MeetingId) -> ShardId {
        self.shard_for_str(meeting.as_str())
    }

    /// The shard that owns the meeting with this (already validated) id.
    pub fn shard_for_str(&self, meeting: &str) -> ShardId {
        ShardId(jump_consistent_hash(fnv1a64(meeting.as_bytes()), u32::from(self.shards)) as u16)
    }
}

/// Builds a server connection ID owned by `shard` on `node`, with `random` filling the rest.
pub fn encode_cid(node: u16, shard: ShardId, random: &[u8; CID_LEN - 5]) -> [u8; CID_LEN] {
    let mut cid = [0u8; CID_LEN];
    cid[0] = CONFIG_OCTET;
    cid[1..3].copy_from_slice(&node.to_be_bytes());
    cid[3..5].copy_from_slice(&shard.0.to_be_bytes());
    cid[5..].copy_from_slice(random);
    cid
}

/// The owning shard of a server-chosen CID, or `None` if `cid` is not one of ours
/// (e.g. the client-chosen DCID of an Initial packet).
pub fn shard_of_cid(cid: &[u8], shard_count: u16) -> Option<ShardId> {
    if cid.len() != CID_LEN || cid[0] != CONFIG_OCTET {
        return None;
    }
    let shard = u16::from_be_bytes([cid[3], cid[4]]);
    (shard < shard_count).then_some(ShardId(shard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable() {
        // Pinned values: changing the hash would move every live meeting after an upgrade.
        let r = Router::new(8);
        let a = r.shard_for_str("standup");
        for _ in 0..10 {
            assert_eq!(Router::new(8).shard_for_str("standup"), a);
        }
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Router::new(1).shard_for_str("anything"), ShardId(0));
    }

    #[test]
    fn placement_is_uniform_for_1_to_64_shards() {
        let ids: Vec<String> = (0..64_000).map(|i| format!("meeting-{i}")).collect();
        for n in 1..=64u16 {
            let r = Router::new(n);
            let mut counts = vec![0u32; n as usize];
            for id in &ids {
                let s = r.shard_for_str(id);
                assert!(s.0 < n);
                counts[s.0 as usize] += 1;
            }
            let expected = ids.len() as f64 / f64::from(n);
            for (shard, c) in counts.iter().enumerate() {
                let dev = (f64::from(*c) - expected).abs() / expected;
                assert!(
                    dev < 0.10,
                    "{n} shards: shard {shard} has {c}, expected ~{expected}"
                );
            }
        }
    }

    #[test]
    fn growing_shards_moves_few_meetings() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("m{i}")).collect();
        let (a, b) = (Router::new(7), Router::new(8));
        let moved = ids
            .iter()
            .filter(|id| a.shard_for_str(id) != b.shard_for_str(id))
            .count();
        // Ideal is 1/8 of the keys.
        assert!(moved < ids.len() / 6, "moved {moved}");
    }

    #[test]
    fn cid_round_trip() {
        let cid = encode_cid(0, ShardId(5), &[7; CID_LEN - 5]);
        assert_eq!(shard_of_cid(&cid, 8), Some(ShardId(5)));
        assert_eq!(
            shard_of_cid(&cid, 4),
            None,
            "shard beyond count is not ours"
        );
        assert_eq!(shard_of_cid(&cid[..8], 8), None);
        let mut foreign = cid;
        foreign[0] = 0xc3;
        assert_eq!(shard_of_cid(&foreign, 8), None);
    }
}
