//! The static HTML dashboard built from a directory of results files.
//!
//! Three pages: `index.html` (the latest run), `trends.html` (benchmarks and guest metrics
//! over time) and `compat.html` (outcomes per test and host). The site has no scripts and
//! no external assets, so it works from a file:// URL, an artifact viewer or any static
//! server; plots are SVG drawn by plotters and inlined. The output depends only on the
//! input files, so rebuilding an unchanged directory gives identical pages.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use plotters::prelude::*;

use crate::compare::Change;
use crate::text::{escape_markup as esc, slug};
use crate::{Outcome, Results, ResultsError, TestResult};

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("cannot list the results directory {path}: {source}")]
    List { path: PathBuf, source: std::io::Error },
    #[error("{path} has no results files (*.json), so there is nothing to show")]
    NoResults { path: PathBuf },
    #[error("{path} has no readable results file, so there is nothing to show; the first problem: {first}")]
    NoReadableResults { path: PathBuf, first: Box<DashboardError> },
    /// An unreadable or malformed results file; the message names it and the position.
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error("{path} has a start time {started:?} that is not an RFC 3339 timestamp")]
    Started { path: PathBuf, started: String },
    #[error("cannot draw the plot {plot:?}: {message}")]
    Plot { plot: String, message: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// What [`build_site`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// index.html, trends.html and compat.html, in that order.
    pub pages: Vec<PathBuf>,
    /// Results files read.
    pub runs: usize,
    /// Distinct (hostname, backend) pairs among the runs.
    pub hosts: usize,
    /// SVG plots on the trends page.
    pub plots: usize,
    /// Files left out, each with why (malformed, foreign, a bad start time): one bad file
    /// in a nightly directory does not take the dashboard down.
    pub skipped: Vec<String>,
}

/// One results file as the run list shows it, with when its run started (seconds since
/// the Unix epoch). The whole results are kept only where a page shows them ([`Full`]).
struct Run {
    file: PathBuf,
    at: i64,
    started: String,
    hostname: String,
    backend: String,
    cpu_model: String,
    kernel: String,
    tests: usize,
    deviations: usize,
}

impl Run {
    fn of(file: PathBuf, at: i64, r: &Results) -> Run {
        Run {
            file,
            at,
            started: r.started.clone(),
            hostname: r.host.hostname.clone(),
            backend: r.host.backend.clone(),
            cpu_model: r.host.cpu_model.clone(),
            kernel: r.host.kernel.clone(),
            tests: r.tests.len(),
            deviations: r.tests.iter().filter(|t| t.is_deviation()).count(),
        }
    }

    fn host_key(&self) -> (&str, &str) {
        (&self.hostname, &self.backend)
    }

    fn series_key(&self) -> SeriesKey {
        (self.hostname.clone(), self.backend.clone(), self.cpu_model.clone())
    }
}

/// A trend line's host: hostname, backend and CPU model. A machine that changes CPU under
/// the same name starts a new line: its figures are another machine's, and a change
/// computed across the two would be the CPUs' difference, not the hypervisor's.
type SeriesKey = (String, String, String);

