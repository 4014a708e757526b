//! Benchmarks: what each guest operation costs, in guest TSC cycles and host
//! nanoseconds, and what each host operation costs next to its bare-ioctl floor.
//!
//! A guest benchmark (`bench::*` in the payload) runs batches as this driver asks over
//! the services BENCH_NEXT and BENCH_RESULT. The driver sizes the batch by a time budget
//! (CPL0 code may be emulated, so a fixed count would take seconds on one host and
//! microseconds on another), runs warm-up batches it throws away, then alternates
//! operation and empty-loop batches, so each sample has a baseline measured moments
//! apart. A sample is the operation's per-iteration cost minus its baseline's; the
//! figure is the median of the samples and its spread their median absolute deviation.
//!
//! A host benchmark times a harness operation and, interleaved with it in the same run,
//! the same operation done with bare ioctls (`hvprobe_harness::floor`); the ratio of the
//! two medians is what hvprobe's own work costs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hvprobe_abi::proto::{BENCH_BASELINE, BENCH_UNROLL, service};
use hvprobe_harness::floor::BareVm;
use hvprobe_harness::{Error, RunEnd, RunOptions, RunReport, ServiceError, TestCase, VerdictStatus, Vm, VmConfig};
use hvprobe_results::{Benchmark, Outcome};

use crate::runner::Context;

/// How hard to measure.
#[derive(Clone, Copy, Debug)]
pub struct BenchConfig {
    /// The wall time one batch should take.
    pub budget: Duration,
    /// Samples per benchmark (each an operation batch and a baseline batch). At least 10.
    pub samples: usize,
    /// Warm-up pairs thrown away before the samples.
    pub warmup: usize,
    /// Past `samples`, keep sampling until the 95% confidence interval of the median
    /// (of the operation's cycles) is within this fraction of the median on either side...
    pub precision: f64,
    /// ...or this many samples are taken, which bounds a benchmark's time.
    pub max_samples: usize,
    /// The CPU to pin each guest benchmark's vCPU thread to (`run_all` picks the one it
    /// starts on), so that no batch pays for a migration.
    pub pin_cpu: Option<usize>,
}

impl BenchConfig {
    pub const MIN_SAMPLES: usize = 10;

    /// `hvprobe bench`'s default: 10 ms batches, 15 samples, more (up to 30) until the
    /// median is known within 2%.
    pub fn standard() -> BenchConfig {
        BenchConfig {
            budget: Duration::from_millis(10),
            samples: 15,
            warmup: 2,
            precision: 0.02,
            max_samples: 30,
            pin_cpu: None,
        }
    }

    /// For smoke tests: 2 ms batches, the minimum of samples.
    pub fn quick() -> BenchConfig {
        BenchConfig {
            budget: Duration::from_millis(2),
            samples: Self::MIN_SAMPLES,
            warmup: 1,
            precision: f64::INFINITY,
            max_samples: Self::MIN_SAMPLES,
            pin_cpu: None,
        }
    }

    fn min_samples(&self) -> usize {
        self.samples.max(Self::MIN_SAMPLES)
    }

    /// Is the 95% interval of the median of `xs` within `precision` of it on either side?
    fn settled(&self, xs: &[f64]) -> bool {
        let median = summarize(xs).median;
        let margin = self.precision * median.abs().max(1.0);
        median_interval(xs).is_some_and(|(lo, hi)| median - lo <= margin && hi - median <= margin)
    }
}

/// Median and median absolute deviation, with the samples they summarize (`compare`
/// tests a change over the samples, not over two medians).
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub mad: f64,
    pub values: Vec<f64>,
}

impl Summary {
    /// How many samples it summarizes.
    pub fn n(&self) -> usize {
        self.values.len()
    }
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// The distribution-free 95% confidence interval of the median of `xs`: the order
/// statistics k and n-1-k (0-based) with k = floor((n - 1.96 sqrt(n)) / 2), which hold
/// the median with probability of at least 95% whatever the distribution (the binomial
/// argument, normal approximation). None under 6 samples, where no such pair exists.
pub fn median_interval(xs: &[f64]) -> Option<(f64, f64)> {
    let n = xs.len();
    let k = ((n as f64 - 1.96 * (n as f64).sqrt()) / 2.0).floor();
    if k < 0.0 || n < 6 {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let k = k as usize;
    Some((v[k], v[n - 1 - k]))
}

/// The median and the (unscaled) median absolute deviation of `xs`.
pub fn summarize(xs: &[f64]) -> Summary {
    let mut v = xs.to_vec();
    let m = median(&mut v);
    let mut dev: Vec<f64> = xs.iter().map(|x| (x - m).abs()).collect();
    Summary { median: m, mad: median(&mut dev), values: xs.to_vec() }
}

/// The largest batch the driver asks for (bit 63 of BENCH_NEXT is the baseline flag).
const MAX_ITERATIONS: u64 = 1 << 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Calibrate,
    Warmup(usize),
    Sample(usize),
    Done,
}

/// The driver's state, shared with the service handler that runs inside the run loop.
#[derive(Debug)]
pub struct Driver {
    cfg: BenchConfig,
    phase: Phase,
    /// Iterations per batch.
    n: u64,
    /// The batch the guest is running: baseline or not, when it was handed out, and what
    /// had disturbed the vCPU thread by then.
    pending: Option<(bool, Instant, Disturbance)>,
    /// Batches thrown away and run again because the vCPU thread lost its CPU during
    /// them (another process's time, or the hypervisor's under this machine, is not the
    /// operation's): how many for a preemption, how many for steal.
    pub redone: Redone,
    /// Per-iteration figures of each sample's two batches.
    op_cycles: Vec<f64>,
    base_cycles: Vec<f64>,
    op_ns: Vec<f64>,
    base_ns: Vec<f64>,
    /// Every iteration of the operation the guest ran, calibration included.
    pub op_iterations: u64,
    pub error: Option<String>,
}

impl Driver {
    pub fn new(cfg: BenchConfig) -> Driver {
        Driver {
            cfg,
            phase: Phase::Calibrate,
            n: BENCH_UNROLL,
            pending: None,
            redone: Redone::default(),
            op_cycles: Vec::new(),
            base_cycles: Vec::new(),
            op_ns: Vec::new(),
            base_ns: Vec::new(),
            op_iterations: 0,
            error: None,
        }
    }

