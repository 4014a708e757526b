//! The `cpu` area: #DE overflow, #DF, #NM, #NP, #SS, #UD (LOCK, instructions invalid in
//! 64-bit mode), debug exceptions from DR0/DR1 and single-step, INT n through a DPL3 gate,
//! and paging (accessed/dirty bits, CR3 reload, INVLPG, NX, read-only, U/S, reserved bits).

use hvprobe_rt::cpu;
use hvprobe_rt::exception::{self, armed_rip};
use hvprobe_rt::paging::{scratch_page as page, with_pte};
use hvprobe_rt::user::call_at_cpl3;
use hvprobe_rt::{catch, check, check_eq, check_exception, paging, test_case};

test_case! {
    /// With RFLAGS.TF set, the next instruction ends with a single-step #DB, a trap: the
    /// saved RIP follows that instruction and DR6.BS[14] is set (SDM Vol. 3B, 18.3.1.4).
    name = "cpu::exc_db_single_step::long64", mode = Long64, path = Hw;
    fn exc_db_single_step() {
        let e = catch!("pushfq", "or qword ptr [rsp], 0x100", "popfq", "nop", "nop");
        let e = check_exception!(e, exception::DB, None);
        // pushfq (1 byte) + or r/m64, imm32 (8) + popfq (1) + nop (1): the trap comes
        // after the first NOP, the instruction that POPF's TF applies to.
        check_eq!(e.rip, armed_rip() + 11, "trap after the instruction following POPF");
        // DR6 is readable at CPL0 only.
        if cpu::read_cs() & 3 == 0 {
            let dr6: u64;
            // SAFETY: reading DR6 has no side effects.
            unsafe { core::arch::asm!("mov {0}, dr6", out(reg) dr6) };
            check!(dr6 & (1 << 14) != 0, "DR6.BS clear: {:#x}", dr6);
        }
        check_eq!(cpu::read_rflags() & 0x100, 0, "TF is clear again");
    }
}

test_case! {
    /// x87 instructions with CR0.TS set raise #NM: FNINIT, then FNOP
    /// (SDM Vol. 3A, 6.15, Interrupt 7).
    name = "cpu::exc_nm::long64", mode = Long64, path = Hw;
    fn exc_nm() {
        let cr0 = cpu::read_cr0();
        // SAFETY: sets CR0.TS (bit 3); restored below.
        unsafe { cpu::write_cr0(cr0 | 1 << 3) };
        // Each is checked before the next runs: a hypervisor that cannot handle one must
        // not hide how it handled the other. (The checks use no x87, so TS may stay set.)
        let e = check_exception!(catch!("fninit"), exception::NM, None);
        check_eq!(e.rip, armed_rip());
        let e = check_exception!(catch!("fnop"), exception::NM, None);
        check_eq!(e.rip, armed_rip());
        // SAFETY: restores CR0.
        unsafe { cpu::write_cr0(cr0) };
    }
}

test_case! {
    /// IDIV of the most negative value by -1 overflows and raises #DE
    /// (SDM Vol. 2A, IDIV: "#DE if the quotient is too large").
    name = "cpu::exc_de_overflow::long64", mode = Long64, path = Hw;
    fn exc_de_overflow() {
        let e = catch!("idiv {0}", in(reg) -1i64, inout("rax") i64::MIN => _, inout("rdx") -1i64 => _);
        check_exception!(e, exception::DE, None);
    }
}

test_case! {
    /// Opcodes that 64-bit mode removed raise #UD: INTO (CE), AAA (37), PUSH ES (06)
    /// (SDM Vol. 2, Appendix A, "i64" opcodes).
    name = "cpu::exc_ud_invalid_in_64bit::long64", mode = Long64, path = Hw;
    fn exc_ud_invalid_in_64bit() {
        check_exception!(catch!(".byte 0xce"), exception::UD, None);
        check_exception!(catch!(".byte 0x37"), exception::UD, None);
        check_exception!(catch!(".byte 0x06"), exception::UD, None);
    }
}

test_case! {
    /// A LOCK prefix on an instruction that cannot be locked, or with a register
    /// destination, raises #UD (SDM Vol. 2A, LOCK).
    name = "cpu::exc_ud_lock::long64", mode = Long64, path = Hw;
    fn exc_ud_lock() {
        // lock add rax, rbx: f0 48 01 d8
        check_exception!(catch!(".byte 0xf0, 0x48, 0x01, 0xd8"), exception::UD, None);
        // lock nop
        check_exception!(catch!(".byte 0xf0, 0x90"), exception::UD, None);
    }
}

