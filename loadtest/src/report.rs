//! The result of a run: a human table and a JSON document with the same figures.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::accounting::Tally;
use crate::cli::{Scenario, Settings};
use crate::cpu::{ThreadUse, SATURATED};
use crate::kernel::UdpDrops;
use crate::metrics::ServerFigures;
use crate::stats::{Counters, ErrorCounts, Latencies, Percentiles};

/// Controller-side figures over the run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerReport {
    /// Increase of `mc_messages_dropped_total` over the run.
    pub dropped: f64,
    /// Highest `mc_actor_mailbox_depth` seen in the per-second samples.
    pub mailbox_peak: f64,
    /// Increase of `mc_datagrams_forwarded_total`.
    pub datagrams_forwarded: f64,
    /// Increase of `mc_udp_receive_drops_total`: datagrams the controller's kernel dropped.
    pub udp_receive_drops: f64,
    /// Increase of `mc_connection_handoffs_total`.
    pub handoffs: f64,
    /// Shard CPU seconds spent during the measured window.
    pub cpu_seconds_window: Option<f64>,
    /// Deliveries received during the measured window (by receive time).
    pub deliveries_window: u64,
    /// Joins whose connection started inside the measured window.
    pub joins_window: u64,
    /// Shards reporting CPU time.
    pub shards: usize,
    /// Scrapes that failed.
    pub scrape_errors: u64,
}

impl ServerReport {
    /// Shard CPU seconds per million deliveries over the measured window.
    pub fn cpu_per_million(&self) -> Option<f64> {
        let cpu = self.cpu_seconds_window?;
        (self.deliveries_window > 0).then(|| cpu / (self.deliveries_window as f64 / 1e6))
    }

    /// Shard CPU milliseconds per join over the measured window.
    pub fn cpu_ms_per_join(&self) -> Option<f64> {
        let cpu = self.cpu_seconds_window?;
        (self.joins_window > 0).then(|| cpu * 1000.0 / self.joins_window as f64)
    }

    /// Builds the report from the scrapes around the run and around the window.
    pub fn from_scrapes(
        before: &ServerFigures,
        after: &ServerFigures,
        window: Option<(&ServerFigures, &ServerFigures)>,
        deliveries_window: u64,
        joins_window: u64,
        mailbox_peak: f64,
        scrape_errors: u64,
    ) -> Self {
        Self {
            dropped: after.dropped - before.dropped,
            mailbox_peak: mailbox_peak.max(after.mailbox_max),
            datagrams_forwarded: after.datagrams_forwarded - before.datagrams_forwarded,
            udp_receive_drops: after.udp_receive_drops - before.udp_receive_drops,
            handoffs: after.handoffs - before.handoffs,
            cpu_seconds_window: window.map(|(a, b)| b.cpu_seconds - a.cpu_seconds),
            deliveries_window,
            joins_window,
            shards: after.shards,
            scrape_errors,
        }
    }
}

/// The generator's own CPU over the measured window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GeneratorReport {
    /// Process CPU seconds (all threads) between the window's start and end.
    pub cpu_seconds_window: Option<f64>,
    /// Deliveries received between the same two readings.
    pub deliveries_window: u64,
    /// Each worker thread's CPU over the window (`None` when it did not see the window end).
    pub threads: Vec<Option<ThreadUse>>,
}

impl GeneratorReport {
    /// From `(process CPU, deliveries so far, when)` at the window's start and end.
    pub fn new(
        start: Option<(std::time::Duration, u64, std::time::Instant)>,
        end: Option<(std::time::Duration, u64, std::time::Instant)>,
        threads: Vec<Option<ThreadUse>>,
    ) -> Self {
        match (start, end) {
            (Some((c0, d0, _)), Some((c1, d1, _))) => Self {
                cpu_seconds_window: Some(c1.saturating_sub(c0).as_secs_f64()),
                deliveries_window: d1.saturating_sub(d0),
                threads,
            },
            _ => Self {
                threads,
                ..Self::default()
            },
        }
    }

    /// Generator CPU seconds per million deliveries over the window.
    pub fn cpu_per_million(&self) -> Option<f64> {
        let cpu = self.cpu_seconds_window?;
        (self.deliveries_window > 0).then(|| cpu / (self.deliveries_window as f64 / 1e6))
    }

