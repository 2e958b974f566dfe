//! Support for the multi-process tests: start the real appliance, read what the
//! kernel says about its processes, talk to one process directly as its supervisor.
#![forbid(unsafe_code)]

pub mod appliance;
pub mod grpc;
pub mod inject;
pub mod standalone;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

/// `target/debug` (or whichever profile built this test).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent().and_then(|p| p.parent()).expect("target dir").to_path_buf()
}

/// Build the process binaries once per test run, so a test never runs stale ones.
pub fn ensure_built() {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--workspace", "--bins"]).current_dir(workspace);
        if bin_dir().ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo build");
        assert!(status.success(), "building the process binaries failed");
    });
}

/// Whether the test may use root-only features. Not root: in CI that is a failure
/// (CI runs as root and must run every test); elsewhere the caller returns early
/// and says so.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: needs root, and CI=true");
    eprintln!("{test}: needs root; not checked on this run (run `cargo xtask ci` as root)");
    false
}

/// The `Key: value` lines of `/proc/<pid>/status`.
pub fn proc_status(pid: u32) -> Option<HashMap<String, String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_string(), v.trim().to_string())).collect())
}

/// Capability mask (CapEff, CapPrm, CapBnd, ...) as a number.
pub fn cap_mask(status: &HashMap<String, String>, key: &str) -> u64 {
    u64::from_str_radix(&status[key], 16).expect("capability mask")
}

/// Bit of a capability in `/proc/<pid>/status` masks.
pub const CAP_SETGID: u64 = 1 << 6;
pub const CAP_SETUID: u64 = 1 << 7;
pub const CAP_KILL: u64 = 1 << 5;
pub const CAP_SYS_TIME: u64 = 1 << 25;

/// Children of `pid` that are zombies (state Z).
pub fn zombies_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // pid (comm) state ppid ...: comm may contain spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if state == Some("Z") && ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

/// Number of open descriptors of `pid` at rest: the least of several looks, so
/// that a file open for a moment (the status file being rewritten) does not count.
pub fn fd_count(pid: u32) -> usize {
    (0..20)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(5));
            std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
        })
        .min()
        .unwrap_or(0)
}

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.split_whitespace().next() != Some("Z")))
        .unwrap_or(false)
}

/// Poll `check` every 5 ms until it returns `Some`, or fail after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "strata-test-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A UDP port free on 127.0.0.1 right now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether an external tool the test needs is installed. Missing: in CI that is a
/// failure (`cargo xtask ci` installs it); elsewhere the caller returns early.
pub fn require_tool(test: &str, tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: needs {tool}, and CI=true");
    eprintln!("{test}: needs {tool}; not checked on this run (`cargo xtask ci` installs it)");
    false
}

/// A tiny stratum-1 NTP server of the tests' own, whose time is the machine's plus
/// `offset_s`: an upstream that is wrong on purpose (a falseticker) without touching
/// any clock. It answers until dropped.
pub struct TestNtpServer {
    pub address: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestNtpServer {
    pub fn start(bind: &str, offset_s: f64) -> TestNtpServer {
        use std::sync::atomic::{AtomicBool, Ordering};
        let socket = std::net::UdpSocket::bind(bind).expect("bind the test NTP server");
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let address = socket.local_addr().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((len, client)) = socket.recv_from(&mut buf) else { continue };
                if len < 48 || buf[0] & 7 != 3 {
                    continue;
                }
                let now = ntp_now(offset_s);
                let mut reply = [0u8; 48];
                reply[0] = (buf[0] & 0x38) | 4; // leap 0, version echoed, mode 4
                reply[1] = 1; // stratum 1
                reply[2] = buf[2];
                reply[3] = (-20i8) as u8;
                reply[8..12].copy_from_slice(&0x0000_0010u32.to_be_bytes()); // ~0.25 ms dispersion
                reply[12..16].copy_from_slice(b"GPS\0");
                reply[16..24].copy_from_slice(&now.to_be_bytes());
                reply[24..32].copy_from_slice(&buf[40..48]);
                reply[32..40].copy_from_slice(&now.to_be_bytes());
                reply[40..48].copy_from_slice(&ntp_now(offset_s).to_be_bytes());
                let _ = socket.send_to(&reply, client);
            }
        });
        TestNtpServer { address, stop, thread: Some(thread) }
    }
}

