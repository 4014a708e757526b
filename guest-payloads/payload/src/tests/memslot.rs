//! Memory slots changed while the guest runs (KVM_SET_USER_MEMORY_REGION on a live VM,
//! api.rst 4.35): a slot added in the hot-plug window is memory at once, a deleted one is
//! absent again (its reads are the VMM's absent-MMIO all-ones), and a moved one shows the
//! same memory at its new address and nothing at the old. (A second vCPU cannot watch the
//! slot come and go here: its reads of the absent window would exit to userspace, which
//! the harness serves for vCPU 0 only.)

use hvprobe_rt::abi::layout::{HOTPLUG_BASE, HOTPLUG_SIZE};
use hvprobe_rt::abi::proto::{MEMSLOT_ADD, MEMSLOT_DELETE, MEMSLOT_MOVE, service};
use hvprobe_rt::proto::service as request;
use hvprobe_rt::{check_eq, test_case};

const PATTERN: u64 = 0x5107_0000_0000_0000;
const ABSENT: u64 = u64::MAX;

fn memslot(op: u64, gpa: u64, pattern: u64) {
    check_eq!(request(service::MEMSLOT, [op, gpa, pattern, 0]), Ok(0), "MEMSLOT op {}", op);
}

fn read(gpa: u64) -> u64 {
    // SAFETY: the window is identity-mapped; it is memory or absent MMIO.
    unsafe { (gpa as *const u64).read_volatile() }
}

fn write(gpa: u64, value: u64) {
    // SAFETY: as above; a write to absent MMIO is dropped by the VMM.
    unsafe { (gpa as *mut u64).write_volatile(value) }
}

/// The hot-plugged slot reads as its pattern on both pages, and keeps a write.
fn check_slot_at(gpa: u64, pattern: u64) {
    check_eq!(read(gpa), pattern, "the first word of the added slot");
    check_eq!(read(gpa + HOTPLUG_SIZE - 8), pattern ^ (HOTPLUG_SIZE - 8), "the last word of the added slot");
}

fn memslot_add() {
    check_eq!(read(HOTPLUG_BASE), ABSENT, "the window before the slot is added");
    memslot(MEMSLOT_ADD, HOTPLUG_BASE, PATTERN);
    check_slot_at(HOTPLUG_BASE, PATTERN);
    write(HOTPLUG_BASE + 8, 0x1234);
    check_eq!(read(HOTPLUG_BASE + 8), 0x1234, "a write to the added slot");
}

test_case! {
    /// A slot added while the guest runs is memory at once.
    name = "state::memslot_add::long64", mode = Long64, path = Full;
    fn memslot_add_case() {
        memslot_add();
    }
}

test_case! {
    /// As `::long64`, the guest at CPL3.
    name = "state::memslot_add::user64", mode = User64, path = Full;
    entry = memslot_add_case
}

fn memslot_delete() {
    memslot(MEMSLOT_ADD, HOTPLUG_BASE, PATTERN);
    write(HOTPLUG_BASE, 0xdead);
    memslot(MEMSLOT_DELETE, 0, 0);
    check_eq!(read(HOTPLUG_BASE), ABSENT, "the window after the slot was deleted");
    write(HOTPLUG_BASE, 0xbeef);
    check_eq!(read(HOTPLUG_BASE), ABSENT, "a write to the deleted slot's address");
    memslot(MEMSLOT_ADD, HOTPLUG_BASE, !PATTERN);
    check_eq!(read(HOTPLUG_BASE), !PATTERN, "a new slot at the same address holds its own memory");
}

test_case! {
    /// A deleted slot is absent again: reads are the VMM's, writes are lost, and a new
    /// slot at the address does not show the old memory.
    name = "state::memslot_delete::long64", mode = Long64, path = Full;
    fn memslot_delete_case() {
        memslot_delete();
    }
}

