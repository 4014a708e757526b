//! Time across vCPUs: every vCPU reads the TSC (or its own kvmclock) in a tight loop at
//! the same time, and each reading is compared with the largest any vCPU had published
//! before it read. A reading below that is a warp: time seen going backwards when a
//! thread moves between vCPUs. The TSC case needs the invariant TSC KVM offers (SDM Vol.
//! 3B 18.17.1; KVM keeps vCPUs' TSCs matched: Documentation/virt/kvm/x86/timekeeping.rst);
//! the kvmclock case needs PVCLOCK_TSC_STABLE_BIT, which is KVM's promise that the clock
//! is monotonic across vCPUs (Documentation/virt/kvm/x86/msr.rst).

use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use super::cpu::cpuid_as_set;
use hvprobe_rt::abi::proto::{TSC_OFFSET_ADD, TSC_OFFSET_READ, service};
use hvprobe_rt::abi::requires::{IRQCHIP, KVM_PV, TSC_CTRL};
use hvprobe_rt::apic::{Apic, reg};
use hvprobe_rt::exception::{Frame, set_handler};
use hvprobe_rt::{check, check_eq, check_values, cpu, kvmclock, skip, test_case};

const START_VECTOR: u8 = 0x4c;
/// Reads per vCPU: on PVM every CPL0 instruction is emulated (about 1 us), so a read costs
/// tens of microseconds there.
const READS: u64 = 3_000;

/// 0: TSC; 1: kvmclock.
static CLOCK: AtomicU64 = AtomicU64::new(0);
static GO: AtomicU64 = AtomicU64::new(0);
static READY: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicU64 = AtomicU64::new(0);
static LAST: AtomicU64 = AtomicU64::new(0);
static WARPS: AtomicU64 = AtomicU64::new(0);
static LARGEST_WARP: AtomicU64 = AtomicU64::new(0);

/// Each vCPU's pvclock structure, 64 bytes apart in the kvmclock page.
fn clock_addr(id: u32) -> u64 {
    kvmclock::PAGE + 64 * u64::from(id)
}

fn read(id: u32) -> u64 {
    if CLOCK.load(SeqCst) == 0 {
        // SAFETY: LFENCE keeps RDTSC from running ahead of the load of LAST.
        unsafe { core::arch::asm!("lfence", options(nostack, nomem)) };
        cpu::rdtsc()
    } else {
        kvmclock::read_at(clock_addr(id)).ns()
    }
}

fn warp_loop(id: u32) {
    for _ in 0..READS {
        let before = LAST.load(SeqCst);
        let now = read(id);
        if now < before {
            WARPS.fetch_add(1, SeqCst);
            LARGEST_WARP.fetch_max(before - now, SeqCst);
        }
        LAST.fetch_max(now, SeqCst);
    }
}

/// On an application processor: start its clock, wait for vCPU 0's go, read, report.
fn ap_reader(_: &mut Frame) {
    let id = Apic::XApic.read(reg::ID) >> 24;
    if CLOCK.load(SeqCst) == 1 {
        kvmclock::enable_at(clock_addr(id));
    }
    READY.fetch_add(1, SeqCst);
    while GO.load(SeqCst) == 0 {
        core::hint::spin_loop();
    }
    warp_loop(id);
    DONE.fetch_add(1, SeqCst);
    Apic::XApic.eoi();
}

