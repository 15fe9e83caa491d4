//! Datagram routing by destination CID, forwarding to the owning shard, stateless answers
//! (Version Negotiation, Retry) and accepting new connections.

use super::*;

impl Endpoint {
    pub(super) fn route(
        &mut self,
        buf: &mut [u8],
        from: SocketAddr,
        to: SocketAddr,
        forwarded: bool,
        now: Now,
    ) {
        let hdr = match quiche::Header::from_slice(buf, CID_LEN) {
            Ok(h) => h,
            Err(_) => {
                self.count_drops(DatagramDrop::Unparseable, 1);
                return;
            }
        };
        let dcid: &[u8] = &hdr.dcid;
        let Some(key) = CidKey::new(dcid) else {
            self.count_drops(DatagramDrop::Unparseable, 1);
            return;
        };
        if let Some(id) = self.cids.get(&key).copied() {
            self.recv(id, buf, from, to, now);
            return;
        }
        if !forwarded {
            let owner = shard_of_cid(dcid, self.cfg.shard_count)
                .filter(|s| *s != self.cfg.shard)
                .or_else(|| self.moved.get(&key).map(|(s, _)| *s));
            if let Some(owner) = owner {
                self.stats.datagrams_forwarded += 1;
                self.out.peers.push((
                    owner,
                    PeerMsg::Datagram {
                        data: buf.to_vec(),
                        from,
                        to,
                    },
                ));
                return;
            }
        }
        // RFC 9000 §14.1/§5.2.2: a datagram that could open a connection must be at least 1200
        // bytes; smaller ones get no answer at all (no Version Negotiation, no Retry), so the
        // server can never be used to amplify.
        if buf.len() < MIN_INITIAL_DATAGRAM {
            let why = if hdr.ty == quiche::Type::Initial {
                DatagramDrop::TooShort
            } else {
                DatagramDrop::UnknownConnection
            };
            self.count_drops(why, 1);
            return;
        }
        if !quiche::version_is_supported(hdr.version) {
            self.out.packets.new_group();
            let _ = self.out.packets.push_with(MAX_DATAGRAM, |out| {
                quiche::negotiate_version(&hdr.scid, &hdr.dcid, out).map(|len| (len, from))
            });
            return;
        }
        if hdr.ty != quiche::Type::Initial {
            self.count_drops(DatagramDrop::UnknownConnection, 1);
            return;
        }
        if self.stopping {
            self.count_drops(DatagramDrop::Stopping, 1);
            return;
        }
        let handshaking = self.handshaking;
        if handshaking >= self.cfg.max_handshakes {
            self.stats.handshakes_shed += 1;
            return;
        }
        let now_secs = now.unix_ms / 1000;
        let mut validated_odcid: Option<Vec<u8>> = None;
        if !hdr.token.as_ref().is_none_or(|t| t.is_empty()) {
            let token = hdr.token.clone().unwrap_or_default();
            match self.cfg.retry_key.validate(&from, &token, now_secs) {
                Some(odcid) => validated_odcid = Some(odcid),
                None => {
                    // A token we cannot validate: drop (RFC 9000 §8.1.3 allows closing with
                    // INVALID_TOKEN; dropping keeps us silent towards spoofed sources).
                    self.stats.bad_retry_tokens += 1;
                    return;
                }
            }
        }
        let need_retry = self.cfg.retry_always || handshaking >= self.cfg.retry_threshold;
        if need_retry && validated_odcid.is_none() {
            let new_scid = self.fresh_cid();
            let token = self.cfg.retry_key.mint(&from, &hdr.dcid, now_secs);
            self.out.packets.new_group();
            let sent = self.out.packets.push_with(MAX_DATAGRAM, |out| {
                quiche::retry(
                    &hdr.scid,
                    &hdr.dcid,
                    &quiche::ConnectionId::from_ref(&new_scid),
                    &token,
                    hdr.version,
                    out,
                )
                .map(|len| (len, from))
            });
            if sent.is_ok() {
                self.stats.retries += 1;
            }
            return;
        }
        // After a Retry the client uses the CID we chose in it as DCID; keep that one.
        let scid: [u8; CID_LEN] = match (&validated_odcid, <[u8; CID_LEN]>::try_from(&hdr.dcid[..]))
        {
            (Some(_), Ok(c)) if shard_of_cid(&c, self.cfg.shard_count) == Some(self.cfg.shard) => c,
            _ => self.fresh_cid(),
        };
        let qscid = quiche::ConnectionId::from_ref(&scid);
        let original = validated_odcid
            .as_deref()
            .map(quiche::ConnectionId::from_ref);
        let mut conn = match quiche::accept(&qscid, original.as_ref(), to, from, &mut self.qcfg) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(shard = %self.cfg.shard, error = %e, "accept failed");
                self.count_drops(DatagramDrop::AcceptFailed, 1);
                return;
            }
        };
        if self.conns.len() >= self.cfg.max_connections {
            self.stats.refused += 1;
            let _ = conn.close(false, 0x2, b"server busy");
        }
        self.next_conn += 1;
        let id = ConnId::new(self.cfg.shard, self.next_conn);
        let scid_key = CidKey::new(&scid).unwrap_or(key);
        self.cids.insert(scid_key, id);
        self.cids.insert(key, id);
        self.handshaking += 1;
        self.conns.insert(
            id,
            ConnEntry {
                conn,
                app: App::native(),
                opened: false,
                partial: None,
                closing: None,
                last_send: now.mono,
                deadline: None,
                cids: vec![scid_key, key],
            },
        );
        self.recv(id, buf, from, to, now);
    }

    pub(super) fn fresh_cid(&mut self) -> [u8; CID_LEN] {
        let mut random = [0u8; CID_LEN - 5];
        rand::thread_rng().fill_bytes(&mut random);
        encode_cid(self.cfg.node_id, self.cfg.shard, &random)
    }
}
