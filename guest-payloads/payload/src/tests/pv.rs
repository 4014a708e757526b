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
        check_eq!(cpu::kvm_hypercall(KVM_HC_VAPIC_POLL_IRQ, [0; 4]), KVM_EPERM);
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
