//! The `pv` area's contracts and features: every hypercall's privilege check and register contract,
//! the hypercall-instruction quirk, kvmclock against KVM_GET_CLOCK/KVM_SET_CLOCK, and
//! the features CPUID 0x40000001 advertises, each tested where advertised and skipped
//! with the reason where not (Documentation/virt/kvm/x86/cpuid.rst, msr.rst).

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use hvprobe_rt::abi::{self, proto::service, requires};
use hvprobe_rt::exception::{self, armed_rip};
use hvprobe_rt::proto::service as call;
use hvprobe_rt::user::call_at_cpl3;
use hvprobe_rt::{catch, check, check_eq, check_exception, check_no_exception, cpu, kvmclock, metric, skip, test_case};

/// -KVM_EPERM (include/uapi/linux/kvm_para.h).
const KVM_EPERM: u64 = -1i64 as u64;
const KVM_HC_KICK_CPU: u64 = 5;
const KVM_HC_SEND_IPI: u64 = 10;
const KVM_HC_SCHED_YIELD: u64 = 11;
const KVM_HC_MAP_GPA_RANGE: u64 = 12;

/// CPUID 0x40000001 EAX bits (cpuid.rst).
mod feature {
    pub const CLOCKSOURCE: u32 = 1 << 0;
    pub const ASYNC_PF: u32 = 1 << 4;
    pub const STEAL_TIME: u32 = 1 << 5;
    pub const PV_EOI: u32 = 1 << 6;
    pub const PV_UNHALT: u32 = 1 << 7;
    pub const POLL_CONTROL: u32 = 1 << 12;
    pub const PV_SCHED_YIELD: u32 = 1 << 13;
    pub const ASYNC_PF_INT: u32 = 1 << 14;
    pub const MSI_EXT_DEST_ID: u32 = 1 << 15;
    pub const MIGRATION_CONTROL: u32 = 1 << 17;
    /// Bits 0-17 and 24 are defined; 2 (MMU_OP) is deprecated.
    pub const DEFINED: u32 = 0x3_ffff | 1 << 24;
}

fn features() -> u32 {
    cpu::cpuid(0x4000_0001, 0).eax
}

/// Skips the case unless the host advertises `bit`.
fn require(bit: u32, name: &str) {
    if features() & bit == 0 {
        skip!("the host does not advertise KVM_FEATURE_{} (CPUID 0x40000001 EAX {:#x})", name, features());
    }
}

test_case! {
    /// Every bit CPUID 0x40000001 EAX sets is a feature cpuid.rst defines, and the
    /// signature leaf names it as the maximum KVM leaf or above (cpuid.rst).
    name = "pv::features_defined::long64", mode = Long64, path = Para, requires = requires::KVM_PV;
    fn features_defined() {
        let f = features();
        metric("features", "bits", f.into());
        check_eq!(f & !feature::DEFINED, 0, "bits of 0x40000001 EAX that cpuid.rst does not define (EAX {:#x})", f);
        check!(cpu::cpuid(0x4000_0000, 0).eax >= 0x4000_0001, "0x40000000 EAX {:#x}", cpu::cpuid(0x4000_0000, 0).eax);
    }
}

/// The vCPU's `hypercalls` statistic (KVM_STAT service), or None where the host has none.
fn hypercalls_handled() -> Option<u64> {
    call(service::KVM_STAT, [abi::kvm_stat::HYPERCALLS, 0, 0, 0]).ok()
}

/// Makes hypercall `nr` and returns its RAX, checking that KVM handled exactly one
/// hypercall meanwhile (its `hypercalls` statistic), where the host has the statistic:
/// a -KVM_EPERM from CPL3 must come from KVM's hypercall handler, not from anywhere else.
pub fn counted_hypercall(nr: u64, args: [u64; 4]) -> u64 {
    let before = hypercalls_handled();
    let rax = cpu::kvm_hypercall(nr, args);
    if let (Some(before), Some(after)) = (before, hypercalls_handled()) {
        check_eq!(after.wrapping_sub(before), 1, "hypercalls KVM counted (its hypercalls statistic)");
    }
    rax
}

