//! DNS for outbound delivery: MX resolution (RFC 5321 5.1, RFC 7505 null
//! MX), SRV records with their targets' addresses (RFC 2782), TXT records
//! and host addresses.
//!
//! hickory-resolver needs tokio; the engine runs on glommio. So one
//! background thread, `tern-dns`, runs a tokio current-thread runtime that
//! owns the hickory resolver and its cache (which honours record TTLs).
//! Callers on any executor talk to it over runtime-agnostic channels
//! (async-channel), so [`Resolver::mx`] can be awaited on a glommio
//! executor or under `futures_lite::future::block_on` alike.
//!
//! ```text
//! caller (any executor)                 tern-dns thread (tokio current-thread)
//!  1. Resolver::mx(domain): validate
//!     the name (no I/O)
//!  2. send Request ------------------->  3. take a lookup permit, spawn a task
//!     (bounded queue: backpressure)       4. MX query; none: A + AAAA of the domain
//!                                         5. A + AAAA of every exchange, concurrently
//!  7. await the one-slot reply <-------  6. send the answer, drop the permit
//! ```
//!
//! [`Resolver::srv`] takes the same path: step 4 is the SRV query (no
//! fallback), step 5 resolves every target but ".". [`Resolver::txt`] and
//! [`Resolver::addresses`] stop after step 4.
//!
//! The thread stops when the last [`Resolver`] handle is dropped: that
//! drop closes the request channel, the thread's loop ends, its runtime
//! (and any lookup still running) is dropped, and the drop joins the thread.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;

/// Per-query timeout when [`DnsConfig::timeout`] is zero (the resolv.conf(5)
/// default).
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// Longest domain name in text form, without the trailing dot: 255 octets
/// on the wire (RFC 1035 2.3.4) less the first length octet and the root.
pub const DOMAIN_BYTES_MAX: usize = 253;

/// MX exchanges resolved per domain, best preferences first (and SRV
/// targets per name, best priorities first). Each costs two queries (A,
/// AAAA) and a delivery attempt tries only a few hosts anyway (Postfix
/// tries 5 addresses); an answer may carry hundreds of records.
pub const MX_EXCHANGES_MAX: usize = 16;

/// Requests queued for the resolver thread; callers wait for room beyond
/// this, so a burst of deliveries cannot grow the queue without bound.
const REQUESTS_QUEUED_MAX: usize = 1024;

/// Lookups the resolver thread runs at once (an `mx` may issue up to
/// `2 + 2 * MX_EXCHANGES_MAX` queries, an `srv` one fewer).
const LOOKUPS_IN_FLIGHT_MAX: usize = 256;

/// Where and how to resolve.
#[derive(Clone, Debug, Default)]
pub struct DnsConfig {
    /// Name servers (UDP, falling back to TCP on truncation). Empty = the
    /// system's /etc/resolv.conf.
    pub servers: Vec<SocketAddr>,
    /// Per-query timeout (default when zero: [`TIMEOUT_DEFAULT`]). Each
    /// query is tried once across the servers within this time (UDP is
    /// retransmitted inside it); an `mx` call makes up to three rounds of
    /// queries (MX, then A and AAAA of the exchanges in parallel), an `srv`
    /// call two (SRV, then A and AAAA of the targets in parallel).
    pub timeout: Duration,
}

/// One host to deliver to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxHost {
    /// MX preference (lower is tried first); 0 for the implicit MX.
    pub preference: u16,
    /// Host name: lower case, A-labels, no trailing dot.
    pub name: String,
    /// IPv4 addresses first, then IPv6, each in answer order, no duplicates;
    /// never empty.
    pub addrs: Vec<IpAddr>,
}

/// One SRV target (RFC 2782) and its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvHost {
    /// Lower is tried first.
    pub priority: u16,
    /// Relative share among targets of equal priority (higher: more).
    pub weight: u16,
    /// The port the service listens on at `target`.
    pub port: u16,
    /// Host name: lower case, A-labels, no trailing dot; never ".".
    pub target: String,
    /// IPv4 addresses first, then IPv6, each in answer order, no duplicates;
    /// never empty.
    pub addrs: Vec<IpAddr>,
}

