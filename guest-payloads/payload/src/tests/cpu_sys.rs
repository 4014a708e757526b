//! The `cpu` area, continued: control registers, MSRs and system instructions.

use core::arch::global_asm;

use hvprobe_rt::abi;
use hvprobe_rt::cpu;
use hvprobe_rt::exception;
use hvprobe_rt::user::{call_at_cpl3, call_at_cpl3_with_rflags};

use super::cpu::cpuid_as_set;

use super::cpu::{check_msr_refuses_noncanonical, check_msr_roundtrips};
use hvprobe_rt::{catch, check, check_eq, check_exception, check_no_exception, check_values, skip, test_case};

use x86::msr::IA32_EFER as MSR_EFER;
use x86::msr::{
    IA32_FS_BASE as MSR_FS_BASE, IA32_GS_BASE as MSR_GS_BASE, IA32_KERNEL_GSBASE as MSR_KERNEL_GS_BASE,
    IA32_PAT as MSR_PAT, IA32_TIME_STAMP_COUNTER as MSR_TSC, IA32_TSC_AUX as MSR_TSC_AUX,
};

test_case! {
    /// Setting a bit of CR0[63:32] raises #GP(0), and so does CR0.PG=1 with PE=0
    /// (SDM Vol. 3A, 2.5 and MOV to CR: "#GP(0) if an attempt is made to write a 1 to any
    /// reserved bit in CR0[63:32]" / "to set PG while PE is clear").
    name = "cpu::cr0_reserved_gp::long64", mode = Long64, path = Full;
    fn cr0_reserved_gp() {
        let cr0 = cpu::read_cr0();
        check_exception!(catch!("mov cr0, {0}", in(reg) cr0 | 1 << 32), exception::GP, Some(0));
        check_exception!(catch!("mov cr0, {0}", in(reg) cr0 & !1), exception::GP, Some(0));
        check_eq!(cpu::read_cr0(), cr0, "a faulting write changes nothing");
    }
}

test_case! {
    /// Clearing CR0.PG in 64-bit mode raises #GP(0): leaving long mode needs compatibility
    /// mode first (SDM Vol. 3A, 10.8.5.4 and MOV to CR).
    name = "cpu::cr0_clear_pg_gp::long64", mode = Long64, path = Full;
    fn cr0_clear_pg_gp() {
        let cr0 = cpu::read_cr0();
        check_exception!(catch!("mov cr0, {0}", in(reg) cr0 & !(1 << 31)), exception::GP, Some(0));
    }
}

test_case! {
    /// A reserved CR4 bit (15) or bits 63:32 raise #GP(0), and clearing CR4.PAE in long
    /// mode raises #GP(0) (SDM Vol. 3A, 2.5 and 10.8.5.4).
    name = "cpu::cr4_reserved_gp::long64", mode = Long64, path = Full;
    fn cr4_reserved_gp() {
        let cr4 = cpu::read_cr4();
        check_exception!(catch!("mov cr4, {0}", in(reg) cr4 | 1 << 15), exception::GP, Some(0));
        check_exception!(catch!("mov cr4, {0}", in(reg) cr4 | 1 << 40), exception::GP, Some(0));
        check_exception!(catch!("mov cr4, {0}", in(reg) cr4 & !(1 << 5)), exception::GP, Some(0));
        check_eq!(cpu::read_cr4(), cr4);
    }
}

test_case! {
    /// CR4 feature bits can be set only where CPUID advertises the feature: CR4.PKE[22]
    /// needs CPUID.7.0:ECX.PKU[3], CR4.FSGSBASE[16] needs CPUID.7.0:EBX[0]
    /// (SDM Vol. 3A, 2.5; MOV to CR4 "#GP(0) ... reserved bit").
    name = "cpu::cr4_feature_bits::long64", mode = Long64, path = Full;
    fn cr4_feature_bits() {
        let cr4 = cpu::read_cr4();
        let leaf7 = cpu::cpuid(7, 0);
        for (bit, advertised) in [(22u32, leaf7.ecx & (1 << 3) != 0), (16, leaf7.ebx & 1 != 0)] {
            let e = catch!("mov cr4, {0}", in(reg) cr4 | 1 << bit);
            if advertised {
                check_eq!(e, None, "CR4 bit {} is advertised and must be settable", bit);
                check_eq!(cpu::read_cr4() & (1 << bit), 1 << bit);
                // SAFETY: restores the harness's CR4.
                unsafe { core::arch::asm!("mov cr4, {0}", in(reg) cr4) };
            } else {
                check!(e.is_some(), "setting CR4 bit {} without its CPUID feature raised no #GP", bit);
                check_exception!(e, exception::GP, Some(0));
            }
        }
    }
}

test_case! {
    /// CR8 is the TPR's priority class: it reads back what was written, and writing bits
    /// 63:4 raises #GP(0) (SDM Vol. 3A, 2.5 and 11.8.6.1).
    name = "cpu::cr8_tpr::long64", mode = Long64, path = Full;
    fn cr8_tpr() {
        let mut v: u64;
        // SAFETY: TPR changes only which interrupts are held back; none are pending.
        unsafe { core::arch::asm!("mov cr8, {0}", "mov {0}, cr8", inout(reg) 9u64 => v) };
        check_eq!(v, 9);
        check_exception!(catch!("mov cr8, {0}", in(reg) 0x10u64), exception::GP, Some(0));
        // SAFETY: as above.
        unsafe { core::arch::asm!("mov cr8, {0}", "mov {0}, cr8", inout(reg) 0u64 => v) };
        check_eq!(v, 0);
    }
}

test_case! {
    /// CR3 keeps its PWT/PCD bits, and bits above MAXPHYADDR raise #GP(0)
    /// (SDM Vol. 3A, 4.5 and MOV to CR3).
    name = "cpu::cr3_bits::long64", mode = Long64, path = Full;
    fn cr3_bits() {
        let cr3 = cpu::read_cr3();
        // SAFETY: the same page tables, with caching attributes that KVM ignores here.
        unsafe { core::arch::asm!("mov cr3, {0}", in(reg) cr3 | 0x18) };
        check_eq!(cpu::read_cr3(), cr3 | 0x18, "PWT and PCD read back");
        // SAFETY: restores the harness's CR3.
        unsafe { core::arch::asm!("mov cr3, {0}", in(reg) cr3) };
        let maxphy = cpu::cpuid(0x8000_0008, 0).eax & 0xff;
        if maxphy >= 52 {
            skip!("MAXPHYADDR is {}: no reserved CR3 address bits", maxphy);
        }
        check_exception!(catch!("mov cr3, {0}", in(reg) cr3 | 1 << 51), exception::GP, Some(0));
    }
}

test_case! {
    /// EFER reserved bits raise #GP(0) on WRMSR (SDM Vol. 3A, 2.2.1 and WRMSR).
    name = "cpu::efer_reserved_gp::long64", mode = Long64, path = Full;
    fn efer_reserved_gp() {
        // SAFETY: reading EFER has no side effects.
        let efer = unsafe { cpu::rdmsr(MSR_EFER) };
        let high = (efer >> 32) as u32 | 1 << 31;
        let e = catch!("wrmsr", in("ecx") MSR_EFER, in("eax") efer as u32, in("edx") high);
        check_exception!(e, exception::GP, Some(0));
        // SAFETY: as above.
        check_eq!(unsafe { cpu::rdmsr(MSR_EFER) }, efer);
    }
}

