//! NTP packets, sans I/O: parsing and serialising only, no socket and no clock.
//!
//! - RFC 5905 (NTPv4): header layout (§7.3), timestamp formats and eras (§6),
//!   kiss-o'-death codes (§7.4).
//! - RFC 7822: extension field framing and how a legacy MAC is told apart from one.
//! - RFC 4330 (SNTPv4, §5): versions 1 to 3 share the same 48-byte header, so older
//!   clients are parsed by the same code.
//!
//! Every byte here comes from the network, straight into the one process that holds
//! no capability at all. [`Packet::parse`] must therefore never panic: it reads with
//! checked splits only and bounds every loop by the input and by
//! [`MAX_EXTENSION_FIELDS`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Length of the fixed NTP header; the smallest valid packet.
pub const HEADER_LEN: usize = 48;

/// Most extension fields accepted in one packet. RFC 7822 sets no limit; NTS (RFC 8915)
/// needs four to six, so 16 is ample and caps the work one datagram can cause.
pub const MAX_EXTENSION_FIELDS: usize = 16;

/// Smallest extension field, 4-byte field header included (RFC 7822 §3).
pub const MIN_EXTENSION_FIELD_LEN: usize = 16;

/// Longest legacy MAC: 4-byte key id + 20-byte SHA-1 digest (RFC 7822 §3). Anything
/// this short at the end of a packet is a MAC, never an extension field, which is why
/// RFC 7822 makes the last field of a MAC-less packet at least 28 bytes long.
pub const MAX_MAC_LEN: usize = 24;

/// Legacy MAC of 4-byte key id + 16-byte MD5 digest (RFC 5905 §7.3, RFC 4330 §5).
pub const MD5_MAC_LEN: usize = 20;

/// Seconds from 1900-01-01T00:00:00Z (NTP era 0, RFC 5905 §6) to the Unix epoch.
pub const NTP_UNIX_OFFSET_S: i64 = 2_208_988_800;

const NS_PER_S: i128 = 1_000_000_000;
const NTP_UNIX_OFFSET_NS: i128 = NTP_UNIX_OFFSET_S as i128 * NS_PER_S;

// ---------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------

/// The 64-bit NTP timestamp (RFC 5905 §6): 32 bits of seconds and 32 bits of
/// fraction since the start of the timestamp's era.
///
/// The era number is not on the wire: era 0 began 1900-01-01, era 1 begins
/// 2036-02-07T06:28:16Z. A timestamp is therefore placed in time only relative to a
/// reference (usually the local clock), picking the instant nearest to it, which is
/// unambiguous as long as the two are less than 2^31 s (68 years) apart (RFC 5905 §6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NtpTimestamp(u64);

impl NtpTimestamp {
    /// All zero: RFC 5905 uses it for "unknown" (e.g. a reference time never set).
    pub const ZERO: NtpTimestamp = NtpTimestamp(0);

    pub const fn from_bits(bits: u64) -> NtpTimestamp {
        NtpTimestamp(bits)
    }

    pub const fn to_bits(self) -> u64 {
        self.0
    }

    pub const fn from_parts(seconds: u32, fraction: u32) -> NtpTimestamp {
        NtpTimestamp(((seconds as u64) << 32) | fraction as u64)
    }

    /// Whole seconds within the era.
    pub const fn seconds(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// Fraction of a second in units of 2^-32 s (about 233 ps).
    pub const fn fraction(self) -> u32 {
        self.0 as u32
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// The timestamp of a Unix time, rounded to the nearest 2^-32 s. The era is
    /// dropped, as the wire format drops it.
    pub fn from_unix_ns(unix_ns: i64) -> NtpTimestamp {
        let ntp_ns = i128::from(unix_ns) + NTP_UNIX_OFFSET_NS;
        // Round half up; div_euclid floors, so this is right before 1900 too.
        let fixed = ((ntp_ns << 32) + NS_PER_S / 2).div_euclid(NS_PER_S);
        // Truncating to 64 bits is the "modulo 2^64" that removes the era.
        NtpTimestamp(fixed as u64)
    }

    /// The Unix time, in ns, of the instant this timestamp names that lies nearest to
    /// `reference_unix_ns` (within ±2^31 s), whatever era that is in. Rounded to the
    /// nearest ns, so `from_unix_ns(t).to_unix_ns_near(r) == t` whenever `t` and `r`
    /// are less than 68 years apart. Saturates at the ends of `i64` (years 1677 and
    /// 2262), which only a reference within 68 years of those ends can reach.
    pub fn to_unix_ns_near(self, reference_unix_ns: i64) -> i64 {
        let reference_fixed = ((i128::from(reference_unix_ns) + NTP_UNIX_OFFSET_NS) << 32).div_euclid(NS_PER_S);
        // Signed distance on the 2^64 circle of 32.32 values: the nearest instant.
        let delta = self.0.wrapping_sub(reference_fixed as u64) as i64;
        let fixed = reference_fixed + i128::from(delta);
        // Arithmetic shift floors, so adding half a unit rounds half up.
        let ntp_ns = (fixed * NS_PER_S + (1 << 31)) >> 32;
        let unix_ns = ntp_ns - NTP_UNIX_OFFSET_NS;
        i64::try_from(unix_ns).unwrap_or(if unix_ns < 0 { i64::MIN } else { i64::MAX })
    }

    /// `self - earlier` in seconds, era-agnostic: correct whenever the true difference
    /// is less than 2^31 s (68 years), even across the 2036 rollover (RFC 5905 §6:
    /// differences, not timestamps, are what the on-wire protocol computes).
    pub fn wrapping_sub_s(self, earlier: NtpTimestamp) -> f64 {
        // An i64 in 2^-32 s units: exact to f64's 53 bits, more than enough.
        self.0.wrapping_sub(earlier.0) as i64 as f64 / 4_294_967_296.0
    }
}

/// The 32-bit NTP short format (RFC 5905 §6): 16 bits of seconds and 16 bits of
/// fraction, unsigned. Carries root delay and root dispersion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NtpShort(u32);

impl NtpShort {
    pub const ZERO: NtpShort = NtpShort(0);
    /// 65535.99998 s, the saturation value.
    pub const MAX: NtpShort = NtpShort(u32::MAX);

    pub const fn from_bits(bits: u32) -> NtpShort {
        NtpShort(bits)
    }

    pub const fn to_bits(self) -> u32 {
        self.0
    }

    /// Saturating: negative → 0, too large or +∞ → [`NtpShort::MAX`]. Rounded up,
    /// as chrony does, because these values are error bounds and must not shrink in
    /// transit. NaN becomes MAX: an unknown bound is the worst bound.
    pub fn from_seconds(seconds: f64) -> NtpShort {
        if seconds.is_nan() {
            return NtpShort::MAX;
        }
        // `as` from f64 saturates at both ends of u32.
        NtpShort((seconds * 65_536.0).ceil() as u32)
    }

    pub fn to_seconds(self) -> f64 {
        f64::from(self.0) / 65_536.0
    }
}

// ---------------------------------------------------------------------------
// Header fields
// ---------------------------------------------------------------------------

/// LI, the warning of an impending leap second (RFC 5905 §7.3, Figure 9): what a
/// source says and what the server says, in packets, in the engine and in its logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum LeapIndicator {
    #[default]
    NoWarning = 0,
    /// The last minute of the day has 61 seconds.
    InsertSecond = 1,
    /// The last minute of the day has 59 seconds.
    DeleteSecond = 2,
    /// The clock is not synchronised; also set in every kiss-o'-death packet.
    Unsynchronised = 3,
}

impl LeapIndicator {
    /// From the two LI bits; higher bits are ignored, so every byte maps.
    pub const fn from_bits(bits: u8) -> LeapIndicator {
        match bits & 0b11 {
            0 => LeapIndicator::NoWarning,
            1 => LeapIndicator::InsertSecond,
            2 => LeapIndicator::DeleteSecond,
            _ => LeapIndicator::Unsynchronised,
        }
    }

