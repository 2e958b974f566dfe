//! `cargo xtask deb [--release | --bin-dir DIR] [--out DIR]`: a Debian package of
//! exactly the install manifest, built with dpkg-deb: the tree `cargo xtask install`
//! writes (install record included), owned by root, the configuration a conffile.
//!
//! Maintainer scripts: postinst creates the users and directories (systemd-sysusers,
//! systemd-tmpfiles) when those tools exist and reloads systemd only when systemd is
//! the running init; prerm/postrm stop and disable the unit only when systemd runs.
//! Nothing ever enables or starts the service: the shipped configuration serves
//! nobody; the operator configures, then `systemctl enable --now strata`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::install::{Build, install};
use crate::{Result, root, run};

const POSTINST: &str = r#"#!/bin/sh
# strata postinst: users and directories; never enables or starts the service.
set -e
if [ "$1" = configure ]; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers /usr/lib/sysusers.d/strata.conf
    fi
    if command -v systemd-tmpfiles >/dev/null 2>&1; then
        systemd-tmpfiles --create /usr/lib/tmpfiles.d/strata.conf || true
    fi
    # Only when systemd is the running init (not in a chroot, container build or test).
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
# strata prerm: stop the appliance before its files go (only when systemd runs).
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop strata.service || true
fi
exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
# strata postrm: disable the unit (only when systemd runs); purge removes the state.
# The system users stay (Debian keeps users: files they owned may remain).
set -e
if [ "$1" = remove ] || [ "$1" = purge ]; then
    if [ -d /run/systemd/system ]; then
        systemctl disable strata.service >/dev/null 2>&1 || true
        systemctl daemon-reload || true
    fi
fi
if [ "$1" = purge ]; then
    rm -rf /var/lib/strata /run/strata
fi
exit 0
"#;

pub fn main(args: &[String]) -> Result {
    let mut build = Build::Debug;
    let mut out = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--release" => build = Build::Release,
            "--bin-dir" => build = Build::Dir(PathBuf::from(it.next().ok_or("--bin-dir needs a directory")?)),
            "--out" => out = Some(PathBuf::from(it.next().ok_or("--out needs a directory")?)),
            other => return Err(format!("deb: unknown argument {other:?}")),
        }
    }
    let bin_dir = build.binaries()?;
    let out = out.unwrap_or_else(|| bin_dir.join("deb"));
    let deb = package(&bin_dir, &out)?;
    println!("{}", deb.display());
    Ok(())
}

/// Build the package into `out`; returns its path.
pub fn package(bin_dir: &Path, out: &Path) -> Result<PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    let arch = Command::new("dpkg").arg("--print-architecture").output().map_err(|e| format!("dpkg: {e}"))?;
    let arch = String::from_utf8_lossy(&arch.stdout).trim().to_string();
    let name = format!("strata_{version}_{arch}");
    let staging = out.join(&name);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", staging.display()))?;

    // dpkg-deb --root-owner-group makes every file root's: the manifest must agree.
    let entries = install(&staging, bin_dir, false, true)?;
    if let Some(e) = entries.iter().find(|e| e.kind != "symlink" && (e.owner != "root" || e.group != "root")) {
        return Err(format!("{} is owned by {}:{}: the package would need a postinst chown", e.path, e.owner, e.group));
    }

    let control = staging.join("DEBIAN");
    std::fs::create_dir_all(&control).map_err(|e| format!("{}: {e}", control.display()))?;
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", control.display()))?;
    let size_kib = du_kib(&staging);
    let write = |file: &str, text: &str, mode: u32| -> Result {
        let path = control.join(file);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    write(
        "control",
        &format!(
            "Package: strata\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: strata developers <strata@localhost>\n\
             Section: net\n\
             Priority: optional\n\
             Depends: libc6\n\
             Installed-Size: {size_kib}\n\
             Homepage: https://localhost/strata\n\
             Description: privilege-separated stratum-1 NTP appliance\n \
             strata takes time from reference clocks and upstream NTP servers, disciplines\n \
             the host clock and serves NTP, split into least-privilege processes: the NTP\n \
             engine holds no capability, only a small clock adjuster holds CAP_SYS_TIME.\n \
             `strata audit` checks the installed files against the install record.\n"
        ),
        0o644,
    )?;
    let conffiles: String =
        entries.iter().filter(|e| e.flags.iter().any(|f| f == "config")).map(|e| format!("{}\n", e.path)).collect();
    write("conffiles", &conffiles, 0o644)?;
    write("postinst", POSTINST, 0o755)?;
    write("prerm", PRERM, 0o755)?;
    write("postrm", POSTRM, 0o755)?;

    let deb = out.join(format!("{name}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&staging)
        .arg(&deb)
        .current_dir(root()))?;
    Ok(deb)
}

/// Installed size in KiB, as Debian counts it (files rounded up to 1 KiB).
fn du_kib(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len().div_ceil(1024).max(1);
            }
        }
    }
    total
}
