//! The byte stream of a QUIC connection as the connection table sees it: the session stream's
//! two halves, written without waiting (the fan-out polls the send half with the connection
//! task's waker). The QUIC task (`quic`) fills it in once the client opens the stream.

use std::cell::RefCell;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// The session stream of a QUIC connection, filled in once the client opens it.
#[derive(Default)]
pub struct QuicIo {
    /// The send half.
    pub send: RefCell<Option<quinn::SendStream>>,
    /// The receive half.
    pub recv: RefCell<Option<quinn::RecvStream>>,
}

impl QuicIo {
    /// Writes what the send stream takes now; `WouldBlock` when it takes nothing (the stream
    /// then wakes `waker` when it has room).
    pub fn try_write(&self, bufs: &[IoSlice<'_>], waker: &Waker) -> std::io::Result<usize> {
        let mut send = self.send.borrow_mut();
        let Some(send) = send.as_mut() else {
            return Err(std::io::ErrorKind::WouldBlock.into());
        };
        let mut cx = Context::from_waker(waker);
        let mut written = 0;
        for buf in bufs.iter().filter(|b| !b.is_empty()) {
            match Pin::new(&mut *send).poll_write(&mut cx, buf) {
                Poll::Ready(Ok(n)) => {
                    written += n;
                    if n < buf.len() {
                        break;
                    }
                }
                Poll::Ready(Err(e)) if written == 0 => {
                    return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, e));
                }
                Poll::Ready(Err(_)) | Poll::Pending => break,
            }
        }
        if written == 0 {
            Err(std::io::ErrorKind::WouldBlock.into())
        } else {
            Ok(written)
        }
    }
}
