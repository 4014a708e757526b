//! The same behaviour through each path (`full`, `para`, `hw`): the cases of the path
//! table. Each moves the same bytes, reads the same stretch of time, or sends and ends
//! the same interrupts through one interface, inside the host's measured section
//! (`rt::path::measure`), and reports the metrics `result` (equal across the ways of a
//! behaviour) and `cost` (cycles per operation). The host's section record says how the
//! hypervisor handled each way: exits to userspace, KVM statistics.

use core::sync::atomic::{AtomicU64, Ordering::SeqCst, compiler_fence};

use hvprobe_rt::abi::layout::{MMIO_FIFO, RING, RING_CONSUMED, RING_DATA, RING_DOORBELL, RING_PRODUCED, RING_SIZE};
use hvprobe_rt::abi::{self, FNV1A32_INIT, flags::PATH_TABLE, fnv1a32, port, proto::service, requires, sink};
use hvprobe_rt::apic::{Apic, reg};
use hvprobe_rt::exception::{Frame, set_handler};
use hvprobe_rt::proto::service as call;
use hvprobe_rt::user::call_at_cpl3;
use hvprobe_rt::{check, check_eq, check_no_exception, check_values, cpu, kvmclock, path, test_case};
use x86::io::{inb, inl, outb};

/// Bytes each way moves: 1,024 UART exits are enough to cost it, few enough for PVM.
const BLOCK: usize = 1024;

/// The block every way moves: the same bytes for the same seed.
fn block() -> [u8; BLOCK] {
    let mut x = call(service::SEED, [0; 4]).unwrap_or(1) | 1;
    core::array::from_fn(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    })
}

/// Checks that sink `sink` received exactly `bytes`, byte for byte (by count and
/// digest), and reports the digest as this way's result.
fn check_sink(sink: u64, bytes: &[u8]) {
    let got = call(service::SINK, [sink, 0, 0, 0]);
    check!(got.is_ok(), "the host has no sink {}", sink);
    let got = got.unwrap_or(0);
    check_eq!(got >> 32, bytes.len() as u64, "bytes the host received");
    let digest = fnv1a32(FNV1A32_INIT, bytes);
    check_eq!(got as u32, digest, "FNV-1a digest of what the host received");
    path::result("fnv1a32", digest.into());
}

/// A 16550 driver: wait for THRE in LSR, then write THR (two exits per byte).
fn uart_send(bytes: &[u8]) {
    for &b in bytes {
        // SAFETY: the host's UART; these ports have no other effect.
        unsafe {
            while inb(port::UART + 5) & 0x20 == 0 {}
            outb(port::UART, b);
        }
    }
}

/// Four bytes per MMIO write to the data register at `at`: the MMIO FIFO, or the
/// coalesced FIFO, whose writes KVM rings up for the host to apply at its next exit.
fn words_to(at: u64, bytes: &[u8]) {
    for chunk in bytes.chunks(4) {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        // SAFETY: a FIFO's data register; a write appends its bytes to the host's sink.
        unsafe { (at as *mut u32).write_volatile(u32::from_le_bytes(word)) };
    }
}

fn fifo_send(bytes: &[u8]) {
    words_to(MMIO_FIFO, bytes);
}

fn coalesced_send(bytes: &[u8]) {
    words_to(abi::layout::COALESCED_MMIO, bytes);
}

/// The shared ring: copy a chunk in, publish the produced count, ring the doorbell (an
/// ioeventfd); wait for room, and at the end for the host to consume everything.
const RING_CHUNK: usize = 256;

fn ring_send(bytes: &[u8]) {
    let produced_at = (RING + RING_PRODUCED) as *mut u32;
    // SAFETY: the ring page is guest RAM the host's ring thread shares.
    let mut produced = unsafe { produced_at.read_volatile() };
    for chunk in bytes.chunks(RING_CHUNK) {
        wait_consumed(|consumed| RING_SIZE - produced.wrapping_sub(consumed) >= chunk.len() as u32, produced);
        for (i, &b) in chunk.iter().enumerate() {
            let at = RING + RING_DATA + u64::from(produced.wrapping_add(i as u32) % RING_SIZE);
            // SAFETY: inside the ring's data area.
            unsafe { (at as *mut u8).write_volatile(b) };
        }
        compiler_fence(SeqCst);
        produced = produced.wrapping_add(chunk.len() as u32);
        // SAFETY: the ring page; then the doorbell, an ioeventfd the host registered.
        unsafe {
            produced_at.write_volatile(produced);
            (RING_DOORBELL as *mut u32).write_volatile(1);
        }
    }
    wait_consumed(|consumed| consumed == produced, produced);
}

