//! The Prometheus `/metrics` page: the control plane's last view of the
//! engine, the refclock reader and the supervisor, as metric families.
//!
//! Names follow the Prometheus conventions: prefix `strata_`, the base unit in
//! the name (`_seconds`, `_bytes`), `_total` on counters. They cover what the
//! seed's `chrony-ptp-exporter.sh` scraped from `chronyc sources`/`sourcestats`
//! with awk (reachability, stratum, offset, jitter) plus the selection state
//! its switch script had to guess, so no exporter is needed.
//!
//! prometheus-client encodes the families (a [`Collector`] over a copy of the
//! snapshot, in a fresh registry per scrape), and its encoder writes
//! OpenMetrics. Scrapers that do not ask for OpenMetrics (curl, `promtool
//! check metrics`, anything older) get the classic text format 0.0.4 instead.
//! For gauges and counters without exemplars, which is all this page has,
//! the two formats differ only in the counter family's name in `# HELP`/`# TYPE`
//! (`x` there, `x_total` here) and in the `# UNIT` and `# EOF` lines, so the
//! text format is derived from the OpenMetrics one line by line.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use strata_grpc::v1;

/// Everything a scrape shows, as the control plane last saw it. A `None`
/// (nothing heard from that process yet) leaves its series out: a scrape
/// never shows a made-up 0.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot<'a> {
    pub tracking: Option<&'a v1::TrackingReply>,
    pub sources: &'a [v1::Source],
    pub server: Option<&'a v1::ServerStatsReply>,
    pub processes: &'a [v1::Process],
    pub refclocks: Option<&'a v1::RefclocksReply>,
    pub activity: Option<&'a v1::ActivityReply>,
}

/// The exposition format of a scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: what curl and `promtool check metrics` read.
    Text,
    /// OpenMetrics 1.0.0 text, which Prometheus asks for first: it adds units
    /// and an `# EOF` line, so a truncated scrape is detected.
    OpenMetrics,
}

impl Format {
    /// Picks the format from an HTTP `Accept` header: OpenMetrics only when
    /// the scraper names it and does not prefer `text/plain` (Prometheus sends
    /// `application/openmetrics-text;version=1.0.0,...,text/plain;version=0.0.4;q=0.5,*/*;q=0.1`);
    /// the text format otherwise, including for `*/*` and no header at all.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
        for range in accept.unwrap_or_default().split(',') {
            let mut params = range.split(';').map(str::trim);
            let media_type = params.next().unwrap_or_default().to_ascii_lowercase();
            // RFC 9110 section 12.4.2: q is 1 unless given; a q that does not parse counts as 0.
            let q = params
                .find_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .map_or(1.0, |q| q.parse::<f32>().unwrap_or(0.0));
            match media_type.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text { Format::OpenMetrics } else { Format::Text }
    }

    /// The `Content-Type` to send with a page rendered in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The `/metrics` page for `snapshot`, in `format`.
pub fn render(snapshot: &Snapshot<'_>, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector::from(snapshot)));
    let mut openmetrics = String::new();
    // Writing to a String cannot fail, and the collector fails only when its writer does.
    prometheus_client::encoding::text::encode(&mut openmetrics, &registry).expect("encoding into a String");
    match format {
        Format::OpenMetrics => openmetrics,
        Format::Text => openmetrics_to_text(&openmetrics),
    }
}

/// Rewrites prometheus-client's OpenMetrics output (gauges and counters, no
/// exemplars, no `_created` series) as text format 0.0.4: a counter family
/// takes its samples' `_total` name, and `# UNIT` and `# EOF` go. Label
/// values and HELP need no change: both formats escape `\`, `"` and newline alike.
fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut text = String::with_capacity(openmetrics.len());
    // The encoder writes each family's HELP just before its TYPE, which says
    // whether the family is a counter; hold the HELP until then.
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if kind == "counter" { "_total" } else { "" };
            if let Some((help_name, help_text)) = help.take().and_then(|h| h.split_once(' ')) {
                text.push_str(&format!("# HELP {help_name}{suffix} {help_text}\n"));
            }
            text.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
        } else if !(line.starts_with("# UNIT ") || line == "# EOF") {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// The snapshot, copied: a registered collector must be `'static`, and the
/// copy is a few kilobytes per scrape.
#[derive(Debug)]
struct SnapshotCollector {
    tracking: Option<v1::TrackingReply>,
    sources: Vec<v1::Source>,
    server: Option<v1::ServerStatsReply>,
    processes: Vec<v1::Process>,
    refclocks: Option<v1::RefclocksReply>,
    activity: Option<v1::ActivityReply>,
}

impl From<&Snapshot<'_>> for SnapshotCollector {
    fn from(s: &Snapshot<'_>) -> Self {
        SnapshotCollector {
            tracking: s.tracking.cloned(),
            sources: s.sources.to_vec(),
            server: s.server.cloned(),
            processes: s.processes.to_vec(),
            refclocks: s.refclocks.cloned(),
            activity: s.activity.cloned(),
        }
    }
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        encode_sources(e, &self.sources)?;
        if let Some(tracking) = &self.tracking {
            encode_tracking(e, tracking)?;
        }
        if let Some(server) = &self.server {
            encode_server(e, server)?;
        }
        encode_processes(e, &self.processes)?;
        if let Some(refclocks) = &self.refclocks {
            encode_refclocks(e, refclocks)?;
        }
        if let Some(activity) = &self.activity {
            encode_activity(e, activity)?;
        }
        Ok(())
    }
}

