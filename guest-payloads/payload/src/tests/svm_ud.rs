//! The SVM instructions with EFER.SVME clear: each raises #UD, at CPL0 and at CPL3
//! (APM Vol. 3, VMRUN, VMLOAD, VMSAVE, CLGI, STGI, SKINIT and INVLPGA: "#UD: the SVM
//! instructions are not supported, or EFER.SVME = 0"; the #UD check comes before the CPL
//! check that gives #GP). STGI and SKINIT also run without SVME where SKINIT is
//! enumerated, so their cases clear CPUID 8000_0001h:ECX[12] SKINIT. The harness leaves
//! EFER.SVME clear on every backend (the guest starts with EFER = LME | LMA).

use hvprobe_rt::check_eq;
use hvprobe_rt::cpu;

const EFER_SVME: u64 = 1 << 12;
const SKINIT_BIT: u32 = 1 << 12;

fn check_svme_clear() {
    // SAFETY: EFER exists in long mode.
    let efer = unsafe { cpu::rdmsr(x86::msr::IA32_EFER) };
    check_eq!(efer & EFER_SVME, 0, "EFER.SVME is set at the start of the case");
}

ud_at_cpl0_and_cpl3! {
    precondition = check_svme_clear, what = "the SVM instruction with EFER.SVME clear";
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
