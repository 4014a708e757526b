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
    let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let schema: serde_json::Value = serde_json::from_str(hvprobe_results::JSON_SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&value).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let results = hvprobe_results::Results::read(&path).unwrap();
    assert_eq!(results.tests.len(), 3);
    assert_ne!(results.host.backend, "");
    let spin = results.tests.iter().find(|t| t.name == "cpu::watchdog_spin::user64").unwrap();
    assert_eq!(spin.outcome, hvprobe_results::Outcome::Timeout);
    assert!(spin.expected_timeout);

    // The fresh run against the committed reference: the cases it left out are reported
    // as removed; on this host nothing else may differ in outcome.
    let out = hvprobe().arg("compare").arg(reference()).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("removed"), "{text}");
    if results.host.backend == "kvm_pvm" {
        assert_eq!(out.status.code(), Some(0), "no regression against the reference: {text}");
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
