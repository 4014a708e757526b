//! The `cpu` area, continued: what CPL3 may and may not do, one instruction family per
//! case. On kvm_pvm the `user64` cases run natively, the `long64` ones through KVM's
//! instruction emulator, and the long64 cases that call into CPL3 compare the two.

use hvprobe_rt::abi;
use hvprobe_rt::cpu;
use hvprobe_rt::exception::{self, Exception, armed_rip};
use hvprobe_rt::user::{call_at_cpl3, call_at_cpl3_with_rflags};
use hvprobe_rt::{catch, check, check_eq, check_exception, check_no_exception, skip, test_case};

/// (vector, error code) of a caught exception, for comparing several at once.
fn fault(e: Option<Exception>) -> Option<(u8, Option<u64>)> {
    e.map(|e| (e.vector, e.error_code))
}

const GP0: Option<(u8, Option<u64>)> = Some((exception::GP, Some(0)));

test_case! {
    /// MOV to or from a control register at CPL3 raises #GP(0): CR0, CR2, CR3, CR4 and CR8
    /// are read, CR3 is written (SDM Vol. 2B, MOV to/from Control Registers, "#GP(0) if
    /// the current privilege level is not 0").
    name = "cpu::mov_cr_gp::user64", mode = User64, path = Hw;
    fn mov_cr_gp() {
        check_eq!(fault(catch!("mov {0}, cr0", out(reg) _)), GP0, "MOV from CR0");
        check_eq!(fault(catch!("mov {0}, cr2", out(reg) _)), GP0, "MOV from CR2");
        check_eq!(fault(catch!("mov {0}, cr3", out(reg) _)), GP0, "MOV from CR3");
        check_eq!(fault(catch!("mov {0}, cr4", out(reg) _)), GP0, "MOV from CR4");
        check_eq!(fault(catch!("mov {0}, cr8", out(reg) _)), GP0, "MOV from CR8");
        check_eq!(fault(catch!("mov cr3, {0}", in(reg) abi::layout::PML4)), GP0, "MOV to CR3");
    }
}

test_case! {
    /// MOV to or from a debug register at CPL3 raises #GP(0): DR6 and DR7 are read, DR0 is
    /// written (SDM Vol. 2B, MOV to/from Debug Registers, "#GP(0) if the current privilege
    /// level is not 0").
    name = "cpu::mov_dr_gp::user64", mode = User64, path = Hw;
    fn mov_dr_gp() {
        check_eq!(fault(catch!("mov {0}, dr6", out(reg) _)), GP0, "MOV from DR6");
        check_eq!(fault(catch!("mov {0}, dr7", out(reg) _)), GP0, "MOV from DR7");
        check_eq!(fault(catch!("mov dr0, {0}", in(reg) 0x1000u64)), GP0, "MOV to DR0");
    }
}

test_case! {
    /// LIDT, LLDT and LTR at CPL3 raise #GP(0) (SDM Vol. 2A LIDT, LLDT, LTR: "#GP(0) if
    /// the current privilege level is not 0").
    name = "cpu::table_loads_gp::user64", mode = User64, path = Hw;
    fn table_loads_gp() {
        check_eq!(fault(catch!("lidt [{0}]", in(reg) abi::layout::IDT)), GP0, "LIDT");
        check_eq!(fault(catch!("lldt {0:x}", in(reg) 0u16)), GP0, "LLDT");
        check_eq!(fault(catch!("ltr {0:x}", in(reg) abi::selector::TSS)), GP0, "LTR");
    }
}

test_case! {
    /// INVD, WBINVD and INVLPG at CPL3 raise #GP(0) (SDM Vol. 2A INVD, INVLPG; Vol. 2D
    /// WBINVD: "#GP(0) if the current privilege level is not 0").
    name = "cpu::cache_tlb_gp::user64", mode = User64, path = Hw;
    fn cache_tlb_gp() {
        check_eq!(fault(catch!("invd")), GP0, "INVD");
        check_eq!(fault(catch!("wbinvd")), GP0, "WBINVD");
        check_eq!(fault(catch!("invlpg [{0}]", in(reg) abi::layout::IMAGE_START)), GP0, "INVLPG");
    }
}

