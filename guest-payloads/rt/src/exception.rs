//! Exception capture and interrupt dispatch.
//!
//! [`catch!`](crate::catch) runs an instruction sequence with a recovery point armed: if it
//! raises an exception, the handler records vector, error code, saved RIP and CR2, and
//! resumes after the sequence. An exception with no recovery point armed fails the test
//! with everything the handler saw.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};

/// The interrupt frame as `hvprobe_isr_common` lays it out.
#[repr(C)]
#[derive(Debug)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// What the handler recorded for a caught exception.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    pub vector: u8,
    /// `None` for vectors that push no error code.
    pub error_code: Option<u64>,
    /// The RIP the CPU saved: the faulting instruction for faults, the next one for traps.
    pub rip: u64,
    /// CR2, for #PF only.
    pub cr2: Option<u64>,
    /// The CS the CPU saved (its low two bits are the CPL the exception came from).
    pub cs: u16,
}

pub const DE: u8 = 0;
pub const DB: u8 = 1;
pub const NMI: u8 = 2;
pub const BP: u8 = 3;
pub const OF: u8 = 4;
pub const UD: u8 = 6;
pub const DF: u8 = 8;
pub const TS: u8 = 10;
pub const NP: u8 = 11;
pub const SS: u8 = 12;
pub const GP: u8 = 13;
pub const PF: u8 = 14;
pub const AC: u8 = 17;
pub const NM: u8 = 7;

const RFLAGS_TF: u64 = 1 << 8;

/// The mnemonic of an exception vector, for messages.
pub fn mnemonic(vector: u8) -> &'static str {
    const NAMES: [&str; 22] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#MF(9)", "#TS", "#NP", "#SS", "#GP", "#PF",
        "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
    ];
    NAMES.get(vector as usize).copied().unwrap_or("#??")
}

fn has_error_code(vector: u8) -> bool {
    vector < 32 && (0x6022_7d00u32 >> vector) & 1 == 1
}

/// Where the handler resumes after a caught exception; 0 when nothing is armed.
#[doc(hidden)]
pub static FIXUP_RIP: AtomicU64 = AtomicU64::new(0);
/// The address of the first instruction of the armed sequence, for [`catch!`] callers
/// that check the saved RIP of a fault.
#[doc(hidden)]
pub static ARMED_RIP: AtomicU64 = AtomicU64::new(0);
/// RSP when a [`catch!`] sequence started: a fault resumes with it, so a sequence that
/// pushed, called or built an IRET frame before it faulted still returns to its caller
/// on the caller's stack. 0 for the CPL3 trampoline's recovery point, which keeps the
/// user stack.
#[doc(hidden)]
pub static ARMED_RSP: AtomicU64 = AtomicU64::new(0);

const NONE: u64 = u64::MAX;
static CAUGHT_VECTOR: AtomicU64 = AtomicU64::new(NONE);
static CAUGHT_ERROR: AtomicU64 = AtomicU64::new(0);
static CAUGHT_RIP: AtomicU64 = AtomicU64::new(0);
static CAUGHT_CR2: AtomicU64 = AtomicU64::new(0);
static CAUGHT_CS: AtomicU64 = AtomicU64::new(0);

/// The last exception `catch!` took (vector | rip << 8) and where it resumed: an
/// unexpected exception's report includes them, which tells a resume that went wrong from
/// a second fault.
static LAST_CAUGHT: AtomicU64 = AtomicU64::new(0);
static LAST_RESUME: AtomicU64 = AtomicU64::new(0);

#[doc(hidden)]
pub fn arm() {
    CAUGHT_VECTOR.store(NONE, SeqCst);
    ARMED_RSP.store(0, SeqCst);
}

/// Arms a recovery point at `fixup` for code that is not a `catch!` sequence (the CPL3
/// trampoline); `take` then reports what was raised.
pub(crate) fn arm_at(fixup: u64) {
    arm();
    ARMED_RIP.store(fixup, SeqCst);
    FIXUP_RIP.store(fixup, SeqCst);
}

