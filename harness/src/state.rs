//! A vCPU's architectural state as KVM exposes it, saved and restored with the
//! KVM_GET_* and KVM_SET_* ioctls (Documentation/virt/kvm/api.rst, section 4).

use kvm_bindings::{
    Msrs, kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events,
    kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Cap, VcpuFd};

use crate::{Error, Kvm, Vm};

/// One vCPU's state: everything KVM_GET_* returns for it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    #[serde(with = "fpu_bytes")]
    pub fpu: kvm_fpu,
    /// KVM_GET_XSAVE, when KVM_CAP_XSAVE is offered.
    pub xsave: Option<kvm_xsave>,
    /// KVM_GET_XCRS, when KVM_CAP_XCRS is offered.
    pub xcrs: Option<kvm_xcrs>,
    /// Every MSR of KVM_GET_MSR_INDEX_LIST that KVM_GET_MSRS reads back.
    pub msrs: Vec<kvm_msr_entry>,
    /// The LAPIC registers, when the VM has the in-kernel irqchip.
    pub lapic: Option<kvm_lapic_state>,
    pub events: kvm_vcpu_events,
    pub mp_state: kvm_mp_state,
    pub debugregs: kvm_debugregs,
}

/// The MSRs KVM_GET_MSRS can read on this vCPU, from the host's index list. KVM_GET_MSRS
/// stops at the first MSR it cannot read and returns how many it read, so an unreadable
/// index is dropped and the read resumes after it.
fn readable_msrs(index_list: &[u32], vcpu: &VcpuFd) -> Result<Vec<u32>, Error> {
    let mut todo: Vec<u32> = index_list.to_vec();
    let mut readable = Vec::with_capacity(todo.len());
    while !todo.is_empty() {
        let entries: Vec<kvm_msr_entry> =
            todo.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| Error::VcpuState(format!("MSR list: {e:?}")))?;
        let n = vcpu.get_msrs(&mut msrs).map_err(Error::kvm("KVM_GET_MSRS"))?;
        readable.extend_from_slice(&todo[..n]);
        todo.drain(..(n + 1).min(todo.len()));
    }
    Ok(readable)
}

impl Vm {
    fn vcpu(&self, index: usize) -> Result<&VcpuFd, Error> {
        self.vcpus.get(index).ok_or(Error::NoVcpu(index))
    }

    /// The MSRs a saved state holds: those of KVM_GET_MSR_INDEX_LIST that vCPU 0 reads
    /// back, found on first use.
    pub fn state_msrs(&self) -> Result<&[u32], Error> {
        if let Some(list) = self.state_msrs.get() {
            return Ok(list);
        }
        let list = readable_msrs(&self.msr_index_list, self.vcpu(0)?)?;
        Ok(self.state_msrs.get_or_init(|| list))
    }

    /// Saves vCPU `index`'s state.
    pub fn save_vcpu(&self, index: usize) -> Result<VcpuState, Error> {
        let vcpu = self.vcpu(index)?;
        let entries: Vec<kvm_msr_entry> =
            self.state_msrs()?.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| Error::VcpuState(format!("MSR list: {e:?}")))?;
        let n = vcpu.get_msrs(&mut msrs).map_err(Error::kvm("KVM_GET_MSRS"))?;
        if n != entries.len() {
            return Err(Error::VcpuState(format!("KVM_GET_MSRS read {n} of {} MSRs it read before", entries.len())));
        }
        Ok(VcpuState {
            regs: vcpu.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?,
            fpu: vcpu.get_fpu().map_err(Error::kvm("KVM_GET_FPU"))?,
            xsave: self.caps.xsave.then(|| vcpu.get_xsave()).transpose().map_err(Error::kvm("KVM_GET_XSAVE"))?,
            xcrs: self.caps.xcrs.then(|| vcpu.get_xcrs()).transpose().map_err(Error::kvm("KVM_GET_XCRS"))?,
            msrs: msrs.as_slice().to_vec(),
            lapic: self.irqchip.then(|| vcpu.get_lapic()).transpose().map_err(Error::kvm("KVM_GET_LAPIC"))?,
            events: vcpu.get_vcpu_events().map_err(Error::kvm("KVM_GET_VCPU_EVENTS"))?,
            mp_state: vcpu.get_mp_state().map_err(Error::kvm("KVM_GET_MP_STATE"))?,
            debugregs: vcpu.get_debug_regs().map_err(Error::kvm("KVM_GET_DEBUGREGS"))?,
        })
    }

    /// Restores vCPU `index` to `state`, in the order QEMU and Firecracker use: sregs
    /// before regs, MSRs after sregs (EFER), the LAPIC and events last.
    pub fn restore_vcpu(&self, index: usize, state: &VcpuState) -> Result<(), Error> {
        let vcpu = self.vcpu(index)?;
        vcpu.set_sregs(&state.sregs).map_err(Error::kvm("KVM_SET_SREGS"))?;
        vcpu.set_regs(&state.regs).map_err(Error::kvm("KVM_SET_REGS"))?;
        vcpu.set_fpu(&state.fpu).map_err(Error::kvm("KVM_SET_FPU"))?;
        if let Some(xsave) = &state.xsave {
            // SAFETY: `xsave` came from KVM_GET_XSAVE on a vCPU of the same host, so it is
            // a complete legacy-size XSAVE area.
            unsafe { vcpu.set_xsave(xsave) }.map_err(Error::kvm("KVM_SET_XSAVE"))?;
        }
        if let Some(xcrs) = &state.xcrs {
            vcpu.set_xcrs(xcrs).map_err(Error::kvm("KVM_SET_XCRS"))?;
        }
        set_msrs(vcpu, &state.msrs)?;
        if let Some(lapic) = &state.lapic {
            vcpu.set_lapic(lapic).map_err(Error::kvm("KVM_SET_LAPIC"))?;
        }
        vcpu.set_vcpu_events(&state.events).map_err(Error::kvm("KVM_SET_VCPU_EVENTS"))?;
        vcpu.set_mp_state(state.mp_state).map_err(Error::kvm("KVM_SET_MP_STATE"))?;
        vcpu.set_debug_regs(&state.debugregs).map_err(Error::kvm("KVM_SET_DEBUGREGS"))?;
        Ok(())
    }
}

