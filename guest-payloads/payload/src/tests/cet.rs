//! CET with CR4.CET clear (the guest never sets it): the shadow-stack instructions the
//! manuals define for that state, at CPL0 and at CPL3 (SDM Vol. 1 chapter 17 and the
//! instruction pages in Vol. 2; APM Vol. 2 chapter 18 and Vol. 3). RDSSP and ENDBR64
//! are in the NOP space and do nothing; SAVEPREVSSP, RSTORSSP, WRSS, CLRSSBSY and SETSSBSY
//! raise #UD. Both hold on processors with and without CET (the #UD encodings were
//! undefined before CET), so the cases run everywhere. INCSSP is left out: without CET its
//! encoding (F3 0F AE E8) is LFENCE with an ignored prefix, so its #UD depends on the
//! physical CPU, not on what the vCPU enumerates. (CR4.CET itself: `cpu::cr4_cet_absent`
//! and `cpu::cr4_cet_present` in `gated.rs`; the CET MSRs there too.)

use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use hvprobe_rt::exception;
use hvprobe_rt::{check, check_eq, check_exception, test_case};

use super::cpu::call_at;

/// What the NOP-space cases' functions found in RAX after the instruction.
static RAX_AFTER: AtomicU64 = AtomicU64::new(0);
const RAX_BEFORE: u64 = 0x0dd_c0de_5511;

macro_rules! cet_cases {
    ($($(#[$doc:meta])* $f:ident, $case:ident, $case3:ident: $name:literal, $name3:literal, $bytes:literal, $ud:literal;)+) => {$(
        extern "C" fn $f(operand: u64) {
            let rax: u64;
            // SAFETY: with CR4.CET clear the instruction is a NOP or raises #UD (caught by
            // `call_at`); its memory operand, if any, is [RAX], the scratch page.
            unsafe { core::arch::asm!($bytes, inout("rax") operand => rax, in("rcx") 0u64, options(nostack)) };
            RAX_AFTER.store(rax, SeqCst);
        }

        test_case! {
            $(#[$doc])*
            name = $name, mode = Long64, path = Full;
            fn $case() {
                check_cet(false, $f, $ud);
            }
        }

        test_case! {
            $(#[$doc])*
            name = $name3, mode = Long64, path = Full;
            fn $case3() {
                check_cet(true, $f, $ud);
            }
        }
    )+};
}

/// Runs `f` at CPL0 or CPL3 with CR4.CET clear: either it raises #UD, or it runs as a NOP
/// and leaves RAX as it was.
fn check_cet(cpl3: bool, f: extern "C" fn(u64), ud: bool) {
    check_eq!(hvprobe_rt::cpu::read_cr4() & (1 << 23), 0, "CR4.CET is set at the start of the case");
    let operand = if ud { hvprobe_rt::paging::scratch_page() } else { RAX_BEFORE };
    RAX_AFTER.store(0, SeqCst);
    let e = call_at(cpl3, f, operand);
    if ud {
        check!(e.is_some(), "the instruction with CR4.CET clear raised no exception");
        check_exception!(e, exception::UD, None);
    } else {
        check!(e.is_none(), "the NOP-space instruction raised {:?}", e);
        check_eq!(RAX_AFTER.load(SeqCst), RAX_BEFORE, "RAX after the instruction (a NOP leaves it)");
    }
}

cet_cases! {
    /// RDSSP RAX (F3 REX.W 0F 1E /1) with CR4.CET clear is a NOP: RAX keeps its value (SDM
    /// Vol. 2B RDSSPD/RDSSPQ, "Operation").
    rdssp_fn, cet_rdssp_nop, cet_rdssp_nop_cpl3: "cpu::cet_rdssp_nop::long64", "cpu::cet_rdssp_nop::cpl3",
        ".byte 0xf3, 0x48, 0x0f, 0x1e, 0xc8", false;
    /// ENDBR64 (F3 0F 1E FA) is a NOP with CR4.CET clear (SDM Vol. 2A ENDBR64).
    endbr64_fn, cet_endbr64_nop, cet_endbr64_nop_cpl3: "cpu::cet_endbr64_nop::long64", "cpu::cet_endbr64_nop::cpl3",
        ".byte 0xf3, 0x0f, 0x1e, 0xfa", false;
    /// SAVEPREVSSP (F3 0F 01 EA) raises #UD with CR4.CET clear (SDM Vol. 2B SAVEPREVSSP).
    saveprevssp_fn, cet_saveprevssp_ud, cet_saveprevssp_ud_cpl3: "cpu::cet_saveprevssp_ud::long64",
        "cpu::cet_saveprevssp_ud::cpl3", ".byte 0xf3, 0x0f, 0x01, 0xea", true;
    /// RSTORSSP [RAX] (F3 0F 01 /5) raises #UD with CR4.CET clear (SDM Vol. 2B RSTORSSP).
    rstorssp_fn, cet_rstorssp_ud, cet_rstorssp_ud_cpl3: "cpu::cet_rstorssp_ud::long64", "cpu::cet_rstorssp_ud::cpl3",
        ".byte 0xf3, 0x0f, 0x01, 0x28", true;
    /// WRSSQ [RAX], RCX (REX.W 0F 38 F6 /r) raises #UD with CR4.CET clear (SDM Vol. 2D
    /// WRSSD/WRSSQ).
    wrss_fn, cet_wrss_ud, cet_wrss_ud_cpl3: "cpu::cet_wrss_ud::long64", "cpu::cet_wrss_ud::cpl3",
        ".byte 0x48, 0x0f, 0x38, 0xf6, 0x08", true;
    /// CLRSSBSY [RAX] (F3 0F AE /6) raises #UD with CR4.CET clear (SDM Vol. 2A CLRSSBSY).
    clrssbsy_fn, cet_clrssbsy_ud, cet_clrssbsy_ud_cpl3: "cpu::cet_clrssbsy_ud::long64", "cpu::cet_clrssbsy_ud::cpl3",
        ".byte 0xf3, 0x0f, 0xae, 0x30", true;
    /// SETSSBSY (F3 0F 01 E8) raises #UD with CR4.CET clear (SDM Vol. 2B SETSSBSY).
    setssbsy_fn, cet_setssbsy_ud, cet_setssbsy_ud_cpl3: "cpu::cet_setssbsy_ud::long64", "cpu::cet_setssbsy_ud::cpl3",
        ".byte 0xf3, 0x0f, 0x01, 0xe8", true;
}
