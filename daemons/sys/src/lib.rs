//! The one crate of strata that may use `unsafe`: thin, checked wrappers over the
//! syscalls the privilege-drop sequence needs. Every other crate forbids `unsafe`.
//!
//! Each wrapper does one thing and returns an error a caller can name; the order in
//! which they are called is the caller's (see `strata-process`'s `sandbox`).
#![allow(unsafe_code)] // the workspace denies it; this crate is the documented exception

pub mod nic;
pub mod ptp;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

pub use caps::Capability;
use caps::{CapSet, CapsHashSet};
use nix::unistd::{Gid, Uid};
use strata_policy::{BpfInstruction, SeccompPolicy};

/// The descriptor on which every child finds its supervisor channel.
pub const SUPERVISOR_FD: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("closing inherited descriptors: {0}")]
    CloseFds(io::Error),
    #[error("setting groups, gid and uid to {uid}:{gid}: {source}")]
    Identity { uid: u32, gid: u32, source: nix::Error },
    #[error("changing capabilities: {0}")]
    Capabilities(#[from] caps::errors::CapsError),
    #[error("prctl {what}: {source}")]
    Prctl { what: &'static str, source: nix::Error },
    #[error("mallopt(M_ARENA_MAX) refused")]
    Allocator,
    #[error("installing the seccomp filter: {0}")]
    Seccomp(#[from] seccompiler::Error),
}

/// Make every thread allocate from glibc's main arena (`mallopt(M_ARENA_MAX, 1)`).
/// A thread's own arena is a heap that glibc shrinks on a large `free`, and the
/// first shrink opens /proc/sys/vm/overcommit_memory: inside the sandbox that
/// openat is a seccomp kill, at a moment no test can predict (it took the control
/// plane's API thread down on a big reply). The main arena grows and shrinks with
/// brk, which every policy allows. Called before any thread is spawned; our
/// processes do not allocate per packet, so one arena costs no contention.
pub fn one_malloc_arena() -> Result<(), SysError> {
    // SAFETY: mallopt takes two integers and changes allocator parameters only; no
    // memory of ours is touched and no allocation is in flight on another thread.
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    if ok != 1 {
        return Err(SysError::Allocator);
    }
    Ok(())
}

/// Close every descriptor above `last_kept` (`close_range(2)`): nothing inherited by
/// accident survives into the sandbox.
pub fn close_descriptors_above(last_kept: RawFd) -> Result<(), SysError> {
    let first = u32::try_from(last_kept + 1).map_err(|_| SysError::CloseFds(io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: close_range takes two integers and a flag word and touches no memory of
    // ours. Descriptors owned by Rust objects above `last_kept` would be closed behind
    // their backs, so this is called first thing in main, before any are created.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if rc != 0 {
        return Err(SysError::CloseFds(io::Error::last_os_error()));
    }
    Ok(())
}

/// Remove every environment variable of this process.
pub fn clear_environment() {
    let names: Vec<_> = std::env::vars_os().map(|(k, _)| k).collect();
    for name in names {
        // SAFETY: called in main before any thread is started, so no other thread can
        // be reading the environment concurrently.
        unsafe { std::env::remove_var(name) };
    }
}

/// Spawn `command` with `channel` as descriptor 3 (its supervisor channel) in a
/// process group of its own, so that a terminal's Ctrl-C reaches only the
/// supervisor, which then stops the children in order.
pub fn spawn_with_channel(mut command: Command, channel: OwnedFd) -> io::Result<Child> {
    let raw = channel.as_raw_fd();
    command.process_group(0);
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (dup2, fcntl) on descriptors that exist.
    unsafe {
        command.pre_exec(move || {
            if raw == SUPERVISOR_FD {
                // dup2 onto itself keeps FD_CLOEXEC: clear it by hand.
                if libc::fcntl(raw, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(raw, SUPERVISOR_FD) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn();
    drop(channel);
    child
}

/// setgroups([]) → setresgid → setresuid, in that order (the other order would leave
/// the process unable to change its groups).
pub fn become_user(uid: u32, gid: u32) -> Result<(), SysError> {
    let err = |source| SysError::Identity { uid, gid, source };
    nix::unistd::setgroups(&[]).map_err(err)?;
    let g = Gid::from_raw(gid);
    nix::unistd::setresgid(g, g, g).map_err(err)?;
    let u = Uid::from_raw(uid);
    nix::unistd::setresuid(u, u, u).map_err(err)?;
    Ok(())
}

/// Keep the permitted capabilities across the coming setresuid (PR_SET_KEEPCAPS).
pub fn keep_capabilities_across_uid_change() -> Result<(), SysError> {
    nix::sys::prctl::set_keepcaps(true).map_err(|source| SysError::Prctl { what: "PR_SET_KEEPCAPS", source })
}

/// Leave exactly `keep` in the effective and permitted sets, nothing inheritable
/// and nothing ambient, so that no later exec could hand capabilities on.
pub fn retain_only_capabilities(keep: &[Capability]) -> Result<(), SysError> {
    let set: CapsHashSet = keep.iter().copied().collect();
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &set)?;
    caps::set(None, CapSet::Permitted, &set)?;
    Ok(())
}

/// `effective` in the effective set and `permitted` (a superset) in the permitted
/// set, nothing inheritable and nothing ambient.
pub fn retain_capabilities(effective: &[Capability], permitted: &[Capability]) -> Result<(), SysError> {
    let permitted: CapsHashSet = permitted.iter().chain(effective).copied().collect();
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &effective.iter().copied().collect())?;
    caps::set(None, CapSet::Permitted, &permitted)?;
    Ok(())
}

/// Limit the bounding set to `keep`: no process started from here on, even as root,
/// can hold a capability outside it. Needs CAP_SETPCAP.
pub fn limit_bounding_set(keep: &[Capability]) -> Result<(), SysError> {
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap)? {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    Ok(())
}

/// The current effective capabilities.
pub fn effective_capabilities() -> Result<CapsHashSet, SysError> {
    Ok(caps::read(None, CapSet::Effective)?)
}

/// Be killed when the parent dies. Must be called after the last uid change, which
/// clears it.
pub fn die_with_parent() -> Result<(), SysError> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|source| SysError::Prctl { what: "PR_SET_PDEATHSIG", source })
}

/// PR_SET_NO_NEW_PRIVS: exec can never grant privileges again.
pub fn set_no_new_privs() -> Result<(), SysError> {
    nix::sys::prctl::set_no_new_privs().map_err(|source| SysError::Prctl { what: "PR_SET_NO_NEW_PRIVS", source })
}

/// Install `policy` on every thread of the process (SECCOMP_FILTER_FLAG_TSYNC).
pub fn install_seccomp(policy: &SeccompPolicy) -> Result<(), SysError> {
    let program: seccompiler::BpfProgram = policy
        .program
        .iter()
        .map(|&BpfInstruction { code, jt, jf, k }| seccompiler::sock_filter { code, jt, jf, k })
        .collect();
    seccompiler::apply_filter_all_threads(&program)?;
    Ok(())
}

/// Take ownership of the supervisor channel on descriptor 3, after checking that it
/// is a `SOCK_SEQPACKET` socket (a process started by hand with nothing there must
/// fail clearly, not use whatever file happens to be open).
pub fn take_supervisor_channel() -> io::Result<OwnedFd> {
    use nix::sys::socket::{getsockopt, sockopt};
    use std::os::fd::{BorrowedFd, FromRawFd};
    // SAFETY: fd 3 is only borrowed for the getsockopt probe below; if it is not open
    // the kernel answers EBADF and we never take ownership.
    let probe = unsafe { BorrowedFd::borrow_raw(SUPERVISOR_FD) };
    match getsockopt(&probe, sockopt::SockType) {
        Ok(nix::sys::socket::SockType::SeqPacket) => {}
        Ok(other) => {
            return Err(io::Error::other(format!("descriptor 3 is a {other:?} socket, not SOCK_SEQPACKET")));
        }
        Err(e) => {
            return Err(io::Error::other(format!("descriptor 3 is not the supervisor channel: {e}")));
        }
    }
    // SAFETY: descriptor 3 is open (getsockopt succeeded), was inherited for exactly
    // this purpose, and nothing else in the process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(SUPERVISOR_FD) })
}

/// One datagram received from a `SOCK_SEQPACKET` channel.
#[derive(Debug)]
pub struct Datagram {
    /// Bytes placed in the buffer. 0 means the peer closed the channel.
    pub len: usize,
    /// The datagram was longer than the buffer (MSG_TRUNC).
    pub truncated: bool,
    /// More descriptors were attached than we accept (MSG_CTRUNC); they were closed.
    pub control_truncated: bool,
    /// Descriptors that came with it, already owned (closed when dropped).
    pub fds: Vec<OwnedFd>,
}

/// Receive one datagram without blocking, with at most `max_fds` descriptors
/// (received close-on-exec).
pub fn recv_datagram(socket: &impl std::os::fd::AsFd, buf: &mut [u8]) -> nix::Result<Datagram> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::FromRawFd;
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        socket.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: the kernel just installed this descriptor in our table for
                // this message (SCM_RIGHTS); nothing else refers to it yet.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Ok(Datagram {
        len: msg.bytes,
        truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
        control_truncated: msg.flags.contains(MsgFlags::MSG_CTRUNC),
        fds,
    })
}

/// Send one datagram without blocking, optionally with one descriptor.
pub fn send_datagram(
    socket: &impl std::os::fd::AsFd,
    bytes: &[u8],
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> nix::Result<usize> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let iov = [io::IoSlice::new(bytes)];
    let raw: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(socket.as_fd().as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL, None)
}

/// A duplicate of descriptor `fd` of process `pid` (`pidfd_open` + `pidfd_getfd`;
/// the caller needs ptrace rights over `pid`). The tests use it to speak on a
/// running process's channel as if they were that process.
pub fn duplicate_descriptor_of(pid: u32, fd: RawFd) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and a flag word and returns a new descriptor
    // or -1; no memory is shared.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: pidfd_getfd takes two descriptors and a flag word; it returns a new
    // descriptor (close-on-exec) or -1.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0u32) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above: a fresh descriptor that only we hold.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as RawFd) })
}

