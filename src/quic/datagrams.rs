//! Outgoing UDP datagrams of one flush, packed back to back in one reusable buffer.
//!
//! The endpoint writes packets straight into the batch (no allocation per packet once the
//! buffers have grown to the shard's working size); the glue sends the whole batch with as few
//! system calls as the kernel allows and hands the emptied batch back for reuse.

use std::net::SocketAddr;
use std::ops::Range;

/// A batch of datagrams and their destinations.
///
/// Datagrams are pushed in *groups* (one connection's flush is one group): only datagrams of
/// one group may be sent together as one GSO message, so packets of different connections are
/// never merged just because they share a destination address.
#[derive(Debug, Default)]
pub struct Datagrams {
    buf: Vec<u8>,
    meta: Vec<(Range<usize>, SocketAddr, u32)>,
    group: u32,
}

impl Datagrams {
    /// Number of datagrams.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// True when there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// Removes every datagram, keeping the allocations.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.meta.clear();
    }

    /// Starts a new group: datagrams pushed from now on are not sent together with earlier ones.
    pub fn new_group(&mut self) {
        self.group = self.group.wrapping_add(1);
    }

    /// Appends a copy of `data` (to the current group).
    pub fn push(&mut self, data: &[u8], to: SocketAddr) {
        let start = self.buf.len();
        self.buf.extend_from_slice(data);
        self.meta.push((start..self.buf.len(), to, self.group));
    }

    /// Lets `write` fill up to `max` bytes at the end of the buffer. `write` returns the length
    /// written and the destination, or `None` to append nothing. Returns what `write` returned.
    pub fn push_with<E>(
        &mut self,
        max: usize,
        write: impl FnOnce(&mut [u8]) -> Result<(usize, SocketAddr), E>,
    ) -> Result<(usize, SocketAddr), E> {
        let start = self.buf.len();
        self.buf.resize(start + max, 0);
        let res = write(&mut self.buf[start..]);
        match &res {
            Ok((len, to)) => {
                let end = start + (*len).min(max);
                self.buf.truncate(end);
                self.meta.push((start..end, *to, self.group));
            }
            Err(_) => self.buf.truncate(start),
        }
        res
    }

    /// Whether datagram `i + 1` continues datagram `i`: contiguous and of the same group.
    pub fn continues(&self, i: usize) -> bool {
        match (self.meta.get(i), self.meta.get(i + 1)) {
            (Some((a, _, ga)), Some((b, _, gb))) => a.end == b.start && ga == gb,
            _ => false,
        }
    }

    /// The `i`-th datagram and its destination.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let (range, to, _) = self.meta.get(i)?;
        Some((self.buf.get(range.clone())?, *to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn packs_datagrams_back_to_back_in_order() {
        let mut d = Datagrams::default();
        d.push(b"one", addr(1));
        let r: Result<_, ()> = d.push_with(10, |b| {
            b[..3].copy_from_slice(b"two");
            Ok((3, addr(2)))
        });
        assert_eq!(r, Ok((3, addr(2))));
        d.push(b"", addr(3));
        assert_eq!(d.len(), 3);
        let all: Vec<_> = (0..d.len()).filter_map(|i| d.get(i)).collect();
        assert_eq!(
            all,
            vec![
                (&b"one"[..], addr(1)),
                (&b"two"[..], addr(2)),
                (&b""[..], addr(3))
            ]
        );
        assert_eq!(d.get(1), Some((&b"two"[..], addr(2))));
        assert_eq!(d.get(3), None);
    }

    #[test]
    fn a_failed_write_appends_nothing() {
        let mut d = Datagrams::default();
        d.push(b"keep", addr(1));
        let r = d.push_with(1350, |b| {
            b[0] = 0xff;
            Err("done")
        });
        assert_eq!(r, Err("done"));
        assert_eq!(d.len(), 1);
        assert_eq!(d.get(0), Some((&b"keep"[..], addr(1))));
        // The next datagram starts right after the kept one, not after the failed space.
        d.push(b"next", addr(2));
        assert_eq!(d.get(1), Some((&b"next"[..], addr(2))));
    }

    #[test]
    fn an_overlong_length_is_clamped_to_the_space_given() {
        let mut d = Datagrams::default();
        let _ = d.push_with::<()>(4, |_| Ok((100, addr(1))));
        assert_eq!(d.get(0).map(|(b, _)| b.len()), Some(4));
    }

    #[test]
    fn clear_keeps_capacity_for_reuse() {
        let mut d = Datagrams::default();
        for i in 0..100u16 {
            d.push(&[0u8; 1200], addr(i));
        }
        let cap = d.buf.capacity();
        d.clear();
        assert!(d.is_empty());
        assert_eq!(d.buf.capacity(), cap);
    }
}
