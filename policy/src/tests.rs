//! The compiled filters are checked against the reviewed text, rule by rule, with a
//! small interpreter of the BPF subset seccompiler emits.

use super::*;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;

/// Every architecture's policies with the `AUDIT_ARCH_*` its kernel reports.
const ARCHES: [(&str, [SeccompPolicy; 5], u32); 2] =
    [("x86_64", X86_64, AUDIT_ARCH_X86_64), ("aarch64", AARCH64, AUDIT_ARCH_AARCH64)];

/// The syscalls of x86_64 that aarch64 lacks, and what glibc calls there instead
/// (`None`: nothing, the call exists on x86_64 only).
const X86_64_ONLY: [(&str, Option<&str>); 8] = [
    ("poll", Some("ppoll")),
    ("epoll_wait", Some("epoll_pwait")),
    ("dup2", Some("dup3")),
    ("rename", Some("renameat")),
    ("mkdir", Some("mkdirat")),
    ("access", Some("faccessat")),
    ("readlink", Some("readlinkat")),
    ("arch_prctl", None),
];

fn named(p: &SeccompPolicy, syscall: &str) -> bool {
    p.syscalls.iter().any(|(n, _)| *n == syscall)
}

fn nr(p: &SeccompPolicy, syscall: &str) -> u32 {
    p.syscalls.iter().find(|(n, _)| *n == syscall).unwrap_or_else(|| panic!("{}: no {syscall}", p.process)).1
}

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
    for (arch, [ntp, _, _, control, supervisor], audit) in ARCHES {
        let udp = 2 | 0o4000 | 0o2000000; // SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC
        // The supervisor's filter, which every child inherits, holds sockets to the same.
        for p in [ntp, supervisor] {
            let socket = nr(&p, "socket");
            let verdict = |args| run(p.program, audit, socket, args);
            assert_eq!(verdict([2, udp, 0, 0, 0, 0]), RET_ALLOW, "{arch} {}", p.process);
            assert_eq!(verdict([10, udp, 0, 0, 0, 0]), RET_ALLOW, "{arch} {}", p.process);
            // TCP (SOCK_STREAM), raw sockets, netlink: killed.
            assert_eq!(verdict([2, 1 | 0o2000000, 0, 0, 0, 0]), RET_KILL_PROCESS, "{arch} {}", p.process);
            assert_eq!(verdict([2, 3, 1, 0, 0, 0]), RET_KILL_PROCESS, "{arch} {}", p.process);
            assert_eq!(verdict([16, udp, 0, 0, 0, 0]), RET_KILL_PROCESS, "{arch} {}", p.process);
        }
        // Of the socket options, only the two that ask for kernel timestamps on an added upstream.
        let setsockopt = nr(&ntp, "setsockopt");
        for (option, verdict) in [(35, RET_ALLOW), (37, RET_ALLOW), (2, RET_KILL_PROCESS), (25, RET_KILL_PROCESS)] {
            assert_eq!(run(ntp.program, audit, setsockopt, [3, 1, option, 0, 0, 0]), verdict, "{arch} {option}");
        }
        let mprotect = nr(&control, "mprotect");
        assert_eq!(run(control.program, audit, mprotect, [0, 4096, 3, 0, 0, 0]), RET_ALLOW, "{arch}");
        assert_eq!(run(control.program, audit, mprotect, [0, 4096, 5, 0, 0, 0]), RET_KILL_PROCESS, "{arch}");
    }
}

#[test]
fn every_rule_of_every_policy_is_allowed_by_its_compiled_filter() {
    for (arch, policies, audit) in ARCHES {
        for policy in policies {
            for rule in rules(&policy) {
                let name = rule["syscall"].as_str().unwrap();
                assert_eq!(
                    run(policy.program, audit, nr(&policy, name), matching_args(&rule)),
                    RET_ALLOW,
                    "{arch} {}: {name} is in the policy but the filter does not allow it",
                    policy.process
                );
            }
        }
    }
}

#[test]
fn every_syscall_outside_the_policy_kills_the_process() {
    for (arch, policies, audit) in ARCHES {
        for policy in policies {
            let listed: Vec<u32> = policy.syscalls.iter().map(|&(_, nr)| nr).collect();
            for nr in 0..512 {
                if !listed.contains(&nr) {
                    assert_eq!(
                        run(policy.program, audit, nr, [0; 6]),
                        RET_KILL_PROCESS,
                        "{arch} {}: syscall {nr} is not in the policy but is not killed",
                        policy.process
                    );
                }
            }
            // Another architecture's syscall numbers must not slip through.
            for other in [0x4000_0003, AUDIT_ARCH_X86_64, AUDIT_ARCH_AARCH64].into_iter().filter(|&a| a != audit) {
                assert_eq!(run(policy.program, other, listed[0], [0; 6]), RET_KILL_PROCESS, "{arch} {other:#x}");
            }
        }
    }
}

