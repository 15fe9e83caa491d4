//! [`Harness`]: quiche clients ↔ one or two endpoints, in memory, on a virtual clock.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mc::core::binding::BindingKey;
use mc::core::codec::{self, FrameDecoder};
use mc::core::ids::ShardId;
use mc::core::protocol::{ClientMessage, ResumeRequest, Role, ServerMessage};
use mc::core::router::{shard_of_cid, Router, CID_LEN};
use mc::core::shard::{Now, Shard, ShardConfig, ShardEvent};
use mc::core::token::{MintClaims, TokenSigner, TokenVerifier};
use mc::quic::endpoint::{quiche_config, Endpoint, EndpointConfig, PeerMsg};
use mc::quic::retry::RetryKey;

use crate::client::{
    closed, join_message, read_signaling, take_first, ClientSettings, Closed, SIGNALING_STREAM,
};
use crate::clock::Clock;

/// The server's address (every shard shares it, as with SO_REUSEPORT).
const SERVER_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 4433);
/// Rounds after which [`Harness::drive`] gives up: something keeps sending forever.
const MAX_ROUNDS: usize = 100_000;
/// Largest step [`Harness::advance`] moves the clock at once, so the endpoints' sub-second
/// timers (close grace, keep-alive sweep) fire near their deadline whatever the total advance.
const TICK: Duration = Duration::from_millis(10);

/// How datagrams from clients find a shard (the kernel's part in production).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    /// Like the reuseport steering program: a datagram goes to the shard its destination CID
    /// names, and to the client's home shard when the CID is not a server CID (first Initial).
    ByCid,
    /// 4-tuple only: every datagram of a client goes to its home shard, so a connection handed
    /// to another shard is reached by user-space forwarding.
    Off,
}

/// What the harness builds: shard count, core and transport settings, steering.
#[derive(Debug, Clone)]
pub struct HarnessConfig {
    /// Shards (each gets an endpoint); shard ids are `0..shards`.
    pub shards: u16,
    /// Core settings; `shard` and `shard_count` are filled per shard.
    pub core: ShardConfig,
    /// Transport settings; `shard`, `shard_count` and the TLS paths are filled per shard.
    pub endpoint: EndpointConfig,
    /// How client datagrams reach shards.
    pub steering: Steering,
}

impl HarnessConfig {
    /// Defaults for `shards` shards: the core's test settings, no idle timeout (quiche's idle
    /// timer runs on the real clock), no keep-alive, no Retry, CID steering.
    pub fn new(shards: u16) -> Self {
        let shards = shards.max(1);
        Self {
            shards,
            core: ShardConfig::for_tests(ShardId(0), shards),
            endpoint: EndpointConfig {
                shard: ShardId(0),
                shard_count: shards,
                node_id: 0,
                tls_cert: String::new(),
                tls_key: String::new(),
                idle_timeout: Duration::ZERO,
                keep_alive: Duration::ZERO,
                max_connections: 1_000_000,
                allowed_origins: None,
                retry_always: false,
                retry_threshold: usize::MAX,
                max_handshakes: usize::MAX,
                retry_key: RetryKey::new([0x42; 32]),
            },
            steering: Steering::ByCid,
        }
    }
}

/// A client of the harness (index in creation order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub usize);

/// Per-client transport options.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// Receive window of the signaling stream, in bytes (small = a slow reader).
    pub stream_window: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            stream_window: 4 << 20,
        }
    }
}

/// Datagrams and shard messages the harness moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Datagrams from clients to endpoints.
    pub to_server: u64,
    /// Datagrams from endpoints to clients.
    pub to_clients: u64,
    /// Messages between shards (forwarded datagrams and handoffs).
    pub between_shards: u64,
}

struct Client {
    conn: quiche::Connection,
    addr: SocketAddr,
    /// The shard the kernel's 4-tuple hash would pick for this client.
    home: ShardId,
    decoder: FrameDecoder,
    received: Vec<ServerMessage>,
    /// False: the client leaves stream data unread (a slow consumer).
    reading: bool,
    /// Vanished: sends nothing, and what reaches it is lost.
    gone: bool,
}

impl Client {
    fn read_stream(&mut self, buf: &mut [u8]) {
        if !self.reading || self.gone {
            return;
        }
        read_signaling(
            &mut self.conn,
            SIGNALING_STREAM,
            &mut self.decoder,
            &mut self.received,
            buf,
        );
    }
}

