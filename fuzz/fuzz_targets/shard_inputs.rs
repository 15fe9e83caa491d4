//! Two `core::shard::Shard`s driven by arbitrary sequences of operations: connections opened,
//! valid joins and resumes (with real tokens), structured messages, raw stream bytes, closes,
//! clock jumps and control commands. The harness plays the I/O layer: it moves handed-off
//! connections to the meeting's shard, completes closes and reads every queued frame.
//!
//! Checked, besides "no panic":
//! - every frame the shards queue is a well-formed frame (length prefix, 1..=65536 bytes) of a
//!   valid server message;
//! - a connection that got `join_response` sits on the shard that owns the meeting, and the
//!   participant id names that shard;
//! - a resume keeps the participant id it asked for, and a spent binding token never works;
//! - the shards settle (no endless action loops), and once every connection is closed and
//!   the resume window and empty-meeting timeout have passed, nothing is left: no
//!   participant, no meeting, no connection.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mc::core::binding::BindingKey;
use mc::core::codec::{self, FrameDecoder, HEADER_LEN, MAX_FRAME_LEN};
use mc::core::ids::{ConnId, MeetingId, ShardId};
use mc::core::protocol::{ClientMessage, EndReason, ResumeRequest, Role, ServerMessage};
use mc::core::router::Router;
use mc::core::shard::{Action, Now, Shard, ShardConfig};
use mc::core::token::{MintClaims, TokenSigner, TokenVerifier};

const SHARDS: u16 = 2;
const SLOTS: u8 = 12;
const MEETINGS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];
const START_UNIX_MS: u64 = 1_800_000_000_000;

#[derive(Arbitrary, Debug)]
enum Msg {
    Leave,
    Mute {
        audio: bool,
        video: bool,
    },
    Message {
        to: Option<Vec<u8>>,
        size: u16,
    },
    Ping(u64),
    HostMute {
        target: u8,
        audio: bool,
        video: bool,
    },
    Kick {
        target: u8,
    },
    EndMeeting,
    JoinAgain {
        meeting: u8,
    },
    Unknown,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Open {
        slot: u8,
    },
    Join {
        slot: u8,
        meeting: u8,
        host: bool,
        name: u8,
        in_same_write: Option<Msg>,
    },
    Resume {
        slot: u8,
        of: u8,
        spent: bool,
        other_user: bool,
    },
    Send {
        slot: u8,
        msg: Msg,
    },
    Raw {
        slot: u8,
        bytes: Vec<u8>,
    },
    Close {
        slot: u8,
    },
    Advance {
        ms: u16,
    },
    Draining(bool),
    Assign {
        meeting: u8,
    },
    AdminEnd {
        meeting: u8,
    },
    EndAll,
}

struct Keys {
    signer: TokenSigner,
    verifier: Arc<TokenVerifier>,
    binding: Arc<BindingKey>,
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        let signer = TokenSigner::from_seed(&[9; 32], "k1");
        let verifier = TokenVerifier::from_jwks_json(&signer.jwks_json(), 60).unwrap();
        Keys {
            signer,
            verifier: Arc::new(verifier),
            binding: Arc::new(BindingKey::new(&[7; 32]).unwrap()),
        }
    })
}

fn config(shard: u16) -> ShardConfig {
    let mut c = ShardConfig::for_tests(ShardId(shard), SHARDS);
    c.mailbox_size = 32;
    c.slow_consumer_drops = 8;
    c.resume_window = Duration::from_secs(5);
    c.empty_meeting_timeout = Duration::from_secs(10);
    c.join_timeout = Duration::from_secs(2);
    c.max_participants_per_meeting = 6;
    c.max_meetings = 3;
    c.rate_limit = 50.0;
    c.rate_burst = 20.0;
    c.flood_strikes = 10;
    c
}

/// One participant as learnt from a `join_response`.
struct Known {
    meeting: String,
    pid: String,
    user: String,
    binding: String,
    spent: Vec<String>,
}

struct Sim {
    shards: [Shard; 2],
    t0: Instant,
    elapsed: Duration,
    seq: u64,
    /// slot → live connection.
    slots: HashMap<u8, ConnId>,
    /// Which shard holds each live connection.
    owner: HashMap<ConnId, usize>,
    decoders: HashMap<ConnId, FrameDecoder>,
    /// Connections that got a close action (their close completes in `settle`).
    closing: Vec<ConnId>,
    /// Expected outcome of a resume sent on a connection: (participant id, token was spent).
    resumes: HashMap<ConnId, (String, bool)>,
    /// User (`sub`) of each connection's join.
    users: HashMap<ConnId, String>,
    known: Vec<Known>,
    pids_by_conn: HashMap<ConnId, String>,
    /// (joins, resumes, handoffs, closes) seen, for `MC_FUZZ_TRACE=1`.
    counts: [u32; 4],
}

