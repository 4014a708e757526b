//! KTAP version 1, as the kernel's Documentation/dev-tools/ktap.rst defines it: one
//! subtest per area (indented two spaces, the spec's one level), one result line per
//! test, diagnostic lines (`# ...`) directly before the result line they explain.
//!
//! The spec's directives carry the outcomes it has words for:
//! - skip: `ok N name # SKIP reason`;
//! - xfail: `ok N name # XFAIL reason`. XFAIL is the spec's "expected to fail" (kselftest
//!   prints it after `ok`); TODO means the same in TAP, but the spec discourages it in
//!   the kernel and lists it as not recognised by KTAP, so it is not used;
//! - an unexpected timeout: `not ok N name # TIMEOUT reason`;
//! - error: `not ok N name # ERROR reason`;
//! - fail and xpass: plain `not ok N name`, the outcome and reason in diagnostics;
//! - the watchdog's expected timeout: plain `ok`, with a diagnostic saying so.
//!
//! An area's own line is `not ok` when one of its tests fails the run (the spec's
//! "bubbling up"), `ok ... # SKIP` when all were skipped, `ok` otherwise. Names and
//! reasons are folded onto one line, and '#' in a name (which would start a directive)
//! becomes '_'.

use std::fmt::Write as _;

use super::{by_area, one_line};
use crate::{Outcome, Results, TestResult};

/// One level of nesting, as ktap.rst specifies it.
const INDENT: &str = "  ";

/// A description for a result line: one line, no '#'.
fn description(s: &str) -> String {
    let d = one_line(s).replace('#', "_");
    if d.is_empty() { "unnamed".into() } else { d }
}

/// `# DIRECTIVE reason`, or `# DIRECTIVE` alone when there is no reason.
fn directive(word: &str, reason: &str) -> String {
    if reason.is_empty() { format!(" # {word}") } else { format!(" # {word} {reason}") }
}

fn result_line(n: usize, t: &TestResult) -> String {
    let reason = one_line(t.reason.as_deref().unwrap_or(""));
    let name = description(&t.name);
    match t.outcome {
        Outcome::Skip => format!("ok {n} {name}{}", directive("SKIP", &reason)),
        Outcome::Xfail => format!("ok {n} {name}{}", directive("XFAIL", &reason)),
        Outcome::Error => format!("not ok {n} {name}{}", directive("ERROR", &reason)),
        Outcome::Timeout if t.fails_run() => format!("not ok {n} {name}{}", directive("TIMEOUT", &reason)),
        _ if t.fails_run() => format!("not ok {n} {name}"),
        _ => format!("ok {n} {name}"),
    }
}

/// The diagnostic lines before a test's result line: why it failed, how the run ended
/// and the CPU state, so a KTAP log alone is enough to start debugging.
fn diagnostics(t: &TestResult) -> Vec<String> {
    let reason = one_line(t.reason.as_deref().unwrap_or(""));
    let mut lines = Vec::new();
    match t.outcome {
        Outcome::Fail | Outcome::Xpass => lines.push(format!("{}: {reason}", t.outcome.name())),
        Outcome::Timeout if !t.fails_run() => {
            lines.push(format!("expected timeout (the watchdog's own test): {reason}"))
        }
        _ => {}
    }
    if t.fails_run() {
        if let Some(f) = &t.failure {
            lines.push(format!("ended by {}: {}", f.end, one_line(&f.description)));
            if let Some(cpu) = &f.cpu {
                lines.push(format!("cpu: {}", one_line(cpu)));
            }
        }
        lines.extend(t.log.iter().map(|l| format!("log: {}", one_line(l))));
    }
    lines.into_iter().map(|l| l.trim_end().to_string()).collect()
}