fn file_name(file: &Path) -> String {
    file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A run kept whole: the latest run of each host (the compatibility matrix) and the latest
/// run of all (the first page).
struct Full {
    file: PathBuf,
    at: i64,
    results: Results,
}

impl Full {
    fn file_name(&self) -> String {
        file_name(&self.file)
    }

    /// Later than `other` in the order runs are shown (start time, then file name).
    fn is_after(&self, other: &Full) -> bool {
        (self.at, &self.file) > (other.at, &other.file)
    }
}

/// What the site is built from. Files are read one at a time and reduced as they come, so
/// a directory of a thousand runs costs the trend points and a few whole runs, not a
/// thousand parsed files.
#[derive(Default)]
struct Loaded {
    /// Every readable run, in start order.
    runs: Vec<Run>,
    /// The latest run with tests of each host.
    latest: BTreeMap<(String, String), Full>,
    /// The run with tests before it, where the host has one: what "what changed" compares.
    previous: BTreeMap<(String, String), Full>,
    /// The latest run of all, kept when no run has tests.
    last: Option<Full>,
    trends: Trends,
    skipped: Vec<String>,
}

impl Loaded {
    fn add(&mut self, file: PathBuf, at: i64, results: Results) {
        let run = Run::of(file.clone(), at, &results);
        self.trends.add(at, &run.series_key(), &results);
        self.runs.push(run);
        let host = (results.host.hostname.clone(), results.host.backend.clone());
        let full = Full { file, at, results };
        if full.results.tests.is_empty() {
            if self.latest.is_empty() && self.last.as_ref().is_none_or(|l| full.is_after(l)) {
                self.last = Some(full);
            }
            return;
        }
        self.last = None;
        // Keep the two latest runs with tests of each host, whatever order files come in.
        let full = match self.latest.remove(&host) {
            Some(latest) if full.is_after(&latest) => {
                self.previous.insert(host.clone(), latest);
                full
            }
            Some(latest) => {
                if self.previous.get(&host).is_none_or(|p| full.is_after(p)) {
                    self.previous.insert(host.clone(), full);
                }
                latest
            }
            None => full,
        };
        self.latest.insert(host, full);
    }

    /// The run before `front` on the same host, if the front run is a host's latest.
    fn previous_of(&self, front: &Full) -> Option<&Full> {
        let host = (front.results.host.hostname.clone(), front.results.host.backend.clone());
        self.latest.get(&host).filter(|l| l.file == front.file).and(self.previous.get(&host))
    }

    /// The run the first page shows: the latest that has tests (a benchmark-only run has
    /// none to show; the trends page carries its benchmarks), or the latest of all.
    fn front(&self) -> Option<&Full> {
        self.latest.values().reduce(|a, b| if b.is_after(a) { b } else { a }).or(self.last.as_ref())
    }
}

/// The trend series, gathered run by run. Plots are keyed by (name, unit): a unit change
/// starts a new plot instead of mixing scales.
#[derive(Default)]
struct Trends {
    benches: BTreeMap<(String, String), Series>,
    metrics: BTreeMap<(String, String), Series>,
    /// The path (full, para, hw) of each guest operation, as its latest record says.
    paths: BTreeMap<String, String>,
}

impl Trends {
    fn add(&mut self, at: i64, host: &SeriesKey, r: &Results) {
        let push = |map: &mut BTreeMap<(String, String), Series>, name: String, unit: &str, point: Point| {
            map.entry((name, unit.to_string())).or_default().entry(host.clone()).or_default().push(point);
        };
        for bench in &r.benchmarks {
            if let Some(path) = &bench.path {
                self.paths.insert(bench.name.clone(), path.clone());
            }
            let point = Point { at, value: bench.median, spread: Some(bench.spread.abs()) };
            push(&mut self.benches, bench.name.clone(), &bench.unit, point);
        }
        for t in &r.tests {
            for (metric, v) in &t.metrics {
                push(
                    &mut self.metrics,
                    format!("{} / {metric}", t.name),
                    &v.unit,
                    Point { at, value: v.value, spread: None },
                );
            }
        }
    }
}

/// Builds the site from every `*.json` in `input_dir` into `out_dir` (created if needed).
pub fn build_site(input_dir: &Path, out_dir: &Path) -> Result<Site, DashboardError> {
    let loaded = load(input_dir)?;
    let (trends, plots) = trends_page(&loaded)?;
    let pages = [("index.html", index_page(&loaded)), ("trends.html", trends), ("compat.html", compat_page(&loaded))];
    std::fs::create_dir_all(out_dir).map_err(|source| DashboardError::Write { path: out_dir.into(), source })?;
    let mut written = Vec::new();
    for (name, html) in pages {
        let path = out_dir.join(name);
        write_atomic(&path, &html)?;
        written.push(path);
    }
    let hosts = loaded.runs.iter().map(Run::host_key).collect::<BTreeSet<_>>().len();
    Ok(Site { pages: written, runs: loaded.runs.len(), hosts, plots, skipped: loaded.skipped })
}

/// Reads the results files one at a time in name order, then orders the runs by start time
/// (name breaks ties). A file that cannot be read is left out with the reason; none
/// readable is an error.
fn load(input_dir: &Path) -> Result<Loaded, DashboardError> {
    let list_err = |source| DashboardError::List { path: input_dir.into(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(input_dir).map_err(list_err)? {
        let path = entry.map_err(list_err)?.path();
        if path.extension().is_some_and(|e| e == "json") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(DashboardError::NoResults { path: input_dir.into() });
    }
    let (mut loaded, mut first_error) = (Loaded::default(), None);
    for file in files {
        let read = Results::read(&file).map_err(DashboardError::from).and_then(|results| {
            match crate::parse_rfc3339(&results.started) {
                Some(at) => Ok((at, results)),
                None => Err(DashboardError::Started { path: file.clone(), started: results.started }),
            }
        });
        match read {
            Ok((at, results)) => loaded.add(file, at, results),
            Err(e) => {
                loaded.skipped.push(e.to_string());
                first_error.get_or_insert(e);
            }
        }
    }
    if let (true, Some(first)) = (loaded.runs.is_empty(), first_error) {
        return Err(DashboardError::NoReadableResults { path: input_dir.into(), first: Box::new(first) });
    }
    loaded.runs.sort_by(|a, b| (a.at, &a.file).cmp(&(b.at, &b.file)));
    Ok(loaded)
}

/// "YYYY-MM-DD HH:MM" (UTC) of seconds since the epoch, for axis labels.
fn date_label(secs: i64) -> String {
    let s = crate::rfc3339(UNIX_EPOCH + Duration::from_secs(secs.max(0).unsigned_abs()));
    s.get(..16).map_or(s.clone(), |d| d.replacen('T', " ", 1))
}

/// Pages are written like results files: atomically, readable by a static server.
fn write_atomic(path: &Path, text: &str) -> Result<(), DashboardError> {
    Ok(crate::write_text_atomic(path, text)?)
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.2em 2em;color:#1d1d1d;max-width:1500px}\
nav{padding:.5em 0;border-bottom:1px solid #ccc;margin-bottom:1em}nav a,nav strong{margin-right:1.5em}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}h3{font-size:1em;margin:1.2em 0 .3em}\
table{border-collapse:collapse;margin:.4em 0 1em}\
th,td{border:1px solid #d0d0d0;padding:.25em .55em;text-align:left;vertical-align:top}\
th{background:#f2f2f2}td.num{text-align:right}\
code,pre{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:.9em}pre{margin:.2em 0}\
.o-pass{background:#dff3dc}.o-skip{background:#ececec;color:#555}.o-timeout-expected{background:#dff3dc}\
.o-xfail{background:#ffe9a8}.o-fail,.o-error,.o-xpass,.o-timeout{background:#f9c9c4}\
.dev{font-weight:bold;box-shadow:inset 0 0 0 2px #b3261e}.o-xfail.dev{box-shadow:inset 0 0 0 2px #b07b00}\
.absent{color:#999;text-align:center}.zero{color:#888;background:#fafafa}.badge{display:inline-block;padding:.15em .6em;margin:0 .3em .3em 0;\
border-radius:.8em;border:1px solid #ccc}\
table.compat td{text-align:center}table.compat th.host{text-align:center;font-weight:normal}\
table.compat th.host div:first-child{font-weight:bold}.muted{color:#666;font-size:.9em}\
figure{margin:0}figcaption{margin-bottom:.3em;overflow-wrap:anywhere}\
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:1.2em 1.5em;margin-bottom:1em}\
.unit{display:inline-block;padding:0 .45em;border-radius:.3em;font-size:.85em;font-weight:normal;white-space:nowrap}\
.u-cycles{background:#dbe9f6;color:#0b3d66}.u-ns{background:#fbe3cf;color:#6b2c00}.u-other{background:#eee}\
figure.f-u-cycles svg{border-top:3px solid #0072b2}figure.f-u-ns svg{border-top:3px solid #d55e00}\
ul.legend{list-style:none;padding:0;margin:.3em 0 0;font-size:.88em}\
svg{max-width:100%;height:auto;border:1px solid #ddd}\
.swatch{display:inline-block;width:1.6em;height:.5em;margin:0 .4em 0 1em;vertical-align:middle}\
p.changes{padding:.5em .8em;background:#f6f8fa;border-left:4px solid #0072b2}\
tr.c-regression td{background:#f9c9c4}tr.c-improvement td{background:#dff3dc}";

/// A complete page: the shared head, the navigation (the current page is not a link) and `body`.
fn page(title: &str, current: &str, body: &str) -> String {
    let mut nav = String::new();
    for (file, label) in [("index.html", "Latest run"), ("trends.html", "Trends"), ("compat.html", "Compatibility")] {
        if file == current {
            let _ = write!(nav, "<strong>{label}</strong>");
        } else {
            let _ = write!(nav, "<a href=\"{file}\">{label}</a>");
        }
    }
    // The empty data: icon keeps browsers from asking the server for a favicon.
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <link rel=\"icon\" href=\"data:,\">\n<title>{} · hvprobe</title>\n<style>{STYLE}</style>\n</head>\n\
         <body>\n<nav>{nav}</nav>\n{body}</body>\n</html>\n",
        esc(title)
    )
}

/// The CSS class of an outcome cell (the watchdog's expected timeout is not red).
fn outcome_class(t: &TestResult) -> &'static str {
    match t.outcome {
        Outcome::Timeout if t.expected_timeout => "o-timeout-expected",
        o => match o {
            Outcome::Pass => "o-pass",
            Outcome::Fail => "o-fail",
            Outcome::Skip => "o-skip",
            Outcome::Xfail => "o-xfail",
            Outcome::Xpass => "o-xpass",
            Outcome::Timeout => "o-timeout",
            Outcome::Error => "o-error",
        },
    }
}

fn outcome_label(t: &TestResult) -> String {
    if t.outcome == Outcome::Timeout && t.expected_timeout {
        "timeout (expected)".into()
    } else {
        t.outcome.name().into()
    }
}

fn outcome_cell(t: &TestResult) -> String {
    let dev = if t.is_deviation() { " dev" } else { "" };
    format!("<td class=\"{}{dev}\">{}</td>", outcome_class(t), esc(&outcome_label(t)))
}

fn opt_code(v: Option<&String>) -> String {
    v.map_or(String::new(), |v| format!("<code>{}</code>", esc(v)))
}

fn index_page(loaded: &Loaded) -> String {
    let mut b = String::new();
    let Some(latest) = loaded.front() else {
        return page("Latest run", "index.html", "<p>No runs.</p>\n");
    };
    let r = &latest.results;
    let h = &r.host;
    let _ = writeln!(b, "<h1>Latest run: {} ({})</h1>", esc(&h.hostname), esc(&h.backend));
    let _ = writeln!(
        b,
        "<p>Started {} and took {:.1} s; {} {}; file <code>{}</code>.</p>",
        esc(&r.started),
        r.duration_s,
        esc(&r.tool.name),
        esc(&r.tool.version),
        esc(&latest.file_name())
    );

    what_changed(&mut b, latest, loaded.previous_of(latest));

    if let Some(i) = &r.incomplete {
        let _ = writeln!(
            b,
            "<p class=\"incomplete\"><strong>Incomplete run</strong>: {}; {} selected cases did not finish.</p>",
            esc(&i.reason),
            i.cases_not_run
        );
    }
    b.push_str("<h2 id=\"host\">Host</h2>\n<table class=\"facts\">\n");
    let opt = |v: Option<String>| v.unwrap_or_else(|| "unknown".into());
    let mut facts = vec![
        ("Hostname", esc(&h.hostname)),
        ("Backend", esc(&h.backend)),
        ("Platform", esc(h.platform.as_deref().unwrap_or("unknown"))),
        ("Kernel", esc(&h.kernel)),
        ("CPU", format!("{} ({})", esc(&h.cpu_model), esc(&h.cpu_vendor))),
        ("KVM API version", opt(h.kvm_api_version.map(|v| v.to_string()))),
        ("TSC", opt(h.tsc_khz.map(|v| format!("{v} kHz")))),
        ("Capabilities recorded", h.capabilities.len().to_string()),
        ("CPUID leaves recorded", h.cpuid.len().to_string()),
    ];
    for note in &h.platform_notes {
        facts.push(("Platform note", esc(note)));
    }
    if let Some(e) = &h.kvm_error {
        facts.push(("KVM unavailable", esc(e)));
    }
    if let Some(n) = &r.noise {
        facts.push(("Host noise during the run", esc(&n.to_string())));
    }
    for (k, v) in facts {
        let _ = writeln!(b, "<tr><th scope=\"row\">{k}</th><td>{v}</td></tr>");
    }
    b.push_str("</table>\n");

    let counts = r.counts();
    let _ = writeln!(b, "<h2 id=\"outcomes\">Outcomes ({} tests)</h2>\n<p class=\"counts\">", r.tests.len());
    let expected_timeouts = r.tests.iter().filter(|t| t.outcome == Outcome::Timeout && t.expected_timeout).count();
    for (o, n) in &counts {
        let (class, note) = match (o, *n) {
            (_, 0) => ("zero".to_string(), String::new()),
            (Outcome::Timeout, n) if expected_timeouts > 0 => {
                let class = if expected_timeouts == n { "o-timeout-expected" } else { "o-timeout" };
                (class.to_string(), format!(" ({expected_timeouts} expected)"))
            }
            (o, _) => (format!("o-{}", o.name()), String::new()),
        };
        let _ = write!(b, "<span class=\"badge {class}\">{} <b>{n}</b>{note}</span>", o.name());
    }
    b.push_str("</p>\n");

    b.push_str("<h2 id=\"areas\">Outcomes by area and path</h2>\n");
    let mut paths: Vec<&str> = r.tests.iter().map(|t| t.path.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
    // The three execution paths in their natural order, anything else after them.
    let rank = |p: &str| ["full", "para", "hw"].iter().position(|k| *k == p).unwrap_or(3);
    paths.sort_by_key(|p| (rank(p), *p));
    // Grouped by outcome and whether a timeout was the expected one, which is not a problem.
    let mut cells: BTreeMap<(&str, &str), OutcomeGroups> = BTreeMap::new();
    for t in &r.tests {
        let group = (t.outcome, t.outcome == Outcome::Timeout && t.expected_timeout);
        cells.entry((&t.area, &t.path)).or_default().entry(group).or_insert((0, t)).0 += 1;
    }
    let areas: BTreeSet<&str> = r.tests.iter().map(|t| t.area.as_str()).collect();
    b.push_str("<table class=\"areas\">\n<thead><tr><th>Area</th>");
    for p in &paths {
        let _ = write!(b, "<th>{}</th>", esc(p));
    }
    b.push_str("</tr></thead>\n<tbody>\n");
    for a in &areas {
        let _ = write!(b, "<tr><th scope=\"row\">{}</th>", esc(a));
        for p in &paths {
            match cells.get(&(*a, *p)) {
                None => b.push_str("<td class=\"absent\">–</td>"),
                Some(c) => {
                    b.push_str("<td>");
                    for (n, t) in c.values() {
                        let _ = write!(b, "<span class=\"badge {}\">{n} {}</span>", outcome_class(t), outcome_label(t));
                    }
                    b.push_str("</td>");
                }
            }
        }
        b.push_str("</tr>\n");
    }
    b.push_str("</tbody>\n</table>\n");

    path_section(&mut b, &r.tests);

    let failing: Vec<&TestResult> =
        r.tests.iter().filter(|t| t.is_deviation() && t.outcome != Outcome::Xfail).collect();
    let known: Vec<&TestResult> = r.tests.iter().filter(|t| t.outcome == Outcome::Xfail).collect();
    let _ = writeln!(b, "<h2 id=\"failures\">Failures ({})</h2>", failing.len());
    b.push_str("<p class=\"muted\">fail, error, xpass (the profile predicted a failure that did not happen) and unexpected timeouts.</p>\n");
    failure_table(&mut b, &failing);
    let _ = writeln!(b, "<h2 id=\"deviations\">Known deviations ({})</h2>", known.len());
    b.push_str("<p class=\"muted\">xfail: failures the backend's expectation profile predicts.</p>\n");
    failure_table(&mut b, &known);

    let skipped: Vec<&TestResult> = r.tests.iter().filter(|t| t.outcome == Outcome::Skip).collect();
    if !skipped.is_empty() {
        let _ = writeln!(
            b,
            "<h2 id=\"skips\">Skipped</h2>\n<details><summary>{} tests skipped</summary>\n<table>\n\
             <thead><tr><th>Test</th><th>Reason</th></tr></thead>\n<tbody>",
            skipped.len()
        );
        for t in skipped {
            let _ = writeln!(
                b,
                "<tr><td><code>{}</code></td><td>{}</td></tr>",
                esc(&t.name),
                esc(t.reason.as_deref().unwrap_or(""))
            );
        }
        b.push_str("</tbody>\n</table>\n</details>\n");
    }

    b.push_str("<h2 id=\"runs\">All runs</h2>\n<table class=\"runs\">\n<thead><tr><th>Started</th><th>Host</th>");
    b.push_str("<th>Backend</th><th>Kernel</th><th>Tests</th><th>Failures and deviations</th><th>File</th></tr></thead>\n<tbody>\n");
    for run in loaded.runs.iter().rev() {
        let _ = writeln!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td><code>{}</code></td></tr>",
            esc(&run.started),
            esc(&run.hostname),
            esc(&run.backend),
            esc(&run.kernel),
            run.tests,
            run.deviations,
            esc(&file_name(&run.file))
        );
    }
    b.push_str("</tbody>\n</table>\n");
    page("Latest run", "index.html", &b)
}

/// The id of a plot on the trends page: benchmarks by name and unit (a benchmark is
/// measured in cycles and in ns), guest metrics by `test / metric`.
fn plot_id(name: &str, unit: Option<&str>) -> String {
    match unit {
        Some(u) => format!("plot-{}-{}", slug(name), slug(u)),
        None => format!("plot-{}", slug(name)),
    }
}

/// The id of a test's row in the compatibility matrix: the name itself (catalogue names are
/// `[a-z0-9_:]`, valid in an id and a URL fragment; a slug could make two names one).
fn test_row_id(name: &str) -> String {
    format!("t-{}", esc(name))
}

/// The first section of the first page: what changed since the previous run of the same
/// host (`hvprobe compare` of the two): tests whose outcome or signature changed, the
/// benchmarks that pass the statistical test, the host facts; each linked to its detail.
fn what_changed(b: &mut String, latest: &Full, previous: Option<&Full>) {
    b.push_str("<h2 id=\"changes\">What changed</h2>\n");
    let Some(prev) = previous else {
        b.push_str("<p>The first run of this host with tests: nothing to compare it with yet.</p>\n");
        return;
    };
    let mut c = crate::compare::compare(&prev.results, &latest.results);
    // A benchmark measured in only one of the runs (one ran `--bench`, the other not) is
    // no change of the host: counted, not listed.
    let one_sided = c.benchmarks.iter().filter(|x| x.before.is_none() || x.after.is_none()).count();
    c.benchmarks.retain(|x| x.before.is_some() && x.after.is_some());
    let count = |change| c.tests.iter().filter(|t| t.change == change).count();
    let deviations =
        c.tests.iter().filter(|t| t.after == Some(Outcome::Xfail) && t.change != Change::Improvement).count();
    let _ = writeln!(
        b,
        "<p class=\"changes\">Since the previous run of this host ({}, file <code>{}</code>): \
         <strong>{} regressions</strong>, {} improvements, {} new or changed deviations ({} test changes in all), \
         {} benchmark changes that pass the rank-sum test (p &lt; {}, at least x{:.1}; {} measured in one run only), \
         {} host facts changed.</p>",
        esc(&prev.results.started),
        esc(&prev.file_name()),
        count(Change::Regression),
        count(Change::Improvement),
        deviations,
        c.tests.len(),
        c.benchmarks.len(),
        crate::compare::ALPHA,
        1.0 + c.min_effect,
        one_sided,
        c.host.len()
    );
    if c.is_empty() {
        b.push_str("<p>Nothing else changed: every outcome, signature and benchmark is as before.</p>\n");
        return;
    }
    if let Some((before, after)) = c.cpu_changed() {
        let _ = writeln!(
            b,
            "<p class=\"cpu-changed\"><strong>The host's CPU changed</strong> ({} → {}): the differences \
             below are between two machines, not only this hypervisor's; the trends draw a line per CPU.</p>",
            esc(before),
            esc(after)
        );
    }
    if !c.tests.is_empty() {
        b.push_str("<table class=\"changes\">\n<thead><tr><th>Change</th><th>Test</th><th>Before</th><th>After</th><th>Now</th></tr></thead>\n<tbody>\n");
        let mut tests: Vec<_> = c.tests.iter().collect();
        tests.sort_by_key(|t| (t.change, t.name.clone()));
        for t in tests {
            let kind = if t.after == Some(Outcome::Xfail) && t.change == Change::Changed {
                "deviation changed"
            } else if t.after == Some(Outcome::Xfail)
                && t.before != Some(Outcome::Xfail)
                && t.change != Change::Improvement
            {
                "new deviation"
            } else {
                t.change.name()
            };
            let name = |o: Option<Outcome>| o.map_or("–", Outcome::name);
            let _ = writeln!(
                b,
                "<tr class=\"c-{}\"><td>{}</td><td><a href=\"compat.html#{}\"><code>{}</code></a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                t.change.name(),
                kind,
                test_row_id(&t.name),
                esc(&t.name),
                name(t.before),
                name(t.after),
                esc(t.after_reason.as_deref().unwrap_or(""))
            );
        }
        b.push_str("</tbody>\n</table>\n");
    }
    if !c.benchmarks.is_empty() {
        b.push_str("<table class=\"changes\">\n<thead><tr><th>Change</th><th>Benchmark</th><th>Unit</th><th>Before</th><th>After</th><th>Ratio</th></tr></thead>\n<tbody>\n");
        for x in &c.benchmarks {
            let side = |v: Option<(f64, f64)>| v.map_or("–".to_string(), |(m, s)| format!("{m:.1} ± {s:.1}"));
            let _ = writeln!(
                b,
                "<tr class=\"c-{}\"><td>{}</td><td><a href=\"trends.html#{}\"><code>{}</code></a></td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                x.change.name(),
                x.change.name(),
                plot_id(&x.name, Some(&x.unit)),
                esc(&x.name),
                esc(&x.unit),
                side(x.before),
                side(x.after),
                x.ratio.map_or("–".into(), |r| format!("x{r:.2}"))
            );
        }
        b.push_str("</tbody>\n</table>\n");
    }
    if !c.host.is_empty() {
        b.push_str("<ul class=\"host-changes\">\n");
        for h in &c.host {
            let _ = writeln!(b, "<li>{}: {} → {}</li>", esc(&h.field), esc(&h.before), esc(&h.after));
        }
        b.push_str("</ul>\n");
    }
}

/// Colours of the three paths on the path chart (Okabe–Ito, as the trends).
fn path_color(path: &str) -> &'static str {
    match path {
        "full" => "#d55e00",
        "para" => "#0072b2",
        "hw" => "#009e73",
        _ => "#777777",
    }
}

/// The path table as a chart: per behaviour, a bar per way, its length the guest cycles
/// per operation on a log scale, its colour the path, and after it whether the run bore
/// the path's claim out. Hand-drawn SVG: one bar per row needs no plotting library.
fn path_section(b: &mut String, tests: &[TestResult]) {
    let table = crate::paths::table(tests);
    b.push_str("<h2 id=\"paths\">Paths: the cost of each way to the same behaviour</h2>\n");
    if table.is_empty() {
        b.push_str("<p>No case of this run belongs to the path table.</p>\n");
        return;
    }
    let costs: Vec<f64> =
        table.iter().flat_map(|t| &t.ways).filter_map(|w| w.cost_cycles).filter(|c| *c > 0.0).collect();
    let lo = costs.iter().copied().fold(f64::INFINITY, f64::min).max(1.0).log10().floor();
    let hi = costs.iter().copied().fold(1.0, f64::max).log10().ceil().max(lo + 1.0);
    let (label_w, bar_w, note_w, row_h, gap, top) = (300.0, 440.0, 250.0, 20.0, 12.0, 30.0);
    let rows: usize = table.iter().map(|t| t.ways.len()).sum();
    let height = top + rows as f64 * row_h + table.len() as f64 * gap + 26.0;
    let width = label_w + bar_w + note_w;
    let x_of = |c: f64| label_w + bar_w * ((c.max(1.0).log10() - lo) / (hi - lo)).clamp(0.0, 1.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"paths\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>\n"
    );
    for d in (lo as i32)..=(hi as i32) {
        let x = x_of(10f64.powi(d));
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"14\" text-anchor=\"middle\" fill=\"#555\">1e{d}</text>",
            top - 8.0,
            height - 22.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">guest TSC cycles per operation (log scale)</text>",
        label_w + bar_w,
        height - 6.0
    );
    let mut y = top;
    for t in &table {
        let agree = match t.results_agree {
            Some(true) => "",
            Some(false) => " (results differ)",
            None => "",
        };
        for w in &t.ways {
            let label = format!("{} · {}{agree}", t.behaviour, w.way);
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                label_w - 8.0,
                y + 14.0,
                esc(&label)
            );
            let note = match (w.cost_cycles, w.claim_held) {
                (None, _) => format!("no cost: {}", w.outcome.name()),
                (Some(c), held) => {
                    let x = x_of(c);
                    let _ = write!(
                        svg,
                        "<rect class=\"way p-{}\" x=\"{label_w}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {} cycles, {}</title></rect>",
                        esc(&w.path),
                        y + 3.0,
                        (x - label_w).max(1.0),
                        row_h - 6.0,
                        path_color(&w.path),
                        esc(&w.test),
                        num(c),
                        esc(&w.claim)
                    );
                    let claim = match held {
                        Some(true) => "claim held",
                        Some(false) => "claim NOT held",
                        None => "claim unchecked",
                    };
                    format!("{} {} cycles, {claim}", w.path, num(c))
                }
            };
            let broken = w.claim_held == Some(false);
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\"{}>{}</text>",
                label_w + bar_w + 8.0,
                y + 14.0,
                if broken { " fill=\"#b3261e\" font-weight=\"bold\"" } else { "" },
                esc(&note)
            );
            y += row_h;
        }
        y += gap;
    }
    svg.push_str("</svg>\n");
    b.push_str("<p class=\"muted\">Each bar is one way a behaviour was reached in this run, coloured by its path ");
    for p in ["full", "para", "hw"] {
        let _ = write!(b, "<span class=\"swatch\" style=\"background:{}\"></span>{p}", path_color(p));
    }
    b.push_str(". After it, whether the run's counts bore out what the path claims (full: the hypervisor ");
    b.push_str("steps in at every access; para: no exit to userspace; hw: fewer interventions than accesses).</p>\n");
    b.push_str(&svg);
}

/// Counts by (outcome, expected timeout), each with a test that shows how to render it.
type OutcomeGroups<'a> = BTreeMap<(Outcome, bool), (usize, &'a TestResult)>;

/// The tests with their reason and failure signature (end, instruction bytes, message).
fn failure_table(b: &mut String, tests: &[&TestResult]) {
    if tests.is_empty() {
        b.push_str("<p>None.</p>\n");
        return;
    }
    b.push_str("<table class=\"failures\">\n<thead><tr><th>Test</th><th>Outcome</th><th>Reason</th><th>End</th>");
    b.push_str("<th>Instruction bytes</th><th>Message</th><th>Details</th></tr></thead>\n<tbody>\n");
    for t in tests {
        let reason = esc(t.reason.as_deref().unwrap_or(""));
        let _ = write!(b, "<tr><td><code>{}</code></td>{}<td>{reason}</td>", esc(&t.name), outcome_cell(t));
        match &t.failure {
            None => b.push_str("<td></td><td></td><td></td><td></td>"),
            Some(f) => {
                let mut details = esc(&f.description);
                if let Some(file) = &f.file {
                    let line = f.line.map(|l| format!(":{l}")).unwrap_or_default();
                    let _ = write!(details, "<br>at <code>{}{line}</code>", esc(file));
                }
                if let (Some(e), Some(a)) = (f.expected, f.actual) {
                    let _ = write!(details, "<br>expected <code>{e:#x}</code>, got <code>{a:#x}</code>");
                }
                if let Some(cpu) = &f.cpu {
                    let _ = write!(details, "<details><summary>registers</summary><pre>{}</pre></details>", esc(cpu));
                }
                let _ = write!(
                    b,
                    "<td>{}</td><td>{}</td><td>{}</td><td>{details}</td>",
                    esc(&f.end),
                    opt_code(f.insn_bytes.as_ref()),
                    esc(f.message.as_deref().unwrap_or(""))
                );
            }
        }
        b.push_str("</tr>\n");
    }
    b.push_str("</tbody>\n</table>\n");
}

fn compat_page(loaded: &Loaded) -> String {
    let mut b = String::new();
    // Each host's latest run with tests (a benchmark-only run has nothing to show here).
    let columns: Vec<(&Full, BTreeMap<&str, &TestResult>)> = loaded
        .latest
        .values()
        .map(|run| (run, run.results.tests.iter().map(|t| (t.name.as_str(), t)).collect()))
        .collect();
    let names: BTreeSet<&str> = columns.iter().flat_map(|(_, tests)| tests.keys().copied()).collect();
    b.push_str("<h1>Compatibility matrix</h1>\n");
    let _ = writeln!(
        b,
        "<p>{} tests on {} hosts, from each host's latest run. Highlighted cells are failures and \
         deviations (xfail, fail, xpass, error, unexpected timeout); hover a cell for its reason.</p>",
        names.len(),
        columns.len()
    );
    b.push_str("<table class=\"compat\">\n<thead><tr><th>Test</th>");
    for (run, _) in &columns {
        let h = &run.results.host;
        let _ = write!(
            b,
            "<th class=\"host\"><div>{}</div><div>{}</div><div>{}</div><div class=\"muted\">{}</div></th>",
            esc(&h.hostname),
            esc(&crate::crossref::column(&run.results)),
            esc(&h.kernel),
            esc(&run.results.started)
        );
    }
    b.push_str("</tr></thead>\n<tbody>\n");
    for name in &names {
        let _ = write!(b, "<tr id=\"{}\"><th scope=\"row\"><code>{}</code></th>", test_row_id(name), esc(name));
        for (_, tests) in &columns {
            match tests.get(name) {
                None => b.push_str("<td class=\"absent\" title=\"not run on this host\">–</td>"),
                Some(t) => {
                    let mut tip = t.reason.clone().unwrap_or_default();
                    if let Some(f) = &t.failure {
                        if !tip.is_empty() {
                            tip.push('\n');
                        }
                        tip.push_str(&f.signature());
                    }
                    let dev = if t.is_deviation() { " dev" } else { "" };
                    let title = if tip.is_empty() { String::new() } else { format!(" title=\"{}\"", esc(&tip)) };
                    let _ = write!(b, "<td class=\"{}{dev}\"{title}>{}</td>", outcome_class(t), esc(&outcome_label(t)));
                }
            }
        }
        b.push_str("</tr>\n");
    }
    b.push_str("</tbody>\n</table>\n");
    page("Compatibility", "compat.html", &b)
}

/// Colours per host (Okabe–Ito, readable by colour-blind people), the same on every plot.
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(230, 159, 0),
    RGBColor(0, 0, 0),
    RGBColor(120, 120, 120),
];

const PLOT_SIZE: (u32, u32) = (520, 300);

/// One measurement of a series: when, the median (or value) and its spread, if measured.
#[derive(Clone, Copy)]
struct Point {
    at: i64,
    value: f64,
    spread: Option<f64>,
}

/// A plot's series, by host (hostname, backend, CPU model).
type Series = BTreeMap<SeriesKey, Vec<Point>>;

/// The trends page's group of a benchmark or metric: its area, and for a guest operation
/// its path, so that the grid puts like with like.
fn trend_group(name: &str, path: Option<&str>, metric: bool) -> String {
    let area = name.split("::").next().unwrap_or(name);
    match (metric, area, path) {
        (true, ..) => format!("Guest test metrics: {area}"),
        (false, "bench", Some(p)) => format!("Guest operations, {p} path"),
        (false, "bench", None) => "Guest operations".into(),
        (false, "host", _) => "Host operations".into(),
        (false, "suite", _) => "The suite's own cost".into(),
        (false, a, _) => format!("Benchmarks: {a}"),
    }
}

/// How a unit is named on the trends page, and its CSS class: guest TSC cycles and host
/// nanoseconds must never be mistaken for each other.
fn unit_label(unit: &str) -> (String, &'static str) {
    match unit {
        "cycles" => ("guest TSC cycles".into(), "u-cycles"),
        "ns" => ("host ns".into(), "u-ns"),
        u => (u.to_string(), "u-other"),
    }
}

/// A host's latest value of a series, and its change from the run before, in words.
fn latest_and_change(points: &[Point], unit: &str) -> String {
    let mut pts = points.to_vec();
    pts.sort_by_key(|p| p.at);
    let Some(last) = pts.last() else { return String::new() };
    let spread = last.spread.filter(|s| *s > 0.0).map_or(String::new(), |s| format!(" ± {}", num(s)));
    let change = match pts.len().checked_sub(2).map(|i| pts[i]) {
        Some(prev) if prev.value != 0.0 => {
            format!(", {:+.1}% since the run before", 100.0 * (last.value / prev.value - 1.0))
        }
        _ => ", the first run".into(),
    };
    format!("latest <strong>{}</strong>{spread} {}{change}", num(last.value), esc(unit))
}

/// A value with as many digits as it needs to be read, not more.
fn num(v: f64) -> String {
    match v.abs() {
        a if a >= 1000.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.3}"),
    }
}

fn trends_page(loaded: &Loaded) -> Result<(String, usize), DashboardError> {
    let hosts: BTreeSet<SeriesKey> = loaded.runs.iter().map(Run::series_key).collect();
    let color_of = |key: &SeriesKey| PALETTE[hosts.iter().position(|h| h == key).unwrap_or(0) % PALETTE.len()];
    // "hostname / backend", and the CPU model where one host ran on more than one.
    let legend_of = |key: &SeriesKey| {
        let models = hosts.iter().filter(|h| (&h.0, &h.1) == (&key.0, &key.1)).count();
        let cpu = if models > 1 { format!(" on {}", esc(&key.2)) } else { String::new() };
        format!("{} / {}{cpu}", esc(&key.0), esc(&key.1))
    };
    let (benches, metrics) = (&loaded.trends.benches, &loaded.trends.metrics);

    // group -> unit -> plots, each group and unit in name order.
    type Item<'a> = (String, &'a str, &'a Series, String);
    let mut groups: BTreeMap<(u8, String), BTreeMap<String, Vec<Item>>> = BTreeMap::new();
    for ((n, u), series) in benches {
        let path = loaded.trends.paths.get(n).map(String::as_str);
        let order = if n.starts_with("bench::") { 0 } else { 1 };
        groups.entry((order, trend_group(n, path, false))).or_default().entry(u.clone()).or_default().push((
            n.clone(),
            u.as_str(),
            series,
            plot_id(n, Some(u)),
        ));
    }
    for ((n, u), series) in metrics {
        groups.entry((2, trend_group(n, None, true))).or_default().entry(u.clone()).or_default().push((
            n.clone(),
            u.as_str(),
            series,
            plot_id(n, None),
        ));
    }

    let mut b = String::new();
    let mut toc = String::new();
    let mut figures = String::new();
    let mut ids = BTreeSet::new();
    let mut plots = 0;
    b.push_str("<h1>Trends</h1>\n<p>One small plot per benchmark and per guest test metric, over every run, ");
    b.push_str("grouped by area and path, and within a group by unit: <span class=\"unit u-cycles\">guest TSC ");
    b.push_str("cycles</span> (what the guest measured) apart from <span class=\"unit u-ns\">host ns</span> ");
    b.push_str("(what the host timed). x: when the run started (UTC); y: the median; the shaded band and the ");
    b.push_str("error bars span median ± spread (median absolute deviation). One line per host, and under ");
    b.push_str("each plot every host's latest value and its change since that host's run before. Metrics ");
    b.push_str("are single values with no spread.</p>\n");
    if groups.is_empty() {
        b.push_str("<p>No run has benchmarks or test metrics yet.</p>\n");
    }
    for ((_, group), units) in &groups {
        let gid = slug(group);
        let count: usize = units.values().map(Vec::len).sum();
        let _ = writeln!(toc, "<li><a href=\"#{gid}\">{}</a> ({count})</li>", esc(group));
        let _ = writeln!(figures, "<h2 id=\"{gid}\">{}</h2>", esc(group));
        for (unit, items) in units {
            let (label, class) = unit_label(unit);
            let _ = writeln!(
                figures,
                "<h3>In <span class=\"unit {class}\">{}</span></h3>\n<div class=\"grid\">",
                esc(&label)
            );
            for (name, unit, series, base) in items {
                let mut id = base.clone();
                let mut n = 2;
                while ids.contains(&id) {
                    id = format!("{base}-{n}");
                    n += 1;
                }
                ids.insert(id.clone());
                let svg = draw_plot(series, unit, &color_of)
                    .map_err(|e| DashboardError::Plot { plot: name.clone(), message: e.to_string() })?;
                plots += 1;
                let _ = write!(
                    figures,
                    "<figure id=\"{id}\" class=\"f-{class}\">\n<figcaption><code>{}</code> <span class=\"unit {class}\">{}</span></figcaption>\n{svg}<ul class=\"legend\">",
                    esc(name),
                    esc(&label)
                );
                for (key, points) in *series {
                    let RGBColor(r, g, bl) = color_of(key);
                    let _ = write!(
                        figures,
                        "<li><span class=\"swatch\" style=\"background:#{r:02x}{g:02x}{bl:02x}\"></span>{} ({} runs): {}</li>",
                        legend_of(key),
                        points.len(),
                        latest_and_change(points, unit)
                    );
                }
                figures.push_str("</ul>\n</figure>\n");
            }
            figures.push_str("</div>\n");
        }
    }
    let _ = write!(b, "<ul class=\"toc\">\n{toc}</ul>\n{figures}");
    Ok((page("Trends", "trends.html", &b), plots))
}

/// Draws one plot to an SVG string: x in hours since the epoch (so ticks land on whole hours),
/// one line per host, a translucent band and error bars for median ± spread.
fn draw_plot(
    series: &Series,
    unit: &str,
    color_of: &dyn Fn(&SeriesKey) -> RGBColor,
) -> Result<String, Box<dyn std::error::Error>> {
    let points = || series.values().flatten();
    let hours = |at: i64| at as f64 / 3600.0;
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in points() {
        x0 = x0.min(hours(p.at));
        x1 = x1.max(hours(p.at));
        let s = p.spread.unwrap_or(0.0);
        y0 = y0.min(p.value - s);
        y1 = y1.max(p.value + s);
    }
    if !(x0.is_finite() && x1.is_finite() && y0.is_finite() && y1.is_finite()) {
        return Err("no finite data to plot".into());
    }
    let pad = ((x1 - x0) * 0.05).max(0.5);
    let (x0, x1) = (x0 - pad, x1 + pad);
    let pad = if y1 - y0 > f64::EPSILON * y1.abs().max(1.0) { (y1 - y0) * 0.12 } else { (y1.abs() * 0.1).max(1.0) };
    // Times and counts are never negative: do not invent a negative part of the axis.
    let (y0, y1) = (if y0 >= 0.0 { (y0 - pad).max(0.0) } else { y0 - pad }, y1 + pad);
    if !(y1 - y0).is_finite() {
        return Err("the values are too large to plot".into());
    }

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(76)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        let x_label = |h: &f64| date_label((h * 3600.0).round() as i64);
        chart
            .configure_mesh()
            .x_labels(4)
            .y_labels(5)
            .x_label_formatter(&x_label)
            .y_label_formatter(&|v: &f64| num(*v))
            .x_desc("run start (UTC)")
            .y_desc(unit)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()?;
        for (key, pts) in series {
            let color = color_of(key);
            let mut pts = pts.clone();
            pts.sort_by_key(|p| p.at);
            let xy: Vec<(f64, f64)> = pts.iter().map(|p| (hours(p.at), p.value)).collect();
            let spreads: Vec<(f64, f64, f64)> =
                pts.iter().filter_map(|p| p.spread.map(|s| (hours(p.at), p.value - s, p.value + s))).collect();
            if spreads.len() >= 2 {
                let band: Vec<(f64, f64)> = spreads
                    .iter()
                    .map(|(x, _, hi)| (*x, *hi))
                    .chain(spreads.iter().rev().map(|(x, lo, _)| (*x, *lo)))
                    .collect();
                chart.draw_series(std::iter::once(Polygon::new(band, color.mix(0.18).filled())))?;
            }
            let bar = color.stroke_width(1);
            for (x, lo, hi) in spreads.iter().filter(|(_, lo, hi)| hi > lo) {
                chart.draw_series(std::iter::once(PathElement::new(vec![(*x, *lo), (*x, *hi)], bar)))?;
                for y in [*lo, *hi] {
                    let cap = EmptyElement::at((*x, y)) + PathElement::new(vec![(-5, 0), (5, 0)], bar);
                    chart.draw_series(std::iter::once(cap))?;
                }
            }
            chart.draw_series(LineSeries::new(xy.iter().copied(), color.stroke_width(2)))?;
            chart.draw_series(xy.iter().map(|(x, y)| Circle::new((*x, *y), 4, color.filled())))?;
        }
        root.present()?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Benchmark, MetricValue};
    use std::time::SystemTime;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Two runs on one host a day apart and one on another host, with benchmarks and metrics.
    fn fixture(dir: &Path) {
        let mut a = crate::tests::sample();
        a.started = crate::rfc3339(at(1_795_000_000));
        a.host.hostname = "alpha".into();
        a.host.backend = "kvm_intel".into();
        a.host.kernel = "6.18.0-alpha".into();
        let mut b = a.clone();
        b.started = crate::rfc3339(at(1_795_086_400));
        b.benchmarks[0].median = 1.4;
        b.tests[0].metrics.insert("cpuid".into(), MetricValue { value: 1300.0, unit: "cycles".into() });
        b.benchmarks.push(Benchmark::new("vmexit", "ns", 900.0, 30.0, 100));
        let mut c = crate::tests::sample();
        c.started = crate::rfc3339(at(1_795_040_000));
        c.host.hostname = "beta".into();
        c.host.kernel = "6.12.9-beta".into();
        c.tests[0].outcome = Outcome::Xfail;
        c.tests[0].reason = Some("PVM lacks the feature".into());
        for (name, r) in [("a.json", &a), ("b.json", &b), ("c.json", &c)] {
            r.write_atomic(&dir.join(name)).unwrap();
        }
        std::fs::write(dir.join("notes.txt"), "not a results file").unwrap();
    }

    fn read(dir: &Path, page: &str) -> String {
        std::fs::read_to_string(dir.join(page)).unwrap()
    }

    #[test]
    fn pages_show_the_latest_run_trends_and_the_matrix() {
        let (input, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        fixture(input.path());
        let site = build_site(input.path(), &out.path().join("site")).unwrap();
        let dir = out.path().join("site");
        assert_eq!(site.runs, 3);
        assert_eq!(site.hosts, 2);
        // Benchmarks cpuid and vmexit, and the metric of every test (all seven carry "cpuid").
        assert_eq!(site.plots, 2 + 7);
        assert_eq!(site.pages, ["index.html", "trends.html", "compat.html"].map(|p| dir.join(p)));

        let index = read(&dir, "index.html");
        assert!(index.contains("Latest run: alpha (kvm_intel)"), "the latest run is b.json");
        assert!(index.contains("6.18.0-alpha") && index.contains("AMD EPYC") && index.contains("2000000 kHz"));
        assert!(index.contains("<span class=\"badge o-pass\">pass <b>1</b></span>"));
        assert!(index.contains("<table class=\"areas\">") && index.contains("<th>hw</th>"));
        assert!(index.contains("<span class=\"badge o-xfail\">1 xfail</span>"));
        assert!(index.contains("<span class=\"badge o-timeout-expected\">timeout <b>1</b> (1 expected)</span>"));
        assert!(index.contains("<span class=\"badge o-timeout-expected\">1 timeout (expected)</span>"));
        let failures = &index[index.find("id=\"failures\"").unwrap()..index.find("id=\"deviations\"").unwrap()];
        assert!(failures.contains("cpu::case1::long64") && failures.contains("<code>0f 0b</code>"));
        assert!(failures.contains("KVM_EXIT_SHUTDOWN") && failures.contains("shutdown"));
        assert!(failures.contains("cpu::case4::long64"), "xpass is a failure");
        assert!(!failures.contains("cpu::case5::long64"), "the watchdog's expected timeout is fine");
        assert!(index.contains("id=\"deviations\">Known deviations (1)"));

        let trends = read(&dir, "trends.html");
        assert_eq!(trends.matches("<svg").count(), 9);
        assert!(trends.contains("<figcaption><code>cpuid</code> <span class=\"unit u-ns\">host ns</span>"));
        assert!(
            trends.contains("<code>cpu::case0::long64 / cpuid</code> <span class=\"unit u-cycles\">guest TSC cycles")
        );
        assert!(trends.contains("run start (UTC)") && trends.contains("<polygon"), "axis label and spread band");

        let compat = read(&dir, "compat.html");
        assert!(compat.contains("<div>alpha</div><div>kvm_intel on kvm</div><div>6.18.0-alpha</div>"));
        assert!(compat.contains("<div>beta</div><div>kvm_pvm on kvm</div><div>6.12.9-beta</div>"));
        assert_eq!(compat.matches("\"><th scope=\"row\">").count(), 7);
        assert!(compat.contains("<tr id=\"t-cpu::case0::long64\"><th scope=\"row\">"), "rows carry ids for links");
        assert!(compat.contains("<td class=\"o-xfail dev\" title=\"PVM lacks the feature\">xfail</td>"));
        assert!(compat.contains("<td class=\"o-timeout-expected\" title=\"because\">timeout (expected)</td>"));

        for (page, others) in [
            ("index.html", ["trends.html", "compat.html"]),
            ("trends.html", ["index.html", "compat.html"]),
            ("compat.html", ["index.html", "trends.html"]),
        ] {
            // The SVG namespace is a name, not something the browser fetches.
            let html = read(&dir, page).replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
            for other in others {
                assert!(html.contains(&format!("<a href=\"{other}\">")), "{page} links to {other}");
            }
            assert!(!html.contains("<script") && !html.contains("http://") && !html.contains("https://"));
        }
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 3, "no temporary files are left: {left:?}");
    }

    #[test]
    fn a_host_that_changed_cpu_gets_a_trend_line_per_cpu() {
        let (input, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        fixture(input.path());
        let single = build_site(input.path(), &out.path().join("one")).unwrap();
        let trends = read(&out.path().join("one"), "trends.html");
        assert!(trends.contains("</span>alpha / kvm_intel (2 runs): "), "one CPU: no model in the legend");
        let mut moved = crate::tests::sample();
        moved.started = crate::rfc3339(at(1_795_172_800));
        moved.host.hostname = "alpha".into();
        moved.host.backend = "kvm_intel".into();
        moved.host.cpu_model = "Intel(R) Xeon(R) Processor".into();
        moved.write_atomic(&input.path().join("d.json")).unwrap();
        let site = build_site(input.path(), &out.path().join("two")).unwrap();
        assert_eq!(site.hosts, single.hosts, "still the same host by name and backend");
        let trends = read(&out.path().join("two"), "trends.html");
        assert!(trends.contains("</span>alpha / kvm_intel on AMD EPYC (2 runs): "), "{trends}");
        assert!(trends.contains("</span>alpha / kvm_intel on Intel(R) Xeon(R) Processor (1 runs): "), "{trends}");
        let index = read(&out.path().join("two"), "index.html");
        assert!(index.contains("The host's CPU changed</strong> (AMD EPYC → Intel(R) Xeon(R) Processor)"), "{index}");
        assert!(!read(&out.path().join("one"), "index.html").contains("CPU changed"));
    }

    #[test]
    fn a_benchmark_only_run_does_not_hide_the_latest_tests() {
        let (input, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        fixture(input.path());
        let before = build_site(input.path(), out.path()).unwrap();
        let index_before = read(out.path(), "index.html");
        let compat_before = read(out.path(), "compat.html");
        let mut bench_only = crate::tests::sample();
        bench_only.tests.clear();
        bench_only.started = "2099-01-01T00:00:00Z".into();
        bench_only.write_atomic(&input.path().join("zz-bench.json")).unwrap();
        let after = build_site(input.path(), out.path()).unwrap();
        assert_eq!(after.runs, before.runs + 1);
        let index = read(out.path(), "index.html");
        assert!(!index.contains("Outcomes (0 tests)"), "the latest run with tests is shown");
        assert_eq!(index.matches("Outcomes (").count(), index_before.matches("Outcomes (").count());
        assert_eq!(read(out.path(), "compat.html"), compat_before, "the matrix ignores the benchmark-only run");
    }

    #[test]
    fn output_is_deterministic() {
        let (input, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        fixture(input.path());
        build_site(input.path(), &out.path().join("one")).unwrap();
        build_site(input.path(), &out.path().join("two")).unwrap();
        for page in ["index.html", "trends.html", "compat.html"] {
            assert_eq!(read(&out.path().join("one"), page), read(&out.path().join("two"), page), "{page}");
        }
    }

    #[test]
    fn malformed_and_missing_inputs_are_errors_naming_the_file() {
        let (input, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let e = build_site(input.path(), out.path()).unwrap_err();
        assert!(matches!(e, DashboardError::NoResults { .. }));
        assert!(e.to_string().contains("no results files"), "{e}");

        // One bad file among good ones is left out with its reason, never fatal.
        fixture(input.path());
        let good = build_site(input.path(), out.path()).unwrap();
        let bad = input.path().join("broken.json");
        for (text, words) in [
            ("{\"schema\": \"hvprobe.results/1\", \"tests\": [", ["broken.json", "line 1 column"]),
            ("{\"schema\": \"other/2\"}", ["broken.json", "other/2"]),
        ] {
            std::fs::write(&bad, text).unwrap();
            let site = build_site(input.path(), out.path()).unwrap();
            assert_eq!(site.runs, good.runs, "the good runs are all there");
            assert_eq!(site.skipped.len(), 1);
            assert!(words.iter().all(|w| site.skipped[0].contains(w)), "{:?}", site.skipped);
        }
        let mut r = crate::tests::sample();
        r.started = "yesterday".into();
        r.write_atomic(&bad).unwrap();
        let site = build_site(input.path(), out.path()).unwrap();
        assert!(site.skipped[0].contains("broken.json") && site.skipped[0].contains("yesterday"), "{:?}", site.skipped);

        // Nothing readable at all is an error that names the first problem.
        let lonely = tempfile::tempdir().unwrap();
        std::fs::write(lonely.path().join("only.json"), "{").unwrap();
        let e = build_site(lonely.path(), out.path()).unwrap_err().to_string();
        assert!(e.contains("no readable results file") && e.contains("only.json"), "{e}");

        let e = build_site(&input.path().join("absent"), out.path()).unwrap_err().to_string();
        assert!(e.contains("absent"), "{e}");
    }

    #[test]
    fn strings_from_results_files_are_escaped() {
        let (input, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut r = crate::tests::sample();
        r.host.hostname = "<b>host</b>".into();
        r.tests[1].reason = Some("<script>alert(\"x\")</script> & 'more'".into());
        r.tests[1].name = "cpu::<img src=x>::long64".into();
        r.write_atomic(&input.path().join("r.json")).unwrap();
        build_site(input.path(), out.path()).unwrap();
        for page in ["index.html", "trends.html", "compat.html"] {
            let html = read(out.path(), page);
            assert!(!html.contains("<script") && !html.contains("<img") && !html.contains("<b>host"), "{page}");
        }
        let index = read(out.path(), "index.html");
        assert!(index.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;more&#39;"));
        let compat = read(out.path(), "compat.html");
        assert!(compat.contains("title=\"&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;more&#39;\n"));
        assert!(read(out.path(), "trends.html").contains("cpu::&lt;img src=x&gt;::long64 / cpuid"));
    }

    #[test]
    fn timestamps_parse_back() {
        for secs in [0, 1_795_000_000, 951_782_400, 4_102_444_800] {
            assert_eq!(crate::parse_rfc3339(&crate::rfc3339(at(secs))), Some(secs as i64));
        }
        assert_eq!(crate::parse_rfc3339("2026-11-18T12:06:40.25+01:00"), Some(1_795_000_000));
        assert_eq!(crate::parse_rfc3339("2026-11-18T11:06:40"), None);
        assert_eq!(crate::parse_rfc3339("2026-13-18T11:06:40Z"), None);
        assert_eq!(date_label(1_795_000_000), "2026-11-18 11:06");
        assert_eq!(slug("cpu::case0 / cpuid"), "cpu-case0-cpuid");
    }
}
