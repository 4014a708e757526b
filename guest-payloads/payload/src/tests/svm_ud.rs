//! The SVM instructions with EFER.SVME clear: each raises #UD, at CPL0 and at CPL3
//! (APM Vol. 3, VMRUN, VMLOAD, VMSAVE, CLGI, STGI, SKINIT and INVLPGA: "#UD: the SVM
//! instructions are not supported, or EFER.SVME = 0"; the #UD check comes before the CPL
//! check that gives #GP). STGI and SKINIT also run without SVME where SKINIT is
//! enumerated, so their cases clear CPUID 8000_0001h:ECX[12] SKINIT. The harness leaves
//! EFER.SVME clear on every backend (the guest starts with EFER = LME | LMA).

use hvprobe_rt::cpu;
use hvprobe_rt::exception;
use hvprobe_rt::user::call_at_cpl3;
use hvprobe_rt::{catch, check, check_eq, check_exception, test_case};

use super::cpu::cpuid_as_set;

const EFER_SVME: u64 = 1 << 12;
const SKINIT_BIT: u32 = 1 << 12;

fn check_svme_clear() {
    // SAFETY: EFER exists in long mode.
    let efer = unsafe { cpu::rdmsr(x86::msr::IA32_EFER) };
    check_eq!(efer & EFER_SVME, 0, "EFER.SVME is set at the start of the case");
}

/// VMRUN, VMLOAD and VMSAVE take a physical address in RAX: a page of the image that
/// nothing else uses, so an instruction that wrongly runs touches nothing that matters.
fn operand() -> u64 {
    hvprobe_rt::paging::scratch_page()
}

macro_rules! svm_ud_cases {
    ($($(#[$doc:meta])* $fn:ident, $fn3:ident, $case3:ident: $name:literal, $name3:literal, $bytes:literal
        $(, cpuid_clear = [$(($leaf:expr, $sub:expr, $reg:ident, $mask:expr)),+])?;)+) => {$(
        extern "C" fn $fn3(rax: u64) {
            // SAFETY: the instruction raises #UD (the case's point) or, on a deviating
            // hypervisor, acts on the scratch page; the CPL3 trampoline catches either.
            unsafe { core::arch::asm!($bytes, in("rax") rax, in("ecx") 0u32, options(nostack)) };
        }

        test_case! {
            $(#[$doc])*
            name = $name, mode = Long64, path = Full $(, cpuid_clear = [$(($leaf, $sub, $reg, $mask)),+])?;
            fn $fn() {
                check_svme_clear();
                $($(check!(
                    cpuid_as_set($leaf, $sub).map_or(0, |c| c.ecx & $mask) == 0,
                    "the host left SKINIT in the table"
                );)+)?
                let e = catch!($bytes, in("rax") operand(), in("ecx") 0u32);
                check!(e.is_some(), "the SVM instruction with EFER.SVME clear raised no exception at CPL0");
                check_exception!(e, exception::UD, None);
            }
        }

        test_case! {
            $(#[$doc])*
            name = $name3, mode = Long64, path = Full $(, cpuid_clear = [$(($leaf, $sub, $reg, $mask)),+])?;
            fn $case3() {
                check_svme_clear();
                let e = call_at_cpl3($fn3, operand());
                check!(e.is_some(), "the SVM instruction with EFER.SVME clear raised no exception at CPL3");
                check_exception!(e, exception::UD, None);
            }
        }
    )+};
}

svm_ud_cases! {
    /// VMRUN (0F 01 D8).
    svm_vmrun_ud, vmrun_at_cpl3, svm_vmrun_ud_cpl3: "cpu::svm_vmrun_ud::long64", "cpu::svm_vmrun_ud::cpl3", ".byte 0x0f, 0x01, 0xd8";
    /// VMLOAD (0F 01 DA).
    svm_vmload_ud, vmload_at_cpl3, svm_vmload_ud_cpl3: "cpu::svm_vmload_ud::long64", "cpu::svm_vmload_ud::cpl3", ".byte 0x0f, 0x01, 0xda";
    /// VMSAVE (0F 01 DB).
    svm_vmsave_ud, vmsave_at_cpl3, svm_vmsave_ud_cpl3: "cpu::svm_vmsave_ud::long64", "cpu::svm_vmsave_ud::cpl3", ".byte 0x0f, 0x01, 0xdb";
    /// CLGI (0F 01 DD).
    svm_clgi_ud, clgi_at_cpl3, svm_clgi_ud_cpl3: "cpu::svm_clgi_ud::long64", "cpu::svm_clgi_ud::cpl3", ".byte 0x0f, 0x01, 0xdd";
    /// STGI (0F 01 DC), with SKINIT cleared too.
    svm_stgi_ud, stgi_at_cpl3, svm_stgi_ud_cpl3: "cpu::svm_stgi_ud::long64", "cpu::svm_stgi_ud::cpl3", ".byte 0x0f, 0x01, 0xdc",
        cpuid_clear = [(0x8000_0001, 0, ECX, SKINIT_BIT)];
    /// SKINIT (0F 01 DE), with SKINIT cleared.
    svm_skinit_ud, skinit_at_cpl3, svm_skinit_ud_cpl3: "cpu::svm_skinit_ud::long64", "cpu::svm_skinit_ud::cpl3", ".byte 0x0f, 0x01, 0xde",
        cpuid_clear = [(0x8000_0001, 0, ECX, SKINIT_BIT)];
    /// INVLPGA (0F 01 DF; RAX the address, ECX the ASID).
    svm_invlpga_ud, invlpga_at_cpl3, svm_invlpga_ud_cpl3: "cpu::svm_invlpga_ud::long64", "cpu::svm_invlpga_ud::cpl3", ".byte 0x0f, 0x01, 0xdf";
}
