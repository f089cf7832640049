//! Entry points shared by the cargo-fuzz targets (`smtp/fuzz/`) and the
//! stable corpus replay test (`smtp/tests/corpus.rs`). Each feeds
//! arbitrary bytes to one receiver and checks invariants, panicking on a
//! violation (which is what a fuzzer reports).

use std::rc::Rc;

use crate::client::{self, has_bare_newline};
use crate::data::{DataReceiver, Progress};
use crate::reply::ReplyParser;
use crate::reply::{Reply, Status};
use crate::server::{Event, Policy, ServerConfig, Session};

/// Accepts everything, the shadow link included (so fuzzing reaches it).
struct Peer;

impl Policy for Peer {
    fn allow_shadow(&mut self) -> bool {
        true
    }
    fn allow_xclient(&mut self) -> bool {
        true
    }
}

/// Server input: the first byte picks a read size (its high bit: proxy
/// mode, the verdicts given by the lengths of what is asked), the rest is
/// the client's byte stream. Invariants: no panic; every reply is well formed;
/// no accepted message contains a bare CR or LF; nothing is processed
/// after close.
pub fn server_input(data: &[u8]) {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let proxy = step & 0x80 != 0;
    let step = usize::from(step % 64) + 1;
    let config = Rc::new(ServerConfig {
        message_bytes_max: 4096,
        recipients_max: 100,
        errors_max: 10,
        junk_commands_max: crate::limits::JUNK_COMMANDS_MAX_DEFAULT,
        shadow_ehlo: Some("XSHADOW fuzz 00".into()),
        proxy,
        ..ServerConfig::default()
    });
    let mut session = Session::new(config, Peer);
    // Every state reachable: STARTTLS and AUTH offered in clear text.
    session.set_tls_offer(true);
    session.set_auth_offer(crate::server::AuthOffer::Always);
    let mut out = Vec::new();
    let mut closed = false;
    let mut content = 0usize;
    for chunk in stream.chunks(step) {
        if closed {
            break;
        }
        session.receive(chunk);
        while let Some(event) = session.poll() {
            match event {
                Event::Message { content, envelope } => {
                    assert!(!has_bare_newline(&content), "accepted a bare CR/LF");
                    assert!(!envelope.recipients.is_empty());
                    assert!(content.len() <= 4096);
                    session.complete(Ok("id"));
                }
                Event::Discard { node, database, .. } => {
                    assert!(!node.is_empty() && !database.is_empty());
                    session.answer(Reply::new(250, Status(2, 0, 0), "none"));
                }
                Event::StartTls => session.tls_established(),
                Event::Auth { user, .. } => {
                    assert!(!user.is_empty());
                    let ok = user.len() % 2 == 0;
                    session.auth_result(if ok {
                        Ok(())
                    } else {
                        Err(Reply::new(535, Status(5, 7, 8), "no"))
                    });
                }
                Event::Xclient(x) => session.xclient_result(if x.port.is_some() {
                    Err(Reply::new(421, Status(4, 7, 0), "no"))
                } else {
                    Ok(())
                }),
                Event::Mail { from, .. } => session.verdict(if from.to_string().len() % 3 == 0 {
                    Reply::new(452, Status(4, 3, 1), "full")
                } else {
                    Reply::new(250, Status(2, 1, 0), "Ok")
                }),
                Event::Rcpt { to } => session.verdict(if to.to_string().len() % 4 == 0 {
                    Reply::new(550, Status(5, 1, 1), "no")
                } else {
                    Reply::new(250, Status(2, 1, 5), "Ok")
                }),
                Event::Data => session.verdict(Reply::new(354, Status(2, 0, 0), "go")),
                Event::Content { bytes, last } => {
                    assert!(proxy, "content pieces only in proxy mode");
                    assert!(bytes.len() <= 4096 && content + bytes.len() <= 4096);
                    assert!(bytes.len() <= crate::server::proxy::CONTENT_PIECE_BYTES + 64 * 1024);
                    content += bytes.len();
                    if last {
                        content = 0;
                        session.complete_with(Reply::new(250, Status(2, 0, 0), "Ok"));
                    }
                }
                Event::Reset => content = 0,
                Event::Close => closed = true,
            }
        }
        out.extend_from_slice(session.transmit());
        let n = session.transmit().len();
        session.transmitted(n);
    }
    let mut parser = ReplyParser::new();
    parser.feed(&out);
    while let Some(reply) = parser.next_reply().expect("server replies parse") {
        assert!((200..600).contains(&reply.code));
    }
    assert_eq!(parser.buffered(), 0, "reply ends with CRLF");
}

/// Client reply input: parse; every reply re-encodes to bytes that parse
/// to the same reply. Also: dot-stuffing the input and receiving it as
/// DATA yields the input with CRLF line endings.
pub fn client_reply(data: &[u8]) {
    let mut parser = ReplyParser::new();
    parser.feed(data);
    while let Ok(Some(reply)) = parser.next_reply() {
        let again = {
            let mut p = ReplyParser::new();
            p.feed(&reply.to_bytes());
            p.next_reply().expect("re-parse").expect("complete")
        };
        assert_eq!(again.code, reply.code);
        assert_eq!(again.lines.len(), reply.lines.len());
    }
    let mut wire = Vec::new();
    client::dot_stuff(&mut wire, data);
    assert!(!has_bare_newline(&wire));
    let mut receiver = DataReceiver::new(usize::MAX, 0);
    assert_eq!(
        receiver.feed(&wire),
        Progress::Done {
            consumed: wire.len()
        }
    );
}
