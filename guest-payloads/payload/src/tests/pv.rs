//! The `pv` area: KVM hypercalls, the KVM CPUID leaves, and the harness's own
//! paravirtual service channel.

use hvprobe_rt::abi::{self, proto::service};
use hvprobe_rt::proto::ServiceError;
use hvprobe_rt::{check_eq, cpu, metric, test_case};

/// -KVM_ENOSYS and -KVM_EPERM as a hypercall returns them (include/uapi/linux/kvm_para.h).
const KVM_ENOSYS: u64 = -1000i64 as u64;
const KVM_EPERM: u64 = -1i64 as u64;
const KVM_HC_VAPIC_POLL_IRQ: u64 = 1;
/// A hypercall takes microseconds; one that has not returned in 1 s never will.
const HYPERCALL_LIMIT_MS: u32 = 1000;

test_case! {
    /// An unknown hypercall number returns -KVM_ENOSYS in RAX
    /// (Documentation/virt/kvm/x86/hypercalls.rst).
    name = "pv::hypercall_unknown::long64", mode = Long64, path = Para,
        requires = abi::requires::KVM_PV, timeout_ms = HYPERCALL_LIMIT_MS;
    fn hypercall_unknown() {
        let start = cpu::rdtsc();
        let ret = cpu::kvm_hypercall(0xffff, [0; 4]);
        metric("hypercall", "cycles", cpu::rdtsc() - start);
        check_eq!(ret, KVM_ENOSYS);
    }
}

test_case! {
    /// KVM_HC_VAPIC_POLL_IRQ returns 0 (hypercalls.rst, item 1).
    name = "pv::hypercall_vapic_poll_irq::long64", mode = Long64, path = Para,
        requires = abi::requires::KVM_PV, timeout_ms = HYPERCALL_LIMIT_MS;
    fn hypercall_vapic_poll_irq() {
        check_eq!(cpu::kvm_hypercall(KVM_HC_VAPIC_POLL_IRQ, [0; 4]), 0);
    }
}

test_case! {
    /// A hypercall from CPL3 returns -KVM_EPERM without being carried out
    /// (arch/x86/kvm/x86.c, kvm_emulate_hypercall: CPL must be 0).
    name = "pv::hypercall_cpl3_eperm::user64", mode = User64, path = Para,
        requires = abi::requires::KVM_PV, timeout_ms = HYPERCALL_LIMIT_MS;
    fn hypercall_cpl3_eperm() {
        check_eq!(super::pv_features::counted_hypercall(KVM_HC_VAPIC_POLL_IRQ, [0; 4]), KVM_EPERM);
    }
}

test_case! {
    /// CPUID 0x40000001 (KVM_CPUID_FEATURES) reads back the feature bits the host set
    /// (Documentation/virt/kvm/x86/cpuid.rst).
    name = "pv::kvm_features_leaf::long64", mode = Long64, path = Para,
        requires = abi::requires::KVM_PV;
    fn kvm_features_leaf() {
        let got = cpu::cpuid(0x4000_0001, 0);
        let set = super::cpu::cpuid_as_set(0x4000_0001, 0);
        check_eq!(Some(got.eax), set.map(|c| c.eax), "KVM feature bits");
        check_eq!(Some(got.edx), set.map(|c| c.edx), "KVM hints");
    }
}

test_case! {
    /// The harness's service channel answers a request and refuses an unknown service:
    /// the path every host-assisted test depends on.
    name = "pv::host_service::long64", mode = Long64, path = Para;
    fn host_service() {
        let start = cpu::rdtsc();
        let r = hvprobe_rt::proto::service(service::ECHO_XOR, [0x1234_5678_9abc_def0, 0xffff, 0, 0]);
        metric("service_roundtrip", "cycles", cpu::rdtsc() - start);
        check_eq!(r, Ok(0x1234_5678_9abc_210f));
        check_eq!(hvprobe_rt::proto::service(0xdead, [0; 4]), Err(ServiceError::Unknown));
    }
}

test_case! {
    /// The service channel works from CPL3 as well.
    name = "pv::host_service::user64", mode = User64, path = Para;
    entry = host_service
}

use hvprobe_rt::kvmclock;

test_case! {
    /// kvmclock (MSR_KVM_SYSTEM_TIME_NEW, msr.rst) never goes backwards over 1,000 reads
    /// with the version protocol, and it advances.
    name = "pv::kvmclock_monotonic::long64", mode = Long64, path = Para, requires = abi::requires::KVM_PV;
    fn kvmclock_monotonic() {
        kvmclock::enable();
        let first = kvmclock::ns();
        let mut last = first;
        for i in 0..1000 {
            let now = kvmclock::ns();
            hvprobe_rt::check!(now >= last, "kvmclock went backwards at read {}: {} then {}", i, last, now);
            last = now;
        }
        hvprobe_rt::check!(last > first, "kvmclock did not advance over 1,000 reads ({} ns)", first);
    }
}

