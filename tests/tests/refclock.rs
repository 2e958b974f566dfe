//! Reference clocks: a SOCK feed (as gpsd writes it) makes strata a stratum-1
//! server; garbage is refused; losing the feed fails over to NTP and back.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use strata_tests::appliance::Appliance;
use strata_tests::{SockFeeder, TestNtpServer, free_udp_port, require_root, scratch_dir, wait_for};

/// (stratum, reference id) of strata's answer.
fn ask(port: u16) -> Option<(u8, [u8; 4])> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut request = [0u8; 48];
    request[0] = 0x23;
    socket.send_to(&request, ("127.0.0.1", port)).unwrap();
    let mut reply = [0u8; 48];
    socket.recv_from(&mut reply).ok()?;
    Some((reply[1], reply[12..16].try_into().unwrap()))
}

fn wait_for_answer(port: u16, what: &str, timeout: Duration, want: impl Fn(u8, [u8; 4]) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((stratum, refid)) = ask(port)
            && want(stratum, refid)
        {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last answer {:?}", ask(port));
        std::thread::sleep(Duration::from_millis(100));
    }
}

const GPS: [u8; 4] = *b"GPS\0";

#[test]
fn a_sock_feed_makes_strata_stratum_1_and_its_offset_is_tracked() {
    if !require_root("SOCK refclock") {
        return;
    }
    let dir = scratch_dir("sock-refclock");
    let sock = dir.join("gps0.sock");
    let logs = dir.join("log");
    let port = free_udp_port();
    let server = format!(
        "listen = [\"127.0.0.1:{port}\"]\naccess = [\"allow 127.0.0.0/8\"]\n\n\
         [[refclock]]\npoll = 0\ndriver = \"sock:{}\"\nrefid = \"GPS\"\n\n\
         [logs]\ndir = \"{}\"\nkinds = [\"tracking\"]\n",
        sock.display(),
        logs.display()
    );
    let _appliance = Appliance::start_with_clock("sock-refclock", Some(&server), "backend = \"none\"");
    let _feed = SockFeeder::start(&sock, 0.000_25, Duration::from_millis(200));
    wait_for_answer(port, "stratum 1 from the refclock", Duration::from_secs(10), |s, r| s == 1 && r == GPS);
    // The offset strata measured is the feed's (no jitter in this feed); the log has
    // chrony's sign, local − reference: the feed's reference is 250 µs ahead.
    std::thread::sleep(Duration::from_secs(1));
    let tracking = std::fs::read_to_string(logs.join("tracking.log")).unwrap();
    let last = tracking.lines().last().unwrap();
    let offset: f64 = last.split_whitespace().nth(6).unwrap().parse().unwrap();
    assert!((offset + 0.000_25).abs() < 2e-6, "tracking says {offset} s: {last}");
}

#[test]
fn a_garbage_feed_is_refused_and_never_selected() {
    if !require_root("garbage SOCK feed") {
        return;
    }
    let dir = scratch_dir("sock-garbage");
    let sock = dir.join("gps0.sock");
    let port = free_udp_port();
    let server = format!(
        "listen = [\"127.0.0.1:{port}\"]\naccess = [\"allow 127.0.0.0/8\"]\n\n\
         [[refclock]]\npoll = 0\ndriver = \"sock:{}\"\n",
        sock.display()
    );
    let _appliance = Appliance::start_with_clock("sock-garbage", Some(&server), "backend = \"none\"");
    let socket = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let now = std::time::SystemTime::now();
        let wrong_magic = strata_tests::sock_sample(now, 0.0, 0x1234_5678);
        let mut absurd = strata_tests::sock_sample(now, 0.0, strata_tests::SOCK_MAGIC);
        absurd[16..24].copy_from_slice(&f64::NAN.to_ne_bytes());
        for datagram in [&wrong_magic[..], &absurd[..], &wrong_magic[..20], &[0u8; 64][..]] {
            let _ = socket.send_to(datagram, &sock);
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(ask(port).map(|a| a.0), Some(0), "strata took a garbage feed for a reference");
    }
}