/// The exception the last [`catch!`] caught, if any.
#[doc(hidden)]
pub fn take() -> Option<Exception> {
    FIXUP_RIP.store(0, SeqCst);
    let vector = CAUGHT_VECTOR.swap(NONE, SeqCst);
    if vector == NONE {
        return None;
    }
    let vector = vector as u8;
    Some(Exception {
        vector,
        error_code: has_error_code(vector).then(|| CAUGHT_ERROR.load(SeqCst)),
        rip: CAUGHT_RIP.load(SeqCst),
        cr2: (vector == PF).then(|| CAUGHT_CR2.load(SeqCst)),
        cs: CAUGHT_CS.load(SeqCst) as u16,
    })
}

/// The address of the first instruction the last [`catch!`] ran.
pub fn armed_rip() -> u64 {
    ARMED_RIP.load(SeqCst)
}

/// Runs an instruction sequence (`asm!` template strings, then operands) and returns the
/// exception it raised, if any; every template string is inside the armed region. Use
/// local labels other than 8 and 9 inside it.
///
/// ```ignore
/// let e = catch!("ud2");
/// check_eq!(e.map(|e| e.vector), Some(exception::UD));
/// ```
#[macro_export]
macro_rules! catch {
    // Moves the template strings, one at a time, in front of the operands.
    (@asm [$($insn:literal,)*] $next:literal $(, $($rest:tt)*)?) => {
        $crate::catch!(@asm [$($insn,)* $next,] $($($rest)*)?)
    };
    (@asm [$($insn:literal,)+] $($($ops:tt)+)?) => {
        core::arch::asm!(
            "lea {hv_tmp}, [rip + 9f]",
            "mov qword ptr [rip + {hv_fixup}], {hv_tmp}",
            "lea {hv_tmp}, [rip + 8f]",
            "mov qword ptr [rip + {hv_armed}], {hv_tmp}",
            "mov qword ptr [rip + {hv_rsp}], rsp",
            "8:",
            $($insn,)+
            "9:",
            $($($ops)+,)?
            hv_tmp = out(reg) _,
            hv_fixup = sym $crate::exception::FIXUP_RIP,
            hv_armed = sym $crate::exception::ARMED_RIP,
            hv_rsp = sym $crate::exception::ARMED_RSP,
        )
    };
    ($($tt:tt)*) => {{
        $crate::exception::arm();
        // SAFETY: the caller's instruction sequence is the test; the recovery point makes
        // any exception it raises resume at label 9 with all registers restored.
        unsafe {
            $crate::catch!(@asm [] $($tt)*)
        }
        $crate::exception::take()
    }};
}

/// [`catch!`] around a call of `f(arg)` (the System V registers it may clobber
/// declared): a fault resumes on the caller's stack, but callee-saved registers keep the
/// callee's values, so it is safe only where `f` faults before it changes them (a fault
/// on its first instruction) or does not fault.
#[macro_export]
macro_rules! catch_call {
    ($f:expr, $arg:expr) => {
        $crate::catch!("call {hv_f}", hv_f = in(reg) $f, inout("rdi") $arg => _, out("rax") _, out("rcx") _,
            out("rdx") _, out("rsi") _, out("r8") _, out("r9") _, out("r10") _, out("r11") _)
    };
}

/// A handler for a vector. For an exception (0-31) it runs only when no `catch!` is armed,
/// and it must change the frame (RIP, say) so that the fault does not repeat.
pub type Handler = fn(&mut Frame);

static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];

/// Points IDT gate `vector` straight at `handler`, bypassing the runtime's dispatch: for
/// handlers written in assembly that preserve every register and IRET themselves. Only
/// the gate's offset changes (SDM Vol. 3A, 6.14.1: bits 15:0 at byte 0, 31:16 at byte 6,
/// 63:32 at byte 8); the IDT page is user-accessible like all of RAM, so CPL3 cases can
/// call it too.
pub fn set_gate(vector: u8, handler: unsafe extern "C" fn()) {
    let gate = (hvprobe_abi::layout::IDT + 16 * vector as u64) as *mut u8;
    let a = handler as usize as u64;
    // SAFETY: the harness-built IDT in identity-mapped RAM; only this gate's offset
    // fields change, and the caller's handler is a complete interrupt handler.
    unsafe {
        core::ptr::write_volatile(gate.cast::<u16>(), a as u16);
        core::ptr::write_volatile(gate.add(6).cast::<u16>(), (a >> 16) as u16);
        core::ptr::write_volatile(gate.add(8).cast::<u32>(), (a >> 32) as u32);
    }
}

