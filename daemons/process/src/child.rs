//! The life of a sandboxed child process, in the fixed order ARCHITECTURE.md gives:
//!
//! 1. sanitise: close every inherited descriptor but stdio and the supervisor
//!    channel (3), clear the environment;
//! 2. validate: handshake with the supervisor, receive and check `Start`;
//! 3. take the resources handed over (bound sockets, opened devices) until `Sealed`;
//! 4. setgroups / setresgid / setresuid to the process's own user;
//! 5. trim capabilities to the service's list (the adjuster: CAP_SYS_TIME);
//! 6. no_new_privs and the seccomp filter, on all threads;
//! 7. report `Ready` and run the event loop: peer channels arrive from the supervisor
//!    (at start and after a peer is re-spawned), each opens with a handshake.
//!
//! No byte from a peer is read before step 6. The supervisor channel is trusted (it
//! is the parent); anything wrong on it ends the process.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitCode;
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use strata_proto::ipc::{
    self, ChildToSupervisor, Hello, MAX_FRAME, PeerMessage, Resource, Role, Settings, Start, SupervisorToChild,
    UnlinkReason,
};
use strata_sys::Capability;
use tracing::{debug, error, info, warn};

use crate::channel::{Channel, RecvError, SendError};

pub use strata_proto::ipc::EXIT_SETUP_FAILED;

/// What a peer did wrong; the event loop drops that peer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub String);

impl From<ipc::FrameError> for Violation {
    fn from(e: ipc::FrameError) -> Self {
        Violation(e.to_string())
    }
}

/// One sandboxed process's behaviour; [`run`] does the rest.
pub trait Service: Sized {
    const ROLE: Role;
    /// Capabilities kept after the privilege drop. Everything else is gone.
    const CAPABILITIES: &'static [Capability] = &[];

    /// Build the service from its settings and resources. Runs after the identity
    /// change, before the sandbox: the last chance for set-up syscalls.
    fn start(settings: Settings, resources: Vec<(Resource, OwnedFd)>) -> Result<Self, String>;

    /// The sandbox is in place on every thread: threads started in `start` may
    /// now read untrusted input.
    fn on_sandboxed(&mut self) {}

    /// The supervisor's table of processes (sent to the control plane only).
    fn on_processes(&mut self, _processes: Vec<strata_proto::status::ProcessStatus>) {}

    /// A peer completed its handshake.
    fn on_linked(&mut self, _peer: Role, _out: &mut Outbox) {}

    /// A frame from a linked peer. An error drops that peer.
    fn on_frame(&mut self, peer: Role, frame: &[u8], out: &mut Outbox) -> Result<(), Violation>;

    /// Extra descriptors to wait on (the engine's NTP sockets).
    fn sources(&self) -> Vec<BorrowedFd<'_>> {
        Vec::new()
    }

    /// `sources()[index]` is readable.
    fn on_readable(&mut self, _index: usize, _out: &mut Outbox) {}

    /// When the service next wants [`Service::on_wakeup`].
    fn next_wakeup(&self) -> Option<Instant> {
        None
    }

    fn on_wakeup(&mut self, _now: Instant, _out: &mut Outbox) {}
}

/// Frames a service wants sent; the event loop sends them to linked peers.
#[derive(Debug)]
pub struct Outbox {
    from: Role,
    frames: Vec<(Role, Vec<u8>)>,
    reports: Vec<ChildToSupervisor>,
}

impl Outbox {
    /// Queue a report for the supervisor (the adjuster's `StepTaken`).
    pub fn report(&mut self, msg: ChildToSupervisor) {
        self.reports.push(msg);
    }

    /// Queue `msg` for its channel's peer. The message type fixes the direction.
    pub fn send<M: PeerMessage>(&mut self, msg: &M) {
        assert_eq!(M::FROM, self.from, "{} may not send {}", self.from, std::any::type_name::<M>());
        let mut buf = vec![0u8; MAX_FRAME];
        match ipc::encode(msg, &mut buf) {
            Ok(frame) => {
                let frame = frame.to_vec();
                self.frames.push((M::TO, frame));
            }
            Err(e) => error!("cannot encode {msg:?}: {e}"),
        }
    }
}

