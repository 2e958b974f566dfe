//! chronyc's way of writing time-keeping values (client.c `print_nanoseconds`,
//! `print_seconds`, `print_freq_ppm`, the `%T` date), so an operator's eye and
//! a script written for chronyc find the same shapes in stratactl's output.

/// An offset with a unit chosen so that at most four digits show
/// (chronyc `%S`): `  12us`, ` 1234ns`, `  1.5s`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.abs();
    scaled(s, false)
}

/// A signed offset with a unit (chronyc `%+S`): `  +12us`, `-1234ns`.
pub fn signed_duration(seconds: f64) -> String {
    scaled(seconds, true)
}

fn scaled(seconds: f64, signed: bool) -> String {
    let x = seconds.abs();
    // The thresholds are chronyc's: switch units where four digits overflow.
    let (value, unit, decimals) = if x < 9999.5e-9 {
        (seconds * 1e9, "ns", 0)
    } else if x < 9999.5e-6 {
        (seconds * 1e6, "us", 0)
    } else if x < 9999.5e-3 {
        (seconds * 1e3, "ms", 0)
    } else if x < 999.5 {
        (seconds, "s", 1)
    } else if x < 99999.5 {
        (seconds, "s", 0)
    } else if x < 99999.5 * 60.0 {
        (seconds / 60.0, "m", 0)
    } else if x < 99999.5 * 3600.0 {
        (seconds / 3600.0, "h", 0)
    } else if x < 99999.5 * 86400.0 {
        (seconds / 86400.0, "d", 0)
    } else {
        (seconds / (86400.0 * 365.0), "y", 0)
    };
    // chronyc pads the number to 4 (5 signed) characters before a two-letter
    // unit, and to 5 (6 signed) before a one-letter unit.
    let width = if unit.len() == 2 { 4 } else { 5 } + usize::from(signed);
    if signed { format!("{value:>+width$.decimals$}{unit}") } else { format!("{value:>width$.decimals$}{unit}") }
}

/// Seconds since an event, four characters wide (chronyc `%I`): `  34`,
/// ` 20m`, `  5h`, ` 12d`; `   -` when it never happened.
pub fn age(seconds: Option<u32>) -> String {
    match seconds {
        None | Some(u32::MAX) => "   -".to_string(),
        Some(s) if s < 1200 => format!("{s:4}"),
        Some(s) if s < 36000 => format!("{:3}m", s / 60),
        Some(s) if s < 345_600 => format!("{:3}h", s / 3600),
        Some(s) => {
            let days = s / 86400;
            if days > 999 { format!("{:3}y", days / 365) } else { format!("{days:3}d") }
        }
    }
}

/// A sample's age as whole seconds, saturating, as chrony keeps it.
pub fn whole_seconds(seconds: Option<f64>) -> Option<u32> {
    // `as` saturates for floats: NaN becomes 0, huge ages u32::MAX - 1 is fine.
    seconds.map(|s| if s.is_nan() || s < 0.0 { 0 } else { s.floor().min(f64::from(u32::MAX - 1)) as u32 })
}

/// A Unix time in nanoseconds as chronyc's `%T`: `Thu Jan 01 00:00:00 1970` (UTC).
pub fn utc_date(unix_ns: i64) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86400);
    let of_day = secs.rem_euclid(86400);
    let (year, month, day) = strata_proto::calendar::civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{} {} {:02} {:02}:{:02}:{:02} {}",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        day,
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        year
    )
}

/// A Unix time in nanoseconds as chronyc -c writes a timestamp: `1700000000.000000123`.
pub fn unix_seconds(unix_ns: i64) -> String {
    format!("{}.{:09}", unix_ns.div_euclid(1_000_000_000), unix_ns.rem_euclid(1_000_000_000))
}

/// A source name as chronyc shows it: the port only when it is not NTP's 123,
/// IPv6 without brackets then.
pub fn source_name(name: &str) -> &str {
    if let Some(host) = name.strip_suffix(":123") {
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return v6;
        }
        if !host.contains(':') {
            return host;
        }
    }
    name
}

/// Cut a name to `width` characters with `>` as the last one, as chronyc does
/// for long host names in its tables.
pub fn truncate(name: &str, width: usize) -> String {
    if name.chars().count() > width {
        let mut cut: String = name.chars().take(width - 1).collect();
        cut.push('>');
        cut
    } else {
        name.to_string()
    }
}

/// The reference id as eight upper-case hex digits, `00000000` when none.
pub fn refid_hex(reference_id: &str) -> String {
    if reference_id.is_empty() { "00000000".to_string() } else { reference_id.to_ascii_uppercase() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_switch_units_like_chronyc() {
        assert_eq!(duration(0.000_000_123), " 123ns");
        assert_eq!(duration(-0.000_012_345), "  12us");
        assert_eq!(duration(0.009_999_4), "9999us");
        assert_eq!(duration(0.009_999_6), "  10ms");
        assert_eq!(duration(1.25), "1250ms");
        assert_eq!(duration(12.34), " 12.3s");
        assert_eq!(duration(1500.0), " 1500s");
        assert_eq!(duration(7200.0 * 60.0), " 7200m");
    }

    #[test]
    fn signed_durations_carry_the_sign() {
        assert_eq!(signed_duration(0.000_012_345), "  +12us");
        assert_eq!(signed_duration(-0.000_000_5), " -500ns");
        assert_eq!(signed_duration(-2.5), "-2500ms");
        assert_eq!(signed_duration(-25.0), " -25.0s");
    }

    #[test]
    fn ages_are_four_characters() {
        assert_eq!(age(None), "   -");
        assert_eq!(age(Some(34)), "  34");
        assert_eq!(age(Some(1200)), " 20m");
        assert_eq!(age(Some(36000)), " 10h");
        assert_eq!(age(Some(345_600)), "  4d");
        assert_eq!(age(Some(1000 * 86400)), "  2y");
        assert_eq!(whole_seconds(Some(33.9)), Some(33));
    }

    #[test]
    fn dates_are_chronyc_ref_time() {
        assert_eq!(utc_date(0), "Thu Jan 01 00:00:00 1970");
        // 2024-02-29 12:34:56 UTC, a leap day, was a Thursday.
        assert_eq!(utc_date(1_709_210_096_000_000_000), "Thu Feb 29 12:34:56 2024");
        assert_eq!(unix_seconds(1_709_210_096_000_000_123), "1709210096.000000123");
    }

    #[test]
    fn names_drop_the_ntp_port() {
        assert_eq!(source_name("192.0.2.1:123"), "192.0.2.1");
        assert_eq!(source_name("[2001:db8::1]:123"), "2001:db8::1");
        assert_eq!(source_name("192.0.2.1:4123"), "192.0.2.1:4123");
        assert_eq!(source_name("GPS"), "GPS");
        assert_eq!(truncate("2001:db8:1234:5678:9abc:def0:1:2", 25), "2001:db8:1234:5678:9abc:>");
    }
}
