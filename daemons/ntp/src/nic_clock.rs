//! A NIC's hardware clock (its PHC) mapped onto the system clock, so that the
//! NIC's receive and transmit timestamps (`hwtimestamp`, SOF_TIMESTAMPING_RAW_HARDWARE)
//! become system-clock times the server can hand out.
//!
//! The engine's main thread reads the PHC between two system-clock reads every
//! second ([`NicClock::read`]) — a read-only descriptor the supervisor opened, no
//! capability — and fits a line through the last readings ([`Fit`], sans I/O, as
//! chrony's hwclock does with its regression); the serving threads convert with
//! the newest fit ([`NicClock::to_system`]).

use std::sync::RwLock;

use strata_sys::KernelClock;

/// Readings the fit is made from: 16 s at one a second.
const READINGS: usize = 16;

/// Older than this, the fit says nothing about the NIC's clock now (the engine
/// stalled, the PHC was stepped by ptp4l): the software timestamps serve instead.
const STALE_NS: i64 = 8_000_000_000;

/// PHC reads per reading; the one with the shortest system-clock bracket wins.
const READS: usize = 5;

/// The PHC's time against the system clock's, a fitted line: system = system_ns +
/// (phc − phc_ns) × (1 + rate).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mapping {
    phc_ns: i64,
    system_ns: i64,
    rate: f64,
}

impl Mapping {
    pub fn to_system(self, phc_ns: i64) -> i64 {
        let elapsed = phc_ns - self.phc_ns;
        self.system_ns + elapsed + (elapsed as f64 * self.rate).round() as i64
    }
}

/// Least squares over the last [`READINGS`] (phc, system) pairs. Sans I/O.
#[derive(Debug, Default)]
pub struct Fit {
    readings: std::collections::VecDeque<(i64, i64)>,
}

impl Fit {
    /// A reading: the PHC's time and the system clock's at the same instant.
    pub fn add(&mut self, phc_ns: i64, system_ns: i64) {
        // A PHC stepped backwards (ptp4l, phc_ctl) makes the old readings another line.
        if self.readings.back().is_some_and(|&(last, _)| phc_ns <= last) {
            self.readings.clear();
        }
        if self.readings.len() == READINGS {
            self.readings.pop_front();
        }
        self.readings.push_back((phc_ns, system_ns));
    }

    /// The line through the readings, anchored at the newest; one reading gives
    /// rate 0 (the NICs' clocks are within a few hundred ppm, so for the second
    /// until the next reading that is within a few hundred ns).
    pub fn mapping(&self) -> Option<Mapping> {
        let &(phc0, sys0) = self.readings.back()?;
        let n = self.readings.len() as f64;
        // Relative to the newest reading: differences stay small enough for f64.
        let points = || self.readings.iter().map(|&(p, s)| ((p - phc0) as f64, (s - sys0 - (p - phc0)) as f64));
        let (mean_x, mean_y) = points().fold((0.0, 0.0), |(x, y), (px, py)| (x + px / n, y + py / n));
        let (sxx, sxy) = points().fold((0.0, 0.0), |(xx, xy), (px, py)| {
            (xx + (px - mean_x) * (px - mean_x), xy + (px - mean_x) * (py - mean_y))
        });
        let rate = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        // The line's value at the newest reading: the mean of all the readings'
        // residuals, not the newest reading's own noise.
        let offset = mean_y - rate * mean_x;
        Some(Mapping { phc_ns: phc0, system_ns: sys0 + offset.round() as i64, rate })
    }
}

/// One interface's PHC, read by the main thread, converted with by the serving threads.
#[derive(Debug)]
pub struct NicClock {
    pub interface: String,
    pub if_index: u32,
    /// The NIC stamps requests too (its receive filter takes NTP packets).
    pub receive: bool,
    /// Added to each hardware transmit timestamp, ns (`txcomp`).
    txcomp_ns: i64,
    /// Subtracted from each hardware receive timestamp, ns (`rxcomp`).
    rxcomp_ns: i64,
    /// The device stays open for its dynamic clock id to stay valid.
    _device: std::fs::File,
    clock: KernelClock,
    fit: std::sync::Mutex<Fit>,
    /// The newest fit and the system time of the reading it ends with.
    mapping: RwLock<Option<(Mapping, i64)>>,
}

