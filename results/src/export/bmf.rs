//! Bencher Metric Format (bencher.dev): `{ BENCHMARK: { MEASURE: { value, lower_value,
//! upper_value } } }`. A benchmark's bounds are its median minus and plus its spread.
//! Each guest test metric is exported too, as `TEST/METRIC`, with only a value (one
//! sample has no spread). The measure is the unit as a slug: lower-case, with every run
//! of other characters turned into one '-' ("cycles", "ns", "guest-cycles").

use serde_json::{Map, Value, json};

use crate::Results;

/// The measure name for a unit.
fn slug(unit: &str) -> String {
    let s = crate::text::slug(unit);
    if s.is_empty() { "value".into() } else { s }
}

pub fn render(r: &Results) -> String {
    let mut out = Map::new();
    for b in &r.benchmarks {
        let measure = json!({
            "value": b.median,
            "lower_value": b.median - b.spread.abs(),
            "upper_value": b.median + b.spread.abs(),
        });
        out.entry(b.name.clone()).or_insert_with(|| json!({}))[slug(&b.unit)] = measure;
    }
    for t in &r.tests {
        for (name, m) in &t.metrics {
            out.entry(format!("{}/{name}", t.name)).or_insert_with(|| json!({}))[slug(&m.unit)] =
                json!({ "value": m.value });
        }
    }
    let mut text = serde_json::to_string_pretty(&Value::Object(out)).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Benchmark, MetricValue};

    /// Every leaf is a measure with a finite value, and bounds around it when present.
    fn validate(text: &str) -> usize {
        let v: Value = serde_json::from_str(text).expect("JSON");
        let mut measures = 0;
        for (bench, ms) in v.as_object().expect("an object of benchmarks") {
            for (measure, m) in ms.as_object().unwrap_or_else(|| panic!("{bench}: an object of measures")) {
                assert_eq!(slug(measure), *measure, "{bench}: measure names are slugs");
                let m = m.as_object().unwrap();
                assert!(m.keys().all(|k| ["value", "lower_value", "upper_value"].contains(&k.as_str())));
                let value = m["value"].as_f64().filter(|v| v.is_finite()).expect("a finite value");
                if let (Some(lo), Some(hi)) = (m.get("lower_value"), m.get("upper_value")) {
                    assert!(lo.as_f64().unwrap() <= value && value <= hi.as_f64().unwrap());
                }
                measures += 1;
            }
        }
        measures
    }

    #[test]
    fn benchmarks_and_metrics_become_measures() {
        let mut r = crate::tests::sample();
        r.benchmarks.push(Benchmark {
            name: "hlt".into(),
            unit: "guest cycles".into(),
            median: 9.0,
            spread: 2.0,
            samples: 5,
        });
        let text = render(&r);
        let count = validate(&text);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["cpuid"]["ns"], json!({"value": 1.0, "lower_value": 0.9, "upper_value": 1.1}));
        assert_eq!(v["hlt"]["guest-cycles"]["lower_value"], json!(7.0));
        assert_eq!(v["cpu::case0::long64/cpuid"]["cycles"], json!({"value": 1200.0}));
        assert_eq!(count, 2 + r.tests.len());
    }

    #[test]
    fn nothing_to_export_is_an_empty_object() {
        let mut r = crate::tests::sample();
        r.benchmarks.clear();
        for t in &mut r.tests {
            t.metrics.clear();
        }
        assert_eq!(render(&r).trim(), "{}");
        let mut t = r.tests[0].clone();
        t.metrics.insert("x".into(), MetricValue { value: 1.0, unit: "%%".into() });
        r.tests = vec![t];
        assert!(render(&r).contains("\"value\""), "an empty unit slug still names a measure");
    }
}
