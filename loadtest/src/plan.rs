//! Turns validated settings into a schedule: who joins which meeting when, who sends, and the
//! phase boundaries of the run. Pure functions of the settings, so they are unit-tested.

use std::time::Duration;

use mc::core::protocol::Role;

use crate::cli::{Scenario, Settings};

/// Phase boundaries, as offsets from the run's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeline {
    /// Senders start; the ramp is over.
    pub steady_start: Duration,
    /// Measurements start (steady start + warmup).
    pub window_start: Duration,
    /// Senders stop; measurements end.
    pub steady_end: Duration,
    /// Latest end of the drain.
    pub drain_end: Duration,
}

impl Timeline {
    /// Length of the measured window.
    pub fn window(&self) -> Duration {
        self.steady_end - self.window_start
    }
}

/// One simulated participant.
#[derive(Debug, Clone, PartialEq)]
pub struct ParticipantPlan {
    /// Global index (also in its display name and in every payload it sends).
    pub idx: u32,
    /// Index into [`Plan::meeting_ids`].
    pub meeting: u32,
    /// Role asked for in the token.
    pub role: Role,
    /// Intended connect time.
    pub join_at: Duration,
    /// Whether it sends messages in the steady phase.
    pub sender: bool,
    /// When it leaves for good (join-storm `--hold`).
    pub leave_at: Option<Duration>,
}

/// The whole schedule.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every participant, by index.
    pub participants: Vec<ParticipantPlan>,
    /// Meeting ids.
    pub meeting_ids: Vec<String>,
    /// Phases.
    pub timeline: Timeline,
    /// Messages per second per sender.
    pub rate: f64,
    /// Churn events per second handled by each thread.
    pub churn_per_thread: f64,
}

impl Plan {
    /// Builds the schedule of `s`.
    pub fn build(s: &Settings) -> Plan {
        // In join-storm, joins go on through the steady phase; the ramp only shapes their rate.
        let steady_start = s.ramp;
        let timeline = Timeline {
            steady_start,
            window_start: steady_start + s.warmup,
            steady_end: steady_start + s.duration,
            drain_end: steady_start + s.duration + s.drain,
        };
        let p = s.participants;
        let mut participants = Vec::new();
        let meetings;
        match s.scenario {
            Scenario::Meetings | Scenario::Churn | Scenario::RollingDrain => {
                meetings = s.meetings;
                let total = u64::from(s.meetings) * u64::from(p);
                for i in 0..total {
                    // Fill all meetings in parallel: participant i joins meeting i % M.
                    let meeting = (i % u64::from(s.meetings)) as u32;
                    let first = i < u64::from(s.meetings);
                    participants.push(ParticipantPlan {
                        idx: i as u32,
                        meeting,
                        role: if first { Role::Host } else { Role::Participant },
                        join_at: spread(s.ramp, i, total),
                        sender: s.rate > 0.0,
                        leave_at: None,
                    });
                }
            }
            Scenario::LargeMeeting => {
                meetings = 1;
                let f = s.sender_fraction;
                for j in 0..p {
                    // Spread senders evenly: j sends when floor((j+1)f) > floor(jf).
                    let sender = ((f64::from(j) + 1.0) * f).floor() > (f64::from(j) * f).floor();
                    participants.push(ParticipantPlan {
                        idx: j,
                        meeting: 0,
                        role: if j == 0 {
                            Role::Host
                        } else {
                            Role::Participant
                        },
                        join_at: spread(s.ramp, u64::from(j), u64::from(p)),
                        sender: sender && s.rate > 0.0,
                        leave_at: None,
                    });
                }
            }
            Scenario::JoinStorm => {
                let ramp = s.ramp.as_secs_f64();
                let rate = s.join_rate;
                let total = (rate * (ramp / 2.0 + s.duration.as_secs_f64())).floor() as u64;
                meetings = total.div_ceil(u64::from(p)).max(1) as u32;
                for i in 0..total {
                    let join_at = Duration::from_secs_f64(storm_time(i, rate, ramp));
                    participants.push(ParticipantPlan {
                        idx: i as u32,
                        meeting: (i / u64::from(p)) as u32,
                        role: if i % u64::from(p) == 0 {
                            Role::Host
                        } else {
                            Role::Participant
                        },
                        join_at,
                        sender: s.rate > 0.0,
                        leave_at: s.hold.map(|h| join_at + h),
                    });
                }
            }
        }
        let meeting_ids = (0..meetings)
            .map(|m| format!("{}-m{m}", s.meeting_prefix))
            .collect();
        let churn_per_thread = if s.scenario == Scenario::Churn {
            s.churn_rate / s.threads as f64
        } else {
            0.0
        };
        Plan {
            participants,
            meeting_ids,
            timeline,
            rate: s.rate,
            churn_per_thread,
        }
    }

