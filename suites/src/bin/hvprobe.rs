//! `hvprobe`: list the catalogue, run it on this host, print the host facts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use clap::builder::TypedValueParser as _;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use hvprobe_harness::{HostFacts, Kvm, TestCase};
use hvprobe_results::compare::FailOn;
use hvprobe_results::{Benchmark, CpuidEntry, Host, Outcome, Results, TestResult};
use hvprobe_suites::bench::{self, BenchConfig};
use hvprobe_suites::profile::{Profile, ProfileHost};
use hvprobe_suites::stability::{self, BusyLoad, Pass};
use hvprobe_suites::{Context, Phases, catalog, hooks, run_case_timed, runner};

/// What stops a run early: SIGINT, SIGTERM, or standard output closed under us (`hvprobe
/// run | head`). The first stops the running cases and writes what finished; a second
/// SIGINT or SIGTERM ends the process at once.
mod interrupt {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, OnceLock};

    static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    static SIGNAL: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
    static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

    /// Installs the handlers; returns the flag a run's cases watch.
    pub fn install() -> std::io::Result<Arc<AtomicBool>> {
        let stop = Arc::clone(STOP.get_or_init(|| Arc::new(AtomicBool::new(false))));
        let signal = Arc::clone(SIGNAL.get_or_init(|| Arc::new(AtomicUsize::new(0))));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // Registered first, so it sees the flag as the previous signal left it.
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&stop))?;
            signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize)?;
            signal_hook::flag::register(sig, Arc::clone(&stop))?;
        }
        Ok(stop)
    }

    pub fn stopped() -> bool {
        STOP.get().is_some_and(|s| s.load(Ordering::SeqCst))
    }

    /// Called when a write to standard output failed: the reader is gone.
    pub fn stdout_closed() {
        STDOUT_CLOSED.store(true, Ordering::SeqCst);
        if let Some(s) = STOP.get() {
            s.store(true, Ordering::SeqCst);
        }
    }

    pub fn is_stdout_closed() -> bool {
        STDOUT_CLOSED.load(Ordering::SeqCst)
    }

    /// Why the run stopped and the exit code that says so: 128 + the signal, as a shell
    /// reports a process the signal ended (130 SIGINT, 143 SIGTERM, 141 a closed pipe).
    pub fn reason() -> Option<(String, u8)> {
        if !stopped() {
            return None;
        }
        Some(match SIGNAL.get().map_or(0, |s| s.load(Ordering::SeqCst)) as i32 {
            signal_hook::consts::SIGINT => ("interrupted by SIGINT".into(), 130),
            signal_hook::consts::SIGTERM => ("stopped by SIGTERM".into(), 143),
            _ => ("standard output was closed".into(), 141),
        })
    }
}

/// `println!` that never panics: once standard output is gone (a closed pipe), it stops
/// the run instead (see [`interrupt`]) and writes nothing more.
macro_rules! say {
    () => { say_raw!("\n") };
    ($($arg:tt)*) => {{
        say_raw!("{}\n", format_args!($($arg)*))
    }};
}

/// `print!` that never panics (see [`say!`]).
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if !interrupt::is_stdout_closed() && write!(std::io::stdout().lock(), $($arg)*).is_err() {
            interrupt::stdout_closed();
        }
    }};
}