test_case! {
    /// WRMSR to IA32_TSC sets the counter: RDTSC right after reads at least the value
    /// written, and not far beyond (SDM Vol. 3B, 18.17).
    name = "cpu::msr_tsc_write::long64", mode = Long64, path = Full;
    fn msr_tsc_write() {
        // 2^40 cycles (about seven minutes at 2.6 GHz) ahead of the count now: whatever
        // the uptime, a write that took effect and one that did not cannot be confused.
        let target = cpu::rdtsc().wrapping_add(1 << 40);
        // SAFETY: only this vCPU's TSC moves; nothing in the guest depends on it yet.
        unsafe { cpu::wrmsr(MSR_TSC, target) };
        let now = cpu::rdtsc();
        check_values!(now >= target, target, now, "RDTSC after WRMSR IA32_TSC is below the value written");
        check_values!(now - target < 1 << 34, target, now, "RDTSC after WRMSR IA32_TSC is far beyond the value written");
    }
}

test_case! {
    /// IA32_PAT round-trips, and a reserved memory type (2 or 3) in any entry raises #GP(0)
    /// (SDM Vol. 3A, 13.12.2).
    name = "cpu::msr_pat::long64", mode = Long64, path = Full;
    fn msr_pat() {
        // SAFETY: PAT only affects caching, which KVM does not model for RAM here.
        let pat = unsafe { cpu::rdmsr(MSR_PAT) };
        let new = 0x0007_0406_0007_0406u64;
        // SAFETY: as above.
        let back = unsafe {
            cpu::wrmsr(MSR_PAT, new);
            cpu::rdmsr(MSR_PAT)
        };
        check_eq!(back, new);
        let e = catch!("wrmsr", in("ecx") MSR_PAT, in("eax") 0x0007_0402u32, in("edx") 0x0007_0406u32);
        check!(e.is_some(), "PAT entry 1 = 2 (reserved type) was accepted without #GP");
        check_exception!(e, exception::GP, Some(0));
        // SAFETY: restores the PAT.
        unsafe { cpu::wrmsr(MSR_PAT, pat) };
    }
}

test_case! {
    /// FS_BASE and GS_BASE round-trip and reject non-canonical values with #GP(0)
    /// (SDM Vol. 3A, 3.4.4 and WRMSR).
    name = "cpu::msr_fs_gs_base::long64", mode = Long64, path = Full;
    fn msr_fs_gs_base() {
        // The runtime uses neither FS nor GS.
        check_msr_roundtrips(&[(MSR_FS_BASE, 0x0000_7fff_1234_5000), (MSR_GS_BASE, 0x0000_7fff_1234_5000)]);
        check_msr_refuses_noncanonical(MSR_FS_BASE, "IA32_FS_BASE");
        check_msr_refuses_noncanonical(MSR_GS_BASE, "IA32_GS_BASE");
    }
}

test_case! {
    /// SWAPGS exchanges GS.base with IA32_KERNEL_GS_BASE (SDM Vol. 2B, SWAPGS).
    name = "cpu::swapgs::long64", mode = Long64, path = Full;
    fn swapgs() {
        // SAFETY: the runtime does not use GS.
        let (gs, kernel) = unsafe {
            cpu::wrmsr(MSR_GS_BASE, 0x1111_0000);
            cpu::wrmsr(MSR_KERNEL_GS_BASE, 0x2222_0000);
            core::arch::asm!("swapgs");
            (cpu::rdmsr(MSR_GS_BASE), cpu::rdmsr(MSR_KERNEL_GS_BASE))
        };
        check_eq!(gs, 0x2222_0000);
        check_eq!(kernel, 0x1111_0000);
    }
}

test_case! {
    /// RDTSCP returns IA32_TSC_AUX in ECX (SDM Vol. 2B, RDTSCP), where CPUID advertises it.
    name = "cpu::rdtscp_aux::long64", mode = Long64, path = Full;
    fn rdtscp_aux() {
        if cpuid_as_set(0x8000_0001, 0).is_none_or(|c| c.edx & RDTSCP_BIT == 0) {
            skip!("KVM does not offer RDTSCP (KVM_GET_SUPPORTED_CPUID.80000001H:EDX[27] is clear)");
        }
        let aux: u32;
        // SAFETY: TSC_AUX is only read by RDTSCP/RDPID.
        unsafe {
            cpu::wrmsr(MSR_TSC_AUX, 0x5a5a);
            core::arch::asm!("rdtscp", out("ecx") aux, out("eax") _, out("edx") _);
        }
        check_eq!(aux, 0x5a5a);
    }
}

/// GDTR or IDTR as SGDT/SIDT store it.
pub(super) type TableRegister = x86::dtables::DescriptorTablePointer<u8>;

fn table_register(limit: u16, base: u64) -> TableRegister {
    TableRegister { limit, base: base as *const u8 }
}

pub(super) fn sgdt() -> TableRegister {
    let mut r = table_register(0, 0);
    // SAFETY: SGDT only stores the GDTR into `r`.
    unsafe { x86::dtables::sgdt(&mut r) };
    r
}

pub(super) fn sidt() -> TableRegister {
    let mut r = table_register(0, 0);
    // SAFETY: SIDT only stores the IDTR into `r`.
    unsafe { x86::dtables::sidt(&mut r) };
    r
}

/// (limit, base) of a stored register, comparable with check_eq!.
pub(super) fn limit_base(r: &TableRegister) -> (u16, u64) {
    let (limit, base) = (r.limit, r.base);
    (limit, base as u64)
}

test_case! {
    /// SGDT, SIDT and STR return what the VMM loaded (SDM Vol. 2B, SGDT/SIDT/STR).
    name = "cpu::descriptor_tables_store::long64", mode = Long64, path = Full;
    fn descriptor_tables_store() {
        let tr: u16;
        // SAFETY: STR only reads the task register.
        unsafe { core::arch::asm!("str {0:x}", out(reg) tr) };
        check_eq!(limit_base(&sgdt()), ((8 * abi::selector::GDT_ENTRIES - 1) as u16, abi::layout::GDT));
        check_eq!(limit_base(&sidt()), (4095, abi::layout::IDT));
        check_eq!(tr, abi::selector::TSS);
    }
}

test_case! {
    /// LGDT loads a new GDTR that SGDT then returns (SDM Vol. 2A, LGDT).
    name = "cpu::lgdt_roundtrip::long64", mode = Long64, path = Full;
    fn lgdt_roundtrip() {
        let old = sgdt();
        let new = table_register(0x2f, abi::layout::GDT);
        // SAFETY: the new GDTR is the same table with a shorter limit that still covers
        // every selector in use; the old one is restored before anything loads a segment.
        let back = unsafe {
            x86::dtables::lgdt(&new);
            let back = sgdt();
            x86::dtables::lgdt(&old);
            back
        };
        check_eq!(limit_base(&back), limit_base(&new));
    }
}

test_case! {
    /// CLI and STI at CPL0 clear and set RFLAGS.IF (SDM Vol. 2A, CLI/STI).
    name = "cpu::cli_sti::long64", mode = Long64, path = Full;
    fn cli_sti() {
        let (off, on): (u64, u64);
        // SAFETY: no interrupt source is armed, so IF=1 for a moment delivers nothing.
        unsafe { core::arch::asm!("sti", "pushfq", "pop {0}", "cli", "pushfq", "pop {1}", out(reg) on, out(reg) off) };
        check_eq!(on & (1 << 9), 1 << 9);
        check_eq!(off & (1 << 9), 0);
    }
}

