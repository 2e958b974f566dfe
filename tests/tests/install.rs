//! The install (issue 7): `cargo xtask install` writes exactly the manifest,
//! `strata audit` finds it clean and names every drift; the systemd unit verifies and
//! is more confined than chrony's; the Debian package installs clean and removes
//! what it installed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use strata_tests::{bin_dir, ensure_built, require_root, require_tool, scratch_dir};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// `xtask install --destdir DIR --bin-dir <these binaries>`.
fn install(destdir: &Path) {
    ensure_built();
    let out = Command::new(bin_dir().join("xtask"))
        .args(["install", "--destdir"])
        .arg(destdir)
        .arg("--bin-dir")
        .arg(bin_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "xtask install failed:\n{}", text(&out));
}

fn audit(root: &Path) -> (Option<i32>, String) {
    let out = Command::new(bin_dir().join("strata")).args(["audit", "--root"]).arg(root).output().unwrap();
    (out.status.code(), text(&out))
}

/// The manifest's files, as `strata audit --list` prints them.
fn manifest_paths(kind: &str) -> Vec<String> {
    ensure_built();
    let out = Command::new(bin_dir().join("strata")).args(["audit", "--list"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split('\t').collect::<Vec<_>>().get(..2).map(|f| (f[0].to_string(), f[1].to_string())))
        .filter(|(k, _)| k == kind)
        .map(|(_, p)| p)
        .collect()
}

/// `out` has a line naming `path` and saying `what`.
fn names(out: &str, path: &str, what: &str) {
    assert!(
        out.lines().any(|l| l.starts_with(&format!("{path}: ")) && l.contains(what)),
        "no line naming {path} and {what:?}:\n{out}"
    )
}

#[test]
fn install_then_audit_is_clean_and_every_drift_is_named() {
    let root = scratch_dir("install");
    install(&root);
    let (code, out) = audit(&root);
    assert_eq!(code, Some(0), "a fresh install must audit clean:\n{out}");
    assert!(out.contains("matches the manifest"), "{out}");

    // Everything the manifest names is there, and the record names every file.
    for path in manifest_paths("file").iter().chain(&manifest_paths("directory")).chain(&manifest_paths("record")) {
        assert!(root.join(path.trim_start_matches('/')).exists(), "{path} not installed");
    }
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("usr/lib/strata/install-record.json")).unwrap())
            .unwrap();
    for path in manifest_paths("file") {
        let hash = record["files"][&path].as_str().unwrap_or_else(|| panic!("{path} has no hash in the record"));
        assert_eq!(hash.len(), 64, "{path}: {hash}");
    }
    assert!(std::fs::read_link(root.join("usr/bin/strata")).unwrap() == Path::new("/usr/lib/strata/strata"));

    // One byte of a binary.
    let engine = root.join("usr/lib/strata/strata-ntp");
    let mut bytes = std::fs::read(&engine).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&engine, &bytes).unwrap();
    // One mode.
    let unit = root.join("usr/lib/systemd/system/strata.service");
    std::fs::set_permissions(&unit, std::fs::Permissions::from_mode(0o666)).unwrap();
    // One file the manifest does not know, in strata's own directory.
    std::fs::write(root.join("usr/lib/strata/strata-backdoor"), b"#!/bin/sh\n").unwrap();
    // A configuration that no longer passes check-config.
    let config = root.join("etc/strata/strata.toml");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str("\n[clock]\nslew = 1\n");
    std::fs::write(&config, toml).unwrap();
    // One owner (root only: chown to another user).
    let root_part = require_root("install_then_audit_is_clean_and_every_drift_is_named: owner drift");
    let adjuster = root.join("usr/lib/strata/strata-adjust");
    if root_part {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("user nobody");
        nix::unistd::chown(&adjuster, Some(nobody.uid), None).unwrap();
    }

    let (code, out) = audit(&root);
    eprintln!("strata audit after tampering:\n{out}");
    assert_eq!(code, Some(1), "{out}");
    names(&out, "/usr/lib/strata/strata-ntp", "content differs from the install record");
    names(&out, "/usr/lib/systemd/system/strata.service", "mode 0666, manifest says 0644");
    names(&out, "/usr/lib/strata/strata-backdoor", "not in the manifest");
    names(&out, "/etc/strata/strata.toml", "configuration invalid");
    names(&out, "/etc/strata/strata.toml", "content differs");
    if root_part {
        names(&out, "/usr/lib/strata/strata-adjust", "owner nobody, manifest says root");
    }
    // Nothing else: an untouched file is never named.
    assert!(!out.contains("/usr/lib/strata/strata-control"), "{out}");
    assert!(!out.contains("/usr/lib/strata/strata:"), "{out}");

    // A missing unit file and a missing record.
    std::fs::remove_file(&unit).unwrap();
    std::fs::remove_file(root.join("usr/lib/strata/install-record.json")).unwrap();
    let (code, out) = audit(&root);
    assert_eq!(code, Some(1), "{out}");
    names(&out, "/usr/lib/systemd/system/strata.service", "missing");
    names(&out, "/usr/lib/strata/install-record.json", "install record unreadable");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn an_edited_configuration_can_be_accepted_if_still_valid() {
    let root = scratch_dir("install-config");
    install(&root);
    let config = root.join("etc/strata/strata.toml");
    let toml = std::fs::read_to_string(&config).unwrap().replace("access = []", "access = [\"allow 192.0.2.0/24\"]");
    std::fs::write(&config, toml).unwrap();
    let (code, out) = audit(&root);
    assert_eq!(code, Some(1), "{out}");
    let out =
        Command::new(bin_dir().join("strata")).args(["audit", "--allow-config-edits", "--root"]).arg(&root).output();
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("configuration edited since install"), "{}", text(&out));
    let _ = std::fs::remove_dir_all(&root);
}

