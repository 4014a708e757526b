//! Extended state: SSE and AVX arithmetic with value checks at CPL0 and CPL3, XSAVE and
//! its variants round-tripping the registers, and the rules that make SSE and AVX fault:
//! CR0.TS (#NM), CR0.EM (#UD), unmasked SIMD exceptions (#XM, or #UD without
//! CR4.OSXMMEXCPT), XCR0 and CR4.OSXSAVE for VEX, XSETBV's own checks. SDM Vol. 1 ch. 10,
//! 13 and 14, Vol. 2 for each instruction, Vol. 3A 2.5 and 6.15; APM Vol. 2 11.

use core::arch::asm;
use hvprobe_rt::abi::CpuidClear;
use hvprobe_rt::cpu;
use hvprobe_rt::exception::{self, Exception};
use hvprobe_rt::user::call_at_cpl3;
use hvprobe_rt::{catch, check, check_eq, check_exception, check_no_exception, skip, test_case};

use super::cpu::{call_at, table_reg, with_cr0};

const CR0_EM: u64 = 1 << 2;
const CR0_TS: u64 = 1 << 3;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_OSXSAVE: u64 = 1 << 18;
const XCR0_X87_SSE_AVX: u64 = 0b111;
const MXCSR_DEFAULT: u32 = 0x1f80;
/// MXCSR.ZM, the divide-by-zero mask (SDM Vol. 1 10.2.3).
const MXCSR_ZM: u32 = 1 << 9;
const XM: u8 = 19;

/// Whether the table KVM offered has every bit of `mask`.
fn offered(leaf: u32, subleaf: u32, reg: u32, mask: u32) -> bool {
    table_reg(leaf, subleaf, reg) & mask == mask
}

fn set_cr4(bits: u64, on: bool) {
    let cr4 = cpu::read_cr4();
    let new = if on { cr4 | bits } else { cr4 & !bits };
    // SAFETY: the bits set here enable SSE, SIMD exceptions or XSAVE; none changes memory.
    unsafe { core::arch::asm!("mov cr4, {0}", in(reg) new, options(nostack)) };
}

/// SSE on: CR4.OSFXSR and OSXMMEXCPT, as an OS that supports SSE sets them.
fn enable_sse() {
    set_cr4(CR4_OSFXSR | CR4_OSXMMEXCPT, true);
}

/// AVX on: SSE, CR4.OSXSAVE and XCR0 = x87|SSE|AVX. Skips where KVM offers no AVX.
fn enable_avx() {
    if !offered(1, 0, CpuidClear::ECX, 1 << 26 | 1 << 28) || !offered(0xd, 0, CpuidClear::EAX, 0b111) {
        skip!("KVM does not offer XSAVE with AVX state");
    }
    enable_sse();
    set_cr4(CR4_OSXSAVE, true);
    // SAFETY: XCR0 = 7 is valid where CPUID.(0DH,0):EAX lists the three components.
    unsafe { core::arch::asm!("xsetbv", in("ecx") 0, in("eax") XCR0_X87_SSE_AVX as u32, in("edx") 0) };
    // A VM exit between enabling AVX and using it, as any OS has (a timer tick, a page
    // fault): XCR0 must survive it. Without it the verdict would depend on whether an
    // interrupt happened to land here.
    let _ = hvprobe_rt::proto::service(hvprobe_rt::abi::proto::service::ECHO_XOR, [1, 2, 0, 0]);
}

/// Inputs and results of the arithmetic, 32-byte aligned for VMOVAPS.
#[repr(C, align(64))]
struct Lanes {
    a: [u32; 8],
    b: [u32; 8],
    out: [[u32; 8]; 6],
}

/// 1.5, 2.0, -1.0, 100.0, 3.0, -2.5, 0.125, 8.0 and 2.25, 0.5, 4.0, 0.25, 1.0, 2.5,
/// 0.875, -8.0 as IEEE single-precision bits.
const A: [u32; 8] =
    [0x3fc0_0000, 0x4000_0000, 0xbf80_0000, 0x42c8_0000, 0x4040_0000, 0xc020_0000, 0x3e00_0000, 0x4100_0000];
const B: [u32; 8] =
    [0x4010_0000, 0x3f00_0000, 0x4080_0000, 0x3e80_0000, 0x3f80_0000, 0x4020_0000, 0x3f60_0000, 0xc100_0000];
/// The square roots of B[0..4] (1.5, sqrt(0.5) rounded to nearest, 2.0, 0.5).
const SQRT_B: [u32; 4] = [0x3fc0_0000, 0x3f35_04f3, 0x4000_0000, 0x3f00_0000];

static mut LANES: Lanes = Lanes { a: A, b: B, out: [[0; 8]; 6] };

fn lanes() -> u64 {
    &raw mut LANES as u64
}

fn reset_lanes() {
    // SAFETY: one case runs at a time on vCPU 0; nothing else touches LANES.
    unsafe { core::ptr::write_volatile(&raw mut LANES.out, [[0; 8]; 6]) };
}

fn out(k: usize) -> [u32; 8] {
    // SAFETY: as above; read after the vector code stored its results.
    unsafe { core::ptr::read_volatile(&raw const LANES.out[k]) }
}

fn add(a: u32, b: u32) -> u32 {
    (f32::from_bits(a) + f32::from_bits(b)).to_bits()
}

fn mul(a: u32, b: u32) -> u32 {
    (f32::from_bits(a) * f32::from_bits(b)).to_bits()
}

/// Runs a sequence at CPL0 inline under catch!, or at CPL3 through its function.
macro_rules! run_seq {
    ($seq:ident, $f:ident, $cpl3:expr) => {
        if $cpl3 { call_at_cpl3($f, lanes()) } else { $seq!(catch, p = in(reg) lanes()) }
    };
}

/// Defines the CPL3 function of a sequence.
macro_rules! seq_fn {
    ($seq:ident, $f:ident) => {
        extern "C" fn $f(p: u64) {
            // SAFETY: `p` is LANES; the vector registers are not used by this soft-float
            // target's code.
            unsafe { $seq!(asm, p = in(reg) p, options(nostack)) };
        }
    };
}

/// The vector code of a case, written once and expanded both inside `catch!` at CPL0
/// (inline: a fault inside a called function would resume with the callee's stack) and
/// inside the function the CPL3 trampoline calls. `$m` is `catch` or `asm`.
macro_rules! sse_seq {
    ($m:ident, $($ops:tt)*) => {
        $m!(
            "movaps xmm0, [{p}]",
            "movaps xmm1, [{p} + 32]",
            "movaps xmm2, xmm0", "addps xmm2, xmm1", "movaps [{p} + 64], xmm2",
            "movaps xmm2, xmm0", "mulps xmm2, xmm1", "movaps [{p} + 96], xmm2",
            "sqrtps xmm2, xmm1", "movaps [{p} + 128], xmm2",
            "movaps xmm2, xmm0", "paddd xmm2, xmm1", "movaps [{p} + 160], xmm2",
            "pshufd xmm2, xmm0, 0x1b", "movaps [{p} + 192], xmm2",
            $($ops)*
        )
    };
}

// ADDPS, MULPS, SQRTPS, PADDD and PSHUFD on the low four lanes (SDM Vol. 2).
seq_fn!(sse_seq, sse_ops);

fn check_sse_results() {
    for i in 0..4 {
        check_eq!(out(0)[i], add(A[i], B[i]), "ADDPS lane {}", i);
        check_eq!(out(1)[i], mul(A[i], B[i]), "MULPS lane {}", i);
        check_eq!(out(2)[i], SQRT_B[i], "SQRTPS lane {}", i);
        check_eq!(out(3)[i], A[i].wrapping_add(B[i]), "PADDD lane {}", i);
        check_eq!(out(4)[i], A[3 - i], "PSHUFD 0x1b lane {}", i);
    }
}

