//! Outbound `verify` and MTA-STS (RFC 8461) against real processes: a
//! test CA (trusted through `tls.ca_file`), tern next hops serving
//! certificates it issued, the test DNS server (MX, TXT, A records) and
//! an HTTPS server on loopback serving the policies.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tern_tests::dns::{TestDns, Zone};
use tern_tests::https::HttpsServer;
use tern_tests::pki::TestCa;
use tern_tests::server::{wait_until, Options, TernProcess};
use tern_tests::sink::TestSink;
use tern_tests::smtp::message;

const DNS_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53));
const WAIT: Duration = Duration::from_secs(30);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

const RETRIES: &str =
    "maintenance_interval = \"200ms\"\nretry_initial = \"300ms\"\nretry_max = \"1s\"\n\
    host_down_initial = \"300ms\"\nhost_down_max = \"1s\"\n";

fn send_one(tern: &TernProcess, to: &str, subject: &str) -> String {
    let mut c = tern.ehlo();
    let id = c.send_message("s@example.org", &[to], &message(subject, &["x"]));
    c.quit();
    id
}

/// `tern_mta_sts_total{outcome="..."}` of a node.
fn sts(tern: &TernProcess, outcome: &str) -> u64 {
    let key = format!("tern_mta_sts_total{{outcome=\"{outcome}\"}} ");
    tern.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&key)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in the metrics"))
}

/// A hop holding what it gets, serving `tls` (a `[tls]` section).
fn hop(tls: &str) -> TernProcess {
    TernProcess::start(Options::with_config(&format!(
        "{tls}[delivery]\nhold = true\n"
    )))
}

fn received_of_only(hop: &TernProcess) -> String {
    let id = hop.queue_ids().remove(0);
    String::from_utf8_lossy(hop.queue_show(&id).received()).to_string()
}

