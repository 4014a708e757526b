//! Differences between two results files: outcomes, benchmarks beyond their noise, host facts.
