//! Instructions a hypervisor's emulator must get right beyond the generated ALU cases
//! (cpu::emulator_diff): MOVBE without its CPUID bit, ENTER and LEAVE with nesting, far
//! RET, IRETQ with a null SS, x87 #MF, and MMX arithmetic and its faults. On PVM the CPL0
//! variants run through KVM's instruction emulator; the CPL3 ones natively.

use hvprobe_rt::abi::selector;
use hvprobe_rt::cpu;
use hvprobe_rt::exception;
use hvprobe_rt::{catch, check, check_eq, check_exception, check_no_exception, test_case};

use super::cpu::{cpuid_as_set, with_cr0};

const MF: u8 = 16;
const CR0_EM: u64 = 1 << 2;
const CR0_TS: u64 = 1 << 3;

test_case! {
    /// With MOVBE cleared from CPUID.01H:ECX[22], MOVBE raises #UD at CPL0 (SDM Vol. 2B
    /// MOVBE: #UD if CPUID.01H:ECX.MOVBE[bit 22] = 0; APM Vol. 3 MOVBE).
    name = "cpu::movbe_absent::long64", mode = Long64, path = Full, cpuid_clear = [(1, 0, ECX, 1 << 22)];
    fn movbe_absent() {
        check_eq!(cpuid_as_set(1, 0).map_or(0, |c| c.ecx & 1 << 22), 0, "the host left MOVBE in the table");
        let word = 0x1122_3344u32;
        check_exception!(catch!("movbe {0:e}, [{1}]", out(reg) _, in(reg) &word), exception::UD, None);
    }
}

/// ENTER with nesting levels 0 and 2 and LEAVE: the frame pointer, the stack pointer and
/// the copied frame pointers (SDM Vol. 2A ENTER, "Operation" for 64-bit mode; LEAVE).
/// Returns (RBP after ENTER 32,0 relative to the old RSP, RSP relative to RBP, the saved
/// RBP, RSP delta of ENTER 16,2, the two copied pointers, RSP and RBP restored).
fn enter_leave_check() {
    let (rsp0, rbp_e0, rsp_e0, saved0, rsp_back0, rbp_back0): (u64, u64, u64, u64, u64, u64);
    // SAFETY: ENTER and LEAVE are balanced inside the block; RBP is saved and restored
    // by the sequence itself, and the stack below RSP is free (no red zone in the kernel
    // code model, and interrupts do not use it here).
    unsafe {
        core::arch::asm!(
            "push rbp",
            "mov {rsp0}, rsp",
            "mov rbp, 0x1234",
            "enter 32, 0",
            "mov {rbp_e0}, rbp",
            "mov {rsp_e0}, rsp",
            "mov {saved0}, [rbp]",
            "leave",
            "mov {rsp_back0}, rsp",
            "mov {rbp_back0}, rbp",
            "pop rbp",
            rsp0 = out(reg) rsp0, rbp_e0 = out(reg) rbp_e0, rsp_e0 = out(reg) rsp_e0, saved0 = out(reg) saved0,
            rsp_back0 = out(reg) rsp_back0, rbp_back0 = out(reg) rbp_back0,
        )
    };
    check_eq!(rbp_e0, rsp0 - 8, "RBP after ENTER 32, 0 (the old RSP less the pushed RBP)");
    check_eq!(rsp_e0, rbp_e0 - 32, "RSP after ENTER 32, 0");
    check_eq!(saved0, 0x1234, "the RBP ENTER pushed");
    check_eq!(rsp_back0, rsp0, "RSP after LEAVE");
    check_eq!(rbp_back0, 0x1234, "RBP after LEAVE");

    let (rsp1, rbp_e2, rsp_e2, copy1, copy2): (u64, u64, u64, u64, u64);
    // SAFETY: as above. With nesting level 2, ENTER copies one frame pointer from the
    // old frame ([RBP - 8]) and pushes the new one, so the old RBP must point at a
    // readable frame: it points at a local slot holding a marker.
    unsafe {
        core::arch::asm!(
            "push rbp",
            "sub rsp, 16",
            "mov qword ptr [rsp], 0x5555",
            "lea rbp, [rsp + 8]",
            "mov {rsp1}, rsp",
            "enter 16, 2",
            "mov {rbp_e2}, rbp",
            "mov {rsp_e2}, rsp",
            "mov {copy1}, [rbp - 8]",
            "mov {copy2}, [rbp - 16]",
            "leave",
            "add rsp, 16",
            "pop rbp",
            rsp1 = out(reg) rsp1, rbp_e2 = out(reg) rbp_e2, rsp_e2 = out(reg) rsp_e2, copy1 = out(reg) copy1,
            copy2 = out(reg) copy2,
        )
    };
    // push RBP (8), frame_temp = RSP; level 2: push [RBP - 8] (copied), push frame_temp;
    // RBP = frame_temp; RSP -= 16.
    check_eq!(rbp_e2, rsp1 - 8, "RBP after ENTER 16, 2");
    check_eq!(copy1, 0x5555, "the frame pointer ENTER 16, 2 copied from [old RBP - 8]");
    check_eq!(copy2, rbp_e2, "the frame pointer ENTER 16, 2 pushed last (its own frame)");
    check_eq!(rsp_e2, rbp_e2 - 16 - 16, "RSP after ENTER 16, 2");
}

