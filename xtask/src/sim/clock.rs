//! The virtual local clock, in true time, driven by the discipline's requests exactly
//! as the clock adjuster applies them to its `simulated` backend
//! (daemons/adjust/src/clock.rs): a slew runs at the policy's rate until the offset
//! is corrected and is replaced by the next one, a step moves the clock at once and
//! cancels the slew, a frequency request sets the correction. The adjuster's policy
//! refusals (policy/clock.toml) are modelled too: a step outside the makestep window
//! or beyond the per-boot budget, a frequency beyond the limit.

use strata_sync::LocalTime;
use strata_sync::discipline::ClockAction;

use super::rng::Rng;

/// The simulated world starts at this Unix time (2025-06-15, far from a leap second).
pub const START_NS: i64 = 1_750_000_000 * 1_000_000_000;

/// The clock adjuster's limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub max_slew_rate_ppm: f64,
    pub max_frequency_ppm: f64,
    /// Steps are accepted only this long after the start (seconds of true time).
    pub step_window_s: f64,
    pub step_budget: u32,
}

impl Limits {
    /// The reviewed policy the adjuster is built with.
    pub fn policy() -> Limits {
        use strata_policy::clock as policy;
        Limits {
            max_slew_rate_ppm: policy::MAX_SLEW_RATE_PPM,
            max_frequency_ppm: policy::MAX_FREQUENCY_PPM,
            step_window_s: policy::STEP_WINDOW_S,
            step_budget: policy::STEP_BUDGET_PER_BOOT,
        }
    }
}

/// What the adjuster did with a request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Applied {
    Done,
    /// Refused by the policy; the clock is unchanged.
    Refused,
    /// Not a clock change (`SetLeap`).
    Ignored,
}

/// The local clock: `error_s` = local reading − true time.
#[derive(Clone, Debug)]
pub struct VirtualClock {
    /// True time since the start, seconds.
    true_s: f64,
    error_s: f64,
    /// The uncorrected oscillator's frequency error, ppm (positive: runs fast); it
    /// wanders as a random walk.
    natural_ppm: f64,
    wander_ppm_per_sqrt_s: f64,
    correction_ppm: f64,
    /// Offset still to be slewed, seconds (positive: the clock gains).
    slew_left_s: f64,
    /// The slew's rate, ppm: the adjuster's rule (`strata_proto::ipc::slew_rate_ppm`).
    slew_rate_ppm: f64,
    limits: Limits,
    pub steps: u32,
    pub refused: u32,
}

impl VirtualClock {
    /// A clock `offset_s` behind true time (source − local, as strata states offsets).
    pub fn new(offset_s: f64, natural_ppm: f64, wander_ppm_per_sqrt_s: f64, limits: Limits) -> VirtualClock {
        VirtualClock {
            true_s: 0.0,
            error_s: -offset_s,
            natural_ppm,
            wander_ppm_per_sqrt_s,
            correction_ppm: 0.0,
            slew_left_s: 0.0,
            slew_rate_ppm: 0.0,
            limits,
            steps: 0,
            refused: 0,
        }
    }

    /// True time since the start, seconds.
    pub fn true_s(&self) -> f64 {
        self.true_s
    }

    /// True time − local clock, seconds: the offset a perfect measurement would give.
    pub fn offset_s(&self) -> f64 {
        -self.error_s
    }

    /// Frequency error left with the correction applied, ppm (positive: runs fast).
    pub fn frequency_error_ppm(&self) -> f64 {
        self.natural_ppm + self.correction_ppm
    }

    #[cfg(test)]
    pub fn slew_left_s(&self) -> f64 {
        self.slew_left_s
    }

    #[cfg(test)]
    pub fn correction_ppm(&self) -> f64 {
        self.correction_ppm
    }

    fn slewed_in_s(&self, seconds: f64) -> f64 {
        let rate = self.slew_rate_ppm * 1e-6;
        self.slew_left_s.abs().min(rate * seconds).copysign(self.slew_left_s)
    }

