//! When a joined participant with nothing to say acknowledges, like a browser (RFC 9000
//! §13.2.2): after every `every` received datagrams, or `delay` after the first
//! unacknowledged one, whichever comes first.
//!
//! The delayed acknowledgement is a scheduled event. Packets that go out for any other reason
//! carry the acknowledgement and cancel it, and the next datagram arms a new one; so each
//! arming has a generation and only the event of the current one may fire. (Without it, the
//! event of a cancelled arming fired early for the next one and the generator acknowledged
//! almost every datagram.)

use std::time::{Duration, Instant};

/// One connection's acknowledgement state.
#[derive(Debug, Clone, Default)]
pub struct AckPolicy {
    /// Datagrams received since packets last went out.
    unacked: u32,
    /// A delayed acknowledgement is armed; its generation is `generation`.
    armed: bool,
    /// Generation of the latest arming.
    generation: u64,
}

/// What to do after a connection was serviced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStep {
    /// Send now (this carries any acknowledgement).
    Send,
    /// Hold; schedule the delayed acknowledgement of this generation at this instant.
    Arm(Instant, u64),
    /// Hold; a delayed acknowledgement is already scheduled (or nothing needs one).
    Hold,
}

impl AckPolicy {
    /// A datagram was received.
    pub fn received(&mut self) {
        self.unacked = self.unacked.saturating_add(1);
    }

    /// Decides after a service: `may_defer` is false when something other than received
    /// datagrams needs packets out (data, a timer, a phase change).
    pub fn step(&mut self, may_defer: bool, every: u32, delay: Duration, now: Instant) -> AckStep {
        if !may_defer || self.unacked >= every {
            self.reset();
            return AckStep::Send;
        }
        if self.unacked == 0 || self.armed {
            return AckStep::Hold;
        }
        self.generation += 1;
        self.armed = true;
        AckStep::Arm(now + delay, self.generation)
    }

    /// The delayed acknowledgement of generation `generation` is due: whether it still
    /// stands (then packets must go out).
    pub fn fire(&mut self, generation: u64) -> bool {
        let stands = self.armed && generation == self.generation;
        if stands {
            self.armed = false;
        }
        stands
    }

    /// Nothing is owed: packets went out (they carry the acknowledgement), or a new
    /// connection starts. Generations keep counting, so no earlier event can fire again.
    pub fn reset(&mut self) {
        self.unacked = 0;
        self.armed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(5);

    /// A policy with one datagram received and its delayed acknowledgement armed at `now`.
    fn armed(now: Instant) -> (AckPolicy, u64) {
        let mut a = AckPolicy::default();
        a.received();
        match a.step(true, 2, DELAY, now) {
            AckStep::Arm(at, generation) => {
                assert_eq!(at, now + DELAY);
                (a, generation)
            }
            other => panic!("one datagram arms the delayed acknowledgement, got {other:?}"),
        }
    }

    #[test]
    fn acknowledges_every_second_datagram_or_after_the_delay() {
        let now = Instant::now();
        let mut fresh = AckPolicy::default();
        assert_eq!(
            fresh.step(true, 2, DELAY, now),
            AckStep::Hold,
            "nothing owed"
        );
        let (mut a, generation) = armed(now);
        assert_eq!(a.step(true, 2, DELAY, now), AckStep::Hold, "armed once");
        a.received();
        assert_eq!(
            a.step(true, 2, DELAY, now),
            AckStep::Send,
            "second datagram"
        );
        assert!(
            !a.fire(generation),
            "the acknowledgement went out with the send"
        );
        a.received();
        let AckStep::Arm(_, g2) = a.step(true, 2, DELAY, now) else {
            panic!("re-armed");
        };
        assert!(a.fire(g2), "an armed delay fires");
        assert!(!a.fire(g2), "and only once");
    }

    #[test]
    fn a_cancelled_delay_never_fires_for_the_next_arming() {
        let now = Instant::now();
        let (mut a, old) = armed(now);
        // The participant sends a message: its packet carries the acknowledgement.
        assert_eq!(a.step(false, 2, DELAY, now), AckStep::Send);
        // One more datagram arms a new delay, due later than the old event.
        a.received();
        let later = now + Duration::from_millis(3);
        let AckStep::Arm(at, new) = a.step(true, 2, DELAY, later) else {
            panic!("armed again");
        };
        assert_eq!(at, later + DELAY);
        assert!(!a.fire(old), "the old event is stale");
        assert!(a.fire(new));
    }

    #[test]
    fn a_new_connection_owes_nothing_and_ignores_old_events() {
        let now = Instant::now();
        let (mut a, old) = armed(now);
        a.reset();
        assert_eq!(a.step(true, 2, DELAY, now), AckStep::Hold);
        assert!(!a.fire(old));
        a.received();
        assert!(
            matches!(a.step(true, 2, DELAY, now), AckStep::Arm(..)),
            "arms anew"
        );
    }

    #[test]
    fn every_one_sends_after_each_datagram() {
        let now = Instant::now();
        let mut a = AckPolicy::default();
        a.received();
        assert_eq!(a.step(true, 1, DELAY, now), AckStep::Send);
    }
}