/// chronyc's selection states, as the `state` label of `strata_source_state`.
const SOURCE_STATES: [(v1::SourceState, &str); 8] = [
    (v1::SourceState::Selected, "selected"),
    (v1::SourceState::Combined, "combined"),
    (v1::SourceState::NotCombined, "not_combined"),
    (v1::SourceState::Unreachable, "unreachable"),
    (v1::SourceState::Falseticker, "falseticker"),
    (v1::SourceState::Jittery, "jittery"),
    (v1::SourceState::Unselectable, "unselectable"),
    (v1::SourceState::Offline, "offline"),
];

type SourceLabels<'a> = [(&'static str, &'a str); 2];

fn source_labels(source: &v1::Source) -> SourceLabels<'_> {
    let kind = match source.kind() {
        v1::SourceKind::Server => "server",
        v1::SourceKind::Refclock => "refclock",
        v1::SourceKind::Unspecified => "unspecified",
    };
    [("source", source.name.as_str()), ("kind", kind)]
}

fn encode_sources(e: &mut DescriptorEncoder, sources: &[v1::Source]) -> fmt::Result {
    let each =
        |value: fn(&v1::Source) -> f64| sources.iter().map(move |s| (source_labels(s), ConstGauge::new(value(s))));
    let each_u32 =
        |value: fn(&v1::Source) -> u32| sources.iter().map(move |s| (source_labels(s), ConstGauge::new(value(s))));
    // Packet counters mean nothing for a refclock (its samples are in
    // strata_refclock_samples_total): leave them out rather than show 0.
    let servers = || sources.iter().filter(|s| s.kind() == v1::SourceKind::Server);
    // Before its first good sample a source has no estimate, only proto3's
    // zeros: an offset of exactly 0 would read as perfect, so leave it out.
    let estimated = |value: fn(&v1::Source) -> f64| {
        sources
            .iter()
            .filter(|s| s.last_sample_age_s.is_some())
            .map(move |s| (source_labels(s), ConstGauge::new(value(s))))
    };

    family(
        e,
        "strata_source_reachable",
        "1 if at least one of the source's last 8 polls got a valid answer (reach register non-zero), else 0.",
        each_u32(|s| u32::from(s.reach != 0)),
    )?;
    family(
        e,
        "strata_source_reach_register",
        "The source's reachability register (0-255): one bit per poll, newest in bit 0, set when the poll got a valid answer (chronyc sources Reach, there in octal).",
        each_u32(|s| s.reach),
    )?;
    family(e, "strata_source_stratum", "The source's stratum (chronyc sources Stratum).", each_u32(|s| s.stratum))?;
    family(
        e,
        "strata_source_offset_seconds",
        "The source's filtered offset in seconds: source time minus the served clock (positive means the served clock is behind the source); absent before its first sample.",
        estimated(|s| s.offset_s),
    )?;
    family(
        e,
        "strata_source_jitter_seconds",
        "How much the source's samples scatter around its estimate, in seconds (chronyc sourcestats Std Dev); absent before its first sample.",
        estimated(|s| s.jitter_s),
    )?;
    family(
        e,
        "strata_source_delay_seconds",
        "The source's round-trip delay in seconds, from its filtered samples; absent before its first sample.",
        estimated(|s| s.delay_s),
    )?;
    family(
        e,
        "strata_source_poll_interval_seconds",
        "Seconds between polls of the source now (2^poll, chronyc sources Poll).",
        each(|s| 2_f64.powi(s.poll_log2)),
    )?;
    family(
        e,
        "strata_source_last_sample_age_seconds",
        "Seconds since the source's last good sample; absent until its first one (chronyc sources LastRx).",
        sources.iter().filter_map(|s| Some((source_labels(s), ConstGauge::new(s.last_sample_age_s?)))),
    )?;
    family(
        e,
        "strata_source_selected",
        "1 for the source the clock is synchronised to (the system peer, * in chronyc sources), else 0.",
        each_u32(|s| u32::from(s.state() == v1::SourceState::Selected)),
    )?;
    family(
        e,
        "strata_source_state",
        "The source's selection state: one series per state, 1 for the current one (chronyc sources: selected *, combined +, not_combined -, unreachable ?, falseticker x, jittery ~; unselectable is noselect or too far; offline is not polled on request).",
        sources.iter().flat_map(|s| {
            let [source, kind] = source_labels(s);
            let current = s.state();
            SOURCE_STATES.iter().map(move |&(state, name)| {
                ([source, kind, ("state", name)], ConstGauge::new(u32::from(state == current)))
            })
        }),
    )?;
    family(
        e,
        "strata_source_packets_sent",
        "NTP requests sent to the source (NTP servers only).",
        servers().map(|s| (source_labels(s), ConstCounter::new(s.packets_sent))),
    )?;
    family(
        e,
        "strata_source_packets_received",
        "Packets received from the source, valid or not (NTP servers only).",
        servers().map(|s| (source_labels(s), ConstCounter::new(s.packets_received))),
    )?;
    family(
        e,
        "strata_source_kod_received",
        "Kiss-o'-death packets received from the source and acted upon (NTP servers only).",
        servers().map(|s| (source_labels(s), ConstCounter::new(s.kod_received))),
    )
}

