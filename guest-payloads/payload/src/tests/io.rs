//! The `io` area: port I/O and MMIO to the host's test devices.
//!
//! Both devices are byte-addressed register files: the port device covers ports
//! 0x510-0x517, the MMIO device 256 bytes mirrored over its 4 KiB page. An access of N
//! bytes reads or writes N consecutive registers, little-endian, so every width and
//! alignment has one right answer.

use hvprobe_rt::abi::{self, layout::MMIO_TEST_BASE};
use hvprobe_rt::{check_eq, cpu, metric, test_case};
use x86::io::{inb, inl, inw, outb, outl, outw};

const P: u16 = abi::port::TEST_IO;

test_case! {
    /// OUT and IN of 8, 16 and 32 bits reach the port device with the right port, width
    /// and data (SDM Vol. 2B, IN/OUT).
    name = "io::port_widths::long64", mode = Long64, path = Full;
    fn port_widths() {
        // SAFETY: the test device's ports have no effect beyond its registers; at CPL3 the
        // harness sets IOPL 3, so these do not fault.
        unsafe {
            outb(P, 0x11);
            outb(P + 1, 0x22);
            outw(P + 2, 0x4433);
            outl(P + 4, 0x8877_6655);
            check_eq!(inl(P), 0x4433_2211);
            check_eq!(inl(P + 4), 0x8877_6655);
            check_eq!(inw(P + 3), 0x5544, "word across the middle");
            check_eq!(inb(P + 7), 0x88);
            let start = cpu::rdtsc();
            let _ = inb(P);
            metric("port_in", "cycles", cpu::rdtsc() - start);
        }
    }
}

test_case! {
    /// The same port accesses from CPL3 with IOPL 3 (SDM Vol. 3A, 19.5.1).
    name = "io::port_widths::user64", mode = User64, path = Full;
    entry = port_widths
}

test_case! {
    /// REP OUTSB writes each byte to the same port in order and REP INSW reads the same
    /// port COUNT times; RCX reaches 0 and RSI/RDI advance by COUNT * size
    /// (SDM Vol. 2B, OUTS/INS).
    name = "io::port_string::long64", mode = Long64, path = Full;
    fn port_string() {
        let src: [u8; 4] = [0x10, 0x20, 0x30, 0x40];
        let mut dst = [0u16; 3];
        let (rcx, rsi): (u64, u64);
        // SAFETY: reads `src`, writes only the test device.
        unsafe {
            core::arch::asm!("rep outsb", inout("rcx") 4u64 => rcx, inout("rsi") src.as_ptr() => rsi,
                             in("dx") P, options(nostack, readonly));
        }
        check_eq!(rcx, 0);
        check_eq!(rsi, src.as_ptr() as u64 + 4);
        // SAFETY: the test device has no effect beyond its registers.
        check_eq!(unsafe { inb(P) }, 0x40, "last byte written wins");
        // SAFETY: as above.
        unsafe { outw(P + 2, 0xbeef) };
        let rdi: u64;
        // SAFETY: writes `dst` (3 words) from the test device.
        unsafe {
            core::arch::asm!("rep insw", inout("rcx") 3u64 => _, inout("rdi") dst.as_mut_ptr() => rdi,
                             in("dx") P + 2, options(nostack));
        }
        check_eq!(rdi, dst.as_ptr() as u64 + 6);
        check_eq!(dst, [0xbeef; 3]);
    }
}

pub(super) fn mmio<T>(offset: u64) -> *mut T {
    (MMIO_TEST_BASE + offset) as *mut T
}

test_case! {
    /// MOV loads and stores of 8, 16, 32 and 64 bits to MMIO reach the host device with
    /// their width, address and data; the device mirrors every 256 bytes.
    name = "io::mmio_widths::long64", mode = Long64, path = Full;
    fn mmio_widths() {
        // SAFETY: the MMIO test page is identity-mapped and backed by the host device.
        unsafe {
            mmio::<u8>(0).write_volatile(0x11);
            mmio::<u16>(2).write_volatile(0x4433);
            mmio::<u32>(4).write_volatile(0x8877_6655);
            mmio::<u64>(8).write_volatile(0x0102_0304_0506_0708);
            check_eq!(mmio::<u64>(0).read_volatile(), 0x8877_6655_4433_0011);
            check_eq!(mmio::<u32>(8).read_volatile(), 0x0506_0708);
            check_eq!(mmio::<u16>(7).read_volatile(), 0x0888, "unaligned word");
            check_eq!(mmio::<u8>(15).read_volatile(), 0x01);
            check_eq!(mmio::<u64>(0x108).read_volatile(), 0x0102_0304_0506_0708, "mirror");
            let start = cpu::rdtsc();
            let _ = mmio::<u32>(0).read_volatile();
            metric("mmio_read", "cycles", cpu::rdtsc() - start);
        }
    }
}

