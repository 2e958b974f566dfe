//! strata-adjust: the clock adjuster, the only process that holds CAP_SYS_TIME.
//!
//! It accepts a closed set of requests — from the engine on one channel, from the
//! control plane (operator-authorised) on another — checks every field, and applies
//! what its own policy allows (`policy/clock.toml`, compiled in) to the clock backend.
//! It opens no file and no socket: its seccomp policy has no such calls; the
//! simulated clock's model file is opened by the supervisor and handed over.
//!
//! - a non-finite number is a protocol violation: the peer is dropped;
//! - a correction beyond the panic threshold: refused, and the adjuster exits with
//!   the do-not-respawn status (the supervisor raises an alarm);
//! - a frequency beyond the policy, a step without budget, or an automatic step
//!   outside the makestep window and not authorised by an operator: refused;
//! - a slew is applied at the policy's maximum rate, never faster.
#![forbid(unsafe_code)]

pub mod clock;
pub mod policy;

use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strata_policy::clock as limits;
use strata_process::child::{self, Outbox, Service, Violation, decode_peer};
use strata_proto::ipc::{
    AdjusterToControl, AdjusterToEngine, ChildToSupervisor, ClockRequestKind, ClockStatus, ControlToAdjuster,
    EXIT_DO_NOT_RESPAWN, EngineToAdjuster, KernelLeap, Resource, Role, Settings,
};
use strata_sys::Capability;
use tracing::{error, info, warn};

use crate::clock::{Backend, Change};
use crate::policy::{Breach, ClockPolicy, Verdict};

/// The process, as its binary runs it.
pub fn main() -> ExitCode {
    child::run::<Adjuster>()
}

struct Adjuster {
    backend: Backend,
    leap: KernelLeap,
    policy: ClockPolicy,
    /// Refusals logged in the current 10 s; a flood is summarised, not echoed.
    refusals_logged: u32,
    refusals_since: Instant,
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// Refusals logged one by one per 10 s before the log only counts them.
const REFUSALS_LOGGED_PER_10_S: u32 = 20;

impl Adjuster {
    fn status(&self) -> ClockStatus {
        ClockStatus {
            backend: self.backend.kind(),
            frequency_ppm: self.backend.frequency_ppm(),
            leap: self.leap,
            steps_left: self.policy.steps_left,
            automatic_steps_allowed: self.policy.automatic_steps_allowed(strata_sys::boottime_ns()),
            operator_step_authorised: self.policy.operator_step_authorised,
        }
    }

    fn refuse(&mut self, from: Role, kind: ClockRequestKind, reason: String, out: &mut Outbox) {
        if self.refusals_since.elapsed() > Duration::from_secs(10) {
            if self.refusals_logged > REFUSALS_LOGGED_PER_10_S {
                warn!("{} more refusals in the last 10 s", self.refusals_logged - REFUSALS_LOGGED_PER_10_S);
            }
            self.refusals_logged = 0;
            self.refusals_since = Instant::now();
        }
        self.refusals_logged += 1;
        if self.refusals_logged <= REFUSALS_LOGGED_PER_10_S {
            warn!(peer = %from, request = ?kind, "refused: {reason}");
        }
        match from {
            Role::Ntp => {
                out.send(&AdjusterToEngine::Refused { request: kind, reason });
                // The status says why (the step window closed, the budget spent), so
                // the engine slews what it asked to step instead of asking again.
                out.send(&AdjusterToEngine::Status(self.status()));
            }
            _ => out.send(&AdjusterToControl::Refused { request: kind, reason }),
        }
    }

