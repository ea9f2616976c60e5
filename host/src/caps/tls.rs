//! TLS client configuration shared by the network capabilities (`mqtt`, `http`): trust anchors
//! from a CA file or the system roots, a client certificate by key handle (the private key stays
//! in the host), a server-name override, ALPN. TLS 1.2 is the minimum (rustls offers 1.2 and
//! 1.3 only). Verification is on unless the gateway config (never a plugin) switches it off.

use super::certs::{x509, KeyHandle};
use super::CapContext;
use crate::model::{ErrorKind, PluginError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// What a plugin asks for.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file of CA certificates; `None` = the system roots.
    pub ca_file: Option<String>,
    /// Chain file (leaf first) and the key handle of the leaf's private key.
    pub client_certificate: Option<(String, KeyHandle)>,
    /// Name to verify the server certificate against, when it differs from the host dialled.
    pub server_name: Option<String>,
    pub alpn: Vec<String>,
}

fn tls_error(message: String) -> PluginError {
    PluginError::new(ErrorKind::Tls, message)
}

/// Build the rustls client configuration for a connection to `host`.
pub fn client_config(
    ctx: &CapContext,
    host: &str,
    options: &TlsOptions,
) -> Result<Arc<ClientConfig>, PluginError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(format!("TLS set-up failed: {e}")))?;

    let builder = if ctx.insecure_skip_verify {
        tracing::warn!(
            plugin = &*ctx.plugin,
            host,
            "TLS server certificate verification is OFF for this connection (insecure_skip_verify)"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(HandshakeSignatures(
                provider,
            ))))
    } else {
        let roots = Arc::new(root_store(ctx, options.ca_file.as_deref())?);
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| tls_error(format!("TLS set-up failed: {e}")))?;
        match &options.server_name {
            Some(name) => {
                let name = ServerName::try_from(name.clone()).map_err(|_| {
                    PluginError::new(
                        ErrorKind::InvalidInput,
                        format!("server name '{name}' is not a valid DNS name or IP address"),
                    )
                })?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ServerNameOverride {
                        inner: webpki,
                        name,
                    }))
            }
            None => builder.with_webpki_verifier(webpki),
        }
    };

    let mut config = match &options.client_certificate {
        None => builder.with_no_client_auth(),
        Some((chain_file, key)) => {
            let pem = ctx.read_text(chain_file)?;
            let chain: Vec<CertificateDer<'static>> = x509::parse_pem_certs(&pem, chain_file)?
                .into_iter()
                .map(CertificateDer::from)
                .collect();
            // An expired (or not yet valid) device certificate is said before connecting, not
            // discovered as an anonymous handshake failure.
            if let Some(leaf) = chain.first() {
                x509::check_validity(leaf, crate::caps::crypto::now_unix() as i64, chain_file)?;
            }
            builder
                .with_client_auth_cert(chain, key.key.tls_private_key())
                .map_err(|e| {
                    PluginError::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "client certificate {chain_file} cannot be used with key {}: {e}",
                            key.reference
                        ),
                    )
                })?
        }
    };
    config.alpn_protocols = options.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// The rustls error behind a network error, if any. `io::Error::source` skips the error it
/// wraps, so wrapped errors are looked into explicitly.
pub fn find_rustls_error<'a>(
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
pub fn describe(e: &rustls::Error) -> String {
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

fn root_store(ctx: &CapContext, ca_file: Option<&str>) -> Result<RootCertStore, PluginError> {
    match ca_file {
        Some(file) => roots_from(Some((&ctx.read_text(file)?, file))),
        None => roots_from(None),
    }
}

/// A certificate chain (PEM, leaf first) and its private key (PEM) from files the gateway
/// config names: the host's own listener or client identity, never a plugin's. Errors name the
/// file at fault.
pub fn chain_and_key_files(
    chain: &std::path::Path,
    key: &std::path::Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    use rustls::pki_types::pem::PemObject;
    let text = std::fs::read_to_string(chain)
        .map_err(|e| format!("cannot read {}: {e}", chain.display()))?;
    let chain: Vec<CertificateDer<'static>> =
        x509::parse_pem_certs(&text, &chain.display().to_string())
            .map_err(|e| e.message)?
            .into_iter()
            .map(CertificateDer::from)
            .collect();
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{} holds no usable private key: {e}", key.display()))?;
    Ok((chain, key))
}

/// Trust anchors from a CA file the gateway config names (PEM), or the system roots without one.
/// Errors name the file.
pub fn roots_from_file(ca_file: Option<&std::path::Path>) -> Result<RootCertStore, String> {
    let Some(path) = ca_file else {
        return roots_from(None).map_err(|e| e.message);
    };
    let name = path.display().to_string();
    let pem = std::fs::read_to_string(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    roots_from(Some((&pem, &name))).map_err(|e| e.message)
}

/// Trust anchors: the CA certificates of a PEM text (with the name to quote in errors), or the
/// system roots.
pub fn roots_from(ca_pem: Option<(&str, &str)>) -> Result<RootCertStore, PluginError> {
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
struct ServerNameOverride {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
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
pub struct HandshakeSignatures(pub Arc<rustls::crypto::CryptoProvider>);

impl HandshakeSignatures {
    pub fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    pub fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    pub fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `insecure_skip_verify`: accepts any server certificate (signatures are still checked).
#[derive(Debug)]
struct NoVerification(HandshakeSignatures);

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
