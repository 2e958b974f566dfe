//! strata's configuration: one TOML file, kebab-case keys, unknown keys are errors,
//! every error names the file, line and column and what is wrong.
//!
//! Values are checked while they are parsed (each has a type that refuses bad
//! input), so a range error points at the value itself.
#![forbid(unsafe_code)]

pub mod chrony;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use strata_proto::ipc::{ClockBackendKind, LeapSecMode, LogLevel, Role, SelectionSettings};
use toml::Spanned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}:{line}:{column}: {message}")]
    Invalid { file: PathBuf, line: usize, column: usize, message: String },
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    #[serde(default)]
    pub users: Users,
    #[serde(default)]
    pub clock: ClockConfig,
    #[serde(default)]
    pub server: ServerConfig,
    /// Upstream NTP servers (chrony's `server` lines), in order.
    #[serde(default)]
    pub upstream: Vec<Upstream>,
    /// chrony's `log` and `logdir`: statistics logs, one file per kind.
    #[serde(default)]
    pub logs: Option<LogsConfig>,
    /// Reference clocks (chrony's `refclock` lines), in order.
    #[serde(default)]
    pub refclock: Vec<Refclock>,
    #[serde(default)]
    pub control: ControlConfig,
}

/// The operators' side: the gRPC API (`stratactl`) and Prometheus metrics.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ControlConfig {
    /// The gRPC Unix socket; default `<runtime-dir>/control.sock`. Anyone may
    /// connect; what a caller may do follows from its uid and groups.
    pub socket: Option<PathBuf>,
    /// Members (primary or supplementary) may call the read-only API.
    pub read_group: String,
    /// Members, and root, may also change things (makestep, add/delete sources,
    /// online/offline, allow/deny).
    pub admin_group: String,
    /// `host:port` for Prometheus scrapes of `/metrics` (plain HTTP: bind it to
    /// a management address). Absent: no metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    /// gRPC over TCP with mutual TLS; absent: Unix socket only.
    pub tls: Option<ControlTls>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: None,
            read_group: "strata-read".into(),
            admin_group: "strata-admin".into(),
            metrics_listen: None,
            tls: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ControlTls {
    pub listen: SocketAddr,
    /// PEM files, opened by the supervisor (the key may be readable by root only).
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// Clients must present a certificate that chains to this CA.
    pub client_ca: PathBuf,
    /// What a client with a trusted certificate may do: `read` or `admin`.
    #[serde(default = "default_tls_role")]
    pub role: TlsRole,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsRole {
    Read,
    Admin,
}

fn default_tls_role() -> TlsRole {
    TlsRole::Read
}

impl Config {
    /// The control socket's path.
    pub fn control_socket(&self) -> PathBuf {
        self.control.socket.clone().unwrap_or_else(|| self.supervisor.runtime_dir.join("control.sock"))
    }
}

/// A reference clock, chrony's `refclock DRIVER PARAMETER [options]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Refclock {
    /// `"sock:/run/strata/gps0.sock"` (chrony's SOCK, as gpsd writes it) or
    /// `"shm:0"` (the NTP shared-memory segment of unit 0).
    pub driver: RefclockDriver,
    /// Reference id served while this refclock is selected (chrony `refid`).
    #[serde(default = "default_refid")]
    pub refid: String,
    /// Added to every sample, seconds (chrony `offset`).
    #[serde(default)]
    pub offset: f64,
    /// Assumed round-trip delay, seconds (chrony `delay`).
    #[serde(default = "default_refclock_delay")]
    pub delay: f64,
    /// Precision of a sample, seconds (chrony `precision`).
    #[serde(default = "default_refclock_precision")]
    pub precision: f64,
    /// The refclock's stratum (chrony `stratum`, 0 by default: the server is then 1).
    #[serde(default)]
    pub stratum: u8,
    /// chrony's `tai`: the PHC counts TAI; UTC = TAI − 37 s (the offset since 2017).
    #[serde(default)]
    pub tai: bool,
    #[serde(default)]
    pub prefer: bool,
    #[serde(default)]
    pub noselect: bool,
    #[serde(default)]
    pub trust: bool,
    #[serde(default)]
    pub require: bool,
    /// chrony `poll`: the median filter gives the source one sample every 2^poll s.
    #[serde(default = "default_refclock_poll")]
    pub poll: RefclockPoll,
    /// chrony `dpoll`: a PHC, SHM or PPS driver is read every 2^dpoll s.
    #[serde(default = "default_refclock_dpoll")]
    pub dpoll: RefclockPoll,
    /// chrony `filter`: the median filter's length (shortened to what one poll
    /// brings for a polled driver).
    #[serde(default = "default_refclock_filter")]
    pub filter: FilterLength,
    /// chrony `maxdispersion`, seconds: filtered samples with a larger dispersion
    /// are dropped. Absent: no limit.
    #[serde(default)]
    pub maxdispersion: Option<MaxDispersion>,
    /// chrony `lock REFID` (PPS only): number the pulses' seconds with the refclock
    /// of this refid. Without it the second comes from the system clock, which must
    /// then be synchronised to another source within 0.5 s.
    #[serde(default)]
    pub lock: Option<Spanned<String>>,
    /// chrony `maxlockage`: how many pulses old the locked refclock's sample may be.
    #[serde(default = "default_maxlockage")]
    pub maxlockage: MaxLockAge,
    /// chrony's PPS `:clear`: the clear edge marks the second, not the assert edge.
    #[serde(default)]
    pub clear: Option<Spanned<bool>>,
}

