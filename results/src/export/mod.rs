//! Exports of a results file to CI formats: JUnit XML, KTAP, Bencher Metric Format, KCIDB.
//!
//! Every format is produced from a `Results` alone, so any results file, from any host,
//! exports the same way. Outcomes a format has no word for are mapped as each module
//! documents; hvprobe's own outcome always travels along where the format has room.

mod bmf;
mod junit;
mod kcidb;
mod ktap;

use std::str::FromStr;

use crate::{Results, TestResult};

/// A CI format `hvprobe export` can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Junit,
    Ktap,
    Bmf,
    Kcidb,
}

impl Format {
    /// Every format, in the order help texts list them.
    pub const ALL: [Format; 4] = [Format::Junit, Format::Ktap, Format::Bmf, Format::Kcidb];

    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            Format::Junit => "junit",
            Format::Ktap => "ktap",
            Format::Bmf => "bmf",
            Format::Kcidb => "kcidb",
        }
    }

    /// The file extension CI systems expect for the format.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Junit => "xml",
            Format::Ktap => "ktap",
            Format::Bmf | Format::Kcidb => "json",
        }
    }
}

/// A `--format` that names no format; the message lists the ones there are.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown export format {0:?}; the formats are junit, ktap, bmf and kcidb")]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Format, UnknownFormat> {
        Format::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| UnknownFormat(s.to_string()))
    }
}

/// `results` in `format`, as the text of a whole file (ending in a newline).
pub fn export(results: &Results, format: Format) -> String {
    match format {
        Format::Junit => junit::render(results),
        Format::Ktap => ktap::render(results),
        Format::Bmf => bmf::render(results),
        Format::Kcidb => kcidb::render(results),
    }
}

/// Text folded onto one line, for formats where a newline ends a record: every run of
/// whitespace or control characters becomes one space.
fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_whitespace() || c.is_control()).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

/// A duration in milliseconds as seconds. A results file written by hand or by a broken
/// clock can hold NaN or a negative time, which no format can carry: those become 0.
fn seconds(ms: f64) -> f64 {
    if ms.is_finite() && ms > 0.0 { ms / 1e3 } else { 0.0 }
}

/// Areas in first-seen order with their tests, so every export groups alike.
fn by_area(results: &Results) -> Vec<(&str, Vec<&TestResult>)> {
    let mut areas: Vec<(&str, Vec<&TestResult>)> = Vec::new();
    for t in &results.tests {
        match areas.iter_mut().find(|(a, _)| *a == t.area) {
            Some((_, tests)) => tests.push(t),
            None => areas.push((&t.area, vec![t])),
        }
    }
    areas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_by_name_and_refuse_others() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>(), Ok(f));
        }
        let e = "xml".parse::<Format>().unwrap_err();
        assert!(e.to_string().contains("junit, ktap, bmf and kcidb"));
        let extensions: Vec<&str> = Format::ALL.iter().map(|f| f.extension()).collect();
        assert_eq!(extensions, ["xml", "ktap", "json", "json"]);
    }

    #[test]
    fn helpers_fold_lines_and_tame_durations() {
        assert_eq!(one_line(" a\n\tb\r\n\u{1}c  "), "a b c");
        assert_eq!(seconds(1500.0), 1.5);
        assert_eq!(seconds(f64::NAN), 0.0);
        assert_eq!(seconds(-3.0), 0.0);
    }

    #[test]
    fn every_format_exports_the_sample() {
        let r = crate::tests::sample();
        for f in Format::ALL {
            assert!(!export(&r, f).is_empty(), "{}", f.name());
        }
    }
}
