//! AFL++ target: hvprobe_suites::fuzz::protocol.
fn main() {
    afl::fuzz!(|data: &[u8]| hvprobe_suites::fuzz::protocol(data));
}
