//! The contract between hvprobe's guest payloads and its host harness.
//!
//! Both sides compile this crate: the guest runtime (for `x86_64-unknown-none`) to lay
//! out its test table and protocol messages, the harness (for the host) to build the
//! machine the guest expects and to decode what the guest wrote. Everything here is
//! `#[repr(C)]` plain data with fixed offsets; the host never trusts a value it decodes
//! and bounds-checks every guest-supplied address and length.
#![no_std]

use core::mem::{offset_of, size_of};

/// Guest-physical memory layout the harness builds before the first instruction runs.
///
/// The harness writes the GDT, TSS, IDT and page tables; the guest does no set-up of its
/// own, because every CPL0 instruction may be emulated (on PVM, about 1 us each).
pub mod layout {
    /// Global descriptor table (see [`super::selector`]).
    pub const GDT: u64 = 0x1000;
    /// Interrupt descriptor table for long mode: 256 gates, 16 bytes each.
    pub const IDT: u64 = 0x2000;
    /// The 64-bit task-state segment (RSP0 and IST1).
    pub const TSS: u64 = 0x3000;
    /// 16- and 32-bit code and data (`.text.low`, `.data.low`) are linked here, below 64 KiB,
    /// so that real-mode code runs with CS = 0.
    pub const LOW_START: u64 = 0x8000;
    pub const LOW_END: u64 = 0x10000;
    /// Page tables: PML4, one PDPT, four page directories (0-4 GiB in 2 MiB pages) and one
    /// page table that maps the first 2 MiB in 4 KiB pages.
    pub const PML4: u64 = 0x10000;
    pub const PDPT: u64 = 0x11000;
    pub const PD0: u64 = 0x12000;
    pub const PT0: u64 = 0x16000;
    /// Stacks (the value is the top; stacks grow down).
    pub const USER_STACK_TOP: u64 = 0x60000;
    pub const KERNEL_STACK_TOP: u64 = 0x80000;
    pub const IST1_STACK_TOP: u64 = 0x88000;
    /// TSS.RSP0: where an interrupt or exception from CPL3 starts on the CPL0 side. Its own
    /// region, so that a CPL0 case that drops to CPL3 keeps its kernel stack intact.
    pub const RSP0_STACK_TOP: u64 = 0x90000;
    /// Real-mode and 32-bit stack top (below the low text).
    pub const LOW_STACK_TOP: u64 = 0x7ff0;
    /// The main image (`.text`, `.rodata`, `.data`, `.bss`) is linked here.
    pub const IMAGE_START: u64 = 0x100000;
    /// Everything the guest loads must end below this address (the 4 KiB-mapped region).
    pub const IMAGE_END: u64 = 0x200000;
    /// Guest RAM size. Above it, up to 4 GiB, everything is identity-mapped MMIO space.
    pub const RAM_SIZE: u64 = 0x400000;
    /// The MMIO test device: a 256-byte register file, mirrored over one 4 KiB page.
    pub const MMIO_TEST_BASE: u64 = 0xc000_0000;
    pub const MMIO_TEST_SIZE: u64 = 0x1000;
    /// The protocol's MMIO doorbell: a 32-bit write of a message's address, like
    /// [`super::port::PROTOCOL`]. CPL3 code uses it so that reporting never depends on
    /// RFLAGS.IOPL being honoured (that is a test of its own).
    pub const PROTOCOL_MMIO: u64 = 0xc000_1000;
    /// Benchmark ioeventfds on MMIO: any write of any width to `IOEVENTFD_MMIO` (no
    /// datamatch), and a 32-bit write of [`super::BENCH_DATAMATCH`] to
    /// `IOEVENTFD_MMIO + 8`. KVM signals an eventfd and resumes the guest without an exit
    /// to userspace.
    pub const IOEVENTFD_MMIO: u64 = 0xc000_2000;
    /// The MMIO FIFO device (a `full` path for moving bytes): a write of any width to
    /// `MMIO_FIFO` appends its bytes, little-endian, to the host's sink 1; a read of
    /// `MMIO_FIFO + 8` returns 1 (ready).
    pub const MMIO_FIFO: u64 = 0xc000_3000;
    /// The coalesced FIFO's MMIO page, a coalesced MMIO zone (api.rst 4.116) for cases
    /// that require COALESCED: a write of any width to `COALESCED_MMIO` appends its bytes
    /// to the host's sink 3 without an exit (KVM rings them up, the host applies them at
    /// its next exit); a 32-bit read of `COALESCED_MMIO + 8` (not coalesced: reads
    /// always exit) returns the sink's byte count.
    pub const COALESCED_MMIO: u64 = 0xc000_6000;
    /// Two more pages of the MMIO test device's register file (mirrored, like its first
    /// page), so that one access can cross a page boundary inside one device.
    pub const MMIO_CROSS: u64 = 0xc000_4000;
    pub const MMIO_CROSS_SIZE: u64 = 0x2000;
    /// Default xAPIC base.
    pub const APIC_BASE: u64 = 0xfee0_0000;
    /// A read-only memory slot (KVM_MEM_READONLY) for cases that require READONLY_MEM:
    /// one page, the u64 at offset 8i holding [`super::readonly_word`](i). Reads are
    /// memory; writes exit to the VMM as MMIO and change nothing.
    pub const READONLY_BASE: u64 = 0xd000_0000;
    pub const READONLY_SIZE: u64 = 0x1000;
    /// The window where the MEMSLOT service adds, moves and deletes a memory slot of
    /// [`HOTPLUG_SIZE`] bytes while the guest runs. Unmapped (absent MMIO) otherwise.
    pub const HOTPLUG_BASE: u64 = 0xe800_0000;
    pub const HOTPLUG_WINDOW: u64 = 0x10_0000;
    pub const HOTPLUG_SIZE: u64 = 0x2000;
    /// The shared-ring device (the `para` path for moving bytes), one page of RAM: the
    /// guest writes bytes at `RING + RING_DATA + (produced % RING_SIZE)`, then the
    /// free-running u32 count of bytes produced at `RING + RING_PRODUCED`, then writes
    /// anything to [`RING_DOORBELL`] (an ioeventfd: no exit to userspace; MMIO, so that
    /// CPL3 code can ring it without IOPL). A host thread
    /// copies the new bytes to its sink 2 and stores its count of bytes consumed at
    /// `RING + RING_CONSUMED`.
    pub const RING: u64 = 0x20_0000;
    pub const RING_PRODUCED: u64 = 0;
    pub const RING_CONSUMED: u64 = 0x40;
    pub const RING_DATA: u64 = 0x100;
    pub const RING_SIZE: u32 = 0x800;
    pub const RING_DOORBELL: u64 = 0xc000_2100;
    /// RAM the `state` cases own: memory patterns, dirty-logging pages, kvmclock pages.
    /// Nothing else uses it, so its dirty pages are exactly the ones those cases write.
    pub const STATE_REGION: u64 = 0x300000;
    pub const STATE_REGION_SIZE: u64 = 0x100000;
    /// The last page of the state region: the host writes 1 here when it has finished
    /// moving a running guest (a live migration is over, every random pause was taken).
    pub const HOST_DONE_FLAG: u64 = STATE_REGION + STATE_REGION_SIZE - 0x1000;
    /// Stacks of the application processors (vCPUs 1 to [`MAX_VCPUS`] - 1), 16 KiB each,
    /// above the RSP0 stack.
    pub const AP_STACKS: u64 = 0x90000;
    pub const AP_STACK_SIZE: u64 = 0x4000;
    pub const MAX_VCPUS: u16 = 5;

