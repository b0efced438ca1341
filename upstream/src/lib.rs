//! # herald-upstream
//!
//! The subscriber side of Herald's fan-out, shared by gateways and tier-N relays (DESIGN.md:
//! "a gateway's upstream client is the same code as a tier-N relay's source").
//!
//! ```text
//!   publishers ── herald.journal.<p>.<ns> (the publish itself) ──► partition task ─┐
//!   relays ── herald.fanout.<p> (FanoutBatch{epoch, seq}) ──────► partition task ─┤
//!          ◄─ herald.latest.<p> (LatestRequest/Reply) ──── look-ups, resync ──────┤ merge is max
//!                                                                                  ▼
//!                                                 local latest (per partition) ──► raised changes out
//! ```
//!
//! - **Direct from the journal** ([`UpstreamConfig::journal_direct`], on by default): each
//!   followed partition also has a plain subscription on `herald.journal.<p>.*`, so a change
//!   arrives with its publish, one hop and one relay shorter than the fan-out. It is a shortcut,
//!   never the guarantee: core NATS may drop it (a route between servers breaks), so the relays'
//!   numbered fan-out still carries every change, gathered for up to `--vouch-ms` (500 ms) on
//!   tier 0; that *vouch* delivers whatever the shortcut lost. Publishers publish only committed
//!   changes, so one the journal never stores (rejected, retried) is still true.
//!
//! - **Interest**: a partition is subscribed while some namespace in it has interest (or always,
//!   in [`Scope::All`] mode), and dropped, with what was known of it, when the last interest goes.
//! - **Subscribe, then look up**: [`Upstream::add_interest`] returns once the partition's NATS
//!   subscription is registered with the server (SUB, then a flush), so a look-up made after it
//!   cannot miss a change: the change is either in the answer or in a later batch.
//! - **Numbered streams + resync**: each batch carries its relay's `epoch` and a per-partition
//!   `seq` (relays also send empty heartbeat batches carrying their current `seq`). A gap, an
//!   unknown epoch, our own NATS reconnect or a slow-consumer drop makes the partition resync: ask
//!   `herald.latest.<p>` for every namespace it tracks and merge the answer.
//!
//! - **Relay-silence watchdog**: relays send a heartbeat on every partition twice a second, so a
//!   followed partition that hears nothing for `relay_silence` (2 s) means the NATS server we
//!   are connected to is hung (it accepts TCP but delivers nothing, which pings notice only
//!   after two intervals): reconnect to another server of the list, then resync.
//!
//! # Layout
//! - [`config`]: [`UpstreamConfig`], [`Scope`].
//! - The merge-is-max table every stage keeps is `herald_core::latest::LatestTable`.
//! - [`partition`]: what is known of one partition (stream positions, latest values, interest).
//! - [`upstream`]: [`Upstream`], the handle; connection, partition tasks, look-ups, resync.
//! - [`watchdog`]: the relay-silence watchdog and the server choice after it.
#![warn(missing_docs)]

pub mod config;
pub mod partition;
pub mod upstream;
pub mod watchdog;

pub use config::{Scope, UpstreamConfig};
pub use upstream::{LookupError, Upstream};

/// Raised `(ns, sjid)` changes, as handed to the consumer of an [`Upstream`].
pub type Changes = Vec<(u64, u64)>;
