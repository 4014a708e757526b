//! What the `irq` files share: a counting handler that records each vector's deliveries,
//! the TSC at the last one, the order of arrival and (on request) whether the ISR bit was
//! set in the handler; the APIC mode a case runs in; and an interrupt window ended by a
//! backstop timer, so that a lost interrupt fails a check instead of hanging.

use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use hvprobe_rt::apic::{Apic, reg};
use hvprobe_rt::cpu;
use hvprobe_rt::exception::{Frame, set_handler};

/// The backstop timer's vector (see `Apic::hlt_with_backstop`): class 14, above any TPR
/// a case sets.
pub const BACKSTOP: u8 = 0xef;

pub static COUNT: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];
/// The TSC at each vector's last delivery.
pub static TSC_AT: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];
/// The first vectors delivered (the backstop left out), in order.
pub static ORDER: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
pub static ORDER_LEN: AtomicU64 = AtomicU64::new(0);
/// 1 while a case runs its APIC in x2APIC mode, so `counting` EOIs the right way.
pub static X2: AtomicU64 = AtomicU64::new(0);
/// Deliveries of each vector whose ISR bit was set in its handler, before the EOI: what
/// makes "ISR clear after the EOI" a check of the EOI rather than of nothing. Recorded
/// only while RECORD_IN_SERVICE is 1, so that other cases' handlers make no extra APIC
/// access.
pub static IN_SERVICE: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];
pub static RECORD_IN_SERVICE: AtomicU64 = AtomicU64::new(0);

/// The APIC interface the case runs with.
pub fn active() -> Apic {
    if X2.load(SeqCst) == 1 { Apic::X2Apic } else { Apic::XApic }
}

/// Counts the interrupt, records its TSC, order of arrival and (on request) whether its
/// ISR bit is set, and EOIs.
pub fn counting(frame: &mut Frame) {
    let v = frame.vector as usize & 0xff;
    TSC_AT[v].store(cpu::rdtsc(), SeqCst);
    COUNT[v].fetch_add(1, SeqCst);
    if RECORD_IN_SERVICE.load(SeqCst) == 1 && active().vector_bit(reg::ISR, v as u8) {
        IN_SERVICE[v].fetch_add(1, SeqCst);
    }
    if v != BACKSTOP as usize {
        let at = ORDER_LEN.fetch_add(1, SeqCst) as usize;
        if at < ORDER.len() {
            ORDER[at].store(v as u64, SeqCst);
        }
    }
    active().eoi();
}

pub fn count(v: u8) -> u64 {
    COUNT[v as usize].load(SeqCst)
}

/// HLT with interrupts on, woken by the interrupt or by the backstop timer.
pub fn window() {
    set_handler(BACKSTOP, counting);
    active().hlt_with_backstop(BACKSTOP, 20_000_000);
}