test_case! {
    /// As `::long64`, the guest at CPL3.
    name = "state::memslot_delete::user64", mode = User64, path = Full;
    entry = memslot_delete_case
}

fn memslot_move() {
    let to = HOTPLUG_BASE + 0x1_0000;
    memslot(MEMSLOT_ADD, HOTPLUG_BASE, PATTERN);
    write(HOTPLUG_BASE + 16, 0x600d);
    memslot(MEMSLOT_MOVE, to, 0);
    check_eq!(read(HOTPLUG_BASE), ABSENT, "the old address after the move");
    check_eq!(read(to), PATTERN, "the first word at the new address");
    check_eq!(read(to + 16), 0x600d, "a write made before the move, at the new address");
}

test_case! {
    /// A moved slot is the same memory at its new address, and nothing at the old.
    name = "state::memslot_move::long64", mode = Long64, path = Full;
    fn memslot_move_case() {
        memslot_move();
    }
}

test_case! {
    /// As `::long64`, the guest at CPL3.
    name = "state::memslot_move::user64", mode = User64, path = Full;
    entry = memslot_move_case
}

/// `mov rax, imm64; ret`: a function the case writes into the slot and calls there.
fn plant_function(gpa: u64, value: u64) {
    let mut code = [0u8; 11];
    code[..2].copy_from_slice(&[0x48, 0xb8]);
    code[2..10].copy_from_slice(&value.to_le_bytes());
    code[10] = 0xc3;
    // SAFETY: the slot is the case's memory, identity-mapped, writable and executable.
    unsafe { core::ptr::copy_nonoverlapping(code.as_ptr(), gpa as *mut u8, code.len()) };
}

fn call_at(gpa: u64) -> u64 {
    // SAFETY: the caller planted a `mov rax, imm64; ret` at gpa.
    let f: extern "C" fn() -> u64 = unsafe { core::mem::transmute(gpa as usize) };
    f()
}

fn memslot_exec() {
    memslot(MEMSLOT_ADD, HOTPLUG_BASE, PATTERN);
    plant_function(HOTPLUG_BASE + 0x100, 0xc0de_0001);
    check_eq!(call_at(HOTPLUG_BASE + 0x100), 0xc0de_0001, "a function run from the added slot");
    plant_function(HOTPLUG_BASE + 0x100, 0xc0de_0002);
    check_eq!(call_at(HOTPLUG_BASE + 0x100), 0xc0de_0002, "the same address after the code was rewritten");
}

test_case! {
    /// Code written into a slot added at run time runs there, and a rewrite of it runs the
    /// new code (api.rst 4.35: the slot is guest memory like any other).
    name = "state::memslot_exec::long64", mode = Long64, path = Full;
    fn memslot_exec_case() {
        memslot_exec();
    }
}

test_case! {
    /// As `::long64`, the guest at CPL3.
    name = "state::memslot_exec::user64", mode = User64, path = Full;
    entry = memslot_exec_case
}

test_case! {
    /// Code in a slot that moves runs at the new address: the translation of the old one
    /// is gone with it (api.rst 4.35, a slot's guest_phys_addr changed).
    name = "state::memslot_exec_after_move::long64", mode = Long64, path = Full;
    fn memslot_exec_after_move() {
        let to = HOTPLUG_BASE + 0x2_0000;
        memslot(MEMSLOT_ADD, HOTPLUG_BASE, PATTERN);
        plant_function(HOTPLUG_BASE + 0x100, 0xc0de_0003);
        check_eq!(call_at(HOTPLUG_BASE + 0x100), 0xc0de_0003, "the function before the move");
        memslot(MEMSLOT_MOVE, to, 0);
        check_eq!(call_at(to + 0x100), 0xc0de_0003, "the function at the slot's new address");
        check_eq!(read(HOTPLUG_BASE + 0x100), ABSENT, "the old address after the move");
    }
}

