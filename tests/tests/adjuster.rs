//! The clock adjuster enforces its own policy (policy/clock.toml: slew 500 ppm,
//! frequency 500 ppm, panic 1000 s, 4 steps per boot, 600 s makestep window),
//! whoever asks. The test plays a compromised engine against the real binary,
//! driving a simulated clock whose model file it reads back.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata_process::channel::{Channel, RecvError};
use strata_proto::clock_model::{ClockModel, RECORD_LEN};
use strata_proto::ipc::{
    AdjustSettings, AdjusterToEngine, ChildToSupervisor, ClockBackendKind, ClockStatus, ControlToAdjuster,
    EngineToAdjuster, MAX_FRAME, Resource, Role, Settings, UnlinkReason,
};
use strata_tests::appliance::{Appliance, StatusExt};
use strata_tests::standalone::Standalone;
use strata_tests::{require_root, scratch_dir};

const WAIT: Duration = Duration::from_secs(5);

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
}

fn model_file(name: &str, model: ClockModel) -> (std::path::PathBuf, File) {
    let path = scratch_dir(name).join("clock-model");
    let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    file.write_all_at(&model.encode(1), 0).unwrap();
    (path, file)
}

fn read_model(file: &File) -> ClockModel {
    let mut r = [0u8; RECORD_LEN];
    file.read_at(&mut r, 0).unwrap();
    ClockModel::decode(&r).expect("a valid model").1
}

/// The adjuster alone on a simulated clock; the automatic-step window is open or closed.
fn adjuster(model: &File, window_open: bool) -> Standalone {
    let fd = OwnedFd::from(model.try_clone().unwrap());
    // The window is on CLOCK_BOOTTIME, not on the clock being adjusted: a window
    // read as system time would be decades closed.
    let boot = strata_sys::boottime_ns();
    let until = if window_open { boot + 600_000_000_000 } else { boot - 1 };
    let settings = Settings::Adjust(AdjustSettings {
        backend: ClockBackendKind::Simulated,
        steps_left: 4,
        automatic_steps_until_boot_ns: until,
        max_slew_rate_ppm: strata_policy::clock::MAX_SLEW_RATE_PPM,
    });
    Standalone::start_with(settings, vec![(Resource::ClockModel { writable: true }, fd)])
}

/// Link as `peer`, handshake, and return the channel.
fn link(process: &Standalone, peer: Role) -> (Channel, u64) {
    let (ch, link) = process.link(peer);
    let mut buf = [0u8; 32];
    ch.send_frame(strata_proto::ipc::encode_hello(peer, &mut buf), None).unwrap();
    assert_eq!(process.next_report(WAIT), Some(ChildToSupervisor::Linked { peer, link }));
    (ch, link)
}

/// The adjuster's next answer to the engine after its handshake.
fn answer(ch: &Channel) -> AdjusterToEngine {
    let mut buf = vec![0u8; MAX_FRAME];
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match ch.recv_frame(&mut buf) {
            Ok((frame, None)) if frame[0] != 0 => return strata_proto::ipc::decode(frame).unwrap(),
            Ok(_) | Err(RecvError::WouldBlock) => {
                assert!(std::time::Instant::now() < deadline, "no answer from the adjuster");
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("engine channel: {e}"),
        }
    }
}

/// The adjuster's refusal of the last request, and the status it sends after it.
fn refused(ch: &Channel) -> (String, ClockStatus) {
    let reason = match answer(ch) {
        AdjusterToEngine::Refused { reason, .. } => reason,
        other => panic!("expected a refusal, got {other:?}"),
    };
    match answer(ch) {
        AdjusterToEngine::Status(status) => (reason, status),
        other => panic!("expected the status after a refusal, got {other:?}"),
    }
}

