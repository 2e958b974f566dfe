//! One scenario: strata's whole time-keeping system (`strata_sync::timekeeper`, the
//! code the engine runs) in the loop with the virtual world, in simulated time.
//!
//! The driver does what the engine's does: it wakes at the system's next poll, sends
//! each request through the world (a server's reply and its arrival time), hands the
//! reply in, and applies the clock requests to the virtual clock as the adjuster
//! applies them to its `simulated` backend (with the policy's rates and refusals).
//! Every server is polled at the scenario's poll (minpoll = maxpoll), as chronyd
//! with `minpoll N maxpoll N`.

use std::net::SocketAddr;

use strata_proto::ipc::{NtpSettings, UpstreamSettings};
use strata_sync::discipline::ClockAction;
use strata_sync::timekeeper::{Action, Timekeeper, TimekeeperConfig};
use strata_sync::{Monotonic, SourceId};

use super::clock::{Applied, Limits, VirtualClock};
use super::rng::Rng;
use super::world::{Server, exchange};

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

/// Run `scenario` with `seed`; an error if anything turns NaN.
pub fn run(scenario: &Scenario, seed: u64, trace: bool) -> Result<Outcome, String> {
    let mut rng = Rng::new(seed);
    let mut clock_rng = rng.fork();
    let mut path_rngs: Vec<Rng> = scenario.servers.iter().map(|_| rng.fork()).collect();
    let mut cookie_rng = rng.fork();
    let limits = Limits::policy();
    let mut clock =
        VirtualClock::new(scenario.initial_offset_s, scenario.natural_ppm, scenario.wander_ppm_per_sqrt_s, limits);
    let poll_log2 = scenario.poll_s.log2().round() as i8;
    let settings = NtpSettings {
        local_stratum: None,
        access: Vec::new(),
        ratelimit: None,
        client_log_limit_bytes: 0,
        kernel_tx_timestamps: false,
        upstreams: (0..scenario.servers.len())
            .map(|i| UpstreamSettings {
                // Names only: nothing is ever sent anywhere.
                address: SocketAddr::from(([192, 0, 2, i as u8 + 1], 123)),
                iburst: false,
                minpoll: poll_log2,
                maxpoll: poll_log2,
                prefer: false,
                noselect: false,
                trust: false,
                require: false,
                max_delay_s: 3.0,
                version: 4,
                xleave: false,
            })
            .collect(),
        makestep: Some((1.0, 3)),
        minsources: 1,
        initial_frequency: None,
        leap_sec_mode: strata_proto::ipc::LeapSecMode::System,
        selection: Default::default(),
        max_slew_rate_ppm: Limits::policy().max_slew_rate_ppm,
        log_records: false,
        refclocks: Vec::new(),
    };
    let config = TimekeeperConfig::from_settings(&settings, limits.max_slew_rate_ppm, limits.max_frequency_ppm)
        .map_err(|e| e.to_string())?;
    let now = |clock: &VirtualClock| Monotonic((clock.true_s() * 1e9).round() as i64);
    let mut system = Timekeeper::new(config, now(&clock), clock.local_time(), &mut || cookie_rng.next_u64());
    system.set_adjustable(true);
    let mut outcome = Outcome::default();

    let mut polls = 0;
    while clock.true_s() < scenario.duration_s {
        let due = system.next_poll().ok_or("nothing to poll")?;
        let wait_s = due.seconds_since(clock.local_time()).max(0.0);
        clock.advance(wait_s, &mut clock_rng);
        let offset_s = finite("the clock's offset", clock.offset_s())?;
        let true_s = clock.true_s();
        let sends = system.handle_timer(clock.local_time(), &mut || cookie_rng.next_u64());
        if sends.is_empty() {
            // The reading rounded below the due time: a nanosecond more.
            clock.advance(1e-9, &mut clock_rng);
            continue;
        }
        let mut actions = Vec::new();
        for send in sends {
            let Action::Send { source: SourceId(i), packet, len } = send else { continue };
            let i = i as usize;
            if let Some((reply, t4)) = exchange(&clock, &scenario.servers[i], 0.0, &mut path_rngs[i], &packet[..len]) {
                let at = now(&clock);
                actions.extend(system.handle_packet(SourceId(i as u32), &reply, t4, at).into_iter().flatten());
            }
        }
        for action in actions {
            let Action::Clock(request) = action else { continue };
            if let ClockAction::Step { offset_s: v } | ClockAction::Slew { offset_s: v } = request {
                finite("a requested offset", v)?;
            }
            if let ClockAction::SetFrequency { ppm } = request {
                finite("a requested frequency", ppm)?;
            }
            if trace {
                eprintln!(
                    "t {true_s:7.0} s  true offset {:+10.1} µs  freq {:+9.4} ppm  err {:+8.4} ppm  {request:?}",
                    offset_s * 1e6,
                    system.discipline().frequency_ppm(),
                    clock.frequency_error_ppm(),
                );
            }
            let _: Applied = clock.apply(request);
        }
        let sources = system.sources(clock.local_time(), now(&clock));
        let falseticker_used = sources
            .iter()
            .zip(&scenario.servers)
            .any(|(source, server)| server.falseticker && matches!(source.state, '*' | '+'));
        if falseticker_used {
            outcome.falseticker_used += 1;
            let first = outcome.falseticker_polls.map_or(polls, |(first, _)| first);
            outcome.falseticker_polls = Some((first, polls));
        }
        if system.serving().leap == strata_proto::ntp::LeapIndicator::Unsynchronised {
            outcome.unsynchronised_polls += 1;
        }
        let frequency_error_ppm = finite("the frequency error", clock.frequency_error_ppm())?;
        outcome.points.push(Point { true_s, offset_s, frequency_error_ppm });
        polls += 1;
    }
    outcome.updates = system.discipline().clock_updates() as u32;
    outcome.steps = clock.steps;
    outcome.refused = clock.refused;
    Ok(outcome)
}
