//! Benchmarks: one operation each, the operations of kvm-unit-tests' `vmexit` set that
//! a host can offer, at CPL0 and, where the operation exists there, at CPL3.
//!
//! Each case sets its operation up and hands it to `rt::bench::serve`, which runs
//! batches of it (or of the empty loop) as `hvprobe bench` asks. The cases are flagged
//! `BENCH`, so the conformance runners never list them.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use hvprobe_rt::abi::{self, flags::BENCH, layout, port, requires};
use hvprobe_rt::apic::{Apic, reg};
use hvprobe_rt::bench::serve;
use hvprobe_rt::exception::set_gate;
use hvprobe_rt::{cpu, test_case};
use x86::msr;

/// A hypercall that never returns on some hosts must not hold a benchmark run for 10 s.
const HYPERCALL_LIMIT_MS: u32 = 2000;

/// ICR destination shorthand "self" (SDM Vol. 3A, 11.6.1).
const ICR_SELF: u32 = 1 << 18;
const IPI_VECTOR: u8 = 0x41;
const KVM_HC_VAPIC_POLL_IRQ: u64 = 1;

/// RDMSR with its result dropped: the instruction and nothing more.
#[inline(always)]
fn rdmsr(msr: u32) {
    // SAFETY: the MSRs benchmarked here exist on every x86-64 CPU and reading them has no
    // side effects.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") _, out("edx") _, options(nomem, nostack, preserves_flags)) };
}

#[inline(always)]
fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the callers write back the value they read (STAR, KERNEL_GS_BASE), or a
    // far-future deadline the test never waits for.
    unsafe { cpu::wrmsr(msr, value) }
}

test_case! {
    /// CPUID leaf 0: always intercepted, handled inside KVM.
    name = "bench::cpuid::long64", mode = Long64, path = Full, flags = BENCH;
    fn bench_cpuid() {
        // SAFETY: CPUID only writes the registers named; RBX is saved around it (LLVM
        // reserves it).
        serve(|| unsafe {
            asm!("xchg {t}, rbx", "cpuid", "xchg {t}, rbx", t = out(reg) _, inout("eax") 0 => _,
                 inout("ecx") 0 => _, out("edx") _, options(nomem, nostack, preserves_flags))
        })
    }
}

test_case! {
    /// CPUID leaf 0 from CPL3.
    name = "bench::cpuid::user64", mode = User64, path = Full, flags = BENCH;
    entry = bench_cpuid
}

test_case! {
    /// RDTSC: not intercepted on hardware-assisted hosts.
    name = "bench::rdtsc::long64", mode = Long64, path = Hw, flags = BENCH;
    fn bench_rdtsc() {
        // SAFETY: RDTSC only writes EDX:EAX.
        serve(|| unsafe { asm!("rdtsc", out("eax") _, out("edx") _, options(nomem, nostack, preserves_flags)) })
    }
}

test_case! {
    /// RDTSC from CPL3.
    name = "bench::rdtsc::user64", mode = User64, path = Hw, flags = BENCH;
    entry = bench_rdtsc
}

test_case! {
    /// KVM_HC_VAPIC_POLL_IRQ, the cheapest hypercall KVM implements: a hypercall exit
    /// handled inside KVM (Documentation/virt/kvm/x86/hypercalls.rst).
    name = "bench::hypercall::long64", mode = Long64, path = Para,
        requires = requires::KVM_PV, timeout_ms = HYPERCALL_LIMIT_MS, flags = BENCH;
    fn bench_hypercall() {
        if cpu::is_amd() {
            // SAFETY: the hypercall only writes RAX.
            serve(|| unsafe { asm!("vmmcall", inout("rax") KVM_HC_VAPIC_POLL_IRQ => _, options(nostack)) })
        } else {
            // SAFETY: as above.
            serve(|| unsafe { asm!("vmcall", inout("rax") KVM_HC_VAPIC_POLL_IRQ => _, options(nostack)) })
        }
    }
}

test_case! {
    /// A hypercall from CPL3: KVM refuses it with -KVM_EPERM, so this is the exit and
    /// the privilege check alone.
    name = "bench::hypercall::user64", mode = User64, path = Para,
        requires = requires::KVM_PV, timeout_ms = HYPERCALL_LIMIT_MS, flags = BENCH;
    entry = bench_hypercall
}

test_case! {
    /// MOV from CR8 (the TPR) with the in-kernel LAPIC.
    name = "bench::cr8_read::long64", mode = Long64, path = Hw, requires = requires::IRQCHIP, flags = BENCH;
    fn bench_cr8_read() {
        // SAFETY: reading CR8 has no side effects at CPL0.
        serve(|| unsafe { asm!("mov {}, cr8", out(reg) _, options(nomem, nostack, preserves_flags)) })
    }
}

