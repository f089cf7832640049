//! A connection that is plain TCP or TLS on top of it (after STARTTLS, or
//! from the start on an implicit-TLS listener), as one type the socket
//! loops read and write. Plain connections pay one match per call.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use super::TlsInfo;

/// A TCP stream, maybe in TLS.
pub enum Stream {
    /// Clear text.
    Plain(TcpStream),
    /// We are the TLS server.
    Server(Box<futures_rustls::server::TlsStream<TcpStream>>),
    /// We are the TLS client.
    Client(Box<futures_rustls::client::TlsStream<TcpStream>>),
    /// Between taking the TCP stream for a handshake and the result (a
    /// failed handshake leaves it so: the connection is gone).
    Gone,
}

impl Stream {
    /// The TCP stream, for a TLS handshake; `None` if already in TLS.
    pub fn take_plain(&mut self) -> Option<TcpStream> {
        match std::mem::replace(self, Stream::Gone) {
            Stream::Plain(s) => Some(s),
            other => {
                *self = other;
                None
            }
        }
    }

    /// Protocol and cipher, when in TLS.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        match self {
            Stream::Server(s) => Some(TlsInfo::of(s.get_ref().1)),
            Stream::Client(s) => Some(TlsInfo::of(s.get_ref().1)),
            Stream::Plain(_) | Stream::Gone => None,
        }
    }

    /// The underlying TCP stream.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Server(s) => Some(s.get_ref().0),
            Stream::Client(s) => Some(s.get_ref().0),
            Stream::Gone => None,
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "TLS handshake failed")
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => fill(&mut **s, cx, buf),
            Stream::Client(s) => fill(&mut **s, cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

/// Reads what TLS has ready, not just one record: futures-rustls returns
/// the plaintext of one record (at most 16 KiB) per call, where a plain
/// socket read returns everything that arrived. A peer's pipelined batch
/// of shadow copies must be read as one piece to share one group commit
/// (the session commits when the input ends between copies), so this
/// goes on reading until the buffer is full or nothing more is ready.
fn fill<S: AsyncRead + Unpin>(
    s: &mut S,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    let mut total = 0;
    while total < buf.len() {
        match Pin::new(&mut *s).poll_read(cx, &mut buf[total..]) {
            Poll::Ready(Ok(0)) => break,
            Poll::Ready(Ok(n)) => total += n,
            // Data first; the error comes back on the next call.
            Poll::Ready(Err(_)) | Poll::Pending if total > 0 => break,
            other => return other,
        }
    }
    Poll::Ready(Ok(total))
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::Client(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Server(s) => Pin::new(&mut **s).poll_close(cx),
            Stream::Client(s) => Pin::new(&mut **s).poll_close(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
}
