//! Guest payloads: ELF parsing, bounds checks, and the test table.

use std::collections::HashSet;
use std::time::Duration;

use hvprobe_abi::{BootHeader, Mode, Path, TestDesc, layout};
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, Object, ObjectSection, elf};

/// Why a payload ELF was rejected. Every malformed input ends here, never in a panic.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("not a 64-bit little-endian ELF file: {0}")]
    NotElf(String),
    #[error("ELF machine is {0:#x}, expected x86-64 (0x3e)")]
    WrongMachine(u16),
    #[error("ELF type is {0}, expected a static executable (ET_EXEC)")]
    WrongType(u16),
    #[error(
        "segment {index} ({addr:#x}, {mem_size:#x} bytes) is outside the loadable regions {low:#x?} and {image:#x?}"
    )]
    SegmentOutOfRange { index: usize, addr: u64, mem_size: u64, low: (u64, u64), image: (u64, u64) },
    #[error("segment {index} has file size {file_size:#x} larger than its memory size {mem_size:#x}")]
    SegmentSizes { index: usize, file_size: u64, mem_size: u64 },
    #[error("segment {index}'s file data lies outside the file")]
    SegmentData { index: usize },
    #[error("segments {0} and {1} overlap")]
    SegmentOverlap(usize, usize),
    #[error("section {0} is missing")]
    MissingSection(&'static str),
    #[error("section {0} is malformed: {1}")]
    BadSection(&'static str, String),
    #[error("boot header ABI version {found}, this harness speaks {expected}")]
    AbiVersion { found: u32, expected: u32 },
    #[error("test descriptor {index}: {reason}")]
    BadTest { index: usize, reason: String },
    #[error("two test cases are named {0}")]
    DuplicateTest(String),
}

/// The areas test names may start with.
pub use hvprobe_abi::AREAS;
/// The area of benchmarks, which are not conformance cases.
pub const BENCH_AREA: &str = "bench";

/// How the host moves a guest while its case runs (the case's `migrate = ...`, decoded
/// from `hvprobe_abi::migrate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Migrate {
    /// At each checkpoint: save the VM, restore it into a fresh VM in this process, go on.
    Restore,
    /// At the first checkpoint: write the snapshot to a file and restore it in a new
    /// process, which runs the case to its end.
    CrossProcess,
    /// Pause the guest this many times at random (seeded) moments; save and restore each
    /// time.
    RandomPauses(u32),
    /// Live migration with dirty logging while the guest runs.
    Live,
}

impl Migrate {
    /// Decodes a descriptor's `migrate` word: None for 0, an error text for anything the
    /// ABI does not define.
    pub fn decode(word: u32) -> Result<Option<Migrate>, String> {
        use hvprobe_abi::migrate::{CROSS_PROCESS, LIVE, RANDOM_PAUSES, RESTORE};
        let (kind, n) = (word & 0xff, word >> 8);
        let plain =
            |m| if n == 0 { Ok(Some(m)) } else { Err(format!("migrate {word:#x}: only RandomPauses takes a count")) };
        match kind {
            0 if n == 0 => Ok(None),
            RESTORE => plain(Migrate::Restore),
            CROSS_PROCESS => plain(Migrate::CrossProcess),
            LIVE => plain(Migrate::Live),
            RANDOM_PAUSES if (1..=255).contains(&n) => Ok(Some(Migrate::RandomPauses(n))),
            _ => Err(format!("migrate {word:#x} is no kind the ABI defines")),
        }
    }
}

/// One test case as declared in the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestCase {
    pub name: String,
    pub area: String,
    pub mode: Mode,
    pub path: Path,
    /// Source file and line of the declaration.
    pub file: String,
    pub line: u32,
    /// The declared watchdog limit, if any.
    pub timeout: Option<Duration>,
    pub requires: u64,
    pub flags: u32,
    /// vCPUs to create (1 or more); the others idle as application processors.
    pub vcpus: u16,
    /// CPUID bits the host clears before the case boots (the guest's `cpuid_clear`).
    pub cpuid_clear: Vec<hvprobe_abi::CpuidClear>,
    /// How the host moves the guest while it runs (the guest's `migrate`).
    pub migrate: Option<Migrate>,
    /// KVM quirks the host disables before the vCPUs exist (the guest's `quirks_off`).
    pub quirks_off: u64,
    pub entry: u64,
    /// Guest address of the descriptor (passed to 64-bit cases in RDI).
    pub desc_addr: u64,
}