fn warp_case(clock: u64, vcpus: u64) {
    CLOCK.store(clock, SeqCst);
    if clock == 0 && cpuid_as_set(0x8000_0007, 0).is_none_or(|c| c.edx & 1 << 8 == 0) {
        skip!("KVM does not offer an invariant TSC (CPUID 8000_0007h:EDX[8])");
    }
    if clock == 1 {
        if cpuid_as_set(0x4000_0001, 0).is_none_or(|c| c.eax & kvmclock::KVM_FEATURE_CLOCKSOURCE2 == 0) {
            skip!("the host does not advertise KVM_FEATURE_CLOCKSOURCE2");
        }
        kvmclock::enable_at(clock_addr(0));
        if kvmclock::read_at(clock_addr(0)).flags & 1 == 0 {
            skip!("KVM leaves PVCLOCK_TSC_STABLE_BIT clear: it promises no monotonic kvmclock across vCPUs");
        }
    }
    set_handler(START_VECTOR, ap_reader);
    let apic = Apic::XApic.enable();
    check!(hvprobe_rt::smp::wait_online(vcpus - 1, 2_000_000), "the application processors did not come online");
    // All excluding self (ICR destination shorthand 11b), fixed, edge.
    apic.write(reg::ICR_HIGH, 0);
    apic.write(reg::ICR_LOW, 0b11 << 18 | START_VECTOR as u32);
    // Every loop here spins on a shared word only: on PVM each CPL0 instruction is
    // emulated, so a fixed delay loop would cost seconds.
    let mut waits = 0u64;
    while READY.load(SeqCst) < vcpus - 1 && waits < 5_000_000 {
        waits += 1;
        core::hint::spin_loop();
    }
    check_eq!(READY.load(SeqCst), vcpus - 1, "application processors ready to read");
    GO.store(1, SeqCst);
    warp_loop(0);
    let mut waits = 0u64;
    while DONE.load(SeqCst) < vcpus - 1 && waits < 200_000_000 {
        waits += 1;
        core::hint::spin_loop();
    }
    check_eq!(DONE.load(SeqCst), vcpus - 1, "application processors that finished their reads");
    let warps = WARPS.load(SeqCst);
    check_values!(
        warps == 0,
        0,
        warps,
        "readings below a value another vCPU had already read (expected: none; actual: the count)"
    );
}

test_case! {
    /// The TSC never warps between two vCPUs.
    name = "cpu::tsc_warp::smp2", mode = Long64, path = Hw, requires = IRQCHIP, vcpus = 2;
    fn tsc_warp_smp2() {
        warp_case(0, 2);
    }
}

test_case! {
    /// The TSC never warps among four vCPUs.
    name = "cpu::tsc_warp::smp4", mode = Long64, path = Hw, requires = IRQCHIP, vcpus = 4;
    fn tsc_warp_smp4() {
        warp_case(0, 4);
    }
}

test_case! {
    /// kvmclock never warps between two vCPUs while it says it is stable.
    name = "pv::kvmclock_warp::smp2", mode = Long64, path = Para, requires = IRQCHIP | KVM_PV, vcpus = 2;
    fn kvmclock_warp_smp2() {
        warp_case(1, 2);
    }
}

test_case! {
    /// kvmclock never warps among four vCPUs while it says it is stable.
    name = "pv::kvmclock_warp::smp4", mode = Long64, path = Para, requires = IRQCHIP | KVM_PV, vcpus = 4;
    fn kvmclock_warp_smp4() {
        warp_case(1, 4);
    }
}

static AP_TSC: AtomicU64 = AtomicU64::new(0);
const TSC_READ_VECTOR: u8 = 0x4e;

fn ap_tsc(_: &mut Frame) {
    AP_TSC.store(cpu::rdtsc(), SeqCst);
    Apic::XApic.eoi();
}

/// Asks vCPU 1 (by IPI) to read its TSC, waits for the reading, and returns how far this
/// vCPU's TSC, read right after, is ahead of it.
fn gap_to_vcpu1(apic: Apic) -> u64 {
    apic.write(reg::ICR_HIGH, 1 << 24);
    apic.write(reg::ICR_LOW, TSC_READ_VECTOR as u32);
    let mut waits = 0u64;
    while AP_TSC.load(SeqCst) == 0 && waits < 5_000_000 {
        waits += 1;
        core::hint::spin_loop();
    }
    let mine = cpu::rdtsc();
    let theirs = AP_TSC.load(SeqCst);
    check!(theirs != 0, "vCPU 1 did not read its TSC");
    mine.wrapping_sub(theirs)
}

