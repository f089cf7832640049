//! The server session in proxy mode (the caller answers MAIL, RCPT and
//! DATA with the replies of the server behind, and takes the content in
//! pieces as it arrives) and XCLIENT, driven by scripted conversations
//! against a fake server behind.

use std::rc::Rc;

use tern_smtp::address::{ForwardPath, Mailbox, ReversePath};
use tern_smtp::command::{Body, MailParams};
use tern_smtp::server::proxy::{backend_failed, CONTENT_PIECE_BYTES};
use tern_smtp::server::{AcceptAll, Event, Policy, ServerConfig, Session};
use tern_smtp::xclient::{Xclient, EHLO_LINE};
use tern_smtp::{Reply, Status};

/// Size of the reads the content is fed in (one TCP read).
const READ: usize = 4096;

fn config(proxy: bool) -> ServerConfig {
    ServerConfig {
        hostname: if proxy { "proxy.test" } else { "mx.test" }.into(),
        message_bytes_max: 1 << 20,
        recipients_max: 100,
        errors_max: 5,
        junk_commands_max: tern_smtp::limits::JUNK_COMMANDS_MAX_DEFAULT,
        extra_ehlo: Vec::new(),
        shadow_ehlo: None,
        proxy,
    }
}

/// What the fake server behind (the caller) does about one event.
enum Answer {
    /// [`Session::verdict`].
    Verdict(Reply),
    /// [`Session::complete_with`].
    Complete(Reply),
    /// [`Session::xclient_result`].
    Xclient(Result<(), Reply>),
    /// [`Session::abandon`] (the server behind failed mid-content).
    Abandon(Reply),
    /// Nothing to answer (a content piece, Reset).
    Nothing,
}

/// The server behind that accepts everything, with replies of its own
/// wording (so a test sees they are passed on as given).
fn accept_all(ev: &Event) -> Answer {
    match ev {
        Event::Mail { .. } => Answer::Verdict(Reply::new(250, Status(2, 1, 0), "Sender ok behind")),
        Event::Rcpt { .. } => {
            Answer::Verdict(Reply::new(250, Status(2, 1, 5), "Recipient ok behind"))
        }
        Event::Data => Answer::Verdict(Reply::plain(354, vec!["Go ahead, says behind".into()])),
        Event::Content { last: true, .. } => {
            Answer::Complete(Reply::new(250, Status(2, 0, 0), "Ok: queued as B1"))
        }
        Event::Xclient(_) => Answer::Xclient(Ok(())),
        _ => Answer::Nothing,
    }
}

/// A session, the server behind it, and everything that happened.
struct Conv<P> {
    s: Session<P>,
    backend: Box<dyn FnMut(&Event) -> Answer>,
    /// All replies sent so far.
    out: String,
    /// All events, in the order `poll` returned them.
    events: Vec<Event>,
    messages: usize,
    closed: bool,
}

impl<P: Policy> Conv<P> {
    fn new(config: ServerConfig, policy: P) -> Conv<P> {
        Conv::with(config, policy, accept_all)
    }

    fn with(
        config: ServerConfig,
        policy: P,
        backend: impl FnMut(&Event) -> Answer + 'static,
    ) -> Conv<P> {
        let mut c = Conv {
            s: Session::new(Rc::new(config), policy),
            backend: Box::new(backend),
            out: String::new(),
            events: Vec::new(),
            messages: 0,
            closed: false,
        };
        c.send(b"");
        c
    }

    /// Feeds one read, drives the session until it needs input (a plain
    /// session's messages are accepted as "Q<n>"), and returns the
    /// replies sent for it.
    fn send(&mut self, input: &[u8]) -> String {
        self.s.receive(input);
        while let Some(ev) = self.s.poll() {
            match &ev {
                Event::Message { .. } => {
                    self.messages += 1;
                    let id = format!("Q{}", self.messages);
                    self.s.complete(Ok(&id));
                }
                Event::Close => self.closed = true,
                _ => match (self.backend)(&ev) {
                    Answer::Verdict(r) => self.s.verdict(r),
                    Answer::Complete(r) => self.s.complete_with(r),
                    Answer::Xclient(r) => self.s.xclient_result(r),
                    Answer::Abandon(r) => self.s.abandon(r),
                    Answer::Nothing => {}
                },
            }
            self.events.push(ev);
        }
        let sent = String::from_utf8_lossy(self.s.transmit()).into_owned();
        let n = self.s.transmit().len();
        self.s.transmitted(n);
        self.out.push_str(&sent);
        sent
    }

    /// Feeds `input` in reads of [`READ`] octets.
    fn send_in_reads(&mut self, input: &[u8]) -> String {
        input.chunks(READ).map(|c| self.send(c)).collect()
    }

    /// The events since the last call.
    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

fn codes(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| &l[..3])
        .collect()
}

#[allow(unreachable_patterns)]
fn kind(e: &Event) -> &'static str {
    match e {
        Event::Mail { .. } => "Mail",
        Event::Rcpt { .. } => "Rcpt",
        Event::Data => "Data",
        Event::Content { last: false, .. } => "Content",
        Event::Content { last: true, .. } => "Content(last)",
        Event::Reset => "Reset",
        Event::Xclient(_) => "Xclient",
        Event::Message { .. } => "Message",
        Event::Close => "Close",
        Event::Discard { .. } => "Discard",
        Event::StartTls => "StartTls",
        Event::Auth { .. } => "Auth",
        _ => "other",
    }
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(kind).collect()
}