#[derive(Parser)]
#[command(name = "hvprobe", version, about = "Hypervisor conformance and performance probes on KVM")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the test cases (no VM is booted).
    List {
        /// Only names containing one of these substrings.
        #[arg(long, short)]
        filter: Vec<String>,
        /// Filters must match whole names.
        #[arg(long)]
        exact: bool,
        /// Print only the number of cases.
        #[arg(long)]
        count: bool,
        /// List the benchmarks instead of the test cases.
        #[arg(long)]
        bench: bool,
    },
    /// Run the cases on this host, print a report and write a results file.
    Run {
        /// Only names containing one of these substrings.
        #[arg(long, short)]
        filter: Vec<String>,
        /// Filters must match whole names.
        #[arg(long)]
        exact: bool,
        /// Cases run at once (each in its own VM), 1 to 1024. Default: the number of CPUs.
        #[arg(long, short, value_parser = clap::value_parser!(u16).range(1..=1024))]
        jobs: Option<u16>,
        /// Write the results here instead of results/runs/<time>-<host>-<backend>.json.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Directory for results when --json is not given.
        #[arg(long, default_value = "results/runs")]
        results_dir: PathBuf,
        /// Watchdog limit in seconds for cases that declare none.
        #[arg(long, default_value_t = runner::DEFAULT_TIMEOUT.as_secs_f64())]
        timeout: f64,
        /// Use this expectation profile instead of the backend's built-in one.
        #[arg(long)]
        profile: Option<PathBuf>,
        /// The KVM device (default: $HVPROBE_KVM, else /dev/kvm).
        #[arg(long)]
        kvm: Option<PathBuf>,
        /// Print the reason of every case, not only of failures.
        #[arg(long, short)]
        verbose: bool,
        /// Run the benchmarks that pass the filters too, after the cases, into the same
        /// results file (see `hvprobe bench`).
        #[arg(long)]
        bench: bool,
        /// With --bench: measure as `hvprobe bench --quick` does (2 ms batches, 10
        /// samples), for a smoke run such as CI's.
        #[arg(long, requires = "bench")]
        bench_quick: bool,
        /// Run the cases this many times and report every case whose outcome or failure
        /// signature changed between the passes; exit 1 if any did. The results file
        /// holds the first pass.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
        repeat: u32,
        /// With --repeat: change the conditions between passes (jobs, the order of cases,
        /// busy host threads beside them).
        #[arg(long, requires = "repeat")]
        perturb: bool,
    },
    /// Run the benchmarks: each guest operation in guest TSC cycles and host ns, the
    /// empty loop subtracted; each host operation next to its bare-ioctl floor.
    Bench {
        /// Only benchmarks whose names contain one of these substrings.
        #[arg(long, short)]
        filter: Vec<String>,
        /// Filters must match whole names.
        #[arg(long)]
        exact: bool,
        /// The wall time of one batch, in milliseconds; iteration counts follow from it.
        #[arg(long, default_value_t = 10.0)]
        budget_ms: f64,
        /// Samples per benchmark (at least 10).
        #[arg(long, default_value_t = 15)]
        samples: usize,
        /// A fast smoke run: 2 ms batches, 10 samples.
        #[arg(long)]
        quick: bool,
        /// Write the results here instead of results/runs/<time>-<host>-<backend>.json.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Directory for results when --json is not given.
        #[arg(long, default_value = "results/runs")]
        results_dir: PathBuf,
        /// Use this expectation profile instead of the backend's built-in one.
        #[arg(long)]
        profile: Option<PathBuf>,
        /// The KVM device (default: $HVPROBE_KVM, else /dev/kvm).
        #[arg(long)]
        kvm: Option<PathBuf>,
    },
    /// Compare two results files: test outcomes, benchmarks beyond their noise, host facts.
    Compare {
        /// The baseline (e.g. results/reference/kvm_pvm.json).
        before: PathBuf,
        /// The run to compare with it.
        after: PathBuf,
        /// Print the comparison as JSON.
        #[arg(long)]
        json: bool,
        /// What makes the exit code 1: regressions (a test went from a good outcome to a
        /// bad one, or a benchmark got slower beyond both spreads), any difference, or never.
        #[arg(long, default_value = "regressions", value_parser = clap::builder::PossibleValuesParser::new(FailOn::NAMES).map(|s| s.parse::<FailOn>().expect("one of the names")))]
        fail_on: FailOn,
        /// The smallest benchmark change reported, as a factor less one in either
        /// direction (default 1.0: doubled or halved, what the shared development machines
        /// can tell from noise; 0.05 suits a quiet, dedicated host).
        #[arg(long, default_value_t = hvprobe_results::compare::DEFAULT_MIN_EFFECT)]
        min_effect: f64,
    },
    /// The cross-backend table: every case that is not a plain pass on one of the runs,
    /// with each run's outcome and failure signature side by side (markdown).
    Crossref {
        /// Results files, one column each (e.g. results/reference/*.json).
        #[arg(required = true, num_args = 1..)]
        results: Vec<PathBuf>,
        /// Write the table into this markdown file, between its crossref markers, instead
        /// of printing it.
        #[arg(long)]
        readme: Option<PathBuf>,
    },
    /// Convert a results file for CI systems: JUnit XML, KTAP, Bencher Metric Format, KCIDB.
    Export {
        /// The results file.
        results: PathBuf,
        /// junit, ktap, bmf or kcidb. (`-F`: `-f` is `--filter`, as in every command.)
        #[arg(long, short = 'F')]
        format: hvprobe_results::export::Format,
        /// Only tests and benchmarks whose names contain one of these substrings.
        #[arg(long, short)]
        filter: Vec<String>,
        /// Filters must match whole names.
        #[arg(long)]
        exact: bool,
        /// Write here instead of to standard output ("-" is standard output): a regular file
        /// is replaced atomically, a device or pipe written through, a symlink followed.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Build the static HTML dashboard (latest run, trends, compatibility matrix) from a
    /// directory of results files.
    Report {
        /// The directory of results files (e.g. results/runs).
        dir: PathBuf,
        /// Where to write the site.
        #[arg(long, default_value = "target/dashboard")]
        out: PathBuf,
    },
    /// Print the facts about this host that a results file records.
    Host {
        /// As JSON (the `host` object of a results file).
        #[arg(long)]
        json: bool,
        /// The KVM device (default: $HVPROBE_KVM, else /dev/kvm).
        #[arg(long)]
        kvm: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // A state case restores its snapshot in a second process: this executable, again.
    hvprobe_suites::migrate::serve_if_asked();
    // A closed pipe is an EPIPE that `say!` turns into a stop of the run (whose finished
    // cases are still written), never a death by SIGPIPE that loses them.
    // SAFETY: setting SIGPIPE's disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hvprobe: error: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each cause once: library errors already quote their source
/// in their message, so a cause already in the text is not repeated.
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if !text.contains(&c) {
            if !text.is_empty() {
                text += ": ";
            }
            text += &c;
        }
    }
    text
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Compare { before, after, json, fail_on, min_effect } => {
            if !(min_effect.is_finite() && (0.0..=1000.0).contains(min_effect)) {
                bail!("--min-effect must be a number from 0 to 1000, not {min_effect}");
            }
            return compare(before, after, *json, *fail_on, *min_effect);
        }
        Command::Export { results, format, filter, exact, out } => {
            let mut r = Results::read(results)?;
            if !filter.is_empty() {
                r.tests.retain(|t| catalog::matches(&t.name, filter, *exact));
                r.benchmarks.retain(|b| catalog::matches(&b.name, filter, *exact));
                r.paths.retain(|p| p.ways.iter().any(|w| catalog::matches(&w.test, filter, *exact)));
                if r.tests.is_empty() && r.benchmarks.is_empty() {
                    bail!("no test or benchmark in {} matches the filters {filter:?}", results.display());
                }
            }
            let text = hvprobe_results::export::export(&r, *format);
            match out.as_deref().filter(|p| *p != std::path::Path::new("-")) {
                Some(path) => hvprobe_results::write_text_atomic(path, &text)?,
                None => say_raw!("{text}"),
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Crossref { results, readme } => {
            let runs = results.iter().map(|p| Results::read(p)).collect::<Result<Vec<_>, _>>()?;
            let table = hvprobe_results::crossref::table(&runs.iter().collect::<Vec<_>>());
            match readme {
                Some(path) => {
                    let doc =
                        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                    let Some(new) = hvprobe_results::crossref::splice(&doc, &table) else {
                        bail!("{} has no crossref markers ({})", path.display(), hvprobe_results::crossref::BEGIN);
                    };
                    hvprobe_results::write_text_atomic(path, &new)?;
                    say!("crossref: {} updated", path.display());
                }
                None => say_raw!("{table}"),
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Report { dir, out } => {
            let site = hvprobe_results::dashboard::build_site(dir, out)?;
            for why in &site.skipped {
                eprintln!("hvprobe: warning: left out of the dashboard: {why}");
            }
            say!(
                "dashboard: {} runs from {} hosts, {} plots: {}",
                site.runs,
                site.hosts,
                site.plots,
                out.join("index.html").display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let payload = catalog::payload().context("the embedded guest payload is invalid")?;
    hooks::check(payload).map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::List { filter, exact, count, bench } => {
            let (cases, hosts) = if bench {
                bench::select(payload, &filter, exact)
            } else {
                (catalog::select(payload, &filter, exact), Vec::new())
            };
            if cases.is_empty() && hosts.is_empty() {
                // As `run` and `bench` do: a filter that selects nothing is a mistake.
                bail!("no {} matches the filters {filter:?}", if bench { "benchmark" } else { "test case" });
            }
            if count {
                say!("{}", cases.len() + hosts.len());
            } else {
                for c in cases {
                    let req = c.requirement_names();
                    let req = if req.is_empty() { String::new() } else { format!("  requires: {}", req.join(", ")) };
                    say!("{:<44} {:<4} {:<6}{req}", c.name, c.path.name(), c.mode.name());
                }
                for h in hosts {
                    say!("{h:<44} host");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { filter, exact, budget_ms, samples, quick, json, results_dir, profile, kvm } => {
            let cfg = if quick {
                BenchConfig::quick()
            } else {
                if !(budget_ms.is_finite() && (0.01..=10_000.0).contains(&budget_ms)) {
                    bail!("--budget-ms must be a number from 0.01 to 10000, not {budget_ms}");
                }
                if !(BenchConfig::MIN_SAMPLES..=10_000).contains(&samples) {
                    bail!("--samples must be from {} to 10000, not {samples}", BenchConfig::MIN_SAMPLES);
                }
                BenchConfig { budget: Duration::from_secs_f64(budget_ms / 1e3), samples, ..BenchConfig::standard() }
            };
            let (guest, host) = bench::select(payload, &filter, exact);
            if guest.is_empty() && host.is_empty() {
                bail!("no benchmark matches the filters {filter:?}");
            }
            let (ctx, facts) = context(kvm, profile.as_deref(), runner::DEFAULT_TIMEOUT.as_secs_f64(), payload)?;
            let started = SystemTime::now();
            let out = Output::checked(json, &results_dir, started, &facts)?;
            let t0 = Instant::now();
            let noise = hvprobe_suites::process::NoiseProbe::start();
            let mut results = Results::new(host_record(&facts), started);
            say!(
                "hvprobe bench: {} guest and {} host benchmarks on {} ({}), {:.1} ms batches, {}-{} samples (more until the median is known within {}%)",
                guest.len(),
                host.len(),
                facts.hostname,
                facts.backend.name(),
                cfg.budget.as_secs_f64() * 1e3,
                cfg.samples.max(BenchConfig::MIN_SAMPLES),
                cfg.max_samples.max(cfg.samples),
                cfg.precision * 100.0
            );
            let failed = benchmarks(&ctx, &guest, &host, &cfg, &mut results);
            results.duration_s = t0.elapsed().as_secs_f64();
            results.noise = noise.finish();
            say!("wall time {:.1} s", results.duration_s);
            if let Some(n) = &results.noise {
                say!("{}", hvprobe_suites::process::describe(n));
            }
            out.write(&results)?;
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Compare { .. } | Command::Report { .. } | Command::Export { .. } | Command::Crossref { .. } => {
            unreachable!("handled before the catalogue is loaded")
        }
        Command::Host { json, kvm } => {
            let opened = Kvm::open_path(&kvm.unwrap_or_else(hvprobe_harness::host::kvm_path));
            let facts = HostFacts::gather(opened.as_ref());
            let host = host_record(&facts);
            if json {
                say!("{}", serde_json::to_string_pretty(&host)?);
            } else {
                print_host(&host);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            filter,
            exact,
            jobs,
            json,
            results_dir,
            timeout,
            profile,
            kvm,
            verbose,
            bench,
            bench_quick,
            repeat,
            perturb,
        } => {
            let cases = catalog::select(payload, &filter, exact);
            if cases.is_empty() {
                bail!("no test case matches the filters {filter:?}");
            }
            let kvm_dev = kvm.clone().unwrap_or_else(hvprobe_harness::host::kvm_path);
            let (mut ctx, facts) = context(Some(kvm_dev.clone()), profile.as_deref(), timeout, payload)?;
            ctx.stop = Some(interrupt::install().context("cannot install the SIGINT/SIGTERM handlers")?);
            let jobs = jobs.map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()), usize::from);
            let started = SystemTime::now();
            let out = Output::checked(json, &results_dir, started, &facts)?;
            let t0 = Instant::now();
            let noise = hvprobe_suites::process::NoiseProbe::start();
            say!(
                "hvprobe: {} cases on {} ({}), {jobs} job{}, profile {}, seed {:#x}",
                cases.len(),
                facts.hostname,
                facts.backend.name(),
                if jobs == 1 { "" } else { "s" },
                ctx.profile.source,
                ctx.seed
            );
            let plan = stability::plan(repeat as usize, perturb, jobs);
            let (tests, phases) = run_all(&ctx, &cases, plan[0], verbose);
            let wall = t0.elapsed();
            let mut flipped = 0;
            if plan.len() > 1 {
                let mut passes = vec![tests.clone()];
                for (i, pass) in plan.iter().enumerate().skip(1) {
                    if interrupt::stopped() {
                        break;
                    }
                    say!("\npass {} of {}: {}", i + 1, plan.len(), pass.describe());
                    let changed;
                    let pass_ctx = if pass.seed.is_none() && !pass.tsc_moved {
                        &ctx
                    } else {
                        let kvm = Kvm::open_path(&kvm_dev)?;
                        if pass.tsc_moved {
                            match kvm.tsc_write_holds(stability::TSC_MOVED) {
                                Ok(true) => {}
                                Ok(false) => say!(
                                    "  the backend keeps its own TSC: IA32_TSC written at vCPU creation \
                                     (KVM_SET_MSRS) does not move it, so this pass runs with the TSC where \
                                     the backend starts it"
                                ),
                                Err(e) => say!("  moving the TSC could not be checked: {e}"),
                            }
                        }
                        changed = Context {
                            kvm,
                            profile: ctx.profile.clone(),
                            seed: pass.seed.unwrap_or(ctx.seed),
                            tsc_start: pass.tsc_moved.then_some(stability::TSC_MOVED),
                            stop: ctx.stop.clone(),
                            ..ctx
                        };
                        &changed
                    };
                    passes.push(run_all(pass_ctx, &cases, *pass, verbose).0);
                }
                if !interrupt::stopped() {
                    let flips = stability::flips(&passes);
                    say!("\n{}", stability::render(&plan, &passes, &flips));
                    flipped = flips.len();
                }
            }
            let mut results = Results::new(host_record(&facts), started);
            let finished = tests.len();
            results.tests = tests;
            results.paths = hvprobe_results::paths::table(&results.tests);
            if let Some((reason, code)) = interrupt::reason() {
                // What finished is written, marked incomplete; nothing else starts.
                results.incomplete = Some(hvprobe_results::Incomplete {
                    reason: reason.clone(),
                    cases_not_run: (cases.len() - finished) as u64,
                });
                results.duration_s = t0.elapsed().as_secs_f64();
                out.write(&results)?;
                eprintln!(
                    "hvprobe: {reason}: the {finished} of {} cases that finished are in {}, marked incomplete",
                    cases.len(),
                    out.path().display()
                );
                return Ok(ExitCode::from(code));
            }
            print_failures(&results);
            let table = hvprobe_results::paths::render(&results.paths);
            if !table.is_empty() {
                say!("\n{table}");
            }
            print_summary(&results, wall, jobs, &phases);
            results.benchmarks.extend(suite_benchmarks(wall, &phases));
            let mut bench_failed = 0;
            let (guest, host) = bench::select(payload, &filter, exact);
            if bench && (!guest.is_empty() || !host.is_empty()) {
                let hosts = host.len();
                say!("\nbenchmarks: {} guest and {hosts} host, one at a time", guest.len());
                let cfg = if bench_quick { BenchConfig::quick() } else { BenchConfig::standard() };
                bench_failed = benchmarks(&ctx, &guest, &host, &cfg, &mut results);
            }
            results.duration_s = t0.elapsed().as_secs_f64();
            results.noise = noise.finish();
            if let Some(n) = &results.noise {
                say!("{}", hvprobe_suites::process::describe(n));
            }
            out.write(&results)?;
            let failed = results.tests.iter().filter(|t| t.fails_run()).count();
            Ok(if failed + bench_failed + flipped == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

/// Where a run's results go, checked before the first case runs so that a run never ends
/// with its results unwritable: `--json PATH` (replaced atomically, or written through
/// when it is a device or pipe), else a file of its own in the results directory, named
/// by time, process and host, which no other run can overwrite.
enum Output {
    Given(PathBuf),
    New(PathBuf),
}

impl Output {
    fn checked(json: Option<PathBuf>, dir: &std::path::Path, started: SystemTime, facts: &HostFacts) -> Result<Output> {
        match json {
            Some(path) => {
                let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
                if !path.exists() || path.is_file() {
                    hvprobe_results::check_writable_dir(parent)
                        .with_context(|| format!("--json {}: its directory cannot be written", path.display()))?;
                }
                Ok(Output::Given(path))
            }
            None => {
                hvprobe_results::check_writable_dir(dir)
                    .with_context(|| format!("--results-dir {}: cannot write results there", dir.display()))?;
                let name =
                    hvprobe_results::run_file_name(started, std::process::id(), &facts.hostname, facts.backend.name());
                Ok(Output::New(dir.join(name)))
            }
        }
    }

    fn path(&self) -> &std::path::Path {
        match self {
            Output::Given(path) | Output::New(path) => path,
        }
    }

    fn write(&self, results: &Results) -> Result<()> {
        let path = match self {
            Output::Given(path) => {
                results.write_atomic(path)?;
                path
            }
            Output::New(path) => {
                results.write_new(path)?;
                path
            }
        };
        say!("results: {}", path.display());
        Ok(())
    }
}

/// Needs no catalogue and no KVM: results files from any host and any hvprobe version of
/// the same schema compare.
fn compare(
    before: &std::path::Path,
    after: &std::path::Path,
    json: bool,
    fail_on: FailOn,
    min_effect: f64,
) -> Result<ExitCode> {
    let a = Results::read(before)?;
    let b = Results::read(after)?;
    let c = hvprobe_results::compare::compare_with(&a, &b, min_effect);
    if json {
        say!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        say_raw!("{}", c.render());
    }
    Ok(if c.fails(fail_on) { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Opens KVM and loads the profile: what `run` and `bench` share.
fn context(
    kvm: Option<PathBuf>,
    profile: Option<&std::path::Path>,
    timeout: f64,
    payload: &'static hvprobe_harness::Payload,
) -> Result<(Context, HostFacts)> {
    if !(timeout.is_finite() && timeout > 0.0 && timeout <= 86_400.0) {
        bail!("--timeout must be a number of seconds above 0 and at most 86400, not {timeout}");
    }
    let kvm_dev = kvm.unwrap_or_else(hvprobe_harness::host::kvm_path);
    let kvm = Kvm::open_path(&kvm_dev).with_context(|| {
        format!("hvprobe needs a usable {} (is KVM loaded, and may this user open it?)", kvm_dev.display())
    })?;
    let facts = HostFacts::gather(Ok(&kvm));
    let host = ProfileHost::of(&facts);
    let profile = match profile {
        Some(path) => Profile::load(path, &host, payload)?,
        None => Profile::builtin(&host, payload)?,
    };
    let (seed, only_case) = runner::generation_from_env().map_err(anyhow::Error::msg)?;
    Ok((
        Context {
            kvm,
            profile,
            default_timeout: Duration::from_secs_f64(timeout),
            seed,
            only_case,
            tsc_start: None,
            stop: None,
        },
        facts,
    ))
}

/// Runs the benchmarks, printing each as it finishes, and adds their figures to
/// `results`. Returns how many failed (skips and known deviations do not count).
fn benchmarks(ctx: &Context, guest: &[&TestCase], host: &[&str], cfg: &BenchConfig, results: &mut Results) -> usize {
    let done = bench::run_all(ctx, guest, host, cfg, |r| say!("{}", bench::line(r)));
    for r in &done {
        results.benchmarks.extend(r.records());
    }
    let ratios: Vec<String> = done
        .iter()
        .filter_map(|r| r.floor_ratio().map(|x| format!("{} {x:.2}", r.name.trim_start_matches("host::"))))
        .collect();
    if !ratios.is_empty() {
        say!("hvprobe / bare-ioctl floor: {}", ratios.join(", "));
    }
    if let Some(s) = bench::steadiness(&done) {
        say!("{s}");
    }
    done.iter().filter(|r| bench::is_failure(r)).count()
}

/// The suite's own cost as benchmarks: wall time, and each phase of a case.
fn suite_benchmarks(wall: Duration, phases: &[Phases]) -> Vec<Benchmark> {
    let mut out = vec![Benchmark::new("suite::wall_time", "s", wall.as_secs_f64(), 0.0, 1)];
    let phase = |name: &str, f: fn(&Phases) -> Duration| {
        let ms: Vec<f64> = phases.iter().map(|p| f(p).as_secs_f64() * 1e3).collect();
        let s = bench::summarize(&ms);
        Benchmark::new(format!("suite::case_{name}"), "ms", s.median, s.mad, s.n() as u64)
    };
    if !phases.is_empty() {
        out.push(phase("boot", |p| p.boot));
        out.push(phase("run", |p| p.run));
        out.push(phase("judge", |p| p.judge));
        out.push(phase("teardown", |p| p.teardown));
    }
    out
}

fn run_all(ctx: &Context, cases: &[&TestCase], pass: Pass, verbose: bool) -> (Vec<TestResult>, Vec<Phases>) {
    let jobs = pass.jobs;
    let _load = pass.load.then(|| BusyLoad::start(std::thread::available_parallelism().map_or(1, |n| n.get())));
    let bar = ProgressBar::new(cases.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    // Cases that may wait out a watchdog limit (the watchdog's own cases, hypercalls that
    // may hang) start first, so that no long one starts last while the other jobs idle.
    let mut cases = pass.order.apply(cases);
    cases.sort_by_key(|c| std::cmp::Reverse((c.expects_timeout(), c.timeout.is_some())));
    let cases = &cases[..];
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::with_capacity(cases.len()));
    std::thread::scope(|s| {
        for _ in 0..jobs.min(cases.len()) {
            s.spawn(|| {
                while let Some(case) = cases.get(next.fetch_add(1, Ordering::SeqCst)) {
                    if interrupt::stopped() {
                        break;
                    }
                    bar.set_message(case.name.clone());
                    let (r, phases) = run_case_timed(ctx, case);
                    if interrupt::stopped() && r.failure.as_ref().is_some_and(|f| f.end == "paused") {
                        // Stopped where it was by the interrupt: not a result.
                        continue;
                    }
                    let mut line = format!("{:<8} {} ({:.0} ms)", r.outcome.name(), r.name, r.duration_ms);
                    let noteworthy = r.fails_run() || r.outcome == Outcome::Xfail;
                    if let (Some(reason), true) = (&r.reason, verbose || noteworthy) {
                        line += &format!("\n         {reason}");
                    }
                    // A hidden bar (output is not a terminal) would swallow println.
                    if bar.is_hidden() {
                        say!("{line}");
                    } else {
                        bar.println(line);
                    }
                    bar.inc(1);
                    done.lock().unwrap_or_else(|e| e.into_inner()).push((r, phases));
                }
            });
        }
    });
    bar.finish_and_clear();
    let done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    let phases = done.iter().filter_map(|(_, p)| *p).collect();
    let mut tests: Vec<TestResult> = done.into_iter().map(|(t, _)| t).collect();
    tests.sort_by(|a, b| a.name.cmp(&b.name));
    (tests, phases)
}

fn host_record(f: &HostFacts) -> Host {
    Host {
        hostname: f.hostname.clone(),
        kernel: f.kernel.clone(),
        cpu_vendor: f.cpu_vendor.clone(),
        cpu_model: f.cpu_model.clone(),
        cpu_signature: Some(f.cpu_signature),
        backend: f.backend.name().into(),
        platform: Some(f.platform.name.clone()),
        platform_signature: f.platform.signature.clone(),
        platform_notes: f.platform_notes.clone(),
        backend_params: f.backend_params.clone(),
        kvm_api_version: f.kvm_api_version,
        kvm_error: f.kvm_error.clone(),
        capabilities: f.capabilities.clone(),
        tsc_khz: f.tsc_khz,
        cpuid: f
            .supported_cpuid
            .iter()
            .map(|e| CpuidEntry { leaf: e.function, subleaf: e.index, eax: e.eax, ebx: e.ebx, ecx: e.ecx, edx: e.edx })
            .collect(),
    }
}

fn print_host(h: &Host) {
    say!("hostname        {}", h.hostname);
    say!("kernel          {}", h.kernel);
    let signature = h.cpu_signature.map_or(String::new(), |s| format!(", CPUID.1:EAX {s:#x}"));
    say!("cpu             {} ({}{signature})", h.cpu_model, h.cpu_vendor);
    match &h.kvm_error {
        // The module is loaded, but this device is not the one it serves (or not usable).
        Some(_) => say!("backend         {} (the loaded module; the KVM device itself is unusable)", h.backend),
        None => say!("backend         {}", h.backend),
    }
    if let Some(p) = &h.platform {
        let signature = h.platform_signature.as_ref().map_or(String::new(), |s| format!(" (signature {s:?})"));
        say!("platform        {p}{signature}");
    }
    for note in &h.platform_notes {
        say!("                {note}");
    }
    if !h.backend_params.is_empty() {
        let params: Vec<String> = h.backend_params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        say!("parameters      {}", params.join(" "));
    }
    match (&h.kvm_api_version, &h.kvm_error) {
        (Some(v), _) => say!("KVM API         {v}"),
        (None, Some(e)) => say!("KVM             unusable: {e}"),
        (None, None) => say!("KVM             unusable"),
    }
    say!("TSC             {}", h.tsc_khz.map_or("unknown".into(), |k| format!("{k} kHz")));
    for (cap, v) in &h.capabilities {
        say!("  {cap:<36} {v}");
    }
}

fn print_failures(r: &Results) {
    let bad: Vec<&TestResult> = r.tests.iter().filter(|t| t.fails_run()).collect();
    if bad.is_empty() {
        return;
    }
    say!("\nfailures:");
    for t in bad {
        say!("\n--- {} [{}] ({} {})", t.name, t.outcome.name(), t.path, t.mode);
        say!("    {}", t.reason.as_deref().unwrap_or(""));
        if let Some(cpu) = t.failure.as_ref().and_then(|f| f.cpu.as_ref()) {
            say!("    cpu: {cpu}");
        }
        let skipped = t.log.len().saturating_sub(TERMINAL_LOG_LINES);
        if skipped > 0 {
            say!("    log: ({skipped} earlier lines are in the results file)");
        }
        for l in &t.log[skipped..] {
            say!("    log: {}", terminal_safe(tail_chars(l, TERMINAL_CONSOLE_CHARS)));
        }
        if let Some(c) = &t.console {
            let tail = tail_chars(c, TERMINAL_CONSOLE_CHARS);
            if tail.len() < c.len() {
                say!("    console: ({} earlier bytes are in the results file)", c.len() - tail.len());
            }
            say!("    console: {}", terminal_safe(tail));
        }
    }
}

/// What the failure listing shows of a guest's log and console: a flooding guest must not
/// flood the terminal. The results file keeps everything the host captured.
const TERMINAL_LOG_LINES: usize = 20;
const TERMINAL_CONSOLE_CHARS: usize = 2048;

/// The last `n` characters of `s` (on a character boundary).
fn tail_chars(s: &str, n: usize) -> &str {
    let count = s.chars().count();
    match s.char_indices().nth(count.saturating_sub(n)) {
        Some((start, _)) if count > n => &s[start..],
        _ => s,
    }
}

/// Guest text as the terminal may show it: control characters other than newline and tab
/// (escape sequences among them) are printed escaped, never interpreted.
fn terminal_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() && c != '\n' && c != '\t' { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

fn print_summary(r: &Results, wall: Duration, jobs: usize, phases: &[Phases]) {
    let mut rows: BTreeMap<(String, String), BTreeMap<Outcome, usize>> = BTreeMap::new();
    for t in &r.tests {
        *rows.entry((t.area.clone(), t.path.clone())).or_default().entry(t.outcome).or_default() += 1;
    }
    say!();
    say_raw!("{:<6} {:<5} {:>5}", "area", "path", "total");
    for o in Outcome::ALL {
        say_raw!(" {:>7}", o.name());
    }
    say!();
    let row = |area: &str, path: &str, counts: &BTreeMap<Outcome, usize>| {
        say_raw!("{area:<6} {path:<5} {:>5}", counts.values().sum::<usize>());
        for o in Outcome::ALL {
            say_raw!(" {:>7}", counts.get(&o).copied().unwrap_or(0));
        }
        say!();
    };
    for ((area, path), counts) in &rows {
        row(area, path, counts);
    }
    row("all", "", &r.counts());
    let expected = r.tests.iter().filter(|t| t.expected_timeout && t.outcome == Outcome::Timeout).count();
    if expected > 0 {
        say!("({expected} timeout(s) expected: cases that never end by themselves)");
    }
    say!("wall time {:.1} s for {} cases on {jobs} jobs", wall.as_secs_f64(), r.tests.len());
    if !phases.is_empty() {
        let med = |f: fn(&Phases) -> Duration| {
            bench::summarize(&phases.iter().map(|p| f(p).as_secs_f64() * 1e3).collect::<Vec<_>>()).median
        };
        let total: f64 = phases.iter().map(|p| (p.boot + p.run + p.judge + p.teardown).as_secs_f64()).sum();
        say!(
            "per case (median): boot {:.2} ms, run {:.2} ms, judge {:.3} ms, teardown {:.2} ms; {:.1} s of case time in all",
            med(|p| p.boot),
            med(|p| p.run),
            med(|p| p.judge),
            med(|p| p.teardown),
            total
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{tail_chars, terminal_safe};

    #[test]
    fn guest_text_reaches_the_terminal_bounded_and_inert() {
        assert_eq!(tail_chars("abcdef", 3), "def");
        assert_eq!(tail_chars("ab", 3), "ab");
        assert_eq!(tail_chars("\u{e9}\u{e9}\u{e9}x", 2), "\u{e9}x");
        assert_eq!(terminal_safe("a\x1b[2Jb\n\tc\r"), "a\\u{1b}[2Jb\n\tc\\r");
    }
}
