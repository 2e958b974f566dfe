//! The supervisor keeps the appliance whole: re-spawn, re-link, restart budget.

use std::time::Duration;

use strata_tests::appliance::StatusExt;
use strata_tests::appliance::{Appliance, CHILDREN};
use strata_tests::{fd_count, require_root, zombies_of};

#[test]
fn a_killed_child_is_replaced_and_relinked_within_a_second() {
    if !require_root("respawn") {
        return;
    }
    let mut appliance = Appliance::start("respawn", "");
    for role in CHILDREN {
        let old = appliance.pid_of(role);
        let (new, took) = appliance.kill_and_wait_replacement(role);
        assert_ne!(old, new);
        assert!(took < Duration::from_secs(1), "{role}: replacement ready and linked after {took:?}");
        let status = appliance.status();
        assert_eq!(status.of(role).restarts, 1);
        assert_eq!(status.of(role).last_exit.as_deref(), Some("killed by SIGKILL"));
    }
}

#[test]
fn fifty_kills_leave_no_zombie_no_leaked_descriptor_and_no_extra_spawn() {
    if !require_root("fifty kills") {
        return;
    }
    let mut appliance =
        Appliance::start("fifty", "[supervisor.restart]\nbudget = 100\nbackoff-initial-ms = 1\nbackoff-max-ms = 20\n");
    let supervisor = appliance.supervisor_pid();
    let fds_before = fd_count(supervisor);
    for i in 0..50 {
        appliance.kill_and_wait_replacement(CHILDREN[i % 4]);
    }
    let status = appliance.status();
    let spawns: u32 = status.processes.iter().map(|p| p.spawns).sum();
    assert_eq!(spawns, 4 + 50, "one spawn per kill, no restart storm");
    assert!(status.alarms.is_empty(), "{:?}", status.alarms);
    assert_eq!(zombies_of(supervisor), Vec::<u32>::new(), "zombies");
    assert_eq!(fd_count(supervisor), fds_before, "supervisor descriptors after 50 re-spawns");
}

#[test]
fn a_child_killed_after_its_probation_comes_back_at_once_however_often() {
    if !require_root("probation") {
        return;
    }
    // A back-off long enough to see: only a crash loop would wait it.
    let mut appliance = Appliance::start(
        "probation",
        "[supervisor.restart]\nbackoff-initial-ms = 1000\nbudget = 2\nprobation-ms = 300\n",
    );
    for kill in 0..5 {
        std::thread::sleep(Duration::from_millis(400));
        let (_, took) = appliance.kill_and_wait_replacement("ntp");
        assert!(took < Duration::from_millis(900), "kill {kill}: the engine came back after {took:?}");
    }
    let status = appliance.status();
    assert_eq!(status.of("ntp").restarts, 5);
    assert!(status.alarms.is_empty(), "five healthy deaths are not a crash loop: {:?}", status.alarms);
    // Killed again at once, during its probation: that one waits the back-off.
    let (_, took) = appliance.kill_and_wait_replacement("ntp");
    assert!(took >= Duration::from_millis(1000), "a death during probation came back after {took:?}");
}

#[test]
fn past_its_restart_budget_a_child_stays_down_with_an_alarm_and_ntp_carries_on() {
    if !require_root("restart budget") {
        return;
    }
    let mut appliance = Appliance::start("budget", "[supervisor.restart]\nbudget = 3\nwindow-s = 600\n");
    for _ in 0..3 {
        appliance.kill_and_wait_replacement("refclock");
    }
    let last = appliance.pid_of("refclock");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(last as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let status =
        appliance.wait_until("refclock marked failed", Duration::from_secs(5), |s| s.of("refclock").state == "failed");
    assert!(status.of("refclock").pid.is_none());
    assert_eq!(status.alarms.len(), 1);
    assert!(status.alarms[0].contains("refclock exhausted its restart budget"), "{:?}", status.alarms);
    // Not re-spawned later either, and the others are untouched.
    std::thread::sleep(Duration::from_millis(500));
    let status = appliance.status();
    assert_eq!(status.of("refclock").spawns, 4);
    for role in ["ntp", "adjust", "control"] {
        assert_eq!(status.of(role).state, "ready", "{role}");
        assert_eq!(status.of(role).restarts, 0, "{role}");
    }
    assert!(appliance.log().contains("ALARM: refclock exhausted its restart budget"));
}

#[test]
fn sigterm_stops_every_process_in_order_within_two_seconds() {
    if !require_root("shutdown") {
        return;
    }
    let mut appliance = Appliance::start("shutdown", "");
    let pids: Vec<u32> = CHILDREN.iter().map(|r| appliance.pid_of(r)).collect();
    let (code, took) = appliance.stop();
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(2), "stopped after {took:?}");
    for pid in pids {
        assert!(!strata_tests::alive(pid), "child {pid} outlived the supervisor");
    }
    let log = appliance.log();
    let order: Vec<usize> = ["control", "ntp", "refclock", "adjust"]
        .iter()
        .map(|r| log.find(&format!("stopped process={r}")).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "stop order in the log:\n{log}");
    assert!(!log.contains("did not stop in time"), "{log}");
}

#[test]
fn children_do_not_outlive_a_killed_supervisor() {
    if !require_root("supervisor killed") {
        return;
    }
    let appliance = Appliance::start("orphans", "");
    let pids: Vec<u32> = CHILDREN.iter().map(|r| appliance.pid_of(r)).collect();
    let supervisor = appliance.supervisor_pid();
    drop(appliance); // SIGKILL to the supervisor, nothing to the children
    assert!(!strata_tests::alive(supervisor));
    strata_tests::wait_for("children to die with their supervisor", Duration::from_secs(1), || {
        pids.iter().all(|&p| !strata_tests::alive(p)).then_some(())
    });
}