fn encode_tracking(e: &mut DescriptorEncoder, t: &v1::TrackingReply) -> fmt::Result {
    single(
        e,
        "strata_tracking_offset_seconds",
        "The served clock minus true time in seconds, as last estimated (chronyc tracking Last offset).",
        ConstGauge::new(t.offset_s),
    )?;
    single(
        e,
        "strata_tracking_rms_offset_seconds",
        "Long-term average (RMS) of the clock's offset in seconds (chronyc tracking RMS offset).",
        ConstGauge::new(t.rms_offset_s),
    )?;
    // Frequency and skew stay in ppm rather than a _ratio scaled by 1e-6:
    // ppm is the unit of chrony, ntpd, the gRPC API and every datasheet an
    // operator compares against (an oscillator's "+/-20 ppm"), and node
    // exporter-style ratios of 1e-5 are read wrong more often than right.
    // chrony_exporter makes the same choice; promtool does not object.
    single(
        e,
        "strata_tracking_frequency_ppm",
        "How fast the system clock would run without correction, in parts per million (ppm; positive: fast) (chronyc tracking Frequency).",
        ConstGauge::new(t.frequency_ppm),
    )?;
    single(
        e,
        "strata_tracking_skew_ppm",
        "Estimated error bound of the frequency, in parts per million (ppm) (chronyc tracking Skew).",
        ConstGauge::new(t.skew_ppm),
    )?;
    single(
        e,
        "strata_tracking_root_delay_seconds",
        "Total round-trip delay to the stratum-0 reference in seconds (chronyc tracking Root delay).",
        ConstGauge::new(t.root_delay_s),
    )?;
    single(
        e,
        "strata_tracking_root_dispersion_seconds",
        "Total dispersion accumulated up to the stratum-0 reference in seconds (chronyc tracking Root dispersion).",
        ConstGauge::new(t.root_dispersion_s),
    )?;
    single(e, "strata_tracking_stratum", "The stratum this server hands to its clients.", ConstGauge::new(t.stratum))?;
    single(
        e,
        "strata_tracking_leap",
        "The leap indicator handed to clients: 0 normal, 1 insert a second, 2 delete a second, 3 unsynchronised.",
        ConstGauge::new(t.leap),
    )?;
    single(
        e,
        "strata_tracking_synchronised",
        "1 when the clock's estimate is usable (a source is selected, or local stratum is configured), else 0.",
        ConstGauge::new(u32::from(t.synchronised)),
    )?;
    // Zero is proto3's "unset": the estimate was never updated.
    if t.reference_time_unix_ns != 0 {
        single(
            e,
            "strata_tracking_reference_time_seconds",
            "When the clock's estimate was last updated, in seconds since the Unix epoch (chronyc tracking Ref time).",
            ConstGauge::new(t.reference_time_unix_ns as f64 / 1e9),
        )?;
    }
    single(
        e,
        "strata_clock_steps_left",
        "Steps of the clock the adjuster still allows in this boot.",
        ConstGauge::new(t.steps_left),
    )
}