test_case! {
    /// ENTER and LEAVE at CPL0.
    name = "cpu::enter_leave::long64", mode = Long64, path = Full;
    fn enter_leave() {
        enter_leave_check();
    }
}

test_case! {
    /// ENTER and LEAVE at CPL3.
    name = "cpu::enter_leave::user64", mode = User64, path = Full;
    entry = enter_leave
}

test_case! {
    /// A far RET (REX.W RETF) to the same privilege level pops RIP and CS and goes on
    /// there (SDM Vol. 2B RET, "Operation" for 64-bit mode, same privilege level).
    name = "cpu::far_ret::long64", mode = Long64, path = Full;
    fn far_ret() {
        let landed: u64;
        let e = catch!(
            "xor {l}, {l}",
            "lea {t}, [rip + 2f]",
            "push {cs}",
            "push {t}",
            "retfq",
            "ud2",
            "2:",
            "mov {l}, 1",
            l = out(reg) landed, t = out(reg) _, cs = in(reg) u64::from(selector::CODE64)
        );
        check_no_exception!(e);
        check_eq!(landed, 1, "the far RET did not land at its target");
        check_eq!(cpu::read_cs(), selector::CODE64, "CS after the far RET");
    }
}

test_case! {
    /// IRETQ to CPL0 in 64-bit mode may load a null SS (SDM Vol. 2A IRET, 64-bit mode:
    /// a null SS is allowed when returning to CPL < 3). The case puts SS back.
    name = "cpu::iretq_null_ss::long64", mode = Long64, path = Full;
    fn iretq_null_ss() {
        let ss_seen: u64;
        let e = catch!(
            "mov {r}, rsp",
            "push 0",
            "push {r}",
            "pushfq",
            "push {cs}",
            "lea {r}, [rip + 2f]",
            "push {r}",
            "iretq",
            "2:",
            "mov {s:x}, ss",
            "mov {r:x}, {data:x}",
            "mov ss, {r:x}",
            r = out(reg) _, s = out(reg) ss_seen, cs = in(reg) u64::from(selector::CODE64),
            data = in(reg) u64::from(selector::DATA)
        );
        check_no_exception!(e);
        check_eq!(ss_seen & 0xffff, 0, "SS after IRETQ with a null SS to CPL0");
        let ss: u16;
        // SAFETY: reads SS.
        unsafe { core::arch::asm!("mov {0:x}, ss", out(reg) ss, options(nomem, nostack)) };
        check_eq!(ss, selector::DATA, "SS put back");
    }
}

