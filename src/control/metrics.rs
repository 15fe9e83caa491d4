//! `/metrics`: Prometheus text exposition (format 0.0.4).
//!
//! Shard figures are not kept in metric objects: a [`Collector`] encodes them on every scrape
//! from the snapshots the shards have just answered with (the scrape handler refreshes them
//! first), so every value is the value at sample time. A shard that did not answer in time is
//! encoded from its last good snapshot. GC-client figures live in ordinary metric families
//! updated by the GC thread.
//!
//! Cardinality: labels only ever take shard indices, actor types, and small fixed sets of
//! reasons/results/statuses — never meeting or participant ids.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::admission::Refusal;
use super::gc::{CallStatus, HeartbeatKind};
use super::shards::{ShardPool, ShardView};
use crate::runtime::link::{LatencySnapshot, ACTOR_TYPES, LATENCY_BUCKETS};

/// `Content-Type` of the exposition.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Drop series always present (at 0 until something is dropped) so alerts have data.
const SEEDED_DROPS: [(&str, &str); 4] = [
    ("controller", "mailbox_full"),
    ("meeting", "mailbox_full"),
    ("connection", "rate_limited"),
    ("connection", "slow_consumer"),
];

/// Buckets of `mc_gc_heartbeat_duration_seconds`.
const GC_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Registration statuses (`mc_gc_registrations_total`).
pub(crate) const REGISTRATION_STATUSES: [&str; 6] = [
    "success",
    "rejected",
    "error",
    "timeout",
    "not_found",
    "unauthorized",
];
/// Notification statuses (`mc_gc_meeting_ended_notifications_total`).
pub(crate) const NOTIFICATION_STATUSES: [&str; 6] = [
    "success",
    "error",
    "timeout",
    "not_found",
    "unauthorized",
    "dropped",
];

/// Every metric of the control thread.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    heartbeats: Family<Labels2, Counter>,
    heartbeat_duration: Family<Labels1, Histogram, fn() -> Histogram>,
    registrations: Family<Labels1, Counter>,
    notifications: Family<Labels1, Counter>,
    refusals: Family<Labels1, Counter>,
    migrations_started: Counter,
    migrations_completed: Counter,
    migrations_failed: Family<Labels1, Counter>,
    migration_duration: Histogram,
}

/// Buckets of `mc_migration_duration_seconds`.
const MIGRATION_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Static facts encoded with the shard figures.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    pub version: String,
    pub max_meetings: usize,
    pub max_participants: usize,
    pub draining: Arc<AtomicBool>,
    pub registered: Arc<AtomicBool>,
    pub stale_after: Duration,
}

