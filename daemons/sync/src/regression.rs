//! One source's offset and frequency, from its recent samples: chrony's sourcestats
//! regression, written afresh (sourcestats.c `SST_DoNewRegression`, regress.c
//! `RGR_FindBestRegression`).
//!
//! - Each sample is a point in a *raw frame*: `measured offset + phase correction the
//!   discipline had applied by then` (steps and the modelled progress of slews,
//!   [`crate::discipline::Discipline::phase_correction_s`]), and every frequency change
//!   re-expresses the older points as if the new frequency had been set all along
//!   ([`Register::rebase_frequency`], chrony's `SST_SlewSamples`). In that frame the
//!   points lie on a line whose slope is the frequency error left in the clock and
//!   whose value at a time, less the phase correction then, is the offset then.
//! - Weighted least squares: a point weighs by how far its distance (half its delay
//!   plus its dispersion) exceeds the least in the window, so a reply that queued
//!   counts little however few of them there are.
//! - The window adapts: the oldest points are dropped one by one while the residuals'
//!   signs come in fewer runs than chance allows (the line bends: the frequency has
//!   changed), down to `min_points`. A wandering oscillator is followed with a short
//!   window, a steady one is averaged over up to [`MAX_POINTS`].
//! - The slope's error bound (the skew) is its standard error times Student's t at
//!   99.95 %, as chrony's, so that a short window claims little.

use std::collections::VecDeque;

use crate::LocalTime;

/// The most points a regression holds (chrony's `MAX_SAMPLES`, the `maxsamples` limit).
pub const MAX_POINTS: usize = 64;

/// chrony's default `minsamples`.
pub const DEFAULT_MIN_POINTS: usize = 6;

/// Points needed for a slope with an error estimate: with two the line passes through
/// both and has no residual to say how wrong it is.
pub const MIN_POINTS_FOR_SLOPE: usize = 3;

/// Older points kept, per point in the regression, only to count the runs of the
/// residuals' signs (chrony's `REGRESS_RUNS_RATIO`): a window that just shrank can
/// still see that the line has stopped fitting the points before it.
const RUNS_POINTS_RATIO: usize = 2;

/// How the spread of the points' distances maps to their noise (chrony's
/// `SD_TO_DIST_RATIO`): a point whose distance exceeds the window's least by `k` such
/// deviations weighs `1 / (1 + k)²` of the best one's.
const DISTANCE_SPREAD_TO_DEVIATION: f64 = 0.7;

/// The finest a distance is resolved, seconds (a floor for the deviation above).
const DISTANCE_RESOLUTION_S: f64 = 1e-9;

/// No offset is ever known better than this (chrony's `MIN_STDDEV`), seconds.
const MIN_DEVIATION_S: f64 = 1e-9;

/// Floor of a distance used as an error bound, so that a zero does not divide.
const MIN_BOUND_S: f64 = 1e-9;

/// One sample in the raw frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub time: LocalTime,
    /// Measured offset (source − local) plus the phase correction applied by then.
    pub raw_offset_s: f64,
    /// The round trip's delay and the sample's dispersion, seconds.
    pub delay_s: f64,
    pub dispersion_s: f64,
}

impl Point {
    /// Its error bound: half the delay plus the dispersion, seconds.
    pub fn distance_s(&self) -> f64 {
        self.delay_s / 2.0 + self.dispersion_s
    }
}

/// The regression line of a [`Register`]; `x` in seconds relative to `origin`, the
/// newest point's time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Line {
    pub origin: LocalTime,
    /// Raw offset at `origin`, seconds.
    pub intercept_s: f64,
    /// Frequency error left in the clock, s/s: positive, the clock falls behind.
    pub slope: f64,
    /// The slope's error bound, s/s (chrony's skew); infinite below
    /// [`MIN_POINTS_FOR_SLOPE`] points.
    pub skew: f64,
    /// The slope's standard error, s/s (infinite below [`MIN_POINTS_FOR_SLOPE`]).
    pub slope_sd: f64,
    /// Standard deviation of the points about the line, seconds (chrony's std dev).
    pub deviation_s: f64,
    /// Points in the regression.
    pub points: usize,
    /// Bound-based terms for the prediction's error bound (weights 1/distance²).
    bound_weight_sum: f64,
    bound_mean_x_s: f64,
    bound_sxx: f64,
}

