//! The `irq` area: the local APIC and its timer, through xAPIC MMIO and x2APIC MSRs.

use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use hvprobe_rt::abi;
use hvprobe_rt::apic::{Apic, reg};
use hvprobe_rt::exception::{Frame, set_handler};
use hvprobe_rt::{check, check_eq, cpu, metric, test_case};

const TIMER_VECTOR: u8 = 0x40;
static TIMER_FIRED: AtomicU64 = AtomicU64::new(0);
static TIMER_TSC: AtomicU64 = AtomicU64::new(0);
static ACTIVE_APIC: AtomicU64 = AtomicU64::new(0);

fn timer_handler(frame: &mut Frame) {
    TIMER_TSC.store(cpu::rdtsc(), SeqCst);
    TIMER_FIRED.fetch_add(1, SeqCst);
    check_eq!(frame.vector, TIMER_VECTOR as u64);
    let apic = if ACTIVE_APIC.load(SeqCst) == 1 { Apic::X2Apic } else { Apic::XApic };
    apic.eoi();
}

/// Arms a one-shot timer of 100,000 bus cycles at divide-by-1 and waits for it
/// (SDM Vol. 3A, 11.5.4: one-shot mode counts down once, raises the LVT vector, stops).
fn timer_oneshot(apic: Apic) {
    ACTIVE_APIC.store((apic == Apic::X2Apic) as u64, SeqCst);
    set_handler(TIMER_VECTOR, timer_handler);
    let apic = apic.enable();
    apic.write(reg::TIMER_DIVIDE, 0b1011);
    apic.write(reg::LVT_TIMER, TIMER_VECTOR as u32);
    let start = cpu::rdtsc();
    apic.write(reg::TIMER_INITIAL, 100_000);
    while TIMER_FIRED.load(SeqCst) == 0 {
        cpu::sti_hlt();
    }
    metric("timer_arm_to_handler", "cycles", TIMER_TSC.load(SeqCst) - start);
    check_eq!(TIMER_FIRED.load(SeqCst), 1, "one-shot fires once");
    check_eq!(apic.read(reg::TIMER_CURRENT), 0, "current count stops at 0");
}

test_case! {
    /// A one-shot LAPIC timer programmed through the xAPIC page interrupts once.
    name = "irq::lapic_timer_oneshot::xapic", mode = Long64, path = Full,
        requires = abi::requires::IRQCHIP;
    fn lapic_timer_oneshot_xapic() {
        timer_oneshot(Apic::XApic);
    }
}

test_case! {
    /// The same timer through x2APIC MSRs (SDM Vol. 3A, 11.12).
    name = "irq::lapic_timer_oneshot::x2apic", mode = Long64, path = Hw,
        requires = abi::requires::IRQCHIP | abi::requires::X2APIC;
    fn lapic_timer_oneshot_x2apic() {
        timer_oneshot(Apic::X2Apic);
    }
}

test_case! {
    /// The boot vCPU's xAPIC ID is 0 and the version register names an integrated APIC
    /// (version 0x1X) with at least the five LVT entries up to LVT Error
    /// (SDM Vol. 3A, 11.4.6 and 11.4.8).
    name = "irq::lapic_id_version::xapic", mode = Long64, path = Full,
        requires = abi::requires::IRQCHIP;
    fn lapic_id_version() {
        let apic = Apic::XApic.enable();
        check_eq!(apic.read(reg::ID) >> 24, 0, "APIC ID of vCPU 0");
        let version = apic.read(reg::VERSION);
        check_eq!(version & 0xf0, 0x10, "integrated APIC version");
        check!((version >> 16) & 0xff >= 4, "max LVT entry {}", (version >> 16) & 0xff);
    }
}

