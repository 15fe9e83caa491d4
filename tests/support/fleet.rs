//! A fleet for migration tests: a fake GC and `mc` processes sharing one signing key,
//! certificate and binding secret (copied from one development directory), registered with
//! the GC, with admin and GC tokens.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mc_test_support::fake_gc::{FakeGc, FakeGcConfig};
use serde_json::Value;

use super::{http_request, unique_dir, Server};

const T: Duration = Duration::from_secs(20);

pub const ADMIN: &str = "admin-secret";
pub const INBOUND: &str = "gc-in";

pub struct Fleet {
    pub gc: FakeGc,
    /// Development material every controller of the fleet shares (signing key, binding secret).
    master: PathBuf,
    pub secrets: PathBuf,
    pub servers: BTreeMap<String, Server>,
    drain_timeout: &'static str,
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

impl Fleet {
    pub fn new(drain_timeout: &'static str) -> Fleet {
        let gc = FakeGc::start(
            "127.0.0.1:0".parse().unwrap(),
            FakeGcConfig {
                fast_heartbeat_interval_ms: 1000,
                comprehensive_heartbeat_interval_ms: 1000,
                token: Some("gc-out".into()),
            },
        )
        .unwrap();
        let master = unique_dir("fleet-master");
        mc::dev::ensure_dev_material(&master, SystemTime::now(), &[]).unwrap();
        let secrets = unique_dir("fleet-secrets");
        std::fs::write(secrets.join("gc-token"), "gc-out").unwrap();
        std::fs::write(secrets.join("gc-inbound"), INBOUND).unwrap();
        std::fs::write(secrets.join("admin"), ADMIN).unwrap();
        Fleet {
            gc,
            master,
            secrets,
            servers: BTreeMap::new(),
            drain_timeout,
        }
    }

    /// Starts (or restarts) controller `id`; `shared` = with the fleet's binding secret.
    pub fn start(&mut self, id: &str, shared: bool) {
        let dir = unique_dir(id);
        if shared {
            copy_dir(&self.master, &dir);
        }
        let regs = self.registrations(id);
        let s = |n: &str| self.secrets.join(n).display().to_string();
        let server = Server::start_in(
            dir,
            &[
                "--shards",
                "2",
                "--gc-url",
                &self.gc.url(),
                "--gc-token-file",
                &s("gc-token"),
                "--gc-inbound-token-file",
                &s("gc-inbound"),
                "--admin-token-file",
                &s("admin"),
                "--mc-id",
                id,
                "--drain-timeout",
                self.drain_timeout,
            ],
        );
        self.servers.insert(id.to_owned(), server);
        assert!(
            self.gc.wait_until(T, |r| r
                .iter()
                .filter(|x| x.is_register() && x.status == 200 && x.body["id"] == id)
                .count()
                > regs),
            "{id} did not register"
        );
    }

    pub fn registrations(&self, id: &str) -> usize {
        self.gc
            .registrations()
            .iter()
            .filter(|x| x.status == 200 && x.body["id"] == id)
            .count()
    }

    pub fn server(&self, id: &str) -> &Server {
        &self.servers[id]
    }

    pub fn assign(&self, id: &str, meeting: &str) {
        let url = format!("http://{}", self.server(id).control);
        let (status, body) = self.gc.assign(&url, INBOUND, meeting, &[]);
        assert_eq!(status, 200, "{body}");
    }

    pub fn admin(&self, id: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = http_request(self.server(id).control, method, path, Some(ADMIN), body);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `participants` of `GET /admin/meetings/{m}` without connection state.
    pub fn roster(&self, id: &str, meeting: &str) -> Vec<Value> {
        let (status, body) = self.admin(id, "GET", &format!("/admin/meetings/{meeting}"), None);
        assert_eq!(status, 200, "{meeting} on {id}: {body}");
        body["participants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                serde_json::json!({
                    "participant_id": p["participant_id"], "display_name": p["display_name"],
                    "role": p["role"], "audio_muted": p["audio_muted"],
                    "video_muted": p["video_muted"], "joined_at_ms": p["joined_at_ms"],
                    "user": p["user"],
                })
            })
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.master);
        let _ = std::fs::remove_dir_all(&self.secrets);
    }
}