impl Refclock {
    /// The refid of a refclock that names none.
    pub fn default_refid() -> String {
        "GPS".into()
    }

    /// Whether a PPS refclock times the clear edge.
    pub fn clear_edge(&self) -> bool {
        self.clear.as_ref().is_some_and(|c| *c.get_ref())
    }
}

fn default_refclock_poll() -> RefclockPoll {
    RefclockPoll(4)
}
fn default_refclock_dpoll() -> RefclockPoll {
    RefclockPoll(0)
}
fn default_refclock_filter() -> FilterLength {
    FilterLength(64)
}
fn default_maxlockage() -> MaxLockAge {
    MaxLockAge(2)
}

/// chrony `maxdispersion`: a finite number of seconds above 0.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(try_from = "f64")]
pub struct MaxDispersion(pub f64);

impl TryFrom<f64> for MaxDispersion {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if v.is_finite() && v > 0.0 && v <= 16.0 {
            Ok(MaxDispersion(v))
        } else {
            Err(format!("a maximum dispersion must be above 0 and at most 16 seconds, not {v}"))
        }
    }
}

fn default_refid() -> String {
    Refclock::default_refid()
}
fn default_refclock_delay() -> f64 {
    1e-9
}
fn default_refclock_precision() -> f64 {
    1e-6
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum RefclockDriver {
    Sock(PathBuf),
    Shm(u8),
    /// A PTP hardware clock (`/dev/ptpN`), read against the system clock.
    Phc(PathBuf),
    /// An RFC 2783 PPS source (`/dev/ppsN`): the phase of the second only.
    Pps(PathBuf),
}

impl RefclockDriver {
    /// Drivers the reader polls every `dpoll` (SOCK samples arrive when gpsd sends them).
    pub fn is_polled(&self) -> bool {
        !matches!(self, RefclockDriver::Sock(_))
    }
}

impl TryFrom<String> for RefclockDriver {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("sock:") {
            if !Path::new(path).is_absolute() {
                return Err(format!("{path:?} must be an absolute path"));
            }
            return Ok(RefclockDriver::Sock(PathBuf::from(path)));
        }
        if let Some(path) = s.strip_prefix("phc:") {
            if !Path::new(path).is_absolute() {
                return Err(format!("{path:?} must be an absolute path"));
            }
            return Ok(RefclockDriver::Phc(PathBuf::from(path)));
        }
        if let Some(path) = s.strip_prefix("pps:") {
            if !Path::new(path).is_absolute() {
                return Err(format!("{path:?} must be an absolute path"));
            }
            return Ok(RefclockDriver::Pps(PathBuf::from(path)));
        }
        if let Some(unit) = s.strip_prefix("shm:") {
            return unit.parse().map(RefclockDriver::Shm).map_err(|_| format!("{unit:?} is not an SHM unit (0-255)"));
        }
        Err(format!(
            "unknown refclock driver {s:?}: expected \"sock:/PATH\", \"shm:UNIT\", \"phc:/dev/ptpN\" or \"pps:/dev/ppsN\""
        ))
    }
}

/// chrony's `logdir DIR` and `log measurements statistics tracking refclocks`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LogsConfig {
    pub dir: PathBuf,
    pub kinds: Vec<LogKind>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum LogKind {
    Measurements,
    Statistics,
    Tracking,
    /// Written once the refclock reader has refclocks.
    Refclocks,
}

/// One upstream NTP server, chrony's `server ADDRESS [options]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Upstream {
    /// `"192.0.2.1"`, `"[2001:db8::1]:123"`, `"ntp.example.org"`,
    /// `"ntp.example.org:1123"`. Names are resolved at start by an unprivileged
    /// helper process (the engine has no resolver under its sandbox).
    pub address: UpstreamAddress,
    /// chrony's `pool`: use several of the addresses the name resolves to.
    #[serde(default)]
    pub pool: bool,
    /// chrony's `maxsources` for a pool.
    #[serde(default = "default_maxsources")]
    pub maxsources: u8,
    #[serde(default)]
    pub iburst: bool,
    #[serde(default = "default_minpoll")]
    pub minpoll: PollLog2,
    #[serde(default = "default_maxpoll")]
    pub maxpoll: PollLog2,
    #[serde(default)]
    pub prefer: bool,
    #[serde(default)]
    pub noselect: bool,
    #[serde(default)]
    pub trust: bool,
    #[serde(default)]
    pub require: bool,
    /// chrony's `maxdelay`, seconds.
    #[serde(default = "default_maxdelay")]
    pub maxdelay: f64,
    /// chrony's `version`: the NTP version of our requests.
    #[serde(default = "default_version")]
    pub version: NtpVersion,
    /// chrony's `xleave`: interleaved mode, so samples carry the server's kernel
    /// transmit timestamp (RFC 9769).
    #[serde(default)]
    pub xleave: bool,
}

