//! Log output that never blocks the thread that logs.
//!
//! A shard thread stops for nothing but its own sleep. A `write` to stderr blocks once the pipe
//! behind it is full (a log collector that falls behind, a terminal paused with Ctrl-S), and
//! every meeting of the shard that logged would stop with it. So a log line is formatted on the
//! thread that logs and put on a bounded queue, and one writer thread writes the queue to
//! stderr in batches. When the queue is full the line is dropped and counted
//! (`mc_log_lines_dropped_total`); once the writer has caught up it logs how many it lost.
//! At exit `main` flushes the queue, waiting a bounded time for a blocked stderr.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use tracing_subscriber::fmt::MakeWriter;

/// Lines the queue holds before it drops (a few MiB of typical lines).
pub const QUEUE_LINES: usize = 8192;

/// The most bytes the writer hands to one `write`.
const BATCH_BYTES: usize = 64 * 1024;

enum Item {
    Line(Vec<u8>),
    /// Answered once every line queued before it has been written.
    Flush(Sender<()>),
}

/// The logging side: a `MakeWriter` for `tracing_subscriber::fmt` (cheap to clone).
#[derive(Debug, Clone)]
pub struct LogQueue {
    tx: Sender<Item>,
    dropped: Arc<AtomicU64>,
}

impl LogQueue {
    /// Lines dropped so far: queue full, or the output refused them.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every line queued before this call has been written, at most `timeout`.
    /// False when the writer did not get there in time (its output is blocked) or is gone.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (ack, done) = bounded(1);
        if self.tx.send_deadline(Item::Flush(ack), deadline).is_err() {
            return false;
        }
        done.recv_deadline(deadline).is_ok()
    }
}

/// One log line while it is being formatted; queued (or dropped) when the formatter lets go.
#[derive(Debug)]
pub struct Line<'a> {
    queue: &'a LogQueue,
    buf: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buf);
        match self.queue.tx.try_send(Item::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queue.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl<'a> MakeWriter<'a> for LogQueue {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            queue: self,
            buf: Vec::new(),
        }
    }
}

/// Starts the writer thread over `out`; it ends when every [`LogQueue`] clone is gone.
/// `notice` is called on the writer thread with the number of lines lost since the last
/// call, once the queue has drained after a loss.
pub fn start<W>(
    out: W,
    capacity: usize,
    notice: impl Fn(u64) + Send + 'static,
) -> io::Result<LogQueue>
where
    W: Write + Send + 'static,
{
    let (tx, rx) = bounded(capacity.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&dropped);
    std::thread::Builder::new()
        .name("mc-log".into())
        .spawn(move || write_loop(out, &rx, &counter, notice))?;
    Ok(LogQueue { tx, dropped })
}

fn write_loop<W: Write>(
    mut out: W,
    rx: &Receiver<Item>,
    dropped: &AtomicU64,
    notice: impl Fn(u64),
) {
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    let mut acks: Vec<Sender<()>> = Vec::new();
    let mut reported = 0u64;
    while let Ok(first) = rx.recv() {
        let mut lines = 0u64;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Item::Line(l) => {
                    batch.extend_from_slice(&l);
                    lines += 1;
                }
                Item::Flush(ack) => acks.push(ack),
            }
            if batch.len() < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        let written = batch.is_empty() || out.write_all(&batch).and_then(|()| out.flush()).is_ok();
        if !written {
            dropped.fetch_add(lines, Ordering::Relaxed);
        }
        batch.clear();
        for ack in acks.drain(..) {
            let _ = ack.try_send(());
        }
        let lost = dropped.load(Ordering::Relaxed);
        if lost > reported {
            if !written {
                // The output refuses lines: a notice would be refused too (and, logged through
                // this queue, would come back as one more loss to report, for ever).
                reported = lost;
            } else if rx.is_empty() {
                notice(lost - reported);
                reported = lost;
            }
        }
    }
}

static GLOBAL: OnceLock<LogQueue> = OnceLock::new();

