//! TLS for replication connections (rustls with the ring provider).
//!
//! Certificate checks follow libpq's `sslmode` (PostgreSQL documentation,
//! "SSL Support", table "SSL Mode Descriptions"):
//!
//! - `prefer` and `require`: the connection is encrypted but the server's
//!   certificate is not checked ([`NoCertificateCheck`]), which protects
//!   against eavesdropping but not against an active man in the middle,
//!   exactly like libpq. With an explicit `sslrootcert`, `require` checks the
//!   chain like `verify-ca`.
//! - `verify-ca`: the chain must lead to a trusted root; the name is not checked.
//! - `verify-full`: chain and host name are checked.
//!
//! Trusted roots: the PEM file `sslrootcert`, else `~/.postgresql/root.crt`
//! when it exists, else (or with `sslrootcert=system`) the Mozilla roots
//! bundled in `webpki-roots`.
//!
//! Unlike OpenSSL, webpki does not accept a CA certificate (`CA:TRUE`) as the
//! server's own certificate (`CaUsedAsEndEntity`): for `verify-ca` and
//! `verify-full`, sign the server certificate with a CA and give the CA in
//! `sslrootcert`. `require` and `prefer` accept any certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::client::conninfo::{ConnConfig, SslMode};
use crate::error::Error;

/// How the server certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    None,
    Chain,
    ChainAndName,
}

fn check_for(cfg: &ConnConfig) -> Check {
    match cfg.ssl_mode {
        SslMode::VerifyFull => Check::ChainAndName,
        SslMode::VerifyCa => Check::Chain,
        SslMode::Require if cfg.ssl_root_cert.is_some() => Check::Chain,
        _ => Check::None,
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn home_root_cert() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from).or_else(|| {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.dir)
    })?;
    let path = home.join(".postgresql/root.crt");
    path.is_file().then_some(path)
}

fn load_roots(file: Option<&Path>) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    let file = match file {
        Some(p) if p == Path::new("system") => None,
        Some(p) => Some(p.to_path_buf()),
        None => home_root_cert(),
    };
    match file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(&path).map_err(|e| {
                Error::tls_cause(format!("reading sslrootcert {}", path.display()), e)
            })?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    Error::tls_cause(format!("parsing sslrootcert {}", path.display()), e)
                })?;
                roots.add(cert).map_err(|e| {
                    Error::tls_cause(format!("adding root from {}", path.display()), e)
                })?;
            }
            if roots.is_empty() {
                return Err(Error::tls(format!(
                    "sslrootcert {} holds no certificate",
                    path.display()
                )));
            }
        }
    }
    Ok(roots)
}

/// Builds the rustls configuration for `cfg`'s `sslmode`.
pub(crate) fn client_config(cfg: &ConnConfig) -> Result<Arc<ClientConfig>, Error> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::tls_cause("configuring TLS", e))?;
    let check = check_for(cfg);
    let verifier: Arc<dyn ServerCertVerifier> = if check == Check::None {
        Arc::new(NoCertificateCheck(provider))
    } else {
        let roots = load_roots(cfg.ssl_root_cert.as_deref())?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| Error::tls_cause("configuring certificate verification", e))?;
        if check == Check::Chain {
            Arc::new(ChainOnly(webpki))
        } else {
            webpki
        }
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name presented for SNI and, with `verify-full`, checked against the
/// certificate: the `host` setting (an IP address or a DNS name).
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| Error::tls_cause(format!("host {host:?} is not a valid TLS server name"), e))
}

/// Accepts any server certificate while still checking the handshake
/// signatures: `sslmode=prefer|require` without a root certificate, as libpq.
#[derive(Debug)]
pub(crate) struct NoCertificateCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateCheck {
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
        verify_tls12_signature(
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
        verify_tls13_signature(
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

/// Checks the chain but not the host name (`sslmode=verify-ca`).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> ConnConfig {
        ConnConfig::parse_with_env(s, |n| (n == "HOME").then(|| "/nonexistent".to_owned())).unwrap()
    }

    #[test]
    fn modes() {
        assert_eq!(
            check_for(&cfg("host=h user=u sslmode=require")),
            Check::None
        );
        assert_eq!(
            check_for(&cfg("host=h user=u sslmode=require sslrootcert=/ca")),
            Check::Chain
        );
        assert_eq!(
            check_for(&cfg("host=h user=u sslmode=verify-ca")),
            Check::Chain
        );
        assert_eq!(
            check_for(&cfg("host=h user=u sslmode=verify-full")),
            Check::ChainAndName
        );
    }

    #[test]
    fn configs_build() {
        assert!(client_config(&cfg("host=h user=u sslmode=require")).is_ok());
        assert!(
            client_config(&cfg("host=h user=u sslmode=verify-full sslrootcert=system")).is_ok()
        );
        let missing = client_config(&cfg(
            "host=h user=u sslmode=verify-ca sslrootcert=/nonexistent/ca.pem",
        ));
        assert!(missing.unwrap_err().is_tls());
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("db.example").is_ok());
        assert!(server_name("bad name").is_err());
    }
}