/// IPIs between vCPUs (SDM Vol. 3A, 11.6: issuing interprocessor interrupts). The
/// application processors idle in `rt::smp` with their xAPIC enabled; this handler runs on
/// whichever takes the IPI and records its APIC ID.
const IPI_VECTOR: u8 = 0x43;
static IPI_TAKEN: AtomicU64 = AtomicU64::new(0);
/// Bit n set: the vCPU with APIC ID n took the IPI.
static IPI_TAKERS: AtomicU64 = AtomicU64::new(0);
/// Polls of a shared counter before an IPI counts as lost (each poll is an emulated
/// instruction or two at CPL0 on PVM: seconds in all, far beyond any delivery).
const IPI_SPINS: u64 = 2_000_000;

fn ipi_taker(_: &mut Frame) {
    let id = Apic::XApic.read(reg::ID) >> 24;
    IPI_TAKERS.fetch_or(1 << id, SeqCst);
    IPI_TAKEN.fetch_add(1, SeqCst);
    Apic::XApic.eoi();
}

/// Sends an IPI with `icr_low` to `dest` and waits until `expect` vCPUs took it.
fn send_ipi_and_wait(aps: u64, dest: u32, icr_low: u32, expect: u64) {
    set_handler(IPI_VECTOR, ipi_taker);
    let apic = Apic::XApic.enable();
    check!(hvprobe_rt::smp::wait_online(aps, IPI_SPINS), "{aps} application processors did not come online");
    apic.write(reg::ICR_HIGH, dest << 24);
    let start = cpu::rdtsc();
    apic.write(reg::ICR_LOW, icr_low);
    let mut spins = 0;
    while IPI_TAKEN.load(SeqCst) < expect && spins < IPI_SPINS {
        spins += 1;
        core::hint::spin_loop();
    }
    metric("ipi_to_taken", "cycles", cpu::rdtsc() - start);
    check_eq!(IPI_TAKEN.load(SeqCst), expect, "vCPUs that took the IPI");
    check_eq!(apic.read(reg::ICR_LOW) & (1 << 12), 0, "ICR delivery status is idle after delivery");
}

test_case! {
    /// A fixed IPI with physical destination APIC ID 1 reaches vCPU 1, once, and no other
    /// vCPU (SDM Vol. 3A, 11.6.1 and 11.6.2.1).
    name = "irq::ipi_fixed_physical::xapic", mode = Long64, path = Full, requires = abi::requires::IRQCHIP, vcpus = 3;
    fn ipi_fixed_physical() {
        send_ipi_and_wait(2, 1, IPI_VECTOR as u32, 1);
        check_eq!(IPI_TAKERS.load(SeqCst), 1 << 1, "APIC IDs that took the IPI (bit n = ID n)");
    }
}

test_case! {
    /// "All excluding self" (ICR destination shorthand 11b) reaches every other vCPU once
    /// and not the sender (SDM Vol. 3A, 11.6.1, destination shorthand).
    name = "irq::ipi_all_but_self::xapic", mode = Long64, path = Full, requires = abi::requires::IRQCHIP, vcpus = 3;
    fn ipi_all_but_self() {
        send_ipi_and_wait(2, 0, (0b11 << 18) | IPI_VECTOR as u32, 2);
        check_eq!(IPI_TAKERS.load(SeqCst), 0b110, "APIC IDs that took the IPI (bit n = ID n)");
    }
}

test_case! {
    /// A fixed IPI in logical flat mode: with LDRs 0x01 (vCPU 0), 0x02 (vCPU 1) and 0x04
    /// (vCPU 2) and DFR flat, destination 0x06 reaches vCPUs 1 and 2 (SDM Vol. 3A,
    /// 11.6.2.2). Each AP sets its own LDR from the IPI handler's first run, so the case
    /// first wakes each AP with a physical IPI.
    name = "irq::ipi_logical_flat::xapic", mode = Long64, path = Full, requires = abi::requires::IRQCHIP, vcpus = 3;
    fn ipi_logical_flat() {
        set_handler(IPI_VECTOR, ipi_set_ldr);
        let apic = Apic::XApic.enable();
        apic.write(reg::LDR, 1 << 24);
        apic.write(reg::DFR, 0xffff_ffff);
        check!(hvprobe_rt::smp::wait_online(2, IPI_SPINS), "the application processors did not come online");
        program_aps(apic);
        send_ipi_and_wait(2, 0x06, (1 << 11) | IPI_VECTOR as u32, 4);
        check_eq!(IPI_TAKERS.load(SeqCst), 0b110, "APIC IDs that took the logical IPI (bit n = ID n)");
    }
}

