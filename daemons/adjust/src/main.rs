//! strata-adjust: the clock adjuster, the only process that holds CAP_SYS_TIME.
//!
//! It accepts a closed set of requests — from the engine on one channel, from the
//! control plane (operator-authorised) on another — checks every field, and applies
//! what its policy allows to the clock backend. It opens no file and no socket: its
//! seccomp policy has no such calls.
#![forbid(unsafe_code)]

use std::os::fd::OwnedFd;
use std::process::ExitCode;

use strata_process::child::{self, Outbox, Service, Violation, decode_peer};
use strata_proto::ipc::{
    AdjusterToControl, AdjusterToEngine, ClockBackendKind, ClockRequestKind, ClockStatus, ControlToAdjuster,
    EngineToAdjuster, Leap, Resource, Role, Settings,
};
use strata_sys::Capability;
use tracing::{info, warn};

fn main() -> ExitCode {
    child::run::<Adjuster>()
}

struct Adjuster {
    backend: ClockBackendKind,
    leap: Leap,
}

impl Adjuster {
    fn status(&self) -> ClockStatus {
        ClockStatus { backend: self.backend, frequency_ppm: 0.0, leap: self.leap, steps_left: 0 }
    }

    /// Every request is checked field by field before anything else happens.
    fn check(request: &EngineToAdjuster) -> Result<ClockRequestKind, Violation> {
        let finite = |what: &str, v: f64| {
            if v.is_finite() { Ok(()) } else { Err(Violation(format!("{what} is not a finite number: {v}"))) }
        };
        match *request {
            EngineToAdjuster::Slew { offset_s } => finite("slew offset", offset_s).map(|()| ClockRequestKind::Slew),
            EngineToAdjuster::SetFrequency { ppm } => finite("frequency", ppm).map(|()| ClockRequestKind::SetFrequency),
            EngineToAdjuster::Step { offset_s } => finite("step offset", offset_s).map(|()| ClockRequestKind::Step),
            EngineToAdjuster::SetLeap(_) => Ok(ClockRequestKind::SetLeap),
            EngineToAdjuster::Hello(_) | EngineToAdjuster::ReadStatus => Err(Violation("not a clock change".into())),
        }
    }

    fn refusal(&self) -> String {
        match self.backend {
            ClockBackendKind::None => "clock backend `none` never adjusts the clock".into(),
            // The discipline and its policy limits arrive with the time-keeping work;
            // until then the adjuster refuses rather than moving the clock unchecked.
            ClockBackendKind::System => "clock changes are not enabled in this build".into(),
        }
    }
}

impl Service for Adjuster {
    const ROLE: Role = Role::Adjust;
    const CAPABILITIES: &'static [Capability] = &[Capability::CAP_SYS_TIME];

    fn start(settings: Settings, resources: Vec<(Resource, OwnedFd)>) -> Result<Self, String> {
        let Settings::Adjust(settings) = settings else { unreachable!("checked by child::run") };
        if !resources.is_empty() {
            return Err("the adjuster takes no resources".into());
        }
        info!(backend = ?settings.backend, "clock backend");
        Ok(Adjuster { backend: settings.backend, leap: Leap::None })
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
            Role::Ntp => {
                let request: EngineToAdjuster = decode_peer(frame)?;
                if request == EngineToAdjuster::ReadStatus {
                    out.send(&AdjusterToEngine::Status(self.status()));
                    return Ok(());
                }
                let kind = Self::check(&request)?;
                warn!(?request, "refused: {}", self.refusal());
                out.send(&AdjusterToEngine::Refused { request: kind, reason: self.refusal() });
            }
            Role::Control => match decode_peer::<ControlToAdjuster>(frame)? {
                ControlToAdjuster::ReadStatus => out.send(&AdjusterToControl::Status(self.status())),
                ControlToAdjuster::MakeStep => {
                    warn!("operator makestep refused: {}", self.refusal());
                    out.send(&AdjusterToControl::Refused {
                        request: ClockRequestKind::MakeStep,
                        reason: self.refusal(),
                    });
                }
                ControlToAdjuster::Hello(_) => unreachable!("decode_peer refuses a second Hello"),
            },
            other => return Err(Violation(format!("no channel with {other}"))),
        }
        Ok(())
    }
}
