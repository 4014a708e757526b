//! A VM booted for one test case: memory, the machine the case expects, vCPUs.

use std::sync::OnceLock;

use hvprobe_abi::{BENCH_DATAMATCH, layout, port};
use kvm_bindings::{CpuId, kvm_cpuid_entry2};
use kvm_ioctls::{Cap, IoEventAddress, NoDatamatch, VcpuFd, VmFd};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::host::find_cpuid;
use crate::state::StateCaps;
use crate::stats::Stats;
use crate::{Error, GuestMemory, Kvm, Payload, TestCase, machine};

/// A change to the CPUID table before KVM_SET_CPUID2 (a host hook's way to remove a
/// feature, say).
pub type CpuidEdit = Box<dyn FnOnce(&mut Vec<kvm_cpuid_entry2>) + Send>;

/// How to build the VM.
pub struct VmConfig {
    /// vCPUs to create (at least 1). vCPU 0 runs the case; the others start in 64-bit
    /// CPL0 at the runtime's entry, which idles them (`rt::smp`), and `Vm::run` runs each
    /// on its own thread. They need the in-kernel irqchip.
    pub vcpus: u32,
    /// Create the in-kernel irqchip (LAPIC, IOAPIC, PIC) with KVM_CREATE_IRQCHIP.
    pub irqchip: bool,
    pub cpuid_edit: Option<CpuidEdit>,
    /// CPUID bits to clear (a case's declared `cpuid_clear`), after `cpuid_edit`.
    pub cpuid_clear: Vec<hvprobe_abi::CpuidClear>,
    /// Enable KVM_CAP_ENFORCE_PV_FEATURE_CPUID on every vCPU (api.rst 7.27).
    pub enforce_pv_cpuid: bool,
    /// Serve unknown and filtered MSRs in userspace (`hvprobe_abi::user_msr`).
    pub user_msr: bool,
    /// Offer Hyper-V's CPUID leaves at 0x40000000 (KVM's move to 0x40000100).
    pub hyperv: bool,
    /// Map guest RAM into address space 1 as well, the memory the vCPU sees in system
    /// management mode (api.rst 4.35, KVM_CAP_MULTI_ADDRESS_SPACE), so that SMM code runs.
    pub smm: bool,
    /// Register the benchmark ioeventfds (see [`IOEVENTS`]) and the shared-ring device's
    /// doorbell.
    pub ioeventfds: bool,
    /// Create the in-kernel 8254 PIT (KVM_CREATE_PIT2); needs `irqchip`.
    pub pit: bool,
    /// Map the read-only slot at `layout::READONLY_BASE` (KVM_MEM_READONLY).
    pub readonly_slot: bool,
    /// Register the coalesced MMIO and PIO zones of the coalesced FIFO.
    pub coalesced: bool,
    /// KVM quirks to disable with KVM_CAP_DISABLE_QUIRKS2 (api.rst 7.31).
    pub disable_quirks: u64,
    /// Track dirty pages with per-vCPU dirty rings of this many entries
    /// (KVM_CAP_DIRTY_LOG_RING) instead of the bitmap; live migration then uses them.
    pub dirty_ring: Option<u32>,
    /// Start every vCPU's TSC at this value (KVM_SET_MSRS of IA32_TSC before the first
    /// KVM_RUN): a host that has been up for weeks, for the cases that must not care.
    pub tsc_start: Option<u64>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            vcpus: 1,
            irqchip: false,
            cpuid_edit: None,
            cpuid_clear: Vec::new(),
            enforce_pv_cpuid: false,
            user_msr: false,
            hyperv: false,
            smm: false,
            ioeventfds: false,
            pit: false,
            readonly_slot: false,
            coalesced: false,
            disable_quirks: 0,
            dirty_ring: None,
            tsc_start: None,
        }
    }
}

