//! NTP keeps being served while the appliance's other processes come and go.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use strata_tests::appliance::Appliance;
use strata_tests::appliance::StatusExt;
use strata_tests::require_root;

/// One client request; returns the reply if one came within `timeout`.
fn ask(port: u16, timeout: Duration) -> Option<[u8; 48]> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut request = [0u8; 48];
    request[0] = 0x23; // LI 0, version 4, mode 3 (client)
    request[40..48].copy_from_slice(&0xdead_beef_0123_4567u64.to_be_bytes()); // transmit
    socket.send_to(&request, ("127.0.0.1", port)).unwrap();
    let mut reply = [0u8; 48];
    match socket.recv_from(&mut reply) {
        Ok((48, _)) => Some(reply),
        _ => None,
    }
}

fn check_reply(reply: &[u8; 48]) {
    assert_eq!(reply[0] & 0x07, 4, "mode 4 (server)");
    assert_eq!((reply[0] >> 3) & 0x07, 4, "version echoed");
    assert_eq!(reply[0] >> 6, 0, "no leap warning: local stratum 1 is synchronised");
    assert_eq!(reply[1], 1, "stratum 1");
    assert_eq!(&reply[12..16], b"LOCL");
    assert_eq!(&reply[24..32], &0xdead_beef_0123_4567u64.to_be_bytes(), "origin = our transmit");
}

#[test]
fn serving_resumes_within_a_second_after_the_engine_is_killed() {
    if !require_root("engine respawn") {
        return;
    }
    let appliance = Appliance::start("serve-engine", "");
    check_reply(&ask(appliance.ntp_port, Duration::from_secs(1)).expect("a reply before the kill"));
    let old = appliance.pid_of("ntp");
    let killed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let reply = loop {
        if let Some(reply) = ask(appliance.ntp_port, Duration::from_millis(50)) {
            break reply;
        }
        assert!(killed.elapsed() < Duration::from_secs(2), "no reply {:?} after the kill", killed.elapsed());
    };
    let took = killed.elapsed();
    check_reply(&reply);
    assert_ne!(appliance.pid_of("ntp"), old);
    assert!(took < Duration::from_secs(1), "serving resumed after {took:?}");
}