/// The exposure score `systemd-analyze security --offline=true` gives a unit file.
fn exposure(unit: &Path) -> f64 {
    let out = Command::new("systemd-analyze").args(["security", "--offline=true", "--no-pager"]).arg(unit).output();
    let out = out.unwrap();
    let all = text(&out);
    let line = all
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level for {}:\n{all}", unit.display()));
    let figure = line.split(':').nth(1).and_then(|s| s.split_whitespace().next()).unwrap();
    figure.parse().unwrap_or_else(|_| panic!("{line}"))
}

#[test]
fn the_unit_verifies_and_is_more_confined_than_chronys() {
    if !require_tool("the_unit_verifies_and_is_more_confined_than_chronys", "systemd-analyze") {
        return;
    }
    // verify checks that ExecStart's binary exists and that every unit named
    // resolves: an installed tree plus the system's own unit files as the root.
    let root = scratch_dir("verify");
    install(&root);
    let units = root.join("usr/lib/systemd/system");
    for entry in std::fs::read_dir("/usr/lib/systemd/system").unwrap().flatten() {
        let target = units.join(entry.file_name());
        if entry.path().is_file() && !target.exists() {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
    let out = Command::new("systemd-analyze")
        .arg(format!("--root={}", root.display()))
        .args(["verify", "strata.service"])
        .output()
        .unwrap();
    assert!(out.status.success(), "systemd-analyze verify:\n{}", text(&out));
    assert!(!text(&out).contains("strata.service:"), "systemd-analyze verify has something to say:\n{}", text(&out));

    let strata = exposure(&repo().join("deploy/systemd/strata.service"));
    let chrony_unit = Path::new("/lib/systemd/system/chrony.service");
    if !chrony_unit.exists() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "chrony.service missing, and CI=true");
        eprintln!("exposure (systemd-analyze security --offline=true): strata.service {strata}; chrony not installed");
        return;
    }
    let chrony = exposure(chrony_unit);
    eprintln!("exposure (systemd-analyze security --offline=true, lower is better):");
    eprintln!("  strata.service {strata:.1}");
    eprintln!("  chrony.service {chrony:.1} (Debian's)");
    assert!(strata < chrony, "strata's unit ({strata}) should be more confined than chrony's ({chrony})");
    let _ = std::fs::remove_dir_all(&root);
}

