//! X.509: read certificates (subject, issuer, serial, validity, thumbprints, DER for `x5c`),
//! check validity and chains, and issue them (CSRs, leaf certificates from CSRs, self-signed
//! CAs, DPS verification certificates, chain files), compatible with the OpenSSL commands the
//! providers document.

use super::keys::{KeyAlgorithm, PrivateKey};
use super::pem::{no_pem_block, pem_lf};
use crate::model::{ErrorKind, PluginError};
use crate::pki::crypto::base64_encode;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyUsagePurpose,
    SerialNumber,
};
use serde::Serialize;
use sha2::Digest;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Subject fields, as in `/C=DE/ST=Munich/O=Acme/OU=IT/CN=dev01`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Subject {
    pub country: Option<String>,
    pub state: Option<String>,
    pub locality: Option<String>,
    pub organization: Option<String>,
    pub organizational_unit: Option<String>,
    pub common_name: String,
}

impl Subject {
    /// Parse OpenSSL's `-subj` form. Unknown fields and a missing CN are errors.
    pub fn parse(text: &str) -> Result<Subject, PluginError> {
        let invalid = |m: String| PluginError::new(ErrorKind::InvalidInput, m);
        let mut subject = Subject::default();
        let mut cn = None;
        for part in text.split('/').filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| invalid(format!("subject part '{part}' must be KEY=value")))?;
            let value = Some(value.to_string());
            match key {
                "C" => subject.country = value,
                "ST" => subject.state = value,
                "L" => subject.locality = value,
                "O" => subject.organization = value,
                "OU" => subject.organizational_unit = value,
                "CN" => cn = value,
                other => {
                    return Err(invalid(format!(
                        "subject field '{other}' is not supported (use C, ST, L, O, OU, CN)"
                    )))
                }
            }
        }
        subject.common_name = cn
            .filter(|c| !c.is_empty())
            .ok_or_else(|| invalid(format!("subject '{text}' has no CN=")))?;
        Ok(subject)
    }

    fn to_dn(&self) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        let fields = [
            (DnType::CountryName, &self.country),
            (DnType::StateOrProvinceName, &self.state),
            (DnType::LocalityName, &self.locality),
            (DnType::OrganizationName, &self.organization),
            (DnType::OrganizationalUnitName, &self.organizational_unit),
        ];
        for (ty, value) in fields {
            if let Some(v) = value {
                dn.push(ty, v.as_str());
            }
        }
        dn.push(DnType::CommonName, self.common_name.as_str());
        dn
    }
}

/// What `certs show` and `certs.read-chain` report about one certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateInfo {
    pub subject: String,
    pub subject_cn: String,
    pub issuer: String,
    pub issuer_cn: String,
    pub serial_hex: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    /// Uppercase hex, as the Azure portal shows them.
    pub sha1_thumbprint: String,
    pub sha256_thumbprint: String,
    /// The DER, base64: what goes into a JWT `x5c` header.
    pub der_base64: String,
}

fn invalid(message: String) -> PluginError {
    PluginError::new(ErrorKind::InvalidInput, message)
}

/// The certificates of a PEM text, as DER, leaf first. `source` names the file in errors.
pub fn parse_pem_certs(pem_text: &str, source: &str) -> Result<Vec<Vec<u8>>, PluginError> {
    let blocks = pem::parse_many(pem_text)
        .map_err(|e| invalid(format!("{source} is not valid PEM: {e}")))?;
    let ders: Vec<Vec<u8>> = blocks
        .iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.contents().to_vec())
        .collect();
    if ders.is_empty() {
        let what = match blocks.first().map(|b| b.tag()) {
            Some(t) if t.contains("PRIVATE KEY") => "a private key, not a certificate".to_string(),
            Some(t) if t.contains("REQUEST") => "a certificate request, not a certificate".into(),
            Some(t) => format!("a '{t}' PEM block, not a certificate"),
            None => return Err(invalid(no_pem_block(pem_text, source))),
        };
        return Err(invalid(format!("{source} contains {what}")));
    }
    for (i, der) in ders.iter().enumerate() {
        parse(der, source, i)?;
    }
    Ok(ders)
}

/// Check that `der` is one whole, well-formed certificate (`index` counts from 0 in `source`).
pub(crate) fn check_der(der: &[u8], source: &str, index: usize) -> Result<(), PluginError> {
    parse(der, source, index).map(|_| ())
}