    /// The stack top of vCPU `index` (1 or more).
    pub const fn ap_stack_top(index: u16) -> u64 {
        AP_STACKS + AP_STACK_SIZE * index as u64
    }
}

/// Segment selectors of the harness-built GDT.
/// Caps on what a guest can make the host create on its behalf (ARCHITECTURE,
/// "a guest can never hang, crash or corrupt the host side").
pub mod limits {
    /// Distinct GSIs with an irqfd per VM (IRQFD, IRQFD_RESAMPLE): two eventfds each at
    /// most. The IOAPIC has 24 pins; routed MSIs add a few.
    pub const MAX_IRQFDS: usize = 64;
    /// Console bytes the host keeps per run; later bytes are counted, not kept.
    pub const CONSOLE_CAPTURE: usize = 64 * 1024;
    /// Notes about accesses to absent devices kept per run.
    pub const NOTES: usize = 64;
    /// Log lines kept per run, and their bytes in all; later lines are counted as dropped.
    pub const LOG_LINES: usize = 1000;
    pub const LOG_BYTES: usize = 256 * 1024;
    /// Metrics kept per run; later ones are counted as dropped.
    pub const METRICS: usize = 1000;
}

/// The per-vCPU KVM statistics the KVM_STAT service reads, by number.
pub mod kvm_stat {
    /// Hypercalls KVM handled (`hypercalls`), whatever their result.
    pub const HYPERCALLS: u64 = 0;
    /// Exits to KVM (`exits`).
    pub const EXITS: u64 = 1;
    /// Instructions KVM's emulator ran (`insn_emulation`).
    pub const INSN_EMULATION: u64 = 2;
    /// The statistics' names in KVM_GET_STATS_FD, indexed by the numbers above.
    pub const NAMES: [&str; 3] = ["hypercalls", "exits", "insn_emulation"];
}

/// CPUID bits that host hooks clear from the table, so that a case can check the guest
/// stops seeing them.
pub mod cpuid_removed {
    /// CPUID.1:ECX bits every x86-64 host with KVM offers (SSE3, SSSE3, CX16, SSE4.1,
    /// SSE4.2, POPCNT) and two that KVM may offer (MOVBE, RDRAND). Because the first six
    /// are always there, a guest that still sees any of them shows the table was ignored
    /// whatever the host CPU model.
    pub const LEAF1_ECX: u32 = 1 << 0 | 1 << 9 | 1 << 13 | 1 << 19 | 1 << 20 | 1 << 22 | 1 << 23 | 1 << 30;
    /// The maximum basic and extended leaves a hook cuts the table to: below those of any
    /// CPU KVM runs on (leaf 0xd for XSAVE, 0x8000001f and up on current AMD and Intel),
    /// so a guest that reads the host's maxima shows the table was ignored.
    pub const MAX_BASIC_LEAF: u32 = 0x7;
    pub const MAX_EXTENDED_LEAF: u32 = 0x8000_0008;
    /// The bits whose absence removes IA32_SPEC_CTRL: CPUID.7.0:EDX IBRS/IBPB (26), STIBP
    /// (27), SSBD (31) (SDM Vol. 4, Table 2-2, IA32_SPEC_CTRL), and CPUID 8000_0008h:EBX
    /// IBRS (14), STIBP (15), SSBD (24) (APM Vol. 3, Appendix E.4.7). VIRT_SSBD (25)
    /// enumerates another MSR, VIRT_SPEC_CTRL.
    pub const SPEC_CTRL_LEAF7_EDX: u32 = 1 << 26 | 1 << 27 | 1 << 31;
    pub const SPEC_CTRL_EXT8_EBX: u32 = 1 << 14 | 1 << 15 | 1 << 24;
    /// The bits whose absence removes IA32_PRED_CMD: CPUID.7.0:EDX[26] (IBRS/IBPB) and
    /// CPUID 8000_0008h:EBX[12] (IBPB).
    pub const PRED_CMD_LEAF7_EDX: u32 = 1 << 26;
    pub const PRED_CMD_EXT8_EBX: u32 = 1 << 12;
    /// The bit whose absence removes IA32_FLUSH_CMD: CPUID.7.0:EDX[28] (L1D_FLUSH).
    pub const FLUSH_CMD_LEAF7_EDX: u32 = 1 << 28;
}

pub mod selector {
    pub const CODE64: u16 = 0x08;
    pub const DATA: u16 = 0x10;
    pub const CODE32: u16 = 0x18;
    /// User data (DPL 3), placed before user code as SYSRET expects.
    pub const USER_DATA: u16 = 0x20 | 3;
    pub const USER_CODE64: u16 = 0x28 | 3;
    pub const TSS: u16 = 0x30;
    /// Number of 8-byte GDT slots (the TSS descriptor takes two).
    pub const GDT_ENTRIES: usize = 8;
}

