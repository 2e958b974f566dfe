//! The named scenarios of `cargo xtask sim`.

use super::run::Scenario;
use super::world::{Path, Server};

/// Simulated length of every scenario.
pub const DURATION_S: f64 = 6.0 * 3600.0;

/// Where every scenario starts unless it says otherwise: the clock 10 ms behind and
/// losing 15 ppm (a typical crystal), wandering a little.
const OFFSET_S: f64 = 0.010;
const NATURAL_PPM: f64 = -15.0;
const WANDER_PPM_PER_SQRT_S: f64 = 0.001;

/// A LAN: 200 µs round trip, 20 µs mean queueing each way.
pub const LAN: Path = Path { delay_s: 200e-6, asymmetry: 0.0, jitter_s: 20e-6, loss: 0.0 };

/// An internet path: 20 ms round trip, 5 ms mean queueing each way, the request's way
/// 10 % of the base delay longer than the reply's (1 ms of offset bias NTP cannot see).
pub const WAN: Path = Path { delay_s: 20e-3, asymmetry: 0.1, jitter_s: 5e-3, loss: 0.0 };

fn base(name: &'static str, about: &'static str, servers: Vec<Server>, poll_s: f64) -> Scenario {
    Scenario {
        name,
        about,
        servers,
        poll_s,
        duration_s: DURATION_S,
        initial_offset_s: OFFSET_S,
        natural_ppm: NATURAL_PPM,
        wander_ppm_per_sqrt_s: WANDER_PPM_PER_SQRT_S,
        converged_below_s: 1e-3,
    }
}

pub fn all() -> Vec<Scenario> {
    let lan3 = vec![Server::good(LAN); 3];
    vec![
        base("lan", "3 servers on a LAN (200 µs, 20 µs jitter), poll 16 s", lan3.clone(), 16.0),
        Scenario {
            // The 1 ms bias of the asymmetry is invisible to NTP: the threshold is 2 ms.
            converged_below_s: 2e-3,
            ..base(
                "wan-jitter",
                "3 servers over the internet (20 ms, 5 ms exponential jitter, 10 % asymmetry), poll 64 s",
                vec![Server::good(WAN); 3],
                64.0,
            )
        },
        base(
            "falseticker",
            "the lan servers and a fourth one 200 ms off, poll 16 s",
            [lan3.clone(), vec![Server::falseticker(LAN, 0.2)]].concat(),
            16.0,
        ),
        base(
            "lossy",
            "the lan servers, 30 % of exchanges lost, poll 16 s",
            vec![Server::good(Path { loss: 0.3, ..LAN }); 3],
            16.0,
        ),
        Scenario {
            initial_offset_s: 1.5,
            natural_ppm: -30.0,
            ..base(
                "bad-start",
                "the lan, the clock starts 1.5 s behind and losing 30 ppm (makestep 1.0 3)",
                lan3.clone(),
                16.0,
            )
        },
        Scenario {
            initial_offset_s: 0.5,
            natural_ppm: -30.0,
            ..base(
                "slew-start",
                "the lan, the clock starts 0.5 s behind and losing 30 ppm: under makestep's 1 s, slewed at 500 ppm",
                lan3.clone(),
                16.0,
            )
        },
        Scenario {
            wander_ppm_per_sqrt_s: 0.02,
            ..base("wander", "the lan, the frequency a random walk of 0.02 ppm/√s, poll 64 s", lan3, 64.0)
        },
        base("single-server", "one lan server, poll 64 s", vec![Server::good(LAN)], 64.0),
    ]
}
