//! chronyc-like reports for a person at a terminal: "Name : value" lines and
//! fixed-width tables with the headers, columns and legends of chronyc 4, so
//! that an operator who knows `chronyc sources` reads `stratactl sources`.
//!
//! Where strata has no value for one of chronyc's fields (residual frequency,
//! update interval, the sourcestats regression) the line or column is left
//! out rather than filled with an invented number.

use std::fmt::Write as _;

use strata_grpc::v1::{
    ActivityReply, ClientsReply, Failover, Leap, ProcessesReply, RefclocksReply, ServerStatsReply, Source, SourceKind,
    SourceState, SourcesReply, TrackingReply,
};

use crate::units::{age, duration, refid_hex, signed_duration, source_name, truncate, utc_date, whole_seconds};

/// A header line underlined with `=`, as chronyc's `print_header`.
fn header(out: &mut String, title: &str) {
    out.push_str(title);
    out.push('\n');
    out.push_str(&"=".repeat(title.len()));
    out.push('\n');
}

/// chronyc's words for the leap indicator (`%L`).
pub fn leap_words(leap: i32) -> &'static str {
    match Leap::try_from(leap) {
        Ok(Leap::Normal) => "Normal",
        Ok(Leap::InsertSecond) => "Insert second",
        Ok(Leap::DeleteSecond) => "Delete second",
        Ok(Leap::Unsynchronised) => "Not synchronised",
        Err(_) => "Invalid",
    }
}

/// chronyc tracking. `offset_s` is the served clock minus true time, so a
/// positive offset is a clock running ahead: "fast of NTP time".
pub fn tracking(t: &TrackingReply) -> String {
    let mut out = String::new();
    let fast_or_slow = |positive_is_fast: bool| if positive_is_fast { "fast" } else { "slow" };
    let _ = writeln!(out, "Reference ID    : {} ({})", refid_hex(&t.reference_id), source_name(&t.reference));
    let _ = writeln!(out, "Stratum         : {}", t.stratum);
    let _ = writeln!(out, "Ref time (UTC)  : {}", utc_date(t.reference_time_unix_ns));
    let _ = writeln!(
        out,
        "System time     : {:.9} seconds {} of NTP time",
        t.offset_s.abs(),
        fast_or_slow(t.offset_s >= 0.0)
    );
    let _ = writeln!(out, "Last offset     : {:+.9} seconds", t.offset_s);
    let _ = writeln!(out, "RMS offset      : {:.9} seconds", t.rms_offset_s);
    // chronyc writes a positive frequency as "fast" (client.c, `%F`).
    let _ = writeln!(out, "Frequency       : {:.3} ppm {}", t.frequency_ppm.abs(), fast_or_slow(t.frequency_ppm > 0.0));
    let _ = writeln!(out, "Skew            : {:.3} ppm", t.skew_ppm);
    let _ = writeln!(out, "Root delay      : {:.9} seconds", t.root_delay_s);
    let _ = writeln!(out, "Root dispersion : {:.9} seconds", t.root_dispersion_s);
    let _ = writeln!(out, "Leap status     : {}", leap_words(t.leap));
    let _ = writeln!(out, "Synchronised    : {}", yes_no(t.synchronised));
    let _ = writeln!(out, "Clock backend   : {}", or_dash(&t.clock_backend));
    let _ = writeln!(out, "Steps left      : {}", t.steps_left);
    out
}

/// chronyc's mode column: `^` an NTP server, `#` a reference clock.
pub fn mode_symbol(s: &Source) -> char {
    match SourceKind::try_from(s.kind) {
        Ok(SourceKind::Server) => '^',
        Ok(SourceKind::Refclock) => '#',
        _ => ' ',
    }
}

/// chronyc's state column, from the server's symbol or, failing that, the state.
pub fn state_symbol(s: &Source) -> char {
    if let Some(c) = s.state_symbol.chars().next() {
        return c;
    }
    match SourceState::try_from(s.state) {
        Ok(SourceState::Selected) => '*',
        Ok(SourceState::Combined) => '+',
        Ok(SourceState::NotCombined | SourceState::Unselectable) => '-',
        Ok(SourceState::Unreachable | SourceState::Offline) => '?',
        Ok(SourceState::Falseticker) => 'x',
        Ok(SourceState::Jittery) => '~',
        _ => ' ',
    }
}

