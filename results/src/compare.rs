//! Differences between two results files: outcomes, benchmarks beyond their noise, host facts.
//!
//! An outcome is *good* when it does not fail a run (pass, skip, xfail, the watchdog's
//! expected timeout) and *bad* otherwise. Good to bad is a regression, bad to good an
//! improvement, and any other change of outcome or failure signature (see
//! [`crate::signature`]: live values never count) is a change. A benchmark differs only
//! when a rank-sum test over both runs' samples says so, the medians are further apart
//! than both spreads together, and the change is at least the minimum effect
//! ([`DEFAULT_MIN_EFFECT`] unless the caller states another); a record with
//! too few samples is shown but never called a difference. Every benchmark unit hvprobe
//! uses (cycles, nanoseconds, seconds) is lower-is-better. Host facts that change with
//! every boot or vCPU (APIC IDs in CPUID) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::paths::PathBehaviour;
use crate::{Benchmark, Outcome, Results, TestResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Regression,
    Improvement,
    Changed,
    Added,
    Removed,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Regression => "regression",
            Change::Improvement => "improvement",
            Change::Changed => "changed",
            Change::Added => "added",
            Change::Removed => "removed",
        }
    }
}

/// Which run a side of the comparison is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunLabel {
    pub hostname: String,
    pub backend: String,
    pub kernel: String,
    pub cpu_model: String,
    pub started: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TestChange {
    pub name: String,
    pub change: Change,
    pub before: Option<Outcome>,
    pub after: Option<Outcome>,
    pub before_reason: Option<String>,
    pub after_reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchChange {
    pub name: String,
    pub unit: String,
    pub change: Change,
    /// (median, spread) on each side; None where the benchmark is missing.
    pub before: Option<(f64, f64)>,
    pub after: Option<(f64, f64)>,
    /// after / before of the medians.
    pub ratio: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostChange {
    pub field: String,
    pub before: String,
    pub after: String,
}

/// A difference in the path table: whether a behaviour's ways agree, or whether a way's
/// path claim held (see [`crate::paths`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathChange {
    pub behaviour: String,
    /// None for the behaviour's agreement of results.
    pub way: Option<String>,
    pub before: String,
    pub after: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub before: RunLabel,
    pub after: RunLabel,
    pub tests: Vec<TestChange>,
    pub benchmarks: Vec<BenchChange>,
    /// Benchmarks on both sides with too few samples to test (one-figure records such as
    /// `suite::wall_time`): shown for information, never a difference.
    pub untested_benchmarks: Vec<BenchChange>,
    pub host: Vec<HostChange>,
    pub paths: Vec<PathChange>,
    /// The smallest benchmark change reported (a factor less one).
    pub min_effect: f64,
    /// Tests and benchmarks present and equal on both sides.
    pub unchanged_tests: usize,
    pub unchanged_benchmarks: usize,
}

/// What identifies a failure, without its live values (see [`crate::signature`]).
fn signature(t: &TestResult) -> Option<String> {
    t.failure.as_ref().map(crate::Failure::signature)
}

fn label(r: &Results) -> RunLabel {
    RunLabel {
        hostname: r.host.hostname.clone(),
        backend: r.host.backend.clone(),
        kernel: r.host.kernel.clone(),
        cpu_model: r.host.cpu_model.clone(),
        started: r.started.clone(),
    }
}

/// `before` and `after` compared with the default minimum effect.
pub fn compare(before: &Results, after: &Results) -> Comparison {
    compare_with(before, after, DEFAULT_MIN_EFFECT)
}

/// `before` and `after` compared; a benchmark must change by at least `min_effect` (a
/// factor less one) to count.
pub fn compare_with(before: &Results, after: &Results, min_effect: f64) -> Comparison {
    let (tests, unchanged_tests) = compare_tests(&before.tests, &after.tests);
    let (benchmarks, untested_benchmarks, unchanged_benchmarks) =
        compare_benchmarks(&before.benchmarks, &after.benchmarks, min_effect);
    Comparison {
        before: label(before),
        after: label(after),
        tests,
        benchmarks,
        untested_benchmarks,
        min_effect,
        host: compare_hosts(before, after),
        paths: compare_paths(&before.paths, &after.paths),
        unchanged_tests,
        unchanged_benchmarks,
    }
}

/// Items of both sides paired by name, in name order, with `None` where a side lacks one.
fn pair_by_name<'a, T>(
    before: &'a [T],
    after: &'a [T],
    name: fn(&T) -> &str,
) -> Vec<(&'a str, Option<&'a T>, Option<&'a T>)> {
    let a: BTreeMap<&str, &T> = before.iter().map(|x| (name(x), x)).collect();
    let b: BTreeMap<&str, &T> = after.iter().map(|x| (name(x), x)).collect();
    let names: BTreeSet<&str> = a.keys().chain(b.keys()).copied().collect();
    names.into_iter().map(|n| (n, a.get(n).copied(), b.get(n).copied())).collect()
}

