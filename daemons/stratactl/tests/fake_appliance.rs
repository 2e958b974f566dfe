//! The real stratactl binary against a fake control plane: a tonic server
//! with strata.v1's Monitor and Admin on a Unix socket in a temporary
//! directory, answering with fixed replies (and PERMISSION_DENIED for
//! makestep, as the control plane does for a caller outside the admin group).

use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use strata_grpc::v1::admin_server::{Admin, AdminServer};
use strata_grpc::v1::monitor_server::{Monitor, MonitorServer};
use strata_grpc::v1::{
    AccessRequest, ActivityReply, ActivityRequest, AddSourceRequest, AdminReply, ClientsReply, ClientsRequest,
    Failover, Leap, MakeStepRequest, ProcessesReply, ProcessesRequest, RefclocksReply, RefclocksRequest,
    ReselectRequest, ServerStatsReply, ServerStatsRequest, SetOnlineRequest, Source, SourceAddress, SourceKind,
    SourceState, SourcesReply, SourcesRequest, TrackingReply, TrackingRequest, WaitSyncRequest, WatchEvent,
    WatchRequest, watch_event,
};
use tonic::{Request, Response, Status};

/// What the fake was asked to change, for tests to check the request.
#[derive(Clone, Default)]
struct Fake {
    added: Arc<Mutex<Vec<AddSourceRequest>>>,
}

fn gps_tracking() -> TrackingReply {
    TrackingReply {
        reference: "GPS".into(),
        reference_id: "47505300".into(),
        stratum: 1,
        reference_time_unix_ns: 1_709_210_096_000_000_000,
        offset_s: -0.000_000_250,
        rms_offset_s: 0.000_000_400,
        frequency_ppm: 2.25,
        skew_ppm: 0.004,
        root_delay_s: 0.000_000_001,
        root_dispersion_s: 0.000_012,
        leap: Leap::Normal as i32,
        synchronised: true,
        clock_backend: "simulated".into(),
        steps_left: 0,
    }
}

fn two_sources() -> SourcesReply {
    SourcesReply {
        sources: vec![
            Source {
                kind: SourceKind::Refclock as i32,
                name: "GPS".into(),
                state: SourceState::Selected as i32,
                state_symbol: "*".into(),
                poll_log2: 4,
                reach: 0o377,
                last_sample_age_s: Some(9.0),
                offset_s: 0.000_000_250,
                last_offset_s: 0.000_000_300,
                dispersion_s: 0.000_000_100,
                samples: 8,
                online: true,
                ..Default::default()
            },
            Source {
                kind: SourceKind::Server as i32,
                name: "192.0.2.1:123".into(),
                state: SourceState::Falseticker as i32,
                state_symbol: "x".into(),
                stratum: 2,
                poll_log2: 6,
                reach: 0o377,
                last_sample_age_s: Some(40.0),
                offset_s: 0.003_5,
                last_offset_s: 0.003_6,
                delay_s: 0.000_6,
                dispersion_s: 0.000_2,
                root_delay_s: 0.001,
                root_dispersion_s: 0.000_5,
                reference_id: "C6336407".into(),
                samples: 8,
                online: true,
                ..Default::default()
            },
        ],
    }
}

