//! # herald-client
//!
//! The client side of Herald, the notification gateway of the file-sync service: a sync client
//! keeps a WebSocket open and is told "namespace N changed at SJID S"; it then pulls the change
//! from the metaserver itself. Frames are encoded and decoded by `herald-proto`; this crate adds
//! the sockets, the clock and the policy (PROTOCOL.md "Codes": what to do after each close).
//!
//! Two levels:
//! - [`Connection`]: one WebSocket session, no reconnect; for tests and the load generator.
//! - [`Client`]: a managed session run as one background task: reconnect with backoff, GOAWAY
//!   delays, heartbeat, cursor bookkeeping and resubscription, reported as [`Event`]s.
//!
//! ```no_run
//! use herald_client::{Client, ClientConfig, Event};
//!
//! # async fn demo() {
//! let config = ClientConfig::new("ws://127.0.0.1:8080/v1/connect", "eyJhbGciOiJFZERTQSJ9...");
//! let (client, mut events) = Client::spawn(config);
//! // Namespace 7, synced up to SJID 41; namespace 9, never synced.
//! client.subscribe(&[(7, 41), (9, 0)]);
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Changed { ns, sjid } => println!("pull namespace {ns} up to {sjid}"),
//!         Event::Reset { ns } => println!("resync namespace {ns} from scratch, then subscribe"),
//!         Event::Fatal { code, message } => {
//!             eprintln!("refused: {code}: {message}");
//!             break;
//!         }
//!         other => println!("{other:?}"),
//!     }
//! }
//! client.close().await;
//! # }
//! ```
//!
//! # Layout
//! - [`config`]: [`ConnectOptions`] for a connection, [`ClientConfig`] for a client.
//! - [`error`]: the one error type, [`ClientError`].
//! - [`connection`]: [`Connection`], one session: upgrade, HELLO/WELCOME, frames in and out.
//! - [`backoff`]: [`Backoff`], exponential backoff with full jitter.
//! - [`cursors`]: [`Cursors`], `ns -> cursor` and the splitting of long subscriptions.
//! - [`event`]: [`Event`] and [`EventStream`].
//! - [`longpoll`]: the HTTP long-poll transport: [`LongPoller`] (managed, same [`Event`]s) and
//!   one-shot polls.
//! - [`tls`]: [`TlsRoots`], the trust anchors of `wss://`.
//! - `client.rs`: [`Client`], the handle; `task.rs`: its background task (connect, sleep,
//!   classify closes); `session.rs`: one live session inside it (heartbeat, frames, barriers).
//!
//! Transports by URL scheme: `ws://` and `wss://` (WebSocket; `wss` over rustls with aws-lc-rs),
//! and `quic://host:port` (QUIC). [`TlsRoots`] in [`ConnectOptions`] or [`ClientConfig`] says whom
//! `wss://` and `quic://` trust (default: the system's store). Long-poll ([`LongPoller`]) takes
//! `http://` URLs only.
#![warn(missing_docs)]

pub mod backoff;
pub mod config;
pub mod connection;
pub mod cursors;
pub mod error;
pub mod event;
pub mod incoming;
pub mod longpoll;
pub mod refresh;
pub mod tls;

mod client;
mod quic;
mod session;
mod task;

pub use backoff::Backoff;
pub use client::Client;
pub use config::{ClientConfig, ConnectOptions, TokenSource};
pub use connection::{Connection, Incoming, Welcome};
pub use cursors::Cursors;
pub use error::ClientError;
pub use event::{Event, EventStream};
pub use herald_proto::{ClientFrame, Code, ServerFrame};
pub use longpoll::{LongPollConfig, LongPoller};
pub use tls::TlsRoots;
/// The WebSocket message type [`Connection::send_raw`] takes.
pub use tokio_tungstenite::tungstenite::Message;