/// I/O ports the harness implements.
pub mod port {
    /// Console: each byte written is appended to the run's console text.
    pub const CONSOLE: u16 = 0xe9;
    /// Protocol: a 32-bit write of the guest-physical address of a message.
    pub const PROTOCOL: u16 = 0x500;
    /// The port test device: an 8-byte register file at ports 0x510-0x517.
    pub const TEST_IO: u16 = 0x510;
    pub const TEST_IO_LEN: u16 = 8;
    /// Benchmark ioeventfds on port I/O: any OUT to `IOEVENTFD` (no datamatch), and a
    /// 32-bit OUT of [`super::BENCH_DATAMATCH`] to `IOEVENTFD_DATAMATCH`.
    pub const IOEVENTFD: u16 = 0x520;
    pub const IOEVENTFD_DATAMATCH: u16 = 0x524;
    /// The coalesced FIFO's ports, a coalesced PIO zone: an OUT to `COALESCED_PIO`
    /// appends to sink 3 like [`super::layout::COALESCED_MMIO`]; a 32-bit IN from
    /// `COALESCED_PIO + 4` returns the sink's byte count.
    pub const COALESCED_PIO: u16 = 0x530;
    /// A 16550-like UART (COM1), the `full` path for moving bytes: THR (`UART`) appends
    /// to the host's sink 0, LSR (`UART + 5`) reads 0x60 (transmitter empty).
    pub const UART: u16 = 0x3f8;
    /// The ACPI power-management timer (a 32-bit TMR_VAL_EXT counter at 3.579545 MHz),
    /// the `full` path for reading the time.
    pub const PM_TIMER: u16 = 0x608;
    /// The master 8259 PIC's data port (its IMR): with the in-kernel irqchip, KVM answers
    /// it without an exit to userspace.
    pub const PIC_MASTER_DATA: u16 = 0x21;
}

/// The u64 at offset 8 * `i` of the read-only slot.
pub const fn readonly_word(i: u64) -> u64 {
    0x5244_4f4e_4c59_0000 | i
}

/// The host's byte sinks (service [`proto::service::SINK`]): where each way of moving
/// bytes delivers them.
pub mod sink {
    /// The UART's THR ([`super::port::UART`]).
    pub const UART: u64 = 0;
    /// The MMIO FIFO ([`super::layout::MMIO_FIFO`]).
    pub const FIFO: u64 = 1;
    /// The shared ring ([`super::layout::RING`]), served by a host thread.
    pub const RING: u64 = 2;
    /// The coalesced FIFO ([`super::layout::COALESCED_MMIO`], [`super::port::COALESCED_PIO`]).
    pub const COALESCED: u64 = 3;
    pub const COUNT: usize = 4;
}

/// Ticks per second of [`port::PM_TIMER`] (ACPI 6.5, 4.8.3.3: 3.579545 MHz).
pub const PM_TIMER_HZ: u64 = 3_579_545;

/// FNV-1a, 32-bit: the digest the host's byte sinks keep and the guest recomputes, so
/// that a block moved through any path can be checked byte for byte in one number (which
/// also fits a metric's f64 exactly).
pub const fn fnv1a32(mut hash: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u32;
        hash = hash.wrapping_mul(0x0100_0193);
        i += 1;
    }
    hash
}

/// The FNV-1a offset basis: the digest of nothing.
pub const FNV1A32_INIT: u32 = 0x811c_9dc5;

/// The value a datamatch ioeventfd of the benchmarks fires on.
pub const BENCH_DATAMATCH: u32 = 0x600d_cafe;

/// CPU mode a test case starts in. The harness builds the mode; the guest never switches.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// 16-bit real mode, CS = DS = SS = 0.
    Real16 = 1,
    /// 32-bit protected mode, flat segments, no paging.
    Prot32 = 2,
    /// 64-bit long mode at CPL 0, identity-mapped.
    Long64 = 3,
    /// 64-bit long mode at CPL 3 (IOPL 3 so the protocol port works).
    User64 = 4,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Real16, Mode::Prot32, Mode::Long64, Mode::User64];

    pub fn from_u8(value: u8) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| *m as u8 == value)
    }

    /// The stable name used in test names and results files.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Real16 => "real16",
            Mode::Prot32 => "prot32",
            Mode::Long64 => "long64",
            Mode::User64 => "user64",
        }
    }
}

/// The areas a test's name may start with: the first part of `area::case::variant`.
pub const AREAS: [&str; 6] = ["cpu", "irq", "io", "pv", "state", "hostile"];

/// Which way the behaviour under test is reached: the hypervisor traps and emulates an
/// unmodified interface (`full`), the guest asks through a paravirtual one (`para`), or
/// the CPU does it itself (`hw`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// An unmodified hardware interface the hypervisor traps and emulates.
    Full = 1,
    /// A paravirtual interface (hypercalls, kvmclock, ...).
    Para = 2,
    /// What the CPU virtualizes itself.
    Hw = 3,
}

impl Path {
    pub const ALL: [Path; 3] = [Path::Full, Path::Para, Path::Hw];
    /// [`Path::name`] of each of [`Path::ALL`].
    pub const NAMES: [&'static str; 3] = ["full", "para", "hw"];

    pub fn from_u8(value: u8) -> Option<Path> {
        Path::ALL.into_iter().find(|p| *p as u8 == value)
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize - 1]
    }
}

/// What a test case needs from the host; checked before booting, a miss is a `skip`.
pub mod requires {
    /// The in-kernel irqchip (LAPIC, IOAPIC, PIC): KVM_CAP_IRQCHIP.
    pub const IRQCHIP: u64 = 1 << 0;
    /// CPUID.1:ECX.x2APIC[21].
    pub const X2APIC: u64 = 1 << 1;
    /// The KVM paravirtual signature leaf 0x40000000 = "KVMKVMKVM".
    pub const KVM_PV: u64 = 1 << 2;
    /// CPUID.1:ECX.TSC_DEADLINE[24].
    pub const TSC_DEADLINE: u64 = 1 << 3;
    /// Ioeventfds (KVM_CAP_IOEVENTFD); the harness registers those of
    /// [`super::port::IOEVENTFD`] and [`super::layout::IOEVENTFD_MMIO`].
    pub const IOEVENTFD: u64 = 1 << 4;
    /// The per-vCPU dirty ring (KVM_CAP_DIRTY_LOG_RING).
    pub const DIRTY_RING: u64 = 1 << 5;
    /// The in-kernel 8254 PIT (KVM_CAP_PIT2); the harness creates it with the irqchip.
    pub const PIT: u64 = 1 << 6;
    /// No in-kernel irqchip: the host injects interrupts with KVM_INTERRUPT.
    pub const NO_IRQCHIP: u64 = 1 << 7;
    /// Read-only memory slots (KVM_CAP_READONLY_MEM); the harness maps
    /// [`super::layout::READONLY_BASE`].
    pub const READONLY_MEM: u64 = 1 << 8;
    /// Coalesced MMIO and PIO (KVM_CAP_COALESCED_MMIO, KVM_CAP_COALESCED_PIO); the
    /// harness registers [`super::layout::COALESCED_MMIO`] and [`super::port::COALESCED_PIO`].
    pub const COALESCED: u64 = 1 << 9;
    /// Host-side debugging of the vCPU (KVM_CAP_SET_GUEST_DEBUG, api.rst 4.39).
    pub const GUEST_DEBUG: u64 = 1 << 10;
    /// KVM_CAP_ENFORCE_PV_FEATURE_CPUID (api.rst 7.27), which the host then enables on
    /// every vCPU: paravirtual features work only as CPUID 0x40000001 lists them.
    pub const ENFORCE_PV_CPUID: u64 = 1 << 11;
    /// MSR accesses in userspace (KVM_CAP_X86_USER_SPACE_MSR and KVM_CAP_X86_MSR_FILTER,
    /// api.rst 7.21 and 4.126): the host asks for exits on unknown and filtered MSRs and
    /// installs the filter of [`super::user_msr`], then serves those MSRs itself.
    pub const USER_MSR: u64 = 1 << 12;
    /// Hyper-V enlightenments (KVM_CAP_HYPERV, KVM_CAP_SYS_HYPERV_CPUID): the host puts
    /// KVM_GET_SUPPORTED_HV_CPUID's leaves at 0x40000000 and moves KVM's own to
    /// 0x40000100, as a VMM offering both does.
    pub const HYPERV: u64 = 1 << 13;
    /// System management mode (KVM_CAP_X86_SMM, api.rst 4.96 KVM_SMI): the host maps the
    /// guest's RAM into address space 1 too (KVM_CAP_MULTI_ADDRESS_SPACE: what the vCPU
    /// sees in SMM), so that an SMM handler the case installs at SMBASE + 0x8000 runs.
    pub const SMM: u64 = 1 << 14;
    /// A virtual PMU (KVM_CAP_PMU_CAPABILITY nonzero: kvm.enable_pmu is on).
    pub const PMU: u64 = 1 << 15;
    /// vCPU attributes (KVM_CAP_VCPU_ATTRIBUTES): on x86 the KVM_VCPU_TSC_CTRL group, the
    /// vCPU's TSC offset, which the TSC_OFFSET service reads and moves.
    pub const TSC_CTRL: u64 = 1 << 16;

