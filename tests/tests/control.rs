//! Operators: the gRPC API (reflection, health, roles from the caller's
//! credentials, mutual TLS), stratactl against a running appliance, Prometheus
//! metrics checked by promtool, and a control plane killed with -9.

use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use strata_grpc::v1::{self, admin_client::AdminClient, monitor_client::MonitorClient};
use strata_tests::appliance::{Appliance, StatusExt};
use strata_tests::grpc::{make_pki, runtime, tls_channel, unix_channel};
use strata_tests::{TestNtpServer, bin_dir, free_udp_port, require_root, require_tool, scratch_dir, wait_for};

/// `[server]` body serving loopback on `port`, polling `upstream` quickly, and
/// `control` as the `[control]` table's body.
fn config(port: u16, upstream: std::net::SocketAddr, control: &str) -> String {
    format!(
        "listen = [\"127.0.0.1:{port}\"]\naccess = [\"allow 127.0.0.0/8\"]\n\n\
         [[upstream]]\naddress = \"{upstream}\"\niburst = true\nminpoll = -2\nmaxpoll = 0\n\n\
         [control]\n{control}\n"
    )
}

fn socket_of(appliance: &Appliance) -> PathBuf {
    appliance.dir.join("run/control.sock")
}

/// stratactl as `identity` (uid, gid; `None`: as the test, root), with its
/// exit code, stdout and stderr.
fn stratactl(socket: &Path, identity: Option<(u32, u32)>, args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(bin_dir().join("stratactl"));
    command.arg("--socket").arg(socket).args(args);
    if let Some((uid, gid)) = identity {
        // std drops the supplementary groups when it changes the uid.
        command.uid(uid).gid(gid);
    }
    let out = command.output().expect("run stratactl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn group(name: &str) -> u32 {
    nix::unistd::Group::from_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("group {name} is missing: `cargo xtask ci` creates it with systemd-sysusers"))
        .gid
        .as_raw()
}

/// Strata's answer to one client request: (stratum, reference id).
fn answer(port: u16) -> Option<(u8, [u8; 4])> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut request = [0u8; 48];
    request[0] = 0x23;
    socket.send_to(&request, ("127.0.0.1", port)).ok()?;
    let mut reply = [0u8; 48];
    socket.recv(&mut reply).ok()?;
    Some((reply[1], reply[12..16].try_into().unwrap()))
}

/// The reference id strata serves, once it serves stratum 2.
fn served_refid(port: u16) -> Option<[u8; 4]> {
    answer(port).and_then(|(stratum, refid)| (stratum == 2).then_some(refid))
}

/// The stratum strata serves, if it answers.
fn ask(port: u16) -> Option<u8> {
    answer(port).map(|(stratum, _)| stratum)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn reflection_lists_the_services_and_stratactl_agrees_with_the_engine() {
    if !require_root("control API") {
        return;
    }
    let upstream = TestNtpServer::start("127.0.0.21:0", 0.0);
    let port = free_udp_port();
    let appliance =
        Appliance::start_with_clock("control-api", Some(&config(port, upstream.address, "")), "backend = \"none\"");
    let socket = socket_of(&appliance);
    let rt = runtime();

    // Reflection: what grpcurl `list` shows, without the .proto files.
    let services = rt.block_on(async {
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut client = ServerReflectionClient::new(unix_channel(&socket).await.unwrap());
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = client.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
        let reply = replies.message().await.unwrap().unwrap();
        match reply.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("not a service list: {other:?}"),
        }
    });
    for name in ["strata.v1.Monitor", "strata.v1.Admin", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == name), "{name} not listed: {services:?}");
    }
    // The older reflection protocol, which older grpcurl versions speak, knows them too.
    let described = rt.block_on(async {
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut client = ServerReflectionClient::new(unix_channel(&socket).await.unwrap());
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("strata.v1.Admin".into())),
        };
        let mut replies = client.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
        match replies.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::FileDescriptorResponse(files)) => files.file_descriptor_proto.len(),
            other => panic!("no descriptor for strata.v1.Admin: {other:?}"),
        }
    });
    assert!(described >= 1);
    let health = rt.block_on(async {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let mut client = HealthClient::new(unix_channel(&socket).await.unwrap());
        client.check(HealthCheckRequest { service: "strata.v1.Monitor".into() }).await.unwrap().into_inner().status
    });
    assert_eq!(health, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    // The engine selects the upstream and serves its address as refid ...
    let want_refid = [127, 0, 0, 21];
    wait_for("strata serving stratum 2 from the upstream", Duration::from_secs(20), || {
        (served_refid(port) == Some(want_refid)).then_some(())
    });
    // ... and the API says the same, in the gRPC client and in stratactl.
    let tracking = wait_for("tracking through the API", Duration::from_secs(5), || {
        let t = rt.block_on(async {
            let mut client = MonitorClient::new(unix_channel(&socket).await.unwrap());
            client.tracking(v1::TrackingRequest {}).await.ok().map(|r| r.into_inner())
        })?;
        (t.synchronised && t.reference == upstream.address.to_string()).then_some(t)
    });
    assert_eq!(tracking.reference_id, "7F000015");
    assert_eq!(tracking.stratum, 2);
    assert_eq!(tracking.clock_backend, "none");

    let (code, out, err) = stratactl(&socket, None, &["--json", "tracking"]);
    assert_eq!(code, 0, "{err}");
    let t = json(&out);
    assert_eq!(t["reference"], upstream.address.to_string(), "{out}");
    assert_eq!(t["stratum"], 2, "{out}");

    let (code, out, err) = stratactl(&socket, None, &["--json", "sources"]);
    assert_eq!(code, 0, "{err}");
    let sources = json(&out);
    let sources = sources["sources"].as_array().unwrap_or_else(|| panic!("no sources array: {out}"));
    assert_eq!(sources.len(), 1, "{out}");
    assert_eq!(sources[0]["name"], upstream.address.to_string());
    assert_eq!(sources[0]["state_symbol"], "*", "{out}");
    assert!(sources[0]["reach"].as_u64().unwrap() > 0, "{out}");

    // The human table names the selected source with chronyc's `^*`.
    let (code, out, _) = stratactl(&socket, None, &["sources"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("^*") && l.contains("127.0.0.21")), "{out}");
}

