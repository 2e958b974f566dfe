//! What the supervisor opens for the control plane before anyone drops
//! privileges: its listening sockets (so the control plane needs neither `bind`
//! nor `listen`) and the TLS files (so the private key may stay root-only).

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;

use strata_config::Config;
use strata_proto::ipc::{Resource, TlsFile};
use tracing::info;

use crate::supervisor::StartError;

pub fn open_resources(config: &Config) -> Result<Vec<(Resource, OwnedFd)>, StartError> {
    let mut resources = Vec::new();
    let path = config.control_socket();
    let fail = |what: String| move |source| StartError::Control { what, source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail(format!("creating {}", dir.display())))?;
    }
    // A socket left by an earlier run: bind would fail with EADDRINUSE.
    let _ = std::fs::remove_file(&path);
    let socket = UnixListener::bind(&path).map_err(fail(format!("binding {}", path.display())))?;
    // Anyone may connect: what a caller may do is decided from its credentials
    // (SO_PEERCRED, SO_PEERGROUPS), not from who could open the file.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
        .map_err(fail(format!("chmod {}", path.display())))?;
    socket.set_nonblocking(true).map_err(fail("non-blocking".into()))?;
    info!(socket = %path.display(), "control socket");
    resources.push((Resource::ControlSocket, OwnedFd::from(socket)));

    if let Some(addr) = config.control.metrics_listen {
        let listener = TcpListener::bind(addr).map_err(fail(format!("binding metrics on {addr}")))?;
        listener.set_nonblocking(true).map_err(fail("non-blocking".into()))?;
        info!(%addr, "metrics listener");
        resources.push((Resource::MetricsSocket, OwnedFd::from(listener)));
    }
    if let Some(tls) = &config.control.tls {
        let listener = TcpListener::bind(tls.listen).map_err(fail(format!("binding gRPC/TLS on {}", tls.listen)))?;
        listener.set_nonblocking(true).map_err(fail("non-blocking".into()))?;
        info!(addr = %tls.listen, "gRPC over mutual TLS");
        resources.push((Resource::ControlTlsSocket, OwnedFd::from(listener)));
        for (kind, file) in [
            (TlsFile::Certificate, &tls.certificate),
            (TlsFile::PrivateKey, &tls.private_key),
            (TlsFile::ClientCa, &tls.client_ca),
        ] {
            let f = std::fs::File::open(file).map_err(fail(format!("opening {}", file.display())))?;
            resources.push((Resource::TlsFile(kind), OwnedFd::from(f)));
        }
    }
    Ok(resources)
}

/// The gid of a group, if it exists (an absent group grants nothing).
pub fn group_id(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name).ok().flatten().map(|g| g.gid.as_raw())
}
