//! Under systemd (`Type=notify`, `WatchdogSec=`): READY=1 once every process is up
//! and linked, WATCHDOG=1 while the supervisor runs, STOPPING=1 on shutdown.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use strata_tests::appliance::Appliance;
use strata_tests::{require_root, scratch_dir};

#[test]
fn ready_watchdog_and_stopping_reach_the_notify_socket() {
    if !require_root("sd_notify") {
        return;
    }
    let socket_path = scratch_dir("notify").join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let env = [("NOTIFY_SOCKET", socket_path.display().to_string()), ("WATCHDOG_USEC", "200000".to_string())];
    let mut appliance = Appliance::start_with_env("notify", &env);
    let mut buf = [0u8; 512];
    let mut messages = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        if let Ok(n) = systemd.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    assert!(messages[0].starts_with("READY=1\n"), "{messages:?}");
    assert_eq!(messages.iter().filter(|m| m.starts_with("READY=1")).count(), 1, "{messages:?}");
    // Every 100 ms (half of 200 ms) for about 2 s.
    let pings = messages.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!((10..=25).contains(&pings), "{pings} watchdog pings in 2 s: {messages:?}");
    let (code, _) = appliance.stop();
    assert_eq!(code, Some(0));
    let mut last = String::new();
    while let Ok(n) = systemd.recv(&mut buf) {
        last = String::from_utf8_lossy(&buf[..n]).to_string();
        if last == "STOPPING=1" {
            break;
        }
    }
    assert_eq!(last, "STOPPING=1");
}
