//! The `irq` area, interrupts from outside the vCPU: the IOAPIC driven by KVM_IRQ_LINE and
//! irqfd, MSIs by KVM_SIGNAL_MSI, NMIs by KVM_NMI and by IPI, the 8259 PIC and 8254 PIT,
//! KVM_INTERRUPT without the in-kernel irqchip, and PV EOI. The host acts on the guest's
//! service requests, so each case controls exactly when its interrupt is raised.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use hvprobe_rt::abi::proto::service;
use hvprobe_rt::abi::requires::{IRQCHIP, KVM_PV, NO_IRQCHIP, PIT, X2APIC};
use hvprobe_rt::apic::{Apic, reg};
use hvprobe_rt::exception::{Frame, set_handler};
use hvprobe_rt::ioapic;
use hvprobe_rt::proto::service as request;
use hvprobe_rt::{check, check_eq, cpu, metric, skip, test_case};

use super::irq_common::{COUNT, TSC_AT, X2, active, count, counting, window};

/// Programs redirection entry `pin`: vector, level or edge, mask, physical destination.
/// KVM routes GSIs 0-15 to the PIC as well as the IOAPIC, and the BSP's LINT0 is ExtINT
/// after reset, so the (never initialised) PIC would deliver the same line at its own
/// vector: LINT0 is masked first, as a guest using the IOAPIC does.
fn redirect(pin: u32, vector: u8, level: bool, masked: bool, dest: u8) {
    Apic::XApic.enable().write(reg::LVT_LINT0, 1 << 16);
    ioapic::write(0x11 + 2 * pin, (dest as u32) << 24);
    ioapic::write(0x10 + 2 * pin, vector as u32 | (level as u32) << 15 | (masked as u32) << 16);
}

fn irq_line(gsi: u32, level: bool) {
    check_eq!(request(service::IRQ_LINE, [gsi as u64, level as u64, 0, 0]), Ok(0), "KVM_IRQ_LINE {} {}", gsi, level);
}

/// Sets up `vector` to count, enables `mode`, raises the interrupt with `raise`, waits in
/// a window, and returns the cycles from raising to the handler.
fn raise_and_wait(mode: Apic, vector: u8, raise: impl Fn()) -> u64 {
    X2.store((mode == Apic::X2Apic) as u64, SeqCst);
    set_handler(vector, counting);
    mode.enable();
    let start = cpu::rdtsc();
    raise();
    if count(vector) == 0 {
        window();
    }
    TSC_AT[vector as usize].load(SeqCst).wrapping_sub(start)
}

test_case! {
    /// The IOAPIC version register: version 0x11 or 0x20, 24 redirection entries
    /// (82093AA datasheet, IOAPICVER; KVM emulates 24 pins).
    name = "irq::ioapic_version::long64", mode = Long64, path = Full, requires = IRQCHIP;
    fn ioapic_version() {
        let v = ioapic::read(1);
        check!(matches!(v & 0xff, 0x11 | 0x20), "IOAPIC version {:#x}", v & 0xff);
        check_eq!((v >> 16) & 0xff, 23, "maximum redirection entry");
    }
}

test_case! {
    /// A redirection entry reads back what was written (vector, trigger, mask, destination).
    name = "irq::ioapic_redirection_readback::long64", mode = Long64, path = Full, requires = IRQCHIP;
    fn ioapic_redirection_readback() {
        for pin in [1u32, 9, 23] {
            redirect(pin, 0x70 + pin as u8, pin % 2 == 1, true, 0);
            let low = ioapic::read(0x10 + 2 * pin);
            check_eq!(low & 0x1_80ff, (0x70 + pin) | (pin % 2) << 15 | 1 << 16, "entry {} low", pin);
            check_eq!(ioapic::read(0x11 + 2 * pin) >> 24, 0, "entry {} destination", pin);
        }
    }
}

test_case! {
    /// An edge-triggered IOAPIC pin raised with KVM_IRQ_LINE delivers its vector once
    /// (api.rst 4.25 KVM_IRQ_LINE; 82093AA, edge-triggered redirection).
    name = "irq::ioapic_edge::xapic", mode = Long64, path = Full, requires = IRQCHIP;
    fn ioapic_edge() {
        redirect(10, 0x61, false, false, 0);
        let cycles = raise_and_wait(Apic::XApic, 0x61, || {
            irq_line(10, true);
            irq_line(10, false);
        });
        metric("irq_line_to_handler", "cycles", cycles);
        check_eq!(count(0x61), 1, "deliveries of one edge");
    }
}

test_case! {
    /// A masked redirection entry delivers nothing when its pin is raised.
    name = "irq::ioapic_masked::xapic", mode = Long64, path = Full, requires = IRQCHIP;
    fn ioapic_masked() {
        redirect(10, 0x61, false, true, 0);
        raise_and_wait(Apic::XApic, 0x61, || {
            irq_line(10, true);
            irq_line(10, false);
        });
        check_eq!(count(0x61), 0, "deliveries through a masked entry");
    }
}

static REMOTE_IRR_IN_HANDLER: AtomicU64 = AtomicU64::new(u64::MAX);
static TMR_IN_HANDLER: AtomicU64 = AtomicU64::new(u64::MAX);