impl Line {
    /// The line's raw offset at `time`.
    pub fn raw_at(&self, time: LocalTime) -> f64 {
        self.intercept_s + self.slope * time.seconds_since(self.origin)
    }

    /// Error bound of the prediction at `time`, from the points' distances as bounds.
    pub fn prediction_bound_s(&self, time: LocalTime) -> f64 {
        let dx = time.seconds_since(self.origin) - self.bound_mean_x_s;
        let slope_term = if self.bound_sxx > 0.0 { dx * dx / self.bound_sxx } else { 0.0 };
        (1.0 / self.bound_weight_sum + slope_term).sqrt()
    }
}

/// A source's points: oldest first; the newest `regression_len` are the regression's,
/// the older ones only count runs.
#[derive(Clone, Debug)]
pub struct Register {
    points: VecDeque<Point>,
    regression_len: usize,
    max_points: usize,
    min_points: usize,
}

impl Register {
    /// `max_points` (chrony's `maxsamples`) is clamped to 1..=[`MAX_POINTS`];
    /// `min_points` (`minsamples`) to 1..=`max_points`.
    pub fn new(max_points: usize, min_points: usize) -> Register {
        let max_points = max_points.clamp(1, MAX_POINTS);
        Register {
            points: VecDeque::with_capacity(RUNS_POINTS_RATIO * max_points + 1),
            regression_len: 0,
            max_points,
            min_points: min_points.clamp(1, max_points),
        }
    }

    /// Points in the regression.
    pub fn len(&self) -> usize {
        self.regression_len
    }

    pub fn is_empty(&self) -> bool {
        self.regression_len == 0
    }

    /// The newest point.
    pub fn newest(&self) -> Option<&Point> {
        self.points.back()
    }

    /// The regression's points, oldest first.
    pub fn points(&self) -> impl Iterator<Item = &Point> {
        self.points.iter().skip(self.points.len() - self.regression_len)
    }

    pub fn clear(&mut self) {
        self.points.clear();
        self.regression_len = 0;
    }

    /// A new point; beyond `max_points` the oldest becomes a runs-only point. Returns
    /// the line through the register, with the points the runs test rejected dropped.
    pub fn push(&mut self, point: Point) -> Option<Line> {
        self.points.push_back(point);
        self.regression_len = (self.regression_len + 1).min(self.max_points);
        self.trim();
        let line = self.fit(true)?;
        let dropped = self.regression_len - line.points;
        self.regression_len -= dropped;
        self.trim();
        Some(line)
    }

    /// The line through the current points (as [`Register::push`] left them).
    pub fn line(&self) -> Option<Line> {
        self.fit(false)
    }

    /// Re-express the points as if the frequency correction had been `delta_ppm`
    /// higher all along, anchored at `now`: a clock running faster by `delta_ppm`
    /// would have been that much further behind at each earlier point.
    pub fn rebase_frequency(&mut self, now: LocalTime, delta_ppm: f64) {
        for point in &mut self.points {
            point.raw_offset_s += delta_ppm * 1e-6 * now.seconds_since(point.time);
        }
    }

    /// The clock was stepped by `step_s`: the points' times move onto the new time
    /// scale. Their raw offsets stay, since the phase correction includes the step.
    pub fn apply_step(&mut self, step_s: f64) {
        for point in &mut self.points {
            point.time = point.time.add_seconds(step_s);
        }
    }

    fn trim(&mut self) {
        let keep = (self.regression_len * RUNS_POINTS_RATIO).max(self.regression_len);
        while self.points.len() > keep {
            self.points.pop_front();
        }
    }

