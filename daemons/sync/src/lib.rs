//! strata's time-keeping core, sans I/O: what a measurement says, which sources to
//! believe, and how to steer the clock. Nothing here reads a clock, a socket or a
//! file: time is always an argument and every decision is a returned value, so the
//! same code runs in the engine, in `cargo xtask sim` and in the tests.
//!
//! Conventions:
//! - [`LocalTime`]: a reading of the clock being disciplined, ns since the Unix epoch.
//! - offsets are `source − local clock` in seconds: positive means the local clock is
//!   behind (chrony's sign convention for `chronyc sourcestats`' Offset is the
//!   opposite; strata's API states its sign in every name and doc).
//! - durations and error bounds are seconds as `f64`, named `*_s`; frequencies are ppm.
#![forbid(unsafe_code)]

pub mod discipline;
pub mod filter;
pub mod refclock;
pub mod regression;
pub mod selection;
pub mod serving;
pub mod source;
pub mod timekeeper;

use strata_proto::ntp::LeapIndicator;

/// A reading of the local (disciplined) clock: ns since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalTime(pub i64);

impl LocalTime {
    /// Seconds from `earlier` to `self` (negative if `earlier` is later).
    pub fn seconds_since(self, earlier: LocalTime) -> f64 {
        (self.0 - earlier.0) as f64 * 1e-9
    }

    /// `self` moved by `seconds`.
    pub fn add_seconds(self, seconds: f64) -> LocalTime {
        LocalTime(self.0 + (seconds * 1e9).round() as i64)
    }
}

/// A reading of a monotonic clock (the driver's `CLOCK_MONOTONIC`, the simulator's
/// true time): ns from an arbitrary origin. Timeouts and ages are measured on it, so
/// that a step of the disciplined clock cannot stretch or shorten them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Monotonic(pub i64);

impl Monotonic {
    /// Seconds from `earlier` to `self`.
    pub fn seconds_since(self, earlier: Monotonic) -> f64 {
        (self.0 - earlier.0) as f64 * 1e-9
    }

    /// `self` moved by `seconds`.
    pub fn add_seconds(self, seconds: f64) -> Monotonic {
        Monotonic(self.0 + (seconds * 1e9).round() as i64)
    }
}

/// Identifies a source (an NTP server or a refclock) within one engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceId(pub u32);

/// One measurement of a source against the local clock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// When it was taken, on the local clock.
    pub time: LocalTime,
    /// Source minus local clock, seconds. Positive: the local clock is behind.
    pub offset_s: f64,
    /// Round-trip delay of the exchange, seconds (0 for a refclock).
    pub delay_s: f64,
    /// Error bound of this measurement at `time` (precisions, reading delay), seconds.
    pub dispersion_s: f64,
    /// The source's root delay and dispersion (to its own reference), seconds.
    pub root_delay_s: f64,
    pub root_dispersion_s: f64,
    /// The source's stratum (for a refclock, the configured one minus one: 0).
    pub stratum: u8,
    pub leap: LeapIndicator,
}

/// chrony's per-source selection options (`server ... prefer noselect trust require`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SelectOptions {
    /// Prefer this source among the survivors of selection.
    pub prefer: bool,
    /// Never select it (measure only).
    pub noselect: bool,
    /// Assume it is always true: it cannot be a falseticker.
    pub trust: bool,
    /// At least one `require` source must be selectable for any selection at all.
    pub require: bool,
}

/// Frequency tolerance assumed for a free-running clock (RFC 5905 PHI: 15 ppm), used
/// to grow a measurement's dispersion with its age.
pub const MAX_DRIFT_PPM: f64 = 15.0;
