//! Every channel's decoder on arbitrary frames: the first byte picks the channel,
//! the rest is the frame. Decoding must never panic; what decodes must encode
//! within the frame limit and survive encode → decode → encode bit for bit (bytes,
//! not values: NaN is not equal to itself). The handshake check must not panic for
//! any role either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_proto::ipc::{
    self, AdjusterToControl, AdjusterToEngine, ChildToSupervisor, ControlToAdjuster, ControlToEngine,
    ControlToRefclock, EngineToAdjuster, EngineToControl, EngineToRefclock, MAX_FRAME, Message, RefclockToControl,
    RefclockToEngine, Role, SupervisorToChild,
};

fn round_trip<M: Message>(frame: &[u8]) {
    let Ok(msg) = ipc::decode::<M>(frame) else {
        return;
    };
    let mut buf = vec![0u8; MAX_FRAME];
    let first = ipc::encode(&msg, &mut buf).expect("a decoded message encodes").to_vec();
    let again: M = ipc::decode(&first).expect("an encoded message decodes");
    let mut buf2 = vec![0u8; MAX_FRAME];
    assert_eq!(ipc::encode(&again, &mut buf2).expect("encodes"), &first[..], "{msg:?} changed in a round trip");
}

fuzz_target!(|data: &[u8]| {
    let Some((&channel, frame)) = data.split_first() else {
        return;
    };
    for role in [Role::Supervisor, Role::Ntp, Role::Refclock, Role::Adjust, Role::Control] {
        let _ = ipc::decode_hello(frame, role);
    }
    match channel % 12 {
        0 => round_trip::<SupervisorToChild>(frame),
        1 => round_trip::<ChildToSupervisor>(frame),
        2 => round_trip::<EngineToAdjuster>(frame),
        3 => round_trip::<AdjusterToEngine>(frame),
        4 => round_trip::<RefclockToEngine>(frame),
        5 => round_trip::<EngineToRefclock>(frame),
        6 => {
            round_trip::<ControlToEngine>(frame);
            // The engine parses a run-time access rule itself.
            if let Ok(ControlToEngine::Access { rule, .. }) = ipc::decode::<ControlToEngine>(frame) {
                let _ = strata_proto::access::AccessList::parse(&[format!("allow {rule}")]);
            }
        }
        7 => round_trip::<EngineToControl>(frame),
        8 => round_trip::<ControlToAdjuster>(frame),
        9 => round_trip::<AdjusterToControl>(frame),
        10 => round_trip::<ControlToRefclock>(frame),
        _ => round_trip::<RefclockToControl>(frame),
    }
});
