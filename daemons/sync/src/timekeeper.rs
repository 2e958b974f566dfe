//! The whole time-keeping system, sans I/O: every source (NTP upstreams and
//! refclocks), the start-up quorum, reachability and failover, selection,
//! combination, the discipline and the tracking state.
//!
//! A driver (the engine, `strata-simnode`, `cargo xtask sim`) owns the sockets, the
//! timers and the channel to the clock adjuster. It hands every input in with `now`
//! (a [`Monotonic`] reading, for ages and timeouts) and, where the input needs one, a
//! reading of the disciplined clock ([`LocalTime`]); it carries out the returned
//! [`Action`]s in order. Nothing here reads a clock, a socket or a random source.
//!
//! The pipeline, at each new measurement:
//! sample → the source's `ClockFilter` → `select` over every source with an estimate
//! (after the start-up quorum) → [`Action::Serve`] (what the server says) → if the
//! system peer's newest sample has not steered the clock yet and the clock can be
//! moved: `Discipline::update` → [`Action::Clock`] requests → [`Action::Drift`].

use std::collections::VecDeque;
use std::net::SocketAddr;

use strata_proto::ipc::{
    EngineToAdjuster, Failover, KernelLeap, LogRecord, MAX_FAILOVERS, MAX_SOURCES, NtpSettings, RefclockSourceSettings,
    SourceStatus, TrackingStatus, UpstreamSettings,
};
use strata_proto::ntp::{LeapIndicator, NtpTimestamp, ReferenceId};

use crate::discipline::{ClockAction, ClockEstimate, ConfigError, Discipline, DisciplineConfig, MakeStep};
use crate::filter::{ClockFilter, Drift, FilterConfig};
use crate::refclock::{RawSample, RefclockEvent, RefclockSource};
use crate::selection::{Candidate, Selection, SelectionConfig, SourceState, select};
use crate::serving::ServerState;
use crate::source::{IgnoreReason, NtpSource, Response, ServerOptions};
use crate::{LocalTime, Monotonic, Sample, SelectOptions, SourceId};

/// At start-up, selection waits (up to this long) until a majority of the
/// configured sources have samples: otherwise whichever source answers first,
/// a falseticker included, is selected alone for a moment.
pub const STARTUP_QUORUM_WAIT_S: f64 = 15.0;

/// Source ids of refclocks start here, after any number of upstreams.
const REFCLOCK_ID_BASE: u32 = 1 << 16;

/// A pulse without a `lock` numbers its second from the disciplined clock, which
/// must then be synchronised within this root distance (chrony's rule).
const PULSE_SYNC_LIMIT_S: f64 = 0.5;

/// Everything the system is built from.
#[derive(Clone, Debug)]
pub struct TimekeeperConfig {
    pub upstreams: Vec<UpstreamSettings>,
    pub refclocks: Vec<RefclockSourceSettings>,
    pub selection: SelectionConfig,
    /// The regressions' window (`minsamples`, `maxsamples`) for every source.
    pub regression_points: (usize, usize),
    /// The discipline, with its rates set to the adjuster's.
    pub discipline: Discipline,
    /// chrony's `local stratum N`.
    pub local_stratum: Option<u8>,
    /// Emit [`Action::Log`] records (a statistics log is configured).
    pub log_records: bool,
}

impl TimekeeperConfig {
    /// The engine's settings, with the clock adjuster's slew and frequency limits
    /// (the discipline must plan with the rates the adjuster really uses).
    pub fn from_settings(
        settings: &NtpSettings,
        max_slew_rate_ppm: f64,
        max_frequency_ppm: f64,
    ) -> Result<TimekeeperConfig, ConfigError> {
        let mut discipline = Discipline::new(DisciplineConfig {
            make_step: settings.makestep.map(|(threshold_s, limit)| MakeStep { threshold_s, limit }),
            max_slew_rate_ppm,
            max_frequency_ppm,
            leap_sec_mode: settings.leap_sec_mode,
            max_update_skew_ppm: settings.selection.max_update_skew_ppm,
        })?;
        let s = &settings.selection;
        if let Some((ppm, skew_ppm)) = settings.initial_frequency {
            discipline = discipline.with_initial_frequency(ppm).with_initial_skew(skew_ppm);
        }
        Ok(TimekeeperConfig {
            upstreams: settings.upstreams.clone(),
            refclocks: settings.refclocks.clone(),
            selection: SelectionConfig {
                min_sources: usize::from(settings.minsources),
                max_distance_s: s.max_distance_s,
                max_jitter_s: s.max_jitter_s,
                combine_limit: s.combine_limit,
                stratum_weight_s: s.stratum_weight_s,
                reselect_distance_s: s.reselect_distance_s,
            },
            regression_points: (usize::from(s.min_samples), usize::from(s.max_samples)),
            discipline,
            local_stratum: settings.local_stratum,
            log_records: settings.log_records,
        })
    }
}

/// What the driver must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send `packet` to the upstream `source`'s server.
    Send { source: SourceId, packet: [u8; 48], len: usize },
    /// Ask the clock adjuster for this change.
    Clock(ClockAction),
    /// What the NTP server says about the clock from now on.
    Serve(ServerState),
    /// The discipline's frequency, for the driftfile.
    Drift { frequency_ppm: f64, skew_ppm: f64 },
    /// A statistics-log record.
    Log(LogRecord),
    /// The system peer changed (also kept for [`Timekeeper::failovers`]).
    Failover(Failover),
    /// Something an operator should read in the log.
    Notice(String),
}

