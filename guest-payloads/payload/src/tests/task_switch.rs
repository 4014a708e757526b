//! Hardware task switches in 32-bit protected mode (SDM Vol. 3A chapter 8, "Task
//! Management"; APM Vol. 2, 12.3): JMP and CALL to a TSS, CALL through a task gate, INT
//! and exceptions through task gates in the IDT, IRET with NT set, and the checks a switch
//! makes before it commits (busy flags, TSS limit and presence).
//!
//! Every case loads its own GDT (`hv_ts_gdt`: the harness's first six slots, then the
//! TSSes and gates below) and makes `hv_ts_a` its current task with LTR. Task B
//! (`hv_ts_b_entry`) records what it sees into `hv_ts_seen`, then returns: by IRET when
//! its EFLAGS.NT says it was called, by JMP back to A otherwise. Exceptions not taken
//! through a task gate land in the 32-bit stubs of `low.rs` (`HV32_ARM`).
//!
//! GDT slots: 0x30 TSS A, 0x38 TSS B, 0x40 a task gate to B, 0x48 TSS C, 0x50 a TSS
//! whose limit is 0x66, 0x58 a TSS not present, 0x60 an LDT with a flat data segment at
//! index 1 (selector 0x0c).

use hvprobe_rt::test_case;

use super::low::{check_eq_asm, expect_exception32, low_global_asm};

/// `HV_CHECK_EQ` of the dword task B recorded at `hv_ts_seen + $slot * 4` against `$exp`
/// (an immediate or an `offset` expression, loaded into EBX: it clobbers EAX and EBX).
macro_rules! seen_eq {
    ($slot:literal, $exp:literal, $text:expr) => {
        concat!(
            "mov eax, dword ptr [hv_ts_seen + ",
            $slot,
            " * 4]\n",
            "mov ebx, ",
            $exp,
            "\n",
            check_eq_asm!("eax", "ebx", $text),
        )
    };
}

/// `HV_CHECK_EQ` of the bits `$mask` of the dword task B recorded at slot `$slot`.
macro_rules! seen_bits {
    ($slot:literal, $mask:literal, $exp:literal, $text:expr) => {
        concat!(
            "mov eax, dword ptr [hv_ts_seen + ",
            $slot,
            " * 4]\n",
            "and eax, ",
            $mask,
            "\n",
            check_eq_asm!("eax", $exp, $text),
        )
    };
}

/// `HV_CHECK_EQ` of the dword at `$label` (a counter of task entries).
macro_rules! count_eq {
    ($label:literal, $exp:literal, $text:expr) => {
        concat!("mov eax, dword ptr [", $label, "]\n", check_eq_asm!("eax", $exp, $text))
    };
}

/// The access byte of GDT slot `$sel` in EAX.
macro_rules! desc_type {
    ($sel:literal) => {
        concat!("movzx eax, byte ptr [hv_ts_gdt + ", $sel, " + 5]\n")
    };
}