    /// The next batch, as BENCH_NEXT returns it: 0 when done. In the sampling phase the
    /// operation batch comes first, then its baseline. `seen` is what had disturbed the
    /// vCPU thread so far ([`Disturbance::now`]).
    pub fn next(&mut self, now: Instant, seen: Disturbance) -> u64 {
        let baseline = match self.phase {
            Phase::Done => return 0,
            Phase::Calibrate => false,
            Phase::Warmup(_) | Phase::Sample(_) => self.op_cycles.len() > self.base_cycles.len(),
        };
        self.pending = Some((baseline, now, seen));
        if !baseline {
            self.op_iterations += self.n;
        }
        self.n | if baseline { BENCH_BASELINE } else { 0 }
    }

    /// The guest ran `n` iterations in `cycles`; `now` is when its report arrived and
    /// `seen` what had disturbed the vCPU thread by then. A warm-up or sample batch during
    /// which the thread was preempted, or its CPU stolen by the hypervisor below, is
    /// thrown away and handed out again (up to `max_samples` times per benchmark, after
    /// which they count: a host that disturbs every batch still gets figures, with their
    /// spread). An error is also kept in `error`, for the report.
    pub fn result(&mut self, cycles: u64, n: u64, now: Instant, seen: Disturbance) -> Result<(), String> {
        let r = self.take_result(cycles, n, now, seen);
        if let Err(e) = &r {
            self.error.get_or_insert_with(|| e.clone());
        }
        r
    }

    fn take_result(&mut self, cycles: u64, n: u64, now: Instant, seen: Disturbance) -> Result<(), String> {
        let Some((baseline, sent, before)) = self.pending.take() else {
            return Err("BENCH_RESULT without a batch handed out".into());
        };
        if n != self.n {
            return Err(format!("the guest ran {n} iterations, not the {} asked for", self.n));
        }
        let measuring = matches!(self.phase, Phase::Warmup(_) | Phase::Sample(_));
        let cap = self.cfg.max_samples.max(self.cfg.min_samples()) as u64;
        if measuring && seen != before && self.redone.total() < cap {
            // The same kind of batch is handed out next: the alternation follows the counts.
            if seen.switches != before.switches {
                self.redone.preempted += 1;
            } else {
                self.redone.stolen += 1;
            }
            return Ok(());
        }
        let ns = now.duration_since(sent).as_nanos() as f64;
        match self.phase {
            Phase::Calibrate => {
                let budget = self.cfg.budget.as_nanos() as f64;
                if ns >= budget / 2.0 || self.n >= MAX_ITERATIONS {
                    self.phase = if self.cfg.warmup > 0 { Phase::Warmup(0) } else { Phase::Sample(0) };
                } else {
                    let scale = (budget / ns.max(1.0)).clamp(2.0, 100.0);
                    // A whole number of the guest loop's unrolled turns.
                    self.n = ((self.n as f64 * scale) as u64).next_multiple_of(BENCH_UNROLL).min(MAX_ITERATIONS);
                }
            }
            Phase::Warmup(i) => {
                // The warm-up alternates too; its figures are dropped at the end of a pair.
                self.push(baseline, cycles, ns);
                if baseline {
                    self.clear();
                    self.phase = if i + 1 >= self.cfg.warmup { Phase::Sample(0) } else { Phase::Warmup(i + 1) };
                }
            }
            Phase::Sample(i) => {
                self.push(baseline, cycles, ns);
                let taken = i + 1;
                if baseline
                    && taken >= self.cfg.min_samples()
                    && (taken >= self.cfg.max_samples || self.precise_enough())
                {
                    self.phase = Phase::Done;
                } else if baseline {
                    self.phase = Phase::Sample(i + 1);
                }
            }
            Phase::Done => return Err("BENCH_RESULT after the driver said stop".into()),
        }
        Ok(())
    }

    fn push(&mut self, baseline: bool, cycles: u64, ns: f64) {
        let per = |x: f64| x / self.n as f64;
        let (c, t) = (per(cycles as f64), per(ns));
        if baseline {
            self.base_cycles.push(c);
            self.base_ns.push(t);
        } else {
            self.op_cycles.push(c);
            self.op_ns.push(t);
        }
    }

    /// Is the operation's median (in cycles, baseline subtracted) known well enough?
    fn precise_enough(&self) -> bool {
        let [(cycles, _), _] = self.figures();
        self.cfg.settled(&cycles.values)
    }

    fn clear(&mut self) {
        self.op_cycles.clear();
        self.base_cycles.clear();
        self.op_ns.clear();
        self.base_ns.clear();
    }

