//! One upstream NTP server seen from the client side (chrony's `server` directive),
//! sans I/O: it says when to poll, writes the request, checks the reply and turns it
//! into a [`Sample`]. The caller owns the socket and the clock.
//!
//! # Exchange (RFC 5905 §8)
//!
//! - Request: mode 3, the configured version, our poll, and everything else zero
//!   except the transmit timestamp, which is a random 64-bit cookie instead of the
//!   local time (as chrony does): an off-path attacker must guess it to get a reply
//!   accepted, and the request does not reveal the local clock. The real send time T1
//!   is kept here. One request is outstanding at a time; a new poll forgets the old one
//!   (a late reply to it is then bogus, as in chrony).
//! - Reply checks, in this order ([`IgnoreReason`]): parses; mode 4; not a duplicate
//!   (RFC test 1: same transmit timestamp as the last accepted reply); a request is
//!   outstanding; origin = our cookie (RFC test 2, "bogus"). A reply passing these
//!   answers the request, whatever follows. Then: kiss-o'-death (stratum 0 with a known
//!   code, RFC §7.4); stratum 0 with an unknown code; unsynchronised (LI 3 or stratum ≥
//!   16, RFC test 6); zero receive or transmit timestamp (RFC test 3); root distance
//!   ≥ 16 s (RFC MAXDISP, chrony test 7). A reply that gets this far comes from a live,
//!   synchronised server: it sets reach bit 0. Last the measurement itself: a delay
//!   more negative than the sample's error bound, and chrony's `maxdelay`. Both are
//!   checked here, so the counters say why a reachable server gives no samples;
//!   `FilterConfig::max_delay_s` may be set from the same option, its check is then a
//!   no-op.
//! - Sample (RFC 5905 §8): with T2/T3 placed on the local time scale next to T1
//!   ([`NtpTimestamp::to_unix_ns_near`], so an era rollover between T1 and T2/T3 is
//!   harmless), offset θ = ((T2 − T1) + (T3 − T4)) / 2, delay δ = (T4 − T1) − (T3 −
//!   T2) (a small negative δ is clamped to 0), dispersion ε = 2^ρ(server) +
//!   2^ρ(local) + PHI·(T4 − T1). The RFC's PHI term runs over the whole local interval
//!   T4 − T1, not just δ: the local clock drifts during the server's turnaround too.
//!   The sample time is the middle of T1..T4 (chrony: the only choice that estimates
//!   frequency right for any delay).
//!
//! # Interleaved mode (`xleave`; RFC 9769, chrony's client)
//!
//! A server's transmit timestamp is its clock read before the send; the kernel's
//! timestamp of the datagram leaving is known only afterwards. In interleaved mode
//! the server hands it over in its next reply, and the sample is made from the
//! previous exchange with that true T3:
//! - Request: as in basic mode (transmit = cookie), plus, when the previous request
//!   was answered, origin = that reply's receive timestamp (which the server looks
//!   its saved transmit time up by) and receive = a second random cookie (chrony
//!   writes its receive time there; any value the server has not seen works, and a
//!   random one is as hard to spoof as the first).
//! - Reply: origin = transmit cookie: basic, measured as above. Origin = receive
//!   cookie: interleaved; T1, T2 and T4 are the previous exchange's, T3 is this
//!   reply's transmit timestamp, which must lie between the previous and this reply's
//!   receive timestamps (the server sent the previous reply in between; give or take
//!   the server's precision), else the reply is ignored as
//!   [`IgnoreReason::BadInterleaved`]. The sample is one poll
//!   old: its time is the previous exchange's middle.
//! - T1 is the caller's clock read before the send until the kernel's transmit
//!   timestamp arrives ([`NtpSource::transmitted`]); that improves basic samples too
//!   when it comes before the reply (chrony does the same).
//! - A missed reply forgets the previous exchange: the next request is basic.
//!
//! # Kiss-o'-death (RFC 5905 §7.4)
//!
//! Only after the origin check, so a spoofed KoD cannot stop a source.
//! - RATE: the poll interval doubles (poll + 1, up to `maxpoll`) and that becomes the
//!   source's floor for good; a burst in progress ends. chrony instead delays the next
//!   request by 4 poll intervals once; the RFC asks to "reduce the polling rate each
//!   time", which a floor that climbs with every RATE does.
//! - DENY, RSTR: the source stops for good ([`PollState::Stopped`]): `poll` returns
//!   `None`, reach is cleared. chrony ignores these codes; RFC 5905 says stop.
//! - Any other code is informational (counted, returned), as the RFC says.
//!
//! # Reachability and poll interval
//!
//! - reach: the RFC 5905 8-bit register, shifted left at every poll, bit 0 set by a
//!   reply from a synchronised server (see above). Reachable = any bit set.
//! - iburst (chrony): the first requests go out every min(2 s, 2^poll / 4) until 4
//!   samples were obtained or 8 requests sent, then the poll interval applies.
//!   Departure from chrony: a burst also starts when a source answers again after
//!   having been unreachable (reach 0), so its filter refills quickly; chrony bursts
//!   only at start and on `online`. Unlike ntpd's, the burst waits for the server to
//!   answer, so a dead server does not get bursts.
//! - Adaptation (strata's rule, in the spirit of chrony's `polltarget` and RFC 5905
//!   §13): polling starts at `minpoll`. A sample is *consistent* when its error bounds
//!   overlap the reference sample's (|Δθ| ≤ (δ₁ + δ₂)/2 + ε₁ + ε₂ + PHI·Δt); the
//!   reference is the last consistent sample.
//!   - 8 consistent samples in a row at this interval (the filter refilled, RFC
//!     NSTAGE): poll + 1, up to `maxpoll`;
//!   - 2 inconsistent samples in a row (a lone popcorn spike does not count): poll − 1,
//!     down to the floor (`minpoll`, or higher after RATE), and the newest sample
//!     becomes the reference;
//!   - a missed reply breaks the run of consistent samples;
//!   - unreachable (8 polls in a row unanswered): poll + 1 per further unanswered
//!     poll, up to `maxpoll`. This *backs off*, as RFC 5905 §13 and chrony do (chrony:
//!     +0.25 per missed reply), rather than polling a dead server faster: when it
//!     answers again the interval drops straight back to the floor (plus a burst with
//!     iburst), which is what polling faster would have bought.
//!   - Burst samples only move the reference; they do not count towards an increase.
//!     Replies refused for their delay neither count nor break the run (and do not
//!     count as burst samples either, as in chrony).
//!   - Not implemented: chrony's refusal of sub-second polling over links with more than
//!     10 ms delay, and randomised poll intervals (the caller may jitter the schedule).

use strata_proto::ntp::{Header, KissCode, LeapIndicator, Mode, NtpShort, NtpTimestamp, Packet, ReferenceId};

use crate::filter::MAX_DISPERSION_S;
use crate::{LocalTime, MAX_DRIFT_PPM, Sample, SelectOptions, SourceId};

/// Smallest `minpoll`/`maxpoll` chrony accepts (1/128 s; chrony ≥ 4.3, `MIN_POLL`).
pub const MIN_POLL_LOG2: i8 = -7;
/// Largest `minpoll`/`maxpoll` chrony accepts (about 194 days, `MAX_POLL`).
pub const MAX_POLL_LOG2: i8 = 24;
/// chrony's default `minpoll` (64 s).
pub const DEFAULT_MIN_POLL_LOG2: i8 = 6;
/// chrony's default `maxpoll` (1024 s).
pub const DEFAULT_MAX_POLL_LOG2: i8 = 10;
/// NTP versions a request may carry (chrony `version`: 1 to 4, default 4).
pub const MIN_VERSION: u8 = 1;
pub const MAX_VERSION: u8 = 4;
/// chrony's default `maxdelay`, seconds.
pub const DEFAULT_MAX_DELAY_S: f64 = 3.0;
/// chrony's upper limit for `maxdelay` (`MAX_MAXDELAY`), seconds.
pub const MAX_MAX_DELAY_S: f64 = 1000.0;

/// Width of the reach register (RFC 5905 §13, chrony `SOURCE_REACH_BITS`).
pub const REACH_BITS: u32 = 8;
/// iburst ends after this many samples (chrony `IBURST_GOOD_SAMPLES`)...
pub const BURST_GOOD_SAMPLES: u8 = 4;
/// ...or this many requests (chrony `IBURST_TOTAL_SAMPLES`, the reach width).
pub const BURST_REQUESTS: u8 = 8;
/// Burst spacing: at most 2 s (chrony `MAX_BURST_INTERVAL`)...
pub const MAX_BURST_INTERVAL_S: f64 = 2.0;
/// ...and at most this fraction of the poll interval (chrony `MAX_BURST_POLL_RATIO`).
pub const BURST_POLL_RATIO: f64 = 0.25;
/// Consistent samples in a row at one interval before it doubles (RFC NSTAGE).
pub const POLL_INCREASE_SAMPLES: u32 = 8;
/// Inconsistent samples in a row before the interval halves.
pub const POLL_DECREASE_SAMPLES: u32 = 2;
/// The first request goes out up to this long after [`NtpSource::new`], at random, so
/// sources configured together do not fire at once (chrony waits 0.2 s,
/// `INITIAL_DELAY`, and its scheduler spreads sources apart).
pub const MAX_INITIAL_DELAY_S: f64 = 0.2;
/// Local clock precision assumed until [`NtpSource::with_local_precision`] says
/// otherwise: 2^-20 s (about 1 µs), conservative for a ns clock read by a syscall.
pub const DEFAULT_LOCAL_PRECISION_S: f64 = 1.0 / 1_048_576.0;
/// Precision field of our requests: chrony's value for client packets, which says
/// nothing about the local clock (data minimisation).
const REQUEST_PRECISION_LOG2: i8 = 32;

