//! Messages between strata's processes.
//!
//! The rules (ARCHITECTURE.md, "Channels"):
//! - One enum per channel and direction. A process that may ask for one thing holds
//!   a channel that can carry only that thing: the engine's channel to the adjuster
//!   carries [`EngineToAdjuster`] and nothing else.
//! - Variant 0 of every enum is `Hello`. postcard is not self-describing, so the
//!   variant order *is* the wire format: new variants go at the end, never between.
//! - A frame is one `SOCK_SEQPACKET` datagram of at most [`MAX_FRAME`] bytes; the size
//!   is checked before decoding and a frame must decode with no byte left over.
//! - Messages carry state, not deltas, so that a re-spawned peer converges by itself.

use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ntp::LeapIndicator;

/// Bumped whenever any enum below changes shape.
pub const PROTOCOL_VERSION: u32 = 8;

/// Exit status of a child that must not be re-spawned (the adjuster's panic
/// threshold): the supervisor raises an alarm instead.
pub const EXIT_DO_NOT_RESPAWN: u8 = 100;

/// Exit status of a child whose start-up failed (settings, privileges, sandbox).
pub const EXIT_SETUP_FAILED: u8 = 70;

/// Hard upper bound of one frame. A larger datagram is a protocol violation.
pub const MAX_FRAME: usize = 16 * 1024;

/// The processes of one appliance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    Supervisor,
    Ntp,
    Refclock,
    Adjust,
    Control,
}

impl Role {
    /// The four sandboxed children, in start-up order: the adjuster first (the engine
    /// wants the clock status), the control plane last. Shutdown runs in reverse.
    pub const CHILDREN: [Role; 4] = [Role::Adjust, Role::Refclock, Role::Ntp, Role::Control];

    /// Short name used in logs, configuration and the status file.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Supervisor => "supervisor",
            Role::Ntp => "ntp",
            Role::Refclock => "refclock",
            Role::Adjust => "adjust",
            Role::Control => "control",
        }
    }

    /// Executable name of the process.
    pub const fn binary(self) -> &'static str {
        match self {
            Role::Supervisor => "strata",
            Role::Ntp => "strata-ntp",
            Role::Refclock => "strata-refclock",
            Role::Adjust => "strata-adjust",
            Role::Control => "strata-control",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        [Role::Supervisor, Role::Ntp, Role::Refclock, Role::Adjust, Role::Control]
            .into_iter()
            .find(|r| r.name() == name)
    }

    /// The children this process has a direct channel with.
    pub fn peers(self) -> impl Iterator<Item = Role> {
        LINKS.iter().filter_map(move |&(a, b)| {
            if a == self {
                Some(b)
            } else if b == self {
                Some(a)
            } else {
                None
            }
        })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every channel between two children. Refclock and adjuster have none: a refclock
/// reader has nothing to ask of the clock.
pub const LINKS: [(Role, Role); 5] = [
    (Role::Ntp, Role::Adjust),
    (Role::Refclock, Role::Ntp),
    (Role::Control, Role::Ntp),
    (Role::Control, Role::Adjust),
    (Role::Control, Role::Refclock),
];

/// Variant 0 of every message enum: who is speaking, in which protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub role: Role,
}

impl Hello {
    pub const fn new(role: Role) -> Hello {
        Hello { version: PROTOCOL_VERSION, role }
    }
}

/// A message of one channel direction.
pub trait Message: Serialize + DeserializeOwned + std::fmt::Debug {
    /// Whether a descriptor may travel with this message (`SCM_RIGHTS`).
    fn carries_fd(&self) -> bool {
        false
    }
}

/// A message between two children: the type fixes the direction.
pub trait PeerMessage: Message {
    const FROM: Role;
    const TO: Role;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    Oversized(usize),
    #[error("empty frame")]
    Empty,
    #[error("frame does not decode: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("{0} bytes left over after the message")]
    TrailingBytes(usize),
    #[error("expected Hello, got another message")]
    NotHello,
    #[error("peer speaks protocol version {got}, this process speaks {PROTOCOL_VERSION}")]
    Version { got: u32 },
    #[error("peer says it is {got}, expected {expected}")]
    WrongRole { got: Role, expected: Role },
}

/// Encode into `buf`; the slice returned is the frame to send.
pub fn encode<'b, M: Message>(msg: &M, buf: &'b mut [u8]) -> Result<&'b [u8], FrameError> {
    let cap = buf.len().min(MAX_FRAME);
    match postcard::to_slice(msg, &mut buf[..cap]) {
        Ok(frame) => Ok(frame),
        Err(postcard::Error::SerializeBufferFull) => Err(FrameError::Oversized(cap + 1)),
        Err(e) => Err(FrameError::Malformed(e)),
    }
}

