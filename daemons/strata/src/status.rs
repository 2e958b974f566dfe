//! The supervisor's status file, `<runtime-dir>/status.json`: what runs, as whom,
//! since when, how often it was re-spawned and why it last died. Rewritten
//! atomically (write, fsync, rename) on every change, so a reader never sees half.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

pub use strata_proto::status::{ApplianceStatus, FILE, ProcessStatus};

pub fn write(dir: &Path, status: &ApplianceStatus) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(FILE))
}

pub fn show(config: &Path, json: bool) -> ExitCode {
    let config = match strata_config::Config::from_file(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let path = config.supervisor.runtime_dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e} (is the appliance running?)", path.display());
            return ExitCode::FAILURE;
        }
    };
    if json {
        print!("{text}");
        return ExitCode::SUCCESS;
    }
    let status: ApplianceStatus = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    println!("supervisor pid {} ({} mode, {})", status.supervisor_pid, status.mode, status.state);
    println!("process       pid    uid state      restarts linked                   last exit");
    for p in &status.processes {
        let opt = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
        println!(
            "{:<9} {:>7} {:>6} {:<10} {:>7} {:<24} {}",
            p.role,
            opt(p.pid),
            opt(p.uid),
            p.state,
            p.restarts,
            p.linked.join(","),
            p.last_exit.as_deref().unwrap_or("-")
        );
    }
    for alarm in &status.alarms {
        println!("ALARM: {alarm}");
    }
    ExitCode::SUCCESS
}
