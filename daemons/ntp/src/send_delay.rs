//! How long after the daemon reads the clock the kernel stamps each answer of a
//! `sendmmsg` on its way out, learned from the kernel's own transmit timestamps.
//!
//! A basic-mode answer must carry its transmit time before it is sent: a clock
//! read, then the syscall and the UDP/IP stack, 1.5–3 µs on this machine before
//! the kernel stamps the datagram (chronyd hands that out as error; ntpperf sees
//! its mean). The k-th datagram of one `sendmmsg` leaves k datagrams' worth of
//! stack later still. Every datagram's kernel transmit timestamp comes back on
//! the error queue anyway (for interleaved mode), so the delay of each position
//! is measured, and the timestamp written into the k-th answer is the clock read
//! plus the delay learned for position k: a prediction of the kernel's transmit
//! timestamp, the one interleaved mode hands out after the fact.

/// Learned delay per position of a batch, in nanoseconds. Sans-IO: fed with
/// (position, kernel time − clock read) pairs, asked for a position's delay.
#[derive(Debug)]
pub struct SendDelay<const N: usize> {
    /// Exponentially weighted mean per position; `None` until it has a sample.
    mean_ns: [Option<i64>; N],
}

/// Weight of a new sample: 1/16, about the last few dozen batches.
const WEIGHT_SHIFT: u32 = 4;

/// A delay longer than this (the thread was preempted between the clock read and
/// the send, or the clock was stepped) says nothing about the next batch.
const MAX_PLAUSIBLE_NS: i64 = 1_000_000;

/// A sample this far above the position's mean is an outlier of the same kind
/// (an interrupt, a page fault): it is not learned, so it cannot pull the mean up.
const OUTLIER_NS: i64 = 20_000;

impl<const N: usize> SendDelay<N> {
    pub const fn new() -> SendDelay<N> {
        SendDelay { mean_ns: [None; N] }
    }

    /// The kernel stamped the answer at `position` of its batch `delay_ns` after the
    /// clock read its transmit timestamp came from.
    pub fn learn(&mut self, position: usize, delay_ns: i64) {
        let Some(mean) = self.mean_ns.get_mut(position) else { return };
        if !(0..MAX_PLAUSIBLE_NS).contains(&delay_ns) {
            return;
        }
        *mean = Some(match *mean {
            None => delay_ns,
            Some(m) if delay_ns > m + OUTLIER_NS => m,
            Some(m) => m + ((delay_ns - m) >> WEIGHT_SHIFT),
        });
    }

    /// The delay to add to the clock read for the answer at `position`: the one
    /// learned there, else the nearest position before it that has one, else none
    /// (no kernel timestamps: the clock read as it is).
    pub fn predict(&self, position: usize) -> i64 {
        self.mean_ns[..(position + 1).min(N)].iter().rev().find_map(|m| *m).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_no_kernel_timestamp_the_clock_read_stands() {
        let delay = SendDelay::<4>::new();
        assert_eq!((0..8).map(|k| delay.predict(k)).collect::<Vec<_>>(), [0; 8]);
    }

    #[test]
    fn each_position_of_a_batch_converges_on_its_own_delay() {
        // Position k leaves 3 µs + k × 1.5 µs after the clock read, ± 200 ns.
        let mut delay = SendDelay::<8>::new();
        for batch in 0..200i64 {
            for k in 0..8i64 {
                let jitter = if (batch + k) % 2 == 0 { 200 } else { -200 };
                delay.learn(k as usize, 3_000 + 1_500 * k + jitter);
            }
        }
        for k in 0..8 {
            let expected = 3_000 + 1_500 * k as i64;
            assert!((delay.predict(k) - expected).abs() <= 200, "position {k}: {}", delay.predict(k));
        }
    }

    #[test]
    fn preemptions_and_steps_do_not_move_the_prediction() {
        let mut delay = SendDelay::<4>::new();
        for _ in 0..50 {
            delay.learn(0, 3_000);
        }
        delay.learn(0, 450_000); // preempted before the send
        delay.learn(0, 5_000_000); // the clock stepped between read and send
        delay.learn(0, -2_000_000);
        assert_eq!(delay.predict(0), 3_000);
    }

    #[test]
    fn a_position_never_seen_takes_the_delay_of_the_last_one_before_it() {
        let mut delay = SendDelay::<8>::new();
        delay.learn(0, 3_000);
        delay.learn(1, 4_000);
        assert_eq!(delay.predict(1), 4_000);
        assert_eq!(delay.predict(5), 4_000);
        assert_eq!(delay.predict(100), 4_000, "beyond the batch: the last position's");
        delay.learn(100, 9_000); // ignored: no such position
        assert_eq!(delay.predict(7), 4_000);
    }
}