    pub const fn to_bits(self) -> u8 {
        self as u8
    }
}

/// Association mode (RFC 5905 §7.3, Figure 10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Mode 0. In NTPv1 the field was reserved (RFC 1059).
    Reserved = 0,
    SymmetricActive = 1,
    SymmetricPassive = 2,
    Client = 3,
    Server = 4,
    Broadcast = 5,
    /// NTP control messages (RFC 9327, `ntpq`).
    Control = 6,
    /// Implementation-specific (ntpd's `ntpdc`, source of monlist amplification).
    Private = 7,
}

impl Mode {
    /// From the three mode bits; higher bits are ignored, so every byte maps.
    pub const fn from_bits(bits: u8) -> Mode {
        match bits & 0b111 {
            0 => Mode::Reserved,
            1 => Mode::SymmetricActive,
            2 => Mode::SymmetricPassive,
            3 => Mode::Client,
            4 => Mode::Server,
            5 => Mode::Broadcast,
            6 => Mode::Control,
            _ => Mode::Private,
        }
    }

    pub const fn to_bits(self) -> u8 {
        self as u8
    }

    pub const fn name(self) -> &'static str {
        match self {
            Mode::Reserved => "reserved",
            Mode::SymmetricActive => "symmetric active",
            Mode::SymmetricPassive => "symmetric passive",
            Mode::Client => "client",
            Mode::Server => "server",
            Mode::Broadcast => "broadcast",
            Mode::Control => "control",
            Mode::Private => "private",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.to_bits())
    }
}

/// The 32-bit reference identifier (RFC 5905 §7.3). What it means depends on the
/// stratum, which is not part of it:
/// - stratum 0 (kiss-o'-death) and 1 (reference clock): up to four ASCII characters,
///   left-justified and zero-padded;
/// - stratum 2 and up: the upstream server's IPv4 address, or the first four bytes of
///   the MD5 digest of its IPv6 address.
///
/// So `"PPS"` and 80.80.83.0 are the same four bytes; only the stratum tells them
/// apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReferenceId([u8; 4]);

impl ReferenceId {
    /// What an unsynchronised server sends (chrony's `NTP_REFID_UNSYNC`).
    pub const ZERO: ReferenceId = ReferenceId([0; 4]);
    /// A PTP hardware clock as stratum-0 source.
    pub const PHC: ReferenceId = ReferenceId(*b"PHC\0");
    pub const GPS: ReferenceId = ReferenceId(*b"GPS\0");
    pub const PPS: ReferenceId = ReferenceId(*b"PPS\0");
    /// Undisciplined local clock (`local stratum N`).
    pub const LOCL: ReferenceId = ReferenceId(*b"LOCL");

    pub const fn from_bytes(bytes: [u8; 4]) -> ReferenceId {
        ReferenceId(bytes)
    }

    pub const fn to_bytes(self) -> [u8; 4] {
        self.0
    }

    pub const fn from_bits(bits: u32) -> ReferenceId {
        ReferenceId(bits.to_be_bytes())
    }

    pub const fn to_bits(self) -> u32 {
        u32::from_be_bytes(self.0)
    }

    /// A stratum-0/1 code: 1 to 4 printable, non-space ASCII characters, zero-padded.
    /// `None` for anything else, so a code from configuration cannot smuggle in
    /// bytes a client would print raw.
    pub const fn from_ascii(code: &str) -> Option<ReferenceId> {
        let bytes = code.as_bytes();
        if bytes.is_empty() || bytes.len() > 4 {
            return None;
        }
        let mut out = [0u8; 4];
        let mut i = 0;
        while i < bytes.len() {
            if !bytes[i].is_ascii_graphic() {
                return None;
            }
            out[i] = bytes[i];
            i += 1;
        }
        Some(ReferenceId(out))
    }

    /// The code, if these bytes have the shape [`ReferenceId::from_ascii`] accepts.
    pub fn ascii(&self) -> Option<&str> {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(4);
        let (code, padding) = self.0.split_at(len);
        if code.is_empty() || !code.iter().all(u8::is_ascii_graphic) || padding.iter().any(|&b| b != 0) {
            return None;
        }
        std::str::from_utf8(code).ok()
    }

    /// Stratum ≥ 2 with an IPv4 upstream: its address.
    pub const fn from_ipv4(addr: Ipv4Addr) -> ReferenceId {
        ReferenceId(addr.octets())
    }

    /// Stratum ≥ 2 with an IPv6 upstream: the first four bytes of the MD5 digest of
    /// the address's 16 bytes (RFC 5905 §7.3). A hash, not a secret: it only lets a
    /// server notice it would be its own upstream's upstream (loop detection).
    pub fn from_ipv6(addr: Ipv6Addr) -> ReferenceId {
        let digest = md5_one_block(&addr.octets());
        ReferenceId([digest[0], digest[1], digest[2], digest[3]])
    }

