//! Source selection and combination: which sources to believe and what the system
//! offset is (RFC 5905 §11.2, with chrony's semantics for its options).
//!
//! Steps, in chrony's `SRC_SelectSource` order:
//! 1. Pre-filter (chrony marks these before the intersection): `noselect`,
//!    unreachable, unsynchronised (leap LI = 3 or stratum ≥ 16), root distance above
//!    `maxdistance` (or a non-finite interval), jitter above `maxjitter`.
//! 2. Intersection (RFC 5905 §11.2.1, Marzullo; chrony's variant with `trust`): find
//!    the offset range covered by the most correctness intervals, trusted intervals
//!    counting first. Without a strict majority of the selectable sources (of the
//!    trusted ones, if any trusted source is in the best range) nothing is selected.
//! 3. Truechimers are the sources whose interval contains the agreed interval or lies
//!    wholly inside it (chrony's test; RFC 5905 tests the midpoint instead); the rest
//!    are falsetickers. When trusted sources agree, an untrusted truechimer must also
//!    lie inside the trusted sources' range, so it cannot pull the offset out of it.
//! 4. `require`: if any source has it, one of them must be a truechimer;
//!    `minsources`: that many truechimers are needed.
//! 5. `prefer`: if a preferred truechimer exists, only preferred ones go on.
//! 6. System peer: the smallest root distance (at the estimate's own time) +
//!    (stratum − min stratum) × `stratumweight`, + `reselectdist` for all but the
//!    current peer. No clustering (RFC 5905 §11.2.2) — chrony does without it too.
//! 7. Combine (RFC 5905 §11.2.3; chrony `combinelimit`): sources whose distance is
//!    within `combine_limit` × the peer's, weighted by 1 / root distance.
//!
//! Departures from chrony: selection keeps no state of its own (chrony's score
//! history, orphan mode and waiting for the first update are not there); the caller
//! says which candidate is the current system peer (`reselectdist`'s hysteresis) and
//! whether each is reachable.

use crate::filter::SourceEstimate;
use crate::{LocalTime, SelectOptions, SourceId};
use strata_proto::ntp::LeapIndicator;

/// RFC 5905 MAXSTRAT: stratum 16 means unsynchronised.
pub const MAX_STRATUM: u8 = 16;

/// One source as selection sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub id: SourceId,
    pub options: SelectOptions,
    pub estimate: SourceEstimate,
    pub reachable: bool,
    /// The system peer of the previous selection: the others need to be better by
    /// `reselect_distance_s` to take its place.
    pub selected: bool,
}

/// chrony's selection directives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SelectionConfig {
    /// chrony `minsources`: truechimers needed before the clock is steered (default 1).
    pub min_sources: usize,
    /// chrony `maxdistance`: larger root distances are not selectable (default 3 s).
    pub max_distance_s: f64,
    /// chrony `maxjitter`: sources with more jitter are not selectable (default 1 s).
    pub max_jitter_s: f64,
    /// chrony `combinelimit`: combine sources whose root distance is at most this many
    /// times the system peer's (default 3; 0 uses the system peer alone).
    pub combine_limit: f64,
    /// chrony `stratumweight`: seconds of distance one stratum is worth (default 1 ms).
    pub stratum_weight_s: f64,
    /// chrony `reselectdist`: distance added to every source but the current system
    /// peer, so that sources of about equal distance do not take turns (default 100 µs).
    pub reselect_distance_s: f64,
}

impl Default for SelectionConfig {
    fn default() -> Self {
        SelectionConfig {
            min_sources: 1,
            max_distance_s: 3.0,
            max_jitter_s: 1.0,
            combine_limit: 3.0,
            stratum_weight_s: 0.001,
            reselect_distance_s: 1e-4,
        }
    }
}

/// Why a source that passed the pre-filter did not take part in a selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnselectableReason {
    /// LeapIndicator LI = 3 or stratum ≥ 16.
    Unsynchronised,
    /// Not more than half of the sources (or of the trusted ones) agree: chronyc shows
    /// all of them as falsetickers.
    NoMajority,
    /// Fewer selectable sources / truechimers than `minsources`.
    TooFewSources,
    /// Sources with `require` exist and none of them is a truechimer.
    NoRequiredSource,
}

/// Why a truechimer is not part of the combination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotCombinedReason {
    /// Root distance beyond `combinelimit` × the system peer's.
    Distant,
    /// Another truechimer has `prefer` and this one does not.
    NonPreferred,
    /// Trusted sources agree and this untrusted source is not inside their range.
    Untrusted,
}

/// A source's state after selection, mirroring the chronyc `sources` state column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceState {
    /// The system peer (`*`).
    Selected,
    /// Combined with the system peer (`+`).
    Combined,
    /// A truechimer left out of the combination (`-`).
    NotCombined(NotCombinedReason),
    /// Its interval does not agree with the majority (`x`).
    Falseticker,
    /// No selection took place, or this source cannot take part (see the reason).
    Unselectable(UnselectableReason),
    /// Not reachable (`?`).
    NotReachable,
    /// Root distance above `maxdistance` (`?`).
    TooFar,
    /// Jitter above `maxjitter` (`~`).
    TooVariable,
    /// Configured `noselect` (`?`).
    NoSelect,
}