/// Decode one frame. The size is checked first; the whole frame must be consumed.
pub fn decode<M: Message>(frame: &[u8]) -> Result<M, FrameError> {
    if frame.len() > MAX_FRAME {
        return Err(FrameError::Oversized(frame.len()));
    }
    if frame.is_empty() {
        return Err(FrameError::Empty);
    }
    let (msg, rest) = postcard::take_from_bytes::<M>(frame)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// Only variant 0 of any message enum: encodes and decodes the handshake of any
/// channel, byte for byte the same as that enum's own `Hello`.
#[derive(Serialize, Deserialize)]
enum Handshake {
    Hello(Hello),
}

/// The handshake frame `role` sends first on every channel.
pub fn encode_hello(role: Role, buf: &mut [u8]) -> &[u8] {
    postcard::to_slice(&Handshake::Hello(Hello::new(role)), buf).expect("a Hello fits any frame buffer")
}

/// Check a channel's first frame: it must be `Hello` from `expected`, in our version.
pub fn decode_hello(frame: &[u8], expected: Role) -> Result<Hello, FrameError> {
    if frame.len() > MAX_FRAME {
        return Err(FrameError::Oversized(frame.len()));
    }
    // Variant 0 is the single byte 0 in postcard's varint.
    if frame.first() != Some(&0) {
        return Err(FrameError::NotHello);
    }
    let (Handshake::Hello(hello), rest) = postcard::take_from_bytes::<Handshake>(frame)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    if hello.version != PROTOCOL_VERSION {
        return Err(FrameError::Version { got: hello.version });
    }
    if hello.role != expected {
        return Err(FrameError::WrongRole { got: hello.role, expected });
    }
    Ok(hello)
}

macro_rules! channel {
    ($ty:ident: $from:ident -> $to:ident) => {
        impl Message for $ty {}
        impl PeerMessage for $ty {
            const FROM: Role = Role::$from;
            const TO: Role = Role::$to;
        }
    };
}

// ---------------------------------------------------------------------------
// Supervisor channel (fixed descriptor 3 of every child)
// ---------------------------------------------------------------------------

/// Supervisor → child. Trusted: the supervisor is the parent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SupervisorToChild {
    Hello(Hello),
    /// Who to become and how to behave. Sent once, right after the handshake.
    Start(Start),
    /// A privileged resource opened by the supervisor; its descriptor travels with it.
    Resource(Resource),
    /// No more resources follow: drop privileges and install the sandbox now.
    Sealed,
    /// A channel to a peer; its descriptor travels with it. Sent at start and again
    /// whenever that peer is re-spawned (the old channel is then dead). `link`
    /// names this channel in the child's reports, so that a report about an old
    /// channel is never taken for one about its replacement.
    Peer {
        peer: Role,
        link: u64,
    },
    /// Stop cleanly.
    Shutdown,
    /// The processes as the supervisor sees them; sent to the control plane after
    /// every change (state, not deltas).
    Processes(Vec<crate::status::ProcessStatus>),
}

impl Message for SupervisorToChild {
    fn carries_fd(&self) -> bool {
        matches!(self, SupervisorToChild::Resource(_) | SupervisorToChild::Peer { .. })
    }
}

/// Child → supervisor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ChildToSupervisor {
    Hello(Hello),
    /// Privileges dropped, sandbox installed, event loop running.
    Ready,
    /// Handshake with this peer completed on channel `link`.
    Linked {
        peer: Role,
        link: u64,
    },
    /// Channel `link` to this peer is gone.
    Unlinked {
        peer: Role,
        link: u64,
        reason: UnlinkReason,
    },
    /// The adjuster stepped the clock: one step of the per-boot budget is used.
    /// The supervisor keeps the count, so a re-spawn cannot reset it.
    StepTaken,
    /// The engine's frequency estimate, for the driftfile (the engine has no file
    /// access; the supervisor writes it atomically).
    Drift {
        /// The correction the discipline applies (positive: the clock is sped up),
        /// as chrony's driftfile holds it.
        frequency_ppm: f64,
        skew_ppm: f64,
    },
    /// A line of chrony-like statistics logs, as numbers: the supervisor formats
    /// and writes them (the engine has no file access).
    Log(LogRecord),
}

