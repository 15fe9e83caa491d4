//! Kernel-side steering of datagrams to the shard that owns their connection.
//!
//! All shard sockets form one SO_REUSEPORT group, bound in shard order, so group index = shard
//! id. A classic BPF program (SO_ATTACH_REUSEPORT_CBPF) reads the destination connection ID
//! of each datagram and, when it is one of ours (see `core::router`), returns the shard encoded
//! in it; anything else (a client-chosen Initial DCID, garbage) returns an out-of-range index
//! and the kernel falls back to its 4-tuple hash. Without this, every datagram of a connection
//! handed to another shard would land on the accepting shard and be forwarded in user space.

use socket2::Socket;

use crate::core::router::CID_LEN;

const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

const LD_B_ABS: u16 = 0x30;
const LD_H_ABS: u16 = 0x28;
const JSET_K: u16 = 0x45;
const JEQ_K: u16 = 0x15;
const RET_A: u16 = 0x16;
const RET_K: u16 = 0x06;

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The steering program. Offsets are into the UDP payload (the QUIC packet).
pub fn program() -> Vec<libc::sock_filter> {
    let config_octet = (CID_LEN as u32) - 1;
    vec![
        /* 0 */ ins(LD_B_ABS, 0, 0, 0), // first byte
        /* 1 */ ins(JSET_K, 4, 0, 0x80), // long header → 6
        // Short header: DCID starts at byte 1.
        /* 2 */ ins(LD_B_ABS, 0, 0, 1),
        /* 3 */ ins(JEQ_K, 0, 8, config_octet), // not ours → 12
        /* 4 */ ins(LD_H_ABS, 0, 0, 1 + 3), // shard id
        /* 5 */ ins(RET_A, 0, 0, 0),
        // Long header: DCID length at byte 5, DCID at byte 6.
        /* 6 */
        ins(LD_B_ABS, 0, 0, 5),
        /* 7 */ ins(JEQ_K, 0, 4, CID_LEN as u32), // → 12
        /* 8 */ ins(LD_B_ABS, 0, 0, 6),
        /* 9 */ ins(JEQ_K, 0, 2, config_octet), // → 12
        /* 10 */ ins(LD_H_ABS, 0, 0, 6 + 3),
        /* 11 */ ins(RET_A, 0, 0, 0),
        /* 12 */ ins(RET_K, 0, 0, u32::MAX), // out of range: kernel hashes
    ]
}

/// Attaches the program to the reuseport group of `socket`.
pub fn attach(socket: &Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut prog = program();
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: fprog points to a valid program that outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::ShardId;
    use crate::core::router::encode_cid;

    /// A tiny interpreter of the instructions the program uses, to check its logic.
    fn run(prog: &[libc::sock_filter], pkt: &[u8]) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LD_B_ABS => match pkt.get(i.k as usize) {
                    Some(b) => a = u32::from(*b),
                    None => return 0,
                },
                LD_H_ABS => match pkt.get(i.k as usize..i.k as usize + 2) {
                    Some(h) => a = u32::from(u16::from_be_bytes([h[0], h[1]])),
                    None => return 0,
                },
                JSET_K => pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf }),
                JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                RET_A => return a,
                RET_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn steers_our_cids_and_leaves_the_rest_to_the_hash() {
        let prog = program();
        let cid = encode_cid(0, ShardId(3), &[0xaa; CID_LEN - 5]);
        let mut short = vec![0x40];
        short.extend_from_slice(&cid);
        short.extend_from_slice(&[0; 20]);
        assert_eq!(run(&prog, &short), 3);
        let mut long = vec![0xc0, 0, 0, 0, 1, CID_LEN as u8];
        long.extend_from_slice(&cid);
        long.extend_from_slice(&[8, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(run(&prog, &long), 3);
        // A client-chosen 8-byte Initial DCID: hashed.
        let initial = [0xc3, 0, 0, 0, 1, 8, 9, 9, 9, 9, 9, 9, 9, 9, 0];
        assert_eq!(run(&prog, &initial), u32::MAX);
        // A short header whose DCID is not ours: hashed.
        let mut foreign = vec![0x40, 0x99];
        foreign.extend_from_slice(&[0; 20]);
        assert_eq!(run(&prog, &foreign), u32::MAX);
    }

    #[test]
    fn attaches_on_this_kernel() {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        attach(&s).unwrap();
    }
}
