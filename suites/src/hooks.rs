//! Host hooks: CPUID tables no descriptor field can express (functions of the host's own
//! table). A case with `flags = HOST_HOOK` has exactly one entry here, by name; `check`
//! enforces that both sides agree. Everything else a case needs from the host is declared
//! in its descriptor: `requires`, `cpuid_clear`, `migrate`, `quirks_off`.

use kvm_bindings::kvm_cpuid_entry2;

use hvprobe_harness::Payload;

pub struct Hook {
    pub name: &'static str,
    /// Edits the CPUID table before KVM_SET_CPUID2.
    pub cpuid_edit: fn(&mut Vec<kvm_cpuid_entry2>),
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

const fn cpuid(name: &'static str, edit: fn(&mut Vec<kvm_cpuid_entry2>)) -> Hook {
    Hook { name, cpuid_edit: edit }
}

pub const HOOKS: &[Hook] = &[
    cpuid("cpu::cpuid_vendor::long64", cut_max_leaves),
    cpuid("cpu::cpuid_vendor::user64", cut_max_leaves),
    cpuid("cpu::cpuid_max_leaf::long64", cut_max_leaves),
    cpuid("cpu::cpuid_max_leaf::user64", cut_max_leaves),
    cpuid("cpu::cpuid_hypervisor_bit_flipped::user64", flip_hypervisor_bit),
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
