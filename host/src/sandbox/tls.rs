//! TLS on the sandbox's side: a client-certificate verifier that asks for a certificate, checks
//! that the client holds its key, and leaves the trust decision to the emulated service (as the
//! real services do: DPS and IoT Hub answer an untrusted certificate at the MQTT level, and
//! OpenSSL-made v1 device certificates, which webpki refuses, must be accepted).

use crate::caps::tls::HandshakeSignatures;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

#[derive(Debug)]
pub struct AnyClientCertificate(pub HandshakeSignatures);

impl ClientCertVerifier for AnyClientCertificate {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Trust is decided by the service from the chain; the handshake signatures below still
        // prove the client holds the certificate's private key. Only well-formed certificates
        // get that far, so the services can read every one.
        for (i, der) in std::iter::once(end_entity).chain(intermediates).enumerate() {
            crate::caps::certs::x509::check_der(der, "the client certificate chain", i)
                .map_err(|e| rustls::Error::General(e.message))?;
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}
