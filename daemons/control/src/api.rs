//! The strata.v1 services. Every call first decides the caller's role: on the
//! Unix socket from the kernel's record of the caller's uid and groups, on the
//! TLS listener from the configuration (a client got there only with a trusted
//! certificate). Admin calls are logged with who asked and what changed.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use strata_grpc::v1::{self, admin_server::Admin, monitor_server::Monitor};
use strata_proto::ipc::{AddSource, ControlRole, ControlToEngine};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::view::{CommandKind, Commands, Shared};

/// Who may do what on one listener.
#[derive(Clone, Copy, Debug)]
pub enum Access {
    /// The Unix socket: uid 0 or a member of `admin_gid` is admin, a member of
    /// `read_gid` may read. `own_uid` is admin too: in development mode every
    /// process, and the developer, share one uid.
    Credentials { read_gid: Option<u32>, admin_gid: Option<u32>, own_uid: u32 },
    /// The TLS listener: every client that passed mutual TLS has this role.
    Fixed(ControlRole),
}

/// A caller on the Unix socket, as the kernel saw it connect.
#[derive(Clone, Debug)]
pub struct Caller(pub strata_sys::PeerCredentials);

#[derive(Clone)]
pub struct Api {
    pub shared: Arc<Shared>,
    pub commands: Commands,
    pub access: Access,
}

/// How long an operator command may wait for the engine or the adjuster.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

impl Api {
    /// The caller's role and how to name it in the log.
    fn caller<T>(&self, request: &Request<T>) -> (ControlRole, String) {
        match self.access {
            Access::Fixed(role) => {
                let who = request.remote_addr().map_or("a TLS client".into(), |a| format!("TLS client {a}"));
                (role, who)
            }
            Access::Credentials { read_gid, admin_gid, own_uid } => {
                let Some(Caller(c)) = request.extensions().get::<Caller>() else {
                    return (ControlRole::None, "an unknown caller".into());
                };
                let member = |gid: Option<u32>| gid.is_some_and(|g| c.gid == g || c.groups.contains(&g));
                let role = if c.uid == 0 || c.uid == own_uid || member(admin_gid) {
                    ControlRole::Admin
                } else if member(read_gid) {
                    ControlRole::Read
                } else {
                    ControlRole::None
                };
                (role, format!("uid {} gid {} (pid {})", c.uid, c.gid, c.pid))
            }
        }
    }

    fn require<T>(&self, request: &Request<T>, needed: ControlRole, call: &str) -> Result<String, Status> {
        let (role, who) = self.caller(request);
        if role >= needed {
            return Ok(who);
        }
        warn!(caller = %who, call, "refused: the caller lacks the role");
        Err(Status::permission_denied(match needed {
            ControlRole::Admin => format!("{call} needs the admin role: {who} is not root nor in the admin group"),
            _ => format!("{call} needs the read role: {who} is in neither the read nor the admin group"),
        }))
    }

    /// Hand a command to the main thread and wait for its answer.
    async fn command(&self, who: &str, call: &str, kind: CommandKind, refused: tonic::Code) -> AdminResult {
        let answer = self.commands.send(kind);
        let result = match tokio::time::timeout(COMMAND_TIMEOUT, answer).await {
            Ok(Ok(Ok(message))) => Ok(message),
            Ok(Ok(Err(reason))) => Err(Status::new(refused, reason)),
            Ok(Err(_)) | Err(_) => Err(Status::unavailable(
                "the process that carries this out did not answer (it may be re-spawning); try again",
            )),
        };
        match &result {
            Ok(message) => info!(caller = %who, call, "admin call: {message}"),
            Err(status) => warn!(caller = %who, call, "admin call refused: {}", status.message()),
        }
        result.map(|message| Response::new(v1::AdminReply { message }))
    }
}

type AdminResult = Result<Response<v1::AdminReply>, Status>;

fn unavailable(what: &str) -> Status {
    Status::unavailable(format!("no {what} yet: the NTP engine has not reported (it may be starting or re-spawning)"))
}

