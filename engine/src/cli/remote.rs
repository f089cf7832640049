//! Requests to the running server's admin listener (`tern route`, `tern
//! shadow`, and the queue, destination and resubmission commands of
//! `ops.rs`), with the admin token.

use std::path::PathBuf;

use super::{load, AdminArgs, Common};
use crate::config::Overrides;

/// The admin listener's base URL: `--admin`, else the config's
/// `server.admin_listen`.
pub(super) fn admin_url(a: &AdminArgs) -> anyhow::Result<String> {
    let addr = match &a.admin {
        Some(addr) => addr.clone(),
        None => load(&common(a), Overrides::default())?
            .admin_listen
            .ok_or_else(|| {
                anyhow::anyhow!("the admin listener is off in this config; pass --admin")
            })?
            .to_string(),
    };
    Ok(format!("http://{addr}"))
}

fn common(a: &AdminArgs) -> Common {
    Common {
        config: a.config.clone(),
        data_dir: a.data_dir.clone(),
    }
}

/// The admin token: `--token-file`, else the config's
/// `server.admin_token_file`, else `DATA_DIR/admin-token`. `None` when
/// that file does not exist (reading requests on loopback need none).
fn token(a: &AdminArgs) -> anyhow::Result<Option<String>> {
    let path: PathBuf = match &a.token_file {
        Some(p) => p.clone(),
        None => {
            let config = load(&common(a), Overrides::default())?;
            match config.admin_token_file {
                Some(p) => p,
                None => crate::ops::token::default_path(&config.data_dir),
            }
        }
    };
    if a.token_file.is_none() && !path.exists() {
        return Ok(None);
    }
    Ok(Some(crate::ops::token::read(&path)?))
}

/// One admin request (`body` sent as is); the answer's body. A non-2xx
/// answer is an error with the server's message.
pub(super) fn admin_request(
    a: &AdminArgs,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<String> {
    let url = format!("{}{path}", admin_url(a)?);
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(120))
        .build();
    let mut req = agent.request(method, &url);
    if let Some(t) = token(a)? {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "-".into());
    req = req.set("X-Tern-Operator", &user);
    if body.starts_with('{') {
        req = req.set("Content-Type", "application/json");
    }
    match req.send_string(body) {
        Ok(r) => Ok(r.into_string()?),
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| text.trim().to_owned());
            anyhow::bail!("{code}: {msg}")
        }
        Err(e) => anyhow::bail!("cannot reach the admin listener at {url}: {e}"),
    }
}

/// [`admin_request`], printing the answer.
pub(super) fn admin_call(
    a: &AdminArgs,
    method: &str,
    path: &str,
    body: &str,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    write!(out, "{}", admin_request(a, method, path, body)?)?;
    Ok(())
}
