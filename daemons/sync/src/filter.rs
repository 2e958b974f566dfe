//! The per-source clock filter: what one source's samples say, for selection and
//! the discipline.
//!
//! Every accepted sample goes into the source's [`Register`] (chrony's sourcestats
//! regression, [`crate::regression`]), in the discipline's raw frame;
//! [`ClockFilter::estimate_in_frame`], what selection works on, takes its offset now
//! (slews since the samples included) and its jitter from the regression line, its
//! delay and dispersion from the best point (chrony's best sample: the least distance
//! once aged by the skew), and its frequency error from the line's slope
//! ([`ClockFilter::drift`]).
//!
//! Beside it, RFC 5905's shift register (§10) of the last [`FilterConfig::length`]
//! samples, which [`ClockFilter::estimate`] reads the RFC's way (the least-delay
//! sample; dispersion = Σ εᵢ / 2^(i+1) over the samples sorted by delay, each grown at
//! [`MAX_DRIFT_PPM`]; jitter = RMS of the offset differences to the best sample) and
//! which gives the newest sample's root delay, root dispersion, stratum and leap.
//!
//! Additions from chrony: `maxdelay` (samples with a larger delay are rejected).
//!
//! Spikes and jumps (RFC 5905 A.5.2's popcorn suppressor, against the regression): a
//! sample further from the line than `spike_gate` times its error bound (its own
//! distance plus the line's) is held back; the `max_held_spikes + 1`-th such sample
//! in a row is a jump of the source's time (a refclock's reference changed, a server
//! was stepped), and the register restarts from the held samples and it. A gate in
//! units of the sample's error bound, not of the jitter, lets a wide delay spread
//! through (the weights deal with it) and stops only what no delay explains.
//!
//! "Use a sample only once" (RFC A.5.2's prime directive) is left to the caller: an
//! estimate's [`SourceEstimate::time`] is the time of its newest sample, so the
//! engine feeds the discipline only when that time advances.

use std::collections::VecDeque;

use crate::regression::{Line, MIN_POINTS_FOR_SLOPE, Point, Register};
use crate::{LocalTime, MAX_DRIFT_PPM, Sample};
use strata_proto::ntp::LeapIndicator;

/// Dispersion of an empty filter slot (RFC 5905 MAXDISP), seconds.
pub const MAX_DISPERSION_S: f64 = 16.0;

/// RFC 5905 NSTAGE: the filter length chrony/ntpd use for NTP sources.
pub const DEFAULT_FILTER_LENGTH: usize = 8;

/// Configuration of one source's filter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FilterConfig {
    /// Number of samples kept (RFC 5905 NSTAGE, 8). At least 1.
    pub length: usize,
    /// The regression's window: chrony's `maxsamples` and `minsamples`.
    pub max_points: usize,
    pub min_points: usize,
    /// chrony `maxdelay`: samples with a larger round-trip delay are rejected (default 3 s).
    pub max_delay_s: f64,
    /// Spike gate in units of a sample's error bound from the regression line
    /// (RFC 5905's SGATE, 3, is in units of jitter); `None` disables it.
    pub spike_gate: Option<f64>,
    /// How many spikes in a row are held back before the next one is believed.
    pub max_held_spikes: u32,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            length: DEFAULT_FILTER_LENGTH,
            max_points: crate::regression::MAX_POINTS,
            min_points: crate::regression::DEFAULT_MIN_POINTS,
            max_delay_s: 3.0,
            spike_gate: Some(3.0),
            max_held_spikes: 2,
        }
    }
}

/// What the filter did with a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    /// Stored in the register.
    Accepted,
    /// Dropped; the register is unchanged.
    Rejected(RejectReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// A NaN or infinite field.
    NotFinite,
    /// Delay above chrony's `maxdelay`.
    DelayTooLarge,
    /// Not newer than the newest stored sample (duplicate or reordered).
    NotNewer,
    /// Popcorn spike (RFC 5905 A.5.2): too far from the regression line, held back.
    Spike,
}