fn default_version() -> NtpVersion {
    NtpVersion(4)
}

fn default_maxsources() -> u8 {
    4
}

/// An upstream's address as written: an IP address (port 123 unless given) or a
/// host name to resolve.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum UpstreamAddress {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl TryFrom<String> for UpstreamAddress {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(UpstreamAddress::Ip(addr));
        }
        if let Ok(ip) = s.parse::<std::net::IpAddr>() {
            return Ok(UpstreamAddress::Ip(SocketAddr::new(ip, 123)));
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().map_err(|_| format!("bad port in {s:?}"))?),
            None => (s.as_str(), 123),
        };
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
            });
        if !valid {
            return Err(format!("{s:?} is neither an IP address nor a host name"));
        }
        Ok(UpstreamAddress::Name { host: host.to_ascii_lowercase(), port })
    }
}

impl std::fmt::Display for UpstreamAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamAddress::Ip(addr) => write!(f, "{addr}"),
            UpstreamAddress::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

fn default_minpoll() -> PollLog2 {
    PollLog2(6)
}
fn default_maxpoll() -> PollLog2 {
    PollLog2(10)
}
fn default_maxdelay() -> f64 {
    3.0
}

/// chrony's `makestep threshold limit`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MakeStep {
    /// Step when the offset is larger than this, seconds.
    pub threshold: f64,
    /// ...during the first `limit` clock updates; negative: always.
    pub limit: i32,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct SupervisorConfig {
    /// Where the supervisor keeps `status.json` (and, later, the control socket).
    pub runtime_dir: PathBuf,
    pub log_level: Level,
    pub restart: RestartPolicy,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            runtime_dir: PathBuf::from("/run/strata"),
            log_level: Level::Info,
            restart: RestartPolicy::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<Level> for LogLevel {
    fn from(l: Level) -> LogLevel {
        match l {
            Level::Error => LogLevel::Error,
            Level::Warn => LogLevel::Warn,
            Level::Info => LogLevel::Info,
            Level::Debug => LogLevel::Debug,
            Level::Trace => LogLevel::Trace,
        }
    }
}

/// How the supervisor re-spawns a child that died. One that had been ready for
/// `probation-ms` was healthy: it is re-spawned at once and its back-off starts
/// over. One that dies again during its probation is in a crash loop: it waits a
/// back-off that doubles with each such death, and after `budget` of them inside
/// `window-s` it stays down with an alarm.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RestartPolicy {
    pub backoff_initial_ms: Millis,
    pub backoff_max_ms: Millis,
    pub budget: Budget,
    pub window_s: Seconds,
    pub probation_ms: Millis,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            backoff_initial_ms: Millis(50),
            backoff_max_ms: Millis(10_000),
            budget: Budget(10),
            window_s: Seconds(60),
            // Long against a start (tens of ms from exec to ready), short against
            // the seconds a healthy process serves between two kills.
            probation_ms: Millis(2_000),
        }
    }
}

impl RestartPolicy {
    /// Delay before the `n`-th restart (1-based) of a crash loop.
    pub fn backoff(&self, n: u32) -> Duration {
        let initial = u64::from(self.backoff_initial_ms.0);
        let ms = initial.saturating_mul(1u64 << n.saturating_sub(1).min(30));
        Duration::from_millis(ms.min(u64::from(self.backoff_max_ms.0)))
    }

    pub fn window(&self) -> Duration {
        Duration::from_secs(u64::from(self.window_s.0))
    }

    pub fn probation(&self) -> Duration {
        Duration::from_millis(u64::from(self.probation_ms.0))
    }
}

/// A number checked against its range while it is parsed, so that the error
/// points at the value: `bounded!(Name, min, max, "what")` (a u32) or
/// `bounded!(Name: i8, min, max, "what")`.
macro_rules! bounded {
    ($name:ident, $min:expr, $max:expr, $what:literal) => {
        bounded!($name: u32, $min, $max, $what);
    };
    ($name:ident: $ty:ty, $min:expr, $max:expr, $what:literal) => {
        #[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
        #[serde(try_from = "i64")]
        pub struct $name(pub $ty);
        impl TryFrom<i64> for $name {
            type Error = String;
            fn try_from(v: i64) -> Result<Self, String> {
                if (i64::from($min)..=i64::from($max)).contains(&v) {
                    Ok($name(v as $ty))
                } else {
                    Err(format!("{} must be between {} and {}, not {v}", $what, $min, $max))
                }
            }
        }
    };
}
/// A float setting within `[min, max]`, checked while parsing, so that an error
/// points at the value: `bounded_float!(Name, min, max, "what")`.
macro_rules! bounded_float {
    ($name:ident, $min:expr, $max:expr, $what:literal) => {
        #[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
        #[serde(try_from = "f64")]
        pub struct $name(pub f64);
        impl TryFrom<f64> for $name {
            type Error = String;
            fn try_from(v: f64) -> Result<Self, String> {
                if ($min..=$max).contains(&v) {
                    Ok($name(v))
                } else {
                    Err(format!("{} must be between {} and {}, not {v}", $what, $min, $max))
                }
            }
        }
    };
}
bounded_float!(DistanceSeconds, 0.0, 1000.0, "a distance in seconds");
bounded_float!(CombineLimit, 0.0, 1e6, "a combine limit");
bounded_float!(SkewPpm, 1e-6, 1e9, "a skew in ppm");
bounded_float!(SlewRatePpm, 1.0, 999_999.0, "a slew rate in ppm");
bounded!(SampleCount: u8, 3, 64, "a number of regression samples");
bounded!(Millis, 0, 3_600_000, "a delay in milliseconds");
bounded!(Seconds, 1, 86_400, "a window in seconds");
bounded!(Budget, 0, 1_000_000, "a restart budget");

