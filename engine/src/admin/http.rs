//! The admin API's request plumbing: size limits, the token check, JSON
//! answers and errors, who asked.

use serde::Serialize;

use super::listener::{Method, Request};
use super::Admin;

/// Longest request line (method, path and query) accepted.
pub(super) const URL_MAX: usize = 2048;
/// Largest body accepted.
pub(super) const BODY_MAX: usize = 64 * 1024;

/// An answer: status, content type, body.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) code: u16,
    pub(super) json: bool,
    pub(super) body: String,
}

impl Answer {
    /// 200 with `value` as JSON.
    pub(super) fn json(value: &impl Serialize) -> Answer {
        Answer::json_code(200, value)
    }

    /// `code` with `value` as JSON.
    pub(super) fn json_code(code: u16, value: &impl Serialize) -> Answer {
        let mut body = serde_json::to_string_pretty(value).expect("serializes");
        body.push('\n');
        Answer {
            code,
            json: true,
            body,
        }
    }

    /// `{"error": message}` with `code`.
    pub(super) fn error(code: u16, message: impl Into<String>) -> Answer {
        Answer::json_code(code, &serde_json::json!({ "error": message.into() }))
    }

    /// Plain text (the older endpoints).
    pub(super) fn text(code: u16, body: impl Into<String>) -> Answer {
        Answer {
            code,
            json: false,
            body: body.into(),
        }
    }
}

/// What the handlers see of a request.
pub(super) struct Req {
    pub(super) method: Method,
    /// The path without the query.
    pub(super) path: String,
    /// `key=value` pairs of the query (percent-decoded).
    pub(super) query: Vec<(String, String)>,
    pub(super) body: String,
    /// The client's address and the operator name it sent.
    pub(super) who: String,
}

impl Req {
    /// The query value of `key`.
    pub(super) fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON of type `T` (an empty body is `{}`).
    pub(super) fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Answer> {
        let body = if self.body.trim().is_empty() {
            "{}"
        } else {
            &self.body
        };
        serde_json::from_str(body).map_err(|e| Answer::error(400, format!("bad request body: {e}")))
    }
}

impl Admin {
    /// Reads `request` within the limits and checks its token; `Err`:
    /// the answer to give instead.
    pub(super) fn admit(&self, request: Request) -> Result<Req, Answer> {
        let url = request.url.clone();
        let body = String::from_utf8(request.body.clone())
            .map_err(|_| Answer::error(400, "body is not UTF-8"))?;
        let method = request.method.clone();
        let header = |name: &'static str| request.header(name).map(str::to_owned);
        let operator = header("X-Tern-Operator").unwrap_or_else(|| "-".into());
        let client = request.peer.to_string();
        let who = format!("{client} ({})", sanitize(&operator));
        let loopback = self.addr.ip().is_loopback();
        let changes = method != Method::Get && method != Method::Head;
        if changes || !loopback {
            let given = header("Authorization");
            let ok = given
                .as_deref()
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|t| crate::ops::token::same(t.trim(), &self.ops.token));
            if !ok {
                self.ops
                    .stats
                    .unauthorized
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(%who, %method, url = %sanitize(&url), "admin request refused: missing or wrong token");
                return Err(Answer::error(
                    401,
                    "missing or wrong admin token (Authorization: Bearer TOKEN; the token is in DATA_DIR/admin-token)",
                ));
            }
        }
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let query = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Ok(Req {
            method,
            path: percent_decode(path),
            query,
            body,
            who,
        })
    }
}

/// Printable, bounded (for log lines).
fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(128).collect()
}

/// `%XX` and `+` decoding of a URL part.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%40b.org"), "a@b.org");
        assert_eq!(percent_decode("10m"), "10m");
        assert_eq!(percent_decode("%2"), "%2");
        assert_eq!(percent_decode("x+y%"), "x y%");
    }
}