test_case! {
    /// A non-canonical address referenced through SS raises #SS(0), not #GP
    /// (SDM Vol. 3A, 6.15, Interrupt 12).
    name = "cpu::exc_ss_noncanonical::long64", mode = Long64, path = Hw;
    fn exc_ss_noncanonical() {
        let e = catch!("mov {0}, qword ptr ss:[{0}]", inout(reg) 0x8000_0000_0000_0000u64 => _);
        check_exception!(e, exception::SS, Some(0));
    }
}

test_case! {
    /// Loading SS with a null selector at CPL0 in 64-bit mode is allowed, but loading DS
    /// with a selector for a not-present descriptor raises #NP(selector); here the user
    /// code descriptor made not-present for the test (SDM Vol. 3A, 6.15, Interrupt 11).
    name = "cpu::exc_np_selector::long64", mode = Long64, path = Hw;
    fn exc_np_selector() {
        let selector = hvprobe_rt::abi::selector::USER_DATA & !3;
        let desc = (hvprobe_rt::abi::layout::GDT + selector as u64) as *mut u64;
        // SAFETY: the GDT is identity-mapped RAM; the user data descriptor is not in use
        // at CPL0 and is restored before the test ends.
        let saved = unsafe { desc.read_volatile() };
        // SAFETY: as above; clears P (bit 47) and sets DPL 0 so only P is wrong.
        unsafe { desc.write_volatile(saved & !(1 << 47) & !(3 << 45)) };
        let e = catch!("mov ds, {0:x}", in(reg) selector);
        // SAFETY: restores the descriptor.
        unsafe { desc.write_volatile(saved) };
        check_exception!(e, exception::NP, Some(selector as u64));
    }
}

const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;

test_case! {
    /// The CPU sets a PTE's accessed bit on a read and its dirty bit on a write, and only
    /// then (SDM Vol. 3A, 4.8).
    name = "cpu::paging_accessed_dirty::long64", mode = Long64, path = Hw;
    fn paging_accessed_dirty() {
        let addr = page();
        let pte = paging::pte_mut(addr);
        *pte &= !(ACCESSED | DIRTY);
        paging::invlpg(addr);
        // SAFETY: a read of our own page.
        let _ = unsafe { (addr as *const u8).read_volatile() };
        check_eq!(*pte & (ACCESSED | DIRTY), ACCESSED, "after a read: A set, D clear");
        // SAFETY: a write to our own page.
        unsafe { (addr as *mut u8).write_volatile(1) };
        check_eq!(*pte & (ACCESSED | DIRTY), ACCESSED | DIRTY, "after a write: A and D set");
    }
}

test_case! {
    /// A reserved bit in a PTE (above MAXPHYADDR) makes the access fault with #PF error
    /// code P=1, RSVD=1 (SDM Vol. 3A, 4.7).
    name = "cpu::paging_reserved_bit::long64", mode = Long64, path = Hw;
    fn paging_reserved_bit() {
        let maxphy = cpu::cpuid(0x8000_0008, 0).eax & 0xff;
        if maxphy >= 52 {
            hvprobe_rt::skip!("MAXPHYADDR is {}: no reserved PTE address bits", maxphy);
        }
        let addr = page() + 0x40;
        let e = with_pte(addr, |pte| pte | 1 << 51, || catch!("mov {0:l}, [{0}]", inout(reg) addr => _));
        let e = check_exception!(e, exception::PF, Some(0b1001));
        check_eq!(e.cr2, Some(addr));
    }
}

test_case! {
    /// With EFER.NXE set, fetching from a page whose PTE has XD[63] raises #PF with
    /// P=1 and I/D=1 (error code 0x11), CR2 the fetch address (SDM Vol. 3A, 4.6 and 4.7).
    name = "cpu::paging_nx::long64", mode = Long64, path = Hw;
    fn paging_nx() {
        if cpu::cpuid(0x8000_0001, 0).edx & (1 << 20) == 0 {
            hvprobe_rt::skip!("CPUID.80000001H:EDX.NX[20] is clear");
        }
        let addr = page() + 0x100;
        // The page holds `jmp rcx`, so that a fetch the hypervisor lets through comes back.
        // SAFETY: writes two bytes of our own page.
        unsafe { core::ptr::copy_nonoverlapping([0xffu8, 0xe1].as_ptr(), addr as *mut u8, 2) };
        // SAFETY: EFER.NXE (bit 11) only enables the XD bit; EFER is restored below.
        let efer = unsafe {
            let efer = cpu::rdmsr(x86::msr::IA32_EFER);
            cpu::wrmsr(x86::msr::IA32_EFER, efer | 1 << 11);
            efer
        };
        let e = with_pte(addr, |pte| pte | 1 << 63, || {
            catch!("lea rcx, [rip + 2f]", "jmp {0}", "2:", in(reg) addr, out("rcx") _)
        });
        // SAFETY: restores EFER.
        unsafe { cpu::wrmsr(x86::msr::IA32_EFER, efer) };
        let e = check_exception!(e, exception::PF, Some(0x11));
        check_eq!(e.cr2, Some(addr));
        check_eq!(e.rip, addr, "the fault is on the fetch at the target");
    }
}

