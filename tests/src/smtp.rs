//! A small blocking SMTP client for tests: raw bytes out, complete
//! (multi-line) replies in, so tests can assert exact reply codes and
//! enhanced status codes. Every read and write has a timeout, so a server
//! that stops answering fails the test instead of hanging it.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bound on waiting for one reply (and on each write).
pub const REPLY_WAIT: Duration = Duration::from_secs(15);

/// One complete SMTP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of every line, after `DDD-` / `DDD `.
    pub lines: Vec<String>,
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == self.lines.len() { ' ' } else { '-' };
            if i > 0 {
                f.write_str(" | ")?;
            }
            write!(f, "{}{sep}{line}", self.code)?;
        }
        Ok(())
    }
}

fn is_enhanced(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

impl Reply {
    /// The enhanced status code (RFC 2034) the first line starts with.
    pub fn enhanced(&self) -> Option<&str> {
        let first = self.lines.first()?.split(' ').next()?;
        is_enhanced(first).then_some(first)
    }

    /// The first line's text after the enhanced status code.
    pub fn text(&self) -> &str {
        let first = self.lines.first().map_or("", String::as_str);
        match first.split_once(' ') {
            Some((code, rest)) if is_enhanced(code) => rest,
            _ if is_enhanced(first) => "",
            _ => first,
        }
    }

    /// Panics unless the reply has this code and enhanced code (`None`:
    /// must have none). Returns the reply for chaining.
    #[track_caller]
    pub fn assert(&self, code: u16, enhanced: Option<&str>) -> &Reply {
        assert_eq!(
            (self.code, self.enhanced()),
            (code, enhanced),
            "unexpected reply: {self}"
        );
        self
    }

    /// Panics unless the reply is `code` with enhanced code `enhanced`.
    #[track_caller]
    pub fn expect(&self, code: u16, enhanced: &str) -> &Reply {
        self.assert(code, Some(enhanced))
    }

    /// The queue id of `250 2.0.0 Ok: queued as <20 hex digits>`; panics on
    /// any other reply.
    #[track_caller]
    pub fn queue_id(&self) -> String {
        self.expect(250, "2.0.0");
        let id = self
            .text()
            .strip_prefix("Ok: queued as ")
            .unwrap_or_else(|| panic!("not a queued reply: {self}"));
        assert!(
            id.len() == 20 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "queue id {id:?} is not 20 hex digits: {self}"
        );
        id.to_string()
    }
}

/// Parses one complete reply from the front of `buf`: `Ok(Some((reply,
/// consumed)))`, `Ok(None)` when more bytes are needed, or an error for
/// bytes that are not an SMTP reply.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let mut at = 0;
    let mut code = None;
    let mut lines = Vec::new();
    loop {
        let Some(lf) = buf[at..].iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let raw = &buf[at..at + lf + 1];
        at += lf + 1;
        let line = raw
            .strip_suffix(b"\r\n")
            .ok_or_else(|| format!("reply line without CRLF: {:?}", show(raw)))?;
        let line = std::str::from_utf8(line)
            .map_err(|_| format!("reply line not UTF-8: {:?}", show(raw)))?;
        let bad = || format!("malformed reply line: {line:?}");
        let digits = line.get(..3).ok_or_else(bad)?;
        let this: u16 = digits
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| digits.parse().ok())
            .flatten()
            .ok_or_else(bad)?;
        if *code.get_or_insert(this) != this {
            return Err(format!("code changed within a reply: {line:?}"));
        }
        let (last, text) = match line.as_bytes().get(3) {
            None => (true, ""),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(bad()),
        };
        lines.push(text.to_string());
        if last {
            let code = code.expect("set above");
            return Ok(Some((Reply { code, lines }, at)));
        }
    }
}

