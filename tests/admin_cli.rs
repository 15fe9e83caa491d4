//! `mc admin` as scripts use it: the real binary against a controller on loopback (fake
//! shards), `--json` output parsed back.

#[path = "control_support.rs"]
mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

/// Runs `mc admin --url <rig> --token-file <file> <args>`; returns (exit code, stdout, stderr).
fn mc_admin(rig: &Rig, token_file: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mc"))
        .arg("admin")
        .arg("--url")
        .arg(rig.url())
        .arg("--token-file")
        .arg(token_file)
        .args(args)
        .env_remove("MC_ADMIN_URL")
        .env_remove("MC_ADMIN_TOKEN_FILE")
        .output()
        .expect("run mc admin");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn token_file(tag: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("mc-admin-cli-{tag}-{}", std::process::id()));
    std::fs::write(&p, format!("{ADMIN}\n")).unwrap();
    p
}

#[test]
fn list_and_shards_print_json_with_json_flag() {
    let rig = rig(RigOpts::default());
    let a = rig.shards.add_meeting("standup", 3, 2);
    let b = rig.shards.add_meeting("retro-42", 1, 1);
    let token = token_file("json");

    // `--json` after the verb and before it.
    for args in [&["list", "--json"][..], &["--json", "list"]] {
        let (code, out, err) = mc_admin(&rig, &token, args);
        assert_eq!(code, 0, "{args:?}: {err}");
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"));
        let meetings = v["meetings"].as_array().expect("meetings array");
        assert_eq!(meetings.len(), 2, "{v:#}");
        let standup = meetings
            .iter()
            .find(|m| m["meeting_id"] == "standup")
            .expect("standup listed");
        assert_eq!(standup["shard"], a);
        assert_eq!(standup["participants"], 3);
        assert_eq!(standup["connected"], 2);
        let retro = meetings
            .iter()
            .find(|m| m["meeting_id"] == "retro-42")
            .expect("retro-42 listed");
        assert_eq!(retro["shard"], b);
        assert_eq!(retro["participants"], 1);
    }

    let (code, out, err) = mc_admin(&rig, &token, &["shards", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    let shards = v["shards"].as_array().expect("shards array");
    assert_eq!(shards.len(), 2, "{v:#}");
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(s["shard"], i as u64);
        assert_eq!(s["up"], true);
    }
    assert!(shards[usize::from(a)]["participants"].as_u64().unwrap() >= 3);
    assert!(v["draining"].is_boolean(), "{v:#}");

    // Without --json: the tables.
    let (code, out, _) = mc_admin(&rig, &token, &["list"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("MEETING"), "{out}");
    assert!(out.contains("2 meeting(s)"), "{out}");
    let (code, out, _) = mc_admin(&rig, &token, &["shards"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("SHARD"), "{out}");

    // Errors stay on stderr with their exit codes, --json or not.
    let bad = token_file("bad");
    std::fs::write(&bad, "wrong-token\n").unwrap();
    let (code, out, err) = mc_admin(&rig, &bad, &["list", "--json"]);
    assert_eq!(code, 77, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("unauthorized"), "{err}");
    let _ = std::fs::remove_file(&token);
    let _ = std::fs::remove_file(&bad);
}
