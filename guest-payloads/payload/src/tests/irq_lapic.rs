//! The `irq` area, local APIC: registers, mode transitions, priority, EOI, errors and the
//! timer, each through xAPIC MMIO (`full`) and x2APIC MSRs (`hw`) where both exist
//! (SDM Vol. 3A, chapter 11).

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use hvprobe_rt::abi::requires::{IRQCHIP, TSC_DEADLINE, X2APIC};
use hvprobe_rt::apic::{APIC_BASE_ENABLE, APIC_BASE_X2APIC, Apic, MSR_APIC_BASE, reg};
use hvprobe_rt::exception::{self, Frame, set_gate, set_handler};
use hvprobe_rt::{catch, check, check_eq, check_exception, check_no_exception, cpu, metric, test_case};

use super::irq_common::{
    BACKSTOP, COUNT, IN_SERVICE, ORDER, ORDER_LEN, RECORD_IN_SERVICE, TSC_AT, X2, active, count, counting, window,
};

const SELF: u32 = 1 << 18;
const ALL_INCLUDING_SELF: u32 = 0b10 << 18;

/// Enables `mode` and routes `vectors` (and the backstop) to `counting`.
fn setup(mode: Apic, vectors: &[u8]) -> Apic {
    X2.store((mode == Apic::X2Apic) as u64, SeqCst);
    set_handler(BACKSTOP, counting);
    for v in vectors {
        set_handler(*v, counting);
    }
    mode.enable()
}

fn self_ipi(apic: Apic, v: u8) {
    match apic {
        Apic::XApic => apic.write(reg::ICR_LOW, SELF | v as u32),
        // SAFETY: the SELF IPI MSR exists in x2APIC mode (SDM Vol. 3A, 11.12.11).
        Apic::X2Apic => unsafe { cpu::wrmsr(0x83f, v as u64) },
    }
}

