//! The datagram router: `quiche::Header::from_slice`, `router::shard_of_cid` and the kernel
//! steering program (`runtime::steering::program`) on arbitrary packets.
//!
//! Input: `[shard count selector: u8][packet…]`. The seeds in `corpus/cid_router` are real
//! Initial, Handshake and 1-RTT packets of a loopback handshake with server CIDs in our layout.
//!
//! Checked: no panic; a CID the router claims is 16 bytes, starts with the config octet and
//! names a shard below the count; the steering program (interpreted here as the kernel would)
//! agrees with the router on every packet whose header parses; `encode_cid` round-trips; the
//! meeting placement stays within the shard count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mc::core::ids::ShardId;
use mc::core::router::{encode_cid, shard_of_cid, Router, CID_LEN};

/// Runs a classic BPF program the way the kernel does for SO_ATTACH_REUSEPORT_CBPF, for the
/// instructions the steering program uses. An out-of-bounds load ends the program with 0.
fn run_cbpf(prog: &[libc::sock_filter], pkt: &[u8]) -> u32 {
    let (mut a, mut pc) = (0u32, 0usize);
    loop {
        let Some(i) = prog.get(pc) else {
            return 0;
        };
        pc += 1;
        match i.code {
            0x30 => match pkt.get(i.k as usize) {
                Some(b) => a = u32::from(*b),
                None => return 0,
            },
            0x28 => match pkt.get(i.k as usize..i.k as usize + 2) {
                Some(h) => a = u32::from(u16::from_be_bytes([h[0], h[1]])),
                None => return 0,
            },
            0x45 => pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf }),
            0x15 => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
            0x16 => return a,
            0x06 => return i.k,
            other => panic!("steering program uses opcode {other:#x} this interpreter lacks"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, pkt)) = data.split_first() else {
        return;
    };
    let shards = u16::from(sel % 64) + 1;
    let steered = run_cbpf(&mc::runtime::steering::program(), pkt);

    let mut buf = pkt.to_vec();
    if let Ok(hdr) = quiche::Header::from_slice(&mut buf, CID_LEN) {
        let dcid: &[u8] = &hdr.dcid;
        let routed = shard_of_cid(dcid, shards);
        if let Some(s) = routed {
            assert_eq!(dcid.len(), CID_LEN);
            assert_eq!(dcid[0], CID_LEN as u8 - 1);
            assert!(s.0 < shards);
            assert_eq!(
                steered,
                u32::from(s.0),
                "kernel steering disagrees with the router"
            );
        } else if steered < u32::from(shards) && dcid.len() == CID_LEN {
            // The kernel picked a valid shard for a CID the router does not claim: only fine
            // for packets the program could not read fully (it then returns 0).
            assert_eq!(steered, 0, "kernel steers a CID the router does not claim");
        }
    }

    // Round trip of our own CIDs, and placement bounds, from the same bytes.
    if pkt.len() >= 13 {
        let node = u16::from_be_bytes([pkt[0], pkt[1]]);
        let mut random = [0u8; CID_LEN - 5];
        random.copy_from_slice(&pkt[2..13]);
        let shard = ShardId(u16::from(pkt[0]) % shards);
        let cid = encode_cid(node, shard, &random);
        assert_eq!(shard_of_cid(&cid, shards), Some(shard));
        let mut short = vec![0x40];
        short.extend_from_slice(&cid);
        assert_eq!(
            run_cbpf(&mc::runtime::steering::program(), &short),
            u32::from(shard.0)
        );
    }
    if let Ok(id) = std::str::from_utf8(pkt) {
        assert!(Router::new(shards).shard_for_str(id).0 < shards);
    }
});