fn compare_tests(before: &[TestResult], after: &[TestResult]) -> (Vec<TestChange>, usize) {
    let mut changes = Vec::new();
    let mut unchanged = 0;
    for (name, x, y) in pair_by_name(before, after, |t| &t.name) {
        let change = match (x, y) {
            (Some(x), Some(y)) => match (!x.fails_run(), !y.fails_run()) {
                (true, false) => Change::Regression,
                (false, true) => Change::Improvement,
                _ if x.outcome != y.outcome || signature(x) != signature(y) => Change::Changed,
                _ => {
                    unchanged += 1;
                    continue;
                }
            },
            (_, None) => Change::Removed,
            (None, _) => Change::Added,
        };
        changes.push(TestChange {
            name: name.to_string(),
            change,
            before: x.map(|t| t.outcome),
            after: y.map(|t| t.outcome),
            before_reason: x.and_then(|t| t.reason.clone()),
            after_reason: y.and_then(|t| t.reason.clone()),
        });
    }
    (changes, unchanged)
}

/// The smallest change of a median `compare` reports by default, as a factor less one in
/// either direction (1.0: the figure doubled or halved). The samples of one run are taken
/// within a second, so they cannot show how much a figure moves between runs; on the
/// shared development machines one figure moved by up to 1.62x between back-to-back runs
/// of the same build (20 ordered pairs of 5 runs), so a smaller change there is not
/// evidence. On a quiet, dedicated host state a smaller minimum (`--min-effect 0.05`).
pub const DEFAULT_MIN_EFFECT: f64 = 1.0;
/// The significance level of the rank-sum test: two runs of the same build compared
/// pairwise must not raise false alarms.
pub const ALPHA: f64 = 0.001;
/// Fewer samples than this on either side: shown, never called significant.
pub const MIN_SAMPLES: usize = 5;

/// Whether two benchmark records differ: a Mann-Whitney rank-sum test over their samples
/// says so at [`ALPHA`], the medians are further apart than both spreads, and the larger
/// median is at least `1 + min_effect` times the smaller. `None` when either side has too
/// few samples to test.
pub fn benchmark_differs(x: &Benchmark, y: &Benchmark, min_effect: f64) -> Option<bool> {
    if x.sample_values.len() < MIN_SAMPLES || y.sample_values.len() < MIN_SAMPLES {
        return None;
    }
    let gap = (y.median - x.median).abs();
    let beyond_spread = gap > x.spread.abs() + y.spread.abs();
    let (lo, hi) = (x.median.abs().min(y.median.abs()), x.median.abs().max(y.median.abs()));
    let large = hi >= (1.0 + min_effect) * lo;
    Some(beyond_spread && large && rank_sum_p(&x.sample_values, &y.sample_values) < ALPHA)
}

/// Two-sided p-value of the Mann-Whitney U test (normal approximation with the tie
/// correction and a continuity correction; adequate from about five samples a side).
pub fn rank_sum_p(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let mut all: Vec<(f64, bool)> = a.iter().map(|&v| (v, true)).chain(b.iter().map(|&v| (v, false))).collect();
    all.sort_by(|p, q| p.0.total_cmp(&q.0));
    let (mut rank_a, mut tie_term, mut i) = (0.0, 0.0, 0);
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let mid_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_a += mid_rank * all[i..=j].iter().filter(|x| x.1).count() as f64;
        tie_term += t * t * t - t;
        i = j + 1;
    }
    let u = rank_a - n1 * (n1 + 1.0) / 2.0;
    let mean = n1 * n2 / 2.0;
    let n = n1 + n2;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if var <= 0.0 {
        return 1.0;
    }
    let z = ((u - mean).abs() - 0.5).max(0.0) / var.sqrt();
    erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Numerical Recipes' erfcc, fractional error below
