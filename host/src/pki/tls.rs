//! TLS pieces the whole host uses: trust anchors from a CA file or the system roots, a
//! certified key built without webpki (so X.509 v1 leaves work), handshake-signature checks
//! against the key x509-parser reads, the server-name override, and the embedded broker's
//! client-certificate verifier. TLS 1.2 is the minimum (rustls offers 1.2 and 1.3 only).

use super::x509;
use crate::model::{ErrorKind, PluginError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

pub(crate) fn tls_error(message: String) -> PluginError {
    PluginError::new(ErrorKind::Tls, message)
}

/// The rustls error behind a network error, if any. `io::Error::source` skips the error it
/// wraps, so wrapped errors are looked into explicitly.
pub(crate) fn find_rustls_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(tls) = find_rustls_error(inner) {
                return Some(tls);
            }
        }
        next = err.source();
    }
    None
}

/// rustls's certificate errors and the server's certificate alerts, said as what the operator
/// should check.
pub(crate) fn describe(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            format!("the server's certificate has expired ({e})")
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            format!("the server's certificate is not valid yet; check the gateway clock ({e})")
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            format!(
                "the server's certificate is not signed by a CA in the configured CA file ({e})"
            )
        }
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
            format!("the server requires a client certificate and none is configured ({e})")
        }
        rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::UnknownCA
            | rustls::AlertDescription::CertificateUnknown,
        ) => format!(
            "the server rejected the client certificate; is it issued by a CA the server trusts? ({e})"
        ),
        other => other.to_string(),
    }
}

/// Why a certificate, key or CA file the gateway config names cannot be used; each names the
/// file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no usable private key: {reason}")]
    NoKey { path: String, reason: String },
    /// The certificates it holds cannot be used (the sentence names the file).
    #[error("{0}")]
    Certificates(PluginError),
}

fn read_text(path: &std::path::Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// A certificate chain (PEM, leaf first) and its private key (PEM) from files the gateway
/// config names: the host's own listener or client identity, never a plugin's.
pub(crate) fn chain_and_key_files(
    chain: &std::path::Path,
    key: &std::path::Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), FileError> {
    use rustls::pki_types::pem::PemObject;
    let text = read_text(chain)?;
    let chain: Vec<CertificateDer<'static>> =
        x509::parse_pem_certs(&text, &chain.display().to_string())
            .map_err(FileError::Certificates)?
            .into_iter()
            .map(CertificateDer::from)
            .collect();
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| FileError::NoKey {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok((chain, key))
}

/// Trust anchors from a CA file the gateway config names (PEM), or the system roots without one.
pub(crate) fn roots_from_file(
    ca_file: Option<&std::path::Path>,
) -> Result<RootCertStore, FileError> {
    let Some(path) = ca_file else {
        return roots_from(None).map_err(FileError::Certificates);
    };
    let pem = read_text(path)?;
    roots_from(Some((&pem, &path.display().to_string()))).map_err(FileError::Certificates)
}

/// Trust anchors: the CA certificates of a PEM text (with the name to quote in errors), or the
/// system roots.
pub(crate) fn roots_from(ca_pem: Option<(&str, &str)>) -> Result<RootCertStore, PluginError> {
    let mut roots = RootCertStore::empty();
    match ca_pem {
        Some((pem, file)) => {
            for der in x509::parse_pem_certs(pem, file)? {
                roots.add(CertificateDer::from(der)).map_err(|e| {
                    PluginError::new(
                        ErrorKind::InvalidInput,
                        format!("{file} holds a CA certificate rustls cannot use: {e}"),
                    )
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(tls_error(
                    "no system root certificates were found; set a CA file".into(),
                ));
            }
        }
    }
    Ok(roots)
}

/// Verifies the server certificate against a configured name instead of the host dialled.
#[derive(Debug)]
pub(crate) struct ServerNameOverride {
    pub(crate) inner: Arc<rustls::client::WebPkiServerVerifier>,
    pub(crate) name: ServerName<'static>,
}

impl ServerCertVerifier for ServerNameOverride {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The handshake signatures that prove a peer holds its certificate's key. Verifiers that leave
/// trust to someone else (`insecure_skip_verify` here, the sandbox's client-certificate verifier)
/// still check these.
#[derive(Debug)]
pub(crate) struct HandshakeSignatures(pub Arc<rustls::crypto::CryptoProvider>);

impl HandshakeSignatures {
    pub(crate) fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify(message, cert, dss)
    }

    pub(crate) fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        use rustls::SignatureScheme as S;
        // RFC 8446 4.2.3: PKCS#1 v1.5 and SHA-1 schemes are not for TLS 1.3 handshakes.
        if matches!(
            dss.scheme,
            S::RSA_PKCS1_SHA1
                | S::RSA_PKCS1_SHA256
                | S::RSA_PKCS1_SHA384
                | S::RSA_PKCS1_SHA512
                | S::ECDSA_SHA1_Legacy
        ) {
            return Err(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
        }
        self.verify(message, cert, dss)
    }

    pub(crate) fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }

    /// The signature checked against the certificate's public key, read by x509-parser rather
    /// than webpki: webpki refuses X.509 v1 certificates (what `openssl x509 -req` makes without
    /// `-extfile`), and whether a certificate is trusted is not this check's question.
    fn verify(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let bad = || rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding);
        let (_, parsed) =
            <x509_parser::prelude::X509Certificate as x509_parser::prelude::FromDer<_>>::from_der(
                cert,
            )
            .map_err(|_| bad())?;
        let spki = parsed.public_key();
        let algorithm_id = x509::spki_algorithm_contents(spki.raw).ok_or_else(bad)?;
        let public_key = &spki.subject_public_key.data;
        let candidates = self
            .0
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme)
            .map(|(_, algorithms)| *algorithms)
            .ok_or(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme)?;
        let mut matched = false;
        for algorithm in candidates {
            if algorithm.public_key_alg_id().as_ref() != algorithm_id {
                continue;
            }
            matched = true;
            if algorithm
                .verify_signature(public_key, message, dss.signature())
                .is_ok()
            {
                return Ok(HandshakeSignatureValid::assertion());
            }
        }
        Err(rustls::Error::InvalidCertificate(if matched {
            rustls::CertificateError::BadSignature
        } else {
            rustls::CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext {
                signature_algorithm_id: Vec::new(),
                public_key_algorithm_id: algorithm_id.to_vec(),
            }
        }))
    }
}

/// Why a certificate and a key cannot be presented together.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentityError {
    #[error("the file holds no certificate")]
    NoCertificate,
    #[error("TLS cannot use the key: {0}")]
    UnusableKey(rustls::Error),
    #[error("the first certificate is damaged: {0}")]
    DamagedLeaf(String),
    #[error("the key is not the certificate's (their public keys differ)")]
    KeyMismatch,
}

