//! Exact delivery accounting: which messages every receiver should have got, and did.
//!
//! The server orders each meeting's events into one sequence (signaling v1 §4), and each
//! sender's messages reach each receiver in order over one stream. The load generator uses that:
//!
//! * **Sender side** ([`SenderLedger`]). A sender follows the meeting from its own stream
//!   (`join_response.participants`, `participant_joined`, `participant_left`; display names carry
//!   the participant index and connection epoch). Every message it sends *after* it learned that
//!   `R` joined and *before* it learned that `R` left is one `R` must receive: the server
//!   sequenced `R`'s join before telling the sender, and the message reaches the server after
//!   that. The ledger records, per receiver membership, the half-open range of sequence numbers
//!   sent in that interval.
//! * **Receiver side** ([`ReceiverLog`]). Every receiver membership records the sequence numbers
//!   it got from each sender as runs.
//! * **Tally** ([`tally`]). Expected = the ledger's ranges; received = the runs inside them; the
//!   difference is lost. A receiver that left during the run (churn, `--hold`, a disconnect)
//!   cannot tell a message sequenced after its leave from one lost just before it, so its
//!   expectation from each sender ends at the last sequence number it received from that sender:
//!   gaps before it count, an ambiguous tail does not. Receivers still connected at the end of
//!   the drain expect every message of the range, so a lost tail counts too.

use std::collections::HashMap;

/// One membership: a participant index and its connection epoch (a churned participant
/// rejoins as a new member with the next epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberKey {
    /// Participant index.
    pub idx: u32,
    /// Connection epoch.
    pub epoch: u32,
}

/// What a sender expected its meeting's members to receive.
#[derive(Debug, Clone, Default)]
pub struct SenderLedger {
    /// The sender's participant index.
    pub sender: u32,
    open: HashMap<MemberKey, u64>,
    /// Closed ranges `[from, to)` of sequence numbers per receiver membership.
    pub ranges: Vec<(MemberKey, u64, u64)>,
}

impl SenderLedger {
    /// An empty ledger for `sender`.
    pub fn new(sender: u32) -> Self {
        Self {
            sender,
            ..Self::default()
        }
    }

    /// The sender learned that `member` is in the meeting; its next message is `next_seq`.
    pub fn open(&mut self, member: MemberKey, next_seq: u64) {
        self.open.entry(member).or_insert(next_seq);
    }

    /// The sender learned that `member` left.
    pub fn close(&mut self, member: MemberKey, next_seq: u64) {
        if let Some(from) = self.open.remove(&member) {
            if next_seq > from {
                self.ranges.push((member, from, next_seq));
            }
        }
    }

    /// The sender itself left or the run ended.
    pub fn close_all(&mut self, next_seq: u64) {
        for (member, from) in self.open.drain() {
            if next_seq > from {
                self.ranges.push((member, from, next_seq));
            }
        }
    }

    /// Members currently expected to receive each message.
    pub fn audience(&self) -> usize {
        self.open.len()
    }
}

/// Sorted, disjoint, half-open runs of received sequence numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runs(Vec<(u64, u64)>);

/// How a sequence number fitted the runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// New; `skipped` numbers were jumped over after the previous highest one.
    New {
        /// Size of the gap this number opened (0 when in order).
        skipped: u64,
    },
    /// Already received.
    Duplicate,
    /// New but below the highest one received (fills a gap).
    Late,
}