    pub fn done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// (operation minus baseline, baseline) per iteration, in cycles and in ns.
    pub fn figures(&self) -> [(Summary, Summary); 2] {
        let diff = |op: &[f64], base: &[f64]| -> Vec<f64> { op.iter().zip(base).map(|(o, b)| o - b).collect() };
        [
            (summarize(&diff(&self.op_cycles, &self.base_cycles)), summarize(&self.base_cycles)),
            (summarize(&diff(&self.op_ns, &self.base_ns)), summarize(&self.base_ns)),
        ]
    }
}

/// Why a benchmark has no figure.
#[derive(Clone, Debug, PartialEq)]
pub enum Missing {
    /// The host lacks what it needs, or the guest skipped.
    Skip(String),
    /// It failed: its outcome as the judge sees it (a known deviation is xfail) and why.
    Failed(Outcome, String),
}

/// One benchmark's figures.
#[derive(Clone, Debug)]
pub struct BenchResult {
    pub name: String,
    /// full, para or hw for guest operations; "host" for host operations.
    pub path: String,
    pub missing: Option<Missing>,
    /// Cycles per iteration (guest operations), baseline subtracted.
    pub cycles: Option<(Summary, Summary)>,
    /// Host nanoseconds per iteration, baseline subtracted (guest operations) or
    /// per operation (host operations).
    pub ns: Option<(Summary, Summary)>,
    /// The floor of a host operation, ns per operation.
    pub floor: Option<Summary>,
    pub iterations: u64,
    /// What the run checked beyond timing (for example, that an ioeventfd fired once per
    /// write).
    pub checks: Vec<String>,
    /// Batches run again because the host disturbed them (guest benchmarks).
    pub redone: Redone,
}

impl BenchResult {
    fn new(name: &str, path: &str) -> BenchResult {
        BenchResult {
            name: name.into(),
            path: path.into(),
            missing: None,
            cycles: None,
            ns: None,
            floor: None,
            iterations: 0,
            checks: Vec::new(),
            redone: Redone::default(),
        }
    }

    fn failed(mut self, outcome: Outcome, why: String) -> BenchResult {
        self.missing = Some(Missing::Failed(outcome, why));
        self
    }

    /// The floor ratio of a host operation: hvprobe's median over the floor's.
    pub fn floor_ratio(&self) -> Option<f64> {
        Some(self.ns.as_ref()?.0.median / self.floor.as_ref()?.median)
    }

    /// The results-file records: one per unit.
    pub fn records(&self) -> Vec<Benchmark> {
        let path = (self.path != "host").then(|| self.path.clone());
        let mut out = Vec::new();
        for (unit, fig) in [("cycles", &self.cycles), ("ns", &self.ns)] {
            let Some((op, base)) = fig else { continue };
            let mut b = Benchmark::new(&self.name, unit, op.median, op.mad, op.n() as u64);
            b.sample_values = op.values.clone();
            b.median_interval = median_interval(&op.values).map(|(lo, hi)| [lo, hi]);
            b.path = path.clone();
            b.iterations = Some(self.iterations);
            b.notes = self.checks.clone();
            if path.is_some() {
                b.baseline = Some(base.median);
            }
            if unit == "ns" {
                b.floor = self.floor.as_ref().map(|f| f.median);
                b.floor_ratio = self.floor_ratio();
            }
            out.push(b);
        }
        out
    }
}

/// What can take the vCPU thread's CPU away during a batch, as counters read around it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Disturbance {
    /// The calling thread's involuntary context switches (another task ran on its CPU).
    pub switches: u64,
    /// Steal ticks of its CPU (the hypervisor under this machine ran something else).
    pub steal: u64,
}

impl Disturbance {
    /// The counters now, read by the run loop's thread (the vCPU's) around each batch;
    /// `cpu` is the CPU it is pinned to (None: the whole machine's steal). A counter that
    /// cannot be read stays 0, and so never calls for a batch to be run again.
    pub fn now(cpu: Option<usize>) -> Disturbance {
        Disturbance {
            switches: crate::process::involuntary_switches(libc::RUSAGE_THREAD),
            steal: crate::process::steal_ticks(cpu).unwrap_or(0),
        }
    }
}

/// Batches run again, by what disturbed them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Redone {
    pub preempted: u64,
    pub stolen: u64,
}

impl Redone {
    pub fn total(&self) -> u64 {
        self.preempted + self.stolen
    }
}

/// Which ioeventfd (harness::vm::IOEVENTS) a benchmark writes.
fn ioevent_of(name: &str) -> Option<&'static str> {
    let op = name.split("::").nth(1)?;
    op.strip_prefix("ioeventfd_")
        .and_then(|which| hvprobe_harness::IOEVENTS.iter().find(|(n, ..)| *n == which).map(|(n, ..)| *n))
}

/// The watchdog limit of a benchmark run: the case's own limit (a hang should cost little)
/// plus what the batches take, three times over.
fn limit(ctx: &Context, case: &TestCase, cfg: &BenchConfig) -> Duration {
    let batches = 2 * (cfg.min_samples().max(cfg.max_samples) + cfg.warmup) as u32 + 40;
    case.timeout.unwrap_or(ctx.default_timeout) + cfg.budget * batches * 3
}

