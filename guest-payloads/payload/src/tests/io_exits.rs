//! The `io` area's exits: string port I/O and its exits, ioeventfds without exits,
//! coalesced MMIO and PIO, accesses across a page, absent devices, and the instructions
//! the hypervisor must emulate with an MMIO operand.

use core::arch::asm;

use hvprobe_rt::abi::layout::{COALESCED_MMIO, IOEVENTFD_MMIO, MMIO_CROSS, RAM_SIZE};
use hvprobe_rt::abi::{self, BENCH_DATAMATCH, FNV1A32_INIT, fnv1a32, port, proto::service, requires};
use hvprobe_rt::path::userspace_exits;
use hvprobe_rt::proto::service as call;
use hvprobe_rt::{check, check_eq, metric, test_case};
use x86::io::{inb, inl, outb, outl, outw};

use super::io::mmio;

const P: u16 = port::TEST_IO;

test_case! {
    /// With RFLAGS.DF set, REP OUTSB walks the source downwards: the bytes reach the port
    /// last to first and RSI ends COUNT below its start; REP INSB fills downwards the same
    /// way (SDM Vol. 2B, OUTS/INS: "decremented if DF = 1").
    name = "io::port_string_df::long64", mode = Long64, path = Full;
    fn port_string_df() {
        let src: [u8; 4] = [1, 2, 3, 4];
        let mut dst = [0u8; 4];
        let (rcx, rsi, rdi): (u64, u64, u64);
        // SAFETY: reads `src` and writes `dst` from their last byte down; DF is cleared
        // again before anything else runs.
        unsafe {
            asm!("std", "rep outsb", "cld", inout("rcx") 4u64 => rcx, inout("rsi") src.as_ptr().add(3) => rsi,
                 in("dx") P, options(nostack, readonly));
        }
        check_eq!(rcx, 0);
        check_eq!(rsi, src.as_ptr() as u64 - 1, "RSI after a backward REP OUTSB of 4");
        // SAFETY: the test device's register 0.
        check_eq!(unsafe { inb(P) }, 1, "the last byte written is the first of the buffer");
        // SAFETY: as above.
        unsafe { outb(P, 0x5a) };
        // SAFETY: as above, writing `dst`.
        unsafe {
            asm!("std", "rep insb", "cld", inout("rcx") 4u64 => _, inout("rdi") dst.as_mut_ptr().add(3) => rdi,
                 in("dx") P, options(nostack));
        }
        check_eq!(rdi, dst.as_ptr() as u64 - 1, "RDI after a backward REP INSB of 4");
        check_eq!(dst, [0x5a; 4]);
    }
}

test_case! {
    /// REP OUTSB of 64 bytes to a userspace device (the UART's THR, whose host sink counts
    /// and digests what it receives): the VMM receives exactly those 64 bytes, once each
    /// and in order, whether KVM hands them over one per exit or several (api.rst 5,
    /// KVM_EXIT_IO: one exit may carry `count` elements of a string instruction); RCX
    /// reaches 0 and RSI advances by 64 (SDM Vol. 2B OUTS/REP). How many exits it took is
    /// the metric `exits`, a cost, not a verdict.
    name = "io::port_string_exits::long64", mode = Long64, path = Full;
    fn port_string_exits() {
        let src: [u8; 64] = core::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5a);
        let ((rcx, rsi), exits) = userspace_exits(|| {
            let (rcx, rsi): (u64, u64);
            // SAFETY: reads `src`, writes the UART's THR.
            unsafe {
                asm!("rep outsb", inout("rcx") 64u64 => rcx, inout("rsi") src.as_ptr() => rsi, in("dx") port::UART,
                     options(nostack, readonly));
            }
            (rcx, rsi)
        });
        check_eq!(rcx, 0, "RCX after REP OUTSB");
        check_eq!(rsi, src.as_ptr() as u64 + 64, "RSI after REP OUTSB with DF clear");
        metric("exits", "count", exits);
        check!(exits >= 1, "REP OUTSB to a userspace port made no exit to userspace");
        let got = call(service::SINK, [abi::sink::UART, 0, 0, 0]);
        check!(got.is_ok(), "the host has no UART sink");
        let got = got.unwrap_or(0);
        check_eq!(got >> 32, 64, "bytes the host's UART received");
        check_eq!(got as u32, fnv1a32(FNV1A32_INIT, &src), "FNV-1a digest of the bytes, in order");
    }
}

