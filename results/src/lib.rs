//! The results schema `hvprobe.results/1` (documented by schema/hvprobe.results-1.schema.json)
//! and the only code that reads or writes results files.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod compare;
pub mod crossref;
pub mod dashboard;
pub mod export;
pub mod paths;
pub mod signature;
mod text;

pub const SCHEMA_ID: &str = "hvprobe.results/1";
/// The JSON Schema of [`Results`], as committed for readers outside this project. It is
/// generated from the types ([`json_schema`]); a test keeps the file equal to it.
pub const JSON_SCHEMA: &str = include_str!("../schema/hvprobe.results-1.schema.json");

/// The areas a test belongs to (the first part of its name), as the ABI names them.
pub use hvprobe_abi::AREAS;
/// The three paths to a behaviour (`hvprobe_abi::Path`): trapped and emulated,
/// paravirtual, done by the CPU.
pub const PATHS: [&str; 3] = hvprobe_abi::Path::NAMES;
/// How a failed run can end, as `Failure::end` names it: the harness's run ends
/// (`harness::RunEnd::kind`, which a test in `suites` checks against this list) and
/// `harness`, the judge's name for a run the harness itself could not carry out.
pub const END_KINDS: [&str; 16] = [
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
    "exit_limit",
    "checkpoint",
    "paused",
    "host_check",
    "livelock",
    "harness",
];

/// The JSON Schema (draft 2020-12) of a results file, generated from [`Results`] and the
/// types under it: their doc comments are its descriptions, `deny_unknown_fields` its
/// closed objects, and the constraints above its enums.
pub fn json_schema() -> String {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let schema = generator.into_root_schema_for::<Results>();
    serde_json::to_string_pretty(&schema).expect("a schema serializes") + "\n"
}

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid results file: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path} has schema {found:?}; this hvprobe reads {SCHEMA_ID:?}")]
    Schema { path: PathBuf, found: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// One run of the hvprobe suite on one host. Written atomically by `hvprobe run`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "hvprobe results", extend("$id" = SCHEMA_ID))]
pub struct Results {
    /// The schema's name and major version.
    #[schemars(extend("const" = SCHEMA_ID))]
    pub schema: String,
    pub tool: Tool,
    /// Start of the run, RFC 3339 UTC.
    #[schemars(regex(pattern = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"))]
    pub started: String,
    pub duration_s: f64,
    pub host: Host,
    pub tests: Vec<TestResult>,
    pub benchmarks: Vec<Benchmark>,
    /// The path table built from `tests` (see [`paths`]); absent in older files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<paths::PathBehaviour>,
    /// Present when the run was stopped before every selected case ran: `tests` then holds
    /// the cases that finished, and nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<Incomplete>,
    /// How busy the host was around this run, so that a reader can tell a slow figure from
    /// a busy machine; absent in older files and where /proc cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<Noise>,
}

/// The host's load over a run, from /proc and getrusage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Noise {
    /// CPU time the rest of the machine used over the run, in percent of all CPUs
    /// (/proc/stat busy time less this process's own and its children's).
    pub other_cpu_pct: f64,
    /// Time the hypervisor below this host took from its CPUs (/proc/stat steal), in ms.
    pub steal_ms: f64,
    /// Times the scheduler took a CPU from this process's threads (ru_nivcsw).
    pub involuntary_switches: u64,
    /// The 1-minute load average at the start and at the end of the run.
    pub load_start: f64,
    pub load_end: f64,
}

impl std::fmt::Display for Noise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the rest of the machine used {:.0}% of the CPUs, steal {:.0} ms, {} involuntary switches, load {:.2} -> {:.2}",
            self.other_cpu_pct, self.steal_ms, self.involuntary_switches, self.load_start, self.load_end
        )
    }
}