test_case! {
    /// Privileged instructions at CPL3 raise #GP(0): HLT, MOV to CR0, LGDT, WRMSR, and port
    /// I/O is allowed only because IOPL is 3 (SDM Vol. 3A, 5.9).
    name = "cpu::privileged_gp::user64", mode = User64, path = Hw;
    fn privileged_gp() {
        let fault = |e: Option<hvprobe_rt::Exception>| e.map(|e| (e.vector, e.error_code));
        let want = Some((exception::GP, Some(0)));
        check_eq!(fault(catch!("hlt")), want, "HLT");
        check_eq!(fault(catch!("mov cr0, {0}", in(reg) 0x8000_0033u64)), want, "MOV to CR0");
        check_eq!(fault(catch!("lgdt [{0}]", in(reg) 0x1000u64)), want, "LGDT");
        check_eq!(fault(catch!("wrmsr", in("ecx") MSR_TSC, in("eax") 0, in("edx") 0)), want, "WRMSR");
    }
}

extern "C" fn sgdt_at_cpl3(buf: u64) {
    // SAFETY: stores 10 bytes into the caller's buffer (user-accessible memory).
    unsafe { core::arch::asm!("sgdt [{0}]", in(reg) buf) };
}

/// Runs `f` at CPL3 with CR4.UMIP set, where KVM offers UMIP, and returns what CPL3
/// raised.
fn with_umip_at_cpl3(f: extern "C" fn(u64), arg: u64) -> Option<hvprobe_rt::Exception> {
    if cpuid_as_set(7, 0).is_none_or(|c| c.ecx & (1 << 2) == 0) {
        skip!("KVM does not offer UMIP (KVM_GET_SUPPORTED_CPUID.7.0:ECX[2] is clear)");
    }
    let cr4 = cpu::read_cr4();
    // SAFETY: UMIP only restricts CPL3 descriptor-table stores; restored below.
    unsafe { core::arch::asm!("mov cr4, {0}", in(reg) cr4 | 1 << 11) };
    let e = call_at_cpl3(f, arg);
    // SAFETY: restores CR4.
    unsafe { core::arch::asm!("mov cr4, {0}", in(reg) cr4) };
    e
}

test_case! {
    /// With CR4.UMIP set, SGDT at CPL3 raises #GP(0); without it SGDT works at CPL3 and
    /// stores the GDTR the VMM loaded (SDM Vol. 3A, 2.5 "UMIP"; Vol. 2B SGDT), where KVM
    /// offers UMIP.
    name = "cpu::umip::long64", mode = Long64, path = Hw;
    fn umip() {
        let mut buf = [0u8; 10];
        check_eq!(call_at_cpl3(sgdt_at_cpl3, buf.as_mut_ptr() as u64), None, "SGDT at CPL3 without UMIP");
        let limit = u16::from_le_bytes([buf[0], buf[1]]);
        let base = u64::from_le_bytes(core::array::from_fn(|i| buf[2 + i]));
        check_eq!(limit, (8 * abi::selector::GDT_ENTRIES - 1) as u16, "GDTR limit SGDT stored at CPL3");
        check_values!(base == abi::layout::GDT, abi::layout::GDT, base, "SGDT at CPL3 stored another GDT base than the VMM loaded");
        let e = with_umip_at_cpl3(sgdt_at_cpl3, buf.as_mut_ptr() as u64);
        check!(e.is_some(), "SGDT at CPL3 with CR4.UMIP raised nothing");
        check_exception!(e, exception::GP, Some(0));
    }
}

extern "C" fn misaligned_at_cpl3(addr: u64) {
    // SAFETY: sets RFLAGS.AC and loads from `addr`, readable user memory.
    unsafe {
        core::arch::asm!("pushfq", "or dword ptr [rsp], 0x40000", "popfq", "mov {0}, [{0}]", inout(reg) addr => _)
    };
}

test_case! {
    /// With CR0.AM and RFLAGS.AC set, a misaligned load at CPL3 raises #AC(0); at CPL0
    /// alignment is not checked (SDM Vol. 3A, 6.15, Interrupt 17).
    name = "cpu::exc_ac::long64", mode = Long64, path = Hw;
    fn exc_ac() {
        let cr0 = cpu::read_cr0();
        // SAFETY: CR0.AM (bit 18) only enables alignment checks at CPL3; restored below.
        unsafe { cpu::write_cr0(cr0 | 1 << 18) };
        let word = [0u64; 2];
        let misaligned = word.as_ptr() as u64 + 1;
        let at_cpl3 = call_at_cpl3(misaligned_at_cpl3, misaligned);
        let at_cpl0 = catch!("pushfq", "or dword ptr [rsp], 0x40000", "popfq", "mov {0}, [{0}]", "pushfq",
                             "and dword ptr [rsp], 0xfffbffff", "popfq", inout(reg) misaligned => _);
        // SAFETY: restores CR0.
        unsafe { cpu::write_cr0(cr0) };
        check!(at_cpl3.is_some(), "misaligned load at CPL3 with AM and AC raised nothing");
        check_exception!(at_cpl3, exception::AC, Some(0));
        check_eq!(at_cpl0, None, "no alignment check at CPL0");
    }
}

test_case! {
    /// XSETBV loads XCR0 and XGETBV reads it back; XCR0 without x87 (bit 0) raises #GP(0)
    /// (SDM Vol. 2C, XSETBV), with CR4.OSXSAVE set where CPUID.1:ECX.XSAVE[26] allows it.
    name = "cpu::xsetbv::long64", mode = Long64, path = Full;
    fn xsetbv() {
        if cpuid_as_set(1, 0).is_none_or(|c| c.ecx & XSAVE_BIT == 0) {
            skip!("KVM does not offer XSAVE (KVM_GET_SUPPORTED_CPUID.1:ECX[26] is clear)");
        }
        let cr4 = cpu::read_cr4();
        // SAFETY: CR4.OSXSAVE (bit 18) enables XGETBV/XSETBV; restored below.
        unsafe { core::arch::asm!("mov cr4, {0}", in(reg) cr4 | 1 << 18) };
        // Each step is checked before the next runs, so one that the hypervisor cannot
        // handle does not hide how it handled the others.
        check_eq!(catch!("xsetbv", in("ecx") 0, in("eax") 1, in("edx") 0), None, "XSETBV XCR0 = 1");
        check_exception!(catch!("xsetbv", in("ecx") 0, in("eax") 0, in("edx") 0), exception::GP, Some(0));
        let (lo, hi): (u32, u32);
        // SAFETY: XGETBV of XCR0 has no side effects with OSXSAVE set.
        unsafe { core::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi) };
        // SAFETY: restores CR4.
        unsafe { core::arch::asm!("mov cr4, {0}", in(reg) cr4) };
        check_eq!((lo as u64) | (hi as u64) << 32, 1, "XGETBV reads XCR0 back");
    }
}

/// SYSCALL's view from CPL0: RCX (return RIP), R11 (RFLAGS), CS.
static SYSCALL_SEEN: [core::sync::atomic::AtomicU64; 3] = [const { core::sync::atomic::AtomicU64::new(0) }; 3];

global_asm!(
    ".section .text, \"ax\"",
    "hv_syscall_entry:",
    "mov [rip + {seen}], rcx",
    "mov [rip + {seen} + 8], r11",
    "mov [rip + {seen} + 16], cs",
    "sysretq",
    seen = sym SYSCALL_SEEN,
);

unsafe extern "C" {
    fn hv_syscall_entry();
}

extern "C" fn syscall_at_cpl3(_: u64) {
    let after: u64;
    // SAFETY: SYSCALL enters hv_syscall_entry, which returns at once with SYSRET; RCX and
    // R11 are clobbered by the pair, as the ABI of SYSCALL says.
    unsafe {
        core::arch::asm!("lea {after}, [rip + 2f]", "syscall", "2:", after = out(reg) after, out("rcx") _,
                         out("r11") _);
    }
    SYSCALL_SEEN[0].fetch_sub(after, core::sync::atomic::Ordering::SeqCst);
}