#[tonic::async_trait]
impl Monitor for Fake {
    async fn tracking(&self, _: Request<TrackingRequest>) -> Result<Response<TrackingReply>, Status> {
        Ok(Response::new(gps_tracking()))
    }
    async fn sources(&self, _: Request<SourcesRequest>) -> Result<Response<SourcesReply>, Status> {
        Ok(Response::new(two_sources()))
    }
    async fn clients(&self, _: Request<ClientsRequest>) -> Result<Response<ClientsReply>, Status> {
        Ok(Response::new(ClientsReply::default()))
    }
    async fn server_stats(&self, _: Request<ServerStatsRequest>) -> Result<Response<ServerStatsReply>, Status> {
        Ok(Response::new(ServerStatsReply { received: 7, answered: 7, ..Default::default() }))
    }
    async fn activity(&self, _: Request<ActivityRequest>) -> Result<Response<ActivityReply>, Status> {
        Ok(Response::new(ActivityReply { online: 2, offline: 0, unreachable: 0 }))
    }
    async fn processes(&self, _: Request<ProcessesRequest>) -> Result<Response<ProcessesReply>, Status> {
        Ok(Response::new(ProcessesReply::default()))
    }
    async fn refclocks(&self, _: Request<RefclocksRequest>) -> Result<Response<RefclocksReply>, Status> {
        Ok(Response::new(RefclocksReply::default()))
    }
    async fn wait_sync(&self, request: Request<WaitSyncRequest>) -> Result<Response<TrackingReply>, Status> {
        let r = request.into_inner();
        Err(Status::deadline_exceeded(format!("not synchronised after {} tries", r.max_tries)))
    }
    type WatchStream = tokio_stream::Iter<std::vec::IntoIter<Result<WatchEvent, Status>>>;
    async fn watch(&self, _: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let failover =
            Failover { time_unix_ns: 1_709_210_096_000_000_000, from: "GPS".into(), to: "192.0.2.1:123".into() };
        Ok(Response::new(tokio_stream::iter(vec![
            Ok(WatchEvent { event: Some(watch_event::Event::Tracking(gps_tracking())) }),
            Ok(WatchEvent { event: Some(watch_event::Event::Failover(failover)) }),
        ])))
    }
}

#[tonic::async_trait]
impl Admin for Fake {
    async fn add_source(&self, request: Request<AddSourceRequest>) -> Result<Response<AdminReply>, Status> {
        let r = request.into_inner();
        let message = format!("added server {}", r.address);
        self.added.lock().unwrap().push(r);
        Ok(Response::new(AdminReply { message }))
    }
    async fn delete_source(&self, _: Request<SourceAddress>) -> Result<Response<AdminReply>, Status> {
        Err(Status::not_found("no source 203.0.113.9"))
    }
    async fn set_online(&self, _: Request<SetOnlineRequest>) -> Result<Response<AdminReply>, Status> {
        Err(Status::unimplemented("set_online"))
    }
    async fn make_step(&self, _: Request<MakeStepRequest>) -> Result<Response<AdminReply>, Status> {
        Err(Status::permission_denied("uid 1000 is not in group strata-admin"))
    }
    async fn reselect(&self, _: Request<ReselectRequest>) -> Result<Response<AdminReply>, Status> {
        Err(Status::unimplemented("reselect"))
    }
    async fn allow(&self, _: Request<AccessRequest>) -> Result<Response<AdminReply>, Status> {
        Err(Status::unimplemented("allow"))
    }
    async fn deny(&self, _: Request<AccessRequest>) -> Result<Response<AdminReply>, Status> {
        Err(Status::unimplemented("deny"))
    }
}

/// A fake appliance listening on `dir/control.sock`, served from its own
/// thread so the test can block on the stratactl process.
fn start_fake(dir: &Path) -> (PathBuf, Fake) {
    let socket = dir.join("control.sock");
    // Bound here, so the socket accepts before stratactl starts.
    let listener = StdUnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    let fake = Fake::default();
    let served = fake.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::UnixListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .add_service(MonitorServer::new(served.clone()))
                .add_service(AdminServer::new(served))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await
                .unwrap();
        });
    });
    (socket, fake)
}