test_case! {
    /// IRETQ to CPL3 with a null SS raises #GP(0) (SDM Vol. 2A IRET, 64-bit mode: returning
    /// to CPL3 needs a valid SS; "#GP(0) If ... the return SS selector is NULL and the
    /// return is to CPL3").
    name = "cpu::iretq_null_ss_cpl3_gp::long64", mode = Long64, path = Full;
    fn iretq_null_ss_cpl3_gp() {
        let e = catch!(
            "mov {r}, rsp",
            "push 0",
            "push {r}",
            "pushfq",
            "push {cs}",
            "lea {r}, [rip + 2f]",
            "push {r}",
            "iretq",
            "2:",
            "ud2",
            r = out(reg) _, cs = in(reg) u64::from(selector::USER_CODE64)
        );
        check!(e.is_some(), "IRETQ to CPL3 with a null SS raised nothing");
        check_exception!(e, exception::GP, Some(0));
    }
}

/// FNINIT, unmask the x87 zero-divide (FCW 0x37b), 1.0 / 0.0, then FWAIT: the pending
/// exception is reported at the FWAIT as #MF with CR0.NE set (SDM Vol. 1 8.7 and 8.6;
/// Vol. 3A 6.15 Interrupt 16). Cleans up with FNCLEX and FNINIT after.
fn x87_mf() -> Option<hvprobe_rt::Exception> {
    static FCW: u16 = 0x037b;
    let e = catch!("fninit", "fldcw word ptr [{0}]", "fld1", "fldz", "fdivp", "fwait", in(reg) &FCW);
    // SAFETY: clears the pending exception and the stack the sequence left.
    unsafe { core::arch::asm!("fnclex", "fninit", options(nostack, nomem)) };
    e
}

fn x87_mf_check() {
    // CR0 is readable at CPL0 only; the harness sets NE for every case.
    if cpu::read_cs() & 3 == 0 {
        check!(cpu::read_cr0() & 1 << 5 != 0, "CR0.NE is clear");
    }
    let e = x87_mf();
    check!(e.is_some(), "FWAIT after an unmasked x87 divide by zero raised nothing");
    check_exception!(e, MF, None);
}

test_case! {
    /// x87 #MF at CPL0.
    name = "cpu::x87_mf::long64", mode = Long64, path = Full;
    fn x87_mf_case() {
        x87_mf_check();
    }
}

test_case! {
    /// x87 #MF at CPL3.
    name = "cpu::x87_mf::user64", mode = User64, path = Full;
    entry = x87_mf_case
}

/// PADDW, PMULLW and PSHUFW on MMX registers, then EMMS (SDM Vol. 2 for each; Vol. 1
/// 9.5: MMX registers alias the x87 stack, EMMS empties it).
fn mmx_check() {
    static A: u64 = 0x0004_0003_0002_0001;
    static B: u64 = 0x7fff_0010_fff0_0100;
    let mut out = [0u64; 3];
    let e = catch!(
        "movq mm0, [{a}]",
        "movq mm1, [{b}]",
        "movq mm2, mm0", "paddw mm2, mm1", "movq [{o}], mm2",
        "movq mm2, mm0", "pmullw mm2, mm1", "movq [{o} + 8], mm2",
        "pshufw mm2, mm0, 0x1b", "movq [{o} + 16], mm2",
        "emms",
        a = in(reg) &A, b = in(reg) &B, o = in(reg) out.as_mut_ptr()
    );
    check_no_exception!(e);
    let [sum, prod, shuf] = out;
    let lanes = |v: u64| [v as u16, (v >> 16) as u16, (v >> 32) as u16, (v >> 48) as u16];
    let (a, b) = (lanes(A), lanes(B));
    for i in 0..4 {
        check_eq!(lanes(sum)[i], a[i].wrapping_add(b[i]), "PADDW lane {}", i);
        check_eq!(lanes(prod)[i], a[i].wrapping_mul(b[i]), "PMULLW lane {}", i);
        check_eq!(lanes(shuf)[i], a[3 - i], "PSHUFW 0x1b lane {}", i);
    }
}

test_case! {
    /// MMX arithmetic at CPL0.
    name = "cpu::mmx_arith::long64", mode = Long64, path = Full;
    fn mmx_arith() {
        mmx_check();
    }
}

test_case! {
    /// MMX arithmetic at CPL3.
    name = "cpu::mmx_arith::user64", mode = User64, path = Full;
    entry = mmx_arith
}

