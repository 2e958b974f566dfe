//! Carries out one verb: the call to the appliance, and the reply written in
//! the chosen format.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use serde_json::Value;
use strata_grpc::v1::admin_client::AdminClient;
use strata_grpc::v1::monitor_client::MonitorClient;
use strata_grpc::v1::{
    AccessRequest, ActivityRequest, AddSourceRequest, AdminReply, ClientsRequest, MakeStepRequest, ProcessesRequest,
    RefclocksRequest, ReselectRequest, ServerStatsRequest, SetOnlineRequest, Source, SourceAddress, SourceKind,
    SourcesReply, SourcesRequest, TrackingRequest, WaitSyncRequest, WatchEvent, WatchRequest, watch_event,
};
use tonic::transport::Channel;

use crate::cli::{AddKind, Cli, Format, Verb};
use crate::failure::Failure;
use crate::{connect, csv, human, json, units};

/// How long a question may go unanswered. WaitSync and Watch are exempt:
/// they answer when the clock or the sources change.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What failure messages need to say about the connection.
struct Appliance {
    place: String,
    over_tls: bool,
}

impl Appliance {
    /// One unary call, with the status sorted into the operator's failures.
    async fn call<T>(
        &self,
        verb: &Verb,
        timeout: Option<Duration>,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Failure> {
        let answer = match timeout {
            Some(limit) => tokio::time::timeout(limit, call).await.map_err(|_| Failure::Unreachable {
                place: self.place.clone(),
                detail: format!("no answer within {} s", limit.as_secs()),
            })?,
            None => call.await,
        };
        answer.map(tonic::Response::into_inner).map_err(|status| self.failure(verb, status))
    }

    fn failure(&self, verb: &Verb, status: tonic::Status) -> Failure {
        Failure::from_status(status, &self.place, role_hint(verb, self.over_tls))
    }
}

/// What the caller needs for this verb, for a PERMISSION_DENIED message.
fn role_hint(verb: &Verb, over_tls: bool) -> String {
    let name = verb_name(verb);
    match (is_admin(verb), over_tls) {
        (true, false) => format!("{name} needs the admin role: a member of the admin group"),
        (false, false) => format!("{name} needs the read role: a member of the read-only or admin group"),
        (true, true) => format!("{name} needs the admin role"),
        (false, true) => format!("{name} needs the read role"),
    }
}

/// The verbs that change something: served by the Admin service.
fn is_admin(verb: &Verb) -> bool {
    matches!(
        verb,
        Verb::Makestep
            | Verb::Add { .. }
            | Verb::Delete { .. }
            | Verb::Online { .. }
            | Verb::Offline { .. }
            | Verb::Reselect
            | Verb::Allow { .. }
            | Verb::Deny { .. }
    )
}

fn verb_name(verb: &Verb) -> &'static str {
    match verb {
        Verb::Tracking => "tracking",
        Verb::Sources { .. } => "sources",
        Verb::Sourcestats { .. } => "sourcestats",
        Verb::Ntpdata { .. } => "ntpdata",
        Verb::Clients => "clients",
        Verb::Serverstats => "serverstats",
        Verb::Activity => "activity",
        Verb::Processes => "processes",
        Verb::Refclocks => "refclocks",
        Verb::Makestep => "makestep",
        Verb::Add { .. } => "add server",
        Verb::Delete { .. } => "delete",
        Verb::Online { .. } => "online",
        Verb::Offline { .. } => "offline",
        Verb::Reselect => "reselect",
        Verb::Allow { .. } => "allow",
        Verb::Deny { .. } => "deny",
        Verb::Waitsync(_) => "waitsync",
        Verb::Watch => "watch",
    }
}

/// Writes to stdout, flushing each piece so `watch` reaches a pipe at once.
fn emit(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(Failure::Output)
}