impl NicClock {
    pub fn new(interface: String, if_index: u32, receive: bool, comp_ns: (i64, i64), device: std::fs::File) -> Self {
        let clock = KernelClock::of_phc(&device);
        NicClock {
            interface,
            if_index,
            receive,
            txcomp_ns: comp_ns.0,
            rxcomp_ns: comp_ns.1,
            _device: device,
            clock,
            fit: Default::default(),
            mapping: RwLock::new(None),
        }
    }

    /// Read the PHC against the system clock and refit (the main thread, every second).
    pub fn read(&self) -> std::io::Result<()> {
        let mut best: Option<(i64, i64, i64)> = None;
        for _ in 0..READS {
            let before = crate::workers::system_now_ns();
            let phc = self.clock.now_ns()?;
            let after = crate::workers::system_now_ns();
            let delay = after - before;
            if delay >= 0 && best.is_none_or(|(d, _, _)| delay < d) {
                best = Some((delay, phc, before + delay / 2));
            }
        }
        let Some((_, phc, system)) = best else { return Ok(()) };
        let mut fit = self.fit.lock().unwrap_or_else(|e| e.into_inner());
        fit.add(phc, system);
        *self.mapping.write().unwrap_or_else(|e| e.into_inner()) = fit.mapping().map(|m| (m, system));
        Ok(())
    }

    fn to_system(&self, phc_ns: i64, now_ns: i64) -> Option<i64> {
        let (mapping, read_at) = (*self.mapping.read().unwrap_or_else(|e| e.into_inner()))?;
        (now_ns - read_at < STALE_NS).then(|| mapping.to_system(phc_ns))
    }

    /// A hardware receive timestamp as system-clock ns; `None` while there is no
    /// fresh mapping.
    pub fn receive_time(&self, phc_ns: i64, now_ns: i64) -> Option<i64> {
        self.to_system(phc_ns - self.rxcomp_ns, now_ns)
    }

    /// A hardware transmit timestamp as system-clock ns.
    pub fn transmit_time(&self, phc_ns: i64, now_ns: i64) -> Option<i64> {
        self.to_system(phc_ns + self.txcomp_ns, now_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fit_follows_a_nic_clock_that_runs_fast_and_is_off() {
        // The PHC is 37 s ahead (TAI) and runs 50 ppm fast; readings ±200 ns noisy.
        let mut fit = Fit::default();
        let noise = [150, -200, 80, 0, -120, 190, -60, 30, -170, 110, 40, -90, 200, -10, 60, -140];
        let phc_at = |sys: i64| 37_000_000_000 + sys + sys / 20_000;
        for (k, n) in noise.iter().enumerate() {
            let sys = 1_000_000_000_000 + k as i64 * 1_000_000_000;
            fit.add(phc_at(sys), sys + n);
        }
        let m = fit.mapping().unwrap();
        assert!((m.rate - (1.0 / 1.00005 - 1.0)).abs() < 1e-9, "rate {}", m.rate);
        // Half a second after the last reading, the mapping is within the noise's mean.
        let sys = 1_000_000_000_000 + 15_500_000_000;
        let err = m.to_system(phc_at(sys)) - sys;
        assert!(err.abs() < 60, "error {err} ns");
    }

    #[test]
    fn one_reading_maps_with_the_clocks_rates_equal() {
        let mut fit = Fit::default();
        assert_eq!(fit.mapping(), None);
        fit.add(5_000, 1_000);
        assert_eq!(fit.mapping().unwrap().to_system(6_000), 2_000);
    }

    #[test]
    fn a_phc_stepped_back_starts_a_new_line() {
        let mut fit = Fit::default();
        for k in 0..10 {
            fit.add(100_000_000_000 + k * 1_000_000_000, k * 1_000_000_000);
        }
        // Stepped back 50 s: the earlier readings would tilt the line.
        fit.add(60_000_000_000, 10_000_000_000);
        assert_eq!(fit.mapping().unwrap().to_system(61_000_000_000), 11_000_000_000);
    }
}
