//! `strata run`: the supervisor.
//!
//! 1. sanitise (close inherited descriptors, clear the environment);
//! 2. validate the configuration;
//! 3. open the privileged resources (bind the NTP sockets) and resolve the users;
//! 4. trim its own capabilities: the bounding set keeps only what the children need
//!    (CAP_SETUID/CAP_SETGID to become their users, CAP_SYS_TIME for the adjuster)
//!    and CAP_KILL, so nothing started from here can ever hold more; the supervisor
//!    itself uses only CAP_KILL (effective) to stop children that run under other
//!    uids, and keeps the other three permitted for its children's exec;
//! 5. no_new_privs and its own seccomp filter (policy/seccomp/<arch>/supervisor.json);
//! 6. spawn each child with its supervisor channel on descriptor 3, give it its
//!    identity, settings and resources, wait for `Ready`, then link it to its peers;
//! 7. watch: re-spawn a dead child with back-off inside a restart budget, re-link
//!    its peers; never re-spawn one that exits with the do-not-respawn status;
//! 8. on SIGTERM/SIGINT stop the children in reverse start order within 2 s.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, User};
use strata_config::Config;
use strata_process::channel::{Channel, RecvError};
use strata_proto::ipc::{
    self, AdjustSettings, ChildToSupervisor, ControlSettings, EXIT_DO_NOT_RESPAWN, Hello, Identity, MAX_FRAME,
    RefclockSettings, Resource, Role, Settings, Start, SupervisorToChild, UnlinkReason,
};
use strata_sys::Capability;
use tracing::{debug, error, info, warn};

use crate::status::{self, ApplianceStatus, ProcessStatus};

/// What the supervisor keeps in its bounding set (see step 4 above).
const BOUNDING: [Capability; 4] =
    [Capability::CAP_SETUID, Capability::CAP_SETGID, Capability::CAP_SYS_TIME, Capability::CAP_KILL];

/// How long each child gets to exit after `Shutdown` before SIGKILL: four children
/// in sequence stay inside the 2 s the appliance promises.
const STOP_GRACE: Duration = Duration::from_millis(400);

#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("{0}")]
    Sanitise(strata_sys::SysError),
    #[error("{0}")]
    Config(strata_config::ConfigError),
    #[error(
        "user {name:?} for the {role} process does not exist (create the users with `systemd-sysusers deploy/sysusers.d/strata.conf`)"
    )]
    NoSuchUser { name: String, role: Role },
    #[error("looking up user {name:?}: {source}")]
    UserLookup { name: String, source: nix::Error },
    #[error("binding NTP socket {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("simulated clock model {path}: {source}")]
    ClockModel { path: PathBuf, source: std::io::Error },
    #[error("runtime directory {dir}: {source}")]
    RuntimeDir { dir: PathBuf, source: std::io::Error },
    #[error("trimming the supervisor's capabilities: {0}")]
    Capabilities(strata_sys::SysError),
    #[error("signal handling: {0}")]
    Signals(nix::Error),
    #[error("the supervisor's own sandbox: {0}")]
    Sandbox(strata_sys::SysError),
    #[error("control plane: {what}: {source}")]
    Control { what: String, source: std::io::Error },
    #[error("locating the process binaries: {0}")]
    Binaries(std::io::Error),
    #[error("refclock {path}: {source}")]
    Refclock { path: PathBuf, source: std::io::Error },
}

enum Phase {
    /// Spawned; waiting for its Hello.
    Greeting,
    /// Start and resources sent; waiting for Ready.
    Starting,
    Ready,
}

struct Instance {
    pid: Pid,
    channel: Option<Channel>,
    phase: Phase,
    /// When it said Ready (monotonic: its probation runs from here; status.json's
    /// wall-clock time is derived from it).
    ready_at: Option<Instant>,
    /// Peers whose handshake completed, with the id of that channel.
    linked: BTreeMap<Role, u64>,
}

/// The two processes at the ends of one peer channel.
struct LinkEnds {
    ends: [(Role, Pid); 2],
}

/// A pair to link again once the pause after an accusation is over.
struct Relink {
    at: Instant,
    ends: [(Role, Pid); 2],
}

struct Slot {
    role: Role,
    identity: Option<Identity>,
    instance: Option<Instance>,
    restarts: crate::restart::Restarts,
    spawns: u32,
    respawn_at: Option<Instant>,
    last_exit: Option<String>,
    failed: bool,
}

