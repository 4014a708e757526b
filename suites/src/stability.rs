//! Proving that verdicts are stable: the same cases run several times under changed
//! conditions (jobs, the order of cases, busy host threads beside them, another seed for
//! the generated cases), and every case
//! whose outcome or failure signature changed between passes is reported
//! (`hvprobe run --repeat N --perturb`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use hvprobe_harness::TestCase;
use hvprobe_results::{Outcome, TestResult};

/// The order cases are handed to the jobs in (cases that may wait out a limit still
/// start first; see the runner).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Catalogue,
    Reversed,
    /// A permutation from this seed.
    Shuffled(u64),
}

impl Order {
    pub fn apply<'a>(self, cases: &[&'a TestCase]) -> Vec<&'a TestCase> {
        let mut v = cases.to_vec();
        match self {
            Order::Catalogue => {}
            Order::Reversed => v.reverse(),
            Order::Shuffled(seed) => {
                // Fisher-Yates with splitmix64: a fixed seed gives the same order on every run.
                let mut state = seed;
                for i in (1..v.len()).rev() {
                    let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
                    v.swap(i, j);
                }
            }
        }
        v
    }

    pub fn describe(self) -> String {
        match self {
            Order::Catalogue => "catalogue order".into(),
            Order::Reversed => "reversed order".into(),
            Order::Shuffled(seed) => format!("shuffled (seed {seed:#x})"),
        }
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The conditions of one pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pass {
    pub jobs: usize,
    pub order: Order,
    /// Busy host threads spinning beside the cases, one per CPU.
    pub load: bool,
    /// Another seed for the generated cases (`$HVPROBE_SEED`'s role); None keeps the run's.
    pub seed: Option<u64>,
    /// Every vCPU's TSC starts at [`TSC_MOVED`] instead of where the backend starts it.
    pub tsc_moved: bool,
}

/// Where a "TSC moved" pass starts every vCPU's TSC: 2^52 cycles, about 20 days of uptime
/// at 2.6 GHz, so that a case that assumed a freshly booted host (a small TSC) shows.
pub const TSC_MOVED: u64 = 1 << 52;

/// The seed of the pass that changes it: any fixed value other than the default will do.
pub const OTHER_SEED: u64 = 0x5eed_0fa1_1ed0_0003;

impl Pass {
    pub fn describe(&self) -> String {
        format!(
            "{} job{}, {}{}{}{}",
            self.jobs,
            if self.jobs == 1 { "" } else { "s" },
            self.order.describe(),
            if self.load { ", busy host threads on every CPU" } else { "" },
            self.seed.map_or(String::new(), |s| format!(", generated cases with seed {s:#x}")),
            if self.tsc_moved { ", every vCPU's TSC started at 2^52 (about 20 days of uptime)" } else { "" }
        )
    }
}

/// `n` passes. Without `perturb` every pass is the first one again. With it, the passes
/// cycle through: as asked; one job in reversed order with the host loaded; `jobs` in
/// shuffled order with another seed for the generated cases and the guest TSC moved; one
/// job, shuffled, loaded; `jobs`, reversed, loaded, the TSC moved. Every plan of two
/// passes or more has at least one loaded pass and one with another order; from three
/// on, one with another seed and the TSC moved.
pub fn plan(n: usize, perturb: bool, jobs: usize) -> Vec<Pass> {
    let first = Pass { jobs, order: Order::Catalogue, load: false, seed: None, tsc_moved: false };
    let cycle = [
        first,
        Pass { jobs: 1, order: Order::Reversed, load: true, seed: None, tsc_moved: false },
        Pass { jobs, order: Order::Shuffled(0x5eed_0001), load: false, seed: Some(OTHER_SEED), tsc_moved: true },
        Pass { jobs: 1, order: Order::Shuffled(0x5eed_0002), load: true, seed: None, tsc_moved: false },
        Pass { jobs, order: Order::Reversed, load: true, seed: None, tsc_moved: true },
    ];
    (0..n).map(|i| if perturb { cycle[i % cycle.len()] } else { first }).collect()
}

/// Host threads that spin until dropped: the "busy machine" of a loaded pass.
pub struct BusyLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl BusyLoad {
    pub fn start(threads: usize) -> BusyLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|i| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut x = i as u64 + 1;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        }
                        std::hint::black_box(x);
                    }
                })
            })
            .collect();
        BusyLoad { stop, threads }
    }
}

impl Drop for BusyLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What a pass said of one case: its outcome and failure signature.
pub type Verdict = (Outcome, Option<String>);

fn verdict(t: &TestResult) -> Verdict {
    (t.outcome, t.failure.as_ref().map(hvprobe_results::Failure::signature))
}

/// A case whose verdict was not the same in every pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flip {
    pub name: String,
    /// One entry per pass, in pass order (None: the case did not run in that pass).
    pub verdicts: Vec<Option<Verdict>>,
}

/// Every case whose outcome or signature differs between the passes.
pub fn flips(passes: &[Vec<TestResult>]) -> Vec<Flip> {
    let mut by_name: BTreeMap<&str, Vec<Option<Verdict>>> = BTreeMap::new();
    for (i, pass) in passes.iter().enumerate() {
        for t in pass {
            by_name.entry(&t.name).or_insert_with(|| vec![None; passes.len()])[i] = Some(verdict(t));
        }
    }
    by_name
        .into_iter()
        .filter(|(_, v)| v.iter().any(|x| x != &v[0]))
        .map(|(name, verdicts)| Flip { name: name.into(), verdicts })
        .collect()
}

