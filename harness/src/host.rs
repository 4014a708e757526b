//! The host: opening /dev/kvm, and the facts a result must carry about where it ran.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_cpuid_entry2};

use crate::Error;

pub const DEFAULT_KVM_PATH: &str = "/dev/kvm";
/// Environment variable that names another KVM device (or a missing one, to see how
/// hvprobe behaves without KVM).
pub const KVM_PATH_ENV: &str = "HVPROBE_KVM";

/// The device `Kvm::open` uses: $HVPROBE_KVM, else /dev/kvm.
pub fn kvm_path() -> PathBuf {
    std::env::var_os(KVM_PATH_ENV).map_or_else(|| PathBuf::from(DEFAULT_KVM_PATH), PathBuf::from)
}

/// An open /dev/kvm and what it supports. Shared by every VM a process boots.
pub struct Kvm {
    pub(crate) kvm: kvm_ioctls::Kvm,
    pub(crate) supported_cpuid: Vec<kvm_cpuid_entry2>,
    pub(crate) vcpu_mmap_size: usize,
    pub(crate) msr_index_list: Vec<u32>,
    pub(crate) state_caps: crate::state::StateCaps,
}

impl Kvm {
    /// Opens [`kvm_path`].
    pub fn open() -> Result<Kvm, Error> {
        Self::open_path(&kvm_path())
    }

    pub fn open_path(path: &Path) -> Result<Kvm, Error> {
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::OpenKvm { path: path.into(), source: std::io::ErrorKind::InvalidInput.into() })?;
        let kvm = kvm_ioctls::Kvm::new_with_path(&c_path).map_err(|e| Error::OpenKvm {
            path: PathBuf::from(path),
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(Error::KvmApiVersion(version));
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?
            .as_slice()
            .to_vec();
        let vcpu_mmap_size = kvm.get_vcpu_mmap_size().map_err(Error::kvm("KVM_GET_VCPU_MMAP_SIZE"))?;
        let msr_index_list = crate::state::msr_index_list(&kvm)?;
        let mut k = Kvm { kvm, supported_cpuid, vcpu_mmap_size, msr_index_list, state_caps: Default::default() };
        k.state_caps = crate::state::StateCaps::of(&k);
        Ok(k)
    }

    /// The entry KVM_GET_SUPPORTED_CPUID reports for (leaf, subleaf).
    pub fn supported_cpuid(&self, leaf: u32, subleaf: u32) -> Option<kvm_cpuid_entry2> {
        find_cpuid(&self.supported_cpuid, leaf, subleaf)
    }

    /// Whether this host can give a test case the requirement `bit` (hvprobe_abi::requires):
    /// its row's check in `harness::requirements`.
    pub fn has_requirement(&self, bit: u64) -> bool {
        crate::requirements::requirement(bit).is_some_and(|r| (r.present)(self))
    }

    /// The largest dirty ring KVM offers, in bytes (0: none).
    pub fn dirty_ring_max(&self) -> u32 {
        self.kvm.check_extension_int(kvm_ioctls::Cap::DirtyLogRing).max(0) as u32
    }

    /// The names of the requirements in `mask` this host lacks.
    pub fn missing_requirements(&self, mask: u64) -> Vec<&'static str> {
        crate::requirements::REQUIREMENTS
            .iter()
            .filter(|r| mask & r.bit != 0 && !(r.present)(self))
            .map(|r| r.name)
            .collect()
    }
}