impl TestCase {
    pub fn expects_timeout(&self) -> bool {
        self.flags & hvprobe_abi::flags::EXPECT_TIMEOUT != 0
    }

    /// The run end other than a verdict that this case passes with, as
    /// [`crate::RunEnd::kind`] names it: a hostile guest the host must stop in that way.
    /// The watchdog's own cases ([`TestCase::expects_timeout`]) are judged apart.
    pub fn expected_end(&self) -> Option<&'static str> {
        use hvprobe_abi::flags::{EXPECT_PROTOCOL_ERROR, EXPECT_SHUTDOWN};
        if self.flags & EXPECT_SHUTDOWN != 0 {
            Some("shutdown")
        } else if self.flags & EXPECT_PROTOCOL_ERROR != 0 {
            Some("protocol_error")
        } else {
            None
        }
    }

    pub fn has_host_hook(&self) -> bool {
        self.flags & hvprobe_abi::flags::HOST_HOOK != 0
    }

    pub fn is_bench(&self) -> bool {
        self.flags & hvprobe_abi::flags::BENCH != 0
    }

    /// Names of the requirements in `requires`.
    pub fn requirement_names(&self) -> Vec<&'static str> {
        crate::requirements::names(self.requires)
    }
}

/// A loadable segment.
#[derive(Clone, Debug)]
pub struct Segment {
    pub addr: u64,
    pub data: Vec<u8>,
    pub mem_size: u64,
}

/// A parsed, validated payload: what to load where, the runtime's boot header, the tests.
#[derive(Clone, Debug)]
pub struct Payload {
    pub segments: Vec<Segment>,
    pub vector_stubs: u64,
    pub entry64: u64,
    /// The conformance cases, in name order.
    pub tests: Vec<TestCase>,
    /// The benchmarks (flag `BENCH`, area `bench`), in name order.
    pub benches: Vec<TestCase>,
    /// Guest RAM as every case starts it (the segments, GDT, IDT, TSS and page tables),
    /// built at the first boot and mapped copy-on-write by each VM.
    pub(crate) boot_image: std::sync::OnceLock<std::sync::Arc<crate::memory::Image>>,
}

const LOW: (u64, u64) = (layout::LOW_START, layout::LOW_END);
const IMAGE: (u64, u64) = (layout::IMAGE_START, layout::IMAGE_END);

fn inside(addr: u64, len: u64, region: (u64, u64)) -> bool {
    addr >= region.0 && addr.checked_add(len).is_some_and(|end| end <= region.1)
}