const NS_PER_S: f64 = 1e9;
const PHI: f64 = MAX_DRIFT_PPM * 1e-6;

/// chrony's `server` options that shape the exchange (others live in the filter and
/// selection configurations).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServerOptions {
    /// chrony `minpoll`: log2 of the shortest poll interval, s (default 6: 64 s).
    pub minpoll: i8,
    /// chrony `maxpoll`: log2 of the longest poll interval, s (default 10: 1024 s).
    pub maxpoll: i8,
    /// chrony `iburst`: a quick burst of requests at start (see the module docs).
    pub iburst: bool,
    /// chrony `version`: NTP version of the requests, 1 to 4 (default 4).
    pub version: u8,
    /// chrony `prefer`, `noselect`, `trust`, `require`.
    pub select: SelectOptions,
    /// chrony `maxdelay`: replies with a larger round-trip delay give no sample (default 3 s).
    pub max_delay_s: f64,
    /// chrony `xleave`: ask for interleaved replies (see the module docs).
    pub xleave: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            minpoll: DEFAULT_MIN_POLL_LOG2,
            maxpoll: DEFAULT_MAX_POLL_LOG2,
            iburst: false,
            version: MAX_VERSION,
            select: SelectOptions::default(),
            max_delay_s: DEFAULT_MAX_DELAY_S,
            xleave: false,
        }
    }
}

/// An option outside chrony's range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptionsError {
    /// `minpoll` or `maxpoll` outside [`MIN_POLL_LOG2`]..=[`MAX_POLL_LOG2`].
    PollOutOfRange(i8),
    /// `maxpoll` below `minpoll`.
    MaxpollBelowMinpoll { minpoll: i8, maxpoll: i8 },
    /// `version` outside 1..=4.
    BadVersion(u8),
    /// `maxdelay` not in (0, [`MAX_MAX_DELAY_S`]].
    BadMaxDelay(f64),
}

impl std::fmt::Display for OptionsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionsError::PollOutOfRange(poll) => {
                write!(f, "poll {poll} is outside {MIN_POLL_LOG2} to {MAX_POLL_LOG2}")
            }
            OptionsError::MaxpollBelowMinpoll { minpoll, maxpoll } => {
                write!(f, "maxpoll {maxpoll} is below minpoll {minpoll}")
            }
            OptionsError::BadVersion(version) => {
                write!(f, "NTP version {version} is not one of {MIN_VERSION} to {MAX_VERSION}")
            }
            OptionsError::BadMaxDelay(max_delay_s) => {
                write!(f, "maxdelay {max_delay_s} s is not in (0, {MAX_MAX_DELAY_S}] s")
            }
        }
    }
}

impl std::error::Error for OptionsError {}

impl ServerOptions {
    /// Whether the options are within chrony's ranges (for the configuration parser,
    /// which should refuse rather than silently fix).
    pub fn validate(&self) -> Result<(), OptionsError> {
        for poll in [self.minpoll, self.maxpoll] {
            if !(MIN_POLL_LOG2..=MAX_POLL_LOG2).contains(&poll) {
                return Err(OptionsError::PollOutOfRange(poll));
            }
        }
        if self.maxpoll < self.minpoll {
            return Err(OptionsError::MaxpollBelowMinpoll { minpoll: self.minpoll, maxpoll: self.maxpoll });
        }
        if !(MIN_VERSION..=MAX_VERSION).contains(&self.version) {
            return Err(OptionsError::BadVersion(self.version));
        }
        if !(self.max_delay_s > 0.0 && self.max_delay_s <= MAX_MAX_DELAY_S) {
            return Err(OptionsError::BadMaxDelay(self.max_delay_s));
        }
        Ok(())
    }

    /// The nearest options within range, as chrony clamps its own: polls into the
    /// range, `maxpoll` up to `minpoll`, `version` into 1..=4, `maxdelay` into
    /// (0, 1000] s (NaN → the default).
    pub fn sanitized(self) -> ServerOptions {
        let minpoll = self.minpoll.clamp(MIN_POLL_LOG2, MAX_POLL_LOG2);
        let maxpoll = self.maxpoll.clamp(minpoll, MAX_POLL_LOG2);
        let max_delay_s =
            if self.max_delay_s.is_nan() { DEFAULT_MAX_DELAY_S } else { self.max_delay_s.clamp(1e-9, MAX_MAX_DELAY_S) };
        ServerOptions { minpoll, maxpoll, version: self.version.clamp(MIN_VERSION, MAX_VERSION), max_delay_s, ..self }
    }
}

/// Why a datagram from the server gave nothing. Declaration order is check order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IgnoreReason {
    /// Not an NTP packet ([`Packet::parse`] failed).
    Malformed,
    /// Mode is not 4 (server).
    NotServerMode,
    /// Same transmit timestamp as the last accepted reply (RFC 5905 test 1).
    Duplicate,
    /// No request is waiting for a reply (already answered, or never sent).
    NoRequestOutstanding,
    /// Origin timestamp is not our cookie (RFC 5905 test 2): spoofed, or a late reply to
    /// an older request.
    Bogus,
    /// Stratum 0 with a reference id that is no known kiss code; RFC 5905 §7.4 says
    /// to treat it as an unsynchronised server.
    UnknownKissCode,
    /// LI 3 or stratum ≥ 16 (RFC 5905 test 6).
    Unsynchronised,
    /// Receive or transmit timestamp zero (RFC 5905 test 3).
    ZeroTimestamp,
    /// Root delay / 2 + root dispersion ≥ 16 s (RFC 5905 MAXDISP, chrony test 7).
    RootDistanceTooLarge,
    /// Round-trip delay negative by more than the sample's error bound: timestamps
    /// that cannot be right (or the local clock stepped back during the exchange).
    NegativeDelay,
    /// Delay above chrony's `maxdelay`.
    DelayTooLarge,
    /// An interleaved reply whose transmit timestamp does not lie between the
    /// previous and this receive timestamp: not the previous reply's send time.
    BadInterleaved,
}

impl IgnoreReason {
    pub const COUNT: usize = 12;
    pub const ALL: [IgnoreReason; IgnoreReason::COUNT] = [
        IgnoreReason::Malformed,
        IgnoreReason::NotServerMode,
        IgnoreReason::Duplicate,
        IgnoreReason::NoRequestOutstanding,
        IgnoreReason::Bogus,
        IgnoreReason::UnknownKissCode,
        IgnoreReason::Unsynchronised,
        IgnoreReason::ZeroTimestamp,
        IgnoreReason::RootDistanceTooLarge,
        IgnoreReason::NegativeDelay,
        IgnoreReason::DelayTooLarge,
        IgnoreReason::BadInterleaved,
    ];

    /// Index into [`SourceCounters::ignored`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// What a datagram from the server gave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Response {
    /// A measurement, for the source's [`crate::filter::ClockFilter`].
    Sample(Sample),
    Ignored(IgnoreReason),
    /// A kiss-o'-death from the server, already acted upon (see the module docs).
    KissOfDeath(KissCode),
}

/// Where the source is in its polling life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PollState {
    /// iburst: requests every [`NtpSource::poll_interval_s`] (2 s or less).
    Burst,
    /// Normal polling at 2^[`NtpSource::poll_log2`] s.
    Polling,
    /// Stopped by the server's kiss-o'-death (DENY or RSTR): no more requests.
    Stopped(KissCode),
}

/// Per-source counters for the control plane (monotonic, never reset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceCounters {
    /// Requests built by [`NtpSource::poll`].
    pub packets_sent: u64,
    /// Datagrams handed to [`NtpSource::handle_response`].
    pub packets_received: u64,
    /// Replies that gave a [`Response::Sample`].
    pub valid_responses: u64,
    /// Polls that found the previous request unanswered.
    pub missed_responses: u64,
    /// Kiss-o'-death packets acted upon (all codes).
    pub kod_received: u64,
    /// Ignored datagrams, indexed by [`IgnoreReason::index`].
    pub ignored: [u64; IgnoreReason::COUNT],
}

impl SourceCounters {
    pub fn ignored(&self, reason: IgnoreReason) -> u64 {
        self.ignored[reason.index()]
    }

    pub fn ignored_total(&self) -> u64 {
        self.ignored.iter().sum()
    }
}

/// The request waiting for its reply.
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    /// The random transmit timestamp a basic reply must echo as its origin.
    cookie: NtpTimestamp,
    /// T1: when it was sent, on the local clock.
    sent: LocalTime,
    /// In interleaved mode: the random receive timestamp an interleaved reply echoes
    /// as its origin, and the exchange that reply completes.
    interleaved: Option<(NtpTimestamp, Exchange)>,
}

/// An answered request, kept in interleaved mode for the reply that brings its T3.
#[derive(Clone, Copy, Debug)]
struct Exchange {
    /// T1 (the kernel's transmit timestamp, once it came).
    sent: LocalTime,
    /// T2 as the server wrote it: the origin of the next request.
    remote_receive: NtpTimestamp,
    /// T4.
    received: LocalTime,
}

impl Exchange {
    fn step(&mut self, step_s: f64) {
        self.sent = self.sent.add_seconds(step_s);
        self.received = self.received.add_seconds(step_s);
    }
}

#[derive(Clone, Copy, Debug)]
struct Burst {
    samples_left: u8,
    requests_left: u8,
}

impl Burst {
    const FULL: Burst = Burst { samples_left: BURST_GOOD_SAMPLES, requests_left: BURST_REQUESTS };
}

