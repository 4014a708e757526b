//! The run loop: KVM_RUN until the guest gives a verdict, the vCPU stops in a way the
//! guest cannot recover from, or the watchdog fires. Every ending is classified precisely.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use hvprobe_abi::proto::{self, service};
use hvprobe_abi::{layout, port, sink};
use kvm_bindings::{KVM_EXIT_IO_OUT, kvm_run};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::ioctl_iow_nr;

use crate::devices::Devices;
use crate::protocol::{self, GuestVerdict, Message, Metric};
use crate::stats::StatDelta;
use crate::watchdog::{ImmediateExit, Watchdog};
use crate::{Error, Vm};

/// Answers a service request the built-in services don't know: `None` if it doesn't know
/// it either, `Some(Err(()))` if it failed.
pub type ServiceHandler = Box<dyn FnMut(u32, [u64; 4]) -> Option<Result<u64, ()>> + Send>;

pub struct RunOptions {
    /// The watchdog limit.
    pub timeout: Duration,
    pub services: Option<ServiceHandler>,
    /// The seed generated cases use (service SEED).
    pub seed: u64,
    /// Run only this generated case (service ONLY_CASE), to reproduce one failure.
    pub only_case: Option<u64>,
    /// Stop after this many exits to userspace (`RunEnd::ExitLimit`): how a benchmark
    /// times the run loop on a guest that never stops by itself.
    pub max_exits: Option<u64>,
    /// Stop the guest wherever it is after this long (`RunEnd::Paused`): a save at a
    /// point the guest did not choose.
    pub pause_after: Option<Duration>,
    /// Stop the guest wherever it is when this flag is raised and the vCPU thread kicked
    /// (see `Vm::live_migrate`).
    pub stop: Option<std::sync::Arc<AtomicBool>>,
    /// Look for a livelock (see [`RunEnd::Livelock`]): from [`LIVELOCK_PROBE_AFTER`] on,
    /// vCPU 0 is kicked out of KVM_RUN every [`LIVELOCK_PROBE_EVERY`] and its registers
    /// and KVM statistics read. Off for the watchdog's own cases and for benchmarks.
    pub livelock: bool,
    /// Pin vCPU 0's thread (the caller's) to this CPU for the run, after the other vCPUs'
    /// threads started (they keep the caller's old mask): a benchmark's batches then all run
    /// on one CPU.
    pub pin_cpu: Option<usize>,
}

/// When the livelock probe starts, how often it looks, and how long a vCPU must be stuck.
pub const LIVELOCK_PROBE_AFTER: Duration = Duration::from_millis(100);
pub const LIVELOCK_PROBE_EVERY: Duration = Duration::from_millis(20);
pub const LIVELOCK_WINDOW: Duration = Duration::from_millis(100);
/// Re-executions within the window that make a stuck vCPU a livelock rather than one
/// waiting in the kernel (a HLT, a page fault being served).
pub const LIVELOCK_MIN_REPEATS: u64 = 1000;

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            timeout: Duration::from_secs(10),
            services: None,
            seed: 0,
            only_case: None,
            max_exits: None,
            pause_after: None,
            stop: None,
            livelock: false,
            pin_cpu: None,
        }
    }
}

/// What the livelock probe saw when vCPU 0 last looked stuck.
struct Stuck {
    regs: [u64; 18],
    exits: u64,
    repeats: u64,
    since: Instant,
}

impl Vm {
    /// One look at vCPU 0 for the livelock probe (see [`RunEnd::Livelock`]). `exits` is
    /// the loop's count of returns from KVM_RUN other than the probes' own.
    fn probe_livelock(&self, stuck: &mut Option<Stuck>, exits: u64) -> Option<RunEnd> {
        let stats = self.stats.as_ref()?;
        let r = self.vcpus[0].get_regs().ok()?;
        let regs = [
            r.rip, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12,
            r.r13, r.r14, r.r15,
        ];
        let reading = stats.read().ok()?;
        let repeats = ["insn_emulation", "exits"].iter().filter_map(|n| stats.value(&reading, n)).max()?;
        match stuck {
            Some(s) if s.regs == regs && s.exits == exits => {
                let (over, times) = (s.since.elapsed(), repeats.wrapping_sub(s.repeats));
                if over < LIVELOCK_WINDOW || times < LIVELOCK_MIN_REPEATS {
                    return None;
                }
                // A jump to itself is the guest's own loop, executed as written.
                let snap = self.snapshot().ok()?;
                let insn = iced_x86::Decoder::new(snap.bits, &snap.insn_bytes, iced_x86::DecoderOptions::NONE).decode();
                use iced_x86::FlowControl::{ConditionalBranch, IndirectBranch, UnconditionalBranch};
                if matches!(insn.flow_control(), ConditionalBranch | IndirectBranch | UnconditionalBranch) {
                    return None;
                }
                Some(RunEnd::Livelock { rip: r.rip, repeats: times, over })
            }
            _ => {
                *stuck = Some(Stuck { regs, exits, repeats, since: Instant::now() });
                None
            }
        }
    }
}

/// KVM_EXIT_INTERNAL_ERROR, decoded (KVM API, "KVM_EXIT_INTERNAL_ERROR").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalError {
    pub suberror: u32,
    pub suberror_name: &'static str,
    pub data: Vec<u64>,
    /// For an emulation failure whose exit carries them, the bytes KVM failed to emulate.
    pub insn_bytes: Option<Vec<u8>>,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The guest reported a verdict (see `RunReport::verdict`).
    Verdict,
    /// KVM_EXIT_HLT: the guest halted with no in-kernel APIC to wake it.
    Hlt,
    /// KVM_EXIT_SHUTDOWN: triple fault or an unrecoverable event.
    Shutdown,
    /// KVM_EXIT_FAIL_ENTRY with the hardware's entry-failure reason.
    FailEntry { hardware_reason: u64, cpu: u32 },
    /// KVM_EXIT_INTERNAL_ERROR.
    InternalError(InternalError),
    /// KVM_EXIT_SYSTEM_EVENT (reset, shutdown, crash...).
    SystemEvent { kind: u32, data: Vec<u64> },
    /// The watchdog stopped the guest at its limit.
    Timeout { limit: Duration },
    /// The guest sent a message the protocol does not allow.
    ProtocolError(String),
    /// An exit the harness does not expect from a test guest.
    UnexpectedExit(String),
    /// KVM_RUN itself failed.
    KvmRunFailed(String),
    /// `RunOptions::max_exits` exits happened.
    ExitLimit { exits: u64 },
    /// The guest asked to be saved (service CHECKPOINT with this tag); it continues at
    /// the next `run`, of this VM or of one restored from its snapshot.
    Checkpoint { tag: u64 },
    /// `RunOptions::pause_after` passed, or `RunOptions::stop` was raised; the guest
    /// continues at the next `run`.
    Paused,
    /// A check the host made around the guest failed (a migration that did not copy
    /// memory exactly, a restore in another process that did not finish, ...).
    HostCheck(String),
    /// vCPU 0 never left KVM_RUN while KVM re-executed one instruction, not a branch, at
    /// least [`LIVELOCK_MIN_REPEATS`] times over [`LIVELOCK_WINDOW`] with its registers
    /// unchanged (its `insn_emulation` or `exits` statistic counting the attempts): a
    /// livelock in the hypervisor, ended early instead of at the watchdog's limit. The
    /// instruction is the snapshot's.
    Livelock { rip: u64, repeats: u64, over: Duration },
}