/// The outcome of an MX resolution that the caller acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MxAnswer {
    /// RFC 7505 null MX (a single MX record with exchange "."): the domain
    /// accepts no mail; the caller bounces at once.
    NullMx,
    /// Hosts to try, sorted by preference (ascending); equal preferences keep
    /// answer order (the caller shuffles). From MX records, each exchange
    /// resolved to A and AAAA (exchanges without any address are left out;
    /// "." exchanges mixed with real ones are ignored). If the domain has no
    /// MX records but has A/AAAA: one implicit host with preference 0 and
    /// name = the domain (RFC 5321 5.1).
    Hosts(Vec<MxHost>),
    /// NXDOMAIN, no MX and no A/AAAA, or not a valid domain name: permanent
    /// (the caller bounces with 5.1.2).
    NoSuchDomain,
}

/// Why there is no answer yet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Timeout, SERVFAIL, refused, network error, or MX exchanges (SRV
    /// targets) exist but none has an address: try again later.
    #[error("temporary DNS failure: {0}")]
    Temporary(String),
    /// The resolver thread could not be started / is gone.
    #[error("DNS resolver unavailable: {0}")]
    Unavailable(String),
}

/// Handle to the resolver thread: `Send + Sync`, cheap to clone.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

/// Shared by all clones of a [`Resolver`]; its drop stops the thread.
struct Inner {
    requests: async_channel::Sender<Request>,
    thread: Option<JoinHandle<()>>,
}

/// One call, as sent to the resolver thread.
struct Request {
    /// Fully qualified, validated.
    name: Name,
    /// The name as reported back (see [`host_name`]).
    domain: String,
    query: Query,
    reply: async_channel::Sender<Answer>,
}

/// What is asked about a name.
#[derive(Clone, Copy, Debug)]
enum Query {
    /// Where mail for it goes ([`Resolver::mx`]).
    Mx,
    /// Its TXT records ([`Resolver::txt`]).
    Txt,
    /// Its A and AAAA addresses ([`Resolver::addresses`]).
    Addresses,
    /// Its SRV records and their targets' addresses ([`Resolver::srv`]).
    Srv,
}

/// The reply to a [`Query`] of the same name.
#[derive(Debug)]
enum Answer {
    Mx(Result<MxAnswer, DnsError>),
    Txt(Result<Vec<String>, DnsError>),
    Addresses(Result<Vec<IpAddr>, DnsError>),
    Srv(Result<Vec<SrvHost>, DnsError>),
}

/// Why a string is not a domain name we can look up.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum InvalidDomain {
    #[error("empty domain")]
    Empty,
    #[error("domain of {bytes} bytes (limit {DOMAIN_BYTES_MAX}, RFC 1035 2.3.4)")]
    TooLong { bytes: usize },
    #[error("invalid domain name: {0}")]
    Syntax(String),
}

impl Resolver {
    /// Starts the `tern-dns` thread and its resolver; returns once it is
    /// ready. With no servers configured, reads /etc/resolv.conf now.
    pub fn start(config: &DnsConfig) -> Result<Resolver, DnsError> {
        let (resolver_config, opts) = resolver_settings(config)?;
        let (requests, requests_rx) = async_channel::bounded(REQUESTS_QUEUED_MAX);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("tern-dns".into())
            .spawn(move || run(resolver_config, opts, requests_rx, ready_tx))
            .map_err(|e| DnsError::Unavailable(format!("cannot spawn tern-dns: {e}")))?;
        let ready = ready_rx.recv();
        let inner = Inner {
            requests,
            thread: Some(thread),
        };
        match ready {
            Ok(Ok(())) => Ok(Resolver {
                inner: Arc::new(inner),
            }),
            // Dropping `inner` joins the thread, which has returned.
            Ok(Err(e)) => Err(e),
            Err(_) => Err(DnsError::Unavailable("tern-dns died on start".into())),
        }
    }

    /// Resolves where mail for `domain` goes. Domain literals are the
    /// caller's business; an invalid name is [`MxAnswer::NoSuchDomain`].
    pub async fn mx(&self, domain: &str) -> Result<MxAnswer, DnsError> {
        match self.ask(domain, Query::Mx).await? {
            Some(Answer::Mx(a)) => a,
            None => Ok(MxAnswer::NoSuchDomain),
            Some(other) => Err(mismatch(other)),
        }
    }