/// Clients, endpoints and the virtual clock of one test; see the crate docs.
pub struct Harness {
    cfg: HarnessConfig,
    clock: Clock,
    router: Router,
    endpoints: Vec<Endpoint>,
    /// Datagrams waiting for each shard, with their source.
    inbound: Vec<Vec<(Vec<u8>, SocketAddr)>>,
    /// Messages waiting for each shard.
    peers: Vec<Vec<PeerMsg>>,
    clients: Vec<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    client_cfg: quiche::Config,
    signer: TokenSigner,
    events: Vec<(ShardId, ShardEvent)>,
    wire: WireStats,
    buf: Vec<u8>,
    measuring: bool,
    endpoint_busy: Duration,
}

impl Harness {
    /// A harness with `shards` endpoints and default settings.
    pub fn new(shards: u16) -> Self {
        Self::with_config(HarnessConfig::new(shards))
    }

    /// A harness built from `cfg`.
    pub fn with_config(cfg: HarnessConfig) -> Self {
        let clock = Clock::new();
        let signer = TokenSigner::from_seed(&[7; 32], mc::dev::DEV_KID);
        let verifier = Arc::new(
            TokenVerifier::from_jwks_json(&signer.jwks_json(), 0)
                .expect("the signer's own JWKS is valid"),
        );
        let binding = Arc::new(BindingKey::new(&[0x5a; 32]).expect("32-byte binding secret"));
        let qcfgs = server_quiche_configs(&cfg);
        let endpoints = qcfgs
            .into_iter()
            .enumerate()
            .map(|(i, (ecfg, qcfg))| {
                let mut ccfg = cfg.core.clone();
                ccfg.shard = ShardId(i as u16);
                ccfg.shard_count = cfg.shards;
                let core = Shard::new(ccfg, verifier.clone(), binding.clone());
                Endpoint::new(ecfg, qcfg, core, clock.now().mono)
            })
            .collect();
        let n = usize::from(cfg.shards);
        Self {
            router: Router::new(cfg.shards),
            clock,
            endpoints,
            inbound: (0..n).map(|_| Vec::new()).collect(),
            peers: (0..n).map(|_| Vec::new()).collect(),
            clients: Vec::new(),
            by_addr: HashMap::new(),
            client_cfg: client_config(ClientOptions::default()),
            signer,
            events: Vec::new(),
            wire: WireStats::default(),
            buf: vec![0; 65536],
            measuring: false,
            endpoint_busy: Duration::ZERO,
            cfg,
        }
    }

    // ------------------------------------------------------------------------------
    // Time and pumping
    // ------------------------------------------------------------------------------

    /// The current virtual time.
    pub fn now(&self) -> Now {
        self.clock.now()
    }

    /// Virtual time since the harness was created.
    pub fn elapsed(&self) -> Duration {
        self.clock.elapsed()
    }

    /// Moves the virtual clock forward by `d` in steps of at most 10 ms, firing every
    /// endpoint's timers and driving to quiescence after each step.
    pub fn advance(&mut self, d: Duration) {
        let target = self.clock.elapsed() + d;
        while self.clock.elapsed() < target {
            let step = (target - self.clock.elapsed()).min(TICK);
            self.clock.advance(step);
            let now = self.clock.now();
            let started = self.measuring.then(Instant::now);
            for ep in &mut self.endpoints {
                ep.handle_timeout(now);
            }
            if let Some(s) = started {
                self.endpoint_busy += s.elapsed();
            }
            self.drive();
        }
    }

    /// Moves datagrams and shard messages until nothing moves any more. Panics if the system
    /// never settles.
    pub fn drive(&mut self) {
        for _ in 0..MAX_ROUNDS {
            let mut moved = self.clients_send();
            for shard in 0..self.endpoints.len() {
                moved += self.step_endpoint(shard);
            }
            if moved == 0 {
                return;
            }
        }
        panic!("the in-memory network did not settle within {MAX_ROUNDS} rounds");
    }

    /// Every client's pending packets, routed to a shard's inbound queue.
    fn clients_send(&mut self) -> usize {
        let mut moved = 0;
        for c in &mut self.clients {
            if c.gone || c.conn.is_closed() {
                continue;
            }
            loop {
                match c.conn.send(&mut self.buf) {
                    Ok((n, _info)) => {
                        let data = self.buf[..n].to_vec();
                        let shard = match self.cfg.steering {
                            Steering::ByCid => {
                                quiche::Header::from_slice(&mut self.buf[..n], CID_LEN)
                                    .ok()
                                    .and_then(|h| shard_of_cid(&h.dcid, self.cfg.shards))
                                    .unwrap_or(c.home)
                            }
                            Steering::Off => c.home,
                        };
                        self.inbound[usize::from(shard.0)].push((data, c.addr));
                        self.wire.to_server += 1;
                        moved += 1;
                    }
                    Err(quiche::Error::Done) => break,
                    Err(e) => panic!("client send failed: {e}"),
                }
            }
        }
        moved
    }

