//! The hvprobe VMM.
//!
//! Boots a guest payload's test case in a fresh VM and reports what happened: the guest's
//! verdict, how the run ended (exit reason, registers, instruction bytes), console and
//! log text, metrics and KVM statistics deltas. It never judges: deciding pass or fail
//! against expectations is the suites' job. It is also the only crate that opens
//! /dev/kvm.

pub mod affinity;
mod coalesced;
mod devices;
mod dirty;
mod error;
pub mod floor;
pub mod host;
mod machine;
mod memory;
pub mod migrate;
pub mod payload;
pub mod protocol;
mod report;
pub mod requirements;
mod ring;
mod run;
mod services;
pub mod snapshot;
mod state;
mod stats;
mod vm;
mod watchdog;

pub use error::Error;
pub use host::{Backend, HostFacts, Kvm};
pub use memory::GuestMemory;
pub use payload::{Migrate, Payload, PayloadError, TestCase};
pub use protocol::{GuestVerdict, Metric, VerdictStatus};
pub use report::{
    CpuSnapshot, InternalError, RunEnd, RunReport, Section, code_bits, first_instruction, hex as run_hex,
    instruction_signature,
};
pub use run::{RunOptions, ServiceHandler};
pub use services::{ServiceError, ServiceResult};
pub use snapshot::Snapshot;
pub use state::VcpuState;
pub use stats::StatDelta;
pub use vm::{CpuidEdit, IOEVENTS, Vm, VmConfig};