#[test]
fn roles_come_from_the_callers_groups_and_admin_calls_change_the_engine() {
    if !require_root("control roles") {
        return;
    }
    let (read, admin) = (group("strata-read"), group("strata-admin"));
    let upstream = TestNtpServer::start("127.0.0.22:0", 0.0);
    let port = free_udp_port();
    let appliance =
        Appliance::start_with_clock("control-roles", Some(&config(port, upstream.address, "")), "backend = \"none\"");
    let socket = socket_of(&appliance);
    let nobody = 65534;
    wait_for("the engine's first report", Duration::from_secs(10), || {
        (stratactl(&socket, None, &["tracking"]).0 == 0).then_some(())
    });

    // A reader reads, and is refused every change with PERMISSION_DENIED.
    let (code, out, err) = stratactl(&socket, Some((nobody, read)), &["tracking"]);
    assert_eq!(code, 0, "a member of strata-read could not read: {err}");
    assert!(out.contains("Stratum"), "{out}");
    for args in [&["makestep"][..], &["add", "server", "127.0.0.23"], &["delete", "127.0.0.22"], &["allow", "all"]] {
        let (code, _, err) = stratactl(&socket, Some((nobody, read)), args);
        assert_eq!(code, 2, "{args:?} as a reader: {err}");
        assert!(err.contains("permission denied"), "{args:?}: {err}");
    }
    // Outside both groups: not even reading.
    let (code, _, err) = stratactl(&socket, Some((nobody, nobody)), &["tracking"]);
    assert_eq!(code, 2, "{err}");

    // An admin adds a source: the engine polls it, and deletes it again.
    let second = TestNtpServer::start("127.0.0.23:0", 0.0);
    let (code, out, err) = stratactl(&socket, Some((nobody, admin)), &["add", "server", &second.address.to_string()]);
    assert_eq!(code, 0, "add as admin: {err}");
    assert!(out.contains("added"), "{out}");
    wait_for("the added source reachable", Duration::from_secs(15), || {
        let (_, out, _) = stratactl(&socket, None, &["--json", "sources"]);
        let v = json(&out);
        v["sources"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == second.address.to_string() && s["reach"].as_u64().unwrap_or(0) > 0)
            .map(|_| ())
    });
    // Adding it twice is refused with a reason.
    let (code, _, err) = stratactl(&socket, None, &["add", "server", &second.address.to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already"), "{err}");
    let (code, _, err) = stratactl(&socket, Some((nobody, admin)), &["delete", &second.address.to_string()]);
    assert_eq!(code, 0, "delete as admin: {err}");
    wait_for("the deleted source gone from the list", Duration::from_secs(5), || {
        let (_, out, _) = stratactl(&socket, None, &["--json", "sources"]);
        (!out.contains(&second.address.to_string())).then_some(())
    });

    // offline stops polling: the packet counter stands still.
    let (code, _, err) = stratactl(&socket, None, &["offline"]);
    assert_eq!(code, 0, "{err}");
    let sent = || {
        let (_, out, _) = stratactl(&socket, None, &["--json", "sources"]);
        json(&out)["sources"][0]["packets_sent"].as_u64().unwrap()
    };
    std::thread::sleep(Duration::from_millis(1500));
    let before = sent();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sent(), before, "an offline source was polled");
    let (code, _, _) = stratactl(&socket, None, &["online"]);
    assert_eq!(code, 0);
    wait_for("polling again after online", Duration::from_secs(5), || (sent() > before).then_some(()));

    // deny all at run time: the server stops answering; allow brings it back.
    let (code, _, err) = stratactl(&socket, None, &["deny", "all"]);
    assert_eq!(code, 0, "{err}");
    wait_for("no answer after deny all", Duration::from_secs(5), || ask(port).is_none().then_some(()));
    let (code, _, _) = stratactl(&socket, None, &["allow", "127.0.0.1"]);
    assert_eq!(code, 0);
    wait_for("answers after allow", Duration::from_secs(5), || ask(port).map(|_| ()));
    let (code, _, err) = stratactl(&socket, None, &["allow", "300.1.2.3/8"]);
    assert_eq!(code, 1, "a bad rule was accepted: {err}");

    // Every admin call is in the log with who asked.
    let log = appliance.log();
    assert!(log.contains(&format!("uid {nobody} gid {admin}")) && log.contains("admin call"), "{log}");
    assert!(log.contains("refused: the caller lacks the role"), "{log}");
}

#[test]
fn mutual_tls_refuses_a_client_without_a_trusted_certificate() {
    if !require_root("control TLS") || !require_tool("control TLS", "openssl") {
        return;
    }
    let dir = scratch_dir("control-tls-pki");
    make_pki(&dir, "good");
    make_pki(&dir, "rogue");
    let tls_port = free_udp_port();
    let upstream = TestNtpServer::start("127.0.0.24:0", 0.0);
    let control = format!(
        "[control.tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncertificate = \"{0}/good-server.pem\"\n\
         private-key = \"{0}/good-server.key\"\nclient-ca = \"{0}/good-ca.pem\"\nrole = \"read\"\n",
        dir.display()
    );
    let port = free_udp_port();
    let _appliance = Appliance::start_with_clock(
        "control-tls",
        Some(&config(port, upstream.address, &control)),
        "backend = \"none\"",
    );
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let ca = read("good-ca.pem");
    let rt = runtime();
    let tracking = |client: Option<(&[u8], &[u8])>| {
        let call = async {
            let channel = tls_channel(tls_port, &ca, client).await.map_err(|e| format!("connect: {e:?}"))?;
            let mut monitor = MonitorClient::new(channel.clone());
            let tracking = monitor.tracking(v1::TrackingRequest {}).await.map_err(|s| format!("{s:?}"))?;
            let mut admin = AdminClient::new(channel);
            let step = admin.make_step(v1::MakeStepRequest {}).await.map(|_| ()).map_err(|s| s.code());
            Ok::<_, String>((tracking.into_inner(), step))
        };
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), call).await })
            .unwrap_or_else(|_| Err("no answer within 5 s".into()))
    };
    // A client with a certificate from the trusted CA reads; its role (read) forbids makestep.
    let (good_cert, good_key) = (read("good-client.pem"), read("good-client.key"));
    let (t, step) = wait_for("a TLS answer", Duration::from_secs(10), || tracking(Some((&good_cert, &good_key))).ok());
    assert_eq!(t.clock_backend, "none");
    assert_eq!(step, Err(tonic::Code::PermissionDenied));
    // No certificate, or one from another CA: refused.
    let none = tracking(None);
    assert!(none.is_err(), "a client without a certificate was served: {none:?}");
    let (rogue_cert, rogue_key) = (read("rogue-client.pem"), read("rogue-client.key"));
    let rogue = tracking(Some((&rogue_cert, &rogue_key)));
    assert!(rogue.is_err(), "a client with an untrusted certificate was served: {rogue:?}");

    // stratactl over TLS, as an operator on another host would use it.
    let file = |name: &str| dir.join(name).display().to_string();
    let stratactl_tls = |who: &str| {
        Command::new(bin_dir().join("stratactl"))
            .args(["--connect", &format!("https://localhost:{tls_port}"), "--ca", &file("good-ca.pem")])
            .args(["--cert", &file(&format!("{who}-client.pem")), "--key", &file(&format!("{who}-client.key"))])
            .arg("tracking")
            .output()
            .unwrap()
    };
    let out = stratactl_tls("good");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Clock backend   : none"));
    let out = stratactl_tls("rogue");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach strata"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_pass_promtool_and_show_the_sources() {
    if !require_root("metrics") || !require_tool("metrics", "promtool") {
        return;
    }
    let metrics_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let upstream = TestNtpServer::start("127.0.0.25:0", 0.0);
    let port = free_udp_port();
    let control = format!("metrics-listen = \"127.0.0.1:{metrics_port}\"\n");
    let _appliance = Appliance::start_with_clock(
        "control-metrics",
        Some(&config(port, upstream.address, &control)),
        "backend = \"none\"",
    );
    let page = wait_for("metrics with a selected source", Duration::from_secs(20), || {
        let page = http_get(metrics_port, "/metrics")?;
        page.contains(&format!("strata_source_selected{{source=\"{}\",kind=\"server\"}} 1", upstream.address))
            .then_some(page)
    });
    for series in [
        "strata_tracking_offset_seconds",
        "strata_ntp_requests_received_total",
        "strata_ntp_rx_timestamps_total{source=\"kernel\"}",
        "strata_ntp_tx_timestamps_total{source=\"daemon\"}",
        "strata_ntp_interleaved_responses_total",
        "strata_ntp_timestamps_held",
        "strata_process_restarts_total",
        "strata_source_reachable",
    ] {
        assert!(page.contains(series), "{series} missing:\n{page}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    promtool.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\n{page}");
    assert!(http_get(metrics_port, "/other").is_none_or(|p| !p.contains("strata_")), "only /metrics serves metrics");
}

