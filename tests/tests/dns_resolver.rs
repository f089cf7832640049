//! MX resolution (`tern_engine::dns::Resolver`) against the in-process
//! test DNS server on 127.0.0.53: sorting, implicit MX, null MX, NXDOMAIN,
//! exchanges without addresses, TCP fallback, TTL expiry, and servers that
//! fail or never answer; TXT, address and SRV lookups.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use tern_engine::dns::{
    DnsConfig, DnsError, MxAnswer, MxHost, Resolver, SrvHost, MX_EXCHANGES_MAX,
};
use tern_tests::dns::{TestDns, Zone, TTL_SECS};

const DNS_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53));
const TIMEOUT: Duration = Duration::from_millis(500);

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, last)
}

fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}

fn resolver(server: SocketAddr) -> Resolver {
    Resolver::start(&DnsConfig {
        servers: vec![server],
        timeout: TIMEOUT,
    })
    .expect("resolver starts")
}

fn mx(resolver: &Resolver, domain: &str) -> Result<MxAnswer, DnsError> {
    block_on(resolver.mx(domain))
}

fn host(preference: u16, name: &str, addrs: &[IpAddr]) -> MxHost {
    MxHost {
        preference,
        name: name.into(),
        addrs: addrs.to_vec(),
    }
}

fn srv(resolver: &Resolver, name: &str) -> Result<Vec<SrvHost>, DnsError> {
    block_on(resolver.srv(name))
}

fn srv_host(priority: u16, weight: u16, port: u16, target: &str, addrs: &[IpAddr]) -> SrvHost {
    SrvHost {
        priority,
        weight,
        port,
        target: target.into(),
        addrs: addrs.to_vec(),
    }
}

#[test]
fn two_priorities_sorted_with_addresses() {
    let zone = Zone::new()
        .mx("example.test", 20, "backup.example.test")
        .mx("example.test", 10, "mx.example.test")
        .a("mx.example.test", v4(1))
        .aaaa("mx.example.test", v6(1))
        .a("backup.example.test", v4(2))
        .a("backup.example.test", v4(3));
    let dns = TestDns::start(DNS_IP, zone);
    let r = resolver(dns.addr());
    let want = MxAnswer::Hosts(vec![
        host(10, "mx.example.test", &[v4(1).into(), v6(1).into()]),
        host(20, "backup.example.test", &[v4(2).into(), v4(3).into()]),
    ]);
    assert_eq!(mx(&r, "example.test"), Ok(want.clone()));
    // Case and a trailing dot do not matter; the second answer is cached.
    let queries = dns.queries();
    assert_eq!(mx(&r, "Example.TEST."), Ok(want));
    assert_eq!(dns.queries(), queries, "served from hickory's cache");
}

#[test]
fn implicit_mx_from_a_record() {
    let zone = Zone::new().a("plain.test", v4(7));
    let dns = TestDns::start(DNS_IP, zone);
    let r = resolver(dns.addr());
    assert_eq!(
        mx(&r, "plain.test"),
        Ok(MxAnswer::Hosts(vec![host(
            0,
            "plain.test",
            &[v4(7).into()]
        )]))
    );
}

#[test]
fn null_mx() {
    let zone = Zone::new().null_mx("nomail.test").a("nomail.test", v4(9));
    let dns = TestDns::start(DNS_IP, zone);
    let r = resolver(dns.addr());
    assert_eq!(mx(&r, "nomail.test"), Ok(MxAnswer::NullMx));
}

#[test]
fn nxdomain_and_names_without_addresses_do_not_exist() {
    // empty.test exists only as the parent of sub.empty.test (an empty
    // non-terminal): NOERROR without records.
    let zone = Zone::new().mx("sub.empty.test", 10, "mx.sub.empty.test");
    let dns = TestDns::start(DNS_IP, zone);
    let r = resolver(dns.addr());
    assert_eq!(mx(&r, "missing.test"), Ok(MxAnswer::NoSuchDomain));
    assert_eq!(mx(&r, "empty.test"), Ok(MxAnswer::NoSuchDomain));
    // Not valid names: answered without a query.
    let queries = dns.queries();
    assert_eq!(mx(&r, ""), Ok(MxAnswer::NoSuchDomain));
    assert_eq!(mx(&r, &"a".repeat(254)), Ok(MxAnswer::NoSuchDomain));
    assert_eq!(dns.queries(), queries);
}

#[test]
fn exchanges_without_address_are_left_out() {
    let zone = Zone::new()
        .mx("partial.test", 5, "gone.partial.test")
        .mx("partial.test", 10, "mx.partial.test")
        .a("mx.partial.test", v4(4))
        .mx("dead.test", 10, "gone1.dead.test")
        .mx("dead.test", 20, "gone2.dead.test");
    let dns = TestDns::start(DNS_IP, zone);
    let r = resolver(dns.addr());
    assert_eq!(
        mx(&r, "partial.test"),
        Ok(MxAnswer::Hosts(vec![host(
            10,
            "mx.partial.test",
            &[v4(4).into()]
        )]))
    );
    match mx(&r, "dead.test") {
        Err(DnsError::Temporary(why)) => assert!(why.contains("dead.test"), "{why}"),
        other => panic!("expected a temporary failure, got {other:?}"),
    }
}

