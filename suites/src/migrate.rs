//! Driving a case that declares how the host moves it while it runs (`migrate = ...`, `Migrate`): save
//! and restore at checkpoints, at random pauses, into another process, or live. The guest
//! checks continuity; the host adds what it measured (save, restore and downtime, pages per
//! pre-copy round) to the report's metrics.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hvprobe_abi::layout::HOST_DONE_FLAG;
use hvprobe_harness::migrate::Plan;
use hvprobe_harness::{
    Error, GuestVerdict, Kvm, Metric, Payload, RunEnd, RunOptions, RunReport, TestCase, VerdictStatus, Vm, VmConfig,
};
use serde::{Deserialize, Serialize};

use hvprobe_harness::Migrate;

/// How the live-migration cases migrate: a few rounds 10 ms apart, converged below 16
/// pages (the guest's working set is 64 pages, so it seldom converges: the rounds stop).
const LIVE: Plan = Plan { max_rounds: 5, converged_pages: 16, round_gap: Duration::from_millis(10) };
/// The environment variable that makes a hvprobe process a restorer (see [`serve_if_asked`]).
pub const RESUME_ENV: &str = "HVPROBE_RESUME_SNAPSHOT";
const RESUME_TIMEOUT_ENV: &str = "HVPROBE_RESUME_TIMEOUT_MS";
/// The pid of the hvprobe that started the restoring process: the entry point serves
/// only a child of that process, never a user who happens to set [`RESUME_ENV`].
const RESUME_PARENT_ENV: &str = "HVPROBE_RESUME_PARENT";

fn host_metric(report: &mut RunReport, name: &str, unit: &str, value: u64) {
    report.metrics.push(Metric { name: format!("host_{name}"), unit: unit.into(), value });
}

/// Appends a later part of a run to the report of the earlier parts.
fn merge(total: &mut RunReport, part: RunReport) {
    total.end = part.end;
    total.verdict = part.verdict;
    total.snapshot = part.snapshot;
    total.console += &part.console;
    total.console_truncated |= part.console_truncated;
    total.log.extend(part.log);
    total.log_dropped += part.log_dropped;
    total.metrics_dropped += part.metrics_dropped;
    total.metrics.extend(part.metrics);
    total.notes.extend(part.notes);
    total.duration += part.duration;
    for s in part.stats {
        match total.stats.iter_mut().find(|t| t.name == s.name) {
            Some(t) => t.delta += s.delta,
            None => total.stats.push(s),
        }
    }
    if total.stats_error.is_none() {
        total.stats_error = part.stats_error;
    }
    if part.section.is_some() {
        total.section = part.section;
    }
}

/// A small, seeded generator for the random pause points.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Everything `drive` needs to boot another VM for the same case.
pub struct Target<'a> {
    pub kvm: &'a Kvm,
    pub payload: &'a Payload,
    pub case: &'a TestCase,
    pub config: &'a dyn Fn() -> VmConfig,
}

