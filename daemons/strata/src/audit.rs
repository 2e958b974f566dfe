//! `strata audit`: check an installed tree against the install manifest
//! (`deploy/manifest.toml`, compiled in) and the install record (the sha256 of every
//! file, written at install time): every file, directory and link present, content,
//! mode, owner and group as installed, nothing extra in strata's own directories,
//! and the installed configuration valid. One line per difference; exit 1 on drift.
//!
//! The same module writes the record (`--write-record`, run by `cargo xtask install`
//! and `cargo xtask deb`) and lists the manifest (`--list`, which the installers read),
//! so the manifest has one parser.
//!
//! An audit run by the installed binary trusts that binary: for an audit that does not,
//! run a known-good `strata audit --root` over the tree from elsewhere, and compare the
//! record with a copy kept off the machine.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::unistd::{Group, User};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The install manifest this binary was built with.
pub const MANIFEST: &str = include_str!("../../../deploy/manifest.toml");

/// Version of the install record's format.
const RECORD_FORMAT: u32 = 1;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub record: Owned,
    #[serde(default)]
    pub directory: Vec<Directory>,
    #[serde(default)]
    pub file: Vec<File>,
    #[serde(default)]
    pub symlink: Vec<Symlink>,
}

/// A path with an owner, a group and a mode (the record itself).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owned {
    pub path: String,
    pub owner: String,
    pub group: String,
    pub mode: String,
    pub purpose: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    pub path: String,
    pub owner: String,
    pub group: String,
    pub mode: String,
    /// Only the manifest's entries may be in it.
    #[serde(default)]
    pub exclusive: bool,
    pub purpose: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub path: String,
    /// `build:NAME` (a binary of the build) or a path in the repository.
    pub source: String,
    pub owner: String,
    pub group: String,
    pub mode: String,
    /// A configuration file: operators edit it (a dpkg conffile); validated.
    #[serde(default)]
    pub config: bool,
    /// A systemd file (unit, sysusers.d, tmpfiles.d).
    #[serde(default)]
    pub unit: bool,
    pub purpose: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Symlink {
    pub path: String,
    pub target: String,
    pub purpose: String,
}

/// What the installer saw: written once at install time, compared by every audit.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallRecord {
    pub format: u32,
    pub strata_version: String,
    /// sha256 of the manifest the install followed.
    pub manifest_sha256: String,
    /// Whether owners and groups were set (an install as root, or a package).
    pub owners: bool,
    /// Installed path → sha256 of its content.
    pub files: BTreeMap<String, String>,
}

