//! Raising the open-file limit: by default every connection has its own UDP socket (a distinct
//! source port, so the server's `SO_REUSEPORT` hash spreads connections over its shards).

/// Raises the soft `RLIMIT_NOFILE` towards `needed` (up to the hard limit). Returns the limit in
/// force afterwards.
pub fn raise_nofile(needed: u64) -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let cur = lim.rlim_cur;
    let max = lim.rlim_max;
    if cur >= needed {
        return Ok(cur);
    }
    let want = libc::rlimit {
        rlim_cur: needed.min(max),
        rlim_max: lim.rlim_max,
    };
    // Privileged processes may raise the hard limit too.
    if needed > max {
        let raised = libc::rlimit {
            rlim_cur: needed,
            rlim_max: needed,
        };
        // SAFETY: `raised` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(needed);
        }
    }
    // SAFETY: `want` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(want.rlim_cur)
}

#[cfg(test)]
mod tests {
    #[test]
    fn raising_to_a_small_value_is_a_no_op() {
        let cur = super::raise_nofile(16).unwrap();
        assert!(cur >= 16);
    }
}
