//! What a run produced (`RunReport`) and how it ended (`RunEnd`), with the pieces a
//! failure is described by: the registers and instruction bytes at the end, a decoded
//! internal error, the measured section. The harness reports; the suites judge.

use std::time::Duration;

use crate::protocol::{self, GuestVerdict, Metric};
use crate::stats::StatDelta;
use crate::{Error, Vm};

/// KVM_EXIT_INTERNAL_ERROR, decoded (KVM API, "KVM_EXIT_INTERNAL_ERROR").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalError {
    pub suberror: u32,
    pub suberror_name: &'static str,
    pub data: Vec<u64>,
    /// For an emulation failure whose exit carries them, the bytes KVM failed to emulate.
    pub insn_bytes: Option<Vec<u8>>,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The guest reported a verdict (see `RunReport::verdict`).
    Verdict,
    /// KVM_EXIT_HLT: the guest halted with no in-kernel APIC to wake it.
    Hlt,
    /// KVM_EXIT_SHUTDOWN: triple fault or an unrecoverable event.
    Shutdown,
    /// KVM_EXIT_FAIL_ENTRY with the hardware's entry-failure reason.
    FailEntry { hardware_reason: u64, cpu: u32 },
    /// KVM_EXIT_INTERNAL_ERROR.
    InternalError(InternalError),
    /// KVM_EXIT_SYSTEM_EVENT (reset, shutdown, crash...).
    SystemEvent { kind: u32, data: Vec<u64> },
    /// The watchdog stopped the guest at its limit.
    Timeout { limit: Duration },
    /// The guest sent a message the protocol does not allow.
    ProtocolError(String),
    /// An exit the harness does not expect from a test guest.
    UnexpectedExit(String),
    /// KVM_RUN itself failed.
    KvmRunFailed(String),
    /// `RunOptions::max_exits` exits happened.
    ExitLimit { exits: u64 },
    /// The guest asked to be saved (service CHECKPOINT with this tag); it continues at
    /// the next `run`, of this VM or of one restored from its snapshot.
    Checkpoint { tag: u64 },
    /// `RunOptions::pause_after` passed, or `RunOptions::stop` was raised; the guest
    /// continues at the next `run`.
    Paused,
    /// A check the host made around the guest failed (a migration that did not copy
    /// memory exactly, a restore in another process that did not finish, ...).
    HostCheck(String),
    /// vCPU 0 never left KVM_RUN while KVM re-executed one instruction, not a branch, at
    /// least [`LIVELOCK_MIN_REPEATS`] times over [`LIVELOCK_WINDOW`] with its registers
    /// unchanged (its `insn_emulation` or `exits` statistic counting the attempts): a
    /// livelock in the hypervisor, ended early instead of at the watchdog's limit. The
    /// instruction is the snapshot's.
    Livelock { rip: u64, repeats: u64, over: Duration },
}

