//! The signature of a failure: what defines it, and nothing live.
//!
//! Two runs of the same case on the same backend must give the same signature whatever
//! the uptime, the TSC, the load, the order of cases or the host CPU model within a
//! vendor. A failure's facts mix the defining with the live: a guest check's message may
//! carry a TSC reading or an address beside the vector it was about. The rule that
//! separates them is written once, here:
//!
//! - the end (`verdict`, `timeout`, `internal_error`, ...) defines;
//! - the instruction bytes define: where a fault was raised, what the emulator refused,
//!   or where a vCPU that never left KVM_RUN was found (a hypercall that hangs);
//! - in a guest message, a number of five or more hex digits (or more than four decimal
//!   ones) is live: addresses, RIPs, TSC readings, timestamps, host CPUID words. Shorter
//!   numbers define: vectors, error codes, selectors, counts, small flag words. They are
//!   kept as they are and a live one becomes `#`.
//!
//! Expectation profiles name their messages without live numbers (the profile reader
//! refuses one that has any), so a profile entry and `compare` agree on what a failure is.

use crate::Failure;

/// Placeholder for a live number in a normalized message.
pub const LIVE: &str = "#";

impl Failure {
    /// The failure's signature as one line: `end=...`, then `insn=...` and `check=...`
    /// where they define it (see the module documentation).
    pub fn signature(&self) -> String {
        let mut s = format!("end={}", self.end);
        if let Some(b) = &self.insn_bytes {
            s += &format!(" insn={b}");
        }
        if let Some(m) = &self.message {
            s += &format!(" check={}", normalize_message(m));
        }
        s
    }
}

/// `message` with every live number replaced by [`LIVE`].
pub fn normalize_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphanumeric()) {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        let token = &rest[..end];
        out.push_str(if is_live_number(token) { LIVE } else { token });
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Whether `token` (a run of letters, digits and underscores) is a live number: `0x`
/// followed by five or more hex digits, five or more decimal digits, or a bare run of
/// five or more hex digits with at least one decimal digit (Rust's `{:x?}` prints hex
/// without a prefix).
pub fn is_live_number(token: &str) -> bool {
    let digits = token.strip_prefix("0x").unwrap_or(token).replace('_', "");
    let all_hex = !digits.is_empty() && digits.chars().all(|c| c.is_ascii_hexdigit());
    let has_decimal = digits.chars().any(|c| c.is_ascii_digit());
    all_hex && has_decimal && digits.len() >= 5
}

/// Whether `text` holds a live number anywhere (see [`is_live_number`]).
pub fn has_live_number(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).any(is_live_number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(end: &str, insn: Option<&str>, message: Option<&str>) -> Failure {
        Failure {
            end: end.into(),
            description: "at rip 0x10416e".into(),
            insn_bytes: insn.map(Into::into),
            message: message.map(Into::into),
            file: Some("cpu.rs".into()),
            line: Some(7),
            expected: Some(0x1_0000_0000),
            actual: Some(7),
            cpu: Some("rip 0x10416e".into()),
        }
    }

    #[test]
    fn live_numbers_are_masked_and_defining_ones_kept() {
        assert_eq!(
            normalize_message("check_eq failed: e.rip == armed_rip() + 1: actual 116548, expected 116549. trap"),
            "check_eq failed: e.rip == armed_rip() + 1: actual #, expected #. trap"
        );
        assert_eq!(
            normalize_message("wrong vector (#GP): actual d, expected 6 error code 0x0 from CPL 3"),
            "wrong vector (#GP): actual d, expected 6 error code 0x0 from CPL 3"
        );
        assert_eq!(normalize_message("RDTSC 0x1_0000_0123 below 0x10000000000"), "RDTSC # below #");
        assert_eq!(
            normalize_message("leaf 0x1.0 ecx 0xf7f83203 selector 0x2b, 65535 and 123456"),
            "leaf 0x1.0 ecx # selector 0x2b, # and #"
        );
        // Words made of hex letters alone are words.
        assert_eq!(normalize_message("deadbeef faced"), "deadbeef faced");
        assert!(has_live_number("at 0x100000") && !has_live_number("vector 13, error code 0xfffc"));
    }

    #[test]
    fn a_signature_leaves_out_every_live_fact() {
        let a = failure("verdict", Some("0f 01 c1"), Some("TSC moved by 0x2bd3f6a9 only"));
        let mut b = a.clone();
        b.message = Some("TSC moved by 0x3517c002 only".into());
        b.description = "elsewhere".into();
        b.cpu = None;
        b.expected = Some(9);
        assert_eq!(a.signature(), b.signature());
        assert_eq!(a.signature(), "end=verdict insn=0f 01 c1 check=TSC moved by # only");
        let t = failure("timeout", Some("0f 01 c1"), None);
        assert_eq!(t.signature(), "end=timeout insn=0f 01 c1");
        let mut other = a.clone();
        other.insn_bytes = Some("cc".into());
        assert_ne!(a.signature(), other.signature(), "the instruction defines a fault");
    }
}
