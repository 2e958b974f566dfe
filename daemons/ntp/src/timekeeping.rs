//! Keeping time: the engine's driver of the sans-IO time-keeping system
//! (`strata_sync::timekeeper`). It owns what the system may not touch: one UDP
//! socket per upstream, the clocks, the channel to the adjuster and the serving
//! threads' shared state; it carries out the system's actions.
//!
//! Each upstream's socket is created and connected before the sandbox (so the
//! engine needs neither `socket` nor `connect` afterwards for configured servers,
//! and a connected socket accepts replies from that server's address only). With
//! `kernel-tx-timestamps` the kernel also stamps each request as it leaves (OPT_ID
//! numbers them per socket); the timestamp is read from the error queue, which
//! makes the socket ready like a reply does, and corrects the request's T1.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use strata_process::child::Outbox;
use strata_proto::ipc::{
    AddSource, ChildToSupervisor, ClockBackendKind, ClockStatus, Failover, NtpSettings, RefclockSample, SourceStatus,
    TrackingStatus, UpstreamSettings,
};
use strata_sync::discipline::ClockAction;
use strata_sync::refclock::RawSample;
use strata_sync::timekeeper::{Action, IgnoredPacket, Timekeeper, TimekeeperConfig, adjuster_request};
use strata_sync::{LocalTime, Monotonic, SourceId};
use tracing::{debug, info, warn};

use crate::workers::{Shared, system_now_ns};

/// Largest frequency the adjuster applies (policy/clock.toml).
const ADJUSTER_MAX_FREQUENCY_PPM: f64 = strata_policy::clock::MAX_FREQUENCY_PPM;

struct Socket {
    source: SourceId,
    address: SocketAddr,
    socket: UdpSocket,
    /// Requests sent on it: the kernel numbers their transmit timestamps from 0.
    sent: u32,
    /// The last reply came with the kernel's receive timestamp.
    kernel_rx: bool,
}

impl Socket {
    fn new(source: SourceId, address: SocketAddr, kernel_tx: bool) -> Result<Socket, String> {
        Ok(Socket { source, address, socket: connected_socket(address, kernel_tx)?, sent: 0, kernel_rx: false })
    }
}

pub struct Timekeeping {
    shared: Arc<Shared>,
    system: Timekeeper,
    /// One per upstream, in the system's order.
    sockets: Vec<Socket>,
    /// The origin of the system's monotonic time.
    origin: Instant,
    /// The adjuster's latest report; `None` while it is down.
    clock: Option<ClockStatus>,
    /// The adjuster's slew rate (`maxslewrate`, within its policy), ppm.
    slew_rate_ppm: f64,
}

impl Timekeeping {
    /// Set up before the sandbox: creates and connects one socket per upstream.
    pub fn new(settings: &NtpSettings, shared: Arc<Shared>) -> Result<Timekeeping, String> {
        let origin = Instant::now();
        // The adjuster holds the rate to its policy whatever it is told: model that.
        let slew_rate_ppm = settings.max_slew_rate_ppm.min(strata_policy::clock::MAX_SLEW_RATE_PPM);
        let config = TimekeeperConfig::from_settings(settings, slew_rate_ppm, ADJUSTER_MAX_FREQUENCY_PPM)
            .map_err(|e| format!("discipline: {e}"))?;
        if let Some((ppm, skew_ppm)) = settings.initial_frequency {
            info!(ppm, skew_ppm, "frequency from the driftfile");
        }
        let system = Timekeeper::new(config, Monotonic(0), local_now(&shared), &mut cookie);
        let sockets = system
            .upstreams()
            .map(|(source, address)| Socket::new(source, address, shared.kernel_tx_timestamps))
            .collect::<Result<_, String>>()?;
        Ok(Timekeeping { shared, system, sockets, origin, clock: None, slew_rate_ppm })
    }

    fn now(&self) -> Monotonic {
        Monotonic(self.origin.elapsed().as_nanos() as i64)
    }

