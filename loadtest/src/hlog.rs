//! `--hlog FILE`: HdrHistogram interval logs (the format of HdrHistogram's `HistogramLogWriter`,
//! read by its `HistogramLogProcessor` and `HistogramLogAnalyzer` plotting tools).
//!
//! One interval per second of the run, three tagged histograms in each (`delivery`, `join`,
//! `handshake`), holding the samples the workers reported in that second, in microseconds.
//! Timestamps are seconds since the run started (`BaseTime`).

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;

use crate::stats::Latencies;

/// An open interval log.
pub struct IntervalLog {
    out: BufWriter<File>,
    path: PathBuf,
    serializer: V2DeflateSerializer,
    /// The run's start: timestamp 0.
    base: Instant,
    /// Start of the interval being collected.
    interval_start: Instant,
    /// Samples of that interval.
    pending: Latencies,
}

impl std::fmt::Debug for IntervalLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntervalLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl IntervalLog {
    /// Creates `path` and writes the header. `base` (at wall-clock time `base_wall`) is the
    /// zero of the interval timestamps.
    pub fn create(
        path: &Path,
        base: Instant,
        base_wall: SystemTime,
        comment: &str,
    ) -> std::io::Result<Self> {
        let mut out = BufWriter::new(File::create(path)?);
        let mut serializer = V2DeflateSerializer::new();
        IntervalLogWriterBuilder::new()
            .add_comment("[Histogram log format version 1.3]")
            .add_comment(comment)
            .add_comment("values in microseconds; tags: delivery, join, handshake")
            .with_start_time(base_wall)
            .with_base_time(base_wall)
            .begin_log_with(&mut out, &mut serializer)?;
        out.write_all(
            b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
        )?;
        Ok(Self {
            out,
            path: path.to_owned(),
            serializer,
            base,
            interval_start: base,
            pending: Latencies::new(),
        })
    }

    /// Adds samples to the current interval.
    pub fn add(&mut self, samples: &Latencies) {
        self.pending.add(samples);
    }

    /// Ends the current interval at `now`: writes its three histograms and starts the next.
    pub fn close_interval(&mut self, now: Instant) -> std::io::Result<()> {
        let start = self.interval_start.saturating_duration_since(self.base);
        let length = now.saturating_duration_since(self.interval_start);
        let pending = std::mem::take(&mut self.pending);
        self.interval_start = now;
        write_interval(&mut self.out, &mut self.serializer, start, length, &pending)
    }

    /// Writes the last interval (ending at `now`) and flushes the file.
    pub fn finish(mut self, now: Instant) -> std::io::Result<()> {
        self.close_interval(now)?;
        self.out.flush()
    }

    /// Where the log goes.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn write_interval(
    out: &mut BufWriter<File>,
    serializer: &mut V2DeflateSerializer,
    start: Duration,
    length: Duration,
    l: &Latencies,
) -> std::io::Result<()> {
    // A builder without headers writes nothing of its own: this only frames the lines.
    let mut w = IntervalLogWriterBuilder::new().begin_log_with(out, serializer)?;
    for (tag, h) in [
        ("delivery", &l.delivery),
        ("join", &l.join),
        ("handshake", &l.handshake),
    ] {
        w.write_histogram(h, start, length, Tag::new(tag))
            .map_err(|e| std::io::Error::other(format!("{tag} interval: {e:?}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{histogram, record};
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    #[test]
    fn written_log_parses_back_with_the_same_histograms() {
        let dir = std::env::temp_dir().join(format!("mc-hlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.hlog");
        let base = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_000_000);
        let mut log = IntervalLog::create(&path, base, wall, "test run").unwrap();
        let mut first = Latencies::new();
        for us in [100, 200, 300, 5_000] {
            record(&mut first.delivery, us);
        }
        record(&mut first.join, 1_500);
        log.add(&first);
        log.close_interval(base + Duration::from_secs(1)).unwrap();
        let mut second = Latencies::new();
        record(&mut second.delivery, 42);
        record(&mut second.handshake, 7_000);
        log.add(&second);
        // Samples added in two steps land in the same interval.
        let mut more = Latencies::new();
        record(&mut more.handshake, 9_000);
        log.add(&more);
        log.finish(base + Duration::from_millis(2_500)).unwrap();

        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.starts_with("#[Histogram log format version 1.3]\n"),
            "{text}"
        );
        let mut de = Deserializer::new();
        let mut start_time = None;
        let mut intervals = Vec::new();
        for entry in IntervalLogIterator::new(&bytes) {
            match entry.expect("every line parses") {
                LogEntry::StartTime(t) => start_time = Some(t),
                LogEntry::BaseTime(_) => {}
                LogEntry::Interval(i) => {
                    let raw = STANDARD.decode(i.encoded_histogram()).unwrap();
                    let h: hdrhistogram::Histogram<u64> =
                        de.deserialize(&mut raw.as_slice()).unwrap();
                    intervals.push((
                        i.tag().map(|t| t.as_str().to_owned()),
                        i.start_timestamp(),
                        i.duration(),
                        h,
                    ));
                }
            }
        }
        assert_eq!(start_time, Some(Duration::from_secs(1_765_000_000)));
        assert_eq!(intervals.len(), 6, "two intervals of three tags");
        let find = |tag: &str, n: usize| {
            intervals
                .iter()
                .filter(|(t, ..)| t.as_deref() == Some(tag))
                .nth(n)
                .unwrap()
        };
        let (_, start, length, d) = find("delivery", 0);
        assert_eq!((*start, *length), (Duration::ZERO, Duration::from_secs(1)));
        assert_eq!(d.len(), 4);
        assert_eq!(d.max(), histogram_max(5_000));
        assert_eq!(find("join", 0).3.len(), 1);
        assert_eq!(find("handshake", 0).3.len(), 0);
        let (_, start, length, d) = find("delivery", 1);
        assert_eq!(
            (*start, *length),
            (Duration::from_secs(1), Duration::from_millis(1_500))
        );
        assert_eq!(d.len(), 1);
        assert_eq!(find("handshake", 1).3.len(), 2);
        assert_eq!(find("join", 1).3.len(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The largest value the histogram reports for a sample `v` (its bucket's highest
    /// equivalent value).
    fn histogram_max(v: u64) -> u64 {
        let mut h = histogram();
        record(&mut h, v);
        h.max()
    }
}
