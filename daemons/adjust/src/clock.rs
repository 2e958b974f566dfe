//! The clock backends the adjuster drives (ARCHITECTURE.md, "Keeping time"):
//! - `none`: measure and serve, never adjust (like `chronyd -x`): every change refused;
//! - `simulated`: the model file of `strata_proto::clock_model`, handed over by the
//!   supervisor; a change rewrites the model, every process reads time from it;
//! - `system`: CLOCK_REALTIME through clock_adjtime(2) (`strata_sys::KernelClock`):
//!   frequency with ADJ_FREQUENCY, slews by running that frequency off the correction
//!   until a timer ends the slew (as chrony does; the kernel's adjtime works in whole
//!   microseconds, which would leave every sub-microsecond offset uncorrected), steps
//!   with ADJ_SETOFFSET. The tests only ever read this clock
//!   (modes = 0); README says how to check the writing side on a machine of one's own.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

use strata_proto::clock_model::{ClockModel, RECORD_LEN};
use strata_proto::ipc::{ClockBackendKind, KernelLeap};

pub use strata_proto::ipc::KERNEL_MAX_FREQUENCY_PPM;

/// The most CLOCK_REALTIME's frequency is run off, ppm: its tick moves ±10 %
/// (chrony's limit too), less a margin for the frequency field's rounding.
pub const SYSTEM_MAX_FREQUENCY_PPM: f64 = 99_000.0;

/// A change the policy has already allowed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    /// Correct `offset_s` gradually at up to `rate_ppm` (`ipc::slew_rate_ppm`),
    /// replacing any slew in progress.
    Slew { offset_s: f64, rate_ppm: f64 },
    /// Set the frequency correction.
    Frequency { ppm: f64 },
    /// Move the clock by `offset_s` at once; a slew in progress is cancelled.
    Step { offset_s: f64 },
}

pub enum Backend {
    None,
    System(SlewedClock<strata_sys::KernelClock>),
    Phc(SlewedClock<strata_sys::KernelClock>),
    Simulated(SimulatedClock),
}

/// The clock operations slewing needs from clock_adjtime: a frequency and a step
/// (a PHC has no adjtime-style slew at all; CLOCK_REALTIME's is too coarse).
pub trait TunableClock {
    /// The total frequency offset the clock can be run at, ppm.
    fn max_frequency_ppm(&self) -> f64;
    fn set_frequency(&self, ppm: f64) -> std::io::Result<()>;
    fn step(&self, offset_s: f64) -> std::io::Result<()>;
}

impl TunableClock for strata_sys::KernelClock {
    fn max_frequency_ppm(&self) -> f64 {
        if self.is_realtime() { SYSTEM_MAX_FREQUENCY_PPM } else { KERNEL_MAX_FREQUENCY_PPM }
    }

    fn set_frequency(&self, ppm: f64) -> std::io::Result<()> {
        if !self.is_realtime() {
            return strata_sys::KernelClock::set_frequency(self, ppm);
        }
        // Whole tick microseconds for the bulk, ADJ_FREQUENCY for the rest (chrony's
        // sys_linux.c): within ±500 ppm the tick stays nominal.
        let (tick_us, frequency_ppm) = split_tick(ppm, strata_sys::nominal_tick_us());
        strata_sys::KernelClock::set_frequency_and_tick(self, frequency_ppm, tick_us)
    }
    fn step(&self, offset_s: f64) -> std::io::Result<()> {
        strata_sys::KernelClock::step(self, offset_s)
    }
}

/// A frequency as CLOCK_REALTIME's tick (µs) and the ADJ_FREQUENCY rest (ppm): the
/// tick moves only for rates beyond the frequency field's 500 ppm, so that a clock
/// merely corrected never has its tick touched.
fn split_tick(ppm: f64, nominal_tick_us: f64) -> (i64, f64) {
    let ppm_per_tick_us = 1e6 / nominal_tick_us;
    let ticks = if ppm.abs() <= KERNEL_MAX_FREQUENCY_PPM { 0.0 } else { (ppm / ppm_per_tick_us).round() };
    (nominal_tick_us as i64 + ticks as i64, ppm - ticks * ppm_per_tick_us)
}