pub(crate) fn find_cpuid(entries: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> Option<kvm_cpuid_entry2> {
    const SIGNIFICANT_INDEX: u32 = 1;
    entries.iter().find(|e| e.function == leaf && (e.flags & SIGNIFICANT_INDEX == 0 || e.index == subleaf)).copied()
}

/// Which KVM backend serves /dev/kvm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    KvmIntel,
    KvmAmd,
    KvmPvm,
    Unknown,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::KvmIntel => "kvm_intel",
            Backend::KvmAmd => "kvm_amd",
            Backend::KvmPvm => "kvm_pvm",
            Backend::Unknown => "unknown",
        }
    }

    /// The backend from the loaded vendor modules (/sys/module/NAME). With none, or more
    /// than one, it is `Unknown`: which one owns /dev/kvm cannot be told from here.
    pub fn detect_in(sys_module: &Path) -> Backend {
        let loaded: Vec<Backend> = [Backend::KvmIntel, Backend::KvmAmd, Backend::KvmPvm]
            .into_iter()
            .filter(|b| sys_module.join(b.name()).exists())
            .collect();
        match loaded.as_slice() {
            [one] => *one,
            _ => Backend::Unknown,
        }
    }
}

/// Capabilities a result records (KVM API section 4.4, KVM_CHECK_EXTENSION).
const CAPS: &[(&str, u32)] = &[
    ("KVM_CAP_IRQCHIP", kvm_bindings::KVM_CAP_IRQCHIP),
    ("KVM_CAP_HLT", kvm_bindings::KVM_CAP_HLT),
    ("KVM_CAP_USER_MEMORY", kvm_bindings::KVM_CAP_USER_MEMORY),
    ("KVM_CAP_SET_TSS_ADDR", kvm_bindings::KVM_CAP_SET_TSS_ADDR),
    ("KVM_CAP_EXT_CPUID", kvm_bindings::KVM_CAP_EXT_CPUID),
    ("KVM_CAP_NR_VCPUS", kvm_bindings::KVM_CAP_NR_VCPUS),
    ("KVM_CAP_MAX_VCPUS", kvm_bindings::KVM_CAP_MAX_VCPUS),
    ("KVM_CAP_NR_MEMSLOTS", kvm_bindings::KVM_CAP_NR_MEMSLOTS),
    ("KVM_CAP_MP_STATE", kvm_bindings::KVM_CAP_MP_STATE),
    ("KVM_CAP_PIT2", kvm_bindings::KVM_CAP_PIT2),
    ("KVM_CAP_IOEVENTFD", kvm_bindings::KVM_CAP_IOEVENTFD),
    ("KVM_CAP_IRQFD", kvm_bindings::KVM_CAP_IRQFD),
    ("KVM_CAP_SPLIT_IRQCHIP", kvm_bindings::KVM_CAP_SPLIT_IRQCHIP),
    ("KVM_CAP_X2APIC_API", kvm_bindings::KVM_CAP_X2APIC_API),
    ("KVM_CAP_TSC_CONTROL", kvm_bindings::KVM_CAP_TSC_CONTROL),
    ("KVM_CAP_GET_TSC_KHZ", kvm_bindings::KVM_CAP_GET_TSC_KHZ),
    ("KVM_CAP_KVMCLOCK_CTRL", kvm_bindings::KVM_CAP_KVMCLOCK_CTRL),
    ("KVM_CAP_ADJUST_CLOCK", kvm_bindings::KVM_CAP_ADJUST_CLOCK),
    ("KVM_CAP_XSAVE", kvm_bindings::KVM_CAP_XSAVE),
    ("KVM_CAP_XCRS", kvm_bindings::KVM_CAP_XCRS),
    ("KVM_CAP_DEBUGREGS", kvm_bindings::KVM_CAP_DEBUGREGS),
    ("KVM_CAP_VCPU_EVENTS", kvm_bindings::KVM_CAP_VCPU_EVENTS),
    ("KVM_CAP_IMMEDIATE_EXIT", kvm_bindings::KVM_CAP_IMMEDIATE_EXIT),
    ("KVM_CAP_SYNC_REGS", kvm_bindings::KVM_CAP_SYNC_REGS),
    ("KVM_CAP_X86_USER_SPACE_MSR", kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR),
    ("KVM_CAP_EXIT_HYPERCALL", kvm_bindings::KVM_CAP_EXIT_HYPERCALL),
    ("KVM_CAP_EXIT_ON_EMULATION_FAILURE", kvm_bindings::KVM_CAP_EXIT_ON_EMULATION_FAILURE),
    ("KVM_CAP_BINARY_STATS_FD", kvm_bindings::KVM_CAP_BINARY_STATS_FD),
    ("KVM_CAP_DIRTY_LOG_RING", kvm_bindings::KVM_CAP_DIRTY_LOG_RING),
    ("KVM_CAP_NESTED_STATE", kvm_bindings::KVM_CAP_NESTED_STATE),
    ("KVM_CAP_PMU_CAPABILITY", kvm_bindings::KVM_CAP_PMU_CAPABILITY),
    ("KVM_CAP_X86_SMM", kvm_bindings::KVM_CAP_X86_SMM),
    ("KVM_CAP_VCPU_ATTRIBUTES", kvm_bindings::KVM_CAP_VCPU_ATTRIBUTES),
];

