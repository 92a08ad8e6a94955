//! The progress bar of `ringdaq run` at a terminal: one bar per acquisition, from armed to its ending, which
//! stays on screen as a line (the routine log lines go to the log file meanwhile).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use shm_protocol::messages::AcquisitionStatus;
use shm_protocol::pipeline::EndReason;

use crate::daemon::Supervisor;

/// How often the bar is updated: 10 times a second reads as live and costs nothing next to the pipeline.
const TICK: Duration = Duration::from_millis(100);

/// The newest acquisition whose ending line is on screen (0: none).
static SHOWN: AtomicU64 = AtomicU64::new(0);

/// Waits (at most `timeout`) until the ending of acquisition `id` is on screen, so that what is printed next
/// comes after it.
pub fn wait_shown(id: u64, timeout: Duration) {
    let t = std::time::Instant::now();
    while SHOWN.load(Ordering::Acquire) < id && t.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Shows the acquisitions' progress until the pipeline shuts down.
pub fn show(sup: &Supervisor) {
    let style = ProgressStyle::with_template("acquisition {prefix} {msg:8} [{bar:40}] {pos}/{len} frames, {eta} left")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    // The acquisition on screen, and the newest that ended (it is not shown again).
    let mut bar: Option<(u64, ProgressBar)> = None;
    let mut ended = 0;
    while !sup.shutting_down() {
        let newest = sup.status().acquisitions.into_iter().filter(|a| a.id > ended).max_by_key(|a| a.id);
        if let Some(a) = newest {
            if bar.as_ref().is_none_or(|(id, _)| *id != a.id) {
                if let Some((_, old)) = bar.take() {
                    old.abandon();
                }
                let b = if a.continuous {
                    // Until stopped: no length to fill, a count.
                    ProgressBar::new_spinner().with_style(
                        ProgressStyle::with_template("acquisition {prefix} {msg:8} {pos} frames, until stopped")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    )
                } else {
                    ProgressBar::new(a.frames).with_style(style.clone())
                }
                .with_prefix(a.id.to_string());
                bar = Some((a.id, b));
            }
            if let Some((_, b)) = &bar {
                b.set_position(a.written);
                b.set_message(a.state.to_string());
                if a.state.is_over() {
                    if let Ok(done) = ProgressStyle::with_template("acquisition {prefix} {msg}") {
                        b.set_style(done);
                    }
                    b.abandon_with_message(ending(&a));
                    ended = a.id;
                    SHOWN.store(a.id, Ordering::Release);
                    bar = None;
                }
            }
        }
        std::thread::sleep(TICK);
    }
    if let Some((_, b)) = bar {
        b.abandon();
    }
}

/// The line an ended acquisition leaves on screen.
fn ending(a: &AcquisitionStatus) -> String {
    let frames = format!("{} frames ({} complete) in {}", a.written, a.complete, a.path);
    match (&a.error, a.ended, &a.reason) {
        (Some(e), ..) => format!("failed: {e}"),
        (None, Some(r), Some(why)) if r != EndReason::Complete => format!("{} ({r}): {frames}; {why}", a.state),
        _ => format!("{}: {frames}", a.state),
    }
}
