//! The supervisor's part in reference clocks: open what the reader may not (bind the
//! SOCK sockets, open /dev/ptpN and /dev/ppsN), and turn the `[[refclock]]` tables
//! into the reader's and the engine's settings (the engine's whole `NtpSettings` too).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use strata_config::{Config, Refclock, RefclockDriver, Upstream};
use strata_proto::ipc::{
    NtpSettings, PpsDriverSettings, PpsLock, RateLimitSettings, RefclockDriverSettings, RefclockSourceSettings,
    Resource, UpstreamSettings,
};
use strata_sys::ptp::{Pps, PpsEdge};
use tracing::{info, warn};

/// Bind or open each refclock's device: `(resource, descriptor)` for the reader.
/// SHM needs nothing: the reader attaches gpsd's segment itself, before its sandbox.
pub fn open(refclocks: &[Refclock]) -> Result<Vec<(Resource, OwnedFd)>, (PathBuf, std::io::Error)> {
    let mut resources = Vec::new();
    for (i, r) in refclocks.iter().enumerate() {
        let refclock = i as u16;
        match &r.driver {
            RefclockDriver::Sock(path) => {
                let _ = std::fs::remove_file(path);
                let socket = std::os::unix::net::UnixDatagram::bind(path).map_err(|e| (path.clone(), e))?;
                resources.push((Resource::SockSocket { refclock }, OwnedFd::from(socket)));
            }
            // Read-write: Linux ≥ 6.15 requires it for a PHC's external timestamps.
            RefclockDriver::Phc(path) => {
                let device =
                    std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| (path.clone(), e))?;
                resources.push((Resource::PhcRefclock { refclock }, OwnedFd::from(device)));
            }
            // PPS_FETCH needs no write access (RFC 2783 time_pps_fetch; the Linux pps
            // driver checks none), and PPS_SETPARAMS needs CAP_SYS_TIME, which the
            // reader does not have: read-only is all it can use.
            RefclockDriver::Pps(path) => {
                let device = std::fs::File::open(path).map_err(|e| (path.clone(), e))?;
                // The reader cannot change the capture mode; we still can (root,
                // before our capabilities are trimmed): make sure the edge it reads
                // is timestamped.
                let edge = if r.clear_edge() { PpsEdge::Clear } else { PpsEdge::Assert };
                match strata_sys::ptp::enable_capture(&Pps(&device), edge) {
                    Ok(true) => info!(device = %path.display(), ?edge, "PPS capture enabled"),
                    Ok(false) => {}
                    // Development mode (no CAP_SYS_TIME): the device's own mode stands.
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                        warn!(device = %path.display(), ?edge, "cannot set the PPS capture mode without CAP_SYS_TIME: {e}")
                    }
                    // ENOTTY: the kernel knows no PPS ioctl on this file.
                    Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOTTY as i32) => {
                        let why = format!("not a PPS device (PPS_GETCAP: {e})");
                        return Err((path.clone(), std::io::Error::new(e.kind(), why)));
                    }
                    Err(e) => return Err((path.clone(), e)),
                }
                resources.push((Resource::PpsRefclock { refclock }, OwnedFd::from(device)));
            }
            RefclockDriver::Shm(_) => {}
        }
    }
    Ok(resources)
}

/// The reader's settings, one per refclock in configuration order.
pub fn driver_settings(refclocks: &[Refclock]) -> Vec<RefclockDriverSettings> {
    refclocks
        .iter()
        .map(|r| match &r.driver {
            RefclockDriver::Sock(_) => RefclockDriverSettings::Sock,
            RefclockDriver::Shm(unit) => RefclockDriverSettings::Shm { unit: *unit, dpoll: dpoll(r) },
            RefclockDriver::Phc(_) => RefclockDriverSettings::Phc { tai: r.tai, dpoll: dpoll(r) },
            RefclockDriver::Pps(_) => RefclockDriverSettings::Pps(PpsDriverSettings {
                dpoll: dpoll(r),
                clear: r.clear_edge(),
                offset_s: r.offset,
                lock: locked(refclocks, r).map(|(index, locked)| PpsLock {
                    refclock: index as u16,
                    offset_s: locked.offset,
                    max_age_pulses: r.maxlockage.0,
                }),
            }),
        })
        .collect()
}

/// The engine's settings: the server, the resolved upstreams, the clock's rules and
/// the refclocks as sources (the engine and `strata-simnode` take the same).
pub fn ntp_settings(
    config: &Config,
    upstreams: &[(Upstream, SocketAddr)],
    initial_frequency: Option<(f64, f64)>,
) -> NtpSettings {
    let server = &config.server;
    NtpSettings {
        local_stratum: server.local_stratum.map(|s| s.0 as u8),
        access: server.access_rules(),
        ratelimit: server.ratelimit.map(|r| RateLimitSettings {
            interval_log2: r.interval.0,
            burst: r.burst.0 as u8,
            leak_log2: r.leak.0 as u8,
            kod_log2: r.kod.map(|k| k.0 as u8),
        }),
        client_log_limit_bytes: u64::from(server.client_log_limit.0),
        kernel_tx_timestamps: server.kernel_tx_timestamps,
        upstreams: upstreams
            .iter()
            .map(|(u, address)| UpstreamSettings {
                address: *address,
                iburst: u.iburst,
                minpoll: u.minpoll.0,
                maxpoll: u.maxpoll.0.max(u.minpoll.0),
                prefer: u.prefer,
                noselect: u.noselect,
                trust: u.trust,
                require: u.require,
                max_delay_s: u.maxdelay,
                version: u.version.0 as u8,
                xleave: u.xleave,
            })
            .collect(),
        makestep: config.clock.makestep.map(|m| (m.threshold, m.limit)),
        minsources: config.clock.minsources,
        initial_frequency,
        leap_sec_mode: config.clock.leapsecmode,
        selection: config.clock.selection(),
        max_slew_rate_ppm: slew_rate_ppm(config),
        log_records: config.logs.as_ref().is_some_and(|l| !l.kinds.is_empty()),
        refclocks: source_settings(&config.refclock),
    }
}

