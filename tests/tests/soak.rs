//! The soak: the appliance under NTP load while its children are killed with -9,
//! stopped and continued, and made to write garbage on their channels, at random
//! every 2–6 s. At the end every answer must have been right, the share answered
//! is reported, and the supervisor must not have leaked a descriptor or grown.
//!
//! `cargo xtask soak --minutes N` runs it for N minutes (`STRATA_SOAK_SECONDS`);
//! CI runs it for 20 s.

use std::collections::HashMap;
use std::io::Read;
use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{SockType, getsockopt, sockopt};
use nix::unistd::Pid;
use strata_process::channel::Channel;
use strata_tests::appliance::{Appliance, CHILDREN, StatusExt};
use strata_tests::{fd_count, ntp_now, require_root};

/// Requests per second, spread over `SOCKETS` client sockets.
const RATE: u64 = 2_000;
const SOCKETS: usize = 16;
/// An answer's transmit time may differ from this machine's clock by at most this.
const MAX_ERROR_S: f64 = 0.050;

/// Not a secret: which child to hit and when. From the OS all the same, so that
/// no test carries a generator of its own.
fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut b).unwrap();
    u64::from_ne_bytes(b) % n
}

fn vm_rss_kib(pid: u32) -> u64 {
    strata_tests::proc_status(pid).unwrap()["VmRSS"].trim_end_matches(" kB").trim().parse().unwrap()
}

fn ntp_to_unix_s(ts: u64) -> f64 {
    (ts >> 32) as f64 - 2_208_988_800.0 + (ts & 0xffff_ffff) as f64 / 4_294_967_296.0
}

#[derive(Default)]
struct Tally {
    sent: u64,
    answered: u64,
    wrong: Vec<String>,
    /// Transmit timestamp of each request not yet answered.
    outstanding: HashMap<u64, Instant>,
}