/// One record of the statistics logs (chrony's `log measurements statistics tracking`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LogRecord {
    /// One valid NTP sample of an upstream.
    Measurement {
        time_unix_ns: i64,
        source: SocketAddr,
        leap: LeapIndicator,
        stratum: u8,
        offset_s: f64,
        delay_s: f64,
        dispersion_s: f64,
        root_delay_s: f64,
        root_dispersion_s: f64,
        /// An interleaved exchange (chrony's measurements.log mode "I"), else basic.
        interleaved: bool,
    },
    /// A source's filtered estimate after the sample.
    Statistics { time_unix_ns: i64, source: SocketAddr, offset_s: f64, jitter_s: f64, dispersion_s: f64, reach: u8 },
    /// A clock update of the discipline.
    Tracking {
        time_unix_ns: i64,
        reference: Option<SocketAddr>,
        stratum: u8,
        /// The discipline's correction (positive: sped up); `TrackingStatus`
        /// reports the clock's own rate error, its negation, as `rate_error_ppm`, and
        /// so does the tracking log's "Freq ppm" column, as chrony's does.
        frequency_ppm: f64,
        skew_ppm: f64,
        /// Reference − local clock (positive: the clock is behind); `TrackingStatus`
        /// and the tracking log report chrony's local − reference.
        offset_s: f64,
        leap: LeapIndicator,
        root_delay_s: f64,
        root_dispersion_s: f64,
    },
}

impl Message for ChildToSupervisor {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnlinkReason {
    /// The peer closed its end (it exited or was killed).
    Closed,
    /// The peer sent something that is not the protocol; we dropped it.
    Violation,
    /// A new channel to the same peer replaced this one.
    Replaced,
}

/// The process's identity and settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Start {
    /// `None` in development mode: keep the invoking user.
    pub identity: Option<Identity>,
    pub log_level: LogLevel,
    pub settings: Settings,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// Per-process settings; the variant must match the receiving process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Settings {
    Ntp(NtpSettings),
    Refclock(RefclockSettings),
    Adjust(AdjustSettings),
    Control(ControlSettings),
}

impl Settings {
    pub fn role(&self) -> Role {
        match self {
            Settings::Ntp(_) => Role::Ntp,
            Settings::Refclock(_) => Role::Refclock,
            Settings::Adjust(_) => Role::Adjust,
            Settings::Control(_) => Role::Control,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NtpSettings {
    /// chrony's `local stratum N`: serve as this stratum with refid LOCL while no
    /// better reference is selected. `None`: unsynchronised until a source is.
    pub local_stratum: Option<u8>,
    /// Who may ask for time: chrony's `allow`/`deny` lines, in order.
    pub access: Vec<String>,
    /// chrony's `ratelimit`; `None`: every allowed request is answered.
    pub ratelimit: Option<RateLimitSettings>,
    /// chrony's `clientloglimit`: memory for the per-client log, in bytes.
    pub client_log_limit_bytes: u64,
    /// Read the kernel's transmit timestamps back (interleaved mode's precise T3).
    pub kernel_tx_timestamps: bool,
    /// Upstream servers to poll.
    pub upstreams: Vec<UpstreamSettings>,
    /// chrony's `makestep threshold limit`.
    pub makestep: Option<(f64, i32)>,
    pub minsources: u8,
    /// The frequency and its error bound saved in the driftfile, ppm.
    pub initial_frequency: Option<(f64, f64)>,
    pub leap_sec_mode: LeapSecMode,
    /// chrony's selection and regression directives.
    pub selection: SelectionSettings,
    /// The adjuster's slew rate, ppm (the `maxslewrate` it is given).
    pub max_slew_rate_ppm: f64,
    /// Whether to report `LogRecord`s (some statistics log is configured).
    pub log_records: bool,
    /// The refclocks as sources, in configuration order.
    pub refclocks: Vec<RefclockSourceSettings>,
}

/// chrony's directives for selecting sources and keeping their regressions; the
/// defaults are chrony's.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelectionSettings {
    /// `maxdistance`: sources with a larger root distance are not selectable, s.
    pub max_distance_s: f64,
    /// `maxjitter`: sources with more jitter are not selectable, s.
    pub max_jitter_s: f64,
    /// `combinelimit`: combine sources up to this many times the peer's distance.
    pub combine_limit: f64,
    /// `reselectdist`: what another source must be better by to become the peer, s.
    pub reselect_distance_s: f64,
    /// `stratumweight`: distance one stratum is worth, s.
    pub stratum_weight_s: f64,
    /// `maxupdateskew`: no frequency update from a drift known worse than this, ppm.
    pub max_update_skew_ppm: f64,
    /// `minsamples` and `maxsamples`: the regressions' window.
    pub min_samples: u8,
    pub max_samples: u8,
}

impl Default for SelectionSettings {
    fn default() -> Self {
        SelectionSettings {
            max_distance_s: 3.0,
            max_jitter_s: 1.0,
            combine_limit: 3.0,
            reselect_distance_s: 1e-4,
            stratum_weight_s: 1e-3,
            max_update_skew_ppm: 1000.0,
            min_samples: 6,
            max_samples: 64,
        }
    }
}

/// One upstream server (chrony's `server` line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpstreamSettings {
    pub address: SocketAddr,
    pub iburst: bool,
    pub minpoll: i8,
    pub maxpoll: i8,
    pub prefer: bool,
    pub noselect: bool,
    pub trust: bool,
    pub require: bool,
    pub max_delay_s: f64,
    pub version: u8,
    /// chrony's `xleave`: ask the server for interleaved replies.
    pub xleave: bool,
}

/// chrony's `ratelimit interval I burst B leak L`, plus strata's `kod K`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitSettings {
    pub interval_log2: i8,
    pub burst: u8,
    pub leak_log2: u8,
    pub kod_log2: Option<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RefclockSettings {
    /// The refclocks, in configuration order (their index names them in samples).
    pub refclocks: Vec<RefclockDriverSettings>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RefclockDriverSettings {
    /// Samples arrive on a datagram socket the supervisor bound (a `SockSocket` resource).
    Sock,
    /// The NTP shared-memory segment of this unit (key 0x4e545030 + unit), read
    /// every 2^dpoll s.
    Shm { unit: u8, dpoll: i8 },
    /// A PTP hardware clock (a `PhcRefclock` resource), read every 2^dpoll s;
    /// `tai`: it counts TAI.
    Phc { tai: bool, dpoll: i8 },
    /// An RFC 2783 PPS source (a `PpsRefclock` resource), fetched every 2^dpoll s.
    Pps(PpsDriverSettings),
}

/// A PPS refclock: which edge, and where its seconds come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PpsDriverSettings {
    pub dpoll: i8,
    /// The clear edge marks the second (chrony's `:clear`), not the assert edge.
    pub clear: bool,
    /// Its own configured `offset`, seconds (the engine adds it; the reader needs it
    /// to pick the right second).
    pub offset_s: f64,
    /// chrony's `lock`; `None`: the second is the system clock's nearest.
    pub lock: Option<PpsLock>,
}

/// chrony's `lock REFID` and `maxlockage`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PpsLock {
    /// The refclock (by index) that numbers the seconds.
    pub refclock: u16,
    /// Its configured `offset`, seconds.
    pub offset_s: f64,
    /// How many pulses old its newest sample may be.
    pub max_age_pulses: u8,
}