fn encode_server(e: &mut DescriptorEncoder, s: &v1::ServerStatsReply) -> fmt::Result {
    let counters = [
        (
            "strata_ntp_requests_received",
            "NTP packets received by the server (chronyc serverstats NTP packets received).",
            s.received,
        ),
        ("strata_ntp_responses_sent", "Responses sent to NTP clients.", s.answered),
        (
            "strata_ntp_requests_malformed",
            "Packets dropped as malformed: not NTP, truncated, bad version or bad extension fields.",
            s.malformed,
        ),
        (
            "strata_ntp_requests_not_client",
            "Well-formed NTP packets ignored because they were not client requests (server, broadcast or control mode).",
            s.not_client,
        ),
        ("strata_ntp_requests_denied", "Requests refused by the access rules (allow/deny).", s.denied),
        (
            "strata_ntp_requests_rate_limited",
            "Requests dropped by rate limiting, including those answered with a RATE kiss-o'-death.",
            s.rate_limited,
        ),
        ("strata_ntp_kod_sent", "Kiss-o'-death packets sent to clients.", s.kod_sent),
        ("strata_ntp_send_failures", "Responses the kernel refused to send.", s.send_failed),
    ];
    for (name, help, value) in counters {
        single(e, name, help, ConstCounter::new(value))?;
    }
    single(
        e,
        "strata_ntp_clients_logged",
        "NTP clients in the client log (chronyc clients), bounded by client-log-limit.",
        ConstGauge::new(s.clients_logged),
    )?;
    single(
        e,
        "strata_ntp_client_log_bytes",
        "Memory held by the client log in bytes, bounded by client-log-limit.",
        ConstGauge::new(s.client_log_bytes),
    )?;
    let sources = |daemon, kernel, hardware| {
        [("daemon", daemon), ("kernel", kernel), ("hardware", hardware)]
            .map(|(source, value)| ([("source", source)], ConstCounter::new(value)))
    };
    family(
        e,
        "strata_ntp_rx_timestamps",
        "Requests by where their receive timestamp came from: the daemon's clock read, the kernel, or the NIC.",
        sources(s.rx_daemon, s.rx_kernel, s.rx_hardware),
    )?;
    family(
        e,
        "strata_ntp_tx_timestamps",
        "Responses by where their transmit timestamp came from: the daemon's clock read before the send, or the kernel's or the NIC's after it.",
        sources(s.tx_daemon, s.tx_kernel, s.tx_hardware),
    )?;
    single(
        e,
        "strata_ntp_interleaved_responses",
        "Responses in interleaved mode, carrying the kernel transmit timestamp of the client's previous response.",
        ConstCounter::new(s.interleaved),
    )?;
    single(
        e,
        "strata_ntp_timestamps_held",
        "Transmit timestamps kept for clients' next interleaved request, bounded by half of client-log-limit.",
        ConstGauge::new(s.timestamps_held),
    )
}

