//! Soak: many VM lifecycles (boot, run, teardown) of cheap cases in every mode, with the
//! process's open file descriptors and resident memory sampled: neither may grow. Its own
//! test binary, so that no other test opens fds meanwhile. 1,000 lifecycles by default (CI);
//! `HVPROBE_SOAK=10000 cargo test --release -p hvprobe-suites --test soak -- --nocapture` is
//! the full run.

use hvprobe_harness::{Kvm, RunOptions, Vm, VmConfig};
use hvprobe_suites::catalog::payload;

fn open_fds() -> usize {
    hvprobe_suites::process::open_fds().unwrap()
}

fn rss_kib() -> u64 {
    hvprobe_suites::process::rss_kib().unwrap()
}

#[test]
fn vm_lifecycles_leak_neither_fds_nor_memory() {
    let Ok(kvm) = Kvm::open() else {
        eprintln!("skipped: /dev/kvm is unusable");
        return;
    };
    let n: usize = match std::env::var("HVPROBE_SOAK") {
        Ok(v) => v.parse().ok().filter(|n| (1..=1_000_000).contains(n)).expect("HVPROBE_SOAK: 1 to 1000000"),
        Err(_) => 1000,
    };
    let payload = payload().unwrap();
    let cases: Vec<_> = ["cpu::boot::real16", "cpu::boot::prot32", "cpu::boot::long64", "cpu::boot::user64"]
        .iter()
        .map(|name| payload.test(name).unwrap())
        .collect();
    let lifecycle = |i: usize| {
        let mut vm = Vm::boot(&kvm, payload, cases[i % cases.len()], VmConfig::default()).unwrap();
        let report = vm.run(RunOptions::default()).unwrap();
        assert!(report.verdict.is_some(), "lifecycle {i}: {report:?}");
    };
    // Warm-up: allocator pools, the watchdog's signal handler, lazily opened files.
    (0..50).for_each(lifecycle);
    let (fds, rss) = (open_fds(), rss_kib());
    let started = std::time::Instant::now();
    let mut samples = Vec::new();
    for i in 0..n {
        lifecycle(i);
        if (i + 1) % (n / 10).max(1) == 0 {
            samples.push((i + 1, open_fds(), rss_kib()));
        }
    }
    eprintln!(
        "soak: {n} lifecycles in {:.1} s; fds {fds} before, samples (lifecycles, fds, RSS KiB): {samples:?}; RSS before {rss} KiB",
        started.elapsed().as_secs_f64()
    );
    for (i, f, r) in &samples {
        assert_eq!(*f, fds, "open fds after {i} lifecycles");
        assert!(*r <= rss + 16 * 1024, "RSS {r} KiB after {i} lifecycles, {rss} KiB before");
    }
}