test_case! {
    /// IA32_TSC_ADJUST is per logical processor: adding 2^40 on vCPU 0 moves vCPU 0's TSC
    /// by that much and leaves vCPU 1's where it was (SDM Vol. 3B 18.17.3; Vol. 4
    /// Table 2-2, "thread" scope).
    name = "cpu::tsc_adjust_per_vcpu::smp2", mode = Long64, path = Full, requires = IRQCHIP, vcpus = 2;
    fn tsc_adjust_per_vcpu() {
        if cpuid_as_set(7, 0).is_none_or(|c| c.ebx & 1 << 1 == 0) {
            skip!("KVM does not offer IA32_TSC_ADJUST (CPUID.(7,0):EBX[1])");
        }
        set_handler(TSC_READ_VECTOR, ap_tsc);
        let apic = Apic::XApic.enable();
        check!(hvprobe_rt::smp::wait_online(1, 2_000_000), "vCPU 1 did not come online");
        const JUMP: u64 = 1 << 40;
        // SAFETY: IA32_TSC_ADJUST (3Bh) exists where the table offers it; put back below.
        let adjust = unsafe { cpu::rdmsr(0x3b) };
        // SAFETY: as above.
        unsafe { cpu::wrmsr(0x3b, adjust.wrapping_add(JUMP)) };
        let gap = gap_to_vcpu1(apic);
        // SAFETY: as above.
        unsafe { cpu::wrmsr(0x3b, adjust) };
        check_values!(
            (JUMP / 2..JUMP + JUMP / 2).contains(&gap),
            JUMP,
            gap,
            "vCPU 0's TSC ahead of vCPU 1's by the adjustment (expected: 2^40; actual: the gap)"
        );
    }
}

// The vCPU's TSC offset as the VMM sees it (KVM_VCPU_TSC_CTRL, devices/vcpu.rst 4.1:
// "the guest TSC value is the host TSC plus the offset", without TSC scaling, which no
// backend here offers: KVM_CAP_TSC_CONTROL is 0). The TSC_OFFSET service reads and moves
// vCPU 0's offset.

const OFFSET_JUMP: u64 = 1 << 40;

fn tsc_offset(op: u64, arg: u64) -> u64 {
    let r = hvprobe_rt::proto::service(service::TSC_OFFSET, [op, arg, 0, 0]);
    check!(r.is_ok(), "the TSC_OFFSET service failed: {:?}", r);
    r.unwrap_or(0)
}

static CPL3_BRACKET: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// RDTSC, the host's view of this vCPU's TSC, RDTSC, at whatever CPL it runs.
extern "C" fn bracket_host_view(_: u64) {
    let before = cpu::rdtsc();
    let host = hvprobe_rt::proto::service(service::TSC_OFFSET, [TSC_OFFSET_READ, 0, 0, 0]).unwrap_or(0);
    let after = cpu::rdtsc();
    for (slot, v) in CPL3_BRACKET.iter().zip([before, host, after]) {
        slot.store(v, SeqCst);
    }
}

fn check_bracket(cpl3: bool) {
    let e = super::cpu::call_at(cpl3, bracket_host_view, 0);
    check!(e.is_none(), "reading the TSC around the service raised {:?}", e);
    let [before, host, after] = CPL3_BRACKET.each_ref().map(|a| a.load(SeqCst));
    check!(host != 0, "the TSC_OFFSET service failed");
    check!(
        before <= host && host <= after,
        "host TSC + offset {:#x} outside the guest's reads around it [{:#x}, {:#x}] (host - first read: {})",
        host,
        before,
        after,
        host.wrapping_sub(before) as i64
    );
}

test_case! {
    /// The guest's TSC is the host's TSC plus the offset KVM_VCPU_TSC_CTRL reports: the
    /// host's sum lies between two guest reads around the request (devices/vcpu.rst 4.1).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::tsc_offset_read", cpl = [0, 3], mode = Long64, path = Full, requires = TSC_CTRL;
    fn tsc_offset_read(cpl3: bool) {
        check_bracket(cpl3);
    }
}

static CPL3_TSC: AtomicU64 = AtomicU64::new(0);

extern "C" fn read_tsc(_: u64) {
    CPL3_TSC.store(cpu::rdtsc(), SeqCst);
}