test_case! {
    /// MOV to CR8 of 0 (no interrupt is pending, so nothing is delivered).
    name = "bench::cr8_write::long64", mode = Long64, path = Hw, requires = requires::IRQCHIP, flags = BENCH;
    fn bench_cr8_write() {
        serve(|| {
            // SAFETY: TPR 0 masks nothing; interrupts are disabled anyway.
            unsafe { asm!("mov cr8, {}", in(reg) 0u64, options(nomem, nostack, preserves_flags)) };
        })
    }
}

test_case! {
    /// RDMSR of IA32_EFER.
    name = "bench::rdmsr_efer::long64", mode = Long64, path = Full, flags = BENCH;
    fn bench_rdmsr_efer() {
        serve(|| rdmsr(msr::IA32_EFER))
    }
}

test_case! {
    /// RDMSR of IA32_APIC_BASE, answered by the in-kernel LAPIC.
    name = "bench::rdmsr_apic_base::long64", mode = Long64, path = Full, requires = requires::IRQCHIP, flags = BENCH;
    fn bench_rdmsr_apic_base() {
        serve(|| rdmsr(msr::IA32_APIC_BASE))
    }
}

test_case! {
    /// RDMSR of IA32_TIME_STAMP_COUNTER (MSR 0x10).
    name = "bench::rdmsr_tsc::long64", mode = Long64, path = Full, flags = BENCH;
    fn bench_rdmsr_tsc() {
        serve(|| rdmsr(msr::IA32_TIME_STAMP_COUNTER))
    }
}

test_case! {
    /// WRMSR of IA32_KERNEL_GS_BASE (its own value back).
    name = "bench::wrmsr_kernel_gs_base::long64", mode = Long64, path = Full, flags = BENCH;
    fn bench_wrmsr_kernel_gs_base() {
        // SAFETY: reading an MSR every x86-64 CPU has.
    let v = unsafe { cpu::rdmsr(msr::IA32_KERNEL_GSBASE) };
        serve(|| wrmsr(msr::IA32_KERNEL_GSBASE, v))
    }
}

test_case! {
    /// WRMSR of IA32_STAR (its own value back).
    name = "bench::wrmsr_star::long64", mode = Long64, path = Full, flags = BENCH;
    fn bench_wrmsr_star() {
        // SAFETY: reading an MSR every x86-64 CPU has.
        let v = unsafe { cpu::rdmsr(msr::IA32_STAR) };
        serve(|| wrmsr(msr::IA32_STAR, v))
    }
}

#[inline(always)]
fn outb(port: u16, value: u8) {
    // SAFETY: the ports written here belong to the harness's devices or to ioeventfds.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) };
}

#[inline(always)]
fn outl(port: u16, value: u32) {
    // SAFETY: as for outb.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) };
}

/// IN with its result dropped.
#[inline(always)]
fn inb(port: u16) {
    // SAFETY: reads of the test device and the PIC's IMR have no side effects.
    unsafe { asm!("in al, dx", in("dx") port, out("al") _, options(nomem, nostack, preserves_flags)) };
}

#[inline(always)]
fn mmio_write(addr: u64, value: u32) {
    // SAFETY: `addr` is an identity-mapped MMIO register of the harness or an ioeventfd.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) };
}

test_case! {
    /// IN from the master PIC's IMR: port I/O answered inside KVM by the in-kernel PIC.
    name = "bench::pio_in_kernel::long64", mode = Long64, path = Full, requires = requires::IRQCHIP, flags = BENCH;
    fn bench_pio_in_kernel() {
        serve(|| inb(port::PIC_MASTER_DATA))
    }
}

test_case! {
    /// OUT to the master PIC's IMR (all lines masked, as it already is): port I/O answered
    /// inside KVM by the in-kernel PIC.
    name = "bench::pio_out_kernel::long64", mode = Long64, path = Full, requires = requires::IRQCHIP, flags = BENCH;
    fn bench_pio_out_kernel() {
        serve(|| outb(port::PIC_MASTER_DATA, 0xff))
    }
}

test_case! {
    /// OUT to the port test device: an exit to userspace and back.
    name = "bench::pio_out_user::long64", mode = Long64, path = Full, flags = BENCH;
    fn bench_pio_out_user() {
        serve(|| outb(port::TEST_IO, 0x5a))
    }
}

test_case! {
    /// IN from the port test device: an exit to userspace and back.
    name = "bench::pio_in_user::long64", mode = Long64, path = Full, flags = BENCH;
    fn bench_pio_in_user() {
        serve(|| inb(port::TEST_IO))
    }
}

