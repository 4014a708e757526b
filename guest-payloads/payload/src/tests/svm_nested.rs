//! Nested SVM: the case is a hypervisor. It sets EFER.SVME and VM_HSAVE_PA, fills a VMCB
//! (APM Vol. 2, Appendix B) for a tiny 64-bit L2 that shares its page tables, GDT and
//! segments, runs it with VMRUN and checks the #VMEXIT: the exit code, EXITINFO1/2 and the
//! state VMRUN saved (APM 15.5-15.7, 15.10-15.13, 15.20, 15.25). The L2 code is assembly
//! below (`hv_l2_*`), so that the checked RIPs are exact.
//!
//! The cases need the vCPU to offer SVM: CPUID 8000_0001h:ECX[2] in the table the host set
//! from KVM_GET_SUPPORTED_CPUID (kvm_amd with nested=1 offers it; PVM and kvm_intel do
//! not), and the nested-paging case CPUID 8000_000Ah:EDX[0]. They skip with that reason
//! elsewhere.

use core::sync::atomic::{AtomicU32, Ordering::SeqCst};

use hvprobe_rt::abi::{CpuidClear, requires, selector};
use hvprobe_rt::apic::{Apic, reg};
use hvprobe_rt::cpu;
use hvprobe_rt::exception::{Frame, set_handler};
use hvprobe_rt::{check, check_eq, skip, test_case};

use super::cpu::{table_reg, try_rdmsr, try_wrmsr};
use super::cpu_sys::{limit_base, sgdt, sidt};

const EFER_SVME: u64 = 1 << 12;
const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;

/// VMCB control-area offsets (APM Table B-1).
mod ctl {
    pub const EXCEPTIONS: usize = 0x08;
    pub const MISC1: usize = 0x0c;
    pub const MISC2: usize = 0x10;
    pub const IOPM_BASE: usize = 0x40;
    pub const MSRPM_BASE: usize = 0x48;
    pub const ASID: usize = 0x58;
    pub const VINTR: usize = 0x60;
    pub const EXITCODE: usize = 0x70;
    pub const EXITINFO1: usize = 0x78;
    pub const EXITINFO2: usize = 0x80;
    pub const NP_ENABLE: usize = 0x90;
    pub const EVENTINJ: usize = 0xa8;
    pub const N_CR3: usize = 0xb0;
}

/// Intercept bits: MISC1 (offset 0Ch) and MISC2 (offset 10h).
const INTERCEPT_INTR: u32 = 1 << 0;
const INTERCEPT_CPUID: u32 = 1 << 18;
const INTERCEPT_HLT: u32 = 1 << 24;
const INTERCEPT_IOIO: u32 = 1 << 27;
const INTERCEPT_MSR: u32 = 1 << 28;
const INTERCEPT_VMRUN: u32 = 1 << 0;
const INTERCEPT_VMMCALL: u32 = 1 << 1;
/// V_INTR_MASKING (offset 60h bit 24): L2's RFLAGS.IF masks only virtual interrupts.
const V_INTR_MASKING: u32 = 1 << 24;

/// VMCB state-save-area offsets (APM Table B-2).
mod save {
    pub const ES: usize = 0x400;
    pub const CS: usize = 0x410;
    pub const SS: usize = 0x420;
    pub const DS: usize = 0x430;
    pub const GDTR: usize = 0x460;
    pub const IDTR: usize = 0x480;
    pub const TR: usize = 0x490;
    pub const EFER: usize = 0x4d0;
    pub const CR4: usize = 0x548;
    pub const CR3: usize = 0x550;
    pub const CR0: usize = 0x558;
    pub const DR7: usize = 0x560;
    pub const DR6: usize = 0x568;
    pub const RFLAGS: usize = 0x570;
    pub const RIP: usize = 0x578;
    pub const RSP: usize = 0x5d8;
    pub const RAX: usize = 0x5f8;
    pub const STAR: usize = 0x600;
    pub const LSTAR: usize = 0x608;
    pub const KERNEL_GS_BASE: usize = 0x620;
    pub const G_PAT: usize = 0x668;
}