/// 1.2e-7), enough for a p-value.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

fn compare_benchmarks(
    before: &[Benchmark],
    after: &[Benchmark],
    min_effect: f64,
) -> (Vec<BenchChange>, Vec<BenchChange>, usize) {
    // A benchmark is its name and unit: one operation is reported in cycles and in ns.
    let key = |b: &Benchmark| (b.name.clone(), b.unit.clone());
    let a: BTreeMap<(String, String), &Benchmark> = before.iter().map(|b| (key(b), b)).collect();
    let b: BTreeMap<(String, String), &Benchmark> = after.iter().map(|b| (key(b), b)).collect();
    let keys: BTreeSet<&(String, String)> = a.keys().chain(b.keys()).collect();
    let (mut changes, mut untested) = (Vec::new(), Vec::new());
    let mut unchanged = 0;
    for k in keys {
        let (x, y) = (a.get(k).copied(), b.get(k).copied());
        let ratio = match (x, y) {
            (Some(x), Some(y)) if x.median != 0.0 => Some(y.median / x.median),
            _ => None,
        };
        let record = |change| BenchChange {
            name: k.0.clone(),
            unit: k.1.clone(),
            change,
            before: x.map(|b| (b.median, b.spread)),
            after: y.map(|b| (b.median, b.spread)),
            ratio,
        };
        match (x, y) {
            (Some(x), Some(y)) => match benchmark_differs(x, y, min_effect) {
                None => untested.push(record(Change::Changed)),
                Some(false) => unchanged += 1,
                Some(true) => {
                    changes.push(record(if y.median > x.median { Change::Regression } else { Change::Improvement }))
                }
            },
            (_, None) => changes.push(record(Change::Removed)),
            (None, _) => changes.push(record(Change::Added)),
        }
    }
    (changes, untested, unchanged)
}

/// Behaviours and ways on both sides whose agreement or claim differs; ways on one side
/// only are already test changes.
fn compare_paths(before: &[PathBehaviour], after: &[PathBehaviour]) -> Vec<PathChange> {
    let word = |v: Option<bool>, yes: &str, no: &str| v.map_or("unknown", |v| if v { yes } else { no }).to_string();
    let mut out = Vec::new();
    for (name, x, y) in pair_by_name(before, after, |b| &b.behaviour) {
        let (Some(x), Some(y)) = (x, y) else { continue };
        if x.results_agree != y.results_agree {
            out.push(PathChange {
                behaviour: name.into(),
                way: None,
                before: word(x.results_agree, "results agree", "results differ"),
                after: word(y.results_agree, "results agree", "results differ"),
            });
        }
        for (way, p, q) in pair_by_name(&x.ways, &y.ways, |w| &w.way) {
            if let (Some(p), Some(q)) = (p, q)
                && p.claim_held != q.claim_held
            {
                out.push(PathChange {
                    behaviour: name.into(),
                    way: Some(way.into()),
                    before: word(p.claim_held, "claim held", "claim not held"),
                    after: word(q.claim_held, "claim held", "claim not held"),
                });
            }
        }
    }
    out
}

