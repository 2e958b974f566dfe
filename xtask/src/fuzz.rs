//! `cargo xtask fuzz <target>|--all [--seconds N]`: coverage-guided fuzzing with
//! libFuzzer through cargo-fuzz, on the stable toolchain, of every parser of
//! untrusted input (`--all`: each target in turn, N seconds each).
//!
//! The targets live in fuzz/, a crate outside the workspace. cargo-fuzz builds
//! them with sanitizer-coverage instrumentation (`-Cpasses=sancov-module` and
//! `-Cllvm-args=-sanitizer-coverage-*`), all of which stable rustc accepts; only a
//! sanitizer runtime would need `-Zsanitizer`, i.e. nightly or `RUSTC_BOOTSTRAP=1`.
//! None is linked (`--sanitizer none`): every crate fuzzed forbids `unsafe` but
//! strata-sys, whose calls no target makes, so AddressSanitizer would find nothing
//! the bounds checks don't, at half the speed.
//! Debug assertions (overflow checks) are on.
//!
//! The committed seeds in fuzz/corpus/<target> are read only; what libFuzzer
//! finds goes to fuzz/target/corpus/<target> (ignored by git, kept between
//! runs). A failing input is written to fuzz/artifacts/<target>/.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::{Result, cargo, root};

/// Fuzz targets: the name `cargo xtask fuzz` takes, the cargo-fuzz target in fuzz/,
/// and the longest input libFuzzer makes for it.
const TARGETS: &[(&str, &str, usize)] = &[
    // Room for 16 extension fields, short of a 64 KiB datagram, which would only
    // slow every mutation down.
    ("ntp-packet", "ntp_packet", 4096),
    // A channel byte and one frame (frames are at most 16 KiB; the messages that
    // fill them are lists, which a few KiB already exercise).
    ("ipc-frames", "ipc_frames", 4096),
    // A sequence of frames to the adjuster.
    ("adjuster-requests", "adjuster_requests", 4096),
    ("config", "config", 8192),
    ("import-chrony", "import_chrony", 8192),
    // A SOCK datagram (40 bytes) or two SHM snapshots (96 bytes each).
    ("refclock-samples", "refclock_samples", 256),
];

const DEFAULT_SECONDS: u64 = 600;

/// Installed from crates.io when `cargo fuzz` is missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn usage() -> String {
    let names: Vec<&str> = TARGETS.iter().map(|&(name, _, _)| name).collect();
    format!("usage: cargo xtask fuzz <{}|--all> [--seconds N] (default {DEFAULT_SECONDS})", names.join("|"))
}

pub fn fuzz(args: &[String]) -> Result {
    let mut target = None;
    let mut all = false;
    let mut seconds = DEFAULT_SECONDS;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value = match arg.strip_prefix("--seconds") {
            Some("") => args.next().map(String::as_str),
            Some(rest) => rest.strip_prefix('='),
            None if arg == "--all" => {
                all = true;
                continue;
            }
            None if target.is_none() && !arg.starts_with('-') => {
                target = Some(arg.as_str());
                continue;
            }
            None => return Err(format!("unexpected argument {arg:?}\n{}", usage())),
        };
        seconds = value
            .and_then(|v| v.parse().ok())
            .filter(|&s| s > 0)
            .ok_or_else(|| format!("--seconds needs a positive whole number\n{}", usage()))?;
    }
    let chosen: Vec<(&str, usize)> = match (target, all) {
        (None, true) => TARGETS.iter().map(|&(_, bin, len)| (bin, len)).collect(),
        (Some(target), false) => {
            let &(_, bin, len) = TARGETS
                .iter()
                .find(|&&(name, bin, _)| target == name || target == bin)
                .ok_or_else(|| format!("no fuzz target {target:?}\n{}", usage()))?;
            vec![(bin, len)]
        }
        _ => return Err(usage()),
    };
    ensure_cargo_fuzz()?;
    let mut summary = Vec::new();
    for (fuzz_target, max_len) in chosen {
        summary.push(run_target(fuzz_target, max_len, seconds)?);
    }
    for line in summary {
        eprintln!("xtask: {line}");
    }
    Ok(())
}

/// Run one target for `seconds`; its summary line (executions, corpus) on success.
fn run_target(fuzz_target: &str, max_len: usize, seconds: u64) -> Result<String> {
    let fuzz_dir = root().join("fuzz");
    let seeds = fuzz_dir.join("corpus").join(fuzz_target);
    let corpus = fuzz_dir.join("target/corpus").join(fuzz_target);
    let artifacts = fuzz_dir.join("artifacts").join(fuzz_target);
    for dir in [&corpus, &artifacts] {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let known = files_in(&artifacts)?;

    let mut cmd = cargo();
    cmd.args(["fuzz", "run", "--sanitizer", "none", "--debug-assertions", "--fuzz-dir"])
        .arg(&fuzz_dir)
        // Its own, whatever CARGO_TARGET_DIR says: instrumented builds kept apart.
        .arg("--target-dir")
        .arg(fuzz_dir.join("target"))
        .arg(fuzz_target)
        // libFuzzer adds new inputs to the first directory only.
        .arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={max_len}"))
        // An input that takes this long is a hang, and a failure.
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .current_dir(root())
        .stderr(std::process::Stdio::piped());
    eprintln!("$ {cmd:?}");
    let mut child = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
    // libFuzzer reports on stderr: pass it through and keep its final stats.
    let mut executions = None;
    if let Some(stderr) = child.stderr.take() {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(std::result::Result::ok) {
            eprintln!("{line}");
            if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
                executions = n.trim().parse::<u64>().ok();
            }
        }
    }
    let status = child.wait().map_err(|e| format!("{cmd:?}: {e}"))?;

    let found: Vec<PathBuf> = files_in(&artifacts)?.difference(&known).cloned().collect();
    for path in &found {
        eprintln!("xtask: fuzz target {fuzz_target} failed on input {}", path.display());
        eprintln!(
            "xtask: reproduce with: cargo fuzz run --sanitizer none --debug-assertions \
             --fuzz-dir fuzz {fuzz_target} {}",
            path.display()
        );
    }
    if !found.is_empty() {
        return Err(format!("fuzz target {fuzz_target}: {} failing input(s)", found.len()));
    }
    if !status.success() {
        return Err(format!("cargo fuzz run {fuzz_target} failed: {status}"));
    }
    let inputs = files_in(&corpus)?.len();
    Ok(format!(
        "fuzz target {fuzz_target}: {seconds} s, {} executions, 0 crashes; corpus {inputs} inputs in {}",
        executions.map_or("?".to_string(), |n| n.to_string()),
        corpus.display()
    ))
}

/// `cargo fuzz`, installed from crates.io if missing.
fn ensure_cargo_fuzz() -> Result {
    if cargo().args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    crate::run(cargo().args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION]))
}

fn files_in(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = BTreeSet::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.is_file() {
            files.insert(path);
        }
    }
    Ok(files)
}
