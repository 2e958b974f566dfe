//! `strata-simnode --config FILE`: strata's time keeping in one process and one
//! thread, to run under clknetsim (chrony's clock and network simulator) as one of
//! its nodes. A test harness: never installed, and it refuses to start outside the
//! simulation.
//!
//! It is the appliance's time keeping with the process boundaries taken out, not a
//! model of it: the same configuration file and `NtpSettings`, the same sans-IO
//! `Timekeeper` the engine drives, the adjuster's `ClockPolicy` in front of its
//! `system` backend (clock_adjtime on CLOCK_REALTIME, which clknetsim simulates),
//! and the refclock reader's PHC and SHM code. So under clknetsim's `LD_PRELOAD`
//! it steers the simulated clock exactly as the appliance would steer a real one,
//! refusals included.
//!
//! clknetsim intercepts glibc calls only, and one thread: so a `poll()` loop, plain
//! `socket(AF_INET, SOCK_DGRAM, 0)` (no type flags), `recvfrom`/`sendto`, and devices
//! opened with `open` (`strata_sys::open_device`).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, SockaddrIn, recvfrom, sendto, socket};
use strata_adjust::clock::Backend;
use strata_adjust::policy::{Breach, ClockPolicy, Verdict};
use strata_config::{Config, RefclockDriver, UpstreamAddress};
use strata_proto::ipc::{ClockBackendKind, EXIT_DO_NOT_RESPAWN, EngineToAdjuster, RefclockSample};
use strata_sync::discipline::ClockAction;
use strata_sync::refclock::RawSample;
use strata_sync::timekeeper::{Action, Timekeeper, TimekeeperConfig, adjuster_request};
use strata_sync::{LocalTime, Monotonic, SourceId};
use tracing::{info, warn};

const USAGE: &str = "usage: strata-simnode --config FILE [--trace]   (only under clknetsim: see BENCHMARKS.md)\n\
     --trace: every clock update and request on standard error, one line each";

pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-simnode: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let (config_path, trace) = match args {
        [flag, path] if flag == "--config" => (PathBuf::from(path), false),
        [flag, path, t] if flag == "--config" && t == "--trace" => (PathBuf::from(path), true),
        _ => return Err(USAGE.into()),
    };
    under_clknetsim(&std::env::var("CLKNETSIM_NODE").ok(), &std::env::var("LD_PRELOAD").unwrap_or_default(), &maps())?;
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).with_target(false).try_init();
    let config = Config::from_file(&config_path).map_err(|e| e.to_string())?;
    Node::new(&config, trace)?.run()
}

/// This process's memory map, to see that clknetsim's library is really loaded.
fn maps() -> String {
    std::fs::read_to_string("/proc/self/maps").unwrap_or_default()
}

/// clknetsim's addresses (192.168.123.x) exist only inside the simulation: outside
/// it, the node's packets would go to a real network. So it starts only with the
/// preload named, loaded and a node number set.
fn under_clknetsim(node: &Option<String>, preload: &str, maps: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("refusing to run outside clknetsim: {why}"));
    if node.as_deref().is_none_or(|n| n.parse::<u32>().is_err()) {
        return refuse("CLKNETSIM_NODE is not set to a node number");
    }
    let named = preload.split([':', ' ']).any(|p| Path::new(p).file_name().is_some_and(|f| f == "clknetsim.so"));
    if !named {
        return refuse("LD_PRELOAD does not name clknetsim.so");
    }
    if !maps.lines().any(|l| l.ends_with("/clknetsim.so")) {
        return refuse("clknetsim.so is not loaded");
    }
    Ok(())
}

/// A refclock the node reads every 2^dpoll s.
struct Polled {
    index: u16,
    every: Duration,
    next: Instant,
    device: Device,
}

enum Device {
    /// The descriptor clknetsim gives for /dev/ptpN; `tai`: it counts TAI.
    Phc {
        fd: OwnedFd,
        tai: bool,
    },
    Shm(strata_sys::ShmSegment),
}