impl Drop for TestNtpServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The machine's time plus `offset_s`, as a 64-bit NTP timestamp.
pub fn ntp_now(offset_s: f64) -> u64 {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64() + offset_s;
    let ntp = unix + 2_208_988_800.0;
    ((ntp.floor() as u64) << 32) | ((ntp.fract() * 4_294_967_296.0) as u64)
}

/// Run `chronyd -Q` against 127.0.0.1:`port`; returns its output and its
/// measurements log.
pub fn chronyd_query(port: u16) -> (bool, String, String) {
    chronyd_query_with(port, "iburst maxsamples 4")
}

/// `chronyd -Q` against strata with `options` on its server line.
pub fn chronyd_query_with(port: u16, options: &str) -> (bool, String, String) {
    let dir = scratch_dir("chronyd-q");
    // chronyd drops to its own user and must be able to write its log here.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let conf = dir.join("chrony.conf");
    std::fs::write(
        &conf,
        format!(
            "server 127.0.0.1 port {port} {options}\nlogdir {0}\nlog measurements\n\
             cmdport 0\nbindcmdaddress {0}/chronyd.sock\npidfile {0}/chronyd.pid\n",
            dir.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new("timeout").args(["60", "chronyd", "-Q", "-f"]).arg(&conf).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(dir.join("measurements.log")).unwrap_or_default();
    (out.status.success(), text, log)
}

/// The offset `chronyd -Q` measured ("System clock wrong by X seconds"), seconds.
pub fn chronyd_offset(output: &str) -> f64 {
    output
        .lines()
        .find_map(|l| l.split("System clock wrong by ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no offset in chronyd's output:\n{output}"))
        .parse()
        .unwrap()
}

/// Plays gpsd for a SOCK refclock: sends chrony's `struct sock_sample` (40 bytes on
/// x86_64: timeval, offset, pulse, leap, padding, magic "SOCK") to `path` every
/// `every`, with `offset_s` (reference − system) until dropped or paused.
pub struct SockFeeder {
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One SOCK sample as gpsd writes it.
pub fn sock_sample(system: std::time::SystemTime, offset_s: f64, magic: u32) -> [u8; 40] {
    let t = system.duration_since(std::time::UNIX_EPOCH).unwrap();
    let mut b = [0u8; 40];
    b[0..8].copy_from_slice(&(t.as_secs() as i64).to_ne_bytes());
    b[8..16].copy_from_slice(&i64::from(t.subsec_micros()).to_ne_bytes());
    b[16..24].copy_from_slice(&offset_s.to_ne_bytes());
    b[36..40].copy_from_slice(&magic.to_ne_bytes());
    b
}

pub const SOCK_MAGIC: u32 = 0x534f_434b;

impl SockFeeder {
    pub fn start(path: &std::path::Path, offset_s: f64, every: Duration) -> SockFeeder {
        SockFeeder::start_to(vec![path.to_path_buf()], offset_s, every)
    }

    /// The same samples to several readers (strata and a chronyd cross-check).
    pub fn start_to(paths: Vec<std::path::PathBuf>, offset_s: f64, every: Duration) -> SockFeeder {
        use std::sync::atomic::{AtomicBool, Ordering};
        let paused = std::sync::Arc::new(AtomicBool::new(false));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (p, s) = (std::sync::Arc::clone(&paused), std::sync::Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let socket = std::os::unix::net::UnixDatagram::unbound().unwrap();
            while !s.load(Ordering::Relaxed) {
                if !p.load(Ordering::Relaxed) {
                    let sample = sock_sample(std::time::SystemTime::now(), offset_s, SOCK_MAGIC);
                    for path in &paths {
                        let _ = socket.send_to(&sample, path);
                    }
                }
                std::thread::sleep(every);
            }
        });
        SockFeeder { paused, stop, thread: Some(thread) }
    }

    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for SockFeeder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