impl RunEnd {
    /// A short stable name, used in failure signatures and results files.
    pub fn kind(&self) -> &'static str {
        match self {
            RunEnd::Verdict => "verdict",
            RunEnd::Hlt => "hlt",
            RunEnd::Shutdown => "shutdown",
            RunEnd::FailEntry { .. } => "fail_entry",
            RunEnd::InternalError(_) => "internal_error",
            RunEnd::SystemEvent { .. } => "system_event",
            RunEnd::Timeout { .. } => "timeout",
            RunEnd::ProtocolError(_) => "protocol_error",
            RunEnd::UnexpectedExit(_) => "unexpected_exit",
            RunEnd::KvmRunFailed(_) => "kvm_run_failed",
            RunEnd::ExitLimit { .. } => "exit_limit",
            RunEnd::Checkpoint { .. } => "checkpoint",
            RunEnd::Paused => "paused",
            RunEnd::HostCheck(_) => "host_check",
            RunEnd::Livelock { .. } => "livelock",
        }
    }

    /// Every [`RunEnd::kind`], for readers that validate a kind named in a file.
    pub const KINDS: [&'static str; 15] = [
        "verdict",
        "hlt",
        "shutdown",
        "fail_entry",
        "internal_error",
        "system_event",
        "timeout",
        "protocol_error",
        "unexpected_exit",
        "kvm_run_failed",
        "exit_limit",
        "checkpoint",
        "paused",
        "host_check",
        "livelock",
    ];

    pub fn describe(&self) -> String {
        match self {
            RunEnd::FailEntry { hardware_reason, cpu } => {
                format!("KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {hardware_reason:#x} on CPU {cpu}")
            }
            RunEnd::InternalError(e) => {
                let mut s = format!("KVM_EXIT_INTERNAL_ERROR: suberror {} ({})", e.suberror, e.suberror_name);
                if let Some(b) = &e.insn_bytes {
                    s += &format!(", instruction bytes {}", hex(b));
                }
                if !e.data.is_empty() {
                    s += &format!(", data {:x?}", e.data);
                }
                s
            }
            RunEnd::SystemEvent { kind, data } => format!("KVM_EXIT_SYSTEM_EVENT type {kind}, data {data:x?}"),
            RunEnd::Timeout { limit } => format!("watchdog stopped the guest after {:.3} s", limit.as_secs_f64()),
            RunEnd::ProtocolError(m) => format!("protocol error: {m}"),
            RunEnd::UnexpectedExit(m) => format!("unexpected exit: {m}"),
            RunEnd::KvmRunFailed(m) => format!("KVM_RUN failed: {m}"),
            RunEnd::ExitLimit { exits } => format!("stopped after {exits} exits, as asked"),
            RunEnd::Checkpoint { tag } => format!("the guest asked to be saved (checkpoint {tag})"),
            RunEnd::Paused => "paused by the host, as asked".into(),
            RunEnd::HostCheck(m) => format!("host check failed: {m}"),
            RunEnd::Livelock { rip, repeats, over } => format!(
                "livelock: KVM re-executed the instruction at rip {rip:#x} {repeats} times in {:.0} ms with vCPU 0's \
                 registers unchanged and no exit to userspace",
                over.as_secs_f64() * 1e3
            ),
            RunEnd::Verdict => "the guest reported a verdict".into(),
            RunEnd::Hlt => "KVM_EXIT_HLT: the guest halted".into(),
            RunEnd::Shutdown => "KVM_EXIT_SHUTDOWN: triple fault or unrecoverable event".into(),
        }
    }
}

/// Formats bytes as "0f 01 c1".
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// vCPU 0's state when a run ended without a verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuSnapshot {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cs: u16,
    pub cpl: u8,
    /// The code size CS gives: 16, 32 or 64 bits.
    pub bits: u32,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// rax, rbx, rcx, rdx, rsi, rdi, rbp, r8-r15.
    pub gprs: [u64; 15],
    /// Up to 15 bytes at CS:RIP (fewer if the rest is not in guest RAM).
    pub insn_bytes: Vec<u8>,
}

impl std::fmt::Display for CpuSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rip {:#x} cs {:#x} (CPL {}) rsp {:#x} rflags {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}; bytes at rip: {}",
            self.rip,
            self.cs,
            self.cpl,
            self.rsp,
            self.rflags,
            self.cr0,
            self.cr2,
            self.cr3,
            self.cr4,
            self.efer,
            if self.insn_bytes.is_empty() { "unavailable".into() } else { hex(&self.insn_bytes) }
        )
    }
}

/// What happened inside the guest's measured section (services SECTION_BEGIN and
/// SECTION_END), for the path table: how each way to a behaviour was handled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Section {
    /// Operations of the behaviour the guest did in it, and accesses to the interface
    /// that carried them (SECTION_END's two arguments).
    pub ops: u64,
    pub accesses: u64,
    /// Exits to this VMM inside it, by kind (the services' own exits are not counted).
    pub io_exits: u64,
    pub mmio_exits: u64,
    pub other_exits: u64,
    /// Changes of the vCPU's KVM statistics over it (SECTION_END's own exit included).
    pub stats: Vec<StatDelta>,
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
    before: Option<Vec<u64>>,
    counts: Section,
}

/// Everything a run produced. The harness reports; the suites judge.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub end: Option<RunEnd>,
    pub verdict: Option<GuestVerdict>,
    pub snapshot: Option<CpuSnapshot>,
    pub console: String,
    pub console_truncated: bool,
    pub log: Vec<String>,
    pub log_dropped: u64,
    /// Metrics past [`hvprobe_abi::limits::METRICS`], counted and not kept.
    pub metrics_dropped: u64,
    pub metrics: Vec<Metric>,
    /// Accesses to absent devices.
    pub notes: Vec<String>,
    pub duration: Duration,
    pub stats: Vec<StatDelta>,
    pub stats_error: Option<String>,
    /// The guest's measured section, once closed.
    pub section: Option<Section>,
}

