//! KCIDB, KernelCI's common report format (the kcidb-io project), schema version 5.0:
//! one checkout (the host's kernel as found), one build (this hvprobe run, which is what
//! the tests ran on) and one test per case. Every id is "hvprobe:" plus the run's start
//! time, host name and backend (and the test's name for a test), so exporting the same
//! results file twice gives the same ids and two runs never share one.
//!
//! Status, by what KCIDB says about the code under test (the host's KVM):
//! - pass, and the watchdog's expected timeout: PASS;
//! - fail, and an unexpected timeout: FAIL (KVM misbehaved or hung the guest);
//! - xfail: FAIL, since KVM does deviate; `misc.outcome = "xfail"` and the deviation in
//!   `misc.reason` say it is a known one. (v5 dropped v4's `waived`; known failures are
//!   issues and incidents there, which a results file knows nothing of);
//! - xpass: FAIL, as it fails the run: the profile predicted a deviation that is gone;
//! - error: ERROR (the harness failed, the code's status is unknown);
//! - skip: SKIP.
//!
//! Test paths are "hvprobe." plus the name with "::" turned into ".", other characters
//! KCIDB's path syntax refuses becoming '_'. Nothing is ever null (the schema forbids
//! it): what is unknown or cannot be written is left out.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::seconds;
use crate::{Outcome, Results, TestResult};

/// The CI system name KCIDB files hvprobe's objects under.
pub const ORIGIN: &str = "hvprobe";

/// The KCIDB schema version the export follows, (major, minor).
pub const VERSION: (u32, u32) = (5, 0);

fn status(t: &TestResult) -> &'static str {
    match t.outcome {
        Outcome::Pass => "PASS",
        Outcome::Skip => "SKIP",
        Outcome::Error => "ERROR",
        Outcome::Fail | Outcome::Xfail | Outcome::Xpass => "FAIL",
        Outcome::Timeout if t.fails_run() => "FAIL",
        Outcome::Timeout => "PASS",
    }
}

/// The part of every id after "hvprobe:" that names this run: start time, host, backend.
fn run_id(r: &Results) -> String {
    format!("{}-{}-{}", r.started, r.host.hostname, r.host.backend)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
        .collect()
}

/// A KCIDB test path: dot-separated segments of letters, digits, '_' and '-'.
fn test_path(name: &str) -> String {
    let segments = name.split("::").map(|segment| {
        let s: String =
            segment.chars().map(|c| if c.is_ascii_alphanumeric() || "-_".contains(c) { c } else { '_' }).collect();
        if s.is_empty() { "_".to_string() } else { s }
    });
    std::iter::once(ORIGIN.to_string()).chain(segments).collect::<Vec<_>>().join(".")
}

/// Whether `s` is an RFC 3339 date-time, which KCIDB requires of every time.
fn is_rfc3339(s: &str) -> bool {
    crate::parse_rfc3339(s).is_some()
}

/// A JSON object of `fields` without the ones that are null, since KCIDB allows no null.
fn object(fields: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
    Value::Object(fields.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.to_string(), v)).collect())
}

