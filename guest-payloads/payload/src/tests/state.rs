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

// ---------------------------------------------------------------------------------------
// Save and restore. Each case declares what the host does (`migrate = ...`): restore into
// a fresh VM in this process at each checkpoint, write a file and restore it in another
// process, pause at random points, or migrate live.
// ---------------------------------------------------------------------------------------

use core::arch::{asm, global_asm};

use hvprobe_rt::abi::layout::{STATE_REGION, STATE_REGION_SIZE};
use hvprobe_rt::abi::proto::{self, service};
use hvprobe_rt::abi::requires::{DIRTY_RING, IRQCHIP, KVM_PV};
use hvprobe_rt::apic::{Apic, reg};
use hvprobe_rt::exception::{Frame, set_handler};
use hvprobe_rt::state::{checkpoint, dirty_clear, dirty_count, dirty_start, dirty_test};
use hvprobe_rt::{check, check_no_exception, metric, skip};
use hvprobe_rt::{ioapic, kvmclock};
use x86::msr;

const PAGE: u64 = 4096;

/// A generous bound for a migration's wall time, in TSC cycles at a 1 GHz minimum clock.
const TEN_SECONDS: u64 = 10_000_000_000;

/// The bytes a pattern case writes: 64 KiB at CPL0 (each store is emulated on PVM), the
/// whole region at CPL3.
fn pattern_len() -> u64 {
    if cpu::read_cs() & 3 == 3 { STATE_REGION_SIZE } else { 64 * 1024 }
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^ (x << 17)
}

/// Fills [STATE_REGION, + len) with a seeded pattern and returns its checksum.
fn fill_pattern(seed: u64, len: u64) -> u64 {
    let mut x = seed | 1;
    let mut sum = 0u64;
    for i in 0..len / 8 {
        x = xorshift(x);
        // SAFETY: the state region is RAM no other code uses.
        unsafe { ((STATE_REGION + i * 8) as *mut u64).write_volatile(x) };
        sum = sum.wrapping_add(x).rotate_left(1);
    }
    sum
}

/// Checks the pattern `fill_pattern(seed, len)` wrote; reports the first difference.
fn check_pattern(seed: u64, len: u64) {
    let mut x = seed | 1;
    for i in 0..len / 8 {
        x = xorshift(x);
        let addr = STATE_REGION + i * 8;
        // SAFETY: as in fill_pattern.
        let got = unsafe { (addr as *const u64).read_volatile() };
        check_eq!(got, x, "pattern word at {:#x}", addr);
    }
}

test_case! {
    /// Memory survives a save and a restore into a fresh VM byte for byte.
    name = "state::restore_memory::long64", mode = Long64, path = Hw, migrate = Restore;
    fn restore_memory() {
        let len = pattern_len();
        fill_pattern(0x5eed, len);
        checkpoint(1);
        check_pattern(0x5eed, len);
    }
}

test_case! {
    /// The same from CPL3, over the whole 1 MiB region.
    name = "state::restore_memory::user64", mode = User64, path = Hw, migrate = Restore;
    entry = restore_memory
}

// The register check: load patterns into every general-purpose register the protocol does
// not need, all 16 XMM registers and MXCSR, ring the checkpoint doorbell from assembly,
// and store what the registers hold when the guest runs again (in the restored VM).
global_asm!(
    r#"
    .section .bss.hv_rs, "aw"
    .balign 16
    .global hv_rs_out
hv_rs_out:
    .skip 13 * 8 + 16 * 16 + 8
hv_rs_msg:
    .skip 8
hv_rs_mmio:
    .skip 8
hv_rs_sse:
    .skip 8
    .section .rodata.hv_rs, "a"
    .balign 16
hv_rs_xmm_in:
    .set hv_i, 0
    .rept 16
    .quad 0x0123456789abcdef + hv_i * 0x1111, 0xfedcba9876543210 - hv_i * 0x2222
    .set hv_i, hv_i + 1
    .endr
hv_rs_mxcsr_in:
    .long 0x7f80
hv_rs_mxcsr_default:
    .long 0x1f80

    .section .text.hv_rs, "ax"
    .global hv_regs_across_checkpoint
hv_regs_across_checkpoint:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov [rip + hv_rs_msg], rdi
    mov [rip + hv_rs_mmio], rsi
    mov [rip + hv_rs_sse], rdx
    test rdx, rdx
    jz 3f
    .irp r, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    movdqa xmm\r, [rip + hv_rs_xmm_in + \r * 16]
    .endr
    ldmxcsr [rip + hv_rs_mxcsr_in]
3:
    movabs rbx, 0x1111111111111111
    movabs rbp, 0x2222222222222222
    movabs rsi, 0x3333333333333333
    movabs rdi, 0x4444444444444444
    movabs r8, 0x5555555555555555
    movabs r9, 0x6666666666666666
    movabs r10, 0x7777777777777777
    movabs r11, 0x8888888888888888
    movabs r12, 0x9999999999999999
    movabs r13, 0xaaaaaaaaaaaaaaaa
    movabs r14, 0xbbbbbbbbbbbbbbbb
    movabs r15, 0xcccccccccccccccc
    movabs rcx, 0xdddddddddddddddd
    mov rax, [rip + hv_rs_msg]
    cmp qword ptr [rip + hv_rs_mmio], 0
    jne 1f
    mov edx, {protocol_port}
    out dx, eax
    jmp 2f
1:
    mov edx, {protocol_mmio}
    mov dword ptr [rdx], eax
2:
    mov [rip + hv_rs_out + 0], rbx
    mov [rip + hv_rs_out + 8], rbp
    mov [rip + hv_rs_out + 16], rsi
    mov [rip + hv_rs_out + 24], rdi
    mov [rip + hv_rs_out + 32], r8
    mov [rip + hv_rs_out + 40], r9
    mov [rip + hv_rs_out + 48], r10
    mov [rip + hv_rs_out + 56], r11
    mov [rip + hv_rs_out + 64], r12
    mov [rip + hv_rs_out + 72], r13
    mov [rip + hv_rs_out + 80], r14
    mov [rip + hv_rs_out + 88], r15
    mov [rip + hv_rs_out + 96], rcx
    cmp qword ptr [rip + hv_rs_sse], 0
    je 4f
    .irp r, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    movdqu [rip + hv_rs_out + 104 + \r * 16], xmm\r
    .endr
    stmxcsr [rip + hv_rs_out + 104 + 256]
    ldmxcsr [rip + hv_rs_mxcsr_default]
4:
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
"#,
    protocol_port = const hvprobe_rt::abi::port::PROTOCOL,
    protocol_mmio = const hvprobe_rt::abi::layout::PROTOCOL_MMIO,
);

