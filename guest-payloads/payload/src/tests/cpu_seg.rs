//! The `cpu` area, continued: segments, gates and the task register in 64-bit mode. Far
//! JMP, CALL and RET between code segments and through call gates (with the stack switch
//! of a privilege change), compatibility mode, IRETQ's checks, LTR/STR, LLDT, and the
//! #TS, #NP and #SS that descriptors raise (SDM Vol. 3A, chapters 3, 5, 6 and 7).
//!
//! A case that needs descriptors of its own runs with a copy of the harness's GDT followed
//! by them (`with_gdt`), from selector 0x40 on.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use hvprobe_rt::abi::{layout, selector};
use hvprobe_rt::exception::{self, Frame};
use hvprobe_rt::user::call_at_cpl3;
use hvprobe_rt::{catch, check, check_eq, check_exception, check_no_exception, test_case};

/// The first selector after the harness's descriptors.
const EXTRA: u16 = selector::GDT_ENTRIES as u16 * 8;

/// Descriptor bits (SDM Vol. 3A 3.4.5, Figure 3-8).
const PRESENT: u64 = 1 << 47;
const fn dpl(level: u64) -> u64 {
    level << 45
}
/// The harness's 64-bit code and flat data descriptors, at DPL 0.
const CODE64: u64 = 0x00af_9b00_0000_ffff;
const DATA: u64 = 0x00cf_9300_0000_ffff;

/// A 64-bit call gate (type 0xC) to `target` in the 64-bit code segment: 16 bytes, two
/// GDT slots (SDM Vol. 3A 5.8.3.1, Figure 5-9).
fn call_gate64(target: u64, gate_dpl: u64) -> [u64; 2] {
    let low = (target & 0xffff)
        | (selector::CODE64 as u64) << 16
        | 0xc << 40
        | dpl(gate_dpl)
        | PRESENT
        | ((target >> 16) & 0xffff) << 48;
    [low, target >> 32]
}