    /// Every bit above: the host keeps one row per bit (`harness::requirements`), which
    /// a test checks against this.
    pub const ALL: u64 = IRQCHIP
        | X2APIC
        | KVM_PV
        | TSC_DEADLINE
        | IOEVENTFD
        | DIRTY_RING
        | PIT
        | NO_IRQCHIP
        | READONLY_MEM
        | COALESCED
        | GUEST_DEBUG
        | ENFORCE_PV_CPUID
        | USER_MSR
        | HYPERV
        | SMM
        | PMU
        | TSC_CTRL;
}

/// The MSRs the host serves in userspace under [`requires::USER_MSR`].
pub mod user_msr {
    /// An MSR index KVM does not know: reads and writes exit with reason UNKNOWN. A read
    /// returns [`UNKNOWN_VALUE`]; a write is recorded (service [`super::proto::service::USER_MSR_LAST`]).
    pub const UNKNOWN: u32 = 0x1234_0000;
    pub const UNKNOWN_VALUE: u64 = 0x0123_4567_89ab_cdef;
    /// An unknown MSR the host refuses: the exit's `error` is set, so the guest gets #GP(0).
    pub const REFUSED: u32 = 0x1234_0001;
    /// An MSR KVM knows, denied for reads and writes by the filter: accesses exit with
    /// reason FILTER; a read returns [`FILTERED_VALUE`] instead of the register, a write
    /// is recorded and never reaches it. IA32_SYSENTER_ESP: harmless in 64-bit mode.
    pub const FILTERED: u32 = 0x175;
    pub const FILTERED_VALUE: u64 = 0x5eed_f11e;
    /// An MSR the filter denies for writes only: reads go to KVM as usual.
    pub const WRITE_FILTERED: u32 = 0x176;
}

/// KVM_SET_GUEST_DEBUG's control flags (include/uapi/linux/kvm.h and the x86
/// asm/kvm.h), for [`proto::service::GUEST_DEBUG`].
pub mod guest_debug {
    pub const ENABLE: u64 = 0x1;
    pub const SINGLESTEP: u64 = 0x2;
    pub const USE_SW_BP: u64 = 0x10000;
    pub const USE_HW_BP: u64 = 0x20000;
    pub const INJECT_DB: u64 = 0x40000;
    pub const INJECT_BP: u64 = 0x80000;
    /// Every flag above; the host refuses any other bit.
    pub const ALL: u64 = ENABLE | SINGLESTEP | USE_SW_BP | USE_HW_BP | INJECT_DB | INJECT_BP;
}

/// A software-interrupt vector whose gate has DPL 3, so CPL3 code may INT to it.
pub const USER_INT_VECTOR: u8 = 0x81;

/// Test-case flags.
pub mod flags {
    /// The guest never ends by itself: the watchdog stopping it is the expected outcome.
    pub const EXPECT_TIMEOUT: u32 = 1 << 0;
    /// A host hook of the same name edits the VM before boot (see suites/src/hooks.rs).
    pub const HOST_HOOK: u32 = 1 << 1;
    /// A benchmark, not a conformance test: named `bench::OPERATION::VARIANT`, run by
    /// `hvprobe bench` and the criterion benches, which drive it through the services
    /// [`super::proto::service::BENCH_NEXT`] and [`super::proto::service::BENCH_RESULT`].
    pub const BENCH: u32 = 1 << 2;
    /// The application processors start as after power-on: waiting for INIT and SIPI
    /// from vCPU 0 (KVM's default with the in-kernel irqchip), not in the runtime.
    pub const AP_WAIT_SIPI: u32 = 1 << 3;
    /// One way of several to the same behaviour: named `area::behaviour::way`, it opens a
    /// measured section (services SECTION_BEGIN/SECTION_END) and reports the metrics
    /// `result` (what the behaviour produced, equal across ways) and `cost` (guest cycles
    /// per operation). The path table of `hvprobe run` compares the ways of a behaviour.
    pub const PATH_TABLE: u32 = 1 << 4;
    /// The host must end this (hostile) guest's run with a triple fault
    /// (`KVM_EXIT_SHUTDOWN`): that end is the case's pass.
    pub const EXPECT_SHUTDOWN: u32 = 1 << 5;
    /// The host must refuse one of this (hostile) guest's protocol messages and end the
    /// run with a protocol error: that end is the case's pass.
    pub const EXPECT_PROTOCOL_ERROR: u32 = 1 << 6;
    /// The flags that name a run end other than a verdict; a case sets at most one.
    pub const EXPECT_ANY: u32 = EXPECT_TIMEOUT | EXPECT_SHUTDOWN | EXPECT_PROTOCOL_ERROR;
}

