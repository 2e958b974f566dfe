//! The PTP hardware clock and PPS kernel interfaces (linux/ptp_clock.h,
//! linux/pps.h): struct layouts, ioctl request numbers, and the reading of a PHC
//! against the system clock. The layouts and numbers are checked against the
//! installed uapi headers by a test that compiles a C program (gcc and
//! linux-libc-dev are on the build machines).

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// linux/ptp_clock.h PTP_MAX_SAMPLES.
pub const PTP_MAX_SAMPLES: usize = 25;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PtpClockTime {
    pub sec: i64,
    pub nsec: u32,
    pub reserved: u32,
}

impl PtpClockTime {
    pub fn ns(&self) -> i64 {
        self.sec * 1_000_000_000 + i64::from(self.nsec)
    }
}

#[repr(C)]
pub struct PtpSysOffset {
    pub n_samples: u32,
    pub rsv: [u32; 3],
    /// System, PHC, system, PHC, ..., system.
    pub ts: [PtpClockTime; 2 * PTP_MAX_SAMPLES + 1],
}

#[repr(C)]
pub struct PtpSysOffsetExtended {
    pub n_samples: u32,
    pub clockid: i32,
    pub rsv: [u32; 2],
    /// Per sample: system before, PHC, system after.
    pub ts: [[PtpClockTime; 3]; PTP_MAX_SAMPLES],
}

#[repr(C)]
#[derive(Default)]
pub struct PtpSysOffsetPrecise {
    pub device: PtpClockTime,
    pub sys_realtime: PtpClockTime,
    pub sys_monoraw: PtpClockTime,
    pub rsv: [u32; 4],
}

/// linux/pps.h struct pps_ktime.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PpsKtime {
    pub sec: i64,
    pub nsec: i32,
    pub flags: u32,
}

/// linux/pps.h struct pps_kinfo.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PpsKinfo {
    pub assert_sequence: u32,
    pub clear_sequence: u32,
    pub assert_tu: PpsKtime,
    pub clear_tu: PpsKtime,
    pub current_mode: i32,
}

/// linux/pps.h struct pps_fdata.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PpsFdata {
    pub info: PpsKinfo,
    pub timeout: PpsKtime,
}

/// asm-generic/ioctl.h _IOC.
const fn ioc(dir: u32, kind: u8, nr: u8, size: usize) -> u64 {
    ((dir as u64) << 30) | ((size as u64) << 16) | ((kind as u64) << 8) | nr as u64
}
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;
const PTP_CLK_MAGIC: u8 = b'=';

pub const PTP_SYS_OFFSET: u64 = ioc(IOC_WRITE, PTP_CLK_MAGIC, 5, size_of::<PtpSysOffset>());
pub const PTP_SYS_OFFSET_PRECISE: u64 = ioc(IOC_READ | IOC_WRITE, PTP_CLK_MAGIC, 8, size_of::<PtpSysOffsetPrecise>());
pub const PTP_SYS_OFFSET_EXTENDED: u64 = ioc(IOC_READ | IOC_WRITE, PTP_CLK_MAGIC, 9, size_of::<PtpSysOffsetExtended>());
/// PPS_FETCH = _IOWR('p', 0xa4, struct pps_fdata *): the size is a pointer's.
pub const PPS_FETCH: u64 = ioc(IOC_READ | IOC_WRITE, b'p', 0xa4, size_of::<*mut PpsFdata>());

use std::mem::size_of;

/// One reading of a PHC against the system clock: the PHC time, and the system
/// times just before and after it (equal for PTP_SYS_OFFSET_PRECISE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhcReading {
    pub system_before_ns: i64,
    pub phc_ns: i64,
    pub system_after_ns: i64,
}

impl PhcReading {
    /// How long the reading took (its uncertainty), ns.
    pub fn delay_ns(&self) -> i64 {
        self.system_after_ns - self.system_before_ns
    }

    /// PHC minus system clock at the moment of reading, ns.
    pub fn offset_ns(&self) -> i64 {
        self.phc_ns - (self.system_before_ns + self.delay_ns() / 2)
    }
}

