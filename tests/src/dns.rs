//! A small authoritative DNS server for tests: UDP and TCP on one loopback
//! port, answering from an in-memory [`Zone`] that a test may replace
//! while it runs. Message parsing and encoding is hickory-proto's.
//!
//! Answers: the records of the asked type (TTL [`TTL_SECS`]); a known name
//! without such records: NOERROR, empty answer; an unknown name: NXDOMAIN;
//! a name marked [`Zone::servfail`]: SERVFAIL. Negative answers carry an
//! SOA whose minimum is [`TTL_SECS`], so resolvers cache them as briefly.
//! A UDP answer larger than the client's payload size (512 without EDNS) is
//! sent truncated (TC), and the client retries over TCP.
//!
//! Threads: one for UDP, one accepting TCP, one per TCP connection. All
//! poll a stop flag and are joined when the [`TestDns`] is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record};

/// TTL of every answer, and negative-caching time: short, so a test that
/// changes the zone sees the change after sleeping this long.
pub const TTL_SECS: u32 = 1;

/// How often the server threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// UDP payload size we accept from EDNS clients (RFC 9715's safe size).
const EDNS_PAYLOAD_MAX: u16 = 1232;

/// Records by owner name (lower case, no trailing dot).
#[derive(Clone, Debug, Default)]
pub struct Zone {
    records: BTreeMap<String, Vec<RData>>,
    servfail: BTreeSet<String>,
}

impl Zone {
    /// An empty zone: every name is NXDOMAIN.
    pub fn new() -> Zone {
        Zone::default()
    }

    /// Adds `domain MX preference exchange`.
    pub fn mx(self, domain: &str, preference: u16, exchange: &str) -> Zone {
        self.with(domain, RData::MX(MX::new(preference, name(exchange))))
    }

    /// Adds the RFC 7505 null MX `domain MX 0 .`.
    pub fn null_mx(self, domain: &str) -> Zone {
        self.with(domain, RData::MX(MX::new(0, Name::root())))
    }

    /// Adds `name A ip`.
    pub fn a(self, name: &str, ip: Ipv4Addr) -> Zone {
        self.with(name, RData::A(A(ip)))
    }

    /// Adds `name AAAA ip`.
    pub fn aaaa(self, name: &str, ip: Ipv6Addr) -> Zone {
        self.with(name, RData::AAAA(AAAA(ip)))
    }

    /// Adds `name TXT "text"` (one string; split in 255-byte strings).
    pub fn txt(self, name: &str, text: &str) -> Zone {
        let parts = text
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8_lossy(c).into_owned());
        self.with(name, RData::TXT(TXT::new(parts.collect())))
    }

    /// Adds `name SRV priority weight port target` (RFC 2782; target "."
    /// says the service is not available).
    pub fn srv(self, name: &str, priority: u16, weight: u16, port: u16, target: &str) -> Zone {
        let target = if target == "." {
            Name::root()
        } else {
            self::name(target)
        };
        self.with(name, RData::SRV(SRV::new(priority, weight, port, target)))
    }

    /// Answers every query for `name` with SERVFAIL.
    pub fn servfail(mut self, name: &str) -> Zone {
        self.servfail.insert(key(name));
        self
    }

    fn with(mut self, owner: &str, data: RData) -> Zone {
        self.records.entry(key(owner)).or_default().push(data);
        self
    }

    /// Does `name` exist: it has records, or is an ancestor of a name that
    /// has (an empty non-terminal, RFC 8020).
    fn exists(&self, name: &str) -> bool {
        let suffix = format!(".{name}");
        self.records
            .keys()
            .any(|owner| owner == name || owner.ends_with(&suffix))
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn name(s: &str) -> Name {
    let mut name = Name::from_ascii(s).unwrap_or_else(|e| panic!("bad name {s:?}: {e}"));
    name.set_fqdn(true);
    name
}

/// State shared with the server threads.
struct Shared {
    zone: Mutex<Zone>,
    queries: AtomicUsize,
    tcp_queries: AtomicUsize,
    stop: AtomicBool,
}

/// The running server; stops and joins its threads on drop.
pub struct TestDns {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl TestDns {
    /// Serves `zone` on `ip` (e.g. 127.0.0.53), on a port free for both
    /// UDP and TCP.
    pub fn start(ip: IpAddr, zone: Zone) -> TestDns {
        let (udp, tcp) = bind_pair(ip);
        let addr = udp.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            zone: Mutex::new(zone),
            queries: AtomicUsize::new(0),
            tcp_queries: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        udp.set_read_timeout(Some(POLL)).expect("UDP read timeout");
        let udp_shared = shared.clone();
        let tcp_shared = shared.clone();
        let threads = vec![
            spawn("test-dns-udp", move || serve_udp(&udp, &udp_shared)),
            spawn("test-dns-tcp", move || serve_tcp(&tcp, &tcp_shared)),
        ];
        TestDns {
            addr,
            shared,
            threads,
        }
    }

    /// Where it listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the zone; the next query sees the new one.
    pub fn set_zone(&self, zone: Zone) {
        *self.shared.zone.lock().unwrap() = zone;
    }

    /// Queries received so far (UDP and TCP, well-formed or not).
    pub fn queries(&self) -> usize {
        self.shared.queries.load(Ordering::SeqCst)
    }

    /// Of [`TestDns::queries`], those that came over TCP.
    pub fn tcp_queries(&self) -> usize {
        self.shared.tcp_queries.load(Ordering::SeqCst)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept; it then sees the stop flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("spawn test DNS thread")
}

/// A UDP socket on a free port of `ip` and a TCP listener on the same port.
fn bind_pair(ip: IpAddr) -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind((ip, 0)).unwrap_or_else(|e| panic!("bind UDP {ip}: {e}"));
        let addr = udp.local_addr().expect("local_addr");
        if let Ok(tcp) = TcpListener::bind(addr) {
            return (udp, tcp);
        }
    }
    panic!("no port on {ip} free for both UDP and TCP");
}

fn serve_udp(socket: &UdpSocket, shared: &Shared) {
    let mut buf = [0u8; 4096];
    while !shared.stop.load(Ordering::SeqCst) {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            // Timeouts let us look at the stop flag; ICMP errors left by
            // earlier replies to clients that went away are not ours.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock
                        | ErrorKind::TimedOut
                        | ErrorKind::ConnectionRefused
                        | ErrorKind::ConnectionReset
                ) =>
            {
                continue
            }
            Err(e) => panic!("test DNS UDP recv: {e}"),
        };
        shared.queries.fetch_add(1, Ordering::SeqCst);
        let Some((response, payload_max)) = respond(&buf[..len], shared) else {
            continue;
        };
        let mut bytes = response.to_vec().expect("encode response");
        if bytes.len() > usize::from(payload_max) {
            bytes = response.truncate().to_vec().expect("encode truncated");
        }
        let _ = socket.send_to(&bytes, peer);
    }
}