/// One NTP server polled in client mode; see the module docs.
#[derive(Clone, Debug)]
pub struct NtpSource {
    id: SourceId,
    options: ServerOptions,
    local_precision_s: f64,
    /// Current poll interval, log2 s; floor ≤ poll ≤ maxpoll.
    poll_log2: i8,
    /// `minpoll`, raised by RATE kiss codes.
    min_poll_log2: i8,
    next_poll: LocalTime,
    last_sent: Option<LocalTime>,
    outstanding: Option<Outstanding>,
    /// Transmit timestamp of the last reply that answered a request (RFC test 1).
    last_reply_transmit: Option<NtpTimestamp>,
    /// With `xleave`: the last exchange, if its reply answered the latest request.
    previous: Option<Exchange>,
    /// The number of requests sent when `previous` was answered (so a late kernel
    /// transmit timestamp finds its exchange).
    previous_request: u64,
    /// The last sample came from an interleaved reply.
    last_interleaved: bool,
    /// T1 of the latest request is the kernel's.
    kernel_tx: bool,
    reach: u8,
    unanswered_in_a_row: u32,
    burst: Option<Burst>,
    stopped: Option<KissCode>,
    /// Sample the next one is compared with, for poll adaptation.
    reference: Option<Sample>,
    consistent_in_a_row: u32,
    inconsistent_in_a_row: u32,
    counters: SourceCounters,
}

impl NtpSource {
    /// A source about to start polling. `random` places the first request within
    /// [`MAX_INITIAL_DELAY_S`] of `now`. Options out of range are clamped
    /// ([`ServerOptions::sanitized`]); validate them first to refuse them instead.
    pub fn new(id: SourceId, options: ServerOptions, now: LocalTime, random: u64) -> NtpSource {
        let options = options.sanitized();
        let initial_delay_ns = (MAX_INITIAL_DELAY_S * NS_PER_S) as u64;
        NtpSource {
            id,
            options,
            local_precision_s: DEFAULT_LOCAL_PRECISION_S,
            poll_log2: options.minpoll,
            min_poll_log2: options.minpoll,
            // < 0.2e9, so the cast cannot wrap.
            next_poll: LocalTime(now.0.saturating_add((random % initial_delay_ns) as i64)),
            last_sent: None,
            outstanding: None,
            last_reply_transmit: None,
            previous: None,
            previous_request: 0,
            last_interleaved: false,
            kernel_tx: false,
            reach: 0,
            unanswered_in_a_row: 0,
            burst: options.iburst.then_some(Burst::FULL),
            stopped: None,
            reference: None,
            consistent_in_a_row: 0,
            inconsistent_in_a_row: 0,
            counters: SourceCounters::default(),
        }
    }

    /// Set the local clock's precision (read time of the clock), seconds; it enters
    /// every sample's dispersion (RFC 5905 §8: ρ of the client). Non-finite or
    /// negative values are ignored.
    pub fn with_local_precision(mut self, precision_s: f64) -> NtpSource {
        if precision_s.is_finite() && precision_s >= 0.0 {
            self.local_precision_s = precision_s;
        }
        self
    }

    pub fn id(&self) -> SourceId {
        self.id
    }

    /// The options in effect (after clamping).
    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    pub fn counters(&self) -> &SourceCounters {
        &self.counters
    }

    pub fn state(&self) -> PollState {
        match (self.stopped, self.burst) {
            (Some(code), _) => PollState::Stopped(code),
            (None, Some(_)) => PollState::Burst,
            (None, None) => PollState::Polling,
        }
    }

    /// When the caller should call [`NtpSource::poll`] next; `LocalTime(i64::MAX)`
    /// (never) once stopped.
    pub fn next_poll(&self) -> LocalTime {
        if self.stopped.is_some() { LocalTime(i64::MAX) } else { self.next_poll }
    }

    /// The poll interval, log2 s (what requests carry in their poll field). Between
    /// `minpoll` and `maxpoll`; a burst polls faster, see [`NtpSource::poll_interval_s`].
    pub fn poll_log2(&self) -> i8 {
        self.poll_log2
    }

    /// The spacing of requests now: the burst spacing during a burst, else 2^poll s.
    pub fn poll_interval_s(&self) -> f64 {
        let interval_s = 2f64.powi(i32::from(self.poll_log2));
        if self.burst.is_some() { (interval_s * BURST_POLL_RATIO).min(MAX_BURST_INTERVAL_S) } else { interval_s }
    }

    /// The RFC 5905 reach register: bit 0 is the newest poll.
    pub fn reach(&self) -> u8 {
        self.reach
    }

    /// Any of the last 8 polls answered by a synchronised server.
    pub fn reachable(&self) -> bool {
        self.reach != 0
    }

    /// Build the next request into `out` and return its length, or `None` once the
    /// source is stopped. `now` is the send time T1 (read it as close to the send as
    /// possible; [`NtpSource::transmitted`] may correct it); `random` must be
    /// unpredictable: the cookies.
    pub fn poll(&mut self, now: LocalTime, random: [u64; 2], out: &mut [u8; 48]) -> Option<usize> {
        if self.stopped.is_some() {
            return None;
        }
        if self.outstanding.take().is_some() {
            self.missed_reply();
        }
        self.reach <<= 1;

        // A zero transmit timestamp means "unknown" and a zero origin fails RFC test 3:
        // never use it as a cookie; the two cookies must differ (the server tells
        // interleaved requests by receive ≠ transmit).
        let cookie = NtpTimestamp::from_bits(random[0].max(1));
        let interleaved = self.previous.take().filter(|_| self.options.xleave).map(|previous| {
            let bits = if random[1] == cookie.to_bits() || random[1] == 0 { !cookie.to_bits() | 1 } else { random[1] };
            (NtpTimestamp::from_bits(bits), previous)
        });
        let request = Header {
            leap: LeapIndicator::NoWarning,
            version: self.options.version,
            mode: Mode::Client,
            stratum: 0,
            poll_log2: self.poll_log2,
            precision_log2: REQUEST_PRECISION_LOG2,
            root_delay: NtpShort::ZERO,
            root_dispersion: NtpShort::ZERO,
            reference_id: ReferenceId::ZERO,
            reference_ts: NtpTimestamp::ZERO,
            origin_ts: interleaved.map_or(NtpTimestamp::ZERO, |(_, previous)| previous.remote_receive),
            receive_ts: interleaved.map_or(NtpTimestamp::ZERO, |(receive_cookie, _)| receive_cookie),
            transmit_ts: cookie,
        };
        request.serialize(out);
        self.outstanding = Some(Outstanding { cookie, sent: now, interleaved });
        self.kernel_tx = false;
        self.last_sent = Some(now);
        self.counters.packets_sent += 1;

        if let Some(burst) = &mut self.burst {
            burst.requests_left = burst.requests_left.saturating_sub(1);
            // chrony: the burst's last request is already followed by the normal interval.
            if burst.requests_left == 0 {
                self.burst = None;
            }
        }
        self.reschedule();
        Some(out.len())
    }

    /// The kernel's transmit timestamp of the latest request: a better T1 than the
    /// clock read before the send. One that is not within a second after that read
    /// (a stale or mismatched timestamp) is ignored.
    pub fn transmitted(&mut self, sent: LocalTime) {
        let plausible = |before: LocalTime| (0.0..1.0).contains(&sent.seconds_since(before));
        match (&mut self.outstanding, &mut self.previous) {
            (Some(request), _) if plausible(request.sent) => request.sent = sent,
            // It came after the reply: the exchange the next reply completes.
            (None, Some(previous))
                if self.previous_request == self.counters.packets_sent && plausible(previous.sent) =>
            {
                previous.sent = sent
            }
            _ => return,
        }
        self.kernel_tx = true;
    }

    /// The last sample came from an interleaved reply.
    pub fn last_interleaved(&self) -> bool {
        self.last_interleaved
    }

    /// T1 of the latest request is the kernel's transmit timestamp.
    pub fn kernel_tx(&self) -> bool {
        self.kernel_tx
    }

    /// Process a datagram received from the server; `receive_time` is T4, read as
    /// close to the arrival as possible (ideally the kernel's receive timestamp).
    pub fn handle_response(&mut self, packet: &[u8], receive_time: LocalTime) -> Response {
        self.counters.packets_received += 1;
        let response = self.check_response(packet, receive_time);
        match response {
            Response::Sample(_) => self.counters.valid_responses += 1,
            Response::Ignored(reason) => self.counters.ignored[reason.index()] += 1,
            Response::KissOfDeath(_) => self.counters.kod_received += 1,
        }
        response
    }

    /// The local clock was stepped by `step_s` (forward if positive): move what is
    /// kept in local time onto the new time scale, so the outstanding exchange still
    /// measures right and the schedule keeps its spacing (chrony adjusts its stored
    /// transmit time the same way).
    pub fn apply_step(&mut self, step_s: f64) {
        if let Some(outstanding) = &mut self.outstanding {
            outstanding.sent = outstanding.sent.add_seconds(step_s);
            if let Some((_, previous)) = &mut outstanding.interleaved {
                previous.step(step_s);
            }
        }
        if let Some(previous) = &mut self.previous {
            previous.step(step_s);
        }
        self.last_sent = self.last_sent.map(|sent| sent.add_seconds(step_s));
        self.next_poll = self.next_poll.add_seconds(step_s);
        if let Some(reference) = &mut self.reference {
            reference.offset_s -= step_s;
            reference.time = reference.time.add_seconds(step_s);
        }
    }

