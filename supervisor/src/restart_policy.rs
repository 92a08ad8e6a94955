//! The restart policy: when a stage that died is started again, or whether the pipeline gives up on it.
//!
//! A pure function of the stage's restart history, the death and the budget: no clock, no process, no lock, so
//! that every case is a unit test. The watcher applies its [`Decision`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::SupervisorConfig;

/// A stage that dies later than this after its start had been working: it is restarted at once.
pub const SETTLED: Duration = Duration::from_secs(1);

/// First backoff of a stage that dies within [`SETTLED`] of its start; it doubles with each such death in a row.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(10);

/// Longest backoff: a stage that keeps dying at start-up is retried once a second (10 ms doubled 7 times is
/// 1.28 s, so the doubling stops at the eighth death in a row).
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The restart budget: at most `max_restarts` restarts within `window` (as an OTP supervisor's intensity and
/// period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Restarts allowed within the window; one more death gives up.
    pub max_restarts: u32,
    /// The window, in seconds (it also names the window in the give-up message).
    pub window_s: u64,
}

impl From<&SupervisorConfig> for Budget {
    fn from(cfg: &SupervisorConfig) -> Self {
        Self { max_restarts: cfg.max_restarts, window_s: cfg.restart_window_s }
    }
}

/// What the policy remembers of a stage's past deaths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// When the budgeted restarts within the window happened (older ones are forgotten at the next death).
    recent: VecDeque<Instant>,
    /// Deaths in a row, each soon after its start: what the backoff grows with.
    quick_deaths: u32,
}

/// One death of a stage, as the policy needs to know it.
#[derive(Debug, Clone, Copy)]
pub struct Death<'a> {
    /// The stage's name, for the give-up message.
    pub stage: &'a str,
    /// How it ended, in words, for the give-up message.
    pub how: &'a str,
    /// When its death was noticed.
    pub at: Instant,
    /// When the process that died was started.
    pub started_at: Instant,
    /// Whether it had said Ready.
    pub was_ready: bool,
    /// Whether the death was asked for (`ringdaq restart`): restarted at once, outside the budget.
    pub requested: bool,
}

/// What to do with a stage that died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start it again now.
    RestartNow,
    /// Start it again at this instant (a backoff).
    RestartAt(Instant),
    /// The budget is spent: stop the pipeline, saying why.
    GiveUp {
        /// The reason, as the pipeline's failure and every acquisition it cuts short report it.
        reason: String,
    },
}

impl History {
    /// The budgeted restarts within the window, as of the last death.
    pub fn recent(&self) -> usize {
        self.recent.len()
    }

    /// Deaths in a row soon after their start.
    pub fn quick_deaths(&self) -> u32 {
        self.quick_deaths
    }

    /// Decides what to do with a stage that died, and records the death.
    ///
    /// A requested restart is immediate and leaves the history alone. Otherwise restarts older than the window
    /// are forgotten; if `max_restarts` remain the pipeline gives up; else the restart counts against the budget
    /// and happens at once for a stage that had been working (ready, and alive for [`SETTLED`]), or after a
    /// backoff that doubles from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`] for one that keeps dying at start-up.
    pub fn on_death(&mut self, death: &Death<'_>, budget: Budget) -> Decision {
        if death.requested {
            return Decision::RestartNow;
        }
        let now = death.at;
        let window = Duration::from_secs(budget.window_s);
        self.recent.retain(|t| now.duration_since(*t) < window);
        if self.recent.len() as u32 >= budget.max_restarts {
            let n = self.recent.len() + 1;
            return Decision::GiveUp {
                reason: format!(
                    "the {} failed {n} times within {} s (last: {}); stopping the pipeline",
                    death.stage, budget.window_s, death.how
                ),
            };
        }
        let settled = death.was_ready && now.duration_since(death.started_at) >= SETTLED;
        self.quick_deaths = if settled { 0 } else { self.quick_deaths + 1 };
        self.recent.push_back(now);
        match backoff(self.quick_deaths) {
            Duration::ZERO => Decision::RestartNow,
            d => Decision::RestartAt(now + d),
        }
    }
}

