//! TLS for plugins' connections (`mqtt`, `http`): the trust anchors, client certificate (by key
//! handle: the private key stays in the host), server-name override and ALPN a plugin asks for,
//! built into a rustls client configuration with [`crate::pki::tls`]. Verification is on unless
//! the gateway config (never a plugin) switches it off.

use super::certs::{x509, KeyHandle};
use super::CapContext;
use crate::model::{ErrorKind, PluginError};
use crate::pki::tls::{
    certified_key, roots_from, tls_error, HandshakeSignatures, NoVerification, ServerNameOverride,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, RootCertStore};
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

/// Build the rustls client configuration for a connection to `host`.
pub(crate) fn client_config(
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
                provider.clone(),
            ))))
    } else {
        let roots = Arc::new(root_store(ctx, options.ca_file.as_deref())?);
        let webpki =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
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
                x509::check_validity(leaf, crate::pki::crypto::now_unix() as i64, chain_file)?;
            }
            let identity =
                certified_key(chain, key.key.tls_private_key(), &provider).map_err(|why| {
                    PluginError::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "client certificate {chain_file} cannot be used with key {}: {why}",
                            key.reference
                        ),
                    )
                })?;
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity)))
        }
    };
    config.alpn_protocols = options.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

fn root_store(ctx: &CapContext, ca_file: Option<&str>) -> Result<RootCertStore, PluginError> {
    match ca_file {
        Some(file) => roots_from(Some((&ctx.read_text(file)?, file))),
        None => roots_from(None),
    }
}