struct Supervisor {
    config: Config,
    bin_dir: PathBuf,
    slots: Vec<Slot>,
    /// What each child gets at every (re-)spawn, opened or bound once here: the
    /// engine's NTP sockets, the reader's SOCK sockets and devices, the control
    /// plane's listeners and TLS files.
    resources: BTreeMap<Role, Vec<(Resource, OwnedFd)>>,
    alarms: Vec<String>,
    development: bool,
    stopping: bool,
    links: HashMap<u64, LinkEnds>,
    next_link: u64,
    evidence: crate::accusation::Evidence,
    relinks: Vec<Relink>,
    /// The simulated clock's model file, opened once: read-write for the adjuster,
    /// read-only for the engine.
    clock_model: Option<(OwnedFd, OwnedFd)>,
    phc: Option<(OwnedFd, OwnedFd)>,
    steps: StepLedger,
    /// Every upstream with the address it is polled at (a pool gives several).
    upstreams: Vec<(strata_config::Upstream, std::net::SocketAddr)>,
    notifier: crate::notify::Notifier,
    logs: Option<crate::logs::Logs>,
    /// The gids of `[control] read-group` and `admin-group` (absent groups: nobody).
    control_gids: (Option<u32>, Option<u32>),
}

pub fn run(config_path: &Path) -> ExitCode {
    // The configured level is not known yet; start at info and reset below.
    strata_process::logging::init(ipc::LogLevel::Info);
    match Supervisor::start(config_path) {
        Ok((mut supervisor, signals)) => supervisor.watch(signals),
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

impl Supervisor {
    fn start(config_path: &Path) -> Result<(Supervisor, SignalFd), StartError> {
        // 1. Sanitise.
        let bin_dir = std::env::current_exe()
            .map_err(StartError::Binaries)?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| StartError::Binaries(std::io::ErrorKind::NotFound.into()))?;
        strata_sys::close_descriptors_above(2).map_err(StartError::Sanitise)?;
        let notifier = crate::notify::Notifier::from_environment();
        strata_sys::clear_environment();

        // 2. Validate.
        let config = Config::from_file(config_path).map_err(StartError::Config)?;
        let development = !nix::unistd::geteuid().is_root();
        if development {
            warn!(
                "not started as root: development mode, every process runs as uid {} with no sandbox users",
                nix::unistd::geteuid()
            );
        }

        // 3. Privileged resources and identities.
        let mut slots = Vec::new();
        for role in Role::CHILDREN {
            let identity = if development { None } else { Some(lookup(config.users.of(role), role)?) };
            slots.push(Slot {
                role,
                identity,
                instance: None,
                restarts: Default::default(),
                spawns: 0,
                respawn_at: Some(Instant::now()),
                last_exit: None,
                failed: false,
            });
        }
        let mut resources = Vec::new();
        let threads = config.server.threads();
        let receive_buffer = config.server.receive_buffer.0 as usize;
        for &addr in &config.server.listen {
            // One socket per serving thread, all bound to the same address with
            // SO_REUSEPORT: the kernel spreads clients over them by address hash.
            let mut port = addr.port();
            for thread in 0..threads {
                let socket = bind_ntp_socket(std::net::SocketAddr::new(addr.ip(), port), receive_buffer)
                    .map_err(|source| StartError::Bind { addr, source })?;
                let local = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(socket.as_raw_fd())
                    .ok()
                    .and_then(|a| socket_addr(&a))
                    .unwrap_or(addr);
                port = local.port(); // port 0: the others join the port the first one got
                resources.push((Resource::NtpSocket { local, thread }, socket));
            }
            info!(%addr, port, threads, "bound NTP sockets");
        }
        // Refclock devices and sockets, opened here: the reader may open nothing.
        let refclock_sockets =
            crate::refclocks::open(&config.refclock).map_err(|(path, source)| StartError::Refclock { path, source })?;
        let dir = &config.supervisor.runtime_dir;
        std::fs::create_dir_all(dir).map_err(|source| StartError::RuntimeDir { dir: dir.clone(), source })?;
        let control_resources = crate::control::open_resources(&config)?;
        let control_gids = (
            crate::control::group_id(&config.control.read_group),
            crate::control::group_id(&config.control.admin_group),
        );
        let steps = StepLedger::load(dir).map_err(|source| StartError::RuntimeDir { dir: dir.clone(), source })?;
        let logs = match &config.logs {
            None => None,
            Some(l) => Some(
                crate::logs::Logs::new(l).map_err(|source| StartError::RuntimeDir { dir: l.dir.clone(), source })?,
            ),
        };
        let clock_model = match config.clock.backend.model_path() {
            None => None,
            Some(path) => Some(
                open_clock_model(path).map_err(|source| StartError::ClockModel { path: path.to_owned(), source })?,
            ),
        };
        // The PHC to discipline: read-write for the adjuster, read-only for the engine.
        let phc = match config.clock.backend.phc_path() {
            None => None,
            Some(path) => {
                Some(open_phc(path).map_err(|source| StartError::ClockModel { path: path.to_owned(), source })?)
            }
        };

        // NIC hardware timestamping needs CAP_NET_ADMIN, which goes below.
        resources.extend(crate::hwtimestamp::enable(&config.server.hwtimestamp));

        // Host names, through the unprivileged resolver helper, while we can still
        // start it under the engine's user.
        let engine_identity = slots.iter().find(|s| s.role == Role::Ntp).and_then(|s| s.identity);
        let upstreams = resolve_upstreams(&config, engine_identity);

        // 4. Trim our own capabilities. The three the children need stay permitted
        // (never effective): under no_new_privs (step 5) an exec gets at most its
        // caller's permitted set, so without them no child could become its user.
        if !development {
            strata_sys::limit_bounding_set(&BOUNDING).map_err(StartError::Capabilities)?;
            strata_sys::retain_capabilities(&[Capability::CAP_KILL], &BOUNDING).map_err(StartError::Capabilities)?;
        }

        let mut mask = SigSet::empty();
        for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            mask.add(s);
        }
        mask.thread_block().map_err(StartError::Signals)?;
        let signals =
            SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(StartError::Signals)?;

        // 5. Our own filter, now that everything privileged is open: no_new_privs
        // (we hold no CAP_SYS_ADMIN) and policy/seccomp/<arch>/supervisor.json,
        // which every child inherits under its own.
        strata_sys::set_no_new_privs().map_err(StartError::Sandbox)?;
        strata_sys::install_seccomp(&strata_policy::SUPERVISOR).map_err(StartError::Sandbox)?;

        Ok((
            Supervisor {
                config,
                bin_dir,
                slots,
                resources: BTreeMap::from([
                    (Role::Ntp, resources),
                    (Role::Refclock, refclock_sockets),
                    (Role::Control, control_resources),
                ]),
                alarms: Vec::new(),
                development,
                stopping: false,
                links: HashMap::new(),
                next_link: 1,
                evidence: Default::default(),
                relinks: Vec::new(),
                clock_model,
                phc,
                steps,
                upstreams,
                notifier,
                logs,
                control_gids,
            },
            signals,
        ))
    }

    /// The event loop: signals, child channels, re-spawn timers.
    fn watch(&mut self, signals: SignalFd) -> ExitCode {
        let mut buf = vec![0u8; MAX_FRAME];
        self.spawn_due();
        loop {
            let next = self
                .slots
                .iter()
                .filter_map(|s| s.respawn_at)
                .chain(self.relinks.iter().map(|r| r.at))
                .chain(self.notifier.next_watchdog())
                .min();
            let timeout = match next {
                None => PollTimeout::NONE,
                Some(at) => {
                    let ms = at.saturating_duration_since(Instant::now()).as_millis().min(60_000) as i32;
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            let ready: Vec<bool> = {
                let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
                let watched: Vec<usize> = (0..self.slots.len()).collect();
                for &i in &watched {
                    if let Some(ch) = self.slots[i].instance.as_ref().and_then(|i| i.channel.as_ref()) {
                        fds.push(PollFd::new(ch.as_fd(), PollFlags::POLLIN));
                    }
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::Error::EINTR) => {}
                    Err(e) => {
                        error!("poll: {e}");
                        return self.stop(ExitCode::FAILURE);
                    }
                }
                fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect()
            };

            if ready[0] {
                while let Ok(Some(info)) = signals.read_signal() {
                    match Signal::try_from(info.ssi_signo as i32) {
                        Ok(Signal::SIGCHLD) => self.reap(),
                        Ok(Signal::SIGHUP) => {
                            info!("SIGHUP: configuration reload is not supported; restart strata")
                        }
                        Ok(sig) => {
                            info!("{sig}: stopping");
                            return self.stop(ExitCode::SUCCESS);
                        }
                        Err(_) => {}
                    }
                }
            }
            // Channels, in the order they were put in the poll set.
            let mut k = 1;
            for i in 0..self.slots.len() {
                let has_channel = self.slots[i].instance.as_ref().is_some_and(|i| i.channel.is_some());
                if !has_channel {
                    continue;
                }
                if ready.get(k).copied().unwrap_or(false) {
                    self.on_child_frame(i, &mut buf);
                }
                k += 1;
            }
            if self.slots.iter().any(|s| s.role == Role::Ntp && s.failed) {
                error!("the NTP engine cannot be kept running; stopping the appliance");
                return self.stop(ExitCode::FAILURE);
            }
            self.spawn_due();
            self.relink_due();
            self.notifier.watchdog();
        }
    }

    fn spawn_due(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            if self.slots[i].respawn_at.is_some_and(|at| at <= now) && !self.stopping {
                self.slots[i].respawn_at = None;
                self.spawn(i);
            }
        }
    }

    fn spawn(&mut self, i: usize) {
        let role = self.slots[i].role;
        let (ours, theirs) = match Channel::pair() {
            Ok(p) => p,
            Err(e) => {
                error!(process = %role, "cannot create its channel: {e}");
                self.slots[i].respawn_at = Some(Instant::now() + Duration::from_secs(1));
                return;
            }
        };
        let mut command = Command::new(self.bin_dir.join(role.binary()));
        command.env_clear();
        match strata_sys::spawn_with_channel(command, theirs.into_fd()) {
            Ok(child) => {
                let pid = Pid::from_raw(child.id() as i32);
                info!(process = %role, %pid, "spawned");
                let slot = &mut self.slots[i];
                slot.spawns += 1;
                slot.instance = Some(Instance {
                    pid,
                    channel: Some(ours),
                    phase: Phase::Greeting,
                    ready_at: None,
                    linked: BTreeMap::new(),
                });
            }
            Err(e) => {
                error!(process = %role, "cannot spawn {}: {e}", self.bin_dir.join(role.binary()).display());
                self.after_death(i, format!("could not be spawned: {e}"), false, None);
            }
        }
        self.publish();
    }

    fn settings(&self, role: Role) -> Settings {
        match role {
            Role::Ntp => {
                let initial_frequency = self.config.clock.driftfile.as_deref().and_then(read_driftfile);
                Settings::Ntp(crate::refclocks::ntp_settings(&self.config, &self.upstreams, initial_frequency))
            }
            Role::Refclock => Settings::Refclock(RefclockSettings {
                refclocks: crate::refclocks::driver_settings(&self.config.refclock),
            }),
            Role::Adjust => Settings::Adjust(AdjustSettings {
                backend: self.config.clock.backend.0,
                steps_left: strata_policy::clock::STEP_BUDGET_PER_BOOT.saturating_sub(self.steps.used),
                automatic_steps_until_boot_ns: self.steps.first_start_boot_ns
                    + (strata_policy::clock::STEP_WINDOW_S * 1e9) as i64,
                max_slew_rate_ppm: crate::refclocks::slew_rate_ppm(&self.config),
            }),
            Role::Control => Settings::Control(ControlSettings {
                read_gid: self.control_gids.0,
                admin_gid: self.control_gids.1,
                tls_role: match self.config.control.tls.as_ref().map(|t| t.role) {
                    Some(strata_config::TlsRole::Admin) => ipc::ControlRole::Admin,
                    _ => ipc::ControlRole::Read,
                },
                socket_path: self.config.control_socket().display().to_string(),
            }),
            Role::Supervisor => unreachable!("the supervisor is not a child"),
        }
    }

    fn on_child_frame(&mut self, i: usize, buf: &mut [u8]) {
        let role = self.slots[i].role;
        let Some(instance) = self.slots[i].instance.as_mut() else {
            return;
        };
        let Some(channel) = instance.channel.as_ref() else {
            return;
        };
        let result = match instance.phase {
            Phase::Greeting => channel.recv_hello(role).map(|_| None),
            _ => channel.recv::<ChildToSupervisor>(buf).map(|r| Some(r.msg)),
        };
        match result {
            Ok(None) => {
                instance.phase = Phase::Starting;
                if let Err(e) = self.send_start(i) {
                    warn!(process = %role, "start failed: {e}");
                    self.kill_instance(i);
                }
            }
            Ok(Some(ChildToSupervisor::Ready)) if matches!(instance.phase, Phase::Starting) => {
                instance.phase = Phase::Ready;
                instance.ready_at = Some(Instant::now());
                info!(process = %role, pid = %instance.pid, "ready");
                self.link(i);
                self.publish();
            }
            Ok(Some(ChildToSupervisor::Linked { peer, link })) => {
                instance.linked.insert(peer, link);
                self.publish();
                if self.all_linked() {
                    self.notifier.ready("every process ready and linked");
                }
            }
            Ok(Some(ChildToSupervisor::Unlinked { peer, link, reason })) => {
                if instance.linked.get(&peer) == Some(&link) {
                    instance.linked.remove(&peer);
                }
                // Only a report about a channel between the reporter and `peer` counts.
                let reporter = instance.pid;
                let accused = match self.links.get(&link).map(|l| l.ends) {
                    Some([a, b]) if a == (role, reporter) && b.0 == peer => Some(b.1),
                    Some([b, a]) if a == (role, reporter) && b.0 == peer => Some(b.1),
                    _ => None,
                };
                if accused.is_some() {
                    self.links.remove(&link);
                }
                if reason == UnlinkReason::Violation {
                    self.on_accusation(role, reporter, peer, accused);
                }
                self.publish();
            }
            Ok(Some(ChildToSupervisor::Drift { frequency_ppm, skew_ppm }))
                if role == Role::Ntp && frequency_ppm.is_finite() && skew_ppm.is_finite() && skew_ppm >= 0.0 =>
            {
                if let Some(path) = &self.config.clock.driftfile
                    && let Err(e) = write_driftfile(path, frequency_ppm, skew_ppm)
                {
                    warn!("cannot write the driftfile {}: {e}", path.display());
                }
            }
            Ok(Some(ChildToSupervisor::Log(record))) if role == Role::Ntp => {
                if let Some(logs) = &mut self.logs
                    && let Err(e) = logs.write(&record)
                {
                    warn!("statistics log: {e}");
                }
            }
            Ok(Some(ChildToSupervisor::StepTaken)) if role == Role::Adjust => {
                self.steps.used += 1;
                warn!(
                    used = self.steps.used,
                    budget = strata_policy::clock::STEP_BUDGET_PER_BOOT,
                    "the clock was stepped"
                );
                if let Err(e) = self.steps.save(&self.config.supervisor.runtime_dir) {
                    error!("cannot record the clock step: {e}");
                }
                self.publish();
            }
            Ok(Some(other)) => {
                warn!(process = %role, "unexpected {other:?} on the supervisor channel; killing it");
                self.kill_instance(i);
            }
            Err(RecvError::WouldBlock) => {}
            Err(RecvError::Closed) => {
                // Dying: SIGCHLD follows. Stop polling the dead channel meanwhile.
                instance.channel = None;
            }
            Err(e) => {
                warn!(process = %role, "supervisor channel: {e}; killing it");
                self.kill_instance(i);
            }
        }
    }

    fn send_start(&self, i: usize) -> Result<(), strata_process::channel::SendError> {
        let slot = &self.slots[i];
        let channel = slot.instance.as_ref().and_then(|i| i.channel.as_ref()).expect("instance has a channel");
        channel.send(&SupervisorToChild::Hello(Hello::new(Role::Supervisor)), None)?;
        let start = Start {
            identity: slot.identity,
            log_level: self.config.supervisor.log_level.into(),
            settings: self.settings(slot.role),
        };
        channel.send(&SupervisorToChild::Start(start), None)?;
        for (resource, fd) in self.resources.get(&slot.role).into_iter().flatten() {
            channel.send(&SupervisorToChild::Resource(resource.clone()), Some(fd.as_fd()))?;
        }
        if let Some((read_write, read_only)) = &self.phc {
            let fd = match slot.role {
                Role::Adjust => Some((true, read_write)),
                Role::Ntp => Some((false, read_only)),
                _ => None,
            };
            if let Some((writable, fd)) = fd {
                channel.send(&SupervisorToChild::Resource(Resource::PhcDevice { writable }), Some(fd.as_fd()))?;
            }
        }
        if let Some((read_write, read_only)) = &self.clock_model {
            let (writable, fd) = match slot.role {
                Role::Adjust => (true, Some(read_write)),
                Role::Ntp => (false, Some(read_only)),
                _ => (false, None),
            };
            if let Some(fd) = fd {
                channel.send(&SupervisorToChild::Resource(Resource::ClockModel { writable }), Some(fd.as_fd()))?;
            }
        }
        channel.send(&SupervisorToChild::Sealed, None)
    }

    /// Give a newly ready child a fresh channel to each ready peer.
    fn link(&mut self, i: usize) {
        for peer in self.slots[i].role.peers() {
            if let Some(j) = self.slots.iter().position(|s| s.role == peer) {
                self.link_pair(i, j);
            }
        }
    }

    /// A fresh channel between two ready children.
    fn link_pair(&mut self, i: usize, j: usize) {
        let ready =
            |k: usize| self.slots[k].instance.as_ref().filter(|x| matches!(x.phase, Phase::Ready)).map(|x| x.pid);
        let (Some(pid_i), Some(pid_j)) = (ready(i), ready(j)) else {
            return;
        };
        let (role, peer) = (self.slots[i].role, self.slots[j].role);
        let link = self.next_link;
        self.next_link += 1;
        self.links.insert(link, LinkEnds { ends: [(role, pid_i), (peer, pid_j)] });
        let (a, b) = match Channel::pair() {
            Ok(p) => p,
            Err(e) => {
                error!("cannot create a channel {role} <-> {peer}: {e}");
                return;
            }
        };
        for (k, other, end) in [(i, peer, &a), (j, role, &b)] {
            let ch = self.slots[k].instance.as_ref().and_then(|x| x.channel.as_ref());
            if let Some(ch) = ch
                && let Err(e) = ch.send(&SupervisorToChild::Peer { peer: other, link }, Some(end.as_fd()))
            {
                warn!(process = %self.slots[k].role, "cannot hand over its channel to {other}: {e}");
            }
        }
    }

    /// `accuser` (instance `reporter`) dropped its channel to `peer` for a protocol
    /// violation; `accused` is the instance that was at the other end, if that
    /// channel was known. See `accusation.rs` for whose word is acted on.
    fn on_accusation(&mut self, accuser: Role, reporter: Pid, peer: Role, accused: Option<Pid>) {
        let Some(j) = self.slots.iter().position(|s| s.role == peer) else {
            return;
        };
        let current = self.slots[j].instance.as_ref().map(|x| x.pid);
        let Some(pid) = accused.filter(|&p| current == Some(p)) else {
            // Debug only: anyone can name a channel that is gone, as often as it likes.
            debug!(process = %accuser, %peer, "dropped an old channel to {peer} for a protocol violation");
            return;
        };
        match self.evidence.report(accuser, peer, pid.as_raw(), Instant::now()) {
            crate::accusation::Verdict::Replace => {
                warn!(process = %accuser, %peer, "dropped {peer} for a protocol violation; re-spawning {peer}");
                self.kill_instance(j);
            }
            crate::accusation::Verdict::RelinkAt(at) => {
                warn!(
                    process = %accuser, %peer, accused = %pid,
                    "dropped {peer} for a protocol violation; kept as evidence ({peer} keeps running), \
                     linking the two again in {} ms",
                    at.saturating_duration_since(Instant::now()).as_millis()
                );
                self.relinks.push(Relink { at, ends: [(accuser, reporter), (peer, pid)] });
            }
        }
    }

    /// Link again the pairs whose pause after an accusation is over, if both
    /// instances still live (a successor was linked when it became ready).
    fn relink_due(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<Relink>, Vec<Relink>) = self.relinks.drain(..).partition(|r| r.at <= now);
        self.relinks = later;
        for r in due {
            let [i, j] = r.ends.map(|(role, pid)| {
                self.slots.iter().position(|s| s.role == role && s.instance.as_ref().is_some_and(|x| x.pid == pid))
            });
            if let (Some(i), Some(j)) = (i, j) {
                self.link_pair(i, j);
            }
        }
    }

    fn kill_instance(&mut self, i: usize) {
        if let Some(instance) = &self.slots[i].instance {
            let _ = kill(instance.pid, Signal::SIGKILL);
        }
    }

    /// Collect every exited child and decide what follows.
    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.on_exit(pid, format!("exited with status {code}"), code == i32::from(EXIT_DO_NOT_RESPAWN))
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    let why = if sig == Signal::SIGSYS {
                        "killed by SIGSYS (seccomp: a syscall outside its policy)".to_string()
                    } else {
                        format!("killed by {sig}")
                    };
                    self.on_exit(pid, why, false);
                }
                Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => break,
                Ok(_) => continue,
                Err(e) => {
                    warn!("waitpid: {e}");
                    break;
                }
            }
        }
    }

    fn on_exit(&mut self, pid: Pid, why: String, do_not_respawn: bool) {
        let Some(i) = self.slots.iter().position(|s| s.instance.as_ref().is_some_and(|x| x.pid == pid)) else {
            return;
        };
        warn!(process = %self.slots[i].role, %pid, "{why}");
        let ready_at = self.slots[i].instance.take().and_then(|x| x.ready_at);
        self.links.retain(|_, l| l.ends.iter().all(|&(_, p)| p != pid));
        self.evidence.forget(pid.as_raw());
        self.after_death(i, why, do_not_respawn, ready_at);
        self.publish();
    }

    fn after_death(&mut self, i: usize, why: String, do_not_respawn: bool, ready_at: Option<Instant>) {
        let policy = self.config.supervisor.restart;
        let slot = &mut self.slots[i];
        slot.last_exit = Some(why.clone());
        if self.stopping {
            return;
        }
        if do_not_respawn {
            slot.failed = true;
            let alarm = format!("{} {why}: the do-not-respawn status; it stays down", slot.role);
            error!("ALARM: {alarm}");
            self.alarms.push(alarm);
            return;
        }
        let now = Instant::now();
        match slot.restarts.on_death(&policy, now, ready_at) {
            crate::restart::Decision::GiveUp => {
                slot.failed = true;
                let alarm = format!(
                    "{} exhausted its restart budget ({} deaths within {} ms of start in {} s); it stays down",
                    slot.role, policy.budget.0, policy.probation_ms.0, policy.window_s.0
                );
                error!("ALARM: {alarm}");
                self.alarms.push(alarm);
            }
            crate::restart::Decision::RespawnAt(at) => {
                info!(process = %slot.role, "re-spawning in {} ms", at.duration_since(now).as_millis());
                slot.respawn_at = Some(at);
            }
        }
    }

    /// Stop the children in reverse start order; SIGKILL those that do not exit in time.
    fn stop(&mut self, code: ExitCode) -> ExitCode {
        self.stopping = true;
        self.notifier.stopping();
        self.publish();
        for role in Role::CHILDREN.iter().rev() {
            let Some(i) = self.slots.iter().position(|s| s.role == *role) else {
                continue;
            };
            let Some(instance) = self.slots[i].instance.take() else {
                continue;
            };
            if let Some(ch) = &instance.channel {
                let _ = ch.send(&SupervisorToChild::Shutdown, None);
            }
            let deadline = Instant::now() + STOP_GRACE;
            loop {
                match waitpid(instance.pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Ok(WaitStatus::StillAlive) => {
                        warn!(process = %role, "did not stop in time; killing it");
                        let _ = kill(instance.pid, Signal::SIGKILL);
                        let _ = waitpid(instance.pid, None);
                        break;
                    }
                    _ => break,
                }
            }
            self.slots[i].last_exit = Some("stopped".into());
            info!(process = %role, "stopped");
        }
        self.publish();
        info!("appliance stopped");
        code
    }

    /// Every child ready and linked with all its peers.
    fn all_linked(&self) -> bool {
        self.slots.iter().all(|s| {
            s.instance
                .as_ref()
                .is_some_and(|x| matches!(x.phase, Phase::Ready) && x.linked.len() == s.role.peers().count())
        })
    }

    fn publish(&self) {
        let processes: Vec<ProcessStatus> = self
            .slots
            .iter()
            .map(|s| {
                let state = match (&s.instance, s.failed, self.stopping) {
                    (Some(x), _, _) => match x.phase {
                        Phase::Ready => "ready",
                        _ => "starting",
                    },
                    (None, true, _) => "failed",
                    (None, false, true) => "stopped",
                    (None, false, false) => "restarting",
                };
                ProcessStatus {
                    role: s.role.name().into(),
                    pid: s.instance.as_ref().map(|x| x.pid.as_raw() as u32),
                    uid: s.identity.map(|id| id.uid).or_else(|| Some(nix::unistd::getuid().as_raw())),
                    state: state.into(),
                    ready_since_ms: s
                        .instance
                        .as_ref()
                        .and_then(|x| x.ready_at)
                        .and_then(|t| SystemTime::now().checked_sub(t.elapsed()))
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_millis() as u64)),
                    spawns: s.spawns,
                    restarts: s.restarts.total,
                    last_exit: s.last_exit.clone(),
                    linked: s.instance.iter().flat_map(|x| x.linked.keys().map(|r| r.name().to_string())).collect(),
                }
            })
            .collect();
        // The control plane keeps the same table for the API and metrics.
        if let Some(control) = self.slots.iter().find(|s| s.role == Role::Control)
            && let Some(Instance { channel: Some(ch), phase: Phase::Ready, .. }) = &control.instance
            && let Err(e) = ch.send(&SupervisorToChild::Processes(processes.clone()), None)
        {
            debug!("cannot tell the control plane about the processes: {e}");
        }
        let status = ApplianceStatus {
            supervisor_pid: std::process::id(),
            mode: if self.development { "development" } else { "production" }.into(),
            state: if self.stopping { "stopping" } else { "running" }.into(),
            processes,
            alarms: self.alarms.clone(),
            clock_steps_used: self.steps.used,
            clock_step_budget: strata_policy::clock::STEP_BUDGET_PER_BOOT,
        };
        if let Err(e) = status::write(&self.config.supervisor.runtime_dir, &status) {
            warn!("cannot write the status file in {}: {e}", self.config.supervisor.runtime_dir.display());
        }
    }
}