#[test]
fn syscall_numbers_are_the_kernel_ones() {
    // This machine's own, from libc.
    assert_eq!(i64::from(nr(&NTP, "recvmsg")), libc::SYS_recvmsg);
    assert_eq!(i64::from(nr(&ADJUST, "clock_adjtime")), libc::SYS_clock_adjtime);
    assert_eq!(i64::from(nr(&SUPERVISOR, "execve")), libc::SYS_execve);
    // Both architectures', from the kernel's tables (arch/x86/entry/syscalls/syscall_64.tbl,
    // include/uapi/asm-generic/unistd.h).
    let known = [
        ("x86_64", "recvmsg", 47),
        ("x86_64", "clock_adjtime", 305),
        ("x86_64", "poll", 7),
        ("aarch64", "recvmsg", 212),
        ("aarch64", "clock_adjtime", 266),
        ("aarch64", "ppoll", 73),
        ("aarch64", "execve", 221),
    ];
    for (arch, syscall, number) in known {
        let (_, policies, _) = ARCHES.into_iter().find(|(a, _, _)| *a == arch).unwrap();
        let p = policies.into_iter().find(|p| named(p, syscall)).unwrap();
        assert_eq!(nr(&p, syscall), number, "{arch} {syscall}");
    }
}

#[test]
fn the_aarch64_policies_are_the_x86_64_ones_with_what_aarch64_calls_instead() {
    for (x86, arm) in X86_64.into_iter().zip(AARCH64) {
        assert_eq!(x86.process, arm.process);
        let mut expected: Vec<&str> = x86
            .syscalls
            .iter()
            .filter_map(|&(n, _)| match X86_64_ONLY.iter().find(|&&(only, _)| only == n) {
                Some(&(_, instead)) => instead,
                None => Some(n),
            })
            .collect();
        expected.sort_unstable();
        expected.dedup();
        let actual: Vec<&str> = arm.syscalls.iter().map(|&(n, _)| n).collect();
        assert_eq!(actual, expected, "{}", arm.process);
        // And the same argument conditions, rule for rule.
        let conditions = |p: &SeccompPolicy| -> Vec<String> {
            rules(p)
                .iter()
                .filter(|r| r.get("args").is_some())
                .map(|r| format!("{} {}", r["syscall"], r["args"]))
                .collect()
        };
        assert_eq!(conditions(&arm), conditions(&x86), "{}", arm.process);
    }
}

#[test]
fn only_the_adjuster_may_adjust_a_clock_and_it_has_no_sockets_to_open() {
    for (arch, [ntp, refclock, adjust, control, _], audit) in ARCHES {
        for policy in [ntp, refclock, control] {
            for clock_call in ["clock_adjtime", "adjtimex", "clock_settime", "settimeofday"] {
                assert!(!named(&policy, clock_call), "{arch} {} may call {clock_call}", policy.process);
            }
        }
        // The refclock reader's ioctls are pinned to the PTP requests: a terminal
        // ioctl (TCGETS) kills it.
        assert_eq!(run(refclock.program, audit, nr(&refclock, "ioctl"), [3, 0x5401, 0, 0, 0, 0]), RET_KILL_PROCESS);
        for call in ["socket", "connect", "bind", "sendto", "recvfrom", "open", "openat", "execve"] {
            assert!(!named(&adjust, call), "{arch}: the adjuster may call {call}");
        }
        for policy in [ntp, refclock, adjust, control] {
            for call in ["execve", "execveat", "ptrace", "fork", "clone3", "open", "openat", "setuid", "setresuid"] {
                assert!(!named(&policy, call), "{arch} {} may call {call}", policy.process);
            }
        }
    }
}

#[test]
fn the_supervisors_filter_admits_every_child_and_none_of_the_kernels_dangerous_corners() {
    for (arch, [ntp, refclock, adjust, control, supervisor], _) in ARCHES {
        // Filters stack: a syscall a child's policy allows but the supervisor's does
        // not would kill that child.
        for child in [ntp, refclock, adjust, control] {
            for &(name, _) in child.syscalls {
                assert!(
                    named(&supervisor, name),
                    "{arch}: {} needs {name}, which the supervisor's filter kills",
                    child.process
                );
            }
        }
        for call in [
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
            "init_module",
            "finit_module",
            "delete_module",
            "kexec_load",
            "kexec_file_load",
            "bpf",
            "perf_event_open",
            "reboot",
            "swapon",
            "swapoff",
            "unshare",
            "setns",
            "keyctl",
            "add_key",
            "request_key",
            "userfaultfd",
            "io_uring_setup",
            "open_by_handle_at",
            "name_to_handle_at",
            "personality",
            "acct",
            "settimeofday",
            "clock_settime",
            "adjtimex",
            "execveat",
            "fork",
            "vfork",
            "bind",
            "listen",
            "setuid",
            "setgid",
            "chmod",
            "chown",
            "unlink",
            "unlinkat",
        ] {
            assert!(!named(&supervisor, call), "{arch}: the supervisor may call {call}");
        }
    }
}
