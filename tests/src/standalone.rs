//! One process started alone, with the test as its supervisor: the test holds the
//! other end of descriptor 3 and can hand the process channels to "peers" that are
//! really the test, to feed it whatever bytes it likes.

use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use strata_process::channel::{Channel, RecvError};
use strata_proto::ipc::{
    AdjustSettings, ChildToSupervisor, ClockBackendKind, ControlSettings, Hello, Identity, MAX_FRAME, NtpSettings,
    RefclockSettings, Resource, Role, Settings, Start, SupervisorToChild,
};

use crate::{bin_dir, ensure_built};

pub struct Standalone {
    pub role: Role,
    child: Child,
    pub supervisor: Channel,
}

/// The settings the demo would give `role`.
pub fn demo_settings(role: Role) -> Settings {
    match role {
        Role::Ntp => Settings::Ntp(NtpSettings {
            local_stratum: Some(1),
            access: vec!["allow 127.0.0.0/8".into()],
            ratelimit: None,
            client_log_limit_bytes: 524_288,
            kernel_tx_timestamps: false,
            upstreams: Vec::new(),
            makestep: None,
            minsources: 1,
            initial_frequency: None,
            leap_sec_mode: strata_proto::ipc::LeapSecMode::System,
            selection: Default::default(),
            max_slew_rate_ppm: strata_policy::clock::MAX_SLEW_RATE_PPM,
            log_records: false,
            refclocks: Vec::new(),
        }),
        Role::Refclock => Settings::Refclock(RefclockSettings::default()),
        Role::Adjust => Settings::Adjust(AdjustSettings {
            backend: ClockBackendKind::None,
            steps_left: 4,
            automatic_steps_until_boot_ns: 0,
            max_slew_rate_ppm: strata_policy::clock::MAX_SLEW_RATE_PPM,
        }),
        Role::Control => Settings::Control(ControlSettings::default()),
        Role::Supervisor => panic!("not a child"),
    }
}

/// The identity a root supervisor would give `role` (None when not root).
fn identity(role: Role) -> Option<Identity> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let name = format!("strata-{}", role.name());
    let user = nix::unistd::User::from_name(&name).unwrap().unwrap_or_else(|| panic!("user {name} missing"));
    Some(Identity { uid: user.uid.as_raw(), gid: user.gid.as_raw() })
}

impl Standalone {
    /// Spawn the process, run its start-up handshake and wait for `Ready`.
    pub fn start(role: Role, resources: Vec<(Resource, OwnedFd)>) -> Standalone {
        Standalone::start_with(demo_settings(role), resources)
    }

    /// As [`Standalone::start`], with these settings (their variant names the process).
    pub fn start_with(settings: Settings, resources: Vec<(Resource, OwnedFd)>) -> Standalone {
        let role = settings.role();
        ensure_built();
        let (ours, theirs) = Channel::pair().unwrap();
        let child = strata_sys::spawn_with_channel(Command::new(bin_dir().join(role.binary())), theirs.into_fd())
            .expect("spawn");
        let s = Standalone { role, child, supervisor: ours };
        s.wait_readable(Duration::from_secs(5));
        s.supervisor.recv_hello(role).expect("child's Hello");
        s.send(&SupervisorToChild::Hello(Hello::new(Role::Supervisor)));
        let start = Start { identity: identity(role), log_level: strata_proto::ipc::LogLevel::Debug, settings };
        s.send(&SupervisorToChild::Start(start));
        for (r, fd) in &resources {
            s.supervisor.send(&SupervisorToChild::Resource(r.clone()), Some(fd.as_fd())).unwrap();
        }
        s.send(&SupervisorToChild::Sealed);
        assert_eq!(s.next_report(Duration::from_secs(5)), Some(ChildToSupervisor::Ready));
        s
    }

    pub fn send(&self, msg: &SupervisorToChild) {
        self.supervisor.send(msg, None).unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once the process has exited with one.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child.try_wait().unwrap().and_then(|s| s.code())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Hand the process a channel to `peer` and return the other end (the test
    /// plays the peer) with the link id. Nothing has been said on it yet by the test.
    pub fn link(&self, peer: Role) -> (Channel, u64) {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let link = NEXT.fetch_add(1, Ordering::Relaxed);
        let (ours, theirs) = Channel::pair().unwrap();
        self.supervisor.send(&SupervisorToChild::Peer { peer, link }, Some(theirs.as_fd())).unwrap();
        (ours, link)
    }

    fn wait_readable(&self, timeout: Duration) -> bool {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(self.supervisor.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::try_from(ms).unwrap()).unwrap_or(0) > 0
    }

    /// The next report from the process, or None if none came within `timeout`.
    pub fn next_report(&self, timeout: Duration) -> Option<ChildToSupervisor> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.wait_readable(left) {
                return None;
            }
            match self.supervisor.recv::<ChildToSupervisor>(&mut buf) {
                Ok(r) => return Some(r.msg),
                Err(RecvError::WouldBlock) => continue,
                Err(e) => panic!("supervisor channel: {e}"),
            }
        }
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