impl Sim {
    fn new() -> Self {
        let k = keys();
        let shard = |i| Shard::new(config(i), k.verifier.clone(), k.binding.clone());
        Self {
            shards: [shard(0), shard(1)],
            t0: Instant::now(),
            elapsed: Duration::ZERO,
            seq: 0,
            slots: HashMap::new(),
            owner: HashMap::new(),
            decoders: HashMap::new(),
            closing: Vec::new(),
            resumes: HashMap::new(),
            users: HashMap::new(),
            known: Vec::new(),
            pids_by_conn: HashMap::new(),
            counts: [0; 4],
        }
    }

    fn now(&self) -> Now {
        Now {
            mono: self.t0 + self.elapsed,
            unix_ms: START_UNIX_MS + self.elapsed.as_millis() as u64,
        }
    }

    fn token(&self, meeting: &str, role: Role, user: &str) -> String {
        let now = self.now().unix_ms / 1000;
        keys().signer.mint(&MintClaims {
            sub: user.into(),
            meeting_id: meeting.into(),
            role,
            iat: now,
            exp: now + 600,
            jti: None,
        })
    }

    fn conn(&self, slot: u8) -> Option<(ConnId, usize)> {
        let c = *self.slots.get(&(slot % SLOTS))?;
        Some((c, *self.owner.get(&c)?))
    }

    fn open(&mut self, slot: u8) -> (ConnId, usize) {
        if let Some(c) = self.conn(slot) {
            return c;
        }
        let slot = slot % SLOTS;
        self.seq += 1;
        let accepting = usize::from(slot) % 2;
        let id = ConnId::new(ShardId(accepting as u16), self.seq);
        let now = self.now();
        self.shards[accepting].handle_connection_opened(id, now);
        self.slots.insert(slot, id);
        self.owner.insert(id, accepting);
        (id, accepting)
    }

    fn write(&mut self, slot: u8, bytes: &[u8]) {
        let (c, s) = self.open(slot);
        let now = self.now();
        self.shards[s].handle_stream_data(c, bytes, now);
    }

    fn pid_of_slot(&self, slot: u8) -> String {
        self.slots
            .get(&(slot % SLOTS))
            .and_then(|c| self.pids_by_conn.get(c))
            .cloned()
            .or_else(|| {
                self.known
                    .get(usize::from(slot) % self.known.len().max(1))
                    .map(|k| k.pid.clone())
            })
            .unwrap_or_else(|| format!("p{}-{}", slot % 2, slot))
    }

    fn client_message(&self, msg: &Msg) -> ClientMessage {
        match msg {
            Msg::Leave => ClientMessage::Leave {},
            Msg::Mute { audio, video } => ClientMessage::Mute {
                audio: *audio,
                video: *video,
            },
            Msg::Message { to, size } => ClientMessage::Message {
                payload: serde_json::Value::String("x".repeat(usize::from(*size) % 20_000)),
                to: to
                    .as_ref()
                    .map(|t| t.iter().take(8).map(|s| self.pid_of_slot(*s)).collect()),
            },
            Msg::Ping(id) => ClientMessage::Ping { id: *id },
            Msg::HostMute {
                target,
                audio,
                video,
            } => ClientMessage::HostMute {
                participant_id: self.pid_of_slot(*target),
                audio: *audio,
                video: *video,
            },
            Msg::Kick { target } => ClientMessage::Kick {
                participant_id: self.pid_of_slot(*target),
            },
            Msg::EndMeeting => ClientMessage::EndMeeting {},
            Msg::JoinAgain { meeting } => {
                let m = MEETINGS[usize::from(*meeting) % MEETINGS.len()];
                ClientMessage::Join {
                    meeting_id: m.into(),
                    token: self.token(m, Role::Participant, "again"),
                    display_name: "again".into(),
                    request_id: None,
                    resume: None,
                    capabilities: Vec::new(),
                }
            }
            Msg::Unknown => ClientMessage::Unknown,
        }
    }