    /// Indices of the participants run by `thread` of `threads`.
    pub fn for_thread(&self, thread: usize, threads: usize) -> Vec<ParticipantPlan> {
        self.participants
            .iter()
            .filter(|p| p.idx as usize % threads == thread)
            .cloned()
            .collect()
    }
}

/// The `i`-th of `n` start times spread evenly over `over`.
fn spread(over: Duration, i: u64, n: u64) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(over.as_secs_f64() * i as f64 / n as f64)
}

/// Intended time of the `i`-th join when the rate rises linearly from 0 to `rate` over `ramp`
/// seconds and stays there: inverts `N(t) = rate t² / (2 ramp)` on the ramp, `N(t) = rate
/// (t - ramp/2)` after.
fn storm_time(i: u64, rate: f64, ramp: f64) -> f64 {
    let n = i as f64;
    let on_ramp = rate * ramp / 2.0;
    if ramp > 0.0 && n < on_ramp {
        (2.0 * ramp * n / rate).sqrt()
    } else {
        ramp / 2.0 + n / rate
    }
}

/// Display name carrying the participant's index and connection epoch: `lt<idx>.<epoch>`.
pub fn display_name(idx: u32, epoch: u32) -> String {
    format!("lt{idx}.{epoch}")
}

/// Parses [`display_name`]; `None` for anybody else in the meeting.
pub fn parse_display_name(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix("lt")?;
    let (idx, epoch) = rest.split_once('.')?;
    Some((idx.parse().ok()?, epoch.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::Args;

    fn settings(args: &[&str]) -> Settings {
        let mut all = vec!["mc-loadtest", "--dev-dir", "/nonexistent"];
        all.extend_from_slice(args);
        Args::try_parse_from(all).unwrap().validate().unwrap()
    }

    #[test]
    fn meetings_fill_in_parallel_over_the_ramp() {
        let s = settings(&["--meetings", "3", "--participants", "2", "--ramp", "6s"]);
        let plan = Plan::build(&s);
        assert_eq!(plan.participants.len(), 6);
        assert_eq!(plan.meeting_ids.len(), 3);
        let meetings: Vec<u32> = plan.participants.iter().map(|p| p.meeting).collect();
        assert_eq!(meetings, [0, 1, 2, 0, 1, 2]);
        assert_eq!(plan.participants[3].join_at, Duration::from_secs(3));
        assert_eq!(plan.participants[0].role, Role::Host);
        assert_eq!(plan.participants[3].role, Role::Participant);
        assert!(plan.participants.iter().all(|p| p.sender));
        let t = plan.timeline;
        assert_eq!(t.steady_start, Duration::from_secs(6));
        assert_eq!(t.window_start, Duration::from_secs(11));
        assert_eq!(t.steady_end, Duration::from_secs(36));
    }

    #[test]
    fn large_meeting_sender_fraction() {
        let s = settings(&[
            "--scenario",
            "large-meeting",
            "--participants",
            "1000",
            "--sender-fraction",
            "0.05",
        ]);
        let plan = Plan::build(&s);
        assert_eq!(plan.participants.iter().filter(|p| p.sender).count(), 50);
        let none = settings(&["--scenario", "large-meeting", "--sender-fraction", "0"]);
        assert!(Plan::build(&none).participants.iter().all(|p| !p.sender));
    }

    #[test]
    fn join_storm_ramps_linearly() {
        let s = settings(&[
            "--scenario",
            "join-storm",
            "--join-rate",
            "100",
            "--ramp",
            "2s",
            "--duration",
            "10s",
            "--hold",
            "1s",
        ]);
        let plan = Plan::build(&s);
        // 100/s × (2/2 + 10) s.
        assert_eq!(plan.participants.len(), 1100);
        let t = |i: usize| plan.participants[i].join_at.as_secs_f64();
        // 100 joins on the ramp, then 100 per second.
        assert!((t(100) - 2.0).abs() < 1e-9);
        assert!((t(200) - 3.0).abs() < 1e-9);
        assert!(t(50) > 1.0, "the ramp starts slow");
        assert_eq!(
            plan.participants[7].leave_at.unwrap() - plan.participants[7].join_at,
            Duration::from_secs(1)
        );
        assert_eq!(plan.meeting_ids.len(), 550);
    }

    #[test]
    fn threads_partition_participants() {
        let s = settings(&["--meetings", "5", "--participants", "3"]);
        let plan = Plan::build(&s);
        let a = plan.for_thread(0, 2);
        let b = plan.for_thread(1, 2);
        assert_eq!(a.len() + b.len(), 15);
        assert!(a.iter().all(|p| p.idx % 2 == 0));
    }

    #[test]
    fn display_names_round_trip() {
        assert_eq!(parse_display_name(&display_name(42, 3)), Some((42, 3)));
        assert_eq!(parse_display_name("alice"), None);
        assert_eq!(parse_display_name("lt1"), None);
    }
}
