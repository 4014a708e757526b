//! The `hostile` area: guests that try to exhaust or confuse the host. Each must end with a
//! clear outcome within its limit while the host stays within the caps ARCHITECTURE lists
//! (`abi::limits`).

use hvprobe_rt::abi::limits::MAX_IRQFDS;
use hvprobe_rt::abi::proto::service;
use hvprobe_rt::abi::requires::IRQCHIP;
use hvprobe_rt::proto::service as request;
use hvprobe_rt::{check_eq, metric, test_case};

test_case! {
    /// An irqfd storm: IRQFD on 20,000 distinct GSIs. The host creates at most
    /// MAX_IRQFDS of them (two eventfds each at most) and refuses every later GSI with a
    /// service error, instead of running out of file descriptors.
    name = "hostile::irqfd_storm::long64", mode = Long64, path = Full, requires = IRQCHIP;
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
