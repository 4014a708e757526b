//! The harness driven directly with the real guest payload: the watchdog, console capping,
//! service overrides and ELF validation, checked on the RunReport itself.

use std::time::Duration;

use hvprobe_harness::{Kvm, Payload, PayloadError, RunEnd, RunOptions, Vm, VmConfig};
use hvprobe_suites::catalog::{GUEST_ELF, payload};

fn kvm() -> Option<Kvm> {
    Kvm::open().map_err(|e| eprintln!("skipped: /dev/kvm is unusable: {e}")).ok()
}

fn run(kvm: &Kvm, name: &str, options: RunOptions) -> hvprobe_harness::RunReport {
    let case = payload().unwrap().test(name).unwrap_or_else(|| panic!("{name} is not in the catalogue"));
    let mut vm = Vm::boot(kvm, payload().unwrap(), case, VmConfig::default()).unwrap();
    vm.run(options).unwrap()
}

#[test]
fn the_watchdog_stops_a_spinning_guest_at_its_limit_with_registers() {
    let Some(kvm) = kvm() else { return };
    for name in ["cpu::watchdog_spin::long64", "cpu::watchdog_spin::user64"] {
        let limit = Duration::from_millis(300);
        let report = run(&kvm, name, RunOptions { timeout: limit, ..RunOptions::default() });
        assert_eq!(report.end(), &RunEnd::Timeout { limit }, "{name}");
        assert!(
            report.duration >= limit && report.duration < limit + Duration::from_secs(1),
            "{name}: {:?}",
            report.duration
        );
        let snap = report.snapshot.expect("a timeout carries the registers");
        assert!(!snap.insn_bytes.is_empty(), "{name}: instruction bytes at RIP");
        assert_eq!(snap.cpl, if name.ends_with("user64") { 3 } else { 0 }, "{name}");
    }
}

#[test]
fn a_console_flood_is_capped_and_the_run_goes_on() {
    let Some(kvm) = kvm() else { return };
    let report = run(&kvm, "io::console_bulk::long64", RunOptions::default());
    assert_eq!(report.end(), &RunEnd::Verdict);
    assert_eq!(report.verdict.as_ref().map(|v| v.status), Some(hvprobe_harness::VerdictStatus::Pass));
    assert!(report.console_truncated);
    assert!(report.console.len() >= 64 * 1024 && report.console.len() <= 3 * 64 * 1024);
}

#[test]
fn suite_services_take_precedence_over_builtin_ones() {
    let Some(kvm) = kvm() else { return };
    let lie = Box::new(|id, _args| (id == hvprobe_abi::proto::service::ECHO_XOR).then_some(Ok(42)));
    let report = run(&kvm, "pv::host_service::long64", RunOptions { services: Some(lie), ..RunOptions::default() });
    let verdict = report.verdict.expect("the guest reports");
    assert_eq!(verdict.status, hvprobe_harness::VerdictStatus::Fail, "the guest saw the override's answer");
    assert_eq!(verdict.values.map(|v| v.1), Some(42), "actual value is what the override returned");
    assert!(verdict.file.ends_with("pv.rs") && verdict.line > 0);
    assert!(report.metrics.iter().any(|m| m.name == "service_roundtrip" && m.unit == "cycles"));
}

#[test]
fn kvm_stats_deltas_show_how_the_hypervisor_handled_the_run() {
    let Some(kvm) = kvm() else { return };
    let report = run(&kvm, "io::port_widths::long64", RunOptions::default());
    if let Some(e) = &report.stats_error {
        eprintln!("skipped: no binary stats here: {e}");
        return;
    }
    let exits = report.stats.iter().find(|s| s.name == "exits").map(|s| s.delta);
    assert!(exits.is_some_and(|n| n >= 8), "8 port accesses exit at least 8 times: {:?}", report.stats);
}

/// The real ELF with one byte range replaced.
fn patched(at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut elf = GUEST_ELF.to_vec();
    elf[at..at + bytes.len()].copy_from_slice(bytes);
    elf
}

#[test]
fn malformed_payloads_are_refused_with_the_reason() {
    assert!(Payload::parse(GUEST_ELF).is_ok());
    assert!(matches!(Payload::parse(&GUEST_ELF[..100]), Err(PayloadError::NotElf(_))));
    // e_machine (offset 18) = i386.
    assert_eq!(Payload::parse(&patched(18, &[3, 0])).unwrap_err(), PayloadError::WrongMachine(3));
    // e_type (offset 16) = ET_DYN.
    assert_eq!(Payload::parse(&patched(16, &[3, 0])).unwrap_err(), PayloadError::WrongType(3));
    // The first program header's p_paddr (phoff + 24) moved to 0xfff00000.
    let phoff = u64::from_le_bytes(GUEST_ELF[32..40].try_into().unwrap()) as usize;
    let e = Payload::parse(&patched(phoff + 24, &0xfff0_0000u64.to_le_bytes())).unwrap_err();
    assert!(matches!(e, PayloadError::SegmentOutOfRange { index: 0, .. }), "{e}");
    // p_filesz larger than p_memsz.
    let e = Payload::parse(&patched(phoff + 32, &u64::MAX.to_le_bytes())).unwrap_err();
    assert!(matches!(e, PayloadError::SegmentSizes { .. }), "{e}");
    // A test descriptor's magic broken: find the first "HVTD" in the file.
    let at = GUEST_ELF.windows(4).position(|w| w == b"HVTD").unwrap();
    let e = Payload::parse(&patched(at, b"XXXX")).unwrap_err();
    assert!(matches!(e, PayloadError::BadTest { .. }), "{e}");
}

#[test]
fn console_text_reaches_the_report() {
    let Some(kvm) = kvm() else { return };
    let report = run(&kvm, "cpu::boot::long64", RunOptions::default());
    assert_eq!(report.end(), &RunEnd::Verdict);
    assert_eq!(report.console, "long mode, EFER 0x500\n");
}
