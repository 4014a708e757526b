//! JUnit XML as Jenkins, GitLab and most CI systems read it (the Ant junit-10 layout):
//! `<testsuites>`, one `<testsuite>` per area with the host facts as properties, one
//! `<testcase classname="hvprobe.AREA">` per test.
//!
//! fail, xpass and an unexpected timeout are `<failure type="OUTCOME">`; error is
//! `<error>`; skip is `<skipped>`. JUnit has no expected failure: an xfail passes and
//! says which deviation it is in `<system-out>`, as does the watchdog's expected timeout.

use std::fmt::Write as _;

use super::{by_area, fails_run};
use crate::{Outcome, Results, TestResult};

use crate::text::escape_markup as escape;

#[derive(Default)]
struct Counts {
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
    seconds: f64,
}

fn counts<'a>(tests: impl IntoIterator<Item = &'a TestResult>) -> Counts {
    let mut c = Counts::default();
    for t in tests {
        c.tests += 1;
        c.seconds += t.duration_ms / 1e3;
        match t.outcome {
            Outcome::Error => c.errors += 1,
            Outcome::Skip => c.skipped += 1,
            _ if fails_run(t) => c.failures += 1,
            _ => {}
        }
    }
    c
}

fn details(t: &TestResult) -> String {
    let mut text = t.reason.clone().unwrap_or_default();
    if let Some(f) = &t.failure {
        if let Some(cpu) = &f.cpu {
            let _ = write!(text, "\ncpu: {cpu}");
        }
        if let Some(b) = &f.insn_bytes {
            let _ = write!(text, "\ninstruction bytes: {b}");
        }
    }
    for line in &t.log {
        let _ = write!(text, "\nlog: {line}");
    }
    if let Some(c) = &t.console {
        let _ = write!(text, "\nconsole: {c}");
    }
    text
}