impl RunEnd {
    /// A short stable name, used in failure signatures and results files: one of the
    /// results format's `END_KINDS` (a test in `suites` checks every variant's).
    pub fn kind(&self) -> &'static str {
        match self {
            RunEnd::Verdict => "verdict",
            RunEnd::Hlt => "hlt",
            RunEnd::Shutdown => "shutdown",
            RunEnd::FailEntry { .. } => "fail_entry",
            RunEnd::InternalError(_) => "internal_error",
            RunEnd::SystemEvent { .. } => "system_event",
            RunEnd::Timeout { .. } => "timeout",
            RunEnd::ProtocolError(_) => "protocol_error",
            RunEnd::UnexpectedExit(_) => "unexpected_exit",
            RunEnd::KvmRunFailed(_) => "kvm_run_failed",
            RunEnd::ExitLimit { .. } => "exit_limit",
            RunEnd::Checkpoint { .. } => "checkpoint",
            RunEnd::Paused => "paused",
            RunEnd::HostCheck(_) => "host_check",
            RunEnd::Livelock { .. } => "livelock",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            RunEnd::FailEntry { hardware_reason, cpu } => {
                format!("KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {hardware_reason:#x} on CPU {cpu}")
            }
            RunEnd::InternalError(e) => {
                let mut s = format!("KVM_EXIT_INTERNAL_ERROR: suberror {} ({})", e.suberror, e.suberror_name);
                if let Some(b) = &e.insn_bytes {
                    s += &format!(", instruction bytes {}", hex(b));
                }
                if !e.data.is_empty() {
                    s += &format!(", data {:x?}", e.data);
                }
                s
            }
            RunEnd::SystemEvent { kind, data } => format!("KVM_EXIT_SYSTEM_EVENT type {kind}, data {data:x?}"),
            RunEnd::Timeout { limit } => format!("watchdog stopped the guest after {:.3} s", limit.as_secs_f64()),
            RunEnd::ProtocolError(m) => format!("protocol error: {m}"),
            RunEnd::UnexpectedExit(m) => format!("unexpected exit: {m}"),
            RunEnd::KvmRunFailed(m) => format!("KVM_RUN failed: {m}"),
            RunEnd::ExitLimit { exits } => format!("stopped after {exits} exits, as asked"),
            RunEnd::Checkpoint { tag } => format!("the guest asked to be saved (checkpoint {tag})"),
            RunEnd::Paused => "paused by the host, as asked".into(),
            RunEnd::HostCheck(m) => format!("host check failed: {m}"),
            RunEnd::Livelock { rip, repeats, over } => format!(
                "livelock: KVM re-executed the instruction at rip {rip:#x} {repeats} times in {:.0} ms with vCPU 0's \
                 registers unchanged and no exit to userspace",
                over.as_secs_f64() * 1e3
            ),
            RunEnd::Verdict => "the guest reported a verdict".into(),
            RunEnd::Hlt => "KVM_EXIT_HLT: the guest halted".into(),
            RunEnd::Shutdown => "KVM_EXIT_SHUTDOWN: triple fault or unrecoverable event".into(),
        }
    }
}

/// Formats bytes as "0f 01 c1".
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// vCPU 0's state when a run ended without a verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuSnapshot {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cs: u16,
    pub cpl: u8,
    /// The code size CS gives: 16, 32 or 64 bits.
    pub bits: u32,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// rax, rbx, rcx, rdx, rsi, rdi, rbp, r8-r15.
    pub gprs: [u64; 15],
    /// Up to 15 bytes at CS:RIP (fewer if the rest is not in guest RAM).
    pub insn_bytes: Vec<u8>,
}

impl std::fmt::Display for CpuSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rip {:#x} cs {:#x} (CPL {}) rsp {:#x} rflags {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}; bytes at rip: {}",
            self.rip,
            self.cs,
            self.cpl,
            self.rsp,
            self.rflags,
            self.cr0,
            self.cr2,
            self.cr3,
            self.cr4,
            self.efer,
            if self.insn_bytes.is_empty() { "unavailable".into() } else { hex(&self.insn_bytes) }
        )
    }
}

/// What happened inside the guest's measured section (services SECTION_BEGIN and
/// SECTION_END), for the path table: how each way to a behaviour was handled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Section {
    /// Operations of the behaviour the guest did in it, and accesses to the interface
    /// that carried them (SECTION_END's two arguments).
    pub ops: u64,
    pub accesses: u64,
    /// Exits to this VMM inside it, by kind (the services' own exits are not counted).
    pub io_exits: u64,
    pub mmio_exits: u64,
    pub other_exits: u64,
    /// Changes of the vCPU's KVM statistics over it (SECTION_END's own exit included).
    pub stats: Vec<StatDelta>,
}

/// Everything a run produced. The harness reports; the suites judge.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub end: Option<RunEnd>,
    pub verdict: Option<GuestVerdict>,
    pub snapshot: Option<CpuSnapshot>,
    pub console: String,
    pub console_truncated: bool,
    pub log: Vec<String>,
    pub log_dropped: u64,
    /// Metrics past [`hvprobe_abi::limits::METRICS`], counted and not kept.
    pub metrics_dropped: u64,
    pub metrics: Vec<Metric>,
    /// Accesses to absent devices.
    pub notes: Vec<String>,
    pub duration: Duration,
    pub stats: Vec<StatDelta>,
    pub stats_error: Option<String>,
    /// The guest's measured section, once closed.
    pub section: Option<Section>,
}

