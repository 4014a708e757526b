//! Thin wrappers over instructions the tests and the runtime use everywhere.

use core::arch::asm;

/// CPUID result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpuid {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

impl Cpuid {
    /// Register `index` (0 EAX, 1 EBX, 2 ECX, 3 EDX, as `abi::CpuidClear` numbers them).
    pub fn reg(&self, index: u32) -> u32 {
        match index {
            0 => self.eax,
            1 => self.ebx,
            2 => self.ecx,
            _ => self.edx,
        }
    }
}

pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let r = x86::cpuid::cpuid!(leaf, subleaf);
    Cpuid { eax: r.eax, ebx: r.ebx, ecx: r.ecx, edx: r.edx }
}

/// Joins three CPUID registers into a 12-byte signature: EBX, EDX, ECX for leaf 0's vendor,
/// EBX, ECX, EDX for the hypervisor leaf 0x4000_0000.
pub fn vendor_bytes(order: [u32; 3]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for (i, word) in order.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// True on AMD (and Hygon) CPUs, where the hypercall instruction is VMMCALL.
pub fn is_amd() -> bool {
    let r = cpuid(0, 0);
    let v = vendor_bytes([r.ebx, r.edx, r.ecx]);
    &v == b"AuthenticAMD" || &v == b"HygonGenuine"
}

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects; CR4.TSD is clear in every harness-built mode.
    unsafe { core::arch::x86_64::_rdtsc() }
}

// Control-register reads are CPL0-only; a CPL3 caller gets #GP, which is then the test's
// finding. Reading has no side effects.

pub fn read_cr0() -> u64 {
    // SAFETY: see above.
    unsafe { x86::controlregs::cr0() }.bits() as u64
}

pub fn read_cr2() -> u64 {
    // SAFETY: see above.
    unsafe { x86::controlregs::cr2() as u64 }
}

pub fn read_cr3() -> u64 {
    // SAFETY: see above.
    unsafe { x86::controlregs::cr3() }
}

pub fn read_cr4() -> u64 {
    // SAFETY: see above.
    unsafe { x86::controlregs::cr4() }.bits() as u64
}

/// # Safety
/// The new CR0 must keep the harness-built mode working (PE, PG).
pub unsafe fn write_cr0(v: u64) {
    // SAFETY: the caller keeps the mode intact.
    unsafe { asm!("mov cr0, {}", in(reg) v, options(nostack)) };
}

/// # Safety
/// The caller changes only CR4 bits whose effect it controls (and puts them back).
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: the caller's contract.
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nostack)) };
}

pub fn read_cs() -> u16 {
    let v: u16;
    // SAFETY: reading a segment register has no side effects.
    unsafe { asm!("mov {0:x}, cs", out(reg) v, options(nomem, nostack)) };
    v
}

pub fn read_rflags() -> u64 {
    let v: u64;
    // SAFETY: pushfq/pop only touch our own stack.
    unsafe { asm!("pushfq", "pop {}", out(reg) v, options(nomem)) };
    v
}

/// Reads an MSR; #GP is the caller's concern (use `catch!` to test for it).
///
/// # Safety
/// Reading some MSRs has side effects.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    // SAFETY: forwarded to the caller.
    unsafe { x86::msr::rdmsr(msr) }
}

/// # Safety
/// Writing an MSR can change anything about the CPU.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { x86::msr::wrmsr(msr, value) }
}

/// Enables interrupts and halts until one arrives, atomically (STI's interrupt shadow
/// covers the HLT).
pub fn sti_hlt() {
    // SAFETY: the test has set up a handler for the interrupt it waits for.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// A KVM hypercall: number in RAX, arguments in RBX, RCX, RDX, RSI, result in RAX
/// (Documentation/virt/kvm/x86/hypercalls.rst). VMCALL on Intel, VMMCALL on AMD.
pub fn kvm_hypercall(nr: u64, args: [u64; 4]) -> u64 {
    // RBX is reserved by LLVM, so the first argument is swapped in and out around the call.
    macro_rules! hypercall {
        ($insn:literal) => {{
            let ret: u64;
            // SAFETY: a hypercall only changes RAX; unknown numbers return -KVM_ENOSYS.
            unsafe {
                asm!("xchg {b}, rbx", $insn, "xchg {b}, rbx", b = inout(reg) args[0] => _,
                     inlateout("rax") nr => ret, in("rcx") args[1], in("rdx") args[2],
                     in("rsi") args[3], options(nostack))
            };
            ret
        }};
    }
    if is_amd() { hypercall!("vmmcall") } else { hypercall!("vmcall") }
}

/// KVM's paravirtual MSRs (Documentation/virt/kvm/x86/msr.rst) that more than one place
/// uses; architectural MSRs come from the `x86` crate (`x86::msr`).
pub mod kvm_msr {
    /// The legacy kvmclock MSR (KVM_FEATURE_CLOCKSOURCE).
    pub const SYSTEM_TIME: u32 = 0x12;
    pub const WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
    pub const SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
    pub const ASYNC_PF_EN: u32 = 0x4b56_4d02;
    pub const STEAL_TIME: u32 = 0x4b56_4d03;
    pub const PV_EOI_EN: u32 = 0x4b56_4d04;
    pub const POLL_CONTROL: u32 = 0x4b56_4d05;
    pub const ASYNC_PF_INT: u32 = 0x4b56_4d06;
}
