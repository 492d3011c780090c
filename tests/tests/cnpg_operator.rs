//! The operator-side plugin (`pgagent cnpg operator`) as CloudNativePG's operator meets it:
//! over TCP with mutual TLS 1.3. Plugin loading gives exactly the declared services; cluster
//! validation and the lifecycle hook answer over the wire as their unit tests say (the
//! patch for CNPG's instance pod is the golden one); a client without a certificate, with
//! one of another CA, expecting another server name, or offering only TLS 1.2 is refused; renewed certificates
//! are used without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pgagent_cnpgi::identity::plugin_capability::service::Type as Service;
use pgagent_cnpgi::lifecycle::operator_lifecycle_client::OperatorLifecycleClient;
use pgagent_cnpgi::lifecycle::operator_operation_type::Type as OpType;
use pgagent_cnpgi::lifecycle::{OperatorLifecycleRequest, OperatorOperationType};
use pgagent_cnpgi::operator::operator_client::OperatorClient;
use pgagent_cnpgi::operator::OperatorValidateClusterCreateRequest;
use pgagent_tests::cnpg::{cluster_json, load, tls_channel};
use pgagent_tests::{free_port, wait_until, AgentProcess};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::Channel;

/// A CA that signs certificates.
struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    /// (certificate PEM, key PEM) for `names`, for a server or a client.
    fn issue(&self, names: &[&str], server: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }
}

/// Writes `contents` to `path` as Kubernetes updates a mounted Secret: a new file renamed
/// over the old one.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn client_config(trust: &Ca, identity: Option<&(String, String)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(trust.pem().as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

struct Operator {
    _process: AgentProcess,
    addr: std::net::SocketAddr,
    server_cert: PathBuf,
    server_key: PathBuf,
}

fn start_operator(dir: &Path, server: &(String, String), client_ca: &Ca) -> Operator {
    let (server_cert, server_key, ca) = (
        dir.join("tls.crt"),
        dir.join("tls.key"),
        dir.join("client-ca.crt"),
    );
    std::fs::write(&server_cert, &server.0).unwrap();
    std::fs::write(&server_key, &server.1).unwrap();
    std::fs::write(&ca, client_ca.pem()).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let args = [
        "cnpg",
        "operator",
        "--listen",
        &addr.to_string(),
        "--server-cert",
        server_cert.to_str().unwrap(),
        "--server-key",
        server_key.to_str().unwrap(),
        "--client-ca",
        ca.to_str().unwrap(),
        "--sidecar-image",
        // The image the golden patch was made with.
        "ghcr.io/pgagent/pgagent:0.1.0",
    ];
    let mut process = AgentProcess::spawn(&args, &[]);
    let up = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        std::net::TcpStream::connect(addr).is_ok() || !process.is_running()
    });
    assert!(up && process.is_running(), "{}", process.output_text());
    Operator {
        _process: process,
        addr,
        server_cert,
        server_key,
    }
}

fn testdata(name: &str) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src/cnpg/lifecycle/testdata");
    std::fs::read(dir.join(name)).unwrap()
}

async fn refused(channel: Channel) -> bool {
    load(channel).await.is_err()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_side_serves_over_mutual_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("pgagent server CA");
    let client_ca = Ca::new("pgagent client CA");
    let other_ca = Ca::new("another CA");
    let server = server_ca.issue(&["pgagent", "pgagent.cnpg-system.svc"], true);
    let client = client_ca.issue(&["cnpg-operator"], false);
    let operator = start_operator(dir.path(), &server, &client_ca);
    let good = || {
        tls_channel(
            operator.addr,
            "pgagent",
            client_config(&server_ca, Some(&client)),
        )
    };

    let loaded = load(good()).await.expect("plugin loads over mutual TLS");
    assert_eq!(loaded.name, "pgagent.io");
    let expected = [Service::OperatorService, Service::LifecycleService].into();
    assert_eq!(loaded.declared, expected, "declared");
    assert_eq!(loaded.served, expected, "served");

    // Validation over the wire: a cluster without store.url is refused at that parameter.
    let bad = cluster_json("pg", "pg-1", &[("wal.partial_interval", "2s")]);
    let errors = OperatorClient::new(good())
        .validate_cluster_create(OperatorValidateClusterCreateRequest { definition: bad })
        .await
        .unwrap()
        .into_inner()
        .validation_errors;
    assert!(
        errors
            .iter()
            .any(|e| e.path_components.last().map(String::as_str) == Some("store.url")),
        "{errors:?}"
    );
    let fine = cluster_json(
        "pg",
        "pg-1",
        &[("store.url", "s3://b/p?endpoint=http://s3:9000")],
    );
    let errors = OperatorClient::new(good())
        .validate_cluster_create(OperatorValidateClusterCreateRequest { definition: fine })
        .await
        .unwrap()
        .into_inner()
        .validation_errors;
    assert!(errors.is_empty(), "{errors:?}");

    // The lifecycle hook answers the golden patch for CNPG's instance pod.
    let patch = OperatorLifecycleClient::new(good())
        .lifecycle_hook(OperatorLifecycleRequest {
            operation_type: Some(OperatorOperationType {
                r#type: OpType::Create as i32,
            }),
            cluster_definition: testdata("cluster.json"),
            object_definition: testdata("instance-pod.json"),
        })
        .await
        .unwrap()
        .into_inner()
        .json_patch;
    let got: serde_json::Value = serde_json::from_slice(&patch).unwrap();
    let golden: serde_json::Value =
        serde_json::from_slice(&testdata("instance-pod.patch.json")).unwrap();
    assert_eq!(got, golden, "the patch over the wire is the golden one");

    // Refused: no client certificate; a certificate of another CA; another server name.
    assert!(
        refused(tls_channel(
            operator.addr,
            "pgagent",
            client_config(&server_ca, None)
        ))
        .await
    );
    let stranger = other_ca.issue(&["cnpg-operator"], false);
    assert!(
        refused(tls_channel(
            operator.addr,
            "pgagent",
            client_config(&server_ca, Some(&stranger))
        ))
        .await
    );
    assert!(
        refused(tls_channel(
            operator.addr,
            "other-plugin",
            client_config(&server_ca, Some(&client))
        ))
        .await
    );

    // Refused: a client that offers only TLS 1.2.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server_ca.pem().as_bytes()).unwrap())
        .unwrap();
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_slice(client.0.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(client.1.as_bytes()).unwrap(),
    )
    .unwrap();
    assert!(
        refused(tls_channel(operator.addr, "pgagent", tls12)).await,
        "TLS 1.2 accepted"
    );

    // Renewed certificates (a new server CA) are used without a restart.
    let new_ca = Ca::new("pgagent server CA, renewed");
    let renewed = new_ca.issue(&["pgagent"], true);
    replace(&operator.server_key, &renewed.1);
    replace(&operator.server_cert, &renewed.0);
    let renewed_ok = load(tls_channel(
        operator.addr,
        "pgagent",
        client_config(&new_ca, Some(&client)),
    ))
    .await;
    assert!(
        renewed_ok.is_ok(),
        "the renewed certificate is not served: {renewed_ok:?}"
    );
    assert!(refused(good()).await, "the old certificate is still served");
}
