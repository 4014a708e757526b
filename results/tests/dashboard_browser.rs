//! Loads the dashboard in Debian's headless Chromium over HTTP, the way people will look at
//! it: checks the rendered DOM of every page, that nothing the pages reference is missing,
//! that the browser logged no console errors, and keeps a screenshot of the trends page at
//! target/dashboard-trends.png for people to look at.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, UNIX_EPOCH};

use hvprobe_results::dashboard::build_site;
use hvprobe_results::paths::Section;
use hvprobe_results::{Benchmark, Failure, Host, MetricValue, Outcome, Results, TestResult};

const CHROMIUM: &str = "/usr/bin/chromium";
/// A cold Chromium start takes about a second here; a minute means it hangs.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);
const DAY: u64 = 86_400;
/// 2026-01-05T08:00:00Z.
const T0: u64 = 1_767_600_000;

fn host(hostname: &str, backend: &str, kernel: &str) -> Host {
    Host {
        hostname: hostname.into(),
        kernel: kernel.into(),
        cpu_vendor: if backend == "kvm_intel" { "GenuineIntel" } else { "AuthenticAMD" }.into(),
        cpu_model: format!("{hostname} CPU"),
        cpu_signature: None,
        backend: backend.into(),
        platform: None,
        platform_signature: None,
        platform_notes: Vec::new(),
        backend_params: Default::default(),
        kvm_api_version: Some(12),
        kvm_error: None,
        capabilities: [("KVM_CAP_IRQCHIP".to_string(), 1)].into(),
        tsc_khz: Some(2_400_000),
        cpuid: Vec::new(),
    }
}

fn test(name: &str, outcome: Outcome, reason: Option<&str>, metric: Option<(&str, f64, &str)>) -> TestResult {
    let mut parts = name.split("::");
    let area = parts.next().unwrap_or("misc").to_string();
    TestResult {
        name: name.into(),
        area,
        path: if name.contains("pv_") { "para" } else { "hw" }.into(),
        mode: "long64".into(),
        outcome,
        reason: reason.map(Into::into),
        expected_timeout: outcome == Outcome::Timeout,
        duration_ms: 12.5,
        kvm_stats: BTreeMap::new(),
        metrics: metric
            .map(|(m, v, u)| (m.to_string(), MetricValue { value: v, unit: u.into() }))
            .into_iter()
            .collect(),
        failure: matches!(outcome, Outcome::Fail | Outcome::Xfail).then(|| Failure {
            end: "shutdown".into(),
            description: "KVM_EXIT_SHUTDOWN: triple fault".into(),
            insn_bytes: Some("0f 01 d9".into()),
            message: Some("VMMCALL faulted".into()),
            file: Some("cases/svm.rs".into()),
            line: Some(42),
            expected: None,
            actual: None,
            cpu: Some("rip 0x401000 rsp 0x8000".into()),
        }),
        console: None,
        log: Vec::new(),
        behaviour: None,
        section: None,
    }
}

fn bench(name: &str, path: &str, unit: &str, median: f64, spread: f64) -> Benchmark {
    let mut b = Benchmark::new(name, unit, median, spread, 1000);
    b.path = Some(path.into());
    // Ten samples spread around the median, enough for compare's rank-sum test.
    b.sample_values = (0..10).map(|i| median + spread * (f64::from(i) - 4.5) / 4.5).collect();
    b
}

/// Two ways to one behaviour for the path table: a trapped UART (full) and a shared ring
/// (para). In beta's last run the ring exits to userspace, so its claim does not hold.
fn path_ways(ring_exits: bool) -> Vec<TestResult> {
    let way = |name: &str, path: &str, cost: f64, exits: u64, emulated: u64| {
        let mut t = test(name, Outcome::Pass, None, Some(("cost", cost, "cycles")));
        t.path = path.into();
        t.metrics.insert("result".into(), MetricValue { value: 4096.0, unit: "bytes".into() });
        t.behaviour = Some("io::bytes_to_device".into());
        t.section = Some(Section {
            ops: 4096,
            accesses: 4096,
            userspace_exits: [("io".to_string(), exits)].into(),
            kvm_stats: [("exits".to_string(), exits), ("insn_emulation".to_string(), emulated)].into(),
        });
        t
    };
    vec![
        way("io::bytes_to_device::uart", "full", 57_000.0, 4096, 4096),
        way("io::bytes_to_device::ring", "para", 24_000.0, if ring_exits { 3 } else { 0 }, 2),
    ]
}

