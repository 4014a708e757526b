//! Cases that run in 16-bit real mode or 32-bit protected mode, written in assembly
//! (the Rust target only emits 64-bit code). They report through the same protocol:
//! `HV_CHECK_EQ` fills a static verdict with the line, the compared values and a text.

use core::arch::global_asm;

use hvprobe_rt::test_case;

/// `HV_CHECK_EQ actual_reg32, expected_imm, "text"` with this source line filled in.
macro_rules! check_eq_asm {
    ($act:literal, $exp:literal, $text:literal) => {
        concat!("HV_CHECK_EQ ", $act, ", ", $exp, ", ", line!(), ", \"", $text, "\"\n")
    };
}

global_asm!(
    r#"
    .section .data.low, "aw"
    .balign 8
hv_low_pass:
    .long 0x4d505648, 2, 0, 0
    .quad 0, 0, 0, 0
    .long 0, 0
    .quad 0, 0, 0
hv_low_fail:
    .long 0x4d505648, 2, 1, 0
    .quad hv_low_file, hv_low_file_end - hv_low_file
    .quad 0, 0
    .long 1, 0
    .quad 0, 0, 0
hv_low_file:
    .ascii "payload/src/tests/low.rs"
hv_low_file_end:

    .macro HV_REPORT msg
    mov dx, 0x500
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
    mov dword ptr [hv_low_fail + 64], \act
    mov dword ptr [hv_low_fail + 56], \exp
    mov dword ptr [hv_low_fail + 12], \line
    mov dword ptr [hv_low_fail + 32], offset .Lmsg\@
    mov dword ptr [hv_low_fail + 40], offset .Llen\@
    HV_REPORT hv_low_fail
    HV_HALT
.Lok\@:
    .endm

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

    .section .text.low, "ax"
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
    .code64
"#
);

unsafe extern "C" {
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
