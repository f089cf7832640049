//! Outbound TLS policies (issue 14) against real next hops: a tern node
//! (STARTTLS with its self-signed certificate) and the in-process test
//! sink (no STARTTLS). `encrypt` delivers in TLS or not at all; `may`
//! delivers in clear text where TLS is not offered and, after a failed
//! handshake, connects once more in clear text (counted); `none` never
//! tries.

use std::time::Duration;

use tern_tests::server::{sum_samples, wait_until, Options, TernProcess};
use tern_tests::sink::{Behavior, TestSink};
use tern_tests::smtp::message;

/// A relay to `to` with `delivery.tls_policy = policy` and fast retries.
fn relay(to: std::net::SocketAddr, policy: &str) -> TernProcess {
    TernProcess::start(Options::with_config(&format!(
        "[server]\nrelay_to = \"{to}\"\n[delivery]\ntls_policy = \"{policy}\"\n\
         maintenance_interval = \"200ms\"\nretry_initial = \"300ms\"\nretry_max = \"1s\"\n\
         host_down_initial = \"300ms\"\nhost_down_max = \"1s\"\n"
    )))
}

fn send_one(tern: &TernProcess, subject: &str) -> String {
    let mut c = tern.ehlo();
    let id = c.send_message(
        "s@example.org",
        &["r@example.com"],
        &message(subject, &["x"]),
    );
    c.quit();
    id
}

#[test]
fn encrypt_delivers_in_tls_to_a_next_hop_that_offers_it() {
    let next = TernProcess::start(Options::with_config("[delivery]\nhold = true\n"));
    let a = relay(next.addr(), "encrypt");
    send_one(&a, "enc");
    wait_until("delivered to the next hop", Duration::from_secs(20), || {
        next.queue_ids().len() == 1
    });
    let id = next.queue_ids().remove(0);
    let received = String::from_utf8_lossy(next.queue_show(&id).received()).to_string();
    assert!(
        received.contains("(using TLSv1.3 with cipher") && received.contains("with ESMTPS id"),
        "the hop was not in TLS: {received}"
    );
    wait_until("queue empty", Duration::from_secs(10), || {
        a.queue_ids().is_empty()
    });
}

#[test]
fn encrypt_never_sends_in_clear_text_and_may_does() {
    let sink = TestSink::start("127.0.0.1:0".parse().unwrap());
    let strict = relay(sink.addr(), "encrypt");
    let id = send_one(&strict, "strict");
    // Several attempts go by; none delivers.
    std::thread::sleep(Duration::from_secs(3));
    assert!(sink.messages().is_empty(), "encrypt sent in clear text");
    assert_eq!(strict.queue_ids(), vec![id], "deferred, not bounced");
    assert!(sink.connections() >= 1, "it did try");

    let lenient = relay(sink.addr(), "may");
    send_one(&lenient, "lenient");
    let got = sink.wait_for(1, Duration::from_secs(20));
    assert_eq!(got[0].subject(), "lenient");
}

/// `tern_tls_cleartext_fallbacks_total` (one sample, no labels).
fn fallbacks(tern: &TernProcess) -> u64 {
    sum_samples(&tern.metrics(), "tern_tls_cleartext_fallbacks_total ")
}

#[test]
fn may_retries_in_clear_text_once_after_a_failed_handshake_and_encrypt_does_not() {
    // The sink offers STARTTLS, answers it with 220 and then sends bytes
    // that are no TLS record: every handshake fails.
    let sink = TestSink::start("127.0.0.1:0".parse().unwrap());
    sink.set_behavior(Behavior {
        broken_starttls: true,
        ..Behavior::default()
    });

    let strict = relay(sink.addr(), "encrypt");
    let id = send_one(&strict, "strict");
    wait_until("encrypt tried twice", Duration::from_secs(20), || {
        sink.connections() >= 2
    });
    assert!(
        sink.messages().is_empty(),
        "encrypt fell back to clear text"
    );
    assert_eq!(strict.queue_ids(), vec![id], "deferred, not bounced");
    assert_eq!(fallbacks(&strict), 0);
    drop(strict);

    let before = sink.connections();
    let lenient = relay(sink.addr(), "may");
    send_one(&lenient, "lenient");
    let got = sink.wait_for(1, Duration::from_secs(20));
    assert_eq!(got[0].subject(), "lenient");
    assert_eq!(
        sink.connections() - before,
        2,
        "one connection whose handshake failed, one in clear text"
    );
    assert_eq!(fallbacks(&lenient), 1);
    // (Log lines reach stderr in batches.)
    wait_until("the fallback is logged", Duration::from_secs(5), || {
        lenient.stderr().contains("trying once in clear text")
    });
}