/// Sends a physical IPI to vCPUs 1 and 2 in turn, whose handler programs their LDR, then
/// routes the vector to `ipi_taker` for the logical IPI that follows.
fn program_aps(apic: Apic) {
    for id in 1..=2u32 {
        apic.write(reg::ICR_HIGH, id << 24);
        apic.write(reg::ICR_LOW, IPI_VECTOR as u32);
        let mut spins = 0;
        while IPI_TAKEN.load(SeqCst) < id as u64 && spins < IPI_SPINS {
            spins += 1;
            core::hint::spin_loop();
        }
    }
    check_eq!(IPI_TAKEN.load(SeqCst), 2, "physical IPIs that set the APs' LDRs");
    IPI_TAKERS.store(0, SeqCst);
    set_handler(IPI_VECTOR, ipi_taker);
}

/// First IPI on an AP: program its LDR as bit (APIC ID) in flat mode, then count.
fn ipi_set_ldr(_: &mut Frame) {
    let apic = Apic::XApic;
    let id = apic.read(reg::ID) >> 24;
    apic.write(reg::DFR, 0xffff_ffff);
    apic.write(reg::LDR, 1 << (24 + id));
    IPI_TAKEN.fetch_add(1, SeqCst);
    apic.eoi();
}

const WINDOW_VECTOR: u8 = 0x4a;
static WINDOW_TAKEN: AtomicU64 = AtomicU64::new(0);

fn window_taken(_: &mut Frame) {
    WINDOW_TAKEN.fetch_add(1, SeqCst);
    Apic::XApic.eoi();
}

test_case! {
    /// A maskable interrupt that became pending while IF = 0 is delivered once STI opens
    /// the window, after the instruction that follows STI, with no exit needed (SDM Vol.
    /// 2B STI; Vol. 3A 7.8, interrupt shadow). Eight windows leave room for a late host.
    name = "irq::sti_window_pending::xapic", mode = Long64, path = Full, requires = abi::requires::IRQCHIP;
    fn sti_window_pending() {
        set_handler(WINDOW_VECTOR, window_taken);
        let apic = Apic::XApic.enable();
        apic.write(reg::ICR_LOW, 1 << 18 | WINDOW_VECTOR as u32);
        check_eq!(WINDOW_TAKEN.load(SeqCst), 0, "delivered with IF = 0");
        for _ in 0..8 {
            // SAFETY: the handler is installed.
            unsafe { core::arch::asm!("sti", "nop", "nop", "cli", options(nomem, nostack)) };
        }
        check_eq!(WINDOW_TAKEN.load(SeqCst), 1, "deliveries after STI windows");
    }
}

test_case! {
    /// A fixed physical IPI sent through the x2APIC ICR MSR (one 64-bit write, destination
    /// in bits 63:32) reaches APIC ID 1 only (SDM Vol. 3A, 11.12.9).
    name = "irq::ipi_fixed_physical::x2apic", mode = Long64, path = Hw, requires = abi::requires::IRQCHIP | abi::requires::X2APIC, vcpus = 3;
    fn ipi_fixed_physical_x2apic() {
        set_handler(IPI_VECTOR, ipi_taker);
        Apic::X2Apic.enable();
        check!(hvprobe_rt::smp::wait_online(2, IPI_SPINS), "the application processors did not come online");
        // SAFETY: the x2APIC ICR MSR.
        unsafe { cpu::wrmsr(0x830, 1 << 32 | IPI_VECTOR as u64) };
        let mut spins = 0;
        while IPI_TAKEN.load(SeqCst) < 1 && spins < IPI_SPINS {
            spins += 1;
            core::hint::spin_loop();
        }
        check_eq!(IPI_TAKERS.load(SeqCst), 1 << 1, "APIC IDs that took the IPI (bit n = ID n)");
    }
}