test_case! {
    /// SSE arithmetic at CPL0 gives the IEEE results (SDM Vol. 2 ADDPS, MULPS, SQRTPS,
    /// PADDD, PSHUFD; round to nearest, MXCSR's default).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::sse_arith", cpl = [0, 3], mode = Long64, path = Hw;
    fn sse_arith(cpl3: bool) {
        enable_sse();
        reset_lanes();
        check_no_exception!(run_seq!(sse_seq, sse_ops, cpl3));
        check_sse_results();
    }
}

macro_rules! avx_seq {
    ($m:ident, $($ops:tt)*) => {
        $m!(
            "vmovaps ymm0, [{p}]",
            "vmovaps ymm1, [{p} + 32]",
            "vaddps ymm2, ymm0, ymm1", "vmovaps [{p} + 64], ymm2",
            "vmulps ymm2, ymm0, ymm1", "vmovaps [{p} + 96], ymm2",
            "vperm2f128 ymm2, ymm0, ymm1, 0x21", "vmovaps [{p} + 128], ymm2",
            "vbroadcastss ymm2, dword ptr [{p} + 12]", "vmovaps [{p} + 160], ymm2",
            "vzeroupper",
            $($ops)*
        )
    };
}

// VADDPS, VMULPS (256-bit), VPERM2F128 and VBROADCASTSS (SDM Vol. 2).
seq_fn!(avx_seq, avx_ops);

fn check_avx_results() {
    for i in 0..8 {
        check_eq!(out(0)[i], add(A[i], B[i]), "VADDPS lane {}", i);
        check_eq!(out(1)[i], mul(A[i], B[i]), "VMULPS lane {}", i);
        let perm = if i < 4 { A[i + 4] } else { B[i - 4] };
        check_eq!(out(2)[i], perm, "VPERM2F128 0x21 lane {}", i);
        check_eq!(out(3)[i], A[3], "VBROADCASTSS lane {}", i);
    }
}

test_case! {
    /// AVX arithmetic on all eight lanes at CPL0 (SDM Vol. 2 VADDPS, VMULPS, VPERM2F128,
    /// VBROADCASTSS). Skips where KVM offers no AVX.
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::avx_arith", cpl = [0, 3], mode = Long64, path = Hw;
    fn avx_arith(cpl3: bool) {
        enable_avx();
        reset_lanes();
        check_no_exception!(run_seq!(avx_seq, avx_ops, cpl3));
        check_avx_results();
    }
}

macro_rules! avx2_seq {
    ($m:ident, $($ops:tt)*) => {
        $m!(
            "vmovdqa ymm0, [{p}]",
            "vmovdqa ymm1, [{p} + 32]",
            "vpaddd ymm2, ymm0, ymm1", "vmovdqa [{p} + 64], ymm2",
            "vpermd ymm2, ymm0, ymm0", "vmovdqa [{p} + 96], ymm2",
            "vzeroupper",
            $($ops)*
        )
    };
}

// VPADDD and VPERMD on 256 bits (SDM Vol. 2; AVX2).
seq_fn!(avx2_seq, avx2_ops);

fn avx2_case(at_cpl3: bool) {
    if !offered(7, 0, CpuidClear::EBX, 1 << 5) {
        skip!("KVM does not offer AVX2");
    }
    enable_avx();
    reset_lanes();
    // VPERMD's indices are the low three bits of each lane of the first source (A).
    check_no_exception!(run_seq!(avx2_seq, avx2_ops, at_cpl3));
    for i in 0..8 {
        check_eq!(out(0)[i], A[i].wrapping_add(B[i]), "VPADDD lane {}", i);
        check_eq!(out(1)[i], A[(A[i] & 7) as usize], "VPERMD lane {}", i);
    }
}

test_case! {
    /// AVX2 integer lanes at CPL0. Skips where KVM offers no AVX2.
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::avx2_arith", cpl = [0, 3], mode = Long64, path = Hw;
    fn avx2_arith(cpl3: bool) {
        avx2_case(cpl3);
    }
}

/// An XSAVE area: 4 KiB, 64-byte aligned (SDM Vol. 1 13.4), zeroed before each use so
/// the header's XCOMP_BV and reserved bytes are 0 for XRSTOR.
#[repr(C, align(64))]
struct Area([u8; 4096]);
static mut AREA: Area = Area([0; 4096]);

fn area() -> u64 {
    // SAFETY: one case at a time; zeroing before each use.
    unsafe { core::ptr::write_volatile(&raw mut AREA.0, [0; 4096]) };
    &raw mut AREA as u64
}

fn area_u64(offset: usize) -> u64 {
    // SAFETY: reads the area after the save instruction wrote it.
    unsafe { core::ptr::read_volatile((&raw const AREA as *const u8).add(offset) as *const u64) }
}

/// Loads YMM0 = A and YMM1 = B, saves with `$save` (RFBM = x87|SSE|AVX), zeroes both,
/// restores with XRSTOR and stores them to out[0] and out[1].
macro_rules! save_seq {
    ($m:ident, $save:literal, $($ops:tt)*) => {
        $m!(
            "vmovaps ymm0, [{p}]",
            "vmovaps ymm1, [{p} + 32]",
            $save,
            "vxorps ymm0, ymm0, ymm0",
            "vxorps ymm1, ymm1, ymm1",
            "xrstor [{a}]",
            "vmovaps [{p} + 64], ymm0",
            "vmovaps [{p} + 96], ymm1",
            "vzeroupper",
            $($ops)*
        )
    };
}

macro_rules! save_restore_fn {
    ($name:ident, $save:literal) => {
        extern "C" fn $name(p: u64) {
            let area = area_addr();
            // SAFETY: `p` is LANES and `area` the zeroed XSAVE area; YMM0-1 are free.
            unsafe { save_seq!(asm, $save, p = in(reg) p, a = in(reg) area, in("eax") 7u32, in("edx") 0u32, options(nostack)) };
        }
    };
}

static mut AREA_ADDR: u64 = 0;
fn area_addr() -> u64 {
    // SAFETY: written by the case at CPL0 before the save runs.
    unsafe { core::ptr::read_volatile(&raw const AREA_ADDR) }
}

save_restore_fn!(xsave_ops, "xsave [{a}]");
save_restore_fn!(xsavec_ops, "xsavec [{a}]");

/// Which save instruction a round trip uses.
#[derive(Clone, Copy, PartialEq)]
enum Save {
    Xsave,
    Xsaveopt,
    Xsavec,
}

/// Runs one save/restore round trip and checks the registers came back and the header.
fn save_restore_case(save: Save, at_cpl3: bool) {
    enable_avx();
    reset_lanes();
    let a = area();
    // SAFETY: one case at a time.
    unsafe { core::ptr::write_volatile(&raw mut AREA_ADDR, a) };
    let p = lanes();
    let e = match (save, at_cpl3) {
        (Save::Xsave, true) => call_at_cpl3(xsave_ops, p),
        (Save::Xsavec, true) => call_at_cpl3(xsavec_ops, p),
        (Save::Xsaveopt, true) => unreachable!("XSAVEOPT runs at CPL0 only here"),
        (Save::Xsave, false) => {
            save_seq!(catch, "xsave [{a}]", p = in(reg) p, a = in(reg) a, in("eax") 7u32, in("edx") 0u32)
        }
        (Save::Xsaveopt, false) => {
            save_seq!(catch, "xsaveopt [{a}]", p = in(reg) p, a = in(reg) a, in("eax") 7u32, in("edx") 0u32)
        }
        (Save::Xsavec, false) => {
            save_seq!(catch, "xsavec [{a}]", p = in(reg) p, a = in(reg) a, in("eax") 7u32, in("edx") 0u32)
        }
    };
    let compacted = save == Save::Xsavec;
    check_no_exception!(e);
    check_eq!(out(0), A, "YMM0 after the save, zeroing and XRSTOR");
    check_eq!(out(1), B, "YMM1 after the save, zeroing and XRSTOR");
    // XSAVE header at byte 512: XSTATE_BV, then XCOMP_BV (SDM Vol. 1 13.4.2).
    check_eq!(area_u64(512) & 0b110, 0b110, "XSTATE_BV shows SSE and AVX state saved");
    let xcomp = area_u64(520);
    if compacted {
        check_eq!(xcomp >> 63, 1, "XSAVEC sets XCOMP_BV[63] (compacted format)");
        check_eq!(xcomp & 0b111, 0b111, "XCOMP_BV lists the requested components");
    } else {
        check_eq!(xcomp, 0, "XSAVE in the standard format leaves XCOMP_BV 0");
    }
}

