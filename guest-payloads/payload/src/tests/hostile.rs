//! The `hostile` area: guests that try to exhaust or confuse the host. Each must end with a
//! clear outcome within its limit while the host stays within the caps ARCHITECTURE lists
//! (`abi::limits`).

use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use hvprobe_rt::abi::flags::{EXPECT_PROTOCOL_ERROR, EXPECT_SHUTDOWN, EXPECT_TIMEOUT};
use hvprobe_rt::abi::limits::{LOG_LINES, MAX_IRQFDS, METRICS};
use hvprobe_rt::abi::proto::{self, Header, KIND_LOG, Log, MAGIC, MAX_STR, Str, service};
use hvprobe_rt::abi::requires::{IRQCHIP, NO_IRQCHIP};
use hvprobe_rt::abi::{layout, port};
use hvprobe_rt::apic::{Apic, reg};
use hvprobe_rt::exception::{Frame, set_handler};
use hvprobe_rt::proto::{ServiceError, service as request};
use hvprobe_rt::{check, check_eq, cpu, metric, test_case};

test_case! {
    /// An irqfd storm: IRQFD on 20,000 distinct GSIs. The host creates at most
    /// MAX_IRQFDS of them (two eventfds each at most) and refuses every later GSI with a
    /// service error, instead of running out of file descriptors. At CPL3, where a guest
    /// loop runs natively on every backend (PVM emulates CPL0 code).
    name = "hostile::irqfd_storm::user64", mode = User64, path = Full, requires = IRQCHIP;
    fn irqfd_storm() {
        let (mut granted, mut first_refused) = (0u64, None);
        for gsi in 0..20_000u64 {
            // Every GSI above the IOAPIC's pins has no route: signalling it delivers nothing.
            match request(service::IRQFD, [1000 + gsi, 0, 0, 0]) {
                Ok(_) => granted += 1,
                Err(_) => {
                    first_refused.get_or_insert(gsi);
                }
            }
        }
        metric("irqfds_granted", "count", granted);
        check_eq!(granted, MAX_IRQFDS as u64, "irqfds the host created for 20,000 GSIs");
        check_eq!(first_refused, Some(MAX_IRQFDS as u64), "the first GSI refused");
        // One already registered is still served after the refusals.
        check_eq!(request(service::IRQFD, [1000, 0, 0, 0]), Ok(0), "a registered irqfd after the storm");
    }
}

/// Sends `addr` as a message address, as `proto::send` does at this privilege level.
fn send_raw(addr: u64) {
    if cpu::read_cs() & 3 == 3 {
        // SAFETY: the doorbell is identity-mapped MMIO; the host only reads (and refuses) what
        // the address names.
        unsafe { core::ptr::write_volatile(layout::PROTOCOL_MMIO as *mut u32, addr as u32) };
    } else {
        // SAFETY: as above, through the protocol port.
        unsafe { core::arch::asm!("out dx, eax", in("dx") port::PROTOCOL, in("eax") addr as u32) };
    }
}

/// A log message whose text is `text`, sent as is.
fn send_log(text: Str) {
    let msg = Log { header: Header { magic: MAGIC, kind: KIND_LOG }, text };
    send_raw(&msg as *const Log as u64);
}

extern "C" fn wild_message_address() {
    // The last bytes of the 32-bit space: no RAM, and a header would run past 4 GiB.
    send_raw(0xffff_fffc);
    check!(false, "the host answered a message at an address outside guest RAM");
}

test_case! {
    /// A message address outside guest RAM: the host refuses it and ends the run with a
    /// protocol error, reading nothing out of bounds.
    name = "hostile::wild_message_address::long64", mode = Long64, path = Full, flags = EXPECT_PROTOCOL_ERROR;
    entry = wild_message_address
}

test_case! {
    /// The same through the CPL3 doorbell.
    name = "hostile::wild_message_address::user64", mode = User64, path = Full, flags = EXPECT_PROTOCOL_ERROR;
    entry = wild_message_address
}

