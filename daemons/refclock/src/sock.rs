//! chrony's SOCK refclock protocol, as gpsd (and `ts2phc`, `phc2sys`) write it: one
//! `struct sock_sample` per datagram on a Unix datagram socket. Sans-IO: the reader
//! receives the datagram; this module only decodes it.
//!
//! ```c
//! struct sock_sample {            /* chrony refclock_sock.c */
//!   struct timeval tv;            /* system time of the measurement */
//!   double offset;                /* true time minus system time, seconds */
//!   int pulse;                    /* non-zero: PPS, the seconds come from elsewhere */
//!   int leap;                     /* 0 normal, 1 insert, 2 delete */
//!   int _pad;
//!   int magic;                    /* 0x534f434b, "SOCK" */
//! };
//! ```
//!
//! Host byte order and the LP64 layout (x86_64, aarch64): see the layout test.
//!
//! **Sign.** chrony's comment calls `offset` the "offset between the true time and the
//! system time", and its `read_sample` computes the reference timestamp as
//! `ref_ts = sys_ts + sample.offset` (`UTI_AddDoubleToTimespec`), i.e.
//! `offset = reference − system`: positive when the system clock is behind. gpsd fills
//! it the same way (`real − clock`). That is already strata's convention
//! (`RefclockSample::offset_s` = reference − local), so the value is passed through
//! unchanged, not negated.

/// Size of `struct sock_sample` on LP64 Linux.
pub const SOCK_SAMPLE_LEN: usize = 40;
/// "SOCK" read as a host-order `int`.
pub const SOCK_MAGIC: u32 = 0x534f_434b;

const TV_SEC: usize = 0;
const TV_USEC: usize = 8;
const OFFSET: usize = 16;
const PULSE: usize = 24;
const LEAP: usize = 28;
const MAGIC: usize = 36;

// The offsets above are those of a 64-bit time_t and suseconds_t.
const _: () = assert!(cfg!(target_pointer_width = "64"), "sock_sample layout is only verified for LP64 targets");

/// One decoded SOCK sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SockSample {
    /// System clock time of the measurement (`tv`), ns since the Unix epoch.
    pub system_time_ns: i64,
    /// Reference minus system clock, seconds (chrony's and strata's sign alike).
    pub offset_s: f64,
    /// A PPS edge: only the offset within the second is meaningful.
    pub pulse: bool,
    /// 0 none, 1 insert, 2 delete a leap second at the end of the day.
    pub leap: u8,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SockError {
    WrongLength(usize),
    WrongMagic(u32),
    NonFiniteOffset,
    BadLeap(i32),
    BadMicroseconds(i64),
    TimeOutOfRange(i64),
}

impl std::fmt::Display for SockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SockError::WrongLength(n) => write!(f, "a SOCK sample is {SOCK_SAMPLE_LEN} bytes, got {n}"),
            SockError::WrongMagic(m) => write!(f, "bad SOCK magic {m:#010x}"),
            SockError::NonFiniteOffset => write!(f, "SOCK offset is not finite"),
            SockError::BadLeap(l) => write!(f, "SOCK leap {l} is not 0, 1 or 2"),
            SockError::BadMicroseconds(u) => write!(f, "SOCK tv_usec {u} is outside 0..1000000"),
            SockError::TimeOutOfRange(s) => write!(f, "SOCK tv_sec {s} does not fit in i64 nanoseconds"),
        }
    }
}

impl std::error::Error for SockError {}

fn field<const N: usize>(d: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&d[at..at + N]);
    out
}

