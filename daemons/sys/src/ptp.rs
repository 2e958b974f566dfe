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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

/// linux/pps.h struct pps_kparams: a PPS source's capture mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PpsKparams {
    pub api_version: i32,
    pub mode: i32,
    pub assert_off_tu: PpsKtime,
    pub clear_off_tu: PpsKtime,
}

/// linux/pps.h mode bits: capture the assert / clear edge.
pub const PPS_CAPTUREASSERT: i32 = 0x01;
pub const PPS_CAPTURECLEAR: i32 = 0x02;

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
/// PPS_GETPARAMS = _IOR('p', 0xa1, struct pps_kparams *).
pub const PPS_GETPARAMS: u64 = ioc(IOC_READ, b'p', 0xa1, size_of::<*mut PpsKparams>());
/// PPS_SETPARAMS = _IOW('p', 0xa2, struct pps_kparams *): needs CAP_SYS_TIME.
pub const PPS_SETPARAMS: u64 = ioc(IOC_WRITE, b'p', 0xa2, size_of::<*mut PpsKparams>());
/// PPS_GETCAP = _IOR('p', 0xa3, int *): the modes the device supports.
pub const PPS_GETCAP: u64 = ioc(IOC_READ, b'p', 0xa3, size_of::<*mut i32>());

use std::mem::size_of;

/// linux/pps.h PPS_TIME_INVALID: in `pps_fdata.timeout.flags`, "wait forever".
pub const PPS_TIME_INVALID: u32 = 1 << 0;

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

/// Which edge of the pulse marks the second (chrony's PPS `clear` option).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PpsEdge {
    Assert,
    Clear,
}

/// An RFC 2783 PPS source, as the Linux pps uapi exposes it.
pub trait PpsDevice {
    /// PPS_FETCH with a zero timeout: the latest timestamps of both edges, without
    /// waiting for the next pulse.
    fn fetch(&self) -> io::Result<PpsKinfo>;
}

/// One pulse: the system clock's time of its edge (the kernel's timestamp), ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pulse {
    pub system_time_ns: i64,
    pub sequence: u32,
}

/// Reads the pulses of one PPS device, each once.
#[derive(Clone, Debug)]
pub struct PulseReader {
    edge: PpsEdge,
    last_sequence: Option<u32>,
}

impl PulseReader {
    pub fn new(edge: PpsEdge) -> PulseReader {
        PulseReader { edge, last_sequence: None }
    }

    /// The newest pulse, if there was one since the last call (chrony's PPS driver
    /// polls the same way: a fetch every `dpoll`, a pulse counts when its sequence
    /// number moved). An edge the device does not capture never moves.
    pub fn read(&mut self, device: &impl PpsDevice) -> io::Result<Option<Pulse>> {
        let info = device.fetch()?;
        let (sequence, time) = match self.edge {
            PpsEdge::Assert => (info.assert_sequence, info.assert_tu),
            PpsEdge::Clear => (info.clear_sequence, info.clear_tu),
        };
        if self.last_sequence == Some(sequence) {
            return Ok(None);
        }
        self.last_sequence = Some(sequence);
        // Sequence 0 with no time: the edge has not been seen since the device appeared.
        if sequence == 0 && time.sec == 0 && time.nsec == 0 {
            return Ok(None);
        }
        if !(0..1_000_000_000).contains(&time.nsec) || time.sec <= 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("PPS timestamp {}.{}", time.sec, time.nsec),
            ));
        }
        let system_time_ns = time
            .sec
            .checked_mul(1_000_000_000)
            .and_then(|ns| ns.checked_add(i64::from(time.nsec)))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "PPS timestamp out of range"))?;
        Ok(Some(Pulse { system_time_ns, sequence }))
    }
}