fn cli() {
    // SAFETY: masking interrupts changes nothing else.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

macro_rules! both_modes {
    ($(#[$m:meta])* $x:literal, $x2:literal, $fx:ident, $fx2:ident, $body:ident $(, requires = $req:expr)?) => {
        test_case! {
            $(#[$m])*
            name = $x, mode = Long64, path = Full, requires = IRQCHIP $(| $req)?;
            fn $fx() {
                $body(Apic::XApic);
            }
        }
        test_case! {
            $(#[$m])*
            name = $x2, mode = Long64, path = Hw, requires = IRQCHIP | X2APIC $(| $req)?;
            fn $fx2() {
                $body(Apic::X2Apic);
            }
        }
    };
}

fn tpr_ppr(apic: Apic) {
    let apic = setup(apic, &[]);
    for tpr in [0x00u32, 0x20, 0x5f, 0xf0] {
        apic.write(reg::TPR, tpr);
        check_eq!(apic.read(reg::TPR) & 0xff, tpr, "TPR read back");
        check_eq!(apic.read(reg::PPR) & 0xf0, tpr & 0xf0, "PPR with the ISR empty is TPR[7:4] (TPR {:#x})", tpr);
    }
    apic.write(reg::TPR, 0);
}
both_modes!(
    /// TPR reads back, and with no interrupt in service PPR follows TPR's class
    /// (SDM Vol. 3A, 11.8.3.1).
    "irq::tpr_ppr::xapic", "irq::tpr_ppr::x2apic", tpr_ppr_xapic, tpr_ppr_x2apic, tpr_ppr
);

fn read_cr8() -> u64 {
    let v: u64;
    // SAFETY: reading CR8 at CPL0 has no side effects.
    unsafe { asm!("mov {}, cr8", out(reg) v, options(nomem, nostack)) };
    v
}

fn cr8_alias(apic: Apic) {
    let apic = setup(apic, &[]);
    // SAFETY: TPR values; nothing is pending.
    unsafe { asm!("mov cr8, {}", in(reg) 5u64, options(nomem, nostack)) };
    check_eq!(apic.read(reg::TPR) & 0xf0, 0x50, "TPR[7:4] after MOV CR8, 5");
    apic.write(reg::TPR, 0x30);
    check_eq!(read_cr8(), 3, "CR8 after TPR = 0x30");
    apic.write(reg::TPR, 0);
}
both_modes!(
    /// CR8 is TPR[7:4] (SDM Vol. 3A, 11.8.6): a MOV to CR8 shows in TPR and a TPR
    /// write shows in CR8.
    "irq::cr8_tpr_alias::xapic", "irq::cr8_tpr_alias::x2apic", cr8_alias_xapic, cr8_alias_x2apic, cr8_alias
);

fn tpr_masks(apic: Apic) {
    let apic = setup(apic, &[0x45, 0x65]);
    apic.write(reg::TPR, 0x50);
    self_ipi(apic, 0x45);
    window();
    check_eq!(count(0x45), 0, "vector 0x45 (class 4) delivered with TPR class 5");
    check!(apic.vector_bit(reg::IRR, 0x45), "vector 0x45 is not pending in the IRR");
    self_ipi(apic, 0x65);
    window();
    check_eq!(count(0x65), 1, "vector 0x65 (class 6) with TPR class 5");
    apic.write(reg::TPR, 0);
    window();
    check_eq!(count(0x45), 1, "vector 0x45 once TPR dropped to 0");
}
both_modes!(
    /// An interrupt whose class is not above TPR's waits in the IRR; one above is
    /// delivered; lowering TPR releases the waiting one (SDM Vol. 3A, 11.8.3).
    "irq::tpr_masks_class::xapic", "irq::tpr_masks_class::x2apic", tpr_masks_xapic, tpr_masks_x2apic, tpr_masks
);

fn priority_order(apic: Apic) {
    let apic = setup(apic, &[0x52, 0x72]);
    RECORD_IN_SERVICE.store(1, SeqCst);
    cli();
    self_ipi(apic, 0x52);
    self_ipi(apic, 0x72);
    check!(apic.vector_bit(reg::IRR, 0x52) && apic.vector_bit(reg::IRR, 0x72), "both vectors pending in the IRR");
    window();
    for _ in 0..4 {
        if count(0x52) == 1 {
            break;
        }
        window();
    }
    check_eq!(ORDER_LEN.load(SeqCst) >= 2, true, "deliveries");
    check_eq!(ORDER[0].load(SeqCst), 0x72, "first delivered: the higher vector");
    check_eq!(ORDER[1].load(SeqCst), 0x52, "second delivered");
    let in_service = IN_SERVICE[0x52].load(SeqCst) + IN_SERVICE[0x72].load(SeqCst);
    check_eq!(in_service, 2, "deliveries with the vector's ISR bit set in its handler");
    check!(!apic.vector_bit(reg::ISR, 0x52) && !apic.vector_bit(reg::ISR, 0x72), "ISR empty after both EOIs");
}
both_modes!(
    /// Two pending interrupts are delivered highest vector first, and each EOI clears its
    /// ISR bit (SDM Vol. 3A, 11.8.3 and 11.8.5).
    "irq::irr_isr_priority::xapic", "irq::irr_isr_priority::x2apic", priority_order_xapic, priority_order_x2apic, priority_order
);

fn self_ipi_once(apic: Apic) {
    let apic = setup(apic, &[0x58]);
    RECORD_IN_SERVICE.store(1, SeqCst);
    let start = cpu::rdtsc();
    self_ipi(apic, 0x58);
    window();
    metric("self_ipi_to_handler", "cycles", TSC_AT[0x58].load(SeqCst).wrapping_sub(start));
    check_eq!(count(0x58), 1, "deliveries of one self-IPI");
    check_eq!(IN_SERVICE[0x58].load(SeqCst), 1, "deliveries with the vector's ISR bit set in its handler");
    check!(!apic.vector_bit(reg::ISR, 0x58) && !apic.vector_bit(reg::IRR, 0x58), "ISR and IRR clear after EOI");
}
both_modes!(
    /// A self-IPI (ICR shorthand "self" in xAPIC, the SELF IPI MSR in x2APIC) is
    /// delivered once (SDM Vol. 3A, 11.6.1 and 11.12.11).
    "irq::self_ipi::xapic", "irq::self_ipi::x2apic", self_ipi_xapic, self_ipi_x2apic, self_ipi_once
);

fn broadcast_self(apic: Apic) {
    let apic = setup(apic, &[0x59]);
    match apic {
        Apic::XApic => apic.write(reg::ICR_LOW, ALL_INCLUDING_SELF | 0x59),
        // SAFETY: the x2APIC ICR is one 64-bit MSR.
        Apic::X2Apic => unsafe { cpu::wrmsr(0x830, (ALL_INCLUDING_SELF | 0x59) as u64) },
    }
    window();
    check_eq!(count(0x59), 1, "deliveries to the only vCPU");
}
both_modes!(
    /// "All including self" reaches the sender (SDM Vol. 3A, 11.6.1, destination shorthand).
    "irq::broadcast_including_self::xapic", "irq::broadcast_including_self::x2apic", broadcast_self_xapic, broadcast_self_x2apic, broadcast_self
);

fn svr_spurious(apic: Apic) {
    let apic = setup(apic, &[]);
    apic.write(reg::SVR, 0x1f7);
    check_eq!(apic.read(reg::SVR) & 0x1ff, 0x1f7, "SVR spurious vector and enable bit");
    apic.write(reg::SVR, 0x0ff);
    apic.write(reg::LVT_TIMER, 0x40);
    check_eq!(apic.read(reg::LVT_TIMER) & (1 << 16), 1 << 16, "LVT mask bit while software-disabled");
    apic.write(reg::SVR, 0x1ff);
}
both_modes!(
    /// SVR holds the spurious vector; while the APIC is software-disabled (SVR bit 8
    /// clear) the LVT mask bits stay set (SDM Vol. 3A, 11.4.7.2 and 11.9).
    "irq::svr_soft_disable::xapic", "irq::svr_soft_disable::x2apic", svr_xapic, svr_x2apic, svr_spurious
);

fn esr_illegal_vector(apic: Apic) {
    let apic = setup(apic, &[]);
    apic.write(reg::ESR, 0);
    apic.write(reg::LVT_ERROR, 1 << 16 | 0x4f);
    self_ipi(apic, 0x05);
    apic.write(reg::ESR, 0);
    check_eq!(apic.read(reg::ESR) & (1 << 5), 1 << 5, "ESR 'send illegal vector' after a self-IPI of vector 5");
    apic.write(reg::ESR, 0);
    check_eq!(apic.read(reg::ESR), 0, "ESR after the write that latches it again");
}
both_modes!(
    /// Sending a vector below 16 sets ESR bit 5, "send illegal vector", latched by an ESR
    /// write (SDM Vol. 3A, 11.5.3).
    "irq::esr_illegal_vector::xapic", "irq::esr_illegal_vector::x2apic", esr_xapic, esr_x2apic, esr_illegal_vector
);

fn lvt_readback(apic: Apic) {
    let apic = setup(apic, &[]);
    for (r, v) in [(reg::LVT_LINT0, 0x0001_0030u32), (reg::LVT_LINT1, 0x0001_0031), (reg::LVT_ERROR, 0x0001_0032)] {
        apic.write(r, v);
        check_eq!(apic.read(r) & 0x0001_70ff, v, "LVT register {:#x}", r);
    }
}
both_modes!(
    /// LVT LINT0, LINT1 and error entries keep vector, delivery mode and mask
    /// (SDM Vol. 3A, 11.5.1).
    "irq::lvt_readback::xapic", "irq::lvt_readback::x2apic", lvt_xapic, lvt_x2apic, lvt_readback
);

fn eoi_empty(apic: Apic) {
    let apic = setup(apic, &[0x5a]);
    apic.eoi();
    apic.eoi();
    self_ipi(apic, 0x5a);
    window();
    check_eq!(count(0x5a), 1, "an interrupt after EOIs with an empty ISR");
}
both_modes!(
    /// EOI with nothing in service changes nothing: a later interrupt still arrives
    /// (SDM Vol. 3A, 11.8.5).
    "irq::eoi_empty_isr::xapic", "irq::eoi_empty_isr::x2apic", eoi_empty_xapic, eoi_empty_x2apic, eoi_empty
);

static T_TICKS: AtomicU64 = AtomicU64::new(0);

fn tick(_: &mut Frame) {
    T_TICKS.fetch_add(1, SeqCst);
    active().eoi();
}

const TICK: u8 = 0x4c;

fn timer_periodic(apic: Apic) {
    X2.store((apic == Apic::X2Apic) as u64, SeqCst);
    set_handler(TICK, tick);
    let apic = apic.enable();
    apic.write(reg::TIMER_DIVIDE, 0b1011);
    apic.write(reg::LVT_TIMER, 1 << 17 | TICK as u32);
    apic.write(reg::TIMER_INITIAL, 200_000);
    let start = cpu::rdtsc();
    for _ in 0..1000 {
        if T_TICKS.load(SeqCst) >= 3 {
            break;
        }
        cpu::sti_hlt();
    }
    metric("three_periods", "cycles", cpu::rdtsc() - start);
    apic.write(reg::LVT_TIMER, 1 << 16);
    check!(T_TICKS.load(SeqCst) >= 3, "periodic timer ticked {} times", T_TICKS.load(SeqCst));
    check!(apic.read(reg::TIMER_CURRENT) <= 200_000, "current count within the initial count");
}
both_modes!(
    /// A periodic timer reloads and fires again and again (SDM Vol. 3A, 11.5.4).
    "irq::lapic_timer_periodic::xapic", "irq::lapic_timer_periodic::x2apic", timer_periodic_xapic, timer_periodic_x2apic, timer_periodic
);

fn timer_masked(apic: Apic) {
    let apic = setup(apic, &[TICK]);
    apic.write(reg::TIMER_DIVIDE, 0b1011);
    apic.write(reg::LVT_TIMER, 1 << 16 | TICK as u32);
    apic.write(reg::TIMER_INITIAL, 10_000);
    let mut spins = 0;
    while apic.read(reg::TIMER_CURRENT) != 0 && spins < 1_000_000 {
        spins += 1;
    }
    check_eq!(apic.read(reg::TIMER_CURRENT), 0, "the masked one-shot counted down");
    // SAFETY: nothing may be pending; a short window proves it.
    unsafe { asm!("sti", "nop", "nop", "cli", options(nomem, nostack)) };
    check_eq!(count(TICK), 0, "a masked timer interrupted");
}
both_modes!(
    /// A masked timer still counts down but raises no interrupt (SDM Vol. 3A, 11.5.1).
    "irq::lapic_timer_masked::xapic", "irq::lapic_timer_masked::x2apic", timer_masked_xapic, timer_masked_x2apic, timer_masked
);

fn timer_current_count(apic: Apic) {
    let apic = setup(apic, &[]);
    apic.write(reg::TIMER_DIVIDE, 0b1011);
    apic.write(reg::LVT_TIMER, 1 << 16);
    apic.write(reg::TIMER_INITIAL, 50_000_000);
    let a = apic.read(reg::TIMER_CURRENT);
    let b = apic.read(reg::TIMER_CURRENT);
    apic.write(reg::TIMER_INITIAL, 0);
    check!(a <= 50_000_000 && b < a, "current count {:#x} then {:#x}: not counting down", a, b);
    check_eq!(apic.read(reg::TIMER_CURRENT), 0, "current count after writing initial count 0");
}
both_modes!(
    /// The current count counts down from the initial count; writing 0 stops it
    /// (SDM Vol. 3A, 11.5.4).
    "irq::lapic_timer_current_count::xapic", "irq::lapic_timer_current_count::x2apic", timer_cc_xapic, timer_cc_x2apic, timer_current_count
);

fn timer_divide(apic: Apic) {
    let apic = setup(apic, &[]);
    apic.write(reg::LVT_TIMER, 1 << 16);
    let mut rate = [0u64; 2];
    for (i, divide) in [0b1011u32, 0b0011].into_iter().enumerate() {
        apic.write(reg::TIMER_DIVIDE, divide);
        check_eq!(apic.read(reg::TIMER_DIVIDE) & 0xb, divide, "divide configuration read back");
        apic.write(reg::TIMER_INITIAL, u32::MAX);
        let t0 = cpu::rdtsc();
        let c0 = apic.read(reg::TIMER_CURRENT);
        while cpu::rdtsc() - t0 < 20_000_000 {}
        let c1 = apic.read(reg::TIMER_CURRENT);
        rate[i] = (c0 - c1) as u64;
    }
    apic.write(reg::TIMER_INITIAL, 0);
    check!(rate[1] > 0, "the timer did not count at divide by 16");
    let ratio = rate[0] / rate[1].max(1);
    check!((8..=32).contains(&ratio), "divide by 1 counted {} and by 16 counted {}: ratio {}", rate[0], rate[1], ratio);
}
both_modes!(
    /// The divide configuration scales the count rate: divide by 1 counts about 16 times
    /// as fast as divide by 16 (SDM Vol. 3A, 11.5.4, figure 11-10).
    "irq::lapic_timer_divide::xapic", "irq::lapic_timer_divide::x2apic", timer_divide_xapic, timer_divide_x2apic, timer_divide
);

fn tsc_deadline(apic: Apic) {
    let apic = setup(apic, &[TICK]);
    apic.write(reg::LVT_TIMER, 0b10 << 17 | TICK as u32);
    let start = cpu::rdtsc();
    // SAFETY: IA32_TSC_DEADLINE exists when CPUID says TSC_DEADLINE.
    unsafe { cpu::wrmsr(0x6e0, start + 200_000) };
    for _ in 0..1000 {
        if count(TICK) > 0 {
            break;
        }
        cpu::sti_hlt();
    }
    metric("deadline_to_handler", "cycles", TSC_AT[TICK as usize].load(SeqCst).wrapping_sub(start + 200_000));
    check_eq!(count(TICK), 1, "TSC-deadline timer interrupts");
    check!(TSC_AT[TICK as usize].load(SeqCst) >= start + 200_000, "fired before the deadline");
    // SAFETY: as above.
    check_eq!(unsafe { cpu::rdmsr(0x6e0) }, 0, "IA32_TSC_DEADLINE after it fired");
}
both_modes!(
    /// The TSC-deadline timer fires once, not before the deadline, and clears
    /// IA32_TSC_DEADLINE (SDM Vol. 3A, 11.5.4.1).
    "irq::lapic_timer_tsc_deadline::xapic", "irq::lapic_timer_tsc_deadline::x2apic", tsc_deadline_xapic, tsc_deadline_x2apic, tsc_deadline, requires = TSC_DEADLINE
);

fn tsc_deadline_disarm(apic: Apic) {
    let apic = setup(apic, &[TICK]);
    apic.write(reg::LVT_TIMER, 0b10 << 17 | TICK as u32);
    // SAFETY: as in tsc_deadline.
    unsafe {
        cpu::wrmsr(0x6e0, cpu::rdtsc() + 300_000);
        cpu::wrmsr(0x6e0, 0);
    }
    let start = cpu::rdtsc();
    while cpu::rdtsc() - start < 3_000_000 {}
    // SAFETY: a short window for anything pending.
    unsafe { asm!("sti", "nop", "nop", "cli", options(nomem, nostack)) };
    check_eq!(count(TICK), 0, "a disarmed deadline fired");
}
both_modes!(
    /// Writing 0 to IA32_TSC_DEADLINE disarms the timer (SDM Vol. 3A, 11.5.4.1).
    "irq::lapic_timer_tsc_deadline_disarm::xapic", "irq::lapic_timer_tsc_deadline_disarm::x2apic", tsc_disarm_xapic, tsc_disarm_x2apic, tsc_deadline_disarm, requires = TSC_DEADLINE
);

fn hlt_wakeup(apic: Apic) {
    let apic = setup(apic, &[TICK]);
    apic.write(reg::TIMER_DIVIDE, 0b1011);
    apic.write(reg::LVT_TIMER, TICK as u32);
    let start = cpu::rdtsc();
    apic.write(reg::TIMER_INITIAL, 500_000);
    cpu::sti_hlt();
    metric("hlt_to_wakeup", "cycles", cpu::rdtsc() - start);
    check_eq!(count(TICK), 1, "the timer interrupt that ended the HLT");
}
both_modes!(
    /// HLT with interrupts enabled ends at the next interrupt: the timer's (SDM Vol. 2A,
    /// HLT).
    "irq::hlt_wakeup::xapic", "irq::hlt_wakeup::x2apic", hlt_wakeup_xapic, hlt_wakeup_x2apic, hlt_wakeup
);

test_case! {
    /// In x2APIC mode the LDR is derived from the ID: cluster ID[31:4] in bits 31:16 and
    /// 1 << ID[3:0] (SDM Vol. 3A, 11.12.10.2), and it is read-only.
    name = "irq::x2apic_ldr::x2apic", mode = Long64, path = Hw, requires = IRQCHIP | X2APIC;
    fn x2apic_ldr() {
        let apic = Apic::X2Apic.enable();
        let id = apic.read(reg::ID);
        check_eq!(id, 0, "x2APIC ID of vCPU 0 (all 32 bits)");
        // SAFETY: reading the LDR MSR.
        let ldr = unsafe { cpu::rdmsr(0x80d) };
        check_eq!(ldr, ((id as u64 >> 4) << 16) | (1 << (id & 0xf)), "LDR");
        let e = catch!("wrmsr", in("ecx") 0x80du32, in("eax") 0x10u32, in("edx") 0u32);
        check_exception!(e, exception::GP, Some(0));
    }
}

test_case! {
    /// x2APIC MSRs that do not exist or are read-only fault: RDMSR of a reserved offset
    /// (0x801) and WRMSR of the version register (0x803) raise #GP(0), and the ICR has no
    /// high half (0x831) (SDM Vol. 3A, 11.12.1.2, table 11-6).
    name = "irq::x2apic_msr_faults::x2apic", mode = Long64, path = Hw, requires = IRQCHIP | X2APIC;
    fn x2apic_msr_faults() {
        Apic::X2Apic.enable();
        let e = catch!("rdmsr", in("ecx") 0x801u32, out("eax") _, out("edx") _);
        check_exception!(e, exception::GP, Some(0));
        let e = catch!("wrmsr", in("ecx") 0x803u32, in("eax") 0u32, in("edx") 0u32);
        check_exception!(e, exception::GP, Some(0));
        let e = catch!("rdmsr", in("ecx") 0x831u32, out("eax") _, out("edx") _);
        check_exception!(e, exception::GP, Some(0));
    }
}

fn apic_base() -> u64 {
    // SAFETY: IA32_APIC_BASE exists with an APIC.
    unsafe { cpu::rdmsr(MSR_APIC_BASE) }
}

test_case! {
    /// APIC mode transitions (SDM Vol. 3A, 11.12.5, figure 11-27): xAPIC to x2APIC and
    /// x2APIC to disabled are allowed; x2APIC straight to xAPIC, and EXTD without EN,
    /// raise #GP(0); disabled to xAPIC is allowed.
    name = "irq::apic_mode_transitions::x2apic", mode = Long64, path = Hw, requires = IRQCHIP | X2APIC;
    fn apic_mode_transitions() {
        let base = apic_base() & !(APIC_BASE_ENABLE | APIC_BASE_X2APIC);
        let set = |v: u64| {
            catch!("wrmsr", in("ecx") MSR_APIC_BASE, in("eax") v as u32, in("edx") (v >> 32) as u32)
        };
        check_no_exception!(set(base | APIC_BASE_ENABLE | APIC_BASE_X2APIC));
        let e = set(base | APIC_BASE_ENABLE);
        check_exception!(e, exception::GP, Some(0));
        check_eq!(apic_base() & (APIC_BASE_ENABLE | APIC_BASE_X2APIC), APIC_BASE_ENABLE | APIC_BASE_X2APIC, "still x2APIC");
        check_no_exception!(set(base));
        check_eq!(apic_base() & (APIC_BASE_ENABLE | APIC_BASE_X2APIC), 0, "disabled");
        let e = set(base | APIC_BASE_X2APIC);
        check_exception!(e, exception::GP, Some(0));
        check_no_exception!(set(base | APIC_BASE_ENABLE));
        check_eq!(apic_base() & (APIC_BASE_ENABLE | APIC_BASE_X2APIC), APIC_BASE_ENABLE, "xAPIC again");
    }
}

test_case! {
    /// The xAPIC ICR reads back what was written, and its delivery status reads idle once
    /// a self-IPI was sent (SDM Vol. 3A, 11.6.1).
    name = "irq::icr_readback::xapic", mode = Long64, path = Full, requires = IRQCHIP;
    fn icr_readback() {
        let apic = setup(Apic::XApic, &[0x5b]);
        apic.write(reg::ICR_HIGH, 0x0300_0000);
        check_eq!(apic.read(reg::ICR_HIGH) >> 24, 3, "ICR destination");
        self_ipi(apic, 0x5b);
        check_eq!(apic.read(reg::ICR_LOW) & 0xff, 0x5b, "ICR vector");
        check_eq!(apic.read(reg::ICR_LOW) & (1 << 12), 0, "delivery status");
        window();
        check_eq!(count(0x5b), 1, "the self-IPI");
    }
}

test_case! {
    /// The xAPIC ID register is writable in KVM's xAPIC and reads back what was written;
    /// the version register is read-only (SDM Vol. 3A, 11.4.6: "the APIC ID may be
    /// changed by software" in xAPIC mode on some processors).
    name = "irq::lapic_version_readonly::xapic", mode = Long64, path = Full, requires = IRQCHIP;
    fn lapic_version_readonly() {
        let apic = Apic::XApic.enable();
        let v = apic.read(reg::VERSION);
        apic.write(reg::VERSION, 0);
        check_eq!(apic.read(reg::VERSION), v, "the version register after a write");
    }
}

// Where does the CPU enter an interrupt handler after waking from HLT? A handler whose
// first instruction is a two-byte JMP over a second two-byte JMP: entered at its start it
// counts in HV_ENTRY_OK, entered two bytes in (one instruction skipped) it counts in
// HV_ENTRY_SKIPPED. Either way it EOIs and returns with the frame the CPU pushed.
core::arch::global_asm!(
    r#"
    .section .text.hv_entry_probe, "ax"
    .global hv_entry_probe
hv_entry_probe:
    .byte 0xeb, 0x02
    .byte 0xeb, 0x0b
    lock inc qword ptr [rip + {ok}]
    jmp 2f
    lock inc qword ptr [rip + {skipped}]
2:
    push rax
    mov eax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq
"#,
    ok = sym HV_ENTRY_OK,
    skipped = sym HV_ENTRY_SKIPPED,
);

static HV_ENTRY_OK: AtomicU64 = AtomicU64::new(0);
static HV_ENTRY_SKIPPED: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    fn hv_entry_probe();
}

const PROBE: u8 = 0x4d;

test_case! {
    /// An interrupt that arrives while the vCPU is halted enters its handler at the
    /// gate's offset, like any other interrupt (SDM Vol. 3A, 6.12.1; Vol. 2A, HLT: "an
    /// interrupt ... resumes execution" with the interrupt's handler). The handler
    /// counts whether its first instruction ran.
    name = "irq::hlt_wake_handler_entry::xapic", mode = Long64, path = Full, requires = IRQCHIP;
    fn hlt_wake_handler_entry() {
        set_gate(PROBE, hv_entry_probe);
        let apic = Apic::XApic.enable();
        // Pending before HLT: HLT does not block.
        apic.write(reg::ICR_LOW, SELF | PROBE as u32);
        cpu::sti_hlt();
        check_eq!(HV_ENTRY_OK.load(SeqCst), 1, "entries at the handler's start, interrupt pending before HLT");
        // Arriving during HLT: the timer fires while the vCPU is blocked.
        apic.write(reg::TIMER_DIVIDE, 0b1011);
        apic.write(reg::LVT_TIMER, PROBE as u32);
        apic.write(reg::TIMER_INITIAL, 5_000_000);
        cpu::sti_hlt();
        let (ok, skipped) = (HV_ENTRY_OK.load(SeqCst), HV_ENTRY_SKIPPED.load(SeqCst));
        check_eq!(skipped, 0, "entries two bytes into the handler after a HLT wake-up ({} at its start)", ok);
        check_eq!(ok, 2, "entries at the handler's start");
    }
}

static LAST_VECTOR: AtomicU64 = AtomicU64::new(0);

fn note_vector(frame: &mut Frame) {
    LAST_VECTOR.store(frame.vector, SeqCst);
    COUNT[frame.vector as usize & 0xff].fetch_add(1, SeqCst);
    Apic::XApic.eoi();
}

test_case! {
    /// Every vector from 32 to 255 reaches its own handler with a well-formed frame and
    /// returns (SDM Vol. 3A, 6.12.1: an interrupt pushes no error code). A self-IPI on
    /// each; the handler sees its vector, and IRETQ with the frame it was given resumes
    /// here.
    name = "irq::every_vector::xapic", mode = Long64, path = Full, requires = IRQCHIP;
    fn every_vector() {
        for v in 32..=255u8 {
            set_handler(v, note_vector);
        }
        let apic = Apic::XApic.enable();
        for v in 32..=255u8 {
            apic.write(reg::ICR_LOW, SELF | v as u32);
            cpu::sti_hlt();
            check_eq!(LAST_VECTOR.load(SeqCst), v as u64, "the vector the handler saw");
            check_eq!(COUNT[v as usize].load(SeqCst), 1, "deliveries of vector {}", v);
        }
    }
}

fn cr8_masks(apic: Apic) {
    let apic = setup(apic, &[0x46, 0x66]);
    // SAFETY: CR8 = 5 masks classes 5 and below; the handlers are installed.
    unsafe { asm!("mov cr8, {}", in(reg) 5u64, options(nomem, nostack)) };
    self_ipi(apic, 0x46);
    window();
    check_eq!(count(0x46), 0, "vector 0x46 (class 4) delivered with CR8 = 5");
    self_ipi(apic, 0x66);
    window();
    check_eq!(count(0x66), 1, "vector 0x66 (class 6) with CR8 = 5");
    // SAFETY: as above.
    unsafe { asm!("mov cr8, {}", in(reg) 0u64, options(nomem, nostack)) };
    window();
    check_eq!(count(0x46), 1, "vector 0x46 once CR8 dropped to 0");
}
both_modes!(
    /// CR8 masks interrupt classes like TPR, since it is TPR[7:4] (SDM Vol. 3A, 11.8.6).
    "irq::cr8_masks_class::xapic", "irq::cr8_masks_class::x2apic", cr8_masks_xapic, cr8_masks_x2apic, cr8_masks
);

static PPR_IN_HANDLER: AtomicU64 = AtomicU64::new(0);
static ISR_IN_HANDLER: AtomicU64 = AtomicU64::new(0);

fn ppr_probe(frame: &mut Frame) {
    ISR_IN_HANDLER.store(active().vector_bit(reg::ISR, 0x93) as u64, SeqCst);
    PPR_IN_HANDLER.store(active().read(reg::PPR) as u64, SeqCst);
    COUNT[frame.vector as usize & 0xff].fetch_add(1, SeqCst);
    active().eoi();
}

fn ppr_isr(apic: Apic) {
    let apic = setup(apic, &[]);
    set_handler(0x93, ppr_probe);
    self_ipi(apic, 0x93);
    window();
    check_eq!(count(0x93), 1, "deliveries");
    check_eq!(ISR_IN_HANDLER.load(SeqCst), 1, "ISR bit of vector 0x93 in its handler");
    check_eq!(PPR_IN_HANDLER.load(SeqCst) & 0xf0, 0x90, "PPR while vector 0x93 is in service");
    check_eq!(apic.read(reg::PPR) & 0xf0, 0, "PPR after the EOI");
}
both_modes!(
    /// While an interrupt is in service PPR holds its class (SDM Vol. 3A, 11.8.3.1:
    /// PPR = max(TPR, ISRV) by class), and after the EOI it drops back.
    "irq::ppr_in_service::xapic", "irq::ppr_in_service::x2apic", ppr_isr_xapic, ppr_isr_x2apic, ppr_isr
);

fn oneshot_restart(apic: Apic) {
    let apic = setup(apic, &[TICK]);
    apic.write(reg::TIMER_DIVIDE, 0b1011);
    apic.write(reg::LVT_TIMER, TICK as u32);
    apic.write(reg::TIMER_INITIAL, 30_000_000);
    apic.write(reg::TIMER_INITIAL, 300_000);
    for _ in 0..100 {
        if count(TICK) > 0 {
            break;
        }
        cpu::sti_hlt();
    }
    let start = cpu::rdtsc();
    while cpu::rdtsc() - start < 5_000_000 {}
    // SAFETY: a short window for anything late.
    unsafe { asm!("sti", "nop", "nop", "cli", options(nomem, nostack)) };
    check_eq!(count(TICK), 1, "a restarted one-shot fires once");
}
both_modes!(
    /// Writing the initial count again restarts a one-shot timer: it fires once, from the
    /// new count (SDM Vol. 3A, 11.5.4).
    "irq::lapic_timer_restart::xapic", "irq::lapic_timer_restart::x2apic", restart_xapic, restart_x2apic, oneshot_restart
);

test_case! {
    /// The x2APIC ID register is the full 32-bit APIC ID (0 on vCPU 0), and the version
    /// register matches the xAPIC one (SDM Vol. 3A, 11.12.5.1 and 11.4.8).
    name = "irq::lapic_id_version::x2apic", mode = Long64, path = Hw, requires = IRQCHIP | X2APIC;
    fn lapic_id_version_x2apic() {
        let x = Apic::XApic.enable();
        let version = x.read(reg::VERSION);
        let apic = Apic::X2Apic.enable();
        check_eq!(apic.read(reg::ID), 0, "x2APIC ID of vCPU 0");
        check_eq!(apic.read(reg::VERSION), version, "version register, x2APIC vs xAPIC");
    }
}
