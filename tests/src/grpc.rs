//! A gRPC client of the tests' own for the control plane: over its Unix socket
//! (as whoever the test runs as) or over TCP with mutual TLS.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// One runtime per test: the tests are synchronous, the client is not.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A channel over the control socket at `path`.
pub async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_owned();
    // The URI is required by the API and unused: the connector below decides.
    Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// A channel over TCP with TLS: the server is checked against `ca` (for the
/// name "localhost"); `client` is the certificate and key we present, if any.
pub async fn tls_channel(
    port: u16,
    ca: &[u8],
    client: Option<(&[u8], &[u8])>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::try_from(format!("https://127.0.0.1:{port}"))?.tls_config(tls)?.connect().await
}

/// A CA and, signed by it, a server certificate for "localhost"/127.0.0.1 and a
/// client certificate; written under `dir` with openssl (PEM files).
pub fn make_pki(dir: &Path, name: &str) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ca = format!("{name}-ca");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={ca}"),
        "-keyout",
        &format!("{ca}.key"),
        "-out",
        &format!("{ca}.pem"),
    ]);
    for (who, ext) in [
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        let base = format!("{name}-{who}");
        std::fs::write(dir.join(format!("{base}.ext")), format!("basicConstraints=CA:FALSE\n{ext}\n")).unwrap();
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={base}"),
            "-keyout",
            &format!("{base}.key"),
            "-out",
            &format!("{base}.csr"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{base}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{base}.ext"),
            "-out",
            &format!("{base}.pem"),
        ]);
    }
}