/// How the engine treats one refclock as a source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefclockSourceSettings {
    pub refid: [u8; 4],
    pub offset_s: f64,
    pub delay_s: f64,
    pub precision_s: f64,
    pub stratum: u8,
    pub prefer: bool,
    pub noselect: bool,
    pub trust: bool,
    pub require: bool,
    /// chrony `poll`: one filtered sample every 2^poll s.
    pub poll: i8,
    /// chrony `filter`, already shortened to what one poll brings.
    pub filter_length: u16,
    /// chrony `maxdispersion`, seconds.
    pub max_dispersion_s: Option<f64>,
    /// A PPS without `lock`: its samples only give the phase of the second, so
    /// they count only while the clock is synchronised within 0.5 s (chrony's rule).
    pub pulse_unlocked: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdjustSettings {
    pub backend: ClockBackendKind,
    /// Steps left in this boot's budget (policy/clock.toml), as the supervisor counts.
    pub steps_left: u32,
    /// Automatic steps are allowed until this CLOCK_BOOTTIME instant (ns since
    /// boot): a clock the adjuster's own steps cannot move.
    pub automatic_steps_until_boot_ns: i64,
    /// chrony's `maxslewrate`, ppm: the configured rate, never above the policy's
    /// (the adjuster holds it to its own limit whatever it is told).
    pub max_slew_rate_ppm: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlSettings {
    /// Callers whose uid is 0 or whose groups include `admin_gid` may change things;
    /// those in `read_gid` may read. Anyone else is refused.
    pub read_gid: Option<u32>,
    pub admin_gid: Option<u32>,
    /// The role of a client that passed mutual TLS on the TCP listener.
    pub tls_role: ControlRole,
    /// Where the Unix socket is, for the log.
    pub socket_path: String,
}

/// What an operator may do through the control plane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ControlRole {
    /// Neither group: every call is refused.
    None,
    #[default]
    Read,
    Admin,
}

/// Which clock the adjuster drives (ARCHITECTURE.md, "Keeping time").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClockBackendKind {
    /// Measure and serve, never adjust (like `chronyd -x`).
    None,
    /// CLOCK_REALTIME through clock_adjtime.
    System,
    /// A model clock in a file (`clock_model`): tests and demos.
    Simulated,
    /// A PTP hardware clock (`/dev/ptpN`).
    Phc,
}