test_case! {
    /// RDMSR, SWAPGS and CLTS at CPL3 raise #GP(0) (SDM Vol. 2B RDMSR, SWAPGS; Vol. 2A
    /// CLTS: "#GP(0) if the current privilege level is not 0").
    name = "cpu::rdmsr_swapgs_clts_gp::user64", mode = User64, path = Hw;
    fn rdmsr_swapgs_clts_gp() {
        check_eq!(fault(catch!("rdmsr", in("ecx") x86::msr::IA32_EFER, out("eax") _, out("edx") _)), GP0, "RDMSR");
        check_eq!(fault(catch!("swapgs")), GP0, "SWAPGS");
        check_eq!(fault(catch!("clts")), GP0, "CLTS");
    }
}

test_case! {
    /// With CR4.PCE clear (as the harness leaves it), RDPMC at CPL3 raises #GP(0) whatever
    /// the counter (SDM Vol. 2B, RDPMC: "#GP(0) if the current privilege level is not 0
    /// and the PCE flag in the CR4 register is clear").
    name = "cpu::rdpmc_pce_gp::user64", mode = User64, path = Hw;
    fn rdpmc_pce_gp() {
        check_eq!(fault(catch!("rdpmc", in("ecx") 0u32, out("eax") _, out("edx") _)), GP0, "RDPMC counter 0");
    }
}

extern "C" fn rdtsc_at_cpl3(_: u64) {
    // SAFETY: RDTSC only reads the counter; with CR4.TSD it may fault, which is the test.
    unsafe { core::arch::asm!("rdtsc", out("eax") _, out("edx") _) };
}

extern "C" fn rdtscp_at_cpl3(_: u64) {
    // SAFETY: RDTSCP only reads the counter and TSC_AUX; it may fault, which is the test.
    unsafe { core::arch::asm!("rdtscp", out("eax") _, out("ecx") _, out("edx") _) };
}

test_case! {
    /// With CR4.TSD set, RDTSC and RDTSCP still run at CPL0 but raise #GP(0) at CPL3
    /// (SDM Vol. 2B, RDTSC and RDTSCP: "#GP(0) if the TSD flag in register CR4 is set and
    /// the CPL is greater than 0").
    name = "cpu::rdtsc_tsd::long64", mode = Long64, path = Hw;
    fn rdtsc_tsd() {
        let rdtscp = cpu::cpuid(0x8000_0001, 0).edx & (1 << 27) != 0;
        let cr4 = cpu::read_cr4();
        // SAFETY: CR4.TSD (bit 2) only restricts RDTSC to CPL0; restored below.
        unsafe { core::arch::asm!("mov cr4, {0}", in(reg) cr4 | 1 << 2) };
        let at_cpl0 = catch!("rdtsc", out("eax") _, out("edx") _);
        let at_cpl3 = call_at_cpl3(rdtsc_at_cpl3, 0);
        let rdtscp_at_cpl3 = if rdtscp { call_at_cpl3(rdtscp_at_cpl3, 0) } else { None };
        // SAFETY: restores CR4.
        unsafe { core::arch::asm!("mov cr4, {0}", in(reg) cr4) };
        check_no_exception!(at_cpl0);
        check!(at_cpl3.is_some(), "RDTSC at CPL3 with CR4.TSD raised nothing");
        check_exception!(at_cpl3, exception::GP, Some(0));
        if rdtscp {
            check!(rdtscp_at_cpl3.is_some(), "RDTSCP at CPL3 with CR4.TSD raised nothing");
            check_exception!(rdtscp_at_cpl3, exception::GP, Some(0));
        }
        check_eq!(call_at_cpl3(rdtsc_at_cpl3, 0), None, "RDTSC at CPL3 with CR4.TSD clear");
    }
}

extern "C" fn cli_at_cpl3(_: u64) {
    // SAFETY: CLI only clears IF, and the return to CPL0 sets RFLAGS anew.
    unsafe { core::arch::asm!("cli") };
}

extern "C" fn sti_at_cpl3(_: u64) {
    // SAFETY: no interrupt source is armed, so IF=1 at CPL3 delivers nothing.
    unsafe { core::arch::asm!("sti") };
}

