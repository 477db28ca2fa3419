//! Receiver session throughput (MB/s of wire bytes) on a realistic multi-frame
//! transmission: 20 messages of ~2.7 KB of records, 240-byte ETB frames, every commit
//! answered `true` after its pieces were walked (as a driver must), through the host's
//! link session (`Link`), as the agent runs it.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use labagent_hal::astm::frame::encode_frame;
use labagent_hal::astm::link::Link;
use labagent_hal::astm::{ENQ, EOT};
use labagent_hal::buf::VecBuf;
use labagent_hal::session::{End, Session};
use labagent_hal::time::Instant;

fn transmission() -> Vec<u8> {
    let mut wire = vec![ENQ];
    let mut fn_digit = 1u8;
    let mut out = vec![0u8; 256];
    for m in 0..20 {
        let mut recs = format!("H|\\^&|||BENCH^1.0|||||||P|LIS2-A2|20260101\rP|1||PID{m}||DOE^JANE\rO|1|S{m}||^^^GLU\\^^^NA\\^^^K\r").into_bytes();
        for i in 0..30 {
            recs.extend_from_slice(
                format!(
                    "R|{i}|^^^TEST{i}^1|{}.{}|mmol/L|3.5 to 5.5|N||F||||20260101120000\r",
                    i * 7,
                    i
                )
                .as_bytes(),
            );
        }
        recs.extend_from_slice(b"L|1|N\r");
        for rec in recs.split_inclusive(|&b| b == b'\r') {
            let chunks: Vec<&[u8]> = rec.chunks(240).collect();
            for (k, c) in chunks.iter().enumerate() {
                let n = encode_frame(fn_digit, c, k + 1 == chunks.len(), &mut out).unwrap();
                wire.extend_from_slice(&out[..n]);
                fn_digit = (fn_digit + 1) % 8;
            }
        }
    }
    wire.push(EOT);
    wire
}

fn bench(c: &mut Criterion) {
    let wire = transmission();
    let mut g = c.benchmark_group("astm_receiver");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("transmission", |b| {
        b.iter(|| {
            let mut r = Link::<VecBuf>::new(Default::default());
            let mut buf = [0u8; 256];
            let mut messages = 0;
            for chunk in wire.chunks(64) {
                let mut rest = chunk;
                while !rest.is_empty() {
                    let n = r.handle_input(rest, Instant::ZERO);
                    rest = &rest[n..];
                    if let Some(c) = r.poll_commit() {
                        for p in c {
                            criterion::black_box(p.text);
                            if matches!(p.end, Some(End::Complete(_))) {
                                messages += 1;
                            }
                        }
                        r.commit_done(true, Instant::ZERO);
                    }
                    while r.poll_event().is_some() {}
                    while r.poll_transmit(&mut buf).is_some() {}
                }
            }
            assert_eq!(messages, 20);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
