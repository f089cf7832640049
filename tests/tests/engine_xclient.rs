//! XCLIENT against the real binary: tern as the back end of a front end
//! (`relay.front_end_networks`). The front end is a client bound to
//! 127.0.0.5 (every 127.0.0.0/8 address is this host's); everyone else
//! connects from 127.0.0.1. The real clients XCLIENT names (192.0.2.x)
//! exist only in the commands: no traffic goes there.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use tern_tests::server::{wait_until, Options, TernProcess};
use tern_tests::smtp::{dot_stuff, message, parse_reply, show, Reply, REPLY_WAIT};

const FRONT_END: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

/// A blocking SMTP connection from a chosen loopback address (the
/// helpers' `Client` connects from whatever the kernel picks:
/// 127.0.0.1).
struct FrontEnd {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A TCP connection to `to` bound to `from` before connecting.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only: {to}");
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| {
        // SAFETY: sockaddr_in is plain old data; all-zero is valid.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(ip).to_be();
        sa.sin_port = port.to_be();
        sa
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain syscalls on a socket this function owns; the
    // sockaddr structs are initialised and sized correctly; the fd is
    // handed to the TcpStream, which closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let local = sockaddr(from, 0);
        let rc = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len);
        assert_eq!(rc, 0, "bind {from}: {}", std::io::Error::last_os_error());
        let remote = sockaddr(*to.ip(), to.port());
        let rc = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len);
        assert_eq!(rc, 0, "connect {to}: {}", std::io::Error::last_os_error());
        stream
    }
}

impl FrontEnd {
    /// Connects from [`FRONT_END`] and reads the 220 greeting.
    #[track_caller]
    fn open(to: SocketAddr) -> FrontEnd {
        let stream = connect_from(FRONT_END, to);
        stream.set_read_timeout(Some(REPLY_WAIT)).unwrap();
        stream.set_write_timeout(Some(REPLY_WAIT)).unwrap();
        let mut c = FrontEnd {
            stream,
            buf: Vec::new(),
        };
        c.reply().assert(220, None);
        c
    }

