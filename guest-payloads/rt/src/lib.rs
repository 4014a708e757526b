//! hvprobe's guest runtime.
//!
//! The harness builds the CPU state (GDT, TSS, IDT, page tables, stacks) before the first
//! instruction, so the runtime has no boot code to speak of: a 64-bit test case starts in
//! [`entry`]'s `hvprobe_entry64` with RDI pointing at its descriptor, runs, and reports.
//! Every CPL0 instruction may be emulated by the hypervisor (about 1 us each on PVM), so
//! the runtime keeps the path to the test body and the reporting path short.
#![no_std]

pub mod apic;
pub mod bench;
pub mod console;
pub mod cpu;
mod entry;
pub mod exception;
pub mod ioapic;
pub mod kvmclock;
pub mod paging;
pub mod path;
pub mod proto;
pub mod smp;
pub mod state;
#[doc(hidden)]
pub mod testcase;
pub mod user;

pub use exception::{Exception, Frame};
pub use hvprobe_abi as abi;
pub use hvprobe_abi::{Mode, Path};
pub use proto::{log, metric};

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let (file, line) = info.location().map_or(("?", 0), |l| (l.file(), l.line()));
    proto::fail(file, line, proto::MessageBuf::format(format_args!("guest panic: {}", info.message())).as_str(), None)
}
