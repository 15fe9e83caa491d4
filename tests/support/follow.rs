//! A test participant that follows `migrate` (signaling extension): over native QUIC or
//! WebTransport, it reconnects to the target named in the notice, resumes with the migrate
//! token and sends again the messages the old controller did not handle.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mc::core::protocol::{
    ClientMessage, ErrorCode, ResumeRequest, Role, ServerMessage, CAPABILITY_MIGRATE,
};
use mc::core::shard::MIGRATING_REFUSAL;
use mc::core::token::{MintClaims, TokenSigner};

use super::wt::WtClient;
use super::{unix_secs, Client};

/// Which transport a member uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Native QUIC (`mc/1`).
    Native,
    /// WebTransport over HTTP/3.
    WebTransport,
}

enum Conn {
    Native(Box<Client>),
    Wt(Box<WtClient>),
}

impl Conn {
    fn open(t: Transport, addr: SocketAddr, meeting: &str) -> Conn {
        match t {
            Transport::Native => Conn::Native(Box::new(Client::connect(addr))),
            Transport::WebTransport => {
                let mut c = WtClient::connect(addr, &format!("/meetings/{meeting}"), None);
                assert!(
                    c.wait_session(Duration::from_secs(10)),
                    "no WebTransport session"
                );
                Conn::Wt(Box::new(c))
            }
        }
    }

    fn send(&mut self, m: &ClientMessage) {
        match self {
            Conn::Native(c) => c.send(m),
            Conn::Wt(c) => c.send(m),
        }
    }

    fn io(&mut self, d: Duration) {
        match self {
            Conn::Native(c) => c.io(d),
            Conn::Wt(c) => c.io(d),
        }
    }

    fn take(&mut self) -> Vec<ServerMessage> {
        match self {
            Conn::Native(c) => std::mem::take(&mut c.received),
            Conn::Wt(c) => c.take_received(),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Conn::Native(c) => c.is_closed(),
            Conn::Wt(c) => c.is_closed(),
        }
    }
}

/// Parses `host:port` or `https://host:port[/...]` into a loopback-friendly address.
pub fn endpoint_addr(s: &str) -> SocketAddr {
    let s = s.strip_prefix("https://").unwrap_or(s);
    let hostport = s.split('/').next().unwrap_or(s);
    hostport
        .parse()
        .unwrap_or_else(|e| panic!("bad endpoint {s}: {e}"))
}

/// One participant.
pub struct Member {
    pub name: String,
    pub sub: String,
    pub meeting: String,
    pub role: Role,
    pub transport: Transport,
    pub pid: String,
    pub binding_token: String,
    /// Controller the member is connected to (as named by the last `migrate`).
    pub controller: String,
    conn: Conn,
    signer: TokenSigner,
    /// Messages sent on the current connection, its join first.
    sent_on_conn: Vec<ClientMessage>,
    /// Everything received except join responses, migrate notices and refusals, in order.
    pub log: Vec<ServerMessage>,
    /// `error{conflict}` refusals seen for messages sent while the meeting was moving.
    pub refused: usize,
    /// Other errors.
    pub errors: Vec<ServerMessage>,
    /// Migrations followed, with the gap from notice to `join_response` at the target.
    pub gaps: Vec<Duration>,
    moving_since: Option<Instant>,
    /// `meeting_ended` received.
    pub ended: Option<ServerMessage>,
    /// The binding token of the last `migrate` notice (already used by the resume).
    pub last_migrate_token: Option<String>,
}

