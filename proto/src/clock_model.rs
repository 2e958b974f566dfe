//! The `simulated` clock backend's model: a small file that the clock adjuster
//! writes and every process that needs the time reads, so that a whole appliance
//! can run against a clock that is wrong on purpose without touching the machine's.
//!
//! simulated time = system time + `offset_at(system time)`, where the offset grows
//! with the model's frequency error and with an ongoing slew:
//!
//! ```text
//! offset(t) = offset_s + (frequency_ppm · (t − reference) + slew_ppm · (min(t, slew_end) − reference)) · 1e-6
//! ```
//!
//! The record is written with one `pwrite` and read with one `pread`; a sequence
//! number at both ends (a seqlock) lets a reader detect a torn read and retry.

/// Size of the record on disk.
pub const RECORD_LEN: usize = 72;
const MAGIC: [u8; 8] = *b"STRATAM1";

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClockModel {
    /// Simulated minus system time at `reference_ns`, seconds.
    pub offset_s: f64,
    /// How fast the uncorrected simulated clock gains on the system clock, ppm: the
    /// error a test gives it on purpose.
    pub frequency_ppm: f64,
    /// The frequency correction the adjuster applied, ppm.
    pub correction_ppm: f64,
    /// The system time the model is anchored at, ns since the Unix epoch.
    pub reference_ns: i64,
    /// An ongoing slew, ppm, until `slew_end_ns`.
    pub slew_ppm: f64,
    pub slew_end_ns: i64,
}

impl ClockModel {
    /// Simulated minus system time at system time `t_ns`, seconds.
    pub fn offset_at(&self, t_ns: i64) -> f64 {
        let since = (t_ns - self.reference_ns) as f64 * 1e-9;
        let slewing = (t_ns.min(self.slew_end_ns) - self.reference_ns).max(0) as f64 * 1e-9;
        self.offset_s + ((self.frequency_ppm + self.correction_ppm) * since + self.slew_ppm * slewing) * 1e-6
    }

    /// The same clock, re-anchored at `t_ns` (a slew still running carries on).
    pub fn rebased(&self, t_ns: i64) -> ClockModel {
        ClockModel { offset_s: self.offset_at(t_ns), reference_ns: t_ns, ..*self }
    }

    pub fn encode(&self, sequence: u64) -> [u8; RECORD_LEN] {
        let mut r = [0u8; RECORD_LEN];
        r[0..8].copy_from_slice(&MAGIC);
        r[8..16].copy_from_slice(&sequence.to_le_bytes());
        r[16..24].copy_from_slice(&self.offset_s.to_le_bytes());
        r[24..32].copy_from_slice(&self.frequency_ppm.to_le_bytes());
        r[32..40].copy_from_slice(&self.reference_ns.to_le_bytes());
        r[40..48].copy_from_slice(&self.slew_ppm.to_le_bytes());
        r[48..56].copy_from_slice(&self.slew_end_ns.to_le_bytes());
        r[56..64].copy_from_slice(&self.correction_ppm.to_le_bytes());
        r[64..72].copy_from_slice(&sequence.to_le_bytes());
        r
    }

    /// The model and its sequence number; `None` for a torn or foreign record.
    pub fn decode(r: &[u8]) -> Option<(u64, ClockModel)> {
        if r.len() != RECORD_LEN || r[0..8] != MAGIC || r[8..16] != r[64..72] {
            return None;
        }
        let f = |i: usize| f64::from_le_bytes(r[i..i + 8].try_into().unwrap());
        let n = |i: usize| i64::from_le_bytes(r[i..i + 8].try_into().unwrap());
        let model = ClockModel {
            offset_s: f(16),
            frequency_ppm: f(24),
            reference_ns: n(32),
            slew_ppm: f(40),
            slew_end_ns: n(48),
            correction_ppm: f(56),
        };
        let finite =
            [model.offset_s, model.frequency_ppm, model.slew_ppm, model.correction_ppm].iter().all(|v| v.is_finite());
        finite.then(|| (u64::from_le_bytes(r[8..16].try_into().unwrap()), model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_grows_with_frequency_and_slew_stops_at_its_end() {
        let m = ClockModel {
            offset_s: 0.5,
            frequency_ppm: 40.0,
            correction_ppm: -10.0,
            reference_ns: 0,
            slew_ppm: -500.0,
            slew_end_ns: 1_000_000_000,
        };
        assert!((m.offset_at(0) - 0.5).abs() < 1e-12);
        // After 1 s: +30 µs frequency, −500 µs slew.
        assert!((m.offset_at(1_000_000_000) - (0.5 + 30e-6 - 500e-6)).abs() < 1e-12);
        // After 2 s: the slew stopped at 1 s.
        assert!((m.offset_at(2_000_000_000) - (0.5 + 60e-6 - 500e-6)).abs() < 1e-12);
        let r = m.rebased(1_500_000_000);
        assert!((r.offset_at(2_000_000_000) - m.offset_at(2_000_000_000)).abs() < 1e-12);
    }

    #[test]
    fn a_record_round_trips_and_a_torn_one_is_refused() {
        let m = ClockModel { offset_s: -0.25, frequency_ppm: 12.5, reference_ns: 42, ..ClockModel::default() };
        let r = m.encode(7);
        assert_eq!(ClockModel::decode(&r), Some((7, m)));
        let mut torn = r;
        torn[64] = 8;
        assert_eq!(ClockModel::decode(&torn), None);
        assert_eq!(ClockModel::decode(&r[..71]), None);
        let mut nan = r;
        nan[16..24].copy_from_slice(&f64::NAN.to_le_bytes());
        assert_eq!(ClockModel::decode(&nan), None);
    }
}
