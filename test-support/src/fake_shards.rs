//! A stand-in for the shard runtime: one thread per "shard" serving the control link
//! ([`mc::runtime::link`]) with a small stateful model (meetings, participants, connections,
//! drain flag). It exercises the control thread — assignments, admin API, drain, metrics, GC
//! figures — without QUIC or pinned executors, and can be made to stop answering to simulate a
//! stuck shard.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use mc::core::ids::{MeetingId, ShardId};
use mc::core::meeting::{MeetingDetail, MeetingSummary, ParticipantAdmin};
use mc::core::migration::{ExportError, ImportError};
use mc::core::protocol::{EndReason, MediaHandler, Role};
use mc::core::router::Router;
use mc::core::shard::{AssignOutcome, ShardEvent};
use mc::runtime::link::{
    ControlMsg, RuntimeLink, ShardHandle, ShardReply, ShardRequest, ShardSnapshot,
};

/// Shape of the fake runtime.
#[derive(Debug, Clone)]
pub struct FakeShardsConfig {
    /// Number of shards.
    pub shards: u16,
    /// Meetings each shard takes before answering `AtCapacity`.
    pub max_meetings_per_shard: usize,
    /// Capacity of each control mailbox.
    pub mailbox: usize,
}

impl Default for FakeShardsConfig {
    fn default() -> Self {
        Self {
            shards: 2,
            max_meetings_per_shard: 1000,
            mailbox: 64,
        }
    }
}

/// One meeting of the model.
#[derive(Debug, Clone)]
struct FakeMeeting {
    participants: usize,
    connections: usize,
    media_handlers: Vec<MediaHandler>,
    assigned: bool,
    created: Instant,
}

#[derive(Debug, Default)]
struct FakeState {
    meetings: BTreeMap<String, FakeMeeting>,
    loose_connections: usize,
    draining: bool,
    shut_down: bool,
    log: Vec<String>,
    overlay: ShardSnapshot,
}

#[derive(Debug)]
struct FakeShard {
    id: ShardId,
    max_meetings: usize,
    state: Mutex<FakeState>,
    stuck: AtomicBool,
    stop: AtomicBool,
}