    /// The line through the regression's points; with `runs_test`, the oldest are
    /// dropped while the residuals show too few runs. `None` without points.
    fn fit(&self, runs_test: bool) -> Option<Line> {
        let n = self.regression_len;
        if n == 0 {
            return None;
        }
        let runs_only = self.points.len() - n;
        let origin = self.points.back()?.time;
        let x: Vec<f64> = self.points.iter().map(|p| p.time.seconds_since(origin)).collect();
        let y: Vec<f64> = self.points.iter().map(|p| p.raw_offset_s).collect();
        // Point i of the regression is index runs_only + i of x and y.
        let distances: Vec<f64> = self.points.iter().skip(runs_only).map(|p| p.distance_s().max(0.0)).collect();
        let variance = variance_factors(&distances);

        let line = |start: usize| {
            let (mut w_sum, mut wx_sum) = (0.0, 0.0);
            for i in start..n {
                w_sum += 1.0 / variance[i];
                wx_sum += x[runs_only + i] / variance[i];
            }
            let mean_x = wx_sum / w_sum;
            let (mut wy_sum, mut sxy, mut sxx) = (0.0, 0.0, 0.0);
            for i in start..n {
                let dx = x[runs_only + i] - mean_x;
                wy_sum += y[runs_only + i] / variance[i];
                sxy += y[runs_only + i] * dx / variance[i];
                sxx += dx * dx / variance[i];
            }
            // Points all at one instant have no slope.
            let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
            (wy_sum / w_sum - slope * mean_x, slope, sxx, w_sum)
        };
        let mut start = 0;
        let (intercept_s, slope, sxx, w_sum) = loop {
            let fitted = line(start);
            let kept = n - start;
            if !runs_test || kept <= MIN_POINTS_FOR_SLOPE || kept <= self.min_points {
                break fitted;
            }
            // The residuals of up to twice the kept points, older ones included.
            let (intercept, slope, ..) = fitted;
            let from = (runs_only + start).saturating_sub(kept * (RUNS_POINTS_RATIO - 1));
            let residuals = (from..runs_only + n).map(|j| y[j] - (intercept + slope * x[j]));
            if sign_runs(residuals) > critical_runs(runs_only + n - from) {
                break fitted;
            }
            start += 1;
        };
        let kept = n - start;
        let chi2: f64 = (start..n)
            .map(|i| {
                let r = y[runs_only + i] - (intercept_s + slope * x[runs_only + i]);
                r * r / variance[i]
            })
            .sum();
        let (slope_sd, skew, deviation_s) = if kept >= MIN_POINTS_FOR_SLOPE && sxx > 0.0 {
            let dof = kept - 2;
            let residual_variance = chi2 / dof as f64;
            let slope_sd = (residual_variance / sxx).sqrt();
            // The weighted mean of the points' variances.
            let deviation_s = (residual_variance * kept as f64 / w_sum).sqrt();
            (slope_sd, slope_sd * student_t_99_95(dof), deviation_s.max(MIN_DEVIATION_S))
        } else {
            (f64::INFINITY, f64::INFINITY, MIN_DEVIATION_S)
        };

        let (mut weight_sum, mut sum_x) = (0.0, 0.0);
        for i in start..n {
            let d = distances[i].max(MIN_BOUND_S);
            weight_sum += 1.0 / (d * d);
            sum_x += x[runs_only + i] / (d * d);
        }
        let bound_mean_x_s = sum_x / weight_sum;
        let bound_sxx: f64 = (start..n)
            .map(|i| {
                let d = distances[i].max(MIN_BOUND_S);
                (x[runs_only + i] - bound_mean_x_s).powi(2) / (d * d)
            })
            .sum();
        Some(Line {
            origin,
            intercept_s,
            slope,
            skew,
            slope_sd,
            deviation_s,
            points: kept,
            bound_weight_sum: weight_sum,
            bound_mean_x_s,
            bound_sxx,
        })
    }
}

/// chrony's weights, as variance factors (large: less reliable): 1 for the points
/// with the least distance, `(1 + excess / deviation)²` above it, the deviation taken
/// from the spread between the least and the median distance.
fn variance_factors(distances: &[f64]) -> Vec<f64> {
    let mut sorted = distances.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let least_s = sorted[0];
    let median_s = if n % 2 == 1 { sorted[n / 2] } else { 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]) };
    let deviation_s = ((median_s - least_s) / DISTANCE_SPREAD_TO_DEVIATION).min(least_s).max(DISTANCE_RESOLUTION_S);
    let floor_s = least_s + DISTANCE_RESOLUTION_S;
    distances
        .iter()
        .map(|&d| {
            let factor = 1.0 + (d - floor_s).max(0.0) / deviation_s;
            factor * factor
        })
        .collect()
}

/// How many runs of one sign the residuals come in (a zero breaks a run).
fn sign_runs(residuals: impl Iterator<Item = f64>) -> usize {
    let mut runs = 0;
    let mut last = 0.0;
    for r in residuals {
        if runs == 0 || !((r < 0.0 && last < 0.0) || (r > 0.0 && last > 0.0)) {
            runs += 1;
        }
        last = r;
    }
    runs
}

