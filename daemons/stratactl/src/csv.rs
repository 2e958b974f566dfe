//! chronyc -c style records: one line per record, fields separated by commas,
//! no header, unscaled values (seconds with nine decimals, ppm with three,
//! timestamps as `seconds.nanoseconds`), as chronyc's `print_report` does in
//! CSV mode. Where a chronyc column exists, it keeps chronyc's position and
//! sign convention, so a script written for `chronyc -c` reads the same
//! field; a chronyc column strata has no value for is left empty, and
//! strata's extra fields follow chronyc's.

use strata_grpc::v1::{
    ActivityReply, AdminReply, ClientsReply, Failover, ProcessesReply, RefclocksReply, ServerStatsReply, Source,
    SourcesReply, TrackingReply,
};

use crate::human::{
    correction_s, estimated_error_s, host_and_port, leap_words, local_minus_source, mode_symbol, refid_ascii,
    state_symbol,
};
use crate::units::{refid_hex, source_name, unix_seconds};

/// One CSV record. Fields are quoted only when they would break the record
/// (chronyc never needs to: its fields are numbers, addresses and words).
fn record(fields: &[String]) -> String {
    let mut line = fields
        .iter()
        .map(|f| if f.contains([',', '"', '\n', '\r']) { format!("\"{}\"", f.replace('"', "\"\"")) } else { f.clone() })
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

fn seconds(v: f64) -> String {
    format!("{v:.9}")
}

fn ppm(v: f64) -> String {
    format!("{v:.3}")
}

/// chronyc's sentinel for "never": the all-ones u32.
fn age(v: Option<u32>) -> String {
    v.unwrap_or(u32::MAX).to_string()
}

/// chronyc's sentinel for "no interval": 127.
fn interval(v: Option<i32>) -> String {
    v.unwrap_or(127).to_string()
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

/// chronyc -c tracking: refid, name, stratum, ref time, system time (the
/// correction still to apply: positive when the clock is slow), last offset,
/// RMS offset, frequency, residual frequency (empty), skew, root delay, root
/// dispersion, update interval (empty), leap; then synchronised, clock
/// backend and steps left.
pub fn tracking(t: &TrackingReply) -> String {
    record(&[
        refid_hex(&t.reference_id),
        source_name(&t.reference).to_string(),
        t.stratum.to_string(),
        unix_seconds(t.reference_time_unix_ns),
        seconds(0.0 - t.offset_s),
        seconds(t.offset_s),
        seconds(t.rms_offset_s),
        ppm(t.frequency_ppm),
        String::new(),
        ppm(t.skew_ppm),
        seconds(t.root_delay_s),
        seconds(t.root_dispersion_s),
        String::new(),
        leap_words(t.leap).to_string(),
        yes_no(t.synchronised),
        t.clock_backend.clone(),
        t.steps_left.to_string(),
    ])
}

/// chronyc -c sources: mode, state, name, stratum, poll, reach (octal),
/// last rx, adjusted offset, measured offset, estimated error.
pub fn source(s: &Source) -> String {
    record(&[
        mode_symbol(s).to_string(),
        state_symbol(s).to_string(),
        source_name(&s.name).to_string(),
        s.stratum.to_string(),
        s.poll_log2.to_string(),
        format!("{:o}", s.reach & 0xff),
        age(crate::units::whole_seconds(s.last_sample_age_s)),
        seconds(local_minus_source(s.offset_s)),
        seconds(local_minus_source(s.last_offset_s)),
        seconds(estimated_error_s(s)),
    ])
}

pub fn sources(reply: &SourcesReply) -> String {
    reply.sources.iter().map(source).collect()
}

/// sourcestats with strata's columns: name, samples, offset, jitter, delay, dispersion.
pub fn sourcestats(reply: &SourcesReply) -> String {
    reply
        .sources
        .iter()
        .map(|s| {
            record(&[
                source_name(&s.name).to_string(),
                s.samples.to_string(),
                seconds(local_minus_source(s.offset_s)),
                seconds(s.jitter_s),
                seconds(s.delay_s),
                seconds(s.dispersion_s),
            ])
        })
        .collect()
}

/// ntpdata: remote address, remote port, stratum, poll, root delay, root
/// dispersion, reference id, its name, offset, peer delay, peer dispersion,
/// packets sent, received, KoD received.
pub fn ntpdata(s: &Source) -> String {
    let (host, port) = host_and_port(&s.name);
    record(&[
        host,
        port.map(|p| p.to_string()).unwrap_or_default(),
        s.stratum.to_string(),
        s.poll_log2.to_string(),
        seconds(s.root_delay_s),
        seconds(s.root_dispersion_s),
        refid_hex(&s.reference_id),
        if s.stratum <= 1 { refid_ascii(&s.reference_id) } else { String::new() },
        seconds(s.last_offset_s),
        seconds(s.delay_s),
        seconds(s.dispersion_s),
        s.packets_sent.to_string(),
        s.packets_received.to_string(),
        s.kod_received.to_string(),
    ])
}

/// chronyc -c clients, NTP columns: address, requests, dropped, interval,
/// rate-limited interval, last seen.
pub fn clients(reply: &ClientsReply) -> String {
    reply
        .clients
        .iter()
        .map(|c| {
            record(&[
                c.address.clone(),
                c.ntp_requests.to_string(),
                c.dropped.to_string(),
                interval(c.interval_log2),
                interval(c.limited_interval_log2),
                age(c.last_seen_s),
            ])
        })
        .collect()
}

/// serverstats, in the order of the human report.
pub fn serverstats(r: &ServerStatsReply) -> String {
    record(
        &[
            r.received,
            r.answered,
            r.malformed,
            r.not_client,
            r.denied,
            r.rate_limited,
            r.kod_sent,
            r.send_failed,
            r.clients_logged,
            r.client_log_bytes,
            r.interleaved,
            r.timestamps_held,
            r.rx_daemon,
            r.tx_daemon,
            r.rx_kernel,
            r.tx_kernel,
            r.rx_hardware,
            r.tx_hardware,
        ]
        .map(|v| v.to_string()),
    )
}

/// activity: online, offline, unreachable.
pub fn activity(r: &ActivityReply) -> String {
    record(&[r.online.to_string(), r.offline.to_string(), r.unreachable.to_string()])
}

/// processes: role, pid, uptime, restarts, running, last exit.
pub fn processes(reply: &ProcessesReply) -> String {
    reply
        .processes
        .iter()
        .map(|p| {
            record(&[
                p.role.clone(),
                p.pid.to_string(),
                format!("{:.3}", p.uptime_s),
                p.restarts.to_string(),
                yes_no(p.running),
                p.last_exit.clone(),
            ])
        })
        .collect()
}

/// A failover: time, from, to.
pub fn failover(f: &Failover) -> String {
    record(&[unix_seconds(f.time_unix_ns), f.from.clone(), f.to.clone()])
}

/// refclocks: a counters record (refclocks, samples sent, samples rejected,
/// failovers), then one record per recent failover.
pub fn refclocks(r: &RefclocksReply) -> String {
    let mut out = record(&[
        r.refclocks.to_string(),
        r.samples_sent.to_string(),
        r.samples_rejected.to_string(),
        r.failovers_total.to_string(),
    ]);
    out.extend(r.failovers.iter().map(failover));
    out
}

/// waitsync: refid, correction, skew (chronyc's fields less the try count,
/// which the appliance keeps).
pub fn waitsync(t: &TrackingReply) -> String {
    record(&[refid_hex(&t.reference_id), seconds(correction_s(t)), ppm(t.skew_ppm)])
}

pub fn admin(r: &AdminReply) -> String {
    record(std::slice::from_ref(&r.message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_grpc::v1::{SourceKind, SourceState};

    #[test]
    fn tracking_keeps_chronyc_columns() {
        let t =
            TrackingReply { reference_time_unix_ns: 1_709_210_096_000_000_123, ..crate::human::tests::gps_tracking() };
        assert_eq!(
            tracking(&t),
            "47505300,GPS,1,1709210096.000000123,-0.000001234,0.000001234,0.000000456,-1.500,,0.012,\
             0.000000000,0.000010000,,Normal,Yes,system,1\n"
        );
    }

    #[test]
    fn sources_are_one_record_each() {
        let reply = SourcesReply {
            sources: vec![
                Source {
                    kind: SourceKind::Refclock as i32,
                    name: "GPS".into(),
                    state: SourceState::Selected as i32,
                    state_symbol: "*".into(),
                    poll_log2: 4,
                    reach: 0o377,
                    last_sample_age_s: Some(12.4),
                    offset_s: -0.000_000_123,
                    last_offset_s: -0.000_000_150,
                    dispersion_s: 0.000_000_200,
                    ..Default::default()
                },
                Source {
                    kind: SourceKind::Server as i32,
                    name: "[2001:db8::1]:123".into(),
                    state: SourceState::Unreachable as i32,
                    stratum: 2,
                    poll_log2: 6,
                    ..Default::default()
                },
            ],
        };
        assert_eq!(
            sources(&reply),
            "#,*,GPS,0,4,377,12,0.000000123,0.000000150,0.000000200\n\
             ^,?,2001:db8::1,2,6,0,4294967295,0.000000000,0.000000000,0.000000000\n"
        );
    }

    #[test]
    fn fields_with_commas_are_quoted() {
        let r = AdminReply { message: "added 192.0.2.1, iburst".into() };
        assert_eq!(admin(&r), "\"added 192.0.2.1, iburst\"\n");
    }
}