/// A source's filtered state: what selection (RFC 5905 §11.2) works on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SourceEstimate {
    /// Time of the sample the offset and delay come from (RFC p.t).
    pub time: LocalTime,
    /// Source minus local clock, seconds (RFC θ).
    pub offset_s: f64,
    /// Round-trip delay to the source, seconds (RFC δ).
    pub delay_s: f64,
    /// Filter dispersion (RFC ε) at the newest sample in the filter, seconds.
    pub dispersion_s: f64,
    /// RMS of offset differences in the filter (RFC ψ), seconds.
    pub jitter_s: f64,
    /// The source's own root delay and dispersion to its reference, seconds.
    pub root_delay_s: f64,
    pub root_dispersion_s: f64,
    pub stratum: u8,
    pub leap: LeapIndicator,
}

impl SourceEstimate {
    /// Dispersion grown at [`MAX_DRIFT_PPM`] from `time` to `now` (never shrinks).
    pub fn dispersion_at_s(&self, now: LocalTime) -> f64 {
        self.dispersion_s + MAX_DRIFT_PPM * 1e-6 * now.seconds_since(self.time).max(0.0)
    }

    /// Root synchronisation distance (RFC 5905 §11.2, A.5.5.2 `root_dist`):
    /// (root delay + delay)/2 + root dispersion + dispersion + PHI·(now − time) + jitter.
    /// Unlike the RFC there is no MINDISP floor on the delay term: a refclock has a
    /// true zero delay and a stratum-1 server must not pretend to be 5 ms worse.
    pub fn root_distance_s(&self, now: LocalTime) -> f64 {
        (self.root_delay_s + self.delay_s) / 2.0 + self.root_dispersion_s + self.dispersion_at_s(now) + self.jitter_s
    }

    /// Correctness interval (RFC 5905 §11.2.1; chrony's lo/hi limits): offset ± root
    /// distance. The true offset is assumed to lie in it.
    pub fn interval(&self, now: LocalTime) -> (f64, f64) {
        let distance_s = self.root_distance_s(now);
        (self.offset_s - distance_s, self.offset_s + distance_s)
    }
}

/// The per-source clock filter; see the module docs.
#[derive(Clone, Debug)]
pub struct ClockFilter {
    config: FilterConfig,
    /// Oldest first; times strictly increasing.
    samples: VecDeque<Sample>,
    /// Spikes held back in a row, in the raw frame (a jump restarts from them).
    held: Vec<(Sample, Point)>,
    /// Every accepted sample, in the raw frame.
    register: Register,
    /// The register's line after its newest change.
    line: Option<Line>,
}

/// A source's frequency error as its regression measures it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Drift {
    /// Frequency error left in the clock, ppm: positive, the clock falls behind and
    /// must be made faster by that much.
    pub residual_ppm: f64,
    /// Its error bound, ppm (chrony's skew).
    pub skew_ppm: f64,
    /// Its standard error, ppm (what sources are combined by).
    pub sd_ppm: f64,
}

impl ClockFilter {
    pub fn new(config: FilterConfig) -> Self {
        let length = config.length.max(1);
        ClockFilter {
            config: FilterConfig { length, ..config },
            samples: VecDeque::with_capacity(length),
            held: Vec::new(),
            register: Register::new(config.max_points, config.min_points),
            line: None,
        }
    }

    pub fn config(&self) -> &FilterConfig {
        &self.config
    }

    /// The stored samples, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }

    /// Forget everything (e.g. the source was replaced or reset).
    pub fn clear(&mut self) {
        self.samples.clear();
        self.held.clear();
        self.register.clear();
        self.line = None;
    }

    /// The local clock was stepped by `step_s` (forward if positive): keep the stored
    /// samples meaningful instead of discarding them (chrony does the same with its
    /// sourcestats on a step). Offsets are source − local, so they shrink by the step;
    /// local readings taken before the step are moved onto the new timescale.
    pub fn apply_step(&mut self, step_s: f64) {
        for sample in &mut self.samples {
            sample.offset_s -= step_s;
            sample.time = sample.time.add_seconds(step_s);
        }
        self.register.apply_step(step_s);
        self.line = self.register.line();
        // Held spikes measured on the old time scale are not worth moving.
        self.held.clear();
    }

