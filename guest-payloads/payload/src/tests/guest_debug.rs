//! Host-side debugging (KVM_SET_GUEST_DEBUG, api.rst 4.39): the host single-steps the
//! guest, sets software and hardware breakpoints in it, and injects #DB and #BP. The
//! guest asks for each through the GUEST_DEBUG service and reads what the host saw with
//! DEBUG_EXITS. A debugger's breakpoints and steps must stay invisible to the guest: no
//! #DB or #BP reaches it, and RFLAGS.TF and DR7 read as the guest left them.

use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
use hvprobe_rt::abi::guest_debug::{ENABLE, INJECT_BP, INJECT_DB, SINGLESTEP, USE_HW_BP, USE_SW_BP};
use hvprobe_rt::abi::proto::service;
use hvprobe_rt::abi::requires::GUEST_DEBUG;

use hvprobe_rt::exception::{self, Frame, set_handler};
use hvprobe_rt::proto::service as request;
use hvprobe_rt::user::call_at_cpl3;

use super::cpu::call_at;
use hvprobe_rt::{catch, check, check_eq, check_no_exception, test_case};

fn guest_debug(control: u64, addr: u64, dr7: u64) {
    check_eq!(request(service::GUEST_DEBUG, [control, addr, dr7, 0]), Ok(0), "KVM_SET_GUEST_DEBUG {:#x}", control);
}

fn exits(what: u64) -> Option<u64> {
    request(service::DEBUG_EXITS, [what, 0, 0, 0]).ok()
}

/// Eight PUSHFQ/POP pairs: RFLAGS as the guest sees it while the host steps it (TF
/// OR-ed over the eight), and the addresses of the sixteen instructions' range.
fn stepped_body() -> (u64, u64, u64) {
    let (tf, start, end): (u64, u64, u64);
    // SAFETY: reads RFLAGS eight times; the stack is balanced.
    unsafe {
        core::arch::asm!(
            "lea {s}, [rip + 3f]",
            "lea {e}, [rip + 4f]",
            "xor {t}, {t}",
            "3:",
            "pushfq", "pop {f}", "or {t}, {f}",
            "pushfq", "pop {f}", "or {t}, {f}",
            "pushfq", "pop {f}", "or {t}, {f}",
            "pushfq", "pop {f}", "or {t}, {f}",
            "4:",
            t = out(reg) tf, f = out(reg) _, s = out(reg) start, e = out(reg) end,
        )
    };
    (tf & 1 << 8, start, end)
}

static STEPPED: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

extern "C" fn stepped_at_cpl3(_: u64) {
    let (tf, start, end) = stepped_body();
    for (slot, v) in STEPPED.iter().zip([tf, start, end]) {
        slot.store(v, SeqCst);
    }
}

fn singlestep_case(cpl3: bool) {
    guest_debug(ENABLE | SINGLESTEP, 0, 0);
    let (e, (tf, start, end)) = if cpl3 {
        let e = call_at_cpl3(stepped_at_cpl3, 0);
        (e, (STEPPED[0].load(SeqCst), STEPPED[1].load(SeqCst), STEPPED[2].load(SeqCst)))
    } else {
        (None, stepped_body())
    };
    guest_debug(0, 0, 0);
    check_no_exception!(e);
    check_eq!(exits(1), Some(u64::from(exception::DB)), "the exception of the first debug exit");
    let inside = request(service::DEBUG_EXITS, [4, start, end, 0]).ok();
    check_eq!(inside, Some(12), "single-step exits with a PC on the twelve stepped instructions");
    check_eq!(tf, 0, "RFLAGS.TF seen by PUSHFQ while the host single-steps (it must stay the guest's)");
}