test_case! {
    /// An MMX instruction with CR0.TS set raises #NM, and with CR0.EM set #UD (SDM Vol. 2
    /// PADDW, "Numeric Exceptions" table for MMX: #UD if CR0.EM = 1, #NM if CR0.TS = 1).
    name = "cpu::mmx_cr0_faults::long64", mode = Long64, path = Full;
    fn mmx_cr0_faults() {
        let ts = with_cr0(CR0_TS, || catch!("paddw mm0, mm0"));
        let em = with_cr0(CR0_EM, || catch!("paddw mm0, mm0"));
        // SAFETY: empties the x87 tag word a PADDW that ran would have set.
        unsafe { core::arch::asm!("emms", options(nostack, nomem)) };
        check!(ts.is_some(), "PADDW with CR0.TS set raised nothing");
        check_exception!(ts, exception::NM, None);
        check!(em.is_some(), "PADDW with CR0.EM set raised nothing");
        check_exception!(em, exception::UD, None);
    }
}

/// An unmasked x87 exception left pending (no FWAIT), then an MMX instruction: it
/// reports the pending exception as #MF (SDM Vol. 1 9.5.2 and Vol. 2 PADDW: "#MF If
/// there is a pending FPU exception").
fn mmx_pending_mf_check() {
    static FCW: u16 = 0x037b;
    let e = catch!("fninit", "fldcw word ptr [{0}]", "fld1", "fldz", "fdivp", "paddw mm0, mm0", in(reg) &FCW);
    // SAFETY: clears the pending exception and empties the x87/MMX state.
    unsafe { core::arch::asm!("fnclex", "fninit", "emms", options(nostack, nomem)) };
    check!(e.is_some(), "PADDW after an unmasked x87 divide by zero raised nothing");
    check_exception!(e, MF, None);
}

test_case! {
    /// A pending x87 exception reported at an MMX instruction, at CPL0.
    name = "cpu::mmx_pending_mf::long64", mode = Long64, path = Full;
    fn mmx_pending_mf() {
        mmx_pending_mf_check();
    }
}

test_case! {
    /// A pending x87 exception reported at an MMX instruction, at CPL3.
    name = "cpu::mmx_pending_mf::user64", mode = User64, path = Full;
    entry = mmx_pending_mf
}

fn read_ss() -> u16 {
    let ss: u16;
    // SAFETY: reads SS.
    unsafe { core::arch::asm!("mov {0:x}, ss", out(reg) ss, options(nomem, nostack)) };
    ss
}

test_case! {
    /// MOV SS of the CPL0 data selector with RPL 3 at CPL0 in 64-bit mode raises
    /// #GP(selector): SS's RPL must equal CPL (SDM Vol. 2B MOV, "64-Bit Mode Exceptions").
    name = "cpu::mov_ss_rpl::long64", mode = Long64, path = Full;
    fn mov_ss_rpl() {
        let e = catch!("mov ss, {s:x}", s = in(reg) u64::from(selector::DATA | 3));
        check!(e.is_some(), "MOV SS of a selector with RPL 3 at CPL0 raised no exception");
        check_exception!(e, exception::GP, Some(u64::from(selector::DATA)));
        check_eq!(read_ss(), selector::DATA, "SS after the refused load");
    }
}

test_case! {
    /// In 64-bit mode at CPL0 MOV SS may load a null selector whose RPL is 0 (SDM Vol. 2B
    /// MOV: "#GP(0) if ... null segment selector ... in SS ... and CPL = 3 or RPL != CPL";
    /// APM Vol. 2 4.12.2); the stack still works and SS goes back after.
    name = "cpu::mov_ss_null::long64", mode = Long64, path = Full;
    fn mov_ss_null() {
        let ss_seen: u64;
        let e = catch!(
            "xor {r:e}, {r:e}",
            "mov ss, {r:x}",
            "push {r}",
            "pop {r}",
            "mov {s:x}, ss",
            "mov {r:x}, {data:x}",
            "mov ss, {r:x}",
            r = out(reg) _, s = out(reg) ss_seen, data = in(reg) u64::from(selector::DATA)
        );
        check_no_exception!(e);
        check_eq!(ss_seen & 0xffff, 0, "SS after MOV SS of the null selector");
        check_eq!(read_ss(), selector::DATA, "SS put back");
    }
}