/// A privileged resource handed over by the supervisor, with its descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resource {
    /// A bound UDP socket on which the engine serves NTP.
    /// Sockets of one address are bound with SO_REUSEPORT, one per serving thread;
    /// `thread` says which thread of the engine serves this one.
    NtpSocket { local: SocketAddr, thread: u16 },
    /// The simulated clock's model file: read-write for the adjuster, read-only
    /// for the others.
    ClockModel { writable: bool },
    /// The PTP hardware clock the adjuster disciplines: read-write for the
    /// adjuster, read-only for the engine (which reads its time).
    PhcDevice { writable: bool },
    /// The PHC of a network interface whose NIC stamps packets (`hwtimestamp`),
    /// read-only: the engine maps the NIC's timestamps onto the system clock by
    /// reading it. `receive`: the NIC stamps NTP requests too, not only answers;
    /// the compensations are `txcomp` and `rxcomp` in ns.
    NicClock { interface: String, if_index: u32, receive: bool, txcomp_ns: i64, rxcomp_ns: i64 },
    /// The datagram socket refclock number `refclock` receives SOCK samples on.
    SockSocket { refclock: u16 },
    /// The PTP hardware clock refclock number `refclock` reads (opened read-write:
    /// Linux ≥ 6.15 requires it for external timestamps).
    PhcRefclock { refclock: u16 },
    /// The PPS device (`/dev/ppsN`) refclock number `refclock` fetches pulses from.
    PpsRefclock { refclock: u16 },
    /// The control plane's listening Unix socket (gRPC, roles from peer credentials).
    ControlSocket,
    /// The control plane's listening TCP socket for gRPC over mutual TLS.
    ControlTlsSocket,
    /// The listening TCP socket for Prometheus scrapes (`/metrics`).
    MetricsSocket,
    /// A PEM file for the TLS listener, opened by the supervisor (the key may be
    /// readable by root only).
    TlsFile(TlsFile),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsFile {
    Certificate,
    PrivateKey,
    /// The CA that client certificates must chain to.
    ClientCa,
}

// ---------------------------------------------------------------------------
// Engine ↔ adjuster: the only way the packet-parsing process reaches the clock.
// ---------------------------------------------------------------------------

/// Engine → adjuster: bounded clock requests and nothing else.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EngineToAdjuster {
    Hello(Hello),
    ReadStatus,
    /// Correct this offset gradually (positive: the clock is behind), at the rate
    /// [`slew_rate_ppm`] gives; it replaces any slew in progress.
    Slew {
        offset_s: f64,
    },
    /// Set the clock's frequency correction.
    SetFrequency {
        ppm: f64,
    },
    /// Step by this offset; the adjuster allows it only inside its makestep window.
    Step {
        offset_s: f64,
    },
    SetLeap(KernelLeap),
}
channel!(EngineToAdjuster: Ntp -> Adjust);

/// The shortest slew, seconds. The adjuster slews by running the clock's frequency off
/// its correction and ends the slew on a timer (the kernel's adjtime slew has a
/// resolution of 1 µs, too coarse to correct sub-microsecond offsets): a slew of at
/// least a second keeps a timer's millisecond lateness below 0.1 % of the offset.
pub const MIN_SLEW_DURATION_S: f64 = 1.0;

/// The rate (ppm, unsigned) at which the adjuster slews `offset_s`: `max_rate_ppm`,
/// or slower so that the slew lasts [`MIN_SLEW_DURATION_S`]. The engine models the
/// slew's progress with the same rule.
pub fn slew_rate_ppm(offset_s: f64, max_rate_ppm: f64) -> f64 {
    (offset_s.abs() / MIN_SLEW_DURATION_S * 1e6).min(max_rate_ppm)
}

/// The most a clock's frequency is run off through ADJ_FREQUENCY, ppm (adjtimex
/// `MAXFREQ`): all a PHC has; the system clock goes beyond it with its tick.
pub const KERNEL_MAX_FREQUENCY_PPM: f64 = 500.0;

/// The fastest `backend` slews under a policy rate of `policy_ppm`: a PHC within
/// [`KERNEL_MAX_FREQUENCY_PPM`], the others at the policy's rate. The engine models
/// slews at this rate.
pub fn backend_slew_rate_ppm(backend: ClockBackendKind, policy_ppm: f64) -> f64 {
    match backend {
        ClockBackendKind::Phc => policy_ppm.min(KERNEL_MAX_FREQUENCY_PPM),
        ClockBackendKind::None | ClockBackendKind::System | ClockBackendKind::Simulated => policy_ppm,
    }
}

/// Adjuster → engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AdjusterToEngine {
    Hello(Hello),
    Status(ClockStatus),
    Refused { request: ClockRequestKind, reason: String },
}
// (An operator's `makestep` reaches the engine as `ClockStatus::operator_step_authorised`.)
channel!(AdjusterToEngine: Adjust -> Ntp);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClockRequestKind {
    Slew,
    SetFrequency,
    Step,
    SetLeap,
    MakeStep,
}

/// The leap second the kernel clock is armed to insert or delete at the next midnight
/// (adjtimex `STA_INS`/`STA_DEL`): a command, so it has no "unsynchronised", unlike
/// the sources' [`LeapIndicator`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KernelLeap {
    #[default]
    None,
    InsertSecond,
    DeleteSecond,
}

