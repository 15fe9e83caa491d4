//! The core's counters, keyed by typed labels. Each family is a fixed enum whose variants index
//! an array: counting is an array increment, and the exported label values come from one table
//! per enum (`mc_joins_total{result}`, `mc_token_failures_total{reason}`,
//! `mc_messages_dropped_total{actor_type,reason}`, `mc_actor_panics_total{actor_type}`,
//! `mc_migration_*_total`; docs/observability.md).

use std::marker::PhantomData;

use crate::core::token::TokenError;

/// A label of a counter family.
pub trait Label: Copy + 'static {
    /// What the metrics see for each variant (a label value, or an `(actor_type, reason)`
    /// pair), in variant order.
    type Key: 'static;
    /// Every variant's key, indexed by [`Label::index`].
    const KEYS: &'static [Self::Key];
    /// Position of the variant in [`Label::KEYS`].
    fn index(self) -> usize;
    /// Whether the series exists at zero from the start; others appear once counted.
    fn precreated(index: usize) -> bool;
}

/// Counters of one family, one per variant of `L` (`N` = number of variants).
#[derive(Debug, Clone)]
pub struct Counts<L: Label, const N: usize> {
    n: [u64; N],
    _label: PhantomData<L>,
}

impl<L: Label, const N: usize> Default for Counts<L, N> {
    fn default() -> Self {
        Self {
            n: [0; N],
            _label: PhantomData,
        }
    }
}

impl<L: Label, const N: usize> Counts<L, N> {
    /// Adds `by` to `label`'s counter.
    pub fn add(&mut self, label: L, by: u64) {
        self.n[label.index()] += by;
    }

    /// Adds one to `label`'s counter.
    pub fn incr(&mut self, label: L) {
        self.add(label, 1);
    }

    /// The series to export: every pre-created label, and the others once counted.
    pub fn iter(&self) -> impl Iterator<Item = (&'static L::Key, &u64)> + '_ {
        L::KEYS
            .iter()
            .zip(self.n.iter())
            .enumerate()
            .filter(|(i, (_, n))| L::precreated(*i) || **n > 0)
            .map(|(_, kv)| kv)
    }

    /// The counts of every exported series.
    pub fn values(&self) -> impl Iterator<Item = &u64> + '_ {
        self.iter().map(|(_, n)| n)
    }
}

impl<L: Label, const N: usize> std::ops::Index<L> for Counts<L, N> {
    type Output = u64;
    fn index(&self, label: L) -> &u64 {
        &self.n[label.index()]
    }
}

/// Declares a label enum whose variants map to label values (in `KEYS` order).
macro_rules! labels {
    ($(#[$m:meta])* $name:ident : $key:ty { $($(#[$vm:meta])* $v:ident => $k:expr,)+ }) => {
        labels!($(#[$m])* $name : $key { $($(#[$vm])* $v => $k,)+ } precreated |_| true);
    };
    (
        $(#[$m:meta])* $name:ident : $key:ty { $($(#[$vm:meta])* $v:ident => $k:expr,)+ }
        precreated $pre:expr
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $v,)+
        }
        impl $name {
            /// Every variant, in `KEYS` order.
            pub const ALL: &'static [$name] = &[$($name::$v,)+];
        }
        impl Label for $name {
            type Key = $key;
            const KEYS: &'static [$key] = &[$($k,)+];
            fn index(self) -> usize {
                self as usize
            }
            fn precreated(index: usize) -> bool {
                let pre: fn(usize) -> bool = $pre;
                pre(index)
            }
        }
    };
}

labels! {
    /// Result of a join attempt (`mc_joins_total{result}`).
    JoinResult: &'static str {
        /// Joined as a new participant.
        Ok => "ok",
        /// Resumed an existing participant.
        Resumed => "resumed",
        /// Came back after its meeting moved here.
        Migrated => "migrated",
        /// Verified here, handed to the meeting's shard.
        Handoff => "handoff",
        /// Token or binding refused.
        Unauthorized => "unauthorized",
        /// Malformed join.
        InvalidRequest => "invalid_request",
        /// GC mode: the meeting is not assigned here.
        NotFound => "not_found",
        /// Draining or at a capacity limit.
        CapacityExceeded => "capacity_exceeded",
        /// No join within `--join-timeout`.
        Timeout => "timeout",
    }
}

labels! {
    /// Why a join or resume token was refused (`mc_token_failures_total{reason}`).
    TokenFailure: &'static str {
        /// Longer than allowed.
        TooLarge => "too_large",
        /// Not a well-formed JWT.
        Malformed => "malformed",
        /// `alg` is not EdDSA.
        BadAlg => "bad_alg",
        /// Unsupported `crit` header.
        UnsupportedCrit => "unsupported_crit",
        /// No `kid`.
        MissingKid => "missing_kid",
        /// `kid` not in the JWKS.
        UnknownKid => "unknown_kid",
        /// Signature does not verify.
        BadSignature => "bad_signature",
        /// A required claim is missing.
        MissingClaim => "missing_claim",
        /// A claim is invalid.
        InvalidClaim => "invalid_claim",
        /// `token_type` is not meeting.
        WrongType => "wrong_type",
        /// Token for another meeting.
        WrongMeeting => "wrong_meeting",
        /// Unknown role.
        BadRole => "bad_role",
        /// Expired.
        Expired => "expired",
        /// Issued in the future.
        IssuedInFuture => "issued_in_future",
        /// `nbf` in the future.
        NotYetValid => "not_yet_valid",
        /// The resume's binding token does not verify or is spent.
        BadBinding => "bad_binding",
        /// The resume names no participant of the meeting.
        ResumeUnknownParticipant => "resume_unknown_participant",
    }
    precreated |i| TOKEN_FAILURE_REASONS.iter().any(|r| r.index() == i)
}

