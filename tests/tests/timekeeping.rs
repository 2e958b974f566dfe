//! Keeping time over real sockets: strata polls upstream servers, selects, and
//! disciplines a simulated clock through the adjuster.

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_proto::clock_model::{ClockModel, RECORD_LEN};
use strata_tests::appliance::Appliance;
use strata_tests::{TestNtpServer, free_udp_port, require_root, require_tool, scratch_dir};

/// One NTP exchange with strata's server; (offset of strata against this machine,
/// stratum, reference id).
fn ask(port: u16) -> Option<(f64, u8, [u8; 4])> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut request = [0u8; 48];
    request[0] = 0x23;
    let t1 = strata_tests::ntp_now(0.0);
    request[40..48].copy_from_slice(&t1.to_be_bytes());
    socket.send_to(&request, ("127.0.0.1", port)).unwrap();
    let mut reply = [0u8; 48];
    socket.recv_from(&mut reply).ok()?;
    let t4 = strata_tests::ntp_now(0.0);
    let ts = |i: usize| u64::from_be_bytes(reply[i..i + 8].try_into().unwrap());
    let diff = |a: u64, b: u64| (a.wrapping_sub(b) as i64) as f64 / 4_294_967_296.0;
    let offset = (diff(ts(32), t1) + diff(ts(40), t4)) / 2.0;
    Some((offset, reply[1], reply[12..16].try_into().unwrap()))
}