    /// The clock's error `seconds` of true time from now, nothing applied meanwhile.
    fn error_after_s(&self, seconds: f64) -> f64 {
        self.error_s + self.frequency_error_ppm() * 1e-6 * seconds + self.slewed_in_s(seconds)
    }

    /// What the clock will read `seconds` of true time from now, ns since the epoch.
    pub fn reading_after(&self, seconds: f64) -> LocalTime {
        let local_s = self.true_s + seconds + self.error_after_s(seconds);
        LocalTime(START_NS + (local_s * 1e9).round() as i64)
    }

    pub fn local_time(&self) -> LocalTime {
        self.reading_after(0.0)
    }

    /// Let `seconds` of true time pass; the frequency wanders at the end of the interval.
    pub fn advance(&mut self, seconds: f64, rng: &mut Rng) {
        let slewed_s = self.slewed_in_s(seconds);
        self.error_s = self.error_after_s(seconds);
        self.slew_left_s -= slewed_s;
        self.true_s += seconds;
        if self.wander_ppm_per_sqrt_s > 0.0 {
            self.natural_ppm += self.wander_ppm_per_sqrt_s * seconds.sqrt() * rng.gaussian();
        }
    }

    /// Apply one request now, as the adjuster would.
    pub fn apply(&mut self, action: ClockAction) -> Applied {
        match action {
            ClockAction::Step { offset_s } => {
                if self.steps >= self.limits.step_budget || self.true_s >= self.limits.step_window_s {
                    self.refused += 1;
                    return Applied::Refused;
                }
                self.error_s += offset_s;
                self.slew_left_s = 0.0;
                self.steps += 1;
            }
            ClockAction::Slew { offset_s } => {
                self.slew_left_s = offset_s;
                self.slew_rate_ppm = strata_proto::ipc::slew_rate_ppm(offset_s, self.limits.max_slew_rate_ppm);
            }
            ClockAction::SetFrequency { ppm } => {
                if ppm.abs() > self.limits.max_frequency_ppm {
                    self.refused += 1;
                    return Applied::Refused;
                }
                self.correction_ppm = ppm;
            }
            ClockAction::SetLeap(_) => return Applied::Ignored,
        }
        Applied::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(offset_s: f64, natural_ppm: f64) -> VirtualClock {
        VirtualClock::new(offset_s, natural_ppm, 0.0, Limits::policy())
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn the_policy_is_chronys_maxslewrate_and_the_kernels_frequency_range() {
        let limits = Limits::policy();
        assert!((limits.max_slew_rate_ppm - 1e6 / 12.0).abs() < 1e-3);
        assert_eq!(limits.max_frequency_ppm, 500.0);
    }

    #[test]
    fn a_slew_corrects_exactly_the_offset_over_at_least_a_second_then_stops() {
        // The adjuster's rule: 1 ms is slewed over the shortest slew, a second.
        let mut rng = Rng::new(1);
        let mut c = clock(0.0, 0.0);
        assert_eq!(c.apply(ClockAction::Slew { offset_s: 0.001 }), Applied::Done);
        c.advance(0.5, &mut rng);
        assert!(close(c.offset_s(), -0.0005), "{}", c.offset_s());
        c.advance(0.5, &mut rng);
        assert!(close(c.offset_s(), -0.001));
        assert_eq!(c.slew_left_s(), 0.0);
        c.advance(8.0, &mut rng);
        assert!(close(c.offset_s(), -0.001), "the slew stopped when done");
        // Backwards alike; reading ahead agrees with advancing.
        let mut back = clock(0.0, 0.0);
        back.apply(ClockAction::Slew { offset_s: -0.001 });
        let ahead = back.reading_after(5.0);
        back.advance(5.0, &mut rng);
        assert_eq!(back.local_time(), ahead);
        assert!(close(back.offset_s(), 0.001));
    }

    #[test]
    fn a_new_slew_replaces_the_old_and_zero_cancels() {
        let mut rng = Rng::new(1);
        let mut c = clock(0.0, 0.0);
        c.apply(ClockAction::Slew { offset_s: 0.010 });
        c.advance(0.1, &mut rng); // 1 ms done, at 10 000 ppm
        c.apply(ClockAction::Slew { offset_s: -0.001 }); // not "9 ms − 1 ms": replaced
        c.advance(10.0, &mut rng);
        assert!(close(c.offset_s(), -0.001 + 0.001), "{}", c.offset_s());
        c.apply(ClockAction::Slew { offset_s: 0.004 });
        c.advance(0.25, &mut rng); // 1 ms done, at 4 000 ppm
        c.apply(ClockAction::Slew { offset_s: 0.0 });
        c.advance(10.0, &mut rng);
        assert!(close(c.offset_s(), -0.001));
    }

    #[test]
    fn a_step_moves_the_clock_and_cancels_the_slew() {
        // The adjuster's test: 0.5 s ahead (offset −0.5), 30 ppm fast, a 1 s slew at
        // the policy's rate, at 1 s a −0.5 s step: that rate and 30 ppm ahead, no
        // more slewing.
        let mut rng = Rng::new(1);
        let rate = Limits::policy().max_slew_rate_ppm * 1e-6;
        let mut c = clock(-0.5, 30.0);
        c.apply(ClockAction::Slew { offset_s: 1.0 });
        c.advance(1.0, &mut rng);
        assert_eq!(c.apply(ClockAction::Step { offset_s: -0.5 }), Applied::Done);
        assert!(close(c.offset_s(), -(rate + 30e-6)), "{}", c.offset_s());
        c.advance(1.0, &mut rng);
        assert!(close(c.offset_s(), -(rate + 60e-6)));
        assert_eq!(c.steps, 1);
    }

    #[test]
    fn the_frequency_correction_is_set_not_added() {
        let mut rng = Rng::new(1);
        let mut c = clock(0.0, -30.0);
        c.apply(ClockAction::SetFrequency { ppm: 20.0 });
        c.apply(ClockAction::SetFrequency { ppm: 25.0 });
        assert_eq!(c.frequency_error_ppm(), -5.0);
        c.advance(100.0, &mut rng);
        assert!(close(c.offset_s(), 500e-6));
        assert_eq!(c.apply(ClockAction::SetLeap(strata_proto::ntp::LeapIndicator::InsertSecond)), Applied::Ignored);
    }

    #[test]
    fn the_policy_refuses_late_steps_spent_budgets_and_big_frequencies() {
        let mut rng = Rng::new(1);
        let mut c = clock(0.0, 0.0);
        assert_eq!(c.apply(ClockAction::SetFrequency { ppm: 500.1 }), Applied::Refused);
        assert_eq!(c.correction_ppm(), 0.0);
        for _ in 0..4 {
            assert_eq!(c.apply(ClockAction::Step { offset_s: 1.0 }), Applied::Done);
        }
        assert_eq!(c.apply(ClockAction::Step { offset_s: 1.0 }), Applied::Refused);
        let mut late = clock(0.0, 0.0);
        late.advance(600.0, &mut rng);
        assert_eq!(late.apply(ClockAction::Step { offset_s: 1.0 }), Applied::Refused);
        assert_eq!((late.steps, late.refused), (0, 1));
        assert!(close(late.offset_s(), 0.0));
    }

    #[test]
    fn frequency_wanders_as_a_seeded_random_walk() {
        let walk = |seed| {
            let mut rng = Rng::new(seed);
            let mut c = VirtualClock::new(0.0, 0.0, 0.01, Limits::policy());
            for _ in 0..10_000 {
                c.advance(64.0, &mut rng);
            }
            c.frequency_error_ppm()
        };
        assert_eq!(walk(3), walk(3));
        // 10 000 steps of 0.01·√64 ppm: σ = 8 ppm; a draw is within a few σ.
        assert!(walk(3).abs() < 40.0 && walk(3) != 0.0);
    }
}
