//! What the appliance's NTP server says about its own clock in every reply: decided
//! by the time-keeping system ([`crate::timekeeper`]), stamped by the serving threads.

use strata_proto::ntp::{LeapIndicator, NtpTimestamp, ReferenceId};

/// What the server says about its own clock in every reply.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerState {
    pub leap: LeapIndicator,
    /// 1 for a primary server. 16 and above go out as 0 (see the engine's `server::respond`).
    pub stratum: u8,
    pub reference_id: ReferenceId,
    /// When the clock was last set or corrected. Zero in a synchronised state means
    /// "now" (a local reference, see [`ServerState::local`]).
    pub reference_time: NtpTimestamp,
    pub root_delay_s: f64,
    pub root_dispersion_s: f64,
    pub precision_log2: i8,
}

impl ServerState {
    /// Precision until the caller has measured the clock's: 2^-20 s ≈ 1 µs, what
    /// chrony reports for a typical Linux system clock.
    pub const DEFAULT_PRECISION_LOG2: i8 = -20;

    /// Not synchronised to anything yet: answer, but say so.
    ///
    /// RFC 5905 §7.3 marks an unsynchronised clock with LI = 3, and stratum 0 means
    /// "unspecified or invalid". The reference id is all zero, not the "INIT" kiss
    /// code: at stratum 0 a four-letter code is read as a kiss-o'-death (§7.4), and a
    /// client must not be told to back off merely because we just started. This is
    /// chrony's answer byte for byte (`NTP_REFID_UNSYNC`, stratum 16 sent as 0, zero
    /// reference time, root delay and dispersion of 1 s), which clients already know.
    pub fn unsynchronised() -> ServerState {
        ServerState {
            leap: LeapIndicator::Unsynchronised,
            stratum: 0,
            reference_id: ReferenceId::ZERO,
            reference_time: NtpTimestamp::ZERO,
            root_delay_s: 1.0,
            root_dispersion_s: 1.0,
            precision_log2: Self::DEFAULT_PRECISION_LOG2,
        }
    }

    /// chrony's `local stratum N`: serve the undisciplined local clock as if it were
    /// synchronised, at stratum `stratum` (clamped to 1..=15, the synchronised
    /// strata), reference id "LOCL", no leap warning. The reference time stays zero
    /// and the engine's `server::respond` stamps receive − 1 s instead, as chrony does, because a local
    /// reference is always current.
    pub fn local(stratum: u8) -> ServerState {
        ServerState {
            leap: LeapIndicator::NoWarning,
            stratum: stratum.clamp(1, 15),
            reference_id: ReferenceId::LOCL,
            reference_time: NtpTimestamp::ZERO,
            root_delay_s: 0.0,
            root_dispersion_s: 0.0,
            precision_log2: Self::DEFAULT_PRECISION_LOG2,
        }
    }
}
