//! The admin listener's connections: HTTP/1.1, one request per
//! connection (`Connection: close`), served by a fixed pool of
//! [`WORKERS`] threads that take turns accepting.
//!
//! Not tiny_http (used before): it stops accepting for good after the
//! first failed `accept` (EMFILE when the process is out of descriptors)
//! and gives every connection a thread of its own (1 000 idle admin
//! connections were 1 000 threads). Here the resources are bounded: at
//! most [`WORKERS`] connections are read at once, each within
//! [`IO_TIMEOUT`], the rest wait in the listen backlog; a failed accept is
//! logged (rate-limited) and retried after a back-off that grows to 1 s,
//! and the listener stays.
//!
//! Requests are bounded too: the request line by `http::URL_MAX`, the
//! header section by [`HEAD_MAX`], the body by `http::BODY_MAX`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::http::{Answer, BODY_MAX, URL_MAX};

/// Threads serving admin connections.
pub const WORKERS: usize = 4;
/// Longest wait for a client's bytes, or for it to take ours.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest header section (request line included).
pub const HEAD_MAX: usize = URL_MAX + 16 * 1024;

/// The request methods the API knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD.
    Head,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// DELETE.
    Delete,
    /// Anything else (answered 405 by the routes).
    Other(String),
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Other(m) => m,
        })
    }
}

/// A request as read off the connection.
pub struct Request {
    pub method: Method,
    /// Path and query as sent.
    pub url: String,
    /// Header fields, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Request {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request within the limits; `Err`: the answer to give.
pub fn read_request(stream: &mut TcpStream, peer: SocketAddr) -> Result<Request, Answer> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > HEAD_MAX {
            return Err(Answer::error(
                431,
                format!("header section larger than {HEAD_MAX} bytes"),
            ));
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(Answer::error(
                    400,
                    "connection closed before the request ended",
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(Answer::error(408, format!("request not read: {e}"))),
        }
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| Answer::error(400, "request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut words = line.split(' ');
    let (Some(method), Some(url), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Err(Answer::error(400, "bad request line"));
    };
    if url.len() > URL_MAX {
        return Err(Answer::error(
            414,
            format!("request line longer than {URL_MAX} bytes"),
        ));
    }
    if !version.starts_with("HTTP/1.") {
        return Err(Answer::error(505, "HTTP/1.x only"));
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        other => Method::Other(other.chars().take(16).collect()),
    };
    let mut headers = Vec::new();
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            return Err(Answer::error(400, "bad header line"));
        };
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut req = Request {
        method,
        url: url.to_owned(),
        headers,
        body: Vec::new(),
        peer,
    };
    if req
        .header("Transfer-Encoding")
        .is_some_and(|t| !t.eq_ignore_ascii_case("identity"))
    {
        return Err(Answer::error(411, "send the body with Content-Length"));
    }
    let length: usize = match req.header("Content-Length") {
        None => 0,
        Some(v) => v
            .parse()
            .map_err(|_| Answer::error(400, "bad Content-Length"))?,
    };
    if length > BODY_MAX {
        return Err(Answer::error(
            413,
            format!("body larger than {BODY_MAX} bytes"),
        ));
    }
    let mut body = buf.split_off(head_end + 4);
    body.truncate(length);
    let mut rest = vec![0u8; length - body.len()];
    stream
        .read_exact(&mut rest)
        .map_err(|e| Answer::error(408, format!("body not read: {e}")))?;
    body.extend_from_slice(&rest);
    req.body = body;
    Ok(req)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Writes the answer and closes (bounded by the stream's timeouts).
pub fn write_answer(stream: &mut TcpStream, answer: &Answer, content_type: &str, head_only: bool) {
    let reason = match answer.code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        answer.code,
        answer.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(answer.body.as_bytes());
    }
    let _ = stream.write_all(&out);
    let _ = stream.flush();
}

/// What failed accepts look like to one worker: logged when they start
/// (and every minute they last), retried after a back-off.
#[derive(Default)]
struct AcceptTrouble {
    since: Option<Instant>,
    logged: Option<Instant>,
    failures: u64,
}

impl AcceptTrouble {
    fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.failures += 1;
        let now = Instant::now();
        self.since.get_or_insert(now);
        if self
            .logged
            .is_none_or(|t| now - t >= Duration::from_secs(60))
        {
            tracing::warn!(error = %e, failures = self.failures, "admin listener: accept failed; backing off (out of file descriptors?)");
            self.logged = Some(now);
        }
        // 10 ms doubling to 1 s.
        let exp = self.failures.min(7) as u32;
        Duration::from_millis(10 * 2u64.pow(exp)).min(Duration::from_secs(1))
    }

    fn ok(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(failures = self.failures, after = ?since.elapsed(), "admin listener: accepting again");
        }
        self.failures = 0;
        self.logged = None;
    }
}

/// Waits until `listener` has a connection or `wait` passed.
fn readable(listener: &TcpListener, wait: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut fd, 1, wait.as_millis() as libc::c_int) > 0 }
}

/// One worker: accepts and serves connections until `stopped()`; `tick`
/// runs at least every 200 ms.
pub fn work(
    listener: &TcpListener,
    stopped: &dyn Fn() -> bool,
    tick: &dyn Fn(),
    serve: &dyn Fn(&mut TcpStream, SocketAddr),
) {
    let mut trouble = AcceptTrouble::default();
    while !stopped() {
        tick();
        if !readable(listener, Duration::from_millis(200)) {
            continue;
        }
        match listener.accept() {
            Ok((mut stream, peer)) => {
                trouble.ok();
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                serve(&mut stream, peer);
            }
            // Another worker took it.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => std::thread::sleep(trouble.failed(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(raw: &[u8]) -> Result<Request, Answer> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let raw = raw.to_vec();
        let client = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(&raw).unwrap();
            c
        });
        let (mut s, peer) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let r = read_request(&mut s, peer);
        drop(client.join().unwrap());
        r
    }

    #[test]
    fn requests_are_read_within_limits() {
        let r = roundtrip(b"POST /queue/hold?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nX-Tern-Operator: me\r\n\r\nbody").unwrap();
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.url, "/queue/hold?x=1");
        assert_eq!(r.header("x-tern-operator"), Some("me"));
        assert_eq!(r.body, b"body");
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(URL_MAX + 1));
        assert_eq!(roundtrip(long.as_bytes()).err().unwrap().code, 414);
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            BODY_MAX + 1
        );
        assert_eq!(roundtrip(big.as_bytes()).err().unwrap().code, 413);
        assert_eq!(roundtrip(b"nonsense\r\n\r\n").err().unwrap().code, 400);
        assert_eq!(
            roundtrip(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
                .err()
                .unwrap()
                .code,
            411
        );
    }
}