impl Runs {
    /// Adds `seq`.
    pub fn record(&mut self, seq: u64) -> Recorded {
        match self.0.last_mut() {
            None => {
                self.0.push((seq, seq + 1));
                return Recorded::New { skipped: 0 };
            }
            Some(last) if seq == last.1 => {
                last.1 += 1;
                return Recorded::New { skipped: 0 };
            }
            Some(last) if seq > last.1 => {
                let skipped = seq - last.1;
                self.0.push((seq, seq + 1));
                return Recorded::New { skipped };
            }
            Some(_) => {}
        }
        // Below the highest: find the run at or before `seq`.
        let i = self.0.partition_point(|r| r.0 <= seq);
        if i > 0 && seq < self.0[i - 1].1 {
            return Recorded::Duplicate;
        }
        let joins_prev = i > 0 && self.0[i - 1].1 == seq;
        let joins_next = i < self.0.len() && self.0[i].0 == seq + 1;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.0[i - 1].1 = self.0[i].1;
                self.0.remove(i);
            }
            (true, false) => self.0[i - 1].1 += 1,
            (false, true) => self.0[i].0 = seq,
            (false, false) => self.0.insert(i, (seq, seq + 1)),
        }
        Recorded::Late
    }

    /// How many numbers in `[from, to)` were received.
    pub fn count_in(&self, from: u64, to: u64) -> u64 {
        self.0
            .iter()
            .map(|&(a, b)| b.min(to).saturating_sub(a.max(from)))
            .sum()
    }

    /// One past the highest number received.
    pub fn end(&self) -> Option<u64> {
        self.0.last().map(|r| r.1)
    }

    /// Total received.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|r| r.1 - r.0).sum()
    }
}

/// What one receiver membership got.
#[derive(Debug, Clone)]
pub struct ReceiverLog {
    /// The membership.
    pub member: MemberKey,
    /// Runs per sender index.
    pub from: HashMap<u32, Runs, IndexHash>,
    /// The connection ended before the end of the drain.
    pub departed: bool,
}

impl ReceiverLog {
    /// An empty log.
    pub fn new(member: MemberKey) -> Self {
        Self {
            member,
            from: HashMap::default(),
            departed: false,
        }
    }

    /// Records message `seq` of `sender`.
    pub fn record(&mut self, sender: u32, seq: u64) -> Recorded {
        self.from.entry(sender).or_default().record(seq)
    }
}

/// A hasher for small integer keys looked up once per delivery: one multiplication instead of
/// SipHash (the keys are our own participant indices, not attacker-chosen).
#[derive(Debug, Clone, Copy, Default)]
pub struct IndexHash;

impl std::hash::BuildHasher for IndexHash {
    type Hasher = IndexHasher;
    fn build_hasher(&self) -> IndexHasher {
        IndexHasher(0)
    }
}

/// See [`IndexHash`].
#[derive(Debug, Clone, Copy, Default)]
pub struct IndexHasher(u64);