test_case! {
    /// SYSCALL from CPL3 enters IA32_LSTAR at CPL0 with RCX = the next RIP, R11 = RFLAGS
    /// and CS from IA32_STAR[47:32]; SYSRET returns to CPL3 (SDM Vol. 2B, SYSCALL/SYSRET).
    name = "cpu::syscall_sysret::long64", mode = Long64, path = Hw;
    fn syscall_sysret() {
        // SAFETY: EFER.SCE, STAR, LSTAR and SFMASK only shape SYSCALL, which only this
        // test executes. 64-bit SYSRET loads CS = STAR[63:48] + 16 and SS = STAR[63:48] + 8
        // (RPL 3): base 0x18 gives the user selectors 0x2b and 0x23.
        unsafe {
            let efer = cpu::rdmsr(MSR_EFER);
            cpu::wrmsr(MSR_EFER, efer | 1);
            cpu::wrmsr(0xc000_0081, (0x18u64 << 48) | ((abi::selector::CODE64 as u64) << 32));
            cpu::wrmsr(0xc000_0082, hv_syscall_entry as *const () as u64);
            cpu::wrmsr(0xc000_0084, 0x200);
        }
        check_no_exception!(call_at_cpl3(syscall_at_cpl3, 0));
        let seen = |i: usize| SYSCALL_SEEN[i].load(core::sync::atomic::Ordering::SeqCst);
        check_eq!(seen(0), 0, "RCX at entry is the RIP after SYSCALL (stored minus expected)");
        check_eq!(seen(1) & 0x3000, 0x3000, "R11 holds the CPL3 RFLAGS (IOPL 3)");
        check_eq!(seen(2), abi::selector::CODE64 as u64, "CS at entry comes from STAR[47:32]");
    }
}

test_case! {
    /// IA32_APIC_BASE of the boot vCPU: BSP[8] and EN[11] set, base 0xFEE00000
    /// (SDM Vol. 3A, 11.4.4).
    name = "cpu::msr_apic_base::long64", mode = Long64, path = Full;
    fn msr_apic_base() {
        // SAFETY: reading IA32_APIC_BASE has no side effects.
        let base = unsafe { cpu::rdmsr(0x1b) };
        check_eq!(base & (1 << 8), 1 << 8, "BSP flag");
        check_eq!(base & (1 << 11), 1 << 11, "APIC global enable");
        check_eq!(base & 0xf_ffff_f000, abi::layout::APIC_BASE);
    }
}

test_case! {
    /// Writing IA32_TSC_ADJUST moves the TSC by the same amount (SDM Vol. 3B, 18.17.3),
    /// where CPUID.7.0:EBX.TSC_ADJUST[1] advertises it.
    name = "cpu::msr_tsc_adjust::long64", mode = Long64, path = Full;
    fn msr_tsc_adjust() {
        if cpu::cpuid(7, 0).ebx & (1 << 1) == 0 {
            skip!("CPUID.7.0:EBX.TSC_ADJUST[1] is clear");
        }
        const STEP: u64 = 1 << 40;
        let before = cpu::rdtsc();
        // SAFETY: moves this vCPU's TSC forward; nothing here depends on its value.
        let adjust = unsafe {
            cpu::wrmsr(0x3b, cpu::rdmsr(0x3b).wrapping_add(STEP));
            cpu::rdmsr(0x3b)
        };
        let after = cpu::rdtsc();
        check_values!(adjust >= STEP, STEP, adjust, "TSC_ADJUST reads less than the step added to it");
        let moved = after.wrapping_sub(before);
        check_values!(moved >= STEP, STEP, moved, "the TSC moved by less than the step added to TSC_ADJUST");
        check_values!(moved < STEP + (1 << 34), STEP, moved, "the TSC moved far more than the step added to TSC_ADJUST");
    }
}

test_case! {
    /// MTRRs: IA32_MTRR_DEF_TYPE round-trips a valid value and refuses a reserved bit or
    /// type with #GP(0) (SDM Vol. 3A, 13.11.2.1), where CPUID.1:EDX.MTRR[12] advertises them.
    name = "cpu::msr_mtrr::long64", mode = Long64, path = Full;
    fn msr_mtrr() {
        if cpu::cpuid(1, 0).edx & (1 << 12) == 0 {
            skip!("CPUID.1:EDX.MTRR[12] is clear");
        }
        // SAFETY: MTRRs only set memory types, which KVM ignores for this guest's RAM.
        let (cap, old) = unsafe { (cpu::rdmsr(0xfe), cpu::rdmsr(0x2ff)) };
        check!(cap & 0xff != 0, "MTRRcap reports no variable ranges: {:#x}", cap);
        // SAFETY: as above.
        let back = unsafe {
            cpu::wrmsr(0x2ff, 0xc06);
            cpu::rdmsr(0x2ff)
        };
        check_eq!(back, 0xc06, "E, FE and type WB");
        check!(catch!("wrmsr", in("ecx") 0x2ffu32, in("eax") 0x1c06u32, in("edx") 0).is_some(), "reserved bit 12 accepted");
        check!(catch!("wrmsr", in("ecx") 0x2ffu32, in("eax") 0xc02u32, in("edx") 0).is_some(), "reserved type 2 accepted");
        // SAFETY: restores the default type.
        unsafe { cpu::wrmsr(0x2ff, old) };
    }
}

test_case! {
    /// LAR, LSL, VERR and VERW report the GDT's descriptors (SDM Vol. 2A/2B): access rights
    /// of the 64-bit code segment, the flat data limit, code readable but not writable.
    name = "cpu::lar_lsl_verr_verw::long64", mode = Long64, path = Full;
    fn lar_lsl_verr_verw() {
        let (rights, limit): (u64, u64);
        let (code_r, code_w, data_w): (u8, u8, u8);
        // SAFETY: these instructions only read descriptors and set ZF.
        unsafe {
            core::arch::asm!("lar {0}, {1:r}", out(reg) rights, in(reg) abi::selector::CODE64 as u64);
            core::arch::asm!("lsl {0}, {1:r}", out(reg) limit, in(reg) abi::selector::DATA as u64);
            core::arch::asm!("verr {1:x}", "setz {0}", out(reg_byte) code_r, in(reg) abi::selector::CODE64);
            core::arch::asm!("verw {1:x}", "setz {0}", out(reg_byte) code_w, in(reg) abi::selector::CODE64);
            core::arch::asm!("verw {1:x}", "setz {0}", out(reg_byte) data_w, in(reg) abi::selector::DATA);
        }
        check_eq!(rights & 0x00ff_ff00, 0x00a0_9b00, "LAR: P, DPL 0, code, L, G");
        check_eq!(limit, 0xffff_ffff, "LSL: the limit scaled by G");
        check_eq!((code_r, code_w, data_w), (1, 0, 1), "VERR code, VERW code, VERW data");
    }
}

extern "C" fn port_in_at_cpl3(_: u64) {
    // SAFETY: reads the port test device, which has no side effects.
    unsafe { core::arch::asm!("in al, dx", in("dx") abi::port::TEST_IO, out("al") _) };
}

test_case! {
    /// IN at CPL3 with IOPL 0 and no I/O permission bitmap raises #GP(0); with IOPL 3 it
    /// does not (SDM Vol. 1, 19.5).
    name = "cpu::in_out_iopl::long64", mode = Long64, path = Hw;
    fn in_out_iopl() {
        let e = call_at_cpl3_with_rflags(port_in_at_cpl3, 0, 0x2);
        check!(e.is_some(), "IN at CPL3 with IOPL 0 raised nothing");
        check_exception!(e, exception::GP, Some(0));
        check_eq!(call_at_cpl3_with_rflags(port_in_at_cpl3, 0, 0x3002), None, "IN at CPL3 with IOPL 3");
    }
}