/// Records remote IRR and the vector's TMR bit, deasserts the line, then EOIs.
fn level_handler(frame: &mut Frame) {
    let v = frame.vector as u32 & 0xff;
    COUNT[v as usize].fetch_add(1, SeqCst);
    REMOTE_IRR_IN_HANDLER.store(((ioapic::read(0x10 + 2 * 11) >> 14) & 1) as u64, SeqCst);
    TMR_IN_HANDLER.store(Apic::XApic.vector_bit(reg::TMR, v as u8) as u64, SeqCst);
    irq_line(11, false);
    Apic::XApic.eoi();
}

test_case! {
    /// A level-triggered pin: while its interrupt is in service the entry's remote IRR is
    /// set, and the EOI clears it (82093AA, remote IRR; SDM Vol. 3A, 11.8.5: the EOI is
    /// broadcast to the IOAPIC for level-triggered interrupts).
    name = "irq::ioapic_level_remote_irr::xapic", mode = Long64, path = Full, requires = IRQCHIP;
    fn ioapic_level_remote_irr() {
        redirect(11, 0x62, true, false, 0);
        set_handler(0x62, level_handler);
        Apic::XApic.enable();
        irq_line(11, true);
        if count(0x62) == 0 {
            window();
        }
        check_eq!(count(0x62), 1, "deliveries");
        check_eq!(REMOTE_IRR_IN_HANDLER.load(SeqCst), 1, "remote IRR while in service");
        check_eq!(TMR_IN_HANDLER.load(SeqCst), 1, "the LAPIC's TMR bit for a level-triggered vector");
        check_eq!((ioapic::read(0x10 + 2 * 11) >> 14) & 1, 0, "remote IRR after the EOI (line deasserted before it)");
    }
}

test_case! {
    /// An irqfd bound to an IOAPIC pin delivers its vector when the host signals the
    /// eventfd, with no KVM_IRQ_LINE (api.rst 4.75 KVM_IRQFD).
    name = "irq::ioapic_irqfd::xapic", mode = Long64, path = Full, requires = IRQCHIP;
    fn ioapic_irqfd() {
        redirect(12, 0x64, false, false, 0);
        let cycles = raise_and_wait(Apic::XApic, 0x64, || {
            check_eq!(request(service::IRQFD, [12, 0, 0, 0]), Ok(0), "irqfd signal");
        });
        metric("irqfd_to_handler", "cycles", cycles);
        check_eq!(count(0x64), 1, "deliveries");
    }
}

fn msi(dest: u8, vector: u8) {
    let address = 0xfee0_0000u64 | (dest as u64) << 12;
    check_eq!(request(service::SIGNAL_MSI, [address, vector as u64, 0, 0]), Ok(1), "KVM_SIGNAL_MSI delivered");
}

test_case! {
    /// KVM_SIGNAL_MSI with the xAPIC address of APIC ID 0 and a fixed vector delivers it
    /// (api.rst 4.71; SDM Vol. 3A, 11.11 message signalled interrupts).
    name = "irq::msi::xapic", mode = Long64, path = Full, requires = IRQCHIP;
    fn msi_xapic() {
        let cycles = raise_and_wait(Apic::XApic, 0x65, || msi(0, 0x65));
        metric("msi_to_handler", "cycles", cycles);
        check_eq!(count(0x65), 1, "deliveries");
    }
}

static AP_TAKERS: AtomicU64 = AtomicU64::new(0);

fn ap_taker(_: &mut Frame) {
    AP_TAKERS.fetch_or(1 << (Apic::XApic.read(reg::ID) >> 24), SeqCst);
    Apic::XApic.eoi();
}

fn wait_takers(mask: u64) {
    let mut spins = 0u64;
    while AP_TAKERS.load(SeqCst) & mask != mask && spins < 2_000_000 {
        spins += 1;
        core::hint::spin_loop();
    }
}

test_case! {
    /// An MSI addressed to APIC ID 1 is taken by vCPU 1, not by the sender's vCPU.
    name = "irq::msi_dest_vcpu1::xapic", mode = Long64, path = Full, requires = IRQCHIP, vcpus = 2;
    fn msi_dest_vcpu1() {
        set_handler(0x66, ap_taker);
        Apic::XApic.enable();
        check!(hvprobe_rt::smp::wait_online(1, 2_000_000), "vCPU 1 did not come online");
        msi(1, 0x66);
        wait_takers(0b10);
        check_eq!(AP_TAKERS.load(SeqCst), 0b10, "APIC IDs that took the MSI (bit n = ID n)");
    }
}

test_case! {
    /// An IOAPIC entry with physical destination 1 routes its pin to vCPU 1.
    name = "irq::ioapic_dest_vcpu1::xapic", mode = Long64, path = Full, requires = IRQCHIP, vcpus = 2;
    fn ioapic_dest_vcpu1() {
        set_handler(0x67, ap_taker);
        Apic::XApic.enable();
        check!(hvprobe_rt::smp::wait_online(1, 2_000_000), "vCPU 1 did not come online");
        redirect(13, 0x67, false, false, 1);
        irq_line(13, true);
        irq_line(13, false);
        wait_takers(0b10);
        check_eq!(AP_TAKERS.load(SeqCst), 0b10, "APIC IDs that took the pin (bit n = ID n)");
    }
}

static NMI_COUNT: AtomicU64 = AtomicU64::new(0);
static NMI_DEPTH: AtomicU64 = AtomicU64::new(0);
static NMI_MAX_DEPTH: AtomicU64 = AtomicU64::new(0);
static NMI_AT: AtomicU64 = AtomicU64::new(0);
static NMI_AGAIN: AtomicU64 = AtomicU64::new(0);

