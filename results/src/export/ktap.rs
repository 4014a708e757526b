//! KTAP version 1 (the kernel's Documentation/dev-tools/ktap.rst): one subtest per area,
//! one result line per test, diagnostics (`# ...`) before the line they explain.
//!
//! skip is `ok N name # SKIP reason`. An xfail is `not ok N name # TODO reason`: in TAP a
//! TODO test is one that is expected to fail and does not fail the run, which is exactly
//! a known deviation. fail, xpass, error and an unexpected timeout are plain `not ok`; the
//! watchdog's expected timeout is `ok`. An area's own line is `not ok` only when one of
//! its tests fails the run.

use std::fmt::Write as _;

use super::{by_area, fails_run, one_line};
use crate::{Outcome, Results, TestResult};

fn result_line(n: usize, t: &TestResult) -> String {
    let reason = one_line(t.reason.as_deref().unwrap_or(""));
    match t.outcome {
        Outcome::Skip => format!("ok {n} {} # SKIP {reason}", t.name),
        Outcome::Xfail => format!("not ok {n} {} # TODO {reason}", t.name),
        _ if fails_run(t) => format!("not ok {n} {}", t.name),
        _ => format!("ok {n} {}", t.name),
    }
}

pub fn render(r: &Results) -> String {
    let mut k = String::from("KTAP version 1\n");
    let _ = writeln!(
        k,
        "# hvprobe {} on {} ({}, kernel {}), started {}",
        r.tool.version, r.host.hostname, r.host.backend, r.host.kernel, r.started
    );
    let areas = by_area(r);
    let _ = writeln!(k, "1..{}", areas.len());
    for (i, (area, tests)) in areas.iter().enumerate() {
        let _ = writeln!(k, "    KTAP version 1\n    # Subtest: {area}\n    1..{}", tests.len());
        for (j, t) in tests.iter().enumerate() {
            if fails_run(t) {
                let _ = writeln!(k, "    # {}: {}", t.outcome.name(), one_line(t.reason.as_deref().unwrap_or("")));
                if let Some(cpu) = t.failure.as_ref().and_then(|f| f.cpu.as_ref()) {
                    let _ = writeln!(k, "    # cpu: {}", one_line(cpu));
                }
            }
            let _ = writeln!(k, "    {}", result_line(j + 1, t));
        }
        let ok = if tests.iter().any(|t| fails_run(t)) { "not ok" } else { "ok" };
        let _ = writeln!(k, "{ok} {} {area}", i + 1);
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A strict reader of KTAP v1 as ktap.rst defines it: returns (ok, not ok) counts of
    /// the top level, or what is wrong and where.
    fn validate(text: &str) -> Result<(usize, usize), String> {
        let lines: Vec<&str> = text.lines().collect();
        let mut pos = 0;
        let counts = parse_block(&lines, &mut pos, 0)?;
        if pos != lines.len() {
            return Err(format!("line {}: trailing text {:?}", pos + 1, lines[pos]));
        }
        Ok(counts)
    }

    fn parse_block(lines: &[&str], pos: &mut usize, depth: usize) -> Result<(usize, usize), String> {
        let indent = " ".repeat(4 * depth);
        let at = |p: usize| lines.get(p).and_then(|l| l.strip_prefix(indent.as_str()));
        let err = |p: usize, what: &str| format!("line {}: {what}: {:?}", p + 1, lines.get(p).unwrap_or(&""));
        if at(*pos) != Some("KTAP version 1") {
            return Err(err(*pos, "expected the version line"));
        }
        *pos += 1;
        while at(*pos).is_some_and(|l| l.starts_with('#')) {
            *pos += 1;
        }
        let plan = at(*pos).and_then(|l| l.strip_prefix("1..")).and_then(|n| n.parse::<usize>().ok());
        let Some(planned) = plan else { return Err(err(*pos, "expected a plan 1..N")) };
        *pos += 1;
        let (mut ok, mut not_ok, mut number) = (0, 0, 0);
        while number < planned {
            let line = at(*pos).ok_or_else(|| err(*pos, "expected a result, diagnostic or subtest"))?;
            if line.starts_with('#') {
                *pos += 1;
                continue;
            }
            if line.starts_with(' ') {
                parse_block(lines, pos, depth + 1)?;
                continue;
            }
            let (passed, rest) = if let Some(rest) = line.strip_prefix("ok ") {
                (true, rest)
            } else if let Some(rest) = line.strip_prefix("not ok ") {
                (false, rest)
            } else {
                return Err(err(*pos, "not a KTAP line"));
            };
            let (num, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            number += 1;
            if num.parse::<usize>() != Ok(number) {
                return Err(err(*pos, &format!("expected test number {number}")));
            }
            let (description, directive) = match rest.split_once(" # ") {
                Some((d, dir)) => (d, Some(dir)),
                None => (rest, None),
            };
            if description.is_empty() || description.contains('#') {
                return Err(err(*pos, "the description must be non-empty and free of '#'"));
            }
            if let Some(dir) = directive {
                let word = dir.split(' ').next().unwrap_or("");
                if !["SKIP", "TODO"].contains(&word) {
                    return Err(err(*pos, "the only directives are SKIP and TODO"));
                }
            }
            if passed {
                ok += 1
            } else {
                not_ok += 1
            }
            *pos += 1;
        }
        Ok((ok, not_ok))
    }

    #[test]
    fn the_export_is_valid_ktap_with_the_right_lines() {
        let r = crate::tests::sample();
        let text = render(&r);
        assert_eq!(validate(&text), Ok((0, 1)), "{text}");
        assert!(text.contains("    ok 3 cpu::case2::long64 # SKIP because\n"), "{text}");
        assert!(text.contains("    not ok 4 cpu::case3::long64 # TODO because\n"), "{text}");
        assert!(text.contains("    not ok 5 cpu::case4::long64\n"), "xpass fails: {text}");
        assert!(text.contains("    ok 6 cpu::case5::long64\n"), "the expected timeout passes: {text}");
        assert!(text.contains("    # fail: because\n"));
    }

    #[test]
    fn an_all_passing_run_has_ok_areas_and_multiline_reasons_stay_on_one_line() {
        let mut r = crate::tests::sample();
        r.tests.retain(|t| !fails_run(t));
        let mut extra = r.tests[0].clone();
        extra.name = "io::x::long64".into();
        extra.area = "io".into();
        extra.outcome = Outcome::Skip;
        extra.reason = Some("host lacks\nthis and # that".into());
        r.tests.push(extra);
        let text = render(&r);
        assert_eq!(validate(&text), Ok((2, 0)), "{text}");
        assert!(text.contains("# SKIP host lacks this and # that\n"));
    }

    #[test]
    fn the_validator_rejects_broken_ktap() {
        assert!(validate("KTAP version 1\n1..2\nok 1 a\n").is_err(), "short of its plan");
        assert!(validate("KTAP version 1\n1..1\nok 2 a\n").is_err(), "wrong number");
        assert!(validate("KTAP version 1\n1..1\nok 1 a # XFAIL x\n").is_err(), "unknown directive");
        assert!(validate("TAP version 13\n1..1\nok 1 a\n").is_err(), "not KTAP");
    }
}
