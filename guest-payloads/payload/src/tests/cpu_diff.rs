//! The instruction emulator checked against the CPU: the same instruction, with the same
//! registers and flags, once at CPL0 and once at CPL3, must leave the same registers and
//! the same defined flags.
//!
//! On kvm_pvm, CPL0 code is emulated by KVM's instruction emulator and CPL3 code runs
//! natively, so this compares the emulator with the CPU. On kvm_intel and kvm_amd both
//! runs are native; `cpu::emulator_diff::mmio` forces emulation on every backend instead:
//! the instructions that touch memory run at CPL3 twice, once on RAM and once with their
//! operands on the MMIO test device. Cases are generated from the run's seed (service
//! SEED, `HVPROBE_SEED`); a failure names the seed and the case index, and
//! `HVPROBE_CASE=i` reruns that one case alone.

use core::arch::global_asm;

use hvprobe_rt::abi::proto::service;
use hvprobe_rt::proto::MessageBuf;
use hvprobe_rt::user::call_at_cpl3;
use hvprobe_rt::{check, check_no_exception, log, metric, test_case};

/// The registers a stub reads and writes, and RFLAGS before and after.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Regs {
    rax: u64,
    rbx: u64,
    rcx: u64,
    rdx: u64,
    rsi: u64,
    rdi: u64,
    flags: u64,
}

/// Memory the cases' operands point into (RSI and RDI start inside it); both runs start
/// from the same bytes and must leave the same bytes.
#[repr(C, align(64))]
struct Buffer([u8; BUF_LEN]);

const BUF_LEN: usize = 128;
static mut BUF: Buffer = Buffer([0; BUF_LEN]);

fn buf() -> *mut u8 {
    (&raw mut BUF).cast()
}

/// What RCX may hold: any value, or a small count (REP prefixes, so strings stay inside
/// the buffer).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rcx {
    Any,
    Small,
}

const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;
const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

