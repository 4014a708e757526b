//! The guest side of a benchmark: run batches of one operation, or of the empty loop,
//! as the host's driver asks, and report each batch's TSC cycles.
//!
//! The host decides everything statistical (iteration counts from its time budget, the
//! warm-up, how many samples, the baseline batches). The guest only runs `n` operations
//! between two fenced RDTSCs, [`BENCH_UNROLL`] per turn of the loop, so the loop around
//! the operation is the same machine code in the operation batch and in the baseline
//! batch; the difference between the two is the operation's cost, and the loop's share
//! of each operation (and of its noise) is an eighth of one turn.

use core::arch::asm;

use hvprobe_abi::proto::{BENCH_BASELINE, BENCH_UNROLL, service};

use crate::proto;

/// RDTSC ordered after every earlier instruction and before every later one
/// (SDM Vol. 2B, RDTSC: LFENCE before waits for earlier instructions; the one after keeps
/// later instructions from starting before the read).
#[inline(always)]
pub fn rdtsc_fenced() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: LFENCE and RDTSC have no side effects; CR4.TSD is clear in every mode the
    // harness builds.
    unsafe {
        asm!("lfence", "rdtsc", "lfence", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    u64::from(hi) << 32 | u64::from(lo)
}

/// Runs `op` `n` times, [`BENCH_UNROLL`] per turn (the host asks for multiples of it; a
/// remainder runs one per turn), and returns the TSC cycles it took. Not inlined, so that
/// each operation gets one copy of the loop and the baseline another of the same shape.
#[inline(never)]
fn batch<F: Fn()>(n: u64, op: &F) -> u64 {
    const _: () = assert!(BENCH_UNROLL == 8, "the loop below spells the unrolled operations out");
    let start = rdtsc_fenced();
    let mut turns = n / BENCH_UNROLL;
    while turns != 0 {
        op();
        op();
        op();
        op();
        op();
        op();
        op();
        op();
        turns -= 1;
    }
    let mut rest = n % BENCH_UNROLL;
    while rest != 0 {
        op();
        rest -= 1;
    }
    rdtsc_fenced().wrapping_sub(start)
}

/// The empty operation: an `asm!` block with no instructions, which the compiler must
/// keep, so the baseline loop is not optimised away.
#[inline(always)]
fn nothing() {
    // SAFETY: no instructions.
    unsafe { asm!("", options(nomem, nostack, preserves_flags)) };
}

/// Serves the host's benchmark driver until it says stop, then passes. Skips the case
/// when nothing drives it (a conformance runner booted it by mistake).
pub fn serve<F: Fn()>(op: F) -> ! {
    loop {
        let next = match proto::service(service::BENCH_NEXT, [0; 4]) {
            Ok(next) => next,
            Err(_) => crate::skip!("no benchmark driver answers BENCH_NEXT: run it with `hvprobe bench`"),
        };
        if next == 0 {
            proto::pass();
        }
        let n = next & !BENCH_BASELINE;
        let cycles = if next & BENCH_BASELINE != 0 { batch(n, &nothing) } else { batch(n, &op) };
        if proto::service(service::BENCH_RESULT, [cycles, n, 0, 0]).is_err() {
            crate::skip!("the benchmark driver refused a result");
        }
    }
}
