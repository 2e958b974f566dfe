//! The command line: chronyc's verbs and arguments, where the appliance is,
//! and how replies are written.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Where the control plane listens by default: its Unix socket, whose access
/// is decided by the caller's groups (read-only or admin).
pub const DEFAULT_SOCKET: &str = "/run/strata/control.sock";

const EXIT_CODES: &str = "\
Exit status:
  0   the command succeeded
  1   strata could not be reached, or it answered with an error
      (waitsync: the clock did not synchronise within the tries)
  2   permission denied: the caller lacks the role (commands that change
      something need the admin role: a member of the admin group)
  64  the command line could not be parsed";

/// stratactl: read and steer a strata appliance, as chronyc does chronyd.
#[derive(Debug, Parser)]
#[command(name = "stratactl", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub target: Target,

    /// Print the reply as JSON (field names as in strata.proto).
    #[arg(long, global = true, conflicts_with = "csv")]
    pub json: bool,

    /// Print comma-separated values, one record a line, no header (chronyc -c).
    #[arg(short = 'c', long, global = true)]
    pub csv: bool,

    #[command(subcommand)]
    pub verb: Verb,
}

/// The appliance to talk to: the local Unix socket, or a remote one over TCP
/// with mutual TLS. Nothing is read from the environment, so a command line
/// says exactly which appliance it steers.
#[derive(Debug, Args)]
pub struct Target {
    /// The control plane's Unix socket.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET, conflicts_with = "connect")]
    pub socket: PathBuf,

    /// A remote appliance, https://HOST:PORT, with mutual TLS (needs --ca, --cert, --key).
    #[arg(long, global = true, value_name = "URL", requires_all = ["ca", "cert", "key"])]
    pub connect: Option<String>,

    /// The CA certificate (PEM) that signed the appliance's certificate.
    #[arg(long, global = true, value_name = "CA.pem", requires = "connect")]
    pub ca: Option<PathBuf>,

    /// This client's certificate (PEM).
    #[arg(long, global = true, value_name = "CLIENT.pem", requires = "connect")]
    pub cert: Option<PathBuf>,

    /// This client's private key (PEM).
    #[arg(long, global = true, value_name = "CLIENT.key", requires = "connect")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Subcommand, PartialEq)]
pub enum Verb {
    /// The system clock's synchronisation (chronyc tracking).
    Tracking,
    /// The sources and their selection state (chronyc sources).
    Sources {
        /// Print the legend of the columns above the table.
        #[arg(short, long)]
        verbose: bool,
    },
    /// The sources' filter statistics (chronyc sourcestats).
    Sourcestats {
        /// Print the legend of the columns above the table.
        #[arg(short, long)]
        verbose: bool,
    },
    /// What each NTP server says of itself (chronyc ntpdata).
    Ntpdata {
        /// One server (as in `sources`, with or without :123); all when absent.
        address: Option<String>,
    },
    /// The NTP clients seen by the server, busiest first (chronyc clients).
    Clients,
    /// The NTP server's counters (chronyc serverstats).
    Serverstats,
    /// How many sources are online and offline (chronyc activity).
    Activity,
    /// The appliance's processes as the supervisor sees them.
    Processes,
    /// Reference clock counters and the recent failovers.
    Refclocks,
    /// Step the clock once by the current offset, if the adjuster's policy allows (admin).
    Makestep,
    /// Add a source (admin; chronyc add server).
    Add {
        #[command(subcommand)]
        kind: AddKind,
    },
    /// Remove an NTP server (admin; chronyc delete).
    Delete {
        /// The server's address, as in `sources`.
        address: String,
    },
    /// Poll a server again, or all when no address is given (admin).
    Online { address: Option<String> },
    /// Stop polling a server, or all when no address is given (admin).
    Offline { address: Option<String> },
    /// Forget the selection's memory and select again (admin).
    Reselect,
    /// Let NTP clients in: "192.168.0.0/16", "2001:db8::/32", "all" (admin).
    Allow {
        #[arg(default_value = "all")]
        rule: String,
    },
    /// Keep NTP clients out, same syntax as allow (admin).
    Deny {
        #[arg(default_value = "all")]
        rule: String,
    },
    /// Wait until the clock is synchronised (chronyc waitsync).
    Waitsync(WaitSync),
    /// Print tracking and source changes and failovers as they happen, until interrupted.
    Watch,
}

#[derive(Debug, Subcommand, PartialEq)]
pub enum AddKind {
    /// An NTP server by IP address, with an optional port.
    Server {
        /// "192.0.2.1", "192.0.2.1:123", "[2001:db8::1]:123".
        address: String,
        /// Send a burst of requests at start, to synchronise sooner.
        #[arg(long)]
        iburst: bool,
        /// Prefer this source in the selection.
        #[arg(long)]
        prefer: bool,
        /// Shortest poll interval, log2 seconds (default 6).
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        minpoll: Option<i32>,
        /// Longest poll interval, log2 seconds (default 10).
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        maxpoll: Option<i32>,
        /// Interleaved mode: the server's kernel transmit timestamps, one exchange late.
        #[arg(long)]
        xleave: bool,
    },
}

/// chronyc waitsync's positional arguments, in its order.
#[derive(Debug, Args, PartialEq)]
pub struct WaitSync {
    /// Attempts before giving up; 0 tries forever.
    #[arg(default_value_t = 0)]
    pub max_tries: u32,
    /// Largest acceptable correction in seconds (|offset| + root dispersion + root delay / 2); 0 accepts any.
    #[arg(default_value_t = 0.0)]
    pub max_correction: f64,
    /// Largest skew in ppm: accepted for chronyc's argument order, not checked.
    #[arg(default_value_t = 0.0)]
    pub max_skew: f64,
    /// Seconds between attempts (default 10).
    #[arg(default_value_t = 10.0)]
    pub interval: f64,
}

/// How replies are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
    Csv,
}

