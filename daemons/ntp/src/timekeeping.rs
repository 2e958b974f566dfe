//! Keeping time: the engine's client side. It polls the upstream servers, feeds
//! their samples through strata-sync's filter → selection → discipline, asks the
//! adjuster for the resulting clock changes, and tells the serving threads what to
//! say about the clock (stratum, reference, root delay and dispersion, leap).
//!
//! The algorithms are sans-IO (strata-sync); this module is the I/O around them.
//! Each upstream has its own UDP socket, created and connected before the sandbox
//! (so the engine needs neither `socket` nor `connect` afterwards, and a connected
//! socket accepts replies from that server's address only).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use strata_process::child::Outbox;
use strata_proto::ipc::{
    ChildToSupervisor, ClockBackendKind, ClockStatus, EngineToAdjuster, Leap as WireLeap, LogRecord, NtpSettings,
    RefclockSample,
};
use strata_proto::ntp::{LeapIndicator, NtpTimestamp, ReferenceId};
use strata_sync::discipline::{ClockAction, Discipline, DisciplineConfig, LeapSecMode, MakeStep};
use strata_sync::filter::{ClockFilter, FilterConfig};
use strata_sync::refclock::RawSample;
use strata_sync::selection::{Candidate, Selection, SelectionConfig, select};
use strata_sync::source::{NtpSource, Response, ServerOptions};
use strata_sync::{Leap, LocalTime, SelectOptions, SourceId};
use tracing::{debug, info, warn};

use crate::refclock::RefclockSource;
use crate::server::ServerState;
use crate::workers::{Shared, system_now_ns};

/// Largest slew the adjuster applies (policy/clock.toml): the discipline must plan
/// with the rate the adjuster really uses.
const ADJUSTER_SLEW_RATE_PPM: f64 = strata_policy::clock::MAX_SLEW_RATE_PPM;
const ADJUSTER_MAX_FREQUENCY_PPM: f64 = strata_policy::clock::MAX_FREQUENCY_PPM;

/// At start-up, selection waits (up to this long) until a majority of the
/// configured sources have samples: otherwise whichever source answers first,
/// a falseticker included, is selected alone for a moment.
const STARTUP_QUORUM_WAIT: Duration = Duration::from_secs(15);

/// Source ids of refclocks start here, after any number of upstreams.
const REFCLOCK_ID_BASE: u32 = 1 << 16;

struct Upstream {
    address: SocketAddr,
    socket: UdpSocket,
    source: NtpSource,
    filter: ClockFilter,
    select: SelectOptions,
}

pub struct Timekeeper {
    shared: Arc<Shared>,
    upstreams: Vec<Upstream>,
    refclocks: Vec<RefclockSource>,
    discipline: Discipline,
    selection_config: SelectionConfig,
    local_stratum: Option<u8>,
    /// When the engine started: see [`STARTUP_QUORUM_WAIT`].
    started: Instant,
    /// Report log records to the supervisor (a statistics log is configured).
    log_records: bool,
    /// The adjuster's latest report; `None` while it is down.
    clock: Option<ClockStatus>,
    /// What the last selection decided (for logging changes of the system peer).
    system_peer: Option<SourceId>,
    /// The time of the system peer's newest sample the discipline has used: each
    /// measurement steers the clock once (a filter estimate can rest on an older
    /// sample for several polls, and feeding it again would count it twice).
    last_used: Option<LocalTime>,
    random: u64,
}

