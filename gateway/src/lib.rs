//! # herald-gateway
//!
//! The edge of Herald: it holds client connections and tells each client when a namespace it
//! subscribed to changes. In standalone mode (the default) it also embeds the journal and the
//! latest-SJID table, so one process is a whole working Herald.
//!
//! ```text
//!  POST /v1/publish ─► admin ─► journal (append + fdatasync, group commit)
//!                                  │ merge-is-max into LatestTable, then the raised entries
//!                                  ▼
//!                      one bounded channel per worker thread
//!                                  ▼
//!  worker (one per core, current-thread runtime, own SO_REUSEPORT listener)
//!     interest: ns → [(conn id, highest SJID known to that conn)]
//!     fan-out: encode CHANGED once, write the shared bytes to every subscriber's socket
//!     sweep: one coarse timer per worker for handshake, heartbeat, token and close deadlines
//!     conn tasks: HTTP upgrade, RFC 6455 frames, herald_core sessions (no buffers while idle)
//! ```
//!
//! # Layout
//! - [`config`]: command line, environment and validated settings; [`config_file`]: TOML.
//! - [`auth`]: token verification (EdDSA JWTs, keys by `kid`); [`keys`]: key generation, minting;
//!   [`revocation`]: revoked subjects (`POST /v1/disconnect`).
//! - [`journal`]: the embedded durable journal (the in-memory latest table is
//!   `herald_core::latest`);
//!   [`lookup`]: embedded table or upstream relays (`--nats`), behind one interface;
//!   [`journal_sink`]: `--journal-source`, the journal fed from the metaserver's database.
//! - [`conn`]: one connection: its `herald_core` session, its [`conn::Wire`] (framing, outbox,
//!   exit flags) and byte stream; [`conn::Out`] is the session's output on it.
//! - [`worker`]: a worker's state, [`worker::fanout`] and [`worker::sweep`]; `Worker::drive` is
//!   the one way a session is driven. [`accept`]: the worker thread and its accept loops.
//! - [`drive`]: frames, protocol errors and look-ups into the session, whatever the transport;
//!   [`ws`]: the task of a TCP connection (HTTP heads decided by `herald_proto::http`, then
//!   WebSocket or long-poll); [`longpoll`]: a poll's request and reply;
//!   [`quic`]: the QUIC listener and the task of a QUIC connection; [`quic_stream`]: its stream.
//! - [`admin`]: publish, health, readiness and metrics over HTTP; [`stats`]: counters;
//!   [`admission`]: handshake rate limits.
//! - [`tls`]: the certificate for `wss` and QUIC (reloaded on SIGHUP, self-signed for `gen-cert`);
//!   [`tls_stream`]: TLS under a connection, rustls' unbuffered API with per-worker buffers.
//! - [`server`]: wires it all together: [`server::Listeners::bind`], then [`server::run`]
//!   (stopped through [`server::Shutdown`]); [`server::serve`] does both for the binary, with
//!   signals.

pub mod accept;
pub mod admin;
pub mod admission;
pub mod auth;
pub mod config;
pub mod config_file;
pub mod conn;
pub mod drive;
pub mod journal;
pub mod journal_sink;
pub mod keys;
pub mod longpoll;
pub mod lookup;
pub mod quic;
pub mod quic_stream;
pub mod revocation;
pub mod server;
pub mod stats;
pub mod tls;
pub mod tls_stream;
pub mod worker;
pub mod ws;
