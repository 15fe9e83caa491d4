//! `mc-fake-gc`: a fake Global Controller for manual runs and load tests.
//!
//! Serves the GC side of control plane v1 (register, heartbeat, meeting ended) and the
//! migration extension (`POST /api/v1/meetings/{id}/migrate`: a target among the other
//! registered controllers that are not draining; see `docs/control-plane.md`), and prints every
//! request it receives as one JSON line on stdout.
//!
//! ```text
//! mc-fake-gc --listen 127.0.0.1:9090 --fast-ms 2000 --comprehensive-ms 6000
//! mc serve --gc-url http://127.0.0.1:9090 ...
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mc_test_support::fake_gc::{FakeGc, FakeGcConfig};

/// Fake Global Controller: accepts registrations and heartbeats and prints what it receives.
#[derive(Debug, Parser)]
#[command(name = "mc-fake-gc", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Fast heartbeat interval handed to controllers (ms).
    #[arg(long, default_value_t = 10_000)]
    fast_ms: u64,
    /// Comprehensive heartbeat interval handed to controllers (ms).
    #[arg(long, default_value_t = 30_000)]
    comprehensive_ms: u64,
    /// File with the bearer token controllers must present (default: accept any).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let token = match &args.token_file {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Some(t.trim().to_owned()),
            Err(e) => {
                eprintln!("mc-fake-gc: cannot read {}: {e}", p.display());
                return ExitCode::from(64);
            }
        },
        None => None,
    };
    let cfg = FakeGcConfig {
        fast_heartbeat_interval_ms: args.fast_ms,
        comprehensive_heartbeat_interval_ms: args.comprehensive_ms,
        token,
    };
    let gc = match FakeGc::start(args.listen, cfg) {
        Ok(gc) => gc,
        Err(e) => {
            eprintln!("mc-fake-gc: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    eprintln!("mc-fake-gc: listening on {}", gc.url());
    let mut seen = 0;
    loop {
        for r in gc.requests_since(seen) {
            seen += 1;
            let line = serde_json::json!({
                "unix_ms": r.unix_ms,
                "method": r.method,
                "path": r.path,
                "status": r.status,
                "traceparent": r.traceparent,
                "body": r.body,
            });
            println!("{line}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