    /// The discipline raised the frequency correction by `delta_ppm` at `now`: the
    /// regression's points are re-expressed accordingly.
    pub fn rebase_frequency(&mut self, now: LocalTime, delta_ppm: f64) {
        self.register.rebase_frequency(now, delta_ppm);
        self.line = self.register.line();
        for (_, point) in &mut self.held {
            point.raw_offset_s += delta_ppm * 1e-6 * now.seconds_since(point.time);
        }
    }

    /// Offer a new sample to the filter, with no phase correction (the tests' clock
    /// is never moved).
    #[cfg(test)]
    pub fn add(&mut self, sample: Sample) -> AddOutcome {
        self.add_in_frame(sample, 0.0)
    }

    /// Offer a new sample; `phase_s` is the phase correction the discipline had
    /// applied by the sample's time ([`crate::discipline::Discipline::phase_correction_s`]).
    pub fn add_in_frame(&mut self, sample: Sample, phase_s: f64) -> AddOutcome {
        let fields =
            [sample.offset_s, sample.delay_s, sample.dispersion_s, sample.root_delay_s, sample.root_dispersion_s];
        if fields.iter().any(|value| !value.is_finite()) {
            return AddOutcome::Rejected(RejectReason::NotFinite);
        }
        if sample.delay_s > self.config.max_delay_s {
            return AddOutcome::Rejected(RejectReason::DelayTooLarge);
        }
        if self.samples.back().is_some_and(|newest| sample.time <= newest.time) {
            return AddOutcome::Rejected(RejectReason::NotNewer);
        }
        // A negative delay is a measurement artefact of clock error between the
        // timestamps; RFC 5905 A.5.1 clamps it (to the precision; here to zero).
        let sample = Sample { delay_s: sample.delay_s.max(0.0), dispersion_s: sample.dispersion_s.max(0.0), ..sample };
        let point = Point {
            time: sample.time,
            raw_offset_s: sample.offset_s + phase_s,
            delay_s: sample.delay_s,
            dispersion_s: sample.dispersion_s,
        };
        if self.is_spike(&point) {
            // Several "spikes" in a row are not popcorn but a jump: after
            // `max_held_spikes` of them the register restarts from them and this one.
            if self.held.len() < self.config.max_held_spikes as usize {
                self.held.push((sample, point));
                return AddOutcome::Rejected(RejectReason::Spike);
            }
            self.register.clear();
            for (held, held_point) in std::mem::take(&mut self.held) {
                self.keep(held);
                self.register.push(held_point);
            }
        }
        self.held.clear();
        self.keep(sample);
        self.line = self.register.push(point);
        AddOutcome::Accepted
    }