    /// The TXT records of `name`, each record's strings joined (RFC 7208
    /// 3.3 style); none (NXDOMAIN, no TXT, an invalid name): empty.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        match self.ask(name, Query::Txt).await? {
            Some(Answer::Txt(a)) => a,
            None => Ok(Vec::new()),
            Some(other) => Err(mismatch(other)),
        }
    }

    /// The IPv4 then IPv6 addresses of `host`; none: empty.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        match self.ask(host, Query::Addresses).await? {
            Some(Answer::Addresses(a)) => a,
            None => Ok(Vec::new()),
            Some(other) => Err(mismatch(other)),
        }
    }

    /// The SRV records of `name` (e.g. `_submission._tcp.example.com`),
    /// each target resolved to A and AAAA, concurrently: sorted by priority
    /// (ascending), then weight (descending), else answer order; at most
    /// [`MX_EXCHANGES_MAX`], a target and port listed twice kept once.
    /// Targets "." (RFC 2782: the service is not available there) and
    /// targets without an address are left out; if records exist but no
    /// target has an address, [`DnsError::Temporary`] (as for MX). None
    /// (NXDOMAIN, no SRV, only ".", an invalid name): empty.
    pub async fn srv(&self, name: &str) -> Result<Vec<SrvHost>, DnsError> {
        match self.ask(name, Query::Srv).await? {
            Some(Answer::Srv(a)) => a,
            None => Ok(Vec::new()),
            Some(other) => Err(mismatch(other)),
        }
    }

    /// Sends one query; `None` when `domain` is not a name we look up.
    async fn ask(&self, domain: &str, query: Query) -> Result<Option<Answer>, DnsError> {
        let name = match parse_domain(domain) {
            Ok(name) => name,
            Err(reason) => {
                tracing::debug!(domain, %reason, "dns: not a domain name");
                return Ok(None);
            }
        };
        let (reply, answer) = async_channel::bounded(1);
        let request = Request {
            domain: host_name(&name),
            name,
            query,
            reply,
        };
        let gone = || DnsError::Unavailable("the tern-dns thread is gone".into());
        self.inner
            .requests
            .send(request)
            .await
            .map_err(|_| gone())?;
        answer.recv().await.map(Some).map_err(|_| gone())
    }
}

/// The thread answered another query than asked (cannot happen).
fn mismatch(answer: Answer) -> DnsError {
    DnsError::Unavailable(format!("tern-dns answered another query: {answer:?}"))
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Last handle: no request can be sent any more, so the thread's
        // loop ends and it returns promptly.
        self.requests.close();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("dns: the tern-dns thread panicked");
            }
        }
    }
}

/// hickory's configuration: explicit servers (UDP + TCP on each address's
/// port, no hosts file) or the system's; our timeout and a single attempt
/// either way (the delivery queue retries later, on its own schedule).
fn resolver_settings(config: &DnsConfig) -> Result<(ResolverConfig, ResolverOpts), DnsError> {
    let (resolver_config, mut opts) = if config.servers.is_empty() {
        hickory_resolver::system_conf::read_system_conf().map_err(|e| {
            DnsError::Unavailable(format!("cannot read the system DNS configuration: {e}"))
        })?
    } else {
        let servers = config.servers.iter().map(|a| name_server(*a)).collect();
        let mut opts = ResolverOpts::default();
        opts.use_hosts_file = ResolveHosts::Never;
        (ResolverConfig::from_name_servers(servers), opts)
    };
    opts.timeout = if config.timeout.is_zero() {
        TIMEOUT_DEFAULT
    } else {
        config.timeout
    };
    // Retries after the first attempt; 0 keeps `timeout` the bound per query.
    opts.attempts = 0;
    Ok((resolver_config, opts))
}

fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
}