#[repr(C)]
struct RegsOut {
    gpr: [u64; 13],
    xmm: [[u64; 2]; 16],
    mxcsr: u64,
}

unsafe extern "C" {
    fn hv_regs_across_checkpoint(msg: u64, mmio: u64, sse: u64);
    static hv_rs_out: RegsOut;
}

/// Runs the register checkpoint and returns what the registers held afterwards; with
/// `sse`, XMM0-15 and MXCSR too (the caller has set CR4.OSFXSR).
fn regs_across_checkpoint(tag: u64, sse: bool) -> &'static RegsOut {
    let mut msg = proto::Service {
        header: proto::Header { magic: proto::MAGIC, kind: proto::KIND_SERVICE },
        service: service::CHECKPOINT,
        status: u32::MAX,
        args: [tag, 0, 0, 0],
        result: 0,
    };
    let mmio = (cpu::read_cs() & 3 == 3) as u64;
    // SAFETY: the routine saves the callee-saved registers it uses, leaves the stack as it
    // found it, restores the default MXCSR, and writes only its own .bss.
    unsafe { hv_regs_across_checkpoint(&raw mut msg as u64, mmio, sse as u64) };
    // SAFETY: the host wrote the status during the doorbell write.
    if unsafe { (&raw const msg.status).read_volatile() } != proto::SERVICE_OK {
        skip!("the host does not take checkpoints");
    }
    // SAFETY: the routine has returned; nothing writes hv_rs_out any more.
    unsafe { &hv_rs_out }
}

test_case! {
    /// General-purpose registers hold their values across a save and restore
    /// (KVM_GET_REGS/KVM_SET_REGS, api.rst 4.11-4.12).
    name = "state::restore_gprs::long64", mode = Long64, path = Hw, migrate = Restore;
    fn restore_gprs() {
        let out = regs_across_checkpoint(2, false);
        for (i, got) in out.gpr.iter().enumerate() {
            let want = 0x1111_1111_1111_1111u64.wrapping_mul(i as u64 + 1);
            check_eq!(*got, want, "register {} of rbx rbp rsi rdi r8-r15 rcx", i);
        }
    }
}

test_case! {
    /// The same at CPL3.
    name = "state::restore_gprs::user64", mode = User64, path = Hw, migrate = Restore;
    entry = restore_gprs
}

test_case! {
    /// XMM0-15 and MXCSR hold their values across a save and restore (KVM_GET_FPU /
    /// KVM_GET_XSAVE, api.rst 4.22 and 4.42). The case turns SSE on (CR4.OSFXSR and
    /// OSXMMEXCPT, SDM Vol. 3A 2.5); the harness's machine leaves it off.
    name = "state::restore_sse::long64", mode = Long64, path = Hw, migrate = Restore;
    fn restore_sse() {
        // SAFETY: enabling SSE changes nothing the runtime relies on (it is built without).
        unsafe { asm!("mov {t}, cr4", "or {t}, 0x600", "mov cr4, {t}", t = out(reg) _, options(nomem, nostack)) };
        let out = regs_across_checkpoint(3, true);
        check_sse(out);
    }
}

