//! The services the guest asks the host for (`hvprobe_abi::proto::service`), registered by
//! their ABI id: each answers a value or a [`ServiceError`] that says why it could not, and
//! the run records that reason beside the guest's SERVICE_FAILED.

use std::time::{Duration, Instant};

use hvprobe_abi::proto::{self, service};
use hvprobe_abi::sink;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::ioctl_iow_nr;

use crate::devices::Devices;
use crate::report::{RunReport, Section};
use crate::{Error, Vm};

/// Why a service could not answer. The guest sees SERVICE_FAILED; the run's notes keep
/// this reason, so a failing case says what the host refused and why.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// An argument the service does not take.
    #[error("{0}")]
    Argument(String),
    /// What the service needs is not there: not configured for this VM, or nothing
    /// recorded yet.
    #[error("{0}")]
    Unavailable(&'static str),
    /// A KVM ioctl or a system call failed.
    #[error("{op} failed: {message}")]
    Host { op: &'static str, message: String },
    /// The caller's own handler refused (a benchmark driver, with its reason).
    #[error("{0}")]
    Refused(String),
}

/// A service's answer: the value the guest receives, or why there is none.
pub type ServiceResult = Result<u64, ServiceError>;

/// Maps a failed host call to its [`ServiceError`], naming the call.
fn host<E: std::fmt::Display>(op: &'static str) -> impl FnOnce(E) -> ServiceError {
    move |e| ServiceError::Host { op, message: e.to_string() }
}

fn argument(what: impl Into<String>) -> ServiceError {
    ServiceError::Argument(what.into())
}

/// What the guest set up through services: kept across the runs of one case (a pause or
/// a checkpoint in between does not undo it) and dropped with the VM. The VM itself (fds,
/// memory, CPUID) is [`Vm`]'s; this is what one case did with it.
#[derive(Default)]
pub(crate) struct Requests {
    /// The measured section the guest opened, if any (services SECTION_BEGIN/END).
    pub(crate) section: Option<SectionProbe>,
    /// A vector to inject with KVM_INTERRUPT when vCPU 0 can take it (no irqchip).
    pub(crate) pending_interrupt: Option<u32>,
    /// irqfds the guest has used: GSI, eventfd, and the resample eventfd of a
    /// level-triggered one.
    pub(crate) irqfds: Vec<(u32, EventFd, Option<EventFd>)>,
    /// Host-side debugging the guest asked for (service GUEST_DEBUG) and the
    /// KVM_EXIT_DEBUG exits seen since.
    pub(crate) guest_debug: GuestDebug,
    /// The MSR exits served in userspace (`VmConfig::user_msr`).
    pub(crate) user_msr: UserMsr,
}

/// Host-side debugging of vCPU 0 (service GUEST_DEBUG): the control flags set, and the
/// KVM_EXIT_DEBUG exits since.
#[derive(Default)]
pub(crate) struct GuestDebug {
    pub(crate) control: u64,
    pub(crate) exits: u64,
    /// The first [`GuestDebug::LOGGED`] exits.
    pub(crate) log: Vec<kvm_bindings::kvm_debug_exit_arch>,
}

impl GuestDebug {
    pub(crate) const LOGGED: usize = 4096;
}

/// MSR exits served in userspace (`hvprobe_abi::user_msr`): how many, and the last write.
#[derive(Default)]
pub(crate) struct UserMsr {
    pub(crate) exits: u64,
    /// Index, value and exit reason of the last WRMSR.
    pub(crate) last_write: Option<(u32, u64, u32)>,
}

/// An open section: the statistics when it opened and the exits counted so far.
#[derive(Default)]
pub(crate) struct SectionProbe {
    pub(crate) before: Option<Vec<u64>>,
    pub(crate) counts: Section,
}

impl Vm {
    pub(crate) fn builtin_service(
        &mut self,
        id: u32,
        args: [u64; 4],
        devices: &Devices,
        report: &mut RunReport,
    ) -> Option<ServiceResult> {
        match id {
            service::COALESCED_COUNT => self.coalesced.as_ref().map(|r| Ok(r.drained)),
            service::GET_CLOCK => Some(self.vm_fd.get_clock().map(|c| c.clock).map_err(host("KVM_GET_CLOCK"))),
            // A change that would take the clock below zero or past i64::MAX nanoseconds is
            // refused rather than wrapped.
            service::SET_CLOCK => Some(self.vm_fd.get_clock().map_err(host("KVM_GET_CLOCK")).and_then(|c| {
                let set = c.clock.checked_add_signed(args[0] as i64).filter(|&n| i64::try_from(n).is_ok()).ok_or_else(
                    || argument(format!("moving the clock {} by {} ns leaves 0..i64::MAX", c.clock, args[0] as i64)),
                )?;
                let clock = kvm_bindings::kvm_clock_data { clock: set, ..Default::default() };
                self.vm_fd.set_clock(&clock).map(|()| clock.clock).map_err(host("KVM_SET_CLOCK"))
            })),
            service::SINK => Some(match args[0] {
                sink::RING => self
                    .shared_ring
                    .as_ref()
                    .map(|r| r.state.lock().unwrap_or_else(|e| e.into_inner()).sink.packed())
                    .ok_or(ServiceError::Unavailable("this VM has no shared-ring device")),
                id => {
                    devices.sinks.get(id as usize).map(|s| s.packed()).ok_or_else(|| argument(format!("no sink {id}")))
                }
            }),
            service::KVM_STAT => Some((|| {
                let name = hvprobe_abi::kvm_stat::NAMES
                    .get(args[0] as usize)
                    .ok_or_else(|| argument(format!("no KVM statistic {}", args[0])))?;
                let stats =
                    self.stats.as_ref().ok_or(ServiceError::Unavailable("KVM_GET_STATS_FD is not available"))?;
                let read = stats.read().map_err(host("reading the statistics"))?;
                stats.value(&read, name).ok_or(ServiceError::Unavailable("KVM does not report that statistic"))
            })()),
            service::GUEST_DEBUG => {
                if args[0] & !hvprobe_abi::guest_debug::ALL != 0 {
                    return Some(Err(argument(format!("unknown guest-debug flags {:#x}", args[0]))));
                }
                let mut dbg = kvm_bindings::kvm_guest_debug { control: args[0] as u32, ..Default::default() };
                dbg.arch.debugreg[0] = args[1];
                dbg.arch.debugreg[7] = args[2];
                // Turning debugging on starts a new record; turning it off keeps the record
                // for DEBUG_EXITS.
                if args[0] == 0 {
                    self.requests.guest_debug.control = 0;
                } else {
                    self.requests.guest_debug = GuestDebug { control: args[0], ..GuestDebug::default() };
                }
                Some(self.vcpus[0].set_guest_debug(&dbg).map(|()| 0).map_err(host("KVM_SET_GUEST_DEBUG")))
            }
            service::DEBUG_EXITS => {
                let d = &self.requests.guest_debug;
                Some(match (args[0], d.log.first()) {
                    (0, _) => Ok(d.exits),
                    (1, Some(f)) => Ok(f.exception.into()),
                    (2, Some(f)) => Ok(f.pc),
                    (3, Some(f)) => Ok(f.dr6),
                    (4, _) => Ok(d.log.iter().filter(|e| (args[1]..args[2]).contains(&e.pc)).count() as u64),
                    (1..=3, None) => Err(ServiceError::Unavailable("no KVM_EXIT_DEBUG exit yet")),
                    (q, _) => Err(argument(format!("DEBUG_EXITS has no query {q}"))),
                })
            }
            service::USER_MSR_LAST => {
                let u = &self.requests.user_msr;
                Some(match (args[0], u.last_write) {
                    (0, Some((index, _, _))) => Ok(index.into()),
                    (1, Some((_, value, _))) => Ok(value),
                    (2, Some((_, _, reason))) => Ok(reason.into()),
                    (3, _) => Ok(u.exits),
                    (0..=2, None) => Err(ServiceError::Unavailable("no MSR write reached userspace yet")),
                    (q, _) => Err(argument(format!("USER_MSR_LAST has no query {q}"))),
                })
            }
            service::MEMSLOT => Some(self.memslot(args)),
            service::HOST_CLOCK => {
                let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                // SAFETY: clock_gettime writes the timespec it is given.
                let ok = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } == 0;
                Some(if ok {
                    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
                } else {
                    Err(host("clock_gettime")(std::io::Error::last_os_error()))
                })
            }
            service::HOST_SLEEP => {
                let t = Instant::now();
                std::thread::sleep(Duration::from_micros(args[0].min(100_000)));
                Some(Ok(t.elapsed().as_nanos() as u64))
            }
            service::SECTION_BEGIN => {
                let before = self.stats.as_ref().and_then(|s| s.read().ok());
                self.requests.section = Some(SectionProbe { before, counts: Section::default() });
                Some(Ok(0))
            }
            service::SECTION_END => {
                let Some(probe) = self.requests.section.take() else {
                    return Some(Err(ServiceError::Unavailable("SECTION_END without SECTION_BEGIN")));
                };
                let mut section = probe.counts;
                (section.ops, section.accesses) = (args[0], args[1]);
                if let (Some(stats), Some(before)) = (&self.stats, probe.before) {
                    section.stats = stats.read().map(|after| stats.deltas(&before, &after)).unwrap_or_default();
                }
                let exits = section.io_exits + section.mmio_exits + section.other_exits;
                report.section = Some(section);
                Some(Ok(exits))
            }
            service::IOEVENT_COUNT => Some(match args[0] {
                i if i < crate::IOEVENTS.len() as u64 => self
                    .ioevents
                    .get(i as usize)
                    .map(|fd| fd.read().unwrap_or(0))
                    .ok_or(ServiceError::Unavailable("this VM has no ioeventfds")),
                proto::IOEVENT_RING_DOORBELL => self
                    .shared_ring
                    .as_ref()
                    .map(|r| std::mem::take(&mut r.state.lock().unwrap_or_else(|e| e.into_inner()).doorbells))
                    .ok_or(ServiceError::Unavailable("this VM has no shared-ring device")),
                i => Err(argument(format!("no ioeventfd {i}"))),
            }),
            service::ECHO_XOR => Some(Ok(args[0] ^ args[1])),
            service::CPUID_AS_SET => {
                let (Ok(leaf), Ok(subleaf)) = (u32::try_from(args[0]), u32::try_from(args[1])) else {
                    return Some(Err(argument(format!("leaf {:#x} subleaf {:#x} exceed 32 bits", args[0], args[1]))));
                };
                Some(match (self.cpuid_as_set(leaf, subleaf), args[2]) {
                    (Some(e), 0) => Ok(u64::from(e.eax) | u64::from(e.ebx) << 32),
                    (Some(e), 1) => Ok(u64::from(e.ecx) | u64::from(e.edx) << 32),
                    (None, _) => Err(ServiceError::Unavailable("the CPUID table has no such leaf")),
                    (Some(_), half) => Err(argument(format!("CPUID_AS_SET has no half {half}"))),
                })
            }
            service::TSC_KHZ => Some(self.vcpus[0].get_tsc_khz().map(u64::from).map_err(host("KVM_GET_TSC_KHZ"))),
            service::CPUID_ENTRY => Some(
                usize::try_from(args[0])
                    .ok()
                    .and_then(|i| self.cpuid.get(i))
                    .map(|e| u64::from(e.function) | u64::from(e.index) << 32)
                    .ok_or(ServiceError::Unavailable("past the CPUID table's last entry")),
            ),
            service::CONSOLE_BYTES => Some(Ok(devices.console_total)),
            service::DIRTY_LOG => Some(self.dirty_service(args)),
            service::IRQ_LINE => Some(
                u32::try_from(args[0]).map_err(|_| argument(format!("GSI {:#x} exceeds 32 bits", args[0]))).and_then(
                    |gsi| self.vm_fd.set_irq_line(gsi, args[1] != 0).map(|()| 0).map_err(host("KVM_IRQ_LINE")),
                ),
            ),
            service::SIGNAL_MSI => {
                let msi = kvm_bindings::kvm_msi {
                    address_lo: args[0] as u32,
                    address_hi: (args[0] >> 32) as u32,
                    data: args[1] as u32,
                    ..Default::default()
                };
                Some(self.vm_fd.signal_msi(msi).map(|n| n as u64).map_err(host("KVM_SIGNAL_MSI")))
            }
            service::NMI => Some(self.vcpus[0].nmi().map(|()| 0).map_err(host("KVM_NMI"))),
            service::SMI => Some(self.vcpus[0].smi().map(|()| 0).map_err(host("KVM_SMI"))),
            service::TSC_OFFSET => Some(self.tsc_offset(args)),
            service::IRQFD => Some(self.signal_irqfd(args[0], false)),
            service::MSI_ROUTE => Some(self.route_msi(args).map(|()| 0)),
            service::IRQFD_RESAMPLE => Some(self.signal_irqfd(args[0], true)),
            service::RESAMPLE_COUNT => Some(
                self.requests
                    .irqfds
                    .iter()
                    .find(|(g, ..)| u64::from(*g) == args[0])
                    .and_then(|(_, _, resample)| resample.as_ref())
                    .map(|resample| resample.read().unwrap_or(0))
                    .ok_or(ServiceError::Unavailable("no level-triggered irqfd on that GSI")),
            ),
            // KVM_INTERRUPT takes vectors 0-255 (api.rst 4.16); anything else would stay
            // pending forever, each interrupt window failing to inject it.
            service::INTERRUPT if !self.irqchip => Some(match u8::try_from(args[0]) {
                Ok(vector) => {
                    self.requests.pending_interrupt = Some(vector.into());
                    Ok(0)
                }
                Err(_) => Err(argument(format!("vector {:#x} is not 0-255", args[0]))),
            }),
            _ => None,
        }
    }

    /// The MEMSLOT service: add, move or delete the hot-plugged slot. The slot's memory
    /// is dropped only after KVM deleted the slot, and kept with its old address when a
    /// move fails.
    fn memslot(&mut self, args: [u64; 4]) -> ServiceResult {
        use hvprobe_abi::layout::{HOTPLUG_BASE, HOTPLUG_SIZE, HOTPLUG_WINDOW};
        use hvprobe_abi::proto::{MEMSLOT_ADD, MEMSLOT_DELETE, MEMSLOT_MOVE};
        let gpa = args[1];
        let in_window = gpa.is_multiple_of(4096)
            && gpa >= HOTPLUG_BASE
            && gpa.checked_add(HOTPLUG_SIZE).is_some_and(|end| end <= HOTPLUG_BASE + HOTPLUG_WINDOW);
        match args[0] {
            MEMSLOT_ADD if in_window && self.hotplug.is_none() => {
                let memory = crate::GuestMemory::new(HOTPLUG_SIZE).map_err(host("mapping the slot's memory"))?;
                for offset in (0..HOTPLUG_SIZE).step_by(8) {
                    memory.write_u64(offset, args[2] ^ offset).map_err(host("filling the slot"))?;
                }
                // SAFETY: the memory is kept in `hotplug`, declared after the VM fd, until
                // KVM has deleted the slot.
                unsafe { memory.map_as_slot(&self.vm_fd, crate::vm::HOTPLUG_SLOT, gpa, 0) }
                    .map_err(host("KVM_SET_USER_MEMORY_REGION"))?;
                self.hotplug = Some((gpa, memory));
                Ok(0)
            }
            MEMSLOT_MOVE if in_window => {
                let (at, memory) = self.hotplug.as_mut().ok_or(ServiceError::Unavailable("no slot to move"))?;
                // Same slot and memory at another address: KVM's move (api.rst 4.35).
                // SAFETY: as for ADD; on failure the slot stays where it was.
                unsafe { memory.map_as_slot(&self.vm_fd, crate::vm::HOTPLUG_SLOT, gpa, 0) }
                    .map_err(host("KVM_SET_USER_MEMORY_REGION"))?;
                *at = gpa;
                Ok(0)
            }
            MEMSLOT_DELETE if self.hotplug.is_some() => {
                crate::GuestMemory::unmap_slot(&self.vm_fd, crate::vm::HOTPLUG_SLOT)
                    .map_err(host("KVM_SET_USER_MEMORY_REGION"))?;
                self.hotplug = None;
                Ok(0)
            }
            _ => Err(argument(format!(
                "MEMSLOT {} at {gpa:#x}: not an operation the slot's state and the window allow",
                args[0]
            ))),
        }
    }
}

