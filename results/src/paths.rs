//! The path table: each behaviour that several cases reach through different paths
//! (`full`, `para`, `hw`), whether every way produced the same result, what each cost,
//! and whether the hypervisor handled each way as its path claims.
//!
//! A case joins the table by carrying a [`Section`] and a `behaviour` (the guest's
//! `PATH_TABLE` flag); its `result` metric is what the behaviour produced and its `cost`
//! metric the guest cycles per operation. The claims, checked on the section's counts:
//! - `full`: the hypervisor intervened in every access (an exit to userspace, a VM exit
//!   or an emulated instruction per access, at least);
//! - `para`: no exit to userspace at all;
//! - `hw`: fewer interventions than accesses (the CPU did the work).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::{MetricValue, Outcome, TestResult};

/// What happened inside a path-table case's measured section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// Operations of the behaviour (the unit of `cost`: a byte, a clock read, an IPI).
    pub ops: u64,
    /// Accesses to the interface that carried them (port or MMIO accesses, MSR writes,
    /// hypercalls, doorbells): what the claims are checked per.
    pub accesses: u64,
    /// Exits to the VMM in the section, by kind (`io`, `mmio`, `other`).
    pub userspace_exits: BTreeMap<String, u64>,
    /// Changes of KVM's per-vCPU statistics over the section; empty when the host has
    /// none (KVM_GET_STATS_FD).
    pub kvm_stats: BTreeMap<String, u64>,
}

impl Section {
    pub fn userspace_exits_total(&self) -> u64 {
        self.userspace_exits.values().sum()
    }

    /// `n` per access to the interface.
    pub fn per_access(&self, n: u64) -> f64 {
        n as f64 / self.accesses.max(1) as f64
    }

    /// Exits to userspace, VM exits and emulated instructions: every time the hypervisor
    /// stepped in. None without statistics.
    pub fn interventions(&self) -> Option<u64> {
        if self.kvm_stats.is_empty() {
            return None;
        }
        let stat = |n: &str| self.kvm_stats.get(n).copied().unwrap_or(0);
        Some(self.userspace_exits_total() + stat("exits") + stat("insn_emulation"))
    }
}

/// One behaviour, reached several ways.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathBehaviour {
    /// `area::behaviour`.
    pub behaviour: String,
    /// Whether every way that passed produced the same result; None with fewer than two.
    pub results_agree: Option<bool>,
    pub ways: Vec<PathWay>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathWay {
    pub test: String,
    /// The last part of the test's name: `uart`, `kvmclock`, `x2apic`...
    pub way: String,
    #[schemars(extend("enum" = crate::PATHS))]
    pub path: String,
    pub outcome: Outcome,
    pub result: Option<MetricValue>,
    /// Guest TSC cycles per operation.
    pub cost_cycles: Option<f64>,
    /// cost_cycles over that of the cheapest way that passed.
    pub cost_ratio: Option<f64>,
    /// Per access, over the section.
    pub userspace_exits_per_access: Option<f64>,
    pub interventions_per_access: Option<f64>,
    /// What the path claims, in words.
    pub claim: String,
    /// Whether the section bore the claim out; None without a section or statistics.
    pub claim_held: Option<bool>,
}

/// The claim of a path and whether `section` bears it out.
fn claim(path: &str, section: Option<&Section>) -> (String, Option<bool>) {
    match path {
        "full" => (
            "trapped: the hypervisor steps in at every access".into(),
            section.and_then(|s| s.interventions().map(|i| s.per_access(i) >= 1.0)),
        ),
        "para" => ("no exit to userspace".into(), section.map(|s| s.userspace_exits_total() == 0)),
        _ => (
            "native: fewer interventions than accesses".into(),
            section.and_then(|s| s.interventions().map(|i| s.per_access(i) < 1.0)),
        ),
    }
}

/// Results of two ways agree: exactly, or for a clock's measurement in parts per
/// million of the host's, within 2% (each is checked against the host within 1%).
fn agree(a: &MetricValue, b: &MetricValue) -> bool {
    a.unit == b.unit
        && if a.unit.starts_with("ppm") { (a.value - b.value).abs() <= 20_000.0 } else { a.value == b.value }
}

/// The path table of a run's tests, by behaviour in name order.
pub fn table(tests: &[TestResult]) -> Vec<PathBehaviour> {
    let mut groups: BTreeMap<&str, Vec<&TestResult>> = BTreeMap::new();
    for t in tests {
        if let Some(b) = &t.behaviour {
            groups.entry(b.as_str()).or_default().push(t);
        }
    }
    groups
        .into_iter()
        .map(|(behaviour, ways)| {
            let passed = |t: &&&TestResult| t.outcome == Outcome::Pass;
            let cheapest = ways
                .iter()
                .filter(passed)
                .filter_map(|t| t.metrics.get("cost").map(|m| m.value))
                .filter(|c| *c > 0.0)
                .fold(f64::INFINITY, f64::min);
            let results: Vec<&MetricValue> =
                ways.iter().filter(passed).filter_map(|t| t.metrics.get("result")).collect();
            let results_agree = (results.len() >= 2).then(|| results.windows(2).all(|w| agree(w[0], w[1])));
            let ways = ways
                .iter()
                .map(|t| {
                    let cost = t.metrics.get("cost").map(|m| m.value);
                    let section = t.section.as_ref();
                    let (claim, claim_held) = claim(&t.path, section);
                    PathWay {
                        test: t.name.clone(),
                        way: t.name.rsplit("::").next().unwrap_or(&t.name).to_string(),
                        path: t.path.clone(),
                        outcome: t.outcome,
                        result: t.metrics.get("result").cloned(),
                        cost_cycles: cost,
                        cost_ratio: cost.filter(|_| cheapest.is_finite()).map(|c| c / cheapest),
                        userspace_exits_per_access: section.map(|s| s.per_access(s.userspace_exits_total())),
                        interventions_per_access: section.and_then(|s| s.interventions().map(|i| s.per_access(i))),
                        claim,
                        claim_held,
                    }
                })
                .collect();
            PathBehaviour { behaviour: behaviour.to_string(), results_agree, ways }
        })
        .collect()
}

