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
fn a_failed_service_says_why_in_the_report() {
    let Some(kvm) = kvm() else { return };
    let refuse = Box::new(|id, _args| {
        (id == hvprobe_abi::proto::service::ECHO_XOR)
            .then(|| Err(hvprobe_harness::ServiceError::Refused("no echo on this host".into())))
    });
    let report = run(&kvm, "pv::host_service::long64", RunOptions { services: Some(refuse), ..RunOptions::default() });
    let verdict = report.verdict.expect("the guest reports");
    assert_eq!(verdict.status, hvprobe_harness::VerdictStatus::Fail, "the guest saw SERVICE_FAILED");
    let id = hvprobe_abi::proto::service::ECHO_XOR;
    assert!(
        report.notes.iter().any(|n| *n == format!("service {id} failed: no echo on this host")),
        "the reason is kept: {:?}",
        report.notes
    );
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
fn declared_cpuid_clears_reach_the_case_and_a_bad_register_is_refused() {
    use hvprobe_abi::{CpuidClear, TestDesc};
    let payload = Payload::parse(GUEST_ELF).unwrap();
    let case = payload.test("cpu::msr_flush_cmd_absent::long64").unwrap();
    assert_eq!(
        case.cpuid_clear,
        [CpuidClear::new(7, 0, CpuidClear::EDX, hvprobe_abi::cpuid_removed::FLUSH_CMD_LEAF7_EDX)]
    );
    // That descriptor's first edit names register 9 instead of EDX.
    let name = fixed_name(&case.name);
    let at = GUEST_ELF.windows(name.len()).position(|w| w == name).unwrap() - std::mem::offset_of!(TestDesc, name);
    let reg = at + std::mem::offset_of!(TestDesc, cpuid_clear) + 8;
    assert_eq!(GUEST_ELF[reg..reg + 4], CpuidClear::EDX.to_le_bytes());
    let e = Payload::parse(&patched(reg, &9u32.to_le_bytes())).unwrap_err();
    assert!(e.to_string().contains("cpuid_clear names register 9"), "{e}");
}

/// A name as the descriptor stores it, with the NUL that ends it.
fn fixed_name(name: &str) -> Vec<u8> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

#[test]
fn console_text_reaches_the_report() {
    let Some(kvm) = kvm() else { return };
    let report = run(&kvm, "cpu::boot::long64", RunOptions::default());
    assert_eq!(report.end(), &RunEnd::Verdict);
    assert_eq!(report.console, "long mode, EFER 0x500\n");
}

/// The pattern `state::isolation_pattern::long64` writes for `seed`, and its checksum, as
/// the guest computes it.
fn pattern_checksum(seed: u64) -> u64 {
    let (mut x, mut sum) = (seed | 1, 0u64);
    for _ in 0..32 * 1024 / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sum = sum.wrapping_add(x).rotate_left(1);
    }
    sum
}

