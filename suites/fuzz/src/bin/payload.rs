//! AFL++ target: hvprobe_suites::fuzz::payload.
fn main() {
    afl::fuzz!(|data: &[u8]| hvprobe_suites::fuzz::payload(data));
}
