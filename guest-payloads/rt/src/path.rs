//! The measured section of a path-table case ([`crate::abi::flags::PATH_TABLE`]): one
//! way to a behaviour, what it produced and what each operation cost.

use crate::abi::proto::service;
use crate::{cpu, metric, proto};

/// Runs `body`, which does `ops` operations of the behaviour in `accesses` accesses to its
/// interface (port or MMIO accesses, MSR writes, hypercalls, doorbells), inside the host's
/// measured section: the host counts the exits to userspace and the changes of KVM's
/// statistics within it, and the guest reports the metric `cost`, in guest TSC cycles per
/// operation.
pub fn measure<R>(ops: u64, accesses: u64, body: impl FnOnce() -> R) -> R {
    crate::check!(proto::service(service::SECTION_BEGIN, [0; 4]).is_ok(), "the host did not open the section");
    let start = cpu::rdtsc();
    let r = body();
    let cycles = cpu::rdtsc() - start;
    crate::check!(
        proto::service(service::SECTION_END, [ops, accesses, 0, 0]).is_ok(),
        "the host did not close the section"
    );
    metric("cost", "cycles", cycles / ops.max(1));
    r
}

/// Reports what this way to the behaviour produced; every way must produce the same.
pub fn result(unit: &str, value: u64) {
    metric("result", unit, value);
}

/// Runs `body` inside a measured section and returns what it returned and how many
/// exits to userspace it caused (the section's own services are not counted).
pub fn userspace_exits<R>(body: impl FnOnce() -> R) -> (R, u64) {
    crate::check!(proto::service(service::SECTION_BEGIN, [0; 4]).is_ok(), "the host did not open the section");
    let r = body();
    let exits = proto::service(service::SECTION_END, [0; 4]);
    crate::check!(exits.is_ok(), "the host did not close the section");
    (r, exits.unwrap_or(0))
}
