//! strata-control: the control plane. No capabilities; it reaches the other
//! processes only over its channels. Its main thread keeps their latest status
//! and carries operator commands to them; a server thread answers the gRPC API
//! (`api`) and Prometheus scrapes (`metrics`) from that status.
#![forbid(unsafe_code)]

mod api;
mod listeners;
mod metrics;
mod view;

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_process::child::{self, Outbox, Service, Violation, decode_peer};
use strata_proto::ipc::{
    AdjusterToControl, ClockRequestKind, ControlToAdjuster, ControlToEngine, ControlToRefclock, EngineToControl,
    RefclockToControl, Resource, Role, Settings,
};
use strata_proto::status::ProcessStatus;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::listeners::{Listeners, ServerThread};
use crate::view::{Command, CommandKind, Commands, Shared, View};

/// How often the control plane refreshes its view of the others: the watch
/// stream and the metrics are at most this old.
const REFRESH: Duration = Duration::from_secs(1);

/// Every this many refreshes, the busiest clients too: the engine walks its whole
/// client log for them, under the locks its serving threads take per request.
const CLIENTS_EVERY: u32 = 5;

/// The process, as its binary runs it.
pub fn main() -> ExitCode {
    child::run::<ControlPlane>()
}

type Reply = oneshot::Sender<Result<String, String>>;

struct ControlPlane {
    shared: Arc<Shared>,
    server: ServerThread,
    commands: std::sync::mpsc::Receiver<Command>,
    wake: std::os::unix::net::UnixDatagram,
    /// Commands sent to the engine, answered in order by its `Done`s.
    engine_pending: VecDeque<Reply>,
    /// makestep requests waiting for the adjuster's verdict.
    step_pending: VecDeque<Reply>,
    linked: Vec<Role>,
    next_refresh: Instant,
    refreshes: u32,
}

impl ControlPlane {
    fn ask(peer: Role, clients: bool, out: &mut Outbox) {
        match peer {
            Role::Ntp => {
                out.send(&ControlToEngine::ReadStatus);
                if clients {
                    out.send(&ControlToEngine::ReadClients);
                }
            }
            Role::Adjust => out.send(&ControlToAdjuster::ReadStatus),
            Role::Refclock => out.send(&ControlToRefclock::ReadStatus),
            _ => {}
        }
    }

    fn command(&mut self, command: Command, out: &mut Outbox) {
        let Command { kind, reply } = command;
        match kind {
            CommandKind::Engine(msg) if self.linked.contains(&Role::Ntp) => {
                out.send(&msg);
                self.engine_pending.push_back(reply);
            }
            CommandKind::MakeStep if self.linked.contains(&Role::Adjust) && self.linked.contains(&Role::Ntp) => {
                out.send(&ControlToAdjuster::MakeStep);
                self.step_pending.push_back(reply);
            }
            CommandKind::Engine(_) => {
                let _ = reply.send(Err("the NTP engine is not running (it is being re-spawned); try again".into()));
            }
            CommandKind::MakeStep => {
                let _ = reply.send(Err("the clock adjuster or the engine is not running; try again".into()));
            }
        }
    }

    fn on_engine(&mut self, msg: EngineToControl) {
        match msg {
            EngineToControl::Status(status) => {
                let mut view = self.shared.view();
                let before = view.engine.take();
                view.engine = Some(*status);
                let events = view::changes(before.as_ref(), view.engine.as_ref().expect("just set"), &view);
                drop(view);
                for event in events {
                    // No subscriber is no error.
                    let _ = self.shared.events.send(event);
                }
            }
            EngineToControl::Clients(clients) => self.shared.view().clients = clients,
            EngineToControl::Done(result) => match self.engine_pending.pop_front() {
                Some(reply) => {
                    let _ = reply.send(result);
                }
                None => warn!("the engine answered a command nobody is waiting for"),
            },
            EngineToControl::Hello(_) => unreachable!("decode_peer refuses a second Hello"),
        }
    }

    fn on_adjuster(&mut self, msg: AdjusterToControl, out: &mut Outbox) {
        match msg {
            AdjusterToControl::Status(status) => {
                // The adjuster agreed to one operator step: the engine takes it
                // with its next estimate, and its answer goes to the operator.
                if status.operator_step_authorised
                    && let Some(reply) = self.step_pending.pop_front()
                {
                    out.send(&ControlToEngine::StepAuthorised);
                    self.engine_pending.push_back(reply);
                }
                self.shared.view().clock = Some(status);
            }
            AdjusterToControl::Refused { request, reason } => {
                warn!(?request, "adjuster refused: {reason}");
                if request == ClockRequestKind::MakeStep
                    && let Some(reply) = self.step_pending.pop_front()
                {
                    let _ = reply.send(Err(format!("the clock adjuster refused: {reason}")));
                }
            }
            AdjusterToControl::Hello(_) => unreachable!("decode_peer refuses a second Hello"),
        }
    }
}