fn nmi_handler(_: &mut Frame) {
    let depth = NMI_DEPTH.fetch_add(1, SeqCst) + 1;
    NMI_MAX_DEPTH.fetch_max(depth, SeqCst);
    NMI_AT.store(cpu::rdtsc(), SeqCst);
    let n = NMI_COUNT.fetch_add(1, SeqCst) + 1;
    if n == 1 && NMI_AGAIN.load(SeqCst) == 1 {
        // A second NMI now must wait for this handler's IRET.
        let _ = request(service::NMI, [0; 4]);
        let start = cpu::rdtsc();
        while cpu::rdtsc() - start < 2_000_000 {}
    }
    NMI_DEPTH.fetch_sub(1, SeqCst);
}

fn wait_nmis(n: u64) {
    let mut spins = 0u64;
    while NMI_COUNT.load(SeqCst) < n && spins < 2_000_000 {
        spins += 1;
        core::hint::spin_loop();
    }
}

test_case! {
    /// KVM_NMI delivers an NMI through IDT vector 2 (api.rst 4.97 KVM_NMI).
    name = "irq::nmi::long64", mode = Long64, path = Full, requires = IRQCHIP;
    fn nmi() {
        set_handler(2, nmi_handler);
        let start = cpu::rdtsc();
        check_eq!(request(service::NMI, [0; 4]), Ok(0), "KVM_NMI");
        wait_nmis(1);
        metric("kvm_nmi_to_handler", "cycles", NMI_AT.load(SeqCst).wrapping_sub(start));
        check_eq!(NMI_COUNT.load(SeqCst), 1, "NMIs delivered");
    }
}

test_case! {
    /// NMIs are blocked from the NMI's delivery until the next IRET: a second NMI raised
    /// inside the handler arrives only after it returns, never nested (SDM Vol. 3A, 6.7.1).
    name = "irq::nmi_blocked_until_iret::long64", mode = Long64, path = Full, requires = IRQCHIP;
    fn nmi_blocked_until_iret() {
        set_handler(2, nmi_handler);
        NMI_AGAIN.store(1, SeqCst);
        check_eq!(request(service::NMI, [0; 4]), Ok(0), "KVM_NMI");
        wait_nmis(2);
        check_eq!(NMI_COUNT.load(SeqCst), 2, "NMIs delivered");
        check_eq!(NMI_MAX_DEPTH.load(SeqCst), 1, "NMI handler nesting depth");
    }
}

test_case! {
    /// An IPI with delivery mode NMI to self arrives through vector 2, whatever the
    /// vector field says (SDM Vol. 3A, 11.6.1, delivery mode 100b).
    name = "irq::nmi_ipi_self::xapic", mode = Long64, path = Full, requires = IRQCHIP;
    fn nmi_ipi_self() {
        set_handler(2, nmi_handler);
        let apic = Apic::XApic.enable();
        apic.write(reg::ICR_LOW, 1 << 18 | 0b100 << 8 | 0x69);
        wait_nmis(1);
        check_eq!(NMI_COUNT.load(SeqCst), 1, "NMIs delivered");
        check_eq!(count(0x69), 0, "deliveries on the vector field");
    }
}

/// Initialises both 8259s (ICW1-ICW4): vector bases 0x30 and 0x38, cascade on IRQ2, 8086
/// mode, all lines masked but `unmask` on the master (8259A datasheet).
fn pic_init(unmask: u8) {
    // SAFETY: the in-kernel PICs' ports.
    unsafe {
        x86::io::outb(0x20, 0x11);
        x86::io::outb(0x21, 0x30);
        x86::io::outb(0x21, 0x04);
        x86::io::outb(0x21, 0x01);
        x86::io::outb(0xa0, 0x11);
        x86::io::outb(0xa1, 0x38);
        x86::io::outb(0xa1, 0x02);
        x86::io::outb(0xa1, 0x01);
        x86::io::outb(0x21, !(1u8 << unmask));
        x86::io::outb(0xa1, 0xff);
    }
}

fn pic_handler(frame: &mut Frame) {
    let v = frame.vector as usize & 0xff;
    TSC_AT[v].store(cpu::rdtsc(), SeqCst);
    COUNT[v].fetch_add(1, SeqCst);
    // SAFETY: non-specific EOI to the master PIC.
    unsafe { x86::io::outb(0x20, 0x20) };
}

/// The PIC reaches vCPU 0 through LINT0 in ExtINT mode (SDM Vol. 3A, 11.5.1).
fn lint0_extint() {
    let apic = Apic::XApic.enable();
    apic.write(reg::LVT_LINT0, 0b111 << 8);
}

/// HLT with interrupts on until `vector` has come `n` times, at most `spins` halts.
fn hlt_until(vector: u8, n: u64, spins: u32) {
    for _ in 0..spins {
        if count(vector) >= n {
            return;
        }
        cpu::sti_hlt();
    }
}

