//! A TCP proxy a test can cut: every connection through it is dropped at once and new ones are
//! refused until it is restored. Fault tests put it between a process and its NATS server to
//! simulate a network partition without touching either.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy to one target address. Dropping it stops it.
pub struct Proxy {
    addr: SocketAddr,
    /// While true, accepted connections are dropped at once.
    cut: Arc<AtomicBool>,
    /// Bumped by every cut; live pipes end when it changes.
    generation: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let (cut2, gen2) = (cut.clone(), generation.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if cut2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut changed = gen2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = changed.changed() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            generation,
            accept,
        }
    }

    /// The address to connect to instead of the target.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `nats://` URL of the proxy (when the target is a NATS server).
    #[must_use]
    pub fn nats_url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Drops every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}
