//! The server thread: a single-threaded tokio runtime serving gRPC on the Unix
//! socket (and on TCP with mutual TLS when configured) and `/metrics` over HTTP.
//! All listeners were bound by the supervisor. The thread and its runtime are
//! made before the sandbox and serve nothing until [`ServerThread::release`],
//! so the seccomp filter (installed on all threads) is in place first.

use std::convert::Infallible;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use strata_grpc::v1::{admin_server::AdminServer, monitor_server::MonitorServer};
use strata_proto::ipc::{ControlSettings, TlsFile};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::StreamExt;
use tonic::transport::server::Connected;
use tracing::{error, info, warn};

use crate::api::{Access, Api, Caller};
use crate::view::{Commands, Shared};

/// What the supervisor handed over.
#[derive(Default)]
pub struct Listeners {
    pub unix: Option<OwnedFd>,
    pub tls: Option<OwnedFd>,
    pub metrics: Option<OwnedFd>,
    pub pem: TlsPem,
}

/// The TLS listener's PEM files, read before the sandbox.
#[derive(Default)]
pub struct TlsPem {
    certificate: Option<Vec<u8>>,
    private_key: Option<Vec<u8>>,
    client_ca: Option<Vec<u8>>,
}

impl Listeners {
    /// Read a TLS file the supervisor opened (before the sandbox: no `open` after).
    pub fn take_tls_file(&mut self, kind: TlsFile, fd: OwnedFd) -> Result<(), String> {
        use std::io::{Read, Seek};
        let mut pem = Vec::new();
        let mut file = std::fs::File::from(fd);
        // The supervisor hands the same open file to every re-spawned control
        // plane: read it from the start, wherever the last one stopped.
        file.rewind()
            .and_then(|()| file.read_to_end(&mut pem))
            .map_err(|e| format!("reading the TLS {kind:?}: {e}"))?;
        match kind {
            TlsFile::Certificate => self.pem.certificate = Some(pem),
            TlsFile::PrivateKey => self.pem.private_key = Some(pem),
            TlsFile::ClientCa => self.pem.client_ca = Some(pem),
        }
        Ok(())
    }
}

pub struct ServerThread {
    release: std::sync::mpsc::Sender<()>,
}

impl ServerThread {
    pub fn start(
        listeners: Listeners,
        settings: &ControlSettings,
        shared: Arc<Shared>,
        commands: Commands,
    ) -> Result<ServerThread, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let (release, released) = std::sync::mpsc::channel::<()>();
        let credentials = Access::Credentials {
            read_gid: settings.read_gid,
            admin_gid: settings.admin_gid,
            own_uid: nix::unistd::geteuid().as_raw(),
        };
        let tls_role = settings.tls_role;
        // The new thread's own start-up (glibc registers rseq) must also happen
        // before the sandbox, or the filter kills it: wait until it runs.
        let (running, started) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                let _ = running.send(());
                if released.recv().is_err() {
                    return;
                }
                runtime.block_on(async move {
                    let unix = Api { shared: Arc::clone(&shared), commands: commands.clone(), access: credentials };
                    let tls = Api { shared: Arc::clone(&shared), commands, access: Access::Fixed(tls_role) };
                    let mut tasks = tokio::task::JoinSet::new();
                    if let Some(fd) = listeners.unix {
                        tasks.spawn(serve_unix(fd, unix));
                    }
                    if let Some(fd) = listeners.tls {
                        tasks.spawn(serve_tls(fd, listeners.pem, tls));
                    }
                    if let Some(fd) = listeners.metrics {
                        tasks.spawn(serve_metrics(fd, Arc::clone(&shared)));
                    }
                    // A listener that fails ends the process: the supervisor re-spawns
                    // a clean one (the API is not worth running half-broken).
                    if let Some(Ok(Err(e))) = tasks.join_next().await {
                        error!("{e}");
                        std::process::exit(1);
                    }
                });
            })
            .map_err(|e| format!("server thread: {e}"))?;
        started.recv().map_err(|_| "the server thread died at start".to_string())?;
        Ok(ServerThread { release })
    }

    pub fn release(&self) {
        let _ = self.release.send(());
    }
}

