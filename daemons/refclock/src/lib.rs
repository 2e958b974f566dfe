//! strata-refclock: the reference-clock reader. No capabilities: the devices it reads
//! are opened by the supervisor and handed over as descriptors.
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use strata_process::child::{self, Outbox, Service, Violation, decode_peer};
use strata_proto::ipc::{
    ControlToRefclock, EngineToRefclock, PpsDriverSettings, RefclockDriverSettings, RefclockSample, RefclockStatus,
    RefclockToControl, RefclockToEngine, Resource, Role, Settings,
};
use strata_sys::ptp::{PpsEdge, PulseReader};
use tracing::{debug, info, warn};

mod pps;
pub mod shm;
pub mod sock;

/// The process, as its binary runs it.
pub fn main() -> ExitCode {
    child::run::<RefclockReader>()
}

/// A driver the reader reads on its own schedule (chrony's `dpoll`), not when
/// data arrives.
enum PolledDevice {
    /// A PTP hardware clock; `tai`: it counts TAI.
    Phc { device: std::fs::File, tai: bool },
    /// gpsd's SHM segment.
    Shm(strata_sys::ShmSegment),
    /// An RFC 2783 PPS source.
    Pps { device: std::fs::File, pulses: PulseReader, settings: PpsDriverSettings },
}

struct Polled {
    refclock: u16,
    /// 2^dpoll s.
    every: Duration,
    next: Instant,
    device: PolledDevice,
}

struct RefclockReader {
    /// SOCK refclocks: (index in the configuration, the socket gpsd writes to).
    sockets: Vec<(u16, UnixDatagram)>,
    /// PHC, SHM and PPS refclocks.
    polled: Vec<Polled>,
    /// Each refclock's newest sample (system time ns, offset s): a PPS locked to
    /// it takes its seconds from there.
    latest: Vec<Option<(i64, f64)>>,
    status: RefclockStatus,
}

fn every(dpoll: i8) -> Duration {
    Duration::from_secs_f64(2f64.powi(i32::from(dpoll)))
}

impl Service for RefclockReader {
    const ROLE: Role = Role::Refclock;

