//! The adjuster's policy (`policy/clock.toml`, compiled in), as a decision on each
//! clock request: apply this change, refuse it with a reason, or treat the sender
//! as broken. Sans I/O: the caller passes the time and carries the verdict out, so
//! the appliance's adjuster and `strata-simnode` enforce the same rules.

use strata_policy::clock as limits;
use strata_proto::ipc::{ClockRequestKind, EngineToAdjuster};

use crate::clock::Change;

/// What the policy says of one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Allowed: apply this change to the backend.
    Apply(Change),
    /// Not allowed; the clock is not touched.
    Refuse(String),
}

/// A request no honest engine sends.
#[derive(Clone, Debug, PartialEq)]
pub enum Breach {
    /// A malformed field (not finite): the sender is dropped as a protocol violation.
    Violation(String),
    /// A correction beyond the panic threshold: something this wrong needs a person;
    /// the adjuster exits and is not re-spawned.
    Panic(String),
}

/// The state the policy keeps: the step budget and window, and an operator's
/// one-shot authorisation.
#[derive(Clone, Debug, PartialEq)]
pub struct ClockPolicy {
    pub steps_left: u32,
    /// Automatic steps are allowed until this instant of the boot clock (ns; the
    /// appliance passes CLOCK_BOOTTIME, the simulator its monotonic clock), never
    /// the clock being adjusted: a backward step must not reopen the window.
    pub automatic_steps_until_boot_ns: i64,
    pub operator_step_authorised: bool,
    /// The rate slews run at, ppm: the configured `maxslewrate`, at most the policy's.
    pub slew_rate_ppm: f64,
}

impl ClockPolicy {
    /// `slew_rate_ppm` is held to (0, the policy's rate]; anything else is the policy's.
    pub fn new(steps_left: u32, automatic_steps_until_boot_ns: i64, slew_rate_ppm: f64) -> ClockPolicy {
        let slew_rate_ppm =
            if slew_rate_ppm > 0.0 { slew_rate_ppm.min(limits::MAX_SLEW_RATE_PPM) } else { limits::MAX_SLEW_RATE_PPM };
        ClockPolicy {
            steps_left: steps_left.min(limits::STEP_BUDGET_PER_BOOT),
            automatic_steps_until_boot_ns,
            operator_step_authorised: false,
            slew_rate_ppm,
        }
    }

    pub fn automatic_steps_allowed(&self, boot_ns: i64) -> bool {
        boot_ns < self.automatic_steps_until_boot_ns
    }

    /// The verdict on a clock change (`Slew`, `SetFrequency`, `Step`) at `boot_ns`
    /// (the boot clock); `None` for the requests that change no clock.
    pub fn check(
        &self,
        request: &EngineToAdjuster,
        boot_ns: i64,
    ) -> Option<Result<(ClockRequestKind, Verdict), Breach>> {
        let finite = |what: &str, v: f64| {
            if v.is_finite() { Ok(()) } else { Err(Breach::Violation(format!("{what} is not a finite number: {v}"))) }
        };
        let beyond_panic = |what: &str, offset_s: f64| {
            if offset_s.abs() > limits::PANIC_THRESHOLD_S {
                Err(Breach::Panic(format!(
                    "{what} of {offset_s} s is beyond the panic threshold of {} s",
                    limits::PANIC_THRESHOLD_S
                )))
            } else {
                Ok(())
            }
        };
        let verdict = match *request {
            EngineToAdjuster::Hello(_) | EngineToAdjuster::ReadStatus | EngineToAdjuster::SetLeap(_) => return None,
            EngineToAdjuster::Slew { offset_s } => {
                finite("slew offset", offset_s).and_then(|()| beyond_panic("a slew", offset_s)).map(|()| {
                    let change = Change::Slew { offset_s, rate_ppm: self.slew_rate_ppm };
                    (ClockRequestKind::Slew, Verdict::Apply(change))
                })
            }
            EngineToAdjuster::SetFrequency { ppm } => finite("frequency", ppm).map(|()| {
                let verdict = if ppm.abs() > limits::MAX_FREQUENCY_PPM {
                    Verdict::Refuse(format!(
                        "frequency {ppm} ppm is beyond the policy's {} ppm",
                        limits::MAX_FREQUENCY_PPM
                    ))
                } else {
                    Verdict::Apply(Change::Frequency { ppm })
                };
                (ClockRequestKind::SetFrequency, verdict)
            }),
            EngineToAdjuster::Step { offset_s } => {
                finite("step offset", offset_s).and_then(|()| beyond_panic("a step", offset_s)).map(|()| {
                    let verdict = if self.steps_left == 0 {
                        Verdict::Refuse("the step budget of this boot is used up".into())
                    } else if !self.automatic_steps_allowed(boot_ns) && !self.operator_step_authorised {
                        Verdict::Refuse("outside the makestep window and not authorised by an operator".into())
                    } else {
                        Verdict::Apply(Change::Step { offset_s })
                    };
                    (ClockRequestKind::Step, verdict)
                })
            }
        };
        Some(verdict)
    }