    pub fn sockets(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.sockets.iter().map(|s| s.socket.as_fd())
    }

    pub fn clock_status(&mut self, status: ClockStatus) {
        self.system.set_adjustable(status.backend != ClockBackendKind::None);
        self.system.set_max_slew_rate_ppm(strata_proto::ipc::backend_slew_rate_ppm(status.backend, self.slew_rate_ppm));
        self.system.set_automatic_steps_allowed(status.automatic_steps_allowed && status.steps_left > 0);
        self.clock = Some(status);
    }

    /// When the next upstream is due.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let clock = local_now(&self.shared);
        self.system.next_poll().map(|at| {
            let wait_s = at.seconds_since(clock).max(0.0);
            Instant::now() + Duration::from_secs_f64(wait_s.min(3600.0))
        })
    }

    /// Send the requests that are due.
    pub fn poll_due(&mut self, out: &mut Outbox) {
        let actions = self.system.handle_timer(local_now(&self.shared), &mut cookie);
        self.carry_out(actions, out);
    }

    /// Replies may be waiting on upstream socket `index`.
    pub fn on_readable(&mut self, index: usize, out: &mut Outbox) {
        let mut buf = [0u8; 1024];
        loop {
            // An operator may have deleted a source since the poll that woke us.
            let Some(s) = self.sockets.get_mut(index) else { return };
            let (source, address) = (s.source, s.address);
            // Transmit timestamps first: the request's T1 before its reply's T4.
            while let Some((id, sent_ns)) = transmit_timestamp(&s.socket) {
                if id == s.sent.wrapping_sub(1) {
                    let sent = LocalTime(sent_ns + (self.shared.time_offset_s(sent_ns) * 1e9) as i64);
                    self.system.handle_transmit_timestamp(source, sent);
                }
            }
            let Some((len, kernel_ns)) = receive(&s.socket, &mut buf) else { return };
            s.kernel_rx = kernel_ns.is_some();
            // T4: the kernel's receive time, on the served clock's time scale.
            let system_ns = kernel_ns.unwrap_or_else(system_now_ns);
            let t4 = LocalTime(system_ns + (self.shared.time_offset_s(system_ns) * 1e9) as i64);
            match self.system.handle_packet(source, &buf[..len], t4, self.now()) {
                Ok(actions) => self.carry_out(actions, out),
                Err(IgnoredPacket::Ignored(reason)) => debug!(upstream = %address, ?reason, "reply ignored"),
                Err(IgnoredPacket::NoSuchSource) => {}
            }
        }
    }

    /// A sample from the refclock reader.
    pub fn on_refclock_sample(&mut self, sample: &RefclockSample, out: &mut Outbox) -> Result<(), String> {
        // The reader measures against the system clock; the served clock may be a
        // model or a PHC: re-express time and offset against it.
        let clock_offset_s = self.shared.time_offset_s(sample.system_time_ns);
        let raw = RawSample {
            time: LocalTime(sample.system_time_ns + (clock_offset_s * 1e9) as i64),
            offset_s: sample.offset_s - clock_offset_s,
            dispersion_s: sample.dispersion_s,
        };
        let actions = self.system.handle_refclock_sample(usize::from(sample.refclock), raw, self.now())?;
        self.carry_out(actions, out);
        Ok(())
    }

    fn carry_out(&mut self, actions: Vec<Action>, out: &mut Outbox) {
        for action in actions {
            match action {
                Action::Send { source, packet, len } => {
                    let Some(s) = self.sockets.iter_mut().find(|s| s.source == source) else { continue };
                    match s.socket.send(&packet[..len]) {
                        Ok(_) => s.sent = s.sent.wrapping_add(1),
                        Err(e) => debug!(upstream = %s.address, "request not sent: {e}"),
                    }
                }
                Action::Clock(request) => {
                    if let ClockAction::Step { offset_s } = request {
                        info!(offset_s, "stepping the clock");
                    }
                    out.send(&adjuster_request(request))
                }
                Action::Serve(state) => *self.shared.serving.write().unwrap_or_else(|e| e.into_inner()) = state,
                Action::Drift { frequency_ppm, skew_ppm } => {
                    out.report(ChildToSupervisor::Drift { frequency_ppm, skew_ppm })
                }
                Action::Log(record) => out.report(ChildToSupervisor::Log(record)),
                Action::Failover(Failover { from, to, .. }) => info!(%from, %to, "selected a new system peer"),
                Action::Notice(text) => warn!("{text}"),
            }
        }
    }

    /// What the control plane shows: tracking, every source, the latest failovers.
    pub fn status(&self) -> (TrackingStatus, Vec<SourceStatus>, Vec<Failover>, u64) {
        let clock = local_now(&self.shared);
        let (failovers, total) = self.system.failovers();
        let mut sources = self.system.sources(clock, self.now());
        for status in sources.iter_mut().filter(|s| !s.refclock) {
            status.kernel_rx = self.sockets.iter().any(|s| s.kernel_rx && s.address.to_string() == status.name);
        }
        (self.system.tracking(clock), sources, failovers, total)
    }

    /// `stratactl add server`: a new upstream, polled from now on.
    pub fn add_source(&mut self, add: &AddSource) -> Result<String, String> {
        let minpoll = add.minpoll.unwrap_or(6);
        let settings = UpstreamSettings {
            address: add.address,
            iburst: add.iburst,
            minpoll,
            maxpoll: add.maxpoll.unwrap_or(10).max(minpoll),
            prefer: add.prefer,
            noselect: false,
            trust: false,
            require: false,
            max_delay_s: 3.0,
            version: 4,
            xleave: add.xleave,
        };
        // The socket first: a source that cannot have one is not added.
        let socket = connected_socket(add.address, self.shared.kernel_tx_timestamps)?;
        let source = self.system.add_upstream(&settings, local_now(&self.shared), cookie())?;
        self.sockets.push(Socket { source, address: add.address, socket, sent: 0, kernel_rx: false });
        info!(source = %add.address, "source added by an operator");
        Ok(format!("added server {}", add.address))
    }

    /// `stratactl delete`.
    pub fn delete_source(&mut self, address: SocketAddr, out: &mut Outbox) -> Result<String, String> {
        let (source, actions) = self.system.delete_upstream(address, local_now(&self.shared), self.now())?;
        self.sockets.retain(|s| s.source != source);
        info!(source = %address, "source deleted by an operator");
        self.carry_out(actions, out);
        Ok(format!("deleted {address}"))
    }

    /// `stratactl online` / `offline`, for one source or all.
    pub fn set_online(&mut self, address: Option<SocketAddr>, online: bool) -> Result<String, String> {
        let changed = self.system.set_online(address, online)?;
        let what = if online { "online" } else { "offline" };
        info!(sources = changed, "{what} by an operator");
        Ok(format!("{changed} source(s) {what}"))
    }

    /// `stratactl reselect`: select again now.
    pub fn reselect(&mut self, out: &mut Outbox) -> String {
        let (peer, actions) = self.system.reselect(local_now(&self.shared), self.now());
        self.carry_out(actions, out);
        match peer {
            Some(name) => format!("reselected: {name}"),
            None => "reselected: no source is selectable".into(),
        }
    }

    /// The adjuster authorised an operator step: the next estimate steps.
    pub fn step_authorised(&mut self) -> Result<String, String> {
        match self.clock.as_ref().map(|c| c.backend) {
            Some(ClockBackendKind::None) => {
                Err("the clock backend is none: strata measures and serves, it never steps".into())
            }
            _ => {
                self.system.authorise_step();
                Ok("the clock steps by the whole offset at the next estimate".into())
            }
        }
    }
}