/// chrony's `maxslewrate` as configured, held to the adjuster's policy (absent: the
/// policy's rate); the adjuster and the engine are both told it.
pub fn slew_rate_ppm(config: &Config) -> f64 {
    let policy_ppm = strata_policy::clock::MAX_SLEW_RATE_PPM;
    config.clock.maxslewrate.map_or(policy_ppm, |rate| rate.0.min(policy_ppm))
}

/// The engine's settings, one per refclock in configuration order.
pub fn source_settings(refclocks: &[Refclock]) -> Vec<RefclockSourceSettings> {
    refclocks
        .iter()
        .map(|r| {
            let mut refid = [0u8; 4];
            for (i, b) in r.refid.bytes().take(4).enumerate() {
                refid[i] = b;
            }
            let polled = r.driver.is_polled().then(|| dpoll(r));
            RefclockSourceSettings {
                refid,
                offset_s: r.offset,
                delay_s: r.delay,
                precision_s: r.precision,
                stratum: r.stratum,
                prefer: r.prefer,
                noselect: r.noselect,
                trust: r.trust,
                require: r.require,
                poll: r.poll.0,
                filter_length: strata_sync::refclock::filter_length(usize::from(r.filter.0), r.poll.0, polled) as u16,
                max_dispersion_s: r.maxdispersion.map(|m| m.0),
                pulse_unlocked: matches!(r.driver, RefclockDriver::Pps(_)) && r.lock.is_none(),
            }
        })
        .collect()
}

/// chrony reads a polled driver at most once per poll: dpoll ≤ poll.
fn dpoll(r: &Refclock) -> i8 {
    r.dpoll.0.min(r.poll.0)
}

/// The refclock a PPS is locked to (checked by the configuration: it exists and is
/// not a PPS).
fn locked<'a>(refclocks: &'a [Refclock], pps: &Refclock) -> Option<(usize, &'a Refclock)> {
    let refid = pps.lock.as_ref()?.get_ref();
    refclocks.iter().enumerate().find(|(_, r)| !matches!(r.driver, RefclockDriver::Pps(_)) && &r.refid == refid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Vec<Refclock> {
        strata_config::Config::from_str(text, std::path::Path::new("t.toml")).unwrap().refclock
    }

    #[test]
    fn a_pps_locked_to_nmea_gets_its_index_and_offset() {
        let r = config(
            "[[refclock]]\ndriver = \"pps:/dev/pps0\"\nlock = \"NMEA\"\nclear = true\noffset = 0.000002\n\
             [[refclock]]\ndriver = \"shm:0\"\nrefid = \"NMEA\"\noffset = 0.2\nmaxlockage = 5\n",
        );
        let [RefclockDriverSettings::Pps(pps), RefclockDriverSettings::Shm { unit: 0, dpoll: 0 }] =
            &driver_settings(&r)[..]
        else {
            panic!("{:?}", driver_settings(&r))
        };
        assert_eq!(
            *pps,
            PpsDriverSettings {
                dpoll: 0,
                clear: true,
                offset_s: 0.000_002,
                lock: Some(PpsLock { refclock: 1, offset_s: 0.2, max_age_pulses: 2 })
            }
        );
        let sources = source_settings(&r);
        assert!(!sources[0].pulse_unlocked);
        // poll 4, dpoll 0: 16 readings a poll at most.
        assert_eq!((sources[0].poll, sources[0].filter_length), (4, 16));
    }

    #[test]
    fn the_seeds_phc_reads_every_250_ms_and_filters_32() {
        let r = config(
            "[[refclock]]\ndriver = \"phc:/dev/ptp0\"\npoll = 3\ndpoll = -2\nprecision = 1e-9\nprefer = true\n\
             [[refclock]]\ndriver = \"pps:/dev/pps1\"\n[[refclock]]\ndriver = \"sock:/run/x.sock\"\npoll = 2\n",
        );
        assert_eq!(driver_settings(&r)[0], RefclockDriverSettings::Phc { tai: false, dpoll: -2 });
        let sources = source_settings(&r);
        assert_eq!((sources[0].poll, sources[0].filter_length), (3, 32));
        assert!(sources[1].pulse_unlocked);
        // A socket is not polled: chrony's 64.
        assert_eq!(sources[2].filter_length, 64);
    }
}
