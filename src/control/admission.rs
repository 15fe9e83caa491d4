//! Admission of control HTTP connections: a bounded table that a connection flood cannot hold.
//!
//! The control port is unauthenticated for `/health`, `/ready` and `/metrics`, and the
//! orchestrator restarts the pod when `/health` stops answering, so whoever can open TCP
//! connections to it must not be able to take it away. The rules (`docs/security.md`):
//!
//! * at most [`MAX_CONNECTIONS`] connections, at most [`MAX_PER_PEER`] from one IP address;
//! * a newcomer is never refused while some connection is **idle** (not inside a request
//!   handler): when the table or the peer's share is full, the idle connection that has been
//!   idle longest is closed to make room, connections that never completed a request first
//!   (silent or dripping ones), keep-alive connections of clients that were served last;
//! * a connection must deliver its first request within a short deadline (the caller enforces
//!   it with [`Admission::started`]);
//! * handlers that wait (on shards, the GC) are bounded elsewhere (`MAX_WAITING_REQUESTS` in
//!   `http.rs`), so at most that many connections are ever not idle.
//!
//! `/health` and `/ready` answer from memory without waiting, so a probe's connection is busy
//! only for the instant of its answer: with the rules above a probe is always admitted and
//! answered. The table is plain data with time passed in; the accept loop owns the I/O.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Connections held at once.
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// Connections held at once from one IP address.
pub(crate) const MAX_PER_PEER: usize = 64;

/// Why a connection was closed unanswered or a request refused (`reason` label of
/// `mc_control_refusals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No complete first request within the first-request deadline.
    FirstRequestTimeout,
    /// Closed while idle to admit a newcomer: the table was full.
    Evicted,
    /// Closed while idle to admit a newcomer from the same address, which had reached its
    /// share; or the newcomer itself when none of that address's connections was idle.
    PeerLimit,
    /// A newcomer closed at once: the table was full and no connection was idle.
    TableFull,
    /// A request answered `503 busy`: too many requests were waiting on shards or the GC.
    Busy,
    /// `accept` failed (e.g. out of file descriptors).
    AcceptError,
}

impl Refusal {
    /// Every reason, in index order.
    pub(crate) const ALL: [Refusal; 6] = [
        Refusal::FirstRequestTimeout,
        Refusal::Evicted,
        Refusal::PeerLimit,
        Refusal::TableFull,
        Refusal::Busy,
        Refusal::AcceptError,
    ];

    /// The `reason` label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::FirstRequestTimeout => "first_request_timeout",
            Refusal::Evicted => "evicted",
            Refusal::PeerLimit => "peer_limit",
            Refusal::TableFull => "table_full",
            Refusal::Busy => "busy",
            Refusal::AcceptError => "accept_error",
        }
    }
}

/// Identifies one admitted connection.
pub(crate) type ConnKey = u64;

#[derive(Debug)]
struct Entry<H> {
    peer: IpAddr,
    /// Inside a request handler.
    busy: bool,
    /// Has had a request handled (a client that speaks HTTP).
    served: bool,
    /// When it was admitted or last finished a request.
    idle_since: Instant,
    /// How to close it (the connection task's abort handle).
    handle: Option<H>,
}

/// A connection closed to make room, with the reason to count.
#[derive(Debug)]
pub(crate) struct Eviction<H> {
    /// Its handle, if one was attached.
    pub handle: Option<H>,
    /// [`Refusal::Evicted`] or [`Refusal::PeerLimit`].
    pub reason: Refusal,
}

/// The connection table. `H` is what closes a connection (a task's abort handle).
#[derive(Debug)]
pub(crate) struct Admission<H> {
    max: usize,
    max_per_peer: usize,
    next: ConnKey,
    conns: HashMap<ConnKey, Entry<H>>,
    per_peer: HashMap<IpAddr, usize>,
}

impl<H> Admission<H> {
    /// An empty table with the production limits.
    pub(crate) fn new() -> Self {
        Self::with_limits(MAX_CONNECTIONS, MAX_PER_PEER)
    }

    /// An empty table with other limits (tests).
    pub(crate) fn with_limits(max: usize, max_per_peer: usize) -> Self {
        Self {
            max: max.max(1),
            max_per_peer: max_per_peer.max(1),
            next: 0,
            conns: HashMap::new(),
            per_peer: HashMap::new(),
        }
    }

