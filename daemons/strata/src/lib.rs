//! `strata`: the supervisor (`strata run`) and the admin entry point.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod accusation;
mod audit;
mod control;
mod hwtimestamp;
mod logs;
mod notify;
pub mod refclocks;
mod resolve;
mod restart;
mod status;
mod supervisor;

#[derive(Parser)]
#[command(name = "strata", version, about = "strata: a privilege-separated stratum-1 time appliance")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance: start, sandbox, watch and re-spawn its processes.
    Run {
        #[arg(long, short, default_value = "/etc/strata/strata.toml")]
        config: PathBuf,
    },
    /// Check a configuration file; errors name the line and column.
    CheckConfig { config: PathBuf },
    /// Resolve host names (used by `strata run` as an unprivileged helper).
    #[command(hide = true)]
    Resolve { names: Vec<String> },
    /// Show the processes of a running appliance (from its status file).
    Status {
        #[arg(long, short, default_value = "/etc/strata/strata.toml")]
        config: PathBuf,
        /// Print the status file as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check an installed tree against the install manifest and record: every file,
    /// content hash, mode, owner and group, and the configuration; exit 1 on drift.
    Audit {
        /// The root of the installed tree.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Report an edited configuration file as a note, not as drift.
        #[arg(long)]
        allow_config_edits: bool,
        /// Print the manifest (tab-separated) and exit.
        #[arg(long, conflicts_with_all = ["write_record", "allow_config_edits"])]
        list: bool,
        /// Hash the installed files and write the install record (installers run this).
        #[arg(long)]
        write_record: bool,
        /// With --write-record: owners were not set (not installed as root).
        #[arg(long, requires = "write_record")]
        no_owners: bool,
    },
    /// Convert a chrony.conf into strata's TOML; what is not converted is listed on stderr.
    ImportChrony {
        file: PathBuf,
        /// Write the TOML here (atomically) instead of to stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// The process, as its binary runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => supervisor::run(&config),
        Command::CheckConfig { config } => match strata_config::Config::from_file(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Status { config, json } => status::show(&config, json),
        Command::Audit { root, allow_config_edits, list, write_record, no_owners } => match (list, write_record) {
            (true, _) => audit::list(),
            (_, true) => audit::write_record(&root, !no_owners),
            _ => audit::audit(&root, allow_config_edits),
        },
        Command::ImportChrony { file, output } => import_chrony(&file, output.as_deref()),
        Command::Resolve { names } => resolve::helper(&names),
    }
}

/// `strata import-chrony FILE [--output OUT]`: the TOML to stdout or OUT, each line
/// not converted to stderr as `FILE:LINE: DIRECTIVE: REASON`. Fails only if FILE
/// cannot be read or OUT cannot be written.
fn import_chrony(file: &std::path::Path, output: Option<&std::path::Path>) -> ExitCode {
    let text = match std::fs::read(file) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let import = strata_config::chrony::import_from(&text, &file.display().to_string());
    match output {
        None => {
            use std::io::Write;
            if let Err(e) = std::io::stdout().write_all(import.toml.as_bytes()) {
                eprintln!("stdout: cannot write: {e}");
                return ExitCode::FAILURE;
            }
        }
        Some(out) => {
            // Write beside it, then rename: OUT is never half written.
            let mut tmp = out.as_os_str().to_owned();
            tmp.push(format!(".tmp{}", std::process::id()));
            let tmp = PathBuf::from(tmp);
            if let Err(e) = std::fs::write(&tmp, &import.toml).and_then(|()| std::fs::rename(&tmp, out)) {
                let _ = std::fs::remove_file(&tmp);
                eprintln!("{}: cannot write: {e}", out.display());
                return ExitCode::FAILURE;
            }
        }
    }
    for u in &import.unsupported {
        eprintln!("{}:{}: {}: {}", file.display(), u.line, u.directive.escape_debug(), u.reason);
    }
    ExitCode::SUCCESS
}