test_case! {
    /// "All including self" reaches every vCPU, the sender too (SDM Vol. 3A, 11.6.1).
    name = "irq::ipi_all_including_self::xapic", mode = Long64, path = Full, requires = abi::requires::IRQCHIP, vcpus = 3;
    fn ipi_all_including_self() {
        set_handler(IPI_VECTOR, ipi_taker);
        let apic = Apic::XApic.enable();
        check!(hvprobe_rt::smp::wait_online(2, IPI_SPINS), "the application processors did not come online");
        apic.write(reg::ICR_LOW, (0b10 << 18) | IPI_VECTOR as u32);
        // The sender's own copy waits in its IRR until IF = 1: HLT takes it, with the
        // one-shot timer as a backstop should it be lost. Then wait for the others.
        set_handler(TIMER_VECTOR, timer_handler);
        apic.hlt_with_backstop(TIMER_VECTOR, 20_000_000);
        let mut spins = 0;
        while IPI_TAKEN.load(SeqCst) < 3 && spins < IPI_SPINS {
            spins += 1;
            core::hint::spin_loop();
        }
        check_eq!(IPI_TAKERS.load(SeqCst), 0b111, "APIC IDs that took the IPI (bit n = ID n)");
    }
}

static PONG: AtomicU64 = AtomicU64::new(0);
const PING_VECTOR: u8 = 0x4b;
const PONG_VECTOR: u8 = 0x4f;

/// On vCPU 1: answer vCPU 0 with an IPI.
fn ping(_: &mut Frame) {
    let apic = Apic::XApic;
    apic.write(reg::ICR_HIGH, 0);
    apic.write(reg::ICR_LOW, PONG_VECTOR as u32);
    apic.eoi();
}

fn pong(_: &mut Frame) {
    PONG.fetch_add(1, SeqCst);
    Apic::XApic.eoi();
}

test_case! {
    /// IPI ping-pong between two vCPUs: vCPU 0 sends, vCPU 1's handler answers with an IPI
    /// of its own, 20 times; every answer arrives (SDM Vol. 3A, 11.6).
    name = "irq::ipi_ping_pong::xapic", mode = Long64, path = Full, requires = abi::requires::IRQCHIP, vcpus = 2;
    fn ipi_ping_pong() {
        set_handler(PING_VECTOR, ping);
        set_handler(PONG_VECTOR, pong);
        let apic = Apic::XApic.enable();
        check!(hvprobe_rt::smp::wait_online(1, IPI_SPINS), "vCPU 1 did not come online");
        let start = cpu::rdtsc();
        for round in 1..=20u64 {
            apic.write(reg::ICR_HIGH, 1 << 24);
            apic.write(reg::ICR_LOW, PING_VECTOR as u32);
            for _ in 0..1000 {
                if PONG.load(SeqCst) >= round {
                    break;
                }
                cpu::sti_hlt();
            }
            check_eq!(PONG.load(SeqCst), round, "answers after round {}", round);
        }
        metric("round_trip", "cycles", (cpu::rdtsc() - start) / 20);
    }
}

test_case! {
    /// Logical cluster mode (DFR model 0000b): LDR = cluster << 28 | member bits; a
    /// destination of cluster 0, members 1 and 2, reaches vCPUs 1 and 2 (SDM Vol. 3A,
    /// 11.6.2.2).
    name = "irq::ipi_logical_cluster::xapic", mode = Long64, path = Full, requires = abi::requires::IRQCHIP, vcpus = 3;
    fn ipi_logical_cluster() {
        set_handler(IPI_VECTOR, ipi_set_cluster_ldr);
        let apic = Apic::XApic.enable();
        apic.write(reg::DFR, 0x0fff_ffff);
        apic.write(reg::LDR, 0x0800_0000);
        check!(hvprobe_rt::smp::wait_online(2, IPI_SPINS), "the application processors did not come online");
        program_aps(apic);
        send_ipi_and_wait(2, 0x03, (1 << 11) | IPI_VECTOR as u32, 4);
        check_eq!(IPI_TAKERS.load(SeqCst), 0b110, "APIC IDs that took the logical IPI (bit n = ID n)");
    }
}

