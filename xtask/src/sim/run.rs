//! One scenario: the real strata-sync code (clock filter → source selection →
//! discipline) in the loop with the virtual world, all in simulated time.
//!
//! The glue is what the engine does with strata-sync:
//! - each poll, every server gets one exchange; an answer goes into its
//!   `ClockFilter`, and its 8-poll reachability register (RFC 5905 `reach`) shifts;
//! - once the poll's exchanges are done, `select` runs over the sources that have an
//!   estimate (reachable: anything answered in the last 8 polls), with chrony's
//!   defaults (`SelectionConfig::default()`);
//! - the discipline is fed the combined offset, with the system root distance
//!   (root delay / 2 + root dispersion) as its error bound, only when the system
//!   peer's estimate is based on a newer sample than the last one fed (RFC 5905's
//!   "use a sample only once", which filter.rs leaves to the caller);
//! - its requests go to the virtual clock as the adjuster applies them; a step the
//!   adjuster carried out is passed on to every filter (`ClockFilter::apply_step`).
//!
//! The discipline runs with the defaults (makestep 1.0 3) except the rates, which
//! must be the adjuster's: the policy's 500 ppm slew and frequency limits.

use strata_sync::discipline::{self, ClockAction, Discipline, DisciplineConfig};
use strata_sync::filter::ClockFilter;
use strata_sync::selection::{Candidate, SelectionConfig, SourceState, select};
use strata_sync::{LocalTime, SelectOptions, SourceId};

use super::clock::{Applied, Limits, VirtualClock};
use super::rng::Rng;
use super::world::{Server, exchange};

/// True time from the poll to the update: every exchange is done by then.
const SETTLE_S: f64 = 1.0;
/// Between two servers' exchanges within a poll.
const STAGGER_S: f64 = 0.01;

/// A named world.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub servers: Vec<Server>,
    pub poll_s: f64,
    pub duration_s: f64,
    /// True time − local clock at the start (positive: the clock is behind).
    pub initial_offset_s: f64,
    /// The oscillator's frequency error, ppm (positive: fast).
    pub natural_ppm: f64,
    pub wander_ppm_per_sqrt_s: f64,
    /// Converged: |offset| below this from some poll to the end.
    pub converged_below_s: f64,
}

/// The state of the world at one poll.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// True time since the start, seconds.
    pub true_s: f64,
    /// True time − local clock at the poll, before the poll's requests.
    pub offset_s: f64,
    /// Frequency error left once the poll's requests are applied, ppm.
    pub frequency_error_ppm: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub points: Vec<Point>,
    /// Discipline updates (polls at which the discipline was fed).
    pub updates: u32,
    pub steps: u32,
    pub refused: u32,
    /// Polls at which a falseticker was the system peer or combined.
    pub falseticker_used: u32,
    /// The first and last poll that happened at, if any.
    pub falseticker_polls: Option<(usize, usize)>,
    /// Polls with no selection (no majority, nothing selectable yet).
    pub unsynchronised_polls: u32,
}

/// Where the run's figures start: the first poll after which |offset| stays below the
/// threshold to the end.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub converged_after_s: Option<f64>,
    pub rms_offset_s: f64,
    pub max_offset_s: f64,
    pub rms_frequency_error_ppm: f64,
    /// RMS offset over the second half of the run, converged or not: the steady state.
    pub rms_offset_second_half_s: f64,
}

impl Outcome {
    pub fn summary(&self, converged_below_s: f64) -> Summary {
        let rms = |points: &[Point], f: fn(&Point) -> f64| {
            (points.iter().map(|p| f(p).powi(2)).sum::<f64>() / points.len() as f64).sqrt()
        };
        let rms_offset_second_half_s = rms(&self.points[self.points.len() / 2..], |p| p.offset_s);
        let last_bad = self.points.iter().rposition(|p| p.offset_s.abs() >= converged_below_s);
        let from = match last_bad {
            None => Some(0),
            Some(i) if i + 1 < self.points.len() => Some(i + 1),
            Some(_) => None,
        };
        let Some(from) = from else {
            return Summary {
                converged_after_s: None,
                rms_offset_s: f64::NAN,
                max_offset_s: f64::NAN,
                rms_frequency_error_ppm: f64::NAN,
                rms_offset_second_half_s,
            };
        };
        let tail = &self.points[from..];
        Summary {
            converged_after_s: Some(tail[0].true_s),
            rms_offset_s: rms(tail, |p| p.offset_s),
            max_offset_s: tail.iter().fold(0.0, |m: f64, p| m.max(p.offset_s.abs())),
            rms_frequency_error_ppm: rms(tail, |p| p.frequency_error_ppm),
            rms_offset_second_half_s,
        }
    }
}

fn finite(what: &str, value: f64) -> Result<f64, String> {
    if value.is_finite() { Ok(value) } else { Err(format!("{what} is not finite: {value}")) }
}

