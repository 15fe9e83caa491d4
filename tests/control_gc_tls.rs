//! The GC link over https with a private CA (`--gc-ca-file`): a TLS terminator with a
//! certificate signed by a throwaway CA sits in front of the fake GC. With the CA the controller
//! registers; with the public web roots it cannot, and says so in its metrics.

#[path = "control_support.rs"]
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use mc::control::parse_ca_certs;
use mc_test_support::fake_gc::{FakeGc, FakeGcConfig};
use support::*;

/// A CA and a `localhost` server certificate it signed (PEM).
struct Pki {
    ca_pem: String,
    server_cert_der: Vec<u8>,
    server_key_der: Vec<u8>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mc test CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server_cert_der: cert.der().to_vec(),
        server_key_der: key.serialize_der(),
    }
}

/// Accepts TLS on loopback and relays the plaintext to `backend`, one thread per connection.
fn tls_terminator(pki: &Pki, backend: SocketAddr) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.server_cert_der.clone().into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(pki.server_key_der.clone().into()),
        )
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let config = config.clone();
            std::thread::spawn(move || relay(conn, config, backend));
        }
    });
    addr
}

fn relay(conn: TcpStream, config: Arc<rustls::ServerConfig>, backend: SocketAddr) {
    let tick = Some(Duration::from_millis(5));
    let Ok(server) = rustls::ServerConnection::new(config) else {
        return;
    };
    let Ok(mut plain) = TcpStream::connect(backend) else {
        return;
    };
    let _ = conn.set_read_timeout(tick);
    let _ = plain.set_read_timeout(tick);
    let mut tls = rustls::StreamOwned::new(server, conn);
    let mut buf = vec![0u8; 16 * 1024];
    let idle = |e: &std::io::Error| matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if plain.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if idle(&e) => {}
            Err(_) => return,
        }
        match plain.read(&mut buf) {
            Ok(0) => {
                tls.conn.send_close_notify();
                let _ = tls.flush();
                return;
            }
            Ok(n) => {
                if tls.write_all(&buf[..n]).and_then(|()| tls.flush()).is_err() {
                    return;
                }
            }
            Err(e) if idle(&e) => {}
            Err(_) => return,
        }
    }
}

/// A controller whose GC is `gc_url`, trusting `ca` (empty: the public web roots).
fn controller(gc_url: String, ca: Vec<ureq::tls::Certificate<'static>>) -> Rig {
    let o = RigOpts::default();
    let mut cfg = config(&o, Some(gc_url));
    cfg.gc_ca_certs = ca;
    start_rig(&o, cfg, None)
}

fn fake_gc() -> FakeGc {
    FakeGc::start(
        "127.0.0.1:0".parse().unwrap(),
        FakeGcConfig {
            fast_heartbeat_interval_ms: 50,
            comprehensive_heartbeat_interval_ms: 100,
            token: Some(GC_TOKEN.into()),
        },
    )
    .unwrap()
}

#[test]
fn https_gc_with_a_private_ca_needs_the_ca_file() {
    let pki = pki();
    let gc = fake_gc();
    let tls = tls_terminator(&pki, gc.addr());
    let url = format!("https://localhost:{}", tls.port());

    // Trusting only the public web roots: the handshake fails, nothing reaches the GC.
    let untrusting = controller(url.clone(), Vec::new());
    assert!(
        wait_for(|| untrusting
            .metric("mc_gc_registrations_total", &[("status", "error")])
            .is_some_and(|n| n >= 1.0)),
        "a failed registration is counted"
    );
    assert_eq!(untrusting.metric("mc_gc_registered", &[]), Some(0.0));
    assert!(gc.registrations().is_empty(), "no request got through TLS");
    drop(untrusting);

    // With the CA: registered over TLS, and heartbeats flow.
    let ca = parse_ca_certs(pki.ca_pem.as_bytes()).unwrap();
    assert_eq!(ca.len(), 1);
    let trusting = controller(url, ca);
    assert!(
        wait_for(|| registered(&trusting)),
        "registered through the TLS terminator"
    );
    assert!(gc.registrations().iter().any(|r| r
        .json::<serde_json::Value>()
        .is_some_and(|b| b["id"] == "mc-test-1")));
    assert!(gc.wait_until(PATIENCE, |reqs| reqs.iter().any(|r| r.is_heartbeat())));
}

#[test]
fn ca_files_that_hold_no_certificate_are_refused() {
    let pki = pki();
    let key_pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
    for (what, pem, needle) in [
        ("empty", String::new(), "no PEM CERTIFICATE"),
        ("text", "hello\n".to_owned(), "no PEM CERTIFICATE"),
        ("private key", key_pem.clone(), "private key"),
        (
            "certificate and key",
            format!("{}{key_pem}", pki.ca_pem),
            "private key",
        ),
        (
            "truncated",
            pki.ca_pem[..pki.ca_pem.len() - 40].to_owned(),
            "not a PEM file",
        ),
    ] {
        let e = parse_ca_certs(pem.as_bytes()).unwrap_err();
        assert!(e.contains(needle), "{what}: {e}");
    }
    let two = format!("{}{}", pki.ca_pem, pki.ca_pem);
    assert_eq!(parse_ca_certs(two.as_bytes()).unwrap().len(), 2);
}