impl RunReport {
    pub fn end(&self) -> &RunEnd {
        self.end.as_ref().unwrap_or(&RunEnd::Verdict)
    }
}

const LOG_LIMIT: usize = hvprobe_abi::limits::LOG_LINES;
const METRIC_LIMIT: usize = hvprobe_abi::limits::METRICS;

/// What the loop does after one exit.
enum Step {
    Continue,
    Stop(RunEnd),
}

impl Vm {
    /// Runs vCPU 0 until the case ends. Errors are harness problems only.
    pub fn run(&mut self, mut options: RunOptions) -> Result<RunReport, Error> {
        let mut report = RunReport::default();
        let mut devices = std::mem::take(&mut self.devices);
        let before = self.stats.as_ref().map(|s| s.read()).transpose()?;
        let run_ptr: *mut kvm_run = self.vcpus[0].get_kvm_run();
        // SAFETY: run_ptr points into vCPU 0's kvm_run mapping, live for as long as `self`.
        let immediate_exit = ImmediateExit(unsafe { &raw mut (*run_ptr).immediate_exit });
        let start = Instant::now();
        let watchdog = Watchdog::arm(options.timeout, immediate_exit, options.stop.clone())?;
        let pause = options.pause_after.map(|after| Watchdog::arm(after, immediate_exit, None)).transpose()?;
        let ticker = options
            .livelock
            .then(|| Watchdog::ticker(LIVELOCK_PROBE_AFTER, LIVELOCK_PROBE_EVERY, immediate_exit))
            .transpose()?;
        let (mut probed, mut stuck) = (0u64, None::<Stuck>);
        let max_exits = options.max_exits.unwrap_or(u64::MAX);
        let mut exits = 0u64;
        // The application processors run on their own threads for as long as vCPU 0 does.
        let mut aps: Vec<VcpuFd> = self.vcpus.drain(1..).collect();
        let ap_notes = Mutex::new(Vec::new());
        let ap_stop = AtomicBool::new(false);
        let ap_tids: Vec<AtomicU64> = aps.iter().map(|_| AtomicU64::new(0)).collect();
        let ring = self.ring.clone();
        let ring_stop = AtomicBool::new(false);
        let view = self.memory.raw_view();
        let end = std::thread::scope(|scope| {
            let aps = ApThreads::start(scope, &mut aps, &ap_notes, &ap_stop, &ap_tids);
            // A pin that fails costs only steadiness: the run goes on, and says so.
            let _pin = options
                .pin_cpu
                .and_then(|cpu| crate::affinity::Pinned::to(cpu).map_err(|e| devices.notes.push(e.to_string())).ok());
            if let Some(ring) = &ring {
                // SAFETY: the memory is `self`'s, which outlives this scope.
                scope.spawn(|| unsafe { ring.serve(view, &ring_stop) });
            }
            let end = loop {
                if watchdog.fired() {
                    break RunEnd::Timeout { limit: options.timeout };
                }
                if pause.as_ref().is_some_and(Watchdog::fired)
                    || options.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
                {
                    break RunEnd::Paused;
                }
                if let Some(t) = ticker.as_ref().filter(|t| t.kicks() != probed) {
                    probed = t.kicks();
                    // The probe's kick is served: let the next KVM_RUN in. (A watchdog or
                    // stop kick that lands meanwhile is repeated every 20 ms.)
                    immediate_exit.set(0);
                    // Each probe costs one return from KVM_RUN; any other return is an exit.
                    if let Some(end) = self.probe_livelock(&mut stuck, exits.wrapping_sub(probed)) {
                        break end;
                    }
                }
                if exits == max_exits {
                    break RunEnd::ExitLimit { exits };
                }
                exits += 1;
                let step = self.step(run_ptr, &mut devices, &mut report, &mut options);
                if let Step::Stop(end) = step {
                    break end;
                }
            };
            aps.stop();
            ring_stop.store(true, Ordering::SeqCst);
            end
        });
        if let Some(e) = ring.as_ref().and_then(|r| r.state.lock().unwrap_or_else(|e| e.into_inner()).error.clone()) {
            devices.notes.push(format!("shared ring: {e}"));
        }
        self.vcpus.extend(aps);
        devices.notes.extend(ap_notes.into_inner().unwrap_or_else(|e| e.into_inner()));
        let devices = {
            let captures = devices.take_captures();
            self.devices = devices;
            captures
        };
        report.duration = start.elapsed();
        drop(watchdog);
        drop(pause);
        drop(ticker);
        // SAFETY: as above; no KVM_RUN is in progress any more.
        unsafe { (*run_ptr).immediate_exit = 0 };

        // A benchmark's exit limit is no failure: nothing to show of the vCPU.
        if !matches!(end, RunEnd::Verdict | RunEnd::Checkpoint { .. } | RunEnd::Paused | RunEnd::ExitLimit { .. }) {
            report.snapshot = self.snapshot().ok();
        }
        if let (Some(stats), Some(before)) = (&self.stats, before) {
            report.stats = stats.deltas(&before, &stats.read()?);
        }
        report.stats_error = self.stats_error.clone();
        report.console = String::from_utf8_lossy(&devices.console).into_owned();
        report.console_truncated = devices.console_truncated;
        report.notes = devices.notes;
        if devices.notes_dropped > 0 {
            report.notes.push(format!("... and {} more accesses to absent devices", devices.notes_dropped));
        }
        report.end = Some(end);
        Ok(report)
    }

