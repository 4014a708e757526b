//! The guest/host ABI is the only copy of every number both sides use: a layout change
//! bumps `ABI_VERSION` in one place instead of drifting silently in a copy. This scans the
//! sources of both sides for the ABI's distinctive literals (and a few constants that once
//! had copies) and fails on any outside the one file allowed to hold it.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target" && n != "fuzz") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn abi_literals_live_only_in_the_abi() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let abi = "guest-payloads/abi/src/lib.rs";
    // (literal, the one file that may hold it).
    let rules: [(&str, &str); 9] = [
        ("0x4d505648", abi), // proto::MAGIC, "HVPM"
        ("0x4d56_5048", abi),
        ("0xc0001000", abi), // layout::PROTOCOL_MMIO
        ("0xc000_1000", abi),
        ("dx, 0x500", abi),                              // port::PROTOCOL in assembly
        ("hv_low_fail + 1", abi),                        // Verdict field offsets written by hand
        ("0x4b56_4d04", "guest-payloads/rt/src/cpu.rs"), // MSR_KVM_PV_EOI_EN
        ("0x4b56_4d01", "guest-payloads/rt/src/cpu.rs"), // MSR_KVM_SYSTEM_TIME_NEW
        ("0xc000_0080", "<none: x86::msr::IA32_EFER>"),
    ];
    let mut files = Vec::new();
    for dir in [
        "guest-payloads/abi/src",
        "guest-payloads/rt/src",
        "guest-payloads/payload/src",
        "harness/src",
        "suites/src",
        "results/src",
    ] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "scanned only {} files", files.len());
    let mut found = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(file).unwrap();
        for (literal, home) in rules {
            for (n, line) in text.lines().enumerate() {
                if line.contains(literal) && rel != home {
                    found.push(format!("{rel}:{}: {literal} (belongs in {home}): {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "ABI literals outside the ABI:\n{}", found.join("\n"));
}
