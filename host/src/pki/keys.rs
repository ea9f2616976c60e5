//! Private keys: generate (RSA 2048/3072/4096, EC P-256), parse PEM (PKCS#8, encrypted PKCS#8,
//! PKCS#1, SEC1), write as PKCS#8 with mode 0600. A [`PrivateKey`] never shows its bytes: its
//! `Debug` prints the algorithm only, and nothing returns the secret DER to a plugin.

use crate::model::{ErrorKind, PluginError};
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rcgen::{PublicKeyData, SigningKey};
use std::fmt;
use std::path::Path;
use zeroize::Zeroizing;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyAlgorithm {
    Rsa2048,
    Rsa3072,
    Rsa4096,
    P256,
}

impl KeyAlgorithm {
    pub fn parse(name: &str) -> Option<KeyAlgorithm> {
        Some(match name {
            "rsa2048" => KeyAlgorithm::Rsa2048,
            "rsa3072" => KeyAlgorithm::Rsa3072,
            "rsa4096" => KeyAlgorithm::Rsa4096,
            "p256" => KeyAlgorithm::P256,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::Rsa2048 => "rsa2048",
            KeyAlgorithm::Rsa3072 => "rsa3072",
            KeyAlgorithm::Rsa4096 => "rsa4096",
            KeyAlgorithm::P256 => "p256",
        }
    }

    /// The JWT `alg` this key signs with.
    pub(crate) fn jwt_alg(self) -> &'static str {
        match self {
            KeyAlgorithm::P256 => "ES256",
            _ => "RS256",
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A private key held by the host.
pub struct PrivateKey {
    algorithm: KeyAlgorithm,
    /// Signs certificates and CSRs (and RS256 JWTs).
    pair: rcgen::KeyPair,
    /// ES256 JWTs need the fixed-size (r||s) signature, not the ASN.1 one certificates use.
    jwt_ec: Option<EcdsaKeyPair>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({})", self.algorithm)
    }
}

impl PrivateKey {
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    pub fn pair(&self) -> &rcgen::KeyPair {
        &self.pair
    }

    pub fn public_key_pem(&self) -> String {
        self.pair.public_key_pem()
    }

    /// DER of the SubjectPublicKeyInfo, to compare with a certificate's.
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        self.pair.subject_public_key_info()
    }

    /// The key for the host's own TLS stack (client authentication). Host-internal: it is
    /// never handed to a plugin.
    pub(crate) fn tls_private_key(&self) -> rustls_pki_types::PrivateKeyDer<'static> {
        rustls_pki_types::PrivateKeyDer::try_from(self.pair.serialized_der().to_vec())
            .expect("a parsed key re-parses")
    }

    /// Sign `data` as a JWT signature: RS256 (PKCS#1 v1.5, SHA-256) or ES256 (fixed r||s).
    pub fn sign_jwt(&self, data: &[u8]) -> Result<Vec<u8>, PluginError> {
        let failed = |e: String| PluginError::new(ErrorKind::Io, format!("signing failed: {e}"));
        match &self.jwt_ec {
            Some(ec) => ec
                .sign(&aws_lc_rs::rand::SystemRandom::new(), data)
                .map(|s| s.as_ref().to_vec())
                .map_err(|e| failed(e.to_string())),
            None => self.pair.sign(data).map_err(|e| failed(e.to_string())),
        }
    }