    pub fn from_ip(addr: IpAddr) -> ReferenceId {
        match addr {
            IpAddr::V4(a) => ReferenceId::from_ipv4(a),
            IpAddr::V6(a) => ReferenceId::from_ipv6(a),
        }
    }
}

impl fmt::Display for ReferenceId {
    /// ASCII codes as `.GPS.` (the `ntpq` convention), anything else as a dotted quad.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ascii() {
            Some(code) => write!(f, ".{code}."),
            None => write!(f, "{}", Ipv4Addr::from(self.0)),
        }
    }
}

/// Kiss-o'-death codes (RFC 5905 §7.4, Figure 13; NTSN from RFC 8915 §5.7): the
/// reference id of a stratum-0 packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KissCode {
    /// The association belongs to an anycast server.
    Acst,
    /// Server authentication failed.
    Auth,
    /// Autokey sequence failed.
    Auto,
    /// The association belongs to a broadcast server.
    Bcst,
    /// Cryptographic authentication or identification failed.
    Cryp,
    /// Access denied by remote server: stop sending.
    Deny,
    /// Lost peer in symmetric mode.
    Drop,
    /// Access denied due to local policy: stop sending.
    Rstr,
    /// The association has not yet synchronised for the first time.
    Init,
    /// The association belongs to a dynamically discovered server.
    Mcst,
    /// No key found.
    Nkey,
    /// NTS negative acknowledgement: the cookie was not accepted (RFC 8915).
    Ntsn,
    /// Rate exceeded: reduce the polling rate.
    Rate,
    /// Alteration of association from a remote host running ntpdc.
    Rmot,
    /// A step change in system time has occurred, not yet verified.
    Step,
}

impl KissCode {
    pub const ALL: [KissCode; 15] = [
        KissCode::Acst,
        KissCode::Auth,
        KissCode::Auto,
        KissCode::Bcst,
        KissCode::Cryp,
        KissCode::Deny,
        KissCode::Drop,
        KissCode::Rstr,
        KissCode::Init,
        KissCode::Mcst,
        KissCode::Nkey,
        KissCode::Ntsn,
        KissCode::Rate,
        KissCode::Rmot,
        KissCode::Step,
    ];

    /// The four bytes on the wire.
    pub const fn code(self) -> [u8; 4] {
        *match self {
            KissCode::Acst => b"ACST",
            KissCode::Auth => b"AUTH",
            KissCode::Auto => b"AUTO",
            KissCode::Bcst => b"BCST",
            KissCode::Cryp => b"CRYP",
            KissCode::Deny => b"DENY",
            KissCode::Drop => b"DROP",
            KissCode::Rstr => b"RSTR",
            KissCode::Init => b"INIT",
            KissCode::Mcst => b"MCST",
            KissCode::Nkey => b"NKEY",
            KissCode::Ntsn => b"NTSN",
            KissCode::Rate => b"RATE",
            KissCode::Rmot => b"RMOT",
            KissCode::Step => b"STEP",
        }
    }

    pub const fn reference_id(self) -> ReferenceId {
        ReferenceId(self.code())
    }

    pub fn from_reference_id(id: ReferenceId) -> Option<KissCode> {
        KissCode::ALL.into_iter().find(|k| k.code() == id.0)
    }
}

// ---------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------

/// The 48-byte NTP header (RFC 5905 §7.3, Figure 8), every field decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    pub leap: LeapIndicator,
    /// VN, 3 bits. [`Packet::parse`] accepts 1 to 4 only.
    pub version: u8,
    pub mode: Mode,
    /// 0 = unspecified / kiss-o'-death, 1 = primary, 2..=15 secondary, 16 unsynchronised.
    pub stratum: u8,
    /// Maximum interval between messages, log2 seconds.
    pub poll_log2: i8,
    /// Precision of the system clock, log2 seconds.
    pub precision_log2: i8,
    /// Total round-trip delay to the reference clock.
    pub root_delay: NtpShort,
    /// Total dispersion to the reference clock.
    pub root_dispersion: NtpShort,
    pub reference_id: ReferenceId,
    /// When the system clock was last set or corrected.
    pub reference_ts: NtpTimestamp,
    /// T1: the client's transmit time, echoed by the server.
    pub origin_ts: NtpTimestamp,
    /// T2: when the request arrived at the server.
    pub receive_ts: NtpTimestamp,
    /// T3 (T1 in a request): when this packet left its sender.
    pub transmit_ts: NtpTimestamp,
}

fn read_u32(buf: &[u8; HEADER_LEN], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn read_u64(buf: &[u8; HEADER_LEN], at: usize) -> u64 {
    (u64::from(read_u32(buf, at)) << 32) | u64::from(read_u32(buf, at + 4))
}

impl Header {
    /// Decode the fixed header. Total: every 48 bytes are some header; whether it is
    /// acceptable (version) is [`Packet::parse`]'s business.
    pub fn from_bytes(buf: &[u8; HEADER_LEN]) -> Header {
        let [first, stratum, poll, precision, ..] = *buf;
        Header {
            leap: LeapIndicator::from_bits(first >> 6),
            version: (first >> 3) & 0b111,
            mode: Mode::from_bits(first),
            stratum,
            poll_log2: poll as i8,
            precision_log2: precision as i8,
            root_delay: NtpShort(read_u32(buf, 4)),
            root_dispersion: NtpShort(read_u32(buf, 8)),
            reference_id: ReferenceId::from_bits(read_u32(buf, 12)),
            reference_ts: NtpTimestamp(read_u64(buf, 16)),
            origin_ts: NtpTimestamp(read_u64(buf, 24)),
            receive_ts: NtpTimestamp(read_u64(buf, 32)),
            transmit_ts: NtpTimestamp(read_u64(buf, 40)),
        }
    }

    /// Encode into `buf`, every byte written. `version` is cut to its 3 bits; for any
    /// version below 8, `Header::from_bytes` gives back exactly `self`.
    pub fn serialize(&self, buf: &mut [u8; HEADER_LEN]) {
        buf[0] = (self.leap.to_bits() << 6) | ((self.version & 0b111) << 3) | self.mode.to_bits();
        buf[1] = self.stratum;
        buf[2] = self.poll_log2 as u8;
        buf[3] = self.precision_log2 as u8;
        let words = [self.root_delay.0, self.root_dispersion.0, self.reference_id.to_bits()];
        let stamps = [self.reference_ts, self.origin_ts, self.receive_ts, self.transmit_ts];
        let (_, rest) = buf.split_at_mut(4);
        let (word_bytes, stamp_bytes) = rest.split_at_mut(12);
        for (dst, word) in word_bytes.chunks_exact_mut(4).zip(words) {
            dst.copy_from_slice(&word.to_be_bytes());
        }
        for (dst, stamp) in stamp_bytes.chunks_exact_mut(8).zip(stamps) {
            dst.copy_from_slice(&stamp.0.to_be_bytes());
        }
    }

    /// The kiss-o'-death code, if this is a KoD packet: stratum 0 and a reference id
    /// that is a known code (RFC 5905 §7.4). An unknown code at stratum 0 is `None`;
    /// RFC 5905 says a client should treat it as an unsynchronised server.
    pub fn kiss_code(&self) -> Option<KissCode> {
        if self.stratum != 0 {
            return None;
        }
        KissCode::from_reference_id(self.reference_id)
    }
}

// ---------------------------------------------------------------------------
// Packet
// ---------------------------------------------------------------------------

/// Why a datagram is not an NTP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0} bytes is shorter than the {HEADER_LEN}-byte NTP header")]
    TooShort(usize),
    #[error("NTP version {0} is not one of 1 to 4")]
    BadVersion(u8),
    #[error("extension field length {0} is not a multiple of 4 of at least 16 bytes")]
    BadExtensionLength(u16),
    #[error("extension field claims {claimed} bytes, only {remaining} are left")]
    ExtensionLengthLies { claimed: u16, remaining: usize },
    #[error("more than {MAX_EXTENSION_FIELDS} extension fields")]
    TooManyExtensions,
    #[error("{0} trailing bytes are neither an extension field nor a 20- or 24-byte MAC")]
    BadTrailer(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("a {needed}-byte packet does not fit a {available}-byte buffer")]
    BufferTooSmall { needed: usize, available: usize },
}