impl SourceState {
    /// The chronyc `sources` state symbol (chrony's mapping of its internal states).
    pub fn symbol(self) -> char {
        match self {
            SourceState::Selected => '*',
            SourceState::Combined => '+',
            SourceState::NotCombined(_) => '-',
            SourceState::Falseticker | SourceState::Unselectable(UnselectableReason::NoMajority) => 'x',
            SourceState::Unselectable(UnselectableReason::TooFewSources | UnselectableReason::NoRequiredSource) => '-',
            SourceState::TooVariable => '~',
            SourceState::Unselectable(UnselectableReason::Unsynchronised)
            | SourceState::NotReachable
            | SourceState::TooFar
            | SourceState::NoSelect => '?',
        }
    }
}

/// The combined system estimate (RFC 5905 §11.2.3 combine, §11.3 clock_update).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SystemEstimate {
    /// Weighted offset of the combined sources, seconds (source − local).
    pub offset_s: f64,
    /// Weighted RMS of the combined offsets about the system peer's (RFC ψ_s), seconds.
    /// (Beyond RFC 5905's fields: the discipline and chronyc `tracking` want it.)
    pub jitter_s: f64,
    /// System peer's root delay + its delay (RFC δ_s = Δ_p + δ_p).
    pub root_delay_s: f64,
    /// RFC ε_s = E_p + ε_p + PHI·(now − t_p) + √(ψ_p² + ψ_s²).
    pub root_dispersion_s: f64,
    /// System peer's stratum + 1.
    pub stratum: u8,
    pub reference: SourceId,
    /// Majority vote of the truechimers (of the trusted ones, if trusted ones agree).
    pub leap: LeapIndicator,
}

/// The outcome of one selection round.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// One entry per candidate, in the candidates' order.
    pub states: Vec<(SourceId, SourceState)>,
    pub system_peer: Option<SourceId>,
    pub combined: Option<SystemEstimate>,
    /// The range the majority agrees on (RFC 5905 §11.2.1's [l, u]), when one was found.
    pub agreed_interval: Option<(f64, f64)>,
}

impl Selection {
    pub fn state_of(&self, id: SourceId) -> Option<SourceState> {
        self.states.iter().find(|(candidate, _)| *candidate == id).map(|&(_, state)| state)
    }
}

/// Marks a source gets while selection runs; `None` = still selectable.
type Marks = Vec<Option<SourceState>>;

