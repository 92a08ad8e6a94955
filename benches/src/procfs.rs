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
