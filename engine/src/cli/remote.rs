//! `tern route` and `tern shadow`: requests to the running server's admin
//! listener.

use super::{load, AdminArgs, Common};
use crate::config::Overrides;

/// The admin listener's base URL: `--admin`, else the config's
/// `server.admin_listen`.
pub(super) fn admin_url(a: &AdminArgs) -> anyhow::Result<String> {
    let addr = match &a.admin {
        Some(addr) => addr.clone(),
        None => {
            let common = Common {
                config: a.config.clone(),
                data_dir: None,
            };
            load(&common, Overrides::default())?
                .admin_listen
                .ok_or_else(|| {
                    anyhow::anyhow!("the admin listener is off in this config; pass --admin")
                })?
                .to_string()
        }
    };
    Ok(format!("http://{addr}"))
}

/// One admin request; prints the body, fails on a non-2xx answer.
pub(super) fn admin_call(method: &str, url: &str, body: &str) -> anyhow::Result<()> {
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(10))
        .build();
    match agent.request(method, url).send_string(body) {
        Ok(r) => {
            print!("{}", r.into_string()?);
            Ok(())
        }
        Err(ureq::Error::Status(code, r)) => {
            anyhow::bail!("{code}: {}", r.into_string().unwrap_or_default().trim())
        }
        Err(e) => anyhow::bail!("cannot reach the admin listener at {url}: {e}"),
    }
}