test_case! {
    /// XSAVE and XRSTOR of x87, SSE and AVX state at CPL0 bring YMM0-1 back, and the
    /// header says what was saved (SDM Vol. 1 13.7, 13.8; Vol. 2C XSAVE, XRSTOR).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::xsave_roundtrip", cpl = [0, 3], mode = Long64, path = Hw;
    fn xsave_roundtrip(cpl3: bool) {
        save_restore_case(Save::Xsave, cpl3);
    }
}

test_case! {
    /// XSAVEOPT and XRSTOR at CPL0 (SDM Vol. 2C XSAVEOPT). Skips where CPUID.(0DH,1):EAX[0]
    /// is not offered.
    name = "cpu::xsaveopt_roundtrip::long64", mode = Long64, path = Hw;
    fn xsaveopt_roundtrip() {
        if !offered(0xd, 1, CpuidClear::EAX, 1 << 0) {
            skip!("KVM does not offer XSAVEOPT");
        }
        save_restore_case(Save::Xsaveopt, false);
    }
}

test_case! {
    /// XSAVEC (compacted format) and XRSTOR at CPL0 (SDM Vol. 2C XSAVEC; Vol. 1 13.4.3).
    /// Skips where CPUID.(0DH,1):EAX[1] is not offered.
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::xsavec_roundtrip", cpl = [0, 3], mode = Long64, path = Hw;
    fn xsavec_roundtrip(cpl3: bool) {
        if !offered(0xd, 1, CpuidClear::EAX, 1 << 1) {
            skip!("KVM does not offer XSAVEC");
        }
        save_restore_case(Save::Xsavec, cpl3);
    }
}

test_case! {
    /// Without XSAVES enumerated (CPUID.(0DH,1):EAX[3] cleared), XSAVES raises #UD (SDM
    /// Vol. 2C XSAVES: #UD if CPUID.(EAX=0DH,ECX=1):EAX.XSS[bit 3] = 0).
    name = "cpu::xsaves_absent::long64", mode = Long64, path = Full, cpuid_clear = [(0xd, 1, EAX, 1 << 3)];
    fn xsaves_absent() {
        enable_avx();
        let a = area();
        check_exception!(catch!("xsaves [{0}]", in(reg) a, in("eax") 1u32, in("edx") 0u32), exception::UD, None);
    }
}

extern "C" fn addps_only(_: u64) {
    // SAFETY: XMM0 is not used by this soft-float target's code.
    unsafe { core::arch::asm!("addps xmm0, xmm0", options(nostack, nomem)) };
}

/// ADDPS at CPL3 through the trampoline, or inline under `catch!` at CPL0.
fn addps(at_cpl3: bool) -> Option<Exception> {
    if at_cpl3 { call_at_cpl3(addps_only, 0) } else { catch!("addps xmm0, xmm0") }
}

fn nm_case(at_cpl3: bool) {
    enable_sse();
    let e = with_cr0(CR0_TS, || addps(at_cpl3));
    check!(e.is_some(), "ADDPS with CR0.TS set raised nothing");
    check_exception!(e, exception::NM, None);
    check_no_exception!(addps(at_cpl3));
}

test_case! {
    /// With CR0.TS set, an SSE instruction raises #NM, and runs once TS is clear (SDM
    /// Vol. 3A 2.5 CR0.TS and 6.15 Interrupt 7; Vol. 2 ADDPS).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::sse_nm_ts", cpl = [0, 3], mode = Long64, path = Hw;
    fn sse_nm_ts(cpl3: bool) {
        nm_case(cpl3);
    }
}

test_case! {
    /// With CR0.TS set, a VEX instruction raises #NM too (SDM Vol. 2 VADDPS, Exception
    /// Type 4: #NM if CR0.TS[bit 3] = 1).
    name = "cpu::avx_nm_ts::long64", mode = Long64, path = Hw;
    fn avx_nm_ts() {
        enable_avx();
        let e = with_cr0(CR0_TS, || catch!("vaddps ymm0, ymm0, ymm0", "vzeroupper"));
        check!(e.is_some(), "VADDPS with CR0.TS set raised nothing");
        check_exception!(e, exception::NM, None);
    }
}

fn em_case(at_cpl3: bool) {
    enable_sse();
    let e = with_cr0(CR0_EM, || addps(at_cpl3));
    check!(e.is_some(), "ADDPS with CR0.EM set raised nothing");
    check_exception!(e, exception::UD, None);
}

test_case! {
    /// With CR0.EM set, an SSE instruction raises #UD (SDM Vol. 3A 2.5 CR0.EM; Vol. 2
    /// ADDPS: #UD if CR0.EM[bit 2] = 1).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::sse_ud_em", cpl = [0, 3], mode = Long64, path = Hw;
    fn sse_ud_em(cpl3: bool) {
        em_case(cpl3);
    }
}

/// DIVPS of 1.0 by 0.0 with MXCSR.ZM clear, then MXCSR back to its default (skipped
/// when the DIVPS faults: the case resets MXCSR).
macro_rules! divps_seq {
    ($m:ident, $($ops:tt)*) => {
        $m!(
            "movss xmm0, [{p} + 48]",
            "xorps xmm1, xmm1",
            "ldmxcsr [{m}]",
            "divps xmm0, xmm1",
            "ldmxcsr [{d}]",
            $($ops)*
        )
    };
}

static MXCSR_UNMASK_ZM: u32 = MXCSR_DEFAULT & !MXCSR_ZM;
static MXCSR_DEFAULT_VALUE: u32 = MXCSR_DEFAULT;

extern "C" fn divps_by_zero(p: u64) {
    // SAFETY: `p` is LANES (B[4] is 1.0); XMM0-1 are free.
    unsafe {
        divps_seq!(asm, p = in(reg) p, m = in(reg) &MXCSR_UNMASK_ZM, d = in(reg) &MXCSR_DEFAULT_VALUE, options(nostack))
    };
}

fn divps_cpl0() -> Option<Exception> {
    divps_seq!(catch, p = in(reg) lanes(), m = in(reg) &MXCSR_UNMASK_ZM, d = in(reg) &MXCSR_DEFAULT_VALUE)
}

extern "C" fn reset_mxcsr_at(_: u64) {
    // SAFETY: the default MXCSR masks every exception.
    unsafe { core::arch::asm!("ldmxcsr [{0}]", in(reg) &MXCSR_DEFAULT_VALUE, options(nostack)) };
}

/// Puts MXCSR back to its default after a case that unmasked an exception or tried a
/// reserved bit, at the privilege level the case used: the CPL3 variants must not
/// depend on LDMXCSR working at CPL0 (on PVM it does not: state::restore_sse::long64).
fn reset_mxcsr(at_cpl3: bool) {
    if at_cpl3 {
        check_no_exception!(call_at_cpl3(reset_mxcsr_at, 0));
    } else {
        reset_mxcsr_at(0);
    }
}

fn xm_case(at_cpl3: bool) {
    enable_sse();
    let e = if at_cpl3 { call_at_cpl3(divps_by_zero, lanes()) } else { divps_cpl0() };
    reset_mxcsr(at_cpl3);
    check!(e.is_some(), "DIVPS by zero with MXCSR.ZM clear raised nothing");
    check_exception!(e, XM, None);
}

test_case! {
    /// An unmasked SIMD divide-by-zero with CR4.OSXMMEXCPT set raises #XM (SDM Vol. 3A
    /// 6.15 Interrupt 19; Vol. 1 11.5.1; APM Vol. 2 8.2.20).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::sse_xm", cpl = [0, 3], mode = Long64, path = Hw;
    fn sse_xm(cpl3: bool) {
        xm_case(cpl3);
    }
}

