//! AFL++ target: hvprobe_suites::fuzz::results.
fn main() {
    afl::fuzz!(|data: &[u8]| hvprobe_suites::fuzz::results(data));
}
