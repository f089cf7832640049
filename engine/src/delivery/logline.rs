//! The delivery log: one line per attempt and recipient group, with the
//! fields named as Postfix names them so that operators' log tooling
//! carries over.
//!
//! ```text
//! level=info message=sent id=00ab... to=<a@x.example>,<b@x.example>
//!   relay=mx.x.example[192.0.2.1]:25 delay=0.35 delays=0.01/0.02/0.1/0.22
//!   dsn=2.0.0 status=sent reply="250 2.0.0 Ok: queued as 4F2" tls=TLSv1.3/TLS13_AES_256_GCM_SHA384
//! ```
//!
//! - `to`: the recipients of the group (same next hop, same reply, same
//!   outcome in this attempt), comma-separated.
//! - `relay`: `NAME[ADDR]:PORT` of the next hop that answered, `none` when
//!   no next hop was reached (no route, every host down, DNS).
//! - `delay`: seconds from arrival to now. `delays=a/b/c/d` (seconds, as
//!   Postfix): a = in the queue before this attempt, b = routing and
//!   waiting for a connection, c = connection set-up (connect, greeting,
//!   EHLO, TLS; 0 on a reused connection), d = the transaction.
//! - `dsn`: the enhanced status (the reply's, else one implied by the
//!   outcome: 2.0.0, 4.0.0, 5.0.0; expired: 5.4.7).
//! - `status`: `sent`, `deferred`, `bounced` or `expired`.
//! - `reply`: the remote reply (code, enhanced code, text) or tern's own
//!   reason when no next hop answered.
//! - `tls`: `VERSION/CIPHER` of the connection, or `none`.
//! - `attempts`: this message's attempts so far (with this one).

use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;

use tern_smtp::{Reply, Status};

/// The next hop one transaction went to, and how long its parts took.
#[derive(Debug)]
pub(super) struct Hop {
    /// Name as routed (pool host as written, or MX exchange).
    pub(super) name: String,
    pub(super) addr: SocketAddr,
    /// `VERSION/CIPHER`, when in TLS.
    pub(super) tls: Option<String>,
    /// When a connection took the job (ms since the epoch).
    pub(super) picked_ms: u64,
    /// Connection set-up for this transaction (0: a reused connection).
    pub(super) setup_ms: u64,
    /// MAIL to the end-of-data reply.
    pub(super) xfer_ms: u64,
}

/// What a recipient group's line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Sent,
    Deferred,
    Bounced,
    Expired,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Sent => "sent",
            Verdict::Deferred => "deferred",
            Verdict::Bounced => "bounced",
            Verdict::Expired => "expired",
        }
    }

    fn implied(self) -> Status {
        match self {
            Verdict::Sent => Status(2, 0, 0),
            Verdict::Deferred => Status(4, 0, 0),
            Verdict::Bounced => Status(5, 0, 0),
            Verdict::Expired => Status(5, 4, 7),
        }
    }
}

/// One recipient's result in an attempt.
pub(super) struct Item<'a> {
    pub(super) rcpt: &'a str,
    pub(super) status: Verdict,
    pub(super) reply: &'a Reply,
    pub(super) hop: Option<&'a Rc<Hop>>,
}

/// Times of the attempt the lines are for (ms since the epoch).
pub(super) struct Times {
    pub(super) received_ms: u64,
    pub(super) started_ms: u64,
    pub(super) now_ms: u64,
}

/// `NAME[ADDR]:PORT` (a pool host written as `HOST:PORT` without its
/// port in the name).
pub(super) fn relay(h: &Hop) -> String {
    Relay(Some(h)).to_string()
}

/// [`relay`] without building a string (`none` without a next hop).
struct Relay<'a>(Option<&'a Hop>);

impl fmt::Display for Relay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(h) = self.0 else {
            return f.write_str("none");
        };
        let port = h.addr.port();
        let name = match h.name.rsplit_once(':') {
            Some((host, p)) if p.parse() == Ok(port) => host,
            _ => &h.name,
        };
        write!(f, "{name}[{}]:{port}", h.addr.ip())
    }
}

/// Milliseconds as seconds with two decimals (`0.35`).
struct Secs(u64);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 1000, self.0 % 1000 / 10)
    }
}

/// `a/b/c/d` in seconds.
struct Delays([u64; 4]);

impl fmt::Display for Delays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{}/{}/{}/{}", Secs(a), Secs(b), Secs(c), Secs(d))
    }
}

/// `<a@x>,<b@x>`.
struct To<'a>(&'a [&'a str]);

impl fmt::Display for To<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, r) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            write!(f, "<{r}>")?;
        }
        Ok(())
    }
}

/// Logs `items` grouped by (outcome, next hop, reply), in order of first
/// appearance.
pub(super) fn log(id: &dyn fmt::Display, attempts: u32, times: &Times, items: &[Item<'_>]) {
    let mut groups: Vec<(&Item<'_>, Vec<&str>)> = Vec::new();
    for it in items {
        let same = |g: &&mut (&Item<'_>, Vec<&str>)| {
            let first = g.0;
            first.status == it.status
                && first.hop.map(Rc::as_ptr) == it.hop.map(Rc::as_ptr)
                && first.reply == it.reply
        };
        match groups.iter_mut().find(|g| same(g)) {
            Some(g) => g.1.push(it.rcpt),
            None => groups.push((it, vec![it.rcpt])),
        }
    }
    for (it, rcpts) in groups {
        line(id, attempts, times, it, &rcpts);
    }
}

fn line(id: &dyn fmt::Display, attempts: u32, t: &Times, it: &Item<'_>, rcpts: &[&str]) {
    let queued = t.started_ms.saturating_sub(t.received_ms);
    let hop = it.hop.map(|h| &**h);
    let (b, c, d, tls) = match hop {
        Some(h) => (
            h.picked_ms.saturating_sub(t.started_ms),
            h.setup_ms,
            h.xfer_ms,
            h.tls.as_deref().unwrap_or("none"),
        ),
        None => (t.now_ms.saturating_sub(t.started_ms), 0, 0, "none"),
    };
    let delay = Secs(t.now_ms.saturating_sub(t.received_ms));
    let delays = Delays([queued, b, c, d]);
    let dsn = match it.status {
        Verdict::Expired => Status(5, 4, 7),
        s => it.reply.status.unwrap_or_else(|| s.implied()),
    };
    let status = it.status.word();
    tracing::info!(id = %id, to = %To(rcpts), relay = %Relay(hop), delay = %delay,
        delays = %delays, dsn = %dsn, status, reply = %it.reply, tls, attempts, "{status}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_written_as_postfix_writes_them() {
        let hop = Hop {
            name: "127.0.0.1:2526".into(),
            addr: "127.0.0.1:2526".parse().unwrap(),
            tls: None,
            picked_ms: 0,
            setup_ms: 0,
            xfer_ms: 0,
        };
        assert_eq!(relay(&hop), "127.0.0.1[127.0.0.1]:2526");
        let mx = Hop {
            name: "mx.example".into(),
            addr: "[2001:db8::1]:25".parse().unwrap(),
            ..hop
        };
        assert_eq!(relay(&mx), "mx.example[2001:db8::1]:25");
        assert_eq!(Relay(None).to_string(), "none");
        assert_eq!(
            Delays([10, 2_345, 0, 999]).to_string(),
            "0.01/2.34/0.00/0.99"
        );
        assert_eq!(To(&["a@x", "b@x"]).to_string(), "<a@x>,<b@x>");
    }
}