    /// The MEMSLOT service: add, move or delete the hot-plugged slot. The slot's memory
    /// is dropped only after KVM deleted the slot, and kept with its old address when a
    /// move fails.
    fn memslot(&mut self, args: [u64; 4]) -> Result<u64, ()> {
        use hvprobe_abi::layout::{HOTPLUG_BASE, HOTPLUG_SIZE, HOTPLUG_WINDOW};
        use hvprobe_abi::proto::{MEMSLOT_ADD, MEMSLOT_DELETE, MEMSLOT_MOVE};
        let gpa = args[1];
        let in_window = gpa.is_multiple_of(4096)
            && gpa >= HOTPLUG_BASE
            && gpa.checked_add(HOTPLUG_SIZE).is_some_and(|end| end <= HOTPLUG_BASE + HOTPLUG_WINDOW);
        match args[0] {
            MEMSLOT_ADD if in_window && self.hotplug.is_none() => {
                let memory = crate::GuestMemory::new(HOTPLUG_SIZE).map_err(|_| ())?;
                for offset in (0..HOTPLUG_SIZE).step_by(8) {
                    memory.write_u64(offset, args[2] ^ offset).map_err(|_| ())?;
                }
                // SAFETY: the memory is kept in `hotplug`, declared after the VM fd, until
                // KVM has deleted the slot.
                unsafe { memory.map_as_slot(&self.vm_fd, crate::vm::HOTPLUG_SLOT, gpa, 0) }.map_err(|_| ())?;
                self.hotplug = Some((gpa, memory));
                Ok(0)
            }
            MEMSLOT_MOVE if in_window => {
                let (at, memory) = self.hotplug.as_mut().ok_or(())?;
                // Same slot and memory at another address: KVM's move (api.rst 4.35).
                // SAFETY: as for ADD; on failure the slot stays where it was.
                unsafe { memory.map_as_slot(&self.vm_fd, crate::vm::HOTPLUG_SLOT, gpa, 0) }.map_err(|_| ())?;
                *at = gpa;
                Ok(0)
            }
            MEMSLOT_DELETE if self.hotplug.is_some() => {
                crate::GuestMemory::unmap_slot(&self.vm_fd, crate::vm::HOTPLUG_SLOT).map_err(|_| ())?;
                self.hotplug = None;
                Ok(0)
            }
            _ => Err(()),
        }
    }

    /// KVM_EXIT_DEBUG: recorded; a breakpoint is one shot (the host steps past a
    /// software breakpoint's INT3 and turns guest debugging off), single-stepping goes on.
    fn debug_exit(&mut self, arch: kvm_bindings::kvm_debug_exit_arch) -> Step {
        let d = &mut self.guest_debug;
        d.exits += 1;
        if d.log.len() < GuestDebug::LOGGED {
            d.log.push(arch);
        }
        if d.control & hvprobe_abi::guest_debug::SINGLESTEP != 0 {
            return Step::Continue;
        }
        const BP_VECTOR: u32 = 3;
        if arch.exception == BP_VECTOR {
            let Ok(mut regs) = self.vcpus[0].get_regs() else {
                return Step::Stop(RunEnd::UnexpectedExit("KVM_GET_REGS failed after a debug exit".into()));
            };
            let mut byte = [0u8];
            if self.memory.read(regs.rip, &mut byte).is_ok() && byte[0] == 0xcc {
                regs.rip += 1;
                if self.vcpus[0].set_regs(&regs).is_err() {
                    return Step::Stop(RunEnd::UnexpectedExit("KVM_SET_REGS failed after a debug exit".into()));
                }
            }
        }
        self.guest_debug.control = 0;
        match self.vcpus[0].set_guest_debug(&kvm_bindings::kvm_guest_debug::default()) {
            Ok(()) => Step::Continue,
            Err(e) => Step::Stop(RunEnd::UnexpectedExit(format!("KVM_SET_GUEST_DEBUG off after a breakpoint: {e}"))),
        }
    }

