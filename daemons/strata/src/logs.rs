//! Statistics logs like chrony's `log measurements statistics tracking`: one file
//! per kind in the configured directory, a header when a file is started, one line
//! per record in stable columns. The engine sends numbers (`LogRecord`); only the
//! supervisor formats and writes, so a compromised engine cannot write arbitrary
//! text. Safe with logrotate: before every write the file is reopened if the path no
//! longer names the open file (renamed away), so no postrotate signal is needed.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use strata_config::{LogKind, LogsConfig};
use strata_proto::ipc::LogRecord;
use strata_proto::ntp::LeapIndicator;

const RULE: &str = "==================================================================================================";

fn file_name(kind: LogKind) -> &'static str {
    match kind {
        LogKind::Measurements => "measurements.log",
        LogKind::Statistics => "statistics.log",
        LogKind::Tracking => "tracking.log",
        LogKind::Refclocks => "refclocks.log",
    }
}

fn header(kind: LogKind) -> &'static str {
    match kind {
        LogKind::Measurements => {
            "   Date (UTC) Time     IP Address                      L St      Offset   Peer del.  Peer disp.   Root del.  Root disp. M"
        }
        LogKind::Statistics => {
            "   Date (UTC) Time     IP Address                          Offset      Jitter  Dispersion Reach"
        }
        LogKind::Tracking => {
            "   Date (UTC) Time     IP Address                      St   Freq ppm   Skew ppm      Offset L   Root del.  Root disp."
        }
        LogKind::Refclocks => "   Date (UTC) Time     Refclock      Offset  Dispersion",
    }
}

pub struct Logs {
    dir: PathBuf,
    kinds: Vec<LogKind>,
    open: HashMap<&'static str, (File, u64, u64)>,
}

impl Logs {
    pub fn new(config: &LogsConfig) -> std::io::Result<Logs> {
        std::fs::create_dir_all(&config.dir)?;
        Ok(Logs { dir: config.dir.clone(), kinds: config.kinds.clone(), open: HashMap::new() })
    }

    /// Write one record, if its kind is configured. Non-finite numbers: dropped.
    pub fn write(&mut self, record: &LogRecord) -> std::io::Result<()> {
        let Some((kind, line)) = format(record) else { return Ok(()) };
        if !self.kinds.contains(&kind) {
            return Ok(());
        }
        let name = file_name(kind);
        let path = self.dir.join(name);
        // Reopen when the path names another file (logrotate renamed ours) or none.
        let current = std::fs::metadata(&path).ok().map(|m| (m.dev(), m.ino()));
        let stale = match (self.open.get(name), current) {
            (Some(&(_, dev, ino)), Some(now)) => (dev, ino) != now,
            _ => true,
        };
        if stale {
            let mut file = File::options().create(true).append(true).open(&path)?;
            let meta = file.metadata()?;
            if meta.len() == 0 {
                writeln!(file, "{RULE}\n{}\n{RULE}", header(kind))?;
            }
            self.open.insert(name, (file, meta.dev(), meta.ino()));
        }
        let (file, _, _) = self.open.get_mut(name).expect("opened above");
        writeln!(file, "{line}")
    }
}

fn leap_letter(leap: LeapIndicator) -> char {
    match leap {
        LeapIndicator::NoWarning => 'N',
        LeapIndicator::InsertSecond => '+',
        LeapIndicator::DeleteSecond => '-',
        LeapIndicator::Unsynchronised => '?',
    }
}

