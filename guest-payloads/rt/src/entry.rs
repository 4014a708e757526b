//! Entry points the harness jumps to, and the 256 interrupt stubs it points the IDT at.

use core::arch::global_asm;

use hvprobe_abi::{BootHeader, TestDesc};

// Each stub is 16 bytes apart (BootHeader::VECTOR_STRIDE). For vectors where the CPU pushes
// no error code the stub pushes a zero, so every frame has the same shape. The mask holds
// the exception vectors that push one: 8, 10-14, 17, 21, 29, 30 (SDM Vol. 3A, 6.13). It is
// consulted only below 32: the assembler's shift count wraps at 64, so vector 0x4c would
// otherwise read the mask's bit 12 (irq::every_vector guards this).
global_asm!(
    r#"
    .section .text.entry, "ax"
    .global hvprobe_vector_stubs
    .balign 16
hvprobe_vector_stubs:
    .set hv_vec, 0
    .rept 256
    .balign 16
    .if hv_vec >= 32
    push 0
    .elseif ((0x60227d00 >> hv_vec) & 1) == 0
    push 0
    .endif
    push hv_vec
    jmp hvprobe_isr_common
    .set hv_vec, hv_vec + 1
    .endr

hvprobe_isr_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    call hvprobe_trap
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq

    .global hvprobe_entry64
hvprobe_entry64:
    xor ebp, ebp
    call hvprobe_run_case
    ud2
"#
);

unsafe extern "C" {
    fn hvprobe_vector_stubs();
    fn hvprobe_entry64();
}

#[used]
#[unsafe(link_section = ".hvprobe.boot")]
static BOOT_HEADER: BootHeader = BootHeader {
    magic: BootHeader::MAGIC,
    abi_version: BootHeader::ABI_VERSION,
    vector_stubs: hvprobe_vector_stubs,
    entry64: hvprobe_entry64,
};

/// Runs the 64-bit test case whose descriptor the harness passed in RDI, then reports a
/// pass: a failing check reports and halts before it gets here. An application processor
/// (RSI = its vCPU index, not 0) idles instead.
#[unsafe(no_mangle)]
extern "C" fn hvprobe_run_case(desc: &'static TestDesc, vcpu: u64) -> ! {
    if vcpu != 0 {
        crate::smp::ap_main(vcpu);
    }
    // SAFETY: the harness put the address of a descriptor from the test table in RDI, and
    // that descriptor's entry is a `test_case!` body with no preconditions.
    unsafe { (desc.entry)() };
    crate::proto::pass()
}
