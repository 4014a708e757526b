//! KVM's paravirtual MSRs against CPUID 0x40000001 (Documentation/virt/kvm/x86/cpuid.rst
//! and msr.rst). With KVM_CAP_ENFORCE_PV_FEATURE_CPUID enabled (api.rst 7.27), a feature
//! whose bit the table clears is gone: RDMSR and WRMSR of its MSR raise #GP(0). Without
//! the capability, api.rst says "a guest may use the paravirtual features regardless of
//! what has actually been exposed through the CPUID leaf": the same read works. Each
//! feature has both cases, so a vendor sees the enforcement and its default.

use hvprobe_rt::abi::CpuidClear;
use hvprobe_rt::abi::requires::{ENFORCE_PV_CPUID, KVM_PV};
use hvprobe_rt::cpu::kvm_msr;
use hvprobe_rt::{check, check_eq, test_case};

use super::cpu::{table_reg, try_rdmsr};
use super::gated::check_msr_absent;

const PV_LEAF: u32 = 0x4000_0001;

fn check_cleared(bit: u32) {
    check_eq!(table_reg(PV_LEAF, 0, CpuidClear::EAX) & 1 << bit, 0, "the host left PV feature bit {} set", bit);
}

/// RDMSR raises nothing.
fn check_still_there(msr: u32, name: &str) {
    let read = try_rdmsr(msr).err();
    check!(
        read.is_none(),
        "RDMSR of {} raised {:?} with its feature cleared but not enforced",
        name,
        read.map(|e| e.vector)
    );
}

macro_rules! pv_pairs {
    ($($(#[$doc:meta])* $gone:ident, $there:ident: $gone_name:literal, $there_name:literal, $msr:expr, $msr_name:literal, $bit:expr;)+) => {$(
        test_case! {
            $(#[$doc])*
            /// Enforced: the MSR is gone.
            name = $gone_name, mode = Long64, path = Para, requires = KVM_PV | ENFORCE_PV_CPUID,
                cpuid_clear = [(PV_LEAF, 0, EAX, 1 << $bit)];
            fn $gone() {
                check_cleared($bit);
                check_msr_absent($msr, $msr_name);
            }
        }

        test_case! {
            $(#[$doc])*
            /// Not enforced (KVM's default): the MSR still reads.
            name = $there_name, mode = Long64, path = Para, requires = KVM_PV,
                cpuid_clear = [(PV_LEAF, 0, EAX, 1 << $bit)];
            fn $there() {
                check_cleared($bit);
                check_still_there($msr, $msr_name);
            }
        }
    )+};
}

pv_pairs! {
    /// MSR_KVM_SYSTEM_TIME_NEW (4b564d01h), KVM_FEATURE_CLOCKSOURCE2 (bit 3).
    pv_enforce_system_time_new, pv_unenforced_system_time_new:
        "pv::enforce_system_time_new::long64", "pv::unenforced_system_time_new::long64",
        kvm_msr::SYSTEM_TIME_NEW, "MSR_KVM_SYSTEM_TIME_NEW", 3;
    /// MSR_KVM_WALL_CLOCK_NEW (4b564d00h), KVM_FEATURE_CLOCKSOURCE2 (bit 3).
    pv_enforce_wall_clock_new, pv_unenforced_wall_clock_new:
        "pv::enforce_wall_clock_new::long64", "pv::unenforced_wall_clock_new::long64",
        kvm_msr::WALL_CLOCK_NEW, "MSR_KVM_WALL_CLOCK_NEW", 3;
    /// MSR_KVM_SYSTEM_TIME (12h), KVM_FEATURE_CLOCKSOURCE (bit 0).
    pv_enforce_system_time, pv_unenforced_system_time:
        "pv::enforce_system_time::long64", "pv::unenforced_system_time::long64",
        kvm_msr::SYSTEM_TIME, "MSR_KVM_SYSTEM_TIME", 0;
    /// MSR_KVM_ASYNC_PF_EN (4b564d02h), KVM_FEATURE_ASYNC_PF (bit 4).
    pv_enforce_async_pf_en, pv_unenforced_async_pf_en:
        "pv::enforce_async_pf_en::long64", "pv::unenforced_async_pf_en::long64",
        kvm_msr::ASYNC_PF_EN, "MSR_KVM_ASYNC_PF_EN", 4;
    /// MSR_KVM_STEAL_TIME (4b564d03h), KVM_FEATURE_STEAL_TIME (bit 5).
    pv_enforce_steal_time, pv_unenforced_steal_time:
        "pv::enforce_steal_time::long64", "pv::unenforced_steal_time::long64",
        kvm_msr::STEAL_TIME, "MSR_KVM_STEAL_TIME", 5;
    /// MSR_KVM_PV_EOI_EN (4b564d04h), KVM_FEATURE_PV_EOI (bit 6).
    pv_enforce_pv_eoi, pv_unenforced_pv_eoi:
        "pv::enforce_pv_eoi::long64", "pv::unenforced_pv_eoi::long64",
        kvm_msr::PV_EOI_EN, "MSR_KVM_PV_EOI_EN", 6;
    /// MSR_KVM_POLL_CONTROL (4b564d05h), KVM_FEATURE_POLL_CONTROL (bit 12).
    pv_enforce_poll_control, pv_unenforced_poll_control:
        "pv::enforce_poll_control::long64", "pv::unenforced_poll_control::long64",
        kvm_msr::POLL_CONTROL, "MSR_KVM_POLL_CONTROL", 12;
    /// MSR_KVM_ASYNC_PF_INT (4b564d06h), KVM_FEATURE_ASYNC_PF_INT (bit 14).
    pv_enforce_async_pf_int, pv_unenforced_async_pf_int:
        "pv::enforce_async_pf_int::long64", "pv::unenforced_async_pf_int::long64",
        kvm_msr::ASYNC_PF_INT, "MSR_KVM_ASYNC_PF_INT", 14;
}
