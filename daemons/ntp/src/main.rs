//! strata-ntp: the NTP engine. It parses every packet from the network and so holds
//! no capability at all: it can reach the clock only by asking the adjuster, over a
//! channel that carries bounded clock requests and nothing else.
#![forbid(unsafe_code)]

mod server;

use std::net::UdpSocket;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use strata_process::child::{self, Outbox, Service, Violation, decode_peer};
use strata_proto::ipc::{
    AdjusterToEngine, ControlToEngine, EngineStatus, EngineToAdjuster, EngineToControl, RefclockToEngine, Resource,
    Role, Settings,
};
use strata_proto::ntp::{HEADER_LEN, NtpTimestamp};
use tracing::{debug, info, warn};

use crate::server::ServerState;

fn main() -> ExitCode {
    child::run::<Engine>()
}

struct Engine {
    sockets: Vec<UdpSocket>,
    /// What every answer says about our clock.
    serving: ServerState,
    status: EngineStatus,
}

/// The system clock as an NTP timestamp.
fn now() -> NtpTimestamp {
    let unix_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    NtpTimestamp::from_unix_ns(unix_ns)
}

impl Engine {
    /// Answer every request queued on socket `index`.
    fn serve(&mut self, index: usize) {
        // Requests longer than this are not NTP requests we answer (the largest
        // legal one, with extension fields and a MAC, is far shorter).
        let mut request = [0u8; 1024];
        let mut reply = [0u8; HEADER_LEN];
        let socket = &self.sockets[index];
        loop {
            let (len, client) = match socket.recv_from(&mut request) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("receive failed: {e}");
                    return;
                }
            };
            let received = now();
            self.status.ntp_received += 1;
            match server::respond(&request[..len], received, now(), &self.serving, &mut reply) {
                Ok(n) => match socket.send_to(&reply[..n], client) {
                    Ok(_) => self.status.ntp_answered += 1,
                    Err(e) => {
                        self.status.ntp_dropped += 1;
                        debug!(%client, "reply not sent: {e}");
                    }
                },
                Err(why) => {
                    self.status.ntp_dropped += 1;
                    debug!(%client, "request dropped: {why}");
                }
            }
        }
    }
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
        let serving = match settings.local_stratum {
            Some(stratum) => ServerState::local(stratum),
            None => ServerState::unsynchronised(),
        };
        Ok(Engine { sockets, serving, status: EngineStatus::default() })
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
        self.serve(index);
    }
}
