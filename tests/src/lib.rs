//! # herald-e2e
//!
//! End-to-end tests of Herald: the real `herald-gateway` binary, started as a child process,
//! driven over real sockets. The integration tests live in `tests/tests/*.rs`; this library is
//! their harness.
//!
//! ```text
//!  test ──spawn──► herald-gateway --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir <tmp>
//!   │                 │  stdout: "herald-gateway ready ws=ADDR admin=ADDR"   stderr: <tmp>/gateway.log
//!   ├─ WsClient ──────► ws=ADDR    (tokio-tungstenite, subprotocol herald.v1, herald_proto frames)
//!   └─ http::request ─► admin=ADDR (POST /v1/publish, /healthz, /readyz, /metrics)
//! ```
//!
//! The binary is `target/<profile>/herald-gateway`, beside the test executables' `deps/`.
//! `cargo test` does not build it (cargo builds a package's binaries only for that package's own
//! integration tests), so run `cargo build --workspace --bins` first, as `ops/test.sh` does, or
//! the tests drive whatever binary was built last.
//!
//! Every wait has a timeout, and a [`GatewayProcess`] kills its child with SIGKILL and reaps it
//! when dropped, so a failing test never leaves a gateway behind.
//!
//! # Layout
//! - [`checker`]: the no-missed-change checker ([`Checker`]) and its delay [`Report`].
//! - [`gateway`]: [`GatewayProcess`] (spawn, ready line, tokens, publish, signals, restart) and
//!   [`GatewayOptions`] (extra flags).
//! - [`ws`]: [`WsClient`], a raw WebSocket client speaking Herald frames, and [`ws::raw_upgrade`]
//!   for tests that need the bare TCP socket.
//! - [`http`]: a tiny HTTP/1.1 client (one request per connection) for the admin listener and for
//!   the plain HTTP answers of the client listener.
//! - [`chaos`]: the chaos soak (`herald-chaos`, `ops/chaos.sh`): the whole fleet, faults from a
//!   seeded schedule, every client checked continuously.
//! - [`fleet`]: scaffolding of the fault and herd tests (client fleet, journal feed, turns).
//! - [`nats`]: [`nats::NatsServer`] (our own nats-server per test) and [`nats::RelayProcess`].
//! - [`mariadb`]: [`mariadb::MariaDb`], a private mariadbd per test (tailer tests).
//! - [`postgres`]: [`postgres::Postgres`], a private postgres per test (tailer tests).
//! - [`process`]: stopping, waiting for and reading the logs of harness processes.
//! - [`proxy`]: [`proxy::Proxy`], a TCP proxy a test can cut to partition a process from NATS.

pub mod chaos;
pub mod checker;
pub mod fleet;
pub mod gateway;
pub mod http;
pub mod mariadb;
pub mod nats;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod relay;
pub mod tail;
pub mod ws;

pub use checker::{Checker, Report};
pub use gateway::{GatewayOptions, GatewayProcess};
pub use herald_proto::{ClientFrame, Code, NsGrant, ServerFrame};
pub use http::HttpResponse;
pub use ws::{RawSocket, Welcome, WsClient};

use std::time::Duration;

/// Default bound on one expected frame, close or HTTP answer. Generous for a loaded CI machine;
/// only failing tests ever wait this long.
pub const WAIT: Duration = Duration::from_secs(5);

/// How long to watch for something that must *not* arrive, when no barrier is possible.
pub const QUIET: Duration = Duration::from_millis(300);

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
