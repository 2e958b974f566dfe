//! A reference clock as a source of the engine: its raw samples (from the refclock
//! reader) go through the median filter, one filtered sample per poll goes to its
//! clock filter, and its reachability has a silence limit and a return hysteresis.
//!
//! The poll is driven by the samples themselves: the first sample at or after the
//! poll time closes the poll. A feed that stops therefore produces no more polls;
//! the silence limit makes it unreachable.

use std::time::{Duration, Instant};

use strata_proto::ipc::RefclockSourceSettings;
use strata_sync::filter::{ClockFilter, FilterConfig};
use strata_sync::refclock::{MedianFilter, PollOutcome, RawSample};
use strata_sync::{Leap, Sample};
use tracing::{debug, info};

/// Samples a refclock must deliver after a silence before it is selectable again,
/// so that a flapping feed does not switch the appliance back and forth.
const RETURN_SAMPLES: u32 = 4;

/// A refclock is unreachable after this long without a filtered sample, or two of
/// its polls if that is longer (selection then fails over to the NTP sources).
const MIN_SILENCE: Duration = Duration::from_secs(8);

pub struct RefclockSource {
    pub settings: RefclockSourceSettings,
    /// The filtered samples, as for an NTP source.
    pub filter: ClockFilter,
    median: MedianFilter,
    poll_interval: Duration,
    next_poll: Option<Instant>,
    /// The newest raw sample.
    last_sample: Option<Instant>,
    /// The newest filtered sample that reached `filter`.
    last_update: Option<Instant>,
    /// Raw samples since the refclock last fell silent.
    samples_since_silence: u32,
}

impl RefclockSource {
    pub fn new(settings: RefclockSourceSettings) -> RefclockSource {
        RefclockSource {
            filter: ClockFilter::new(FilterConfig::default()),
            median: MedianFilter::new(usize::from(settings.filter_length), settings.max_dispersion_s),
            poll_interval: Duration::from_secs_f64(2f64.powi(i32::from(settings.poll))),
            next_poll: None,
            last_sample: None,
            last_update: None,
            samples_since_silence: 0,
            settings,
        }
    }

    fn silence(&self) -> Duration {
        MIN_SILENCE.max(2 * self.poll_interval)
    }

    /// A raw sample (offset already against the served clock, configured offset
    /// included). `true` if it closed a poll and the filter has a new sample.
    pub fn on_sample(&mut self, index: usize, raw: RawSample, now: Instant) -> bool {
        if self.last_sample.is_none_or(|t| now.duration_since(t) >= self.silence()) {
            if self.last_sample.is_some() {
                info!(refclock = index, "refclock feed is back");
            }
            self.samples_since_silence = 0;
            // Samples from before the silence say nothing about now.
            self.filter.clear();
            self.median.clear();
            self.next_poll = Some(now + self.poll_interval);
        }
        self.median.add(raw);
        self.samples_since_silence += 1;
        self.last_sample = Some(now);
        let Some(next_poll) = self.next_poll.filter(|at| now >= *at) else { return false };
        let after = next_poll + self.poll_interval;
        self.next_poll = Some(if after <= now { now + self.poll_interval } else { after });
        match self.median.poll() {
            PollOutcome::Sample { sample, combined } => {
                debug!(refclock = index, offset_s = sample.offset_s, combined, "filtered refclock sample");
                self.filter.add(Sample {
                    time: sample.time,
                    offset_s: sample.offset_s,
                    delay_s: self.settings.delay_s,
                    dispersion_s: self.settings.precision_s + sample.dispersion_s,
                    root_delay_s: 0.0,
                    root_dispersion_s: 0.0,
                    stratum: self.settings.stratum,
                    leap: Leap::None,
                });
                self.last_update = Some(now);
                true
            }
            other => {
                debug!(refclock = index, ?other, "no filtered refclock sample this poll");
                false
            }
        }
    }

    /// Selectable: a filtered sample recently, and the feed back for long enough.
    /// Seconds since the newest raw sample; `None` before the first.
    pub fn last_sample_age_s(&self) -> Option<f64> {
        self.last_sample.map(|t| t.elapsed().as_secs_f64())
    }

    /// A reach register for operators: one bit per raw sample since the feed last
    /// fell silent, up to eight (chronyc shows 377 for a healthy refclock).
    pub fn reach(&self) -> u8 {
        if self.reachable() || self.last_sample.is_some_and(|t| t.elapsed() < self.silence()) {
            (0xffu16 >> (8 - self.samples_since_silence.min(8))) as u8
        } else {
            0
        }
    }

    pub fn poll_log2(&self) -> i8 {
        self.settings.poll
    }

    pub fn reachable(&self) -> bool {
        self.last_update.is_some_and(|t| t.elapsed() < self.silence()) && self.samples_since_silence >= RETURN_SAMPLES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_sync::LocalTime;

    fn settings(poll: i8, filter_length: u16) -> RefclockSourceSettings {
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

    fn raw(ms: i64, offset_s: f64) -> RawSample {
        RawSample { time: LocalTime(1_700_000_000_000_000_000 + ms * 1_000_000), offset_s, dispersion_s: 0.0 }
    }

    #[test]
    fn one_filtered_sample_per_poll_and_glitches_are_filtered_out() {
        let start = Instant::now();
        let mut r = RefclockSource::new(settings(2, 64));
        let mut polls = 0;
        // 250 ms readings for 12 s; every fifth is a 10 ms glitch.
        for i in 0..48 {
            let offset = if i % 5 == 4 { 0.010 } else { 0.000_2 };
            if r.on_sample(0, raw(i * 250, offset), start + Duration::from_millis(i as u64 * 250)) {
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
        let start = Instant::now();
        let mut r = RefclockSource::new(settings(0, 1));
        for i in 0..3 {
            r.on_sample(0, raw(i * 1000, 0.0), start + Duration::from_secs(i as u64));
        }
        assert_eq!(r.samples_since_silence, 3);
        r.on_sample(0, raw(3000, 0.0), start + Duration::from_secs(3));
        assert_eq!(r.samples_since_silence, 4);
        // 9 s of silence: everything before it is forgotten.
        r.on_sample(0, raw(12_000, 0.0), start + Duration::from_secs(12));
        assert_eq!(r.samples_since_silence, 1);
        assert_eq!(r.filter.samples().count(), 0);
        assert!(!r.reachable());
    }

    #[test]
    fn the_silence_limit_is_two_polls_when_polls_are_long() {
        assert_eq!(RefclockSource::new(settings(0, 64)).silence(), Duration::from_secs(8));
        assert_eq!(RefclockSource::new(settings(4, 64)).silence(), Duration::from_secs(32));
    }
}