    fn apply(&mut self, op: &Op) {
        let now = self.now();
        match op {
            Op::Open { slot } => {
                self.open(*slot);
            }
            Op::Join {
                slot,
                meeting,
                host,
                name,
                in_same_write,
            } => {
                let m = MEETINGS[usize::from(*meeting) % MEETINGS.len()];
                let role = if *host { Role::Host } else { Role::Participant };
                let user = format!("u{}", slot % SLOTS);
                let mut bytes = codec::encode(&ClientMessage::Join {
                    meeting_id: m.into(),
                    token: self.token(m, role, &user),
                    display_name: "n".repeat(usize::from(*name) + 1),
                    request_id: Some(format!("r{slot}")),
                    resume: None,
                    capabilities: Vec::new(),
                })
                .to_vec();
                if let Some(msg) = in_same_write {
                    bytes.extend_from_slice(&codec::encode(&self.client_message(msg)));
                }
                let (c, _) = self.open(*slot);
                self.users.insert(c, user);
                self.write(*slot, &bytes);
            }
            Op::Resume {
                slot,
                of,
                spent,
                other_user,
            } => {
                if self.known.is_empty() {
                    return;
                }
                let k = &self.known[usize::from(*of) % self.known.len()];
                let (binding, is_spent) = match (spent, k.spent.last()) {
                    (true, Some(old)) => (old.clone(), true),
                    _ => (k.binding.clone(), false),
                };
                let user = if *other_user {
                    "mallory".to_owned()
                } else {
                    k.user.clone()
                };
                let bytes = codec::encode(&ClientMessage::Join {
                    meeting_id: k.meeting.clone(),
                    token: self.token(&k.meeting, Role::Participant, &user),
                    display_name: "back".into(),
                    request_id: None,
                    resume: Some(ResumeRequest {
                        participant_id: k.pid.clone(),
                        binding_token: binding,
                    }),
                    capabilities: Vec::new(),
                });
                let pid = k.pid.clone();
                let (c, _) = self.open(*slot);
                self.resumes.insert(c, (pid, is_spent || *other_user));
                self.users.insert(c, user);
                self.write(*slot, &bytes);
            }
            Op::Send { slot, msg } => {
                let bytes = codec::encode(&self.client_message(msg));
                self.write(*slot, &bytes);
            }
            Op::Raw { slot, bytes } => self.write(*slot, bytes),
            Op::Close { slot } => {
                if let Some((c, s)) = self.conn(*slot) {
                    self.drain(s, c);
                    self.shards[s].handle_connection_closed(c, now);
                    self.forget(c);
                }
            }
            Op::Advance { ms } => {
                self.elapsed += Duration::from_millis(u64::from(*ms));
                let now = self.now();
                for s in &mut self.shards {
                    s.handle_timeout(now);
                }
            }
            Op::Draining(d) => {
                for s in &mut self.shards {
                    s.set_draining(*d);
                }
            }
            Op::Assign { meeting } => {
                let m = MEETINGS[usize::from(*meeting) % MEETINGS.len()];
                let id = MeetingId::parse(m).unwrap();
                let owner = Router::new(SHARDS).shard_for(&id);
                self.shards[usize::from(owner.0)].assign_meeting(id, Vec::new(), now);
            }
            Op::AdminEnd { meeting } => {
                let m = MEETINGS[usize::from(*meeting) % MEETINGS.len()];
                let id = MeetingId::parse(m).unwrap();
                for s in &mut self.shards {
                    s.end_meeting(&id, EndReason::EndedByAdmin, now);
                }
            }
            Op::EndAll => {
                for s in &mut self.shards {
                    s.end_all(EndReason::ControllerDraining, now);
                    s.set_draining(false);
                }
            }
        }
    }

    fn forget(&mut self, c: ConnId) {
        self.owner.remove(&c);
        self.slots.retain(|_, v| *v != c);
        self.decoders.remove(&c);
        self.resumes.remove(&c);
        self.pids_by_conn.remove(&c);
    }

    /// Reads every frame queued for `conn` on shard `s` and checks it.
    fn drain(&mut self, s: usize, conn: ConnId) {
        while let Some(f) = self.shards[s].pop_frame(conn) {
            assert!(f.len() > HEADER_LEN, "empty frame");
            let len = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
            assert_eq!(len, f.len() - HEADER_LEN, "length prefix");
            assert!(
                len <= MAX_FRAME_LEN,
                "server frame of {len} bytes exceeds 65536"
            );
            let d = self.decoders.entry(conn).or_default();
            d.push(&f);
            let mut msgs = Vec::new();
            while let Some(body) = d.next_frame().expect("server framing") {
                let m: ServerMessage =
                    codec::decode(body).expect("server frame is a server message");
                msgs.push(m);
            }
            for m in msgs {
                self.observe(s, conn, m);
            }
        }
    }