    /// Generate a new key.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<PrivateKey, PluginError> {
        let failed = |e: rcgen::Error| {
            PluginError::new(ErrorKind::Io, format!("key generation failed: {e}"))
        };
        let pair = match algorithm {
            KeyAlgorithm::P256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            rsa => rcgen::KeyPair::generate_rsa_for(
                &rcgen::PKCS_RSA_SHA256,
                match rsa {
                    KeyAlgorithm::Rsa2048 => rcgen::RsaKeySize::_2048,
                    KeyAlgorithm::Rsa3072 => rcgen::RsaKeySize::_3072,
                    _ => rcgen::RsaKeySize::_4096,
                },
            ),
        }
        .map_err(failed)?;
        PrivateKey::from_pair(pair, "a generated key")
    }

    /// Parse a PEM private key. `source` names the file (or parameter) in errors.
    pub fn from_pem(
        pem_text: &str,
        passphrase: Option<&str>,
        source: &str,
    ) -> Result<PrivateKey, PluginError> {
        let invalid = |m: String| PluginError::new(ErrorKind::InvalidInput, m);
        let blocks = pem::parse_many(pem_text)
            .map_err(|e| invalid(format!("{source} is not valid PEM: {e}")))?;
        let Some(block) = blocks.iter().find(|b| b.tag() != "EC PARAMETERS") else {
            return Err(invalid(super::pem::no_pem_block(pem_text, source)));
        };
        let der: Zeroizing<Vec<u8>> = match block.tag() {
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => {
                Zeroizing::new(block.contents().to_vec())
            }
            "ENCRYPTED PRIVATE KEY" => {
                let Some(passphrase) = passphrase else {
                    return Err(invalid(format!(
                        "{source} is an encrypted private key and no passphrase was given"
                    )));
                };
                let encrypted = pkcs8::EncryptedPrivateKeyInfo::try_from(block.contents())
                    .map_err(|e| invalid(format!("{source} is not a valid encrypted key: {e}")))?;
                let doc = encrypted.decrypt(passphrase).map_err(|_| {
                    invalid(format!(
                        "{source} could not be decrypted: wrong passphrase (or an unsupported cipher)"
                    ))
                })?;
                Zeroizing::new(doc.as_bytes().to_vec())
            }
            "CERTIFICATE" | "TRUSTED CERTIFICATE" => {
                return Err(invalid(format!(
                    "{source} contains a certificate, not a private key"
                )))
            }
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => {
                return Err(invalid(format!(
                    "{source} contains a certificate request, not a private key"
                )))
            }
            "PUBLIC KEY" | "RSA PUBLIC KEY" => {
                return Err(invalid(format!(
                    "{source} contains a public key, not a private key"
                )))
            }
            other => {
                return Err(invalid(format!(
                    "{source} contains a '{other}' PEM block, not a private key"
                )))
            }
        };
        let key = rustls_pki_types::PrivateKeyDer::try_from(der.as_slice()).map_err(|_| {
            invalid(format!(
                "{source} holds a private key gatehost cannot parse"
            ))
        })?;
        let pair = rcgen::KeyPair::try_from(&key).map_err(|e| {
            invalid(format!(
                "{source} holds an unsupported or damaged private key (RSA and EC P-256 are supported): {e}"
            ))
        })?;
        PrivateKey::from_pair(pair, source)
    }

    fn from_pair(pair: rcgen::KeyPair, source: &str) -> Result<PrivateKey, PluginError> {
        let unsupported = |what: String| {
            PluginError::new(
                ErrorKind::InvalidInput,
                format!("{source} is {what}; gatehost supports RSA 2048/3072/4096 and EC P-256"),
            )
        };
        let algorithm = if pair.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256 {
            KeyAlgorithm::P256
        } else if pair.algorithm() == &rcgen::PKCS_RSA_SHA256 {
            match rsa_bits(&pair.subject_public_key_info()) {
                Some(2048) => KeyAlgorithm::Rsa2048,
                Some(3072) => KeyAlgorithm::Rsa3072,
                Some(4096) => KeyAlgorithm::Rsa4096,
                Some(bits) => return Err(unsupported(format!("an RSA {bits}-bit key"))),
                None => return Err(unsupported("an RSA key of unknown size".into())),
            }
        } else {
            return Err(unsupported("a key of another algorithm".into()));
        };
        let jwt_ec = match algorithm {
            KeyAlgorithm::P256 => Some(
                EcdsaKeyPair::from_private_key_der(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    pair.serialized_der(),
                )
                .map_err(|e| unsupported(format!("an EC key aws-lc rejects ({e})")))?,
            ),
            _ => None,
        };
        Ok(PrivateKey {
            algorithm,
            pair,
            jwt_ec,
        })
    }

    /// The key as PKCS#8 PEM (`BEGIN PRIVATE KEY`), for writing to the key file.
    fn pkcs8_pem(&self) -> Result<Zeroizing<String>, PluginError> {
        let der = self.pair.serialized_der();
        let pkcs8: Zeroizing<Vec<u8>> = match rustls_pki_types::PrivateKeyDer::try_from(der) {
            Ok(rustls_pki_types::PrivateKeyDer::Pkcs8(_)) => Zeroizing::new(der.to_vec()),
            _ => {
                return Err(PluginError::new(
                    ErrorKind::InvalidInput,
                    "only PKCS#8 keys can be written; this key was loaded in another format",
                ))
            }
        };
        Ok(Zeroizing::new(super::pem::pem_lf(&pem::Pem::new(
            "PRIVATE KEY",
            pkcs8.to_vec(),
        ))))
    }

    /// Write the key to a new file, readable by its owner only (mode 0600). Refuses to overwrite.
    pub fn write_new_file(&self, path: &Path) -> Result<(), PluginError> {
        use std::io::Write;
        let pem = self.pkcs8_pem()?;
        let io = |e: std::io::Error| {
            let kind = if e.kind() == std::io::ErrorKind::AlreadyExists {
                ErrorKind::InvalidInput
            } else {
                ErrorKind::Io
            };
            let what = if kind == ErrorKind::InvalidInput {
                "it already exists (a private key is never overwritten)".to_string()
            } else {
                e.to_string()
            };
            PluginError::new(
                kind,
                format!("cannot write key file {}: {what}", path.display()),
            )
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                // A folder made to hold a private key is private too.
                crate::private_files::create_dir(dir).map_err(io)?;
            }
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io)?;
        file.write_all(pem.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }
}

