//! hvprobe's test catalogue and the judge: which cases exist, how to boot each one, and
//! what its run means against the backend's expectation profile. The runners
//! (`tests/guest.rs` for cargo test, `bin/hvprobe.rs` for the CLI) are thin layers on top.

pub mod bench;
pub mod catalog;
pub mod fuzz;
pub mod hooks;
pub mod judge;
pub mod migrate;
pub mod process;
pub mod profile;
pub mod runner;
pub mod stability;

pub use runner::{Context, Phases, run_case, run_case_timed};