    /// The busiest worker's share of the window, if any worker measured it.
    pub fn busiest(&self) -> Option<(usize, f64)> {
        self.threads
            .iter()
            .enumerate()
            .filter_map(|(i, u)| u.map(|u| (i, u.busy())))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Worker threads above [`SATURATED`] and their busy shares.
    pub fn saturated(&self) -> Vec<(usize, f64)> {
        self.threads
            .iter()
            .enumerate()
            .filter_map(|(i, u)| u.map(|u| (i, u.busy())))
            .filter(|&(_, b)| b > SATURATED)
            .collect()
    }

    /// The warning printed when a worker was saturated.
    pub fn warning(&self) -> Option<String> {
        let hot = self.saturated();
        if hot.is_empty() {
            return None;
        }
        let list: Vec<String> = hot
            .iter()
            .map(|(i, b)| format!("thread {i} {:.0}%", b * 100.0))
            .collect();
        Some(format!(
            "generator CPU-bound ({} busy, above {:.0}%): these figures are the load generator's \
             limit, not mc's; add --threads or CPUs for the generator, or lower the load",
            list.join(", "),
            SATURATED * 100.0
        ))
    }

    fn to_json(&self) -> Value {
        let threads: Vec<Value> = self
            .threads
            .iter()
            .enumerate()
            .map(|(i, u)| {
                json!({
                    "thread": i,
                    "cpu_seconds": u.map(|u| u.cpu_seconds),
                    "busy_fraction": u.map(|u| u.busy()),
                })
            })
            .collect();
        json!({
            "cpu_seconds_window": self.cpu_seconds_window,
            "deliveries_window": self.deliveries_window,
            "cpu_seconds_per_million_deliveries": self.cpu_per_million(),
            "busy_fraction": self.busiest().map(|(_, b)| b),
            "threads": threads,
            "saturated": !self.saturated().is_empty(),
            "warning": self.warning(),
        })
    }
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Settings of the run.
    pub settings: Settings,
    /// Participants in the plan.
    pub planned: u64,
    /// Length of the measured window, seconds.
    pub window_secs: f64,
    /// Counters summed over threads.
    pub counters: Counters,
    /// Measured-window latencies.
    pub latencies: Latencies,
    /// Delivery accounting.
    pub tally: Tally,
    /// Errors by label.
    pub errors: ErrorCounts,
    /// Controller figures, when `--metrics-url` was given and answered.
    pub server: Option<ServerReport>,
    /// Kernel UDP drops during the run.
    pub kernel: UdpDrops,
    /// The generator's own CPU.
    pub generator: GeneratorReport,
}

fn pct_json(p: &Percentiles) -> Value {
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "count": p.count,
        "mean_ms": p.mean / 1000.0,
        "p50_ms": ms(p.p50),
        "p90_ms": ms(p.p90),
        "p99_ms": ms(p.p99),
        "p99_9_ms": ms(p.p999),
        "max_ms": ms(p.max),
    })
}

impl Report {
    fn per_sec(&self, n: u64) -> f64 {
        if self.window_secs > 0.0 {
            n as f64 / self.window_secs
        } else {
            0.0
        }
    }

    /// Share of owed deliveries that never arrived.
    pub fn loss_ratio(&self) -> f64 {
        if self.tally.expected == 0 {
            0.0
        } else {
            self.tally.lost as f64 / self.tally.expected as f64
        }
    }