/// Five runs over three days on two hosts, with deviations and moving numbers.
fn write_fixtures(dir: &Path) {
    let intel = || host("alpha", "kvm_intel", "6.18.2");
    let pvm = || host("beta", "kvm_pvm", "6.12.9-pvm");
    let lapic_reason = "PVM does not virtualise the TSC-deadline timer <yet>";
    let runs = [
        (intel(), T0, 1450.0, 40.0, 95.0, 1200.0, Outcome::Pass, Outcome::Pass),
        (intel(), T0 + DAY, 1520.0, 65.0, 102.0, 1260.0, Outcome::Fail, Outcome::Pass),
        (intel(), T0 + 2 * DAY + 3 * 3600, 1390.0, 30.0, 97.0, 1180.0, Outcome::Pass, Outcome::Pass),
        (pvm(), T0 + 6 * 3600, 2950.0, 120.0, 180.0, 2400.0, Outcome::Xfail, Outcome::Xfail),
        // cpuid 180 -> 420 ns: a change compare's rank-sum test and x2 minimum effect pass.
        (pvm(), T0 + 2 * DAY + 9 * 3600, 2810.0, 90.0, 420.0, 2330.0, Outcome::Xfail, Outcome::Xpass),
    ];
    for (i, (h, t, vmexit, spread, cpuid, cycles, svm, lapic)) in runs.into_iter().enumerate() {
        let backend = h.backend.clone();
        let mut r = Results::new(h, UNIX_EPOCH + Duration::from_secs(t));
        r.duration_s = 42.0;
        let lapic_why = match lapic {
            Outcome::Xfail => Some(lapic_reason),
            Outcome::Xpass => Some("the profile predicts a failure; it passed"),
            _ => None,
        };
        let svm_why = (svm != Outcome::Pass).then_some("VMMCALL is intercepted differently");
        r.tests = vec![
            test("cpu::cpuid::long64", Outcome::Pass, None, Some(("cpuid_exit", cycles, "cycles"))),
            test("cpu::pv_clock::long64", Outcome::Pass, None, Some(("read", 40.0 + i as f64 * 3.0, "ns"))),
            test("irq::lapic_timer::long64", lapic, lapic_why, None),
            test("svm::vmmcall::long64", svm, svm_why, None),
            test("mmu::huge_pages::long64", Outcome::Skip, Some("no 1 GiB pages"), None),
            test("watchdog::hang::long64", Outcome::Timeout, Some("the watchdog fired, as it should"), None),
        ];
        r.tests.extend(path_ways(i == 4));
        r.benchmarks = vec![
            bench("bench::vmexit_roundtrip::long64", "hw", "cycles", vmexit, spread),
            bench("bench::cpuid::long64", "full", "ns", cpuid, 4.0),
        ];
        r.write_atomic(&dir.join(format!("run{i}-{backend}.json"))).unwrap();
    }
}

/// Requests the server answered: (path, status).
type RequestLog = Arc<Mutex<Vec<(String, u16)>>>;

/// An HTTP/1.0 server for the files under `root`, one thread per connection, in the background.
fn serve(root: PathBuf) -> (SocketAddr, RequestLog) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = RequestLog::default();
    let root = root.canonicalize().unwrap();
    let server_log = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (root, log) = (root.clone(), server_log.clone());
            std::thread::spawn(move || answer(stream, &root, &log));
        }
    });
    (addr, log)
}

fn answer(mut stream: TcpStream, root: &Path, log: &RequestLog) {
    // Chromium opens speculative connections it may never use: do not wait on them forever.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&stream);
    let mut request = String::new();
    if reader.read_line(&mut request).unwrap_or(0) == 0 {
        return;
    }
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 0) && !header.trim_end().is_empty() {
        header.clear();
    }
    let mut words = request.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split(['?', '#']).next().unwrap_or("").to_string();
    let file = file_for(root, &path);
    let (status, body, kind) = match (method, file) {
        ("GET", Some(file)) => (200, std::fs::read(&file).unwrap(), content_type(&file)),
        _ => (404, b"not found\n".to_vec(), "text/plain"),
    };
    let reason = if status == 200 { "OK" } else { "Not Found" };
    let head = format!(
        "HTTP/1.0 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(&body));
    log.lock().unwrap().push((path, status));
}

