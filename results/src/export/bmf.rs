//! Bencher Metric Format (bencher.dev): `{ BENCHMARK: { MEASURE: { value, lower_value,
//! upper_value } } }`, `value` required, the bounds optional.
//!
//! A benchmark's value is its median and its bounds are the median minus and plus its
//! spread (the median absolute deviation). Each guest test metric is exported too, as
//! benchmark `TEST/METRIC` with only a value, since one run is one sample.
//!
//! The measure is named after the unit, so values in different units never share a
//! measure: "ns" is Bencher's built-in `latency` measure (which is in nanoseconds), any
//! other unit is its slug, lower-case with every run of other characters one '-'
//! ("cycles", "guest-cycles-op"), cut to Bencher's 64 characters, or `value` if nothing
//! is left. A value JSON cannot carry (NaN, infinity) is left out rather than written
//! as null; so are bounds that are not finite.

use serde_json::{Map, Value, json};

use crate::Results;

/// Bencher's limit on a measure slug.
const MAX_MEASURE: usize = 64;

/// The measure name for a unit.
fn measure(unit: &str) -> String {
    match crate::text::slug(unit) {
        s if s == "ns" => "latency".into(),
        s if s.is_empty() => "value".into(),
        s => s.chars().take(MAX_MEASURE).collect::<String>().trim_end_matches('-').to_string(),
    }
}

/// Adds one measure to `out`, unless its value cannot be written.
fn add(out: &mut Map<String, Value>, benchmark: String, unit: &str, value: f64, bounds: Option<(f64, f64)>) {
    if !value.is_finite() {
        return;
    }
    let mut m = json!({ "value": value });
    if let Some((lower, upper)) = bounds.filter(|(l, u)| l.is_finite() && u.is_finite()) {
        m["lower_value"] = json!(lower);
        m["upper_value"] = json!(upper);
    }
    if let Value::Object(measures) = out.entry(benchmark).or_insert_with(|| json!({})) {
        measures.insert(measure(unit), m);
    }
}

pub fn render(r: &Results) -> String {
    let mut out = Map::new();
    for b in &r.benchmarks {
        let spread = b.spread.abs();
        add(&mut out, b.name.clone(), &b.unit, b.median, Some((b.median - spread, b.median + spread)));
    }
    for t in &r.tests {
        for (name, m) in &t.metrics {
            add(&mut out, format!("{}/{name}", t.name), &m.unit, m.value, None);
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

    /// Checks BMF's shape: an object of benchmarks, each a non-empty object of measures
    /// with slug names, each with a finite number `value`, optional finite bounds with
    /// lower <= value <= upper, and nothing else. Returns the number of measures.
    fn validate(text: &str) -> usize {
        let v: Value = serde_json::from_str(text).expect("JSON");
        let mut measures = 0;
        for (bench, ms) in v.as_object().expect("an object of benchmarks") {
            assert!(!bench.is_empty() && bench.len() <= 1024, "benchmark name {bench:?}");
            let ms = ms.as_object().unwrap_or_else(|| panic!("{bench}: an object of measures"));
            assert!(!ms.is_empty(), "{bench}: at least one measure");
            for (name, m) in ms {
                assert!(name.len() <= MAX_MEASURE && crate::text::slug(name) == *name, "{bench}: measure {name:?}");
                let m = m.as_object().unwrap_or_else(|| panic!("{bench}/{name}: an object"));
                assert!(m.keys().all(|k| ["value", "lower_value", "upper_value"].contains(&k.as_str())), "{m:?}");
                let number = |k: &str| m.get(k).map(|x| x.as_f64().filter(|f| f.is_finite()).expect("finite number"));
                let value = number("value").expect("a value");
                assert_eq!(m.contains_key("lower_value"), m.contains_key("upper_value"), "bounds come in pairs");
                if let (Some(lo), Some(hi)) = (number("lower_value"), number("upper_value")) {
                    assert!(lo <= value && value <= hi, "{bench}/{name}: {lo} <= {value} <= {hi}");
                }
                measures += 1;
            }
        }
        measures
    }

    #[test]
    fn benchmarks_and_metrics_become_measures() {
        let mut r = crate::tests::sample();
        r.benchmarks.push(Benchmark::new("hlt", "Guest cycles", 9.0, -2.0, 5));
        let text = render(&r);
        assert_eq!(validate(&text), 2 + r.tests.len());
        let v: Value = serde_json::from_str(&text).unwrap();
        let mut names: Vec<&String> = v.as_object().unwrap().keys().collect();
        names.sort();
        let mut expected: Vec<String> = vec!["cpuid".into(), "hlt".into()];
        expected.extend(r.tests.iter().map(|t| format!("{}/cpuid", t.name)));
        expected.sort();
        assert_eq!(names, expected.iter().collect::<Vec<_>>());
        assert_eq!(v["cpuid"], json!({"latency": {"value": 1.0, "lower_value": 0.9, "upper_value": 1.1}}));
        assert_eq!(v["hlt"]["guest-cycles"], json!({"value": 9.0, "lower_value": 7.0, "upper_value": 11.0}));
        assert_eq!(v["cpu::case0::long64/cpuid"], json!({"cycles": {"value": 1200.0}}));
    }

    #[test]
    fn nothing_to_export_is_an_empty_object() {
        let mut r = crate::tests::sample();
        r.benchmarks.clear();
        for t in &mut r.tests {
            t.metrics.clear();
        }
        assert_eq!(render(&r), "{}\n");
        assert_eq!(validate(&render(&r)), 0);
    }

    #[test]
    fn odd_units_and_values_still_give_valid_bmf() {
        let mut r = crate::tests::sample();
        r.tests.truncate(1);
        r.tests[0].metrics = [
            ("a".to_string(), MetricValue { value: 1.0, unit: "%%".into() }),
            ("b".to_string(), MetricValue { value: f64::NAN, unit: "count".into() }),
            ("c".to_string(), MetricValue { value: 2.0, unit: "x".repeat(100) }),
        ]
        .into();
        r.benchmarks[0].spread = f64::INFINITY;
        let text = render(&r);
        assert_eq!(validate(&text), 3, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["cpu::case0::long64/a"], json!({"value": {"value": 1.0}}));
        assert!(v.get("cpu::case0::long64/b").is_none(), "NaN is left out");
        assert_eq!(v["cpuid"]["latency"], json!({"value": 1.0}), "infinite bounds are left out");
    }
}
