//! `cargo xtask fuzz <target> [--seconds N]`: coverage-guided fuzzing with libFuzzer
//! through cargo-fuzz, on the stable toolchain.
//!
//! The targets live in proto/fuzz, a crate outside the workspace. cargo-fuzz builds
//! them with sanitizer-coverage instrumentation (`-Cpasses=sancov-module` and
//! `-Cllvm-args=-sanitizer-coverage-*`), all of which stable rustc accepts; only a
//! sanitizer runtime would need `-Zsanitizer`, i.e. nightly or `RUSTC_BOOTSTRAP=1`.
//! None is linked (`--sanitizer none`): strata-proto forbids `unsafe`, so
//! AddressSanitizer would find nothing the bounds checks don't, at half the speed.
//! Debug assertions (overflow checks) are on.
//!
//! The committed seeds in proto/fuzz/corpus/<target> are read only; what libFuzzer
//! finds goes to proto/fuzz/target/corpus/<target> (ignored by git, kept between
//! runs). A failing input is written to proto/fuzz/artifacts/<target>/.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::{Result, cargo, root};

/// Fuzz targets: the name `cargo xtask fuzz` takes, the cargo-fuzz target in proto/fuzz.
const TARGETS: &[(&str, &str)] = &[("ntp-packet", "ntp_packet")];

const DEFAULT_SECONDS: u64 = 600;

/// Installed from crates.io when `cargo fuzz` is missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Longest input libFuzzer makes: room for 16 extension fields, short of a 64 KiB
/// datagram, which would only slow every mutation down.
const MAX_LEN: usize = 4096;

fn usage() -> String {
    let names: Vec<&str> = TARGETS.iter().map(|&(name, _)| name).collect();
    format!("usage: cargo xtask fuzz <{}> [--seconds N] (default {DEFAULT_SECONDS})", names.join("|"))
}

pub fn fuzz(args: &[String]) -> Result {
    let mut target = None;
    let mut seconds = DEFAULT_SECONDS;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value = match arg.strip_prefix("--seconds") {
            Some("") => args.next().map(String::as_str),
            Some(rest) => rest.strip_prefix('='),
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
    let target = target.ok_or_else(usage)?;
    let &(_, fuzz_target) = TARGETS
        .iter()
        .find(|&&(name, bin)| target == name || target == bin)
        .ok_or_else(|| format!("no fuzz target {target:?}\n{}", usage()))?;

    ensure_cargo_fuzz()?;

    let fuzz_dir = root().join("proto/fuzz");
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
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={MAX_LEN}"))
        // An input that takes this long is a hang, and a failure.
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .current_dir(root());
    eprintln!("$ {cmd:?}");
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;

    let found: Vec<PathBuf> = files_in(&artifacts)?.difference(&known).cloned().collect();
    for path in &found {
        eprintln!("xtask: fuzz target {fuzz_target} failed on input {}", path.display());
        eprintln!(
            "xtask: reproduce with: cargo fuzz run --sanitizer none --debug-assertions \
             --fuzz-dir proto/fuzz {fuzz_target} {}",
            path.display()
        );
    }
    if !found.is_empty() {
        return Err(format!("fuzz target {fuzz_target}: {} failing input(s)", found.len()));
    }
    if !status.success() {
        return Err(format!("cargo fuzz run {fuzz_target} failed: {status}"));
    }
    eprintln!("xtask: fuzz target {fuzz_target}: {seconds} s, no failure; corpus in {}", corpus.display());
    Ok(())
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
