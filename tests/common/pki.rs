//! Certificates made at test time for TLS listeners, so nothing secret is
//! checked in: one CA and a server certificate valid for `localhost` and
//! `127.0.0.1` (an IP SAN, so clients that verify the host they dial, like
//! grpcio with default options, can connect to `127.0.0.1:PORT` as is).

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub struct ServerPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// A client certificate from the same CA, for mutual TLS.
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl ServerPki {
    pub fn generate() -> ServerPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "execd test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(vec!["execd-client".to_string()]).unwrap();
        client_params
            .distinguished_name
            .push(DnType::CommonName, "execd-client");
        let client_cert = client_params.signed_by(&client_key, &ca).unwrap();
        ServerPki {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }

    /// A tonic channel to a TLS listener on this host's loopback.
    pub async fn channel(&self, port: u16) -> Channel {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .expect("TLS connection to execd")
    }
}

/// A WebSocket over mutual TLS: `GET path` on `127.0.0.1:port` (HTTP/1.1),
/// offering subprotocol `protocol`, with `authorization: Bearer token`,
/// presenting `identity`'s client certificate and trusting `server`'s CA.
/// Panics unless execd answers 101.
pub async fn wss_connect(
    port: u16,
    path: &str,
    protocol: &str,
    token: &str,
    server: &ServerPki,
    identity: &ServerPki,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(server.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_slice_iter(identity.client_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(identity.client_key_pem.as_bytes()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to execd");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("mutual TLS handshake");
    let mut request = format!("wss://localhost:{port}{path}")
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("sec-websocket-protocol", protocol.parse().unwrap());
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _response) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("a 101 answer");
    ws
}
