//! A PPS pulse as a sample (chrony's `RCL_AddPulse`), sans I/O. A pulse says when a
//! second began on the system clock, not which second: the whole seconds come from
//! the refclock it is locked to (`lock REFID`), or else from the system clock itself
//! (the nearest second; the engine then uses the sample only while the clock is
//! synchronised to another source within 0.5 s, as chrony does).
//!
//! Sign: reference − system, like every refclock sample. An edge stamped at
//! 12:00:00.000020 by the system clock means the system clock is 20 µs ahead:
//! offset −20 µs.

use strata_proto::ipc::PpsLock;

/// chrony drops a pulse farther than this from its locked refclock (0.2 / rate).
const MAX_LOCK_ERROR_S: f64 = 0.2;

/// Why a pulse gave no sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PulseError {
    /// The locked refclock has sent no sample yet.
    NoLockSample,
    /// Its newest sample is older than `maxlockage` pulses.
    LockTooOld { age_s: f64 },
    /// The pulse and the locked refclock disagree by 0.2 s or more: one of them is
    /// not what it claims, and no second can be trusted.
    NotLocked { difference_s: f64 },
}

/// The sample offset of a pulse whose edge the system clock stamped at
/// `pulse_time_ns`: of the candidates `n − fraction` (n whole seconds), the one for
/// which offset + `own_offset_s` is nearest `target_s`.
fn nearest(pulse_time_ns: i64, own_offset_s: f64, target_s: f64) -> f64 {
    let fraction_s = pulse_time_ns.rem_euclid(1_000_000_000) as f64 * 1e-9;
    let whole_s = (target_s - own_offset_s + fraction_s).round();
    whole_s - fraction_s
}

/// Without `lock`: the system clock's nearest second.
pub fn unlocked_offset(pulse_time_ns: i64, own_offset_s: f64) -> f64 {
    nearest(pulse_time_ns, own_offset_s, 0.0)
}

/// With `lock`: the second the locked refclock says. `locked` is its newest raw
/// sample: (system time, ns; offset, s, before its configured offset).
pub fn locked_offset(
    pulse_time_ns: i64,
    own_offset_s: f64,
    lock: &PpsLock,
    locked: Option<(i64, f64)>,
) -> Result<f64, PulseError> {
    let (time_ns, offset_s) = locked.ok_or(PulseError::NoLockSample)?;
    // One pulse a second (chrony's `rate 1`): the age in pulses is the age in seconds.
    let age_s = (pulse_time_ns - time_ns).abs() as f64 * 1e-9;
    if age_s > f64::from(lock.max_age_pulses) {
        return Err(PulseError::LockTooOld { age_s });
    }
    let target_s = offset_s + lock.offset_s;
    let offset = nearest(pulse_time_ns, own_offset_s, target_s);
    let difference_s = (target_s - (offset + own_offset_s)).abs();
    if difference_s >= MAX_LOCK_ERROR_S {
        return Err(PulseError::NotLocked { difference_s });
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: i64 = 1_000_000_000;
    const T: i64 = 1_700_000_000 * SECOND;

    fn lock(offset_s: f64) -> PpsLock {
        PpsLock { refclock: 0, offset_s, max_age_pulses: 2 }
    }

    #[test]
    fn without_lock_the_nearest_second_of_the_system_clock() {
        // Stamped 20 µs after a second: the system clock is 20 µs ahead.
        assert!((unlocked_offset(T + 20_000, 0.0) - -20e-6).abs() < 1e-12);
        // Stamped 30 µs before one: 30 µs behind.
        assert!((unlocked_offset(T - 30_000, 0.0) - 30e-6).abs() < 1e-12);
        // The configured offset counts in choosing the second: stamped at .6, the
        // raw offset is +0.4 (the next second) or −0.6 (this one); with +0.3
        // configured they become +0.7 and −0.3, and −0.3 is the nearer.
        assert!((unlocked_offset(T + 600_000_000, 0.0) - 0.4).abs() < 1e-9);
        assert!((unlocked_offset(T + 600_000_000, 0.3) - -0.6).abs() < 1e-9);
    }

    #[test]
    fn locked_the_nmea_refclock_decides_the_second() {
        // The system clock is 3.4 s behind (NMEA says +3.4000 s, with its 0.2 s
        // configured delay already counted): the pulse stamped 0.6 s past a system
        // second is the true second 4 s later.
        let pulse = T + 600_000_000;
        let o = locked_offset(pulse, 0.0, &lock(0.2), Some((pulse - 300_000_000, 3.2))).unwrap();
        assert!((o - 3.4).abs() < 1e-9, "{o}");
        // Without the lock, the nearest system second would have been 3 s off.
        assert!((unlocked_offset(pulse, 0.0) - 0.4).abs() < 1e-9);
    }

    #[test]
    fn a_lock_too_old_or_too_far_gives_no_sample() {
        let pulse = T + 600_000_000;
        assert_eq!(locked_offset(pulse, 0.0, &lock(0.0), None), Err(PulseError::NoLockSample));
        assert!(matches!(
            locked_offset(pulse, 0.0, &lock(0.0), Some((pulse - 3 * SECOND, 0.4))),
            Err(PulseError::LockTooOld { .. })
        ));
        // NMEA says +0.15, the pulse says +0.4 (or −0.6): 0.25 s apart, no second fits.
        assert!(matches!(
            locked_offset(pulse, 0.0, &lock(0.0), Some((pulse, 0.15))),
            Err(PulseError::NotLocked { .. })
        ));
        // 0.1 s apart is within the lock.
        assert!((locked_offset(pulse, 0.0, &lock(0.0), Some((pulse, 0.3))).unwrap() - 0.4).abs() < 1e-9);
    }

    proptest! {
        #[test]
        fn the_offset_is_the_pulse_phase_plus_whole_seconds(frac_ns in 0i64..SECOND, whole in -100i64..100,
                                                             jitter_ms in -150i64..150) {
            let pulse = T + frac_ns;
            let true_offset = whole as f64 - frac_ns as f64 * 1e-9;
            let claimed = true_offset + jitter_ms as f64 * 1e-3;
            let o = locked_offset(pulse, 0.0, &lock(0.0), Some((pulse, claimed))).unwrap();
            prop_assert!((o - true_offset).abs() < 1e-6, "{o} vs {true_offset}");
            let u = unlocked_offset(pulse, 0.0);
            prop_assert!((-0.5..=0.5).contains(&u));
        }
    }
}