test_case! {
    /// A 32-bit MMIO write to the test device: an exit to userspace and back.
    name = "bench::mmio_write_user::long64", mode = Long64, path = Full, flags = BENCH;
    fn bench_mmio_write_user() {
        serve(|| mmio_write(layout::MMIO_TEST_BASE, 0x1234_5678))
    }
}

test_case! {
    /// The same MMIO write from CPL3.
    name = "bench::mmio_write_user::user64", mode = User64, path = Full, flags = BENCH;
    entry = bench_mmio_write_user
}

test_case! {
    /// A 32-bit MMIO read from the test device.
    name = "bench::mmio_read_user::long64", mode = Long64, path = Full, flags = BENCH;
    fn bench_mmio_read_user() {
        // SAFETY: an identity-mapped register of the MMIO test device; the load is the
        // whole operation, its value is dropped.
        serve(|| unsafe {
            asm!("mov eax, [{a}]", a = in(reg) layout::MMIO_TEST_BASE, out("eax") _, options(nostack, preserves_flags))
        })
    }
}

test_case! {
    /// OUT to a port ioeventfd without datamatch: KVM signals the eventfd and resumes the
    /// guest with no exit to userspace.
    name = "bench::ioeventfd_pio::long64", mode = Long64, path = Para, requires = requires::IOEVENTFD, flags = BENCH;
    fn bench_ioeventfd_pio() {
        serve(|| outb(port::IOEVENTFD, 1))
    }
}

test_case! {
    /// A 32-bit OUT of the matching value to a port ioeventfd with datamatch.
    name = "bench::ioeventfd_pio_datamatch::long64", mode = Long64, path = Para,
        requires = requires::IOEVENTFD, flags = BENCH;
    fn bench_ioeventfd_pio_datamatch() {
        serve(|| outl(port::IOEVENTFD_DATAMATCH, abi::BENCH_DATAMATCH))
    }
}

test_case! {
    /// A 32-bit MMIO write to an ioeventfd without datamatch.
    name = "bench::ioeventfd_mmio::long64", mode = Long64, path = Para, requires = requires::IOEVENTFD, flags = BENCH;
    fn bench_ioeventfd_mmio() {
        serve(|| mmio_write(layout::IOEVENTFD_MMIO, 1))
    }
}

test_case! {
    /// A 32-bit MMIO write of the matching value to an ioeventfd with datamatch.
    name = "bench::ioeventfd_mmio_datamatch::long64", mode = Long64, path = Para,
        requires = requires::IOEVENTFD, flags = BENCH;
    fn bench_ioeventfd_mmio_datamatch() {
        serve(|| mmio_write(layout::IOEVENTFD_MMIO + 8, abi::BENCH_DATAMATCH))
    }
}

// Minimal handlers, so that an interrupt or exception benchmark measures delivery and
// IRETQ, not the runtime's general dispatch (which saves every register and runs Rust:
// dozens of instructions, each emulated at CPL0 on some hosts).
global_asm!(
    r#"
    .section .text.hv_bench_handlers, "ax"
    .global hv_bench_ud_handler
hv_bench_ud_handler:
    add qword ptr [rsp], 2
    iretq
    .global hv_bench_eoi_xapic
hv_bench_eoi_xapic:
    push rax
    mov eax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq
    .global hv_bench_ipi_ack
hv_bench_ipi_ack:
    lock inc qword ptr [rip + {ack}]
    push rax
    mov eax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq
    .global hv_bench_eoi_x2apic
hv_bench_eoi_x2apic:
    push rax
    push rcx
    push rdx
    mov ecx, 0x80b
    xor eax, eax
    xor edx, edx
    wrmsr
    pop rdx
    pop rcx
    pop rax
    iretq
"#,
    ack = sym IPI_ACKS,
);

/// Incremented by `hv_bench_ipi_ack` on whichever vCPU takes the IPI.
static IPI_ACKS: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    /// #UD: steps over the two-byte UD2 and returns.
    fn hv_bench_ud_handler();
    /// An interrupt: writes the xAPIC EOI register and returns.
    fn hv_bench_eoi_xapic();
    /// An interrupt: writes the x2APIC EOI MSR and returns.
    fn hv_bench_eoi_x2apic();
    /// An interrupt: counts itself in `IPI_ACKS`, writes the xAPIC EOI register, returns.
    fn hv_bench_ipi_ack();
}

