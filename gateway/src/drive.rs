//! Driving a connection's session from its transport's task, whatever the transport: a decoded
//! frame in, a protocol error, and the look-up a SUBSCRIBE (or poll) waits for in distributed
//! mode. The transports deframe and flush; the rules are in `herald_core::session`.

use crate::conn::{Conn, ConnState};
use crate::worker::Worker;
use herald_core::subscribe::{Registered, SubscribeOutcome};
use herald_proto::ClientFrame;
use std::collections::HashMap;

/// Applies one decoded client frame.
pub fn on_frame(worker: &Worker, key: u32, st: &mut ConnState, frame: ClientFrame) {
    worker.drive(key, st, |session, env, out| {
        session.on_frame(env, out, frame)
    });
}

/// Answers a frame that does not decode or breaks the framing: ERROR(`bad_frame`), then close.
pub fn protocol_error(worker: &Worker, key: u32, st: &mut ConnState, message: &str) {
    worker.drive(key, st, |session, env, out| {
        session.protocol_error(env.now, out, message);
    });
}

/// The look-up a session waits for, run: its registered half and the latest SJIDs (`None`: the
/// look-up failed). `None` if the session was not waiting for one.
pub async fn look_up(
    worker: &Worker,
    conn: &Conn,
) -> Option<(Box<Registered>, Option<HashMap<u64, u64>>)> {
    let reg = conn.state.borrow_mut().session.take_lookup()?;
    let latest = match worker
        .lookup
        .resolve_confirmed(&reg.added, &reg.accepted)
        .await
    {
        Ok(latest) => Some(latest),
        Err(e) => {
            let id = conn.state.borrow().session.id();
            tracing::warn!(session = %format_args!("{id:016x}"), error = %e, "look-up failed");
            None
        }
    };
    Some((reg, latest))
}

/// Gives the session its look-up's result. Framed sessions get their frames queued; a poll gets
/// its outcome back to answer.
pub fn finish_lookup(
    worker: &Worker,
    key: u32,
    st: &mut ConnState,
    reg: Registered,
    latest: Option<&HashMap<u64, u64>>,
) -> Option<SubscribeOutcome> {
    worker.drive(key, st, |session, env, out| {
        session.on_lookup(env, out, reg, latest)
    })
}

/// Goes on with the bytes that arrived behind a SUBSCRIBE that waited for its look-up (kept in
/// the wire's carried input): `deframe` is the transport's own handling of input.
pub fn resume(
    worker: &Worker,
    key: u32,
    st: &mut ConnState,
    deframe: fn(&Worker, u32, &mut ConnState, &mut [u8]),
) {
    let carried = std::mem::take(&mut st.wire.partial);
    if !carried.is_empty() && st.session.is_open() {
        let mut scratch = worker.scratch.borrow_mut();
        scratch[..carried.len()].copy_from_slice(&carried);
        deframe(worker, key, st, &mut scratch[..carried.len()]);
    }
}