#[test]
fn losing_the_feed_fails_over_to_ntp_and_back_without_a_step() {
    if !require_root("refclock failover") {
        return;
    }
    let dir = scratch_dir("failover");
    let sock = dir.join("gps0.sock");
    let model = dir.join("clock-model");
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let start =
        strata_proto::clock_model::ClockModel { reference_ns: now_ns, slew_end_ns: now_ns, ..Default::default() };
    std::fs::write(&model, start.encode(1)).unwrap();
    let upstream = TestNtpServer::start("127.0.0.41:0", 0.0);
    let port = free_udp_port();
    let server = format!(
        "listen = [\"127.0.0.1:{port}\"]\naccess = [\"allow 127.0.0.0/8\"]\n\n\
         [[upstream]]\naddress = \"{}\"\niburst = true\nminpoll = -2\nmaxpoll = -1\n\n\
         [[refclock]]\npoll = 0\ndriver = \"sock:{}\"\nrefid = \"GPS\"\nprefer = true\n",
        upstream.address,
        sock.display()
    );
    let clock = format!("backend = \"simulated:{}\"\nmakestep = {{ threshold = 0.1, limit = 3 }}", model.display());
    let appliance = Appliance::start_with_clock("failover", Some(&server), &clock);
    let feed = SockFeeder::start(&sock, 0.000_1, Duration::from_millis(250));
    wait_for_answer(port, "the refclock selected", Duration::from_secs(15), |s, r| s == 1 && r == GPS);

    feed.pause(true);
    let stopped = Instant::now();
    wait_for_answer(port, "failover to NTP", Duration::from_secs(20), |s, r| s == 2 && r == [127, 0, 0, 41]);
    eprintln!("failed over {:?} after the feed stopped", stopped.elapsed());

    feed.pause(false);
    let resumed = Instant::now();
    wait_for_answer(port, "back to the refclock", Duration::from_secs(20), |s, r| s == 1 && r == GPS);
    // Hysteresis: not before the returning feed has proven itself for 4 samples.
    assert!(resumed.elapsed() >= Duration::from_millis(700), "switched back after {:?}", resumed.elapsed());
    assert_eq!(appliance.status().clock_steps_used, 0, "a switch stepped the clock");

    // Each switch is an event operators see: in the log, in the API, in the metrics.
    let log = appliance.log();
    assert!(log.contains("selected a new system peer") && log.contains(&format!("to={}", upstream.address)), "{log}");
    let failovers = wait_for("both switches in the API", Duration::from_secs(5), || {
        let out = std::process::Command::new(strata_tests::bin_dir().join("stratactl"))
            .arg("--socket")
            .arg(appliance.dir.join("run/control.sock"))
            .args(["--json", "refclocks"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let list: Vec<(String, String)> = v["failovers"]
            .as_array()?
            .iter()
            .map(|f| (f["from"].as_str().unwrap_or("").to_string(), f["to"].as_str().unwrap_or("").to_string()))
            .collect();
        let ntp = upstream.address.to_string();
        let both = list.contains(&("GPS".into(), ntp.clone())) && list.contains(&(ntp, "GPS".into()));
        both.then_some(list)
    });
    eprintln!("switches of the system peer: {failovers:?}");
}

/// An NTP SHM segment image (struct shmTime, 96 bytes on x86_64) as gpsd writes it:
/// mode 1, the given count, reference = receive time + `offset_s`, valid.
fn shm_image(count: i32, offset_s: f64) -> [u8; 96] {
    let receive = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let reference = receive + Duration::from_secs_f64(offset_s);
    let mut b = [0u8; 96];
    let put32 = |b: &mut [u8; 96], at: usize, v: i32| b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    put32(&mut b, 0, 1); // mode
    put32(&mut b, 4, count);
    b[8..16].copy_from_slice(&(reference.as_secs() as i64).to_ne_bytes());
    put32(&mut b, 16, reference.subsec_micros() as i32);
    b[24..32].copy_from_slice(&(receive.as_secs() as i64).to_ne_bytes());
    put32(&mut b, 32, receive.subsec_micros() as i32);
    put32(&mut b, 40, -20); // precision
    put32(&mut b, 48, 1); // valid
    b[52..56].copy_from_slice(&reference.subsec_nanos().to_ne_bytes());
    b[56..60].copy_from_slice(&receive.subsec_nanos().to_ne_bytes());
    b
}

/// gpsd's segment of `unit` (0666, as gpsd makes it for units ≥ 2), created anew: one
/// left by an earlier run that failed half-way is removed first.
fn fresh_segment(unit: u8) -> strata_sys::ShmSegment {
    let key = 0x4e54_5030 + i32::from(unit);
    if let Ok(stale) = strata_sys::ShmSegment::attach(key) {
        let _ = stale.remove();
    }
    strata_sys::ShmSegment::create(key, 0o666).expect("create the SHM segment")
}

#[test]
fn an_shm_feed_makes_strata_stratum_1() {
    if !require_root("SHM refclock") {
        return;
    }
    // Play gpsd: create the segment of unit 217 (0666, as gpsd does for units ≥ 2).
    let unit = 217u8;
    let segment = fresh_segment(unit);
    segment.write(&shm_image(1, 0.000_3));
    let port = free_udp_port();
    let server = format!(
        "listen = [\"127.0.0.1:{port}\"]\naccess = [\"allow 127.0.0.0/8\"]\n\n\
         [[refclock]]\npoll = 0\ndriver = \"shm:{unit}\"\nrefid = \"GPS\"\n"
    );
    let appliance = Appliance::start_with_clock("shm-refclock", Some(&server), "backend = \"none\"");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut count = 2;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                segment.write(&shm_image(count, 0.000_3));
                count += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
            segment.remove().unwrap();
        })
    };
    let result = std::panic::catch_unwind(|| {
        wait_for_answer(port, "stratum 1 from the SHM refclock", Duration::from_secs(15), |s, r| s == 1 && r == GPS);
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(appliance.log().contains("SHM refclock attached"), "{}", appliance.log());
    result.unwrap();
}

#[test]
fn chronyd_reading_the_same_feed_reports_the_same_offset() {
    if !strata_tests::require_tool("chronyd cross-check", "chronyd") || !require_root("chronyd cross-check") {
        return;
    }
    let dir = scratch_dir("sock-chronyd");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let strata_sock = dir.join("strata.sock");
    let chrony_sock = dir.join("chrony.sock");
    let logs = dir.join("log");
    let port = free_udp_port();
    let server = format!(
        "listen = [\"127.0.0.1:{port}\"]\naccess = [\"allow 127.0.0.0/8\"]\n\n\
         [[refclock]]\npoll = 0\ndriver = \"sock:{}\"\n\n[logs]\ndir = \"{}\"\nkinds = [\"tracking\"]\n",
        strata_sock.display(),
        logs.display()
    );
    let _appliance = Appliance::start_with_clock("sock-chronyd", Some(&server), "backend = \"none\"");
    // chronyd -x: measures, never touches this machine's clock; no NTP port.
    let conf = dir.join("chrony.conf");
    std::fs::write(
        &conf,
        format!(
            "refclock SOCK {} refid GPS poll 0\nlogdir {1}\nlog refclocks\nport 0\ncmdport 0\n\
             bindcmdaddress {1}/chronyd.cmd\npidfile {1}/chronyd.pid\n",
            chrony_sock.display(),
            dir.display()
        ),
    )
    .unwrap();
    let mut chronyd = std::process::Command::new("chronyd")
        .args(["-x", "-d", "-f"])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    strata_tests::wait_for("chronyd's socket", Duration::from_secs(5), || chrony_sock.exists().then_some(()));
    let feed = SockFeeder::start_to(vec![strata_sock, chrony_sock], 0.000_37, Duration::from_millis(200));
    wait_for_answer(port, "stratum 1 from the refclock", Duration::from_secs(10), |s, r| s == 1 && r == GPS);
    std::thread::sleep(Duration::from_secs(2));
    drop(feed);
    let _ = chronyd.kill();
    let _ = chronyd.wait();

    let last = |text: &str, column: usize| -> f64 {
        let line = text.lines().rev().find(|l| l.starts_with("20")).unwrap_or_else(|| panic!("no data in\n{text}"));
        line.split_whitespace().nth(column).unwrap().parse().unwrap()
    };
    // chronyd's raw offset of its newest sample line: its cooked offset drops to
    // ~0 once chronyd -x has made its first (virtual) clock update, so which line
    // comes last would decide the test.
    let refclocks = std::fs::read_to_string(dir.join("refclocks.log")).unwrap();
    let samples: String = refclocks
        .lines()
        .filter(|l| l.split_whitespace().nth(3).is_some_and(|fix| fix != "-"))
        .collect::<Vec<_>>()
        .join("\n");
    let chrony = last(&samples, 6);
    let strata = last(&std::fs::read_to_string(logs.join("tracking.log")).unwrap(), 6);
    assert!((chrony - 0.000_37).abs() < 2e-6, "chronyd's raw offset {chrony}");
    // refclocks.log has reference − local, tracking.log (chrony's and strata's) the
    // local clock's offset, local − reference.
    assert!((-strata - chrony).abs() < 2e-6, "strata {strata} s, chronyd {chrony} s");
}

#[test]
fn a_phc_refclock_that_is_no_phc_is_read_and_refused_without_killing_the_reader() {
    if !require_root("PHC refclock") {
        return;
    }
    // No /dev/ptp* here: /dev/null answers the PTP ioctls with ENOTTY. The reader's
    // filter lets exactly those requests through, so it must survive them.
    let port = free_udp_port();
    let server = format!(
        "listen = [\"127.0.0.1:{port}\"]\naccess = [\"allow 127.0.0.0/8\"]\n\n\
         [[refclock]]\npoll = 0\ndriver = \"phc:/dev/null\"\nrefid = \"PHC\"\n"
    );
    let appliance = Appliance::start_with_clock("phc-null", Some(&server), "backend = \"none\"");
    let reader = appliance.pid_of("refclock");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(appliance.pid_of("refclock"), reader, "the reader was re-spawned:\n{}", appliance.log());
    assert_eq!(ask(port).map(|a| a.0), Some(0), "a PHC that is none was taken for a reference");
    assert!(appliance.log().contains("PHC refclock"), "{}", appliance.log());
}

/// An SHM image with explicit fields: mode 1, `count`, `valid`, reference and
/// receive times (seconds, nanoseconds) — the microseconds agree with the ns.
fn shm_raw(count: i32, valid: i32, clock: (i64, u32), receive: (i64, u32)) -> [u8; 96] {
    let mut b = [0u8; 96];
    let put32 = |b: &mut [u8; 96], at: usize, v: i32| b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    put32(&mut b, 0, 1);
    put32(&mut b, 4, count);
    b[8..16].copy_from_slice(&clock.0.to_ne_bytes());
    put32(&mut b, 16, (clock.1 / 1000).min(999_999) as i32);
    b[24..32].copy_from_slice(&receive.0.to_ne_bytes());
    put32(&mut b, 32, (receive.1 / 1000).min(999_999) as i32);
    put32(&mut b, 40, -20);
    put32(&mut b, 48, valid);
    b[52..56].copy_from_slice(&clock.1.to_ne_bytes());
    b[56..60].copy_from_slice(&receive.1.to_ne_bytes());
    b
}

fn now_parts() -> (i64, u32) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    (now.as_secs() as i64, now.subsec_nanos())
}