/// KVM_SET_MSRS of `entries`. KVM stops at the first MSR it refuses. Some MSRs read fine
/// but refuse even their own value in some configurations (upstream KVM refuses
/// MSR_KVM_ASYNC_PF_INT = 0 without an in-kernel LAPIC: kvm_pv_enable_async_pf_int); such
/// an MSR is skipped when the vCPU already holds the saved value, so the restored state is
/// still exact. Any other refusal is an error naming the MSR.
pub(crate) fn set_msrs(vcpu: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), Error> {
    let mut rest = entries;
    while !rest.is_empty() {
        let msrs = Msrs::from_entries(rest).map_err(|e| Error::VcpuState(format!("MSR list: {e:?}")))?;
        let n = vcpu.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
        if n == rest.len() {
            break;
        }
        let refused = rest[n];
        let current = get_msr(vcpu, refused.index)?;
        if current != Some(refused.data) {
            return Err(Error::VcpuState(format!(
                "KVM_SET_MSRS refused MSR {:#x} = {:#x} (the vCPU holds {current:#x?})",
                refused.index, refused.data
            )));
        }
        rest = &rest[n + 1..];
    }
    Ok(())
}

/// One MSR as the VMM reads it (host-initiated KVM_GET_MSRS); None where KVM refuses it.
pub(crate) fn get_msr(vcpu: &VcpuFd, index: u32) -> Result<Option<u64>, Error> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry { index, ..Default::default() }])
        .map_err(|e| Error::VcpuState(format!("MSR list: {e:?}")))?;
    let read = vcpu.get_msrs(&mut msrs).map_err(Error::kvm("KVM_GET_MSRS"))?;
    Ok(msrs.as_slice().first().filter(|_| read == 1).map(|e| e.data))
}

/// Which optional state KVM offers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StateCaps {
    pub xsave: bool,
    pub xcrs: bool,
}

impl StateCaps {
    pub fn of(kvm: &Kvm) -> StateCaps {
        StateCaps { xsave: kvm.kvm.check_extension(Cap::Xsave), xcrs: kvm.kvm.check_extension(Cap::Xcrs) }
    }
}

/// The host's MSR index list (KVM_GET_MSR_INDEX_LIST).
pub(crate) fn msr_index_list(kvm: &kvm_ioctls::Kvm) -> Result<Vec<u32>, Error> {
    Ok(kvm.get_msr_index_list().map_err(Error::kvm("KVM_GET_MSR_INDEX_LIST"))?.as_slice().to_vec())
}

/// kvm_fpu has no serde support in kvm-bindings: it is written as its bytes.
mod fpu_bytes {
    use kvm_bindings::kvm_fpu;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(fpu: &kvm_fpu, s: S) -> Result<S::Ok, S::Error> {
        // SAFETY: kvm_fpu is a repr(C) struct of integer arrays with no padding; viewing it
        // as bytes reads initialised memory only.
        let bytes = unsafe { std::slice::from_raw_parts((fpu as *const kvm_fpu).cast::<u8>(), size_of::<kvm_fpu>()) };
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<kvm_fpu, D::Error> {
        let bytes = Vec::<u8>::deserialize(d)?;
        if bytes.len() != size_of::<kvm_fpu>() {
            return Err(serde::de::Error::invalid_length(bytes.len(), &"the size of kvm_fpu"));
        }
        let mut fpu = kvm_fpu::default();
        // SAFETY: every byte pattern is a valid kvm_fpu (integers only), and the lengths
        // were just checked to match.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut fpu as *mut kvm_fpu).cast::<u8>(), bytes.len()) };
        Ok(fpu)
    }
}
