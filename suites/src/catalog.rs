//! The catalogue: every test case declared in the guest payload, read from the ELF's test
//! table without booting anything.

use std::sync::OnceLock;

use hvprobe_harness::{Payload, PayloadError, TestCase};

/// The guest ELF suites/build.rs built.
pub static GUEST_ELF: &[u8] = include_bytes!(env!("HVPROBE_GUEST_ELF"));

/// The parsed payload (parsed once per process).
pub fn payload() -> Result<&'static Payload, &'static PayloadError> {
    static PAYLOAD: OnceLock<Result<Payload, PayloadError>> = OnceLock::new();
    PAYLOAD.get_or_init(|| Payload::parse(GUEST_ELF)).as_ref()
}

/// Does `name` pass the filters? Substring match like libtest's, or exact with `exact`.
/// No filters select everything.
pub fn matches(name: &str, filters: &[String], exact: bool) -> bool {
    filters.is_empty() || filters.iter().any(|f| if exact { name == f } else { name.contains(f.as_str()) })
}

/// The cases that pass the filters, in name order.
pub fn select<'a>(payload: &'a Payload, filters: &[String], exact: bool) -> Vec<&'a TestCase> {
    payload.tests.iter().filter(|t| matches(&t.name, filters, exact)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_parses_and_covers_every_area_and_mode() {
        let p = payload().expect("the built guest ELF is valid");
        assert!(p.tests.len() >= 30, "{} cases", p.tests.len());
        for area in hvprobe_harness::payload::AREAS {
            assert!(p.tests.iter().any(|t| t.area == area), "no case in area {area}");
        }
        for mode in hvprobe_abi::Mode::ALL {
            assert!(p.tests.iter().any(|t| t.mode == mode), "no case in mode {}", mode.name());
        }
        assert!(p.tests.iter().any(|t| t.expects_timeout()), "the watchdog's own case is missing");
    }

    #[test]
    fn filters_work_like_libtest() {
        let names = ["cpu::a::long64", "io::b::real16"];
        assert!(matches(names[0], &[], false));
        assert!(matches(names[0], &["a::".into()], false));
        assert!(!matches(names[1], &["a::".into()], false));
        assert!(matches(names[1], &["io::b::real16".into()], true));
        assert!(!matches(names[1], &["io::b".into()], true));
    }
}
