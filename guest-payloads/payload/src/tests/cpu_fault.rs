//! The `cpu` area, continued: the bits of the #PF error code, one per case, and the debug
//! registers' data breakpoints of every length, hit at CPL0 (emulated on kvm_pvm) and at
//! CPL3 (native there).

use hvprobe_rt::cpu;
use hvprobe_rt::exception::{self, armed_rip};
use hvprobe_rt::paging::{self, scratch_page as page, with_pte};
use hvprobe_rt::user::call_at_cpl3;
use hvprobe_rt::{catch, check, check_eq, check_exception, skip, test_case};

/// #PF error code bits (SDM Vol. 3A 4.7, Figure 4-12).
const PF_P: u64 = 1 << 0;
const PF_W: u64 = 1 << 1;
const PF_U: u64 = 1 << 2;
const PF_RSVD: u64 = 1 << 3;
const PF_ID: u64 = 1 << 4;

use x86::msr::IA32_EFER as MSR_EFER;
const EFER_NXE: u64 = 1 << 11;

extern "C" fn read_at_cpl3(addr: u64) {
    // SAFETY: a byte load; the page may fault, which is what the caller tests.
    unsafe { core::arch::asm!("mov {0:l}, [{0}]", inout(reg) addr => _) };
}

extern "C" fn write_at_cpl3(addr: u64) {
    // SAFETY: a byte store to the caller's scratch page; it may fault, which is the test.
    unsafe { core::arch::asm!("mov byte ptr [{0}], 1", in(reg) addr) };
}

extern "C" fn fetch_at_cpl3(addr: u64) {
    // SAFETY: jumps into the caller's page, which holds `jmp rcx` back if it is reachable.
    unsafe { core::arch::asm!("lea rcx, [rip + 2f]", "jmp {0}", "2:", in(reg) addr, out("rcx") _) };
}

test_case! {
    /// A CPL3 access to a not-present page raises #PF with U/S set and P clear: 0b100 for a
    /// read, 0b110 for a write, CR2 the address (SDM Vol. 3A 4.7: U/S is 1 for a user-mode
    /// access).
    name = "cpu::pf_error_user::long64", mode = Long64, path = Hw;
    fn pf_error_user() {
        let addr = page() + 0x240;
        let (read, write) = with_pte(addr, |pte| pte & !paging::PRESENT, || {
            (call_at_cpl3(read_at_cpl3, addr), call_at_cpl3(write_at_cpl3, addr))
        });
        let read = check_exception!(read, exception::PF, Some(PF_U));
        check_eq!(read.cr2, Some(addr), "CR2 of the read");
        let write = check_exception!(write, exception::PF, Some(PF_U | PF_W));
        check_eq!(write.cr2, Some(addr), "CR2 of the write");
    }
}

test_case! {
    /// With EFER.NXE set, an instruction fetch from a not-present page raises #PF with I/D
    /// set: 0x10 at CPL0 and 0x14 at CPL3, CR2 and RIP the target (SDM Vol. 3A 4.7: I/D is
    /// 1 for a fetch when 4-level paging and EFER.NXE are on), where CPUID advertises NX.
    name = "cpu::pf_error_fetch::long64", mode = Long64, path = Hw;
    fn pf_error_fetch() {
        if cpu::cpuid(0x8000_0001, 0).edx & (1 << 20) == 0 {
            skip!("CPUID.80000001H:EDX.NX[20] is clear");
        }
        let addr = page() + 0x380;
        // The page holds `jmp rcx`, so that a fetch the hypervisor lets through comes back.
        // SAFETY: writes two bytes of our own page.
        unsafe { core::ptr::copy_nonoverlapping([0xffu8, 0xe1].as_ptr(), addr as *mut u8, 2) };
        // SAFETY: EFER.NXE (bit 11) only enables the XD bit, which no PTE sets; restored below.
        let efer = unsafe {
            let efer = cpu::rdmsr(MSR_EFER);
            cpu::wrmsr(MSR_EFER, efer | EFER_NXE);
            efer
        };
        let (at_cpl0, at_cpl3) = with_pte(addr, |pte| pte & !paging::PRESENT, || {
            let at_cpl0 = catch!("lea rcx, [rip + 2f]", "jmp {0}", "2:", in(reg) addr, out("rcx") _);
            (at_cpl0, call_at_cpl3(fetch_at_cpl3, addr))
        });
        // SAFETY: restores EFER.
        unsafe { cpu::wrmsr(MSR_EFER, efer) };
        let e = check_exception!(at_cpl0, exception::PF, Some(PF_ID));
        check_eq!((e.cr2, e.rip), (Some(addr), addr), "CR2 and RIP of the CPL0 fetch");
        let e = check_exception!(at_cpl3, exception::PF, Some(PF_ID | PF_U));
        check_eq!((e.cr2, e.rip), (Some(addr), addr), "CR2 and RIP of the CPL3 fetch");
    }
}

