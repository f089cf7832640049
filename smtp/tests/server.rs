//! The server session driven by scripted conversations: every command, the
//! pipelining rules, DATA and BDAT, limits and smuggling attempts.

use std::rc::Rc;

use tern_smtp::address::{ForwardPath, Mailbox, ReversePath};
use tern_smtp::server::{AcceptAll, Event, Policy, ServerConfig, Session};
use tern_smtp::Reply;

fn config() -> Rc<ServerConfig> {
    Rc::new(ServerConfig {
        hostname: "mx.test".into(),
        message_bytes_max: 1000,
        recipients_max: 100,
        errors_max: 5,
        junk_commands_max: tern_smtp::limits::JUNK_COMMANDS_MAX_DEFAULT,
        extra_ehlo: Vec::new(),
        shadow_ehlo: Some("XSHADOW mx 0123abcd".into()),
        proxy: false,
    })
}

/// Feeds `input`, drives the session (accepting every message with id
/// "Q<n>"), and returns the reply bytes, the messages and whether it closed.
struct Run {
    out: String,
    messages: Vec<(tern_smtp::server::Envelope, Vec<u8>)>,
    closed: bool,
}

fn drive<P: Policy>(s: &mut Session<P>, input: &[u8], run: &mut Run) {
    s.receive(input);
    while let Some(ev) = s.poll() {
        match ev {
            Event::Message { envelope, content } => {
                run.messages.push((envelope, content));
                let id = format!("Q{}", run.messages.len());
                s.complete(Ok(&id));
            }
            Event::Discard { node, database, .. } => {
                s.answer(Reply::plain(
                    250,
                    vec![format!("{node} {database}").into(), "Q1".into()],
                ));
            }
            // Not offered in these conversations (see tls_auth.rs).
            Event::StartTls => s.tls_established(),
            Event::Auth { .. } => s.auth_result(Ok(())),
            Event::Close => run.closed = true,
            e => panic!("not in proxy mode, no XCLIENT: {e:?}"),
        }
    }
    run.out.push_str(&String::from_utf8_lossy(s.transmit()));
    let n = s.transmit().len();
    s.transmitted(n);
}

/// Runs the chunks as separate reads (like separate TCP segments).
fn talk(chunks: &[&[u8]]) -> Run {
    talk_as(AcceptAll, chunks)
}

fn codes(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| &l[..3])
        .collect()
}

#[test]
fn full_transaction_with_data() {
    let r = talk(&[
        b"EHLO client.test\r\n",
        b"MAIL FROM:<a@x.test> SIZE=20\r\n",
        b"RCPT TO:<b@y.test>\r\n",
        b"RCPT TO:<c@y.test>\r\n",
        b"DATA\r\n",
        b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n",
        b"QUIT\r\n",
    ]);
    assert_eq!(
        codes(&r.out),
        ["220", "250", "250", "250", "250", "354", "250", "221"]
    );
    assert!(r.out.starts_with("220 mx.test ESMTP tern\r\n250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n"));
    assert!(r.out.contains("250 2.0.0 Ok: queued as Q1\r\n"));
    assert!(r.out.contains("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"));
    assert!(r.closed);
    let (env, content) = &r.messages[0];
    assert_eq!(content, b"Subject: hi\r\n\r\n.dot\r\nbody\r\n");
    assert_eq!(env.helo, "client.test");
    assert!(env.esmtp);
    assert_eq!(env.params.size, Some(20));
    assert_eq!(
        env.from,
        ReversePath::Mailbox(Mailbox {
            local: "a".into(),
            domain: "x.test".into()
        })
    );
    assert_eq!(env.recipients.len(), 2);
}

#[test]
fn pipelined_transactions_after_ehlo() {
    let r = talk(&[
        b"EHLO c\r\n",
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n",
        b"one\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<b@y>\r\nDATA\r\n",
        b"two\r\n.\r\nQUIT\r\n",
    ]);
    assert_eq!(
        codes(&r.out),
        ["220", "250", "250", "250", "250", "354", "250", "250", "250", "354", "250", "221"]
    );
    assert_eq!(r.messages.len(), 2);
    assert_eq!(r.messages[1].0.from, ReversePath::Null);
    assert_eq!(r.messages[0].0.recipients[1], ForwardPath::Postmaster);
    assert_eq!(r.messages[1].1, b"two\r\n");
}

