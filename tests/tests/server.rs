//! The engine's NTP server on its own, with the test as supervisor and as control
//! plane: what it answers, what it drops, and what it counts.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use strata_process::channel::{Channel, RecvError};
use strata_proto::ipc::{
    ControlToEngine, EngineStatus, EngineToControl, MAX_FRAME, NtpSettings, RateLimitSettings, Resource, Role, Settings,
};
use strata_tests::standalone::Standalone;

struct Server {
    process: Standalone,
    control: Channel,
    address: SocketAddr,
}

fn start(access: &[&str], ratelimit: Option<RateLimitSettings>, client_log_limit_bytes: u64) -> Server {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    let Settings::Ntp(demo) = strata_tests::standalone::demo_settings(Role::Ntp) else { unreachable!() };
    let settings = Settings::Ntp(NtpSettings {
        access: access.iter().map(|r| r.to_string()).collect(),
        ratelimit,
        client_log_limit_bytes,
        kernel_tx_timestamps: true,
        ..demo
    });
    let resources = vec![(Resource::NtpSocket { local: address, thread: 0 }, OwnedFd::from(socket))];
    let process = Standalone::start_with(settings, resources);
    let (control, _link) = process.link(Role::Control);
    let mut buf = [0u8; 32];
    control.send_frame(strata_proto::ipc::encode_hello(Role::Control, &mut buf), None).unwrap();
    Server { process, control, address }
}