/// The clock steps of this boot, kept in the runtime directory so that neither a
/// re-spawned adjuster nor a restarted appliance gets its budget back. The boot id
/// tells a new boot (whose budget is fresh) from a restart.
struct StepLedger {
    boot_id: String,
    /// When the appliance first started in this boot (CLOCK_BOOTTIME, ns).
    first_start_boot_ns: i64,
    used: u32,
}

const STEP_LEDGER: &str = "clock-steps";

impl StepLedger {
    fn load(dir: &Path) -> std::io::Result<StepLedger> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?.trim().to_string();
        let now = strata_sys::boottime_ns();
        let saved = std::fs::read_to_string(dir.join(STEP_LEDGER)).unwrap_or_default();
        let mut words = saved.split_whitespace();
        let ledger = match (
            words.next(),
            words.next().and_then(|w| w.parse().ok()),
            words.next().and_then(|w| w.parse().ok()),
        ) {
            // A start later than now is an older ledger's system time: the window
            // is then counted from the boot, which can only close it sooner.
            (Some(id), Some(first_start_boot_ns), Some(used)) if id == boot_id => StepLedger {
                boot_id,
                first_start_boot_ns: if first_start_boot_ns > now { 0 } else { first_start_boot_ns },
                used,
            },
            _ => StepLedger { boot_id, first_start_boot_ns: now, used: 0 },
        };
        ledger.save(dir)?;
        Ok(ledger)
    }

    /// Write, fsync, rename: a crash leaves the old ledger or the new one.
    fn save(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = dir.join(format!(".{STEP_LEDGER}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{} {} {}", self.boot_id, self.first_start_boot_ns, self.used)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(STEP_LEDGER))
    }
}