test_case! {
    /// KVM_HC_KICK_CPU from CPL3 returns -KVM_EPERM without waking anything
    /// (arch/x86/kvm/x86.c, kvm_emulate_hypercall: the CPL check comes first).
    name = "pv::hypercall_kick_cpu::user64", mode = User64, path = Para, requires = requires::KVM_PV,
        timeout_ms = 1000;
    fn hypercall_kick_cpu_user() {
        check_eq!(counted_hypercall(KVM_HC_KICK_CPU, [0, 0, 0, 0]), KVM_EPERM);
    }
}

test_case! {
    /// KVM_HC_SEND_IPI from CPL3 returns -KVM_EPERM and sends nothing.
    name = "pv::hypercall_send_ipi::user64", mode = User64, path = Para, requires = requires::KVM_PV,
        timeout_ms = 1000;
    fn hypercall_send_ipi_user() {
        check_eq!(counted_hypercall(KVM_HC_SEND_IPI, [1, 0, 0, 0x40]), KVM_EPERM);
    }
}

test_case! {
    /// KVM_HC_SCHED_YIELD from CPL3 returns -KVM_EPERM.
    name = "pv::hypercall_sched_yield::user64", mode = User64, path = Para, requires = requires::KVM_PV,
        timeout_ms = 1000;
    fn hypercall_sched_yield_user() {
        check_eq!(counted_hypercall(KVM_HC_SCHED_YIELD, [0; 4]), KVM_EPERM);
    }
}

test_case! {
    /// KVM_HC_MAP_GPA_RANGE from CPL3 returns -KVM_EPERM rather than exiting to userspace.
    name = "pv::hypercall_map_gpa_range::user64", mode = User64, path = Para, requires = requires::KVM_PV,
        timeout_ms = 1000;
    fn hypercall_map_gpa_range_user() {
        check_eq!(counted_hypercall(KVM_HC_MAP_GPA_RANGE, [0x10_0000, 1, 0, 0]), KVM_EPERM);
    }
}

test_case! {
    /// KVM_HC_SCHED_YIELD at CPL0 to a vCPU that does not exist returns 0 (hypercalls.rst
    /// item 11: a hint; an absent target is ignored). Skipped unless advertised.
    name = "pv::hypercall_sched_yield::long64", mode = Long64, path = Para, requires = requires::KVM_PV,
        timeout_ms = 1000;
    fn hypercall_sched_yield() {
        require(feature::PV_SCHED_YIELD, "PV_SCHED_YIELD");
        check_eq!(cpu::kvm_hypercall(KVM_HC_SCHED_YIELD, [7, 0, 0, 0]), 0);
    }
}

test_case! {
    /// KVM_HC_KICK_CPU at CPL0 for an APIC ID no vCPU has returns 0 and does nothing
    /// (hypercalls.rst item 5). Skipped unless PV_UNHALT is advertised.
    name = "pv::hypercall_kick_cpu::long64", mode = Long64, path = Para, requires = requires::KVM_PV,
        timeout_ms = 1000;
    fn hypercall_kick_cpu() {
        require(feature::PV_UNHALT, "PV_UNHALT");
        check_eq!(cpu::kvm_hypercall(KVM_HC_KICK_CPU, [0, 7, 0, 0]), 0);
    }
}

