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
    AddSource, ChildToSupervisor, ClockBackendKind, ClockStatus, EngineToAdjuster, Failover, Leap as WireLeap,
    LogRecord, MAX_FAILOVERS, MAX_SOURCES, NtpSettings, RefclockSample, SourceStatus, TrackingStatus, UpstreamSettings,
};
use strata_proto::ntp::{LeapIndicator, NtpTimestamp, ReferenceId};
use strata_sync::discipline::{ClockAction, Discipline, DisciplineConfig, LeapSecMode, MakeStep};
use strata_sync::filter::{ClockFilter, FilterConfig};
use strata_sync::refclock::RawSample;
use strata_sync::selection::{Candidate, Selection, SelectionConfig, select};
use strata_sync::source::{NtpSource, Response, ServerOptions};
use strata_sync::{Leap, LocalTime, Sample, SelectOptions, SourceId};
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
    /// Polled (chronyc `online`), or not (`offline`).
    online: bool,
    /// Added at run time by an operator.
    added: bool,
    last_sample: Option<(Instant, Sample)>,
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
    /// Source id of the next upstream an operator adds (ids are never reused).
    next_id: u32,
    /// The last selection's verdicts, for the control plane.
    states: Vec<(SourceId, char)>,
    tracking: TrackingStatus,
    /// Mean square of the system offsets (chronyc's "RMS offset"), decaying.
    mean_square_offset: f64,
    failovers: std::collections::VecDeque<Failover>,
    failovers_total: u64,
    /// The adjuster authorised an operator step; the discipline takes it next.
    operator_step: bool,
}

impl Timekeeper {
    /// Set up before the sandbox: creates and connects one socket per upstream.
    pub fn new(settings: &NtpSettings, shared: Arc<Shared>) -> Result<Timekeeper, String> {
        let now = local_now(&shared);
        let mut random = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 1u8) | 1;
        let mut upstreams = Vec::new();
        for (i, u) in settings.upstreams.iter().enumerate() {
            random = xorshift(random);
            upstreams.push(Upstream::new(SourceId(i as u32), u, now, random)?);
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
            next_id: settings.upstreams.len() as u32,
            states: Vec::new(),
            tracking: TrackingStatus::default(),
            mean_square_offset: 0.0,
            failovers: std::collections::VecDeque::new(),
            failovers_total: 0,
            operator_step: false,
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
        self.upstreams.iter().filter(|u| u.online).map(|u| u.source.next_poll()).min().map(|at| {
            let wait_s = at.seconds_since(now).max(0.0);
            Instant::now() + Duration::from_secs_f64(wait_s.min(3600.0))
        })
    }