/// The offset chronyc shows: local clock minus source ("a positive offset
/// indicates that the local clock is ahead of the source"), the negation of
/// strata's source-minus-served-clock.
pub fn local_minus_source(offset_s: f64) -> f64 {
    // Subtracting from +0 keeps a zero offset from printing as "-0".
    0.0 - offset_s
}

/// chronyc's "+/- zzzz": the source's root distance as seen from here, half
/// the delays plus the dispersions (RFC 5905 section 11.2, without jitter).
pub fn estimated_error_s(s: &Source) -> f64 {
    (s.root_delay_s + s.delay_s) / 2.0 + s.root_dispersion_s + s.dispersion_s
}

const SOURCES_LEGEND: &str = "
  .-- Source mode  '^' = server, '#' = local clock.
 / .- Source state '*' = current best, '+' = combined, '-' = not combined,
| /             'x' = may be in error, '~' = too variable, '?' = unusable.
||                                                 .- xxxx [ yyyy ] +/- zzzz
||      Reachability register (octal) -.           |  xxxx = adjusted offset,
||      Log2(Polling interval) --.      |          |  yyyy = measured offset,
||                                \\     |          |  zzzz = estimated error.
||                                 |    |           \\
";

/// chronyc sources [-v].
pub fn sources(reply: &SourcesReply, verbose: bool) -> String {
    let mut out = String::new();
    if verbose {
        out.push_str(SOURCES_LEGEND);
    }
    header(&mut out, "MS Name/IP address         Stratum Poll Reach LastRx Last sample               ");
    for s in &reply.sources {
        let _ = writeln!(
            out,
            "{}{} {:<27}  {:>2}  {:>2}   {:>3o}  {}  {}[{}] +/- {}",
            mode_symbol(s),
            state_symbol(s),
            truncate(source_name(&s.name), 25),
            s.stratum,
            s.poll_log2,
            s.reach & 0xff,
            age(whole_seconds(s.last_sample_age_s)),
            signed_duration(local_minus_source(s.offset_s)),
            signed_duration(local_minus_source(s.last_offset_s)),
            duration(estimated_error_s(s)),
        );
    }
    out
}

const SOURCESTATS_LEGEND: &str = "                            .- Samples in the filter.
                            |       .- Offset (local minus source).
                            |       |       .- Std. deviation (jitter).
                            |       |       |       .- Round-trip delay.
                            |       |       |       |       .- Dispersion.
                            |       |       |       |       |
";

/// chronyc sourcestats [-v], with the columns strata measures: samples in
/// the filter, offset, jitter, delay and dispersion (strata's filter is not
/// chrony's regression, so NR, Span, Frequency and Freq Skew have no value).
pub fn sourcestats(reply: &SourcesReply, verbose: bool) -> String {
    let mut out = String::new();
    if verbose {
        out.push_str(SOURCESTATS_LEGEND);
    }
    let title =
        format!("{:<25} {:>3}{:>8}{:>8}{:>8}{:>8}", "Name/IP Address", "NP", "Offset", "Std Dev", "Delay", "Disp");
    header(&mut out, &title);
    for s in &reply.sources {
        let _ = writeln!(
            out,
            "{:<25} {:>3}{:>8}{:>8}{:>8}{:>8}",
            truncate(source_name(&s.name), 25),
            s.samples,
            signed_duration(local_minus_source(s.offset_s)),
            duration(s.jitter_s),
            duration(s.delay_s),
            duration(s.dispersion_s),
        );
    }
    out
}

/// Host and port of a server source's "192.0.2.1:123" / "[2001:db8::1]:123".
pub fn host_and_port(name: &str) -> (String, Option<u16>) {
    match name.parse::<std::net::SocketAddr>() {
        Ok(addr) => (addr.ip().to_string(), Some(addr.port())),
        Err(_) => (name.to_string(), None),
    }
}