    fn clock_request(&mut self, request: EngineToAdjuster, out: &mut Outbox) -> Result<(), Violation> {
        let now = now_ns();
        match request {
            EngineToAdjuster::Hello(_) => unreachable!("decode_peer refuses a second Hello"),
            EngineToAdjuster::ReadStatus => out.send(&AdjusterToEngine::Status(self.status())),
            EngineToAdjuster::SetLeap(leap) => match self.backend.set_leap(leap) {
                Ok(()) => {
                    self.leap = leap;
                    out.send(&AdjusterToEngine::Status(self.status()));
                }
                Err(reason) => self.refuse(Role::Ntp, ClockRequestKind::SetLeap, reason, out),
            },
            change => match self.policy.check(&change, strata_sys::boottime_ns()).expect("a clock change") {
                Err(Breach::Violation(reason)) => return Err(Violation(reason)),
                Err(Breach::Panic(reason)) => {
                    error!("{reason}: exiting, not to be re-spawned");
                    std::process::exit(i32::from(EXIT_DO_NOT_RESPAWN));
                }
                Ok((kind, Verdict::Refuse(reason))) => self.refuse(Role::Ntp, kind, reason, out),
                Ok((kind, Verdict::Apply(change))) => match self.backend.apply(change, now) {
                    Ok(()) => {
                        self.policy.applied(change);
                        if let Change::Step { offset_s } = change {
                            out.report(ChildToSupervisor::StepTaken);
                            info!(offset_s, steps_left = self.policy.steps_left, "stepped the clock");
                        }
                        out.send(&AdjusterToEngine::Status(self.status()));
                    }
                    Err(reason) => self.refuse(Role::Ntp, kind, reason, out),
                },
            },
        }
        Ok(())
    }
}

impl Service for Adjuster {
    const ROLE: Role = Role::Adjust;
    const CAPABILITIES: &'static [Capability] = &[Capability::CAP_SYS_TIME];

    fn start(settings: Settings, resources: Vec<(Resource, OwnedFd)>) -> Result<Self, String> {
        let Settings::Adjust(settings) = settings else { unreachable!("checked by child::run") };
        let mut model = None;
        for (resource, fd) in resources {
            match resource {
                Resource::ClockModel { writable: true } | Resource::PhcDevice { writable: true } => model = Some(fd),
                other => return Err(format!("the adjuster takes no {other:?}")),
            }
        }
        let backend = Backend::open(settings.backend, model, now_ns())?;
        info!(
            backend = ?settings.backend,
            steps_left = settings.steps_left,
            "clock backend; limits: slew {} ppm, frequency {} ppm, panic {} s",
            limits::MAX_SLEW_RATE_PPM,
            limits::MAX_FREQUENCY_PPM,
            limits::PANIC_THRESHOLD_S
        );
        Ok(Adjuster {
            backend,
            leap: KernelLeap::None,
            policy: ClockPolicy::new(
                settings.steps_left,
                settings.automatic_steps_until_boot_ns,
                settings.max_slew_rate_ppm,
            ),
            refusals_logged: 0,
            refusals_since: Instant::now(),
        })
    }

    fn next_wakeup(&self) -> Option<Instant> {
        // A slew ends on a timer: the adjuster sets the frequency back.
        let end = self.backend.slew_end_ns()?;
        Some(Instant::now() + Duration::from_nanos(end.saturating_sub(now_ns()).max(0) as u64))
    }

    fn on_wakeup(&mut self, _now: Instant, _out: &mut Outbox) {
        if self.backend.slew_end_ns().is_some_and(|end| end <= now_ns())
            && let Err(e) = self.backend.end_slew()
        {
            error!("ending a slew: {e}");
        }
    }

    fn on_linked(&mut self, peer: Role, out: &mut Outbox) {
        // State, not deltas: a (re-)linked peer is told the whole status at once.
        match peer {
            Role::Ntp => out.send(&AdjusterToEngine::Status(self.status())),
            Role::Control => out.send(&AdjusterToControl::Status(self.status())),
            _ => {}
        }
    }

    fn on_frame(&mut self, peer: Role, frame: &[u8], out: &mut Outbox) -> Result<(), Violation> {
        match peer {
            Role::Ntp => self.clock_request(decode_peer(frame)?, out)?,
            Role::Control => match decode_peer::<ControlToAdjuster>(frame)? {
                ControlToAdjuster::ReadStatus => out.send(&AdjusterToControl::Status(self.status())),
                // One-shot: the engine's next Step is allowed outside the window.
                ControlToAdjuster::MakeStep => match self.policy.authorise_operator_step() {
                    Err(reason) => self.refuse(Role::Control, ClockRequestKind::MakeStep, reason, out),
                    Ok(()) => {
                        info!("an operator authorised one step");
                        out.send(&AdjusterToControl::Status(self.status()));
                        out.send(&AdjusterToEngine::Status(self.status()));
                    }
                },
                ControlToAdjuster::Hello(_) => unreachable!("decode_peer refuses a second Hello"),
            },
            other => return Err(Violation(format!("no channel with {other}"))),
        }
        Ok(())
    }
}