/// Maximum length of a test name, in bytes.
pub const NAME_LEN: usize = 96;
/// Maximum length of the source file path recorded for a test.
pub const FILE_LEN: usize = 64;

/// The entry of a test case: a Rust function for 64-bit modes, an assembly label for
/// 16- and 32-bit modes.
pub type EntryFn = unsafe extern "C" fn();

/// One test case, placed in the ELF section [`TestDesc::SECTION`] by the guest's
/// `test_case!` macro. The host reads the section without booting the guest.
#[repr(C)]
pub struct TestDesc {
    pub magic: u32,
    pub mode: u8,
    pub path: u8,
    /// vCPUs the case runs with; 0 means 1. vCPU 0 runs the case; the others start at
    /// `BootHeader::entry64` in 64-bit CPL0 with RSI = their index and their own stack
    /// ([`layout::ap_stack_top`]), where the runtime idles them.
    pub vcpus: u16,
    /// NUL-padded `area::case::variant`.
    pub name: [u8; NAME_LEN],
    /// NUL-padded source file of the test.
    pub file: [u8; FILE_LEN],
    pub line: u32,
    /// Watchdog limit in milliseconds; 0 means the harness default.
    pub timeout_ms: u32,
    pub requires: u64,
    pub flags: u32,
    /// How the host moves the guest while the case runs ([`migrate`]; 0: it does not).
    pub migrate: u32,
    /// KVM quirks the host disables before the vCPUs exist (KVM_CAP_DISABLE_QUIRKS2,
    /// api.rst 7.31; bits of [`quirks`]).
    pub quirks_off: u64,
    /// CPUID bits the host clears from this case's table before KVM_SET_CPUID2: the
    /// features whose absence the case checks. Unused slots have a zero mask.
    pub cpuid_clear: [CpuidClear; CPUID_CLEARS],
    pub entry: EntryFn,
}

/// How the host moves a guest while its case runs, declared by the case
/// (`migrate = Restore | CrossProcess | RandomPauses(n) | Live` in `test_case!`): the kind
/// in bits 0-7, the count of random pauses in bits 8-15.
pub mod migrate {
    /// At each checkpoint (service CHECKPOINT): save the VM, restore it into a fresh VM in
    /// the same process, go on.
    pub const RESTORE: u32 = 1;
    /// At the first checkpoint: write the snapshot to a file and restore it in a new
    /// process, which runs the case to its end.
    pub const CROSS_PROCESS: u32 = 2;
    /// Pause the guest n times at random (seeded) moments; save and restore each time.
    pub const RANDOM_PAUSES: u32 = 3;
    /// Live migration with dirty logging while the guest runs.
    pub const LIVE: u32 = 4;

    pub const fn random_pauses(n: u8) -> u32 {
        RANDOM_PAUSES | (n as u32) << 8
    }
}

/// KVM quirks a case may ask the host to disable (include/uapi/asm/kvm.h,
/// KVM_X86_QUIRK_*).
pub mod quirks {
    /// KVM stops rewriting the other vendor's hypercall instruction (VMCALL/VMMCALL).
    pub const FIX_HYPERCALL_INSN: u64 = 1 << 5;
}

/// How many [`CpuidClear`] edits one case may declare.
pub const CPUID_CLEARS: usize = 4;

/// One edit of a case's CPUID table: clear `mask` in register `reg` of (`leaf`,
/// `subleaf`). The guest declares it (`cpuid_clear = [...]` in `test_case!`) and the host
/// applies it, so a case that checks an absent feature needs no host code of its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidClear {
    pub leaf: u32,
    /// The subleaf, or [`CpuidClear::ANY_SUBLEAF`] for every entry of `leaf`.
    pub subleaf: u32,
    /// 0 EAX, 1 EBX, 2 ECX, 3 EDX.
    pub reg: u32,
    pub mask: u32,
}

impl CpuidClear {
    pub const ANY_SUBLEAF: u32 = u32::MAX;
    pub const SIZE: usize = size_of::<CpuidClear>();
    pub const EAX: u32 = 0;
    pub const EBX: u32 = 1;
    pub const ECX: u32 = 2;
    pub const EDX: u32 = 3;
    pub const NONE: CpuidClear = CpuidClear { leaf: 0, subleaf: 0, reg: 0, mask: 0 };

    pub const fn new(leaf: u32, subleaf: u32, reg: u32, mask: u32) -> CpuidClear {
        assert!(reg <= Self::EDX, "a CPUID register is 0 (EAX) to 3 (EDX)");
        assert!(mask != 0, "a CPUID edit clears at least one bit");
        CpuidClear { leaf, subleaf, reg, mask }
    }

    /// The descriptor's fixed array from a case's list; fails to compile past
    /// [`CPUID_CLEARS`] edits.
    pub const fn table(edits: &[CpuidClear]) -> [CpuidClear; CPUID_CLEARS] {
        assert!(edits.len() <= CPUID_CLEARS, "too many cpuid_clear edits for one case");
        let mut out = [Self::NONE; CPUID_CLEARS];
        let mut i = 0;
        while i < edits.len() {
            out[i] = edits[i];
            i += 1;
        }
        out
    }

    /// Whether this edit applies to the CPUID entry (`leaf`, `subleaf`).
    pub fn applies_to(&self, leaf: u32, subleaf: u32) -> bool {
        self.mask != 0 && self.leaf == leaf && (self.subleaf == Self::ANY_SUBLEAF || self.subleaf == subleaf)
    }
}

/// A test descriptor as the host decodes it from ELF bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawTestDesc<'a> {
    pub mode: u8,
    pub path: u8,
    pub vcpus: u16,
    pub name: &'a [u8],
    pub file: &'a [u8],
    pub line: u32,
    pub timeout_ms: u32,
    pub requires: u64,
    pub flags: u32,
    pub migrate: u32,
    pub quirks_off: u64,
    pub cpuid_clear: [CpuidClear; CPUID_CLEARS],
    pub entry: u64,
}

impl TestDesc {
    pub const MAGIC: u32 = u32::from_le_bytes(*b"HVTD");
    pub const SECTION: &'static str = ".hvprobe.tests";
    pub const SIZE: usize = size_of::<TestDesc>();

