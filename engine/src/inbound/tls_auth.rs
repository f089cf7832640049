//! STARTTLS (RFC 3207), implicit TLS (RFC 8314) and SMTP AUTH (RFC 4954)
//! for one session: what the session offers, the handshake, and the
//! check of a login against the users file, bounded by the core's
//! failed-attempt limiter.
//!
//! After a handshake the client's certificate (if any) is compared with
//! the pinned cluster peers': only a match opens XSHADOW and XQDISCARD.
//! A handshake that fails ends the connection (the session cannot go
//! back to clear text: the client already started TLS).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tern_smtp::server::{AuthOffer, Mechanism, Session};
use tern_smtp::{Reply, Status};

use super::session::{flush, CountingPolicy, Loop};
use super::Inbound;
use crate::auth::Verdict;
use crate::metrics::CoreMetrics;

/// What the session offers: STARTTLS when a certificate exists and the
/// session is not in TLS yet; AUTH when a users file is configured, in
/// TLS only unless `auth.cleartext_on_loopback` lets a loopback client
/// log in in clear text.
pub(super) fn offer(core: &Inbound, s: &mut Session<CountingPolicy>, l: &Loop, peer: SocketAddr) {
    let in_tls = l.tls.is_some();
    s.set_tls_active(in_tls);
    s.set_tls_offer(core.tls.offers_tls() && !in_tls);
    let auth = match &core.users {
        None => AuthOffer::Never,
        Some(_) if crate::auth::cleartext_allowed(&l.settings.config.auth, peer.ip()) => {
            AuthOffer::Always
        }
        Some(_) => AuthOffer::TlsOnly,
    };
    s.set_auth_offer(auth);
}

/// The server side of a handshake on the plain connection in `l`. False:
/// it failed and the connection is gone.
pub(super) async fn handshake(core: &Inbound, l: &mut Loop, peer: SocketAddr) -> bool {
    let Some(tcp) = l.stream.take_plain() else {
        return false;
    };
    // Peers' addresses are asked for a certificate; others are not
    // bothered (some clients mishandle the request).
    let ask_cert = core.peer_ips.contains(&peer.ip()) || peer.ip().is_loopback();
    match core.tls.accept(tcp, ask_cert).await {
        Ok(stream) => {
            l.tls = stream.tls_info();
            l.stream = stream;
            let shown = l.tls.and_then(|t| t.peer);
            l.trust.tls_peer(shown, &core.peer_pins);
            if let Some(t) = l.tls {
                tracing::debug!(client = %peer, version = t.version, cipher = t.cipher, resumed = t.resumed, peer = l.trust.peer.get(), "TLS established");
            }
            true
        }
        Err(f) => {
            tracing::info!(client = %peer, reason = f.as_str(), "TLS handshake failed");
            false
        }
    }
}

/// `STARTTLS` was answered 220: send that, shake hands, and restart the
/// session (RFC 3207 4.2: everything before is forgotten, bytes the
/// client pipelined after STARTTLS are discarded, not executed).
pub(super) async fn starttls(
    core: &Inbound,
    s: &mut Session<CountingPolicy>,
    l: &mut Loop,
    peer: SocketAddr,
) -> bool {
    if flush(&mut l.stream, s, l.settings.config.smtp.inactivity_timeout)
        .await
        .is_err()
    {
        return false;
    }
    if !handshake(core, l, peer).await {
        return false;
    }
    s.tls_established();
    offer(core, s, l, peer);
    true
}

/// The reply to a refused login (RFC 4954 6).
fn auth_failed() -> Reply {
    Reply::new(535, Status(5, 7, 8), "Error: authentication failed")
}

/// Checks a login: the limiter first (a refused client is not even
/// checked), then the password hash on a blocking thread (argon2 takes
/// milliseconds; the core keeps serving meanwhile).
pub(super) async fn authenticate(
    core: &Inbound,
    peer: SocketAddr,
    mechanism: Mechanism,
    authzid: &str,
    user: &str,
    password: String,
) -> Result<(), Reply> {
    let Some(users) = core.users.clone() else {
        return Err(auth_failed());
    };
    let ip = peer.ip();
    let verdict = core.limiter.borrow_mut().check(ip, Instant::now());
    match verdict {
        Verdict::Refuse => {
            CoreMetrics::inc(&core.metrics.auth_refused);
            tracing::warn!(client = %peer, user, "AUTH refused: too many failed attempts");
            return Err(Reply::new(
                421,
                Status(4, 7, 0),
                "Error: too many failed authentication attempts, try again later",
            ));
        }
        Verdict::Delay(d) => glommio::timer::sleep(d.min(Duration::from_secs(10))).await,
        Verdict::Allow => {}
    }
    // No proxy authorization: the identity to act as must be the user's.
    let proxy = !authzid.is_empty() && authzid != user;
    let name = user.to_owned();
    let ok = !proxy
        && glommio::executor()
            .spawn_blocking(move || users.verify(&name, &password))
            .await;
    if ok {
        CoreMetrics::inc(&core.metrics.auth_successes);
        tracing::info!(client = %peer, user, mechanism = mechanism.as_str(), "authenticated");
        Ok(())
    } else {
        core.limiter.borrow_mut().failed(ip, Instant::now());
        CoreMetrics::inc(&core.metrics.auth_failures);
        tracing::warn!(client = %peer, user, mechanism = mechanism.as_str(), "AUTH failed");
        Err(auth_failed())
    }
}