/// The `tern-dns` thread: reports readiness on `ready`, then serves
/// requests until every sender is gone.
fn run(
    config: ResolverConfig,
    opts: ResolverOpts,
    requests: async_channel::Receiver<Request>,
    ready: std::sync::mpsc::SyncSender<Result<(), DnsError>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(DnsError::Unavailable(format!("tokio runtime: {e}"))));
            return;
        }
    };
    runtime.block_on(async move {
        let built = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build();
        let resolver = match built {
            Ok(resolver) => resolver,
            Err(e) => {
                let _ = ready.send(Err(DnsError::Unavailable(format!("resolver: {e}"))));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let permits = Arc::new(tokio::sync::Semaphore::new(LOOKUPS_IN_FLIGHT_MAX));
        while let Ok(request) = requests.recv().await {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let resolver = resolver.clone();
            tokio::spawn(async move {
                let (name, domain) = (&request.name, &request.domain);
                let answer = match request.query {
                    Query::Mx => Answer::Mx(resolve_mx(&resolver, name, domain).await),
                    Query::Txt => Answer::Txt(resolve_txt(&resolver, name, domain).await),
                    Query::Addresses => Answer::Addresses(match addresses(&resolver, name).await {
                        Addresses::Found(a) => Ok(a),
                        Addresses::None => Ok(Vec::new()),
                        Addresses::Temporary(e) => Err(temporary("A/AAAA", domain, &e)),
                    }),
                    Query::Srv => Answer::Srv(resolve_srv(&resolver, name, domain).await),
                };
                tracing::debug!(%domain, ?answer, "dns: answer");
                // The caller may have stopped waiting; nothing to do then.
                let _ = request.reply.try_send(answer);
                drop(permit);
            });
        }
    });
}

/// Steps 4 and 5 of the module doc, for one domain.
async fn resolve_mx(
    resolver: &TokioResolver,
    name: &Name,
    domain: &str,
) -> Result<MxAnswer, DnsError> {
    let records = match resolver.mx_lookup(name.clone()).await {
        Ok(lookup) => mx_records(&lookup),
        Err(e) if e.is_nx_domain() => return Ok(MxAnswer::NoSuchDomain),
        Err(e) if e.is_no_records_found() => Vec::new(),
        Err(e) => return Err(temporary("MX", domain, &e.to_string())),
    };
    match plan_mx(records) {
        MxPlan::NullMx => Ok(MxAnswer::NullMx),
        MxPlan::Implicit => match addresses(resolver, name).await {
            Addresses::Found(addrs) => Ok(MxAnswer::Hosts(vec![MxHost {
                preference: 0,
                name: domain.to_owned(),
                addrs,
            }])),
            Addresses::None => Ok(MxAnswer::NoSuchDomain),
            Addresses::Temporary(e) => Err(temporary("A/AAAA", domain, &e)),
        },
        MxPlan::Exchanges(exchanges) => resolve_exchanges(resolver, domain, exchanges).await,
    }
}

/// The TXT records of `name`, each record's character strings joined.
async fn resolve_txt(
    resolver: &TokioResolver,
    name: &Name,
    domain: &str,
) -> Result<Vec<String>, DnsError> {
    match resolver.txt_lookup(name.clone()).await {
        Ok(lookup) => Ok(txt_records(&lookup)),
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(temporary("TXT", domain, &e.to_string())),
    }
}

/// TXT data of an answer (CNAMEs skipped): the strings of each record
/// joined, bytes that are not UTF-8 replaced.
fn txt_records(lookup: &Lookup) -> Vec<String> {
    lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// A and AAAA of every exchange, concurrently; see [`resolve_hosts`].
async fn resolve_exchanges(
    resolver: &TokioResolver,
    domain: &str,
    exchanges: Vec<(u16, Name)>,
) -> Result<MxAnswer, DnsError> {
    let hosts = resolve_hosts(resolver, domain, HostKind::MxExchange, exchanges).await?;
    let hosts = hosts
        .into_iter()
        .map(|(preference, exchange, addrs)| MxHost {
            preference,
            name: host_name(&exchange),
            addrs,
        })
        .collect();
    Ok(MxAnswer::Hosts(hosts))
}

/// Steps 4 and 5 of the module doc for an SRV name: the records, then the
/// addresses of their targets.
async fn resolve_srv(
    resolver: &TokioResolver,
    name: &Name,
    domain: &str,
) -> Result<Vec<SrvHost>, DnsError> {
    let records = match resolver.srv_lookup(name.clone()).await {
        Ok(lookup) => srv_records(&lookup),
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => return Ok(Vec::new()),
        Err(e) => return Err(temporary("SRV", domain, &e.to_string())),
    };
    let targets = plan_srv(records);
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let hosts = resolve_hosts(resolver, domain, HostKind::SrvTarget, targets).await?;
    let hosts = hosts
        .into_iter()
        .map(|(record, target, addrs)| SrvHost {
            priority: record.priority,
            weight: record.weight,
            port: record.port,
            target: host_name(&target),
            addrs,
        })
        .collect();
    Ok(hosts)
}

/// Which hosts [`resolve_hosts`] resolves, for its messages.
#[derive(Clone, Copy, Debug)]
enum HostKind {
    MxExchange,
    SrvTarget,
}

impl HostKind {
    fn as_str(self) -> &'static str {
        match self {
            HostKind::MxExchange => "MX host",
            HostKind::SrvTarget => "SRV target",
        }
    }
}

/// A and AAAA of every host, concurrently, each kept with its `T` and in
/// the given order; hosts without an address are left out, and none with
/// one is a temporary failure.
async fn resolve_hosts<T: Send + 'static>(
    resolver: &TokioResolver,
    domain: &str,
    kind: HostKind,
    hosts: Vec<(T, Name)>,
) -> Result<Vec<(T, Name, Vec<IpAddr>)>, DnsError> {
    let tasks: Vec<_> = hosts
        .into_iter()
        .map(|(data, host)| {
            let resolver = resolver.clone();
            tokio::spawn(async move {
                let found = addresses(&resolver, &host).await;
                (data, host, found)
            })
        })
        .collect();
    let kind = kind.as_str();
    let mut resolved = Vec::new();
    let mut last_error = None;
    for task in tasks {
        let (data, host, found) = task
            .await
            .map_err(|e| temporary("A/AAAA", domain, &e.to_string()))?;
        match found {
            Addresses::Found(addrs) => resolved.push((data, host, addrs)),
            Addresses::None => {
                tracing::debug!(domain, kind, %host, "dns: host has no address");
            }
            Addresses::Temporary(e) => {
                tracing::debug!(domain, kind, %host, error = %e, "dns: host lookup failed");
                last_error = Some(e);
            }
        }
    }
    if resolved.is_empty() {
        let why = last_error.map_or_else(String::new, |e| format!(" (last error: {e})"));
        return Err(DnsError::Temporary(format!(
            "no {kind} of {domain} has an address{why}"
        )));
    }
    Ok(resolved)
}