/// Spins until `ready(consumed)`; a host that stops consuming fails the case in about a
/// second instead of hanging it.
fn wait_consumed(ready: impl Fn(u32) -> bool, produced: u32) {
    let consumed_at = (RING + RING_CONSUMED) as *const u32;
    let start = cpu::rdtsc();
    loop {
        // SAFETY: the ring page.
        let consumed = unsafe { consumed_at.read_volatile() };
        if ready(consumed) {
            return;
        }
        check!(
            cpu::rdtsc() - start < 4_000_000_000,
            "the host consumed {} of {} bytes and stopped",
            consumed,
            produced
        );
        core::hint::spin_loop();
    }
}

/// One way to move the block: measured, then checked on the host byte for byte. An
/// `extern "C" fn(sink number)` so that the CPL3 variants can run it through `call_at_cpl3`.
extern "C" fn move_block(which: u64) {
    let bytes = block();
    // UART: LSR and THR per byte; FIFO: one write per 4 bytes; ring: one doorbell per chunk.
    let (send, accesses): (fn(&[u8]), usize) = match which {
        sink::UART => (uart_send, 2 * BLOCK),
        sink::FIFO => (fifo_send, BLOCK / 4),
        sink::COALESCED => (coalesced_send, BLOCK / 4),
        _ => (ring_send, BLOCK.div_ceil(RING_CHUNK)),
    };
    path::measure(BLOCK as u64, accesses as u64, || send(&bytes));
    check_sink(which, &bytes);
    if which == sink::RING {
        let doorbells =
            call(service::IOEVENT_COUNT, [hvprobe_rt::abi::proto::IOEVENT_RING_DOORBELL, 0, 0, 0]).unwrap_or(0);
        check!(doorbells > 0, "the host thread saw no doorbell");
    }
}

/// Runs `way(arg)` at CPL3 (IOPL 3) and fails with the exception it raised, if any.
fn at_cpl3(way: extern "C" fn(u64), arg: u64) {
    check_no_exception!(call_at_cpl3(way, arg));
}

test_case! {
    /// Moving 1,024 bytes to a host device through a 16550 UART's THR, polling LSR.THRE
    /// before each byte as a driver does (the `full` path: every access exits).
    name = "io::bytes_to_device::uart", mode = Long64, path = Full, flags = PATH_TABLE;
    fn bytes_uart() {
        move_block(sink::UART);
    }
}

test_case! {
    /// The same bytes through an MMIO FIFO register, four per write (`full`).
    name = "io::bytes_to_device::mmio_fifo", mode = Long64, path = Full, flags = PATH_TABLE;
    fn bytes_fifo() {
        move_block(sink::FIFO);
    }
}

test_case! {
    /// The same bytes through a ring in shared memory with an ioeventfd doorbell, which a
    /// host thread serves without an exit to userspace (`para`).
    name = "io::bytes_to_device::ring", mode = Long64, path = Para, requires = requires::IOEVENTFD,
        flags = PATH_TABLE;
    fn bytes_ring() {
        move_block(sink::RING);
    }
}

test_case! {
    /// The same bytes through a coalesced MMIO FIFO, four per write: each write is a VM
    /// exit that KVM records in the coalesced ring instead of exiting to userspace
    /// (`full`, api.rst 4.116).
    name = "io::bytes_to_device::coalesced", mode = Long64, path = Full, requires = requires::COALESCED,
        flags = PATH_TABLE;
    fn bytes_coalesced() {
        move_block(sink::COALESCED);
    }
}

test_case! {
    /// The coalesced way from CPL3.
    name = "io::bytes_to_device_cpl3::coalesced", mode = Long64, path = Full, requires = requires::COALESCED,
        flags = PATH_TABLE;
    fn bytes_coalesced_cpl3() {
        at_cpl3(move_block, sink::COALESCED);
    }
}

