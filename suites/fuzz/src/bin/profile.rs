//! AFL++ target: hvprobe_suites::fuzz::profile.
fn main() {
    afl::fuzz!(|data: &[u8]| hvprobe_suites::fuzz::profile(data));
}