/// The ioeventfds `VmConfig::ioeventfds` registers: name, address, datamatch (a 32-bit
/// value, or any write of any width).
pub const IOEVENTS: [(&str, IoEventAddress, Option<u32>); 4] = [
    ("pio", IoEventAddress::Pio(port::IOEVENTFD as u64), None),
    ("pio_datamatch", IoEventAddress::Pio(port::IOEVENTFD_DATAMATCH as u64), Some(BENCH_DATAMATCH)),
    ("mmio", IoEventAddress::Mmio(layout::IOEVENTFD_MMIO), None),
    ("mmio_datamatch", IoEventAddress::Mmio(layout::IOEVENTFD_MMIO + 8), Some(BENCH_DATAMATCH)),
];

/// The memory slot id of the MEMSLOT service's slot (0 is RAM, 1 the read-only slot).
pub(crate) const HOTPLUG_SLOT: u32 = 2;

/// include/uapi/linux/kvm.h: KVM_GET_SUPPORTED_HV_CPUID on the system fd is available.
pub(crate) const KVM_CAP_SYS_HYPERV_CPUID: u32 = 191;
/// Slot 0 of address space 1, where x86 KVM looks for memory while the vCPU is in SMM
/// (api.rst 4.35: "bits 16-31 of slot specify the address space").
const SMM_ADDRESS_SPACE: u32 = 1 << 16;

/// The table with Hyper-V's leaves (KVM_GET_SUPPORTED_HV_CPUID, api.rst 4.118) at
/// 0x40000000 and KVM's own paravirtual leaves moved to 0x40000100, where KVM also looks
/// for them (Documentation/virt/kvm/x86/cpuid.rst).
fn with_hyperv_leaves(kvm: &kvm_ioctls::Kvm, table: &mut Vec<kvm_cpuid_entry2>) -> Result<(), Error> {
    // _IOWR(KVMIO, 0xc1, struct kvm_cpuid2): the header is 8 bytes.
    const KVM_GET_SUPPORTED_HV_CPUID: u64 = 3 << 30 | 8 << 16 | 0xae << 8 | 0xc1;
    let mut hv = kvm_bindings::CpuId::new(64).map_err(|e| Error::Cpuid(format!("{e:?}")))?;
    // SAFETY: the ioctl writes at most `nent` entries into the buffer the wrapper owns,
    // and `nent` is its capacity.
    let ret = unsafe {
        vmm_sys_util::ioctl::ioctl_with_mut_ptr(kvm, KVM_GET_SUPPORTED_HV_CPUID as _, hv.as_mut_fam_struct_ptr())
    };
    if ret < 0 {
        return Err(Error::Cpuid(format!("KVM_GET_SUPPORTED_HV_CPUID: {}", std::io::Error::last_os_error())));
    }
    for e in table.iter_mut().filter(|e| (0x4000_0000..0x4000_0100).contains(&e.function)) {
        e.function += 0x100;
        if e.function == 0x4000_0100 {
            e.eax = e.eax.max(0x4000_0101);
        }
    }
    table.extend(hv.as_slice().iter().filter(|e| (0x4000_0000..0x4000_0100).contains(&e.function)).copied());
    Ok(())
}

/// include/uapi/linux/kvm.h; not in kvm-bindings.
pub(crate) const KVM_CAP_ENFORCE_PV_FEATURE_CPUID: u32 = 190;

/// IA32_TIME_STAMP_COUNTER (SDM Vol. 4 Table 2-2).
const IA32_TSC: u32 = 0x10;

/// Writes the vCPU's IA32_TSC as the VMM does (host-initiated KVM_SET_MSRS).
fn write_tsc(vcpu: &VcpuFd, value: u64) -> Result<(), Error> {
    crate::state::set_msrs(vcpu, &[kvm_bindings::kvm_msr_entry { index: IA32_TSC, data: value, ..Default::default() }])
}

impl Kvm {
    /// Whether this backend starts a vCPU's TSC where the VMM writes it: a throwaway VM
    /// and vCPU, IA32_TSC written to `value`, read back at `value` or just after it. A
    /// backend that keeps its own TSC makes a "TSC moved" pass the first pass again, and
    /// the pass says so.
    pub fn tsc_write_holds(&self, value: u64) -> Result<bool, Error> {
        let vm = self.kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
        let vcpu = vm.create_vcpu(0).map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        write_tsc(&vcpu, value)?;
        let back = crate::state::get_msr(&vcpu, IA32_TSC)?
            .ok_or_else(|| Error::VcpuState("KVM_GET_MSRS refused IA32_TSC".into()))?;
        // A second at 10 GHz is more than the read can take.
        Ok(back.wrapping_sub(value) < 10_000_000_000)
    }
}