test_case! {
    /// A hypercall changes RAX only: RBX, RCX, RDX, RSI, RDI, RBP and R8-R15 keep their
    /// values (hypercalls.rst: "No other registers will be clobbered"). From CPL3, where
    /// the call returns -KVM_EPERM.
    name = "pv::hypercall_preserves_registers::user64", mode = User64, path = Para, requires = requires::KVM_PV,
        timeout_ms = 1000;
    fn hypercall_preserves_registers() {
        let before: [u64; 12] = core::array::from_fn(|i| 0x1111_1111_1111_1111 * (i as u64 + 1));
        let mut after = [0u64; 12];
        let rax: u64;
        // SAFETY: loads 12 registers from `before`, makes the hypercall, stores them to
        // `after`; RBX and RBP are saved around it on the stack.
        unsafe {
            macro_rules! call_with {
                ($insn:literal) => {
                    asm!(
                        "push rbx", "push rbp", "push r12",
                        "mov rbx, [r12]", "mov rcx, [r12 + 8]", "mov rdx, [r12 + 16]", "mov rsi, [r12 + 24]",
                        "mov rdi, [r12 + 32]", "mov rbp, [r12 + 40]", "mov r8, [r12 + 48]", "mov r9, [r12 + 56]",
                        "mov r10, [r12 + 64]", "mov r11, [r12 + 72]", "mov r13, [r12 + 80]", "mov r14, [r12 + 88]",
                        "mov eax, 11",
                        $insn,
                        "pop r12",
                        "mov [r15], rbx", "mov [r15 + 8], rcx", "mov [r15 + 16], rdx", "mov [r15 + 24], rsi",
                        "mov [r15 + 32], rdi", "mov [r15 + 40], rbp", "mov [r15 + 48], r8", "mov [r15 + 56], r9",
                        "mov [r15 + 64], r10", "mov [r15 + 72], r11", "mov [r15 + 80], r13", "mov [r15 + 88], r14",
                        "pop rbp", "pop rbx",
                        in("r12") before.as_ptr(), in("r15") after.as_mut_ptr(), out("rax") rax,
                        out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _, out("r8") _, out("r9") _,
                        out("r10") _, out("r11") _, out("r13") _, out("r14") _,
                    )
                };
            }
            if cpu::is_amd() { call_with!("vmmcall") } else { call_with!("vmcall") }
        }
        check_eq!(rax, KVM_EPERM, "RAX");
        for (i, name) in ["rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r13", "r14"].iter().enumerate() {
            check_eq!(after[i], before[i], "{} after the hypercall", name);
        }
    }
}

/// A hypercall stub in writable RAM, so that a rewrite by the hypervisor is visible: the
/// instruction, then JMP R11 back to the caller. Reached by a jump, not a CALL, so that an
/// exception at the instruction finds the stack as `catch!` armed it.
static mut STUB: [u8; 6] = [0x0f, 0x01, 0xc1, 0x41, 0xff, 0xe3];

/// The hypercall instruction of the other vendor: VMCALL (0f 01 c1) on AMD, VMMCALL
/// (0f 01 d9) on Intel.
fn other_vendor_insn() -> [u8; 3] {
    if cpu::is_amd() { [0x0f, 0x01, 0xc1] } else { [0x0f, 0x01, 0xd9] }
}

/// The host vendor's hypercall instruction.
fn host_vendor_insn() -> [u8; 3] {
    if cpu::is_amd() { [0x0f, 0x01, 0xd9] } else { [0x0f, 0x01, 0xc1] }
}

fn stub_bytes() -> [u8; 3] {
    // SAFETY: reads the stub, which only this case writes.
    unsafe { [STUB[0], STUB[1], STUB[2]] }
}

/// Runs the stub at CPL0 with RAX = KVM_HC_VAPIC_POLL_IRQ: the exception it raised, if
/// any, and RAX after it.
fn run_stub_cpl0() -> (Option<exception::Exception>, u64) {
    const KVM_HC_VAPIC_POLL_IRQ: u64 = 1;
    let mut rax = KVM_HC_VAPIC_POLL_IRQ;
    let e = catch!(
        "lea r11, [rip + 9f]",
        "jmp {s}",
        s = in(reg) &raw const STUB,
        inout("rax") rax,
        out("r11") _
    );
    (e, rax)
}

test_case! {
    /// With KVM_X86_QUIRK_FIX_HYPERCALL_INSN on (the default), the other vendor's
    /// hypercall instruction at CPL0 is rewritten in guest memory to the host vendor's
    /// and carried out (api.rst 7.31 KVM_CAP_DISABLE_QUIRKS2: "KVM rewrites guest
    /// VMMCALL/VMCALL instructions to match the vendor's hypercall instruction"):
    /// KVM_HC_VAPIC_POLL_IRQ returns 0. At CPL3 neither api.rst nor the manuals define
    /// what the other vendor's instruction does (on AMD, KVM's emulator refuses VMCALL
    /// above CPL0 with #GP(0) before any rewrite), so this case runs at CPL0.
    name = "pv::hypercall_other_vendor::long64", mode = Long64, path = Para, requires = requires::KVM_PV,
        timeout_ms = 1000;
    fn hypercall_other_vendor() {
        let other = other_vendor_insn();
        // SAFETY: only this case uses the stub.
        unsafe { (&raw mut STUB).cast::<[u8; 3]>().write_volatile(other) };
        let (e, rax) = run_stub_cpl0();
        check_no_exception!(e);
        check_eq!(rax, 0, "RAX of KVM_HC_VAPIC_POLL_IRQ");
        let now = stub_bytes();
        metric("rewritten", "bool", (now != other).into());
        check_eq!(now, host_vendor_insn(), "the stub after the hypercall: rewritten to the host vendor's instruction");
    }
}

