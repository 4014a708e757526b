//! Fuzz targets: each hands arbitrary bytes to one parser of outside input. A parser must
//! answer with a value or a typed error: never panic, hang or allocate without bound. The
//! coverage-guided fuzzer (`make fuzz`, suites/fuzz/) and the corpus replay test
//! (tests/fuzz_corpus.rs) call these same functions.

use std::io::Cursor;
use std::path::Path;

use hvprobe_harness::{GuestMemory, Payload, Snapshot, protocol};
use hvprobe_results::Results;

use crate::catalog;
use crate::profile::Profile;

/// A fuzz target: takes any bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// The targets by name, as `suites/fuzz/corpus/<name>/` and the fuzz binaries name them.
pub const TARGETS: [(&str, Target); 5] =
    [("payload", payload), ("protocol", protocol), ("snapshot", snapshot), ("results", results), ("profile", profile)];

/// A guest payload: the ELF image and its test table.
pub fn payload(data: &[u8]) {
    if let Ok(p) = Payload::parse(data) {
        for t in &p.tests {
            assert!(p.test(&t.name).is_some(), "a parsed case cannot be found by its name {:?}", t.name);
        }
    }
}

/// Guest RAM the protocol target decodes messages from.
const PROTOCOL_RAM: u64 = 64 * 1024;

/// A guest protocol message: the first 8 bytes are the message's address, the rest the
/// start of guest RAM.
pub fn protocol(data: &[u8]) {
    let Some((addr, ram)) = data.split_first_chunk::<8>() else { return };
    let mem = GuestMemory::new(PROTOCOL_RAM).expect("64 KiB of guest memory");
    mem.write(0, &ram[..ram.len().min(PROTOCOL_RAM as usize)]).expect("within the memory");
    if let Ok(protocol::Message::Log(text)) = protocol::decode(&mem, u64::from_le_bytes(*addr)) {
        assert!(text.len() as u64 <= 3 * hvprobe_abi::proto::MAX_STR, "a log line of {} bytes", text.len());
    }
}

/// A snapshot file (header line and memory).
pub fn snapshot(data: &[u8]) {
    let _ = Snapshot::from_reader(Cursor::new(data), "fuzz input");
}

/// A results file: what parses also writes and parses back to the same document.
pub fn results(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(r) = Results::parse(text, Path::new("fuzz input")) {
        let again = serde_json::to_string(&r).expect("a parsed results file serializes");
        let back = Results::parse(&again, Path::new("fuzz output")).expect("a written results file parses");
        assert_eq!(serde_json::to_value(&back).ok(), serde_json::to_value(&r).ok(), "results round trip");
    }
}

/// An expectation profile, checked against the embedded catalogue.
pub fn profile(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let payload = catalog::payload().expect("the embedded payload parses");
    let _ = Profile::parse(text, "fuzz.toml", payload);
}
