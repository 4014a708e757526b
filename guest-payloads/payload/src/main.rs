//! hvprobe's guest test cases: one ELF, one `test_case!` per case, booted in a fresh VM
//! for each case. Each area has its own module; expectations cite the manual they check.
#![no_std]
#![no_main]

mod tests;
