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
