//! A process that breaks the protocol is cut off and replaced: the test takes the
//! engine's own channels (pidfd_getfd) and writes garbage on them, as a
//! compromised engine would.

use std::os::fd::AsFd;
use std::time::Duration;

use nix::sys::socket::{SockType, getsockopt, sockopt};
use strata_process::channel::Channel;
use strata_proto::ipc::{ChildToSupervisor, Role, UnlinkReason};
use strata_tests::appliance::Appliance;
use strata_tests::appliance::StatusExt;
use strata_tests::require_root;

#[test]
fn an_engine_that_sends_garbage_is_dropped_by_its_peers_and_replaced_once() {
    if !require_root("compromised engine") {
        return;
    }
    let mut appliance = Appliance::start("compromised", "");
    let engine = appliance.pid_of("ntp");
    let others: Vec<(&str, u32)> = ["adjust", "refclock", "control"].map(|r| (r, appliance.pid_of(r))).to_vec();

    // Every peer channel of the engine: the SEQPACKET sockets other than fd 3.
    let mut channels = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{engine}/fd")).unwrap().flatten() {
        let fd: i32 = entry.file_name().to_str().unwrap().parse().unwrap();
        if fd <= 3 {
            continue;
        }
        let dup = strata_sys::duplicate_descriptor_of(engine, fd).unwrap();
        if getsockopt(&dup.as_fd(), sockopt::SockType) == Ok(SockType::SeqPacket) {
            channels.push(Channel::from_fd(dup));
        }
    }
    assert_eq!(channels.len(), 3, "the engine has a channel to adjuster, refclock and control");
    for ch in &channels {
        ch.send_frame(&[0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xff, 0x0f], None).unwrap();
    }

    let status = appliance.wait_until("a new engine, linked", Duration::from_secs(5), |s| {
        s.of("ntp").pid.is_some_and(|p| p != engine) && s.all_linked()
    });
    // Replaced once, although three peers accused it.
    std::thread::sleep(Duration::from_millis(300));
    let status_later = appliance.status();
    assert_eq!(status_later.of("ntp").spawns, 2, "{status:?}");
    assert_eq!(status.of("ntp").last_exit.as_deref(), Some("killed by SIGKILL"));
    // The accusers were not touched.
    for (role, pid) in others {
        assert_eq!(status_later.of(role).pid, Some(pid), "{role} was restarted");
    }
    let log = appliance.log();
    assert!(log.contains("dropped ntp for a protocol violation; re-spawning ntp"), "{log}");
    assert!(log.contains("protocol violation, dropping the peer"), "{log}");
}

#[test]
fn a_child_that_sends_its_supervisor_garbage_is_replaced_and_the_supervisor_carries_on() {
    if !require_root("garbage to the supervisor") {
        return;
    }
    let mut appliance = Appliance::start("garbage-to-supervisor", "");
    let supervisor = appliance.supervisor_pid();
    let frames: [(&str, Vec<u8>); 3] = [
        ("noise", vec![0x7f, 0x13, 0x37, 0x00, 0x42]),
        ("oversized frame", vec![2u8; strata_proto::ipc::MAX_FRAME + 1]),
        ("a second Hello", {
            let mut buf = [0u8; 32];
            strata_proto::ipc::encode_hello(strata_proto::ipc::Role::Control, &mut buf).to_vec()
        }),
    ];
    for (case, frame) in frames {
        let victim = appliance.pid_of("control");
        let channel = Channel::from_fd(strata_sys::duplicate_descriptor_of(victim, 3).unwrap());
        channel.send_frame(&frame, None).unwrap();
        let status = appliance.wait_until(&format!("control replaced after {case}"), Duration::from_secs(5), |s| {
            s.of("control").pid.is_some_and(|p| p != victim) && s.all_linked()
        });
        assert_eq!(status.of("control").last_exit.as_deref(), Some("killed by SIGKILL"), "{case}");
        assert!(strata_tests::alive(supervisor), "{case}");
    }
    assert!(appliance.log().contains("supervisor channel:"), "{}", appliance.log());
}

/// One NTP request to the appliance: whether a server answer came back.
fn answered(port: u16) -> bool {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut request = [0u8; 48];
    request[0] = 0x23; // NTPv4, client
    request[40..48].copy_from_slice(&strata_tests::ntp_now(0.0).to_be_bytes());
    socket.send_to(&request, ("127.0.0.1", port)).unwrap();
    let mut reply = [0u8; 64];
    matches!(socket.recv_from(&mut reply), Ok((48, _)) if reply[0] & 7 == 4 && reply[24..32] == request[40..48])
}

#[test]
fn a_compromised_control_plane_cannot_get_the_engine_killed() {
    if !require_root("compromised control plane") {
        return;
    }
    let mut appliance = Appliance::start("compromised-control", "");
    let control = appliance.pid_of("control");
    let others: Vec<(&str, u32)> = ["ntp", "adjust", "refclock"].map(|r| (r, appliance.pid_of(r))).to_vec();
    // The control plane's own channel to the supervisor (fd 3): what a compromised
    // control plane would write its false reports on.
    let supervisor = Channel::from_fd(strata_sys::duplicate_descriptor_of(control, 3).unwrap());

    // For three seconds, every 50 ms: "the engine (and the adjuster, and the
    // refclock reader) broke the protocol" about every channel id it might hold (ids count from 1).
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let mut reports = 0;
    while std::time::Instant::now() < until {
        for peer in [Role::Ntp, Role::Adjust, Role::Refclock] {
            for link in 1..=32 {
                let report = ChildToSupervisor::Unlinked { peer, link, reason: UnlinkReason::Violation };
                // A full queue only means the supervisor has not caught up yet.
                match supervisor.send(&report, None) {
                    Ok(()) => reports += 1,
                    Err(strata_process::channel::SendError::Full) => std::thread::sleep(Duration::from_millis(1)),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert!(answered(appliance.ntp_port), "the engine stopped answering under false reports");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(reports > 1_000, "{reports}");

    let status = appliance.status();
    for (role, pid) in &others {
        assert_eq!(status.of(role).pid, Some(*pid), "{role} was killed on the control plane's word: {status:?}");
        assert_eq!(status.of(role).spawns, 1, "{role}");
    }
    assert_eq!(status.of("control").pid, Some(control));
    // The reports were taken as evidence, and the channels they named come back.
    let log = appliance.log();
    assert!(log.contains("kept as evidence (ntp keeps running)"), "{log}");
    assert!(!log.contains("re-spawning ntp"), "{log}");
    appliance.wait_until("the control plane linked again", Duration::from_secs(20), |s| s.all_linked());
    let (ok, said) = appliance.stratactl(&["tracking"]);
    assert!(ok, "{said}");
}