/// The engine killed in the middle of a 10 000/s stream: every request is
/// answered (the sockets' receive buffers hold what arrives while the new engine
/// starts), and a request that waited in the kernel has T2 from when it arrived,
/// so the wait shows as server delay (T3 − T2), not as an offset error.
#[test]
fn requests_that_arrive_while_the_engine_is_replaced_are_all_answered_with_their_arrival_time() {
    if !require_root("engine gap") {
        return;
    }
    use strata_tests::ntp_now;
    let appliance = Appliance::start("serve-gap", "");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    // The new engine answers the queue in a burst: room for all of it here too.
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBufForce, &(16 << 20)).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let receiver = socket.try_clone().unwrap();
    let replies = std::thread::spawn(move || {
        let mut replies = Vec::new();
        let mut reply = [0u8; 48];
        while let Ok((48, _)) = receiver.recv_from(&mut reply) {
            replies.push(reply);
        }
        replies
    });
    let ntp = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap());
    let seconds = |a: u64, b: u64| (a as i64).wrapping_sub(b as i64) as f64 / 4_294_967_296.0;
    let engine = appliance.pid_of("ntp");
    let start = Instant::now();
    let mut sent = std::collections::HashMap::new();
    let mut killed = None;
    for batch in 0..600u32 {
        // Between two batches, and the next sent once the engine is dead: what a
        // dying engine has already taken from its sockets dies with it, whatever
        // the buffers (SIGKILL lands microseconds after kill(2) returns).
        if killed.is_none() && start.elapsed() > Duration::from_millis(100) {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(engine as i32), nix::sys::signal::Signal::SIGKILL)
                .unwrap();
            strata_tests::wait_for("the engine dead", Duration::from_secs(1), || {
                let stat = std::fs::read_to_string(format!("/proc/{engine}/stat")).unwrap_or_default();
                let state = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next());
                matches!(state, None | Some("Z" | "X")).then_some(())
            });
            killed = Some(batch * 10);
        }
        for k in 0..10 {
            // Our transmit time, unique per request: the reply's origin names it.
            let t1 = ntp_now(0.0) + u64::from(batch * 10 + k);
            let mut request = [0u8; 48];
            request[0] = 0x23;
            request[40..48].copy_from_slice(&t1.to_be_bytes());
            socket.send_to(&request, ("127.0.0.1", appliance.ntp_port)).unwrap();
            sent.insert(t1, batch * 10 + k);
        }
        std::thread::sleep(
            (start + Duration::from_millis(u64::from(batch + 1))).saturating_duration_since(Instant::now()),
        );
    }
    let replies = replies.join().unwrap();
    assert_ne!(appliance.pid_of("ntp"), engine, "the engine was replaced");
    let mut answered = std::collections::HashSet::new();
    let mut longest_wait = 0.0f64;
    for reply in &replies {
        let (t1, t2, t3) = (ntp(&reply[24..32]), ntp(&reply[32..40]), ntp(&reply[40..48]));
        assert!(sent.contains_key(&t1), "an answer to a request we did not send");
        assert!(answered.insert(t1), "answered twice");
        // Client and server share the clock: T2 − T1 is the one-way delay.
        let arrival = seconds(t2, t1);
        assert!((-0.001..0.005).contains(&arrival), "T2 is {arrival} s after T1: not the arrival time");
        longest_wait = longest_wait.max(seconds(t3, t2));
    }
    eprintln!("{} of {} answered; longest T3 - T2 {:.1} ms", answered.len(), sent.len(), longest_wait * 1e3);
    let mut lost: Vec<u32> = sent.iter().filter(|(t1, _)| !answered.contains(*t1)).map(|(_, &i)| i).collect();
    lost.sort_unstable();
    assert!(lost.is_empty(), "requests {lost:?} lost across the re-spawn (the kill came before request {killed:?})");
    assert!(longest_wait > 0.01, "no request waited for the new engine ({longest_wait} s): the kill missed the stream");
}

#[test]
fn serving_continues_while_the_other_processes_are_down() {
    if !require_root("others down") {
        return;
    }
    // A long back-off keeps the killed processes down for the whole check.
    let mut appliance =
        Appliance::start("serve-others", "[supervisor.restart]\nbackoff-initial-ms = 5000\nbackoff-max-ms = 5000\n");
    for role in ["adjust", "refclock", "control"] {
        let pid = appliance.pid_of(role);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    appliance.wait_until("three processes down", Duration::from_secs(2), |s| {
        ["adjust", "refclock", "control"].iter().all(|r| s.of(r).pid.is_none())
    });
    let engine = appliance.pid_of("ntp");
    for _ in 0..20 {
        check_reply(&ask(appliance.ntp_port, Duration::from_millis(500)).expect("a reply while the others are down"));
    }
    assert_eq!(appliance.pid_of("ntp"), engine);
}

#[test]
fn ipv4_and_ipv6_clients_are_both_answered() {
    if !require_root("IPv6") {
        return;
    }
    let port = strata_tests::free_udp_port();
    let server = format!(
        "listen = [\"127.0.0.1:{port}\", \"[::1]:{port}\"]\nlocal-stratum = 2\naccess = [\"allow 127.0.0.0/8\", \"allow ::1\"]\n"
    );
    let _appliance = Appliance::start_custom("dual-stack", "", Some(&server), None);
    for (local, remote) in [("127.0.0.1:0", format!("127.0.0.1:{port}")), ("[::1]:0", format!("[::1]:{port}"))] {
        let socket = UdpSocket::bind(local).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut request = [0u8; 48];
        request[0] = 0x1b; // version 3, client: the version is echoed
        socket.send_to(&request, &remote).unwrap();
        let mut reply = [0u8; 48];
        let (n, _) = socket.recv_from(&mut reply).unwrap_or_else(|e| panic!("{remote}: {e}"));
        assert_eq!(n, 48);
        assert_eq!(reply[0] & 0x3f, (3 << 3) | 4, "{remote}: version 3 echoed, mode 4");
        assert_eq!(reply[1], 2, "{remote}: local stratum 2");
    }
}
