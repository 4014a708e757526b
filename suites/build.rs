//! Builds the guest payloads (their own cargo workspace, for x86_64-unknown-none) so that
//! `cargo build` and `cargo test` at the root need no manual step. The ELF is embedded in
//! the suites through HVPROBE_GUEST_ELF.

use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "x86_64-unknown-none";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("suites/ lives in the workspace root").to_path_buf();
    let guest = root.join("guest-payloads");
    for watched in ["abi", "rt", "payload", "Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", guest.join(watched).display());
    }
    // Outside guest-payloads/, so the build does not dirty what rerun-if-changed watches.
    let target_dir = root.join("target").join("guest");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());

    // A clean environment: the host build's RUSTFLAGS, target and wrappers must not leak
    // into the guest build, which takes its flags from guest-payloads/.cargo/config.toml.
    let mut cmd = Command::new(&cargo);
    cmd.env_clear()
        .current_dir(&guest)
        .args(["build", "--release", "--locked", "-p", "hvprobe-guest", "--target", TARGET])
        .env("CARGO_TARGET_DIR", &target_dir);
    for keep in
        ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "CARGO_MAKEFLAGS", "CARGO_NET_OFFLINE"]
    {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run {cargo} to build the guest payloads: {e}"));
    if !status.success() {
        panic!(
            "building the guest payloads failed ({status}); if the error above says the \
             {TARGET} target is missing, run `make setup` (or `rustup target add {TARGET}`)"
        );
    }
    let elf = target_dir.join(TARGET).join("release").join("hvprobe-guest");
    println!("cargo:rustc-env=HVPROBE_GUEST_ELF={}", elf.display());
}
