//! Pinning the calling thread to one CPU for a while (a benchmark's vCPU thread, so that
//! the scheduler does not move it between batches), and putting its old mask back.

use crate::Error;

/// The calling thread's CPU mask as it was; restored on drop, on the same thread (the
/// raw-pointer marker keeps the value from moving to another).
pub struct Pinned {
    old: libc::cpu_set_t,
    _same_thread: std::marker::PhantomData<*const ()>,
}

impl Pinned {
    /// Pins the calling thread to `cpu`. Threads it starts afterwards inherit the pin, so
    /// a caller that runs other vCPUs starts their threads first.
    pub fn to(cpu: usize) -> Result<Pinned, Error> {
        // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
        let mut old: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: pid 0 is the calling thread; the size and pointer are those of `old`.
        if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut old) } != 0 {
            return Err(Error::Affinity { cpu, source: std::io::Error::last_os_error() });
        }
        // SAFETY: as above.
        let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        if cpu >= 8 * size_of::<libc::cpu_set_t>() {
            return Err(Error::Affinity { cpu, source: std::io::Error::from_raw_os_error(libc::EINVAL) });
        }
        // SAFETY: `cpu` is below the set's size in bits (checked above).
        unsafe { libc::CPU_SET(cpu, &mut one) };
        // SAFETY: pid 0 is the calling thread; `one` is a valid set of the size given.
        if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one) } != 0 {
            return Err(Error::Affinity { cpu, source: std::io::Error::last_os_error() });
        }
        Ok(Pinned { old, _same_thread: std::marker::PhantomData })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: pid 0 is the calling thread, the one `to` pinned (Pinned is not Send);
        // the set is the one read there. A failure leaves the pin, which costs only
        // scheduling freedom.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.old) };
    }
}

/// Lets the calling thread run on any CPU again (the kernel keeps it inside the
/// process's cpuset): for a helper thread started by a pinned one, which inherits the pin.
pub fn unpin() {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut all: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in 0..8 * size_of::<libc::cpu_set_t>() {
        // SAFETY: `cpu` is below the set's size in bits.
        unsafe { libc::CPU_SET(cpu, &mut all) };
    }
    // SAFETY: pid 0 is the calling thread; `all` is a valid set of the size given. A
    // failure leaves the inherited mask, which costs only scheduling freedom.
    unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &all) };
}

/// The CPU the calling thread runs on now.
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments and only returns a number.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_holds_and_is_undone() {
        let cpu = current_cpu().expect("sched_getcpu works on Linux");
        let all = std::thread::available_parallelism().map_or(1, |n| n.get());
        {
            let _pin = Pinned::to(cpu).unwrap();
            for _ in 0..1000 {
                std::hint::black_box(0);
                assert_eq!(current_cpu(), Some(cpu));
            }
        }
        // available_parallelism reads the calling thread's mask.
        assert_eq!(std::thread::available_parallelism().map_or(1, |n| n.get()), all);
    }
}
