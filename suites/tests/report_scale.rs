//! `hvprobe report` at scale: results files synthesized from the two reference runs (10
//! hosts, one run a day, benchmark medians and metrics moved a little from day to day)
//! build a dashboard in under 60 s and under 1 GiB of peak resident memory, and one
//! unreadable file among them is left out with a warning naming it.
//!
//! 100 files (10 hosts x 10 days) by default, so that `make test` stays quick;
//! `HVPROBE_REPORT_SCALE=1000 cargo test --release -p hvprobe-suites --test report_scale --
//! --nocapture` is the full measurement (10 hosts x 100 days).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const HOSTS: usize = 10;
const TIME_LIMIT: Duration = Duration::from_secs(60);
const MEMORY_LIMIT_KIB: i64 = 1024 * 1024;

fn reference(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/reference").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Day `day` of host `host`: the reference run of its backend, renamed and moved in time,
/// with each benchmark median and metric scaled by a small day-dependent factor.
fn synthesize(base: &Value, host: usize, day: usize) -> Value {
    let mut r = base.clone();
    r["host"]["hostname"] = format!("lab-{host:02}").into();
    let secs = 1_767_225_600 + day as u64 * 86_400 + host as u64 * 60; // 2026-01-01 onwards
    r["started"] = hvprobe_results::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(secs)).into();
    let factor = 1.0 + 0.02 * ((day * 7 + host * 3) % 11) as f64 / 10.0;
    for b in r["benchmarks"].as_array_mut().unwrap() {
        if let Some(m) = b["median"].as_f64() {
            b["median"] = (m * factor).into();
        }
    }
    for t in r["tests"].as_array_mut().unwrap() {
        if let Some(metrics) = t["metrics"].as_object_mut() {
            for v in metrics.values_mut() {
                if let Some(x) = v["value"].as_f64() {
                    v["value"] = (x * factor).round().into();
                }
            }
        }
    }
    r
}

#[test]
fn a_report_over_many_runs_is_fast_small_and_skips_a_bad_file() {
    let files: usize = match std::env::var("HVPROBE_REPORT_SCALE") {
        Ok(v) => v.parse().ok().filter(|n| (HOSTS..=100_000).contains(n)).expect("HVPROBE_REPORT_SCALE: 10 to 100000"),
        Err(_) => 100,
    };
    let bases = [reference("kvm_pvm.json"), reference("kvm_amd.qemu-tcg.json")];
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    std::fs::create_dir(&runs).unwrap();
    let mut bytes = 0;
    for i in 0..files {
        let (host, day) = (i % HOSTS, i / HOSTS);
        let text = serde_json::to_string(&synthesize(&bases[host % 2], host, day)).unwrap();
        bytes += text.len();
        std::fs::write(runs.join(format!("run-{day:05}-{host:02}.json")), text).unwrap();
    }
    std::fs::write(runs.join("run-99999-truncated.json"), "{\"schema\": \"hvprobe.results/1\", \"tests\": [").unwrap();

    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_hvprobe"))
        .args(["report", "--out"])
        .arg(dir.path().join("site"))
        .arg(&runs)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_CHILDREN covers the waited child.
    let peak_kib = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage.ru_maxrss
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let trends = std::fs::metadata(dir.path().join("site/trends.html")).unwrap().len();
    eprintln!(
        "report: {files} files ({} MB) in {:.1} s, peak RSS {} MB, trends page {} MB",
        bytes >> 20,
        took.as_secs_f64(),
        peak_kib >> 10,
        trends >> 20
    );
    assert!(stderr.contains("run-99999-truncated.json"), "the bad file is named: {stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{files} runs")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(took < TIME_LIMIT, "{files} files took {took:?}");
    assert!(peak_kib < MEMORY_LIMIT_KIB, "{files} files took {peak_kib} KiB at the peak");
}