/// Where the identity-map TSS pages of VMX live (KVM_SET_TSS_ADDR): three pages in the
/// hole below the 4 GiB boundary, far from RAM and the test devices.
pub(crate) const KVM_TSS_ADDR: usize = 0xfffb_d000;

/// A booted VM. Field order is drop order: vCPUs and the VM fd go before the memory.
pub struct Vm {
    /// Dirty rings, one per vCPU, when `VmConfig::dirty_ring` asked for them.
    pub(crate) dirty_rings: Vec<crate::dirty::DirtyRing>,
    pub(crate) vcpus: Vec<VcpuFd>,
    pub(crate) stats: Option<Stats>,
    pub(crate) stats_error: Option<String>,
    /// The eventfds of [`IOEVENTS`], when registered, in that order.
    pub(crate) ioevents: Vec<EventFd>,
    /// The shared-ring device, registered with the ioeventfds.
    pub(crate) shared_ring: Option<std::sync::Arc<crate::ring::RingDevice>>,
    /// The coalesced MMIO ring, when the zones are registered.
    pub(crate) coalesced: Option<crate::coalesced::CoalescedRing>,
    /// The VM lives until its last fd closes; this field is declared before `memory` so
    /// that it closes first.
    pub(crate) vm_fd: VmFd,
    pub(crate) memory: GuestMemory,
    /// The read-only slot's backing memory, when mapped (dropped after the VM fd too).
    _readonly: Option<GuestMemory>,
    /// The slot the MEMSLOT service added, at its guest-physical address (dropped after
    /// the VM fd too).
    pub(crate) hotplug: Option<(u64, GuestMemory)>,
    pub(crate) cpuid: Vec<kvm_cpuid_entry2>,
    pub(crate) vcpu_mmap_size: usize,
    pub(crate) irqchip: bool,
    pub(crate) caps: StateCaps,
    pub(crate) msr_index_list: Vec<u32>,
    pub(crate) state_msrs: OnceLock<Vec<u32>>,
    pub(crate) dirty: crate::dirty::DirtyRecord,
    /// The userspace devices' registers, which live as long as the VM.
    pub(crate) devices: crate::devices::Devices,
    /// What the guest set up through services during this case.
    pub(crate) requests: crate::services::Requests,
}

/// Guest RAM as a case starts it: a copy-on-write mapping of the payload's boot image,
/// built once per payload. Where a memfd cannot be made, and on QEMU's TCG, the image is
/// written into anonymous memory instead: with guest RAM mapped private from a memfd,
/// QEMU 7.2's TCG missed a data breakpoint of a nested guest (cpu::exc_db_data_len8) and
/// then crashed with SIGSEGV, twice in two full runs; with anonymous memory the same runs
/// were clean.
fn boot_memory(payload: &Payload) -> Result<GuestMemory, Error> {
    static COW_SAFE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let cow = *COW_SAFE.get_or_init(|| crate::host::Platform::detect().name != "qemu-tcg");
    if let Some(image) = payload.boot_image.get().filter(|_| cow) {
        return GuestMemory::from_image(image);
    }
    let built =
        if cow { crate::memory::Image::build(layout::RAM_SIZE, |mem| machine::build(mem, payload)).ok() } else { None };
    match built {
        Some(image) => GuestMemory::from_image(payload.boot_image.get_or_init(|| std::sync::Arc::new(image))),
        None => {
            let memory = GuestMemory::new(layout::RAM_SIZE)?;
            machine::build(&memory, payload)?;
            Ok(memory)
        }
    }
}

