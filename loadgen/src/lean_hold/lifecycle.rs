//! A holder's connections from open to close: opening at the configured rate from explicit
//! source ports, the reconnect backoff, closing, and the sweep of set-ups that took too long.

use super::{Holder, Phase, SETUP_TIMEOUT, xorshift};
use mio::net::TcpStream;
use mio::{Interest, Token};
use std::cmp::Reverse;
use std::io::ErrorKind;
use std::net::SocketAddr;

impl Holder {
    /// Starts connections not opened yet, paced by `--rate` and bounded by `--parallel`.
    pub(super) fn open_due(&mut self) {
        let allowed = if self.args.rate > 0 {
            let secs = self.started.elapsed().as_secs_f64();
            ((secs * self.args.rate as f64) as usize + 1).min(self.conns.len())
        } else {
            self.conns.len()
        };
        while self.next_open < allowed && self.in_setup < self.args.parallel {
            let i = self.next_open;
            self.next_open += 1;
            self.connect(i);
        }
    }

    pub(super) fn reconnect_due(&mut self) {
        let now = self.ms();
        let mut budget = self.args.parallel.saturating_sub(self.in_setup);
        while budget > 0 {
            match self.timers.peek() {
                Some(Reverse((due, _))) if *due <= now => {}
                _ => break,
            }
            let Some(Reverse((_, i))) = self.timers.pop() else {
                break;
            };
            if self.conns[i].phase == Phase::Waiting {
                if self.args.reconnect {
                    self.connect(i);
                    budget -= 1;
                } else {
                    self.conns[i].phase = Phase::Dead;
                    self.status.dead += 1;
                }
            }
        }
    }

    /// Opens connection `i`: a non-blocking socket bound to the source address and the next free
    /// source port, connecting.
    pub(super) fn connect(&mut self, i: usize) {
        match self.open_socket() {
            Ok(mut sock) => {
                let registered = self.poll.registry().register(
                    &mut sock,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                );
                if let Err(e) = registered {
                    self.note_error(format!("register: {e}"));
                    self.attempt_failed(i, None);
                    return;
                }
                let since_ms = self.ms();
                let c = &mut self.conns[i];
                c.sock = Some(sock);
                c.phase = Phase::Connecting;
                c.since_ms = since_ms;
                self.in_setup += 1;
            }
            Err(e) => {
                self.note_error(format!("connect: {e}"));
                self.attempt_failed(i, None);
            }
        }
    }

    pub(super) fn open_socket(&mut self) -> std::io::Result<TcpStream> {
        use socket2::{Domain, Protocol, Socket, Type};
        let span = u32::from(self.args.port_hi - self.args.port_lo) + 1;
        let mut last_err = None;
        // Ports in use (by another socket of this address, or a listener on any address) are
        // skipped; bounded.
        for _ in 0..span.min(4096) {
            let port = self.next_port;
            self.next_port = if port >= self.args.port_hi {
                self.args.port_lo
            } else {
                port + 1
            };
            let domain = if self.args.source.is_ipv4() {
                Domain::IPV4
            } else {
                Domain::IPV6
            };
            let socket = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
            // A port whose previous connection from here is in TIME_WAIT can be bound again.
            socket.set_reuse_address(true)?;
            match socket.bind(&SocketAddr::new(self.args.source, port).into()) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AddrInUse => {
                    last_err = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
            match socket.connect(&self.args.ws.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(115) || e.kind() == ErrorKind::WouldBlock => {}
                // The 4-tuple is still taken (TIME_WAIT on this side): try the next port.
                Err(e) if e.kind() == ErrorKind::AddrNotAvailable => {
                    last_err = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
            let std: std::net::TcpStream = socket.into();
            return Ok(TcpStream::from_std(std));
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("no free source port")))
    }

    pub(super) fn note_error(&mut self, why: String) {
        if self.status.first_error.is_none() {
            self.status.first_error = Some(why);
        }
        self.dirty = true;
    }

    /// Drops the socket of `i` and forgets its side-table entries.
    pub(super) fn drop_socket(&mut self, i: usize) -> Phase {
        let c = &mut self.conns[i];
        let phase = c.phase;
        if let Some(mut sock) = c.sock.take() {
            let _ = self.poll.registry().deregister(&mut sock);
        }
        self.outbox.remove(&i);
        self.partial.remove(&i);
        match phase {
            Phase::Connecting | Phase::Upgrading | Phase::Subscribing => self.in_setup -= 1,
            Phase::Open => {
                self.status.open -= 1;
                self.status.dropped += 1;
            }
            _ => {}
        }
        self.dirty = true;
        phase
    }

    /// Closes `i`; reconnects later with `--reconnect` (after `after_ms` plus jitter when the
    /// server said so), else it is dead.
    pub(super) fn close(&mut self, i: usize, after_ms: Option<u64>) {
        let phase = self.drop_socket(i);
        if phase != Phase::Open {
            self.status.failed_attempts += 1;
        }
        self.attempt_failed(i, after_ms);
    }

    /// Schedules the reconnect of a connection with no socket, or marks it dead.
    pub(super) fn attempt_failed(&mut self, i: usize, after_ms: Option<u64>) {
        if !self.args.reconnect {
            self.conns[i].phase = Phase::Dead;
            self.status.dead += 1;
            self.dirty = true;
            return;
        }
        let c = &mut self.conns[i];
        let cap = self
            .args
            .backoff_initial_ms
            .saturating_mul(1u64 << u32::from(c.attempts.min(20)))
            .min(self.args.backoff_max_ms)
            .max(1);
        c.attempts = c.attempts.saturating_add(1);
        let jitter = xorshift(&mut self.rng) % cap;
        let delay = after_ms.unwrap_or(0) + jitter;
        let due = self.ms().saturating_add(delay as u32);
        let c = &mut self.conns[i];
        c.phase = Phase::Waiting;
        c.since_ms = due;
        self.timers.push(Reverse((due, i)));
    }

    /// Closes `i` for good (a fatal ERROR).
    pub(super) fn kill(&mut self, i: usize) {
        self.drop_socket(i);
        self.conns[i].phase = Phase::Dead;
        self.status.dead += 1;
    }

    /// Connections stuck in setup longer than [`SETUP_TIMEOUT`] fail their attempt.
    pub(super) fn sweep_timeouts(&mut self) {
        let now = self.ms();
        let limit = SETUP_TIMEOUT.as_millis() as u32;
        let stuck: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                matches!(
                    c.phase,
                    Phase::Connecting | Phase::Upgrading | Phase::Subscribing
                ) && now.saturating_sub(c.since_ms) > limit
            })
            .map(|(i, _)| i)
            .collect();
        if !stuck.is_empty() {
            self.note_error(format!(
                "{} connections not subscribed within {SETUP_TIMEOUT:?}",
                stuck.len()
            ));
        }
        for i in stuck {
            self.close(i, None);
        }
    }
}