/// A PTE address bit above MAXPHYADDR, or `None` when there is none.
fn reserved_address_bit() -> Option<u32> {
    let maxphy = cpu::cpuid(0x8000_0008, 0).eax & 0xff;
    (maxphy < 52).then_some(51)
}

test_case! {
    /// A reserved bit in a PTE faults CPL3 accesses with P, U/S and RSVD set: 0b1101 for a
    /// read, 0b1111 for a write (SDM Vol. 3A 4.7: RSVD is 1 when a reserved bit was set in
    /// a paging-structure entry).
    name = "cpu::pf_error_rsvd_user::long64", mode = Long64, path = Hw;
    fn pf_error_rsvd_user() {
        let Some(bit) = reserved_address_bit() else { skip!("MAXPHYADDR is 52: no reserved PTE address bits") };
        let addr = page() + 0x600;
        let (read, write) = with_pte(addr, |pte| pte | 1 << bit, || {
            (call_at_cpl3(read_at_cpl3, addr), call_at_cpl3(write_at_cpl3, addr))
        });
        let read = check_exception!(read, exception::PF, Some(PF_RSVD | PF_U | PF_P));
        check_eq!(read.cr2, Some(addr));
        let write = check_exception!(write, exception::PF, Some(PF_RSVD | PF_U | PF_W | PF_P));
        check_eq!(write.cr2, Some(addr));
    }
}

/// An address in a 2 MiB page of the state region, which no other code in the case uses.
const LARGE_PAGE_ADDR: u64 = hvprobe_rt::abi::layout::STATE_REGION + 0x1_0040;

/// Runs `body` while the PDE that maps `LARGE_PAGE_ADDR` with a 2 MiB page holds
/// `edit(old)`, flushing its TLB entry on the way in and out.
fn with_large_pde<R>(edit: impl FnOnce(u64) -> u64, body: impl FnOnce() -> R) -> R {
    // The harness maps the first GiB with the page directory at layout::PD0.
    let pde = (hvprobe_rt::abi::layout::PD0 + (LARGE_PAGE_ADDR >> 21) * 8) as *mut u64;
    // SAFETY: the PDE lives in identity-mapped RAM and maps RAM nothing else here uses.
    let saved = unsafe { pde.read_volatile() };
    check_eq!(saved & (1 << 7), 1 << 7, "the state region is mapped with 2 MiB pages");
    // SAFETY: as above.
    unsafe { pde.write_volatile(edit(saved)) };
    paging::invlpg(LARGE_PAGE_ADDR);
    let result = body();
    // SAFETY: as above.
    unsafe { pde.write_volatile(saved) };
    paging::invlpg(LARGE_PAGE_ADDR);
    result
}

test_case! {
    /// Bits 20:13 of a PDE that maps a 2 MiB page are reserved: with bit 13 set a CPL0 read
    /// raises #PF(P|RSVD) = 0b1001, CR2 the address (SDM Vol. 3A 4.5.4, Table 4-18, and 4.7).
    name = "cpu::pf_rsvd_large_page::long64", mode = Long64, path = Hw;
    fn pf_rsvd_large_page() {
        let e = with_large_pde(|pde| pde | 1 << 13, || catch!("mov {0:l}, [{0}]", inout(reg) LARGE_PAGE_ADDR => _));
        let e = check_exception!(e, exception::PF, Some(PF_RSVD | PF_P));
        check_eq!(e.cr2, Some(LARGE_PAGE_ADDR));
    }
}

test_case! {
    /// A not-present PDE that would map a 2 MiB page faults reads and writes with P clear:
    /// 0 and 0b10, CR2 the address (SDM Vol. 3A 4.5.4 and 4.7).
    name = "cpu::pf_not_present_pde::long64", mode = Long64, path = Hw;
    fn pf_not_present_pde() {
        let (read, write) = with_large_pde(|pde| pde & !paging::PRESENT, || {
            let read = catch!("mov {0:l}, [{0}]", inout(reg) LARGE_PAGE_ADDR => _);
            let write = catch!("mov byte ptr [{0}], 1", in(reg) LARGE_PAGE_ADDR);
            (read, write)
        });
        let read = check_exception!(read, exception::PF, Some(0));
        check_eq!(read.cr2, Some(LARGE_PAGE_ADDR));
        let write = check_exception!(write, exception::PF, Some(PF_W));
        check_eq!(write.cr2, Some(LARGE_PAGE_ADDR));
    }
}

