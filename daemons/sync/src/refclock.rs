//! A reference clock's median filter (chrony's refclock `filter` option, its
//! `samplefilt.c`): the raw samples a driver produces between two polls are
//! collected; at each poll the ones about the median offset are averaged into one
//! filtered sample, which is what the source's clock filter and selection see.
//!
//! chrony's rules, kept here:
//! - the filter holds at most `length` samples (the oldest go first);
//! - a poll gives a result only if at least `min(4, length)` samples arrived since
//!   the previous poll (for a length below 4 the filter has to be full);
//! - samples whose dispersion is more than 1.5 × the smallest are dropped first
//!   (a reading that took unusually long says less);
//! - of the rest, the lowest and highest 20 % are dropped, 60 % kept (chrony's combine
//!   ratio) and averaged: offset and time are means; the dispersion is the larger
//!   of their mean dispersion and the standard error of the mean, from the filter's
//!   long-term variance unless this poll's is significantly larger (chrony's
//!   samplefilt.c: the regression weighs polls by it, and one poll's variance from
//!   a few readings is noisy);
//! - `maxdispersion`: a poll whose readings deviate more is dropped;
//! - after a poll the filter starts empty ("samples collected between polls").
//!
//! For a polled driver (PHC, SHM, PPS) the filter cannot hold more samples than one
//! poll brings, `2^(poll − dpoll)`: [`filter_length`] shortens it as chrony does.

use std::collections::VecDeque;

use strata_proto::ipc::RefclockSourceSettings;

use crate::filter::{ClockFilter, FilterConfig};
use crate::{LocalTime, Monotonic, Sample};
use strata_proto::ntp::LeapIndicator;

/// chrony's default refclock `filter` length.
pub const DEFAULT_MEDIAN_LENGTH: usize = 64;
/// The fraction of samples about the median that are averaged (chrony: 0.6).
const COMBINE_RATIO: f64 = 0.6;

/// One raw sample from a refclock driver.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RawSample {
    /// When it was taken, on the local clock.
    pub time: LocalTime,
    /// Reference minus local clock, seconds.
    pub offset_s: f64,
    /// Its error bound (precision, reading delay), seconds.
    pub dispersion_s: f64,
}

/// What a poll of the filter gave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PollOutcome {
    /// One filtered sample, made of `combined` raw samples.
    Sample { sample: RawSample, combined: usize },
    /// Fewer samples than a result needs arrived since the last poll.
    TooFewSamples(usize),
    /// The result's dispersion was above `maxdispersion` (it is dropped).
    DispersionTooLarge(f64),
}