/// The three ways a PHC can be read, best first.
pub trait PhcDevice {
    fn sys_offset_precise(&self) -> io::Result<PhcReading>;
    fn sys_offset_extended(&self, samples: usize) -> io::Result<Vec<PhcReading>>;
    fn sys_offset(&self, samples: usize) -> io::Result<Vec<PhcReading>>;
}

/// Read `device` the best way it supports (PRECISE, else EXTENDED, else the plain
/// SYS_OFFSET) and keep, of several readings, the one with the smallest delay.
pub fn read_phc(device: &impl PhcDevice, samples: usize) -> io::Result<PhcReading> {
    if let Ok(reading) = device.sys_offset_precise() {
        return Ok(reading);
    }
    let readings = match device.sys_offset_extended(samples) {
        Ok(r) => r,
        Err(_) => device.sys_offset(samples)?,
    };
    readings
        .into_iter()
        .filter(|r| r.delay_ns() >= 0)
        .min_by_key(|r| r.delay_ns())
        .ok_or_else(|| io::Error::other("the PHC returned no usable reading"))
}

/// A PHC device descriptor (`/dev/ptpN`, opened by the supervisor).
pub struct Phc<F: AsFd>(pub F);

impl<F: AsFd> Phc<F> {
    fn ioctl<T>(&self, request: u64, arg: &mut T) -> io::Result<()> {
        // SAFETY: `arg` is a valid, exclusively borrowed struct of exactly the type
        // the request number encodes (size included, checked against the uapi
        // headers by the tests); the kernel reads and writes only within it.
        let rc = unsafe { libc::ioctl(self.0.as_fd().as_raw_fd(), request as libc::Ioctl, arg as *mut T) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}

impl<F: AsFd> PhcDevice for Phc<F> {
    fn sys_offset_precise(&self) -> io::Result<PhcReading> {
        let mut p = PtpSysOffsetPrecise::default();
        self.ioctl(PTP_SYS_OFFSET_PRECISE, &mut p)?;
        let system = p.sys_realtime.ns();
        Ok(PhcReading { system_before_ns: system, phc_ns: p.device.ns(), system_after_ns: system })
    }

    fn sys_offset_extended(&self, samples: usize) -> io::Result<Vec<PhcReading>> {
        let n = samples.clamp(1, PTP_MAX_SAMPLES);
        // SAFETY: an all-zero PtpSysOffsetExtended is valid (plain integers).
        let mut e: PtpSysOffsetExtended = unsafe { std::mem::zeroed() };
        e.n_samples = n as u32;
        self.ioctl(PTP_SYS_OFFSET_EXTENDED, &mut e)?;
        Ok(e.ts[..n]
            .iter()
            .map(|t| PhcReading { system_before_ns: t[0].ns(), phc_ns: t[1].ns(), system_after_ns: t[2].ns() })
            .collect())
    }

    fn sys_offset(&self, samples: usize) -> io::Result<Vec<PhcReading>> {
        let n = samples.clamp(1, PTP_MAX_SAMPLES);
        // SAFETY: an all-zero PtpSysOffset is valid (plain integers).
        let mut o: PtpSysOffset = unsafe { std::mem::zeroed() };
        o.n_samples = n as u32;
        self.ioctl(PTP_SYS_OFFSET, &mut o)?;
        Ok((0..n)
            .map(|i| PhcReading {
                system_before_ns: o.ts[2 * i].ns(),
                phc_ns: o.ts[2 * i + 1].ns(),
                system_after_ns: o.ts[2 * i + 2].ns(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compile and run a C program against the installed uapi headers; it prints
    /// the sizes and request numbers the kernel interface defines.
    fn from_headers() -> Vec<u64> {
        let dir = std::env::temp_dir().join(format!("strata-uapi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = dir.join("uapi.c");
        std::fs::write(
            &c,
            r#"#include <stdio.h>
#include <linux/ptp_clock.h>
#include <linux/pps.h>
int main(void) {
  printf("%zu %zu %zu %zu %zu\n", sizeof(struct ptp_clock_time), sizeof(struct ptp_sys_offset),
         sizeof(struct ptp_sys_offset_extended), sizeof(struct ptp_sys_offset_precise), sizeof(struct pps_fdata));
  printf("%lu %lu %lu %lu\n", (unsigned long)PTP_SYS_OFFSET, (unsigned long)PTP_SYS_OFFSET_PRECISE,
         (unsigned long)PTP_SYS_OFFSET_EXTENDED, (unsigned long)PPS_FETCH);
  return 0;
}
"#,
        )
        .unwrap();
        let exe = dir.join("uapi");
        let cc = std::process::Command::new("cc").arg(&c).arg("-o").arg(&exe).output().expect("cc");
        assert!(cc.status.success(), "{}", String::from_utf8_lossy(&cc.stderr));
        let out = std::process::Command::new(&exe).output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        String::from_utf8(out.stdout).unwrap().split_whitespace().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn layouts_and_request_numbers_are_the_kernels() {
        let h = from_headers();
        assert_eq!(
            h[..5],
            [
                size_of::<PtpClockTime>() as u64,
                size_of::<PtpSysOffset>() as u64,
                size_of::<PtpSysOffsetExtended>() as u64,
                size_of::<PtpSysOffsetPrecise>() as u64,
                size_of::<PpsFdata>() as u64
            ]
        );
        assert_eq!(h[5..], [PTP_SYS_OFFSET, PTP_SYS_OFFSET_PRECISE, PTP_SYS_OFFSET_EXTENDED, PPS_FETCH]);
    }

    /// A PHC behind the ioctl interface: which calls it supports, what it returns.
    struct FakePhc {
        precise: Option<PhcReading>,
        extended: Option<Vec<PhcReading>>,
        plain: Vec<PhcReading>,
    }

    impl PhcDevice for FakePhc {
        fn sys_offset_precise(&self) -> io::Result<PhcReading> {
            self.precise.ok_or_else(|| io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        }
        fn sys_offset_extended(&self, _: usize) -> io::Result<Vec<PhcReading>> {
            self.extended.clone().ok_or_else(|| io::Error::from_raw_os_error(libc::ENOTTY))
        }
        fn sys_offset(&self, _: usize) -> io::Result<Vec<PhcReading>> {
            Ok(self.plain.clone())
        }
    }

    fn reading(before: i64, phc: i64, after: i64) -> PhcReading {
        PhcReading { system_before_ns: before, phc_ns: phc, system_after_ns: after }
    }

    #[test]
    fn the_best_interface_and_the_fastest_reading_win() {
        let slow = reading(1_000, 37_000_000_002_000, 3_000);
        let fast = reading(10_000, 37_000_000_010_500, 11_000);
        // PRECISE when the driver has it.
        let precise = FakePhc { precise: Some(reading(5, 7, 5)), extended: Some(vec![slow]), plain: vec![] };
        assert_eq!(read_phc(&precise, 5).unwrap(), reading(5, 7, 5));
        // Else EXTENDED, the reading with the least delay.
        let extended = FakePhc { precise: None, extended: Some(vec![slow, fast]), plain: vec![] };
        let best = read_phc(&extended, 5).unwrap();
        assert_eq!(best, fast);
        assert_eq!(best.offset_ns(), 37_000_000_010_500 - 10_500);
        // Else the plain SYS_OFFSET; a reading with a negative delay is no reading.
        let plain = FakePhc { precise: None, extended: None, plain: vec![reading(9, 9, 5), slow] };
        assert_eq!(read_phc(&plain, 5).unwrap(), slow);
        let none = FakePhc { precise: None, extended: None, plain: vec![reading(9, 9, 5)] };
        assert!(read_phc(&none, 5).is_err());
    }

    #[test]
    fn the_refclock_readers_policy_allows_exactly_these_requests() {
        let policy = strata_policy::REFCLOCK.source;
        for request in [PTP_SYS_OFFSET, PTP_SYS_OFFSET_PRECISE, PTP_SYS_OFFSET_EXTENDED] {
            assert!(policy.contains(&format!("\"val\": {request}")), "{request} missing from the refclock policy");
        }
        assert_eq!(policy.matches("\"syscall\": \"ioctl\"").count(), 3);
    }

    #[test]
    fn a_descriptor_that_is_not_a_phc_is_refused_by_the_kernel() {
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(read_phc(&Phc(&null), 5).is_err());
    }
}