struct Upstream {
    address: SocketAddr,
    source: NtpSource,
    filter: ClockFilter,
    /// Polled (chronyc `online`), or not (`offline`).
    online: bool,
    /// Added at run time by an operator.
    added: bool,
    last_sample: Option<(Monotonic, Sample)>,
}

/// The time-keeping system. See the module documentation.
pub struct Timekeeper {
    upstreams: Vec<Upstream>,
    refclocks: Vec<RefclockSource>,
    discipline: Discipline,
    selection_config: SelectionConfig,
    local_stratum: Option<u8>,
    log_records: bool,
    /// When the system started: see [`STARTUP_QUORUM_WAIT_S`].
    started: Monotonic,
    /// Whether the adjuster can move the clock (a backend other than `none`, and up).
    adjustable: bool,
    /// What the last selection decided (for logging changes of the system peer).
    system_peer: Option<SourceId>,
    /// The newest sample time of the combined sources the discipline has used: a
    /// new sample of any of them moves the combined estimate and updates the clock,
    /// and none is counted twice.
    last_used: Option<LocalTime>,
    /// Source id of the next upstream an operator adds (ids are never reused).
    next_id: u32,
    /// The last selection's verdicts (chronyc's state symbols).
    states: Vec<(SourceId, char)>,
    tracking: TrackingStatus,
    /// What the server says now.
    serving: ServerState,
    /// Mean square of the system offsets (chronyc's "RMS offset"), decaying.
    mean_square_offset: f64,
    failovers: VecDeque<Failover>,
    failovers_total: u64,
    /// The adjuster authorised an operator step; the discipline takes it next.
    operator_step: bool,
    /// `minsamples`, `maxsamples` for sources added at run time.
    regression_points: (usize, usize),
}