test_case! {
    /// CLI and STI at CPL3 raise #GP(0) when IOPL is 0 (and CR4.PVI is clear), and run when
    /// IOPL is 3 (SDM Vol. 2A CLI and Vol. 2B STI, "Operation" and "#GP(0) if the CPL is
    /// greater than the IOPL").
    name = "cpu::cli_sti_iopl::long64", mode = Long64, path = Hw;
    fn cli_sti_iopl() {
        let cli = call_at_cpl3_with_rflags(cli_at_cpl3, 0, 0x2);
        check!(cli.is_some(), "CLI at CPL3 with IOPL 0 raised nothing");
        check_exception!(cli, exception::GP, Some(0));
        let sti = call_at_cpl3_with_rflags(sti_at_cpl3, 0, 0x2);
        check!(sti.is_some(), "STI at CPL3 with IOPL 0 raised nothing");
        check_exception!(sti, exception::GP, Some(0));
        check_eq!(call_at_cpl3_with_rflags(cli_at_cpl3, 0, 0x3002), None, "CLI at CPL3 with IOPL 3");
        check_eq!(call_at_cpl3_with_rflags(sti_at_cpl3, 0, 0x3002), None, "STI at CPL3 with IOPL 3");
    }
}

test_case! {
    /// At CPL3, MOV SS with a null selector raises #GP(0), and with a selector whose RPL
    /// differs from CPL raises #GP(selector) (SDM Vol. 2A MOV, 64-bit mode exceptions,
    /// and Vol. 3A 5.7: SS takes only a writable data segment with RPL = DPL = CPL).
    name = "cpu::ss_load_gp::user64", mode = User64, path = Hw;
    fn ss_load_gp() {
        let e = catch!("mov {1:x}, ss", "mov ss, {0:x}", "mov ss, {1:x}", in(reg) 0u16, out(reg) _);
        check_exception!(e, exception::GP, Some(0));
        let rpl0 = abi::selector::USER_DATA & !3;
        let e = catch!("mov {1:x}, ss", "mov ss, {0:x}", "mov ss, {1:x}", in(reg) rpl0, out(reg) _);
        check_exception!(e, exception::GP, Some(rpl0 as u64));
    }
}

test_case! {
    /// From CPL3, LAR, LSL, VERR and VERW see the user descriptors and not the kernel's:
    /// LAR of the user code segment gives its access rights, LAR and VERR of the CPL0 code
    /// segment clear ZF, LSL of the user data segment gives the flat limit, VERW of it sets
    /// ZF (SDM Vol. 2A LAR, LSL and Vol. 2B VERR/VERW: "DPL < CPL ... ZF is cleared").
    name = "cpu::lar_lsl_verr_verw::user64", mode = User64, path = Hw;
    fn lar_lsl_verr_verw_user() {
        let (user_rights, kernel_zf, limit, user_w, kernel_r): (u64, u8, u64, u8, u8);
        // SAFETY: these instructions only read descriptors and set ZF.
        unsafe {
            core::arch::asm!("lar {0}, {1:r}", out(reg) user_rights, in(reg) abi::selector::USER_CODE64 as u64);
            core::arch::asm!("lar {1}, {2:r}", "setz {0}", out(reg_byte) kernel_zf, out(reg) _,
                             in(reg) abi::selector::CODE64 as u64);
            core::arch::asm!("lsl {0}, {1:r}", out(reg) limit, in(reg) abi::selector::USER_DATA as u64);
            core::arch::asm!("verw {1:x}", "setz {0}", out(reg_byte) user_w, in(reg) abi::selector::USER_DATA);
            core::arch::asm!("verr {1:x}", "setz {0}", out(reg_byte) kernel_r, in(reg) abi::selector::CODE64);
        }
        check_eq!(user_rights & 0x00ff_ff00, 0x00a0_fb00, "LAR of the user code segment: P, DPL 3, code, L, G");
        check_eq!(kernel_zf, 0, "LAR of the CPL0 code segment from CPL3 must clear ZF");
        check_eq!(limit, 0xffff_ffff, "LSL of the user data segment");
        check_eq!(user_w, 1, "VERW of the user data segment");
        check_eq!(kernel_r, 0, "VERR of the CPL0 code segment from CPL3");
    }
}

/// A vector whose gate has DPL 0 and that nothing raises (the harness makes every gate but
/// #BP, #OF and USER_INT_VECTOR DPL 0).
const DPL0_VECTOR: u8 = 0x30;

test_case! {
    /// INT n at CPL3 through a gate with DPL 0 raises #GP with the IDT error code: the
    /// vector times 8, plus IDT[1] (SDM Vol. 2A INT n, "#GP(error_code) if ... DPL of the
    /// gate is less than the CPL", and Vol. 3A 6.13).
    name = "cpu::int_n_dpl0_gate_gp::user64", mode = User64, path = Hw;
    fn int_n_dpl0_gate_gp() {
        let e = catch!("int {v}", v = const DPL0_VECTOR);
        check!(e.is_some(), "INT {:#x} through a DPL0 gate at CPL3 raised nothing", DPL0_VECTOR);
        let e = check_exception!(e, exception::GP, Some(DPL0_VECTOR as u64 * 8 + 2));
        check_eq!(e.rip, armed_rip(), "#GP is a fault: RIP is the INT");
    }
}