/// Where a result was produced.
#[derive(Clone, Debug)]
pub struct HostFacts {
    pub hostname: String,
    pub kernel: String,
    pub cpu_vendor: String,
    pub cpu_model: String,
    /// CPUID.1:EAX of the CPU this process runs on: family, model and stepping. Machines
    /// sold under one model name (e.g. "AMD EPYC") differ here (Zen 4 0xa00f11, Zen 5
    /// 0xb00f21), and so can their behaviour.
    pub cpu_signature: u32,
    pub backend: Backend,
    /// What the host kernel itself runs on; see [`Platform`].
    pub platform: Platform,
    /// The backend module's parameters (/sys/module/BACKEND/parameters), e.g. kvm_amd's
    /// `nested` and `npt`.
    pub backend_params: BTreeMap<String, String>,
    /// What the platform's CPU lacks that changes how the backend works, e.g. an emulated
    /// SVM without NRIPS, which sends more exits through KVM's instruction emulator.
    pub platform_notes: Vec<String>,
    /// None when /dev/kvm could not be opened (with `kvm_error` saying why).
    pub kvm_api_version: Option<i32>,
    pub kvm_error: Option<String>,
    pub capabilities: BTreeMap<String, i32>,
    pub tsc_khz: Option<u32>,
    /// KVM_GET_SUPPORTED_CPUID, empty without KVM.
    pub supported_cpuid: Vec<kvm_cpuid_entry2>,
}

/// What the host kernel runs on, from the CPU it runs on: CPUID.1:ECX[31] says whether a
/// hypervisor is present and leaf 0x40000000 names it. The same backend on two platforms
/// can differ (kvm_amd on an EPYC is not kvm_amd on QEMU's emulated CPU), so results name
/// both and expectation profiles are chosen by both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `bare-metal`, `qemu-tcg`, `kvm`, `hyper-v`, `vmware`, `xen` or `hypervisor` (one this
    /// table does not know; `signature` says which).
    pub name: String,
    /// The 12-byte signature of leaf 0x40000000, when a hypervisor is present.
    pub signature: Option<String>,
    /// What an emulating platform itself runs on, where it was told (qemu-tcg under
    /// `make run-nested`): its results can follow the outer machine.
    pub runs_on: Option<RunsOn>,
}

/// The machine under an emulating platform and the emulator's version, as the nested
/// runner hands them in (`HVPROBE_PLATFORM_RUNS_ON="vendor|model|version"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunsOn {
    /// CPUID vendor string of the outer machine's CPU ("GenuineIntel", "AuthenticAMD").
    pub cpu_vendor: String,
    pub cpu_model: String,
    /// The emulator's own version line.
    pub emulator: String,
}

/// The environment variable the nested runner sets for [`RunsOn`].
pub const RUNS_ON_ENV: &str = "HVPROBE_PLATFORM_RUNS_ON";

