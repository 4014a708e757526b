//! Running one catalogue case: requirements, hooks, a fresh VM, the run, the judgement.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// `Failure::end` of a case the harness itself could not run (a boot error, a panic).
pub const HARNESS_END: &str = "harness";

use hvprobe_harness::{CpuidEdit, Kvm, RunOptions, TestCase, Vm, VmConfig};
use hvprobe_results::paths::Section;
use hvprobe_results::{Failure, MetricValue, Outcome, TestResult};

use crate::hooks;
use crate::judge::{self, Judgement};
use crate::profile::Profile;

/// The watchdog limit of a case that declares none. Generous: on PVM every CPL0
/// instruction is emulated, and CI machines are small and shared.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The seed of generated cases when $HVPROBE_SEED does not set one: fixed, so that a
/// run is repeatable and a profile's signatures stay stable.
pub const DEFAULT_SEED: u64 = 0x5eed_0001;

/// What every case of a run shares.
pub struct Context {
    pub kvm: Kvm,
    pub profile: Profile,
    /// Overrides the default limit (not a case's own declared limit).
    pub default_timeout: Duration,
    /// The seed of generated cases, and the one case to run alone, if any.
    pub seed: u64,
    pub only_case: Option<u64>,
    /// Start every case's vCPUs with their TSC here (`VmConfig::tsc_start`): a "TSC moved"
    /// pass of `run --repeat --perturb`.
    pub tsc_start: Option<u64>,
    /// Raised when the run is interrupted (SIGINT, SIGTERM): running cases are stopped
    /// where they are (`RunEnd::Paused`) and their VMs torn down.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Reads $HVPROBE_SEED (a number, or "random" for one from the clock) and $HVPROBE_CASE
/// (the index of one generated case to rerun alone).
pub fn generation_from_env() -> Result<(u64, Option<u64>), String> {
    let number = |name: &str, v: String| {
        let parsed = match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => v.parse(),
        };
        parsed.map_err(|_| format!("${name} must be a number, got {v:?}"))
    };
    let seed = match std::env::var("HVPROBE_SEED") {
        Err(_) => DEFAULT_SEED,
        Ok(v) if v == "random" => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(DEFAULT_SEED, |d| d.as_nanos() as u64),
        Ok(v) => number("HVPROBE_SEED", v)?,
    };
    let only_case = std::env::var("HVPROBE_CASE").ok().map(|v| number("HVPROBE_CASE", v)).transpose()?;
    Ok((seed, only_case))
}

fn result(case: &TestCase) -> TestResult {
    TestResult {
        name: case.name.clone(),
        area: case.area.clone(),
        path: case.path.name().into(),
        mode: case.mode.name().into(),
        outcome: Outcome::Pass,
        reason: None,
        expected_timeout: case.expects_timeout(),
        duration_ms: 0.0,
        kvm_stats: BTreeMap::new(),
        metrics: BTreeMap::new(),
        failure: None,
        console: None,
        log: Vec::new(),
        behaviour: (case.flags & hvprobe_abi::flags::PATH_TABLE != 0)
            .then(|| case.name.rsplit_once("::").map_or(case.name.clone(), |(b, _)| b.to_string())),
        section: None,
    }
}

fn harness_error(mut r: TestResult, what: String) -> TestResult {
    r.outcome = Outcome::Error;
    r.failure = Some(Failure {
        end: HARNESS_END.into(),
        description: what.clone(),
        insn_bytes: None,
        message: None,
        file: None,
        line: None,
        expected: None,
        actual: None,
        cpu: None,
    });
    r.reason = Some(what);
    r
}

/// The limit a case runs under.
pub fn timeout_of(case: &TestCase, default: Duration) -> Duration {
    case.timeout.unwrap_or(default)
}

/// The VM a case boots in: its vCPUs, the irqchip and ioeventfds it requires, the
/// quirks it turns off, and its host hook's CPUID edit.
pub fn vm_config(case: &TestCase, hook: Option<&hooks::Hook>) -> VmConfig {
    let mut config = VmConfig {
        vcpus: case.vcpus.into(),
        cpuid_edit: hook.map(|h| Box::new(h.cpuid_edit) as CpuidEdit),
        cpuid_clear: case.cpuid_clear.clone(),
        disable_quirks: case.quirks_off,
        ..VmConfig::default()
    };
    hvprobe_harness::requirements::configure(case.requires, &mut config);
    config
}