/// Send at `RATE` and check every answer until `stop`; then wait 2 s for stragglers.
fn load(port: u16, stop: Arc<AtomicBool>, tally: Arc<Mutex<Tally>>) {
    let sockets: Vec<UdpSocket> = (0..SOCKETS)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    let mut n: u64 = 0;
    let mut buf = [0u8; 128];
    let mut drain_until = None;
    loop {
        if drain_until.is_none() && stop.load(Ordering::Relaxed) {
            drain_until = Some(Instant::now() + Duration::from_secs(2));
        }
        if drain_until.is_some_and(|t| Instant::now() > t) {
            return;
        }
        if drain_until.is_none() {
            let due = start.elapsed().as_micros() as u64 * RATE / 1_000_000;
            while n < due {
                let mut request = [0u8; 48];
                request[0] = 0x23; // NTPv4, client
                // Unique per request: the time, with the counter in the low bits.
                let xmt = (ntp_now(0.0) & !0xfffff) | (n & 0xfffff);
                request[40..48].copy_from_slice(&xmt.to_be_bytes());
                let socket = &sockets[(n % SOCKETS as u64) as usize];
                if socket.send_to(&request, ("127.0.0.1", port)).is_ok() {
                    let mut t = tally.lock().unwrap();
                    t.sent += 1;
                    t.outstanding.insert(xmt, Instant::now());
                }
                n += 1;
            }
        }
        let mut got = false;
        for socket in &sockets {
            while let Ok((len, _)) = socket.recv_from(&mut buf) {
                got = true;
                let now_s = ntp_to_unix_s(ntp_now(0.0));
                let reply = &buf[..len];
                let mut t = tally.lock().unwrap();
                let origin = u64::from_be_bytes(reply.get(24..32).unwrap_or(&[0; 8]).try_into().unwrap());
                if t.outstanding.remove(&origin).is_none() {
                    t.wrong.push(format!("an answer to no request (origin {origin:#x}, {len} bytes)"));
                    continue;
                }
                let transmit = u64::from_be_bytes(reply[40..48].try_into().unwrap());
                let error_s = ntp_to_unix_s(transmit) - now_s;
                let problem = match () {
                    _ if len != 48 => Some(format!("{len} bytes")),
                    _ if reply[0] & 0x07 != 4 => Some(format!("mode {}", reply[0] & 7)),
                    _ if reply[0] >> 6 != 0 => Some(format!("leap {}", reply[0] >> 6)),
                    _ if reply[1] != 1 => Some(format!("stratum {}", reply[1])),
                    _ if error_s.abs() > MAX_ERROR_S => Some(format!("transmit time {error_s:+.3} s off")),
                    _ => None,
                };
                match problem {
                    Some(p) => t.wrong.push(p),
                    None => t.answered += 1,
                }
            }
        }
        if !got {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// The peer channels of `pid` (SEQPACKET sockets other than its supervisor channel).
fn peer_channels(pid: u32) -> Vec<Channel> {
    let mut channels = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if fd <= 3 {
            continue;
        }
        if let Ok(dup) = strata_sys::duplicate_descriptor_of(pid, fd)
            && getsockopt(&dup.as_fd(), sockopt::SockType) == Ok(SockType::SeqPacket)
        {
            channels.push(Channel::from_fd(dup));
        }
    }
    channels
}

#[test]
fn the_appliance_answers_correctly_while_its_children_are_killed_stopped_and_fed_garbage() {
    if !require_root("soak") {
        return;
    }
    let seconds: u64 = std::env::var("STRATA_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let mut appliance = Appliance::start("soak", "");
    let supervisor = appliance.supervisor_pid();
    // Settle: the first status writes and log lines allocate what they keep.
    std::thread::sleep(Duration::from_secs(1));
    let (fds_before, rss_before) = (fd_count(supervisor), vm_rss_kib(supervisor));

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let loader = {
        let (stop, tally, port) = (stop.clone(), tally.clone(), appliance.ntp_port);
        std::thread::spawn(move || load(port, stop, tally))
    };

    let until = Instant::now() + Duration::from_secs(seconds);
    let mut actions: HashMap<&str, u32> = HashMap::new();
    let mut api_reads = (0u32, 0u32);
    while Instant::now() < until {
        let pause = Duration::from_millis(2_000 + random_below(4_000));
        let next = Instant::now() + pause;
        while Instant::now() < next.min(until) {
            let (ok, _) = appliance.stratactl(&["tracking"]);
            api_reads = (api_reads.0 + u32::from(ok), api_reads.1 + 1);
            std::thread::sleep(Duration::from_millis(500));
        }
        if Instant::now() >= until {
            break;
        }
        let role = CHILDREN[random_below(CHILDREN.len() as u64) as usize];
        let Some(pid) = appliance.try_status().and_then(|s| s.of(role).pid) else { continue };
        match random_below(6) {
            0 => {
                // A debugger's stop: the process must survive it, and catch up.
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGSTOP);
                std::thread::sleep(Duration::from_millis(200));
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
                *actions.entry("stop/continue").or_default() += 1;
            }
            1 => {
                // Garbage from this child on every channel it has: its peers drop it
                // and it is replaced (on the adjuster's word, or two peers').
                for ch in peer_channels(pid) {
                    let _ = ch.send_frame(&[0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xff, 0x0f], None);
                }
                *actions.entry("garbage").or_default() += 1;
            }
            _ => {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                *actions.entry("kill -9").or_default() += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    loader.join().unwrap();

    let status =
        appliance.wait_until("every process ready and linked again", Duration::from_secs(20), |s| s.all_linked());
    std::thread::sleep(Duration::from_secs(1));
    let (fds_after, rss_after) = (fd_count(supervisor), vm_rss_kib(supervisor));
    let t = tally.lock().unwrap();
    let share = 100.0 * t.answered as f64 / t.sent.max(1) as f64;
    let restarts: Vec<String> = CHILDREN.iter().map(|r| format!("{r} {}", status.of(r).restarts)).collect();
    eprintln!(
        "soak: {seconds} s, actions {actions:?}; restarts {}; {} requests, {} answered ({share:.3} %), \
         {} unanswered, {} wrong; API reads {}/{}; supervisor fds {fds_before} -> {fds_after}, \
         VmRSS {rss_before} -> {rss_after} KiB",
        restarts.join(", "),
        t.sent,
        t.answered,
        t.outstanding.len(),
        t.wrong.len(),
        api_reads.0,
        api_reads.1,
    );
    assert!(t.wrong.is_empty(), "wrong answers: {:?}", &t.wrong[..t.wrong.len().min(10)]);
    assert!(t.sent > seconds * RATE * 9 / 10, "the load fell short: {} requests", t.sent);
    // What a dying engine had already read dies with it (ARCHITECTURE.md, Re-spawn):
    // a handful per kill at most.
    assert!(share >= 99.9, "{share:.3} % answered");
    assert_eq!(fds_after, fds_before, "the supervisor leaked descriptors");
    assert!(rss_after <= rss_before + 1024, "the supervisor grew from {rss_before} to {rss_after} KiB");
    assert!(strata_tests::alive(supervisor));
    assert!(appliance.log().contains("re-spawning in"), "no child was re-spawned");
}
