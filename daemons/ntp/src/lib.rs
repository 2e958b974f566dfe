//! strata-ntp: the NTP engine. It parses every packet from the network and so holds
//! no capability at all: it can reach the clock only by asking the adjuster, over a
//! channel that carries bounded clock requests and nothing else.
#![forbid(unsafe_code)]

mod clientlog;
mod interleave;
mod nic_clock;
mod send_delay;
mod server;
mod timekeeping;
mod workers;

use std::net::UdpSocket;
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::sync::Arc;

use nix::sys::socket::{TimestampingFlag, setsockopt, sockopt};
use strata_process::child::{self, Outbox, Service, Violation, decode_peer};
use strata_proto::ipc::{
    AdjusterToEngine, ControlToEngine, EngineStatus, EngineToAdjuster, EngineToControl, RefclockToEngine, Resource,
    Role, Settings,
};
use tracing::{info, warn};

use crate::server::ServerState;
use crate::timekeeping::Timekeeping;
use crate::workers::{Shared, TimeSource};

/// The process, as its binary runs it.
pub fn main() -> ExitCode {
    child::run::<Engine>()
}

struct Engine {
    /// State shared with the serving threads.
    shared: Arc<Shared>,
    timekeeper: Timekeeping,
    status: EngineStatus,
    /// When the NIC clocks are read next (`hwtimestamp`; none: no NIC clock).
    next_nic_read: Option<std::time::Instant>,
}

