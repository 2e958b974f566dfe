//! Each child runs under its seccomp filter: a syscall outside its policy kills the
//! whole process, and the supervisor re-spawns it. The syscall is injected into
//! the running process with ptrace, so the real binary under its real filter is
//! what is tested, with no test-only code path in it.
//!
//! The clock calls are injected with a null `struct timex`/`timespec`: had a filter
//! let one through, the kernel would answer EFAULT, so this test can never move the
//! machine's clock.

use std::time::Duration;

use nix::sys::signal::Signal;
use strata_tests::appliance::StatusExt;
use strata_tests::appliance::{Appliance, CHILDREN};
use strata_tests::inject::{Outcome, inject_syscall};
use strata_tests::require_root;

const CLOCK_REALTIME: u64 = 0;
const AF_INET: u64 = 2;
const SOCK_DGRAM: u64 = 2;

/// A syscall each process must never make.
fn forbidden(role: &str) -> (&'static str, i64, [u64; 6]) {
    match role {
        "ntp" => ("clock_adjtime", libc::SYS_clock_adjtime, [CLOCK_REALTIME, 0, 0, 0, 0, 0]),
        "control" => ("clock_adjtime", libc::SYS_clock_adjtime, [CLOCK_REALTIME, 0, 0, 0, 0, 0]),
        "refclock" => ("clock_settime", libc::SYS_clock_settime, [CLOCK_REALTIME, 0, 0, 0, 0, 0]),
        "adjust" => ("socket(AF_INET)", libc::SYS_socket, [AF_INET, SOCK_DGRAM, 0, 0, 0, 0]),
        _ => unreachable!(),
    }
}

#[test]
fn a_syscall_outside_its_policy_kills_each_child_and_it_is_respawned() {
    if !require_root("seccomp kill") {
        return;
    }
    let mut appliance = Appliance::start("seccomp", "");
    for role in CHILDREN {
        let pid = appliance.pid_of(role);
        // The injection itself is harmless: an allowed call returns normally.
        assert_eq!(
            inject_syscall(pid as i32, libc::SYS_getpid, [0; 6]).unwrap(),
            Outcome::Returned(i64::from(pid)),
            "{role}: getpid"
        );
        assert!(strata_tests::alive(pid), "{role} died from an allowed call");

        let (name, nr, args) = forbidden(role);
        let outcome = inject_syscall(pid as i32, nr, args).unwrap();
        assert_eq!(outcome, Outcome::Killed(Signal::SIGSYS), "{role}: {name}");

        let status = appliance.wait_until(&format!("{role} re-spawned"), Duration::from_secs(5), |s| {
            s.of(role).pid.is_some_and(|p| p != pid) && s.all_linked()
        });
        let p = status.of(role);
        assert_eq!(p.last_exit.as_deref(), Some("killed by SIGSYS (seccomp: a syscall outside its policy)"), "{role}");
        assert_eq!(p.restarts, 1, "{role}");
    }
}

#[test]
fn the_do_not_respawn_status_keeps_the_adjuster_down_with_an_alarm_while_ntp_is_served() {
    if !require_root("do-not-respawn") {
        return;
    }
    let mut appliance = Appliance::start("no-respawn", "");
    let adjuster = appliance.pid_of("adjust");
    let ntp = appliance.pid_of("ntp");
    let code = i64::from(strata_proto::ipc::EXIT_DO_NOT_RESPAWN);
    assert_eq!(
        inject_syscall(adjuster as i32, libc::SYS_exit_group, [code as u64, 0, 0, 0, 0, 0]).unwrap(),
        Outcome::Exited(code as i32)
    );

    let status = appliance.wait_until("adjuster failed", Duration::from_secs(5), |s| s.of("adjust").state == "failed");
    assert_eq!(status.of("adjust").last_exit.as_deref(), Some("exited with status 100"));
    assert_eq!(status.alarms.len(), 1, "{:?}", status.alarms);
    assert!(status.alarms[0].contains("do-not-respawn"), "{:?}", status.alarms);
    std::thread::sleep(Duration::from_millis(500));
    let status = appliance.status();
    assert_eq!(status.of("adjust").spawns, 1, "re-spawned despite the status");
    assert_eq!(status.of("ntp").pid, Some(ntp));
    assert_eq!(status.of("ntp").state, "ready");
    assert!(appliance.log().contains("ALARM: adjust exited with status 100"));
}

#[test]
fn a_stopped_and_continued_child_survives_its_filter() {
    // SIGSTOP/SIGCONT (an operator pausing a process, a debugger attaching) makes
    // the kernel resume the interrupted poll() through restart_syscall.
    if !require_root("stop/continue") {
        return;
    }
    let appliance = Appliance::start("stopcont", "");
    for role in CHILDREN {
        let pid = appliance.pid_of(role);
        let target = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(target, Signal::SIGSTOP).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        nix::sys::signal::kill(target, Signal::SIGCONT).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(strata_tests::alive(pid), "{role} died after SIGSTOP/SIGCONT");
        assert_eq!(appliance.pid_of(role), pid, "{role} was re-spawned");
    }
    assert!(appliance.status().all_linked());
}

#[test]
fn a_syscall_outside_its_policy_kills_the_supervisor_and_its_children_go_with_it() {
    if !require_root("supervisor seccomp kill") {
        return;
    }
    let appliance = Appliance::start("seccomp-supervisor", "");
    let supervisor = appliance.supervisor_pid();
    let children: Vec<u32> = CHILDREN.iter().map(|r| appliance.pid_of(r)).collect();
    assert_eq!(
        inject_syscall(supervisor as i32, libc::SYS_getpid, [0; 6]).unwrap(),
        Outcome::Returned(i64::from(supervisor)),
        "supervisor: getpid"
    );
    // unshare(0) would change nothing if it were allowed; it is not in the policy.
    let outcome = inject_syscall(supervisor as i32, libc::SYS_unshare, [0; 6]).unwrap();
    assert_eq!(outcome, Outcome::Killed(Signal::SIGSYS), "supervisor: unshare");
    // Each child dies with its parent (PR_SET_PDEATHSIG): none is left behind to
    // serve unsupervised; systemd restarts the whole appliance (Restart=on-failure).
    strata_tests::wait_for("every child gone with the supervisor", Duration::from_secs(2), || {
        children.iter().all(|&pid| !strata_tests::alive(pid)).then_some(())
    });
}
