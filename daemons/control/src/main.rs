//! strata-control: the control plane. No capabilities; it reaches the other
//! processes only over its channels and keeps their latest status.
#![forbid(unsafe_code)]

use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use strata_process::child::{self, Outbox, Service, Violation, decode_peer};
use strata_proto::ipc::{
    AdjusterToControl, ClientActivity, ClockStatus, ControlToAdjuster, ControlToEngine, ControlToRefclock,
    EngineStatus, EngineToControl, RefclockStatus, RefclockToControl, Resource, Role, Settings,
};
use tracing::{debug, warn};

/// How often the control plane refreshes its view of the others.
const REFRESH: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    child::run::<ControlPlane>()
}

struct ControlPlane {
    engine: Option<EngineStatus>,
    clients: Vec<ClientActivity>,
    clock: Option<ClockStatus>,
    refclock: Option<RefclockStatus>,
    next_refresh: Instant,
}

impl ControlPlane {
    fn ask(peer: Role, out: &mut Outbox) {
        match peer {
            Role::Ntp => {
                out.send(&ControlToEngine::ReadStatus);
                out.send(&ControlToEngine::ReadClients);
            }
            Role::Adjust => out.send(&ControlToAdjuster::ReadStatus),
            Role::Refclock => out.send(&ControlToRefclock::ReadStatus),
            _ => {}
        }
    }
}

impl Service for ControlPlane {
    const ROLE: Role = Role::Control;

    fn start(settings: Settings, resources: Vec<(Resource, OwnedFd)>) -> Result<Self, String> {
        let Settings::Control(_) = settings else { unreachable!("checked by child::run") };
        if !resources.is_empty() {
            return Err("the control plane takes no resources yet".into());
        }
        Ok(ControlPlane {
            engine: None,
            clients: Vec::new(),
            clock: None,
            refclock: None,
            next_refresh: Instant::now() + REFRESH,
        })
    }

    fn on_linked(&mut self, peer: Role, out: &mut Outbox) {
        Self::ask(peer, out);
    }

    fn on_frame(&mut self, peer: Role, frame: &[u8], _out: &mut Outbox) -> Result<(), Violation> {
        match peer {
            Role::Ntp => match decode_peer::<EngineToControl>(frame)? {
                EngineToControl::Status(s) => self.engine = Some(s),
                EngineToControl::Clients(c) => self.clients = c,
                EngineToControl::Hello(_) => unreachable!("decode_peer refuses a second Hello"),
            },
            Role::Adjust => match decode_peer::<AdjusterToControl>(frame)? {
                AdjusterToControl::Status(s) => self.clock = Some(s),
                AdjusterToControl::Refused { request, reason } => {
                    warn!(?request, "adjuster refused: {reason}")
                }
                AdjusterToControl::Hello(_) => unreachable!("decode_peer refuses a second Hello"),
            },
            Role::Refclock => match decode_peer::<RefclockToControl>(frame)? {
                RefclockToControl::Status(s) => self.refclock = Some(s),
                RefclockToControl::Hello(_) => unreachable!("decode_peer refuses a second Hello"),
            },
            other => return Err(Violation(format!("no channel with {other}"))),
        }
        debug!(engine = ?self.engine, clock = ?self.clock, refclock = ?self.refclock, clients = self.clients.len(), "status");
        Ok(())
    }

    fn next_wakeup(&self) -> Option<Instant> {
        Some(self.next_refresh)
    }

    fn on_wakeup(&mut self, now: Instant, out: &mut Outbox) {
        self.next_refresh = now + REFRESH;
        for peer in Role::Control.peers() {
            Self::ask(peer, out);
        }
    }
}
