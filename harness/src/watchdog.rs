//! The watchdog every run has: when the limit passes it sets `immediate_exit` in the
//! vCPU's kvm_run and signals the vCPU thread, repeatedly, until the run loop stops it.
//! KVM_RUN then returns EINTR (KVM API 4.10, "immediate_exit"), also when the guest is
//! spinning inside the kernel's instruction emulator.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
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

/// One armed watchdog, as its thread's worker keeps it.
struct Timer {
    id: u64,
    deadline: Instant,
    repeat: Duration,
    stop: Option<Arc<AtomicBool>>,
    immediate_exit: ImmediateExit,
    fired: Arc<AtomicBool>,
    kicks: Arc<AtomicU64>,
}

#[derive(Default)]
struct WorkerState {
    timers: Vec<Timer>,
    next_id: u64,
    quit: bool,
    /// When the worker will look at its timers next, at the latest; None while it is busy.
    /// A watchdog armed with a later deadline needs no wake-up (which on a loaded or
    /// pinned CPU costs a context switch or two per run).
    sleeping_until: Option<Instant>,
}

/// The longest the worker sleeps without looking at its timers. Rare, so that a worker
/// with nothing to do does not wake beside a benchmark's vCPU; a deadline or a stop flag
/// that cannot wait that long wakes it when armed.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// How often a raised stop flag is looked at.
const STOP_POLL: Duration = Duration::from_millis(20);

#[derive(Default)]
struct WorkerShared {
    state: Mutex<WorkerState>,
    wake: Condvar,
}

/// The thread that kicks one vCPU thread (its owner) for every watchdog armed there. It
/// lives as long as its owner, so arming a watchdog for a run costs a lock and a wake-up,
/// not a thread. Kicks happen under the lock, so once a watchdog's removal has taken the
/// lock no kick of it can follow.
struct Worker {
    shared: Arc<WorkerShared>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn start(owner: libc::pthread_t) -> Result<Worker, Error> {
        let shared = Arc::new(WorkerShared::default());
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("hvprobe-watchdog".into())
            .spawn(move || Worker::serve(&s, owner))
            .map_err(|e| Error::Watchdog(e.to_string()))?;
        Ok(Worker { shared, thread: Some(thread) })
    }

    fn serve(s: &WorkerShared, owner: libc::pthread_t) {
        // A worker started by a pinned thread (a benchmark's) would inherit the pin and
        // wake on the CPU it measures.
        crate::affinity::unpin();
        let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
        while !st.quit {
            let now = Instant::now();
            let mut wake: Option<Instant> = None;
            for t in &mut st.timers {
                let stopped = t.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst));
                if now >= t.deadline || stopped {
                    if !stopped {
                        t.fired.store(true, Ordering::SeqCst);
                    }
                    t.kicks.fetch_add(1, Ordering::SeqCst);
                    // The owner is alive: it joins this thread before it ends.
                    t.immediate_exit.kick(owner);
                    if now >= t.deadline {
                        t.deadline = now + t.repeat;
                    }
                }
                let mut at = t.deadline;
                if t.stop.is_some() {
                    at = at.min(now + STOP_POLL);
                }
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            let at = wake.map_or(now + IDLE_POLL, |w| w.min(now + IDLE_POLL));
            st.sleeping_until = Some(at);
            st = s.wake.wait_timeout(st, at.saturating_duration_since(now)).unwrap_or_else(|e| e.into_inner()).0;
            st.sleeping_until = None;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).quit = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

thread_local! {
    /// This thread's watchdog worker, started by the first watchdog armed here.
    static WORKER: std::cell::RefCell<Option<Worker>> = const { std::cell::RefCell::new(None) };
}

/// A watchdog armed for the calling thread: kicks it out of KVM_RUN at its deadline (and
/// then every `repeat`), or as soon as its stop flag is raised. Disarmed on drop. Not
/// `Send`: it belongs to the thread it kicks.
pub struct Watchdog {
    id: u64,
    shared: Arc<WorkerShared>,
    fired: Arc<AtomicBool>,
    kicks: Arc<AtomicU64>,
    _same_thread: std::marker::PhantomData<*const ()>,
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
        let shared = WORKER.with(|w| -> Result<Arc<WorkerShared>, Error> {
            let mut w = w.borrow_mut();
            if w.is_none() {
                // SAFETY: pthread_self has no preconditions.
                *w = Some(Worker::start(unsafe { libc::pthread_self() })?);
            }
            Ok(Arc::clone(&w.as_ref().expect("just started").shared))
        })?;
        let (fired, kicks) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let deadline = Instant::now() + first;
        let (id, wake) = {
            let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.next_id += 1;
            let id = st.next_id;
            // The worker looks again by `sleeping_until`: wake it only if the deadline, or
            // the first look at a stop flag, must come before.
            let first_look = if stop.is_some() { deadline.min(Instant::now() + STOP_POLL) } else { deadline };
            let wake = st.sleeping_until.is_none_or(|at| first_look < at);
            st.timers.push(Timer {
                id,
                deadline,
                repeat,
                stop,
                immediate_exit,
                fired: Arc::clone(&fired),
                kicks: Arc::clone(&kicks),
            });
            (id, wake)
        };
        if wake {
            shared.wake.notify_all();
        }
        Ok(Watchdog { id, shared, fired, kicks, _same_thread: std::marker::PhantomData })
    }

    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// How many times it has kicked the vCPU thread.
    pub fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Under the lock the worker kicks with: once this returns, no kick of this
        // watchdog can follow, so the kvm_run mapping may go.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).timers.retain(|t| t.id != self.id);
    }
}