impl Timekeeper {
    /// `random` seeds each upstream's first transmit cookie.
    pub fn new(config: TimekeeperConfig, now: Monotonic, clock: LocalTime, random: &mut impl FnMut() -> u64) -> Self {
        let upstreams = config
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| Upstream::new(SourceId(i as u32), u, config.regression_points, clock, random()))
            .collect::<Vec<_>>();
        let serving = match config.local_stratum {
            Some(stratum) => ServerState::local(stratum),
            None => ServerState::unsynchronised(),
        };
        Timekeeper {
            next_id: upstreams.len() as u32,
            upstreams,
            refclocks: config
                .refclocks
                .into_iter()
                .map(|settings| RefclockSource::new(settings).with_regression_points(config.regression_points))
                .collect(),
            regression_points: config.regression_points,
            discipline: config.discipline,
            selection_config: config.selection,
            local_stratum: config.local_stratum,
            log_records: config.log_records,
            started: now,
            adjustable: false,
            system_peer: None,
            last_used: None,
            states: Vec::new(),
            tracking: TrackingStatus::default(),
            serving,
            mean_square_offset: 0.0,
            failovers: VecDeque::new(),
            failovers_total: 0,
            operator_step: false,
        }
    }

    /// Whether the adjuster can move the clock. With backend `none` (or while the
    /// adjuster is down) the system measures and serves but never steers, like
    /// chronyd -x.
    pub fn set_adjustable(&mut self, adjustable: bool) {
        self.adjustable = adjustable;
    }

    /// The upstreams' ids and addresses, for the driver's sockets.
    pub fn upstreams(&self) -> impl Iterator<Item = (SourceId, SocketAddr)> + '_ {
        self.upstreams.iter().map(|u| (u.source.id(), u.address))
    }

    /// When the next online upstream is due, on the disciplined clock.
    pub fn next_poll(&self) -> Option<LocalTime> {
        self.upstreams.iter().filter(|u| u.online).map(|u| u.source.next_poll()).min()
    }

    /// What the server says now.
    pub fn serving(&self) -> &ServerState {
        &self.serving
    }

    /// The discipline (its frequency, skew, clock updates).
    pub fn discipline(&self) -> &Discipline {
        &self.discipline
    }

    /// Send the requests that are due at `clock`.
    pub fn handle_timer(&mut self, clock: LocalTime, random: &mut impl FnMut() -> u64) -> Vec<Action> {
        let mut actions = Vec::new();
        for u in &mut self.upstreams {
            if !u.online || u.source.next_poll() > clock {
                continue;
            }
            let mut packet = [0u8; 48];
            if let Some(len) = u.source.poll(clock, [random(), random()], &mut packet) {
                actions.push(Action::Send { source: u.source.id(), packet, len });
            }
        }
        actions
    }

    /// The kernel's transmit timestamp of `source`'s latest request, on the
    /// disciplined clock: its true T1 (see [`NtpSource::transmitted`]).
    pub fn handle_transmit_timestamp(&mut self, source: SourceId, sent: LocalTime) {
        if let Some(u) = self.upstreams.iter_mut().find(|u| u.source.id() == source) {
            u.source.transmitted(sent);
        }
    }

    /// A datagram from upstream `source`'s server, received at `receive_time` on the
    /// disciplined clock (the kernel's timestamp where there is one).
    pub fn handle_packet(
        &mut self,
        source: SourceId,
        packet: &[u8],
        receive_time: LocalTime,
        now: Monotonic,
    ) -> Result<Vec<Action>, IgnoredPacket> {
        // An operator may have deleted the source since the request.
        let Some(u) = self.upstreams.iter_mut().find(|u| u.source.id() == source) else {
            return Err(IgnoredPacket::NoSuchSource);
        };
        let sample = match u.source.handle_response(packet, receive_time) {
            Response::Sample(sample) => sample,
            Response::KissOfDeath(code) => {
                return Ok(vec![Action::Notice(format!("kiss-o'-death {code:?} from {}", u.address))]);
            }
            Response::Ignored(reason) => return Err(IgnoredPacket::Ignored(reason)),
        };
        let mut actions = Vec::new();
        // A sample the filter rejects (a spike, beyond maxdelay) is the filter's
        // business; selection still runs, as the estimates age.
        let _ = u.filter.add_in_frame(sample, self.discipline.phase_correction_s(sample.time));
        u.last_sample = Some((now, sample));
        if self.log_records {
            actions.push(Action::Log(LogRecord::Measurement {
                time_unix_ns: sample.time.0,
                source: u.address,
                leap: sample.leap,
                stratum: sample.stratum,
                offset_s: sample.offset_s,
                delay_s: sample.delay_s,
                dispersion_s: sample.dispersion_s,
                root_delay_s: sample.root_delay_s,
                root_dispersion_s: sample.root_dispersion_s,
                interleaved: u.source.last_interleaved(),
            }));
            // The regression's view, as chrony's statistics.log has it.
            if let Some(e) = u.filter.estimate_in_frame(receive_time, self.discipline.phase_correction_s(receive_time))
            {
                actions.push(Action::Log(LogRecord::Statistics {
                    time_unix_ns: receive_time.0,
                    source: u.address,
                    offset_s: e.offset_s,
                    jitter_s: e.jitter_s,
                    dispersion_s: e.dispersion_s,
                    reach: u.source.reach(),
                }));
            }
        }
        self.update(receive_time, now, &mut actions);
        Ok(actions)
    }

    /// A raw sample of refclock `index` (reference − disciplined clock, taken at
    /// `raw.time` on the disciplined clock), received at `now`.
    pub fn handle_refclock_sample(
        &mut self,
        index: usize,
        raw: RawSample,
        now: Monotonic,
    ) -> Result<Vec<Action>, String> {
        if !(raw.offset_s.is_finite() && raw.dispersion_s.is_finite() && raw.dispersion_s >= 0.0) {
            return Err(format!("a refclock sample with {} s offset, {} s dispersion", raw.offset_s, raw.dispersion_s));
        }
        let synchronised = self.synchronised_within(PULSE_SYNC_LIMIT_S);
        let r = self.refclocks.get_mut(index).ok_or_else(|| format!("no refclock {index}"))?;
        // A PPS without `lock` knows only the phase of the second; the second
        // itself is the clock's, which must be synchronised (chrony).
        if r.settings.pulse_unlocked && !synchronised {
            return Ok(Vec::new());
        }
        let raw = RawSample { offset_s: raw.offset_s + r.settings.offset_s, ..raw };
        let mut actions = Vec::new();
        let discipline = &self.discipline;
        match r.on_sample(raw, now, |time| discipline.phase_correction_s(time)) {
            RefclockEvent::Filtered => self.update(raw.time, now, &mut actions),
            RefclockEvent::Back => {
                actions.push(Action::Notice(format!("refclock {} is back", refid_name(r.settings.refid))))
            }
            RefclockEvent::Collected | RefclockEvent::NoSample(_) => {}
        }
        Ok(actions)
    }

    /// `stratactl add server`: a new upstream, polled from `clock` on.
    pub fn add_upstream(
        &mut self,
        settings: &UpstreamSettings,
        clock: LocalTime,
        random: u64,
    ) -> Result<SourceId, String> {
        if self.upstreams.iter().any(|u| u.address == settings.address) {
            return Err(format!("{} is already a source", settings.address));
        }
        if self.upstreams.len() + self.refclocks.len() >= MAX_SOURCES {
            return Err(format!("no room for another source: at most {MAX_SOURCES}"));
        }
        server_options(settings).validate().map_err(|e| format!("{e:?}"))?;
        let id = SourceId(self.next_id);
        self.next_id += 1;
        let mut upstream = Upstream::new(id, settings, self.regression_points, clock, random);
        upstream.added = true;
        self.upstreams.push(upstream);
        Ok(id)
    }

    /// `stratactl delete`: the source is gone; selection runs again.
    pub fn delete_upstream(
        &mut self,
        address: SocketAddr,
        clock: LocalTime,
        now: Monotonic,
    ) -> Result<(SourceId, Vec<Action>), String> {
        let i = self.upstreams.iter().position(|u| u.address == address).ok_or(format!("no source {address}"))?;
        let id = self.upstreams.remove(i).source.id();
        let mut actions = Vec::new();
        self.update(clock, now, &mut actions);
        Ok((id, actions))
    }

    /// `stratactl online` / `offline`, for one source or all: how many changed.
    pub fn set_online(&mut self, address: Option<SocketAddr>, online: bool) -> Result<usize, String> {
        let mut changed = 0;
        for u in self.upstreams.iter_mut().filter(|u| address.is_none_or(|a| a == u.address)) {
            u.online = online;
            changed += 1;
        }
        match (address, changed) {
            (Some(a), 0) => Err(format!("no source {a}")),
            _ => Ok(changed),
        }
    }

    /// `stratactl reselect`: select again now; the name of the system peer.
    pub fn reselect(&mut self, clock: LocalTime, now: Monotonic) -> (Option<String>, Vec<Action>) {
        let mut actions = Vec::new();
        self.update(clock, now, &mut actions);
        (self.system_peer.map(|id| self.source_name(id)), actions)
    }

    /// Whether the adjuster still takes automatic steps (`ClockStatus`): when it
    /// does not, offsets beyond `makestep` are slewed.
    /// The adjuster's slew rate for its backend (`ipc::backend_slew_rate_ppm`), which
    /// the discipline models the slews' progress with.
    pub fn set_max_slew_rate_ppm(&mut self, ppm: f64) {
        self.discipline.set_max_slew_rate_ppm(ppm);
    }

    pub fn set_automatic_steps_allowed(&mut self, allowed: bool) {
        self.discipline.set_automatic_steps_allowed(allowed);
    }

    /// The adjuster authorised an operator step: the next estimate steps by the
    /// whole offset.
    pub fn authorise_step(&mut self) {
        self.operator_step = true;
    }

    /// Selection, discipline, and what the server says.
    fn update(&mut self, clock: LocalTime, now: Monotonic, actions: &mut Vec<Action>) {
        // Every source's offset now, in the same frame: slews since its sample count.
        let phase_now_s = self.discipline.phase_correction_s(clock);
        let mut candidates: Vec<Candidate> = self
            .upstreams
            .iter()
            .filter_map(|u| {
                let estimate = u.filter.estimate_in_frame(clock, phase_now_s)?;
                let options = u.source.options().select;
                Some(Candidate {
                    id: u.source.id(),
                    options,
                    estimate,
                    reachable: u.source.reachable(),
                    selected: self.system_peer == Some(u.source.id()),
                })
            })
            .collect();
        for (i, r) in self.refclocks.iter().enumerate() {
            let Some(estimate) = r.filter.estimate_in_frame(clock, phase_now_s) else { continue };
            let s = &r.settings;
            let id = SourceId(REFCLOCK_ID_BASE + i as u32);
            candidates.push(Candidate {
                id,
                options: SelectOptions { prefer: s.prefer, noselect: s.noselect, trust: s.trust, require: s.require },
                estimate,
                reachable: r.reachable(now),
                selected: self.system_peer == Some(id),
            });
        }
        let configured = self.upstreams.len() + self.refclocks.len();
        let quorum = if now.seconds_since(self.started) < STARTUP_QUORUM_WAIT_S { configured / 2 + 1 } else { 1 };
        let selection =
            select(if candidates.len() >= quorum { &candidates } else { &[] }, clock, &self.selection_config);
        self.publish(&selection, clock, actions);
        self.states = selection.states.iter().map(|&(id, state)| (id, state.symbol())).collect();
        let Some(system) = selection.combined else {
            self.tracking.synchronised = false;
            return;
        };
        if self.system_peer != selection.system_peer {
            let from = self.system_peer.map(|id| self.source_name(id)).unwrap_or_default();
            let to = selection.system_peer.map(|id| self.source_name(id)).unwrap_or_default();
            let failover = Failover { time_unix_ns: clock.0, from, to };
            if self.failovers.len() == MAX_FAILOVERS {
                self.failovers.pop_front();
            }
            self.failovers.push_back(failover.clone());
            self.failovers_total += 1;
            self.system_peer = selection.system_peer;
            actions.push(Action::Failover(failover));
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
            reference_time_unix_ns: clock.0,
            // chronyc's sign: local clock − reference.
            offset_s: -system.offset_s,
            rms_offset_s: self.mean_square_offset.sqrt(),
            rate_error_ppm: self.clock_rate_error_ppm(),
            skew_ppm: self.discipline.skew_ppm(),
            root_delay_s: system.root_delay_s,
            root_dispersion_s: system.root_dispersion_s,
            leap: system.leap,
            synchronised: true,
        };
        if self.operator_step {
            self.operator_step = false;
            self.discipline.step_at_next_update();
        }
        let newest_combined = Self::combined_ids(&selection)
            .filter_map(|id| candidates.iter().find(|c| c.id == id))
            .map(|c| c.estimate.time)
            .max();
        if newest_combined.is_none() || newest_combined <= self.last_used {
            return;
        }
        self.last_used = newest_combined;
        if self.log_records {
            actions.push(Action::Log(LogRecord::Tracking {
                time_unix_ns: clock.0,
                reference: selection.system_peer.and_then(|id| self.upstream(id)).map(|u| u.address),
                stratum: system.stratum,
                // The log keeps chrony's tracking.log columns as the statistics
                // tests compare them: the correction and source − local.
                frequency_ppm: self.discipline.frequency_ppm(),
                skew_ppm: self.discipline.skew_ppm(),
                offset_s: system.offset_s,
                leap: system.leap,
                root_delay_s: system.root_delay_s,
                root_dispersion_s: system.root_dispersion_s,
            }));
        }
        if !self.adjustable {
            return;
        }
        let estimate = ClockEstimate {
            time: clock,
            offset_s: system.offset_s,
            root_distance_s: system.root_delay_s / 2.0 + system.root_dispersion_s,
            drift: self.combined_drift(&selection),
            leap: system.leap,
        };
        let frequency_before_ppm = self.discipline.frequency_ppm();
        let requests = match self.discipline.update(estimate) {
            Ok(requests) => requests,
            Err(e) => {
                actions.push(Action::Notice(format!("the discipline refused the estimate: {e}")));
                return;
            }
        };
        // The sources' points are re-expressed for the new frequency, as if it had
        // been set all along (chrony's SST_SlewSamples).
        let delta_ppm = self.discipline.frequency_ppm() - frequency_before_ppm;
        if delta_ppm != 0.0 {
            for u in &mut self.upstreams {
                u.filter.rebase_frequency(clock, delta_ppm);
            }
            for r in &mut self.refclocks {
                r.filter.rebase_frequency(clock, delta_ppm);
            }
        }
        for request in requests {
            if let ClockAction::Step { offset_s } = request {
                // The stored measurements move with the clock. The use-once mark and
                // the sources' outstanding requests do not: the adjuster applies the
                // step later (another process), and a reply that arrives before it
                // is measured on the old time scale; an unmoved mark keeps such a
                // sample from asking for the same step twice.
                for u in &mut self.upstreams {
                    u.filter.apply_step(offset_s);
                }
                for r in &mut self.refclocks {
                    r.apply_step(offset_s);
                }
            }
            actions.push(Action::Clock(request));
        }
        actions.push(Action::Drift {
            frequency_ppm: self.discipline.frequency_ppm(),
            skew_ppm: self.discipline.skew_ppm(),
        });
    }

    /// The sources that went into the system estimate.
    fn combined_ids<'a>(selection: &'a Selection) -> impl Iterator<Item = SourceId> + 'a {
        selection
            .states
            .iter()
            .filter(|(_, state)| matches!(state, SourceState::Selected | SourceState::Combined))
            .map(|&(id, _)| id)
    }

    /// chrony's `combine_sources` for the frequency: the combined sources' drifts
    /// weighted by 1 / standard error², the skew from theirs.
    fn combined_drift(&self, selection: &Selection) -> Option<Drift> {
        let drifts: Vec<Drift> =
            Self::combined_ids(selection).filter_map(|id| self.filter(id)).filter_map(ClockFilter::drift).collect();
        let weight = |d: &Drift| 1.0 / (d.sd_ppm * d.sd_ppm).max(f64::MIN_POSITIVE);
        let weight_sum: f64 = drifts.iter().map(weight).sum();
        if drifts.is_empty() || !weight_sum.is_finite() {
            return None;
        }
        let inverse_skew2: f64 = drifts.iter().map(|d| 1.0 / (d.skew_ppm * d.skew_ppm).max(f64::MIN_POSITIVE)).sum();
        Some(Drift {
            residual_ppm: drifts.iter().map(|d| weight(d) * d.residual_ppm).sum::<f64>() / weight_sum,
            skew_ppm: 1.0 / inverse_skew2.sqrt(),
            sd_ppm: 1.0 / weight_sum.sqrt(),
        })
    }

    /// The clock filter of source `id`, upstream or refclock.
    fn filter(&self, id: SourceId) -> Option<&ClockFilter> {
        match id.0.checked_sub(REFCLOCK_ID_BASE) {
            Some(i) => self.refclocks.get(i as usize).map(|r| &r.filter),
            None => self.upstream(id).map(|u| &u.filter),
        }
    }

    /// The clock's own rate error in chronyc's sense (positive: fast), which is the
    /// negated correction the discipline applies.
    fn clock_rate_error_ppm(&self) -> f64 {
        -self.discipline.frequency_ppm()
    }

    fn publish(&mut self, selection: &Selection, clock: LocalTime, actions: &mut Vec<Action>) {
        let state = match (&selection.combined, selection.system_peer) {
            (Some(system), Some(peer)) => ServerState {
                leap: system.leap,
                stratum: system.stratum,
                reference_id: self.reference_id(peer),
                reference_time: NtpTimestamp::from_unix_ns(clock.0),
                root_delay_s: system.root_delay_s,
                root_dispersion_s: system.root_dispersion_s,
                precision_log2: ServerState::DEFAULT_PRECISION_LOG2,
            },
            _ => match self.local_stratum {
                Some(stratum) => ServerState::local(stratum),
                None => ServerState::unsynchronised(),
            },
        };
        self.serving = state.clone();
        actions.push(Action::Serve(state));
    }

    /// Whether the served time is synchronised (a selected source or a local
    /// reference) with a root distance below `distance_s`.
    fn synchronised_within(&self, distance_s: f64) -> bool {
        let s = &self.serving;
        s.leap != LeapIndicator::Unsynchronised && s.root_delay_s / 2.0 + s.root_dispersion_s < distance_s
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

    /// How operators and logs name a source: its address, or a refclock's refid.
    pub fn source_name(&self, id: SourceId) -> String {
        match id.0.checked_sub(REFCLOCK_ID_BASE) {
            Some(i) => self.refclocks.get(i as usize).map(|r| refid_name(r.settings.refid)).unwrap_or_default(),
            None => self.upstream(id).map(|u| u.address.to_string()).unwrap_or_default(),
        }
    }

    /// chronyc `tracking`.
    pub fn tracking(&self, clock: LocalTime) -> TrackingStatus {
        // No source selected but `local stratum`: the appliance serves its own
        // clock as a reference (chrony's `local`), and says so.
        match self.local_stratum {
            Some(stratum) if !self.tracking.synchronised => TrackingStatus {
                reference: "LOCL".into(),
                reference_id: ReferenceId::LOCL.to_bits(),
                stratum: stratum.clamp(1, 15),
                reference_time_unix_ns: clock.0,
                rate_error_ppm: self.clock_rate_error_ppm(),
                skew_ppm: self.discipline.skew_ppm(),
                synchronised: true,
                ..TrackingStatus::default()
            },
            _ => self.tracking.clone(),
        }
    }

    /// chronyc `sources` / `sourcestats` / `ntpdata`, every source.
    pub fn sources(&self, clock: LocalTime, now: Monotonic) -> Vec<SourceStatus> {
        let state_of = |id: SourceId| self.states.iter().find(|(s, _)| *s == id).map(|&(_, c)| c);
        let mut sources = Vec::new();
        // What selection sees: the regressions' offsets now.
        let phase_now_s = self.discipline.phase_correction_s(clock);
        for u in &self.upstreams {
            let estimate = u.filter.estimate_in_frame(clock, phase_now_s);
            let last = u.last_sample.as_ref();
            let options = u.source.options().select;
            sources.push(SourceStatus {
                refclock: false,
                name: u.address.to_string(),
                state: if u.online { state_of(u.source.id()).unwrap_or('?') } else { 'o' },
                stratum: last.map_or(0, |(_, s)| s.stratum),
                poll_log2: u.source.poll_log2(),
                reach: u.source.reach(),
                last_sample_age_s: last.map(|(t, _)| now.seconds_since(*t)),
                offset_s: estimate.map_or(0.0, |e| e.offset_s),
                jitter_s: estimate.map_or(0.0, |e| e.jitter_s),
                delay_s: estimate.map_or(0.0, |e| e.delay_s),
                dispersion_s: estimate.map_or(0.0, |e| e.dispersion_s),
                samples: u.filter.regression_points() as u32,
                last_offset_s: last.map_or(0.0, |(_, s)| s.offset_s),
                root_delay_s: last.map_or(0.0, |(_, s)| s.root_delay_s),
                root_dispersion_s: last.map_or(0.0, |(_, s)| s.root_dispersion_s),
                reference_id: ReferenceId::from_ip(u.address.ip()).to_bits(),
                packets_sent: u.source.counters().packets_sent,
                packets_received: u.source.counters().packets_received,
                kod_received: u.source.counters().kod_received,
                prefer: options.prefer,
                noselect: options.noselect,
                online: u.online,
                added: u.added,
                interleaved: u.source.last_interleaved(),
                kernel_tx: u.source.kernel_tx(),
                // The driver knows where its receive timestamps came from.
                kernel_rx: false,
            });
        }
        for (i, r) in self.refclocks.iter().enumerate() {
            let estimate = r.filter.estimate_in_frame(clock, phase_now_s);
            let last = r.filter.samples().last();
            sources.push(SourceStatus {
                refclock: true,
                name: refid_name(r.settings.refid),
                state: state_of(SourceId(REFCLOCK_ID_BASE + i as u32)).unwrap_or('?'),
                stratum: r.settings.stratum,
                poll_log2: r.poll_log2(),
                reach: r.reach(now),
                last_sample_age_s: r.last_sample_age_s(now),
                offset_s: estimate.map_or(0.0, |e| e.offset_s),
                jitter_s: estimate.map_or(0.0, |e| e.jitter_s),
                delay_s: estimate.map_or(0.0, |e| e.delay_s),
                dispersion_s: estimate.map_or(0.0, |e| e.dispersion_s),
                samples: r.filter.regression_points() as u32,
                last_offset_s: last.map_or(0.0, |s| s.offset_s),
                reference_id: ReferenceId::from_bytes(r.settings.refid).to_bits(),
                prefer: r.settings.prefer,
                noselect: r.settings.noselect,
                online: true,
                ..SourceStatus::default()
            });
        }
        sources.truncate(MAX_SOURCES);
        sources
    }

    /// The latest system-peer changes, oldest first, and how many there were in all.
    pub fn failovers(&self) -> (Vec<Failover>, u64) {
        (self.failovers.iter().cloned().collect(), self.failovers_total)
    }
}