test_case! {
    /// With KVM_X86_QUIRK_FIX_HYPERCALL_INSN disabled, the other vendor's instruction at
    /// CPL0 raises #UD and is left as it is (api.rst 7.31 KVM_CAP_DISABLE_QUIRKS2:
    /// "Executing the incorrect hypercall instruction will generate a #UD within the
    /// guest").
    name = "pv::hypercall_quirk_off::long64", mode = Long64, path = Para, requires = requires::KVM_PV,
        timeout_ms = 1000, quirks_off = abi::quirks::FIX_HYPERCALL_INSN;
    fn hypercall_quirk_off() {
        let other = other_vendor_insn();
        // SAFETY: only this case uses the stub.
        unsafe { (&raw mut STUB).cast::<[u8; 3]>().write_volatile(other) };
        let e = check_exception!(run_stub_cpl0().0, exception::UD, None);
        check_eq!(e.rip, &raw const STUB as u64, "#UD at the instruction");
        check_eq!(stub_bytes(), other, "the instruction after the #UD");
    }
}

test_case! {
    /// Once kvmclock is on, KVM fills its structure (msr.rst, MSR_KVM_SYSTEM_TIME_NEW):
    /// an even, non-zero version, a timestamp not after the TSC now, a non-zero
    /// multiplier and a shift that keeps the scaled delta in 64 bits (-32..=32).
    name = "pv::kvmclock_structure::long64", mode = Long64, path = Para, requires = requires::KVM_PV;
    fn kvmclock_structure() {
        kvmclock::enable();
        let r = kvmclock::read();
        check!(r.version != 0, "version {}", r.version);
        check!(r.tsc_timestamp <= r.tsc, "tsc_timestamp {} is after the TSC {}", r.tsc_timestamp, r.tsc);
        check!(r.tsc_to_system_mul != 0, "tsc_to_system_mul is 0");
        check!((-32..=32).contains(&r.tsc_shift), "tsc_shift {}", r.tsc_shift);
        metric("flags", "bits", r.flags.into());
    }
}

test_case! {
    /// The legacy kvmclock MSR (MSR_KVM_SYSTEM_TIME, 0x12) works like the new one where
    /// KVM_FEATURE_CLOCKSOURCE is advertised (msr.rst): the structure fills in and the
    /// clock advances.
    name = "pv::kvmclock_legacy_msr::long64", mode = Long64, path = Para, requires = requires::KVM_PV;
    fn kvmclock_legacy_msr() {
        require(feature::CLOCKSOURCE, "CLOCKSOURCE");
        // SAFETY: kvmclock's page, enable bit 0, through the legacy MSR.
        unsafe { cpu::wrmsr(0x12, kvmclock::PAGE | 1) };
        let t0 = kvmclock::ns();
        let start = cpu::rdtsc();
        while cpu::rdtsc() - start < 1_000_000 {}
        check!(kvmclock::ns() > t0, "the clock did not advance over 1 M TSC cycles");
        check!(kvmclock::read().version != 0, "KVM did not fill the structure");
    }
}

test_case! {
    /// KVM_GET_CLOCK on the host reads the clock the guest reads: a host reading taken
    /// between two guest readings lies between them, within 100 us for the exits
    /// (api.rst 4.60 KVM_GET_CLOCK; msr.rst).
    name = "pv::kvmclock_get_clock::long64", mode = Long64, path = Para, requires = requires::KVM_PV;
    fn kvmclock_get_clock() {
        kvmclock::enable();
        let g0 = kvmclock::ns();
        let host = call(service::GET_CLOCK, [0; 4]).unwrap_or(0);
        let g1 = kvmclock::ns();
        metric("host_minus_guest", "ns", host.wrapping_sub(g0));
        check!(host + 100_000 >= g0 && host <= g1 + 100_000, "KVM_GET_CLOCK {} outside the guest's [{}, {}]", host, g0, g1);
    }
}