/// Purges the package when dropped, so that a failing test leaves nothing behind.
struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "strata"]).output();
    }
}

/// Processes whose executable is one of the installed binaries.
fn installed_processes() -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(exe) = std::fs::read_link(entry.path().join("exe"))
            && exe.starts_with("/usr/lib/strata")
        {
            found.push(format!("{} {}", entry.file_name().to_string_lossy(), exe.display()));
        }
    }
    found
}

#[test]
fn the_debian_package_installs_audits_clean_and_removes_its_files() {
    if !require_root("the_debian_package_installs_audits_clean_and_removes_its_files")
        || !require_tool("the_debian_package_installs_audits_clean_and_removes_its_files", "dpkg-deb")
    {
        return;
    }
    let installed = Command::new("dpkg-query").args(["-W", "-f=${Status}", "strata"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&installed.stdout).contains("ok installed"),
        "a strata package is installed on this machine already; not touching it"
    );
    ensure_built();
    let out_dir = scratch_dir("deb");
    let out = Command::new(bin_dir().join("xtask"))
        .args(["deb", "--bin-dir"])
        .arg(bin_dir())
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "xtask deb:\n{}", text(&out));
    let deb = String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap().to_string();

    let contents = Command::new("dpkg-deb").args(["--contents", &deb]).output().unwrap();
    let listing = String::from_utf8_lossy(&contents.stdout).to_string();
    for path in manifest_paths("file") {
        assert!(listing.contains(&format!(".{path}")), "{path} not in the package:\n{listing}");
    }
    assert!(listing.lines().all(|l| l.contains("root/root")), "{listing}");

    let _purge = Purge;
    let out = Command::new("dpkg").args(["-i", &deb]).env("DEBIAN_FRONTEND", "noninteractive").output().unwrap();
    assert!(out.status.success(), "dpkg -i:\n{}", text(&out));
    // The postinst made the users and directories and started nothing.
    assert!(nix::unistd::User::from_name("strata-adjust").unwrap().is_some());
    assert!(Path::new("/var/lib/strata").is_dir());
    assert!(installed_processes().is_empty(), "the package started something: {:?}", installed_processes());

    let (code, report) = audit(Path::new("/"));
    assert_eq!(code, Some(0), "strata audit of the installed package:\n{report}");
    let out = Command::new("/usr/bin/strata").args(["audit"]).output().unwrap();
    assert!(out.status.success(), "the installed /usr/bin/strata audit:\n{}", text(&out));

    let out = Command::new("dpkg").args(["-r", "strata"]).output().unwrap();
    assert!(out.status.success(), "dpkg -r:\n{}", text(&out));
    for path in manifest_paths("file").iter().chain(&manifest_paths("record")).chain(&manifest_paths("symlink")) {
        let left = Path::new(path).symlink_metadata().is_ok();
        // A conffile stays until purge, as Debian does.
        if path == "/etc/strata/strata.toml" {
            assert!(left, "{path}: a conffile is kept by dpkg -r");
        } else {
            assert!(!left, "{path} left after dpkg -r");
        }
    }
    assert!(!Path::new("/usr/lib/strata").exists(), "/usr/lib/strata left after dpkg -r");
    let out = Command::new("dpkg").args(["--purge", "strata"]).output().unwrap();
    assert!(out.status.success(), "dpkg --purge:\n{}", text(&out));
    assert!(!Path::new("/etc/strata").exists(), "/etc/strata left after purge");
    assert!(!Path::new("/var/lib/strata").exists(), "/var/lib/strata left after purge");
    let _ = std::fs::remove_dir_all(&out_dir);
}
