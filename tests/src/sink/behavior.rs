//! What a test sets ([`Behavior`]) and what it gets back
//! ([`SinkMessage`]).

use std::time::Duration;

/// How the sink answers. New connections and new transactions (MAIL)
/// pick up changes; `None` / empty / zero means "like a normal server".
#[derive(Clone, Debug, Default)]
pub struct Behavior {
    /// Leave PIPELINING out of the EHLO reply.
    pub no_pipelining: bool,
    /// Leave CHUNKING out of the EHLO reply (BDAT is then refused with
    /// 502, its chunk still consumed).
    pub no_chunking: bool,
    /// Leave 8BITMIME out of the EHLO reply.
    pub no_8bitmime: bool,
    /// Greeting instead of 220, e.g. `(421, "4.3.2 busy")`; the connection
    /// is closed after it unless it is 2xx.
    pub banner: Option<(u16, String)>,
    /// Reply to MAIL instead of `250 2.1.0`; a transaction starts only if
    /// it is 2xx.
    pub mail: Option<(u16, String)>,
    /// Per-recipient replies (address compared case-insensitively).
    pub rcpt: Vec<(String, u16, String)>,
    /// Reply to every other RCPT instead of `250 2.1.5`.
    pub rcpt_default: Option<(u16, String)>,
    /// Reply at the end of DATA / the last BDAT instead of `250 2.0.0`;
    /// only 250 records the message.
    pub data_end: Option<(u16, String)>,
    /// Close the connection once content arrived, before any end-of-data
    /// reply.
    pub drop_mid_data: bool,
    /// Sleep before each reply (interrupted by a stop).
    pub reply_delay: Duration,
    /// Sleep before the end-of-data reply only, after the content arrived
    /// (a next hop that hangs mid-DATA); the message is still recorded
    /// then if the reply is 250, as a real server would keep it.
    pub data_end_delay: Duration,
    /// After this many recorded messages on a connection, the next MAIL
    /// gets `421 4.7.0` and the connection is closed.
    pub close_after_messages: Option<usize>,
    /// Offer STARTTLS in the EHLO reply, answer STARTTLS with 220 and then
    /// send bytes that are no TLS record and close: a handshake that
    /// always fails (the sink speaks no TLS). Clients that do not try
    /// STARTTLS are served in clear text as usual.
    pub broken_starttls: bool,
}

/// One message accepted with 250 at the end of data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkMessage {
    /// Connection number within this sink, from 1.
    pub conn: u64,
    /// The EHLO / HELO argument.
    pub helo: String,
    /// The reverse path without `<>`.
    pub mail_from: String,
    /// What followed the reverse path on the MAIL line (trimmed).
    pub mail_params: String,
    /// Recipients (without `<>`) whose RCPT got a 2xx reply, in order.
    pub rcpts: Vec<String>,
    /// The message as sent: dot-unstuffed, without the final `.CRLF`
    /// (DATA), or the chunks concatenated (BDAT).
    pub content: Vec<u8>,
    /// Sent with BDAT.
    pub bdat: bool,
    /// The wire content had a CR not followed by LF or an LF not preceded
    /// by CR.
    pub bare_newline: bool,
}

impl SinkMessage {
    /// Parses this message as a DSN (RFC 3464 in a `multipart/report`,
    /// checked) and returns its Subject and the `message/delivery-status`
    /// part with folded lines joined.
    pub fn delivery_status(&self) -> (String, String) {
        use mail_parser::MimeHeaders;
        let parsed = mail_parser::MessageParser::default()
            .parse(&self.content)
            .unwrap_or_else(|| panic!("DSN does not parse: {}", self.content.escape_ascii()));
        let ct = parsed.content_type().expect("content type");
        assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        let part = parsed
            .parts
            .iter()
            .find(|p| {
                p.content_type().is_some_and(|c| {
                    c.ctype() == "message" && c.subtype() == Some("delivery-status")
                })
            })
            .expect("a message/delivery-status part");
        let report = String::from_utf8_lossy(part.contents())
            .replace("\r\n ", " ")
            .replace("\r\n\t", " ");
        (parsed.subject().unwrap_or("").to_string(), report)
    }

    /// The value of its first `Subject:` header ("" if none).
    pub fn subject(&self) -> String {
        String::from_utf8_lossy(&self.content)
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .to_string()
    }
}