/// #VMEXIT codes (APM Table C-1).
const EXIT_EXCP_BASE: u64 = 0x40;
const EXIT_CPUID: u64 = 0x72;
const EXIT_HLT: u64 = 0x78;
const EXIT_IOIO: u64 = 0x7b;
const EXIT_MSR: u64 = 0x7c;
const EXIT_VMMCALL: u64 = 0x81;
const EXIT_NPF: u64 = 0x400;
const EXIT_INVALID: u64 = u64::MAX;

#[repr(C, align(4096))]
struct Pages<const N: usize>([u8; N]);

static mut VMCB: Pages<4096> = Pages([0; 4096]);
static mut HSAVE: Pages<4096> = Pages([0; 4096]);
static mut IOPM: Pages<12288> = Pages([0; 12288]);
static mut MSRPM: Pages<8192> = Pages([0; 8192]);
static mut L2_STACK: Pages<4096> = Pages([0; 4096]);
static mut L2_IDT: Pages<4096> = Pages([0; 4096]);
static mut SAVE_PAGE: Pages<4096> = Pages([0; 4096]);
static mut NPT: Pages<12288> = Pages([0; 12288]);

fn vmcb() -> *mut u8 {
    &raw mut VMCB as *mut u8
}

fn put<T: Copy>(base: *mut u8, offset: usize, value: T) {
    // SAFETY: every caller writes inside one of the page statics above.
    unsafe { base.add(offset).cast::<T>().write_unaligned(value) }
}

fn get<T: Copy>(base: *const u8, offset: usize) -> T {
    // SAFETY: as in `put`.
    unsafe { base.add(offset).cast::<T>().read_unaligned() }
}

fn vmcb_u64(offset: usize) -> u64 {
    get(vmcb(), offset)
}

/// A VMCB segment: selector, attributes (descriptor bits 40-47 and 52-55, packed), limit,
/// base (APM Table B-2, "segment register state").
fn put_segment(offset: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
    put(vmcb(), offset, selector);
    put(vmcb(), offset + 2, attrib);
    put(vmcb(), offset + 4, limit);
    put(vmcb(), offset + 8, base);
}

/// Skips unless the table offers SVM; then enables it (EFER.SVME, VM_HSAVE_PA).
fn enable_svm() {
    if table_reg(0x8000_0001, 0, CpuidClear::ECX) & (1 << 2) == 0 {
        skip!("the vCPU offers no SVM (CPUID 8000_0001h:ECX[2] clear in KVM_GET_SUPPORTED_CPUID)");
    }
    let efer = try_rdmsr(x86::msr::IA32_EFER).unwrap_or(0);
    let e = try_wrmsr(x86::msr::IA32_EFER, efer | EFER_SVME);
    check!(e.is_none(), "setting EFER.SVME with SVM offered raised {:?}", e);
    let e = try_wrmsr(MSR_VM_HSAVE_PA, &raw const HSAVE as u64);
    check!(e.is_none(), "writing VM_HSAVE_PA raised {:?}", e);
}

