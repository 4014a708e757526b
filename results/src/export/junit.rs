//! JUnit XML as Jenkins, GitLab and most CI systems read it (the Ant junit-10 layout):
//! `<testsuites>`, one `<testsuite>` per area with the host facts as properties, one
//! `<testcase classname="hvprobe.AREA" name="FULL NAME">` per test.
//!
//! fail, xpass and an unexpected timeout are `<failure type="OUTCOME">` whose text holds
//! the reason, the failure's facts, the CPU state and the log; error is `<error>` (the
//! harness, not the hypervisor, failed); skip is `<skipped>`. JUnit has no expected
//! failure, so an xfail passes and says which deviation it is in `<system-out>`, and the
//! watchdog's expected timeout passes with a note there too: neither fails the run.

use std::fmt::Write as _;

use super::{by_area, seconds};
use crate::text::escape_markup as escape;
use crate::{Outcome, Results, TestResult};

/// The counts a `<testsuites>` or `<testsuite>` carries, which CI systems show without
/// reading the test cases.
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
        c.seconds += seconds(t.duration_ms);
        match t.outcome {
            Outcome::Error => c.errors += 1,
            Outcome::Skip => c.skipped += 1,
            _ if t.fails_run() => c.failures += 1,
            _ => {}
        }
    }
    c
}

/// Everything a reader needs to understand a result without the results file: the
/// reason, how the run ended, the CPU state and the guest's log.
fn details(t: &TestResult) -> String {
    let mut lines: Vec<String> = t.reason.iter().cloned().collect();
    if let Some(f) = &t.failure {
        lines.push(format!("ended by {}: {}", f.end, f.description));
        if let Some(m) = &f.message {
            lines.push(format!("message: {m}"));
        }
        if let Some(file) = &f.file {
            lines.push(format!("at {file}:{}", f.line.map_or("?".to_string(), |l| l.to_string())));
        }
        if let (Some(e), Some(a)) = (f.expected, f.actual) {
            lines.push(format!("expected {e:#x}, actual {a:#x}"));
        }
        if let Some(b) = &f.insn_bytes {
            lines.push(format!("instruction bytes: {b}"));
        }
        if let Some(cpu) = &f.cpu {
            lines.push(format!("cpu:\n{cpu}"));
        }
    }
    lines.extend(t.log.iter().map(|l| format!("log: {l}")));
    if let Some(c) = &t.console {
        lines.push(format!("console:\n{c}"));
    }
    lines.join("\n")
}

/// The element inside a `<testcase>`, if any, for its outcome.
fn verdict(t: &TestResult) -> Option<String> {
    let message = escape(t.reason.as_deref().unwrap_or(""));
    let text = escape(&details(t));
    match t.outcome {
        Outcome::Pass => None,
        Outcome::Skip => Some(format!("<skipped message=\"{message}\"/>")),
        Outcome::Error => Some(format!("<error message=\"{message}\" type=\"error\">{text}</error>")),
        _ if t.fails_run() => {
            Some(format!("<failure message=\"{message}\" type=\"{}\">{text}</failure>", t.outcome.name()))
        }
        Outcome::Xfail => Some(format!("<system-out>xfail, a known deviation of this backend: {text}</system-out>")),
        _ => Some(format!("<system-out>timeout, as this watchdog test expects: {text}</system-out>")),
    }
}