    fn step(
        &mut self,
        run_ptr: *mut kvm_run,
        devices: &mut Devices,
        report: &mut RunReport,
        options: &mut RunOptions,
    ) -> Step {
        if let Some(vector) = self.pending_interrupt {
            // KVM_INTERRUPT only when KVM says the vCPU can take one; otherwise ask for an
            // exit as soon as it can (api.rst, KVM_INTERRUPT and request_interrupt_window).
            // SAFETY: run_ptr is vCPU 0's kvm_run, and no KVM_RUN is in progress.
            let ready = unsafe { (*run_ptr).ready_for_interrupt_injection != 0 && (*run_ptr).if_flag != 0 };
            if ready && self.inject_interrupt(vector).is_ok() {
                self.pending_interrupt = None;
            }
            // SAFETY: as above.
            unsafe { (*run_ptr).request_interrupt_window = self.pending_interrupt.is_some() as u8 };
        }
        let vcpu = &mut self.vcpus[0];
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => return Step::Continue,
            Err(e) => return Step::Stop(RunEnd::KvmRunFailed(e.to_string())),
        };
        // Coalesced writes happened before this exit: apply them first (api.rst 4.116).
        if let Some(ring) = &mut self.coalesced {
            ring.drain(devices);
        }
        if let Some(probe) = &mut self.section {
            let c = &mut probe.counts;
            match &exit {
                VcpuExit::IoIn(p, _) | VcpuExit::IoOut(p, _) if *p != port::PROTOCOL => c.io_exits += 1,
                VcpuExit::MmioWrite(a, _) if *a == layout::PROTOCOL_MMIO => {}
                VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => c.mmio_exits += 1,
                VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => {}
                _ => c.other_exits += 1,
            }
        }
        match exit {
            VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => {}
            VcpuExit::MmioRead(addr, data) => {
                devices.mmio_read(addr, data);
                return Step::Continue;
            }
            VcpuExit::MmioWrite(addr, data) if addr == layout::PROTOCOL_MMIO => {
                let Ok(bytes) = <[u8; 4]>::try_from(data) else {
                    return Step::Stop(RunEnd::ProtocolError(format!(
                        "the protocol doorbell takes a 32-bit write, got {} bytes",
                        data.len()
                    )));
                };
                return self.message(u32::from_le_bytes(bytes).into(), devices, report, options);
            }
            VcpuExit::MmioWrite(addr, data) => {
                devices.mmio_write(addr, data);
                return Step::Continue;
            }
            // Without the irqchip, a HLT waiting for an interrupt the host has queued goes on:
            // the next entry injects it.
            VcpuExit::Hlt if self.pending_interrupt.is_some() => return Step::Continue,
            VcpuExit::Hlt => return Step::Stop(RunEnd::Hlt),
            VcpuExit::Shutdown => return Step::Stop(RunEnd::Shutdown),
            VcpuExit::FailEntry(hardware_reason, cpu) => return Step::Stop(RunEnd::FailEntry { hardware_reason, cpu }),
            VcpuExit::SystemEvent(kind, data) => return Step::Stop(RunEnd::SystemEvent { kind, data: data.to_vec() }),
            VcpuExit::Intr | VcpuExit::IrqWindowOpen => return Step::Continue,
            // Without an in-kernel LAPIC, kvm_amd hands a write that lowers CR8 to userspace
            // (svm.c, cr8_write_interception) so that a VMM with its own APIC can deliver
            // what the new priority unmasks. The harness has no userspace APIC and raises
            // interrupts only when a case asks: nothing to do but go on.
            VcpuExit::SetTpr => return Step::Continue,
            VcpuExit::Debug(arch) => return self.debug_exit(arch),
            VcpuExit::Hyperv => {
                // SAFETY: the exit reason says the `hyperv` member of the union is valid.
                let hv = unsafe { &mut (*run_ptr).__bindgen_anon_1.hyperv };
                match hv.type_ {
                    // The guest changed SCONTROL, SIEFP or SIMP (api.rst 5, KVM_EXIT_HYPERV):
                    // KVM has applied it; a VMM without SynIC devices of its own goes on.
                    kvm_bindings::KVM_EXIT_HYPERV_SYNIC => return Step::Continue,
                    // A hypercall KVM leaves to the VMM (HvPostMessage, HvSignalEvent): the
                    // harness offers no message ports, so the call code is unknown to it.
                    kvm_bindings::KVM_EXIT_HYPERV_HCALL => {
                        const HV_STATUS_INVALID_HYPERCALL_CODE: u64 = 2;
                        // Writing a union field is safe; the type says `hcall` is the valid one.
                        hv.u.hcall.result = HV_STATUS_INVALID_HYPERCALL_CODE;
                        return Step::Continue;
                    }
                    other => return Step::Stop(RunEnd::UnexpectedExit(format!("KVM_EXIT_HYPERV of type {other}"))),
                }
            }
            VcpuExit::X86Rdmsr(exit) => {
                use hvprobe_abi::user_msr::{FILTERED, FILTERED_VALUE, UNKNOWN, UNKNOWN_VALUE};
                self.user_msr.exits += 1;
                match exit.index {
                    UNKNOWN => *exit.data = UNKNOWN_VALUE,
                    FILTERED => *exit.data = FILTERED_VALUE,
                    // Any other MSR is what KVM would refuse: #GP(0) in the guest.
                    _ => *exit.error = 1,
                }
                return Step::Continue;
            }
            VcpuExit::X86Wrmsr(exit) => {
                self.user_msr.exits += 1;
                self.user_msr.last_write = Some((exit.index, exit.data, exit.reason.bits()));
                if exit.index == hvprobe_abi::user_msr::REFUSED {
                    *exit.error = 1;
                }
                return Step::Continue;
            }
            VcpuExit::InternalError => {
                // SAFETY: the exit reason says the `internal` member of the union is valid.
                let internal = unsafe { (*run_ptr).__bindgen_anon_1.internal };
                return Step::Stop(RunEnd::InternalError(decode_internal(
                    internal.suberror,
                    internal.ndata,
                    &internal.data,
                )));
            }
            VcpuExit::Unsupported(kvm_bindings::KVM_EXIT_DIRTY_RING_FULL) => {
                // The rings are collected by whoever holds them: a live migration's pre-copy
                // thread (give it a moment), or this VM, into its dirty record.
                if self.rings.is_empty() {
                    std::thread::sleep(Duration::from_millis(1));
                } else if let Ok(pages) = crate::dirty::harvest(&mut self.rings, &self.vm_fd) {
                    self.record_dirty(&pages);
                }
                return Step::Continue;
            }
            VcpuExit::Unknown => {
                // SAFETY: KVM_EXIT_UNKNOWN fills the `hw` member.
                let reason = unsafe { (*run_ptr).__bindgen_anon_1.hw.hardware_exit_reason };
                return Step::Stop(RunEnd::UnexpectedExit(format!(
                    "KVM_EXIT_UNKNOWN, hardware exit reason {reason:#x}"
                )));
            }
            other => return Step::Stop(RunEnd::UnexpectedExit(format!("{other:?}"))),
        }
        // Port I/O: kvm-ioctls's data slice hides the access width when count > 1 (string
        // I/O), so read the `io` member directly.
        // SAFETY: the exit reason is KVM_EXIT_IO, so `io` is the valid union member.
        let io = unsafe { (*run_ptr).__bindgen_anon_1.io };
        let (size, count) = (io.size as usize, io.count as usize);
        let offset = io.data_offset as usize;
        if !matches!(size, 1 | 2 | 4) || offset.checked_add(size * count).is_none_or(|e| e > self.vcpu_mmap_size) {
            return Step::Stop(RunEnd::UnexpectedExit(format!(
                "KVM_EXIT_IO with size {size}, count {count}, offset {offset}"
            )));
        }
        // SAFETY: [offset, offset + size * count) was just checked to lie in the kvm_run
        // mapping, which KVM sized as vcpu_mmap_size.
        let data = unsafe { std::slice::from_raw_parts_mut((run_ptr as *mut u8).add(offset), size * count) };
        let out = u32::from(io.direction) == KVM_EXIT_IO_OUT;
        if io.port == port::PROTOCOL {
            if !out || size != 4 || count != 1 {
                return Step::Stop(RunEnd::ProtocolError(format!(
                    "the protocol port takes one 32-bit OUT, got {} of {size} bytes x {count}",
                    if out { "OUT" } else { "IN" }
                )));
            }
            let addr = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            return self.message(addr.into(), devices, report, options);
        }
        for chunk in data.chunks_exact_mut(size) {
            if out {
                devices.port_write(io.port, chunk);
            } else {
                devices.port_read(io.port, chunk);
            }
        }
        Step::Continue
    }

    fn message(&mut self, addr: u64, devices: &Devices, report: &mut RunReport, options: &mut RunOptions) -> Step {
        match protocol::decode(&self.memory, addr) {
            Err(e) => Step::Stop(RunEnd::ProtocolError(e)),
            Ok(Message::Verdict(v)) => {
                report.verdict = Some(v);
                Step::Stop(RunEnd::Verdict)
            }
            Ok(Message::Log(text)) => {
                let kept: usize = report.log.iter().map(String::len).sum();
                if report.log.len() < LOG_LIMIT && kept + text.len() <= hvprobe_abi::limits::LOG_BYTES {
                    report.log.push(text);
                } else {
                    report.log_dropped += 1;
                }
                Step::Continue
            }
            Ok(Message::Metric(m)) => {
                if report.metrics.len() < METRIC_LIMIT {
                    report.metrics.push(m);
                } else {
                    report.metrics_dropped += 1;
                }
                Step::Continue
            }
            Ok(Message::Service { id, args, addr }) => {
                if id == service::CHECKPOINT {
                    return match protocol::complete_service(&self.memory, addr, proto::SERVICE_OK, 0) {
                        Ok(()) => Step::Stop(RunEnd::Checkpoint { tag: args[0] }),
                        Err(e) => Step::Stop(RunEnd::ProtocolError(e)),
                    };
                }
                let answer = match options.services.as_mut().and_then(|h| h(id, args)) {
                    Some(a) => Some(a),
                    None => match id {
                        service::SEED => Some(Ok(options.seed)),
                        service::ONLY_CASE => Some(Ok(options.only_case.unwrap_or(u64::MAX))),
                        _ => self.builtin_service(id, args, devices, report),
                    },
                };
                let (status, result) = match answer {
                    Some(Ok(v)) => (proto::SERVICE_OK, v),
                    Some(Err(())) => (proto::SERVICE_FAILED, 0),
                    None => (proto::SERVICE_UNKNOWN, 0),
                };
                match protocol::complete_service(&self.memory, addr, status, result) {
                    Ok(()) => Step::Continue,
                    Err(e) => Step::Stop(RunEnd::ProtocolError(e)),
                }
            }
        }
    }

    fn builtin_service(
        &mut self,
        id: u32,
        args: [u64; 4],
        devices: &Devices,
        report: &mut RunReport,
    ) -> Option<Result<u64, ()>> {
        match id {
            service::COALESCED_COUNT => self.coalesced.as_ref().map(|r| Ok(r.drained)),
            service::GET_CLOCK => Some(self.vm_fd.get_clock().map(|c| c.clock).map_err(|_| ())),
            // A change that would take the clock below zero or past i64::MAX nanoseconds is
            // refused rather than wrapped.
            service::SET_CLOCK => Some(self.vm_fd.get_clock().map_err(|_| ()).and_then(|c| {
                let set = c.clock.checked_add_signed(args[0] as i64).filter(|&n| i64::try_from(n).is_ok()).ok_or(())?;
                let clock = kvm_bindings::kvm_clock_data { clock: set, ..Default::default() };
                self.vm_fd.set_clock(&clock).map(|()| clock.clock).map_err(|_| ())
            })),
            service::SINK => Some(match args[0] {
                sink::RING => self
                    .ring
                    .as_ref()
                    .map(|r| r.state.lock().unwrap_or_else(|e| e.into_inner()).sink.packed())
                    .ok_or(()),
                id => devices.sinks.get(id as usize).map(|s| s.packed()).ok_or(()),
            }),
            service::KVM_STAT => Some(
                hvprobe_abi::kvm_stat::NAMES
                    .get(args[0] as usize)
                    .zip(self.stats.as_ref())
                    .and_then(|(name, stats)| stats.read().ok().and_then(|r| stats.value(&r, name)))
                    .ok_or(()),
            ),
            service::GUEST_DEBUG => {
                if args[0] & !hvprobe_abi::guest_debug::ALL != 0 {
                    return Some(Err(()));
                }
                let mut dbg = kvm_bindings::kvm_guest_debug { control: args[0] as u32, ..Default::default() };
                dbg.arch.debugreg[0] = args[1];
                dbg.arch.debugreg[7] = args[2];
                // Turning debugging on starts a new record; turning it off keeps the record
                // for DEBUG_EXITS.
                if args[0] == 0 {
                    self.guest_debug.control = 0;
                } else {
                    self.guest_debug = GuestDebug { control: args[0], ..GuestDebug::default() };
                }
                Some(self.vcpus[0].set_guest_debug(&dbg).map(|()| 0).map_err(|_| ()))
            }
            service::DEBUG_EXITS => {
                let d = &self.guest_debug;
                Some(match (args[0], d.log.first()) {
                    (0, _) => Ok(d.exits),
                    (1, Some(f)) => Ok(f.exception.into()),
                    (2, Some(f)) => Ok(f.pc),
                    (3, Some(f)) => Ok(f.dr6),
                    (4, _) => Ok(d.log.iter().filter(|e| (args[1]..args[2]).contains(&e.pc)).count() as u64),
                    _ => Err(()),
                })
            }
            service::USER_MSR_LAST => {
                let u = &self.user_msr;
                Some(match (args[0], u.last_write) {
                    (0, Some((index, _, _))) => Ok(index.into()),
                    (1, Some((_, value, _))) => Ok(value),
                    (2, Some((_, _, reason))) => Ok(reason.into()),
                    (3, _) => Ok(u.exits),
                    _ => Err(()),
                })
            }
            service::MEMSLOT => Some(self.memslot(args)),
            service::HOST_CLOCK => {
                let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                // SAFETY: clock_gettime writes the timespec it is given.
                let ok = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } == 0;
                Some(if ok { Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64) } else { Err(()) })
            }
            service::HOST_SLEEP => {
                let t = Instant::now();
                std::thread::sleep(Duration::from_micros(args[0].min(100_000)));
                Some(Ok(t.elapsed().as_nanos() as u64))
            }
            service::SECTION_BEGIN => {
                let before = self.stats.as_ref().and_then(|s| s.read().ok());
                self.section = Some(SectionProbe { before, counts: Section::default() });
                Some(Ok(0))
            }
            service::SECTION_END => {
                let Some(probe) = self.section.take() else { return Some(Err(())) };
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
                i if i < crate::IOEVENTS.len() as u64 => {
                    self.ioevents.get(i as usize).map(|fd| fd.read().unwrap_or(0)).ok_or(())
                }
                proto::IOEVENT_RING_DOORBELL => self
                    .ring
                    .as_ref()
                    .map(|r| std::mem::take(&mut r.state.lock().unwrap_or_else(|e| e.into_inner()).doorbells))
                    .ok_or(()),
                _ => Err(()),
            }),
            service::ECHO_XOR => Some(Ok(args[0] ^ args[1])),
            service::CPUID_AS_SET => {
                let (Ok(leaf), Ok(subleaf)) = (u32::try_from(args[0]), u32::try_from(args[1])) else {
                    return Some(Err(()));
                };
                Some(match (self.cpuid_as_set(leaf, subleaf), args[2]) {
                    (Some(e), 0) => Ok(u64::from(e.eax) | u64::from(e.ebx) << 32),
                    (Some(e), 1) => Ok(u64::from(e.ecx) | u64::from(e.edx) << 32),
                    _ => Err(()),
                })
            }
            service::TSC_KHZ => Some(self.vcpus[0].get_tsc_khz().map(u64::from).map_err(|_| ())),
            service::CPUID_ENTRY => Some(
                usize::try_from(args[0])
                    .ok()
                    .and_then(|i| self.cpuid.get(i))
                    .map(|e| u64::from(e.function) | u64::from(e.index) << 32)
                    .ok_or(()),
            ),
            service::CONSOLE_BYTES => Some(Ok(devices.console_total)),
            service::DIRTY_LOG => Some(self.dirty_service(args)),
            service::IRQ_LINE => Some(
                u32::try_from(args[0])
                    .map_err(|_| ())
                    .and_then(|gsi| self.vm_fd.set_irq_line(gsi, args[1] != 0).map(|()| 0).map_err(|_| ())),
            ),
            service::SIGNAL_MSI => {
                let msi = kvm_bindings::kvm_msi {
                    address_lo: args[0] as u32,
                    address_hi: (args[0] >> 32) as u32,
                    data: args[1] as u32,
                    ..Default::default()
                };
                Some(self.vm_fd.signal_msi(msi).map(|n| n as u64).map_err(|_| ()))
            }
            service::NMI => Some(self.vcpus[0].nmi().map(|()| 0).map_err(|_| ())),
            service::SMI => Some(self.vcpus[0].smi().map(|()| 0).map_err(|_| ())),
            service::TSC_OFFSET => Some(self.tsc_offset(args)),
            service::IRQFD => Some(self.signal_irqfd(args[0], false)),
            service::MSI_ROUTE => Some(self.route_msi(args).map(|()| 0)),
            service::IRQFD_RESAMPLE => Some(self.signal_irqfd(args[0], true)),
            service::RESAMPLE_COUNT => Some(
                self.irqfds
                    .iter()
                    .find(|(g, ..)| u64::from(*g) == args[0])
                    .and_then(|(_, _, resample)| resample.as_ref())
                    .map(|resample| resample.read().unwrap_or(0))
                    .ok_or(()),
            ),
            // KVM_INTERRUPT takes vectors 0-255 (api.rst 4.16); anything else would stay
            // pending forever, each interrupt window failing to inject it.
            service::INTERRUPT if !self.irqchip => Some(match u8::try_from(args[0]) {
                Ok(vector) => {
                    self.pending_interrupt = Some(vector.into());
                    Ok(0)
                }
                Err(_) => Err(()),
            }),
            _ => None,
        }
    }

    /// Registers and the instruction bytes at CS:RIP of vCPU 0.
    pub fn snapshot(&self) -> Result<CpuSnapshot, Error> {
        let vcpu = &self.vcpus[0];
        let r = vcpu.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?;
        let s = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        let linear = s.cs.base.wrapping_add(r.rip);
        // With paging on, translate; identity mapping is the fallback when KVM cannot.
        let phys = if s.cr0 & (1 << 31) != 0 {
            vcpu.translate_gva(linear).ok().filter(|t| t.valid != 0).map_or(linear, |t| t.physical_address)
        } else {
            linear
        };
        let insn_bytes = protocol::insn_bytes_at(&self.memory, phys);
        Ok(CpuSnapshot {
            rip: r.rip,
            rsp: r.rsp,
            rflags: r.rflags,
            cs: s.cs.selector,
            cpl: s.cs.dpl,
            bits: code_bits(s.cr0, s.efer, s.cs.l, s.cs.db),
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
            gprs: [
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15,
            ],
            insn_bytes,
        })
    }
}

