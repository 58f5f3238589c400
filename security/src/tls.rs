//! TLS for tonic servers and clients (rustls with the `ring` provider), and
//! the rule for plaintext: allowed on loopback, elsewhere only when the
//! operator says so explicitly (and then with a warning).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::SecurityError;

/// How long a TLS handshake may take before the connection is dropped
/// (a stalled client must not hold a connection slot forever).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A server's certificate, key and optional client CA (mTLS), as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA that client certificates must chain to; `Some` turns on mTLS
    /// (clients without a valid certificate are refused in the handshake).
    pub client_ca: Option<PathBuf>,
}

/// What a client needs to reach a TLS server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// CA that the server's certificate must chain to (PEM); `None` uses no
    /// extra root (pass one for self-signed deployments).
    pub ca: Option<PathBuf>,
    /// Client certificate and key for mTLS.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Name to verify in the server certificate (default: the URL's host).
    pub domain: Option<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|e| SecurityError::Io {
        path: path.display().to_string(),
        source: e,
    })
}

fn check_pem(path: &Path, bytes: &[u8], what: &str) -> Result<(), SecurityError> {
    let text = String::from_utf8_lossy(bytes);
    if text.contains("-----BEGIN") {
        Ok(())
    } else {
        Err(SecurityError::Tls(format!(
            "{} is not a PEM file (expected {what})",
            path.display()
        )))
    }
}

/// Installs rustls' `ring` provider as the process default (idempotent), so
/// that rustls never has to guess when several providers are compiled in.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads the files and builds tonic's server TLS configuration.
pub fn server_config(files: &ServerTlsFiles) -> Result<ServerTlsConfig, SecurityError> {
    install_crypto_provider();
    let cert = read(&files.cert)?;
    check_pem(&files.cert, &cert, "a certificate")?;
    let key = read(&files.key)?;
    check_pem(&files.key, &key, "a private key")?;
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = &files.client_ca {
        let ca_pem = read(ca)?;
        check_pem(ca, &ca_pem, "a CA certificate")?;
        config = config.client_ca_root(Certificate::from_pem(ca_pem));
    }
    Ok(config)
}

/// Reads the files and builds tonic's client TLS configuration.
pub fn client_config(files: &ClientTlsFiles) -> Result<ClientTlsConfig, SecurityError> {
    install_crypto_provider();
    let mut config = ClientTlsConfig::new();
    if let Some(ca) = &files.ca {
        let pem = read(ca)?;
        check_pem(ca, &pem, "a CA certificate")?;
        config = config.ca_certificate(Certificate::from_pem(pem));
    }
    if let Some((cert, key)) = &files.identity {
        config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    if let Some(domain) = &files.domain {
        config = config.domain_name(domain.clone());
    }
    Ok(config)
}

/// Whether a listener may serve plaintext: always on loopback; elsewhere
/// only with `allow_plaintext`, and then a warning is logged.
pub fn check_plaintext(
    what: &str,
    addr: SocketAddr,
    allow_plaintext: bool,
) -> Result<(), SecurityError> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if allow_plaintext {
        tracing::warn!(
            listener = what,
            %addr,
            "serving PLAINTEXT on a non-loopback address (--allow-plaintext): traffic and \
             bearer tokens can be read and altered on the network"
        );
        return Ok(());
    }
    Err(SecurityError::Plaintext {
        what: what.to_string(),
        addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_rule() {
        let lo: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let lo6: SocketAddr = "[::1]:1".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:1".parse().expect("addr");
        assert!(check_plaintext("grpc", lo, false).is_ok());
        assert!(check_plaintext("grpc", lo6, false).is_ok());
        let err = check_plaintext("grpc", any, false).expect_err("refused");
        assert!(err.to_string().contains("--allow-plaintext"), "{err}");
        assert!(check_plaintext("grpc", any, true).is_ok());
    }

    #[test]
    fn missing_or_non_pem_files_are_explained() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = ServerTlsFiles {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("nope.key"),
            client_ca: None,
        };
        assert!(matches!(
            server_config(&files),
            Err(SecurityError::Io { .. })
        ));
        std::fs::write(dir.path().join("c.pem"), "hello").expect("w");
        let files = ServerTlsFiles {
            cert: dir.path().join("c.pem"),
            ..files
        };
        assert!(matches!(server_config(&files), Err(SecurityError::Tls(_))));
    }
}
