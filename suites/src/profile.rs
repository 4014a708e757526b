//! Expectation profiles: one TOML file per backend and platform
//! (suites/expectations/BACKEND.toml for the backend on real silicon,
//! BACKEND.PLATFORM.toml where the platform changes what the backend does, e.g.
//! kvm_amd.qemu-tcg.toml) listing the hypervisor's known deviations. Each entry names a
//! test, the failure signature it must match, the manual or API section the hypervisor
//! deviates from, and who deviates where that is not the backend itself.

use std::path::Path;

use serde::Deserialize;

use hvprobe_harness::host::Platform;
use hvprobe_harness::{Backend, Payload};
use hvprobe_results::signature::has_live_number;
use hvprobe_results::{END_KINDS, Failure};

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("profile {path} is malformed: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("profile {path}: {reason}")]
    Invalid { path: String, reason: String },
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Deviation {
    pub test: String,
    /// How the run must end (RunEnd::kind).
    pub end: String,
    /// Hex bytes the instruction bytes must start with, e.g. "0f 0b".
    pub insn_bytes: Option<String>,
    /// Text the guest's failure message must contain. It may hold no live number (see
    /// `hvprobe_results::signature`): a profile names what defines a deviation.
    pub message: Option<String>,
    /// The values the failed check compared, where they define the deviation (a vector,
    /// an error code): each must match exactly.
    pub expected: Option<u64>,
    pub actual: Option<u64>,
    /// The CPU families (CPUID display family, e.g. 0x19 for Zen 4, 0x1a for Zen 5) on
    /// which the deviation occurs; absent: on every one.
    pub cpu_family: Option<Vec<u32>>,
    /// The host CPU vendors (CPUID leaf 0's vendor string, as `HostFacts::cpu_vendor`
    /// holds it: "AuthenticAMD", "GenuineIntel") on which the deviation occurs; absent: on
    /// every one. For a backend whose behaviour follows the host CPU (PVM runs guest CPL3
    /// code on it natively), the same case can deviate on one vendor's hosts only.
    pub cpu_vendor: Option<Vec<String>>,
    /// Who deviates, where that is not the backend itself: `kvm` (KVM's common code, on
    /// every backend), `qemu-tcg` (the emulated CPU under the backend), `host-cpu`, or
    /// `unknown` while that is not settled.
    pub who: Option<String>,
    /// What the other backend does with the same case, in one line.
    pub elsewhere: Option<String>,
    /// The manual or API section the hypervisor deviates from, in one line.
    pub deviates_from: String,
}

/// The values `who` may take.
pub const WHO: [&str; 4] = ["kvm", "qemu-tcg", "host-cpu", "unknown"];

impl Deviation {
    pub fn matches(&self, f: &Failure) -> bool {
        self.expected.is_none_or(|v| f.expected == Some(v))
            && self.actual.is_none_or(|v| f.actual == Some(v))
            && self.end == f.end
            && self
                .insn_bytes
                .as_ref()
                .is_none_or(|want| f.insn_bytes.as_ref().is_some_and(|got| got.starts_with(want.as_str())))
            && self
                .message
                .as_ref()
                .is_none_or(|want| f.message.as_ref().is_some_and(|got| got.contains(want.as_str())))
    }

    pub fn signature(&self) -> String {
        let mut s = format!("end={}", self.end);
        if let Some(b) = &self.insn_bytes {
            s += &format!(" insn_bytes={b:?}");
        }
        if let Some(m) = &self.message {
            s += &format!(" message~{m:?}");
        }
        if let Some(v) = self.expected {
            s += &format!(" expected={v:#x}");
        }
        if let Some(v) = self.actual {
            s += &format!(" actual={v:#x}");
        }
        s
    }

    /// Whether the deviation is expected on `host`'s CPU (its vendor and display family).
    pub fn applies_to(&self, host: &ProfileHost) -> bool {
        self.cpu_family.as_ref().is_none_or(|f| f.contains(&host.cpu_family))
            && self.cpu_vendor.as_ref().is_none_or(|v| v.contains(&host.cpu_vendor))
    }
}

/// The facts that choose a profile and its entries: backend, platform, CPU family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileHost {
    pub backend: Backend,
    pub platform: String,
    /// CPUID display family of the host CPU.
    pub cpu_family: u32,
    /// CPUID vendor string of the host CPU.
    pub cpu_vendor: String,
}

impl ProfileHost {
    /// The host the facts describe (what `hvprobe run` has gathered anyway).
    pub fn of(facts: &hvprobe_harness::HostFacts) -> ProfileHost {
        ProfileHost {
            backend: facts.backend,
            platform: facts.platform.name.clone(),
            cpu_family: display_family(facts.cpu_signature),
            cpu_vendor: facts.cpu_vendor.clone(),
        }
    }

