//! The replies as JSON, field names as in strata.proto (snake_case), for
//! scripts that would otherwise scrape the tables. Written by hand because
//! prost's types do not derive `Serialize`. Enums are their .proto names
//! ("SOURCE_STATE_SELECTED"), an unknown value its number; an absent
//! optional field is `null`; 64-bit counters are JSON numbers.

use serde_json::{Value, json};
use strata_grpc::v1::{
    ActivityReply, AdminReply, Client, ClientsReply, Failover, Leap, Process, ProcessesReply, RefclocksReply,
    ServerStatsReply, Source, SourceKind, SourceState, SourcesReply, TrackingReply, WatchEvent, watch_event,
};

fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(E) -> &'static str) -> Value {
    match E::try_from(value) {
        Ok(e) => Value::from(name(e)),
        Err(_) => Value::from(value),
    }
}

pub fn tracking(t: &TrackingReply) -> Value {
    json!({
        "reference": t.reference,
        "reference_id": t.reference_id,
        "stratum": t.stratum,
        "reference_time_unix_ns": t.reference_time_unix_ns,
        "offset_s": t.offset_s,
        "rms_offset_s": t.rms_offset_s,
        "frequency_ppm": t.frequency_ppm,
        "skew_ppm": t.skew_ppm,
        "root_delay_s": t.root_delay_s,
        "root_dispersion_s": t.root_dispersion_s,
        "leap": enum_name(t.leap, |l: Leap| l.as_str_name()),
        "synchronised": t.synchronised,
        "clock_backend": t.clock_backend,
        "steps_left": t.steps_left,
    })
}

pub fn source(s: &Source) -> Value {
    json!({
        "kind": enum_name(s.kind, |k: SourceKind| k.as_str_name()),
        "name": s.name,
        "state": enum_name(s.state, |k: SourceState| k.as_str_name()),
        "state_symbol": s.state_symbol,
        "stratum": s.stratum,
        "poll_log2": s.poll_log2,
        "reach": s.reach,
        "last_sample_age_s": s.last_sample_age_s,
        "offset_s": s.offset_s,
        "jitter_s": s.jitter_s,
        "delay_s": s.delay_s,
        "dispersion_s": s.dispersion_s,
        "samples": s.samples,
        "last_offset_s": s.last_offset_s,
        "root_delay_s": s.root_delay_s,
        "root_dispersion_s": s.root_dispersion_s,
        "reference_id": s.reference_id,
        "packets_sent": s.packets_sent,
        "packets_received": s.packets_received,
        "kod_received": s.kod_received,
        "prefer": s.prefer,
        "noselect": s.noselect,
        "online": s.online,
        "added": s.added,
    })
}

pub fn sources(r: &SourcesReply) -> Value {
    json!({ "sources": r.sources.iter().map(source).collect::<Vec<_>>() })
}

fn client(c: &Client) -> Value {
    json!({
        "address": c.address,
        "ntp_requests": c.ntp_requests,
        "dropped": c.dropped,
        "interval_log2": c.interval_log2,
        "limited_interval_log2": c.limited_interval_log2,
        "last_seen_s": c.last_seen_s,
    })
}

pub fn clients(r: &ClientsReply) -> Value {
    json!({ "clients": r.clients.iter().map(client).collect::<Vec<_>>() })
}

pub fn serverstats(r: &ServerStatsReply) -> Value {
    json!({
        "received": r.received,
        "answered": r.answered,
        "malformed": r.malformed,
        "not_client": r.not_client,
        "denied": r.denied,
        "rate_limited": r.rate_limited,
        "kod_sent": r.kod_sent,
        "send_failed": r.send_failed,
        "clients_logged": r.clients_logged,
        "client_log_bytes": r.client_log_bytes,
        "interleaved": r.interleaved,
        "timestamps_held": r.timestamps_held,
        "rx_daemon": r.rx_daemon,
        "tx_daemon": r.tx_daemon,
        "rx_kernel": r.rx_kernel,
        "tx_kernel": r.tx_kernel,
        "rx_hardware": r.rx_hardware,
        "tx_hardware": r.tx_hardware,
    })
}

pub fn activity(r: &ActivityReply) -> Value {
    json!({ "online": r.online, "offline": r.offline, "unreachable": r.unreachable })
}

fn process(p: &Process) -> Value {
    json!({
        "role": p.role,
        "pid": p.pid,
        "uptime_s": p.uptime_s,
        "restarts": p.restarts,
        "last_exit": p.last_exit,
        "running": p.running,
    })
}

pub fn processes(r: &ProcessesReply) -> Value {
    json!({ "processes": r.processes.iter().map(process).collect::<Vec<_>>() })
}

pub fn failover(f: &Failover) -> Value {
    json!({ "time_unix_ns": f.time_unix_ns, "from": f.from, "to": f.to })
}

pub fn refclocks(r: &RefclocksReply) -> Value {
    json!({
        "refclocks": r.refclocks,
        "samples_sent": r.samples_sent,
        "samples_rejected": r.samples_rejected,
        "failovers": r.failovers.iter().map(failover).collect::<Vec<_>>(),
        "failovers_total": r.failovers_total,
    })
}

pub fn admin(r: &AdminReply) -> Value {
    json!({ "message": r.message })
}

/// A watch event as its oneof case: `{"tracking": {...}}`, `{"sources": {...}}`
/// or `{"failover": {...}}`; `{}` for an event this client does not know.
pub fn watch_event(e: &WatchEvent) -> Value {
    match &e.event {
        Some(watch_event::Event::Tracking(t)) => json!({ "tracking": tracking(t) }),
        Some(watch_event::Event::Sources(s)) => json!({ "sources": sources(s) }),
        Some(watch_event::Event::Failover(f)) => json!({ "failover": failover(f) }),
        None => json!({}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_use_proto_field_names() {
        let reply = SourcesReply {
            sources: vec![Source {
                kind: SourceKind::Server as i32,
                name: "192.0.2.1:123".into(),
                state: SourceState::Selected as i32,
                state_symbol: "*".into(),
                stratum: 2,
                poll_log2: 6,
                reach: 255,
                last_sample_age_s: None,
                packets_sent: u64::MAX,
                ..Default::default()
            }],
        };
        let v = sources(&reply);
        let s = &v["sources"][0];
        assert_eq!(s["kind"], "SOURCE_KIND_SERVER");
        assert_eq!(s["state"], "SOURCE_STATE_SELECTED");
        assert_eq!(s["name"], "192.0.2.1:123");
        assert_eq!(s["poll_log2"], 6);
        assert_eq!(s["last_sample_age_s"], Value::Null);
        assert_eq!(s["packets_sent"], u64::MAX);
        assert_eq!(s.as_object().map(|o| o.len()), Some(24), "every Source field is written");
    }

    #[test]
    fn unknown_enum_values_stay_numbers() {
        let t = TrackingReply { leap: 9, ..Default::default() };
        assert_eq!(tracking(&t)["leap"], 9);
        let t = TrackingReply { leap: Leap::InsertSecond as i32, ..Default::default() };
        assert_eq!(tracking(&t)["leap"], "LEAP_INSERT_SECOND");
    }

    #[test]
    fn watch_events_name_their_case() {
        let e = WatchEvent {
            event: Some(watch_event::Event::Failover(Failover {
                time_unix_ns: 5,
                from: "GPS".into(),
                to: String::new(),
            })),
        };
        assert_eq!(watch_event(&e).to_string(), r#"{"failover":{"from":"GPS","time_unix_ns":5,"to":""}}"#);
    }
}