pub fn manifest() -> Manifest {
    toml::from_str(MANIFEST).expect("deploy/manifest.toml is checked by the unit tests")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn parse_mode(mode: &str) -> u32 {
    u32::from_str_radix(mode, 8).expect("modes in the manifest are octal (checked by the unit tests)")
}

/// `strata audit --list`: the manifest, one entry per line, tab-separated:
/// kind, path, source (file) or target (symlink) or `-`, owner, group, mode, flags,
/// purpose.
pub fn list() -> ExitCode {
    let m = manifest();
    let r = &m.record;
    println!("record\t{}\t-\t{}\t{}\t{}\t-\t{}", r.path, r.owner, r.group, r.mode, r.purpose);
    for d in &m.directory {
        let flags = if d.exclusive { "exclusive" } else { "-" };
        println!("directory\t{}\t-\t{}\t{}\t{}\t{flags}\t{}", d.path, d.owner, d.group, d.mode, d.purpose);
    }
    for f in &m.file {
        let flags: Vec<&str> = [(f.config, "config"), (f.unit, "unit")].iter().filter(|x| x.0).map(|x| x.1).collect();
        let flags = if flags.is_empty() { "-".to_string() } else { flags.join(",") };
        println!("file\t{}\t{}\t{}\t{}\t{}\t{flags}\t{}", f.path, f.source, f.owner, f.group, f.mode, f.purpose);
    }
    for s in &m.symlink {
        println!("symlink\t{}\t{}\t-\t-\t-\t-\t{}", s.path, s.target, s.purpose);
    }
    ExitCode::SUCCESS
}

/// `strata audit --write-record --root DIR`: hash every installed file and write the
/// record. `owners`: whether the installer set owners (root, or a package).
pub fn write_record(root: &Path, owners: bool) -> ExitCode {
    let m = manifest();
    let mut files = BTreeMap::new();
    for f in &m.file {
        match sha256_file(&under(root, &f.path)) {
            Ok(hash) => {
                files.insert(f.path.clone(), hash);
            }
            Err(e) => {
                eprintln!("strata audit: {}: {e}", under(root, &f.path).display());
                return ExitCode::FAILURE;
            }
        }
    }
    let record = InstallRecord {
        format: RECORD_FORMAT,
        strata_version: env!("CARGO_PKG_VERSION").into(),
        manifest_sha256: sha256_hex(MANIFEST.as_bytes()),
        owners,
        files,
    };
    let path = under(root, &m.record.path);
    let text = serde_json::to_string_pretty(&record).expect("the record serialises") + "\n";
    let written = std::fs::write(&path, text)
        .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(parse_mode(&m.record.mode))))
        .and_then(|()| {
            if !owners || !nix::unistd::geteuid().is_root() {
                return Ok(());
            }
            let uid = User::from_name(&m.record.owner).ok().flatten().map(|u| u.uid);
            let gid = Group::from_name(&m.record.group).ok().flatten().map(|g| g.gid);
            nix::unistd::chown(&path, uid, gid).map_err(std::io::Error::from)
        });
    match written {
        Ok(()) => {
            println!("{}: {} files recorded", path.display(), record.files.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("strata audit: {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// `strata audit [--root DIR]`: print every difference, exit 1 if there is any.
pub fn audit(root: &Path, allow_config_edits: bool) -> ExitCode {
    let m = manifest();
    let report = check(root, &m, allow_config_edits);
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    for d in &report.differences {
        println!("{d}");
    }
    if report.differences.is_empty() {
        println!(
            "strata audit: {} matches the manifest ({} files, {} directories, {} links)",
            root.display(),
            m.file.len() + 1,
            m.directory.len(),
            m.symlink.len()
        );
        ExitCode::SUCCESS
    } else {
        println!("strata audit: {} differences from the manifest and the install record", report.differences.len());
        ExitCode::FAILURE
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub differences: Vec<String>,
    pub notes: Vec<String>,
}

pub fn check(root: &Path, m: &Manifest, allow_config_edits: bool) -> Report {
    let mut report = Report::default();
    let diff = |report: &mut Report, path: &str, what: String| report.differences.push(format!("{path}: {what}"));

    // The record first: it holds the hashes.
    let record_path = under(root, &m.record.path);
    let record: Option<InstallRecord> = match std::fs::read_to_string(&record_path) {
        Err(e) => {
            diff(&mut report, &m.record.path, format!("install record unreadable ({e}); contents cannot be checked"));
            None
        }
        Ok(text) => match serde_json::from_str::<InstallRecord>(&text) {
            Err(e) => {
                diff(&mut report, &m.record.path, format!("install record malformed ({e})"));
                None
            }
            Ok(r) => Some(r),
        },
    };
    let check_owners = record.as_ref().is_none_or(|r| r.owners);
    if !check_owners {
        report.notes.push("installed without root (the record says so): owners and groups not checked".into());
    }
    if let Some(r) = &record {
        if r.format != RECORD_FORMAT {
            diff(
                &mut report,
                &m.record.path,
                format!("record format {} (this strata reads {RECORD_FORMAT})", r.format),
            );
        }
        let ours = sha256_hex(MANIFEST.as_bytes());
        if r.manifest_sha256 != ours {
            diff(
                &mut report,
                &m.record.path,
                format!(
                    "written for another manifest (sha256 {}, this strata's is {ours}; strata {} recorded, this is {})",
                    r.manifest_sha256,
                    r.strata_version,
                    env!("CARGO_PKG_VERSION")
                ),
            );
        }
        for path in r.files.keys() {
            if !m.file.iter().any(|f| &f.path == path) {
                diff(&mut report, path, "in the install record but not in the manifest".into());
            }
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(&record_path) {
        attributes(&mut report, &m.record.path, &meta, &m.record.owner, &m.record.group, &m.record.mode, check_owners);
    }

    for d in &m.directory {
        match std::fs::symlink_metadata(under(root, &d.path)) {
            Err(e) => diff(&mut report, &d.path, format!("directory missing ({e})")),
            Ok(meta) if !meta.is_dir() => diff(&mut report, &d.path, format!("not a directory ({})", kind(&meta))),
            Ok(meta) => attributes(&mut report, &d.path, &meta, &d.owner, &d.group, &d.mode, check_owners),
        }
    }

    for f in &m.file {
        let full = under(root, &f.path);
        let meta = match std::fs::symlink_metadata(&full) {
            Err(e) => {
                diff(&mut report, &f.path, format!("missing ({e})"));
                continue;
            }
            Ok(meta) if !meta.is_file() => {
                diff(&mut report, &f.path, format!("not a regular file ({})", kind(&meta)));
                continue;
            }
            Ok(meta) => meta,
        };
        attributes(&mut report, &f.path, &meta, &f.owner, &f.group, &f.mode, check_owners);
        if let Some(r) = &record {
            match (r.files.get(&f.path), sha256_file(&full)) {
                (None, _) => diff(&mut report, &f.path, "no hash in the install record".into()),
                (Some(_), Err(e)) => diff(&mut report, &f.path, format!("unreadable ({e})")),
                (Some(want), Ok(got)) if *want != got => {
                    let what = format!("content differs from the install record (sha256 {got}, recorded {want})");
                    if f.config && allow_config_edits {
                        report.notes.push(format!("{}: configuration edited since install", f.path));
                    } else if f.config {
                        diff(&mut report, &f.path, format!("{what}; a configuration file: edited since install?"));
                    } else {
                        diff(&mut report, &f.path, what);
                    }
                }
                _ => {}
            }
        }
        if f.config
            && let Err(e) = strata_config::Config::from_file(&full)
        {
            diff(&mut report, &f.path, format!("configuration invalid: {e}"));
        }
    }

    for s in &m.symlink {
        match std::fs::read_link(under(root, &s.path)) {
            Err(e) => diff(&mut report, &s.path, format!("symbolic link missing or not a link ({e})")),
            Ok(target) if target != Path::new(&s.target) => {
                diff(&mut report, &s.path, format!("links to {}, not {}", target.display(), s.target))
            }
            Ok(_) => {}
        }
    }

    // Nothing but the manifest's entries in strata's own directories.
    for d in m.directory.iter().filter(|d| d.exclusive) {
        let Ok(entries) = std::fs::read_dir(under(root, &d.path)) else { continue };
        let mut extra: Vec<String> = entries
            .flatten()
            .map(|e| format!("{}/{}", d.path.trim_end_matches('/'), e.file_name().to_string_lossy()))
            .filter(|p| {
                *p != m.record.path
                    && !m.file.iter().any(|f| &f.path == p)
                    && !m.directory.iter().any(|x| &x.path == p)
                    && !m.symlink.iter().any(|s| &s.path == p)
            })
            .collect();
        extra.sort();
        for p in extra {
            diff(&mut report, &p, "not in the manifest".into());
        }
    }
    report
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

fn attributes(
    report: &mut Report,
    path: &str,
    meta: &std::fs::Metadata,
    owner: &str,
    group: &str,
    mode: &str,
    check_owners: bool,
) {
    let want = parse_mode(mode);
    let got = meta.mode() & 0o7777;
    if got != want {
        report.differences.push(format!("{path}: mode {got:04o}, manifest says {want:04o}"));
    }
    if !check_owners {
        return;
    }
    let user_name = |uid: u32| {
        User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map_or_else(|| uid.to_string(), |u| u.name)
    };
    let group_name = |gid: u32| {
        Group::from_gid(nix::unistd::Gid::from_raw(gid)).ok().flatten().map_or_else(|| gid.to_string(), |g| g.name)
    };
    match User::from_name(owner).ok().flatten() {
        Some(u) if u.uid.as_raw() == meta.uid() => {}
        Some(_) => {
            report.differences.push(format!("{path}: owner {}, manifest says {owner}", user_name(meta.uid())));
        }
        None => report.differences.push(format!("{path}: owner {owner} (from the manifest) does not exist")),
    }
    match Group::from_name(group).ok().flatten() {
        Some(g) if g.gid.as_raw() == meta.gid() => {}
        Some(_) => {
            report.differences.push(format!("{path}: group {}, manifest says {group}", group_name(meta.gid())));
        }
        None => report.differences.push(format!("{path}: group {group} (from the manifest) does not exist")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_parses_and_is_consistent() {
        let m = manifest();
        let mut paths = vec![m.record.path.clone()];
        for d in &m.directory {
            parse_mode(&d.mode);
            paths.push(d.path.clone());
        }
        for f in &m.file {
            parse_mode(&f.mode);
            assert!(f.path.starts_with('/'), "{}", f.path);
            paths.push(f.path.clone());
            if !f.source.starts_with("build:") {
                let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(&f.source);
                assert!(repo.is_file(), "{}: source {} is not in the repository", f.path, f.source);
            }
        }
        paths.extend(m.symlink.iter().map(|s| s.path.clone()));
        let mut unique = paths.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), paths.len(), "a path appears twice in the manifest");
        // The supervisor execs its children from its own directory: all five
        // together; the operators' client stratactl alone in /usr/bin.
        let bins: Vec<&File> = m.file.iter().filter(|f| f.source.starts_with("build:")).collect();
        let (appliance, clients): (Vec<&File>, Vec<&File>) =
            bins.iter().partition(|f| Path::new(&f.path).parent() == Some(Path::new("/usr/lib/strata")));
        assert_eq!(appliance.len(), 5);
        assert_eq!(clients.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["/usr/bin/stratactl"]);
        parse_mode(&m.record.mode);
    }

    #[test]
    fn the_shipped_configuration_is_valid() {
        let m = manifest();
        for f in m.file.iter().filter(|f| f.config) {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(&f.source);
            strata_config::Config::from_file(&repo).unwrap();
        }
    }
}
