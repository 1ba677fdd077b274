//! TLS to PostgreSQL as libpq's `sslmode` asks for it, over rustls: the
//! connection of a PostgreSQL source, target and shared state store.
//!
//! tokio-postgres knows `sslmode` only up to `require` and reads no
//! certificate files, so the connection string's TLS settings are taken out
//! first ([`split_tls`]) and become a rustls configuration whose certificate
//! check is the mode's: none for `prefer` and `require` (as libpq: they
//! protect against eavesdropping, not against a server in the middle), the
//! chain for `verify-ca`, chain and host name for `verify-full`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::spec::{PgTls, SslMode, split_tls};

/// A connection string made ready to connect: tokio-postgres's settings and
/// the TLS connector for the mode asked for.
pub struct Prepared {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A TLS setting that cannot work: a missing or unreadable certificate
    /// file, a bad `sslmode`.
    #[error("{0}")]
    Tls(String),
    /// The rest of the connection string (tokio-postgres's message names
    /// the option, never a value).
    #[error("{0}")]
    Config(#[from] tokio_postgres::Error),
}

/// Reads a connection string (URL or `key=value`), its TLS settings
/// included, and builds what connecting needs.
pub fn prepare(url: &str) -> Result<Prepared, SetupError> {
    let (rest, tls) = split_tls(url).map_err(SetupError::Tls)?;
    let mut config: tokio_postgres::Config = rest.parse()?;
    config.ssl_mode(match tls.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    let tls = MakeRustlsConnect::new(client_config(&tls).map_err(SetupError::Tls)?);
    Ok(Prepared { config, tls })
}

/// A TLS client that verifies the server's certificate and name against
/// `ca` (a PEM file) or, without one, the operating system's CAs; with a
/// client certificate when `cert_key` is given. For protocols other than
/// PostgreSQL's (Kafka), whose settings name the files directly.
pub fn verified_client_config(
    ca: Option<&Path>,
    cert_key: Option<(&Path, &Path)>,
) -> Result<ClientConfig, String> {
    let provider = provider();
    let mut store = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in read_certs(path, "tls_ca")? {
                store
                    .add(cert)
                    .map_err(|e| format!("tls_ca {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("no trusted CA found on this machine: set tls_ca".into());
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(store);
    match cert_key {
        Some((cert, key)) => {
            let certs = read_certs(cert, "tls_cert")?;
            let bytes = read(key, "tls_key")?;
            let key = PrivateKeyDer::from_pem_slice(&bytes)
                .map_err(|e| format!("tls_key {}: no private key in it ({e})", key.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("tls_cert and tls_key: {e}"))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

fn provider() -> Arc<CryptoProvider> {
    // Named rather than the process default: the tree carries both ring and
    // aws-lc-rs, and rustls will not pick between them on its own.
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(tls: &PgTls) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match tls.effective_mode() {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(Unchecked(provider)),
        mode @ (SslMode::VerifyCa | SslMode::VerifyFull) => {
            let roots = roots(tls, mode)?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("TLS set-up: {e}"))?;
            if mode == SslMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(Path::new(cert), "sslcert")?;
            let bytes = read(Path::new(key), "sslkey")?;
            let key = PrivateKeyDer::from_pem_slice(&bytes)
                .map_err(|e| format!("sslkey {key}: no private key in it ({e})"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("sslcert and sslkey: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The CAs a `verify-*` mode trusts: `sslrootcert`, the operating system's
/// roots for `sslrootcert=system`, or libpq's default file.
fn roots(tls: &PgTls, mode: SslMode) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let path = match tls.root_cert.as_deref() {
        Some("system") => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("sslrootcert=system: no trusted CA found on this machine".into());
            }
            return Ok(store);
        }
        Some(p) => PathBuf::from(p),
        None => match default_root_cert() {
            Some(p) => p,
            None => {
                return Err(format!(
                    "sslmode={} needs the CA to trust: add sslrootcert=/path/to/ca.pem to the \
                     URL (or sslrootcert=system for the operating system's CAs)",
                    mode.name()
                ));
            }
        },
    };
    for cert in read_certs(&path, "sslrootcert")? {
        store
            .add(cert)
            .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    }
    Ok(store)
}

/// libpq's `~/.postgresql/root.crt`, when it exists.
fn default_root_cert() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("HOME")?).join(".postgresql/root.crt");
    p.is_file().then_some(p)
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key} {}: {e}", path.display()))
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path, key)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// `prefer` and `require`: encrypted, any certificate accepted. The
/// handshake's signatures are still checked, so the session is bound to the
/// key of the certificate shown.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the host name is not
/// compared (webpki checks the name last, so a name mismatch means the
/// chain was good).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The rustls error inside a connection error, when the TLS handshake
/// failed. tokio-rustls wraps it in an `io::Error`, whose `source()` skips
/// the wrapped error, so each `io::Error` in the chain is opened.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

/// A failed TLS negotiation the user must fix (a certificate the mode
/// refuses, a server without TLS under `require`): not worth a retry.
pub fn is_tls_refusal(e: &tokio_postgres::Error) -> bool {
    rustls_error(e).is_some_and(|r| !matches!(r, rustls::Error::General(_)))
        || e.to_string().contains("server does not support TLS")
}

/// What a TLS failure means in the user's terms, to follow the library's
/// message.
pub fn tls_hint(e: &tokio_postgres::Error) -> Option<&'static str> {
    if e.to_string().contains("server does not support TLS") {
        return Some("the server has TLS off; sslmode=prefer or disable connects without it");
    }
    match rustls_error(e)? {
        rustls::Error::InvalidCertificate(c) => Some(match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "the server's certificate is not signed by a CA in sslrootcert"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the server's certificate does not name the host in the URL; \
                 sslmode=verify-full checks the name, verify-ca does not"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired"
            }
            _ => "the server's certificate was refused",
        }),
        rustls::Error::AlertReceived(_) => Some(
            "the server refused the TLS session: does it want a client certificate (sslcert, sslkey)?",
        ),
        _ => None,
    }
}