fn compare_hosts(a: &Results, b: &Results) -> Vec<HostChange> {
    let mut out = Vec::new();
    let mut field = |name: &str, x: String, y: String| {
        if x != y {
            out.push(HostChange { field: name.into(), before: x, after: y });
        }
    };
    let opt = |v: Option<String>| v.unwrap_or_else(|| "none".into());
    let (x, y) = (&a.host, &b.host);
    field("backend", x.backend.clone(), y.backend.clone());
    field("kernel", x.kernel.clone(), y.kernel.clone());
    field("cpu_vendor", x.cpu_vendor.clone(), y.cpu_vendor.clone());
    field("cpu_model", x.cpu_model.clone(), y.cpu_model.clone());
    field(
        "kvm_api_version",
        opt(x.kvm_api_version.map(|v| v.to_string())),
        opt(y.kvm_api_version.map(|v| v.to_string())),
    );
    field("tsc_khz", opt(x.tsc_khz.map(|v| v.to_string())), opt(y.tsc_khz.map(|v| v.to_string())));
    let caps: BTreeSet<&String> = x.capabilities.keys().chain(y.capabilities.keys()).collect();
    for cap in caps {
        let v = |h: &crate::Host| opt(h.capabilities.get(cap).map(|v| v.to_string()));
        field(&format!("capability {cap}"), v(x), v(y));
    }
    let leaves = |h: &crate::Host| -> BTreeMap<(u32, u32), [u32; 4]> {
        h.cpuid.iter().map(|e| ((e.leaf, e.subleaf), [e.eax, e.ebx, e.ecx, e.edx])).collect()
    };
    let (lx, ly) = (leaves(x), leaves(y));
    if lx.is_empty() != ly.is_empty() {
        // One side did not record CPUID (an older file): one line says so, not one per leaf.
        let count = |l: &BTreeMap<(u32, u32), [u32; 4]>| {
            if l.is_empty() { "not recorded".to_string() } else { format!("{} leaves", l.len()) }
        };
        field("cpuid", count(&lx), count(&ly));
        return out;
    }
    let keys: BTreeSet<&(u32, u32)> = lx.keys().chain(ly.keys()).collect();
    for key @ (leaf, subleaf) in keys {
        match (lx.get(key), ly.get(key)) {
            (Some(p), Some(q)) => {
                let live = per_vcpu_bits(*leaf);
                for (i, reg) in ["eax", "ebx", "ecx", "edx"].iter().enumerate() {
                    field(
                        &format!("cpuid {leaf:#x}.{subleaf} {reg}"),
                        format!("{:#010x}", p[i] & !live[i]),
                        format!("{:#010x}", q[i] & !live[i]),
                    );
                }
            }
            (p, q) => {
                let show = |r: Option<&[u32; 4]>| r.map_or("absent".into(), |r| format!("{r:08x?}"));
                field(&format!("cpuid {leaf:#x}.{subleaf}"), show(p), show(q));
            }
        }
    }
    out
}

fn render_bench_lines(s: &mut String, lines: &[BenchChange]) {
    let fmt = |v: Option<(f64, f64)>| v.map_or("-".into(), |(m, sp)| format!("{m:.1} ±{sp:.1}"));
    for b in lines {
        let ratio = b.ratio.map_or(String::new(), |r| format!("  x{r:.2}"));
        let _ = writeln!(
            s,
            "  {:<12} {:<36} {:>16} -> {:<16} {}{ratio}",
            b.change.name(),
            b.name,
            fmt(b.before),
            fmt(b.after),
            b.unit
        );
    }
}

/// The bits of a CPUID leaf (eax, ebx, ecx, edx) that name the vCPU or the host CPU the
/// query happened to run on, not what the host offers: the initial APIC ID in leaf 1
/// EBX[31:24], the x2APIC ID in leaves 0xb and 0x1f EDX, and the extended APIC, core and
/// node IDs in leaf 0x8000001e. They change between boots and runs; compare leaves them out.
fn per_vcpu_bits(leaf: u32) -> [u32; 4] {
    match leaf {
        1 => [0, 0xff00_0000, 0, 0],
        0xb | 0x1f => [0, 0, 0, u32::MAX],
        0x8000_001e => [u32::MAX, 0xff, 0xff, 0],
        _ => [0; 4],
    }
}

/// When a comparison should fail a CI job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOn {
    /// A test or benchmark regressed.
    Regressions,
    /// Anything differs: tests, benchmarks or host facts.
    Any,
    Never,
}

impl FailOn {
    /// The names `--fail-on` takes.
    pub const NAMES: [&'static str; 3] = ["regressions", "any", "never"];
}

impl std::str::FromStr for FailOn {
    type Err = String;

    fn from_str(s: &str) -> Result<FailOn, String> {
        match s {
            "regressions" => Ok(FailOn::Regressions),
            "any" => Ok(FailOn::Any),
            "never" => Ok(FailOn::Never),
            other => Err(format!("{other:?} is not one of {}", FailOn::NAMES.join(", "))),
        }
    }
}

impl Comparison {
    pub fn regressions(&self) -> usize {
        self.tests.iter().filter(|t| t.change == Change::Regression).count()
            + self.benchmarks.iter().filter(|b| b.change == Change::Regression).count()
    }

