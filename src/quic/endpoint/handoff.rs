//! Connections moving between shards: handing off (with the verified join) and adopting.

use super::*;

impl Endpoint {
    pub(super) fn hand_off(&mut self, id: ConnId, to: ShardId, join: HandoffJoin, t: Now) {
        let Some(entry) = self.conns.remove(&id) else {
            return;
        };
        self.move_out(id, to, entry, Some(join), t);
    }

    /// Hands a connection to `to` before it joined (a WebTransport CONNECT for a meeting of
    /// another shard).
    pub(super) fn hand_off_early(&mut self, id: ConnId, to: ShardId, t: Now) {
        // The core knows the connection only as one awaiting its join: forget it here.
        self.core.handle_connection_closed(id, t);
        let Some(entry) = self.conns.remove(&id) else {
            return;
        };
        self.move_out(id, to, entry, None, t);
    }

    pub(super) fn move_out(
        &mut self,
        id: ConnId,
        to: ShardId,
        entry: ConnEntry,
        join: Option<HandoffJoin>,
        t: Now,
    ) {
        let expires = t.mono + MOVED_TTL;
        let mut entry = entry;
        for cid in std::mem::take(&mut entry.cids) {
            if self.cids.get(&cid) == Some(&id) {
                self.cids.remove(&cid);
                self.moved.insert(cid, (to, expires));
            }
        }
        self.dirty.remove(&id);
        self.closing.remove(&id);
        self.stats.handoffs_out += 1;
        tracing::debug!(shard = %self.cfg.shard, conn = %id, to = %to, "handing connection to the meeting's shard");
        self.out
            .peers
            .push((to, PeerMsg::Handoff(Box::new(Handoff { id, entry, join }))));
    }

    /// A message from another shard, received at `now`.
    pub fn handle_peer(&mut self, msg: PeerMsg, now: Now) {
        match msg {
            PeerMsg::Datagram { mut data, from, to } => {
                self.stats.datagrams_from_peers += 1;
                self.route(&mut data, from, to, true, now);
            }
            PeerMsg::Handoff(h) => self.adopt(*h, now),
        }
    }

    pub(super) fn adopt(&mut self, h: Handoff, t: Now) {
        let Handoff {
            id,
            mut entry,
            join,
        } = h;
        self.stats.handoffs_in += 1;
        // Timers live in the owning shard's heap: re-arm here.
        entry.deadline = None;
        entry.cids = entry
            .conn
            .source_ids()
            .filter_map(|c| CidKey::new(c))
            .collect();
        for cid in &entry.cids {
            self.cids.insert(*cid, id);
        }
        // Issue CIDs that name this shard, as many as the peer accepts, so every older CID is
        // retired (RETIRE_PRIOR_TO) and the client's packets name their owner from now on;
        // the kernel steering program then delivers them here directly.
        let fresh = (entry.conn.scids_left() + entry.conn.active_scids()).clamp(1, 8);
        for _ in 0..fresh {
            let cid = self.fresh_cid();
            let mut token = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut token);
            if entry
                .conn
                .new_scid(
                    &quiche::ConnectionId::from_ref(&cid),
                    u128::from_be_bytes(token),
                    true,
                )
                .is_ok()
            {
                if let Some(key) = CidKey::new(&cid) {
                    self.cids.insert(key, id);
                    entry.cids.push(key);
                }
            }
        }
        // A session requested on the previous shard is answered here.
        let session_meeting = entry.app.on_adopted(self.core.is_draining());
        self.conns.insert(id, entry);
        match join {
            Some(join) => self.core.handle_adopted(id, join, t),
            None => self.core.handle_connection_opened(id, t),
        }
        if let Some(meeting) = session_meeting {
            self.core.bind_session_meeting(id, meeting);
        }
        // A WebTransport session accepted before the handoff: nothing else to do; its
        // stream bytes arrive with the connection's next packets.
        self.after_io(id, t);
    }
}
