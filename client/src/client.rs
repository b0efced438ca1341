//! [`Client`]: the handle to a managed session (reconnect, backoff, cursors, heartbeat) that runs
//! as one background task (see `task.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::ClientConfig;
use crate::cursors::Cursors;
use crate::error::ClientError;
use crate::event::EventStream;
use crate::task::{Command, Task};

/// A managed Herald session. Cheap to clone; every clone talks to the same background task.
///
/// Dropping every clone stops the task as [`close`](Client::close) would, without waiting.
#[derive(Debug, Clone)]
pub struct Client {
    /// To the task; unbounded so that calls never block the app. Its `closed()` doubles as
    /// "the task has ended".
    commands: mpsc::UnboundedSender<Command>,
    /// Shared with the task, which applies CHANGED/RESET/DENIED; subscribe and unsubscribe update
    /// it here at once so that [`cursors`](Client::cursors) reflects them on return.
    cursors: Arc<Mutex<Cursors>>,
    /// Set by `close()`; the task watches it at every await.
    close: Arc<watch::Sender<bool>>,
}

/// Locks the cursor table, ignoring poisoning: every update leaves it consistent.
pub(crate) fn lock(cursors: &Mutex<Cursors>) -> MutexGuard<'_, Cursors> {
    cursors.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Client {
    /// Starts the client task, which connects at once and reconnects until closed.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[must_use]
    pub fn spawn(config: ClientConfig) -> (Client, EventStream) {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::channel(config.event_capacity.max(1));
        let (close, close_rx) = watch::channel(false);
        let cursors = Arc::new(Mutex::new(Cursors::new()));
        let task = Task::new(config, cursors.clone(), commands_rx, events, close_rx);
        tokio::spawn(task.run());
        let client = Client {
            commands,
            cursors,
            close: Arc::new(close),
        };
        (client, EventStream::new(events_rx))
    }

    /// Subscribes to `(ns, cursor)` pairs (replacing the cursor of a namespace already
    /// subscribed, even with a lower one). Sent at once when connected, else on connect; split
    /// into frames that fit the client frame limit.
    pub fn subscribe(&self, pairs: &[(u64, u64)]) {
        if pairs.is_empty() {
            return;
        }
        lock(&self.cursors).subscribe(pairs);
        let _ = self.commands.send(Command::Subscribe(pairs.to_vec()));
    }

    /// Drops subscriptions.
    pub fn unsubscribe(&self, ns: &[u64]) {
        if ns.is_empty() {
            return;
        }
        lock(&self.cursors).unsubscribe(ns);
        let _ = self.commands.send(Command::Unsubscribe(ns.to_vec()));
    }

    /// Resolves once every subscribe and unsubscribe issued before it has taken effect on the
    /// server (PROTOCOL.md: "SUBSCRIBE then PING is a barrier"): their CHANGED, RESET or DENIED,
    /// if any, are already in the event stream.
    ///
    /// If the connection drops first, it resolves once a later connection has resubscribed and
    /// answered its own PING. Errs with [`ClientError::ClientClosed`] if the client is closed
    /// first (or already stopped), or with the server's error if the client stops on a fatal one
    /// while the barrier waits. It has no timeout of its own: wrap it in one.
    pub async fn barrier(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Barrier(tx))
            .map_err(|_| ClientError::ClientClosed)?;
        rx.await.unwrap_or(Err(ClientError::ClientClosed))
    }

    /// A snapshot of `ns -> cursor`: the cursor each subscription was given, advanced by every
    /// CHANGED delivered since.
    #[must_use]
    pub fn cursors(&self) -> HashMap<u64, u64> {
        lock(&self.cursors).snapshot()
    }

    /// Drops the current socket without a close frame, as a network cut would; the task then
    /// reconnects with backoff as usual. Does nothing while disconnected. For tests.
    pub fn disconnect_now(&self) {
        let _ = self.commands.send(Command::DisconnectNow);
    }

    /// Sends a WebSocket close (if connected), stops the task and waits until it has stopped.
    /// Pending [`barrier`](Client::barrier)s fail with [`ClientError::ClientClosed`].
    pub async fn close(&self) {
        self.close.send_replace(true);
        self.commands.closed().await;
    }

    /// True once the task has stopped (closed, or after [`Event::Fatal`](crate::Event::Fatal)).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }
}