/// The modulus size of an RSA SubjectPublicKeyInfo.
fn rsa_bits(spki_der: &[u8]) -> Option<usize> {
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der).ok()?;
    match spki.parsed().ok()? {
        x509_parser::public_key::PublicKey::RSA(rsa) => Some(rsa.key_size()),
        _ => None,
    }
}

use x509_parser::prelude::FromDer;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_never_print_their_bytes() {
        for alg in [KeyAlgorithm::P256, KeyAlgorithm::Rsa2048] {
            let key = PrivateKey::generate(alg).unwrap();
            assert_eq!(key.algorithm(), alg);
            assert_eq!(format!("{key:?}"), format!("PrivateKey({alg})"));
            assert!(key
                .public_key_pem()
                .starts_with("-----BEGIN PUBLIC KEY-----"));
            let sig = key.sign_jwt(b"data").unwrap();
            assert_eq!(sig.len(), if alg == KeyAlgorithm::P256 { 64 } else { 256 });
        }
    }

    #[test]
    fn written_keys_are_pkcs8_mode_0600_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let key = PrivateKey::generate(KeyAlgorithm::P256).unwrap();
        key.write_new_file(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let again = PrivateKey::from_pem(&text, None, "k.key").unwrap();
        assert_eq!(again.public_key_spki_der(), key.public_key_spki_der());
        let e = key.write_new_file(&path).unwrap_err();
        assert!(e.message.contains("already exists"), "{e}");
    }

    #[test]
    fn wrong_pem_kinds_are_named() {
        let e = PrivateKey::from_pem(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            None,
            "c.pem",
        )
        .unwrap_err();
        assert_eq!(e.message, "c.pem contains a certificate, not a private key");
        let e = PrivateKey::from_pem("hello", None, "x.key").unwrap_err();
        assert_eq!(e.message, "x.key contains no PEM block");
        let e = PrivateKey::from_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            None,
            "t.key",
        )
        .unwrap_err();
        assert_eq!(e.message, "t.key holds a private key gatehost cannot parse");
    }
}