/// The user each child runs as (ignored in development mode).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Users {
    pub ntp: String,
    pub refclock: String,
    pub adjust: String,
    pub control: String,
}

impl Default for Users {
    fn default() -> Self {
        Users {
            ntp: "strata-ntp".into(),
            refclock: "strata-refclock".into(),
            adjust: "strata-adjust".into(),
            control: "strata-control".into(),
        }
    }
}

impl Users {
    pub fn of(&self, role: Role) -> &str {
        match role {
            Role::Ntp => &self.ntp,
            Role::Refclock => &self.refclock,
            Role::Adjust => &self.adjust,
            Role::Control => &self.control,
            Role::Supervisor => "root",
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClockConfig {
    /// `system`, `none` (serve and measure, never adjust, like `chronyd -x`) or
    /// `simulated:/PATH` (a model clock in a file, for tests and demos).
    pub backend: ClockBackend,
    /// chrony's `makestep`; absent: never step (only slew).
    #[serde(default)]
    pub makestep: Option<MakeStep>,
    /// chrony's `minsources`.
    #[serde(default = "default_minsources")]
    pub minsources: u8,
    /// chrony's `driftfile`: where the clock's frequency is kept across restarts.
    #[serde(default)]
    pub driftfile: Option<PathBuf>,
    /// chrony's `leapsecmode`: `system` (the kernel inserts or deletes the second),
    /// `step`, `slew` or `ignore`.
    #[serde(default)]
    pub leapsecmode: LeapSecMode,
    /// chrony's `maxslewrate`, ppm; absent: the adjuster's policy's (83 333), which
    /// also caps it.
    #[serde(default)]
    pub maxslewrate: Option<SlewRatePpm>,
    /// chrony's selection directives, seconds: `maxdistance` (3), `maxjitter` (1),
    /// `reselectdist` (100 µs), `stratumweight` (1 ms); and `combinelimit` (3).
    #[serde(default = "default_maxdistance")]
    pub maxdistance: DistanceSeconds,
    #[serde(default = "default_maxjitter")]
    pub maxjitter: DistanceSeconds,
    #[serde(default = "default_reselectdist")]
    pub reselectdist: DistanceSeconds,
    #[serde(default = "default_stratumweight")]
    pub stratumweight: DistanceSeconds,
    #[serde(default = "default_combinelimit")]
    pub combinelimit: CombineLimit,
    /// chrony's `maxupdateskew`, ppm (1000): a frequency known worse is not used.
    #[serde(default = "default_maxupdateskew")]
    pub maxupdateskew: SkewPpm,
    /// chrony's `minsamples` (6) and `maxsamples` (64): each source's regression.
    #[serde(default = "default_minsamples")]
    pub minsamples: SampleCount,
    #[serde(default = "default_maxsamples")]
    pub maxsamples: SampleCount,
}

fn default_maxdistance() -> DistanceSeconds {
    DistanceSeconds(SelectionSettings::default().max_distance_s)
}
fn default_maxjitter() -> DistanceSeconds {
    DistanceSeconds(SelectionSettings::default().max_jitter_s)
}
fn default_reselectdist() -> DistanceSeconds {
    DistanceSeconds(SelectionSettings::default().reselect_distance_s)
}
fn default_stratumweight() -> DistanceSeconds {
    DistanceSeconds(SelectionSettings::default().stratum_weight_s)
}
fn default_combinelimit() -> CombineLimit {
    CombineLimit(SelectionSettings::default().combine_limit)
}
fn default_maxupdateskew() -> SkewPpm {
    SkewPpm(SelectionSettings::default().max_update_skew_ppm)
}
fn default_minsamples() -> SampleCount {
    SampleCount(SelectionSettings::default().min_samples)
}
fn default_maxsamples() -> SampleCount {
    SampleCount(SelectionSettings::default().max_samples)
}

impl ClockConfig {
    /// What the engine is told of the selection and regression directives.
    pub fn selection(&self) -> SelectionSettings {
        SelectionSettings {
            max_distance_s: self.maxdistance.0,
            max_jitter_s: self.maxjitter.0,
            combine_limit: self.combinelimit.0,
            reselect_distance_s: self.reselectdist.0,
            stratum_weight_s: self.stratumweight.0,
            max_update_skew_ppm: self.maxupdateskew.0,
            min_samples: self.minsamples.0.min(self.maxsamples.0),
            max_samples: self.maxsamples.0,
        }
    }
}

fn default_minsources() -> u8 {
    1
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            backend: ClockBackend(ClockBackendKind::System, None),
            makestep: None,
            minsources: 1,
            driftfile: None,
            leapsecmode: LeapSecMode::System,
            maxslewrate: None,
            maxdistance: default_maxdistance(),
            maxjitter: default_maxjitter(),
            reselectdist: default_reselectdist(),
            stratumweight: default_stratumweight(),
            combinelimit: default_combinelimit(),
            maxupdateskew: default_maxupdateskew(),
            minsamples: default_minsamples(),
            maxsamples: default_maxsamples(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct ClockBackend(pub ClockBackendKind, pub Option<PathBuf>);

impl ClockBackend {
    /// The model file of a `simulated:PATH` backend.
    pub fn model_path(&self) -> Option<&Path> {
        self.1.as_deref().filter(|_| self.0 == ClockBackendKind::Simulated)
    }

    /// The device of a `phc:/dev/ptpN` backend.
    pub fn phc_path(&self) -> Option<&Path> {
        self.1.as_deref().filter(|_| self.0 == ClockBackendKind::Phc)
    }
}

impl TryFrom<String> for ClockBackend {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "none" => Ok(ClockBackend(ClockBackendKind::None, None)),
            "system" => Ok(ClockBackend(ClockBackendKind::System, None)),
            other => {
                let (kind, path) = if let Some(path) = other.strip_prefix("simulated:") {
                    (ClockBackendKind::Simulated, path)
                } else if let Some(path) = other.strip_prefix("phc:") {
                    (ClockBackendKind::Phc, path)
                } else {
                    return Err(format!(
                        "unknown clock backend {other:?}: expected \"system\", \"none\", \"phc:/dev/ptpN\" \
                         or \"simulated:/PATH\""
                    ));
                };
                if !Path::new(path).is_absolute() {
                    return Err(format!("{path:?} must be an absolute path"));
                }
                Ok(ClockBackend(kind, Some(PathBuf::from(path))))
            }
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ServerConfig {
    /// Addresses the supervisor binds and hands to the engine.
    pub listen: Vec<SocketAddr>,
    /// Serving threads in the engine; each address gets one SO_REUSEPORT socket per
    /// thread. Default: one per CPU.
    pub threads: Option<Threads>,
    /// chrony's `local stratum N`.
    pub local_stratum: Option<Stratum>,
    /// chrony's `allow`/`deny` lines, in order, e.g. `["allow 192.168.0.0/16",
    /// "deny 192.168.5.0/24"]`. None at all: no client is answered (as chrony).
    pub access: Vec<Spanned<String>>,
    /// chrony's `ratelimit`; absent: no rate limiting.
    pub ratelimit: Option<RateLimitConfig>,
    /// chrony's `clientloglimit`, bytes.
    pub client_log_limit: ClientLogLimit,
    /// Receive buffer of each NTP socket, bytes. A burst of requests waits here
    /// while a serving thread is off the CPU; the kernel's default (~200 KiB, a
    /// few hundred requests) overflows within a millisecond at 200k requests/s.
    pub receive_buffer: ReceiveBuffer,
    /// Read the kernel's transmit timestamp of every answer back from the socket's
    /// error queue, for interleaved mode (off: the daemon's clock read before the
    /// send is the transmit time it hands out), and of every request to an upstream
    /// (its T1). On by default.
    pub kernel_tx_timestamps: bool,
    /// chrony's `hwtimestamp`: interfaces whose NIC stamps packets in hardware.
    pub hwtimestamp: Vec<HwTimestamp>,
}

/// chrony's `hwtimestamp`: the supervisor turns on hardware timestamping of the
/// interface (SIOCSHWTSTAMP needs CAP_NET_ADMIN, which the engine never has) and
/// the engine maps the NIC's timestamps to the system clock through its PHC.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HwTimestamp {
    /// An interface name, or `*`: every other interface whose NIC can.
    pub interface: Spanned<InterfaceName>,
    /// Which received packets the NIC stamps (chrony's `rxfilter`).
    #[serde(default)]
    pub rxfilter: RxFilter,
    /// Seconds added to each hardware transmit timestamp: from the NIC's stamp to
    /// the packet on the wire (chrony's `txcomp`).
    #[serde(default)]
    pub txcomp: Compensation,
    /// Seconds subtracted from each hardware receive timestamp (chrony's `rxcomp`).
    #[serde(default)]
    pub rxcomp: Compensation,
}

/// A network interface's name as the kernel takes it (at most 15 bytes, no `/`,
/// no white space), or `*`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct InterfaceName(pub String);

impl TryFrom<String> for InterfaceName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        let valid = name == "*"
            || (!name.is_empty()
                && name.len() < 16
                && name != "."
                && name != ".."
                && !name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace() || c.is_control()));
        if valid { Ok(InterfaceName(name)) } else { Err(format!("{name:?} is not an interface name (or `*`)")) }
    }
}

/// chrony's `rxfilter`: `any` (NTP packets if the NIC can pick them out, else
/// all), `all`, `ntp`, `ptp` (chrony's choice for NICs that stamp only PTP, whose
/// NTP answers then carry software receive times) or `none` (transmit only).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RxFilter {
    #[default]
    Any,
    All,
    Ntp,
    Ptp,
    None,
}

bounded_float!(Compensation, -0.001, 0.001, "a timestamp compensation in seconds");

impl Default for Compensation {
    fn default() -> Self {
        Compensation(0.0)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec!["0.0.0.0:123".parse().unwrap(), "[::]:123".parse().unwrap()],
            threads: None,
            local_stratum: None,
            access: Vec::new(),
            ratelimit: None,
            client_log_limit: ClientLogLimit(524_288),
            receive_buffer: ReceiveBuffer(4 << 20),
            kernel_tx_timestamps: true,
            hwtimestamp: Vec::new(),
        }
    }
}

