//! Save and restore from the guest's side: ask to be saved here (the host may resume the
//! guest in the same VM, in a fresh one, or in another process), and ask the host about
//! its dirty log.

use hvprobe_abi::proto::{DIRTY_CLEAR, DIRTY_COUNT, DIRTY_START, DIRTY_TEST, service};

use crate::proto::{ServiceError, service as request};

/// Asks to be saved here, with `tag` for the host's report; returns once the guest runs
/// again, wherever the host restored it. Skips the case when the host does not save
/// (a runner without migration support answers the service as unknown).
pub fn checkpoint(tag: u64) {
    if let Err(e) = request(service::CHECKPOINT, [tag, 0, 0, 0]) {
        crate::skip!("the host does not take checkpoints ({e:?})");
    }
}

/// Turns dirty logging on and forgets what was dirty; `manual` asks for
/// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 mode.
pub fn dirty_start(manual: bool) -> Result<(), ServiceError> {
    request(service::DIRTY_LOG, [DIRTY_START, manual as u64, 0, 0]).map(|_| ())
}

/// How many pages in [start, end) the host's dirty record holds (it fetches the log first).
pub fn dirty_count(start: u64, end: u64) -> Result<u64, ServiceError> {
    request(service::DIRTY_LOG, [DIRTY_COUNT, start, end, 0])
}

/// Whether the page holding `addr` is dirty in the host's record.
pub fn dirty_test(addr: u64) -> Result<bool, ServiceError> {
    request(service::DIRTY_LOG, [DIRTY_TEST, addr, 0, 0]).map(|v| v != 0)
}

/// KVM_CLEAR_DIRTY_LOG of the pages in [start, end) (manual mode only).
pub fn dirty_clear(start: u64, end: u64) -> Result<(), ServiceError> {
    request(service::DIRTY_LOG, [DIRTY_CLEAR, start, end, 0]).map(|_| ())
}