impl RunsOn {
    /// Parses "vendor|model|version"; None when a part is missing or empty.
    pub fn parse(text: &str) -> Option<RunsOn> {
        let mut parts = text.trim().splitn(3, '|').map(str::trim);
        let (vendor, model, emulator) = (parts.next()?, parts.next()?, parts.next()?);
        [vendor, model, emulator].iter().all(|p| !p.is_empty()).then(|| RunsOn {
            cpu_vendor: vendor.into(),
            cpu_model: model.into(),
            emulator: emulator.into(),
        })
    }

    /// The line results keep among the platform notes.
    pub fn note(&self) -> String {
        format!("runs on {} ({}), {}", self.cpu_model, self.cpu_vendor, self.emulator)
    }
}

impl Platform {
    /// The platform of this CPU, and, for an emulator, what it runs on where the
    /// environment says ([`RUNS_ON_ENV`]).
    pub fn detect() -> Platform {
        let leaf1 = std::arch::x86_64::__cpuid(1);
        if leaf1.ecx & (1 << 31) == 0 {
            return Platform::from_signature(None);
        }
        let l = std::arch::x86_64::__cpuid(0x4000_0000);
        let bytes: Vec<u8> = [l.ebx, l.ecx, l.edx].iter().flat_map(|r| r.to_le_bytes()).collect();
        let mut p = Platform::from_signature(Some(String::from_utf8_lossy(&bytes).trim_end_matches('\0').to_string()));
        if p.name == "qemu-tcg" {
            p.runs_on = std::env::var(RUNS_ON_ENV).ok().and_then(|v| RunsOn::parse(&v));
        }
        p
    }

    /// The platform a hypervisor signature names (None: no hypervisor present).
    pub fn from_signature(signature: Option<String>) -> Platform {
        let name = match signature.as_deref() {
            None => "bare-metal",
            Some("TCGTCGTCGTCG") => "qemu-tcg",
            Some("KVMKVMKVM") => "kvm",
            Some("Microsoft Hv") => "hyper-v",
            Some("VMwareVMware") => "vmware",
            Some("XenVMMXenVMM") => "xen",
            Some(_) => "hypervisor",
        };
        Platform { name: name.into(), signature, runs_on: None }
    }
}

/// This CPU's vendor string (CPUID leaf 0: EBX, EDX, ECX), "AuthenticAMD" or
/// "GenuineIntel": what results record and what profile entries are scoped by.
pub fn cpu_vendor() -> String {
    let r = std::arch::x86_64::__cpuid(0);
    [r.ebx, r.edx, r.ecx].iter().flat_map(|w| w.to_le_bytes()).map(char::from).collect()
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

fn cpuinfo_field(cpuinfo: &str, key: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

impl HostFacts {
    /// Gathers the facts; `kvm` is None when /dev/kvm is unusable (the error says why).
    pub fn gather(kvm: Result<&Kvm, &Error>) -> HostFacts {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let mut facts = HostFacts {
            hostname: read_trimmed("/proc/sys/kernel/hostname"),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            cpu_vendor: cpu_vendor(),
            cpu_model: cpuinfo_field(&cpuinfo, "model name"),
            cpu_signature: std::arch::x86_64::__cpuid(1).eax,
            backend: Backend::detect_in(Path::new("/sys/module")),
            platform: Platform::detect(),
            backend_params: BTreeMap::new(),
            platform_notes: svm_notes(),
            kvm_api_version: None,
            kvm_error: None,
            capabilities: BTreeMap::new(),
            tsc_khz: None,
            supported_cpuid: Vec::new(),
        };
        if let Some(on) = &facts.platform.runs_on {
            facts.platform_notes.push(on.note());
        }
        facts.backend_params = module_params(&Path::new("/sys/module").join(facts.backend.name()).join("parameters"));
        match kvm {
            Ok(kvm) => {
                facts.kvm_api_version = Some(kvm.kvm.get_api_version());
                facts.supported_cpuid = kvm.supported_cpuid.clone();
                for (name, cap) in CAPS {
                    facts.capabilities.insert((*name).into(), kvm.kvm.check_extension_raw((*cap).into()));
                }
                facts.tsc_khz =
                    kvm.kvm.create_vm().and_then(|vm| vm.create_vcpu(0)).and_then(|vcpu| vcpu.get_tsc_khz()).ok();
            }
            Err(e) => facts.kvm_error = Some(e.to_string()),
        }
        facts
    }
}

/// The parameters of a loaded module: file name to its trimmed contents.
fn module_params(dir: &Path) -> BTreeMap<String, String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return BTreeMap::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let value = std::fs::read_to_string(e.path()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), value.trim().to_string()))
        })
        .collect()
}