fn parse<'a>(
    der: &'a [u8],
    source: &str,
    index: usize,
) -> Result<X509Certificate<'a>, PluginError> {
    match X509Certificate::from_der(der) {
        Ok((&[], cert)) => Ok(cert),
        Ok(_) => Err(invalid(format!(
            "{source}: certificate {} has trailing bytes",
            index + 1
        ))),
        Err(e) => Err(invalid(format!(
            "{source}: certificate {} is damaged: {e}",
            index + 1
        ))),
    }
}

fn parsed(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der)
        .expect("only DER checked by parse_pem_certs or check_der reaches here")
        .1
}

fn common_name(name: &x509_parser::x509::X509Name<'_>) -> String {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string()
}

pub fn info(der: &[u8]) -> CertificateInfo {
    let cert = parsed(der);
    CertificateInfo {
        subject: cert.subject().to_string(),
        subject_cn: common_name(cert.subject()),
        issuer: cert.issuer().to_string(),
        issuer_cn: common_name(cert.issuer()),
        serial_hex: cert.raw_serial_as_string().replace(':', "").to_uppercase(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        is_ca: cert.is_ca(),
        sha1_thumbprint: hex::encode_upper(sha1::Sha1::digest(der)),
        sha256_thumbprint: hex::encode_upper(sha2::Sha256::digest(der)),
        der_base64: base64_encode(der),
    }
}

pub(crate) fn format_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// The certificate must be valid at `now` (unix seconds).
pub fn check_validity(der: &[u8], now: i64, source: &str) -> Result<(), PluginError> {
    let i = info(der);
    if now > i.not_after {
        return Err(invalid(format!(
            "certificate '{}' in {source} expired on {}",
            i.subject_cn,
            format_time(i.not_after)
        )));
    }
    if now < i.not_before {
        return Err(invalid(format!(
            "certificate '{}' in {source} is not valid before {}",
            i.subject_cn,
            format_time(i.not_before)
        )));
    }
    Ok(())
}

/// The contents of a SubjectPublicKeyInfo's AlgorithmIdentifier (its OID and parameters without
/// the SEQUENCE header): what `SignatureVerificationAlgorithm::public_key_alg_id` names.
pub(crate) fn spki_algorithm_contents(spki_der: &[u8]) -> Option<&[u8]> {
    /// One DER element at the start of `der`: (tag, contents, the rest).
    fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = der.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    let (0x30, spki, _) = element(spki_der)? else {
        return None;
    };
    match element(spki)? {
        (0x30, algorithm, _) => Some(algorithm),
        _ => None,
    }
}

/// The DER of a certificate's subject name (what a TLS server lists as acceptable CAs).
pub(crate) fn subject_der(cert_der: &[u8]) -> Vec<u8> {
    parsed(cert_der).subject().as_raw().to_vec()
}

/// Whether `key` is the private key of the certificate.
pub fn key_matches(key: &PrivateKey, cert_der: &[u8]) -> bool {
    parsed(cert_der).public_key().raw == key.public_key_spki_der().as_slice()
}

/// Whether `issuer` signed `cert` (names match and the signature verifies).
fn issued_by(cert: &[u8], issuer: &[u8]) -> bool {
    let (cert, issuer) = (parsed(cert), parsed(issuer));
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// Verify that the chain (leaf first, then intermediates) leads to one of the CA certificates,
/// and that every certificate on the way is valid at `now`.
pub fn verify_chain(
    chain: &[Vec<u8>],
    cas: &[Vec<u8>],
    now: i64,
    chain_source: &str,
    ca_source: &str,
) -> Result<(), PluginError> {
    let mut current = chain
        .first()
        .ok_or_else(|| invalid(format!("{chain_source} is empty")))?;
    for _ in 0..=chain.len() {
        check_validity(current, now, chain_source)?;
        if let Some(ca) = cas.iter().find(|ca| issued_by(current, ca)) {
            return check_validity(ca, now, ca_source);
        }
        match chain[1..]
            .iter()
            .find(|c| parsed(c).is_ca() && issued_by(current, c))
        {
            Some(intermediate) => current = intermediate,
            None => break,
        }
    }
    Err(PluginError::new(
        ErrorKind::Tls,
        format!(
            "certificate '{}' in {chain_source} is not issued by a CA in {ca_source}",
            info(current).subject_cn
        ),
    ))
}

fn validity_days(days: u32) -> Result<(time::OffsetDateTime, time::OffsetDateTime), PluginError> {
    if !(1..=36_500).contains(&days) {
        return Err(invalid(format!(
            "validity of {days} days is out of range (1 to 36500)"
        )));
    }
    let now = time::OffsetDateTime::now_utc();
    // A minute of slack for gateways whose clock runs slightly behind the issuer's.
    Ok((
        now - time::Duration::minutes(1),
        now + time::Duration::days(days as i64),
    ))
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system RNG works");
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and 16 bytes long
    SerialNumber::from_slice(&bytes)
}

fn rcgen_err(what: &str) -> impl Fn(rcgen::Error) -> PluginError + '_ {
    move |e| invalid(format!("{what}: {e}"))
}

/// A PEM certificate signing request for `key`.
pub fn create_csr(
    key: &PrivateKey,
    subject: &Subject,
    dns_names: &[String],
) -> Result<String, PluginError> {
    let mut params =
        CertificateParams::new(dns_names.to_vec()).map_err(rcgen_err("invalid DNS name"))?;
    params.distinguished_name = subject.to_dn();
    params
        .serialize_request(key.pair())
        .and_then(|csr| csr.pem())
        .map_err(rcgen_err("cannot create the CSR"))
}

/// A self-signed CA certificate for `key`.
pub fn self_signed_ca(
    key: &PrivateKey,
    subject: &Subject,
    days: u32,
) -> Result<String, PluginError> {
    let (not_before, not_after) = validity_days(days)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject.to_dn();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    params
        .self_signed(key.pair())
        .map(|c| c.pem())
        .map_err(rcgen_err("cannot create the CA certificate"))
}

/// A CA certificate and its key, checked to belong together and to be a usable CA now.
pub struct CertificateAuthority<'a> {
    pub cert_der: Vec<u8>,
    pub key: &'a PrivateKey,
}