/// A VMCB for an L2 that starts at `rip` on its own stack with this vCPU's long-mode
/// state, ASID 1, VMRUN and INTR intercepted, and the extra intercepts `misc1`/`misc2`.
fn prepare(rip: u64, misc1: u32, misc2: u32) {
    // SAFETY: nothing else uses the VMCB page while the case builds it.
    unsafe { core::ptr::write_bytes(vmcb(), 0, 4096) };
    put(vmcb(), ctl::MISC1, INTERCEPT_INTR | misc1);
    put(vmcb(), ctl::MISC2, INTERCEPT_VMRUN | misc2);
    put(vmcb(), ctl::ASID, 1u32);
    put(vmcb(), ctl::VINTR, V_INTR_MASKING);
    put(vmcb(), ctl::IOPM_BASE, &raw const IOPM as u64);
    put(vmcb(), ctl::MSRPM_BASE, &raw const MSRPM as u64);
    put_segment(save::CS, selector::CODE64, 0xa9b, u32::MAX, 0);
    for s in [save::ES, save::SS, save::DS] {
        put_segment(s, selector::DATA, 0xc93, u32::MAX, 0);
    }
    let (glimit, gbase) = limit_base(&sgdt());
    let (ilimit, ibase) = limit_base(&sidt());
    put_segment(save::GDTR, 0, 0, u32::from(glimit), gbase);
    put_segment(save::IDTR, 0, 0, u32::from(ilimit), ibase);
    put_segment(save::TR, selector::TSS, 0x8b, 0x67, hvprobe_rt::abi::layout::TSS);
    put(vmcb(), save::EFER, try_rdmsr(x86::msr::IA32_EFER).unwrap_or(0));
    put(vmcb(), save::CR0, cpu::read_cr0());
    put(vmcb(), save::CR3, cpu::read_cr3());
    put(vmcb(), save::CR4, cpu::read_cr4());
    put(vmcb(), save::DR7, 0x400u64);
    put(vmcb(), save::DR6, 0xffff_0ff0u64);
    put(vmcb(), save::RFLAGS, 2u64);
    put(vmcb(), save::RIP, rip);
    put(vmcb(), save::RSP, l2_stack_top());
    put(vmcb(), save::G_PAT, 0x0007_0406_0007_0406u64);
}

fn l2_stack_top() -> u64 {
    &raw const L2_STACK as u64 + 4096
}

/// What the general registers held right after #VMEXIT: VMRUN swaps only RAX and RSP, so
/// RBX, RCX and RDX are L2's (APM 15.5.1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct AfterExit {
    rbx: u64,
    rcx: u64,
}

unsafe extern "C" {
    fn hv_svm_vmrun(vmcb: u64, after: *mut AfterExit);
    fn hv_l2_hlt();
    fn hv_l2_cpuid();
    fn hv_l2_vmmcall();
    fn hv_l2_second_vmmcall();
    fn hv_l2_out();
    fn hv_l2_out_next();
    fn hv_l2_rdmsr();
    fn hv_l2_wrmsr();
    fn hv_l2_ud2();
    fn hv_l2_gp();
    fn hv_l2_entry_state();
    fn hv_l2_spin();
    fn hv_l2_int50();
    fn hv_l2_read_npt_hole();
    fn hv_l2_cpuid_at();
    fn hv_l2_vmmcall_at();
    fn hv_l2_second_vmmcall_at();
    fn hv_l2_gp_at();
    static mut hv_l2_seen: [u64; 2];
}

core::arch::global_asm!(
    r#"
    .text
    .global hv_svm_vmrun
    // hv_svm_vmrun(vmcb_pa, after): VMRUN, then STGI (#VMEXIT leaves GIF clear) and the
    // registers L2 left in RBX and RCX stored to *after. Keeps every callee-saved register.
hv_svm_vmrun:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    push rsi
    mov rax, rdi
    .byte 0x0f, 0x01, 0xd8
    .byte 0x0f, 0x01, 0xdc
    pop rsi
    mov qword ptr [rsi], rbx
    mov qword ptr [rsi + 8], rcx
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret

    .global hv_l2_hlt, hv_l2_cpuid, hv_l2_vmmcall, hv_l2_second_vmmcall, hv_l2_out
    .global hv_l2_out_next, hv_l2_rdmsr, hv_l2_wrmsr, hv_l2_ud2, hv_l2_gp
    .global hv_l2_entry_state, hv_l2_spin, hv_l2_int50, hv_l2_read_npt_hole, hv_l2_seen
    .global hv_l2_cpuid_at, hv_l2_vmmcall_at, hv_l2_second_vmmcall_at, hv_l2_gp_at
    // VMMCALL is spelled as bytes (0F 01 D9), like VMRUN (D8) and STGI (DC) above.
hv_l2_hlt:
    hlt
    ud2
hv_l2_cpuid:
    xor eax, eax
hv_l2_cpuid_at:
    cpuid
    ud2
hv_l2_vmmcall:
    mov rax, 0x1200ab
    mov rbx, 0x4242b0b
hv_l2_vmmcall_at:
    .byte 0x0f, 0x01, 0xd9
hv_l2_second_vmmcall:
    mov rax, 0x2200ab
hv_l2_second_vmmcall_at:
    .byte 0x0f, 0x01, 0xd9
    ud2
hv_l2_out:
    mov al, 0x5a
    out 0x80, al
hv_l2_out_next:
    ud2
hv_l2_rdmsr:
    mov ecx, 0xc0000081
    rdmsr
    ud2
hv_l2_wrmsr:
    mov ecx, 0xc0000081
    xor eax, eax
    xor edx, edx
    wrmsr
    ud2
hv_l2_ud2:
    ud2
hv_l2_gp:
    mov rax, 0x8000000000000000
hv_l2_gp_at:
    mov rax, qword ptr [rax]
    ud2
hv_l2_entry_state:
    mov qword ptr [rip + hv_l2_seen], rax
    mov qword ptr [rip + hv_l2_seen + 8], rsp
    .byte 0x0f, 0x01, 0xd9
    ud2
hv_l2_spin:
    jmp hv_l2_spin
hv_l2_int50:
    mov eax, 0x50
    .byte 0x0f, 0x01, 0xd9
    ud2
hv_l2_read_npt_hole:
    mov rax, qword ptr [0x380000]
    .byte 0x0f, 0x01, 0xd9
    ud2

    .section .bss.hv_l2_seen, "aw", @nobits
    .balign 8
hv_l2_seen:
    .zero 16
    .text
"#
);