/// The wait before restarting a stage that died soon after its start `quick_deaths` times in a row.
pub fn backoff(quick_deaths: u32) -> Duration {
    match quick_deaths {
        0 => Duration::ZERO,
        k => (FIRST_BACKOFF * (1 << (k - 1).min(7))).min(MAX_BACKOFF),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Budget = Budget { max_restarts: 3, window_s: 60 };

    /// A base instant with room before it for the start times the cases subtract.
    fn t0() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    fn death(t0: Instant, at_ms: u64, lived_ms: u64, was_ready: bool) -> Death<'static> {
        let at = t0 + Duration::from_millis(at_ms);
        Death {
            stage: "assembler",
            how: "killed by signal 9 (SIGKILL)",
            at,
            started_at: at - Duration::from_millis(lived_ms),
            was_ready,
            requested: false,
        }
    }

    #[test]
    fn backoff_doubles_from_10_ms_to_1_s() {
        let ms: Vec<u128> = (0..=10).map(|k| backoff(k).as_millis()).collect();
        assert_eq!(ms, [0, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_settled_stage_is_restarted_at_once() {
        let t0 = t0();
        let mut h = History::default();
        assert_eq!(h.on_death(&death(t0, 5_000, 2_000, true), BUDGET), Decision::RestartNow);
        assert_eq!((h.recent(), h.quick_deaths()), (1, 0));
    }

    #[test]
    fn a_stage_dying_at_start_up_backs_off_and_settling_resets_it() {
        let t0 = t0();
        let mut h = History::default();
        let budget = Budget { max_restarts: 100, window_s: 60 };
        // Alive long enough but never ready: quick.
        let d = death(t0, 1_000, 5_000, false);
        assert_eq!(h.on_death(&d, budget), Decision::RestartAt(d.at + Duration::from_millis(10)));
        // Ready but died within SETTLED: quick.
        let d = death(t0, 2_000, 999, true);
        assert_eq!(h.on_death(&d, budget), Decision::RestartAt(d.at + Duration::from_millis(20)));
        let d = death(t0, 3_000, 10, false);
        assert_eq!(h.on_death(&d, budget), Decision::RestartAt(d.at + Duration::from_millis(40)));
        assert_eq!(h.quick_deaths(), 3);
        // Ready and alive exactly SETTLED: it had been working.
        assert_eq!(h.on_death(&death(t0, 4_000, 1_000, true), budget), Decision::RestartNow);
        assert_eq!(h.quick_deaths(), 0);
        let d = death(t0, 5_000, 10, false);
        assert_eq!(h.on_death(&d, budget), Decision::RestartAt(d.at + Duration::from_millis(10)));
    }

    #[test]
    fn the_budget_gives_up_with_the_reason() {
        let t0 = t0();
        let mut h = History::default();
        for i in 0..3 {
            assert_eq!(h.on_death(&death(t0, 2_000 * (i + 1), 1_500, true), BUDGET), Decision::RestartNow);
        }
        let d = death(t0, 8_000, 1_500, true);
        assert_eq!(
            h.on_death(&d, BUDGET),
            Decision::GiveUp {
                reason: "the assembler failed 4 times within 60 s (last: killed by signal 9 (SIGKILL)); stopping \
                         the pipeline"
                    .into()
            }
        );
        // Giving up records nothing.
        assert_eq!((h.recent(), h.quick_deaths()), (3, 0));
    }

    #[test]
    fn restarts_older_than_the_window_are_forgotten() {
        let t0 = t0();
        let mut h = History::default();
        for i in 0..3 {
            assert_eq!(h.on_death(&death(t0, 2_000 * (i + 1), 1_500, true), BUDGET), Decision::RestartNow);
        }
        // 60 s after the first restart (at 2 s) it leaves the window; the one at 4 s is 58 s old and stays.
        assert_eq!(h.on_death(&death(t0, 62_000, 1_500, true), BUDGET), Decision::RestartNow);
        assert_eq!(h.recent(), 3);
        assert!(matches!(h.on_death(&death(t0, 62_100, 1_500, true), BUDGET), Decision::GiveUp { .. }));
    }

    #[test]
    fn a_requested_restart_is_immediate_and_outside_the_budget() {
        let t0 = t0();
        let mut h = History::default();
        for i in 0..3 {
            let d = death(t0, 100 * (i + 1), 10, false);
            assert!(matches!(h.on_death(&d, BUDGET), Decision::RestartAt(_)));
        }
        let before = h.clone();
        let d = Death { requested: true, ..death(t0, 400, 10, false) };
        for _ in 0..10 {
            assert_eq!(h.on_death(&d, BUDGET), Decision::RestartNow);
        }
        assert_eq!(h, before);
    }

    #[test]
    fn no_budget_gives_up_at_the_first_death() {
        let t0 = t0();
        let mut h = History::default();
        let budget = Budget { max_restarts: 0, window_s: 10 };
        let Decision::GiveUp { reason } = h.on_death(&death(t0, 5_000, 2_000, true), budget) else {
            panic!("expected to give up")
        };
        assert!(reason.starts_with("the assembler failed 1 times within 10 s"), "{reason}");
    }
}