fn encode_processes(e: &mut DescriptorEncoder, processes: &[v1::Process]) -> fmt::Result {
    family(
        e,
        "strata_process_up",
        "1 while the supervisor sees the process (ntp, refclock, adjust, control) running, else 0.",
        processes.iter().map(|p| (process_labels(p), ConstGauge::new(u32::from(p.running)))),
    )?;
    family(
        e,
        "strata_process_restarts",
        "Times the supervisor re-spawned the process since the appliance started.",
        processes.iter().map(|p| (process_labels(p), ConstCounter::new(u64::from(p.restarts)))),
    )?;
    family(
        e,
        "strata_process_uptime_seconds",
        "Seconds since the running process was (re-)spawned; absent while it is down.",
        processes.iter().filter(|p| p.running).map(|p| (process_labels(p), ConstGauge::new(p.uptime_s))),
    )
}

fn process_labels(process: &v1::Process) -> [(&'static str, &str); 1] {
    [("process", process.role.as_str())]
}

fn encode_refclocks(e: &mut DescriptorEncoder, r: &v1::RefclocksReply) -> fmt::Result {
    single(
        e,
        "strata_refclock_samples",
        "Samples the refclock reader passed to the engine.",
        ConstCounter::new(r.samples_sent),
    )?;
    single(
        e,
        "strata_refclock_samples_rejected",
        "Samples the refclock reader refused: wrong size, wrong magic or absurd values.",
        ConstCounter::new(r.samples_rejected),
    )?;
    single(
        e,
        "strata_failovers",
        "Switches of the system peer (refclock to NTP, back, or between sources), including to and from none.",
        ConstCounter::new(r.failovers_total),
    )?;
    single(e, "strata_refclocks_configured", "Reference clocks configured.", ConstGauge::new(r.refclocks))
}

fn encode_activity(e: &mut DescriptorEncoder, a: &v1::ActivityReply) -> fmt::Result {
    // Three gauges, not one with a label: an unreachable source is also online
    // or offline, so the values do not add up to the number of sources.
    single(e, "strata_sources_online", "Sources being polled (chronyc activity online).", ConstGauge::new(a.online))?;
    single(
        e,
        "strata_sources_offline",
        "Sources not polled on the operator's request (chronyc activity offline).",
        ConstGauge::new(a.offline),
    )?;
    single(e, "strata_sources_unreachable", "Sources without a reachable sample.", ConstGauge::new(a.unreachable))
}

/// Writes one family with a labelled series per item; a family without
/// series is left out entirely (no HELP and TYPE for nothing). The type,
/// counter or gauge, is the metric's.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut series = series.into_iter().peekable();
    let Some((_, first)) = series.peek() else { return Ok(()) };
    let metric_type = first.metric_type();
    let (name, unit) = split_unit(name);
    let mut family = e.encode_descriptor(name, help, unit.as_ref(), metric_type)?;
    for (labels, metric) in series {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one family with a single unlabelled series.
fn single(e: &mut DescriptorEncoder, name: &str, help: &str, metric: impl EncodeMetric) -> fmt::Result {
    let (name, unit) = split_unit(name);
    metric.encode(e.encode_descriptor(name, help, unit.as_ref(), metric.metric_type())?)
}

/// Splits a base unit off a name, so OpenMetrics gets its `# UNIT` line (the
/// encoder appends the unit again). Names stay whole at the call sites, to be
/// found by grep.
fn split_unit(name: &str) -> (&str, Option<Unit>) {
    if let Some(base) = name.strip_suffix("_seconds") {
        (base, Some(Unit::Seconds))
    } else if let Some(base) = name.strip_suffix("_bytes") {
        (base, Some(Unit::Bytes))
    } else {
        (name, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str) -> v1::Source {
        v1::Source {
            kind: v1::SourceKind::Server.into(),
            name: name.into(),
            state: v1::SourceState::Selected.into(),
            state_symbol: "*".into(),
            stratum: 1,
            poll_log2: 6,
            reach: 0o377,
            last_sample_age_s: Some(12.0),
            offset_s: 0.000123,
            jitter_s: 0.000045,
            delay_s: 0.0125,
            packets_sent: 40,
            packets_received: 39,
            online: true,
            ..Default::default()
        }
    }

    fn unreachable_refclock() -> v1::Source {
        v1::Source {
            kind: v1::SourceKind::Refclock.into(),
            name: "PHC0".into(),
            state: v1::SourceState::Unreachable.into(),
            state_symbol: "?".into(),
            stratum: 0,
            poll_log2: -2,
            reach: 0,
            last_sample_age_s: None,
            online: true,
            ..Default::default()
        }
    }

    struct Fixture {
        tracking: v1::TrackingReply,
        sources: Vec<v1::Source>,
        server: v1::ServerStatsReply,
        processes: Vec<v1::Process>,
        refclocks: v1::RefclocksReply,
        activity: v1::ActivityReply,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                tracking: v1::TrackingReply {
                    reference: "192.0.2.1:123".into(),
                    reference_id: "C0000201".into(),
                    stratum: 2,
                    reference_time_unix_ns: 1_700_000_000_500_000_000,
                    offset_s: -0.0000021,
                    rms_offset_s: 0.0000034,
                    frequency_ppm: -12.5,
                    skew_ppm: 0.042,
                    root_delay_s: 0.0125,
                    root_dispersion_s: 0.0003,
                    leap: v1::Leap::Normal.into(),
                    synchronised: true,
                    clock_backend: "simulated".into(),
                    steps_left: 3,
                },
                sources: vec![server("192.0.2.1:123"), unreachable_refclock()],
                server: v1::ServerStatsReply {
                    received: 1000,
                    answered: 990,
                    malformed: 3,
                    not_client: 1,
                    denied: 4,
                    rate_limited: 2,
                    kod_sent: 1,
                    send_failed: 0,
                    clients_logged: 17,
                    client_log_bytes: 4096,
                    rx_daemon: 0,
                    rx_kernel: 1000,
                    rx_hardware: 0,
                    tx_daemon: 2,
                    tx_kernel: 988,
                    tx_hardware: 0,
                    interleaved: 40,
                    timestamps_held: 512,
                },
                processes: vec![
                    v1::Process {
                        role: "ntp".into(),
                        pid: 100,
                        uptime_s: 3600.5,
                        restarts: 0,
                        running: true,
                        ..Default::default()
                    },
                    v1::Process {
                        role: "refclock".into(),
                        pid: 0,
                        uptime_s: 0.0,
                        restarts: 2,
                        last_exit: "killed by signal 9 (SIGKILL)".into(),
                        running: false,
                    },
                ],
                refclocks: v1::RefclocksReply {
                    refclocks: 1,
                    samples_sent: 5000,
                    samples_rejected: 7,
                    failovers: Vec::new(),
                    failovers_total: 3,
                },
                activity: v1::ActivityReply { online: 2, offline: 0, unreachable: 1 },
            }
        }

        fn snapshot(&self) -> Snapshot<'_> {
            Snapshot {
                tracking: Some(&self.tracking),
                sources: &self.sources,
                server: Some(&self.server),
                processes: &self.processes,
                refclocks: Some(&self.refclocks),
                activity: Some(&self.activity),
            }
        }
    }

    fn assert_has_lines(page: &str, expected: &[&str]) {
        for line in expected {
            assert!(page.lines().any(|l| l == *line), "missing line {line:?} in:\n{page}");
        }
    }

    #[test]
    fn sources_show_what_the_seed_exporter_scraped_and_the_selection() {
        let fixture = Fixture::new();
        let page = render(&fixture.snapshot(), Format::Text);
        assert_has_lines(
            &page,
            &[
                r#"strata_source_reachable{source="192.0.2.1:123",kind="server"} 1"#,
                r#"strata_source_reachable{source="PHC0",kind="refclock"} 0"#,
                r#"strata_source_reach_register{source="192.0.2.1:123",kind="server"} 255"#,
                r#"strata_source_stratum{source="192.0.2.1:123",kind="server"} 1"#,
                r#"strata_source_offset_seconds{source="192.0.2.1:123",kind="server"} 0.000123"#,
                r#"strata_source_jitter_seconds{source="192.0.2.1:123",kind="server"} 0.000045"#,
                r#"strata_source_delay_seconds{source="192.0.2.1:123",kind="server"} 0.0125"#,
                r#"strata_source_poll_interval_seconds{source="192.0.2.1:123",kind="server"} 64.0"#,
                r#"strata_source_poll_interval_seconds{source="PHC0",kind="refclock"} 0.25"#,
                r#"strata_source_last_sample_age_seconds{source="192.0.2.1:123",kind="server"} 12.0"#,
                r#"strata_source_selected{source="192.0.2.1:123",kind="server"} 1"#,
                r#"strata_source_selected{source="PHC0",kind="refclock"} 0"#,
                r#"strata_source_state{source="192.0.2.1:123",kind="server",state="selected"} 1"#,
                r#"strata_source_state{source="192.0.2.1:123",kind="server",state="unreachable"} 0"#,
                r#"strata_source_state{source="PHC0",kind="refclock",state="unreachable"} 1"#,
                r#"strata_source_state{source="PHC0",kind="refclock",state="selected"} 0"#,
                "# TYPE strata_source_packets_sent_total counter",
                r#"strata_source_packets_sent_total{source="192.0.2.1:123",kind="server"} 40"#,
                r#"strata_source_packets_received_total{source="192.0.2.1:123",kind="server"} 39"#,
            ],
        );
        // Exactly one state is current per source: a stateset.
        for source in ["192.0.2.1:123", "PHC0"] {
            let prefix = format!(r#"strata_source_state{{source="{source}","#);
            let states: Vec<&str> = page.lines().filter(|l| l.starts_with(&prefix)).collect();
            assert_eq!(states.len(), SOURCE_STATES.len(), "{states:?}");
            assert_eq!(states.iter().filter(|l| l.ends_with(" 1")).count(), 1, "{states:?}");
        }
        // Not known yet, or not applicable: no series rather than a made-up 0.
        for family in ["last_sample_age", "offset", "jitter", "delay"] {
            assert!(!page.contains(&format!(r#"strata_source_{family}_seconds{{source="PHC0""#)), "{page}");
        }
        assert!(!page.contains(r#"packets_sent_total{source="PHC0""#), "{page}");
    }

    #[test]
    fn tracking_server_processes_and_refclocks() {
        let fixture = Fixture::new();
        let page = render(&fixture.snapshot(), Format::Text);
        assert_has_lines(
            &page,
            &[
                "strata_tracking_offset_seconds -0.0000021",
                "strata_tracking_rms_offset_seconds 0.0000034",
                "strata_tracking_frequency_ppm -12.5",
                "strata_tracking_skew_ppm 0.042",
                "strata_tracking_root_delay_seconds 0.0125",
                "strata_tracking_root_dispersion_seconds 0.0003",
                "strata_tracking_stratum 2",
                "strata_tracking_leap 0",
                "strata_tracking_synchronised 1",
                "strata_tracking_reference_time_seconds 1700000000.5",
                "strata_clock_steps_left 3",
                "# TYPE strata_ntp_requests_received_total counter",
                "strata_ntp_requests_received_total 1000",
                "strata_ntp_responses_sent_total 990",
                "strata_ntp_requests_malformed_total 3",
                "strata_ntp_requests_denied_total 4",
                "strata_ntp_requests_rate_limited_total 2",
                "strata_ntp_kod_sent_total 1",
                "strata_ntp_send_failures_total 0",
                "strata_ntp_clients_logged 17",
                "strata_ntp_client_log_bytes 4096",
                r#"strata_ntp_rx_timestamps_total{source="kernel"} 1000"#,
                r#"strata_ntp_tx_timestamps_total{source="daemon"} 2"#,
                r#"strata_ntp_tx_timestamps_total{source="kernel"} 988"#,
                r#"strata_ntp_tx_timestamps_total{source="hardware"} 0"#,
                "strata_ntp_interleaved_responses_total 40",
                "strata_ntp_timestamps_held 512",
                r#"strata_process_up{process="ntp"} 1"#,
                r#"strata_process_up{process="refclock"} 0"#,
                r#"strata_process_restarts_total{process="refclock"} 2"#,
                r#"strata_process_uptime_seconds{process="ntp"} 3600.5"#,
                "strata_refclock_samples_total 5000",
                "strata_refclock_samples_rejected_total 7",
                "strata_failovers_total 3",
                "strata_refclocks_configured 1",
                "strata_sources_online 2",
                "strata_sources_unreachable 1",
            ],
        );
        assert!(!page.contains(r#"strata_process_uptime_seconds{process="refclock"}"#), "{page}");
    }

    #[test]
    fn every_family_has_help_and_counters_end_in_total() {
        let fixture = Fixture::new();
        let page = render(&fixture.snapshot(), Format::Text);
        let mut families = 0;
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families += 1;
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(name.starts_with("strata_"), "{line}");
                assert!(page.lines().any(|l| l.starts_with(&format!("# HELP {name} "))), "no HELP for {name}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(page.contains(&format!("# TYPE {name} ")), "sample {line:?} has no TYPE of its own name");
            }
        }
        assert!(families >= 40, "{families} families");
        assert!(!page.contains("# UNIT") && !page.contains("# EOF"), "{page}");
    }

    #[test]
    fn absent_inputs_leave_their_series_out() {
        let page = render(&Snapshot::default(), Format::Text);
        assert_eq!(page, "");
        let fixture = Fixture::new();
        let snapshot = Snapshot { tracking: None, server: None, refclocks: None, activity: None, ..fixture.snapshot() };
        let page = render(&snapshot, Format::Text);
        for absent in [
            "strata_tracking_",
            "strata_clock_",
            "strata_ntp_",
            "strata_refclock",
            "strata_failovers",
            "strata_sources_",
        ] {
            assert!(!page.contains(absent), "{absent} in:\n{page}");
        }
        assert!(page.contains("strata_source_offset_seconds{"), "{page}");
        assert!(page.contains("strata_process_up{"), "{page}");
    }

    #[test]
    fn never_updated_reference_time_is_left_out() {
        let mut fixture = Fixture::new();
        fixture.tracking.reference_time_unix_ns = 0;
        let page = render(&fixture.snapshot(), Format::Text);
        assert!(!page.contains("strata_tracking_reference_time_seconds"), "{page}");
        assert!(page.contains("strata_tracking_offset_seconds "), "{page}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut fixture = Fixture::new();
        fixture.sources = vec![server("odd \"name\" \\ with\nnewline")];
        for format in [Format::Text, Format::OpenMetrics] {
            let page = render(&fixture.snapshot(), format);
            assert!(
                page.contains(r#"strata_source_stratum{source="odd \"name\" \\ with\nnewline",kind="server"} 1"#),
                "{page}"
            );
        }
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let fixture = Fixture::new();
        let page = render(&fixture.snapshot(), Format::OpenMetrics);
        assert_has_lines(
            &page,
            &[
                "# TYPE strata_ntp_requests_received counter",
                "strata_ntp_requests_received_total 1000",
                "# TYPE strata_source_offset_seconds gauge",
                "# UNIT strata_source_offset_seconds seconds",
                "# UNIT strata_ntp_client_log_bytes bytes",
            ],
        );
        assert!(page.ends_with("# EOF\n"), "{page}");
        // The text page is the same samples.
        let samples = |p: &str| p.lines().filter(|l| !l.starts_with('#')).map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(samples(&page), samples(&render(&fixture.snapshot(), Format::Text)));
    }

    #[test]
    fn format_follows_the_accept_header() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::from_accept(Some("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5")),
            Format::Text
        );
        assert_eq!(Format::from_accept(Some("application/openmetrics-text; q=0")), Format::Text);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Text);
        assert_eq!(Format::from_accept(None), Format::Text);
        assert_eq!(Format::Text.content_type(), "text/plain; version=0.0.4; charset=utf-8");
        assert!(Format::OpenMetrics.content_type().starts_with("application/openmetrics-text; version=1.0.0"));
    }

    /// The issue's acceptance check: `promtool check metrics` (Debian package
    /// `prometheus`) passes, lint included. With CI=true a missing promtool
    /// fails the test.
    #[test]
    fn promtool_check_metrics_passes() {
        use std::io::Write as _;
        use std::process::{Command, Stdio};

        let fixture = Fixture::new();
        let page = render(&fixture.snapshot(), Format::Text);
        let mut child = match Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI=true but promtool is not on PATH: install Debian's `prometheus` package"
                );
                eprintln!("note: promtool not on PATH, not checked (apt-get install prometheus)");
                return;
            }
            Err(e) => panic!("running promtool: {e}"),
        };
        child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "promtool check metrics: {}\n{stderr}\n{page}", output.status);
        assert!(stderr.trim().is_empty(), "promtool warnings:\n{stderr}");
    }
}
