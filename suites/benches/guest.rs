//! `cargo bench`: hvprobe's benchmarks under criterion.
//!
//! Guest operations are measured with [`GuestCycles`], a criterion measurement in guest
//! TSC cycles: each criterion sample runs a batch of the operation in a VM kept running
//! for the whole benchmark, and a batch of the empty loop of the same size, and reports
//! the difference. Host operations are measured in wall time, each next to its
//! bare-ioctl floor (`.../hvprobe` and `.../floor`). criterion's own options work:
//! `cargo bench --bench guest -- --save-baseline main`, then `-- --baseline main`.
//!
//! With no usable /dev/kvm every benchmark is skipped with the reason.

use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput};
use hvprobe_harness::floor::BareVm;
use hvprobe_harness::{Kvm, RunEnd, RunOptions, Vm, VmConfig};
use hvprobe_suites::bench::Session;
use hvprobe_suites::catalog;

/// Guest TSC cycles, as the guest's fenced RDTSC counts them.
struct GuestCycles;

struct CyclesFormatter;

impl ValueFormatter for CyclesFormatter {
    fn scale_values(&self, _typical: f64, _values: &mut [f64]) -> &'static str {
        "cycles"
    }

    fn scale_throughputs(&self, _typical: f64, throughput: &Throughput, values: &mut [f64]) -> &'static str {
        // Elements per kilocycle: a rate that reads well for operations of 10^2-10^5 cycles.
        let per = match throughput {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) | Throughput::Bits(n) => {
                *n as f64
            }
            Throughput::ElementsAndBytes { elements, .. } => *elements as f64,
        };
        for v in values.iter_mut() {
            *v = per * 1000.0 / *v;
        }
        "elem/kcycle"
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "cycles"
    }
}

impl Measurement for GuestCycles {
    type Intermediate = ();
    type Value = u64;

    fn start(&self) {}

    /// Guest benchmarks report through `iter_custom`; a plain `iter` measures nothing.
    fn end(&self, _: ()) -> u64 {
        0
    }

    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }

    fn zero(&self) -> u64 {
        0
    }

    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &CyclesFormatter
    }
}

fn config<M: Measurement>(c: Criterion<M>) -> Criterion<M> {
    // CPL0 code is emulated on some hosts: short measurements, the minimum of samples.
    c.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1))
}

fn guest_benchmarks(c: &mut Criterion<GuestCycles>, kvm: &Kvm) {
    let payload = catalog::payload().expect("the embedded guest payload is valid");
    let mut group = c.benchmark_group("guest");
    for case in payload.benches.iter().filter(|b| b.name != "bench::exit_loop::long64") {
        if !criterion_filter_matches(&case.name) {
            continue;
        }
        let missing = kvm.missing_requirements(case.requires);
        if !missing.is_empty() {
            eprintln!("skip {}: host lacks {}", case.name, missing.join(", "));
            continue;
        }
        let session = match Session::start(case) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("skip {}: {e}", case.name);
                continue;
            }
        };
        // A probe batch: an operation that hangs on this host (see the backend's profile)
        // is reported and skipped, not measured.
        if let Err(e) = session.batch(1, false) {
            eprintln!("skip {}: {e}", case.name);
            continue;
        }
        let mut failed = None;
        group.bench_function(case.name.trim_start_matches("bench::"), |b| {
            b.iter_custom(|iters| {
                let run = session.batch(iters, false).and_then(|op| Ok((op, session.batch(iters, true)?)));
                match run {
                    Ok((op, base)) => op.saturating_sub(base),
                    Err(e) => {
                        failed.get_or_insert(e);
                        0
                    }
                }
            })
        });
        if let Some(e) = failed {
            eprintln!("{}: {e}", case.name);
        }
        session.finish();
    }
    group.finish();
}

/// Whether criterion would run a benchmark named like this case, so that filtered runs
/// boot only the VMs they need (criterion matches `guest/<name>` against its filter).
fn criterion_filter_matches(name: &str) -> bool {
    let id = format!("guest/{}", name.trim_start_matches("bench::"));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filters = Vec::new();
    let mut skip_next = false;
    for a in &args {
        if skip_next {
            skip_next = false;
        } else if a.starts_with("--") {
            // Options that take a value (criterion's --baseline, --save-baseline, ...).
            skip_next =
                !a.contains('=') && !matches!(a.as_str(), "--bench" | "--test" | "--list" | "--exact" | "--quick");
        } else {
            filters.push(a.as_str());
        }
    }
    filters.is_empty() || filters.iter().any(|f| id.contains(f))
}

fn host_benchmarks(c: &mut Criterion, kvm: &Kvm) {
    let payload = catalog::payload().expect("the embedded guest payload is valid");
    let case = payload.bench("bench::exit_loop::long64").expect("the exit loop is in the payload");
    let boot = || -> Vm {
        let mut vm = Vm::boot(kvm, payload, case, VmConfig::default()).expect("boot the exit loop");
        let r = vm.run(RunOptions { max_exits: Some(1), ..RunOptions::default() }).expect("run");
        assert!(matches!(r.end(), RunEnd::ExitLimit { .. }), "the exit loop stops at exits: {}", r.end().describe());
        vm
    };

    let mut g = c.benchmark_group("host/vm_create_to_first_exit");
    g.bench_function("hvprobe", |b| b.iter(boot));
    g.bench_function("floor", |b| b.iter(|| BareVm::create_to_first_exit(kvm).expect("bare VM").0));
    g.finish();

    let mut g = c.benchmark_group("host/kvm_run_roundtrip");
    let mut vm = boot();
    g.bench_function("hvprobe", |b| {
        b.iter_custom(|n| {
            let start = Instant::now();
            let r = vm.run(RunOptions { max_exits: Some(n), ..RunOptions::default() }).expect("run");
            assert!(matches!(r.end(), RunEnd::ExitLimit { .. }));
            start.elapsed()
        })
    });
    g.bench_function("floor", |b| b.iter_custom(|n| vm.bare_exits(n).expect("bare KVM_RUN loop")));
    g.finish();

    let mut g = c.benchmark_group("host/vcpu_state_save");
    g.bench_function("hvprobe", |b| b.iter(|| vm.save_vcpu(0).expect("save")));
    g.bench_function("floor", |b| b.iter_custom(|n| (0..n).map(|_| vm.bare_save(0).expect("save")).sum()));
    g.finish();
}

fn main() {
    let kvm = match Kvm::open() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("hvprobe benches skipped: {e}");
            return;
        }
    };
    let mut guest = config(Criterion::default().with_measurement(GuestCycles)).configure_from_args();
    guest_benchmarks(&mut guest, &kvm);
    let mut host = config(Criterion::default()).configure_from_args();
    host_benchmarks(&mut host, &kvm);
    guest.final_summary();
    host.final_summary();
}