/// The code size of a CS descriptor: 64 in long mode's 64-bit submode (EFER.LMA, CS.L),
/// 32 with CS.D in protected mode, 16 otherwise (SDM Vol. 3A 3.4.5, APM Vol. 2 4.8).
pub fn code_bits(cr0: u64, efer: u64, l: u8, db: u8) -> u32 {
    match (cr0 & 1 != 0, efer & (1 << 10) != 0 && l != 0, db != 0) {
        (false, ..) => 16,
        (true, true, _) => 64,
        (true, false, true) => 32,
        (true, false, false) => 16,
    }
}

/// The first instruction of `bytes`, decoded as `bits`-bit code: the bytes that define an
/// instruction-level failure, without those after it (which change with the code's
/// layout, not with the behaviour). An encoding the decoder cannot read keeps its first
/// byte only; empty input stays empty.
pub fn first_instruction(bytes: &[u8], bits: u32) -> &[u8] {
    use iced_x86::{Decoder, DecoderOptions};
    if bytes.is_empty() {
        return bytes;
    }
    let bits = if matches!(bits, 16 | 32 | 64) { bits } else { 64 };
    let insn = Decoder::new(bits, bytes, DecoderOptions::NONE).decode();
    let len = if insn.is_invalid() { 1 } else { insn.len().clamp(1, bytes.len()) };
    &bytes[..len]
}