fn stratactl(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stratactl")).arg("--socket").arg(socket).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn tracking_prints_chronyc_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, _) = start_fake(dir.path());
    let out = stratactl(&socket, &["tracking"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "\
Reference ID    : 47505300 (GPS)
Stratum         : 1
Ref time (UTC)  : Thu Feb 29 12:34:56 2024
System time     : 0.000000250 seconds slow of NTP time
Last offset     : -0.000000250 seconds
RMS offset      : 0.000000400 seconds
Frequency       : 2.250 ppm fast
Skew            : 0.004 ppm
Root delay      : 0.000000001 seconds
Root dispersion : 0.000012000 seconds
Leap status     : Normal
Synchronised    : Yes
Clock backend   : simulated
Steps left      : 0
"
    );
}

#[test]
fn sources_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, _) = start_fake(dir.path());

    let out = stratactl(&socket, &["sources"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "\
MS Name/IP address         Stratum Poll Reach LastRx Last sample               
===============================================================================
#* GPS                           0   4   377     9   -250ns[ -300ns] +/-  100ns
^x 192.0.2.1                     2   6   377    40  -3500us[-3600us] +/- 1500us
"
    );

    let out = stratactl(&socket, &["sources", "--json"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sources = reply["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2);
    assert_eq!(sources[0]["name"], "GPS");
    assert_eq!(sources[0]["kind"], "SOURCE_KIND_REFCLOCK");
    assert_eq!(sources[0]["state"], "SOURCE_STATE_SELECTED");
    assert_eq!(sources[1]["name"], "192.0.2.1:123");
    assert_eq!(sources[1]["state_symbol"], "x");
    assert_eq!(sources[1]["offset_s"], 0.0035);
    assert_eq!(sources[1]["last_sample_age_s"], 40.0);

    let out = stratactl(&socket, &["--csv", "sources"]);
    assert_eq!(
        text(&out.stdout),
        "#,*,GPS,0,4,377,9,-0.000000250,-0.000000300,0.000000100\n\
         ^,x,192.0.2.1,2,6,377,40,-0.003500000,-0.003600000,0.001500000\n"
    );
}

#[test]
fn makestep_without_the_admin_role_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, _) = start_fake(dir.path());
    let out = stratactl(&socket, &["makestep"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "stratactl: permission denied: uid 1000 is not in group strata-admin \
         (makestep needs the admin role: a member of the admin group)\n"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_missing_socket_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let out = stratactl(&socket, &["tracking"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let expected = format!("stratactl: cannot reach strata at {}: ", socket.display());
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert!(stderr.contains("No such file or directory"), "{stderr}");
}

#[test]
fn a_socket_nobody_listens_on_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    // The file stays when the listener is gone: connecting is refused.
    drop(StdUnixListener::bind(&socket).unwrap());
    let out = stratactl(&socket, &["sources"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("stratactl: cannot reach strata at "), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
}

#[test]
fn add_server_sends_the_options_and_prints_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, fake) = start_fake(dir.path());
    let out = stratactl(&socket, &["add", "server", "192.0.2.7", "--iburst", "--maxpoll", "8", "--xleave"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "added server 192.0.2.7\n");
    let added = fake.added.lock().unwrap();
    assert_eq!(added.len(), 1);
    assert_eq!(
        (
            added[0].address.as_str(),
            added[0].iburst,
            added[0].prefer,
            added[0].minpoll,
            added[0].maxpoll,
            added[0].xleave
        ),
        ("192.0.2.7", true, false, 0, 8, true)
    );
}

#[test]
fn other_errors_print_the_server_message_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, _) = start_fake(dir.path());
    let out = stratactl(&socket, &["delete", "203.0.113.9"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "stratactl: no source 203.0.113.9\n");
    let out = stratactl(&socket, &["waitsync", "3", "0.001"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "stratactl: not synchronised after 3 tries\n");
}

#[test]
fn watch_prints_events_until_the_stream_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, _) = start_fake(dir.path());
    let out = stratactl(&socket, &["watch", "--json"]);
    let lines: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["tracking"]["reference"], "GPS");
    assert_eq!(lines[1]["failover"]["to"], "192.0.2.1:123");
    // The stream's end means the control plane went away.
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("the watch stream was closed"), "{}", text(&out.stderr));
}

#[test]
fn usage_errors_exit_64_and_help_lists_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_stratactl")).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(env!("CARGO_BIN_EXE_stratactl")).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(help.contains("2   permission denied"), "{help}");
}

#[test]
fn target_options_may_follow_the_verb() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, _) = start_fake(dir.path());
    let out =
        Command::new(env!("CARGO_BIN_EXE_stratactl")).args(["activity", "--socket"]).arg(&socket).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "200 OK\n2 sources online\n0 sources offline\n0 sources unreachable\n");
}