#[test]
fn unpublished_and_absurd_shm_samples_are_rejected_counted_and_never_selected() {
    if !require_root("SHM garbage") {
        return;
    }
    let unit = 219u8;
    let segment = fresh_segment(unit);
    segment.write(&[0u8; 96]);
    let port = free_udp_port();
    // Read every 250 ms; a poll needs 4 good readings.
    let server = format!(
        "listen = [\"127.0.0.1:{port}\"]\naccess = [\"allow 127.0.0.0/8\"]\n\n\
         [[refclock]]\npoll = 0\ndpoll = -2\ndriver = \"shm:{unit}\"\nrefid = \"GPS\"\n"
    );
    let appliance = Appliance::start_with_clock("shm-garbage", Some(&server), "backend = \"none\"");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let never_selected = |what: &str, feed: &mut dyn FnMut()| {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                feed();
                std::thread::sleep(Duration::from_millis(50));
                assert_eq!(ask(port).map(|a| a.0), Some(0), "strata took {what} for a reference");
            }
        };
        let mut count = 1;
        // A good sample the writer has not published (valid = 0): never read.
        never_selected("an unpublished sample", &mut || {
            count += 1;
            segment.write(&shm_raw(count, 0, now_parts(), now_parts()));
        });
        // Nanoseconds ≥ 10⁹.
        never_selected("nanoseconds ≥ 1e9", &mut || {
            count += 1;
            let (s, _) = now_parts();
            segment.write(&shm_raw(count, 1, (s, 1_000_000_000), now_parts()));
        });
        // Both times in 1970 (their difference is sane; their age is not).
        never_selected("a sample from 1970", &mut || {
            count += 1;
            segment.write(&shm_raw(count, 1, (1000, 0), (1000, 500)));
        });
        // A reference three years ahead of the receive time.
        never_selected("an offset of years", &mut || {
            count += 1;
            let (s, ns) = now_parts();
            segment.write(&shm_raw(count, 1, (s + 3 * 365 * 86_400, ns), (s, ns)));
        });
        // (A writer changing `count` between the reader's two copies cannot be
        // timed from here: they are ~100 ns apart. shm.rs tests that path.)

        let log = appliance.log();
        let rejected = |why: &str| log.lines().filter(|l| l.contains("sample rejected") && l.contains(why)).count();
        assert!(rejected("Nanoseconds") >= 5, "{log}");
        assert!(rejected("s from now") >= 5, "1970 not refused as stale:\n{log}");
        assert!(rejected("Difference") >= 5, "{log}");
        // What the reader rejected, nothing else: the unpublished samples were not read.
        let total = log.lines().filter(|l| l.contains("sample rejected")).count();
        assert!(total <= 3 * 3 * 4 + 4, "{total} rejected in 9 s of 4 reads/s");

        // The same segment with good samples: the reader was alive all along.
        let count = std::cell::Cell::new(count);
        wait_for_answer(port, "stratum 1 from good samples", Duration::from_secs(10), |stratum, refid| {
            count.set(count.get() + 1);
            let (s, ns) = now_parts();
            segment.write(&shm_raw(count.get(), 1, (s, ns), (s, ns)));
            stratum == 1 && refid == GPS
        });
    }));
    segment.remove().unwrap();
    result.unwrap();
}