test_case! {
    /// KVM_SET_CLOCK moves kvmclock: after the host sets it one second ahead, the guest
    /// reads about one second more (api.rst 4.59 KVM_SET_CLOCK), and the structure's
    /// version has moved on.
    name = "pv::kvmclock_set_clock::long64", mode = Long64, path = Para, requires = requires::KVM_PV;
    fn kvmclock_set_clock() {
        kvmclock::enable();
        let v0 = kvmclock::read().version;
        let t0 = kvmclock::ns();
        check!(call(service::SET_CLOCK, [1_000_000_000, 0, 0, 0]).is_ok(), "KVM_SET_CLOCK failed");
        let jump = kvmclock::ns().wrapping_sub(t0);
        metric("jump", "ns", jump);
        check!((1_000_000_000..1_050_000_000).contains(&jump), "kvmclock moved {} ns across a 1 s KVM_SET_CLOCK", jump);
        check!(kvmclock::read().version != v0, "the version did not change");
    }
}

test_case! {
    /// With kvmclock off (enable bit 0 clear), KVM writes nothing to the page, even when
    /// the host sets the clock (msr.rst: bit 0 enables the clock).
    name = "pv::kvmclock_disabled::long64", mode = Long64, path = Para, requires = requires::KVM_PV;
    fn kvmclock_disabled() {
        kvmclock::enable();
        // SAFETY: turning kvmclock off, then clearing its page.
        unsafe {
            cpu::wrmsr(hvprobe_rt::cpu::kvm_msr::SYSTEM_TIME_NEW, kvmclock::PAGE);
            core::ptr::write_bytes(kvmclock::PAGE as *mut u8, 0, 32);
        }
        check!(call(service::SET_CLOCK, [1000, 0, 0, 0]).is_ok(), "KVM_SET_CLOCK failed");
        let _ = call(service::HOST_SLEEP, [1000, 0, 0, 0]);
        // SAFETY: the page's first word, the version.
        check_eq!(unsafe { (kvmclock::PAGE as *const u32).read_volatile() }, 0, "version after the clock was set");
    }
}

extern "C" fn kvmclock_reads(_: u64) {
    let mut last = kvmclock::ns();
    for i in 0..1000 {
        let now = kvmclock::ns();
        check!(now >= last, "kvmclock went backwards at read {}: {} then {}", i, last, now);
        last = now;
    }
}

test_case! {
    /// kvmclock read at CPL3, where PVM runs the reads natively, never goes backwards over
    /// 1,000 reads (msr.rst, the version protocol).
    name = "pv::kvmclock_monotonic::cpl3", mode = Long64, path = Para, requires = requires::KVM_PV;
    fn kvmclock_monotonic_cpl3() {
        kvmclock::enable();
        check_no_exception!(call_at_cpl3(kvmclock_reads, 0));
    }
}

use hvprobe_rt::cpu::kvm_msr::STEAL_TIME as MSR_KVM_STEAL_TIME;

/// struct kvm_steal_time (msr.rst): 64 bytes, 64-byte aligned.
#[repr(C, align(64))]
struct StealTime {
    steal: u64,
    version: u32,
    flags: u32,
    preempted: u8,
    pad: [u8; 51],
}

static mut STEAL: StealTime = StealTime { steal: 0, version: 0, flags: 0, preempted: 0, pad: [0; 51] };

test_case! {
    /// Steal time (MSR_KVM_STEAL_TIME, msr.rst): once on, KVM writes the structure at the
    /// next entry with an even version; `steal` never decreases across exits; `preempted`
    /// reads 0 while the vCPU runs; the MSR reads back as written.
    name = "pv::steal_time::long64", mode = Long64, path = Para, requires = requires::KVM_PV;
    fn steal_time() {
        require(feature::STEAL_TIME, "STEAL_TIME");
        let p = &raw mut STEAL;
        // SAFETY: the structure is this case's; bit 0 enables.
        unsafe { cpu::wrmsr(MSR_KVM_STEAL_TIME, p as u64 | 1) };
        // SAFETY: as above.
        check_eq!(unsafe { cpu::rdmsr(MSR_KVM_STEAL_TIME) }, p as u64 | 1, "the MSR");
        let mut last = 0;
        for i in 0..4 {
            // An exit to userspace and back: KVM updates steal time at the next entry.
            let _ = call(service::HOST_SLEEP, [1000, 0, 0, 0]);
            // SAFETY: KVM writes the structure; read volatile.
            let (version, steal, preempted) = unsafe {
                ((&raw const (*p).version).read_volatile(), (&raw const (*p).steal).read_volatile(), (&raw const (*p).preempted).read_volatile())
            };
            check!(version != 0 && version & 1 == 0, "version {} after exit {}", version, i);
            check!(steal >= last, "steal went from {} to {} ns", last, steal);
            check_eq!(preempted, 0, "preempted while running");
            last = steal;
        }
        metric("steal", "ns", last);
    }
}

