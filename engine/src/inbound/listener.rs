//! A core's listener: its own `SO_REUSEPORT` socket on the shared address,
//! the accept loop, and admission against the connection limits
//! (`connections_per_core_max`, `connections_per_ip_max`: else `421 4.7.0`
//! and close). The per-IP table is shared by all cores and touched once
//! per connection (and once per XCLIENT), never per message.
//!
//! A front end's connections (`relay.front_end_networks`) are not counted
//! per IP at connect: all its sessions come from its one address. Its
//! XCLIENT names the real client, and the session is then counted under
//! that address ([`Slot::count_as`]).

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use tern_smtp::{Reply, Status};

use super::Inbound;
use crate::metrics::CoreMetrics;

/// Open connections per client address, whole server.
#[derive(Debug, Default)]
pub struct PerIp(Mutex<HashMap<IpAddr, usize>>);

impl PerIp {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A core's connection count and the shared per-IP table.
pub(super) struct Admission {
    open: Cell<usize>,
    per_ip: Arc<PerIp>,
    metrics: Arc<CoreMetrics>,
}

impl Admission {
    pub(super) fn new(per_ip: Arc<PerIp>, metrics: Arc<CoreMetrics>) -> Admission {
        Admission {
            open: Cell::new(0),
            per_ip,
            metrics,
        }
    }

    pub(super) fn open(&self) -> usize {
        self.open.get()
    }
}

/// One fewer connection from `ip` (the entry goes at zero).
fn release(map: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(n) = map.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            map.remove(&ip);
        }
    }
}

/// A connection slot (core and per-IP), released when the session ends.
pub(super) struct Slot {
    inbound: Rc<Inbound>,
    /// The address the session is counted under in the per-IP table;
    /// `None`: under none (a front end's own connection).
    ip: Option<IpAddr>,
    /// The connection comes from a front end (`relay.front_end_networks`
    /// when it was admitted): it may use XCLIENT.
    front_end: bool,
}

impl Slot {
    /// Did the connection come from a front end?
    pub(super) fn front_end(&self) -> bool {
        self.front_end
    }

    /// Counts the session under `ip` from now on (XCLIENT named the real
    /// client; `None`: under no address, the front end's own), releasing
    /// the address it was counted under. `Err`: `ip` already has
    /// `per_ip_max` connections; nothing changed.
    pub(super) fn count_as(&mut self, ip: Option<IpAddr>, per_ip_max: usize) -> Result<(), ()> {
        let ip = ip.map(super::relay::canonical);
        let mut map = self.inbound.admission.per_ip.lock();
        move_count(&mut map, self.ip, ip, per_ip_max)?;
        self.ip = ip;
        Ok(())
    }
}

/// Moves one connection from address `from` to address `to` in the
/// per-IP table (`None`: no address). `Err`: `to` already has `max`;
/// nothing changed.
fn move_count(
    map: &mut HashMap<IpAddr, usize>,
    from: Option<IpAddr>,
    to: Option<IpAddr>,
    max: usize,
) -> Result<(), ()> {
    if from == to {
        return Ok(());
    }
    if let Some(to) = to {
        let n = map.get(&to).copied().unwrap_or(0);
        if n >= max {
            return Err(());
        }
        map.insert(to, n + 1);
    }
    if let Some(from) = from {
        release(map, from);
    }
    Ok(())
}

impl Drop for Slot {
    fn drop(&mut self) {
        let a = &self.inbound.admission;
        a.open.set(a.open.get() - 1);
        CoreMetrics::inc(&a.metrics.connections_closed);
        if let Some(ip) = self.ip {
            release(&mut a.per_ip.lock(), ip);
        }
    }
}

fn admit(inbound: &Rc<Inbound>, ip: IpAddr) -> Option<Slot> {
    let settings = inbound.settings();
    let limits = &settings.config.smtp;
    let a = &inbound.admission;
    if a.open.get() >= limits.connections_per_core_max {
        return None;
    }
    let ip = super::relay::canonical(ip);
    let front_end = super::xclient::is_front_end(&settings.relay, ip);
    // A front end's sessions are counted under their real clients once
    // XCLIENT names them, not under its own address.
    if !front_end {
        let mut map = a.per_ip.lock();
        let n = map.entry(ip).or_insert(0);
        if *n >= limits.connections_per_ip_max {
            return None;
        }
        *n += 1;
    }
    a.open.set(a.open.get() + 1);
    CoreMetrics::inc(&a.metrics.connections_total);
    Some(Slot {
        inbound: inbound.clone(),
        ip: (!front_end).then_some(ip),
        front_end,
    })
}