/// The file a URL path names, only if it is a regular file under `root`.
fn file_for(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = path.strip_prefix('/')?;
    let rel = if rel.is_empty() { "index.html" } else { rel };
    if rel.contains(['%', '\\']) || !Path::new(rel).components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    let file = root.join(rel).canonicalize().ok()?;
    (file.starts_with(root) && file.is_file()).then_some(file)
}

fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("css") => "text/css",
        _ => "application/octet-stream",
    }
}

struct Browser {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs headless Chromium with a fresh profile; kills its whole process group if it
/// outlives [`BROWSER_TIMEOUT`], so the test cannot hang.
fn chromium(args: &[&str]) -> Browser {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));
    let (tx, rx) = mpsc::channel();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_tx = tx.clone();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        let _ = out_tx.send((1, s));
    });
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        let _ = tx.send((2, s));
    });
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let pid = child.id();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            kill_group(pid);
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} did not finish within {BROWSER_TIMEOUT:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut out, mut err) = (None, None);
    while out.is_none() || err.is_none() {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok((1, s)) => out = Some(s),
            Ok((_, s)) => err = Some(s),
            Err(_) => {
                // Helpers still hold the pipes after the browser exited; the group is alive,
                // so its id cannot have been reused.
                kill_group(pid);
                panic!("chromium {args:?} exited but its helper processes kept running; killed them");
            }
        }
    }
    Browser { status, stdout: out.unwrap_or_default(), stderr: err.unwrap_or_default() }
}

fn kill_group(pgid: u32) {
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).stderr(Stdio::null()).status();
}

/// Console messages and uncaught exceptions Chromium logged. This Chromium logs every
/// console message as INFO:CONSOLE whatever its level, and the pages have no scripts, so
/// any console message at all means something is wrong (a blocked or failed resource, a
/// parse problem): all of them count.
fn console_errors(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains("CONSOLE") || l.contains("Uncaught")).collect()
}

/// The values of every `attr="..."` in serialized HTML.
fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let needle = format!(" {attr}=\"");
    html.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

/// The serialized element that starts with `open` (e.g. `<table class="compat"`) through its
/// matching `close` tag; the dashboard does not nest these.
fn fragment<'a>(html: &'a str, open: &str, close: &str) -> &'a str {
    let start = html.find(open).unwrap_or_else(|| panic!("no {open} in the DOM"));
    let end = html[start..].find(close).unwrap_or_else(|| panic!("{open} is not closed")) + start + close.len();
    &html[start..end]
}

