//! The process's own resource use, from `/proc/self` (Linux).

use std::time::Instant;

/// Resident set size in bytes (`/proc/self/statm`, second field × page size).
pub(crate) fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().map(|p| pages * p)
}

/// User + system CPU time of the whole process in seconds (`/proc/self/stat` utime + stime).
pub(crate) fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat_cpu_ticks(&stat).and_then(|ticks| {
        // SAFETY: sysconf has no preconditions; it only reads a system constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (hz > 0).then(|| ticks as f64 / hz as f64)
    })
}

/// utime + stime (clock ticks) from the text of `/proc/<pid>/stat`. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after the last `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')' the first field is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Open file descriptors (entries of `/proc/self/fd`, less the one the listing itself holds).
pub(crate) fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count();
    u64::try_from(entries.saturating_sub(1)).ok()
}

/// The soft `RLIMIT_NOFILE`: the most file descriptors the process may open.
pub(crate) fn max_fds() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then_some(lim.rlim_cur)
}

/// When the process started, in seconds since the Unix epoch: the boot time (`btime` of
/// `/proc/stat`) plus the process's start time after boot (field 22 of `/proc/self/stat`).
pub(crate) fn start_time_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let ticks = parse_stat_start_ticks(&stat)?;
    let btime = parse_btime(&std::fs::read_to_string("/proc/stat").ok()?)?;
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| btime as f64 + ticks as f64 / hz as f64)
}

/// Field 22 (`starttime`, clock ticks after boot) of `/proc/<pid>/stat`.
fn parse_stat_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' the first field is field 3, so field 22 is the 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `btime` (boot time, seconds since the epoch) of `/proc/stat`.
fn parse_btime(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// CPU use of the process as a percentage of one core, between two samples.
#[derive(Debug)]
pub(crate) struct CpuMeter {
    last: Option<(Instant, f64)>,
}

impl CpuMeter {
    /// Starts measuring now.
    pub fn new() -> Self {
        Self {
            last: cpu_seconds().map(|c| (Instant::now(), c)),
        }
    }

    /// Percentage of one core used since the previous call (or since creation).
    pub fn sample(&mut self) -> Option<f64> {
        let now = Instant::now();
        let cpu = cpu_seconds()?;
        let prev = self.last.replace((now, cpu));
        let (t0, c0) = prev?;
        let wall = now.saturating_duration_since(t0).as_secs_f64();
        (wall > 0.0).then(|| ((cpu - c0).max(0.0) / wall) * 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_handles_odd_command_names() {
        let line = "1234 (my (odd) cmd) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(line), Some(300));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert_eq!(parse_stat_start_ticks(line), Some(100));
        assert_eq!(parse_stat_start_ticks("1 (x) S 1 2"), None);
        assert_eq!(
            parse_btime("cpu  1 2 3\nintr 5\nbtime 1765000000\nprocesses 9\n"),
            Some(1_765_000_000)
        );
        assert_eq!(parse_btime("cpu 1\n"), None);
    }

    #[test]
    fn own_process_figures_are_real() {
        assert!(rss_bytes().is_some_and(|r| r > 0));
        assert!(cpu_seconds().is_some());
        // This test's process has stdin/stdout/stderr open at least.
        assert!(open_fds().is_some_and(|n| n >= 3), "{:?}", open_fds());
        let opened: Vec<_> = (0..5)
            .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
            .collect();
        assert!(open_fds().is_some_and(|n| n >= 8));
        drop(opened);
        assert!(max_fds().is_some_and(|m| m >= 3));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = start_time_seconds().unwrap();
        // Started before now and within the last day (a test process is young); the two
        // kernel clocks may differ by a few ticks, hence the small slack.
        assert!(
            started <= now + 2.0 && started > now - 86_400.0,
            "{started} vs {now}"
        );
        let mut m = CpuMeter::new();
        let _ = m.sample();
        assert!(m.sample().is_none_or(|p| p >= 0.0));
    }
}