/// The most runs of residual signs that `n` points about a line that fits them show
/// with a probability below 5 % (one-sided): the Wald–Wolfowitz runs test for `n / 2`
/// points of each sign, in its normal approximation; 0 (never rejects) below 8 points,
/// where that approximation fails.
fn critical_runs(n: usize) -> usize {
    if n < 8 {
        return 0;
    }
    let (n1, n2) = ((n / 2) as f64, (n - n / 2) as f64);
    let n = n as f64;
    let mean = 2.0 * n1 * n2 / n + 1.0;
    let variance = 2.0 * n1 * n2 * (2.0 * n1 * n2 - n) / (n * n * (n - 1.0));
    (mean - 1.645 * variance.sqrt()).floor() as usize
}

/// Student's t at the 99.95 % quantile for `dof` degrees of freedom: exact for 1
/// and 2, the Cornish–Fisher expansion about the normal quantile (Abramowitz &
/// Stegun 26.7.5) above, within 5 % at 3 and closer beyond.
fn student_t_99_95(dof: usize) -> f64 {
    const P: f64 = 0.9995;
    match dof {
        0 => f64::INFINITY,
        1 => (std::f64::consts::PI * (P - 0.5)).tan(),
        2 => (2.0 * P - 1.0) / (2.0 * P * (1.0 - P)).sqrt(),
        _ => {
            // The normal distribution's 99.95 % quantile.
            let z: f64 = 3.290_526_731_491_926;
            let v = dof as f64;
            let g1 = (z.powi(3) + z) / 4.0;
            let g2 = (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / 96.0;
            let g3 = (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / 384.0;
            let g4 =
                (79.0 * z.powi(9) + 776.0 * z.powi(7) + 1482.0 * z.powi(5) - 1920.0 * z.powi(3) - 945.0 * z) / 92_160.0;
            z + g1 / v + g2 / (v * v) + g3 / v.powi(3) + g4 / v.powi(4)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: f64) -> LocalTime {
        LocalTime(1_700_000_000_000_000_000).add_seconds(seconds)
    }

    /// splitmix64 and Box–Muller: seeded measurement noise.
    struct Noise(u64);

    impl Noise {
        fn gaussian(&mut self) -> f64 {
            let mut uniform = || {
                self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = self.0;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (((z ^ (z >> 31)) >> 11) as f64 + 1.0) / (1u64 << 53) as f64
            };
            let (u1, u2) = (uniform(), uniform());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }

    fn point(t: f64, raw_offset_s: f64, distance_s: f64) -> Point {
        Point { time: at(t), raw_offset_s, delay_s: 0.0, dispersion_s: distance_s }
    }

    #[test]
    fn the_tables_match_their_definitions() {
        // chrony's published 5 % table, at a few sizes.
        for (n, runs) in [(8, 2), (10, 3), (20, 7), (32, 12), (64, 26), (128, 55)] {
            assert_eq!(critical_runs(n), runs, "{n} points");
        }
        assert_eq!(critical_runs(7), 0);
        // Student's t at 99.95 %: exact at 1 and 2, within 5 % at 3, 1 % from 10.
        assert!((student_t_99_95(1) - 636.6).abs() < 0.1);
        assert!((student_t_99_95(2) - 31.6).abs() < 0.05);
        assert!((student_t_99_95(3) / 12.92 - 1.0).abs() < 0.05);
        assert!((student_t_99_95(10) / 4.587 - 1.0).abs() < 0.01);
        assert!((student_t_99_95(40) / 3.551 - 1.0).abs() < 0.01);
        assert_eq!(sign_runs([1.0, 2.0, -1.0, -3.0, 4.0].into_iter()), 3);
        assert_eq!(sign_runs([1.0, 0.0, 1.0].into_iter()), 3);
    }

    #[test]
    fn a_line_through_noise_finds_the_slope_and_bounds_it() {
        let mut noise = Noise(7);
        let mut register = Register::new(MAX_POINTS, DEFAULT_MIN_POINTS);
        let mut line = None;
        for i in 0..64 {
            let t = f64::from(i) * 16.0;
            line = register.push(point(t, 0.001 + 2e-6 * t + 10e-6 * noise.gaussian(), 50e-6));
        }
        let line = line.unwrap();
        assert_eq!(line.points, 64, "white noise keeps the whole window");
        let slope_ppm = line.slope * 1e6;
        assert!((slope_ppm - 2.0).abs() < 0.1, "{slope_ppm} ppm");
        // The skew bounds the error, and is not absurdly loose.
        assert!((slope_ppm - 2.0).abs() < line.skew * 1e6 && line.skew * 1e6 < 0.2, "{}", line.skew * 1e6);
        assert!((line.deviation_s / 10e-6 - 1.0).abs() < 0.3, "{}", line.deviation_s);
        let now = at(63.0 * 16.0);
        assert!((line.raw_at(now) - (0.001 + 2e-6 * 63.0 * 16.0)).abs() < 10e-6);
    }

    #[test]
    fn a_changed_frequency_shortens_the_window() {
        let mut noise = Noise(3);
        let mut register = Register::new(MAX_POINTS, DEFAULT_MIN_POINTS);
        let mut raw = 0.0;
        let mut line = None;
        for i in 0..96 {
            // 0 ppm, then 5 ppm from point 64: the old points no longer fit a line.
            raw += if i < 64 { 0.0 } else { 5e-6 * 16.0 };
            line = register.push(point(f64::from(i) * 16.0, raw + 1e-6 * noise.gaussian(), 50e-6));
        }
        let line = line.unwrap();
        assert!(line.points <= 40, "{} points kept", line.points);
        assert!((line.slope * 1e6 - 5.0).abs() < 0.05, "{} ppm", line.slope * 1e6);
    }

    #[test]
    fn a_delayed_point_counts_little() {
        let mut register = Register::new(MAX_POINTS, DEFAULT_MIN_POINTS);
        for i in 0..16 {
            // A queue delayed every fourth reply by 10 ms, biasing its offset by 5 ms.
            let (offset_s, distance_s) = if i % 4 == 3 { (5e-3, 5e-3 + 50e-6) } else { (0.0, 50e-6) };
            register.push(point(f64::from(i) * 16.0, offset_s, distance_s));
        }
        let line = register.line().unwrap();
        assert!(line.raw_at(at(15.0 * 16.0)).abs() < 20e-6, "{}", line.raw_at(at(15.0 * 16.0)));
    }

    #[test]
    fn frequency_rebase_and_step_keep_the_line_meaningful() {
        let mut register = Register::new(MAX_POINTS, DEFAULT_MIN_POINTS);
        for i in 0..8 {
            register.push(point(f64::from(i) * 10.0, 3e-6 * f64::from(i) * 10.0, 1e-6));
        }
        assert!((register.line().unwrap().slope - 3e-6).abs() < 1e-12);
        // The clock was sped up by 3 ppm at t = 70: as if it had been all along.
        register.rebase_frequency(at(70.0), 3.0);
        let line = register.line().unwrap();
        assert!(line.slope.abs() < 1e-12, "{}", line.slope);
        assert!((line.raw_at(at(70.0)) - 210e-6).abs() < 1e-12);
        // A step moves the times, not the raw offsets.
        register.apply_step(1.0);
        assert_eq!(register.newest().unwrap().time, at(71.0));
        assert!((register.line().unwrap().raw_at(at(71.0)) - 210e-6).abs() < 1e-12);
    }

    #[test]
    fn few_points_have_no_slope_bound_and_limits_hold() {
        let mut register = Register::new(3, 10);
        assert!(register.line().is_none());
        let line = register.push(point(0.0, 1e-3, 1e-4)).unwrap();
        assert_eq!((line.points, line.slope, line.raw_at(at(5.0))), (1, 0.0, 1e-3));
        assert!(line.skew.is_infinite());
        register.push(point(1.0, 2e-3, 1e-4));
        assert!(register.line().unwrap().skew.is_infinite());
        for i in 2..10 {
            register.push(point(f64::from(i), 1e-3 * f64::from(i + 1), 1e-4));
        }
        assert_eq!(register.len(), 3, "maxsamples 3");
        assert!((register.line().unwrap().slope - 1e-3).abs() < 1e-12);
        register.clear();
        assert!(register.is_empty() && register.newest().is_none());
    }
}