fn temporary(what: &str, domain: &str, error: &str) -> DnsError {
    DnsError::Temporary(format!("{what} lookup for {domain}: {error}"))
}

/// What the addresses of one host came to.
#[derive(Debug, PartialEq, Eq)]
enum Addresses {
    Found(Vec<IpAddr>),
    /// NXDOMAIN or no records of either family.
    None,
    Temporary(String),
}

async fn addresses(resolver: &TokioResolver, host: &Name) -> Addresses {
    let (v4, v6) = futures_lite::future::zip(
        resolver.ipv4_lookup(host.clone()),
        resolver.ipv6_lookup(host.clone()),
    )
    .await;
    combine(classify(v4), classify(v6))
}

fn classify(result: Result<Lookup, NetError>) -> Addresses {
    match result {
        Ok(lookup) => {
            let addrs = ip_addrs(&lookup);
            if addrs.is_empty() {
                Addresses::None
            } else {
                Addresses::Found(addrs)
            }
        }
        // Covers NXDOMAIN as well as NOERROR with an empty answer.
        Err(e) if e.is_no_records_found() => Addresses::None,
        Err(e) => Addresses::Temporary(e.to_string()),
    }
}

/// Any address wins (one family failing leaves the other usable); else
/// a failure is temporary; else there is no address.
fn combine(v4: Addresses, v6: Addresses) -> Addresses {
    match (v4, v6) {
        (Addresses::Found(mut a), Addresses::Found(b)) => {
            for ip in b {
                if !a.contains(&ip) {
                    a.push(ip);
                }
            }
            Addresses::Found(a)
        }
        (found @ Addresses::Found(_), _) | (_, found @ Addresses::Found(_)) => found,
        (failed @ Addresses::Temporary(_), _) | (_, failed @ Addresses::Temporary(_)) => failed,
        (Addresses::None, Addresses::None) => Addresses::None,
    }
}

