//! The hvprobe CLI as a user runs it: listing, a filtered run whose JSON validates against
//! the schema, and clear errors for bad input.

use std::process::Command;

fn hvprobe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hvprobe"))
}

fn kvm_usable() -> bool {
    hvprobe_harness::Kvm::open().is_ok()
}

#[test]
fn list_count_matches_the_catalogue() {
    let out = hvprobe().args(["list", "--count"]).output().unwrap();
    assert!(out.status.success());
    let n: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(n, hvprobe_suites::catalog::payload().unwrap().tests.len());
    let out = hvprobe().args(["list", "--filter", "cpu::boot::", "--count"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4");
}

#[test]
fn run_json_validates_against_the_schema() {
    if !kvm_usable() {
        eprintln!("skipped: /dev/kvm is unusable");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.json");
    let out = hvprobe()
        .args(["run", "--filter", "pv::host_service", "--filter", "cpu::watchdog_spin::user64", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("area") && stdout.contains("total"), "summary table missing: {stdout}");
    validate_schema(&path);
    let results = hvprobe_results::Results::read(&path).unwrap();
    assert_eq!(results.tests.len(), 3);
    assert_ne!(results.host.backend, "");
    let spin = results.tests.iter().find(|t| t.name == "cpu::watchdog_spin::user64").unwrap();
    assert_eq!(spin.outcome, hvprobe_results::Outcome::Timeout);
    assert!(spin.expected_timeout);

    // Where the time went is recorded as suite benchmarks.
    for phase in ["suite::wall_time", "suite::case_boot", "suite::case_run", "suite::case_teardown"] {
        assert!(results.benchmarks.iter().any(|b| b.name == phase), "{phase} missing");
    }
    assert!(stdout.contains("per case (median): boot"), "{stdout}");

    // The fresh run against the committed reference: the cases it left out are reported
    // as removed; on this host no test may differ in outcome (timings may: the machine
    // is shared).
    let out = hvprobe().arg("compare").arg(reference()).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("removed"), "{text}");
    if results.host.backend == "kvm_pvm" {
        let out = hvprobe().arg("compare").arg(reference()).arg(&path).arg("--json").output().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let regressions: Vec<&serde_json::Value> =
            json["tests"].as_array().unwrap().iter().filter(|t| t["change"] == "regression").collect();
        assert!(regressions.is_empty(), "no test regression against the reference: {regressions:#?}");
    }
    let out = hvprobe().arg("compare").arg(reference()).arg(&path).args(["--fail-on", "any"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_missing_kvm_device_is_a_clear_error() {
    let out = hvprobe().args(["run", "--kvm", "/nonexistent/kvm"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/kvm") && err.contains("No such file"), "{err}");
    let out = hvprobe().args(["host", "--kvm", "/nonexistent/kvm"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("unusable"));
}

#[test]
fn bad_arguments_are_refused() {
    let out = hvprobe().args(["run", "--filter", "no::such::test"]).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let out = hvprobe().args(["run", "--timeout=-1", "--filter", "cpu::boot"]).output().unwrap();
    if kvm_usable() {
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("--timeout"));
    }
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("p.toml");
    std::fs::write(&profile, "backend = [").unwrap();
    let out = hvprobe().args(["run", "--filter", "cpu::boot", "--profile"]).arg(&profile).output().unwrap();
    if kvm_usable() {
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("malformed") && err.contains("p.toml"), "{err}");
        assert_eq!(err.matches("unclosed array").count(), 1, "the cause is printed once: {err}");
    }
}

#[test]
fn run_prints_and_records_the_path_table() {
    if !kvm_usable() {
        eprintln!("skipped: /dev/kvm is unusable");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.json");
    let out = hvprobe().args(["run", "--filter", "pv::read_time::", "--json"]).arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("the same behaviour by path") && stdout.contains("pv::read_time  (results agree)"),
        "{stdout}"
    );
    validate_schema(&path);
    let results = hvprobe_results::Results::read(&path).unwrap();
    assert_eq!(results.paths.len(), 1);
    let b = &results.paths[0];
    assert_eq!(b.behaviour, "pv::read_time");
    assert_eq!(b.results_agree, Some(true));
    let ways: Vec<(&str, &str)> = b.ways.iter().map(|w| (w.way.as_str(), w.path.as_str())).collect();
    assert_eq!(ways, [("kvmclock", "para"), ("pm_timer", "full"), ("rdtsc", "hw")]);
    for w in &b.ways {
        assert!(w.cost_cycles.is_some_and(|c| c > 0.0) && w.cost_ratio.is_some_and(|r| r >= 1.0), "{w:?}");
        let t = results.tests.iter().find(|t| t.name == w.test).unwrap();
        let section = t.section.as_ref().expect("a path-table case records its section");
        assert_eq!((section.ops, section.accesses), (256, 256));
    }
    // The PM timer is a userspace device: every read exits to the VMM, and the others never do.
    let exits = |way: &str| b.ways.iter().find(|w| w.way == way).and_then(|w| w.userspace_exits_per_access);
    assert_eq!(exits("pm_timer"), Some(1.0));
    assert_eq!(exits("kvmclock"), Some(0.0));
    assert_eq!(exits("rdtsc"), Some(0.0));
}

fn reference() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/reference/kvm_pvm.json")
}

#[test]
fn the_reference_run_is_valid_and_compares_clean_with_itself() {
    let reference = reference();
    let r = hvprobe_results::Results::read(&reference).expect("results/reference/kvm_pvm.json reads");
    assert_eq!(r.host.backend, "kvm_pvm");
    assert_eq!(
        r.tests.len(),
        hvprobe_suites::catalog::payload().unwrap().tests.len(),
        "reference covers the catalogue"
    );
    let out = hvprobe().arg("compare").arg(&reference).arg(&reference).args(["--fail-on", "any"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no differences"));
}

#[test]
fn compare_reports_differences_and_gates_on_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = hvprobe_results::Results::read(&reference()).unwrap();
    let pass = r.tests.iter().position(|t| t.outcome == hvprobe_results::Outcome::Pass).unwrap();
    r.tests[pass].outcome = hvprobe_results::Outcome::Fail;
    r.tests[pass].reason = Some("guest check failed".into());
    r.host.kernel = "6.19.0".into();
    let changed = dir.path().join("changed.json");
    r.write_atomic(&changed).unwrap();
    let out = hvprobe().arg("compare").arg(reference()).arg(&changed).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a regression fails by default: {text}");
    assert!(text.contains("regression") && text.contains(&r.tests[pass].name) && text.contains("6.19.0"), "{text}");
    let out = hvprobe()
        .arg("compare")
        .arg(reference())
        .arg(&changed)
        .args(["--json", "--fail-on", "never"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["tests"][0]["change"], "regression");
    std::fs::write(dir.path().join("broken.json"), "{\"schema\":").unwrap();
    let out = hvprobe().arg("compare").arg(reference()).arg(dir.path().join("broken.json")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.json"));
}

#[test]
fn report_builds_a_site_from_a_results_directory() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    std::fs::create_dir(&runs).unwrap();
    std::fs::copy(reference(), runs.join("a.json")).unwrap();
    let site = dir.path().join("site");
    let out = hvprobe().arg("report").arg(&runs).arg("--out").arg(&site).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in ["index.html", "trends.html", "compat.html"] {
        assert!(site.join(page).is_file(), "{page} written");
    }
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = hvprobe().arg("report").arg(&empty).arg("--out").arg(&site).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn export_writes_every_format_from_the_reference_run() {
    let dir = tempfile::tempdir().unwrap();
    for format in ["junit", "ktap", "bmf", "kcidb"] {
        let out = dir.path().join(format!("out.{format}"));
        let status =
            hvprobe().arg("export").arg(reference()).args(["--format", format, "--out"]).arg(&out).status().unwrap();
        assert!(status.success(), "{format}");
        let text = std::fs::read_to_string(&out).unwrap();
        match format {
            "junit" => assert!(text.contains("<testsuites name=\"hvprobe\"")),
            "ktap" => assert!(text.starts_with("KTAP version 1\n")),
            _ => {
                serde_json::from_str::<serde_json::Value>(&text).unwrap();
            }
        }
    }
    let out = hvprobe().arg("export").arg(reference()).args(["--format", "xml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

fn validate_schema(path: &std::path::Path) {
    let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let schema: serde_json::Value = serde_json::from_str(hvprobe_results::JSON_SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&value).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn list_bench_shows_guest_and_host_benchmarks() {
    let payload = hvprobe_suites::catalog::payload().unwrap();
    let out = hvprobe().args(["list", "--bench", "--count"]).output().unwrap();
    let n: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(
        n,
        payload.benches.len() - 1 + hvprobe_suites::bench::HOST_BENCHES.len(),
        "every guest benchmark but the exit loop the host ones drive, and the host ones"
    );
    assert!(n >= 20, "{n} guest benchmarks");
    let out = hvprobe().args(["list", "--bench"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bench::cpuid::long64") && text.contains("host::kvm_run_roundtrip"), "{text}");
    assert!(!text.contains("cpu::boot"), "conformance cases are not benchmarks: {text}");
}

#[test]
fn bench_reports_medians_spreads_baselines_and_floor_ratios() {
    if !kvm_usable() {
        eprintln!("skipped: /dev/kvm is unusable");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.json");
    let out = hvprobe().args(["bench", "--quick", "--json"]).arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("hvprobe / bare-ioctl floor:"), "{stdout}");
    validate_schema(&path);
    let r = hvprobe_results::Results::read(&path).unwrap();
    let guest: Vec<&hvprobe_results::Benchmark> =
        r.benchmarks.iter().filter(|b| b.name.starts_with("bench::") && b.unit == "cycles").collect();
    assert!(guest.len() >= 20, "{} guest benchmarks measured: {stdout}", guest.len());
    for b in &guest {
        assert!(b.samples >= 10 && b.median.is_finite() && b.spread >= 0.0, "{b:?}");
        assert!(b.baseline.is_some_and(|x| x >= 0.0) && b.iterations.is_some_and(|n| n >= 1), "{b:?}");
        assert!(r.benchmarks.iter().any(|n| n.name == b.name && n.unit == "ns"), "{} has no ns figure", b.name);
    }
    // Every ioeventfd benchmark that ran checked its eventfd fired once per write.
    assert!(guest.iter().any(|b| b.name.contains("ioeventfd") && b.path.as_deref() == Some("para")));
    let host: Vec<&hvprobe_results::Benchmark> = r.benchmarks.iter().filter(|b| b.name.starts_with("host::")).collect();
    assert_eq!(host.len(), hvprobe_suites::bench::HOST_BENCHES.len(), "{stdout}");
    for b in host {
        let (floor, ratio) = (b.floor.unwrap(), b.floor_ratio.unwrap());
        assert!(floor > 0.0 && ((b.median / floor) - ratio).abs() < 1e-9, "{b:?}");
    }
    // The figures export to Bencher Metric Format with both measures.
    let out = hvprobe().arg("export").arg(&path).args(["--format", "bmf"]).output().unwrap();
    let bmf: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cpuid = &bmf["bench::cpuid::user64"];
    assert!(cpuid["cycles"]["value"].is_number() && cpuid["latency"]["value"].is_number(), "{cpuid}");
}

#[test]
fn bench_refuses_bad_arguments() {
    let out = hvprobe().args(["bench", "--samples", "3"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--samples"));
    let out = hvprobe().args(["bench", "--filter", "no_such_benchmark"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no benchmark matches"));
    let out = hvprobe().args(["bench", "--budget-ms", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn numbers_out_of_range_are_refused_before_anything_runs() {
    for args in [
        &["run", "--jobs", "0"][..],
        &["run", "--jobs", "18446744073709551615"],
        &["run", "--timeout", "1e30", "--filter", "cpu::boot"],
        &["run", "--timeout", "1e19", "--filter", "cpu::boot"],
        &["run", "--repeat", "0"],
        &["bench", "--budget-ms", "1e300"],
        &["bench", "--budget-ms", "1e15"],
        &["bench", "--samples", "99999999999"],
        &["bench", "--samples", "4294967296"],
        &["compare", "a.json", "b.json", "--min-effect", "-1"],
    ] {
        let out = hvprobe().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if args.contains(&"--timeout") && !kvm_usable() {
            continue; // the KVM error comes first
        }
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn a_run_checks_its_output_before_the_first_case_and_never_overwrites_another() {
    if !kvm_usable() {
        eprintln!("skipped: /dev/kvm is unusable");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A file where the results directory should be: refused at once, nothing runs.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let out = hvprobe().args(["run", "--filter", "cpu::boot::real16", "--results-dir"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "bad input: {}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a directory") && err.contains("--results-dir"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("cpu::boot::real16"), "no case ran");
    // Runs started within the same second each keep their own file.
    let runs = dir.path().join("runs");
    for _ in 0..3 {
        let out = hvprobe()
            .args(["run", "--filter", "cpu::boot::real16", "--exact", "--results-dir"])
            .arg(&runs)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(std::fs::read_dir(&runs).unwrap().count(), 3);
}

#[test]
fn export_writes_through_a_device_and_to_standard_output() {
    let out = hvprobe().args(["export", "-F", "ktap", "--out", "/dev/null"]).arg(reference()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta = std::fs::metadata("/dev/null").unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()), "/dev/null is still a device");
    let out = hvprobe().args(["export", "-F", "ktap", "--out", "-"]).arg(reference()).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("KTAP version 1"));
}

#[test]
fn a_report_leaves_out_a_bad_file_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(reference(), dir.path().join("good.json")).unwrap();
    std::fs::write(dir.path().join("truncated.json"), "{\"schema\": \"hvprobe.results/1\", \"te").unwrap();
    let out = hvprobe().arg("report").arg(dir.path()).arg("--out").arg(dir.path().join("site")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning") && err.contains("truncated.json"), "{err}");
    assert!(dir.path().join("site/index.html").exists());
}

/// Starts `hvprobe run` on `filter` writing `json`, waits until it has reported its first
/// case, and returns the child with its output reader.
fn start_run(
    filter: &str,
    json: &std::path::Path,
) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>) {
    use std::io::BufRead as _;
    let mut child = hvprobe()
        .args(["run", "--jobs", "1", "--filter", filter, "--json"])
        .arg(json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        if line.starts_with("pass ") || line.starts_with("xfail ") || line.starts_with("skip ") {
            break;
        }
        line.clear();
    }
    (child, out)
}

#[test]
fn an_interrupted_run_writes_what_finished_marked_incomplete() {
    if !kvm_usable() {
        eprintln!("skipped: /dev/kvm is unusable");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let json = dir.path().join(format!("run-{signal}.json"));
        // cpu:: runs for seconds on one job (the generated comparisons first), so the
        // signal lands mid-run even when the output comes in blocks.
        let (mut child, _out) = start_run("cpu::", &json);
        // SAFETY: kill with the pid of our own live child.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "signal {signal}");
        let results = hvprobe_results::Results::read(&json).unwrap();
        let incomplete = results.incomplete.as_ref().expect("marked incomplete");
        assert!(incomplete.cases_not_run > 0 && !results.tests.is_empty(), "{incomplete:?}");
        assert!(results.tests.iter().all(|t| t.failure.as_ref().is_none_or(|f| f.end != "paused")), "no cut case");
        validate_schema(&json);
    }
}

#[test]
fn a_closed_pipe_stops_the_run_and_keeps_its_results() {
    if !kvm_usable() {
        eprintln!("skipped: /dev/kvm is unusable");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("piped.json");
    let (mut child, out) = start_run("irq::", &json);
    drop(out); // the reader goes away, as `| head` does
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(141), "exit 141, not a death by SIGPIPE");
    let results = hvprobe_results::Results::read(&json).unwrap();
    assert_eq!(results.incomplete.map(|i| i.reason), Some("standard output was closed".to_string()));
}

#[test]
fn the_restore_entry_point_serves_only_its_parent() {
    for args in [&["run"][..], &["list"], &["--help"]] {
        let out = hvprobe().args(args).env("HVPROBE_RESUME_SNAPSHOT", "/x").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("internal"), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing pretends to have run");
    }
}

#[test]
fn list_and_bench_select_what_their_filters_name() {
    let out = hvprobe().args(["list", "-f", "nomatch"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "as run does");
    let out = hvprobe().args(["list", "--bench", "--count"]).output().unwrap();
    let count: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let rows = hvprobe().args(["list", "--bench"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&rows.stdout).lines().count(), count, "--count counts the rows list prints");
    let out = hvprobe().args(["list", "--bench", "-f", "host::vm_destroy", "--exact"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "host::vm_destroy                             host");
}

#[test]
fn export_filters_like_every_other_command_and_formats_with_capital_f() {
    let out =
        hvprobe().args(["export", "-F", "ktap", "-f", "cpu::boot::", "--out", "-"]).arg(reference()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    // One subtest (the area cpu) of the four cpu::boot cases.
    let plans: Vec<&str> = text.lines().map(str::trim).filter(|l| l.starts_with("1..")).collect();
    assert_eq!(plans, ["1..1", "1..4"], "{text}");
    let cases: Vec<&str> = text.lines().filter(|l| l.starts_with("  ok ") || l.starts_with("  not ok ")).collect();
    assert!(cases.len() == 4 && cases.iter().all(|l| l.contains("cpu::boot::")), "{text}");
    let out = hvprobe().args(["export", "-F", "ktap", "-f", "nomatch"]).arg(reference()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no test or benchmark"));
}