/// chrony's `leapsecmode` (chrony.conf(5)): what is done about an announced leap second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeapSecMode {
    /// The kernel inserts or deletes the second at midnight (`SetLeap`).
    #[default]
    System,
    /// The kernel is not told; the one-second offset that follows the leap is stepped
    /// at the first update after midnight, whatever `makestep` says.
    Step,
    /// The kernel is not told; the offset that follows is slewed (at `maxslewrate`).
    Slew,
    /// The leap is not acted upon; the offset that follows is corrected like any other.
    Ignore,
}

/// What the adjuster reports about the clock it drives: state, not deltas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClockStatus {
    pub backend: ClockBackendKind,
    pub frequency_ppm: f64,
    pub leap: KernelLeap,
    /// Steps still allowed in this boot.
    pub steps_left: u32,
    /// Whether automatic steps (makestep) are still allowed by the time window.
    pub automatic_steps_allowed: bool,
    /// An operator authorised one step (`stratactl makestep`): the next `Step` is
    /// allowed outside the window.
    pub operator_step_authorised: bool,
}

// ---------------------------------------------------------------------------
// Refclock reader ↔ engine
// ---------------------------------------------------------------------------

/// Refclock reader → engine: samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RefclockToEngine {
    Hello(Hello),
    Sample(RefclockSample),
}
channel!(RefclockToEngine: Refclock -> Ntp);

/// Engine → refclock reader: nothing yet but the handshake.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EngineToRefclock {
    Hello(Hello),
}
channel!(EngineToRefclock: Ntp -> Refclock);

/// One measurement of a reference clock against the system clock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefclockSample {
    /// Index of the refclock in the configuration.
    pub refclock: u16,
    /// System clock time of the sample, ns since the Unix epoch.
    pub system_time_ns: i64,
    /// Reference minus system clock, seconds.
    pub offset_s: f64,
    pub dispersion_s: f64,
}

// ---------------------------------------------------------------------------
// Control plane ↔ the others: queries and operator commands.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ControlToEngine {
    Hello(Hello),
    ReadStatus,
    /// The busiest clients of the client log (chronyc `clients`).
    ReadClients,
    /// Operator commands; each is answered with exactly one `Done`, in order.
    AddSource(AddSource),
    DeleteSource(SocketAddr),
    /// One source (or all with `None`) polled again or no longer.
    SetOnline {
        address: Option<SocketAddr>,
        online: bool,
    },
    Reselect,
    /// A run-time access rule in chrony's syntax without the verb ("10.0.0.0/8", "all").
    Access {
        allow: bool,
        rule: String,
    },
    /// The adjuster authorised one operator step: take it at the next estimate.
    StepAuthorised,
}

/// `stratactl add server`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddSource {
    pub address: SocketAddr,
    pub iburst: bool,
    pub prefer: bool,
    pub minpoll: Option<i8>,
    pub maxpoll: Option<i8>,
    pub xleave: bool,
}
channel!(ControlToEngine: Control -> Ntp);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EngineToControl {
    Hello(Hello),
    Status(Box<EngineStatus>),
    Clients(Vec<ClientActivity>),
    /// The answer to one operator command: what changed, or why nothing did.
    Done(Result<String, String>),
}

/// At most this many clients in one `Clients` message (it must fit one frame).
pub const MAX_CLIENTS_REPORTED: usize = 256;

/// One line of chronyc's `clients`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientActivity {
    pub address: std::net::IpAddr,
    pub ntp_requests: u32,
    /// Requests dropped by rate limiting.
    pub dropped: u32,
    /// Mean interval between requests, log2 seconds (chronyc `Int`), once known.
    pub interval_log2: Option<i8>,
    /// Mean interval between limited requests (chronyc `IntL`), once known.
    pub limited_interval_log2: Option<i8>,
    pub last_seen_s: Option<u32>,
}
channel!(EngineToControl: Ntp -> Control);

/// The engine's counters and view of its peers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineStatus {
    pub server: ServerStats,
    /// Clients in the client log, and the memory it holds (bounded by
    /// `client-log-limit`).
    pub clients_logged: u64,
    pub client_log_bytes: u64,
    pub clock: Option<ClockStatus>,
    pub refclock_samples: u64,
    pub tracking: TrackingStatus,
    /// At most [`MAX_SOURCES`].
    pub sources: Vec<SourceStatus>,
    /// The latest switches of the system peer, oldest first (at most [`MAX_FAILOVERS`]).
    pub failovers: Vec<Failover>,
    pub failovers_total: u64,
}

/// Sources the engine takes (configured plus added), so a status fits one frame.
pub const MAX_SOURCES: usize = 48;
pub const MAX_FAILOVERS: usize = 16;