impl FakeShard {
    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Control of the fake runtime from a test. Dropping it stops the shard threads.
#[derive(Debug)]
pub struct FakeShards {
    shards: Vec<Arc<FakeShard>>,
    events: Sender<(ShardId, ShardEvent)>,
    router: Router,
    threads: Vec<JoinHandle<()>>,
}

/// Starts the fake shards; returns the link for the control thread and the test's handle.
pub fn fake_runtime(cfg: FakeShardsConfig) -> (RuntimeLink, FakeShards) {
    let (ev_tx, ev_rx) = crossbeam_channel::bounded(4096);
    let mut handles = Vec::new();
    let mut shards = Vec::new();
    let mut threads = Vec::new();
    for i in 0..cfg.shards.max(1) {
        let (tx, rx) = crossbeam_channel::bounded(cfg.mailbox.max(1));
        let shard = Arc::new(FakeShard {
            id: ShardId(i),
            max_meetings: cfg.max_meetings_per_shard,
            state: Mutex::new(FakeState::default()),
            stuck: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        handles.push(ShardHandle {
            shard: ShardId(i),
            cpu: Some(usize::from(i)),
            tx,
            wake: mc::runtime::wake::Wake::none(),
        });
        let s = Arc::clone(&shard);
        let ev = ev_tx.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("fake-shard-{i}"))
                .spawn(move || serve(&s, &rx, &ev))
                .expect("spawn fake shard thread"),
        );
        shards.push(shard);
    }
    (
        RuntimeLink {
            shards: handles,
            events: ev_rx,
        },
        FakeShards {
            shards,
            events: ev_tx,
            router: Router::new(cfg.shards.max(1)),
            threads,
        },
    )
}

fn serve(shard: &FakeShard, rx: &Receiver<ControlMsg>, events: &Sender<(ShardId, ShardEvent)>) {
    loop {
        if shard.stop.load(Ordering::SeqCst) {
            return;
        }
        if shard.stuck.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok(msg) => {
                let shutdown = matches!(msg.req, ShardRequest::Shutdown);
                let reply = answer(shard, msg.req, events);
                if let Some(tx) = msg.reply {
                    let _ = tx.send(reply);
                }
                if shutdown {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn request_name(req: &ShardRequest) -> String {
    match req {
        ShardRequest::Snapshot => "Snapshot".into(),
        ShardRequest::Assign { meeting_id, .. } => format!("Assign({meeting_id})"),
        ShardRequest::ListMeetings => "ListMeetings".into(),
        ShardRequest::ShowMeeting(id) => format!("ShowMeeting({id})"),
        ShardRequest::EndMeeting(id, r) => format!("EndMeeting({id},{})", r.as_str()),
        ShardRequest::SetDraining(b) => format!("SetDraining({b})"),
        ShardRequest::EndAll(r) => format!("EndAll({})", r.as_str()),
        ShardRequest::Shutdown => "Shutdown".into(),
        ShardRequest::Export { meeting_id, .. } => format!("Export({meeting_id})"),
        ShardRequest::CommitExport(id, t) => format!("CommitExport({id},{})", t.controller_id),
        ShardRequest::AbortExport(id) => format!("AbortExport({id})"),
        ShardRequest::Import(e) => format!("Import({})", e.meeting_id),
    }
}

fn summary(shard: u16, id: &str, m: &FakeMeeting, now: Instant) -> MeetingSummary {
    let age = now.saturating_duration_since(m.created).as_millis() as u64;
    MeetingSummary {
        meeting_id: id.to_owned(),
        shard,
        participants: m.participants,
        connected: m.connections.min(m.participants),
        assigned: m.assigned,
        created_unix_ms: 0,
        age_ms: age,
        idle_ms: age,
    }
}

fn end(
    shard: &FakeShard,
    st: &mut FakeState,
    id: &str,
    reason: EndReason,
    events: &Sender<(ShardId, ShardEvent)>,
) -> bool {
    if st.meetings.remove(id).is_none() {
        return false;
    }
    let _ = events.try_send((
        shard.id,
        ShardEvent::MeetingEnded {
            meeting_id: id.to_owned(),
            reason: reason.as_str(),
        },
    ));
    true
}

fn answer(
    shard: &FakeShard,
    req: ShardRequest,
    events: &Sender<(ShardId, ShardEvent)>,
) -> ShardReply {
    let mut st = shard.state();
    st.log.push(request_name(&req));
    let now = Instant::now();
    match req {
        ShardRequest::Snapshot => {
            let mut s = st.overlay.clone();
            s.shard = shard.id.0;
            s.meetings = st.meetings.len();
            s.participants = st.meetings.values().map(|m| m.participants).sum();
            s.connections =
                st.loose_connections + st.meetings.values().map(|m| m.connections).sum::<usize>();
            s.draining = st.draining;
            ShardReply::Snapshot(Box::new(s))
        }
        ShardRequest::Assign {
            meeting_id,
            media_handlers,
        } => {
            let key = meeting_id.to_string();
            if let Some(m) = st.meetings.get_mut(&key) {
                m.assigned = true;
                m.media_handlers = media_handlers;
                return ShardReply::Assigned(AssignOutcome::Accepted);
            }
            if st.draining {
                return ShardReply::Assigned(AssignOutcome::Draining);
            }
            if st.meetings.len() >= shard.max_meetings {
                return ShardReply::Assigned(AssignOutcome::AtCapacity);
            }
            st.meetings.insert(
                key,
                FakeMeeting {
                    participants: 0,
                    connections: 0,
                    media_handlers,
                    assigned: true,
                    created: now,
                },
            );
            ShardReply::Assigned(AssignOutcome::Accepted)
        }
        ShardRequest::ListMeetings => ShardReply::Meetings(
            st.meetings
                .iter()
                .map(|(id, m)| summary(shard.id.0, id, m, now))
                .collect(),
        ),
        ShardRequest::ShowMeeting(id) => {
            ShardReply::Meeting(st.meetings.get(id.as_str()).map(|m| {
                Box::new(MeetingDetail {
                    summary: summary(shard.id.0, id.as_str(), m, now),
                    media_handlers: m.media_handlers.clone(),
                    participants: (0..m.participants)
                        .map(|i| ParticipantAdmin {
                            participant_id: format!("p{:x}-{i:x}", shard.id.0),
                            user: format!("user-{i}"),
                            display_name: format!("User {i}"),
                            role: if i == 0 {
                                Role::Host
                            } else {
                                Role::Participant
                            },
                            connected: i < m.connections,
                            audio_muted: false,
                            video_muted: false,
                            joined_at_ms: 0,
                            disconnected_for_ms: None,
                        })
                        .collect(),
                })
            }))
        }
        ShardRequest::EndMeeting(id, reason) => {
            ShardReply::Ended(end(shard, &mut st, id.as_str(), reason, events))
        }
        ShardRequest::SetDraining(on) => {
            st.draining = on;
            ShardReply::Done
        }
        ShardRequest::EndAll(reason) => {
            st.draining = true;
            let ids: Vec<String> = st.meetings.keys().cloned().collect();
            for id in &ids {
                end(shard, &mut st, id, reason, events);
            }
            st.loose_connections = 0;
            ShardReply::EndedAll(ids.len())
        }
        // The model has no clients, so none follows `migrate`: its meetings never move (the
        // real shards' migration is tested in core and end to end).
        ShardRequest::Export { meeting_id, .. } => {
            ShardReply::Exported(Err(if st.meetings.contains_key(meeting_id.as_str()) {
                ExportError::ClientsUnsupported
            } else {
                ExportError::NotFound
            }))
        }
        ShardRequest::CommitExport(..) => ShardReply::Committed(None),
        ShardRequest::AbortExport(_) => ShardReply::Aborted(false),
        ShardRequest::Import(_) => ShardReply::Imported(Err(ImportError::Invalid(
            "the fake shard runtime does not import meetings".into(),
        ))),
        ShardRequest::Shutdown => {
            st.shut_down = true;
            ShardReply::Done
        }
    }
}

impl FakeShards {
    /// The router the control thread uses for these shards.
    pub fn router(&self) -> Router {
        self.router
    }

    /// The shard owning `meeting_id`.
    pub fn shard_of(&self, meeting_id: &str) -> u16 {
        self.router.shard_for_str(meeting_id).0
    }

    fn shard(&self, i: u16) -> &FakeShard {
        &self.shards[usize::from(i)]
    }

    /// Creates a meeting on its owning shard (as a standalone join would); returns the shard.
    pub fn add_meeting(&self, meeting_id: &str, participants: usize, connections: usize) -> u16 {
        let i = self.shard_of(meeting_id);
        self.shard(i).state().meetings.insert(
            meeting_id.to_owned(),
            FakeMeeting {
                participants,
                connections,
                media_handlers: Vec::new(),
                assigned: false,
                created: Instant::now(),
            },
        );
        i
    }

    /// Ends a meeting as a host would, emitting the `MeetingEnded` event.
    pub fn end_meeting(&self, meeting_id: &str, reason: EndReason) -> bool {
        let i = self.shard_of(meeting_id);
        let shard = self.shard(i);
        let mut st = shard.state();
        end(shard, &mut st, meeting_id, reason, &self.events)
    }

    /// Meetings held by shard `i`.
    pub fn meetings(&self, i: u16) -> Vec<String> {
        self.shard(i).state().meetings.keys().cloned().collect()
    }

    /// Media handlers of a meeting, if it exists.
    pub fn media_handlers(&self, meeting_id: &str) -> Option<Vec<MediaHandler>> {
        let i = self.shard_of(meeting_id);
        MeetingId::parse(meeting_id).ok()?;
        self.shard(i)
            .state()
            .meetings
            .get(meeting_id)
            .map(|m| m.media_handlers.clone())
    }

    /// Connections of shard `i` not tied to a meeting (e.g. still handshaking).
    pub fn set_loose_connections(&self, i: u16, n: usize) {
        self.shard(i).state().loose_connections = n;
    }

    /// Makes shard `i` stop (or resume) serving its control mailbox.
    pub fn set_stuck(&self, i: u16, stuck: bool) {
        self.shard(i).stuck.store(stuck, Ordering::SeqCst);
    }

    /// Edits the snapshot fields the model does not compute (mailbox depths, latencies, drops,
    /// counters). Meetings, participants, connections and the drain flag always come from the
    /// model.
    pub fn edit_snapshot(&self, i: u16, f: impl FnOnce(&mut ShardSnapshot)) {
        f(&mut self.shard(i).state().overlay);
    }

    /// Requests shard `i` has answered, in order (e.g. `"SetDraining(true)"`, `"EndAll(controller_draining)"`).
    pub fn requests(&self, i: u16) -> Vec<String> {
        self.shard(i).state().log.clone()
    }

    /// True if shard `i` was told to drain and not told otherwise since.
    pub fn is_draining(&self, i: u16) -> bool {
        self.shard(i).state().draining
    }

    /// True once shard `i` has received `Shutdown`.
    pub fn is_shut_down(&self, i: u16) -> bool {
        self.shard(i).state().shut_down
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Always false: there is at least one shard.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }
}

impl Drop for FakeShards {
    fn drop(&mut self) {
        for s in &self.shards {
            s.stop.store(true, Ordering::SeqCst);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