/// Setting up a PPS source's capture mode: done once by the supervisor, which
/// still holds CAP_SYS_TIME when it opens the device (the reader never could).
pub trait PpsControl {
    /// PPS_GETCAP: the mode bits the device supports.
    fn capabilities(&self) -> io::Result<i32>;
    fn params(&self) -> io::Result<PpsKparams>;
    fn set_params(&self, params: &PpsKparams) -> io::Result<()>;
}

/// Make sure the device timestamps `edge` (chrony's PPS driver does the same at
/// start: many drivers capture only the assert edge by default). Returns whether
/// the mode had to change; an edge the device cannot capture is an error.
pub fn enable_capture(device: &impl PpsControl, edge: PpsEdge) -> io::Result<bool> {
    let bit = match edge {
        PpsEdge::Assert => PPS_CAPTUREASSERT,
        PpsEdge::Clear => PPS_CAPTURECLEAR,
    };
    if device.capabilities()? & bit == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("the device cannot timestamp the {edge:?} edge (PPS_GETCAP)").to_lowercase(),
        ));
    }
    let mut params = device.params()?;
    if params.mode & bit != 0 {
        return Ok(false);
    }
    params.mode |= bit;
    device.set_params(&params)?;
    Ok(true)
}

/// A PPS device descriptor (`/dev/ppsN`, opened by the supervisor).
pub struct Pps<F: AsFd>(pub F);

impl<F: AsFd> PpsDevice for Pps<F> {
    fn fetch(&self) -> io::Result<PpsKinfo> {
        // timeout 0 with PPS_TIME_INVALID clear: the kernel returns at once.
        let mut fdata = PpsFdata::default();
        // SAFETY: `fdata` is a valid, exclusively borrowed `struct pps_fdata` (layout
        // checked against the uapi headers by the tests); PPS_FETCH reads and writes
        // exactly that struct through the pointer.
        let rc =
            unsafe { libc::ioctl(self.0.as_fd().as_raw_fd(), PPS_FETCH as libc::Ioctl, &mut fdata as *mut PpsFdata) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(fdata.info) }
    }
}

impl<F: AsFd> PpsControl for Pps<F> {
    fn capabilities(&self) -> io::Result<i32> {
        let mut mode: i32 = 0;
        // SAFETY: PPS_GETCAP writes one int through the pointer, which points at
        // `mode`, a live and exclusively borrowed i32.
        let rc = unsafe { libc::ioctl(self.0.as_fd().as_raw_fd(), PPS_GETCAP as libc::Ioctl, &mut mode as *mut i32) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(mode) }
    }