/// Runs `vm` to the end of its case, moving it as `how` says. Returns the report and the
/// VM the case ended in (none when it ended in another process), for the caller to drop.
pub fn drive(
    t: &Target,
    mut vm: Vm,
    how: Option<Migrate>,
    options: RunOptions,
) -> Result<(RunReport, Option<Vm>), Error> {
    let deadline = Instant::now() + options.timeout;
    let (seed, only_case, options_livelock) = (options.seed, options.only_case, options.livelock);
    let mut services = options.services;
    let stop = options.stop;
    let stopped = || stop.as_ref().is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
    let mut total = RunReport::default();
    let mut rng = seed | 1;
    let (mut pauses_left, mut migrated, mut moves) = (0u32, false, 0u64);
    if let Some(Migrate::RandomPauses(n)) = how {
        pauses_left = n;
    }
    loop {
        let timeout = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let pause_after = (pauses_left > 0).then(|| Duration::from_millis(5 + next_random(&mut rng) % 40));
        let opts = RunOptions {
            timeout,
            services: services.take(),
            seed,
            only_case,
            max_exits: None,
            pause_after,
            stop: stop.clone(),
            livelock: options_livelock,
            pin_cpu: None,
        };
        let part = if how == Some(Migrate::Live) && !migrated {
            migrated = true;
            let (report, dest) = vm.live_migrate(t.kvm, t.payload, t.case, (t.config)(), opts, LIVE)?;
            let ended = report.end().clone();
            merge(&mut total, report);
            let Some((dest, m)) = dest else {
                if ended == RunEnd::Paused {
                    total.end =
                        Some(RunEnd::HostCheck("the live migration stopped the guest but did not finish".into()));
                }
                return Ok((total, Some(vm)));
            };
            host_metric(&mut total, "migration_rounds", "count", m.pages_per_round.len() as u64);
            for (i, pages) in m.pages_per_round.iter().enumerate() {
                host_metric(&mut total, &format!("migration_round{i}_pages"), "pages", *pages);
            }
            host_metric(&mut total, "migration_downtime", "us", m.downtime.as_micros() as u64);
            host_metric(&mut total, "migration_total", "us", m.total.as_micros() as u64);
            if m.mismatched_pages != 0 {
                total.end = Some(RunEnd::HostCheck(format!(
                    "after the stop-and-copy {} pages differ between source and destination",
                    m.mismatched_pages
                )));
                return Ok((total, Some(vm)));
            }
            vm = dest;
            vm.memory().write_u64(HOST_DONE_FLAG, 1)?;
            continue;
        } else {
            vm.run(opts)?
        };
        let end = part.end().clone();
        merge(&mut total, part);
        if end == RunEnd::Paused && stopped() {
            // Interrupted: no save, no restore; the caller drops the case.
            return Ok((total, Some(vm)));
        }
        match (&end, how) {
            (RunEnd::Checkpoint { tag }, Some(Migrate::CrossProcess)) => {
                let (snap, _) = vm.save(&t.case.name)?;
                drop(vm);
                let child = in_another_process(&snap, deadline)?;
                host_metric(&mut total, "moves", "count", 1);
                total.log.push(format!("host: checkpoint {tag} restored in process {}", child.pid));
                merge(&mut total, child.report);
                return Ok((total, None));
            }
            (RunEnd::Checkpoint { .. }, Some(Migrate::Restore | Migrate::RandomPauses(_)))
            | (RunEnd::Paused, Some(Migrate::RandomPauses(_))) => {
                if end == RunEnd::Paused {
                    pauses_left = pauses_left.saturating_sub(1);
                }
                let (snap, saved) = vm.save(&t.case.name)?;
                drop(vm);
                let (restored, applied) = Vm::restore(t.kvm, t.payload, t.case, (t.config)(), &snap)?;
                vm = restored;
                if end == RunEnd::Paused && pauses_left == 0 {
                    vm.memory().write_u64(HOST_DONE_FLAG, 1)?;
                }
                moves += 1;
                let save_us = (saved.vcpus + saved.devices + saved.memory).as_micros() as u64;
                let restore_us = (applied.vcpus + applied.devices + applied.memory).as_micros() as u64;
                host_metric(&mut total, &format!("save{moves}"), "us", save_us);
                host_metric(&mut total, &format!("restore{moves}"), "us", restore_us);
            }
            // A checkpoint in a case the host does not move: go on in the same VM.
            (RunEnd::Checkpoint { .. }, _) => {}
            _ => {
                if moves > 0 {
                    host_metric(&mut total, "moves", "count", moves);
                }
                let passed = total.verdict.as_ref().is_some_and(|v| v.status == VerdictStatus::Pass);
                if pauses_left > 0 && passed {
                    total.end = Some(RunEnd::HostCheck(format!(
                        "the guest finished before the host could pause it {pauses_left} more time(s)"
                    )));
                }
                return Ok((total, Some(vm)));
            }
        }
    }
}

/// What a restoring process reports back on its standard output, as one JSON object.
#[derive(Serialize, Deserialize, Default)]
struct Resumed {
    pid: u32,
    verdict: Option<GuestVerdict>,
    /// How the run ended, described (when there is no verdict).
    end: String,
    log: Vec<String>,
    metrics: Vec<Metric>,
}