/// An upstream's own socket, non-blocking, with kernel receive timestamps (and
/// transmit timestamps with `kernel_tx`), connected to its server. Before the
/// sandbox for configured upstreams; afterwards for added ones (socket and connect
/// are allowed to the engine for UDP only, see policy/seccomp).
fn connected_socket(address: SocketAddr, kernel_tx: bool) -> Result<UdpSocket, String> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrStorage, connect, socket};
    let family = if address.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fail = |e: nix::Error| format!("upstream {address}: {e}");
    // Non-blocking from the start: no fcntl/ioctl needed afterwards.
    let fd =
        socket(family, SockType::Datagram, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None).map_err(fail)?;
    if kernel_tx {
        use nix::sys::socket::TimestampingFlag as F;
        let stamping = F::SOF_TIMESTAMPING_SOFTWARE
            | F::SOF_TIMESTAMPING_RX_SOFTWARE
            | F::SOF_TIMESTAMPING_TX_SOFTWARE
            | F::SOF_TIMESTAMPING_OPT_ID
            | F::SOF_TIMESTAMPING_OPT_TSONLY;
        setsockopt(&fd, sockopt::Timestamping, &stamping).map_err(fail)?;
    } else {
        setsockopt(&fd, sockopt::ReceiveTimestampns, &true).map_err(fail)?;
    }
    connect(fd.as_raw_fd(), &SockaddrStorage::from(address)).map_err(fail)?;
    Ok(UdpSocket::from(fd))
}

