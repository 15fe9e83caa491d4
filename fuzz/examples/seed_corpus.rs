//! Writes the seed corpus of every fuzz target: real frames, real tokens, real QUIC packets of
//! an in-memory handshake with server CIDs in our layout, and the client side of real
//! WebTransport sessions.
//!
//! `cargo run --example seed_corpus [-- DIR]` (default `corpus`, relative to this crate).
//! Deterministic except for the QUIC packets (TLS randomness) and the dev certificate.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use mc::core::codec;
use mc::core::ids::ShardId;
use mc::core::protocol::{ClientMessage, ResumeRequest, Role};
use mc::core::router::{encode_cid, CID_LEN};
use mc::core::token::{MintClaims, TokenSigner};
use mc::webtransport::{ClientConfig, ClientEvent, H3Client, H3Config, H3Event, H3Server};

/// Key and kid of `fuzz_targets/token_verify.rs`.
const TOKEN_SEED: [u8; 32] = [7; 32];
const TOKEN_KID: &str = "fuzz-1";
const NOW: u64 = 1_800_000_000;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    fs::create_dir_all(&d).expect("corpus dir");
    fs::write(d.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn token(signer: &TokenSigner, meeting: &str, role: Role, jti: Option<&str>) -> String {
    signer.mint(&MintClaims {
        sub: "user-1".into(),
        meeting_id: meeting.into(),
        role,
        iat: NOW - 10,
        exp: NOW + 3600,
        jti: jti.map(str::to_owned),
    })
}

fn frames(dir: &Path, signer: &TokenSigner) {
    let join = ClientMessage::Join {
        meeting_id: "m-1".into(),
        token: token(signer, "m-1", Role::Host, None),
        display_name: "Ada".into(),
        request_id: Some("r-1".into()),
        resume: None,
        capabilities: Vec::new(),
    };
    let resume = ClientMessage::Join {
        meeting_id: "m-1".into(),
        token: token(signer, "m-1", Role::Participant, None),
        display_name: "Ada".into(),
        request_id: None,
        resume: Some(ResumeRequest {
            participant_id: "p0-1".into(),
            binding_token: "AQAAAAAAAAAqAAABi8_l3TAH9JZbV9XbC_G5Y1j6Irp0ZQu_vCk-gQaiN_ZyGfc04Q"
                .into(),
        }),
        capabilities: Vec::new(),
    };
    let msgs = [
        ("join", join),
        ("resume", resume),
        (
            "message",
            ClientMessage::Message {
                payload: serde_json::json!({ "sdp": "v=0", "n": [1, 2.5, null, true] }),
                to: Some(vec!["p1-2".into()]),
            },
        ),
        ("ping", ClientMessage::Ping { id: 42 }),
        (
            "mute",
            ClientMessage::Mute {
                audio: true,
                video: false,
            },
        ),
        (
            "host_mute",
            ClientMessage::HostMute {
                participant_id: "p0-2".into(),
                audio: true,
                video: true,
            },
        ),
        (
            "kick",
            ClientMessage::Kick {
                participant_id: "p0-3".into(),
            },
        ),
        ("leave", ClientMessage::Leave {}),
        ("end_meeting", ClientMessage::EndMeeting {}),
    ];
    let mut all = Vec::new();
    for (name, m) in &msgs {
        let f = codec::encode(m);
        // n = 0: the stream is pushed whole.
        let mut seed = vec![0u8];
        seed.extend_from_slice(&f);
        write(dir, "frame_decoder", name, &seed);
        all.extend_from_slice(&f);
    }
    // Everything in one stream, pushed in chunks of 1, 7 and 200 bytes.
    let mut seed = vec![3u8, 1, 7, 200];
    seed.extend_from_slice(&all);
    write(dir, "frame_decoder", "all-chunked", &seed);
    // Framing errors and a frame of the largest size.
    write(dir, "frame_decoder", "zero-length", &[0, 0, 0, 0, 0]);
    write(dir, "frame_decoder", "too-large", &[0, 0, 1, 0, 1]);
    let mut max = vec![0u8, 0, 1, 0, 0];
    max.extend(std::iter::repeat_n(b' ', codec::MAX_FRAME_LEN));
    write(dir, "frame_decoder", "max-len", &max);
    let mut unknown = vec![0u8];
    unknown.extend_from_slice(&frame(br#"{"type":"dance","x":{"y":[1]}}"#));
    write(dir, "frame_decoder", "unknown-type", &unknown);
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn tokens(dir: &Path, signer: &TokenSigner) {
    let with = |now: u64, sel: u8, t: &str| {
        let mut v = now.to_be_bytes().to_vec();
        v.push(sel);
        v.extend_from_slice(t.as_bytes());
        v
    };
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let claims = format!(
        r#"{{"sub":"user-1","token_type":"meeting","meeting_id":"m-1","role":"host","iat":{},"exp":{}}}"#,
        NOW - 10,
        NOW + 3600
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "valid-host",
            with(NOW, 0, &token(signer, "m-1", Role::Host, None)),
        ),
        (
            "valid-jti",
            with(
                NOW,
                0,
                &token(signer, "m-1", Role::Participant, Some("j-1")),
            ),
        ),
        (
            "expired",
            with(NOW + 7200, 0, &token(signer, "m-1", Role::Host, None)),
        ),
        (
            "wrong-meeting",
            with(NOW, 1, &token(signer, "m-1", Role::Host, None)),
        ),
        (
            "nbf",
            with(
                NOW,
                0,
                &signer.sign_raw(
                    &format!(r#"{{"alg":"EdDSA","kid":"{TOKEN_KID}","typ":"JWT"}}"#),
                    &claims.replace("}", r#","nbf":1}"#),
                ),
            ),
        ),
        (
            "alg-none",
            with(
                NOW,
                0,
                &format!(
                    "{}.{}.",
                    b64(r#"{"alg":"none","kid":"fuzz-1"}"#),
                    b64(&claims)
                ),
            ),
        ),
        (
            "unknown-kid",
            with(
                NOW,
                0,
                &signer.sign_raw(r#"{"alg":"EdDSA","kid":"nope"}"#, &claims),
            ),
        ),
        (
            "crit",
            with(
                NOW,
                0,
                &signer.sign_raw(r#"{"alg":"EdDSA","kid":"fuzz-1","crit":["b64"]}"#, &claims),
            ),
        ),
    ];
    for (name, seed) in cases {
        write(dir, "token_verify", name, &seed);
    }
}

/// Packets of an in-memory handshake and a short exchange, both directions, each prefixed with
/// the shard-count selector byte of the `cid_router` target (1 = two shards).
fn quic_packets(dir: &Path) {
    let dev = std::env::temp_dir().join(format!("mc-fuzz-seed-{}", std::process::id()));
    let material =
        mc::dev::ensure_dev_material(&dev, SystemTime::now(), &[]).expect("dev certificate");
    let mut scfg = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
    scfg.load_cert_chain_from_pem_file(material.cert_pem_path.to_str().unwrap())
        .unwrap();
    scfg.load_priv_key_from_pem_file(material.key_pem_path.to_str().unwrap())
        .unwrap();
    let mut ccfg = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
    ccfg.verify_peer(false);
    for c in [&mut scfg, &mut ccfg] {
        c.set_application_protos(&[b"mc/1"]).unwrap();
        c.set_max_idle_timeout(5_000);
        c.set_max_recv_udp_payload_size(1350);
        c.set_max_send_udp_payload_size(1350);
        c.set_initial_max_data(1 << 20);
        c.set_initial_max_stream_data_bidi_local(1 << 20);
        c.set_initial_max_stream_data_bidi_remote(1 << 20);
        c.set_initial_max_streams_bidi(4);
        c.set_active_connection_id_limit(4);
    }
    let caddr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let saddr: SocketAddr = "127.0.0.1:4433".parse().unwrap();
    let client_scid = [0x11u8; 16];
    let server_scid = encode_cid(0, ShardId(1), &[0x5a; CID_LEN - 5]);
    let mut client = quiche::connect(
        Some("localhost"),
        &quiche::ConnectionId::from_ref(&client_scid),
        caddr,
        saddr,
        &mut ccfg,
    )
    .unwrap();
    let mut server: Option<quiche::Connection> = None;
    let mut buf = [0u8; 1500];
    let mut n_pkt = 0;
    let mut sent_join = false;
    for _round in 0..20 {
        while let Ok((len, _)) = client.send(&mut buf) {
            n_pkt += 1;
            let mut seed = vec![1u8];
            seed.extend_from_slice(&buf[..len]);
            write(dir, "cid_router", &format!("c2s-{n_pkt:02}"), &seed);
            let s = server.get_or_insert_with(|| {
                quiche::accept(
                    &quiche::ConnectionId::from_ref(&server_scid),
                    None,
                    saddr,
                    caddr,
                    &mut scfg,
                )
                .unwrap()
            });
            let _ = s.recv(
                &mut buf[..len],
                quiche::RecvInfo {
                    from: caddr,
                    to: saddr,
                },
            );
        }
        if let Some(s) = server.as_mut() {
            while let Ok((len, _)) = s.send(&mut buf) {
                n_pkt += 1;
                let mut seed = vec![1u8];
                seed.extend_from_slice(&buf[..len]);
                write(dir, "cid_router", &format!("s2c-{n_pkt:02}"), &seed);
                let _ = client.recv(
                    &mut buf[..len],
                    quiche::RecvInfo {
                        from: saddr,
                        to: caddr,
                    },
                );
            }
        }
        if client.is_established() && !sent_join {
            sent_join = true;
            let _ = client.stream_send(0, &codec::encode(&ClientMessage::Ping { id: 1 }), false);
        }
    }
    let _ = fs::remove_dir_all(&dev);
    // Forged packets: a short header naming shard 1, one naming shard 9, a Version
    // Negotiation trigger.
    let mut short = vec![1u8, 0x40];
    short.extend_from_slice(&server_scid);
    short.extend_from_slice(&[0; 24]);
    write(dir, "cid_router", "short-shard1", &short);
    let mut far = vec![1u8, 0x40];
    far.extend_from_slice(&encode_cid(0, ShardId(9), &[1; CID_LEN - 5]));
    far.extend_from_slice(&[0; 24]);
    write(dir, "cid_router", "short-shard9", &far);
    let mut vn = vec![1u8, 0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 8];
    vn.extend_from_slice(&[3; 8]);
    vn.push(0);
    vn.resize(1201, 0);
    write(dir, "cid_router", "unknown-version", &vn);
}

/// The client side of a WebTransport session, as `h3_server` records.
fn h3_sessions(dir: &Path, signer: &TokenSigner) {
    fn record(out: &mut Vec<u8>, op: u8, stream: u64, data: &[u8]) {
        for chunk in data
            .chunks(u16::MAX as usize)
            .chain(data.is_empty().then_some(&[][..]))
        {
            out.push(op);
            out.push(stream as u8);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
    }
    for (name, path, origin) in [
        ("session", "/meetings/m-1", Some("https://app.example")),
        ("session-no-origin", "/meetings/standup?x=1", None),
        ("bad-path", "/nope", None),
    ] {
        let mut client = H3Client::new(ClientConfig::default());
        let mut server = H3Server::new(H3Config::default());
        let mut seed = Vec::new();
        let session = client.connect("localhost:4433", path, origin);
        let mut opened = false;
        for _ in 0..8 {
            while let Some(tx) = client.poll_transmit() {
                record(&mut seed, u8::from(tx.fin), tx.stream_id, &tx.data);
                let _ = server.on_stream_data(tx.stream_id, &tx.data, tx.fin);
            }
            while let Some(ev) = server.poll_event() {
                if let H3Event::SessionRequested { session_id, .. } = ev {
                    server.accept_session(session_id);
                    record(&mut seed, 3, 0, &[]);
                }
            }
            while let Some(tx) = server.poll_transmit() {
                let _ = client.on_stream_data(tx.stream_id, &tx.data, tx.fin);
            }
            while let Some(ev) = client.poll_event() {
                if let ClientEvent::SessionEstablished { session_id } = ev {
                    if session_id == session && !opened {
                        opened = true;
                        if let Some(s) = client.open_bidi_stream(session) {
                            let join = codec::encode(&ClientMessage::Join {
                                meeting_id: "m-1".into(),
                                token: token(signer, "m-1", Role::Host, None),
                                display_name: "Ada".into(),
                                request_id: None,
                                resume: None,
                                capabilities: Vec::new(),
                            });
                            client.send_stream_data(s, &join, false);
                        }
                    }
                }
            }
        }
        if opened {
            client.close_session(session, 7, "done");
            while let Some(tx) = client.poll_transmit() {
                record(&mut seed, u8::from(tx.fin), tx.stream_id, &tx.data);
            }
        }
        write(dir, "h3_server", name, &seed);
    }
}

/// Byte strings for the structured `shard_inputs` target (any bytes decode to some operation
/// sequence; these are just varied starting points).
fn shard_inputs(dir: &Path) {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for (i, len) in [16usize, 64, 256, 1024, 4096].into_iter().enumerate() {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        write(dir, "shard_inputs", &format!("random-{i}"), &bytes);
    }
}

fn main() {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let signer = TokenSigner::from_seed(&TOKEN_SEED, TOKEN_KID);
    frames(&dir, &signer);
    tokens(&dir, &signer);
    quic_packets(&dir);
    h3_sessions(&dir, &signer);
    shard_inputs(&dir);
    println!("seed corpus written to {}", dir.display());
}
