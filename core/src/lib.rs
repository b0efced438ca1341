//! # herald-core
//!
//! What Herald decides, apart from how bytes move: no tokio, no sockets, no clock reads (time is
//! passed in). The gateway's transports, the relays and the upstream subscriber all build on it.
//!
//! - [`latest`]: the merge-is-max table of latest SJIDs every stage keeps.
//! - [`batch`]: the fan-out unit inside a process.
//! - [`interest`]: who listens to what, per worker.
//! - [`session`]: one connection's protocol state machine, driven by every transport.
//! - [`subscribe`]: HELLO and SUBSCRIBE rules (register, then complete after the look-up).
//! - [`token`]: token checks as the session sees them.
//! - [`time`]: coarse ticks.

pub mod batch;
pub mod interest;
pub mod latest;
pub mod session;
pub mod subscribe;
pub mod time;
pub mod token;