/// A kernel clock slewed the way chrony and phc2sys do it: by running its frequency
/// `rate` ppm off the set one until the offset is corrected, then back (the caller's
/// timer calls [`SlewedClock::end_slew`] at [`SlewedClock::slew_end_ns`]).
pub struct SlewedClock<C> {
    clock: C,
    /// Keeps the device open: the dynamic clock id is only valid while it is.
    _device: Option<OwnedFd>,
    /// The frequency correction asked for, ppm.
    frequency_ppm: f64,
    /// An ongoing slew: its rate (signed, ppm) and when it ends (system time, ns).
    slew: Option<(f64, i64)>,
}

impl<C: TunableClock> SlewedClock<C> {
    /// `frequency_ppm`: what the kernel says now; a rate beyond what a correction can
    /// be is a slew a previous adjuster left running, not a correction to keep.
    pub fn new(clock: C, device: Option<OwnedFd>, frequency_ppm: f64) -> SlewedClock<C> {
        let frequency_ppm = frequency_ppm.clamp(-KERNEL_MAX_FREQUENCY_PPM, KERNEL_MAX_FREQUENCY_PPM);
        SlewedClock { clock, _device: device, frequency_ppm, slew: None }
    }

    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The frequency correction asked for, ppm (without a slew in progress).
    pub fn frequency_ppm(&self) -> f64 {
        self.frequency_ppm
    }

    fn apply(&mut self, change: Change, now_ns: i64) -> std::io::Result<()> {
        match change {
            Change::Frequency { ppm } => {
                self.frequency_ppm = ppm;
                let slewing = self.slew.map_or(0.0, |(rate, _)| rate);
                let max_ppm = self.clock.max_frequency_ppm();
                self.clock.set_frequency((ppm + slewing).clamp(-max_ppm, max_ppm))
            }
            Change::Step { offset_s } => {
                self.clock.step(offset_s)?;
                self.end_slew()
            }
            Change::Slew { offset_s, rate_ppm } => {
                if offset_s == 0.0 {
                    return self.end_slew();
                }
                // What the kernel's limit leaves of the rate on this side (at least a
                // little: a correction at the limit must still be slewable back).
                let room_ppm = (self.clock.max_frequency_ppm() - self.frequency_ppm * offset_s.signum()).max(1.0);
                let rate_ppm = strata_proto::ipc::slew_rate_ppm(offset_s, rate_ppm).min(room_ppm);
                let end = now_ns + (offset_s.abs() / (rate_ppm * 1e-6) * 1e9).round() as i64;
                self.slew = Some((rate_ppm.copysign(offset_s), end));
                self.clock.set_frequency(self.frequency_ppm + rate_ppm.copysign(offset_s))
            }
        }
    }

    /// When the slew in progress ends (system time, ns).
    pub fn slew_end_ns(&self) -> Option<i64> {
        self.slew.map(|(_, end)| end)
    }

    pub fn end_slew(&mut self) -> std::io::Result<()> {
        if self.slew.take().is_some() {
            self.clock.set_frequency(self.frequency_ppm)?;
        }
        Ok(())
    }
}

pub struct SimulatedClock {
    file: File,
    model: ClockModel,
    sequence: u64,
}

impl Backend {
    pub fn open(kind: ClockBackendKind, model: Option<OwnedFd>, now_ns: i64) -> Result<Backend, String> {
        match (kind, model) {
            (ClockBackendKind::Phc, Some(device)) => {
                let clock = strata_sys::KernelClock::of_phc(&device);
                let state = clock.read().map_err(|e| format!("not a PTP hardware clock: {e}"))?;
                Ok(Backend::Phc(SlewedClock::new(clock, Some(device), state.frequency_ppm)))
            }
            (ClockBackendKind::Phc, None) => Err("the phc backend needs its device".into()),
            (ClockBackendKind::None, None) => Ok(Backend::None),
            (ClockBackendKind::System, None) => {
                let clock = strata_sys::KernelClock::realtime();
                let state = clock.read().map_err(|e| format!("reading CLOCK_REALTIME: {e}"))?;
                Ok(Backend::System(SlewedClock::new(clock, None, state.frequency_ppm)))
            }
            (ClockBackendKind::Simulated, Some(fd)) => {
                SimulatedClock::open(File::from(fd), now_ns).map(Backend::Simulated)
            }
            (ClockBackendKind::Simulated, None) => Err("the simulated backend needs its model file".into()),
            (kind, Some(_)) => Err(format!("a clock model file came with backend {kind:?}")),
        }
    }