    /// Into the shift register, the oldest out when it is full.
    fn keep(&mut self, sample: Sample) {
        if self.samples.len() == self.config.length {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// Further from the regression line than the gate allows (never before the line
    /// has a slope).
    fn is_spike(&self, point: &Point) -> bool {
        let (Some(gate), Some(line)) = (self.config.spike_gate, self.line) else { return false };
        if line.points < MIN_POINTS_FOR_SLOPE {
            return false;
        }
        let bound_s = point.distance_s() + line.prediction_bound_s(point.time);
        (point.raw_offset_s - line.raw_at(point.time)).abs() > gate * bound_s
    }

    /// The estimate with the regression's offset at `now` (`phase_now_s`: the phase
    /// correction applied by then), its deviation as the jitter, and the newest
    /// sample's time; the delay and dispersion of [`ClockFilter::estimate`].
    pub fn estimate_in_frame(&self, now: LocalTime, phase_now_s: f64) -> Option<SourceEstimate> {
        let estimate = self.estimate(now)?;
        let line = self.line?;
        let newest = self.register.newest()?;
        if newest.time > now {
            return Some(estimate);
        }
        // Below three points the slope is not known: the newest point, flat.
        let sloped = line.points >= MIN_POINTS_FOR_SLOPE;
        let raw_now = if sloped { line.raw_at(now) } else { newest.raw_offset_s };
        // The delay and dispersion of the best point (chrony's best sample): the least
        // distance once aged by the skew to the newest point. A single queued reply
        // then does not widen the interval, nor make the source look worse for a poll.
        let skew = if sloped && line.skew.is_finite() { line.skew } else { MAX_DRIFT_PPM * 1e-6 };
        let aged = |p: &Point| p.distance_s() + skew * newest.time.seconds_since(p.time).max(0.0);
        let best = self.register.points().min_by(|a, b| aged(a).total_cmp(&aged(b))).unwrap_or(newest);
        Some(SourceEstimate {
            time: newest.time,
            offset_s: raw_now - phase_now_s,
            delay_s: best.delay_s,
            dispersion_s: best.dispersion_s + skew * newest.time.seconds_since(best.time).max(0.0),
            jitter_s: if sloped { line.deviation_s } else { estimate.jitter_s },
            ..estimate
        })
    }

    /// The source's frequency error, once the regression has a slope.
    pub fn drift(&self) -> Option<Drift> {
        let line = self.line.filter(|l| l.points >= MIN_POINTS_FOR_SLOPE)?;
        Some(Drift { residual_ppm: line.slope * 1e6, skew_ppm: line.skew * 1e6, sd_ppm: line.slope_sd * 1e6 })
    }

    /// Points in the regression (chronyc sourcestats' NP).
    pub fn regression_points(&self) -> usize {
        self.register.len()
    }

    /// The filter's estimate from the samples taken at or before `now`, or `None` if
    /// there are none.
    pub fn estimate(&self, now: LocalTime) -> Option<SourceEstimate> {
        let mut usable: Vec<&Sample> = self.samples.iter().filter(|sample| sample.time <= now).collect();
        let newest = **usable.last()?;
        // Least delay first; among equal delays the newest (for a refclock, delay 0,
        // the filter thus follows the latest sample).
        usable.sort_by(|a, b| a.delay_s.total_cmp(&b.delay_s).then(b.time.cmp(&a.time)));
        let best = *usable[0];

        let phi = MAX_DRIFT_PPM * 1e-6;
        let grown = usable.iter().map(|sample| sample.dispersion_s + phi * newest.time.seconds_since(sample.time));
        // RFC 5905 §10 weights the samples 1/2, 1/4, ... in delay order and counts an
        // empty slot as MAXDISP (16 s). strata normalises over the samples present
        // instead: with empty slots at 16 s every new source's interval spans seconds,
        // so a falseticker 200 ms off agrees with everyone until the filters fill and
        // is selected meanwhile (`cargo xtask sim`, scenario falseticker, and the
        // timekeeping test saw exactly that). chrony does not inflate a new source
        // either; a source with few samples is still limited by maxdistance.
        let mut weight = 0.5;
        let (mut dispersion_s, mut total_weight) = (0.0, 0.0);
        for epsilon_s in grown {
            dispersion_s += epsilon_s * weight;
            total_weight += weight;
            weight /= 2.0;
        }
        dispersion_s /= total_weight;

        let jitter_s = if usable.len() > 1 {
            let sum_sq: f64 = usable[1..].iter().map(|sample| (sample.offset_s - best.offset_s).powi(2)).sum();
            (sum_sq / (usable.len() - 1) as f64).sqrt()
        } else {
            0.0
        };

        Some(SourceEstimate {
            time: best.time,
            offset_s: best.offset_s,
            delay_s: best.delay_s,
            dispersion_s,
            jitter_s,
            root_delay_s: newest.root_delay_s,
            root_dispersion_s: newest.root_dispersion_s,
            stratum: newest.stratum,
            leap: newest.leap,
        })
    }
}

impl Default for ClockFilter {
    fn default() -> Self {
        ClockFilter::new(FilterConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND_NS: i64 = 1_000_000_000;

    fn at(seconds: i64) -> LocalTime {
        LocalTime(1_700_000_000 * SECOND_NS + seconds * SECOND_NS)
    }

    fn sample(seconds: i64, offset_s: f64, delay_s: f64) -> Sample {
        Sample {
            time: at(seconds),
            offset_s,
            delay_s,
            dispersion_s: 1e-6,
            root_delay_s: 0.0,
            root_dispersion_s: 0.0,
            stratum: 1,
            leap: LeapIndicator::NoWarning,
        }
    }

    fn no_spikes() -> FilterConfig {
        FilterConfig { spike_gate: None, ..FilterConfig::default() }
    }

    #[test]
    fn empty_filter_has_no_estimate() {
        assert_eq!(ClockFilter::default().estimate(at(0)), None);
    }

    #[test]
    fn least_delay_sample_wins() {
        let mut filter = ClockFilter::new(no_spikes());
        for (i, (offset_s, delay_s)) in [(0.010, 0.050), (0.002, 0.010), (0.007, 0.030)].into_iter().enumerate() {
            assert_eq!(filter.add(sample(i as i64 * 64, offset_s, delay_s)), AddOutcome::Accepted);
        }
        let estimate = filter.estimate(at(200)).unwrap();
        assert_eq!(estimate.offset_s, 0.002);
        assert_eq!(estimate.delay_s, 0.010);
        assert_eq!(estimate.time, at(64));
    }

    #[test]
    fn equal_delays_follow_the_newest_sample() {
        let mut filter = ClockFilter::new(no_spikes());
        filter.add(sample(0, 1e-6, 0.0));
        filter.add(sample(16, 2e-6, 0.0));
        assert_eq!(filter.estimate(at(16)).unwrap().offset_s, 2e-6);
    }

    #[test]
    fn keeps_only_the_last_n_samples() {
        let mut filter = ClockFilter::new(FilterConfig { length: 3, ..no_spikes() });
        // The least-delay sample ages out of the register.
        filter.add(sample(0, 0.5, 0.001));
        for i in 1..=3 {
            filter.add(sample(i, 0.1, 0.02));
        }
        assert_eq!(filter.samples().count(), 3);
        let estimate = filter.estimate(at(3)).unwrap();
        assert_eq!(estimate.offset_s, 0.1);
        assert_eq!(estimate.delay_s, 0.02);
    }

    #[test]
    fn dispersion_is_the_weighted_mean_of_the_samples_present() {
        let mut filter = ClockFilter::new(FilterConfig { length: 4, ..no_spikes() });
        filter.add(Sample { dispersion_s: 0.001, ..sample(0, 0.0, 0.01) });
        let estimate = filter.estimate(at(0)).unwrap();
        // One sample: its own dispersion, not inflated by empty slots.
        assert!((estimate.dispersion_s - 0.001).abs() < 1e-12, "{}", estimate.dispersion_s);

        // Second sample, 100 s later, with larger delay: the first one (sorted first)
        // has grown by PHI·100 s; weights 1/2 and 1/4, normalised.
        filter.add(Sample { dispersion_s: 0.002, ..sample(100, 0.0, 0.02) });
        let estimate = filter.estimate(at(100)).unwrap();
        let first = 0.001 + 15e-6 * 100.0;
        let expected = (first / 2.0 + 0.002 / 4.0) / (1.0 / 2.0 + 1.0 / 4.0);
        assert!((estimate.dispersion_s - expected).abs() < 1e-12, "{}", estimate.dispersion_s);
    }

    #[test]
    fn a_new_source_is_as_tight_as_its_first_sample_and_stays_tight() {
        let mut filter = ClockFilter::new(no_spikes());
        for i in 0..8 {
            filter.add(sample(i, 0.0, 0.01));
            let dispersion_s = filter.estimate(at(i)).unwrap().dispersion_s;
            assert!(dispersion_s < 0.01, "after {} samples: {dispersion_s}", i + 1);
        }
    }

    #[test]
    fn jitter_is_rms_of_offset_differences_to_the_best() {
        let mut filter = ClockFilter::new(no_spikes());
        filter.add(sample(0, 0.000, 0.010)); // best
        filter.add(sample(1, 0.003, 0.020));
        filter.add(sample(2, -0.004, 0.030));
        let estimate = filter.estimate(at(2)).unwrap();
        let expected = ((0.003f64.powi(2) + 0.004f64.powi(2)) / 2.0).sqrt();
        assert!((estimate.jitter_s - expected).abs() < 1e-15);
    }

    #[test]
    fn single_sample_has_zero_jitter() {
        let mut filter = ClockFilter::default();
        filter.add(sample(0, 0.1, 0.01));
        assert_eq!(filter.estimate(at(0)).unwrap().jitter_s, 0.0);
    }

    #[test]
    fn root_values_stratum_and_leap_come_from_the_newest_sample() {
        let mut filter = ClockFilter::new(no_spikes());
        filter.add(Sample { root_delay_s: 0.1, root_dispersion_s: 0.2, stratum: 2, ..sample(0, 0.0, 0.001) });
        filter.add(Sample {
            root_delay_s: 0.3,
            root_dispersion_s: 0.4,
            stratum: 3,
            leap: LeapIndicator::InsertSecond,
            ..sample(1, 0.0, 0.5)
        });
        let estimate = filter.estimate(at(1)).unwrap();
        assert_eq!(estimate.delay_s, 0.001); // offset/delay still from the best sample
        assert_eq!((estimate.root_delay_s, estimate.root_dispersion_s), (0.3, 0.4));
        assert_eq!((estimate.stratum, estimate.leap), (3, LeapIndicator::InsertSecond));
    }

    #[test]
    fn estimate_ignores_samples_after_now() {
        let mut filter = ClockFilter::new(no_spikes());
        filter.add(sample(0, 0.1, 0.02));
        filter.add(sample(10, 0.2, 0.01));
        assert_eq!(filter.estimate(at(5)).unwrap().offset_s, 0.1);
        assert_eq!(filter.estimate(at(10)).unwrap().offset_s, 0.2);
        assert_eq!(filter.estimate(at(-1)), None);
    }

    #[test]
    fn maxdelay_rejects() {
        let mut filter = ClockFilter::new(FilterConfig { max_delay_s: 0.1, ..no_spikes() });
        assert_eq!(filter.add(sample(0, 0.0, 0.2)), AddOutcome::Rejected(RejectReason::DelayTooLarge));
        assert_eq!(filter.add(sample(1, 0.0, 0.1)), AddOutcome::Accepted);
        assert_eq!(filter.samples().count(), 1);
    }

    #[test]
    fn rejects_non_finite_and_reordered_samples() {
        let mut filter = ClockFilter::default();
        assert_eq!(filter.add(sample(0, f64::NAN, 0.0)), AddOutcome::Rejected(RejectReason::NotFinite));
        assert_eq!(filter.add(sample(0, 0.0, f64::INFINITY)), AddOutcome::Rejected(RejectReason::NotFinite));
        assert_eq!(filter.add(sample(5, 0.0, 0.01)), AddOutcome::Accepted);
        assert_eq!(filter.add(sample(5, 0.0, 0.01)), AddOutcome::Rejected(RejectReason::NotNewer));
        assert_eq!(filter.add(sample(4, 0.0, 0.01)), AddOutcome::Rejected(RejectReason::NotNewer));
    }

    #[test]
    fn negative_delay_is_clamped_to_zero() {
        let mut filter = ClockFilter::default();
        filter.add(sample(0, 0.0, -0.001));
        assert_eq!(filter.estimate(at(0)).unwrap().delay_s, 0.0);
    }

    fn noisy_filter() -> ClockFilter {
        let mut filter = ClockFilter::default();
        for (i, offset_s) in [0.001, -0.001, 0.0005, -0.0005].into_iter().enumerate() {
            assert_eq!(filter.add(sample(i as i64, offset_s, 0.01)), AddOutcome::Accepted);
        }
        filter
    }

    #[test]
    fn popcorn_spike_is_held_back() {
        let mut filter = noisy_filter();
        assert_eq!(filter.add(sample(10, 0.2, 0.01)), AddOutcome::Rejected(RejectReason::Spike));
        // Normal samples keep flowing and reset the spike count.
        assert_eq!(filter.add(sample(11, 0.0008, 0.01)), AddOutcome::Accepted);
        assert_eq!(filter.add(sample(12, 0.2, 0.01)), AddOutcome::Rejected(RejectReason::Spike));
        assert!(filter.estimate(at(12)).unwrap().offset_s.abs() < 0.002);
    }

    #[test]
    fn persistent_step_gets_through_after_max_held_spikes() {
        let mut filter = noisy_filter();
        assert_eq!(filter.add(sample(10, 0.2, 0.01)), AddOutcome::Rejected(RejectReason::Spike));
        assert_eq!(filter.add(sample(11, 0.2, 0.01)), AddOutcome::Rejected(RejectReason::Spike));
        assert_eq!(filter.add(sample(12, 0.2, 0.01)), AddOutcome::Accepted);
        // With the step in the register the jitter is large, so the new level is no
        // longer a spike and the filter converges on it.
        for i in 13..20 {
            assert_eq!(filter.add(sample(i, 0.2, 0.01)), AddOutcome::Accepted, "sample {i}");
        }
        assert_eq!(filter.estimate(at(20)).unwrap().offset_s, 0.2);
    }

    #[test]
    fn identical_samples_do_not_make_every_change_a_spike() {
        let mut filter = ClockFilter::default();
        for i in 0..4 {
            filter.add(Sample { dispersion_s: 1e-3, ..sample(i, 0.0, 0.0) });
        }
        // Jitter is 0, but a change within the sample's own error bound is plausible.
        assert_eq!(filter.add(Sample { dispersion_s: 1e-3, ..sample(4, 2e-3, 0.0) }), AddOutcome::Accepted);
    }

    #[test]
    fn apply_step_moves_offsets_and_times() {
        let mut filter = ClockFilter::new(no_spikes());
        filter.add(sample(0, 1.5, 0.01));
        filter.apply_step(1.5);
        let estimate = filter.estimate(at(2)).unwrap();
        assert_eq!(estimate.offset_s, 0.0);
        assert_eq!(estimate.time, at(0).add_seconds(1.5));
    }

    #[test]
    fn clear_forgets() {
        let mut filter = noisy_filter();
        filter.clear();
        assert_eq!(filter.estimate(at(100)), None);
    }

    #[test]
    fn the_regression_gives_the_offset_now_and_the_drift() {
        let mut filter = ClockFilter::new(no_spikes());
        // A clock losing 2 ppm, never corrected; one sample of 8 was delayed 10 ms.
        for i in 0..16 {
            let t = i * 16;
            let (offset_s, delay_s) = if i == 8 { (5e-3, 0.010) } else { (2e-6 * t as f64, 0.0002) };
            filter.add(sample(t, offset_s, delay_s));
        }
        let drift = filter.drift().unwrap();
        assert!((drift.residual_ppm - 2.0).abs() < 1e-3, "{drift:?}");
        // The offset at 300 s, 60 s after the newest sample: the line carried on.
        let estimate = filter.estimate_in_frame(at(300), 0.0).unwrap();
        assert!((estimate.offset_s - 600e-6).abs() < 1e-6, "{}", estimate.offset_s);
        assert_eq!(estimate.time, at(240));
        // 100 µs slewed since: the offset left is that much smaller.
        let estimate = filter.estimate_in_frame(at(300), 100e-6).unwrap();
        assert!((estimate.offset_s - 500e-6).abs() < 1e-6, "{}", estimate.offset_s);
        // The delayed sample bends a noiseless line: the runs test shortens it.
        assert!((3..16).contains(&filter.regression_points()), "{}", filter.regression_points());
    }

    #[test]
    fn a_jump_is_held_twice_then_restarts_the_regression() {
        let mut filter = ClockFilter::new(FilterConfig::default());
        for i in 0..8 {
            filter.add(sample(i * 16, 1e-3, 0.0002));
        }
        // The source's time jumps by 5 ms: held twice, the estimate stays on the line.
        for i in 8..10 {
            assert_eq!(filter.add(sample(i * 16, 6e-3, 0.0002)), AddOutcome::Rejected(RejectReason::Spike));
            let estimate = filter.estimate_in_frame(at(i * 16), 0.0).unwrap();
            assert!((estimate.offset_s - 1e-3).abs() < 1e-9, "{}", estimate.offset_s);
        }
        // The third in a row is believed: the register restarts from the three.
        assert_eq!(filter.add(sample(10 * 16, 6e-3, 0.0002)), AddOutcome::Accepted);
        let estimate = filter.estimate_in_frame(at(10 * 16), 0.0).unwrap();
        assert!((estimate.offset_s - 6e-3).abs() < 1e-9, "{}", estimate.offset_s);
        assert!(filter.drift().unwrap().residual_ppm.abs() < 1e-6);
        assert_eq!(filter.regression_points(), 3);
    }

    #[test]
    fn a_wide_delay_spread_is_not_a_spike() {
        let mut filter = ClockFilter::default();
        // 20 ms round trips with 5 ms of queueing each way: offsets spread by
        // milliseconds, always within what the delay explains.
        let mut accepted = 0;
        for i in 0..64 {
            let (up_s, down_s) = (0.011 + 0.005 * f64::from(i % 7) / 3.0, 0.009 + 0.005 * f64::from(i % 5) / 2.0);
            let outcome = filter.add(sample(i64::from(i) * 64, (up_s - down_s) / 2.0, up_s + down_s));
            accepted += usize::from(outcome == AddOutcome::Accepted);
        }
        assert_eq!(accepted, 64);
    }

    #[test]
    fn root_distance_follows_rfc_definition() {
        let estimate = SourceEstimate {
            time: at(0),
            offset_s: 0.01,
            delay_s: 0.02,
            dispersion_s: 0.003,
            jitter_s: 0.004,
            root_delay_s: 0.1,
            root_dispersion_s: 0.05,
            stratum: 2,
            leap: LeapIndicator::NoWarning,
        };
        let at_time = (0.1 + 0.02) / 2.0 + 0.05 + 0.003 + 0.004;
        assert!((estimate.root_distance_s(at(0)) - at_time).abs() < 1e-12);
        // Grows at 15 ppm: 1000 s later, 15 ms more.
        assert!((estimate.root_distance_s(at(1000)) - (at_time + 0.015)).abs() < 1e-12);
        // Never shrinks for a `now` before the sample.
        assert_eq!(estimate.root_distance_s(at(-10)), estimate.root_distance_s(at(0)));
        let (lo, hi) = estimate.interval(at(0));
        assert!((lo - (0.01 - at_time)).abs() < 1e-12 && (hi - (0.01 + at_time)).abs() < 1e-12);
    }

    #[test]
    fn refclock_samples_work_with_zero_delay() {
        let mut filter = ClockFilter::default();
        for i in 0..8 {
            let offset_s = if i % 2 == 0 { 1e-6 } else { -1e-6 };
            assert_eq!(filter.add(Sample { stratum: 0, ..sample(i, offset_s, 0.0) }), AddOutcome::Accepted);
        }
        let estimate = filter.estimate(at(7)).unwrap();
        assert_eq!(estimate.offset_s, -1e-6);
        assert!(estimate.root_distance_s(at(7)) < 1e-4);
    }

    proptest! {
        #[test]
        fn estimate_is_the_least_delay_stored_sample(
            points in proptest::collection::vec((-1.0f64..1.0, 0.0f64..0.5), 1..20),
            length in 1usize..10,
        ) {
            let mut filter = ClockFilter::new(FilterConfig { length, ..no_spikes() });
            for (i, &(offset_s, delay_s)) in points.iter().enumerate() {
                prop_assert_eq!(filter.add(sample(i as i64, offset_s, delay_s)), AddOutcome::Accepted);
            }
            prop_assert!(filter.samples().count() <= length);
            let estimate = filter.estimate(at(points.len() as i64)).unwrap();
            let min_delay = filter.samples().map(|s| s.delay_s).fold(f64::INFINITY, f64::min);
            prop_assert_eq!(estimate.delay_s, min_delay);
            prop_assert!(filter.samples().any(|s| s.offset_s == estimate.offset_s && s.time == estimate.time));
            prop_assert!(estimate.jitter_s >= 0.0 && estimate.dispersion_s > 0.0);
            // Jitter is an RMS of differences: bounded by the largest difference.
            let max_diff = filter.samples().map(|s| (s.offset_s - estimate.offset_s).abs()).fold(0.0, f64::max);
            prop_assert!(estimate.jitter_s <= max_diff + 1e-12);
        }

        #[test]
        fn root_distance_grows_with_time(offset_s in -1.0f64..1.0, delay_s in 0.0f64..1.0, later_s in 0i64..100_000) {
            let mut filter = ClockFilter::default();
            filter.add(sample(0, offset_s, delay_s));
            let estimate = filter.estimate(at(0)).unwrap();
            let (lo, hi) = estimate.interval(at(later_s));
            prop_assert!(estimate.root_distance_s(at(later_s)) >= estimate.root_distance_s(at(0)));
            prop_assert!(lo <= offset_s && offset_s <= hi);
        }
    }
}