test_case! {
    /// An IPI to another vCPU and its answer: vCPU 0 writes the xAPIC ICR (fixed, physical
    /// destination APIC ID 1), vCPU 1 takes the interrupt in its idle HLT, counts it and
    /// EOIs, and vCPU 0 spins until it sees the count move: kvm-unit-tests' `ipi`.
    name = "bench::ipi::xapic", mode = Long64, path = Full, requires = requires::IRQCHIP, flags = BENCH, vcpus = 2;
    fn bench_ipi_xapic() {
        set_gate(IPI_VECTOR, hv_bench_ipi_ack);
        let apic = Apic::XApic.enable();
        if !hvprobe_rt::smp::wait_online(1, 1_000_000) {
            hvprobe_rt::skip!("vCPU 1 did not come online");
        }
        serve(|| {
            let before = IPI_ACKS.load(SeqCst);
            apic.write(reg::ICR_HIGH, 1 << 24);
            apic.write(reg::ICR_LOW, IPI_VECTOR as u32);
            while IPI_ACKS.load(SeqCst) == before {
                core::hint::spin_loop();
            }
        })
    }
}

fn sti() {
    // SAFETY: the benchmark installed a handler for the only interrupt it raises.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

test_case! {
    /// A self-IPI through the xAPIC ICR, delivered and EOIed: ICR write, interrupt
    /// delivery through the IDT, a handler that writes EOI, IRETQ.
    name = "bench::self_ipi::xapic", mode = Long64, path = Full, requires = requires::IRQCHIP, flags = BENCH;
    fn bench_self_ipi_xapic() {
        set_gate(IPI_VECTOR, hv_bench_eoi_xapic);
        let apic = Apic::XApic.enable();
        sti();
        serve(|| apic.write(reg::ICR_LOW, ICR_SELF | IPI_VECTOR as u32))
    }
}

test_case! {
    /// A self-IPI through the x2APIC SELF IPI MSR (SDM Vol. 3A, 11.12.11), delivered and
    /// EOIed through the x2APIC EOI MSR.
    name = "bench::self_ipi::x2apic", mode = Long64, path = Hw,
        requires = requires::IRQCHIP | requires::X2APIC, flags = BENCH;
    fn bench_self_ipi_x2apic() {
        set_gate(IPI_VECTOR, hv_bench_eoi_x2apic);
        Apic::X2Apic.enable();
        sti();
        serve(|| wrmsr(msr::IA32_X2APIC_SELF_IPI, IPI_VECTOR as u64))
    }
}

test_case! {
    /// HLT with a self-IPI pending behind CLI: `cli; self-IPI; sti; hlt`. The HLT exit,
    /// KVM's check for a pending event, the wake-up and the interrupt's delivery.
    name = "bench::hlt_wakeup::long64", mode = Long64, path = Full, requires = requires::IRQCHIP, flags = BENCH;
    fn bench_hlt_wakeup() {
        set_gate(IPI_VECTOR, hv_bench_eoi_xapic);
        let apic = Apic::XApic.enable();
        serve(|| {
            // SAFETY: the handler for the IPI is installed; STI's shadow covers HLT, so the
            // interrupt arrives while halted, never before.
            unsafe { asm!("cli", options(nomem, nostack)) };
            apic.write(reg::ICR_LOW, ICR_SELF | IPI_VECTOR as u32);
            cpu::sti_hlt();
        })
    }
}

test_case! {
    /// An exception round trip: UD2 raises #UD, a two-instruction IDT handler steps over
    /// it with IRETQ.
    name = "bench::exception_ud::long64", mode = Long64, path = Hw, flags = BENCH;
    fn bench_exception_ud() {
        set_gate(6, hv_bench_ud_handler);
        // SAFETY: the #UD handler resumes after the two-byte UD2.
        serve(|| unsafe { asm!("ud2", options(nomem, nostack)) })
    }
}

test_case! {
    /// The exception round trip from CPL3 (the handler runs at CPL0).
    name = "bench::exception_ud::user64", mode = User64, path = Hw, flags = BENCH;
    entry = bench_exception_ud
}

test_case! {
    /// Arming the TSC-deadline timer: WRMSR IA32_TSC_DEADLINE of a deadline far in the
    /// future, with the LVT timer in TSC-deadline mode (SDM Vol. 3A, 11.5.4.1).
    name = "bench::tsc_deadline_arm::long64", mode = Long64, path = Full,
        requires = requires::IRQCHIP | requires::TSC_DEADLINE, flags = BENCH;
    fn bench_tsc_deadline_arm() {
        let apic = Apic::XApic.enable();
        apic.write(reg::LVT_TIMER, (0b10 << 17) | IPI_VECTOR as u32);
        let far = cpu::rdtsc() + (1 << 50);
        serve(|| wrmsr(msr::IA32_TSC_DEADLINE, far))
    }
}

test_case! {
    /// Port writes to the port test device in a loop, forever, with no protocol traffic:
    /// the host's KVM_RUN round trip, driven by hvprobe's run loop and by a bare
    /// KVM_RUN loop (the floor) in turn.
    name = "bench::exit_loop::long64", mode = Long64, path = Full, flags = BENCH;
    fn bench_exit_loop() {
        loop {
            outb(port::TEST_IO, 0);
        }
    }
}