extern "C" fn wbinvd_at_cpl3(_: u64) {
    // SAFETY: write-back and invalidation of caches has no effect the test can see.
    unsafe { core::arch::asm!("wbinvd") };
}

test_case! {
    /// WBINVD runs at CPL0 and raises #GP(0) at CPL3 (SDM Vol. 2D, WBINVD).
    name = "cpu::wbinvd::long64", mode = Long64, path = Full;
    fn wbinvd() {
        check_eq!(catch!("wbinvd"), None, "WBINVD at CPL0");
        let e = call_at_cpl3(wbinvd_at_cpl3, 0);
        check!(e.is_some(), "WBINVD at CPL3 raised nothing");
        check_exception!(e, exception::GP, Some(0));
    }
}

test_case! {
    /// LIDT loads a new IDTR that SIDT then returns (SDM Vol. 2A, LIDT).
    name = "cpu::lidt_roundtrip::long64", mode = Long64, path = Full;
    fn lidt_roundtrip() {
        let old = sidt();
        let new = table_register(0x7ff, abi::layout::IDT);
        // SAFETY: the new IDTR is the same table with half its limit; no interrupt or
        // exception happens before the old one is restored.
        let back = unsafe {
            x86::dtables::lidt(&new);
            let back = sidt();
            x86::dtables::lidt(&old);
            back
        };
        check_eq!(limit_base(&back), limit_base(&new));
    }
}

extern "C" fn sidt_at_cpl3(buf: u64) {
    // SAFETY: stores 10 bytes into the caller's buffer (user-accessible memory).
    unsafe { core::arch::asm!("sidt [{0}]", in(reg) buf) };
}

extern "C" fn smsw_at_cpl3(_: u64) {
    // SAFETY: SMSW only reads CR0's low word.
    unsafe { core::arch::asm!("smsw {0:x}", out(reg) _) };
}

extern "C" fn str_at_cpl3(_: u64) {
    // SAFETY: STR only reads the task register.
    unsafe { core::arch::asm!("str {0:x}", out(reg) _) };
}

test_case! {
    /// With CR4.UMIP set, SIDT, SMSW and STR at CPL3 raise #GP(0) too
    /// (SDM Vol. 3A, 2.5 "UMIP"), where CPUID advertises UMIP.
    name = "cpu::umip_sidt_smsw_str::long64", mode = Long64, path = Hw;
    fn umip_sidt_smsw_str() {
        let mut buf = [0u8; 10];
        let probes: [(extern "C" fn(u64), &str); 3] = [(sidt_at_cpl3, "SIDT"), (smsw_at_cpl3, "SMSW"), (str_at_cpl3, "STR")];
        for (probe, name) in probes {
            let e = with_umip_at_cpl3(probe, buf.as_mut_ptr() as u64);
            check!(e.is_some(), "{} at CPL3 with CR4.UMIP raised nothing", name);
            check_exception!(e, exception::GP, Some(0));
        }
    }
}

/// IF on entry to CPL3 (bit 0) and after a POPF that tries to set it (bit 1).
static POPF_IF_SEEN: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Records IF on entry to CPL3 and after a POPF that tries to set it.
extern "C" fn popf_if_at_cpl3(_: u64) {
    let (before, after): (u64, u64);
    // SAFETY: tries to set IF through POPF; no interrupt source is armed in this VM, and
    // the return to CPL0 clears IF again (CLI here would itself fault with IOPL 0).
    unsafe {
        core::arch::asm!("pushfq", "pop {0}", "pushfq", "or qword ptr [rsp], 0x200", "popfq", "pushfq", "pop {1}",
                         out(reg) before, out(reg) after)
    };
    POPF_IF_SEEN.store((before >> 9) & 1 | ((after >> 9) & 1) << 1, core::sync::atomic::Ordering::SeqCst);
}

test_case! {
    /// POPF at CPL3 changes IF only when CPL <= IOPL; otherwise IF is left alone without a
    /// fault (SDM Vol. 2B, POPF, "Operation").
    name = "cpu::popf_if_iopl::long64", mode = Long64, path = Hw;
    fn popf_if_iopl() {
        let seen = || POPF_IF_SEEN.swap(0, core::sync::atomic::Ordering::SeqCst);
        check_no_exception!(call_at_cpl3_with_rflags(popf_if_at_cpl3, 0, 0x2));
        let flags = seen();
        check_eq!(flags & 1, 0, "IF reads 0 at CPL3 after IRETQ with IF clear");
        check_eq!(flags >> 1, 0, "IOPL 0: POPF leaves IF alone");
        check_no_exception!(call_at_cpl3_with_rflags(popf_if_at_cpl3, 0, 0x3002));
        check_eq!(seen() >> 1, 1, "IOPL 3: POPF sets IF");
    }
}

test_case! {
    /// CR0.NW=1 with CD=0 is an invalid combination and raises #GP(0)
    /// (SDM Vol. 3A, 2.5 and MOV to CR0).
    name = "cpu::cr0_nw_without_cd_gp::long64", mode = Long64, path = Full;
    fn cr0_nw_without_cd_gp() {
        let cr0 = cpu::read_cr0() & !(1 << 30);
        check_exception!(catch!("mov cr0, {0}", in(reg) cr0 | 1 << 29), exception::GP, Some(0));
    }
}

test_case! {
    /// In long mode, changing CR4.LA57 raises #GP(0), and CR4.VMXE raises #GP(0) where
    /// CPUID.1:ECX.VMX[5] is clear (SDM Vol. 3A, 2.5 and MOV to CR4).
    name = "cpu::cr4_la57_vmxe_gp::long64", mode = Long64, path = Full;
    fn cr4_la57_vmxe_gp() {
        let cr4 = cpu::read_cr4();
        let e = catch!("mov cr4, {0}", in(reg) cr4 | 1 << 12);
        check!(e.is_some(), "setting CR4.LA57 in long mode raised no #GP");
        check_exception!(e, exception::GP, Some(0));
        if cpu::cpuid(1, 0).ecx & (1 << 5) == 0 {
            let e = catch!("mov cr4, {0}", in(reg) cr4 | 1 << 13);
            check!(e.is_some(), "setting CR4.VMXE without VMX raised no #GP");
            check_exception!(e, exception::GP, Some(0));
        }
    }
}

test_case! {
    /// Clearing EFER.LME while paging is on raises #GP(0) (SDM Vol. 3A, 10.8.5).
    name = "cpu::efer_lme_while_paging_gp::long64", mode = Long64, path = Full;
    fn efer_lme_while_paging_gp() {
        // SAFETY: reading EFER has no side effects.
        let efer = unsafe { cpu::rdmsr(MSR_EFER) };
        let low = (efer & !(1 << 8)) as u32;
        let e = catch!("wrmsr", in("ecx") MSR_EFER, in("eax") low, in("edx") (efer >> 32) as u32);
        check!(e.is_some(), "clearing EFER.LME with paging on raised no #GP");
        check_exception!(e, exception::GP, Some(0));
    }
}

test_case! {
    /// MOV to DR7 with a bit of 63:32 set raises #GP(0); with CR4.DE set, DR4 is reserved
    /// and MOV from it raises #UD (SDM Vol. 3B, 18.2 and MOV to/from DR).
    name = "cpu::debug_register_reserved::long64", mode = Long64, path = Full;
    fn debug_register_reserved() {
        let e = catch!("mov dr7, {0}", in(reg) 1u64 << 40 | 0x400);
        check!(e.is_some(), "DR7 with bit 40 set raised no #GP");
        check_exception!(e, exception::GP, Some(0));
        let cr4 = cpu::read_cr4();
        // SAFETY: CR4.DE (bit 3) only makes DR4/DR5 references fault; restored below.
        unsafe { core::arch::asm!("mov cr4, {0}", in(reg) cr4 | 1 << 3) };
        let e = catch!("mov {0}, dr4", out(reg) _);
        // SAFETY: restores CR4.
        unsafe { core::arch::asm!("mov cr4, {0}", in(reg) cr4) };
        check_exception!(e, exception::UD, None);
    }
}