/// "192.0.2.1", "192.0.2.1:123", "[2001:db8::1]:123", "2001:db8::1".
fn parse_address(text: &str) -> Result<SocketAddr, Status> {
    let text = text.trim();
    text.parse::<SocketAddr>().or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 123))).map_err(
        |_| {
            Status::invalid_argument(format!(
                "{text:?} is not an IP address (with an optional port); names are not resolved here"
            ))
        },
    )
}

#[tonic::async_trait]
impl Monitor for Api {
    async fn tracking(&self, request: Request<v1::TrackingRequest>) -> Result<Response<v1::TrackingReply>, Status> {
        self.require(&request, ControlRole::Read, "tracking")?;
        self.shared.view().tracking().map(Response::new).ok_or_else(|| unavailable("tracking"))
    }

    async fn sources(&self, request: Request<v1::SourcesRequest>) -> Result<Response<v1::SourcesReply>, Status> {
        self.require(&request, ControlRole::Read, "sources")?;
        self.shared.view().sources().map(Response::new).ok_or_else(|| unavailable("sources"))
    }

    async fn clients(&self, request: Request<v1::ClientsRequest>) -> Result<Response<v1::ClientsReply>, Status> {
        self.require(&request, ControlRole::Read, "clients")?;
        Ok(Response::new(self.shared.view().clients()))
    }

    async fn server_stats(
        &self,
        request: Request<v1::ServerStatsRequest>,
    ) -> Result<Response<v1::ServerStatsReply>, Status> {
        self.require(&request, ControlRole::Read, "serverstats")?;
        self.shared.view().server_stats().map(Response::new).ok_or_else(|| unavailable("server statistics"))
    }

    async fn activity(&self, request: Request<v1::ActivityRequest>) -> Result<Response<v1::ActivityReply>, Status> {
        self.require(&request, ControlRole::Read, "activity")?;
        self.shared.view().activity().map(Response::new).ok_or_else(|| unavailable("activity"))
    }

    async fn processes(&self, request: Request<v1::ProcessesRequest>) -> Result<Response<v1::ProcessesReply>, Status> {
        self.require(&request, ControlRole::Read, "processes")?;
        Ok(Response::new(self.shared.view().processes()))
    }

    async fn refclocks(&self, request: Request<v1::RefclocksRequest>) -> Result<Response<v1::RefclocksReply>, Status> {
        self.require(&request, ControlRole::Read, "refclocks")?;
        Ok(Response::new(self.shared.view().refclocks()))
    }

    async fn wait_sync(&self, request: Request<v1::WaitSyncRequest>) -> Result<Response<v1::TrackingReply>, Status> {
        self.require(&request, ControlRole::Read, "waitsync")?;
        let r = request.into_inner();
        let interval = if r.interval_s > 0.0 && r.interval_s.is_finite() { r.interval_s.min(3600.0) } else { 10.0 };
        let mut tries = 0u32;
        loop {
            tries += 1;
            let tracking = self.shared.view().tracking();
            if let Some(t) = tracking {
                let correction = t.offset_s.abs() + t.root_delay_s / 2.0 + t.root_dispersion_s;
                if t.synchronised && (r.max_correction_s <= 0.0 || correction <= r.max_correction_s) {
                    return Ok(Response::new(t));
                }
            }
            if r.max_tries != 0 && tries >= r.max_tries {
                return Err(Status::deadline_exceeded(format!("not synchronised after {tries} tries")));
            }
            tokio::time::sleep(Duration::from_secs_f64(interval)).await;
        }
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::WatchEvent, Status>> + Send>>;

    async fn watch(&self, request: Request<v1::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        use v1::watch_event::Event;
        self.require(&request, ControlRole::Read, "watch")?;
        // Subscribe first, so that nothing between the snapshot and the stream is lost.
        let updates = tokio_stream::wrappers::BroadcastStream::new(self.shared.events.subscribe());
        let mut first = Vec::new();
        {
            let view = self.shared.view();
            if let Some(t) = view.tracking() {
                first.push(Ok(v1::WatchEvent { event: Some(Event::Tracking(t)) }));
            }
            if let Some(s) = view.sources() {
                first.push(Ok(v1::WatchEvent { event: Some(Event::Sources(s)) }));
            }
        }
        let updates = updates.map(|e| {
            e.map_err(|lagged| Status::data_loss(format!("{lagged}: the watcher fell behind; open the watch again")))
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(first).chain(updates))))
    }
}