/// Starts the process's log writer on stderr and returns the queue for the subscriber.
/// Called once; a second call returns the first queue.
pub fn install_stderr() -> io::Result<LogQueue> {
    if let Some(q) = GLOBAL.get() {
        return Ok(q.clone());
    }
    let queue = start(io::stderr(), QUEUE_LINES, |lost| {
        tracing::warn!(
            lines = lost,
            "log output fell behind: lines were dropped (mc_log_lines_dropped_total)"
        );
    })?;
    Ok(GLOBAL.get_or_init(|| queue).clone())
}

/// Lines the process's log writer has dropped (0 before [`install_stderr`]).
pub fn dropped_lines() -> u64 {
    GLOBAL.get().map_or(0, LogQueue::dropped)
}

/// Writes out what the process has queued, waiting at most `timeout` (at exit).
pub fn flush(timeout: Duration) {
    if let Some(q) = GLOBAL.get() {
        q.flush(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};

    /// Whether the gate is open, and what went through it.
    type GateState = Mutex<(bool, Vec<u8>)>;

    /// An output that blocks every write until it is opened, then keeps what it got.
    #[derive(Clone, Default)]
    struct Gate {
        state: Arc<(GateState, Condvar)>,
        writing: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Gate {
        fn open(&self) {
            let (m, c) = &*self.state;
            m.lock().unwrap().0 = true;
            c.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8(self.state.0.lock().unwrap().1.clone()).unwrap()
        }
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.writing.store(true, Ordering::SeqCst);
            let (m, c) = &*self.state;
            let mut g = c.wait_while(m.lock().unwrap(), |s| !s.0).unwrap();
            g.1.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn log(q: &LogQueue, s: &str) {
        let mut w = q.make_writer();
        w.write_all(s.as_bytes()).unwrap();
    }

    #[test]
    fn a_blocked_output_drops_lines_instead_of_blocking_the_logger() {
        let gate = Gate::default();
        let notices = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&notices);
        let q = start(gate.clone(), 4, move |n| seen.lock().unwrap().push(n)).unwrap();
        // The writer takes the first line and blocks on the output; the queue then holds 4.
        log(&q, "0\n");
        let t0 = Instant::now();
        while !gate.writing.load(Ordering::SeqCst) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the writer never wrote"
            );
            std::thread::yield_now();
        }
        for i in 1..=10 {
            log(&q, &format!("{i}\n"));
        }
        // The logger never waited: six of the ten did not fit and were counted.
        assert_eq!(q.dropped(), 6);
        assert!(
            !q.flush(Duration::from_millis(50)),
            "flushed through a blocked output"
        );
        gate.open();
        assert!(q.flush(Duration::from_secs(10)));
        assert_eq!(gate.text(), "0\n1\n2\n3\n4\n");
        // The loss is reported once the queue has drained (the flush's answer may come first).
        let t0 = Instant::now();
        while notices.lock().unwrap().is_empty() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*notices.lock().unwrap(), vec![6]);
    }

    #[test]
    fn lines_come_out_whole_and_in_order() {
        let gate = Gate::default();
        gate.open();
        let q = start(gate.clone(), QUEUE_LINES, |_| {}).unwrap();
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        log(&q, &format!("t{t} line {i:04} ........................\n"));
                    }
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        assert!(q.flush(Duration::from_secs(10)));
        assert_eq!(q.dropped(), 0);
        let text = gate.text();
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            assert_eq!(mine.len(), 500);
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "thread {t} out of order"
            );
        }
    }

    #[test]
    fn a_failing_output_counts_its_lines_as_dropped() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        // As in the process, the loss notice is logged through the queue itself.
        let slot: Arc<OnceLock<LogQueue>> = Arc::default();
        let notices = Arc::new(AtomicU64::new(0));
        let (inner, seen) = (Arc::clone(&slot), Arc::clone(&notices));
        let q = start(Broken, 16, move |n| {
            seen.fetch_add(1, Ordering::Relaxed);
            if let Some(q) = inner.get() {
                log(q, &format!("{n} lines lost\n"));
            }
        })
        .unwrap();
        assert!(slot.set(q.clone()).is_ok());
        log(&q, "a\n");
        log(&q, "b\n");
        assert!(q.flush(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(100));
        assert!(q.flush(Duration::from_secs(10)));
        // Both lines are counted, and a refused notice does not feed itself.
        assert_eq!(q.dropped(), 2);
        assert_eq!(notices.load(Ordering::Relaxed), 0);
    }
}