/// Runs one guest benchmark in a fresh VM.
pub fn run_guest(ctx: &Context, case: &TestCase, cfg: &BenchConfig) -> BenchResult {
    let mut r = BenchResult::new(&case.name, case.path.name());
    let missing = ctx.kvm.missing_requirements(case.requires);
    if !missing.is_empty() {
        r.missing = Some(Missing::Skip(format!("host lacks {}", missing.join(", "))));
        return r;
    }
    let driver = Arc::new(Mutex::new(Driver::new(*cfg)));
    let d = Arc::clone(&driver);
    let cpu = cfg.pin_cpu;
    let handler = Box::new(move |id: u32, args: [u64; 4]| {
        // The counters are read outside the timed span: before the clock when a batch is
        // handed out, after it when its result comes back.
        match id {
            service::BENCH_NEXT => {
                let seen = Disturbance::now(cpu);
                let now = Instant::now();
                Some(Ok(d.lock().unwrap_or_else(|e| e.into_inner()).next(now, seen)))
            }
            service::BENCH_RESULT => {
                let now = Instant::now();
                let seen = Disturbance::now(cpu);
                let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
                Some(d.result(args[0], args[1], now, seen).map(|()| 0).map_err(ServiceError::Refused))
            }
            _ => None,
        }
    });
    let options = RunOptions {
        timeout: limit(ctx, case, cfg),
        services: Some(handler),
        pin_cpu: cfg.pin_cpu,
        ..RunOptions::default()
    };
    let payload = crate::catalog::payload().expect("callers list benchmarks from the parsed payload");
    let run = Vm::boot(&ctx.kvm, payload, case, crate::runner::vm_config(case, None))
        .and_then(|mut vm| vm.run(options).map(|report| (report, vm.ioevent_counts())));
    let (report, counts) = match run {
        Ok(x) => x,
        Err(e) => return r.failed(Outcome::Error, format!("harness error: {e}")),
    };
    let d = driver.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = &d.error {
        return r.failed(Outcome::Fail, format!("benchmark protocol: {e}"));
    }
    match (&report.end(), report.verdict.as_ref().map(|v| v.status)) {
        (RunEnd::Verdict, Some(VerdictStatus::Pass)) if d.done() => {}
        (RunEnd::Verdict, Some(VerdictStatus::Skip)) => {
            let why = report.verdict.as_ref().map_or(String::new(), |v| v.message.clone());
            r.missing = Some(Missing::Skip(why));
            return r;
        }
        _ => return judged(r, ctx, case, &report),
    }
    if let Some(which) = ioevent_of(&case.name) {
        let fired = counts.iter().find(|(n, _)| *n == which).map_or(0, |(_, c)| *c);
        if fired != d.op_iterations {
            return r.failed(
                Outcome::Fail,
                format!("ioeventfd {which} fired {fired} times for {} writes", d.op_iterations),
            );
        }
        r.checks.push(format!("ioeventfd {which} fired once for each of {} writes", d.op_iterations));
    }
    r.redone = d.redone;
    if d.redone.preempted > 0 {
        r.checks.push(format!("{} batches run again: the vCPU thread was preempted during them", d.redone.preempted));
    }
    if d.redone.stolen > 0 {
        r.checks.push(format!(
            "{} batches run again: the hypervisor under this machine stole the vCPU thread's CPU during them",
            d.redone.stolen
        ));
    }
    let [cycles, ns] = d.figures();
    r.cycles = Some(cycles);
    r.ns = Some(ns);
    r.iterations = d.n;
    r
}

/// A benchmark run that ended without figures, judged as its conformance twin would be:
/// a failure the backend's profile lists is xfail.
fn judged(r: BenchResult, ctx: &Context, case: &TestCase, report: &RunReport) -> BenchResult {
    let j = crate::judge::judge(case, report, &ctx.profile);
    let why = j.reason.unwrap_or_else(|| report.end().describe());
    let outcome = if j.outcome == Outcome::Pass { Outcome::Fail } else { j.outcome };
    r.failed(outcome, why)
}