test_case! {
    /// MSR_KVM_STEAL_TIME bits 1-5 are reserved: setting one raises #GP (msr.rst; x86.c
    /// KVM_STEAL_RESERVED_MASK).
    name = "pv::steal_time_reserved::long64", mode = Long64, path = Para, requires = requires::KVM_PV;
    fn steal_time_reserved() {
        require(feature::STEAL_TIME, "STEAL_TIME");
        let v = &raw mut STEAL as u64 | 1 | 1 << 3;
        let e = catch!("wrmsr", in("ecx") MSR_KVM_STEAL_TIME, in("eax") v as u32, in("edx") (v >> 32) as u32);
        check_exception!(e, exception::GP, Some(0));
    }
}

use hvprobe_rt::cpu::kvm_msr::{ASYNC_PF_EN as MSR_KVM_ASYNC_PF_EN, ASYNC_PF_INT as MSR_KVM_ASYNC_PF_INT};

/// struct kvm_vcpu_pv_apf_data: 64 bytes, 64-byte aligned.
#[repr(C, align(64))]
struct ApfData([u8; 64]);
static mut APF: ApfData = ApfData([0; 64]);

test_case! {
    /// The async-PF MSRs (msr.rst): MSR_KVM_ASYNC_PF_INT takes a vector and refuses bits
    /// 8-63 with #GP; MSR_KVM_ASYNC_PF_EN refuses its reserved bits 4-5 with #GP and
    /// reads back an enable with interrupt delivery (bit 3). No fault is provoked: an
    /// async PF needs host memory pressure.
    name = "pv::async_pf_msrs::long64", mode = Long64, path = Para, requires = requires::KVM_PV | requires::IRQCHIP;
    fn async_pf_msrs() {
        require(feature::ASYNC_PF, "ASYNC_PF");
        require(feature::ASYNC_PF_INT, "ASYNC_PF_INT");
        let e = catch!("wrmsr", in("ecx") MSR_KVM_ASYNC_PF_INT, in("eax") 0x1f0u32, in("edx") 0u32);
        check_exception!(e, exception::GP, Some(0));
        // SAFETY: vector 0xf0 for 'page ready'; nothing will be delivered here.
        unsafe { cpu::wrmsr(MSR_KVM_ASYNC_PF_INT, 0xf0) };
        // SAFETY: as above.
        check_eq!(unsafe { cpu::rdmsr(MSR_KVM_ASYNC_PF_INT) }, 0xf0, "MSR_KVM_ASYNC_PF_INT");
        let area = &raw mut APF as u64;
        let e = catch!("wrmsr", in("ecx") MSR_KVM_ASYNC_PF_EN, in("eax") (area | 1 | 1 << 3 | 1 << 4) as u32, in("edx") (area >> 32) as u32);
        check_exception!(e, exception::GP, Some(0));
        // SAFETY: enable with interrupt delivery, then off again.
        unsafe {
            cpu::wrmsr(MSR_KVM_ASYNC_PF_EN, area | 1 | 1 << 3);
            check_eq!(cpu::rdmsr(MSR_KVM_ASYNC_PF_EN), area | 1 | 1 << 3, "MSR_KVM_ASYNC_PF_EN");
            cpu::wrmsr(MSR_KVM_ASYNC_PF_EN, 0);
        }
    }
}

use hvprobe_rt::cpu::kvm_msr::POLL_CONTROL as MSR_KVM_POLL_CONTROL;