/// First IPI on an AP: program its LDR for cluster mode, cluster 0, member bit ID - 1.
fn ipi_set_cluster_ldr(_: &mut Frame) {
    let apic = Apic::XApic;
    let id = apic.read(reg::ID) >> 24;
    apic.write(reg::DFR, 0x0fff_ffff);
    apic.write(reg::LDR, 1 << (24 + id - 1));
    IPI_TAKEN.fetch_add(1, SeqCst);
    apic.eoi();
}

static AP_NMI: AtomicU64 = AtomicU64::new(0);

fn ap_nmi(_: &mut Frame) {
    AP_NMI.fetch_or(1 << (Apic::XApic.read(reg::ID) >> 24), SeqCst);
}

test_case! {
    /// An NMI IPI to vCPU 1 reaches vCPU 1's vector 2 (SDM Vol. 3A, 11.6.1, delivery mode
    /// NMI).
    name = "irq::nmi_ipi_vcpu1::xapic", mode = Long64, path = Full, requires = abi::requires::IRQCHIP, vcpus = 2;
    fn nmi_ipi_vcpu1() {
        set_handler(2, ap_nmi);
        let apic = Apic::XApic.enable();
        check!(hvprobe_rt::smp::wait_online(1, IPI_SPINS), "vCPU 1 did not come online");
        apic.write(reg::ICR_HIGH, 1 << 24);
        apic.write(reg::ICR_LOW, 0b100 << 8);
        let mut spins = 0;
        while AP_NMI.load(SeqCst) == 0 && spins < IPI_SPINS {
            spins += 1;
            core::hint::spin_loop();
        }
        check_eq!(AP_NMI.load(SeqCst), 0b10, "APIC IDs that took the NMI (bit n = ID n)");
    }
}

/// The page the INIT/SIPI case's real-mode trampoline runs in (SIPI vector 6: CS = 0x600,
/// IP = 0), and the word it increments (0x6800).
const TRAMPOLINE: u64 = 0x6000;
const TRAMPOLINE_COUNT: u64 = 0x6800;
/// `lock inc word ptr cs:[0x800]; cli; hlt; jmp -3`, 16-bit code.
const TRAMPOLINE_CODE: [u8; 10] = [0xf0, 0x2e, 0xff, 0x06, 0x00, 0x08, 0xfa, 0xf4, 0xeb, 0xfd];

test_case! {
    /// Application processors started the way firmware starts them: INIT, then SIPI twice
    /// with vector 6, all excluding self. Each AP starts in real mode at CS = 0x600,
    /// IP = 0 and runs the trampoline there once (SDM Vol. 3A, 9.4.4.1 and 11.6.1).
    name = "irq::init_sipi::xapic", mode = Long64, path = Full, requires = abi::requires::IRQCHIP,
        flags = abi::flags::AP_WAIT_SIPI, vcpus = 3;
    fn init_sipi() {
        // SAFETY: the page is RAM below 1 MiB that nothing else uses in this case.
        unsafe {
            core::ptr::copy_nonoverlapping(TRAMPOLINE_CODE.as_ptr(), TRAMPOLINE as *mut u8, TRAMPOLINE_CODE.len());
            (TRAMPOLINE_COUNT as *mut u16).write_volatile(0);
        }
        let apic = Apic::XApic.enable();
        let all_but_self = 0b11 << 18;
        apic.write(reg::ICR_HIGH, 0);
        apic.write(reg::ICR_LOW, all_but_self | 1 << 14 | 0b101 << 8);
        let start = cpu::rdtsc();
        while cpu::rdtsc() - start < 1_000_000 {}
        let count = || {
            // SAFETY: the trampoline's counter, written by the APs.
            unsafe { (TRAMPOLINE_COUNT as *const u16).read_volatile() }
        };
        check_eq!(count(), 0, "APs running before any SIPI");
        for _ in 0..2 {
            apic.write(reg::ICR_LOW, all_but_self | 1 << 14 | 0b110 << 8 | (TRAMPOLINE >> 12) as u32);
            let start = cpu::rdtsc();
            while count() < 2 && cpu::rdtsc() - start < 200_000_000 {
                core::hint::spin_loop();
            }
        }
        check_eq!(count(), 2, "APs that ran the trampoline (a second SIPI must not restart them)");
    }
}

