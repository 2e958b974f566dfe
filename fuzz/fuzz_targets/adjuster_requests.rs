//! The adjuster's boundary: a sequence of frames from the engine and the control
//! plane, each decoded as the adjuster decodes it and judged by its policy, while
//! the boot clock moves on. Nothing may panic, and whatever the frames say the
//! policy keeps its promises: no slew faster than the policy's rate, no frequency
//! beyond its limit, no correction beyond the panic threshold applied, a non-finite
//! number always a violation, no step without budget or outside the window unless
//! an operator authorised it (once), and never more steps than the budget.
//!
//! Input: records of [what, length, frame...]; `what` 0 is the engine, 1 the
//! control plane, 2 advances the boot clock by `length` × 10 s. The first four
//! bytes set the start: the steps left, and the window's length in 10 s units.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_adjust::clock::Change;
use strata_adjust::policy::{Breach, ClockPolicy, Verdict};
use strata_policy::clock as limits;
use strata_process::child::decode_peer;
use strata_proto::ipc::{ClockRequestKind, ControlToAdjuster, EngineToAdjuster};

const TEN_S: i64 = 10_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((head, mut rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let budget = u32::from(head[0]);
    let mut boot_ns = i64::from(head[1]) * TEN_S;
    let window_end = i64::from(u16::from_le_bytes([head[2], head[3]])) * TEN_S;
    let slew_rate = f64::from(head[0]) * 1000.0 - 1000.0;
    let mut policy = ClockPolicy::new(budget, window_end, slew_rate);
    let initial_steps = policy.steps_left;
    assert!(initial_steps <= limits::STEP_BUDGET_PER_BOOT);
    assert!(policy.slew_rate_ppm > 0.0 && policy.slew_rate_ppm <= limits::MAX_SLEW_RATE_PPM);
    let mut steps_taken = 0;

    while let Some((&[what, len], body)) = rest.split_first_chunk::<2>() {
        let len = usize::from(len).min(body.len());
        let (frame, next) = body.split_at(len);
        rest = next;
        match what % 3 {
            0 => {
                let Ok(request) = decode_peer::<EngineToAdjuster>(frame) else { continue };
                let Some(judged) = policy.check(&request, boot_ns) else {
                    assert!(matches!(
                        request,
                        EngineToAdjuster::ReadStatus | EngineToAdjuster::SetLeap(_) | EngineToAdjuster::Hello(_)
                    ));
                    continue;
                };
                let (value, is_offset) = match request {
                    EngineToAdjuster::Slew { offset_s } | EngineToAdjuster::Step { offset_s } => (offset_s, true),
                    EngineToAdjuster::SetFrequency { ppm } => (ppm, false),
                    other => panic!("{other:?} judged as a clock change"),
                };
                match judged {
                    Err(Breach::Violation(_)) => assert!(!value.is_finite(), "{request:?} called a violation"),
                    Err(Breach::Panic(_)) => {
                        assert!(is_offset && value.abs() > limits::PANIC_THRESHOLD_S, "{request:?} panicked")
                    }
                    Ok((kind, Verdict::Refuse(_))) => {
                        assert!(value.is_finite());
                        match kind {
                            ClockRequestKind::SetFrequency => assert!(value.abs() > limits::MAX_FREQUENCY_PPM),
                            ClockRequestKind::Step => assert!(
                                policy.steps_left == 0
                                    || (!policy.automatic_steps_allowed(boot_ns) && !policy.operator_step_authorised)
                            ),
                            other => panic!("{other:?} refused"),
                        }
                    }
                    Ok((_, Verdict::Apply(change))) => {
                        assert!(value.is_finite(), "{request:?} applied");
                        match change {
                            Change::Slew { offset_s, rate_ppm } => {
                                assert_eq!(offset_s.to_bits(), value.to_bits());
                                assert!(rate_ppm > 0.0 && rate_ppm <= limits::MAX_SLEW_RATE_PPM, "{rate_ppm}");
                                assert!(offset_s.abs() <= limits::PANIC_THRESHOLD_S);
                            }
                            Change::Frequency { ppm } => assert!(ppm.abs() <= limits::MAX_FREQUENCY_PPM),
                            Change::Step { offset_s } => {
                                assert!(offset_s.abs() <= limits::PANIC_THRESHOLD_S);
                                assert!(policy.steps_left > 0);
                                assert!(policy.automatic_steps_allowed(boot_ns) || policy.operator_step_authorised);
                                assert!(boot_ns < window_end || policy.operator_step_authorised);
                                steps_taken += 1;
                            }
                        }
                        let before = policy.steps_left;
                        policy.applied(change);
                        if let Change::Step { .. } = change {
                            assert_eq!(policy.steps_left, before - 1);
                            assert!(!policy.operator_step_authorised, "an authorisation used twice");
                        }
                    }
                }
            }
            1 => match decode_peer::<ControlToAdjuster>(frame) {
                Ok(ControlToAdjuster::MakeStep) => {
                    let left = policy.steps_left;
                    assert_eq!(policy.authorise_operator_step().is_ok(), left > 0);
                }
                Ok(_) | Err(_) => {}
            },
            _ => boot_ns = boot_ns.saturating_add(i64::from(len as u8) * TEN_S),
        }
        assert!(steps_taken <= initial_steps, "{steps_taken} steps with a budget of {initial_steps}");
    }
});
