//! The client certificate of a mutual-TLS connection, as a request knows
//! it: the SHA-256 fingerprint of the leaf certificate's DER.
//!
//! The transport reads the certificate once, after the handshake, and puts
//! this on every request of that connection (a request extension, HTTP/1.1
//! and HTTP/2 alike), so every door derives the same [`super::Owner`] from
//! it. Only the fingerprint is kept: it names the certificate stably (the
//! same certificate on a new connection is the same client) without
//! holding or ever logging the certificate itself.

use rustls::crypto::hash::Hash as HashFunction;

/// SHA-256 from the ring provider rustls already links for TLS, so no
/// second hash implementation is needed. Read at compile time: a suite
/// that were not TLS 1.3 would fail the build, never a request.
static SHA256: &dyn HashFunction =
    match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13() {
        Some(suite) => suite.common.hash_provider,
        None => panic!("TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite"),
    };

/// Bytes of a SHA-256 digest.
const FINGERPRINT_LEN: usize = 32;

/// A connection's client certificate (the leaf), by fingerprint. Part of
/// the owner of every session started over that connection.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ClientCertificate([u8; FINGERPRINT_LEN]);

impl ClientCertificate {
    /// The certificate whose DER encoding is `der` (as TLS carried it).
    pub(crate) fn from_der(der: &[u8]) -> ClientCertificate {
        let digest = SHA256.hash(der);
        let mut fingerprint = [0u8; FINGERPRINT_LEN];
        // SHA-256 output is exactly 32 bytes; copy what there is.
        let n = digest.as_ref().len().min(FINGERPRINT_LEN);
        fingerprint[..n].copy_from_slice(&digest.as_ref()[..n]);
        ClientCertificate(fingerprint)
    }

    /// The SHA-256 fingerprint of the certificate's DER.
    pub(crate) fn fingerprint(&self) -> &[u8; FINGERPRINT_LEN] {
        &self.0
    }
}

impl std::fmt::Display for ClientCertificate {
    /// `sha256:` and the fingerprint in hex, as `openssl x509 -fingerprint
    /// -sha256` shows it (without colons).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientCertificate({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_the_sha256_of_the_der() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let cert = ClientCertificate::from_der(b"abc");
        assert_eq!(
            cert.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(format!("{cert:?}"), format!("ClientCertificate({cert})"));
        assert_eq!(cert, ClientCertificate::from_der(b"abc"));
        assert_ne!(cert, ClientCertificate::from_der(b"abd"));
    }
}