/// Who is at the other end of a connected Unix socket: the kernel's record of its
/// credentials when it connected (SO_PEERCRED) and its supplementary groups
/// (SO_PEERGROUPS), which the peer cannot forge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

pub fn peer_credentials(socket: &impl std::os::fd::AsFd) -> io::Result<PeerCredentials> {
    use std::os::fd::AsRawFd;
    let fd = socket.as_fd().as_raw_fd();
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a writable ucred and `len` holds its size; the kernel
    // writes at most `len` bytes.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &raw mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // At most NGROUPS_MAX (65536) groups; start small and grow on ERANGE.
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` has `len` writable bytes; the kernel writes at most
        // `len` and sets `len` to the size used (or needed, with ERANGE).
        let rc = unsafe {
            libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERGROUPS, groups.as_mut_ptr().cast(), &raw mut len)
        };
        let needed = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed);
            break;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() && needed <= 65_536 {
            groups.resize(needed, 0);
            continue;
        }
        return Err(err);
    }
    Ok(PeerCredentials { pid: cred.pid as u32, uid: cred.uid, gid: cred.gid, groups })
}

#[cfg(test)]
mod peer_credentials_tests {
    #[test]
    fn the_peer_of_a_socket_pair_is_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let cred = super::peer_credentials(&a).unwrap();
        assert_eq!(cred.pid, std::process::id());
        assert_eq!(cred.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(cred.gid, nix::unistd::getegid().as_raw());
        let mut ours: Vec<u32> = nix::unistd::getgroups().unwrap().iter().map(|g| g.as_raw()).collect();
        let mut theirs = cred.groups.clone();
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(theirs, ours);
    }
}

/// Eight bytes from the kernel's CSPRNG (getrandom(2)): request cookies, the
/// transmit timestamps an off-path attacker must not predict.
pub fn random_u64() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    // SAFETY: the buffer is valid for writes of its length, which is passed with it.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    match usize::try_from(n) {
        Ok(8) => Ok(u64::from_ne_bytes(bytes)),
        Ok(_) => Err(io::Error::other("getrandom returned a short read")),
        Err(_) => Err(io::Error::last_os_error()),
    }
}

/// CLOCK_BOOTTIME in ns: time since boot, suspend included, which no clock
/// adjustment moves. The adjuster's permissions are timed on it, never on the
/// clock it adjusts (a backward step would otherwise widen its own window).
pub fn boottime_ns() -> i64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec for the call to write; CLOCK_BOOTTIME exists
    // on every kernel strata supports, so the call cannot fail with these arguments.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut t) };
    debug_assert_eq!(rc, 0);
    t.tv_sec * 1_000_000_000 + t.tv_nsec
}

/// Open a device with the C library's plain `open(2)` (Rust's `File::open` calls
/// `open64`): clknetsim, under which `strata-simnode` runs, intercepts `open` only,
/// and answers `/dev/ptpN` with a simulated PHC.
pub fn open_device(path: &std::path::Path, writable: bool) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let flags = if writable { libc::O_RDWR } else { libc::O_RDONLY } | libc::O_CLOEXEC;
    // SAFETY: `path` is a NUL-terminated string that outlives the call; open takes
    // no other pointer and returns a new descriptor or -1.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open: it is open and owned by no one else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// The system clock's nominal tick, µs: 10⁶ / USER_HZ, rounded (10 000 at 100 Hz).
pub fn nominal_tick_us() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as i64 } else { 100 };
    ((1_000_000 + hz / 2) / hz) as f64
}

/// A kernel clock driven through `clock_adjtime(2)`: CLOCK_REALTIME, or a PTP
/// hardware clock (`/dev/ptpN`, opened read-write by the supervisor).
#[derive(Clone, Copy, Debug)]
pub struct KernelClock {
    id: libc::clockid_t,
}

/// What `clock_adjtime` reports (read-only call, modes = 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KernelClockState {
    /// The kernel's frequency correction, ppm (positive: the clock runs faster).
    pub frequency_ppm: f64,
    /// STA_* status bits.
    pub status: i32,
    /// The clock state the call returned (TIME_OK, TIME_INS, ..., TIME_ERROR).
    pub state: i32,
}

impl KernelClock {
    pub const fn realtime() -> KernelClock {
        KernelClock { id: libc::CLOCK_REALTIME }
    }

    /// The dynamic clock of a PHC device descriptor (linux/posix-timers.h
    /// FD_TO_CLOCKID: `((~fd) << 3) | CLOCKFD`, CLOCKFD = 3).
    pub fn of_phc(fd: &impl std::os::fd::AsFd) -> KernelClock {
        let raw = fd.as_fd().as_raw_fd();
        KernelClock { id: ((!raw) << 3) | 3 }
    }

    pub fn id(&self) -> libc::clockid_t {
        self.id
    }

    /// Whether this is CLOCK_REALTIME (which has a tick), not a PHC.
    pub fn is_realtime(&self) -> bool {
        self.id == libc::CLOCK_REALTIME
    }

    fn adjtime(&self, tx: &mut libc::timex) -> io::Result<i32> {
        // SAFETY: `tx` is a valid, exclusively borrowed timex for the duration of the
        // call; the kernel reads the fields selected by `modes` and writes the struct
        // back. No other memory is touched.
        let rc = unsafe { libc::clock_adjtime(self.id, tx) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
    }

    fn blank() -> libc::timex {
        // SAFETY: timex is a plain C struct of integers (and padding) for which all
        // zero bytes is a valid value: modes = 0 means "change nothing".
        unsafe { std::mem::zeroed() }
    }

    /// The clock's time, ns since the Unix epoch (clock_gettime).
    pub fn now_ns(&self) -> io::Result<i64> {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, exclusively borrowed timespec the kernel fills in.
        let rc = unsafe { libc::clock_gettime(self.id, &mut ts) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ts.tv_sec * 1_000_000_000 + ts.tv_nsec)
    }

    /// Read the clock's state; changes nothing (modes = 0). CLOCK_REALTIME's
    /// frequency includes its tick's ([`KernelClock::set_frequency_and_tick`]).
    pub fn read(&self) -> io::Result<KernelClockState> {
        let mut tx = KernelClock::blank();
        let state = self.adjtime(&mut tx)?;
        let mut frequency_ppm = tx.freq as f64 / 65536.0;
        if self.id == libc::CLOCK_REALTIME {
            let nominal_us = nominal_tick_us();
            frequency_ppm += (tx.tick as f64 - nominal_us) * 1e6 / nominal_us;
        }
        Ok(KernelClockState { frequency_ppm, status: tx.status, state })
    }

    /// Set CLOCK_REALTIME's tick (µs added per clock interrupt, ±10 % of
    /// [`nominal_tick_us`]) and frequency correction together (ADJ_TICK |
    /// ADJ_FREQUENCY): the tick reaches rates beyond ADJ_FREQUENCY's 500 ppm.
    pub fn set_frequency_and_tick(&self, ppm: f64, tick_us: i64) -> io::Result<()> {
        let mut tx = KernelClock::blank();
        tx.modes = libc::ADJ_FREQUENCY | libc::ADJ_TICK;
        tx.freq = (ppm * 65536.0).round() as libc::c_long;
        tx.tick = tick_us as libc::c_long;
        self.adjtime(&mut tx).map(|_| ())
    }

    /// Set the frequency correction (ADJ_FREQUENCY, scaled ppm: ppm · 2^16).
    pub fn set_frequency(&self, ppm: f64) -> io::Result<()> {
        let mut tx = KernelClock::blank();
        tx.modes = libc::ADJ_FREQUENCY;
        tx.freq = (ppm * 65536.0).round() as libc::c_long;
        self.adjtime(&mut tx).map(|_| ())
    }

    /// Add `offset_s` to the clock at once (ADJ_SETOFFSET with nanoseconds).
    pub fn step(&self, offset_s: f64) -> io::Result<()> {
        let mut tx = KernelClock::blank();
        tx.modes = libc::ADJ_SETOFFSET | libc::ADJ_NANO;
        let ns = (offset_s * 1e9).round() as i64;
        tx.time.tv_sec = ns.div_euclid(1_000_000_000) as libc::time_t;
        // With ADJ_NANO the "usec" field holds nanoseconds, always in [0, 1e9).
        tx.time.tv_usec = ns.rem_euclid(1_000_000_000) as libc::suseconds_t;
        self.adjtime(&mut tx).map(|_| ())
    }

    /// Arm (`Some(true)` insert, `Some(false)` delete) or disarm (`None`) the kernel's
    /// leap second, keeping the other status bits.
    pub fn set_leap(&self, leap: Option<bool>) -> io::Result<()> {
        let current = self.read()?;
        let mut tx = KernelClock::blank();
        tx.modes = libc::ADJ_STATUS;
        tx.status = current.status & !(libc::STA_INS | libc::STA_DEL);
        tx.status |= match leap {
            Some(true) => libc::STA_INS,
            Some(false) => libc::STA_DEL,
            None => 0,
        };
        self.adjtime(&mut tx).map(|_| ())
    }
}

#[cfg(test)]
mod kernel_clock_tests {
    use super::*;

    #[test]
    fn random_words_come_from_the_kernel_and_differ() {
        let words: Vec<u64> = (0..4).map(|_| random_u64().unwrap()).collect();
        assert!(words.windows(2).all(|w| w[0] != w[1]), "{words:?}");
    }

    #[test]
    fn the_request_bits_are_the_kernels() {
        // linux/timex.h
        assert_eq!(libc::ADJ_FREQUENCY, 0x0002);
        assert_eq!(libc::ADJ_SETOFFSET, 0x0100);
        assert_eq!(libc::ADJ_NANO, 0x2000);
        assert_eq!(libc::ADJ_STATUS, 0x0010);
        assert_eq!(libc::ADJ_TICK, 0x4000);
        assert_eq!((libc::STA_INS, libc::STA_DEL), (0x0010, 0x0020));
        // struct timex on x86_64/aarch64: 208 bytes (11 longs, a timeval, padding).
        assert_eq!(std::mem::size_of::<libc::timex>(), 208);
    }

    #[test]
    fn reading_the_system_clock_reports_a_sane_state() {
        // modes = 0: a read. (Tests never write to this machine's clock.)
        let state = KernelClock::realtime().read().unwrap();
        assert!(state.frequency_ppm.abs() <= 500.0, "{state:?}");
        assert!((0..=5).contains(&state.state), "{state:?}");
        assert_eq!(KernelClock::realtime().read().unwrap().frequency_ppm, state.frequency_ppm);
    }

    #[test]
    fn a_phc_descriptor_maps_to_its_dynamic_clock_id() {
        // FD_TO_CLOCKID(3) = ((~3) << 3) | 3 = -29
        let f = std::fs::File::open("/dev/null").unwrap();
        let raw = f.as_raw_fd();
        assert_eq!(KernelClock::of_phc(&f).id(), ((!raw) << 3) | 3);
        assert!(KernelClock::of_phc(&f).id() < 0);
    }
}

/// Size of the NTP SHM refclock segment (`struct shmTime` on LP64 Linux; the layout is
/// checked in `strata-refclock`'s `shm` module).
pub const SHM_LEN: usize = 96;
/// Byte offset of `shmTime.valid`, which the reader clears after taking a sample.
pub const SHM_VALID_OFFSET: usize = 48;

/// An attached System V shared-memory segment of at least [`SHM_LEN`] bytes: the NTP
/// SHM refclock that gpsd writes. Detached (`shmdt`) when dropped.
///
/// All accesses are volatile 4-byte loads and stores at aligned offsets (`shmat`
/// returns a page-aligned address): another process writes the segment at any time,
/// so the compiler must neither cache nor elide nor merge them. Volatile accesses are
/// not synchronisation, and the writer (C, plain stores) gives none either: a copy can
/// be torn. The protocol itself detects that in mode 1 (gpsd's): the writer bumps
/// `count` before and after writing, and the reader compares `count` across two
/// snapshots. For that comparison to mean anything the CPU must not reorder the loads:
/// `snapshot` puts an acquire fence after loading `mode` and `count` and another after
/// the rest, so the loads of count → fields → (next snapshot's) count happen in that
/// order (a no-op on x86_64's TSO, a `dmb` on aarch64).
#[derive(Debug)]
pub struct ShmSegment {
    addr: std::ptr::NonNull<u32>,
    id: libc::c_int,
}

// SAFETY: the segment is mapped for the life of the value whatever thread uses it, and
// every access is a volatile load or store through the raw pointer (no references into
// shared memory are ever made), so moving the handle to another thread is sound.
unsafe impl Send for ShmSegment {}

impl ShmSegment {
    /// Attach read-write to the existing segment `key` (never creates one: gpsd does).
    /// Fails if it is smaller than [`SHM_LEN`].
    pub fn attach(key: libc::key_t) -> io::Result<ShmSegment> {
        // Asking for SHM_LEN bytes makes shmget itself refuse (EINVAL) a smaller
        // segment; no IPC_STAT, which clknetsim (strata-simnode) does not simulate.
        // SAFETY: shmget takes integers only and returns an id or -1.
        let id = unsafe { libc::shmget(key, SHM_LEN, 0) };
        if id < 0 {
            return Err(io::Error::last_os_error());
        }
        ShmSegment::map(id)
    }

    /// Create segment `key` with permissions `mode` (e.g. 0o600) and attach to it:
    /// what gpsd does; strata's own tests use it to play gpsd. Unlike gpsd it refuses
    /// (EEXIST) to take over a segment that already exists.
    pub fn create(key: libc::key_t, mode: u32) -> io::Result<ShmSegment> {
        let flags = libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as libc::c_int;
        // SAFETY: shmget takes integers only and returns an id or -1.
        let id = unsafe { libc::shmget(key, SHM_LEN, flags) };
        if id < 0 {
            return Err(io::Error::last_os_error());
        }
        ShmSegment::attach_id(id)
    }

    fn attach_id(id: libc::c_int) -> io::Result<ShmSegment> {
        // SAFETY: shmid_ds is a plain C struct of integers for which all zero bytes is
        // a valid value; IPC_STAT fills it in.
        let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: `ds` is a valid, exclusively borrowed shmid_ds for the call.
        if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if ds.shm_segsz < SHM_LEN {
            return Err(io::Error::other(format!("SHM segment is {} bytes, need {SHM_LEN}", ds.shm_segsz)));
        }
        ShmSegment::map(id)
    }

    /// Map segment `id`, known to hold at least [`SHM_LEN`] bytes.
    fn map(id: libc::c_int) -> io::Result<ShmSegment> {
        // SAFETY: a null address lets the kernel choose where to map; flags 0 maps
        // read-write. The result is a new mapping no Rust object refers to, or -1.
        let addr = unsafe { libc::shmat(id, std::ptr::null(), 0) };
        if addr as isize == -1 {
            return Err(io::Error::last_os_error());
        }
        let addr = std::ptr::NonNull::new(addr.cast::<u32>()).ok_or_else(|| io::Error::other("shmat returned null"))?;
        Ok(ShmSegment { addr, id })
    }

    /// The segment's id (for [`ShmSegment::remove`] by a test playing gpsd).
    pub fn id(&self) -> libc::c_int {
        self.id
    }

    fn word(&self, index: usize) -> *mut u32 {
        debug_assert!(index < SHM_LEN / 4);
        // The offset stays within the SHM_LEN bytes checked at attach time.
        self.addr.as_ptr().wrapping_add(index)
    }

    /// A copy of the first [`SHM_LEN`] bytes (see the type's note on ordering).
    pub fn snapshot(&self) -> [u8; SHM_LEN] {
        use std::sync::atomic::{Ordering, fence};
        let mut out = [0u8; SHM_LEN];
        for (i, chunk) in out.chunks_exact_mut(4).enumerate() {
            // SAFETY: `word(i)` is 4-aligned and within the mapping (i < SHM_LEN / 4,
            // the segment is at least SHM_LEN bytes, mapped until drop); a volatile
            // read of a u32 there is valid for any bits another process left.
            let w = unsafe { self.word(i).read_volatile() };
            chunk.copy_from_slice(&w.to_ne_bytes());
            if i == 1 {
                fence(Ordering::Acquire); // mode and count before the fields
            }
        }
        fence(Ordering::Acquire); // the fields before whatever is read next
        out
    }

    /// Write 0 to `valid`: the sample has been taken.
    pub fn clear_valid(&self) {
        // SAFETY: as in `snapshot`: an aligned word inside the read-write mapping.
        unsafe { self.word(SHM_VALID_OFFSET / 4).write_volatile(0) };
    }

    /// Overwrite the first [`SHM_LEN`] bytes, word by word in order: what a writer
    /// does (a test playing gpsd sets `count` and `valid` around it itself).
    pub fn write(&self, image: &[u8; SHM_LEN]) {
        for (i, chunk) in image.chunks_exact(4).enumerate() {
            let w = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            // SAFETY: as in `snapshot`: an aligned word inside the read-write mapping.
            unsafe { self.word(i).write_volatile(w) };
        }
    }

    /// Mark the segment for removal (IPC_RMID): it goes away once every process has
    /// detached. For the creator (gpsd, or a test playing it).
    pub fn remove(&self) -> io::Result<()> {
        // SAFETY: IPC_RMID reads no buffer; a null pointer is allowed.
        if unsafe { libc::shmctl(self.id, libc::IPC_RMID, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for ShmSegment {
    fn drop(&mut self) {
        // SAFETY: `addr` is the address shmat returned and is detached only here; no
        // reference into the mapping outlives `self` (all access is by value).
        unsafe { libc::shmdt(self.addr.as_ptr().cast()) };
    }
}

#[cfg(test)]
mod shm_tests {
    use super::*;

    /// A key no one else uses: created exclusively, so a clash fails instead of
    /// taking over someone's segment; retried on clash.
    fn create_private() -> ShmSegment {
        let pid = std::process::id() as i32;
        for salt in 0..64 {
            let key = 0x5354_0000 ^ (pid << 6) ^ salt;
            match ShmSegment::create(key, 0o600) {
                Ok(s) => return s,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) => panic!("shmget: {e}"),
            }
        }
        panic!("no free SHM key")
    }

    fn key_of(seg: &ShmSegment) -> libc::key_t {
        // SAFETY: as in attach_id: a zeroed shmid_ds filled in by IPC_STAT.
        let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: `ds` is valid and exclusively borrowed for the call.
        assert_eq!(unsafe { libc::shmctl(seg.id(), libc::IPC_STAT, &mut ds) }, 0);
        ds.shm_perm.__key
    }

    #[test]
    fn a_writer_and_a_reader_share_the_segment() {
        let writer = create_private();
        let key = key_of(&writer);
        let reader = ShmSegment::attach(key).unwrap();
        assert_eq!(reader.snapshot(), [0; SHM_LEN], "a new segment is zeroed");

        let mut image = [0u8; SHM_LEN];
        for (i, b) in image.iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        image[SHM_VALID_OFFSET..SHM_VALID_OFFSET + 4].copy_from_slice(&1i32.to_ne_bytes());
        writer.write(&image);
        assert_eq!(reader.snapshot(), image);

        reader.clear_valid();
        let seen = writer.snapshot();
        assert_eq!(&seen[SHM_VALID_OFFSET..SHM_VALID_OFFSET + 4], &[0; 4]);
        assert_eq!(seen[..SHM_VALID_OFFSET], image[..SHM_VALID_OFFSET]);
        assert_eq!(seen[SHM_VALID_OFFSET + 4..], image[SHM_VALID_OFFSET + 4..]);

        drop(reader);
        writer.remove().unwrap();
        drop(writer);
        let gone = ShmSegment::attach(key).unwrap_err();
        assert_eq!(gone.raw_os_error(), Some(libc::ENOENT), "{gone}");
    }

    #[test]
    fn attach_never_creates() {
        let writer = create_private();
        let key = key_of(&writer);
        writer.remove().unwrap();
        drop(writer);
        assert_eq!(ShmSegment::attach(key).unwrap_err().raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn a_segment_too_small_is_refused() {
        // SAFETY: shmget takes integers only.
        let id = unsafe { libc::shmget(libc::IPC_PRIVATE, 16, libc::IPC_CREAT | 0o600) };
        assert!(id >= 0, "{}", io::Error::last_os_error());
        let err = ShmSegment::attach_id(id).unwrap_err();
        // SAFETY: IPC_RMID reads no buffer.
        unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
        assert!(err.to_string().contains("16 bytes"), "{err}");
    }

    #[test]
    fn creating_an_existing_key_fails_instead_of_taking_it_over() {
        let first = create_private();
        let again = ShmSegment::create(key_of(&first), 0o600).unwrap_err();
        assert_eq!(again.raw_os_error(), Some(libc::EEXIST));
        first.remove().unwrap();
    }
}