fn serve_tcp(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut connections = Vec::new();
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let shared = shared.clone();
        connections.push(spawn("test-dns-conn", move || {
            serve_connection(stream, &shared)
        }));
        connections.retain(|c: &JoinHandle<()>| !c.is_finished());
    }
    for connection in connections {
        let _ = connection.join();
    }
}

/// RFC 1035 4.2.2: each message is preceded by its two-byte length.
fn serve_connection(mut stream: TcpStream, shared: &Shared) {
    stream
        .set_read_timeout(Some(POLL))
        .expect("TCP read timeout");
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !shared.stop.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
        while pending.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([pending[0], pending[1]]));
            if pending.len() < 2 + len {
                break;
            }
            let query: Vec<u8> = pending.drain(..2 + len).skip(2).collect();
            shared.queries.fetch_add(1, Ordering::SeqCst);
            shared.tcp_queries.fetch_add(1, Ordering::SeqCst);
            let Some((response, _)) = respond(&query, shared) else {
                continue;
            };
            let bytes = response.to_vec().expect("encode response");
            let len = u16::try_from(bytes.len()).expect("response over 64 KiB");
            let mut frame = len.to_be_bytes().to_vec();
            frame.extend_from_slice(&bytes);
            if stream.write_all(&frame).is_err() {
                return;
            }
        }
    }
}

/// The response to a query, and the client's UDP payload size; `None` for
/// anything that is not a parsable message (dropped, like most servers do).
fn respond(query: &[u8], shared: &Shared) -> Option<(Message, u16)> {
    let request = Message::from_vec(query).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.add_queries(request.queries.iter().cloned());
    let payload_max = request.edns.as_ref().map_or(512, |edns| {
        let mut ours = Edns::new();
        ours.set_max_payload(EDNS_PAYLOAD_MAX);
        response.set_edns(ours);
        edns.max_payload().clamp(512, EDNS_PAYLOAD_MAX)
    });
    let [question] = &request.queries[..] else {
        response.metadata.response_code = ResponseCode::FormErr;
        return Some((response, payload_max));
    };
    if request.metadata.op_code != OpCode::Query {
        response.metadata.response_code = ResponseCode::NotImp;
        return Some((response, payload_max));
    }
    let zone = shared.zone.lock().unwrap();
    let owner = key(&question.name().to_ascii());
    if zone.servfail.contains(&owner) {
        response.metadata.response_code = ResponseCode::ServFail;
        return Some((response, payload_max));
    }
    response.metadata.authoritative = true;
    let answers: Vec<Record> = zone
        .records
        .get(&owner)
        .into_iter()
        .flatten()
        .filter(|data| data.record_type() == question.query_type())
        .map(|data| Record::from_rdata(question.name().clone(), TTL_SECS, data.clone()))
        .collect();
    if answers.is_empty() {
        if !zone.exists(&owner) {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        response.add_authority(negative_soa());
    }
    response.insert_answers(answers);
    Some((response, payload_max))
}

/// The SOA of negative answers; its minimum is the negative-cache TTL
/// (RFC 2308 5).
fn negative_soa() -> Record {
    let soa = SOA::new(
        name("ns.test."),
        name("hostmaster.test."),
        1,
        3600,
        600,
        86400,
        TTL_SECS,
    );
    Record::from_rdata(Name::root(), TTL_SECS, RData::SOA(soa))
}