impl<'a> CertificateAuthority<'a> {
    pub fn new(
        ca_pem: &str,
        key: &'a PrivateKey,
        ca_source: &str,
        key_source: &str,
    ) -> Result<Self, PluginError> {
        let cert_der = parse_pem_certs(ca_pem, ca_source)?.swap_remove(0);
        if !key_matches(key, &cert_der) {
            return Err(invalid(format!(
                "the CA key {key_source} does not match the CA certificate {ca_source}"
            )));
        }
        if !parsed(&cert_der).is_ca() {
            return Err(invalid(format!(
                "{ca_source} is not a CA certificate (basicConstraints CA:TRUE is missing)"
            )));
        }
        check_validity(&cert_der, crate::pki::crypto::now_unix() as i64, ca_source)?;
        Ok(CertificateAuthority { cert_der, key })
    }

    fn issuer(&self) -> Result<Issuer<'static, &'a rcgen::KeyPair>, PluginError> {
        let der = rustls_pki_types::CertificateDer::from(self.cert_der.clone());
        Issuer::from_ca_cert_der(&der, self.key.pair()).map_err(rcgen_err("cannot use the CA"))
    }

    /// Issue a leaf certificate for a CSR (its subject and SANs), valid for `days`.
    pub fn issue(&self, csr_pem: &str, days: u32, csr_source: &str) -> Result<String, PluginError> {
        let block = pem::parse_many(csr_pem)
            .map_err(|e| invalid(format!("{csr_source} is not valid PEM: {e}")))?
            .into_iter()
            .find(|b| b.tag().ends_with("CERTIFICATE REQUEST"))
            .ok_or_else(|| invalid(format!("{csr_source} contains no CERTIFICATE REQUEST")))?;
        let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(
            block.contents(),
        )
        .map_err(|e| invalid(format!("{csr_source} is a damaged CSR: {e}")))?;
        csr.verify_signature()
            .map_err(|_| invalid(format!("{csr_source} has an invalid signature")))?;
        let der = rustls_pki_types::CertificateSigningRequestDer::from(block.contents());
        let mut request = rcgen::CertificateSigningRequestParams::from_der(&der)
            .map_err(rcgen_err("cannot read the CSR"))?;
        let (not_before, not_after) = validity_days(days)?;
        request.params.not_before = not_before;
        request.params.not_after = not_after;
        request.params.serial_number = Some(random_serial());
        request.params.is_ca = IsCa::ExplicitNoCa;
        request.params.use_authority_key_identifier_extension = true;
        request
            .signed_by(&self.issuer()?)
            .map(|c| c.pem())
            .map_err(rcgen_err("cannot issue the certificate"))
    }

