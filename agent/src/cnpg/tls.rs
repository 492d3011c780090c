//! Mutual TLS 1.3 for the operator-side plugin, with certificates re-read when their files
//! change.
//!
//! CNPG's operator connects to the plugin's Service with the client certificate of the
//! Secret named by the Service's `cnpg.io/pluginClientSecret` annotation and checks the
//! plugin's certificate (`cnpg.io/pluginServerSecret`). The plugin accepts only clients whose
//! certificate chains to `--client-ca`. Kubernetes updates a mounted Secret in place (a new
//! `..data` symlink) when cert-manager renews it, so every handshake first compares the
//! files' modification times, sizes and inodes with those of the configuration in use and
//! builds a new one when they differ; a new set that does not load is logged and the old one
//! kept, so a half-written renewal never takes the plugin down.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// The PEM files of the operator-side plugin's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server certificate chain (`tls.crt` of the server Secret).
    pub cert: PathBuf,
    /// Its private key (`tls.key`).
    pub key: PathBuf,
    /// The certificates a client's chain must end in (`ca.crt` of the client Secret, or the
    /// client's self-signed `tls.crt`).
    pub client_ca: PathBuf,
}

/// What identifies one version of the three files: (modified, length, inode) of each.
type Stamp = Vec<(SystemTime, u64, u64)>;

/// A TLS server configuration that follows its files ([`ReloadingTls::current`]).
#[derive(Debug)]
pub struct ReloadingTls {
    files: TlsFiles,
    state: Mutex<(Stamp, Arc<ServerConfig>)>,
}

impl ReloadingTls {
    /// Loads the files once.
    ///
    /// Errors: a file that cannot be read, holds no certificate or key, or a key that does
    /// not match the certificate.
    pub fn load(files: TlsFiles) -> io::Result<ReloadingTls> {
        let stamp = stamp(&files)?;
        let config = Arc::new(server_config(&files)?);
        Ok(ReloadingTls {
            files,
            state: Mutex::new((stamp, config)),
        })
    }

    /// The configuration for the next handshake: the files' current contents when they
    /// changed and load, else the configuration in use.
    pub fn current(&self) -> Arc<ServerConfig> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(now) = stamp(&self.files) else {
            return state.1.clone();
        };
        if now != state.0 {
            match server_config(&self.files) {
                Ok(config) => {
                    tracing::info!("TLS certificates changed on disk: using the new ones");
                    *state = (now, Arc::new(config));
                }
                Err(e) => {
                    tracing::warn!("TLS certificates changed on disk but do not load ({e}); keeping the previous ones");
                }
            }
        }
        state.1.clone()
    }
}

fn stamp(files: &TlsFiles) -> io::Result<Stamp> {
    [&files.cert, &files.key, &files.client_ca]
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).map_err(|e| annotate(p, e))?;
            Ok((m.modified()?, m.len(), m.ino()))
        })
        .collect()
}

fn annotate(path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {e}", path.display()),
    )
}

/// TLS 1.3 only, the ring provider pgagent uses everywhere, a client certificate required
/// and checked against `client_ca`, and ALPN `h2` (gRPC clients require it).
fn server_config(files: &TlsFiles) -> io::Result<ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| annotate(&files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| annotate(&files.cert, e))?;
    if certs.is_empty() {
        return Err(annotate(&files.cert, "no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| annotate(&files.key, e))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&files.client_ca)
        .map_err(|e| annotate(&files.client_ca, e))?
    {
        let ca = ca.map_err(|e| annotate(&files.client_ca, e))?;
        roots.add(ca).map_err(|e| annotate(&files.client_ca, e))?;
    }
    if roots.is_empty() {
        return Err(annotate(&files.client_ca, "no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| annotate(&files.client_ca, e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| annotate(&files.key, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