    fn observe(&mut self, s: usize, conn: ConnId, m: ServerMessage) {
        let ServerMessage::JoinResponse {
            participant_id,
            meeting_id,
            binding_token,
            ..
        } = m
        else {
            return;
        };
        let owner = Router::new(SHARDS).shard_for_str(&meeting_id);
        assert_eq!(
            usize::from(owner.0),
            s,
            "joined connection is not on the meeting's shard"
        );
        assert!(
            participant_id.starts_with(&format!("p{:x}-", owner.0)),
            "participant id {participant_id} does not name shard {owner}"
        );
        if let Some((want, must_fail)) = self.resumes.remove(&conn) {
            assert!(
                !must_fail,
                "a spent binding token or another user's resume was accepted"
            );
            assert_eq!(participant_id, want, "resume changed the participant id");
            self.counts[1] += 1;
            let k = self
                .known
                .iter_mut()
                .find(|k| k.pid == participant_id && k.meeting == meeting_id)
                .expect("resumed participant is known");
            let old = std::mem::replace(&mut k.binding, binding_token);
            k.spent.push(old);
        } else {
            self.counts[0] += 1;
            let user = self.users.get(&conn).cloned().unwrap_or_default();
            self.known
                .retain(|k| !(k.pid == participant_id && k.meeting == meeting_id));
            self.known.push(Known {
                meeting: meeting_id,
                pid: participant_id.clone(),
                user,
                binding: binding_token,
                spent: Vec::new(),
            });
        }
        self.pids_by_conn.insert(conn, participant_id);
    }

    /// Plays the I/O layer until nothing moves.
    fn settle(&mut self) {
        for _ in 0..256 {
            let now = self.now();
            let mut moved = false;
            for s in 0..2 {
                self.shards[s].process_all(now);
                while let Some(a) = self.shards[s].poll_action() {
                    moved = true;
                    match a {
                        Action::Close { conn, .. } => {
                            self.counts[3] += 1;
                            if !self.closing.contains(&conn) {
                                self.closing.push(conn);
                            }
                        }
                        Action::Handoff { conn, to, join } => {
                            self.counts[2] += 1;
                            let to = usize::from(to.0);
                            assert_ne!(to, s, "handoff to the same shard");
                            self.owner.insert(conn, to);
                            self.shards[to].handle_adopted(conn, *join, now);
                        }
                        Action::Notify(_) => {}
                    }
                }
                while let Some(c) = self.shards[s].poll_writable() {
                    moved = true;
                    self.drain(s, c);
                }
            }
            // Closes complete once the queued frames are out.
            for c in std::mem::take(&mut self.closing) {
                moved = true;
                if let Some(s) = self.owner.get(&c).copied() {
                    self.drain(s, c);
                    self.shards[s].handle_connection_closed(c, now);
                }
                self.forget(c);
            }
            if !moved {
                return;
            }
        }
        panic!("the shards did not settle");
    }

    /// Closes everything and lets every timer run out: nothing may be left behind.
    fn finish(&mut self) {
        let live: Vec<ConnId> = self.owner.keys().copied().collect();
        let now = self.now();
        for c in live {
            if let Some(s) = self.owner.get(&c).copied() {
                self.drain(s, c);
                self.shards[s].handle_connection_closed(c, now);
            }
            self.forget(c);
        }
        self.settle();
        for _ in 0..4 {
            self.elapsed += Duration::from_secs(11);
            let now = self.now();
            for s in &mut self.shards {
                s.handle_timeout(now);
            }
            self.settle();
        }
        for s in &self.shards {
            assert_eq!(s.connection_count(), 0, "connections left on {s:?}");
            assert_eq!(s.participant_count(), 0, "participants left on {s:?}");
            assert_eq!(s.meeting_count(), 0, "meetings left on {s:?}");
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut sim = Sim::new();
    for op in ops.iter().take(200) {
        sim.apply(op);
        sim.settle();
    }
    sim.finish();
    if std::env::var_os("MC_FUZZ_TRACE").is_some() {
        let [joins, resumes, handoffs, closes] = sim.counts;
        eprintln!(
            "trace: ops={} joins={joins} resumes={resumes} handoffs={handoffs} closes={closes}",
            ops.len()
        );
    }
});