test_case! {
    /// The same unmasked exception with CR4.OSXMMEXCPT clear raises #UD instead (SDM
    /// Vol. 3A 2.5 CR4.OSXMMEXCPT and 6.15 Interrupt 19).
    name = "cpu::sse_xm_no_osxmmexcpt::long64", mode = Long64, path = Hw;
    fn sse_xm_no_osxmmexcpt() {
        enable_sse();
        set_cr4(CR4_OSXMMEXCPT, false);
        let e = divps_cpl0();
        reset_mxcsr(false);
        set_cr4(CR4_OSXMMEXCPT, true);
        check!(e.is_some(), "DIVPS by zero with MXCSR.ZM clear raised nothing");
        check_exception!(e, exception::UD, None);
    }
}

static MXCSR_RESERVED: u32 = MXCSR_DEFAULT | 1 << 31;

extern "C" fn ldmxcsr_reserved(_: u64) {
    // SAFETY: the LDMXCSR faults; if not, MXCSR is reset by the caller.
    unsafe { core::arch::asm!("ldmxcsr [{0}]", in(reg) &MXCSR_RESERVED, options(nostack)) };
}

fn mxcsr_case(at_cpl3: bool) {
    enable_sse();
    let e = if at_cpl3 { call_at_cpl3(ldmxcsr_reserved, 0) } else { catch!("ldmxcsr [{0}]", in(reg) &MXCSR_RESERVED) };
    reset_mxcsr(at_cpl3);
    check!(e.is_some(), "LDMXCSR with bit 31 set raised nothing");
    check_exception!(e, exception::GP, Some(0));
}

test_case! {
    /// LDMXCSR of a value with a reserved bit (31) set raises #GP(0) (SDM Vol. 2A
    /// LDMXCSR; Vol. 1 10.2.3.1 MXCSR_MASK).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::mxcsr_reserved_gp", cpl = [0, 3], mode = Long64, path = Hw;
    fn mxcsr_reserved_gp(cpl3: bool) {
        mxcsr_case(cpl3);
    }
}

test_case! {
    /// With XCR0 = x87|SSE (AVX state off), a VEX instruction raises #UD (SDM Vol. 2
    /// VADDPS, Exception Type 4: #UD if XCR0[2:1] != 11b).
    name = "cpu::avx_ud_xcr0::long64", mode = Long64, path = Hw;
    fn avx_ud_xcr0() {
        enable_avx();
        // SAFETY: XCR0 = x87|SSE is always valid with OSXSAVE set.
        unsafe { core::arch::asm!("xsetbv", in("ecx") 0, in("eax") 0b11, in("edx") 0) };
        let e = catch!("vaddps ymm0, ymm0, ymm0", "vzeroupper");
        // SAFETY: as in enable_avx.
        unsafe { core::arch::asm!("xsetbv", in("ecx") 0, in("eax") 0b111, in("edx") 0) };
        check!(e.is_some(), "VADDPS with XCR0.AVX clear raised nothing");
        check_exception!(e, exception::UD, None);
    }
}

test_case! {
    /// With CR4.OSXSAVE clear, a VEX instruction raises #UD (SDM Vol. 2 VADDPS, Exception
    /// Type 4: #UD if CR4.OSXSAVE[bit 18] = 0).
    name = "cpu::avx_ud_no_osxsave::long64", mode = Long64, path = Hw;
    fn avx_ud_no_osxsave() {
        enable_avx();
        set_cr4(CR4_OSXSAVE, false);
        let e = catch!("vaddps ymm0, ymm0, ymm0", "vzeroupper");
        set_cr4(CR4_OSXSAVE, true);
        check!(e.is_some(), "VADDPS with CR4.OSXSAVE clear raised nothing");
        check_exception!(e, exception::UD, None);
    }
}

extern "C" fn xsetbv_at_cpl3(_: u64) {
    // SAFETY: faults at CPL3; if not, XCR0 = 7 is what the case set anyway.
    unsafe { core::arch::asm!("xsetbv", in("ecx") 0, in("eax") 0b111, in("edx") 0) };
}

test_case! {
    /// XSETBV at CPL3 raises #GP(0) (SDM Vol. 2C XSETBV: #GP(0) if the current privilege
    /// level is not 0).
    name = "cpu::xsetbv_cpl3_gp::cpl3", mode = Long64, path = Hw;
    fn xsetbv_cpl3_gp() {
        enable_avx();
        check_exception!(call_at_cpl3(xsetbv_at_cpl3, 0), exception::GP, Some(0));
    }
}

test_case! {
    /// XSETBV refuses XCR0 without x87 (bit 0) and any ECX other than 0, with #GP(0) (SDM
    /// Vol. 2C XSETBV).
    name = "cpu::xsetbv_invalid_gp::long64", mode = Long64, path = Hw;
    fn xsetbv_invalid_gp() {
        enable_avx();
        check_exception!(catch!("xsetbv", in("ecx") 0, in("eax") 0b110, in("edx") 0), exception::GP, Some(0));
        check_exception!(catch!("xsetbv", in("ecx") 1, in("eax") 0b111, in("edx") 0), exception::GP, Some(0));
        let (mut lo, mut hi) = (0u32, 0u32);
        check_no_exception!(catch!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi));
        check_eq!(u64::from(hi) << 32 | u64::from(lo), XCR0_X87_SSE_AVX, "XCR0 after the refused writes");
    }
}

test_case! {
    /// CPUID.1:ECX.OSXSAVE[27] follows CR4.OSXSAVE (SDM Vol. 2A CPUID, Table 3-10: "the OS
    /// has set CR4.OSXSAVE").
    name = "cpu::osxsave_cpuid_mirror::long64", mode = Long64, path = Full;
    fn osxsave_cpuid_mirror() {
        if !offered(1, 0, CpuidClear::ECX, 1 << 26) {
            skip!("KVM does not offer XSAVE");
        }
        set_cr4(CR4_OSXSAVE, true);
        let on = cpu::cpuid(1, 0).ecx & 1 << 27;
        set_cr4(CR4_OSXSAVE, false);
        let off = cpu::cpuid(1, 0).ecx & 1 << 27;
        check_eq!(on, 1 << 27, "CPUID.1:ECX[27] with CR4.OSXSAVE set");
        check_eq!(off, 0, "CPUID.1:ECX[27] with CR4.OSXSAVE clear");
    }
}

macro_rules! fxsave_seq {
    ($m:ident, $($ops:tt)*) => {
        $m!(
            "movaps xmm0, [{p}]",
            "fxsave64 [{a}]",
            "xorps xmm0, xmm0",
            "fxrstor64 [{a}]",
            "movaps [{p} + 64], xmm0",
            $($ops)*
        )
    };
}

/// FXSAVE and FXRSTOR of XMM0 (SDM Vol. 2A FXSAVE: XMM registers at byte 160).
extern "C" fn fxsave_ops(p: u64) {
    let area = area_addr();
    // SAFETY: `p` is LANES, `area` the zeroed area (16-byte aligned); XMM0 is free.
    unsafe { fxsave_seq!(asm, p = in(reg) p, a = in(reg) area, options(nostack)) };
}

fn fxsave_case(at_cpl3: bool) {
    enable_sse();
    reset_lanes();
    let a = area();
    // SAFETY: one case at a time.
    unsafe { core::ptr::write_volatile(&raw mut AREA_ADDR, a) };
    let e = if at_cpl3 {
        call_at_cpl3(fxsave_ops, lanes())
    } else {
        fxsave_seq!(catch, p = in(reg) lanes(), a = in(reg) a)
    };
    check_no_exception!(e);
    check_eq!(&out(0)[..4], &A[..4], "XMM0 after FXSAVE, zeroing and FXRSTOR");
    check_eq!(area_u64(160) as u32, A[0], "XMM0's first lane at byte 160 of the FXSAVE image");
    check_eq!((area_u64(24) as u32) & 0xffff, MXCSR_DEFAULT, "MXCSR at byte 24 of the FXSAVE image");
}

