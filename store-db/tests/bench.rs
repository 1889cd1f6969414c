//! Micro-benchmark of registration: `cargo test --release -p guix-store-db --test bench -- --ignored --nocapture`.

mod common;

use std::time::Instant;

use common::{fresh, reg, sp};

#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn registration_rates() {
    const N: usize = 100_000;
    let paths: Vec<_> = (0..N).map(|i| sp(&format!("p{i}"))).collect();
    for batch in [1000usize, 10_000] {
        let t = tempfile::tempdir().unwrap();
        let mut s = fresh(t.path());
        let t0 = Instant::now();
        for (k, chunk) in paths.chunks(batch).enumerate() {
            // Each path refers to the previous one (a chain across batches).
            let regs: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let j = k * batch + i;
                    if j == 0 {
                        reg(p, &[])
                    } else {
                        reg(p, &[&paths[j - 1]])
                    }
                })
                .collect();
            s.writer.register_valid_paths(&regs).unwrap();
        }
        let dt = t0.elapsed();
        println!("batches of {batch}: {N} paths in {dt:?} = {:.0} paths/s", N as f64 / dt.as_secs_f64());
    }
    let n = 5_000;
    let t = tempfile::tempdir().unwrap();
    let mut s = fresh(t.path());
    let t0 = Instant::now();
    for p in paths.iter().take(n) {
        s.writer.register_valid_paths(&[reg(p, &[])]).unwrap();
    }
    let dt = t0.elapsed();
    println!("single-path transactions: {n} paths in {dt:?} = {:.0} paths/s", n as f64 / dt.as_secs_f64());
}