/// The reference id NTP gives an IPv4 peer: its address (RFC 5905 section 7.3).
pub fn ipv4_refid(host: &str) -> Option<String> {
    host.parse::<std::net::Ipv4Addr>().ok().map(|ip| format!("{:08X}", u32::from(ip)))
}

/// The ASCII name a stratum-1 server puts in its reference id ("GPS", "PPS").
pub fn refid_ascii(reference_id: &str) -> String {
    let Ok(id) = u32::from_str_radix(reference_id, 16) else { return String::new() };
    id.to_be_bytes().iter().take_while(|&&b| b != 0).filter(|b| b.is_ascii_graphic()).map(|&b| char::from(b)).collect()
}

/// chronyc ntpdata for one server: what the server says of itself and the
/// packets exchanged with it.
pub fn ntpdata(s: &Source) -> String {
    let mut out = String::new();
    let (host, port) = host_and_port(&s.name);
    let remote_refid = ipv4_refid(&host).map(|r| format!(" ({r})")).unwrap_or_default();
    let _ = writeln!(out, "Remote address  : {host}{remote_refid}");
    let _ = writeln!(out, "Remote port     : {}", port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()));
    let _ = writeln!(out, "Stratum         : {}", s.stratum);
    let _ = writeln!(out, "Poll interval   : {} ({:.0} seconds)", s.poll_log2, 2f64.powi(s.poll_log2));
    let _ = writeln!(out, "Root delay      : {:.6} seconds", s.root_delay_s);
    let _ = writeln!(out, "Root dispersion : {:.6} seconds", s.root_dispersion_s);
    // chronyc names the reference only below stratum 2, where it is ASCII.
    let refid_name = if s.stratum <= 1 { refid_ascii(&s.reference_id) } else { String::new() };
    let _ = writeln!(out, "Reference ID    : {} ({refid_name})", refid_hex(&s.reference_id));
    let _ = writeln!(out, "Offset          : {:+.9} seconds", s.last_offset_s);
    let _ = writeln!(out, "Peer delay      : {:.9} seconds", s.delay_s);
    let _ = writeln!(out, "Peer dispersion : {:.9} seconds", s.dispersion_s);
    let _ = writeln!(out, "Interleaved     : {}", yes_no(s.interleaved));
    let _ = writeln!(out, "TX timestamping : {}", capitalised(&s.tx_timestamping));
    let _ = writeln!(out, "RX timestamping : {}", capitalised(&s.rx_timestamping));
    let _ = writeln!(out, "Total TX        : {}", s.packets_sent);
    let _ = writeln!(out, "Total RX        : {}", s.packets_received);
    let _ = writeln!(out, "Total KoD RX    : {}", s.kod_received);
    let _ = writeln!(out, "Prefer          : {}", yes_no(s.prefer));
    let _ = writeln!(out, "Noselect        : {}", yes_no(s.noselect));
    let _ = writeln!(out, "Online          : {}", yes_no(s.online));
    let _ = writeln!(out, "Added at run    : {}", yes_no(s.added));
    out
}

/// "kernel" → "Kernel", as chronyc prints it; "-" when unknown.
fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => "-".into(),
    }
}

/// A log2 interval column (chronyc `%C`): ` -` when none.
fn interval(log2: Option<i32>) -> String {
    match log2 {
        Some(v) if v < 127 => format!("{v:2}"),
        _ => " -".to_string(),
    }
}

/// chronyc clients, NTP columns only (strata has no command port to count).
pub fn clients(reply: &ClientsReply) -> String {
    let mut out = String::new();
    header(&mut out, "Hostname                      NTP   Drop Int IntL Last");
    for c in &reply.clients {
        let _ = writeln!(
            out,
            "{:<25}  {:>6}  {:>5}  {}  {}  {}",
            truncate(&c.address, 25),
            c.ntp_requests,
            c.dropped,
            interval(c.interval_log2),
            interval(c.limited_interval_log2),
            age(c.last_seen_s),
        );
    }
    out
}