#[test]
fn a_compromised_engine_cannot_move_the_clock_beyond_the_policy() {
    let start = ClockModel { reference_ns: now_ns(), ..ClockModel::default() };
    let (_, model) = model_file("compromised-engine", start);
    let mut process = adjuster(&model, false);
    let (engine, _) = link(&process, Role::Ntp);
    assert!(matches!(answer(&engine), AdjusterToEngine::Status(_)), "status on link");

    // Not finite: a protocol violation, the engine is cut off; the clock untouched.
    for request in [
        EngineToAdjuster::Slew { offset_s: f64::NAN },
        EngineToAdjuster::Step { offset_s: f64::INFINITY },
        EngineToAdjuster::SetFrequency { ppm: f64::NEG_INFINITY },
    ] {
        let (ch, link) = link(&process, Role::Ntp);
        ch.send(&request, None).unwrap();
        assert_eq!(
            process.next_report(WAIT),
            Some(ChildToSupervisor::Unlinked { peer: Role::Ntp, link, reason: UnlinkReason::Violation }),
            "{request:?}"
        );
    }
    let (engine, _) = link(&process, Role::Ntp);
    let _ = answer(&engine);
    assert_eq!(read_model(&model), start, "the clock moved");

    // Beyond the policy: refused, the clock untouched.
    engine.send(&EngineToAdjuster::SetFrequency { ppm: 1e6 }, None).unwrap();
    assert!(refused(&engine).0.contains("beyond the policy's 500 ppm"));
    engine.send(&EngineToAdjuster::Step { offset_s: 0.5 }, None).unwrap();
    // The status says why, so that an honest engine slews instead of asking again.
    let (reason, status) = refused(&engine);
    assert!(reason.contains("outside the makestep window"), "{reason}");
    assert!(!status.automatic_steps_allowed, "{status:?}");
    assert_eq!(read_model(&model), start, "the clock moved");

    // A flood of huge slews: the clock is never slewed faster than the policy. (If the
    // flood outruns our reading of the answers, the adjuster drops us as a peer that
    // does not read: also fine.)
    let mut buf = vec![0u8; MAX_FRAME];
    for _ in 0..10_000 {
        if engine.send(&EngineToAdjuster::Slew { offset_s: 999.0 }, None).is_err() {
            break;
        }
        while engine.recv_frame(&mut buf).is_ok() {}
    }
    std::thread::sleep(Duration::from_millis(100));
    let slewing = read_model(&model);
    let policy_ppm = strata_policy::clock::MAX_SLEW_RATE_PPM;
    assert_eq!(slewing.slew_ppm, policy_ppm, "{slewing:?}");
    let t = now_ns();
    let gained = slewing.offset_at(t + 1_000_000_000) - slewing.offset_at(t);
    assert!(gained <= policy_ppm * 1e-6 + 1e-12, "gained {gained} s in one second");
    // Within the policy: applied.
    while process.next_report(Duration::from_millis(100)).is_some() {}
    let (engine, _) = link(&process, Role::Ntp);
    engine.send(&EngineToAdjuster::SetFrequency { ppm: 400.0 }, None).unwrap();
    while !matches!(answer(&engine), AdjusterToEngine::Status(s) if s.frequency_ppm == 400.0) {}
    assert_eq!(read_model(&model).correction_ppm, 400.0);
    assert!(process.running());

    // Beyond the panic threshold: the adjuster exits with the do-not-respawn status.
    engine.send(&EngineToAdjuster::Slew { offset_s: 5000.0 }, None).unwrap();
    let status = strata_tests::wait_for("the adjuster to exit", WAIT, || process.exit_code());
    assert_eq!(status, i32::from(strata_proto::ipc::EXIT_DO_NOT_RESPAWN));
}