/// A reply in the chosen format: chronyc's text, chronyc -c records, or JSON.
fn render<T>(
    format: Format,
    reply: &T,
    human: impl Fn(&T) -> String,
    csv: impl Fn(&T) -> String,
    json: impl Fn(&T) -> Value,
) -> String {
    match format {
        Format::Human => human(reply),
        Format::Csv => csv(reply),
        Format::Json => pretty(&json(reply)),
    }
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

/// An admin reply: the message of what changed, or chronyc's "200 OK".
fn admin_reply(format: Format, reply: &AdminReply) -> String {
    let human = |r: &AdminReply| if r.message.is_empty() { "200 OK\n".to_string() } else { format!("{}\n", r.message) };
    render(format, reply, human, csv::admin, json::admin)
}

/// The NTP servers `ntpdata` reports on: one named by address (with or
/// without its port), or every server (reference clocks have no NTP data).
pub fn ntp_servers<'a>(reply: &'a SourcesReply, address: Option<&str>) -> Result<Vec<&'a Source>, Failure> {
    let servers = reply.sources.iter().filter(|s| s.kind != SourceKind::Refclock as i32);
    let Some(address) = address else { return Ok(servers.collect()) };
    let wanted = |s: &&Source| {
        s.name == address || units::source_name(&s.name) == address || human::host_and_port(&s.name).0 == address
    };
    let found: Vec<_> = servers.filter(wanted).collect();
    if found.is_empty() { Err(Failure::NoSuchSource(address.to_string())) } else { Ok(found) }
}

/// ntpdata in the chosen format; chronyc puts a blank line before each
/// server when it lists them all.
pub fn ntpdata(format: Format, servers: &[&Source], all: bool) -> String {
    match format {
        Format::Human => {
            servers.iter().map(|s| format!("{}{}", if all { "\n" } else { "" }, human::ntpdata(s))).collect()
        }
        Format::Csv => servers.iter().map(|s| csv::ntpdata(s)).collect(),
        Format::Json => {
            pretty(&serde_json::json!({ "sources": servers.iter().map(|s| json::source(s)).collect::<Vec<_>>() }))
        }
    }
}

/// One watch event: a report for a person, one tagged CSV record per
/// tracking/source/failover, or one compact JSON object a line.
pub fn watch_event(format: Format, event: &WatchEvent) -> String {
    use watch_event::Event;
    match (format, &event.event) {
        (Format::Json, _) => format!("{}\n", json::watch_event(event)),
        (_, None) => String::new(),
        (Format::Human, Some(Event::Tracking(t))) => format!("{}\n", human::tracking(t)),
        (Format::Human, Some(Event::Sources(s))) => format!("{}\n", human::sources(s, false)),
        (Format::Human, Some(Event::Failover(f))) => format!("Failover: {}", human::failover(f)),
        (Format::Csv, Some(Event::Tracking(t))) => format!("tracking,{}", csv::tracking(t)),
        (Format::Csv, Some(Event::Sources(s))) => {
            s.sources.iter().map(|s| format!("source,{}", csv::source(s))).collect()
        }
        (Format::Csv, Some(Event::Failover(f))) => format!("failover,{}", csv::failover(f)),
    }
}