#[test]
fn large_answer_comes_over_tcp_and_is_limited() {
    // 40 MX records with long names do not fit the 1232-byte UDP payload.
    let mut zone = Zone::new();
    for i in (0..40u16).rev() {
        // Distinct long labels: name compression cannot shrink them.
        let exchange = format!("mx{i:02}-{}.big.test", "x".repeat(40));
        zone = zone.mx("big.test", i, &exchange).a(&exchange, v4(100));
    }
    let dns = TestDns::start(DNS_IP, zone);
    let r = resolver(dns.addr());
    assert_eq!(dns.tcp_queries(), 0);
    let Ok(MxAnswer::Hosts(hosts)) = mx(&r, "big.test") else {
        panic!("hosts expected");
    };
    let preferences: Vec<u16> = hosts.iter().map(|h| h.preference).collect();
    let best: Vec<u16> = (0..MX_EXCHANGES_MAX as u16).collect();
    assert_eq!(preferences, best);
    assert!(hosts[0].name.starts_with("mx00-"), "{}", hosts[0].name);
    assert!(dns.tcp_queries() >= 1, "the MX answer came over TCP");
}

#[test]
fn zone_changes_show_after_the_ttl() {
    let dns = TestDns::start(DNS_IP, Zone::new().a("moving.test", v4(1)));
    let r = resolver(dns.addr());
    let at = |last| {
        Ok(MxAnswer::Hosts(vec![host(
            0,
            "moving.test",
            &[v4(last).into()],
        )]))
    };
    assert_eq!(mx(&r, "moving.test"), at(1));
    dns.set_zone(Zone::new().a("moving.test", v4(2)));
    std::thread::sleep(Duration::from_secs(u64::from(TTL_SECS)) + Duration::from_millis(200));
    assert_eq!(mx(&r, "moving.test"), at(2));
    dns.set_zone(Zone::new());
    std::thread::sleep(Duration::from_secs(u64::from(TTL_SECS)) + Duration::from_millis(200));
    assert_eq!(mx(&r, "moving.test"), Ok(MxAnswer::NoSuchDomain));
}

#[test]
fn servfail_is_temporary() {
    let zone = Zone::new().a("other.test", v4(1)).servfail("broken.test");
    let dns = TestDns::start(DNS_IP, zone);
    let r = resolver(dns.addr());
    assert!(
        matches!(mx(&r, "broken.test"), Err(DnsError::Temporary(_))),
        "{:?}",
        mx(&r, "broken.test")
    );
}

#[test]
fn silent_server_is_temporary_within_the_timeout() {
    // Bound and never read: queries go nowhere.
    let silent = UdpSocket::bind((DNS_IP, 0)).expect("bind");
    let r = resolver(silent.local_addr().unwrap());
    let start = Instant::now();
    let answer = mx(&r, "example.test");
    let took = start.elapsed();
    assert!(matches!(answer, Err(DnsError::Temporary(_))), "{answer:?}");
    // One MX query, one attempt: the timeout plus scheduling slack.
    assert!(took >= TIMEOUT - Duration::from_millis(50), "{took:?}");
    assert!(took < TIMEOUT * 2, "{took:?}");
}

#[test]
fn usable_from_many_threads_at_once() {
    let zone = Zone::new()
        .mx("shared.test", 10, "mx.shared.test")
        .a("mx.shared.test", v4(5));
    let dns = TestDns::start(DNS_IP, zone);
    let r = resolver(dns.addr());
    let want = Ok(MxAnswer::Hosts(vec![host(
        10,
        "mx.shared.test",
        &[v4(5).into()],
    )]));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                s.spawn(move || mx(&r, "shared.test"))
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.join().unwrap(), want);
        }
    });
}

#[test]
fn awaitable_on_a_glommio_executor() {
    let zone = Zone::new().a("glommio.test", v4(6));
    let dns = TestDns::start(DNS_IP, zone);
    let r = resolver(dns.addr());
    let answer = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move { r.mx("glommio.test").await })
        .expect("executor")
        .join()
        .expect("join");
    assert_eq!(
        answer,
        Ok(MxAnswer::Hosts(vec![host(
            0,
            "glommio.test",
            &[v4(6).into()]
        )]))
    );
}