/// chronyc `tracking`, from the engine's last selection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrackingStatus {
    /// The system peer: "IP:port" or a refclock's refid; empty when none.
    pub reference: String,
    pub reference_id: u32,
    pub stratum: u8,
    pub reference_time_unix_ns: i64,
    pub offset_s: f64,
    pub rms_offset_s: f64,
    /// The clock's own rate error (positive: it runs fast), chronyc's "Frequency":
    /// the negation of the correction every other `frequency_ppm` here means.
    pub rate_error_ppm: f64,
    pub skew_ppm: f64,
    pub root_delay_s: f64,
    pub root_dispersion_s: f64,
    pub leap: LeapIndicator,
    pub synchronised: bool,
}

/// One line of chronyc `sources` / `sourcestats` / `ntpdata`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub refclock: bool,
    pub name: String,
    /// chronyc's state character: `*` `+` `-` `?` `x` `~`, `o` when offline.
    pub state: char,
    pub stratum: u8,
    pub poll_log2: i8,
    pub reach: u8,
    pub last_sample_age_s: Option<f64>,
    pub offset_s: f64,
    pub jitter_s: f64,
    pub delay_s: f64,
    pub dispersion_s: f64,
    /// Samples in the regression (chronyc sourcestats' NP).
    pub samples: u32,
    pub last_offset_s: f64,
    pub root_delay_s: f64,
    pub root_dispersion_s: f64,
    pub reference_id: u32,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub kod_received: u64,
    pub prefer: bool,
    pub noselect: bool,
    pub online: bool,
    pub added: bool,
    /// The last sample came from an interleaved reply.
    pub interleaved: bool,
    /// T1 of the latest request was the kernel's transmit timestamp (else the clock
    /// read before the send).
    pub kernel_tx: bool,
    /// T4 of the latest reply was the kernel's receive timestamp.
    pub kernel_rx: bool,
}

/// A switch of the system peer (refclock ↔ NTP failover and back).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Failover {
    pub time_unix_ns: i64,
    pub from: String,
    pub to: String,
}