test_case! {
    /// FXSAVE and FXRSTOR at CPL0 keep XMM0 and write the documented layout.
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::fxsave_roundtrip", cpl = [0, 3], mode = Long64, path = Hw;
    fn fxsave_roundtrip(cpl3: bool) {
        fxsave_case(cpl3);
    }
}

// The SSE family beyond SSE: SSE2 doubles, SSSE3, SSE4.1, SSE4.2 and POPCNT, PCLMULQDQ,
// and the BMI scalar instructions, each value-checked against integer or soft-float
// arithmetic in the guest, at CPL0 and CPL3, where the table offers the extension.

fn words(v: [u32; 8]) -> [u32; 4] {
    [v[0], v[1], v[2], v[3]]
}

fn bytes(v: [u32; 4]) -> [u8; 16] {
    let mut b = [0u8; 16];
    for (i, w) in v.iter().enumerate() {
        b[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    b
}

fn qword(v: [u32; 8], i: usize) -> u64 {
    u64::from(v[2 * i]) | u64::from(v[2 * i + 1]) << 32
}

/// Skips unless the table has every bit of `mask` in (leaf, 0) register `reg`.
fn require(leaf: u32, reg: u32, mask: u32, what: &str) {
    if !offered(leaf, 0, reg, mask) {
        hvprobe_rt::skip!("KVM does not offer {}", what);
    }
}

macro_rules! sse2_seq {
    ($m:ident, $($ops:tt)*) => {
        $m!(
            "movapd xmm0, [{p}]", "movapd xmm1, [{p} + 32]",
            "movapd xmm2, xmm0", "addpd xmm2, xmm1", "movapd [{p} + 64], xmm2",
            "movapd xmm2, xmm0", "mulpd xmm2, xmm1", "movapd [{p} + 96], xmm2",
            "sqrtpd xmm2, [{p} + 48]", "movapd [{p} + 128], xmm2",
            "movdqa xmm2, xmm0", "pmuludq xmm2, xmm1", "movdqa [{p} + 160], xmm2",
            $($ops)*
        )
    };
}
seq_fn!(sse2_seq, sse2_ops);

/// SSE2 on doubles: the lanes' first 16 bytes as two doubles each, against soft-float;
/// PMULUDQ of the low dwords; SQRTPD of B's upper half, one positive double (its root
/// squared gives it back within rounding) and one negative (the default NaN).
fn sse2_case(cpl3: bool) {
    enable_sse();
    reset_lanes();
    check_no_exception!(run_seq!(sse2_seq, sse2_ops, cpl3));
    for i in 0..2 {
        let (a, b) = (f64::from_bits(qword(A, i)), f64::from_bits(qword(B, i)));
        check_eq!(qword(out(0), i), (a + b).to_bits(), "ADDPD lane {}", i);
        check_eq!(qword(out(1), i), (a * b).to_bits(), "MULPD lane {}", i);
        check_eq!(qword(out(3), i), u64::from(A[2 * i]) * u64::from(B[2 * i]), "PMULUDQ lane {}", i);
    }
    let x = f64::from_bits(qword(B, 2));
    let r = f64::from_bits(qword(out(2), 0));
    let (lo, hi) = (x * (1.0 - 1.0 / (1u64 << 50) as f64), x * (1.0 + 1.0 / (1u64 << 50) as f64));
    check!(x > 0.0 && r > 0.0 && r * r >= lo && r * r <= hi, "SQRTPD of a positive double, squared, is not the double");
    check_eq!(qword(out(2), 1), 0xfff8_0000_0000_0000, "SQRTPD of a negative double: the default NaN");
}

test_case! {
    /// SSE2 double-precision and integer arithmetic at CPL0 (SDM Vol. 2 ADDPD, MULPD,
    /// SQRTPD, PMULUDQ).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::sse2_arith", cpl = [0, 3], mode = Long64, path = Hw;
    fn sse2_arith(cpl3: bool) {
        sse2_case(cpl3);
    }
}

macro_rules! ssse3_seq {
    ($m:ident, $($ops:tt)*) => {
        $m!(
            "movdqa xmm0, [{p}]", "movdqa xmm1, [{p} + 32]",
            "movdqa xmm2, xmm0", "pshufb xmm2, xmm1", "movdqa [{p} + 64], xmm2",
            "movdqa xmm2, xmm0", "phaddd xmm2, xmm1", "movdqa [{p} + 96], xmm2",
            "movdqa xmm2, xmm0", "palignr xmm2, xmm1, 4", "movdqa [{p} + 128], xmm2",
            $($ops)*
        )
    };
}
seq_fn!(ssse3_seq, ssse3_ops);

fn ssse3_case(cpl3: bool) {
    require(1, CpuidClear::ECX, 1 << 9, "SSSE3");
    enable_sse();
    reset_lanes();
    check_no_exception!(run_seq!(ssse3_seq, ssse3_ops, cpl3));
    let (a, b) = (words(A), words(B));
    let (ab, bb, shuf) = (bytes(a), bytes(b), bytes(words(out(0))));
    for i in 0..16 {
        let want = if bb[i] & 0x80 != 0 { 0 } else { ab[(bb[i] & 15) as usize] };
        check_eq!(shuf[i], want, "PSHUFB byte {}", i);
    }
    let hadd = [a[0].wrapping_add(a[1]), a[2].wrapping_add(a[3]), b[0].wrapping_add(b[1]), b[2].wrapping_add(b[3])];
    check_eq!(words(out(1)), hadd, "PHADDD");
    check_eq!(words(out(2)), [b[1], b[2], b[3], a[0]], "PALIGNR 4");
}

test_case! {
    /// SSSE3 at CPL0 (SDM Vol. 2 PSHUFB, PHADDD, PALIGNR).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::ssse3_arith", cpl = [0, 3], mode = Long64, path = Hw;
    fn ssse3_arith(cpl3: bool) {
        ssse3_case(cpl3);
    }
}

macro_rules! sse41_seq {
    ($m:ident, $($ops:tt)*) => {
        $m!(
            "movdqa xmm0, [{p}]", "movdqa xmm1, [{p} + 32]",
            "movdqa xmm2, xmm0", "pmulld xmm2, xmm1", "movdqa [{p} + 64], xmm2",
            "movdqa xmm2, xmm0", "pmaxsd xmm2, xmm1", "movdqa [{p} + 96], xmm2",
            "movdqa xmm2, xmm0", "pblendw xmm2, xmm1, 0xa5", "movdqa [{p} + 128], xmm2",
            $($ops)*
        )
    };
}
seq_fn!(sse41_seq, sse41_ops);

fn sse41_case(cpl3: bool) {
    require(1, CpuidClear::ECX, 1 << 19, "SSE4.1");
    enable_sse();
    reset_lanes();
    check_no_exception!(run_seq!(sse41_seq, sse41_ops, cpl3));
    let (a, b) = (words(A), words(B));
    for i in 0..4 {
        check_eq!(out(0)[i], a[i].wrapping_mul(b[i]), "PMULLD lane {}", i);
        check_eq!(out(1)[i], (a[i] as i32).max(b[i] as i32) as u32, "PMAXSD lane {}", i);
        // PBLENDW 0xa5: words 0, 2, 5, 7 from the source.
        let word = |v: u32, hi: bool| if hi { v >> 16 } else { v & 0xffff };
        let pick = |w: usize| if 0xa5 >> w & 1 == 1 { word(b[w / 2], w % 2 == 1) } else { word(a[w / 2], w % 2 == 1) };
        check_eq!(out(2)[i], pick(2 * i) | pick(2 * i + 1) << 16, "PBLENDW 0xa5 lane {}", i);
    }
}

test_case! {
    /// SSE4.1 at CPL0 (SDM Vol. 2 PMULLD, PMAXSD, PBLENDW).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::sse41_arith", cpl = [0, 3], mode = Long64, path = Hw;
    fn sse41_arith(cpl3: bool) {
        sse41_case(cpl3);
    }
}

macro_rules! sse42_seq {
    ($m:ident, $($ops:tt)*) => {
        $m!(
            "mov eax, 0xffffffff",
            "crc32 eax, dword ptr [{p}]", "crc32 eax, dword ptr [{p} + 4]",
            "crc32 eax, dword ptr [{p} + 8]", "crc32 eax, dword ptr [{p} + 12]",
            "mov dword ptr [{p} + 64], eax",
            "popcnt rax, qword ptr [{p}]", "mov qword ptr [{p} + 96], rax",
            "popcnt rax, qword ptr [{p} + 32]", "mov qword ptr [{p} + 104], rax",
            out("rax") _,
            $($ops)*
        )
    };
}
seq_fn!(sse42_seq, sse42_ops);

/// CRC-32C (Castagnoli, reflected), one byte at a time, as CRC32 accumulates it (SDM
/// Vol. 2A CRC32: no pre- or post-inversion).
fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { crc >> 1 ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    crc
}

fn sse42_case(cpl3: bool) {
    require(1, CpuidClear::ECX, 1 << 20 | 1 << 23, "SSE4.2 and POPCNT");
    reset_lanes();
    check_no_exception!(run_seq!(sse42_seq, sse42_ops, cpl3));
    check_eq!(out(0)[0], crc32c(u32::MAX, &bytes(words(A))), "CRC32 over A[0..4] from 0xffffffff");
    check_eq!(qword(out(1), 0), u64::from(qword(A, 0).count_ones()), "POPCNT of A's first qword");
    check_eq!(qword(out(1), 1), u64::from(qword(B, 0).count_ones()), "POPCNT of B's first qword");
}

test_case! {
    /// SSE4.2 CRC32 and POPCNT at CPL0 (SDM Vol. 2A CRC32, Vol. 2B POPCNT).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::sse42_crc32_popcnt", cpl = [0, 3], mode = Long64, path = Hw;
    fn sse42_crc32_popcnt(cpl3: bool) {
        sse42_case(cpl3);
    }
}

macro_rules! pclmul_seq {
    ($m:ident, $($ops:tt)*) => {
        $m!(
            "movdqa xmm0, [{p}]", "movdqa xmm1, [{p} + 32]",
            "movdqa xmm2, xmm0", "pclmulqdq xmm2, xmm1, 0x00", "movdqa [{p} + 64], xmm2",
            "movdqa xmm2, xmm0", "pclmulqdq xmm2, xmm1, 0x11", "movdqa [{p} + 96], xmm2",
            $($ops)*
        )
    };
}
seq_fn!(pclmul_seq, pclmul_ops);

/// Carry-less 64 x 64 -> 128 multiply.
fn clmul(a: u64, b: u64) -> u128 {
    (0..64).filter(|i| b >> i & 1 == 1).fold(0u128, |acc, i| acc ^ u128::from(a) << i)
}

fn pclmul_case(cpl3: bool) {
    require(1, CpuidClear::ECX, 1 << 1, "PCLMULQDQ");
    enable_sse();
    reset_lanes();
    check_no_exception!(run_seq!(pclmul_seq, pclmul_ops, cpl3));
    for (k, i) in [(0usize, 0usize), (1, 1)] {
        let want = clmul(qword(A, i), qword(B, i));
        let got = u128::from(qword(out(k), 0)) | u128::from(qword(out(k), 1)) << 64;
        check_eq!(got as u64, want as u64, "PCLMULQDQ {:#x} low half", k * 0x11);
        check_eq!((got >> 64) as u64, (want >> 64) as u64, "PCLMULQDQ {:#x} high half", k * 0x11);
    }
}

test_case! {
    /// PCLMULQDQ at CPL0 (SDM Vol. 2B PCLMULQDQ, immediates 0x00 and 0x11).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::pclmulqdq_arith", cpl = [0, 3], mode = Long64, path = Hw;
    fn pclmulqdq_arith(cpl3: bool) {
        pclmul_case(cpl3);
    }
}

macro_rules! bmi_seq {
    ($m:ident, $($ops:tt)*) => {
        $m!(
            "mov rax, qword ptr [{p}]", "mov rcx, qword ptr [{p} + 32]",
            "andn rdx, rax, rcx", "mov qword ptr [{p} + 64], rdx",
            "mov edx, 0x1004", "bextr rdx, rax, rdx", "mov qword ptr [{p} + 72], rdx",
            "blsr rdx, rax", "mov qword ptr [{p} + 80], rdx",
            "tzcnt rdx, rcx", "mov qword ptr [{p} + 88], rdx",
            "lzcnt rdx, rcx", "mov qword ptr [{p} + 96], rdx",
            "pdep rdx, rax, rcx", "mov qword ptr [{p} + 104], rdx",
            "pext rdx, rax, rcx", "mov qword ptr [{p} + 112], rdx",
            out("rax") _, out("rcx") _, out("rdx") _,
            $($ops)*
        )
    };
}
seq_fn!(bmi_seq, bmi_ops);

fn pdep(src: u64, mask: u64) -> u64 {
    let (mut out, mut k) = (0u64, 0);
    for i in 0..64 {
        if mask >> i & 1 == 1 {
            out |= (src >> k & 1) << i;
            k += 1;
        }
    }
    out
}

fn pext(src: u64, mask: u64) -> u64 {
    let (mut out, mut k) = (0u64, 0);
    for i in 0..64 {
        if mask >> i & 1 == 1 {
            out |= (src >> i & 1) << k;
            k += 1;
        }
    }
    out
}

fn bmi_case(cpl3: bool) {
    require(7, CpuidClear::EBX, 1 << 3 | 1 << 8, "BMI1 and BMI2");
    require(0x8000_0001, CpuidClear::ECX, 1 << 5, "LZCNT (ABM)");
    reset_lanes();
    check_no_exception!(run_seq!(bmi_seq, bmi_ops, cpl3));
    let (a, b) = (qword(A, 0), qword(B, 0));
    let o = out(0);
    let got = |i: usize| u64::from(o[2 * i]) | u64::from(o[2 * i + 1]) << 32;
    let o4 = out(1);
    let got4 = |i: usize| u64::from(o4[2 * i]) | u64::from(o4[2 * i + 1]) << 32;
    check_eq!(got(0), !a & b, "ANDN");
    check_eq!(got(1), (a >> 4) & 0xffff, "BEXTR start 4 length 16");
    check_eq!(got(2), a & a.wrapping_sub(1), "BLSR");
    check_eq!(got(3), u64::from(b.trailing_zeros()), "TZCNT");
    check_eq!(got4(0), u64::from(b.leading_zeros()), "LZCNT");
    check_eq!(got4(1), pdep(a, b), "PDEP");
    check_eq!(got4(2), pext(a, b), "PEXT");
}

test_case! {
    /// BMI1, BMI2 and LZCNT at CPL0 (SDM Vol. 2 ANDN, BEXTR, BLSR, TZCNT, LZCNT, PDEP,
    /// PEXT).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::bmi_arith", cpl = [0, 3], mode = Long64, path = Hw;
    fn bmi_arith(cpl3: bool) {
        bmi_case(cpl3);
    }
}

macro_rules! sse3_seq {
    ($m:ident, $($ops:tt)*) => {
        $m!(
            "movaps xmm0, [{p}]", "movaps xmm1, [{p} + 32]",
            "movaps xmm2, xmm0", "addsubps xmm2, xmm1", "movaps [{p} + 64], xmm2",
            "movaps xmm2, xmm0", "haddps xmm2, xmm1", "movaps [{p} + 96], xmm2",
            "movddup xmm2, [{p} + 32]", "movaps [{p} + 128], xmm2",
            "lddqu xmm2, [{p} + 4]", "movdqu [{p} + 160], xmm2",
            $($ops)*
        )
    };
}
seq_fn!(sse3_seq, sse3_ops);

fn sse3_case(cpl3: bool) {
    require(1, CpuidClear::ECX, 1 << 0, "SSE3");
    enable_sse();
    reset_lanes();
    check_no_exception!(run_seq!(sse3_seq, sse3_ops, cpl3));
    let sub = |a: u32, b: u32| (f32::from_bits(a) - f32::from_bits(b)).to_bits();
    for i in 0..4 {
        let want = if i % 2 == 0 { sub(A[i], B[i]) } else { add(A[i], B[i]) };
        check_eq!(out(0)[i], want, "ADDSUBPS lane {}", i);
    }
    check_eq!(words(out(1)), [add(A[0], A[1]), add(A[2], A[3]), add(B[0], B[1]), add(B[2], B[3])], "HADDPS");
    check_eq!(words(out(2)), [B[0], B[1], B[0], B[1]], "MOVDDUP");
    check_eq!(words(out(3)), [A[1], A[2], A[3], A[4]], "LDDQU of an unaligned 16 bytes");
}

test_case! {
    /// SSE3 at CPL0 (SDM Vol. 2 ADDSUBPS, HADDPS, MOVDDUP, LDDQU).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::sse3_arith", cpl = [0, 3], mode = Long64, path = Hw;
    fn sse3_arith(cpl3: bool) {
        sse3_case(cpl3);
    }
}

macro_rules! sse41b_seq {
    ($m:ident, $($ops:tt)*) => {
        $m!(
            "movaps xmm0, [{p}]", "movaps xmm1, [{p} + 32]",
            "roundps xmm2, xmm1, 1", "movaps [{p} + 64], xmm2",
            "movdqa xmm2, xmm0", "pinsrd xmm2, dword ptr [{p} + 44], 2", "movdqa [{p} + 96], xmm2",
            "pextrd dword ptr [{p} + 128], xmm1, 3",
            "movdqa xmm2, xmm0", "pminud xmm2, xmm1", "movdqa [{p} + 160], xmm2",
            $($ops)*
        )
    };
}
seq_fn!(sse41b_seq, sse41b_ops);

fn sse41b_case(cpl3: bool) {
    require(1, CpuidClear::ECX, 1 << 19, "SSE4.1");
    enable_sse();
    reset_lanes();
    check_no_exception!(run_seq!(sse41b_seq, sse41b_ops, cpl3));
    // ROUNDPS mode 1 rounds toward negative infinity: B[0..4] = 2.25, 0.5, 4.0, 0.25.
    check_eq!(words(out(0)), [0x4000_0000, 0, 0x4080_0000, 0], "ROUNDPS toward -inf");
    check_eq!(words(out(1)), [A[0], A[1], B[3], A[3]], "PINSRD into lane 2");
    check_eq!(out(2)[0], B[3], "PEXTRD of lane 3");
    for i in 0..4 {
        check_eq!(out(3)[i], A[i].min(B[i]), "PMINUD lane {}", i);
    }
}

test_case! {
    /// More SSE4.1 at CPL0 (SDM Vol. 2 ROUNDPS, PINSRD, PEXTRD, PMINUD).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::sse41_round_insert", cpl = [0, 3], mode = Long64, path = Hw;
    fn sse41_round_insert(cpl3: bool) {
        sse41b_case(cpl3);
    }
}

macro_rules! adx_seq {
    ($m:ident, $($ops:tt)*) => {
        $m!(
            "mov rax, qword ptr [{p}]", "mov rcx, qword ptr [{p} + 32]",
            "stc", "adcx rax, rcx", "mov qword ptr [{p} + 64], rax", "setc byte ptr [{p} + 72]",
            "mov rax, -1", "xor edx, edx", "add edx, 0",
            "mov rdx, 0x7fffffffffffffff", "adox rdx, rax", "mov qword ptr [{p} + 80], rdx", "seto byte ptr [{p} + 88]",
            out("rax") _, out("rcx") _, out("rdx") _,
            $($ops)*
        )
    };
}
seq_fn!(adx_seq, adx_ops);

fn adx_case(cpl3: bool) {
    require(7, CpuidClear::EBX, 1 << 19, "ADX");
    reset_lanes();
    check_no_exception!(run_seq!(adx_seq, adx_ops, cpl3));
    let (a, b) = (qword(A, 0), qword(B, 0));
    let (sum, c1) = a.overflowing_add(b);
    let (sum, c2) = sum.overflowing_add(1);
    check_eq!(qword(out(0), 0), sum, "ADCX with CF set");
    check_eq!(out(0)[2] & 0xff, (c1 || c2) as u32, "CF after ADCX");
    // ADOX: 0x7fff...ffff + 0xffff...ffff + OF (clear after ADD) = 0x7fff...fffe, OF = 1
    // (unsigned carry out of bit 63, reported in OF).
    check_eq!(qword(out(0), 2), 0x7fff_ffff_ffff_fffe, "ADOX");
    check_eq!(out(0)[6] & 0xff, 1, "OF after ADOX (the carry)");
}

test_case! {
    /// ADCX and ADOX at CPL0 (SDM Vol. 2A ADCX, ADOX: carries in CF and OF only).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::adx_arith", cpl = [0, 3], mode = Long64, path = Hw;
    fn adx_arith(cpl3: bool) {
        adx_case(cpl3);
    }
}

macro_rules! rdrand_seq {
    ($m:ident, $($ops:tt)*) => {
        $m!(
            "xor ecx, ecx",
            "2:", "rdrand rax", "jc 3f", "inc ecx", "cmp ecx, 100", "jb 2b", "3:",
            "mov qword ptr [{p} + 64], rax", "mov dword ptr [{p} + 72], ecx",
            "xor ecx, ecx",
            "4:", "rdrand rax", "jc 5f", "inc ecx", "cmp ecx, 100", "jb 4b", "5:",
            "mov qword ptr [{p} + 80], rax", "mov dword ptr [{p} + 88], ecx",
            out("rax") _, out("rcx") _,
            $($ops)*
        )
    };
}
seq_fn!(rdrand_seq, rdrand_ops);

fn rdrand_case(cpl3: bool) {
    require(1, CpuidClear::ECX, 1 << 30, "RDRAND");
    reset_lanes();
    check_no_exception!(run_seq!(rdrand_seq, rdrand_ops, cpl3));
    check!(out(0)[2] < 100 && out(0)[6] < 100, "RDRAND returned CF = 0 a hundred times in a row");
    check!(qword(out(0), 0) != qword(out(0), 2), "two RDRAND results with CF = 1 are equal");
}

test_case! {
    /// RDRAND at CPL0 returns valid data (CF = 1) within a few tries, and two results
    /// differ (SDM Vol. 2B RDRAND; Intel DRNG guide: retry up to ten times).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::rdrand", cpl = [0, 3], mode = Long64, path = Hw;
    fn rdrand(cpl3: bool) {
        rdrand_case(cpl3);
    }
}

macro_rules! x87_seq {
    ($m:ident, $($ops:tt)*) => {
        $m!(
            "fninit",
            "fld dword ptr [{p}]", "fld dword ptr [{p} + 32]", "faddp",
            "fstp dword ptr [{p} + 64]",
            "fld dword ptr [{p}]", "fld dword ptr [{p} + 32]", "fmulp",
            "fstp dword ptr [{p} + 68]",
            "fld dword ptr [{p} + 32]", "fsqrt", "fstp dword ptr [{p} + 72]",
            "fild dword ptr [{p} + 76]", "fistp dword ptr [{p} + 80]",
            $($ops)*
        )
    };
}
seq_fn!(x87_seq, x87_ops);

fn x87_case(cpl3: bool) {
    reset_lanes();
    // SAFETY: one case at a time; the integer FILD loads.
    unsafe { core::ptr::write_volatile(&raw mut LANES.out[0][3], 12345) };
    check_no_exception!(run_seq!(x87_seq, x87_ops, cpl3));
    check_eq!(out(0)[0], add(A[0], B[0]), "FADDP of 1.5 and 2.25, stored as single");
    check_eq!(out(0)[1], mul(A[0], B[0]), "FMULP of 1.5 and 2.25, stored as single");
    check_eq!(out(0)[2], SQRT_B[0], "FSQRT of 2.25");
    check_eq!(out(0)[4], 12345, "FILD then FISTP of an integer");
}

test_case! {
    /// x87 arithmetic at CPL0 (SDM Vol. 2 FLD, FADDP, FMULP, FSQRT, FILD, FISTP; results
    /// exact in single precision).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::x87_arith", cpl = [0, 3], mode = Long64, path = Hw;
    fn x87_arith(cpl3: bool) {
        x87_case(cpl3);
    }
}

/// GF(2^8) multiplication modulo the AES polynomial x^8 + x^4 + x^3 + x + 1.
fn gmul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        let hi = a & 0x80;
        a <<= 1;
        if hi != 0 {
            a ^= 0x1b;
        }
        b >>= 1;
    }
    p
}

