//! tern-smtp parsing throughput: command lines, DATA un-dot-stuffing (the
//! per-byte hot path of every received message) and the client's
//! dot-stuffing encoder. Throughput in bytes (criterion prints MB/s).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tern_smtp::data::{DataReceiver, Progress};

/// `size` bytes of mail text: 76-character lines, every 50th starting with
/// a dot; `stuffed`: as on the wire (dots doubled, `.CRLF` terminator).
fn wire_body(size: usize, stuffed: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 100);
    let mut n = 0u64;
    while out.len() < size {
        if n.is_multiple_of(50) {
            out.push(b'.');
            if stuffed {
                out.push(b'.');
            }
        }
        out.extend((0..74).map(|i| b'a' + ((n as usize + i) % 26) as u8));
        out.extend_from_slice(b"\r\n");
        n += 1;
    }
    if stuffed {
        out.extend_from_slice(b".\r\n");
    }
    out
}

fn data_receiver(c: &mut Criterion) {
    let mut g = c.benchmark_group("smtp_data_unstuff");
    for size in [4 << 10, 64 << 10, 1 << 20] {
        let wire = wire_body(size, true);
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &wire, |b, wire| {
            b.iter(|| {
                let mut r = DataReceiver::new(64 << 20, wire.len());
                let p = r.feed(black_box(wire));
                assert!(matches!(p, Progress::Done { .. }));
                black_box(r.into_body())
            })
        });
    }
    g.finish();
}

fn dot_stuffing(c: &mut Criterion) {
    let mut g = c.benchmark_group("smtp_dot_stuff");
    for size in [4 << 10, 1 << 20] {
        let body = wire_body(size, false);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            let mut out = Vec::with_capacity(body.len() * 2);
            b.iter(|| {
                out.clear();
                tern_smtp::client::dot_stuff(&mut out, black_box(body));
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn command_parse(c: &mut Criterion) {
    let lines: [&[u8]; 5] = [
        b"EHLO client.example.com",
        b"MAIL FROM:<sender.name@example.com> SIZE=4096 BODY=8BITMIME",
        b"RCPT TO:<recipient.name@example.net>",
        b"DATA",
        b"BDAT 4096 LAST",
    ];
    let bytes: usize = lines.iter().map(|l| l.len() + 2).sum();
    let mut g = c.benchmark_group("smtp_command_parse");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("ehlo_mail_rcpt_data_bdat", |b| {
        b.iter(|| {
            for line in lines {
                black_box(tern_smtp::command::parse(black_box(line)).unwrap());
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2));
    targets = data_receiver, dot_stuffing, command_parse
}
criterion_main!(benches);
