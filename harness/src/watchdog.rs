//! The watchdog every run has: when the limit passes it sets `immediate_exit` in the
//! vCPU's kvm_run and signals the vCPU thread, repeatedly, until the run loop stops it.
//! KVM_RUN then returns EINTR (KVM API 4.10, "immediate_exit"), also when the guest is
//! spinning inside the kernel's instruction emulator.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Error;

/// The signal used to kick vCPU threads out of KVM_RUN. Its handler does nothing; its only
/// job is to interrupt the ioctl.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 4
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

static INSTALL: Once = Once::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);

fn install_handler() -> Result<(), Error> {
    INSTALL.call_once(|| {
        let ok = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick).is_ok();
        INSTALLED.store(ok, Ordering::SeqCst);
    });
    if INSTALLED.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(Error::Watchdog(format!("cannot install a handler for signal {}", kick_signal())))
    }
}

struct Shared {
    done: Mutex<bool>,
    wake: Condvar,
    fired: AtomicBool,
    /// Kicks so far (the ticker's probes).
    kicks: std::sync::atomic::AtomicU64,
}

pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The immediate_exit byte of a vCPU's kvm_run, as an address other threads may store to.
#[derive(Clone, Copy)]
pub struct ImmediateExit(pub *mut u8);

// SAFETY: the byte lives in the vCPU's kvm_run mapping, which outlives the watchdog (the
// run loop drops the watchdog before it returns), and is only accessed atomically.
unsafe impl Send for ImmediateExit {}

impl ImmediateExit {
    /// Stores `value` into the byte (KVM reads it on entry to KVM_RUN).
    pub fn set(self, value: u8) {
        // SAFETY: see the Send impl: the mapping outlives every holder of this value, and
        // the byte is only accessed atomically.
        unsafe { AtomicU8::from_ptr(self.0) }.store(value, Ordering::SeqCst);
    }

    /// Makes `thread`, which runs this vCPU, leave KVM_RUN: immediate_exit, then the kick
    /// signal (KVM API 4.10). The caller keeps `thread` alive.
    pub fn kick(self, thread: libc::pthread_t) {
        self.set(1);
        // SAFETY: the caller guarantees `thread` is a live thread of this process; the
        // kick signal's handler does nothing.
        unsafe { libc::pthread_kill(thread, kick_signal()) };
    }

    /// Kicks `thread` every 200 µs until `done()`; a `thread` of 0 (not yet known) is
    /// skipped, since the flag alone stops its next KVM_RUN.
    pub fn kick_until(self, thread: impl Fn() -> libc::pthread_t, done: impl Fn() -> bool) {
        while !done() {
            match thread() {
                0 => self.set(1),
                t => self.kick(t),
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Watchdog {
    /// Starts watching the calling thread's next KVM_RUN calls: kicks it out at `limit`,
    /// or as soon as `stop` is raised (an interrupted run; then `fired` stays false).
    pub fn arm(
        limit: Duration,
        immediate_exit: ImmediateExit,
        stop: Option<Arc<AtomicBool>>,
    ) -> Result<Watchdog, Error> {
        Self::start(limit, Duration::from_millis(20), immediate_exit, stop)
    }

    /// A ticker: kicks the calling thread's KVM_RUN out first after `first`, then every
    /// `every`, counting the kicks ([`Watchdog::kicks`]), so that the run loop can look
    /// at a vCPU that never leaves KVM_RUN by itself (the livelock probe).
    pub fn ticker(first: Duration, every: Duration, immediate_exit: ImmediateExit) -> Result<Watchdog, Error> {
        Self::start(first, every, immediate_exit, None)
    }

    /// Kicks at `first`, then every `repeat` until dropped; with `stop`, also as soon as
    /// it is raised (looked at every 20 ms).
    fn start(
        first: Duration,
        repeat: Duration,
        immediate_exit: ImmediateExit,
        stop: Option<Arc<AtomicBool>>,
    ) -> Result<Watchdog, Error> {
        install_handler()?;
        // SAFETY: pthread_self has no preconditions.
        let vcpu_thread = unsafe { libc::pthread_self() };
        let shared = Arc::new(Shared {
            done: Mutex::new(false),
            wake: Condvar::new(),
            fired: AtomicBool::new(false),
            kicks: Default::default(),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("hvprobe-watchdog".into())
            .spawn(move || {
                let mut deadline = Instant::now() + first;
                let mut done = s.done.lock().unwrap_or_else(|e| e.into_inner());
                while !*done {
                    let now = Instant::now();
                    let mut wait = if now < deadline { deadline - now } else { repeat };
                    let stopped = stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst));
                    if now >= deadline || stopped {
                        if !stopped {
                            s.fired.store(true, Ordering::SeqCst);
                        }
                        s.kicks.fetch_add(1, Ordering::SeqCst);
                        // The vCPU thread is alive until it drops this watchdog, which
                        // waits for this thread to end first.
                        immediate_exit.kick(vcpu_thread);
                        if now >= deadline {
                            deadline = now + repeat;
                            wait = repeat;
                        }
                    }
                    if stop.is_some() {
                        // Looks at the stop flag every 20 ms.
                        wait = wait.min(Duration::from_millis(20));
                    }
                    done = s.wake.wait_timeout(done, wait).unwrap_or_else(|e| e.into_inner()).0;
                }
            })
            .map_err(|e| Error::Watchdog(e.to_string()))?;
        Ok(Watchdog { shared, thread: Some(thread) })
    }

    pub fn fired(&self) -> bool {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// How many times it has kicked the vCPU thread.
    pub fn kicks(&self) -> u64 {
        self.shared.kicks.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        *self.shared.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
