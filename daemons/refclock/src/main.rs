//! strata-refclock: the reference-clock reader. No capabilities: the devices it reads
//! are opened by the supervisor and handed over as descriptors.
#![forbid(unsafe_code)]

use std::os::fd::OwnedFd;
use std::process::ExitCode;

use strata_process::child::{self, Outbox, Service, Violation, decode_peer};
use strata_proto::ipc::{
    ControlToRefclock, EngineToRefclock, RefclockStatus, RefclockToControl, Resource, Role, Settings,
};

fn main() -> ExitCode {
    child::run::<RefclockReader>()
}

struct RefclockReader {
    status: RefclockStatus,
}

impl Service for RefclockReader {
    const ROLE: Role = Role::Refclock;

    fn start(settings: Settings, resources: Vec<(Resource, OwnedFd)>) -> Result<Self, String> {
        let Settings::Refclock(_) = settings else { unreachable!("checked by child::run") };
        if !resources.is_empty() {
            return Err("no refclock drivers are configured".into());
        }
        Ok(RefclockReader { status: RefclockStatus::default() })
    }

    fn on_linked(&mut self, peer: Role, out: &mut Outbox) {
        if peer == Role::Control {
            out.send(&RefclockToControl::Status(self.status.clone()));
        }
    }

    fn on_frame(&mut self, peer: Role, frame: &[u8], out: &mut Outbox) -> Result<(), Violation> {
        match peer {
            Role::Control => match decode_peer::<ControlToRefclock>(frame)? {
                ControlToRefclock::ReadStatus => out.send(&RefclockToControl::Status(self.status.clone())),
                ControlToRefclock::Hello(_) => unreachable!("decode_peer refuses a second Hello"),
            },
            Role::Ntp => match decode_peer::<EngineToRefclock>(frame)? {
                EngineToRefclock::Hello(_) => unreachable!("decode_peer refuses a second Hello"),
            },
            other => return Err(Violation(format!("no channel with {other}"))),
        }
        Ok(())
    }
}