ioctl_iow_nr!(KVM_INTERRUPT, kvm_bindings::KVMIO, 0x86, kvm_bindings::kvm_interrupt);
ioctl_iow_nr!(KVM_SET_DEVICE_ATTR, kvm_bindings::KVMIO, 0xe1, kvm_bindings::kvm_device_attr);
ioctl_iow_nr!(KVM_GET_DEVICE_ATTR, kvm_bindings::KVMIO, 0xe2, kvm_bindings::kvm_device_attr);

impl Vm {
    /// KVM_INTERRUPT (kvm-ioctls has no wrapper).
    fn inject_interrupt(&self, vector: u32) -> Result<(), Error> {
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
    fn tsc_offset(&self, args: [u64; 4]) -> Result<u64, ()> {
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
            return Err(());
        }
        match args[0] {
            // SAFETY: RDTSC has no side effects.
            TSC_OFFSET_READ => Ok(unsafe { core::arch::x86_64::_rdtsc() }.wrapping_add(offset)),
            TSC_OFFSET_ADD => {
                offset = offset.wrapping_add(args[1]);
                attr.addr = &raw const offset as u64;
                // SAFETY: KVM_SET_DEVICE_ATTR reads one u64 at `addr`, which is `offset`.
                let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.vcpus[0], KVM_SET_DEVICE_ATTR(), &attr) };
                if ret < 0 { Err(()) } else { Ok(offset) }
            }
            _ => Err(()),
        }
    }

    /// KVM_SET_GSI_ROUTING with KVM's default irqchip routes and one MSI route.
    fn route_msi(&self, args: [u64; 4]) -> Result<(), ()> {
        use kvm_bindings::{
            KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KvmIrqRouting, kvm_irq_routing_entry,
            kvm_irq_routing_entry__bindgen_ty_1 as Route, kvm_irq_routing_irqchip, kvm_irq_routing_msi,
        };
        let gsi = u32::try_from(args[0]).map_err(|_| ())?;
        if gsi < 24 {
            return Err(());
        }
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
        let routing = KvmIrqRouting::from_entries(&entries).map_err(|_| ())?;
        self.vm_fd.set_gsi_routing(&routing).map_err(|_| ())
    }

    /// Signals the irqfd of `gsi`, registering one first if the guest has not used it:
    /// with a resample eventfd when `resample` (a level-triggered line, api.rst 4.75).
    /// A GSI keeps the kind it was first registered with.
    fn signal_irqfd(&mut self, gsi: u64, resample: bool) -> Result<u64, ()> {
        let gsi = u32::try_from(gsi).map_err(|_| ())?;
        if !self.irqfds.iter().any(|(g, ..)| *g == gsi) {
            if self.irqfds.len() >= hvprobe_abi::limits::MAX_IRQFDS {
                return Err(());
            }
            let fd = EventFd::new(EFD_NONBLOCK).map_err(|_| ())?;
            let resample_fd = if resample {
                let r = EventFd::new(EFD_NONBLOCK).map_err(|_| ())?;
                self.vm_fd.register_irqfd_with_resample(&fd, &r, gsi).map_err(|_| ())?;
                Some(r)
            } else {
                self.vm_fd.register_irqfd(&fd, gsi).map_err(|_| ())?;
                None
            };
            self.irqfds.push((gsi, fd, resample_fd));
        }
        let (_, fd, _) = self.irqfds.iter().find(|(g, ..)| *g == gsi).ok_or(())?;
        fd.write(1).map(|()| 0).map_err(|_| ())
    }
}

