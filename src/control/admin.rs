//! `mc admin <verb>`: a small client of the admin API of a running controller.

use std::time::Duration;

use serde_json::Value;

use crate::core::ids::MeetingId;

/// What `mc admin` should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminVerb {
    /// `GET /admin/meetings`, printed as a table.
    List,
    /// `GET /admin/meetings/{id}`, printed as JSON.
    Show {
        /// Meeting id.
        id: String,
    },
    /// `DELETE /admin/meetings/{id}`.
    End {
        /// Meeting id.
        id: String,
    },
    /// `POST /admin/drain`.
    Drain,
    /// `POST /admin/undrain`.
    Undrain,
    /// `POST /admin/reregister`.
    Reregister,
    /// `GET /admin/shards`, printed as a table.
    Shards,
    /// `POST /admin/meetings/{id}/migrate` with `{"to": ...}`.
    Migrate {
        /// Meeting id.
        id: String,
        /// Target controller id; `None` lets the GC choose.
        to: Option<String>,
    },
}

/// How `mc admin` prints what the controller answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminOutput {
    /// A table for `list` and `shards`, pretty JSON for the other verbs.
    #[default]
    Table,
    /// The controller's JSON answer, pretty-printed, for every verb (`--json`).
    Json,
}

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The meeting id is not valid (nothing was sent).
    #[error("invalid meeting id: {0}")]
    InvalidId(String),
    /// The controller has no admin token configured.
    #[error("the admin API is disabled on this controller (no admin token configured)")]
    Disabled,
    /// The token was refused.
    #[error("unauthorized: the admin token was refused")]
    Unauthorized,
    /// The meeting does not exist.
    #[error("no such meeting")]
    MeetingNotFound,
    /// Any other error answer.
    #[error("controller answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The `message` (or body) of the answer.
        message: String,
    },
    /// The controller could not be reached.
    #[error("cannot reach the controller: {0}")]
    Transport(String),
    /// The answer is not what the admin API sends.
    #[error("unexpected answer: {0}")]
    InvalidResponse(String),
}

/// Runs one admin verb against the controller at `url` (e.g. `http://127.0.0.1:8080`) and
/// returns what to print: a table for `list` and `shards`, pretty JSON otherwise.
pub fn admin_command(
    url: &str,
    token: &str,
    verb: AdminVerb,
    timeout: Duration,
) -> Result<String, AdminError> {
    admin_command_as(url, token, verb, timeout, AdminOutput::Table)
}

/// [`admin_command`] with a choice of output: [`AdminOutput::Json`] returns the controller's
/// JSON answer for every verb (what scripts parse).
pub fn admin_command_as(
    url: &str,
    token: &str,
    verb: AdminVerb,
    timeout: Duration,
    output: AdminOutput,
) -> Result<String, AdminError> {
    let base = url.trim_end_matches('/');
    let meeting_path = |id: &str| -> Result<String, AdminError> {
        MeetingId::parse(id).map_err(|e| AdminError::InvalidId(e.to_string()))?;
        Ok(format!("{base}/admin/meetings/{id}"))
    };
    let (method, target) = match &verb {
        AdminVerb::List => ("GET", format!("{base}/admin/meetings")),
        AdminVerb::Show { id } => ("GET", meeting_path(id)?),
        AdminVerb::End { id } => ("DELETE", meeting_path(id)?),
        AdminVerb::Drain => ("POST", format!("{base}/admin/drain")),
        AdminVerb::Undrain => ("POST", format!("{base}/admin/undrain")),
        AdminVerb::Reregister => ("POST", format!("{base}/admin/reregister")),
        AdminVerb::Shards => ("GET", format!("{base}/admin/shards")),
        AdminVerb::Migrate { id, .. } => ("POST", format!("{}/migrate", meeting_path(id)?)),
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let auth = format!("Bearer {token}");
    let result = match method {
        "GET" => agent.get(&target).header("Authorization", &auth).call(),
        "DELETE" => agent.delete(&target).header("Authorization", &auth).call(),
        _ => match &verb {
            AdminVerb::Migrate { to, .. } => agent
                .post(&target)
                .header("Authorization", &auth)
                .send_json(serde_json::json!({ "to": to })),
            _ => agent
                .post(&target)
                .header("Authorization", &auth)
                .send_empty(),
        },
    };
    let mut resp = result.map_err(|e| AdminError::Transport(e.to_string()))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .map_err(|e| AdminError::Transport(e.to_string()))?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    if !(200..300).contains(&status) {
        let code = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let message = body
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| text.trim().to_owned(), str::to_owned);
        return Err(match (status, code) {
            (401, _) => AdminError::Unauthorized,
            (404, "admin_disabled") => AdminError::Disabled,
            (404, "meeting_not_found") => AdminError::MeetingNotFound,
            _ => AdminError::Status { status, message },
        });
    }
    match verb {
        AdminVerb::List if output == AdminOutput::Table => meetings_table(&body),
        AdminVerb::Shards if output == AdminOutput::Table => shards_table(&body),
        _ => serde_json::to_string_pretty(&body)
            .map_err(|e| AdminError::InvalidResponse(e.to_string())),
    }
}