test_case! {
    /// Read-modify-write instructions with an MMIO destination (ADD, XCHG, OR) go through
    /// the hypervisor's instruction emulator as one read and one write of the operand size.
    name = "io::mmio_rmw::long64", mode = Long64, path = Full;
    fn mmio_rmw() {
        let p = mmio::<u32>(0x20);
        // SAFETY: as for mmio_widths.
        unsafe {
            p.write_volatile(100);
            core::arch::asm!("add dword ptr [{0}], 5", in(reg) p, options(nostack));
            check_eq!(p.read_volatile(), 105, "ADD m32, imm8");
            let mut v: u32 = 0xaaaa_5555;
            core::arch::asm!("xchg dword ptr [{0}], {1:e}", in(reg) p, inout(reg) v, options(nostack));
            check_eq!(v, 105, "XCHG returns the old value");
            check_eq!(p.read_volatile(), 0xaaaa_5555, "XCHG stores the new one");
            core::arch::asm!("or byte ptr [{0}], 0x0f", in(reg) p, options(nostack));
            check_eq!(p.read_volatile(), 0xaaaa_555f, "OR m8 touches one byte");
        }
    }
}

/// More than the host keeps of a console (64 KiB), so the cap is exercised too.
const BULK_BYTES: u64 = 80 * 1024;

test_case! {
    /// REP OUTSB of 80 KiB to the console port moves every byte: RCX reaches 0, RSI
    /// advances by the count (SDM Vol. 2B, OUTS), and the host counts 80 Ki bytes even
    /// though it keeps only the first 64 KiB.
    /// Limit: 0.5 s on PVM, above 10 s on kvm_amd under QEMU TCG (every string-I/O
    /// iteration is an exit there); 60 s holds on both, loaded.
    name = "io::console_bulk::long64", mode = Long64, path = Full, timeout_ms = 60_000;
    fn console_bulk() {
        let src = abi::layout::IMAGE_START;
        let (rcx, rsi): (u64, u64);
        // SAFETY: reads guest RAM, writes only the console port.
        unsafe {
            core::arch::asm!("rep outsb", inout("rcx") BULK_BYTES => rcx, inout("rsi") src => rsi,
                             in("dx") abi::port::CONSOLE, options(nostack, readonly));
        }
        check_eq!(rcx, 0);
        check_eq!(rsi, src + BULK_BYTES);
        check_eq!(hvprobe_rt::proto::service(abi::proto::service::CONSOLE_BYTES, [0; 4]), Ok(BULK_BYTES));
    }
}

test_case! {
    /// The MMIO widths from CPL3, where the accesses fault into the hypervisor natively
    /// instead of being emulated from the start.
    name = "io::mmio_widths::user64", mode = User64, path = Full;
    entry = mmio_widths
}

test_case! {
    /// The read-modify-write instructions on MMIO from CPL3.
    name = "io::mmio_rmw::user64", mode = User64, path = Full;
    entry = mmio_rmw
}