/// The address of an L2 label.
fn addr(label: unsafe extern "C" fn()) -> u64 {
    label as usize as u64
}

/// Runs the VMCB once and returns the exit code with what the registers held.
fn run() -> (u64, AfterExit) {
    let mut after = AfterExit::default();
    // SAFETY: the VMCB describes an L2 that runs the code above on its own stack and
    // exits through an intercept; the wrapper restores everything the compiler relies on.
    unsafe { hv_svm_vmrun(&raw const VMCB as u64, &mut after) };
    (vmcb_u64(ctl::EXITCODE), after)
}

fn run_expect(code: u64, what: &str) -> AfterExit {
    let (exit, after) = run();
    check_eq!(exit, code, "#VMEXIT code after {}", what);
    after
}

test_case! {
    /// An intercepted HLT in L2 ends VMRUN with #VMEXIT(HLT, 78h) and the VMCB's RIP at
    /// the HLT (APM 15.9 and Table C-1: instruction intercepts are checked before the
    /// instruction executes).
    name = "cpu::svm_hlt_intercept::long64", mode = Long64, path = Full;
    fn svm_hlt_intercept() {
        enable_svm();
        prepare(addr(hv_l2_hlt), INTERCEPT_HLT, 0);
        run_expect(EXIT_HLT, "HLT in L2");
        check_eq!(vmcb_u64(save::RIP), addr(hv_l2_hlt), "L2 RIP saved at the intercepted HLT");
    }
}

test_case! {
    /// An intercepted CPUID in L2 exits with code 72h and RIP at the CPUID (APM 15.9).
    name = "cpu::svm_cpuid_intercept::long64", mode = Long64, path = Full;
    fn svm_cpuid_intercept() {
        enable_svm();
        prepare(addr(hv_l2_cpuid), INTERCEPT_CPUID, 0);
        run_expect(EXIT_CPUID, "CPUID in L2");
        check_eq!(vmcb_u64(save::RIP), addr(hv_l2_cpuid_at), "L2 RIP saved at the CPUID");
    }
}

test_case! {
    /// VMMCALL intercepted: exit code 81h, and the VMCB holds L2's RAX (APM 15.5.2: #VMEXIT
    /// saves RAX, RSP, RIP and RFLAGS to the VMCB).
    name = "cpu::svm_vmmcall::long64", mode = Long64, path = Full;
    fn svm_vmmcall() {
        enable_svm();
        prepare(addr(hv_l2_vmmcall), 0, INTERCEPT_VMMCALL);
        run_expect(EXIT_VMMCALL, "VMMCALL in L2");
        check_eq!(vmcb_u64(save::RAX), 0x1200ab, "L2's RAX in the VMCB");
        check_eq!(vmcb_u64(save::RIP), addr(hv_l2_vmmcall_at), "L2 RIP saved at the VMMCALL");
        check_eq!(vmcb_u64(save::RSP), l2_stack_top(), "L2's RSP in the VMCB");
    }
}

