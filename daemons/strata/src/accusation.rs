//! A child that reports its peer for breaking the protocol: evidence, acted on
//! only when it can be trusted. The supervisor never sees the frames, so it
//! cannot check a report; a report alone that killed the accused would let one
//! compromised process (the control plane, whose gRPC parser faces local users)
//! kill the engine again and again — its restart budget spent, the appliance
//! stopped. So the accused is replaced only
//! - when the adjuster reports it: the adjuster is the smallest process, parses
//!   nothing but its peers' requests, and holds CAP_SYS_TIME — a compromised
//!   adjuster already owns the clock, so trusting its word costs nothing; or
//! - when two different processes have reported the same instance: that takes
//!   two compromised neighbours, or one truly broken accused.
//!
//! Otherwise the two are linked again after a pause that doubles while the same
//! accuser keeps reporting the same peer (a flood costs a log line per pause),
//! and the accused keeps serving.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use strata_proto::ipc::Role;

/// The first pause before an accuser is linked to its accused again.
const RELINK_FIRST: Duration = Duration::from_secs(1);
/// The longest pause.
const RELINK_MAX: Duration = Duration::from_secs(64);
/// A pair that has gone this long without a report starts over at the first pause.
const FORGIVE_AFTER: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Replace the accused (it is killed and re-spawned as after any death).
    Replace,
    /// Keep the accused; link the pair again at this time.
    RelinkAt(Instant),
}

#[derive(Debug, Default)]
pub(crate) struct Evidence {
    /// Per accused instance (pid): the roles that have reported it.
    against: HashMap<i32, BTreeSet<Role>>,
    /// Per (accuser, accused) role: reports in a row and the last one's time.
    pairs: HashMap<(Role, Role), (u32, Instant)>,
}

impl Evidence {
    /// `accuser` reported instance `pid` of `accused` at `now`.
    pub fn report(&mut self, accuser: Role, accused: Role, pid: i32, now: Instant) -> Verdict {
        let reporters = self.against.entry(pid).or_default();
        reporters.insert(accuser);
        if accuser == Role::Adjust || reporters.len() >= 2 {
            return Verdict::Replace;
        }
        let (in_a_row, last) = self.pairs.entry((accuser, accused)).or_insert((0, now));
        if now.saturating_duration_since(*last) >= FORGIVE_AFTER {
            *in_a_row = 0;
        }
        *in_a_row += 1;
        *last = now;
        let pause = RELINK_FIRST.saturating_mul(1 << (*in_a_row - 1).min(6)).min(RELINK_MAX);
        Verdict::RelinkAt(now + pause)
    }

    /// The instance `pid` is gone: what was said about it no longer matters.
    pub fn forget(&mut self, pid: i32) {
        self.against.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_control_plane_alone_never_gets_the_engine_replaced_however_often_it_reports() {
        let mut evidence = Evidence::default();
        let t0 = Instant::now();
        let mut now = t0;
        let mut pauses = Vec::new();
        for _ in 0..1000 {
            match evidence.report(Role::Control, Role::Ntp, 42, now) {
                Verdict::RelinkAt(at) => {
                    pauses.push((at - now).as_secs());
                    now = at;
                }
                Verdict::Replace => panic!("the engine was replaced on the control plane's word"),
            }
        }
        assert_eq!(&pauses[..8], [1, 2, 4, 8, 16, 32, 64, 64]);
        assert!(pauses[8..].iter().all(|&p| p == 64));
    }

    #[test]
    fn the_adjusters_report_replaces_at_once() {
        let mut evidence = Evidence::default();
        assert_eq!(evidence.report(Role::Adjust, Role::Ntp, 42, Instant::now()), Verdict::Replace);
        assert_eq!(evidence.report(Role::Adjust, Role::Control, 43, Instant::now()), Verdict::Replace);
    }

    #[test]
    fn two_different_accusers_of_one_instance_replace_it_and_a_new_instance_starts_clean() {
        let mut evidence = Evidence::default();
        let now = Instant::now();
        assert!(matches!(evidence.report(Role::Control, Role::Ntp, 42, now), Verdict::RelinkAt(_)));
        assert!(matches!(evidence.report(Role::Control, Role::Ntp, 42, now), Verdict::RelinkAt(_)));
        assert_eq!(evidence.report(Role::Refclock, Role::Ntp, 42, now), Verdict::Replace);
        evidence.forget(42);
        // Its successor is not held to what was said about it.
        assert!(matches!(evidence.report(Role::Refclock, Role::Ntp, 44, now), Verdict::RelinkAt(_)));
    }

    #[test]
    fn a_pair_quiet_for_ten_minutes_starts_over_at_the_first_pause() {
        let mut evidence = Evidence::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            evidence.report(Role::Ntp, Role::Control, 7, t0);
        }
        let later = t0 + secs(601);
        assert_eq!(evidence.report(Role::Ntp, Role::Control, 7, later), Verdict::RelinkAt(later + secs(1)));
    }
}