test_case! {
    /// The PICs after ICW1-ICW4: the IMR reads back, and IRQ3 raised with KVM_IRQ_LINE
    /// arrives at the programmed base + 3 through LINT0 in ExtINT mode (8259A datasheet;
    /// SDM Vol. 3A, 11.5.1).
    name = "irq::pic_irq_line::long64", mode = Long64, path = Full, requires = IRQCHIP;
    fn pic_irq_line() {
        set_handler(0x33, pic_handler);
        lint0_extint();
        pic_init(3);
        // SAFETY: reading the IMRs.
        let (m, s) = unsafe { (x86::io::inb(0x21), x86::io::inb(0xa1)) };
        check_eq!(m, !(1u8 << 3), "master IMR");
        check_eq!(s, 0xff, "slave IMR");
        let start = cpu::rdtsc();
        irq_line(3, true);
        irq_line(3, false);
        if count(0x33) == 0 {
            // SAFETY: the handler is installed; the PIC line is the only source.
            unsafe { asm!("sti", "nop", "nop", "cli", options(nomem, nostack)) };
        }
        hlt_until(0x33, 1, 1);
        metric("pic_irq_to_handler", "cycles", TSC_AT[0x33].load(SeqCst).wrapping_sub(start));
        check_eq!(count(0x33), 1, "IRQ3 deliveries at vector 0x33");
    }
}

test_case! {
    /// PIT channel 0 in mode 2 (rate generator) interrupts periodically on IRQ0 through
    /// the PIC (8254 datasheet; the PC's IRQ0 wiring).
    name = "irq::pit_irq0::long64", mode = Long64, path = Full, requires = PIT;
    fn pit_irq0() {
        set_handler(0x30, pic_handler);
        lint0_extint();
        pic_init(0);
        // SAFETY: the in-kernel PIT's command and channel 0 ports; 1193 ticks = 1 ms.
        unsafe {
            x86::io::outb(0x43, 0x34);
            x86::io::outb(0x40, (1193 & 0xff) as u8);
            x86::io::outb(0x40, (1193 >> 8) as u8);
        }
        hlt_until(0x30, 3, 10_000);
        // SAFETY: mask IRQ0 again.
        unsafe { x86::io::outb(0x21, 0xff) };
        check!(count(0x30) >= 3, "PIT interrupts: {}", count(0x30));
    }
}

test_case! {
    /// A latched PIT channel 0 count decreases between two latches (8254 datasheet,
    /// counter latch command).
    name = "irq::pit_counter_latch::long64", mode = Long64, path = Full, requires = PIT;
    fn pit_counter_latch() {
        let latch = || {
            // SAFETY: the PIT's command and channel 0 data ports.
            unsafe {
                x86::io::outb(0x43, 0x00);
                let lo = x86::io::inb(0x40) as u16;
                let hi = x86::io::inb(0x40) as u16;
                hi << 8 | lo
            }
        };
        // SAFETY: channel 0, lobyte/hibyte, mode 2, count 0xffff; IRQ0 stays masked.
        unsafe {
            x86::io::outb(0x21, 0xff);
            x86::io::outb(0x43, 0x34);
            x86::io::outb(0x40, 0xff);
            x86::io::outb(0x40, 0xff);
        }
        let a = latch();
        let start = cpu::rdtsc();
        while cpu::rdtsc() - start < 2_000_000 {}
        let b = latch();
        check!(b < a, "PIT count {:#x} then {:#x}: not counting down", a, b);
    }
}

static INJECTED: AtomicU64 = AtomicU64::new(0);
static INJECTED_AT: AtomicU64 = AtomicU64::new(0);

fn injected(_: &mut Frame) {
    INJECTED_AT.store(cpu::rdtsc(), SeqCst);
    INJECTED.fetch_add(1, SeqCst);
}

test_case! {
    /// Without the in-kernel irqchip the VMM injects with KVM_INTERRUPT once the vCPU can
    /// take an interrupt (api.rst 4.16 KVM_INTERRUPT, request_interrupt_window); the
    /// vector arrives once, and HLT waits for it.
    name = "irq::kvm_interrupt::long64", mode = Long64, path = Full, requires = NO_IRQCHIP;
    fn kvm_interrupt() {
        set_handler(0x6a, injected);
        let start = cpu::rdtsc();
        check_eq!(request(service::INTERRUPT, [0x6a, 0, 0, 0]), Ok(0), "INTERRUPT service");
        cpu::sti_hlt();
        metric("kvm_interrupt_to_handler", "cycles", INJECTED_AT.load(SeqCst).wrapping_sub(start));
        check_eq!(INJECTED.load(SeqCst), 1, "deliveries");
    }
}

test_case! {
    /// An interrupt the VMM queued while IF = 0 is not delivered until IF = 1: exits with
    /// IF clear (console writes) leave it queued.
    name = "irq::kvm_interrupt_if_clear::long64", mode = Long64, path = Full, requires = NO_IRQCHIP;
    fn kvm_interrupt_if_clear() {
        set_handler(0x6b, injected);
        check_eq!(request(service::INTERRUPT, [0x6b, 0, 0, 0]), Ok(0), "INTERRUPT service");
        for _ in 0..4 {
            // SAFETY: a console write: an exit with IF clear.
            unsafe { x86::io::outb(0xe9, b'.') };
        }
        check_eq!(INJECTED.load(SeqCst), 0, "delivered with IF = 0");
        cpu::sti_hlt();
        check_eq!(INJECTED.load(SeqCst), 1, "deliveries once IF = 1");
    }
}

use hvprobe_rt::cpu::kvm_msr::PV_EOI_EN as MSR_KVM_PV_EOI_EN;
/// CPUID 0x40000001 EAX bit 6 (Documentation/virt/kvm/x86/cpuid.rst).
const KVM_FEATURE_PV_EOI: u32 = 1 << 6;
static PV_EOI_WORD: AtomicU64 = AtomicU64::new(0);
static PV_EOI_SEEN: AtomicU64 = AtomicU64::new(0);