test_case! {
    /// A second VMRUN of the same VMCB with RIP moved past the VMMCALL resumes L2 there
    /// (APM 15.5.1: VMRUN loads RIP from the VMCB; the emulated SVM here has no next-RIP,
    /// so the host moves RIP itself).
    name = "cpu::svm_resume::long64", mode = Long64, path = Full;
    fn svm_resume() {
        enable_svm();
        prepare(addr(hv_l2_vmmcall), 0, INTERCEPT_VMMCALL);
        run_expect(EXIT_VMMCALL, "the first VMMCALL");
        put(vmcb(), save::RIP, addr(hv_l2_second_vmmcall));
        run_expect(EXIT_VMMCALL, "the second VMMCALL");
        check_eq!(vmcb_u64(save::RAX), 0x2200ab, "L2's RAX at the second VMMCALL");
        check_eq!(vmcb_u64(save::RIP), addr(hv_l2_second_vmmcall_at), "L2 RIP at the second VMMCALL");
    }
}

test_case! {
    /// VMRUN and #VMEXIT swap only RAX and RSP: the RBX L2 set is in the host's RBX after
    /// the exit (APM 15.5.1, "the VMM must save and restore the other registers").
    name = "cpu::svm_gprs_shared::long64", mode = Long64, path = Full;
    fn svm_gprs_shared() {
        enable_svm();
        prepare(addr(hv_l2_vmmcall), 0, INTERCEPT_VMMCALL);
        let after = run_expect(EXIT_VMMCALL, "VMMCALL in L2");
        check_eq!(after.rbx, 0x4242b0b, "the host's RBX after #VMEXIT (L2's value)");
    }
}

test_case! {
    /// L2 starts with the RAX and RSP the VMCB holds (APM 15.5.1).
    name = "cpu::svm_l2_entry_state::long64", mode = Long64, path = Full;
    fn svm_l2_entry_state() {
        enable_svm();
        prepare(addr(hv_l2_entry_state), 0, INTERCEPT_VMMCALL);
        put(vmcb(), save::RAX, 0x5eed_0001u64);
        run_expect(EXIT_VMMCALL, "VMMCALL in L2");
        // SAFETY: L2 has exited; nothing writes the record now.
        let seen = unsafe { (&raw const hv_l2_seen).read_volatile() };
        check_eq!(seen[0], 0x5eed_0001, "RAX in L2 (from the VMCB)");
        check_eq!(seen[1], l2_stack_top(), "RSP in L2 (from the VMCB)");
    }
}

test_case! {
    /// OUT imm8 in L2 with IOIO_PROT and the port's IOPM bit set exits with 7Bh; EXITINFO1
    /// holds the port, the OUT direction and the 8-bit size, EXITINFO2 the next RIP (APM
    /// 15.10.2, Figure 15-2).
    name = "cpu::svm_io_intercept::long64", mode = Long64, path = Full;
    fn svm_io_intercept() {
        enable_svm();
        // SAFETY: the IOPM is this case's; 0x80's bit is bit 0 of byte 0x10.
        unsafe { (&raw mut IOPM as *mut u8).add(0x80 / 8).write_volatile(1) };
        prepare(addr(hv_l2_out), INTERCEPT_IOIO, 0);
        run_expect(EXIT_IOIO, "OUT 0x80 in L2");
        let info1 = vmcb_u64(ctl::EXITINFO1);
        check_eq!(info1 >> 16 & 0xffff, 0x80, "EXITINFO1 port");
        check_eq!(info1 & 1, 0, "EXITINFO1 TYPE (0: OUT)");
        check_eq!(info1 & 0x70, 0x10, "EXITINFO1 size bits (SZ8)");
        check_eq!(vmcb_u64(ctl::EXITINFO2), addr(hv_l2_out_next), "EXITINFO2 (the next RIP)");
    }
}