/// A and AAAA data of an answer (CNAMEs on the way are skipped), without
/// duplicates.
fn ip_addrs(lookup: &Lookup) -> Vec<IpAddr> {
    let mut addrs = Vec::new();
    for record in lookup.answers() {
        let ip = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            _ => continue,
        };
        if !addrs.contains(&ip) {
            addrs.push(ip);
        }
    }
    addrs
}

/// (preference, exchange) of the MX records of an answer, in answer order.
fn mx_records(lookup: &Lookup) -> Vec<(u16, Name)> {
    lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::MX(mx) => Some((mx.preference, mx.exchange.clone())),
            _ => None,
        })
        .collect()
}

/// The fields of one SRV record but its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SrvRecord {
    priority: u16,
    weight: u16,
    port: u16,
}

/// The SRV records of an answer (CNAMEs skipped), in answer order.
fn srv_records(lookup: &Lookup) -> Vec<(SrvRecord, Name)> {
    lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some((
                SrvRecord {
                    priority: srv.priority,
                    weight: srv.weight,
                    port: srv.port,
                },
                srv.target.clone(),
            )),
            _ => None,
        })
        .collect()
}

/// Pure: the targets to resolve. "." targets dropped (RFC 2782: "the
/// service is decidedly not available at this domain"), sorted by priority
/// ascending then weight descending (stable: answer order otherwise), a
/// target and port listed twice kept at its best place, at most
/// [`MX_EXCHANGES_MAX`].
fn plan_srv(mut records: Vec<(SrvRecord, Name)>) -> Vec<(SrvRecord, Name)> {
    records.retain(|(_, target)| !target.is_root());
    records.sort_by_key(|(r, _)| (r.priority, std::cmp::Reverse(r.weight)));
    let mut seen = HashSet::new();
    records.retain(|(r, target)| seen.insert((target.to_lowercase(), r.port)));
    records.truncate(MX_EXCHANGES_MAX);
    records
}

/// What to do with the MX records of a domain.
#[derive(Debug, PartialEq, Eq)]
enum MxPlan {
    NullMx,
    /// No MX records: the domain itself is the host (RFC 5321 5.1).
    Implicit,
    /// Sorted by preference (stable), deduplicated, at most
    /// [`MX_EXCHANGES_MAX`].
    Exchanges(Vec<(u16, Name)>),
}

/// Pure: null MX detection, sorting, deduplication, the limit.
///
/// Only "." exchanges is a null MX (RFC 7505 3 allows one record; several
/// say the same). "." among real exchanges breaks RFC 7505 3 ("MUST NOT
/// advertise any other MX RR"); it is ignored and the real ones are used.
fn plan_mx(mut records: Vec<(u16, Name)>) -> MxPlan {
    if records.is_empty() {
        return MxPlan::Implicit;
    }
    if records.iter().all(|(_, exchange)| exchange.is_root()) {
        return MxPlan::NullMx;
    }
    records.retain(|(_, exchange)| !exchange.is_root());
    records.sort_by_key(|(preference, _)| *preference);
    // An exchange listed twice keeps its best preference.
    let mut seen = HashSet::new();
    records.retain(|(_, exchange)| seen.insert(exchange.to_lowercase()));
    records.truncate(MX_EXCHANGES_MAX);
    MxPlan::Exchanges(records)
}

/// Pure: a fully qualified name for `domain`, or why it cannot be one.
fn parse_domain(domain: &str) -> Result<Name, InvalidDomain> {
    let bare = domain.strip_suffix('.').unwrap_or(domain);
    if bare.is_empty() {
        return Err(InvalidDomain::Empty);
    }
    if bare.len() > DOMAIN_BYTES_MAX {
        return Err(InvalidDomain::TooLong { bytes: bare.len() });
    }
    // Rejects empty and over-long labels; IDNs become A-labels.
    let mut name = Name::from_utf8(bare).map_err(|e| InvalidDomain::Syntax(e.to_string()))?;
    // Fully qualified: the search list of resolv.conf never applies.
    name.set_fqdn(true);
    Ok(name)
}

