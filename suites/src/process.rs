//! What this process holds and how busy the host is, read from /proc: the soak, hostile and
//! leak tests sample fds and RSS before and after many VMs to show that nothing grows, and
//! every run records the host's noise beside its figures.

/// Open file descriptors of this process.
pub fn open_fds() -> std::io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}

/// Resident set size in KiB (VmRSS of /proc/self/status).
pub fn rss_kib() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no VmRSS line in /proc/self/status"))
}

/// CPU time counters at one moment: the machine's busy and steal time (/proc/stat, in
/// clock ticks), this process's and its waited children's CPU time (/proc/self/stat), its
/// involuntary context switches, and the load average.
struct Times {
    busy: u64,
    steal: u64,
    own: u64,
    involuntary: u64,
    load: f64,
    at: std::time::Instant,
}

fn times() -> std::io::Result<Times> {
    let bad = |what: &str| std::io::Error::other(format!("unexpected {what}"));
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = cpu_ticks(&stat, "cpu").ok_or_else(|| bad("/proc/stat"))?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal, ..] = cpu[..] else {
        return Err(bad("/proc/stat cpu line"));
    };
    let own_stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesized command: state is field 3, utime 14 ... cstime 17.
    let after = own_stat.rsplit_once(") ").ok_or_else(|| bad("/proc/self/stat"))?.1;
    let f: Vec<u64> = after.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    let own = f.get(11..15).ok_or_else(|| bad("/proc/self/stat fields"))?.iter().sum();
    let involuntary = involuntary_switches(libc::RUSAGE_SELF);
    let load = std::fs::read_to_string("/proc/loadavg")?
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("/proc/loadavg"))?;
    Ok(Times {
        busy: user + nice + system + irq + softirq + steal,
        steal,
        own,
        involuntary,
        load,
        at: std::time::Instant::now(),
    })
}

/// Measures how busy the host is over a run: [`NoiseProbe::start`] before it,
/// [`NoiseProbe::finish`] after.
pub struct NoiseProbe(Option<Times>);

impl NoiseProbe {
    pub fn start() -> NoiseProbe {
        NoiseProbe(times().ok())
    }

    /// The host's load since `start`, or None where /proc could not be read.
    pub fn finish(self) -> Option<hvprobe_results::Noise> {
        let (a, b) = (self.0?, times().ok()?);
        // SAFETY: sysconf has no preconditions.
        let (hz, cpus) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_NPROCESSORS_ONLN)) };
        let (hz, cpus) = (hz.max(1) as f64, cpus.max(1) as f64);
        let wall_ticks = b.at.duration_since(a.at).as_secs_f64() * hz * cpus;
        let other = b.busy.saturating_sub(a.busy).saturating_sub(b.own.saturating_sub(a.own)) as f64;
        Some(hvprobe_results::Noise {
            other_cpu_pct: if wall_ticks > 0.0 { (other / wall_ticks * 100.0).clamp(0.0, 100.0) } else { 0.0 },
            steal_ms: b.steal.saturating_sub(a.steal) as f64 * 1e3 / hz,
            involuntary_switches: b.involuntary.saturating_sub(a.involuntary),
            load_start: a.load,
            load_end: b.load,
        })
    }
}

/// One line for a run's report: how busy the rest of the machine was.
pub fn describe(n: &hvprobe_results::Noise) -> String {
    format!("host noise: {n}")
}

/// The steal time of one CPU (the `cpuN` line of /proc/stat), or of all of them, in clock
/// ticks: time the hypervisor under this machine ran something else while the CPU had
/// work. None where /proc/stat cannot be read or has no such line.
pub fn steal_ticks(cpu: Option<usize>) -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let label = cpu.map_or("cpu".to_string(), |c| format!("cpu{c}"));
    steal_in(&stat, &label)
}

/// The steal counter (the eighth) of the /proc/stat line labelled `label`.
fn steal_in(stat: &str, label: &str) -> Option<u64> {
    cpu_ticks(stat, label)?.get(7).copied()
}

/// The clock-tick counters of the /proc/stat line labelled `label` ("cpu" for the whole
/// machine, "cpuN" for one CPU), in the kernel's order: user nice system idle iowait irq
/// softirq steal ... (guest time is inside user).
fn cpu_ticks(stat: &str, label: &str) -> Option<Vec<u64>> {
    stat.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next()? == label).then(|| words.filter_map(|v| v.parse().ok()).collect())
    })
}

/// Involuntary context switches (ru_nivcsw) of `who`: RUSAGE_SELF for the process,
/// RUSAGE_THREAD for the calling thread; 0 if getrusage fails.
pub fn involuntary_switches(who: libc::c_int) -> u64 {
    // SAFETY: rusage is plain data; all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return 0;
    }
    usage.ru_nivcsw as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_read_from_the_cpu_line_asked_for() {
        let stat =
            "cpu  10 0 20 900 1 0 2 77 0 0\ncpu0 5 0 10 450 1 0 1 30 0 0\ncpu1 5 0 10 450 0 0 1 47 0 0\nintr 1\n";
        assert_eq!(steal_in(stat, "cpu"), Some(77));
        assert_eq!(steal_in(stat, "cpu1"), Some(47));
        assert_eq!(steal_in(stat, "cpu2"), None);
        assert!(steal_ticks(None).is_some(), "this machine's /proc/stat has a steal column");
    }

    #[test]
    fn another_busy_process_shows_as_noise() {
        let probe = NoiseProbe::start();
        // Another process spins on one CPU while this one sleeps; it is measured before it
        // is waited for, so its time is not counted as ours.
        let mut spinner = std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(400));
        let n = probe.finish().expect("/proc is readable");
        let _ = spinner.kill();
        let _ = spinner.wait();
        // SAFETY: sysconf has no preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as f64;
        // One busy CPU of `cpus` is 100/cpus percent; allow for the start of the spinner.
        assert!(n.other_cpu_pct >= 40.0 / cpus && n.other_cpu_pct <= 100.0, "{n:?} on {cpus} CPUs");
        assert!(n.load_start >= 0.0 && n.steal_ms >= 0.0);
        assert!(describe(&n).starts_with("host noise: "));
    }
}