/// Sets the MSRPM read and write bits of STAR (C000_0081h: second 2 KiB block, MSR 81h,
/// bits 2*0x81 and 2*0x81+1; APM 15.11).
fn intercept_star() {
    let bit = 0x800 * 8 + 2 * 0x81;
    // SAFETY: the MSRPM is this case's.
    unsafe { (&raw mut MSRPM as *mut u8).add(bit / 8).write_volatile(0b11 << (bit % 8)) };
}

test_case! {
    /// RDMSR of an MSR whose MSRPM read bit is set exits with 7Ch and EXITINFO1 = 0; the
    /// MSR index is in L2's RCX, which the host sees (APM 15.11).
    name = "cpu::svm_msr_read_intercept::long64", mode = Long64, path = Full;
    fn svm_msr_read_intercept() {
        enable_svm();
        intercept_star();
        prepare(addr(hv_l2_rdmsr), INTERCEPT_MSR, 0);
        let after = run_expect(EXIT_MSR, "RDMSR STAR in L2");
        check_eq!(vmcb_u64(ctl::EXITINFO1), 0, "EXITINFO1 (0: RDMSR)");
        check_eq!(after.rcx & 0xffff_ffff, 0xc000_0081, "the MSR index in RCX");
    }
}

test_case! {
    /// WRMSR of an MSR whose MSRPM write bit is set exits with 7Ch and EXITINFO1 = 1
    /// (APM 15.11).
    name = "cpu::svm_msr_write_intercept::long64", mode = Long64, path = Full;
    fn svm_msr_write_intercept() {
        enable_svm();
        intercept_star();
        prepare(addr(hv_l2_wrmsr), INTERCEPT_MSR, 0);
        run_expect(EXIT_MSR, "WRMSR STAR in L2");
        check_eq!(vmcb_u64(ctl::EXITINFO1), 1, "EXITINFO1 (1: WRMSR)");
    }
}

test_case! {
    /// A #UD in L2 with exception intercept bit 6 set exits with 46h and the VMCB's RIP
    /// at the UD2 (APM 15.12).
    name = "cpu::svm_exception_intercept::long64", mode = Long64, path = Full;
    fn svm_exception_intercept() {
        enable_svm();
        prepare(addr(hv_l2_ud2), 0, 0);
        put(vmcb(), ctl::EXCEPTIONS, 1u32 << 6);
        run_expect(EXIT_EXCP_BASE + 6, "UD2 in L2");
        check_eq!(vmcb_u64(save::RIP), addr(hv_l2_ud2), "L2 RIP at the faulting UD2");
    }
}

test_case! {
    /// An intercepted #GP carries its error code in EXITINFO1 (APM 15.12: "EXITINFO1
    /// contains the error code"): a load from a non-canonical address, #GP(0).
    name = "cpu::svm_exception_error_code::long64", mode = Long64, path = Full;
    fn svm_exception_error_code() {
        enable_svm();
        prepare(addr(hv_l2_gp), 0, 0);
        put(vmcb(), ctl::EXCEPTIONS, 1u32 << 13);
        run_expect(EXIT_EXCP_BASE + 13, "a non-canonical load in L2");
        check_eq!(vmcb_u64(ctl::EXITINFO1), 0, "EXITINFO1 (the #GP error code)");
        check_eq!(vmcb_u64(save::RIP), addr(hv_l2_gp_at), "L2 RIP at the faulting load");
    }
}