test_case! {
    /// RDPID returns IA32_TSC_AUX (SDM Vol. 2B, RDPID), where CPUID.7.0:ECX.RDPID[22]
    /// advertises it.
    name = "cpu::rdpid::long64", mode = Long64, path = Full;
    fn rdpid() {
        if cpuid_as_set(7, 0).is_none_or(|c| c.ecx & RDPID_BIT == 0) {
            skip!("KVM does not offer RDPID (KVM_GET_SUPPORTED_CPUID.7.0:ECX[22] is clear)");
        }
        let aux: u64;
        // SAFETY: TSC_AUX is only read by RDTSCP/RDPID.
        unsafe {
            cpu::wrmsr(MSR_TSC_AUX, 0x77);
            core::arch::asm!("rdpid {0}", out(reg) aux);
        }
        check_eq!(aux, 0x77);
    }
}

test_case! {
    /// IA32_LSTAR, like every MSR that holds a linear address, refuses a non-canonical value
    /// with #GP(0) (SDM Vol. 2B, WRMSR).
    name = "cpu::msr_lstar_noncanonical_gp::long64", mode = Long64, path = Full;
    fn msr_lstar_noncanonical_gp() {
        check_msr_refuses_noncanonical(0xc000_0082, "IA32_LSTAR");
    }
}

test_case! {
    /// IA32_SYSENTER_CS, _ESP and _EIP hold what was written (SDM Vol. 4, Table 2-2).
    name = "cpu::msr_sysenter_roundtrip::long64", mode = Long64, path = Full;
    fn msr_sysenter_roundtrip() {
        // SYSENTER is never executed, so these values take no effect.
        check_msr_roundtrips(&[(0x174, 0x10), (0x175, 0xffff_8000_0000_1000), (0x176, 0xffff_8000_0000_2000)]);
    }
}

test_case! {
    /// EFER.SCE[0] and, where CPUID advertises NX, EFER.NXE[11] can be set and cleared
    /// (SDM Vol. 3A, 2.2.1).
    name = "cpu::efer_sce_nxe::long64", mode = Long64, path = Full;
    fn efer_sce_nxe() {
        let nx = cpu::cpuid(0x8000_0001, 0).edx & (1 << 20) != 0;
        // SAFETY: SCE only enables SYSCALL and NXE only enables the XD bit, which no PTE
        // here sets; EFER is restored below.
        let efer = unsafe { cpu::rdmsr(MSR_EFER) };
        for bit in [0u32, 11] {
            if bit == 11 && !nx {
                continue;
            }
            // SAFETY: as above.
            let (on, off) = unsafe {
                cpu::wrmsr(MSR_EFER, efer | 1 << bit);
                let on = cpu::rdmsr(MSR_EFER);
                cpu::wrmsr(MSR_EFER, efer & !(1 << bit));
                (on, cpu::rdmsr(MSR_EFER))
            };
            check_eq!((on >> bit) & 1, 1, "EFER bit {} set", bit);
            check_eq!((off >> bit) & 1, 0, "EFER bit {} cleared", bit);
        }
        // SAFETY: restores EFER.
        unsafe { cpu::wrmsr(MSR_EFER, efer) };
    }
}

test_case! {
    /// Loading SS with a code selector raises #GP(selector); a null SS is allowed at CPL0 in
    /// 64-bit mode; LTR of the busy TSS raises #GP(selector) (SDM Vol. 2A MOV Sreg, LTR).
    name = "cpu::segment_loads::long64", mode = Long64, path = Hw;
    fn segment_loads() {
        let e = catch!("mov ss, {0:x}", in(reg) abi::selector::CODE64);
        check_exception!(e, exception::GP, Some(abi::selector::CODE64 as u64));
        let e = catch!("mov {1:x}, ss", "mov ss, {0:x}", "mov ss, {1:x}", in(reg) 0u16, out(reg) _);
        check_eq!(e, None, "null SS at CPL0 in 64-bit mode");
        let e = catch!("ltr {0:x}", in(reg) abi::selector::TSS);
        check_exception!(e, exception::GP, Some(abi::selector::TSS as u64));
    }
}

test_case! {
    /// CLI and STI at CPL3 with IOPL 3 clear and set RFLAGS.IF (SDM Vol. 2A CLI, Vol. 2B
    /// STI: allowed when CPL <= IOPL).
    name = "cpu::cli_sti::user64", mode = User64, path = Hw;
    entry = cli_sti
}

test_case! {
    /// SGDT, SIDT and STR at CPL3 (CR4.UMIP clear) return what the VMM loaded too.
    name = "cpu::descriptor_tables_store::user64", mode = User64, path = Hw;
    entry = descriptor_tables_store
}

/// CPUID.80000001H:EDX.RDTSCP, CPUID.7.0:ECX.RDPID and CPUID.1:ECX.XSAVE.
const RDTSCP_BIT: u32 = 1 << 27;
const RDPID_BIT: u32 = 1 << 22;
const XSAVE_BIT: u32 = 1 << 26;

extern "C" fn rdtscp_at_cpl3(_: u64) {
    // SAFETY: RDTSCP writes EDX:EAX and ECX only.
    unsafe { core::arch::asm!("rdtscp", out("eax") _, out("edx") _, out("ecx") _) };
}

extern "C" fn rdpid_at_cpl3(_: u64) {
    // SAFETY: RDPID writes its destination only.
    unsafe { core::arch::asm!("rdpid {0}", out(reg) _) };
}

extern "C" fn xgetbv_at_cpl3(_: u64) {
    // SAFETY: XGETBV writes EDX:EAX only.
    unsafe { core::arch::asm!("xgetbv", in("ecx") 0, out("eax") _, out("edx") _) };
}

/// Checks that the host hook removed `bit` of (`leaf`, `subleaf`) `reg` from the table.
fn check_removed_from_table(leaf: u32, subleaf: u32, reg: fn(&cpu::Cpuid) -> u32, bit: u32) {
    check_eq!(cpuid_as_set(leaf, subleaf).map(|c| reg(&c) & bit), Some(0), "hook did not run");
}

test_case! {
    /// Without RDTSCP in the vCPU's CPUID (the host hook clears CPUID.80000001H:EDX[27]),
    /// RDTSCP raises #UD at CPL0 (SDM Vol. 2B RDTSCP: #UD if CPUID.80000001H:EDX.RDTSCP[bit 27] = 0;
    /// APM Vol. 3 RDTSCP).
    name = "cpu::rdtscp_absent::long64", mode = Long64, path = Full,
        cpuid_clear = [(0x8000_0001, 0, EDX, 1 << 27)];
    fn rdtscp_absent() {
        check_removed_from_table(0x8000_0001, 0, |c| c.edx, RDTSCP_BIT);
        check_exception!(catch!("rdtscp", out("eax") _, out("edx") _, out("ecx") _), exception::UD, None);
    }
}

test_case! {
    /// As cpu::rdtscp_absent::long64, from CPL3.
    name = "cpu::rdtscp_absent::cpl3", mode = Long64, path = Full,
        cpuid_clear = [(0x8000_0001, 0, EDX, 1 << 27)];
    fn rdtscp_absent_cpl3() {
        check_removed_from_table(0x8000_0001, 0, |c| c.edx, RDTSCP_BIT);
        check_exception!(call_at_cpl3(rdtscp_at_cpl3, 0), exception::UD, None);
    }
}