/// Declares the stubs: each loads `Regs` through R12, runs the instruction, stores `Regs`
/// back and clears DF (the Rust ABI needs it clear). `undefined` lists the flags the SDM
/// leaves undefined after the instruction; they are not compared.
macro_rules! ops {
    ($($name:ident: $insn:literal, undefined = $undef:expr $(, rcx = $rcx:ident)?;)*) => {
        global_asm!(
            $(
                concat!(
                    ".section .text, \"ax\"\n",
                    "hv_diff_", stringify!($name), ":\n",
                    "push rbx\n",
                    "push r12\n",
                    "mov r12, rdi\n",
                    "mov rax, [r12]\n",
                    "mov rbx, [r12 + 8]\n",
                    "mov rcx, [r12 + 16]\n",
                    "mov rdx, [r12 + 24]\n",
                    "mov rsi, [r12 + 32]\n",
                    "mov rdi, [r12 + 40]\n",
                    "push qword ptr [r12 + 48]\n",
                    "popfq\n",
                    $insn, "\n",
                    "pushfq\n",
                    "pop qword ptr [r12 + 48]\n",
                    "cld\n",
                    "mov [r12], rax\n",
                    "mov [r12 + 8], rbx\n",
                    "mov [r12 + 16], rcx\n",
                    "mov [r12 + 24], rdx\n",
                    "mov [r12 + 32], rsi\n",
                    "mov [r12 + 40], rdi\n",
                    "pop r12\n",
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

        const OPS: &[(&str, &str, u64, Rcx)] = &[$((stringify!($name), $insn, $undef, [$(Rcx::$rcx,)? Rcx::Any][0])),*];
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
    add_mem: "add qword ptr [rsi], rax", undefined = 0;
    sub_mem32: "sub dword ptr [rdi + 4], ebx", undefined = 0;
    and_mem8: "and byte ptr [rsi + 1], dl", undefined = AF;
    inc_mem16: "inc word ptr [rdi]", undefined = 0;
    neg_mem: "neg qword ptr [rsi + 8]", undefined = 0;
    shl_mem: "shl qword ptr [rdi], cl", undefined = AF | OF;
    xchg_mem: "xchg [rdi], rbx", undefined = 0;
    xadd_lock: "lock xadd [rsi], rax", undefined = 0;
    cmpxchg_mem: "lock cmpxchg [rdi], rcx", undefined = 0;
    bts_mem: "bts qword ptr [rsi], 13", undefined = OF | SF | AF | PF;
    movzx_mem: "movzx eax, word ptr [rsi + 3]", undefined = 0;
    push_pop: "push qword ptr [rsi]\npop qword ptr [rdi]", undefined = 0;
    push_pop_reg: "push rax\npush rdx\npop rbx\npop rcx", undefined = 0;
    movsb: "movsb", undefined = 0;
    movsq: "movsq", undefined = 0;
    rep_movsb: "rep movsb", undefined = 0, rcx = Small;
    rep_movsd: "rep movsd", undefined = 0, rcx = Small;
    rep_stosq: "rep stosq", undefined = 0, rcx = Small;
    stosw: "stosw", undefined = 0;
    lodsb: "lodsb", undefined = 0;
    rep_lodsq: "rep lodsq", undefined = 0, rcx = Small;
    cmpsb: "cmpsb", undefined = 0;
    repe_cmpsb: "repe cmpsb", undefined = 0, rcx = Small;
    repne_scasb: "repne scasb", undefined = 0, rcx = Small;
    scasq: "scasq", undefined = 0;
    seg_override: "mov rax, qword ptr ds:[rsi]\nmov rbx, qword ptr ss:[rdi]", undefined = 0;
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

/// Where the operands live: the RAM buffer, or the MMIO test device's register file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Operands {
    Ram,
    Mmio,
}

impl Operands {
    fn base(self) -> *mut u64 {
        match self {
            Operands::Ram => buf().cast(),
            Operands::Mmio => hvprobe_rt::abi::layout::MMIO_TEST_BASE as *mut u64,
        }
    }

    /// Fills the operands from the case's byte pattern, 8 bytes a store.
    fn load(self, pattern: &[u8; BUF_LEN]) {
        for (i, chunk) in pattern.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            // SAFETY: BUF is ours alone, and the MMIO register file holds 256 bytes.
            unsafe { self.base().add(i).write_volatile(v) };
        }
    }

    fn read(self) -> [u8; BUF_LEN] {
        let mut out = [0u8; BUF_LEN];
        for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
            // SAFETY: as for load.
            chunk.copy_from_slice(&unsafe { self.base().add(i).read_volatile() }.to_le_bytes());
        }
        out
    }
}

/// Fills the RAM buffer from the case's byte pattern.
fn load_buffer(pattern: &[u8; BUF_LEN]) {
    Operands::Ram.load(pattern);
}

fn read_buffer() -> [u8; BUF_LEN] {
    Operands::Ram.read()
}

/// Whether an operation reads or writes the buffer (an explicit memory operand or a
/// string instruction), so that moving its operands to MMIO changes how it runs.
fn touches_memory(op: usize) -> bool {
    let insn = OPS[op].1;
    (insn.contains('[') && !insn.starts_with("lea"))
        || ["movs", "stos", "lods", "cmps", "scas"].iter().any(|s| insn.contains(s))
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

const DF: u64 = 1 << 10;

fn case_input(rng: &mut Rng, pattern: &mut [u8; BUF_LEN], base: u64) -> (usize, Regs) {
    let op = (rng.next() % N_OPS as u64) as usize;
    // RSI and RDI start in the middle, so up to 4 elements of 8 bytes either way stay in.
    let pointer = |r: u64| base + 48 + r % 32;
    let rcx = match OPS[op].3 {
        Rcx::Small => rng.next() % 5,
        Rcx::Any if rng.next() & 1 == 0 => rng.next() % 70,
        Rcx::Any => rng.operand(),
    };
    let regs = Regs {
        rax: rng.operand(),
        rbx: rng.operand(),
        rcx,
        rdx: rng.operand(),
        rsi: pointer(rng.next()),
        rdi: pointer(rng.next()),
        flags: (rng.next() & (STATUS | DF)) | 0x2,
    };
    for chunk in pattern.chunks_exact_mut(8) {
        // Repeated bytes half the time, so REPE/REPNE run past the first element.
        let v = if rng.next() & 1 == 0 { 0x4141_4141_4141_4141 } else { rng.next() };
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    (op, regs)
}

const CASES: u64 = 1000;

/// Cases generated at a time, at CPL3: there the generator runs natively on every backend,
/// where PVM would emulate it at CPL0 instruction by instruction.
const BATCH_LEN: usize = 100;

/// The generator's state and its latest cases (operation, registers, buffer pattern).
struct Batch {
    rng: Rng,
    cases: [(usize, Regs, [u8; BUF_LEN]); BATCH_LEN],
}

const NO_REGS: Regs = Regs { rax: 0, rbx: 0, rcx: 0, rdx: 0, rsi: 0, rdi: 0, flags: 0 };
static mut BATCH: Batch = Batch { rng: Rng(1), cases: [(0, NO_REGS, [0; BUF_LEN]); BATCH_LEN] };

/// Generates the next BATCH_LEN cases (the same sequence as one at a time).
extern "C" fn generate_batch(arg: u64) {
    // SAFETY: `arg` is the address of BATCH, which the CPL0 caller does not touch meanwhile.
    let batch = unsafe { &mut *(arg as *mut Batch) };
    for slot in batch.cases.iter_mut() {
        let mut pattern = [0u8; BUF_LEN];
        let (op, input) = case_input(&mut batch.rng, &mut pattern, buf() as u64);
        *slot = (op, input, pattern);
    }
}

/// The limit of the generated cases: far above their running time on any machine of the
/// development kind, loaded or not, so that the verdict never depends on the machine's speed.
const LONG_CASE_LIMIT_MS: u32 = 90_000;

test_case! {
    /// 1,000 generated cases over ALU, shift, multiply/divide, bit-test, exchange and move
    /// instructions, memory operands (with LOCK), push/pop, segment overrides and string
    /// instructions with REP prefixes in both DF directions: CPL0 and CPL3 must agree on
    /// RAX, RBX, RCX, RDX, RSI, RDI, every flag the SDM defines, and the memory.
    ///
    /// Limit: about 3 s on the development machines when quiet; 90 s holds on machines
    /// 3x slower with the second core busy, and on slower platforms.
    name = "cpu::emulator_diff::long64", mode = Long64, path = Full, timeout_ms = LONG_CASE_LIMIT_MS;
    fn emulator_diff() {
        let ask = |id| hvprobe_rt::proto::service(id, [0; 4]).unwrap_or(0);
        let seed = ask(service::SEED);
        let only = hvprobe_rt::proto::service(service::ONLY_CASE, [0; 4]).unwrap_or(u64::MAX);
        log!("seed {:#x}, {} cases over {} operations", seed, CASES, N_OPS);
        // xorshift's state must not be 0; any other seed is used as given.
        let batch_ptr = &raw mut BATCH;
        // SAFETY: this case is the only user of BATCH, and nothing else runs meanwhile.
        let batch = unsafe { &mut *batch_ptr };
        batch.rng = Rng(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed });
        let mut differing = [0u32; N_OPS];
        let (mut ran, mut first) = (0u64, None);
        for index in 0..CASES {
            if index % BATCH_LEN as u64 == 0 {
                check_no_exception!(call_at_cpl3(generate_batch, batch as *mut Batch as u64));
            }
            let (op, input, pattern) = batch.cases[(index % BATCH_LEN as u64) as usize];
            if only != u64::MAX && index != only {
                continue;
            }
            ran += 1;
            let mut cpl0 = input;
            load_buffer(&pattern);
            stub(op)(&mut cpl0);
            let mem0 = read_buffer();
            let mut job = Job { op, regs: input };
            load_buffer(&pattern);
            check_no_exception!(call_at_cpl3(run_job, &raw mut job as u64));
            let mem3 = read_buffer();
            let cpl3 = job.regs;
            let mask = STATUS & !OPS[op].2;
            let same = Regs { flags: cpl0.flags & mask, ..cpl0 } == Regs { flags: cpl3.flags & mask, ..cpl3 };
            if !same || mem0 != mem3 {
                if differing[op] == 0 {
                    log!(
                        "case {} {} ({}): in {:x?}\n  CPL0 {:x?}\n  CPL3 {:x?} (flags compared: {:#x}); memory {}",
                        index,
                        OPS[op].0,
                        OPS[op].1,
                        input,
                        cpl0,
                        cpl3,
                        mask,
                        if mem0 == mem3 { "equal" } else { "differs" }
                    );
                }
                differing[op] += 1;
                first.get_or_insert(index);
            }
        }
        check!(ran > 0, "HVPROBE_CASE {} is not one of the {} generated cases", only, CASES);
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

/// Runs `input` through `op` with the operands in `at`, at the caller's CPL3; returns the
/// registers with RSI and RDI made relative to the operands' base, and the operands' bytes.
fn run_with_operands(op: usize, input: Regs, pattern: &[u8; BUF_LEN], at: Operands) -> (Regs, [u8; BUF_LEN]) {
    let base = at.base() as u64;
    let mut job = Job { op, regs: Regs { rsi: input.rsi + base, rdi: input.rdi + base, ..input } };
    at.load(pattern);
    run_job(&raw mut job as u64);
    let r = job.regs;
    (Regs { rsi: r.rsi.wrapping_sub(base), rdi: r.rdi.wrapping_sub(base), ..r }, at.read())
}

/// The MMIO comparison's inputs and findings, shared with its loop at CPL3.
struct MmioDiff {
    seed: u64,
    only: u64,
    ran: u64,
    differing: u64,
    first: Option<u64>,
    /// The case running now: the one to blame for an exception.
    current: u64,
}

/// The MMIO comparison's loop, run at CPL3 as a whole: generating the cases and running
/// both sides there costs no emulation of CPL0 code on hosts that emulate it (PVM).
extern "C" fn mmio_diff_loop(arg: u64) {
    // SAFETY: `arg` is the address of the CPL0 caller's MmioDiff, which waits for us.
    let d = unsafe { &mut *(arg as *mut MmioDiff) };
    let mut rng = Rng(if d.seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { d.seed } ^ 0x4d4d_494f);
    let mut pattern = [0u8; BUF_LEN];
    let mut index = 0;
    while index < CASES {
        // Pointers relative to the operands' base; each run adds its own.
        let (op, input) = case_input(&mut rng, &mut pattern, 0);
        if !touches_memory(op) {
            continue;
        }
        index += 1;
        if d.only != u64::MAX && index - 1 != d.only {
            continue;
        }
        d.ran += 1;
        d.current = index - 1;
        let (ram, mem_ram) = run_with_operands(op, input, &pattern, Operands::Ram);
        let (mmio, mem_mmio) = run_with_operands(op, input, &pattern, Operands::Mmio);
        let mask = STATUS & !OPS[op].2;
        let same = Regs { flags: ram.flags & mask, ..ram } == Regs { flags: mmio.flags & mask, ..mmio };
        if !same || mem_ram != mem_mmio {
            if d.differing == 0 {
                log!(
                    "case {} {} ({}): in {:x?}\n  RAM  {:x?}\n  MMIO {:x?} (flags compared: {:#x}); memory {}",
                    index - 1,
                    OPS[op].0,
                    OPS[op].1,
                    input,
                    ram,
                    mmio,
                    mask,
                    if mem_ram == mem_mmio { "equal" } else { "differs" }
                );
            }
            d.differing += 1;
            d.first.get_or_insert(index - 1);
        }
    }
}

test_case! {
    /// 1,000 generated cases of the instructions that touch memory (memory operands with
    /// and without LOCK, push/pop to memory, segment overrides, string instructions with
    /// REP in both DF directions), each run at CPL3 on RAM, where the CPU executes it,
    /// and with its operands on the MMIO test device, where the hypervisor must decode
    /// and emulate it on any backend: registers, defined flags and the operand bytes must
    /// agree. Seed and rerun as for `cpu::emulator_diff::long64`. The whole loop runs at
    /// CPL3 (generating the cases too), so that only the MMIO accesses cost exits.
    ///
    /// Limit: 6.5-9 s on the development machines when quiet before the loop moved to
    /// CPL3; as for `cpu::emulator_diff::long64`.
    name = "cpu::emulator_diff::mmio", mode = Long64, path = Full, timeout_ms = LONG_CASE_LIMIT_MS;
    fn emulator_diff_mmio() {
        let ask = |id| hvprobe_rt::proto::service(id, [0; 4]).unwrap_or(0);
        let seed = ask(service::SEED);
        let only = hvprobe_rt::proto::service(service::ONLY_CASE, [0; 4]).unwrap_or(u64::MAX);
        log!("seed {:#x}, {} cases of the memory operations", seed, CASES);
        let mut d = MmioDiff { seed, only, ran: 0, differing: 0, first: None, current: 0 };
        let caught = call_at_cpl3(mmio_diff_loop, &raw mut d as u64);
        if caught.is_some() {
            log!("the exception below came from case {} (HVPROBE_SEED={:#x} HVPROBE_CASE={})", d.current, seed, d.current);
        }
        check_no_exception!(caught);
        check!(d.ran > 0, "HVPROBE_CASE {} is not one of the {} generated cases", only, CASES);
        metric("cases", "count", d.ran);
        metric("differing_cases", "count", d.differing);
        if let Some(index) = d.first {
            let (differing, ran) = (d.differing, d.ran);
            hvprobe_rt::proto::fail(
                file!(),
                line!(),
                MessageBuf::format(format_args!(
                    "{differing} of {ran} cases differ between RAM and MMIO operands (seed {seed:#x}; first: case {index}, rerun it alone with HVPROBE_SEED={seed:#x} HVPROBE_CASE={index})"
                ))
                .as_str(),
                None,
            );
        }
    }
}
