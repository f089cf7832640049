//! A core's listener: its own `SO_REUSEPORT` socket on the shared address,
//! the accept loop, and admission against the connection limits
//! (`connections_per_core_max`, `connections_per_ip_max`: else `421 4.7.0`
//! and close). The per-IP table is shared by all cores and touched once
//! per connection, never per message.

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

/// Releases a connection slot (core and per-IP) when the session ends.
struct Slot {
    inbound: Rc<Inbound>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let a = &self.inbound.admission;
        a.open.set(a.open.get() - 1);
        CoreMetrics::inc(&a.metrics.connections_closed);
        let mut map = a.per_ip.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
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
    let mut map = a.per_ip.lock();
    let n = map.entry(ip).or_insert(0);
    if *n >= limits.connections_per_ip_max {
        return None;
    }
    *n += 1;
    drop(map);
    a.open.set(a.open.get() + 1);
    CoreMetrics::inc(&a.metrics.connections_total);
    Some(Slot {
        inbound: inbound.clone(),
        ip,
    })
}

async fn refuse(mut stream: TcpStream) {
    let reply = Reply::new(
        421,
        Status(4, 7, 0),
        "Error: too many connections, try again later",
    );
    let _ = stream.write_all(&reply.to_bytes()).await;
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
                    super::session::run(inbound, stream, peer, implicit).await;
                    drop(slot);
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