ioctl_iow_nr!(KVM_INTERRUPT, kvm_bindings::KVMIO, 0x86, kvm_bindings::kvm_interrupt);
ioctl_iow_nr!(KVM_SET_DEVICE_ATTR, kvm_bindings::KVMIO, 0xe1, kvm_bindings::kvm_device_attr);
ioctl_iow_nr!(KVM_GET_DEVICE_ATTR, kvm_bindings::KVMIO, 0xe2, kvm_bindings::kvm_device_attr);

impl Vm {
    /// KVM_INTERRUPT (kvm-ioctls has no wrapper).
    pub(crate) fn inject_interrupt(&self, vector: u32) -> Result<(), Error> {
        let irq = kvm_bindings::kvm_interrupt { irq: vector };
        // SAFETY: KVM_INTERRUPT reads one kvm_interrupt, which `irq` is.
        let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.vcpus[0], KVM_INTERRUPT(), &irq) };
        if ret < 0 {
            return Err(Error::kvm("KVM_INTERRUPT")(kvm_ioctls::Error::last()));
        }
        Ok(())
    }

    /// The TSC_OFFSET service on vCPU 0's KVM_VCPU_TSC_CTRL attribute (devices/vcpu.rst
    /// 4.1): READ answers the host's TSC now plus the offset, ADD adds `args[1]` to it.
    fn tsc_offset(&self, args: [u64; 4]) -> ServiceResult {
        use hvprobe_abi::proto::{TSC_OFFSET_ADD, TSC_OFFSET_READ};
        let mut offset = 0u64;
        let mut attr = kvm_bindings::kvm_device_attr {
            group: kvm_bindings::KVM_VCPU_TSC_CTRL,
            attr: kvm_bindings::KVM_VCPU_TSC_OFFSET.into(),
            addr: &raw mut offset as u64,
            ..Default::default()
        };
        // SAFETY: KVM_GET_DEVICE_ATTR writes one u64 at `addr`, which is `offset`.
        if unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.vcpus[0], KVM_GET_DEVICE_ATTR(), &attr) } < 0 {
            return Err(host("KVM_GET_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET)")(std::io::Error::last_os_error()));
        }
        match args[0] {
            // SAFETY: RDTSC has no side effects.
            TSC_OFFSET_READ => Ok(unsafe { core::arch::x86_64::_rdtsc() }.wrapping_add(offset)),
            TSC_OFFSET_ADD => {
                offset = offset.wrapping_add(args[1]);
                attr.addr = &raw const offset as u64;
                // SAFETY: KVM_SET_DEVICE_ATTR reads one u64 at `addr`, which is `offset`.
                let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.vcpus[0], KVM_SET_DEVICE_ATTR(), &attr) };
                if ret < 0 {
                    Err(host("KVM_SET_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET)")(std::io::Error::last_os_error()))
                } else {
                    Ok(offset)
                }
            }
            op => Err(argument(format!("TSC_OFFSET has no operation {op}"))),
        }
    }

    /// KVM_SET_GSI_ROUTING with KVM's default irqchip routes and one MSI route.
    fn route_msi(&self, args: [u64; 4]) -> Result<(), ServiceError> {
        use kvm_bindings::{
            KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KvmIrqRouting, kvm_irq_routing_entry,
            kvm_irq_routing_entry__bindgen_ty_1 as Route, kvm_irq_routing_irqchip, kvm_irq_routing_msi,
        };
        let gsi = u32::try_from(args[0])
            .ok()
            .filter(|g| *g >= 24)
            .ok_or_else(|| argument(format!("GSI {:#x} for an MSI route: GSIs 0-23 are the irqchip pins", args[0])))?;
        let chip = |gsi: u32, irqchip: u32, pin: u32| kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            u: Route { irqchip: kvm_irq_routing_irqchip { irqchip, pin } },
            ..Default::default()
        };
        // KVM's defaults (irq_comm.c, kvm_setup_default_irq_routing): PIC master for
        // GSIs 0-7, slave for 8-15, and the IOAPIC for 0-23.
        let mut entries = Vec::new();
        for g in 0..24u32 {
            if g < 16 {
                entries.push(chip(g, if g < 8 { 0 } else { 1 }, g % 8));
            }
            entries.push(chip(g, 2, g));
        }
        entries.push(kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            u: Route {
                msi: kvm_irq_routing_msi {
                    address_lo: args[1] as u32,
                    address_hi: (args[1] >> 32) as u32,
                    data: args[2] as u32,
                    ..Default::default()
                },
            },
            ..Default::default()
        });
        let routing =
            KvmIrqRouting::from_entries(&entries).map_err(|e| host("building the routing table")(format!("{e:?}")))?;
        self.vm_fd.set_gsi_routing(&routing).map_err(host("KVM_SET_GSI_ROUTING"))
    }

    /// Signals the irqfd of `gsi`, registering one first if the guest has not used it:
    /// with a resample eventfd when `resample` (a level-triggered line, api.rst 4.75).
    /// A GSI keeps the kind it was first registered with.
    fn signal_irqfd(&mut self, gsi: u64, resample: bool) -> ServiceResult {
        let gsi = u32::try_from(gsi).map_err(|_| argument(format!("GSI {gsi:#x} exceeds 32 bits")))?;
        if !self.requests.irqfds.iter().any(|(g, ..)| *g == gsi) {
            if self.requests.irqfds.len() >= hvprobe_abi::limits::MAX_IRQFDS {
                return Err(argument(format!("more than {} irqfds", hvprobe_abi::limits::MAX_IRQFDS)));
            }
            let fd = EventFd::new(EFD_NONBLOCK).map_err(host("eventfd"))?;
            let resample_fd = if resample {
                let r = EventFd::new(EFD_NONBLOCK).map_err(host("eventfd"))?;
                self.vm_fd.register_irqfd_with_resample(&fd, &r, gsi).map_err(host("KVM_IRQFD with resample"))?;
                Some(r)
            } else {
                self.vm_fd.register_irqfd(&fd, gsi).map_err(host("KVM_IRQFD"))?;
                None
            };
            self.requests.irqfds.push((gsi, fd, resample_fd));
        }
        let (_, fd, _) = self.requests.irqfds.iter().find(|(g, ..)| *g == gsi).expect("registered above");
        fd.write(1).map(|()| 0).map_err(host("writing the irqfd"))
    }
}