test_case! {
    /// INVLPG makes a PTE change visible: a page remapped to another frame reads the new
    /// frame's data after INVLPG (SDM Vol. 3A, 4.10.4.1).
    name = "cpu::paging_invlpg_remap::long64", mode = Long64, path = Hw;
    fn paging_invlpg_remap() {
        let addr = page();
        let other = addr + 0x1000;
        check!(other < hvprobe_rt::abi::layout::IMAGE_END, "the next frame is in the 4 KiB-mapped region");
        // SAFETY: our page, and the frame after it, read through the identity map.
        let next = unsafe { ((other + 8) as *const u64).read_volatile() };
        // SAFETY: our page.
        unsafe { ((addr + 8) as *mut u64).write_volatile(!next) };
        // SAFETY: the remapped page maps the next frame, which is mapped and readable.
        let read = || unsafe { ((addr + 8) as *const u64).read_volatile() };
        let seen = with_pte(addr, |pte| (pte & !paging::FRAME) | other, read);
        check_eq!(seen, next, "after INVLPG the old translation is gone");
    }
}

// The same exceptions raised at CPL3. On PVM these run natively while the long64 cases
// above go through KVM's instruction emulator, so each pair compares the two.

test_case! {
    /// Single-step #DB at CPL3, delivered to the CPL0 handler.
    name = "cpu::exc_db_single_step::user64", mode = User64, path = Hw;
    entry = exc_db_single_step
}

test_case! {
    /// IDIV overflow #DE at CPL3.
    name = "cpu::exc_de_overflow::user64", mode = User64, path = Hw;
    entry = exc_de_overflow
}

test_case! {
    /// Removed opcodes raise #UD at CPL3 too.
    name = "cpu::exc_ud_invalid_in_64bit::user64", mode = User64, path = Hw;
    entry = exc_ud_invalid_in_64bit
}

test_case! {
    /// A bad LOCK prefix raises #UD at CPL3 too.
    name = "cpu::exc_ud_lock::user64", mode = User64, path = Hw;
    entry = exc_ud_lock
}

test_case! {
    /// A non-canonical SS reference raises #SS(0) at CPL3 too.
    name = "cpu::exc_ss_noncanonical::user64", mode = User64, path = Hw;
    entry = exc_ss_noncanonical
}

static USER_INTS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

fn count_user_int(_: &mut hvprobe_rt::Frame) {
    USER_INTS.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
}

test_case! {
    /// INT n from CPL3 through an interrupt gate with DPL 3 reaches that vector's handler
    /// (SDM Vol. 2A, INT n: "if the gate's DPL >= CPL" the interrupt is delivered).
    name = "cpu::int_n_dpl3_gate::user64", mode = User64, path = Hw;
    fn int_n_dpl3_gate() {
        hvprobe_rt::exception::set_handler(hvprobe_rt::abi::USER_INT_VECTOR, count_user_int);
        let e = catch!("int 0x81");
        if let Some(e) = e {
            hvprobe_rt::proto::fail(
                file!(),
                line!(),
                match e.vector {
                    exception::UD => "INT 0x81 through a DPL3 gate raised #UD",
                    exception::GP => "INT 0x81 through a DPL3 gate raised #GP",
                    _ => "INT 0x81 through a DPL3 gate raised an exception",
                },
                Some((0x81, e.vector as u64)),
            );
        }
        check_eq!(USER_INTS.load(core::sync::atomic::Ordering::SeqCst), 1, "the handler ran once");
    }
}

extern "C" fn read_at_cpl3(addr: u64) {
    // SAFETY: a byte load; the page may fault, which is what the caller tests.
    unsafe { core::arch::asm!("mov {0:l}, [{0}]", inout(reg) addr => _) };
}