    fn params(&self) -> io::Result<PpsKparams> {
        let mut params = PpsKparams::default();
        // SAFETY: PPS_GETPARAMS writes one `struct pps_kparams` (layout checked
        // against the uapi headers) through the pointer to `params`.
        let rc = unsafe {
            libc::ioctl(self.0.as_fd().as_raw_fd(), PPS_GETPARAMS as libc::Ioctl, &mut params as *mut PpsKparams)
        };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(params) }
    }

    fn set_params(&self, params: &PpsKparams) -> io::Result<()> {
        // SAFETY: PPS_SETPARAMS only reads one `struct pps_kparams` through the
        // pointer, which points at `params` for the duration of the call.
        let rc = unsafe {
            libc::ioctl(self.0.as_fd().as_raw_fd(), PPS_SETPARAMS as libc::Ioctl, params as *const PpsKparams)
        };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
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
#include <stddef.h>
#include <linux/ptp_clock.h>
#include <linux/pps.h>
int main(void) {
  printf("%zu %zu %zu %zu %zu\n", sizeof(struct ptp_clock_time), sizeof(struct ptp_sys_offset),
         sizeof(struct ptp_sys_offset_extended), sizeof(struct ptp_sys_offset_precise), sizeof(struct pps_fdata));
  printf("%lu %lu %lu %lu\n", (unsigned long)PTP_SYS_OFFSET, (unsigned long)PTP_SYS_OFFSET_PRECISE,
         (unsigned long)PTP_SYS_OFFSET_EXTENDED, (unsigned long)PPS_FETCH);
  printf("%zu %zu %zu %zu %zu %zu %zu %d\n", sizeof(struct pps_ktime), sizeof(struct pps_kinfo),
         offsetof(struct pps_kinfo, clear_sequence), offsetof(struct pps_kinfo, assert_tu),
         offsetof(struct pps_kinfo, clear_tu), offsetof(struct pps_kinfo, current_mode),
         offsetof(struct pps_fdata, timeout), PPS_TIME_INVALID);
  printf("%zu %zu %zu %lu %lu %lu %d %d\n", sizeof(struct pps_kparams), offsetof(struct pps_kparams, mode),
         offsetof(struct pps_kparams, clear_off_tu), (unsigned long)PPS_GETPARAMS, (unsigned long)PPS_SETPARAMS,
         (unsigned long)PPS_GETCAP, PPS_CAPTUREASSERT, PPS_CAPTURECLEAR);
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
        assert_eq!(h[5..9], [PTP_SYS_OFFSET, PTP_SYS_OFFSET_PRECISE, PTP_SYS_OFFSET_EXTENDED, PPS_FETCH]);
        assert_eq!(
            h[17..],
            [
                size_of::<PpsKparams>() as u64,
                std::mem::offset_of!(PpsKparams, mode) as u64,
                std::mem::offset_of!(PpsKparams, clear_off_tu) as u64,
                PPS_GETPARAMS,
                PPS_SETPARAMS,
                PPS_GETCAP,
                PPS_CAPTUREASSERT as u64,
                PPS_CAPTURECLEAR as u64,
            ]
        );
        assert_eq!(
            h[9..17],
            [
                size_of::<PpsKtime>() as u64,
                size_of::<PpsKinfo>() as u64,
                std::mem::offset_of!(PpsKinfo, clear_sequence) as u64,
                std::mem::offset_of!(PpsKinfo, assert_tu) as u64,
                std::mem::offset_of!(PpsKinfo, clear_tu) as u64,
                std::mem::offset_of!(PpsKinfo, current_mode) as u64,
                std::mem::offset_of!(PpsFdata, timeout) as u64,
                u64::from(PPS_TIME_INVALID),
            ]
        );
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
        for request in [PTP_SYS_OFFSET, PTP_SYS_OFFSET_PRECISE, PTP_SYS_OFFSET_EXTENDED, PPS_FETCH] {
            assert!(policy.contains(&format!("\"val\": {request}")), "{request} missing from the refclock policy");
        }
        assert_eq!(policy.matches("\"syscall\": \"ioctl\"").count(), 4);
    }

    /// A PPS source's capture mode behind the ioctl interface.
    struct FakeModes {
        capabilities: i32,
        params: std::cell::Cell<PpsKparams>,
        set: std::cell::Cell<u32>,
    }

    impl PpsControl for FakeModes {
        fn capabilities(&self) -> io::Result<i32> {
            Ok(self.capabilities)
        }
        fn params(&self) -> io::Result<PpsKparams> {
            Ok(self.params.get())
        }
        fn set_params(&self, params: &PpsKparams) -> io::Result<()> {
            self.set.set(self.set.get() + 1);
            self.params.set(*params);
            Ok(())
        }
    }

    #[test]
    fn the_configured_edge_is_captured_and_nothing_else_changes() {
        const OFFSETASSERT: i32 = 0x10;
        let modes = |capabilities, mode| FakeModes {
            capabilities,
            params: std::cell::Cell::new(PpsKparams { api_version: 1, mode, ..PpsKparams::default() }),
            set: std::cell::Cell::new(0),
        };
        // Assert already captured: left alone.
        let device = modes(PPS_CAPTUREASSERT | PPS_CAPTURECLEAR, PPS_CAPTUREASSERT | OFFSETASSERT);
        assert!(!enable_capture(&device, PpsEdge::Assert).unwrap());
        assert_eq!(device.set.get(), 0);
        // Clear wanted: added, the other bits kept.
        assert!(enable_capture(&device, PpsEdge::Clear).unwrap());
        assert_eq!(device.params.get().mode, PPS_CAPTUREASSERT | PPS_CAPTURECLEAR | OFFSETASSERT);
        // A device that cannot capture the clear edge: a clear error, no change.
        let assert_only = modes(PPS_CAPTUREASSERT, PPS_CAPTUREASSERT);
        let e = enable_capture(&assert_only, PpsEdge::Clear).unwrap_err();
        assert!(e.to_string().contains("cannot timestamp the clear edge"), "{e}");
        assert_eq!(assert_only.set.get(), 0);
    }

    #[test]
    fn a_file_that_is_no_pps_device_is_refused_by_the_kernel() {
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(enable_capture(&Pps(&null), PpsEdge::Assert).is_err());
    }

    /// A PPS source behind PPS_FETCH: the kernel's `pps_kinfo` as the test sets it.
    struct FakePps(std::cell::Cell<PpsKinfo>);

    impl PpsDevice for FakePps {
        fn fetch(&self) -> io::Result<PpsKinfo> {
            Ok(self.0.get())
        }
    }

    fn ktime(sec: i64, nsec: i32) -> PpsKtime {
        PpsKtime { sec, nsec, flags: 0 }
    }

    #[test]
    fn each_pulse_is_read_once_on_its_edge() {
        let device = FakePps(std::cell::Cell::new(PpsKinfo::default()));
        let mut assert = PulseReader::new(PpsEdge::Assert);
        let mut clear = PulseReader::new(PpsEdge::Clear);
        // A fresh device: no edge seen yet.
        assert_eq!(assert.read(&device).unwrap(), None);
        // A pulse: asserted 20 µs before the second, cleared 100 ms later.
        device.0.set(PpsKinfo {
            assert_sequence: 1,
            assert_tu: ktime(1_699_999_999, 999_980_000),
            clear_sequence: 1,
            clear_tu: ktime(1_700_000_000, 99_980_000),
            ..PpsKinfo::default()
        });
        assert_eq!(
            assert.read(&device).unwrap(),
            Some(Pulse { system_time_ns: 1_699_999_999_999_980_000, sequence: 1 })
        );
        assert_eq!(
            clear.read(&device).unwrap(),
            Some(Pulse { system_time_ns: 1_700_000_000_099_980_000, sequence: 1 })
        );
        // Polled again before the next pulse: nothing new.
        assert_eq!(assert.read(&device).unwrap(), None);
        // A device that captures only the assert edge: the clear reader sees nothing.
        let mut info = device.0.get();
        info.assert_sequence = 2;
        info.assert_tu = ktime(1_700_000_000, 999_980_000);
        device.0.set(info);
        assert_eq!(clear.read(&device).unwrap(), None);
        assert_eq!(assert.read(&device).unwrap().unwrap().sequence, 2);
    }

    #[test]
    fn an_absurd_pulse_timestamp_is_an_error() {
        for tu in [ktime(1_700_000_000, 1_000_000_000), ktime(1_700_000_000, -1), ktime(-5, 0), ktime(i64::MAX, 0)] {
            let device =
                FakePps(std::cell::Cell::new(PpsKinfo { assert_sequence: 7, assert_tu: tu, ..Default::default() }));
            assert!(PulseReader::new(PpsEdge::Assert).read(&device).is_err(), "{tu:?}");
        }
    }

    #[test]
    fn a_descriptor_that_is_not_a_pps_source_is_refused_by_the_kernel() {
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(PulseReader::new(PpsEdge::Assert).read(&Pps(&null)).is_err());
    }

    #[test]
    fn a_descriptor_that_is_not_a_phc_is_refused_by_the_kernel() {
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(read_phc(&Phc(&null), 5).is_err());
    }
}