/// An available 64-bit TSS descriptor (type 9) for the harness's TSS with the given
/// limit: 16 bytes, two GDT slots (SDM Vol. 3A 9.2.3, Figure 9-4).
fn tss64(limit: u64) -> [u64; 2] {
    let base = layout::TSS;
    let low = (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | 0x89 << 40
        | ((limit >> 16) & 0xf) << 48
        | ((base >> 24) & 0xff) << 56;
    [low, base >> 32]
}

/// The GDT `with_gdt` loads: the harness's 8 descriptors, then up to 8 of the case's.
#[repr(C, align(16))]
struct Table([u64; 16]);
static mut TABLE: Table = Table([0; 16]);

type TableRegister = x86::dtables::DescriptorTablePointer<u64>;

/// Runs `body` with a GDT that holds the harness's descriptors followed by `extra` (the
/// first at selector 0x40), then reloads the harness's GDT.
fn with_gdt<R>(extra: &[u64], body: impl FnOnce() -> R) -> R {
    let table = &raw mut TABLE;
    let count = selector::GDT_ENTRIES + extra.len();
    check!(count <= 16, "{} descriptors do not fit the table", count);
    // SAFETY: TABLE is only used here, by one vCPU; the harness's GDT is identity-mapped RAM.
    unsafe {
        let slots = (*table).0.as_mut_ptr();
        core::ptr::copy_nonoverlapping(layout::GDT as *const u64, slots, selector::GDT_ENTRIES);
        core::ptr::copy_nonoverlapping(extra.as_ptr(), slots.add(selector::GDT_ENTRIES), extra.len());
    }
    let mut old = TableRegister::default();
    let new = TableRegister { limit: (8 * count - 1) as u16, base: table.cast() };
    // SAFETY: the new GDT starts with the harness's descriptors, so every selector in use
    // (CS, SS, the IDT's gates) stays valid; the old GDTR is restored below.
    unsafe {
        x86::dtables::sgdt(&mut old);
        x86::dtables::lgdt(&new);
    }
    let result = body();
    // SAFETY: restores the harness's GDTR.
    unsafe { x86::dtables::lgdt(&old) };
    result
}

/// Loads the harness's TSS into TR again after a case loaded another: its descriptor is
/// marked busy, which LTR refuses, so it is made available first (SDM Vol. 2A LTR).
fn reload_harness_tr() {
    let desc = (layout::GDT + selector::TSS as u64) as *mut u64;
    // SAFETY: the harness's TSS descriptor in identity-mapped RAM; type 0xB (busy) becomes
    // 9 (available), and LTR marks it busy again.
    unsafe {
        desc.write_volatile(desc.read_volatile() & !(1 << 41));
        core::arch::asm!("ltr {0:x}", in(reg) selector::TSS);
    }
}

fn str() -> u16 {
    let tr: u16;
    // SAFETY: STR only reads the task register.
    unsafe { core::arch::asm!("str {0:x}", out(reg) tr) };
    tr
}

/// A far pointer m16:32, as far JMP and CALL read it from memory (FF /5, FF /3 without
/// REX.W; the m16:64 form is Intel-only).
#[repr(C, packed)]
struct FarPtr {
    offset: u32,
    selector: u16,
}

/// What the far-transfer targets below saw: [0] the return RIP on the stack, [1] the CS
/// pushed, [2] and [3] the next two stack slots (the RSP and SS a privilege change pushes),
/// [4] RSP after the pushes, [5] CS and [6] SS at the target.
static SEEN: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

fn seen(i: usize) -> u64 {
    SEEN[i].load(SeqCst)
}

global_asm!(
    ".section .text, \"ax\"",
    // Reached by a far CALL with 32-bit operand size: EIP and CS were pushed as 4 bytes
    // each, and RETF (CB, operand size 32) pops them.
    "hv_seg_far32_target:",
    "push rax",
    "mov eax, dword ptr [rsp + 8]",
    "mov [rip + {seen}], rax",
    "movzx eax, word ptr [rsp + 12]",
    "mov [rip + {seen} + 8], rax",
    "pop rax",
    ".byte 0xcb",
    // Reached through a 64-bit call gate, which pushes 8-byte values: RIP and CS, and
    // before them SS and RSP when the privilege level changes. RETFQ pops them all.
    "hv_seg_gate_target:",
    "push rax",
    "mov rax, [rsp + 8]",
    "mov [rip + {seen}], rax",
    "mov rax, [rsp + 16]",
    "mov [rip + {seen} + 8], rax",
    "mov rax, [rsp + 24]",
    "mov [rip + {seen} + 16], rax",
    "mov rax, [rsp + 32]",
    "mov [rip + {seen} + 24], rax",
    "lea rax, [rsp + 8]",
    "mov [rip + {seen} + 32], rax",
    "xor eax, eax",
    "mov ax, cs",
    "mov [rip + {seen} + 40], rax",
    "mov ax, ss",
    "mov [rip + {seen} + 48], rax",
    "pop rax",
    ".byte 0x48, 0xcb",
    // Where a far transfer to a selector that must fault would land if it did not.
    "hv_seg_unreached:",
    "ud2",
    seen = sym SEEN,
);

unsafe extern "C" {
    fn hv_seg_far32_target();
    fn hv_seg_gate_target();
    fn hv_seg_unreached();
}

fn addr(f: unsafe extern "C" fn()) -> u64 {
    f as *const () as u64
}

test_case! {
    /// Far JMP and far CALL through m16:32 pointers to the 64-bit code segment: the JMP
    /// lands on its target, the CALL pushes EIP and CS as 4 bytes each and RETF returns
    /// through them (SDM Vol. 2A CALL and JMP, 64-bit mode, and Vol. 3A 5.8.2).
    name = "cpu::far_call_jmp::long64", mode = Long64, path = Hw;
    fn far_call_jmp() {
        let mut ptr = FarPtr { offset: 0, selector: selector::CODE64 };
        // The pointer is pinned to RAX: JMP FAR [RAX] is FF 28, CALL FAR [RAX] FF 18.
        let landed: u64;
        let e = catch!("lea rdx, [rip + 2f]", "mov dword ptr [rax], edx", ".byte 0xff, 0x28", "ud2", "2:",
                       "mov {0}, 1", out(reg) landed, in("rax") &raw mut ptr, out("rdx") _);
        check_no_exception!(e);
        check_eq!(landed, 1, "far JMP reached its target");
        ptr.offset = addr(hv_seg_far32_target) as u32;
        let ret: u64;
        let e = catch!("lea rdx, [rip + 2f]", ".byte 0xff, 0x18", "2:", in("rax") &raw const ptr, out("rdx") ret);
        check_no_exception!(e);
        check_eq!(seen(0), ret & 0xffff_ffff, "far CALL pushed the return EIP");
        check_eq!(seen(1), selector::CODE64 as u64, "far CALL pushed CS");
    }
}

test_case! {
    /// A far JMP to a code segment with L = 0 and D = 1 switches to compatibility mode,
    /// where 48 is DEC EAX (a REX prefix in 64-bit mode) and CS reads the new selector; a
    /// JMP ptr16:32, valid only outside 64-bit mode, returns to 64-bit code (SDM Vol. 3A
    /// 5.8.2 and 2.2, and Vol. 2A Appendix A: 40-4F are REX prefixes in 64-bit mode).
    name = "cpu::compat_mode::long64", mode = Long64, path = Hw;
    fn compat_mode() {
        let mut ptr = FarPtr { offset: 0, selector: selector::CODE32 };
        let (eax, cs): (u64, u64);
        let e = catch!(
            "lea rdx, [rip + 2f]",
            "mov dword ptr [rdi], edx",
            // JMP FAR [RDI], to the 32-bit code segment.
            ".byte 0xff, 0x2f",
            "ud2",
            "2:",
            // Compatibility mode: DEC EAX, NOP, MOV ECX, CS, then JMP ptr16:32 back.
            ".byte 0x48",
            "nop",
            ".byte 0x8c, 0xc9",
            ".byte 0xea",
            ".long 3f",
            ".word {code64}",
            "3:",
            code64 = const selector::CODE64,
            in("rdi") &raw mut ptr,
            inout("rax") 5u64 => eax,
            out("rcx") cs,
            out("rdx") _
        );
        check_no_exception!(e);
        check_eq!(eax as u32, 4, "48 was DEC EAX in compatibility mode");
        check_eq!(cs as u16, selector::CODE32, "CS in compatibility mode");
    }
}

/// The two slots a call gate takes, from selector 0x40.
const GATE: u16 = EXTRA;

test_case! {
    /// A far CALL through a 64-bit call gate of DPL 0 at CPL0 runs the gate's target in
    /// the gate's code segment and pushes CS and RIP as 8 bytes each, and RETFQ returns
    /// (SDM Vol. 3A 5.8.3.1 and 5.8.4, Vol. 2A CALL).
    name = "cpu::call_gate::long64", mode = Long64, path = Hw;
    fn call_gate() {
        let gate = call_gate64(addr(hv_seg_gate_target), 0);
        let ptr = FarPtr { offset: 0, selector: GATE };
        let (e, ret) = with_gdt(&gate, || {
            let ret: u64;
            let e = catch!("lea rdx, [rip + 2f]", ".byte 0xff, 0x18", "2:", in("rax") &raw const ptr, out("rdx") ret);
            (e, ret)
        });
        check_no_exception!(e);
        check_eq!(seen(0), ret, "the return RIP pushed");
        check_eq!(seen(1), selector::CODE64 as u64, "the caller's CS pushed");
        check_eq!(seen(5), selector::CODE64 as u64, "CS at the target is the gate's selector");
    }
}

/// What CPL3 saw around its gate call: [0] the return point, [1] RSP at the CALL, and
/// after the return [2] CS, [3] SS and [4] RSP.
static CPL3_SIDE: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

extern "C" fn gate_call_at_cpl3(gate: u64) {
    // SAFETY: a far CALL through the case's DPL3 gate, whose target returns with RETFQ
    // to the next instruction with RSP as it was; the pointer lives on this stack.
    unsafe {
        core::arch::asm!(
            "sub rsp, 16",
            "mov dword ptr [rsp], 0",
            "mov word ptr [rsp + 4], ax",
            "mov rax, rsp",
            "lea rdx, [rip + 2f]",
            "mov [rip + {side}], rdx",
            "mov [rip + {side} + 8], rsp",
            // CALL FAR [RAX]
            ".byte 0xff, 0x18",
            "2:",
            "mov ax, cs",
            "movzx eax, ax",
            "mov [rip + {side} + 16], rax",
            "mov ax, ss",
            "movzx eax, ax",
            "mov [rip + {side} + 24], rax",
            "mov [rip + {side} + 32], rsp",
            "add rsp, 16",
            side = sym CPL3_SIDE,
            inout("rax") gate => _,
            out("rdx") _,
        )
    };
}

test_case! {
    /// A far CALL from CPL3 through a 64-bit call gate of DPL 3 to CPL0 code switches to
    /// the TSS's RSP0 with a null SS and pushes the caller's SS, RSP, CS and RIP; RETFQ
    /// back to CPL3 pops all four (SDM Vol. 3A 5.8.5 and 5.8.6, 5.8.3.1; Vol. 2A CALL and
    /// RET, 64-bit mode).
    name = "cpu::call_gate_cpl3::long64", mode = Long64, path = Hw;
    fn call_gate_cpl3() {
        let gate = call_gate64(addr(hv_seg_gate_target), 3);
        let e = with_gdt(&gate, || call_at_cpl3(gate_call_at_cpl3, (GATE | 3) as u64));
        check_no_exception!(e);
        let side = |i: usize| CPL3_SIDE[i].load(SeqCst);
        check_eq!(seen(5), selector::CODE64 as u64, "CS at the target");
        check_eq!(seen(6), 0, "SS at the target is null (RPL 0)");
        check_eq!(seen(4), layout::RSP0_STACK_TOP - 32, "RSP at the target: RSP0 less four pushes");
        check_eq!(seen(0), side(0), "the return RIP pushed");
        check_eq!(seen(1), selector::USER_CODE64 as u64, "the caller's CS pushed");
        check_eq!(seen(2), side(1), "the caller's RSP pushed");
        check_eq!(seen(3), selector::USER_DATA as u64, "the caller's SS pushed");
        check_eq!((side(2), side(3)), (selector::USER_CODE64 as u64, selector::USER_DATA as u64), "CS, SS after RETFQ");
        check_eq!(side(4), side(1), "RSP after RETFQ");
    }
}

/// Descriptors for the faulting far transfers: 0x40 a 64-bit code segment that is not
/// present.
const NOT_PRESENT_CODE: u64 = CODE64 & !PRESENT;

/// Far JMP (`call` false) or CALL through [RAX] to `sel`, which must fault.
fn far_to(sel: u16, call: bool) -> Option<hvprobe_rt::Exception> {
    let ptr = FarPtr { offset: addr(hv_seg_unreached) as u32, selector: sel };
    if call {
        catch!(".byte 0xff, 0x18", in("rax") &raw const ptr)
    } else {
        catch!(".byte 0xff, 0x28", in("rax") &raw const ptr)
    }
}

/// The selectors a far JMP or CALL at CPL0 must refuse, and how (SDM Vol. 2A CALL and
/// JMP, "Protected Mode Exceptions").
fn check_far_refusals(call: bool) {
    let what = if call { "far CALL" } else { "far JMP" };
    let e = with_gdt(&[NOT_PRESENT_CODE], || {
        [far_to(0, call), far_to(selector::DATA, call), far_to(selector::USER_CODE64 & !3, call), far_to(EXTRA, call)]
    });
    let [null, data, dpl3, not_present] = e;
    check!(null.is_some(), "{} to the null selector raised nothing", what);
    check_exception!(null, exception::GP, Some(0));
    check!(data.is_some(), "{} to a data segment raised nothing", what);
    check_exception!(data, exception::GP, Some(selector::DATA as u64));
    check!(dpl3.is_some(), "{} to a DPL3 non-conforming code segment raised nothing", what);
    check_exception!(dpl3, exception::GP, Some((selector::USER_CODE64 & !3) as u64));
    check!(not_present.is_some(), "{} to a not-present code segment raised nothing", what);
    check_exception!(not_present, exception::NP, Some(EXTRA as u64));
}

test_case! {
    /// A far JMP at CPL0 raises #GP(0) for the null selector, #GP(selector) for a data
    /// segment and for a non-conforming code segment of DPL 3, and #NP(selector) for a
    /// not-present code segment (SDM Vol. 2A JMP, "Protected Mode Exceptions").
    name = "cpu::far_jmp_bad_selector::long64", mode = Long64, path = Hw;
    fn far_jmp_bad_selector() {
        check_far_refusals(false);
    }
}

test_case! {
    /// A far CALL at CPL0 refuses the same selectors with the same exceptions (SDM Vol. 2A
    /// CALL, "Protected Mode Exceptions").
    name = "cpu::far_call_bad_selector::long64", mode = Long64, path = Hw;
    fn far_call_bad_selector() {
        check_far_refusals(true);
    }
}

test_case! {
    /// LTR refuses the null selector with #GP(0) and a data segment with #GP(selector);
    /// it loads an available TSS, which STR then reads and which is marked busy, and a
    /// second LTR of it raises #GP(selector) (SDM Vol. 2A LTR and STR, Vol. 3A 9.2.3).
    name = "cpu::ltr::long64", mode = Long64, path = Hw;
    fn ltr() {
        let [low, high] = tss64(0x67);
        let (null, data, first, second, tr, busy) = with_gdt(&[low, high], || {
            let null = catch!("ltr {0:x}", in(reg) 0u16);
            let data = catch!("ltr {0:x}", in(reg) selector::DATA);
            let first = catch!("ltr {0:x}", in(reg) EXTRA);
            let tr = str();
            // SAFETY: reads the descriptor LTR just used, in the case's table.
            let busy = unsafe { ((&raw const TABLE).cast::<u64>().add(selector::GDT_ENTRIES).read_volatile() >> 40) & 0xf };
            let second = catch!("ltr {0:x}", in(reg) EXTRA);
            (null, data, first, second, tr, busy)
        });
        reload_harness_tr();
        check_exception!(null, exception::GP, Some(0));
        check_exception!(data, exception::GP, Some(selector::DATA as u64));
        check_no_exception!(first);
        check_eq!(tr, EXTRA, "STR after LTR");
        check_eq!(busy, 0xb, "the TSS descriptor's type is busy after LTR");
        check_exception!(second, exception::GP, Some(EXTRA as u64));
        check_eq!(str(), selector::TSS, "the harness's TSS is back");
    }
}

test_case! {
    /// LLDT of the null selector makes LDTR unusable without a fault and SLDT reads 0;
    /// then a selector with TI = 1 raises #GP(selector) when loaded, and LLDT of a data
    /// segment raises #GP(selector) (SDM Vol. 2A LLDT and SLDT, Vol. 2B MOV).
    name = "cpu::lldt::long64", mode = Long64, path = Hw;
    fn lldt() {
        let null = catch!("lldt {0:x}", in(reg) 0u16);
        let ldtr: u16;
        // SAFETY: SLDT only reads LDTR.
        unsafe { core::arch::asm!("sldt {0:x}", out(reg) ldtr) };
        let ti = catch!("mov {1:x}, ds", "mov ds, {0:x}", "mov ds, {1:x}", in(reg) 4u16, out(reg) _);
        let data = catch!("lldt {0:x}", in(reg) selector::DATA);
        check_no_exception!(null);
        check_eq!(ldtr, 0, "SLDT after LLDT of the null selector");
        check_exception!(ti, exception::GP, Some(4));
        check_exception!(data, exception::GP, Some(selector::DATA as u64));
    }
}

/// The IDT gate of `vector`, as 16 bytes in identity-mapped RAM.
fn gate(vector: u8) -> *mut u64 {
    (layout::IDT + 16 * vector as u64) as *mut u64
}

test_case! {
    /// An exception whose gate names IST2 reads RSP from the TSS at 44; with a TSS limit
    /// below 51 the delivery raises #TS with the TSS selector and EXT as error code, on
    /// the current stack (SDM Vol. 2A INT n, "Operation": "(IST << 3) + 28 ... > TSS
    /// limit THEN #TS", Vol. 3A 6.14.5 and 6.15, Interrupt 10).
    name = "cpu::exc_ts_ist_limit::long64", mode = Long64, path = Hw;
    fn exc_ts_ist_limit() {
        let [low, high] = tss64(0x2f);
        let ud = gate(exception::UD);
        let e = with_gdt(&[low, high], || {
            // SAFETY: LTR of the case's TSS descriptor (the same TSS with a shorter limit);
            // the harness's is loaded again below.
            unsafe { core::arch::asm!("ltr {0:x}", in(reg) EXTRA) };
            // SAFETY: the #UD gate's IST field (bits 34:32) set to 2; restored below.
            unsafe { ud.write_volatile(ud.read_volatile() | 2 << 32) };
            let e = catch!("ud2");
            // SAFETY: as above.
            unsafe { ud.write_volatile(ud.read_volatile() & !(7 << 32)) };
            e
        });
        reload_harness_tr();
        check!(e.is_some(), "#UD through an IST beyond the TSS limit raised nothing");
        check_exception!(e, exception::TS, Some(EXTRA as u64 | 1));
    }
}

test_case! {
    /// MOV SS at CPL0 in 64-bit mode: a DPL3 data segment raises #GP(selector), with RPL 0
    /// or 3 (the error code has no RPL), and a not-present one #SS(selector) (SDM Vol. 2B
    /// MOV, "Operation", and Vol. 3A 6.13).
    name = "cpu::ss_load::long64", mode = Long64, path = Hw;
    fn ss_load() {
        let load = |sel: u16| catch!("mov {1:x}, ss", "mov ss, {0:x}", "mov ss, {1:x}", in(reg) sel, out(reg) _);
        let user = selector::USER_DATA & !3;
        check_exception!(load(user), exception::GP, Some(user as u64));
        check_exception!(load(user | 3), exception::GP, Some(user as u64));
        let e = with_gdt(&[DATA & !PRESENT], || load(EXTRA));
        check_exception!(e, exception::SS, Some(EXTRA as u64));
    }
}

test_case! {
    /// An exception whose IDT gate is not present raises #NP with the gate's IDT error
    /// code: vector * 8, IDT (bit 1) and EXT (bit 0), here 0x33 for #UD (SDM Vol. 3A 6.13
    /// and 6.15, Interrupt 11).
    name = "cpu::exc_np_idt_gate::long64", mode = Long64, path = Hw;
    fn exc_np_idt_gate() {
        let ud = gate(exception::UD);
        // SAFETY: clears P (bit 47) of the #UD gate, which the IDT page lets CPL3 cases
        // write too; restored below.
        unsafe { ud.write_volatile(ud.read_volatile() & !(1 << 47)) };
        let e = catch!("ud2");
        // SAFETY: as above.
        unsafe { ud.write_volatile(ud.read_volatile() | 1 << 47) };
        check!(e.is_some(), "UD2 with a not-present #UD gate raised nothing");
        check_exception!(e, exception::NP, Some(exception::UD as u64 * 8 + 3));
    }
}

test_case! {
    /// A not-present #UD gate makes UD2 at CPL3 raise #NP(0x33) too.
    name = "cpu::exc_np_idt_gate::user64", mode = User64, path = Hw;
    entry = exc_np_idt_gate
}

/// Where `recover` resumes and with which RSP, and what it caught (vector, error code).
static RECOVER: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// A #GP handler for a fault whose frame RSP is not the one to resume with (an IRETQ
/// faults with its frame still on the stack): it records the fault and resumes at
/// RECOVER[0] with RSP = RECOVER[1] and NT clear.
fn recover(frame: &mut Frame) {
    RECOVER[2].store(frame.vector, SeqCst);
    RECOVER[3].store(frame.error_code, SeqCst);
    frame.rip = RECOVER[0].load(SeqCst);
    frame.rsp = RECOVER[1].load(SeqCst);
    frame.rflags &= !RFLAGS_NT;
}

const RFLAGS_NT: u64 = 1 << 14;

/// Runs IRETQ on the frame SS, RSP, RFLAGS, CS, RIP (with RFLAGS.NT set first if `nt`);
/// RIP is the instruction after the IRETQ. Returns the (vector, error code) `recover`
/// caught, or None.
fn iretq_with(cs: u64, nt: bool) -> Option<(u64, u64)> {
    exception::set_handler(exception::GP, recover);
    RECOVER[2].store(u64::MAX, SeqCst);
    let nt = if nt { RFLAGS_NT } else { 0 };
    // SAFETY: the frame returns to the next instruction at CPL0 if the IRETQ is accepted;
    // if it faults, `recover` resumes at the same place with the RSP saved here.
    unsafe {
        core::arch::asm!(
            "lea rax, [rip + 2f]",
            "mov [rip + {recover}], rax",
            "mov [rip + {recover} + 8], rsp",
            "mov rdx, rsp",
            "push {ss}",
            "push rdx",
            "pushfq",
            "push {cs}",
            "push rax",
            "pushfq",
            "or qword ptr [rsp], {nt}",
            "popfq",
            "iretq",
            "2:",
            recover = sym RECOVER,
            ss = const selector::DATA,
            cs = in(reg) cs,
            nt = in(reg) nt,
            out("rax") _,
            out("rdx") _,
        )
    };
    let vector = RECOVER[2].load(SeqCst);
    (vector != u64::MAX).then(|| (vector, RECOVER[3].load(SeqCst)))
}

test_case! {
    /// IRETQ with RFLAGS.NT set raises #GP(0): IA-32e mode has no task switching (SDM Vol.
    /// 2A IRET, "IF NT = 1 THEN IF IA32_EFER.LMA = 1 THEN #GP(0)"); a valid frame without
    /// NT returns.
    name = "cpu::iretq_nt_gp::long64", mode = Long64, path = Hw;
    fn iretq_nt_gp() {
        check_eq!(iretq_with(selector::CODE64 as u64, false), None, "IRETQ to CPL0 without NT");
        let e = iretq_with(selector::CODE64 as u64, true);
        check!(e.is_some(), "IRETQ with NT set raised nothing");
        check_eq!(e, Some((exception::GP as u64, 0)), "#GP(0)");
    }
}

test_case! {
    /// IRETQ to a non-conforming code segment whose DPL differs from the return selector's
    /// RPL raises #GP(selector): CS 0x28 (DPL 3) with RPL 0 (SDM Vol. 2A IRET, "Protected
    /// Mode Exceptions").
    name = "cpu::iretq_bad_cs_gp::long64", mode = Long64, path = Hw;
    fn iretq_bad_cs_gp() {
        let cs = (selector::USER_CODE64 & !3) as u64;
        let e = iretq_with(cs, false);
        check!(e.is_some(), "IRETQ to CS {:#x} (DPL 3, RPL 0) raised nothing", cs);
        check_eq!(e, Some((exception::GP as u64, cs)), "#GP(selector)");
    }
}