/// The body of a successful GET, or None.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

#[test]
fn the_control_plane_outlives_a_stream_of_calls() {
    if !require_root("control calls") {
        return;
    }
    // Replies allocate and free on the API thread; glibc once shrank that thread's
    // own heap after a few dozen calls and opened a /proc file to decide how, which
    // the seccomp policy kills. The control plane must serve on and never restart.
    let upstream = TestNtpServer::start("127.0.0.27:0", 0.0);
    let port = free_udp_port();
    let appliance =
        Appliance::start_with_clock("control-calls", Some(&config(port, upstream.address, "")), "backend = \"none\"");
    let control = appliance.pid_of("control");
    for round in 0..20 {
        for verb in ["serverstats", "sources", "sourcestats", "tracking", "clients", "processes"] {
            let (ok, said) = appliance.stratactl(&[verb]);
            assert!(ok, "stratactl {verb} in round {round}: {said}\n{}", appliance.log());
        }
    }
    let status = appliance.status();
    assert_eq!(status.of("control").pid, Some(control), "{}", appliance.log());
    assert_eq!(status.of("control").spawns, 1, "{}", appliance.log());
}

#[test]
fn killing_the_control_plane_leaves_serving_alone_and_the_api_comes_back() {
    if !require_root("control kill -9") {
        return;
    }
    let upstream = TestNtpServer::start("127.0.0.26:0", 0.0);
    let port = free_udp_port();
    let mut appliance =
        Appliance::start_with_clock("control-kill", Some(&config(port, upstream.address, "")), "backend = \"none\"");
    let socket = socket_of(&appliance);
    wait_for("stratum 2", Duration::from_secs(20), || (ask(port) == Some(2)).then_some(()));
    let rt = runtime();
    let watch_first_event = || {
        rt.block_on(async {
            let mut client = MonitorClient::new(unix_channel(&socket).await.ok()?);
            let mut stream = client.watch(v1::WatchRequest {}).await.ok()?.into_inner();
            tokio::time::timeout(Duration::from_secs(5), stream.message()).await.ok()?.ok()?
        })
    };
    assert!(watch_first_event().is_some(), "no watch event before the kill");

    // While the control plane is dead and re-spawned, every NTP request is answered.
    let asker = std::thread::spawn(move || {
        let start = Instant::now();
        let (mut asked, mut answered) = (0, 0);
        while start.elapsed() < Duration::from_secs(4) {
            asked += 1;
            answered += usize::from(ask(port) == Some(2));
            std::thread::sleep(Duration::from_millis(20));
        }
        (asked, answered)
    });
    std::thread::sleep(Duration::from_millis(300));
    appliance.kill_and_wait_replacement("control");
    let (asked, answered) = asker.join().unwrap();
    assert_eq!(answered, asked, "NTP answers missed while the control plane was re-spawned");

    // The API answers again and a watch can be opened again.
    wait_for("tracking after the re-spawn", Duration::from_secs(10), || {
        (stratactl(&socket, None, &["tracking"]).0 == 0).then_some(())
    });
    let event = wait_for("a watch event after the re-spawn", Duration::from_secs(10), watch_first_event);
    assert!(matches!(event.event, Some(v1::watch_event::Event::Tracking(_))), "{event:?}");
}