/// The AES S-box entry of `x`, computed: the inverse in GF(2^8) (x^254), then the affine
/// transform (FIPS-197 5.1.1).
fn sbox(x: u8) -> u8 {
    let mut inv = 1u8;
    for _ in 0..254 {
        inv = gmul(inv, x);
    }
    let inv = if x == 0 { 0 } else { inv };
    inv ^ inv.rotate_left(1) ^ inv.rotate_left(2) ^ inv.rotate_left(3) ^ inv.rotate_left(4) ^ 0x63
}

/// One AES encryption round on a column-major state (FIPS-197 5.1: SubBytes, ShiftRows,
/// MixColumns unless `last`, AddRoundKey), as AESENC and AESENCLAST compute it.
fn aes_round(state: [u8; 16], key: [u8; 16], last: bool) -> [u8; 16] {
    let mut s = [0u8; 16];
    for c in 0..4 {
        for r in 0..4 {
            s[4 * c + r] = sbox(state[4 * ((c + r) % 4) + r]);
        }
    }
    if !last {
        for c in 0..4 {
            let col = [s[4 * c], s[4 * c + 1], s[4 * c + 2], s[4 * c + 3]];
            for r in 0..4 {
                s[4 * c + r] = gmul(col[r], 2) ^ gmul(col[(r + 1) % 4], 3) ^ col[(r + 2) % 4] ^ col[(r + 3) % 4];
            }
        }
    }
    for i in 0..16 {
        s[i] ^= key[i];
    }
    s
}

