//! The static HTML dashboard built from a directory of results files.