test_case! {
    /// EVENTINJ delivers an external interrupt to L2 through L2's IDT before its first
    /// instruction (APM 15.20): vector 50h's handler runs and pushes the RIP L2 would have
    /// started at.
    name = "cpu::svm_event_inject::long64", mode = Long64, path = Full;
    fn svm_event_inject() {
        enable_svm();
        let idt = &raw mut L2_IDT as *mut u8;
        let handler = addr(hv_l2_int50);
        let low = (handler & 0xffff) | u64::from(selector::CODE64) << 16 | 0x8e << 40 | (handler >> 16 & 0xffff) << 48;
        put(idt, 0x50 * 16, low);
        put(idt, 0x50 * 16 + 8, handler >> 32);
        prepare(addr(hv_l2_spin), 0, INTERCEPT_VMMCALL);
        put_segment(save::IDTR, 0, 0, 4095, idt as u64);
        put(vmcb(), ctl::EVENTINJ, 0x50u64 | 1 << 31);
        run_expect(EXIT_VMMCALL, "the VMMCALL of the vector-0x50 handler");
        check_eq!(vmcb_u64(save::RAX), 0x50, "RAX set by the injected vector's handler");
        let rsp = vmcb_u64(save::RSP);
        check_eq!(rsp, l2_stack_top() - 40, "L2's RSP after the interrupt frame");
        check_eq!(get::<u64>(rsp as *const u8, 0), addr(hv_l2_spin), "the RIP the frame holds");
    }
}

test_case! {
    /// A VMCB that does not intercept VMRUN is illegal: VMRUN exits at once with
    /// VMEXIT_INVALID (-1) (APM 15.5.1, "canonicalization and consistency checks").
    name = "cpu::svm_vmrun_no_intercept::long64", mode = Long64, path = Full;
    fn svm_vmrun_no_intercept() {
        enable_svm();
        prepare(addr(hv_l2_hlt), INTERCEPT_HLT, 0);
        put(vmcb(), ctl::MISC2, 0u32);
        run_expect(EXIT_INVALID, "VMRUN of a VMCB without the VMRUN intercept");
    }
}

test_case! {
    /// ASID 0 belongs to the host: VMRUN with it exits with VMEXIT_INVALID (APM 15.5.1).
    name = "cpu::svm_vmrun_asid0::long64", mode = Long64, path = Full;
    fn svm_vmrun_asid0() {
        enable_svm();
        prepare(addr(hv_l2_hlt), INTERCEPT_HLT, 0);
        put(vmcb(), ctl::ASID, 0u32);
        run_expect(EXIT_INVALID, "VMRUN with ASID 0");
    }
}

fn vmsave(page: u64) {
    // SAFETY: VMSAVE stores into the case's own page.
    unsafe { core::arch::asm!(".byte 0x0f, 0x01, 0xdb", in("rax") page, options(nostack)) };
}

fn vmload(page: u64) {
    // SAFETY: VMLOAD loads state the case saved itself, with one MSR changed.
    unsafe { core::arch::asm!(".byte 0x0f, 0x01, 0xda", in("rax") page, options(nostack)) };
}

test_case! {
    /// VMSAVE stores STAR, LSTAR, KernelGSBase and TR into the save area of the page in
    /// RAX (APM 15.5.2, VMSAVE).
    name = "cpu::svm_vmsave::long64", mode = Long64, path = Full;
    fn svm_vmsave() {
        enable_svm();
        let page = &raw mut SAVE_PAGE as *mut u8;
        let values = [(x86::msr::IA32_LSTAR, 0xffff_8000_1234_5000u64), (x86::msr::IA32_KERNEL_GSBASE, 0x7777_0000)];
        for (msr, v) in values {
            check!(try_wrmsr(msr, v).is_none(), "WRMSR {:#x}", msr);
        }
        let star = try_rdmsr(x86::msr::IA32_STAR).unwrap_or(0);
        vmsave(page as u64);
        check_eq!(get::<u64>(page, save::LSTAR), values[0].1, "LSTAR in the VMSAVE area");
        check_eq!(get::<u64>(page, save::KERNEL_GS_BASE), values[1].1, "KernelGSBase in the VMSAVE area");
        check_eq!(get::<u64>(page, save::STAR), star, "STAR in the VMSAVE area");
        check_eq!(get::<u16>(page, save::TR), selector::TSS, "TR selector in the VMSAVE area");
    }
}

