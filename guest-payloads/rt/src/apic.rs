//! The local APIC, through its xAPIC MMIO page or its x2APIC MSRs (SDM Vol. 3A, ch. 11).

/// Register offsets in the xAPIC page; the x2APIC MSR is 0x800 + offset / 16.
pub mod reg {
    pub const ID: u32 = 0x20;
    pub const VERSION: u32 = 0x30;
    pub const TPR: u32 = 0x80;
    pub const EOI: u32 = 0xb0;
    /// Logical destination and destination format (xAPIC only; SDM Vol. 3A, 11.6.2.2).
    pub const LDR: u32 = 0xd0;
    pub const DFR: u32 = 0xe0;
    pub const SVR: u32 = 0xf0;
    pub const LVT_TIMER: u32 = 0x320;
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
}
