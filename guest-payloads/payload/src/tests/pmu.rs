//! The performance-monitoring counters (APM Vol. 2, 13.2; SDM Vol. 3B chapter 20): RDPMC's
//! privilege and index checks run everywhere; the counters themselves need a virtual PMU
//! (requires PMU: KVM_CAP_PMU_CAPABILITY, which is 0 when kvm.enable_pmu is off) and skip
//! with that reason where the host offers none.
//!
//! Counter 0 is AMD's PerfEvtSel0/PerfCtr0 (C001_0000h/C001_0004h, present on every AMD64
//! processor) or Intel's IA32_PERFEVTSEL0/IA32_PMC0 (186h/C1h). Both vendors number the
//! "instructions retired" event C0h (umask 0), and "cycles" is 76h on AMD, 3Ch on Intel.

use core::sync::atomic::{AtomicU32, Ordering::SeqCst};

use hvprobe_rt::abi::requires;
use hvprobe_rt::apic::{Apic, reg};
use hvprobe_rt::cpu;
use hvprobe_rt::exception::{self, Frame, set_handler};
use hvprobe_rt::user::call_at_cpl3;
use hvprobe_rt::{catch, check, check_eq, check_exception, test_case};

use super::cpu::{try_rdmsr, try_wrmsr};

const CR4_PCE: u64 = 1 << 8;
/// PerfEvtSel bits (APM Figure 13-7; SDM Figure 20-1): USR, OS, INT (APIC interrupt on
/// overflow), EN.
const SEL_USR: u64 = 1 << 16;
const SEL_OS: u64 = 1 << 17;
const SEL_INT: u64 = 1 << 20;
const SEL_EN: u64 = 1 << 22;
const EVENT_INSTRUCTIONS: u64 = 0xc0;
/// The counters are 48 bits wide on both vendors' current parts (CPUID 8000_0022h on AMD,
/// CPUID.0AH:EAX[23:16] on Intel); the cases use values below 2^47.
const COUNTER_MASK: u64 = (1 << 48) - 1;
const PMI_VECTOR: u8 = 0xe5;

/// (event select MSR, counter MSR) of counter 0 on this vendor.
fn counter0() -> (u32, u32) {
    if cpu::is_amd() { (0xc001_0000, 0xc001_0004) } else { (0x186, 0xc1) }
}

fn event_cycles() -> u64 {
    if cpu::is_amd() { 0x76 } else { 0x3c }
}

fn write_cr4(value: u64) {
    // SAFETY: the cases toggle only CR4.PCE, which changes who may execute RDPMC.
    unsafe { cpu::write_cr4(value) };
}

fn wrmsr_ok(msr: u32, value: u64) {
    let e = try_wrmsr(msr, value);
    check!(e.is_none(), "WRMSR {:#x} <- {:#x} raised {:?}", msr, value, e);
}

fn rdmsr_ok(msr: u32) -> u64 {
    let r = try_rdmsr(msr);
    check!(r.is_ok(), "RDMSR {:#x} raised {:?}", msr, r.err());
    r.unwrap_or(0)
}

fn rdpmc(index: u32) -> Result<u64, exception::Exception> {
    let (mut lo, mut hi) = (0u32, 0u32);
    match catch!("rdpmc", in("ecx") index, out("eax") lo, out("edx") hi) {
        None => Ok(u64::from(hi) << 32 | u64::from(lo)),
        Some(e) => Err(e),
    }
}

/// Runs `n` iterations of a three-instruction loop (DEC, JNZ and a NOP).
fn spin(n: u64) {
    // SAFETY: register-only loop.
    unsafe { core::arch::asm!("2:", "nop", "dec {n}", "jnz 2b", n = inout(reg) n => _, options(nomem, nostack)) };
}

/// Counts `event` (with the OS/USR bits `who`) on counter 0 across `body`.
fn count(event: u64, who: u64, body: impl FnOnce()) -> u64 {
    let (sel, ctr) = counter0();
    wrmsr_ok(sel, 0);
    wrmsr_ok(ctr, 0);
    wrmsr_ok(sel, event | who | SEL_EN);
    body();
    wrmsr_ok(sel, 0);
    rdmsr_ok(ctr) & COUNTER_MASK
}

