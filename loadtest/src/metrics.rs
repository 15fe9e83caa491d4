//! Scraping the controller's Prometheus `/metrics` over plain HTTP/1.1 (std `TcpStream`).

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// A parsed `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host:port`.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses a plain-HTTP URL; the port defaults to 80 and the path to `/metrics`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{url}` is not an http:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        if authority.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            authority,
            path: path.to_owned(),
        })
    }
}

/// GETs `url` and returns the body.
pub fn http_get(url: &HttpUrl, timeout: Duration) -> Result<String, String> {
    let addr = url
        .authority
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", url.authority))?
        .next()
        .ok_or_else(|| format!("{}: no address", url.authority))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
        url.path, url.authority
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("response has no header end")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let body = &raw[end + 4..];
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("HTTP status `{status}`"));
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let size_field = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_field.split(';').next().unwrap_or("").trim(), 16);
        let rest = &body[line_end + 2..];
        let Ok(size) = size else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.extend_from_slice(&rest[..size]);
        body = rest[size..].strip_prefix(b"\r\n").unwrap_or(&rest[size..]);
    }
    out
}

/// One sample line: metric name, label pairs, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

/// Parses the Prometheus text format (comments skipped, timestamps ignored).
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(i) => {
                let Some(j) = line[i..].rfind('}') else {
                    continue;
                };
                (
                    &line[..i],
                    parse_labels(&line[i + 1..i + j]),
                    &line[i + j + 1..],
                )
            }
            None => match line.split_once(' ') {
                Some((n, r)) => (n, Vec::new(), r),
                None => continue,
            },
        };
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((k, r)) = rest.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim();
        let Some(r) = r.strip_prefix('"') else { break };
        let mut v = String::new();
        let mut chars = r.char_indices();
        let mut end = r.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => v.push('\n'),
                    Some((_, c)) => v.push(c),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => v.push(c),
            }
        }
        out.push((k.to_owned(), v));
        rest = &r[end..];
    }
    out
}

/// The controller figures the report uses, from one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerFigures {
    /// When the scrape finished.
    pub at: Option<Instant>,
    /// Σ `mc_messages_dropped_total`.
    pub dropped: f64,
    /// max over series of `mc_actor_mailbox_depth`.
    pub mailbox_max: f64,
    /// Σ `mc_datagrams_forwarded_total`.
    pub datagrams_forwarded: f64,
    /// Σ `mc_udp_receive_drops_total` (the kernel's drops on the controller's sockets).
    pub udp_receive_drops: f64,
    /// Σ `mc_connection_handoffs_total`.
    pub handoffs: f64,
    /// Σ `mc_shard_cpu_seconds_total` over shards.
    pub cpu_seconds: f64,
    /// Number of shards reporting CPU time.
    pub shards: usize,
}

impl ServerFigures {
    /// Extracts the figures from parsed samples.
    pub fn from_samples(samples: &[Sample], at: Instant) -> Self {
        let mut f = ServerFigures {
            at: Some(at),
            ..Self::default()
        };
        let mut shards = std::collections::BTreeSet::new();
        for s in samples {
            match s.name.as_str() {
                "mc_messages_dropped_total" => f.dropped += s.value,
                "mc_actor_mailbox_depth" => f.mailbox_max = f.mailbox_max.max(s.value),
                "mc_datagrams_forwarded_total" => f.datagrams_forwarded += s.value,
                "mc_udp_receive_drops_total" => f.udp_receive_drops += s.value,
                "mc_connection_handoffs_total" => f.handoffs += s.value,
                "mc_shard_cpu_seconds_total" => {
                    f.cpu_seconds += s.value;
                    if let Some((_, v)) = s.labels.iter().find(|(k, _)| k == "shard") {
                        shards.insert(v.clone());
                    }
                }
                _ => {}
            }
        }
        f.shards = shards.len();
        f
    }

    /// Scrapes `url` now.
    pub fn scrape(url: &HttpUrl) -> Result<Self, String> {
        let body = http_get(url, Duration::from_secs(2))?;
        Ok(Self::from_samples(&parse(&body), Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP mc_messages_dropped_total Dropped.
# TYPE mc_messages_dropped_total counter
mc_messages_dropped_total{actor_type="connection",reason="queue_full"} 7
mc_messages_dropped_total{actor_type="meeting",reason="inbox_full"} 3
mc_actor_mailbox_depth{shard="0",actor_type="connection"} 12
mc_actor_mailbox_depth{shard="1",actor_type="connection"} 40
mc_datagrams_forwarded_total 100
mc_udp_receive_drops_total{shard="0"} 4
mc_udp_receive_drops_total{shard="1"} 5
mc_connection_handoffs_total{from="0",to="1"} 5
mc_shard_cpu_seconds_total{shard="0"} 1.5
mc_shard_cpu_seconds_total{shard="1"} 2.25
weird{a="x\"y",b="c,d"} 1e3 1700000000
# EOF
"#;

    #[test]
    fn parses_figures() {
        let f = ServerFigures::from_samples(&parse(TEXT), Instant::now());
        assert_eq!(f.dropped, 10.0);
        assert_eq!(f.mailbox_max, 40.0);
        assert_eq!(f.datagrams_forwarded, 100.0);
        assert_eq!(f.udp_receive_drops, 9.0);
        assert_eq!(f.handoffs, 5.0);
        assert_eq!(f.cpu_seconds, 3.75);
        assert_eq!(f.shards, 2);
        let weird = parse(TEXT).into_iter().find(|s| s.name == "weird").unwrap();
        assert_eq!(weird.value, 1000.0);
        assert_eq!(
            weird.labels,
            vec![("a".into(), "x\"y".into()), ("b".into(), "c,d".into())]
        );
    }

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/metrics").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("127.0.0.1:8080", "/metrics")
        );
        let u = HttpUrl::parse("http://localhost").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("localhost:80", "/metrics")
        );
        assert!(HttpUrl::parse("https://x/metrics").is_err());
        assert!(HttpUrl::parse("http:///metrics").is_err());
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            b"hello world"
        );
    }

    #[test]
    fn fetches_over_tcp() {
        use std::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            let body = "mc_connection_handoffs_total 9\n";
            write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        });
        let url = HttpUrl::parse(&format!("http://{addr}/metrics")).unwrap();
        let f = ServerFigures::scrape(&url).unwrap();
        assert_eq!(f.handoffs, 9.0);
        server.join().unwrap();
    }
}