/// The SVM features (CPUID 0x8000000a EDX) whose absence sends work to KVM's
/// instruction emulator, named when the CPU offers SVM without them.
fn svm_notes() -> Vec<String> {
    let ext = std::arch::x86_64::__cpuid(0x8000_0000).eax;
    let svm = ext >= 0x8000_000a && std::arch::x86_64::__cpuid(0x8000_0001).ecx & (1 << 2) != 0;
    if !svm {
        return Vec::new();
    }
    let edx = std::arch::x86_64::__cpuid(0x8000_000a).edx;
    [(3, "NRIPS (next RIP on #VMEXIT)"), (7, "DecodeAssists"), (0, "nested paging (NPT)")]
        .into_iter()
        .filter(|(bit, _)| edx & (1 << bit) == 0)
        .map(|(_, what)| format!("the CPU's SVM lacks {what}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_are_named_by_their_signature() {
        assert_eq!(Platform::from_signature(None).name, "bare-metal");
        assert_eq!(Platform::from_signature(Some("TCGTCGTCGTCG".into())).name, "qemu-tcg");
        assert_eq!(Platform::from_signature(Some("KVMKVMKVM".into())).name, "kvm");
        let on = RunsOn::parse("GenuineIntel|Intel(R) Xeon(R) Processor|QEMU emulator version 7.2.22\n").unwrap();
        assert_eq!((on.cpu_vendor.as_str(), on.emulator.as_str()), ("GenuineIntel", "QEMU emulator version 7.2.22"));
        assert_eq!(on.note(), "runs on Intel(R) Xeon(R) Processor (GenuineIntel), QEMU emulator version 7.2.22");
        assert!(RunsOn::parse("GenuineIntel||QEMU").is_none(), "a part is empty");
        assert!(RunsOn::parse("GenuineIntel").is_none(), "parts missing");
        let other = Platform::from_signature(Some("bhyve bhyve ".into()));
        assert_eq!((other.name.as_str(), other.signature.as_deref()), ("hypervisor", Some("bhyve bhyve ")));
    }

    #[test]
    fn module_parameters_are_read_as_text() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("nested"), "1\n").unwrap();
        std::fs::write(tmp.path().join("npt"), "Y\n").unwrap();
        let p = module_params(tmp.path());
        assert_eq!(p.get("nested").map(String::as_str), Some("1"));
        assert_eq!(p.len(), 2);
        assert!(module_params(&tmp.path().join("absent")).is_empty());
    }

    #[test]
    fn backend_is_the_one_loaded_vendor_module() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("kvm")).unwrap();
        assert_eq!(Backend::detect_in(dir), Backend::Unknown);
        std::fs::create_dir_all(dir.join("kvm_pvm")).unwrap();
        assert_eq!(Backend::detect_in(dir), Backend::KvmPvm);
        std::fs::create_dir_all(dir.join("kvm_intel")).unwrap();
        assert_eq!(Backend::detect_in(dir), Backend::Unknown, "two vendor modules: ambiguous");
    }

    #[test]
    fn cpuinfo_fields_are_found() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n";
        assert_eq!(cpuinfo_field(text, "vendor_id"), "AuthenticAMD");
        assert_eq!(cpuinfo_field(text, "model name"), "AMD EPYC");
        assert_eq!(cpuinfo_field(text, "flags"), "unknown");
    }
}