/// How many times ioeventfd `which` fired since the last call.
fn ioevent_count(which: u64) -> u64 {
    let n = call(service::IOEVENT_COUNT, [which, 0, 0, 0]);
    check!(n.is_ok(), "the host has no ioeventfd {}", which);
    n.unwrap_or(0)
}

test_case! {
    /// OUTs of every width to a wildcard PIO ioeventfd signal it once each and never
    /// exit to userspace (api.rst 4.59 KVM_IOEVENTFD).
    name = "io::ioeventfd_pio::long64", mode = Long64, path = Para, requires = requires::IOEVENTFD;
    fn ioeventfd_pio() {
        let ((), exits) = userspace_exits(|| {
            for i in 0..4u8 {
                // SAFETY: an ioeventfd port: writes only signal the eventfd.
                unsafe {
                    outb(port::IOEVENTFD, i);
                    outw(port::IOEVENTFD, i.into());
                    outl(port::IOEVENTFD, i.into());
                }
            }
        });
        check_eq!(exits, 0, "exits to userspace for 12 OUTs to the ioeventfd");
        check_eq!(ioevent_count(0), 12, "signals of the ioeventfd");
    }
}

test_case! {
    /// A datamatch PIO ioeventfd fires on a 32-bit OUT of its value only; another value,
    /// or its low half as a 16-bit OUT, is an ordinary exit to userspace (api.rst 4.59:
    /// KVM_IOEVENTFD_FLAG_DATAMATCH, and `len` must match).
    name = "io::ioeventfd_pio_datamatch::long64", mode = Long64, path = Para, requires = requires::IOEVENTFD;
    fn ioeventfd_pio_datamatch() {
        let ((), exits) = userspace_exits(|| {
            for _ in 0..8 {
                // SAFETY: an ioeventfd port; the harness drops the unmatched writes.
                unsafe { outl(port::IOEVENTFD_DATAMATCH, BENCH_DATAMATCH) };
            }
        });
        check_eq!((exits, ioevent_count(1)), (0, 8), "(exits, signals) for 8 matching OUTs");
        // SAFETY: as above.
        let ((), exits) = userspace_exits(|| unsafe { outl(port::IOEVENTFD_DATAMATCH, BENCH_DATAMATCH ^ 1) });
        check_eq!((exits, ioevent_count(1)), (1, 0), "(exits, signals) for another value");
        // SAFETY: as above.
        let ((), exits) = userspace_exits(|| unsafe { outw(port::IOEVENTFD_DATAMATCH, BENCH_DATAMATCH as u16) });
        check_eq!((exits, ioevent_count(1)), (1, 0), "(exits, signals) for a 16-bit OUT of the low half");
    }
}

test_case! {
    /// MMIO stores of every width to a wildcard MMIO ioeventfd signal it once each and
    /// never exit to userspace (api.rst 4.59; a zero length matches any width,
    /// KVM_CAP_IOEVENTFD_ANY_LENGTH).
    name = "io::ioeventfd_mmio::long64", mode = Long64, path = Para, requires = requires::IOEVENTFD;
    fn ioeventfd_mmio() {
        let ((), exits) = userspace_exits(|| {
            // SAFETY: the ioeventfd address: stores only signal the eventfd.
            unsafe {
                (IOEVENTFD_MMIO as *mut u8).write_volatile(1);
                (IOEVENTFD_MMIO as *mut u16).write_volatile(2);
                (IOEVENTFD_MMIO as *mut u32).write_volatile(3);
                (IOEVENTFD_MMIO as *mut u64).write_volatile(4);
            }
        });
        check_eq!(exits, 0, "exits to userspace for 4 stores to the ioeventfd");
        check_eq!(ioevent_count(2), 4, "signals of the ioeventfd");
    }
}

test_case! {
    /// The same from CPL3, where the stores fault into the hypervisor natively.
    name = "io::ioeventfd_mmio::user64", mode = User64, path = Para, requires = requires::IOEVENTFD;
    entry = ioeventfd_mmio
}