    /// The DPS proof-of-possession certificate: CN = the verification code, signed by this CA.
    pub(crate) fn verification_certificate(&self, nonce: &str) -> Result<String, PluginError> {
        if nonce.is_empty() || nonce.len() > 64 {
            return Err(invalid(format!(
                "the verification code must be 1 to 64 characters, got {}",
                nonce.len()
            )));
        }
        let algorithm = match self.key.algorithm() {
            KeyAlgorithm::P256 => KeyAlgorithm::P256,
            _ => KeyAlgorithm::Rsa2048,
        };
        let key = PrivateKey::generate(algorithm)?;
        let (not_before, not_after) = validity_days(30)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = Subject {
            common_name: nonce.to_string(),
            ..Subject::default()
        }
        .to_dn();
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        params
            .signed_by(key.pair(), &self.issuer()?)
            .map(|c| c.pem())
            .map_err(rcgen_err("cannot issue the verification certificate"))
    }
}

/// A chain file: the leaf followed by the CA certificate(s), after checking the CA signed it.
pub(crate) fn chain_pem(
    leaf_pem: &str,
    ca_pem: &str,
    leaf_source: &str,
    ca_source: &str,
) -> Result<String, PluginError> {
    let leaf = parse_pem_certs(leaf_pem, leaf_source)?.swap_remove(0);
    let cas = parse_pem_certs(ca_pem, ca_source)?;
    if !cas.iter().any(|ca| issued_by(&leaf, ca)) {
        return Err(PluginError::new(
            ErrorKind::InvalidInput,
            format!(
                "certificate '{}' in {leaf_source} is not issued by the CA in {ca_source}",
                info(&leaf).subject_cn
            ),
        ));
    }
    Ok(std::iter::once(&leaf)
        .chain(cas.iter())
        .map(|der| pem_lf(&pem::Pem::new("CERTIFICATE", der.clone())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_parse_like_openssl() {
        let s = Subject::parse("/C=DE/ST=Munich/O=Acme/OU=IT/CN=dev01").unwrap();
        assert_eq!(s.common_name, "dev01");
        assert_eq!(s.country.as_deref(), Some("DE"));
        assert_eq!(
            Subject::parse("/C=DE/O=Acme").unwrap_err().message,
            "subject '/C=DE/O=Acme' has no CN="
        );
        assert!(Subject::parse("/X=1/CN=a")
            .unwrap_err()
            .message
            .contains("'X'"));
    }

    #[test]
    fn a_ca_issues_leaves_that_verify_and_others_do_not() {
        let ca_key = PrivateKey::generate(KeyAlgorithm::P256).unwrap();
        let ca_pem = self_signed_ca(&ca_key, &Subject::parse("/CN=Test CA").unwrap(), 10).unwrap();
        let ca = CertificateAuthority::new(&ca_pem, &ca_key, "ca.pem", "ca.key").unwrap();
        let leaf_key = PrivateKey::generate(KeyAlgorithm::P256).unwrap();
        let csr = create_csr(&leaf_key, &Subject::parse("/O=Acme/CN=dev01").unwrap(), &[]).unwrap();
        let leaf_pem = ca.issue(&csr, 5, "dev.csr").unwrap();
        let leaf = parse_pem_certs(&leaf_pem, "dev.pem").unwrap();
        let cas = parse_pem_certs(&ca_pem, "ca.pem").unwrap();
        let now = crate::pki::crypto::now_unix() as i64;
        verify_chain(&leaf, &cas, now, "dev.pem", "ca.pem").unwrap();
        assert!(key_matches(&leaf_key, &leaf[0]));
        assert!(!key_matches(&ca_key, &leaf[0]));
        let i = info(&leaf[0]);
        assert_eq!(
            (i.subject_cn.as_str(), i.issuer_cn.as_str()),
            ("dev01", "Test CA")
        );
        assert_eq!(i.sha256_thumbprint.len(), 64);

        let e = check_validity(&leaf[0], now + 6 * 86_400, "dev.pem").unwrap_err();
        assert!(
            e.message
                .starts_with("certificate 'dev01' in dev.pem expired on "),
            "{e}"
        );

        let other_key = PrivateKey::generate(KeyAlgorithm::P256).unwrap();
        let other = self_signed_ca(&other_key, &Subject::parse("/CN=Other").unwrap(), 10).unwrap();
        let others = parse_pem_certs(&other, "other.pem").unwrap();
        let e = verify_chain(&leaf, &others, now, "dev.pem", "other.pem").unwrap_err();
        assert_eq!(
            e.message,
            "certificate 'dev01' in dev.pem is not issued by a CA in other.pem"
        );
        let e = CertificateAuthority::new(&ca_pem, &other_key, "ca.pem", "other.key")
            .err()
            .unwrap();
        assert_eq!(
            e.message,
            "the CA key other.key does not match the CA certificate ca.pem"
        );
    }
}
