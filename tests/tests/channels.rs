//! Whatever arrives on a channel, a process never panics: it logs, drops that peer,
//! tells the supervisor, and keeps serving its other channels and new ones.

use std::os::fd::AsFd;
use std::time::Duration;

use strata_process::channel::{Channel, RecvError};
use strata_proto::ipc::{ChildToSupervisor, MAX_FRAME, Role, UnlinkReason};
use strata_tests::standalone::Standalone;

const WAIT: Duration = Duration::from_secs(5);

/// Deterministic bytes (xorshift), so a failure can be replayed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn hello_frame(role: Role) -> Vec<u8> {
    let mut buf = [0u8; 32];
    strata_proto::ipc::encode_hello(role, &mut buf).to_vec()
}

/// Link `peer`, complete the handshake as that peer, and check the process says so.
fn linked(process: &Standalone, peer: Role) -> (Channel, u64) {
    let (ch, link) = process.link(peer);
    ch.send_frame(&hello_frame(peer), None).unwrap();
    assert_eq!(process.next_report(WAIT), Some(ChildToSupervisor::Linked { peer, link }), "{} ← {peer}", process.role);
    (ch, link)
}

/// The process reports that it dropped `peer` for a violation and closed its end.
fn dropped(process: &mut Standalone, peer: Role, (ch, link): &(Channel, u64), case: &str) {
    let report = process.next_report(WAIT);
    assert_eq!(
        report,
        Some(ChildToSupervisor::Unlinked { peer, link: *link, reason: UnlinkReason::Violation }),
        "{} ← {peer}: {case}",
        process.role
    );
    let mut buf = vec![0u8; MAX_FRAME + 1];
    // Drain what the process said before dropping us, then the end of the channel.
    loop {
        match ch.recv_frame(&mut buf) {
            Err(RecvError::Closed) => break,
            Ok(_) | Err(RecvError::WouldBlock) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("{case}: {e}"),
        }
    }
    assert!(process.running(), "{} died after {case}", process.role);
}

#[test]
fn garbage_on_any_channel_drops_that_peer_and_nothing_else() {
    for role in [Role::Adjust, Role::Ntp, Role::Refclock, Role::Control] {
        let mut process = Standalone::start(role, Vec::new());
        for peer in role.peers() {
            // Before the handshake: noise, a truncated Hello, a Hello from someone else.
            let cases: [(&str, Vec<u8>); 3] = [
                ("noise instead of Hello", noise(u64::from(peer as u8) + 1, 64)),
                ("truncated Hello", hello_frame(peer)[..2].to_vec()),
                ("Hello naming another process", hello_frame(Role::Supervisor)),
            ];
            for (case, frame) in cases {
                let ch = process.link(peer);
                ch.0.send_frame(&frame, None).unwrap();
                dropped(&mut process, peer, &ch, case);
            }
            // After the handshake: noise, an oversized frame, a second Hello, a
            // descriptor where none belongs.
            for seed in 1..=8 {
                let ch = linked(&process, peer);
                ch.0.send_frame(&noise(seed * 7919, 8 + seed as usize * 13), None).unwrap();
                dropped(&mut process, peer, &ch, &format!("noise seed {seed}"));
            }
            let ch = linked(&process, peer);
            ch.0.send_frame(&vec![1u8; MAX_FRAME + 1], None).unwrap();
            dropped(&mut process, peer, &ch, "oversized frame");

            let ch = linked(&process, peer);
            ch.0.send_frame(&hello_frame(peer), None).unwrap();
            dropped(&mut process, peer, &ch, "second Hello");

            let ch = linked(&process, peer);
            let (spare, _keep) = Channel::pair().unwrap();
            ch.0.send_frame(&[1], Some(spare.as_fd())).unwrap();
            dropped(&mut process, peer, &ch, "unexpected descriptor");
        }
        // Still whole: every peer links again and the process answers the supervisor.
        let links: Vec<(Channel, u64)> = role.peers().map(|peer| linked(&process, peer)).collect();
        assert_eq!(links.len(), role.peers().count());
        assert!(process.running());
    }
}

#[test]
fn a_peer_that_hangs_up_is_reported_closed_not_violating() {
    let process = Standalone::start(Role::Adjust, Vec::new());
    let (ch, link) = linked(&process, Role::Ntp);
    drop(ch);
    assert_eq!(
        process.next_report(WAIT),
        Some(ChildToSupervisor::Unlinked { peer: Role::Ntp, link, reason: UnlinkReason::Closed })
    );
}
