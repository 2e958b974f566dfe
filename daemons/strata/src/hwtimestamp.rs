//! `[server] hwtimestamp`: turn on the NICs' hardware timestamping while the
//! supervisor still holds CAP_NET_ADMIN (the engine never does), and open each
//! NIC's PHC read-only for the engine, which maps the NIC's timestamps onto the
//! system clock. Done once at start; an interface that cannot is reported here,
//! once, and served with the kernel's software timestamps.

use std::os::fd::OwnedFd;

use strata_config::{HwTimestamp, RxFilter};
use strata_proto::ipc::Resource;
use strata_sys::nic::{self, RxFilter as Filter, TimestampingInfo};
use tracing::{info, warn};

/// The NIC clocks for the engine: one `NicClock` resource per interface that now
/// stamps packets. Never fails: hardware timestamping is an improvement, its
/// absence a warning.
pub fn enable(config: &[HwTimestamp]) -> Vec<(Resource, OwnedFd)> {
    let mut clocks = Vec::new();
    let named: Vec<&str> = config.iter().map(|h| h.interface.get_ref().0.as_str()).filter(|n| *n != "*").collect();
    for hw in config {
        let name = hw.interface.get_ref().0.as_str();
        if name == "*" {
            // Every other interface that can; those that cannot are not worth a warning.
            let all = nix::net::if_::if_nameindex()
                .map(|l| l.iter().map(|i| i.name().to_string_lossy().into_owned()).collect::<Vec<_>>());
            for interface in all.unwrap_or_default() {
                if interface != "lo" && !named.contains(&interface.as_str()) {
                    match open(&interface, hw) {
                        Ok(Some(clock)) => clocks.push(clock),
                        Ok(None) => {}
                        Err(why) => warn!("hwtimestamp *: {interface}: {why}; software timestamps"),
                    }
                }
            }
        } else {
            match open(name, hw) {
                Ok(Some(clock)) => clocks.push(clock),
                Ok(None) => warn!(
                    "hwtimestamp {name}: the NIC has no hardware timestamping with a PHC (see `ethtool -T {name}`); \
                     served with software timestamps"
                ),
                Err(why) => warn!("hwtimestamp {name}: {why}; served with software timestamps"),
            }
        }
    }
    clocks
}

/// The receive filter to ask for, chrony's way: `any` is NTP packets if the NIC
/// can single them out, else all; `None` when the NIC cannot do what was asked
/// (the answers are still stamped on the way out).
fn receive_filter(asked: RxFilter, info: &TimestampingInfo) -> Filter {
    let wanted = match asked {
        RxFilter::Any if info.supports(Filter::NtpAll) => Filter::NtpAll,
        RxFilter::Any => Filter::All,
        RxFilter::All => Filter::All,
        RxFilter::Ntp => Filter::NtpAll,
        RxFilter::Ptp => Filter::PtpV2Event,
        RxFilter::None => Filter::None,
    };
    if info.supports(wanted) { wanted } else { Filter::None }
}

/// Turn on `interface`'s timestamping and open its PHC; `None`: the NIC has none.
fn open(interface: &str, hw: &HwTimestamp) -> Result<Option<(Resource, OwnedFd)>, String> {
    let info = nic::timestamping_info(interface)
        .map_err(|e| format!("reading its timestamping (ETHTOOL_GET_TS_INFO): {e}"))?;
    let Some(phc_index) = info.phc_index.filter(|_| info.transmit) else { return Ok(None) };
    let filter = receive_filter(hw.rxfilter, &info);
    let applied = nic::enable_hardware_timestamping(interface, filter).map_err(|e| match e.raw_os_error() {
        Some(code) if code == nix::errno::Errno::EPERM as i32 => {
            "SIOCSHWTSTAMP needs CAP_NET_ADMIN, which strata.service leaves out (see the unit)".into()
        }
        _ => format!("SIOCSHWTSTAMP: {e}"),
    })?;
    let if_index = nix::net::if_::if_nametoindex(interface).map_err(|e| format!("its index: {e}"))?;
    let device = format!("/dev/ptp{phc_index}");
    let phc = std::fs::File::open(&device).map_err(|e| format!("{device}: {e}"))?;
    // A NIC that stamps PTP only leaves NTP requests to the kernel's software stamps.
    let receive = !matches!(filter, Filter::None | Filter::PtpV2Event);
    info!(interface, device, ?filter, applied, receive, "hardware timestamping on");
    let ns = |s: f64| (s * 1e9).round() as i64;
    let resource = Resource::NicClock {
        interface: interface.to_string(),
        if_index,
        receive,
        txcomp_ns: ns(hw.txcomp.0),
        rxcomp_ns: ns(hw.rxcomp.0),
    };
    Ok(Some((resource, phc.into())))
}