/// The threads of the application processors during one run. An AP runs until vCPU 0's
/// run ends; with the in-kernel irqchip its HLTs stay in the kernel, so any exit that
/// reaches userspace ends it, with a note in the report.
struct ApThreads<'scope> {
    stop: &'scope AtomicBool,
    threads: Vec<(ScopedJoinHandle<'scope, ()>, &'scope AtomicU64, ImmediateExit)>,
}

impl<'scope> ApThreads<'scope> {
    fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        aps: &'scope mut [VcpuFd],
        notes: &'scope Mutex<Vec<String>>,
        stop: &'scope AtomicBool,
        tids: &'scope [AtomicU64],
    ) -> ApThreads<'scope> {
        let mut threads = Vec::new();
        for ((i, ap), tid) in aps.iter_mut().enumerate().zip(tids) {
            let index = i + 1;
            // The byte lives in this vCPU's kvm_run mapping, which lives as long as the
            // VcpuFd, which outlives the scope.
            let immediate_exit = ImmediateExit(&raw mut ap.get_kvm_run().immediate_exit);
            let handle = scope.spawn(move || {
                // SAFETY: pthread_self has no preconditions.
                tid.store(unsafe { libc::pthread_self() } as u64, Ordering::SeqCst);
                while !stop.load(Ordering::SeqCst) {
                    let note = match ap.run() {
                        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                        Err(e) => format!("vCPU {index}: KVM_RUN failed: {e}"),
                        Ok(exit) => format!("vCPU {index} stopped at an exit to userspace: {exit:?}"),
                    };
                    notes.lock().unwrap_or_else(|e| e.into_inner()).push(note);
                    break;
                }
            });
            threads.push((handle, tid, immediate_exit));
        }
        ApThreads { stop, threads }
    }

    /// Stops every AP: the flag, then immediate_exit and the kick signal until each
    /// thread has returned (it is alive while not finished, so the kick is safe).
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for (handle, tid, ie) in &self.threads {
            ie.kick_until(|| tid.load(Ordering::SeqCst) as libc::pthread_t, || handle.is_finished());
        }
        for (handle, _, ie) in self.threads {
            let _ = handle.join();
            // The thread has ended, so no KVM_RUN is using the byte.
            ie.set(0);
        }
    }
}

/// Decodes KVM_EXIT_INTERNAL_ERROR's suberror and data. For an emulation failure that
/// carries instruction bytes (flags bit 0, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES),
/// data[0] is the flags word and the next 16 bytes hold the length and up to 15 bytes.
fn decode_internal(suberror: u32, ndata: u32, raw: &[u64]) -> InternalError {
    let data: Vec<u64> = raw.iter().take((ndata as usize).min(raw.len())).copied().collect();
    let suberror_name = match suberror {
        kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
        kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
        kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failed",
        kvm_bindings::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
        _ => "unknown suberror",
    };
    let insn_bytes = (suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION && data.len() >= 3 && data[0] & 1 != 0)
        .then(|| {
            let bytes: Vec<u8> = data[1..3].iter().flat_map(|w| w.to_le_bytes()).collect();
            let len = (bytes[0] as usize).min(15);
            bytes[1..1 + len].to_vec()
        });
    InternalError { suberror, suberror_name, data, insn_bytes }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_signature_keeps_the_one_instruction_at_the_fault() {
        let ldmxcsr = [0x0f, 0xae, 0x15, 0x0a, 0xe6, 0x03, 0x00, 0x48, 0xbb];
        assert_eq!(first_instruction(&ldmxcsr, 64), &ldmxcsr[..7]);
        assert_eq!(first_instruction(&[0xcc, 0x4c, 0x8d], 64), [0xcc]);
        let far_call = [0x9a, 0, 0, 0, 0, 0x38, 0, 0x90];
        assert_eq!(first_instruction(&far_call, 32), &far_call[..7]);
        assert_eq!(first_instruction(&far_call, 64), [0x9a], "invalid in 64-bit mode: its first byte");
        assert_eq!(first_instruction(&[0x37, 0x48], 64), [0x37]);
        assert_eq!(first_instruction(&[0x0f], 64), [0x0f], "a cut window keeps what it has");
        assert!(first_instruction(&[], 64).is_empty());
        assert_eq!(code_bits(0, 0, 0, 0), 16);
        assert_eq!(code_bits(1, 0, 0, 1), 32);
        assert_eq!(code_bits(1, 1 << 10, 1, 0), 64);
        assert_eq!(code_bits(1, 1 << 10, 0, 1), 32, "compatibility mode");
        assert_eq!(code_bits(1, 1 << 10, 0, 0), 16);
    }

    use super::*;

    #[test]
    fn emulation_failure_bytes_are_decoded() {
        let mut raw = [0u64; 16];
        raw[0] = 1;
        raw[1] = u64::from_le_bytes([3, 0x0f, 0x01, 0xd9, 0, 0, 0, 0]);
        let e = decode_internal(kvm_bindings::KVM_INTERNAL_ERROR_EMULATION, 4, &raw);
        assert_eq!(e.insn_bytes, Some(vec![0x0f, 0x01, 0xd9]));
        assert_eq!(e.data.len(), 4);
        assert_eq!(e.suberror_name, "emulation failure");
        let e = decode_internal(kvm_bindings::KVM_INTERNAL_ERROR_EMULATION, 40, &[0; 16]);
        assert_eq!(e.insn_bytes, None, "without the flag there are no bytes");
        assert_eq!(e.data.len(), 16, "ndata is clamped to the array");
    }

    #[test]
    fn run_end_descriptions_name_the_exit() {
        assert!(RunEnd::FailEntry { hardware_reason: 0x21, cpu: 1 }.describe().contains("0x21"));
        assert_eq!(RunEnd::Timeout { limit: Duration::from_secs(1) }.kind(), "timeout");
        assert_eq!(hex(&[0x0f, 0x0b]), "0f 0b");
    }
}
