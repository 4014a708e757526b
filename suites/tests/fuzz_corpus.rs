//! Replays every committed fuzz corpus (suites/fuzz/corpus/<target>/) through the fuzz
//! targets: inputs that once found a new path in a parser must still end in a value or an
//! error, never a panic. The seeds are checked to be the valid inputs they claim to be.

use std::path::PathBuf;

use hvprobe_suites::fuzz::TARGETS;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

#[test]
fn every_corpus_input_ends_without_a_panic() {
    for (target, run) in TARGETS {
        let inputs = corpus(target);
        assert!(!inputs.is_empty(), "the {target} corpus is empty");
        for (name, data) in &inputs {
            if let Err(panic) = std::panic::catch_unwind(|| run(data)) {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                panic!("{target}/{name}: {}", what.unwrap_or_default());
            }
        }
    }
}

#[test]
fn the_seeds_are_valid_inputs() {
    for (name, data) in corpus("payload").iter().filter(|(n, _)| n.starts_with("seed-")) {
        let p = hvprobe_harness::Payload::parse(data).unwrap_or_else(|e| panic!("payload/{name}: {e}"));
        assert!(!(p.tests.is_empty() && p.benches.is_empty()), "payload/{name} has no cases");
    }
    for (name, data) in corpus("results").iter().filter(|(n, _)| n.starts_with("seed-")) {
        let text = std::str::from_utf8(data).unwrap();
        hvprobe_results::Results::parse(text, std::path::Path::new(name))
            .unwrap_or_else(|e| panic!("results/{name}: {e}"));
    }
    let payload = hvprobe_suites::catalog::payload().unwrap();
    for (name, data) in corpus("profile").iter().filter(|(n, _)| n.starts_with("seed-")) {
        let text = std::str::from_utf8(data).unwrap();
        hvprobe_suites::profile::Profile::parse(text, name, payload).unwrap_or_else(|e| panic!("profile/{name}: {e}"));
    }
}