    fn start(settings: Settings, resources: Vec<(Resource, OwnedFd)>) -> Result<Self, String> {
        let Settings::Refclock(settings) = settings else { unreachable!("checked by child::run") };
        let now = Instant::now();
        let mut sockets = Vec::new();
        let mut polled = Vec::new();
        for (resource, fd) in resources {
            match resource {
                Resource::PhcRefclock { refclock } => match settings.refclocks.get(usize::from(refclock)) {
                    Some(RefclockDriverSettings::Phc { tai, dpoll }) => polled.push(Polled {
                        refclock,
                        every: every(*dpoll),
                        next: now,
                        device: PolledDevice::Phc { device: std::fs::File::from(fd), tai: *tai },
                    }),
                    _ => return Err(format!("refclock {refclock} is not a PHC")),
                },
                Resource::PpsRefclock { refclock } => match settings.refclocks.get(usize::from(refclock)) {
                    Some(RefclockDriverSettings::Pps(pps)) => {
                        let edge = if pps.clear { PpsEdge::Clear } else { PpsEdge::Assert };
                        polled.push(Polled {
                            refclock,
                            every: every(pps.dpoll),
                            next: now,
                            device: PolledDevice::Pps {
                                device: std::fs::File::from(fd),
                                pulses: PulseReader::new(edge),
                                settings: pps.clone(),
                            },
                        })
                    }
                    _ => return Err(format!("refclock {refclock} is not a PPS")),
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
        for (i, driver) in settings.refclocks.iter().enumerate() {
            match driver {
                RefclockDriverSettings::Sock => info!(refclock = i, "SOCK refclock"),
                // Attached before the sandbox (no shmget/shmat after it). The segment
                // is gpsd's: strata never creates one, and it must be readable and
                // writable by this process's user (gpsd makes units 2 and up 0666).
                RefclockDriverSettings::Shm { unit, dpoll } => match strata_sys::ShmSegment::attach(shm::key(*unit)) {
                    Ok(segment) => {
                        info!(refclock = i, unit, dpoll, "SHM refclock attached");
                        polled.push(Polled {
                            refclock: i as u16,
                            every: every(*dpoll),
                            next: now,
                            device: PolledDevice::Shm(segment),
                        });
                    }
                    Err(e) => warn!(refclock = i, unit, "SHM segment not available (is gpsd running?): {e}"),
                },
                RefclockDriverSettings::Phc { tai, dpoll } => info!(refclock = i, tai, dpoll, "PHC refclock"),
                RefclockDriverSettings::Pps(pps) => {
                    info!(refclock = i, clear = pps.clear, lock = ?pps.lock.as_ref().map(|l| l.refclock), "PPS refclock")
                }
            }
        }
        let status = RefclockStatus { refclocks: settings.refclocks.len() as u16, ..RefclockStatus::default() };
        Ok(RefclockReader { sockets, polled, latest: vec![None; settings.refclocks.len()], status })
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
            let sample = sock::parse(&buf[..len]).map_err(|e| format!("{e:?}")).and_then(|sample| {
                fresh(
                    RefclockSample {
                        refclock: *refclock,
                        system_time_ns: sample.system_time_ns,
                        offset_s: sample.offset_s,
                        dispersion_s: 0.0,
                    },
                    MIN_MAX_AGE,
                )
            });
            match sample {
                Ok(sample) => send(&mut self.status, &mut self.latest, out, sample),
                // A stalled or garbage feed is refused and counted, never passed on.
                Err(e) => {
                    self.status.samples_rejected += 1;
                    debug!(refclock, "sample rejected: SOCK: {e}");
                }
            }
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        self.polled.iter().map(|p| p.next).min()
    }

    fn on_wakeup(&mut self, now: Instant, out: &mut Outbox) {
        let RefclockReader { polled, latest, status, .. } = self;
        for p in polled.iter_mut().filter(|p| p.next <= now) {
            p.next += p.every;
            if p.next <= now {
                // Late (the process was stopped, say): resume the schedule from now.
                p.next = now + p.every;
            }
            let refclock = p.refclock;
            let sample = match &mut p.device {
                PolledDevice::Phc { device, tai } => read_phc(refclock, device.as_fd(), *tai),
                PolledDevice::Shm(segment) => read_shm(refclock, segment),
                PolledDevice::Pps { device, pulses, settings } => read_pps(refclock, device, pulses, settings, latest),
            };
            let max_age = MIN_MAX_AGE.max(2 * p.every);
            match sample.and_then(|s| s.map(|s| fresh(s, max_age)).transpose()) {
                Ok(Some(sample)) => send(status, latest, out, sample),
                Ok(None) => {}
                // A stalled or garbage reading is refused and counted, never passed on.
                Err(e) => {
                    status.samples_rejected += 1;
                    debug!(refclock, "sample rejected: {e}");
                }
            }
        }
    }
}

/// A sample's system time may be at most this old when it is read (or 2 read
/// intervals, if longer): an SHM segment keeps its last sample until it is read, and
/// a writer that stamps 1970 or a stale time is no reference (chrony's
/// `valid_sample_time`, which allows 2 polls).
pub const MIN_MAX_AGE: Duration = Duration::from_secs(8);
/// How far in the future a sample's system time may be: none, but for clock-read
/// granularity between two processes.
const MAX_FUTURE: Duration = Duration::from_millis(1);

/// The sample, if its system time is now or a little before.
pub fn fresh(sample: RefclockSample, max_age: Duration) -> Result<RefclockSample, String> {
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let age_ns = i128::from(now_ns) - i128::from(sample.system_time_ns);
    if age_ns < -(MAX_FUTURE.as_nanos() as i128) || age_ns > max_age.as_nanos() as i128 {
        return Err(format!("sample time {} ns is {:.3} s from now", sample.system_time_ns, age_ns as f64 * 1e-9));
    }
    Ok(sample)
}

/// Pass a sample to the engine and keep it for the PPS refclocks locked to this one.
fn send(status: &mut RefclockStatus, latest: &mut [Option<(i64, f64)>], out: &mut Outbox, sample: RefclockSample) {
    if let Some(slot) = latest.get_mut(usize::from(sample.refclock)) {
        *slot = Some((sample.system_time_ns, sample.offset_s));
    }
    status.samples_sent += 1;
    out.send(&RefclockToEngine::Sample(sample));
}

/// One reading of a PHC refclock: the least-delay of 5 readings, the system time
/// in the middle of the best.
pub fn read_phc(refclock: u16, device: BorrowedFd<'_>, tai: bool) -> Result<Option<RefclockSample>, String> {
    // PRECISE, else EXTENDED, else SYS_OFFSET; the least-delay of 5 readings.
    let reading = strata_sys::ptp::read_phc(&strata_sys::ptp::Phc(device), 5)
        .map_err(|e| format!("reading the PHC failed: {e}"))?;
    // A PHC counting TAI is 37 s ahead of UTC (since 2017-01-01).
    let tai_s = if tai { 37.0 } else { 0.0 };
    Ok(Some(RefclockSample {
        refclock,
        system_time_ns: reading.system_before_ns + reading.delay_ns() / 2,
        offset_s: reading.offset_ns() as f64 * 1e-9 - tai_s,
        dispersion_s: reading.delay_ns() as f64 * 0.5e-9,
    }))
}

/// The new sample of gpsd's SHM segment, if there is one; a consumed one is marked.
pub fn read_shm(refclock: u16, segment: &strata_sys::ShmSegment) -> Result<Option<RefclockSample>, String> {
    match shm::read(|| segment.snapshot()) {
        Ok(sample) => {
            segment.clear_valid();
            Ok(Some(RefclockSample {
                refclock,
                system_time_ns: sample.receive_time_ns,
                offset_s: sample.offset_s(),
                dispersion_s: 0.0,
            }))
        }
        Err(shm::ShmError::NoNewSample) => Ok(None),
        // Not cleared: the writer's sample is on its way; counted, as a torn read.
        Err(shm::ShmError::Busy) => Err(format!("SHM: {}", shm::ShmError::Busy)),
        Err(e) => {
            // Consumed, so it is not read again on every poll.
            segment.clear_valid();
            Err(format!("SHM: {e}"))
        }
    }
}

fn read_pps(
    refclock: u16,
    device: &std::fs::File,
    pulses: &mut PulseReader,
    settings: &PpsDriverSettings,
    latest: &[Option<(i64, f64)>],
) -> Result<Option<RefclockSample>, String> {
    let Some(pulse) = pulses.read(&strata_sys::ptp::Pps(device)).map_err(|e| format!("PPS_FETCH: {e}"))? else {
        return Ok(None);
    };
    let offset_s = match &settings.lock {
        None => pps::unlocked_offset(pulse.system_time_ns, settings.offset_s),
        Some(lock) => {
            let locked = latest.get(usize::from(lock.refclock)).copied().flatten();
            pps::locked_offset(pulse.system_time_ns, settings.offset_s, lock, locked)
                .map_err(|e| format!("PPS pulse {}: {e:?}", pulse.sequence))?
        }
    };
    Ok(Some(RefclockSample { refclock, system_time_ns: pulse.system_time_ns, offset_s, dispersion_s: 0.0 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(system_time_ns: i64) -> RefclockSample {
        RefclockSample { refclock: 0, system_time_ns, offset_s: 0.0, dispersion_s: 0.0 }
    }

    #[test]
    fn only_a_sample_taken_just_now_is_fresh() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
        assert!(fresh(at(now - 2_000_000_000), MIN_MAX_AGE).is_ok());
        // Older than 8 s, or 2 read intervals when those are longer.
        assert!(fresh(at(now - 9_000_000_000), MIN_MAX_AGE).is_err());
        assert!(fresh(at(now - 9_000_000_000), Duration::from_secs(32)).is_ok());
        // Year 1970, and the future.
        assert!(fresh(at(1_000_000_000_000), MIN_MAX_AGE).is_err());
        assert!(fresh(at(now + 1_000_000_000), MIN_MAX_AGE).is_err());
    }
}