struct Node {
    system: Timekeeper,
    socket: OwnedFd,
    upstreams: Vec<(SourceId, SocketAddr)>,
    refclocks: Vec<Polled>,
    policy: ClockPolicy,
    backend: Backend,
    origin: Instant,
    random: u64,
    /// `--trace`: write the tracking records and clock requests to standard error.
    trace: bool,
}

fn system_now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

impl Node {
    fn new(config: &Config, trace: bool) -> Result<Node, String> {
        if config.clock.backend.0 != ClockBackendKind::System {
            return Err("strata-simnode steers the simulated clock: [clock] backend must be \"system\"".into());
        }
        let mut upstreams = Vec::new();
        for u in &config.upstream {
            match &u.address {
                UpstreamAddress::Ip(address) => upstreams.push((u.clone(), *address)),
                UpstreamAddress::Name { .. } => return Err(format!("upstream {}: an IP address, please", u.address)),
            }
        }
        let settings = strata::refclocks::ntp_settings(config, &upstreams, None);
        let mut timekeeper = TimekeeperConfig::from_settings(
            &settings,
            settings.max_slew_rate_ppm,
            strata_policy::clock::MAX_FREQUENCY_PPM,
        )
        .map_err(|e| format!("discipline: {e}"))?;
        timekeeper.log_records |= trace;
        let origin = Instant::now();
        let mut random = system_now_ns() as u64 | 1;
        let mut system = Timekeeper::new(timekeeper, Monotonic(0), LocalTime(system_now_ns()), &mut || {
            random = xorshift(random);
            random
        });
        system.set_adjustable(true);
        let backend = Backend::open(ClockBackendKind::System, None, system_now_ns())?;
        // The appliance's first start is now: the makestep window runs from here,
        // on the node's monotonic clock (`Node::now`, 0 at the start), as the
        // adjuster's runs on CLOCK_BOOTTIME.
        let window_ns = (strata_policy::clock::STEP_WINDOW_S * 1e9) as i64;
        let policy =
            ClockPolicy::new(strata_policy::clock::STEP_BUDGET_PER_BOOT, window_ns, settings.max_slew_rate_ppm);
        // No type flags: clknetsim's socket() refuses them.
        let socket = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::empty(), None)
            .map_err(|e| format!("socket: {e}"))?;
        let mut refclocks = Vec::new();
        for (i, (r, driver)) in
            config.refclock.iter().zip(strata::refclocks::driver_settings(&config.refclock)).enumerate()
        {
            use strata_proto::ipc::RefclockDriverSettings as D;
            let (device, dpoll) = match (&r.driver, driver) {
                (RefclockDriver::Phc(path), D::Phc { tai, dpoll }) => {
                    let fd = strata_sys::open_device(path, true).map_err(|e| format!("{}: {e}", path.display()))?;
                    (Device::Phc { fd, tai }, dpoll)
                }
                (RefclockDriver::Shm(unit), D::Shm { unit: _, dpoll }) => {
                    let key = strata_refclock::shm::key(*unit);
                    let segment = strata_sys::ShmSegment::attach(key).map_err(|e| format!("SHM {unit}: {e}"))?;
                    (Device::Shm(segment), dpoll)
                }
                _ => return Err(format!("refclock {i}: strata-simnode reads PHC and SHM refclocks only")),
            };
            let every = Duration::from_secs_f64(2f64.powi(i32::from(dpoll)));
            refclocks.push(Polled { index: i as u16, every, next: origin, device });
        }
        let upstreams = system.upstreams().collect();
        info!(upstreams = config.upstream.len(), refclocks = refclocks.len(), "strata-simnode started");
        Ok(Node { system, socket, upstreams, refclocks, policy, backend, origin, random, trace })
    }

    fn now(&self) -> Monotonic {
        Monotonic(self.origin.elapsed().as_nanos() as i64)
    }

    fn run(mut self) -> Result<(), String> {
        let mut buf = [0u8; 1024];
        loop {
            self.end_slew_if_due();
            // What the adjuster's status tells the engine.
            let steps = self.policy.automatic_steps_allowed(self.now().0) && self.policy.steps_left > 0;
            self.system.set_automatic_steps_allowed(steps);
            self.read_refclocks();
            let mut random = self.random;
            let actions = self.system.handle_timer(LocalTime(system_now_ns()), &mut || {
                random = xorshift(random);
                random
            });
            self.random = random;
            self.carry_out(actions);

            let timeout = self.next_wakeup();
            let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
            let ready = poll(&mut fds, timeout).map_err(|e| format!("poll: {e}"))?;
            if ready == 0 || !fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN)) {
                continue;
            }
            let Ok((len, Some(from))) = recvfrom::<SockaddrIn>(std::os::fd::AsRawFd::as_raw_fd(&self.socket), &mut buf)
            else {
                continue;
            };
            // The simulated CPU is infinitely fast: read now is when it arrived.
            let t4 = LocalTime(system_now_ns());
            let from = SocketAddr::V4(from.into());
            let Some(&(source, _)) = self.upstreams.iter().find(|(_, a)| *a == from) else { continue };
            match self.system.handle_packet(source, &buf[..len], t4, self.now()) {
                Ok(actions) => self.carry_out(actions),
                Err(why) if self.trace => eprintln!("trace {} ignored {from} {why:?}", t4.0),
                Err(_) => {}
            }
        }
    }

    /// Until the next refclock read or upstream poll, in poll()'s milliseconds.
    fn next_wakeup(&self) -> PollTimeout {
        let now = Instant::now();
        let mut wait = Duration::from_secs(60);
        if let Some(next) = self.refclocks.iter().map(|p| p.next).min() {
            wait = wait.min(next.saturating_duration_since(now));
        }
        let due = [self.system.next_poll().map(|at| at.0), self.backend.slew_end_ns()];
        for at_ns in due.into_iter().flatten() {
            let wait_s = LocalTime(at_ns).seconds_since(LocalTime(system_now_ns())).clamp(0.0, 60.0);
            wait = wait.min(Duration::from_secs_f64(wait_s));
        }
        // Rounded up: a wake-up before the due time would only poll again.
        PollTimeout::try_from(wait.as_micros().div_ceil(1000) as i32).unwrap_or(PollTimeout::MAX)
    }

    fn read_refclocks(&mut self) {
        let now = Instant::now();
        let mut samples = Vec::new();
        for p in self.refclocks.iter_mut().filter(|p| p.next <= now) {
            p.next += p.every;
            if p.next <= now {
                p.next = now + p.every;
            }
            let sample = match &p.device {
                Device::Phc { fd, tai } => strata_refclock::read_phc(p.index, fd.as_fd(), *tai),
                Device::Shm(segment) => strata_refclock::read_shm(p.index, segment),
            };
            let max_age = strata_refclock::MIN_MAX_AGE.max(2 * p.every);
            match sample.and_then(|s| s.map(|s| strata_refclock::fresh(s, max_age)).transpose()) {
                Ok(Some(sample)) => samples.push(sample),
                Ok(None) => {}
                Err(e) => warn!(refclock = p.index, "sample rejected: {e}"),
            }
        }
        for RefclockSample { refclock, system_time_ns, offset_s, dispersion_s } in samples {
            let raw = RawSample { time: LocalTime(system_time_ns), offset_s, dispersion_s };
            match self.system.handle_refclock_sample(usize::from(refclock), raw, self.now()) {
                Ok(actions) => self.carry_out(actions),
                Err(e) => warn!(refclock, "{e}"),
            }
        }
    }

    fn carry_out(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { source, packet, len } => {
                    let Some(&(_, SocketAddr::V4(to))) = self.upstreams.iter().find(|(s, _)| *s == source) else {
                        continue;
                    };
                    let to = SockaddrIn::from(to);
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&self.socket);
                    if let Err(e) = sendto(fd, &packet[..len], &to, MsgFlags::empty()) {
                        warn!(%to, "request not sent: {e}");
                    }
                }
                Action::Clock(request) => {
                    if self.trace {
                        eprintln!("trace {} {request:?}", system_now_ns());
                    }
                    self.adjust(request)
                }
                Action::Log(strata_proto::ipc::LogRecord::Tracking {
                    time_unix_ns,
                    offset_s,
                    frequency_ppm,
                    skew_ppm,
                    root_dispersion_s,
                    ..
                }) if self.trace => {
                    eprintln!(
                        "trace {time_unix_ns} tracking offset {offset_s:.9} freq {frequency_ppm:.6} skew {skew_ppm:.6} rootdisp {root_dispersion_s:.9}"
                    );
                }
                Action::Log(strata_proto::ipc::LogRecord::Statistics {
                    time_unix_ns,
                    source,
                    offset_s,
                    jitter_s,
                    ..
                }) if self.trace => {
                    eprintln!("trace {time_unix_ns} statistics {source} offset {offset_s:.9} jitter {jitter_s:.9}");
                }
                Action::Log(strata_proto::ipc::LogRecord::Measurement {
                    time_unix_ns,
                    source,
                    offset_s,
                    delay_s,
                    dispersion_s,
                    interleaved,
                    ..
                }) if self.trace => {
                    let mode = if interleaved { "interleaved" } else { "basic" };
                    eprintln!(
                        "trace {time_unix_ns} measurement {source} offset {offset_s:.9} delay {delay_s:.9} dispersion {dispersion_s:.9} {mode}"
                    );
                }
                Action::Failover(f) => info!(from = %f.from, to = %f.to, "selected a new system peer"),
                Action::Notice(text) => warn!("{text}"),
                Action::Serve(_) | Action::Drift { .. } | Action::Log(_) => {}
            }
        }
    }

    /// The adjuster's slew timer.
    fn end_slew_if_due(&mut self) {
        if self.backend.slew_end_ns().is_some_and(|end| end <= system_now_ns())
            && let Err(e) = self.backend.end_slew()
        {
            warn!("ending a slew: {e}");
        }
    }

    /// What the adjuster process does with a request, without the channel.
    fn adjust(&mut self, action: ClockAction) {
        let request = adjuster_request(action);
        let now_ns = system_now_ns();
        let boot_ns = self.now().0;
        if let EngineToAdjuster::SetLeap(leap) = request {
            if let Err(e) = self.backend.set_leap(leap) {
                warn!("refused: {e}");
            }
            return;
        }
        match self.policy.check(&request, boot_ns) {
            None => {}
            Some(Err(Breach::Violation(reason))) => warn!("protocol violation: {reason}"),
            Some(Err(Breach::Panic(reason))) => {
                tracing::error!("{reason}: exiting, not to be re-spawned");
                std::process::exit(i32::from(EXIT_DO_NOT_RESPAWN));
            }
            Some(Ok((kind, Verdict::Refuse(reason)))) => warn!(request = ?kind, "refused: {reason}"),
            Some(Ok((kind, Verdict::Apply(change)))) => match self.backend.apply(change, now_ns) {
                Ok(()) => {
                    self.policy.applied(change);
                    if let strata_adjust::clock::Change::Step { offset_s } = change {
                        info!(offset_s, steps_left = self.policy.steps_left, "stepped the clock");
                    }
                }
                Err(reason) => warn!(request = ?kind, "refused: {reason}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_refuses_to_start_outside_clknetsim() {
        let maps = "7f00-7f01 r-xp 0 08:01 12 /work/target/clknetsim/clknetsim.so\n";
        let ok = under_clknetsim(&Some("2".into()), "/work/target/clknetsim/clknetsim.so", maps);
        assert_eq!(ok, Ok(()));
        for (node, preload, maps) in [
            (None, "/x/clknetsim.so", maps),
            (Some("two".to_string()), "/x/clknetsim.so", maps),
            (Some("2".to_string()), "", maps),
            (Some("2".to_string()), "/x/libfaketime.so", maps),
            (Some("2".to_string()), "/x/clknetsim.so", "7f00-7f01 r-xp 0 08:01 12 /usr/lib/libc.so.6\n"),
        ] {
            let e = under_clknetsim(&node, preload, maps).unwrap_err();
            assert!(e.starts_with("refusing to run outside clknetsim"), "{e}");
        }
    }
}
