//! Identity newtypes shared by every layer.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Maximum length of a meeting id (signaling v1 §3).
pub const MAX_MEETING_ID_LEN: usize = 128;

/// A validated meeting id: 1..=128 characters of `[A-Za-z0-9_.-]`.
/// Cloning is a reference-count increment: ids are copied into every message and timer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeetingId(Arc<str>);

/// Why a string is not a valid meeting id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MeetingIdError {
    /// The id is empty.
    #[error("meeting_id is empty")]
    Empty,
    /// The id is longer than 128 characters.
    #[error("meeting_id is longer than 128 characters")]
    TooLong,
    /// The id contains a character outside `[A-Za-z0-9_.-]`.
    #[error("meeting_id may only contain A-Z a-z 0-9 _ . -")]
    BadChar,
}

impl MeetingId {
    /// Validates and wraps a meeting id.
    pub fn parse(s: &str) -> Result<Self, MeetingIdError> {
        if s.is_empty() {
            return Err(MeetingIdError::Empty);
        }
        if s.len() > MAX_MEETING_ID_LEN {
            return Err(MeetingIdError::TooLong);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        {
            return Err(MeetingIdError::BadChar);
        }
        Ok(Self(Arc::from(s)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for MeetingId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MeetingId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MeetingId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for MeetingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A participant id, unique within its meeting. Rendered as `p<shard>-<seq>` in hex.
/// Cloning is a reference-count increment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(Arc<str>);

impl ParticipantId {
    /// Builds the id of the `seq`-th participant created on `shard`.
    pub fn new(shard: ShardId, seq: u64) -> Self {
        Self(Arc::from(format!("p{:x}-{:x}", shard.0, seq)))
    }

    /// Wraps a participant id received from a peer (validated by length only; lookups decide).
    pub fn from_wire(s: &str) -> Option<Self> {
        (!s.is_empty() && s.len() <= 64).then(|| Self(Arc::from(s)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for ParticipantId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ParticipantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self(Arc::from(String::deserialize(d)?)))
    }
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Index of a shard (one per pinned core), `0..shard_count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardId(pub u16);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A connection's identity, unique in the process for its lifetime (survives handoff).
/// The adapter allocates it: the high 16 bits are the shard that accepted the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    /// The `seq`-th connection accepted by `shard`.
    pub fn new(shard: ShardId, seq: u64) -> Self {
        Self((u64::from(shard.0) << 48) | (seq & 0xffff_ffff_ffff))
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{:x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meeting_id_rules() {
        assert!(MeetingId::parse("abc-DEF_1.2").is_ok());
        assert_eq!(MeetingId::parse(""), Err(MeetingIdError::Empty));
        assert_eq!(
            MeetingId::parse(&"a".repeat(129)),
            Err(MeetingIdError::TooLong)
        );
        assert!(MeetingId::parse(&"a".repeat(128)).is_ok());
        assert_eq!(MeetingId::parse("a b"), Err(MeetingIdError::BadChar));
        assert_eq!(MeetingId::parse("é"), Err(MeetingIdError::BadChar));
        assert_eq!(MeetingId::parse("a/b"), Err(MeetingIdError::BadChar));
    }

    #[test]
    fn conn_id_carries_shard() {
        let c = ConnId::new(ShardId(3), 7);
        assert_eq!(c.0 >> 48, 3);
        assert_ne!(ConnId::new(ShardId(1), 7), ConnId::new(ShardId(2), 7));
    }
}