fn memslot_string_copy() {
    #[repr(C, align(4096))]
    struct Buffer([u64; 1024]);
    static mut BUFFER: Buffer = Buffer([0; 1024]);
    memslot(MEMSLOT_ADD, HOTPLUG_BASE, PATTERN);
    let dst = &raw mut BUFFER as u64;
    // SAFETY: REP MOVSB of the slot's two pages into the case's own buffer.
    unsafe {
        core::arch::asm!("rep movsb", inout("rsi") HOTPLUG_BASE => _, inout("rdi") dst => _,
            inout("rcx") HOTPLUG_SIZE => _, options(nostack))
    };
    let mut wrong = 0u64;
    for i in 0..(HOTPLUG_SIZE / 8) {
        // SAFETY: reads the buffer the copy filled.
        let got = unsafe { ((dst + 8 * i) as *const u64).read_volatile() };
        if got != PATTERN ^ (8 * i) {
            wrong += 1;
        }
    }
    check_eq!(wrong, 0, "words of the slot's two pages that REP MOVSB copied wrong");
}

test_case! {
    /// REP MOVSB copies the added slot's two pages into RAM word for word.
    name = "state::memslot_string_copy::long64", mode = Long64, path = Full;
    fn memslot_string_copy_case() {
        memslot_string_copy();
    }
}

test_case! {
    /// As `::long64`, the guest at CPL3.
    name = "state::memslot_string_copy::user64", mode = User64, path = Full;
    entry = memslot_string_copy_case
}

test_case! {
    /// As `::long64`, the guest at CPL3.
    name = "state::memslot_exec_after_move::user64", mode = User64, path = Full;
    entry = memslot_exec_after_move
}

fn memslot_move_twice() {
    let (a, b) = (HOTPLUG_BASE + 0x4_0000, HOTPLUG_BASE + 0x8_0000);
    memslot(MEMSLOT_ADD, HOTPLUG_BASE, PATTERN);
    write(HOTPLUG_BASE + 24, 0x7a);
    memslot(MEMSLOT_MOVE, a, 0);
    check_eq!(read(a + 24), 0x7a, "the write at the first new address");
    write(a + 32, 0x7b);
    memslot(MEMSLOT_MOVE, b, 0);
    check_eq!(read(b + 24), 0x7a, "the first write at the second new address");
    check_eq!(read(b + 32), 0x7b, "the second write at the second new address");
    check_eq!(read(a + 24), ABSENT, "the first new address after the second move");
    check_eq!(read(HOTPLUG_BASE + 24), ABSENT, "the original address after both moves");
}

test_case! {
    /// A slot moved twice keeps its memory and leaves both earlier addresses absent.
    name = "state::memslot_move_twice::long64", mode = Long64, path = Full;
    fn memslot_move_twice_case() {
        memslot_move_twice();
    }
}

test_case! {
    /// As `::long64`, the guest at CPL3.
    name = "state::memslot_move_twice::user64", mode = User64, path = Full;
    entry = memslot_move_twice_case
}

test_case! {
    /// REP STOSQ fills the added slot's two pages, and every word reads back.
    name = "state::memslot_string_fill::long64", mode = Long64, path = Full;
    fn memslot_string_fill() {
        memslot(MEMSLOT_ADD, HOTPLUG_BASE, PATTERN);
        // SAFETY: REP STOSQ over the slot's two pages, which are the case's memory.
        unsafe {
            core::arch::asm!("rep stosq", inout("rdi") HOTPLUG_BASE => _, inout("rcx") HOTPLUG_SIZE / 8 => _,
                in("rax") 0x0f11_0f11u64, options(nostack))
        };
        let wrong = (0..HOTPLUG_SIZE / 8).filter(|i| read(HOTPLUG_BASE + 8 * i) != 0x0f11_0f11).count();
        check_eq!(wrong, 0, "words of the slot REP STOSQ filled that read back otherwise");
    }
}