/// Bytes for error messages: printable ASCII as is, the rest escaped.
pub fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Dot-stuffs `content` (RFC 5321 4.5.2) and appends the end-of-data
/// `.CRLF`. `content` must be empty or end with CRLF.
pub fn dot_stuff(content: &[u8]) -> Vec<u8> {
    assert!(
        content.is_empty() || content.ends_with(b"\r\n"),
        "DATA content must end with CRLF"
    );
    let mut out = Vec::with_capacity(content.len() + 16);
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// A small RFC 5322 message: headers, a blank line, `body` lines (each
/// gets a CRLF).
pub fn message(subject: &str, body: &[&str]) -> Vec<u8> {
    let mut out = format!(
        "From: <sender@example.test>\r\nTo: <rcpt@example.test>\r\nSubject: {subject}\r\n\r\n"
    )
    .into_bytes();
    for line in body {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The connection under a [`Client`]: clear text, or TLS (STARTTLS or
/// implicit).
enum Link {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    /// Only while switching.
    Gone,
}

impl Link {
    fn tcp(&self) -> &TcpStream {
        match self {
            Link::Plain(s) => s,
            Link::Tls(t) => t.get_ref(),
            Link::Gone => unreachable!("link used while switching to TLS"),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Plain(s) => s.read(buf),
            Link::Tls(t) => t.read(buf),
            Link::Gone => unreachable!(),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Link::Plain(s) => s.write_all(bytes),
            Link::Tls(t) => t.write_all(bytes).and_then(|()| t.flush()),
            Link::Gone => unreachable!(),
        }
    }
}

/// A blocking SMTP connection.
pub struct Client {
    stream: Link,
    buf: Vec<u8>,
}

impl Client {
    /// Connects (bounded) and sets read and write timeouts.
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(REPLY_WAIT))?;
        stream.set_write_timeout(Some(REPLY_WAIT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream: Link::Plain(stream),
            buf: Vec::new(),
        })
    }

    /// Runs the TLS handshake on the connection as it is (after a 220 to
    /// STARTTLS, or at once for implicit TLS). Bytes already buffered
    /// from the server are dropped, as a careful client does.
    pub fn handshake(&mut self, config: Arc<rustls::ClientConfig>) -> io::Result<()> {
        let Link::Plain(tcp) = std::mem::replace(&mut self.stream, Link::Gone) else {
            panic!("TLS is already active");
        };
        self.buf.clear();
        let name = rustls_pki_types::ServerName::try_from("tern.test").expect("server name");
        let conn = rustls::ClientConnection::new(config, name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                self.stream = Link::Plain(tls.sock);
                return Err(e);
            }
        }
        self.stream = Link::Tls(Box::new(tls));
        Ok(())
    }

    /// STARTTLS (must be 220) and the handshake with `config`; EHLO must
    /// be sent again afterwards.
    #[track_caller]
    pub fn starttls(&mut self, config: Arc<rustls::ClientConfig>) {
        self.cmd("STARTTLS").expect(220, "2.0.0");
        self.handshake(config)
            .unwrap_or_else(|e| panic!("TLS handshake after STARTTLS: {e}"));
    }

    /// Connects with implicit TLS (RFC 8314) and reads the 220 greeting.
    #[track_caller]
    pub fn open_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Client {
        let mut c = Client::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        c.handshake(config)
            .unwrap_or_else(|e| panic!("implicit TLS handshake with {addr}: {e}"));
        c.reply().assert(220, None);
        c
    }

    /// The negotiated protocol version and cipher suite, in TLS.
    pub fn tls_state(&self) -> Option<(String, String)> {
        match &self.stream {
            Link::Tls(t) => Some((
                format!("{:?}", t.conn.protocol_version()?),
                format!("{:?}", t.conn.negotiated_cipher_suite()?.suite()),
            )),
            _ => None,
        }
    }

    /// Connects and reads the greeting, which must be 220.
    #[track_caller]
    pub fn open(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        c.reply().assert(220, None);
        c
    }

    /// Connects, reads the 220 greeting and says EHLO (which must be 250).
    #[track_caller]
    pub fn ehlo(addr: SocketAddr) -> Client {
        let mut c = Client::open(addr);
        c.cmd("EHLO client.test").assert(250, None);
        c
    }

    /// The underlying socket (for shutdown and such).
    pub fn stream(&self) -> &TcpStream {
        self.stream.tcp()
    }

    /// Sends raw bytes.
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("send {:?}: {e}", show(bytes)));
    }

    /// Sends raw bytes; errors (e.g. the server closed) are returned.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next reply; `Ok(None)` at a clean end of stream with nothing
    /// buffered.
    pub fn try_reply(&mut self) -> io::Result<Option<Reply>> {
        let deadline = Instant::now() + REPLY_WAIT;
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    return Ok(Some(reply));
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            if Instant::now() > deadline {
                return Err(io::ErrorKind::TimedOut.into());
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed within a reply: {:?}", show(&self.buf)),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next reply; panics on end of stream, timeout or garbage.
    #[track_caller]
    pub fn reply(&mut self) -> Reply {
        match self.try_reply() {
            Ok(Some(r)) => r,
            Ok(None) => panic!("connection closed while a reply was expected"),
            Err(e) => panic!("reading a reply: {e}"),
        }
    }

    /// The next `n` replies.
    #[track_caller]
    pub fn replies(&mut self, n: usize) -> Vec<Reply> {
        (0..n).map(|_| self.reply()).collect()
    }

    /// Sends `line` + CRLF and reads one reply.
    #[track_caller]
    pub fn cmd(&mut self, line: &str) -> Reply {
        let mut bytes = line.as_bytes().to_vec();
        bytes.extend_from_slice(b"\r\n");
        self.send(&bytes);
        self.reply()
    }

    /// Sends `line` and panics unless the reply is `code` `enhanced`.
    #[track_caller]
    pub fn expect(&mut self, line: &str, code: u16, enhanced: &str) -> Reply {
        let r = self.cmd(line);
        r.expect(code, enhanced);
        r
    }

    /// MAIL, RCPT (each must be accepted), DATA (354), the dot-stuffed
    /// content and `.`; returns the final reply (not checked).
    #[track_caller]
    pub fn data_message(&mut self, from: &str, rcpts: &[&str], content: &[u8]) -> Reply {
        self.expect(&format!("MAIL FROM:<{from}>"), 250, "2.1.0");
        for r in rcpts {
            self.expect(&format!("RCPT TO:<{r}>"), 250, "2.1.5");
        }
        self.cmd("DATA").assert(354, None);
        self.send(&dot_stuff(content));
        self.reply()
    }

    /// [`Client::data_message`] that must be queued; returns the queue id.
    #[track_caller]
    pub fn send_message(&mut self, from: &str, rcpts: &[&str], content: &[u8]) -> String {
        self.data_message(from, rcpts, content).queue_id()
    }

    /// Reads until the server closes the connection (bounded); panics if
    /// more bytes arrive. A reset counts as closed.
    #[track_caller]
    pub fn expect_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes before close: {:?}",
            show(&self.buf)
        );
        let mut chunk = [0u8; 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {}
            Ok(n) => panic!("expected the server to close; got {:?}", show(&chunk[..n])),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            // TLS closed without close_notify.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
            Err(e) => panic!("expected the server to close; read failed: {e}"),
        }
    }

    /// Sends QUIT, expects 221 and the close.
    #[track_caller]
    pub fn quit(mut self) {
        self.cmd("QUIT").expect(221, "2.0.0");
        self.expect_closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies() {
        let (r, n) = parse_reply(b"250-a\r\n250 2.0.0 b c\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(n, 22);
        assert_eq!(r.code, 250);
        assert_eq!(r.lines, vec!["a", "2.0.0 b c"]);
        let (r, _) = parse_reply(b"452 4.3.1 Error: x\r\n").unwrap().unwrap();
        assert_eq!((r.enhanced(), r.text()), (Some("4.3.1"), "Error: x"));
        let (r, _) = parse_reply(b"250\r\n").unwrap().unwrap();
        assert_eq!((r.code, r.enhanced(), r.text()), (250, None, ""));
        assert_eq!(parse_reply(b"250-a\r\n250 b").unwrap(), None);
        assert!(parse_reply(b"250-a\r\n251 b\r\n").is_err());
        assert!(parse_reply(b"25x a\r\n").is_err());
        assert!(parse_reply(b"250 a\n").is_err());
    }

    #[test]
    fn stuffs_dots() {
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b".a\r\nb\r\n.\r\n"), b"..a\r\nb\r\n..\r\n.\r\n");
    }
}