impl Member {
    /// Connects to `addr` and joins `meeting`, announcing the `migrate` capability.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        signer: &TokenSigner,
        addr: SocketAddr,
        controller: &str,
        meeting: &str,
        name: &str,
        role: Role,
        transport: Transport,
    ) -> Member {
        let mut m = Member {
            name: name.into(),
            sub: format!("user-{name}"),
            meeting: meeting.into(),
            role,
            transport,
            pid: String::new(),
            binding_token: String::new(),
            controller: controller.into(),
            conn: Conn::open(transport, addr, meeting),
            signer: signer.clone(),
            sent_on_conn: Vec::new(),
            log: Vec::new(),
            refused: 0,
            errors: Vec::new(),
            gaps: Vec::new(),
            moving_since: None,
            ended: None,
            last_migrate_token: None,
        };
        let join = m.join_message(None);
        m.send(join);
        let deadline = Instant::now() + Duration::from_secs(10);
        while m.pid.is_empty() {
            assert!(Instant::now() < deadline, "{name}: no join_response");
            m.pump(Duration::from_millis(5));
        }
        m
    }

    fn token(&self) -> String {
        let now = unix_secs();
        self.signer.mint(&MintClaims {
            sub: self.sub.clone(),
            meeting_id: self.meeting.clone(),
            role: self.role,
            iat: now,
            exp: now + 3600,
            jti: None,
        })
    }

    fn join_message(&self, resume: Option<ResumeRequest>) -> ClientMessage {
        ClientMessage::Join {
            meeting_id: self.meeting.clone(),
            token: self.token(),
            display_name: self.name.clone(),
            request_id: None,
            resume,
            capabilities: vec![CAPABILITY_MIGRATE.into()],
        }
    }

    /// Sends on the current connection (remembered until the connection is left).
    pub fn send(&mut self, m: ClientMessage) {
        self.conn.send(&m);
        self.sent_on_conn.push(m);
    }

    /// A broadcast `message` with `{"from": name, "seq": seq}`.
    pub fn say(&mut self, seq: u64) {
        self.send(ClientMessage::Message {
            payload: serde_json::json!({ "from": self.name, "seq": seq }),
            to: None,
        });
    }

    /// True while it has left a controller and not yet joined the next.
    pub fn moving(&self) -> bool {
        self.moving_since.is_some()
    }

    /// Reads what arrived for about `budget`, following a `migrate` notice if one came.
    pub fn pump(&mut self, budget: Duration) {
        self.conn.io(budget);
        for msg in self.conn.take() {
            self.on_message(msg);
        }
    }

    fn on_message(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::JoinResponse {
                participant_id,
                binding_token,
                ..
            } => {
                if !self.pid.is_empty() {
                    assert_eq!(participant_id, self.pid, "{}: id changed", self.name);
                }
                self.pid = participant_id;
                self.binding_token = binding_token;
                if let Some(t) = self.moving_since.take() {
                    self.gaps.push(t.elapsed());
                }
            }
            ServerMessage::Migrate {
                participant_id,
                controller_id,
                quic_endpoint,
                webtransport_url,
                binding_token,
                messages_handled,
                ..
            } => {
                assert_eq!(participant_id, self.pid);
                self.moving_since = Some(Instant::now());
                // Not handled by the old controller: sent again at the target, in order.
                let handled = usize::try_from(messages_handled).unwrap_or(usize::MAX);
                let resend: Vec<ClientMessage> = self
                    .sent_on_conn
                    .iter()
                    .skip(handled)
                    .filter(|m| !matches!(m, ClientMessage::Join { .. }))
                    .cloned()
                    .collect();
                let addr = match self.transport {
                    Transport::Native => endpoint_addr(&quic_endpoint),
                    Transport::WebTransport => endpoint_addr(&webtransport_url),
                };
                self.controller = controller_id;
                self.last_migrate_token = Some(binding_token.clone());
                self.conn = Conn::open(self.transport, addr, &self.meeting);
                self.sent_on_conn.clear();
                let join = self.join_message(Some(ResumeRequest {
                    participant_id: self.pid.clone(),
                    binding_token,
                }));
                self.send(join);
                for m in resend {
                    self.send(m);
                }
            }
            ServerMessage::Error {
                code: ErrorCode::Conflict,
                ref message,
                ..
            } if message == MIGRATING_REFUSAL => self.refused += 1,
            ServerMessage::Error { .. } => self.errors.push(msg),
            ServerMessage::MeetingEnded { .. } => self.ended = Some(msg),
            other => self.log.push(other),
        }
    }

    /// Sequence numbers of the messages received from `name`, in arrival order.
    pub fn seqs_from(&self, name: &str) -> Vec<u64> {
        self.log
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Message { payload, .. } if payload["from"] == name => {
                    payload["seq"].as_u64()
                }
                _ => None,
            })
            .collect()
    }

    /// `participant_left` and `participant_joined` seen (churn).
    pub fn churn(&self) -> Vec<&ServerMessage> {
        self.log
            .iter()
            .filter(|m| {
                matches!(
                    m,
                    ServerMessage::ParticipantLeft { .. } | ServerMessage::ParticipantJoined { .. }
                )
            })
            .collect()
    }

    /// True once the current connection is closed (without a migrate to follow).
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }
}

/// Pumps every member for about `budget` in total.
pub fn pump_all(members: &mut [Member], budget: Duration) {
    let deadline = Instant::now() + budget;
    loop {
        for m in members.iter_mut() {
            m.pump(Duration::from_millis(1));
        }
        if Instant::now() >= deadline {
            return;
        }
    }
}

/// Pumps until `done` holds or `timeout` passes; true if it held.
pub fn pump_until(
    members: &mut [Member],
    timeout: Duration,
    done: impl Fn(&[Member]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done(members) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        pump_all(members, Duration::from_millis(10));
    }
}