impl ServerConfig {
    /// The `access` rules as written.
    pub fn access_rules(&self) -> Vec<String> {
        self.access.iter().map(|r| r.get_ref().clone()).collect()
    }

    pub fn threads(&self) -> u16 {
        self.threads
            .map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(64) as u16), |t| t.0 as u16)
    }
}

/// chrony's `ratelimit`, with its defaults and ranges (chrony.conf(5)).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RateLimitConfig {
    /// Minimum mean interval between responses, log2 seconds.
    pub interval: RateInterval,
    /// Responses allowed in a burst above the interval.
    pub burst: Burst,
    /// 1 in 2^leak limited requests is answered anyway, so that a spoofer cannot
    /// silence a real client.
    pub leak: Leak,
    /// strata's addition: answer 1 in 2^kod limited requests with a RATE
    /// kiss-o'-death instead of silence. Absent: never.
    pub kod: Option<Leak>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig { interval: RateInterval(3), burst: Burst(8), leak: Leak(2), kod: None }
    }
}

bounded!(RateInterval: i8, -19, 12, "a rate-limit interval (log2 seconds)");
// A poll interval as a power of two seconds (chrony: -6 ..= 24).
bounded!(PollLog2: i8, -6, 24, "a poll interval (log2 seconds)");

bounded!(Threads, 1, 64, "a number of serving threads");
bounded!(NtpVersion, 1, 4, "an NTP version");
bounded!(ReceiveBuffer, 65_536, 268_435_456, "a receive buffer in bytes");
bounded!(Burst, 1, 255, "a burst");
bounded!(Leak, 1, 4, "a leak (log2)");
bounded!(ClientLogLimit, 4096, 2_147_483_648i64, "a client log limit in bytes");