/// Run source selection over `candidates` at local time `now`.
pub fn select(candidates: &[Candidate], now: LocalTime, config: &SelectionConfig) -> Selection {
    let mut marks: Marks = candidates.iter().map(|candidate| prefilter(candidate, now, config)).collect();
    let mut selection = Selection { states: Vec::new(), system_peer: None, combined: None, agreed_interval: None };
    let finish = |marks: Marks, mut selection: Selection| {
        selection.states = candidates
            .iter()
            .zip(marks)
            .map(|(candidate, mark)| (candidate.id, mark.unwrap_or(SourceState::Combined)))
            .collect();
        selection
    };
    let mark_open = |marks: &mut Marks, state: SourceState| {
        for mark in marks.iter_mut().filter(|mark| mark.is_none()) {
            *mark = Some(state);
        }
    };

    let selectable: Vec<usize> = (0..candidates.len()).filter(|&i| marks[i].is_none()).collect();
    if selectable.is_empty() || selectable.len() < config.min_sources {
        mark_open(&mut marks, SourceState::Unselectable(UnselectableReason::TooFewSources));
        return finish(marks, selection);
    }

    let intervals: Vec<(f64, f64)> = candidates.iter().map(|candidate| candidate.estimate.interval(now)).collect();
    let Some(agreement) = intersect(&selectable, candidates, &intervals) else {
        mark_open(&mut marks, SourceState::Unselectable(UnselectableReason::NoMajority));
        return finish(marks, selection);
    };
    selection.agreed_interval = Some(agreement.best);

    // Truechimers (chrony: contains the best interval or lies wholly inside it).
    let mut truechimers = Vec::new();
    for &i in &selectable {
        let (lo, hi) = intervals[i];
        let (best_lo, best_hi) = agreement.best;
        let agrees = (lo <= best_lo && hi >= best_hi) || (lo >= best_lo && hi <= best_hi);
        if !agrees {
            marks[i] = Some(SourceState::Falseticker);
        } else if let Some((trust_lo, trust_hi)) = agreement.trusted
            && !candidates[i].options.trust
            && !(lo >= trust_lo && hi <= trust_hi)
        {
            marks[i] = Some(SourceState::NotCombined(NotCombinedReason::Untrusted));
        } else {
            truechimers.push(i);
        }
    }

    let require_configured = candidates.iter().any(|candidate| candidate.options.require);
    let required_present = truechimers.iter().any(|&i| candidates[i].options.require);
    if require_configured && !required_present {
        mark_open(&mut marks, SourceState::Unselectable(UnselectableReason::NoRequiredSource));
        return finish(marks, selection);
    }
    if truechimers.is_empty() || truechimers.len() < config.min_sources {
        mark_open(&mut marks, SourceState::Unselectable(UnselectableReason::TooFewSources));
        return finish(marks, selection);
    }

    // LeapIndicator vote (chrony: truechimers, only the trusted ones if trusted ones agree),
    // before `prefer` narrows the list.
    let voters: Vec<usize> =
        truechimers.iter().copied().filter(|&i| agreement.trusted.is_none() || candidates[i].options.trust).collect();
    let leap = leap_vote(voters.iter().map(|&i| candidates[i].estimate.leap));

    // chrony: "If there are any sources with prefer option, reduce the list again only
    // to the preferred sources".
    let mut pool = truechimers;
    if pool.iter().any(|&i| candidates[i].options.prefer) {
        for &i in pool.iter().filter(|&&i| !candidates[i].options.prefer) {
            marks[i] = Some(SourceState::NotCombined(NotCombinedReason::NonPreferred));
        }
        pool.retain(|&i| candidates[i].options.prefer);
    }

    // System peer: chrony's score without history, i.e. the minimum of root distance
    // plus stratumweight per stratum above the best stratum (and `reselectdist` for
    // all but the current peer); ties to the lower id. The distance is taken at each
    // estimate's own time: aged at PHI (15 ppm), a source polled a moment ago always
    // looked best, and the peer changed at every poll (chrony ages by the skew).
    let distances: Vec<f64> = candidates.iter().map(|candidate| candidate.estimate.root_distance_s(now)).collect();
    let fresh: Vec<f64> = candidates.iter().map(|c| c.estimate.root_distance_s(c.estimate.time)).collect();
    let min_stratum = pool.iter().map(|&i| candidates[i].estimate.stratum).min().unwrap_or(0);
    let score = |i: usize| {
        let reselect_s = if candidates[i].selected { 0.0 } else { config.reselect_distance_s };
        fresh[i] + f64::from(candidates[i].estimate.stratum - min_stratum) * config.stratum_weight_s + reselect_s
    };
    let peer = pool
        .iter()
        .copied()
        .min_by(|&a, &b| score(a).total_cmp(&score(b)).then(candidates[a].id.cmp(&candidates[b].id)))
        .unwrap_or(pool[0]);
    marks[peer] = Some(SourceState::Selected);

    // Combine (RFC 5905 §11.2.3, chrony combine_sources): weights 1 / root distance.
    let limit_s = config.combine_limit * distances[peer];
    let mut combined = vec![peer];
    for &i in pool.iter().filter(|&&i| i != peer) {
        if distances[i] <= limit_s {
            combined.push(i);
        } else {
            marks[i] = Some(SourceState::NotCombined(NotCombinedReason::Distant));
        }
    }
    let weight = |i: usize| 1.0 / distances[i].max(f64::MIN_POSITIVE);
    let weight_sum: f64 = combined.iter().map(|&i| weight(i)).sum();
    let offset_s = combined.iter().map(|&i| weight(i) * candidates[i].estimate.offset_s).sum::<f64>() / weight_sum;
    let peer_estimate = &candidates[peer].estimate;
    let jitter_s = (combined
        .iter()
        .map(|&i| weight(i) * (candidates[i].estimate.offset_s - peer_estimate.offset_s).powi(2))
        .sum::<f64>()
        / weight_sum)
        .sqrt();

    selection.system_peer = Some(candidates[peer].id);
    selection.combined = Some(SystemEstimate {
        offset_s,
        jitter_s,
        root_delay_s: peer_estimate.root_delay_s + peer_estimate.delay_s,
        root_dispersion_s: peer_estimate.root_dispersion_s
            + peer_estimate.dispersion_at_s(now)
            + (peer_estimate.jitter_s.powi(2) + jitter_s.powi(2)).sqrt(),
        stratum: peer_estimate.stratum.saturating_add(1).min(MAX_STRATUM),
        reference: candidates[peer].id,
        leap,
    });
    // Combined sources keep `None`, which `finish` turns into `Combined`.
    finish(marks, selection)
}

/// Step 1: the states chrony assigns before the intersection; `None` = selectable.
fn prefilter(candidate: &Candidate, now: LocalTime, config: &SelectionConfig) -> Option<SourceState> {
    let estimate = &candidate.estimate;
    let (lo, hi) = estimate.interval(now);
    if candidate.options.noselect {
        Some(SourceState::NoSelect)
    } else if !candidate.reachable {
        Some(SourceState::NotReachable)
    } else if estimate.leap == LeapIndicator::Unsynchronised || estimate.stratum >= MAX_STRATUM {
        Some(SourceState::Unselectable(UnselectableReason::Unsynchronised))
    } else if !(estimate.root_distance_s(now) <= config.max_distance_s && lo <= hi) {
        // Written so that NaN fails too.
        Some(SourceState::TooFar)
    } else if estimate.jitter_s.is_nan() || estimate.jitter_s > config.max_jitter_s {
        Some(SourceState::TooVariable)
    } else {
        None
    }
}

/// Result of the intersection.
struct Agreement {
    /// The agreed interval.
    best: (f64, f64),
    /// The range of the deepest trusted agreement, if trusted sources took part.
    trusted: Option<(f64, f64)>,
}

