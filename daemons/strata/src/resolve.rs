//! Host names of upstream servers, resolved at start by a short-lived helper: the
//! `strata` binary itself (`strata resolve HOST:PORT...`), run under the engine's
//! user with no capability and an empty environment. The engine cannot resolve
//! (no files, no new sockets under its sandbox), and the root supervisor should not
//! parse DNS answers: the helper does, and hands back only addresses, one per line,
//! which the supervisor checks like any untrusted input.

use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use strata_proto::ipc::Identity;
use tracing::warn;

/// At most this much output is read from the helper.
const MAX_OUTPUT: u64 = 64 * 1024;
/// How long the whole resolution may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// `strata resolve NAME...`: print `NAME ADDRESS` for every address of every name.
pub fn helper(names: &[String]) -> ExitCode {
    for name in names {
        match name.to_socket_addrs() {
            Ok(addrs) => {
                for addr in addrs {
                    println!("{name} {addr}");
                }
            }
            Err(e) => eprintln!("strata resolve: {name}: {e}"),
        }
    }
    ExitCode::SUCCESS
}

/// Resolve `names` (`host:port`) through the helper, as `identity` if given.
/// Returns every address found, per name; names that fail are left out.
pub fn resolve(names: &[String], identity: Option<Identity>) -> Vec<(String, SocketAddr)> {
    if names.is_empty() {
        return Vec::new();
    }
    let Ok(exe) = std::env::current_exe() else { return Vec::new() };
    let mut command = Command::new(exe);
    command.arg("resolve").args(names).env_clear().stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    if let Some(id) = identity {
        // std drops the supplementary groups when a root parent sets the uid.
        std::os::unix::process::CommandExt::uid(&mut command, id.uid);
        std::os::unix::process::CommandExt::gid(&mut command, id.gid);
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            warn!("cannot start the name resolver: {e}");
            return Vec::new();
        }
    };
    let mut output = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = stdout.take(MAX_OUTPUT).read_to_string(&mut output);
    }
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            warn!("the name resolver took longer than {TIMEOUT:?}; killed");
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.wait();
    parse(&output, names)
}

/// Accept only lines `NAME ADDRESS` for a name that was asked for.
fn parse(output: &str, names: &[String]) -> Vec<(String, SocketAddr)> {
    output
        .lines()
        .filter_map(|line| {
            let (name, addr) = line.split_once(' ')?;
            let addr: SocketAddr = addr.parse().ok()?;
            names.iter().any(|n| n == name).then(|| (name.to_string(), addr))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_answers_for_asked_names_are_taken() {
        let names = vec!["a.example:123".to_string()];
        let out = "a.example:123 192.0.2.1:123\nb.example:123 192.0.2.2:123\na.example:123 garbage\n\n\
                   a.example:123 [2001:db8::1]:123\n";
        let got = parse(out, &names);
        assert_eq!(
            got,
            vec![
                ("a.example:123".to_string(), "192.0.2.1:123".parse().unwrap()),
                ("a.example:123".to_string(), "[2001:db8::1]:123".parse().unwrap())
            ]
        );
    }
}
