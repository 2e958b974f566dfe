//! `strata`: the supervisor (`strata run`) and the admin entry point.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod notify;
mod resolve;
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
}

fn main() -> ExitCode {
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
        Command::Resolve { names } => resolve::helper(&names),
    }
}
