//! The verbs: EHLO/HELO, MAIL, RCPT, DATA and its content, BDAT and its
//! chunks, and the end of data, which records the message on 250.

use super::content::{scan_bare, Content, DotReader};
use super::session::{Mode, Session, Step, Txn};
use super::{SinkMessage, CONTENT_MAX, HOSTNAME, RCPT_MAX};

impl Session {
    pub(super) fn ehlo(&mut self, arg: &str, extended: bool) -> Step {
        if arg.is_empty() {
            return self.say(501, "5.5.4 Domain or address required");
        }
        self.behavior = self.shared.lock().behavior.clone();
        self.helo = Some(arg.to_string());
        self.txn = None;
        if !extended {
            return self.say(250, HOSTNAME);
        }
        let mut lines = vec![format!("{HOSTNAME} Hello {arg}")];
        if !self.behavior.no_pipelining {
            lines.push("PIPELINING".into());
        }
        if !self.behavior.no_chunking {
            lines.push("CHUNKING".into());
        }
        if self.behavior.broken_starttls {
            lines.push("STARTTLS".into());
        }
        if !self.behavior.no_8bitmime {
            lines.push("8BITMIME".into());
        }
        lines.push(format!("SIZE {CONTENT_MAX}"));
        lines.push("ENHANCEDSTATUSCODES".into());
        let mut reply = String::new();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            reply.push_str(&format!("250{sep}{line}\r\n"));
        }
        if !self.delay() {
            return Step::Close;
        }
        self.write_reply(&reply)
    }

    pub(super) fn mail(&mut self, arg: &str) -> Step {
        if self.helo.is_none() {
            return self.say(503, "5.5.1 Send EHLO first");
        }
        if self.txn.is_some() {
            return self.say(503, "5.5.1 Nested MAIL command");
        }
        self.behavior = self.shared.lock().behavior.clone();
        if let Some(max) = self.behavior.close_after_messages {
            if self.recorded >= max {
                self.say(421, "4.7.0 Too many messages on this connection");
                return Step::Close;
            }
        }
        let Some((mail_from, mail_params)) = parse_path(arg, "FROM:") else {
            return self.say(501, "5.5.4 Syntax: MAIL FROM:<address>");
        };
        if size_param(&mail_params).is_some_and(|s| s > CONTENT_MAX as u64) {
            return self.say(552, "5.3.4 Message size exceeds fixed limit");
        }
        let (code, text) = (self.behavior.mail.clone()).unwrap_or((250, "2.1.0 Ok".into()));
        if code / 100 == 2 {
            self.shared.lock().transactions += 1;
            self.txn = Some(Txn {
                mail_from,
                mail_params,
                rcpts: Vec::new(),
                content: Content::default(),
                bdat: false,
                cr_pending: false,
            });
        }
        self.say(code, &text)
    }

    pub(super) fn rcpt(&mut self, arg: &str) -> Step {
        let Some(txn) = &self.txn else {
            return self.say(503, "5.5.1 Need MAIL first");
        };
        let Some((rcpt, _params)) = parse_path(arg, "TO:") else {
            return self.say(501, "5.5.4 Syntax: RCPT TO:<address>");
        };
        if txn.rcpts.len() >= RCPT_MAX {
            return self.say(452, "4.5.3 Too many recipients");
        }
        let b = &self.behavior;
        let (code, text) = b
            .rcpt
            .iter()
            .find(|(addr, _, _)| addr.eq_ignore_ascii_case(&rcpt))
            .map(|(_, code, text)| (*code, text.clone()))
            .or_else(|| b.rcpt_default.clone())
            .unwrap_or((250, "2.1.5 Ok".into()));
        self.shared.lock().rcpt_replies.push((rcpt.clone(), code));
        if code / 100 == 2 {
            self.txn.as_mut().expect("checked above").rcpts.push(rcpt);
        }
        self.say(code, &text)
    }

    pub(super) fn data(&mut self) -> Step {
        let Some(txn) = &self.txn else {
            return self.say(503, "5.5.1 Need MAIL first");
        };
        if txn.bdat {
            return self.say(503, "5.5.1 DATA after BDAT");
        }
        if txn.rcpts.is_empty() {
            return self.say(554, "5.5.1 No valid recipients");
        }
        let step = self.say(354, "End data with <CR><LF>.<CR><LF>");
        self.mode = Mode::Data(DotReader::new());
        step
    }

    pub(super) fn data_content(&mut self) -> Step {
        if self.buf.is_empty() {
            return Step::NeedInput;
        }
        let Mode::Data(reader) = &mut self.mode else {
            unreachable!("data_content outside DATA");
        };
        let txn = self.txn.as_mut().expect("DATA has a transaction");
        let end = reader.feed(&self.buf, &mut txn.content);
        self.buf.drain(..end.unwrap_or(self.buf.len()));
        if self.behavior.drop_mid_data {
            return Step::Close;
        }
        if end.is_none() {
            return Step::NeedInput;
        }
        self.mode = Mode::Command;
        self.end_of_data()
    }

    pub(super) fn bdat(&mut self, arg: &str) -> Step {
        let mut words = arg.split_ascii_whitespace();
        let size = words.next().and_then(|s| s.parse::<u64>().ok());
        let last = words.next().map(|w| w.eq_ignore_ascii_case("LAST"));
        let (Some(size), None | Some(true), None) = (size, last, words.next()) else {
            // The chunk's length is unknown: the stream cannot be followed.
            self.say(501, "5.5.4 Syntax: BDAT <size> [LAST]");
            return Step::Close;
        };
        let refuse = match &self.txn {
            _ if self.behavior.no_chunking => Some((502, "5.5.1 BDAT not supported")),
            None => Some((503, "5.5.1 Need MAIL first")),
            Some(txn) if txn.rcpts.is_empty() => Some((554, "5.5.1 No valid recipients")),
            Some(_) => None,
        };
        if refuse.is_none() {
            self.txn.as_mut().expect("checked above").bdat = true;
        }
        self.mode = Mode::Bdat {
            size,
            remaining: size,
            last: last.is_some(),
            refuse,
        };
        Step::Again
    }

    pub(super) fn bdat_content(&mut self) -> Step {
        let Mode::Bdat {
            size,
            remaining,
            last,
            refuse,
        } = &mut self.mode
        else {
            unreachable!("bdat_content outside BDAT");
        };
        if *remaining > 0 && self.buf.is_empty() {
            return Step::NeedInput;
        }
        let n = self
            .buf
            .len()
            .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
        if refuse.is_none() {
            let txn = self.txn.as_mut().expect("BDAT has a transaction");
            txn.content.bare_newline |= scan_bare(&mut txn.cr_pending, &self.buf[..n]);
            txn.content.push(&self.buf[..n]);
        }
        self.buf.drain(..n);
        *remaining -= n as u64;
        if self.behavior.drop_mid_data {
            return Step::Close;
        }
        if *remaining > 0 {
            return Step::NeedInput;
        }
        let (size, last, refuse) = (*size, *last, *refuse);
        self.mode = Mode::Command;
        if let Some((code, text)) = refuse {
            if last {
                self.txn = None;
            }
            return self.say(code, text);
        }
        if last {
            return self.end_of_data();
        }
        self.say(250, &format!("2.0.0 {size} octets received"))
    }

    /// Replies to the end of the data, recording the message on 250.
    fn end_of_data(&mut self) -> Step {
        let txn = self.txn.take().expect("end of data has a transaction");
        let (code, text) = if txn.content.too_big {
            (552, "5.3.4 Message too big".to_string())
        } else {
            (self.behavior.data_end.clone()).unwrap_or((250, "2.0.0 Ok: queued".into()))
        };
        if !self.delay_for(self.behavior.data_end_delay) || !self.delay() {
            return Step::Close;
        }
        let mut state = self.shared.lock();
        if code == 250 {
            self.recorded += 1;
            state.messages.push(SinkMessage {
                conn: self.conn,
                helo: self.helo.clone().unwrap_or_default(),
                mail_from: txn.mail_from,
                mail_params: txn.mail_params,
                rcpts: txn.rcpts,
                content: txn.content.bytes,
                bdat: txn.bdat,
                bare_newline: txn.content.bare_newline || txn.cr_pending,
            });
            self.shared.recorded.notify_all();
        } else {
            state.rejected += 1;
        }
        drop(state);
        self.write_reply(&format!("{code} {text}\r\n"))
    }
}

/// `<path> rest` after `FROM:` / `TO:`: the path without `<>` and the
/// trimmed rest.
fn parse_path(arg: &str, prefix: &str) -> Option<(String, String)> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start().strip_prefix('<')?;
    let (path, params) = rest.split_once('>')?;
    Some((path.to_string(), params.trim().to_string()))
}

/// The `SIZE=` value among MAIL parameters.
fn size_param(params: &str) -> Option<u64> {
    params.split_ascii_whitespace().find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.eq_ignore_ascii_case("SIZE").then(|| v.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let p = |a: &str| parse_path(a, "FROM:");
        assert_eq!(
            p("from:<a@b> SIZE=5"),
            Some(("a@b".into(), "SIZE=5".into()))
        );
        assert_eq!(p("FROM: <>"), Some((String::new(), String::new())));
        assert_eq!(p("FROM:a@b"), None);
        assert_eq!(p("TO:<a@b>"), None);
        assert_eq!(size_param("BODY=8BITMIME size=12"), Some(12));
    }
}
