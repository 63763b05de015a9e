//! Certificates made at test time for TLS listeners, so nothing secret is
//! checked in: one CA and a server certificate valid for `localhost` and
//! `127.0.0.1` (an IP SAN, so clients that verify the host they dial, like
//! grpcio with default options, can connect to `127.0.0.1:PORT` as is).
//!
//! Included with `#[path]` by the tests that need it.
#![allow(dead_code)]

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
