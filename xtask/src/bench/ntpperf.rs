//! `cargo xtask bench ntpperf`: chrony's NTP server tester against strata and
//! chronyd, one at a time, across two network namespaces: in basic and interleaved
//! mode, the accuracy of each server's transmit timestamp (`-o`: against the
//! receive time of the client side's capture) per rate, and the highest rate
//! answered with loss under 0.1 %.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{LOSS_FREE_PERCENT, NETNS_CLIENT_IP, NETNS_SERVER_IP, Netns, Scratch};
use crate::{Result, ensure_users, have, is_root, root, run};

const USAGE: &str = "usage: cargo xtask bench ntpperf [--max-rate R] [--runs N] [--bin-dir DIR] [--no-build]

Runs ntpperf (built from ../shared/vendor/ntpperf into target/ntpperf; needs
libpcap-dev and libgnutls28-dev) against strata and against chronyd (-x), each on
port 123 in a network namespace of its own, the generator in another, joined by a
veth pair. For each server and mode (basic -B, interleaved -I) it prints ntpperf's
rows (rate, lost, basic, interleaved, TX-timestamp offset mean and standard
deviation) and the highest rate with loss under 0.1 %; the basic-mode loss-free
rate is the median over --runs runs. As root.

  --max-rate  the highest rate ntpperf offers  (default 400000)
  --runs      basic-mode runs per server      (default 1; five for a figure)
  --bin-dir   strata's binaries               (default <target>/release, built first unless --no-build)";

/// Where the vendored ntpperf snapshot is, relative to the repository (read-only
/// under CI: copied into `target/` before `make`).
const NTPPERF_SOURCE: &str = "../shared/vendor/ntpperf";

/// Where ntpperf's simulated clients live: routed back to the generator's side,
/// which drops the answers after its capture has seen them.
const CLIENT_NETWORK: &str = "10.232.0.0/16";

struct Options {
    max_rate: u64,
    runs: usize,
    bin_dir: Option<PathBuf>,
    build: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options { max_rate: 400_000, runs: 1, bin_dir: None, build: true };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--max-rate" => {
                let v = value()?;
                o.max_rate = v.parse().map_err(|_| format!("--max-rate: not a number: {v:?}"))?;
                if !(1000..=1_000_000).contains(&o.max_rate) {
                    return Err("--max-rate: 1000..=1000000 (ntpperf's range)".into());
                }
            }
            "--runs" => {
                let v = value()?;
                o.runs = v.parse().map_err(|_| format!("--runs: not a number: {v:?}"))?;
                if !(1..=20).contains(&o.runs) {
                    return Err("--runs: 1..=20".into());
                }
            }
            "--bin-dir" => o.bin_dir = Some(PathBuf::from(value()?)),
            "--no-build" => o.build = false,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    Ok(o)
}

/// One row of ntpperf's table.
#[derive(Clone, Debug, PartialEq)]
struct Step {
    rate: u64,
    lost_percent: f64,
    basic_percent: f64,
    interleaved_percent: f64,
    /// TX timestamp offset, ns.
    mean_ns: f64,
    stddev_ns: f64,
}

/// ntpperf's rows ("rate clients lost% invalid% basic% xleave% min mean max stddev").
fn parse_steps(output: &str) -> Vec<Step> {
    output
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 10 {
                return None;
            }
            let pct = |s: &str| s.strip_suffix('%')?.parse::<f64>().ok();
            Some(Step {
                rate: f[0].parse().ok()?,
                lost_percent: pct(f[2])?,
                basic_percent: pct(f[4])?,
                interleaved_percent: pct(f[5])?,
                mean_ns: f[7].parse().ok()?,
                stddev_ns: f[9].parse().ok()?,
            })
        })
        .collect()
}

fn loss_free(steps: &[Step]) -> Option<u64> {
    steps.iter().take_while(|s| s.lost_percent < LOSS_FREE_PERCENT).map(|s| s.rate).last()
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// Copy the vendored source into `target/` (it is read-only under CI) and make it.
fn build_ntpperf() -> Result<PathBuf> {
    let source = root().join(NTPPERF_SOURCE);
    let dir = root().join("target/ntpperf");
    let binary = dir.join("ntpperf");
    if binary.is_file() {
        return Ok(binary);
    }
    if !source.join("perf.c").is_file() {
        return Err(format!("no ntpperf source in {}", source.display()));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in std::fs::read_dir(&source).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_file() {
            let to = dir.join(path.file_name().unwrap_or_default());
            std::fs::copy(&path, &to).map_err(|e| format!("{}: {e}", to.display()))?;
        }
    }
    run(Command::new("make").arg("-C").arg(&dir).env("NTPPERF_NTS", "1")).map_err(|e| {
        format!("building ntpperf ({e}); it needs libpcap-dev and libgnutls28-dev: apt-get install libpcap-dev libgnutls28-dev")
    })?;
    Ok(binary)
}

fn mac_of(ns: &str, dev: &str) -> Result<String> {
    let out = Command::new("ip").args(["-n", ns, "link", "show", "dev", dev]).output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| format!("no MAC address for {dev} in:\n{text}"))
}

