//! Cases that run in 16-bit real mode or 32-bit protected mode, written in assembly
//! (the Rust target only emits 64-bit code). They report through the same protocol:
//! `HV_CHECK_EQ` fills a static verdict with the line, the compared values and a text.

use hvprobe_rt::abi::proto;

use hvprobe_rt::test_case;

/// `HV_CHECK_EQ actual_reg32, expected_imm, "text"` with this source line filled in.
macro_rules! check_eq_asm {
    ($act:literal, $exp:literal, $text:expr) => {
        concat!("HV_CHECK_EQ ", $act, ", ", $exp, ", ", line!(), ", \"", $text, "\"\n")
    };
}

/// Checks what the sequence armed with `HV32_ARM` raised in 32-bit mode: the vector, the
/// error code (0 where the CPU pushes none) and the saved EIP (an assembler expression).
macro_rules! expect_exception32 {
    ($vector:literal, $error:literal, $eip:literal, $what:literal) => {
        concat!(
            "mov eax, dword ptr [hv32_vector]\n",
            check_eq_asm!("eax", $vector, concat!($what, ": vector")),
            "mov eax, dword ptr [hv32_error]\n",
            check_eq_asm!("eax", $error, concat!($what, ": error code")),
            "mov eax, dword ptr [hv32_eip]\n",
            "mov ebx, offset ",
            $eip,
            "\n",
            check_eq_asm!("eax", "ebx", concat!($what, ": saved EIP")),
        )
    };
}

/// Checks that the sequence armed with `HV32_ARM` raised nothing, and disarms it.
macro_rules! expect_no_exception32 {
    ($what:literal) => {
        concat!(
            "mov dword ptr [hv32_fixup], 0\n",
            "mov eax, dword ptr [hv32_vector]\n",
            check_eq_asm!("eax", "0xffffffff", concat!($what, " raised an exception (actual: its vector)")),
        )
    };
}

/// RDTSC 64 times in a row, in 16- or 32-bit code: no read may be below the one before
/// (SDM Vol. 3B, 18.17).
macro_rules! rdtsc_monotonic_body {
    () => {
        concat!(
            "mov ecx, 64\n",
            "rdtsc\n",
            "2:\n",
            "mov esi, eax\n",
            "mov edi, edx\n",
            "rdtsc\n",
            "mov ebx, eax\n",
            "mov ebp, edx\n",
            "sub ebx, esi\n",
            "sbb ebp, edi\n",
            "setc bl\n",
            "movzx ebx, bl\n",
            check_eq_asm!("ebx", "0", "RDTSC read less than the RDTSC before it"),
            "dec ecx\n",
            "jnz 2b\n",
        )
    };
}

/// CPUID 0x40000000 in 16- or 32-bit code: the KVM signature "KVMKVMKVM\0\0\0" in EBX,
/// ECX, EDX (Documentation/virt/kvm/x86/cpuid.rst).
macro_rules! kvm_signature_body {
    () => {
        concat!(
            "mov eax, 0x40000000\n",
            "xor ecx, ecx\n",
            "cpuid\n",
            check_eq_asm!("ebx", "0x4b4d564b", "CPUID 0x40000000 EBX must read 'KVMK'"),
            check_eq_asm!("ecx", "0x564b4d56", "CPUID 0x40000000 ECX must read 'VMKV'"),
            check_eq_asm!("edx", "0x4d", "CPUID 0x40000000 EDX must read 'M'"),
        )
    };
}

/// The assembler macros every 16- and 32-bit case file uses. `global_asm!` blocks of one
/// crate may or may not share an assembly unit, so the definitions are guarded: each unit
/// defines them once.
macro_rules! low_asm_macros {
    () => {
        r#"
    .ifndef HV_LOW_MACROS
    .set HV_LOW_MACROS, 1
    .macro HV_REPORT msg
    mov dx, {protocol_port}
    mov eax, offset \msg
    out dx, eax
    .endm

    .macro HV_HALT
.Lhalt\@:
    hlt
    jmp .Lhalt\@
    .endm

    .macro HV_CHECK_EQ act, exp, line, text
    .pushsection .data.low, "aw"
.Lmsg\@:
    .ascii "\text"
.Lend\@:
    .popsection
    .set .Llen\@, .Lend\@ - .Lmsg\@
    cmp \act, \exp
    je .Lok\@
    mov dword ptr [hv_low_fail + {off_actual}], \act
    mov dword ptr [hv_low_fail + {off_expected}], \exp
    mov dword ptr [hv_low_fail + {off_line}], \line
    mov dword ptr [hv_low_fail + {off_message_addr}], offset .Lmsg\@
    mov dword ptr [hv_low_fail + {off_message_len}], offset .Llen\@
    HV_REPORT hv_low_fail
    HV_HALT
.Lok\@:
    .endm
    .macro HV32_ARM fixup
    mov dword ptr [hv32_vector], 0xffffffff
    mov dword ptr [hv32_fixup], offset \fixup
    .endm

    // Points the verdict's file at the string from \start to \end: a case whose
    // assembly lives in another file says so first.
    .macro HV_FILE start, end
    mov dword ptr [hv_low_fail + {off_file_addr}], offset \start
    .set .Lflen\@, \end - \start
    mov dword ptr [hv_low_fail + {off_file_len}], offset .Lflen\@
    .endm
    .endif
"#
    };
}