    /// One turn of one shard: its queued datagrams and shard messages, then one flush; its
    /// output is delivered to clients, queued for the other shard, or kept as events.
    fn step_endpoint(&mut self, shard: usize) -> usize {
        let now = self.clock.now();
        let inbound = std::mem::take(&mut self.inbound[shard]);
        let peers = std::mem::take(&mut self.peers[shard]);
        let mut moved = inbound.len() + peers.len();
        let started = self.measuring.then(Instant::now);
        let ep = &mut self.endpoints[shard];
        for (mut data, from) in inbound {
            ep.handle_datagram(&mut data, from, SERVER_ADDR, now);
        }
        for msg in peers {
            ep.handle_peer(msg, now);
        }
        ep.flush(now);
        let mut out = ep.take_output();
        if let Some(s) = started {
            self.endpoint_busy += s.elapsed();
        }
        for i in 0..out.packets.len() {
            let Some((data, to)) = out.packets.get(i) else {
                continue;
            };
            moved += 1;
            self.wire.to_clients += 1;
            let Some(c) = self.by_addr.get(&to).map(|i| &mut self.clients[*i]) else {
                continue;
            };
            if c.gone {
                continue;
            }
            let len = data.len();
            self.buf[..len].copy_from_slice(data);
            let _ = c.conn.recv(
                &mut self.buf[..len],
                quiche::RecvInfo {
                    from: SERVER_ADDR,
                    to: c.addr,
                },
            );
            c.read_stream(&mut self.buf);
        }
        for (to, msg) in out.peers.drain(..) {
            moved += 1;
            self.wire.between_shards += 1;
            self.peers[usize::from(to.0)].push(msg);
        }
        let from = ShardId(shard as u16);
        self.events.extend(out.events.drain(..).map(|e| (from, e)));
        self.endpoints[shard].recycle(out);
        moved
    }

    // ------------------------------------------------------------------------------
    // Clients
    // ------------------------------------------------------------------------------

    /// Connects a client whose datagrams the kernel would hash to `home`, and completes its
    /// handshake.
    pub fn connect(&mut self, home: ShardId) -> ClientId {
        self.connect_with(home, ClientOptions::default())
    }

    /// Like [`Harness::connect`], with transport options.
    pub fn connect_with(&mut self, home: ShardId, opts: ClientOptions) -> ClientId {
        let id = self.start_connect_with(home, opts);
        let c = &self.clients[id.0];
        assert!(
            c.conn.is_established(),
            "handshake did not complete: {:?}",
            c.conn.peer_error()
        );
        id
    }

    /// Starts a client's handshake and drives, without requiring that it completes.
    pub fn start_connect(&mut self, home: ShardId) -> ClientId {
        self.start_connect_with(home, ClientOptions::default())
    }