#[test]
fn txt_records_and_addresses() {
    let long = "v=STSv1; id=".to_owned() + &"x".repeat(300);
    let dns = TestDns::start(
        DNS_IP,
        Zone::new()
            .txt("_mta-sts.sts.test", "v=STSv1; id=20260101;")
            .txt("_mta-sts.sts.test", "unrelated")
            .txt("long.test", &long)
            .a("mta-sts.sts.test", v4(7))
            .aaaa("mta-sts.sts.test", v6(7)),
    );
    let r = resolver(dns.addr());
    let mut txt = block_on(r.txt("_mta-sts.sts.test")).unwrap();
    txt.sort();
    assert_eq!(txt, ["unrelated", "v=STSv1; id=20260101;"]);
    // Strings of one record are joined (RFC 7208 3.3 style).
    assert_eq!(block_on(r.txt("long.test")).unwrap(), [long]);
    assert!(block_on(r.txt("nothing.test")).unwrap().is_empty());
    assert!(block_on(r.txt("not a name..")).unwrap().is_empty());
    assert_eq!(
        block_on(r.addresses("mta-sts.sts.test")).unwrap(),
        [IpAddr::V4(v4(7)), IpAddr::V6(v6(7))]
    );
    assert!(block_on(r.addresses("nothing.test")).unwrap().is_empty());
}

#[test]
fn srv_targets_sorted_with_addresses() {
    let zone = Zone::new()
        .srv("_submission._tcp.srv.test", 20, 0, 2587, "Backup.SRV.test.")
        .srv("_submission._tcp.srv.test", 10, 5, 587, "mail.srv.test")
        .srv("_submission._tcp.srv.test", 10, 50, 587, "heavy.srv.test")
        .a("mail.srv.test", v4(1))
        .aaaa("mail.srv.test", v6(1))
        .a("heavy.srv.test", v4(2))
        .aaaa("backup.srv.test", v6(3))
        .a("backup.srv.test", v4(3));
    let dns = TestDns::start(DNS_IP, zone);
    let r = resolver(dns.addr());
    let want = vec![
        srv_host(10, 50, 587, "heavy.srv.test", &[v4(2).into()]),
        srv_host(10, 5, 587, "mail.srv.test", &[v4(1).into(), v6(1).into()]),
        // IPv4 first whatever the zone's order; lower case, no dot.
        srv_host(
            20,
            0,
            2587,
            "backup.srv.test",
            &[v4(3).into(), v6(3).into()],
        ),
    ];
    assert_eq!(srv(&r, "_submission._tcp.srv.test"), Ok(want.clone()));
    // Case and a trailing dot do not matter; the second answer is cached.
    let queries = dns.queries();
    assert_eq!(srv(&r, "_Submission._TCP.srv.test."), Ok(want));
    assert_eq!(dns.queries(), queries, "served from hickory's cache");
}

#[test]
fn srv_dot_target_and_missing_names_give_no_host() {
    let zone = Zone::new()
        .srv("_smtp._tcp.none.test", 0, 0, 0, ".")
        .srv("_smtp._tcp.mixed.test", 0, 0, 0, ".")
        .srv("_smtp._tcp.mixed.test", 10, 0, 25, "mx.mixed.test")
        .a("mx.mixed.test", v4(4))
        .a("plain.test", v4(5));
    let dns = TestDns::start(DNS_IP, zone);
    let r = resolver(dns.addr());
    // RFC 2782: "." alone says the service is not available.
    assert_eq!(srv(&r, "_smtp._tcp.none.test"), Ok(vec![]));
    // "." among real targets is left out.
    assert_eq!(
        srv(&r, "_smtp._tcp.mixed.test"),
        Ok(vec![srv_host(10, 0, 25, "mx.mixed.test", &[v4(4).into()])])
    );
    // NXDOMAIN, and a name with records but no SRV.
    assert_eq!(srv(&r, "_smtp._tcp.missing.test"), Ok(vec![]));
    assert_eq!(srv(&r, "plain.test"), Ok(vec![]));
    // Not a valid name: answered without a query.
    let queries = dns.queries();
    assert_eq!(srv(&r, "not a name.."), Ok(vec![]));
    assert_eq!(dns.queries(), queries);
}

#[test]
fn srv_targets_without_address_and_servfail() {
    let zone = Zone::new()
        .srv("_smtp._tcp.partial.test", 5, 0, 25, "gone.partial.test")
        .srv("_smtp._tcp.partial.test", 10, 0, 25, "mx.partial.test")
        .a("mx.partial.test", v4(6))
        .srv("_smtp._tcp.dead.test", 10, 0, 25, "gone.dead.test")
        .servfail("_smtp._tcp.broken.test");
    let dns = TestDns::start(DNS_IP, zone);
    let r = resolver(dns.addr());
    assert_eq!(
        srv(&r, "_smtp._tcp.partial.test"),
        Ok(vec![srv_host(
            10,
            0,
            25,
            "mx.partial.test",
            &[v4(6).into()]
        )])
    );
    // Records, but no target with an address: as for MX, try later.
    match srv(&r, "_smtp._tcp.dead.test") {
        Err(DnsError::Temporary(why)) => assert!(why.contains("dead.test"), "{why}"),
        other => panic!("expected a temporary failure, got {other:?}"),
    }
    let broken = srv(&r, "_smtp._tcp.broken.test");
    assert!(matches!(broken, Err(DnsError::Temporary(_))), "{broken:?}");
}
