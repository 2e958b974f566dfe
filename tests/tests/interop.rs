//! Real clients accept strata's answers: chronyd (`-Q`: measure only, never set the
//! clock) and ntpsec's ntpdig (which only speaks to port 123, so strata serves on
//! 127.0.0.2:123 / 127.0.0.3:123, bound by the root supervisor).

use std::process::Command;
use std::time::Duration;

use strata_tests::appliance::Appliance;
use strata_tests::{chronyd_query, require_root, require_tool};

/// `ntpdig -j` against `host` (port 123).
fn ntpdig(host: &str) -> (bool, String) {
    let out = Command::new("timeout").args(["20", "ntpdig", "-j", "-t", "2", host]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn field<'a>(json: &'a str, key: &str) -> &'a str {
    let start = json.find(&format!("\"{key}\":")).unwrap_or_else(|| panic!("no {key} in {json}")) + key.len() + 3;
    json[start..].split([',', '}']).next().unwrap().trim_matches('"')
}

#[test]
fn chronyd_takes_strata_for_a_stratum_1_server_within_a_millisecond() {
    if !require_tool("chronyd interop", "chronyd") || !require_root("chronyd interop") {
        return;
    }
    let appliance = Appliance::start("chronyd-interop", "");
    let (ok, output, log) = chronyd_query(appliance.ntp_port);
    assert!(ok, "chronyd -Q failed:\n{output}");
    let wrong_by = strata_tests::chronyd_offset(&output);
    assert!(wrong_by.abs() < 1e-3, "chronyd measured {wrong_by} s against strata on loopback");
    // Every measurement: leap N(ormal), stratum 1, reference id LOCL (4C4F434C).
    let samples: Vec<&str> = log.lines().filter(|l| l.contains(" 127.0.0.1 ")).collect();
    // chronyd -Q stops as soon as it has enough samples (three on loopback).
    assert!(samples.len() >= 2, "measurements:\n{log}");
    for line in samples {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((cols[3], cols[4]), ("N", "1"), "leap and stratum in {line}");
        assert!(line.contains("4C4F434C"), "refid LOCL in {line}");
    }
}

#[test]
fn chronyd_in_interleaved_mode_gets_the_kernels_transmit_timestamps() {
    if !require_tool("chronyd xleave", "chronyd") || !require_root("chronyd xleave") {
        return;
    }
    let appliance = Appliance::start("chronyd-xleave", "");
    let (ok, output, log) = strata_tests::chronyd_query_with(appliance.ntp_port, "iburst xleave maxsamples 6");
    assert!(ok, "chronyd -Q failed:\n{output}");
    assert!(strata_tests::chronyd_offset(&output).abs() < 1e-3, "{output}");
    // The measurements log's last columns: mode and B(asic)/I(nterleaved), then the
    // sources of chronyd's own TX and RX timestamps. From the third exchange on, the
    // server answers in interleaved mode.
    let modes: Vec<&str> =
        log.lines().filter(|l| l.contains(" 127.0.0.1 ")).filter_map(|l| l.split_whitespace().rev().nth(2)).collect();
    assert!(modes.iter().filter(|m| **m == "4I").count() >= 2, "modes {modes:?} in:\n{log}");
    // The operator sees it as chronyc serverstats shows it, once the control
    // plane's view has caught up with the engine's counters.
    let count = |stats: &str, name: &str| -> u64 {
        let line = stats.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name}:\n{stats}"));
        line.rsplit(':').next().unwrap().trim().parse().unwrap()
    };
    let stats = strata_tests::wait_for("serverstats with the interleaved answers", Duration::from_secs(5), || {
        let (ok, stats) = appliance.stratactl(&["serverstats"]);
        assert!(ok, "{stats}");
        (count(&stats, "Interleaved NTP packets") >= 2).then_some(stats)
    });
    let count = |name| count(&stats, name);
    assert!(count("NTP timestamps held") >= 1, "{stats}");
    assert_eq!(count("NTP kernel RX timestamps"), count("NTP packets received"), "{stats}");
    assert!(count("NTP kernel TX timestamps") + 1 >= count("NTP packets answered"), "{stats}");
    assert_eq!(count("NTP hardware TX timestamps"), 0, "{stats}");
}