fn pv_eoi_handler(frame: &mut Frame) {
    COUNT[frame.vector as usize & 0xff].fetch_add(1, SeqCst);
    // The PV EOI protocol (msr.rst, MSR_KVM_PV_EOI_EN): if KVM set bit 0, clearing it is
    // the EOI; otherwise EOI the APIC.
    let before = PV_EOI_WORD.fetch_and(!1, SeqCst);
    PV_EOI_SEEN.store(before & 1, SeqCst);
    if before & 1 == 0 {
        Apic::XApic.eoi();
    }
}

test_case! {
    /// PV EOI (msr.rst, MSR_KVM_PV_EOI_EN): with it on, KVM marks an interrupt as
    /// EOI-by-flag; the guest clears the flag instead of writing EOI, and the ISR is clear
    /// by the next exit. Skipped where KVM_FEATURE_PV_EOI is not advertised.
    name = "irq::pv_eoi::xapic", mode = Long64, path = Para, requires = IRQCHIP | KVM_PV;
    fn pv_eoi() {
        if cpu::cpuid(0x4000_0001, 0).eax & KVM_FEATURE_PV_EOI == 0 {
            skip!("the host does not advertise KVM_FEATURE_PV_EOI");
        }
        set_handler(0x6c, pv_eoi_handler);
        let apic = Apic::XApic.enable();
        // SAFETY: the word is 8-byte aligned guest RAM; bit 0 enables PV EOI.
        unsafe { cpu::wrmsr(MSR_KVM_PV_EOI_EN, &raw const PV_EOI_WORD as u64 | 1) };
        apic.write(reg::ICR_LOW, 1 << 18 | 0x6c);
        if count(0x6c) == 0 {
            window();
        }
        check_eq!(count(0x6c), 1, "deliveries");
        // Any exit lets KVM process the flag-EOI: a console write.
        // SAFETY: the console port.
        unsafe { x86::io::outb(0xe9, b'.') };
        check_eq!(apic.vector_bit(reg::ISR, 0x6c), false, "ISR bit after the PV EOI");
        metric("pv_eoi_flag_set", "bool", PV_EOI_SEEN.load(SeqCst));
        // SAFETY: turning PV EOI off.
        unsafe { cpu::wrmsr(MSR_KVM_PV_EOI_EN, 0) };
    }
}

test_case! {
    /// An edge-triggered IOAPIC pin delivers to a vCPU in x2APIC mode, EOIed through the
    /// x2APIC EOI MSR (82093AA; SDM Vol. 3A, 11.12).
    name = "irq::ioapic_edge::x2apic", mode = Long64, path = Hw,
        requires = IRQCHIP | hvprobe_rt::abi::requires::X2APIC;
    fn ioapic_edge_x2apic() {
        redirect(10, 0x71, false, false, 0);
        let cycles = raise_and_wait(Apic::X2Apic, 0x71, || {
            irq_line(10, true);
            irq_line(10, false);
        });
        metric("irq_line_to_handler", "cycles", cycles);
        check_eq!(count(0x71), 1, "deliveries of one edge");
    }
}

test_case! {
    /// An MSI to APIC ID 0 reaches a vCPU in x2APIC mode (SDM Vol. 3A, 11.11, 11.12).
    name = "irq::msi::x2apic", mode = Long64, path = Hw, requires = IRQCHIP | hvprobe_rt::abi::requires::X2APIC;
    fn msi_x2apic() {
        let cycles = raise_and_wait(Apic::X2Apic, 0x72, || msi(0, 0x72));
        metric("msi_to_handler", "cycles", cycles);
        check_eq!(count(0x72), 1, "deliveries");
    }
}

test_case! {
    /// An NMI self-IPI through the x2APIC ICR MSR arrives through vector 2 (SDM Vol. 3A,
    /// 11.6.1 and 11.12.9).
    name = "irq::nmi_ipi_self::x2apic", mode = Long64, path = Hw, requires = IRQCHIP | hvprobe_rt::abi::requires::X2APIC;
    fn nmi_ipi_self_x2apic() {
        set_handler(2, nmi_handler);
        Apic::X2Apic.enable();
        // SAFETY: the x2APIC ICR: shorthand self, delivery mode NMI.
        unsafe { cpu::wrmsr(0x830, 1 << 18 | 0b100 << 8) };
        wait_nmis(1);
        check_eq!(NMI_COUNT.load(SeqCst), 1, "NMIs delivered");
    }
}

test_case! {
    /// A GSI routed as an MSI with KVM_SET_GSI_ROUTING and raised through an irqfd
    /// delivers the route's vector to the route's APIC (api.rst 4.52 and 4.75).
    name = "irq::msi_gsi_route::xapic", mode = Long64, path = Full, requires = IRQCHIP;
    fn msi_gsi_route() {
        check_eq!(request(service::MSI_ROUTE, [40, 0xfee0_0000, 0x73, 0]), Ok(0), "KVM_SET_GSI_ROUTING");
        let cycles = raise_and_wait(Apic::XApic, 0x73, || {
            check_eq!(request(service::IRQFD, [40, 0, 0, 0]), Ok(0), "irqfd signal");
        });
        metric("routed_msi_to_handler", "cycles", cycles);
        check_eq!(count(0x73), 1, "deliveries");
    }
}

