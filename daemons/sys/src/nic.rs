//! A network interface's hardware timestamping (linux/ethtool.h,
//! linux/net_tstamp.h): what the NIC can stamp and the PHC it stamps with
//! (`ETHTOOL_GET_TS_INFO`), and turning it on (`SIOCSHWTSTAMP`, CAP_NET_ADMIN).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const SIOCSHWTSTAMP: libc::c_ulong = 0x89b0;
const ETHTOOL_GET_TS_INFO: u32 = 0x41;

/// `SOF_TIMESTAMPING_*` capability bits of `ethtool_ts_info.so_timestamping`.
const TX_HARDWARE: u32 = 1 << 0;
const RX_HARDWARE: u32 = 1 << 2;
const RAW_HARDWARE: u32 = 1 << 6;
const HWTSTAMP_TX_ON: i32 = 1;

/// `enum hwtstamp_rx_filters`: which received packets the NIC stamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxFilter {
    None = 0,
    All = 1,
    /// PTP v2 event messages (layer 2 and 4): what ptp4l on the same NIC needs.
    PtpV2Event = 12,
    NtpAll = 15,
}

/// `struct ethtool_ts_info`.
#[repr(C)]
#[derive(Default)]
struct EthtoolTsInfo {
    cmd: u32,
    so_timestamping: u32,
    phc_index: i32,
    tx_types: u32,
    tx_reserved: [u32; 3],
    rx_filters: u32,
    rx_reserved: [u32; 3],
}

/// `struct hwtstamp_config`.
#[repr(C)]
struct HwtstampConfig {
    flags: i32,
    tx_type: i32,
    rx_filter: i32,
}

/// What an interface's NIC can stamp, as `ethtool -T` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimestampingInfo {
    /// The PHC the NIC stamps with (`/dev/ptpN`), if it has one.
    pub phc_index: Option<u32>,
    /// It stamps transmitted packets in hardware (TX_HARDWARE, RAW_HARDWARE, tx on).
    pub transmit: bool,
    /// Receive filters it supports, a bit per `RxFilter` value.
    rx_filters: u32,
    receive: bool,
}

impl TimestampingInfo {
    pub fn supports(&self, filter: RxFilter) -> bool {
        filter == RxFilter::None || (self.receive && self.rx_filters & (1 << filter as u32) != 0)
    }
}

/// An `ifreq` naming `interface`, its data pointing at `data`.
fn ifreq_for<T>(interface: &str, data: &mut T) -> io::Result<libc::ifreq> {
    let name = interface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{interface:?} is not an interface name")));
    }
    // SAFETY: ifreq is plain old data (a name array and a union of integers and
    // pointers), for which all-zero bytes are a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, &byte) in request.ifr_name.iter_mut().zip(name) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (data as *mut T).cast();
    Ok(request)
}

fn interface_ioctl<T>(interface: &str, request: libc::c_ulong, data: &mut T) -> io::Result<()> {
    let socket: OwnedFd =
        socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).map_err(io::Error::from)?;
    let mut ifreq = ifreq_for(interface, data)?;
    // SAFETY: `ifreq` names the interface and points at `data`, a valid,
    // exclusively borrowed struct of the type this request reads and writes
    // (ethtool_ts_info or hwtstamp_config, layouts of the uapi headers); both
    // outlive the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), request as libc::Ioctl, &mut ifreq as *mut libc::ifreq) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// What `interface`'s NIC can stamp. An interface without hardware timestamping
/// (loopback, veth) answers with no PHC and no hardware bits, or EOPNOTSUPP.
pub fn timestamping_info(interface: &str) -> io::Result<TimestampingInfo> {
    let mut info = EthtoolTsInfo { cmd: ETHTOOL_GET_TS_INFO, ..Default::default() };
    interface_ioctl(interface, SIOCETHTOOL, &mut info)?;
    let has = |bits: u32| info.so_timestamping & bits == bits;
    Ok(TimestampingInfo {
        phc_index: u32::try_from(info.phc_index).ok(),
        transmit: has(TX_HARDWARE | RAW_HARDWARE) && info.tx_types & (1 << HWTSTAMP_TX_ON) != 0,
        receive: has(RX_HARDWARE | RAW_HARDWARE),
        rx_filters: info.rx_filters,
    })
}

/// Turn on hardware timestamping of transmitted packets and of the received ones
/// `filter` selects (needs CAP_NET_ADMIN). The NIC's setting is the interface's,
/// shared with every other program on it (ptp4l too). Returns the filter the
/// driver applied, which may be wider than asked.
pub fn enable_hardware_timestamping(interface: &str, filter: RxFilter) -> io::Result<i32> {
    let mut config = HwtstampConfig { flags: 0, tx_type: HWTSTAMP_TX_ON, rx_filter: filter as i32 };
    interface_ioctl(interface, SIOCSHWTSTAMP, &mut config)?;
    Ok(config.rx_filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_structs_have_the_uapi_layouts() {
        assert_eq!(std::mem::size_of::<EthtoolTsInfo>(), 44);
        assert_eq!(std::mem::size_of::<HwtstampConfig>(), 12);
    }

    #[test]
    fn the_loopback_has_no_hardware_timestamping() {
        // lo answers ETHTOOL_GET_TS_INFO with software bits only and no PHC.
        let info = timestamping_info("lo").unwrap();
        assert_eq!((info.phc_index, info.transmit, info.supports(RxFilter::All)), (None, false, false));
        assert!(info.supports(RxFilter::None));
    }

    #[test]
    fn a_name_the_kernel_cannot_take_is_refused_before_the_ioctl() {
        for name in ["", "a-name-of-sixteen", "nul\0"] {
            let err = timestamping_info(name).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
        assert_eq!(timestamping_info("strata-none0").unwrap_err().raw_os_error(), Some(libc::ENODEV));
    }
}
