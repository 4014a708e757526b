//! AFL++ target: hvprobe_suites::fuzz::snapshot.
fn main() {
    afl::fuzz!(|data: &[u8]| hvprobe_suites::fuzz::snapshot(data));
}