/// Connects, asks, and writes the answer.
pub async fn run(cli: &Cli) -> Result<(), Failure> {
    let channel = connect::channel(&cli.target).await?;
    let appliance = Appliance { place: connect::describe(&cli.target), over_tls: cli.target.connect.is_some() };
    let mut monitor = MonitorClient::new(channel.clone());
    let mut admin = AdminClient::new(channel);
    let format = cli.format();
    let verb = &cli.verb;
    let limit = Some(CALL_TIMEOUT);
    let text = match verb {
        Verb::Tracking => {
            let reply = appliance.call(verb, limit, monitor.tracking(TrackingRequest {})).await?;
            render(format, &reply, human::tracking, csv::tracking, json::tracking)
        }
        Verb::Sources { verbose } => {
            let reply = appliance.call(verb, limit, monitor.sources(SourcesRequest {})).await?;
            render(format, &reply, |r| human::sources(r, *verbose), csv::sources, json::sources)
        }
        Verb::Sourcestats { verbose } => {
            let reply = appliance.call(verb, limit, monitor.sources(SourcesRequest {})).await?;
            render(format, &reply, |r| human::sourcestats(r, *verbose), csv::sourcestats, json::sources)
        }
        Verb::Ntpdata { address } => {
            let reply = appliance.call(verb, limit, monitor.sources(SourcesRequest {})).await?;
            let servers = ntp_servers(&reply, address.as_deref())?;
            ntpdata(format, &servers, address.is_none())
        }
        Verb::Clients => {
            let reply = appliance.call(verb, limit, monitor.clients(ClientsRequest {})).await?;
            render(format, &reply, human::clients, csv::clients, json::clients)
        }
        Verb::Serverstats => {
            let reply = appliance.call(verb, limit, monitor.server_stats(ServerStatsRequest {})).await?;
            render(format, &reply, human::serverstats, csv::serverstats, json::serverstats)
        }
        Verb::Activity => {
            let reply = appliance.call(verb, limit, monitor.activity(ActivityRequest {})).await?;
            render(format, &reply, human::activity, csv::activity, json::activity)
        }
        Verb::Processes => {
            let reply = appliance.call(verb, limit, monitor.processes(ProcessesRequest {})).await?;
            render(format, &reply, human::processes, csv::processes, json::processes)
        }
        Verb::Refclocks => {
            let reply = appliance.call(verb, limit, monitor.refclocks(RefclocksRequest {})).await?;
            render(format, &reply, human::refclocks, csv::refclocks, json::refclocks)
        }
        Verb::Waitsync(w) => {
            let request =
                WaitSyncRequest { max_tries: w.max_tries, max_correction_s: w.max_correction, interval_s: w.interval };
            // The appliance makes the tries; the answer comes when it is synchronised.
            let reply = appliance.call(verb, None, monitor.wait_sync(request)).await?;
            render(format, &reply, human::waitsync, csv::waitsync, json::tracking)
        }
        Verb::Watch => return watch(&appliance, &mut monitor, verb, format).await,
        Verb::Makestep => admin_reply(format, &appliance.call(verb, limit, admin.make_step(MakeStepRequest {})).await?),
        Verb::Add { kind: AddKind::Server { address, iburst, prefer, minpoll, maxpoll, xleave } } => {
            let request = AddSourceRequest {
                address: address.clone(),
                iburst: *iburst,
                prefer: *prefer,
                minpoll: minpoll.unwrap_or(0),
                maxpoll: maxpoll.unwrap_or(0),
                xleave: *xleave,
            };
            admin_reply(format, &appliance.call(verb, limit, admin.add_source(request)).await?)
        }
        Verb::Delete { address } => {
            let request = SourceAddress { address: address.clone() };
            admin_reply(format, &appliance.call(verb, limit, admin.delete_source(request)).await?)
        }
        Verb::Online { address } | Verb::Offline { address } => {
            let online = matches!(verb, Verb::Online { .. });
            let request = SetOnlineRequest { address: address.clone().unwrap_or_default(), online };
            admin_reply(format, &appliance.call(verb, limit, admin.set_online(request)).await?)
        }
        Verb::Reselect => admin_reply(format, &appliance.call(verb, limit, admin.reselect(ReselectRequest {})).await?),
        Verb::Allow { rule } => {
            let request = AccessRequest { rule: rule.clone() };
            admin_reply(format, &appliance.call(verb, limit, admin.allow(request)).await?)
        }
        Verb::Deny { rule } => {
            let request = AccessRequest { rule: rule.clone() };
            admin_reply(format, &appliance.call(verb, limit, admin.deny(request)).await?)
        }
    };
    emit(&text)
}