/// IA32_SPEC_CTRL, IA32_PRED_CMD and IA32_FLUSH_CMD (SDM Vol. 4, Table 2-2).
const MSR_SPEC_CTRL: u32 = 0x48;
const MSR_PRED_CMD: u32 = 0x49;
const MSR_FLUSH_CMD: u32 = 0x10b;

/// Checks that the host hook removed `mask` from `reg` of (leaf, 0).
fn check_all_removed(leaf: u32, reg: fn(&cpu::Cpuid) -> u32, mask: u32) {
    check_eq!(cpuid_as_set(leaf, 0).map(|c| reg(&c) & mask).unwrap_or(0), 0, "hook did not clear CPUID {:#x}", leaf);
}

test_case! {
    /// With none of the CPUID bits that enumerate IA32_SPEC_CTRL (the hook clears
    /// CPUID.7.0:EDX[26,27,31] and 8000_0008h:EBX[14,15,24]), the MSR does not exist:
    /// RDMSR and WRMSR of it raise #GP(0) (SDM Vol. 2B RDMSR/WRMSR: #GP(0) for a reserved
    /// or unimplemented MSR; Vol. 4 Table 2-2 gives the enumeration; APM Vol. 2 and
    /// Vol. 3 RDMSR).
    name = "cpu::msr_spec_ctrl_absent::long64", mode = Long64, path = Full,
        cpuid_clear = [(7, 0, EDX, abi::cpuid_removed::SPEC_CTRL_LEAF7_EDX), (0x8000_0008, 0, EBX, abi::cpuid_removed::SPEC_CTRL_EXT8_EBX)];
    fn msr_spec_ctrl_absent() {
        use abi::cpuid_removed::{SPEC_CTRL_EXT8_EBX, SPEC_CTRL_LEAF7_EDX};
        check_all_removed(7, |c| c.edx, SPEC_CTRL_LEAF7_EDX);
        check_all_removed(0x8000_0008, |c| c.ebx, SPEC_CTRL_EXT8_EBX);
        check_exception!(catch!("rdmsr", in("ecx") MSR_SPEC_CTRL, out("eax") _, out("edx") _), exception::GP, Some(0));
        check_exception!(catch!("wrmsr", in("ecx") MSR_SPEC_CTRL, in("eax") 0u32, in("edx") 0u32), exception::GP, Some(0));
    }
}

test_case! {
    /// Without IBPB enumerated (the hook clears CPUID.7.0:EDX[26], 8000_0008h:EBX[12] and
    /// 8000_0021h:EAX[27] SBPB), IA32_PRED_CMD does not exist: WRMSR of IBPB raises #GP(0)
    /// (SDM Vol. 4 Table 2-2, IA32_PRED_CMD; Vol. 2B WRMSR).
    name = "cpu::msr_pred_cmd_absent::long64", mode = Long64, path = Full,
        cpuid_clear = [(7, 0, EDX, abi::cpuid_removed::PRED_CMD_LEAF7_EDX), (0x8000_0008, 0, EBX, abi::cpuid_removed::PRED_CMD_EXT8_EBX),
            (0x8000_0021, 0, EAX, 1 << 27)];
    fn msr_pred_cmd_absent() {
        use abi::cpuid_removed::{PRED_CMD_EXT8_EBX, PRED_CMD_LEAF7_EDX};
        check_all_removed(7, |c| c.edx, PRED_CMD_LEAF7_EDX);
        check_all_removed(0x8000_0008, |c| c.ebx, PRED_CMD_EXT8_EBX);
        check_exception!(catch!("wrmsr", in("ecx") MSR_PRED_CMD, in("eax") 1u32, in("edx") 0u32), exception::GP, Some(0));
    }
}

test_case! {
    /// Without L1D_FLUSH enumerated (the hook clears CPUID.7.0:EDX[28]), IA32_FLUSH_CMD
    /// does not exist: WRMSR of L1D_FLUSH raises #GP(0) (SDM Vol. 4 Table 2-2,
    /// IA32_FLUSH_CMD; Vol. 2B WRMSR).
    name = "cpu::msr_flush_cmd_absent::long64", mode = Long64, path = Full,
        cpuid_clear = [(7, 0, EDX, abi::cpuid_removed::FLUSH_CMD_LEAF7_EDX)];
    fn msr_flush_cmd_absent() {
        check_all_removed(7, |c| c.edx, abi::cpuid_removed::FLUSH_CMD_LEAF7_EDX);
        check_exception!(catch!("wrmsr", in("ecx") MSR_FLUSH_CMD, in("eax") 1u32, in("edx") 0u32), exception::GP, Some(0));
    }
}

test_case! {
    /// Where the table enumerates IA32_SPEC_CTRL (any of the bits the absent case clears),
    /// the MSR exists: RDMSR raises nothing and a write of 0 (no mitigation) is accepted.
    /// Skips, with the reason, where KVM offers none of the bits.
    name = "cpu::msr_spec_ctrl_present::long64", mode = Long64, path = Full;
    fn msr_spec_ctrl_present() {
        use abi::cpuid_removed::{SPEC_CTRL_EXT8_EBX, SPEC_CTRL_LEAF7_EDX};
        let leaf7 = cpuid_as_set(7, 0).map_or(0, |c| c.edx & SPEC_CTRL_LEAF7_EDX);
        let ext8 = cpuid_as_set(0x8000_0008, 0).map_or(0, |c| c.ebx & SPEC_CTRL_EXT8_EBX);
        if leaf7 == 0 && ext8 == 0 {
            skip!("KVM offers none of the CPUID bits that enumerate IA32_SPEC_CTRL");
        }
        check_no_exception!(catch!("rdmsr", in("ecx") MSR_SPEC_CTRL, out("eax") _, out("edx") _));
        check_no_exception!(catch!("wrmsr", in("ecx") MSR_SPEC_CTRL, in("eax") 0u32, in("edx") 0u32));
    }
}

test_case! {
    /// Without RDPID in the vCPU's CPUID (the host hook clears CPUID.7.0:ECX[22]), RDPID
    /// raises #UD at CPL0 (SDM Vol. 2B RDPID: #UD if CPUID.7H.0:ECX.RDPID[bit 22] = 0).
    name = "cpu::rdpid_absent::long64", mode = Long64, path = Full, cpuid_clear = [(7, 0, ECX, 1 << 22)];
    fn rdpid_absent() {
        check_removed_from_table(7, 0, |c| c.ecx, RDPID_BIT);
        check_exception!(catch!("rdpid {0}", out(reg) _), exception::UD, None);
    }
}

test_case! {
    /// As cpu::rdpid_absent::long64, from CPL3.
    name = "cpu::rdpid_absent::cpl3", mode = Long64, path = Full, cpuid_clear = [(7, 0, ECX, 1 << 22)];
    fn rdpid_absent_cpl3() {
        check_removed_from_table(7, 0, |c| c.ecx, RDPID_BIT);
        check_exception!(call_at_cpl3(rdpid_at_cpl3, 0), exception::UD, None);
    }
}

