//! Expectation profiles: one TOML file per backend (suites/expectations/BACKEND.toml)
//! listing the hypervisor's known deviations. Each entry names a test, the failure
//! signature it must match, and the manual or API section the hypervisor deviates from.

use std::path::Path;

use serde::Deserialize;

use hvprobe_harness::{Backend, Payload};
use hvprobe_results::Failure;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("profile {path} is malformed: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("profile {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// The run endings a signature may name (RunEnd::kind).
pub const END_KINDS: [&str; 11] = [
    "verdict",
    "hlt",
    "shutdown",
    "fail_entry",
    "internal_error",
    "system_event",
    "timeout",
    "protocol_error",
    "unexpected_exit",
    "kvm_run_failed",
    "host_check",
];

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Deviation {
    pub test: String,
    /// How the run must end (RunEnd::kind).
    pub end: String,
    /// Hex bytes the instruction bytes must start with, e.g. "0f 0b".
    pub insn_bytes: Option<String>,
    /// Text the guest's failure message must contain.
    pub message: Option<String>,
    /// The manual or API section the hypervisor deviates from, in one line.
    pub deviates_from: String,
}

impl Deviation {
    pub fn matches(&self, f: &Failure) -> bool {
        self.end == f.end
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
        s
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub backend: String,
    #[serde(default, rename = "deviation")]
    pub deviations: Vec<Deviation>,
    /// Where it came from, for messages.
    #[serde(skip)]
    pub source: String,
}

const BUILTIN: [(Backend, &str); 3] = [
    (Backend::KvmIntel, include_str!("../expectations/kvm_intel.toml")),
    (Backend::KvmAmd, include_str!("../expectations/kvm_amd.toml")),
    (Backend::KvmPvm, include_str!("../expectations/kvm_pvm.toml")),
];

impl Profile {
    /// The profile shipped for `backend`; an unknown backend has no known deviations.
    pub fn builtin(backend: Backend, payload: &Payload) -> Result<Profile, ProfileError> {
        match BUILTIN.iter().find(|(b, _)| *b == backend) {
            Some((b, text)) => Self::parse(text, &format!("suites/expectations/{}.toml", b.name()), payload),
            None => Ok(Profile { backend: backend.name().into(), source: "none".into(), ..Profile::default() }),
        }
    }

    pub fn load(path: &Path, payload: &Payload) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ProfileError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string(), payload)
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
                return Err(invalid(format!("{}: insn_bytes must look like \"0f 0b\"", d.test)));
            }
        }
        Ok(p)
    }

    pub fn deviation(&self, test: &str) -> Option<&Deviation> {
        self.deviations.iter().find(|d| d.test == test)
    }
}

fn is_hex_bytes(s: &str) -> bool {
    !s.is_empty()
        && s.split(' ').all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()))
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

    #[test]
    fn every_builtin_profile_is_valid() {
        for (backend, _) in BUILTIN {
            Profile::builtin(backend, payload()).unwrap();
        }
    }

    #[test]
    fn signatures_match_exactly_what_they_name() {
        let d = Deviation {
            test: "cpu::exc_ud::user64".into(),
            end: "shutdown".into(),
            insn_bytes: Some("0f 0b".into()),
            message: None,
            deviates_from: "SDM".into(),
        };
        assert!(d.matches(&failure("shutdown", Some("0f 0b 90"), None)));
        assert!(!d.matches(&failure("shutdown", Some("0f 01"), None)), "other bytes");
        assert!(!d.matches(&failure("shutdown", None, None)), "bytes unknown");
        assert!(!d.matches(&failure("internal_error", Some("0f 0b"), None)), "other end");
        let m = Deviation { insn_bytes: None, message: Some("vector".into()), end: "verdict".into(), ..d };
        assert!(m.matches(&failure("verdict", None, Some("wrong vector"))));
        assert!(!m.matches(&failure("verdict", None, Some("wrong error code"))));
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
        assert!(Profile::parse("backend = ", "t", p).is_err());
    }
}