extern "C" fn write_at_cpl3(addr: u64) {
    // SAFETY: a byte store to the caller's scratch page; it may fault, which is the test.
    unsafe { core::arch::asm!("mov byte ptr [{0}], 1", in(reg) addr) };
}

test_case! {
    /// A supervisor page (U/S clear) is out of reach at CPL3: reads fault with #PF(P|U) and
    /// writes with #PF(P|W|U) (SDM Vol. 3A, 4.6 and 4.7).
    name = "cpu::paging_user_supervisor::long64", mode = Long64, path = Hw;
    fn paging_user_supervisor() {
        let addr = page() + 0x300;
        let (read, write) = with_pte(addr, |pte| pte & !paging::USER, || {
            (call_at_cpl3(read_at_cpl3, addr), call_at_cpl3(write_at_cpl3, addr))
        });
        check!(read.is_some() && write.is_some(), "CPL3 access to a supervisor page: read {:?}, write {:?}", read, write);
        check_exception!(read, exception::PF, Some(0b101));
        check_exception!(write, exception::PF, Some(0b111));
    }
}

test_case! {
    /// A 2 MiB page's PDE gets its accessed bit on a read and its dirty bit on a write
    /// (SDM Vol. 3A, 4.8).
    name = "cpu::paging_large_page_ad::long64", mode = Long64, path = Hw;
    fn paging_large_page_ad() {
        let addr: u64 = 0x30_0000 + 0x80;
        // The harness maps the first GiB with the page directory at layout::PD0.
        let pde = (hvprobe_rt::abi::layout::PD0 + (addr >> 21) * 8) as *mut u64;
        // SAFETY: the PDE lives in identity-mapped RAM; the page it maps is RAM.
        unsafe {
            check_eq!(pde.read_volatile() & (1 << 7), 1 << 7, "a 2 MiB mapping");
            pde.write_volatile(pde.read_volatile() & !(ACCESSED | DIRTY));
            paging::invlpg(addr);
            let _ = (addr as *const u8).read_volatile();
            check_eq!(pde.read_volatile() & (ACCESSED | DIRTY), ACCESSED, "after a read");
            (addr as *mut u8).write_volatile(1);
            check_eq!(pde.read_volatile() & (ACCESSED | DIRTY), ACCESSED | DIRTY, "after a write");
        }
    }
}

test_case! {
    /// A write to CR3 flushes non-global translations: a PTE changed without INVLPG takes
    /// effect after CR3 is reloaded (SDM Vol. 3A, 4.10.4.1).
    name = "cpu::paging_cr3_reload::long64", mode = Long64, path = Hw;
    fn paging_cr3_reload() {
        let addr = page();
        let other = addr + 0x1000;
        // SAFETY: our page and the next frame, read through the identity map.
        let next = unsafe { ((other + 16) as *const u64).read_volatile() };
        // SAFETY: our page; touching it loads its translation into the TLB.
        unsafe { ((addr + 16) as *mut u64).write_volatile(!next) };
        let pte = paging::pte_mut(addr);
        let saved = *pte;
        *pte = (saved & !paging::FRAME) | other;
        // SAFETY: reloading CR3 with its own value only flushes the TLB.
        unsafe { core::arch::asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _) };
        // SAFETY: the remapped page maps the next frame, which is mapped and readable.
        let seen = unsafe { ((addr + 16) as *const u64).read_volatile() };
        *pte = saved;
        paging::invlpg(addr);
        check_eq!(seen, next, "after a CR3 reload the old translation is gone");
    }
}

test_case! {
    /// An exception whose IDT gate lies beyond the IDT limit raises #GP, whose own gate
    /// is beyond the limit too: that is a #DF with error code 0 (SDM Vol. 3A, 6.15,
    /// Interrupt 8, Table 6-5). The IDT is cut to vectors 0-8 for the test.
    name = "cpu::exc_df::long64", mode = Long64, path = Hw;
    fn exc_df() {
        let mut old = x86::dtables::DescriptorTablePointer::<u8>::default();
        // The IDT with gates 0-8 only: #DF (8) and everything below it stay reachable.
        let short = x86::dtables::DescriptorTablePointer::<u8> {
            limit: 9 * 16 - 1,
            base: hvprobe_rt::abi::layout::IDT as *const u8,
        };
        // SAFETY: saves the IDTR.
        unsafe { x86::dtables::sidt(&mut old) };
        // A non-canonical load raises #GP (13), whose gate is now beyond the limit.
        let e = catch!("lidt [{0}]", "mov {1}, [{1}]", in(reg) &raw const short, inout(reg) 0x8000_0000_0000_0000u64 => _);
        // SAFETY: restores the IDTR.
        unsafe { x86::dtables::lidt(&old) };
        check_exception!(e, exception::DF, Some(0));
    }
}