#[test]
fn an_operator_makestep_allows_exactly_one_step_outside_the_window() {
    let start = ClockModel { reference_ns: now_ns(), ..ClockModel::default() };
    let (_, model) = model_file("operator-step", start);
    let process = adjuster(&model, false);
    let (engine, _) = link(&process, Role::Ntp);
    let (control, _) = link(&process, Role::Control);
    let _ = answer(&engine);
    control.send(&ControlToAdjuster::MakeStep, None).unwrap();
    while !matches!(answer(&engine), AdjusterToEngine::Status(s) if s.operator_step_authorised) {}

    engine.send(&EngineToAdjuster::Step { offset_s: 0.25 }, None).unwrap();
    assert_eq!(process.next_report(WAIT), Some(ChildToSupervisor::StepTaken));
    let stepped = read_model(&model);
    assert!((stepped.offset_at(now_ns()) - 0.25).abs() < 1e-6, "{stepped:?}");

    engine.send(&EngineToAdjuster::Step { offset_s: 0.25 }, None).unwrap();
    loop {
        if let AdjusterToEngine::Refused { reason, .. } = answer(&engine) {
            assert!(reason.contains("outside the makestep window"), "{reason}");
            break;
        }
    }
    assert_eq!(read_model(&model), stepped);
}

/// The engine's end of its channel to the adjuster, taken from the running engine.
fn engine_to_adjuster(engine: u32, adjuster: u32) -> Channel {
    let ss = std::process::Command::new("ss").args(["-xpHn"]).output().unwrap();
    let text = String::from_utf8_lossy(&ss.stdout);
    // "u_seq ESTAB 0 0 * <inode> * <peer inode> users:(("name",pid=N,fd=F))"
    let sockets: Vec<(u64, u64, u32, i32)> = text
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let users = w.get(8)?;
            let pid = users.split("pid=").nth(1)?.split(',').next()?.parse().ok()?;
            let fd = users.split("fd=").nth(1)?.trim_end_matches(')').parse().ok()?;
            Some((w[5].parse().ok()?, w[7].parse().ok()?, pid, fd))
        })
        .collect();
    let (_, _, _, fd) = sockets
        .iter()
        .find(|&&(_, peer, pid, _)| {
            pid == engine && sockets.iter().any(|&(inode, _, p, _)| inode == peer && p == adjuster)
        })
        .unwrap_or_else(|| panic!("no channel from {engine} to {adjuster} in:\n{text}"));
    Channel::from_fd(strata_sys::duplicate_descriptor_of(engine, *fd).unwrap())
}

#[test]
fn the_step_budget_survives_a_killed_adjuster() {
    if !require_root("step budget") {
        return;
    }
    let start = ClockModel { reference_ns: now_ns(), ..ClockModel::default() };
    let dir = scratch_dir("step-budget");
    let path = dir.join("clock-model");
    std::fs::write(&path, start.encode(1)).unwrap();
    let clock = format!("backend = \"simulated:{}\"", path.display());
    let mut appliance = Appliance::start_with_clock("step-budget", None, &clock);
    let model = File::open(&path).unwrap();

    let step = |appliance: &Appliance| {
        let ch = engine_to_adjuster(appliance.pid_of("ntp"), appliance.pid_of("adjust"));
        ch.send(&EngineToAdjuster::Step { offset_s: 0.1 }, None).unwrap();
    };
    for expected in 1..=2 {
        step(&appliance);
        appliance.wait_until("a step counted", WAIT, |s| s.clock_steps_used == expected);
    }
    appliance.kill_and_wait_replacement("adjust");
    for expected in 3..=4 {
        step(&appliance);
        appliance.wait_until("a step counted", WAIT, |s| s.clock_steps_used == expected);
    }
    appliance.kill_and_wait_replacement("adjust");
    step(&appliance);
    std::thread::sleep(Duration::from_millis(300));
    let status = appliance.status();
    assert_eq!((status.clock_steps_used, status.clock_step_budget), (4, 4));
    let offset = read_model(&model).offset_at(now_ns());
    assert!((offset - 0.4).abs() < 1e-6, "four steps of 0.1 s, got {offset}");
    assert!(appliance.log().contains("the step budget of this boot is used up"), "{}", appliance.log());
    assert_eq!(status.of("adjust").state, "ready");
}