/// Bytes that data breakpoints watch; 8-byte aligned, as an 8-byte breakpoint needs.
#[repr(C, align(16))]
struct Watched([u8; 16]);
static mut WATCHED: Watched = Watched([0; 16]);

/// A data breakpoint: which DRn, and its DR7 LEN encoding for `len` bytes (SDM Vol. 3B
/// 18.2.4: 00 = 1, 01 = 2, 11 = 4, 10 = 8 bytes).
#[derive(Clone, Copy)]
struct Breakpoint {
    n: u32,
    len: u64,
}

impl Breakpoint {
    fn len_bits(self) -> u64 {
        match self.len {
            1 => 0b00,
            2 => 0b01,
            4 => 0b11,
            _ => 0b10,
        }
    }

    /// Arms the breakpoint on the start of WATCHED for reads and writes (R/W = 11).
    fn arm(self) {
        let addr = &raw const WATCHED as u64;
        let dr7 = 1u64 << (2 * self.n) | (self.len_bits() << 2 | 0b11) << (16 + 4 * self.n);
        // SAFETY: the breakpoint only raises #DB, which the test catches; `disarm` clears it.
        unsafe {
            match self.n {
                0 => core::arch::asm!("mov dr0, {0}", in(reg) addr),
                1 => core::arch::asm!("mov dr1, {0}", in(reg) addr),
                2 => core::arch::asm!("mov dr2, {0}", in(reg) addr),
                _ => core::arch::asm!("mov dr3, {0}", in(reg) addr),
            }
            core::arch::asm!("mov dr6, {0}", "mov dr7, {1}", in(reg) 0xffff_0ff0u64, in(reg) dr7);
        }
    }
}

/// Clears DR7 and returns DR6.
fn disarm() -> u64 {
    let dr6: u64;
    // SAFETY: clears DR7 and reads DR6; no side effects beyond the debug state.
    unsafe { core::arch::asm!("mov {0}, dr6", "mov dr7, {1}", out(reg) dr6, in(reg) 0x400u64) };
    dr6
}

/// Reads the last byte a breakpoint covers, then the byte after it, at CPL0: the first
/// read must raise a #DB trap with DR6.Bn set, the second nothing (SDM Vol. 3B 18.2.4,
/// 18.2.5 and 18.3.1.2).
fn data_breakpoint_at_cpl0(bp: Breakpoint) {
    let last = &raw const WATCHED as u64 + bp.len - 1;
    bp.arm();
    // The address is pinned to RDI: `mov al, [rdi]` is 2 bytes, so the trap's RIP is known.
    let inside = catch!("mov al, byte ptr [rdi]", in("rdi") last, out("al") _);
    let dr6 = disarm();
    check!(inside.is_some(), "a read of the last byte DR{} watches ({} bytes) raised no #DB", bp.n, bp.len);
    let e = check_exception!(inside, exception::DB, None);
    check_eq!(e.rip, armed_rip() + 2, "a data breakpoint is a trap: RIP follows the load");
    check_eq!(dr6 & 0xf, 1 << bp.n, "DR6.B{} alone", bp.n);
    bp.arm();
    let outside = catch!("mov al, byte ptr [rdi]", in("rdi") last + 1, out("al") _);
    disarm();
    check_eq!(outside, None, "a read of the byte after the {} bytes DR{} watches", bp.len, bp.n);
}

/// The same reads at CPL3, with the breakpoint armed at CPL0.
fn data_breakpoint_at_cpl3(bp: Breakpoint) {
    let last = &raw const WATCHED as u64 + bp.len - 1;
    bp.arm();
    let inside = call_at_cpl3(read_at_cpl3, last);
    let dr6 = disarm();
    check!(inside.is_some(), "a CPL3 read of the last byte DR{} watches ({} bytes) raised no #DB", bp.n, bp.len);
    check_exception!(inside, exception::DB, None);
    check_eq!(dr6 & 0xf, 1 << bp.n, "DR6.B{} alone", bp.n);
    bp.arm();
    let outside = call_at_cpl3(read_at_cpl3, last + 1);
    disarm();
    check_eq!(outside, None, "a CPL3 read of the byte after the {} bytes DR{} watches", bp.len, bp.n);
}