test_case! {
    /// LOCK CMPXCHG and LOCK XADD with an MMIO destination: compare-and-swap semantics
    /// through the hypervisor, both outcomes (SDM Vol. 2A, CMPXCHG and XADD).
    name = "io::mmio_cmpxchg::long64", mode = Long64, path = Full;
    fn mmio_cmpxchg() {
        let p = mmio::<u64>(0x30);
        // SAFETY: as for mmio_widths.
        unsafe {
            p.write_volatile(7);
            let mut old: u64 = 7;
            core::arch::asm!("lock cmpxchg qword ptr [{p}], {new}", p = in(reg) p, new = in(reg) 9u64,
                             inout("rax") old, options(nostack));
            check_eq!(old, 7, "CMPXCHG returns the old value when it matches");
            check_eq!(p.read_volatile(), 9, "CMPXCHG stored the new value");
            let mut old: u64 = 1;
            core::arch::asm!("lock cmpxchg qword ptr [{p}], {new}", p = in(reg) p, new = in(reg) 3u64,
                             inout("rax") old, options(nostack));
            check_eq!(old, 9, "a failed CMPXCHG loads the current value into RAX");
            check_eq!(p.read_volatile(), 9, "a failed CMPXCHG leaves memory alone");
            let mut v: u32 = 0x10;
            core::arch::asm!("lock xadd dword ptr [{p}], {v:e}", p = in(reg) mmio::<u32>(0x38), v = inout(reg) v,
                             options(nostack));
            check_eq!(v, 0, "XADD returns the old value");
            check_eq!(mmio::<u32>(0x38).read_volatile(), 0x10, "XADD stored the sum");
        }
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::mmio_cmpxchg::user64", mode = User64, path = Full;
    entry = mmio_cmpxchg
}

test_case! {
    /// REP MOVSB into MMIO and back out: every byte reaches the device in order and comes
    /// back the same (SDM Vol. 2B, MOVS; string instructions are emulated per element).
    name = "io::mmio_string::long64", mode = Long64, path = Full;
    fn mmio_string() {
        let src: [u8; 16] = *b"hvprobe-mmio-rep";
        let mut back = [0u8; 16];
        // SAFETY: copies 16 bytes to the MMIO device and back to a local buffer.
        unsafe {
            core::arch::asm!("rep movsb", inout("rcx") 16u64 => _, inout("rsi") src.as_ptr() => _,
                             inout("rdi") mmio::<u8>(0x40) => _, options(nostack));
            core::arch::asm!("rep movsb", inout("rcx") 16u64 => _, inout("rsi") mmio::<u8>(0x40) => _,
                             inout("rdi") back.as_mut_ptr() => _, options(nostack));
        }
        check_eq!(back == src, true, "REP MOVSB to MMIO and back: {:?}", core::str::from_utf8(&back));
        // SAFETY: a 4-byte read of what the string wrote.
        check_eq!(unsafe { mmio::<u32>(0x40).read_volatile() }, u32::from_le_bytes(*b"hvpr"), "the device's bytes");
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::mmio_string::user64", mode = User64, path = Full;
    entry = mmio_string
}

test_case! {
    /// A misaligned 8-byte store and a misaligned 4-byte load on MMIO move the right bytes
    /// (the device is byte-addressed, so there is one right answer).
    name = "io::mmio_unaligned::long64", mode = Long64, path = Full;
    fn mmio_unaligned() {
        // SAFETY: as for mmio_widths.
        unsafe {
            mmio::<u64>(0x50).write_volatile(0);
            mmio::<u64>(0x58).write_volatile(0);
            (mmio::<u8>(0x53) as *mut u64).write_unaligned(0x1122_3344_5566_7788);
            check_eq!(mmio::<u64>(0x50).read_volatile(), 0x4455_6677_8800_0000, "low quadword");
            check_eq!(mmio::<u64>(0x58).read_volatile(), 0x0000_0000_0011_2233, "high quadword");
            check_eq!((mmio::<u8>(0x55) as *const u32).read_unaligned(), 0x3344_5566, "unaligned dword read");
        }
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::mmio_unaligned::user64", mode = User64, path = Full;
    entry = mmio_unaligned
}

test_case! {
    /// A MOV store to an ioeventfd address (no datamatch) completes without a userspace
    /// device behind it and a load from the same address exits to userspace as plain MMIO,
    /// reading as an absent device (api.rst 4.59 KVM_IOEVENTFD: only writes are caught).
    name = "io::ioeventfd_write_only::long64", mode = Long64, path = Para, requires = abi::requires::IOEVENTFD;
    fn ioeventfd_write_only() {
        // SAFETY: the harness's benchmark ioeventfd address; writes only signal it.
        unsafe {
            (abi::layout::IOEVENTFD_MMIO as *mut u32).write_volatile(1);
            check_eq!((abi::layout::IOEVENTFD_MMIO as *const u32).read_volatile(), u32::MAX, "a load from it");
        }
    }
}

test_case! {
    /// A KVM_MEM_READONLY slot reads as memory, and a write to it exits to the VMM as
    /// MMIO and leaves the memory unchanged (api.rst 4.35, KVM_MEM_READONLY).
    name = "io::readonly_slot::long64", mode = Long64, path = Full, requires = abi::requires::READONLY_MEM;
    fn readonly_slot() {
        let base = abi::layout::READONLY_BASE;
        for i in [0u64, 1, 255, 511] {
            // SAFETY: the harness's read-only slot, identity-mapped.
            let v = unsafe { ((base + 8 * i) as *const u64).read_volatile() };
            check_eq!(v, abi::readonly_word(i), "word {} of the read-only slot", i);
        }
        // SAFETY: a write KVM must turn into an MMIO exit; the VMM drops it.
        unsafe { ((base + 8) as *mut u64).write_volatile(0x0bad) };
        // SAFETY: as above.
        let v = unsafe { ((base + 8) as *const u64).read_volatile() };
        check_eq!(v, abi::readonly_word(1), "the word after a write to it");
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::readonly_slot::user64", mode = User64, path = Full, requires = abi::requires::READONLY_MEM;
    entry = readonly_slot
}
