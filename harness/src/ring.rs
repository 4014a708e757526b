//! The shared-ring device: the `para` way to move bytes from the guest to the host.
//!
//! The guest fills a byte ring in its own RAM (`layout::RING`), publishes how much it
//! produced, and rings a doorbell that is an ioeventfd, so KVM signals an eventfd and
//! resumes the guest without an exit to userspace. A host thread (like a vhost worker)
//! waits on that eventfd, copies the new bytes to its sink and publishes how much it
//! consumed. It runs for as long as vCPU 0 does.

use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use hvprobe_abi::layout::{RING, RING_CONSUMED, RING_DATA, RING_PRODUCED, RING_SIZE};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::Sink;
use crate::memory::RawView;

/// What the device has done since the VM was made.
#[derive(Clone, Debug, Default)]
pub struct RingState {
    pub sink: Sink,
    /// Bytes consumed, free-running like the guest's produced count.
    pub consumed: u32,
    /// Doorbells seen (an eventfd read returns how many writes it gathered).
    pub doorbells: u64,
    /// The first protocol violation; the device stops consuming after one.
    pub error: Option<String>,
}

pub(crate) struct RingDevice {
    pub doorbell: EventFd,
    /// Written by [`RingDevice::stop`]: the thread sleeps on it and the doorbell alone, so
    /// it never wakes on a timer (it would take the CPU of the vCPU a benchmark measures).
    stop: EventFd,
    pub state: Mutex<RingState>,
}

impl RingDevice {
    pub fn new(doorbell: EventFd, stop: EventFd) -> RingDevice {
        RingDevice { doorbell, stop, state: Mutex::new(RingState::default()) }
    }

    /// Tells [`RingDevice::serve`] to drain the ring one last time and return.
    pub fn stop(&self) {
        // An eventfd write fails only when its counter would overflow: it is then
        // readable already.
        let _ = self.stop.write(1);
    }

    /// Serves the ring until [`RingDevice::stop`], then drains it one last time (and
    /// takes the stop back, for the next run).
    ///
    /// # Safety
    /// The memory behind `view` must stay mapped until this returns.
    pub unsafe fn serve(&self, view: RawView) {
        loop {
            let mut fds = [self.doorbell.as_raw_fd(), self.stop.as_raw_fd()].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: two valid pollfds, for the duration of the call. No timeout: the
            // doorbell or the stop wakes it (an interrupted poll just loops).
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            let rung = if ready > 0 && fds[0].revents != 0 { self.doorbell.read().unwrap_or(0) } else { 0 };
            let stopping = ready > 0 && fds[1].revents != 0;
            if stopping {
                let _ = self.stop.read();
            }
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.doorbells += rung;
            if rung > 0 || stopping {
                // SAFETY: the caller keeps the memory mapped.
                unsafe { drain(&mut state, view) };
            }
            if stopping {
                return;
            }
        }
    }
}

/// Copies what the guest produced since the last drain into the sink.
///
/// # Safety
/// The memory behind `view` must be mapped.
unsafe fn drain(state: &mut RingState, view: RawView) {
    if state.error.is_some() {
        return;
    }
    let mut word = [0u8; 4];
    // SAFETY: the caller keeps the memory mapped; reads are bounds-checked.
    if unsafe { view.read(RING + RING_PRODUCED, &mut word) }.is_err() {
        state.error = Some("the ring lies outside guest memory".into());
        return;
    }
    // The guest stores the data before the count; x86 keeps loads in order, and the
    // fence keeps the compiler from hoisting the data reads above this one.
    std::sync::atomic::fence(Ordering::Acquire);
    let produced = u32::from_le_bytes(word);
    let new = produced.wrapping_sub(state.consumed);
    if new == 0 {
        return;
    }
    if new > RING_SIZE {
        state.error = Some(format!(
            "the guest produced {new} bytes past the {} consumed, more than the ring holds",
            state.consumed
        ));
        return;
    }
    let mut bytes = vec![0u8; new as usize];
    let start = state.consumed % RING_SIZE;
    let first = new.min(RING_SIZE - start) as usize;
    // SAFETY: as above.
    let copied = unsafe {
        view.read(RING + RING_DATA + u64::from(start), &mut bytes[..first])
            .and_then(|()| view.read(RING + RING_DATA, &mut bytes[first..]))
    };
    if copied.is_err() {
        state.error = Some("the ring's data lies outside guest memory".into());
        return;
    }
    state.sink.push(&bytes);
    state.consumed = produced;
    std::sync::atomic::fence(Ordering::Release);
    // SAFETY: as above.
    if unsafe { view.write(RING + RING_CONSUMED, &produced.to_le_bytes()) }.is_err() {
        state.error = Some("the ring's consumed count lies outside guest memory".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GuestMemory;

    #[test]
    fn a_drain_copies_across_the_wrap_and_publishes_the_count() {
        let m = GuestMemory::new(hvprobe_abi::layout::RAM_SIZE).unwrap();
        let mut state = RingState { consumed: RING_SIZE - 3, ..RingState::default() };
        m.write(RING + RING_DATA + u64::from(RING_SIZE) - 3, b"abc").unwrap();
        m.write(RING + RING_DATA, b"de").unwrap();
        m.write_u32(RING + RING_PRODUCED, RING_SIZE + 2).unwrap();
        // SAFETY: `m` lives to the end of the test.
        unsafe { drain(&mut state, m.raw_view()) };
        assert_eq!(state.sink, {
            let mut s = Sink::default();
            s.push(b"abcde");
            s
        });
        assert_eq!(m.read_vec(RING + RING_CONSUMED, 4).unwrap(), (RING_SIZE + 2).to_le_bytes());
        m.write_u32(RING + RING_PRODUCED, 3 * RING_SIZE).unwrap();
        // SAFETY: as above.
        unsafe { drain(&mut state, m.raw_view()) };
        assert!(state.error.as_deref().is_some_and(|e| e.contains("more than the ring holds")), "{:?}", state.error);
    }
}