    pub fn kind(&self) -> ClockBackendKind {
        match self {
            Backend::None => ClockBackendKind::None,
            Backend::System(_) => ClockBackendKind::System,
            Backend::Phc(_) => ClockBackendKind::Phc,
            Backend::Simulated(_) => ClockBackendKind::Simulated,
        }
    }

    pub fn frequency_ppm(&self) -> f64 {
        match self {
            Backend::Simulated(c) => c.model.correction_ppm,
            Backend::System(clock) | Backend::Phc(clock) => clock.frequency_ppm(),
            Backend::None => 0.0,
        }
    }

    /// Arm or disarm the leap second (the kernel's, for the system clock; the model
    /// of the simulated clock has none: its leap is only reported).
    pub fn set_leap(&mut self, leap: KernelLeap) -> Result<(), String> {
        match self {
            Backend::System(clock) => clock
                .clock()
                .set_leap(match leap {
                    KernelLeap::None => None,
                    KernelLeap::InsertSecond => Some(true),
                    KernelLeap::DeleteSecond => Some(false),
                })
                .map_err(|e| format!("clock_adjtime: {e}")),
            // A PHC has no leap second of its own (it counts TAI or UTC as set).
            Backend::None | Backend::Simulated(_) | Backend::Phc(_) => Ok(()),
        }
    }

    /// When the slew in progress ends (system time, ns), for the backends that end
    /// it on a timer: [`Backend::end_slew`] is then due.
    pub fn slew_end_ns(&self) -> Option<i64> {
        match self {
            Backend::System(clock) | Backend::Phc(clock) => clock.slew_end_ns(),
            Backend::None | Backend::Simulated(_) => None,
        }
    }

    /// End the slew in progress: the clock runs at its frequency correction again.
    pub fn end_slew(&mut self) -> Result<(), String> {
        match self {
            Backend::System(clock) | Backend::Phc(clock) => clock.end_slew().map_err(|e| format!("clock_adjtime: {e}")),
            Backend::None | Backend::Simulated(_) => Ok(()),
        }
    }

    pub fn apply(&mut self, change: Change, now_ns: i64) -> Result<(), String> {
        match self {
            Backend::None => Err("clock backend `none` never adjusts the clock".into()),
            Backend::System(clock) => clock.apply(change, now_ns).map_err(|e| format!("clock_adjtime: {e}")),
            Backend::Simulated(clock) => clock.apply(change, now_ns),
            Backend::Phc(phc) => phc.apply(change, now_ns).map_err(|e| format!("clock_adjtime on the PHC: {e}")),
        }
    }
}

impl SimulatedClock {
    fn open(file: File, now_ns: i64) -> Result<SimulatedClock, String> {
        let mut record = [0u8; RECORD_LEN];
        let (sequence, model) = match file.read_at(&mut record, 0) {
            Ok(RECORD_LEN) => ClockModel::decode(&record).ok_or("the clock model file is not a valid model")?,
            // A new, empty file: the simulated clock starts equal to the system clock.
            Ok(0) => (0, ClockModel { reference_ns: now_ns, slew_end_ns: now_ns, ..ClockModel::default() }),
            Ok(n) => return Err(format!("the clock model file has {n} bytes, not {RECORD_LEN}")),
            Err(e) => return Err(format!("reading the clock model: {e}")),
        };
        let mut clock = SimulatedClock { file, model, sequence };
        clock.write()?;
        Ok(clock)
    }

    fn write(&mut self) -> Result<(), String> {
        self.sequence += 1;
        self.file
            .write_all_at(&self.model.encode(self.sequence), 0)
            .map_err(|e| format!("writing the clock model: {e}"))
    }