test_case! {
    /// RSM outside system-management mode raises #UD (SDM Vol. 2B, RSM: "#UD if an attempt
    /// is made to execute this instruction when the processor is not in SMM").
    name = "cpu::exc_ud_rsm::long64", mode = Long64, path = Hw;
    fn exc_ud_rsm() {
        let e = check_exception!(catch!("rsm"), exception::UD, None);
        check_eq!(e.rip, armed_rip());
    }
}

test_case! {
    /// RSM at CPL3 raises #UD too.
    name = "cpu::exc_ud_rsm::user64", mode = User64, path = Hw;
    entry = exc_ud_rsm
}

test_case! {
    /// INT1 (ICEBP, opcode F1) raises #DB as a trap: no error code, the saved RIP follows
    /// it; at CPL3 the #DB gate's DPL is not checked (SDM Vol. 2A INT n/INT1, and Vol. 3A
    /// 6.12.1.1).
    name = "cpu::exc_db_icebp::long64", mode = Long64, path = Hw;
    fn exc_db_icebp() {
        let e = check_exception!(catch!(".byte 0xf1"), exception::DB, None);
        check_eq!(e.rip, armed_rip() + 1, "#DB from INT1 is a trap: RIP follows the F1");
    }
}

test_case! {
    /// INT1 at CPL3 raises #DB through the DPL0 gate.
    name = "cpu::exc_db_icebp::user64", mode = User64, path = Hw;
    entry = exc_db_icebp
}

test_case! {
    /// CMPXCHG16B with a memory operand not aligned to 16 bytes raises #GP(0), an aligned
    /// one exchanges (SDM Vol. 2A CMPXCHG8B/CMPXCHG16B), where CPUID.1:ECX.CX16[13] is set.
    name = "cpu::cmpxchg16b_alignment::long64", mode = Long64, path = Hw;
    fn cmpxchg16b_alignment() {
        if cpu::cpuid(1, 0).ecx & (1 << 13) == 0 {
            skip!("CPUID.1:ECX.CX16[13] is clear");
        }
        #[repr(C, align(16))]
        struct Pair([u64; 4]);
        let mut mem = Pair([1, 2, 0, 0]);
        let base = mem.0.as_mut_ptr() as u64;
        // RBX is reserved by LLVM: the new low half is swapped in and out around the op.
        // The operand is pinned to RDI so the instruction's bytes stay the same across builds.
        let aligned = catch!("xchg {b}, rbx", "lock cmpxchg16b [rdi]", "xchg {b}, rbx", in("rdi") base,
                             b = inout(reg) 3u64 => _, inout("rax") 1u64 => _, inout("rdx") 2u64 => _, in("rcx") 4u64);
        check_no_exception!(aligned);
        check_eq!((mem.0[0], mem.0[1]), (3, 4), "the aligned CMPXCHG16B stored RCX:RBX");
        let e = catch!("xchg {b}, rbx", "lock cmpxchg16b [rdi]", "xchg {b}, rbx", in("rdi") base + 8,
                       b = inout(reg) 5u64 => _, inout("rax") 4u64 => _, inout("rdx") 0u64 => _, in("rcx") 6u64);
        check!(e.is_some(), "a misaligned CMPXCHG16B raised nothing; memory {:x?}", mem.0);
        check_exception!(e, exception::GP, Some(0));
        check_eq!((mem.0[1], mem.0[2]), (4, 0), "the faulting CMPXCHG16B stored nothing");
    }
}

test_case! {
    /// CMPXCHG16B alignment at CPL3.
    name = "cpu::cmpxchg16b_alignment::user64", mode = User64, path = Hw;
    entry = cmpxchg16b_alignment
}

