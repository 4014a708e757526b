//! The page-permission matrix: every combination of the PTE's U/S, R/W and XD bits, for
//! reads, writes and instruction fetches from CPL0 and CPL3, with CR0.WP clear and set,
//! against the rules of SDM Vol. 3A 4.6 (access rights) and 4.7 (the #PF error code:
//! P, W/R, U/S, I/D) and APM Vol. 2 5.6. The upper levels of the walk grant everything,
//! so the PTE decides; EFER.NXE is set so that XD is a permission bit, not a reserved
//! one. The harness's RAM is all user-accessible, so SMEP and SMAP cannot be on while
//! the runtime runs from it: their cases (CPL0 only) first make the low 2 MiB (the code,
//! stacks, descriptor tables and the target page) supervisor-only, then turn CR4.SMEP or
//! CR4.SMAP on, run the matrix, and undo both (SDM Vol. 3A 4.6.1; APM Vol. 2 5.6.5-5.6.6).
//! PKU stays off (its control bit is checked in tests/gated.rs).

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

/// A CPL0 access with RFLAGS.AC set for it (STAC ... CLAC), as SMAP's escape hatch.
fn access_with_ac(what: Access, addr: u64) -> Option<Exception> {
    let e = match what {
        Access::Read => catch!("stac", "mov {0}, [{1}]", "clac", out(reg) _, in(reg) addr),
        Access::Write => catch!("stac", "mov byte ptr [{0}], 0xc3", "clac", in(reg) addr),
        Access::Fetch => catch!("stac", "call {0}", "clac", in(reg) addr),
    };
    // SAFETY: CLAC after a faulting access, which skipped the one in the sequence.
    unsafe { core::arch::asm!("clac", options(nomem, nostack)) };
    e
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

/// CR4.SMEP and CR4.SMAP, and RFLAGS.AC at the access.
#[derive(Clone, Copy, PartialEq)]
struct Protect {
    smep: bool,
    smap: bool,
    ac: bool,
}

const NO_PROTECT: Protect = Protect { smep: false, smap: false, ac: false };

/// The #PF error code the SDM gives for this access, or None if it is allowed.
fn expected(what: Access, cpl3: bool, wp: bool, user: bool, writable: bool, xd: bool, p: Protect) -> Option<u64> {
    // SMAP: supervisor data accesses to user pages fault unless RFLAGS.AC is set; SMEP:
    // supervisor fetches from user pages fault (SDM Vol. 3A 4.6.1).
    let smap_blocks = p.smap && user && !p.ac;
    let allowed = match (what, cpl3) {
        (Access::Read, false) => !smap_blocks,
        (Access::Write, false) => (writable || !wp) && !smap_blocks,
        (Access::Fetch, false) => !(xd || p.smep && user),
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
    matrix_protected(what, cpl3, wp, level, NO_PROTECT);
}

fn matrix_protected(what: Access, cpl3: bool, wp: bool, level: Level, p: Protect) {
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
        let run = || if p.ac { access_with_ac(what, addr) } else { access(what, cpl3, addr) };
        let e = match level {
            Level::Pte => paging::with_pte(addr, edit, run),
            Level::Pde => paging::with_pde(addr, edit, run),
        };
        let want = expected(what, cpl3, wp, user, writable, xd, p);
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

const CR4_SMEP: u64 = 1 << 20;
const CR4_SMAP: u64 = 1 << 21;

fn write_cr4(value: u64) {
    // SAFETY: the callers toggle only SMEP and SMAP, with the low 2 MiB supervisor-only.
    unsafe { cpu::write_cr4(value) };
}

/// Sets or clears U/S in the 512 PTEs that map the low 2 MiB, and flushes the TLB.
fn low_user(user: bool) {
    let pt = hvprobe_rt::abi::layout::PT0 as *mut u64;
    for i in 0..512 {
        // SAFETY: the harness's page table of the low 2 MiB; only U/S changes.
        unsafe {
            let e = pt.add(i).read_volatile();
            pt.add(i).write_volatile(if user { e | USER } else { e & !USER });
        }
    }
    // SAFETY: reloading CR3 flushes the non-global translations.
    unsafe { core::arch::asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack)) };
}

/// Runs the CPL0 matrix for `what` with SMEP or SMAP on (skipping where the table does
/// not offer it), the low 2 MiB supervisor-only around it. A deviation fails the case from
/// inside, while still protected: the report goes out by port I/O from supervisor pages.
fn protected_matrix(what: Access, wp: bool, p: Protect) {
    let (bit, name) = if p.smep { (7, "SMEP") } else { (20, "SMAP") };
    if cpuid_as_set(7, 0).is_none_or(|c| c.ebx & 1 << bit == 0) {
        skip!("KVM does not offer {} (CPUID.(7,0):EBX[{}])", name, bit);
    }
    let cr4 = cpu::read_cr4();
    let on = if p.smep { CR4_SMEP } else { CR4_SMAP };
    low_user(false);
    write_cr4(cr4 | on);
    matrix_protected(what, false, wp, Level::Pte, p);
    write_cr4(cr4);
    low_user(true);
}

macro_rules! protected_cases {
    ($($(#[$doc:meta])* $fn:ident: $name:literal, $what:ident, $wp:expr, $smep:expr, $smap:expr, $ac:expr;)+) => {$(
        test_case! {
            $(#[$doc])*
            name = $name, mode = Long64, path = Hw;
            fn $fn() {
                protected_matrix(Access::$what, $wp, Protect { smep: $smep, smap: $smap, ac: $ac });
            }
        }
    )+};
}

protected_cases! {
    /// With CR4.SMEP, supervisor fetches from user pages fault: #PF(P|I/D) on U/S = 1,
    /// and XD still applies (SDM Vol. 3A 4.6.1).
    pf_matrix_fetch_smep: "cpu::pf_matrix_fetch_smep::long64", Fetch, false, true, false, false;
    /// With CR4.SMEP, supervisor reads of user pages are still allowed (SMEP is about
    /// fetches).
    pf_matrix_read_smep: "cpu::pf_matrix_read_smep::long64", Read, false, true, false, false;
    /// With CR4.SMAP and RFLAGS.AC clear, supervisor reads of user pages fault with #PF(P)
    /// (SDM Vol. 3A 4.6.1, "data reads ... from user-mode pages").
    pf_matrix_read_smap: "cpu::pf_matrix_read_smap::long64", Read, false, false, true, false;
    /// With CR4.SMAP and CR0.WP, supervisor writes to user pages fault with #PF(P|W)
    /// whatever R/W says; supervisor pages follow WP.
    pf_matrix_write_smap: "cpu::pf_matrix_write_smap::long64", Write, true, false, true, false;
    /// With CR4.SMAP and RFLAGS.AC set (STAC), supervisor reads of user pages are allowed
    /// (SDM Vol. 2B STAC; Vol. 3A 4.6.1).
    pf_matrix_read_smap_ac: "cpu::pf_matrix_read_smap_ac::long64", Read, false, false, true, true;
    /// With CR4.SMAP, AC set and CR0.WP, supervisor writes follow only R/W and WP.
    pf_matrix_write_smap_ac: "cpu::pf_matrix_write_smap_ac::long64", Write, true, false, true, true;
    /// With CR4.SMAP, supervisor fetches from user pages are allowed (SMAP is about data).
    pf_matrix_fetch_smap: "cpu::pf_matrix_fetch_smap::long64", Fetch, false, false, true, false;
}
