//! strata-refclock: the reference-clock reader. No capabilities: the devices it reads
//! are opened by the supervisor and handed over as descriptors.
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use strata_process::child::{self, Outbox, Service, Violation, decode_peer};
use strata_proto::ipc::{
    ControlToRefclock, EngineToRefclock, RefclockDriverSettings, RefclockSample, RefclockStatus, RefclockToControl,
    RefclockToEngine, Resource, Role, Settings,
};
use tracing::{debug, info, warn};

mod shm;
mod sock;

fn main() -> ExitCode {
    child::run::<RefclockReader>()
}

/// How often SHM segments are looked at (chrony's default `dpoll 0`: every second).
const SHM_READ_EVERY: Duration = Duration::from_secs(1);

struct RefclockReader {
    /// SOCK refclocks: (index in the configuration, the socket gpsd writes to).
    sockets: Vec<(u16, UnixDatagram)>,
    /// SHM refclocks: (index, the segment gpsd writes to).
    segments: Vec<(u16, strata_sys::ShmSegment)>,
    /// PHC refclocks: (index, the device, whether it counts TAI).
    phcs: Vec<(u16, std::fs::File, bool)>,
    next_shm_read: Instant,
    status: RefclockStatus,
}

impl Service for RefclockReader {
    const ROLE: Role = Role::Refclock;

    fn start(settings: Settings, resources: Vec<(Resource, OwnedFd)>) -> Result<Self, String> {
        let Settings::Refclock(settings) = settings else { unreachable!("checked by child::run") };
        let mut sockets = Vec::new();
        let mut phcs = Vec::new();
        for (resource, fd) in resources {
            match resource {
                Resource::PhcRefclock { refclock } => match settings.refclocks.get(usize::from(refclock)) {
                    Some(RefclockDriverSettings::Phc { tai }) => phcs.push((refclock, std::fs::File::from(fd), *tai)),
                    _ => return Err(format!("refclock {refclock} is not a PHC")),
                },
                Resource::SockSocket { refclock }
                    if matches!(settings.refclocks.get(usize::from(refclock)), Some(RefclockDriverSettings::Sock)) =>
                {
                    let socket = UnixDatagram::from(fd);
                    socket.set_nonblocking(true).map_err(|e| format!("refclock {refclock}: {e}"))?;
                    sockets.push((refclock, socket));
                }
                other => return Err(format!("the refclock reader takes no {other:?}")),
            }
        }
        let mut segments = Vec::new();
        for (i, driver) in settings.refclocks.iter().enumerate() {
            match driver {
                RefclockDriverSettings::Sock => info!(refclock = i, "SOCK refclock"),
                // Attached before the sandbox (no shmget/shmat after it). The segment
                // is gpsd's: strata never creates one, and it must be readable and
                // writable by this process's user (gpsd makes units 2 and up 0666).
                RefclockDriverSettings::Shm { unit } => match strata_sys::ShmSegment::attach(shm::key(*unit)) {
                    Ok(segment) => {
                        info!(refclock = i, unit, "SHM refclock attached");
                        segments.push((i as u16, segment));
                    }
                    Err(e) => warn!(refclock = i, unit, "SHM segment not available (is gpsd running?): {e}"),
                },
                RefclockDriverSettings::Phc { tai } => info!(refclock = i, tai, "PHC refclock"),
            }
        }
        let status = RefclockStatus { refclocks: settings.refclocks.len() as u16, ..RefclockStatus::default() };
        Ok(RefclockReader { sockets, segments, phcs, next_shm_read: Instant::now(), status })
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

    fn sources(&self) -> Vec<BorrowedFd<'_>> {
        self.sockets.iter().map(|(_, s)| s.as_fd()).collect()
    }

    fn on_readable(&mut self, index: usize, out: &mut Outbox) {
        let (refclock, socket) = &self.sockets[index];
        let mut buf = [0u8; 256];
        while let Ok(len) = socket.recv(&mut buf) {
            match sock::parse(&buf[..len]) {
                Ok(sample) => {
                    self.status.samples_sent += 1;
                    out.send(&RefclockToEngine::Sample(RefclockSample {
                        refclock: *refclock,
                        system_time_ns: sample.system_time_ns,
                        offset_s: sample.offset_s,
                        dispersion_s: 0.0,
                    }));
                }
                // A stalled or garbage feed is refused and counted, never passed on.
                Err(e) => {
                    self.status.samples_rejected += 1;
                    debug!(refclock, "SOCK sample rejected: {e:?}");
                }
            }
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        (!self.segments.is_empty() || !self.phcs.is_empty()).then_some(self.next_shm_read)
    }

    fn on_wakeup(&mut self, now: Instant, out: &mut Outbox) {
        self.next_shm_read = now + SHM_READ_EVERY;
        for (refclock, device, tai) in &self.phcs {
            // PRECISE, else EXTENDED, else SYS_OFFSET; the least-delay of 5 readings.
            match strata_sys::ptp::read_phc(&strata_sys::ptp::Phc(device), 5) {
                Ok(reading) => {
                    // A PHC counting TAI is 37 s ahead of UTC (since 2017-01-01).
                    let tai_s = if *tai { 37.0 } else { 0.0 };
                    self.status.samples_sent += 1;
                    out.send(&RefclockToEngine::Sample(RefclockSample {
                        refclock: *refclock,
                        system_time_ns: reading.system_before_ns + reading.delay_ns() / 2,
                        offset_s: reading.offset_ns() as f64 * 1e-9 - tai_s,
                        dispersion_s: reading.delay_ns() as f64 * 0.5e-9,
                    }));
                }
                Err(e) => {
                    self.status.samples_rejected += 1;
                    debug!(refclock, "reading the PHC failed: {e}");
                }
            }
        }
        for (refclock, segment) in &self.segments {
            match shm::read(|| segment.snapshot()) {
                Ok(sample) => {
                    segment.clear_valid();
                    self.status.samples_sent += 1;
                    out.send(&RefclockToEngine::Sample(RefclockSample {
                        refclock: *refclock,
                        system_time_ns: sample.receive_time_ns,
                        offset_s: sample.offset_s(),
                        dispersion_s: 0.0,
                    }));
                }
                Err(shm::ShmError::NoNewSample | shm::ShmError::Busy) => {}
                Err(e) => {
                    // Consumed, counted, never passed on.
                    segment.clear_valid();
                    self.status.samples_rejected += 1;
                    debug!(refclock, "SHM sample rejected: {e}");
                }
            }
        }
    }
}