/// Times `op` in batches sized by the budget, interleaved with `floor` batches of the same
/// size: (operation, floor) in ns per operation, and the batch size.
fn paired(
    cfg: &BenchConfig,
    mut op: impl FnMut(u64) -> Result<Duration, Error>,
    mut floor: impl FnMut(u64) -> Result<Duration, Error>,
) -> Result<(Summary, Summary, u64), Error> {
    let mut n = 1u64;
    loop {
        let t = op(n)?;
        if t >= cfg.budget / 2 || n >= 1 << 20 {
            break;
        }
        n *= (cfg.budget.as_secs_f64() / t.as_secs_f64().max(1e-9)).clamp(2.0, 100.0) as u64;
    }
    for _ in 0..cfg.warmup {
        op(n)?;
        floor(n)?;
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    while a.len() < cfg.min_samples() || (a.len() < cfg.max_samples && !(cfg.settled(&a) && cfg.settled(&b))) {
        a.push(op(n)?.as_nanos() as f64 / n as f64);
        b.push(floor(n)?.as_nanos() as f64 / n as f64);
    }
    Ok((summarize(&a), summarize(&b), n))
}

/// The host operations, each with its floor: VM creation to the first exit, VM
/// teardown, one KVM_RUN round trip through the run loop, vCPU state save and restore.
pub fn run_host(ctx: &Context, cfg: &BenchConfig) -> Vec<BenchResult> {
    let payload = crate::catalog::payload().expect("callers list benchmarks from the parsed payload");
    let Some(case) = payload.bench("bench::exit_loop::long64") else {
        return vec![
            BenchResult::new("host::all", "host").failed(Outcome::Error, "bench::exit_loop::long64 is missing".into()),
        ];
    };
    let mut out = Vec::new();
    // A VM creation takes most of a millisecond: host batches are twice the budget, so a
    // sample holds enough operations for its median to settle.
    let cfg = &BenchConfig { budget: cfg.budget * 2, ..*cfg };
    // Each operation and its floor on one CPU, as the guest benchmarks' vCPUs are.
    let _pin = cfg.pin_cpu.and_then(|cpu| hvprobe_harness::affinity::Pinned::to(cpu).ok());
    let boot = |irqchip: bool| -> Result<Vm, Error> {
        let mut vm = Vm::boot(&ctx.kvm, payload, case, VmConfig { irqchip, ..VmConfig::default() })?;
        first_exit(&mut vm)?;
        Ok(vm)
    };

    // Create to first exit, and destroy: each sample creates n VMs, then drops them.
    let mut create = BenchResult::new("host::vm_create_to_first_exit", "host");
    let mut destroy = BenchResult::new("host::vm_destroy", "host");
    let mut ours: Vec<Vm> = Vec::new();
    let mut bare: Vec<BareVm> = Vec::new();
    let (mut destroy_ours, mut destroy_bare) = (Vec::new(), Vec::new());
    let created = paired(
        cfg,
        |n| {
            let start = Instant::now();
            for _ in 0..n {
                ours.push(boot(false)?);
            }
            let t = start.elapsed();
            let start = Instant::now();
            ours.clear();
            destroy_ours.push(start.elapsed().as_nanos() as f64 / n as f64);
            Ok(t)
        },
        |n| {
            let mut t = Duration::ZERO;
            for _ in 0..n {
                let (vm, took) = BareVm::create_to_first_exit(&ctx.kvm)?;
                t += took;
                bare.push(vm);
            }
            let start = Instant::now();
            bare.clear();
            destroy_bare.push(start.elapsed().as_nanos() as f64 / n as f64);
            Ok(t)
        },
    );
    match created {
        Ok((a, b, n)) => {
            // The calibration and warm-up destroyed VMs too; keep the samples only.
            let k = a.n();
            create.ns = Some((a.clone(), a));
            create.floor = Some(b);
            create.iterations = n;
            let keep = |v: &Vec<f64>| v[v.len().saturating_sub(k)..].to_vec();
            let (d, f) = (summarize(&keep(&destroy_ours)), summarize(&keep(&destroy_bare)));
            destroy.ns = Some((d.clone(), d));
            destroy.floor = Some(f);
            destroy.iterations = n;
            out.push(create);
            out.push(destroy);
        }
        Err(e) => {
            out.push(create.failed(Outcome::Error, e.to_string()));
            out.push(destroy.failed(Outcome::Error, "not measured: VM creation failed".into()));
        }
    }

    // One KVM_RUN round trip: the guest writes a port in a loop; hvprobe's run loop and a
    // bare KVM_RUN loop take turns on the same vCPU.
    let mut roundtrip = BenchResult::new("host::kvm_run_roundtrip", "host");
    let measured = boot(false).and_then(|mut vm| {
        let vm = std::cell::RefCell::new(&mut vm);
        paired(
            cfg,
            |n| {
                let start = Instant::now();
                let report = vm.borrow_mut().run(RunOptions { max_exits: Some(n), ..RunOptions::default() })?;
                let t = start.elapsed();
                match report.end() {
                    RunEnd::ExitLimit { .. } => Ok(t),
                    other => Err(Error::Floor(format!("exit loop ended: {}", other.describe()))),
                }
            },
            |n| vm.borrow_mut().bare_exits(n),
        )
    });
    match measured {
        Ok((a, b, n)) => {
            roundtrip.ns = Some((a.clone(), a));
            roundtrip.floor = Some(b);
            roundtrip.iterations = n;
            roundtrip.checks.push("both loops stop at the guest's port writes and nothing else".into());
            out.push(roundtrip);
        }
        Err(e) => out.push(roundtrip.failed(Outcome::Error, e.to_string())),
    }

    // vCPU state save and restore, with the in-kernel LAPIC, on a vCPU stopped at an exit.
    let mut save = BenchResult::new("host::vcpu_state_save", "host");
    let mut restore = BenchResult::new("host::vcpu_state_restore", "host");
    let measured = boot(true).and_then(|mut vm| {
        let state = vm.save_vcpu(0)?;
        let saved = paired(
            cfg,
            |n| {
                let start = Instant::now();
                for _ in 0..n {
                    vm.save_vcpu(0)?;
                }
                Ok(start.elapsed())
            },
            |n| total(n, || vm.bare_save(0)),
        )?;
        let restored = paired(
            cfg,
            |n| {
                let start = Instant::now();
                for _ in 0..n {
                    vm.restore_vcpu(0, &state)?;
                }
                Ok(start.elapsed())
            },
            |n| total(n, || vm.bare_restore(0, &state)),
        )?;
        // The restored vCPU must carry on where it was: in the port-write loop.
        first_exit(&mut vm)?;
        Ok((saved, restored, state.msrs.len()))
    });
    match measured {
        Ok(((a, b, n), (c, d, m), msrs)) => {
            save.ns = Some((a.clone(), a));
            save.floor = Some(b);
            save.iterations = n;
            save.checks.push(format!("{msrs} MSRs, LAPIC, XSAVE where offered, events, MP state, debug registers"));
            restore.ns = Some((c.clone(), c));
            restore.floor = Some(d);
            restore.iterations = m;
            restore.checks.push("the restored vCPU resumes its loop".into());
            out.push(save);
            out.push(restore);
        }
        Err(e) => {
            out.push(save.failed(Outcome::Error, e.to_string()));
            out.push(restore.failed(Outcome::Error, "not measured: save failed".into()));
        }
    }
    out
}

/// The host benchmarks `run_host` measures, by name.
pub const HOST_BENCHES: [&str; 5] = [
    "host::vm_create_to_first_exit",
    "host::vm_destroy",
    "host::kvm_run_roundtrip",
    "host::vcpu_state_save",
    "host::vcpu_state_restore",
];

/// The guest benchmarks that pass the filters, and whether any host benchmark does (they
/// are measured together).
/// The guest benchmarks and the names of the host benchmarks that pass the filters.
pub fn select<'a>(
    payload: &'a hvprobe_harness::Payload,
    filters: &[String],
    exact: bool,
) -> (Vec<&'a TestCase>, Vec<&'static str>) {
    let guest = payload
        .benches
        .iter()
        .filter(|b| b.name != "bench::exit_loop::long64" && crate::catalog::matches(&b.name, filters, exact))
        .collect();
    (guest, HOST_BENCHES.iter().copied().filter(|h| crate::catalog::matches(h, filters, exact)).collect())
}