    #[track_caller]
    fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("send {:?}: {e}", show(bytes)));
    }

    #[track_caller]
    fn reply(&mut self) -> Reply {
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    return reply;
                }
                Ok(None) => {}
                Err(e) => panic!("{e}"),
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("closed while a reply was expected: {:?}", show(&self.buf)),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading a reply: {e}"),
            }
        }
    }

    #[track_caller]
    fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    #[track_caller]
    fn expect(&mut self, line: &str, code: u16, enhanced: &str) -> Reply {
        let r = self.cmd(line);
        r.expect(code, enhanced);
        r
    }

    /// EHLO, which must be 250 and advertise XCLIENT.
    #[track_caller]
    fn ehlo(&mut self) {
        let r = self.cmd("EHLO fe.test");
        r.assert(250, None);
        assert!(
            advertises_xclient(&r),
            "a front end is offered XCLIENT: {r}"
        );
    }

    /// XCLIENT `args`, which must be answered with the new greeting; then
    /// EHLO again.
    #[track_caller]
    fn xclient(&mut self, args: &str) {
        self.cmd(&format!("XCLIENT {args}")).assert(220, None);
        self.ehlo();
    }

    /// The server closed the connection (reset counts).
    #[track_caller]
    fn expect_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "bytes before close: {:?}",
            show(&self.buf)
        );
        let mut chunk = [0u8; 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {}
            Ok(n) => panic!("expected a close; got {:?}", show(&chunk[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected a close; read failed: {e}"),
        }
    }

    #[track_caller]
    fn quit(mut self) {
        self.expect("QUIT", 221, "2.0.0");
        self.expect_closed();
    }
}

fn advertises_xclient(ehlo: &Reply) -> bool {
    ehlo.lines.iter().any(|l| l.starts_with("XCLIENT "))
}

/// `tern_xclient_total{result="RESULT"}`, summed over cores.
fn xclient_count(tern: &TernProcess, result: &str) -> u64 {
    let wanted = format!("result=\"{result}\"");
    tern.metrics()
        .lines()
        .filter(|l| l.starts_with("tern_xclient_total{") && l.contains(&wanted))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// No SMTP connection open (a released slot is gone from the per-IP
/// table too).
fn wait_idle(tern: &TernProcess) {
    wait_until(
        "every connection to be closed",
        Duration::from_secs(10),
        || tern.counter("tern_connections_open") == 0,
    );
}

#[test]
fn only_listed_front_ends_may_use_xclient() {
    let tern = TernProcess::start(Options::with_config(
        "[relay]\nfront_end_networks = [\"127.0.0.5\"]\n",
    ));
    // 127.0.0.1 may relay (client_networks) but is no front end.
    let mut c = tern.client();
    let ehlo = c.cmd("EHLO client.test");
    ehlo.assert(250, None);
    assert!(!advertises_xclient(&ehlo), "{ehlo}");
    c.expect("XCLIENT ADDR=192.0.2.9 PORT=4242", 550, "5.7.0");
    // The session goes on as the client it is.
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<x@foreign.test>", 250, "2.1.5");
    c.quit();
    // The front end is offered it.
    let mut fe = FrontEnd::open(tern.addr());
    fe.ehlo();
    fe.quit();
    // Without front_end_networks nobody is.
    let plain = TernProcess::start(Options::default());
    let mut fe = FrontEnd::open(plain.addr());
    let ehlo = fe.cmd("EHLO fe.test");
    assert!(!advertises_xclient(&ehlo), "{ehlo}");
    fe.expect("XCLIENT ADDR=192.0.2.9", 550, "5.7.0");
    fe.quit();
}

#[test]
fn the_real_client_is_the_one_relay_control_and_received_see() {
    let tern = TernProcess::start(Options::with_config(
        r#"
[relay]
client_networks = ["127.0.0.0/8"]
recipient_domains = ["local.test"]
front_end_networks = ["127.0.0.5"]
"#,
    ));
    let mut fe = FrontEnd::open(tern.addr());
    fe.ehlo();
    // The front end itself (127.0.0.5, in client_networks) may relay.
    fe.expect("MAIL FROM:<s@elsewhere.test>", 250, "2.1.0");
    fe.expect("RCPT TO:<x@foreign.test>", 250, "2.1.5");
    fe.expect("RSET", 250, "2.0.0");
    fe.xclient("ADDR=192.0.2.9 PORT=4242 HELO=real.example PROTO=ESMTP");
    // 192.0.2.9 is not in client_networks: only the listed domain.
    fe.expect("MAIL FROM:<s@elsewhere.test>", 250, "2.1.0");
    fe.expect("RCPT TO:<x@foreign.test>", 554, "5.7.1");
    fe.expect("RCPT TO:<x@local.test>", 250, "2.1.5");
    fe.cmd("DATA").assert(354, None);
    let content = message("behind a front end", &["x"]);
    fe.send(&dot_stuff(&content));
    let id = fe.reply().queue_id();
    // LOGIN=: authenticated, as with SMTP AUTH: it may relay.
    fe.xclient("ADDR=192.0.2.10 PORT=4343 HELO=roamer.example PROTO=ESMTP LOGIN=alice");
    fe.expect("MAIL FROM:<alice@elsewhere.test>", 250, "2.1.0");
    fe.expect("RCPT TO:<y@foreign.test>", 250, "2.1.5");
    fe.cmd("DATA").assert(354, None);
    fe.send(&dot_stuff(&message("logged in", &["y"])));
    let logged_in = fe.reply().queue_id();
    fe.quit();

    let shown = tern.queue_show(&id);
    let received = String::from_utf8_lossy(shown.received()).into_owned();
    assert!(
        received.starts_with("Received: from real.example (192.0.2.9)\r\n"),
        "{received}"
    );
    assert!(received.contains(" with ESMTP id "), "{received}");
    assert!(!received.contains("127.0.0.5"), "{received}");
    assert_eq!(shown.content(), &content[..]);
    let received = tern.queue_show(&logged_in).received().to_vec();
    let received = String::from_utf8_lossy(&received);
    assert!(
        received.starts_with("Received: from roamer.example (192.0.2.10)\r\n"),
        "{received}"
    );
    assert!(
        received.contains("(Authenticated sender: alice)"),
        "{received}"
    );
    assert!(received.contains(" with ESMTPA id "), "{received}");
    // The accept log line names the real client.
    wait_until("the accept log lines", Duration::from_secs(5), || {
        tern.stderr().matches("accepted").count() >= 2
    });
    let log = tern.stderr();
    let line = log
        .lines()
        .find(|l| l.contains(&id) && l.contains("accepted"))
        .unwrap_or_else(|| panic!("no accept line for {id}:\n{log}"));
    assert!(line.contains("192.0.2.9:4242"), "{line}");
    assert_eq!(xclient_count(&tern, "accepted"), 2);
    assert_eq!(xclient_count(&tern, "refused"), 0);
}

#[test]
fn the_per_ip_limit_counts_the_real_client_not_the_front_end() {
    let tern = TernProcess::start(Options::with_config(
        "[smtp]\nconnections_per_ip_max = 1\n[relay]\nfront_end_networks = [\"127.0.0.5\"]\n",
    ));
    wait_idle(&tern);
    // Anyone else is limited at connect.
    let c = tern.client();
    let second = tern_tests::server::first_reply(tern.addr()).expect("a reply");
    second.expect(421, "4.7.0");
    drop(c);
    // The front end is not: three sessions from 127.0.0.5.
    let mut first = FrontEnd::open(tern.addr());
    first.ehlo();
    first.xclient("ADDR=192.0.2.9 PORT=1 HELO=a.example PROTO=ESMTP");
    let mut again = FrontEnd::open(tern.addr());
    again.ehlo();
    let refused = again.cmd("XCLIENT ADDR=192.0.2.9 PORT=2 HELO=a.example PROTO=ESMTP");
    refused.expect(421, "4.7.0");
    again.expect_closed();
    let mut other = FrontEnd::open(tern.addr());
    other.ehlo();
    other.xclient("ADDR=192.0.2.10 PORT=3 HELO=b.example PROTO=ESMTP");
    // A session moved to another real client frees the first one's count.
    let mut moved = FrontEnd::open(tern.addr());
    moved.ehlo();
    moved.xclient("ADDR=192.0.2.11 PORT=4");
    moved.expect("XCLIENT ADDR=192.0.2.10 PORT=4", 421, "4.7.0");
    moved.expect_closed();
    wait_until(
        "the refused sessions' slots to be released",
        Duration::from_secs(10),
        || tern.counter("tern_connections_open") == 2,
    );
    other.xclient("ADDR=192.0.2.11 PORT=5");
    let mut after = FrontEnd::open(tern.addr());
    after.ehlo();
    after.xclient("ADDR=192.0.2.10 PORT=6");
    // The first session ends: 192.0.2.9 may come again.
    first.quit();
    wait_until(
        "the first session's slot to be released",
        Duration::from_secs(10),
        || tern.counter("tern_connections_open") == 2,
    );
    let mut last = FrontEnd::open(tern.addr());
    last.ehlo();
    last.xclient("ADDR=192.0.2.9 PORT=7");
    last.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    last.quit();
    other.quit();
    after.quit();
    assert_eq!(xclient_count(&tern, "refused"), 2);
    assert_eq!(xclient_count(&tern, "accepted"), 6);
}
