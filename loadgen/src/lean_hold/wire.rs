//! A holder's connections on the wire: readiness, the hand-written WebSocket client side
//! (masked frames out, server frames in), and the Herald frames each connection handles.

use super::{Holder, Outcome, Phase, now_us, xorshift};
use herald_proto::frame::decode_server;
use herald_proto::http::{UpgradeResponse, parse_upgrade_response};
use herald_proto::ws::{self, opcode};
use herald_proto::{ClientFrame, ServerFrame};
use std::io::{ErrorKind, Read, Write};

impl Holder {
    pub(super) fn ready(&mut self, i: usize, writable: bool, readable: bool) {
        if self.conns[i].sock.is_none() {
            return;
        }
        if self.conns[i].phase == Phase::Connecting {
            if !writable && !readable {
                return;
            }
            let sock = self.conns[i].sock.as_ref();
            let connected =
                sock.is_some_and(|s| matches!(s.take_error(), Ok(None)) && s.peer_addr().is_ok());
            if !connected {
                let why = sock
                    .and_then(|s| s.take_error().ok().flatten())
                    .map_or_else(|| "connect failed".to_owned(), |e| format!("connect: {e}"));
                self.note_error(why);
                self.close(i, None);
                return;
            }
            let _ = sock.map(|s| s.set_nodelay(true));
            // Request head, HELLO, SUBSCRIBE and the PING barrier in one write.
            let ns = (self.args.first + i as u64) % self.args.namespaces.max(1);
            let mut out = self.request.clone();
            let hello = std::mem::take(&mut self.hello);
            self.frame(&hello, &mut out);
            self.hello = hello;
            let cursor = self.conns[i].last_sjid;
            self.frame(
                &ClientFrame::Subscribe(vec![(ns, cursor)]).to_vec(),
                &mut out,
            );
            self.frame(&ClientFrame::Ping(i as u64 + 1).to_vec(), &mut out);
            self.conns[i].phase = Phase::Upgrading;
            if !self.send(i, &out) {
                self.note_error("write of the upgrade failed".into());
                self.close(i, None);
                return;
            }
        } else if writable && self.outbox.contains_key(&i) {
            let pending = self.outbox.remove(&i).unwrap_or_default();
            if !self.send(i, &pending) {
                self.close(i, None);
                return;
            }
        }
        if readable {
            self.read(i);
        }
    }

    /// Masks `payload` as one binary client frame into `out`.
    pub(super) fn frame(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        let m = xorshift(&mut self.rng).to_le_bytes();
        ws::encode_client_frame(opcode::BINARY, payload, [m[0], m[1], m[2], m[3]], out);
    }