#[test]
fn unauthorised_pipelining_is_refused_and_closes() {
    // Before EHLO (and after HELO) nothing may be sent ahead.
    for script in [
        &[&b"HELO c\r\nMAIL FROM:<a@x>\r\n"[..]][..],
        &[b"HELO c\r\n", b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n"],
        &[
            b"EHLO c\r\n",
            b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: early\r\n\r\nx\r\n.\r\n",
        ],
    ] {
        let r = talk(script);
        assert!(
            r.out
                .contains("554 5.5.0 Error: improper use of SMTP command pipelining"),
            "{}",
            r.out
        );
        assert!(r.closed);
        assert!(r.messages.is_empty());
    }
    // HELO then one command per read is fine.
    let r = talk(&[
        b"HELO c\r\n",
        b"MAIL FROM:<a@x>\r\n",
        b"RCPT TO:<b@y>\r\n",
        b"DATA\r\n",
        b"x\r\n.\r\n",
    ]);
    assert_eq!(codes(&r.out), ["220", "250", "250", "250", "354", "250"]);
    assert!(!r.out.contains("250-"), "HELO reply is one line");
}

#[test]
fn smuggling_attempts_never_make_two_messages() {
    let attempts: [&[u8]; 5] = [
        b"a\r\n.\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nsmuggled\r\n.\r\n",
        b"a\n.\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nsmuggled\r\n.\r\n",
        b"a\r\n.\rMAIL FROM:<evil@x>\r\n.\r\n",
        b"a\r.\r\nMAIL FROM:<evil@x>\r\n.\r\n",
        b"a\n.\nMAIL FROM:<evil@x>\n",
    ];
    for body in attempts {
        let r = talk(&[
            b"EHLO c\r\n",
            b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n",
            body,
        ]);
        assert!(r.messages.is_empty(), "{:?}", String::from_utf8_lossy(body));
        assert!(r.out.contains("521 5.5.2 Error: bare <"), "{}", r.out);
        assert!(r.closed);
    }
    // Bare LF in a command closes too.
    let r = talk(&[b"EHLO c\nMAIL FROM:<a@x>\r\n"]);
    assert!(r.out.contains("521 5.5.2 Error: bare <LF> received"));
    assert!(r.closed);
}

#[test]
fn bdat_chunks_pipelined_and_split() {
    let r = talk(&[
        b"EHLO c\r\n",
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 7\r\nhello\r\nBDAT 10 LAST\r\n",
        b"wor",
        b"ld\r\n.\r\nQUIT\r\n",
    ]);
    assert_eq!(
        codes(&r.out),
        ["220", "250", "250", "250", "250", "250", "221"]
    );
    assert!(r.out.contains("250 2.0.0 Ok: 7 octets received"));
    assert_eq!(
        r.messages[0].1, b"hello\r\nworld\r\n.\r\n",
        "BDAT content is verbatim"
    );
    // BDAT 0 LAST ends a chunked message; DATA after BDAT is refused.
    let r = talk(&[
        b"EHLO c\r\n",
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 3\r\nabc",
        b"DATA\r\n",
        b"BDAT 0 LAST\r\n",
    ]);
    assert_eq!(
        codes(&r.out),
        ["220", "250", "250", "250", "250", "503", "250"]
    );
    assert_eq!(r.messages[0].1, b"abc");
    // Without a transaction the chunk is consumed and refused.
    let r = talk(&[b"EHLO c\r\n", b"BDAT 4 LAST\r\nNOOPNOOP\r\n"]);
    assert_eq!(codes(&r.out), ["220", "250", "503", "250"]);
    // Bare LF in BDAT rejects the message but keeps the session.
    let r = talk(&[
        b"EHLO c\r\n",
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 5 LAST\r\na\nb\r\nNOOP\r\n",
    ]);
    assert_eq!(codes(&r.out), ["220", "250", "250", "250", "554", "250"]);
    assert!(r.messages.is_empty());
}

#[test]
fn size_line_and_recipient_limits() {
    // SIZE= above the limit.
    let r = talk(&[b"EHLO c\r\n", b"MAIL FROM:<a@x> SIZE=1001\r\n"]);
    assert!(r.out.contains("552 5.3.4"));
    // Content above the limit: read to the end, then 552.
    let big = format!("{}\r\n.\r\nNOOP\r\n", "x\r\n".repeat(400));
    let r = talk(&[
        b"EHLO c\r\n",
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n",
        big.as_bytes(),
    ]);
    assert_eq!(
        codes(&r.out),
        ["220", "250", "250", "250", "354", "552", "250"]
    );
    assert!(r.messages.is_empty());
    // BDAT above the limit.
    let chunk = format!("BDAT 1001 LAST\r\n{}NOOP\r\n", "y".repeat(1001));
    let r = talk(&[
        b"EHLO c\r\n",
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n",
        chunk.as_bytes(),
    ]);
    assert_eq!(codes(&r.out), ["220", "250", "250", "250", "552", "250"]);
    // A text line over 1000 octets.
    let long = format!("{}\r\n.\r\n", "z".repeat(999));
    let cfg = Rc::new(ServerConfig {
        message_bytes_max: 10_000,
        ..(*config()).clone()
    });
    let mut s = Session::new(cfg, AcceptAll);
    let mut run = Run {
        out: String::new(),
        messages: Vec::new(),
        closed: false,
    };
    drive(&mut s, b"EHLO c\r\n", &mut run);
    drive(
        &mut s,
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n",
        &mut run,
    );
    drive(&mut s, long.as_bytes(), &mut run);
    assert!(
        run.out
            .ends_with("554 5.6.0 Error: message line longer than 1000 octets\r\n"),
        "{}",
        run.out
    );
    // A command line over 512 octets.
    let r = talk(&[
        b"EHLO c\r\n",
        format!("NOOP {}\r\n", "n".repeat(600)).as_bytes(),
        b"NOOP\r\n",
    ]);
    assert_eq!(codes(&r.out), ["220", "250", "500", "250"]);
    // Recipients: 100 accepted, the 101st gets 452.
    let mut rcpts = String::from("MAIL FROM:<a@x>\r\n");
    for i in 0..101 {
        rcpts.push_str(&format!("RCPT TO:<r{i}@y>\r\n"));
    }
    let r = talk(&[b"EHLO c\r\n", rcpts.as_bytes()]);
    assert_eq!(codes(&r.out).iter().filter(|c| **c == "250").count(), 102);
    assert!(r.out.ends_with("452 4.5.3 Error: too many recipients\r\n"));
}

#[test]
fn sequence_errors_and_simple_commands() {
    let cases: [(&[u8], &str); 12] = [
        (
            b"MAIL FROM:<a@x>\r\n",
            "503 5.5.1 Error: send HELO/EHLO first",
        ),
        (
            b"EHLO c\r\nRCPT TO:<b@y>\r\n",
            "503 5.5.1 Error: need MAIL command",
        ),
        (
            b"EHLO c\r\nMAIL FROM:<a@x>\r\nDATA\r\n",
            "503 5.5.1 Error: need RCPT command",
        ),
        (
            b"EHLO c\r\nMAIL FROM:<a@x>\r\nMAIL FROM:<a@x>\r\n",
            "503 5.5.1 Error: nested MAIL command",
        ),
        (
            b"EHLO c\r\nMAIL FROM:<a@x> FOO=BAR\r\n",
            "555 5.5.4 Unsupported option: FOO",
        ),
        (b"EHLO c\r\nMAIL FROM:<\xc3\xa9@x>\r\n", "553 5.6.7"),
        (
            b"EHLO c\r\nMAIL FROM:<\xc3\xa9@x> SMTPUTF8\r\n",
            "250 2.1.0 Ok",
        ),
        (b"VRFY bob\r\n", "252 2.5.2"),
        (b"HELP\r\n", "214 2.0.0"),
        (b"NOOP\r\n", "250 2.0.0 Ok"),
        (b"EXPN list\r\n", "502 5.5.1"),
        (
            b"EHLO c\r\nMAIL FROM:<a@x>\r\nRSET\r\nRCPT TO:<b@y>\r\n",
            "503 5.5.1 Error: need MAIL command",
        ),
    ];
    for (input, want) in cases {
        // One command per read, as a non-pipelining client would.
        let mut s = Session::new(config(), AcceptAll);
        let mut run = Run {
            out: String::new(),
            messages: Vec::new(),
            closed: false,
        };
        for line in input.split_inclusive(|b| *b == b'\n') {
            drive(&mut s, line, &mut run);
        }
        assert!(
            run.out.contains(want),
            "{:?}: {}",
            String::from_utf8_lossy(input),
            run.out
        );
    }
}

#[test]
fn repeated_errors_close_the_session() {
    let mut script: Vec<&[u8]> = vec![b"EHLO c\r\n"];
    script.extend(std::iter::repeat_n(&b"BOGUS\r\n"[..], 6));
    let r = talk(&script);
    assert_eq!(
        codes(&r.out),
        ["220", "250", "500", "500", "500", "500", "500", "421"]
    );
    assert!(r.closed);
}

#[test]
fn policy_refusals_and_storage_failure() {
    struct OnlyLocal;
    impl Policy for OnlyLocal {
        fn check_recipient(&mut self, to: &ForwardPath) -> Result<(), Reply> {
            match to {
                ForwardPath::Mailbox(m) if m.domain == "local.test" => Ok(()),
                _ => Err(Reply::new(
                    554,
                    tern_smtp::Status(5, 7, 1),
                    "Relay access denied",
                )),
            }
        }
    }
    let mut s = Session::new(config(), OnlyLocal);
    let mut run = Run {
        out: String::new(),
        messages: Vec::new(),
        closed: false,
    };
    for line in [
        "EHLO c\r\n",
        "MAIL FROM:<a@x>\r\n",
        "RCPT TO:<b@far.test>\r\n",
        "RCPT TO:<b@local.test>\r\n",
        "DATA\r\n",
    ] {
        drive(&mut s, line.as_bytes(), &mut run);
    }
    assert!(run.out.contains("554 5.7.1 Relay access denied\r\n"));
    // The caller cannot make it durable: a 4xx, never a 250.
    s.receive(b"x\r\n.\r\n");
    assert!(matches!(s.poll(), Some(Event::Message { .. })));
    assert!(!s.wants_input());
    s.complete(Err(Reply::new(
        452,
        tern_smtp::Status(4, 3, 1),
        "Insufficient system storage",
    )));
    assert!(String::from_utf8_lossy(s.transmit())
        .ends_with("452 4.3.1 Insufficient system storage\r\n"));
    assert!(s.is_idle());
}

#[test]
fn timeout_and_shutdown_close() {
    let mut s = Session::new(config(), AcceptAll);
    s.timeout();
    assert_eq!(s.poll(), Some(Event::Close));
    assert_eq!(s.poll(), None);
    assert!(
        String::from_utf8_lossy(s.transmit()).ends_with("421 4.4.2 Error: timeout exceeded\r\n")
    );
}

#[test]
fn error_limit_counts_errors_since_the_last_accepted_message() {
    let mut script: Vec<&[u8]> = vec![b"EHLO c\r\n"];
    script.extend(std::iter::repeat_n(&b"BOGUS\r\n"[..], 4));
    script.push(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n");
    script.push(b"x\r\n.\r\n");
    script.extend(std::iter::repeat_n(&b"BOGUS\r\n"[..], 4));
    let r = talk(&script);
    assert!(!r.closed, "4 + 4 errors with a message between: {}", r.out);
    assert_eq!(r.messages.len(), 1);
}

#[test]
fn unparsable_bdat_line_closes_instead_of_reading_the_chunk_as_commands() {
    // Found in review: "BDAT 103 " (trailing space) used to get 501 and the
    // chunk's bytes were then read as commands: a smuggled message.
    let chunk =
        b"RSET\r\nMAIL FROM:<ceo@bank.example>\r\nRCPT TO:<v@d.example>\r\nBDAT 5 LAST\r\nhello";
    for line in [
        &b"BDAT 103 \r\n"[..],
        b"BDAT +103\r\n",
        b"BDAT\t103\r\n",
        b"BDAT 1x\r\n",
    ] {
        let mut first = b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n".to_vec();
        first.extend_from_slice(line);
        first.extend_from_slice(chunk);
        let r = talk(&[b"EHLO c\r\n", &first]);
        assert!(
            r.messages.is_empty(),
            "{:?}: {}",
            String::from_utf8_lossy(line),
            r.out
        );
        assert!(r.closed);
        assert!(r.out.contains("554 5.5.2"), "{}", r.out);
    }
    // An over-long BDAT line too.
    let long = format!("BDAT 5{} LAST\r\nhello", " ".repeat(600));
    let r = talk(&[
        b"EHLO c\r\n",
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n",
        long.as_bytes(),
    ]);
    assert!(r.messages.is_empty() && r.closed, "{}", r.out);
}

#[test]
fn huge_bdat_size_neither_panics_nor_allocates() {
    let r = talk(&[
        b"EHLO c\r\n",
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 3\r\nabc",
        b"BDAT 18446744073709551614\r\n",
        b"some bytes of the endless chunk",
    ]);
    assert!(r.messages.is_empty());
    assert_eq!(codes(&r.out), ["220", "250", "250", "250", "250"]);
}

#[test]
fn bdat_chunk_over_the_size_limit_fails_the_transaction_at_once() {
    let chunk = format!("BDAT 1001\r\n{}BDAT 2 LAST\r\nok", "y".repeat(1001));
    let r = talk(&[
        b"EHLO c\r\n",
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n",
        chunk.as_bytes(),
    ]);
    assert_eq!(codes(&r.out), ["220", "250", "250", "250", "552", "503"]);
    assert!(r.messages.is_empty());
}

#[test]
fn recipient_overshoot_is_not_an_error_and_esmtp_params_need_ehlo() {
    let mut rcpts = String::from("MAIL FROM:<a@x>\r\n");
    for i in 0..110 {
        rcpts.push_str(&format!("RCPT TO:<r{i}@y>\r\n"));
    }
    rcpts.push_str("DATA\r\n");
    let r = talk(&[b"EHLO c\r\n", rcpts.as_bytes(), b"x\r\n.\r\n"]);
    assert!(!r.closed, "{}", r.out);
    assert_eq!(r.messages.len(), 1);
    assert_eq!(r.messages[0].0.recipients.len(), 100);
    let r = talk(&[b"HELO c\r\n", b"MAIL FROM:<a@x> SIZE=10\r\n"]);
    assert!(r.out.contains("555 5.5.4"), "{}", r.out);
}

/// A peer: the shadow link is allowed.
struct Peer;

impl Policy for Peer {
    fn allow_shadow(&mut self) -> bool {
        true
    }
}

/// [`talk`] with the given policy.
fn talk_as<P: Policy>(policy: P, chunks: &[&[u8]]) -> Run {
    let mut s = Session::new(config(), policy);
    let mut run = Run {
        out: String::new(),
        messages: Vec::new(),
        closed: false,
    };
    drive(&mut s, b"", &mut run);
    for c in chunks {
        drive(&mut s, c, &mut run);
    }
    run
}

#[test]
fn shadow_link_is_for_peers_only() {
    let script: &[&[u8]] = &[
        b"EHLO peer.test\r\n",
        b"XQDISCARD b 0123abcd\r\n",
        b"MAIL FROM:<a@x.test> XSHADOW=a,00ff,01000000000001\r\n",
    ];
    // Anyone else: not advertised, the verb is unknown, the parameter
    // unsupported.
    let r = talk_as(AcceptAll, script);
    assert!(!r.out.contains("XSHADOW mx"));
    assert_eq!(codes(&r.out), ["220", "250", "500", "555"]);
    // A peer: advertised, answered by the engine, parameter kept.
    let r = talk_as(
        Peer,
        &[
            script[0],
            script[1],
            script[2],
            b"XQDISCARD b 0123abcd\r\n",
            b"RCPT TO:<b@y.test>\r\nBDAT 3 LAST\r\nx\r\n",
        ],
    );
    assert!(r.out.contains("250 XSHADOW mx 0123abcd\r\n"), "{}", r.out);
    assert_eq!(
        codes(&r.out),
        ["220", "250", "250", "250", "250", "250", "250"]
    );
    assert!(r.out.contains("250-b 0123abcd\r\n250 Q1\r\n"));
    // XQDISCARD in the middle of a transaction keeps it.
    assert_eq!(r.messages.len(), 1);
    let env = &r.messages[0].0;
    assert_eq!(env.params.xshadow.as_deref(), Some("a,00ff,01000000000001"));
}

#[test]
fn shadow_link_syntax() {
    for (line, code) in [
        (&b"MAIL FROM:<a@x.test> XSHADOW=a,b\r\n"[..], "501"),
        (b"MAIL FROM:<a@x.test> XSHADOW=a,b,c d\r\n", "555"),
        (b"MAIL FROM:<a@x.test> XSHADOW=a,b,c+\r\n", "501"),
        (b"MAIL FROM:<a@x.test> XSHADOW\r\n", "501"),
        (b"XQDISCARD onlyone\r\n", "501"),
        (b"XQDISCARD a b c\r\n", "501"),
        (b"XQDISCARD a b+\r\n", "501"),
        (b"XQDISCARD a b TAKEN=\r\n", "501"),
        (b"XQDISCARD a b TAKEN=-1\r\n", "501"),
        (b"XQDISCARD a b TAKEN=12345678901\r\n", "501"),
        (b"XQDISCARD a b GIVEN=1\r\n", "501"),
        (b"XQDISCARD a b TAKEN=1 x\r\n", "501"),
    ] {
        let r = talk_as(Peer, &[b"EHLO peer.test\r\n", line]);
        assert_eq!(
            codes(&r.out).last(),
            Some(&code),
            "{}",
            String::from_utf8_lossy(line)
        );
    }
}

/// The memory budget sees what a session reserved, not only what arrived:
/// `SIZE=` pre-sizes the DATA buffer (capped at the message limit), a BDAT
/// size reserves its chunk, before any content byte is there.
#[test]
fn content_bytes_counts_what_was_reserved() {
    let mut big = ServerConfig::clone(&config());
    big.message_bytes_max = 8 << 20;
    let mut s = Session::new(Rc::new(big), AcceptAll);
    let mut run = Run {
        out: String::new(),
        messages: Vec::new(),
        closed: false,
    };
    drive(&mut s, b"EHLO c\r\n", &mut run);
    drive(&mut s, b"MAIL FROM:<a@b.example> SIZE=500000\r\n", &mut run);
    drive(&mut s, b"RCPT TO:<c@d.example>\r\nDATA\r\n", &mut run);
    assert!(run.out.contains("354"), "{}", run.out);
    assert!(
        s.content_bytes() >= 500_000,
        "a SIZE=500000 claim reserved memory the budget must see: {}",
        s.content_bytes()
    );
    drive(&mut s, b"x\r\n.\r\n", &mut run);
    assert_eq!(s.content_bytes(), 0, "released at end of data");
    drive(
        &mut s,
        b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 300000\r\nxx",
        &mut run,
    );
    assert!(
        s.content_bytes() >= 300_000,
        "BDAT reserved: {}",
        s.content_bytes()
    );
}

#[test]
fn junk_commands_beyond_the_limit_count_as_errors_until_a_message_is_accepted() {
    // Limit 3 junk commands, 5 errors (config()).
    let cfg = Rc::new(ServerConfig {
        junk_commands_max: 3,
        ..(*config()).clone()
    });
    let run_script = |chunks: &[&[u8]]| {
        let mut s = Session::new(cfg.clone(), AcceptAll);
        let mut run = Run {
            out: String::new(),
            messages: Vec::new(),
            closed: false,
        };
        drive(&mut s, b"", &mut run);
        for c in chunks {
            drive(&mut s, c, &mut run);
        }
        run
    };
    // 3 junk commands are free; the next 5 are answered and count as
    // errors: after the fifth the session is closed with 421.
    let mut script: Vec<&[u8]> = vec![b"EHLO c.test\r\n"];
    let junk: [&[u8]; 4] = [b"NOOP\r\n", b"RSET\r\n", b"VRFY x\r\n", b"HELP\r\n"];
    for i in 0..10 {
        script.push(junk[i % 4]);
    }
    let r = run_script(&script);
    let c = codes(&r.out);
    assert_eq!(c.len(), 2 + 3 + 5 + 1, "{c:?}");
    assert_eq!(c.last(), Some(&"421"), "{c:?}");
    assert!(r.closed);
    // An accepted message resets the count.
    let mut script: Vec<&[u8]> = vec![b"EHLO c.test\r\n"];
    script.extend([b"NOOP\r\n" as &[u8]; 6]);
    script.extend([
        b"MAIL FROM:<a@x.test>\r\n" as &[u8],
        b"RCPT TO:<b@y.test>\r\n",
        b"DATA\r\n",
        b"Subject: x\r\n\r\nbody\r\n.\r\n",
    ]);
    script.extend([b"NOOP\r\n" as &[u8]; 6]);
    let r = run_script(&script);
    assert!(!r.closed, "{}", r.out);
    assert_eq!(r.messages.len(), 1);
}

#[test]
fn a_nul_octet_in_the_content_is_554_and_nothing_is_handed_over() {
    let r = talk(&[
        b"EHLO c.test\r\n",
        b"MAIL FROM:<a@x.test>\r\n",
        b"RCPT TO:<b@y.test>\r\n",
        b"DATA\r\n",
        b"Subject: x\r\n\r\nhello\0world\r\n.\r\n",
        b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 13 LAST\r\nab\0\r\n\r\nbody\r\n",
        b"QUIT\r\n",
    ]);
    assert_eq!(
        codes(&r.out),
        ["220", "250", "250", "250", "354", "554", "250", "250", "554", "221"]
    );
    assert!(r.out.contains("NUL octet"), "{}", r.out);
    assert!(r.messages.is_empty());
}