test_case! {
    /// The UART way from CPL3 with IOPL 3 (SDM Vol. 1, 19.5.1: IN/OUT are allowed when
    /// CPL <= IOPL).
    name = "io::bytes_to_device_cpl3::uart", mode = Long64, path = Full, flags = PATH_TABLE;
    fn bytes_uart_cpl3() {
        at_cpl3(move_block, sink::UART);
    }
}

test_case! {
    /// The MMIO FIFO way from CPL3.
    name = "io::bytes_to_device_cpl3::mmio_fifo", mode = Long64, path = Full, flags = PATH_TABLE;
    fn bytes_fifo_cpl3() {
        at_cpl3(move_block, sink::FIFO);
    }
}

test_case! {
    /// The shared-ring way from CPL3.
    name = "io::bytes_to_device_cpl3::ring", mode = Long64, path = Para, requires = requires::IOEVENTFD,
        flags = PATH_TABLE;
    fn bytes_ring_cpl3() {
        at_cpl3(move_block, sink::RING);
    }
}

/// Reads of the clock in the measured section.
const READS: u64 = 256;
/// The host's sleep that each clock must measure.
const SLEEP_US: u64 = 20_000;
/// The clocks, by number, so that the CPL3 variants can pass one through `call_at_cpl3`.
const RDTSC: u64 = 0;
const KVMCLOCK: u64 = 1;
const PM_TIMER: u64 = 2;

/// Reads clock `clock` READS times in the section, then measures the host's 20 ms sleep
/// with it. The host's CLOCK_MONOTONIC is read before and after the sleep (HOST_CLOCK),
/// and the guest clock before and after each of those readings, so that in real time
/// `outer_start <= host_start <= inner_start` and `inner_end <= host_end <= outer_end`:
/// the clock's outer interval may not be shorter than 99% of the host's, nor its inner
/// interval longer than 101% of it (msr.rst: kvmclock counts nanoseconds of the host's
/// clock; SDM Vol. 3B 18.17: the TSC runs at a constant rate; ACPI 6.5 4.8.3.3: the PM
/// timer at 3.579545 MHz). However long the exits around the readings take (a loaded
/// host), the bounds hold for a correct clock. The result is the mean of the two
/// intervals in parts per million of the host's.
extern "C" fn read_time(clock: u64) {
    let now: &dyn Fn() -> u64 = match clock {
        RDTSC => &tsc_ns_fn(),
        KVMCLOCK => &kvmclock::ns,
        _ => &pm_timer_ns,
    };
    path::measure(READS, READS, || {
        for _ in 0..READS {
            core::hint::black_box(now());
        }
    });
    let host_clock = || call(service::HOST_CLOCK, [0; 4]).unwrap_or(0);
    let outer_start = now();
    let host_start = host_clock();
    let inner_start = now();
    let slept = call(service::HOST_SLEEP, [SLEEP_US, 0, 0, 0]).unwrap_or(0);
    let inner_end = now();
    let host_end = host_clock();
    let outer_end = now();
    check!(slept >= SLEEP_US * 1000, "the host slept {} ns", slept);
    let host = host_end.wrapping_sub(host_start);
    check!(host >= slept, "the host's clock moved {} ns across a sleep of {} ns", host, slept);
    let (outer, inner) = (outer_end.wrapping_sub(outer_start), inner_end.wrapping_sub(inner_start));
    check_values!(
        outer >= host * 99 / 100,
        host,
        outer,
        "the clock measured less than 99% of the host's interval around it"
    );
    check_values!(
        inner <= host * 101 / 100,
        host,
        inner,
        "the clock measured more than 101% of the host's interval within it"
    );
    path::result("ppm_of_host", (outer + inner) / 2 * 1_000_000 / host);
}

fn tsc_ns_fn() -> impl Fn() -> u64 {
    let khz = call(service::TSC_KHZ, [0; 4]).unwrap_or(0);
    check!(khz > 0, "no TSC frequency from the host");
    move || ((cpu::rdtsc() as u128 * 1_000_000) / khz as u128) as u64
}