/// The content pieces among `events`: their concatenation, and the length
/// and `last` of each.
fn pieces(events: &[Event]) -> (Vec<u8>, Vec<(usize, bool)>) {
    let mut all = Vec::new();
    let mut each = Vec::new();
    for e in events {
        if let Event::Content { bytes, last } = e {
            all.extend_from_slice(bytes);
            each.push((bytes.len(), *last));
        }
    }
    (all, each)
}

fn mailbox(local: &str, domain: &str) -> Mailbox {
    Mailbox {
        local: local.into(),
        domain: domain.into(),
    }
}

/// About `bytes` octets of CRLF text lines, un-dot-stuffed: the first
/// line and many others start with a dot, some lines are a lone dot.
fn text(bytes: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while out.len() < bytes {
        let line = match i % 9 {
            0 => format!(".line {i} starts with a dot"),
            4 => ".".to_string(),
            7 => format!("..{i} two dots"),
            _ => format!("line {i} {}", "x".repeat(i % 77)),
        };
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
        i += 1;
    }
    out
}

/// `text` as sent after DATA (RFC 5321 4.5.2), with the final `.CRLF`.
fn dot_stuffed(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 8);
    for line in text.split_inclusive(|b| *b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Checks the pieces of one message: several of them, none larger than a
/// piece plus one read, only the final one `last`; returns their
/// concatenation.
fn check_pieces(events: &[Event], at_least: usize) -> Vec<u8> {
    let (all, each) = pieces(events);
    assert!(each.len() >= at_least, "pieces: {each:?}");
    for (i, (len, last)) in each.iter().enumerate() {
        assert!(
            *len <= CONTENT_PIECE_BYTES + READ,
            "piece {i} holds {len} octets: {each:?}"
        );
        assert_eq!(
            *last,
            i + 1 == each.len(),
            "only the final piece is last: {each:?}"
        );
    }
    all
}

#[test]
fn ehlo_is_local_and_mail_verdicts_go_out_as_given() {
    fn behind(ev: &Event) -> Answer {
        match ev {
            Event::Mail { from, .. } if from.to_string().starts_with("late") => {
                Answer::Verdict(Reply::new(451, Status(4, 3, 2), "Behind: try again later"))
            }
            Event::Mail { .. } => Answer::Verdict(Reply::plain(
                250,
                vec![
                    "2.1.0 first line behind".into(),
                    "2.1.0 Sender ok behind".into(),
                ],
            )),
            e => accept_all(e),
        }
    }
    let mut c = Conv::with(config(true), AcceptAll, behind);
    assert_eq!(c.out, "220 proxy.test ESMTP tern\r\n");
    let r = c.send(b"EHLO client.test\r\n");
    assert!(
        r.starts_with("250-proxy.test\r\n250-PIPELINING\r\n250-SIZE 1048576\r\n"),
        "{r}"
    );
    assert!(!r.contains("XCLIENT"), "{r}");
    assert!(c.take_events().is_empty(), "EHLO is answered locally");
    // The session's own checks come first: no event for what it refuses.
    let r = c.send(b"MAIL FROM:<a@x.test> SIZE=2000000\r\n");
    assert!(r.starts_with("552 5.3.4"), "{r}");
    let r = c.send(b"RCPT TO:<b@y.test>\r\n");
    assert_eq!(r, "503 5.5.1 Error: need MAIL command\r\n");
    assert!(c.take_events().is_empty());
    // Accepted behind: the reply as the server behind worded it.
    let r = c.send(b"MAIL FROM:<a@x.test> SIZE=2000 BODY=8BITMIME\r\n");
    assert_eq!(
        c.take_events(),
        [Event::Mail {
            from: ReversePath::Mailbox(mailbox("a", "x.test")),
            params: MailParams {
                size: Some(2000),
                body: Body::EightBitMime,
                ..MailParams::default()
            },
        }]
    );
    assert_eq!(
        r,
        "250-2.1.0 first line behind\r\n250 2.1.0 Sender ok behind\r\n"
    );
    // The transaction is open: RCPT goes behind too.
    let r = c.send(b"RCPT TO:<b@y.test>\r\n");
    assert_eq!(
        c.take_events(),
        [Event::Rcpt {
            to: ForwardPath::Mailbox(mailbox("b", "y.test"))
        }]
    );
    assert_eq!(r, "250 2.1.5 Recipient ok behind\r\n");
    assert!(!c.closed);
    // Refused behind: sent as given, no transaction opened.
    let mut c = Conv::with(config(true), AcceptAll, behind);
    c.send(b"EHLO client.test\r\n");
    let r = c.send(b"MAIL FROM:<late@x.test>\r\n");
    assert_eq!(r, "451 4.3.2 Behind: try again later\r\n");
    assert_eq!(kinds(&c.take_events()), ["Mail"]);
    let r = c.send(b"RCPT TO:<b@y.test>\r\n");
    assert_eq!(r, "503 5.5.1 Error: need MAIL command\r\n");
    assert!(c.take_events().is_empty());
    assert!(!c.closed);
}

#[test]
fn rcpt_verdicts_550_count_as_errors_452_do_not() {
    let behind = |ev: &Event| match ev {
        Event::Rcpt { to } if to.to_string().starts_with("full") => {
            Answer::Verdict(Reply::new(452, Status(4, 2, 2), "Mailbox full behind"))
        }
        Event::Rcpt { to } if to.to_string().starts_with("bad") => {
            Answer::Verdict(Reply::new(550, Status(5, 1, 1), "User unknown behind"))
        }
        e => accept_all(e),
    };
    let mut c = Conv::with(
        ServerConfig {
            errors_max: 3,
            ..config(true)
        },
        AcceptAll,
        behind,
    );
    c.send(b"EHLO client.test\r\n");
    c.send(b"MAIL FROM:<a@x.test>\r\n");
    // Transient refusals (the server behind's back pressure): not errors.
    for i in 0..6 {
        let r = c.send(format!("RCPT TO:<full{i}@y.test>\r\n").as_bytes());
        assert_eq!(r, "452 4.2.2 Mailbox full behind\r\n");
    }
    assert!(!c.closed);
    let r = c.send(b"RCPT TO:<good@y.test>\r\n");
    assert_eq!(r, "250 2.1.5 Recipient ok behind\r\n");
    // Permanent ones are: the third closes the session, and what was
    // pipelined after it is not processed.
    let r = c.send(b"RCPT TO:<bad1@y.test>\r\nRCPT TO:<bad2@y.test>\r\n");
    assert_eq!(r, "550 5.1.1 User unknown behind\r\n".repeat(2));
    assert!(!c.closed);
    let r = c.send(b"RCPT TO:<bad3@y.test>\r\nRCPT TO:<good2@y.test>\r\n");
    assert_eq!(
        r,
        "550 5.1.1 User unknown behind\r\n421 4.7.0 Error: too many errors\r\n"
    );
    assert!(c.closed);
    let rcpts = c
        .events
        .iter()
        .filter(|e| matches!(e, Event::Rcpt { .. }))
        .count();
    assert_eq!(rcpts, 6 + 1 + 3, "nothing asked after the 421");
    assert_eq!(kinds(&c.events).last(), Some(&"Close"));
}

#[test]
fn pipelined_commands_wait_for_each_verdict_and_replies_keep_their_order() {
    let mut c = Conv::new(config(true), AcceptAll);
    c.send(b"EHLO client.test\r\n");
    let s = &mut c.s;
    s.receive(
        b"MAIL FROM:<a@x.test> SIZE=100\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n",
    );
    assert_eq!(
        s.poll(),
        Some(Event::Mail {
            from: ReversePath::Mailbox(mailbox("a", "x.test")),
            params: MailParams {
                size: Some(100),
                ..MailParams::default()
            },
        })
    );
    // Nothing more until the verdict: no event, no reply, no reading.
    assert_eq!(s.poll(), None);
    assert_eq!(s.poll(), None);
    assert!(s.transmit().is_empty());
    assert!(!s.wants_input());
    s.verdict(Reply::new(250, Status(2, 1, 0), "a ok"));
    assert_eq!(
        s.poll(),
        Some(Event::Rcpt {
            to: ForwardPath::Mailbox(mailbox("b", "y.test"))
        })
    );
    assert_eq!(s.poll(), None);
    assert_eq!(String::from_utf8_lossy(s.transmit()), "250 2.1.0 a ok\r\n");
    s.verdict(Reply::new(250, Status(2, 1, 5), "b ok"));
    assert_eq!(
        s.poll(),
        Some(Event::Rcpt {
            to: ForwardPath::Mailbox(mailbox("c", "y.test"))
        })
    );
    assert_eq!(s.poll(), None);
    s.verdict(Reply::new(550, Status(5, 1, 1), "c unknown"));
    assert_eq!(s.poll(), Some(Event::Data));
    assert_eq!(s.poll(), None);
    s.verdict(Reply::plain(354, vec!["Go ahead, says behind".into()]));
    assert_eq!(s.poll(), None);
    assert!(s.wants_input());
    assert_eq!(
        String::from_utf8_lossy(s.transmit()),
        "250 2.1.0 a ok\r\n250 2.1.5 b ok\r\n550 5.1.1 c unknown\r\n\
         354 End data with <CR><LF>.<CR><LF>\r\n",
        "in order; the 354 is the session's own"
    );
    let n = s.transmit().len();
    s.transmitted(n);
    let r = c.send(b"hi\r\n.\r\n");
    assert_eq!(r, "250 2.0.0 Ok: queued as B1\r\n");
    assert_eq!(
        c.take_events(),
        [Event::Content {
            bytes: b"hi\r\n".to_vec(),
            last: true
        }]
    );
    assert!(c.s.is_idle());
}

#[test]
fn data_content_comes_in_pieces_and_complete_with_answers_it() {
    let mut c = Conv::new(config(true), AcceptAll);
    c.send(b"EHLO client.test\r\n");
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    assert_eq!(kinds(&c.take_events()), ["Mail", "Rcpt"]);
    let r = c.send(b"DATA\r\n");
    assert_eq!(kinds(&c.take_events()), ["Data"]);
    assert_eq!(r, "354 End data with <CR><LF>.<CR><LF>\r\n");
    let body = text(300 << 10);
    let r = c.send_in_reads(&dot_stuffed(&body));
    assert_eq!(
        r, "250 2.0.0 Ok: queued as B1\r\n",
        "no reply before the server behind's"
    );
    let events = c.take_events();
    let all = check_pieces(&events, 4);
    assert!(all == body, "the pieces make the un-dot-stuffed content");
    assert!(events.iter().all(|e| matches!(e, Event::Content { .. })));
    assert!(c.s.is_idle());
    // The server behind may fail the message at its end: its reply too.
    let mut c = Conv::with(config(true), AcceptAll, |ev| match ev {
        Event::Content { last: true, .. } => {
            Answer::Complete(Reply::new(451, Status(4, 3, 0), "Behind: queue trouble"))
        }
        e => accept_all(e),
    });
    c.send(b"EHLO client.test\r\n");
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    c.send(b"DATA\r\n");
    let r = c.send(b"short\r\n.\r\n");
    assert_eq!(r, "451 4.3.0 Behind: queue trouble\r\n");
    assert!(c.s.is_idle());
    let r = c.send(b"RCPT TO:<b@y.test>\r\n");
    assert_eq!(r, "503 5.5.1 Error: need MAIL command\r\n");
}

#[test]
fn data_refused_behind_is_sent_and_ends_the_transaction() {
    for (code, status, text) in [
        (554, Status(5, 7, 1), "Behind: no thanks"),
        (451, Status(4, 3, 0), "Behind: later"),
    ] {
        let mut c = Conv::with(config(true), AcceptAll, move |ev| match ev {
            Event::Data => Answer::Verdict(Reply::new(code, status, text)),
            e => accept_all(e),
        });
        c.send(b"EHLO client.test\r\n");
        c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
        let r = c.send(b"DATA\r\n");
        assert_eq!(r, format!("{code} {status} {text}\r\n"));
        assert!(c.s.is_idle());
        // The would-be content is read as commands now (as a client that
        // got no 354 sends none): the transaction is gone.
        let r = c.send(b"RCPT TO:<b@y.test>\r\n");
        assert_eq!(r, "503 5.5.1 Error: need MAIL command\r\n");
        let r = c.send(b"MAIL FROM:<a@x.test>\r\n");
        assert_eq!(r, "250 2.1.0 Sender ok behind\r\n");
        assert_eq!(kinds(&c.events), ["Mail", "Rcpt", "Data", "Mail"]);
    }
}

#[test]
fn bdat_in_proxy_mode() {
    let mut c = Conv::new(config(true), AcceptAll);
    c.send(b"EHLO client.test\r\n");
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    c.take_events();
    // Chunks as the client cut them: across lines.
    let content = text(250_000);
    let (one, rest) = content.split_at(100_000);
    let (two, three) = rest.split_at(100_000);
    let mut stream = Vec::new();
    stream.extend_from_slice(format!("BDAT {}\r\n", one.len()).as_bytes());
    stream.extend_from_slice(one);
    stream.extend_from_slice(format!("BDAT {}\r\n", two.len()).as_bytes());
    stream.extend_from_slice(two);
    stream.extend_from_slice(format!("BDAT {} LAST\r\n", three.len()).as_bytes());
    stream.extend_from_slice(three);
    let r = c.send_in_reads(&stream);
    assert_eq!(
        r,
        "250 2.0.0 Ok: 100000 octets received\r\n\
         250 2.0.0 Ok: 200000 octets received\r\n\
         250 2.0.0 Ok: queued as B1\r\n"
    );
    let events = c.take_events();
    assert_eq!(
        kind(&events[0]),
        "Data",
        "the first BDAT asks: {:?}",
        kinds(&events)
    );
    assert_eq!(
        events.iter().filter(|e| **e == Event::Data).count(),
        1,
        "only the first BDAT asks"
    );
    let all = check_pieces(&events[1..], 3);
    assert!(all == content, "the pieces are the chunks, verbatim");
    assert!(c.s.is_idle());
    // The next transaction asks again.
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 5 LAST\r\nhello");
    assert_eq!(
        c.take_events(),
        [
            Event::Mail {
                from: ReversePath::Mailbox(mailbox("a", "x.test")),
                params: MailParams::default()
            },
            Event::Rcpt {
                to: ForwardPath::Mailbox(mailbox("b", "y.test"))
            },
            Event::Data,
            Event::Content {
                bytes: b"hello".to_vec(),
                last: true
            },
        ]
    );
}

#[test]
fn refused_first_bdat_consumes_its_chunk() {
    let mut c = Conv::with(config(true), AcceptAll, |ev| match ev {
        Event::Data => Answer::Verdict(Reply::new(451, Status(4, 3, 0), "Behind: later")),
        e => accept_all(e),
    });
    c.send(b"EHLO client.test\r\n");
    // The chunk looks like commands: they must not be read as such.
    let chunk = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\n";
    let mut read = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n".to_vec();
    read.extend_from_slice(format!("BDAT {} LAST\r\n", chunk.len()).as_bytes());
    read.extend_from_slice(chunk);
    read.extend_from_slice(b"NOOP\r\n");
    let r = c.send(&read);
    assert_eq!(codes(&r), ["250", "250", "451", "250"], "{r}");
    assert!(r.contains("451 4.3.0 Behind: later\r\n"));
    assert_eq!(kinds(&c.take_events()), ["Mail", "Rcpt", "Data"]);
    assert!(c.s.is_idle());
    // A refused non-last first chunk: consumed, the later chunks refused
    // locally (no transaction), consumed too.
    let mut read = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 6\r\nRSET\r\n".to_vec();
    read.extend_from_slice(b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n");
    let r = c.send(&read);
    assert_eq!(codes(&r), ["250", "250", "451", "503", "250"], "{r}");
    assert_eq!(kinds(&c.take_events()), ["Mail", "Rcpt", "Data"]);
    assert!(!c.closed);
    let r = c.send(b"MAIL FROM:<c@x.test>\r\n");
    assert_eq!(r, "250 2.1.0 Sender ok behind\r\n");
}

/// A fresh proxy session after EHLO, the given reads, then a NOOP (so
/// that a Reset handed out late is seen too): its events.
fn reset_script(message_bytes_max: usize, reads: &[&[u8]]) -> Vec<&'static str> {
    let behind = |ev: &Event| match ev {
        Event::Mail { from, .. } if from.to_string().starts_with("no") => {
            Answer::Verdict(Reply::new(550, Status(5, 7, 1), "Behind: sender refused"))
        }
        e => accept_all(e),
    };
    let mut c = Conv::with(
        ServerConfig {
            message_bytes_max,
            ..config(true)
        },
        AcceptAll,
        behind,
    );
    c.send(b"EHLO client.test\r\n");
    for read in reads {
        c.send(read);
    }
    c.send(b"NOOP\r\n");
    kinds(&c.events)
}

#[test]
fn reset_only_when_a_forwarded_transaction_is_dropped() {
    let mail: &[u8] = b"MAIL FROM:<a@x.test>\r\n";
    let tx: &[u8] = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n";
    // No transaction: no Reset.
    assert!(reset_script(1000, &[b"RSET\r\n", b"EHLO client.test\r\n"]).is_empty());
    // A MAIL refused behind opened none.
    assert_eq!(
        reset_script(1000, &[b"MAIL FROM:<no@x.test>\r\n", b"RSET\r\n"]),
        ["Mail"]
    );
    // Nor a refused MAIL (locally).
    assert!(reset_script(1000, &[b"MAIL FROM:<a@x.test> SIZE=2000\r\n", b"RSET\r\n"]).is_empty());
    // RSET, EHLO, HELO of an accepted one; once.
    assert_eq!(
        reset_script(1000, &[mail, b"RSET\r\n", b"RSET\r\n"]),
        ["Mail", "Reset"]
    );
    assert_eq!(
        reset_script(1000, &[tx, b"EHLO client.test\r\n"]),
        ["Mail", "Rcpt", "Reset"]
    );
    assert_eq!(
        reset_script(1000, &[tx, b"HELO client.test\r\n"]),
        ["Mail", "Rcpt", "Reset"]
    );
    // Not after a completed message.
    assert_eq!(
        reset_script(1000, &[tx, b"BDAT 2 LAST\r\nok", b"RSET\r\n"]),
        ["Mail", "Rcpt", "Data", "Content(last)"]
    );
    // Content refused by the session's own limit.
    let big = format!("{}\r\n.\r\n", "x".repeat(999));
    assert_eq!(
        reset_script(1000, &[tx, b"DATA\r\n", big.as_bytes()]),
        ["Mail", "Rcpt", "Data", "Reset"]
    );
    let chunk = format!("BDAT 1200 LAST\r\n{}", "y".repeat(1200));
    assert_eq!(
        reset_script(1000, &[tx, chunk.as_bytes()]),
        ["Mail", "Rcpt", "Data", "Reset"]
    );
}

/// The caller learns of a dropped transaction from the `poll` that
/// dropped it: after `poll` returned `None` it waits for the client, who
/// may send nothing more for a long time (or only QUIT).
#[test]
fn reset_is_returned_by_the_poll_that_dropped_the_transaction() {
    let tx: &[u8] = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n";
    let big = format!("{}\r\n.\r\n", "x".repeat(999));
    let chunk = format!("BDAT 1200 LAST\r\n{}", "y".repeat(1200));
    type Case<'a> = (&'a str, Vec<&'a [u8]>, &'a [u8]);
    let cases: [Case; 5] = [
        ("RSET", vec![tx], b"RSET\r\n"),
        ("EHLO", vec![tx], b"EHLO client.test\r\n"),
        ("HELO", vec![tx], b"HELO client.test\r\n"),
        ("DATA over the limit", vec![tx, b"DATA\r\n"], big.as_bytes()),
        ("BDAT over the limit", vec![tx], chunk.as_bytes()),
    ];
    let mut wrong = Vec::new();
    for (name, before, read) in cases {
        let mut c = Conv::new(
            ServerConfig {
                message_bytes_max: 1000,
                ..config(true)
            },
            AcceptAll,
        );
        c.send(b"EHLO client.test\r\n");
        for r in before {
            c.send(r);
        }
        c.take_events();
        let out = c.send(read);
        let got = kinds(&c.take_events());
        if !got.contains(&"Reset") {
            wrong.push(format!(
                "{name}: replied {:?} but the events of that read are {got:?}",
                out.trim_end()
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// [`Event::Reset`] says "drop what you forwarded": it must come before
/// the events of the commands that follow the RSET (or EHLO, or refused
/// content) in the same read, or the caller drops the new transaction
/// behind (or never hears of the reset: after Close).
#[test]
fn reset_comes_before_the_events_of_what_follows() {
    let big = format!("{}\r\n.\r\n", "x".repeat(999));
    let bdat = format!("BDAT 1200 LAST\r\n{}", "y".repeat(1200));
    type Case<'a> = (&'a str, Vec<Vec<u8>>, &'a [&'a str]);
    let cases: [Case; 5] = [
        (
            "RSET, MAIL in one read",
            vec![
                b"MAIL FROM:<a@x.test>\r\n".to_vec(),
                b"RSET\r\nMAIL FROM:<c@x.test>\r\n".to_vec(),
            ],
            &["Mail", "Reset", "Mail"],
        ),
        (
            "EHLO, MAIL in one read",
            vec![
                b"MAIL FROM:<a@x.test>\r\n".to_vec(),
                b"EHLO client.test\r\nMAIL FROM:<c@x.test>\r\n".to_vec(),
            ],
            &["Mail", "Reset", "Mail"],
        ),
        (
            "RSET, QUIT in one read",
            vec![
                b"MAIL FROM:<a@x.test>\r\n".to_vec(),
                b"RSET\r\nQUIT\r\n".to_vec(),
            ],
            &["Mail", "Reset", "Close"],
        ),
        (
            "DATA content over the limit, MAIL in one read",
            vec![
                b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n".to_vec(),
                b"DATA\r\n".to_vec(),
                [big.as_bytes(), b"MAIL FROM:<c@x.test>\r\n"].concat(),
            ],
            &["Mail", "Rcpt", "Data", "Reset", "Mail"],
        ),
        (
            "BDAT chunk over the limit, MAIL in one read",
            vec![
                b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n".to_vec(),
                [bdat.as_bytes(), b"MAIL FROM:<c@x.test>\r\n"].concat(),
            ],
            &["Mail", "Rcpt", "Data", "Reset", "Mail"],
        ),
    ];
    let mut wrong = Vec::new();
    for (name, script, want) in cases {
        let mut c = Conv::new(
            ServerConfig {
                message_bytes_max: 1000,
                ..config(true)
            },
            AcceptAll,
        );
        c.send(b"EHLO client.test\r\n");
        for read in &script {
            c.send(read);
        }
        let got = kinds(&c.events);
        if got != want {
            wrong.push(format!("{name}: want {want:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn abandon_mid_content_reads_the_rest_and_answers_451_at_its_end() {
    let mut pieces_seen = 0;
    let mut c = Conv::with(config(true), AcceptAll, move |ev| match ev {
        Event::Content { .. } => {
            pieces_seen += 1;
            assert_eq!(pieces_seen, 1, "no piece after abandon: {ev:?}");
            Answer::Abandon(backend_failed())
        }
        e => accept_all(e),
    });
    c.send(b"EHLO client.test\r\n");
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    c.send(b"DATA\r\n");
    c.take_events();
    let body = text(300 << 10);
    let r = c.send_in_reads(&dot_stuffed(&body));
    assert_eq!(
        r,
        "451 4.4.0 Error: the server behind this one failed; try again later\r\n"
    );
    assert_eq!(kinds(&c.take_events()), ["Content"]);
    assert!(c.s.is_idle());
    assert!(!c.closed);
    // The session goes on.
    let r = c.send(b"MAIL FROM:<a@x.test>\r\n");
    assert_eq!(r, "250 2.1.0 Sender ok behind\r\n");
    assert_eq!(kinds(&c.take_events()), ["Mail"]);
}

#[test]
fn abandon_mid_bdat_chunk() {
    let mut pieces_seen = 0;
    let mut c = Conv::with(config(true), AcceptAll, move |ev| match ev {
        Event::Content { .. } => {
            pieces_seen += 1;
            assert_eq!(pieces_seen, 1, "no piece after abandon: {ev:?}");
            Answer::Abandon(backend_failed())
        }
        e => accept_all(e),
    });
    c.send(b"EHLO client.test\r\n");
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    c.take_events();
    let chunk = text(200_000);
    let mut stream = format!("BDAT {} LAST\r\n", chunk.len()).into_bytes();
    stream.extend_from_slice(&chunk);
    let r = c.send_in_reads(&stream);
    assert_eq!(
        r,
        "451 4.4.0 Error: the server behind this one failed; try again later\r\n"
    );
    assert_eq!(kinds(&c.take_events()), ["Data", "Content"]);
    assert!(c.s.is_idle());
    let r = c.send(b"MAIL FROM:<a@x.test>\r\n");
    assert_eq!(r, "250 2.1.0 Sender ok behind\r\n");
}

#[test]
fn content_over_the_size_limit_is_552_and_reset_without_pieces_beyond_it() {
    let limit = 150_000;
    let cfg = ServerConfig {
        message_bytes_max: limit,
        ..config(true)
    };
    // DATA.
    let mut c = Conv::new(cfg.clone(), AcceptAll);
    c.send(b"EHLO client.test\r\n");
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    c.send(b"DATA\r\n");
    c.take_events();
    let r = c.send_in_reads(&dot_stuffed(&text(300 << 10)));
    assert_eq!(r, "552 5.3.4 Error: message file too big\r\n");
    // (When the Reset comes: reset_is_returned_by_the_poll_that_dropped_...)
    c.send(b"NOOP\r\n");
    let events = c.take_events();
    let (all, each) = pieces(&events);
    assert!(all.len() <= limit, "{each:?}");
    assert!(each.iter().all(|(_, last)| !last), "{each:?}");
    assert_eq!(
        kinds(&events).last(),
        Some(&"Reset"),
        "{:?}",
        kinds(&events)
    );
    assert_eq!(events.iter().filter(|e| **e == Event::Reset).count(), 1);
    assert!(c.s.is_idle());
    let r = c.send(b"MAIL FROM:<a@x.test>\r\n");
    assert_eq!(r, "250 2.1.0 Sender ok behind\r\n");
    // MAIL SIZE= over the limit: refused locally.
    let mut c = Conv::new(cfg.clone(), AcceptAll);
    c.send(b"EHLO client.test\r\n");
    let r = c.send(format!("MAIL FROM:<a@x.test> SIZE={}\r\n", limit + 1).as_bytes());
    assert!(r.starts_with("552 5.3.4"), "{r}");
    assert!(c.take_events().is_empty());
    // One BDAT chunk over the limit: no piece at all.
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    c.take_events();
    let mut stream = b"BDAT 200000 LAST\r\n".to_vec();
    stream.extend_from_slice(&text(200_000)[..200_000]);
    let r = c.send_in_reads(&stream);
    assert_eq!(r, "552 5.3.4 Error: message file too big\r\n");
    c.send(b"NOOP\r\n");
    assert_eq!(kinds(&c.take_events()), ["Data", "Reset"]);
    // A second chunk that passes the limit.
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    c.take_events();
    let content = text(200_000);
    let mut stream = b"BDAT 100000\r\n".to_vec();
    stream.extend_from_slice(&content[..100_000]);
    stream.extend_from_slice(b"BDAT 100000 LAST\r\n");
    stream.extend_from_slice(&content[100_000..200_000]);
    let r = c.send_in_reads(&stream);
    assert_eq!(
        r,
        "250 2.0.0 Ok: 100000 octets received\r\n552 5.3.4 Error: message file too big\r\n"
    );
    c.send(b"NOOP\r\n");
    let events = c.take_events();
    let (all, each) = pieces(&events);
    assert!(all.len() <= limit, "{each:?}");
    assert!(each.iter().all(|(_, last)| !last), "{each:?}");
    assert_eq!(kinds(&events).first(), Some(&"Data"));
    assert_eq!(kinds(&events).last(), Some(&"Reset"));
    assert!(c.s.is_idle());
}

/// A front end allowed to use XCLIENT; records what it is told.
#[derive(Default)]
struct FrontEnd {
    authenticated: Vec<String>,
}

impl Policy for FrontEnd {
    fn allow_xclient(&mut self) -> bool {
        true
    }
    fn authenticated(&mut self, user: &str) {
        self.authenticated.push(user.into());
    }
}

const XCLIENT: &[u8] =
    b"XCLIENT ADDR=192.0.2.7 PORT=4000 HELO=real.example PROTO=ESMTP LOGIN=alice\r\n";

#[test]
fn xclient_is_refused_and_not_advertised_without_permission() {
    for proxy in [false, true] {
        let mut c = Conv::new(config(proxy), AcceptAll);
        let r = c.send(b"EHLO front.internal\r\n");
        assert!(!r.contains("XCLIENT"), "{r}");
        let r = c.send(XCLIENT);
        assert_eq!(r, "550 5.7.0 Error: insufficient authorization\r\n");
        assert!(c.events.is_empty(), "{:?}", kinds(&c.events));
        // The session is unchanged: a message goes on as from the proxy.
        let r = c.send(b"MAIL FROM:<a@x.test>\r\n");
        assert!(r.starts_with("250 2.1.0"), "{r}");
    }
}

#[test]
fn xclient_names_the_real_client() {
    let mut c = Conv::new(config(false), FrontEnd::default());
    let r = c.send(b"EHLO front.internal\r\n");
    assert!(r.contains(&format!("250 {EHLO_LINE}\r\n")), "{r}");
    let r = c.send(XCLIENT);
    assert_eq!(
        c.take_events(),
        [Event::Xclient(Xclient {
            addr: Some(Some("192.0.2.7".parse().unwrap())),
            port: Some(Some(4000)),
            helo: Some(Some("real.example".into())),
            esmtp: Some(Some(true)),
            login: Some(Some("alice".into())),
            ..Xclient::default()
        })]
    );
    assert_eq!(r, "220 mx.test ESMTP tern\r\n", "a new greeting");
    assert_eq!(c.s.policy_mut().authenticated, ["alice"]);
    // The session started over: HELO/EHLO first.
    let r = c.send(b"MAIL FROM:<a@x.test>\r\n");
    assert_eq!(r, "503 5.5.1 Error: send HELO/EHLO first\r\n");
    // With the proxy's own name: the envelope has the real client's.
    c.send(b"EHLO front.internal\r\n");
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    c.send(b"DATA\r\n");
    let r = c.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n");
    assert_eq!(r, "250 2.0.0 Ok: queued as Q1\r\n");
    let events = c.take_events();
    let [Event::Message { envelope, content }] = &events[..] else {
        panic!("{:?}", kinds(&events));
    };
    assert_eq!(content, b"Subject: hi\r\n\r\nbody\r\n");
    assert_eq!(envelope.helo, "real.example");
    assert!(envelope.esmtp);
    assert_eq!(envelope.authenticated.as_deref(), Some("alice"));
    // Kept for the rest of the session.
    c.send(
        b"EHLO front.internal\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 2 LAST\r\nok",
    );
    let events = c.take_events();
    let [Event::Message { envelope, .. }] = &events[..] else {
        panic!("{:?}", kinds(&events));
    };
    assert_eq!(envelope.helo, "real.example");
    assert_eq!(envelope.authenticated.as_deref(), Some("alice"));
}

#[test]
fn xclient_inside_a_transaction_is_503() {
    let mut c = Conv::new(config(false), FrontEnd::default());
    c.send(b"EHLO front.internal\r\n");
    c.send(b"MAIL FROM:<a@x.test>\r\n");
    let r = c.send(XCLIENT);
    assert_eq!(r, "503 5.5.1 Error: MAIL transaction in progress\r\n");
    assert!(c.events.is_empty(), "{:?}", kinds(&c.events));
    // The transaction is kept.
    let r = c.send(b"RCPT TO:<b@y.test>\r\n");
    assert_eq!(r, "250 2.1.5 Ok\r\n");
    // In proxy mode too, once MAIL was accepted behind.
    let mut c = Conv::new(config(true), FrontEnd::default());
    c.send(b"EHLO front.internal\r\n");
    c.send(b"MAIL FROM:<a@x.test>\r\n");
    let r = c.send(XCLIENT);
    assert_eq!(r, "503 5.5.1 Error: MAIL transaction in progress\r\n");
    assert_eq!(kinds(&c.events), ["Mail"]);
}

#[test]
fn xclient_refused_by_the_caller_sends_its_reply() {
    let mut c = Conv::with(config(false), FrontEnd::default(), |ev| match ev {
        Event::Xclient(_) => {
            Answer::Xclient(Err(Reply::new(550, Status(5, 7, 0), "Not from 192.0.2.7")))
        }
        e => accept_all(e),
    });
    c.send(b"EHLO front.internal\r\n");
    let r = c.send(XCLIENT);
    assert_eq!(r, "550 5.7.0 Not from 192.0.2.7\r\n");
    assert_eq!(kinds(&c.take_events()), ["Xclient"]);
    assert!(
        c.s.policy_mut().authenticated.is_empty(),
        "LOGIN= not taken"
    );
    // Nothing of what XCLIENT said was taken: the proxy's own EHLO stands.
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 2 LAST\r\nok");
    let events = c.take_events();
    let [Event::Message { envelope, .. }] = &events[..] else {
        panic!("{:?}", kinds(&events));
    };
    assert_eq!(envelope.helo, "front.internal");
    assert_eq!(envelope.authenticated, None);
}

#[test]
fn a_plain_session_never_emits_proxy_events() {
    let mut c = Conv::with(config(false), AcceptAll, |ev| {
        panic!("a plain session asked the caller: {}", kind(ev))
    });
    c.send(b"EHLO client.test\r\n");
    // RSET and EHLO of an open transaction.
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRSET\r\n");
    c.send(b"MAIL FROM:<a@x.test>\r\nEHLO client.test\r\n");
    // A large DATA message: one Message, whole.
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    let r = c.send(b"DATA\r\n");
    assert_eq!(r, "354 End data with <CR><LF>.<CR><LF>\r\n");
    let body = text(300 << 10);
    let r = c.send_in_reads(&dot_stuffed(&body));
    assert_eq!(r, "250 2.0.0 Ok: queued as Q1\r\n");
    // BDAT.
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 3\r\nabcBDAT 3 LAST\r\ndef");
    // Content over the limit.
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    let mut stream = format!("BDAT {} LAST\r\n", 2 << 20).into_bytes();
    stream.resize(stream.len() + (2 << 20), b'z');
    let r = c.send_in_reads(&stream);
    assert_eq!(r, "552 5.3.4 Error: message file too big\r\n");
    c.send(b"QUIT\r\n");
    assert_eq!(kinds(&c.events), ["Message", "Message", "Close"]);
    let Event::Message { content, .. } = &c.events[0] else {
        unreachable!()
    };
    assert!(*content == body);
    let Event::Message { content, .. } = &c.events[1] else {
        unreachable!()
    };
    assert_eq!(content, b"abcdef");
}

#[test]
fn xclient_refused_with_421_ends_the_session() {
    let mut c = Conv::with(config(false), FrontEnd::default(), |ev| match ev {
        Event::Xclient(_) => Answer::Xclient(Err(Reply::new(
            421,
            Status(4, 7, 0),
            "Too many connections from 192.0.2.7",
        ))),
        e => accept_all(e),
    });
    c.send(b"EHLO front.internal\r\n");
    let r = c.send(XCLIENT);
    assert_eq!(r, "421 4.7.0 Too many connections from 192.0.2.7\r\n");
    assert_eq!(kinds(&c.take_events()), ["Xclient", "Close"]);
}