/// Why a datagram from an upstream changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IgnoredPacket {
    /// The source was deleted.
    NoSuchSource,
    /// The on-wire checks refused it (counted in the source).
    Ignored(IgnoreReason),
}

/// Samples an upstream's shift register keeps. Every sample goes into the
/// regression, which weighs it by its delay; the register only dates the newest
/// sample. Longer registers aged their samples' dispersion at 15 ppm into every
/// selection, and the system peer changed at nearly every poll (clknetsim lan: 650
/// changes in 6 h, against chronyd's one).
const UPSTREAM_FILTER_LENGTH: usize = 1;

impl Upstream {
    fn new(
        id: SourceId,
        u: &UpstreamSettings,
        (min_points, max_points): (usize, usize),
        clock: LocalTime,
        random: u64,
    ) -> Upstream {
        Upstream {
            address: u.address,
            source: NtpSource::new(id, server_options(u), clock, random),
            filter: ClockFilter::new(FilterConfig {
                max_delay_s: u.max_delay_s,
                length: UPSTREAM_FILTER_LENGTH,
                min_points,
                max_points,
                ..FilterConfig::default()
            }),
            online: true,
            added: false,
            last_sample: None,
        }
    }
}

/// The clock adjuster's request for a clock action of the discipline.
pub fn adjuster_request(action: ClockAction) -> EngineToAdjuster {
    match action {
        ClockAction::Step { offset_s } => EngineToAdjuster::Step { offset_s },
        ClockAction::Slew { offset_s } => EngineToAdjuster::Slew { offset_s },
        ClockAction::SetFrequency { ppm } => EngineToAdjuster::SetFrequency { ppm },
        ClockAction::SetLeap(leap) => EngineToAdjuster::SetLeap(match leap {
            LeapIndicator::InsertSecond => KernelLeap::InsertSecond,
            LeapIndicator::DeleteSecond => KernelLeap::DeleteSecond,
            LeapIndicator::NoWarning | LeapIndicator::Unsynchronised => KernelLeap::None,
        }),
    }
}

