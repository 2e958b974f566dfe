//! What the control plane knows: the latest status of every other process, kept
//! by the main thread (which alone talks to them) and read by the API and the
//! metrics (which run on the server thread). Here too: the replies of the API,
//! built from that status, and the commands the API hands to the main thread.

use std::sync::mpsc;

use strata_grpc::v1;
use strata_proto::ipc::{
    ClientActivity, ClockBackendKind, ClockStatus, ControlToEngine, EngineStatus, RefclockStatus, SourceStatus,
};
use strata_proto::status::ProcessStatus;
use tokio::sync::{broadcast, oneshot};

/// The others' state, as last reported. `None`: that process has not answered
/// since the control plane started (it may be down).
#[derive(Debug, Default)]
pub struct View {
    pub engine: Option<EngineStatus>,
    pub clients: Vec<ClientActivity>,
    pub clock: Option<ClockStatus>,
    pub refclock: Option<RefclockStatus>,
    pub processes: Vec<ProcessStatus>,
}

/// An operator command on its way to the main thread, with where its answer goes.
pub struct Command {
    pub kind: CommandKind,
    pub reply: oneshot::Sender<Result<String, String>>,
}

pub enum CommandKind {
    Engine(ControlToEngine),
    /// Ask the adjuster, then (if it agrees) tell the engine.
    MakeStep,
}

/// The API's end of the way to the main thread: a queue, and a datagram to wake
/// the main thread's poll.
#[derive(Clone)]
pub struct Commands {
    pub queue: mpsc::Sender<Command>,
    pub wake: std::sync::Arc<std::os::unix::net::UnixDatagram>,
}

impl Commands {
    pub fn send(&self, kind: CommandKind) -> oneshot::Receiver<Result<String, String>> {
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Command { kind, reply }).is_ok() {
            // Non-blocking: a full socket already holds a wake-up.
            let _ = self.wake.send(&[1]);
        }
        answer
    }
}

/// What the API and metrics share with the main thread.
pub struct Shared {
    pub view: std::sync::Mutex<View>,
    pub events: broadcast::Sender<v1::WatchEvent>,
}

impl Shared {
    pub fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl View {
    pub fn tracking(&self) -> Option<v1::TrackingReply> {
        let engine = self.engine.as_ref()?;
        let t = &engine.tracking;
        let clock = self.clock.as_ref().or(engine.clock.as_ref());
        Some(v1::TrackingReply {
            reference: t.reference.clone(),
            reference_id: format!("{:08X}", t.reference_id),
            stratum: u32::from(t.stratum),
            reference_time_unix_ns: t.reference_time_unix_ns,
            offset_s: t.offset_s,
            rms_offset_s: t.rms_offset_s,
            frequency_ppm: t.rate_error_ppm,
            skew_ppm: t.skew_ppm,
            root_delay_s: t.root_delay_s,
            root_dispersion_s: t.root_dispersion_s,
            leap: i32::from(t.leap.to_bits()),
            synchronised: t.synchronised,
            clock_backend: clock.map_or("unknown", |c| backend_name(c.backend)).into(),
            steps_left: clock.map_or(0, |c| c.steps_left),
        })
    }

    pub fn sources(&self) -> Option<v1::SourcesReply> {
        let engine = self.engine.as_ref()?;
        Some(v1::SourcesReply { sources: engine.sources.iter().map(source).collect() })
    }

    pub fn server_stats(&self) -> Option<v1::ServerStatsReply> {
        let engine = self.engine.as_ref()?;
        let s = &engine.server;
        Some(v1::ServerStatsReply {
            received: s.received,
            answered: s.answered,
            malformed: s.malformed,
            not_client: s.not_client,
            denied: s.denied,
            rate_limited: s.rate_limited,
            kod_sent: s.kod_sent,
            send_failed: s.send_failed,
            clients_logged: engine.clients_logged,
            client_log_bytes: engine.client_log_bytes,
            rx_daemon: s.received.saturating_sub(s.rx_kernel + s.rx_hardware),
            rx_kernel: s.rx_kernel,
            rx_hardware: s.rx_hardware,
            tx_daemon: s.answered.saturating_sub(s.tx_kernel),
            tx_kernel: s.tx_kernel,
            tx_hardware: s.tx_hardware,
            interleaved: s.interleaved,
            timestamps_held: s.tx_timestamps_held,
        })
    }

    pub fn activity(&self) -> Option<v1::ActivityReply> {
        let engine = self.engine.as_ref()?;
        let count = |f: &dyn Fn(&SourceStatus) -> bool| engine.sources.iter().filter(|s| f(s)).count() as u32;
        Some(v1::ActivityReply {
            online: count(&|s| s.online),
            offline: count(&|s| !s.online),
            unreachable: count(&|s| s.online && s.reach == 0),
        })
    }

    pub fn clients(&self) -> v1::ClientsReply {
        v1::ClientsReply {
            clients: self
                .clients
                .iter()
                .map(|c| v1::Client {
                    address: c.address.to_string(),
                    ntp_requests: c.ntp_requests,
                    dropped: c.dropped,
                    interval_log2: c.interval_log2.map(i32::from),
                    limited_interval_log2: c.limited_interval_log2.map(i32::from),
                    last_seen_s: c.last_seen_s,
                })
                .collect(),
        }
    }

    pub fn processes(&self) -> v1::ProcessesReply {
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        v1::ProcessesReply {
            processes: self
                .processes
                .iter()
                .map(|p| v1::Process {
                    role: p.role.clone(),
                    pid: p.pid.unwrap_or(0),
                    uptime_s: p.ready_since_ms.map_or(0.0, |t| now_ms.saturating_sub(t) as f64 / 1000.0),
                    restarts: p.restarts,
                    last_exit: p.last_exit.clone().unwrap_or_default(),
                    running: p.state == "ready",
                })
                .collect(),
        }
    }

    pub fn refclocks(&self) -> v1::RefclocksReply {
        let r = self.refclock.clone().unwrap_or_default();
        let (failovers, failovers_total) =
            self.engine.as_ref().map_or((Vec::new(), 0), |e| (e.failovers.clone(), e.failovers_total));
        v1::RefclocksReply {
            refclocks: u32::from(r.refclocks),
            samples_sent: r.samples_sent,
            samples_rejected: r.samples_rejected,
            failovers: failovers.iter().map(failover).collect(),
            failovers_total,
        }
    }
}

pub fn failover(f: &strata_proto::ipc::Failover) -> v1::Failover {
    v1::Failover { time_unix_ns: f.time_unix_ns, from: f.from.clone(), to: f.to.clone() }
}

fn source(s: &SourceStatus) -> v1::Source {
    use v1::SourceState as S;
    let state = match (s.online, s.state) {
        (false, _) => S::Offline,
        (_, '*') => S::Selected,
        (_, '+') => S::Combined,
        (_, '-') if s.noselect => S::Unselectable,
        (_, '-') => S::NotCombined,
        (_, 'x') => S::Falseticker,
        (_, '~') => S::Jittery,
        _ => S::Unreachable,
    };
    v1::Source {
        kind: if s.refclock { v1::SourceKind::Refclock } else { v1::SourceKind::Server } as i32,
        name: s.name.clone(),
        state: state as i32,
        state_symbol: if s.online { s.state.to_string() } else { "?".into() },
        stratum: u32::from(s.stratum),
        poll_log2: i32::from(s.poll_log2),
        reach: u32::from(s.reach),
        last_sample_age_s: s.last_sample_age_s,
        offset_s: s.offset_s,
        jitter_s: s.jitter_s,
        delay_s: s.delay_s,
        dispersion_s: s.dispersion_s,
        samples: s.samples,
        last_offset_s: s.last_offset_s,
        root_delay_s: s.root_delay_s,
        root_dispersion_s: s.root_dispersion_s,
        reference_id: format!("{:08X}", s.reference_id),
        packets_sent: s.packets_sent,
        packets_received: s.packets_received,
        kod_received: s.kod_received,
        prefer: s.prefer,
        noselect: s.noselect,
        online: s.online,
        added: s.added,
        interleaved: s.interleaved,
        tx_timestamping: timestamping(s, s.kernel_tx),
        rx_timestamping: timestamping(s, s.kernel_rx),
    }
}

fn timestamping(s: &SourceStatus, kernel: bool) -> String {
    match (s.refclock, kernel) {
        (true, _) => String::new(),
        (false, true) => "kernel".into(),
        (false, false) => "daemon".into(),
    }
}

fn backend_name(kind: ClockBackendKind) -> &'static str {
    match kind {
        ClockBackendKind::None => "none",
        ClockBackendKind::System => "system",
        ClockBackendKind::Simulated => "simulated",
        ClockBackendKind::Phc => "phc",
    }
}