/// RFC 5905 §11.2.1 / chrony: sweep the sorted interval endpoints keeping the depth
/// (intervals covering the point) and trust depth; the best range is the one with the
/// most trusted intervals, then the most intervals. Equal-depth ranges are spanned from
/// the first one's start to the last one's end (chrony: "just bad luck - we need extra
/// sources to detect the falseticker"). `None` without a strict majority.
fn intersect(selectable: &[usize], candidates: &[Candidate], intervals: &[(f64, f64)]) -> Option<Agreement> {
    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Edge {
        // Lows sort before highs at the same offset: touching intervals overlap.
        Low,
        High,
    }
    let mut endpoints: Vec<(f64, Edge, bool)> = Vec::with_capacity(2 * selectable.len());
    for &i in selectable {
        let trusted = candidates[i].options.trust;
        endpoints.push((intervals[i].0, Edge::Low, trusted));
        endpoints.push((intervals[i].1, Edge::High, trusted));
    }
    endpoints.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));

    let (mut depth, mut trust_depth, mut best_depth, mut best_trust_depth) = (0usize, 0usize, 0usize, 0usize);
    let (mut best_lo, mut best_hi, mut best_trust_lo, mut best_trust_hi) = (0.0, 0.0, 0.0, 0.0);
    for &(offset_s, edge, trusted) in &endpoints {
        match edge {
            Edge::Low => {
                depth += 1;
                trust_depth += usize::from(trusted);
                if trust_depth > best_trust_depth || (trust_depth == best_trust_depth && depth > best_depth) {
                    if trust_depth > best_trust_depth {
                        best_trust_depth = trust_depth;
                        best_trust_lo = offset_s;
                    }
                    best_depth = depth;
                    best_lo = offset_s;
                }
            }
            Edge::High => {
                if trust_depth == best_trust_depth {
                    if depth == best_depth {
                        best_hi = offset_s;
                    }
                    best_trust_hi = offset_s;
                }
                trust_depth -= usize::from(trusted);
                depth -= 1;
            }
        }
    }

    // chrony: with trusted sources in the best range, the majority is counted among
    // the trusted sources only ("when sources disagree, the trusted ones are assumed
    // correct"); otherwise among all selectable sources.
    let (agreeing, voters) = if best_trust_depth > 0 {
        (best_trust_depth, selectable.iter().filter(|&&i| candidates[i].options.trust).count())
    } else {
        (best_depth, selectable.len())
    };
    if agreeing <= voters / 2 {
        return None;
    }
    Some(Agreement {
        best: (best_lo, best_hi),
        trusted: (best_trust_depth > 0).then_some((best_trust_lo, best_trust_hi)),
    })
}

