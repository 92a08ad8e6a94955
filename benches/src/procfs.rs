//! What `/proc` says about a process: CPU time to the nanosecond and its anonymous memory.

/// CPU time (user + system) of every thread of `pid` so far, in ns, from `/proc/<pid>/task/*/schedstat`
/// (nanoseconds, where `/proc/<pid>/stat` counts 10 ms ticks).
pub fn cpu_ns(pid: u32) -> std::io::Result<u64> {
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let p = t?.path().join("schedstat");
        // A thread that ended between the listing and the read no longer counts.
        if let Ok(s) = std::fs::read_to_string(p) {
            total += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Ok(total)
}

/// Voluntary + involuntary context switches of every thread of `pid` (wake-ups, roughly).
pub fn context_switches(pid: u32) -> std::io::Result<u64> {
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(s) = std::fs::read_to_string(t?.path().join("status")) else { continue };
        total += s
            .lines()
            .filter(|l| l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(total)
}

/// Resident anonymous memory of `pid` in KiB (`RssAnon`: the heap and stacks, not the shared region's pages).
pub fn rss_anon_kib(pid: u32) -> std::io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .ok_or_else(|| std::io::Error::other("no RssAnon in /proc/<pid>/status"))
}

/// CPU seconds (user + system) of this process so far, threads that have ended included (`getrusage`).
pub fn self_cpu_s() -> f64 {
    // SAFETY: all-zero bytes are a valid `rusage` (plain C data), which `getrusage` fills.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable `rusage` for the duration of the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU seconds (user + system) of `pid` so far, threads that have ended included (`/proc/<pid>/stat`, in clock
/// ticks of 10 ms: for spans of seconds).
pub fn process_cpu_s(pid: u32) -> std::io::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command (in parentheses, which may hold spaces), from the state (field 3) on: utime and
    // stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((field(14) + field(15)) as f64 / hz)
}