test_case! {
    /// The x87 stack and control word survive a save and restore (Rust code uses SSE for
    /// floating point, so the x87 registers are untouched around the checkpoint).
    name = "state::restore_x87::long64", mode = Long64, path = Hw, migrate = Restore;
    fn restore_x87() {
        let cw: u16 = 0x0e7f; // round toward zero, 64-bit precision, all exceptions masked
        // SAFETY: x87 state belongs to this test; nothing else uses it.
        unsafe { asm!("fninit", "fldcw [rax]", "fld1", "fldpi", in("rax") &cw, options(nostack)) };
        checkpoint(4);
        let (mut pi, mut one, mut cw_after) = (0f64, 0f64, 0u16);
        // SAFETY: pops the two values pushed above.
        unsafe {
            asm!("fstp qword ptr [{a}]", "fstp qword ptr [{b}]", "fnstcw [{c}]",
                 a = in(reg) &mut pi, b = in(reg) &mut one, c = in(reg) &mut cw_after, options(nostack))
        };
        check_eq!(pi.to_bits(), core::f64::consts::PI.to_bits(), "ST(0) = pi (its double truncates to the nearest one)");
        check_eq!(one.to_bits(), 1f64.to_bits(), "ST(1) = 1");
        check_eq!(cw_after, cw, "FPU control word");
    }
}

test_case! {
    /// The same at CPL3, where x87 instructions run natively.
    name = "state::restore_x87::user64", mode = User64, path = Hw, migrate = Restore;
    entry = restore_x87
}

/// XMM0-15 and MXCSR hold what `hv_regs_across_checkpoint` loaded.
fn check_sse(out: &RegsOut) {
    for (i, x) in out.xmm.iter().enumerate() {
        let i = i as u64;
        check_eq!(x[0], 0x0123_4567_89ab_cdef + i * 0x1111, "xmm{} low", i);
        check_eq!(x[1], 0xfedc_ba98_7654_3210 - i * 0x2222, "xmm{} high", i);
    }
    check_eq!(out.mxcsr & 0xffff, 0x7f80, "MXCSR");
}

extern "C" fn sse_at_cpl3(_: u64) {
    regs_across_checkpoint(21, true);
}

test_case! {
    /// The same check with the SSE instructions run at CPL3 (natively on every backend),
    /// after the case turned SSE on at CPL0: the checkpoint happens at CPL3.
    name = "state::restore_sse::cpl3", mode = Long64, path = Hw, migrate = Restore;
    fn restore_sse_cpl3() {
        // SAFETY: as in restore_sse.
        unsafe { asm!("mov {t}, cr4", "or {t}, 0x600", "mov cr4, {t}", t = out(reg) _, options(nomem, nostack)) };
        check_no_exception!(hvprobe_rt::user::call_at_cpl3(sse_at_cpl3, 0));
        // SAFETY: the routine has returned; nothing writes hv_rs_out any more.
        let out = unsafe { &hv_rs_out };
        check_sse(out);
    }
}

/// MSRs a guest kernel sets once and relies on forever, with values it might choose.
const SAVED_MSRS: [(u32, u64); 9] = [
    (msr::IA32_KERNEL_GSBASE, 0xffff_8000_1234_5000),
    (msr::IA32_STAR, 0x0023_0010_0000_0000),
    (msr::IA32_LSTAR, 0xffff_ffff_8100_0000),
    (msr::IA32_CSTAR, 0xffff_ffff_8100_1000),
    (msr::IA32_FMASK, 0x4700),
    (msr::IA32_SYSENTER_CS, 0x10),
    // Bits 63:32 clear: AMD CPUs keep SYSENTER_ESP/EIP as 32 bits (APM Vol. 2 6.1.1,
    // SYSENTER and SYSEXIT MSRs), Intel's as 64; these values read back on both vendors.
    (msr::IA32_SYSENTER_ESP, 0x8000_8000),
    (msr::IA32_SYSENTER_EIP, 0x8100_2000),
    (msr::IA32_PAT, 0x0007_0406_0007_0506),
];

test_case! {
    /// System MSRs written before a save read back the same after the restore: each is in
    /// KVM_GET_MSR_INDEX_LIST, which a VMM saves (api.rst 4.3, 4.18).
    name = "state::restore_msrs::long64", mode = Long64, path = Full, migrate = Restore;
    fn restore_msrs() {
        for (m, v) in SAVED_MSRS {
            // SAFETY: valid values for MSRs nothing in the runtime uses.
            unsafe { cpu::wrmsr(m, v) };
        }
        checkpoint(5);
        for (m, v) in SAVED_MSRS {
            // SAFETY: reading MSRs just written.
            check_eq!(unsafe { cpu::rdmsr(m) }, v, "MSR {:#x}", m);
        }
    }
}