fn pm_timer_ns() -> u64 {
    // A 32-bit counter: wraps every 20 minutes, far longer than a case.
    // SAFETY: the host's PM timer port; a read has no side effect.
    let ticks = unsafe { inl(port::PM_TIMER) };
    u64::from(ticks) * 1_000_000_000 / abi::PM_TIMER_HZ
}

test_case! {
    /// Reading the time with RDTSC scaled by the TSC frequency KVM reports (`hw`).
    name = "pv::read_time::rdtsc", mode = Long64, path = Hw, flags = PATH_TABLE;
    fn time_rdtsc() {
        read_time(RDTSC);
    }
}

test_case! {
    /// Reading the time from kvmclock (MSR_KVM_SYSTEM_TIME_NEW, msr.rst): the `para`
    /// path, a structure KVM keeps up to date in guest memory.
    name = "pv::read_time::kvmclock", mode = Long64, path = Para, requires = requires::KVM_PV,
        flags = PATH_TABLE;
    fn time_kvmclock() {
        kvmclock::enable();
        read_time(KVMCLOCK);
    }
}

test_case! {
    /// Reading the time from the ACPI PM timer port, emulated by the host (`full`).
    name = "pv::read_time::pm_timer", mode = Long64, path = Full, flags = PATH_TABLE;
    fn time_pm_timer() {
        read_time(PM_TIMER);
    }
}

test_case! {
    /// RDTSC at CPL3 (CR4.TSD clear, so it is allowed: SDM Vol. 2B, RDTSC).
    name = "pv::read_time_cpl3::rdtsc", mode = Long64, path = Hw, flags = PATH_TABLE;
    fn time_rdtsc_cpl3() {
        at_cpl3(read_time, RDTSC);
    }
}

test_case! {
    /// kvmclock read at CPL3 (enabled at CPL0; the page is mapped user-readable).
    name = "pv::read_time_cpl3::kvmclock", mode = Long64, path = Para, requires = requires::KVM_PV,
        flags = PATH_TABLE;
    fn time_kvmclock_cpl3() {
        kvmclock::enable();
        at_cpl3(read_time, KVMCLOCK);
    }
}

test_case! {
    /// The PM timer port at CPL3 with IOPL 3 (SDM Vol. 1, 19.5.1).
    name = "pv::read_time_cpl3::pm_timer", mode = Long64, path = Full, flags = PATH_TABLE;
    fn time_pm_timer_cpl3() {
        at_cpl3(read_time, PM_TIMER);
    }
}

/// Self-IPIs each way sends and ends.
const IPIS: u64 = 64;
const IPI_VECTOR: u8 = 0x5a;
static TAKEN: AtomicU64 = AtomicU64::new(0);
static PV_EOI_WORD: AtomicU64 = AtomicU64::new(0);
/// Interrupts ended through the PV EOI flag rather than the APIC.
static PV_EOIS: AtomicU64 = AtomicU64::new(0);

fn eoi_xapic(_: &mut Frame) {
    TAKEN.fetch_add(1, SeqCst);
    Apic::XApic.eoi();
}

fn eoi_x2apic(_: &mut Frame) {
    TAKEN.fetch_add(1, SeqCst);
    Apic::X2Apic.eoi();
}

/// The PV EOI protocol (msr.rst, MSR_KVM_PV_EOI_EN): if KVM set bit 0, clearing it is
/// the EOI; otherwise write the APIC's EOI.
fn eoi_pv(_: &mut Frame) {
    TAKEN.fetch_add(1, SeqCst);
    if PV_EOI_WORD.fetch_and(!1, SeqCst) & 1 != 0 {
        PV_EOIS.fetch_add(1, SeqCst);
    } else {
        Apic::XApic.eoi();
    }
}