/// Decode a peer frame as the message type of that channel direction; a second
/// `Hello` after the handshake is a violation too.
pub fn decode_peer<M: PeerMessage>(frame: &[u8]) -> Result<M, Violation> {
    // Variant 0 (`Hello`) is the byte 0 in postcard's varint, and no other variant
    // starts with it: a service never sees a Hello, so it need not handle one.
    if frame.first() == Some(&0) {
        return Err(Violation("Hello after the handshake".into()));
    }
    Ok(ipc::decode(frame)?)
}

#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("{0}")]
    Sanitise(strata_sys::SysError),
    #[error("no supervisor channel: {0}")]
    NoChannel(std::io::Error),
    #[error("supervisor handshake: {0}")]
    Handshake(String),
    #[error("start message: {0}")]
    Start(String),
    #[error("dropping privileges: {0}")]
    Privileges(strata_sys::SysError),
    #[error("refusing to run as root: the supervisor gave no identity to switch to")]
    RootWithoutIdentity,
    #[error("service: {0}")]
    Service(String),
    #[error("sandbox: {0}")]
    Sandbox(strata_sys::SysError),
}

/// The whole life of a child process; the binary's `main` calls only this.
pub fn run<S: Service>() -> ExitCode {
    match setup::<S>() {
        Ok((supervisor, service)) => event_loop(supervisor, service),
        Err(e) => {
            // Logging may not be set up yet: stderr directly.
            eprintln!("{}: start-up failed: {e}", S::ROLE);
            ExitCode::from(EXIT_SETUP_FAILED)
        }
    }
}

fn setup<S: Service>() -> Result<(Channel, S), SetupError> {
    // 1. Sanitise.
    strata_sys::close_descriptors_above(strata_sys::SUPERVISOR_FD).map_err(SetupError::Sanitise)?;
    strata_sys::clear_environment();
    strata_sys::one_malloc_arena().map_err(SetupError::Sanitise)?;
    let supervisor = Channel::from_fd(strata_sys::take_supervisor_channel().map_err(SetupError::NoChannel)?);

    // 2. Validate: handshake, Start.
    supervisor
        .send(&ChildToSupervisor::Hello(Hello::new(S::ROLE)), None)
        .map_err(|e| SetupError::Handshake(e.to_string()))?;
    wait_readable(&supervisor);
    supervisor.recv_hello(Role::Supervisor).map_err(|e| SetupError::Handshake(e.to_string()))?;
    let start = match recv_blocking(&supervisor)? {
        (SupervisorToChild::Start(start), None) => start,
        (other, _) => return Err(SetupError::Start(format!("expected Start, got {other:?}"))),
    };
    let Start { identity, log_level, settings } = start;
    if settings.role() != S::ROLE {
        return Err(SetupError::Start(format!("settings are for {}, this is {}", settings.role(), S::ROLE)));
    }
    crate::logging::init(log_level);
    let _span = tracing::info_span!("strata", process = S::ROLE.name()).entered();

    // 3. Take the resources.
    let mut resources = Vec::new();
    loop {
        match recv_blocking(&supervisor)? {
            (SupervisorToChild::Resource(r), Some(fd)) => resources.push((r, fd)),
            (SupervisorToChild::Sealed, None) => break,
            (other, _) => {
                return Err(SetupError::Start(format!("expected a resource or Sealed, got {other:?}")));
            }
        }
    }

    // 4. Identity.
    let euid = nix::unistd::geteuid();
    match identity {
        Some(id) => {
            if !S::CAPABILITIES.is_empty() {
                strata_sys::keep_capabilities_across_uid_change().map_err(SetupError::Privileges)?;
            }
            strata_sys::become_user(id.uid, id.gid).map_err(SetupError::Privileges)?;
        }
        None if euid.is_root() => return Err(SetupError::RootWithoutIdentity),
        None => warn!("development mode: running as the invoking user {euid}"),
    }

    // 5. Capabilities.
    let permitted = strata_sys::effective_capabilities().map_err(SetupError::Privileges)?;
    let keep: Vec<Capability> = if identity.is_some() {
        S::CAPABILITIES.to_vec()
    } else {
        // Development mode: keep what was asked for only if we have it.
        S::CAPABILITIES.iter().copied().filter(|c| permitted.contains(c)).collect()
    };
    strata_sys::retain_only_capabilities(&keep).map_err(SetupError::Privileges)?;
    strata_sys::die_with_parent().map_err(SetupError::Privileges)?;

    let mut service = S::start(settings, resources).map_err(SetupError::Service)?;

    let uid = nix::unistd::getuid().as_raw();

    // 6. The sandbox.
    let policy = strata_policy::seccomp_policy(S::ROLE.name()).expect("every child has a policy");
    strata_sys::set_no_new_privs().map_err(SetupError::Sandbox)?;
    strata_sys::install_seccomp(&policy).map_err(SetupError::Sandbox)?;
    service.on_sandboxed();

    // 7. Ready.
    supervisor.send(&ChildToSupervisor::Ready, None).map_err(|e| SetupError::Handshake(e.to_string()))?;
    info!(uid, capabilities = ?keep, "sandboxed and ready");
    Ok((supervisor, service))
}