    /// This machine, without gathering the other host facts (the cargo test runner).
    pub fn detect() -> ProfileHost {
        ProfileHost {
            backend: Backend::detect_in(Path::new("/sys/module")),
            platform: Platform::detect().name,
            cpu_family: display_family(std::arch::x86_64::__cpuid(1).eax),
            cpu_vendor: hvprobe_harness::host::cpu_vendor(),
        }
    }
}

/// The vendor strings a profile entry may name.
pub const VENDORS: [&str; 3] = ["AuthenticAMD", "GenuineIntel", "HygonGenuine"];

/// The display family of a CPUID.1:EAX signature (base family, plus the extended family
/// when the base is 0xf).
pub fn display_family(eax: u32) -> u32 {
    let base = (eax >> 8) & 0xf;
    if base == 0xf { base + ((eax >> 20) & 0xff) } else { base }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub backend: String,
    /// The platform the profile is for (qemu-tcg, ...); absent: the backend on real
    /// silicon, and any platform without a profile of its own.
    pub platform: Option<String>,
    #[serde(default, rename = "deviation")]
    pub deviations: Vec<Deviation>,
    /// Where it came from, for messages.
    #[serde(skip)]
    pub source: String,
}

/// The shipped profiles: backend, platform (None: real silicon and the fallback), text.
const BUILTIN: [(Backend, Option<&str>, &str); 4] = [
    (Backend::KvmIntel, None, include_str!("../expectations/kvm_intel.toml")),
    (Backend::KvmAmd, None, include_str!("../expectations/kvm_amd.toml")),
    (Backend::KvmAmd, Some("qemu-tcg"), include_str!("../expectations/kvm_amd.qemu-tcg.toml")),
    (Backend::KvmPvm, None, include_str!("../expectations/kvm_pvm.toml")),
];

impl Profile {
    /// The profile shipped for `host`'s backend and platform (the backend's own profile
    /// where the platform has none), with only the entries that apply to its CPU family.
    /// An unknown backend has no known deviations.
    pub fn builtin(host: &ProfileHost, payload: &Payload) -> Result<Profile, ProfileError> {
        let name = host.backend.name();
        let chosen = BUILTIN
            .iter()
            .find(|(b, p, _)| *b == host.backend && *p == Some(host.platform.as_str()))
            .or_else(|| BUILTIN.iter().find(|(b, p, _)| *b == host.backend && p.is_none()));
        match chosen {
            Some((_, platform, text)) => {
                let file = platform.map_or(format!("{name}.toml"), |p| format!("{name}.{p}.toml"));
                Ok(Self::parse(text, &format!("suites/expectations/{file}"), payload)?.for_host(host))
            }
            None => Ok(Profile { backend: name.into(), source: "none".into(), ..Profile::default() }),
        }
    }

    /// A profile from a file, with only the entries that apply to `host`'s CPU family.
    /// A profile written for another backend or platform is refused: its signatures
    /// would judge this host's failures by another's.
    pub fn load(path: &Path, host: &ProfileHost, payload: &Payload) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ProfileError::Read { path: path.display().to_string(), source })?;
        let p = Self::parse(&text, &path.display().to_string(), payload)?;
        if p.backend != host.backend.name() {
            return Err(ProfileError::Invalid {
                path: path.display().to_string(),
                reason: format!("it is for backend {}, but this host's is {}", p.backend, host.backend.name()),
            });
        }
        if let Some(platform) = p.platform.as_ref().filter(|p| **p != host.platform) {
            return Err(ProfileError::Invalid {
                path: path.display().to_string(),
                reason: format!("it is for platform {platform}, but this host's is {}", host.platform),
            });
        }
        Ok(p.for_host(host))
    }

    fn for_host(mut self, host: &ProfileHost) -> Profile {
        self.deviations.retain(|d| d.applies_to(host));
        self
    }

    pub fn parse(text: &str, path: &str, payload: &Payload) -> Result<Profile, ProfileError> {
        let mut p: Profile =
            toml::from_str(text).map_err(|e| ProfileError::Parse { path: path.into(), source: Box::new(e) })?;
        p.source = path.into();
        let invalid = |reason: String| ProfileError::Invalid { path: path.into(), reason };
        let mut seen = std::collections::HashSet::new();
        for d in &p.deviations {
            if payload.test(&d.test).is_none() && payload.bench(&d.test).is_none() {
                return Err(invalid(format!("{} is not a test or benchmark in the catalogue", d.test)));
            }
            if !seen.insert(&d.test) {
                return Err(invalid(format!("{} is listed twice", d.test)));
            }
            if !END_KINDS.contains(&d.end.as_str()) {
                return Err(invalid(format!("{}: end {:?} is not one of {}", d.test, d.end, END_KINDS.join(", "))));
            }
            if d.deviates_from.trim().is_empty() {
                return Err(invalid(format!("{}: deviates_from must name the manual or API section", d.test)));
            }
            if d.insn_bytes.as_ref().is_some_and(|b| !is_hex_bytes(b)) {
                return Err(invalid(format!(
                    "{}: insn_bytes must look like \"0f 0b\" (a displacement byte as __)",
                    d.test
                )));
            }
            if let Some(m) = d.message.as_ref().filter(|m| has_live_number(m)) {
                return Err(invalid(format!(
                    "{}: message {m:?} holds a live number (an address, a TSC reading, a host value); \
                     match the check's words, and the values that define it with expected/actual",
                    d.test
                )));
            }
            if let Some(v) = d.cpu_vendor.iter().flatten().find(|v| !VENDORS.contains(&v.as_str())) {
                return Err(invalid(format!("{}: cpu_vendor {v:?} is not one of {}", d.test, VENDORS.join(", "))));
            }
            if let Some(who) = d.who.as_ref().filter(|w| !WHO.contains(&w.as_str())) {
                return Err(invalid(format!("{}: who {who:?} is not one of {}", d.test, WHO.join(", "))));
            }
        }
        Ok(p)
    }

    pub fn deviation(&self, test: &str) -> Option<&Deviation> {
        self.deviations.iter().find(|d| d.test == test)
    }
}