    fn apply(&mut self, change: Change, now_ns: i64) -> Result<(), String> {
        let mut model = self.model.rebased(now_ns);
        match change {
            Change::Slew { offset_s, rate_ppm } => {
                // Positive offset: the clock is behind, so it must gain.
                let rate_ppm = strata_proto::ipc::slew_rate_ppm(offset_s, rate_ppm);
                model.slew_ppm = rate_ppm.copysign(offset_s);
                model.slew_end_ns = if offset_s == 0.0 {
                    now_ns
                } else {
                    now_ns + (offset_s.abs() / (rate_ppm * 1e-6) * 1e9).round() as i64
                };
            }
            Change::Frequency { ppm } => model.correction_ppm = ppm,
            Change::Step { offset_s } => {
                model.offset_s += offset_s;
                model.slew_ppm = 0.0;
                model.slew_end_ns = now_ns;
            }
        }
        self.model = model;
        self.write()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(model: ClockModel) -> SimulatedClock {
        let file = tempfile();
        file.write_all_at(&model.encode(1), 0).unwrap();
        SimulatedClock::open(file, model.reference_ns).unwrap()
    }

    fn tempfile() -> File {
        let path =
            std::env::temp_dir().join(format!("strata-model-{}-{:?}", std::process::id(), std::thread::current().id()));
        let f = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn a_slew_corrects_exactly_the_offset_at_the_given_rate_then_stops() {
        let mut c = clock(ClockModel::default());
        c.apply(Change::Slew { offset_s: 0.001, rate_ppm: 500.0 }, 0).unwrap();
        // 1 ms at 500 ppm takes 2 s.
        assert!((c.model.offset_at(1_000_000_000) - 0.0005).abs() < 1e-9);
        assert!((c.model.offset_at(2_000_000_000) - 0.001).abs() < 1e-9);
        assert!((c.model.offset_at(10_000_000_000) - 0.001).abs() < 1e-9);
        let mut back = clock(ClockModel::default());
        back.apply(Change::Slew { offset_s: -0.001, rate_ppm: 500.0 }, 0).unwrap();
        assert!((back.model.offset_at(5_000_000_000) + 0.001).abs() < 1e-9);
    }

    #[test]
    fn a_step_moves_the_clock_and_cancels_a_slew_and_the_file_follows() {
        let mut c = clock(ClockModel { offset_s: 0.5, frequency_ppm: 30.0, ..ClockModel::default() });
        c.apply(Change::Slew { offset_s: 1.0, rate_ppm: 500.0 }, 0).unwrap();
        c.apply(Change::Step { offset_s: -0.5 }, 1_000_000_000).unwrap();
        let at = |t: i64| c.model.offset_at(t);
        // At 1 s: 0.5 + 30 µs + 500 µs slewed, then −0.5: 530 µs. No more slewing.
        assert!((at(1_000_000_000) - 530e-6).abs() < 1e-9);
        assert!((at(2_000_000_000) - 560e-6).abs() < 1e-9);
        let mut record = [0u8; RECORD_LEN];
        c.file.read_at(&mut record, 0).unwrap();
        assert_eq!(ClockModel::decode(&record).unwrap().1, c.model);
    }

    /// A kernel clock behind the clock_adjtime interface, recording what it is asked.
    #[derive(Default)]
    struct FakePhc {
        calls: std::cell::RefCell<Vec<String>>,
    }

    impl TunableClock for &FakePhc {
        fn max_frequency_ppm(&self) -> f64 {
            KERNEL_MAX_FREQUENCY_PPM
        }
        fn set_frequency(&self, ppm: f64) -> std::io::Result<()> {
            self.calls.borrow_mut().push(format!("freq {ppm}"));
            Ok(())
        }
        fn step(&self, offset_s: f64) -> std::io::Result<()> {
            self.calls.borrow_mut().push(format!("step {offset_s}"));
            Ok(())
        }
    }

    #[test]
    fn a_phc_is_slewed_by_its_frequency_and_set_back_when_done() {
        let fake = FakePhc::default();
        let mut phc = SlewedClock::new(&fake, None, 10.0);
        phc.apply(Change::Slew { offset_s: -0.001, rate_ppm: 500.0 }, 0).unwrap();
        // 1 ms at 500 ppm: 2 s at 10 − 500 ppm.
        assert_eq!(phc.slew_end_ns(), Some(2_000_000_000));
        phc.apply(Change::Frequency { ppm: 12.0 }, 1).unwrap();
        phc.end_slew().unwrap();
        phc.apply(Change::Slew { offset_s: 0.5, rate_ppm: 500.0 }, 0).unwrap();
        phc.apply(Change::Step { offset_s: 0.25 }, 0).unwrap();
        assert_eq!(phc.slew_end_ns(), None);
        // 0.5 s at 12 ppm: the kernel's 500 ppm limit leaves 488 ppm.
        assert_eq!(*fake.calls.borrow(), ["freq -490", "freq -488", "freq 12", "freq 500", "step 0.25", "freq 12"]);
    }

    #[test]
    fn the_system_clock_slews_fast_through_its_tick_and_a_correction_never_moves_it() {
        // At 100 Hz a tick µs is 100 ppm: 83 348.3 ppm is 833 µs more tick and 48.3 ppm.
        let (tick_us, ppm) = split_tick(83_333.3 + 15.0, 10_000.0);
        assert_eq!(tick_us, 10_833);
        assert!((ppm - 48.3).abs() < 1e-6, "{ppm}");
        assert_eq!(split_tick(-83_000.0, 10_000.0), (9_170, 0.0));
        // A correction (up to the 500 ppm ADJ_FREQUENCY takes) leaves the tick alone.
        assert_eq!(split_tick(499.5, 10_000.0), (10_000, 499.5));
        assert_eq!(split_tick(-12.25, 10_000.0), (10_000, -12.25));

        // A slew of a previous adjuster is not taken for a correction.
        let fake = FakePhc::default();
        assert_eq!(SlewedClock::new(&fake, None, 83_000.0).frequency_ppm(), KERNEL_MAX_FREQUENCY_PPM);
    }

    #[test]
    fn a_sub_microsecond_slew_is_corrected_exactly_over_a_second() {
        // adjtime() would round 0.35 µs to nothing; the frequency slews it, at
        // 0.35 ppm for exactly one second.
        let fake = FakePhc::default();
        let mut clock = SlewedClock::new(&fake, None, 15.0);
        clock.apply(Change::Slew { offset_s: 0.35e-6, rate_ppm: 500.0 }, 7).unwrap();
        assert_eq!(clock.slew_end_ns(), Some(1_000_000_007));
        let calls = fake.calls.borrow().clone();
        let ppm: f64 = calls[0].strip_prefix("freq ").unwrap().parse().unwrap();
        assert!((ppm - 15.35).abs() < 1e-9, "{calls:?}");
        // A correction of −12 ppm leaves 512 ppm of room upwards, 488 downwards.
        let mut low = SlewedClock::new(&fake, None, -12.0);
        low.apply(Change::Slew { offset_s: 1.0, rate_ppm: 600.0 }, 0).unwrap();
        low.apply(Change::Slew { offset_s: -1.0, rate_ppm: 600.0 }, 0).unwrap();
        assert_eq!(fake.calls.borrow()[1..], ["freq 500", "freq -500"]);
        // A zero slew cancels the one in progress.
        clock.apply(Change::Slew { offset_s: 0.0, rate_ppm: 500.0 }, 8).unwrap();
        assert_eq!(clock.slew_end_ns(), None);
        assert_eq!(fake.calls.borrow().last().map(String::as_str), Some("freq 15"));
    }

    #[test]
    fn a_descriptor_that_is_not_a_phc_is_refused() {
        let not_a_clock = OwnedFd::from(File::open("/dev/null").unwrap());
        let err = Backend::open(ClockBackendKind::Phc, Some(not_a_clock), 0).err().unwrap();
        assert!(err.starts_with("not a PTP hardware clock"), "{err}");
    }

    #[test]
    fn none_never_changes_anything() {
        let mut b = Backend::open(ClockBackendKind::None, None, 0).unwrap();
        assert!(b.apply(Change::Step { offset_s: 1.0 }, 0).is_err());
        assert!(b.apply(Change::Frequency { ppm: 1.0 }, 0).is_err());
    }

    #[test]
    fn the_system_backend_reports_the_kernel_frequency() {
        // Only a read: tests never move this machine's clock.
        let b = Backend::open(ClockBackendKind::System, None, 0).unwrap();
        let kernel = strata_sys::KernelClock::realtime().read().unwrap().frequency_ppm;
        assert_eq!(b.frequency_ppm(), kernel);
        assert_eq!(b.kind(), ClockBackendKind::System);
    }
}
