//! KCIDB, KernelCI's common report format, schema version 5.0: one checkout (the host's
//! kernel as found), one build (this hvprobe run) and one test per case, ids prefixed
//! with the origin "hvprobe" as the schema requires.
//!
//! Status: pass and the watchdog's expected timeout are PASS; fail, xpass and an
//! unexpected timeout are FAIL (the hypervisor under test misbehaved or hung the guest);
//! an xfail is FAIL too, since the hypervisor does deviate, with `misc.outcome = "xfail"`
//! and the deviation in `misc.reason`; error is ERROR (the harness failed, the code's
//! status is unknown); skip is SKIP. Test paths are "hvprobe." plus the name with "::"
//! turned into ".".

use serde_json::{Value, json};

use super::fails_run;
use crate::{Outcome, Results, TestResult};

pub const ORIGIN: &str = "hvprobe";

fn status(t: &TestResult) -> &'static str {
    match t.outcome {
        Outcome::Pass => "PASS",
        Outcome::Skip => "SKIP",
        Outcome::Error => "ERROR",
        Outcome::Xfail => "FAIL",
        _ if fails_run(t) => "FAIL",
        _ => "PASS",
    }
}

/// The part of an id after "hvprobe:" that names this run: start time, host, backend.
fn run_id(r: &Results) -> String {
    format!("{}-{}-{}", r.started, r.host.hostname, r.host.backend)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
        .collect()
}

pub fn render(r: &Results) -> String {
    let run = run_id(r);
    let id = format!("{ORIGIN}:{run}");
    let environment = format!(
        "{} ({}, {} {}), kernel {}, KVM API {}",
        r.host.hostname,
        r.host.backend,
        r.host.cpu_vendor,
        r.host.cpu_model,
        r.host.kernel,
        r.host.kvm_api_version.map_or("unavailable".into(), |v| v.to_string())
    );
    let tests: Vec<Value> = r
        .tests
        .iter()
        .map(|t| {
            let mut test = json!({
                "id": format!("{id}:{}", t.name),
                "build_id": id,
                "origin": ORIGIN,
                "path": format!("{ORIGIN}.{}", t.name.replace("::", ".")),
                "status": status(t),
                "start_time": r.started,
                "duration": t.duration_ms / 1e3,
                "environment": { "comment": environment, "misc": { "backend": r.host.backend } },
                "misc": {
                    "outcome": t.outcome.name(),
                    "path": t.path,
                    "mode": t.mode,
                    "expected_timeout": t.expected_timeout,
                },
            });
            if let Some(reason) = &t.reason {
                test["misc"]["reason"] = json!(reason);
                test["comment"] = json!(reason);
            }
            test
        })
        .collect();
    let doc = json!({
        "version": { "major": 5, "minor": 0 },
        "checkouts": [{
            "id": id,
            "origin": ORIGIN,
            "start_time": r.started,
            "comment": format!("the kernel of {} as found: {}", r.host.hostname, r.host.kernel),
            "misc": { "kernel": r.host.kernel },
        }],
        "builds": [{
            "id": id,
            "origin": ORIGIN,
            "checkout_id": id,
            "start_time": r.started,
            "duration": r.duration_s,
            "architecture": "x86_64",
            "comment": format!("hvprobe {} guest payloads", r.tool.version),
            "misc": { "backend": r.host.backend },
        }],
        "tests": tests,
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn validate(text: &str) -> Value {
        let schema: Value = serde_json::from_str(include_str!("../../schema/kcidb-v5-subset.schema.json")).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let v: Value = serde_json::from_str(text).unwrap();
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{errors:#?}");
        v
    }

    #[test]
    fn the_export_validates_and_links_every_test_to_the_build() {
        let r = crate::tests::sample();
        let v = validate(&render(&r));
        let build = v["builds"][0]["id"].as_str().unwrap();
        assert_eq!(v["builds"][0]["checkout_id"], v["checkouts"][0]["id"]);
        let tests = v["tests"].as_array().unwrap();
        assert_eq!(tests.len(), r.tests.len());
        let ids: HashSet<&str> = tests.iter().map(|t| t["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), tests.len(), "ids are unique");
        assert!(tests.iter().all(|t| t["build_id"] == build));
        let status = |outcome: &str| {
            tests.iter().find(|t| t["misc"]["outcome"] == outcome).map(|t| t["status"].as_str().unwrap().to_string())
        };
        assert_eq!(status("pass").as_deref(), Some("PASS"));
        assert_eq!(status("xfail").as_deref(), Some("FAIL"));
        assert_eq!(status("xpass").as_deref(), Some("FAIL"));
        assert_eq!(status("error").as_deref(), Some("ERROR"));
        assert_eq!(status("skip").as_deref(), Some("SKIP"));
        assert_eq!(status("timeout").as_deref(), Some("PASS"), "the sample's timeout is the expected one");
        assert_eq!(tests[0]["path"], "hvprobe.cpu.case0.long64");
    }

    #[test]
    fn odd_host_names_still_give_valid_ids() {
        let mut r = crate::tests::sample();
        r.host.hostname = "my host:1/2".into();
        let v = validate(&render(&r));
        assert!(v["tests"][0]["id"].as_str().unwrap().starts_with("hvprobe:"));
        assert!(!v["builds"][0]["id"].as_str().unwrap()["hvprobe:".len()..].contains([' ', '/', ':']));
    }
}