/// Lower-case hex bytes separated by spaces, a displacement byte written `__` (as
/// `harness::instruction_signature` writes it).
fn is_hex_bytes(s: &str) -> bool {
    !s.is_empty()
        && s.split(' ')
            .all(|b| b == "__" || (b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> &'static Payload {
        crate::catalog::payload().unwrap()
    }

    fn failure(end: &str, bytes: Option<&str>, message: Option<&str>) -> Failure {
        Failure {
            end: end.into(),
            description: String::new(),
            insn_bytes: bytes.map(Into::into),
            message: message.map(Into::into),
            file: None,
            line: None,
            expected: None,
            actual: None,
            cpu: None,
        }
    }

    fn host(backend: Backend, platform: &str, cpu_family: u32) -> ProfileHost {
        let cpu_vendor = if cpu_family == 6 { "GenuineIntel" } else { "AuthenticAMD" }.into();
        ProfileHost { backend, platform: platform.into(), cpu_family, cpu_vendor }
    }

    #[test]
    fn every_builtin_profile_is_valid() {
        for (backend, platform, text) in BUILTIN {
            let source = format!("{}.{platform:?}", backend.name());
            let p = Profile::parse(text, &source, payload()).unwrap();
            assert_eq!(p.backend, backend.name(), "{source}");
            assert_eq!(p.platform.as_deref(), platform, "{source}");
        }
    }

    #[test]
    fn the_profile_is_chosen_by_backend_and_platform() {
        let p = payload();
        let tcg = Profile::builtin(&host(Backend::KvmAmd, "qemu-tcg", 0x19), p).unwrap();
        assert_eq!(tcg.source, "suites/expectations/kvm_amd.qemu-tcg.toml");
        let silicon = Profile::builtin(&host(Backend::KvmAmd, "bare-metal", 0x19), p).unwrap();
        assert_eq!(silicon.source, "suites/expectations/kvm_amd.toml");
        let nested_on_kvm = Profile::builtin(&host(Backend::KvmPvm, "kvm", 0x1a), p).unwrap();
        assert_eq!(nested_on_kvm.source, "suites/expectations/kvm_pvm.toml");
        assert!(Profile::builtin(&host(Backend::Unknown, "kvm", 0x19), p).unwrap().deviations.is_empty());
    }

    #[test]
    fn entries_for_another_cpu_family_are_left_out() {
        let text = "backend = \"kvm_pvm\"\n[[deviation]]\ntest = \"cpu::exc_ud::long64\"\nend = \"shutdown\"\n\
                    cpu_family = [0x1a]\ndeviates_from = \"SDM\"\n";
        let p = Profile::parse(text, "t", payload()).unwrap();
        let pvm = |family| host(Backend::KvmPvm, "kvm", family);
        assert_eq!(p.clone().for_host(&pvm(0x1a)).deviations.len(), 1);
        assert!(p.for_host(&pvm(0x19)).deviations.is_empty());
        assert_eq!(display_family(0xb00f21), 0x1a);
        assert_eq!(display_family(0xa00f11), 0x19);
        assert_eq!(display_family(0x906a3), 6);
    }

    #[test]
    fn entries_for_another_cpu_vendor_are_left_out() {
        let entry = |vendor: &str| {
            format!(
                "backend = \"kvm_pvm\"\n[[deviation]]\ntest = \"cpu::exc_ud::long64\"\nend = \"shutdown\"\n\
                 cpu_vendor = [\"{vendor}\"]\ndeviates_from = \"SDM\"\n"
            )
        };
        let p = Profile::parse(&entry("AuthenticAMD"), "t", payload()).unwrap();
        assert_eq!(p.clone().for_host(&host(Backend::KvmPvm, "kvm", 0x19)).deviations.len(), 1);
        assert!(p.for_host(&host(Backend::KvmPvm, "kvm", 6)).deviations.is_empty(), "an Intel host");
        let e = Profile::parse(&entry("AMD"), "t", payload()).unwrap_err();
        assert!(e.to_string().contains("cpu_vendor \"AMD\" is not one of AuthenticAMD"), "{e}");
        assert_eq!(hvprobe_harness::host::cpu_vendor().len(), 12);
    }

    #[test]
    fn a_profile_for_another_backend_or_platform_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "backend = \"kvm_intel\"\n").unwrap();
        let e = Profile::load(&file, &host(Backend::KvmPvm, "kvm", 0x19), payload()).unwrap_err();
        assert!(e.to_string().contains("for backend kvm_intel"), "{e}");
        std::fs::write(&file, "backend = \"kvm_amd\"\nplatform = \"qemu-tcg\"\n").unwrap();
        let e = Profile::load(&file, &host(Backend::KvmAmd, "bare-metal", 0x19), payload()).unwrap_err();
        assert!(e.to_string().contains("for platform qemu-tcg"), "{e}");
        assert!(Profile::load(&file, &host(Backend::KvmAmd, "qemu-tcg", 0x19), payload()).is_ok());
    }

    #[test]
    fn signatures_match_exactly_what_they_name() {
        let d = Deviation {
            test: "cpu::exc_ud::user64".into(),
            end: "shutdown".into(),
            insn_bytes: Some("0f 0b".into()),
            message: None,
            expected: None,
            actual: None,
            cpu_family: None,
            cpu_vendor: None,
            who: None,
            elsewhere: None,
            deviates_from: "SDM".into(),
        };
        assert!(d.matches(&failure("shutdown", Some("0f 0b 90"), None)));
        assert!(!d.matches(&failure("shutdown", Some("0f 01"), None)), "other bytes");
        assert!(!d.matches(&failure("shutdown", None, None)), "bytes unknown");
        assert!(!d.matches(&failure("internal_error", Some("0f 0b"), None)), "other end");
        let m = Deviation { insn_bytes: None, message: Some("vector".into()), end: "verdict".into(), ..d };
        assert!(m.matches(&failure("verdict", None, Some("wrong vector"))));
        assert!(!m.matches(&failure("verdict", None, Some("wrong error code"))));
        let v = Deviation { expected: Some(8), actual: Some(13), ..m };
        let mut f = failure("verdict", None, Some("wrong vector"));
        (f.expected, f.actual) = (Some(8), Some(13));
        assert!(v.matches(&f));
        f.actual = Some(14);
        assert!(!v.matches(&f), "the values that define the deviation must match");
    }

    #[test]
    fn bad_profiles_are_rejected_with_the_reason() {
        let p = payload();
        let e = Profile::parse(
            "backend = \"x\"\n[[deviation]]\ntest = \"cpu::nope\"\nend = \"shutdown\"\ndeviates_from = \"SDM\"\n",
            "t",
            p,
        );
        assert!(e.unwrap_err().to_string().contains("not a test"));
        let e = Profile::parse(
            "backend = \"x\"\n[[deviation]]\ntest = \"cpu::exc_ud::long64\"\nend = \"boom\"\ndeviates_from = \"SDM\"\n",
            "t",
            p,
        );
        assert!(e.unwrap_err().to_string().contains("not one of"));
        let e = Profile::parse(
            "backend = \"x\"\n[[deviation]]\ntest = \"cpu::exc_ud::long64\"\nend = \"shutdown\"\ndeviates_from = \" \"\n",
            "t",
            p,
        );
        assert!(e.unwrap_err().to_string().contains("deviates_from"));
        let e = Profile::parse(
            "backend = \"x\"\n[[deviation]]\ntest = \"cpu::exc_ud::long64\"\nend = \"verdict\"\n\
             message = \"RDTSC 0x10000000000\"\ndeviates_from = \"SDM\"\n",
            "t",
            p,
        );
        assert!(e.unwrap_err().to_string().contains("live number"));
        let e = Profile::parse(
            "backend = \"x\"\n[[deviation]]\ntest = \"cpu::exc_ud::long64\"\nend = \"verdict\"\n\
             who = \"someone\"\ndeviates_from = \"SDM\"\n",
            "t",
            p,
        );
        assert!(e.unwrap_err().to_string().contains("who"));
        assert!(Profile::parse("backend = ", "t", p).is_err());
    }
}