test_case! {
    /// MOV SS opens a one-instruction shadow: with TF just set by POPF, the single-step
    /// #DB owed after MOV SS is held until the instruction after it completes, like a
    /// maskable interrupt would be (SDM Vol. 3A, 7.8.3 "Masking Exceptions and Interrupts
    /// When Switching Stacks", and Vol. 2B MOV: "inhibits interrupts ... until the end of
    /// the next instruction").
    name = "irq::mov_ss_shadow::long64", mode = Long64, path = Hw;
    fn mov_ss_shadow() {
        let e = hvprobe_rt::catch!(
            "mov eax, ss", "pushfq", "or qword ptr [rsp], 0x100", "popfq", "mov ss, eax", "nop", "nop",
            out("eax") _
        );
        let e = hvprobe_rt::check_exception!(e, hvprobe_rt::exception::DB, None);
        // mov eax, ss (2) + pushfq (1) + or (8) + popfq (1) + mov ss (2) + nop (1) = 15:
        // the trap follows the NOP after MOV SS, not MOV SS itself (14).
        check_eq!(e.rip - hvprobe_rt::exception::armed_rip(), 15, "bytes from the sequence's start to the #DB's RIP");
    }
}

const KVM_HC_SEND_IPI: u64 = 10;
/// CPUID 0x40000001 EAX bit 11 (Documentation/virt/kvm/x86/cpuid.rst).
const KVM_FEATURE_PV_SEND_IPI: u32 = 1 << 11;

test_case! {
    /// KVM_HC_SEND_IPI (hypercalls.rst, item 8): a bitmap of APIC IDs from a base, and
    /// the ICR's low half. Sending vector IPI_VECTOR to APIC ID 1 returns 1 (one vCPU
    /// reached) and vCPU 1 takes it. Skipped where KVM_FEATURE_PV_SEND_IPI is not
    /// advertised. The `para` path of an IPI.
    name = "irq::pv_send_ipi::xapic", mode = Long64, path = Para,
        requires = abi::requires::IRQCHIP | abi::requires::KVM_PV, timeout_ms = 1000, vcpus = 2;
    fn pv_send_ipi() {
        if cpu::cpuid(0x4000_0001, 0).eax & KVM_FEATURE_PV_SEND_IPI == 0 {
            hvprobe_rt::skip!("the host does not advertise KVM_FEATURE_PV_SEND_IPI");
        }
        set_handler(IPI_VECTOR, ipi_taker);
        Apic::XApic.enable();
        check!(hvprobe_rt::smp::wait_online(1, IPI_SPINS), "vCPU 1 did not come online");
        let start = cpu::rdtsc();
        let reached = cpu::kvm_hypercall(KVM_HC_SEND_IPI, [0b10, 0, 0, IPI_VECTOR as u64]);
        check_eq!(reached, 1, "vCPUs the hypercall reached");
        let mut spins = 0;
        while IPI_TAKEN.load(SeqCst) == 0 && spins < IPI_SPINS {
            spins += 1;
            core::hint::spin_loop();
        }
        metric("pv_ipi_to_taken", "cycles", cpu::rdtsc() - start);
        check_eq!(IPI_TAKERS.load(SeqCst), 1 << 1, "APIC IDs that took the IPI (bit n = ID n)");
    }
}

test_case! {
    /// The same at CPL3, where the instructions run natively.
    name = "irq::mov_ss_shadow::user64", mode = User64, path = Hw;
    entry = mov_ss_shadow
}
