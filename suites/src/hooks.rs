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

/// The CPUID.1:ECX bits of `hvprobe_abi::cpuid_removed` removed: the guest checks they
/// stay absent.
#[allow(clippy::ptr_arg, reason = "every hook has the CpuidEdit signature, which lets a hook add leaves")]
fn remove_leaf1_features(table: &mut Vec<kvm_cpuid_entry2>) {
    for e in table.iter_mut().filter(|e| e.function == 1) {
        e.ecx &= !hvprobe_abi::cpuid_removed::LEAF1_ECX;
    }
}

/// Clears `bit` of `reg` in (`leaf`, any subleaf) of the table.
fn clear_bit(table: &mut [kvm_cpuid_entry2], leaf: u32, reg: fn(&mut kvm_cpuid_entry2) -> &mut u32, bit: u32) {
    for e in table.iter_mut().filter(|e| e.function == leaf) {
        *reg(e) &= !bit;
    }
}

#[allow(clippy::ptr_arg, reason = "every hook has the CpuidEdit signature, which lets a hook add leaves")]
fn remove_rdtscp(table: &mut Vec<kvm_cpuid_entry2>) {
    clear_bit(table, 0x8000_0001, |e| &mut e.edx, 1 << 27);
}

#[allow(clippy::ptr_arg, reason = "every hook has the CpuidEdit signature, which lets a hook add leaves")]
fn remove_spec_ctrl(table: &mut Vec<kvm_cpuid_entry2>) {
    use hvprobe_abi::cpuid_removed::{SPEC_CTRL_EXT8_EBX, SPEC_CTRL_LEAF7_EDX};
    clear_bit(table, 7, |e| &mut e.edx, SPEC_CTRL_LEAF7_EDX);
    clear_bit(table, 0x8000_0008, |e| &mut e.ebx, SPEC_CTRL_EXT8_EBX);
}

#[allow(clippy::ptr_arg, reason = "every hook has the CpuidEdit signature, which lets a hook add leaves")]
fn remove_pred_cmd(table: &mut Vec<kvm_cpuid_entry2>) {
    use hvprobe_abi::cpuid_removed::{PRED_CMD_EXT8_EBX, PRED_CMD_LEAF7_EDX};
    clear_bit(table, 7, |e| &mut e.edx, PRED_CMD_LEAF7_EDX);
    clear_bit(table, 0x8000_0008, |e| &mut e.ebx, PRED_CMD_EXT8_EBX);
    // SBPB (CPUID 8000_0021h:EAX[27]) makes the MSR exist too on newer AMD parts.
    clear_bit(table, 0x8000_0021, |e| &mut e.eax, 1 << 27);
}

#[allow(clippy::ptr_arg, reason = "every hook has the CpuidEdit signature, which lets a hook add leaves")]
fn remove_flush_cmd(table: &mut Vec<kvm_cpuid_entry2>) {
    clear_bit(table, 7, |e| &mut e.edx, hvprobe_abi::cpuid_removed::FLUSH_CMD_LEAF7_EDX);
}

#[allow(clippy::ptr_arg, reason = "every hook has the CpuidEdit signature, which lets a hook add leaves")]
fn remove_invpcid(table: &mut Vec<kvm_cpuid_entry2>) {
    clear_bit(table, 7, |e| &mut e.ebx, 1 << 10);
}

#[allow(clippy::ptr_arg, reason = "every hook has the CpuidEdit signature, which lets a hook add leaves")]
fn remove_rdpid(table: &mut Vec<kvm_cpuid_entry2>) {
    clear_bit(table, 7, |e| &mut e.ecx, 1 << 22);
}

#[allow(clippy::ptr_arg, reason = "every hook has the CpuidEdit signature, which lets a hook add leaves")]
fn remove_xsave(table: &mut Vec<kvm_cpuid_entry2>) {
    clear_bit(table, 1, |e| &mut e.ecx, 1 << 26 | 1 << 27);
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
    cpuid("cpu::rdtscp_absent::long64", remove_rdtscp),
    cpuid("cpu::rdtscp_absent::cpl3", remove_rdtscp),
    cpuid("cpu::msr_spec_ctrl_absent::long64", remove_spec_ctrl),
    cpuid("cpu::msr_pred_cmd_absent::long64", remove_pred_cmd),
    cpuid("cpu::msr_flush_cmd_absent::long64", remove_flush_cmd),
    cpuid("cpu::invpcid_absent::long64", remove_invpcid),
    cpuid("cpu::rdpid_absent::long64", remove_rdpid),
    cpuid("cpu::rdpid_absent::cpl3", remove_rdpid),
    cpuid("cpu::xsave_absent::long64", remove_xsave),
    cpuid("cpu::cpuid_vendor::long64", cut_max_leaves),
    cpuid("cpu::cpuid_vendor::user64", cut_max_leaves),
    cpuid("cpu::cpuid_max_leaf::long64", cut_max_leaves),
    cpuid("cpu::cpuid_max_leaf::user64", cut_max_leaves),
    cpuid("cpu::cpuid_hypervisor_bit_flipped::user64", flip_hypervisor_bit),
    cpuid("cpu::cpuid_removed_feature::long64", remove_leaf1_features),
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