macro_rules! aes_seq {
    ($m:ident, $($ops:tt)*) => {
        $m!(
            "movdqa xmm0, [{p}]", "movdqa xmm1, [{p} + 32]",
            "movdqa xmm2, xmm0", "aesenc xmm2, xmm1", "movdqa [{p} + 64], xmm2",
            "movdqa xmm2, xmm0", "aesenclast xmm2, xmm1", "movdqa [{p} + 96], xmm2",
            $($ops)*
        )
    };
}
seq_fn!(aes_seq, aes_ops);

fn aes_case(cpl3: bool) {
    require(1, CpuidClear::ECX, 1 << 25, "AES-NI");
    enable_sse();
    reset_lanes();
    check_no_exception!(run_seq!(aes_seq, aes_ops, cpl3));
    let (state, key) = (bytes(words(A)), bytes(words(B)));
    check_eq!(bytes(words(out(0))), aes_round(state, key, false), "AESENC");
    check_eq!(bytes(words(out(1))), aes_round(state, key, true), "AESENCLAST");
}

test_case! {
    /// AES-NI rounds at CPL0 against FIPS-197 computed in the guest (SDM Vol. 2A AESENC,
    /// AESENCLAST).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::aes_round", cpl = [0, 3], mode = Long64, path = Hw;
    fn aes_round_case(cpl3: bool) {
        aes_case(cpl3);
    }
}