#[test]
fn a_falseticker_200_ms_off_is_never_selected() {
    if !require_root("falseticker") {
        return;
    }
    let good1 = TestNtpServer::start("127.0.0.11:0", 0.0);
    let good2 = TestNtpServer::start("127.0.0.12:0", 0.0);
    let bad = TestNtpServer::start("127.0.0.13:0", 0.2);
    let port = free_udp_port();
    let mut server = format!("listen = [\"127.0.0.1:{port}\"]\naccess = [\"allow 127.0.0.0/8\"]\n");
    let mut upstreams = String::new();
    for s in [&good1, &good2, &bad] {
        upstreams +=
            &format!("\n[[upstream]]\naddress = \"{}\"\niburst = true\nminpoll = -2\nmaxpoll = 0\n", s.address);
    }
    server += &upstreams;
    // Backend none: measure and serve, never adjust (the clock here is the machine's).
    let _appliance = Appliance::start_with_clock("falseticker", Some(&server), "backend = \"none\"");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut synchronised = 0;
    while Instant::now() < deadline {
        if let Some((offset, stratum, refid)) = ask(port) {
            assert_ne!(refid, [127, 0, 0, 13], "the falseticker was selected");
            if stratum == 2 {
                assert!(refid == [127, 0, 0, 11] || refid == [127, 0, 0, 12], "refid {refid:?}");
                assert!(offset.abs() < 0.01, "served time {offset} s off");
                synchronised += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(synchronised > 50, "strata synchronised to the good servers only {synchronised} times");
}

struct Chronyd(Child);
impl Drop for Chronyd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// chronyd as an upstream stratum-1 server on 127.0.0.1:`port` (`-x`: never touches
/// this machine's clock).
fn chronyd_upstream(port: u16) -> Chronyd {
    let dir = scratch_dir("chronyd-upstream");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let conf = dir.join("chrony.conf");
    std::fs::write(
        &conf,
        format!(
            "local stratum 1\nallow 127.0.0.1\nport {port}\nbindaddress 127.0.0.1\ncmdport 0\n\
             bindcmdaddress {0}/chronyd.sock\npidfile {0}/chronyd.pid\n",
            dir.display()
        ),
    )
    .unwrap();
    let child =
        Command::new("chronyd").args(["-x", "-d", "-f"]).arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
    Chronyd(child.expect("start chronyd"))
}

/// `stratactl ntpdata` of the appliance's only server, once it says `wanted`.
fn ntpdata_once(appliance: &Appliance, wanted: &[&str]) -> String {
    strata_tests::wait_for("ntpdata", Duration::from_secs(20), || {
        let (ok, said) = appliance.stratactl(&["ntpdata"]);
        (ok && wanted.iter().all(|w| said.contains(w))).then_some(said)
    })
}

#[test]
fn with_xleave_strata_polls_chronyd_in_interleaved_mode() {
    if !require_tool("xleave client", "chronyd") {
        return;
    }
    if !require_root("xleave client") {
        return;
    }
    let upstream_port = free_udp_port();
    let _chronyd = chronyd_upstream(upstream_port);
    let port = free_udp_port();
    let server = format!(
        "listen = [\"127.0.0.1:{port}\"]\naccess = [\"allow 127.0.0.0/8\"]\n\n\
         [[upstream]]\naddress = \"127.0.0.1:{upstream_port}\"\niburst = true\nminpoll = -2\nmaxpoll = -2\nxleave = true\n"
    );
    let appliance = Appliance::start_custom("xleave-client", "", Some(&server), None);
    // strata's view: the samples are interleaved, both timestamps the kernel's.
    let ntpdata =
        ntpdata_once(&appliance, &["Interleaved     : Yes", "TX timestamping : Kernel", "RX timestamping : Kernel"]);
    // The same clock on both sides, over loopback: the offset is the error.
    let (_, sources) = appliance.stratactl(&["--json", "sources"]);
    let sources: serde_json::Value = serde_json::from_str(&sources).unwrap();
    let offset = sources["sources"][0]["last_offset_s"].as_f64().unwrap();
    assert!(offset.abs() < 100e-6, "last offset {offset} s:\n{ntpdata}");
    // Only chronyd's interleaved replies echo the receive cookie: "Yes" is its doing.
}

#[test]
fn a_server_added_with_xleave_is_polled_in_interleaved_mode_by_another_strata() {
    if !require_root("xleave against strata") {
        return;
    }
    let upstream = Appliance::start("xleave-upstream", "");
    let port = free_udp_port();
    let server = format!("listen = [\"127.0.0.1:{port}\"]\naccess = [\"allow 127.0.0.0/8\"]\n");
    let appliance = Appliance::start_custom("xleave-downstream", "", Some(&server), None);
    // Added by an operator: the engine opens this socket inside its sandbox.
    let address = format!("127.0.0.1:{}", upstream.ntp_port);
    let args = ["add", "server", &address, "--xleave", "--iburst", "--minpoll", "-2", "--maxpoll", "-2"];
    let (ok, out) = appliance.stratactl(&args);
    assert!(ok, "{out}");
    ntpdata_once(&appliance, &["Interleaved     : Yes", "TX timestamping : Kernel"]);
    let (ok, stats) = upstream.stratactl(&["serverstats"]);
    assert!(ok, "{stats}");
    let line = stats.lines().find(|l| l.starts_with("Interleaved NTP packets")).unwrap();
    let interleaved: u64 = line.rsplit(':').next().unwrap().trim().parse().unwrap();
    assert!(interleaved >= 1, "{stats}");
}

#[test]
fn a_clock_half_a_second_and_30_ppm_off_is_stepped_once_then_held_within_a_millisecond() {
    if !require_tool("closed loop", "chronyd") || !require_root("closed loop") {
        return;
    }
    let upstream_port = free_udp_port();
    let _chronyd = chronyd_upstream(upstream_port);
    let dir = scratch_dir("closed-loop");
    let model_path = dir.join("clock-model");
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let start = ClockModel {
        offset_s: 0.5,
        frequency_ppm: 30.0,
        reference_ns: now_ns,
        slew_end_ns: now_ns,
        ..ClockModel::default()
    };
    std::fs::write(&model_path, start.encode(1)).unwrap();

    let port = free_udp_port();
    let server = format!(
        "listen = [\"127.0.0.1:{port}\"]\naccess = [\"allow 127.0.0.0/8\"]\n\n\
         [[upstream]]\naddress = \"127.0.0.1:{upstream_port}\"\niburst = true\nminpoll = -2\nmaxpoll = -1\n"
    );
    let clock =
        format!("backend = \"simulated:{}\"\nmakestep = {{ threshold = 0.1, limit = 3 }}", model_path.display());
    let mut appliance = Appliance::start_with_clock("closed-loop", Some(&server), &clock);
    appliance.wait_until("one step", Duration::from_secs(30), |s| s.clock_steps_used == 1);

    // Converged: strata's served time within 1 ms of this machine's, for 10 s in a row.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut good_since: Option<Instant> = None;
    loop {
        assert!(Instant::now() < deadline, "did not converge; model {:?}", read_model(&model_path));
        match ask(port) {
            Some((offset, 2, _)) if offset.abs() < 1e-3 => {
                if good_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(10) {
                    break;
                }
            }
            _ => good_since = None,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(appliance.status().clock_steps_used, 1, "stepped more than once");
    // And a real client agrees: chronyd -Q measures strata against this machine.
    let (ok, output, _) = strata_tests::chronyd_query(port);
    assert!(ok, "chronyd -Q failed:\n{output}");
    let wrong_by = strata_tests::chronyd_offset(&output);
    assert!(wrong_by.abs() < 1e-3, "chronyd -Q sees strata {wrong_by} s off");
    let model = read_model(&model_path);
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    assert!(model.offset_at(now_ns).abs() < 1e-3, "{model:?}");
    assert!((model.frequency_ppm + model.correction_ppm).abs() < 2.0, "frequency error left: {model:?}");
}

fn read_model(path: &std::path::Path) -> ClockModel {
    let bytes = std::fs::read(path).unwrap();
    ClockModel::decode(&bytes[..RECORD_LEN]).unwrap().1
}

#[test]
fn the_driftfile_survives_kill_9_while_it_is_written() {
    if !require_root("driftfile") {
        return;
    }
    let upstream = TestNtpServer::start("127.0.0.21:0", 0.0);
    let dir = scratch_dir("driftfile");
    let model_path = dir.join("clock-model");
    let drift = dir.join("drift");
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let start = ClockModel { frequency_ppm: 20.0, reference_ns: now_ns, slew_end_ns: now_ns, ..ClockModel::default() };
    std::fs::write(&model_path, start.encode(1)).unwrap();
    let server = format!(
        "listen = [\"127.0.0.1:{}\"]\naccess = [\"allow 127.0.0.0/8\"]\n\n\
         [[upstream]]\naddress = \"{}\"\niburst = true\nminpoll = -4\nmaxpoll = -4\n",
        free_udp_port(),
        upstream.address
    );
    let clock = format!("backend = \"simulated:{}\"\ndriftfile = \"{}\"", model_path.display(), drift.display());
    let mut rewrites = 0;
    for round in 0..8u64 {
        let appliance = Appliance::start_with_clock("driftfile", Some(&server), &clock);
        if round > 0 {
            // The previous round's file was read back at start.
            assert!(appliance.log().contains("frequency from the driftfile"), "{}", appliance.log());
        }
        let before = std::fs::read_to_string(&drift).ok();
        // Let the engine report a few times (every 1/16 s), then kill the supervisor
        // at an arbitrary moment: its children die with it.
        std::thread::sleep(Duration::from_millis(1500 + 37 * round));
        drop(appliance);
        let after = std::fs::read_to_string(&drift).expect("a driftfile was written");
        strata_sync::discipline::drift_file::parse(&after)
            .unwrap_or_else(|e| panic!("round {round}: driftfile {after:?} does not parse: {e:?}"));
        rewrites += usize::from(before.as_deref() != Some(after.as_str()));
    }
    assert!(rewrites >= 4, "the driftfile was rewritten in only {rewrites} of 8 rounds");
}

#[test]
fn an_upstream_given_by_name_is_resolved_and_polled() {
    if !require_root("name resolution") {
        return;
    }
    let upstream = TestNtpServer::start("127.0.0.1:0", 0.0);
    let port = free_udp_port();
    // "localhost" comes from /etc/hosts: no DNS needed, the same resolver path.
    let server = format!(
        "listen = [\"127.0.0.1:{port}\"]\naccess = [\"allow 127.0.0.0/8\"]\n\n\
         [[upstream]]\naddress = \"localhost:{}\"\npool = true\nmaxsources = 2\niburst = true\nminpoll = -2\nmaxpoll = 0\n",
        upstream.address.port()
    );
    let appliance = Appliance::start_with_clock("resolve", Some(&server), "backend = \"none\"");
    assert!(appliance.log().contains("resolved"), "{}", appliance.log());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some((_, 2, refid)) = ask(port) {
            assert_eq!(refid, [127, 0, 0, 1]);
            break;
        }
        assert!(Instant::now() < deadline, "never synchronised to localhost:\n{}", appliance.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn statistics_logs_have_headers_stable_columns_and_survive_logrotate() {
    if !require_root("statistics logs") {
        return;
    }
    let upstream = TestNtpServer::start("127.0.0.31:0", 0.0);
    let logs = scratch_dir("statistics-logs").join("log");
    let server = format!(
        "listen = [\"127.0.0.1:{}\"]\naccess = [\"allow 127.0.0.0/8\"]\n\n\
         [[upstream]]\naddress = \"{}\"\niburst = true\nminpoll = -3\nmaxpoll = -3\n\n\
         [logs]\ndir = \"{}\"\nkinds = [\"measurements\", \"statistics\", \"tracking\"]\n",
        free_udp_port(),
        upstream.address,
        logs.display()
    );
    let _appliance = Appliance::start_with_clock("statistics-logs", Some(&server), "backend = \"none\"");
    let lines = |name: &str| -> Vec<String> {
        std::fs::read_to_string(logs.join(name)).unwrap_or_default().lines().map(String::from).collect()
    };
    strata_tests::wait_for("log lines", Duration::from_secs(15), || {
        ["measurements.log", "statistics.log", "tracking.log"].iter().all(|f| lines(f).len() >= 6).then_some(())
    });
    for (file, columns) in [("measurements.log", 11), ("statistics.log", 7), ("tracking.log", 10)] {
        let l = lines(file);
        assert!(l[0].starts_with("====") && l[1].contains("Date (UTC) Time") && l[2].starts_with("===="), "{file}");
        for line in &l[3..] {
            assert_eq!(line.split_whitespace().count(), columns, "{file}: {line}");
            assert!(line.contains("127.0.0.31"), "{file}: {line}");
        }
    }
    // logrotate renames the file; the next records go to a new one with a header.
    std::fs::rename(logs.join("measurements.log"), logs.join("measurements.log.1")).unwrap();
    strata_tests::wait_for("a new measurements.log", Duration::from_secs(10), || {
        (lines("measurements.log").len() >= 4).then_some(())
    });
    assert!(lines("measurements.log")[1].contains("Date (UTC) Time"));
    let rotated = lines("measurements.log.1");
    assert!(rotated.len() >= 6 && rotated[3..].iter().all(|l| l.split_whitespace().count() == 11));
}
