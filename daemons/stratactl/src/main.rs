//! stratactl, the chronyc of strata: asks a running appliance over its gRPC
//! API (strata.v1 `Monitor` and `Admin`) and prints chronyc-like reports,
//! chronyc -c records or JSON.
//!
//! It runs with the caller's own privileges and opens nothing but the
//! control socket (or a TLS connection and the three PEM files named on the
//! command line); what it may change is decided by the appliance from the
//! caller's groups or certificate, never here.
#![forbid(unsafe_code)]

mod cli;
mod connect;
mod csv;
mod failure;
mod human;
mod json;
mod run;
mod units;

use std::process::ExitCode;

use clap::Parser;

/// sysexits' EX_USAGE: 2 is taken by "permission denied".
const EXIT_USAGE: u8 = 64;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version come here too, and are not failures.
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    match run::run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.is_silent() {
                eprintln!("stratactl: {failure}");
            }
            ExitCode::from(failure.exit_code())
        }
    }
}