impl Vm {
    /// Creates a VM, loads `payload`, and sets vCPU 0 up to start `case` in its mode.
    pub fn boot(kvm: &Kvm, payload: &Payload, case: &TestCase, config: VmConfig) -> Result<Vm, Error> {
        let vm = kvm.kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
        if kvm.kvm.check_extension(Cap::SetTssAddr) {
            vm.set_tss_address(KVM_TSS_ADDR).map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
        }
        if config.irqchip {
            vm.create_irq_chip().map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
        }
        if config.pit {
            vm.create_pit2(kvm_bindings::kvm_pit_config::default()).map_err(Error::kvm("KVM_CREATE_PIT2"))?;
        }
        let memory = boot_memory(payload)?;
        // SAFETY: the memory outlives the VM: it is declared after the VM fd.
        unsafe { memory.map_as_slot(&vm, 0, 0, 0) }?;
        if config.smm {
            // SAFETY: as above; address space 1 (slot id bits 16-31) maps the same RAM.
            unsafe { memory.map_as_slot(&vm, SMM_ADDRESS_SPACE, 0, 0) }?;
        }
        let readonly = if config.readonly_slot {
            let ro = GuestMemory::new(layout::READONLY_SIZE)?;
            for i in 0..layout::READONLY_SIZE / 8 {
                ro.write_u64(i * 8, hvprobe_abi::readonly_word(i))?;
            }
            // SAFETY: `ro` outlives the VM (field order in `Vm`).
            unsafe { ro.map_as_slot(&vm, 1, layout::READONLY_BASE, kvm_bindings::KVM_MEM_READONLY) }?;
            Some(ro)
        } else {
            None
        };
        let mut ioevents = Vec::new();
        if config.ioeventfds {
            for (_, addr, datamatch) in &IOEVENTS {
                let fd = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::EventFd(e.to_string()))?;
                match datamatch {
                    Some(v) => vm.register_ioevent(&fd, addr, *v),
                    None => vm.register_ioevent(&fd, addr, NoDatamatch),
                }
                .map_err(Error::kvm("KVM_IOEVENTFD"))?;
                ioevents.push(fd);
            }
        }
        let ring = if config.ioeventfds {
            let fd = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::EventFd(e.to_string()))?;
            vm.register_ioevent(&fd, &IoEventAddress::Mmio(layout::RING_DOORBELL), NoDatamatch)
                .map_err(Error::kvm("KVM_IOEVENTFD"))?;
            let stop = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::EventFd(e.to_string()))?;
            Some(std::sync::Arc::new(crate::ring::RingDevice::new(fd, stop)))
        } else {
            None
        };

        let mut cpuid = kvm.supported_cpuid.clone();
        set_hypervisor_present(&mut cpuid);
        if let Some(edit) = config.cpuid_edit {
            edit(&mut cpuid);
        }
        if config.hyperv {
            with_hyperv_leaves(&kvm.kvm, &mut cpuid)?;
        }
        clear_cpuid_bits(&mut cpuid, &config.cpuid_clear);
        if let Some(entries) = config.dirty_ring {
            // Before any vCPU exists (api.rst 8.29); the size is in bytes.
            let bytes = entries * size_of::<kvm_bindings::kvm_dirty_gfn>() as u32;
            let mut cap =
                kvm_bindings::kvm_enable_cap { cap: kvm_bindings::KVM_CAP_DIRTY_LOG_RING, ..Default::default() };
            cap.args[0] = bytes.into();
            vm.enable_cap(&cap).map_err(Error::kvm("KVM_ENABLE_CAP(DIRTY_LOG_RING)"))?;
        }
        if config.user_msr {
            user_msr_setup(&vm)?;
        }
        if config.disable_quirks != 0 {
            let mut cap =
                kvm_bindings::kvm_enable_cap { cap: kvm_bindings::KVM_CAP_DISABLE_QUIRKS2, ..Default::default() };
            cap.args[0] = config.disable_quirks;
            vm.enable_cap(&cap).map_err(Error::kvm("KVM_ENABLE_CAP(DISABLE_QUIRKS2)"))?;
        }
        let mut vcpus = Vec::new();
        let mut rings = Vec::new();
        for id in 0..config.vcpus.max(1) {
            let vcpu = vm.create_vcpu(id.into()).map_err(Error::kvm("KVM_CREATE_VCPU"))?;
            let table = cpuid_for_vcpu(&cpuid, id);
            let fam = CpuId::from_entries(&table).map_err(|e| Error::Cpuid(format!("{e:?}")))?;
            vcpu.set_cpuid2(&fam).map_err(Error::kvm("KVM_SET_CPUID2"))?;
            if config.enforce_pv_cpuid {
                let cap = kvm_bindings::kvm_enable_cap {
                    cap: KVM_CAP_ENFORCE_PV_FEATURE_CPUID,
                    args: [1, 0, 0, 0],
                    ..Default::default()
                };
                vcpu.enable_cap(&cap).map_err(Error::kvm("KVM_ENABLE_CAP(ENFORCE_PV_FEATURE_CPUID)"))?;
            }
            if config.hyperv && config.irqchip {
                // The leaves offer SynIC; a VMM that offers it enables it (api.rst 7.17).
                let cap =
                    kvm_bindings::kvm_enable_cap { cap: kvm_bindings::KVM_CAP_HYPERV_SYNIC2, ..Default::default() };
                vcpu.enable_cap(&cap).map_err(Error::kvm("KVM_ENABLE_CAP(HYPERV_SYNIC2)"))?;
            }
            if let Some(entries) = config.dirty_ring {
                rings.push(crate::dirty::DirtyRing::map(&vcpu, entries)?);
            }
            vcpus.push(vcpu);
        }
        // Once every vCPU exists, the same value on each, as a VMM resets them: KVM takes
        // writes of one value within a second as the TSCs being synchronized.
        if let Some(tsc) = config.tsc_start {
            for vcpu in &vcpus {
                write_tsc(vcpu, tsc)?;
            }
        }
        let aps_run_runtime = case.flags & hvprobe_abi::flags::AP_WAIT_SIPI == 0;
        for (index, ap) in vcpus.iter().enumerate().skip(1).filter(|_| aps_run_runtime) {
            let mut sregs = ap.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
            let regs = machine::ap_state(&mut sregs, payload, case, index as u16);
            ap.set_sregs(&sregs).map_err(Error::kvm("KVM_SET_SREGS"))?;
            ap.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))?;
            // With the in-kernel irqchip an AP waits for INIT/SIPI; this one starts now.
            ap.set_mp_state(kvm_bindings::kvm_mp_state { mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE })
                .map_err(Error::kvm("KVM_SET_MP_STATE"))?;
        }
        let coalesced = if config.coalesced {
            vm.register_coalesced_mmio(IoEventAddress::Mmio(layout::COALESCED_MMIO), 4096)
                .map_err(Error::kvm("KVM_REGISTER_COALESCED_MMIO"))?;
            // Four ports, so that a 32-bit OUT fits the zone (KVM coalesces an access only
            // when all of it lies inside).
            vm.register_coalesced_mmio(IoEventAddress::Pio(port::COALESCED_PIO.into()), 4)
                .map_err(Error::kvm("KVM_REGISTER_COALESCED_MMIO (PIO)"))?;
            let page = kvm.kvm.check_extension_int(Cap::CoalescedMmio).max(0) as usize;
            Some(crate::coalesced::CoalescedRing::map(&vcpus[0], page)?)
        } else {
            None
        };
        let boot = &vcpus[0];
        let mut sregs = boot.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        let regs = machine::cpu_state(&mut sregs, payload, case);
        boot.set_sregs(&sregs).map_err(Error::kvm("KVM_SET_SREGS"))?;
        boot.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))?;
        let (stats, stats_error) = match Stats::open(boot) {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let cpuid = cpuid_for_vcpu(&cpuid, 0);
        Ok(Vm {
            dirty_rings: rings,
            vcpus,
            stats,
            stats_error,
            ioevents,
            shared_ring: ring,
            coalesced,
            vm_fd: vm,
            memory,
            _readonly: readonly,
            hotplug: None,
            cpuid,
            vcpu_mmap_size: kvm.vcpu_mmap_size,
            irqchip: config.irqchip,
            caps: kvm.state_caps,
            msr_index_list: kvm.msr_index_list.clone(),
            state_msrs: OnceLock::new(),
            dirty: Default::default(),
            devices: Default::default(),
            requests: Default::default(),
        })
    }

    /// Guest memory, for checks that compare two VMs or set a flag between runs.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// How many times each registered ioeventfd of [`IOEVENTS`] fired since the last call
    /// (reading an eventfd resets it), by name.
    pub fn ioevent_counts(&self) -> Vec<(&'static str, u64)> {
        self.ioevents.iter().zip(IOEVENTS).map(|(fd, (name, ..))| (name, fd.read().unwrap_or(0))).collect()
    }

    /// The CPUID entry (leaf, subleaf) vCPU 0 was given with KVM_SET_CPUID2.
    pub fn cpuid_as_set(&self, leaf: u32, subleaf: u32) -> Option<kvm_cpuid_entry2> {
        find_cpuid(&self.cpuid, leaf, subleaf)
    }
}