/// Run `scenario` with `seed`; an error if anything turns NaN or the discipline refuses.
pub fn run(scenario: &Scenario, seed: u64, trace: bool) -> Result<Outcome, String> {
    let mut rng = Rng::new(seed);
    let mut clock_rng = rng.fork();
    let mut path_rngs: Vec<Rng> = scenario.servers.iter().map(|_| rng.fork()).collect();
    let limits = Limits::policy();
    let mut clock =
        VirtualClock::new(scenario.initial_offset_s, scenario.natural_ppm, scenario.wander_ppm_per_sqrt_s, limits);
    let config = DisciplineConfig {
        max_slew_rate_ppm: limits.max_slew_rate_ppm,
        max_frequency_ppm: limits.max_frequency_ppm,
        ..DisciplineConfig::default()
    };
    let mut discipline = Discipline::new(config).map_err(|e| e.to_string())?;
    let selection_config = SelectionConfig::default();
    let mut filters: Vec<ClockFilter> = scenario.servers.iter().map(|_| ClockFilter::default()).collect();
    let mut reach = vec![0u8; scenario.servers.len()];
    let mut last_fed: Option<LocalTime> = None;
    let mut outcome = Outcome::default();

    let polls = (scenario.duration_s / scenario.poll_s).floor() as usize;
    for poll in 0..polls {
        let offset_s = finite("the clock's offset", clock.offset_s())?;
        let true_s = clock.true_s();

        for (i, server) in scenario.servers.iter().enumerate() {
            reach[i] <<= 1;
            if let Some(sample) = exchange(&clock, server, i as f64 * STAGGER_S, &mut path_rngs[i]) {
                reach[i] |= 1;
                // A rejected sample (spike, maxdelay) is the filter's business.
                let _ = filters[i].add(sample);
            }
        }
        clock.advance(SETTLE_S, &mut clock_rng);
        let now = clock.local_time();

        let candidates: Vec<Candidate> = filters
            .iter()
            .enumerate()
            .filter_map(|(i, filter)| {
                Some(Candidate {
                    id: SourceId(i as u32),
                    options: SelectOptions::default(),
                    estimate: filter.estimate(now)?,
                    reachable: reach[i] != 0,
                })
            })
            .collect();
        let selection = select(&candidates, now, &selection_config);
        let mut falseticker_used = false;
        for &(SourceId(id), state) in &selection.states {
            if scenario.servers[id as usize].falseticker
                && matches!(state, SourceState::Selected | SourceState::Combined)
            {
                falseticker_used = true;
            }
        }
        if falseticker_used {
            outcome.falseticker_used += 1;
            let first = outcome.falseticker_polls.map_or(poll, |(first, _)| first);
            outcome.falseticker_polls = Some((first, poll));
        }

        match (selection.system_peer, selection.combined) {
            (Some(peer), Some(combined)) => {
                let peer_time = candidates.iter().find(|c| c.id == peer).map(|c| c.estimate.time).unwrap_or(now);
                if last_fed.is_none_or(|last| peer_time > last) {
                    last_fed = Some(peer_time);
                    let estimate = discipline::SystemEstimate {
                        time: now,
                        offset_s: finite("the combined offset", combined.offset_s)?,
                        root_distance_s: finite(
                            "the root distance",
                            combined.root_delay_s / 2.0 + combined.root_dispersion_s,
                        )?,
                        leap: combined.leap,
                    };
                    let actions = discipline.update(estimate).map_err(|e| format!("poll {poll}: discipline: {e}"))?;
                    if trace {
                        eprintln!(
                            "poll {poll:5} t {true_s:7.0} s  true offset {:+10.1} µs  measured {:+10.1} µs  distance {:8.1} µs  \
                             peer {} (sample {:+5.0} s)  freq {:+9.4} ppm  err {:+8.4} ppm  {actions:?}",
                            offset_s * 1e6,
                            estimate.offset_s * 1e6,
                            estimate.root_distance_s * 1e6,
                            peer.0,
                            peer_time.seconds_since(now),
                            discipline.frequency_ppm(),
                            clock.frequency_error_ppm(),
                        );
                    }
                    outcome.updates += 1;
                    for action in actions {
                        if let ClockAction::Step { offset_s: v } | ClockAction::Slew { offset_s: v } = action {
                            finite("a requested offset", v)?;
                        }
                        if let ClockAction::SetFrequency { ppm } = action {
                            finite("a requested frequency", ppm)?;
                        }
                        if let (Applied::Done, ClockAction::Step { offset_s }) = (clock.apply(action), action) {
                            for filter in &mut filters {
                                filter.apply_step(offset_s);
                            }
                            last_fed = last_fed.map(|t| t.add_seconds(offset_s));
                        }
                    }
                }
            }
            _ => outcome.unsynchronised_polls += 1,
        }

        let frequency_error_ppm = finite("the frequency error", clock.frequency_error_ppm())?;
        outcome.points.push(Point { true_s, offset_s, frequency_error_ppm });
        clock.advance(scenario.poll_s - SETTLE_S, &mut clock_rng);
    }
    outcome.steps = clock.steps;
    outcome.refused = clock.refused;
    Ok(outcome)
}