#[test]
fn twice_as_many_vms_as_cores_at_once_each_see_only_their_own_memory() {
    let Some(kvm) = kvm() else { return };
    let n = 2 * std::thread::available_parallelism().map_or(1, |n| n.get()).max(2);
    let reports: Vec<(u64, hvprobe_harness::RunReport)> = std::thread::scope(|s| {
        let kvm = &kvm;
        let handles: Vec<_> = (0..n as u64)
            .map(|i| {
                let seed = 0x1000 + i * 0x9e37;
                s.spawn(move || {
                    let options = RunOptions { seed, ..RunOptions::default() };
                    (seed, run(kvm, "state::isolation_pattern::long64", options))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (seed, report) in reports {
        assert_eq!(report.end(), &RunEnd::Verdict, "seed {seed:#x}: {}", report.end().describe());
        let v = report.verdict.as_ref().unwrap();
        assert_eq!(v.status, hvprobe_harness::VerdictStatus::Pass, "seed {seed:#x}: {}", v.message);
        let sum = report.metrics.iter().find(|m| m.name == "pattern_checksum").map(|m| m.value);
        assert_eq!(sum, Some(pattern_checksum(seed)), "seed {seed:#x}: the VM saw another pattern");
    }
}

#[test]
fn a_snapshot_file_round_trips_and_bad_files_are_clear_errors() {
    let Some(kvm) = kvm() else { return };
    let case = payload().unwrap().test("state::restore_memory::long64").unwrap();
    let mut vm = Vm::boot(&kvm, payload().unwrap(), case, VmConfig::default()).unwrap();
    let report = vm.run(RunOptions::default()).unwrap();
    assert_eq!(report.end(), &RunEnd::Checkpoint { tag: 1 });
    let (snap, _) = vm.save(&case.name).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.snapshot");
    snap.write(&path).unwrap();
    let back = hvprobe_harness::Snapshot::read(&path).unwrap();
    assert_eq!(back.case, case.name);
    assert_eq!(back.memory, snap.memory);
    assert_eq!(back.vcpus.len(), 1);
    assert_eq!(back.vcpus[0].regs.rip, snap.vcpus[0].regs.rip);
    assert_eq!(back.vcpus[0].msrs.len(), snap.vcpus[0].msrs.len());
    // The restored VM finishes the case.
    let (mut restored, _) = Vm::restore(&kvm, payload().unwrap(), case, VmConfig::default(), &back).unwrap();
    let report = restored.run(RunOptions::default()).unwrap();
    assert_eq!(report.verdict.map(|v| v.status), Some(hvprobe_harness::VerdictStatus::Pass));

    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.snapshot");
    std::fs::write(&cut, &bytes[..bytes.len() - 4096]).unwrap();
    let e = hvprobe_harness::Snapshot::read(&cut).err().unwrap().to_string();
    assert!(e.contains("cut.snapshot") && e.contains("truncated"), "{e}");
    let junk = dir.path().join("junk.snapshot");
    std::fs::write(&junk, b"{\"format\":\"something/9\"}\n").unwrap();
    let e = hvprobe_harness::Snapshot::read(&junk).err().unwrap().to_string();
    assert!(e.contains("something/9"), "{e}");
    // Endless or huge input is refused after a bounded read, not read into memory.
    let e = hvprobe_harness::Snapshot::read(std::path::Path::new("/dev/zero")).err().unwrap().to_string();
    assert!(e.contains("no header line within"), "{e}");
    let long = dir.path().join("long.snapshot");
    std::fs::write(&long, vec![b'x'; (16 << 20) + 10]).unwrap();
    let e = hvprobe_harness::Snapshot::read(&long).err().unwrap().to_string();
    assert!(e.contains("no header line within"), "{e}");
    let mut grown = bytes.clone();
    grown.extend_from_slice(&[0; 4096]);
    std::fs::write(&long, &grown).unwrap();
    let e = hvprobe_harness::Snapshot::read(&long).err().unwrap().to_string();
    assert!(e.contains("memory is"), "memory beyond the guest's RAM is refused: {e}");
    // A snapshot of one case does not restore as another.
    let other = payload().unwrap().test("state::fresh_vm::long64").unwrap();
    assert!(Vm::restore(&kvm, payload().unwrap(), other, VmConfig::default(), &back).is_err());
}

fn open_fds() -> usize {
    hvprobe_suites::process::open_fds().unwrap()
}

#[test]
fn an_irqfd_storm_is_capped_and_its_fds_return() {
    let Some(kvm) = kvm() else { return };
    let payload = payload().unwrap();
    let case = payload.test("hostile::irqfd_storm::user64").unwrap();
    // Other tests of this binary run in parallel and open fds too: compare the most
    // this run could add with what the cap allows.
    let before = open_fds();
    let mut vm = Vm::boot(&kvm, payload, case, VmConfig { irqchip: true, ..VmConfig::default() }).unwrap();
    let report = vm.run(RunOptions { timeout: Duration::from_secs(30), ..RunOptions::default() }).unwrap();
    let during = open_fds();
    assert_eq!(report.verdict.as_ref().map(|v| v.status), Some(hvprobe_harness::VerdictStatus::Pass), "{report:?}");
    assert!(
        during < before + 2 * hvprobe_abi::limits::MAX_IRQFDS + 64,
        "{during} fds open during the storm, {before} before"
    );
    drop(vm);
    assert!(open_fds() < during, "the VM's fds are closed with it");
}

#[test]
fn a_hung_benchmark_session_is_stopped_before_finish_returns() {
    let Some(kvm) = kvm() else { return };
    let case = payload().unwrap().bench("bench::cpuid::long64").unwrap();
    if !kvm.missing_requirements(case.requires).is_empty() {
        return;
    }
    let mut session = hvprobe_suites::bench::Session::start(case).unwrap();
    session.batch(1, false).expect("a first batch");
    // A limit no batch can meet makes the session count its guest as hung.
    session.set_batch_limit(Duration::ZERO);
    assert!(session.batch(1_000_000, false).unwrap_err().contains("hangs"));
    let t = std::time::Instant::now();
    let report = session.finish().expect("the run thread is joined").expect("the run ended without error");
    assert_eq!(report.end(), &RunEnd::Paused, "{}", report.end().describe());
    assert!(t.elapsed() < Duration::from_secs(1), "stopping the hung guest took {:?}", t.elapsed());
}

#[test]
fn a_moved_tsc_starts_every_vcpu_there_where_the_backend_takes_the_write() {
    let Some(kvm) = kvm() else { return };
    const START: u64 = 1 << 52;
    let holds = kvm.tsc_write_holds(START).unwrap();
    let case = payload().unwrap().test("cpu::tsc_warp::smp2").unwrap();
    let config = VmConfig { vcpus: 2, irqchip: true, tsc_start: Some(START), ..VmConfig::default() };
    let vm = Vm::boot(&kvm, payload().unwrap(), case, config).unwrap();
    for index in 0..2 {
        let state = vm.save_vcpu(index).unwrap();
        let tsc = state.msrs.iter().find(|m| m.index == 0x10).map(|m| m.data).expect("the state holds IA32_TSC");
        // Where the backend takes the write, the TSC is there or a moment past it (ten
        // seconds at 1 GHz, as the probe allows); where it does not (PVM), it is the
        // backend's own, elsewhere.
        let there = tsc.wrapping_sub(START) < 10_000_000_000;
        assert_eq!(there, holds, "vCPU {index}: IA32_TSC {tsc:#x}, the probe says the write holds: {holds}");
    }
}