/// Decode one datagram. Never panics: every malformed input is an error.
pub fn parse(datagram: &[u8]) -> Result<SockSample, SockError> {
    if datagram.len() != SOCK_SAMPLE_LEN {
        return Err(SockError::WrongLength(datagram.len()));
    }
    let magic = u32::from_ne_bytes(field(datagram, MAGIC));
    if magic != SOCK_MAGIC {
        return Err(SockError::WrongMagic(magic));
    }
    let offset_s = f64::from_ne_bytes(field(datagram, OFFSET));
    if !offset_s.is_finite() {
        return Err(SockError::NonFiniteOffset);
    }
    let leap = i32::from_ne_bytes(field(datagram, LEAP));
    let leap = match u8::try_from(leap) {
        Ok(l @ 0..=2) => l,
        _ => return Err(SockError::BadLeap(leap)),
    };
    let usec = i64::from_ne_bytes(field(datagram, TV_USEC));
    if !(0..1_000_000).contains(&usec) {
        return Err(SockError::BadMicroseconds(usec));
    }
    let sec = i64::from_ne_bytes(field(datagram, TV_SEC));
    let system_time_ns = sec
        .checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(usec * 1000))
        .ok_or(SockError::TimeOutOfRange(sec))?;
    let pulse = i32::from_ne_bytes(field(datagram, PULSE)) != 0;
    Ok(SockSample { system_time_ns, offset_s, pulse, leap })
}