    /// The JSON document printed by `--json`.
    pub fn to_json(&self) -> Value {
        let s = &self.settings;
        let c = &self.counters;
        json!({
            "scenario": s.scenario.name(),
            "transport": s.transport.name(),
            "server": s.server.to_string(),
            "threads": s.threads,
            "conns_per_socket": s.conns_per_socket,
            "meetings": match s.scenario {
                Scenario::Meetings | Scenario::Churn | Scenario::RollingDrain => Value::from(s.meetings),
                Scenario::LargeMeeting => Value::from(1),
                Scenario::JoinStorm => Value::Null,
            },
            "participants_per_meeting": s.participants,
            "participants_planned": self.planned,
            "rate_per_sender": s.rate,
            "sender_fraction": s.sender_fraction,
            "join_rate": s.join_rate,
            "churn_rate": s.churn_rate,
            "payload_bytes": s.payload_bytes,
            "ramp_s": s.ramp.as_secs_f64(),
            "duration_s": s.duration.as_secs_f64(),
            "warmup_s": s.warmup.as_secs_f64(),
            "window_s": self.window_secs,
            "connections": {
                "started": c.connects,
                "handshakes": c.handshakes,
                "joins": c.joins,
                "join_failures": c.join_failures,
                "disconnects": c.disconnects,
                "handshakes_per_s": self.per_sec(c.handshakes_window),
                "joins_per_s": self.per_sec(c.joins_window),
            },
            "messages": {
                "sent": c.sent,
                "sent_window": c.sent_window,
                "sent_per_s": self.per_sec(c.sent_window),
                "delivered": c.delivered,
                "delivered_window": c.delivered_window,
                "delivered_per_s": self.per_sec(c.delivered_window),
                "backlog_skips": c.backlog_skips,
            },
            "latency": {
                "delivery": pct_json(&Percentiles::of(&self.latencies.delivery)),
                "join": pct_json(&Percentiles::of(&self.latencies.join)),
                "handshake": pct_json(&Percentiles::of(&self.latencies.handshake)),
            },
            "deliveries": {
                "expected": self.tally.expected,
                "received": self.tally.received,
                "lost": self.tally.lost,
                "loss_ratio": self.loss_ratio(),
                "unexpected": self.tally.unexpected,
                "duplicates": c.duplicates,
            },
            "errors": self.errors,
            "kernel_udp_drops": {
                "server_port": self.kernel.server_port,
                "rcvbuf_errors_all_sockets": self.kernel.rcvbuf_errors,
            },
            "server": self.server.map(|sv| json!({
                "messages_dropped": sv.dropped,
                "mailbox_depth_peak": sv.mailbox_peak,
                "datagrams_forwarded": sv.datagrams_forwarded,
                "udp_receive_drops": sv.udp_receive_drops,
                "connection_handoffs": sv.handoffs,
                "cpu_seconds_window": sv.cpu_seconds_window,
                "deliveries_window": sv.deliveries_window,
                "cpu_seconds_per_million_deliveries": sv.cpu_per_million(),
                "joins_window": sv.joins_window,
                "cpu_ms_per_join": sv.cpu_ms_per_join(),
                "shards": sv.shards,
                "scrape_errors": sv.scrape_errors,
            })),
            "generator": self.generator.to_json(),
        })
    }