#[test]
fn the_dashboard_renders_in_headless_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} does not exist: the dashboard browser test needs Debian's headless Chromium. \
         Run `make setup-browser` (`make test` runs it) to install it."
    );
    let begun = Instant::now();
    let input = tempfile::tempdir().unwrap();
    let site_dir = tempfile::tempdir().unwrap();
    write_fixtures(input.path());
    let site = build_site(input.path(), site_dir.path()).unwrap();
    assert_eq!((site.runs, site.hosts), (5, 2));
    // Benchmarks vmexit_roundtrip and cpuid; metrics cpu::cpuid / cpuid_exit, cpu::pv_clock / read,
    // and the cost and result of the two path-table ways.
    assert_eq!(site.plots, 8);

    let (addr, requests) = serve(site_dir.path().to_path_buf());
    let url = |page: &str| format!("http://{addr}/{page}");
    let mut doms = BTreeMap::new();
    let mut console = Vec::new();
    for page in ["index.html", "trends.html", "compat.html"] {
        let b = chromium(&["--dump-dom", &url(page)]);
        assert!(b.status.success(), "chromium --dump-dom {page} failed: {}\n{}", b.status, b.stderr);
        assert!(b.stdout.contains("</html>"), "no DOM for {page}: {}\n{}", b.stdout, b.stderr);
        console.extend(console_errors(&b.stderr).into_iter().map(|l| format!("{page}: {l}")));
        doms.insert(page, b.stdout);
    }

    // The latest run is beta's second: its host facts, counts and deviations.
    let index = &doms["index.html"];
    assert!(index.contains("Latest run: beta (kvm_pvm)"), "{index}");
    for fact in ["6.12.9-pvm", "beta CPU", "2400000 kHz", "Outcomes by area and path", "Known deviations (1)"] {
        assert!(index.contains(fact), "index.html lacks {fact:?}");
    }
    let failures = fragment(index, "<h2 id=\"failures\"", "</table>");
    assert!(failures.contains("irq::lapic_timer::long64") && failures.contains("xpass"), "{failures}");
    let deviations = fragment(index, "<h2 id=\"deviations\"", "</table>");
    for sig in ["svm::vmmcall::long64", "VMMCALL is intercepted differently", "shutdown", "0f 01 d9", "VMMCALL faulted"]
    {
        assert!(deviations.contains(sig), "the deviations lack {sig:?}: {deviations}");
    }

    // The first page opens with what changed since beta's previous run: the xfail that
    // became an xpass (a regression) and cpuid's jump, each linking to its detail.
    let changes = fragment(index, "<h2 id=\"changes\"", "<h2 id=\"host\"");
    assert!(index.find("id=\"changes\"") < index.find("id=\"host\""), "what changed comes first");
    for want in [
        "Since the previous run of this host",
        "<strong>1 regressions</strong>",
        "1 benchmark changes that pass the rank-sum test",
        "href=\"compat.html#t-irq::lapic_timer::long64\"",
        "href=\"trends.html#plot-bench-cpuid-long64-ns\"",
    ] {
        assert!(changes.contains(want), "what changed lacks {want:?}: {changes}");
    }
    let regression = fragment(changes, "<tr class=\"c-regression\"", "</tr>");
    assert!(regression.contains("irq::lapic_timer::long64") && regression.contains("xpass"), "{regression}");
    assert!(!changes.contains("vmexit_roundtrip"), "2950 -> 2810 cycles is noise, not a change: {changes}");

    // The path table as a chart: a bar per way coloured by its path, the claim after it.
    let paths = fragment(index, "<h2 id=\"paths\"", "</svg>");
    let chart =
        roxmltree::Document::parse(&paths[paths.find("<svg").unwrap()..]).unwrap_or_else(|e| panic!("{e}\n{paths}"));
    let bars: Vec<_> = chart
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("class").is_some_and(|c| c.starts_with("way")))
        .collect();
    assert_eq!(bars.len(), 2, "one bar per way: {paths}");
    let width = |path: &str| -> f64 {
        let bar = bars.iter().find(|b| b.attribute("class") == Some(&format!("way p-{path}"))).unwrap();
        bar.attribute("width").unwrap().parse().unwrap()
    };
    assert!(width("full") > width("para"), "57000 cycles draw longer than 24000: {paths}");
    let notes: Vec<&str> = chart.descendants().filter_map(|n| n.text()).collect();
    assert!(notes.contains(&"full 57000 cycles, claim held"), "{notes:?}");
    assert!(notes.contains(&"para 24000 cycles, claim NOT held"), "the ring exited to userspace: {notes:?}");
    assert!(notes.iter().any(|t| t.contains("log scale")), "{notes:?}");

    // The trends: a grid per group (area and path), cycles apart from ns, and each host's
    // latest value with its change since its run before.
    let trends = &doms["trends.html"];
    let headings: Vec<&str> =
        trends.match_indices("<h2 id=\"").map(|(i, _)| &trends[i..i + trends[i..].find('>').unwrap()]).collect();
    for group in
        ["guest-operations-full-path", "guest-operations-hw-path", "guest-test-metrics-cpu", "guest-test-metrics-io"]
    {
        assert!(headings.iter().any(|h| h.contains(&format!("\"{group}\""))), "no group {group}: {headings:?}");
    }
    assert!(trends.matches("class=\"grid\"").count() >= 4, "plots sit in grids");
    let cpuid = fragment(trends, "<figure id=\"plot-bench-cpuid-long64-ns\"", "</figure>");
    assert!(cpuid.contains("class=\"f-u-ns\"") && cpuid.contains("host ns"), "ns are labelled as host ns: {cpuid}");
    assert!(
        cpuid.contains(
            "beta / kvm_pvm (2 runs): latest <strong>420.0</strong> ± 4.000 ns, +133.3% since the run before"
        ),
        "{cpuid}"
    );
    let vmexit = fragment(trends, "<figure id=\"plot-bench-vmexit-roundtrip-long64-cycles\"", "</figure>");
    assert!(vmexit.contains("class=\"f-u-cycles\"") && vmexit.contains("guest TSC cycles"), "{vmexit}");
    assert!(
        vmexit.contains(
            "alpha / kvm_intel (3 runs): latest <strong>1390</strong> ± 30.0 cycles, -8.6% since the run before"
        ),
        "{vmexit}"
    );

    // One inline SVG per plot, each with a drawn line, a marker per run and its axis labels.
    let expected = [
        ("plot-bench-vmexit-roundtrip-long64-cycles", "cycles", 5, true),
        ("plot-bench-cpuid-long64-ns", "ns", 5, true),
        ("plot-cpu-cpuid-long64-cpuid-exit", "cycles", 5, false),
        ("plot-cpu-pv-clock-long64-read", "ns", 5, false),
        ("plot-io-bytes-to-device-uart-cost", "cycles", 5, false),
    ];
    assert_eq!(trends.matches("<svg").count(), 8);
    for (id, unit, runs, spread) in expected {
        let figure = fragment(trends, &format!("<figure id=\"{id}\""), "</figure>");
        let svg_text = fragment(figure, "<svg", "</svg>");
        let svg = roxmltree::Document::parse(svg_text).unwrap_or_else(|e| panic!("{id}: {e}\n{svg_text}"));
        let named = |tag: &'static str| svg.descendants().filter(move |n| n.has_tag_name(tag));
        let lines: Vec<_> = named("polyline")
            .filter(|n| n.attribute("points").is_some_and(|p| p.split_whitespace().count() >= runs / 2))
            .collect();
        assert!(!lines.is_empty(), "{id} draws no series line");
        assert_eq!(named("circle").count(), runs, "{id} marks every run");
        assert_eq!(named("polygon").count() > 0, spread, "{id}: a spread band only where there is a spread");
        let texts: Vec<String> = named("text").filter_map(|n| n.text()).map(|t| t.trim().to_string()).collect();
        assert!(texts.iter().any(|t| t == unit), "{id} has no y axis label {unit}: {texts:?}");
        assert!(texts.iter().any(|t| t == "run start (UTC)"), "{id} has no x axis label");
        assert!(texts.iter().any(|t| t.starts_with("2026-01-0")), "{id} has no dates on the x axis: {texts:?}");
        assert!(figure.contains("alpha / kvm_intel") && figure.contains("beta / kvm_pvm"), "{id} legend");
    }

    // The matrix: a column per host, a row per test, deviations highlighted with their reason.
    let compat = &doms["compat.html"];
    let table_text = fragment(compat, "<table class=\"compat\"", "</table>");
    let table = roxmltree::Document::parse(table_text).unwrap_or_else(|e| panic!("{e}\n{table_text}"));
    let hosts: Vec<String> = table
        .descendants()
        .filter(|n| n.has_tag_name("th") && n.attribute("class") == Some("host"))
        .map(|n| n.descendants().filter(|d| d.is_text()).filter_map(|d| d.text()).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    assert!(
        hosts[0].starts_with("alpha kvm_intel 6.18.2") && hosts[1].starts_with("beta kvm_pvm 6.12.9-pvm"),
        "{hosts:?}"
    );
    let rows: Vec<_> = table
        .descendants()
        .filter(|n| n.has_tag_name("tr") && n.parent().is_some_and(|p| p.has_tag_name("tbody")))
        .collect();
    assert_eq!(rows.len(), 8, "one row per test");
    let cell = |test: &str, column: usize| {
        let row = rows
            .iter()
            .find(|r| r.descendants().any(|d| d.text() == Some(test)))
            .unwrap_or_else(|| panic!("no row {test}"));
        let cell = row.children().filter(|c| c.has_tag_name("td")).nth(column).unwrap();
        (cell.attribute("class").unwrap_or("").to_string(), cell.attribute("title").unwrap_or("").to_string())
    };
    let (class, title) = cell("svm::vmmcall::long64", 1);
    assert_eq!(class, "o-xfail dev");
    assert!(title.contains("VMMCALL is intercepted differently") && title.contains("insn=0f 01 d9"), "{title}");
    assert_eq!(cell("irq::lapic_timer::long64", 1).0, "o-xpass dev");
    assert_eq!(cell("svm::vmmcall::long64", 0).0, "o-pass", "alpha's latest run passed");
    assert_eq!(cell("watchdog::hang::long64", 0).0, "o-timeout-expected", "the watchdog's own timeout is fine");

    // Every page links to the other two; everything the pages reference is in the site.
    for (page, dom) in &doms {
        let links = attribute_values(dom, "href");
        for other in ["index.html", "trends.html", "compat.html"].iter().filter(|p| *p != page) {
            assert!(links.contains(other), "{page} does not link to {other}: {links:?}");
        }
        assert!(!dom.contains("<script"), "{page} has a script");
        for reference in links.into_iter().chain(attribute_values(dom, "src")) {
            if reference.starts_with('#') || reference.starts_with("data:") {
                continue;
            }
            assert!(!reference.contains("//"), "{page} references {reference}: the site must work offline");
            let (file, anchor) = reference.split_once('#').unwrap_or((reference, ""));
            assert!(site_dir.path().join(file).is_file(), "{page} references a missing {reference}");
            if !anchor.is_empty() {
                assert!(doms[file].contains(&format!(" id=\"{anchor}\"")), "{page} links to a missing {reference}");
            }
        }
    }

    // The screenshots people look at after the run: the first page and the trends.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = manifest.parent().unwrap_or(manifest).join("target");
    std::fs::create_dir_all(&target).unwrap();
    for page in ["index", "trends"] {
        let png = target.join(format!("dashboard-{page}.png"));
        let _ = std::fs::remove_file(&png);
        let shot = format!("--screenshot={}", png.display());
        let b = chromium(&[&shot, "--window-size=1280,1600", &url(&format!("{page}.html"))]);
        assert!(b.status.success(), "chromium --screenshot failed: {}\n{}", b.status, b.stderr);
        console.extend(console_errors(&b.stderr).into_iter().map(|l| format!("screenshot of {page}: {l}")));
        let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()));
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", png.display());
        assert!(bytes.len() > 10 * 1024, "{} is only {} bytes: a blank page?", png.display(), bytes.len());
        let dimension = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        assert_eq!((dimension(16), dimension(20)), (1280, 1600), "screenshot size");
    }

    assert!(console.is_empty(), "chromium logged console errors:\n{}", console.join("\n"));
    let requests = requests.lock().unwrap().clone();
    let failed: Vec<_> = requests.iter().filter(|(_, status)| *status != 200).collect();
    assert!(failed.is_empty(), "requests that failed: {failed:?} (all: {requests:?})");
    for page in ["/index.html", "/trends.html", "/compat.html"] {
        assert!(requests.iter().any(|(p, _)| p == page), "{page} was never requested: {requests:?}");
    }
    eprintln!(
        "browser test took {:.1} s; screenshots at {}/dashboard-{{index,trends}}.png",
        begun.elapsed().as_secs_f64(),
        target.display()
    );
}

