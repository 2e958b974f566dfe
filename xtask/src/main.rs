//! `cargo xtask`: strata's automation, in Rust rather than shell.
//!
//! - `cargo xtask ci`: what CI runs — installs what the tests need (Debian packages,
//!   the appliance's system users), then fmt, clippy, build and every test.
//! - `cargo xtask demo`: builds and runs the appliance with deploy/examples/demo.toml.
//! - `cargo xtask clknetsim`: strata against chronyd in chrony's clock and network
//!   simulator, side by side (with `--ci`, the guard that `ci` runs).
//! - `cargo xtask bench server`: the same NTP load offered to strata and chronyd, one
//!   table of answered rate, loss and response time (see BENCHMARKS.md).
//! - `cargo xtask fuzz <target>|--all [--seconds N]`: libFuzzer on every parser of
//!   untrusted input (fuzz/, see its README.md); fails on any crashing input.
//! - `cargo xtask soak [--minutes N]`: the appliance under NTP load while its children
//!   are killed, stopped and fed garbage at random (tests/tests/soak.rs; CI: 20 s).
//! - `cargo xtask sim [--scenario NAME] [--seed N]`: strata-sync's filter, selection
//!   and discipline against a deterministic simulated world, one table (BENCHMARKS.md).
//! - `cargo xtask install --destdir DIR [--release | --bin-dir DIR]`: install exactly
//!   deploy/manifest.toml under DIR, with the install record `strata audit` checks.
//! - `cargo xtask deb [--release | --bin-dir DIR] [--out DIR]`: the same as a Debian package.
#![forbid(unsafe_code)]

mod bench;
mod clknetsim;
mod deb;
mod fuzz;
mod install;
mod sim;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Debian packages the tests use, by the command that shows they are installed.
const PACKAGES: &[(&str, &str)] = &[
    // systemd-sysusers creates the appliance's users from deploy/sysusers.d.
    ("systemd-sysusers", "systemd"),
    // The install tests: `systemd-analyze verify` and `security` on the unit.
    ("systemd-analyze", "systemd"),
    ("python3", "python3"),
    // Real peers: upstream/cross-check server (`chronyd -x`) and client (`chronyd -Q`).
    ("chronyd", "chrony"),
    // ntpsec's one-shot client, for interop on port 123.
    ("ntpdig", "ntpsec-ntpdig"),
    // `promtool check metrics` on the control plane's /metrics.
    ("promtool", "prometheus"),
    // Certificates for the control API's mutual-TLS tests.
    ("openssl", "openssl"),
    // clknetsim (`cargo xtask clknetsim`, the CI guard) is built from its C sources.
    ("make", "make"),
    ("g++", "g++"),
    // The aarch64 cross build (the Raspberry Pi class of GPS time server): a linker,
    // and a C compiler for ring's assembly.
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
];

/// The other architecture strata ships seccomp policies for.
const CROSS_TARGET: &str = "aarch64-unknown-linux-gnu";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("demo") => demo(),
        Some("bench") => bench::main(&args[1..]),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("soak") => soak(&args[1..]),
        Some("sim") => sim::main(&args[1..]),
        Some("clknetsim") => clknetsim::main(&args[1..]),
        Some("install") => install::main(&args[1..]),
        Some("deb") => deb::main(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci|demo|bench server|fuzz TARGET|--all|soak --minutes N|sim|clknetsim|install --destdir DIR|deb>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T = ()> = std::result::Result<T, String>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn run(cmd: &mut Command) -> Result {
    eprintln!("$ {cmd:?}");
    let status = cmd.current_dir(root()).status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{cmd:?} failed: {status}")) }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn have(command: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {command}")]).output().is_ok_and(|o| o.status.success())
}

/// Install the missing Debian packages (needs root).
fn ensure_packages() -> Result {
    let missing: Vec<&str> = PACKAGES.iter().filter(|(cmd, _)| !have(cmd)).map(|&(_, pkg)| pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        return Err(format!("missing packages {missing:?}; run as root to install them"));
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    // Installing chrony must not start a chronyd that disciplines this machine's
    // clock: policy-rc.d answering 101 forbids service starts during the install.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n").map_err(|e| format!("{}: {e}", policy.display()))?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", policy.display()))?;
    }
    let installed = run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing));
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    installed
}

/// Create the appliance's system users (needs root).
fn ensure_users() -> Result {
    let conf = root().join("deploy/sysusers.d/strata.conf");
    run(Command::new("systemd-sysusers").arg(&conf))
}

fn ci() -> Result {
    if is_root() {
        ensure_packages()?;
        ensure_users()?;
    } else if in_ci() {
        return Err("CI runs as root: the sandbox tests need real users and capabilities".into());
    } else {
        eprintln!("xtask: not root; tests that need root will say so and pass over their root-only part");
    }
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    run(cargo().args(["test", "--workspace"]))?;
    cross_build()?;
    // Keeping time, measured: strata's RMS offsets in seeded clknetsim runs may
    // only get better than the bounds recorded in the repository.
    clknetsim::main(&["--ci".to_string()])?;
    // Every parser of untrusted input, briefly: a crash found fails CI (the long
    // runs are recorded in SECURITY.md).
    fuzz::fuzz(&["--all".to_string(), "--seconds".to_string(), "10".to_string()])
}

/// `cargo xtask soak --minutes N`: tests/tests/soak.rs for N minutes (as root): load,
/// kill -9, stop/continue and garbage at random; every answer checked.
fn soak(args: &[String]) -> Result {
    let minutes: u64 = match args {
        [flag, n] if flag == "--minutes" => n.parse().map_err(|_| format!("--minutes {n}: a whole number"))?,
        [] => 10,
        _ => return Err("usage: cargo xtask soak [--minutes N] (default 10)".into()),
    };
    run(cargo()
        .args(["test", "-p", "strata-tests", "--test", "soak", "--", "--nocapture"])
        .env("STRATA_SOAK_SECONDS", (minutes * 60).to_string()))
}

/// `cargo build --target aarch64-unknown-linux-gnu` of the whole workspace: its
/// seccomp policies compile (policy/seccomp/aarch64), and so does everything else.
fn cross_build() -> Result {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    if !installed.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l == CROSS_TARGET)) {
        run(Command::new("rustup").args(["target", "add", CROSS_TARGET]))?;
    }
    run(cargo()
        .args(["build", "--workspace", "--bins", "--target", CROSS_TARGET])
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", "aarch64-linux-gnu-gcc")
        .env("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc")
        .env("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar"))
}

fn demo() -> Result {
    run(cargo().args(["build", "--release", "--workspace", "--bins"]))?;
    if is_root() {
        ensure_users()?;
    }
    let strata = root().join("target/release/strata");
    let config = root().join("deploy/examples/demo.toml");
    run(Command::new(strata).arg("run").arg("--config").arg(config))
}
