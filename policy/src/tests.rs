//! The compiled filters are checked against the reviewed text, rule by rule, with a
//! small interpreter of the BPF subset seccompiler emits.

use super::*;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// Run `program` on a `struct seccomp_data` and return the action.
fn run(program: &[BpfInstruction], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = Vec::with_capacity(64);
    data.extend_from_slice(&nr.to_ne_bytes());
    data.extend_from_slice(&arch.to_ne_bytes());
    data.extend_from_slice(&0u64.to_ne_bytes());
    for a in args {
        data.extend_from_slice(&a.to_ne_bytes());
    }
    let (mut acc, mut pc) = (0u32, 0usize);
    loop {
        let i = program[pc];
        pc += 1;
        match i.code {
            0x20 => acc = u32::from_ne_bytes(data[i.k as usize..i.k as usize + 4].try_into().unwrap()),
            0x54 => acc &= i.k,
            0x05 => pc += i.k as usize,
            0x15 | 0x25 | 0x35 | 0x45 => {
                let taken = match i.code {
                    0x15 => acc == i.k,
                    0x25 => acc > i.k,
                    0x35 => acc >= i.k,
                    _ => acc & i.k != 0,
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            }
            0x06 => return i.k,
            code => panic!("instruction {code:#x} not understood by the test interpreter"),
        }
    }
}

fn rules(policy: &SeccompPolicy) -> Vec<serde_json::Value> {
    let json: serde_json::Value = serde_json::from_str(policy.source).unwrap();
    json[policy.process]["filter"].as_array().unwrap().clone()
}

/// Arguments that satisfy every condition of a rule: `eq`, or `masked_eq` (the
/// value itself has only bits inside the mask, so it satisfies it too).
fn matching_args(rule: &serde_json::Value) -> [u64; 6] {
    let mut args = [0u64; 6];
    for cond in rule["args"].as_array().into_iter().flatten() {
        let val = cond["val"].as_u64().unwrap();
        match &cond["op"] {
            serde_json::Value::String(op) if op == "eq" => {}
            op if op["masked_eq"].is_u64() => assert_eq!(val & op["masked_eq"].as_u64().unwrap(), val),
            op => panic!("extend the test for operator {op}"),
        }
        args[cond["index"].as_u64().unwrap() as usize] = val;
    }
    args
}

#[test]
fn the_engine_creates_udp_sockets_only_and_the_control_plane_no_executable_memory() {
    let nr = |p: &SeccompPolicy, name: &str| p.syscalls.iter().find(|(n, _)| *n == name).unwrap().1;
    let socket = nr(&NTP, "socket");
    let udp = 2 | 0o4000 | 0o2000000; // SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC
    assert_eq!(run(NTP.program, AUDIT_ARCH, socket, [2, udp, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(run(NTP.program, AUDIT_ARCH, socket, [10, udp, 0, 0, 0, 0]), RET_ALLOW);
    // TCP (SOCK_STREAM), raw sockets, netlink: killed.
    assert_eq!(run(NTP.program, AUDIT_ARCH, socket, [2, 1 | 0o2000000, 0, 0, 0, 0]), RET_KILL_PROCESS);
    assert_eq!(run(NTP.program, AUDIT_ARCH, socket, [2, 3, 1, 0, 0, 0]), RET_KILL_PROCESS);
    assert_eq!(run(NTP.program, AUDIT_ARCH, socket, [16, udp, 0, 0, 0, 0]), RET_KILL_PROCESS);
    // Of the socket options, only the two that ask for kernel timestamps on an added upstream.
    let setsockopt = nr(&NTP, "setsockopt");
    for (option, verdict) in [(35, RET_ALLOW), (37, RET_ALLOW), (2, RET_KILL_PROCESS), (25, RET_KILL_PROCESS)] {
        assert_eq!(run(NTP.program, AUDIT_ARCH, setsockopt, [3, 1, option, 0, 0, 0]), verdict, "SOL_SOCKET {option}");
    }
    let mprotect = nr(&CONTROL, "mprotect");
    assert_eq!(run(CONTROL.program, AUDIT_ARCH, mprotect, [0, 4096, 3, 0, 0, 0]), RET_ALLOW);
    assert_eq!(run(CONTROL.program, AUDIT_ARCH, mprotect, [0, 4096, 5, 0, 0, 0]), RET_KILL_PROCESS);
}

#[test]
fn every_rule_of_every_policy_is_allowed_by_its_compiled_filter() {
    for policy in [NTP, REFCLOCK, ADJUST, CONTROL] {
        for rule in rules(&policy) {
            let name = rule["syscall"].as_str().unwrap();
            let nr = policy.syscalls.iter().find(|(n, _)| *n == name).unwrap().1;
            assert_eq!(
                run(policy.program, AUDIT_ARCH, nr, matching_args(&rule)),
                RET_ALLOW,
                "{}: {name} is in the policy but the filter does not allow it",
                policy.process
            );
        }
    }
}

#[test]
fn every_syscall_outside_the_policy_kills_the_process() {
    for policy in [NTP, REFCLOCK, ADJUST, CONTROL] {
        let listed: Vec<u32> = policy.syscalls.iter().map(|&(_, nr)| nr).collect();
        for nr in 0..512 {
            if !listed.contains(&nr) {
                assert_eq!(
                    run(policy.program, AUDIT_ARCH, nr, [0; 6]),
                    RET_KILL_PROCESS,
                    "{}: syscall {nr} is not in the policy but is not killed",
                    policy.process
                );
            }
        }
        // Another architecture's syscall numbers must not slip through.
        assert_eq!(run(policy.program, 0x4000_0003, listed[0], [0; 6]), RET_KILL_PROCESS);
    }
}

#[test]
fn syscall_numbers_are_the_kernel_ones() {
    let read = NTP.syscalls.iter().find(|(n, _)| *n == "recvmsg").unwrap().1;
    assert_eq!(i64::from(read), libc::SYS_recvmsg);
    let adj = ADJUST.syscalls.iter().find(|(n, _)| *n == "clock_adjtime").unwrap().1;
    assert_eq!(i64::from(adj), libc::SYS_clock_adjtime);
}

#[test]
fn only_the_adjuster_may_adjust_a_clock_and_it_has_no_sockets_to_open() {
    let named = |p: &SeccompPolicy, s: &str| p.syscalls.iter().any(|(n, _)| *n == s);
    for policy in [NTP, REFCLOCK, CONTROL] {
        for clock_call in ["clock_adjtime", "adjtimex", "clock_settime", "settimeofday"] {
            assert!(!named(&policy, clock_call), "{} may call {clock_call}", policy.process);
        }
    }
    // The refclock reader's ioctls are pinned to the PTP requests: a terminal
    // ioctl (TCGETS) kills it.
    let ioctl = REFCLOCK.syscalls.iter().find(|(n, _)| *n == "ioctl").unwrap().1;
    assert_eq!(run(REFCLOCK.program, AUDIT_ARCH, ioctl, [3, 0x5401, 0, 0, 0, 0]), RET_KILL_PROCESS);
    for call in ["socket", "connect", "bind", "sendto", "recvfrom", "open", "openat", "execve"] {
        assert!(!named(&ADJUST, call), "the adjuster may call {call}");
    }
    for policy in [NTP, REFCLOCK, ADJUST, CONTROL] {
        for call in ["execve", "execveat", "ptrace", "fork", "clone3", "open", "openat", "setuid", "setresuid"] {
            assert!(!named(&policy, call), "{} may call {call}", policy.process);
        }
    }
}
