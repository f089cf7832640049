//! Relay control against the real binary. Loopback is trusted by
//! default; these servers trust only 10.0.0.0/8 (configuration only: no
//! traffic goes there), so the loopback test client is a stranger.

use tern_tests::server::{Options, TernProcess};
use tern_tests::smtp::message;

#[test]
fn untrusted_client_may_only_send_to_listed_domains() {
    let tern = TernProcess::start(Options::with_config(
        r#"
[relay]
client_networks = ["10.0.0.0/8"]
recipient_domains = ["local.test"]
"#,
    ));
    let mut c = tern.ehlo();
    c.expect("MAIL FROM:<someone@elsewhere.test>", 250, "2.1.0");
    let denied = c.expect("RCPT TO:<x@foreign.test>", 554, "5.7.1");
    assert!(denied.text().contains("Relay access denied"), "{denied}");
    c.expect("RCPT TO:<x@sub.local.test>", 554, "5.7.1");
    c.expect("RCPT TO:<x@local.test.evil.test>", 554, "5.7.1");
    c.expect("RCPT TO:<\"x@local.test\"@foreign.test>", 554, "5.7.1");
    c.expect("RCPT TO:<x@local.test>", 250, "2.1.5");
    c.expect("RCPT TO:<y@LOCAL.Test>", 250, "2.1.5");
    // RFC 5321 4.5.1: the bare Postmaster is always accepted.
    c.expect("RCPT TO:<Postmaster>", 250, "2.1.5");
    c.cmd("DATA").assert(354, None);
    let content = message("relay", &["x"]);
    c.send(&tern_tests::smtp::dot_stuff(&content));
    let id = c.reply().queue_id();
    // A transaction with only denied recipients cannot send data.
    c.expect("MAIL FROM:<someone@elsewhere.test>", 250, "2.1.0");
    c.expect("RCPT TO:<x@foreign.test>", 554, "5.7.1");
    c.expect("DATA", 503, "5.5.1");
    c.quit();
    let list = tern.queue_list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, id);
    assert_eq!(
        list[0].recipients,
        vec!["x@local.test", "y@LOCAL.Test", "Postmaster"],
        "only the accepted recipients are in the envelope"
    );
    assert_eq!(tern.queue_show(&id).content(), &content[..]);
}

#[test]
fn untrusted_client_without_recipient_domains_is_denied_everything() {
    let tern = TernProcess::start(Options::with_config(
        "[relay]\nclient_networks = [\"10.0.0.0/8\"]\n",
    ));
    let mut c = tern.ehlo();
    c.expect("MAIL FROM:<someone@elsewhere.test>", 250, "2.1.0");
    c.expect("RCPT TO:<x@foreign.test>", 554, "5.7.1");
    c.expect("RCPT TO:<x@local.test>", 554, "5.7.1");
    c.expect("RCPT TO:<postmaster@local.test>", 554, "5.7.1");
    c.quit();
    assert!(tern.queue_list().is_empty());
}

#[test]
fn loopback_is_trusted_by_default() {
    let tern = TernProcess::start(Options::default());
    let mut c = tern.ehlo();
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<x@foreign.test>", 250, "2.1.5");
    c.expect("RSET", 250, "2.0.0");
    c.quit();
}

/// A node whose smarthost is itself (a mail loop): the message goes round
/// until it carries `smtp.hops_max` Received headers, is then refused
/// (554 5.4.6) and bounced; the bounce (null sender) loops the same way
/// and is dropped. Nothing loops for ever, and the loop is not taken for
/// a duplicate.
#[test]
fn a_mail_loop_ends_at_the_hop_limit() {
    let port = tern_tests::server::PortReservation::new();
    let me = port.addr();
    let tern = tern_tests::server::TernProcess::start_on(
        tern_tests::server::Options::with_config(&format!(
            "[server]\nrelay_to = \"{me}\"\n[smtp]\nhops_max = 5\n[delivery]\nretry_initial = \"1s\"\n"
        )),
        port,
    );
    let mut c = tern.ehlo();
    c.send_message(
        "s@example.org",
        &["r@example.com"],
        &tern_tests::smtp::message("loop", &["x"]),
    );
    c.quit();
    tern_tests::server::wait_until(
        "the loop to end",
        std::time::Duration::from_secs(30),
        || tern.counter("tern_bounced_recipients_total") >= 2 && tern.queue_ids().is_empty(),
    );
    // The first message: 5 hops; its bounce: another 5.
    assert!(tern.counter("tern_messages_accepted_total") <= 12);
    tern_tests::server::wait_until(
        "the refusal to be logged",
        std::time::Duration::from_secs(5),
        || tern.stderr().contains("too many Received headers"),
    );
}