/// The reply to a client over a connection limit (at connect, or after
/// XCLIENT named it).
pub(super) fn too_many_connections() -> Reply {
    Reply::new(
        421,
        Status(4, 7, 0),
        "Error: too many connections, try again later",
    )
}

async fn refuse(mut stream: TcpStream) {
    let _ = stream.write_all(&too_many_connections().to_bytes()).await;
    let _ = stream.close().await;
}

/// Accepts connections until shutdown; each admitted one gets its own
/// session task. `implicit`: an implicit-TLS listener (RFC 8314).
pub async fn accept_loop(inbound: &Rc<Inbound>, listener: &TcpListener, implicit: bool) {
    let trouble = crate::logbuf::Repeated::default();
    let mut failures = 0u32;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            inbound.shutdown.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(stream)) => {
                if failures > 0 {
                    trouble.report("accept failed; backing off", None);
                    failures = 0;
                }
                stream
            }
            Some(Err(e)) => {
                // EMFILE and the like: logged once a minute, not per try,
                // and retried after a back-off growing from 10 ms to 1 s.
                failures += 1;
                trouble.report("accept failed; backing off", Some(e.to_string()));
                let wait = Duration::from_millis(10 << failures.min(7)).min(Duration::from_secs(1));
                glommio::timer::sleep(wait).await;
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        match admit(inbound, peer.ip()) {
            Some(slot) => {
                let inbound = inbound.clone();
                glommio::spawn_local(async move {
                    // The session drops the slot when it ends.
                    super::session::run(inbound, stream, peer, implicit, slot).await;
                })
                .detach();
            }
            None => {
                CoreMetrics::inc(&inbound.metrics.connections_refused);
                glommio::spawn_local(refuse(stream)).detach();
            }
        }
    }
}

/// Binds a core's SMTP listener: `SO_REUSEPORT` (every core binds
/// the same address, as glommio's own `bind` does) and, with
/// `incoming_cpu`, `SO_INCOMING_CPU` = the core's CPU, so the group gives
/// this listener the connections whose packets arrive on that CPU (Linux
/// 6.2 and later; older kernels ignore it for the choice). Over loopback
/// that is the CPU the client connected from; with a multi-queue NIC, the
/// CPU that takes the receive queue's interrupts.
pub fn bind_listener(
    addr: SocketAddr,
    incoming_cpu: Option<usize>,
) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let sk = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sk.set_reuse_port(true)?;
    if let Some(cpu) = incoming_cpu {
        sk.set_cpu_affinity(cpu)?;
    }
    sk.bind(&addr.into())?;
    sk.listen(1024)?;
    // SAFETY: the fd is a bound, listening TCP socket that we own and
    // hand over.
    Ok(unsafe { TcpListener::from_raw_fd(sk.into_raw_fd()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_moves_to_its_real_clients_count() {
        let a: IpAddr = "192.0.2.9".parse().unwrap();
        let b: IpAddr = "192.0.2.10".parse().unwrap();
        let mut map = HashMap::new();
        // A front end's session (counted nowhere) becomes a's.
        assert_eq!(move_count(&mut map, None, Some(a), 1), Ok(()));
        assert_eq!(map, HashMap::from([(a, 1)]));
        // Another one for a is over the limit: nothing changes.
        assert_eq!(move_count(&mut map, None, Some(a), 1), Err(()));
        assert_eq!(move_count(&mut map, Some(b), Some(a), 1), Err(()));
        assert_eq!(map, HashMap::from([(a, 1)]));
        // The same client again: no change, whatever the limit.
        assert_eq!(move_count(&mut map, Some(a), Some(a), 1), Ok(()));
        // From a to b: a's entry goes.
        assert_eq!(move_count(&mut map, Some(a), Some(b), 1), Ok(()));
        assert_eq!(map, HashMap::from([(b, 1)]));
        // Back to the front end's own address: counted nowhere.
        assert_eq!(move_count(&mut map, Some(b), None, 1), Ok(()));
        assert!(map.is_empty());
    }
}
