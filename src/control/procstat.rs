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
    }

    #[test]
    fn own_process_figures_are_real() {
        assert!(rss_bytes().is_some_and(|r| r > 0));
        assert!(cpu_seconds().is_some());
        let mut m = CpuMeter::new();
        let _ = m.sample();
        assert!(m.sample().is_none_or(|p| p >= 0.0));
    }
}