static RESAMPLED_IN_HANDLER: AtomicU64 = AtomicU64::new(u64::MAX);

fn resample_handler(frame: &mut Frame) {
    COUNT[frame.vector as usize & 0xff].fetch_add(1, SeqCst);
    RESAMPLED_IN_HANDLER.store(request(service::RESAMPLE_COUNT, [14, 0, 0, 0]).unwrap_or(99), SeqCst);
    Apic::XApic.eoi();
}

test_case! {
    /// A level-triggered pin raised by an irqfd with a resample eventfd: the interrupt is
    /// delivered once, and the guest's EOI deasserts the line and signals the resample
    /// eventfd, once (api.rst 4.75, KVM_IRQFD_FLAG_RESAMPLE).
    name = "irq::ioapic_irqfd_resample::xapic", mode = Long64, path = Full, requires = IRQCHIP;
    fn ioapic_irqfd_resample() {
        redirect(14, 0x74, true, false, 0);
        set_handler(0x74, resample_handler);
        Apic::XApic.enable();
        check_eq!(request(service::IRQFD_RESAMPLE, [14, 0, 0, 0]), Ok(0), "resampling irqfd signal");
        if count(0x74) == 0 {
            window();
        }
        // SAFETY: a console write: an exit, so that KVM has processed the EOI.
        unsafe { x86::io::outb(0xe9, b'.') };
        check_eq!(count(0x74), 1, "deliveries");
        check_eq!(RESAMPLED_IN_HANDLER.load(SeqCst), 0, "resamples before the EOI");
        check_eq!(request(service::RESAMPLE_COUNT, [14, 0, 0, 0]), Ok(1), "resamples after the EOI");
    }
}

// Level-triggered re-delivery (82093AA datasheet, redirection table: a level-sensitive
// interrupt is delivered again if the pin is still asserted when the EOI clears remote
// IRR; SDM Vol. 3A 11.8.5, the EOI broadcast to the IOAPIC). kvm-unit-tests' ioapic test
// fails two of these on PVM.

/// The pin the level cases drive, and what their handler does on each delivery.
const LEVEL_PIN: u32 = 14;
const LEVEL_VECTOR: u8 = 0x68;
/// 0: deassert from the second delivery on; 1: deassert from the first; 2: mask the entry
/// on the first delivery, deassert from the second.
static LEVEL_PLAN: AtomicU64 = AtomicU64::new(0);

fn level_entry(masked: bool) -> u32 {
    LEVEL_VECTOR as u32 | 1 << 15 | (masked as u32) << 16
}

fn level_counting(frame: &mut Frame) {
    let v = frame.vector as usize & 0xff;
    let n = COUNT[v].fetch_add(1, SeqCst) + 1;
    match (LEVEL_PLAN.load(SeqCst), n) {
        (0, 1) => {}
        (2, 1) => ioapic::write(0x10 + 2 * LEVEL_PIN, level_entry(true)),
        _ => irq_line(LEVEL_PIN, false),
    }
    active().eoi();
}

fn remote_irr() -> u32 {
    (ioapic::read(0x10 + 2 * LEVEL_PIN) >> 14) & 1
}

/// Sets up the level pin for `mode` with `plan`, masked or not.
fn level_setup(mode: Apic, plan: u64, masked: bool) {
    X2.store((mode == Apic::X2Apic) as u64, SeqCst);
    LEVEL_PLAN.store(plan, SeqCst);
    set_handler(LEVEL_VECTOR, level_counting);
    redirect(LEVEL_PIN, LEVEL_VECTOR, true, masked, 0);
    mode.enable();
}

/// Windows until `n` deliveries arrived or three windows passed.
fn wait_count(n: u64) {
    for _ in 0..3 {
        if count(LEVEL_VECTOR) >= n {
            break;
        }
        window();
    }
}

fn level_redeliver(mode: Apic) {
    level_setup(mode, 0, false);
    irq_line(LEVEL_PIN, true);
    wait_count(2);
    window();
    check_eq!(count(LEVEL_VECTOR), 2, "deliveries: the first EOI found the line still asserted, the second not");
    check_eq!(remote_irr(), 0, "remote IRR after the last EOI");
}

test_case! {
    /// A level pin still asserted at the EOI is delivered again, once more, and not after
    /// the line drops.
    name = "irq::ioapic_level_redeliver::xapic", mode = Long64, path = Full, requires = IRQCHIP;
    fn ioapic_level_redeliver() {
        level_redeliver(Apic::XApic);
    }
}

test_case! {
    /// As `::xapic`, the EOI through the x2APIC MSR.
    name = "irq::ioapic_level_redeliver::x2apic", mode = Long64, path = Hw, requires = IRQCHIP | X2APIC;
    fn ioapic_level_redeliver_x2() {
        level_redeliver(Apic::X2Apic);
    }
}

fn level_unmask(mode: Apic) {
    level_setup(mode, 1, true);
    irq_line(LEVEL_PIN, true);
    window();
    check_eq!(count(LEVEL_VECTOR), 0, "deliveries through the masked entry");
    ioapic::write(0x10 + 2 * LEVEL_PIN, level_entry(false));
    wait_count(1);
    check_eq!(count(LEVEL_VECTOR), 1, "deliveries after unmasking an asserted level pin");
    check_eq!(remote_irr(), 0, "remote IRR after the EOI");
}