fn test_object(r: &Results, t: &TestResult, id: String, build_id: &str, environment: &str) -> Value {
    let failure = t.failure.as_ref().map(|f| match serde_json::to_value(f) {
        Ok(Value::Object(fields)) => Value::Object(fields.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        _ => json!({ "description": f.description }),
    });
    let misc = object([
        ("outcome", json!(t.outcome.name())),
        ("reason", json!(t.reason)),
        ("path", json!(t.path)),
        ("mode", json!(t.mode)),
        ("expected_timeout", json!(t.expected_timeout)),
        ("failure", json!(failure)),
    ]);
    let start_time = is_rfc3339(&r.started).then(|| json!(r.started));
    object([
        ("id", json!(id)),
        ("build_id", json!(build_id)),
        ("origin", json!(ORIGIN)),
        ("path", json!(test_path(&t.name))),
        ("status", json!(status(t))),
        ("start_time", json!(start_time)),
        ("duration", json!(seconds(t.duration_ms))),
        ("comment", json!(t.reason)),
        ("environment", json!({ "comment": environment, "misc": { "backend": r.host.backend } })),
        ("misc", misc),
    ])
}

pub fn render(r: &Results) -> String {
    let id = format!("{ORIGIN}:{}", run_id(r));
    let environment = format!(
        "{} ({}, {} {}), kernel {}, KVM API {}",
        r.host.hostname,
        r.host.backend,
        r.host.cpu_vendor,
        r.host.cpu_model,
        r.host.kernel,
        r.host.kvm_api_version.map_or("unavailable".into(), |v| v.to_string())
    );
    let start_time = is_rfc3339(&r.started).then(|| json!(r.started));
    // A results file should not name a test twice, but if it does, the second keeps a
    // unique id by its ordinal.
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let tests: Vec<Value> = r
        .tests
        .iter()
        .map(|t| {
            let n = seen.entry(t.name.as_str()).and_modify(|n| *n += 1).or_insert(1);
            let name = t.name.replace('\0', "");
            let test_id = if *n == 1 { format!("{id}:{name}") } else { format!("{id}:{name}:{n}") };
            test_object(r, t, test_id, &id, &environment)
        })
        .collect();
    let checkout = object([
        ("id", json!(id)),
        ("origin", json!(ORIGIN)),
        ("start_time", json!(start_time)),
        ("comment", json!(format!("the kernel of {} as found: {}", r.host.hostname, r.host.kernel))),
        ("misc", json!({ "kernel": r.host.kernel })),
    ]);
    let build = object([
        ("id", json!(id)),
        ("origin", json!(ORIGIN)),
        ("checkout_id", json!(id)),
        ("start_time", json!(start_time)),
        ("duration", json!(if r.duration_s.is_finite() && r.duration_s > 0.0 { r.duration_s } else { 0.0 })),
        ("architecture", json!("x86_64")),
        ("comment", json!(format!("hvprobe {} guest payloads", r.tool.version))),
        ("misc", json!({ "backend": r.host.backend, "hvprobe_version": r.tool.version })),
    ]);
    let mut doc = Map::new();
    doc.insert("version".into(), json!({ "major": VERSION.0, "minor": VERSION.1 }));
    doc.insert("checkouts".into(), json!([checkout]));
    doc.insert("builds".into(), json!([build]));
    doc.insert("tests".into(), Value::Array(tests));
    let mut text = serde_json::to_string_pretty(&Value::Object(doc)).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// The subset of KCIDB v5.0 this export emits, as a JSON Schema written for these
    /// tests from the kcidb-io project's schema.
    const SCHEMA: &str = include_str!("../../schema/kcidb-v5-subset.schema.json");

    fn validator() -> jsonschema::Validator {
        let schema: Value = serde_json::from_str(SCHEMA).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    }

    /// Validates against the schema, then checks what a schema cannot: ids unique per
    /// object type and every link naming an object in the document.
    fn validate(text: &str) -> Value {
        let v: Value = serde_json::from_str(text).unwrap();
        let errors: Vec<String> =
            validator().iter_errors(&v).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{errors:#?}");
        assert_eq!(v["version"], json!({"major": VERSION.0, "minor": VERSION.1}));
        let ids = |kind: &str| -> HashSet<String> {
            let objects = v[kind].as_array().unwrap();
            let ids: HashSet<String> = objects.iter().map(|o| o["id"].as_str().unwrap().to_string()).collect();
            assert_eq!(ids.len(), objects.len(), "{kind} ids are unique");
            assert!(ids.iter().all(|id| id.starts_with("hvprobe:")), "{kind} ids carry the origin");
            ids
        };
        let (checkouts, builds, _) = (ids("checkouts"), ids("builds"), ids("tests"));
        assert!(v["builds"].as_array().unwrap().iter().all(|b| checkouts.contains(b["checkout_id"].as_str().unwrap())));
        assert!(v["tests"].as_array().unwrap().iter().all(|t| builds.contains(t["build_id"].as_str().unwrap())));
        assert!(v["tests"].as_array().unwrap().iter().all(|t| t["origin"] == ORIGIN));
        v
    }

    #[test]
    fn the_export_validates_and_maps_every_outcome() {
        let r = crate::tests::sample();
        let text = render(&r);
        let v = validate(&text);
        assert_eq!(render(&r), text, "the same results give the same document");
        let tests = v["tests"].as_array().unwrap();
        assert_eq!(tests.len(), r.tests.len());
        let status = |outcome: &str| {
            tests.iter().find(|t| t["misc"]["outcome"] == outcome).map(|t| t["status"].as_str().unwrap().to_string())
        };
        assert_eq!(status("pass").as_deref(), Some("PASS"));
        assert_eq!(status("fail").as_deref(), Some("FAIL"));
        assert_eq!(status("xfail").as_deref(), Some("FAIL"));
        assert_eq!(status("xpass").as_deref(), Some("FAIL"));
        assert_eq!(status("error").as_deref(), Some("ERROR"));
        assert_eq!(status("skip").as_deref(), Some("SKIP"));
        assert_eq!(status("timeout").as_deref(), Some("PASS"), "the sample's timeout is the expected one");
        let t = &tests[1];
        assert_eq!(t["id"], "hvprobe:1970-01-01T00_00_00Z-h-kvm_pvm:cpu::case1::long64");
        assert_eq!(t["path"], "hvprobe.cpu.case1.long64");
        assert_eq!(t["start_time"], "1970-01-01T00:00:00Z");
        assert_eq!(t["duration"], 0.0015);
        assert_eq!(t["misc"]["reason"], "because");
        assert_eq!(t["misc"]["failure"]["cpu"], "rip 0x1000");
        assert!(t["misc"]["failure"].get("message").is_none(), "no nulls, even in misc");
        assert!(t["environment"]["comment"].as_str().unwrap().contains("AMD EPYC"));
        assert!(tests[0].get("comment").is_none(), "a plain pass has no reason");
    }

    #[test]
    fn an_unexpected_timeout_fails() {
        let mut r = crate::tests::sample();
        r.tests.iter_mut().for_each(|t| t.expected_timeout = false);
        let v = validate(&render(&r));
        let timeout = v["tests"].as_array().unwrap().iter().find(|t| t["misc"]["outcome"] == "timeout").unwrap();
        assert_eq!(timeout["status"], "FAIL");
    }

    #[test]
    fn odd_input_still_gives_a_valid_document() {
        let mut r = crate::tests::sample();
        r.host.hostname = "my host:1/2".into();
        r.started = "yesterday".into();
        r.duration_s = f64::NAN;
        r.tests[0].duration_ms = f64::NAN;
        r.tests[1].name = "cpu::a b/c::\0long64".into();
        r.tests[2].name = r.tests[3].name.clone();
        let v = validate(&render(&r));
        assert!(!v["builds"][0]["id"].as_str().unwrap()["hvprobe:".len()..].contains([' ', '/', ':']));
        assert!(v["tests"][0].get("start_time").is_none(), "a time that is not RFC 3339 is left out");
        assert_eq!(v["tests"][0]["duration"], 0.0);
        assert_eq!(v["tests"][1]["path"], "hvprobe.cpu.a_b_c._long64");
        assert!(v["tests"][3]["id"].as_str().unwrap().ends_with(":2"), "a repeated name still has a unique id");
        r.tests.clear();
        assert_eq!(validate(&render(&r))["tests"], json!([]));
    }

    #[test]
    fn the_schema_refuses_what_kcidb_refuses() {
        let good = validate(&render(&crate::tests::sample()));
        let v = validator();
        let broken = |edit: &dyn Fn(&mut Value)| {
            let mut doc = good.clone();
            edit(&mut doc);
            v.is_valid(&doc)
        };
        assert!(!broken(&|d| d["tests"][0]["status"] = json!("XFAIL")), "an unknown status");
        assert!(!broken(&|d| d["tests"][0]["id"] = json!("no-origin")), "an id without its origin");
        assert!(!broken(&|d| d["tests"][0]["path"] = json!("a::b")), "a path that is not dotted");
        assert!(!broken(&|d| d["tests"][0]["comment"] = Value::Null), "a null");
        assert!(!broken(&|d| d["version"]["major"] = json!(4)), "another major version");
        assert!(!broken(&|d| d["tests"][0].as_object_mut().unwrap().retain(|k, _| k != "build_id")), "no build");
    }

    #[test]
    fn rfc3339_is_recognised() {
        for good in ["1970-01-01T00:00:00Z", "2026-11-25T08:14:35.123+01:00", "2026-11-25t08:14:35z"] {
            assert!(is_rfc3339(good), "{good}");
        }
        for bad in ["", "yesterday", "1970-01-01 00:00:00Z", "1970-01-01T00:00:00", "1970-01-01T00:00:00.Z"] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }
}