/// chronyc serverstats, with strata's counters.
pub fn serverstats(r: &ServerStatsReply) -> String {
    let lines = [
        ("NTP packets received", r.received),
        ("NTP packets answered", r.answered),
        ("NTP packets malformed", r.malformed),
        ("NTP packets not client mode", r.not_client),
        ("NTP packets denied", r.denied),
        ("NTP packets rate-limited", r.rate_limited),
        ("KoD packets sent", r.kod_sent),
        ("NTP send failures", r.send_failed),
        ("Client log records", r.clients_logged),
        ("Client log memory (bytes)", r.client_log_bytes),
        ("Interleaved NTP packets", r.interleaved),
        ("NTP timestamps held", r.timestamps_held),
        ("NTP daemon RX timestamps", r.rx_daemon),
        ("NTP daemon TX timestamps", r.tx_daemon),
        ("NTP kernel RX timestamps", r.rx_kernel),
        ("NTP kernel TX timestamps", r.tx_kernel),
        ("NTP hardware RX timestamps", r.rx_hardware),
        ("NTP hardware TX timestamps", r.tx_hardware),
    ];
    lines.iter().map(|(name, value)| format!("{name:<27}: {value}\n")).collect()
}

/// chronyc activity.
pub fn activity(r: &ActivityReply) -> String {
    format!(
        "200 OK\n{} sources online\n{} sources offline\n{} sources unreachable\n",
        r.online, r.offline, r.unreachable
    )
}

/// The supervisor's view of the appliance's processes (strata's own table).
pub fn processes(reply: &ProcessesReply) -> String {
    let mut out = String::new();
    header(&mut out, "Role          PID Uptime Restarts State    Last exit");
    for p in &reply.processes {
        let pid = if p.pid == 0 { "-".to_string() } else { p.pid.to_string() };
        let uptime = if p.running { age(whole_seconds(Some(p.uptime_s))) } else { age(None) };
        let _ = writeln!(
            out,
            "{:<10} {:>6} {:>6} {:>8} {:<8} {}",
            p.role,
            pid,
            uptime,
            p.restarts,
            if p.running { "running" } else { "stopped" },
            or_dash(&p.last_exit),
        );
    }
    out
}

/// One switch of the system peer: `Thu Feb 29 12:34:56 2024  GPS -> 192.0.2.1`.
pub fn failover(f: &Failover) -> String {
    format!(
        "{:<24}  {:<25}  {}\n",
        utc_date(f.time_unix_ns),
        truncate(source_name(or_dash(&f.from)), 25),
        source_name(or_dash(&f.to))
    )
}

/// Refclock counters and the recent failovers, oldest first.
pub fn refclocks(r: &RefclocksReply) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Reference clocks : {}", r.refclocks);
    let _ = writeln!(out, "Samples sent     : {}", r.samples_sent);
    let _ = writeln!(out, "Samples rejected : {}", r.samples_rejected);
    let _ = writeln!(out, "Failovers        : {}", r.failovers_total);
    if !r.failovers.is_empty() {
        out.push('\n');
        header(&mut out, "Failover time (UTC)       From                       To");
        for f in &r.failovers {
            out.push_str(&failover(f));
        }
    }
    out
}

/// chronyc waitsync's line for the attempt that succeeded; the correction is
/// chrony's: |offset| + root dispersion + root delay / 2.
pub fn waitsync(t: &TrackingReply) -> String {
    format!("refid: {}, correction: {:.9}, skew: {:.3}\n", refid_hex(&t.reference_id), correction_s(t), t.skew_ppm)
}

/// The largest error of the served time, as chronyc waitsync computes it.
pub fn correction_s(t: &TrackingReply) -> f64 {
    t.offset_s.abs() + t.root_dispersion_s + t.root_delay_s / 2.0
}

