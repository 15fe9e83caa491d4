//! Scraping the controller's Prometheus `/metrics` (with `ureq`, the HTTP client the controller
//! itself uses for the GC link) and reading the figures the report needs.

use std::time::{Duration, Instant};

/// A checked metrics URL: `http://` or `https://`, a host, and a path (`/metrics` when the URL
/// has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(String);

impl HttpUrl {
    /// Checks `url` and fills in the default path.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: ureq::http::Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(format!("`{url}` is not an http:// or https:// URL"));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("`{url}` has no host"));
        }
        let path = uri.path_and_query().map_or("", |p| p.as_str());
        if path.is_empty() || path == "/" {
            let base = url.trim_end_matches('/');
            return Ok(Self(format!("{base}/metrics")));
        }
        Ok(Self(url.to_owned()))
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// GETs `url` and returns the body of a 200 answer.
pub fn http_get(url: &HttpUrl, timeout: Duration) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(url.as_str())
        .header("Accept", "text/plain")
        .call()
        .map_err(|e| format!("{}: {e}", url.as_str()))?;
    if resp.status() != ureq::http::StatusCode::OK {
        return Err(format!("{}: HTTP status {}", url.as_str(), resp.status()));
    }
    resp.body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .map_err(|e| format!("{}: {e}", url.as_str()))
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
        assert_eq!(u.as_str(), "http://127.0.0.1:8080/metrics");
        assert_eq!(
            HttpUrl::parse("http://localhost").unwrap().as_str(),
            "http://localhost/metrics"
        );
        assert_eq!(
            HttpUrl::parse("http://localhost:9090/").unwrap().as_str(),
            "http://localhost:9090/metrics"
        );
        assert_eq!(
            HttpUrl::parse("https://mc.example/stats?x=1")
                .unwrap()
                .as_str(),
            "https://mc.example/stats?x=1"
        );
        assert!(HttpUrl::parse("ftp://x/metrics").is_err());
        assert!(HttpUrl::parse("http:///metrics").is_err());
        assert!(HttpUrl::parse("localhost:8080").is_err());
    }

    #[test]
    fn fetches_over_tcp() {
        use std::io::{Read as _, Write as _};
        use std::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            // A chunked answer, then a 503.
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            write!(
                s,
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
                 12\r\nmc_connection_hand\r\n0d\r\noffs_total 9\n\r\n0\r\n\r\n"
            )
            .unwrap();
            drop(s);
            let (mut s, _) = l.accept().unwrap();
            let _ = s.read(&mut buf).unwrap();
            write!(
                s,
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            .unwrap();
            req
        });
        let url = HttpUrl::parse(&format!("http://{addr}/metrics")).unwrap();
        let f = ServerFigures::scrape(&url).unwrap();
        assert_eq!(f.handoffs, 9.0);
        let e = ServerFigures::scrape(&url).unwrap_err();
        assert!(e.contains("503"), "{e}");
        let req = server.join().unwrap();
        assert!(req.starts_with("GET /metrics HTTP/1.1\r\n"), "{req}");
        // Nothing listens there any more.
        assert!(ServerFigures::scrape(&url).is_err());
    }
}