/// LeapIndicator announcement carried by more than half of the voters (RFC 5905 / chrony).
fn leap_vote(leaps: impl Iterator<Item = LeapIndicator>) -> LeapIndicator {
    let (mut voters, mut insert, mut delete) = (0usize, 0usize, 0usize);
    for leap in leaps {
        voters += 1;
        match leap {
            LeapIndicator::InsertSecond => insert += 1,
            LeapIndicator::DeleteSecond => delete += 1,
            LeapIndicator::NoWarning | LeapIndicator::Unsynchronised => {}
        }
    }
    if 2 * insert > voters {
        LeapIndicator::InsertSecond
    } else if 2 * delete > voters {
        LeapIndicator::DeleteSecond
    } else {
        LeapIndicator::NoWarning
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: LocalTime = LocalTime(1_700_000_000_000_000_000);

    /// A candidate with a fresh estimate (taken at NOW) whose root distance is exactly
    /// `distance_s` (all of it root dispersion).
    fn source(id: u32, offset_s: f64, distance_s: f64) -> Candidate {
        Candidate {
            id: SourceId(id),
            options: SelectOptions::default(),
            estimate: SourceEstimate {
                time: NOW,
                offset_s,
                delay_s: 0.0,
                dispersion_s: 0.0,
                jitter_s: 0.0,
                root_delay_s: 0.0,
                root_dispersion_s: distance_s,
                stratum: 1,
                leap: LeapIndicator::NoWarning,
            },
            reachable: true,
            selected: false,
        }
    }

    fn with(mut candidate: Candidate, options: SelectOptions) -> Candidate {
        candidate.options = options;
        candidate
    }

    const TRUST: SelectOptions = SelectOptions { prefer: false, noselect: false, trust: true, require: false };
    const PREFER: SelectOptions = SelectOptions { prefer: true, noselect: false, trust: false, require: false };
    const REQUIRE: SelectOptions = SelectOptions { prefer: false, noselect: false, trust: false, require: true };
    const NOSELECT: SelectOptions = SelectOptions { prefer: false, noselect: true, trust: false, require: false };

    fn run(candidates: &[Candidate]) -> Selection {
        select(candidates, NOW, &SelectionConfig::default())
    }

    fn state(selection: &Selection, id: u32) -> SourceState {
        selection.state_of(SourceId(id)).unwrap()
    }

    #[test]
    fn one_source_far_off_is_a_falseticker() {
        let candidates = [source(1, 0.0, 0.002), source(2, 0.0008, 0.002), source(3, 0.200, 0.002)];
        let selection = run(&candidates);
        assert_eq!(state(&selection, 3), SourceState::Falseticker);
        assert_eq!(state(&selection, 3).symbol(), 'x');
        assert!(matches!(selection.system_peer, Some(SourceId(1 | 2))));
        let combined = selection.combined.unwrap();
        assert!((combined.offset_s - 0.0004).abs() < 1e-9, "{}", combined.offset_s);
        let (lo, hi) = selection.agreed_interval.unwrap();
        assert!((lo - (0.0008 - 0.002)).abs() < 1e-12 && (hi - 0.002).abs() < 1e-12);
    }

    #[test]
    fn falseticker_is_never_system_peer_even_with_the_best_distance() {
        let candidates = [source(1, 0.0, 0.005), source(2, 0.001, 0.005), source(3, 0.200, 0.0001)];
        let selection = run(&candidates);
        assert_eq!(state(&selection, 3), SourceState::Falseticker);
        assert_ne!(selection.system_peer, Some(SourceId(3)));
    }

    #[test]
    fn two_disagreeing_sources_have_no_majority() {
        let candidates = [source(1, 0.0, 0.002), source(2, 0.200, 0.002)];
        let selection = run(&candidates);
        for id in [1, 2] {
            assert_eq!(state(&selection, id), SourceState::Unselectable(UnselectableReason::NoMajority));
        }
        assert_eq!(selection.system_peer, None);
        assert_eq!(selection.combined, None);
        assert_eq!(selection.agreed_interval, None);
    }

    #[test]
    fn a_trusted_source_wins_a_disagreement() {
        let candidates = [source(1, 0.0, 0.002), with(source(2, 0.200, 0.002), TRUST)];
        let selection = run(&candidates);
        assert_eq!(state(&selection, 1), SourceState::Falseticker);
        assert_eq!(state(&selection, 2), SourceState::Selected);
        assert_eq!(selection.combined.unwrap().offset_s, 0.200);
    }

    #[test]
    fn a_trusted_source_is_believed_against_a_majority() {
        // chrony.conf trust: it can be a falseticker only if another trusted source
        // disagrees with it.
        let candidates = [source(1, 0.0, 0.002), source(2, 0.0005, 0.002), with(source(3, 0.200, 0.002), TRUST)];
        let selection = run(&candidates);
        assert_eq!(state(&selection, 3), SourceState::Selected);
        assert_eq!(state(&selection, 1), SourceState::Falseticker);
        assert_eq!(state(&selection, 2), SourceState::Falseticker);
    }

    #[test]
    fn disagreeing_trusted_sources_need_a_trusted_majority() {
        let two = [with(source(1, 0.0, 0.002), TRUST), with(source(2, 0.200, 0.002), TRUST), source(3, 0.0, 0.002)];
        let selection = run(&two);
        assert_eq!(selection.system_peer, None);
        assert_eq!(state(&selection, 1), SourceState::Unselectable(UnselectableReason::NoMajority));

        let three = [
            with(source(1, 0.0, 0.002), TRUST),
            with(source(2, 0.200, 0.002), TRUST),
            with(source(3, 0.0005, 0.002), TRUST),
        ];
        let selection = run(&three);
        assert_eq!(state(&selection, 2), SourceState::Falseticker);
        assert!(matches!(selection.system_peer, Some(SourceId(1 | 3))));
    }

    #[test]
    fn untrusted_sources_must_lie_inside_the_trusted_range() {
        // Trusted 1: [-2, 2] ms; 2: [1, 5] ms; 3: [-0.5, 1.5] ms. Agreed: [1, 1.5] ms.
        // Source 2 contains the agreed range but reaches outside the trusted one, so it
        // could drag the offset out of it (chrony SRC_UNTRUSTED, shown as '-').
        let candidates = [with(source(1, 0.0, 0.002), TRUST), source(2, 0.003, 0.002), source(3, 0.0005, 0.001)];
        let selection = run(&candidates);
        assert_eq!(selection.agreed_interval, Some((0.001, 0.0015)));
        assert_eq!(state(&selection, 2), SourceState::NotCombined(NotCombinedReason::Untrusted));
        assert_eq!(state(&selection, 2).symbol(), '-');
        assert_eq!(state(&selection, 3), SourceState::Selected);
        assert_eq!(state(&selection, 1), SourceState::Combined);
    }

    #[test]
    fn prefer_wins_among_survivors() {
        let candidates = [source(1, 0.0, 0.001), with(source(2, 0.0005, 0.004), PREFER), source(3, 0.0002, 0.002)];
        let selection = run(&candidates);
        assert_eq!(selection.system_peer, Some(SourceId(2)));
        assert_eq!(state(&selection, 2), SourceState::Selected);
        for id in [1, 3] {
            assert_eq!(state(&selection, id), SourceState::NotCombined(NotCombinedReason::NonPreferred));
        }
        // chrony combines only the preferred sources.
        assert_eq!(selection.combined.unwrap().offset_s, 0.0005);
    }

    #[test]
    fn prefer_does_not_rescue_a_falseticker() {
        let candidates = [source(1, 0.0, 0.002), source(2, 0.0005, 0.002), with(source(3, 0.300, 0.002), PREFER)];
        let selection = run(&candidates);
        assert_eq!(state(&selection, 3), SourceState::Falseticker);
        assert!(matches!(selection.system_peer, Some(SourceId(1 | 2))));
    }

    #[test]
    fn noselect_is_shown_but_never_selected() {
        let candidates = [with(source(1, 0.0, 0.0001), NOSELECT), source(2, 0.0005, 0.002)];
        let selection = run(&candidates);
        assert_eq!(state(&selection, 1), SourceState::NoSelect);
        assert_eq!(state(&selection, 1).symbol(), '?');
        assert_eq!(selection.system_peer, Some(SourceId(2)));
        assert_eq!(selection.states.len(), 2);
        // And it does not vote in the intersection: one selectable source is a majority.
        assert_eq!(selection.combined.unwrap().offset_s, 0.0005);
    }

    #[test]
    fn require_blocks_selection_until_a_required_source_is_a_truechimer() {
        let required_falseticker =
            [source(1, 0.0, 0.002), source(2, 0.0005, 0.002), with(source(3, 0.300, 0.002), REQUIRE)];
        let selection = run(&required_falseticker);
        assert_eq!(selection.system_peer, None);
        assert_eq!(state(&selection, 3), SourceState::Falseticker);
        assert_eq!(state(&selection, 1), SourceState::Unselectable(UnselectableReason::NoRequiredSource));
        assert_eq!(state(&selection, 1).symbol(), '-');

        let mut unreachable_required = required_falseticker;
        unreachable_required[2].reachable = false;
        unreachable_required[2].estimate.offset_s = 0.0;
        let selection = run(&unreachable_required);
        assert_eq!(selection.system_peer, None);
        assert_eq!(state(&selection, 3), SourceState::NotReachable);

        let mut required_agrees = required_falseticker;
        required_agrees[2].estimate.offset_s = 0.0002;
        let selection = run(&required_agrees);
        assert!(selection.system_peer.is_some());
        assert_eq!(state(&selection, 3), SourceState::Combined);
    }

    #[test]
    fn minsources_counts_selectable_sources_and_truechimers() {
        let config = SelectionConfig { min_sources: 3, ..SelectionConfig::default() };
        let two = [source(1, 0.0, 0.002), source(2, 0.0005, 0.002)];
        let selection = select(&two, NOW, &config);
        assert_eq!(selection.system_peer, None);
        assert_eq!(state(&selection, 1), SourceState::Unselectable(UnselectableReason::TooFewSources));

        // Three selectable, but one is a falseticker: only two truechimers.
        let three = [source(1, 0.0, 0.002), source(2, 0.0005, 0.002), source(3, 0.5, 0.002)];
        let selection = select(&three, NOW, &config);
        assert_eq!(selection.system_peer, None);
        assert_eq!(state(&selection, 3), SourceState::Falseticker);
        assert_eq!(state(&selection, 2), SourceState::Unselectable(UnselectableReason::TooFewSources));

        let agreeing = [source(1, 0.0, 0.002), source(2, 0.0005, 0.002), source(3, 0.0001, 0.002)];
        assert!(select(&agreeing, NOW, &config).system_peer.is_some());
    }

    #[test]
    fn no_candidates_no_selection() {
        let selection = run(&[]);
        assert_eq!(selection, Selection { states: vec![], system_peer: None, combined: None, agreed_interval: None });
    }

    #[test]
    fn prefilter_states() {
        let mut unreachable = source(1, 0.0, 0.001);
        unreachable.reachable = false;
        let too_far = source(2, 0.0, 3.5);
        let mut jittery = source(3, 0.0, 0.001);
        jittery.estimate.jitter_s = 1.5;
        let mut unsynchronised = source(4, 0.0, 0.001);
        unsynchronised.estimate.leap = LeapIndicator::Unsynchronised;
        let mut stratum_16 = source(5, 0.0, 0.001);
        stratum_16.estimate.stratum = 16;
        let mut nan = source(6, 0.0, 0.001);
        nan.estimate.offset_s = f64::NAN;
        let good = source(7, 0.0001, 0.001);
        let selection = run(&[unreachable, too_far, jittery, unsynchronised, stratum_16, nan, good]);
        assert_eq!(state(&selection, 1), SourceState::NotReachable);
        assert_eq!(state(&selection, 2), SourceState::TooFar);
        assert_eq!(state(&selection, 3), SourceState::TooVariable);
        assert_eq!(state(&selection, 3).symbol(), '~');
        assert_eq!(state(&selection, 4), SourceState::Unselectable(UnselectableReason::Unsynchronised));
        assert_eq!(state(&selection, 5), SourceState::Unselectable(UnselectableReason::Unsynchronised));
        assert_eq!(state(&selection, 6), SourceState::TooFar);
        assert_eq!(selection.system_peer, Some(SourceId(7)));
    }

    #[test]
    fn distance_grows_with_age_until_maxdistance() {
        let mut stale = source(1, 0.0, 2.9);
        stale.estimate.time = NOW.add_seconds(-100_000.0); // + 1.5 s of PHI growth
        let selection = run(&[stale]);
        assert_eq!(state(&selection, 1), SourceState::TooFar);
    }

    #[test]
    fn system_peer_has_smallest_distance_and_stratum_weighs_in() {
        let candidates = [source(1, 0.0, 0.003), source(2, 0.0001, 0.001), source(3, 0.0002, 0.002)];
        assert_eq!(run(&candidates).system_peer, Some(SourceId(2)));

        // 0.5 ms better distance does not beat one stratum (1 ms).
        let mut higher_stratum = source(1, 0.0, 0.0015);
        higher_stratum.estimate.stratum = 2;
        let candidates = [higher_stratum, source(2, 0.0001, 0.002)];
        let selection = run(&candidates);
        assert_eq!(selection.system_peer, Some(SourceId(2)));
        assert_eq!(selection.combined.unwrap().stratum, 2);
    }

    #[test]
    fn combination_weights_by_inverse_distance() {
        let candidates = [source(1, 0.001, 0.001), source(2, 0.004, 0.002)];
        let selection = run(&candidates);
        assert_eq!(selection.system_peer, Some(SourceId(1)));
        assert_eq!(state(&selection, 2), SourceState::Combined);
        assert_eq!(state(&selection, 2).symbol(), '+');
        // Weights 1000 and 500: (1000·0.001 + 500·0.004) / 1500 = 0.002.
        let combined = selection.combined.unwrap();
        assert!((combined.offset_s - 0.002).abs() < 1e-12, "{}", combined.offset_s);
        // ψ_s = sqrt(500·0.003² / 1500).
        assert!((combined.jitter_s - (500.0 * 0.003f64.powi(2) / 1500.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn the_system_peer_keeps_its_place_until_another_is_better_by_reselectdist() {
        let current = Candidate { selected: true, ..source(1, 0.0, 0.002) };
        // 50 µs closer is not enough to switch...
        let selection = run(&[current, source(2, 0.0, 0.00195)]);
        assert_eq!(selection.system_peer, Some(SourceId(1)));
        // ...150 µs is; and with no current peer the closer one wins outright.
        let selection = run(&[current, source(2, 0.0, 0.00185)]);
        assert_eq!(selection.system_peer, Some(SourceId(2)));
        let selection = run(&[source(1, 0.0, 0.002), source(2, 0.0, 0.00195)]);
        assert_eq!(selection.system_peer, Some(SourceId(2)));
    }

    #[test]
    fn combinelimit_leaves_distant_sources_out() {
        let candidates = [source(1, 0.0, 0.001), source(2, 0.0005, 0.0031)];
        let selection = run(&candidates);
        assert_eq!(state(&selection, 2), SourceState::NotCombined(NotCombinedReason::Distant));
        assert_eq!(selection.combined.unwrap().offset_s, 0.0);

        let only_peer = SelectionConfig { combine_limit: 0.0, ..SelectionConfig::default() };
        let candidates = [source(1, 0.0, 0.001), source(2, 0.0005, 0.001)];
        let selection = select(&candidates, NOW, &only_peer);
        assert_eq!(selection.combined.unwrap().offset_s, 0.0);
        assert_eq!(state(&selection, 2), SourceState::NotCombined(NotCombinedReason::Distant));
    }

    #[test]
    fn system_estimate_root_values() {
        let mut peer = source(1, 0.0, 0.0);
        peer.estimate = SourceEstimate {
            time: NOW.add_seconds(-100.0),
            offset_s: 0.001,
            delay_s: 0.010,
            dispersion_s: 0.002,
            jitter_s: 0.0003,
            root_delay_s: 0.020,
            root_dispersion_s: 0.004,
            stratum: 2,
            leap: LeapIndicator::NoWarning,
        };
        let combined = run(&[peer]).combined.unwrap();
        assert_eq!(combined.reference, SourceId(1));
        assert_eq!(combined.stratum, 3);
        assert!((combined.root_delay_s - 0.030).abs() < 1e-12);
        let expected = 0.004 + 0.002 + 15e-6 * 100.0 + 0.0003;
        assert!((combined.root_dispersion_s - expected).abs() < 1e-12, "{}", combined.root_dispersion_s);

        // A refclock (stratum 0) makes the system stratum 1.
        let refclock = Candidate { estimate: SourceEstimate { stratum: 0, ..peer.estimate }, ..peer };
        assert_eq!(run(&[refclock]).combined.unwrap().stratum, 1);
    }

    #[test]
    fn leap_is_a_majority_vote_of_truechimers() {
        let leap = |mut candidate: Candidate, leap: LeapIndicator| {
            candidate.estimate.leap = leap;
            candidate
        };
        let two_of_three = [
            leap(source(1, 0.0, 0.002), LeapIndicator::InsertSecond),
            leap(source(2, 0.0001, 0.002), LeapIndicator::InsertSecond),
            source(3, 0.0002, 0.002),
        ];
        assert_eq!(run(&two_of_three).combined.unwrap().leap, LeapIndicator::InsertSecond);

        let one_of_three = [
            leap(source(1, 0.0, 0.002), LeapIndicator::InsertSecond),
            source(2, 0.0001, 0.002),
            source(3, 0.0002, 0.002),
        ];
        assert_eq!(run(&one_of_three).combined.unwrap().leap, LeapIndicator::NoWarning);

        let tie = [leap(source(1, 0.0, 0.002), LeapIndicator::DeleteSecond), source(2, 0.0001, 0.002)];
        assert_eq!(run(&tie).combined.unwrap().leap, LeapIndicator::NoWarning);

        // A falseticker's announcement does not count, a non-combined truechimer's does.
        let votes = [
            leap(source(1, 0.0, 0.001), LeapIndicator::DeleteSecond),
            leap(source(2, 0.0001, 0.0099), LeapIndicator::DeleteSecond),
            source(3, 0.0002, 0.001),
            leap(source(4, 0.5, 0.001), LeapIndicator::InsertSecond),
        ];
        let selection = run(&votes);
        assert_eq!(state(&selection, 4), SourceState::Falseticker);
        assert_eq!(state(&selection, 2), SourceState::NotCombined(NotCombinedReason::Distant));
        assert_eq!(selection.combined.unwrap().leap, LeapIndicator::DeleteSecond);
    }

    #[test]
    fn ambiguous_equal_depth_ranges_are_spanned_like_chrony() {
        // 1 agrees with both 2 and 3, which disagree with each other: chrony keeps all.
        let candidates = [source(1, 0.005, 0.005), source(2, 0.0005, 0.0005), source(3, 0.0095, 0.0005)];
        let selection = run(&candidates);
        assert_eq!(selection.agreed_interval, Some((0.0, 0.01)));
        for id in [1, 2, 3] {
            assert_ne!(state(&selection, id), SourceState::Falseticker);
        }
    }

    #[test]
    fn symbols_match_chronyc() {
        use SourceState::*;
        let symbols: String = [
            Selected,
            Combined,
            NotCombined(NotCombinedReason::Distant),
            Falseticker,
            TooVariable,
            NotReachable,
            TooFar,
            NoSelect,
        ]
        .iter()
        .map(|state| state.symbol())
        .collect();
        assert_eq!(symbols, "*+-x~???");
    }

    fn candidate_strategy() -> impl Strategy<Value = (f64, f64, u8, bool, bool)> {
        // offset, root distance, stratum, trust, prefer
        (-0.5f64..0.5, 0.0001f64..0.5, 0u8..4, proptest::bool::weighted(0.15), proptest::bool::weighted(0.2))
    }

    fn build(specs: &[(f64, f64, u8, bool, bool)]) -> Vec<Candidate> {
        specs
            .iter()
            .enumerate()
            .map(|(i, &(offset_s, distance_s, stratum, trust, prefer))| {
                let mut candidate = source(i as u32, offset_s, distance_s);
                candidate.estimate.stratum = stratum;
                candidate.options.trust = trust;
                candidate.options.prefer = prefer;
                candidate
            })
            .collect()
    }

    proptest! {
        #[test]
        fn selection_invariants(specs in proptest::collection::vec(candidate_strategy(), 0..8)) {
            let candidates = build(&specs);
            let selection = select(&candidates, NOW, &SelectionConfig::default());
            prop_assert_eq!(selection.states.len(), candidates.len());
            prop_assert_eq!(selection.system_peer.is_some(), selection.combined.is_some());
            let peers = selection.states.iter().filter(|(_, state)| *state == SourceState::Selected).count();
            prop_assert_eq!(peers, usize::from(selection.system_peer.is_some()));

            if let Some(combined) = selection.combined {
                let (best_lo, best_hi) = selection.agreed_interval.unwrap();
                prop_assert!(best_lo <= best_hi);
                let mut offsets = Vec::new();
                for (candidate, &(id, state)) in candidates.iter().zip(&selection.states) {
                    let (lo, hi) = candidate.estimate.interval(NOW);
                    match state {
                        SourceState::Selected | SourceState::Combined => {
                            // Every selected source agrees with the agreed interval …
                            prop_assert!(lo <= best_hi && hi >= best_lo, "{id:?} {lo} {hi}");
                            offsets.push(candidate.estimate.offset_s);
                        }
                        SourceState::Falseticker => prop_assert!(!(lo <= best_lo && hi >= best_hi)),
                        _ => {}
                    }
                }
                // … and the system offset is a convex combination of theirs.
                let min = offsets.iter().copied().fold(f64::INFINITY, f64::min);
                let max = offsets.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                prop_assert!(min - 1e-12 <= combined.offset_s && combined.offset_s <= max + 1e-12);
                prop_assert_eq!(Some(combined.reference), selection.system_peer);
            }
        }

        #[test]
        fn agreeing_sources_are_never_falsetickers(
            truth in -0.5f64..0.5,
            specs in proptest::collection::vec((-1.0f64..1.0, 0.0001f64..0.5), 1..8),
        ) {
            // Every interval contains `truth`: all of them share a common point.
            let candidates: Vec<Candidate> = specs
                .iter()
                .enumerate()
                .map(|(i, &(fraction, distance_s))| source(i as u32, truth + fraction * distance_s, distance_s))
                .collect();
            let selection = select(&candidates, NOW, &SelectionConfig::default());
            prop_assert!(selection.system_peer.is_some());
            for &(_, state) in &selection.states {
                prop_assert!(
                    matches!(state, SourceState::Selected | SourceState::Combined | SourceState::NotCombined(_)),
                    "{state:?}"
                );
            }
            // The agreed interval is where they all overlap, so it holds the common point.
            let (best_lo, best_hi) = selection.agreed_interval.unwrap();
            prop_assert!(best_lo <= truth + 1e-12 && truth <= best_hi + 1e-12);
        }
    }
}