test_case! {
    /// A log string of u64::MAX bytes: refused by length before any read.
    name = "hostile::wild_string_length::long64", mode = Long64, path = Full, flags = EXPECT_PROTOCOL_ERROR;
    fn wild_string_length() {
        static TEXT: [u8; 16] = [b'x'; 16];
        send_log(Str { addr: TEXT.as_ptr() as u64, len: u64::MAX });
        check!(false, "the host accepted a string of u64::MAX bytes");
    }
}

test_case! {
    /// A log string whose address plus length wraps past 2^64: refused, not read from
    /// the start of RAM.
    name = "hostile::wild_string_address::long64", mode = Long64, path = Full, flags = EXPECT_PROTOCOL_ERROR;
    fn wild_string_address() {
        send_log(Str { addr: u64::MAX - 7, len: 16 });
        check!(false, "the host accepted a string that wraps around the address space");
    }
}

// The console flood is io::console_bulk::long64: 80 KiB against a 64 KiB capture limit.

/// Log and metric messages the flood sends: three times the host's limit of each.
const LOG_FLOOD: u64 = 3 * LOG_LINES as u64;
const METRIC_FLOOD: u64 = 3 * METRICS as u64;

test_case! {
    /// A log and metric flood: three times the host's limit of log lines, each of the
    /// longest length the protocol allows, and of metrics. The host keeps its limit of
    /// each (and of log bytes), counts what it dropped, and answers the next service at
    /// once.
    name = "hostile::log_flood::user64", mode = User64, path = Full;
    fn log_flood() {
        static LINE: [u8; MAX_STR as usize] = [b'L'; MAX_STR as usize];
        for _ in 0..LOG_FLOOD {
            send_log(Str { addr: LINE.as_ptr() as u64, len: MAX_STR });
        }
        for i in 0..METRIC_FLOOD {
            metric("flood", "count", i);
        }
        check_eq!(request(service::ECHO_XOR, [LOG_FLOOD, 1, 0, 0]), Ok(LOG_FLOOD ^ 1), "a service after the flood");
    }
}

/// Argument patterns of the service sweep: every one out of any service's range.
const EXTREMES: [u64; 4] = [u64::MAX, i64::MIN as u64, u32::MAX as u64, 1 << 32];

/// Calls every service id up to 63 and u32::MAX with each extreme pattern: each must answer
/// (ok, unknown or failed) and leave the guest running. CHECKPOINT (which ends the run by
/// design), NMI and SMI (events, not arguments; an SMI would enter a handler this case
/// never installed), TSC_OFFSET (it would move the clock this case bounds its time with)
/// and HOST_SLEEP (checked once below, its cap
/// bounding the time) are left out.
extern "C" fn service_extremes() {
    let skip = [service::CHECKPOINT, service::NMI, service::SMI, service::TSC_OFFSET, service::HOST_SLEEP];
    let mut answered = 0u64;
    for id in (0..64u32).chain([u32::MAX]).filter(|id| !skip.contains(id)) {
        for pattern in EXTREMES {
            match request(id, [pattern; 4]) {
                Ok(_) | Err(ServiceError::Unknown | ServiceError::Failed) => answered += 1,
                Err(ServiceError::Other(status)) => {
                    check_eq!(status, proto::SERVICE_FAILED, "status of service {} with args {:#x}", id, pattern)
                }
            }
        }
    }
    metric("answers", "count", answered);
    check_eq!(request(service::INTERRUPT, [256, 0, 0, 0]).is_ok(), false, "KVM_INTERRUPT of vector 256 was accepted");
    check_eq!(
        request(service::SET_CLOCK, [i64::MIN as u64, 0, 0, 0]),
        Err(ServiceError::Failed),
        "SET_CLOCK by i64::MIN"
    );
    let slept = request(service::HOST_SLEEP, [u64::MAX, 0, 0, 0]);
    check!(slept.is_ok_and(|ns| ns < 1_000_000_000), "HOST_SLEEP(u64::MAX) returned {:?}, beyond its cap", slept);
    check_eq!(request(service::ECHO_XOR, [5, 3, 0, 0]), Ok(6), "ECHO_XOR after the sweep");
}