/// The report for people: one block per flip, each pass's verdict on its own line.
pub fn render(plan: &[Pass], passes: &[Vec<TestResult>], flips: &[Flip]) -> String {
    let mut s = String::new();
    let cases = passes.first().map_or(0, Vec::len);
    s += &format!("stability: {} passes of {cases} cases\n", passes.len());
    for (i, p) in plan.iter().enumerate() {
        s += &format!("  pass {}: {}\n", i + 1, p.describe());
    }
    if flips.is_empty() {
        s += &format!("no flips: every case gave the same outcome and signature in all {} passes\n", passes.len());
        return s;
    }
    s += &format!("{} case(s) flipped:\n", flips.len());
    for f in flips {
        s += &format!("  {}\n", f.name);
        for (i, v) in f.verdicts.iter().enumerate() {
            let text = match v {
                None => "did not run".to_string(),
                Some((o, None)) => o.name().to_string(),
                Some((o, Some(sig))) => format!("{} {sig}", o.name()),
            };
            s += &format!("    pass {}: {text}\n", i + 1);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, outcome: Outcome, message: Option<&str>) -> TestResult {
        let mut t: TestResult = serde_json::from_value(serde_json::json!({
            "name": name, "area": "cpu", "path": "hw", "mode": "long64", "outcome": outcome,
            "reason": null, "duration_ms": 1.0, "kvm_stats": {}, "metrics": {}, "failure": null,
            "console": null, "log": []
        }))
        .unwrap();
        t.failure = message.map(|m| hvprobe_results::Failure {
            end: "verdict".into(),
            description: String::new(),
            insn_bytes: None,
            message: Some(m.into()),
            file: None,
            line: None,
            expected: None,
            actual: None,
            cpu: None,
        });
        t
    }

    #[test]
    fn a_plan_of_perturbed_passes_changes_jobs_order_and_load() {
        let p = plan(5, true, 2);
        assert_eq!(p.len(), 5);
        assert_eq!(p[0], Pass { jobs: 2, order: Order::Catalogue, load: false, seed: None, tsc_moved: false });
        assert!(p.iter().any(|x| x.seed.is_some()), "one pass changes the generated cases' seed");
        assert!(plan(3, true, 2).iter().any(|x| x.tsc_moved), "three passes include one with the TSC moved");
        assert!(p[2].describe().contains("TSC started at 2^52"), "{}", p[2].describe());
        assert!(p.iter().any(|x| x.load) && p.iter().any(|x| !x.load));
        assert!(p.iter().any(|x| x.jobs == 1) && p.iter().any(|x| x.jobs == 2));
        assert!(p.iter().any(|x| x.order == Order::Reversed));
        assert!(p.iter().any(|x| matches!(x.order, Order::Shuffled(_))));
        assert!(plan(3, false, 2).iter().all(|x| *x == p[0]));
        assert!(plan(2, true, 2)[1].load, "two perturbed passes include a loaded one");
    }

    #[test]
    fn orders_are_permutations_and_repeat() {
        let names: Vec<String> = (0..20).map(|i| format!("cpu::c{i}::long64")).collect();
        let payload = crate::catalog::payload().unwrap();
        let cases: Vec<&TestCase> = payload.tests.iter().take(20).collect();
        assert_eq!(names.len(), cases.len());
        let a = Order::Shuffled(7).apply(&cases);
        let b = Order::Shuffled(7).apply(&cases);
        assert_eq!(a.iter().map(|c| &c.name).collect::<Vec<_>>(), b.iter().map(|c| &c.name).collect::<Vec<_>>());
        let mut sorted: Vec<&String> = a.iter().map(|c| &c.name).collect();
        sorted.sort();
        let mut orig: Vec<&String> = cases.iter().map(|c| &c.name).collect();
        orig.sort();
        assert_eq!(sorted, orig);
        assert_eq!(Order::Reversed.apply(&cases)[0].name, cases[19].name);
    }

    #[test]
    fn only_changed_outcomes_and_signatures_are_flips() {
        let p1 = vec![
            result("a", Outcome::Pass, None),
            result("b", Outcome::Xfail, Some("TSC moved by 0x2bd3f6a9 only")),
            result("c", Outcome::Fail, Some("wrong vector (#GP)")),
            result("d", Outcome::Pass, None),
        ];
        let mut p2 = p1.clone();
        p2[1].failure.as_mut().unwrap().message = Some("TSC moved by 0x3517c002 only".into());
        p2[2].failure.as_mut().unwrap().message = Some("wrong vector (#UD)".into());
        p2[3].outcome = Outcome::Timeout;
        let f = flips(&[p1.clone(), p2.clone()]);
        let names: Vec<&str> = f.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["c", "d"], "a live value is no flip; a new vector and a timeout are");
        let text = render(&plan(2, true, 2), &[p1.clone(), p2], &f);
        assert!(text.contains("2 case(s) flipped") && text.contains("pass 2: timeout"), "{text}");
        assert!(flips(&[p1.clone(), p1.clone(), p1]).is_empty());
    }

    #[test]
    fn busy_load_stops_when_dropped() {
        let load = BusyLoad::start(2);
        std::thread::sleep(std::time::Duration::from_millis(10));
        drop(load);
    }
}