/// One extension field (RFC 7822 §3), borrowed from the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtensionField<'a> {
    pub field_type: u16,
    /// Everything after the 4-byte field header: value and padding, which only the
    /// field type's own specification can tell apart.
    pub body: &'a [u8],
}

/// A parsed NTP packet, borrowing extension fields and MAC from the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub header: Header,
    /// The extension fields, already checked by [`Packet::parse`].
    extensions: &'a [u8],
    /// A legacy symmetric-key MAC (key id + digest, RFC 5905 §7.3): 20 or 24 bytes.
    pub mac: Option<&'a [u8]>,
}

impl<'a> Packet<'a> {
    /// A packet of only a header.
    pub const fn new(header: Header) -> Packet<'static> {
        Packet { header, extensions: &[], mac: None }
    }

    /// Parse one datagram. Never panics, whatever the bytes.
    ///
    /// After the header, NTPv4 may carry extension fields (RFC 7822 §3): type u16,
    /// length u16 counting the 4-byte field header, length a multiple of 4 and at
    /// least 16, not past the end. A trailer of at most 24 bytes is a legacy MAC and
    /// must then be 20 or 24 bytes long (RFC 7822 §3, as chrony reads it). Versions 1
    /// to 3 have no extension fields: only a MAC may follow the header.
    pub fn parse(data: &'a [u8]) -> Result<Packet<'a>, ParseError> {
        let Some((head, trailer)) = data.split_first_chunk::<HEADER_LEN>() else {
            return Err(ParseError::TooShort(data.len()));
        };
        let header = Header::from_bytes(head);
        if !(1..=4).contains(&header.version) {
            return Err(ParseError::BadVersion(header.version));
        }

        let mut rest = trailer;
        if header.version == 4 {
            let mut count = 0;
            while rest.len() > MAX_MAC_LEN {
                // Always there (more than MAX_MAC_LEN bytes are left); `break` rather
                // than a panic path keeps this function free of any.
                let Some(([_, _, len_hi, len_lo], _)) = rest.split_first_chunk::<4>() else {
                    break;
                };
                let claimed = u16::from_be_bytes([*len_hi, *len_lo]);
                let len = usize::from(claimed);
                if len < MIN_EXTENSION_FIELD_LEN || len % 4 != 0 {
                    return Err(ParseError::BadExtensionLength(claimed));
                }
                let Some(after) = rest.get(len..) else {
                    return Err(ParseError::ExtensionLengthLies { claimed, remaining: rest.len() });
                };
                if count == MAX_EXTENSION_FIELDS {
                    return Err(ParseError::TooManyExtensions);
                }
                count += 1;
                rest = after;
            }
        }
        let (extensions, mac) = trailer.split_at(trailer.len() - rest.len());
        let mac = match mac.len() {
            0 => None,
            MD5_MAC_LEN | MAX_MAC_LEN => Some(mac),
            n => return Err(ParseError::BadTrailer(n)),
        };
        Ok(Packet { header, extensions, mac })
    }

    /// The extension fields, in packet order.
    pub fn extension_fields(&self) -> ExtensionFields<'a> {
        ExtensionFields { rest: self.extensions }
    }

    /// Bytes [`Packet::serialize`] writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.extensions.len() + self.mac.map_or(0, <[u8]>::len)
    }

    /// Encode into the front of `out`, returning the length written. For a packet
    /// from [`Packet::parse`] this gives back the parsed bytes exactly.
    pub fn serialize(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let needed = self.encoded_len();
        let Some((head, rest)) = out.get_mut(..needed).and_then(|o| o.split_first_chunk_mut::<HEADER_LEN>()) else {
            return Err(EncodeError::BufferTooSmall { needed, available: out.len() });
        };
        self.header.serialize(head);
        let (ext, mac) = rest.split_at_mut(self.extensions.len());
        ext.copy_from_slice(self.extensions);
        mac.copy_from_slice(self.mac.unwrap_or(&[]));
        Ok(needed)
    }
}

/// Iterator over a packet's extension fields.
#[derive(Clone, Debug)]
pub struct ExtensionFields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ExtensionFields<'a> {
    type Item = ExtensionField<'a>;

    fn next(&mut self) -> Option<ExtensionField<'a>> {
        let ([t_hi, t_lo, len_hi, len_lo], _) = self.rest.split_first_chunk::<4>()?;
        let len = usize::from(u16::from_be_bytes([*len_hi, *len_lo]));
        // Checked by parse; re-checked so the iterator stays total on its own.
        let field = self.rest.get(4..len)?;
        let field_type = u16::from_be_bytes([*t_hi, *t_lo]);
        self.rest = &self.rest[len..];
        Some(ExtensionField { field_type, body: field })
    }
}

