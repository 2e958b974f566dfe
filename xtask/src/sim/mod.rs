//! `cargo xtask sim`: strata's time keeping (strata-sync's clock filter, source
//! selection and discipline, the real code) against a deterministic virtual world —
//! a drifting local clock driven as the adjuster drives it, upstream servers with
//! their own errors, network paths with delay, jitter, asymmetry and loss — in
//! simulated time. One table, reproducible from the seed (see BENCHMARKS.md).
//!
//! - `rng`: the seeded PRNG; `clock`: the virtual clock and the adjuster's rules;
//! - `world`: servers, paths and the NTP exchange; `run`: the loop and its figures;
//! - `scenarios`: the named worlds.

mod clock;
mod rng;
mod run;
mod scenarios;
mod world;

use std::fmt::Write as _;

use crate::Result;
use run::{Outcome, Scenario, Summary};

/// The seed of the figures in BENCHMARKS.md.
const DEFAULT_SEED: u64 = 1;

fn usage() -> String {
    let mut usage = String::from(
        "usage: cargo xtask sim [--scenario NAME] [--seed N] [--hours H] [--trace]

Runs strata-sync's filter, selection and discipline against a simulated world
(default: every scenario, 6 simulated hours each, seed 1) and prints one table.

scenarios:",
    );
    for scenario in scenarios::all() {
        let _ = write!(usage, "\n  {:<14} {}", scenario.name, scenario.about);
    }
    usage
}

struct Options {
    scenario: Option<String>,
    seed: u64,
    hours: Option<f64>,
    trace: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options { scenario: None, seed: DEFAULT_SEED, hours: None, trace: false };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value\n{}", usage()));
        match arg.as_str() {
            "--scenario" => options.scenario = Some(value()?.clone()),
            "--seed" => {
                let v = value()?;
                options.seed = v.parse().map_err(|_| format!("--seed: not a number: {v:?}"))?;
            }
            "--hours" => {
                let v = value()?;
                let hours: f64 = v.parse().map_err(|_| format!("--hours: not a number: {v:?}"))?;
                if !(hours > 0.0 && hours <= 24.0 * 30.0) {
                    return Err("--hours: above 0, at most 720".into());
                }
                options.hours = Some(hours);
            }
            "--trace" => options.trace = true,
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown option {other:?}\n{}", usage())),
        }
    }
    Ok(options)
}

pub fn main(args: &[String]) -> Result {
    let options = parse(args)?;
    let mut chosen = scenarios::all();
    if let Some(name) = &options.scenario {
        chosen.retain(|s| s.name == name);
        if chosen.is_empty() {
            return Err(format!("no scenario {name:?}\n{}", usage()));
        }
    }
    if let Some(hours) = options.hours {
        for scenario in &mut chosen {
            scenario.duration_s = hours * 3600.0;
        }
    }
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    for scenario in &chosen {
        let outcome = run::run(scenario, options.seed, options.trace)
            .map_err(|e| format!("{} (seed {}): {e}", scenario.name, options.seed))?;
        rows.push((scenario, outcome));
    }
    print!("{}", table(&rows, options.seed));
    eprintln!("sim: {} scenario(s) in {:.2} s of wall-clock time", rows.len(), started.elapsed().as_secs_f64());
    Ok(())
}

fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s < 3600 { format!("{}m{:02}s", s / 60, s % 60) } else { format!("{}h{:02}m", s / 3600, s % 3600 / 60) }
}

fn micros(seconds: f64) -> String {
    if seconds.is_nan() {
        "—".into()
    } else if seconds < 0.01 {
        format!("{:.1}", seconds * 1e6)
    } else {
        format!("{:.0}", seconds * 1e6)
    }
}

fn millis_or_micros(seconds: f64) -> String {
    if seconds >= 1e-3 { format!("{} ms", seconds * 1e3) } else { format!("{} µs", seconds * 1e6) }
}