/// Two real runs of this project on a PVM host, trimmed to 39 and 47 of their tests (the
/// records themselves untouched): between them the suite gained SMM and Hyper-V cases,
/// four known deviations changed their signature, and KVM reported two capabilities the
/// older build did not ask for. The first page must say exactly that.
#[test]
fn the_first_page_shows_what_changed_between_two_real_runs() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real-pvm");
    let site_dir = tempfile::tempdir().unwrap();
    let site = build_site(&fixtures, site_dir.path()).unwrap();
    assert_eq!((site.runs, site.hosts), (2, 1));
    let (addr, _requests) = serve(site_dir.path().to_path_buf());
    let b = chromium(&["--dump-dom", &format!("http://{addr}/index.html")]);
    assert!(b.status.success(), "chromium --dump-dom failed: {}\n{}", b.status, b.stderr);
    let errors = console_errors(&b.stderr);
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let index = &b.stdout;
    let changes = fragment(index, "<h2 id=\"changes\"", "<h2 id=\"host\"");
    for want in [
        "file <code>2026-12-03T074535Z-vm-kvm_pvm.json</code>",
        "<strong>0 regressions</strong>",
        "4 new or changed deviations (12 test changes in all)",
        "0 benchmark changes that pass the rank-sum test",
        "2 host facts changed",
        "KVM_CAP_VCPU_ATTRIBUTES",
    ] {
        assert!(changes.contains(want), "what changed lacks {want:?}: {changes}");
    }
    for test in [
        "cpu::exc_br::prot32",
        "cpu::exc_br::real16",
        "cpu::msr_arch_capabilities_present::long64",
        "state::restore_sse::long64",
    ] {
        let row = fragment(changes, &format!("<a href=\"compat.html#t-{test}\">"), "</tr>");
        assert!(row.contains("xfail</td><td>xfail"), "{test} stays a known deviation: {row}");
        let start = changes.find(&format!("#t-{test}\"")).unwrap();
        let open = changes[..start].rfind("<tr").unwrap();
        assert!(changes[open..start].contains("deviation changed"), "{test}: {}", &changes[open..start]);
    }
    assert_eq!(changes.matches("<td>added</td>").count(), 8, "the SMM and Hyper-V cases are new: {changes}");
    assert!(changes.contains("host lacks system management mode (KVM_CAP_X86_SMM)"), "{changes}");
}