    /// Send the requests that are due.
    pub fn poll_due(&mut self) {
        let now = local_now(&self.shared);
        for u in &mut self.upstreams {
            if !u.online || u.source.next_poll() > now {
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
        // An operator may have deleted a source since the poll that woke us.
        if index >= self.upstreams.len() {
            return;
        }
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
                    u.last_sample = Some((Instant::now(), sample));
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
            None => {
                self.upstream(id).map_or(ReferenceId::from_bytes(*b"INIT"), |u| ReferenceId::from_ip(u.address.ip()))
            }
        }
    }

    fn upstream(&self, id: SourceId) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.source.id() == id)
    }

    fn peer_address(&self, id: SourceId) -> Option<SocketAddr> {
        self.upstream(id).map(|u| u.address)
    }

    /// How operators and logs name a source: its address, or a refclock's refid.
    fn source_name(&self, id: SourceId) -> String {
        match id.0.checked_sub(REFCLOCK_ID_BASE) {
            Some(i) => refid_name(self.refclocks[i as usize].settings.refid),
            None => self.peer_address(id).map(|a| a.to_string()).unwrap_or_default(),
        }
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
        self.states = selection.states.iter().map(|&(id, state)| (id, state.symbol())).collect();
        let Some(system) = selection.combined else {
            self.tracking.synchronised = false;
            return;
        };
        if self.system_peer != selection.system_peer {
            let from = self.system_peer.map(|id| self.source_name(id)).unwrap_or_default();
            let to = selection.system_peer.map(|id| self.source_name(id)).unwrap_or_default();
            info!(%from, %to, "selected a new system peer");
            if self.failovers.len() == MAX_FAILOVERS {
                self.failovers.pop_front();
            }
            self.failovers.push_back(Failover { time_unix_ns: now.0, from, to });
            self.failovers_total += 1;
            self.system_peer = selection.system_peer;
        }
        self.mean_square_offset = if self.tracking.reference_time_unix_ns == 0 {
            system.offset_s * system.offset_s
        } else {
            0.9 * self.mean_square_offset + 0.1 * system.offset_s * system.offset_s
        };
        self.tracking = TrackingStatus {
            reference: selection.system_peer.map(|id| self.source_name(id)).unwrap_or_default(),
            reference_id: selection.system_peer.map_or(0, |id| self.reference_id(id).to_bits()),
            stratum: system.stratum,
            reference_time_unix_ns: now.0,
            offset_s: -system.offset_s,
            rms_offset_s: self.mean_square_offset.sqrt(),
            // The correction speeds the clock up when positive: the clock itself is slow.
            frequency_ppm: -self.discipline.frequency_ppm(),
            skew_ppm: self.discipline.skew_ppm(),
            root_delay_s: system.root_delay_s,
            root_dispersion_s: system.root_dispersion_s,
            leap: leap_code(system.leap),
            synchronised: true,
        };
        if self.operator_step {
            self.operator_step = false;
            self.discipline.step_at_next_update();
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

    /// What the control plane shows: tracking, every source, the latest failovers.
    pub fn status(&self) -> (TrackingStatus, Vec<SourceStatus>, Vec<Failover>, u64) {
        let now = local_now(&self.shared);
        let state_of = |id: SourceId| self.states.iter().find(|(s, _)| *s == id).map(|&(_, c)| c);
        let mut sources = Vec::new();
        for u in &self.upstreams {
            let estimate = u.filter.estimate(now);
            let last = u.last_sample.as_ref();
            sources.push(SourceStatus {
                refclock: false,
                name: u.address.to_string(),
                state: if u.online { state_of(u.source.id()).unwrap_or('?') } else { 'o' },
                stratum: last.map_or(0, |(_, s)| s.stratum),
                poll_log2: u.source.poll_log2(),
                reach: u.source.reach(),
                last_sample_age_s: last.map(|(t, _)| t.elapsed().as_secs_f64()),
                offset_s: estimate.map_or(0.0, |e| e.offset_s),
                jitter_s: estimate.map_or(0.0, |e| e.jitter_s),
                delay_s: estimate.map_or(0.0, |e| e.delay_s),
                dispersion_s: estimate.map_or(0.0, |e| e.dispersion_s),
                samples: u.filter.samples().count() as u32,
                last_offset_s: last.map_or(0.0, |(_, s)| s.offset_s),
                root_delay_s: last.map_or(0.0, |(_, s)| s.root_delay_s),
                root_dispersion_s: last.map_or(0.0, |(_, s)| s.root_dispersion_s),
                reference_id: ReferenceId::from_ip(u.address.ip()).to_bits(),
                packets_sent: u.source.counters().packets_sent,
                packets_received: u.source.counters().packets_received,
                kod_received: u.source.counters().kod_received,
                prefer: u.select.prefer,
                noselect: u.select.noselect,
                online: u.online,
                added: u.added,
            });
        }
        for (i, r) in self.refclocks.iter().enumerate() {
            let estimate = r.filter.estimate(now);
            let last = r.filter.samples().last();
            sources.push(SourceStatus {
                refclock: true,
                name: refid_name(r.settings.refid),
                state: state_of(SourceId(REFCLOCK_ID_BASE + i as u32)).unwrap_or('?'),
                stratum: r.settings.stratum,
                poll_log2: r.poll_log2(),
                reach: r.reach(),
                last_sample_age_s: r.last_sample_age_s(),
                offset_s: estimate.map_or(0.0, |e| e.offset_s),
                jitter_s: estimate.map_or(0.0, |e| e.jitter_s),
                delay_s: estimate.map_or(0.0, |e| e.delay_s),
                dispersion_s: estimate.map_or(0.0, |e| e.dispersion_s),
                samples: r.filter.samples().count() as u32,
                last_offset_s: last.map_or(0.0, |s| s.offset_s),
                reference_id: ReferenceId::from_bytes(r.settings.refid).to_bits(),
                prefer: r.settings.prefer,
                noselect: r.settings.noselect,
                online: true,
                ..SourceStatus::default()
            });
        }
        sources.truncate(MAX_SOURCES);
        // No source selected but `local stratum`: the appliance serves its own
        // clock as a reference (chrony's `local`), and says so.
        let tracking = match self.local_stratum {
            Some(stratum) if !self.tracking.synchronised => TrackingStatus {
                reference: "LOCL".into(),
                reference_id: ReferenceId::LOCL.to_bits(),
                stratum: stratum.clamp(1, 15),
                reference_time_unix_ns: now.0,
                frequency_ppm: -self.discipline.frequency_ppm(),
                skew_ppm: self.discipline.skew_ppm(),
                synchronised: true,
                ..TrackingStatus::default()
            },
            _ => self.tracking.clone(),
        };
        (tracking, sources, self.failovers.iter().cloned().collect(), self.failovers_total)
    }

    /// `stratactl add server`: a new upstream, polled from now on.
    pub fn add_source(&mut self, add: &AddSource) -> Result<String, String> {
        if self.upstreams.iter().any(|u| u.address == add.address) {
            return Err(format!("{} is already a source", add.address));
        }
        if self.upstreams.len() + self.refclocks.len() >= MAX_SOURCES {
            return Err(format!("no room for another source: at most {MAX_SOURCES}"));
        }
        let minpoll = add.minpoll.unwrap_or(6);
        let maxpoll = add.maxpoll.unwrap_or(10).max(minpoll);
        let settings = UpstreamSettings {
            address: add.address,
            iburst: add.iburst,
            minpoll,
            maxpoll,
            prefer: add.prefer,
            noselect: false,
            trust: false,
            require: false,
            max_delay_s: 3.0,
            version: 4,
        };
        // Configured upstreams were checked with the file; an operator's is checked here.
        server_options(&settings).validate().map_err(|e| format!("{e:?}"))?;
        self.random = xorshift(self.random);
        let mut upstream = Upstream::new(SourceId(self.next_id), &settings, local_now(&self.shared), self.random)?;
        upstream.added = true;
        self.next_id += 1;
        self.upstreams.push(upstream);
        info!(source = %add.address, "source added by an operator");
        Ok(format!("added server {}", add.address))
    }

    /// `stratactl delete`.
    pub fn delete_source(&mut self, address: SocketAddr, out: &mut Outbox) -> Result<String, String> {
        let i = self.upstreams.iter().position(|u| u.address == address).ok_or(format!("no source {address}"))?;
        self.upstreams.remove(i);
        info!(source = %address, "source deleted by an operator");
        self.update(local_now(&self.shared), out);
        Ok(format!("deleted {address}"))
    }

    /// `stratactl online` / `offline`, for one source or all.
    pub fn set_online(&mut self, address: Option<SocketAddr>, online: bool) -> Result<String, String> {
        let mut changed = 0;
        for u in self.upstreams.iter_mut().filter(|u| address.is_none_or(|a| a == u.address)) {
            u.online = online;
            changed += 1;
        }
        match (address, changed) {
            (Some(a), 0) => Err(format!("no source {a}")),
            _ => {
                let what = if online { "online" } else { "offline" };
                info!(sources = changed, "{what} by an operator");
                Ok(format!("{changed} source(s) {what}"))
            }
        }
    }

    /// `stratactl reselect`: select again now.
    pub fn reselect(&mut self, out: &mut Outbox) -> String {
        self.update(local_now(&self.shared), out);
        match self.system_peer {
            Some(id) => format!("reselected: {}", self.source_name(id)),
            None => "reselected: no source is selectable".into(),
        }
    }

    /// The adjuster authorised an operator step: the next estimate steps.
    pub fn step_authorised(&mut self) -> Result<String, String> {
        match self.clock.as_ref().map(|c| c.backend) {
            Some(ClockBackendKind::None) => {
                Err("the clock backend is none: strata measures and serves, it never steps".into())
            }
            _ => {
                self.operator_step = true;
                Ok("the clock steps by the whole offset at the next estimate".into())
            }
        }
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

impl Upstream {
    /// Creates and connects the upstream's own socket. Before the sandbox for
    /// configured upstreams; afterwards for added ones (socket and connect are
    /// allowed to the engine for UDP only, see policy/seccomp).
    fn new(id: SourceId, u: &UpstreamSettings, now: LocalTime, random: u64) -> Result<Upstream, String> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrStorage, connect, socket};
        let family = if u.address.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        let fail = |e: nix::Error| format!("upstream {}: {e}", u.address);
        // Non-blocking from the start: no fcntl/ioctl needed afterwards.
        let fd =
            socket(family, SockType::Datagram, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None).map_err(fail)?;
        setsockopt(&fd, sockopt::ReceiveTimestampns, &true).map_err(fail)?;
        connect(fd.as_raw_fd(), &SockaddrStorage::from(u.address)).map_err(fail)?;
        let socket = UdpSocket::from(fd);
        let options = server_options(u);
        let select = options.select;
        let source = NtpSource::new(id, options, now, random);
        let filter = ClockFilter::new(FilterConfig { max_delay_s: u.max_delay_s, ..FilterConfig::default() });
        Ok(Upstream {
            address: u.address,
            socket,
            source,
            filter,
            select,
            online: true,
            added: false,
            last_sample: None,
        })
    }
}

fn server_options(u: &UpstreamSettings) -> ServerOptions {
    ServerOptions {
        minpoll: u.minpoll,
        maxpoll: u.maxpoll,
        iburst: u.iburst,
        select: SelectOptions { prefer: u.prefer, noselect: u.noselect, trust: u.trust, require: u.require },
        max_delay_s: u.max_delay_s,
        version: u.version,
    }
}

/// A refid as text: "GPS\0" → "GPS"; one that is not printable in hex.
fn refid_name(refid: [u8; 4]) -> String {
    let id = ReferenceId::from_bytes(refid);
    id.ascii().map_or_else(|| format!("{:08X}", id.to_bits()), str::to_string)
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