test_case! {
    /// With CR4.OSFXSR clear (as the harness leaves it), an SSE instruction raises #UD
    /// (SDM Vol. 3A 2.5, CR4.OSFXSR, and Vol. 2B MOVAPS, "#UD if CR4.OSFXSR[bit 9] = 0").
    name = "cpu::exc_ud_sse_no_osfxsr::long64", mode = Long64, path = Hw;
    fn exc_ud_sse_no_osfxsr() {
        #[repr(C, align(16))]
        struct Xmm([u8; 16]);
        let src = Xmm([0; 16]);
        // XMM0 is not declared clobbered (this target has no SSE registers): the
        // instruction must fault, and if it does not, nothing here uses XMM0.
        let e = catch!("movaps xmm0, [{0}]", in(reg) src.0.as_ptr());
        check!(e.is_some(), "MOVAPS with CR4.OSFXSR clear raised nothing");
        let e = check_exception!(e, exception::UD, None);
        check_eq!(e.rip, armed_rip());
    }
}

test_case! {
    /// SSE without CR4.OSFXSR raises #UD at CPL3 too.
    name = "cpu::exc_ud_sse_no_osfxsr::user64", mode = User64, path = Hw;
    entry = exc_ud_sse_no_osfxsr
}

test_case! {
    /// RFLAGS.AC alone does not check alignment: with CR0.AM clear (as the harness leaves
    /// it) a misaligned load at CPL3 runs (SDM Vol. 3A 6.15, Interrupt 17: checking needs
    /// CR0.AM, RFLAGS.AC and CPL 3 together).
    name = "cpu::exc_ac_am_clear::user64", mode = User64, path = Hw;
    fn exc_ac_am_clear() {
        let word = [0u64; 2];
        let misaligned = word.as_ptr() as u64 + 1;
        let e = catch!("pushfq", "or dword ptr [rsp], 0x40000", "popfq", "mov {0}, [{0}]", inout(reg) misaligned => _);
        // AC is cleared after the sequence, so that an #AC it raised does not leave AC set.
        // SAFETY: clears RFLAGS.AC only.
        unsafe { core::arch::asm!("pushfq", "and dword ptr [rsp], 0xfffbffff", "popfq") };
        check_eq!(e, None, "a misaligned load with AC set but CR0.AM clear");
    }
}

/// Stores 1 with RFLAGS.AC set, one byte past a 16-byte aligned address: the argument
/// is that address ORed with the store's width (2, 4 or 8).
extern "C" fn misaligned_store_at_cpl3(addr_width: u64) {
    let (addr, width) = (addr_width & !0xf, addr_width & 0xf);
    let addr = addr + 1;
    // SAFETY: sets RFLAGS.AC and stores into the caller's buffer; the store may fault,
    // which is the test.
    unsafe {
        match width {
            2 => {
                core::arch::asm!("pushfq", "or dword ptr [rsp], 0x40000", "popfq", "mov word ptr [{0}], 1", in(reg) addr)
            }
            4 => {
                core::arch::asm!("pushfq", "or dword ptr [rsp], 0x40000", "popfq", "mov dword ptr [{0}], 1", in(reg) addr)
            }
            _ => {
                core::arch::asm!("pushfq", "or dword ptr [rsp], 0x40000", "popfq", "mov qword ptr [{0}], 1", in(reg) addr)
            }
        }
    }
}

test_case! {
    /// With CR0.AM and RFLAGS.AC set, misaligned stores of 2, 4 and 8 bytes at CPL3 each
    /// raise #AC(0) and store nothing (SDM Vol. 3A 6.15, Interrupt 17, Table 6-7).
    name = "cpu::exc_ac_store_widths::long64", mode = Long64, path = Hw;
    fn exc_ac_store_widths() {
        #[repr(C, align(16))]
        struct Buf([u8; 16]);
        let buf = Buf([0; 16]);
        let base = buf.0.as_ptr() as u64;
        let cr0 = cpu::read_cr0();
        // SAFETY: CR0.AM (bit 18) only enables alignment checks at CPL3; restored below.
        unsafe { cpu::write_cr0(cr0 | 1 << 18) };
        let faults = [2u64, 4, 8].map(|width| (width, call_at_cpl3(misaligned_store_at_cpl3, base | width)));
        // SAFETY: restores CR0.
        unsafe { cpu::write_cr0(cr0) };
        for (width, e) in faults {
            check!(e.is_some(), "a misaligned {}-byte store at CPL3 with AM and AC raised nothing", width);
            check_exception!(e, exception::AC, Some(0));
        }
        // SAFETY: reads the buffer the CPL3 stores targeted.
        let bytes = unsafe { core::ptr::read_volatile(&buf.0) };
        check_eq!(bytes, [0u8; 16], "the faulting stores wrote nothing");
    }
}
