//! The security claims of the process split, checked on the running system.

use std::collections::BTreeSet;

use strata_tests::appliance::{Appliance, CHILDREN};
use strata_tests::{CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SYS_TIME, cap_mask, proc_status, require_root};

#[test]
fn four_children_under_four_users_with_only_the_adjuster_holding_a_capability() {
    if !require_root("sandbox") {
        return;
    }
    let appliance = Appliance::start("sandbox", "");
    let status = appliance.status();
    assert_eq!(status.mode, "production");

    let mut uids = BTreeSet::new();
    for role in CHILDREN {
        let pid = appliance.pid_of(role);
        let proc = proc_status(pid).unwrap();
        let uid: Vec<u32> = proc["Uid"].split_whitespace().map(|u| u.parse().unwrap()).collect();
        assert!(uid.iter().all(|&u| u == uid[0] && u != 0), "{role}: uids {uid:?}");
        let gid: Vec<u32> = proc["Gid"].split_whitespace().map(|g| g.parse().unwrap()).collect();
        assert!(gid.iter().all(|&g| g != 0), "{role}: gids {gid:?}");
        assert_eq!(proc["Groups"], "", "{role}: supplementary groups");
        uids.insert(uid[0]);

        let expected = if role == "adjust" { CAP_SYS_TIME } else { 0 };
        assert_eq!(cap_mask(&proc, "CapEff"), expected, "{role}: effective capabilities");
        assert_eq!(cap_mask(&proc, "CapPrm"), expected, "{role}: permitted capabilities");
        assert_eq!(cap_mask(&proc, "CapInh"), 0, "{role}: inheritable capabilities");
        assert_eq!(cap_mask(&proc, "CapAmb"), 0, "{role}: ambient capabilities");
        // Every thread, not only the main one (the engine serves from several).
        let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten().collect();
        if role == "ntp" {
            assert!(tasks.len() >= 2, "the engine serves from threads of its own");
        }
        if role == "control" {
            // The API thread parses operators' HTTP/2 and TLS: it must be sandboxed too.
            let names: Vec<String> = tasks
                .iter()
                .map(|t| std::fs::read_to_string(t.path().join("comm")).unwrap().trim().to_string())
                .collect();
            assert!(names.iter().any(|n| n == "api"), "no API thread in the control plane: {names:?}");
        }
        for task in tasks {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap();
            let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).unwrap().trim().to_string();
            assert_eq!(field("Seccomp:"), "2", "{role} thread {:?}: seccomp filter mode", task.file_name());
            assert_eq!(field("NoNewPrivs:"), "1", "{role} thread {:?}: no_new_privs", task.file_name());
            assert_eq!(u64::from_str_radix(&field("CapEff:"), 16).unwrap(), expected, "{role} thread capabilities");
        }
    }
    assert_eq!(uids.len(), 4, "four distinct uids: {uids:?}");

    // The supervisor uses CAP_KILL (to stop children under other uids), keeps the
    // children's three permitted but not effective (under no_new_privs an exec gets
    // no more than that), and bounds everything it can ever start to those four.
    let sup = proc_status(appliance.supervisor_pid()).unwrap();
    let four = CAP_KILL | CAP_SETUID | CAP_SETGID | CAP_SYS_TIME;
    assert_eq!(cap_mask(&sup, "CapEff"), CAP_KILL);
    assert_eq!(cap_mask(&sup, "CapPrm"), four);
    assert_eq!(cap_mask(&sup, "CapInh"), 0);
    assert_eq!(cap_mask(&sup, "CapAmb"), 0);
    assert_eq!(cap_mask(&sup, "CapBnd"), four);
    // It runs under its own filter too (policy/seccomp/<arch>/supervisor.json).
    assert_eq!(sup["Seccomp"], "2", "the supervisor's seccomp mode");
    assert_eq!(sup["NoNewPrivs"], "1", "the supervisor's no_new_privs");

    // Five processes in all: the supervisor and its four children, nothing else.
    let children: Vec<u32> =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", appliance.supervisor_pid()))
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
    assert_eq!(children.len(), 4, "supervisor's children: {children:?}");
}

#[test]
fn a_child_started_by_hand_without_its_channel_refuses_to_run() {
    strata_tests::ensure_built();
    for role in CHILDREN {
        let out = std::process::Command::new(strata_tests::bin_dir().join(format!("strata-{role}"))).output().unwrap();
        assert_eq!(out.status.code(), Some(70), "{role}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("descriptor 3 is not the supervisor channel"), "{role}: {err}");
    }
}
