//! The sandbox PKI: a server CA and a server certificate for `localhost` and 127.0.0.1 that every
//! emulated service presents, plus tenant (group) CAs and device certificates for trying X.509
//! attestation. Everything is written to one directory clients can be pointed at; an existing
//! directory is reused, so the CA stays the same across restarts.

use super::SandboxError;
use crate::pki::keys::{KeyAlgorithm, PrivateKey};
use crate::pki::x509::{self, CertificateAuthority, Subject};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Validity of everything the sandbox issues.
const DAYS: u32 = 825;

#[derive(Debug, Clone)]
pub struct SandboxPki {
    pub dir: PathBuf,
}

impl SandboxPki {
    /// Create the server CA and certificate in `dir`, or reuse the ones already there.
    pub fn open(dir: &Path) -> Result<SandboxPki, SandboxError> {
        std::fs::create_dir_all(dir).map_err(|e| SandboxError::io(dir, e))?;
        let pki = SandboxPki {
            dir: dir.to_path_buf(),
        };
        if !pki.ca_file().exists() {
            pki.new_ca("server-ca", "gatehost sandbox server CA")?;
        }
        if !pki.dir.join("server.pem").exists() {
            pki.issue(
                "server-ca",
                "server",
                "localhost",
                &["localhost", "127.0.0.1"],
            )?;
        }
        Ok(pki)
    }

    /// The CA file clients verify the sandbox's servers with.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("server-ca.pem")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A new self-signed CA: `<name>.pem` and `<name>.key`. Reused when it exists.
    pub fn new_ca(&self, name: &str, common_name: &str) -> Result<PathBuf, SandboxError> {
        let cert = self.path(&format!("{name}.pem"));
        if cert.exists() {
            return Ok(cert);
        }
        let key = PrivateKey::generate(KeyAlgorithm::P256)?;
        let subject = Subject::parse(&format!("/O=gatehost sandbox/CN={common_name}"))?;
        let pem = x509::self_signed_ca(&key, &subject, DAYS)?;
        key.write_new_file(&self.path(&format!("{name}.key")))?;
        write(&cert, &pem)?;
        Ok(cert)
    }

    /// A certificate for `common_name` issued by the CA `ca`: `<name>.key`, `<name>.pem` and
    /// `<name>_chain.pem` (leaf, then CA). Reused when it exists.
    pub fn issue(
        &self,
        ca: &str,
        name: &str,
        common_name: &str,
        dns_names: &[&str],
    ) -> Result<PathBuf, SandboxError> {
        let cert_path = self.path(&format!("{name}.pem"));
        if cert_path.exists() {
            return Ok(cert_path);
        }
        let ca_pem = read(&self.path(&format!("{ca}.pem")))?;
        let ca_key_path = self.path(&format!("{ca}.key"));
        let ca_key = PrivateKey::from_pem(
            &read(&ca_key_path)?,
            None,
            &ca_key_path.display().to_string(),
        )?;
        let authority =
            CertificateAuthority::new(&ca_pem, &ca_key, "sandbox CA", "sandbox CA key")?;
        let key = PrivateKey::generate(KeyAlgorithm::P256)?;
        let subject = Subject::parse(&format!("/O=gatehost sandbox/CN={common_name}"))?;
        let names: Vec<String> = dns_names.iter().map(|s| s.to_string()).collect();
        let csr = x509::create_csr(&key, &subject, &names)?;
        let cert = authority.issue(&csr, DAYS, "sandbox CSR")?;
        key.write_new_file(&self.path(&format!("{name}.key")))?;
        write(&cert_path, &cert)?;
        write(
            &self.path(&format!("{name}_chain.pem")),
            &format!("{cert}{ca_pem}"),
        )?;
        Ok(cert_path)
    }

    /// The rustls configuration every sandbox server uses: the server certificate, and client
    /// certificates requested but not required (services check them against their own CAs).
    pub(crate) fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, SandboxError> {
        let chain_path = self.path("server_chain.pem");
        let chain = x509::parse_pem_certs(&read(&chain_path)?, &chain_path.display().to_string())?
            .into_iter()
            .map(rustls::pki_types::CertificateDer::from)
            .collect();
        let key_path = self.path("server.key");
        let key_pem = read(&key_path)?;
        let der = pem::parse(&key_pem)
            .map_err(|e| SandboxError::Pki(format!("{}: {e}", key_path.display())))?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(der.into_contents().into());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| SandboxError::Pki(e.to_string()))?
            .with_client_cert_verifier(Arc::new(crate::pki::tls::ClientCertificates::any(provider)))
            .with_single_cert(chain, key)
            .map_err(|e| SandboxError::Pki(format!("server certificate: {e}")))?;
        Ok(Arc::new(config))
    }
}

fn read(path: &Path) -> Result<String, SandboxError> {
    std::fs::read_to_string(path).map_err(|e| SandboxError::io(path, e))
}

fn write(path: &Path, text: &str) -> Result<(), SandboxError> {
    std::fs::write(path, text).map_err(|e| SandboxError::io(path, e))
}
