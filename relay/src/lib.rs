//! # herald-relay
//!
//! The relay tier of Herald (DESIGN.md "Data flow"): it reads the journal, keeps the latest SJID
//! of every namespace in memory, fans raised changes out to gateways, and answers their
//! look-ups. One program with pluggable ends: Source → LatestTable → Sinks.
//!
//! ```text
//!  metaserver ── Publisher ──► JetStream HERALD_JOURNAL   herald.journal.<p>.<ns> = SJID (8 B BE)
//!                                   │ vouching: a no-wait pull every --vouch-ms; else one
//!                                   │ unfiltered ordered push consumer: load, then tail
//!                                   ▼
//!                 Source ──► Intake: LatestTable.merge (max) ── raised, after the load ──┐
//!                                   │                                                     ▼
//!   herald.latest.<p>  ◄── responder (queue group herald-relay,     fanout: Coalescer (per p,
//!   LatestRequest → LatestReply      only once ready)                ≤ coalesce delay) ──► core
//!                                                                    NATS herald.fanout.<p>
//!                                                                    FanoutBatch{epoch, seq}
//! ```
//!
//! **Vouching** (tier 0, the default): gateways read each change straight from the journal's
//! subjects (herald-upstream's `journal_direct`), so the fan-out does not have to be fast, only
//! complete. The relay then pulls the journal every `--vouch-ms` (500 ms) and sends each
//! pull's changes at once, one numbered batch per partition: every change is still in the
//! stream, a gap still resyncs, and neither the relay nor the broker does anything per change
//! (the broker writes a period's messages to the relay in one reply, the relay publishes per
//! partition and half-second).
//! `--vouch-ms 0` fans every change out at once (gateways that do not read the journal); a
//! tier-N relay always does, as its gateways are on another NATS side with no journal.
//!
//! Several relays may run on one journal at once, each with its own random epoch: merge is max,
//! so they never disagree for long, and a gateway follows one relay's numbered stream per
//! partition and resyncs when it sees a gap or another epoch.
//!
//! # Layout
//! - [`config`]: command line, environment and validated settings.
//! - [`stream`]: the journal stream (server checks, idempotent creation).
//! - [`publisher`]: [`Publisher`], the metaserver's way into the journal.
//! - [`source`]: [`Source`] and its [`Intake`]; [`source::journal`]: the tier-0 journal reader
//!   ([`source::pull`]: its pulls when vouching; [`source::tap`]: its tap and reconnect catch-up);
//!   [`source::repair`]: writes the latest back over a late lower SJID in the journal.
//! - The in-memory latest table is `herald_core::latest::LatestTable`.
//! - [`coalesce`]: the sans-IO coalescer and batch numbering; [`fanout`]: the publisher task.
//! - [`responder`]: answers `herald.latest.<p>`; [`freshness`]: whether the table may answer.
//! - [`admin`]: health, readiness and metrics over HTTP; [`metrics`]: metric names and handles.
//! - [`nats`]: connecting with backoff; [`relay`]: wires it all together (`run`).
#![warn(missing_docs)]

pub mod admin;
pub mod coalesce;
pub mod config;
pub mod fanout;
pub mod freshness;
pub mod metrics;
pub mod nats;
pub mod publisher;
pub mod relay;
pub mod responder;
pub mod source;
pub mod stream;

pub use coalesce::Coalescer;
pub use herald_core::latest::LatestTable;
pub use publisher::{PublishError, Published, Publisher};
pub use relay::run;
pub use source::{Intake, Source};
pub use stream::{StreamError, ensure_stream};