fn read_cr8() -> u64 {
    let v: u64;
    // SAFETY: reading CR8 has no side effects at CPL0.
    unsafe { asm!("mov {}, cr8", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

test_case! {
    /// CR0, CR3, CR4, CR8 and EFER survive a save and restore (KVM_GET_SREGS).
    name = "state::restore_control_regs::long64", mode = Long64, path = Hw, requires = IRQCHIP, migrate = Restore;
    fn restore_control_regs() {
        // SAFETY: CR0.AM and EFER.NXE change nothing the runtime relies on; CR8 = 3 masks
        // interrupt classes no test raises.
        unsafe {
            cpu::write_cr0(cpu::read_cr0() | 1 << 18);
            cpu::wrmsr(msr::IA32_EFER, cpu::rdmsr(msr::IA32_EFER) | 1 << 11);
            asm!("mov cr8, {}", in(reg) 3u64, options(nomem, nostack, preserves_flags));
        }
        // SAFETY: reading EFER has no side effects.
        let before = (cpu::read_cr0(), cpu::read_cr3(), cpu::read_cr4(), read_cr8(), unsafe { cpu::rdmsr(msr::IA32_EFER) });
        checkpoint(6);
        // SAFETY: as above.
        let after = (cpu::read_cr0(), cpu::read_cr3(), cpu::read_cr4(), read_cr8(), unsafe { cpu::rdmsr(msr::IA32_EFER) });
        check_eq!(after.0, before.0, "CR0");
        check_eq!(after.1, before.1, "CR3");
        check_eq!(after.2, before.2, "CR4");
        check_eq!(after.3, 3, "CR8");
        check_eq!(after.4, before.4, "EFER");
    }
}

test_case! {
    /// DR0-DR3 and DR7 survive a save and restore (KVM_GET_DEBUGREGS, api.rst 4.33). The
    /// breakpoints watch addresses nothing touches.
    name = "state::restore_debug_regs::long64", mode = Long64, path = Hw, migrate = Restore;
    fn restore_debug_regs() {
        let addrs = [0x3f_f000u64, 0x3f_f100, 0x3f_f200, 0x3f_f300];
        let dr7: u64 = 0x0000_0455; // L0, L1, L2 enabled (execute), GE
        // SAFETY: breakpoints on addresses no code executes.
        unsafe {
            asm!("mov dr0, {}", "mov dr1, {}", "mov dr2, {}", "mov dr3, {}", "mov dr7, {}",
                 in(reg) addrs[0], in(reg) addrs[1], in(reg) addrs[2], in(reg) addrs[3], in(reg) dr7, options(nostack))
        };
        checkpoint(7);
        let (d0, d1, d2, d3, d7): (u64, u64, u64, u64, u64);
        // SAFETY: reading debug registers at CPL0.
        unsafe {
            asm!("mov {}, dr0", "mov {}, dr1", "mov {}, dr2", "mov {}, dr3", "mov {}, dr7",
                 out(reg) d0, out(reg) d1, out(reg) d2, out(reg) d3, out(reg) d7, options(nostack))
        };
        // SAFETY: clear DR7 so no breakpoint outlives the test.
        unsafe { asm!("mov dr7, {}", in(reg) 0x400u64, options(nostack)) };
        check_eq!([d0, d1, d2, d3], addrs, "DR0-DR3");
        check_eq!(d7 & 0xffff_00ff, dr7 & 0xffff_00ff, "DR7 enables");
    }
}

test_case! {
    /// FS and GS bases, GDTR, IDTR and TR survive a save and restore.
    name = "state::restore_segments::long64", mode = Long64, path = Hw, migrate = Restore;
    fn restore_segments() {
        // SAFETY: the runtime does not use FS or GS.
        unsafe {
            cpu::wrmsr(msr::IA32_FS_BASE, 0x1234_5000);
            cpu::wrmsr(msr::IA32_GS_BASE, 0x2345_6000);
        }
        let tables = || {
            let mut gdt = [0u8; 10];
            let mut idt = [0u8; 10];
            let tr: u16;
            // SAFETY: SGDT/SIDT/STR only store.
            unsafe {
                asm!("sgdt [{}]", "sidt [{}]", "str {:x}", in(reg) &mut gdt, in(reg) &mut idt, out(reg) tr, options(nostack))
            };
            (gdt, idt, tr)
        };
        let before = tables();
        checkpoint(8);
        // SAFETY: reading the MSRs just written.
        let (fs, gs) = unsafe { (cpu::rdmsr(msr::IA32_FS_BASE), cpu::rdmsr(msr::IA32_GS_BASE)) };
        check_eq!(fs, 0x1234_5000, "FS base");
        check_eq!(gs, 0x2345_6000, "GS base");
        let after = tables();
        check!(after.0 == before.0, "GDTR {:x?} became {:x?}", before.0, after.0);
        check!(after.1 == before.1, "IDTR {:x?} became {:x?}", before.1, after.1);
        check_eq!(after.2, before.2, "TR");
    }
}

test_case! {
    /// The TSC does not go backwards across a save and restore, and does not jump more
    /// than the restore took (KVM restores IA32_TSC from the saved MSRs).
    name = "state::restore_tsc::long64", mode = Long64, path = Hw, migrate = Restore;
    fn restore_tsc() {
        let before = cpu::rdtsc();
        checkpoint(9);
        let after = cpu::rdtsc();
        metric("tsc_across_restore", "cycles", after.wrapping_sub(before));
        check!(after > before, "TSC went backwards: {:#x} then {:#x}", before, after);
        check!(after - before < TEN_SECONDS, "TSC jumped by {:#x} across the restore", after - before);
    }
}

test_case! {
    /// LAPIC registers survive a save and restore (KVM_GET_LAPIC, api.rst 4.57): TPR, LDR,
    /// DFR, the LVT timer and the divide configuration.
    name = "state::restore_lapic_regs::xapic", mode = Long64, path = Full, requires = IRQCHIP, migrate = Restore;
    fn restore_lapic_regs() {
        let apic = Apic::XApic.enable();
        let regs = [
            (reg::TPR, 0x20),
            (reg::LDR, 0x0400_0000),
            (reg::LVT_TIMER, 0x0003_0045), // periodic, masked, vector 0x45
            (reg::TIMER_DIVIDE, 0b1010),
        ];
        for (r, v) in regs {
            apic.write(r, v);
        }
        checkpoint(10);
        for (r, v) in regs {
            check_eq!(apic.read(r), v, "LAPIC register {:#x}", r);
        }
        check_eq!(apic.read(reg::SVR) & 0x1ff, 0x1ff, "SVR: software-enabled, spurious vector 0xff");
    }
}

const TICK_VECTOR: u8 = 0x44;
static TICKS: AtomicU64 = AtomicU64::new(0);

fn tick(_: &mut Frame) {
    TICKS.fetch_add(1, SeqCst);
    Apic::XApic.eoi();
}

/// Waits with interrupts on until TICKS reaches `n`, at most `spins` halts.
fn wait_ticks(n: u64, spins: u64) -> bool {
    for _ in 0..spins {
        if TICKS.load(SeqCst) >= n {
            return true;
        }
        cpu::sti_hlt();
    }
    TICKS.load(SeqCst) >= n
}

test_case! {
    /// A periodic LAPIC timer keeps firing after a save and restore: its state (initial
    /// count, mode, the countdown) travels with KVM_GET_LAPIC.
    name = "state::restore_lapic_timer::xapic", mode = Long64, path = Full, requires = IRQCHIP, migrate = Restore;
    fn restore_lapic_timer() {
        set_handler(TICK_VECTOR, tick);
        let apic = Apic::XApic.enable();
        apic.write(reg::TIMER_DIVIDE, 0b1011);
        apic.write(reg::LVT_TIMER, 1 << 17 | TICK_VECTOR as u32);
        apic.write(reg::TIMER_INITIAL, 200_000);
        check!(wait_ticks(2, 100_000), "the timer did not tick before the checkpoint");
        checkpoint(11);
        let at = TICKS.load(SeqCst);
        check!(wait_ticks(at + 3, 100_000), "the timer stopped after the restore ({} ticks)", TICKS.load(SeqCst));
        apic.write(reg::LVT_TIMER, 1 << 16);
    }
}

const PENDING_VECTOR: u8 = 0x47;
static PENDING_TAKEN: AtomicU64 = AtomicU64::new(0);

fn pending_taken(_: &mut Frame) {
    PENDING_TAKEN.fetch_add(1, SeqCst);
    Apic::XApic.eoi();
}

test_case! {
    /// An interrupt pending in the IRR at the save is delivered exactly once after the
    /// restore: the self-IPI arrives with IF = 0, the checkpoint happens, then STI.
    name = "state::restore_pending_irq::xapic", mode = Long64, path = Full, requires = IRQCHIP, migrate = Restore;
    fn restore_pending_irq() {
        set_handler(PENDING_VECTOR, pending_taken);
        let apic = Apic::XApic.enable();
        apic.write(reg::ICR_LOW, 1 << 18 | PENDING_VECTOR as u32);
        check!(apic.vector_bit(reg::IRR, PENDING_VECTOR), "the self-IPI is not pending before the save");
        checkpoint(12);
        check_eq!(PENDING_TAKEN.load(SeqCst), 0, "delivered with IF = 0");
        check!(apic.vector_bit(reg::IRR, PENDING_VECTOR), "the pending interrupt's IRR bit was lost in the restore");
        // HLT with interrupts enabled: the pending interrupt ends it at once. A one-shot
        // timer on another vector is the backstop, so a lost interrupt fails the check
        // instead of halting forever. (Delivery right after STI without an exit is
        // irq::sti_window_pending's subject.)
        set_handler(TICK_VECTOR, tick);
        apic.hlt_with_backstop(TICK_VECTOR, 50_000_000);
        check_eq!(PENDING_TAKEN.load(SeqCst), 1, "deliveries of the pending interrupt after the restore");
        check_eq!(apic.vector_bit(reg::IRR, PENDING_VECTOR), false, "IRR bit after delivery");
    }
}

static TWICE: AtomicU64 = AtomicU64::new(0);

test_case! {
    /// Two checkpoints in a row, each restored into a fresh VM: the second restore starts
    /// from what the first one produced.
    name = "state::restore_twice::long64", mode = Long64, path = Hw, migrate = Restore;
    fn restore_twice() {
        let len = pattern_len();
        fill_pattern(0x7717, len);
        TWICE.store(1, SeqCst);
        checkpoint(13);
        check_eq!(TWICE.fetch_add(1, SeqCst), 1, "state after the first restore");
        checkpoint(14);
        check_eq!(TWICE.load(SeqCst), 2, "state after the second restore");
        check_pattern(0x7717, len);
    }
}

const SMP_VECTOR: u8 = 0x48;
static SMP_TAKEN: AtomicU64 = AtomicU64::new(0);

fn smp_taken(_: &mut Frame) {
    SMP_TAKEN.fetch_add(1, SeqCst);
    Apic::XApic.eoi();
}

test_case! {
    /// A two-vCPU guest survives a save and restore: vCPU 1, idle in HLT with its APIC
    /// enabled at the save, still takes an IPI after the restore (its MP state and LAPIC
    /// went across).
    name = "state::restore_smp::xapic", mode = Long64, path = Full, requires = IRQCHIP, vcpus = 2, migrate = Restore;
    fn restore_smp() {
        set_handler(SMP_VECTOR, smp_taken);
        let apic = Apic::XApic.enable();
        check!(hvprobe_rt::smp::wait_online(1, 2_000_000), "vCPU 1 did not come online");
        checkpoint(15);
        apic.write(reg::ICR_HIGH, 1 << 24);
        apic.write(reg::ICR_LOW, SMP_VECTOR as u32);
        let mut spins = 0u64;
        while SMP_TAKEN.load(SeqCst) == 0 && spins < 2_000_000 {
            spins += 1;
            core::hint::spin_loop();
        }
        check_eq!(SMP_TAKEN.load(SeqCst), 1, "IPIs vCPU 1 took after the restore");
    }
}

test_case! {
    /// The IOAPIC's redirection table survives a save and restore (KVM_GET_IRQCHIP with
    /// KVM_IRQCHIP_IOAPIC, api.rst 4.26).
    name = "state::restore_ioapic::long64", mode = Long64, path = Full, requires = IRQCHIP, migrate = Restore;
    fn restore_ioapic() {
        // Entry 10: vector 0x49, level-triggered, masked; destination APIC 0.
        let (low, high) = (0x0001_8049u32, 0u32);
        ioapic::write(0x10 + 2 * 10, low);
        ioapic::write(0x11 + 2 * 10, high);
        checkpoint(16);
        check_eq!(ioapic::read(0x10 + 2 * 10) & 0x1_ffff, low & 0x1_ffff, "redirection entry 10, low");
        check_eq!(ioapic::read(0x11 + 2 * 10), high, "redirection entry 10, high");
    }
}

test_case! {
    /// The 8259 PICs' interrupt masks survive a save and restore (KVM_GET_IRQCHIP with
    /// the master and slave PIC).
    name = "state::restore_pic::long64", mode = Long64, path = Full, requires = IRQCHIP, migrate = Restore;
    fn restore_pic() {
        // SAFETY: the PICs' IMRs; every line stays masked or unused.
        unsafe {
            x86::io::outb(0x21, 0xa5);
            x86::io::outb(0xa1, 0x5a);
        }
        checkpoint(17);
        // SAFETY: reading the IMRs.
        let (master, slave) = unsafe { (x86::io::inb(0x21), x86::io::inb(0xa1)) };
        check_eq!(master, 0xa5, "master PIC IMR");
        check_eq!(slave, 0x5a, "slave PIC IMR");
    }
}

test_case! {
    /// The userspace test devices' registers survive a save and restore: the VMM's device
    /// state is part of the snapshot.
    name = "state::restore_devices::long64", mode = Long64, path = Full, migrate = Restore;
    fn restore_devices() {
        // SAFETY: the test devices only hold their registers.
        unsafe {
            (MMIO_TEST_BASE as *mut u64).write_volatile(0x0bad_cafe_f00d_d00d);
            x86::io::outl(TEST_IO, 0x1357_9bdf);
        }
        checkpoint(18);
        // SAFETY: as above.
        unsafe {
            check_eq!((MMIO_TEST_BASE as *const u64).read_volatile(), 0x0bad_cafe_f00d_d00d, "MMIO device");
            check_eq!(x86::io::inl(TEST_IO), 0x1357_9bdf, "port device");
        }
    }
}

test_case! {
    /// kvmclock does not go backwards across a save and restore (KVM_GET_CLOCK /
    /// KVM_SET_CLOCK, api.rst 4.62-4.63).
    name = "state::restore_kvmclock::long64", mode = Long64, path = Para, requires = KVM_PV, migrate = Restore;
    fn restore_kvmclock() {
        kvmclock::enable();
        let before = kvmclock::ns();
        checkpoint(19);
        let after = kvmclock::ns();
        metric("kvmclock_across_restore", "ns", after.wrapping_sub(before));
        check!(after >= before, "kvmclock went backwards: {} ns then {} ns", before, after);
        check!(after - before < 10_000_000_000, "kvmclock jumped {} ns across the restore", after - before);
    }
}

test_case! {
    /// A snapshot written to a file and restored in another process continues: memory,
    /// the TSC and a pending count all as they were (the move to another server).
    name = "state::cross_process::long64", mode = Long64, path = Hw, migrate = CrossProcess;
    fn cross_process() {
        let len = pattern_len();
        fill_pattern(0xc0ffee, len);
        TWICE.store(41, SeqCst);
        let before = cpu::rdtsc();
        checkpoint(20);
        check!(cpu::rdtsc() > before, "TSC went backwards across the move");
        check_eq!(TWICE.load(SeqCst), 41, "a counter in memory");
        check_pattern(0xc0ffee, len);
    }
}

test_case! {
    /// The same from CPL3.
    name = "state::cross_process::user64", mode = User64, path = Hw, migrate = CrossProcess;
    entry = cross_process
}

/// The last value written to each page of the working set, kept in ordinary guest memory
/// so that it migrates with everything else.
static EXPECTED: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];
/// Whether the host has written its "done" (`abi::layout::HOST_DONE_FLAG`): the live
/// migration is over, or every random pause was taken.
fn host_done() -> bool {
    // SAFETY: the flag page is RAM in the state region.
    unsafe { (hvprobe_rt::abi::layout::HOST_DONE_FLAG as *const u64).read_volatile() != 0 }
}

/// Writes page after page of a 64-page working set, checking each page still holds what
/// was last written there, until `done()`; then checks them all. Returns the writes.
fn churn(done: impl Fn(u64) -> bool) -> u64 {
    let mut n = 0u64;
    let start = cpu::rdtsc();
    let mut last_tsc = start;
    loop {
        let page = n % 64;
        let addr = STATE_REGION + page * PAGE + (n / 64 % 512) * 8;
        let slot = STATE_REGION + page * PAGE;
        let want = EXPECTED[page as usize].load(SeqCst);
        // SAFETY: the working set is in the state region.
        let got = unsafe { (slot as *const u64).read_volatile() };
        check_eq!(got, want, "page {:#x} lost a write", slot);
        let v = xorshift(n + 1);
        // SAFETY: as above.
        unsafe {
            (slot as *mut u64).write_volatile(v);
            (addr as *mut u64).write_volatile(v);
        }
        EXPECTED[page as usize].store(v, SeqCst);
        let now = cpu::rdtsc();
        check!(now >= last_tsc, "TSC went backwards: {:#x} then {:#x}", last_tsc, now);
        last_tsc = now;
        n += 1;
        if done(n) {
            break;
        }
        check!(now - start < 3 * TEN_SECONDS, "the host never finished (after {} writes)", n);
    }
    for page in 0..64 {
        // SAFETY: as above.
        let got = unsafe { ((STATE_REGION + page * PAGE) as *const u64).read_volatile() };
        check_eq!(got, EXPECTED[page as usize].load(SeqCst), "page {} after the migration", page);
    }
    n
}

test_case! {
    /// Live migration with dirty logging: the guest writes its working set throughout the
    /// pre-copy rounds, the stop-and-copy and after; every page must hold its last write
    /// in the destination. The host reports rounds, pages per round and downtime.
    name = "state::live_migration::long64", mode = Long64, path = Hw, migrate = Live;
    fn live_migration() {
        let writes = churn(|n| n % 64 == 0 && host_done());
        metric("writes", "count", writes);
    }
}

test_case! {
    /// The same at CPL3, where the guest's writes run natively and dirty pages faster.
    name = "state::live_migration::user64", mode = User64, path = Hw, migrate = Live;
    entry = live_migration
}

test_case! {
    /// Saves at points the guest does not choose: the host pauses it at random times
    /// (seeded), restores each save into a fresh VM and lets it go on; the guest checks its
    /// working set and the TSC throughout.
    name = "state::random_pauses::long64", mode = Long64, path = Hw, migrate = RandomPauses(3);
    fn random_pauses() {
        // Until the host has taken every pause, however fast this machine runs the loop.
        let writes = churn(|n| n % 64 == 0 && host_done());
        metric("writes", "count", writes);
    }
}

test_case! {
    /// The same at CPL3.
    name = "state::random_pauses::user64", mode = User64, path = Hw, migrate = RandomPauses(3);
    entry = random_pauses
}

/// Writes one u64 into each of `pages` (page indexes in the state region).
fn touch(pages: &[u64]) {
    for p in pages {
        // SAFETY: the state region is RAM no other code uses.
        unsafe { ((STATE_REGION + p * PAGE + 8) as *mut u64).write_volatile(*p) };
    }
}

const REGION_END: u64 = STATE_REGION + STATE_REGION_SIZE;

test_case! {
    /// The dirty log of the state region is exactly the pages the guest wrote
    /// (KVM_GET_DIRTY_LOG, api.rst 4.8).
    name = "state::dirty_log_exact::long64", mode = Long64, path = Hw;
    fn dirty_log_exact() {
        if let Err(e) = dirty_start(false) {
            skip!("the host does not log dirty pages ({e:?})");
        }
        let written = [0u64, 3, 7, 100, 200, 254];
        touch(&written);
        check_eq!(dirty_count(STATE_REGION, REGION_END), Ok(written.len() as u64), "dirty pages in the region");
        for p in written {
            check_eq!(dirty_test(STATE_REGION + p * PAGE), Ok(true), "page {} written, not dirty", p);
        }
        for p in [1u64, 2, 8, 99, 101, 253] {
            check_eq!(dirty_test(STATE_REGION + p * PAGE), Ok(false), "page {} not written, dirty", p);
        }
        // A read is not a write.
        // SAFETY: reading RAM in the region.
        let _ = unsafe { ((STATE_REGION + 50 * PAGE) as *const u64).read_volatile() };
        check_eq!(dirty_test(STATE_REGION + 50 * PAGE), Ok(false), "a page only read is dirty");
    }
}

test_case! {
    /// The same with the writes made at CPL3.
    name = "state::dirty_log_exact::user64", mode = User64, path = Hw;
    entry = dirty_log_exact
}

test_case! {
    /// The dirty ring reports exactly the pages written, like the bitmap: the harness
    /// collects the rings for the dirty-log service when the VM has them.
    name = "state::dirty_ring_exact::long64", mode = Long64, path = Hw, requires = DIRTY_RING;
    entry = dirty_log_exact
}

test_case! {
    /// KVM_CLEAR_DIRTY_LOG in manual-protect mode (api.rst 4.117, 7.18): cleared pages
    /// leave the log, pages written again after the clear come back, others stay clean.
    name = "state::dirty_log_clear::long64", mode = Long64, path = Hw;
    fn dirty_log_clear() {
        if let Err(e) = dirty_start(true) {
            skip!("the host has no KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 ({e:?})");
        }
        touch(&[0, 64, 65, 128]);
        check_eq!(dirty_count(STATE_REGION, REGION_END), Ok(4), "dirty after the writes");
        check_eq!(dirty_clear(STATE_REGION + 64 * PAGE, STATE_REGION + 128 * PAGE), Ok(()), "clear pages 64-127");
        check_eq!(dirty_count(STATE_REGION, REGION_END), Ok(2), "dirty after clearing 64 and 65");
        touch(&[65]);
        check_eq!(dirty_test(STATE_REGION + 65 * PAGE), Ok(true), "page 65, written again after the clear");
        check_eq!(dirty_test(STATE_REGION + 64 * PAGE), Ok(false), "page 64, cleared and not written again");
        check_eq!(dirty_count(STATE_REGION, REGION_END), Ok(3), "dirty at the end");
    }
}

test_case! {
    /// Pages the hypervisor writes for the guest are dirty too: the kvmclock page, which
    /// the guest never writes, is in the log once kvmclock is on.
    name = "state::dirty_log_kvmclock::long64", mode = Long64, path = Para, requires = KVM_PV;
    fn dirty_log_kvmclock() {
        if let Err(e) = dirty_start(false) {
            skip!("the host does not log dirty pages ({e:?})");
        }
        kvmclock::enable();
        let _ = kvmclock::ns();
        check_eq!(dirty_test(kvmclock::PAGE), Ok(true), "the kvmclock page KVM wrote");
        check_eq!(dirty_count(STATE_REGION, REGION_END), Ok(1), "dirty pages in the region: only the kvmclock page");
    }
}

test_case! {
    /// An access outside every memory slot and device exits to this VM's own VMM, which
    /// answers as an absent device: a read returns all ones, a write changes nothing
    /// (api.rst KVM_EXIT_MMIO). No other VM's or the host's memory is reachable.
    name = "state::outside_memory::long64", mode = Long64, path = Full;
    fn outside_memory() {
        for addr in [0x8000_0000u64, 0xbfff_f000, layout_end()] {
            // SAFETY: identity-mapped guest-physical space with no memory behind it.
            unsafe {
                (addr as *mut u64).write_volatile(0x1234_5678);
                check_eq!((addr as *const u64).read_volatile(), u64::MAX, "read at {:#x}", addr);
            }
        }
    }
}

/// The first address past guest RAM.
fn layout_end() -> u64 {
    hvprobe_rt::abi::layout::RAM_SIZE
}

test_case! {
    /// The same from CPL3.
    name = "state::outside_memory::user64", mode = User64, path = Full;
    entry = outside_memory
}

test_case! {
    /// Writes a pattern seeded by the run's seed over part of the state region, waits, and
    /// checks it: run in many VMs at once with different seeds (suites/tests/harness.rs),
    /// each must see only its own pattern.
    name = "state::isolation_pattern::long64", mode = Long64, path = Hw;
    fn isolation_pattern() {
        let seed = hvprobe_rt::proto::service(service::SEED, [0; 4]).unwrap_or(1);
        let sum = fill_pattern(seed, 32 * 1024);
        metric("pattern_checksum", "value", sum);
        let start = cpu::rdtsc();
        while cpu::rdtsc() - start < 20_000_000 {
            core::hint::spin_loop();
        }
        check_pattern(seed, 32 * 1024);
    }
}
