//! When a dead child comes back: the restart policy as a state machine that is
//! told the time, so that it is tested without processes.
//!
//! A child that had been ready for its probation was healthy: it comes back at
//! once and its back-off starts over, so a kill costs the engine one start-up
//! (tens of ms, which the NTP sockets' receive buffers cover), not seconds. Only
//! a death during probation is a crash loop: that one waits a doubling back-off
//! and is charged to the budget, which stops a process that cannot live. A
//! healthy process is never charged, so nothing that kills it now and then (a
//! neighbour's accusation, an operator, a rare packet of death) can use the
//! budget up and take the appliance down.

use std::collections::VecDeque;
use std::time::Instant;

use strata_config::RestartPolicy;

/// What follows a death.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    RespawnAt(Instant),
    /// The budget is spent: the process stays down and an alarm is raised.
    GiveUp,
}

/// One role's restart history.
#[derive(Debug, Default)]
pub(crate) struct Restarts {
    /// Deaths during probation inside the budget's window, oldest first.
    crash_loop: VecDeque<Instant>,
    /// Deaths during probation since the last healthy run: the back-off's exponent.
    in_a_row: u32,
    /// Every re-spawn, healthy or not (status.json's `restarts`).
    pub total: u32,
}

impl Restarts {
    /// The child died at `now`; it had been ready since `ready_at` (never, if it
    /// died starting).
    pub fn on_death(&mut self, policy: &RestartPolicy, now: Instant, ready_at: Option<Instant>) -> Decision {
        let healthy = ready_at.is_some_and(|t| now.saturating_duration_since(t) >= policy.probation());
        if healthy {
            self.in_a_row = 0;
            self.total += 1;
            return Decision::RespawnAt(now);
        }
        while self.crash_loop.front().is_some_and(|&t| now.saturating_duration_since(t) >= policy.window()) {
            self.crash_loop.pop_front();
        }
        if self.crash_loop.len() >= policy.budget.0 as usize {
            return Decision::GiveUp;
        }
        self.crash_loop.push_back(now);
        self.in_a_row += 1;
        self.total += 1;
        Decision::RespawnAt(now + policy.backoff(self.in_a_row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The shipped defaults: 50 ms doubling to 10 s, 10 crash-loop deaths in 60 s,
    /// a 2 s probation.
    fn policy() -> RestartPolicy {
        RestartPolicy::default()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Kill a process that had served for `served` every time, `n` times; the
    /// delay of each re-spawn.
    fn kills(restarts: &mut Restarts, t0: Instant, served: Duration, n: usize) -> Vec<Option<Duration>> {
        let mut now = t0;
        (0..n)
            .map(|_| {
                let ready_at = now;
                now += served;
                match restarts.on_death(&policy(), now, Some(ready_at)) {
                    Decision::RespawnAt(at) => {
                        let delay = at - now;
                        now = at;
                        Some(delay)
                    }
                    Decision::GiveUp => None,
                }
            })
            .collect()
    }

    #[test]
    fn a_process_that_served_past_its_probation_comes_back_at_once_every_time() {
        // The measurement: the engine killed every 7–12 s (here every 3 s,
        // 100 times in 5 minutes, ten times the budget) keeps coming back at once.
        let mut restarts = Restarts::default();
        let delays = kills(&mut restarts, Instant::now(), ms(3_000), 100);
        assert!(delays.iter().all(|d| *d == Some(Duration::ZERO)), "{delays:?}");
        assert_eq!(restarts.total, 100);
    }

    #[test]
    fn a_crash_loop_backs_off_doubling_and_stops_at_the_budget() {
        let mut restarts = Restarts::default();
        let delays = kills(&mut restarts, Instant::now(), ms(10), 12);
        let expected: Vec<Option<Duration>> = [50, 100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
            .into_iter()
            .map(|n| Some(ms(n)))
            .chain([None, None])
            .collect();
        assert_eq!(delays, expected);
        assert_eq!(restarts.total, 10);
    }

    #[test]
    fn one_healthy_run_resets_the_back_off_but_not_the_crash_loops_window() {
        let mut restarts = Restarts::default();
        let t0 = Instant::now();
        let first = kills(&mut restarts, t0, ms(10), 3);
        assert_eq!(first, [Some(ms(50)), Some(ms(100)), Some(ms(200))]);
        let now = t0 + ms(400);
        assert_eq!(restarts.on_death(&policy(), now + ms(5_000), Some(now)), Decision::RespawnAt(now + ms(5_000)));
        // Dying young again starts the back-off over.
        let then = now + ms(5_000);
        assert_eq!(restarts.on_death(&policy(), then + ms(10), Some(then)), Decision::RespawnAt(then + ms(60)));
        assert_eq!(restarts.crash_loop.len(), 4);
    }

    #[test]
    fn crash_loop_deaths_older_than_the_window_are_forgiven() {
        let mut restarts = Restarts::default();
        let t0 = Instant::now();
        for i in 0..10 {
            let at = t0 + ms(i * 100);
            assert!(matches!(restarts.on_death(&policy(), at, None), Decision::RespawnAt(_)));
        }
        assert_eq!(restarts.on_death(&policy(), t0 + ms(1_500), None), Decision::GiveUp);
        assert!(matches!(restarts.on_death(&policy(), t0 + ms(60_000), None), Decision::RespawnAt(_)));
    }

    #[test]
    fn a_death_before_ready_is_never_healthy() {
        let mut restarts = Restarts::default();
        let t0 = Instant::now();
        assert_eq!(restarts.on_death(&policy(), t0 + ms(60_000), None), Decision::RespawnAt(t0 + ms(60_050)));
    }
}