fn wait_readable(channel: &Channel) {
    let mut fds = [PollFd::new(channel.as_fd(), PollFlags::POLLIN)];
    let _ = poll(&mut fds, PollTimeout::NONE);
}

fn recv_blocking(supervisor: &Channel) -> Result<(SupervisorToChild, Option<OwnedFd>), SetupError> {
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        wait_readable(supervisor);
        match supervisor.recv::<SupervisorToChild>(&mut buf) {
            Ok(r) => return Ok((r.msg, r.fd)),
            Err(RecvError::WouldBlock) => continue,
            Err(e) => return Err(SetupError::Start(e.to_string())),
        }
    }
}

struct PeerLink {
    role: Role,
    link: u64,
    channel: Channel,
    linked: bool,
}

enum Exit {
    Shutdown,
    SupervisorGone,
    SupervisorViolation(String),
}

fn event_loop<S: Service>(supervisor: Channel, mut service: S) -> ExitCode {
    let _span = tracing::info_span!("strata", process = S::ROLE.name()).entered();
    let mut peers: Vec<PeerLink> = Vec::new();
    let mut out = Outbox { from: S::ROLE, frames: Vec::new(), reports: Vec::new() };
    let mut buf = vec![0u8; MAX_FRAME];
    let exit = loop {
        // Wait.
        let timeout = match service.next_wakeup() {
            None => PollTimeout::NONE,
            Some(at) => {
                let ms = at.saturating_duration_since(Instant::now()).as_millis().min(60_000);
                PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let (sup_ready, peer_ready, source_ready) = {
            let sources = service.sources();
            let mut fds = Vec::with_capacity(1 + peers.len() + sources.len());
            fds.push(PollFd::new(supervisor.as_fd(), PollFlags::POLLIN));
            fds.extend(peers.iter().map(|p| PollFd::new(p.channel.as_fd(), PollFlags::POLLIN)));
            fds.extend(sources.iter().map(|s| PollFd::new(*s, PollFlags::POLLIN)));
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => {
                    error!("poll failed: {e}");
                    break Exit::SupervisorGone;
                }
            }
            let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
            let peer_ready = ready[1..1 + peers.len()].to_vec();
            let source_ready = ready[1 + peers.len()..].to_vec();
            (ready[0], peer_ready, source_ready)
        };

        // The supervisor.
        if sup_ready {
            match supervisor.recv::<SupervisorToChild>(&mut buf) {
                Ok(r) => match (r.msg, r.fd) {
                    (SupervisorToChild::Peer { peer: role, link }, Some(fd)) if S::ROLE.peers().any(|p| p == role) => {
                        if let Some(old) = peers.iter().position(|p| p.role == role) {
                            peers.remove(old);
                            debug!(peer = %role, "channel replaced");
                        }
                        let channel = Channel::from_fd(fd);
                        match channel.send_hello(S::ROLE) {
                            Ok(()) => peers.push(PeerLink { role, link, channel, linked: false }),
                            Err(e) => warn!(peer = %role, "cannot greet peer: {e}"),
                        }
                    }
                    (SupervisorToChild::Shutdown, None) => break Exit::Shutdown,
                    (SupervisorToChild::Processes(processes), None) => service.on_processes(processes),
                    (other, _) => break Exit::SupervisorViolation(format!("unexpected {other:?}")),
                },
                Err(RecvError::WouldBlock) => {}
                Err(RecvError::Closed) => break Exit::SupervisorGone,
                Err(e) => break Exit::SupervisorViolation(e.to_string()),
            }
        }

        // Peers: the first frame must be the handshake, then the service decodes.
        let mut dropped: Vec<(usize, UnlinkReason)> = Vec::new();
        for (i, ready) in peer_ready.iter().enumerate() {
            if !ready {
                continue;
            }
            let peer = &mut peers[i];
            let result = match peer.channel.recv_frame(&mut buf) {
                Ok((frame, None)) if !peer.linked => match ipc::decode_hello(frame, peer.role) {
                    Ok(_) => {
                        peer.linked = true;
                        info!(peer = %peer.role, "linked");
                        let linked = ChildToSupervisor::Linked { peer: peer.role, link: peer.link };
                        let _ = supervisor.send(&linked, None);
                        service.on_linked(peer.role, &mut out);
                        Ok(())
                    }
                    Err(e) => Err(Violation(format!("bad handshake: {e}"))),
                },
                Ok((frame, None)) => service.on_frame(peer.role, frame, &mut out),
                Ok((_, Some(_))) => Err(Violation(RecvError::UnexpectedDescriptor.to_string())),
                Err(RecvError::WouldBlock) => Ok(()),
                Err(RecvError::Closed) => {
                    dropped.push((i, UnlinkReason::Closed));
                    continue;
                }
                Err(e) => Err(Violation(e.to_string())),
            };
            if let Err(Violation(why)) = result {
                warn!(peer = %peer.role, "protocol violation, dropping the peer: {why}");
                dropped.push((i, UnlinkReason::Violation));
            }
        }
        for &(i, reason) in dropped.iter().rev() {
            let peer = peers.remove(i);
            if reason == UnlinkReason::Closed {
                info!(peer = %peer.role, "peer closed the channel");
            }
            let report = ChildToSupervisor::Unlinked { peer: peer.role, link: peer.link, reason };
            let _ = supervisor.send(&report, None);
        }

        // The service's own descriptors and timers.
        for (i, ready) in source_ready.iter().enumerate() {
            if *ready {
                service.on_readable(i, &mut out);
            }
        }
        if service.next_wakeup().is_some_and(|at| at <= Instant::now()) {
            service.on_wakeup(Instant::now(), &mut out);
        }

        // Send what the service queued.
        for report in out.reports.drain(..) {
            if let Err(e) = supervisor.send(&report, None) {
                error!("cannot report {report:?} to the supervisor: {e}");
            }
        }
        for (to, frame) in out.frames.drain(..) {
            let Some(i) = peers.iter().position(|p| p.role == to && p.linked) else {
                debug!(peer = %to, "not linked; message dropped");
                continue;
            };
            if let Err(e) = peers[i].channel.send_frame(&frame, None) {
                // A full queue means the peer stopped reading: as broken as garbage.
                let reason = match e {
                    SendError::Full => UnlinkReason::Violation,
                    _ => UnlinkReason::Closed,
                };
                warn!(peer = %to, "send failed, dropping the peer: {e}");
                let peer = peers.remove(i);
                let report = ChildToSupervisor::Unlinked { peer: peer.role, link: peer.link, reason };
                let _ = supervisor.send(&report, None);
            }
        }
    };
    match exit {
        Exit::Shutdown => {
            info!("shutting down");
            ExitCode::SUCCESS
        }
        Exit::SupervisorGone => {
            info!("supervisor gone, exiting");
            ExitCode::SUCCESS
        }
        Exit::SupervisorViolation(why) => {
            error!("supervisor channel broken: {why}");
            ExitCode::from(EXIT_SETUP_FAILED)
        }
    }
}
