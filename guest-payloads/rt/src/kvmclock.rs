//! kvmclock: the pvclock structure KVM keeps for the guest (Documentation/virt/kvm/x86/
//! msr.rst, MSR_KVM_SYSTEM_TIME_NEW), read with its version protocol.

use core::arch::asm;

use hvprobe_abi::layout::{STATE_REGION, STATE_REGION_SIZE};

/// pvclock_vcpu_time_info.
#[repr(C)]
struct PvclockTime {
    version: u32,
    pad0: u32,
    tsc_timestamp: u64,
    system_time: u64,
    tsc_to_system_mul: u32,
    tsc_shift: i8,
    flags: u8,
    pad: [u8; 2],
}

/// One consistent reading of the structure (msr.rst's version protocol), and the TSC
/// read inside it.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    /// Even: KVM was not updating the structure.
    pub version: u32,
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
    pub flags: u8,
    pub tsc: u64,
}

impl Reading {
    /// Nanoseconds at `tsc`.
    pub fn ns(&self) -> u64 {
        let mut delta = self.tsc.wrapping_sub(self.tsc_timestamp);
        delta = if self.tsc_shift < 0 { delta >> -self.tsc_shift } else { delta << self.tsc_shift };
        self.system_time.wrapping_add(((delta as u128 * self.tsc_to_system_mul as u128) >> 32) as u64)
    }
}

use crate::cpu::kvm_msr::SYSTEM_TIME_NEW as MSR_KVM_SYSTEM_TIME_NEW;
/// CPUID 0x40000001 EAX bit 3 (Documentation/virt/kvm/x86/cpuid.rst).
pub const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
/// The page kvmclock writes: in the state region, which nothing else writes, so the
/// dirty-logging cases can tell KVM's writes from the guest's.
pub const PAGE: u64 = STATE_REGION + STATE_REGION_SIZE - 2 * 4096;

/// Turns kvmclock on at [`PAGE`]; skips the case where the host does not advertise
/// KVM_FEATURE_CLOCKSOURCE2.
pub fn enable() {
    if crate::cpu::cpuid(0x4000_0001, 0).eax & KVM_FEATURE_CLOCKSOURCE2 == 0 {
        crate::skip!("the host does not advertise KVM_FEATURE_CLOCKSOURCE2");
    }
    // SAFETY: the page is RAM in the state region; bit 0 enables the clock.
    unsafe { crate::cpu::wrmsr(MSR_KVM_SYSTEM_TIME_NEW, PAGE | 1) };
}

/// Reads the structure with the version protocol (msr.rst: retry while the version is
/// odd or changed).
pub fn read() -> Reading {
    read_at(PAGE)
}

/// Turns this vCPU's kvmclock on with its structure at `addr` (each vCPU needs its own:
/// msr.rst, MSR_KVM_SYSTEM_TIME_NEW is per vCPU). The caller checked the feature.
pub fn enable_at(addr: u64) {
    // SAFETY: `addr` is 4-byte-aligned RAM the caller reserved; bit 0 enables the clock.
    unsafe { crate::cpu::wrmsr(MSR_KVM_SYSTEM_TIME_NEW, addr | 1) };
}

/// [`read`] of the structure at `addr`.
pub fn read_at(addr: u64) -> Reading {
    let p = addr as *const PvclockTime;
    loop {
        // SAFETY: KVM keeps the structure in the page; fields are read volatile because
        // the host updates them.
        unsafe {
            let version = (&raw const (*p).version).read_volatile();
            if version & 1 != 0 {
                continue;
            }
            asm!("lfence", options(nostack));
            let r = Reading {
                version,
                tsc_timestamp: (&raw const (*p).tsc_timestamp).read_volatile(),
                system_time: (&raw const (*p).system_time).read_volatile(),
                tsc_to_system_mul: (&raw const (*p).tsc_to_system_mul).read_volatile(),
                tsc_shift: (&raw const (*p).tsc_shift).read_volatile(),
                flags: (&raw const (*p).flags).read_volatile(),
                tsc: crate::cpu::rdtsc(),
            };
            asm!("lfence", options(nostack));
            if (&raw const (*p).version).read_volatile() == version {
                return r;
            }
        }
    }
}

/// Nanoseconds by kvmclock.
pub fn ns() -> u64 {
    read().ns()
}