    fn start_connect_with(&mut self, home: ShardId, opts: ClientOptions) -> ClientId {
        assert!(home.0 < self.cfg.shards, "no shard {home}");
        let n = self.clients.len();
        let addr = SocketAddr::new(
            std::net::IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n as u32)),
            50_000,
        );
        let mut scid = [0u8; 16];
        scid[..8].copy_from_slice(&(n as u64).to_be_bytes());
        scid[8..].copy_from_slice(b"mc-inmem");
        let scid = quiche::ConnectionId::from_ref(&scid);
        let conn = if opts.stream_window == ClientOptions::default().stream_window {
            quiche::connect(
                Some("localhost"),
                &scid,
                addr,
                SERVER_ADDR,
                &mut self.client_cfg,
            )
        } else {
            quiche::connect(
                Some("localhost"),
                &scid,
                addr,
                SERVER_ADDR,
                &mut client_config(opts),
            )
        }
        .expect("client connection");
        self.clients.push(Client {
            conn,
            addr,
            home,
            decoder: FrameDecoder::new(),
            received: Vec::new(),
            reading: true,
            gone: false,
        });
        self.by_addr.insert(addr, n);
        self.drive();
        ClientId(n)
    }

    fn client(&mut self, id: ClientId) -> &mut Client {
        &mut self.clients[id.0]
    }

    /// Writes `bytes` on the client's signaling stream without driving (unless flow control
    /// makes it wait for credit).
    pub fn queue_raw(&mut self, id: ClientId, bytes: &[u8]) {
        let mut off = 0;
        let mut stalls = 0;
        while off < bytes.len() {
            match self
                .client(id)
                .conn
                .stream_send(SIGNALING_STREAM, &bytes[off..], false)
            {
                Ok(n) => off += n,
                Err(quiche::Error::Done) => {}
                Err(e) => panic!("stream_send: {e}"),
            }
            if off < bytes.len() {
                stalls += 1;
                assert!(stalls < 1000, "the server never granted stream credit");
                self.drive();
            }
        }
    }

    /// Encodes `msg` onto the client's signaling stream without driving.
    pub fn queue(&mut self, id: ClientId, msg: &ClientMessage) {
        self.queue_raw(id, &codec::encode(msg));
    }

    /// Sends raw stream bytes and drives.
    pub fn send_raw(&mut self, id: ClientId, bytes: &[u8]) {
        self.queue_raw(id, bytes);
        self.drive();
    }

    /// Sends a message and drives.
    pub fn send(&mut self, id: ClientId, msg: &ClientMessage) {
        self.queue(id, msg);
        self.drive();
    }

    /// Finishes the client's signaling stream and drives.
    pub fn finish_stream(&mut self, id: ClientId) {
        let _ = self
            .client(id)
            .conn
            .stream_send(SIGNALING_STREAM, b"", true);
        self.drive();
    }

    /// A meeting token for `sub`, valid for an hour of virtual time.
    pub fn token(&self, meeting: &str, role: Role, sub: &str) -> String {
        let iat = self.clock.unix_secs();
        self.signer.mint(&MintClaims {
            sub: sub.into(),
            meeting_id: meeting.into(),
            role,
            iat,
            exp: iat + 3600,
            jti: None,
        })
    }

    /// The signer whose public key the shards trust.
    pub fn signer(&self) -> &TokenSigner {
        &self.signer
    }

    /// A join of `meeting` as `name` (also the token's `sub`).
    pub fn join_message(&self, meeting: &str, role: Role, name: &str) -> ClientMessage {
        join_message(meeting, &self.token(meeting, role, name), name)
    }

    /// A resume join of `meeting` for `participant_id` with `binding_token`, by `sub`.
    pub fn resume_message(
        &self,
        meeting: &str,
        sub: &str,
        participant_id: &str,
        binding_token: &str,
    ) -> ClientMessage {
        ClientMessage::Join {
            meeting_id: meeting.into(),
            token: self.token(meeting, Role::Participant, sub),
            display_name: sub.into(),
            request_id: Some("resume".into()),
            resume: Some(ResumeRequest {
                participant_id: participant_id.into(),
                binding_token: binding_token.into(),
            }),
            capabilities: Vec::new(),
        }
    }

    /// Joins `meeting` as `name` and returns the `join_response` (panics without one).
    pub fn join(&mut self, id: ClientId, meeting: &str, role: Role, name: &str) -> ServerMessage {
        let msg = self.join_message(meeting, role, name);
        self.send(id, &msg);
        self.expect(id, "join_response", |m| {
            matches!(m, ServerMessage::JoinResponse { .. })
        })
    }

    /// Removes and returns the first message `pred` matches among what the client received;
    /// panics (naming `what`) if there is none. Drives first.
    pub fn expect(
        &mut self,
        id: ClientId,
        what: &str,
        pred: impl Fn(&ServerMessage) -> bool,
    ) -> ServerMessage {
        self.drive();
        let closed = self.closed(id);
        let c = self.client(id);
        match take_first(&mut c.received, pred) {
            Some(m) => m,
            None => panic!(
                "client {}: expected {what}; received {:?}; closed {closed:?}",
                id.0, c.received
            ),
        }
    }

    /// What the client received and has not taken yet.
    pub fn received(&self, id: ClientId) -> &[ServerMessage] {
        &self.clients[id.0].received
    }

    /// Takes what the client received.
    pub fn take_received(&mut self, id: ClientId) -> Vec<ServerMessage> {
        std::mem::take(&mut self.client(id).received)
    }

    /// How the server closed the client's connection, once it did.
    pub fn closed(&self, id: ClientId) -> Option<Closed> {
        closed(&self.clients[id.0].conn)
    }

    /// Stops (`false`) or resumes reading the signaling stream; a client that does not read
    /// grants the server no more stream credit.
    pub fn set_reading(&mut self, id: ClientId, reading: bool) {
        let mut buf = std::mem::take(&mut self.buf);
        let c = self.client(id);
        c.reading = reading;
        c.read_stream(&mut buf);
        self.buf = buf;
        self.drive();
    }

    /// Closes the client's connection cleanly (application close 0) and drives.
    pub fn close(&mut self, id: ClientId) {
        let _ = self.client(id).conn.close(true, 0, b"bye");
        self.drive();
    }

    /// The client disappears without a word, like a phone losing its network.
    pub fn vanish(&mut self, id: ClientId) {
        self.client(id).gone = true;
    }

    /// The client's QUIC connection (for its statistics).
    pub fn client_conn(&self, id: ClientId) -> &quiche::Connection {
        &self.clients[id.0].conn
    }

    /// Clients created so far.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    // ------------------------------------------------------------------------------
    // Shards
    // ------------------------------------------------------------------------------

    /// The shard that owns `meeting`.
    pub fn shard_for(&self, meeting: &str) -> ShardId {
        self.router.shard_for_str(meeting)
    }

    /// A meeting id owned by `shard`, made of `prefix` and a number.
    pub fn meeting_on(&self, shard: ShardId, prefix: &str) -> String {
        (0..)
            .map(|i| format!("{prefix}-{i}"))
            .find(|m| self.shard_for(m) == shard)
            .unwrap_or_default()
    }

    /// The endpoint of `shard`.
    pub fn endpoint(&self, shard: ShardId) -> &Endpoint {
        &self.endpoints[usize::from(shard.0)]
    }

    /// Runs a command on `shard`'s core at the current virtual time (what the control thread
    /// asks a shard to do), carries out its actions and drives.
    pub fn command<R>(&mut self, shard: ShardId, f: impl FnOnce(&mut Shard, Now) -> R) -> R {
        let now = self.clock.now();
        let ep = &mut self.endpoints[usize::from(shard.0)];
        let r = f(ep.core_mut(), now);
        ep.drive(now);
        self.drive();
        r
    }

    /// Shuts `shard`'s endpoint down and drives.
    pub fn shutdown(&mut self, shard: ShardId) {
        self.endpoints[usize::from(shard.0)].shutdown();
        self.drive();
    }

    /// Events the shards reported for the control thread, in the order they were produced.
    pub fn events(&self) -> &[(ShardId, ShardEvent)] {
        &self.events
    }

    /// Datagrams and shard messages moved so far.
    pub fn wire(&self) -> WireStats {
        self.wire
    }

    // ------------------------------------------------------------------------------
    // Measurement (benches)
    // ------------------------------------------------------------------------------

    /// Starts or stops timing the endpoints' own work (datagrams, shard messages, flushes,
    /// timers) with the real clock.
    pub fn set_measuring(&mut self, on: bool) {
        self.measuring = on;
    }

    /// Real time the endpoints spent working while measuring, and resets it.
    pub fn take_endpoint_busy(&mut self) -> Duration {
        std::mem::take(&mut self.endpoint_busy)
    }
}

fn client_config(opts: ClientOptions) -> quiche::Config {
    ClientSettings {
        // No idle timeout: quiche's idle timer runs on the real clock.
        idle_timeout_ms: 0,
        max_data: 64 << 20,
        ..ClientSettings::signaling().with_stream_window(opts.stream_window)
    }
    .quiche_config()
}

/// One quiche server configuration per shard, loaded from development TLS material written to
/// a temporary directory that is removed again once loaded.
fn server_quiche_configs(cfg: &HarnessConfig) -> Vec<(EndpointConfig, quiche::Config)> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mc-inmem-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let material = mc::dev::ensure_dev_material(&dir, SystemTime::now(), &[])
        .expect("development TLS material");
    let out = (0..cfg.shards)
        .map(|i| {
            let mut ecfg = cfg.endpoint.clone();
            ecfg.shard = ShardId(i);
            ecfg.shard_count = cfg.shards;
            ecfg.tls_cert = material.cert_pem_path.to_string_lossy().into_owned();
            ecfg.tls_key = material.key_pem_path.to_string_lossy().into_owned();
            let qcfg = quiche_config(&ecfg).expect("server quiche config");
            (ecfg, qcfg)
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    out
}
