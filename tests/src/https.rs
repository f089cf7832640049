//! A small HTTPS server for tests (MTA-STS policies): answers `GET` with
//! the body set for the request's `Host` (port dropped), `404` for hosts
//! without one. One thread, one connection at a time, every read and
//! write with a timeout; stopped and joined on drop.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::ServerConfig;

/// Longest request head read.
const REQUEST_BYTES_MAX: usize = 16 * 1024;

type Bodies = Arc<Mutex<HashMap<String, String>>>;

/// The server.
pub struct HttpsServer {
    addr: SocketAddr,
    bodies: Bodies,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpsServer {
    /// Listens on `addr` (port 0: any) with `config`.
    pub fn start(addr: SocketAddr, config: Arc<ServerConfig>) -> HttpsServer {
        let listener = TcpListener::bind(addr).expect("bind the HTTPS server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let bodies: Bodies = Arc::default();
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, r, s) = (bodies.clone(), requests.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("test-https".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((tcp, _)) => {
                            r.fetch_add(1, Ordering::Relaxed);
                            let _ = serve(tcp, config.clone(), &b);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
            .expect("spawn the HTTPS server");
        HttpsServer {
            addr,
            bodies,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `body` (text/plain) for `host`; `None`: 404.
    pub fn set(&self, host: &str, body: Option<&str>) {
        let mut b = self.bodies.lock().unwrap();
        match body {
            Some(body) => b.insert(host.to_owned(), body.to_owned()),
            None => b.remove(host),
        };
    }

    /// Connections accepted so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(tcp: TcpStream, config: Arc<ServerConfig>, bodies: &Bodies) -> std::io::Result<()> {
    tcp.set_nonblocking(false)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buf)?;
        if n == 0 || head.len() > REQUEST_BYTES_MAX {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let host = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("host").then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
    let body = bodies.lock().unwrap().get(host).cloned();
    let response = match body {
        Some(b) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
            b.len()
        ),
        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
    };
    tls.write_all(response.as_bytes())?;
    tls.flush()?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(())
}