/// CPUID.1:ECX[31], "hypervisor present": KVM_GET_SUPPORTED_CPUID leaves it to the VMM
/// (clear on kvm_amd of Linux 6.1, set on PVM), and every VMM sets it, so that a guest
/// knows to look for leaf 0x40000000. hvprobe sets it too, so the guest's view is the same
/// on every backend.
fn set_hypervisor_present(table: &mut [kvm_cpuid_entry2]) {
    for e in table.iter_mut().filter(|e| e.function == 1) {
        e.ecx |= 1 << 31;
    }
}

/// Exits for unknown and filtered MSRs (KVM_CAP_X86_USER_SPACE_MSR, api.rst 7.21) and
/// the filter of `hvprobe_abi::user_msr` (KVM_X86_SET_MSR_FILTER, api.rst 4.126).
fn user_msr_setup(vm: &VmFd) -> Result<(), Error> {
    use hvprobe_abi::user_msr::{FILTERED, WRITE_FILTERED};
    use kvm_ioctls::{MsrExitReason, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags};
    let reasons = MsrExitReason::Unknown | MsrExitReason::Filter;
    let cap = kvm_bindings::kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR,
        args: [reasons.bits().into(), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap).map_err(Error::kvm("KVM_ENABLE_CAP(X86_USER_SPACE_MSR)"))?;
    // A 0 bit denies the operations the range's flags name.
    let deny = [0u8];
    let ranges = [
        MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base: FILTERED,
            msr_count: 1,
            bitmap: &deny,
        },
        MsrFilterRange { flags: MsrFilterRangeFlags::WRITE, base: WRITE_FILTERED, msr_count: 1, bitmap: &deny },
    ];
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges).map_err(Error::kvm("KVM_X86_SET_MSR_FILTER"))
}

/// Clears the bits a case declared absent (`TestCase::cpuid_clear`).
fn clear_cpuid_bits(table: &mut [kvm_cpuid_entry2], edits: &[hvprobe_abi::CpuidClear]) {
    for edit in edits {
        for e in table.iter_mut().filter(|e| edit.applies_to(e.function, e.index)) {
            let reg = match edit.reg {
                hvprobe_abi::CpuidClear::EAX => &mut e.eax,
                hvprobe_abi::CpuidClear::EBX => &mut e.ebx,
                hvprobe_abi::CpuidClear::ECX => &mut e.ecx,
                _ => &mut e.edx,
            };
            *reg &= !edit.mask;
        }
    }
}

/// The table for one vCPU: its initial APIC ID in CPUID.1:EBX[31:24] and its x2APIC ID in
/// EDX of leaves 0xB and 0x1F (SDM Vol. 2A, CPUID).
fn cpuid_for_vcpu(table: &[kvm_cpuid_entry2], id: u32) -> Vec<kvm_cpuid_entry2> {
    let mut t = table.to_vec();
    for e in &mut t {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | (id << 24),
            0xb | 0x1f => e.edx = id,
            _ => {}
        }
    }
    t
}