impl Metrics {
    pub fn new(pool: Arc<ShardPool>, facts: Facts) -> Self {
        let mut registry = Registry::default();
        let heartbeats = Family::<Labels2, Counter>::default();
        let heartbeat_duration =
            Family::<Labels1, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(GC_BUCKETS)
            });
        let registrations = Family::<Labels1, Counter>::default();
        let notifications = Family::<Labels1, Counter>::default();
        let refusals = Family::<Labels1, Counter>::default();
        for r in Refusal::ALL {
            let _ = refusals.get_or_create(&[("reason", r.as_str())]);
        }
        for kind in [HeartbeatKind::Fast, HeartbeatKind::Comprehensive] {
            for status in CallStatus::ALL {
                let _ = heartbeats
                    .get_or_create(&[("kind", kind.as_str()), ("status", status.as_str())]);
            }
            let _ = heartbeat_duration.get_or_create(&[("kind", kind.as_str())]);
        }
        for s in REGISTRATION_STATUSES {
            let _ = registrations.get_or_create(&[("status", s)]);
        }
        for s in NOTIFICATION_STATUSES {
            let _ = notifications.get_or_create(&[("status", s)]);
        }
        registry.register(
            "mc_gc_heartbeats",
            "GC heartbeats sent, by kind and outcome",
            heartbeats.clone(),
        );
        registry.register(
            "mc_gc_heartbeat_duration_seconds",
            "Duration of GC heartbeat calls",
            heartbeat_duration.clone(),
        );
        registry.register(
            "mc_gc_registrations",
            "GC registration attempts, by outcome",
            registrations.clone(),
        );
        registry.register(
            "mc_gc_meeting_ended_notifications",
            "Meeting-ended notifications to the GC, by outcome (dropped = given up or queue full)",
            notifications.clone(),
        );
        registry.register(
            "mc_control_refusals",
            "Control HTTP connections closed unanswered and requests refused, by reason",
            refusals.clone(),
        );
        let migrations_started = Counter::default();
        let migrations_completed = Counter::default();
        let migrations_failed = Family::<Labels1, Counter>::default();
        for r in super::migration::FAILURE_REASONS {
            let _ = migrations_failed.get_or_create(&[("reason", r)]);
        }
        let migration_duration = Histogram::new(MIGRATION_BUCKETS);
        registry.register(
            "mc_migrations_started",
            "Meeting migrations attempted from this controller",
            migrations_started.clone(),
        );
        registry.register(
            "mc_migrations_completed",
            "Meetings moved to another controller",
            migrations_completed.clone(),
        );
        registry.register(
            "mc_migrations_failed",
            "Meeting migrations that failed, by reason (the meeting stayed here)",
            migrations_failed.clone(),
        );
        registry.register(
            "mc_migration_duration_seconds",
            "Time from export to commit of completed meeting migrations",
            migration_duration.clone(),
        );
        registry.register_collector(Box::new(ShardCollector { pool, facts }));
        registry.register_collector(Box::new(ProcessCollector {
            start_time: super::procstat::start_time_seconds(),
        }));
        Self {
            registry,
            heartbeats,
            heartbeat_duration,
            registrations,
            notifications,
            refusals,
            migrations_started,
            migrations_completed,
            migrations_failed,
            migration_duration,
        }
    }

    pub fn migration_started(&self) {
        self.migrations_started.inc();
    }

    pub fn migration_completed(&self, took: Duration) {
        self.migrations_completed.inc();
        self.migration_duration.observe(took.as_secs_f64());
    }

    pub fn migration_failed(&self, reason: &'static str) {
        self.migrations_failed
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub fn gc_heartbeat(&self, kind: &'static str, status: &'static str, took: Duration) {
        self.heartbeats
            .get_or_create(&[("kind", kind), ("status", status)])
            .inc();
        self.heartbeat_duration
            .get_or_create(&[("kind", kind)])
            .observe(took.as_secs_f64());
    }

    pub fn gc_registration(&self, status: &'static str) {
        self.registrations
            .get_or_create(&[("status", status)])
            .inc();
    }

    pub fn gc_notification(&self, status: &'static str) {
        self.notifications
            .get_or_create(&[("status", status)])
            .inc();
    }

    pub fn control_refusal(&self, r: Refusal) {
        self.refusals.get_or_create(&[("reason", r.as_str())]).inc();
    }

    /// The exposition text (call after refreshing the shard snapshots).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// Encodes the shard figures from the pool's latest snapshots.
#[derive(Debug)]
struct ShardCollector {
    pool: Arc<ShardPool>,
    facts: Facts,
}

/// Non-cumulative `(upper bound, count)` pairs ending with `+Inf`, as the encoder wants them,
/// from a snapshot's cumulative buckets. A malformed snapshot yields everything in `+Inf`.
fn histogram_buckets(l: &LatencySnapshot) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
    let well_formed = l.buckets.len() >= LATENCY_BUCKETS.len();
    let mut prev = 0u64;
    for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
        let cum = if well_formed {
            l.buckets[i].max(prev).min(l.count)
        } else {
            0
        };
        out.push((*bound, cum - prev));
        prev = cum;
    }
    out.push((f64::INFINITY, l.count.saturating_sub(prev)));
    out
}