impl Cli {
    pub fn format(&self) -> Format {
        match (self.json, self.csv) {
            (true, _) => Format::Json,
            (_, true) => Format::Csv,
            _ => Format::Human,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("stratactl").chain(args.iter().copied()))
    }

    #[test]
    fn the_default_target_is_the_local_socket() {
        let cli = parse(&["tracking"]).unwrap();
        assert_eq!(cli.target.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(cli.target.connect, None);
        assert_eq!(cli.format(), Format::Human);
        assert_eq!(cli.verb, Verb::Tracking);
    }

    #[test]
    fn options_may_follow_the_verb() {
        let cli = parse(&["sources", "-v", "--json"]).unwrap();
        assert_eq!(cli.verb, Verb::Sources { verbose: true });
        assert_eq!(cli.format(), Format::Json);
        let cli = parse(&["-c", "sourcestats"]).unwrap();
        assert_eq!(cli.format(), Format::Csv);
    }

    #[test]
    fn json_and_csv_exclude_each_other() {
        assert!(parse(&["--json", "--csv", "tracking"]).is_err());
    }

    #[test]
    fn add_server_takes_chrony_options() {
        let cli = parse(&["add", "server", "192.0.2.1", "--iburst", "--minpoll", "-2", "--maxpoll", "4", "--xleave"])
            .unwrap();
        assert_eq!(
            cli.verb,
            Verb::Add {
                kind: AddKind::Server {
                    address: "192.0.2.1".into(),
                    iburst: true,
                    prefer: false,
                    minpoll: Some(-2),
                    maxpoll: Some(4),
                    xleave: true,
                }
            }
        );
    }

    #[test]
    fn allow_and_deny_default_to_all() {
        assert_eq!(parse(&["allow"]).unwrap().verb, Verb::Allow { rule: "all".into() });
        assert_eq!(parse(&["deny", "192.168.0.0/16"]).unwrap().verb, Verb::Deny { rule: "192.168.0.0/16".into() });
    }

    #[test]
    fn waitsync_arguments_follow_chronyc_order() {
        let Verb::Waitsync(w) = parse(&["waitsync", "60", "0.01", "0", "5"]).unwrap().verb else { panic!() };
        assert_eq!(w, WaitSync { max_tries: 60, max_correction: 0.01, max_skew: 0.0, interval: 5.0 });
        let Verb::Waitsync(w) = parse(&["waitsync"]).unwrap().verb else { panic!() };
        assert_eq!(w, WaitSync { max_tries: 0, max_correction: 0.0, max_skew: 0.0, interval: 10.0 });
    }

    #[test]
    fn tls_needs_all_three_files() {
        assert!(parse(&["--connect", "https://ntp1:4460", "tracking"]).is_err());
        let cli = parse(&[
            "--connect",
            "https://ntp1:4460",
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "c.key",
            "tracking",
        ])
        .unwrap();
        assert_eq!(cli.target.connect.as_deref(), Some("https://ntp1:4460"));
        assert!(parse(&["--ca", "ca.pem", "tracking"]).is_err());
    }

    #[test]
    fn online_without_address_means_all() {
        assert_eq!(parse(&["online"]).unwrap().verb, Verb::Online { address: None });
        assert_eq!(parse(&["offline", "192.0.2.1"]).unwrap().verb, Verb::Offline { address: Some("192.0.2.1".into()) });
    }
}