impl RunReport {
    pub fn end(&self) -> &RunEnd {
        self.end.as_ref().unwrap_or(&RunEnd::Verdict)
    }
}

/// The code size of a CS descriptor: 64 in long mode's 64-bit submode (EFER.LMA, CS.L),
/// 32 with CS.D in protected mode, 16 otherwise (SDM Vol. 3A 3.4.5, APM Vol. 2 4.8).
pub fn code_bits(cr0: u64, efer: u64, l: u8, db: u8) -> u32 {
    match (cr0 & 1 != 0, efer & (1 << 10) != 0 && l != 0, db != 0) {
        (false, ..) => 16,
        (true, true, _) => 64,
        (true, false, true) => 32,
        (true, false, false) => 16,
    }
}

/// The first instruction of `bytes`, decoded as `bits`-bit code: the bytes that define an
/// instruction-level failure, without those after it (which change with the code's
/// layout, not with the behaviour). An encoding the decoder cannot read keeps its first
/// byte only; empty input stays empty.
pub fn first_instruction(bytes: &[u8], bits: u32) -> &[u8] {
    &bytes[..decode_first(bytes, bits).0]
}

/// The first instruction of `bytes` as a signature's hex: its bytes, with those of a
/// memory operand's displacement written `__`. A displacement is where the operand lies
/// (an absolute or RIP-relative address, a stack offset), which moves with the payload's
/// layout from one build to the next; the opcode, ModRM, SIB and immediates say what the
/// instruction is and stay.
pub fn instruction_signature(bytes: &[u8], bits: u32) -> String {
    let (len, displacement) = decode_first(bytes, bits);
    bytes[..len]
        .iter()
        .enumerate()
        .map(|(i, b)| if displacement.contains(&i) { "__".to_string() } else { format!("{b:02x}") })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One decode of the first instruction of `bytes`: its length (1 for an encoding the
/// decoder cannot read, 0 for no bytes) and where its displacement lies.
fn decode_first(bytes: &[u8], bits: u32) -> (usize, std::ops::Range<usize>) {
    use iced_x86::{Decoder, DecoderOptions};
    if bytes.is_empty() {
        return (0, 0..0);
    }
    let bits = if matches!(bits, 16 | 32 | 64) { bits } else { 64 };
    let mut decoder = Decoder::new(bits, bytes, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return (1, 0..0);
    }
    let c = decoder.get_constant_offsets(&insn);
    let at = c.displacement_offset();
    (insn.len().clamp(1, bytes.len()), at..at + c.displacement_size())
}

/// Decodes KVM_EXIT_INTERNAL_ERROR's suberror and data. For an emulation failure that
/// carries instruction bytes (flags bit 0, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES),
/// data[0] is the flags word and the next 16 bytes hold the length and up to 15 bytes.
pub(crate) fn decode_internal(suberror: u32, ndata: u32, raw: &[u64]) -> InternalError {
    let data: Vec<u64> = raw.iter().take((ndata as usize).min(raw.len())).copied().collect();
    let suberror_name = match suberror {
        kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
        kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
        kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failed",
        kvm_bindings::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
        _ => "unknown suberror",
    };
    let insn_bytes = (suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION && data.len() >= 3 && data[0] & 1 != 0)
        .then(|| {
            let bytes: Vec<u8> = data[1..3].iter().flat_map(|w| w.to_le_bytes()).collect();
            let len = (bytes[0] as usize).min(15);
            bytes[1..1 + len].to_vec()
        });
    InternalError { suberror, suberror_name, data, insn_bytes }
}

impl Vm {
    /// Registers and the instruction bytes at CS:RIP of vCPU 0.
    pub fn registers(&self) -> Result<CpuSnapshot, Error> {
        let vcpu = &self.vcpus[0];
        let r = vcpu.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?;
        let s = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        let linear = s.cs.base.wrapping_add(r.rip);
        // With paging on, translate; identity mapping is the fallback when KVM cannot.
        let phys = if s.cr0 & (1 << 31) != 0 {
            vcpu.translate_gva(linear).ok().filter(|t| t.valid != 0).map_or(linear, |t| t.physical_address)
        } else {
            linear
        };
        let insn_bytes = protocol::insn_bytes_at(&self.memory, phys);
        Ok(CpuSnapshot {
            rip: r.rip,
            rsp: r.rsp,
            rflags: r.rflags,
            cs: s.cs.selector,
            cpl: s.cs.dpl,
            bits: code_bits(s.cr0, s.efer, s.cs.l, s.cs.db),
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
            gprs: [
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15,
            ],
            insn_bytes,
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_signature_keeps_the_one_instruction_at_the_fault() {
        let ldmxcsr = [0x0f, 0xae, 0x15, 0x0a, 0xe6, 0x03, 0x00, 0x48, 0xbb];
        assert_eq!(first_instruction(&ldmxcsr, 64), &ldmxcsr[..7]);
        assert_eq!(first_instruction(&[0xcc, 0x4c, 0x8d], 64), [0xcc]);
        let far_call = [0x9a, 0, 0, 0, 0, 0x38, 0, 0x90];
        assert_eq!(first_instruction(&far_call, 32), &far_call[..7]);
        assert_eq!(first_instruction(&far_call, 64), [0x9a], "invalid in 64-bit mode: its first byte");
        assert_eq!(first_instruction(&[0x37, 0x48], 64), [0x37]);
        assert_eq!(first_instruction(&[0x0f], 64), [0x0f], "a cut window keeps what it has");
        assert!(first_instruction(&[], 64).is_empty());
        assert_eq!(code_bits(0, 0, 0, 0), 16);
        assert_eq!(code_bits(1, 0, 0, 1), 32);
        assert_eq!(code_bits(1, 1 << 10, 1, 0), 64);
        assert_eq!(code_bits(1, 1 << 10, 0, 1), 32, "compatibility mode");
        assert_eq!(code_bits(1, 1 << 10, 0, 0), 16);
    }

    use super::*;

    #[test]
    fn a_signature_masks_where_an_operand_lies_not_what_the_instruction_is() {
        // LDMXCSR [rip+0x5b5f7]: the RIP-relative displacement moves with the build.
        assert_eq!(
            instruction_signature(&[0x0f, 0xae, 0x15, 0xf7, 0xb5, 0x05, 0x00, 0x48], 64),
            "0f ae 15 __ __ __ __"
        );
        // BOUND eax, [0xc594] in 32-bit code: an absolute address.
        assert_eq!(instruction_signature(&[0x62, 0x05, 0x94, 0xc5, 0x00, 0x00, 0xc7], 32), "62 05 __ __ __ __");
        // INT 0x30: the immediate is the vector, and stays.
        assert_eq!(instruction_signature(&[0xcd, 0x30, 0x90], 64), "cd 30");
        // JMP FAR 0x38:0: a pointer immediate, not a memory operand.
        assert_eq!(instruction_signature(&[0xea, 0, 0, 0, 0, 0x38, 0], 32), "ea 00 00 00 00 38 00");
        assert_eq!(instruction_signature(&[], 64), "");
    }

    #[test]
    fn emulation_failure_bytes_are_decoded() {
        let mut raw = [0u64; 16];
        raw[0] = 1;
        raw[1] = u64::from_le_bytes([3, 0x0f, 0x01, 0xd9, 0, 0, 0, 0]);
        let e = decode_internal(kvm_bindings::KVM_INTERNAL_ERROR_EMULATION, 4, &raw);
        assert_eq!(e.insn_bytes, Some(vec![0x0f, 0x01, 0xd9]));
        assert_eq!(e.data.len(), 4);
        assert_eq!(e.suberror_name, "emulation failure");
        let e = decode_internal(kvm_bindings::KVM_INTERNAL_ERROR_EMULATION, 40, &[0; 16]);
        assert_eq!(e.insn_bytes, None, "without the flag there are no bytes");
        assert_eq!(e.data.len(), 16, "ndata is clamped to the array");
    }

    #[test]
    fn run_end_descriptions_name_the_exit() {
        assert!(RunEnd::FailEntry { hardware_reason: 0x21, cpu: 1 }.describe().contains("0x21"));
        assert_eq!(RunEnd::Timeout { limit: Duration::from_secs(1) }.kind(), "timeout");
        assert_eq!(hex(&[0x0f, 0x0b]), "0f 0b");
    }
}