    fn check_response(&mut self, packet: &[u8], t4: LocalTime) -> Response {
        use IgnoreReason::*;
        let Ok(packet) = Packet::parse(packet) else { return Response::Ignored(Malformed) };
        let header = packet.header;
        if header.mode != Mode::Server {
            return Response::Ignored(NotServerMode);
        }
        if !header.transmit_ts.is_zero() && Some(header.transmit_ts) == self.last_reply_transmit {
            return Response::Ignored(Duplicate);
        }
        let Some(request) = self.outstanding else { return Response::Ignored(NoRequestOutstanding) };
        let completes = match request.interleaved {
            _ if header.origin_ts == request.cookie => None,
            Some((receive_cookie, previous)) if header.origin_ts == receive_cookie => Some(previous),
            _ => return Response::Ignored(Bogus),
        };
        // This is the server's answer (or an on-path attacker's, which no check here
        // could stop): at most one per request.
        self.outstanding = None;
        self.last_reply_transmit = Some(header.transmit_ts);

        if header.stratum == 0 {
            return match header.kiss_code() {
                Some(code) => {
                    self.kiss_of_death(code);
                    Response::KissOfDeath(code)
                }
                None => Response::Ignored(UnknownKissCode),
            };
        }
        if header.leap == LeapIndicator::Unsynchronised || header.stratum >= crate::selection::MAX_STRATUM {
            return Response::Ignored(Unsynchronised);
        }
        if header.receive_ts.is_zero() || header.transmit_ts.is_zero() {
            return Response::Ignored(ZeroTimestamp);
        }
        let root_delay_s = header.root_delay.to_seconds();
        let root_dispersion_s = header.root_dispersion.to_seconds();
        if root_delay_s / 2.0 + root_dispersion_s >= MAX_DISPERSION_S {
            return Response::Ignored(RootDistanceTooLarge);
        }

        // A live, synchronised server answered our request.
        let was_unreachable = self.reach == 0;
        self.reach |= 1;
        self.unanswered_in_a_row = 0;
        if was_unreachable && self.burst.is_none() {
            self.back_from_unreachable();
        }

        // This exchange, for the interleaved reply that will bring its T3.
        let this = Exchange { sent: request.sent, remote_receive: header.receive_ts, received: t4 };
        if self.options.xleave {
            self.previous = Some(this);
            self.previous_request = self.counters.packets_sent;
        }
        let (t1, t2, t4) = match completes {
            None => (request.sent, header.receive_ts, t4),
            Some(previous) => (previous.sent, previous.remote_receive, previous.received),
        };
        let t1_ns = i128::from(t1.0);
        let t2_ns = i128::from(t2.to_unix_ns_near(t1.0));
        let t3_ns = i128::from(header.transmit_ts.to_unix_ns_near(t1.0));
        let t4_ns = i128::from(t4.0);
        if completes.is_some() {
            let this_t2_ns = i128::from(header.receive_ts.to_unix_ns_near(t1.0));
            // Two reads of a clock of the server's precision may come out of order by
            // up to that much (chronyd fills the bits below it at random): a server as
            // fast as its precision, such as clknetsim's, is not misbehaving.
            let precision_ns = (2f64.powi(i32::from(header.precision_log2)) * NS_PER_S).ceil() as i128;
            if !(t2_ns - precision_ns..=this_t2_ns + precision_ns).contains(&t3_ns) {
                return Response::Ignored(BadInterleaved);
            }
        }
        let offset_s = ((t2_ns - t1_ns) + (t3_ns - t4_ns)) as f64 / 2.0 / NS_PER_S;
        let delay_s = ((t4_ns - t1_ns) - (t3_ns - t2_ns)) as f64 / NS_PER_S;
        let local_interval_s = (t4_ns - t1_ns) as f64 / NS_PER_S;
        let server_precision_s = 2f64.powi(i32::from(header.precision_log2));
        let dispersion_s = server_precision_s + self.local_precision_s + PHI * local_interval_s.abs();
        if delay_s < -dispersion_s {
            return Response::Ignored(NegativeDelay);
        }
        if delay_s > self.options.max_delay_s {
            return Response::Ignored(DelayTooLarge);
        }

        let sample = Sample {
            time: LocalTime(((t1_ns + t4_ns) / 2) as i64),
            offset_s,
            delay_s: delay_s.max(0.0),
            dispersion_s,
            root_delay_s,
            root_dispersion_s,
            stratum: header.stratum,
            leap: header.leap,
        };
        self.adapt_poll(&sample);
        self.last_interleaved = completes.is_some();
        Response::Sample(sample)
    }

    /// RFC 5905 §7.4; see the module docs.
    fn kiss_of_death(&mut self, code: KissCode) {
        match code {
            KissCode::Rate => {
                self.poll_log2 = (self.poll_log2 + 1).min(self.options.maxpoll);
                self.min_poll_log2 = self.min_poll_log2.max(self.poll_log2);
                // Bursts are what rate limiters object to.
                self.burst = None;
                self.restart_adaptation();
                self.reschedule();
            }
            KissCode::Deny | KissCode::Rstr => {
                self.stopped = Some(code);
                self.reach = 0;
                self.burst = None;
            }
            _ => {}
        }
    }

    /// The request sent at the last poll got no reply.
    fn missed_reply(&mut self) {
        self.counters.missed_responses += 1;
        self.unanswered_in_a_row = self.unanswered_in_a_row.saturating_add(1);
        self.consistent_in_a_row = 0;
        // RFC 5905 §13: back off while unreachable (not during a burst: it ends by itself).
        if self.unanswered_in_a_row >= REACH_BITS && self.burst.is_none() {
            self.poll_log2 = (self.poll_log2 + 1).min(self.options.maxpoll);
        }
    }

    /// First synchronised reply after reach dropped to 0: refill quickly.
    fn back_from_unreachable(&mut self) {
        self.poll_log2 = self.min_poll_log2;
        if self.options.iburst {
            self.burst = Some(Burst::FULL);
        }
        self.restart_adaptation();
        self.reschedule();
    }

    fn adapt_poll(&mut self, sample: &Sample) {
        if let Some(burst) = &mut self.burst {
            self.reference = Some(*sample);
            burst.samples_left = burst.samples_left.saturating_sub(1);
            if burst.samples_left == 0 {
                self.burst = None;
                self.reschedule();
            }
            return;
        }
        let Some(reference) = self.reference else {
            self.reference = Some(*sample);
            return;
        };
        if consistent(&reference, sample) {
            self.reference = Some(*sample);
            self.inconsistent_in_a_row = 0;
            self.consistent_in_a_row += 1;
            if self.consistent_in_a_row >= POLL_INCREASE_SAMPLES && self.poll_log2 < self.options.maxpoll {
                self.poll_log2 += 1;
                self.restart_adaptation();
                self.reschedule();
            }
        } else {
            self.consistent_in_a_row = 0;
            self.inconsistent_in_a_row += 1;
            if self.inconsistent_in_a_row >= POLL_DECREASE_SAMPLES {
                // Not a spike but a change: follow it.
                self.reference = Some(*sample);
                if self.poll_log2 > self.min_poll_log2 {
                    self.poll_log2 -= 1;
                    self.reschedule();
                }
                self.restart_adaptation();
            }
        }
    }

    fn restart_adaptation(&mut self) {
        self.consistent_in_a_row = 0;
        self.inconsistent_in_a_row = 0;
    }

    /// Next poll one interval after the last request (or keep the initial time).
    fn reschedule(&mut self) {
        if let Some(sent) = self.last_sent {
            self.next_poll = sent.add_seconds(self.poll_interval_s());
        }
    }
}