/// A certificate chain (leaf first) with its private key, ready to present in a handshake.
/// The key must be the leaf's (their SubjectPublicKeyInfos are compared); nothing else about
/// the certificate is judged here: whether it is trusted is the peer's decision. (rustls's own
/// constructors, `with_client_auth_cert` and `with_single_cert`, parse the leaf with webpki,
/// which refuses the X.509 v1 certificates the providers' OpenSSL commands make.)
pub(crate) fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<CertifiedKey>, IdentityError> {
    let leaf = chain.first().ok_or(IdentityError::NoCertificate)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(IdentityError::UnusableKey)?;
    let (_, parsed) =
        <x509_parser::prelude::X509Certificate as x509_parser::prelude::FromDer<_>>::from_der(leaf)
            .map_err(|e| IdentityError::DamagedLeaf(e.to_string()))?;
    if let Some(spki) = signing_key.public_key() {
        if spki.as_ref() != parsed.public_key().raw {
            return Err(IdentityError::KeyMismatch);
        }
    }
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

/// `insecure_skip_verify`: accepts any server certificate (signatures are still checked).
#[derive(Debug)]
pub(crate) struct NoVerification(pub(crate) HandshakeSignatures);

impl ServerCertVerifier for NoVerification {
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

/// How a TLS server judges client certificates. Either required and issued by a CA of the
/// configured file (directly or through intermediates the client sends) and valid now — the
/// embedded broker's `client_ca` — or asked for, not required, and only checked to be well
/// formed, trust being left to the service — the sandbox, as the real services answer an
/// untrusted certificate at the MQTT level. Either way the handshake proves the key. Chains
/// are read by x509-parser rather than webpki so that the X.509 v1 device certificates the
/// providers' OpenSSL commands make are accepted like v3 ones.
#[derive(Debug)]
pub(crate) struct ClientCertificates {
    /// `None`: any well-formed certificate, none required.
    issuers: Option<Issuers>,
    signatures: HandshakeSignatures,
}

#[derive(Debug)]
struct Issuers {
    cas: Vec<Vec<u8>>,
    ca_source: String,
    subjects: Vec<rustls::DistinguishedName>,
}

impl ClientCertificates {
    /// Any well-formed certificate (not required); the service decides whom it trusts.
    pub fn any(provider: Arc<rustls::crypto::CryptoProvider>) -> Self {
        ClientCertificates {
            issuers: None,
            signatures: HandshakeSignatures(provider),
        }
    }

    /// Required, and issued by a CA of a PEM file the gateway config names.
    pub(crate) fn issued_by_file(
        path: &std::path::Path,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, FileError> {
        let source = path.display().to_string();
        let pem = read_text(path)?;
        let cas = x509::parse_pem_certs(&pem, &source).map_err(FileError::Certificates)?;
        let subjects = cas
            .iter()
            .map(|der| rustls::DistinguishedName::from(x509::subject_der(der)))
            .collect();
        Ok(ClientCertificates {
            issuers: Some(Issuers {
                cas,
                ca_source: source,
                subjects,
            }),
            signatures: HandshakeSignatures(provider),
        })
    }
}

impl rustls::server::danger::ClientCertVerifier for ClientCertificates {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.issuers.as_ref().map_or(&[], |i| &i.subjects)
    }

    fn client_auth_mandatory(&self) -> bool {
        self.issuers.is_some()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let chain: Vec<Vec<u8>> = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.to_vec())
            .collect();
        for (i, der) in chain.iter().enumerate() {
            x509::check_der(der, "the client certificate chain", i)
                .map_err(|e| rustls::Error::General(e.message))?;
        }
        let Some(issuers) = &self.issuers else {
            return Ok(rustls::server::danger::ClientCertVerified::assertion());
        };
        x509::verify_chain(
            &chain,
            &issuers.cas,
            now.as_secs() as i64,
            "the client's certificate",
            &issuers.ca_source,
        )
        .map_err(|e| {
            tracing::info!("refused a client certificate: {}", e.message);
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        })?;
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}