#[test]
fn hwtimestamp_without_a_nic_clock_is_reported_once_and_chronyd_is_served_in_software() {
    if !require_tool("hwtimestamp fallback", "chronyd") || !require_root("hwtimestamp fallback") {
        return;
    }
    // No NIC here stamps in hardware: the loopback has no PHC, the second name no
    // device; `*` takes every other interface that can (none, silently).
    let port = strata_tests::free_udp_port();
    let server = format!(
        "listen = [\"127.0.0.1:{port}\"]\nlocal-stratum = 1\naccess = [\"allow 127.0.0.0/8\"]\n\
         hwtimestamp = [{{ interface = \"lo\" }}, {{ interface = \"strata-nonic0\" }}, {{ interface = \"*\" }}]\n"
    );
    let mut appliance = Appliance::start_custom("hwtimestamp-fallback", "", Some(&server), None);
    let (ok, output, log) = strata_tests::chronyd_query_with(port, "iburst xleave maxsamples 6");
    assert!(ok, "chronyd -Q failed:\n{output}");
    assert!(strata_tests::chronyd_offset(&output).abs() < 1e-3, "{output}");
    let modes: Vec<&str> =
        log.lines().filter(|l| l.contains(" 127.0.0.1 ")).filter_map(|l| l.split_whitespace().rev().nth(2)).collect();
    assert!(modes.iter().filter(|m| **m == "4I").count() >= 2, "modes {modes:?} in:\n{log}");
    // A re-spawned engine gets the same (empty) set of NIC clocks, and nothing is
    // reported again.
    appliance.kill_and_wait_replacement("ntp");
    let log = appliance.log();
    let lo = "hwtimestamp lo: the NIC has no hardware timestamping with a PHC (see `ethtool -T lo`); served with \
              software timestamps";
    assert_eq!(log.matches(lo).count(), 1, "{log}");
    let missing = "hwtimestamp strata-nonic0: reading its timestamping (ETHTOOL_GET_TS_INFO): No such device";
    assert_eq!(log.matches(missing).count(), 1, "{log}");
    assert!(!log.contains("hardware timestamping on"), "{log}");
}

#[test]
fn ntpdig_takes_strata_for_a_stratum_1_server_within_a_millisecond() {
    if !require_tool("ntpdig interop", "ntpdig") || !require_root("ntpdig interop") {
        return;
    }
    let server = "listen = [\"127.0.0.2:123\"]\nlocal-stratum = 1\naccess = [\"allow 127.0.0.0/8\"]\n";
    let _appliance = Appliance::start_custom("ntpdig-interop", "", Some(server), None);
    let (ok, json) = ntpdig("127.0.0.2");
    assert!(ok, "ntpdig failed: {json}");
    assert_eq!(field(&json, "stratum"), "1", "{json}");
    assert_eq!(field(&json, "leap"), "no-leap", "{json}");
    let offset: f64 = field(&json, "offset").parse().unwrap();
    assert!(offset.abs() < 1e-3, "ntpdig measured {offset} s against strata on loopback");
}

#[test]
fn an_unsynchronised_strata_is_refused_by_both_clients() {
    if !require_tool("unsynchronised", "chronyd") || !require_tool("unsynchronised", "ntpdig") {
        return;
    }
    if !require_root("unsynchronised") {
        return;
    }
    // No local stratum and no source: leap 3, stratum 0 in every answer.
    let port = strata_tests::free_udp_port();
    let server = format!("listen = [\"127.0.0.3:123\", \"127.0.0.1:{port}\"]\naccess = [\"allow 127.0.0.0/8\"]\n");
    let _appliance = Appliance::start_custom("unsync-interop", "", Some(&server), None);

    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
    let mut request = [0u8; 48];
    request[0] = 0x23;
    socket.send_to(&request, ("127.0.0.1", port)).unwrap();
    let mut reply = [0u8; 48];
    socket.recv_from(&mut reply).expect("an unsynchronised server still answers");
    assert_eq!((reply[0] >> 6, reply[1]), (3, 0), "leap 3, stratum 0");

    let (ok, text) = ntpdig("127.0.0.3");
    assert!(!ok, "ntpdig accepted an unsynchronised server: {text}");
    assert!(text.contains("stratum 0"), "{text}");

    let (ok, output, log) = chronyd_query(port);
    assert!(!ok, "chronyd accepted an unsynchronised server:\n{output}");
    assert!(output.contains("No suitable source for synchronisation"), "{output}");
    assert!(!log.lines().any(|l| l.contains(" 127.0.0.1 ")), "chronyd took a measurement:\n{log}");
}