/// Runs the benchmarks one at a time (two at once would measure each other), calling
/// `progress` after each.
pub fn run_all(
    ctx: &Context,
    guest: &[&TestCase],
    host: &[&str],
    cfg: &BenchConfig,
    mut progress: impl FnMut(&BenchResult),
) -> Vec<BenchResult> {
    let mut out = Vec::new();
    let cfg = &BenchConfig { pin_cpu: cfg.pin_cpu.or_else(hvprobe_harness::affinity::current_cpu), ..*cfg };
    for case in guest {
        let r = run_guest(ctx, case, cfg);
        progress(&r);
        out.push(r);
    }
    if !host.is_empty() {
        // Host operations are measured in pairs (create and destroy, save and restore);
        // only the selected ones are reported.
        for r in run_host(ctx, cfg).into_iter().filter(|r| host.contains(&r.name.as_str())) {
            progress(&r);
            out.push(r);
        }
    }
    out
}

/// How steady the figures are: of the guest figures (cycles and ns of each guest
/// benchmark), how many have a spread (MAD) under 5% and under 10% of their median.
pub fn steadiness(results: &[BenchResult]) -> Option<String> {
    let rel: Vec<f64> = results
        .iter()
        .filter(|r| r.path != "host")
        .flat_map(|r| [&r.cycles, &r.ns])
        .filter_map(|f| f.as_ref().map(|(op, _)| op.mad / op.median.abs().max(f64::MIN_POSITIVE)))
        .collect();
    if rel.is_empty() {
        return None;
    }
    let under = |x: f64| rel.iter().filter(|r| **r < x).count();
    let pct = |k: usize| 100.0 * k as f64 / rel.len() as f64;
    let redone = results.iter().fold(Redone::default(), |a, r| Redone {
        preempted: a.preempted + r.redone.preempted,
        stolen: a.stolen + r.redone.stolen,
    });
    Some(format!(
        "steadiness: {} of {} guest figures have MAD/median under 5% ({:.0}%), {} under 10% ({:.0}%); \
         {} batches run again ({} preempted, {} with steal)",
        under(0.05),
        rel.len(),
        pct(under(0.05)),
        under(0.10),
        pct(under(0.10)),
        redone.total(),
        redone.preempted,
        redone.stolen
    ))
}

/// Is this a failure the run should exit 1 for? Skips and known deviations are not.
pub fn is_failure(r: &BenchResult) -> bool {
    matches!(&r.missing, Some(Missing::Failed(o, _)) if *o != Outcome::Xfail)
}

/// One line per benchmark: the figures, or why there are none.
pub fn line(r: &BenchResult) -> String {
    let fig = |s: &Summary| format!("{:>9.1} ±{:<7.1}", s.median, s.mad);
    let head = format!("{:<40} {:<4}", r.name, r.path);
    let text = match (&r.missing, &r.cycles, &r.ns) {
        (Some(Missing::Skip(why)), ..) => format!("{head} skip: {why}"),
        (Some(Missing::Failed(o, why)), ..) => format!("{head} {}: {why}", o.name()),
        (None, Some((c, base)), Some((ns, _))) => {
            format!(
                "{head} {} cycles {} ns  (baseline {:.1} cycles, {} samples of {} iterations)",
                fig(c),
                fig(ns),
                base.median,
                c.n(),
                r.iterations
            )
        }
        (None, None, Some((ns, _))) => match (&r.floor, r.floor_ratio()) {
            (Some(f), Some(ratio)) => format!(
                "{head} {} ns   floor {:.1} ns, ratio {ratio:.2}  ({} per sample)",
                fig(ns),
                f.median,
                r.iterations
            ),
            _ => format!("{head} {} ns", fig(ns)),
        },
        _ => format!("{head} no figures"),
    };
    // What the run checked beside the timing, one indented line each.
    r.checks.iter().fold(text, |text, c| format!("{text}\n{:<45}{c}", ""))
}