test_case! {
    /// Every service with out-of-range arguments, with the in-kernel irqchip: answered,
    /// none ending or wedging the run; KVM_INTERRUPT(256) and SET_CLOCK(i64::MIN) refused.
    name = "hostile::service_extremes::irqchip", mode = Long64, path = Full, requires = IRQCHIP;
    entry = service_extremes
}

test_case! {
    /// The same without the in-kernel irqchip, where KVM_INTERRUPT is served: a vector
    /// above 255 is refused instead of staying pending forever.
    name = "hostile::service_extremes::no_irqchip", mode = Long64, path = Full, requires = NO_IRQCHIP;
    entry = service_extremes
}

test_case! {
    /// A guest that never reports: it halts with interrupts on and nothing to wake it,
    /// inside KVM's in-kernel HLT. The watchdog must get it out of KVM_RUN at its limit.
    name = "hostile::never_reports::irqchip", mode = Long64, path = Full, requires = IRQCHIP,
        timeout_ms = 200, flags = EXPECT_TIMEOUT;
    fn never_reports() {
        loop {
            cpu::sti_hlt();
        }
    }
}

static AP_SPINNING: AtomicU64 = AtomicU64::new(0);
const SPIN_VECTOR: u8 = 0x50;

fn spin_handler(_: &mut Frame) {
    AP_SPINNING.store(1, SeqCst);
    loop {
        core::hint::spin_loop();
    }
}

test_case! {
    /// vCPU 1 spins at CPL0 in an interrupt handler forever (on PVM: emulated instruction
    /// by instruction) while vCPU 0 passes: the host ends the run at the verdict and stops
    /// the spinning vCPU with it.
    name = "hostile::ap_spins_at_cpl0::xapic", mode = Long64, path = Full, requires = IRQCHIP, vcpus = 2;
    fn ap_spins_at_cpl0() {
        set_handler(SPIN_VECTOR, spin_handler);
        let apic = Apic::XApic.enable();
        check!(hvprobe_rt::smp::wait_online(1, 2_000_000), "vCPU 1 did not come online");
        apic.write(reg::ICR_HIGH, 1 << 24);
        apic.write(reg::ICR_LOW, SPIN_VECTOR as u32);
        let mut spins = 0u64;
        while AP_SPINNING.load(SeqCst) == 0 && spins < 2_000_000 {
            spins += 1;
            core::hint::spin_loop();
        }
        check_eq!(AP_SPINNING.load(SeqCst), 1, "vCPU 1 entered its spinning handler");
    }
}

test_case! {
    /// A triple fault inside a service: with an IDT limit of 0, the NMI the guest asks
    /// for cannot be delivered (#GP, then #DF, both past the limit), so the NMI service's
    /// next entry shuts the VM down (SDM Vol. 3A 6.14.1, APM Vol. 2 8.2.9). The host ends
    /// the run with KVM_EXIT_SHUTDOWN.
    name = "hostile::triple_fault_in_service::long64", mode = Long64, path = Full, requires = IRQCHIP,
        flags = EXPECT_SHUTDOWN;
    fn triple_fault_in_service() {
        let empty = DescriptorPointer { limit: 0, base: 0 };
        // SAFETY: on purpose: after this no exception or interrupt can be delivered, and
        // the next one shuts the VM down, which is what this case expects.
        unsafe { core::arch::asm!("lidt [{}]", in(reg) &empty, options(readonly, nostack)) };
        let _ = request(service::NMI, [0; 4]);
        check!(false, "an NMI was delivered through an IDT of limit 0");
    }
}

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

test_case! {
    /// An SMP guest whose vCPU 0 halts forever with interrupts off while vCPU 1 idles:
    /// nothing can wake it, and the watchdog must stop every vCPU at the limit.
    name = "hostile::bsp_halts_forever::xapic", mode = Long64, path = Full, requires = IRQCHIP,
        timeout_ms = 200, flags = EXPECT_TIMEOUT, vcpus = 2;
    fn bsp_halts_forever() {
        check!(hvprobe_rt::smp::wait_online(1, 2_000_000), "vCPU 1 did not come online");
        loop {
            // SAFETY: on purpose: a halt nothing can end.
            unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
        }
    }
}
