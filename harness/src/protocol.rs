//! Decoding the guest's protocol messages. Every address and length is the guest's word
//! and is checked against guest RAM and [`proto::MAX_STR`] before use.

use std::mem::{offset_of, size_of};

use hvprobe_abi::proto::{self, Log, Service, Verdict};
use hvprobe_abi::{read_u32, read_u64};

use crate::GuestMemory;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VerdictStatus {
    Pass,
    Fail,
    Skip,
}

/// What the guest concluded about itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestVerdict {
    pub status: VerdictStatus,
    pub message: String,
    pub file: String,
    pub line: u32,
    /// (expected, actual) when the check compared two integers.
    pub values: Option<(u64, u64)>,
    /// Where an unexpected exception was raised, and the bytes there.
    pub fault: Option<(u64, Vec<u8>)>,
}

/// A named measurement the guest took.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Metric {
    pub name: String,
    pub unit: String,
    pub value: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Log(String),
    Verdict(GuestVerdict),
    Metric(Metric),
    Service { id: u32, args: [u64; 4], addr: u64 },
}

fn read_struct(mem: &GuestMemory, addr: u64, size: usize) -> Result<Vec<u8>, String> {
    mem.read_vec(addr, size as u64).map_err(|e| format!("message at {addr:#x}: {e}"))
}

fn read_string(mem: &GuestMemory, bytes: &[u8], offset: usize, what: &str) -> Result<String, String> {
    let s = proto::read_str(bytes, offset).ok_or_else(|| format!("{what}: truncated"))?;
    if s.len > proto::MAX_STR {
        return Err(format!("{what}: length {} exceeds {}", s.len, proto::MAX_STR));
    }
    let data = mem.read_vec(s.addr, s.len).map_err(|e| format!("{what}: {e}"))?;
    Ok(String::from_utf8_lossy(&data).into_owned())
}

/// Decodes the message at guest-physical `addr`, or says precisely what is wrong with it.
pub fn decode(mem: &GuestMemory, addr: u64) -> Result<Message, String> {
    let header = read_struct(mem, addr, size_of::<proto::Header>())?;
    let magic = read_u32(&header, 0).unwrap_or(0);
    if magic != proto::MAGIC {
        return Err(format!("message at {addr:#x} has magic {magic:#010x}, expected {:#010x}", proto::MAGIC));
    }
    let kind = read_u32(&header, 4).unwrap_or(0);
    match kind {
        proto::KIND_LOG => {
            let b = read_struct(mem, addr, size_of::<Log>())?;
            Ok(Message::Log(read_string(mem, &b, offset_of!(Log, text), "log text")?))
        }
        proto::KIND_VERDICT => {
            let b = read_struct(mem, addr, size_of::<Verdict>())?;
            let field = |o| read_u32(&b, o).unwrap_or(0);
            let status = match field(offset_of!(Verdict, status)) {
                proto::STATUS_PASS => VerdictStatus::Pass,
                proto::STATUS_FAIL => VerdictStatus::Fail,
                proto::STATUS_SKIP => VerdictStatus::Skip,
                other => return Err(format!("verdict status {other} is not pass, fail or skip")),
            };
            let flags = field(offset_of!(Verdict, flags));
            let has_values = flags & proto::VERDICT_HAS_VALUES != 0;
            let value = |o| read_u64(&b, o).unwrap_or(0);
            let fault = (flags & proto::VERDICT_HAS_FAULT_RIP != 0).then(|| {
                let rip = value(offset_of!(Verdict, fault_rip));
                (rip, insn_bytes_at(mem, rip))
            });
            Ok(Message::Verdict(GuestVerdict {
                status,
                message: read_string(mem, &b, offset_of!(Verdict, message), "verdict message")?,
                file: read_string(mem, &b, offset_of!(Verdict, file), "verdict file")?,
                line: field(offset_of!(Verdict, line)),
                values: has_values.then(|| (value(offset_of!(Verdict, expected)), value(offset_of!(Verdict, actual)))),
                fault,
            }))
        }
        proto::KIND_METRIC => {
            let b = read_struct(mem, addr, size_of::<proto::Metric>())?;
            Ok(Message::Metric(Metric {
                name: read_string(mem, &b, offset_of!(proto::Metric, name), "metric name")?,
                unit: read_string(mem, &b, offset_of!(proto::Metric, unit), "metric unit")?,
                value: read_u64(&b, offset_of!(proto::Metric, value)).unwrap_or(0),
            }))
        }
        proto::KIND_SERVICE => {
            let b = read_struct(mem, addr, size_of::<Service>())?;
            let mut args = [0; 4];
            for (i, a) in args.iter_mut().enumerate() {
                *a = read_u64(&b, offset_of!(Service, args) + 8 * i).unwrap_or(0);
            }
            Ok(Message::Service { id: read_u32(&b, offset_of!(Service, service)).unwrap_or(0), args, addr })
        }
        other => Err(format!("message at {addr:#x} has unknown kind {other}")),
    }
}

