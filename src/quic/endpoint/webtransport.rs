//! The WebTransport application: HTTP/3 events of a session mapped onto the same core seam as
//! native signaling, and the early handoff of a session whose meeting lives on another shard.

use super::*;

impl Endpoint {
    /// Writes what HTTP/3 wants written and acts on its events.
    pub(super) fn drain_h3(&mut self, id: ConnId, t: Now) {
        loop {
            let Some(e) = self.conns.get_mut(&id) else {
                return;
            };
            let App::Wt(wt) = &mut e.app else {
                return;
            };
            while let Some(tx) = wt.h3.poll_transmit() {
                wt.pending.push_back((tx.stream_id, tx.data, tx.fin));
            }
            while let Some((sid, data, fin)) = wt.pending.pop_front() {
                match e.conn.stream_send(sid, &data, fin) {
                    Ok(n) if n == data.len() => {}
                    Ok(n) => {
                        wt.pending.push_front((sid, data[n..].to_vec(), fin));
                        break;
                    }
                    Err(quiche::Error::Done) => {
                        wt.pending.push_front((sid, data, fin));
                        break;
                    }
                    Err(_) => {}
                }
            }
            // Datagrams are not part of signaling: discard what arrives.
            let mut scratch = [0u8; 64];
            while e.conn.dgram_recv(&mut scratch).is_ok() {}
            let Some(ev) = wt.h3.poll_event() else {
                return;
            };
            tracing::debug!(shard = %self.cfg.shard, conn = %id, event = ?ev, "http/3 event");
            match ev {
                H3Event::SessionRequested {
                    session_id,
                    meeting_id,
                    ..
                } => {
                    if wt.session.is_some() {
                        wt.h3.reject_session(session_id, 429);
                        continue;
                    }
                    if self.core.is_draining() {
                        wt.h3.reject_session(session_id, 503);
                        continue;
                    }
                    wt.session = Some(session_id);
                    let owner = crate::core::router::Router::new(self.cfg.shard_count)
                        .shard_for(&meeting_id);
                    if owner == self.cfg.shard {
                        wt.h3.accept_session(session_id);
                        self.core.bind_session_meeting(id, meeting_id);
                    } else {
                        wt.meeting = Some(meeting_id);
                        // Move the connection to the meeting's shard before any signaling;
                        // that shard accepts the session.
                        wt.requested = Some(session_id);
                        self.hand_off_early(id, owner, t);
                        return;
                    }
                }
                H3Event::StreamData {
                    session_id,
                    stream_id,
                    data,
                    fin,
                } => {
                    if wt.session != Some(session_id) {
                        continue;
                    }
                    match wt.stream {
                        None => wt.stream = Some(stream_id),
                        Some(s) if s != stream_id => {
                            // One signaling stream per session.
                            let _ =
                                e.conn
                                    .stream_shutdown(stream_id, quiche::Shutdown::Read, 0x101);
                            let _ =
                                e.conn
                                    .stream_shutdown(stream_id, quiche::Shutdown::Write, 0x101);
                            continue;
                        }
                        Some(_) => {}
                    }
                    self.core.handle_stream_data(id, &data, t);
                    if fin {
                        self.close_conn(id, 0, b"stream finished");
                    }
                }
                H3Event::SessionClosed { .. } => {
                    self.close_conn(id, 0, b"session closed");
                }
                H3Event::ResetStream { stream_id, code } => {
                    let _ = e
                        .conn
                        .stream_shutdown(stream_id, quiche::Shutdown::Read, code.0);
                    // The signaling stream already ended cleanly (final frame + FIN) before the
                    // session closed: a reset would discard what is not yet acknowledged.
                    let finished = wt.stream == Some(stream_id)
                        && e.closing.as_ref().is_some_and(|c| c.fin_sent);
                    if stream_id & 0x2 == 0 && !finished {
                        let _ = e
                            .conn
                            .stream_shutdown(stream_id, quiche::Shutdown::Write, code.0);
                    }
                }
            }
        }
    }

    /// Hands a connection to `to` before it joined (WebTransport CONNECT for a foreign meeting).
    pub(super) fn hand_off_early(&mut self, id: ConnId, to: ShardId, t: Now) {
        // The core knows the connection only as one awaiting its join: forget it here.
        self.core.handle_connection_closed(id, t);
        let Some(entry) = self.conns.remove(&id) else {
            return;
        };
        self.move_out(id, to, entry, None, t);
    }
}
