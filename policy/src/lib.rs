//! strata's reviewed policies.
//!
//! `seccomp/<arch>/<process>.json` holds one allowlist per process, one rule
//! per syscall, each with a comment saying why the process needs it. `build.rs`
//! compiles them into classic BPF; a broken or uncommented policy fails the build.
//! The default action of every filter is to kill the whole process.
#![forbid(unsafe_code)]

/// One classic-BPF instruction (`struct sock_filter`, linux/filter.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpfInstruction {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

mod compiled {
    use super::BpfInstruction;
    include!(concat!(env!("OUT_DIR"), "/filters.rs"));
}

/// A compiled seccomp policy.
#[derive(Clone, Copy, Debug)]
pub struct SeccompPolicy {
    pub process: &'static str,
    pub program: &'static [BpfInstruction],
    /// Every syscall the policy names, with its number on this architecture.
    pub syscalls: &'static [(&'static str, u32)],
    /// The reviewed JSON text the program was compiled from.
    pub source: &'static str,
}

macro_rules! policies {
    ($arch:ident) => {
        [
            policy!("ntp", $arch, NTP, NTP_SYSCALLS, NTP_SOURCE),
            policy!("refclock", $arch, REFCLOCK, REFCLOCK_SYSCALLS, REFCLOCK_SOURCE),
            policy!("adjust", $arch, ADJUST, ADJUST_SYSCALLS, ADJUST_SOURCE),
            policy!("control", $arch, CONTROL, CONTROL_SYSCALLS, CONTROL_SOURCE),
            policy!("supervisor", $arch, SUPERVISOR, SUPERVISOR_SYSCALLS, SUPERVISOR_SOURCE),
        ]
    };
}

macro_rules! policy {
    ($process:literal, $arch:ident, $prog:ident, $sys:ident, $src:ident) => {
        SeccompPolicy {
            process: $process,
            program: compiled::$arch::$prog,
            syscalls: compiled::$arch::$sys,
            source: compiled::$arch::$src,
        }
    };
}

/// The policies compiled for each architecture, in the order ntp, refclock, adjust,
/// control, supervisor; whatever the target, so that tests check them all.
pub const X86_64: [SeccompPolicy; 5] = policies!(x86_64);
pub const AARCH64: [SeccompPolicy; 5] = policies!(aarch64);

#[cfg(target_arch = "x86_64")]
const NATIVE: [SeccompPolicy; 5] = X86_64;
#[cfg(target_arch = "aarch64")]
const NATIVE: [SeccompPolicy; 5] = AARCH64;

pub const NTP: SeccompPolicy = NATIVE[0];
pub const REFCLOCK: SeccompPolicy = NATIVE[1];
pub const ADJUST: SeccompPolicy = NATIVE[2];
pub const CONTROL: SeccompPolicy = NATIVE[3];
/// The supervisor's, installed once its privileged start-up is done. Every child
/// inherits it (filters stack), so it admits each child's start-up and policy too.
pub const SUPERVISOR: SeccompPolicy = NATIVE[4];

/// The policy of the process with this name (`ntp`, `refclock`, `adjust`, `control`,
/// `supervisor`), for the architecture built for.
pub fn seccomp_policy(process: &str) -> Option<SeccompPolicy> {
    NATIVE.into_iter().find(|p| p.process == process)
}

/// The clock adjuster's limits, from the reviewed `policy/clock.toml`.
pub mod clock {
    include!(concat!(env!("OUT_DIR"), "/clock.rs"));
}

#[cfg(test)]
mod tests;