/// The sans-IO source's options for an upstream's settings.
pub fn server_options(u: &UpstreamSettings) -> ServerOptions {
    ServerOptions {
        minpoll: u.minpoll,
        maxpoll: u.maxpoll,
        iburst: u.iburst,
        select: SelectOptions { prefer: u.prefer, noselect: u.noselect, trust: u.trust, require: u.require },
        max_delay_s: u.max_delay_s,
        version: u.version,
        xleave: u.xleave,
    }
}

/// A refid as text: "GPS\0" → "GPS"; one that is not printable in hex.
pub fn refid_name(refid: [u8; 4]) -> String {
    let id = ReferenceId::from_bytes(refid);
    id.ascii().map_or_else(|| format!("{:08X}", id.to_bits()), str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refclock::RETURN_SAMPLES;
    use strata_proto::ntp::{Header, Mode, NtpShort};

    const START_NS: i64 = 1_750_000_000_000_000_000;
    /// One way of every simulated path.
    const ONE_WAY_S: f64 = 0.001;

    fn upstream(n: u8, iburst: bool) -> UpstreamSettings {
        UpstreamSettings {
            address: SocketAddr::from(([192, 0, 2, n], 123)),
            iburst,
            minpoll: 4,
            maxpoll: 4,
            prefer: false,
            noselect: false,
            trust: false,
            require: false,
            max_delay_s: 3.0,
            version: 4,
            xleave: false,
        }
    }

    fn gps(prefer: bool) -> RefclockSourceSettings {
        RefclockSourceSettings {
            refid: *b"GPS\0",
            offset_s: 0.0,
            delay_s: 1e-9,
            precision_s: 1e-6,
            stratum: 0,
            prefer,
            noselect: false,
            trust: false,
            require: false,
            poll: 2,
            filter_length: 4,
            max_dispersion_s: None,
            pulse_unlocked: false,
        }
    }

    /// A fake world: true time, a local clock that the system's requests move at
    /// once, servers with their own errors, and a refclock.
    struct World {
        system: Timekeeper,
        /// Seconds of true time since the start.
        true_s: f64,
        /// Local clock − true time.
        local_error_s: f64,
        /// Server clock − true time; `None`: the server does not answer.
        servers: Vec<Option<f64>>,
        /// Refclock error (reference − true time); `None`: silent.
        refclock: Option<f64>,
        actions: Vec<Action>,
        cookie: u64,
    }

    impl World {
        fn new(config: TimekeeperConfig, local_error_s: f64, servers: Vec<Option<f64>>) -> World {
            let mut cookie = 7;
            let clock = LocalTime(START_NS + (local_error_s * 1e9) as i64);
            let mut system = Timekeeper::new(config, Monotonic(0), clock, &mut || {
                cookie += 1;
                cookie
            });
            system.set_adjustable(true);
            World { system, true_s: 0.0, local_error_s, servers, refclock: None, actions: Vec::new(), cookie }
        }

        fn now(&self) -> Monotonic {
            Monotonic((self.true_s * 1e9) as i64)
        }

        fn clock_at(&self, true_s: f64) -> LocalTime {
            LocalTime(START_NS + ((true_s + self.local_error_s) * 1e9).round() as i64)
        }

        /// Run for `seconds`, one step of true time a second.
        fn run(&mut self, seconds: u32) {
            for _ in 0..seconds {
                self.true_s += 1.0;
                if let Some(error_s) = self.refclock {
                    let raw = RawSample {
                        time: self.clock_at(self.true_s),
                        offset_s: error_s - self.local_error_s,
                        dispersion_s: 1e-7,
                    };
                    let actions = self.system.handle_refclock_sample(0, raw, self.now()).unwrap();
                    self.apply(actions);
                }
                let mut cookie = self.cookie;
                let sends = self.system.handle_timer(self.clock_at(self.true_s), &mut || {
                    cookie += 1;
                    cookie
                });
                self.cookie = cookie;
                for send in sends {
                    let Action::Send { source, packet, len } = send else { panic!("{send:?}") };
                    let Some(error_s) = self.servers[source.0 as usize] else { continue };
                    let reply = self.reply(&packet[..len], error_s);
                    let t4 = self.clock_at(self.true_s + 2.0 * ONE_WAY_S);
                    let actions = self.system.handle_packet(source, &reply, t4, self.now()).unwrap();
                    self.apply(actions);
                }
            }
        }

        fn reply(&self, request: &[u8], error_s: f64) -> [u8; 48] {
            let request = Header::from_bytes(request.try_into().unwrap());
            let server = |true_s: f64| NtpTimestamp::from_unix_ns(START_NS + ((true_s + error_s) * 1e9) as i64);
            let mut out = [0u8; 48];
            Header {
                leap: LeapIndicator::NoWarning,
                version: 4,
                mode: Mode::Server,
                stratum: 1,
                poll_log2: request.poll_log2,
                precision_log2: -20,
                root_delay: NtpShort::ZERO,
                root_dispersion: NtpShort::from_seconds(1e-5),
                reference_id: ReferenceId::from_bytes(*b"GPS\0"),
                reference_ts: server(self.true_s - 1.0),
                origin_ts: request.transmit_ts,
                receive_ts: server(self.true_s + ONE_WAY_S),
                transmit_ts: server(self.true_s + ONE_WAY_S),
            }
            .serialize(&mut out);
            out
        }

        fn apply(&mut self, actions: Vec<Action>) {
            for action in &actions {
                // The fake clock carries out a slew at once.
                if let Action::Clock(ClockAction::Step { offset_s } | ClockAction::Slew { offset_s }) = action {
                    self.local_error_s += offset_s
                }
            }
            self.actions.extend(actions);
        }

        fn served(&self) -> &ServerState {
            self.system.serving()
        }

        fn steps(&self) -> Vec<f64> {
            self.actions
                .iter()
                .filter_map(|a| match a {
                    Action::Clock(ClockAction::Step { offset_s }) => Some(*offset_s),
                    _ => None,
                })
                .collect()
        }

        fn failovers(&self) -> Vec<(String, String)> {
            self.system.failovers().0.into_iter().map(|f| (f.from, f.to)).collect()
        }
    }

    fn config(upstreams: Vec<UpstreamSettings>, refclocks: Vec<RefclockSourceSettings>) -> TimekeeperConfig {
        let settings = NtpSettings {
            local_stratum: None,
            access: Vec::new(),
            ratelimit: None,
            client_log_limit_bytes: 0,
            kernel_tx_timestamps: false,
            upstreams,
            makestep: Some((1.0, 3)),
            minsources: 1,
            initial_frequency: None,
            leap_sec_mode: strata_proto::ipc::LeapSecMode::System,
            selection: Default::default(),
            max_slew_rate_ppm: 500.0,
            log_records: false,
            refclocks,
        };
        TimekeeperConfig::from_settings(&settings, 500.0, 500.0).unwrap()
    }

    #[test]
    fn the_start_up_quorum_waits_for_a_majority_then_takes_what_answers() {
        let mut world =
            World::new(config((1..=3).map(|n| upstream(n, true)).collect(), vec![]), 0.0, vec![Some(0.0), None, None]);
        world.run(10);
        assert!(world.system.sources(world.clock_at(10.0), world.now())[0].samples >= 4);
        assert_eq!(world.served().leap, LeapIndicator::Unsynchronised, "one of three selected before the quorum");
        world.run(30);
        assert_eq!(world.served().leap, LeapIndicator::NoWarning);
        assert_eq!(world.served().reference_id, ReferenceId::from_ip(upstream(1, true).address.ip()));
        assert_eq!(world.served().stratum, 2);
    }

    #[test]
    fn a_falseticker_among_four_is_never_selected_nor_combined() {
        let servers = vec![Some(0.0), Some(0.000_2), Some(-0.000_1), Some(0.4)];
        let mut world = World::new(config((1..=4).map(|n| upstream(n, true)).collect(), vec![]), 0.0, servers);
        for _ in 0..30 {
            world.run(10);
            let sources = world.system.sources(world.clock_at(world.true_s), world.now());
            assert!(matches!(sources[3].state, 'x' | '?'), "the falseticker is {:?}", sources[3].state);
            assert!(world.local_error_s.abs() < 0.001, "the clock followed it: {} s", world.local_error_s);
        }
        let sources = world.system.sources(world.clock_at(world.true_s), world.now());
        assert_eq!(sources[3].state, 'x');
        assert!(sources[..3].iter().all(|s| matches!(s.state, '*' | '+')), "{sources:?}");
        assert!(world.steps().is_empty());
    }

    #[test]
    fn a_start_beyond_makestep_steps_once_and_the_stored_samples_move_with_it() {
        let mut world =
            World::new(config((1..=3).map(|n| upstream(n, true)).collect(), vec![]), -2.5, vec![Some(0.0); 3]);
        world.run(600);
        let steps = world.steps();
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert!((steps[0] - 2.5).abs() < 0.001, "{steps:?}");
        assert!(world.local_error_s.abs() < 1e-4, "{} s left", world.local_error_s);
        // The samples taken before the step were corrected, not left 2.5 s off.
        let sources = world.system.sources(world.clock_at(world.true_s), world.now());
        assert!(sources.iter().all(|s| s.offset_s.abs() < 1e-3), "{sources:?}");
        assert!(world.served().leap == LeapIndicator::NoWarning);
    }

    #[test]
    fn a_silent_refclock_fails_over_to_ntp_and_returns_only_after_its_hysteresis() {
        let mut world = World::new(config(vec![upstream(1, true)], vec![gps(true)]), 0.0, vec![Some(0.0)]);
        world.refclock = Some(0.0);
        world.run(40);
        let gps_id = ReferenceId::from_bytes(*b"GPS\0");
        let ntp = upstream(1, true).address.to_string();
        assert_eq!(world.served().reference_id, gps_id);
        assert_eq!(world.served().stratum, 1);
        // The feed stops: after the silence limit (8 s) the NTP server takes over.
        world.refclock = None;
        world.run(7);
        assert_eq!(world.served().reference_id, gps_id, "failed over before the silence limit");
        world.run(30);
        assert_ne!(world.served().reference_id, gps_id, "still on a silent refclock");
        assert_eq!(world.failovers().last(), Some(&("GPS".to_string(), ntp.clone())));
        // Back: it must deliver RETURN_SAMPLES samples and close a poll first.
        world.refclock = Some(0.0);
        world.run(RETURN_SAMPLES - 1);
        assert_ne!(world.served().reference_id, gps_id, "selected again before its hysteresis");
        world.run(20);
        assert_eq!(world.served().reference_id, gps_id);
        assert_eq!(world.failovers().last(), Some(&(ntp, "GPS".to_string())));
        assert_eq!(world.system.failovers().1, 3);
    }

    #[test]
    fn with_an_unadjustable_clock_it_serves_but_never_steers() {
        let mut world = World::new(config(vec![upstream(1, true)], vec![]), 0.2, vec![Some(0.0)]);
        world.system.set_adjustable(false);
        world.run(120);
        assert!(!world.actions.iter().any(|a| matches!(a, Action::Clock(_))));
        assert_eq!(world.served().leap, LeapIndicator::NoWarning);
        assert!((world.system.tracking(world.clock_at(world.true_s)).offset_s - 0.2).abs() < 0.001);
    }

    #[test]
    fn an_unlocked_pulse_counts_only_while_the_clock_is_synchronised() {
        let pps = RefclockSourceSettings { pulse_unlocked: true, ..gps(true) };
        let mut world = World::new(config(vec![], vec![pps]), 0.0, vec![]);
        world.refclock = Some(0.0);
        world.run(30);
        assert_eq!(world.served().leap, LeapIndicator::Unsynchronised);
        assert_eq!(world.system.sources(world.clock_at(world.true_s), world.now())[0].samples, 0);
    }
}