/// The line for a record, or `None` if a number in it is not finite.
fn format(record: &LogRecord) -> Option<(LogKind, String)> {
    let finite = |values: &[f64]| values.iter().all(|v| v.is_finite());
    match *record {
        LogRecord::Measurement {
            time_unix_ns,
            source,
            leap,
            stratum,
            offset_s,
            delay_s,
            dispersion_s,
            root_delay_s,
            root_dispersion_s,
            interleaved,
        } => finite(&[offset_s, delay_s, dispersion_s, root_delay_s, root_dispersion_s]).then(|| {
            (
                LogKind::Measurements,
                format!(
                    "{} {:<31} {} {:2} {:11.4e} {:11.4e} {:11.4e} {:11.4e} {:11.4e} {}",
                    date_time(time_unix_ns),
                    source.ip(),
                    leap_letter(leap),
                    stratum,
                    offset_s,
                    delay_s,
                    dispersion_s,
                    root_delay_s,
                    root_dispersion_s,
                    if interleaved { 'I' } else { 'B' }
                ),
            )
        }),
        LogRecord::Statistics { time_unix_ns, source, offset_s, jitter_s, dispersion_s, reach } => {
            finite(&[offset_s, jitter_s, dispersion_s]).then(|| {
                (
                    LogKind::Statistics,
                    format!(
                        "{} {:<31} {:11.4e} {:11.4e} {:11.4e}   {:03o}",
                        date_time(time_unix_ns),
                        source.ip(),
                        offset_s,
                        jitter_s,
                        dispersion_s,
                        reach
                    ),
                )
            })
        }
        LogRecord::Tracking {
            time_unix_ns,
            reference,
            stratum,
            frequency_ppm,
            skew_ppm,
            offset_s,
            leap,
            root_delay_s,
            root_dispersion_s,
        } => finite(&[frequency_ppm, skew_ppm, offset_s, root_delay_s, root_dispersion_s]).then(|| {
            let reference = reference.map_or("-".to_string(), |r| r.ip().to_string());
            (
                LogKind::Tracking,
                format!(
                    "{} {:<31} {:2} {:10.3} {:10.3} {:11.4e} {} {:11.4e} {:11.4e}",
                    date_time(time_unix_ns),
                    reference,
                    stratum,
                    // chrony's columns: the clock's rate error (positive: fast) and
                    // local − reference (positive: ahead), the negations of the record's.
                    -frequency_ppm,
                    skew_ppm,
                    -offset_s,
                    leap_letter(leap),
                    root_delay_s,
                    root_dispersion_s
                ),
            )
        }),
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix time.
fn date_time(unix_ns: i64) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = strata_proto::calendar::civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(t: i64) -> LogRecord {
        LogRecord::Measurement {
            time_unix_ns: t,
            source: "127.0.0.1:123".parse().unwrap(),
            leap: LeapIndicator::NoWarning,
            stratum: 1,
            offset_s: -4.5e-6,
            delay_s: 1.0e-5,
            dispersion_s: 1.2e-6,
            root_delay_s: 0.0,
            root_dispersion_s: 0.0,
            interleaved: false,
        }
    }

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(date_time(0), "1970-01-01 00:00:00");
        assert_eq!(date_time(1_795_279_967_000_000_000), "2026-11-21 16:52:47");
        assert_eq!(date_time(951_782_400_000_000_000), "2000-02-29 00:00:00");
        assert_eq!(date_time(2_085_978_496_000_000_000), "2036-02-07 06:28:16");
    }

    #[test]
    fn a_new_file_gets_a_header_and_a_renamed_one_is_followed_by_a_new_file() {
        let dir = std::env::temp_dir().join(format!("strata-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut logs = Logs::new(&LogsConfig { dir: dir.clone(), kinds: vec![LogKind::Measurements] }).unwrap();
        logs.write(&measurement(0)).unwrap();
        logs.write(&measurement(1_000_000_000)).unwrap();
        // Not configured: not written.
        logs.write(&LogRecord::Statistics {
            time_unix_ns: 0,
            source: "127.0.0.1:123".parse().unwrap(),
            offset_s: 0.0,
            jitter_s: 0.0,
            dispersion_s: 0.0,
            reach: 0o377,
        })
        .unwrap();
        std::fs::rename(dir.join("measurements.log"), dir.join("measurements.log.1")).unwrap();
        logs.write(&measurement(2_000_000_000)).unwrap();
        let old = std::fs::read_to_string(dir.join("measurements.log.1")).unwrap();
        let new = std::fs::read_to_string(dir.join("measurements.log")).unwrap();
        assert_eq!(old.lines().count(), 5, "{old}");
        assert!(old.lines().nth(1).unwrap().contains("IP Address"));
        assert!(old.lines().nth(3).unwrap().starts_with("1970-01-01 00:00:00 127.0.0.1"));
        assert_eq!(new.lines().count(), 4, "{new}");
        assert!(new.lines().nth(3).unwrap().starts_with("1970-01-01 00:00:02"));
        assert!(!dir.join("statistics.log").exists());
        // Stable columns: every data line has the same number of fields.
        let fields: Vec<usize> = old.lines().skip(3).map(|l| l.split_whitespace().count()).collect();
        assert!(fields.iter().all(|&n| n == 11), "{fields:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_tracking_line_has_chronys_signs() {
        // The discipline sped the clock up by 12.5 ppm (it ran slow) and the reference is
        // 3 µs ahead of it: chrony writes a negative frequency and a negative offset.
        let record = LogRecord::Tracking {
            time_unix_ns: 0,
            reference: Some("192.0.2.1:123".parse().unwrap()),
            stratum: 2,
            frequency_ppm: 12.5,
            skew_ppm: 0.25,
            offset_s: 3e-6,
            leap: LeapIndicator::NoWarning,
            root_delay_s: 1e-3,
            root_dispersion_s: 2e-3,
        };
        let (kind, line) = format(&record).unwrap();
        assert_eq!(kind, LogKind::Tracking);
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&fields[2..8], ["192.0.2.1", "2", "-12.500", "0.250", "-3.0000e-6", "N"], "{line}");
    }

    #[test]
    fn records_with_non_finite_numbers_are_dropped() {
        let bad = LogRecord::Tracking {
            time_unix_ns: 0,
            reference: None,
            stratum: 2,
            frequency_ppm: f64::NAN,
            skew_ppm: 0.0,
            offset_s: 0.0,
            leap: LeapIndicator::NoWarning,
            root_delay_s: 0.0,
            root_dispersion_s: 0.0,
        };
        assert_eq!(format(&bad), None);
    }
}
