//! Host hooks: the host-side half of the test cases that need the host to act before or
//! during the run. A case with `flags = HOST_HOOK` has exactly one entry here, by name;
//! `check` enforces that both sides agree.

use kvm_bindings::kvm_cpuid_entry2;

use hvprobe_harness::Payload;

pub struct Hook {
    pub name: &'static str,
    /// Edits the CPUID table before KVM_SET_CPUID2.
    pub cpuid_edit: Option<fn(&mut Vec<kvm_cpuid_entry2>)>,
}

/// CPUID.1:ECX.MOVBE[22] and RDRAND[30] removed: the guest checks they stay absent.
#[allow(clippy::ptr_arg, reason = "every hook has the CpuidEdit signature, which lets a hook add leaves")]
fn remove_movbe_rdrand(table: &mut Vec<kvm_cpuid_entry2>) {
    for e in table.iter_mut().filter(|e| e.function == 1) {
        e.ecx &= !(1 << 22 | 1 << 30);
    }
}

pub const HOOKS: &[Hook] =
    &[Hook { name: "cpu::cpuid_removed_feature::long64", cpuid_edit: Some(remove_movbe_rdrand) }];

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
