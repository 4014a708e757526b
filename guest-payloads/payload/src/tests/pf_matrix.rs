//! The page-permission matrix: every combination of the PTE's U/S, R/W and XD bits, for
//! reads, writes and instruction fetches from CPL0 and CPL3, with CR0.WP clear and set,
//! against the rules of SDM Vol. 3A 4.6 (access rights) and 4.7 (the #PF error code:
//! P, W/R, U/S, I/D) and APM Vol. 2 5.6. The upper levels of the walk grant everything,
//! so the PTE decides; EFER.NXE is set so that XD is a permission bit, not a reserved
//! one. SMEP, SMAP and PKU are off (the harness's RAM is all user-accessible; their
//! control bits are checked in tests/gated.rs).

use super::cpu::cpuid_as_set;
use hvprobe_rt::cpu;
use hvprobe_rt::exception::{self, Exception};
use hvprobe_rt::paging::{self, USER, WRITABLE};
use hvprobe_rt::user::call_at_cpl3;
use hvprobe_rt::{catch, check, check_eq, skip, test_case};

const XD: u64 = 1 << 63;
const CR0_WP: u64 = 1 << 16;
const EFER_NXE: u64 = 1 << 11;

#[derive(Clone, Copy, PartialEq)]
enum Access {
    Read,
    Write,
    Fetch,
}

/// Which level of the walk the case edits: the PTE of a 4 KiB page, or the PDE of a 2 MiB
/// page (the state region's, which this case alone uses).
#[derive(Clone, Copy, PartialEq)]
enum Level {
    Pte,
    Pde,
}

/// The target for `level`, holding RET at its start so that a fetch that is allowed
/// comes straight back: the scratch page, or a word in the state region's 2 MiB page.
fn target(level: Level) -> u64 {
    let page = match level {
        Level::Pte => paging::scratch_page(),
        Level::Pde => hvprobe_rt::abi::layout::STATE_REGION + 0x8_0000,
    };
    // SAFETY: the scratch page belongs to the image and nothing else uses it.
    unsafe { (page as *mut u8).write_volatile(0xc3) };
    page
}

extern "C" fn read_at(addr: u64) {
    // SAFETY: the access is the test; a fault is caught by the trampoline.
    unsafe { core::arch::asm!("mov {0}, [{1}]", out(reg) _, in(reg) addr, options(nostack)) };
}

extern "C" fn write_at(addr: u64) {
    // SAFETY: as above; the byte written is the RET already there.
    unsafe { core::arch::asm!("mov byte ptr [{0}], 0xc3", in(reg) addr, options(nostack)) };
}

fn access(what: Access, cpl3: bool, addr: u64) -> Option<Exception> {
    match (what, cpl3) {
        (Access::Read, false) => catch!("mov {0}, [{1}]", out(reg) _, in(reg) addr),
        (Access::Write, false) => catch!("mov byte ptr [{0}], 0xc3", in(reg) addr),
        (Access::Fetch, false) => catch!("call {0}", in(reg) addr),
        (Access::Read, true) => call_at_cpl3(read_at, addr),
        (Access::Write, true) => call_at_cpl3(write_at, addr),
        (Access::Fetch, true) => {
            // SAFETY: the page starts with RET, a valid function of this signature.
            let f: extern "C" fn(u64) = unsafe { core::mem::transmute(addr as usize) };
            call_at_cpl3(f, 0)
        }
    }
}

/// The #PF error code the SDM gives for this access, or None if it is allowed.
fn expected(what: Access, cpl3: bool, wp: bool, user: bool, writable: bool, xd: bool) -> Option<u64> {
    let allowed = match (what, cpl3) {
        (Access::Read, false) => true,
        (Access::Write, false) => writable || !wp,
        (Access::Fetch, false) => !xd,
        (Access::Read, true) => user,
        (Access::Write, true) => user && writable,
        (Access::Fetch, true) => user && !xd,
    };
    // P (the page is present), W/R, U/S, I/D (SDM Vol. 3A 4.7).
    let code = 1 | ((what == Access::Write) as u64) << 1 | (cpl3 as u64) << 2 | ((what == Access::Fetch) as u64) << 4;
    (!allowed).then_some(code)
}

