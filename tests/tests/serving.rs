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
