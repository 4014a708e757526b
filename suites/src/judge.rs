//! Turning what a run did into an outcome: the guest's verdict or the way the run ended,
//! then the backend's expectation profile.

use hvprobe_abi::Mode;
use hvprobe_harness::{RunEnd, RunReport, TestCase, VerdictStatus, instruction_signature, run_hex};
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
    ExpectedEnd(String),
}

/// The facts of a failed run of `case`. The signature's instruction bytes are the one
/// instruction at the fault (decoded in the case's mode for a guest-reported fault, in
/// the vCPU's CS mode otherwise); the description keeps the whole 15-byte window.
pub fn failure_of(case: &TestCase, report: &RunReport) -> Failure {
    let case_bits = match case.mode {
        Mode::Real16 => 16,
        Mode::Prot32 => 32,
        Mode::Long64 | Mode::User64 => 64,
    };
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
            insn_bytes: v.fault.as_ref().map(|(_, b)| instruction_signature(b, case_bits)).filter(|b| !b.is_empty()),
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
    let bits = report.snapshot.as_ref().map_or(case_bits, |s| s.bits);
    Failure {
        end: end.kind().into(),
        description,
        insn_bytes: insn_bytes.map(|b| instruction_signature(&b, bits)).filter(|s| !s.is_empty()),
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
                let mut f = failure_of(case, report);
                f.description = format!("expected the watchdog to stop this guest, but: {}", f.description);
                Raw::Fail(f)
            }
        };
    }
    if let Some(kind) = case.expected_end() {
        if end.kind() == kind {
            return Raw::ExpectedEnd(format!("the host ended this hostile guest as it must: {}", end.describe()));
        }
        let mut f = failure_of(case, report);
        f.description = format!("expected the host to end this guest with {kind}, but: {}", f.description);
        return Raw::Fail(f);
    }
    match (end, &report.verdict) {
        (RunEnd::Verdict, Some(v)) => match v.status {
            VerdictStatus::Pass => Raw::Pass,
            VerdictStatus::Skip => Raw::Skip(format!("guest: {}", v.message)),
            VerdictStatus::Fail => Raw::Fail(failure_of(case, report)),
        },
        (RunEnd::Timeout { .. }, _) => Raw::Timeout(failure_of(case, report)),
        _ => Raw::Fail(failure_of(case, report)),
    }
}