/// The address of every upstream: IPs as written; a name's first address (a
/// pool's first `maxsources`), in the order the resolver gave them.
fn resolve_upstreams(
    config: &Config,
    identity: Option<Identity>,
) -> Vec<(strata_config::Upstream, std::net::SocketAddr)> {
    use strata_config::UpstreamAddress;
    let names: Vec<String> = config
        .upstream
        .iter()
        .filter_map(|u| match &u.address {
            UpstreamAddress::Name { .. } => Some(u.address.to_string()),
            UpstreamAddress::Ip(_) => None,
        })
        .collect();
    let resolved = crate::resolve::resolve(&names, identity);
    let mut upstreams = Vec::new();
    for u in &config.upstream {
        match &u.address {
            UpstreamAddress::Ip(addr) => upstreams.push((u.clone(), *addr)),
            UpstreamAddress::Name { .. } => {
                let name = u.address.to_string();
                let take = if u.pool { usize::from(u.maxsources.max(1)) } else { 1 };
                let mut addrs: Vec<std::net::SocketAddr> =
                    resolved.iter().filter(|(n, _)| *n == name).map(|&(_, a)| a).collect();
                addrs.dedup();
                if addrs.is_empty() {
                    warn!(upstream = %name, "could not be resolved; not polled");
                }
                for addr in addrs.into_iter().take(take) {
                    info!(upstream = %name, %addr, "resolved");
                    upstreams.push((u.clone(), addr));
                }
            }
        }
    }
    upstreams
}