impl Service for ControlPlane {
    const ROLE: Role = Role::Control;

    fn start(settings: Settings, resources: Vec<(Resource, OwnedFd)>) -> Result<Self, String> {
        let Settings::Control(settings) = settings else { unreachable!("checked by child::run") };
        let mut listeners = Listeners::default();
        for (resource, fd) in resources {
            match resource {
                Resource::ControlSocket => listeners.unix = Some(fd),
                Resource::ControlTlsSocket => listeners.tls = Some(fd),
                Resource::MetricsSocket => listeners.metrics = Some(fd),
                Resource::TlsFile(kind) => listeners.take_tls_file(kind, fd)?,
                other => return Err(format!("the control plane takes no {other:?}")),
            }
        }
        let (events, _) = tokio::sync::broadcast::channel(64);
        let shared = Arc::new(Shared { view: std::sync::Mutex::new(View::default()), events });
        let (queue, commands) = std::sync::mpsc::channel();
        let (wake, wake_sender) =
            std::os::unix::net::UnixDatagram::pair().map_err(|e| format!("wake-up socket: {e}"))?;
        for socket in [&wake, &wake_sender] {
            socket.set_nonblocking(true).map_err(|e| format!("wake-up socket: {e}"))?;
        }
        let sender = Commands { queue, wake: Arc::new(wake_sender) };
        let server = ServerThread::start(listeners, &settings, Arc::clone(&shared), sender)?;
        info!(socket = %settings.socket_path, "control plane ready to serve");
        Ok(ControlPlane {
            shared,
            server,
            commands,
            wake,
            engine_pending: VecDeque::new(),
            step_pending: VecDeque::new(),
            linked: Vec::new(),
            next_refresh: Instant::now() + REFRESH,
            refreshes: 0,
        })
    }

    fn on_sandboxed(&mut self) {
        self.server.release();
    }

    fn on_linked(&mut self, peer: Role, out: &mut Outbox) {
        // A fresh channel: answers owed on the old one will never come.
        let owed = match peer {
            Role::Ntp => std::mem::take(&mut self.engine_pending),
            Role::Adjust => std::mem::take(&mut self.step_pending),
            _ => VecDeque::new(),
        };
        for reply in owed {
            let _ = reply.send(Err(format!("the {peer} process was re-spawned before it answered; try again")));
        }
        if !self.linked.contains(&peer) {
            self.linked.push(peer);
        }
        Self::ask(peer, true, out);
    }

    fn on_processes(&mut self, processes: Vec<ProcessStatus>) {
        // A process that is not ready has no channel to us either.
        self.linked.retain(|r| processes.iter().any(|p| p.role == r.name() && p.state == "ready"));
        self.shared.view().processes = processes;
    }

    fn on_frame(&mut self, peer: Role, frame: &[u8], out: &mut Outbox) -> Result<(), Violation> {
        match peer {
            Role::Ntp => self.on_engine(decode_peer::<EngineToControl>(frame)?),
            Role::Adjust => self.on_adjuster(decode_peer::<AdjusterToControl>(frame)?, out),
            Role::Refclock => match decode_peer::<RefclockToControl>(frame)? {
                RefclockToControl::Status(s) => self.shared.view().refclock = Some(s),
                RefclockToControl::Hello(_) => unreachable!("decode_peer refuses a second Hello"),
            },
            other => return Err(Violation(format!("no channel with {other}"))),
        }
        Ok(())
    }

    fn sources(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.wake.as_fd()]
    }

    fn on_readable(&mut self, _index: usize, out: &mut Outbox) {
        let mut byte = [0u8; 16];
        while self.wake.recv(&mut byte).is_ok() {}
        while let Ok(command) = self.commands.try_recv() {
            self.command(command, out);
        }
        debug!(pending = self.engine_pending.len(), "commands handed on");
    }

    fn next_wakeup(&self) -> Option<Instant> {
        Some(self.next_refresh)
    }

    fn on_wakeup(&mut self, now: Instant, out: &mut Outbox) {
        self.next_refresh = now + REFRESH;
        self.refreshes = self.refreshes.wrapping_add(1);
        let clients = self.refreshes.is_multiple_of(CLIENTS_EVERY);
        for peer in Role::Control.peers() {
            Self::ask(peer, clients, out);
        }
    }
}