fn yes_no(b: bool) -> &'static str {
    if b { "Yes" } else { "No" }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use strata_grpc::v1::{Client, Process};

    pub fn gps_tracking() -> TrackingReply {
        TrackingReply {
            reference: "GPS".into(),
            reference_id: "47505300".into(),
            stratum: 1,
            reference_time_unix_ns: 1_709_210_096_000_000_000,
            offset_s: 0.000_001_234,
            rms_offset_s: 0.000_000_456,
            frequency_ppm: -1.5,
            skew_ppm: 0.012,
            root_delay_s: 0.0,
            root_dispersion_s: 0.000_010,
            leap: Leap::Normal as i32,
            synchronised: true,
            clock_backend: "system".into(),
            steps_left: 1,
        }
    }

    pub fn two_sources() -> SourcesReply {
        SourcesReply {
            sources: vec![
                Source {
                    kind: SourceKind::Refclock as i32,
                    name: "GPS".into(),
                    state: SourceState::Selected as i32,
                    state_symbol: "*".into(),
                    stratum: 0,
                    poll_log2: 4,
                    reach: 0o377,
                    last_sample_age_s: Some(12.4),
                    offset_s: -0.000_000_123,
                    jitter_s: 0.000_000_050,
                    delay_s: 0.0,
                    dispersion_s: 0.000_000_200,
                    samples: 16,
                    last_offset_s: -0.000_000_150,
                    ..Default::default()
                },
                Source {
                    kind: SourceKind::Server as i32,
                    name: "192.0.2.1:123".into(),
                    state: SourceState::Combined as i32,
                    state_symbol: String::new(),
                    stratum: 2,
                    poll_log2: 6,
                    reach: 0o17,
                    last_sample_age_s: None,
                    offset_s: 0.000_123_4,
                    jitter_s: 0.000_020,
                    delay_s: 0.001_2,
                    dispersion_s: 0.000_1,
                    samples: 4,
                    last_offset_s: 0.012_6,
                    root_delay_s: 0.000_8,
                    root_dispersion_s: 0.000_3,
                    reference_id: "47505300".into(),
                    packets_sent: 10,
                    packets_received: 9,
                    online: true,
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn tracking_reads_like_chronyc() {
        assert_eq!(
            tracking(&gps_tracking()),
            "\
Reference ID    : 47505300 (GPS)
Stratum         : 1
Ref time (UTC)  : Thu Feb 29 12:34:56 2024
System time     : 0.000001234 seconds fast of NTP time
Last offset     : +0.000001234 seconds
RMS offset      : 0.000000456 seconds
Frequency       : 1.500 ppm slow
Skew            : 0.012 ppm
Root delay      : 0.000000000 seconds
Root dispersion : 0.000010000 seconds
Leap status     : Normal
Synchronised    : Yes
Clock backend   : system
Steps left      : 1
"
        );
    }

    #[test]
    fn unsynchronised_tracking_has_an_empty_reference() {
        let t = TrackingReply { leap: Leap::Unsynchronised as i32, ..Default::default() };
        let text = tracking(&t);
        assert!(text.starts_with("Reference ID    : 00000000 ()\n"), "{text}");
        assert!(text.contains("Leap status     : Not synchronised\n"), "{text}");
        assert!(text.contains("Clock backend   : -\n"), "{text}");
    }

    #[test]
    fn sources_table_has_chronyc_columns() {
        assert_eq!(
            sources(&two_sources(), false),
            "\
MS Name/IP address         Stratum Poll Reach LastRx Last sample               
===============================================================================
#* GPS                           0   4   377    12   +123ns[ +150ns] +/-  200ns
^+ 192.0.2.1                     2   6    17     -   -123us[  -13ms] +/- 1400us
"
        );
    }

    #[test]
    fn verbose_sources_start_with_the_legend() {
        let text = sources(&two_sources(), true);
        assert!(text.starts_with("\n  .-- Source mode  '^' = server, '#' = local clock.\n"), "{text}");
        assert!(text.contains("||                                 |    |           \\\nMS Name/IP address"), "{text}");
    }

    #[test]
    fn sourcestats_table() {
        assert_eq!(
            sourcestats(&two_sources(), false),
            "\
Name/IP Address            NP  Offset Std Dev   Delay    Disp
=============================================================
GPS                        16  +123ns    50ns     0ns   200ns
192.0.2.1                   4  -123us    20us  1200us   100us
"
        );
    }

    #[test]
    fn sourcestats_legend_points_at_the_columns() {
        let text = sourcestats(&two_sources(), true);
        let lines: Vec<&str> = text.lines().collect();
        let table = lines[6];
        // Each legend pointer sits over the last character of its column.
        for (pointer, column) in [(28, "NP"), (36, "Offset"), (44, "Std Dev"), (52, "Delay"), (60, "Disp")] {
            assert_eq!(&lines[5][pointer..=pointer], "|", "{text}");
            assert_eq!(&table[pointer + 1 - column.len()..=pointer], column, "{text}");
        }
    }

    #[test]
    fn ntpdata_for_a_server() {
        let reply = two_sources();
        let text = ntpdata(&reply.sources[1]);
        assert!(text.starts_with("Remote address  : 192.0.2.1 (C0000201)\nRemote port     : 123\n"), "{text}");
        assert!(text.contains("Poll interval   : 6 (64 seconds)\n"), "{text}");
        // A stratum-2 server's refid is an address, so it gets no name.
        assert!(text.contains("Reference ID    : 47505300 ()\n"), "{text}");
        assert!(text.contains("Offset          : +0.012600000 seconds\n"), "{text}");
        assert!(text.contains("Total TX        : 10\nTotal RX        : 9\n"), "{text}");
        assert_eq!(refid_ascii("47505300"), "GPS");
    }

    #[test]
    fn clients_and_counters() {
        let reply = ClientsReply {
            clients: vec![Client {
                address: "198.51.100.7".into(),
                ntp_requests: 1234,
                dropped: 5,
                interval_log2: Some(6),
                limited_interval_log2: None,
                last_seen_s: Some(3),
            }],
        };
        assert_eq!(
            clients(&reply),
            "\
Hostname                      NTP   Drop Int IntL Last
======================================================
198.51.100.7                 1234      5   6   -     3
"
        );
        let stats = ServerStatsReply { received: 10, answered: 9, ..Default::default() };
        assert!(serverstats(&stats).starts_with("NTP packets received       : 10\nNTP packets answered       : 9\n"));
        let act = ActivityReply { online: 2, offline: 1, unreachable: 0 };
        assert_eq!(activity(&act), "200 OK\n2 sources online\n1 sources offline\n0 sources unreachable\n");
    }

    #[test]
    fn processes_and_refclocks() {
        let reply = ProcessesReply {
            processes: vec![
                Process {
                    role: "ntp".into(),
                    pid: 1234,
                    uptime_s: 7300.0,
                    restarts: 0,
                    running: true,
                    ..Default::default()
                },
                Process {
                    role: "refclock".into(),
                    pid: 0,
                    uptime_s: 0.0,
                    restarts: 2,
                    last_exit: "killed by signal 9 (SIGKILL)".into(),
                    running: false,
                },
            ],
        };
        assert_eq!(
            processes(&reply),
            "\
Role          PID Uptime Restarts State    Last exit
====================================================
ntp          1234   121m        0 running  -
refclock        -      -        2 stopped  killed by signal 9 (SIGKILL)
"
        );
        let r = RefclocksReply {
            refclocks: 1,
            samples_sent: 100,
            samples_rejected: 2,
            failovers: vec![Failover {
                time_unix_ns: 1_709_210_096_000_000_000,
                from: "GPS".into(),
                to: "192.0.2.1:123".into(),
            }],
            failovers_total: 1,
        };
        let text = refclocks(&r);
        assert!(text.starts_with("Reference clocks : 1\nSamples sent     : 100\n"), "{text}");
        assert!(text.ends_with("Thu Feb 29 12:34:56 2024  GPS                        192.0.2.1\n"), "{text}");
    }

    #[test]
    fn waitsync_line() {
        assert_eq!(waitsync(&gps_tracking()), "refid: 47505300, correction: 0.000011234, skew: 0.012\n");
    }
}