impl TokenFailure {
    /// The failure counted for a refused meeting token.
    pub fn of(e: &TokenError) -> Self {
        match e {
            TokenError::TooLarge => Self::TooLarge,
            TokenError::Malformed(_) => Self::Malformed,
            TokenError::BadAlg => Self::BadAlg,
            TokenError::UnsupportedCrit => Self::UnsupportedCrit,
            TokenError::MissingKid => Self::MissingKid,
            TokenError::UnknownKid => Self::UnknownKid,
            TokenError::BadSignature => Self::BadSignature,
            TokenError::MissingClaim(_) => Self::MissingClaim,
            TokenError::InvalidClaim(_) => Self::InvalidClaim,
            TokenError::WrongType => Self::WrongType,
            TokenError::WrongMeeting => Self::WrongMeeting,
            TokenError::BadRole => Self::BadRole,
            TokenError::Expired => Self::Expired,
            TokenError::IssuedInFuture => Self::IssuedInFuture,
            TokenError::NotYetValid => Self::NotYetValid,
        }
    }
}

labels! {
    /// A dropped message: which mailbox and why (`mc_messages_dropped_total{actor_type,reason}`).
    DropReason: (&'static str, &'static str) {
        /// The shard's inbox (the `meeting` mailbox) was full.
        MailboxFull => ("meeting", "mailbox_full"),
        /// A connection's outbound queue was full.
        SlowConsumer => ("connection", "slow_consumer"),
        /// The sender exceeded its rate limit.
        RateLimited => ("connection", "rate_limited"),
        /// The meeting was frozen for export.
        Migrating => ("meeting", "migrating"),
        /// The held queue of a participant not back from a migration was full.
        MigrationHold => ("connection", "migration_hold"),
    }
}

labels! {
    /// The actor a caught panic ended (`mc_actor_panics_total{actor_type}`).
    PanicActor: &'static str {
        /// A meeting (its message handler panicked).
        Meeting => "meeting",
    }
}

labels! {
    /// Migration events counted by a shard (`mc_migration_meetings_total{direction}` and
    /// `mc_migration_participants_total{outcome}`).
    MigrationOutcome: &'static str {
        /// A meeting committed away from here.
        Exported => "exported",
        /// A meeting arrived here.
        Imported => "imported",
        /// A participant told to move.
        Notified => "notified",
        /// A migrated participant resumed here.
        Returned => "returned",
        /// An imported participant never came back within its window.
        Lost => "lost",
    }
}

/// Migration outcomes counted by shards, pre-created at zero: meetings `exported` (committed
/// here) and `imported` (arrived here), participants `notified` (told to move), `returned`
/// (resumed at the target) and `lost` (imported but never came back within the window).
pub const MIGRATION_OUTCOMES: &[&str] = <MigrationOutcome as Label>::KEYS;

/// Join results, pre-created so every series exists from the start.
pub const JOIN_RESULTS: &[&str] = <JoinResult as Label>::KEYS;