type Services = tonic::transport::server::Router;

/// The strata.v1 services, with health and reflection so that grpcurl and
/// grpc_health_probe work without the .proto files.
async fn router(api: Api, builder: tonic::transport::Server) -> Result<Services, String> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<MonitorServer<Api>>().await;
    reporter.set_serving::<AdminServer<Api>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(strata_grpc::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection().build_v1().map_err(|e| format!("reflection: {e}"))?;
    // Older grpcurl and grpc_cli ask only the v1alpha service.
    let v1alpha = reflection().build_v1alpha().map_err(|e| format!("reflection: {e}"))?;
    let mut builder = builder;
    Ok(builder
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(MonitorServer::new(api.clone()))
        .add_service(AdminServer::new(api)))
}

async fn serve_unix(fd: OwnedFd, api: Api) -> Result<(), String> {
    let listener = std::os::unix::net::UnixListener::from(fd);
    let listener = tokio::net::UnixListener::from_std(listener).map_err(|e| format!("control socket: {e}"))?;
    info!("gRPC on the control socket");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener).filter_map(|accepted| {
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                warn!("accept on the control socket: {e}");
                return None;
            }
        };
        match strata_sys::peer_credentials(&stream) {
            Ok(credentials) => Some(Ok::<_, std::io::Error>(CallerStream { io: stream, caller: Caller(credentials) })),
            Err(e) => {
                warn!("a caller without credentials was dropped: {e}");
                None
            }
        }
    });
    router(api, tonic::transport::Server::builder())
        .await?
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| format!("gRPC on the control socket: {e}"))
}

async fn serve_tls(fd: OwnedFd, pem: TlsPem, api: Api) -> Result<(), String> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (Some(certificate), Some(key), Some(ca)) = (pem.certificate, pem.private_key, pem.client_ca) else {
        return Err("the TLS listener came without its certificate, key and client CA".into());
    };
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(certificate, key))
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(false);
    let builder = tonic::transport::Server::builder().tls_config(tls).map_err(|e| format!("TLS configuration: {e}"))?;
    let listener = std::net::TcpListener::from(fd);
    let addr = listener.local_addr().ok();
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| format!("TLS listener: {e}"))?;
    info!(?addr, "gRPC over mutual TLS");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    router(api, builder).await?.serve_with_incoming(incoming).await.map_err(|e| format!("gRPC over TLS: {e}"))
}

/// `GET /metrics` (anything else: 404), one small HTTP/1.1 server per connection.
async fn serve_metrics(fd: OwnedFd, shared: Arc<Shared>) -> Result<(), String> {
    use http_body_util::Full;
    use hyper::{Response, StatusCode, body::Bytes};
    let listener = std::net::TcpListener::from(fd);
    let addr = listener.local_addr().ok();
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| format!("metrics listener: {e}"))?;
    info!(?addr, "Prometheus metrics on /metrics");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("accept on the metrics listener: {e}");
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let response = if request.uri().path() == "/metrics" && request.method() == hyper::Method::GET {
                    let accept = request.headers().get(hyper::header::ACCEPT).and_then(|v| v.to_str().ok());
                    let (text, content_type) = shared.view().metrics(accept);
                    Response::builder()
                        .header(hyper::header::CONTENT_TYPE, content_type)
                        .body(Full::new(Bytes::from(text)))
                } else {
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::from_static(b"try /metrics\n")))
                };
                async move { Ok::<_, Infallible>(response.expect("a valid response")) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(std::time::Duration::from_secs(10));
            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
        });
    }
}

/// A connection on the control socket with the credentials it connected with.
pub struct CallerStream {
    io: tokio::net::UnixStream,
    caller: Caller,
}

impl Connected for CallerStream {
    type ConnectInfo = Caller;
    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl AsyncRead for CallerStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for CallerStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