    /// The human table.
    pub fn to_table(&self) -> String {
        let s = &self.settings;
        let c = &self.counters;
        let mut t = String::new();
        let shape = match s.scenario {
            Scenario::Meetings | Scenario::Churn | Scenario::RollingDrain => format!(
                "{} meetings x {} participants, {} msg/s per sender",
                s.meetings, s.participants, s.rate
            ),
            Scenario::LargeMeeting => format!(
                "1 meeting x {} participants, {:.0}% send {} msg/s",
                s.participants,
                s.sender_fraction * 100.0,
                s.rate
            ),
            Scenario::JoinStorm => format!(
                "{} joins/s into meetings of {}, {} msg/s per sender",
                s.join_rate, s.participants, s.rate
            ),
        };
        let _ = writeln!(
            t,
            "mc-loadtest {} over {} to {} ({} thread{}, {} conn/socket)",
            s.scenario.name(),
            s.transport.name(),
            s.server,
            s.threads,
            if s.threads == 1 { "" } else { "s" },
            s.conns_per_socket
        );
        let _ = writeln!(t, "  {shape}");
        if s.scenario == Scenario::Churn {
            let _ = writeln!(
                t,
                "  churn {} leave+rejoin/s, rejoin after {:?}",
                s.churn_rate, s.rejoin_delay
            );
        }
        let _ = writeln!(
            t,
            "  ramp {:?}, steady {:?} (first {:?} unmeasured): window {:.1} s\n",
            s.ramp, s.duration, s.warmup, self.window_secs
        );
        let _ = writeln!(
            t,
            "connections  started {}  handshakes {}  joined {}  join failures {}  disconnects {}",
            c.connects, c.handshakes, c.joins, c.join_failures, c.disconnects
        );
        let _ = writeln!(
            t,
            "rates        sent {:.0}/s  delivered {:.0}/s  handshakes {:.1}/s  joins {:.1}/s  (window)",
            self.per_sec(c.sent_window),
            self.per_sec(c.delivered_window),
            self.per_sec(c.handshakes_window),
            self.per_sec(c.joins_window),
        );
        let _ = writeln!(
            t,
            "\nlatency (ms)        count       p50       p90       p99     p99.9       max"
        );
        for (name, h) in [
            ("delivery", &self.latencies.delivery),
            ("join", &self.latencies.join),
            ("handshake", &self.latencies.handshake),
        ] {
            let p = Percentiles::of(h);
            let ms = |us: u64| us as f64 / 1000.0;
            let _ = writeln!(
                t,
                "  {name:<12} {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                p.count,
                ms(p.p50),
                ms(p.p90),
                ms(p.p99),
                ms(p.p999),
                ms(p.max)
            );
        }
        let _ = writeln!(
            t,
            "\ndeliveries   expected {}  received {}  lost {} ({:.4}%)  unexpected {}  duplicates {}",
            self.tally.expected,
            self.tally.received,
            self.tally.lost,
            self.loss_ratio() * 100.0,
            self.tally.unexpected,
            c.duplicates
        );
        if c.backlog_skips > 0 {
            let _ = writeln!(
                t,
                "             {} sends skipped: flow-control backlog above 4 MiB",
                c.backlog_skips
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(t, "errors       none");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(t, "errors       {}", list.join(", "));
        }
        match (self.kernel.server_port, self.kernel.rcvbuf_errors) {
            (None, None) => {}
            (port, all) => {
                let show = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
                let _ = writeln!(
                    t,
                    "kernel       UDP receive-queue drops: server port {}, all sockets {}",
                    show(port),
                    show(all)
                );
            }
        }
        match &self.server {
            None => {
                let _ = writeln!(t, "server       not scraped (no --metrics-url)");
            }
            Some(sv) => {
                let _ = writeln!(
                    t,
                    "server       dropped +{}  mailbox peak {}  datagrams forwarded +{}  handoffs +{}  kernel udp drops +{}",
                    sv.dropped, sv.mailbox_peak, sv.datagrams_forwarded, sv.handoffs, sv.udp_receive_drops
                );
                match (sv.cpu_seconds_window, sv.cpu_per_million()) {
                    (Some(cpu), Some(per)) => {
                        let _ = writeln!(
                            t,
                            "             shard CPU {cpu:.2} s in window over {} shard(s): {per:.2} s per million deliveries",
                            sv.shards
                        );
                    }
                    (Some(cpu), None) => {
                        let _ = writeln!(
                            t,
                            "             shard CPU {cpu:.2} s in window over {} shard(s)",
                            sv.shards
                        );
                    }
                    _ => {}
                }
                if let Some(per_join) = sv.cpu_ms_per_join() {
                    if s.scenario == Scenario::JoinStorm {
                        let _ = writeln!(
                            t,
                            "             {per_join:.3} ms of shard CPU per join (handshake included)"
                        );
                    }
                }
                if sv.scrape_errors > 0 {
                    let _ = writeln!(t, "             {} scrapes failed", sv.scrape_errors);
                }
            }
        }
        let g = &self.generator;
        if let Some(cpu) = g.cpu_seconds_window {
            let per = g.cpu_per_million().map_or_else(String::new, |p| {
                format!(": {p:.2} s per million deliveries")
            });
            let busy: Vec<String> = g
                .threads
                .iter()
                .map(|u| u.map_or_else(|| "-".to_owned(), |u| format!("{:.0}%", u.busy() * 100.0)))
                .collect();
            let _ = writeln!(
                t,
                "generator    CPU {cpu:.2} s in window (whole process){per}; worker busy {}",
                busy.join(" ")
            );
        }
        if let Some(w) = g.warning() {
            let _ = writeln!(t, "\n!!! WARNING: {w}");
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn thread(cpu: f64, wall: f64) -> Option<ThreadUse> {
        Some(ThreadUse {
            cpu_seconds: cpu,
            wall_seconds: wall,
        })
    }

    #[test]
    fn generator_cost_and_saturation() {
        let now = Instant::now();
        let g = GeneratorReport::new(
            Some((Duration::from_secs(10), 1_000_000, now)),
            Some((Duration::from_secs(13), 3_000_000, now)),
            vec![thread(2.85, 3.0), thread(1.5, 3.0), None],
        );
        assert_eq!(g.deliveries_window, 2_000_000);
        assert!((g.cpu_per_million().unwrap() - 1.5).abs() < 1e-9);
        assert_eq!(g.busiest().map(|(i, _)| i), Some(0));
        assert_eq!(g.saturated().len(), 1);
        let w = g.warning().unwrap();
        assert!(w.contains("thread 0 95%") && w.contains("not mc's"), "{w}");
        let j = g.to_json();
        assert_eq!(j["saturated"], true);
        assert_eq!(j["threads"][2]["busy_fraction"], Value::Null);

        let calm = GeneratorReport::new(None, None, vec![thread(1.0, 3.0)]);
        assert_eq!(calm.cpu_per_million(), None);
        assert!(calm.warning().is_none());
        assert_eq!(calm.to_json()["saturated"], false);
    }
}