/// Whether two samples' error bounds overlap: |Δθ| ≤ (δ₁ + δ₂)/2 + ε₁ + ε₂ + PHI·Δt.
/// A sample's offset is within δ/2 + ε of the truth; the truth itself moves by at
/// most PHI·Δt between them.
fn consistent(a: &Sample, b: &Sample) -> bool {
    let tolerance_s =
        (a.delay_s + b.delay_s) / 2.0 + a.dispersion_s + b.dispersion_s + PHI * b.time.seconds_since(a.time).abs();
    (b.offset_s - a.offset_s).abs() <= tolerance_s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND_NS: i64 = 1_000_000_000;
    /// 2036-02-07T06:28:16Z, where NTP era 1 begins.
    const ERA1_UNIX_S: i64 = (1 << 32) - strata_proto::ntp::NTP_UNIX_OFFSET_S;
    const START: LocalTime = LocalTime(1_700_000_000 * SECOND_NS);

    fn options() -> ServerOptions {
        ServerOptions::default()
    }

    /// A synthetic server whose clock is `offset_s` ahead of ours, behind a symmetric
    /// path of `delay_s` round trip, with `turnaround_s` between T2 and T3.
    #[derive(Clone, Copy)]
    struct Server {
        offset_s: f64,
        delay_s: f64,
        turnaround_s: f64,
        header: Header,
    }

    impl Server {
        fn new(offset_s: f64, delay_s: f64) -> Server {
            Server {
                offset_s,
                delay_s,
                turnaround_s: 0.000_010,
                header: Header {
                    leap: LeapIndicator::NoWarning,
                    version: 4,
                    mode: Mode::Server,
                    stratum: 1,
                    poll_log2: 6,
                    precision_log2: -20,
                    root_delay: NtpShort::ZERO,
                    root_dispersion: NtpShort::from_seconds(0.0001),
                    reference_id: ReferenceId::GPS,
                    reference_ts: NtpTimestamp::ZERO,
                    origin_ts: NtpTimestamp::ZERO,
                    receive_ts: NtpTimestamp::ZERO,
                    transmit_ts: NtpTimestamp::ZERO,
                },
            }
        }

        /// The reply to `request` sent at local `t1`, and its local arrival time T4.
        fn reply(&self, request: &[u8; 48], t1: LocalTime) -> ([u8; 48], LocalTime) {
            let request = Packet::parse(request).unwrap().header;
            assert_eq!(request.mode, Mode::Client);
            let one_way_s = self.delay_s / 2.0;
            let t2_local = t1.add_seconds(one_way_s);
            let t3_local = t2_local.add_seconds(self.turnaround_s);
            let t4 = t3_local.add_seconds(one_way_s);
            let mut header = self.header;
            header.origin_ts = request.transmit_ts;
            header.receive_ts = NtpTimestamp::from_unix_ns(t2_local.add_seconds(self.offset_s).0);
            header.transmit_ts = NtpTimestamp::from_unix_ns(t3_local.add_seconds(self.offset_s).0);
            header.reference_ts = NtpTimestamp::from_unix_ns(t2_local.add_seconds(self.offset_s - 10.0).0);
            let mut out = [0u8; 48];
            header.serialize(&mut out);
            (out, t4)
        }
    }

    /// Poll at `now` and return the request.
    fn poll(source: &mut NtpSource, now: LocalTime, random: u64) -> [u8; 48] {
        let mut out = [0u8; 48];
        assert_eq!(source.poll(now, [random, !random], &mut out), Some(48));
        out
    }

    /// One full exchange at `now`; the server's response handled.
    fn exchange(source: &mut NtpSource, server: &Server, now: LocalTime, random: u64) -> Response {
        let request = poll(source, now, random);
        let (reply, t4) = server.reply(&request, now);
        source.handle_response(&reply, t4)
    }

    fn expect_sample(response: Response) -> Sample {
        match response {
            Response::Sample(sample) => sample,
            other => panic!("expected a sample, got {other:?}"),
        }
    }

    /// Poll whenever the source asks, the server answering every time (if given).
    /// Returns the poll times.
    fn run(source: &mut NtpSource, server: Option<&Server>, polls: usize) -> Vec<LocalTime> {
        let mut times = Vec::new();
        for i in 0..polls {
            let now = source.next_poll();
            times.push(now);
            match server {
                Some(server) => {
                    exchange(source, server, now, 0x1234_5678_9abc_def0 ^ i as u64);
                }
                None => {
                    poll(source, now, 0xfeed_0000 + i as u64);
                }
            }
        }
        times
    }

    fn intervals_s(times: &[LocalTime]) -> Vec<f64> {
        times.windows(2).map(|pair| pair[1].seconds_since(pair[0])).collect()
    }

    // --- options ----------------------------------------------------------

    #[test]
    fn default_options_are_chronys() {
        let options = ServerOptions::default();
        assert_eq!((options.minpoll, options.maxpoll, options.version), (6, 10, 4));
        assert_eq!(options.max_delay_s, 3.0);
        assert!(!options.iburst);
        assert_eq!(options.validate(), Ok(()));
    }

    #[test]
    fn options_out_of_range_are_refused_or_clamped() {
        let bad = |change: fn(&mut ServerOptions)| {
            let mut options = options();
            change(&mut options);
            (options.validate(), options.sanitized())
        };
        let (error, fixed) = bad(|o| o.minpoll = -8);
        assert_eq!(error, Err(OptionsError::PollOutOfRange(-8)));
        assert_eq!(fixed.minpoll, -7);
        let (error, fixed) = bad(|o| o.maxpoll = 25);
        assert_eq!(error, Err(OptionsError::PollOutOfRange(25)));
        assert_eq!(fixed.maxpoll, 24);
        let (error, fixed) = bad(|o| o.maxpoll = 4);
        assert_eq!(error, Err(OptionsError::MaxpollBelowMinpoll { minpoll: 6, maxpoll: 4 }));
        assert_eq!((fixed.minpoll, fixed.maxpoll), (6, 6));
        let (error, fixed) = bad(|o| o.version = 5);
        assert_eq!(error, Err(OptionsError::BadVersion(5)));
        assert_eq!(fixed.version, 4);
        let (error, fixed) = bad(|o| o.version = 0);
        assert_eq!(error, Err(OptionsError::BadVersion(0)));
        assert_eq!(fixed.version, 1);
        let (error, fixed) = bad(|o| o.max_delay_s = 0.0);
        assert_eq!(error, Err(OptionsError::BadMaxDelay(0.0)));
        assert!(fixed.max_delay_s > 0.0);
        let (error, fixed) = bad(|o| o.max_delay_s = 2000.0);
        assert_eq!(error, Err(OptionsError::BadMaxDelay(2000.0)));
        assert_eq!(fixed.max_delay_s, 1000.0);
        let (error, fixed) = bad(|o| o.max_delay_s = f64::NAN);
        assert!(matches!(error, Err(OptionsError::BadMaxDelay(_))));
        assert_eq!(fixed.max_delay_s, 3.0);
        assert!(!OptionsError::BadVersion(9).to_string().is_empty());

        let source = NtpSource::new(SourceId(1), ServerOptions { minpoll: 30, maxpoll: -30, ..options() }, START, 0);
        assert_eq!((source.options().minpoll, source.options().maxpoll), (24, 24));
        assert_eq!(source.poll_log2(), 24);
    }

    // --- the request ------------------------------------------------------

    #[test]
    fn request_carries_the_cookie_and_nothing_about_the_local_clock() {
        let options = ServerOptions { version: 3, ..options() };
        let mut source = NtpSource::new(SourceId(7), options, START, 0);
        assert_eq!(source.id(), SourceId(7));
        let bytes = poll(&mut source, START, 0x0123_4567_89ab_cdef);
        let request = Packet::parse(&bytes).unwrap().header;
        assert_eq!(request.mode, Mode::Client);
        assert_eq!(request.version, 3);
        assert_eq!(request.poll_log2, 6);
        assert_eq!(request.transmit_ts, NtpTimestamp::from_bits(0x0123_4567_89ab_cdef));
        assert_eq!(request.leap, LeapIndicator::NoWarning);
        assert_eq!(request.stratum, 0);
        assert_eq!(request.reference_id, ReferenceId::ZERO);
        for ts in [request.reference_ts, request.origin_ts, request.receive_ts] {
            assert!(ts.is_zero());
        }
        assert_ne!(request.transmit_ts, NtpTimestamp::from_unix_ns(START.0), "the local time is not sent");

        // Zero is no cookie.
        let bytes = poll(&mut source, START.add_seconds(64.0), 0);
        assert!(!Packet::parse(&bytes).unwrap().header.transmit_ts.is_zero());
    }

    #[test]
    fn reply_with_another_origin_is_bogus_and_the_real_one_still_counts() {
        let server = Server::new(0.001, 0.01);
        let mut source = NtpSource::new(SourceId(1), options(), START, 0);
        let request = poll(&mut source, START, 0xaaaa_bbbb_cccc_dddd);
        let (mut forged, t4) = server.reply(&request, START);
        forged[24..32].copy_from_slice(&0xaaaa_bbbb_cccc_ddd0u64.to_be_bytes());
        assert_eq!(source.handle_response(&forged, t4), Response::Ignored(IgnoreReason::Bogus));
        assert_eq!(source.reach(), 0);
        let (reply, t4) = server.reply(&request, START);
        expect_sample(source.handle_response(&reply, t4));
        assert_eq!(source.counters().ignored(IgnoreReason::Bogus), 1);
        assert_eq!(source.counters().valid_responses, 1);
    }

    // --- the sample -------------------------------------------------------

    fn check_exchange(t1: LocalTime, offset_s: f64, delay_s: f64) {
        let server = Server::new(offset_s, delay_s);
        let mut source = NtpSource::new(SourceId(1), options(), t1, 0).with_local_precision(1e-7);
        let sample = expect_sample(exchange(&mut source, &server, t1, 42));
        // Each NTP timestamp is rounded to 2^-32 s and then to 1 ns: ~1 ns per term.
        assert!((sample.offset_s - offset_s).abs() <= 2e-9, "offset {} vs {offset_s}", sample.offset_s);
        assert!((sample.delay_s - delay_s).abs() <= 2e-9, "delay {} vs {delay_s}", sample.delay_s);
        let local_interval_s = delay_s + server.turnaround_s;
        assert_eq!(sample.time, t1.add_seconds(local_interval_s / 2.0));
        let expected_dispersion_s = 2f64.powi(-20) + 1e-7 + 15e-6 * local_interval_s;
        assert!((sample.dispersion_s - expected_dispersion_s).abs() < 1e-12);
        assert_eq!(sample.stratum, 1);
        assert_eq!(sample.leap, LeapIndicator::NoWarning);
        assert_eq!(sample.root_delay_s, 0.0);
        assert_eq!(sample.root_dispersion_s, NtpShort::from_seconds(0.0001).to_seconds());
        assert!(source.reachable());
    }

    #[test]
    fn full_exchange_gives_offset_and_delay() {
        check_exchange(START, 0.0123, 0.0456);
        check_exchange(START, -2.5, 0.000_150);
        check_exchange(START, 0.0, 0.0);
        // A server a year off is measured, not judged: selection decides.
        check_exchange(START, 365.0 * 86_400.0, 0.02);
    }

    #[test]
    fn full_exchange_across_the_2036_era_boundary() {
        let era1 = LocalTime(ERA1_UNIX_S * SECOND_NS);
        // Server already in era 1 (its timestamps wrapped to small values), we are not.
        check_exchange(era1.add_seconds(-0.004), 0.010, 0.004);
        // We are in era 1, the server is still in era 0.
        check_exchange(era1.add_seconds(0.001), -0.5, 0.01);
        // The rollover falls between T1 and T4 (and between T2 and T3).
        check_exchange(era1.add_seconds(-0.002_005), 0.0, 0.004);
        // A server timestamp of exactly 2036-02-07T06:28:16Z is all zero on the wire,
        // which RFC 5905 reserves for "unknown": such a reply is refused (one chance
        // in 2^64 per timestamp; the next poll is fine).
        let server = Server::new(0.0, 0.004);
        let t1 = era1.add_seconds(-0.002);
        let mut source = NtpSource::new(SourceId(1), options(), t1, 0);
        assert_eq!(exchange(&mut source, &server, t1, 1), Response::Ignored(IgnoreReason::ZeroTimestamp));
        // Long after the rollover.
        check_exchange(era1.add_seconds(10.0 * 365.0 * 86_400.0), 0.25, 0.03);
    }

    #[test]
    fn leap_and_header_fields_pass_through() {
        let mut server = Server::new(0.0, 0.01);
        server.header.leap = LeapIndicator::InsertSecond;
        server.header.stratum = 2;
        server.header.root_delay = NtpShort::from_seconds(0.025);
        let mut source = NtpSource::new(SourceId(1), options(), START, 0);
        let sample = expect_sample(exchange(&mut source, &server, START, 1));
        assert_eq!(sample.leap, LeapIndicator::InsertSecond);
        assert_eq!(sample.stratum, 2);
        assert_eq!(sample.root_delay_s, NtpShort::from_seconds(0.025).to_seconds());
    }

    #[test]
    fn local_step_during_the_exchange_is_carried_over() {
        let server = Server::new(0.0, 0.01);
        let mut source = NtpSource::new(SourceId(1), options(), START, 0);
        let request = poll(&mut source, START, 5);
        let (reply, t4) = server.reply(&request, START);
        // The clock is stepped 1 s forward between send and receive: the server is now
        // 1 s behind the local clock, and the delay is unaffected.
        source.apply_step(1.0);
        let sample = expect_sample(source.handle_response(&reply, t4.add_seconds(1.0)));
        assert!((sample.offset_s + 1.0).abs() < 2e-9, "{}", sample.offset_s);
        assert!((sample.delay_s - 0.01).abs() < 2e-9, "{}", sample.delay_s);
    }

    // --- on-wire checks ---------------------------------------------------

    /// The reply to a fresh request after `change`, and what the source made of it.
    fn reply_with(change: impl Fn(&mut Header)) -> (NtpSource, Response) {
        let server = Server::new(0.001, 0.01);
        let mut source = NtpSource::new(SourceId(1), options(), START, 0);
        let request = poll(&mut source, START, 0x5555_6666_7777_8888);
        let (reply, t4) = server.reply(&request, START);
        let mut header = Header::from_bytes(&reply);
        change(&mut header);
        let mut bytes = [0u8; 48];
        header.serialize(&mut bytes);
        let response = source.handle_response(&bytes, t4);
        (source, response)
    }

    #[test]
    fn each_on_wire_check_is_caught() {
        use IgnoreReason::*;
        type Change = fn(&mut Header);
        let cases: [(IgnoreReason, Change); 10] = [
            (NotServerMode, |h| h.mode = Mode::SymmetricPassive),
            (NotServerMode, |h| h.mode = Mode::Broadcast),
            (Bogus, |h| h.origin_ts = NtpTimestamp::ZERO),
            (UnknownKissCode, |h| {
                h.stratum = 0;
                h.reference_id = ReferenceId::ZERO;
            }),
            (Unsynchronised, |h| h.leap = LeapIndicator::Unsynchronised),
            (Unsynchronised, |h| h.stratum = 16),
            (Unsynchronised, |h| h.stratum = 255),
            (ZeroTimestamp, |h| h.receive_ts = NtpTimestamp::ZERO),
            (ZeroTimestamp, |h| h.transmit_ts = NtpTimestamp::ZERO),
            (RootDistanceTooLarge, |h| h.root_dispersion = NtpShort::from_seconds(16.0)),
        ];
        for (reason, change) in cases {
            let (source, response) = reply_with(change);
            assert_eq!(response, Response::Ignored(reason));
            assert_eq!(source.counters().ignored(reason), 1);
            assert_eq!(source.counters().ignored_total(), 1);
            assert_eq!(source.reach(), 0, "{reason:?} must not make the source reachable");
        }
        // Root delay counts half.
        let (_, response) = reply_with(|h| h.root_delay = NtpShort::from_seconds(31.0));
        assert!(matches!(response, Response::Sample(_)));
        let (_, response) = reply_with(|h| h.root_delay = NtpShort::from_seconds(32.0));
        assert_eq!(response, Response::Ignored(RootDistanceTooLarge));
    }

    #[test]
    fn malformed_datagrams_are_ignored() {
        let mut source = NtpSource::new(SourceId(1), options(), START, 0);
        poll(&mut source, START, 9);
        assert_eq!(source.handle_response(&[0u8; 47], START), Response::Ignored(IgnoreReason::Malformed));
        let mut version0 = [0u8; 48];
        version0[0] = 4; // mode 4, version 0
        assert_eq!(source.handle_response(&version0, START), Response::Ignored(IgnoreReason::Malformed));
        assert_eq!(source.counters().packets_received, 2);
    }

    #[test]
    fn duplicate_and_unsolicited_replies() {
        let server = Server::new(0.0, 0.01);
        let mut source = NtpSource::new(SourceId(1), options(), START, 0);
        let (reply, t4) = server.reply(&[0u8; 48].map(|_| 0x1b), START);
        assert_eq!(source.handle_response(&reply, t4), Response::Ignored(IgnoreReason::NoRequestOutstanding));

        let request = poll(&mut source, START, 77);
        let (reply, t4) = server.reply(&request, START);
        expect_sample(source.handle_response(&reply, t4));
        // The network duplicates the datagram.
        assert_eq!(source.handle_response(&reply, t4), Response::Ignored(IgnoreReason::Duplicate));
        // A second, different answer to the same request.
        let (later, t4) = server.reply(&request, START.add_seconds(0.5));
        assert_eq!(source.handle_response(&later, t4), Response::Ignored(IgnoreReason::NoRequestOutstanding));
        // A late reply to the previous request once a new one is out.
        let next = START.add_seconds(64.0);
        let request2 = poll(&mut source, next, 78);
        assert_eq!(source.handle_response(&later, t4), Response::Ignored(IgnoreReason::Bogus));
        let (reply2, t4) = server.reply(&request2, next);
        expect_sample(source.handle_response(&reply2, t4));
        let counters = source.counters();
        assert_eq!((counters.packets_sent, counters.packets_received, counters.valid_responses), (2, 6, 2));
        assert_eq!(counters.ignored(IgnoreReason::Duplicate), 1);
        assert_eq!(counters.ignored(IgnoreReason::NoRequestOutstanding), 2);
        assert_eq!(counters.ignored(IgnoreReason::Bogus), 1);
    }

    #[test]
    fn server_reusing_a_transmit_timestamp_is_a_duplicate() {
        let server = Server::new(0.0, 0.01);
        let mut source = NtpSource::new(SourceId(1), options(), START, 0);
        let request = poll(&mut source, START, 1);
        let (first, t4) = server.reply(&request, START);
        expect_sample(source.handle_response(&first, t4));
        let next = START.add_seconds(64.0);
        let request = poll(&mut source, next, 2);
        let (second, t4) = server.reply(&request, next);
        let mut header = Header::from_bytes(&second);
        header.transmit_ts = Header::from_bytes(&first).transmit_ts;
        let mut bytes = [0u8; 48];
        header.serialize(&mut bytes);
        assert_eq!(source.handle_response(&bytes, t4), Response::Ignored(IgnoreReason::Duplicate));
    }

    #[test]
    fn delay_checks() {
        // maxdelay.
        let server = Server::new(0.0, 0.5);
        let options = ServerOptions { max_delay_s: 0.4, ..options() };
        let mut source = NtpSource::new(SourceId(1), options, START, 0);
        assert_eq!(exchange(&mut source, &server, START, 3), Response::Ignored(IgnoreReason::DelayTooLarge));
        assert!(source.reachable(), "a slow answer still proves the server is alive");
        assert_eq!(source.counters().valid_responses, 0);

        // Negative delay within the error bound: clamped to 0.
        let mut source = NtpSource::new(SourceId(1), ServerOptions::default(), START, 0);
        let request = poll(&mut source, START, 4);
        let server = Server::new(0.0, 0.0);
        let (reply, t4) = server.reply(&request, START);
        let sample = expect_sample(source.handle_response(&reply, t4.add_seconds(-1e-7)));
        assert_eq!(sample.delay_s, 0.0);

        // Far beyond it: T4 before T1 (the local clock stepped back).
        let next = START.add_seconds(64.0);
        let request = poll(&mut source, next, 5);
        let (reply, _) = server.reply(&request, next);
        assert_eq!(
            source.handle_response(&reply, next.add_seconds(-0.5)),
            Response::Ignored(IgnoreReason::NegativeDelay)
        );
    }

    // --- kiss-o'-death ----------------------------------------------------

    fn kiss(source: &mut NtpSource, now: LocalTime, code: KissCode) -> Response {
        let request = poll(source, now, now.0 as u64 | 1);
        let mut server = Server::new(0.0, 0.01);
        server.header.stratum = 0;
        server.header.leap = LeapIndicator::Unsynchronised;
        server.header.reference_id = code.reference_id();
        let (reply, t4) = server.reply(&request, now);
        source.handle_response(&reply, t4)
    }

    #[test]
    fn rate_doubles_the_interval_and_raises_the_floor() {
        let mut source = NtpSource::new(SourceId(1), options(), START, 0);
        assert_eq!(kiss(&mut source, START, KissCode::Rate), Response::KissOfDeath(KissCode::Rate));
        assert_eq!(source.poll_log2(), 7);
        assert_eq!(source.next_poll(), START.add_seconds(128.0));
        let now = source.next_poll();
        assert_eq!(kiss(&mut source, now, KissCode::Rate), Response::KissOfDeath(KissCode::Rate));
        assert_eq!(source.poll_log2(), 8);
        assert_eq!(source.counters().kod_received, 2);
        assert!(!source.reachable(), "a KoD is no sample");

        // Inconsistent samples cannot bring the interval below the new floor.
        let mut offset_s = 0.0;
        for _ in 0..10 {
            offset_s += 1.0;
            let now = source.next_poll();
            expect_sample(exchange(&mut source, &Server::new(offset_s, 0.01), now, now.0 as u64));
        }
        assert_eq!(source.poll_log2(), 8);

        // Capped at maxpoll.
        for _ in 0..5 {
            let now = source.next_poll();
            kiss(&mut source, now, KissCode::Rate);
        }
        assert_eq!(source.poll_log2(), 10);
    }

    #[test]
    fn rate_ends_a_burst() {
        let mut source = NtpSource::new(SourceId(1), ServerOptions { iburst: true, ..options() }, START, 0);
        assert_eq!(source.state(), PollState::Burst);
        kiss(&mut source, START, KissCode::Rate);
        assert_eq!(source.state(), PollState::Polling);
        assert_eq!(source.next_poll(), START.add_seconds(128.0));
    }

    #[test]
    fn deny_and_rstr_stop_polling() {
        for code in [KissCode::Deny, KissCode::Rstr] {
            let server = Server::new(0.0, 0.01);
            let mut source = NtpSource::new(SourceId(1), options(), START, 0);
            expect_sample(exchange(&mut source, &server, START, 1));
            assert!(source.reachable());
            let now = source.next_poll();
            assert_eq!(kiss(&mut source, now, code), Response::KissOfDeath(code));
            assert_eq!(source.state(), PollState::Stopped(code));
            assert!(!source.reachable());
            assert_eq!(source.next_poll(), LocalTime(i64::MAX));
            let mut out = [0u8; 48];
            assert_eq!(source.poll(now.add_seconds(64.0), [3, 4], &mut out), None);
            assert_eq!(source.counters().packets_sent, 2);
        }
    }

    #[test]
    fn other_kiss_codes_are_informational() {
        let mut source = NtpSource::new(SourceId(1), options(), START, 0);
        assert_eq!(kiss(&mut source, START, KissCode::Init), Response::KissOfDeath(KissCode::Init));
        assert_eq!(source.state(), PollState::Polling);
        assert_eq!(source.poll_log2(), 6);
        assert_eq!(source.next_poll(), START.add_seconds(64.0));
    }

    #[test]
    fn spoofed_kiss_of_death_is_bogus() {
        let mut source = NtpSource::new(SourceId(1), options(), START, 0);
        poll(&mut source, START, 0x1111);
        let mut header = Server::new(0.0, 0.01).header;
        header.stratum = 0;
        header.reference_id = KissCode::Deny.reference_id();
        header.origin_ts = NtpTimestamp::from_bits(0x2222);
        header.transmit_ts = NtpTimestamp::from_bits(0x3333);
        let mut bytes = [0u8; 48];
        header.serialize(&mut bytes);
        assert_eq!(source.handle_response(&bytes, START), Response::Ignored(IgnoreReason::Bogus));
        assert_eq!(source.state(), PollState::Polling);
    }

    // --- reachability -----------------------------------------------------

    #[test]
    fn reach_register_after_eight_polls() {
        let server = Server::new(0.0, 0.01);
        let mut answered = NtpSource::new(SourceId(1), options(), START, 0);
        run(&mut answered, Some(&server), 8);
        assert_eq!(answered.reach(), 0xff);
        assert!(answered.reachable());

        let mut silent = NtpSource::new(SourceId(2), options(), START, 0);
        run(&mut silent, None, 8);
        assert_eq!(silent.reach(), 0);
        assert!(!silent.reachable());
        assert_eq!(silent.counters().missed_responses, 7);

        // Answered, then silent: the ones shift out one poll at a time.
        let mut fading = NtpSource::new(SourceId(3), options(), START, 0);
        run(&mut fading, Some(&server), 3);
        assert_eq!(fading.reach(), 0b111);
        run(&mut fading, None, 2);
        assert_eq!(fading.reach(), 0b1_1100);
        run(&mut fading, None, 6);
        assert_eq!(fading.reach(), 0);

        // Every other poll answered.
        let mut lossy = NtpSource::new(SourceId(4), options(), START, 0);
        for i in 0..8 {
            let now = lossy.next_poll();
            if i % 2 == 0 {
                poll(&mut lossy, now, i + 1);
            } else {
                exchange(&mut lossy, &server, now, i + 1);
            }
        }
        assert_eq!(lossy.reach(), 0b0101_0101);
    }

    // --- poll interval ----------------------------------------------------

    #[test]
    fn first_poll_is_spread_by_the_random_argument() {
        let a = NtpSource::new(SourceId(1), options(), START, 0);
        let b = NtpSource::new(SourceId(2), options(), START, 123_456_789);
        let c = NtpSource::new(SourceId(3), options(), START, u64::MAX);
        assert_eq!(a.next_poll(), START);
        assert_eq!(b.next_poll(), LocalTime(START.0 + 123_456_789));
        assert!(c.next_poll() < START.add_seconds(MAX_INITIAL_DELAY_S));
    }

    #[test]
    fn iburst_spacing_then_minpoll() {
        let server = Server::new(0.0, 0.01);
        let mut source = NtpSource::new(SourceId(1), ServerOptions { iburst: true, ..options() }, START, 0);
        assert_eq!(source.state(), PollState::Burst);
        assert_eq!(source.poll_interval_s(), 2.0);
        let times = run(&mut source, Some(&server), 6);
        // 4 samples end the burst: 2 s apart, then 64 s.
        assert_eq!(intervals_s(&times), [2.0, 2.0, 2.0, 64.0, 64.0]);
        assert_eq!(source.state(), PollState::Polling);
        assert_eq!(source.poll_log2(), 6);
    }

    #[test]
    fn iburst_without_replies_stops_after_eight_requests() {
        let mut source = NtpSource::new(SourceId(1), ServerOptions { iburst: true, ..options() }, START, 0);
        let times = run(&mut source, None, 10);
        let intervals = intervals_s(&times);
        assert_eq!(intervals[..7], [2.0; 7]);
        assert_eq!(intervals[7..], [64.0, 128.0], "after 8 unanswered requests, back off");
        assert_eq!(source.state(), PollState::Polling);
    }

    #[test]
    fn iburst_spacing_shrinks_with_short_minpoll() {
        let options = ServerOptions { iburst: true, minpoll: 2, maxpoll: 4, ..options() };
        let source = NtpSource::new(SourceId(1), options, START, 0);
        assert_eq!(source.poll_interval_s(), 1.0);
        let options = ServerOptions { iburst: true, minpoll: -4, maxpoll: 4, ..options };
        let source = NtpSource::new(SourceId(1), options, START, 0);
        assert_eq!(source.poll_interval_s(), 1.0 / 64.0);
    }

    #[test]
    fn stable_source_climbs_to_maxpoll_and_stays() {
        let server = Server::new(0.002, 0.01);
        let mut source = NtpSource::new(SourceId(1), options(), START, 0);
        let times = run(&mut source, Some(&server), 1 + 4 * POLL_INCREASE_SAMPLES as usize + 10);
        let intervals = intervals_s(&times);
        // First sample sets the reference; then 8 consistent ones per level.
        let mut expected = vec![64.0; 8];
        for level in [128.0, 256.0, 512.0] {
            expected.extend([level; 8]);
        }
        expected.extend([1024.0; 10]);
        assert_eq!(intervals, expected);
        assert_eq!(source.poll_log2(), 10);
    }

    #[test]
    fn a_lone_spike_does_not_lower_the_interval_but_a_change_does() {
        let mut server = Server::new(0.0, 0.001);
        let mut source = NtpSource::new(SourceId(1), options(), START, 0);
        run(&mut source, Some(&server), 9);
        assert_eq!(source.poll_log2(), 7);
        // One spike: no change.
        server.offset_s = 0.1;
        run(&mut source, Some(&server), 1);
        server.offset_s = 0.0;
        run(&mut source, Some(&server), 1);
        assert_eq!(source.poll_log2(), 7);
        // A lasting change: down one, and the new level is the reference.
        server.offset_s = 0.1;
        run(&mut source, Some(&server), 2);
        assert_eq!(source.poll_log2(), 6);
        run(&mut source, Some(&server), 3);
        assert_eq!(source.poll_log2(), 6);
        // Never below minpoll.
        for i in 0..10 {
            server.offset_s = f64::from(i);
            run(&mut source, Some(&server), 1);
        }
        assert_eq!(source.poll_log2(), 6);
    }

    #[test]
    fn missed_reply_restarts_the_count() {
        let server = Server::new(0.0, 0.01);
        let mut source = NtpSource::new(SourceId(1), options(), START, 0);
        run(&mut source, Some(&server), 5);
        run(&mut source, None, 1);
        run(&mut source, Some(&server), 7);
        assert_eq!(source.poll_log2(), 6, "the 8 in a row must be answered in a row");
        run(&mut source, Some(&server), 1);
        assert_eq!(source.poll_log2(), 7);
    }

    #[test]
    fn unreachable_backs_off_and_recovers_at_minpoll() {
        let server = Server::new(0.0, 0.01);
        let mut source = NtpSource::new(SourceId(1), options(), START, 0);
        run(&mut source, Some(&server), 2);
        let times = run(&mut source, None, 14);
        let intervals = intervals_s(&times);
        // Polls 1-8 unanswered at 64 s; from then on each silent poll doubles.
        assert_eq!(intervals[..8], [64.0; 8]);
        assert_eq!(intervals[8..], [128.0, 256.0, 512.0, 1024.0, 1024.0]);
        assert!(!source.reachable());
        assert_eq!(source.poll_log2(), 10);

        // It answers again: back to minpoll right away.
        let now = source.next_poll();
        expect_sample(exchange(&mut source, &server, now, 99));
        assert_eq!(source.poll_log2(), 6);
        assert_eq!(source.next_poll(), now.add_seconds(64.0));
        assert_eq!(source.state(), PollState::Polling);
    }

    #[test]
    fn iburst_again_when_back_from_unreachable() {
        let server = Server::new(0.0, 0.01);
        let mut source = NtpSource::new(SourceId(1), ServerOptions { iburst: true, ..options() }, START, 0);
        run(&mut source, Some(&server), 4);
        assert_eq!(source.state(), PollState::Polling);
        run(&mut source, None, 10);
        assert_eq!(source.state(), PollState::Polling);
        let now = source.next_poll();
        expect_sample(exchange(&mut source, &server, now, 7));
        assert_eq!(source.state(), PollState::Burst);
        assert_eq!(source.next_poll(), now.add_seconds(2.0));
        // That answer was the burst's first sample: three more end it.
        let times = run(&mut source, Some(&server), 4);
        assert_eq!(intervals_s(&times), [2.0, 2.0, 64.0]);
    }

    #[test]
    fn step_moves_the_schedule() {
        let mut source = NtpSource::new(SourceId(1), options(), START, 0);
        poll(&mut source, START, 1);
        source.apply_step(-10.0);
        assert_eq!(source.next_poll(), START.add_seconds(54.0));
    }

    /// A server that answers interleaved requests as chronyd and strata do: its
    /// transmit timestamp is a clock read `lag_s` before the datagram really leaves;
    /// the real departure goes out in the next interleaved reply.
    struct InterleavedServer {
        server: Server,
        lag_s: f64,
        /// (its receive timestamp of the request, the real departure of its reply).
        saved: Option<(NtpTimestamp, NtpTimestamp)>,
    }

    impl InterleavedServer {
        fn new(offset_s: f64, delay_s: f64, lag_s: f64) -> InterleavedServer {
            InterleavedServer { server: Server::new(offset_s, delay_s), lag_s, saved: None }
        }

        /// The reply to `request` sent at local `t1` (the real departure), and T4.
        fn reply(&mut self, request: &[u8; 48], t1: LocalTime) -> ([u8; 48], LocalTime) {
            let (mut out, t4) = self.server.reply(request, t1);
            let request = Packet::parse(request).unwrap().header;
            let mut header = Packet::parse(&out).unwrap().header;
            // The reply leaves when the basic timestamp says, plus the lag.
            let really_sent = NtpTimestamp::from_unix_ns(
                LocalTime(header.transmit_ts.to_unix_ns_near(t1.0)).add_seconds(self.lag_s).0,
            );
            let t4 = t4.add_seconds(self.lag_s);
            let interleaved = request.receive_ts != request.transmit_ts && !request.origin_ts.is_zero();
            match self.saved {
                Some((receive, sent)) if interleaved && receive == request.origin_ts => {
                    header.origin_ts = request.receive_ts;
                    header.transmit_ts = sent;
                }
                _ => {}
            }
            self.saved = Some((header.receive_ts, really_sent));
            header.serialize(&mut out);
            (out, t4)
        }
    }

    fn xleave() -> ServerOptions {
        ServerOptions { xleave: true, ..options() }
    }

    fn poll2(source: &mut NtpSource, now: LocalTime, random: u64) -> [u8; 48] {
        let mut out = [0u8; 48];
        assert_eq!(source.poll(now, [random, random.rotate_left(17) ^ 0x5a5a], &mut out), Some(48));
        out
    }

    #[test]
    fn interleaved_samples_carry_the_servers_real_transmit_time() {
        // The server's transmit timestamp is 40 µs early: a basic sample is off by 20 µs.
        let (offset_s, delay_s, lag_s) = (0.25, 0.002, 0.000_040);
        let mut server = InterleavedServer::new(offset_s, delay_s, lag_s);
        let mut source = NtpSource::new(SourceId(1), xleave(), START, 0);
        let mut now = START;
        let mut samples = Vec::new();
        for i in 0..4u64 {
            let request = poll2(&mut source, now, 100 + i);
            let header = Packet::parse(&request).unwrap().header;
            if i == 0 {
                assert!(header.origin_ts.is_zero() && header.receive_ts.is_zero(), "nothing to interleave yet");
            } else {
                assert!(!header.origin_ts.is_zero() && header.receive_ts != header.transmit_ts, "{header:?}");
            }
            let (reply, t4) = server.reply(&request, now);
            samples.push((expect_sample(source.handle_response(&reply, t4)), source.last_interleaved()));
            now = now.add_seconds(16.0);
        }
        let (basic, interleaved) = (samples[0].0, samples[1].0);
        assert!(!samples[0].1 && samples.iter().skip(1).all(|(_, x)| *x), "{samples:?}");
        assert!((basic.offset_s - offset_s + lag_s / 2.0).abs() < 1e-8, "basic: {basic:?}");
        assert!((interleaved.offset_s - offset_s).abs() < 1e-8, "interleaved: {interleaved:?}");
        assert!((interleaved.delay_s - delay_s).abs() < 1e-8, "{interleaved:?}");
        // The interleaved sample measures the previous exchange: it is one poll old.
        assert!((samples[1].0.time.seconds_since(basic.time)).abs() < 1e-6, "{samples:?}");
    }

    #[test]
    fn a_basic_client_and_a_lost_reply_send_basic_requests() {
        let mut server = InterleavedServer::new(0.0, 0.001, 0.000_040);
        let mut basic = NtpSource::new(SourceId(1), options(), START, 0);
        for i in 0..3u64 {
            let now = START.add_seconds(16.0 * i as f64);
            let request = poll2(&mut basic, now, 7 + i);
            let header = Packet::parse(&request).unwrap().header;
            assert!(header.origin_ts.is_zero() && header.receive_ts.is_zero());
            let (reply, t4) = server.reply(&request, now);
            expect_sample(basic.handle_response(&reply, t4));
            assert!(!basic.last_interleaved());
        }
        let mut source = NtpSource::new(SourceId(2), xleave(), START, 0);
        let request = poll2(&mut source, START, 1);
        let (reply, t4) = server.reply(&request, START);
        expect_sample(source.handle_response(&reply, t4));
        // The next request goes unanswered: the one after it starts afresh.
        poll2(&mut source, START.add_seconds(16.0), 2);
        let request = poll2(&mut source, START.add_seconds(32.0), 3);
        let header = Packet::parse(&request).unwrap().header;
        assert!(header.origin_ts.is_zero() && header.receive_ts.is_zero(), "{header:?}");
    }

    #[test]
    fn a_server_as_fast_as_its_precision_may_stamp_its_reply_before_the_request() {
        // The previous reply's transmit time 500 ns before the previous request's
        // receive time: within a server precision of 2^-20 s (954 ns), but not 5 µs.
        for (before_s, accepted) in [(500e-9, true), (5e-6, false)] {
            let mut server = InterleavedServer::new(0.0, 0.001, 0.0);
            let mut source = NtpSource::new(SourceId(1), xleave(), START, 0);
            let request = poll2(&mut source, START, 1);
            let (reply, t4) = server.reply(&request, START);
            let first = Packet::parse(&reply).unwrap().header;
            expect_sample(source.handle_response(&reply, t4));
            let now = START.add_seconds(16.0);
            let request = poll2(&mut source, now, 2);
            let (mut reply, t4) = server.reply(&request, now);
            let mut header = Packet::parse(&reply).unwrap().header;
            header.precision_log2 = -20;
            let received = LocalTime(first.receive_ts.to_unix_ns_near(START.0));
            header.transmit_ts = NtpTimestamp::from_unix_ns(received.add_seconds(-before_s).0);
            header.serialize(&mut reply);
            match source.handle_response(&reply, t4) {
                Response::Sample(_) => assert!(accepted && source.last_interleaved(), "{before_s} s before"),
                other => assert!(!accepted && other == Response::Ignored(IgnoreReason::BadInterleaved), "{other:?}"),
            }
        }
    }

    #[test]
    fn an_interleaved_reply_whose_transmit_time_cannot_be_right_is_ignored() {
        let mut server = InterleavedServer::new(0.0, 0.001, 0.000_040);
        let mut source = NtpSource::new(SourceId(1), xleave(), START, 0);
        let request = poll2(&mut source, START, 1);
        let (reply, t4) = server.reply(&request, START);
        expect_sample(source.handle_response(&reply, t4));
        let now = START.add_seconds(16.0);
        let request = poll2(&mut source, now, 2);
        let (mut reply, t4) = server.reply(&request, now);
        // A transmit time after this request's receive time: not the previous reply's.
        let mut header = Packet::parse(&reply).unwrap().header;
        header.transmit_ts = NtpTimestamp::from_unix_ns(now.add_seconds(1.0).0);
        header.serialize(&mut reply);
        assert_eq!(source.handle_response(&reply, t4), Response::Ignored(IgnoreReason::BadInterleaved));
        // A reply echoing neither cookie is bogus, interleaved or not.
        let request = poll2(&mut source, now.add_seconds(16.0), 3);
        let (mut reply, t4) = server.reply(&request, now.add_seconds(16.0));
        let mut header = Packet::parse(&reply).unwrap().header;
        header.origin_ts = NtpTimestamp::from_bits(0x1234);
        header.serialize(&mut reply);
        assert_eq!(source.handle_response(&reply, t4), Response::Ignored(IgnoreReason::Bogus));
    }

    #[test]
    fn the_kernels_transmit_timestamp_corrects_t1() {
        // The clock was read 30 µs before the request really left.
        let server = Server::new(0.1, 0.002);
        let mut source = NtpSource::new(SourceId(1), options(), START, 0);
        let read = START;
        let left = START.add_seconds(0.000_030);
        let request = poll2(&mut source, read, 5);
        assert!(!source.kernel_tx());
        source.transmitted(left);
        assert!(source.kernel_tx());
        let (reply, t4) = server.reply(&request, left);
        let sample = expect_sample(source.handle_response(&reply, t4));
        assert!((sample.offset_s - 0.1).abs() < 1e-8, "{sample:?}");
        // One from before the read or a second later is not this request's.
        let request = poll2(&mut source, START.add_seconds(16.0), 6);
        source.transmitted(START.add_seconds(15.0));
        source.transmitted(START.add_seconds(17.5));
        assert!(!source.kernel_tx());
        let (reply, t4) = server.reply(&request, START.add_seconds(16.0));
        let sample = expect_sample(source.handle_response(&reply, t4));
        assert!((sample.offset_s - 0.1).abs() < 1e-8, "{sample:?}");
    }
}