/// Moves the offset by `delta` (2^40 forward or back) and checks the TSC, read at CPL0 or
/// CPL3, moved with it.
fn check_offset_jump(cpl3: bool, delta: u64) {
    let before = cpu::rdtsc();
    tsc_offset(TSC_OFFSET_ADD, delta);
    let e = super::cpu::call_at(cpl3, read_tsc, 0);
    check!(e.is_none(), "reading the TSC raised {:?}", e);
    let gap = CPL3_TSC.load(SeqCst).wrapping_sub(before).wrapping_sub(delta);
    check_values!(
        gap < 1 << 36,
        delta,
        CPL3_TSC.load(SeqCst).wrapping_sub(before),
        "the TSC's move over a KVM_VCPU_TSC_OFFSET change (expected: the change plus the time between; actual: the move)"
    );
}

test_case! {
    /// Adding 2^40 to the vCPU's TSC offset moves its TSC forward by 2^40 (devices/vcpu.rst
    /// 4.1).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::tsc_offset_add", cpl = [0, 3], mode = Long64, path = Full, requires = TSC_CTRL;
    fn tsc_offset_add(cpl3: bool) {
        check_offset_jump(cpl3, OFFSET_JUMP);
    }
}

test_case! {
    /// The TSC offset is per vCPU: adding 2^40 to vCPU 0's leaves vCPU 1's TSC where it
    /// was (devices/vcpu.rst 4.1, an attribute of one vCPU).
    name = "cpu::tsc_offset_per_vcpu::smp2", mode = Long64, path = Full, requires = IRQCHIP | TSC_CTRL, vcpus = 2;
    fn tsc_offset_per_vcpu() {
        set_handler(TSC_READ_VECTOR, ap_tsc);
        let apic = Apic::XApic.enable();
        check!(hvprobe_rt::smp::wait_online(1, 2_000_000), "vCPU 1 did not come online");
        tsc_offset(TSC_OFFSET_ADD, OFFSET_JUMP);
        let gap = gap_to_vcpu1(apic);
        check_values!(
            (OFFSET_JUMP / 2..OFFSET_JUMP + OFFSET_JUMP / 2).contains(&gap),
            OFFSET_JUMP,
            gap,
            "vCPU 0's TSC ahead of vCPU 1's by the offset added to vCPU 0 (expected: 2^40; actual: the gap)"
        );
    }
}

test_case! {
    /// Taking 2^40 off the offset moves the TSC back by that much (devices/vcpu.rst 4.1).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::tsc_offset_sub", cpl = [0, 3], mode = Long64, path = Full, requires = TSC_CTRL;
    fn tsc_offset_sub(cpl3: bool) {
        check_offset_jump(cpl3, OFFSET_JUMP.wrapping_neg());
    }
}

test_case! {
    /// After the offset moved, the host's TSC plus the new offset is again the guest's TSC
    /// (devices/vcpu.rst 4.1).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::tsc_offset_read_after_add", cpl = [0, 3], mode = Long64, path = Full, requires = TSC_CTRL;
    fn tsc_offset_read_after_add(cpl3: bool) {
        tsc_offset(TSC_OFFSET_ADD, OFFSET_JUMP);
        check_bracket(cpl3);
    }
}

test_case! {
    /// kvmclock stays continuous when the VMM moves the TSC offset: KVM recomputes the
    /// pvclock parameters from the new TSC, so the clock's reading moves by the real time
    /// between, not by 2^40 cycles (Documentation/virt/kvm/x86/msr.rst, MSR_KVM_SYSTEM_TIME_NEW:
    /// "the guest ... must use the tsc_timestamp / system_time pair").
    name = "pv::kvmclock_across_tsc_offset::long64", mode = Long64, path = Para, requires = KVM_PV | TSC_CTRL;
    fn kvmclock_across_tsc_offset() {
        kvmclock::enable();
        let before = kvmclock::ns();
        tsc_offset(TSC_OFFSET_ADD, OFFSET_JUMP);
        let after = kvmclock::ns();
        check_values!(
            after >= before && after - before < 1_000_000_000,
            0,
            after.wrapping_sub(before),
            "kvmclock ns across a TSC offset change of 2^40 cycles (expected: small and forward; actual: the move)"
        );
    }
}
