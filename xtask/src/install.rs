//! `cargo xtask install --destdir DIR [--release | --bin-dir DIR]`: install exactly
//! the manifest (deploy/manifest.toml) under DIR — directories, files, links, modes,
//! and owners when run as root — then write the install record (the sha256 of every
//! installed file) with the installed `strata audit --write-record`.
//!
//! The manifest is read through `strata audit --list` of the binary being installed,
//! so the installer, the record and the audit follow the one manifest compiled into
//! that binary.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, cargo, is_root, root, run};

/// One line of `strata audit --list`.
#[derive(Debug)]
pub struct Entry {
    pub kind: String,
    pub path: String,
    /// A file's source, a link's target, or `-`.
    pub source: String,
    pub owner: String,
    pub group: String,
    pub mode: u32,
    pub flags: Vec<String>,
}

pub fn main(args: &[String]) -> Result {
    let mut destdir = None;
    let mut build = Build::Debug;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--destdir" => destdir = Some(PathBuf::from(it.next().ok_or("--destdir needs a directory")?)),
            "--release" => build = Build::Release,
            "--bin-dir" => build = Build::Dir(PathBuf::from(it.next().ok_or("--bin-dir needs a directory")?)),
            other => return Err(format!("install: unknown argument {other:?}")),
        }
    }
    let destdir = destdir.ok_or("usage: cargo xtask install --destdir DIR [--release | --bin-dir DIR]")?;
    let bin_dir = build.binaries()?;
    let owners = is_root();
    if !owners {
        eprintln!("xtask: not root: files keep your owner; the record says so and the audit does not check owners");
    }
    install(&destdir, &bin_dir, owners, owners)?;
    eprintln!("xtask: installed into {}; check it with: strata audit --root {}", destdir.display(), destdir.display());
    Ok(())
}

/// Where the binaries come from.
pub enum Build {
    /// `cargo build --workspace --bins`, then the target's debug directory.
    Debug,
    Release,
    /// Already built.
    Dir(PathBuf),
}

impl Build {
    pub fn binaries(self) -> Result<PathBuf> {
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
        match self {
            Build::Debug => {
                run(cargo().args(["build", "--workspace", "--bins"]))?;
                Ok(target.join("debug"))
            }
            Build::Release => {
                run(cargo().args(["build", "--release", "--workspace", "--bins"]))?;
                Ok(target.join("release"))
            }
            Build::Dir(dir) => Ok(dir),
        }
    }
}

/// The manifest, as the `strata` binary in `bin_dir` has it compiled in.
pub fn manifest(bin_dir: &Path) -> Result<Vec<Entry>> {
    let strata = bin_dir.join("strata");
    let out = Command::new(&strata)
        .args(["audit", "--list"])
        .output()
        .map_err(|e| format!("{}: {e} (build it first)", strata.display()))?;
    if !out.status.success() {
        return Err(format!("{} audit --list: {}", strata.display(), String::from_utf8_lossy(&out.stderr)));
    }
    let text = String::from_utf8(out.stdout).map_err(|e| format!("strata audit --list: {e}"))?;
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 8 {
                return Err(format!("strata audit --list: malformed line {line:?}"));
            }
            let mode = if f[5] == "-" {
                0
            } else {
                u32::from_str_radix(f[5], 8).map_err(|e| format!("mode {:?} of {}: {e}", f[5], f[1]))?
            };
            Ok(Entry {
                kind: f[0].into(),
                path: f[1].into(),
                source: f[2].into(),
                owner: f[3].into(),
                group: f[4].into(),
                mode,
                flags: f[6].split(',').filter(|s| *s != "-").map(String::from).collect(),
            })
        })
        .collect()
}

fn under(destdir: &Path, path: &str) -> PathBuf {
    destdir.join(path.trim_start_matches('/'))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// Install the manifest under `destdir`. `chown`: set owners and groups (needs
/// root); `record_owners`: whether the record says owners are as the manifest
/// says (a package sets them when it is installed, whoever built it).
pub fn install(destdir: &Path, bin_dir: &Path, chown: bool, record_owners: bool) -> Result<Vec<Entry>> {
    // Parent directories the manifest does not name (usr/bin, ...) get 0755.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let entries = manifest(bin_dir)?;
    let set = |path: &Path, e: &Entry| -> Result {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(e.mode)).map_err(io(path))?;
        if chown {
            let uid = nix::unistd::User::from_name(&e.owner)
                .ok()
                .flatten()
                .ok_or_else(|| format!("{}: no user {:?}", e.path, e.owner))?
                .uid;
            let gid = nix::unistd::Group::from_name(&e.group)
                .ok()
                .flatten()
                .ok_or_else(|| format!("{}: no group {:?}", e.path, e.group))?
                .gid;
            nix::unistd::chown(path, Some(uid), Some(gid)).map_err(|e| format!("{}: chown: {e}", path.display()))?;
        }
        Ok(())
    };
    for e in entries.iter().filter(|e| e.kind == "directory") {
        let path = under(destdir, &e.path);
        std::fs::create_dir_all(&path).map_err(io(&path))?;
        set(&path, e)?;
    }
    for e in entries.iter().filter(|e| e.kind == "file") {
        let path = under(destdir, &e.path);
        let source = match e.source.strip_prefix("build:") {
            Some(name) => bin_dir.join(name),
            None => root().join(&e.source),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        // Remove first: a running binary cannot be overwritten in place.
        let _ = std::fs::remove_file(&path);
        std::fs::copy(&source, &path).map_err(|err| format!("{} → {}: {err}", source.display(), path.display()))?;
        set(&path, e)?;
        eprintln!("  {:04o} {}:{} {}", e.mode, e.owner, e.group, e.path);
    }
    for e in entries.iter().filter(|e| e.kind == "symlink") {
        let path = under(destdir, &e.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(&e.source, &path).map_err(io(&path))?;
        eprintln!("  link {} → {}", e.path, e.source);
    }
    // The record, by the binary just installed (its manifest is the one followed).
    let installed = entries.iter().find(|e| e.source == "build:strata").ok_or("the manifest installs no strata")?;
    let strata = under(destdir, &installed.path);
    let mut record = Command::new(&strata);
    record.args(["audit", "--write-record", "--root"]).arg(destdir);
    if !record_owners {
        record.arg("--no-owners");
    }
    run(&mut record)?;
    Ok(entries)
}
