//! Running a function at CPL3 from a CPL0 case, and coming back.
//!
//! `call_at_cpl3(f, arg)` saves its callee-saved registers and stack, IRETs to a CPL3
//! trampoline that calls `f(arg)` on the user stack and then executes INT3 at one known
//! address. The trampoline is also the recovery point of an exception `f` raises: the
//! handler records it (as `catch!` does) and resumes at that INT3, so `call_at_cpl3`
//! returns what CPL3 raised. The #BP handler recognises that address and rewrites the frame to resume at
//! CPL0 where `call_at_cpl3` left off. (INT3 rather than INT n through a DPL3 gate: PVM
//! raises #UD for the latter, see cpu::int_n_dpl3_gate.) On PVM this runs `f` natively while the
//! caller's code is emulated, which is what the differential tests compare.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use hvprobe_abi::{layout, selector};

use crate::exception::{Exception, Frame};

#[doc(hidden)]
pub static KERNEL_RSP: AtomicU64 = AtomicU64::new(0);
#[doc(hidden)]
pub static KERNEL_RIP: AtomicU64 = AtomicU64::new(0);

global_asm!(
    r#"
    .section .text.entry, "ax"
    .global hvprobe_call_cpl3
hvprobe_call_cpl3:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov [rip + {kernel_rsp}], rsp
    lea rax, [rip + 2f]
    mov [rip + {kernel_rip}], rax
    push {user_ss}
    push {user_stack}
    push rdx
    push {user_cs}
    lea rax, [rip + hvprobe_user_trampoline]
    push rax
    mov rax, rdi
    mov rdi, rsi
    mov rsi, rax
    iretq
2:
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret

hvprobe_user_trampoline:
    call rsi
    .global hvprobe_user_fault_resume
hvprobe_user_fault_resume:
    int3
    .global hvprobe_user_return_point
hvprobe_user_return_point:
    ud2
"#,
    kernel_rsp = sym KERNEL_RSP,
    kernel_rip = sym KERNEL_RIP,
    user_ss = const selector::USER_DATA,
    user_cs = const selector::USER_CODE64,
    user_stack = const layout::USER_STACK_TOP,
);

unsafe extern "C" {
    fn hvprobe_call_cpl3(f: extern "C" fn(u64), arg: u64, rflags: u64);
    fn hvprobe_user_return_point();
    fn hvprobe_user_fault_resume();
}

/// Runs `f(arg)` at CPL3 (IOPL 3, interrupts off) on the user stack and returns to the
/// caller at CPL0 with the exception `f` raised, if any (`f` ends where it raised it).
/// Only a CPL0 case may call it, and `f` itself must not use `catch!`.
#[must_use = "the exception raised at CPL3 is the result"]
pub fn call_at_cpl3(f: extern "C" fn(u64), arg: u64) -> Option<Exception> {
    call_at_cpl3_with_rflags(f, arg, 0x3002)
}

/// [`call_at_cpl3`] starting with the given RFLAGS (e.g. IOPL 0 to test port access).
#[must_use = "the exception raised at CPL3 is the result"]
pub fn call_at_cpl3_with_rflags(f: extern "C" fn(u64), arg: u64, rflags: u64) -> Option<Exception> {
    crate::exception::arm_at(hvprobe_user_fault_resume as *const () as u64);
    // SAFETY: the trampoline preserves the System V callee-saved registers and returns
    // on the caller's stack; `f` runs on the separate user stack. RFLAGS is forced to its
    // reserved bit 1 and to IF clear, so no interrupt can arrive at CPL3 unplanned.
    unsafe { hvprobe_call_cpl3(f, arg, (rflags | 0x2) & !0x200) };
    crate::exception::take()
}

/// The handler's part: turn the trampoline's #BP frame into a return to CPL0.
pub(crate) fn resume_kernel(frame: &mut Frame) -> bool {
    let at_return_point = frame.rip == hvprobe_user_return_point as *const () as u64;
    if frame.vector != crate::exception::BP as u64 || frame.cs & 3 != 3 || !at_return_point {
        return false;
    }
    frame.rip = KERNEL_RIP.load(SeqCst);
    frame.rsp = KERNEL_RSP.load(SeqCst);
    frame.cs = selector::CODE64 as u64;
    frame.ss = selector::DATA as u64;
    frame.rflags = 0x2;
    true
}