low_global_asm!(
    r#"
    // What task B records (dword slots of hv_ts_seen).
    .set SEEN_EAX, 0
    .set SEEN_EBX, 3
    .set SEEN_ESP, 4
    .set SEEN_ESI, 6
    .set SEEN_EFLAGS, 8
    .set SEEN_TR, 9
    .set SEEN_CR0, 10
    .set SEEN_TOP, 12
    .set SEEN_A_EIP, 13
    .set SEEN_B_LINK, 14
    .set SEEN_A_TYPE, 15
    .set SEEN_B_TYPE, 16
    .set SEEN_LDTR, 17
    .set SEEN_LDT_READ, 18
    .set SEEN_C_LINK, 19
    .set SEEN_C_B_TYPE, 20

    // A 32-bit TSS descriptor (SDM Vol. 3A 8.2.2) for a TSS below 64 KiB.
    .macro HV_TSS_DESC base, limit, access
    .word \limit, \base
    .byte 0, \access, 0, 0
    .endm

    // A 32-bit TSS (SDM Vol. 3A 8.2.1, Figure 8-2) that starts at \eip on its own stack,
    // with recognisable general registers, flat selectors and the LDT selector \ldt. The
    // link field starts as F4h, HLT: a task switch writes the link's 16 bits over it, but
    // a hypervisor that delivers through a task gate as through an interrupt gate runs
    // the TSS from offset 0 as code (CS = the TSS selector), and then halts right there
    // instead of running whatever the TSS's addresses decode to.
    .macro HV_TSS eip, stack, ldt
    .long 0xf4
    .long 0, 0, 0, 0, 0, 0
    .long 0
    .long \eip
    .long 0x2
    .long 0x11111111, 0x22222222, 0x33333333, 0x44444444
    .long \stack
    .long 0x55555555, 0x66666666, 0x77777777
    .long 0x10, 0x18, 0x10, 0x10, 0x10, 0x10
    .long \ldt
    .word 0, 104
    .endm

    // Every case: its file for the verdict, the 32-bit IDT, the case's GDT, and TSS A
    // as the current task.
    .macro HV_TS_SETUP
    HV_FILE hv_ts_file, hv_ts_file_end
    lidt [hv32_idtr]
    lgdt [hv_ts_gdtr]
    mov ax, 0x30
    ltr ax
    .endm

    // IDT vector \vec becomes a task gate to TSS B (SDM Vol. 3A 6.11, Figure 6-2).
    .macro HV_TASK_GATE_IDT vec
    mov dword ptr [hv32_idt + \vec * 8], 0x00380000
    mov dword ptr [hv32_idt + \vec * 8 + 4], 0x8500
    .endm

    .section .data.low, "aw"
hv_ts_file:
    .ascii "payload/src/tests/task_switch.rs"
hv_ts_file_end:
    .balign 8
hv_ts_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
    .quad 0x00cf9b000000ffff
    .quad 0x00cff3000000ffff
    .quad 0x00affb000000ffff
    HV_TSS_DESC hv_ts_a, 0x67, 0x89
    HV_TSS_DESC hv_ts_b, 0x67, 0x89
    .word 0, 0x38
    .byte 0, 0x85
    .word 0
    HV_TSS_DESC hv_ts_c, 0x67, 0x89
    HV_TSS_DESC hv_ts_d, 0x66, 0x89
    HV_TSS_DESC hv_ts_d, 0x67, 0x09
    .word 0x0f, hv_ts_ldt
    .byte 0, 0x82, 0, 0
hv_ts_gdt_end:
hv_ts_gdtr:
    .word hv_ts_gdt_end - hv_ts_gdt - 1
    .long hv_ts_gdt
    .balign 8
hv_ts_ldt:
    .quad 0
    .quad 0x00cf93000000ffff
hv_ts_marker:
    .long 0x1d71d7
hv_ts_seen:
    .fill 24, 4, 0
hv_ts_entries:
    .long 0
hv_ts_c_entries:
    .long 0
    // Where task B sends a task it was called from by an exception (0: leave its EIP).
hv_ts_resume:
    .long 0
    // Nonzero: task B calls task C before it returns.
hv_ts_b_calls_c:
    .long 0
    .balign 16
hv_ts_a:
    .fill 104, 1, 0
    .balign 16
hv_ts_b:
    HV_TSS hv_ts_b_entry, hv_ts_b_stack_top, 0
    .balign 16
hv_ts_c:
    HV_TSS hv_ts_c_entry, hv_ts_c_stack_top, 0
    .balign 16
hv_ts_d:
    HV_TSS hv_ts_b_entry, hv_ts_b_stack_top, 0
    .balign 16
    .fill 128, 1, 0
hv_ts_b_stack_top:
    .fill 128, 1, 0
hv_ts_c_stack_top:

    .section .text.low, "ax"
    .code32

    // Task B: records its registers and what it sees of the switch, then returns. Each
    // later switch into B resumes after its IRET or JMP, at the jump back to the top.
hv_ts_b_entry:
    mov dword ptr [hv_ts_seen + SEEN_EAX * 4], eax
    mov dword ptr [hv_ts_seen + SEEN_EBX * 4], ebx
    mov dword ptr [hv_ts_seen + SEEN_ESP * 4], esp
    mov dword ptr [hv_ts_seen + SEEN_ESI * 4], esi
    pushfd
    pop eax
    mov dword ptr [hv_ts_seen + SEEN_EFLAGS * 4], eax
    str ax
    movzx eax, ax
    mov dword ptr [hv_ts_seen + SEEN_TR * 4], eax
    mov eax, cr0
    mov dword ptr [hv_ts_seen + SEEN_CR0 * 4], eax
    mov eax, dword ptr [esp]
    mov dword ptr [hv_ts_seen + SEEN_TOP * 4], eax
    mov eax, dword ptr [hv_ts_a + 0x20]
    mov dword ptr [hv_ts_seen + SEEN_A_EIP * 4], eax
    mov eax, dword ptr [hv_ts_b]
    mov dword ptr [hv_ts_seen + SEEN_B_LINK * 4], eax
    movzx eax, byte ptr [hv_ts_gdt + 0x35]
    mov dword ptr [hv_ts_seen + SEEN_A_TYPE * 4], eax
    movzx eax, byte ptr [hv_ts_gdt + 0x3d]
    mov dword ptr [hv_ts_seen + SEEN_B_TYPE * 4], eax
    sldt ax
    movzx eax, ax
    mov dword ptr [hv_ts_seen + SEEN_LDTR * 4], eax
    test eax, eax
    jz 1f
    mov ax, 0x0c
    mov fs, ax
    mov eax, dword ptr fs:[hv_ts_marker]
    mov dword ptr [hv_ts_seen + SEEN_LDT_READ * 4], eax
1:
    add dword ptr [hv_ts_entries], 1
    cmp dword ptr [hv_ts_b_calls_c], 0
    je 2f
    .byte 0x9a
    .long 0
    .word 0x48
2:
    mov eax, dword ptr [hv_ts_resume]
    test eax, eax
    jz 3f
    mov dword ptr [hv_ts_a + 0x20], eax
3:
    test dword ptr [hv_ts_seen + SEEN_EFLAGS * 4], 0x4000
    jz 4f
    iretd
    jmp hv_ts_b_entry
4:
    .byte 0xea
    .long 0
    .word 0x30
    jmp hv_ts_b_entry

    // Task C, called from B: records its link and B's busy flag, then returns.
hv_ts_c_entry:
    mov eax, dword ptr [hv_ts_c]
    mov dword ptr [hv_ts_seen + SEEN_C_LINK * 4], eax
    movzx eax, byte ptr [hv_ts_gdt + 0x3d]
    mov dword ptr [hv_ts_seen + SEEN_C_B_TYPE * 4], eax
    add dword ptr [hv_ts_c_entries], 1
    iretd
    jmp hv_ts_c_entry

    // LTR marks the TSS descriptor busy and STR reads the selector back.
    .global hv_task_ltr_busy_prot32
hv_task_ltr_busy_prot32:
    HV_TS_SETUP
    str ax
    movzx eax, ax
"#,
    check_eq_asm!("eax", "0x30", "STR after LTR 0x30"),
    desc_type!("0x30"),
    check_eq_asm!("eax", "0x8b", "the TSS descriptor's access byte after LTR (busy 32-bit TSS)"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // LTR of a busy TSS raises #GP(selector): A is busy once it is the current task.
    .global hv_task_ltr_busy_gp_prot32
hv_task_ltr_busy_gp_prot32:
    HV_TS_SETUP
    mov ax, 0x30
    HV32_ARM hv_ts_ltr_busy_resume
hv_ts_ltr_busy_at:
    ltr ax
hv_ts_ltr_busy_resume:
"#,
    expect_exception32!("13", "0x30", "hv_ts_ltr_busy_at", "LTR of a busy TSS"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // LTR of a selector that is no TSS (a data segment) raises #GP(selector).
    .global hv_task_ltr_not_tss_prot32
hv_task_ltr_not_tss_prot32:
    HV_TS_SETUP
    mov ax, 0x10
    HV32_ARM hv_ts_ltr_data_resume
hv_ts_ltr_data_at:
    ltr ax
hv_ts_ltr_data_resume:
"#,
    expect_exception32!("13", "0x10", "hv_ts_ltr_data_at", "LTR of a data segment"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // JMP to TSS B: B starts with the registers of its TSS, TR = 0x38, NT clear and
    // CR0.TS set; its JMP back resumes A after A's JMP.
    .global hv_task_jmp_tss_prot32
hv_task_jmp_tss_prot32:
    HV_TS_SETUP
    .byte 0xea
    .long 0
    .word 0x38
hv_ts_jmp_back:
"#,
    seen_eq!("SEEN_EAX", "0x11111111", "EAX in B (from B's TSS)"),
    seen_eq!("SEEN_EBX", "0x44444444", "EBX in B (from B's TSS)"),
    seen_eq!("SEEN_ESI", "0x66666666", "ESI in B (from B's TSS)"),
    seen_eq!("SEEN_ESP", "offset hv_ts_b_stack_top", "ESP in B (from B's TSS)"),
    seen_eq!("SEEN_TR", "0x38", "TR in B"),
    seen_bits!("SEEN_EFLAGS", "0x4000", "0", "EFLAGS.NT in a task entered by JMP"),
    seen_bits!("SEEN_CR0", "8", "8", "CR0.TS after a task switch"),
    count_eq!("hv_ts_entries", "1", "times B ran"),
    r#"
    str ax
    movzx eax, ax
"#,
    check_eq_asm!("eax", "0x30", "TR back in A"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // JMP to B saves A's state in A's TSS: its EIP is the instruction after the JMP, and
    // the switch back restores the general registers A had.
    .global hv_task_jmp_saves_prot32
hv_task_jmp_saves_prot32:
    HV_TS_SETUP
    mov ebx, 0xa1a1a1a1
    mov esi, 0xa2a2a2a2
    mov edi, 0xa3a3a3a3
    mov ebp, 0xa4a4a4a4
    .byte 0xea
    .long 0
    .word 0x38
hv_ts_saves_back:
"#,
    check_eq_asm!("ebx", "0xa1a1a1a1", "EBX of A after the round trip"),
    check_eq_asm!("esi", "0xa2a2a2a2", "ESI of A after the round trip"),
    check_eq_asm!("edi", "0xa3a3a3a3", "EDI of A after the round trip"),
    check_eq_asm!("ebp", "0xa4a4a4a4", "EBP of A after the round trip"),
    seen_eq!("SEEN_A_EIP", "offset hv_ts_saves_back", "A's saved EIP as B saw it"),
    r#"
    mov eax, dword ptr [hv_ts_a + 0x34]
"#,
    check_eq_asm!("eax", "0xa1a1a1a1", "EBX in A's TSS"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // JMP clears the old task's busy flag and sets the new one's; the JMP back reverses it.
    .global hv_task_jmp_busy_flags_prot32
hv_task_jmp_busy_flags_prot32:
    HV_TS_SETUP
    .byte 0xea
    .long 0
    .word 0x38
"#,
    seen_eq!("SEEN_A_TYPE", "0x89", "A's descriptor while B runs (JMP: not busy)"),
    seen_eq!("SEEN_B_TYPE", "0x8b", "B's descriptor while B runs (busy)"),
    desc_type!("0x30"),
    check_eq_asm!("eax", "0x8b", "A's descriptor after the JMP back (busy)"),
    desc_type!("0x38"),
    check_eq_asm!("eax", "0x89", "B's descriptor after it jumped away (not busy)"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // CALL to B nests: B runs with NT set and A's selector in its link, A stays busy; B's
    // IRET returns to A after the CALL with NT clear and B no longer busy.
    .global hv_task_call_tss_prot32
hv_task_call_tss_prot32:
    HV_TS_SETUP
    .byte 0x9a
    .long 0
    .word 0x38
"#,
    seen_eq!("SEEN_B_LINK", "0x30", "B's previous-task link"),
    seen_eq!("SEEN_A_TYPE", "0x8b", "A's descriptor while B runs (CALL: still busy)"),
    seen_bits!("SEEN_EFLAGS", "0x4000", "0x4000", "EFLAGS.NT in a called task"),
    r#"
    pushfd
    pop eax
    and eax, 0x4000
"#,
    check_eq_asm!("eax", "0", "EFLAGS.NT in A after B's IRET"),
    desc_type!("0x38"),
    check_eq_asm!("eax", "0x89", "B's descriptor after its IRET (not busy)"),
    count_eq!("hv_ts_entries", "1", "times B ran"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // CALL through the task gate at 0x40 switches to the gate's TSS (B), as a CALL to it.
    .global hv_task_call_gate_prot32
hv_task_call_gate_prot32:
    HV_TS_SETUP
    .byte 0x9a
    .long 0
    .word 0x40
"#,
    seen_eq!("SEEN_TR", "0x38", "TR in the task the gate selects"),
    seen_eq!("SEEN_B_LINK", "0x30", "B's previous-task link"),
    count_eq!("hv_ts_entries", "1", "times B ran"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // INT 0x30 through a task gate in the IDT: B runs nested (NT, link = A) and its IRET
    // resumes A after the INT.
    .global hv_task_int_gate_prot32
hv_task_int_gate_prot32:
    HV_TS_SETUP
    HV_TASK_GATE_IDT 0x30
    int 0x30
hv_ts_int_back:
"#,
    seen_eq!("SEEN_TR", "0x38", "TR in the task the IDT gate selects"),
    seen_eq!("SEEN_B_LINK", "0x30", "B's previous-task link"),
    seen_eq!("SEEN_A_EIP", "offset hv_ts_int_back", "A's saved EIP (after the INT)"),
    seen_bits!("SEEN_EFLAGS", "0x4000", "0x4000", "EFLAGS.NT in a task entered through an IDT task gate"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // #UD through a task gate: A's saved EIP is the faulting UD2 and nothing is pushed on
    // B's stack; B sends A on past the UD2.
    .global hv_task_exc_gate_prot32
hv_task_exc_gate_prot32:
    HV_TS_SETUP
    HV_TASK_GATE_IDT 6
    mov dword ptr [hv_ts_resume], offset hv_ts_ud_back
hv_ts_ud_at:
    ud2
hv_ts_ud_back:
"#,
    seen_eq!("SEEN_A_EIP", "offset hv_ts_ud_at", "A's saved EIP (the UD2: a fault)"),
    seen_eq!("SEEN_ESP", "offset hv_ts_b_stack_top", "B's ESP (#UD pushes no error code)"),
    seen_eq!("SEEN_B_LINK", "0x30", "B's previous-task link"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // #GP through a task gate pushes its error code on the new task's stack: MOV ES of a
    // selector past the GDT limit raises #GP(0xfff8).
    .global hv_task_exc_gate_error_prot32
hv_task_exc_gate_error_prot32:
    HV_TS_SETUP
    HV_TASK_GATE_IDT 13
    mov dword ptr [hv_ts_resume], offset hv_ts_gp_back
    mov ax, 0xfff8
hv_ts_gp_at:
    mov es, ax
hv_ts_gp_back:
"#,
    seen_eq!("SEEN_A_EIP", "offset hv_ts_gp_at", "A's saved EIP (the MOV ES)"),
    seen_eq!("SEEN_TOP", "0xfff8", "the error code on B's stack"),
    seen_eq!("SEEN_ESP", "offset hv_ts_b_stack_top - 4", "B's ESP (one error code pushed)"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // JMP to the current task's own, busy TSS raises #GP(selector) and switches nothing.
    .global hv_task_jmp_busy_prot32
hv_task_jmp_busy_prot32:
    HV_TS_SETUP
    HV32_ARM hv_ts_jmp_busy_resume
hv_ts_jmp_busy_at:
    .byte 0xea
    .long 0
    .word 0x30
hv_ts_jmp_busy_resume:
"#,
    expect_exception32!("13", "0x30", "hv_ts_jmp_busy_at", "JMP to a busy TSS"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // CALL to a busy TSS raises #GP(selector) too.
    .global hv_task_call_busy_prot32
hv_task_call_busy_prot32:
    HV_TS_SETUP
    HV32_ARM hv_ts_call_busy_resume
hv_ts_call_busy_at:
    .byte 0x9a
    .long 0
    .word 0x30
hv_ts_call_busy_resume:
"#,
    expect_exception32!("13", "0x30", "hv_ts_call_busy_at", "CALL to a busy TSS"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // A 32-bit TSS whose limit is below 0x67 raises #TS(selector).
    .global hv_task_tss_limit_prot32
hv_task_tss_limit_prot32:
    HV_TS_SETUP
    HV32_ARM hv_ts_limit_resume
hv_ts_limit_at:
    .byte 0xea
    .long 0
    .word 0x50
hv_ts_limit_resume:
"#,
    expect_exception32!("10", "0x50", "hv_ts_limit_at", "JMP to a TSS with limit 0x66"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // A TSS descriptor that is not present raises #NP(selector).
    .global hv_task_tss_not_present_prot32
hv_task_tss_not_present_prot32:
    HV_TS_SETUP
    HV32_ARM hv_ts_np_resume
hv_ts_np_at:
    .byte 0xea
    .long 0
    .word 0x58
hv_ts_np_resume:
"#,
    expect_exception32!("11", "0x58", "hv_ts_np_at", "JMP to a TSS that is not present"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // IRET with NT returns to the task in the link; a link to a TSS that is not busy
    // raises #TS(link).
    .global hv_task_iret_not_busy_prot32
hv_task_iret_not_busy_prot32:
    HV_TS_SETUP
    mov dword ptr [hv_ts_a], 0x38
    pushfd
    or dword ptr [esp], 0x4000
    popfd
    HV32_ARM hv_ts_iret_nb_resume
hv_ts_iret_nb_at:
    iretd
hv_ts_iret_nb_resume:
    pushfd
    and dword ptr [esp], 0xffffbfff
    popfd
"#,
    expect_exception32!("10", "0x38", "hv_ts_iret_nb_at", "IRET with NT to a TSS not busy"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // A calls B, B calls C: C's link is B, B stays busy while C runs, and the two IRETs
    // unwind to A.
    .global hv_task_nested_prot32
hv_task_nested_prot32:
    HV_TS_SETUP
    mov dword ptr [hv_ts_b_calls_c], 1
    .byte 0x9a
    .long 0
    .word 0x38
"#,
    seen_eq!("SEEN_C_LINK", "0x38", "C's previous-task link"),
    seen_eq!("SEEN_C_B_TYPE", "0x8b", "B's descriptor while C runs (busy)"),
    count_eq!("hv_ts_c_entries", "1", "times C ran"),
    r#"
    str ax
    movzx eax, ax
"#,
    check_eq_asm!("eax", "0x30", "TR back in A after both IRETs"),
    desc_type!("0x48"),
    check_eq_asm!("eax", "0x89", "C's descriptor after its IRET (not busy)"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // A task switch loads LDTR from the new TSS: B, whose TSS names the LDT at 0x60,
    // reads through an LDT selector; A gets its own (null) LDT back.
    .global hv_task_ldt_prot32
hv_task_ldt_prot32:
    HV_TS_SETUP
    mov dword ptr [hv_ts_b + 0x60], 0x60
    .byte 0xea
    .long 0
    .word 0x38
"#,
    seen_eq!("SEEN_LDTR", "0x60", "LDTR in B (from B's TSS)"),
    seen_eq!("SEEN_LDT_READ", "0x1d71d7", "a load through LDT selector 0x0c in B"),
    r#"
    sldt ax
    movzx eax, ax
"#,
    check_eq_asm!("eax", "0", "LDTR back in A (A's TSS names none)"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT
    .code64
    .section .text
"#
);

/// Declares the task-switch cases: each a 32-bit protected-mode entry of the assembly
/// above, all on the `hw` path (the CPU's own task switch, which KVM emulates).
macro_rules! task_cases {
    ($($(#[$doc:meta])* $entry:ident: $name:literal;)*) => {
        unsafe extern "C" {
            $(fn $entry();)*
        }
        $(test_case! {
            $(#[$doc])*
            name = $name, mode = Prot32, path = Hw;
            entry = $entry
        })*
    };
}

task_cases! {
    /// LTR of an available TSS marks its descriptor busy (type 0xB) and STR reads the
    /// selector back (SDM Vol. 2A LTR; Vol. 3A 8.2.4).
    hv_task_ltr_busy_prot32: "cpu::task_ltr_busy::prot32";
    /// LTR of a busy TSS raises #GP(selector) (SDM Vol. 2A LTR, "Protected Mode
    /// Exceptions").
    hv_task_ltr_busy_gp_prot32: "cpu::task_ltr_busy_gp::prot32";
    /// LTR of a selector that is no available TSS raises #GP(selector) (SDM Vol. 2A LTR).
    hv_task_ltr_not_tss_prot32: "cpu::task_ltr_not_tss::prot32";
    /// JMP to a TSS switches tasks: the new task starts with the registers of its TSS, TR
    /// holds its selector, NT is clear and CR0.TS set (SDM Vol. 3A 8.3, steps 1-12, and
    /// 2.5 CR0.TS; APM Vol. 2, 12.3.4).
    hv_task_jmp_tss_prot32: "cpu::task_jmp_tss::prot32";
    /// A task switch saves the old task's EIP (the next instruction) and general registers
    /// in its TSS, and switching back restores them (SDM Vol. 3A 8.3, step 7).
    hv_task_jmp_saves_prot32: "cpu::task_jmp_saves::prot32";
    /// JMP clears the old task's busy flag and sets the new task's (SDM Vol. 3A 8.3 steps
    /// 6 and 9, Table 8-2).
    hv_task_jmp_busy_flags_prot32: "cpu::task_jmp_busy_flags::prot32";
    /// CALL to a TSS nests: NT set and the link written in the new task, the old task stays
    /// busy, and IRET returns to it with its NT (SDM Vol. 3A 8.4, Table 8-2).
    hv_task_call_tss_prot32: "cpu::task_call_tss::prot32";
    /// CALL through a task gate in the GDT switches to the TSS the gate selects (SDM Vol.
    /// 3A 8.2.5 and 8.3).
    hv_task_call_gate_prot32: "cpu::task_call_gate::prot32";
    /// INT n through a task gate in the IDT switches tasks as a nested call and IRET
    /// returns after the INT (SDM Vol. 3A 6.12.2).
    hv_task_int_gate_prot32: "cpu::task_int_gate::prot32";
    /// An exception through a task gate saves the faulting instruction's EIP in the old
    /// TSS and pushes no error code for #UD (SDM Vol. 3A 6.12.2 and 6.15).
    hv_task_exc_gate_prot32: "cpu::task_exc_gate::prot32";
    /// An exception with an error code through a task gate pushes it on the new task's
    /// stack (SDM Vol. 3A 6.12.2: "the error code is pushed on the stack of the new task").
    hv_task_exc_gate_error_prot32: "cpu::task_exc_gate_error::prot32";
    /// JMP to a busy TSS raises #GP(selector) (SDM Vol. 3A 8.3 step 2; Vol. 2A JMP).
    hv_task_jmp_busy_prot32: "cpu::task_jmp_busy::prot32";
    /// CALL to a busy TSS raises #GP(selector) (SDM Vol. 3A 8.3 step 2; Vol. 2A CALL).
    hv_task_call_busy_prot32: "cpu::task_call_busy::prot32";
    /// A 32-bit TSS whose limit is below 0x67 raises #TS(selector) (SDM Vol. 3A 8.3 step
    /// 3, Table 8-1).
    hv_task_tss_limit_prot32: "cpu::task_tss_limit::prot32";
    /// A TSS descriptor that is not present raises #NP(selector) (SDM Vol. 3A 8.3 step 3,
    /// Vol. 2A JMP).
    hv_task_tss_not_present_prot32: "cpu::task_tss_not_present::prot32";
    /// IRET with NT to a link whose TSS is not busy raises #TS(link) (SDM Vol. 2A IRET,
    /// "TASK-RETURN").
    hv_task_iret_not_busy_prot32: "cpu::task_iret_not_busy::prot32";
    /// Nested task calls A -> B -> C: C's link is B, B stays busy, both IRETs unwind (SDM
    /// Vol. 3A 8.4).
    hv_task_nested_prot32: "cpu::task_nested::prot32";
    /// A task switch loads LDTR from the new TSS (SDM Vol. 3A 8.3 step 11).
    hv_task_ldt_prot32: "cpu::task_ldt::prot32";
}