impl From<crate::config::AdminVerbArg> for AdminVerb {
    fn from(v: crate::config::AdminVerbArg) -> Self {
        use crate::config::AdminVerbArg as A;
        match v {
            A::List => AdminVerb::List,
            A::Show { id } => AdminVerb::Show { id },
            A::End { id } => AdminVerb::End { id },
            A::Drain => AdminVerb::Drain,
            A::Undrain => AdminVerb::Undrain,
            A::Reregister => AdminVerb::Reregister,
            A::Shards => AdminVerb::Shards,
            A::Migrate { id, to } => AdminVerb::Migrate { id, to },
        }
    }
}

impl AdminError {
    /// Process exit code for `mc admin` (sysexits): 64 bad input, 69 controller unreachable,
    /// 77 admin API disabled or token refused, 1 any other error answer.
    pub fn exit_code(&self) -> i32 {
        match self {
            AdminError::InvalidId(_) => 64,
            AdminError::Transport(_) => 69,
            AdminError::Disabled | AdminError::Unauthorized => 77,
            AdminError::MeetingNotFound
            | AdminError::Status { .. }
            | AdminError::InvalidResponse(_) => 1,
        }
    }
}

/// `mc admin <verb>`: runs the verb, prints the result on stdout (or the error on stderr) and
/// returns the exit code (0 on success, see [`AdminError::exit_code`]).
pub fn admin_cli(
    url: &str,
    token: &str,
    verb: impl Into<AdminVerb>,
    timeout: Duration,
    output: AdminOutput,
) -> i32 {
    match admin_command_as(url, token, verb.into(), timeout, output) {
        Ok(out) => {
            println!("{out}");
            0
        }
        Err(e) => {
            eprintln!("mc admin: {e}");
            e.exit_code()
        }
    }
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.clone()));
    }
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.2}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn duration_cell(v: &Value) -> String {
    let Some(ms) = v.as_u64() else {
        return "-".into();
    };
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn meetings_table(body: &Value) -> Result<String, AdminError> {
    let list = body
        .get("meetings")
        .and_then(Value::as_array)
        .ok_or_else(|| AdminError::InvalidResponse("no meetings array".into()))?;
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|m| {
            vec![
                cell(&m["meeting_id"]),
                cell(&m["shard"]),
                cell(&m["participants"]),
                cell(&m["connected"]),
                duration_cell(&m["age_ms"]),
                duration_cell(&m["idle_ms"]),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "MEETING",
            "SHARD",
            "PARTICIPANTS",
            "CONNECTED",
            "AGE",
            "IDLE",
        ],
        &rows,
    );
    out.push_str(&format!("\n{} meeting(s)", list.len()));
    if let Some(missing) = body.get("missing_shards").and_then(Value::as_array) {
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(cell).collect();
            out.push_str(&format!("; shards not answering: {}", names.join(", ")));
        }
    }
    Ok(out)
}

fn shards_table(body: &Value) -> Result<String, AdminError> {
    let list = body
        .get("shards")
        .and_then(Value::as_array)
        .ok_or_else(|| AdminError::InvalidResponse("no shards array".into()))?;
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let depth = &s["mailbox_depth"];
            let p = &s["processing"];
            let worst = |key: &str| {
                ["controller", "meeting", "connection"]
                    .iter()
                    .filter_map(|a| p[*a][key].as_f64())
                    .fold(0.0, f64::max)
            };
            vec![
                cell(&s["shard"]),
                cell(&s["cpu"]),
                cell(&s["up"]),
                cell(&s["meetings"]),
                cell(&s["connections"]),
                cell(&s["participants"]),
                format!(
                    "{}/{}/{}",
                    cell(&depth["controller"]),
                    cell(&depth["meeting"]),
                    cell(&depth["connection"])
                ),
                format!("{:.2}", worst("p50_ms")),
                format!("{:.2}", worst("p99_ms")),
                cell(&s["datagrams_forwarded"]),
                cell(&s["handoffs_out"]),
                cell(&s["cpu_seconds"]),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "SHARD",
            "CPU",
            "UP",
            "MEETINGS",
            "CONNS",
            "PARTICIPANTS",
            "MAILBOX c/m/x",
            "P50_MS",
            "P99_MS",
            "FORWARDED",
            "HANDOFFS",
            "CPU_S",
        ],
        &rows,
    );
    if body.get("draining").and_then(Value::as_bool) == Some(true) {
        out.push_str("\ncontroller is draining");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn meetings_render_as_a_table() {
        let body = json!({"count":1,"meetings":[{"meeting_id":"standup","shard":2,"participants":3,"connected":2,"age_ms":125000,"idle_ms":4000}],"missing_shards":[1]});
        let t = meetings_table(&body).unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("MEETING"));
        assert!(
            lines[1].contains("standup") && lines[1].contains("2m05s") && lines[1].contains("4s")
        );
        assert!(lines[2].contains("1 meeting(s)") && lines[2].contains("shards not answering: 1"));
    }

    #[test]
    fn invalid_ids_are_refused_locally() {
        let r = admin_command(
            "http://127.0.0.1:1",
            "t",
            AdminVerb::Show { id: "a b".into() },
            Duration::from_millis(10),
        );
        assert!(matches!(r, Err(AdminError::InvalidId(_))));
    }
}