struct Child {
    pid: u32,
    report: RunReport,
}

/// Writes `snap` to a file and runs this executable again to restore it: a fresh process
/// with its own KVM fd, VM and memory, as on another server.
fn in_another_process(snap: &hvprobe_harness::Snapshot, deadline: Instant) -> Result<Child, Error> {
    let dir = tempfile::tempdir().map_err(|e| Error::Snapshot(format!("temporary directory: {e}")))?;
    let path = dir.path().join("vm.snapshot");
    snap.write(&path)?;
    let exe = std::env::current_exe().map_err(|e| Error::Snapshot(format!("this executable: {e}")))?;
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
    let out = Command::new(exe)
        .env(RESUME_ENV, &path)
        .env(RESUME_TIMEOUT_ENV, left.as_millis().to_string())
        .env(RESUME_PARENT_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::Snapshot(format!("cannot start the restoring process: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
    let r: Resumed = serde_json::from_str(line).map_err(|e| {
        Error::Snapshot(format!("the restoring process ({}) gave no result: {e}; it printed {text:?}", out.status))
    })?;
    let end = match r.verdict {
        Some(_) => RunEnd::Verdict,
        None => RunEnd::HostCheck(format!("in the restoring process: {}", r.end)),
    };
    let report =
        RunReport { verdict: r.verdict, end: Some(end), log: r.log, metrics: r.metrics, ..RunReport::default() };
    Ok(Child { pid: r.pid, report })
}

/// Call first in `main`: when this process was started to restore a snapshot
/// ([`RESUME_ENV`]), restore it, run the case to its end, print the outcome as JSON on
/// standard output, and exit.
pub fn serve_if_asked() {
    let Some(path) = std::env::var_os(RESUME_ENV) else { return };
    // Dies with the hvprobe that started it, so that no restoring process outlives a run
    // that was killed (PR_SET_PDEATHSIG), and serves only that parent.
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and no pointers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let ours = std::env::var(RESUME_PARENT_ENV).ok().and_then(|p| p.parse::<libc::pid_t>().ok()) == Some(parent);
    if !ours {
        eprintln!(
            "hvprobe: {RESUME_ENV} is set, but this process was not started by hvprobe to restore a snapshot: \
             it is internal to the state cases; unset it"
        );
        std::process::exit(2);
    }
    let r = resume(std::path::Path::new(&path));
    let failed = r.is_err();
    let r = r.unwrap_or_else(|e| Resumed {
        pid: std::process::id(),
        end: format!("restore failed: {e}"),
        ..Resumed::default()
    });
    println!("{}", serde_json::to_string(&r).unwrap_or_default());
    std::process::exit(i32::from(failed));
}

fn resume(path: &std::path::Path) -> Result<Resumed, String> {
    let snap = hvprobe_harness::Snapshot::read(path).map_err(|e| e.to_string())?;
    let payload = crate::catalog::payload().map_err(|e| e.to_string())?;
    let case = payload.test(&snap.case).ok_or(format!("{} is not in this catalogue", snap.case))?;
    let kvm = Kvm::open().map_err(|e| e.to_string())?;
    let config = || crate::runner::vm_config(case, None);
    let (vm, _) = Vm::restore(&kvm, payload, case, config(), &snap).map_err(|e| e.to_string())?;
    let timeout = std::env::var(RESUME_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(crate::runner::DEFAULT_TIMEOUT, Duration::from_millis);
    let target = Target { kvm: &kvm, payload, case, config: &config };
    let options = RunOptions { timeout, livelock: !case.expects_timeout(), ..RunOptions::default() };
    let (report, _) = drive(&target, vm, Some(Migrate::Restore), options).map_err(|e| e.to_string())?;
    Ok(Resumed {
        pid: std::process::id(),
        end: report.end().describe(),
        verdict: report.verdict,
        log: report.log,
        metrics: report.metrics,
    })
}