fn counter<'a>(
    enc: &mut DescriptorEncoder<'a>,
    name: &'static str,
    help: &'static str,
    rows: &[(Vec<(&'static str, String)>, f64)],
) -> Result<(), std::fmt::Error> {
    let help = format!("{help}.");
    let mut m = enc.encode_descriptor(name, &help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        if labels.is_empty() {
            m.encode_counter::<NoLabelSet, f64, f64>(v, None)?;
        } else {
            m.encode_family(labels)?
                .encode_counter::<NoLabelSet, f64, f64>(v, None)?;
        }
    }
    Ok(())
}

fn gauge<'a>(
    enc: &mut DescriptorEncoder<'a>,
    name: &'static str,
    help: &'static str,
    rows: &[(Vec<(&'static str, String)>, f64)],
) -> Result<(), std::fmt::Error> {
    let help = format!("{help}.");
    let mut m = enc.encode_descriptor(name, &help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        if labels.is_empty() {
            m.encode_gauge(v)?;
        } else {
            m.encode_family(labels)?.encode_gauge(v)?;
        }
    }
    Ok(())
}

fn per_shard(
    views: &[ShardView],
    f: impl Fn(&ShardView) -> f64,
) -> Vec<(Vec<(&'static str, String)>, f64)> {
    views
        .iter()
        .map(|v| (vec![("shard", v.shard.to_string())], f(v)))
        .collect()
}

fn per_actor(
    views: &[ShardView],
    f: impl Fn(&ShardView, usize) -> f64,
) -> Vec<(Vec<(&'static str, String)>, f64)> {
    let mut rows = Vec::new();
    for v in views {
        for (i, at) in ACTOR_TYPES.iter().enumerate() {
            rows.push((
                vec![
                    ("actor_type", (*at).to_owned()),
                    ("shard", v.shard.to_string()),
                ],
                f(v, i),
            ));
        }
    }
    rows
}

fn migration_events(v: &ShardView, keep: &[&str]) -> Vec<(&'static str, u64)> {
    let mut out: Vec<(&'static str, u64)> = v
        .snapshot
        .migration
        .iter()
        .filter(|(k, _)| keep.contains(k))
        .copied()
        .collect();
    // A shard that never answered still shows every series at 0.
    if out.is_empty() {
        out = crate::core::shard::MIGRATION_OUTCOMES
            .iter()
            .filter(|k| keep.contains(k))
            .map(|k| (*k, 0))
            .collect();
    }
    out
}

fn labelled(
    views: &[ShardView],
    key: &'static str,
    f: impl Fn(&ShardView) -> Vec<(&'static str, u64)>,
) -> Vec<(Vec<(&'static str, String)>, f64)> {
    let mut rows = Vec::new();
    for v in views {
        let mut items = f(v);
        items.sort_unstable();
        for (value, n) in items {
            rows.push((
                vec![("shard", v.shard.to_string()), (key, value.to_owned())],
                n as f64,
            ));
        }
    }
    rows
}

impl Collector for ShardCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let views = self.pool.views();
        let e = &mut enc;

        gauge(
            e,
            "mc_actor_mailbox_depth",
            "Messages queued per actor type at sample time",
            &per_actor(&views, |v, i| {
                if i == 0 {
                    v.controller_depth() as f64
                } else {
                    v.snapshot.mailbox_depth[i] as f64
                }
            }),
        )?;

        {
            let mut m = e.encode_descriptor(
                "mc_message_processing_duration_seconds",
                "Time to process one message, per actor type.",
                None,
                MetricType::Histogram,
            )?;
            for v in &views {
                let shard = v.shard.to_string();
                for (i, at) in ACTOR_TYPES.iter().enumerate() {
                    let l = &v.snapshot.processing[i];
                    let labels = [("actor_type", *at), ("shard", shard.as_str())];
                    m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                        l.sum_seconds.max(0.0),
                        l.count,
                        &histogram_buckets(l),
                        None,
                    )?;
                }
            }
        }

        gauge(
            e,
            "mc_meetings_active",
            "Meetings hosted",
            &per_shard(&views, |v| v.snapshot.meetings as f64),
        )?;
        gauge(
            e,
            "mc_connections_active",
            "Live connections, including handshaking ones",
            &per_shard(&views, |v| v.snapshot.connections as f64),
        )?;
        gauge(
            e,
            "mc_participants_active",
            "Participants, including those within their resume window",
            &per_shard(&views, |v| v.snapshot.participants as f64),
        )?;
        gauge(
            e,
            "mc_shard_up",
            "1 if the shard answered the control thread recently",
            &per_shard(&views, |v| {
                f64::from(u8::from(v.answered_within(self.facts.stale_after)))
            }),
        )?;

        // Drops: the shard's own counts, plus control requests refused by a full control mailbox.
        let mut drops = Vec::new();
        for v in &views {
            let mut items: Vec<(&'static str, &'static str, u64)> = v.snapshot.dropped.clone();
            for (at, reason) in SEEDED_DROPS {
                if !items.iter().any(|(a, r, _)| *a == at && *r == reason) {
                    items.push((at, reason, 0));
                }
            }
            for item in &mut items {
                if item.0 == "controller" && item.1 == "mailbox_full" {
                    item.2 += v.control_drops;
                }
            }
            items.sort_unstable();
            for (at, reason, n) in items {
                drops.push((
                    vec![
                        ("actor_type", at.to_owned()),
                        ("shard", v.shard.to_string()),
                        ("reason", reason.to_owned()),
                    ],
                    n as f64,
                ));
            }
        }
        counter(
            e,
            "mc_messages_dropped",
            "Messages dropped, by actor type and reason",
            &drops,
        )?;

        counter(
            e,
            "mc_actor_panics",
            "Panics caught in actors (each ends the actor's meeting or connection)",
            &per_actor(&views, |v, i| {
                v.snapshot
                    .panics
                    .iter()
                    .filter(|(at, _)| *at == ACTOR_TYPES[i])
                    .map(|(_, n)| *n as f64)
                    .sum()
            }),
        )?;
        counter(
            e,
            "mc_joins",
            "Join attempts, by result",
            &labelled(&views, "result", |v| v.snapshot.joins.clone()),
        )?;
        counter(
            e,
            "mc_token_failures",
            "Rejected join or resume tokens, by reason",
            &labelled(&views, "reason", |v| v.snapshot.token_failures.clone()),
        )?;
        counter(
            e,
            "mc_migration_meetings",
            "Meetings that left (exported) or arrived (imported) through a migration",
            &labelled(&views, "direction", |v| {
                migration_events(v, &["exported", "imported"])
            }),
        )?;
        counter(
            e,
            "mc_migration_participants",
            "Migrated participants: notified here to move, returned here after a move, or lost (never came back within the resume window)",
            &labelled(&views, "outcome", |v| {
                migration_events(v, &["notified", "returned", "lost"])
            }),
        )?;
        counter(
            e,
            "mc_handshakes",
            "Completed QUIC handshakes",
            &per_shard(&views, |v| v.snapshot.handshakes as f64),
        )?;
        counter(
            e,
            "mc_quic_retries",
            "QUIC Retry packets sent (address validation)",
            &per_shard(&views, |v| v.snapshot.retries as f64),
        )?;
        counter(
            e,
            "mc_handshakes_shed",
            "Initial packets dropped because too many handshakes were in progress",
            &per_shard(&views, |v| v.snapshot.handshakes_shed as f64),
        )?;
        counter(
            e,
            "mc_datagrams_received",
            "UDP datagrams received by the shard's socket",
            &per_shard(&views, |v| v.snapshot.datagrams_received as f64),
        )?;
        counter(
            e,
            "mc_datagrams_forwarded",
            "Datagrams received for another shard's connection and forwarded to it",
            &per_shard(&views, |v| v.snapshot.datagrams_forwarded as f64),
        )?;
        counter(
            e,
            "mc_datagrams_from_peers",
            "Datagrams another shard forwarded to this one",
            &per_shard(&views, |v| v.snapshot.datagrams_from_peers as f64),
        )?;
        counter(
            e,
            "mc_datagrams_dropped",
            "Datagrams dropped before reaching a connection, by reason",
            &labelled(&views, "reason", |v| v.snapshot.datagrams_dropped.clone()),
        )?;
        counter(
            e,
            "mc_connections_refused",
            "Connections refused because the shard held --max-connections-per-shard",
            &per_shard(&views, |v| v.snapshot.connections_refused as f64),
        )?;
        counter(
            e,
            "mc_retry_tokens_invalid",
            "Initial packets dropped because their Retry token was invalid or expired",
            &per_shard(&views, |v| v.snapshot.retry_tokens_invalid as f64),
        )?;
        counter(
            e,
            "mc_udp_receive_drops",
            "Datagrams the kernel dropped for the shard's UDP socket, mostly because its receive queue was full (raise net.core.rmem_max)",
            &views
                .iter()
                .filter_map(|v| {
                    let d = v.snapshot.udp_receive_drops?;
                    Some((vec![("shard", v.shard.to_string())], d as f64))
                })
                .collect::<Vec<_>>(),
        )?;
        counter(
            e,
            "mc_connection_handoffs",
            "Connections handed to another shard (outbound)",
            &per_shard(&views, |v| v.snapshot.handoffs_out as f64),
        )?;
        counter(
            e,
            "mc_shard_cpu_seconds",
            "CPU time of the shard thread",
            &per_shard(&views, |v| v.snapshot.cpu_seconds.max(0.0)),
        )?;

        let none = Vec::new();
        let scalar = |x: f64| vec![(none.clone(), x)];
        gauge(
            e,
            "mc_draining",
            "1 while draining",
            &scalar(f64::from(u8::from(
                self.facts.draining.load(Ordering::SeqCst),
            ))),
        )?;
        gauge(
            e,
            "mc_gc_registered",
            "1 while registered with the GC (always 0 in standalone mode)",
            &scalar(f64::from(u8::from(
                self.facts.registered.load(Ordering::SeqCst),
            ))),
        )?;
        gauge(
            e,
            "mc_shards",
            "Number of shards",
            &scalar(views.len() as f64),
        )?;
        gauge(
            e,
            "mc_capacity_max_meetings",
            "Configured meeting capacity",
            &scalar(self.facts.max_meetings as f64),
        )?;
        gauge(
            e,
            "mc_capacity_max_participants",
            "Configured participant capacity",
            &scalar(self.facts.max_participants as f64),
        )?;
        counter(
            e,
            "mc_log_lines_dropped",
            "Log lines dropped because the log output could not keep up (shards never wait for it)",
            &scalar(crate::logging::dropped_lines() as f64),
        )?;
        gauge(
            e,
            "mc_build_info",
            "Build information (always 1)",
            &[(vec![("version", self.facts.version.clone())], 1.0)],
        )?;
        Ok(())
    }
}

/// The standard `process_*` family (the names every Prometheus client library exports), read
/// from `/proc/self` on every scrape. A figure that cannot be read (not Linux) is left out.
#[derive(Debug)]
struct ProcessCollector {
    /// Read once: it does not change.
    start_time: Option<f64>,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use super::procstat;
        let e = &mut enc;
        let one = |v: Option<f64>| v.map(|v| vec![(Vec::new(), v)]);
        if let Some(rows) = one(procstat::cpu_seconds()) {
            counter(
                e,
                "process_cpu_seconds",
                "Total user and system CPU time of the process, in seconds",
                &rows,
            )?;
        }
        let gauges: [(&'static str, &'static str, Option<f64>); 4] = [
            (
                "process_resident_memory_bytes",
                "Resident memory of the process, in bytes",
                procstat::rss_bytes().map(|b| b as f64),
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                procstat::open_fds().map(|n| n as f64),
            ),
            (
                "process_max_fds",
                "Most file descriptors the process may open (soft RLIMIT_NOFILE)",
                procstat::max_fds().map(|n| n as f64),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds",
                self.start_time,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(rows) = one(value) {
                gauge(e, name, help, &rows)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_decumulated() {
        let mut l = LatencySnapshot {
            count: 10,
            sum_seconds: 0.5,
            ..Default::default()
        };
        l.buckets = vec![0; LATENCY_BUCKETS.len() + 1];
        for (i, b) in l.buckets.iter_mut().enumerate() {
            *b = if i < 3 {
                2
            } else if i < LATENCY_BUCKETS.len() {
                7
            } else {
                10
            };
        }
        let out = histogram_buckets(&l);
        assert_eq!(out.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(out.iter().map(|(_, n)| n).sum::<u64>(), 10);
        assert_eq!(out[0].1, 2);
        assert_eq!(out[3].1, 5);
        assert_eq!(out.last().map(|b| b.1), Some(3));
        let empty = histogram_buckets(&LatencySnapshot::default());
        assert!(empty.iter().all(|(_, n)| *n == 0));
    }
}