/// Why a run's results are partial, and how much is missing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Incomplete {
    /// What stopped it, e.g. "interrupted by SIGINT".
    pub reason: String,
    /// Selected cases that did not finish (never started, or stopped while running).
    pub cases_not_run: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    #[schemars(extend("const" = "hvprobe"))]
    pub name: String,
    pub version: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub hostname: String,
    pub kernel: String,
    pub cpu_vendor: String,
    pub cpu_model: String,
    /// CPUID.1:EAX of the host CPU (family, model, stepping); absent in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_signature: Option<u32>,
    /// kvm_intel, kvm_amd, kvm_pvm or unknown.
    #[schemars(extend("enum" = ["kvm_intel", "kvm_amd", "kvm_pvm", "unknown"]))]
    pub backend: String,
    /// What the host kernel runs on: bare-metal, qemu-tcg, kvm, hyper-v, ... (from the
    /// CPU's hypervisor signature); absent in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The hypervisor signature (CPUID 0x40000000) the platform was named from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_signature: Option<String>,
    /// What the platform's CPU lacks that changes how the backend works.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platform_notes: Vec<String>,
    /// The backend module's parameters (e.g. kvm_amd's nested, npt).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backend_params: BTreeMap<String, String>,
    pub kvm_api_version: Option<i32>,
    /// Why /dev/kvm could not be used, if it could not.
    pub kvm_error: Option<String>,
    /// KVM_CHECK_EXTENSION results by capability name.
    pub capabilities: BTreeMap<String, i32>,
    pub tsc_khz: Option<u32>,
    /// KVM_GET_SUPPORTED_CPUID: what this host can offer a guest.
    #[serde(default)]
    pub cpuid: Vec<CpuidEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CpuidEntry {
    pub leaf: u32,
    pub subleaf: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// A case's outcome; the README's "Outcomes" says what each means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
    Xfail,
    Xpass,
    Timeout,
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 7] =
        [Outcome::Pass, Outcome::Fail, Outcome::Skip, Outcome::Xfail, Outcome::Xpass, Outcome::Timeout, Outcome::Error];

    /// Whether this outcome fails a run: fail, xpass, a harness error, and a timeout the
    /// case did not expect. The one outcome policy: the runner's exit code, the exports,
    /// compare's regressions and the dashboard all ask this.
    pub fn fails_run(self, expected_timeout: bool) -> bool {
        match self {
            Outcome::Pass | Outcome::Skip | Outcome::Xfail => false,
            Outcome::Timeout => !expected_timeout,
            Outcome::Fail | Outcome::Xpass | Outcome::Error => true,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Skip => "skip",
            Outcome::Xfail => "xfail",
            Outcome::Xpass => "xpass",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestResult {
    /// `area::case::variant`.
    #[schemars(regex(pattern = r"^(cpu|irq|io|pv|state|hostile)::[a-z0-9_]+(::[a-z0-9_]+)?$"))]
    pub name: String,
    #[schemars(extend("enum" = AREAS))]
    pub area: String,
    /// full, para or hw.
    #[schemars(extend("enum" = PATHS))]
    pub path: String,
    /// real16, prot32, long64 or user64.
    #[schemars(extend("enum" = ["real16", "prot32", "long64", "user64"]))]
    pub mode: String,
    pub outcome: Outcome,
    /// Why it was skipped, failed, xfailed...; None for a plain pass.
    pub reason: Option<String>,
    /// True when the test is the watchdog's own and `timeout` is its expected outcome.
    #[serde(default)]
    pub expected_timeout: bool,
    pub duration_ms: f64,
    /// Changes of KVM's per-vCPU binary statistics over the run (non-zero only).
    pub kvm_stats: BTreeMap<String, u64>,
    pub metrics: BTreeMap<String, MetricValue>,
    /// How the run ended, for anything but a guest verdict of pass or skip.
    pub failure: Option<Failure>,
    pub console: Option<String>,
    pub log: Vec<String>,
    /// For a case of the path table: the behaviour it is one way to (`area::behaviour`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(cpu|irq|io|pv|state|hostile)::[a-z0-9_]+$"))]
    pub behaviour: Option<String>,
    /// Its measured section, when the guest closed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section: Option<paths::Section>,
}

impl TestResult {
    /// [`Outcome::fails_run`] of this result.
    pub fn fails_run(&self) -> bool {
        self.outcome.fails_run(self.expected_timeout)
    }

    /// A failure, or a known deviation (xfail): what a clean run lacks.
    pub fn is_deviation(&self) -> bool {
        self.fails_run() || self.outcome == Outcome::Xfail
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricValue {
    pub value: f64,
    pub unit: String,
}

/// The facts of a failure, and the signature expectation profiles match against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// How the run ended: one of [`END_KINDS`].
    #[schemars(extend("enum" = END_KINDS))]
    pub end: String,
    pub description: String,
    /// The first instruction at the failure (at RIP, or from an emulation failure), hex,
    /// with the bytes of a memory operand's displacement written `__` (they move with the
    /// build): "0f ae 15 __ __ __ __".
    #[schemars(regex(pattern = r"^([0-9a-f]{2}|__)( ([0-9a-f]{2}|__))*$"))]
    pub insn_bytes: Option<String>,
    pub message: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub expected: Option<u64>,
    pub actual: Option<u64>,
    /// Registers when the run ended without a verdict.
    pub cpu: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Benchmark {
    pub name: String,
    pub unit: String,
    pub median: f64,
    /// Median absolute deviation, in `unit`.
    pub spread: f64,
    pub samples: u64,
    /// The samples themselves, in `unit`, so that `compare` can test a change over them
    /// (absent in older files and for one-figure records such as the wall time).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sample_values: Vec<f64>,
    /// The distribution-free 95% confidence interval of `median`, in `unit` (absent under
    /// 6 samples and in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_interval: Option<[f64; 2]>,
    /// The path the operation takes (full, para, hw), for guest operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = PATHS))]
    pub path: Option<String>,
    /// The empty loop's median per iteration, in `unit`, measured in the same run and
    /// already subtracted from `median`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    /// Iterations of the operation per sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub iterations: Option<u64>,
    /// The floor's median, in `unit`: the same host operation done with bare ioctls and
    /// nothing else, measured in the same run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<f64>,
    /// `median / floor`: what hvprobe's own work adds to the bare operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_ratio: Option<f64>,
    /// What the run checked beside the timing, and what it did about a disturbed host
    /// ("ioeventfd pio fired once for each of 250000 writes", "3 batches run again: ...").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Benchmark {
    /// A benchmark with only the required fields set.
    pub fn new(name: impl Into<String>, unit: impl Into<String>, median: f64, spread: f64, samples: u64) -> Benchmark {
        Benchmark {
            name: name.into(),
            unit: unit.into(),
            median,
            spread,
            samples,
            sample_values: Vec::new(),
            median_interval: None,
            path: None,
            baseline: None,
            iterations: None,
            floor: None,
            floor_ratio: None,
            notes: Vec::new(),
        }
    }
}

impl Results {
    pub fn new(host: Host, started: SystemTime) -> Results {
        Results {
            schema: SCHEMA_ID.into(),
            tool: Tool { name: "hvprobe".into(), version: env!("CARGO_PKG_VERSION").into() },
            started: rfc3339(started),
            duration_s: 0.0,
            host,
            tests: Vec::new(),
            benchmarks: Vec::new(),
            paths: Vec::new(),
            incomplete: None,
            noise: None,
        }
    }

    /// Counts per outcome, every outcome present.
    pub fn counts(&self) -> BTreeMap<Outcome, usize> {
        let mut c: BTreeMap<Outcome, usize> = Outcome::ALL.iter().map(|o| (*o, 0)).collect();
        for t in &self.tests {
            *c.entry(t.outcome).or_default() += 1;
        }
        c
    }

    /// Reads and checks a results file. A malformed file is an error naming the file and,
    /// for JSON errors, the line and column.
    pub fn read(path: &Path) -> Result<Results, ResultsError> {
        let text = std::fs::read_to_string(path).map_err(|source| ResultsError::Read { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses the text of a results file read from `path` (named in errors). The schema
    /// is checked first, so that a file of another version is named as such; every other
    /// error (syntax, a missing field, a wrong type) carries its line and column.
    pub fn parse(text: &str, path: &Path) -> Result<Results, ResultsError> {
        #[derive(Deserialize)]
        struct Probe {
            schema: Option<serde_json::Value>,
        }
        let probe: Probe =
            serde_json::from_str(text).map_err(|source| ResultsError::Parse { path: path.into(), source })?;
        let found = probe.schema.as_ref().and_then(|s| s.as_str()).unwrap_or("<missing>");
        if found != SCHEMA_ID {
            return Err(ResultsError::Schema { path: path.into(), found: found.into() });
        }
        serde_json::from_str(text).map_err(|source| ResultsError::Parse { path: path.into(), source })
    }

    /// Writes atomically (see [`write_text_atomic`]).
    pub fn write_atomic(&self, path: &Path) -> Result<(), ResultsError> {
        write_text_atomic(path, &self.to_text(path)?)
    }

    /// Writes atomically to `path`, which must not exist yet: a run's own file, which no
    /// other run may overwrite (see [`write_text_new`]).
    pub fn write_new(&self, path: &Path) -> Result<(), ResultsError> {
        write_text_new(path, &self.to_text(path)?)
    }

    fn to_text(&self, path: &Path) -> Result<String, ResultsError> {
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| ResultsError::Write { path: path.into(), source: e.into() })?;
        text.push('\n');
        Ok(text)
    }
}

/// Writes `text` to `path` without ever leaving half a file or destroying what is not a
/// regular file:
/// - a regular file (or none) is replaced atomically: a temporary file in the same
///   directory, synced, then renamed over `path`, so a crash leaves the old file or the
///   new one;
/// - a device, pipe or socket (`/dev/stdout`, a FIFO) is written through, never replaced;
/// - a symlink is followed and its target written as above; a dangling one is refused;
/// - a directory is refused.
pub fn write_text_atomic(path: &Path, text: &str) -> Result<(), ResultsError> {
    let err = |source| ResultsError::Write { path: path.into(), source };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::canonicalize(path).map_err(err)?;
            write_text_atomic(&target, text)
        }
        Ok(m) if m.is_dir() => Err(err(std::io::Error::new(std::io::ErrorKind::IsADirectory, "it is a directory"))),
        Ok(m) if !m.is_file() => {
            let mut f = std::fs::OpenOptions::new().write(true).open(path).map_err(err)?;
            f.write_all(text.as_bytes()).map_err(err)
        }
        _ => persist(path, text, false),
    }
}

/// Like [`write_text_atomic`] for a regular file, but fails if `path` exists, even when
/// another process creates it meanwhile: the rename is `renameat2(RENAME_NOREPLACE)`.
pub fn write_text_new(path: &Path, text: &str) -> Result<(), ResultsError> {
    persist(path, text, true)
}

fn persist(path: &Path, text: &str, exclusive: bool) -> Result<(), ResultsError> {
    let err = |source| ResultsError::Write { path: path.into(), source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".hvprobe-").suffix(".tmp");
    // Results and dashboard pages are for others to read (a static server, a CI job):
    // 0644, not the 0600 of a private temporary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(err)?;
    tmp.write_all(text.as_bytes()).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    if exclusive {
        tmp.persist_noclobber(path).map_err(|e| err(e.error))?;
    } else {
        tmp.persist(path).map_err(|e| err(e.error))?;
    }
    Ok(())
}

/// Checks, before a run starts, that a results file can be written into `dir`: it is (or
/// can be made) a directory, and a file can be created there and removed.
pub fn check_writable_dir(dir: &Path) -> Result<(), ResultsError> {
    let err = |source| ResultsError::Write { path: dir.into(), source };
    if dir.exists() && !dir.is_dir() {
        return Err(err(std::io::Error::new(std::io::ErrorKind::NotADirectory, "it is not a directory")));
    }
    std::fs::create_dir_all(dir).map_err(err)?;
    tempfile::Builder::new().prefix(".hvprobe-probe-").tempfile_in(dir).map(drop).map_err(err)
}

/// RFC 3339 UTC timestamp of `t` (seconds precision).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let ts =
        i64::try_from(secs).ok().and_then(|s| jiff::Timestamp::from_second(s).ok()).unwrap_or(jiff::Timestamp::MAX);
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp (any offset, optional fraction);
/// None for anything else, a local time without its offset included.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    // jiff also takes ISO 8601 forms RFC 3339 does not (a space for the T, no seconds).
    if b.len() < 20 || !matches!(b[10], b'T' | b't') || b[16] != b':' {
        return None;
    }
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// A file name for a run started at `t` on `host` by process `pid`, for results/runs/:
/// the time to the nanosecond and the process id, so that no two runs share one, even
/// in the same second (and [`Results::write_new`] refuses to overwrite one that does).
pub fn run_file_name(t: SystemTime, pid: u32, hostname: &str, backend: &str) -> String {
    let safe: String = hostname.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    let nanos = t.duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let stamp = rfc3339(t).replace(':', "");
    let stamp = stamp.trim_end_matches('Z');
    format!("{stamp}.{nanos:09}Z-{pid}-{safe}-{backend}.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> Results {
        let host = Host {
            hostname: "h".into(),
            kernel: "6.18".into(),
            cpu_vendor: "AuthenticAMD".into(),
            cpu_model: "AMD EPYC".into(),
            cpu_signature: Some(0xb00f21),
            backend: "kvm_pvm".into(),
            platform: Some("kvm".into()),
            platform_signature: Some("KVMKVMKVM".into()),
            platform_notes: Vec::new(),
            backend_params: BTreeMap::new(),
            kvm_api_version: Some(12),
            kvm_error: None,
            capabilities: [("KVM_CAP_IRQCHIP".to_string(), 1)].into(),
            tsc_khz: Some(2_000_000),
            cpuid: vec![CpuidEntry {
                leaf: 1,
                subleaf: 0,
                eax: 0xb00f21,
                ebx: 0x800,
                ecx: 0x8120_2000,
                edx: 0x78b_fbff,
            }],
        };
        let mut r = Results::new(host, UNIX_EPOCH);
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            r.tests.push(TestResult {
                name: format!("cpu::case{i}::long64"),
                area: "cpu".into(),
                path: "hw".into(),
                mode: "long64".into(),
                outcome: *outcome,
                reason: (*outcome != Outcome::Pass).then(|| "because".into()),
                expected_timeout: *outcome == Outcome::Timeout,
                duration_ms: 1.5,
                kvm_stats: [("exits".to_string(), 3)].into(),
                metrics: [("cpuid".to_string(), MetricValue { value: 1200.0, unit: "cycles".into() })].into(),
                failure: (*outcome == Outcome::Fail).then(|| Failure {
                    end: "shutdown".into(),
                    description: "KVM_EXIT_SHUTDOWN".into(),
                    insn_bytes: Some("0f 0b".into()),
                    message: None,
                    file: None,
                    line: None,
                    expected: Some(1),
                    actual: Some(2),
                    cpu: Some("rip 0x1000".into()),
                }),
                console: None,
                log: vec!["hello".into()],
                behaviour: None,
                section: None,
            });
        }
        r.benchmarks.push(Benchmark::new("cpuid", "ns", 1.0, 0.1, 10));
        r
    }

    #[test]
    fn round_trips_through_an_atomic_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("r.json");
        let r = sample();
        r.write_atomic(&path).unwrap();
        assert_eq!(Results::read(&path).unwrap(), r);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn a_run_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.json");
        let r = sample();
        r.write_new(&path).unwrap();
        let e = r.write_new(&path).unwrap_err().to_string();
        assert!(e.contains("run.json"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left behind");
    }

    #[test]
    fn writes_go_through_devices_and_symlinks_and_never_replace_them() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        // A FIFO stands for a device: written through, still a FIFO afterwards.
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path and a mode.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
        };
        write_text_atomic(&fifo, "through\n").unwrap();
        assert_eq!(reader.join().unwrap(), "through\n");
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        // A symlink is followed: the target changes, the link stays a link.
        let target = dir.path().join("target.txt");
        std::fs::write(&target, "old").unwrap();
        let link = dir.path().join("link.txt");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_text_atomic(&link, "new").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        // A dangling link and a directory are refused.
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(write_text_atomic(&dangling, "x").is_err());
        assert!(write_text_atomic(dir.path(), "x").is_err());
    }

    #[test]
    fn an_output_directory_is_checked_before_a_run() {
        let dir = tempfile::tempdir().unwrap();
        check_writable_dir(&dir.path().join("new/sub")).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(check_writable_dir(&file).unwrap_err().to_string().contains("not a directory"));
    }

    #[test]
    fn numbers_survive_a_read_and_a_write() {
        // Found by the results fuzz target: without serde_json's float_roundtrip, 1.312E31
        // read as 1.312e31 and came back as 1.3119999999999999e31.
        let mut r = sample();
        r.tests[0].duration_ms = 1.312e31;
        let text = serde_json::to_string(&r).unwrap().replace("1.312e31", "1.312E31");
        let back = Results::parse(&text, Path::new("t.json")).unwrap();
        assert_eq!(back.tests[0].duration_ms.to_bits(), 1.312e31f64.to_bits());
        let again = Results::parse(&serde_json::to_string(&back).unwrap(), Path::new("t.json")).unwrap();
        assert_eq!(again, back);
    }

    #[test]
    fn malformed_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, "{\"schema\": \"hvprobe.results/1\", \"tests\": [").unwrap();
        let e = Results::read(&path).unwrap_err().to_string();
        assert!(e.contains("bad.json") && e.contains("line 1"), "{e}");
        std::fs::write(&path, "{\"schema\": \"other/9\"}").unwrap();
        assert!(matches!(Results::read(&path), Err(ResultsError::Schema { .. })));
        assert!(matches!(Results::read(&dir.path().join("missing.json")), Err(ResultsError::Read { .. })));
        // A field of the wrong type far into a well-formed file: named with its line and
        // column, not only as "invalid type".
        let mut text = serde_json::to_string_pretty(&sample()).unwrap();
        text = text.replacen("\"duration_ms\": ", "\"duration_ms\": \"slow\", \"x\": ", 1);
        let line = text.lines().position(|l| l.contains("\"slow\"")).unwrap() + 1;
        std::fs::write(&path, &text).unwrap();
        let e = Results::read(&path).unwrap_err().to_string();
        assert!(e.contains("invalid type") && e.contains(&format!("line {line} column")), "{e}");
    }

    /// The committed schema is the generated one. `HVPROBE_BLESS_SCHEMA=1 cargo test -p
    /// hvprobe-results committed_schema` rewrites it after a change to the types.
    #[test]
    fn committed_schema_is_the_generated_one() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/hvprobe.results-1.schema.json");
        let generated = json_schema();
        if std::env::var_os("HVPROBE_BLESS_SCHEMA").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        assert!(
            JSON_SCHEMA == generated || std::env::var_os("HVPROBE_BLESS_SCHEMA").is_some(),
            "{} is not the schema the types give; rerun with HVPROBE_BLESS_SCHEMA=1 and commit it",
            path.display()
        );
    }

    #[test]
    fn every_committed_results_file_validates_against_the_schema() {
        let schema: serde_json::Value = serde_json::from_str(JSON_SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in ["reference", "tests/fixtures/real-pvm"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "json") {
                    files.push(path);
                }
            }
        }
        assert!(files.len() >= 4, "{files:?}");
        for path in files {
            let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let errors: Vec<String> =
                validator.iter_errors(&value).take(5).map(|e| format!("{e} at {}", e.instance_path())).collect();
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        }
    }

    #[test]
    fn serialized_results_validate_against_the_json_schema() {
        let schema: serde_json::Value = serde_json::from_str(JSON_SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let mut r = sample();
        r.noise = Some(Noise {
            other_cpu_pct: 37.5,
            steal_ms: 0.0,
            involuntary_switches: 1500,
            load_start: 1.5,
            load_end: 2.25,
        });
        let mut way = r.tests[0].clone();
        way.name = "io::bytes_to_device::uart".into();
        way.behaviour = Some("io::bytes_to_device".into());
        way.section = Some(paths::Section {
            ops: 8,
            accesses: 16,
            userspace_exits: [("io".to_string(), 16)].into(),
            kvm_stats: [("exits".to_string(), 17)].into(),
        });
        way.metrics.insert("result".into(), MetricValue { value: 7.0, unit: "fnv1a32".into() });
        r.tests.push(way);
        r.paths = paths::table(&r.tests);
        assert_eq!(r.paths.len(), 1);
        let value = serde_json::to_value(&r).unwrap();
        let errors: Vec<String> =
            validator.iter_errors(&value).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{errors:#?}");
        let mut broken = value.clone();
        broken["tests"][0]["outcome"] = "maybe".into();
        assert!(!validator.is_valid(&broken), "an unknown outcome must not validate");
        let mut broken = value.clone();
        broken["paths"][0]["ways"][0]["path"] = "sideways".into();
        assert!(!validator.is_valid(&broken), "an unknown path in the table must not validate");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40Z");
        let t = UNIX_EPOCH + std::time::Duration::new(1, 5);
        assert_eq!(run_file_name(t, 42, "a b", "kvm_pvm"), "1970-01-01T000001.000000005Z-42-a_b-kvm_pvm.json");
    }
}