    /// Decodes one descriptor from exactly [`TestDesc::SIZE`] bytes. `None` if the bytes are
    /// too short or the magic is wrong.
    pub fn decode(bytes: &[u8]) -> Option<RawTestDesc<'_>> {
        if bytes.len() < Self::SIZE || read_u32(bytes, offset_of!(TestDesc, magic))? != Self::MAGIC {
            return None;
        }
        let name = &bytes[offset_of!(TestDesc, name)..][..NAME_LEN];
        let file = &bytes[offset_of!(TestDesc, file)..][..FILE_LEN];
        Some(RawTestDesc {
            mode: bytes[offset_of!(TestDesc, mode)],
            path: bytes[offset_of!(TestDesc, path)],
            vcpus: u16::from_le_bytes([bytes[offset_of!(TestDesc, vcpus)], bytes[offset_of!(TestDesc, vcpus) + 1]]),
            name: trim_nul(name),
            file: trim_nul(file),
            line: read_u32(bytes, offset_of!(TestDesc, line))?,
            timeout_ms: read_u32(bytes, offset_of!(TestDesc, timeout_ms))?,
            requires: read_u64(bytes, offset_of!(TestDesc, requires))?,
            flags: read_u32(bytes, offset_of!(TestDesc, flags))?,
            migrate: read_u32(bytes, offset_of!(TestDesc, migrate))?,
            quirks_off: read_u64(bytes, offset_of!(TestDesc, quirks_off))?,
            cpuid_clear: {
                let mut edits = [CpuidClear::NONE; CPUID_CLEARS];
                for (i, edit) in edits.iter_mut().enumerate() {
                    let at = offset_of!(TestDesc, cpuid_clear) + i * CpuidClear::SIZE;
                    *edit = CpuidClear {
                        leaf: read_u32(bytes, at)?,
                        subleaf: read_u32(bytes, at + 4)?,
                        reg: read_u32(bytes, at + 8)?,
                        mask: read_u32(bytes, at + 12)?,
                    };
                }
                edits
            },
            entry: read_u64(bytes, offset_of!(TestDesc, entry))?,
        })
    }
}