impl Payload {
    pub fn parse(bytes: &[u8]) -> Result<Payload, PayloadError> {
        let file = ElfFile64::<Endianness>::parse(bytes).map_err(|e| PayloadError::NotElf(e.to_string()))?;
        let endian = file.endian();
        let header = file.elf_header();
        if header.e_machine(endian) != elf::EM_X86_64 {
            return Err(PayloadError::WrongMachine(header.e_machine(endian)));
        }
        if header.e_type(endian) != elf::ET_EXEC {
            return Err(PayloadError::WrongType(header.e_type(endian)));
        }

        let mut segments = Vec::new();
        for (index, ph) in file.elf_program_headers().iter().enumerate() {
            if ph.p_type(endian) != elf::PT_LOAD {
                continue;
            }
            let addr = ph.p_paddr(endian);
            let mem_size = ph.p_memsz(endian);
            let file_size = ph.p_filesz(endian);
            if file_size > mem_size {
                return Err(PayloadError::SegmentSizes { index, file_size, mem_size });
            }
            if !inside(addr, mem_size, LOW) && !inside(addr, mem_size, IMAGE) {
                return Err(PayloadError::SegmentOutOfRange { index, addr, mem_size, low: LOW, image: IMAGE });
            }
            let data = ph.data(endian, bytes).map_err(|_| PayloadError::SegmentData { index })?;
            segments.push((index, Segment { addr, data: data.to_vec(), mem_size }));
        }
        for (i, (ia, a)) in segments.iter().enumerate() {
            for (ib, b) in &segments[i + 1..] {
                if a.addr < b.addr + b.mem_size && b.addr < a.addr + a.mem_size {
                    return Err(PayloadError::SegmentOverlap(*ia, *ib));
                }
            }
        }
        let segments: Vec<Segment> = segments.into_iter().map(|(_, s)| s).collect();
        let loaded = |addr: u64, len: u64| {
            segments.iter().any(|s| addr >= s.addr && addr.checked_add(len).is_some_and(|e| e <= s.addr + s.mem_size))
        };

        let boot_section =
            file.section_by_name(BootHeader::SECTION).ok_or(PayloadError::MissingSection(BootHeader::SECTION))?;
        let boot_bytes =
            boot_section.data().map_err(|e| PayloadError::BadSection(BootHeader::SECTION, e.to_string()))?;
        let boot = BootHeader::decode(boot_bytes)
            .ok_or_else(|| PayloadError::BadSection(BootHeader::SECTION, "no valid boot header".into()))?;
        if boot.abi_version != BootHeader::ABI_VERSION {
            return Err(PayloadError::AbiVersion { found: boot.abi_version, expected: BootHeader::ABI_VERSION });
        }
        if !loaded(boot.vector_stubs, 256 * BootHeader::VECTOR_STRIDE) || !loaded(boot.entry64, 1) {
            return Err(PayloadError::BadSection(BootHeader::SECTION, "entry points outside loaded segments".into()));
        }

        let tests_section =
            file.section_by_name(TestDesc::SECTION).ok_or(PayloadError::MissingSection(TestDesc::SECTION))?;
        let table = tests_section.data().map_err(|e| PayloadError::BadSection(TestDesc::SECTION, e.to_string()))?;
        if table.len() % TestDesc::SIZE != 0 {
            return Err(PayloadError::BadSection(
                TestDesc::SECTION,
                format!("size {} is not a multiple of the descriptor size {}", table.len(), TestDesc::SIZE),
            ));
        }
        let (mut tests, mut benches) = (Vec::new(), Vec::new());
        let mut names = HashSet::new();
        for (index, chunk) in table.chunks_exact(TestDesc::SIZE).enumerate() {
            let desc_addr = tests_section.address() + (index * TestDesc::SIZE) as u64;
            let test = decode_test(index, chunk, desc_addr, &loaded)?;
            if !names.insert(test.name.clone()) {
                return Err(PayloadError::DuplicateTest(test.name));
            }
            if test.is_bench() != (test.area == BENCH_AREA) {
                return Err(PayloadError::BadTest {
                    index,
                    reason: format!("{}: the BENCH flag and the area `{BENCH_AREA}` go together", test.name),
                });
            }
            if test.is_bench() { benches.push(test) } else { tests.push(test) }
        }
        tests.sort_by(|a, b| a.name.cmp(&b.name));
        benches.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Payload {
            segments,
            vector_stubs: boot.vector_stubs,
            entry64: boot.entry64,
            tests,
            benches,
            boot_image: std::sync::OnceLock::new(),
        })
    }

    pub fn test(&self, name: &str) -> Option<&TestCase> {
        self.tests.iter().find(|t| t.name == name)
    }

    pub fn bench(&self, name: &str) -> Option<&TestCase> {
        self.benches.iter().find(|t| t.name == name)
    }
}