test_case! {
    /// A datamatch MMIO ioeventfd fires on a 32-bit store of its value only; another
    /// value is an ordinary MMIO exit (api.rst 4.59).
    name = "io::ioeventfd_mmio_datamatch::long64", mode = Long64, path = Para, requires = requires::IOEVENTFD;
    fn ioeventfd_mmio_datamatch() {
        let at = (IOEVENTFD_MMIO + 8) as *mut u32;
        // SAFETY: the datamatch ioeventfd address; the harness drops unmatched stores.
        let ((), exits) = userspace_exits(|| unsafe {
            at.write_volatile(BENCH_DATAMATCH);
            at.write_volatile(BENCH_DATAMATCH);
        });
        check_eq!((exits, ioevent_count(3)), (0, 2), "(exits, signals) for 2 matching stores");
        // SAFETY: as above.
        let ((), exits) = userspace_exits(|| unsafe { at.write_volatile(!BENCH_DATAMATCH) });
        check_eq!((exits, ioevent_count(3)), (1, 0), "(exits, signals) for another value");
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::ioeventfd_mmio_datamatch::user64", mode = User64, path = Para, requires = requires::IOEVENTFD;
    entry = ioeventfd_mmio_datamatch
}

/// Bytes written to the coalesced FIFO in one case.
const COALESCED_WORDS: usize = 64;

/// Writes `words` seeded u32s to the coalesced FIFO with `write` inside a section, then
/// checks the exits, that the host applied them in order (count and digest of its sink),
/// and that a read of the count register (an ordinary exit) saw them all.
fn coalesced_fifo(words: usize, max_exits: u64, write: impl Fn(u32), count: impl Fn() -> u32) {
    let mut x = 0x1234_5678u32;
    let mut digest = FNV1A32_INIT;
    let ((), exits) = userspace_exits(|| {
        for _ in 0..words {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            digest = fnv1a32(digest, &x.to_le_bytes());
            write(x);
        }
    });
    metric("exits", "count", exits);
    check!(exits <= max_exits, "{} exits to userspace for {} coalesced writes (at most {})", exits, words, max_exits);
    check_eq!(count() as usize, 4 * words, "the FIFO's byte count, read after the writes");
    let sink = call(service::SINK, [abi::sink::COALESCED, 0, 0, 0]).unwrap_or(0);
    check_eq!(sink as u32, digest, "FNV-1a digest of the bytes in the order the host applied them");
    let drained = call(service::COALESCED_COUNT, [0; 4]).unwrap_or(0);
    check!(drained + exits >= words as u64, "{} ring entries and {} exits for {} writes", drained, exits, words);
}

fn coalesced_mmio_write(v: u32) {
    // SAFETY: the coalesced FIFO's data register.
    unsafe { (COALESCED_MMIO as *mut u32).write_volatile(v) };
}

fn coalesced_mmio_count() -> u32 {
    // SAFETY: the coalesced FIFO's count register; reads are never coalesced.
    unsafe { ((COALESCED_MMIO + 8) as *const u32).read_volatile() }
}

test_case! {
    /// 64 stores to a coalesced MMIO zone cause no exit to userspace; KVM records them in
    /// the ring, and the VMM applies them in order before it answers the next exit, a
    /// read of the same device (api.rst 4.116 KVM_REGISTER_COALESCED_MMIO).
    name = "io::coalesced_mmio::long64", mode = Long64, path = Full, requires = requires::COALESCED;
    fn coalesced_mmio() {
        coalesced_fifo(COALESCED_WORDS, 0, coalesced_mmio_write, coalesced_mmio_count);
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::coalesced_mmio::user64", mode = User64, path = Full, requires = requires::COALESCED;
    entry = coalesced_mmio
}

test_case! {
    /// 1,024 stores overrun the ring (about 170 entries a page): a store that finds it
    /// full exits to userspace as ordinary MMIO, and the VMM still applies everything in
    /// the order the guest wrote it (api.rst 4.116).
    name = "io::coalesced_mmio_ring_full::long64", mode = Long64, path = Full, requires = requires::COALESCED;
    fn coalesced_mmio_ring_full() {
        coalesced_fifo(1024, 1024 / 100, coalesced_mmio_write, coalesced_mmio_count);
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::coalesced_mmio_ring_full::user64", mode = User64, path = Full, requires = requires::COALESCED;
    entry = coalesced_mmio_ring_full
}

test_case! {
    /// 64 OUTs to a coalesced PIO zone cause no exit to userspace and reach the device in
    /// order at the next exit (api.rst 4.116, KVM_CAP_COALESCED_PIO).
    name = "io::coalesced_pio::long64", mode = Long64, path = Full, requires = requires::COALESCED;
    fn coalesced_pio() {
        coalesced_fifo(
            COALESCED_WORDS,
            0,
            // SAFETY: the coalesced FIFO's port.
            |v| unsafe { outl(port::COALESCED_PIO, v) },
            // SAFETY: its count port.
            || unsafe { inl(port::COALESCED_PIO + 4) },
        );
    }
}

/// The last 4 bytes of the crossing window's first page.
const CROSS: u64 = MMIO_CROSS + 0xffc;

fn cross<T>(offset: u64) -> *mut T {
    (CROSS + offset) as *mut T
}

test_case! {
    /// An 8-byte store and load that straddle a page boundary inside one MMIO device move
    /// all 8 bytes (the access is split into one fragment per page: SDM Vol. 3A 4.x does
    /// not forbid it, and KVM's emulator splits it into two MMIO exits).
    name = "io::mmio_cross_page::long64", mode = Long64, path = Full;
    fn mmio_cross_page() {
        // SAFETY: the crossing window is the MMIO test device.
        unsafe {
            cross::<u64>(0).write_unaligned(0x8877_6655_4433_2211);
            for i in 0..8u64 {
                check_eq!(cross::<u8>(i).read_volatile(), 0x11 * (i as u8 + 1), "byte {} after the store", i);
            }
            check_eq!(cross::<u64>(0).read_unaligned(), 0x8877_6655_4433_2211, "8-byte load across the boundary");
            check_eq!(cross::<u32>(2).read_unaligned(), 0x6655_4433, "4-byte load across the boundary");
        }
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::mmio_cross_page::user64", mode = User64, path = Full;
    entry = mmio_cross_page
}

test_case! {
    /// REP MOVSB of 16 bytes across the page boundary of one MMIO device and back
    /// (SDM Vol. 2B, MOVS).
    name = "io::mmio_cross_page_string::long64", mode = Long64, path = Full;
    fn mmio_cross_page_string() {
        let src: [u8; 16] = *b"crossing-a-page!";
        let mut back = [0u8; 16];
        // SAFETY: copies into the crossing window (MMIO) and back to a local buffer.
        unsafe {
            asm!("rep movsb", inout("rcx") 16u64 => _, inout("rsi") src.as_ptr() => _,
                 inout("rdi") CROSS - 6 => _, options(nostack));
            asm!("rep movsb", inout("rcx") 16u64 => _, inout("rsi") CROSS - 6 => _,
                 inout("rdi") back.as_mut_ptr() => _, options(nostack));
        }
        check_eq!(back == src, true, "16 bytes across the boundary and back: {:?}", core::str::from_utf8(&back));
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::mmio_cross_page_string::user64", mode = User64, path = Full;
    entry = mmio_cross_page_string
}

test_case! {
    /// An 8-byte store that starts in the last 4 bytes of RAM and ends in unbacked
    /// guest-physical space writes its RAM half and exits for the other, which the VMM
    /// drops; a load of the same 8 bytes reads the RAM half and all ones (api.rst 5,
    /// KVM_EXIT_MMIO: accesses outside memory slots exit to userspace).
    name = "io::ram_mmio_cross::long64", mode = Long64, path = Full;
    fn ram_mmio_cross() {
        let at = (RAM_SIZE - 4) as *mut u64;
        // SAFETY: the last 4 bytes of RAM are in the state region, which io cases leave
        // alone; the rest is absent MMIO.
        unsafe {
            ((RAM_SIZE - 4) as *mut u32).write_volatile(0);
            at.write_unaligned(0x1122_3344_5566_7788);
            check_eq!(((RAM_SIZE - 4) as *const u32).read_volatile(), 0x5566_7788, "the RAM half");
            check_eq!(at.read_unaligned(), 0xffff_ffff_5566_7788, "an 8-byte load across the end of RAM");
        }
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::ram_mmio_cross::user64", mode = User64, path = Full;
    entry = ram_mmio_cross
}

test_case! {
    /// Guest-physical addresses no slot and no device covers read as all ones and drop
    /// writes, each as one exit to userspace (api.rst 5, KVM_EXIT_MMIO).
    name = "io::unmapped_gpa::long64", mode = Long64, path = Full;
    fn unmapped_gpa() {
        let at = 0xe000_0000u64 as *mut u32;
        // SAFETY: identity-mapped and backed by nothing; the VMM answers as absent.
        let (v, exits) = userspace_exits(|| unsafe {
            at.write_volatile(0x1234);
            at.read_volatile()
        });
        check_eq!(v, 0xffff_ffff, "a load after a store");
        check_eq!(exits, 2, "exits to userspace for one store and one load");
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::unmapped_gpa::user64", mode = User64, path = Full;
    entry = unmapped_gpa
}

/// The MMIO register at offset 0x80, holding `init`: the operand of the emulator cases.
fn mmio_reg(init: u64) -> *mut u64 {
    let p = mmio::<u64>(0x80);
    // SAFETY: the MMIO test device.
    unsafe { p.write_volatile(init) };
    p
}

fn read(p: *mut u64) -> u64 {
    // SAFETY: the MMIO test device.
    unsafe { p.read_volatile() }
}

/// RFLAGS bits the arithmetic cases check: CF, ZF, SF, OF.
const FLAGS: u64 = 1 | 1 << 6 | 1 << 7 | 1 << 11;

test_case! {
    /// BT, BTS, BTR and BTC with an MMIO destination and a register bit offset set CF to
    /// the old bit and change only that bit (SDM Vol. 2A, BT/BTS/BTR/BTC).
    name = "io::mmio_bitops::long64", mode = Long64, path = Full;
    fn mmio_bitops() {
        let p = mmio_reg(0x10);
        let cf = |f: u64| f & 1;
        let mut f: u64;
        // SAFETY: each instruction reads and writes the MMIO register only.
        unsafe {
            asm!("bt qword ptr [{p}], {b}", "pushfq", "pop {f}", p = in(reg) p, b = in(reg) 4u64, f = out(reg) f);
            check_eq!(cf(f), 1, "BT of a set bit");
            asm!("bts qword ptr [{p}], {b}", "pushfq", "pop {f}", p = in(reg) p, b = in(reg) 33u64, f = out(reg) f);
            check_eq!((cf(f), read(p)), (0, 0x2_0000_0010), "BTS of bit 33: (CF, value)");
            asm!("btr qword ptr [{p}], {b}", "pushfq", "pop {f}", p = in(reg) p, b = in(reg) 4u64, f = out(reg) f);
            check_eq!((cf(f), read(p)), (1, 0x2_0000_0000), "BTR of bit 4: (CF, value)");
            asm!("btc qword ptr [{p}], 1", "pushfq", "pop {f}", p = in(reg) p, f = out(reg) f);
            check_eq!((cf(f), read(p)), (0, 0x2_0000_0002), "BTC of bit 1 (immediate): (CF, value)");
        }
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::mmio_bitops::user64", mode = User64, path = Full;
    entry = mmio_bitops
}

test_case! {
    /// MOVZX and MOVSX of a byte and a word read from MMIO extend it as the SDM says
    /// (Vol. 2B, MOVZX/MOVSX), and MOVSXD a doubleword.
    name = "io::mmio_movzx_movsx::long64", mode = Long64, path = Full;
    fn mmio_movzx_movsx() {
        let p = mmio_reg(0x8000_ff80);
        let (a, b, c, d, e): (u64, u64, u64, u64, u64);
        // SAFETY: loads from the MMIO register only.
        unsafe {
            asm!("movzx {0:e}, byte ptr [{1}]", out(reg) a, in(reg) p);
            asm!("movsx {0}, byte ptr [{1}]", out(reg) b, in(reg) p);
            asm!("movzx {0:e}, word ptr [{1}]", out(reg) c, in(reg) p);
            asm!("movsx {0}, word ptr [{1}]", out(reg) d, in(reg) p);
            asm!("movsxd {0}, dword ptr [{1}]", out(reg) e, in(reg) p);
        }
        check_eq!(a, 0x80, "MOVZX r32, m8");
        check_eq!(b, 0xffff_ffff_ffff_ff80, "MOVSX r64, m8");
        check_eq!(c, 0xff80, "MOVZX r32, m16");
        check_eq!(d, 0xffff_ffff_ffff_ff80, "MOVSX r64, m16");
        check_eq!(e, 0xffff_ffff_8000_ff80, "MOVSXD r64, m32");
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::mmio_movzx_movsx::user64", mode = User64, path = Full;
    entry = mmio_movzx_movsx
}

test_case! {
    /// PUSH with an MMIO source and POP with an MMIO destination move 8 bytes between the
    /// stack and the device, and RSP ends where it began (SDM Vol. 2B, PUSH/POP).
    name = "io::mmio_push_pop::long64", mode = Long64, path = Full;
    fn mmio_push_pop() {
        let p = mmio_reg(0x0102_0304_0506_0708);
        let q = mmio::<u64>(0x88);
        let (popped, rsp_delta): (u64, u64);
        // SAFETY: one push and two pops on our own stack, balanced; MMIO otherwise.
        unsafe {
            asm!("mov {d}, rsp", "push qword ptr [{p}]", "pop qword ptr [{q}]", "push qword ptr [{q}]", "pop {v}",
                 "sub {d}, rsp", p = in(reg) p, q = in(reg) q, v = out(reg) popped, d = out(reg) rsp_delta);
        }
        check_eq!(read(q), 0x0102_0304_0506_0708, "POP m64 stored what PUSH m64 loaded");
        check_eq!(popped, 0x0102_0304_0506_0708, "and back through the stack");
        check_eq!(rsp_delta, 0, "RSP after two pushes and two pops");
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::mmio_push_pop::user64", mode = User64, path = Full;
    entry = mmio_push_pop
}

/// 16-byte SSE moves between XMM registers and MMIO, through local buffers.
extern "C" fn sse_round_trip(_: u64) {
    let src: [u8; 16] = *b"sixteen-bytes-ok";
    let mut back = [0u8; 16];
    let p = mmio::<u8>(0x90);
    // SAFETY: 16-byte loads and stores between local buffers and the MMIO device.
    unsafe {
        asm!("movdqu xmm0, [{s}]", "movdqu [{p}], xmm0", "movups xmm1, [{p}]", "movdqu [{b}], xmm1",
             s = in(reg) src.as_ptr(), p = in(reg) p, b = in(reg) back.as_mut_ptr(), out("xmm0") _, out("xmm1") _);
    }
    check_eq!(back == src, true, "16 bytes through XMM and MMIO: {:?}", core::str::from_utf8(&back));
}

/// Turns SSE on, as an OS does (CR4.OSFXSR and OSXMMEXCPT, SDM Vol. 3A 2.5); the
/// harness's machine leaves it off.
fn enable_sse() {
    // SAFETY: enabling SSE changes nothing the runtime relies on (it is built without).
    unsafe { asm!("mov {t}, cr4", "or {t}, 0x600", "mov cr4, {t}", t = out(reg) _, options(nomem, nostack)) };
}

test_case! {
    /// MOVDQU and MOVUPS (unaligned) between XMM registers and MMIO move all 16 bytes
    /// (SDM Vol. 2B, MOVDQU; KVM's emulator handles each as one 16-byte access).
    name = "io::mmio_sse::long64", mode = Long64, path = Full;
    fn mmio_sse() {
        enable_sse();
        sse_round_trip(0);
    }
}

test_case! {
    /// The same at CPL3, SSE turned on at CPL0 first.
    name = "io::mmio_sse::cpl3", mode = Long64, path = Full;
    fn mmio_sse_cpl3() {
        enable_sse();
        hvprobe_rt::check_no_exception!(hvprobe_rt::user::call_at_cpl3(sse_round_trip, 0));
    }
}

test_case! {
    /// REP STOSD fills MMIO with EAX and LODSQ loads from it, advancing RDI and RSI
    /// (SDM Vol. 2B, STOS/LODS).
    name = "io::mmio_stos_lods::long64", mode = Long64, path = Full;
    fn mmio_stos_lods() {
        let p = mmio::<u32>(0xa0);
        let (rdi, rsi, v): (u64, u64, u64);
        // SAFETY: 4 dwords of the MMIO device, then two quadword loads from it.
        unsafe {
            asm!("rep stosd", inout("rcx") 4u64 => _, inout("rdi") p => rdi, in("eax") 0xc0de_f00du32, options(nostack));
            asm!("lodsq", "lodsq", inout("rsi") p => rsi, out("rax") v, options(nostack));
        }
        check_eq!(rdi, p as u64 + 16, "RDI after REP STOSD x4");
        check_eq!(rsi, p as u64 + 16, "RSI after two LODSQ");
        check_eq!(v, 0xc0de_f00d_c0de_f00d, "the last LODSQ");
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::mmio_stos_lods::user64", mode = User64, path = Full;
    entry = mmio_stos_lods
}

test_case! {
    /// REPE CMPSB between RAM and MMIO stops at the first difference, and REPNE SCASB
    /// over MMIO stops at the first match (SDM Vol. 2A CMPS, Vol. 2B SCAS: RCX and the
    /// pointers count the element that ended the repeat).
    name = "io::mmio_cmps_scas::long64", mode = Long64, path = Full;
    fn mmio_cmps_scas() {
        let ram: [u8; 8] = *b"abcdXfgh";
        let p = mmio::<u64>(0xb0);
        // SAFETY: the MMIO test device.
        unsafe { p.write_volatile(u64::from_le_bytes(*b"abcdefgh")) };
        let (rcx, rsi): (u64, u64);
        // SAFETY: compares 8 bytes of `ram` with 8 bytes of MMIO.
        unsafe {
            asm!("repe cmpsb", inout("rcx") 8u64 => rcx, inout("rsi") ram.as_ptr() => rsi, inout("rdi") p => _,
                 options(nostack, readonly));
        }
        check_eq!((8 - rcx, rsi - ram.as_ptr() as u64), (5, 5), "bytes compared by REPE CMPSB, RSI advance");
        let rcx: u64;
        // SAFETY: scans 8 bytes of MMIO for 'e'.
        unsafe {
            asm!("repne scasb", inout("rcx") 8u64 => rcx, inout("rdi") p => _, in("al") b'e', options(nostack, readonly));
        }
        check_eq!(8 - rcx, 5, "bytes scanned by REPNE SCASB up to and including 'e'");
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::mmio_cmps_scas::user64", mode = User64, path = Full;
    entry = mmio_cmps_scas
}

test_case! {
    /// SUB, AND, XOR, NEG, NOT, INC and DEC with an MMIO destination store the right value
    /// and set CF, ZF, SF and OF as on RAM (SDM Vol. 1 appendix A; each instruction's
    /// "Flags Affected"). The flags are checked against the same instruction on RAM.
    name = "io::mmio_alu_flags::long64", mode = Long64, path = Full;
    fn mmio_alu_flags() {
        macro_rules! both {
            ($insn:literal, $init:expr, $name:literal) => {{
                let p = mmio_reg($init);
                let mut ram: u64 = $init;
                let (fm, fr): (u64, u64);
                // SAFETY: the instruction on the MMIO register, then on a local.
                unsafe {
                    asm!($insn, "pushfq", "pop {f}", p = in(reg) p, f = out(reg) fm);
                    asm!($insn, "pushfq", "pop {f}", p = in(reg) &raw mut ram, f = out(reg) fr);
                }
                check_eq!(read(p), ram, concat!($name, ": value on MMIO vs RAM"));
                check_eq!(fm & FLAGS, fr & FLAGS, concat!($name, ": CF/ZF/SF/OF on MMIO vs RAM"));
            }};
        }
        both!("neg qword ptr [{p}]", 0, "NEG of 0");
        both!("neg qword ptr [{p}]", 1 << 63, "NEG of the most negative");
        both!("not qword ptr [{p}]", 0x00ff_00ff_00ff_00ff, "NOT");
        both!("inc qword ptr [{p}]", u64::MAX, "INC to 0");
        both!("inc qword ptr [{p}]", i64::MAX as u64, "INC to overflow");
        both!("dec qword ptr [{p}]", 0, "DEC below 0");
        both!("sub qword ptr [{p}], 7", 5, "SUB 7 from 5");
        both!("and qword ptr [{p}], 0x0f0f", 0xf0f0, "AND 0x0f0f with 0xf0f0");
        both!("xor qword ptr [{p}], 0x1234", 0x1234, "XOR to 0");
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::mmio_alu_flags::user64", mode = User64, path = Full;
    entry = mmio_alu_flags
}

test_case! {
    /// LOCK CMPXCHG8B on an MMIO operand, both outcomes: a match stores ECX:EBX and sets
    /// ZF; a mismatch loads the operand into EDX:EAX and clears ZF (SDM Vol. 2A,
    /// CMPXCHG8B/CMPXCHG16B).
    name = "io::mmio_cmpxchg8b::long64", mode = Long64, path = Full;
    fn mmio_cmpxchg8b() {
        let p = mmio_reg(0x0000_0002_0000_0001);
        let cmpxchg = |expect: u64, new: u64| -> (u64, u64) {
            let (lo, hi, flags): (u64, u64, u64);
            // SAFETY: 8 bytes of MMIO; RBX is LLVM's, so it is swapped in and out.
            unsafe {
                asm!("xchg {b}, rbx", "lock cmpxchg8b [{p}]", "pushfq", "pop {f}", "xchg {b}, rbx",
                     b = inout(reg) new & 0xffff_ffff => _, p = in(reg) p, f = out(reg) flags, in("rcx") new >> 32,
                     inout("rax") expect & 0xffff_ffff => lo, inout("rdx") expect >> 32 => hi);
            }
            ((hi & 0xffff_ffff) << 32 | (lo & 0xffff_ffff), flags & (1 << 6))
        };
        check_eq!(cmpxchg(0x2_0000_0001, 0x8_0000_0007), (0x2_0000_0001, 1 << 6), "a match: (EDX:EAX, ZF)");
        check_eq!(read(p), 0x8_0000_0007, "the stored ECX:EBX");
        check_eq!(cmpxchg(0x2_0000_0001, 0x9), (0x8_0000_0007, 0), "a mismatch: (EDX:EAX, ZF)");
        check_eq!(read(p), 0x8_0000_0007, "unchanged by the mismatch");
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::mmio_cmpxchg8b::user64", mode = User64, path = Full;
    entry = mmio_cmpxchg8b
}

test_case! {
    /// LOCK CMPXCHG16B on a 16-byte-aligned MMIO operand, both outcomes: a match stores
    /// RCX:RBX and sets ZF; a mismatch loads the operand into RDX:RAX and clears ZF
    /// (SDM Vol. 2A, CMPXCHG8B/CMPXCHG16B).
    name = "io::mmio_cmpxchg16b::long64", mode = Long64, path = Full;
    fn mmio_cmpxchg16b() {
        if hvprobe_rt::cpu::cpuid(1, 0).ecx & (1 << 13) == 0 {
            hvprobe_rt::skip!("CPUID.1:ECX.CX16 is clear");
        }
        let p = mmio::<u64>(0xc0);
        // SAFETY: two quadwords of the MMIO device.
        unsafe {
            p.write_volatile(1);
            p.add(1).write_volatile(2);
        }
        let cmpxchg = |expect: (u64, u64), new: (u64, u64)| -> (u64, u64, u64) {
            let (lo, hi, flags): (u64, u64, u64);
            // SAFETY: 16 bytes of MMIO; RBX is LLVM's, so it is swapped in and out.
            unsafe {
                asm!("xchg {b}, rbx", "lock cmpxchg16b [{p}]", "pushfq", "pop {f}", "xchg {b}, rbx",
                     b = inout(reg) new.0 => _, p = in(reg) p, f = out(reg) flags, in("rcx") new.1,
                     inout("rax") expect.0 => lo, inout("rdx") expect.1 => hi);
            }
            (lo, hi, flags & (1 << 6))
        };
        check_eq!(cmpxchg((1, 2), (7, 8)), (1, 2, 1 << 6), "a match: (RAX, RDX, ZF)");
        // SAFETY: as above.
        check_eq!(unsafe { (p.read_volatile(), p.add(1).read_volatile()) }, (7, 8), "the stored RCX:RBX");
        check_eq!(cmpxchg((1, 2), (9, 9)), (7, 8, 0), "a mismatch: (RAX, RDX, ZF)");
        // SAFETY: as above.
        check_eq!(unsafe { (p.read_volatile(), p.add(1).read_volatile()) }, (7, 8), "unchanged by the mismatch");
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::mmio_cmpxchg16b::user64", mode = User64, path = Full;
    entry = mmio_cmpxchg16b
}

test_case! {
    /// CMOVcc with an MMIO source moves when its condition holds and leaves the
    /// destination alone when it does not (SDM Vol. 2A, CMOVcc).
    name = "io::mmio_cmov::long64", mode = Long64, path = Full;
    fn mmio_cmov() {
        let p = mmio_reg(0xabcd);
        let (taken, not_taken): (u64, u64);
        // SAFETY: loads from the MMIO register only.
        unsafe {
            asm!("xor {r:e}, {r:e}", "cmp {r}, 0", "cmove {r}, qword ptr [{p}]", r = out(reg) taken, p = in(reg) p);
            asm!("mov {r}, 7", "cmp {r}, 0", "cmove {r}, qword ptr [{p}]", r = out(reg) not_taken, p = in(reg) p);
        }
        check_eq!(taken, 0xabcd, "CMOVE with ZF set");
        check_eq!(not_taken, 7, "CMOVE with ZF clear");
    }
}

test_case! {
    /// The same from CPL3.
    name = "io::mmio_cmov::user64", mode = User64, path = Full;
    entry = mmio_cmov
}