/// One datagram and its kernel receive time (ns since the epoch), if one is waiting.
fn receive(socket: &UdpSocket, buf: &mut [u8]) -> Option<(usize, Option<i64>)> {
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!([TimeSpec; 3]);
    let msg = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT).ok()?;
    let kernel_ns = msg.cmsgs().ok().and_then(|mut c| {
        c.find_map(|m| match m {
            ControlMessageOwned::ScmTimestampns(ts) => Some(nanoseconds(&ts)),
            ControlMessageOwned::ScmTimestampsns(ts) => Some(nanoseconds(&ts.system)),
            _ => None,
        })
    });
    Some((msg.bytes, kernel_ns))
}

/// The next transmit timestamp on the socket's error queue: the request's number
/// (OPT_ID) and when it left (ns since the epoch, system clock).
fn transmit_timestamp(socket: &UdpSocket) -> Option<(u32, i64)> {
    loop {
        let mut nothing = [0u8; 1];
        let mut iov = [std::io::IoSliceMut::new(&mut nothing)];
        let mut cmsg = nix::cmsg_space!([TimeSpec; 3], nix::libc::sock_extended_err, nix::libc::sockaddr_in6);
        let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
        let msg = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut cmsg), flags).ok()?;
        let (mut sent_ns, mut id) = (None, None);
        for m in msg.cmsgs().into_iter().flatten() {
            match m {
                ControlMessageOwned::ScmTimestampsns(ts) => sent_ns = Some(nanoseconds(&ts.system)),
                ControlMessageOwned::Ipv4RecvErr(e, _) | ControlMessageOwned::Ipv6RecvErr(e, _)
                    if e.ee_origin == nix::libc::SO_EE_ORIGIN_TIMESTAMPING =>
                {
                    id = Some(e.ee_data)
                }
                _ => {}
            }
        }
        // Anything else on the queue (an ICMP error) is read and dropped.
        if let (Some(id), Some(sent_ns)) = (id, sent_ns) {
            return Some((id, sent_ns));
        }
    }
}

fn nanoseconds(ts: &TimeSpec) -> i64 {
    ts.tv_sec() * 1_000_000_000 + ts.tv_nsec()
}

/// The served clock now, as the sans-IO core counts time.
fn local_now(shared: &Shared) -> LocalTime {
    let system_ns = system_now_ns();
    LocalTime(system_ns + (shared.time_offset_s(system_ns) * 1e9) as i64)
}

/// A request cookie from the kernel's CSPRNG (the seccomp policy allows getrandom).
/// Should it ever fail, a keyed SipHash of the time (std seeds its keys from the OS)
/// still gives nothing an off-path attacker can predict.
fn cookie() -> u64 {
    strata_sys::random_u64().unwrap_or_else(|_| {
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), system_now_ns())
    })
}
