//! strata's reviewed policies.
//!
//! `seccomp/<arch>/<process>.json` holds one allowlist per sandboxed process, one rule
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

macro_rules! policy {
    ($process:literal, $prog:ident, $sys:ident, $src:ident) => {
        SeccompPolicy { process: $process, program: compiled::$prog, syscalls: compiled::$sys, source: compiled::$src }
    };
}

pub const NTP: SeccompPolicy = policy!("ntp", NTP, NTP_SYSCALLS, NTP_SOURCE);
pub const REFCLOCK: SeccompPolicy = policy!("refclock", REFCLOCK, REFCLOCK_SYSCALLS, REFCLOCK_SOURCE);
pub const ADJUST: SeccompPolicy = policy!("adjust", ADJUST, ADJUST_SYSCALLS, ADJUST_SOURCE);
pub const CONTROL: SeccompPolicy = policy!("control", CONTROL, CONTROL_SYSCALLS, CONTROL_SOURCE);

/// The policy of the process with this name (`ntp`, `refclock`, `adjust`, `control`).
pub fn seccomp_policy(process: &str) -> Option<SeccompPolicy> {
    [NTP, REFCLOCK, ADJUST, CONTROL].into_iter().find(|p| p.process == process)
}

/// The clock adjuster's limits, from the reviewed `policy/clock.toml`.
pub mod clock {
    include!(concat!(env!("OUT_DIR"), "/clock.rs"));
}

#[cfg(test)]
mod tests;
