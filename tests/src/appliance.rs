//! The whole appliance, started with `strata run` as a user would, watched through
//! its status file, its log and /proc.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{bin_dir, ensure_built, free_udp_port, scratch_dir, wait_for};

pub use strata_proto::status::{ApplianceStatus as Status, ProcessStatus};

/// Lookups that fail the test when the process is unknown.
pub trait StatusExt {
    fn of(&self, role: &str) -> &ProcessStatus;
}

impl StatusExt for Status {
    fn of(&self, role: &str) -> &ProcessStatus {
        self.process(role).unwrap_or_else(|| panic!("no process {role} in {self:?}"))
    }
}

pub const CHILDREN: [&str; 4] = ["adjust", "refclock", "ntp", "control"];

pub struct Appliance {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub ntp_port: u16,
    supervisor: Option<Child>,
}

impl Appliance {
    /// Start with the demo's settings (clock backend `none`, NTP on a free loopback
    /// port) plus `extra` TOML appended to the `[supervisor]` table, and wait until
    /// every process is ready and linked.
    pub fn start(name: &str, extra_supervisor: &str) -> Appliance {
        Appliance::start_as(name, extra_supervisor, None)
    }

    /// As [`Appliance::start`], with the supervisor started under `uid` (through
    /// `setpriv`, no capabilities): how a developer runs it without root.
    pub fn start_as(name: &str, extra_supervisor: &str, uid: Option<u32>) -> Appliance {
        Appliance::start_custom(name, extra_supervisor, None, uid)
    }

    /// The most general start: `server` replaces the whole `[server]` table (the
    /// default serves local stratum 1 on a free loopback port to loopback clients).
    pub fn start_custom(name: &str, extra_supervisor: &str, server: Option<&str>, uid: Option<u32>) -> Appliance {
        Appliance::start_full(name, extra_supervisor, server, "backend = \"none\"", uid, &[])
    }

    /// With these environment variables (e.g. systemd's NOTIFY_SOCKET).
    pub fn start_with_env(name: &str, env: &[(&str, String)]) -> Appliance {
        Appliance::start_full(name, "", None, "backend = \"none\"", None, env)
    }

    /// With this `[clock]` table body (e.g. `backend = "simulated:/path"`).
    pub fn start_with_clock(name: &str, server: Option<&str>, clock: &str) -> Appliance {
        Appliance::start_full(name, "", server, clock, None, &[])
    }

    fn start_full(
        name: &str,
        extra_supervisor: &str,
        server: Option<&str>,
        clock: &str,
        uid: Option<u32>,
        env: &[(&str, String)],
    ) -> Appliance {
        ensure_built();
        let dir = scratch_dir(name);
        let ntp_port = free_udp_port();
        let config = dir.join("strata.toml");
        let default_server = format!(
            "listen = [\"127.0.0.1:{ntp_port}\"]\nlocal-stratum = 1\naccess = [\"allow 127.0.0.0/8\", \"allow ::1\"]\n"
        );
        std::fs::write(
            &config,
            format!(
                "[supervisor]\nruntime-dir = {:?}\nlog-level = \"debug\"\n{extra_supervisor}\n\n\
                 [clock]\n{clock}\n\n[server]\n{}\n",
                dir.join("run").display().to_string(),
                server.unwrap_or(&default_server),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("strata.log")).unwrap();
        let mut command = match uid {
            None => Command::new(bin_dir().join("strata")),
            Some(uid) => {
                std::fs::create_dir_all(dir.join("run")).unwrap();
                nix::unistd::chown(&dir.join("run"), Some(nix::unistd::Uid::from_raw(uid)), None).unwrap();
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg(bin_dir().join("strata"));
                c
            }
        };
        command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let supervisor = command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn strata");
        let mut appliance = Appliance { dir, config, ntp_port, supervisor: Some(supervisor) };
        appliance.wait_until("every process ready and linked", Duration::from_secs(10), Status::all_linked);
        appliance
    }

    /// `stratactl ARGS` against this appliance's control socket, as root: whether
    /// it succeeded, and what it printed.
    pub fn stratactl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(bin_dir().join("stratactl"))
            .arg("--socket")
            .arg(self.dir.join("run/control.sock"))
            .args(args)
            .output()
            .expect("run stratactl");
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), said)
    }

    pub fn supervisor_pid(&self) -> u32 {
        self.supervisor.as_ref().expect("running").id()
    }

    /// The current status file, if it can be read.
    pub fn try_status(&self) -> Option<Status> {
        let text = std::fs::read_to_string(self.dir.join("run/status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn status(&self) -> Status {
        self.try_status().expect("status.json")
    }

    pub fn wait_until(&mut self, what: &str, timeout: Duration, check: impl Fn(&Status) -> bool) -> Status {
        let supervisor = self.supervisor.as_mut().expect("running");
        wait_for(what, timeout, || {
            if let Ok(Some(exit)) = supervisor.try_wait() {
                panic!("strata exited ({exit}) while waiting for {what}; log:\n{}", log(&self.dir));
            }
            self_status(&self.dir).filter(&check)
        })
    }

    pub fn pid_of(&self, role: &str) -> u32 {
        self.status().of(role).pid.unwrap_or_else(|| panic!("{role} is not running"))
    }

    /// kill -9 a child and return when its replacement is ready and linked with
    /// all its peers; returns the new pid and how long that took.
    pub fn kill_and_wait_replacement(&mut self, role: &str) -> (u32, Duration) {
        let old = self.pid_of(role);
        let start = Instant::now();
        kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
        let status = self.wait_until(&format!("a new {role} ready and linked"), Duration::from_secs(10), |s| {
            let p = s.of(role);
            p.pid.is_some_and(|pid| pid != old) && s.all_linked()
        });
        (status.of(role).pid.unwrap(), start.elapsed())
    }

    pub fn log(&self) -> String {
        log(&self.dir)
    }

    /// SIGTERM and wait for the supervisor to exit; returns its exit code and how
    /// long it took.
    pub fn stop(&mut self) -> (Option<i32>, Duration) {
        let mut child = self.supervisor.take().expect("running");
        let start = Instant::now();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        (status.code(), start.elapsed())
    }
}

fn self_status(dir: &std::path::Path) -> Option<Status> {
    let text = std::fs::read_to_string(dir.join("run/status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn log(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("strata.log")).unwrap_or_default()
}

impl Drop for Appliance {
    fn drop(&mut self) {
        // The children die with the supervisor (PR_SET_PDEATHSIG).
        if let Some(mut child) = self.supervisor.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