/// Token failure reasons counted even before they first happen.
pub const TOKEN_FAILURE_REASONS: &[TokenFailure] = &[
    TokenFailure::Malformed,
    TokenFailure::BadAlg,
    TokenFailure::UnknownKid,
    TokenFailure::BadSignature,
    TokenFailure::Expired,
    TokenFailure::IssuedInFuture,
    TokenFailure::WrongMeeting,
    TokenFailure::WrongType,
    TokenFailure::BadBinding,
];

/// Counters and gauges of the core, read by the runtime for metrics.
#[derive(Debug, Clone, Default)]
pub struct CoreStats {
    /// Drops by `(actor_type, reason)`.
    pub dropped: Counts<DropReason, 5>,
    /// Caught panics by actor type.
    pub panics: Counts<PanicActor, 1>,
    /// Join attempts by result.
    pub joins: Counts<JoinResult, 9>,
    /// Token failures by reason.
    pub token_failures: Counts<TokenFailure, 17>,
    /// Client messages processed.
    pub messages_processed: u64,
    /// Frames queued to connections.
    pub frames_out: u64,
    /// Connections disconnected as slow consumers.
    pub slow_consumers: u64,
    /// Migration events by outcome.
    pub migration: Counts<MigrationOutcome, 5>,
}

// One counter per label: the array sizes above follow the enums.
const _: () = assert!(<DropReason as Label>::KEYS.len() == 5);
const _: () = assert!(<PanicActor as Label>::KEYS.len() == 1);
const _: () = assert!(<JoinResult as Label>::KEYS.len() == 9);
const _: () = assert!(<TokenFailure as Label>::KEYS.len() == 17);
const _: () = assert!(<MigrationOutcome as Label>::KEYS.len() == 5);

impl CoreStats {
    /// Counters with every well-known label pre-created at zero.
    pub fn zeroed() -> Self {
        Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_failure_labels_are_the_token_error_reasons() {
        let errors = [
            TokenError::TooLarge,
            TokenError::Malformed("x"),
            TokenError::BadAlg,
            TokenError::UnsupportedCrit,
            TokenError::MissingKid,
            TokenError::UnknownKid,
            TokenError::BadSignature,
            TokenError::MissingClaim("exp"),
            TokenError::InvalidClaim("exp"),
            TokenError::WrongType,
            TokenError::WrongMeeting,
            TokenError::BadRole,
            TokenError::Expired,
            TokenError::IssuedInFuture,
            TokenError::NotYetValid,
        ];
        for e in &errors {
            let f = TokenFailure::of(e);
            assert_eq!(TokenFailure::KEYS[f.index()], e.reason(), "{e:?}");
        }
    }

    #[test]
    fn zeroed_exports_the_precreated_series_and_others_once_counted() {
        let mut s = CoreStats::zeroed();
        let joins: Vec<_> = s.joins.iter().map(|(k, n)| (*k, *n)).collect();
        assert_eq!(
            joins,
            JOIN_RESULTS.iter().map(|k| (*k, 0)).collect::<Vec<_>>()
        );
        let mut reasons: Vec<&str> = s.token_failures.iter().map(|(k, _)| *k).collect();
        reasons.sort_unstable();
        assert_eq!(
            reasons,
            [
                "bad_alg",
                "bad_binding",
                "bad_signature",
                "expired",
                "issued_in_future",
                "malformed",
                "unknown_kid",
                "wrong_meeting",
                "wrong_type"
            ]
        );
        s.token_failures
            .incr(TokenFailure::ResumeUnknownParticipant);
        s.token_failures.add(TokenFailure::Expired, 2);
        let counted: Vec<_> = s
            .token_failures
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (*k, *n))
            .collect();
        assert_eq!(counted, [("expired", 2), ("resume_unknown_participant", 1)]);
        assert_eq!(s.token_failures.iter().count(), 10);
        let drops: Vec<_> = s.dropped.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            drops,
            [
                ("meeting", "mailbox_full"),
                ("connection", "slow_consumer"),
                ("connection", "rate_limited"),
                ("meeting", "migrating"),
                ("connection", "migration_hold"),
            ]
        );
        assert_eq!(
            s.panics.iter().map(|(k, n)| (*k, *n)).collect::<Vec<_>>(),
            [("meeting", 0)]
        );
        assert_eq!(
            MIGRATION_OUTCOMES,
            ["exported", "imported", "notified", "returned", "lost"]
        );
    }
}
