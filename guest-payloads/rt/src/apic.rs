//! The local APIC, through its xAPIC MMIO page or its x2APIC MSRs (SDM Vol. 3A, ch. 11).

/// Register offsets in the xAPIC page; the x2APIC MSR is 0x800 + offset / 16.
pub mod reg {
    pub const ID: u32 = 0x20;
    pub const VERSION: u32 = 0x30;
    pub const TPR: u32 = 0x80;
    pub const PPR: u32 = 0xa0;
    pub const EOI: u32 = 0xb0;
    /// Logical destination and destination format (xAPIC only; SDM Vol. 3A, 11.6.2.2).
    pub const LDR: u32 = 0xd0;
    pub const DFR: u32 = 0xe0;
    pub const SVR: u32 = 0xf0;
    /// The first words of the 256-bit ISR, TMR and IRR (see [`super::Apic::vector_bit`]).
    pub const ISR: u32 = 0x100;
    pub const TMR: u32 = 0x180;
    pub const IRR: u32 = 0x200;
    pub const ESR: u32 = 0x280;
    /// The ICR: its low half (x2APIC: the whole 64-bit MSR) and, in xAPIC mode only, the
    /// destination half.
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_PERF: u32 = 0x340;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_LINT1: u32 = 0x360;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3e0;
}

pub const MSR_APIC_BASE: u32 = 0x1b;
pub const APIC_BASE_ENABLE: u64 = 1 << 11;
pub const APIC_BASE_X2APIC: u64 = 1 << 10;

/// Which interface reaches the APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Apic {
    XApic,
    X2Apic,
}

impl Apic {
    /// Enables the APIC in this mode (IA32_APIC_BASE) and software-enables it (SVR bit 8).
    pub fn enable(self) -> Apic {
        // SAFETY: IA32_APIC_BASE exists whenever an APIC does; the tests that use it
        // require the in-kernel irqchip.
        unsafe {
            let base = crate::cpu::rdmsr(MSR_APIC_BASE);
            let mut new = base | APIC_BASE_ENABLE;
            if self == Apic::X2Apic {
                new |= APIC_BASE_X2APIC;
            }
            crate::cpu::wrmsr(MSR_APIC_BASE, new);
        }
        self.write(reg::SVR, 0x100 | 0xff);
        self
    }

    pub fn read(self, offset: u32) -> u32 {
        match self {
            // SAFETY: the xAPIC page is identity-mapped at its default base.
            Apic::XApic => unsafe {
                core::ptr::read_volatile((hvprobe_abi::layout::APIC_BASE + offset as u64) as *const u32)
            },
            // SAFETY: x2APIC mode is enabled; MSR reads of APIC registers have no side effects.
            Apic::X2Apic => unsafe { crate::cpu::rdmsr(0x800 + offset / 16) as u32 },
        }
    }

    pub fn write(self, offset: u32, value: u32) {
        match self {
            // SAFETY: as for read.
            Apic::XApic => unsafe {
                core::ptr::write_volatile((hvprobe_abi::layout::APIC_BASE + offset as u64) as *mut u32, value)
            },
            // SAFETY: as for read; the register is one the caller means to write.
            Apic::X2Apic => unsafe { crate::cpu::wrmsr(0x800 + offset / 16, value as u64) },
        }
    }

    pub fn eoi(self) {
        self.write(reg::EOI, 0);
    }

    /// Bit `vector` of a 256-bit register (`reg::ISR`, `reg::TMR`, `reg::IRR`), whose
    /// 32-bit words are 16 bytes apart (SDM Vol. 3A, 11.8.4).
    pub fn vector_bit(self, base: u32, vector: u8) -> bool {
        self.read(base + (vector as u32 / 32) * 0x10) & (1 << (vector % 32)) != 0
    }

    /// HLT with interrupts enabled, woken by the interrupt the caller waits for or, failing
    /// that, by a one-shot timer of `count` ticks (divide by 1) on `backstop`, whose
    /// handler the caller has installed: a lost interrupt ends the wait instead of halting
    /// forever. The timer is disarmed on return.
    pub fn hlt_with_backstop(self, backstop: u8, count: u32) {
        self.write(reg::TIMER_DIVIDE, 0b1011);
        self.write(reg::LVT_TIMER, backstop as u32);
        self.write(reg::TIMER_INITIAL, count);
        crate::cpu::sti_hlt();
        self.write(reg::TIMER_INITIAL, 0);
    }
}