test_case! {
    /// Unmasking the entry of a level pin that is asserted delivers its interrupt (82093AA:
    /// the mask only holds a level-sensitive interrupt back; kvm-unit-tests' "unmasked
    /// level interrupt").
    name = "irq::ioapic_level_unmask::xapic", mode = Long64, path = Full, requires = IRQCHIP;
    fn ioapic_level_unmask() {
        level_unmask(Apic::XApic);
    }
}

test_case! {
    /// As `::xapic`, in x2APIC mode.
    name = "irq::ioapic_level_unmask::x2apic", mode = Long64, path = Hw, requires = IRQCHIP | X2APIC;
    fn ioapic_level_unmask_x2() {
        level_unmask(Apic::X2Apic);
    }
}

fn level_mask_retrigger(mode: Apic) {
    level_setup(mode, 2, false);
    irq_line(LEVEL_PIN, true);
    wait_count(1);
    check_eq!(count(LEVEL_VECTOR), 1, "deliveries before the handler masked the entry");
    check_eq!(remote_irr(), 0, "remote IRR after the EOI of the masked entry");
    ioapic::write(0x10 + 2 * LEVEL_PIN, level_entry(false));
    wait_count(2);
    check_eq!(count(LEVEL_VECTOR), 2, "deliveries after unmasking the still-asserted pin");
}

test_case! {
    /// The handler masks the entry and EOIs with the line still asserted; unmasking it
    /// later delivers the interrupt again (kvm-unit-tests' "retriggered level interrupts
    /// with mask").
    name = "irq::ioapic_level_mask_retrigger::xapic", mode = Long64, path = Full, requires = IRQCHIP;
    fn ioapic_level_mask_retrigger() {
        level_mask_retrigger(Apic::XApic);
    }
}

test_case! {
    /// As `::xapic`, in x2APIC mode.
    name = "irq::ioapic_level_mask_retrigger::x2apic", mode = Long64, path = Hw, requires = IRQCHIP | X2APIC;
    fn ioapic_level_mask_retrigger_x2() {
        level_mask_retrigger(Apic::X2Apic);
    }
}

/// On vCPU 1: records the taker, masks the entry (the AP may not use the protocol to
/// drop the line) and EOIs.
fn ap_level_taker(_: &mut Frame) {
    AP_TAKERS.fetch_or(1 << (Apic::XApic.read(reg::ID) >> 24), SeqCst);
    ioapic::write(0x10 + 2 * LEVEL_PIN, level_entry(true));
    Apic::XApic.eoi();
}

test_case! {
    /// A level pin routed to APIC ID 1 is taken there, and that vCPU's EOI clears remote
    /// IRR (kvm-unit-tests' ioapic test finds it never handled on PVM).
    name = "irq::ioapic_level_dest_vcpu1::xapic", mode = Long64, path = Full, requires = IRQCHIP, vcpus = 2;
    fn ioapic_level_dest_vcpu1() {
        set_handler(LEVEL_VECTOR, ap_level_taker);
        Apic::XApic.enable();
        check!(hvprobe_rt::smp::wait_online(1, 2_000_000), "vCPU 1 did not come online");
        redirect(LEVEL_PIN, LEVEL_VECTOR, true, false, 1);
        irq_line(LEVEL_PIN, true);
        wait_takers(0b10);
        irq_line(LEVEL_PIN, false);
        check_eq!(AP_TAKERS.load(SeqCst), 0b10, "APIC IDs that took the level pin (bit n = ID n)");
        check_eq!(remote_irr(), 0, "remote IRR after vCPU 1's EOI");
    }
}

// NMI latching and priority (SDM Vol. 3A 6.7.1: while an NMI handler runs, at most one
// more NMI is held pending; 6.9: an NMI is serviced before a maskable interrupt pending at
// the same instruction boundary).

/// What each NMI handler entry asks for: 0 nothing, 1 two more NMIs, 2 a fixed self-IPI
/// and one more NMI.
static NMI_PLAN: AtomicU64 = AtomicU64::new(0);
/// Order of arrivals: each handler appends its tag (1 = NMI, 2 = the fixed vector) in
/// four bits.
static ARRIVALS: AtomicU64 = AtomicU64::new(0);
const ORDER_VECTOR: u8 = 0x6a;

fn arrive(tag: u64) {
    let _ = ARRIVALS.fetch_update(SeqCst, SeqCst, |a| Some(a << 4 | tag));
}

fn latching_nmi(_: &mut Frame) {
    let n = NMI_COUNT.fetch_add(1, SeqCst) + 1;
    arrive(1);
    if n == 1 {
        match NMI_PLAN.load(SeqCst) {
            1 => {
                let _ = request(service::NMI, [0; 4]);
                let _ = request(service::NMI, [0; 4]);
            }
            2 => {
                // Shorthand "self": no destination to write (and x2APIC has no ICR_HIGH).
                active().write(reg::ICR_LOW, 1 << 18 | ORDER_VECTOR as u32);
                let _ = request(service::NMI, [0; 4]);
            }
            _ => {}
        }
    }
}

fn order_handler(_: &mut Frame) {
    COUNT[ORDER_VECTOR as usize].fetch_add(1, SeqCst);
    arrive(2);
    active().eoi();
}

