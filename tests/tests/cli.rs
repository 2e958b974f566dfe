//! What an operator sees from the `strata` command itself.

use std::process::Command;

use strata_tests::appliance::{Appliance, CHILDREN};
use strata_tests::{bin_dir, ensure_built, proc_status, scratch_dir};

fn strata(args: &[&str]) -> (Option<i32>, String, String) {
    ensure_built();
    let out = Command::new(bin_dir().join("strata")).args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn check_config_accepts_the_demo_and_points_at_a_bad_key() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/demo.toml");
    let (code, out, _) = strata(&["check-config", demo]);
    assert_eq!(code, Some(0));
    assert!(out.ends_with(": ok\n"), "{out}");

    let dir = scratch_dir("check-config");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten = [\"127.0.0.1:123\"]\n\n[clock]\n  backend = \"none\"\n  slew = 1\n")
        .unwrap();
    let (code, _, err) = strata(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with(&format!("{}:6:3: unknown field `slew`", bad.display())), "{err}");
}

#[test]
fn run_with_a_bad_config_starts_nothing_and_says_where() {
    let dir = scratch_dir("run-bad");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[supervisor]\nrestart = { budget = -1 }\n").unwrap();
    let (code, _, err) = strata(&["run", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("{}:2:", bad.display())), "{err}");
    assert!(err.contains("a restart budget must be between 0 and 1000000, not -1"), "{err}");
    assert!(!err.contains("spawned"), "{err}");
}

#[test]
fn run_names_a_missing_user_and_how_to_create_it() {
    if !nix::unistd::geteuid().is_root() {
        return; // development mode never looks users up
    }
    let dir = scratch_dir("run-nouser");
    let conf = dir.join("strata.toml");
    std::fs::write(
        &conf,
        format!(
            "[supervisor]\nruntime-dir = {:?}\n[users]\nntp = \"strata-no-such-user\"\n[server]\nlisten = []\n",
            dir.display().to_string()
        ),
    )
    .unwrap();
    let (code, _, err) = strata(&["run", "--config", conf.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("user \"strata-no-such-user\" for the ntp process does not exist"), "{err}");
    assert!(err.contains("systemd-sysusers"), "{err}");
}

#[test]
fn without_root_it_runs_in_development_mode_still_sandboxed() {
    // As root, become `nobody` to try it; otherwise we already are a plain user.
    let uid = nix::unistd::geteuid().is_root().then_some(65534);
    let mut appliance = Appliance::start_as("devmode", "", uid);
    let status = appliance.status();
    assert_eq!(status.mode, "development");
    let me = uid.unwrap_or_else(|| nix::unistd::geteuid().as_raw());
    for role in CHILDREN {
        let proc = proc_status(appliance.pid_of(role)).unwrap();
        assert!(proc["Uid"].split_whitespace().all(|u| u == me.to_string()), "{role}: {}", proc["Uid"]);
        assert_eq!(proc["CapEff"], "0000000000000000", "{role}");
        assert_eq!(proc["Seccomp"], "2", "{role}");
        assert_eq!(proc["NoNewPrivs"], "1", "{role}");
    }
    let (code, _) = appliance.stop();
    assert_eq!(code, Some(0));
    assert!(appliance.log().contains("development mode"), "{}", appliance.log());
}

#[test]
fn status_prints_every_process() {
    if !strata_tests::require_root("status") {
        return;
    }
    let appliance = Appliance::start("status", "");
    let (code, out, err) = strata(&["status", "--config", appliance.config.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    for role in CHILDREN {
        let line = out.lines().find(|l| l.starts_with(role)).unwrap_or_else(|| panic!("{out}"));
        assert!(line.contains("ready"), "{line}");
        assert!(line.contains(&appliance.pid_of(role).to_string()), "{line}");
    }
}

#[test]
fn a_phc_backend_on_a_device_that_is_no_ptp_clock_is_named_as_such() {
    if !strata_tests::require_root("phc backend") {
        return;
    }
    // No /dev/ptp* on this machine: /dev/null stands in for a wrong device path.
    let dir = scratch_dir("phc-null");
    let conf = dir.join("strata.toml");
    std::fs::write(
        &conf,
        format!(
            "[supervisor]\nruntime-dir = {:?}\nrestart = {{ budget = 1 }}\n[clock]\nbackend = \"phc:/dev/null\"\n\
             [server]\nlisten = []\n",
            dir.join("run").display().to_string()
        ),
    )
    .unwrap();
    let (code, _, err) = strata(&["run", "--config", conf.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a PTP hardware clock"), "{err}");
    assert!(err.contains("the NTP engine cannot be kept running"), "{err}");
}

#[test]
fn a_pps_refclock_that_is_no_pps_device_stops_the_start_and_says_so() {
    // /dev/null answers no PPS ioctl: the supervisor finds out when it sets the
    // capture mode, before any process starts.
    let dir = scratch_dir("pps-null");
    let config = dir.join("strata.toml");
    std::fs::write(
        &config,
        format!(
            "[supervisor]\nruntime-dir = {:?}\n\n[clock]\nbackend = \"none\"\n\n[server]\nlisten = [\"127.0.0.1:0\"]\n\n\
             [[refclock]]\ndriver = \"pps:/dev/null\"\n",
            dir.join("run").display().to_string()
        ),
    )
    .unwrap();
    let (code, _, err) = strata(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("refclock /dev/null: not a PPS device"), "{err}");
    assert!(!err.contains("spawned"), "{err}");
}
