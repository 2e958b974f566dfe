//! strata-ntp: the NTP engine. It parses every packet from the network and so holds
//! no capability at all: it can reach the clock only by asking the adjuster, over a
//! channel that carries bounded clock requests and nothing else.
#![forbid(unsafe_code)]

use std::net::UdpSocket;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitCode;

use strata_process::child::{self, Outbox, Service, Violation, decode_peer};
use strata_proto::ipc::{
    AdjusterToEngine, ControlToEngine, EngineStatus, EngineToAdjuster, EngineToControl, NtpSettings, RefclockToEngine,
    Resource, Role, Settings,
};
use tracing::{info, warn};

fn main() -> ExitCode {
    child::run::<Engine>()
}

struct Engine {
    #[allow(dead_code)] // read by the server
    settings: NtpSettings,
    sockets: Vec<UdpSocket>,
    status: EngineStatus,
}

impl Service for Engine {
    const ROLE: Role = Role::Ntp;

    fn start(settings: Settings, resources: Vec<(Resource, OwnedFd)>) -> Result<Self, String> {
        let Settings::Ntp(settings) = settings else { unreachable!("checked by child::run") };
        let mut sockets = Vec::new();
        for (resource, fd) in resources {
            match resource {
                Resource::NtpSocket { local } => {
                    let socket = UdpSocket::from(fd);
                    socket.set_nonblocking(true).map_err(|e| format!("{local}: {e}"))?;
                    info!(%local, "serving NTP");
                    sockets.push(socket);
                }
            }
        }
        Ok(Engine { settings, sockets, status: EngineStatus::default() })
    }

    fn on_linked(&mut self, peer: Role, out: &mut Outbox) {
        if peer == Role::Adjust {
            out.send(&EngineToAdjuster::ReadStatus);
        }
    }

    fn on_frame(&mut self, peer: Role, frame: &[u8], out: &mut Outbox) -> Result<(), Violation> {
        match peer {
            Role::Adjust => match decode_peer::<AdjusterToEngine>(frame)? {
                AdjusterToEngine::Status(clock) => self.status.clock = Some(clock),
                AdjusterToEngine::Refused { request, reason } => {
                    warn!(?request, "adjuster refused: {reason}")
                }
                AdjusterToEngine::Hello(_) => unreachable!("decode_peer refuses a second Hello"),
            },
            Role::Refclock => match decode_peer::<RefclockToEngine>(frame)? {
                RefclockToEngine::Sample(_) => self.status.refclock_samples += 1,
                RefclockToEngine::Hello(_) => unreachable!("decode_peer refuses a second Hello"),
            },
            Role::Control => match decode_peer::<ControlToEngine>(frame)? {
                ControlToEngine::ReadStatus => out.send(&EngineToControl::Status(self.status.clone())),
                ControlToEngine::Hello(_) => unreachable!("decode_peer refuses a second Hello"),
            },
            other => return Err(Violation(format!("no channel with {other}"))),
        }
        Ok(())
    }

    fn sources(&self) -> Vec<BorrowedFd<'_>> {
        self.sockets.iter().map(|s| s.as_fd()).collect()
    }

    fn on_readable(&mut self, index: usize, _out: &mut Outbox) {
        let mut buf = [0u8; 1024];
        while let Ok((_len, _from)) = self.sockets[index].recv_from(&mut buf) {
            self.status.ntp_received += 1;
            self.status.ntp_dropped += 1;
        }
    }
}
