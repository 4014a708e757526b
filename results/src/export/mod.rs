//! Exports of a results file to CI formats: JUnit XML, KTAP, Bencher Metric Format, KCIDB.
