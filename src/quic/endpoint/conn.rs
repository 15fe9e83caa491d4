//! Per-connection I/O: quiche ↔ streams ↔ core, frames out, close sequencing, timers and the
//! once-per-turn flush.

use super::*;

impl Endpoint {
    pub(super) fn recv(
        &mut self,
        id: ConnId,
        buf: &mut [u8],
        from: SocketAddr,
        to: SocketAddr,
        now: Now,
    ) {
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        if let Err(err) = e.conn.recv(buf, quiche::RecvInfo { from, to }) {
            if err != quiche::Error::Done {
                tracing::debug!(shard = %self.cfg.shard, conn = %id, error = %err, "recv failed");
            }
        }
        self.after_io(id, now);
    }

    /// Reads streams, feeds the core, writes frames; marks the connection for sending.
    pub(super) fn after_io(&mut self, id: ConnId, t: Now) {
        self.dirty.insert(id);
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        if !e.opened && (e.conn.is_established() || e.conn.is_in_early_data()) {
            e.opened = true;
            self.handshaking = self.handshaking.saturating_sub(1);
            self.stats.handshakes += 1;
            e.app = App::negotiated(e.conn.application_proto(), &self.cfg.allowed_origins);
            self.core.handle_connection_opened(id, t);
        }
        self.read_streams(id, t);
        self.drive(t);
    }

    pub(super) fn read_streams(&mut self, id: ConnId, t: Now) {
        // The buffer is lent out for the call (and put back), so it is not zeroed each time.
        let mut buf = self
            .read_buf
            .take()
            .unwrap_or_else(|| Box::new([0u8; READ_BUF]));
        self.read_streams_into(id, t, &mut buf[..]);
        self.read_buf = Some(buf);
    }

    pub(super) fn read_streams_into(&mut self, id: ConnId, t: Now, buf: &mut [u8]) {
        loop {
            let Some(e) = self.conns.get_mut(&id) else {
                return;
            };
            if !e.opened {
                return;
            }
            let Some(sid) = e.conn.stream_readable_next() else {
                break;
            };
            loop {
                let Some(e) = self.conns.get_mut(&id) else {
                    return;
                };
                let (n, fin) = match e.conn.stream_recv(sid, buf) {
                    Ok(v) => v,
                    Err(quiche::Error::StreamReset(_)) => {
                        if e.app.on_stream_reset(&mut e.conn, sid) {
                            self.drain_app(id, t);
                        }
                        break;
                    }
                    Err(_) => break,
                };
                match e.app.on_stream_data(&mut e.conn, sid, &buf[..n], fin) {
                    Received::Signaling => self.signaling_data(id, &buf[..n], fin, t),
                    Received::Events => self.drain_app(id, t),
                    Received::Ignored => {}
                    Received::Failed => break,
                }
                if n == 0 || fin {
                    break;
                }
            }
        }
    }

    /// Signaling bytes of `id` for the core; `fin`: the client finished its signaling stream,
    /// which ends the connection.
    fn signaling_data(&mut self, id: ConnId, data: &[u8], fin: bool, t: Now) {
        self.core.handle_stream_data(id, data, t);
        if fin {
            self.close_conn(id, 0, b"stream finished");
        }
    }

    /// Writes what the connection's application has to send and carries out its events
    /// (WebTransport: HTTP/3; native signaling has none).
    pub(super) fn drain_app(&mut self, id: ConnId, t: Now) {
        loop {
            let Some(e) = self.conns.get_mut(&id) else {
                return;
            };
            let ctx = AppCtx {
                shard: self.cfg.shard,
                shard_count: self.cfg.shard_count,
                conn: id,
                draining: self.core.is_draining(),
                signaling_finished: e.closing.as_ref().is_some_and(|c| c.fin_sent),
            };
            let Some(ev) = e.app.poll_event(&mut e.conn, &ctx) else {
                return;
            };
            match ev {
                AppEvent::Signaling { data, fin } => self.signaling_data(id, &data, fin, t),
                AppEvent::SessionMeeting(meeting) => self.core.bind_session_meeting(id, meeting),
                AppEvent::MoveTo(owner) => {
                    self.hand_off_early(id, owner, t);
                    return;
                }
                AppEvent::Closed => self.close_conn(id, 0, b"session closed"),
            }
        }
    }

    pub(super) fn close_conn(&mut self, id: ConnId, code: u64, reason: &[u8]) {
        if let Some(e) = self.conns.get_mut(&id) {
            let _ = e.conn.close(true, e.app.close_code(code), reason);
            self.dirty.insert(id);
        }
    }