test_case! {
    /// A 1-byte read/write breakpoint in DR0 traps a read of its byte and not of the next
    /// (SDM Vol. 3B 18.2.4 and 18.2.5).
    name = "cpu::exc_db_data_len1::long64", mode = Long64, path = Hw;
    fn exc_db_data_len1() {
        data_breakpoint_at_cpl0(Breakpoint { n: 0, len: 1 });
    }
}

test_case! {
    /// A 2-byte read/write breakpoint in DR1 traps a read of its second byte and not of the
    /// third (SDM Vol. 3B 18.2.4 and 18.2.5).
    name = "cpu::exc_db_data_len2::long64", mode = Long64, path = Hw;
    fn exc_db_data_len2() {
        data_breakpoint_at_cpl0(Breakpoint { n: 1, len: 2 });
    }
}

test_case! {
    /// An 8-byte read/write breakpoint in DR2 traps a read of its eighth byte and not of the
    /// ninth (SDM Vol. 3B 18.2.4 and 18.2.5).
    name = "cpu::exc_db_data_len8::long64", mode = Long64, path = Hw;
    fn exc_db_data_len8() {
        data_breakpoint_at_cpl0(Breakpoint { n: 2, len: 8 });
    }
}

test_case! {
    /// A 4-byte read/write breakpoint in DR3 traps a read of its fourth byte and not of the
    /// fifth (SDM Vol. 3B 18.2.4 and 18.2.5).
    name = "cpu::exc_db_data_len4::long64", mode = Long64, path = Hw;
    fn exc_db_data_len4() {
        data_breakpoint_at_cpl0(Breakpoint { n: 3, len: 4 });
    }
}

test_case! {
    /// The 1-byte DR0 breakpoint armed at CPL0 traps a CPL3 read too (DR7.L0 is not
    /// limited to a privilege level; SDM Vol. 3B 18.2.4).
    name = "cpu::exc_db_data_len1_cpl3::long64", mode = Long64, path = Hw;
    fn exc_db_data_len1_cpl3() {
        data_breakpoint_at_cpl3(Breakpoint { n: 0, len: 1 });
    }
}

test_case! {
    /// The 2-byte DR1 breakpoint traps a CPL3 read (SDM Vol. 3B 18.2.4).
    name = "cpu::exc_db_data_len2_cpl3::long64", mode = Long64, path = Hw;
    fn exc_db_data_len2_cpl3() {
        data_breakpoint_at_cpl3(Breakpoint { n: 1, len: 2 });
    }
}

test_case! {
    /// The 8-byte DR2 breakpoint traps a CPL3 read (SDM Vol. 3B 18.2.4).
    name = "cpu::exc_db_data_len8_cpl3::long64", mode = Long64, path = Hw;
    fn exc_db_data_len8_cpl3() {
        data_breakpoint_at_cpl3(Breakpoint { n: 2, len: 8 });
    }
}

test_case! {
    /// The 4-byte DR3 breakpoint traps a CPL3 read (SDM Vol. 3B 18.2.4).
    name = "cpu::exc_db_data_len4_cpl3::long64", mode = Long64, path = Hw;
    fn exc_db_data_len4_cpl3() {
        data_breakpoint_at_cpl3(Breakpoint { n: 3, len: 4 });
    }
}

test_case! {
    /// With DR7.GD set, a MOV from a debug register raises #DB as a fault before it runs,
    /// with DR6.BD[13] set; the processor clears GD on entry to the handler (SDM Vol. 3B
    /// 18.2.4, "GD", and 18.3.1.3).
    name = "cpu::exc_db_general_detect::long64", mode = Long64, path = Hw;
    fn exc_db_general_detect() {
        // SAFETY: GD only makes debug-register access raise #DB, which the test catches.
        unsafe { core::arch::asm!("mov dr6, {0}", "mov dr7, {1}", in(reg) 0xffff_0ff0u64, in(reg) 0x2400u64) };
        let e = catch!("mov {0}, dr6", out(reg) _);
        let (dr6, dr7): (u64, u64);
        // SAFETY: reads the debug state; GD is clear again if the #DB was delivered.
        unsafe { core::arch::asm!("mov {0}, dr7", "mov {1}, dr6", out(reg) dr7, out(reg) dr6) };
        disarm();
        check!(e.is_some(), "MOV from DR6 with DR7.GD set raised nothing");
        let e = check_exception!(e, exception::DB, None);
        check_eq!(e.rip, armed_rip(), "general detect is a fault: RIP is the MOV");
        check_eq!(dr6 & (1 << 13), 1 << 13, "DR6.BD");
        check_eq!(dr7 & (1 << 13), 0, "DR7.GD is cleared on entry to the #DB handler");
    }
}
