//! Host hooks: the host-side half of the test cases that need the host to act before or
//! during the run. A case with `flags = HOST_HOOK` has exactly one entry here, by name;
//! `check` enforces that both sides agree.

use kvm_bindings::kvm_cpuid_entry2;

use hvprobe_harness::Payload;

pub struct Hook {
    pub name: &'static str,
    /// Edits the CPUID table before KVM_SET_CPUID2.
    pub cpuid_edit: Option<fn(&mut Vec<kvm_cpuid_entry2>)>,
    /// What the host does to the running guest (see `crate::migrate`).
    pub migrate: Option<Migrate>,
    /// KVM quirks to disable (KVM_CAP_DISABLE_QUIRKS2, api.rst 7.31) before the vCPUs
    /// exist.
    pub quirks_off: u64,
}

/// How the host moves a guest while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Migrate {
    /// At each checkpoint: save the VM, restore it into a fresh VM in this process, go on.
    Restore,
    /// At the first checkpoint: write the snapshot to a file and restore it in a new
    /// process, which runs the case to its end.
    CrossProcess,
    /// Pause the guest this many times at random (seeded) moments; save and restore each
    /// time.
    RandomPauses(u32),
    /// Live migration with dirty logging while the guest runs.
    Live,
}

/// include/uapi/asm/kvm.h: KVM stops rewriting the other vendor's hypercall instruction.
const KVM_X86_QUIRK_FIX_HYPERCALL_INSN: u64 = 1 << 5;

const fn migrate(name: &'static str, how: Migrate) -> Hook {
    Hook { name, cpuid_edit: None, migrate: Some(how), quirks_off: 0 }
}

/// The table cut to the maxima of `hvprobe_abi::cpuid_removed`: leaves above them are
/// dropped and leaf 0 and 0x80000000 name the new maxima.
fn cut_max_leaves(table: &mut Vec<kvm_cpuid_entry2>) {
    use hvprobe_abi::cpuid_removed::{MAX_BASIC_LEAF, MAX_EXTENDED_LEAF};
    table.retain(|e| match e.function {
        f if f < 0x4000_0000 => f <= MAX_BASIC_LEAF,
        f if f >= 0x8000_0000 => f <= MAX_EXTENDED_LEAF,
        _ => true,
    });
    for e in table.iter_mut() {
        match e.function {
            0 => e.eax = MAX_BASIC_LEAF,
            0x8000_0000 => e.eax = MAX_EXTENDED_LEAF,
            _ => {}
        }
    }
}

/// CPUID.1:ECX[31] set to the inverse of this CPU's own bit: whatever the host is (a VM
/// or bare metal), the table then differs from it there.
#[allow(clippy::ptr_arg, reason = "every hook has the CpuidEdit signature, which lets a hook add leaves")]
fn flip_hypervisor_bit(table: &mut Vec<kvm_cpuid_entry2>) {
    let host = std::arch::x86_64::__cpuid(1).ecx & (1 << 31);
    for e in table.iter_mut().filter(|e| e.function == 1) {
        e.ecx = (e.ecx & !(1 << 31)) | (host ^ (1 << 31));
    }
}

/// A hook that only edits the CPUID table.
const fn cpuid(name: &'static str, edit: fn(&mut Vec<kvm_cpuid_entry2>)) -> Hook {
    Hook { name, cpuid_edit: Some(edit), migrate: None, quirks_off: 0 }
}

pub const HOOKS: &[Hook] = &[
    cpuid("cpu::cpuid_vendor::long64", cut_max_leaves),
    cpuid("cpu::cpuid_vendor::user64", cut_max_leaves),
    cpuid("cpu::cpuid_max_leaf::long64", cut_max_leaves),
    cpuid("cpu::cpuid_max_leaf::user64", cut_max_leaves),
    cpuid("cpu::cpuid_hypervisor_bit_flipped::user64", flip_hypervisor_bit),
    Hook {
        name: "pv::hypercall_quirk_off::long64",
        cpuid_edit: None,
        migrate: None,
        quirks_off: KVM_X86_QUIRK_FIX_HYPERCALL_INSN,
    },
    migrate("state::restore_memory::long64", Migrate::Restore),
    migrate("state::restore_memory::user64", Migrate::Restore),
    migrate("state::restore_gprs::long64", Migrate::Restore),
    migrate("state::restore_gprs::user64", Migrate::Restore),
    migrate("state::restore_sse::long64", Migrate::Restore),
    migrate("state::restore_sse::cpl3", Migrate::Restore),
    migrate("state::restore_x87::long64", Migrate::Restore),
    migrate("state::restore_x87::user64", Migrate::Restore),
    migrate("state::restore_msrs::long64", Migrate::Restore),
    migrate("state::restore_control_regs::long64", Migrate::Restore),
    migrate("state::restore_debug_regs::long64", Migrate::Restore),
    migrate("state::restore_segments::long64", Migrate::Restore),
    migrate("state::restore_tsc::long64", Migrate::Restore),
    migrate("state::restore_lapic_regs::xapic", Migrate::Restore),
    migrate("state::restore_lapic_timer::xapic", Migrate::Restore),
    migrate("state::restore_pending_irq::xapic", Migrate::Restore),
    migrate("state::restore_twice::long64", Migrate::Restore),
    migrate("state::restore_smp::xapic", Migrate::Restore),
    migrate("state::restore_ioapic::long64", Migrate::Restore),
    migrate("state::restore_pic::long64", Migrate::Restore),
    migrate("state::restore_devices::long64", Migrate::Restore),
    migrate("state::restore_kvmclock::long64", Migrate::Restore),
    migrate("state::cross_process::long64", Migrate::CrossProcess),
    migrate("state::cross_process::user64", Migrate::CrossProcess),
    migrate("state::random_pauses::long64", Migrate::RandomPauses(3)),
    migrate("state::random_pauses::user64", Migrate::RandomPauses(3)),
    migrate("state::live_migration::long64", Migrate::Live),
    migrate("state::live_migration::user64", Migrate::Live),
    migrate("cpu::smm_smbase_restore::long64", Migrate::Restore),
];

pub fn hook_for(name: &str) -> Option<&'static Hook> {
    HOOKS.iter().find(|h| h.name == name)
}

/// Every case that declares a hook has one, and every hook belongs to such a case.
pub fn check(payload: &Payload) -> Result<(), String> {
    for t in &payload.tests {
        if t.has_host_hook() != hook_for(&t.name).is_some() {
            return Err(format!(
                "{}: the guest {} a host hook but suites/src/hooks.rs {} one",
                t.name,
                if t.has_host_hook() { "declares" } else { "does not declare" },
                if t.has_host_hook() { "has no" } else { "has" }
            ));
        }
    }
    for h in HOOKS {
        if payload.test(h.name).is_none() {
            return Err(format!("hooks.rs has a hook for {}, which is not in the catalogue", h.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn hooks_and_catalogue_agree() {
        super::check(crate::catalog::payload().unwrap()).unwrap();
    }
}