/// Judges one run of `case` against `profile`.
pub fn judge(case: &TestCase, report: &RunReport, profile: &Profile) -> Judgement {
    let deviation = profile.deviation(&case.name);
    let j = |outcome, reason: String, failure| Judgement { outcome, reason: Some(reason), failure };
    match (raw(case, report), deviation) {
        (Raw::Pass, None) => Judgement { outcome: Outcome::Pass, reason: None, failure: None },
        (Raw::Pass | Raw::ExpectedEnd(_), Some(d)) => j(
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
        (Raw::ExpectedEnd(reason), None) => j(Outcome::Pass, reason, None),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hvprobe_abi::{Mode, Path};
    use hvprobe_harness::{CpuSnapshot, GuestVerdict};

    use super::*;
    use crate::profile::Deviation;

    #[test]
    fn every_end_the_harness_names_is_one_the_results_schema_allows() {
        let d = Duration::ZERO;
        let ends = [
            RunEnd::Verdict,
            RunEnd::Hlt,
            RunEnd::Shutdown,
            RunEnd::FailEntry { hardware_reason: 0, cpu: 0 },
            RunEnd::InternalError(hvprobe_harness::InternalError {
                suberror: 1,
                suberror_name: "emulation failure",
                data: Vec::new(),
                insn_bytes: None,
            }),
            RunEnd::SystemEvent { kind: 0, data: Vec::new() },
            RunEnd::Timeout { limit: d },
            RunEnd::ProtocolError(String::new()),
            RunEnd::UnexpectedExit(String::new()),
            RunEnd::KvmRunFailed(String::new()),
            RunEnd::ExitLimit { exits: 0 },
            RunEnd::Checkpoint { tag: 0 },
            RunEnd::Paused,
            RunEnd::HostCheck(String::new()),
            RunEnd::Livelock { rip: 0, repeats: 0, over: d },
        ];
        for end in &ends {
            // A variant added to RunEnd and not listed above fails to compile here.
            match end {
                RunEnd::Verdict
                | RunEnd::Hlt
                | RunEnd::Shutdown
                | RunEnd::FailEntry { .. }
                | RunEnd::InternalError(_)
                | RunEnd::SystemEvent { .. }
                | RunEnd::Timeout { .. }
                | RunEnd::ProtocolError(_)
                | RunEnd::UnexpectedExit(_)
                | RunEnd::KvmRunFailed(_)
                | RunEnd::ExitLimit { .. }
                | RunEnd::Checkpoint { .. }
                | RunEnd::Paused
                | RunEnd::HostCheck(_)
                | RunEnd::Livelock { .. } => {}
            }
            assert!(
                hvprobe_results::END_KINDS.contains(&end.kind()),
                "{} is missing from results::END_KINDS",
                end.kind()
            );
        }
        assert!(hvprobe_results::END_KINDS.contains(&crate::runner::HARNESS_END));
        assert_eq!(hvprobe_results::END_KINDS.len(), ends.len() + 1, "results::END_KINDS names an end nothing makes");
    }

    fn case(flags: u32) -> TestCase {
        TestCase {
            name: "cpu::x::long64".into(),
            area: "cpu".into(),
            mode: Mode::Long64,
            path: Path::Hw,
            file: "cpu.rs".into(),
            line: 1,
            timeout: Some(Duration::from_secs(1)),
            requires: 0,
            flags,
            vcpus: 1,
            cpuid_clear: Vec::new(),
            migrate: None,
            quirks_off: 0,
            entry: 0x100000,
            desc_addr: 0x10a000,
        }
    }

    fn verdict(status: VerdictStatus, message: &str) -> RunReport {
        RunReport {
            end: Some(RunEnd::Verdict),
            verdict: Some(GuestVerdict {
                status,
                message: message.into(),
                file: "cpu.rs".into(),
                line: 7,
                values: Some((1, 2)),
                fault: None,
            }),
            ..RunReport::default()
        }
    }

    fn shutdown(bytes: &[u8]) -> RunReport {
        RunReport {
            end: Some(RunEnd::Shutdown),
            snapshot: Some(CpuSnapshot { rip: 0x1234, insn_bytes: bytes.to_vec(), ..CpuSnapshot::default() }),
            ..RunReport::default()
        }
    }

    fn profile(end: &str, insn_bytes: Option<&str>) -> Profile {
        Profile {
            backend: "kvm_pvm".into(),
            platform: None,
            source: "test.toml".into(),
            deviations: vec![Deviation {
                test: "cpu::x::long64".into(),
                end: end.into(),
                insn_bytes: insn_bytes.map(Into::into),
                message: None,
                expected: None,
                actual: None,
                cpu_family: None,
                cpu_vendor: None,
                who: None,
                elsewhere: None,
                deviates_from: "SDM Vol. 3A 6.15".into(),
            }],
        }
    }

    #[test]
    fn a_guest_verdict_decides_without_a_profile_entry() {
        let none = Profile::default();
        assert_eq!(judge(&case(0), &verdict(VerdictStatus::Pass, ""), &none).outcome, Outcome::Pass);
        let j = judge(&case(0), &verdict(VerdictStatus::Fail, "wrong vector"), &none);
        assert_eq!(j.outcome, Outcome::Fail);
        let f = j.failure.unwrap();
        assert_eq!((f.file.as_deref(), f.line, f.expected, f.actual), (Some("cpu.rs"), Some(7), Some(1), Some(2)));
        assert!(j.reason.unwrap().contains("cpu.rs:7: wrong vector (expected 0x1, actual 0x2)"));
        let j = judge(&case(0), &verdict(VerdictStatus::Skip, "no x2APIC"), &none);
        assert_eq!((j.outcome, j.reason.as_deref()), (Outcome::Skip, Some("guest: no x2APIC")));
    }

    #[test]
    fn a_matching_signature_is_xfail_and_a_mismatch_stays_a_failure() {
        let j = judge(&case(0), &shutdown(&[0x0f, 0x0b]), &profile("shutdown", Some("0f 0b")));
        assert_eq!(j.outcome, Outcome::Xfail);
        assert!(j.reason.unwrap().contains("SDM Vol. 3A 6.15"));
        let j = judge(&case(0), &shutdown(&[0xcc]), &profile("shutdown", Some("0f 0b")));
        assert_eq!(j.outcome, Outcome::Fail);
        assert!(j.reason.unwrap().contains("does not match"));
        let j = judge(&case(0), &shutdown(&[0x0f, 0x0b]), &profile("internal_error", None));
        assert_eq!(j.outcome, Outcome::Fail);
    }

    #[test]
    fn a_listed_test_that_passes_is_xpass() {
        let j = judge(&case(0), &verdict(VerdictStatus::Pass, ""), &profile("shutdown", None));
        assert_eq!(j.outcome, Outcome::Xpass);
        assert!(j.outcome.fails_run(false));
    }

    #[test]
    fn timeouts_are_expected_only_for_the_watchdog_cases() {
        let limit = Duration::from_secs(1);
        let report = RunReport { end: Some(RunEnd::Timeout { limit }), duration: limit, ..RunReport::default() };
        let spin = case(hvprobe_abi::flags::EXPECT_TIMEOUT);
        let j = judge(&spin, &report, &Profile::default());
        assert_eq!(j.outcome, Outcome::Timeout);
        assert!(!j.outcome.fails_run(true));
        let j = judge(&case(0), &report, &Profile::default());
        assert_eq!(j.outcome, Outcome::Timeout);
        assert!(j.outcome.fails_run(false));
        let j = judge(&spin, &verdict(VerdictStatus::Pass, ""), &Profile::default());
        assert_eq!(j.outcome, Outcome::Fail, "a spinning case that ends is a failure of the watchdog test");
        assert!(j.reason.unwrap().contains("expected the watchdog"));
    }
}