#[tonic::async_trait]
impl Admin for Api {
    async fn add_source(&self, request: Request<v1::AddSourceRequest>) -> AdminResult {
        let who = self.require(&request, ControlRole::Admin, "add server")?;
        let r = request.into_inner();
        let address = parse_address(&r.address)?;
        let poll = |v: i32| -> Result<Option<i8>, Status> {
            match v {
                0 => Ok(None),
                -7..=24 => Ok(Some(v as i8)),
                _ => Err(Status::invalid_argument(format!("poll {v} is outside -7..=24 (log2 seconds)"))),
            }
        };
        let add = AddSource {
            address,
            iburst: r.iburst,
            prefer: r.prefer,
            minpoll: poll(r.minpoll)?,
            maxpoll: poll(r.maxpoll)?,
            xleave: r.xleave,
        };
        let kind = CommandKind::Engine(ControlToEngine::AddSource(add));
        self.command(&who, "add server", kind, tonic::Code::FailedPrecondition).await
    }

    async fn delete_source(&self, request: Request<v1::SourceAddress>) -> AdminResult {
        let who = self.require(&request, ControlRole::Admin, "delete")?;
        let address = parse_address(&request.into_inner().address)?;
        let kind = CommandKind::Engine(ControlToEngine::DeleteSource(address));
        self.command(&who, "delete", kind, tonic::Code::NotFound).await
    }

    async fn set_online(&self, request: Request<v1::SetOnlineRequest>) -> AdminResult {
        let r = request.get_ref();
        let call = if r.online { "online" } else { "offline" };
        let who = self.require(&request, ControlRole::Admin, call)?;
        let r = request.into_inner();
        let address = if r.address.trim().is_empty() { None } else { Some(parse_address(&r.address)?) };
        let kind = CommandKind::Engine(ControlToEngine::SetOnline { address, online: r.online });
        self.command(&who, call, kind, tonic::Code::NotFound).await
    }

    async fn make_step(&self, request: Request<v1::MakeStepRequest>) -> AdminResult {
        let who = self.require(&request, ControlRole::Admin, "makestep")?;
        self.command(&who, "makestep", CommandKind::MakeStep, tonic::Code::FailedPrecondition).await
    }

    async fn reselect(&self, request: Request<v1::ReselectRequest>) -> AdminResult {
        let who = self.require(&request, ControlRole::Admin, "reselect")?;
        let kind = CommandKind::Engine(ControlToEngine::Reselect);
        self.command(&who, "reselect", kind, tonic::Code::FailedPrecondition).await
    }

    async fn allow(&self, request: Request<v1::AccessRequest>) -> AdminResult {
        let who = self.require(&request, ControlRole::Admin, "allow")?;
        let rule = access_rule(request.into_inner().rule)?;
        let kind = CommandKind::Engine(ControlToEngine::Access { allow: true, rule });
        self.command(&who, "allow", kind, tonic::Code::InvalidArgument).await
    }

    async fn deny(&self, request: Request<v1::AccessRequest>) -> AdminResult {
        let who = self.require(&request, ControlRole::Admin, "deny")?;
        let rule = access_rule(request.into_inner().rule)?;
        let kind = CommandKind::Engine(ControlToEngine::Access { allow: false, rule });
        self.command(&who, "deny", kind, tonic::Code::InvalidArgument).await
    }
}

/// chrony's `allow`/`deny` argument; empty means `all`. The engine parses it.
fn access_rule(rule: String) -> Result<String, Status> {
    let rule = rule.trim();
    if rule.len() > 128 || rule.contains(['\n', '\r']) {
        return Err(Status::invalid_argument("an access rule is one short line, like 192.168.0.0/16 or all"));
    }
    Ok(if rule.is_empty() { "all".into() } else { rule.into() })
}