bounded!(Stratum, 1, 15, "a stratum");

// chrony's refclock `poll` and `dpoll`: powers of two seconds.
bounded!(RefclockPoll: i8, -6, 12, "a refclock poll interval (log2 seconds)");
bounded!(FilterLength: u16, 1, 1024, "a median filter length");
bounded!(MaxLockAge: u8, 1, 64, "a lock age in pulses");

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: path.to_owned(), source })?;
        Config::from_str(&text, path)
    }

    /// Parse `text`; `file` names it in errors.
    pub fn from_str(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let invalid = |offset: usize, message: String| {
            let (line, column) = line_column(text, offset);
            ConfigError::Invalid { file: file.to_owned(), line, column, message }
        };
        let config: Config = toml::from_str(text)
            .map_err(|e| invalid(e.span().map_or(0, |s| s.start), e.message().trim().to_string()))?;
        // The access rules are checked here, not only in the engine, so that the
        // error points at the word in the file.
        if let Err(e) = strata_proto::access::AccessList::parse(&config.server.access_rules()) {
            let rule = &config.server.access[e.index];
            // The span starts at the opening quote of the string.
            return Err(invalid(rule.span().start + 1 + e.offset, format!("access rule: {}", e.kind)));
        }
        if let Some((offset, message)) = check_refclocks(&config.refclock) {
            return Err(invalid(offset, message));
        }
        for (i, hw) in config.server.hwtimestamp.iter().enumerate() {
            let name = hw.interface.get_ref();
            if config.server.hwtimestamp[..i].iter().any(|earlier| earlier.interface.get_ref() == name) {
                return Err(invalid(hw.interface.span().start, format!("hwtimestamp: {:?} is named twice", name.0)));
            }
        }
        Ok(config)
    }
}

