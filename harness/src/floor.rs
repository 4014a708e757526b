//! Floors: each host-side operation hvprobe benchmarks, done again with bare ioctls and
//! nothing else, so that a benchmark can report hvprobe's figure as a ratio to what KVM
//! itself costs. A floor does what the operation needs and no more: no payload, no
//! descriptor tables, no watchdog, no protocol.

use std::time::{Duration, Instant};

use hvprobe_abi::{layout, port};
use kvm_bindings::{CpuId, kvm_msr_entry};
use kvm_ioctls::{Cap, VcpuExit, VcpuFd, VmFd};

use crate::{Error, GuestMemory, Kvm, Vm};

/// Real-mode code at [`BARE_CODE`]: `mov dx, TEST_IO; 1: out dx, al; jmp 1b`.
const BARE_LOOP: [u8; 6] = [0xba, port::TEST_IO as u8, (port::TEST_IO >> 8) as u8, 0xee, 0xeb, 0xfd];
const BARE_CODE: u64 = 0x1000;

/// A VM made with bare ioctls: the same RAM size, one vCPU with the supported CPUID, a
/// real-mode loop of port writes. Field order is drop order.
pub struct BareVm {
    vcpu: VcpuFd,
    _vm: VmFd,
    _memory: GuestMemory,
}

impl BareVm {
    /// KVM_CREATE_VM, the TSS address, guest RAM and its memory slot, KVM_CREATE_VCPU,
    /// KVM_SET_CPUID2, registers, and KVM_RUN to the first exit: the floor of booting a
    /// case. Returns the VM and the time it took.
    pub fn create_to_first_exit(kvm: &Kvm) -> Result<(BareVm, Duration), Error> {
        let start = Instant::now();
        let vm = kvm.kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
        if kvm.kvm.check_extension(Cap::SetTssAddr) {
            vm.set_tss_address(crate::vm::KVM_TSS_ADDR).map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
        }
        let memory = GuestMemory::new(layout::RAM_SIZE)?;
        memory.write(BARE_CODE, &BARE_LOOP)?;
        // SAFETY: the memory outlives the VM: it is declared after the VM fd.
        unsafe { memory.map_as_slot(&vm, 0, 0, 0) }?;
        let mut vcpu = vm.create_vcpu(0).map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        let cpuid = CpuId::from_entries(&kvm.supported_cpuid).map_err(|e| Error::Cpuid(format!("{e:?}")))?;
        vcpu.set_cpuid2(&cpuid).map_err(Error::kvm("KVM_SET_CPUID2"))?;
        let mut sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).map_err(Error::kvm("KVM_SET_SREGS"))?;
        let mut regs = vcpu.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?;
        regs.rip = BARE_CODE;
        regs.rflags = 2;
        vcpu.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))?;
        match vcpu.run() {
            Ok(VcpuExit::IoOut(p, _)) if p == port::TEST_IO => {}
            other => return Err(Error::Floor(format!("bare VM: first exit {other:?}, expected an OUT"))),
        }
        Ok((BareVm { vcpu, _vm: vm, _memory: memory }, start.elapsed()))
    }

    /// `n` more KVM_RUN round trips, each ending at the loop's port write.
    pub fn exits(&mut self, n: u64) -> Result<Duration, Error> {
        bare_exits(&mut self.vcpu, n)
    }

    /// Closes the vCPU and VM fds and unmaps the memory: the floor of tearing a VM down.
    pub fn destroy(self) -> Duration {
        let start = Instant::now();
        drop(self);
        start.elapsed()
    }
}

/// `n` KVM_RUNs, each of which must end in a port write to the port test device.
fn bare_exits(vcpu: &mut VcpuFd, n: u64) -> Result<Duration, Error> {
    let start = Instant::now();
    for _ in 0..n {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(p, _)) if p == port::TEST_IO => {}
            other => return Err(Error::Floor(format!("bare KVM_RUN loop: exit {other:?}, expected an OUT"))),
        }
    }
    Ok(start.elapsed())
}

impl Vm {
    /// `n` KVM_RUNs of vCPU 0 with nothing around them: the floor of the run loop. The
    /// guest must be in a loop of port writes to the port test device.
    pub fn bare_exits(&mut self, n: u64) -> Result<Duration, Error> {
        bare_exits(&mut self.vcpus[0], n)
    }

    /// The save floor: the KVM_GET_* ioctls of [`Vm::save_vcpu`], results dropped.
    pub fn bare_save(&self, index: usize) -> Result<Duration, Error> {
        let entries: Vec<kvm_msr_entry> =
            self.state_msrs()?.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs = kvm_bindings::Msrs::from_entries(&entries).map_err(|e| Error::Floor(format!("{e:?}")))?;
        let v = &self.vcpus[index];
        let start = Instant::now();
        let ok = v.get_regs().is_ok()
            & v.get_sregs().is_ok()
            & v.get_fpu().is_ok()
            & (!self.caps.xsave || v.get_xsave().is_ok())
            & (!self.caps.xcrs || v.get_xcrs().is_ok())
            & v.get_msrs(&mut msrs).is_ok()
            & (!self.irqchip || v.get_lapic().is_ok())
            & v.get_vcpu_events().is_ok()
            & v.get_mp_state().is_ok()
            & v.get_debug_regs().is_ok();
        let took = start.elapsed();
        if !ok {
            return Err(Error::Floor("a KVM_GET_* ioctl of the save floor failed".into()));
        }
        Ok(took)
    }
    /// The restore floor: the KVM_SET_* ioctls of [`Vm::restore_vcpu`], in its order,
    /// with nothing checked but their return values.
    pub fn bare_restore(&self, index: usize, state: &crate::VcpuState) -> Result<Duration, Error> {
        let msrs = kvm_bindings::Msrs::from_entries(&state.msrs).map_err(|e| Error::Floor(format!("{e:?}")))?;
        let v = &self.vcpus[index];
        let start = Instant::now();
        let ok = v.set_sregs(&state.sregs).is_ok()
            & v.set_regs(&state.regs).is_ok()
            & v.set_fpu(&state.fpu).is_ok()
            // SAFETY: the area came from KVM_GET_XSAVE on this host.
            & state.xsave.as_ref().is_none_or(|x| unsafe { v.set_xsave(x) }.is_ok())
            & state.xcrs.as_ref().is_none_or(|x| v.set_xcrs(x).is_ok())
            & v.set_msrs(&msrs).is_ok()
            & state.lapic.as_ref().is_none_or(|l| v.set_lapic(l).is_ok())
            & v.set_vcpu_events(&state.events).is_ok()
            & v.set_mp_state(state.mp_state).is_ok()
            & v.set_debug_regs(&state.debugregs).is_ok();
        let took = start.elapsed();
        if !ok {
            return Err(Error::Floor("a KVM_SET_* ioctl of the restore floor failed".into()));
        }
        Ok(took)
    }
}