fn ntpperf(binary: &Path, ns: &Netns, mac: &str, interleaved: bool, max_rate: u64) -> Result<Vec<Step>> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.client_ns])
        .arg(binary)
        .args(["-i", &ns.client_dev, "-m", mac, "-d", &NETNS_SERVER_IP.to_string(), "-s", CLIENT_NETWORK])
        .arg(if interleaved { "-I" } else { "-B" })
        // -o: the TX timestamp against the capture's receive time, 1 ns of correction
        // for the veth; -l: the generator shares the two cores and sends late.
        .args(["-r", &format!("1000-{max_rate}"), "-t", "2", "-o", "1e-9", "-l"])
        .output()
        .map_err(|e| format!("ntpperf: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let steps = parse_steps(&text);
    if steps.is_empty() {
        return Err(format!("ntpperf gave no figures ({}):\n{text}", out.status));
    }
    Ok(steps)
}

pub fn main(args: &[String]) -> Result {
    let o = parse(args)?;
    if !is_root() {
        return Err("bench ntpperf must run as root (network namespaces, raw capture, the appliance)".into());
    }
    if !have("chronyd") {
        return Err("chronyd not found: apt-get install chrony (the bench only starts it with -x)".into());
    }
    let binary = build_ntpperf()?;
    let bin_dir = super::strata_binaries(o.bin_dir.as_deref(), o.build)?;
    ensure_users()?;
    let scratch = Scratch(std::env::temp_dir().join(format!("strata-ntpperf-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).map_err(|e| format!("{}: {e}", scratch.0.display()))?;
    let ns = Netns::create()?;
    let client_ip = NETNS_CLIENT_IP.to_string();
    run(Command::new("ip").args(["-n", &ns.server_ns, "route", "add", CLIENT_NETWORK, "via", &client_ip]))?;
    let mac = mac_of(&ns.server_ns, &ns.server_dev)?;

    let mut report = String::new();
    let mut summary = Vec::new();
    for name in ["strata", "chronyd"] {
        let server = match name {
            "strata" => super::start_strata(&bin_dir, &scratch.0, NETNS_SERVER_IP, 123, Some(&ns), NETNS_CLIENT_IP)?,
            _ => super::start_chronyd(&scratch.0, NETNS_SERVER_IP, 123, Some(&ns), NETNS_CLIENT_IP)?,
        };
        let mut basic_loss_free = Vec::new();
        for interleaved in [false, true] {
            let runs = if interleaved { 1 } else { o.runs };
            for run_no in 0..runs {
                let steps = ntpperf(&binary, &ns, &mac, interleaved, o.max_rate)?;
                let free = loss_free(&steps);
                if !interleaved {
                    basic_loss_free.push(free.unwrap_or(0));
                }
                if run_no == 0 {
                    let mode = if interleaved { "interleaved (-I)" } else { "basic (-B)" };
                    let _ = writeln!(report, "\n{name}, {mode}: loss-free up to {}/s\n", free.unwrap_or(0));
                    let _ = writeln!(
                        report,
                        "| rate/s | lost | basic | interleaved | TX offset mean ns | TX offset std dev ns |\n\
                         |--:|--:|--:|--:|--:|--:|"
                    );
                    for s in &steps {
                        let _ = writeln!(
                            report,
                            "| {} | {:.2} % | {:.2} % | {:.2} % | {:+.0} | {:.0} |",
                            s.rate, s.lost_percent, s.basic_percent, s.interleaved_percent, s.mean_ns, s.stddev_ns
                        );
                    }
                }
            }
        }
        summary.push((name, basic_loss_free));
        drop(server);
    }
    print!("ntpperf across a veth pair between two network namespaces; TX-timestamp offsets with -o 1e-9\n{report}");
    println!();
    for (name, runs) in &summary {
        println!("{name}: basic-mode loss-free rate {runs:?}/s, median {}/s", median(runs.clone()).unwrap_or(0));
    }
    if let [(_, strata), (_, chronyd)] = summary.as_slice()
        && let (Some(s), Some(c)) = (median(strata.clone()), median(chronyd.clone()))
        && c > 0
    {
        println!("strata/chronyd loss-free rate: {:.2}×", s as f64 / c as f64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntpperf_rows_are_read_and_the_loss_free_rate_is_the_last_rate_before_loss() {
        let out = "               |          responses            |     TX timestamp offset (ns)\n\
                   rate   clients |  lost invalid   basic  xleave |    min    mean     max stddev\n\
                   1000       100   0.00%   0.00%   0.00% 100.00%      -23     +17     +53     14\n\
                   1500       150   0.05%   0.00%   0.00% 100.00%      -21     +20     +57     14\n\
                   2250       225   0.20%   0.00%   0.00% 100.00%      -43     +12     +55     17\n\
                   3375       337   0.00%   0.00%   0.00% 100.00%      -54      -8     +41     15\n\
                   Could not send requests at rate 985063\n";
        let steps = parse_steps(out);
        assert_eq!(steps.len(), 4);
        assert_eq!(
            steps[0],
            Step {
                rate: 1000,
                lost_percent: 0.0,
                basic_percent: 0.0,
                interleaved_percent: 100.0,
                mean_ns: 17.0,
                stddev_ns: 14.0
            }
        );
        assert_eq!(steps[3].mean_ns, -8.0);
        assert_eq!(loss_free(&steps), Some(1500), "loss at 2250 ends it, whatever comes after");
        assert_eq!(median(vec![5, 1, 3]), Some(3));
    }
}