    /// The backend carried `change` out.
    pub fn applied(&mut self, change: Change) {
        if let Change::Step { .. } = change {
            self.steps_left -= 1;
            self.operator_step_authorised = false;
        }
    }

    /// `stratactl makestep`: the next step is allowed outside the window, once.
    pub fn authorise_operator_step(&mut self) -> Result<(), String> {
        if self.steps_left == 0 {
            return Err("the step budget of this boot is used up".into());
        }
        self.operator_step_authorised = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000_000_000_000;

    fn verdict(policy: &ClockPolicy, request: EngineToAdjuster) -> Verdict {
        policy.check(&request, NOW).unwrap().unwrap().1
    }

    #[test]
    fn a_step_needs_the_window_or_an_operator_and_budget() {
        let mut policy = ClockPolicy::new(3, NOW + 1, limits::MAX_SLEW_RATE_PPM);
        assert!(matches!(verdict(&policy, EngineToAdjuster::Step { offset_s: 2.0 }), Verdict::Apply(_)));
        policy.automatic_steps_until_boot_ns = NOW;
        assert!(matches!(verdict(&policy, EngineToAdjuster::Step { offset_s: 2.0 }), Verdict::Refuse(_)));
        policy.authorise_operator_step().unwrap();
        let Verdict::Apply(change) = verdict(&policy, EngineToAdjuster::Step { offset_s: 2.0 }) else { panic!() };
        policy.applied(change);
        assert_eq!((policy.steps_left, policy.operator_step_authorised), (2, false));
        policy.steps_left = 0;
        assert!(policy.authorise_operator_step().is_err());
        assert!(matches!(verdict(&policy, EngineToAdjuster::Step { offset_s: 2.0 }), Verdict::Refuse(_)));
    }

    #[test]
    fn frequencies_beyond_the_policy_are_refused_and_nonsense_is_a_breach() {
        let policy = ClockPolicy::new(3, NOW + 1, limits::MAX_SLEW_RATE_PPM);
        let over = limits::MAX_FREQUENCY_PPM + 1.0;
        assert!(matches!(verdict(&policy, EngineToAdjuster::SetFrequency { ppm: over }), Verdict::Refuse(_)));
        assert!(matches!(
            policy.check(&EngineToAdjuster::Slew { offset_s: f64::NAN }, NOW),
            Some(Err(Breach::Violation(_)))
        ));
        let far = limits::PANIC_THRESHOLD_S * 2.0;
        assert!(matches!(policy.check(&EngineToAdjuster::Step { offset_s: far }, NOW), Some(Err(Breach::Panic(_)))));
        assert_eq!(policy.check(&EngineToAdjuster::ReadStatus, NOW), None);
    }

    #[test]
    fn slews_run_at_the_configured_maxslewrate_never_above_the_policys() {
        let rate = |configured_ppm: f64| match verdict(
            &ClockPolicy::new(3, NOW + 1, configured_ppm),
            EngineToAdjuster::Slew { offset_s: 0.5 },
        ) {
            Verdict::Apply(Change::Slew { rate_ppm, .. }) => rate_ppm,
            other => panic!("{other:?}"),
        };
        assert_eq!(rate(1000.0), 1000.0);
        assert_eq!(rate(1e6), limits::MAX_SLEW_RATE_PPM);
        assert_eq!(rate(f64::NAN), limits::MAX_SLEW_RATE_PPM);
        assert_eq!(rate(-5.0), limits::MAX_SLEW_RATE_PPM);
    }
}
