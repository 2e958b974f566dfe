//! `cargo xtask bench server`: the same NTP load offered to strata and to chronyd
//! (and ntpd-rs, when it is installed), one server at a time, one table.

mod load;
mod ntpperf;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{Result, cargo, ensure_users, have, is_root, root, run};
use load::{Load, Outcome};

const USAGE: &str = "usage: cargo xtask bench server [--rates R1,R2,...] [--duration-s S] [--bin-dir DIR] [--no-build]
                                [--sockets N] [--grace-ms MS] [--netns]

Offers the same paced, open-loop NTP load to strata and to chronyd (and ntpd-rs if
on PATH), one server at a time, and prints one table. Runs as root: it starts the
real sandboxed appliance. chronyd runs with -x: it never touches the clock.

  --rates       requests/s per step        (default 10000,20000,40000,60000,80000,100000,140000,200000,300000,400000)
  --duration-s  length of each step        (default 2)
  --bin-dir     strata's binaries          (default <target>/release, built first unless --no-build)
  --sockets     generator source ports     (default 64)
  --grace-ms    wait for late replies      (default 500)
  --netns       servers and load in two network namespaces joined by a veth pair";

/// Loss under this share, in percent, counts as loss-free.
const LOSS_FREE_PERCENT: f64 = 0.1;
/// A step counts only if the generator offered at least this share of the target.
const OFFERED_SHARE: f64 = 0.99;
/// Rate for the generator's own check against a sink.
const SELF_CHECK_RATE: u64 = 400_000;