    /// Writes `bytes` (after anything pending); keeps what the socket did not take. False: the
    /// socket failed.
    pub(super) fn send(&mut self, i: usize, bytes: &[u8]) -> bool {
        let Some(sock) = self.conns[i].sock.as_mut() else {
            return false;
        };
        if let Some(pending) = self.outbox.get_mut(&i) {
            pending.extend_from_slice(bytes);
            return true;
        }
        let mut at = 0;
        while at < bytes.len() {
            match sock.write(&bytes[at..]) {
                Ok(0) => return false,
                Ok(n) => at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.outbox.insert(i, bytes[at..].to_vec());
                    return true;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    pub(super) fn read(&mut self, i: usize) {
        let mut buf = std::mem::take(&mut self.scratch);
        let mut outcome = Outcome::Keep;
        'reads: loop {
            let mut len = 0;
            if let Some(p) = self.partial.remove(&i) {
                if p.len() > buf.len() / 2 {
                    self.note_error("server frame too large for the scratch buffer".into());
                    outcome = Outcome::Close(None);
                    break;
                }
                buf[..p.len()].copy_from_slice(&p);
                len = p.len();
            }
            let Some(sock) = self.conns[i].sock.as_mut() else {
                break;
            };
            let n = match sock.read(&mut buf[len..]) {
                Ok(0) => {
                    outcome = Outcome::Close(None);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if len > 0 {
                        self.partial.insert(i, buf[..len].to_vec());
                    }
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {
                    if len > 0 {
                        self.partial.insert(i, buf[..len].to_vec());
                    }
                    continue;
                }
                Err(_) => {
                    outcome = Outcome::Close(None);
                    break;
                }
            };
            len += n;
            let mut at = 0;
            while at < len {
                match self.consume(i, &buf[at..len]) {
                    Ok((0, _)) => {
                        self.partial.insert(i, buf[at..len].to_vec());
                        continue 'reads;
                    }
                    Ok((used, Outcome::Keep)) => at += used,
                    Ok((_, other)) => {
                        outcome = other;
                        break 'reads;
                    }
                    Err(e) => {
                        self.note_error(e);
                        outcome = Outcome::Close(None);
                        break 'reads;
                    }
                }
            }
        }
        self.scratch = buf;
        match outcome {
            Outcome::Keep => {}
            Outcome::Close(after) => self.close(i, after),
            Outcome::Fatal => self.kill(i),
        }
    }

    /// Handles what is at the front of `bytes`: the response head, or one WebSocket frame.
    /// Returns the bytes used (0: incomplete).
    pub(super) fn consume(&mut self, i: usize, bytes: &[u8]) -> Result<(usize, Outcome), String> {
        if self.conns[i].phase == Phase::Upgrading {
            return match parse_upgrade_response(bytes, &self.accept) {
                Ok(None) => Ok((0, Outcome::Keep)),
                Ok(Some(UpgradeResponse::Switched { head_len })) => {
                    self.conns[i].phase = Phase::Subscribing;
                    Ok((head_len, Outcome::Keep))
                }
                Ok(Some(UpgradeResponse::Refused {
                    status,
                    retry_after,
                })) => {
                    if status == 503 {
                        self.status.http_503 += 1;
                        self.status.http_503_since_mark += 1;
                    } else {
                        self.note_error(format!("upgrade refused with HTTP {status}"));
                    }
                    let after = retry_after.map(|s| s * 1000);
                    Ok((bytes.len(), Outcome::Close(after.or(Some(0)))))
                }
                Err(e) => Err(format!("upgrade: {e}")),
            };
        }
        let header = match ws::parse_server_header(bytes, herald_proto::MAX_SERVER_FRAME) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok((0, Outcome::Keep)),
            Err(e) => return Err(format!("server frame: {e}")),
        };
        let total = header.header_len + header.payload_len as usize;
        if bytes.len() < total {
            return Ok((0, Outcome::Keep));
        }
        let payload = &bytes[header.header_len..total];
        let outcome = match header.opcode {
            opcode::BINARY if header.fin => self.message(i, payload)?,
            opcode::PING => {
                let m = xorshift(&mut self.rng).to_le_bytes();
                let mut out = Vec::with_capacity(payload.len() + 6);
                ws::encode_client_frame(opcode::PONG, payload, [m[0], m[1], m[2], m[3]], &mut out);
                if self.send(i, &out) {
                    Outcome::Keep
                } else {
                    Outcome::Close(None)
                }
            }
            opcode::PONG => Outcome::Keep,
            opcode::CLOSE => Outcome::Close(None),
            other => return Err(format!("unexpected WebSocket opcode {other:#x}")),
        };
        Ok((total, outcome))
    }

    /// One Herald frame from the server.
    pub(super) fn message(&mut self, i: usize, payload: &[u8]) -> Result<Outcome, String> {
        let frame = decode_server(payload).map_err(|e| format!("server frame: {e}"))?;
        match frame {
            ServerFrame::Welcome { .. } => {}
            ServerFrame::Changed(pairs) => {
                self.status.changed_frames += 1;
                let target = self.status.target;
                let c = &mut self.conns[i];
                c.changed = c.changed.saturating_add(1);
                let before = c.last_sjid;
                for (_, sjid) in pairs {
                    c.last_sjid = c.last_sjid.max(sjid);
                }
                if target > 0 && before < target && c.last_sjid >= target {
                    self.status.reached += 1;
                    self.status.last_reach_us = now_us();
                }
                self.dirty = true;
            }
            ServerFrame::Pong(nonce) => {
                if self.conns[i].phase == Phase::Subscribing && nonce == i as u64 + 1 {
                    let c = &mut self.conns[i];
                    c.phase = Phase::Open;
                    c.attempts = 0;
                    self.in_setup -= 1;
                    self.status.open += 1;
                    self.status.sessions += 1;
                    self.status.sessions_since_mark += 1;
                    self.status.last_session_us = now_us();
                    self.dirty = true;
                }
            }
            ServerFrame::Ping(nonce) => {
                let mut out = Vec::with_capacity(16);
                self.frame(&ClientFrame::Pong(nonce).to_vec(), &mut out);
                if !self.send(i, &out) {
                    return Ok(Outcome::Close(None));
                }
            }
            ServerFrame::Reset(ns) => {
                self.status.resets += ns.len() as u64;
                self.dirty = true;
            }
            ServerFrame::Denied { ns, .. } => {
                self.status.denied += ns.len() as u64;
                self.dirty = true;
            }
            ServerFrame::Goaway {
                reconnect_after_ms, ..
            } => {
                self.status.goaways += 1;
                return Ok(Outcome::Close(Some(reconnect_after_ms)));
            }
            ServerFrame::Error { code, message } => {
                self.status.errors += 1;
                self.note_error(format!("ERROR {code}: {message}"));
                return Ok(Outcome::Fatal);
            }
        }
        Ok(Outcome::Keep)
    }
}