    /// Connections held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    /// Admits a connection from `peer` at `now`, closing idle ones to make room. `Err` names
    /// why the newcomer itself is refused (nothing to evict); evictions are returned in both
    /// cases so their handles can be used and their reasons counted.
    #[allow(clippy::type_complexity)]
    pub(crate) fn admit(
        &mut self,
        peer: IpAddr,
        now: Instant,
    ) -> (Result<ConnKey, Refusal>, Vec<Eviction<H>>) {
        let mut evicted = Vec::new();
        if self.per_peer.get(&peer).copied().unwrap_or(0) >= self.max_per_peer {
            match self.victim(Some(peer)) {
                Some(k) => evicted.push(self.evict(k, Refusal::PeerLimit)),
                None => return (Err(Refusal::PeerLimit), evicted),
            }
        }
        if self.conns.len() >= self.max {
            match self.victim(None) {
                Some(k) => evicted.push(self.evict(k, Refusal::Evicted)),
                None => return (Err(Refusal::TableFull), evicted),
            }
        }
        let key = self.next;
        self.next += 1;
        self.conns.insert(
            key,
            Entry {
                peer,
                busy: false,
                served: false,
                idle_since: now,
                handle: None,
            },
        );
        *self.per_peer.entry(peer).or_insert(0) += 1;
        (Ok(key), evicted)
    }

    /// Attaches the handle that closes `key` (once its task is spawned).
    pub(crate) fn attach(&mut self, key: ConnKey, handle: H) {
        if let Some(e) = self.conns.get_mut(&key) {
            e.handle = Some(handle);
        }
    }

    /// A request of `key` entered its handler.
    pub(crate) fn begin_request(&mut self, key: ConnKey) {
        if let Some(e) = self.conns.get_mut(&key) {
            e.busy = true;
        }
    }

    /// A request of `key` left its handler at `now`.
    pub(crate) fn end_request(&mut self, key: ConnKey, now: Instant) {
        if let Some(e) = self.conns.get_mut(&key) {
            e.busy = false;
            e.served = true;
            e.idle_since = now;
        }
    }

    /// True once `key` has delivered a request (or is gone: nothing left to time out).
    pub(crate) fn started(&self, key: ConnKey) -> bool {
        self.conns.get(&key).is_none_or(|e| e.busy || e.served)
    }

    /// Forgets `key` (its connection ended). Returns false if it was already evicted.
    pub(crate) fn release(&mut self, key: ConnKey) -> bool {
        match self.conns.remove(&key) {
            Some(e) => {
                self.forget_peer(e.peer);
                true
            }
            None => false,
        }
    }

    /// The idle connection to close first (of `peer` only, if given): never-served before
    /// served, then longest idle.
    fn victim(&self, peer: Option<IpAddr>) -> Option<ConnKey> {
        self.conns
            .iter()
            .filter(|(_, e)| !e.busy && peer.is_none_or(|p| e.peer == p))
            .min_by_key(|(k, e)| (e.served, e.idle_since, **k))
            .map(|(k, _)| *k)
    }

    fn evict(&mut self, key: ConnKey, reason: Refusal) -> Eviction<H> {
        let handle = self.conns.remove(&key).and_then(|e| {
            self.forget_peer(e.peer);
            e.handle
        });
        Eviction { handle, reason }
    }

    fn forget_peer(&mut self, peer: IpAddr) {
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }
}

/// Counts refusals between summary log lines: one line at the first refusal after a quiet
/// interval, then at most one per interval while refusals go on, so a flood costs a few lines
/// instead of one per connection.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    interval: std::time::Duration,
    last: Option<Instant>,
    pending: [u64; Refusal::ALL.len()],
}

impl RefusalLog {
    /// A log that writes at most one line per `interval`.
    pub(crate) fn new(interval: std::time::Duration) -> Self {
        Self {
            interval,
            last: None,
            pending: [0; Refusal::ALL.len()],
        }
    }

    /// Notes one refusal at `now`; returns the counts to log if a line is due.
    pub(crate) fn note(&mut self, r: Refusal, now: Instant) -> Option<RefusalSummary> {
        self.pending[r as usize] += 1;
        self.due(now)
    }

    /// The counts to log if some are pending and a line is due at `now` (call periodically).
    pub(crate) fn due(&mut self, now: Instant) -> Option<RefusalSummary> {
        if self.pending.iter().all(|n| *n == 0)
            || self
                .last
                .is_some_and(|l| now.saturating_duration_since(l) < self.interval)
        {
            return None;
        }
        self.last = Some(now);
        Some(RefusalSummary(std::mem::take(&mut self.pending)))
    }
}

/// Refusals since the previous summary line, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RefusalSummary(pub [u64; Refusal::ALL.len()]);