extern "C" fn rdpmc_at_cpl3(index: u64) {
    let (lo, hi): (u32, u32);
    // SAFETY: RDPMC reads a counter or faults; the CPL3 trampoline catches the fault.
    unsafe { core::arch::asm!("rdpmc", in("ecx") index as u32, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    CPL3_READ.store(lo, SeqCst);
    CPL3_READ_HI.store(hi, SeqCst);
}

static CPL3_READ: AtomicU32 = AtomicU32::new(0);
static CPL3_READ_HI: AtomicU32 = AtomicU32::new(0);

extern "C" fn spin_at_cpl3(n: u64) {
    spin(n);
}

test_case! {
    /// RDPMC at CPL3 with CR4.PCE clear raises #GP(0), whatever counters exist (APM Vol. 3
    /// RDPMC; SDM Vol. 2B RDPMC).
    name = "cpu::pmu_rdpmc_pce_clear::cpl3", mode = Long64, path = Hw;
    fn pmu_rdpmc_pce_clear_cpl3() {
        write_cr4(cpu::read_cr4() & !CR4_PCE);
        let e = call_at_cpl3(rdpmc_at_cpl3, 0);
        check!(e.is_some(), "RDPMC at CPL3 with CR4.PCE clear raised nothing");
        check_exception!(e, exception::GP, Some(0));
    }
}

test_case! {
    /// RDPMC of a counter index no processor implements (256) raises #GP(0) at CPL0 (APM
    /// Vol. 3 RDPMC: "ECX specified an unimplemented performance counter").
    name = "cpu::pmu_rdpmc_bad_index::long64", mode = Long64, path = Hw;
    fn pmu_rdpmc_bad_index() {
        let r = rdpmc(0x100);
        check!(r.is_err(), "RDPMC of counter 256 read {:#x}", r.unwrap_or(0));
        check_exception!(r.err(), exception::GP, Some(0));
    }
}

test_case! {
    /// RDPMC of counter 256 at CPL3 with CR4.PCE set raises #GP(0) too: PCE lifts the
    /// privilege check only (APM Vol. 3 RDPMC).
    name = "cpu::pmu_rdpmc_bad_index::cpl3", mode = Long64, path = Hw;
    fn pmu_rdpmc_bad_index_cpl3() {
        write_cr4(cpu::read_cr4() | CR4_PCE);
        let e = call_at_cpl3(rdpmc_at_cpl3, 0x100);
        write_cr4(cpu::read_cr4() & !CR4_PCE);
        check!(e.is_some(), "RDPMC of counter 256 at CPL3 raised nothing");
        check_exception!(e, exception::GP, Some(0));
    }
}

test_case! {
    /// A counter that is not enabled holds what was written to it, 48 bits wide (APM 13.2.1;
    /// SDM 20.2.1).
    name = "cpu::pmu_counter_write_read::long64", mode = Long64, path = Hw, requires = requires::PMU;
    fn pmu_counter_write_read() {
        let (sel, ctr) = counter0();
        wrmsr_ok(sel, 0);
        wrmsr_ok(ctr, 0x1234_5678_9abc);
        check_eq!(rdmsr_ok(ctr) & COUNTER_MASK, 0x1234_5678_9abc, "PerfCtr0 after a write, disabled");
        spin(1000);
        check_eq!(rdmsr_ok(ctr) & COUNTER_MASK, 0x1234_5678_9abc, "a disabled counter moved");
    }
}

test_case! {
    /// RDPMC 0 reads the counter RDMSR reads (APM Vol. 3 RDPMC).
    name = "cpu::pmu_rdpmc_matches_msr::long64", mode = Long64, path = Hw, requires = requires::PMU;
    fn pmu_rdpmc_matches_msr() {
        let (sel, ctr) = counter0();
        wrmsr_ok(sel, 0);
        wrmsr_ok(ctr, 0x4242_4242);
        let r = rdpmc(0);
        check!(r.is_ok(), "RDPMC 0 at CPL0 raised {:?}", r.err());
        check_eq!(r.unwrap_or(0) & COUNTER_MASK, 0x4242_4242, "RDPMC 0 (expected: PerfCtr0)");
    }
}

test_case! {
    /// Counting retired instructions at CPL0 across a loop of 3 x 1000 instructions
    /// counts at least 3000 and not wildly more (APM 13.2.1, event C0h).
    name = "cpu::pmu_count_instructions::long64", mode = Long64, path = Hw, requires = requires::PMU;
    fn pmu_count_instructions() {
        let n = count(EVENT_INSTRUCTIONS, SEL_OS | SEL_USR, || spin(1000));
        check!((3000..30_000).contains(&n), "instructions retired over 3000 counted as {}", n);
    }
}

test_case! {
    /// The cycles event counts up while the vCPU runs (APM event 76h; SDM event 3Ch).
    name = "cpu::pmu_count_cycles::long64", mode = Long64, path = Hw, requires = requires::PMU;
    fn pmu_count_cycles() {
        let n = count(event_cycles(), SEL_OS | SEL_USR, || spin(10_000));
        check!(n >= 10_000, "cycles over 30,000 instructions counted as {}", n);
    }
}

test_case! {
    /// The USR bit alone counts CPL3 work and not CPL0 work (APM 13.2.1, PerfEvtSel
    /// bits 16-17).
    name = "cpu::pmu_usr_only::long64", mode = Long64, path = Hw, requires = requires::PMU;
    fn pmu_usr_only() {
        let kernel = count(EVENT_INSTRUCTIONS, SEL_USR, || spin(1000));
        check!(kernel < 1000, "USR-only counted {} instructions of a CPL0 loop of 3000", kernel);
        let user = count(EVENT_INSTRUCTIONS, SEL_USR, || {
            let e = call_at_cpl3(spin_at_cpl3, 1000);
            check!(e.is_none(), "the CPL3 loop raised {:?}", e);
        });
        check!(user >= 3000, "USR-only counted {} instructions of a CPL3 loop of 3000", user);
    }
}

test_case! {
    /// With CR4.PCE set RDPMC works at CPL3 and reads the counter (APM Vol. 3 RDPMC).
    name = "cpu::pmu_rdpmc_pce_set::cpl3", mode = Long64, path = Hw, requires = requires::PMU;
    fn pmu_rdpmc_pce_set() {
        let (sel, ctr) = counter0();
        wrmsr_ok(sel, 0);
        wrmsr_ok(ctr, 0x77_0000);
        write_cr4(cpu::read_cr4() | CR4_PCE);
        let e = call_at_cpl3(rdpmc_at_cpl3, 0);
        write_cr4(cpu::read_cr4() & !CR4_PCE);
        check!(e.is_none(), "RDPMC at CPL3 with CR4.PCE set raised {:?}", e);
        check_eq!(CPL3_READ.load(SeqCst), 0x77_0000, "RDPMC 0 at CPL3 (low half)");
        check_eq!(CPL3_READ_HI.load(SeqCst), 0, "RDPMC 0 at CPL3 (high half)");
    }
}

static PMIS: AtomicU32 = AtomicU32::new(0);

fn pmi_handler(_: &mut Frame) {
    PMIS.fetch_add(1, SeqCst);
    Apic::XApic.eoi();
}

fn backstop(_: &mut Frame) {
    Apic::XApic.eoi();
}

test_case! {
    /// A counter preset near overflow with INT set interrupts through LVT performance
    /// counter when it wraps (APM 13.2.1 and 16.4.5; SDM 20.6.3.5.8).
    name = "cpu::pmu_overflow_interrupt::xapic", mode = Long64, path = Hw,
        requires = requires::PMU | requires::IRQCHIP;
    fn pmu_overflow_interrupt() {
        let apic = Apic::XApic.enable();
        set_handler(PMI_VECTOR, pmi_handler);
        set_handler(0xe6, backstop);
        apic.write(reg::LVT_PERF, u32::from(PMI_VECTOR));
        let (sel, ctr) = counter0();
        wrmsr_ok(sel, 0);
        wrmsr_ok(ctr, COUNTER_MASK - 100);
        wrmsr_ok(sel, EVENT_INSTRUCTIONS | SEL_OS | SEL_USR | SEL_INT | SEL_EN);
        spin(1000);
        apic.hlt_with_backstop(0xe6, 10_000_000);
        wrmsr_ok(sel, 0);
        check_eq!(PMIS.load(SeqCst), 1, "overflow interrupts after the counter wrapped");
    }
}
