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