/// Pure: how a host name is reported (lower case, A-labels, no trailing dot).
fn host_name(name: &Name) -> String {
    let ascii = name.to_lowercase().to_ascii();
    match ascii.strip_suffix('.') {
        Some(bare) if !bare.is_empty() => bare.to_owned(),
        _ => ascii,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn mx(records: &[(u16, &str)]) -> Vec<(u16, Name)> {
        records.iter().map(|(p, e)| (*p, name(e))).collect()
    }

    #[test]
    fn plan_mx_table() {
        let cases: &[(&[(u16, &str)], MxPlan)] = &[
            (&[], MxPlan::Implicit),
            (&[(0, ".")], MxPlan::NullMx),
            // A null MX with a non-zero preference is still a null MX.
            (&[(10, ".")], MxPlan::NullMx),
            (&[(0, "."), (0, ".")], MxPlan::NullMx),
            (
                &[(20, "b.test."), (10, "a.test.")],
                MxPlan::Exchanges(mx(&[(10, "a.test."), (20, "b.test.")])),
            ),
            // Equal preferences keep answer order.
            (
                &[(10, "z.test."), (5, "m.test."), (10, "a.test.")],
                MxPlan::Exchanges(mx(&[(5, "m.test."), (10, "z.test."), (10, "a.test.")])),
            ),
            // "." mixed with real exchanges is ignored.
            (
                &[(0, "."), (10, "a.test.")],
                MxPlan::Exchanges(mx(&[(10, "a.test.")])),
            ),
            // Duplicates keep their best preference.
            (
                &[(30, "A.test."), (10, "b.test."), (20, "a.test.")],
                MxPlan::Exchanges(mx(&[(10, "b.test."), (20, "a.test.")])),
            ),
        ];
        for (records, want) in cases {
            assert_eq!(&plan_mx(mx(records)), want, "{records:?}");
        }
    }

    #[test]
    fn plan_mx_limits_exchanges_to_the_best() {
        let records: Vec<_> = (0..40u16)
            .rev()
            .map(|i| (i, name(&format!("mx{i}.test."))))
            .collect();
        let MxPlan::Exchanges(kept) = plan_mx(records) else {
            panic!("exchanges expected");
        };
        assert_eq!(kept.len(), MX_EXCHANGES_MAX);
        let preferences: Vec<u16> = kept.iter().map(|(p, _)| *p).collect();
        let best: Vec<u16> = (0..MX_EXCHANGES_MAX as u16).collect();
        assert_eq!(preferences, best);
    }

    fn srv(records: &[(u16, u16, u16, &str)]) -> Vec<(SrvRecord, Name)> {
        let srv = |&(priority, weight, port, target): &(u16, u16, u16, &str)| {
            let record = SrvRecord {
                priority,
                weight,
                port,
            };
            (record, name(target))
        };
        records.iter().map(srv).collect()
    }

    #[test]
    fn plan_srv_table() {
        type Records = &'static [(u16, u16, u16, &'static str)];
        let cases: &[(Records, Records)] = &[
            (&[], &[]),
            (&[(0, 0, 0, ".")], &[]),
            // Priority ascending, then weight descending, else answer order.
            (
                &[
                    (20, 0, 25, "c.test."),
                    (10, 5, 25, "b.test."),
                    (10, 50, 25, "a.test."),
                    (10, 5, 25, "d.test."),
                ],
                &[
                    (10, 50, 25, "a.test."),
                    (10, 5, 25, "b.test."),
                    (10, 5, 25, "d.test."),
                    (20, 0, 25, "c.test."),
                ],
            ),
            // "." among real targets is left out.
            (
                &[(0, 0, 0, "."), (10, 0, 587, "a.test.")],
                &[(10, 0, 587, "a.test.")],
            ),
            // A target and port twice: its best place; another port: kept.
            (
                &[
                    (30, 0, 25, "A.test."),
                    (10, 0, 25, "a.test."),
                    (20, 0, 587, "a.test."),
                ],
                &[(10, 0, 25, "a.test."), (20, 0, 587, "a.test.")],
            ),
        ];
        for (records, want) in cases {
            assert_eq!(plan_srv(srv(records)), srv(want), "{records:?}");
        }
        let many: Vec<_> = (0..40u16)
            .rev()
            .map(|i| (i, 0, 25, format!("t{i}.test.")))
            .collect();
        let many: Vec<_> = many
            .iter()
            .map(|(p, w, o, t)| (*p, *w, *o, t.as_str()))
            .collect();
        let kept = plan_srv(srv(&many));
        let priorities: Vec<u16> = kept.iter().map(|(r, _)| r.priority).collect();
        assert_eq!(priorities, (0..MX_EXCHANGES_MAX as u16).collect::<Vec<_>>());
    }

    #[test]
    fn parse_domain_table() {
        let label63 = "a".repeat(63);
        let max = [&label63[..], &label63, &label63, &"b".repeat(61)].join(".");
        assert_eq!(max.len(), DOMAIN_BYTES_MAX);
        let too_long = format!("{max}c");
        let ok = [
            "example.test",
            "example.test.",
            "_submission._tcp.example.test",
            "EXAMPLE.test",
            "localhost",
            max.as_str(),
        ];
        for domain in ok {
            let parsed = parse_domain(domain).unwrap_or_else(|e| panic!("{domain}: {e}"));
            assert!(parsed.is_fqdn(), "{domain}");
        }
        assert_eq!(parse_domain(""), Err(InvalidDomain::Empty));
        assert_eq!(parse_domain("."), Err(InvalidDomain::Empty));
        assert_eq!(
            parse_domain(&too_long),
            Err(InvalidDomain::TooLong { bytes: 254 })
        );
        let bad_label = format!("{}.test", "a".repeat(64));
        for domain in ["a..test", ".test", bad_label.as_str()] {
            assert!(
                matches!(parse_domain(domain), Err(InvalidDomain::Syntax(_))),
                "{domain}: {:?}",
                parse_domain(domain)
            );
        }
    }

    #[test]
    fn host_names_are_lower_case_a_labels_without_the_dot() {
        let cases = [
            ("Mail.Example.TEST.", "mail.example.test"),
            ("mail.example.test", "mail.example.test"),
        ];
        for (input, want) in cases {
            assert_eq!(host_name(&name(input)), want);
        }
        let idn = parse_domain("bücher.example").unwrap();
        assert_eq!(host_name(&idn), "xn--bcher-kva.example");
    }

    #[test]
    fn combine_prefers_any_address() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let found = |ips: &[IpAddr]| Addresses::Found(ips.to_vec());
        let tmp = || Addresses::Temporary("timeout".into());
        let cases = [
            (found(&[v4]), found(&[v6, v4]), found(&[v4, v6])),
            (found(&[v4]), tmp(), found(&[v4])),
            (tmp(), found(&[v6]), found(&[v6])),
            (Addresses::None, found(&[v6]), found(&[v6])),
            (Addresses::None, tmp(), tmp()),
            (tmp(), Addresses::None, tmp()),
            (Addresses::None, Addresses::None, Addresses::None),
        ];
        for (a, b, want) in cases {
            let label = format!("{a:?} + {b:?}");
            assert_eq!(combine(a, b), want, "{label}");
        }
    }

    #[test]
    fn invalid_domains_need_no_thread() {
        let resolver = Resolver::start(&DnsConfig {
            servers: vec!["127.0.0.1:9".parse().unwrap()],
            timeout: Duration::from_millis(100),
        })
        .unwrap();
        let long = "a.".repeat(200);
        for domain in ["", ".", long.as_str()] {
            let answer = futures_lite::future::block_on(resolver.mx(domain));
            assert_eq!(answer, Ok(MxAnswer::NoSuchDomain), "{domain:?}");
        }
    }

    #[test]
    fn the_thread_stops_with_the_last_handle() {
        let resolver = Resolver::start(&DnsConfig {
            servers: vec!["127.0.0.1:9".parse().unwrap()],
            timeout: Duration::from_millis(100),
        })
        .unwrap();
        let clone = resolver.clone();
        let requests = resolver.inner.requests.clone();
        drop(resolver);
        assert!(!requests.is_closed(), "a clone is still alive");
        drop(clone);
        // The drop of the last handle closed the channel and joined the thread.
        assert!(requests.is_closed());
    }
}
