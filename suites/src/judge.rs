//! Turning what a run did into an outcome: the guest's verdict or the way the run ended,
//! then the backend's expectation profile.

use hvprobe_harness::{RunEnd, RunReport, TestCase, VerdictStatus, run_hex};
use hvprobe_results::{Failure, Outcome};

use crate::profile::Profile;

/// An outcome, why, and the facts of the failure if there was one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub failure: Option<Failure>,
}

/// What the run says before the profile is consulted.
enum Raw {
    Pass,
    Skip(String),
    Fail(Failure),
    Timeout(Failure),
    ExpectedTimeout(String),
}

pub fn failure_of(report: &RunReport) -> Failure {
    let end = report.end();
    if let (RunEnd::Verdict, Some(v)) = (end, &report.verdict) {
        let mut description = format!("guest check failed at {}:{}: {}", v.file, v.line, v.message);
        if let Some((expected, actual)) = v.values {
            description += &format!(" (expected {expected:#x}, actual {actual:#x})");
        }
        if let Some((rip, bytes)) = &v.fault {
            description += &format!(" (bytes at {rip:#x}: {})", run_hex(bytes));
        }
        return Failure {
            end: end.kind().into(),
            description,
            insn_bytes: v.fault.as_ref().map(|(_, b)| run_hex(b)).filter(|b| !b.is_empty()),
            message: Some(v.message.clone()),
            file: Some(v.file.clone()),
            line: Some(v.line),
            expected: v.values.map(|x| x.0),
            actual: v.values.map(|x| x.1),
            cpu: None,
        };
    }
    let insn_bytes = match end {
        RunEnd::InternalError(e) if e.insn_bytes.is_some() => e.insn_bytes.clone(),
        _ => report.snapshot.as_ref().map(|s| s.insn_bytes.clone()).filter(|b| !b.is_empty()),
    };
    let mut description = end.describe();
    if let Some(s) = &report.snapshot {
        description += &format!(" at rip {:#x} (CPL {})", s.rip, s.cpl);
    }
    if let Some(b) = &insn_bytes {
        description += &format!(", instruction bytes {}", run_hex(b));
    }
    Failure {
        end: end.kind().into(),
        description,
        insn_bytes: insn_bytes.map(|b| run_hex(&b)),
        message: None,
        file: None,
        line: None,
        expected: None,
        actual: None,
        cpu: report.snapshot.as_ref().map(ToString::to_string),
    }
}

fn raw(case: &TestCase, report: &RunReport) -> Raw {
    let end = report.end();
    if case.expects_timeout() {
        return match end {
            RunEnd::Timeout { limit } => Raw::ExpectedTimeout(format!(
                "stopped by the watchdog after {:.3} s (limit {:.3} s), as this spinning guest expects",
                report.duration.as_secs_f64(),
                limit.as_secs_f64()
            )),
            _ => {
                let mut f = failure_of(report);
                f.description = format!("expected the watchdog to stop this guest, but: {}", f.description);
                Raw::Fail(f)
            }
        };
    }
    match (end, &report.verdict) {
        (RunEnd::Verdict, Some(v)) => match v.status {
            VerdictStatus::Pass => Raw::Pass,
            VerdictStatus::Skip => Raw::Skip(format!("guest: {}", v.message)),
            VerdictStatus::Fail => Raw::Fail(failure_of(report)),
        },
        (RunEnd::Timeout { .. }, _) => Raw::Timeout(failure_of(report)),
        _ => Raw::Fail(failure_of(report)),
    }
}

/// Judges one run of `case` against `profile`.
pub fn judge(case: &TestCase, report: &RunReport, profile: &Profile) -> Judgement {
    let deviation = profile.deviation(&case.name);
    let j = |outcome, reason: String, failure| Judgement { outcome, reason: Some(reason), failure };
    match (raw(case, report), deviation) {
        (Raw::Pass, None) => Judgement { outcome: Outcome::Pass, reason: None, failure: None },
        (Raw::Pass, Some(d)) => j(
            Outcome::Xpass,
            format!(
                "{} predicts a failure ({}; {}) but the test passed: the deviation is gone, update the profile",
                profile.source,
                d.signature(),
                d.deviates_from
            ),
            None,
        ),
        (Raw::Skip(reason), _) => j(Outcome::Skip, reason, None),
        (Raw::ExpectedTimeout(reason), _) => j(Outcome::Timeout, reason, None),
        (Raw::Fail(f) | Raw::Timeout(f), Some(d)) if d.matches(&f) => {
            j(Outcome::Xfail, format!("known deviation ({}): {}", d.deviates_from, f.description), Some(f))
        }
        (r @ (Raw::Fail(_) | Raw::Timeout(_)), d) => {
            let (outcome, f) = match r {
                Raw::Timeout(f) => (Outcome::Timeout, f),
                Raw::Fail(f) => (Outcome::Fail, f),
                _ => unreachable!("matched above"),
            };
            let mut reason = f.description.clone();
            if let Some(d) = d {
                reason += &format!(
                    " [{} lists this test with signature {}, which this failure does not match]",
                    profile.source,
                    d.signature()
                );
            }
            j(outcome, reason, Some(f))
        }
    }
}

/// Does this outcome fail a run?
pub fn is_failure(outcome: Outcome, expected_timeout: bool) -> bool {
    match outcome {
        Outcome::Pass | Outcome::Skip | Outcome::Xfail => false,
        Outcome::Timeout => !expected_timeout,
        Outcome::Fail | Outcome::Xpass | Outcome::Error => true,
    }
}