/// NTP server counters since the engine started (chronyc `serverstats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    pub received: u64,
    pub answered: u64,
    /// Not NTP, truncated, bad version, lying extension lengths.
    pub malformed: u64,
    /// Well-formed but not a client request (server, broadcast, control modes).
    pub not_client: u64,
    /// Refused by the access rules.
    pub denied: u64,
    /// Dropped by rate limiting (including those answered with a RATE kiss-o'-death).
    pub rate_limited: u64,
    pub kod_sent: u64,
    /// Replies the kernel would not send.
    pub send_failed: u64,
    /// Requests with the kernel's receive timestamp (the rest: the daemon's clock read).
    pub rx_kernel: u64,
    /// The kernel's transmit timestamps read back after the send.
    pub tx_kernel: u64,
    /// Requests stamped by the NIC (`hwtimestamp`; counted apart from `rx_kernel`).
    pub rx_hardware: u64,
    /// The NIC's transmit timestamps read back after the send.
    pub tx_hardware: u64,
    /// Answers in interleaved mode (carrying the previous answer's transmit time).
    pub interleaved: u64,
    /// Answers whose transmit time is kept for the client's next interleaved request.
    pub tx_timestamps_held: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ControlToAdjuster {
    Hello(Hello),
    ReadStatus,
    /// Operator-authorised step (`stratactl makestep`), checked against the policy.
    MakeStep,
}
channel!(ControlToAdjuster: Control -> Adjust);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AdjusterToControl {
    Hello(Hello),
    Status(ClockStatus),
    Refused { request: ClockRequestKind, reason: String },
}
channel!(AdjusterToControl: Adjust -> Control);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ControlToRefclock {
    Hello(Hello),
    ReadStatus,
}
channel!(ControlToRefclock: Control -> Refclock);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RefclockToControl {
    Hello(Hello),
    Status(RefclockStatus),
}
channel!(RefclockToControl: Refclock -> Control);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RefclockStatus {
    pub refclocks: u16,
    pub samples_sent: u64,
    /// Samples refused (wrong size, wrong magic, absurd values).
    pub samples_rejected: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame<M: Message>(msg: &M) -> Vec<u8> {
        let mut buf = [0u8; MAX_FRAME];
        encode(msg, &mut buf).unwrap().to_vec()
    }

    /// The generic handshake frame must decode as each enum's own `Hello`.
    fn hello_is_variant_zero<M: PeerMessage + PartialEq>() {
        let mut buf = [0u8; 64];
        let f = encode_hello(M::FROM, &mut buf).to_vec();
        let typed: M = decode(&f).unwrap();
        assert_eq!(frame(&typed), f, "{}", std::any::type_name::<M>());
        assert_eq!(decode_hello(&f, M::FROM).unwrap(), Hello::new(M::FROM));
    }

    #[test]
    fn every_channel_starts_with_a_decodable_hello() {
        hello_is_variant_zero::<EngineToAdjuster>();
        hello_is_variant_zero::<AdjusterToEngine>();
        hello_is_variant_zero::<RefclockToEngine>();
        hello_is_variant_zero::<EngineToRefclock>();
        hello_is_variant_zero::<ControlToEngine>();
        hello_is_variant_zero::<EngineToControl>();
        hello_is_variant_zero::<ControlToAdjuster>();
        hello_is_variant_zero::<AdjusterToControl>();
        hello_is_variant_zero::<ControlToRefclock>();
        hello_is_variant_zero::<RefclockToControl>();
        let sup = frame(&SupervisorToChild::Hello(Hello::new(Role::Supervisor)));
        assert_eq!(decode_hello(&sup, Role::Supervisor).unwrap().role, Role::Supervisor);
        let child = frame(&ChildToSupervisor::Hello(Hello::new(Role::Adjust)));
        assert_eq!(decode_hello(&child, Role::Adjust).unwrap().role, Role::Adjust);
    }

    #[test]
    fn hello_from_the_wrong_role_or_version_is_refused() {
        let f = frame(&EngineToAdjuster::Hello(Hello::new(Role::Ntp)));
        assert_eq!(
            decode_hello(&f, Role::Control),
            Err(FrameError::WrongRole { got: Role::Ntp, expected: Role::Control })
        );
        let mut old = f.clone();
        old[1] = 9; // version varint
        assert_eq!(decode_hello(&old, Role::Ntp), Err(FrameError::Version { got: 9 }));
        assert_eq!(decode_hello(&frame(&EngineToAdjuster::ReadStatus), Role::Ntp), Err(FrameError::NotHello));
    }

    #[test]
    fn the_largest_engine_status_fits_one_frame() {
        let name = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535".to_string();
        let source = SourceStatus {
            name: name.clone(),
            state: '*',
            last_sample_age_s: Some(f64::MAX),
            offset_s: f64::MAX,
            jitter_s: f64::MAX,
            delay_s: f64::MAX,
            dispersion_s: f64::MAX,
            samples: u32::MAX,
            last_offset_s: f64::MAX,
            root_delay_s: f64::MAX,
            root_dispersion_s: f64::MAX,
            reference_id: u32::MAX,
            packets_sent: u64::MAX,
            packets_received: u64::MAX,
            kod_received: u64::MAX,
            ..SourceStatus::default()
        };
        let failover = Failover { time_unix_ns: i64::MAX, from: name.clone(), to: name.clone() };
        let status = EngineStatus {
            tracking: TrackingStatus { reference: name, ..TrackingStatus::default() },
            sources: vec![source; MAX_SOURCES],
            failovers: vec![failover; MAX_FAILOVERS],
            failovers_total: u64::MAX,
            ..EngineStatus::default()
        };
        let bytes = frame(&EngineToControl::Status(Box::new(status)));
        assert!(bytes.len() <= MAX_FRAME, "{} bytes", bytes.len());
    }

    #[test]
    fn a_frame_round_trips_and_bad_frames_are_refused() {
        let msg = EngineToAdjuster::Slew { offset_s: -0.25 };
        let f = frame(&msg);
        assert_eq!(decode::<EngineToAdjuster>(&f).unwrap(), msg);
        assert!(matches!(decode::<EngineToAdjuster>(&f[..f.len() - 1]), Err(FrameError::Malformed(_))));
        let mut long = f.clone();
        long.push(0);
        assert_eq!(decode::<EngineToAdjuster>(&long), Err(FrameError::TrailingBytes(1)));
        assert_eq!(decode::<EngineToAdjuster>(&vec![0; MAX_FRAME + 1]), Err(FrameError::Oversized(MAX_FRAME + 1)));
        assert_eq!(decode::<EngineToAdjuster>(&[]), Err(FrameError::Empty));
        assert!(matches!(decode::<EngineToAdjuster>(&[200]), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn only_resources_and_peers_carry_descriptors() {
        assert!(SupervisorToChild::Peer { peer: Role::Ntp, link: 1 }.carries_fd());
        assert!(!SupervisorToChild::Sealed.carries_fd());
        assert!(!EngineToAdjuster::ReadStatus.carries_fd());
    }

    #[test]
    fn links_are_symmetric_and_the_adjuster_never_meets_the_refclock() {
        for role in Role::CHILDREN {
            for peer in role.peers() {
                assert!(peer.peers().any(|p| p == role));
            }
        }
        assert!(!Role::Adjust.peers().any(|p| p == Role::Refclock));
        assert_eq!(Role::Control.peers().count(), 3);
    }
}