/// `global_asm!` with [`low_asm_macros`] in front and the protocol's offsets and port as
/// operands: the templates (and any operands of their own) are the arguments.
macro_rules! low_global_asm {
    ($($t:tt)*) => {
        core::arch::global_asm!(
            crate::tests::low::low_asm_macros!(),
            $($t)*,
            protocol_port = const hvprobe_rt::abi::port::PROTOCOL,
            off_line = const core::mem::offset_of!(hvprobe_rt::abi::proto::Verdict, line),
            off_file_addr = const core::mem::offset_of!(hvprobe_rt::abi::proto::Verdict, file.addr),
            off_file_len = const core::mem::offset_of!(hvprobe_rt::abi::proto::Verdict, file.len),
            off_message_addr = const core::mem::offset_of!(hvprobe_rt::abi::proto::Verdict, message.addr),
            off_message_len = const core::mem::offset_of!(hvprobe_rt::abi::proto::Verdict, message.len),
            off_expected = const core::mem::offset_of!(hvprobe_rt::abi::proto::Verdict, expected),
            off_actual = const core::mem::offset_of!(hvprobe_rt::abi::proto::Verdict, actual),
        );
    };
}

pub(crate) use {check_eq_asm, expect_exception32, low_asm_macros, low_global_asm};

low_global_asm!(
    r#"
    .section .data.low, "aw"
    .balign 8
    .global hv_low_pass, hv_low_fail, hv32_idt, hv32_idtr, hv32_fixup, hv32_vector, hv32_error, hv32_eip, hv32_cs
hv_low_pass:
    .long {magic}, {kind_verdict}, {status_pass}, 0
    .quad 0, 0, 0, 0
    .long 0, 0
    .quad 0, 0, 0
hv_low_fail:
    .long {magic}, {kind_verdict}, {status_fail}, 0
    .quad hv_low_file, hv_low_file_end - hv_low_file
    .quad 0, 0
    .long {has_values}, 0
    .quad 0, 0, 0
hv_low_file:
    .ascii "payload/src/tests/low.rs"
hv_low_file_end:


    // Points IVT entry \vec at \handler in segment 0 (SDM Vol. 3A, 20.1.4).
    .macro HV_SET_IVT vec, handler
    mov word ptr ds:[\vec * 4], offset \handler
    mov word ptr ds:[\vec * 4 + 2], 0
    .endm

    // A real-mode handler that records the IP it interrupted at \slot (clobbering EAX, which
    // the tests reload) and resumes \skip bytes past it.
    .macro HV_REAL_HANDLER name, slot, skip
\name:
    push bp
    mov bp, sp
    movzx eax, word ptr [bp + 2]
    mov dword ptr ds:[\slot], eax
    add word ptr [bp + 2], \skip
    pop bp
    iret
    .endm

    // A 32-bit case cannot use the harness's IDT (its gates are 64-bit), so it loads
    // hv32_idtr: 32-bit interrupt gates into code selector 0x18 (SDM Vol. 3A 6.11, Figure
    // 6-2) for vectors 0-0x30, each at a stub that pushes its vector (after a 0 where the
    // CPU pushes no error code). hv32_common records vector, error code, EIP and CS and
    // resumes at hv32_fixup, which HV32_ARM sets; an exception nothing armed for fails
    // the case. The stubs are below 64 KiB, so each gate's offset is one 16-bit word.
    // hv32_common returns with POPFD and a JMP rather than IRETD: the frame is at the same
    // privilege level, and KVM's instruction emulator implements IRET only in real mode, so
    // an IRETD here would hide every exception behind an emulation failure on hosts that
    // emulate CPL0 (cpu::iret::prot32 checks IRETD on its own).
    .set HV32_VECTORS, 0x31
    .balign 8
hv32_idt:
    .set hv32_vec, 0
    .rept HV32_VECTORS
    .word hv32_stubs + hv32_vec * 16, 0x18, 0x8e00, 0
    .set hv32_vec, hv32_vec + 1
    .endr
hv32_idtr:
    .word HV32_VECTORS * 8 - 1
    .long hv32_idt
hv32_fixup:
    .long 0
hv32_vector:
    .long 0
hv32_error:
    .long 0
hv32_eip:
    .long 0
hv32_cs:
    .long 0
hv32_resume:
    .long 0
hv32_unarmed_msg:
    .ascii "an exception no sequence was armed for, in 32-bit code: its EIP (expected) and vector (actual)"
hv32_unarmed_msg_end:
    .set HV32_UNARMED_LEN, hv32_unarmed_msg_end - hv32_unarmed_msg


    .section .text.low, "ax"
    .code32
    .balign 16
hv32_stubs:
    .set hv32_vec, 0
    .rept HV32_VECTORS
    .balign 16
    .if hv32_vec >= 32
    push 0
    .elseif ((0x60227d00 >> hv32_vec) & 1) == 0
    push 0
    .endif
    push hv32_vec
    jmp hv32_common
    .set hv32_vec, hv32_vec + 1
    .endr

hv32_common:
    pop dword ptr [hv32_vector]
    pop dword ptr [hv32_error]
    cmp dword ptr [hv32_fixup], 0
    je hv32_unarmed
    push eax
    mov eax, dword ptr [esp + 4]
    mov dword ptr [hv32_eip], eax
    mov eax, dword ptr [esp + 8]
    mov dword ptr [hv32_cs], eax
    mov eax, dword ptr [hv32_fixup]
    mov dword ptr [hv32_resume], eax
    mov dword ptr [hv32_fixup], 0
    pop eax
    add esp, 8
    popfd
    jmp dword ptr [hv32_resume]
hv32_unarmed:
    mov eax, dword ptr [esp]
    mov dword ptr [hv_low_fail + {off_expected}], eax
    mov eax, dword ptr [hv32_vector]
    mov dword ptr [hv_low_fail + {off_actual}], eax
    mov dword ptr [hv_low_fail + {off_line}], 0
    mov dword ptr [hv_low_fail + {off_message_addr}], offset hv32_unarmed_msg
    mov dword ptr [hv_low_fail + {off_message_len}], offset HV32_UNARMED_LEN
    HV_REPORT hv_low_fail
    HV_HALT

    .code16

    .global hv_boot_real16
hv_boot_real16:
    smsw ax
    movzx eax, ax
    and eax, 1
"#,
    check_eq_asm!("eax", "0", "CR0.PE must be clear in real mode"),
    r#"
    mov ax, cs
    movzx eax, ax
"#,
    check_eq_asm!("eax", "0", "CS must be 0 as the harness set it"),
    r#"
    // Real-mode addressing is segment * 16 + offset (SDM Vol. 3A, 20.1.1):
    // write through ES = 0x500, read back through DS = 0 at linear 0x6000.
    mov ax, 0x500
    mov es, ax
    mov dword ptr es:[0x1000], 0x12345678
    mov eax, dword ptr ds:[0x6000]
"#,
    check_eq_asm!("eax", "0x12345678", "segment:offset must address segment*16+offset"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    .global hv_port_widths_real16
hv_port_widths_real16:
    mov dx, 0x510
    mov al, 0x11
    out dx, al
    mov dx, 0x511
    mov al, 0x22
    out dx, al
    mov dx, 0x512
    mov ax, 0x4433
    out dx, ax
    mov dx, 0x514
    mov eax, 0x88776655
    out dx, eax
    mov dx, 0x510
    in eax, dx
"#,
    check_eq_asm!("eax", "0x44332211", "in eax must read the four bytes written by out al/al/ax"),
    r#"
    mov dx, 0x513
    in ax, dx
    movzx eax, ax
"#,
    check_eq_asm!("eax", "0x5544", "in ax must read bytes 3 and 4, little-endian"),
    r#"
    mov dx, 0x517
    in al, dx
    movzx eax, al
"#,
    check_eq_asm!("eax", "0x88", "in al must read the top byte of the out eax"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // Real-mode INT n goes through the IVT at 0: IP at 4n, CS at 4n+2 (SDM Vol. 3A, 20.1.4).
    .global hv_int_ivt_real16
hv_int_ivt_real16:
    HV_SET_IVT 0x30, hv_ivt_handler
    mov dword ptr ds:[0x6000], 0
    int 0x30
    mov eax, dword ptr ds:[0x6000]
"#,
    check_eq_asm!("eax", "0x30", "INT 0x30 ran the IVT handler once"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT
hv_ivt_handler:
    add dword ptr ds:[0x6000], 0x30
    iret

    // #DE in real mode is delivered through IVT entry 0; the saved IP is the DIV's.
    .global hv_exc_de_real16
hv_exc_de_real16:
    HV_SET_IVT 0, hv_de_handler
    mov dword ptr ds:[0x6004], 0
    xor bl, bl
    mov ax, 1
hv_de_div:
    div bl
    mov eax, dword ptr ds:[0x6004]
    mov ebx, offset hv_de_div
"#,
    check_eq_asm!("eax", "ebx", "the #DE handler saw the DIV's IP"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT
    HV_REAL_HANDLER hv_de_handler, 0x6004, 2

    // #UD and #BP in real mode go through IVT entries 6 and 3. #UD is a fault (IP of the
    // UD2), #BP a trap (IP after the INT3): each handler records the IP and returns past.
    .global hv_exc_ud_bp_real16
hv_exc_ud_bp_real16:
    HV_SET_IVT 6, hv_ud_handler
    HV_SET_IVT 3, hv_bp_handler
hv_ud_at:
    ud2
    mov eax, dword ptr ds:[0x6008]
    mov ebx, offset hv_ud_at
"#,
    check_eq_asm!("eax", "ebx", "the #UD handler saw the UD2's IP"),
    r#"
    int3
hv_bp_after:
    mov eax, dword ptr ds:[0x600c]
    mov ebx, offset hv_bp_after
"#,
    check_eq_asm!("eax", "ebx", "the #BP handler saw the IP after INT3"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT
    HV_REAL_HANDLER hv_ud_handler, 0x6008, 2
    HV_REAL_HANDLER hv_bp_handler, 0x600c, 0

    // INTO raises #OF through IVT entry 4 only when OF is set, as a trap: the handler sees
    // the IP after the INTO.
    .global hv_exc_of_real16
hv_exc_of_real16:
    HV_SET_IVT 4, hv_of16_handler
    mov dword ptr ds:[0x6010], 0
    mov al, 0x10
    add al, 1
    into
    mov eax, dword ptr ds:[0x6010]
"#,
    check_eq_asm!("eax", "0", "INTO with OF clear raised #OF"),
    r#"
    mov al, 0x7f
    add al, 1
    into
hv_of16_after:
    mov eax, dword ptr ds:[0x6010]
    mov ebx, offset hv_of16_after
"#,
    check_eq_asm!("eax", "ebx", "the #OF handler saw the IP after INTO"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT
    HV_REAL_HANDLER hv_of16_handler, 0x6010, 0

    // BOUND raises #BR through IVT entry 5 when the index is outside the bounds, as a
    // fault: the handler sees the BOUND's IP. BOUND AX, [disp16] is 62 06 disp16, 4 bytes
    // (spelled out: assemblers disagree on its operand syntax).
    .global hv_exc_br_real16
hv_exc_br_real16:
    HV_SET_IVT 5, hv_br16_handler
    mov dword ptr ds:[0x6014], 0
    mov ax, 20
    .byte 0x62, 0x06
    .word hv_bounds16
    mov eax, dword ptr ds:[0x6014]
"#,
    check_eq_asm!("eax", "0", "BOUND of an index at the upper bound raised #BR"),
    r#"
    mov ax, 21
hv_br16_at:
    .byte 0x62, 0x06
    .word hv_bounds16
    mov eax, dword ptr ds:[0x6014]
    mov ebx, offset hv_br16_at
"#,
    check_eq_asm!("eax", "ebx", "the #BR handler saw the BOUND's IP"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT
    HV_REAL_HANDLER hv_br16_handler, 0x6014, 4
    .pushsection .data.low, "aw"
hv_bounds16:
    .word 10, 20
    .popsection

    // A 4-byte load at offset 0xfffd crosses DS's 64 KiB limit: #GP through IVT entry 13,
    // with no error code in real mode, the saved IP the load's.
    .global hv_exc_gp_limit_real16
hv_exc_gp_limit_real16:
    HV_SET_IVT 13, hv_gp16_handler
    mov dword ptr ds:[0x6018], 0
    mov eax, dword ptr ds:[0xfffc]
    mov eax, dword ptr ds:[0x6018]
"#,
    check_eq_asm!("eax", "0", "a 4-byte load ending at the limit raised #GP"),
    r#"
hv_gp16_at:
    mov eax, dword ptr ds:[0xfffd]
hv_gp16_resume:
    mov eax, dword ptr ds:[0x6018]
    mov ebx, offset hv_gp16_at
"#,
    check_eq_asm!("eax", "ebx", "the #GP handler saw the load's IP"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT
    .set HV_GP16_LEN, hv_gp16_resume - hv_gp16_at
    HV_REAL_HANDLER hv_gp16_handler, 0x6018, "offset HV_GP16_LEN"

    .global hv_rdtsc_monotonic_real16
hv_rdtsc_monotonic_real16:
"#,
    rdtsc_monotonic_body!(),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    .global hv_cpuid_kvm_signature_real16
hv_cpuid_kvm_signature_real16:
"#,
    kvm_signature_body!(),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    .code32
    .global hv_boot_prot32
hv_boot_prot32:
    mov eax, cr0
    and eax, 0x80000001
"#,
    check_eq_asm!("eax", "1", "CR0.PE must be set and CR0.PG clear"),
    r#"
    mov ax, cs
    movzx eax, ax
"#,
    check_eq_asm!("eax", "0x18", "CS must be the harness's 32-bit code selector"),
    r#"
    // A flat segment reaches above 1 MiB without paging.
    mov dword ptr [0x300000], 0xcafef00d
    mov eax, dword ptr [0x300000]
"#,
    check_eq_asm!("eax", "0xcafef00d", "flat 32-bit data access above 1 MiB"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    .global hv_mmio_widths_prot32
hv_mmio_widths_prot32:
    mov byte ptr [0xc0000000], 0x11
    mov word ptr [0xc0000002], 0x4433
    mov dword ptr [0xc0000004], 0x88776655
    mov eax, dword ptr [0xc0000000]
"#,
    check_eq_asm!("eax", "0x44330011", "dword read after byte and word writes"),
    r#"
    movzx eax, word ptr [0xc0000005]
"#,
    check_eq_asm!("eax", "0x7766", "unaligned word read of the MMIO register file"),
    r#"
    movzx eax, byte ptr [0xc0000107]
"#,
    check_eq_asm!("eax", "0x88", "the register file mirrors every 256 bytes"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    .global hv_exc_de_prot32
hv_exc_de_prot32:
    lidt [hv32_idtr]
    HV32_ARM hv32_de_resume
    xor ecx, ecx
    mov eax, 1
    xor edx, edx
hv32_de_at:
    div ecx
hv32_de_resume:
"#,
    expect_exception32!("0", "0", "hv32_de_at", "DIV by zero"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    .global hv_exc_ud_prot32
hv_exc_ud_prot32:
    lidt [hv32_idtr]
    HV32_ARM hv32_ud_resume
hv32_ud_at:
    ud2
hv32_ud_resume:
"#,
    expect_exception32!("6", "0", "hv32_ud_at", "UD2"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    .global hv_exc_bp_prot32
hv_exc_bp_prot32:
    lidt [hv32_idtr]
    HV32_ARM hv32_bp_after
    int3
hv32_bp_after:
"#,
    expect_exception32!("3", "0", "hv32_bp_after", "INT3"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    .global hv_exc_of_prot32
hv_exc_of_prot32:
    lidt [hv32_idtr]
    HV32_ARM hv32_of_none
    mov al, 0x10
    add al, 1
    into
hv32_of_none:
"#,
    expect_no_exception32!("INTO with OF clear"),
    r#"
    HV32_ARM hv32_of_after
    mov al, 0x7f
    add al, 1
    into
hv32_of_after:
"#,
    expect_exception32!("4", "0", "hv32_of_after", "INTO with OF set"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // BOUND EAX, [disp32] is 62 05 disp32 (spelled out: assemblers disagree on its syntax).
    .global hv_exc_br_prot32
hv_exc_br_prot32:
    lidt [hv32_idtr]
    HV32_ARM hv32_br_none
    mov eax, 20
    .byte 0x62, 0x05
    .long hv_bounds32
hv32_br_none:
"#,
    expect_no_exception32!("BOUND of an index at the upper bound"),
    r#"
    HV32_ARM hv32_br_resume
    mov eax, 21
hv32_br_at:
    .byte 0x62, 0x05
    .long hv_bounds32
hv32_br_resume:
"#,
    expect_exception32!("5", "0", "hv32_br_at", "BOUND of an index above the upper bound"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT
    .pushsection .data.low, "aw"
    .balign 4
hv_bounds32:
    .long 10, 20
    .popsection

    // The harness's GDT has 8 entries (limit 0x3f), so selector 0x48 is beyond it.
    .global hv_exc_gp_selector_prot32
hv_exc_gp_selector_prot32:
    lidt [hv32_idtr]
    mov ax, 0x48
    HV32_ARM hv32_gpsel_resume
hv32_gpsel_at:
    mov ds, ax
hv32_gpsel_resume:
"#,
    expect_exception32!("13", "0x48", "hv32_gpsel_at", "MOV DS of a selector beyond the GDT limit"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // INT 0x30 through a 32-bit interrupt gate: the stub records it and IRETD returns to the
    // instruction after the INT.
    .global hv_int_idt_prot32
hv_int_idt_prot32:
    lidt [hv32_idtr]
    HV32_ARM hv32_int_after
    int 0x30
hv32_int_after:
"#,
    expect_exception32!("0x30", "0", "hv32_int_after", "INT 0x30"),
    r#"
    mov eax, dword ptr [hv32_cs]
"#,
    check_eq_asm!("eax", "0x18", "the handler's frame holds the interrupted CS"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // Descriptor 0x20 (flat data, DPL 3) made not present: a DS load of it at CPL0 passes
    // the privilege checks and raises #NP(0x20).
    .global hv_exc_np_selector_prot32
hv_exc_np_selector_prot32:
    lidt [hv32_idtr]
    and byte ptr [0x1000 + 0x20 + 5], 0x7f
    mov ax, 0x20
    HV32_ARM hv32_np_resume
hv32_np_at:
    mov ds, ax
hv32_np_resume:
    or byte ptr [0x1000 + 0x20 + 5], 0x80
"#,
    expect_exception32!("11", "0x20", "hv32_np_at", "MOV DS of a not-present data segment"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // MOV SS at CPL0: RPL 3 (0x23) or DPL 3 (0x20) raise #GP(selector), the null selector
    // #GP(0); descriptor 0x20 made DPL 0 and not present raises #SS(0x20). The error code
    // holds the selector's index and TI, its low two bits are EXT and IDT, never the RPL:
    // 0x20 for selector 0x23 too.
    .global hv_ss_load_prot32
hv_ss_load_prot32:
    lidt [hv32_idtr]
    mov ax, 0x23
    HV32_ARM hv32_ss_rpl_resume
hv32_ss_rpl_at:
    mov ss, ax
hv32_ss_rpl_resume:
"#,
    expect_exception32!("13", "0x20", "hv32_ss_rpl_at", "MOV SS with RPL 3 at CPL0"),
    r#"
    mov ax, 0x20
    HV32_ARM hv32_ss_dpl_resume
hv32_ss_dpl_at:
    mov ss, ax
hv32_ss_dpl_resume:
"#,
    expect_exception32!("13", "0x20", "hv32_ss_dpl_at", "MOV SS of a DPL 3 segment at CPL0"),
    r#"
    xor eax, eax
    HV32_ARM hv32_ss_null_resume
hv32_ss_null_at:
    mov ss, ax
hv32_ss_null_resume:
"#,
    expect_exception32!("13", "0", "hv32_ss_null_at", "MOV SS of the null selector"),
    r#"
    mov byte ptr [0x1000 + 0x20 + 5], 0x13
    mov ax, 0x20
    HV32_ARM hv32_ss_np_resume
hv32_ss_np_at:
    mov ss, ax
hv32_ss_np_resume:
    mov byte ptr [0x1000 + 0x20 + 5], 0xf3
"#,
    expect_exception32!("12", "0x20", "hv32_ss_np_at", "MOV SS of a not-present data segment"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // IRET with EFLAGS.NT set returns to the task in the current TSS's previous-task link
    // (offset 0 of the TSS TR holds). A link of 0x10, a data segment and no TSS, raises
    // #TS(0x10) at the IRET. NT is cleared again afterwards.
    .global hv_exc_ts_iret_nt_prot32
hv_exc_ts_iret_nt_prot32:
    lidt [hv32_idtr]
    mov dword ptr [0x3000], 0x10
    pushfd
    or dword ptr [esp], 0x4000
    popfd
    HV32_ARM hv32_ts_resume
hv32_ts_at:
    iretd
hv32_ts_resume:
    pushfd
    and dword ptr [esp], 0xffffbfff
    popfd
"#,
    expect_exception32!("10", "0x10", "hv32_ts_at", "IRET with NT to a link that is no TSS"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // JMP ptr16:32 (EA) and CALL ptr16:32 (9A) to code selector 0x18; the call pushes CS and
    // EIP, RETF pops them (spelled out: assemblers disagree on the far-pointer syntax).
    .global hv_far_call_jmp_prot32
hv_far_call_jmp_prot32:
    lidt [hv32_idtr]
    .byte 0xea
    .long hv32_fj_target
    .word 0x18
    ud2
hv32_fj_target:
    .byte 0x9a
    .long hv32_fc_target
    .word 0x18
hv32_fc_return:
    mov eax, esi
    mov ebx, offset hv32_fc_return
"#,
    check_eq_asm!("eax", "ebx", "far CALL pushed the return EIP"),
    r#"
    mov eax, edi
"#,
    check_eq_asm!("eax", "0x18", "far CALL pushed CS"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT
hv32_fc_target:
    mov esi, dword ptr [esp]
    movzx edi, word ptr [esp + 4]
    retf

    // A 32-bit call gate (type 0xC, DPL 0, no parameters; SDM Vol. 3A 5.8.3, Figure 5-8)
    // in GDT slot 0x38, free in 32-bit mode (it holds the upper half of the 64-bit TSS
    // descriptor, 0 here), to code selector 0x18. A far CALL through it ignores its own
    // offset, jumps to the gate's and pushes CS and EIP at the same privilege level.
    .global hv_call_gate_prot32
hv_call_gate_prot32:
    lidt [hv32_idtr]
    mov eax, offset hv32_gate_target
    or eax, 0x180000
    mov dword ptr [0x1038], eax
    mov dword ptr [0x103c], 0x8c00
    xor esi, esi
    .byte 0x9a
    .long 0
    .word 0x38
hv32_gate_return:
    mov eax, esi
    mov ebx, offset hv32_gate_return
"#,
    check_eq_asm!("eax", "ebx", "CALL through the gate pushed the return EIP"),
    r#"
    mov eax, edi
"#,
    check_eq_asm!("eax", "0x18", "CALL through the gate pushed the caller's CS"),
    r#"
    mov eax, ebp
"#,
    check_eq_asm!("eax", "0x18", "the gate's target runs with CS from the gate"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT
hv32_gate_target:
    mov esi, dword ptr [esp]
    movzx edi, word ptr [esp + 4]
    mov bp, cs
    movzx ebp, bp
    retf

    .global hv_iret_prot32
hv_iret_prot32:
    lidt [hv32_idtr]
    xor esi, esi
    push 0x43
    push 0x18
    push offset hv32_iret_target
    iretd
    ud2
hv32_iret_target:
    pushfd
    pop eax
    and eax, 0x41
"#,
    check_eq_asm!("eax", "0x41", "IRETD loaded the pushed EFLAGS: CF and ZF"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // GDT slot 0x38 is free in 32-bit mode (see hv_call_gate_prot32): the segment cases
    // put their data segments there and load ES with it.
    // A data segment of limit 0xfff (G = 0): a 4-byte load at 0xffc is the last one in
    // it, one at 0xffd runs past the limit.
    .global hv_exc_gp_limit_prot32
hv_exc_gp_limit_prot32:
    lidt [hv32_idtr]
    mov dword ptr [0x1038], 0x00000fff
    mov dword ptr [0x103c], 0x00409300
    mov ax, 0x38
    mov es, ax
    HV32_ARM hv32_lim_none
    mov eax, dword ptr es:[0xffc]
hv32_lim_none:
"#,
    expect_no_exception32!("a 4-byte load ending at the limit"),
    r#"
    HV32_ARM hv32_lim_resume
hv32_lim_at:
    mov eax, dword ptr es:[0xffd]
hv32_lim_resume:
"#,
    expect_exception32!("13", "0", "hv32_lim_at", "a 4-byte load past the limit"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // An expand-down data segment of limit 0xfff with B = 1 spans offsets 0x1000 to
    // 0xffffffff: a load at 0x1000 reads the same memory as DS, one at 0xffc faults.
    .global hv_expand_down_prot32
hv_expand_down_prot32:
    lidt [hv32_idtr]
    mov dword ptr [0x1038], 0x00000fff
    mov dword ptr [0x103c], 0x00409700
    mov ax, 0x38
    mov es, ax
    mov dword ptr [0x6020], 0x5eed1234
    HV32_ARM hv32_down_none
    mov ebx, dword ptr es:[0x6020]
hv32_down_none:
"#,
    expect_no_exception32!("a load above the expand-down limit"),
    check_eq_asm!("ebx", "0x5eed1234", "an expand-down segment with base 0 reads the same memory"),
    r#"
    HV32_ARM hv32_down_resume
hv32_down_at:
    mov eax, dword ptr es:[0xffc]
hv32_down_resume:
"#,
    expect_exception32!("13", "0", "hv32_down_at", "a load at or below the expand-down limit"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    // A read-only data segment (type 1) reads but refuses writes, and so does a code
    // segment through a CS override: #GP(0) for each write.
    .global hv_segment_rights_prot32
hv_segment_rights_prot32:
    lidt [hv32_idtr]
    mov dword ptr [0x1038], 0x0000ffff
    mov dword ptr [0x103c], 0x00cf9100
    mov ax, 0x38
    mov es, ax
    mov dword ptr [0x6024], 0x600d600d
    HV32_ARM hv32_ro_none
    mov ebx, dword ptr es:[0x6024]
hv32_ro_none:
"#,
    expect_no_exception32!("a load through a read-only data segment"),
    check_eq_asm!("ebx", "0x600d600d", "the read-only segment reads memory"),
    r#"
    HV32_ARM hv32_ro_resume
hv32_ro_at:
    mov dword ptr es:[0x6024], 1
hv32_ro_resume:
"#,
    expect_exception32!("13", "0", "hv32_ro_at", "a store through a read-only data segment"),
    r#"
    HV32_ARM hv32_cs_resume
hv32_cs_at:
    mov dword ptr cs:[0x6024], 2
hv32_cs_resume:
"#,
    expect_exception32!("13", "0", "hv32_cs_at", "a store through CS"),
    r#"
    mov eax, dword ptr [0x6024]
"#,
    check_eq_asm!("eax", "0x600d600d", "the refused stores changed nothing"),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    .global hv_rdtsc_monotonic_prot32
hv_rdtsc_monotonic_prot32:
"#,
    rdtsc_monotonic_body!(),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT

    .global hv_cpuid_kvm_signature_prot32
hv_cpuid_kvm_signature_prot32:
"#,
    kvm_signature_body!(),
    r#"
    HV_REPORT hv_low_pass
    HV_HALT
    .code64
"#,
    magic = const proto::MAGIC,
    kind_verdict = const proto::KIND_VERDICT,
    status_pass = const proto::STATUS_PASS,
    status_fail = const proto::STATUS_FAIL,
    has_values = const proto::VERDICT_HAS_VALUES
);

unsafe extern "C" {
    fn hv_exc_of_real16();
    fn hv_exc_br_real16();
    fn hv_exc_gp_limit_real16();
    fn hv_rdtsc_monotonic_real16();
    fn hv_cpuid_kvm_signature_real16();
    fn hv_exc_de_prot32();
    fn hv_exc_ud_prot32();
    fn hv_exc_bp_prot32();
    fn hv_iret_prot32();
    fn hv_exc_of_prot32();
    fn hv_exc_br_prot32();
    fn hv_exc_gp_selector_prot32();
    fn hv_int_idt_prot32();
    fn hv_exc_np_selector_prot32();
    fn hv_ss_load_prot32();
    fn hv_exc_ts_iret_nt_prot32();
    fn hv_far_call_jmp_prot32();
    fn hv_call_gate_prot32();
    fn hv_exc_gp_limit_prot32();
    fn hv_expand_down_prot32();
    fn hv_segment_rights_prot32();
    fn hv_rdtsc_monotonic_prot32();
    fn hv_cpuid_kvm_signature_prot32();
    fn hv_exc_ud_bp_real16();
    fn hv_int_ivt_real16();
    fn hv_exc_de_real16();
    fn hv_boot_real16();
    fn hv_port_widths_real16();
    fn hv_boot_prot32();
    fn hv_mmio_widths_prot32();
}

test_case! {
    /// The vCPU starts in real mode: CR0.PE clear, CS 0, segment*16+offset addressing.
    name = "cpu::boot::real16", mode = Real16, path = Hw;
    entry = hv_boot_real16
}

test_case! {
    /// IN and OUT of 8, 16 and 32 bits in real mode reach the host's port device byte-exact.
    name = "io::port_widths::real16", mode = Real16, path = Full;
    entry = hv_port_widths_real16
}

test_case! {
    /// The vCPU starts in flat 32-bit protected mode: CR0.PE set, PG clear, CS 0x18.
    name = "cpu::boot::prot32", mode = Prot32, path = Hw;
    entry = hv_boot_prot32
}

test_case! {
    /// MMIO reads and writes of 8, 16 and 32 bits without paging reach the host device.
    name = "io::mmio_widths::prot32", mode = Prot32, path = Full;
    entry = hv_mmio_widths_prot32
}

test_case! {
    /// INT n in real mode vectors through the IVT and IRET returns (SDM Vol. 3A, 20.1.4).
    name = "cpu::int_ivt::real16", mode = Real16, path = Hw;
    entry = hv_int_ivt_real16
}

test_case! {
    /// DIV by zero in real mode raises #DE through IVT entry 0 with the DIV's IP saved
    /// (SDM Vol. 3A, 20.1.4 and 6.15).
    name = "cpu::exc_de::real16", mode = Real16, path = Hw;
    entry = hv_exc_de_real16
}

test_case! {
    /// UD2 raises #UD (a fault) and INT3 raises #BP (a trap) through the IVT in real mode
    /// (SDM Vol. 3A, 20.1.4 and 6.15).
    name = "cpu::exc_ud_bp::real16", mode = Real16, path = Hw;
    entry = hv_exc_ud_bp_real16
}

test_case! {
    /// INTO in real mode raises #OF through IVT entry 4 when OF is set, as a trap, and
    /// nothing when OF is clear (SDM Vol. 2A INTO, and Vol. 3A 20.1.4).
    name = "cpu::exc_of::real16", mode = Real16, path = Hw;
    entry = hv_exc_of_real16
}

test_case! {
    /// BOUND in real mode raises #BR through IVT entry 5, as a fault, for an index above the
    /// upper bound, and nothing for one equal to it (SDM Vol. 2A BOUND, and Vol. 3A 20.1.4).
    name = "cpu::exc_br::real16", mode = Real16, path = Hw;
    entry = hv_exc_br_real16
}

test_case! {
    /// A real-mode load that runs past DS's 64 KiB limit raises #GP through IVT entry 13, a
    /// load that ends at the limit does not (SDM Vol. 2B MOV, "Real-Address Mode
    /// Exceptions", and Vol. 3A 20.1.1).
    name = "cpu::exc_gp_limit::real16", mode = Real16, path = Hw;
    entry = hv_exc_gp_limit_real16
}

test_case! {
    /// RDTSC in real mode never goes backwards over 64 reads (SDM Vol. 3B, 18.17).
    name = "cpu::rdtsc_monotonic::real16", mode = Real16, path = Hw;
    entry = hv_rdtsc_monotonic_real16
}

test_case! {
    /// CPUID in real mode reads the KVM signature leaf 0x40000000
    /// (Documentation/virt/kvm/x86/cpuid.rst; SDM Vol. 2A, CPUID).
    name = "cpu::cpuid_kvm_signature::real16", mode = Real16, path = Para,
        requires = hvprobe_rt::abi::requires::KVM_PV;
    entry = hv_cpuid_kvm_signature_real16
}

test_case! {
    /// DIV by zero in 32-bit protected mode raises #DE through a 32-bit interrupt gate with
    /// the DIV's EIP saved (SDM Vol. 3A 6.15, Interrupt 0).
    name = "cpu::exc_de::prot32", mode = Prot32, path = Hw;
    entry = hv_exc_de_prot32
}

test_case! {
    /// UD2 raises #UD in 32-bit protected mode, a fault: the saved EIP is the UD2's
    /// (SDM Vol. 3A 6.15, Interrupt 6).
    name = "cpu::exc_ud::prot32", mode = Prot32, path = Hw;
    entry = hv_exc_ud_prot32
}

test_case! {
    /// INT3 raises #BP in 32-bit protected mode, a trap: the saved EIP follows the INT3
    /// (SDM Vol. 3A 6.15, Interrupt 3).
    name = "cpu::exc_bp::prot32", mode = Prot32, path = Hw;
    entry = hv_exc_bp_prot32
}

test_case! {
    /// IRETD at the same privilege level pops EIP, CS and EFLAGS: it resumes at the EIP
    /// pushed, with the pushed flags (CF and ZF set here) (SDM Vol. 2A IRET,
    /// "RETURN-TO-SAME-PRIVILEGE-LEVEL").
    name = "cpu::iret::prot32", mode = Prot32, path = Hw;
    entry = hv_iret_prot32
}

test_case! {
    /// INTO in 32-bit protected mode raises #OF when OF is set, as a trap, and nothing when
    /// OF is clear (SDM Vol. 2A INTO, and Vol. 3A 6.15, Interrupt 4).
    name = "cpu::exc_of::prot32", mode = Prot32, path = Hw;
    entry = hv_exc_of_prot32
}

test_case! {
    /// BOUND in 32-bit protected mode raises #BR, a fault, for an index above the upper
    /// bound, and nothing for one equal to it (SDM Vol. 2A BOUND, and Vol. 3A 6.15,
    /// Interrupt 5).
    name = "cpu::exc_br::prot32", mode = Prot32, path = Hw;
    entry = hv_exc_br_prot32
}

test_case! {
    /// Loading DS with a selector beyond the GDT limit raises #GP(selector) in 32-bit
    /// protected mode (SDM Vol. 2B MOV, and Vol. 3A 6.15, Interrupt 13).
    name = "cpu::exc_gp_selector::prot32", mode = Prot32, path = Hw;
    entry = hv_exc_gp_selector_prot32
}

test_case! {
    /// INT n in 32-bit protected mode vectors through a 32-bit interrupt gate of the IDT
    /// with CS and EIP on the stack, and IRETD returns after the INT (SDM Vol. 3A 6.12.1).
    name = "cpu::int_idt::prot32", mode = Prot32, path = Hw;
    entry = hv_int_idt_prot32
}

test_case! {
    /// Loading DS with a selector whose descriptor is not present raises #NP(selector) in
    /// 32-bit protected mode (SDM Vol. 2B MOV, and Vol. 3A 6.15, Interrupt 11).
    name = "cpu::exc_np_selector::prot32", mode = Prot32, path = Hw;
    entry = hv_exc_np_selector_prot32
}

test_case! {
    /// MOV SS takes only a present writable data segment with RPL = DPL = CPL: RPL or DPL
    /// 3 at CPL0 raise #GP(selector), the null selector #GP(0), a not-present one
    /// #SS(selector), the error code without the RPL (SDM Vol. 2B MOV, "Operation", and
    /// Vol. 3A 6.13 and 6.15, Interrupt 12).
    name = "cpu::ss_load::prot32", mode = Prot32, path = Hw;
    entry = hv_ss_load_prot32
}

test_case! {
    /// IRET with EFLAGS.NT set is a task return; when the previous-task link of the current
    /// TSS selects a descriptor that is no TSS it raises #TS(link selector) at the IRET
    /// (SDM Vol. 2A IRET, "TASK-RETURN", and Vol. 3A 6.15, Interrupt 10).
    name = "cpu::exc_ts_iret_nt::prot32", mode = Prot32, path = Hw;
    entry = hv_exc_ts_iret_nt_prot32
}

test_case! {
    /// Far JMP and far CALL to a code segment in 32-bit protected mode: the CALL pushes CS
    /// and EIP and RETF returns through them (SDM Vol. 3A 5.8.1 and 5.8.2; Vol. 2A CALL).
    name = "cpu::far_call_jmp::prot32", mode = Prot32, path = Hw;
    entry = hv_far_call_jmp_prot32
}

test_case! {
    /// A far CALL through a 32-bit call gate in the GDT runs the gate's target with the
    /// gate's code selector and pushes the caller's CS and EIP at the same privilege level
    /// (SDM Vol. 3A 5.8.3 and 5.8.4; Vol. 2A CALL).
    name = "cpu::call_gate::prot32", mode = Prot32, path = Hw;
    entry = hv_call_gate_prot32
}

test_case! {
    /// RDTSC in 32-bit protected mode never goes backwards over 64 reads (SDM Vol. 3B,
    /// 18.17).
    name = "cpu::rdtsc_monotonic::prot32", mode = Prot32, path = Hw;
    entry = hv_rdtsc_monotonic_prot32
}

test_case! {
    /// CPUID in 32-bit protected mode reads the KVM signature leaf 0x40000000
    /// (Documentation/virt/kvm/x86/cpuid.rst; SDM Vol. 2A, CPUID).
    name = "cpu::cpuid_kvm_signature::prot32", mode = Prot32, path = Para,
        requires = hvprobe_rt::abi::requires::KVM_PV;
    entry = hv_cpuid_kvm_signature_prot32
}

test_case! {
    /// A load that runs past a data segment's limit raises #GP(0) in 32-bit protected
    /// mode, one that ends at the limit does not (SDM Vol. 3A 5.3, and Vol. 2B MOV,
    /// "#GP(0) if a memory operand effective address is outside the ... segment limit").
    name = "cpu::exc_gp_limit::prot32", mode = Prot32, path = Hw;
    entry = hv_exc_gp_limit_prot32
}

test_case! {
    /// An expand-down data segment's valid offsets lie above its limit: a load above it
    /// reads memory, one at or below it raises #GP(0) (SDM Vol. 3A 5.3 and 3.4.5.1).
    name = "cpu::expand_down::prot32", mode = Prot32, path = Hw;
    entry = hv_expand_down_prot32
}

test_case! {
    /// A read-only data segment reads but a store through it raises #GP(0), and so does a
    /// store through CS, a code segment (SDM Vol. 3A 5.4 and 3.4.5.1, Vol. 2B MOV).
    name = "cpu::segment_rights::prot32", mode = Prot32, path = Hw;
    entry = hv_segment_rights_prot32
}