test_case! {
    /// VMLOAD loads LSTAR from the save area of the page in RAX (APM 15.5.2, VMLOAD).
    name = "cpu::svm_vmload::long64", mode = Long64, path = Full;
    fn svm_vmload() {
        enable_svm();
        let page = &raw mut SAVE_PAGE as *mut u8;
        let old = try_rdmsr(x86::msr::IA32_LSTAR).unwrap_or(0);
        vmsave(page as u64);
        put(page, save::LSTAR, 0xffff_8000_4321_0000u64);
        vmload(page as u64);
        let got = try_rdmsr(x86::msr::IA32_LSTAR).unwrap_or(0);
        let _ = try_wrmsr(x86::msr::IA32_LSTAR, old);
        check_eq!(got, 0xffff_8000_4321_0000, "LSTAR after VMLOAD");
    }
}

static GIF_IRQS: AtomicU32 = AtomicU32::new(0);
const GIF_VECTOR: u8 = 0xe7;

fn gif_irq(_: &mut Frame) {
    GIF_IRQS.fetch_add(1, SeqCst);
    Apic::XApic.eoi();
}

test_case! {
    /// CLGI holds a pending interrupt even with RFLAGS.IF set; STGI lets it in (APM 15.17,
    /// "global interrupt flag").
    name = "cpu::svm_clgi_holds_intr::xapic", mode = Long64, path = Full, requires = requires::IRQCHIP;
    fn svm_clgi_holds_intr() {
        enable_svm();
        let apic = Apic::XApic.enable();
        set_handler(GIF_VECTOR, gif_irq);
        // SAFETY: CLGI with interrupts enabled: the interrupt below is held by GIF only.
        unsafe { core::arch::asm!(".byte 0x0f, 0x01, 0xdd", "sti", options(nomem, nostack)) };
        apic.write(reg::ICR_LOW, 0x4_4000 | u32::from(GIF_VECTOR));
        for _ in 0..10_000 {
            core::hint::spin_loop();
        }
        let held = GIF_IRQS.load(SeqCst);
        // SAFETY: STGI opens GIF; the held interrupt is delivered now.
        unsafe { core::arch::asm!(".byte 0x0f, 0x01, 0xdc", "nop", "nop", "cli", options(nomem, nostack)) };
        check_eq!(held, 0, "interrupts delivered while GIF was clear");
        check_eq!(GIF_IRQS.load(SeqCst), 1, "interrupts delivered after STGI");
    }
}

test_case! {
    /// With nested paging, an L2 access to a guest-physical address the nested page tables
    /// do not map exits with #VMEXIT(NPF, 400h), the address in EXITINFO2 and a not-present
    /// read in EXITINFO1 (APM 15.25.6).
    name = "cpu::svm_npt_fault::long64", mode = Long64, path = Full;
    fn svm_npt_fault() {
        enable_svm();
        if table_reg(0x8000_000a, 0, CpuidClear::EDX) & 1 == 0 {
            skip!("the vCPU offers no nested paging (CPUID 8000_000Ah:EDX[0] clear in KVM_GET_SUPPORTED_CPUID)");
        }
        // PML4 -> PDPT -> PD: 2 MiB pages for 0-1 GiB, user and writable, except the one
        // at 2 MiB (0x200000-0x3fffff).
        let npt = &raw mut NPT as *mut u8;
        let base = npt as u64;
        put(npt, 0, (base + 0x1000) | 7);
        put(npt, 0x1000, (base + 0x2000) | 7);
        for i in 0..512u64 {
            let entry = if i == 1 { 0 } else { (i << 21) | 0x87 };
            put(npt, 0x2000 + 8 * i as usize, entry);
        }
        prepare(addr(hv_l2_read_npt_hole), 0, INTERCEPT_VMMCALL);
        put(vmcb(), ctl::NP_ENABLE, 1u64);
        put(vmcb(), ctl::N_CR3, base);
        run_expect(EXIT_NPF, "a load from the unmapped 2 MiB");
        check_eq!(vmcb_u64(ctl::EXITINFO2), 0x380000, "EXITINFO2 (the faulting guest-physical address)");
        check_eq!(vmcb_u64(ctl::EXITINFO1) & 3, 0, "EXITINFO1 P and RW bits (a read of a page not present)");
    }
}