test_case! {
    /// KVM_GUESTDBG_SINGLESTEP at CPL0: the host gets one KVM_EXIT_DEBUG (#DB) per
    /// instruction, and the guest sees neither a #DB nor TF in its RFLAGS.
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::guest_debug_singlestep", cpl = [0, 3], mode = Long64, path = Full, requires = GUEST_DEBUG;
    fn guest_debug_singlestep(cpl3: bool) {
        singlestep_case(cpl3);
    }
}

extern "C" fn int3_at_cpl3(_: u64) {
    // SAFETY: the host's software breakpoint takes the INT3 and steps past it.
    unsafe { core::arch::asm!("int3", options(nostack, nomem)) };
}

fn sw_bp_case(cpl3: bool) {
    guest_debug(ENABLE | USE_SW_BP, 0, 0);
    let (e, at) = if cpl3 {
        (call_at_cpl3(int3_at_cpl3, 0), int3_at_cpl3 as *const () as u64)
    } else {
        let e = catch!("int3");
        (e, exception::armed_rip())
    };
    check!(e.is_none(), "the guest took {:?} for an INT3 the host's software breakpoint owns", e.map(|e| e.vector));
    check_eq!(exits(0), Some(1), "debug exits for one INT3");
    check_eq!(exits(1), Some(u64::from(exception::BP)), "the exception of the debug exit");
    let pc = exits(2).unwrap_or(0);
    check!(pc.wrapping_sub(at) < 16, "the debug exit's PC is not at the INT3");
}

test_case! {
    /// KVM_GUESTDBG_USE_SW_BP: an INT3 at CPL0 exits to the host (#BP, PC at the INT3),
    /// which steps past it; the guest sees no #BP.
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::guest_debug_sw_bp", cpl = [0, 3], mode = Long64, path = Full, requires = GUEST_DEBUG;
    fn guest_debug_sw_bp(cpl3: bool) {
        sw_bp_case(cpl3);
    }
}

#[inline(never)]
extern "C" fn breakpoint_target(x: u64) {
    // SAFETY: a plain computation the breakpoint stops on; the result goes to a static.
    unsafe { core::ptr::write_volatile(&raw mut TARGET_RAN, x + 1) };
}

static mut TARGET_RAN: u64 = 0;

fn hw_bp_case(cpl3: bool) {
    let target = breakpoint_target as *const () as u64;
    let guest_dr7 = || -> u64 {
        let v: u64;
        // SAFETY: reads DR7 at CPL0.
        unsafe { core::arch::asm!("mov {0}, dr7", out(reg) v, options(nomem, nostack)) };
        v
    };
    let before = guest_dr7();
    // DR7: L0 (bit 0), R/W0 = 00 (execute), LEN0 = 00 (SDM Vol. 3B 19.2.4).
    guest_debug(ENABLE | USE_HW_BP, target, 1 | 1 << 10);
    let seen = guest_dr7();
    let e = call_at(cpl3, breakpoint_target, 41);
    check_no_exception!(e);
    // SAFETY: written by the target.
    check_eq!(unsafe { core::ptr::read_volatile(&raw const TARGET_RAN) }, 42, "the target ran once the host let it");
    check_eq!(seen, before, "the guest's DR7 while the host's breakpoint is armed");
    check_eq!(exits(0), Some(1), "debug exits for one execution of the target");
    check_eq!(exits(1), Some(u64::from(exception::DB)), "the exception of the debug exit");
    check_eq!(exits(2), Some(target), "the debug exit's PC");
    check_eq!(exits(3).map(|dr6| dr6 & 1), Some(1), "DR6.B0 of the debug exit");
}

test_case! {
    /// KVM_GUESTDBG_USE_HW_BP with an execute breakpoint in debugreg[0]: calling the
    /// target at CPL0 exits to the host (#DB, PC the target, DR6.B0); the guest's own DR7
    /// reads unchanged and it sees no #DB.
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::guest_debug_hw_bp", cpl = [0, 3], mode = Long64, path = Full, requires = GUEST_DEBUG;
    fn guest_debug_hw_bp(cpl3: bool) {
        hw_bp_case(cpl3);
    }
}