/// Encode a sample the way gpsd does (`_pad` zero). For tests and test feeders.
#[cfg(test)]
pub fn encode(sec: i64, usec: i64, offset: f64, pulse: i32, leap: i32) -> [u8; SOCK_SAMPLE_LEN] {
    let mut d = [0u8; SOCK_SAMPLE_LEN];
    d[TV_SEC..TV_SEC + 8].copy_from_slice(&sec.to_ne_bytes());
    d[TV_USEC..TV_USEC + 8].copy_from_slice(&usec.to_ne_bytes());
    d[OFFSET..OFFSET + 8].copy_from_slice(&offset.to_ne_bytes());
    d[PULSE..PULSE + 4].copy_from_slice(&pulse.to_ne_bytes());
    d[LEAP..LEAP + 4].copy_from_slice(&leap.to_ne_bytes());
    d[MAGIC..MAGIC + 4].copy_from_slice(&SOCK_MAGIC.to_ne_bytes());
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_layout_is_the_one_gcc_gives() {
        // Obtained by compiling a copy of chrony's struct sock_sample (with
        // <sys/time.h>) with gcc 12.2.0 on x86_64 Debian 12 and printing sizeof and
        // offsetof: size 40, align 8; tv.tv_sec 0 (8 bytes), tv.tv_usec 8 (8),
        // offset 16 (8), pulse 24 (4), leap 28 (4), _pad 32 (4), magic 36 (4).
        assert_eq!(SOCK_SAMPLE_LEN, 40);
        assert_eq!((TV_SEC, TV_USEC, OFFSET, PULSE, LEAP, MAGIC), (0, 8, 16, 24, 28, 36));
        // The magic spells "SOCK" when read as a big-endian word.
        assert_eq!(&SOCK_MAGIC.to_be_bytes(), b"SOCK");
    }

    #[test]
    fn a_gpsd_sample_decodes() {
        let d = encode(1_700_000_000, 123_456, 0.000_250, 0, 1);
        assert_eq!(
            parse(&d),
            Ok(SockSample { system_time_ns: 1_700_000_000_123_456_000, offset_s: 0.000_250, pulse: false, leap: 1 })
        );
    }

    #[test]
    fn the_offset_keeps_chronys_sign_which_is_strata_s() {
        // System clock 1.5 ms behind the reference: chrony computes ref = sys + offset,
        // so gpsd sends +0.0015; strata's offset (reference − local) is +0.0015 too.
        let s = parse(&encode(100, 0, 0.0015, 0, 0)).unwrap();
        assert_eq!(s.offset_s, 0.0015);
        let s = parse(&encode(100, 0, -0.25, 0, 0)).unwrap();
        assert_eq!(s.offset_s, -0.25);
    }

    #[test]
    fn pulse_is_any_non_zero_int() {
        assert!(!parse(&encode(1, 0, 0.0, 0, 0)).unwrap().pulse);
        assert!(parse(&encode(1, 0, 0.0, 1, 0)).unwrap().pulse);
        assert!(parse(&encode(1, 0, 0.0, -7, 0)).unwrap().pulse);
    }

    #[test]
    fn the_padding_is_ignored() {
        let mut d = encode(1, 0, 0.0, 0, 2);
        d[32..36].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(parse(&d).unwrap().leap, 2);
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let d = encode(1, 0, 0.0, 0, 0);
        assert_eq!(parse(&d[..39]), Err(SockError::WrongLength(39)));
        assert_eq!(parse(&[]), Err(SockError::WrongLength(0)));
        let mut long = d.to_vec();
        long.push(0);
        assert_eq!(parse(&long), Err(SockError::WrongLength(41)));
        // The 32-bit time_t layout (32 bytes) is not accepted on this target.
        assert_eq!(parse(&d[..32]), Err(SockError::WrongLength(32)));
    }

    #[test]
    fn a_wrong_magic_is_refused() {
        let mut d = encode(1, 0, 0.0, 0, 0);
        d[36..40].copy_from_slice(&SOCK_MAGIC.to_be_bytes()); // byte-swapped on x86_64
        assert!(matches!(parse(&d), Err(SockError::WrongMagic(_))));
        d[36..40].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(parse(&d), Err(SockError::WrongMagic(0)));
    }

    #[test]
    fn non_finite_offsets_are_refused() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(parse(&encode(1, 0, bad, 0, 0)), Err(SockError::NonFiniteOffset));
        }
    }

    #[test]
    fn leap_must_be_0_1_or_2() {
        for bad in [3, -1, 256, i32::MIN, i32::MAX] {
            assert_eq!(parse(&encode(1, 0, 0.0, 0, bad)), Err(SockError::BadLeap(bad)));
        }
    }

    #[test]
    fn microseconds_must_be_within_the_second() {
        for bad in [1_000_000, -1, i64::MAX, i64::MIN] {
            assert_eq!(parse(&encode(1, bad, 0.0, 0, 0)), Err(SockError::BadMicroseconds(bad)));
        }
        assert_eq!(parse(&encode(1, 999_999, 0.0, 0, 0)).unwrap().system_time_ns, 1_999_999_000);
    }

    #[test]
    fn seconds_that_overflow_nanoseconds_are_refused() {
        assert_eq!(parse(&encode(i64::MAX, 0, 0.0, 0, 0)), Err(SockError::TimeOutOfRange(i64::MAX)));
        assert_eq!(parse(&encode(i64::MIN, 0, 0.0, 0, 0)), Err(SockError::TimeOutOfRange(i64::MIN)));
        // Pre-epoch times are representable and decode (the engine judges them).
        assert_eq!(parse(&encode(-1, 500_000, 0.0, 0, 0)).unwrap().system_time_ns, -500_000_000);
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(d in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&d);
        }

        #[test]
        fn never_panics_on_any_40_bytes_with_the_magic(head in proptest::collection::vec(any::<u8>(), 36)) {
            let mut d = [0u8; SOCK_SAMPLE_LEN];
            d[..36].copy_from_slice(&head);
            d[36..].copy_from_slice(&SOCK_MAGIC.to_ne_bytes());
            if let Ok(s) = parse(&d) {
                prop_assert!(s.offset_s.is_finite());
                prop_assert!(s.leap <= 2);
            }
        }

        #[test]
        fn valid_samples_round_trip(sec in -9_000_000_000i64..9_000_000_000, usec in 0i64..1_000_000,
                                    offset in -1e6f64..1e6, pulse in any::<i32>(), leap in 0i32..=2) {
            let s = parse(&encode(sec, usec, offset, pulse, leap)).unwrap();
            prop_assert_eq!(s.system_time_ns, sec * 1_000_000_000 + usec * 1000);
            prop_assert_eq!(s.offset_s, offset);
            prop_assert_eq!(s.pulse, pulse != 0);
            prop_assert_eq!(i32::from(s.leap), leap);
        }
    }
}
