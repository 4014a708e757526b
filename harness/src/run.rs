//! The run loop: KVM_RUN until the guest gives a verdict, the vCPU stops in a way the
//! guest cannot recover from, or the watchdog fires. Every ending is classified precisely.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use hvprobe_abi::proto::{self, service};
use hvprobe_abi::{layout, port};
use kvm_bindings::{KVM_EXIT_IO_OUT, kvm_run};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::Devices;
use crate::protocol::{self, Message};
use crate::report::{RunEnd, RunReport, decode_internal};
use crate::services::{GuestDebug, ServiceResult};
use crate::watchdog::{ImmediateExit, Watchdog};
use crate::{Error, Vm};

/// Answers a service request before the built-in services: `None` if it does not know the
/// service (the built-in ones then answer), `Some(Err(..))` with why it failed.
pub type ServiceHandler = Box<dyn FnMut(u32, [u64; 4]) -> Option<ServiceResult> + Send>;

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
                let snap = self.registers().ok()?;
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
        let ring = self.shared_ring.clone();
        let view = self.memory.raw_view();
        let end = std::thread::scope(|scope| {
            let aps = ApThreads::start(scope, &mut aps, &ap_notes, &ap_stop, &ap_tids);
            // A pin that fails costs only steadiness: the run goes on, and says so.
            let _pin = options
                .pin_cpu
                .and_then(|cpu| crate::affinity::Pinned::to(cpu).map_err(|e| devices.notes.push(e.to_string())).ok());
            if let Some(ring) = &ring {
                // SAFETY: the memory is `self`'s, which outlives this scope.
                scope.spawn(|| unsafe { ring.serve(view) });
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
            if let Some(ring) = &ring {
                ring.stop();
            }
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
            report.snapshot = self.registers().ok();
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

    /// KVM_EXIT_DEBUG: recorded; a breakpoint is one shot (the host steps past a
    /// software breakpoint's INT3 and turns guest debugging off), single-stepping goes on.
    fn debug_exit(&mut self, arch: kvm_bindings::kvm_debug_exit_arch) -> Step {
        let d = &mut self.requests.guest_debug;
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
        self.requests.guest_debug.control = 0;
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
        if let Some(vector) = self.requests.pending_interrupt {
            // KVM_INTERRUPT only when KVM says the vCPU can take one; otherwise ask for an
            // exit as soon as it can (api.rst, KVM_INTERRUPT and request_interrupt_window).
            // SAFETY: run_ptr is vCPU 0's kvm_run, and no KVM_RUN is in progress.
            let ready = unsafe { (*run_ptr).ready_for_interrupt_injection != 0 && (*run_ptr).if_flag != 0 };
            if ready && self.inject_interrupt(vector).is_ok() {
                self.requests.pending_interrupt = None;
            }
            // SAFETY: as above.
            unsafe { (*run_ptr).request_interrupt_window = self.requests.pending_interrupt.is_some() as u8 };
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
        if let Some(probe) = &mut self.requests.section {
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
            VcpuExit::Hlt if self.requests.pending_interrupt.is_some() => return Step::Continue,
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
                self.requests.user_msr.exits += 1;
                match exit.index {
                    UNKNOWN => *exit.data = UNKNOWN_VALUE,
                    FILTERED => *exit.data = FILTERED_VALUE,
                    // Any other MSR is what KVM would refuse: #GP(0) in the guest.
                    _ => *exit.error = 1,
                }
                return Step::Continue;
            }
            VcpuExit::X86Wrmsr(exit) => {
                self.requests.user_msr.exits += 1;
                self.requests.user_msr.last_write = Some((exit.index, exit.data, exit.reason.bits()));
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
                if self.dirty_rings.is_empty() {
                    std::thread::sleep(Duration::from_millis(1));
                } else if let Ok(pages) = crate::dirty::harvest(&mut self.dirty_rings, &self.vm_fd) {
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

    fn message(&mut self, addr: u64, devices: &mut Devices, report: &mut RunReport, options: &mut RunOptions) -> Step {
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
                    Some(Err(e)) => {
                        devices.note(format!("service {id} failed: {e}"));
                        (proto::SERVICE_FAILED, 0)
                    }
                    None => (proto::SERVICE_UNKNOWN, 0),
                };
                match protocol::complete_service(&self.memory, addr, status, result) {
                    Ok(()) => Step::Continue,
                    Err(e) => Step::Stop(RunEnd::ProtocolError(e)),
                }
            }
        }
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
