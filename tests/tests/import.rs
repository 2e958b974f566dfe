//! `strata import-chrony` on a real-world chrony.conf, then `strata check-config` on
//! what it wrote.

use std::process::Command;

use strata_tests::{bin_dir, ensure_built, scratch_dir};

/// A Russian how-to on chrony with a PHC refclock; its chrony.conf is the first
/// ```bash block after "### Файл /etc/chrony/chrony.conf".
const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/seeds/000_1bf9761bae3b57fa.txt");

fn strata(args: &[&str]) -> (Option<i32>, String, String) {
    ensure_built();
    let out = Command::new(bin_dir().join("strata")).args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn seed_chrony_conf() -> String {
    let seed = std::fs::read_to_string(SEED).unwrap_or_else(|e| panic!("{SEED}: {e}"));
    let after_title = seed.split_once("### Файл /etc/chrony/chrony.conf").expect("the chrony.conf section").1;
    let block = after_title.split_once("```bash\n").expect("its code block").1;
    let conf = block.split_once("```").expect("the end of the block").0;
    assert!(conf.starts_with("# Основной источник"), "{conf}");
    conf.to_string()
}

/// 1-based line of the `nth` (from 0) line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str, nth: usize) -> usize {
    text.lines().enumerate().filter(|(_, l)| l.starts_with(prefix)).nth(nth).map(|(i, _)| i + 1).unwrap()
}

#[test]
fn a_real_chrony_conf_imports_and_the_result_passes_check_config() {
    let conf = seed_chrony_conf();
    let dir = scratch_dir("import-chrony");
    let chrony = dir.join("chrony.conf");
    std::fs::write(&chrony, &conf).unwrap();
    let chrony = chrony.to_str().unwrap();
    let out = dir.join("strata.toml");

    let (code, stdout, stderr) = strata(&["import-chrony", chrony, "--output", out.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let toml = std::fs::read_to_string(&out).unwrap();

    // The lines as written in the seed: the refclock is line 2, the cmdallows 40 and 41.
    let (refclock, cmdallow) =
        (line_of(&conf, "refclock PHC", 0), [line_of(&conf, "cmdallow", 0), line_of(&conf, "cmdallow", 1)]);
    assert_eq!((refclock, cmdallow), (2, [40, 41]));
    let listed = |line: usize, directive: &str, reason: &str| {
        let expected = format!("{chrony}:{line}: {directive}: {reason}\n");
        assert!(stderr.contains(&expected), "{expected:?} not in:\n{stderr}");
    };
    // The PHC refclock converts whole, poll and dpoll included: nothing is listed.
    assert!(!stderr.contains(&format!("{chrony}:{refclock}:")), "{stderr}");
    for line in cmdallow {
        listed(line, "cmdallow", "the control plane is configured in strata's [control] (not yet)");
    }
    // Every stderr line has the FILE:LINE: DIRECTIVE: REASON shape.
    for l in stderr.lines() {
        let rest = l.strip_prefix(&format!("{chrony}:")).unwrap_or_else(|| panic!("{l}"));
        let (line, rest) = rest.split_once(": ").unwrap();
        assert!(line.parse::<usize>().is_ok() && rest.contains(": "), "{l}");
    }

    // The refclock stays in the output for the operator, and the servers, the
    // allow lines and the local stratum are converted.
    assert!(toml.contains("# line 2: refclock PHC /dev/ptp0 poll 3 dpoll -2"), "{toml}");
    assert!(toml.contains("[[refclock]]") && toml.contains("driver = \"phc:/dev/ptp0\""), "{toml}");
    assert!(toml.contains("precision = 0.000000001") && toml.contains("prefer = true"), "{toml}");
    assert!(toml.contains("poll = 3\ndpoll = -2\n"), "{toml}");
    assert_eq!(toml.matches("[[upstream]]").count(), 4, "{toml}");
    assert!(toml.contains("\"allow 192.168.0.0/16\""), "{toml}");
    assert!(toml.contains("local-stratum = 2"), "{toml}");
    assert!(toml.contains("makestep = { threshold = 1.0, limit = 3 }"), "{toml}");

    let (code, stdout, stderr) = strata(&["check-config", out.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}\n{toml}");
    assert!(stdout.ends_with(": ok\n"), "{stdout}");

    // Without --output the same TOML goes to stdout.
    let (code, stdout, _) = strata(&["import-chrony", chrony]);
    assert_eq!(code, Some(0));
    assert_eq!(stdout, toml);
}

#[test]
fn an_unreadable_file_is_the_only_failure() {
    let dir = scratch_dir("import-chrony-missing");
    let missing = dir.join("no-such-chrony.conf");
    let (code, stdout, stderr) = strata(&["import-chrony", missing.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty());
    assert!(stderr.starts_with(&format!("{}: cannot read", missing.display())), "{stderr}");

    let empty = dir.join("empty.conf");
    std::fs::write(&empty, "").unwrap();
    let (code, stdout, stderr) = strata(&["import-chrony", empty.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert!(stdout.contains("backend = \"system\""), "{stdout}");
}