impl Timekeeper {
    /// Set up before the sandbox: creates and connects one socket per upstream.
    pub fn new(settings: &NtpSettings, shared: Arc<Shared>) -> Result<Timekeeper, String> {
        let now = local_now(&shared);
        let mut random = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 1u8) | 1;
        let mut upstreams = Vec::new();
        for (i, u) in settings.upstreams.iter().enumerate() {
            let bind: SocketAddr =
                if u.address.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
            let socket = UdpSocket::bind(bind).map_err(|e| format!("upstream {}: {e}", u.address))?;
            socket.connect(u.address).map_err(|e| format!("upstream {}: {e}", u.address))?;
            socket.set_nonblocking(true).map_err(|e| format!("upstream {}: {e}", u.address))?;
            setsockopt(&socket, sockopt::ReceiveTimestampns, &true)
                .map_err(|e| format!("upstream {}: {e}", u.address))?;
            let select = SelectOptions { prefer: u.prefer, noselect: u.noselect, trust: u.trust, require: u.require };
            let options = ServerOptions {
                minpoll: u.minpoll,
                maxpoll: u.maxpoll,
                iburst: u.iburst,
                select,
                max_delay_s: u.max_delay_s,
                version: u.version,
            };
            random = xorshift(random);
            let source = NtpSource::new(SourceId(i as u32), options, now, random);
            let filter = ClockFilter::new(FilterConfig { max_delay_s: u.max_delay_s, ..FilterConfig::default() });
            upstreams.push(Upstream { address: u.address, socket, source, filter, select });
        }
        let mut discipline = Discipline::new(DisciplineConfig {
            make_step: settings.makestep.map(|(threshold_s, limit)| MakeStep { threshold_s, limit }),
            max_slew_rate_ppm: ADJUSTER_SLEW_RATE_PPM,
            max_frequency_ppm: ADJUSTER_MAX_FREQUENCY_PPM,
            leap_sec_mode: match settings.leap_sec_mode {
                1 => LeapSecMode::Step,
                2 => LeapSecMode::Slew,
                3 => LeapSecMode::Ignore,
                _ => LeapSecMode::System,
            },
            ..DisciplineConfig::default()
        })
        .map_err(|e| format!("discipline: {e:?}"))?;
        if let Some((ppm, skew_ppm)) = settings.initial_frequency {
            info!(ppm, skew_ppm, "frequency from the driftfile");
            discipline = discipline.with_initial_frequency(ppm).with_initial_skew(skew_ppm);
        }
        let selection_config = SelectionConfig { min_sources: usize::from(settings.minsources), ..Default::default() };
        let refclocks = settings.refclocks.iter().map(|r| RefclockSource::new(r.clone())).collect();
        Ok(Timekeeper {
            shared,
            upstreams,
            refclocks,
            discipline,
            selection_config,
            local_stratum: settings.local_stratum,
            started: Instant::now(),
            log_records: settings.log_records,
            clock: None,
            system_peer: None,
            last_used: None,
            random,
        })
    }

    pub fn sockets(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.upstreams.iter().map(|u| u.socket.as_fd())
    }

    pub fn clock_status(&mut self, status: ClockStatus) {
        self.clock = Some(status);
    }

    /// When the next upstream is due.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let now = local_now(&self.shared);
        self.upstreams.iter().map(|u| u.source.next_poll()).min().map(|at| {
            let wait_s = at.seconds_since(now).max(0.0);
            Instant::now() + Duration::from_secs_f64(wait_s.min(3600.0))
        })
    }

    /// Send the requests that are due.
    pub fn poll_due(&mut self) {
        let now = local_now(&self.shared);
        for u in &mut self.upstreams {
            if u.source.next_poll() > now {
                continue;
            }
            self.random = xorshift(self.random);
            let mut request = [0u8; 48];
            // T1 as close to the send as the sans-IO interface allows.
            let t1 = local_now(&self.shared);
            if let Some(len) = u.source.poll(t1, self.random, &mut request)
                && let Err(e) = u.socket.send(&request[..len])
            {
                debug!(upstream = %u.address, "request not sent: {e}");
            }
        }
    }

    /// A reply may be waiting on upstream `index`'s socket.
    pub fn on_readable(&mut self, index: usize, out: &mut Outbox) {
        let mut buf = [0u8; 1024];
        loop {
            let (len, kernel_ns) = {
                let u = &self.upstreams[index];
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let mut cmsg = nix::cmsg_space!(TimeSpec);
                match recvmsg::<()>(u.socket.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT) {
                    Ok(msg) => {
                        let kernel_ns = msg.cmsgs().ok().and_then(|mut c| {
                            c.find_map(|m| match m {
                                ControlMessageOwned::ScmTimestampns(ts) => {
                                    Some(ts.tv_sec() * 1_000_000_000 + ts.tv_nsec())
                                }
                                _ => None,
                            })
                        });
                        (msg.bytes, kernel_ns)
                    }
                    Err(_) => return,
                }
            };
            // T4: the kernel's receive time, on the served clock's time scale.
            let system_ns = kernel_ns.unwrap_or_else(system_now_ns);
            let t4 = LocalTime(system_ns + (self.shared.time_offset_s(system_ns) * 1e9) as i64);
            let u = &mut self.upstreams[index];
            match u.source.handle_response(&buf[..len], t4) {
                Response::Sample(sample) => {
                    debug!(upstream = %u.address, offset_s = sample.offset_s, delay_s = sample.delay_s, "sample");
                    u.filter.add(sample);
                    if self.log_records {
                        let source = u.address;
                        out.report(ChildToSupervisor::Log(LogRecord::Measurement {
                            time_unix_ns: sample.time.0,
                            source,
                            leap: leap_code(sample.leap),
                            stratum: sample.stratum,
                            offset_s: sample.offset_s,
                            delay_s: sample.delay_s,
                            dispersion_s: sample.dispersion_s,
                            root_delay_s: sample.root_delay_s,
                            root_dispersion_s: sample.root_dispersion_s,
                        }));
                        if let Some(e) = u.filter.estimate(t4) {
                            out.report(ChildToSupervisor::Log(LogRecord::Statistics {
                                time_unix_ns: t4.0,
                                source,
                                offset_s: e.offset_s,
                                jitter_s: e.jitter_s,
                                dispersion_s: e.dispersion_s,
                                reach: u.source.reach(),
                            }));
                        }
                    }
                    self.update(t4, out);
                }
                Response::KissOfDeath(code) => warn!(upstream = %u.address, ?code, "kiss-o'-death"),
                Response::Ignored(reason) => debug!(upstream = %u.address, ?reason, "reply ignored"),
            }
        }
    }

    /// A sample from the refclock reader (index checked by the caller).
    pub fn on_refclock_sample(&mut self, sample: &RefclockSample, out: &mut Outbox) -> Result<(), String> {
        let r = self.refclocks.get_mut(usize::from(sample.refclock)).ok_or("no such refclock")?;
        if !(sample.offset_s.is_finite() && sample.dispersion_s.is_finite() && sample.dispersion_s >= 0.0) {
            return Err(format!(
                "a refclock sample with {} s offset, {} s dispersion",
                sample.offset_s, sample.dispersion_s
            ));
        }
        // A PPS without `lock` knows only the phase of the second; the second
        // itself is the clock's, which must be synchronised within 0.5 s (chrony).
        if r.settings.pulse_unlocked && !synchronised_within(&self.shared, 0.5) {
            debug!(refclock = sample.refclock, "pulse ignored: the clock is not synchronised to number its second");
            return Ok(());
        }
        // The reader measures against the system clock; the served clock may be a
        // model or a PHC: re-express time and offset against it.
        let clock_offset_s = self.shared.time_offset_s(sample.system_time_ns);
        let time = LocalTime(sample.system_time_ns + (clock_offset_s * 1e9) as i64);
        let raw = RawSample {
            time,
            offset_s: sample.offset_s + r.settings.offset_s - clock_offset_s,
            dispersion_s: sample.dispersion_s,
        };
        // One filtered sample per poll reaches selection.
        if r.on_sample(usize::from(sample.refclock), raw, Instant::now()) {
            self.update(time, out);
        }
        Ok(())
    }

    fn reference_id(&self, id: SourceId) -> ReferenceId {
        match id.0.checked_sub(REFCLOCK_ID_BASE) {
            Some(i) => ReferenceId::from_bytes(self.refclocks[i as usize].settings.refid),
            None => ReferenceId::from_ip(self.upstreams[id.0 as usize].address.ip()),
        }
    }

    fn peer_address(&self, id: SourceId) -> Option<SocketAddr> {
        (id.0 < REFCLOCK_ID_BASE).then(|| self.upstreams[id.0 as usize].address)
    }

    /// Selection, discipline, and what the server says.
    fn update(&mut self, now: LocalTime, out: &mut Outbox) {
        let mut candidates: Vec<Candidate> = self
            .upstreams
            .iter()
            .filter_map(|u| {
                let estimate = u.filter.estimate(now)?;
                Some(Candidate { id: u.source.id(), options: u.select, estimate, reachable: u.source.reachable() })
            })
            .collect();
        for (i, r) in self.refclocks.iter().enumerate() {
            let Some(estimate) = r.filter.estimate(now) else { continue };
            let s = &r.settings;
            candidates.push(Candidate {
                id: SourceId(REFCLOCK_ID_BASE + i as u32),
                options: SelectOptions { prefer: s.prefer, noselect: s.noselect, trust: s.trust, require: s.require },
                estimate,
                reachable: r.reachable(),
            });
        }
        let configured = self.upstreams.len() + self.refclocks.len();
        let quorum = if self.started.elapsed() < STARTUP_QUORUM_WAIT { configured / 2 + 1 } else { 1 };
        let selection = select(if candidates.len() >= quorum { &candidates } else { &[] }, now, &self.selection_config);
        self.publish(&selection, now);
        let Some(system) = selection.combined else { return };
        if self.system_peer != selection.system_peer {
            let peer = selection.system_peer.map(|id| self.reference_id(id).to_string());
            info!(?peer, "selected a new system peer");
            self.system_peer = selection.system_peer;
        }
        let peer_sample_time =
            selection.system_peer.and_then(|peer| candidates.iter().find(|c| c.id == peer)).map(|c| c.estimate.time);
        if peer_sample_time.is_none() || peer_sample_time <= self.last_used {
            return;
        }
        self.last_used = peer_sample_time;
        if self.log_records {
            out.report(ChildToSupervisor::Log(LogRecord::Tracking {
                time_unix_ns: now.0,
                reference: selection.system_peer.and_then(|id| self.peer_address(id)),
                stratum: system.stratum,
                frequency_ppm: self.discipline.frequency_ppm(),
                skew_ppm: self.discipline.skew_ppm(),
                offset_s: system.offset_s,
                leap: leap_code(system.leap),
                root_delay_s: system.root_delay_s,
                root_dispersion_s: system.root_dispersion_s,
            }));
        }
        // Only a clock the adjuster can move is disciplined; with backend `none`
        // the engine serves and measures, like chronyd -x.
        let adjustable = self.clock.as_ref().is_some_and(|c| c.backend != ClockBackendKind::None);
        if !adjustable {
            return;
        }
        let estimate = strata_sync::discipline::SystemEstimate {
            time: now,
            offset_s: system.offset_s,
            root_distance_s: system.root_delay_s / 2.0 + system.root_dispersion_s,
            leap: system.leap,
        };
        let actions = match self.discipline.update(estimate) {
            Ok(actions) => actions,
            Err(e) => {
                warn!("discipline refused the estimate: {e:?}");
                return;
            }
        };
        for action in actions {
            let request = match action {
                ClockAction::Step { offset_s } => {
                    info!(offset_s, "stepping the clock");
                    for u in &mut self.upstreams {
                        u.filter.apply_step(offset_s);
                    }
                    EngineToAdjuster::Step { offset_s }
                }
                ClockAction::Slew { offset_s } => EngineToAdjuster::Slew { offset_s },
                ClockAction::SetFrequency { ppm } => EngineToAdjuster::SetFrequency { ppm },
                ClockAction::SetLeap(leap) => EngineToAdjuster::SetLeap(match leap {
                    Leap::InsertSecond => WireLeap::InsertSecond,
                    Leap::DeleteSecond => WireLeap::DeleteSecond,
                    Leap::None | Leap::Unsynchronised => WireLeap::None,
                }),
            };
            out.send(&request);
        }
        // For the driftfile, which the supervisor keeps.
        out.report(ChildToSupervisor::Drift {
            frequency_ppm: self.discipline.frequency_ppm(),
            skew_ppm: self.discipline.skew_ppm(),
        });
    }

    /// Tell the serving threads what to answer.
    fn publish(&self, selection: &Selection, now: LocalTime) {
        let state = match (&selection.combined, selection.system_peer) {
            (Some(system), Some(peer)) => ServerState {
                leap: match system.leap {
                    Leap::None => LeapIndicator::NoWarning,
                    Leap::InsertSecond => LeapIndicator::InsertSecond,
                    Leap::DeleteSecond => LeapIndicator::DeleteSecond,
                    Leap::Unsynchronised => LeapIndicator::Unsynchronized,
                },
                stratum: system.stratum,
                reference_id: self.reference_id(peer),
                reference_time: NtpTimestamp::from_unix_ns(now.0),
                root_delay_s: system.root_delay_s,
                root_dispersion_s: system.root_dispersion_s,
                precision_log2: ServerState::DEFAULT_PRECISION_LOG2,
            },
            _ => match self.local_stratum {
                Some(stratum) => ServerState::local(stratum),
                None => ServerState::unsynchronised(),
            },
        };
        *self.shared.serving.write().unwrap_or_else(|e| e.into_inner()) = state;
    }
}

/// Whether the appliance serves a synchronised time (a selected source or a local
/// reference) with a root distance below `distance_s`.
fn synchronised_within(shared: &Shared, distance_s: f64) -> bool {
    let serving = shared.serving.read().unwrap_or_else(|e| e.into_inner());
    serving.leap != LeapIndicator::Unsynchronized && serving.root_delay_s / 2.0 + serving.root_dispersion_s < distance_s
}

/// The served clock now, as the sans-IO core counts time.
fn local_now(shared: &Shared) -> LocalTime {
    let system_ns = system_now_ns();
    LocalTime(system_ns + (shared.time_offset_s(system_ns) * 1e9) as i64)
}

fn leap_code(leap: Leap) -> u8 {
    match leap {
        Leap::None => 0,
        Leap::InsertSecond => 1,
        Leap::DeleteSecond => 2,
        Leap::Unsynchronised => 3,
    }
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}