/// How often the NICs' PHCs are read against the system clock.
const NIC_READ_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl Service for Engine {
    const ROLE: Role = Role::Ntp;

    fn start(settings: Settings, resources: Vec<(Resource, OwnedFd)>) -> Result<Self, String> {
        let Settings::Ntp(settings) = settings else { unreachable!("checked by child::run") };
        let serving = match settings.local_stratum {
            Some(stratum) => ServerState::local(stratum),
            None => ServerState::unsynchronised(),
        };
        let mut sockets = Vec::new();
        let mut nic_clocks = Vec::new();
        let mut time = TimeSource::System;
        for (resource, fd) in resources {
            match resource {
                Resource::NtpSocket { local, thread } => sockets.push((local, thread, fd)),
                Resource::ClockModel { writable: false } => time = TimeSource::Simulated(std::fs::File::from(fd)),
                Resource::PhcDevice { writable: false } => {
                    let clock = strata_sys::KernelClock::of_phc(&fd);
                    clock.now_ns().map_err(|e| format!("reading the PHC: {e}"))?;
                    time = TimeSource::Phc { _device: std::fs::File::from(fd), clock };
                }
                Resource::NicClock { interface, if_index, receive, txcomp_ns, rxcomp_ns } => {
                    let clock =
                        nic_clock::NicClock::new(interface, if_index, receive, (txcomp_ns, rxcomp_ns), fd.into());
                    clock.read().map_err(|e| format!("reading the PHC of {}: {e}", clock.interface))?;
                    nic_clocks.push(clock);
                }
                other => return Err(format!("the engine takes no {other:?}")),
            }
        }
        let hardware = !nic_clocks.is_empty();
        let shared = Shared::new(serving, &settings, time, nic_clocks, sockets.len())?;
        for (index, (local, thread, fd)) in sockets.into_iter().enumerate() {
            // The kernel's receive time of each request is its T2; its transmit
            // time of each answer, numbered (OPT_ID) and without the payload
            // (OPT_TSONLY), comes back on the error queue for interleaved mode.
            if settings.kernel_tx_timestamps {
                let mut stamping = TimestampingFlag::SOF_TIMESTAMPING_SOFTWARE
                    | TimestampingFlag::SOF_TIMESTAMPING_RX_SOFTWARE
                    | TimestampingFlag::SOF_TIMESTAMPING_TX_SOFTWARE
                    | TimestampingFlag::SOF_TIMESTAMPING_OPT_ID
                    | TimestampingFlag::SOF_TIMESTAMPING_OPT_TSONLY;
                if hardware {
                    // The NICs' stamps too (the socket takes them from whichever
                    // interface a packet crosses), and the interface of each
                    // request, whose NIC's clock converts them.
                    stamping |= TimestampingFlag::SOF_TIMESTAMPING_RX_HARDWARE
                        | TimestampingFlag::SOF_TIMESTAMPING_TX_HARDWARE
                        | TimestampingFlag::SOF_TIMESTAMPING_RAW_HARDWARE;
                    let pktinfo = if local.is_ipv4() {
                        setsockopt(&fd, sockopt::Ipv4PacketInfo, &true)
                    } else {
                        setsockopt(&fd, sockopt::Ipv6RecvPacketInfo, &true)
                    };
                    pktinfo.map_err(|e| format!("{local}: IP_PKTINFO: {e}"))?;
                }
                setsockopt(&fd, sockopt::Timestamping, &stamping)
                    .map_err(|e| format!("{local}: SO_TIMESTAMPING: {e}"))?;
            } else {
                setsockopt(&fd, sockopt::ReceiveTimestampns, &true)
                    .map_err(|e| format!("{local}: SO_TIMESTAMPNS: {e}"))?;
            }
            workers::spawn(index, UdpSocket::from(fd), Arc::clone(&shared))
                .map_err(|e| format!("{local}: serving thread: {e}"))?;
            info!(%local, thread, "serving NTP");
        }
        let timekeeper = Timekeeping::new(&settings, Arc::clone(&shared))?;
        let next_nic_read = hardware.then(|| std::time::Instant::now() + NIC_READ_INTERVAL);
        Ok(Engine { shared, timekeeper, status: EngineStatus::default(), next_nic_read })
    }

    fn on_sandboxed(&mut self) {
        self.shared.release();
    }

    fn on_linked(&mut self, peer: Role, out: &mut Outbox) {
        if peer == Role::Adjust {
            out.send(&EngineToAdjuster::ReadStatus);
        }
    }

    fn on_frame(&mut self, peer: Role, frame: &[u8], out: &mut Outbox) -> Result<(), Violation> {
        match peer {
            Role::Adjust => match decode_peer::<AdjusterToEngine>(frame)? {
                AdjusterToEngine::Status(clock) => {
                    self.timekeeper.clock_status(clock.clone());
                    self.status.clock = Some(clock);
                }
                AdjusterToEngine::Refused { request, reason } => {
                    warn!(?request, "adjuster refused: {reason}")
                }
                AdjusterToEngine::Hello(_) => unreachable!("decode_peer refuses a second Hello"),
            },
            Role::Refclock => match decode_peer::<RefclockToEngine>(frame)? {
                RefclockToEngine::Sample(sample) => {
                    self.status.refclock_samples += 1;
                    self.timekeeper.on_refclock_sample(&sample, out).map_err(Violation)?;
                }
                RefclockToEngine::Hello(_) => unreachable!("decode_peer refuses a second Hello"),
            },
            Role::Control => match decode_peer::<ControlToEngine>(frame)? {
                ControlToEngine::ReadStatus => {
                    self.status.server = self.shared.stats();
                    (self.status.clients_logged, self.status.client_log_bytes) = self.shared.client_log_size();
                    (self.status.tracking, self.status.sources, self.status.failovers, self.status.failovers_total) =
                        self.timekeeper.status();
                    out.send(&EngineToControl::Status(Box::new(self.status.clone())));
                }
                ControlToEngine::ReadClients => out.send(&EngineToControl::Clients(self.shared.busiest_clients())),
                // Operator commands: the control plane checked the caller's role;
                // here each is checked against the engine's own state.
                ControlToEngine::AddSource(add) => {
                    out.send(&EngineToControl::Done(self.timekeeper.add_source(&add)));
                }
                ControlToEngine::DeleteSource(address) => {
                    let done = self.timekeeper.delete_source(address, out);
                    out.send(&EngineToControl::Done(done));
                }
                ControlToEngine::SetOnline { address, online } => {
                    out.send(&EngineToControl::Done(self.timekeeper.set_online(address, online)));
                }
                ControlToEngine::Reselect => {
                    let done = self.timekeeper.reselect(out);
                    out.send(&EngineToControl::Done(Ok(done)));
                }
                ControlToEngine::Access { allow, rule } => {
                    let done = self.shared.add_access_rule(allow, &rule).map(|()| {
                        let verb = if allow { "allow" } else { "deny" };
                        info!("access rule added by an operator: {verb} {rule}");
                        format!("{verb} {rule}")
                    });
                    out.send(&EngineToControl::Done(done));
                }
                ControlToEngine::StepAuthorised => {
                    out.send(&EngineToControl::Done(self.timekeeper.step_authorised()));
                }
                ControlToEngine::Hello(_) => unreachable!("decode_peer refuses a second Hello"),
            },
            other => return Err(Violation(format!("no channel with {other}"))),
        }
        Ok(())
    }

    fn sources(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        self.timekeeper.sockets().collect()
    }

    fn on_readable(&mut self, index: usize, out: &mut Outbox) {
        self.timekeeper.on_readable(index, out);
    }

    fn next_wakeup(&self) -> Option<std::time::Instant> {
        self.timekeeper.next_wakeup().into_iter().chain(self.next_nic_read).min()
    }

    fn on_wakeup(&mut self, now: std::time::Instant, out: &mut Outbox) {
        if let Some(at) = self.next_nic_read
            && now >= at
        {
            for clock in &self.shared.nic_clocks {
                if let Err(e) = clock.read() {
                    warn!(interface = clock.interface, "reading its PHC: {e}");
                }
            }
            self.next_nic_read = Some(now + NIC_READ_INTERVAL);
        }
        self.timekeeper.poll_due(out);
    }
}