impl Server {
    /// The counters once every request received so far is accounted for: a serving
    /// thread counts a reply after sendmmsg returns, which can be after the client
    /// already has it.
    fn settled_stats(&self, received: u64) -> strata_proto::ipc::ServerStats {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.status().server;
            let accounted = s.answered + s.malformed + s.not_client + s.denied + s.rate_limited + s.send_failed;
            if s.received >= received && accounted == s.received {
                return s;
            }
            assert!(Instant::now() < deadline, "counters never settled: {s:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Ask the engine for its counters, as the control plane does.
    fn status(&self) -> EngineStatus {
        self.control.send(&ControlToEngine::ReadStatus, None).unwrap();
        let mut buf = vec![0u8; MAX_FRAME];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.control.recv_frame(&mut buf) {
                Ok((frame, None)) if frame[0] != 0 => match strata_proto::ipc::decode::<EngineToControl>(frame) {
                    Ok(EngineToControl::Status(s)) => return *s,
                    _ => continue,
                },
                Ok(_) | Err(RecvError::WouldBlock) => {
                    assert!(Instant::now() < deadline, "no status from the engine");
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("control channel: {e}"),
            }
        }
    }
}

fn client_request(transmit: u64) -> [u8; 48] {
    let mut r = [0u8; 48];
    r[0] = 0x23; // version 4, client
    r[40..48].copy_from_slice(&transmit.to_be_bytes());
    r
}

/// Send `packet` from `from` and return the reply, if one comes within `wait`.
fn exchange(from: &UdpSocket, to: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    from.set_read_timeout(Some(wait)).unwrap();
    from.send_to(packet, to).unwrap();
    let mut buf = [0u8; 2048];
    from.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
}

#[test]
fn bad_requests_are_dropped_and_counted_and_good_ones_answered() {
    let server = start(&["allow 127.0.0.0/8"], None, 524_288);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let good = client_request(7);
    let with_mode = |mode: u8| {
        let mut p = good;
        p[0] = (p[0] & !7) | mode;
        p
    };
    let version = |v: u8| {
        let mut p = good;
        p[0] = (p[0] & 0xc7) | (v << 3);
        p
    };
    let mut lying_extension = good.to_vec();
    lying_extension.extend_from_slice(&[0x01, 0x04, 0x01, 0x00]); // claims 256 bytes, has 4
    lying_extension.extend_from_slice(&[0u8; 24]);
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated", good[..47].to_vec()),
        ("version 0", version(0).to_vec()),
        ("version 7", version(7).to_vec()),
        ("extension field with a lying length", lying_extension),
        ("oversized", vec![0x23; 4000]),
    ];
    let not_client: Vec<(&str, Vec<u8>)> =
        [1u8, 2, 4, 5, 6, 7].into_iter().map(|m| ("wrong mode", with_mode(m).to_vec())).collect();
    for (case, packet) in malformed.iter().chain(not_client.iter()) {
        assert_eq!(exchange(&client, server.address, packet, Duration::from_millis(150)), None, "{case} answered");
    }
    let reply = exchange(&client, server.address, &good, Duration::from_secs(2)).expect("a good request is answered");
    assert_eq!(reply.len(), 48);
    assert_eq!(reply[0] & 7, 4);
    assert_eq!(&reply[24..32], &7u64.to_be_bytes());

    let stats = server.settled_stats((malformed.len() + not_client.len() + 1) as u64);
    assert_eq!(stats.malformed, malformed.len() as u64, "{stats:?}");
    assert_eq!(stats.not_client, not_client.len() as u64, "{stats:?}");
    assert_eq!(stats.answered, 1, "{stats:?}");
    assert_eq!(stats.received, (malformed.len() + not_client.len() + 1) as u64, "{stats:?}");
    let mut process = server.process;
    assert!(process.running());
}

fn ntp_u64(reply: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(reply[at..at + 8].try_into().unwrap())
}

#[test]
fn an_interleaved_client_gets_the_kernels_transmit_time_of_the_previous_answer() {
    let server = start(&["allow 127.0.0.0/8"], None, 524_288);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let wait = Duration::from_secs(2);
    // As chrony's interleaved client builds them: origin = our receive timestamp of
    // its previous request, receive = its own receive time of that answer.
    let request = |origin: u64, receive: u64, transmit: u64| {
        let mut r = client_request(transmit);
        r[24..32].copy_from_slice(&origin.to_be_bytes());
        r[32..40].copy_from_slice(&receive.to_be_bytes());
        r
    };
    let first = exchange(&client, server.address, &client_request(0x1111), wait).unwrap();
    assert_eq!(ntp_u64(&first, 32) & 1, 1, "receive timestamps go out odd");
    assert_eq!(ntp_u64(&first, 40) & 1, 0, "transmit timestamps go out even");
    let second = exchange(&client, server.address, &request(ntp_u64(&first, 32), 0x2222, 0x3333), wait).unwrap();
    assert_eq!(ntp_u64(&second, 24), 0x3333, "nothing saved for the first answer: basic mode");
    let third = exchange(&client, server.address, &request(ntp_u64(&second, 32), 0x4444, 0x5555), wait).unwrap();
    assert_eq!(ntp_u64(&third, 24), 0x4444, "interleaved: the origin is the request's receive timestamp");
    // The third answer carries when the second left: the kernel's timestamp, close
    // to the time the second carried (the daemon's prediction of it), well within
    // 1 ms, and before the third request arrived.
    let (second_rx, second_daemon_tx, sent) = (ntp_u64(&second, 32), ntp_u64(&second, 40), ntp_u64(&third, 40));
    let ms = (1u64 << 32) / 1000;
    assert!(sent.abs_diff(second_daemon_tx) < ms, "{second_rx:x} {second_daemon_tx:x} {sent:x}");
    assert!(sent < ntp_u64(&third, 32));
    // A replayed request finds nothing: a basic answer.
    let replay = exchange(&client, server.address, &request(ntp_u64(&second, 32), 0x4444, 0x5555), wait).unwrap();
    assert_eq!(ntp_u64(&replay, 24), 0x5555);

    let stats = server.settled_stats(4);
    assert_eq!(stats.interleaved, 1, "{stats:?}");
    assert!(stats.rx_kernel == 4 && stats.tx_kernel >= 4, "{stats:?}");
    assert!(stats.tx_timestamps_held >= 1, "{stats:?}");
}

#[test]
fn a_basic_answer_carries_the_time_the_kernel_sent_it_within_a_microsecond() {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
    let server = start(&["allow 127.0.0.0/8"], None, 524_288);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    // The yardstick: the kernel's receive timestamp of each answer at the client,
    // a few hundred ns after the server's kernel sent it over loopback.
    setsockopt(&client, sockopt::ReceiveTimestampns, &true).unwrap();
    let ntp_to_unix_ns = |t: u64| {
        ((t >> 32) as i64 - 2_208_988_800) * 1_000_000_000 + (((t & 0xffff_ffff) * 1_000_000_000) >> 32) as i64
    };
    let mut errors_ns: Vec<i64> = (0..60u64)
        .map(|i| {
            client.send_to(&client_request(0x1000 + i), server.address).unwrap();
            let mut buf = [0u8; 128];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut cmsgs = nix::cmsg_space!(nix::sys::time::TimeSpec);
            let msg = recvmsg::<()>(client.as_raw_fd(), &mut iov, Some(&mut cmsgs), MsgFlags::empty()).unwrap();
            let received_ns = msg
                .cmsgs()
                .unwrap()
                .find_map(|c| match c {
                    ControlMessageOwned::ScmTimestampns(ts) => Some(ts.tv_sec() * 1_000_000_000 + ts.tv_nsec()),
                    _ => None,
                })
                .expect("a kernel receive timestamp");
            received_ns - ntp_to_unix_ns(ntp_u64(&buf, 40))
        })
        .skip(10) // the first answers teach the server its send delay
        .collect();
    errors_ns.sort_unstable();
    // A clock read before the send, as chronyd's, is a few µs early (more in a debug build).
    let median_ns = errors_ns[errors_ns.len() / 2];
    assert!(median_ns.abs() < 1_000, "received − handed out: median {median_ns} ns of {errors_ns:?}");
}

#[test]
fn access_rules_decide_who_is_answered() {
    let server = start(&["allow 127.0.0.0/8", "deny 127.0.0.2"], None, 524_288);
    let denied = UdpSocket::bind("127.0.0.2:0").unwrap();
    let allowed = UdpSocket::bind("127.0.0.3:0").unwrap();
    assert_eq!(exchange(&denied, server.address, &client_request(1), Duration::from_millis(300)), None);
    assert!(exchange(&allowed, server.address, &client_request(2), Duration::from_secs(2)).is_some());
    let stats = server.settled_stats(2);
    assert_eq!((stats.denied, stats.answered), (1, 1), "{stats:?}");
}

#[test]
fn a_client_far_above_its_rate_gets_its_share_and_kisses_while_others_are_served() {
    // One answer per 2 s on average, bursts of 4; 1 in 4 limited requests leaks
    // through, and 1 in 2 of the rest gets a RATE kiss-o'-death.
    let limit = RateLimitSettings { interval_log2: 1, burst: 4, leak_log2: 2, kod_log2: Some(1) };
    let server = start(&["allow 127.0.0.0/8"], Some(limit), 524_288);
    let flooder = UdpSocket::bind("127.0.0.4:0").unwrap();
    let polite = UdpSocket::bind("127.0.0.5:0").unwrap();
    flooder.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let sent = 400;
    let (mut answers, mut kisses, mut polite_answers) = (0, 0, 0);
    let mut buf = [0u8; 64];
    for i in 0..sent {
        flooder.send_to(&client_request(i), server.address).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        while let Ok((48, _)) = flooder.recv_from(&mut buf) {
            if buf[1] == 0 {
                assert_eq!(&buf[12..16], b"RATE");
                assert_eq!(buf[0] >> 6, 3, "a kiss-o'-death says leap 3");
                kisses += 1;
            } else {
                answers += 1;
            }
        }
        if i % 100 == 0 {
            // The polite client, once every ~200 ms, is never limited.
            let answered = exchange(&polite, server.address, &client_request(i), Duration::from_secs(1));
            polite_answers += u32::from(answered.is_some());
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    while let Ok((48, _)) = flooder.recv_from(&mut buf) {
        if buf[1] == 0 { kisses += 1 } else { answers += 1 }
    }
    // About 1 s of flooding: the burst, ~1 refill, and 1 in 4 of the rest leaked.
    assert!(answers >= 4, "answers {answers}");
    assert!(answers <= 4 + 2 + sent / 3, "answers {answers} of {sent}: not limited");
    assert!(kisses > sent / 8, "kisses {kisses}");
    assert_eq!(polite_answers, 4, "the polite client was limited");
    let stats = server.settled_stats(sent + 4);
    assert_eq!(stats.kod_sent, kisses, "{stats:?}");
    assert_eq!(stats.rate_limited, sent - answers, "{stats:?}");
}

#[test]
fn a_million_source_addresses_do_not_grow_the_client_log_past_its_limit() {
    if !strata_tests::require_root("million clients") {
        return; // forging source addresses needs a raw socket
    }
    let limit_bytes = 1 << 20;
    let server = start(&["allow 127.0.0.0/8"], None, limit_bytes);
    let before = server.status();
    assert!(before.client_log_bytes <= limit_bytes, "{before:?}");
    let rss_before = rss_kib(server.process.pid());

    let raw = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Raw,
        nix::sys::socket::SockFlag::empty(),
        nix::sys::socket::SockProtocol::Raw,
    )
    .unwrap();
    let target =
        nix::sys::socket::SockaddrIn::from(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, server.address.port()));
    // Each request looks interleaved (origin one of our receive timestamps, receive
    // ≠ transmit), so each answer's transmit time is saved in the map too.
    let mut payload = client_request(1);
    payload[24..32].copy_from_slice(&0xe9b5_a2c1_0000_0001u64.to_be_bytes());
    payload[32..40].copy_from_slice(&5u64.to_be_bytes());
    let mut arrived = 0;
    // Until a million distinct sources have been heard (a few packets may overflow
    // the loopback queue under load, so keep going with new addresses, each once).
    for n in 0..2_000_000u32 {
        if n % 100_000 == 0 && server.status().server.received >= 1_000_000 {
            break;
        }
        if n % 100 == 0 && n > 0 {
            // Pace the flood to what the engine takes in: loopback delivery queues at
            // most netdev_max_backlog packets (requests and replies together), and
            // what overflows never arrives. Wait until caught up or no progress.
            let mut last = u64::MAX;
            while arrived + 10 < u64::from(n) && arrived != last {
                last = arrived;
                std::thread::sleep(Duration::from_micros(200));
                arrived = server.status().server.received;
            }
        }
        // 127.0.0.0/8 minus the first /16: a million distinct loopback sources.
        let source = Ipv4Addr::from(0x7f01_0000 + n);
        let packet = udp_packet(source, 40_000, server.address, &payload);
        // A full socket buffer only drops a packet: the test counts what arrived.
        let _ = nix::sys::socket::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&raw),
            &packet,
            &target,
            nix::sys::socket::MsgFlags::empty(),
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = server.status();
    assert!(after.server.received >= 1_000_000, "only {} requests arrived", after.server.received);
    assert!(after.clients_logged > 10_000, "{after:?}");
    // Every logged client is a 36-byte record inside the fixed table.
    assert!(after.clients_logged * 36 <= after.client_log_bytes, "{after:?}");
    assert!(after.server.tx_timestamps_held > 1000, "the interleaved-mode map was not filled: {after:?}");
    assert_eq!(after.client_log_bytes, before.client_log_bytes, "the client log grew");
    assert!(after.client_log_bytes <= limit_bytes);
    let rss_after = rss_kib(server.process.pid());
    assert!(rss_after < rss_before + 2048, "engine memory grew from {rss_before} KiB to {rss_after} KiB");
}

fn rss_kib(pid: u32) -> u64 {
    strata_tests::proc_status(pid).unwrap()["VmRSS"].trim_end_matches(" kB").trim().parse().unwrap()
}

/// An IPv4/UDP datagram with a forged source (the kernel fills in the IP checksum;
/// a zero UDP checksum means none).
fn udp_packet(source: Ipv4Addr, source_port: u16, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let SocketAddr::V4(to) = to else { panic!("IPv4 only") };
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&source.octets());
    p.extend_from_slice(&to.ip().octets());
    p.extend_from_slice(&source_port.to_be_bytes());
    p.extend_from_slice(&to.port().to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}