fn table(rows: &[(&Scenario, Outcome)], seed: u64) -> String {
    let mut out = String::new();
    let hours: Vec<String> = rows.iter().map(|(s, _)| format!("{}", s.duration_s / 3600.0)).collect();
    let _ =
        writeln!(out, "strata-sync against the simulated world, {} h simulated per scenario, seed {seed}\n", hours[0]);
    let _ = writeln!(
        out,
        "| scenario      | srv | poll | start             | converged (below) | RMS offset µs | max offset µs | RMS freq err ppm | RMS offset, 2nd half µs | steps | falseticker used | updates | seed |"
    );
    let _ = writeln!(
        out,
        "|---------------|----:|-----:|-------------------|-------------------|--------------:|--------------:|-----------------:|------------------------:|------:|-----------------:|--------:|-----:|"
    );
    for (scenario, outcome) in rows {
        let Summary {
            converged_after_s,
            rms_offset_s,
            max_offset_s,
            rms_frequency_error_ppm,
            rms_offset_second_half_s,
        } = outcome.summary(scenario.converged_below_s);
        let converged = match converged_after_s {
            Some(s) => format!("{} (<{})", duration(s), millis_or_micros(scenario.converged_below_s)),
            None => format!("never (<{})", millis_or_micros(scenario.converged_below_s)),
        };
        let start = format!("{:+} ms, {:+} ppm", scenario.initial_offset_s * 1e3, scenario.natural_ppm);
        let falsetickers = scenario.servers.iter().filter(|s| s.falseticker).count();
        let used = match (falsetickers, outcome.falseticker_polls) {
            (0, _) => "—".to_string(),
            (_, None) => "0".to_string(),
            (_, Some((first, last))) => format!("{} (polls {first}–{last})", outcome.falseticker_used),
        };
        let steps = if outcome.refused > 0 {
            format!("{} ({} refused)", outcome.steps, outcome.refused)
        } else {
            outcome.steps.to_string()
        };
        let freq =
            if rms_frequency_error_ppm.is_nan() { "—".into() } else { format!("{rms_frequency_error_ppm:.4}") };
        let _ = writeln!(
            out,
            "| {:<13} | {:>3} | {:>4} | {:<17} | {:<17} | {:>13} | {:>13} | {:>16} | {:>23} | {:>5} | {:>16} | {:>7} | {:>4} |",
            scenario.name,
            scenario.servers.len(),
            scenario.poll_s,
            start,
            converged,
            micros(rms_offset_s),
            micros(max_offset_s),
            freq,
            micros(rms_offset_second_half_s),
            steps,
            used,
            outcome.updates,
            seed,
        );
    }
    let _ = writeln!(
        out,
        "\nstart: true time − local clock, and the oscillator's own frequency error (negative: slow).\n\
         converged: the first poll from which |true offset| stays below the threshold to the end;\n\
         the RMS and max figures are over the polls from then on; \"2nd half\": over the last half\n\
         of the run. offset = true time − local clock at each poll (not the measured offset).\n\
         falseticker used: polls at which it was the system peer or combined.\n\
         updates: polls at which the discipline was fed (a new sample of a combined source)."
    );
    let unsynchronised: Vec<String> = rows
        .iter()
        .filter(|(_, outcome)| outcome.unsynchronised_polls > 0)
        .map(|(scenario, outcome)| format!("{} {}", scenario.name, outcome.unsynchronised_polls))
        .collect();
    if !unsynchronised.is_empty() {
        let _ = writeln!(out, "polls without a selection (filters filling): {}", unsynchronised.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_lan_run_converges_and_is_reproducible() {
        let lan = Scenario { duration_s: 3600.0, ..scenarios::all().remove(0) };
        assert_eq!(lan.name, "lan");
        let outcome = run::run(&lan, DEFAULT_SEED, false).unwrap();
        let summary = outcome.summary(1e-3);
        let converged = summary.converged_after_s.expect("converges");
        assert!(converged < 900.0, "converged after {converged} s");
        // From convergence on, including the tail of the start-up transient.
        assert!(summary.rms_offset_s < 250e-6, "{summary:?}");
        // Held to the LAN's jitter (20 µs) in the second half hour, the frequency settled.
        assert!(summary.rms_offset_second_half_s < 20e-6, "{summary:?}");
        let last = outcome.points.last().unwrap();
        assert!(last.frequency_error_ppm.abs() < 0.2, "{last:?}");
        assert_eq!((outcome.steps, outcome.refused), (0, 0));
        for point in &outcome.points {
            assert!(point.offset_s.is_finite() && point.frequency_error_ppm.is_finite());
        }
        // The same seed, the same world, to the bit.
        let again = run::run(&lan, DEFAULT_SEED, false).unwrap();
        assert_eq!(outcome.points, again.points);
        assert_ne!(outcome.points, run::run(&lan, DEFAULT_SEED + 1, false).unwrap().points);
    }

    #[test]
    fn scenario_names_are_unique_and_options_parse() {
        let all = scenarios::all();
        let mut names: Vec<&str> = all.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let options = parse(&args("--scenario lan --seed 7 --hours 1")).unwrap();
        assert_eq!((options.scenario.as_deref(), options.seed, options.hours), (Some("lan"), 7, Some(1.0)));
        assert!(parse(&args("--seed x")).is_err());
        assert!(parse(&args("--hours 0")).is_err());
        assert!(parse(&args("--bogus")).is_err());
        assert!(main(&args("--scenario nope")).is_err());
    }
}
