//! Differences between two results files: outcomes, benchmarks beyond their noise, host facts.
//!
//! An outcome is *good* when it does not fail a run (pass, skip, xfail, the watchdog's
//! expected timeout) and *bad* otherwise. Good to bad is a regression, bad to good an
//! improvement, and any other change of outcome or failure signature is a change. A
//! benchmark differs only when the gap between the medians is larger than the two
//! spreads together: noise that both runs measured does not count. Every benchmark unit
//! hvprobe uses (cycles, nanoseconds) is lower-is-better.

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
    pub host: Vec<HostChange>,
    pub paths: Vec<PathChange>,
    /// Tests and benchmarks present and equal on both sides.
    pub unchanged_tests: usize,
    pub unchanged_benchmarks: usize,
}

fn is_good(t: &TestResult) -> bool {
    match t.outcome {
        Outcome::Pass | Outcome::Skip | Outcome::Xfail => true,
        Outcome::Timeout => t.expected_timeout,
        Outcome::Fail | Outcome::Xpass | Outcome::Error => false,
    }
}

/// The parts of a failure that identify it (what expectation profiles match on).
fn signature(t: &TestResult) -> Option<(String, Option<String>, Option<String>)> {
    t.failure.as_ref().map(|f| (f.end.clone(), f.insn_bytes.clone(), f.message.clone()))
}

fn label(r: &Results) -> RunLabel {
    RunLabel {
        hostname: r.host.hostname.clone(),
        backend: r.host.backend.clone(),
        kernel: r.host.kernel.clone(),
        started: r.started.clone(),
    }
}

pub fn compare(before: &Results, after: &Results) -> Comparison {
    let (tests, unchanged_tests) = compare_tests(&before.tests, &after.tests);
    let (benchmarks, unchanged_benchmarks) = compare_benchmarks(&before.benchmarks, &after.benchmarks);
    Comparison {
        before: label(before),
        after: label(after),
        tests,
        benchmarks,
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
            (Some(x), Some(y)) => match (is_good(x), is_good(y)) {
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

fn compare_benchmarks(before: &[Benchmark], after: &[Benchmark]) -> (Vec<BenchChange>, usize) {
    // A benchmark is its name and unit: one operation is reported in cycles and in ns.
    let key = |b: &Benchmark| (b.name.clone(), b.unit.clone());
    let a: BTreeMap<(String, String), &Benchmark> = before.iter().map(|b| (key(b), b)).collect();
    let b: BTreeMap<(String, String), &Benchmark> = after.iter().map(|b| (key(b), b)).collect();
    let keys: BTreeSet<&(String, String)> = a.keys().chain(b.keys()).collect();
    let mut changes = Vec::new();
    let mut unchanged = 0;
    for k in keys {
        let (x, y) = (a.get(k).copied(), b.get(k).copied());
        let change = match (x, y) {
            (Some(x), Some(y)) => {
                let gap = y.median - x.median;
                if gap.abs() <= x.spread.abs() + y.spread.abs() {
                    unchanged += 1;
                    continue;
                }
                if gap > 0.0 { Change::Regression } else { Change::Improvement }
            }
            (_, None) => Change::Removed,
            (None, _) => Change::Added,
        };
        let ratio = match (x, y) {
            (Some(x), Some(y)) if x.median != 0.0 => Some(y.median / x.median),
            _ => None,
        };
        changes.push(BenchChange {
            name: k.0.clone(),
            unit: k.1.clone(),
            change,
            before: x.map(|b| (b.median, b.spread)),
            after: y.map(|b| (b.median, b.spread)),
            ratio,
        });
    }
    (changes, unchanged)
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
                for (i, reg) in ["eax", "ebx", "ecx", "edx"].iter().enumerate() {
                    field(
                        &format!("cpuid {leaf:#x}.{subleaf} {reg}"),
                        format!("{:#010x}", p[i]),
                        format!("{:#010x}", q[i]),
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

/// When a comparison should fail a CI job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOn {
    /// A test or benchmark regressed.
    Regressions,
    /// Anything differs: tests, benchmarks or host facts.
    Any,
    Never,
}

impl Comparison {
    pub fn regressions(&self) -> usize {
        self.tests.iter().filter(|t| t.change == Change::Regression).count()
            + self.benchmarks.iter().filter(|b| b.change == Change::Regression).count()
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

    /// A report for people: what changed, grouped, most important first.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let side = |l: &RunLabel| format!("{} ({}, {}) started {}", l.hostname, l.backend, l.kernel, l.started);
        let _ = writeln!(s, "before: {}\nafter:  {}\n", side(&self.before), side(&self.after));
        if self.is_empty() {
            let _ = writeln!(
                s,
                "no differences ({} tests, {} benchmarks compared)",
                self.unchanged_tests, self.unchanged_benchmarks
            );
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
            let _ = writeln!(s, "benchmarks beyond their spread ({} within it):", self.unchanged_benchmarks);
            let fmt = |v: Option<(f64, f64)>| v.map_or("-".into(), |(m, sp)| format!("{m:.1} ±{sp:.1}"));
            for b in &self.benchmarks {
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

    #[test]
    fn benchmarks_differ_only_beyond_both_spreads() {
        let mut a = crate::tests::sample();
        let mut b = a.clone();
        a.benchmarks = vec![bench("cpuid", 1000.0, 30.0), bench("hlt", 500.0, 10.0), bench("gone", 1.0, 0.0)];
        b.benchmarks = vec![bench("cpuid", 1050.0, 30.0), bench("hlt", 400.0, 10.0), bench("new", 1.0, 0.0)];
        let c = compare(&a, &b);
        let get = |n: &str| c.benchmarks.iter().find(|x| x.name == n).map(|x| x.change);
        assert_eq!(get("cpuid"), None, "a 50-cycle gap is within 30 + 30 of spread");
        assert_eq!(get("hlt"), Some(Change::Improvement));
        assert_eq!(get("gone"), Some(Change::Removed));
        assert_eq!(get("new"), Some(Change::Added));
        b.benchmarks[0].median = 1100.0;
        let c = compare(&a, &b);
        let cpuid = c.benchmarks.iter().find(|x| x.name == "cpuid").unwrap();
        assert_eq!(cpuid.change, Change::Regression);
        assert!((cpuid.ratio.unwrap() - 1.1).abs() < 1e-9);
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
