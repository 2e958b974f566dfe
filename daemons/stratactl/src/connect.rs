//! Reaching the control plane: its Unix socket (the local, default way, where
//! the caller's groups give the role) or TCP with mutual TLS (a remote
//! appliance, where the client certificate gives the role).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::cli::Target;
use crate::failure::Failure;

/// How long to wait for the connection: an appliance that does not accept
/// within this is as good as unreachable for an operator at a prompt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the appliance is, in the words used in messages.
pub fn describe(target: &Target) -> String {
    match &target.connect {
        Some(url) => url.clone(),
        None => target.socket.display().to_string(),
    }
}

/// Opens the channel to the appliance; failures name where it was looked for.
pub async fn channel(target: &Target) -> Result<Channel, Failure> {
    let unreachable = |detail: String| Failure::Unreachable { place: describe(target), detail };
    match &target.connect {
        None => unix(&target.socket).await.map_err(|e| unreachable(crate::failure::chain(&e))),
        Some(url) => {
            let endpoint = tls_endpoint(url, target)?;
            endpoint.connect().await.map_err(|e| unreachable(crate::failure::chain(&e)))
        }
    }
}

/// tonic over a Unix stream: the URI is only a placeholder for HTTP/2's
/// authority; every connection goes to the socket (tonic's uds example).
async fn unix(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket: PathBuf = socket.to_path_buf();
    Endpoint::from_static("http://[::]:50051")
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
}

/// An https endpoint that trusts only the given CA and presents the client's
/// certificate: the appliance refuses clients without one.
fn tls_endpoint(url: &str, target: &Target) -> Result<Endpoint, Failure> {
    let read = |path: &Option<PathBuf>, what: &str| -> Result<Vec<u8>, Failure> {
        let path = path.as_ref().ok_or_else(|| Failure::Usage(format!("--connect needs --{what}")))?;
        std::fs::read(path).map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))
    };
    if !url.starts_with("https://") {
        return Err(Failure::Usage(format!("--connect {url}: only https:// (mutual TLS) is supported")));
    }
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&target.ca, "ca")?))
        .identity(Identity::from_pem(read(&target.cert, "cert")?, read(&target.key, "key")?));
    Endpoint::from_shared(url.to_string())
        .map_err(|e| Failure::Usage(format!("--connect {url}: {}", crate::failure::chain(&e))))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tls_config(tls)
        .map_err(|e| Failure::Usage(format!("TLS configuration: {}", crate::failure::chain(&e))))
}