static INJECTED: AtomicU64 = AtomicU64::new(u64::MAX);
static INJECTED_COUNT: AtomicU64 = AtomicU64::new(0);

/// Records the injected exception and returns past it. A handler, not catch!: the
/// exception arrives when the vCPU re-enters after the service call, in the middle of
/// the protocol code, which must run to its end.
fn injected(frame: &mut Frame) {
    INJECTED.store(frame.vector, SeqCst);
    INJECTED_COUNT.fetch_add(1, SeqCst);
}

fn inject_case(flag: u64, vector: u8) {
    set_handler(vector, injected);
    guest_debug(ENABLE | flag, 0, 0);
    guest_debug(0, 0, 0);
    check_eq!(INJECTED_COUNT.load(SeqCst), 1, "exceptions the injection raised in the guest");
    check_eq!(INJECTED.load(SeqCst), u64::from(vector), "the vector the guest took");
}

test_case! {
    /// KVM_GUESTDBG_INJECT_BP queues a #BP for the guest.
    name = "cpu::guest_debug_inject_bp::long64", mode = Long64, path = Full, requires = GUEST_DEBUG;
    fn guest_debug_inject_bp() {
        inject_case(INJECT_BP, exception::BP);
    }
}

test_case! {
    /// KVM_GUESTDBG_INJECT_DB queues a #DB for the guest.
    name = "cpu::guest_debug_inject_db::long64", mode = Long64, path = Full, requires = GUEST_DEBUG;
    fn guest_debug_inject_db() {
        inject_case(INJECT_DB, exception::DB);
    }
}

// Data breakpoints set by the host (debugreg[0] and DR7's R/W0 and LEN0, SDM Vol. 3B
// 19.2.4-19.2.5): a hit is a trap, so the debug exit's PC is the instruction after the
// access.

#[repr(C, align(16))]
struct Watched([u64; 2]);

static mut WATCHED: Watched = Watched([0; 2]);
/// The address right after the access `watched_access` made.
static AFTER_ACCESS: AtomicU64 = AtomicU64::new(0);

const ACCESS_WRITE: u64 = 0;
const ACCESS_READ: u64 = 1;
const ACCESS_WRITE_NEXT: u64 = 2;

/// One 8-byte access: a write of the watched quadword, a read of it, or a write of the
/// quadword after it. Records the address of the instruction after the access.
extern "C" fn watched_access(kind: u64) {
    let base = &raw mut WATCHED as u64;
    let after: u64;
    // SAFETY: one access to the case's own static.
    unsafe {
        match kind {
            ACCESS_WRITE => core::arch::asm!("mov qword ptr [{a}], {v}", "2:", "lea {n}, [rip + 2b]",
                a = in(reg) base, v = in(reg) 7u64, n = out(reg) after, options(nostack)),
            ACCESS_READ => core::arch::asm!("mov {v}, qword ptr [{a}]", "2:", "lea {n}, [rip + 2b]",
                a = in(reg) base, v = out(reg) _, n = out(reg) after, options(nostack)),
            _ => core::arch::asm!("mov qword ptr [{a} + 8], {v}", "2:", "lea {n}, [rip + 2b]",
                a = in(reg) base, v = in(reg) 7u64, n = out(reg) after, options(nostack)),
        }
    }
    AFTER_ACCESS.store(after, SeqCst);
}

/// DR7 for breakpoint 0: L0, the GE bit the SDM recommends, R/W0 and LEN0.
const fn dr7_watch(rw: u64, len: u64) -> u64 {
    1 | 1 << 10 | rw << 16 | len << 18
}
const RW_WRITE: u64 = 0b01;
const RW_READ_WRITE: u64 = 0b11;
const LEN_1: u64 = 0b00;
const LEN_8: u64 = 0b10;

