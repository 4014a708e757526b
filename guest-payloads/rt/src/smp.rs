//! Application processors: the vCPUs other than vCPU 0 of a case declared with
//! `vcpus = N`. The harness starts each in 64-bit CPL0 at the runtime's entry with its own
//! stack; the runtime enables its local APIC and idles it with interrupts on, so that the
//! case on vCPU 0 can send it interrupts. Handlers that run on an AP must not use `catch!`
//! or the protocol: those belong to vCPU 0.

use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use crate::apic::Apic;

/// How many APs have enabled their APIC and are idling.
static ONLINE: AtomicU64 = AtomicU64::new(0);

/// Where an AP goes: enable the xAPIC, say so, then halt with interrupts enabled forever.
pub(crate) fn ap_main(_index: u64) -> ! {
    Apic::XApic.enable();
    ONLINE.fetch_add(1, SeqCst);
    loop {
        // SAFETY: the IDT's handlers serve whatever the case sends this AP.
        unsafe { core::arch::asm!("sti", "hlt", options(nomem, nostack)) };
    }
}

/// Waits until `n` APs are idling with their APIC enabled; `false` if they are not after
/// `spins` polls.
pub fn wait_online(n: u64, spins: u64) -> bool {
    for _ in 0..spins {
        if ONLINE.load(SeqCst) >= n {
            return true;
        }
        core::hint::spin_loop();
    }
    ONLINE.load(SeqCst) >= n
}
