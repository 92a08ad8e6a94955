//! The pipeline's counters when an acquisition's file was opened, kept beside it in
//! `<path>.counters.partial`, so that the sidecar reports the acquisition's own counts (the differences over
//! the acquisition), also after a writer restart, rather than the pipeline's totals since it started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::format::with_suffix;

/// Where the counters at the start of an acquisition into `path` are kept while it is written.
pub(crate) fn path(output: &Path) -> PathBuf {
    with_suffix(output, ".counters.partial")
}

/// Records `counters` as the start of the acquisition into `output`.
pub(crate) fn save(output: &Path, counters: &BTreeMap<String, u64>) -> std::io::Result<()> {
    let json = serde_json::to_vec(counters).map_err(std::io::Error::other)?;
    std::fs::write(path(output), json)
}

/// The counters over the acquisition into `output`: `now` less those at its start. Without a recorded start
/// (a writer killed between opening the file and recording it), the totals.
pub(crate) fn since_start(output: &Path, now: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let start: BTreeMap<String, u64> =
        std::fs::read(path(output)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    // Per-process counts (allocations) restart with a restarted stage: a smaller value is not negative.
    now.into_iter().map(|(k, v)| (k.clone(), v.saturating_sub(start.get(&k).copied().unwrap_or(0)))).collect()
}

/// Removes the record (the acquisition ended).
pub(crate) fn remove(output: &Path) {
    let _ = std::fs::remove_file(path(output));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sidecar_counts_the_acquisition_not_the_pipeline() {
        let dir = std::env::temp_dir().join(format!("ringdaq-baseline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("run.npy");
        let at = |pairs: &[(&str, u64)]| pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>();
        // No recorded start: the totals.
        assert_eq!(since_start(&out, at(&[("receiver.datagrams", 5)])), at(&[("receiver.datagrams", 5)]));
        save(&out, &at(&[("receiver.datagrams", 1000), ("writer.allocations", 50)])).unwrap();
        let got =
            since_start(&out, at(&[("receiver.datagrams", 1256), ("writer.allocations", 7), ("writer.frames", 1)]));
        assert_eq!(got, at(&[("receiver.datagrams", 256), ("writer.allocations", 0), ("writer.frames", 1)]));
        remove(&out);
        assert!(!path(&out).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