#[test]
fn verify_delivers_to_the_right_name_and_defers_a_wrong_one() {
    let ca = TestCa::new();
    let next = hop(&ca.issue(&["localhost"]).tls_section());
    let port = next.addr().port();
    let relay = |host: &str| {
        TernProcess::start(Options::with_config(&format!(
            "[pools.main]\nhosts = [{{ address = \"{host}:{port}\" }}]\ntls_policy = \"verify\"\n\
             [routes]\n\"*\" = \"main\"\n[tls]\nca_file = \"{}\"\n[delivery]\n{RETRIES}",
            ca.ca_file.display()
        )))
    };
    let right = relay("localhost");
    send_one(&right, "r@example.com", "right name");
    wait_until("delivered under verify", WAIT, || {
        next.queue_ids().len() == 1
    });
    assert!(received_of_only(&next).contains("with ESMTPS id"));

    // The certificate is for "localhost", not for 127.0.0.1: never sent.
    let wrong = relay("127.0.0.1");
    let id = send_one(&wrong, "r@example.com", "wrong name");
    wait_until("a failed verification logged", WAIT, || {
        let log = wrong.stderr();
        log.contains("deferred") && log.contains("TLS handshake with 127.0.0.1")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(next.queue_ids().len(), 1, "verify sent to a wrong name");
    assert_eq!(wrong.queue_ids(), vec![id], "deferred, not bounced");
    let failures: u64 = wrong
        .metrics()
        .lines()
        .filter(|l| l.starts_with("tern_tls_handshake_failures_total{direction=\"out\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(failures >= 1, "the failed handshakes are counted");
}

const ENFORCE: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx.sts.test\r\nmax_age: 86400\r\n";
const TESTING: &str = "version: STSv1\nmode: testing\nmx: mx.testing.test\nmax_age: 86400\n";

/// The zone: `sts.test` (enforce) prefers a rogue MX the policy does not
/// name; `testing.test` has only such an MX.
fn zone(sts_id: &str) -> Zone {
    Zone::new()
        .mx("sts.test", 5, "rogue.sts.test")
        .mx("sts.test", 10, "mx.sts.test")
        .a("rogue.sts.test", ip(3))
        .a("mx.sts.test", ip(1))
        .txt("_mta-sts.sts.test", &format!("v=STSv1; id={sts_id};"))
        .a("mta-sts.sts.test", ip(4))
        .mx("testing.test", 10, "rogue.testing.test")
        .a("rogue.testing.test", ip(3))
        .txt("_mta-sts.testing.test", "v=STSv1; id=t1;")
        .a("mta-sts.testing.test", ip(4))
}

/// The HTTPS server of the policies, on 127.0.0.4, with a certificate of
/// `ca` for `names`.
fn policy_server(ca: &TestCa, names: &[&str]) -> HttpsServer {
    let addr = SocketAddr::new(IpAddr::V4(ip(4)), 0);
    HttpsServer::start(addr, ca.issue(names).server_config())
}

fn mx_relay(dns: &TestDns, ca: &TestCa, https: &HttpsServer, mx_port: u16) -> TernProcess {
    TernProcess::start(Options::with_config(&format!(
        "[delivery]\nmx_port = {mx_port}\ndns_servers = [\"{}\"]\ndns_timeout = \"2s\"\n{RETRIES}\
         [tls]\nca_file = \"{}\"\n[mta_sts]\nport = {}\nfetch_timeout = \"3s\"\n",
        dns.addr(),
        ca.ca_file.display(),
        https.addr().port()
    )))
}

#[test]
fn enforce_uses_only_the_policy_hosts_in_verified_tls_and_the_cache_survives_restart() {
    let ca = TestCa::new();
    let next = hop(&ca.issue(&["mx.sts.test"]).tls_section());
    let port = next.addr().port();
    // The rogue MX (best preference, no TLS) on the same port elsewhere.
    let rogue = TestSink::start(SocketAddr::new(IpAddr::V4(ip(3)), port));
    let https = policy_server(&ca, &["mta-sts.sts.test", "mta-sts.testing.test"]);
    https.set("mta-sts.sts.test", Some(ENFORCE));
    let dns = TestDns::start(DNS_IP, zone("1"));
    let mut relay = mx_relay(&dns, &ca, &https, port);

    send_one(&relay, "r@sts.test", "enforced");
    wait_until("delivered to the policy's MX", WAIT, || {
        next.queue_ids().len() == 1
    });
    assert!(received_of_only(&next).contains("with ESMTPS id"));
    assert_eq!(rogue.connections(), 0, "the MX outside the policy was used");
    assert!(sts(&relay, "enforce") >= 1);
    assert_eq!(sts(&relay, "fetched"), 1);
    assert!(sts(&relay, "enforce_mx_mismatch") >= 1);
    let cache = relay.data_dir().join("mta-sts/policies.toml");
    let text = std::fs::read_to_string(&cache).expect("the policy cache is written");
    assert!(text.contains("sts.test") && text.contains("mx.sts.test"));

    // An attacker now blocks the policy (404) and changes the TXT id; after
    // a restart the cached enforce policy still holds.
    https.set("mta-sts.sts.test", None);
    dns.set_zone(zone("2"));
    std::thread::sleep(Duration::from_millis(1200)); // the zone's TTL
    relay.stop_gracefully();
    relay.restart();
    send_one(&relay, "r@sts.test", "after restart");
    wait_until("delivered under the cached policy", WAIT, || {
        next.queue_ids().len() == 2
    });
    assert_eq!(rogue.connections(), 0, "the cached policy was forgotten");
    assert!(
        sts(&relay, "fetch_failed") >= 1,
        "the new id was fetched and failed"
    );
    assert!(sts(&relay, "enforce") >= 1);
}

#[test]
fn testing_delivers_anyway_and_reports() {
    let ca = TestCa::new();
    let rogue = TestSink::start(SocketAddr::new(IpAddr::V4(ip(3)), 0));
    let https = policy_server(&ca, &["mta-sts.sts.test", "mta-sts.testing.test"]);
    https.set("mta-sts.testing.test", Some(TESTING));
    let dns = TestDns::start(DNS_IP, zone("1"));
    let relay = mx_relay(&dns, &ca, &https, rogue.addr().port());
    send_one(&relay, "r@testing.test", "testing mode");
    let got = rogue.wait_for(1, WAIT);
    assert_eq!(got[0].subject(), "testing mode");
    assert!(sts(&relay, "testing") >= 1);
    assert!(sts(&relay, "testing_mx_mismatch") >= 1);
    assert!(sts(&relay, "testing_no_tls") >= 1);
    assert!(https.requests() >= 1);
}

#[test]
fn a_domain_without_a_policy_is_delivered_as_before() {
    let sink = TestSink::start(SocketAddr::new(IpAddr::V4(ip(3)), 0));
    let ca = TestCa::new();
    let https = policy_server(&ca, &["mta-sts.plain.test"]);
    let dns = TestDns::start(
        DNS_IP,
        Zone::new()
            .mx("plain.test", 10, "mx.plain.test")
            .a("mx.plain.test", ip(3)),
    );
    let relay = mx_relay(&dns, &ca, &https, sink.addr().port());
    send_one(&relay, "r@plain.test", "no policy");
    assert_eq!(sink.wait_for(1, WAIT)[0].subject(), "no policy");
    assert!(sts(&relay, "absent") >= 1);
    assert_eq!(https.requests(), 0, "no TXT record: nothing fetched");
}