pub fn render(r: &Results) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let all = counts(&r.tests);
    let _ = writeln!(
        x,
        "<testsuites name=\"hvprobe\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\" timestamp=\"{}\">",
        all.tests,
        all.failures,
        all.errors,
        all.skipped,
        r.duration_s,
        escape(&r.started)
    );
    for (id, (area, tests)) in by_area(r).into_iter().enumerate() {
        let c = counts(tests.iter().copied());
        let _ = writeln!(
            x,
            "  <testsuite id=\"{id}\" name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\" timestamp=\"{}\" hostname=\"{}\">",
            escape(area),
            c.tests,
            c.failures,
            c.errors,
            c.skipped,
            c.seconds,
            escape(&r.started),
            escape(&r.host.hostname)
        );
        x.push_str("    <properties>\n");
        let kvm_api = r.host.kvm_api_version.map_or("none".to_string(), |v| v.to_string());
        for (name, value) in [
            ("backend", r.host.backend.as_str()),
            ("kernel", r.host.kernel.as_str()),
            ("cpu_vendor", r.host.cpu_vendor.as_str()),
            ("cpu_model", r.host.cpu_model.as_str()),
            ("kvm_api_version", kvm_api.as_str()),
            ("hvprobe_version", r.tool.version.as_str()),
        ] {
            let _ = writeln!(x, "      <property name=\"{name}\" value=\"{}\"/>", escape(value));
        }
        x.push_str("    </properties>\n");
        for t in tests {
            let _ = write!(
                x,
                "    <testcase classname=\"hvprobe.{}\" name=\"{}\" time=\"{:.3}\"",
                escape(area),
                escape(&t.name),
                t.duration_ms / 1e3
            );
            let reason = escape(&t.reason.clone().unwrap_or_default());
            let body = match t.outcome {
                Outcome::Pass => None,
                Outcome::Skip => Some(format!("      <skipped message=\"{reason}\"/>\n")),
                Outcome::Error => {
                    Some(format!("      <error message=\"{reason}\" type=\"error\">{}</error>\n", escape(&details(t))))
                }
                _ if fails_run(t) => Some(format!(
                    "      <failure message=\"{reason}\" type=\"{}\">{}</failure>\n",
                    t.outcome.name(),
                    escape(&details(t))
                )),
                Outcome::Xfail => Some(format!("      <system-out>xfail: {}</system-out>\n", escape(&details(t)))),
                _ => Some(format!("      <system-out>{}: {reason}</system-out>\n", t.outcome.name())),
            };
            match body {
                None => x.push_str("/>\n"),
                Some(b) => {
                    let _ = write!(x, ">\n{b}    </testcase>\n");
                }
            }
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;

    /// Checks the JUnit structure CI parsers rely on, and returns the document's text.
    fn validate(xml: &str, r: &Results) {
        let doc = roxmltree::Document::parse(xml).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "testsuites");
        let attr = |n: roxmltree::Node, a: &str| n.attribute(a).unwrap_or_else(|| panic!("{a} missing")).to_string();
        let count = |n: roxmltree::Node, tag: &str| n.descendants().filter(|d| d.has_tag_name(tag)).count();
        assert_eq!(attr(root, "tests"), count(root, "testcase").to_string());
        assert_eq!(attr(root, "failures"), count(root, "failure").to_string());
        assert_eq!(attr(root, "errors"), count(root, "error").to_string());
        assert_eq!(attr(root, "skipped"), count(root, "skipped").to_string());
        assert_eq!(count(root, "testcase"), r.tests.len());
        for suite in root.children().filter(|n| n.is_element()) {
            assert_eq!(suite.tag_name().name(), "testsuite");
            for a in ["name", "tests", "failures", "errors", "skipped", "time", "timestamp", "hostname"] {
                attr(suite, a);
            }
            assert_eq!(attr(suite, "tests"), count(suite, "testcase").to_string());
            assert_eq!(attr(suite, "failures"), count(suite, "failure").to_string());
            for case in suite.children().filter(|n| n.has_tag_name("testcase")) {
                assert!(attr(case, "classname").starts_with("hvprobe."));
                let name = attr(case, "name");
                assert!(r.tests.iter().any(|t| t.name == name), "{name}");
                attr(case, "time").parse::<f64>().expect("time is a number");
            }
        }
    }

    #[test]
    fn every_outcome_maps_to_valid_junit() {
        let r = crate::tests::sample();
        let xml = render(&r);
        validate(&xml, &r);
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let case = |outcome: Outcome| {
            let name = &r.tests.iter().find(|t| t.outcome == outcome).unwrap().name;
            doc.descendants().find(|n| n.attribute("name") == Some(name.as_str())).unwrap()
        };
        let child = |n: roxmltree::Node| n.children().find(|c| c.is_element()).map(|c| c.tag_name().name().to_string());
        assert_eq!(child(case(Outcome::Pass)), None);
        assert_eq!(child(case(Outcome::Fail)).as_deref(), Some("failure"));
        assert_eq!(child(case(Outcome::Xpass)).as_deref(), Some("failure"));
        assert_eq!(child(case(Outcome::Error)).as_deref(), Some("error"));
        assert_eq!(child(case(Outcome::Skip)).as_deref(), Some("skipped"));
        assert_eq!(child(case(Outcome::Xfail)).as_deref(), Some("system-out"), "a known deviation passes");
        assert_eq!(child(case(Outcome::Timeout)).as_deref(), Some("system-out"), "the sample's timeout is expected");
    }

    #[test]
    fn hostile_text_cannot_break_the_document() {
        let mut r = crate::tests::sample();
        r.tests[1].reason = Some("<&>\"' \u{1} ]]> </failure>".into());
        r.host.hostname = "a\"b<c".into();
        let xml = render(&r);
        validate(&xml, &r);
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let failure = doc.descendants().find(|n| n.has_tag_name("failure")).unwrap();
        assert!(failure.attribute("message").unwrap().starts_with("<&>\"' \u{fffd} ]]>"));
    }
}