/// Arms a host data breakpoint at `addr` with `dr7`, makes one access at CPL0 or CPL3,
/// and checks the host saw exactly `hits` debug exits, a trap just after the access.
fn watch_case(cpl3: bool, addr: u64, dr7: u64, kind: u64, hits: u64) {
    guest_debug(ENABLE | USE_HW_BP, addr, dr7);
    let e = call_at(cpl3, watched_access, kind);
    guest_debug(0, 0, 0);
    check_no_exception!(e);
    check_eq!(exits(0), Some(hits), "debug exits for one access");
    if hits == 0 {
        return;
    }
    check_eq!(exits(1), Some(u64::from(exception::DB)), "the exception of the debug exit");
    check_eq!(exits(2), Some(AFTER_ACCESS.load(SeqCst)), "the debug exit's PC (the instruction after the access)");
    check_eq!(exits(3).map(|dr6| dr6 & 1), Some(1), "DR6.B0 of the debug exit");
}

fn watched() -> u64 {
    &raw const WATCHED as u64
}

test_case! {
    /// A host write watchpoint (R/W0 = 01, LEN0 = 8 bytes) on a quadword: a write of it at
    /// CPL0 exits once, as a trap after the write, with DR6.B0 (SDM Vol. 3B 19.2.4).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::guest_debug_watch_write", cpl = [0, 3], mode = Long64, path = Full, requires = GUEST_DEBUG;
    fn guest_debug_watch_write(cpl3: bool) {
        watch_case(cpl3, watched(), dr7_watch(RW_WRITE, LEN_8), ACCESS_WRITE, 1);
    }
}

test_case! {
    /// A host read/write watchpoint (R/W0 = 11) catches a read of the quadword (SDM Vol.
    /// 3B 19.2.4).
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::guest_debug_watch_read", cpl = [0, 3], mode = Long64, path = Full, requires = GUEST_DEBUG;
    fn guest_debug_watch_read(cpl3: bool) {
        watch_case(cpl3, watched(), dr7_watch(RW_READ_WRITE, LEN_8), ACCESS_READ, 1);
    }
}

test_case! {
    /// A write watchpoint does not fire for a read, nor for a write of the next quadword
    /// (SDM Vol. 3B 19.2.5: only accesses that overlap the range, of the watched kind).
    name = "cpu::guest_debug_watch_miss::long64", mode = Long64, path = Full, requires = GUEST_DEBUG;
    fn guest_debug_watch_miss() {
        watch_case(false, watched(), dr7_watch(RW_WRITE, LEN_8), ACCESS_READ, 0);
        watch_case(false, watched(), dr7_watch(RW_WRITE, LEN_8), ACCESS_WRITE_NEXT, 0);
    }
}

test_case! {
    /// A one-byte watchpoint on byte 3 of the quadword fires for an 8-byte write that
    /// covers it (SDM Vol. 3B 19.2.5: any overlap).
    name = "cpu::guest_debug_watch_byte::long64", mode = Long64, path = Full, requires = GUEST_DEBUG;
    fn guest_debug_watch_byte() {
        watch_case(false, watched() + 3, dr7_watch(RW_WRITE, LEN_1), ACCESS_WRITE, 1);
    }
}

extern "C" fn watch_miss_at_cpl3(_: u64) {
    watched_access(ACCESS_READ);
    watched_access(ACCESS_WRITE_NEXT);
}

test_case! {
    /// As `::long64`, the accesses made at CPL3.
    name = "cpu::guest_debug_watch_miss::cpl3", mode = Long64, path = Full, requires = GUEST_DEBUG;
    fn guest_debug_watch_miss_cpl3() {
        guest_debug(ENABLE | USE_HW_BP, watched(), dr7_watch(RW_WRITE, LEN_8));
        let e = call_at(true, watch_miss_at_cpl3, 0);
        guest_debug(0, 0, 0);
        check_no_exception!(e);
        check_eq!(exits(0), Some(0), "debug exits for a read and a write next to a write watchpoint");
    }
}
