//! The supervisor's status file, `<runtime-dir>/status.json`: the appliance's
//! processes as the supervisor sees them. Written by `strata run`, read by
//! `strata status`, by the tests and by anything an operator points at it.

use serde::{Deserialize, Serialize};

/// Name of the file inside the runtime directory.
pub const FILE: &str = "status.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApplianceStatus {
    pub supervisor_pid: u32,
    /// `production` (each process under its own user) or `development`.
    pub mode: String,
    /// `running` or `stopping`.
    pub state: String,
    pub processes: Vec<ProcessStatus>,
    /// Alarms raised since start: processes that will not be re-spawned.
    pub alarms: Vec<String>,
    /// Clock steps taken in this boot, and the budget (policy/clock.toml).
    pub clock_steps_used: u32,
    pub clock_step_budget: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub role: String,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    /// `starting`, `ready`, `restarting`, `failed`, `stopped`.
    pub state: String,
    /// Unix time in ms when the current instance became ready.
    pub ready_since_ms: Option<u64>,
    /// Processes spawned for this role since the appliance started.
    pub spawns: u32,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// Peers whose handshake with this process completed.
    pub linked: Vec<String>,
}

impl ApplianceStatus {
    /// The entry of the process named `role` (`ntp`, `adjust`, ...).
    pub fn process(&self, role: &str) -> Option<&ProcessStatus> {
        self.processes.iter().find(|p| p.role == role)
    }

    /// Every child ready and linked with every peer it has.
    pub fn all_linked(&self) -> bool {
        self.processes.iter().all(|p| {
            let peers = crate::ipc::Role::from_name(&p.role).map_or(0, |r| r.peers().count());
            p.state == "ready" && p.linked.len() == peers
        })
    }
}