/// The watch events between two engine reports: a new system peer or source
/// states (sent as a whole, state not deltas), and each new failover.
pub fn changes(before: Option<&EngineStatus>, after: &EngineStatus, view: &View) -> Vec<v1::WatchEvent> {
    use v1::watch_event::Event;
    let mut events = Vec::new();
    let states = |e: &EngineStatus| e.sources.iter().map(|s| (s.name.clone(), s.state, s.online)).collect::<Vec<_>>();
    let tracking_changed = before.is_none_or(|b| {
        b.tracking.reference != after.tracking.reference
            || b.tracking.synchronised != after.tracking.synchronised
            || b.tracking.stratum != after.tracking.stratum
    });
    if tracking_changed && let Some(t) = view.tracking() {
        events.push(v1::WatchEvent { event: Some(Event::Tracking(t)) });
    }
    if before.is_none_or(|b| states(b) != states(after))
        && let Some(s) = view.sources()
    {
        events.push(v1::WatchEvent { event: Some(Event::Sources(s)) });
    }
    let seen = before.map_or(after.failovers_total, |b| b.failovers_total);
    let new = after.failovers_total.saturating_sub(seen) as usize;
    for f in after.failovers.iter().rev().take(new).rev() {
        events.push(v1::WatchEvent { event: Some(Event::Failover(failover(f))) });
    }
    events
}

impl View {
    /// The `/metrics` page and its Content-Type, in the format the scraper asked for.
    pub fn metrics(&self, accept: Option<&str>) -> (String, &'static str) {
        use crate::metrics::{Format, Snapshot, render};
        let tracking = self.tracking();
        let sources = self.sources();
        let server = self.server_stats();
        let processes = self.processes();
        let refclocks = self.refclocks();
        let activity = self.activity();
        let snapshot = Snapshot {
            tracking: tracking.as_ref(),
            sources: sources.as_ref().map_or(&[], |s| &s.sources),
            server: server.as_ref(),
            processes: &processes.processes,
            // The reader's counters only once it has reported.
            refclocks: self.refclock.as_ref().map(|_| &refclocks),
            activity: activity.as_ref(),
        };
        let format = Format::from_accept(accept);
        (render(&snapshot, format), format.content_type())
    }
}