/// Arms hardware breakpoint 0 or 1 (DR7 L0/L1) on `addr` with the given R/W and LEN bits.
fn arm_breakpoint(n: u32, addr: u64, rw_len: u64) {
    let dr7 = (1u64 << (2 * n)) | (rw_len << (16 + 4 * n));
    // SAFETY: the breakpoint only raises #DB, which the test catches; disarmed by the caller.
    unsafe {
        match n {
            0 => core::arch::asm!("mov dr0, {0}", in(reg) addr),
            _ => core::arch::asm!("mov dr1, {0}", in(reg) addr),
        }
        core::arch::asm!("mov dr6, {0}", "mov dr7, {1}", in(reg) 0xffff_0ff0u64, in(reg) dr7);
    }
}

fn disarm_breakpoints() -> u64 {
    let dr6: u64;
    // SAFETY: clears DR7 and reads DR6; no side effects beyond the debug state.
    unsafe { core::arch::asm!("mov {0}, dr6", "mov dr7, {1}", out(reg) dr6, in(reg) 0x400u64) };
    dr6
}

test_case! {
    /// An execute breakpoint in DR0 raises #DB as a fault before the instruction, with
    /// DR6.B0 set (SDM Vol. 3B, 18.2.4 and 18.3.1.1).
    name = "cpu::exc_db_dr0_execute::long64", mode = Long64, path = Hw;
    fn exc_db_dr0_execute() {
        // The breakpoint is on a NOP reached by JMP and left by `jmp rcx`, so a fault there
        // leaves the stack as it was (a CALL would leave its return address behind).
        let target: u64;
        // SAFETY: computes an address inside this function.
        unsafe { core::arch::asm!("lea {0}, [rip + 3f]", "jmp 4f", "3:", "nop", "jmp rcx", "4:", out(reg) target) };
        arm_breakpoint(0, target, 0b0000);
        let e = catch!("lea rcx, [rip + 2f]", "jmp {0}", "2:", in(reg) target, out("rcx") _);
        let dr6 = disarm_breakpoints();
        let e = check_exception!(e, exception::DB, None);
        check_eq!(e.rip, target, "an instruction breakpoint is a fault: RIP is the NOP");
        check_eq!(dr6 & 0xf, 1, "DR6.B0");
    }
}

static WATCHED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

test_case! {
    /// A data-write breakpoint in DR1 raises #DB as a trap after the write, with DR6.B1 set
    /// (SDM Vol. 3B, 18.2.4 and 18.3.1.2).
    name = "cpu::exc_db_dr1_write::long64", mode = Long64, path = Hw;
    fn exc_db_dr1_write() {
        let addr = &raw const WATCHED as u64;
        arm_breakpoint(1, addr, 0b1101);
        let e = catch!("mov qword ptr [{0}], 5", "nop", in(reg) addr);
        let dr6 = disarm_breakpoints();
        check!(e.is_some(), "a write to the address DR1 watches raised no #DB (DR6 {:#x})", dr6);
        let e = check_exception!(e, exception::DB, None);
        check_eq!(e.rip, armed_rip() + 7, "a data breakpoint is a trap: RIP follows the MOV");
        check_eq!(dr6 & 0xf, 0b10, "DR6.B1");
        check_eq!(WATCHED.load(core::sync::atomic::Ordering::SeqCst), 5, "the write happened");
    }
}

test_case! {
    /// A CPL3 write to a read-only user page raises #PF(P|W|U) whatever CR0.WP says
    /// (SDM Vol. 3A, 4.6.1).
    name = "cpu::paging_read_only_cpl3::long64", mode = Long64, path = Hw;
    fn paging_read_only_cpl3() {
        let addr = page() + 0x500;
        let cr0 = cpu::read_cr0();
        // SAFETY: CR0.WP (bit 16) off: only supervisor writes would change; restored below.
        unsafe { cpu::write_cr0(cr0 & !(1 << 16)) };
        let e = with_pte(addr, |pte| pte & !paging::WRITABLE, || call_at_cpl3(write_at_cpl3, addr));
        // SAFETY: restores CR0.
        unsafe { cpu::write_cr0(cr0) };
        check!(e.is_some(), "a CPL3 write to a read-only page raised nothing");
        check_exception!(e, exception::PF, Some(0b111));
    }
}