/// A (TSC, kvmclock) pair taken together: one kvmclock read between two TSC reads at most
/// `max` cycles apart, the TSC taken at their midpoint. A vCPU preempted between the two
/// reads of a plain pair skews it by the preemption (on a loaded host, milliseconds), which
/// would be the harness's error, not the clock's; such a pair is read again.
fn clock_pair(max: u64) -> Option<(u64, u64)> {
    for _ in 0..1000 {
        let before = cpu::rdtsc();
        let clock = kvmclock::ns();
        let after = cpu::rdtsc();
        if after - before <= max {
            return Some((before + (after - before) / 2, clock));
        }
    }
    None
}

test_case! {
    /// kvmclock and the TSC agree on elapsed time within 1% over a stretch of ~100 M TSC
    /// cycles, given the TSC frequency KVM reports (KVM_GET_TSC_KHZ). Each end is a pair
    /// read within 200 us (see `clock_pair`), so the pairs add at most 0.2 ms of error to
    /// a stretch of about 40 ms at 2.4 GHz.
    name = "pv::kvmclock_vs_tsc::long64", mode = Long64, path = Para, requires = abi::requires::KVM_PV;
    fn kvmclock_vs_tsc() {
        kvmclock::enable();
        let khz = hvprobe_rt::proto::service(service::TSC_KHZ, [0; 4]).unwrap_or(0);
        hvprobe_rt::check!(khz > 0, "no TSC frequency from the host");
        let max = khz / 5;
        let start = clock_pair(max);
        hvprobe_rt::check!(start.is_some(), "no kvmclock read fit within 200 us of TSC in 1,000 tries");
        let (t0, k0) = start.unwrap_or_default();
        while cpu::rdtsc() - t0 < 100_000_000 {}
        let end = clock_pair(max);
        hvprobe_rt::check!(end.is_some(), "no kvmclock read fit within 200 us of TSC in 1,000 tries");
        let (t1, k1) = end.unwrap_or_default();
        let tsc_ns = (t1 - t0) * 1_000_000 / khz;
        let clock_ns = k1 - k0;
        metric("kvmclock_ns", "ns", clock_ns);
        metric("tsc_ns", "ns", tsc_ns);
        let diff = tsc_ns.abs_diff(clock_ns);
        hvprobe_rt::check!(diff * 100 <= tsc_ns, "kvmclock {} ns vs TSC {} ns over the same stretch", clock_ns, tsc_ns);
    }
}

use hvprobe_rt::cpu::kvm_msr::WALL_CLOCK_NEW as MSR_KVM_WALL_CLOCK_NEW;

#[repr(C)]
struct WallClock {
    version: u32,
    sec: u32,
    nsec: u32,
}

static WALL: [u32; 4] = [0; 4];

test_case! {
    /// MSR_KVM_WALL_CLOCK_NEW (msr.rst): KVM writes the boot time of the VM as seconds and
    /// nanoseconds with an even version; seconds after 2020, nanoseconds below 10^9.
    name = "pv::kvmclock_wall_clock::long64", mode = Long64, path = Para, requires = abi::requires::KVM_PV;
    fn kvmclock_wall_clock() {
        if cpu::cpuid(0x4000_0001, 0).eax & kvmclock::KVM_FEATURE_CLOCKSOURCE2 == 0 {
            hvprobe_rt::skip!("the host does not advertise KVM_FEATURE_CLOCKSOURCE2");
        }
        let p = WALL.as_ptr() as *const WallClock;
        // SAFETY: the structure is static guest RAM; the MSR write makes KVM fill it.
        let w = unsafe {
            cpu::wrmsr(MSR_KVM_WALL_CLOCK_NEW, p as u64);
            ((&raw const (*p).version).read_volatile(), (&raw const (*p).sec).read_volatile(), (&raw const (*p).nsec).read_volatile())
        };
        check_eq!(w.0 & 1, 0, "version is even once written");
        hvprobe_rt::check!(w.0 != 0, "KVM did not write the wall clock");
        hvprobe_rt::check!(w.1 > 1_577_836_800, "wall clock seconds {} are before 2020", w.1);
        hvprobe_rt::check!(w.2 < 1_000_000_000, "nanoseconds {} out of range", w.2);
    }
}