/// chrony's driftfile, written like every state file: write, fsync, rename, so a
/// crash at any moment leaves the old content or the new, never a torn file.
fn write_driftfile(path: &Path, frequency_ppm: f64, skew_ppm: f64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(strata_sync::discipline::drift_file::format(frequency_ppm, skew_ppm).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn read_driftfile(path: &Path) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(path).ok()?;
    match strata_sync::discipline::drift_file::parse(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!("ignoring the driftfile {}: {e:?}", path.display());
            None
        }
    }
}

/// A PTP hardware clock device: Linux ≥ 6.15 requires it open for writing to
/// adjust it; the engine's copy is read-only (it only reads the time).
fn open_phc(path: &Path) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let read_write = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let read_only = std::fs::File::open(path)?;
    Ok((read_write.into(), read_only.into()))
}

/// The model file of the simulated clock: created empty if missing (the adjuster
/// then starts it equal to the system clock); one read-write and one read-only
/// descriptor.
fn open_clock_model(path: &Path) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use std::os::unix::fs::OpenOptionsExt;
    let read_write =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o644).open(path)?;
    let read_only = std::fs::File::open(path)?;
    Ok((read_write.into(), read_only.into()))
}

/// A UDP socket for serving NTP: close-on-exec, SO_REUSEPORT, IPv6 sockets
/// v6-only (so that `0.0.0.0:123` and `[::]:123` can both be bound).
fn bind_ntp_socket(addr: std::net::SocketAddr, receive_buffer: usize) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrStorage, bind, setsockopt, socket, sockopt};
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let socket = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&socket, sockopt::ReusePort, &true)?;
    // As root the configured size is forced past net.core.rmem_max; otherwise the
    // kernel caps it there.
    if setsockopt(&socket, sockopt::RcvBufForce, &receive_buffer).is_err() {
        setsockopt(&socket, sockopt::RcvBuf, &receive_buffer)?;
    }
    if addr.is_ipv6() {
        setsockopt(&socket, sockopt::Ipv6V6Only, &true)?;
    }
    bind(socket.as_raw_fd(), &SockaddrStorage::from(addr))?;
    Ok(socket)
}

fn socket_addr(a: &nix::sys::socket::SockaddrStorage) -> Option<std::net::SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(std::net::SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| std::net::SocketAddr::V6((*v6).into()))
}

fn lookup(name: &str, role: Role) -> Result<Identity, StartError> {
    match User::from_name(name) {
        Ok(Some(user)) if user.uid.is_root() => {
            Err(StartError::UserLookup { name: name.into(), source: nix::Error::EPERM })
        }
        Ok(Some(user)) => Ok(Identity { uid: user.uid.as_raw(), gid: user.gid.as_raw() }),
        Ok(None) => Err(StartError::NoSuchUser { name: name.into(), role }),
        Err(source) => Err(StartError::UserLookup { name: name.into(), source }),
    }
}
