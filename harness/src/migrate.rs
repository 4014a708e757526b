//! Live migration within one host: iterative pre-copy with dirty logging while the guest
//! runs, then stop-and-copy into a fresh VM.
//!
//! Round 0 copies all of guest RAM while the guest runs; each later round fetches
//! KVM_GET_DIRTY_LOG (which clears and re-protects the pages it reports) and copies those
//! pages, still while the guest runs. When a round copies few enough pages, or after the
//! last round, the source vCPUs stop; the pages dirtied since the last round, the vCPUs,
//! irqchip, clock and devices go across, and the destination is ready: that stop is the
//! downtime.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::dirty::PAGE;
use crate::memory::RawView;
use crate::watchdog::ImmediateExit;
use crate::{Error, GuestMemory, Kvm, Payload, RunEnd, RunOptions, RunReport, TestCase, Vm, VmConfig};

/// How to migrate.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Pre-copy rounds after the full copy, at most.
    pub max_rounds: usize,
    /// Stop pre-copying once a round copies at most this many pages.
    pub converged_pages: u64,
    /// Time the guest runs between rounds, so that each round has writes to find.
    pub round_gap: Duration,
}

/// What a live migration did.
#[derive(Clone, Debug, Default)]
pub struct Migration {
    /// Pages copied in each round: round 0 is all of RAM, the last is stop-and-copy.
    pub pages_per_round: Vec<u64>,
    /// From the source vCPU stopping to the destination being ready to run.
    pub downtime: Duration,
    pub total: Duration,
    /// Pages whose bytes differ between source and destination after the copy.
    pub mismatched_pages: u64,
}

/// Copies pages between two VMs' memory. The source is being written by its vCPU while
/// pre-copy runs, which is the point: dirty logging finds those writes again.
///
/// # Safety
/// The memory `from` views must stay mapped during the call.
unsafe fn copy_pages(from: RawView, to: &GuestMemory, pages: impl Iterator<Item = u64>) -> Result<u64, Error> {
    let mut buf = vec![0u8; PAGE as usize];
    let mut n = 0;
    for page in pages {
        // SAFETY: forwarded to the caller.
        unsafe { from.read(page * PAGE, &mut buf)? };
        to.write(page * PAGE, &buf)?;
        n += 1;
    }
    Ok(n)
}

impl Vm {
    /// Runs this VM under `options` and migrates it live into a fresh VM booted for
    /// `case`. Returns the source's run report and, if the migration finished before the
    /// guest did, the destination (ready to `run`) and what the migration did.
    pub fn live_migrate(
        &mut self,
        kvm: &Kvm,
        payload: &Payload,
        case: &TestCase,
        config: VmConfig,
        mut options: RunOptions,
        plan: Plan,
    ) -> Result<(RunReport, Option<(Vm, Migration)>), Error> {
        let start = Instant::now();
        self.set_dirty_logging(true)?;
        let mut dest = Vm::boot(kvm, payload, case, config)?;
        // The pre-copy thread needs the source's VM fd (for the dirty log) while this
        // thread runs the vCPU; it gets a duplicate of the fd.
        // SAFETY: dup of an fd this VM owns; the new fd is owned by `log_vm` below.
        let fd = unsafe { libc::dup(self.vm_fd.as_raw_fd()) };
        if fd < 0 {
            return Err(Error::Snapshot(format!("dup of the VM fd: {}", std::io::Error::last_os_error())));
        }
        // SAFETY: `fd` is a fresh duplicate of a KVM VM fd, owned by nobody else.
        let log_vm = unsafe { kvm.kvm.create_vmfd_from_rawfd(fd) }.map_err(Error::kvm("VM fd duplicate"))?;
        let stop = Arc::new(AtomicBool::new(false));
        options.stop = Some(Arc::clone(&stop));
        let run_over = AtomicBool::new(false);
        // SAFETY: pthread_self has no preconditions; this thread runs vCPU 0 below.
        let vcpu_thread = unsafe { libc::pthread_self() };
        let immediate_exit = ImmediateExit(&raw mut self.vcpus[0].get_kvm_run().immediate_exit);
        let size = self.memory.size() as usize;
        // The pre-copy thread reads the source memory through a view while this thread
        // holds `self` for the run; the memory stays mapped as long as `self` lives, which
        // is past the scope.
        let source = self.memory.raw_view();
        let dest_mem = &dest.memory;
        // With dirty rings, the pre-copy thread collects them (and nothing else does until
        // it is done); without, it reads the bitmap.
        let mut rings = std::mem::take(&mut self.dirty_rings);
        let rings_ref = &mut rings;
        let (run_over_ref, stop_ref, log_vm_ref) = (&run_over, &stop, &log_vm);
        let (report, rounds) = std::thread::scope(|s| {
            let precopy = s.spawn(move || -> Result<Vec<u64>, Error> {
                let (run_over, stop, log_vm, rings) = (run_over_ref, stop_ref, log_vm_ref, rings_ref);
                // Moved in whole (it is Send); a use of its field alone would capture the
                // raw pointer, which is not.
                let immediate_exit = immediate_exit;
                // SAFETY: `self.memory`, which `source` views, outlives the scope.
                let mut rounds = vec![unsafe { copy_pages(source, dest_mem, 0..source.size() / PAGE)? }];
                for _ in 0..plan.max_rounds {
                    std::thread::sleep(plan.round_gap);
                    if run_over.load(Ordering::SeqCst) {
                        break;
                    }
                    let pages = crate::dirty::collect(rings, log_vm, size)?;
                    // SAFETY: see above.
                    let n = unsafe { copy_pages(source, dest_mem, pages.into_iter())? };
                    rounds.push(n);
                    if n <= plan.converged_pages {
                        break;
                    }
                }
                // Stop the source: the flag, then immediate_exit and a kick until the run
                // loop has seen it (the vCPU thread owns this scope, so it is alive).
                stop.store(true, Ordering::SeqCst);
                immediate_exit.kick_until(|| vcpu_thread, || run_over.load(Ordering::SeqCst));
                Ok(rounds)
            });
            let report = self.run(options);
            run_over.store(true, Ordering::SeqCst);
            let rounds = precopy.join().unwrap_or_else(|_| Err(Error::Snapshot("the pre-copy thread panicked".into())));
            (report, rounds)
        });
        self.vcpus[0].set_kvm_immediate_exit(0);
        self.dirty_rings = rings;
        let report = report?;
        let mut rounds = rounds?;
        if *report.end() != RunEnd::Paused {
            // The guest ended (or failed) before the migration could stop it.
            return Ok((report, None));
        }
        let down = Instant::now();
        self.complete_pending_io()?;
        let pages = crate::dirty::collect(&mut self.dirty_rings, &self.vm_fd, size)?;
        // SAFETY: `self.memory` is mapped; nothing runs the source any more.
        rounds.push(unsafe { copy_pages(self.memory.raw_view(), &dest.memory, pages.into_iter())? });
        let (state, _) = self.save_state(&case.name)?;
        dest.apply(&state)?;
        let downtime = down.elapsed();
        let mismatched_pages = (0..self.memory.size() / PAGE)
            .filter(|p| {
                let a = self.memory.read_vec(p * PAGE, PAGE).unwrap_or_default();
                let b = dest.memory.read_vec(p * PAGE, PAGE).unwrap_or_default();
                a != b
            })
            .count() as u64;
        self.set_dirty_logging(false)?;
        let m = Migration { pages_per_round: rounds, downtime, total: start.elapsed(), mismatched_pages };
        Ok((report, Some((dest, m))))
    }
}
