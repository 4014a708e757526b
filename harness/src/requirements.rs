//! Every requirement a case can declare (`requires = ...` in its descriptor), in one table:
//! the ABI bit the guest names it by, what it is called in listings and skip reasons, how
//! this host shows it has it, and what the VM of a case that needs it gets. A new
//! requirement is one bit in `hvprobe_abi::requires` and one row here.

use hvprobe_abi::requires;

use crate::{Kvm, VmConfig};

/// One requirement.
pub struct Requirement {
    pub bit: u64,
    pub name: &'static str,
    /// Whether this host can give a case the requirement.
    pub present: fn(&Kvm) -> bool,
    /// What the VM of a case that declares it gets (nothing for a plain host check).
    pub configure: fn(&mut VmConfig),
}

/// Entries of each vCPU's dirty ring for cases that require one: more than the guest's
/// 1,024 pages, so a ring never fills between two collections.
pub const DIRTY_RING_ENTRIES: u32 = 4096;

fn cap(kvm: &Kvm, c: kvm_ioctls::Cap) -> bool {
    kvm.kvm.check_extension(c)
}

fn cap_raw(kvm: &Kvm, c: u32) -> bool {
    kvm.kvm.check_extension_raw(c.into()) > 0
}

fn leaf1_ecx(kvm: &Kvm, bit: u32) -> bool {
    kvm.supported_cpuid(1, 0).is_some_and(|e| e.ecx & (1 << bit) != 0)
}

fn nothing(_: &mut VmConfig) {}

/// Every requirement, in bit order.
pub const REQUIREMENTS: [Requirement; 17] = [
    Requirement {
        bit: requires::IRQCHIP,
        name: "in-kernel irqchip (KVM_CAP_IRQCHIP)",
        present: |k| cap(k, kvm_ioctls::Cap::Irqchip),
        configure: |c| c.irqchip = true,
    },
    Requirement {
        bit: requires::X2APIC,
        name: "CPUID.1:ECX.x2APIC",
        present: |k| leaf1_ecx(k, 21),
        configure: nothing,
    },
    Requirement {
        bit: requires::KVM_PV,
        name: "KVM signature leaf 0x40000000",
        present: |k| {
            k.supported_cpuid(0x4000_0000, 0).is_some_and(|e| {
                [e.ebx, e.ecx, e.edx].iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>() == b"KVMKVMKVM\0\0\0"
            })
        },
        configure: nothing,
    },
    Requirement {
        bit: requires::TSC_DEADLINE,
        name: "CPUID.1:ECX.TSC_DEADLINE",
        present: |k| leaf1_ecx(k, 24),
        configure: nothing,
    },
    Requirement {
        bit: requires::IOEVENTFD,
        name: "ioeventfds (KVM_CAP_IOEVENTFD)",
        present: |k| cap(k, kvm_ioctls::Cap::Ioeventfd),
        configure: |c| c.ioeventfds = true,
    },
    Requirement {
        bit: requires::DIRTY_RING,
        name: "the dirty ring (KVM_CAP_DIRTY_LOG_RING)",
        present: |k| k.dirty_ring_max() > 0,
        configure: |c| c.dirty_ring = Some(DIRTY_RING_ENTRIES),
    },
    Requirement {
        bit: requires::PIT,
        name: "the in-kernel PIT (KVM_CAP_PIT2)",
        present: |k| cap(k, kvm_ioctls::Cap::Pit2),
        configure: |c| {
            c.irqchip = true;
            c.pit = true;
        },
    },
    Requirement {
        bit: requires::NO_IRQCHIP,
        name: "a VM without the in-kernel irqchip (always possible)",
        present: |_| true,
        configure: nothing,
    },
    Requirement {
        bit: requires::READONLY_MEM,
        name: "read-only memory slots (KVM_CAP_READONLY_MEM)",
        present: |k| cap(k, kvm_ioctls::Cap::ReadonlyMem),
        configure: |c| c.readonly_slot = true,
    },
    Requirement {
        bit: requires::COALESCED,
        name: "coalesced MMIO and PIO (KVM_CAP_COALESCED_MMIO, KVM_CAP_COALESCED_PIO)",
        present: |k| cap(k, kvm_ioctls::Cap::CoalescedMmio) && cap(k, kvm_ioctls::Cap::CoalescedPio),
        configure: |c| c.coalesced = true,
    },
    Requirement {
        bit: requires::GUEST_DEBUG,
        name: "host-side guest debugging (KVM_CAP_SET_GUEST_DEBUG)",
        present: |k| cap(k, kvm_ioctls::Cap::SetGuestDebug),
        configure: nothing,
    },
    Requirement {
        bit: requires::ENFORCE_PV_CPUID,
        name: "enforced paravirtual CPUID (KVM_CAP_ENFORCE_PV_FEATURE_CPUID)",
        present: |k| cap_raw(k, crate::vm::KVM_CAP_ENFORCE_PV_FEATURE_CPUID),
        configure: |c| c.enforce_pv_cpuid = true,
    },
    Requirement {
        bit: requires::USER_MSR,
        name: "MSR exits and filters (KVM_CAP_X86_USER_SPACE_MSR, KVM_CAP_X86_MSR_FILTER)",
        present: |k| cap(k, kvm_ioctls::Cap::X86UserSpaceMsr) && cap(k, kvm_ioctls::Cap::X86MsrFilter),
        configure: |c| c.user_msr = true,
    },
    Requirement {
        bit: requires::HYPERV,
        name: "Hyper-V enlightenments (KVM_CAP_HYPERV, KVM_CAP_SYS_HYPERV_CPUID)",
        present: |k| cap(k, kvm_ioctls::Cap::Hyperv) && cap_raw(k, crate::vm::KVM_CAP_SYS_HYPERV_CPUID),
        configure: |c| c.hyperv = true,
    },
    Requirement {
        bit: requires::SMM,
        name: "system management mode (KVM_CAP_X86_SMM)",
        present: |k| cap(k, kvm_ioctls::Cap::X86Smm),
        configure: |c| c.smm = true,
    },
    Requirement {
        bit: requires::TSC_CTRL,
        name: "the vCPU TSC offset attribute (KVM_CAP_VCPU_ATTRIBUTES, KVM_VCPU_TSC_CTRL)",
        present: |k| cap_raw(k, kvm_bindings::KVM_CAP_VCPU_ATTRIBUTES),
        configure: nothing,
    },
    Requirement {
        bit: requires::PMU,
        name: "a virtual PMU (KVM_CAP_PMU_CAPABILITY; kvm.enable_pmu)",
        present: |k| cap_raw(k, kvm_bindings::KVM_CAP_PMU_CAPABILITY),
        configure: nothing,
    },
];

