//! Sleeping and waking on a 32-bit word in shared memory (Linux futex).
//!
//! The futexes are process-shared (no `FUTEX_PRIVATE_FLAG`): the kernel keys them on the memfd page, so a
//! producer in one process wakes a consumer in another.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::thread::futex;

/// Outcome of one [`wait_while_equal`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Woken, or the word no longer held the expected value: re-check the condition.
    Changed,
    /// The timeout elapsed.
    TimedOut,
}

/// Sleeps while `word` holds `expected`, at most `timeout` (`None`: no limit).
///
/// Returns on a wake, on a value change, on a signal, or on timeout; callers re-check their condition in a loop.
pub fn wait_while_equal(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Wake {
    if word.load(Ordering::Acquire) != expected {
        return Wake::Changed;
    }
    let ts = timeout.map(|d| futex::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    match futex::wait(word, futex::Flags::empty(), expected, ts.as_ref()) {
        Err(Errno::TIMEDOUT) => Wake::TimedOut,
        // EAGAIN: value changed before we slept; EINTR: a signal. Both mean "look again".
        _ => Wake::Changed,
    }
}

/// Wakes every process sleeping on `word`. Returns how many were woken.
pub fn wake_all(word: &AtomicU32) -> usize {
    futex::wake(word, futex::Flags::empty(), i32::MAX as u32).unwrap_or(0)
}

/// A deadline derived from an optional timeout, for wait loops.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    pub(crate) fn after(timeout: Option<Duration>) -> Self {
        Self(timeout.map(|t| Instant::now() + t))
    }

    /// Time left, `Some(ZERO)` once expired, `None` for no deadline.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.0.map(|d| d.saturating_duration_since(Instant::now()))
    }

    pub(crate) fn expired(&self) -> bool {
        self.remaining().is_some_and(|r| r.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn returns_at_once_when_value_differs() {
        let w = AtomicU32::new(1);
        assert_eq!(wait_while_equal(&w, 0, Some(Duration::from_secs(5))), Wake::Changed);
    }

    #[test]
    fn times_out() {
        let w = AtomicU32::new(0);
        let t = Instant::now();
        assert_eq!(wait_while_equal(&w, 0, Some(Duration::from_millis(20))), Wake::TimedOut);
        assert!(t.elapsed() >= Duration::from_millis(15));
    }

    #[test]
    fn wakes_another_thread() {
        let w = Arc::new(AtomicU32::new(0));
        let w2 = w.clone();
        let h = std::thread::spawn(move || {
            while w2.load(Ordering::Acquire) == 0 {
                wait_while_equal(&w2, 0, Some(Duration::from_secs(10)));
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        w.store(1, Ordering::Release);
        wake_all(&w);
        h.join().unwrap();
    }
}