/// The refclock options that depend on the driver or on another refclock: the
/// byte offset of the offending value and what is wrong.
fn check_refclocks(refclocks: &[Refclock]) -> Option<(usize, String)> {
    for r in refclocks {
        let pps = matches!(r.driver, RefclockDriver::Pps(_));
        if let Some(clear) = &r.clear
            && !pps
        {
            return Some((clear.span().start, "`clear` is an option of PPS refclocks".into()));
        }
        let Some(lock) = &r.lock else { continue };
        let refid = lock.get_ref();
        if !pps {
            return Some((lock.span().start, "`lock` is an option of PPS refclocks".into()));
        }
        // The seconds must come from a refclock that knows them: not a PPS.
        let locked = refclocks.iter().find(|o| !matches!(o.driver, RefclockDriver::Pps(_)) && &o.refid == refid);
        if locked.is_none() {
            return Some((lock.span().start + 1, format!("`lock`: no SOCK, SHM or PHC refclock has refid {refid:?}")));
        }
    }
    None
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_str(text, Path::new("t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.users.adjust, "strata-adjust");
        assert_eq!(c.clock.backend.0, ClockBackendKind::System);
        assert_eq!(c.supervisor.restart.budget.0, 10);
    }

    #[test]
    fn an_unknown_key_names_its_line_and_column() {
        let err = parse("[server]\nlisten = []\n  bogus = 1\n").unwrap_err();
        assert!(err.starts_with("t.toml:3:3: unknown field `bogus`"), "{err}");
    }

    #[test]
    fn a_bad_value_points_at_the_value() {
        let err = parse("[clock]\nbackend = \"atomic\"\n").unwrap_err();
        assert!(err.starts_with("t.toml:2:11: unknown clock backend \"atomic\""), "{err}");
        let err = parse("[server]\nlocal-stratum = 16\n").unwrap_err();
        assert_eq!(err, "t.toml:2:17: a stratum must be between 1 and 15, not 16");
        let err = parse("[server]\nlisten = [\"127.0.0.1\"]\n").unwrap_err();
        assert!(err.starts_with("t.toml:2:11:"), "{err}");
    }

    #[test]
    fn hwtimestamp_names_interfaces_and_checks_its_options() {
        let c = parse(
            "[server]\nhwtimestamp = [{ interface = \"eth0\", rxfilter = \"ntp\", txcomp = 1.5e-7 }, \
             { interface = \"*\" }]\n",
        )
        .unwrap();
        let hw = &c.server.hwtimestamp;
        assert_eq!(
            (hw[0].interface.get_ref().0.as_str(), hw[0].rxfilter, hw[0].txcomp.0),
            ("eth0", RxFilter::Ntp, 1.5e-7)
        );
        assert_eq!((hw[1].interface.get_ref().0.as_str(), hw[1].rxfilter, hw[1].rxcomp.0), ("*", RxFilter::Any, 0.0));
        let err = parse("[server]\nhwtimestamp = [{ interface = \"eth0/1\" }]\n").unwrap_err();
        assert!(err.starts_with("t.toml:2:30: \"eth0/1\" is not an interface name"), "{err}");
        let err = parse("[server]\nhwtimestamp = [{ interface = \"eth0\", rxfilter = \"udp\" }]\n").unwrap_err();
        assert!(err.starts_with("t.toml:2:49: unknown variant `udp`"), "{err}");
        let err = parse("[server]\nhwtimestamp = [{ interface = \"eth0\", txcomp = 0.5 }]\n").unwrap_err();
        assert!(err.contains("a timestamp compensation in seconds must be between"), "{err}");
        let err = parse("[server]\nhwtimestamp = [{ interface = \"eth0\" }, { interface = \"eth0\" }]\n").unwrap_err();
        assert_eq!(err, "t.toml:2:54: hwtimestamp: \"eth0\" is named twice");
    }

    #[test]
    fn selection_directives_have_chronys_defaults_and_ranges() {
        let c = parse("[clock]\nbackend = \"none\"\n").unwrap();
        assert_eq!(c.clock.selection(), SelectionSettings::default());
        let c = parse("[clock]\nbackend = \"none\"\nmaxdistance = 1\ncombinelimit = 0\nmaxsamples = 16\n").unwrap();
        let s = c.clock.selection();
        assert_eq!((s.max_distance_s, s.combine_limit, s.max_samples, s.min_samples), (1.0, 0.0, 16, 6));
        // minsamples above maxsamples is held to it.
        let c = parse("[clock]\nbackend = \"none\"\nminsamples = 32\nmaxsamples = 8\n").unwrap();
        assert_eq!(c.clock.selection().min_samples, 8);
        let err = parse("[clock]\nbackend = \"none\"\nmaxjitter = -1\n").unwrap_err();
        assert_eq!(err, "t.toml:3:13: a distance in seconds must be between 0 and 1000, not -1");
        let err = parse("[clock]\nbackend = \"none\"\nmaxsamples = 2\n").unwrap_err();
        assert!(err.starts_with("t.toml:3:14: a number of regression samples must be between 3 and 64"), "{err}");
    }

    #[test]
    fn a_bad_access_rule_points_at_the_bad_word() {
        let err = parse("[server]\naccess = [\"allow 10.0.0.0/8\", \"deny 192.168.300.0/24\"]\n").unwrap_err();
        assert!(err.starts_with("t.toml:2:37: access rule: `192.168.300.0`"), "{err}");
        let err = parse("[server]\naccess = [\"permit 10.0.0.0/8\"]\n").unwrap_err();
        assert!(err.starts_with("t.toml:2:12: access rule:"), "{err}");
        assert_eq!(parse("[server]\naccess = [\"allow 10.0.0.0/8\", \"deny all\"]\n").unwrap().server.access.len(), 2);
    }

    #[test]
    fn upstream_addresses_are_ips_or_host_names() {
        let c = parse(
            "[[upstream]]\naddress = \"192.0.2.1\"\n[[upstream]]\naddress = \"[2001:db8::1]:1123\"\n\
             [[upstream]]\naddress = \"Pool.NTP.org\"\npool = true\n",
        )
        .unwrap();
        assert_eq!(c.upstream[0].address, UpstreamAddress::Ip("192.0.2.1:123".parse().unwrap()));
        assert_eq!(c.upstream[1].address, UpstreamAddress::Ip("[2001:db8::1]:1123".parse().unwrap()));
        assert_eq!(c.upstream[2].address, UpstreamAddress::Name { host: "pool.ntp.org".into(), port: 123 });
        assert_eq!(c.upstream[2].maxsources, 4);
        let err = parse("[[upstream]]\naddress = \"bad host!\"\n").unwrap_err();
        assert!(err.starts_with("t.toml:2:11: \"bad host!\" is neither"), "{err}");
    }

    #[test]
    fn the_seeds_refclock_is_accepted_in_tomls_form() {
        // `refclock PHC /dev/ptp0 poll 3 dpoll -2 offset 0 stratum 1 precision 1e-9 prefer`
        let c = parse(
            "[[refclock]]\ndriver = \"phc:/dev/ptp0\"\npoll = 3\ndpoll = -2\noffset = 0.0\nstratum = 1\n\
             precision = 1e-9\nprefer = true\n",
        )
        .unwrap();
        let r = &c.refclock[0];
        assert_eq!(
            (r.poll, r.dpoll, r.filter, r.maxdispersion),
            (RefclockPoll(3), RefclockPoll(-2), FilterLength(64), None)
        );
        assert!(r.driver.is_polled() && r.prefer);
        // chrony's defaults.
        let c = parse("[[refclock]]\ndriver = \"sock:/run/gps.sock\"\n").unwrap();
        assert_eq!(
            (c.refclock[0].poll, c.refclock[0].dpoll, c.refclock[0].maxlockage),
            (RefclockPoll(4), RefclockPoll(0), MaxLockAge(2))
        );
    }

    #[test]
    fn refclock_options_out_of_range_point_at_their_value() {
        let head = "[[refclock]]\ndriver = \"shm:0\"\n";
        let err = |tail: &str| parse(&format!("{head}{tail}")).unwrap_err();
        assert_eq!(
            err("poll = 13\n"),
            "t.toml:3:8: a refclock poll interval (log2 seconds) must be between -6 and 12, not 13"
        );
        assert_eq!(
            err("dpoll = -7\n"),
            "t.toml:3:9: a refclock poll interval (log2 seconds) must be between -6 and 12, not -7"
        );
        assert_eq!(err("filter = 0\n"), "t.toml:3:10: a median filter length must be between 1 and 1024, not 0");
        assert!(err("maxdispersion = -1.0\n").starts_with("t.toml:3:17: a maximum dispersion must be above 0"));
        assert!(err("maxdispersion = nan\n").starts_with("t.toml:3:17:"));
        assert_eq!(err("maxlockage = 0\n"), "t.toml:3:14: a lock age in pulses must be between 1 and 64, not 0");
        assert_eq!(err("clear = true\n"), "t.toml:3:9: `clear` is an option of PPS refclocks");
        assert_eq!(err("lock = \"GPS\"\n"), "t.toml:3:8: `lock` is an option of PPS refclocks");
    }

    #[test]
    fn a_pps_refclock_locks_to_another_refclocks_refid() {
        let nmea = "[[refclock]]\ndriver = \"shm:0\"\nrefid = \"NMEA\"\nnoselect = true\n";
        let pps = "[[refclock]]\ndriver = \"pps:/dev/pps0\"\nrefid = \"PPS\"\nlock = \"NMEA\"\nclear = true\n";
        let c = parse(&format!("{nmea}{pps}")).unwrap();
        assert_eq!(c.refclock[1].driver, RefclockDriver::Pps("/dev/pps0".into()));
        assert_eq!(c.refclock[1].lock.as_ref().unwrap().get_ref(), "NMEA");
        assert!(c.refclock[1].clear_edge() && !c.refclock[0].clear_edge());
        // Without the NMEA refclock there is nothing to lock to.
        assert_eq!(parse(pps).unwrap_err(), "t.toml:4:9: `lock`: no SOCK, SHM or PHC refclock has refid \"NMEA\"");
        let err = parse("[[refclock]]\ndriver = \"pps:dev/pps0\"\n").unwrap_err();
        assert!(err.starts_with("t.toml:2:10: \"dev/pps0\" must be an absolute path"), "{err}");
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let p = RestartPolicy {
            backoff_initial_ms: Millis(100),
            backoff_max_ms: Millis(1000),
            budget: Budget(5),
            window_s: Seconds(60),
            probation_ms: Millis(2000),
        };
        let ms: Vec<u128> = (1..=6).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn the_shipped_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        let mut seen = 0;
        for sub in ["examples", "config"] {
            for entry in std::fs::read_dir(dir.join(sub)).into_iter().flatten().flatten() {
                if entry.path().extension().is_some_and(|e| e == "toml") {
                    Config::from_file(&entry.path()).unwrap();
                    seen += 1;
                }
            }
        }
        assert!(seen >= 1, "no shipped config found under deploy/");
    }
}
