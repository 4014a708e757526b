//! The `state` area: what a fresh VM must look like. Every case boots in a VM of its own,
//! so memory and device state left by another case must never be visible.

use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use hvprobe_rt::abi::{layout::MMIO_TEST_BASE, port::TEST_IO};
use hvprobe_rt::{check_eq, cpu, test_case};

static MARKER: AtomicU64 = AtomicU64::new(0);

test_case! {
    /// Zero-initialized guest memory and device registers start at zero, and the case
    /// leaves them dirty: if a VM, its memory or its devices were ever reused, the next
    /// case of this pair would see the marker.
    name = "state::fresh_vm::long64", mode = Long64, path = Hw;
    fn fresh_vm() {
        check_eq!(MARKER.swap(0x5afe_c0de, SeqCst), 0, "guest memory carried over");
        // SAFETY: the test devices only hold their registers.
        unsafe {
            check_eq!((MMIO_TEST_BASE as *const u64).read_volatile(), 0, "MMIO device state carried over");
            (MMIO_TEST_BASE as *mut u64).write_volatile(0xdead_beef);
            // Port I/O at CPL3 is io::port_widths::user64's subject, not this test's.
            if cpu::read_cs() & 3 == 0 {
                check_eq!(x86::io::inl(TEST_IO), 0, "port device state carried over");
                x86::io::outl(TEST_IO, 0xdead_beef);
            }
        }
    }
}

test_case! {
    /// The same check from a second case, at CPL3.
    name = "state::fresh_vm::user64", mode = User64, path = Hw;
    entry = fresh_vm
}