    /// The two runs' CPU models where they differ: the differences are then between two
    /// machines, not only two runs.
    pub fn cpu_changed(&self) -> Option<(&str, &str)> {
        (self.before.cpu_model != self.after.cpu_model)
            .then_some((self.before.cpu_model.as_str(), self.after.cpu_model.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.tests.is_empty() && self.benchmarks.is_empty() && self.host.is_empty() && self.paths.is_empty()
    }

    pub fn fails(&self, on: FailOn) -> bool {
        match on {
            FailOn::Regressions => self.regressions() > 0,
            FailOn::Any => !self.is_empty(),
            FailOn::Never => false,
        }
    }

    fn render_untested(&self, s: &mut String) {
        if self.untested_benchmarks.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "for information, too few samples to test ({} or fewer a side; never a difference):",
            MIN_SAMPLES - 1
        );
        render_bench_lines(s, &self.untested_benchmarks);
    }

    /// A report for people: what changed, grouped, most important first.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let side = |l: &RunLabel| {
            format!("{} ({}, {}, {}) started {}", l.hostname, l.backend, l.kernel, l.cpu_model, l.started)
        };
        let _ = writeln!(s, "before: {}\nafter:  {}", side(&self.before), side(&self.after));
        if self.cpu_changed().is_some() {
            let _ = writeln!(s, "the CPU changed: the differences below are between two machines, not only two runs");
        }
        s.push('\n');
        if self.is_empty() {
            let _ = writeln!(
                s,
                "no differences ({} tests, {} benchmarks compared)",
                self.unchanged_tests, self.unchanged_benchmarks
            );
            self.render_untested(&mut s);
            return s;
        }
        if !self.tests.is_empty() {
            let _ = writeln!(s, "tests ({} unchanged):", self.unchanged_tests);
            let mut tests: Vec<&TestChange> = self.tests.iter().collect();
            tests.sort_by_key(|t| (t.change, t.name.clone()));
            let outcome = |o: Option<Outcome>| o.map_or("-", Outcome::name);
            for t in tests {
                let _ = writeln!(
                    s,
                    "  {:<12} {:<44} {:>7} -> {:<7}",
                    t.change.name(),
                    t.name,
                    outcome(t.before),
                    outcome(t.after)
                );
                if let Some(r) = t.after_reason.as_ref().or(t.before_reason.as_ref()) {
                    let _ = writeln!(s, "               {r}");
                }
            }
        }
        if !self.benchmarks.is_empty() {
            let _ = writeln!(
                s,
                "benchmarks that changed (rank-sum p < {ALPHA}, beyond both spreads, by x{:.2} or more; {} did not):",
                1.0 + self.min_effect,
                self.unchanged_benchmarks
            );
            render_bench_lines(&mut s, &self.benchmarks);
        }
        self.render_untested(&mut s);
        if !self.paths.is_empty() {
            let _ = writeln!(s, "path table:");
            for p in &self.paths {
                let what = p.way.as_ref().map_or(p.behaviour.clone(), |w| format!("{}::{w}", p.behaviour));
                let _ = writeln!(s, "  {what:<44} {} -> {}", p.before, p.after);
            }
        }
        if !self.host.is_empty() {
            let _ = writeln!(s, "host facts:");
            for h in &self.host {
                let _ = writeln!(s, "  {:<40} {} -> {}", h.field, h.before, h.after);
            }
        }
        let _ = writeln!(
            s,
            "\n{} regression(s), {} test change(s), {} benchmark change(s), {} path-table change(s), {} host difference(s)",
            self.regressions(),
            self.tests.len(),
            self.benchmarks.len(),
            self.paths.len(),
            self.host.len()
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuidEntry;

    fn bench(name: &str, median: f64, spread: f64) -> Benchmark {
        Benchmark::new(name, "cycles", median, spread, 10)
    }

    #[test]
    fn identical_runs_have_no_differences() {
        let r = crate::tests::sample();
        let c = compare(&r, &r);
        assert!(c.is_empty());
        assert_eq!(c.unchanged_tests, r.tests.len());
        assert!(!c.fails(FailOn::Any));
        assert!(c.render().contains("no differences"));
        assert!(!c.render().contains("the CPU changed"));
    }

    #[test]
    fn a_changed_cpu_is_said_before_the_differences() {
        let a = crate::tests::sample();
        let mut b = a.clone();
        b.host.cpu_model = "Intel(R) Xeon(R) Processor".into();
        let text = compare(&a, &b).render();
        assert!(text.contains("Intel(R) Xeon(R) Processor) started"), "{text}");
        assert!(text.contains("the CPU changed: the differences below are between two machines"), "{text}");
    }

    #[test]
    fn outcome_changes_are_classified() {
        let a = crate::tests::sample();
        let mut b = a.clone();
        let pass = b.tests.iter().position(|t| t.outcome == Outcome::Pass).unwrap();
        let fail = b.tests.iter().position(|t| t.outcome == Outcome::Fail).unwrap();
        let skip = b.tests.iter().position(|t| t.outcome == Outcome::Skip).unwrap();
        b.tests[pass].outcome = Outcome::Fail;
        b.tests[fail].outcome = Outcome::Pass;
        b.tests[skip].outcome = Outcome::Xfail;
        b.tests.pop();
        let c = compare(&a, &b);
        let kind = |i: usize| c.tests.iter().find(|t| t.name == a.tests[i].name).map(|t| t.change);
        assert_eq!(kind(pass), Some(Change::Regression));
        assert_eq!(kind(fail), Some(Change::Improvement));
        assert_eq!(kind(skip), Some(Change::Changed), "skip -> xfail: both good, still a difference");
        assert_eq!(kind(a.tests.len() - 1), Some(Change::Removed));
        assert_eq!(c.regressions(), 1);
        assert!(c.fails(FailOn::Regressions) && !c.fails(FailOn::Never));
        let text = c.render();
        assert!(text.contains("regression") && text.contains(&a.tests[pass].name), "{text}");
    }

    #[test]
    fn path_claims_and_agreement_that_differ_are_reported() {
        use crate::paths::PathWay;
        let way = |held| PathWay {
            test: "io::b::ring".into(),
            way: "ring".into(),
            path: "para".into(),
            outcome: Outcome::Pass,
            result: None,
            cost_cycles: Some(10.0),
            cost_ratio: Some(1.0),
            userspace_exits_per_access: Some(0.0),
            interventions_per_access: Some(1.0),
            claim: "no exit to userspace".into(),
            claim_held: held,
        };
        let mut a = crate::tests::sample();
        a.paths =
            vec![PathBehaviour { behaviour: "io::b".into(), results_agree: Some(true), ways: vec![way(Some(true))] }];
        let mut b = a.clone();
        b.paths[0].ways[0].claim_held = Some(false);
        b.paths[0].results_agree = Some(false);
        let c = compare(&a, &b);
        assert_eq!(c.paths.len(), 2);
        assert!(c.fails(FailOn::Any) && !c.fails(FailOn::Regressions));
        let text = c.render();
        assert!(text.contains("io::b::ring") && text.contains("claim held -> claim not held"), "{text}");
        assert!(compare(&a, &a).paths.is_empty());
    }

    #[test]
    fn a_new_failure_signature_is_a_change() {
        let a = crate::tests::sample();
        let mut b = a.clone();
        let fail = b.tests.iter().position(|t| t.outcome == Outcome::Fail).unwrap();
        b.tests[fail].failure.as_mut().unwrap().insn_bytes = Some("cc".into());
        let c = compare(&a, &b);
        assert_eq!(c.tests.len(), 1);
        assert_eq!(c.tests[0].change, Change::Changed);
    }

    /// A record with `n` samples spread evenly over median ± spread.
    fn sampled(name: &str, median: f64, spread: f64, n: usize) -> Benchmark {
        let mut b = bench(name, median, spread);
        b.samples = n as u64;
        b.sample_values = (0..n).map(|i| median - spread + 2.0 * spread * i as f64 / (n - 1).max(1) as f64).collect();
        b
    }

    #[test]
    fn benchmarks_differ_only_when_the_samples_say_so_and_the_effect_is_large() {
        let mut a = crate::tests::sample();
        let mut b = a.clone();
        a.benchmarks = vec![
            sampled("cpuid", 1000.0, 30.0, 15),
            sampled("hlt", 500.0, 10.0, 15),
            sampled("small", 1000.0, 1.0, 15),
            bench("suite::wall_time", 10.0, 0.0),
            bench("gone", 1.0, 0.0),
        ];
        b.benchmarks = vec![
            sampled("cpuid", 1050.0, 30.0, 15),
            sampled("hlt", 400.0, 10.0, 15),
            sampled("small", 1050.0, 1.0, 15),
            bench("suite::wall_time", 20.0, 0.0),
            bench("new", 1.0, 0.0),
        ];
        let c = compare(&a, &b);
        let get = |n: &str| c.benchmarks.iter().find(|x| x.name == n).map(|x| x.change);
        assert_eq!(get("cpuid"), None, "a 50-cycle gap is within 30 + 30 of spread");
        assert_eq!(get("small"), None, "5% is below the minimum effect, however clear");
        assert_eq!(get("hlt"), None, "x1.25 is within the default minimum effect");
        assert_eq!(get("gone"), Some(Change::Removed));
        assert_eq!(get("new"), Some(Change::Added));
        assert_eq!(get("suite::wall_time"), None, "one sample is never significant");
        assert_eq!(c.untested_benchmarks.len(), 1);
        assert!(c.render().contains("too few samples"), "{}", c.render());
        let c = compare_with(&a, &b, 0.10);
        let get = |n: &str| c.benchmarks.iter().find(|x| x.name == n).map(|x| x.change);
        assert_eq!(get("hlt"), Some(Change::Improvement), "x1.25 with a stated minimum of 10%");
        assert_eq!(get("small"), None);
        b.benchmarks[0] = sampled("cpuid", 2500.0, 30.0, 15);
        let c = compare(&a, &b);
        let cpuid = c.benchmarks.iter().find(|x| x.name == "cpuid").unwrap();
        assert_eq!(cpuid.change, Change::Regression);
        assert!((cpuid.ratio.unwrap() - 2.5).abs() < 1e-9);
        b.benchmarks[0] = sampled("cpuid", 400.0, 30.0, 15);
        assert_eq!(compare(&a, &b).benchmarks[0].change, Change::Improvement, "halved or better");
        // Only the one-sample record differs: nothing for --fail-on any.
        let mut same = a.clone();
        same.benchmarks[3].median = 99.0;
        assert!(!compare(&a, &same).fails(FailOn::Any));
    }

    #[test]
    fn the_rank_sum_test_separates_shifted_samples_from_noise() {
        let x: Vec<f64> = (0..15).map(|i| 100.0 + f64::from(i % 5)).collect();
        let shifted: Vec<f64> = x.iter().map(|v| v + 20.0).collect();
        assert!(rank_sum_p(&x, &shifted) < 1e-4);
        let interleaved: Vec<f64> = x.iter().map(|v| v + 0.5).collect();
        assert!(rank_sum_p(&x, &interleaved) > 0.3);
        assert!((rank_sum_p(&x, &x) - 1.0).abs() < 1e-6, "identical samples, ties everywhere");
        assert!((erfc(0.0) - 1.0).abs() < 1e-7 && (erfc(1.0) - 0.157_299_2).abs() < 1e-6);
    }

    #[test]
    fn apic_ids_in_cpuid_are_not_host_differences() {
        let mut a = crate::tests::sample();
        a.host.cpuid.push(CpuidEntry { leaf: 0xb, subleaf: 0, eax: 1, ebx: 2, ecx: 0x100, edx: 0 });
        let mut b = a.clone();
        b.host.cpuid[0].ebx = (a.host.cpuid[0].ebx & 0x00ff_ffff) | 1 << 24;
        b.host.cpuid[1].edx = 1;
        assert!(compare(&a, &b).host.is_empty());
        b.host.cpuid[0].ebx ^= 0x100;
        assert_eq!(compare(&a, &b).host.len(), 1, "the CLFLUSH size is a fact");
    }

    #[test]
    fn host_differences_name_the_fact() {
        let a = crate::tests::sample();
        let mut b = a.clone();
        b.host.backend = "kvm_intel".into();
        b.host.capabilities.insert("KVM_CAP_IRQCHIP".into(), 0);
        b.host.cpuid[0].ecx ^= 1 << 22;
        b.host.cpuid.push(CpuidEntry { leaf: 7, subleaf: 0, eax: 1, ebx: 2, ecx: 3, edx: 4 });
        let mut old = a.clone();
        old.host.cpuid.clear();
        let c = compare(&old, &b);
        assert_eq!(c.host.iter().filter(|h| h.field.starts_with("cpuid")).count(), 1, "unrecorded CPUID is one line");
        let c = compare(&a, &b);
        let fields: Vec<&str> = c.host.iter().map(|h| h.field.as_str()).collect();
        assert!(fields.contains(&"backend"));
        assert!(fields.contains(&"capability KVM_CAP_IRQCHIP"));
        assert!(fields.contains(&"cpuid 0x1.0 ecx"));
        assert!(fields.contains(&"cpuid 0x7.0"));
        assert!(c.fails(FailOn::Any) && !c.fails(FailOn::Regressions));
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["host"][0]["field"], "backend");
    }
}
