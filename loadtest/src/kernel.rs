//! Kernel UDP drop counters (Linux `/proc`), read before and after a run.
//!
//! A datagram dropped because a socket's receive queue was full never reaches QUIC: it shows up
//! as a retransmission and as latency. On loopback both ends are on this host, so the load
//! generator can see the controller's sockets too.

use std::fs;

/// Drop counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpDrops {
    /// Σ `drops` of the sockets bound to the server's port (`/proc/net/udp{,6}`), if any.
    pub server_port: Option<u64>,
    /// System-wide `RcvbufErrors` (`/proc/net/snmp` `Udp:` plus `/proc/net/snmp6`).
    pub rcvbuf_errors: Option<u64>,
}

impl UdpDrops {
    /// Reads the counters for sockets bound to `port`.
    pub fn read(port: u16) -> Self {
        let mut server_port = None;
        for table in ["/proc/net/udp", "/proc/net/udp6"] {
            if let Ok(text) = fs::read_to_string(table) {
                if let Some(d) = socket_drops(&text, port) {
                    *server_port.get_or_insert(0) += d;
                }
            }
        }
        let v4 = fs::read_to_string("/proc/net/snmp")
            .ok()
            .and_then(|t| snmp_field(&t, "Udp:", "RcvbufErrors"));
        let v6 = fs::read_to_string("/proc/net/snmp6")
            .ok()
            .and_then(|t| snmp6_field(&t, "Udp6RcvbufErrors"));
        let rcvbuf_errors = match (v4, v6) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        Self {
            server_port,
            rcvbuf_errors,
        }
    }

    /// `self - before`, field by field.
    pub fn since(&self, before: &UdpDrops) -> UdpDrops {
        let sub = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b.unwrap_or(0)));
        UdpDrops {
            server_port: sub(self.server_port, before.server_port),
            rcvbuf_errors: sub(self.rcvbuf_errors, before.rcvbuf_errors),
        }
    }
}

/// Σ `drops` (last column) of the sockets whose local port is `port`; `None` if there are none.
fn socket_drops(table: &str, port: u16) -> Option<u64> {
    let mut found = None;
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(drops)) = (cols.get(1), cols.last()) else {
            continue;
        };
        let Some((_, hex_port)) = local.rsplit_once(':') else {
            continue;
        };
        if u16::from_str_radix(hex_port, 16) == Ok(port) {
            *found.get_or_insert(0) += drops.parse::<u64>().unwrap_or(0);
        }
    }
    found
}

/// A field of `/proc/net/snmp`: a header line and a value line, both starting with `prefix`.
fn snmp_field(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let header = lines.next()?;
    let values = lines.next()?;
    let i = header.split_whitespace().position(|h| h == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// A field of `/proc/net/snmp6`: `name value` lines.
fn snmp6_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == name).then(|| it.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_tables() {
        let udp = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
   1: 0100007F:1151 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 49797\n\
   2: 0100007F:1151 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3 2 0000000000000000 3\n\
   3: 0100007F:D431 0100007F:1151 01 00000000:00000000 00:00000000 00000000     0        0 4 2 0000000000000000 7\n";
        assert_eq!(socket_drops(udp, 4433), Some(49800));
        assert_eq!(socket_drops(udp, 54321), Some(7));
        assert_eq!(socket_drops(udp, 1), None);
        let snmp = "Ip: Forwarding\nIp: 1\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\nUdp: 10 0 5 12 5\nUdpLite: InDatagrams RcvbufErrors\nUdpLite: 0 0\n";
        assert_eq!(snmp_field(snmp, "Udp:", "RcvbufErrors"), Some(5));
        assert_eq!(
            snmp6_field(
                "Udp6InDatagrams 4\nUdp6RcvbufErrors 9\n",
                "Udp6RcvbufErrors"
            ),
            Some(9)
        );
        let a = UdpDrops {
            server_port: Some(10),
            rcvbuf_errors: Some(100),
        };
        let b = UdpDrops {
            server_port: Some(4),
            rcvbuf_errors: None,
        };
        assert_eq!(
            a.since(&b),
            UdpDrops {
                server_port: Some(6),
                rcvbuf_errors: Some(100)
            }
        );
        // Reading the real tables never fails.
        let _ = UdpDrops::read(4433);
    }
}