pub fn render(r: &Results) -> String {
    let mut k = String::from("KTAP version 1\n");
    let _ = writeln!(
        k,
        "# hvprobe {} on {} ({}, kernel {}), started {}",
        r.tool.version,
        one_line(&r.host.hostname),
        one_line(&r.host.backend),
        one_line(&r.host.kernel),
        one_line(&r.started)
    );
    let areas = by_area(r);
    let _ = writeln!(k, "1..{}", areas.len());
    for (i, (area, tests)) in areas.iter().enumerate() {
        let area = description(area);
        let _ = writeln!(k, "{INDENT}KTAP version 1\n{INDENT}# Subtest: {area}\n{INDENT}1..{}", tests.len());
        for (j, t) in tests.iter().enumerate() {
            for d in diagnostics(t) {
                let _ = writeln!(k, "{INDENT}# {d}");
            }
            let _ = writeln!(k, "{INDENT}{}", result_line(j + 1, t));
        }
        let line = if tests.iter().any(|t| t.fails_run()) {
            format!("not ok {} {area}", i + 1)
        } else if tests.iter().all(|t| t.outcome == Outcome::Skip) {
            format!("ok {} {area} # SKIP every test skipped", i + 1)
        } else {
            format!("ok {} {area}", i + 1)
        };
        let _ = writeln!(k, "{line}");
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a strict reader makes of one test: its result and directive.
    #[derive(Debug, PartialEq)]
    struct Verdict {
        ok: bool,
        directive: Option<String>,
    }

    /// A strict reader of KTAP v1 as ktap.rst defines it, stricter where hvprobe never
    /// uses the spec's leeway: only version, plan, result and diagnostic lines (no
    /// "unknown lines"), at exactly two spaces per level of nesting; a plan that matches
    /// the results; numbering 1..N in order; descriptions without '#'; after " # " only
    /// one of the spec's directives (no bare diagnostic data), TIMEOUT and ERROR only
    /// after `not ok`; and a parent that is `not ok` exactly when a subtest is. Returns
    /// the top-level verdicts.
    fn validate(text: &str) -> Result<Vec<Verdict>, String> {
        let lines: Vec<&str> = text.lines().collect();
        if !text.ends_with('\n') {
            return Err("the output must end with a newline".into());
        }
        let mut pos = 0;
        let verdicts = parse_block(&lines, &mut pos, 0)?;
        match lines.get(pos) {
            Some(l) => Err(format!("line {}: trailing text {l:?}", pos + 1)),
            None => Ok(verdicts),
        }
    }

    fn parse_block(lines: &[&str], pos: &mut usize, depth: usize) -> Result<Vec<Verdict>, String> {
        let indent = INDENT.repeat(depth);
        let err = |p: usize, what: &str| format!("line {}: {what}: {:?}", p + 1, lines.get(p).unwrap_or(&"<end>"));
        // The line at `p` without this level's indentation, if it is at this level.
        let at = |p: usize| {
            let l = lines.get(p)?.strip_prefix(indent.as_str())?;
            (!l.starts_with(' ') && !l.starts_with('\t')).then_some(l)
        };
        if at(*pos) != Some("KTAP version 1") {
            return Err(err(*pos, "expected the version line"));
        }
        *pos += 1;
        while at(*pos).is_some_and(|l| l.starts_with('#')) {
            *pos += 1;
        }
        let planned = at(*pos)
            .and_then(|l| l.strip_prefix("1.."))
            .filter(|n| !n.starts_with('0') || *n == "0")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| err(*pos, "expected a plan 1..N"))?;
        *pos += 1;
        let mut verdicts = Vec::new();
        let mut children: Option<Vec<Verdict>> = None;
        while verdicts.len() < planned {
            let Some(line) = at(*pos) else {
                let nested = lines.get(*pos).is_some_and(|l| l.starts_with(&format!("{indent}{INDENT}KTAP")));
                if nested && children.is_none() {
                    children = Some(parse_block(lines, pos, depth + 1)?);
                    continue;
                }
                return Err(err(*pos, "expected a result, a diagnostic or one subtest, at this indentation"));
            };
            *pos += 1;
            if line.starts_with("# ") || line == "#" {
                continue;
            }
            let (ok, rest) = match (line.strip_prefix("ok "), line.strip_prefix("not ok ")) {
                (Some(rest), _) => (true, rest),
                (_, Some(rest)) => (false, rest),
                _ => return Err(err(*pos - 1, "not a KTAP line")),
            };
            let (number, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            if number != (verdicts.len() + 1).to_string() {
                return Err(err(*pos - 1, &format!("expected test number {}", verdicts.len() + 1)));
            }
            let (description, directive) = match rest.split_once(" # ") {
                Some((d, dir)) => (d, Some(dir.split(' ').next().unwrap_or("").to_string())),
                None => (rest, None),
            };
            if description.is_empty() || description.contains('#') || description.trim() != description {
                return Err(err(*pos - 1, "the description must be non-empty, trimmed and free of '#'"));
            }
            match directive.as_deref() {
                None | Some("SKIP" | "TODO" | "XFAIL") => {}
                Some("TIMEOUT" | "ERROR") if !ok => {}
                Some(d) => return Err(err(*pos - 1, &format!("directive {d:?} is not KTAP's or not after `not ok`"))),
            }
            if let Some(sub) = children.take()
                && ok == sub.iter().any(|v| !v.ok)
            {
                return Err(err(*pos - 1, "a parent is `not ok` exactly when one of its subtests is"));
            }
            verdicts.push(Verdict { ok, directive });
        }
        if children.is_some() {
            return Err(err(*pos, "a subtest without its result line"));
        }
        Ok(verdicts)
    }

    fn verdict(ok: bool, directive: Option<&str>) -> Verdict {
        Verdict { ok, directive: directive.map(str::to_string) }
    }

    #[test]
    fn the_export_is_valid_ktap_with_the_right_lines() {
        let r = crate::tests::sample();
        let text = render(&r);
        assert_eq!(validate(&text), Ok(vec![verdict(false, None)]), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(&lines[..5], ["KTAP version 1", lines[1], "1..1", "  KTAP version 1", "  # Subtest: cpu"]);
        assert!(lines[1].starts_with("# hvprobe ") && lines[1].contains("kvm_pvm"));
        assert_eq!(lines[5], "  1..7");
        for expected in [
            "  ok 1 cpu::case0::long64",
            "  # fail: because",
            "  # ended by shutdown: KVM_EXIT_SHUTDOWN",
            "  # cpu: rip 0x1000",
            "  not ok 2 cpu::case1::long64",
            "  ok 3 cpu::case2::long64 # SKIP because",
            "  ok 4 cpu::case3::long64 # XFAIL because",
            "  # xpass: because",
            "  not ok 5 cpu::case4::long64",
            "  # expected timeout (the watchdog's own test): because",
            "  ok 6 cpu::case5::long64",
            "  not ok 7 cpu::case6::long64 # ERROR because",
            "not ok 1 cpu",
        ] {
            assert!(lines.contains(&expected), "{expected:?} in\n{text}");
        }
        assert_eq!(lines.last(), Some(&"not ok 1 cpu"));
    }

    #[test]
    fn an_unexpected_timeout_is_not_ok_with_its_directive() {
        let mut r = crate::tests::sample();
        r.tests.retain(|t| t.outcome == Outcome::Timeout);
        r.tests[0].expected_timeout = false;
        let text = render(&r);
        assert_eq!(validate(&text), Ok(vec![verdict(false, None)]), "{text}");
        assert!(text.contains("\n  not ok 1 cpu::case5::long64 # TIMEOUT because\n"), "{text}");
    }

    #[test]
    fn an_all_passing_run_has_ok_areas_and_text_stays_on_one_line() {
        let mut r = crate::tests::sample();
        r.tests.retain(|t| !t.fails_run());
        let mut extra = r.tests[0].clone();
        extra.name = "io::x#1::long64".into();
        extra.area = "io".into();
        extra.outcome = Outcome::Skip;
        extra.reason = Some("host lacks\nthis and # that\r\n".into());
        r.tests.push(extra);
        r.host.hostname = "two\nlines".into();
        let text = render(&r);
        assert_eq!(validate(&text), Ok(vec![verdict(true, None), verdict(true, Some("SKIP"))]), "{text}");
        assert!(text.contains("\n  ok 1 io::x_1::long64 # SKIP host lacks this and # that\n"), "{text}");
        assert!(text.contains("\nok 2 io # SKIP every test skipped\n"), "{text}");
        assert!(text.contains("\nok 1 cpu\n"), "{text}");
    }

    #[test]
    fn an_empty_run_is_an_empty_plan() {
        let mut r = crate::tests::sample();
        r.tests.clear();
        let text = render(&r);
        assert_eq!(validate(&text), Ok(vec![]), "{text}");
        assert!(text.ends_with("\n1..0\n"));
    }

    #[test]
    fn the_validator_rejects_broken_ktap() {
        let ok = "KTAP version 1\n1..1\n  KTAP version 1\n  1..1\n  ok 1 a\nok 1 s\n";
        assert_eq!(validate(ok), Ok(vec![verdict(true, None)]));
        for (bad, why) in [
            ("KTAP version 1\n1..2\nok 1 a\n", "short of its plan"),
            ("KTAP version 1\n1..1\nok 1 a\nok 2 b\n", "beyond its plan"),
            ("KTAP version 1\n1..1\nok 2 a\n", "wrong number"),
            ("KTAP version 1\n1..1\nok 1 a # XPASS x\n", "unknown directive"),
            ("KTAP version 1\n1..1\nok 1 a # TIMEOUT x\n", "TIMEOUT after ok"),
            ("KTAP version 1\n1..1\nok 1 a#b\n", "'#' in a description"),
            ("TAP version 13\n1..1\nok 1 a\n", "not KTAP"),
            ("KTAP version 1\nok 1 a\n", "no plan"),
            ("KTAP version 1\n1..1\nok 1 a", "no final newline"),
            ("KTAP version 1\n1..1\nhello\nok 1 a\n", "an unknown line"),
            ("KTAP version 1\n1..1\n    KTAP version 1\n    1..1\n    ok 1 a\nok 1 s\n", "four-space indent"),
            ("KTAP version 1\n1..1\n  KTAP version 1\n  1..1\n  not ok 1 a\nok 1 s\n", "a failure does not bubble up"),
            ("KTAP version 1\n1..1\n  KTAP version 1\n  1..1\n  ok 1 a\n", "a subtest without its result"),
        ] {
            assert!(validate(bad).is_err(), "{why}: {bad:?}");
        }
    }
}