macro_rules! sse4a_seq {
    ($m:ident, $($ops:tt)*) => {
        $m!(
            "movdqa xmm0, [{p} + 224]", "movdqa xmm1, [{p} + 240]",
            "movdqa xmm2, xmm0", "extrq xmm2, 12, 8", "movdqa [{p} + 64], xmm2",
            "movdqa xmm2, xmm0", "insertq xmm2, xmm1, 16, 4", "movdqa [{p} + 96], xmm2",
            $($ops)*
        )
    };
}
seq_fn!(sse4a_seq, sse4a_ops);

fn sse4a_case(cpl3: bool) {
    require(0x8000_0001, CpuidClear::ECX, 1 << 6, "SSE4A");
    enable_sse();
    reset_lanes();
    // Inputs with every bit field busy (the float lanes' low bits are all zero): in the
    // last output slot, which the sequence reads and does not write.
    let (a, b) = (0x0123_4567_89ab_cdefu64, 0xfedc_ba98_7654_3210u64);
    // SAFETY: one case at a time.
    unsafe {
        core::ptr::write_volatile(
            &raw mut LANES.out[5],
            [a as u32, (a >> 32) as u32, 0, 0, b as u32, (b >> 32) as u32, 0, 0],
        )
    };
    check_no_exception!(run_seq!(sse4a_seq, sse4a_ops, cpl3));
    // EXTRQ length 12, index 8: bits 19:8 of the low qword, zero-extended; the upper
    // qword of the destination is undefined (APM Vol. 4 EXTRQ), so only the low one is
    // checked.
    check_eq!(qword(out(0), 0), (a >> 8) & 0xfff, "EXTRQ 12, 8");
    // INSERTQ length 16, index 4: B's low 16 bits into A's bits 19:4.
    let mask = 0xffffu64 << 4;
    check_eq!(qword(out(1), 0), (a & !mask) | ((b & 0xffff) << 4), "INSERTQ 16, 4");
}

test_case! {
    /// AMD's SSE4A at CPL0 (APM Vol. 4 EXTRQ, INSERTQ, immediate forms).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::sse4a_arith", cpl = [0, 3], mode = Long64, path = Hw;
    fn sse4a_arith(cpl3: bool) {
        sse4a_case(cpl3);
    }
}

/// A 64-byte line of its own, for the cache-line instructions.
#[repr(C, align(64))]
struct Line([u64; 8]);
static mut LINE: Line = Line([0; 8]);

extern "C" fn line_ops(flags: u64) {
    let at = &raw mut LINE as u64;
    // SAFETY: the flush and write-back instructions do not change memory; CLZERO zeroes
    // the line, which is the case's own.
    unsafe {
        core::arch::asm!("clflush [{0}]", in(reg) at, options(nostack));
        if flags & 1 != 0 {
            core::arch::asm!("clflushopt [{0}]", in(reg) at, options(nostack));
        }
        if flags & 2 != 0 {
            core::arch::asm!("clwb [{0}]", in(reg) at, options(nostack));
        }
        if flags & 4 != 0 {
            core::arch::asm!("clzero", in("rax") at + 8, options(nostack));
        }
    }
}

fn line_case(cpl3: bool) {
    let leaf7 = table_reg(7, 0, CpuidClear::EBX);
    let ext8 = table_reg(0x8000_0008, 0, CpuidClear::EBX);
    let flags = u64::from(leaf7 >> 23 & 1) | u64::from(leaf7 >> 24 & 1) << 1 | u64::from(ext8 & 1) << 2;
    // SAFETY: one case at a time.
    unsafe { core::ptr::write_volatile(&raw mut LINE.0, [0x1111_2222_3333_4444; 8]) };
    let e = call_at(cpl3, line_ops, flags);
    check_no_exception!(e);
    // SAFETY: as above.
    let line = unsafe { core::ptr::read_volatile(&raw const LINE.0) };
    let want = if flags & 4 != 0 { [0; 8] } else { [0x1111_2222_3333_4444; 8] };
    check_eq!(
        line,
        want,
        "the line after CLFLUSH, CLFLUSHOPT and CLWB (which keep it) and CLZERO (which zeroes it), as offered (flags {:#x})",
        flags
    );
}

test_case! {
    /// The cache-line instructions at CPL0: CLFLUSH, and CLFLUSHOPT, CLWB and CLZERO where
    /// offered, keep or zero the line as defined (SDM Vol. 2A CLFLUSH, CLFLUSHOPT, CLWB;
    /// APM Vol. 3 CLZERO: rAX, aligned down, names the line).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::cache_line_ops", cpl = [0, 3], mode = Long64, path = Hw;
    fn cache_line_ops(cpl3: bool) {
        line_case(cpl3);
    }
}