/// Copies a string into a NUL-padded array at compile time; fails to compile if too long.
pub const fn fixed_str<const N: usize>(s: &str) -> [u8; N] {
    let bytes = s.as_bytes();
    assert!(bytes.len() < N, "string too long for its fixed field");
    let mut out = [0u8; N];
    let mut i = 0;
    while i < bytes.len() {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// Addresses the harness needs from the runtime, in the ELF section [`BootHeader::SECTION`].
#[repr(C)]
pub struct BootHeader {
    pub magic: u32,
    pub abi_version: u32,
    /// The first of 256 interrupt entry stubs, each [`BootHeader::VECTOR_STRIDE`] bytes apart.
    pub vector_stubs: EntryFn,
    /// Where 64-bit test cases start: RDI holds the address of their [`TestDesc`].
    pub entry64: EntryFn,
}

/// A boot header as the host decodes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawBootHeader {
    pub abi_version: u32,
    pub vector_stubs: u64,
    pub entry64: u64,
}

impl BootHeader {
    pub const MAGIC: u32 = u32::from_le_bytes(*b"HVBH");
    pub const SECTION: &'static str = ".hvprobe.boot";
    pub const SIZE: usize = size_of::<BootHeader>();
    pub const VECTOR_STRIDE: u64 = 16;
    /// Bumped whenever anything in this crate changes meaning.
    pub const ABI_VERSION: u32 = 11;

    pub fn decode(bytes: &[u8]) -> Option<RawBootHeader> {
        if read_u32(bytes, offset_of!(BootHeader, magic))? != Self::MAGIC {
            return None;
        }
        Some(RawBootHeader {
            abi_version: read_u32(bytes, offset_of!(BootHeader, abi_version))?,
            vector_stubs: read_u64(bytes, offset_of!(BootHeader, vector_stubs))?,
            entry64: read_u64(bytes, offset_of!(BootHeader, entry64))?,
        })
    }
}

/// The guest-to-host protocol: the guest writes the guest-physical address of one of
/// these messages to [`port::PROTOCOL`] with a 32-bit `out`. Strings are (address,
/// length) pairs of guest-physical memory.
pub mod proto {
    use super::*;

    pub const MAGIC: u32 = u32::from_le_bytes(*b"HVPM");
    /// Longest string the host accepts from one message field.
    pub const MAX_STR: u64 = 4096;

    pub const KIND_LOG: u32 = 1;
    pub const KIND_VERDICT: u32 = 2;
    pub const KIND_METRIC: u32 = 3;
    pub const KIND_SERVICE: u32 = 4;

    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct Header {
        pub magic: u32,
        pub kind: u32,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct Str {
        pub addr: u64,
        pub len: u64,
    }

    impl Str {
        pub const EMPTY: Str = Str { addr: 0, len: 0 };
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct Log {
        pub header: Header,
        pub text: Str,
    }

    pub const STATUS_PASS: u32 = 0;
    pub const STATUS_FAIL: u32 = 1;
    pub const STATUS_SKIP: u32 = 2;

    /// `Verdict::flags`: `expected` and `actual` hold the two compared values.
    pub const VERDICT_HAS_VALUES: u32 = 1 << 0;
    /// `Verdict::flags`: `fault_rip` holds the RIP of an unexpected exception, so the host
    /// can record the instruction bytes there.
    pub const VERDICT_HAS_FAULT_RIP: u32 = 1 << 1;

    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct Verdict {
        pub header: Header,
        pub status: u32,
        pub line: u32,
        pub file: Str,
        pub message: Str,
        pub flags: u32,
        pub _reserved: u32,
        pub expected: u64,
        pub actual: u64,
        pub fault_rip: u64,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct Metric {
        pub header: Header,
        pub name: Str,
        pub unit: Str,
        pub value: u64,
    }

    /// Services the harness offers; suites may add handlers for more ids.
    pub mod service {
        /// Returns `args[0] ^ args[1]`: proves the request/response path.
        pub const ECHO_XOR: u32 = 1;
        /// Returns, packed as `eax | ebx << 32` (`args[2] == 0`) or `ecx | edx << 32`
        /// (`args[2] == 1`), the CPUID entry (leaf `args[0]`, subleaf `args[1]`) the host
        /// set with KVM_SET_CPUID2. Fails if the host set no such entry.
        pub const CPUID_AS_SET: u32 = 2;
        /// Returns the host's TSC frequency for this vCPU in kHz (KVM_GET_TSC_KHZ).
        pub const TSC_KHZ: u32 = 3;
        /// Returns how many bytes the console port has received, including those past
        /// the host's capture limit.
        pub const CONSOLE_BYTES: u32 = 4;
        /// Returns the seed for generated cases (`RunOptions::seed`).
        pub const SEED: u32 = 5;
        /// Returns the one generated case to run, or u64::MAX for all (`RunOptions::only_case`).
        pub const ONLY_CASE: u32 = 6;
        /// Returns `leaf | subleaf << 32` of entry `args[0]` of the CPUID table the host set
        /// with KVM_SET_CPUID2; fails past the last entry.
        pub const CPUID_ENTRY: u32 = 7;
        /// A benchmark asks what to measure next: the result is a batch of iterations
        /// (bits 0-62), with bit 63 ([`super::BENCH_BASELINE`]) set when the batch is the
        /// empty loop instead of the operation; 0 means stop. Fails when no benchmark
        /// driver is listening.
        pub const BENCH_NEXT: u32 = 8;
        /// A benchmark reports the batch it just ran: `args[0]` = TSC cycles it took.
        pub const BENCH_RESULT: u32 = 9;
        /// The guest asks to be saved here (`args[0]` is a tag the host reports): the run
        /// ends with `RunEnd::Checkpoint` once the answer (0) is in the message, and the
        /// guest goes on wherever the host resumes it, in the same VM or a restored one.
        pub const CHECKPOINT: u32 = 10;
        /// Dirty logging of guest RAM (KVM_MEM_LOG_DIRTY_PAGES), op in `args[0]`:
        /// [`super::DIRTY_START`], [`super::DIRTY_COUNT`], [`super::DIRTY_TEST`],
        /// [`super::DIRTY_CLEAR`].
        pub const DIRTY_LOG: u32 = 11;
        /// KVM_IRQ_LINE: GSI `args[0]` to level `args[1]` (in-kernel irqchip).
        pub const IRQ_LINE: u32 = 12;
        /// KVM_SIGNAL_MSI: address `args[0]`, data `args[1]`.
        pub const SIGNAL_MSI: u32 = 13;
        /// KVM_NMI on vCPU 0.
        pub const NMI: u32 = 14;
        /// Signals an irqfd bound to GSI `args[0]` (registered at first use).
        pub const IRQFD: u32 = 15;
        /// KVM_INTERRUPT of vector `args[0]` (no in-kernel irqchip): the host injects it
        /// when the vCPU can take it, asking KVM for an interrupt window until then. Fails
        /// for a vector above 255.
        pub const INTERRUPT: u32 = 16;
        /// KVM_SET_GSI_ROUTING: the default irqchip routes (GSIs 0-15 to the PICs and the
        /// IOAPIC, 16-23 to the IOAPIC) plus GSI `args[0]` as an MSI with address
        /// `args[1]` and data `args[2]`.
        pub const MSI_ROUTE: u32 = 17;
        /// Registers an irqfd with a resample eventfd for GSI `args[0]` (level-triggered,
        /// api.rst 4.75 KVM_IRQFD_FLAG_RESAMPLE) and signals it: the line stays asserted
        /// until the guest's EOI, which signals the resample eventfd.
        pub const IRQFD_RESAMPLE: u32 = 18;
        /// Returns how many times the resample eventfd of `args[0]` fired since the last
        /// call.
        pub const RESAMPLE_COUNT: u32 = 19;
        /// Byte sink `args[0]` (see [`crate::sink`]): its byte count in
        /// bits 63:32 and the FNV-1a digest of its bytes ([`crate::fnv1a32`]) in 31:0.
        pub const SINK: u32 = 20;
        /// The host sleeps `args[0]` microseconds (at most 100,000) with the vCPU stopped
        /// in userspace and returns the nanoseconds it measured on CLOCK_MONOTONIC.
        pub const HOST_SLEEP: u32 = 21;
        /// Opens the measured section: the host reads the vCPU's KVM statistics and starts
        /// counting exits to userspace (the service's own exits are not counted).
        pub const SECTION_BEGIN: u32 = 22;
        /// Closes the measured section of `args[0]` operations of the behaviour, done in
        /// `args[1]` accesses to the interface: the report carries the exits to userspace
        /// and the statistics' changes within it. Returns the exits to userspace.
        pub const SECTION_END: u32 = 23;
        /// How many times ioeventfd `args[0]` (0 pio, 1 pio_datamatch, 2 mmio,
        /// 3 mmio_datamatch, [`super::IOEVENT_RING_DOORBELL`] the ring doorbell) fired since
        /// the last call.
        pub const IOEVENT_COUNT: u32 = 24;
        /// Coalesced-ring entries the host has applied since the VM was made.
        pub const COALESCED_COUNT: u32 = 25;
        /// KVM_GET_CLOCK: kvmclock's nanoseconds as the host reads them (api.rst 4.60).
        pub const GET_CLOCK: u32 = 26;
        /// KVM_SET_CLOCK to KVM_GET_CLOCK plus `args[0]` (signed) nanoseconds (api.rst
        /// 4.59); returns the value set. Fails if the sum is below 0 or above i64::MAX.
        pub const SET_CLOCK: u32 = 27;
        /// The current value of the vCPU's KVM statistic `args[0]` (see [`crate::kvm_stat`];
        /// KVM_GET_STATS_FD, api.rst 4.133), so that a case can show KVM handled what it
        /// did. Fails where the host has no such statistic.
        pub const KVM_STAT: u32 = 28;
        /// The host's CLOCK_MONOTONIC in nanoseconds, read while the vCPU is stopped in
        /// userspace: two readings bracketed by guest clock readings bound the guest's
        /// measurement of an interval from both sides, however long the exits took.
        pub const HOST_CLOCK: u32 = 29;
        /// KVM_SET_GUEST_DEBUG on vCPU 0 (api.rst 4.39): `args[0]` the control flags
        /// ([`super::guest_debug`]; any other bit fails the request), `args[1]`
        /// debugreg[0] (a breakpoint address), `args[2]`
        /// debugreg[7]. Turning debugging on forgets the debug exits recorded so far;
        /// turning it off (`args[0]` = 0) keeps them for DEBUG_EXITS. The host ends
        /// breakpoint debugging by itself at the first KVM_EXIT_DEBUG of a breakpoint (one
        /// shot: it steps past a software breakpoint's INT3 and turns guest debugging off);
        /// single-stepping lasts until the guest turns it off with `args[0]` = 0.
        pub const GUEST_DEBUG: u32 = 30;
        /// What the host recorded of the KVM_EXIT_DEBUG exits since the last GUEST_DEBUG:
        /// `args[0]` = 0 the count, 1 the first exit's exception vector, 2 its PC (the
        /// linear address of the instruction), 3 its DR6 (these fail if there was none),
        /// 4 how many of the first 4,096 exits had a PC in [`args[1]`, `args[2]`).
        pub const DEBUG_EXITS: u32 = 31;
        /// The last MSR write the host served in userspace (see [`super::super::user_msr`]):
        /// `args[0]` = 0 its index, 1 its value, 2 the exit reason (KVM_MSR_EXIT_REASON_*),
        /// 3 how many MSR exits there were. Fails before the first.
        pub const USER_MSR_LAST: u32 = 32;
        /// A memory slot in [`super::super::layout::HOTPLUG_BASE`]'s window, changed while
        /// the guest runs (KVM_SET_USER_MEMORY_REGION, api.rst 4.35): `args[0]` =
        /// [`super::MEMSLOT_ADD`] maps fresh memory at `args[1]` whose u64 at offset o holds
        /// `args[2] ^ o`; [`super::MEMSLOT_MOVE`] moves the slot to `args[1]`;
        /// [`super::MEMSLOT_DELETE`] deletes it. Fails outside the window, for an
        /// unaligned address, for a second ADD, or a MOVE or DELETE of no slot.
        pub const MEMSLOT: u32 = 33;
        /// KVM_SMI on vCPU 0 (api.rst 4.96): it enters SMM before its next instruction.
        pub const SMI: u32 = 34;
        /// vCPU 0's TSC offset (KVM_VCPU_TSC_CTRL, devices/vcpu.rst 4.1): `args[0]` =
        /// [`super::TSC_OFFSET_READ`] returns the host's TSC plus the offset (what the
        /// guest's TSC should read at that moment); [`super::TSC_OFFSET_ADD`] adds
        /// `args[1]` to the offset and returns the new one.
        pub const TSC_OFFSET: u32 = 35;
    }

    /// DIRTY_LOG ops. START turns logging on and forgets everything dirty so far (with
    /// `args[1]` = 1, in KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 mode; fails if the host lacks it).
    pub const DIRTY_START: u64 = 0;
    /// Fetches KVM_GET_DIRTY_LOG into the host's record and returns how many pages in
    /// [`args[1]`, `args[2]`) the record holds as dirty.
    pub const DIRTY_COUNT: u64 = 1;
    /// Returns 1 if page `args[1]` (a guest-physical address) is dirty in the host's
    /// record, 0 if not.
    pub const DIRTY_TEST: u64 = 2;
    /// KVM_CLEAR_DIRTY_LOG of the pages in [`args[1]`, `args[2]`) (manual mode), also in
    /// the host's record.
    pub const DIRTY_CLEAR: u64 = 3;

    /// TSC_OFFSET ops.
    pub const TSC_OFFSET_READ: u64 = 0;
    pub const TSC_OFFSET_ADD: u64 = 1;

    /// MEMSLOT ops.
    pub const MEMSLOT_ADD: u64 = 0;
    pub const MEMSLOT_DELETE: u64 = 1;
    pub const MEMSLOT_MOVE: u64 = 2;

    /// IOEVENT_COUNT's index of the shared ring's doorbell (after the four test ioeventfds).
    pub const IOEVENT_RING_DOORBELL: u64 = 4;

    /// Bit 63 of a BENCH_NEXT result: measure the empty loop.
    pub const BENCH_BASELINE: u64 = 1 << 63;

    /// Operations per turn of a benchmark's loop. The loop's own instructions are the
    /// baseline that is subtracted; where the host emulates them (PVM runs CPL0 code through
    /// its instruction emulator, thousands of cycles each) their noise would swamp a cheap
    /// operation, so the guest runs this many operations per turn and the host asks for
    /// batches that are a multiple of it.
    pub const BENCH_UNROLL: u64 = 8;

    pub const SERVICE_OK: u32 = 0;
    pub const SERVICE_UNKNOWN: u32 = 1;
    pub const SERVICE_FAILED: u32 = 2;

    /// A request; the host writes `status` and `result` back before the guest resumes.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct Service {
        pub header: Header,
        pub service: u32,
        pub status: u32,
        pub args: [u64; 4],
        pub result: u64,
    }

    impl Service {
        pub const STATUS_OFFSET: usize = offset_of!(Service, status);
        pub const RESULT_OFFSET: usize = offset_of!(Service, result);
    }

    /// Decodes a little-endian `Str` at `offset` of `bytes`.
    pub fn read_str(bytes: &[u8], offset: usize) -> Option<Str> {
        Some(Str { addr: read_u64(bytes, offset)?, len: read_u64(bytes, offset + 8)? })
    }
}

/// Reads a little-endian u32 at `offset`, `None` if out of bounds.
pub fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let b = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads a little-endian u64 at `offset`, `None` if out of bounds.
pub fn read_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    let b = bytes.get(offset..offset.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

fn trim_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_regions_do_not_overlap() {
        use layout::*;
        let regions = [
            (GDT, GDT + 8 * selector::GDT_ENTRIES as u64),
            (IDT, IDT + 4096),
            (TSS, TSS + 104),
            (LOW_START, LOW_END),
            (PML4, PT0 + 4096),
            (USER_STACK_TOP - 0x40000, RSP0_STACK_TOP),
            (IMAGE_START, IMAGE_END),
            (RING, RING + 4096),
            (STATE_REGION, STATE_REGION + STATE_REGION_SIZE),
        ];
        for (i, a) in regions.iter().enumerate() {
            assert!(a.0 < a.1);
            for b in &regions[i + 1..] {
                assert!(a.1 <= b.0 || b.1 <= a.0, "{a:x?} overlaps {b:x?}");
            }
        }
        assert!(IMAGE_END <= RAM_SIZE && RAM_SIZE <= MMIO_TEST_BASE);
        assert!(RING_DATA + RING_SIZE as u64 <= 4096 && RING_CONSUMED >= RING_PRODUCED + 4);
    }

    #[test]
    fn fnv1a32_matches_the_published_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv, FNV-1a 32-bit).
        assert_eq!(fnv1a32(FNV1A32_INIT, b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(FNV1A32_INIT, b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(FNV1A32_INIT, b"foobar"), 0xbf9c_f968);
        assert_eq!(fnv1a32(fnv1a32(FNV1A32_INIT, b"foo"), b"bar"), 0xbf9c_f968, "digests chain");
    }

    #[test]
    fn decode_rejects_short_and_foreign_bytes() {
        assert_eq!(TestDesc::decode(&[0u8; 8]), None);
        assert_eq!(TestDesc::decode(&[0u8; TestDesc::SIZE]), None);
        assert_eq!(BootHeader::decode(&[0u8; 3]), None);
    }

    #[test]
    fn fixed_str_pads_with_nul() {
        let a: [u8; 8] = fixed_str("abc");
        assert_eq!(&a, b"abc\0\0\0\0\0");
        assert_eq!(trim_nul(&a), b"abc");
    }
}
