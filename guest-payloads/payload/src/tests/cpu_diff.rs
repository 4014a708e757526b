//! The instruction emulator checked against the CPU: the same instruction, with the same
//! registers and flags, once at CPL0 and once at CPL3, must leave the same registers and
//! the same defined flags.
//!
//! On kvm_pvm, CPL0 code is emulated by KVM's instruction emulator and CPL3 code runs
//! natively, so this compares the emulator with the CPU. On kvm_intel and kvm_amd both
//! runs are native and the test is a self-check (an MMIO-operand variant, which forces
//! emulation there, is still to come). Cases are generated from the run's seed (service
//! SEED, `HVPROBE_SEED`); a failure names the seed and the case index, and
//! `HVPROBE_CASE=i` reruns that one case alone.

use core::arch::global_asm;

use hvprobe_rt::abi::proto::service;
use hvprobe_rt::proto::MessageBuf;
use hvprobe_rt::user::call_at_cpl3;
use hvprobe_rt::{log, metric, test_case};

/// The registers a stub reads and writes, and RFLAGS before and after.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Regs {
    rax: u64,
    rbx: u64,
    rcx: u64,
    rdx: u64,
    flags: u64,
}

const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;
const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

/// Declares the stubs: each loads `Regs` from RDI, runs the instruction, stores `Regs`
/// back. `undefined` lists the flags the SDM leaves undefined after the instruction; they
/// are not compared.
macro_rules! ops {
    ($($name:ident: $insn:literal, undefined = $undef:expr;)*) => {
        global_asm!(
            $(
                concat!(
                    ".section .text, \"ax\"\n",
                    "hv_diff_", stringify!($name), ":\n",
                    "push rbx\n",
                    "push rdi\n",
                    "mov rax, [rdi]\n",
                    "mov rbx, [rdi + 8]\n",
                    "mov rcx, [rdi + 16]\n",
                    "mov rdx, [rdi + 24]\n",
                    "push qword ptr [rdi + 32]\n",
                    "popfq\n",
                    $insn, "\n",
                    "pushfq\n",
                    "mov rdi, [rsp + 8]\n",
                    "pop qword ptr [rdi + 32]\n",
                    "mov [rdi], rax\n",
                    "mov [rdi + 8], rbx\n",
                    "mov [rdi + 16], rcx\n",
                    "mov [rdi + 24], rdx\n",
                    "pop rdi\n",
                    "pop rbx\n",
                    "ret\n",
                ),
            )*
            ".section .rodata, \"a\"\n",
            ".balign 8\n",
            ".global hv_diff_table\n",
            "hv_diff_table:\n",
            $(concat!(".quad hv_diff_", stringify!($name), "\n"),)*
        );

        const OPS: &[(&str, &str, u64)] = &[$((stringify!($name), $insn, $undef)),*];
        const N_OPS: usize = OPS.len();
    };
}

ops! {
    add: "add rax, rbx", undefined = 0;
    add32: "add eax, ebx", undefined = 0;
    add16: "add ax, bx", undefined = 0;
    add8: "add al, bl", undefined = 0;
    adc: "adc rax, rbx", undefined = 0;
    adc32: "adc eax, ebx", undefined = 0;
    sub: "sub rax, rbx", undefined = 0;
    sbb: "sbb rax, rbx", undefined = 0;
    sbb8: "sbb al, bl", undefined = 0;
    cmp: "cmp rax, rbx", undefined = 0;
    neg: "neg rax", undefined = 0;
    and: "and rax, rbx", undefined = AF;
    or32: "or eax, ebx", undefined = AF;
    xor: "xor rax, rbx", undefined = AF;
    test: "test rax, rbx", undefined = AF;
    inc: "inc rax", undefined = 0;
    dec32: "dec ebx", undefined = 0;
    not: "not rax", undefined = 0;
    shl: "shl rax, cl", undefined = AF | OF;
    shr: "shr rax, cl", undefined = AF | OF;
    sar32: "sar eax, cl", undefined = AF | OF;
    rol: "rol rax, cl", undefined = OF;
    ror16: "ror ax, cl", undefined = OF;
    rcl: "rcl rax, cl", undefined = OF;
    rcr8: "rcr al, cl", undefined = OF;
    shld: "shld rax, rbx, cl", undefined = AF | OF;
    mul: "mul rbx", undefined = SF | ZF | AF | PF;
    imul: "imul rax, rbx", undefined = SF | ZF | AF | PF;
    imul3: "imul eax, ebx, 7", undefined = SF | ZF | AF | PF;
    div: "or rbx, 1\nxor edx, edx\ndiv rbx", undefined = STATUS;
    bt: "bt rax, rbx", undefined = OF | SF | AF | PF;
    bts: "bts rax, rbx", undefined = OF | SF | AF | PF;
    btr: "btr rax, rbx", undefined = OF | SF | AF | PF;
    btc: "btc rax, rbx", undefined = OF | SF | AF | PF;
    xchg: "xchg rax, rbx", undefined = 0;
    xadd: "xadd rax, rbx", undefined = 0;
    cmpxchg: "cmpxchg rbx, rcx", undefined = 0;
    cmovz: "cmovz rax, rbx", undefined = 0;
    cmovl: "cmovl rcx, rdx", undefined = 0;
    setcc: "setb cl\nseto dl", undefined = 0;
    bswap: "bswap rax", undefined = 0;
    movsx: "movsx rax, bl", undefined = 0;
    movzx: "movzx eax, bx", undefined = 0;
    lea: "lea rax, [rbx + rcx * 4 + 0x10]", undefined = 0;
}