/// The filter length for a refclock polled every `2^poll` s whose driver reads every
/// `2^dpoll` s (`None` for a driver that is not polled, such as SOCK): a poll can
/// bring at most `2^(poll − dpoll)` samples (chrony's `RCL_AddRefclock`).
pub fn filter_length(configured: usize, poll_log2: i8, dpoll_log2: Option<i8>) -> usize {
    let configured = configured.max(1);
    match dpoll_log2 {
        Some(dpoll) => {
            let per_poll = 1usize << (i32::from(poll_log2) - i32::from(dpoll)).clamp(0, 16);
            configured.min(per_poll)
        }
        None => configured,
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct MedianFilter {
    length: usize,
    max_dispersion_s: Option<f64>,
    /// Oldest first.
    samples: VecDeque<RawSample>,
    /// The long-term variance of the readings about their poll's mean, and the
    /// degrees of freedom behind it (chrony's `avg_var`, `avg_var_n`).
    average_variance: f64,
    average_dof: f64,
}

impl MedianFilter {
    /// `length` samples at most (at least 1); `max_dispersion_s`: chrony's
    /// `maxdispersion` (`None`: no limit, chrony's default).
    pub fn new(length: usize, max_dispersion_s: Option<f64>) -> MedianFilter {
        let length = length.max(1);
        MedianFilter {
            length,
            max_dispersion_s,
            samples: VecDeque::with_capacity(length),
            average_variance: 0.0,
            average_dof: 0.0,
        }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Samples a poll needs for a result.
    pub fn min_samples(&self) -> usize {
        self.length.min(4)
    }

    /// Store a raw sample. Non-finite values are the caller's to refuse; they are
    /// ignored here so that one cannot poison an average.
    pub fn add(&mut self, sample: RawSample) {
        if !(sample.offset_s.is_finite() && sample.dispersion_s.is_finite()) {
            return;
        }
        if self.samples.len() == self.length {
            self.samples.pop_front();
        }
        self.samples.push_back(RawSample { dispersion_s: sample.dispersion_s.max(0.0), ..sample });
    }

    /// Forget the stored samples (the feed fell silent: they say nothing about now).
    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// The poll: combine the stored samples into one, and start empty again.
    pub fn poll(&mut self) -> PollOutcome {
        let samples: Vec<RawSample> = self.samples.drain(..).collect();
        if samples.len() < self.min_samples() {
            return PollOutcome::TooFewSamples(samples.len());
        }
        let kept = select(samples);
        let n = kept.len() as f64;
        let offset_s = kept.iter().map(|s| s.offset_s).sum::<f64>() / n;
        // Mean time, computed from the first one so that i64 nanoseconds do not overflow.
        let first = kept[0].time;
        let mean_since_first_s = kept.iter().map(|s| s.time.seconds_since(first)).sum::<f64>() / n;
        let dof = kept.len().saturating_sub(1);
        let variance = if dof > 0 {
            kept.iter().map(|s| (s.offset_s - offset_s).powi(2)).sum::<f64>() / dof as f64
        } else {
            self.average_variance
        }
        .max(MIN_VARIANCE_S2);
        if self.max_dispersion_s.is_some_and(|max| variance.sqrt() > max) {
            return PollOutcome::DispersionTooLarge(variance.sqrt());
        }
        // The error of the mean, from the long-term variance unless this poll's is
        // significantly larger (chrony's samplefilt.c): one poll's estimate from a
        // few readings is noisy, and the regression weighs the polls by it.
        let previous = self.remember_variance(variance, dof as f64);
        let typical = variance * dof as f64 / chi2_90(dof) < previous;
        let mean_error_s = (if typical { self.average_variance } else { variance } / n).sqrt();
        let mean_dispersion_s = kept.iter().map(|s| s.dispersion_s).sum::<f64>() / n;
        let dispersion_s = mean_dispersion_s.max(mean_error_s);
        PollOutcome::Sample {
            sample: RawSample { time: first.add_seconds(mean_since_first_s), offset_s, dispersion_s },
            combined: kept.len(),
        }
    }
}

impl MedianFilter {
    /// Fold one poll's variance into the long-term average: a plain average over
    /// the first 50 degrees of freedom, then a moving one. Returns the average before.
    fn remember_variance(&mut self, variance: f64, dof: f64) -> f64 {
        let previous = if self.average_dof == 0.0 { variance } else { self.average_variance };
        if self.average_dof > 50.0 {
            self.average_variance += dof / (dof + 50.0) * (variance - self.average_variance);
        } else if dof > 0.0 {
            self.average_variance =
                (self.average_variance * self.average_dof + variance * dof) / (dof + self.average_dof);
            self.average_dof += dof;
        }
        previous
    }
}

/// A variance floor, s² (chrony's): a zero would weigh a poll infinitely.
const MIN_VARIANCE_S2: f64 = 1e-20;

/// The chi-square distribution's 90 % quantile for `dof` degrees of freedom
/// (Wilson–Hilferty's approximation; 2.71 for one); 0 for none.
fn chi2_90(dof: usize) -> f64 {
    if dof == 0 {
        return 0.0;
    }
    let k = dof as f64;
    let z = 1.281_551_565_545; // the normal distribution's 90 % quantile
    if dof == 1 {
        return z * z; // exact: the square of a normal variable
    }
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

/// chrony's `select_samples`: drop the readings with a dispersion above 1.5 × the
/// best, then drop the ~20 % lowest and the ~20 % highest offsets (at least one at
/// each end from 3 readings; all of them kept below 4).
/// `samples` is not empty.
fn select(samples: Vec<RawSample>) -> Vec<RawSample> {
    let min_dispersion_s = samples.iter().map(|s| s.dispersion_s).fold(f64::INFINITY, f64::min);
    let mut good: Vec<RawSample> =
        samples.into_iter().filter(|s| s.dispersion_s <= 1.5 * min_dispersion_s + f64::EPSILON).collect();
    if good.len() < 4 {
        return good;
    }
    good.sort_by(|a, b| a.offset_s.total_cmp(&b.offset_s));
    // As many dropped from each end: a trimmed mean, which for normal noise is
    // nearly as good as the mean (a window grown towards the nearer neighbour, a
    // mode-seeker, kept the same count and left a third more noise in clknetsim).
    let n = good.len();
    let dropped = ((n as f64 * (1.0 - COMBINE_RATIO) / 2.0) as usize).clamp(1, (n - 1) / 2);
    good.drain(dropped..n - dropped).collect()
}

/// Samples a refclock must deliver after a silence before it is selectable again,
/// so that a flapping feed does not switch the appliance back and forth.
pub const RETURN_SAMPLES: u32 = 4;

/// A refclock is unreachable after this long without a filtered sample, or two of
/// its polls if that is longer (selection then fails over to the NTP sources).
pub const MIN_SILENCE_S: f64 = 8.0;

/// A reference clock as a source: its raw samples go through the median filter, one
/// filtered sample per poll goes to its clock filter, and its reachability has a
/// silence limit and a return hysteresis.
///
/// The poll is driven by the samples themselves: the first sample at or after the
/// poll time closes the poll. A feed that stops therefore produces no more polls;
/// the silence limit makes it unreachable.
#[derive(Clone, Debug)]
pub struct RefclockSource {
    pub settings: RefclockSourceSettings,
    /// The filtered samples, as for an NTP source.
    pub filter: ClockFilter,
    median: MedianFilter,
    poll_interval_s: f64,
    next_poll: Option<Monotonic>,
    /// The newest raw sample.
    last_sample: Option<Monotonic>,
    /// The newest filtered sample that reached `filter`.
    last_update: Option<Monotonic>,
    /// Raw samples since the refclock last fell silent.
    samples_since_silence: u32,
}

/// What one raw sample did to a [`RefclockSource`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RefclockEvent {
    /// Collected for the next poll.
    Collected,
    /// The first sample after a silence: the filters started empty.
    Back,
    /// It closed a poll and the clock filter has a new sample.
    Filtered,
    /// It closed a poll that gave no filtered sample.
    NoSample(PollOutcome),
}

impl RefclockSource {
    pub fn new(settings: RefclockSourceSettings) -> RefclockSource {
        RefclockSource {
            filter: ClockFilter::new(FilterConfig::default()),
            median: MedianFilter::new(usize::from(settings.filter_length), settings.max_dispersion_s),
            poll_interval_s: 2f64.powi(i32::from(settings.poll)),
            next_poll: None,
            last_sample: None,
            last_update: None,
            samples_since_silence: 0,
            settings,
        }
    }

    /// Its regression's window (`minsamples`, `maxsamples`).
    pub fn with_regression_points(mut self, (min_points, max_points): (usize, usize)) -> RefclockSource {
        self.filter = ClockFilter::new(FilterConfig { min_points, max_points, ..FilterConfig::default() });
        self
    }

    fn silence_s(&self) -> f64 {
        MIN_SILENCE_S.max(2.0 * self.poll_interval_s)
    }

    /// A raw sample (offset already against the disciplined clock, configured offset
    /// included), received at `now`; `phase_s` gives the discipline's phase correction
    /// at a time ([`crate::discipline::Discipline::phase_correction_s`]), which puts
    /// the filtered sample into the regression's frame.
    pub fn on_sample(&mut self, raw: RawSample, now: Monotonic, phase_s: impl Fn(LocalTime) -> f64) -> RefclockEvent {
        let mut event = RefclockEvent::Collected;
        if self.last_sample.is_none_or(|t| now.seconds_since(t) >= self.silence_s()) {
            if self.last_sample.is_some() {
                event = RefclockEvent::Back;
            }
            self.samples_since_silence = 0;
            // Samples from before the silence say nothing about now.
            self.filter.clear();
            self.median.clear();
            self.next_poll = Some(now.add_seconds(self.poll_interval_s));
        }
        // Each reading into the regression's frame: a slew during the poll must not
        // count as a change of the reference.
        self.median.add(RawSample { offset_s: raw.offset_s + phase_s(raw.time), ..raw });
        self.samples_since_silence += 1;
        self.last_sample = Some(now);
        let Some(next_poll) = self.next_poll.filter(|at| now >= *at) else { return event };
        let after = next_poll.add_seconds(self.poll_interval_s);
        self.next_poll = Some(if after <= now { now.add_seconds(self.poll_interval_s) } else { after });
        match self.median.poll() {
            PollOutcome::Sample { sample, .. } => {
                let phase_then_s = phase_s(sample.time);
                self.filter.add_in_frame(
                    Sample {
                        time: sample.time,
                        offset_s: sample.offset_s - phase_then_s,
                        delay_s: self.settings.delay_s,
                        dispersion_s: self.settings.precision_s + sample.dispersion_s,
                        root_delay_s: 0.0,
                        root_dispersion_s: 0.0,
                        stratum: self.settings.stratum,
                        leap: LeapIndicator::NoWarning,
                    },
                    phase_then_s,
                );
                self.last_update = Some(now);
                RefclockEvent::Filtered
            }
            other => RefclockEvent::NoSample(other),
        }
    }

    /// Seconds since the newest raw sample; `None` before the first.
    pub fn last_sample_age_s(&self, now: Monotonic) -> Option<f64> {
        self.last_sample.map(|t| now.seconds_since(t))
    }

    /// A reach register for operators: one bit per raw sample since the feed last
    /// fell silent, up to eight (chronyc shows 377 for a healthy refclock).
    pub fn reach(&self, now: Monotonic) -> u8 {
        if self.reachable(now) || self.last_sample.is_some_and(|t| now.seconds_since(t) < self.silence_s()) {
            (0xffu16 >> (8 - self.samples_since_silence.min(8))) as u8
        } else {
            0
        }
    }

    pub fn poll_log2(&self) -> i8 {
        self.settings.poll
    }

    /// Selectable: a filtered sample recently, and the feed back for long enough.
    pub fn reachable(&self, now: Monotonic) -> bool {
        self.last_update.is_some_and(|t| now.seconds_since(t) < self.silence_s())
            && self.samples_since_silence >= RETURN_SAMPLES
    }

    /// The disciplined clock was stepped by `step_s`: stored samples move with it.
    pub fn apply_step(&mut self, step_s: f64) {
        self.filter.apply_step(step_s);
        self.median.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(ms: i64) -> LocalTime {
        LocalTime(1_700_000_000_000_000_000 + ms * 1_000_000)
    }

    fn raw(ms: i64, offset_s: f64) -> RawSample {
        RawSample { time: at(ms), offset_s, dispersion_s: 1e-9 }
    }

    fn result(outcome: PollOutcome) -> (RawSample, usize) {
        match outcome {
            PollOutcome::Sample { sample, combined } => (sample, combined),
            other => panic!("no result: {other:?}"),
        }
    }

    #[test]
    fn a_poll_that_looks_quiet_by_chance_keeps_the_long_term_error() {
        let mut f = MedianFilter::new(16, None);
        // Readings ±1 µs about 0, 10 of 16 kept (3 dropped at each end): a variance of
        // 10/9 µs², so the mean is known to √(10/9 / 10) µs.
        let usual_s = (10.0f64 / 9.0 / 10.0).sqrt() * 1e-6;
        for poll in 0..10 {
            for i in 0..16 {
                f.add(raw(poll * 16_000 + i * 1000, if i % 2 == 0 { 1e-6 } else { -1e-6 }));
            }
            let (s, _) = result(f.poll());
            assert!((s.dispersion_s - usual_s).abs() < 1e-12, "{}", s.dispersion_s);
        }
        // Sixteen identical readings: not a perfect mean, the usual error.
        for i in 0..16 {
            f.add(raw(160_000 + i * 1000, 0.3e-6));
        }
        // (The long-term average takes it in, and dips a little.)
        let (s, _) = result(f.poll());
        assert!((s.dispersion_s / usual_s - 1.0).abs() < 0.1, "{}", s.dispersion_s);
        // A poll far noisier than usual says so.
        for i in 0..16 {
            f.add(raw(176_000 + i * 1000, if i % 2 == 0 { 20e-6 } else { -20e-6 }));
        }
        let (s, _) = result(f.poll());
        assert!(s.dispersion_s > 4e-6, "{}", s.dispersion_s);
    }

    #[test]
    fn outliers_far_from_the_median_do_not_move_the_result() {
        let mut f = MedianFilter::new(64, None);
        // Ten readings within ±1 µs of 100 µs, and a 50 ms glitch each way.
        let offsets = [100e-6, 101e-6, 99e-6, 0.050, 100e-6, 100.5e-6, -0.050, 99.5e-6, 100e-6, 101e-6, 99e-6, 100e-6];
        for (i, o) in offsets.iter().enumerate() {
            f.add(raw(i as i64 * 250, *o));
        }
        let (s, combined) = result(f.poll());
        assert_eq!(combined, 8, "60 % of 12, as many dropped at each end");
        assert!((s.offset_s - 100e-6).abs() < 0.5e-6, "{}", s.offset_s);
        // The kept readings agree within a µs: so does the dispersion.
        assert!(s.dispersion_s < 1e-6, "{}", s.dispersion_s);
        // Its time is the mean time of the kept readings, inside the poll.
        assert!(s.time > at(0) && s.time < at(11 * 250));
        // The filter starts empty after a poll.
        assert!(f.is_empty());
        assert_eq!(f.poll(), PollOutcome::TooFewSamples(0));
    }

    #[test]
    fn a_plain_mean_would_have_been_wrong() {
        // What the median buys: one wild reading among five.
        let mut f = MedianFilter::new(8, None);
        for (i, o) in [0.001, 0.001, 0.001, 0.001, 0.5].into_iter().enumerate() {
            f.add(raw(i as i64, o));
        }
        let (s, _) = result(f.poll());
        assert!((s.offset_s - 0.001).abs() < 1e-12, "{}", s.offset_s);
    }

    #[test]
    fn a_result_needs_four_samples_or_a_full_short_filter() {
        let mut f = MedianFilter::new(64, None);
        for i in 0..3 {
            f.add(raw(i, 0.0));
        }
        assert_eq!(f.poll(), PollOutcome::TooFewSamples(3));
        let mut f = MedianFilter::new(2, None);
        f.add(raw(0, 0.001));
        assert_eq!(f.poll(), PollOutcome::TooFewSamples(1));
        f.add(raw(1, 0.001));
        f.add(raw(2, 0.003));
        assert_eq!(result(f.poll()).1, 2);
        // Length 1: every poll passes its one sample on (chrony's `filter 1`).
        let mut f = MedianFilter::new(1, None);
        f.add(raw(0, 0.5));
        f.add(raw(1, 0.25));
        assert_eq!(result(f.poll()), (raw(1, 0.25), 1));
    }

    #[test]
    fn the_oldest_samples_leave_a_full_filter() {
        let mut f = MedianFilter::new(4, None);
        for i in 0..10 {
            f.add(raw(i, i as f64));
        }
        assert_eq!(f.len(), 4);
        let (s, _) = result(f.poll());
        // 6..=9 remain; the middle 60 % of 4 (2 samples) are 7 and 8.
        assert_eq!(s.offset_s, 7.5);
    }

    #[test]
    fn slow_readings_are_dropped_before_the_median() {
        let mut f = MedianFilter::new(16, None);
        for i in 0..6 {
            f.add(RawSample { time: at(i), offset_s: 0.002, dispersion_s: 100e-9 });
        }
        // Two readings that took 50 µs (a preempted PHC read) and say 1 ms.
        for i in 6..8 {
            f.add(RawSample { time: at(i), offset_s: 0.001, dispersion_s: 50e-6 });
        }
        let (s, combined) = result(f.poll());
        assert_eq!(s.offset_s, 0.002);
        assert_eq!(combined, 4, "60 % of the 6 fast ones");
    }

    #[test]
    fn maxdispersion_drops_a_scattered_result() {
        let mut f = MedianFilter::new(8, Some(1e-3));
        for (i, o) in [0.0, 0.01, -0.01, 0.02, -0.02].into_iter().enumerate() {
            f.add(raw(i as i64, o));
        }
        match f.poll() {
            PollOutcome::DispersionTooLarge(d) => assert!(d > 1e-3),
            other => panic!("{other:?}"),
        }
        let mut f = MedianFilter::new(8, Some(1e-3));
        for i in 0..5 {
            f.add(raw(i, 0.000_1 * i as f64));
        }
        assert!(matches!(f.poll(), PollOutcome::Sample { .. }));
    }

    #[test]
    fn the_length_of_a_polled_driver_is_what_one_poll_brings() {
        // The seed: poll 3, dpoll -2 → 32 readings per poll, so the filter is 32.
        assert_eq!(filter_length(64, 3, Some(-2)), 32);
        assert_eq!(filter_length(16, 3, Some(-2)), 16);
        // poll 0, dpoll 0: one reading per poll, passed on as it is.
        assert_eq!(filter_length(64, 0, Some(0)), 1);
        // dpoll above poll reads once per poll (chrony lowers dpoll to poll).
        assert_eq!(filter_length(64, 0, Some(4)), 1);
        // A socket feed is not polled: the configured length.
        assert_eq!(filter_length(64, 4, None), 64);
        assert_eq!(filter_length(0, 4, None), 1);
    }

    #[test]
    fn non_finite_samples_are_ignored() {
        let mut f = MedianFilter::new(8, None);
        f.add(raw(0, f64::NAN));
        f.add(RawSample { dispersion_s: f64::INFINITY, ..raw(1, 0.0) });
        assert!(f.is_empty());
    }

    proptest! {
        #[test]
        fn the_result_lies_within_the_samples(offsets in proptest::collection::vec(-1.0f64..1.0, 1..100),
                                              length in 1usize..80) {
            let mut f = MedianFilter::new(length, None);
            for (i, o) in offsets.iter().enumerate() {
                f.add(raw(i as i64, *o));
            }
            let stored: Vec<f64> = offsets.iter().rev().take(length).copied().collect();
            let (lo, hi) = stored.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), o| (l.min(*o), h.max(*o)));
            match f.poll() {
                PollOutcome::Sample { sample, combined } => {
                    prop_assert!(sample.offset_s >= lo - 1e-12 && sample.offset_s <= hi + 1e-12);
                    prop_assert!(combined >= 1 && combined <= stored.len());
                    prop_assert!(sample.dispersion_s.is_finite() && sample.dispersion_s >= 0.0);
                }
                PollOutcome::TooFewSamples(n) => prop_assert!(n < 4.min(length)),
                PollOutcome::DispersionTooLarge(_) => prop_assert!(false, "no limit was set"),
            }
        }
    }

    fn source_settings(poll: i8, filter_length: u16) -> RefclockSourceSettings {
        RefclockSourceSettings {
            refid: *b"GPS\0",
            offset_s: 0.0,
            delay_s: 1e-9,
            precision_s: 1e-6,
            stratum: 0,
            prefer: false,
            noselect: false,
            trust: false,
            require: false,
            poll,
            filter_length,
            max_dispersion_s: None,
            pulse_unlocked: false,
        }
    }

    #[test]
    fn one_filtered_sample_per_poll_and_glitches_are_filtered_out() {
        let mut r = RefclockSource::new(source_settings(2, 64));
        let mut polls = 0;
        // 250 ms readings for 12 s; every fifth is a 10 ms glitch.
        for i in 0..48 {
            let offset = if i % 5 == 4 { 0.010 } else { 0.000_2 };
            if r.on_sample(raw(i * 250, offset), Monotonic(i * 250_000_000), |_| 0.0) == RefclockEvent::Filtered {
                polls += 1;
            }
        }
        // Polls close at 4, 8 s (and would at 12 s): two so far.
        assert_eq!(polls, 2);
        assert_eq!(r.filter.samples().count(), 2);
        for s in r.filter.samples() {
            assert!((s.offset_s - 0.000_2).abs() < 1e-9, "{}", s.offset_s);
        }
    }

    #[test]
    fn a_silence_empties_the_filters_and_the_return_needs_four_samples() {
        let mut r = RefclockSource::new(source_settings(0, 1));
        for i in 0..3 {
            r.on_sample(raw(i * 1000, 0.0), Monotonic(i * 1_000_000_000), |_| 0.0);
        }
        assert_eq!(r.samples_since_silence, 3);
        r.on_sample(raw(3000, 0.0), Monotonic(3_000_000_000), |_| 0.0);
        assert_eq!(r.samples_since_silence, 4);
        // 9 s of silence: everything before it is forgotten.
        assert_eq!(r.on_sample(raw(12_000, 0.0), Monotonic(12_000_000_000), |_| 0.0), RefclockEvent::Back);
        assert_eq!(r.samples_since_silence, 1);
        assert_eq!(r.filter.samples().count(), 0);
        assert!(!r.reachable(Monotonic(12_000_000_000)));
    }

    #[test]
    fn the_silence_limit_is_two_polls_when_polls_are_long() {
        assert_eq!(RefclockSource::new(source_settings(0, 64)).silence_s(), 8.0);
        assert_eq!(RefclockSource::new(source_settings(4, 64)).silence_s(), 32.0);
    }
}