/// Runs the eight PTE combinations and fails once, naming every combination that
/// deviates (bit n of the mask: n = U/S << 2 | R/W << 1 | XD) and the first of them.
fn matrix(what: Access, cpl3: bool, wp: bool, level: Level) {
    if cpuid_as_set(0x8000_0001, 0).is_none_or(|c| c.edx & 1 << 20 == 0) {
        skip!("KVM does not offer NX");
    }
    let addr = target(level);
    // SAFETY: NXE makes XD a permission bit; WP only changes supervisor writes. Both are
    // put back below.
    let (efer, cr0) = unsafe {
        let efer = cpu::rdmsr(x86::msr::IA32_EFER);
        cpu::wrmsr(x86::msr::IA32_EFER, efer | EFER_NXE);
        let cr0 = cpu::read_cr0();
        cpu::write_cr0(if wp { cr0 | CR0_WP } else { cr0 & !CR0_WP });
        (efer, cr0)
    };
    let mut wrong = 0u32;
    let mut first = None;
    for combo in 0..8u32 {
        let (user, writable, xd) = (combo & 4 != 0, combo & 2 != 0, combo & 1 != 0);
        let bits = if user { USER } else { 0 } | if writable { WRITABLE } else { 0 } | if xd { XD } else { 0 };
        let edit = |entry: u64| (entry & !(USER | WRITABLE | XD)) | bits;
        let e = match level {
            Level::Pte => paging::with_pte(addr, edit, || access(what, cpl3, addr)),
            Level::Pde => paging::with_pde(addr, edit, || access(what, cpl3, addr)),
        };
        let want = expected(what, cpl3, wp, user, writable, xd);
        let got = e.map(|e| (e.vector, e.error_code, e.cr2));
        let right = match (want, got) {
            (None, None) => true,
            (Some(code), Some((v, c, cr2))) => v == exception::PF && c == Some(code) && cr2 == Some(addr),
            _ => false,
        };
        if !right {
            wrong |= 1 << combo;
            first.get_or_insert((combo, want, got.map(|(v, c, _)| (v, c))));
        }
    }
    // SAFETY: puts back CR0 and EFER.
    unsafe {
        cpu::write_cr0(cr0);
        cpu::wrmsr(x86::msr::IA32_EFER, efer);
    }
    if let Some((combo, want, got)) = first {
        check!(
            false,
            "combinations that deviate (bit n, n = U/S<<2 | R/W<<1 | XD): {:#04x}; the first, U/S {} R/W {} XD {}, expected {:?} got {:?} (vector, error code)",
            wrong,
            combo >> 2 & 1,
            combo >> 1 & 1,
            combo & 1,
            want.map(|c| (exception::PF, Some(c))),
            got
        );
    }
    check_eq!(wrong, 0);
}

macro_rules! matrix_cases {
    ($($(#[$doc:meta])* $fn:ident: $name:literal, $what:ident, $cpl3:expr, $wp:expr, $level:ident;)+) => {$(
        test_case! {
            $(#[$doc])*
            name = $name, mode = Long64, path = Hw;
            fn $fn() {
                matrix(Access::$what, $cpl3, $wp, Level::$level);
            }
        }
    )+};
}

matrix_cases! {
    /// Supervisor reads: allowed whatever the PTE says (no SMAP).
    pf_matrix_read: "cpu::pf_matrix_read::long64", Read, false, false, Pte;
    /// User reads: allowed on U/S = 1 pages only; #PF(U) otherwise.
    pf_matrix_read_cpl3: "cpu::pf_matrix_read::cpl3", Read, true, false, Pte;
    /// Supervisor writes with CR0.WP clear: allowed even to read-only pages.
    pf_matrix_write: "cpu::pf_matrix_write::long64", Write, false, false, Pte;
    /// Supervisor writes with CR0.WP set: read-only pages fault with #PF(P|W).
    pf_matrix_write_wp: "cpu::pf_matrix_write_wp::long64", Write, false, true, Pte;
    /// User writes with CR0.WP clear: need U/S = 1 and R/W = 1.
    pf_matrix_write_cpl3: "cpu::pf_matrix_write::cpl3", Write, true, false, Pte;
    /// User writes with CR0.WP set: the same rule (WP only restrains the supervisor).
    pf_matrix_write_wp_cpl3: "cpu::pf_matrix_write_wp::cpl3", Write, true, true, Pte;
    /// Supervisor fetches: allowed unless XD (no SMEP); #PF(P|I/D) otherwise.
    pf_matrix_fetch: "cpu::pf_matrix_fetch::long64", Fetch, false, false, Pte;
    /// User fetches: need U/S = 1 and XD = 0.
    pf_matrix_fetch_cpl3: "cpu::pf_matrix_fetch::cpl3", Fetch, true, false, Pte;
    /// The same rules for a 2 MiB page, the permissions in its PDE (SDM Vol. 3A 4.6: the
    /// access rights of a large page are those of the entries that map it).
    pf_matrix_large_read: "cpu::pf_matrix_large_read::long64", Read, false, false, Pde;
    /// User reads of a 2 MiB page.
    pf_matrix_large_read_cpl3: "cpu::pf_matrix_large_read::cpl3", Read, true, false, Pde;
    /// Supervisor writes to a 2 MiB page, CR0.WP clear.
    pf_matrix_large_write: "cpu::pf_matrix_large_write::long64", Write, false, false, Pde;
    /// Supervisor writes to a 2 MiB page, CR0.WP set.
    pf_matrix_large_write_wp: "cpu::pf_matrix_large_write_wp::long64", Write, false, true, Pde;
    /// User writes to a 2 MiB page, CR0.WP clear.
    pf_matrix_large_write_cpl3: "cpu::pf_matrix_large_write::cpl3", Write, true, false, Pde;
    /// User writes to a 2 MiB page, CR0.WP set.
    pf_matrix_large_write_wp_cpl3: "cpu::pf_matrix_large_write_wp::cpl3", Write, true, true, Pde;
    /// Supervisor fetches from a 2 MiB page.
    pf_matrix_large_fetch: "cpu::pf_matrix_large_fetch::long64", Fetch, false, false, Pde;
    /// User fetches from a 2 MiB page.
    pf_matrix_large_fetch_cpl3: "cpu::pf_matrix_large_fetch::cpl3", Fetch, true, false, Pde;
}