unsafe extern "C" {
    static hv_diff_table: [extern "C" fn(&mut Regs); N_OPS];
}

fn stub(op: usize) -> extern "C" fn(&mut Regs) {
    // SAFETY: the table is a read-only array of N_OPS stub addresses emitted above.
    unsafe { hv_diff_table[op] }
}

/// What the CPL3 side runs: the stub at `job.op` on `job.regs`.
#[repr(C)]
struct Job {
    op: usize,
    regs: Regs,
}

extern "C" fn run_job(arg: u64) {
    // SAFETY: `arg` is the address of a live Job owned by the CPL0 caller, which waits.
    let job = unsafe { &mut *(arg as *mut Job) };
    stub(job.op)(&mut job.regs);
}

/// xorshift64*: small, and the same sequence on every CPU.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Edge values half the time: that is where arithmetic goes wrong.
    fn operand(&mut self) -> u64 {
        const EDGES: [u64; 16] = [
            0,
            1,
            2,
            0x7f,
            0x80,
            0xff,
            0x7fff,
            0x8000,
            0xffff,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_ffff,
            0x7fff_ffff_ffff_ffff,
            0x8000_0000_0000_0000,
            u64::MAX,
            63,
        ];
        let r = self.next();
        if r & 1 == 0 { EDGES[(r >> 1) as usize % EDGES.len()] } else { self.next() }
    }
}

fn case_input(rng: &mut Rng) -> (usize, Regs) {
    let op = (rng.next() % N_OPS as u64) as usize;
    let regs = Regs {
        rax: rng.operand(),
        rbx: rng.operand(),
        rcx: if rng.next() & 1 == 0 { rng.next() % 70 } else { rng.operand() },
        rdx: rng.operand(),
        flags: (rng.next() & STATUS) | 0x2,
    };
    (op, regs)
}

const CASES: u64 = 1000;

test_case! {
    /// 1,000 generated ALU, shift, multiply/divide, bit-test, exchange and move cases:
    /// CPL0 and CPL3 must agree on RAX, RBX, RCX, RDX and every flag the SDM defines.
    name = "cpu::emulator_diff_alu::long64", mode = Long64, path = Full;
    fn emulator_diff_alu() {
        let ask = |id| hvprobe_rt::proto::service(id, [0; 4]).unwrap_or(0);
        let seed = ask(service::SEED);
        let only = hvprobe_rt::proto::service(service::ONLY_CASE, [0; 4]).unwrap_or(u64::MAX);
        log!("seed {:#x}, {} cases over {} operations", seed, CASES, N_OPS);
        // xorshift's state must not be 0; any other seed is used as given.
        let mut rng = Rng(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed });
        let mut differing = [0u32; N_OPS];
        let (mut ran, mut first) = (0u64, None);
        for index in 0..CASES {
            let (op, input) = case_input(&mut rng);
            if only != u64::MAX && index != only {
                continue;
            }
            ran += 1;
            let mut cpl0 = input;
            stub(op)(&mut cpl0);
            let mut job = Job { op, regs: input };
            call_at_cpl3(run_job, &raw mut job as u64);
            let cpl3 = job.regs;
            let mask = STATUS & !OPS[op].2;
            let same = Regs { flags: cpl0.flags & mask, ..cpl0 } == Regs { flags: cpl3.flags & mask, ..cpl3 };
            if !same {
                if differing[op] == 0 {
                    log!(
                        "case {} {} ({}): in {:x?}\n  CPL0 {:x?}\n  CPL3 {:x?} (flags compared: {:#x})",
                        index,
                        OPS[op].0,
                        OPS[op].1,
                        input,
                        cpl0,
                        cpl3,
                        mask
                    );
                }
                differing[op] += 1;
                first.get_or_insert(index);
            }
        }
        metric("cases", "count", ran);
        let total: u32 = differing.iter().sum();
        metric("differing_cases", "count", total as u64);
        if let Some(index) = first {
            let mut buf = MessageBuf::new();
            let _ = core::fmt::write(
                &mut buf,
                format_args!("{total} of {ran} cases differ between CPL0 and CPL3 (seed {seed:#x}; first: case {index}, rerun it alone with HVPROBE_SEED={seed:#x} HVPROBE_CASE={index}); by operation:"),
            );
            for (op, n) in differing.iter().enumerate().filter(|(_, n)| **n > 0) {
                let _ = core::fmt::write(&mut buf, format_args!(" {} {}", OPS[op].0, n));
            }
            hvprobe_rt::proto::fail(file!(), line!(), buf.as_str(), None);
        }
    }
}
