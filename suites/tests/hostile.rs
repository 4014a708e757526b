//! The `hostile` area as a whole: every guest that tries to exhaust or confuse the host ends
//! with the outcome its case names, within its limit plus 0.1 s, and afterwards the host's
//! open file descriptors and resident memory are where they were. Its own test binary, so
//! that no other test opens fds or allocates meanwhile.

use std::time::Duration;

use hvprobe_harness::Kvm;
use hvprobe_suites::profile::{Profile, ProfileHost};
use hvprobe_suites::{Context, catalog, run_case, runner};

fn open_fds() -> usize {
    hvprobe_suites::process::open_fds().unwrap()
}

fn rss_kib() -> u64 {
    hvprobe_suites::process::rss_kib().unwrap()
}

/// What a hostile case may take beyond its limit: tearing the VM down and judging.
const GRACE: Duration = Duration::from_millis(100);

#[test]
fn hostile_guests_end_as_expected_within_their_limits_and_leave_nothing() {
    // A case that restores in a second process would need this binary to serve it.
    hvprobe_suites::migrate::serve_if_asked();
    let Ok(kvm) = Kvm::open() else {
        eprintln!("skipped: /dev/kvm is unusable");
        return;
    };
    let payload = catalog::payload().unwrap();
    let profile = Profile::builtin(&ProfileHost::detect(), payload).unwrap();
    let ctx = Context {
        kvm,
        profile,
        default_timeout: runner::DEFAULT_TIMEOUT,
        seed: 0,
        only_case: None,
        tsc_start: None,
        stop: None,
    };
    // The console flood is an io case (80 KiB against the 64 KiB capture limit).
    let cases: Vec<_> =
        payload.tests.iter().filter(|c| c.area == "hostile" || c.name == "io::console_bulk::long64").collect();
    assert!(cases.len() >= 10, "the hostile set has only {} cases", cases.len());
    let run_all = |round: &str| {
        for case in &cases {
            let r = run_case(&ctx, case);
            assert!(!r.fails_run(), "{round}: {} ended {:?}: {:?}", case.name, r.outcome, r.reason);
            let limit = runner::timeout_of(case, ctx.default_timeout);
            let took = Duration::from_secs_f64(r.duration_ms / 1e3);
            assert!(took <= limit + GRACE, "{round}: {} took {took:?}, its limit is {limit:?}", case.name);
        }
    };
    // Warm-up: allocator pools, the watchdog's signal handler, lazily opened files.
    run_all("warm-up");
    let (fds, rss) = (open_fds(), rss_kib());
    for round in 0..2 {
        run_all(&format!("round {round}"));
        let (fds_now, rss_now) = (open_fds(), rss_kib());
        eprintln!("hostile round {round}: fds {fds_now} (before {fds}), RSS {rss_now} KiB (before {rss} KiB)");
        assert_eq!(fds_now, fds, "open fds after round {round} of the hostile set");
        assert!(rss_now <= rss + 4 * 1024, "RSS {rss_now} KiB after round {round}, {rss} KiB before");
    }
}
