//! Shadow link security (issue 14): only a client that shows a pinned
//! peer certificate in TLS may plant shadow copies (`XSHADOW`) or ask
//! which copies to discard (`XQDISCARD`). A stranger, in clear text or
//! in TLS with a certificate of its own, gets 5xx, is counted and logged,
//! and leaves nothing behind.

use std::net::SocketAddr;

use tern_tests::server::{Options, PortReservation, TernProcess};
use tern_tests::smtp::{message, Client};
use tern_tests::tls::{self, CertPair};

/// A shadow node "b" whose peer "a" pins the cluster certificate.
fn shadow_node(a_addr: SocketAddr) -> TernProcess {
    TernProcess::start(Options::with_config(&format!(
        "[delivery]\nhold = true\n[cluster]\nnode_id = \"b\"\npeers = [ {} ]\n{}",
        tls::peer("a", a_addr, None),
        tls::tls_section()
    )))
}

/// One complete shadow copy (MAIL with XSHADOW, RCPT, BDAT LAST) for
/// primary queue id `id`; the replies are read one by one.
fn plant(c: &mut Client, id: &str) -> Vec<u16> {
    let content = message(&format!("copy {id}"), &["x"]);
    let mut codes = vec![
        c.cmd(&format!("MAIL FROM:<s@example.org> XSHADOW=a,db-a,{id}"))
            .code,
    ];
    if codes[0] != 250 {
        return codes;
    }
    codes.push(c.cmd("RCPT TO:<r@example.com>").code);
    c.send(format!("BDAT {} LAST\r\n", content.len()).as_bytes());
    c.send(&content);
    codes.push(c.reply().code);
    codes
}

fn held_ids(b: &TernProcess) -> Vec<String> {
    tern_engine::cli::queue::shadow_copies(&b.data_dir())
        .expect("read shadow copies")
        .into_iter()
        .map(|(_, origin, _)| origin.queue_id)
        .collect()
}

fn ehlo_keywords(c: &mut Client) -> Vec<String> {
    let r = c.cmd("EHLO client.test");
    r.assert(250, None);
    r.lines
}

#[test]
fn a_stranger_cannot_plant_or_query_shadow_copies() {
    let a = PortReservation::new();
    let b = shadow_node(a.addr());

    // Clear text, from a loopback address (the peer's own address): the
    // address alone proves nothing.
    let mut c = Client::open(b.addr());
    let keywords = ehlo_keywords(&mut c);
    assert!(
        !keywords.iter().any(|k| k.starts_with("XSHADOW")),
        "XSHADOW advertised to a client without a certificate: {keywords:?}"
    );
    assert_eq!(plant(&mut c, "clear1"), [555]);
    let r = c.cmd("XQDISCARD a db-a");
    assert_eq!(r.code / 100, 5, "XQDISCARD in clear text: {r}");
    c.quit();

    // TLS with a certificate that is not pinned.
    let stranger = CertPair::generate("stranger.test");
    let mut c = Client::ehlo(b.addr());
    c.starttls(stranger.client_config());
    let keywords = ehlo_keywords(&mut c);
    assert!(!keywords.iter().any(|k| k.starts_with("XSHADOW")));
    assert_eq!(plant(&mut c, "tls1"), [555]);
    let r = c.cmd("XQDISCARD a db-a");
    assert_eq!(
        r.code / 100,
        5,
        "XQDISCARD with a stranger's certificate: {r}"
    );
    c.quit();

    // TLS without any client certificate.
    let mut c = Client::ehlo(b.addr());
    c.starttls(tls::anonymous_client());
    ehlo_keywords(&mut c);
    assert_eq!(plant(&mut c, "anon1"), [555]);
    c.quit();

    assert!(held_ids(&b).is_empty(), "a stranger planted a copy");
    assert_eq!(b.counter("tern_shadow_untrusted_total"), 5);
    assert!(
        b.stderr().contains("XSHADOW/XQDISCARD refused"),
        "refusals are logged"
    );

    // The peer, with the pinned certificate, may.
    let mut c = tls::peer_client(b.addr());
    assert_eq!(plant(&mut c, "peer1"), [250, 250, 250]);
    let r = c.cmd("XQDISCARD a db-a");
    assert_eq!(r.code, 250, "{r}");
    c.quit();
    assert_eq!(held_ids(&b), ["peer1"]);
    assert_eq!(b.counter("tern_shadow_untrusted_total"), 5);
}

#[test]
fn a_primary_does_not_shadow_to_a_peer_with_the_wrong_certificate() {
    // B serves a certificate of its own; A pins the cluster certificate
    // for B: the link must refuse B, so A accepts without redundancy.
    let (ra, rb) = (PortReservation::new(), PortReservation::new());
    let (a_addr, b_addr) = (ra.addr(), rb.addr());
    let impostor = CertPair::generate("impostor.test");
    let b = TernProcess::start_on(
        Options::with_config(&format!(
            "[delivery]\nhold = true\n[cluster]\nnode_id = \"b\"\npeers = [ {} ]\n{}",
            tls::peer("a", a_addr, None),
            impostor.tls_section()
        )),
        rb,
    );
    let a = TernProcess::start_on(
        Options::with_config(&format!(
            "[delivery]\nhold = true\n[cluster]\nnode_id = \"a\"\nshadow_timeout = \"2s\"\npeers = [ {} ]\n{}",
            tls::peer("b", b_addr, None),
            tls::tls_section()
        )),
        ra,
    );
    let mut c = a.ehlo();
    c.send_message("s@example.org", &["r@example.com"], &message("m", &["x"]));
    c.quit();
    assert_eq!(a.counter("tern_non_redundant_accepts_total"), 1);
    assert!(held_ids(&b).is_empty());
}