test_case! {
    /// MSR_KVM_POLL_CONTROL (msr.rst) reads 1 after reset (host-side polling on) and keeps
    /// 0 and 1 as written.
    name = "pv::poll_control::long64", mode = Long64, path = Para, requires = requires::KVM_PV;
    fn poll_control() {
        require(feature::POLL_CONTROL, "POLL_CONTROL");
        // SAFETY: the MSR only steers host-side halt polling.
        unsafe {
            check_eq!(cpu::rdmsr(MSR_KVM_POLL_CONTROL), 1, "after reset");
            cpu::wrmsr(MSR_KVM_POLL_CONTROL, 0);
            check_eq!(cpu::rdmsr(MSR_KVM_POLL_CONTROL), 0, "after writing 0");
            cpu::wrmsr(MSR_KVM_POLL_CONTROL, 1);
            check_eq!(cpu::rdmsr(MSR_KVM_POLL_CONTROL), 1, "after writing 1");
        }
    }
}

use hvprobe_rt::cpu::kvm_msr::PV_EOI_EN as MSR_KVM_PV_EOI_EN;
static PV_EOI_WORD: AtomicU64 = AtomicU64::new(0);

test_case! {
    /// MSR_KVM_PV_EOI_EN (msr.rst) keeps an enable with a 4-byte-aligned address and
    /// refuses a misaligned one with #GP (x86.c, kvm_lapic_set_pv_eoi).
    name = "pv::pv_eoi_msr::long64", mode = Long64, path = Para, requires = requires::KVM_PV | requires::IRQCHIP;
    fn pv_eoi_msr() {
        require(feature::PV_EOI, "PV_EOI");
        let at = &raw const PV_EOI_WORD as u64;
        let bad = (at + 2) | 1;
        let e = catch!("wrmsr", in("ecx") MSR_KVM_PV_EOI_EN, in("eax") bad as u32, in("edx") (bad >> 32) as u32);
        check_exception!(e, exception::GP, Some(0));
        check_eq!(e.map(|e| e.rip), Some(armed_rip()));
        // SAFETY: the word is 8-byte aligned RAM; enable, check, disable.
        unsafe {
            cpu::wrmsr(MSR_KVM_PV_EOI_EN, at | 1);
            check_eq!(cpu::rdmsr(MSR_KVM_PV_EOI_EN), at | 1, "the MSR");
            cpu::wrmsr(MSR_KVM_PV_EOI_EN, 0);
        }
    }
}

test_case! {
    /// KVM_FEATURE_MSI_EXT_DEST_ID (cpuid.rst): an MSI whose extended destination ID
    /// (address bits 11:5) names APIC ID 256 must not reach APIC ID 0, which it would if
    /// those bits were ignored. Skipped unless advertised.
    name = "pv::msi_ext_dest_id::long64", mode = Long64, path = Para, requires = requires::KVM_PV | requires::IRQCHIP;
    fn msi_ext_dest_id() {
        require(feature::MSI_EXT_DEST_ID, "MSI_EXT_DEST_ID");
        hvprobe_rt::exception::set_handler(0x66, |_| {
            EXT_DEST_TAKEN.fetch_add(1, SeqCst);
            hvprobe_rt::apic::Apic::XApic.eoi();
        });
        hvprobe_rt::apic::Apic::XApic.enable();
        // Destination 0 in bits 19:12, extended ID 1 (bits 11:5) = APIC ID 256.
        let address = 0xfee0_0000u64 | 1 << 5;
        let _ = call(service::SIGNAL_MSI, [address, 0x66, 0, 0]);
        // SAFETY: a window for the interrupt, which must not come.
        unsafe { asm!("sti", "nop", "nop", "cli", options(nomem, nostack)) };
        check_eq!(EXT_DEST_TAKEN.load(SeqCst), 0, "MSIs to APIC ID 256 taken by APIC ID 0");
    }
}

static EXT_DEST_TAKEN: AtomicU64 = AtomicU64::new(0);

test_case! {
    /// MSR_KVM_MIGRATION_CONTROL (msr.rst) keeps KVM_MIGRATION_READY (bit 0). Skipped
    /// unless KVM_FEATURE_MIGRATION_CONTROL is advertised.
    name = "pv::migration_control::long64", mode = Long64, path = Para, requires = requires::KVM_PV;
    fn migration_control() {
        require(feature::MIGRATION_CONTROL, "MIGRATION_CONTROL");
        // SAFETY: the MSR tells the host the guest can be migrated.
        unsafe {
            cpu::wrmsr(0x4b56_4d08, 1);
            check_eq!(cpu::rdmsr(0x4b56_4d08), 1);
        }
    }
}