/// Where one case's time went: creating the VM and loading the guest, running it,
/// judging the report, and tearing the VM down.
#[derive(Clone, Copy, Debug, Default)]
pub struct Phases {
    pub boot: Duration,
    pub run: Duration,
    pub judge: Duration,
    pub teardown: Duration,
}

/// Boots `case` in a fresh VM, runs it, and judges it.
pub fn run_case(ctx: &Context, case: &TestCase) -> TestResult {
    run_case_timed(ctx, case).0
}

/// [`run_case`], also returning where the time went (None when no VM was booted).
pub fn run_case_timed(ctx: &Context, case: &TestCase) -> (TestResult, Option<Phases>) {
    let start = Instant::now();
    let mut r = result(case);
    let missing = ctx.kvm.missing_requirements(case.requires);
    if !missing.is_empty() {
        r.outcome = Outcome::Skip;
        r.reason = Some(format!("host lacks {}", missing.join(", ")));
        return (r, None);
    }
    let hook = hooks::hook_for(&case.name);
    if case.has_host_hook() != hook.is_some() {
        let why = format!("{}: guest and suites/src/hooks.rs disagree about its host hook", case.name);
        return (harness_error(r, why), None);
    }
    let mut phases = Phases::default();
    let config = || VmConfig { tsc_start: ctx.tsc_start, ..vm_config(case, hook) };
    let vm = Vm::boot(&ctx.kvm, hvprobe_payload(), case, config());
    phases.boot = start.elapsed();
    let report = vm.and_then(|vm| {
        let t = Instant::now();
        let target = crate::migrate::Target { kvm: &ctx.kvm, payload: hvprobe_payload(), case, config: &config };
        let options = RunOptions {
            timeout: timeout_of(case, ctx.default_timeout),
            seed: ctx.seed,
            only_case: ctx.only_case,
            stop: ctx.stop.clone(),
            // The watchdog's own cases spin on purpose and must reach its limit.
            livelock: !case.expects_timeout(),
            ..RunOptions::default()
        };
        let driven = crate::migrate::drive(&target, vm, case.migrate, options);
        phases.run = t.elapsed();
        let (report, vm) = driven?;
        let t = Instant::now();
        drop(vm);
        phases.teardown = t.elapsed();
        Ok(report)
    });
    let judging = Instant::now();
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            r.duration_ms = start.elapsed().as_secs_f64() * 1e3;
            return (harness_error(r, format!("harness error: {e}")), None);
        }
    };
    let Judgement { outcome, reason, failure } = judge::judge(case, &report, &ctx.profile);
    r.outcome = outcome;
    r.reason = reason;
    r.failure = failure;
    r.kvm_stats = report.stats.iter().map(|s| (s.name.clone(), s.delta)).collect();
    r.section = report.section.as_ref().map(|s| Section {
        ops: s.ops,
        accesses: s.accesses,
        userspace_exits: [("io", s.io_exits), ("mmio", s.mmio_exits), ("other", s.other_exits)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        kvm_stats: s.stats.iter().map(|d| (d.name.clone(), d.delta)).collect(),
    });
    for m in &report.metrics {
        r.metrics.insert(m.name.clone(), MetricValue { value: m.value as f64, unit: m.unit.clone() });
    }
    if !report.console.is_empty() {
        let cut = if report.console_truncated { "\n[console truncated]" } else { "" };
        r.console = Some(format!("{}{cut}", report.console));
    }
    r.log = report.log.clone();
    if report.metrics_dropped > 0 {
        r.log.push(format!("[{} more metrics dropped]", report.metrics_dropped));
    }
    if report.log_dropped > 0 {
        r.log.push(format!("[{} more log lines dropped]", report.log_dropped));
    }
    r.log.extend(report.notes.iter().map(|n| format!("host: {n}")));
    if let Some(e) = &report.stats_error {
        r.log.push(format!("host: KVM statistics unavailable: {e}"));
    }
    phases.judge = judging.elapsed();
    r.duration_ms = start.elapsed().as_secs_f64() * 1e3;
    (r, Some(phases))
}

fn hvprobe_payload() -> &'static hvprobe_harness::Payload {
    crate::catalog::payload().expect("callers list cases from the parsed payload")
}
