//! The VMX instructions outside VMX operation: each raises #UD, at CPL0 and at CPL3. The
//! SDM checks "not in VMX operation" (for VMXON: CR4.VMXE = 0) before the CPL check that
//! gives #GP (SDM Vol. 3C, VMX Instruction Reference, each instruction's Operation and
//! Protected Mode Exceptions: VMXON, VMXOFF, VMCLEAR, VMPTRLD, VMPTRST, VMREAD, VMWRITE,
//! VMLAUNCH, VMRESUME, INVEPT, INVVPID); on a CPU without VMX (an AMD one) the opcodes are
//! undefined and raise #UD too. The harness never sets CR4.VMXE, and no vCPU it builds is
//! in VMX operation. VMCALL is KVM's hypercall and has its own cases (pv::).

use hvprobe_rt::check_eq;
use hvprobe_rt::cpu;

const CR4_VMXE: u64 = 1 << 13;

fn check_vmxe_clear() {
    check_eq!(cpu::read_cr4() & CR4_VMXE, 0, "CR4.VMXE is set at the start of the case");
}

ud_at_cpl0_and_cpl3! {
    precondition = check_vmxe_clear, what = "the VMX instruction outside VMX operation";
    /// VMXON [RAX] (F3 0F C7 /6): #UD with CR4.VMXE clear.
    vmx_vmxon_ud, vmxon_at_cpl3, vmx_vmxon_ud_cpl3: "cpu::vmx_vmxon_ud::long64", "cpu::vmx_vmxon_ud::cpl3", ".byte 0xf3, 0x0f, 0xc7, 0x30";
    /// VMXOFF (0F 01 C4).
    vmx_vmxoff_ud, vmxoff_at_cpl3, vmx_vmxoff_ud_cpl3: "cpu::vmx_vmxoff_ud::long64", "cpu::vmx_vmxoff_ud::cpl3", ".byte 0x0f, 0x01, 0xc4";
    /// VMCLEAR [RAX] (66 0F C7 /6).
    vmx_vmclear_ud, vmclear_at_cpl3, vmx_vmclear_ud_cpl3: "cpu::vmx_vmclear_ud::long64", "cpu::vmx_vmclear_ud::cpl3", ".byte 0x66, 0x0f, 0xc7, 0x30";
    /// VMPTRLD [RAX] (0F C7 /6).
    vmx_vmptrld_ud, vmptrld_at_cpl3, vmx_vmptrld_ud_cpl3: "cpu::vmx_vmptrld_ud::long64", "cpu::vmx_vmptrld_ud::cpl3", ".byte 0x0f, 0xc7, 0x30";
    /// VMPTRST [RAX] (0F C7 /7, memory form; the register form is RDSEED).
    vmx_vmptrst_ud, vmptrst_at_cpl3, vmx_vmptrst_ud_cpl3: "cpu::vmx_vmptrst_ud::long64", "cpu::vmx_vmptrst_ud::cpl3", ".byte 0x0f, 0xc7, 0x38";
    /// VMREAD RCX, RAX (0F 78 /r).
    vmx_vmread_ud, vmread_at_cpl3, vmx_vmread_ud_cpl3: "cpu::vmx_vmread_ud::long64", "cpu::vmx_vmread_ud::cpl3", ".byte 0x0f, 0x78, 0xc1";
    /// VMWRITE RAX, RCX (0F 79 /r).
    vmx_vmwrite_ud, vmwrite_at_cpl3, vmx_vmwrite_ud_cpl3: "cpu::vmx_vmwrite_ud::long64", "cpu::vmx_vmwrite_ud::cpl3", ".byte 0x0f, 0x79, 0xc1";
    /// VMLAUNCH (0F 01 C2).
    vmx_vmlaunch_ud, vmlaunch_at_cpl3, vmx_vmlaunch_ud_cpl3: "cpu::vmx_vmlaunch_ud::long64", "cpu::vmx_vmlaunch_ud::cpl3", ".byte 0x0f, 0x01, 0xc2";
    /// VMRESUME (0F 01 C3).
    vmx_vmresume_ud, vmresume_at_cpl3, vmx_vmresume_ud_cpl3: "cpu::vmx_vmresume_ud::long64", "cpu::vmx_vmresume_ud::cpl3", ".byte 0x0f, 0x01, 0xc3";
    /// INVEPT RCX, [RAX] (66 0F 38 80 /r).
    vmx_invept_ud, invept_at_cpl3, vmx_invept_ud_cpl3: "cpu::vmx_invept_ud::long64", "cpu::vmx_invept_ud::cpl3", ".byte 0x66, 0x0f, 0x38, 0x80, 0x08";
    /// INVVPID RCX, [RAX] (66 0F 38 81 /r).
    vmx_invvpid_ud, invvpid_at_cpl3, vmx_invvpid_ud_cpl3: "cpu::vmx_invvpid_ud::long64", "cpu::vmx_invvpid_ud::cpl3", ".byte 0x66, 0x0f, 0x38, 0x81, 0x08";
}