/// Up to 15 bytes (the longest x86 instruction) at guest-physical `addr`, fewer where RAM
/// ends.
pub fn insn_bytes_at(mem: &GuestMemory, addr: u64) -> Vec<u8> {
    let len = mem.size().saturating_sub(addr).min(15);
    mem.read_vec(addr, len).unwrap_or_default()
}

/// Writes a service's status and result back into the guest's request.
pub fn complete_service(mem: &GuestMemory, addr: u64, status: u32, result: u64) -> Result<(), String> {
    mem.write_u32(addr + Service::STATUS_OFFSET as u64, status)
        .and_then(|()| mem.write_u64(addr + Service::RESULT_OFFSET as u64, result))
        .map_err(|e| format!("service reply: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem_with(addr: u64, bytes: &[u8]) -> GuestMemory {
        let m = GuestMemory::new(0x10000).unwrap();
        m.write(addr, bytes).unwrap();
        m
    }

    #[test]
    fn decodes_a_failing_verdict_with_values() {
        let m = mem_with(0x200, b"cpu.rsmismatch");
        let mut v = Vec::new();
        v.extend(proto::MAGIC.to_le_bytes());
        v.extend(proto::KIND_VERDICT.to_le_bytes());
        v.extend(proto::STATUS_FAIL.to_le_bytes());
        v.extend(42u32.to_le_bytes());
        v.extend(0x200u64.to_le_bytes());
        v.extend(6u64.to_le_bytes());
        v.extend(0x206u64.to_le_bytes());
        v.extend(8u64.to_le_bytes());
        v.extend(proto::VERDICT_HAS_VALUES.to_le_bytes());
        v.extend(0u32.to_le_bytes());
        v.extend(7u64.to_le_bytes());
        v.extend(9u64.to_le_bytes());
        v.extend(0u64.to_le_bytes());
        m.write(0x100, &v).unwrap();
        let msg = decode(&m, 0x100).unwrap();
        assert_eq!(
            msg,
            Message::Verdict(GuestVerdict {
                status: VerdictStatus::Fail,
                message: "mismatch".into(),
                file: "cpu.rs".into(),
                line: 42,
                values: Some((7, 9)),
                fault: None,
            })
        );
    }

    #[test]
    fn rejects_bad_magic_kind_and_wild_strings() {
        let m = GuestMemory::new(0x1000).unwrap();
        assert!(decode(&m, 0).unwrap_err().contains("magic"));
        assert!(decode(&m, 0xfffc).unwrap_err().contains("outside guest RAM"));
        let mut v = Vec::new();
        v.extend(proto::MAGIC.to_le_bytes());
        v.extend(99u32.to_le_bytes());
        m.write(0, &v).unwrap();
        assert!(decode(&m, 0).unwrap_err().contains("unknown kind"));
        let mut v = Vec::new();
        v.extend(proto::MAGIC.to_le_bytes());
        v.extend(proto::KIND_LOG.to_le_bytes());
        v.extend(0u64.to_le_bytes());
        v.extend(u64::MAX.to_le_bytes());
        m.write(0, &v).unwrap();
        assert!(decode(&m, 0).unwrap_err().contains("exceeds"));
    }
}
