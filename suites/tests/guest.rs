//! Every catalogue case as its own libtest-mimic trial, each booted in a fresh VM:
//! `cargo test` runs them in parallel, and `--list`, filters, `--exact`, `--ignored` and
//! cargo-nextest work as with any Rust test.
//!
//! Mapping of outcomes: pass and xfail pass the trial (an xfail prints its deviation);
//! skip is "ignored" with its reason; the watchdog's own cases pass when the watchdog
//! stopped them within their limit plus one second; fail, xpass, an unexpected timeout
//! and a harness error fail the trial with everything the run reported.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

use hvprobe_harness::{Kvm, TestCase};
use hvprobe_results::{Outcome, TestResult};
use hvprobe_suites::profile::{Profile, ProfileHost};
use hvprobe_suites::{Context, catalog, hooks, run_case, runner};

fn main() -> ExitCode {
    // A state case restores its snapshot in a second process: this executable, again.
    hvprobe_suites::migrate::serve_if_asked();
    let args = Arguments::from_args();
    let payload = catalog::payload().unwrap_or_else(|e| panic!("the embedded guest payload is invalid: {e}"));
    hooks::check(payload).unwrap_or_else(|e| panic!("{e}"));
    let (ctx, unusable) = match Kvm::open() {
        Ok(kvm) => {
            let profile = Profile::builtin(&ProfileHost::detect(), payload).unwrap_or_else(|e| panic!("{e}"));
            let (seed, only_case) = runner::generation_from_env().unwrap_or_else(|e| panic!("{e}"));
            let ctx = Context {
                kvm,
                profile,
                default_timeout: runner::DEFAULT_TIMEOUT,
                seed,
                only_case,
                tsc_start: None,
                stop: None,
            };
            (Some(Arc::new(ctx)), None)
        }
        Err(e) => (None, Some(e.to_string())),
    };
    let executed = Arc::new(AtomicUsize::new(0));
    let trials = payload
        .tests
        .iter()
        .map(|case| match (&ctx, &unusable) {
            (Some(ctx), _) => {
                let (ctx, executed) = (Arc::clone(ctx), Arc::clone(&executed));
                Trial::ignorable_test(&case.name, move || {
                    executed.fetch_add(1, Ordering::SeqCst);
                    trial_outcome(case, &run_case(&ctx, case))
                })
            }
            (None, reason) => {
                let reason = reason.clone().unwrap_or_default();
                Trial::test(&case.name, move || Err(format!("/dev/kvm is unusable: {reason}").into()))
                    .with_ignored_flag(true)
            }
        })
        .collect();
    if let (Some(reason), false) = (&unusable, args.list) {
        eprintln!("hvprobe: every guest trial is ignored: /dev/kvm is unusable: {reason}");
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if !args.list {
        // Read by .ci/run: it fails the build if KVM is usable but a case did not run.
        println!(
            "hvprobe-guest-trials: executed {} of {} catalogue cases; kvm {}",
            executed.load(Ordering::SeqCst),
            payload.tests.len(),
            if unusable.is_some() { "unusable" } else { "usable" }
        );
    }
    conclusion.exit_code()
}

fn trial_outcome(case: &TestCase, r: &TestResult) -> Result<Completion, Failed> {
    let reason = r.reason.clone().unwrap_or_default();
    match r.outcome {
        Outcome::Pass => Ok(Completion::Completed),
        Outcome::Xfail => {
            println!("xfail {}: {reason}", r.name);
            Ok(Completion::Completed)
        }
        Outcome::Skip => Ok(Completion::ignored_with(format!("skip: {reason}"))),
        Outcome::Timeout if r.expected_timeout => {
            let limit = runner::timeout_of(case, runner::DEFAULT_TIMEOUT) + Duration::from_secs(1);
            let took = Duration::from_secs_f64(r.duration_ms / 1e3);
            if took <= limit {
                Ok(Completion::Completed)
            } else {
                Err(format!("the watchdog stopped the guest after {took:?}, later than its limit plus 1 s ({limit:?})")
                    .into())
            }
        }
        Outcome::Fail | Outcome::Xpass | Outcome::Timeout | Outcome::Error => {
            let mut text = format!("{}: {reason}", r.outcome.name());
            if let Some(cpu) = r.failure.as_ref().and_then(|f| f.cpu.as_ref()) {
                text += &format!("\n  cpu: {cpu}");
            }
            for line in &r.log {
                text += &format!("\n  log: {line}");
            }
            if let Some(console) = &r.console {
                text += &format!("\n  console: {console}");
            }
            Err(text.into())
        }
    }
}