/// The row of `bit`, if it is one.
pub fn requirement(bit: u64) -> Option<&'static Requirement> {
    REQUIREMENTS.iter().find(|r| r.bit == bit)
}

/// The names of the requirements in `mask`, in bit order.
pub fn names(mask: u64) -> Vec<&'static str> {
    REQUIREMENTS.iter().filter(|r| mask & r.bit != 0).map(|r| r.name).collect()
}

/// `config` with what every requirement in `mask` gives a VM applied.
pub fn configure(mask: u64, config: &mut VmConfig) {
    for r in REQUIREMENTS.iter().filter(|r| mask & r.bit != 0) {
        (r.configure)(config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_is_one_distinct_bit_with_a_distinct_name() {
        let mut seen = 0u64;
        for r in &REQUIREMENTS {
            assert_eq!(r.bit.count_ones(), 1, "{}", r.name);
            assert_eq!(seen & r.bit, 0, "bit {:#x} twice", r.bit);
            seen |= r.bit;
            assert_eq!(REQUIREMENTS.iter().filter(|o| o.name == r.name).count(), 1, "{}", r.name);
        }
        assert_eq!(seen, requires::ALL, "every bit of hvprobe_abi::requires has a row, and no other");
    }

    #[test]
    fn a_requirement_that_needs_the_host_to_act_configures_the_vm() {
        let mut c = VmConfig::default();
        configure(requires::PIT | requires::DIRTY_RING | requires::X2APIC, &mut c);
        assert!(c.irqchip && c.pit);
        assert_eq!(c.dirty_ring, Some(DIRTY_RING_ENTRIES));
        assert!(!c.smm && !c.hyperv);
    }
}