/// Routes `vector` to `handler`.
pub fn set_handler(vector: u8, handler: Handler) {
    HANDLERS[vector as usize].store(handler as usize, SeqCst);
}

/// How every report of an exception nobody expected begins; profiles match on it.
fn unexpected(vector: u8, error_code: u64, cpl: u64, rip: u64) -> crate::proto::MessageBuf {
    crate::proto::MessageBuf::format(format_args!(
        "unexpected {} (vector {}) error code {:#x} from CPL {} at rip {:#x}",
        if vector < 32 { mnemonic(vector) } else { "interrupt" },
        vector,
        error_code,
        cpl,
        rip
    ))
}

/// Fails the test with a caught exception that should not have happened, reported as the
/// handler reports an uncaught one (so the host records the instruction bytes too).
pub fn fail_unexpected(file: &str, line: u32, e: &Exception) -> ! {
    let mut buf = unexpected(e.vector, e.error_code.unwrap_or(0), e.cs as u64 & 3, e.rip);
    if let Some(cr2) = e.cr2 {
        buf.append(format_args!(" cr2 {cr2:#x}"));
    }
    crate::proto::fail_at_fault(file, line, buf.as_str(), e.rip)
}

#[unsafe(no_mangle)]
extern "C" fn hvprobe_trap(frame: &mut Frame) {
    let vector = frame.vector as u8;
    if crate::user::resume_kernel(frame) {
        return;
    }
    let fixup = FIXUP_RIP.load(SeqCst);
    if vector < 32 && fixup != 0 {
        CAUGHT_ERROR.store(frame.error_code, SeqCst);
        CAUGHT_RIP.store(frame.rip, SeqCst);
        CAUGHT_CS.store(frame.cs, SeqCst);
        if vector == PF {
            CAUGHT_CR2.store(crate::cpu::read_cr2(), SeqCst);
        }
        CAUGHT_VECTOR.store(vector as u64, SeqCst);
        FIXUP_RIP.store(0, SeqCst);
        LAST_CAUGHT.store(vector as u64 | frame.rip << 8, SeqCst);
        LAST_RESUME.store(fixup, SeqCst);
        frame.rip = fixup;
        let rsp = ARMED_RSP.swap(0, SeqCst);
        if rsp != 0 && frame.cs & 3 == 0 {
            frame.rsp = rsp;
        }
        // The armed sequence is abandoned: a single-step it set must not follow us out.
        frame.rflags &= !RFLAGS_TF;
        return;
    }
    let handler = HANDLERS[vector as usize].load(SeqCst);
    if handler != 0 {
        // SAFETY: only `set_handler` stores non-zero values, and it stores `Handler`s.
        let handler: Handler = unsafe { core::mem::transmute::<usize, Handler>(handler) };
        handler(frame);
        return;
    }
    let cr2 = if vector == PF { crate::cpu::read_cr2() } else { 0 };
    let mut buf = unexpected(vector, frame.error_code, frame.cs & 3, frame.rip);
    buf.append(format_args!(" rsp {:#x} cr2 {:#x}", frame.rsp, cr2));
    let last = LAST_CAUGHT.load(SeqCst);
    if last != 0 {
        buf.append(format_args!(
            "; the last caught exception was {} at rip {:#x}, resumed at {:#x}",
            mnemonic(last as u8),
            last >> 8,
            LAST_RESUME.load(SeqCst)
        ));
    }
    crate::proto::fail_at_fault(file!(), line!(), buf.as_str(), frame.rip)
}