/// Prints events until the stream ends or the operator interrupts; the end
/// of the stream means the control plane went away, so it is a failure.
async fn watch(
    appliance: &Appliance,
    monitor: &mut MonitorClient<Channel>,
    verb: &Verb,
    format: Format,
) -> Result<(), Failure> {
    let mut events = appliance.call(verb, Some(CALL_TIMEOUT), monitor.watch(WatchRequest {})).await?;
    loop {
        match events.message().await {
            Ok(Some(event)) => emit(&watch_event(format, &event))?,
            Ok(None) => {
                return Err(Failure::Unreachable {
                    place: appliance.place.clone(),
                    detail: "the watch stream was closed by the appliance".into(),
                });
            }
            Err(status) => return Err(appliance.failure(verb, status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_grpc::v1::{Failover, TrackingReply};

    fn reply() -> SourcesReply {
        SourcesReply {
            sources: vec![
                Source { kind: SourceKind::Refclock as i32, name: "GPS".into(), ..Default::default() },
                Source { kind: SourceKind::Server as i32, name: "192.0.2.1:123".into(), ..Default::default() },
                Source { kind: SourceKind::Server as i32, name: "[2001:db8::1]:4123".into(), ..Default::default() },
            ],
        }
    }

    #[test]
    fn ntpdata_finds_servers_with_or_without_port() {
        let r = reply();
        assert_eq!(ntp_servers(&r, None).unwrap().len(), 2, "refclocks have no NTP data");
        assert_eq!(ntp_servers(&r, Some("192.0.2.1")).unwrap()[0].name, "192.0.2.1:123");
        assert_eq!(ntp_servers(&r, Some("192.0.2.1:123")).unwrap()[0].name, "192.0.2.1:123");
        assert_eq!(ntp_servers(&r, Some("2001:db8::1")).unwrap()[0].name, "[2001:db8::1]:4123");
        let missing = ntp_servers(&r, Some("GPS")).unwrap_err();
        assert_eq!((missing.exit_code(), missing.to_string()), (1, "no source GPS".to_string()));
    }

    #[test]
    fn ntpdata_lists_are_separated_like_chronyc() {
        let r = reply();
        let servers = ntp_servers(&r, None).unwrap();
        let text = ntpdata(Format::Human, &servers, true);
        assert!(text.starts_with("\nRemote address  : 192.0.2.1 (C0000201)\n"), "{text}");
        assert!(text.contains("\n\nRemote address  : 2001:db8::1\nRemote port     : 4123\n"), "{text}");
        assert_eq!(ntpdata(Format::Csv, &servers, true).lines().count(), 2);
    }

    #[test]
    fn admin_replies_print_their_message() {
        let r = AdminReply { message: "added server 192.0.2.1 (iburst)".into() };
        assert_eq!(admin_reply(Format::Human, &r), "added server 192.0.2.1 (iburst)\n");
        assert_eq!(admin_reply(Format::Human, &AdminReply::default()), "200 OK\n");
        assert_eq!(admin_reply(Format::Json, &r), "{\n  \"message\": \"added server 192.0.2.1 (iburst)\"\n}\n");
    }

    #[test]
    fn watch_events_in_each_format() {
        let failover = WatchEvent {
            event: Some(watch_event::Event::Failover(Failover {
                time_unix_ns: 1_709_210_096_000_000_000,
                from: "GPS".into(),
                to: "192.0.2.1:123".into(),
            })),
        };
        assert_eq!(
            watch_event(Format::Human, &failover),
            "Failover: Thu Feb 29 12:34:56 2024  GPS                        192.0.2.1\n"
        );
        assert_eq!(watch_event(Format::Csv, &failover), "failover,1709210096.000000000,GPS,192.0.2.1:123\n");
        let tracking = WatchEvent { event: Some(watch_event::Event::Tracking(TrackingReply::default())) };
        assert!(watch_event(Format::Json, &tracking).starts_with("{\"tracking\":{"));
        assert!(watch_event(Format::Csv, &tracking).starts_with("tracking,00000000,,0,"));
        let sources = WatchEvent { event: Some(watch_event::Event::Sources(reply())) };
        assert_eq!(watch_event(Format::Csv, &sources).lines().filter(|l| l.starts_with("source,")).count(), 3);
    }

    #[test]
    fn permission_hints_name_the_role() {
        assert_eq!(role_hint(&Verb::Makestep, false), "makestep needs the admin role: a member of the admin group");
        assert_eq!(
            role_hint(&Verb::Tracking, false),
            "tracking needs the read role: a member of the read-only or admin group"
        );
        assert_eq!(role_hint(&Verb::Reselect, true), "reselect needs the admin role");
    }
}
