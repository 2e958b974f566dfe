//! Upstream servers and the network paths to them: one NTP exchange per request,
//! the server's reply stamped from true time, its own error and the path's delays,
//! and the local clock's reading when the reply arrives.

use strata_proto::ntp::{HEADER_LEN, Header, LeapIndicator, Mode, NtpShort, NtpTimestamp, ReferenceId};
use strata_sync::LocalTime;

use super::clock::{START_NS, VirtualClock};
use super::rng::Rng;

/// The servers' NTP precision, log2 s (about 240 ns: what a modern Linux reports).
const PRECISION_LOG2: i8 = -22;

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

/// One client/server exchange for `request` (the bytes strata sent), started
/// `after_s` of true time from now: the server's reply and the local clock's reading
/// when it arrives (T4), or `None` if a packet was lost. The clock does not change
/// during the exchange (the driver applies requests after it).
pub fn exchange(
    clock: &VirtualClock,
    server: &Server,
    after_s: f64,
    rng: &mut Rng,
    request: &[u8],
) -> Option<([u8; HEADER_LEN], LocalTime)> {
    let path = &server.path;
    // Draw everything first: a loss does not shift the rest of this path's stream.
    let lost = rng.chance(path.loss);
    let forward_s = path.delay_s * (1.0 + path.asymmetry) / 2.0 + rng.exponential(path.jitter_s);
    let return_s = path.delay_s * (1.0 - path.asymmetry) / 2.0 + rng.exponential(path.jitter_s);
    let request = Header::from_bytes(request.get(..HEADER_LEN)?.try_into().ok()?);
    if lost {
        return None;
    }
    let server_ns = |true_s: f64| START_NS + ((true_s + server.error_s) * 1e9).round() as i64;
    let stamp = |true_s: f64| NtpTimestamp::from_unix_ns(server_ns(true_s));
    let sent_s = clock.true_s() + after_s;
    let reply = Header {
        leap: LeapIndicator::NoWarning,
        version: request.version,
        mode: Mode::Server,
        stratum: 1,
        poll_log2: request.poll_log2,
        precision_log2: PRECISION_LOG2,
        root_delay: NtpShort::ZERO,
        root_dispersion: NtpShort::from_seconds(server.root_dispersion_s),
        reference_id: ReferenceId::from_bytes(*b"GPS\0"),
        reference_ts: stamp(sent_s - 1.0),
        origin_ts: request.transmit_ts,
        receive_ts: stamp(sent_s + forward_s),
        transmit_ts: stamp(sent_s + forward_s + SERVER_TURNAROUND_S),
    };
    let mut out = [0u8; HEADER_LEN];
    reply.serialize(&mut out);
    Some((out, clock.reading_after(after_s + forward_s + SERVER_TURNAROUND_S + return_s)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::clock::Limits;

    /// A request as strata sends it, and the offset and delay its reply measures.
    fn measure(clock: &VirtualClock, server: &Server, rng: &mut Rng) -> Option<(f64, f64, LocalTime)> {
        let t1 = clock.local_time();
        let request = Header {
            leap: LeapIndicator::NoWarning,
            version: 4,
            mode: Mode::Client,
            stratum: 0,
            poll_log2: 4,
            precision_log2: -20,
            root_delay: NtpShort::ZERO,
            root_dispersion: NtpShort::ZERO,
            reference_id: ReferenceId::ZERO,
            reference_ts: NtpTimestamp::ZERO,
            origin_ts: NtpTimestamp::ZERO,
            receive_ts: NtpTimestamp::ZERO,
            transmit_ts: NtpTimestamp::from_unix_ns(t1.0),
        };
        let mut bytes = [0u8; HEADER_LEN];
        request.serialize(&mut bytes);
        let (reply, t4) = exchange(clock, server, 0.0, rng, &bytes)?;
        let reply = Header::from_bytes(&reply);
        assert_eq!(reply.origin_ts, request.transmit_ts);
        // Differences in integer ns first: an f64 of epoch seconds has 240 ns steps.
        let ns = |ts: NtpTimestamp| ts.to_unix_ns_near(t1.0);
        let (t2, t3) = (ns(reply.receive_ts), ns(reply.transmit_ts));
        let (t1, t4n) = (ns(request.transmit_ts), t4.0);
        let seconds = |ns: i64| ns as f64 * 1e-9;
        Some((seconds((t2 - t1) + (t3 - t4n)) / 2.0, seconds((t4n - t1) - (t3 - t2)), t4))
    }

    fn quiet(delay_s: f64, asymmetry: f64) -> Path {
        Path { delay_s, asymmetry, jitter_s: 0.0, loss: 0.0 }
    }

    #[test]
    fn a_symmetric_exchange_measures_the_true_offset_and_delay() {
        let clock = VirtualClock::new(0.25, 0.0, 0.0, Limits::policy());
        let (offset_s, delay_s, t4) = measure(&clock, &Server::good(quiet(0.020, 0.0)), &mut Rng::new(1)).unwrap();
        assert!((offset_s - 0.25).abs() < 2e-8, "{offset_s}");
        assert!((delay_s - 0.020).abs() < 2e-8, "{delay_s}");
        assert_eq!(t4, clock.reading_after(0.020 + SERVER_TURNAROUND_S));
    }

    #[test]
    fn asymmetry_and_server_error_bias_the_offset() {
        let clock = VirtualClock::new(0.0, 0.0, 0.0, Limits::policy());
        let path = quiet(0.020, 0.1);
        let (offset_s, _, _) = measure(&clock, &Server::falseticker(path, 0.2), &mut Rng::new(1)).unwrap();
        // +200 ms server error, +1 ms from 11 ms out and 9 ms back.
        assert!((offset_s - (0.2 + path.asymmetry_bias_s())).abs() < 2e-8, "{offset_s}");
        assert!((path.asymmetry_bias_s() - 0.001).abs() < 1e-15);
    }

    #[test]
    fn loss_is_drawn_from_the_path_stream() {
        let clock = VirtualClock::new(0.0, 0.0, 0.0, Limits::policy());
        let server = Server::good(Path { loss: 0.3, jitter_s: 1e-4, ..quiet(0.001, 0.0) });
        let mut rng = Rng::new(9);
        let answered = (0..10_000).filter(|_| measure(&clock, &server, &mut rng).is_some()).count();
        assert!((6_700..7_300).contains(&answered), "{answered}");
    }
}