struct Options {
    rates: Vec<u64>,
    duration: Duration,
    bin_dir: Option<PathBuf>,
    build: bool,
    sockets: usize,
    grace: Duration,
    netns: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        rates: vec![10_000, 20_000, 40_000, 60_000, 80_000, 100_000, 140_000, 200_000, 300_000, 400_000],
        duration: Duration::from_secs(2),
        bin_dir: None,
        build: true,
        sockets: 64,
        grace: Duration::from_millis(500),
        netns: false,
    };
    let mut args = args.iter();
    let number = |flag: &str, v: Option<&String>| -> Result<u64> {
        let v = v.ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        v.parse().map_err(|_| format!("{flag}: not a number: {v:?}"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rates" => {
                let v = args.next().ok_or_else(|| format!("--rates needs a value\n{USAGE}"))?;
                o.rates = v
                    .split(',')
                    .map(|r| r.trim().parse::<u64>().map_err(|_| format!("--rates: not a number: {r:?}")))
                    .collect::<Result<_>>()?;
                if o.rates.is_empty() || o.rates.contains(&0) {
                    return Err("--rates: give rates above 0".into());
                }
            }
            "--duration-s" => {
                o.duration = Duration::from_secs(number(arg, args.next())?);
                if o.duration.is_zero() || o.duration > Duration::from_secs(60) {
                    return Err("--duration-s: 1..=60".into());
                }
            }
            "--bin-dir" => {
                o.bin_dir = Some(PathBuf::from(args.next().ok_or_else(|| format!("--bin-dir needs a value\n{USAGE}"))?))
            }
            "--no-build" => o.build = false,
            "--sockets" => {
                o.sockets = number(arg, args.next())? as usize;
                if !(1..=1024).contains(&o.sockets) {
                    return Err("--sockets: 1..=1024".into());
                }
            }
            "--grace-ms" => o.grace = Duration::from_millis(number(arg, args.next())?.min(10_000)),
            "--netns" => o.netns = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    for &rate in &o.rates {
        let requests = u128::from(rate) * o.duration.as_millis() / 1000;
        if requests > u128::from(load::MAX_REQUESTS) {
            return Err(format!("{rate}/s for {:?} is more than {} requests", o.duration, load::MAX_REQUESTS));
        }
    }
    Ok(o)
}

pub fn main(args: &[String]) -> Result {
    // `cargo xtask` builds unoptimised; a debug-build generator could not offer the
    // load, so the bench runs itself from an optimised build.
    if cfg!(debug_assertions) {
        return run(cargo().args(["run", "--release", "--quiet", "--package", "xtask", "--", "bench"]).args(args));
    }
    match args.first().map(String::as_str) {
        Some("server") => server(&parse(&args[1..])?),
        Some("ntpperf") => ntpperf::main(&args[1..]),
        _ => Err(USAGE.into()),
    }
}

/// A process this bench started: SIGTERM, then SIGKILL, when dropped.
struct Running {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Running {
    fn exited(&mut self) -> Option<String> {
        self.child.try_wait().ok().flatten().map(|s| s.to_string())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: {} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bench's scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two network namespaces joined by a veth pair, deleted when dropped.
struct Netns {
    server_ns: String,
    client_ns: String,
    /// The veth pair's ends.
    server_dev: String,
    client_dev: String,
}

const NETNS_SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const NETNS_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);

impl Netns {
    fn create() -> Result<Netns> {
        if !have("ip") {
            return Err("--netns needs the `ip` command (Debian package iproute2)".into());
        }
        let id = std::process::id();
        let ns = Netns {
            server_ns: format!("strata-bench-s{id}"),
            client_ns: format!("strata-bench-c{id}"),
            server_dev: format!("sbs{id}"),
            client_dev: format!("sbc{id}"),
        };
        let (s, c) = (ns.server_ns.as_str(), ns.client_ns.as_str());
        let (sv, cv) = (ns.server_dev.as_str(), ns.client_dev.as_str());
        let server_ip = format!("{NETNS_SERVER_IP}/24");
        let client_ip = format!("{NETNS_CLIENT_IP}/24");
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", s],
            vec!["netns", "add", c],
            vec!["-n", s, "link", "add", sv, "type", "veth", "peer", "name", cv, "netns", c],
            vec!["-n", s, "addr", "add", &server_ip, "dev", sv],
            vec!["-n", c, "addr", "add", &client_ip, "dev", cv],
            vec!["-n", s, "link", "set", sv, "up"],
            vec!["-n", c, "link", "set", cv, "up"],
            vec!["-n", s, "link", "set", "lo", "up"],
            vec!["-n", c, "link", "set", "lo", "up"],
        ];
        for step in steps {
            run(Command::new("ip").args(step))?;
        }
        Ok(ns)
    }

    /// `command` run inside the server namespace.
    fn in_server(&self, command: &Command) -> Command {
        let mut wrapped = Command::new("ip");
        wrapped.args(["netns", "exec", &self.server_ns]).arg(command.get_program()).args(command.get_args());
        wrapped
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.server_ns, &self.client_ns] {
            // Deleting a namespace deletes the veth end inside it, and so the pair.
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Where the load comes from and goes to.
#[derive(Clone, Copy)]
struct Path2 {
    server_ip: Ipv4Addr,
    client_ip: Ipv4Addr,
}

/// A server's port: `fixed` in the namespaces (nothing else binds there), any free
/// one on loopback.
fn bench_port(netns: Option<&Netns>, fixed: u16, ip: Ipv4Addr) -> Result<u16> {
    match netns {
        Some(_) => Ok(fixed),
        None => free_udp_port(ip),
    }
}

fn free_udp_port(ip: Ipv4Addr) -> Result<u16> {
    let socket = UdpSocket::bind((ip, 0)).map_err(|e| format!("binding a UDP port on {ip}: {e}"))?;
    Ok(socket.local_addr().map_err(|e| e.to_string())?.port())
}

/// `dir`, or the release build (made first when `build`).
fn strata_binaries(dir: Option<&Path>, build: bool) -> Result<PathBuf> {
    match dir {
        Some(d) => Ok(d.to_path_buf()),
        None => {
            if build {
                run(cargo().args(["build", "--release", "--workspace", "--bins"]))?;
            }
            Ok(default_bin_dir())
        }
    }
}

fn default_bin_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let target = if target.is_relative() { root().join(target) } else { target };
    target.join("release")
}

/// A server under test.
struct Server {
    name: &'static str,
    address: SocketAddrV4,
    process: Running,
}

/// Start `command` with its output in `dir/<name>.log`, then wait until it answers
/// NTP at `address`.
fn start(
    name: &'static str,
    mut command: Command,
    dir: &Path,
    address: SocketAddrV4,
    netns: Option<&Netns>,
    probe_from: Ipv4Addr,
) -> Result<Server> {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let file2 = file.try_clone().map_err(|e| e.to_string())?;
    if let Some(ns) = netns {
        command = ns.in_server(&command);
    }
    eprintln!("bench: starting {name}: {command:?}");
    let child =
        command.stdin(Stdio::null()).stdout(file).stderr(file2).spawn().map_err(|e| format!("starting {name}: {e}"))?;
    let mut process = Running { name: name.into(), child, log };
    let deadline = Instant::now() + Duration::from_secs(15);
    let in_client = |f: &mut dyn FnMut() -> bool| match netns {
        Some(ns) => client_side(ns, f),
        None => f(),
    };
    loop {
        if let Some(status) = process.exited() {
            return Err(format!("{name} exited ({status}) before answering NTP; log:\n{}", process.log_tail()));
        }
        if in_client(&mut || load::probe(SocketAddrV4::new(probe_from, 0), address, Duration::from_millis(200))) {
            eprintln!("bench: {name} answers NTP on {address}");
            return Ok(Server { name, address, process });
        }
        if Instant::now() > deadline {
            return Err(format!("{name} did not answer NTP on {address} within 15 s; log:\n{}", process.log_tail()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run `f` with this thread in the client namespace (sockets made there stay there).
fn client_side<T>(ns: &Netns, f: &mut dyn FnMut() -> T) -> T {
    netns_enter(&ns.client_ns);
    let t = f();
    netns_leave();
    t
}

fn netns_enter(name: &str) {
    use nix::sched::{CloneFlags, setns};
    let here = std::fs::File::open("/proc/thread-self/ns/net").expect("own network namespace");
    let there = std::fs::File::open(format!("/run/netns/{name}")).expect("bench network namespace");
    ORIGINAL_NS.with(|o| *o.borrow_mut() = Some(here));
    setns(&there, CloneFlags::CLONE_NEWNET).expect("setns into the bench namespace");
}

fn netns_leave() {
    use nix::sched::{CloneFlags, setns};
    ORIGINAL_NS.with(|o| {
        if let Some(here) = o.borrow_mut().take() {
            setns(&here, CloneFlags::CLONE_NEWNET).expect("setns back");
        }
    });
}

thread_local! {
    static ORIGINAL_NS: std::cell::RefCell<Option<std::fs::File>> = const { std::cell::RefCell::new(None) };
}

fn start_strata(
    bin_dir: &Path,
    dir: &Path,
    ip: Ipv4Addr,
    port: u16,
    netns: Option<&Netns>,
    probe: Ipv4Addr,
) -> Result<Server> {
    let config = dir.join("strata.toml");
    // The shape of tests/src/appliance.rs; every engine setting not named here (the
    // number of serving threads among them) keeps its default. No client is answered
    // without an `access` rule; binaries that predate the key are run without it.
    let write = |access: &str| {
        let text = format!(
            "[supervisor]\nruntime-dir = {:?}\nlog-level = \"info\"\n\n[clock]\nbackend = \"none\"\n\n\
             [server]\nlisten = [\"{ip}:{port}\"]\nlocal-stratum = 1\nkernel-tx-timestamps = true\n{access}",
            dir.join("strata-run").display().to_string()
        );
        std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))
    };
    write("access = [\"allow 127.0.0.0/8\", \"allow 10.0.0.0/8\"]\n")?;
    let check = Command::new(bin_dir.join("strata")).arg("check-config").arg(&config).output();
    if check.is_ok_and(|o| !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("access")) {
        eprintln!("bench: this strata has no `access` key; its config goes without");
        write("")?;
    }
    let mut command = Command::new(bin_dir.join("strata"));
    command.arg("run").arg("--config").arg(&config);
    start("strata", command, dir, SocketAddrV4::new(ip, port), netns, probe)
}

fn start_chronyd(dir: &Path, ip: Ipv4Addr, port: u16, netns: Option<&Netns>, probe: Ipv4Addr) -> Result<Server> {
    let chrony = dir.join("chrony");
    std::fs::create_dir_all(&chrony).map_err(|e| e.to_string())?;
    // chronyd drops root for its own user (_chrony on Debian), which then writes here.
    let _ = Command::new("chown").arg("_chrony:").arg(&chrony).status();
    let d = chrony.display();
    let config = dir.join("chrony.conf");
    let text = format!(
        "# strata bench: serve as a local stratum-1 server, never touch the clock (-x).\n\
         local stratum 1\nallow 127.0.0.0/8\nallow 10.0.0.0/8\nport {port}\nbindaddress {ip}\ncmdport 0\n\
         bindcmdaddress {d}/chronyd.sock\npidfile {d}/chronyd.pid\ndriftfile {d}/chronyd.drift\n\
         dumpdir {d}\nlogdir {d}\n"
    );
    std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
    let mut command = Command::new("chronyd");
    // -x: never adjust the system clock. -d: stay in the foreground, log to stderr.
    command.arg("-x").arg("-d").arg("-f").arg(&config);
    start("chronyd", command, dir, SocketAddrV4::new(ip, port), netns, probe)
}

/// ntpd-rs's daemon, by the names its packages install.
fn ntpd_rs_binary() -> Option<&'static str> {
    ["ntp-daemon", "ntpd-rs"].into_iter().find(|b| have(b))
}

fn start_ntpd_rs(
    binary: &str,
    dir: &Path,
    ip: Ipv4Addr,
    port: u16,
    netns: Option<&Netns>,
    probe: Ipv4Addr,
) -> Result<Server> {
    let config = dir.join("ntpd-rs.toml");
    // No source configured: ntpd-rs has nothing to steer the clock by, and serves as
    // local stratum 1.
    let text = format!(
        "[observability]\nlog-level = \"warn\"\n\n[[server]]\nlisten = \"{ip}:{port}\"\n\n\
         [synchronization]\nlocal-stratum = 1\n"
    );
    std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
    let mut command = Command::new(binary);
    command.arg("-c").arg(&config);
    start("ntpd-rs", command, dir, SocketAddrV4::new(ip, port), netns, probe)
}

struct Row {
    server: &'static str,
    outcome: Outcome,
}

fn step(
    server_name: &str,
    target: SocketAddrV4,
    client_ip: Ipv4Addr,
    rate: u64,
    o: &Options,
    run_no: u32,
    netns: Option<&Netns>,
) -> Result<Outcome> {
    let load = Load {
        target,
        source: SocketAddrV4::new(client_ip, 0),
        rate,
        duration: o.duration,
        sockets: o.sockets,
        grace: o.grace,
        run: run_no,
    };
    let mut go = || load::run(&load);
    let result = match netns {
        Some(ns) => client_side(ns, &mut go),
        None => go(),
    };
    result.map_err(|e| format!("load on {server_name} at {rate}/s: {e}"))
}

fn header() -> String {
    format!(
        "| {:<8} | {:>9} | {:>10} | {:>11} | {:>7} | {:>9} | {:>8} |\n|{:-<10}|{:->11}|{:->12}|{:->13}|{:->9}|{:->11}|{:->10}|",
        "server",
        "target/s",
        "offered/s",
        "answered/s",
        "loss %",
        "median µs",
        "p99 µs",
        "",
        ":",
        ":",
        ":",
        ":",
        ":",
        ":"
    )
}

fn row(r: &Row) -> String {
    let o = &r.outcome;
    let us = |q| o.latency_us(q).map_or("-".to_string(), |v| format!("{v:.0}"));
    let mark = if o.offered_rate() < OFFERED_SHARE * o.target_rate as f64 { "*" } else { " " };
    format!(
        "| {:<8} | {:>9} | {:>9.0}{mark} | {:>11.0} | {:>7.2} | {:>9} | {:>8} |",
        r.server,
        o.target_rate,
        o.offered_rate(),
        o.answered_rate(),
        o.loss_percent(),
        us(0.5),
        us(0.99)
    )
}

/// The highest target rate at which `server` lost under the threshold, counting
/// only steps the generator really offered.
fn loss_free(rows: &[Row], server: &str) -> Option<u64> {
    rows.iter()
        .filter(|r| r.server == server)
        .filter(|r| r.outcome.loss_percent() < LOSS_FREE_PERCENT)
        .filter(|r| r.outcome.offered_rate() >= OFFERED_SHARE * r.outcome.target_rate as f64)
        .map(|r| r.outcome.target_rate)
        .max()
}

/// The first three fields of /proc/loadavg.
fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn server(o: &Options) -> Result {
    if !is_root() {
        return Err("bench server must run as root: it starts the real appliance, each process sandboxed under \
                    its own system user, and chronyd (which drops to _chrony). Run it with sudo."
            .into());
    }
    if !have("chronyd") {
        return Err("chronyd not found: apt-get install chrony (the bench only starts it with -x)".into());
    }
    let bin_dir = strata_binaries(o.bin_dir.as_deref(), o.build)?;
    if !bin_dir.join("strata").is_file() {
        return Err(format!("no strata binary in {}", bin_dir.display()));
    }
    ensure_users()?;

    let scratch = Scratch(std::env::temp_dir().join(format!("strata-bench-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).map_err(|e| format!("{}: {e}", scratch.0.display()))?;
    let netns = if o.netns { Some(Netns::create()?) } else { None };
    let path = match netns {
        Some(_) => Path2 { server_ip: NETNS_SERVER_IP, client_ip: NETNS_CLIENT_IP },
        None => Path2 { server_ip: Ipv4Addr::LOCALHOST, client_ip: Ipv4Addr::LOCALHOST },
    };
    let ns = netns.as_ref();

    let load_before = loadavg();
    if load_before.split(' ').next().and_then(|l| l.parse::<f64>().ok()).is_some_and(|l| l > 0.5) {
        eprintln!("bench: load average {load_before}: other work on this machine will skew the figures");
    }
    // Can the generator itself offer the load? Against a sink nobody reads.
    let check_rate = o.rates.iter().copied().max().unwrap_or(0).max(SELF_CHECK_RATE);
    let check = {
        let mut go = || -> Result<Outcome> {
            let sink = load::sink(SocketAddrV4::new(path.client_ip, 0)).map_err(|e| format!("sink: {e}"))?;
            let address = match sink.local_addr().map_err(|e| e.to_string())? {
                std::net::SocketAddr::V4(a) => a,
                std::net::SocketAddr::V6(_) => unreachable!("bound to IPv4"),
            };
            let load = Load {
                target: address,
                source: SocketAddrV4::new(path.client_ip, 0),
                rate: check_rate,
                duration: o.duration,
                sockets: o.sockets,
                grace: Duration::from_millis(50),
                run: 1,
            };
            load::run(&load).map_err(|e| format!("generator check: {e}"))
        };
        match ns {
            Some(ns) => client_side(ns, &mut go)?,
            None => go()?,
        }
    };
    let generator_line = format!(
        "generator check: target {check_rate}/s against a UDP sink, offered {:.0}/s ({} sockets, {} s)",
        check.offered_rate(),
        o.sockets,
        o.duration.as_secs()
    );
    eprintln!("bench: {generator_line}");

    let mut servers = vec![
        start_strata(&bin_dir, &scratch.0, path.server_ip, bench_port(ns, 11123, path.server_ip)?, ns, path.client_ip)?,
        start_chronyd(&scratch.0, path.server_ip, bench_port(ns, 11124, path.server_ip)?, ns, path.client_ip)?,
    ];
    let ntpd_rs = ntpd_rs_binary();
    match ntpd_rs {
        Some(binary) => servers.push(start_ntpd_rs(
            binary,
            &scratch.0,
            path.server_ip,
            bench_port(ns, 11125, path.server_ip)?,
            ns,
            path.client_ip,
        )?),
        None => eprintln!("bench: ntpd-rs not found on PATH (ntp-daemon); not measured"),
    }

    let mut rows = Vec::new();
    let mut run_no = 2;
    for &rate in &o.rates {
        for server in &mut servers {
            if let Some(status) = server.process.exited() {
                return Err(format!("{} exited ({status}); log:\n{}", server.name, server.process.log_tail()));
            }
            let outcome = step(server.name, server.address, path.client_ip, rate, o, run_no, ns)?;
            run_no += 1;
            let r = Row { server: server.name, outcome };
            eprintln!("{}  (unsent {}, unmatched {})", row(&r), r.outcome.unsent, r.outcome.unmatched);
            rows.push(r);
            // Let the server drain what it still holds before the next load.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for server in &mut servers {
        if let Some(status) = server.process.exited() {
            return Err(format!(
                "{} exited ({status}) during the bench; log:\n{}",
                server.name,
                server.process.log_tail()
            ));
        }
    }

    let mut out = String::new();
    let transport = match ns {
        Some(_) => format!("veth between two network namespaces ({} → {})", path.client_ip, path.server_ip),
        None => "loopback (127.0.0.1)".to_string(),
    };
    let _ = writeln!(out, "\nNTP server load, {transport}, {} s per step, one server at a time", o.duration.as_secs());
    let _ = writeln!(out, "{generator_line}");
    let _ = writeln!(out, "load average before: {load_before}, after: {}\n", loadavg());
    let _ = writeln!(out, "{}", header());
    for r in &rows {
        let _ = writeln!(out, "{}", row(r));
    }
    let _ = writeln!(out, "\n* = the generator offered under {:.0} % of the target", OFFERED_SHARE * 100.0);
    let strata_max = loss_free(&rows, "strata");
    let show = |v: Option<u64>| v.map_or("none".to_string(), |r| format!("{r}/s"));
    for peer in servers.iter().map(|s| s.name).filter(|&n| n != "strata") {
        let peer_max = loss_free(&rows, peer);
        let ratio = match (strata_max, peer_max) {
            (Some(s), Some(p)) => format!("{:.2}×", s as f64 / p as f64),
            _ => "n/a".to_string(),
        };
        let _ = writeln!(
            out,
            "highest loss-free rate (loss < {LOSS_FREE_PERCENT} %): strata {}, {peer} {}; strata/{peer} = {ratio}",
            show(strata_max),
            show(peer_max)
        );
    }
    if ntpd_rs.is_none() {
        let _ = writeln!(out, "ntpd-rs: not found on PATH, not measured");
    }
    print!("{out}");
    // Guards stop the servers, then delete the namespaces and the scratch dir.
    drop(servers);
    drop(netns);
    drop(scratch);
    Ok(())
}