/// Sends IPIS self-IPIs with `send` (`accesses_per_ipi` counts it and the EOI: the PV
/// EOI's flag is memory, not an access) and interrupts off, each then taken at STI;HLT and
/// ended by the handler before the next (an IPI pending in the IRR wakes the HLT: SDM
/// Vol. 3A, 11.6.1 and Vol. 2A, HLT), inside the section; then checks the count and that
/// the ISR is empty (SDM Vol. 3A, 11.8.4: an EOI clears the highest ISR bit). The result
/// is the count taken. A lost IPI halts for good and the watchdog reports it.
fn ipi_path(apic: Apic, accesses_per_ipi: u64, send: impl Fn()) {
    path::measure(IPIS, IPIS * accesses_per_ipi, || {
        for _ in 0..IPIS {
            send();
            cpu::sti_hlt();
        }
    });
    check_eq!(TAKEN.load(SeqCst), IPIS, "self-IPIs taken");
    // Any exit completes a pending PV EOI: a console write.
    // SAFETY: the console port.
    unsafe { outb(port::CONSOLE, b'.') };
    check_eq!(apic.vector_bit(reg::ISR, IPI_VECTOR), false, "ISR bit of the vector after the last EOI");
    path::result("ipis", TAKEN.load(SeqCst));
}

/// ICR: fixed delivery, self shorthand (SDM Vol. 3A, 11.6.1).
const SELF_IPI: u32 = 0b01 << 18 | IPI_VECTOR as u32;

test_case! {
    /// Self-IPIs through the xAPIC's ICR and EOI registers in its MMIO page (`full`).
    name = "irq::ipi_eoi::xapic", mode = Long64, path = Full, requires = requires::IRQCHIP, flags = PATH_TABLE;
    fn ipi_xapic() {
        set_handler(IPI_VECTOR, eoi_xapic);
        let apic = Apic::XApic.enable();
        ipi_path(apic, 2, || apic.write(reg::ICR_LOW, SELF_IPI));
    }
}

test_case! {
    /// Self-IPIs through the x2APIC's ICR and EOI MSRs (`hw`: the MSRs hardware APIC
    /// virtualization handles without an exit where the CPU has it).
    name = "irq::ipi_eoi::x2apic", mode = Long64, path = Hw, requires = requires::IRQCHIP | requires::X2APIC,
        flags = PATH_TABLE;
    fn ipi_x2apic() {
        set_handler(IPI_VECTOR, eoi_x2apic);
        let apic = Apic::X2Apic.enable();
        ipi_path(apic, 2, || apic.write(reg::ICR_LOW, SELF_IPI));
    }
}

const KVM_HC_SEND_IPI: u64 = 10;
use hvprobe_rt::cpu::kvm_msr::PV_EOI_EN as MSR_KVM_PV_EOI_EN;
/// CPUID 0x40000001 EAX bits 6 and 11 (Documentation/virt/kvm/x86/cpuid.rst).
const KVM_FEATURE_PV_EOI: u32 = 1 << 6;
const KVM_FEATURE_PV_SEND_IPI: u32 = 1 << 11;

test_case! {
    /// Self-IPIs through KVM_HC_SEND_IPI (hypercalls.rst: a bitmap of APIC IDs from a
    /// base, then the ICR's low half) ended through PV EOI (`para`).
    name = "irq::ipi_eoi::pv", mode = Long64, path = Para, requires = requires::IRQCHIP | requires::KVM_PV,
        timeout_ms = 1000, flags = PATH_TABLE;
    fn ipi_pv() {
        let features = cpu::cpuid(0x4000_0001, 0).eax;
        if features & KVM_FEATURE_PV_SEND_IPI == 0 || features & KVM_FEATURE_PV_EOI == 0 {
            hvprobe_rt::skip!("the host does not advertise both PV_SEND_IPI and PV_EOI ({:#x})", features);
        }
        set_handler(IPI_VECTOR, eoi_pv);
        let apic = Apic::XApic.enable();
        // SAFETY: the word is 8-byte aligned guest RAM; bit 0 enables PV EOI.
        unsafe { cpu::wrmsr(MSR_KVM_PV_EOI_EN, &raw const PV_EOI_WORD as u64 | 1) };
        let id = u64::from(apic.read(reg::ID) >> 24);
        ipi_path(apic, 1, || {
            let reached = cpu::kvm_hypercall(KVM_HC_SEND_IPI, [1, 0, id, IPI_VECTOR as u64]);
            check_eq!(reached, 1, "vCPUs KVM_HC_SEND_IPI reached");
        });
        hvprobe_rt::metric("pv_eois", "count", PV_EOIS.load(SeqCst));
        // SAFETY: turning PV EOI off.
        unsafe { cpu::wrmsr(MSR_KVM_PV_EOI_EN, 0) };
    }
}
