//! Upstream servers and the network paths to them: one NTP exchange per poll, its
//! four timestamps taken from true time, the path's delays and the local clock's
//! readings, and turned into a `Sample` the way a client computes it.

use strata_sync::{Leap, LocalTime, MAX_DRIFT_PPM, Sample};

use super::clock::{START_NS, VirtualClock};
use super::rng::Rng;

/// Clock reading precision of either end, seconds (2^-22, about 240 ns: the NTP
/// precision a modern Linux reports).
const PRECISION_S: f64 = 2.384_185_791_015_625e-7;

/// How long the server takes between receiving and answering, seconds.
const SERVER_TURNAROUND_S: f64 = 20e-6;

/// A network path, both directions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Path {
    /// Round-trip delay without queueing, seconds.
    pub delay_s: f64,
    /// (forward − return) / round trip of the base delay: 0.1 makes the request's
    /// way 55 % of it. NTP cannot see this; it biases the offset by asymmetry·delay/2.
    pub asymmetry: f64,
    /// Mean of the exponential queueing delay added to each direction, seconds.
    pub jitter_s: f64,
    /// Probability that an exchange is lost (either way).
    pub loss: f64,
}

impl Path {
    /// The offset error a symmetric-path assumption makes on this path, seconds.
    #[cfg(test)]
    pub fn asymmetry_bias_s(&self) -> f64 {
        self.asymmetry * self.delay_s / 2.0
    }
}

/// An upstream NTP server: a stratum-1 with its own error against true time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Server {
    /// Server clock − true time, seconds (a falseticker has a large one).
    pub error_s: f64,
    /// What it claims for its own reference (a GPS-disciplined stratum 1).
    pub root_dispersion_s: f64,
    pub path: Path,
    /// Expected to be rejected by selection (counted when it is not).
    pub falseticker: bool,
}

impl Server {
    pub fn good(path: Path) -> Server {
        Server { error_s: 0.0, root_dispersion_s: 10e-6, path, falseticker: false }
    }

    pub fn falseticker(path: Path, error_s: f64) -> Server {
        Server { error_s, falseticker: true, ..Server::good(path) }
    }
}

/// One client/server exchange started `after_s` of true time from now, or `None` if
/// the packet was lost. The clock does not change during the exchange (the engine
/// applies requests after all of a poll's exchanges are done).
pub fn exchange(clock: &VirtualClock, server: &Server, after_s: f64, rng: &mut Rng) -> Option<Sample> {
    let path = &server.path;
    // Draw everything first: a loss does not shift the rest of this path's stream.
    let lost = rng.chance(path.loss);
    let forward_s = path.delay_s * (1.0 + path.asymmetry) / 2.0 + rng.exponential(path.jitter_s);
    let return_s = path.delay_s * (1.0 - path.asymmetry) / 2.0 + rng.exponential(path.jitter_s);
    if lost {
        return None;
    }
    let server_ns = |true_s: f64| START_NS + ((true_s + server.error_s) * 1e9).round() as i64;
    let sent_s = clock.true_s() + after_s;
    let t1 = clock.reading_after(after_s).0;
    let t2 = server_ns(sent_s + forward_s);
    let t3 = server_ns(sent_s + forward_s + SERVER_TURNAROUND_S);
    let t4 = clock.reading_after(after_s + forward_s + SERVER_TURNAROUND_S + return_s).0;
    let seconds = |ns: i64| ns as f64 * 1e-9;
    Some(Sample {
        time: LocalTime(t4),
        offset_s: seconds((t2 - t1) + (t3 - t4)) / 2.0,
        delay_s: seconds((t4 - t1) - (t3 - t2)),
        // RFC 5905 §8: both precisions plus PHI over the exchange.
        dispersion_s: 2.0 * PRECISION_S + MAX_DRIFT_PPM * 1e-6 * seconds(t4 - t1),
        root_delay_s: 0.0,
        root_dispersion_s: server.root_dispersion_s,
        stratum: 1,
        leap: Leap::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::clock::Limits;

    fn quiet(delay_s: f64, asymmetry: f64) -> Path {
        Path { delay_s, asymmetry, jitter_s: 0.0, loss: 0.0 }
    }

    #[test]
    fn a_symmetric_exchange_measures_the_true_offset_and_delay() {
        let clock = VirtualClock::new(0.25, 0.0, 0.0, Limits::policy());
        let sample = exchange(&clock, &Server::good(quiet(0.020, 0.0)), 0.0, &mut Rng::new(1)).unwrap();
        assert!((sample.offset_s - 0.25).abs() < 2e-9, "{}", sample.offset_s);
        assert!((sample.delay_s - 0.020).abs() < 2e-9, "{}", sample.delay_s);
        assert_eq!(sample.time, clock.reading_after(0.020 + SERVER_TURNAROUND_S));
    }

    #[test]
    fn asymmetry_and_server_error_bias_the_offset() {
        let clock = VirtualClock::new(0.0, 0.0, 0.0, Limits::policy());
        let path = quiet(0.020, 0.1);
        let sample = exchange(&clock, &Server::falseticker(path, 0.2), 0.0, &mut Rng::new(1)).unwrap();
        // +200 ms server error, +1 ms from 11 ms out and 9 ms back.
        assert!((sample.offset_s - (0.2 + path.asymmetry_bias_s())).abs() < 2e-9, "{}", sample.offset_s);
        assert!((path.asymmetry_bias_s() - 0.001).abs() < 1e-15);
    }

    #[test]
    fn loss_is_drawn_from_the_path_stream() {
        let clock = VirtualClock::new(0.0, 0.0, 0.0, Limits::policy());
        let server = Server::good(Path { loss: 0.3, jitter_s: 1e-4, ..quiet(0.001, 0.0) });
        let mut rng = Rng::new(9);
        let answered = (0..10_000).filter(|_| exchange(&clock, &server, 0.0, &mut rng).is_some()).count();
        assert!((6_700..7_300).contains(&answered), "{answered}");
    }
}