fn decode_test(
    index: usize,
    chunk: &[u8],
    desc_addr: u64,
    loaded: &dyn Fn(u64, u64) -> bool,
) -> Result<TestCase, PayloadError> {
    let bad = |reason: String| PayloadError::BadTest { index, reason };
    let raw = TestDesc::decode(chunk).ok_or_else(|| bad("bad magic".into()))?;
    let name = std::str::from_utf8(raw.name).map_err(|_| bad("name is not UTF-8".into()))?.to_string();
    validate_name(&name).map_err(|r| bad(format!("name {name:?}: {r}")))?;
    let mode = Mode::from_u8(raw.mode).ok_or_else(|| bad(format!("{name}: unknown mode {}", raw.mode)))?;
    let path = Path::from_u8(raw.path).ok_or_else(|| bad(format!("{name}: unknown path {}", raw.path)))?;
    if !loaded(raw.entry, 1) || !loaded(desc_addr, TestDesc::SIZE as u64) {
        return Err(bad(format!("{name}: entry {:#x} or descriptor outside loaded segments", raw.entry)));
    }
    if matches!(mode, Mode::Real16 | Mode::Prot32) && !inside(raw.entry, 1, LOW) {
        return Err(bad(format!("{name}: a {} entry must lie in the low region", mode.name())));
    }
    let vcpus = raw.vcpus.max(1);
    if vcpus > layout::MAX_VCPUS {
        return Err(bad(format!("{name}: {vcpus} vCPUs, at most {} are supported", layout::MAX_VCPUS)));
    }
    if vcpus > 1 && raw.requires & hvprobe_abi::requires::IRQCHIP == 0 {
        return Err(bad(format!("{name}: application processors idle in HLT, which needs the in-kernel irqchip")));
    }
    if (raw.flags & hvprobe_abi::flags::EXPECT_ANY).count_ones() > 1 {
        return Err(bad(format!("{name}: flags {:#x} name more than one expected end", raw.flags)));
    }
    if let Some(edit) = raw.cpuid_clear.iter().find(|e| e.mask != 0 && e.reg > hvprobe_abi::CpuidClear::EDX) {
        return Err(bad(format!("{name}: cpuid_clear names register {} (0 to 3 are EAX to EDX)", edit.reg)));
    }
    let cpuid_clear = raw.cpuid_clear.iter().copied().filter(|e| e.mask != 0).collect();
    let migrate = Migrate::decode(raw.migrate).map_err(|r| bad(format!("{name}: {r}")))?;
    let area = name.split("::").next().unwrap_or_default().to_string();
    Ok(TestCase {
        cpuid_clear,
        migrate,
        quirks_off: raw.quirks_off,
        file: String::from_utf8_lossy(raw.file).into_owned(),
        line: raw.line,
        timeout: (raw.timeout_ms != 0).then(|| Duration::from_millis(raw.timeout_ms.into())),
        requires: raw.requires,
        flags: raw.flags,
        vcpus,
        entry: raw.entry,
        desc_addr,
        name,
        area,
        mode,
        path,
    })
}

/// `area::case` or `area::case::variant`, lower-case identifiers, a known area.
fn validate_name(name: &str) -> Result<(), String> {
    let parts: Vec<&str> = name.split("::").collect();
    if !(2..=3).contains(&parts.len()) {
        return Err("must be area::case or area::case::variant".into());
    }
    if !AREAS.contains(&parts[0]) && parts[0] != BENCH_AREA {
        return Err(format!("unknown area {:?} (areas: {})", parts[0], AREAS.join(", ")));
    }
    let ident = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !parts.iter().all(|p| ident(p)) {
        return Err("components must be non-empty [a-z0-9_]".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrate_words_decode_to_the_kinds_the_abi_defines() {
        use hvprobe_abi::migrate::{CROSS_PROCESS, LIVE, RESTORE, random_pauses};
        assert_eq!(Migrate::decode(0), Ok(None));
        assert_eq!(Migrate::decode(RESTORE), Ok(Some(Migrate::Restore)));
        assert_eq!(Migrate::decode(CROSS_PROCESS), Ok(Some(Migrate::CrossProcess)));
        assert_eq!(Migrate::decode(LIVE), Ok(Some(Migrate::Live)));
        assert_eq!(Migrate::decode(random_pauses(3)), Ok(Some(Migrate::RandomPauses(3))));
        for bad in [5, random_pauses(0), RESTORE | 1 << 8, 1 << 8, u32::MAX] {
            assert!(Migrate::decode(bad).is_err(), "{bad:#x} decoded");
        }
    }

    #[test]
    fn names_follow_the_contract() {
        assert!(validate_name("cpu::cpuid_leaf1::long64").is_ok());
        assert!(validate_name("irq::timer").is_ok());
        assert!(validate_name("bench::cpuid::long64").is_ok());
        assert!(validate_name("gpu::x").is_err());
        assert!(validate_name("cpu").is_err());
        assert!(validate_name("cpu::A").is_err());
        assert!(validate_name("cpu::a::b::c").is_err());
        assert!(validate_name("cpu::::b").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(Payload::parse(b""), Err(PayloadError::NotElf(_))));
        assert!(matches!(Payload::parse(b"\x7fELF\x02\x01\x01garbage"), Err(PayloadError::NotElf(_))));
        let mut noise = vec![0u8; 4096];
        noise[..4].copy_from_slice(b"\x7fELF");
        assert!(Payload::parse(&noise).is_err());
    }
}