test_case! {
    /// Without XSAVE in the vCPU's CPUID (the host hook clears CPUID.1:ECX[26]), setting
    /// CR4.OSXSAVE raises #GP(0) (SDM Vol. 3A 2.5: setting a CR4 bit the processor does not
    /// support), and with CR4.OSXSAVE clear XSETBV and XGETBV raise #UD at CPL0 and CPL3
    /// (SDM Vol. 2C XSETBV/XGETBV: #UD if CR4.OSXSAVE[bit 18] = 0).
    name = "cpu::xsave_absent::long64", mode = Long64, path = Full, cpuid_clear = [(1, 0, ECX, 1 << 26 | 1 << 27)];
    fn xsave_absent() {
        check_removed_from_table(1, 0, |c| c.ecx, XSAVE_BIT);
        let cr4 = cpu::read_cr4();
        let e = catch!("mov cr4, {0}", in(reg) cr4 | 1 << 18);
        if e.is_none() {
            // SAFETY: restores CR4 after the write that should have faulted.
            unsafe { core::arch::asm!("mov cr4, {0}", in(reg) cr4) };
        }
        check!(e.is_some(), "setting CR4.OSXSAVE without XSAVE in CPUID raised no #GP");
        check_exception!(e, exception::GP, Some(0));
        check_exception!(catch!("xsetbv", in("ecx") 0, in("eax") 1, in("edx") 0), exception::UD, None);
        check_exception!(catch!("xgetbv", in("ecx") 0, out("eax") _, out("edx") _), exception::UD, None);
        check_exception!(call_at_cpl3(xgetbv_at_cpl3, 0), exception::UD, None);
    }
}

/// CPUID.1:ECX[22] MOVBE, CPUID.1:ECX[17] PCID, CPUID.7.0:EBX[10] INVPCID.
const MOVBE_BIT: u32 = 1 << 22;
const PCID_BIT: u32 = 1 << 17;
const INVPCID_BIT: u32 = 1 << 10;

/// MOVBE's load and store of 16, 32 and 64 bits swap the bytes (SDM Vol. 2B MOVBE;
/// APM Vol. 3 MOVBE). At CPL0 on PVM this runs through KVM's instruction emulator.
extern "C" fn movbe(_: u64) {
    if cpu::cpuid(1, 0).ecx & MOVBE_BIT == 0 {
        skip!("the vCPU's CPUID does not offer MOVBE");
    }
    let mut mem: u64 = 0x1122_3344_5566_7788;
    let (q, d, w): (u64, u32, u16);
    // SAFETY: the loads read `mem`, which is ours.
    unsafe {
        core::arch::asm!("movbe {0}, [{1}]", out(reg) q, in(reg) &raw const mem, options(nostack, readonly));
        core::arch::asm!("movbe {0:e}, [{1}]", out(reg) d, in(reg) &raw const mem, options(nostack, readonly));
        core::arch::asm!("movbe {0:x}, [{1}]", out(reg) w, in(reg) &raw const mem, options(nostack, readonly));
    }
    check_eq!(q, 0x8877_6655_4433_2211, "MOVBE r64, m64");
    check_eq!(d, 0x8877_6655, "MOVBE r32, m32 (the low 4 bytes, swapped)");
    check_eq!(w, 0x8877, "MOVBE r16, m16");
    // SAFETY: the store writes `mem`, which is ours.
    unsafe {
        core::arch::asm!("movbe [{0}], {1}", in(reg) &raw mut mem, in(reg) 0x0102_0304_0506_0708u64, options(nostack))
    };
    check_eq!(mem, 0x0807_0605_0403_0201, "MOVBE m64, r64");
}

test_case! {
    /// MOVBE at CPL0 (kvm-unit-tests' emulator test hangs there on this host).
    name = "cpu::movbe::long64", mode = Long64, path = Full;
    fn movbe_cpl0() {
        movbe(0);
    }
}

test_case! {
    /// MOVBE at CPL3, where PVM runs it natively.
    name = "cpu::movbe::user64", mode = User64, path = Hw;
    fn movbe_cpl3() {
        movbe(0);
    }
}

/// An INVPCID descriptor (SDM Vol. 2A INVPCID: PCID in bits 11:0, linear address in 127:64).
#[repr(C, align(16))]
struct InvpcidDesc {
    pcid: u64,
    addr: u64,
}

/// INVPCID of `kind` with `desc`, caught.
fn invpcid(kind: u64, desc: &InvpcidDesc) -> Option<hvprobe_rt::Exception> {
    catch!("invpcid {0}, [{1}]", in(reg) kind, in(reg) desc as *const InvpcidDesc)
}

test_case! {
    /// INVPCID with CR4.PCIDE set: the four types (0 individual address, 1 single context,
    /// 2 all contexts with globals, 3 all but globals) complete without a fault; an
    /// invalid type (4) and a PCID above 4095 for types 0 and 1 raise #GP(0) (SDM Vol. 2A
    /// INVPCID; kvm-unit-tests' pcid test hangs at INVPCID on this host). Skips where the
    /// vCPU's CPUID offers no PCID or INVPCID.
    name = "cpu::invpcid::long64", mode = Long64, path = Full;
    fn invpcid_types() {
        if cpu::cpuid(1, 0).ecx & PCID_BIT == 0 || cpu::cpuid(7, 0).ebx & INVPCID_BIT == 0 {
            skip!("the vCPU's CPUID does not offer PCID and INVPCID");
        }
        let cr4 = cpu::read_cr4();
        // CR3[11:0] is 0 here (PCID 0), as setting PCIDE requires (SDM Vol. 3A 4.10.1).
        check_no_exception!(catch!("mov cr4, {0}", in(reg) cr4 | 1 << 17));
        // A mapped page: the one this function lives in.
        let page = invpcid_types as *const () as u64 & !0xfff;
        for (kind, pcid) in [(0, 0), (1, 0), (2, 0), (3, 0), (0, 5), (1, 5)] {
            let e = invpcid(kind, &InvpcidDesc { pcid, addr: page });
            check!(e.is_none(), "INVPCID type {} (PCID {}) raised {:?}", kind, pcid, e.map(|e| e.vector));
        }
        check_exception!(invpcid(4, &InvpcidDesc { pcid: 0, addr: 0 }), exception::GP, Some(0));
        check_exception!(invpcid(0, &InvpcidDesc { pcid: 4096, addr: page }), exception::GP, Some(0));
        check_exception!(invpcid(1, &InvpcidDesc { pcid: 4096, addr: 0 }), exception::GP, Some(0));
        // SAFETY: back to the CR4 the case started with.
        unsafe { core::arch::asm!("mov cr4, {0}", in(reg) cr4) };
    }
}

extern "C" fn invpcid_at_cpl3(_: u64) {
    let desc = InvpcidDesc { pcid: 0, addr: 0 };
    // SAFETY: INVPCID at CPL3 faults before it does anything.
    unsafe { core::arch::asm!("invpcid {0}, [{1}]", in(reg) 2u64, in(reg) &desc as *const InvpcidDesc) };
}

test_case! {
    /// INVPCID at CPL3 raises #GP(0) (SDM Vol. 2A INVPCID: #GP(0) if CPL > 0).
    name = "cpu::invpcid_cpl3::long64", mode = Long64, path = Full;
    fn invpcid_cpl3() {
        if cpu::cpuid(7, 0).ebx & INVPCID_BIT == 0 {
            skip!("the vCPU's CPUID does not offer INVPCID");
        }
        check_exception!(call_at_cpl3(invpcid_at_cpl3, 0), exception::GP, Some(0));
    }
}

test_case! {
    /// Without INVPCID in the vCPU's CPUID (the host hook clears CPUID.7.0:EBX[10]),
    /// INVPCID raises #UD (SDM Vol. 2A INVPCID: #UD if CPUID.(EAX=07H, ECX=0H):EBX.INVPCID
    /// [bit 10] = 0). kvm-unit-tests' pcid test stops at INVPCID on this host.
    name = "cpu::invpcid_absent::long64", mode = Long64, path = Full, cpuid_clear = [(7, 0, EBX, 1 << 10)];
    fn invpcid_absent() {
        check_removed_from_table(7, 0, |c| c.ebx, INVPCID_BIT);
        check_exception!(invpcid(2, &InvpcidDesc { pcid: 0, addr: 0 }), exception::UD, None);
    }
}