// ---------------------------------------------------------------------------
// MD5, for IPv6 reference ids only
// ---------------------------------------------------------------------------

/// MD5 (RFC 1321) of a message short enough to fit one 64-byte block (≤ 55 bytes,
/// checked at compile time). Written out here rather than pulled in as a crate
/// because the only use is hashing a 16-byte IPv6 address into a reference id, where
/// MD5's weakness is irrelevant.
fn md5_one_block<const N: usize>(message: &[u8; N]) -> [u8; 16] {
    const { assert!(N <= 55, "message does not fit one MD5 block") };
    const S: [u32; 16] = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
    // floor(abs(sin(i + 1)) * 2^32), as tabulated in RFC 1321 §3.4.
    const K: [u32; 64] = [
        0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501, 0x698098d8,
        0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340,
        0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8, 0x21e1cde6, 0xc33707d6, 0xf4d50d87,
        0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c,
        0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039,
        0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, 0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92,
        0xffeff47d, 0x85845dd1, 0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb,
        0xeb86d391,
    ];

    // Padding (RFC 1321 §3.1-3.2): a 1 bit, zeros, the length in bits, little-endian.
    let mut block = [0u8; 64];
    let (head, tail) = block.split_at_mut(N);
    head.copy_from_slice(message);
    tail[0] = 0x80;
    block[56..].copy_from_slice(&(N as u64 * 8).to_le_bytes());

    let mut m = [0u32; 16];
    for (word, bytes) in m.iter_mut().zip(block.chunks_exact(4)) {
        *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    let init = [0x67452301u32, 0xefcdab89, 0x98badcfe, 0x10325476];
    let [mut a, mut b, mut c, mut d] = init;
    for i in 0..64 {
        let (f, g) = match i / 16 {
            0 => ((b & c) | (!b & d), i),
            1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
            2 => (b ^ c ^ d, (3 * i + 5) % 16),
            _ => (c ^ (b | !d), (7 * i) % 16),
        };
        let rotated = a.wrapping_add(f).wrapping_add(K[i]).wrapping_add(m[g]).rotate_left(S[(i / 16) * 4 + i % 4]);
        (a, d, c) = (d, c, b);
        b = b.wrapping_add(rotated);
    }
    let mut digest = [0u8; 16];
    for ((out, word), start) in digest.chunks_exact_mut(4).zip([a, b, c, d]).zip(init) {
        out.copy_from_slice(&word.wrapping_add(start).to_le_bytes());
    }
    digest
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2036-02-07T06:28:16Z: NTP era 0 ends, era 1 begins (seconds field wraps to 0).
    const ERA1_UNIX_S: i64 = (1 << 32) - NTP_UNIX_OFFSET_S;
    const NS: i64 = 1_000_000_000;
    /// 1968-01-01T00:00:00Z and 2104-01-01T00:00:00Z.
    const Y1968_UNIX_S: i64 = -63_158_400;
    const Y2104_UNIX_S: i64 = 4_228_588_800;
    /// 60 years, safely inside the ±2^31 s (68 years) unambiguous window.
    const SIXTY_YEARS_S: i64 = 60 * 365 * 86_400;

    fn header() -> Header {
        Header {
            leap: LeapIndicator::NoWarning,
            version: 4,
            mode: Mode::Client,
            stratum: 0,
            poll_log2: 6,
            precision_log2: -20,
            root_delay: NtpShort::ZERO,
            root_dispersion: NtpShort::ZERO,
            reference_id: ReferenceId::ZERO,
            reference_ts: NtpTimestamp::ZERO,
            origin_ts: NtpTimestamp::ZERO,
            receive_ts: NtpTimestamp::ZERO,
            transmit_ts: NtpTimestamp::from_parts(0xe9b5_a2c1, 0x8000_0000),
        }
    }

    fn bytes_of(h: &Header) -> Vec<u8> {
        let mut buf = [0u8; HEADER_LEN];
        h.serialize(&mut buf);
        buf.to_vec()
    }

    fn extension(field_type: u16, body: &[u8]) -> Vec<u8> {
        let len = u16::try_from(4 + body.len()).unwrap();
        let mut v = field_type.to_be_bytes().to_vec();
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    // --- timestamps -------------------------------------------------------

    #[test]
    fn unix_epoch_is_ntp_2208988800() {
        let ts = NtpTimestamp::from_unix_ns(0);
        assert_eq!((ts.seconds(), ts.fraction()), (2_208_988_800, 0));
        assert_eq!(ts.to_unix_ns_near(0), 0);
    }

    #[test]
    fn half_second_is_half_the_fraction() {
        let ts = NtpTimestamp::from_unix_ns(NS / 2);
        assert_eq!(ts.fraction(), 0x8000_0000);
    }

    #[test]
    fn era_rollover_2036() {
        let at = NtpTimestamp::from_unix_ns(ERA1_UNIX_S * NS);
        assert_eq!(at, NtpTimestamp::ZERO, "era 1 starts at seconds = 0");
        let before = NtpTimestamp::from_unix_ns(ERA1_UNIX_S * NS - NS / 2);
        assert_eq!((before.seconds(), before.fraction()), (u32::MAX, 0x8000_0000));
        // Read near a reference in 2030, seconds = 1 is 2036 + 1 s, not 1900 + 1 s.
        let reference = (ERA1_UNIX_S - 6 * 365 * 86_400) * NS;
        let one = NtpTimestamp::from_parts(1, 0);
        assert_eq!(one.to_unix_ns_near(reference), (ERA1_UNIX_S + 1) * NS);
        // The same bits read near 1910 are 1900 + 1 s.
        let reference_1910 = (-60 * 365 * 86_400) * NS;
        assert_eq!(one.to_unix_ns_near(reference_1910), (1 - NTP_UNIX_OFFSET_S) * NS);
        // Differences straddle the rollover.
        assert_eq!(one.wrapping_sub_s(before), 1.5);
        assert_eq!(before.wrapping_sub_s(one), -1.5);
    }

    #[test]
    fn to_unix_ns_near_saturates_instead_of_overflowing() {
        let ts = NtpTimestamp::from_parts(u32::MAX, u32::MAX);
        assert_eq!(ts.to_unix_ns_near(i64::MAX), i64::MAX);
        assert!(NtpTimestamp::ZERO.to_unix_ns_near(i64::MIN) < 0);
    }

    #[test]
    fn ntp_short_conversions() {
        assert_eq!(NtpShort::from_seconds(1.5).to_bits(), 0x0001_8000);
        assert_eq!(NtpShort::from_bits(0x0001_8000).to_seconds(), 1.5);
        assert_eq!(NtpShort::from_seconds(0.0), NtpShort::ZERO);
        assert_eq!(NtpShort::from_seconds(-3.0), NtpShort::ZERO);
        assert_eq!(NtpShort::from_seconds(f64::NEG_INFINITY), NtpShort::ZERO);
        assert_eq!(NtpShort::from_seconds(1e9), NtpShort::MAX);
        assert_eq!(NtpShort::from_seconds(f64::INFINITY), NtpShort::MAX);
        assert_eq!(NtpShort::from_seconds(f64::NAN), NtpShort::MAX);
        // A bound is never rounded down to zero.
        assert_eq!(NtpShort::from_seconds(1e-9).to_bits(), 1);
    }

    // --- header fields ----------------------------------------------------

    #[test]
    fn reference_id_ascii_codes() {
        assert_eq!(ReferenceId::from_ascii("PHC"), Some(ReferenceId::PHC));
        assert_eq!(ReferenceId::from_ascii("GPS").unwrap().to_bytes(), *b"GPS\0");
        assert_eq!(ReferenceId::from_ascii("PPS"), Some(ReferenceId::PPS));
        assert_eq!(ReferenceId::from_ascii("LOCL"), Some(ReferenceId::LOCL));
        assert_eq!(ReferenceId::from_ascii(""), None);
        assert_eq!(ReferenceId::from_ascii("LOCAL"), None);
        assert_eq!(ReferenceId::from_ascii("A B"), None);
        assert_eq!(ReferenceId::from_ascii("G\u{1}"), None);
        assert_eq!(ReferenceId::from_ascii("É"), None);
        assert_eq!(ReferenceId::GPS.ascii(), Some("GPS"));
        assert_eq!(ReferenceId::ZERO.ascii(), None);
        assert_eq!(ReferenceId::from_bytes(*b"G\0PS").ascii(), None);
        assert_eq!(ReferenceId::GPS.to_string(), ".GPS.");
        assert_eq!(ReferenceId::from_bits(0xc000_0201).to_string(), "192.0.2.1");
    }

    #[test]
    fn reference_id_of_addresses() {
        let v4 = ReferenceId::from_ip("192.0.2.1".parse().unwrap());
        assert_eq!(v4.to_bits(), 0xc000_0201);
        // First four bytes of MD5(::1) and MD5(2001:db8::1), computed independently.
        let v6 = ReferenceId::from_ip("::1".parse().unwrap());
        assert_eq!(v6.to_bytes(), [0xcf, 0x40, 0x4d, 0xc8]);
        let v6 = ReferenceId::from_ipv6("2001:db8::1".parse().unwrap());
        assert_eq!(v6.to_bits(), 0x39ab_9b37);
    }

    #[test]
    fn md5_rfc1321_test_suite() {
        fn hex(d: [u8; 16]) -> String {
            d.iter().map(|b| format!("{b:02x}")).collect()
        }
        assert_eq!(hex(md5_one_block(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex(md5_one_block(b"a")), "0cc175b9c0f1b6a831c399e269772661");
        assert_eq!(hex(md5_one_block(b"abc")), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(hex(md5_one_block(b"message digest")), "f96b697d7cb7938d525a2f31aaf161d0");
        assert_eq!(hex(md5_one_block(b"abcdefghijklmnopqrstuvwxyz")), "c3fcd3d76192e4007dfb496cca67e13b");
        assert_eq!(
            hex(md5_one_block(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz012")),
            // 55 bytes, the longest one block holds (checked against md5sum).
            "b76972fe0dff4baac395b531646f738e"
        );
    }

    #[test]
    fn kiss_codes() {
        let mut h = header();
        h.mode = Mode::Server;
        h.leap = LeapIndicator::Unsynchronised;
        for (code, kiss) in [(*b"RATE", KissCode::Rate), (*b"DENY", KissCode::Deny), (*b"RSTR", KissCode::Rstr)] {
            h.reference_id = ReferenceId::from_bytes(code);
            assert_eq!(h.kiss_code(), Some(kiss));
            assert_eq!(kiss.reference_id(), h.reference_id);
        }
        h.reference_id = ReferenceId::from_bytes(*b"XXXX");
        assert_eq!(h.kiss_code(), None, "unknown code");
        h.reference_id = KissCode::Rate.reference_id();
        h.stratum = 1;
        assert_eq!(h.kiss_code(), None, "RATE at stratum 1 is a clock name");
        for kiss in KissCode::ALL {
            assert_eq!(KissCode::from_reference_id(kiss.reference_id()), Some(kiss));
        }
    }

    #[test]
    fn header_field_bits() {
        // LI 3, VN 4, mode 4; stratum 1; poll 6; precision -23.
        let mut bytes = [0u8; HEADER_LEN];
        bytes[..4].copy_from_slice(&[0xe4, 1, 6, 0xe9]);
        bytes[4..8].copy_from_slice(&0x0001_8000u32.to_be_bytes());
        bytes[12..16].copy_from_slice(b"GPS\0");
        bytes[40..48].copy_from_slice(&0x0123_4567_89ab_cdefu64.to_be_bytes());
        let h = Header::from_bytes(&bytes);
        assert_eq!(h.leap, LeapIndicator::Unsynchronised);
        assert_eq!(h.version, 4);
        assert_eq!(h.mode, Mode::Server);
        assert_eq!(h.stratum, 1);
        assert_eq!(h.poll_log2, 6);
        assert_eq!(h.precision_log2, -23);
        assert_eq!(h.root_delay.to_seconds(), 1.5);
        assert_eq!(h.reference_id, ReferenceId::GPS);
        assert_eq!(h.transmit_ts.to_bits(), 0x0123_4567_89ab_cdef);
        let mut again = [0xffu8; HEADER_LEN];
        h.serialize(&mut again);
        assert_eq!(again, bytes);
        for bits in 0..8 {
            assert_eq!(Mode::from_bits(bits).to_bits(), bits);
        }
        for bits in 0..4 {
            assert_eq!(LeapIndicator::from_bits(bits).to_bits(), bits);
        }
    }

    // --- packets ----------------------------------------------------------

    #[test]
    fn plain_client_request() {
        let bytes = bytes_of(&header());
        let p = Packet::parse(&bytes).unwrap();
        assert_eq!(p.header, header());
        assert_eq!(p.extension_fields().count(), 0);
        assert_eq!(p.mac, None);
        assert_eq!(p, Packet::new(header()));
    }

    #[test]
    fn versions_1_to_4_only() {
        for version in 0..8u8 {
            let mut h = header();
            h.version = version;
            let got = Packet::parse(&bytes_of(&h)).map(|p| p.header.version);
            if (1..=4).contains(&version) {
                assert_eq!(got, Ok(version));
            } else {
                assert_eq!(got, Err(ParseError::BadVersion(version)));
            }
        }
    }

    #[test]
    fn too_short() {
        assert_eq!(Packet::parse(&[]), Err(ParseError::TooShort(0)));
        let bytes = bytes_of(&header());
        assert_eq!(Packet::parse(&bytes[..47]), Err(ParseError::TooShort(47)));
    }

    #[test]
    fn legacy_mac_20_or_24_bytes() {
        for version in 1..=4 {
            let mut h = header();
            h.version = version;
            for len in [20, 24] {
                let mut bytes = bytes_of(&h);
                bytes.extend(std::iter::repeat_n(0xa5, len));
                let p = Packet::parse(&bytes).unwrap();
                assert_eq!(p.mac, Some(&bytes[48..]));
                assert_eq!(p.extension_fields().count(), 0);
            }
            for len in [4, 12, 16, 22, 28] {
                let mut bytes = bytes_of(&h);
                bytes.extend(std::iter::repeat_n(0, len));
                let err = Packet::parse(&bytes).unwrap_err();
                if version < 4 || len < 28 {
                    assert_eq!(err, ParseError::BadTrailer(len), "v{version} +{len}");
                }
            }
        }
    }

    #[test]
    fn extension_fields_and_mac() {
        let mut bytes = bytes_of(&header());
        bytes.extend(extension(0x0104, &[7; 32]));
        bytes.extend(extension(0x0204, &[9; 12]));
        bytes.extend([1; 20]);
        let p = Packet::parse(&bytes).unwrap();
        let fields: Vec<_> = p.extension_fields().collect();
        assert_eq!(
            fields,
            [
                ExtensionField { field_type: 0x0104, body: &[7; 32] },
                ExtensionField { field_type: 0x0204, body: &[9; 12] },
            ]
        );
        assert_eq!(p.mac, Some(&[1u8; 20][..]));
        let mut out = [0u8; 200];
        let n = p.serialize(&mut out).unwrap();
        assert_eq!(&out[..n], &bytes[..]);
        assert_eq!(p.serialize(&mut out[..n - 1]), Err(EncodeError::BufferTooSmall { needed: n, available: n - 1 }));
    }

    #[test]
    fn extension_errors() {
        let with = |trailer: &[u8]| {
            let mut bytes = bytes_of(&header());
            bytes.extend_from_slice(trailer);
            Packet::parse(&bytes).map(|p| p.extension_fields().count())
        };
        // Length below 16 or not a multiple of 4.
        let mut short = extension(1, &[0; 24]);
        short[3] = 12;
        assert_eq!(with(&short), Err(ParseError::BadExtensionLength(12)));
        let mut odd = extension(1, &[0; 24]);
        odd[3] = 26;
        assert_eq!(with(&odd), Err(ParseError::BadExtensionLength(26)));
        let mut zero = extension(1, &[0; 24]);
        zero[3] = 0;
        assert_eq!(with(&zero), Err(ParseError::BadExtensionLength(0)));
        // Runs past the end.
        let mut lies = extension(1, &[0; 24]);
        lies[2..4].copy_from_slice(&0xfffcu16.to_be_bytes());
        assert_eq!(with(&lies), Err(ParseError::ExtensionLengthLies { claimed: 0xfffc, remaining: 28 }));
        // 16 fields are fine (the last long enough not to pass for a MAC), 17 are not.
        let mut many: Vec<u8> = (0..15).flat_map(|t| extension(t, &[0; 12])).collect();
        many.extend(extension(15, &[0; 24]));
        assert_eq!(with(&many), Ok(16));
        many.extend(extension(16, &[0; 24]));
        assert_eq!(with(&many), Err(ParseError::TooManyExtensions));
        // A short last field without a MAC is read as a MAC of the wrong length.
        assert_eq!(with(&extension(1, &[0; 12])), Err(ParseError::BadTrailer(16)));
        // A field followed by a stub.
        let mut stub = extension(1, &[0; 24]);
        stub.extend([0; 8]);
        assert_eq!(with(&stub), Err(ParseError::BadTrailer(8)));
        // Versions before 4 have no extension fields.
        let mut h = header();
        h.version = 3;
        let mut bytes = bytes_of(&h);
        bytes.extend(extension(1, &[0; 24]));
        assert_eq!(Packet::parse(&bytes), Err(ParseError::BadTrailer(28)));
    }

    // --- properties -------------------------------------------------------

    fn arb_timestamp() -> impl Strategy<Value = NtpTimestamp> {
        any::<u64>().prop_map(NtpTimestamp::from_bits)
    }

    fn arb_header(versions: std::ops::RangeInclusive<u8>) -> impl Strategy<Value = Header> {
        (
            (0u8..4, versions, 0u8..8, any::<u8>(), any::<i8>(), any::<i8>()),
            (any::<u32>(), any::<u32>(), any::<u32>()),
            (arb_timestamp(), arb_timestamp(), arb_timestamp(), arb_timestamp()),
        )
            .prop_map(
                |(
                    (leap, version, mode, stratum, poll, precision),
                    (delay, dispersion, refid),
                    (reference, origin, receive, transmit),
                )| Header {
                    leap: LeapIndicator::from_bits(leap),
                    version,
                    mode: Mode::from_bits(mode),
                    stratum,
                    poll_log2: poll,
                    precision_log2: precision,
                    root_delay: NtpShort::from_bits(delay),
                    root_dispersion: NtpShort::from_bits(dispersion),
                    reference_id: ReferenceId::from_bits(refid),
                    reference_ts: reference,
                    origin_ts: origin,
                    receive_ts: receive,
                    transmit_ts: transmit,
                },
            )
    }

    /// A valid datagram built independently of `Packet::serialize`, with what it holds.
    #[derive(Debug)]
    struct Valid {
        bytes: Vec<u8>,
        header: Header,
        fields: Vec<(u16, Vec<u8>)>,
        mac: Option<Vec<u8>>,
    }

    fn arb_valid_packet() -> impl Strategy<Value = Valid> {
        let v4 = (
            arb_header(4..=4),
            prop::collection::vec(
                (any::<u16>(), (3usize..40).prop_flat_map(|words| prop::collection::vec(any::<u8>(), words * 4))),
                0..=MAX_EXTENSION_FIELDS,
            ),
            prop::option::of(prop_oneof![Just(20usize), Just(24)]),
            any::<u8>(),
        );
        let old =
            (arb_header(1..=3), Just(Vec::new()), prop::option::of(prop_oneof![Just(20usize), Just(24)]), any::<u8>());
        prop_oneof![v4, old].prop_map(|(header, mut fields, mac_len, mac_byte)| {
            // RFC 7822: without a MAC the last field must not look like one.
            if let (None, Some((_, body))) = (mac_len, fields.last_mut()) {
                body.resize(body.len().max(24), 0);
            }
            let mac = mac_len.map(|n| vec![mac_byte; n]);
            let mut bytes = bytes_of(&header);
            for (t, body) in &fields {
                bytes.extend(extension(*t, body));
            }
            if let Some(mac) = &mac {
                bytes.extend_from_slice(mac);
            }
            Valid { bytes, header, fields, mac }
        })
    }

    /// Fragments that look like extension fields, lengths often wrong, to drive the
    /// parser down every branch rather than failing at the version check.
    fn arb_ntp_shaped() -> impl Strategy<Value = Vec<u8>> {
        (
            arb_header(0..=7),
            prop::collection::vec((any::<u16>(), any::<u16>(), prop::collection::vec(any::<u8>(), 0..40)), 0..20),
            prop::collection::vec(any::<u8>(), 0..30),
        )
            .prop_map(|(header, fragments, tail)| {
                let mut bytes = bytes_of(&header);
                for (t, len, body) in fragments {
                    bytes.extend(t.to_be_bytes());
                    bytes.extend(len.to_be_bytes());
                    bytes.extend(body);
                }
                bytes.extend(tail);
                bytes
            })
    }

    proptest! {
        #[test]
        fn unix_ns_round_trip_1968_to_2104(
            t_ns in Y1968_UNIX_S * NS..Y2104_UNIX_S * NS,
            offset_ns in -SIXTY_YEARS_S * NS..SIXTY_YEARS_S * NS,
        ) {
            let ts = NtpTimestamp::from_unix_ns(t_ns);
            prop_assert_eq!(ts.to_unix_ns_near(t_ns), t_ns);
            prop_assert_eq!(ts.to_unix_ns_near(t_ns + offset_ns), t_ns);
        }

        #[test]
        fn unix_ns_round_trip_across_2036(
            t_ns in (ERA1_UNIX_S - 86_400) * NS..(ERA1_UNIX_S + 86_400) * NS,
            offset_ns in -SIXTY_YEARS_S * NS..SIXTY_YEARS_S * NS,
        ) {
            let ts = NtpTimestamp::from_unix_ns(t_ns);
            prop_assert_eq!(ts.to_unix_ns_near(t_ns + offset_ns), t_ns);
            // The era boundary is exactly where seconds wraps.
            prop_assert_eq!(ts.seconds() < (1 << 31), t_ns >= ERA1_UNIX_S * NS);
        }

        #[test]
        fn differences_across_2036(
            a_ns in (ERA1_UNIX_S - 86_400) * NS..(ERA1_UNIX_S + 86_400) * NS,
            b_ns in (ERA1_UNIX_S - 86_400) * NS..(ERA1_UNIX_S + 86_400) * NS,
        ) {
            let diff_s = NtpTimestamp::from_unix_ns(a_ns)
                .wrapping_sub_s(NtpTimestamp::from_unix_ns(b_ns));
            let expected_s = (a_ns - b_ns) as f64 / 1e9;
            prop_assert!((diff_s - expected_s).abs() < 1e-9, "{} vs {}", diff_s, expected_s);
        }

        #[test]
        fn ntp_short_never_shrinks(seconds in 0.0f64..65_535.0) {
            let short = NtpShort::from_seconds(seconds);
            prop_assert!(short.to_seconds() >= seconds);
            prop_assert!(short.to_seconds() - seconds < 1.0 / 65_536.0);
        }

        #[test]
        fn header_round_trip(h in arb_header(0..=7)) {
            let mut buf = [0u8; HEADER_LEN];
            h.serialize(&mut buf);
            prop_assert_eq!(Header::from_bytes(&buf), h);
        }

        #[test]
        fn header_bytes_round_trip(bytes in prop::array::uniform32(any::<u8>()), tail in prop::array::uniform16(any::<u8>())) {
            let mut buf = [0u8; HEADER_LEN];
            buf[..32].copy_from_slice(&bytes);
            buf[32..].copy_from_slice(&tail);
            let mut again = [0u8; HEADER_LEN];
            Header::from_bytes(&buf).serialize(&mut again);
            prop_assert_eq!(again, buf);
        }

        #[test]
        fn parse_never_panics_on_bytes(data in prop::collection::vec(any::<u8>(), 0..700)) {
            let _ = Packet::parse(&data);
        }

        #[test]
        fn parse_never_panics_on_ntp_shaped(data in arb_ntp_shaped()) {
            if let Ok(p) = Packet::parse(&data) {
                // Whatever parses, serialises back to the same bytes.
                let mut out = vec![0u8; data.len()];
                prop_assert_eq!(p.serialize(&mut out), Ok(data.len()));
                prop_assert_eq!(&out, &data);
                prop_assert!(p.extension_fields().count() <= MAX_EXTENSION_FIELDS);
            }
        }

        #[test]
        fn valid_packets_decode_encode_decode(v in arb_valid_packet()) {
            let p = Packet::parse(&v.bytes).unwrap();
            prop_assert_eq!(p.header, v.header);
            let fields: Vec<_> = p.extension_fields().map(|f| (f.field_type, f.body.to_vec())).collect();
            prop_assert_eq!(&fields, &v.fields);
            prop_assert_eq!(p.mac.map(<[u8]>::to_vec), v.mac);
            let mut out = vec![0u8; p.encoded_len()];
            prop_assert_eq!(p.serialize(&mut out), Ok(v.bytes.len()));
            prop_assert_eq!(&out, &v.bytes);
            prop_assert_eq!(Packet::parse(&out).unwrap(), p);
        }
    }
}