test_case! {
    /// Two NMIs raised inside the NMI handler: one is latched, the other lost, so the
    /// guest takes two NMIs in all (SDM Vol. 3A 6.7.1).
    name = "irq::nmi_latch_one::long64", mode = Long64, path = Full, requires = IRQCHIP;
    fn nmi_latch_one() {
        set_handler(2, latching_nmi);
        Apic::XApic.enable();
        NMI_PLAN.store(1, SeqCst);
        check_eq!(request(service::NMI, [0; 4]), Ok(0), "KVM_NMI");
        wait_nmis(2);
        // A third NMI, if the hypervisor kept one, comes within a window (a HLT the
        // backstop timer ends); a spin would cost seconds of emulated CPL0 on PVM.
        window();
        check_eq!(NMI_COUNT.load(SeqCst), 2, "NMIs taken for three raised, two of them while the first was in service");
    }
}

fn nmi_before_intr(mode: Apic) {
    X2.store((mode == Apic::X2Apic) as u64, SeqCst);
    set_handler(2, latching_nmi);
    set_handler(ORDER_VECTOR, order_handler);
    mode.enable();
    NMI_PLAN.store(2, SeqCst);
    // SAFETY: interrupts on, so that the fixed interrupt can arrive after the NMI handler.
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
    check_eq!(request(service::NMI, [0; 4]), Ok(0), "KVM_NMI");
    wait_nmis(2);
    if count(ORDER_VECTOR) == 0 {
        window();
    }
    // SAFETY: as above.
    unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
    check_eq!(ARRIVALS.load(SeqCst), 0x112, "arrival order (1 = NMI, 2 = the fixed self-IPI; oldest first)");
}

test_case! {
    /// Inside the NMI handler a fixed self-IPI and a second NMI become pending; at the
    /// handler's IRET the NMI is taken before the maskable interrupt (SDM Vol. 3A 6.9,
    /// priority among simultaneous events).
    name = "irq::nmi_before_intr::xapic", mode = Long64, path = Full, requires = IRQCHIP;
    fn nmi_before_intr_xapic() {
        nmi_before_intr(Apic::XApic);
    }
}

test_case! {
    /// As `::xapic`, in x2APIC mode.
    name = "irq::nmi_before_intr::x2apic", mode = Long64, path = Hw, requires = IRQCHIP | X2APIC;
    fn nmi_before_intr_x2apic() {
        nmi_before_intr(Apic::X2Apic);
    }
}

// A maskable interrupt against a fault at the next boundary (SDM Vol. 3A 6.9: an external
// interrupt, priority 5, is serviced before a fault in decoding the next instruction,
// priority 9; 6.8.3: STI holds interrupts off until the instruction after it completes).

fn ud_recorded(frame: &mut Frame) {
    arrive(3);
    frame.rip += 2;
}

/// With IF clear, makes a fixed self-IPI pending, then runs STI and (with `shadow` false)
/// a NOP before UD2. Returns the arrival order (2 = the interrupt, 3 = the #UD).
fn intr_against_fault(mode: Apic, shadow: bool) -> u64 {
    X2.store((mode == Apic::X2Apic) as u64, SeqCst);
    set_handler(ORDER_VECTOR, order_handler);
    set_handler(6, ud_recorded);
    mode.enable();
    ARRIVALS.store(0, SeqCst);
    active().write(reg::ICR_LOW, 1 << 18 | ORDER_VECTOR as u32);
    // SAFETY: the UD2 is handled by `ud_recorded`, which steps over it; the interrupt by
    // `order_handler`; interrupts are off again at the end.
    unsafe {
        if shadow {
            asm!("sti", "ud2", "cli", options(nomem, nostack));
        } else {
            asm!("sti", "nop", "ud2", "cli", options(nomem, nostack));
        }
    }
    ARRIVALS.load(SeqCst)
}

test_case! {
    /// A pending interrupt is taken at the boundary after STI's shadow, before the UD2 that
    /// follows faults (SDM Vol. 3A 6.9, priority 5 before 9).
    name = "irq::intr_before_fault::xapic", mode = Long64, path = Full, requires = IRQCHIP;
    fn intr_before_fault_xapic() {
        check_eq!(intr_against_fault(Apic::XApic, false), 0x23, "arrival order (2 = the interrupt, 3 = #UD; oldest first)");
    }
}

test_case! {
    /// As `::xapic`, in x2APIC mode.
    name = "irq::intr_before_fault::x2apic", mode = Long64, path = Hw, requires = IRQCHIP | X2APIC;
    fn intr_before_fault_x2apic() {
        check_eq!(intr_against_fault(Apic::X2Apic, false), 0x23, "arrival order (2 = the interrupt, 3 = #UD; oldest first)");
    }
}

test_case! {
    /// In STI's shadow the pending interrupt waits: the UD2 right after STI faults first,
    /// and the interrupt comes once the #UD handler returns (SDM Vol. 3A 6.8.3; Vol. 2B
    /// STI).
    name = "irq::sti_shadow_fault_first::xapic", mode = Long64, path = Full, requires = IRQCHIP;
    fn sti_shadow_fault_first_xapic() {
        check_eq!(intr_against_fault(Apic::XApic, true), 0x32, "arrival order (2 = the interrupt, 3 = #UD; oldest first)");
    }
}

test_case! {
    /// As `::xapic`, in x2APIC mode.
    name = "irq::sti_shadow_fault_first::x2apic", mode = Long64, path = Hw, requires = IRQCHIP | X2APIC;
    fn sti_shadow_fault_first_x2apic() {
        check_eq!(intr_against_fault(Apic::X2Apic, true), 0x32, "arrival order (2 = the interrupt, 3 = #UD; oldest first)");
    }
}