pub fn render(r: &Results) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let all = counts(&r.tests);
    let run_seconds = if r.duration_s.is_finite() && r.duration_s > 0.0 { r.duration_s } else { all.seconds };
    let _ = writeln!(
        x,
        "<testsuites name=\"hvprobe\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{run_seconds:.3}\" \
         timestamp=\"{}\">",
        all.tests,
        all.failures,
        all.errors,
        all.skipped,
        escape(&r.started)
    );
    let kvm_api = r.host.kvm_api_version.map_or("none".to_string(), |v| v.to_string());
    let properties = [
        ("backend", r.host.backend.as_str()),
        ("kernel", r.host.kernel.as_str()),
        ("cpu_vendor", r.host.cpu_vendor.as_str()),
        ("cpu_model", r.host.cpu_model.as_str()),
        ("kvm_api_version", kvm_api.as_str()),
        ("kvm_error", r.host.kvm_error.as_deref().unwrap_or("")),
        ("hvprobe_version", r.tool.version.as_str()),
    ];
    for (id, (area, tests)) in by_area(r).into_iter().enumerate() {
        let c = counts(tests.iter().copied());
        let _ = writeln!(
            x,
            "  <testsuite id=\"{id}\" name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" \
             time=\"{:.3}\" timestamp=\"{}\" hostname=\"{}\">",
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
        for (name, value) in properties.iter().filter(|(_, v)| !v.is_empty()) {
            let _ = writeln!(x, "      <property name=\"{name}\" value=\"{}\"/>", escape(value));
        }
        x.push_str("    </properties>\n");
        for t in tests {
            let _ = write!(
                x,
                "    <testcase classname=\"hvprobe.{}\" name=\"{}\" time=\"{:.3}\"",
                escape(area),
                escape(&t.name),
                seconds(t.duration_ms)
            );
            match verdict(t) {
                None => x.push_str("/>\n"),
                Some(body) => {
                    let _ = write!(x, ">\n      {body}\n    </testcase>\n");
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

    fn attr<'a>(n: roxmltree::Node<'a, '_>, a: &str) -> &'a str {
        n.attribute(a).unwrap_or_else(|| panic!("<{}> lacks {a}", n.tag_name().name()))
    }

    /// How many elements named `tag` are in `n`, which must equal the count `n` claims.
    fn count(n: roxmltree::Node, tag: &str) -> usize {
        n.descendants().filter(|d| d.has_tag_name(tag)).count()
    }

    /// Checks the structure CI parsers rely on: testsuites > testsuite > testcase, the
    /// counts each level claims against the elements it holds, and every testcase's
    /// required attributes.
    fn validate(xml: &str, r: &Results) {
        let doc = roxmltree::Document::parse(xml).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "testsuites");
        assert_eq!(attr(root, "name"), "hvprobe");
        attr(root, "time").parse::<f64>().expect("time is a number");
        assert_eq!(count(root, "testcase"), r.tests.len());
        for n in [root].into_iter().chain(root.children().filter(|n| n.is_element())) {
            for (claim, tag) in
                [("tests", "testcase"), ("failures", "failure"), ("errors", "error"), ("skipped", "skipped")]
            {
                assert_eq!(attr(n, claim), count(n, tag).to_string(), "{claim} of <{}>", n.tag_name().name());
            }
        }
        for suite in root.children().filter(|n| n.is_element()) {
            assert_eq!(suite.tag_name().name(), "testsuite");
            for a in ["name", "time", "timestamp", "hostname"] {
                attr(suite, a);
            }
            assert_eq!(attr(suite, "timestamp"), r.started);
            let mut children = suite.children().filter(|n| n.is_element());
            let properties = children.next().expect("properties come first");
            assert_eq!(properties.tag_name().name(), "properties");
            let property = |name: &str| {
                properties.children().find(|p| p.attribute("name") == Some(name)).and_then(|p| p.attribute("value"))
            };
            assert_eq!(property("backend"), Some(r.host.backend.as_str()));
            assert_eq!(property("kernel"), Some(r.host.kernel.as_str()));
            assert_eq!(property("cpu_model"), Some(r.host.cpu_model.as_str()));
            assert!(property("kvm_api_version").is_some());
            for case in children {
                assert_eq!(case.tag_name().name(), "testcase");
                assert_eq!(attr(case, "classname"), format!("hvprobe.{}", attr(suite, "name")));
                let name = attr(case, "name");
                assert!(r.tests.iter().any(|t| t.name == name), "{name}");
                let time = attr(case, "time").parse::<f64>().expect("time is a number");
                assert!(time >= 0.0 && time.is_finite());
                assert!(case.children().filter(|c| c.is_element()).count() <= 1, "one verdict per case");
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
        let failure = case(Outcome::Fail).first_element_child().unwrap();
        assert_eq!(failure.attribute("type"), Some("fail"));
        let text = failure.text().unwrap();
        for part in ["because", "KVM_EXIT_SHUTDOWN", "rip 0x1000", "log: hello", "expected 0x1, actual 0x2"] {
            assert!(text.contains(part), "{part} in {text}");
        }
        let root = doc.root_element();
        assert_eq!((attr(root, "failures"), attr(root, "errors"), attr(root, "skipped")), ("2", "1", "1"));
    }

    #[test]
    fn an_unexpected_timeout_fails_and_an_empty_run_is_valid() {
        let mut r = crate::tests::sample();
        let timeout = r.tests.iter_mut().find(|t| t.outcome == Outcome::Timeout).unwrap();
        timeout.expected_timeout = false;
        let xml = render(&r);
        validate(&xml, &r);
        let doc = roxmltree::Document::parse(&xml).unwrap();
        assert!(doc.descendants().any(|n| n.has_tag_name("failure") && n.attribute("type") == Some("timeout")));
        r.tests.clear();
        validate(&render(&r), &r);
    }

    #[test]
    fn hostile_text_cannot_break_the_document() {
        let mut r = crate::tests::sample();
        let hostile = "<&>\"' \u{1} ]]> </failure>\u{ffff}";
        r.tests[1].reason = Some(hostile.into());
        r.tests[1].log.push("\u{1b}[31mred\u{1b}[0m".into());
        r.tests[2].area = "a<b&c".into();
        r.tests[2].name = "a<b&c::\"q\"::long64".into();
        r.host.hostname = "a\"b<c".into();
        r.duration_s = f64::NAN;
        r.tests[3].duration_ms = f64::INFINITY;
        let xml = render(&r);
        validate(&xml, &r);
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let failure = doc.descendants().find(|n| n.has_tag_name("failure")).unwrap();
        assert_eq!(failure.attribute("message"), Some("<&>\"' \u{fffd} ]]> </failure>\u{fffd}"));
        assert!(failure.text().unwrap().contains("red"));
        let suite = doc.descendants().find(|n| n.attribute("name") == Some("a<b&c")).unwrap();
        assert_eq!(suite.attribute("hostname"), Some("a\"b<c"));
    }
}