/// A guest benchmark kept running in its own VM on its own thread, running batches on
/// demand: how criterion drives a guest operation (`suites/benches/guest.rs`), where the
/// caller, not [`Driver`], picks the iteration counts.
pub struct Session {
    next: Option<std::sync::mpsc::Sender<u64>>,
    cycles: std::sync::mpsc::Receiver<u64>,
    thread: Option<std::thread::JoinHandle<Result<RunReport, Error>>>,
    hung: std::cell::Cell<bool>,
    /// How long a batch may take: the case's own limit when it declares one.
    limit: Duration,
    /// Raised to stop a guest that hangs: the run's watchdog kicks the vCPU out of KVM_RUN.
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Session {
    /// The longest a batch may take before the session counts the guest as hung, unless
    /// the case declares its own limit.
    pub const BATCH_LIMIT: Duration = Duration::from_secs(10);

    /// Boots `case` (a guest benchmark) in a fresh VM on a new thread.
    pub fn start(case: &'static TestCase) -> Result<Session, Error> {
        let kvm = hvprobe_harness::Kvm::open()?;
        let (next_tx, next_rx) = std::sync::mpsc::channel::<u64>();
        let (cycles_tx, cycles_rx) = std::sync::mpsc::channel::<u64>();
        let payload = crate::catalog::payload().expect("callers list benchmarks from the parsed payload");
        let mut vm = Vm::boot(&kvm, payload, case, crate::runner::vm_config(case, None))?;
        let handler = Box::new(move |id: u32, args: [u64; 4]| match id {
            // Blocks until the caller asks for a batch; a dropped sender means stop.
            service::BENCH_NEXT => Some(Ok(next_rx.recv().unwrap_or(0))),
            service::BENCH_RESULT => Some(
                cycles_tx
                    .send(args[0])
                    .map(|()| 0)
                    .map_err(|_| ServiceError::Refused("the caller stopped listening".into())),
            ),
            _ => None,
        });
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let options = RunOptions {
            timeout: Duration::from_secs(24 * 3600),
            services: Some(handler),
            stop: Some(std::sync::Arc::clone(&stop)),
            ..RunOptions::default()
        };
        let thread = std::thread::spawn(move || vm.run(options));
        let limit = case.timeout.unwrap_or(Self::BATCH_LIMIT);
        Ok(Session {
            next: Some(next_tx),
            cycles: cycles_rx,
            thread: Some(thread),
            hung: Default::default(),
            limit,
            stop,
        })
    }

    /// Changes how long a batch may take before the guest counts as hung.
    pub fn set_batch_limit(&mut self, limit: Duration) {
        self.limit = limit;
    }

    /// Runs `n` iterations of the operation (or of the empty loop) and returns the TSC
    /// cycles they took, or why there are none.
    pub fn batch(&self, n: u64, baseline: bool) -> Result<u64, String> {
        let n = n.clamp(1, MAX_ITERATIONS);
        let sent = self.next.as_ref().is_some_and(|tx| tx.send(n | if baseline { BENCH_BASELINE } else { 0 }).is_ok());
        if !sent {
            return Err("the guest has stopped".into());
        }
        self.cycles.recv_timeout(self.limit).map_err(|e| match e {
            std::sync::mpsc::RecvTimeoutError::Timeout => {
                self.hung.set(true);
                format!("no result within {:.1} s: the guest hangs", self.limit.as_secs_f64())
            }
            std::sync::mpsc::RecvTimeoutError::Disconnected => "the guest has stopped".into(),
        })
    }

    /// Tells the guest to stop and waits for its run to end. A guest that hangs is
    /// stopped where it is (the run ends `Paused`) and its VM torn down before this returns,
    /// so that it burns no CPU while the next benchmark is measured.
    pub fn finish(mut self) -> Option<Result<RunReport, Error>> {
        self.next = None;
        if self.hung.get() {
            self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let thread = self.thread.take()?;
        thread.join().ok()
    }
}

impl Drop for Session {
    /// A session dropped without `finish` (a panic, an early return) stops its guest too.
    fn drop(&mut self) {
        self.next = None;
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs a booted exit-loop VM to its first exit.
fn first_exit(vm: &mut Vm) -> Result<(), Error> {
    let report = vm.run(RunOptions { max_exits: Some(1), timeout: Duration::from_secs(5), ..RunOptions::default() })?;
    match report.end() {
        RunEnd::ExitLimit { .. } => Ok(()),
        other => Err(Error::Floor(format!("the exit loop did not reach its first exit: {}", other.describe()))),
    }
}

/// The total of `n` timed operations.
fn total(n: u64, mut f: impl FnMut() -> Result<Duration, Error>) -> Result<Duration, Error> {
    (0..n).try_fold(Duration::ZERO, |acc, _| Ok(acc + f()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_median_and_mad() {
        let s = summarize(&[1.0, 2.0, 3.0, 4.0, 100.0]);
        assert_eq!(s.median, 3.0);
        assert_eq!(s.mad, 1.0, "deviations 2 1 0 1 97: the outlier does not move it");
        assert_eq!(summarize(&[1.0, 3.0]).median, 2.0);
        assert!(summarize(&[]).median.is_nan());
    }

    /// Plays the guest: cycles = n * (per-iteration cost), time = cycles ns.
    fn play(cfg: BenchConfig, op_cost: u64, base_cost: u64) -> Driver {
        let mut d = Driver::new(cfg);
        let mut now = Instant::now();
        let mut batches = 0;
        loop {
            let next = d.next(now, Disturbance::default());
            if next == 0 {
                break;
            }
            let n = next & !BENCH_BASELINE;
            let cycles = n * if next & BENCH_BASELINE != 0 { base_cost } else { op_cost };
            now += Duration::from_nanos(cycles);
            d.result(cycles, n, now, Disturbance::default()).unwrap();
            batches += 1;
            assert!(batches < 1000, "the driver never stops");
        }
        d
    }

    #[test]
    fn the_driver_calibrates_warms_up_alternates_and_subtracts_the_baseline() {
        let cfg = BenchConfig { budget: Duration::from_micros(100), samples: 12, warmup: 2, ..BenchConfig::quick() };
        let d = play(cfg, 30, 10);
        assert!(d.done());
        assert!(d.n * 30 >= 50_000, "batch {} is under half the budget", d.n);
        let [(cycles, base), (ns, _)] = d.figures();
        assert_eq!(cycles.n(), 12, "warm-up batches are dropped");
        assert_eq!(cycles.median, 20.0);
        assert_eq!(cycles.mad, 0.0);
        assert_eq!(base.median, 10.0);
        assert_eq!(ns.median, 20.0);
        // Every operation iteration is counted, so an ioeventfd count can be checked.
        assert!(d.op_iterations >= (12 + 2) * d.n);
    }

    #[test]
    fn noisy_figures_are_sampled_until_the_median_is_known_or_the_bound() {
        // Plays a guest whose operation costs 100 or 140 cycles per iteration in turn.
        let run = |cfg: BenchConfig, noisy: bool| {
            let mut d = Driver::new(cfg);
            let mut now = Instant::now();
            let mut turn = 0u64;
            loop {
                let next = d.next(now, Disturbance::default());
                if next == 0 {
                    break d;
                }
                let n = next & !BENCH_BASELINE;
                turn += 1;
                let per = if next & BENCH_BASELINE != 0 {
                    10
                } else if noisy && turn % 4 == 1 {
                    140
                } else {
                    100
                };
                now += Duration::from_nanos(n * per);
                d.result(n * per, n, now, Disturbance::default()).unwrap();
            }
        };
        let cfg = BenchConfig {
            budget: Duration::from_micros(50),
            samples: 10,
            warmup: 0,
            precision: 0.01,
            max_samples: 30,
            pin_cpu: None,
        };
        assert_eq!(run(cfg, false).figures()[0].0.n(), 10, "a steady figure stops at the minimum");
        let [(noisy, _), _] = run(cfg, true).figures();
        assert_eq!(noisy.n(), 30, "half the samples 40% off: the interval never narrows to 1%");
        let (lo, hi) = median_interval(&noisy.values).unwrap();
        assert!(lo <= noisy.median && noisy.median <= hi);
    }

    #[test]
    fn the_median_interval_uses_order_statistics() {
        let xs: Vec<f64> = (1..=15).map(f64::from).collect();
        // n = 15: k = floor((15 - 1.96 * 3.873) / 2) = 3, so x[3] and x[11].
        assert_eq!(median_interval(&xs), Some((4.0, 12.0)));
        assert_eq!(median_interval(&xs[..5]), None, "too few samples for a 95% interval");
    }

    #[test]
    fn a_batch_the_thread_was_preempted_in_or_its_cpu_stolen_is_run_again() {
        // Up to 20 batches may be run again; the precision is met at the 10th sample.
        let cfg = BenchConfig {
            budget: Duration::from_micros(50),
            samples: 10,
            warmup: 0,
            max_samples: 20,
            ..BenchConfig::quick()
        };
        let mut d = Driver::new(cfg);
        let mut now = Instant::now();
        let (mut seen, mut batches) = (Disturbance::default(), 0u64);
        loop {
            let next = d.next(now, seen);
            if next == 0 {
                break;
            }
            let n = next & !BENCH_BASELINE;
            batches += 1;
            // Every third batch is preempted, every fifth has its CPU stolen (the
            // fifteenth both), and those cost 10x.
            let measuring = d.phase != Phase::Calibrate;
            let preempted = batches % 3 == 0 && measuring;
            let stolen = batches % 5 == 0 && measuring;
            let per = if next & BENCH_BASELINE != 0 { 10 } else { 100 } * if preempted || stolen { 10 } else { 1 };
            seen.switches += preempted as u64;
            seen.steal += stolen as u64;
            now += Duration::from_nanos(n * per);
            d.result(n * per, n, now, seen).unwrap();
        }
        let [(cycles, _), _] = d.figures();
        assert_eq!(cycles.n(), 10);
        assert!(d.redone.preempted > 0 && d.redone.stolen > 0, "{:?}", d.redone);
        assert!(cycles.values.iter().all(|c| *c == 90.0), "no disturbed batch was kept: {:?}", cycles.values);
    }

    #[test]
    fn steadiness_counts_steady_figures_and_the_batches_run_again() {
        let steady = summarize(&[100.0, 101.0, 99.0, 100.0, 100.5]);
        let noisy = summarize(&[100.0, 130.0, 70.0, 100.0, 125.0]);
        let mut a = BenchResult::new("bench::a::long64", "full");
        a.cycles = Some((steady.clone(), steady.clone()));
        a.ns = Some((noisy.clone(), steady.clone()));
        a.redone = Redone { preempted: 2, stolen: 1 };
        let mut host = BenchResult::new("host::kvm_run_roundtrip", "host");
        host.ns = Some((noisy, steady));
        host.redone = Redone { preempted: 5, stolen: 0 };
        let text = steadiness(&[a, host]).unwrap();
        assert!(text.starts_with("steadiness: 1 of 2 guest figures have MAD/median under 5% (50%)"), "{text}");
        assert!(text.ends_with("8 batches run again (7 preempted, 1 with steal)"), "{text}");
    }

    #[test]
    fn fewer_samples_than_the_minimum_are_raised_to_it() {
        let cfg = BenchConfig { budget: Duration::from_micros(10), samples: 3, warmup: 0, ..BenchConfig::quick() };
        assert_eq!(play(cfg, 5, 1).figures()[0].0.n(), BenchConfig::MIN_SAMPLES);
    }

    #[test]
    fn a_guest_that_runs_the_wrong_count_is_an_error() {
        let mut d = Driver::new(BenchConfig::quick());
        let now = Instant::now();
        let n = d.next(now, Disturbance::default());
        assert!(d.result(1, n + 1, now, Disturbance::default()).is_err());
        assert!(d.error.as_deref().unwrap().contains("not the"));
        assert!(d.result(1, n, now, Disturbance::default()).is_err(), "no batch is pending any more");
    }

    #[test]
    fn records_carry_baseline_floor_and_ratio() {
        let s = |m| Summary { median: m, mad: 1.0, values: vec![m; 10] };
        let mut g = BenchResult::new("bench::cpuid::long64", "full");
        g.cycles = Some((s(100.0), s(5.0)));
        g.ns = Some((s(40.0), s(2.0)));
        g.iterations = 64;
        let r = g.records();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].unit.as_str(), r[0].baseline, r[0].path.as_deref()), ("cycles", Some(5.0), Some("full")));
        assert_eq!(r[1].floor_ratio, None);
        let mut h = BenchResult::new("host::kvm_run_roundtrip", "host");
        h.ns = Some((s(110.0), s(110.0)));
        h.floor = Some(s(100.0));
        let r = h.records();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].floor, r[0].path.clone(), r[0].baseline), (Some(100.0), None, None));
        assert!((r[0].floor_ratio.unwrap() - 1.1).abs() < 1e-9);
    }

    #[test]
    fn ioeventfd_benchmarks_name_their_eventfd() {
        assert_eq!(ioevent_of("bench::ioeventfd_pio_datamatch::long64"), Some("pio_datamatch"));
        assert_eq!(ioevent_of("bench::ioeventfd_mmio::long64"), Some("mmio"));
        assert_eq!(ioevent_of("bench::cpuid::long64"), None);
    }
}