#[test]
fn an_admins_makestep_steps_a_clock_the_discipline_would_only_slew() {
    use strata_proto::clock_model::{ClockModel, RECORD_LEN};
    if !require_root("makestep") {
        return;
    }
    let dir = scratch_dir("control-makestep-model");
    let model_path = dir.join("clock-model");
    let now_ns = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let start = ClockModel { offset_s: 30.0, reference_ns: now_ns(), slew_end_ns: now_ns(), ..ClockModel::default() };
    std::fs::write(&model_path, start.encode(1)).unwrap();
    let model_offset = || {
        let bytes = std::fs::read(&model_path).unwrap();
        ClockModel::decode(&bytes[..RECORD_LEN]).unwrap().1.offset_at(now_ns())
    };
    let upstream = TestNtpServer::start("127.0.0.27:0", 0.0);
    let port = free_udp_port();
    // No makestep in the configuration: 30 s would be slewed, at the configured
    // maxslewrate of 1000 ppm for eight hours.
    let clock = format!("backend = \"simulated:{}\"\nmaxslewrate = 1000.0", model_path.display());
    let mut appliance =
        Appliance::start_with_clock("control-makestep", Some(&config(port, upstream.address, "")), &clock);
    let socket = socket_of(&appliance);
    wait_for("tracking synchronised to the upstream", Duration::from_secs(20), || {
        let (code, out, _) = stratactl(&socket, None, &["--json", "tracking"]);
        (code == 0 && json(&out)["synchronised"] == true).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(appliance.status().clock_steps_used, 0);
    assert!(model_offset() > 29.9, "the clock moved by more than a slew: {}", model_offset());
    // Slewing, at the configured rate at most, not the policy's 83 333 ppm.
    let bytes = std::fs::read(&model_path).unwrap();
    let slewing = ClockModel::decode(&bytes[..RECORD_LEN]).unwrap().1;
    assert!(slewing.slew_ppm.abs() > 0.0 && slewing.slew_ppm.abs() <= 1000.0, "{slewing:?}");

    let (code, out, err) = stratactl(&socket, None, &["makestep"]);
    assert_eq!(code, 0, "makestep: {err}");
    assert!(out.contains("step"), "{out}");
    appliance.wait_until("the operator's step", Duration::from_secs(10), |s| s.clock_steps_used == 1);
    wait_for("the model clock stepped onto the upstream", Duration::from_secs(5), || {
        (model_offset().abs() < 0.01).then_some(())
    });
    assert!(appliance.log().contains("makestep"), "the admin call is not in the log");
}

#[test]
fn with_no_source_tracking_names_the_local_reference_the_server_hands_out() {
    if !require_root("tracking of a local reference") {
        return;
    }
    // The default test appliance: local stratum 1, no upstream, no refclock.
    let appliance = Appliance::start("control-local", "");
    let socket = socket_of(&appliance);
    let tracking = wait_for("tracking", Duration::from_secs(10), || {
        let (code, out, _) = stratactl(&socket, None, &["--json", "tracking"]);
        (code == 0).then(|| json(&out))
    });
    assert_eq!(tracking["reference"], "LOCL", "{tracking}");
    assert_eq!(tracking["stratum"], 1, "{tracking}");
    assert_eq!(tracking["synchronised"], true, "{tracking}");
    assert_eq!(answer(appliance.ntp_port), Some((1, *b"LOCL")));
    // A caller outside both groups is told what it lacks, once.
    let (code, _, err) = stratactl(&socket, Some((65534, 65534)), &["tracking"]);
    assert_eq!(code, 2);
    assert_eq!(err.matches("needs the read role").count(), 1, "{err}");
}