    /// Runs queued core work and carries out the core's actions (also after a command given
    /// through [`Endpoint::core_mut`]).
    pub fn drive(&mut self, t: Now) {
        self.core.process_all(t);
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Close {
                    conn,
                    code,
                    reason,
                    linger,
                } => {
                    if let Some(e) = self.conns.get_mut(&conn) {
                        // Native connections close at once; a WebTransport session still ends
                        // with its close capsule, which has to arrive before the connection
                        // closes, so it takes the lingering path.
                        if !linger && e.closing.is_none() && e.app.is_native() {
                            let _ = e
                                .conn
                                .close(true, e.app.close_code(code), reason.as_bytes());
                            self.dirty.insert(conn);
                            continue;
                        }
                        if e.closing.is_none() {
                            e.closing = Some(Closing {
                                code,
                                reason,
                                fin_sent: false,
                                close_after: None,
                                hard_deadline: t.mono + Duration::from_secs(2),
                                session_closed: false,
                            });
                            self.closing.insert(conn);
                            self.dirty.insert(conn);
                        }
                    }
                }
                Action::Handoff { conn, to, join } => self.hand_off(conn, to, *join, t),
                Action::Notify(ev) => self.out.events.push(ev),
            }
        }
        while let Some(conn) = self.core.poll_writable() {
            self.write_frames(conn, t);
            self.dirty.insert(conn);
        }
    }

    pub(super) fn write_frames(&mut self, id: ConnId, t: Now) {
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(sid) = e.app.signaling_stream() else {
            return;
        };
        loop {
            let (frame, off) = match e.partial.take() {
                Some(p) => p,
                None => match self.core.pop_frame(id) {
                    Some(f) => (f, 0),
                    None => break,
                },
            };
            match e.conn.stream_send(sid, &frame[off..], false) {
                Ok(n) if off + n == frame.len() => {}
                Ok(n) => {
                    e.partial = Some((frame, off + n));
                    break;
                }
                Err(quiche::Error::Done) => {
                    e.partial = Some((frame, off));
                    break;
                }
                Err(_) => break,
            }
        }
        if let Some(c) = &mut e.closing {
            if !c.fin_sent
                && e.partial.is_none()
                && self.core.queued_frames(id) == 0
                && e.conn.stream_send(sid, b"", true).is_ok()
            {
                {
                    c.fin_sent = true;
                    c.close_after = Some(t.mono + close_grace(&e.conn));
                }
            }
        }
    }

    /// Fires due connection and core timers and sweeps keep-alives at `t`.
    pub fn handle_timeout(&mut self, t: Now) {
        while let Some(std::cmp::Reverse((at, id))) = self.timers.peek().copied() {
            if at > t.mono {
                break;
            }
            self.timers.pop();
            if let Some(e) = self.conns.get_mut(&id) {
                // Entries that are not the armed one are stale: skip them.
                if e.deadline == Some(at) {
                    e.deadline = None;
                    match e.conn.timeout_instant() {
                        Some(d) if d <= t.mono => {
                            e.conn.on_timeout();
                            self.dirty.insert(id);
                        }
                        Some(d) => {
                            e.deadline = Some(d);
                            self.timers.push(std::cmp::Reverse((d, id)));
                        }
                        None => {}
                    }
                }
            }
        }
        self.core.handle_timeout(t);
        let closing: Vec<ConnId> = self.closing.iter().copied().collect();
        for id in closing {
            let Some(e) = self.conns.get_mut(&id) else {
                self.closing.remove(&id);
                continue;
            };
            let Some(c) = &mut e.closing else { continue };
            let due = c.close_after.is_some_and(|a| t.mono >= a) || t.mono >= c.hard_deadline;
            if due && !e.conn.is_closed() && !e.conn.is_draining() {
                // WebTransport: end the session first, with the signaling code and reason in
                // its CLOSE_WEBTRANSPORT_SESSION capsule (what a browser's `closed` reports),
                // and close the connection a grace later, once the capsule got there.
                if !c.session_closed {
                    c.session_closed = true;
                    if e.app.close_session(c.code, c.reason) {
                        let at = t.mono + close_grace(&e.conn);
                        c.close_after = Some(at);
                        c.hard_deadline = c.hard_deadline.max(at);
                        self.dirty.insert(id);
                        continue;
                    }
                }
                let code = e.app.close_code(c.code);
                let _ = e.conn.close(true, code, c.reason.as_bytes());
                self.closing.remove(&id);
                self.dirty.insert(id);
            } else if !c.fin_sent {
                self.write_frames(id, t);
                self.dirty.insert(id);
            }
        }
        let sweep_every = if self.cfg.keep_alive.is_zero() {
            Duration::from_secs(1)
        } else {
            (self.cfg.keep_alive / 2).min(Duration::from_secs(1))
        };
        if t.mono.saturating_duration_since(self.last_sweep) >= sweep_every {
            self.last_sweep = t.mono;
            self.sweep(t.mono);
        }
        self.drive(t);
    }

    pub(super) fn sweep(&mut self, now: Instant) {
        self.moved.retain(|_, (_, exp)| *exp > now);
        if self.cfg.keep_alive.is_zero() {
            return;
        }
        for (id, e) in &mut self.conns {
            if e.opened && now.saturating_duration_since(e.last_send) >= self.cfg.keep_alive {
                let _ = e.conn.send_ack_eliciting();
                self.dirty.insert(*id);
            }
        }
    }

    /// Generates packets for every connection touched since the last call and reaps closed ones.
    /// Each connection is flushed once however many datagrams touched it, so quiche packs
    /// every frame queued since the last flush into as few packets as it can.
    pub fn flush(&mut self, t: Now) {
        let mut batch = std::mem::take(&mut self.flushing);
        while !self.dirty.is_empty() {
            batch.extend(self.dirty.drain());
            for id in batch.drain(..) {
                self.flush_one(id, t);
            }
        }
        self.flushing = batch;
    }

    pub(super) fn flush_one(&mut self, id: ConnId, t: Now) {
        // Frames may be waiting for flow-control credit that just arrived.
        if self.core.queued_frames(id) > 0
            || self.conns.get(&id).is_some_and(|e| e.partial.is_some())
        {
            self.write_frames(id, t);
        }
        self.drain_app(id, t);
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        // This connection's packets may share GSO messages with each other, not with others'.
        self.out.packets.new_group();
        loop {
            let conn = &mut e.conn;
            match self.out.packets.push_with(MAX_DATAGRAM, |buf| {
                conn.send(buf).map(|(len, info)| (len, info.to))
            }) {
                Ok(_) => {
                    e.last_send = t.mono;
                }
                Err(quiche::Error::Done) => break,
                Err(err) => {
                    tracing::debug!(shard = %self.cfg.shard, conn = %id, error = %err, "send failed");
                    let _ = e.conn.close(false, 0x1, b"internal error");
                    break;
                }
            }
        }
        if e.conn.is_closed() {
            self.reap(id, t);
            return;
        }
        while let Some(retired) = e.conn.retired_scid_next() {
            let Some(retired) = CidKey::new(retired.as_ref()) else {
                continue;
            };
            if self.cids.get(&retired) == Some(&id) {
                self.cids.remove(&retired);
            }
            e.cids.retain(|c| *c != retired);
        }
        // Arm the heap only when the connection's deadline moves earlier than the entry
        // already armed; a later deadline is found when that entry fires (on_tick re-arms).
        // Most sends push the idle/PTO deadline later, so this keeps the heap to about one
        // entry per connection instead of one per flush.
        if let Some(d) = e.conn.timeout_instant() {
            if e.deadline.is_none_or(|armed| d < armed) {
                e.deadline = Some(d);
                self.timers.push(std::cmp::Reverse((d, id)));
            }
        }
    }

    pub(super) fn reap(&mut self, id: ConnId, t: Now) {
        if let Some(e) = self.conns.remove(&id) {
            if !e.opened {
                self.handshaking = self.handshaking.saturating_sub(1);
            }
            if let Some(err) = e.conn.peer_error() {
                tracing::debug!(shard = %self.cfg.shard, conn = %id, code = err.error_code, "peer closed");
            }
            for cid in &e.cids {
                // A client-chosen CID may have been reused by another connection since.
                if self.cids.get(cid) == Some(&id) {
                    self.cids.remove(cid);
                }
            }
        }
        self.closing.remove(&id);
        self.core.handle_connection_closed(id, t);
        self.drive(t);
    }
}

/// Time between the last signaling bytes (or the session close capsule) and the next close
/// step: about three round trips, so they are delivered and acknowledged first.
fn close_grace(conn: &quiche::Connection) -> Duration {
    let rtt = conn
        .path_stats()
        .next()
        .map_or(Duration::from_millis(100), |p| p.rtt);
    (rtt * 3).clamp(Duration::from_millis(50), Duration::from_secs(1))
}