/// The table as text, for `hvprobe run`.
pub fn render(table: &[PathBehaviour]) -> String {
    let mut out = String::new();
    if table.is_empty() {
        return out;
    }
    let _ = writeln!(out, "the same behaviour by path (cost: guest cycles per operation; x: times the cheapest way)");
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".to_string(), f);
    for b in table {
        let agree = match b.results_agree {
            Some(true) => "results agree",
            Some(false) => "RESULTS DIFFER",
            None => "fewer than two results",
        };
        let _ = writeln!(out, "{}  ({agree})", b.behaviour);
        let _ = writeln!(
            out,
            "  {:<11} {:<4} {:<7} {:>22} {:>11} {:>7} {:>9} {:>9}  claim",
            "way", "path", "outcome", "result", "cost", "x", "user/acc", "hv/acc"
        );
        for w in &b.ways {
            let result = w.result.as_ref().map_or("-".to_string(), |m| format!("{} {}", m.value, m.unit));
            let held = match w.claim_held {
                Some(true) => "held",
                Some(false) => "NOT HELD",
                None => "unknown",
            };
            let _ = writeln!(
                out,
                "  {:<11} {:<4} {:<7} {:>22} {:>11} {:>7} {:>9} {:>9}  {held}: {}",
                w.way,
                w.path,
                w.outcome.name(),
                result,
                opt(w.cost_cycles, &|c| format!("{c:.0}")),
                opt(w.cost_ratio, &|r| format!("{r:.1}")),
                opt(w.userspace_exits_per_access, &|r| format!("{r:.2}")),
                opt(w.interventions_per_access, &|r| format!("{r:.2}")),
                w.claim
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn way(name: &str, path: &str, outcome: Outcome, result: f64, cost: f64, section: Section) -> TestResult {
        let mut t = crate::tests::sample().tests.remove(0);
        t.name = name.into();
        t.path = path.into();
        t.outcome = outcome;
        t.behaviour = Some(name.rsplit_once("::").unwrap().0.into());
        t.metrics = [
            ("result".to_string(), MetricValue { value: result, unit: "fnv1a32".into() }),
            ("cost".to_string(), MetricValue { value: cost, unit: "cycles".into() }),
        ]
        .into();
        t.section = Some(section);
        t
    }

    fn section(accesses: u64, user: u64, exits: u64, emulated: u64) -> Section {
        Section {
            ops: 100,
            accesses,
            userspace_exits: [("io".to_string(), user)].into(),
            kvm_stats: [("exits".to_string(), exits), ("insn_emulation".to_string(), emulated)].into(),
        }
    }

    #[test]
    fn ways_are_grouped_costed_and_their_claims_checked() {
        let tests = vec![
            way("io::bytes::uart", "full", Outcome::Pass, 7.0, 400.0, section(200, 200, 200, 0)),
            way("io::bytes::ring", "para", Outcome::Pass, 7.0, 100.0, section(4, 0, 4, 0)),
            way("io::bytes::hw", "hw", Outcome::Pass, 7.0, 200.0, section(100, 0, 30, 90)),
            way("io::other::x", "hw", Outcome::Fail, 1.0, 1.0, section(1, 1, 1, 1)),
        ];
        let t = table(&tests);
        assert_eq!(t.len(), 2);
        let b = &t[0];
        assert_eq!(b.behaviour, "io::bytes");
        assert_eq!(b.results_agree, Some(true));
        let by = |w: &str| b.ways.iter().find(|x| x.way == w).unwrap();
        assert_eq!(by("uart").cost_ratio, Some(4.0));
        assert_eq!(by("uart").claim_held, Some(true), "2 interventions per access");
        assert_eq!(by("ring").claim_held, Some(true), "no userspace exit");
        assert_eq!(by("hw").claim_held, Some(false), "1.2 interventions per access is not native");
        assert_eq!(t[1].results_agree, None, "a failed way's result does not count");
        assert_eq!(t[1].ways[0].cost_ratio, None, "no way passed, so nothing is the cheapest");
        let text = render(&t);
        assert!(text.contains("io::bytes  (results agree)") && text.contains("NOT HELD"), "{text}");
    }

    #[test]
    fn a_differing_result_a_ring_exit_and_missing_statistics_show() {
        let mut ring = section(4, 1, 4, 0);
        let mut tests = vec![
            way("io::bytes::fifo", "full", Outcome::Pass, 7.0, 400.0, section(100, 100, 100, 0)),
            way("io::bytes::ring", "para", Outcome::Pass, 8.0, 100.0, ring.clone()),
        ];
        let t = table(&tests);
        assert_eq!(t[0].results_agree, Some(false));
        assert_eq!(t[0].ways[1].claim_held, Some(false), "a ring that exited to userspace");
        ring.kvm_stats.clear();
        tests[0].section = Some(ring);
        assert_eq!(table(&tests)[0].ways[0].claim_held, None, "no statistics, no verdict on trapping");
        let ppm = |v| MetricValue { value: v, unit: "ppm_of_host".into() };
        assert!(agree(&ppm(1_004_000.0), &ppm(1_010_000.0)));
        assert!(!agree(&ppm(1_000_000.0), &ppm(1_030_000.0)));
    }
}