impl std::hash::Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = (self.0 ^ u64::from(v)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The outcome of [`tally`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Deliveries the server owed.
    pub expected: u64,
    /// Of those, received.
    pub received: u64,
    /// `expected - received`.
    pub lost: u64,
    /// Deliveries outside any expectation (e.g. sent just before the sender saw the join).
    pub unexpected: u64,
}

/// Matches every ledger range against the receivers' runs.
pub fn tally(ledgers: &[SenderLedger], receivers: &[ReceiverLog]) -> Tally {
    let by_member: HashMap<MemberKey, &ReceiverLog> =
        receivers.iter().map(|r| (r.member, r)).collect();
    let empty = Runs::default();
    let mut t = Tally::default();
    let mut matched: u64 = 0;
    for ledger in ledgers {
        for &(member, from, to) in &ledger.ranges {
            let (runs, departed) = match by_member.get(&member) {
                Some(log) => (log.from.get(&ledger.sender).unwrap_or(&empty), log.departed),
                // Never saw its own join_response: treat as gone before anything arrived.
                None => (&empty, true),
            };
            let to = if departed {
                to.min(runs.end().unwrap_or(from))
            } else {
                to
            };
            if to <= from {
                continue;
            }
            let got = runs.count_in(from, to);
            t.expected += to - from;
            t.received += got;
            matched += got;
        }
    }
    let total: u64 = receivers
        .iter()
        .flat_map(|r| r.from.values())
        .map(Runs::total)
        .sum();
    t.lost = t.expected - t.received;
    t.unexpected = total.saturating_sub(matched);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(idx: u32, epoch: u32) -> MemberKey {
        MemberKey { idx, epoch }
    }

    #[test]
    fn runs_in_order_gaps_late_duplicates() {
        let mut r = Runs::default();
        assert_eq!(r.record(5), Recorded::New { skipped: 0 });
        assert_eq!(r.record(6), Recorded::New { skipped: 0 });
        assert_eq!(r.record(9), Recorded::New { skipped: 2 });
        assert_eq!(r.record(6), Recorded::Duplicate);
        assert_eq!(r.record(8), Recorded::Late);
        assert_eq!(r.record(7), Recorded::Late);
        assert_eq!(r, Runs(vec![(5, 10)]));
        assert_eq!(r.record(2), Recorded::Late);
        assert_eq!(r.record(3), Recorded::Late);
        assert_eq!(r, Runs(vec![(2, 4), (5, 10)]));
        assert_eq!(r.count_in(0, 100), 7);
        assert_eq!(r.count_in(3, 6), 2);
        assert_eq!(r.end(), Some(10));
        assert_eq!(r.total(), 7);
    }

    #[test]
    fn steady_meeting_without_loss() {
        // Sender 0 sent seqs 0..10 to receivers 1 and 2.
        let mut l = SenderLedger::new(0);
        l.open(m(1, 0), 0);
        l.open(m(2, 0), 0);
        assert_eq!(l.audience(), 2);
        l.close_all(10);
        let mut r1 = ReceiverLog::new(m(1, 0));
        let mut r2 = ReceiverLog::new(m(2, 0));
        for s in 0..10 {
            r1.record(0, s);
            r2.record(0, s);
        }
        let t = tally(&[l], &[r1, r2]);
        assert_eq!(
            t,
            Tally {
                expected: 20,
                received: 20,
                lost: 0,
                unexpected: 0
            }
        );
    }

    #[test]
    fn lost_tail_and_middle_count_for_connected_receivers() {
        let mut l = SenderLedger::new(0);
        l.open(m(1, 0), 0);
        l.close_all(10);
        let mut r = ReceiverLog::new(m(1, 0));
        for s in [0, 1, 2, 4, 5, 6] {
            r.record(0, s);
        }
        let t = tally(&[l], &[r]);
        assert_eq!((t.expected, t.received, t.lost), (10, 6, 4));
    }

    #[test]
    fn departed_receiver_tail_is_not_counted_but_gaps_are() {
        let mut l = SenderLedger::new(0);
        l.open(m(1, 0), 0);
        l.close(m(1, 0), 10);
        let mut r = ReceiverLog::new(m(1, 0));
        for s in [0, 1, 3, 4] {
            r.record(0, s);
        }
        r.departed = true;
        let t = tally(&[l], &[r]);
        assert_eq!((t.expected, t.received, t.lost), (5, 4, 1));
    }

    #[test]
    fn early_extra_deliveries_are_unexpected_not_lost() {
        // The receiver joined while seq 3 was in flight: the sender only learned of it at 4.
        let mut l = SenderLedger::new(7);
        l.open(m(1, 2), 4);
        l.close_all(6);
        let mut r = ReceiverLog::new(m(1, 2));
        for s in 3..6 {
            r.record(7, s);
        }
        let t = tally(&[l], &[r]);
        assert_eq!((t.expected, t.received, t.lost, t.unexpected), (2, 2, 0, 1));
    }

    #[test]
    fn epochs_are_separate_members() {
        let mut l = SenderLedger::new(0);
        l.open(m(1, 0), 0);
        l.close(m(1, 0), 5);
        l.open(m(1, 1), 8);
        l.close_all(10);
        let mut old = ReceiverLog::new(m(1, 0));
        for s in 0..5 {
            old.record(0, s);
        }
        old.departed = true;
        let mut new = ReceiverLog::new(m(1, 1));
        new.record(0, 9);
        let t = tally(&[l], &[old, new]);
        assert_eq!((t.expected, t.received, t.lost), (7, 6, 1));
    }

    #[test]
    fn unknown_receiver_expects_nothing() {
        let mut l = SenderLedger::new(0);
        l.open(m(3, 0), 0);
        l.close_all(4);
        assert_eq!(tally(&[l], &[]).expected, 0);
    }
}