impl RefusalSummary {
    /// Count of `r`.
    pub(crate) fn of(&self, r: Refusal) -> u64 {
        self.0[r as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_full_table_evicts_the_longest_silent_connection_never_the_newcomer() {
        let t0 = Instant::now();
        let mut a: Admission<u32> = Admission::with_limits(3, 3);
        let mut keys = Vec::new();
        for i in 0..3u32 {
            let (k, ev) = a.admit(ip(i as u8), t0 + Duration::from_millis(u64::from(i)));
            assert!(ev.is_empty());
            let k = k.unwrap();
            a.attach(k, i);
            keys.push(k);
        }
        // The first connection was served and sits in keep-alive; the others never spoke.
        a.begin_request(keys[0]);
        a.end_request(keys[0], t0 + Duration::from_millis(5));
        let (k, ev) = a.admit(ip(9), t0 + Duration::from_millis(10));
        assert!(k.is_ok());
        assert_eq!(ev.len(), 1);
        assert_eq!(
            ev[0].handle,
            Some(1),
            "the oldest never-served connection goes first"
        );
        assert_eq!(ev[0].reason, Refusal::Evicted);
        assert_eq!(a.len(), 3);
        assert!(!a.release(keys[1]), "an evicted connection is already gone");
    }

    #[test]
    fn busy_connections_are_never_evicted_and_a_full_busy_table_refuses() {
        let t0 = Instant::now();
        let mut a: Admission<u32> = Admission::with_limits(2, 2);
        let k1 = a.admit(ip(1), t0).0.unwrap();
        let k2 = a.admit(ip(2), t0).0.unwrap();
        a.begin_request(k1);
        a.begin_request(k2);
        let (k, ev) = a.admit(ip(3), t0);
        assert_eq!(k, Err(Refusal::TableFull));
        assert!(ev.is_empty());
        a.end_request(k2, t0 + Duration::from_millis(1));
        let (k, ev) = a.admit(ip(3), t0 + Duration::from_millis(2));
        assert!(k.is_ok());
        assert_eq!(ev.len(), 1);
        assert!(a.started(k1));
        assert!(!a.started(k.unwrap()));
        assert!(
            a.started(k2),
            "an evicted connection has nothing left to time out"
        );
    }

    #[test]
    fn one_address_is_held_to_its_share_and_only_evicts_its_own() {
        let t0 = Instant::now();
        let mut a: Admission<u32> = Admission::with_limits(10, 2);
        let other = a.admit(ip(7), t0).0.unwrap();
        let mut last = None;
        for i in 0..50u64 {
            let (k, ev) = a.admit(ip(1), t0 + Duration::from_millis(i + 1));
            last = Some(k.unwrap());
            assert!(ev.iter().all(|e| e.reason == Refusal::PeerLimit));
        }
        assert_eq!(a.len(), 3, "two of the flooding address and the other one");
        assert!(
            !a.started(other) && a.release(other),
            "the other address was untouched"
        );
        // Every connection of the address busy: its newcomer is refused.
        let mut b: Admission<u32> = Admission::with_limits(10, 1);
        let k = b.admit(ip(1), t0).0.unwrap();
        b.begin_request(k);
        assert_eq!(b.admit(ip(1), t0).0, Err(Refusal::PeerLimit));
        assert!(b.admit(ip(2), t0).0.is_ok());
        assert!(last.is_some());
    }

    #[test]
    fn refusals_are_logged_as_summaries() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(Duration::from_secs(10));
        assert_eq!(log.due(t0), None, "nothing to say");
        let first = log
            .note(Refusal::Evicted, t0)
            .expect("the first refusal is logged at once");
        assert_eq!(first.of(Refusal::Evicted), 1);
        for i in 0..500u64 {
            let r = if i % 2 == 0 {
                Refusal::PeerLimit
            } else {
                Refusal::FirstRequestTimeout
            };
            assert_eq!(log.note(r, t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.due(t0 + Duration::from_secs(9)), None);
        let s = log
            .due(t0 + Duration::from_secs(10))
            .expect("one line per interval");
        assert_eq!(
            (s.of(Refusal::PeerLimit), s.of(Refusal::FirstRequestTimeout)),
            (250, 250)
        );
        assert_eq!(log.due(t0 + Duration::from_secs(30)), None, "nothing new");
    }

    #[test]
    fn reasons_have_distinct_labels() {
        let labels: std::collections::HashSet<_> =
            Refusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Refusal::ALL.len());
    }
}
