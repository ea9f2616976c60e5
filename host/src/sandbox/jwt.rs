//! Reading a JWT that carries its signer's certificate: the compact form split and decoded, the
//! `x5c` header's certificates checked for shape, and the RS256 signature verified against the
//! first (leaf) certificate's key. What the claims must say is the caller's business.

use crate::pki::crypto;
use serde_json::{Map, Value};

/// A token whose signature verified against `x5c[0]`.
#[derive(Debug)]
pub(crate) struct SignedByLeaf {
    /// The `x5c` certificates (DER), leaf first.
    pub x5c: Vec<Vec<u8>>,
    pub claims: Map<String, Value>,
}

/// Decode `token` and verify it is RS256-signed by the key of its own `x5c` leaf. The error is
/// one sentence for the service's log; it never repeats the token.
pub(crate) fn verify_rs256_x5c(token: &str) -> Result<SignedByLeaf, String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err(format!(
            "the password is not a compact JWT (it has {} dot-separated parts, not 3)",
            parts.len()
        ));
    };
    let header = json_object(header, "header")?;
    match header.get("alg").and_then(Value::as_str) {
        Some("RS256") => {}
        Some(other) => return Err(format!("the JWT is signed {other}; only RS256 is accepted")),
        None => return Err("the JWT header has no alg".into()),
    }
    if let Some(typ) = header.get("typ") {
        if typ.as_str() != Some("JWT") {
            return Err(format!("the JWT header typ is {typ}, not \"JWT\""));
        }
    }
    let x5c = header
        .get("x5c")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or("the JWT header has no x5c certificate chain")?;
    let mut ders = Vec::with_capacity(x5c.len());
    for (i, entry) in x5c.iter().enumerate() {
        let der = entry
            .as_str()
            .and_then(|b64| crypto::base64_decode(b64).ok())
            .ok_or_else(|| format!("x5c[{i}] is not a base64 string"))?;
        crate::pki::x509::check_der(&der, "the JWT's x5c", i).map_err(|e| e.message)?;
        ders.push(der);
    }
    let signature = crypto::base64url_decode(signature)
        .map_err(|_| "the JWT signature is not base64url".to_string())?;
    let public_key = rsa_public_key(&ders[0])?;
    let signing_input = &token[..token.len() - parts[2].len() - 1];
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        &public_key,
    )
    .verify(signing_input.as_bytes(), &signature)
    .map_err(|_| {
        "the JWT signature does not verify against the x5c leaf certificate".to_string()
    })?;
    Ok(SignedByLeaf {
        x5c: ders,
        claims: json_object(claims, "claims")?,
    })
}

fn json_object(part: &str, what: &str) -> Result<Map<String, Value>, String> {
    let bytes =
        crypto::base64url_decode(part).map_err(|_| format!("the JWT {what} is not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(format!("the JWT {what} is not a JSON object")),
    }
}

/// The RSA public key (PKCS#1 DER) of a certificate, or why there is none.
fn rsa_public_key(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    use x509_parser::public_key::PublicKey;
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| format!("the x5c leaf is damaged: {e}"))?;
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(PublicKey::RSA(_)) => Ok(spki.subject_public_key.data.to_vec()),
        Ok(_) => Err("the x5c leaf certificate has no RSA key, so it cannot sign RS256".into()),
        Err(e) => Err(format!("the x5c leaf's public key is damaged: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::keys::{KeyAlgorithm, PrivateKey};
    use crate::pki::x509::{self, Subject};

    fn self_signed(key: &PrivateKey) -> String {
        let subject = Subject::parse("/CN=acme_agent1").unwrap();
        x509::self_signed_ca(key, &subject, 1).unwrap()
    }

    #[test]
    fn rs256_tokens_verify_against_their_leaf_and_nothing_else() {
        let key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
        let cert = self_signed(&key);
        let token =
            crate::pki::jwt::jwt_sign(&key, "", r#"{"sub":"x"}"#, Some((&cert, "cert")), None)
                .unwrap();
        let verified = verify_rs256_x5c(&token).unwrap();
        assert_eq!(verified.claims["sub"], "x");
        assert_eq!(verified.x5c.len(), 1);

        // Claims changed after signing.
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[1] = crypto::base64url_encode(br#"{"sub":"y"}"#);
        assert_eq!(
            verify_rs256_x5c(&parts.join(".")).unwrap_err(),
            "the JWT signature does not verify against the x5c leaf certificate"
        );
        // Signed by another key than the leaf's.
        let other = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
        let forged =
            crate::pki::jwt::jwt_sign(&other, "", r#"{"sub":"x"}"#, Some((&cert, "cert")), None)
                .unwrap();
        assert!(verify_rs256_x5c(&forged).is_err());
        // ES256 is not what the broker takes.
        let ec = PrivateKey::generate(KeyAlgorithm::P256).unwrap();
        let es = crate::pki::jwt::jwt_sign(&ec, "", "{}", Some((&self_signed(&ec), "cert")), None)
            .unwrap();
        assert_eq!(
            verify_rs256_x5c(&es).unwrap_err(),
            "the JWT is signed ES256; only RS256 is accepted"
        );
        // No x5c, garbage, damaged certificates.
        let bare = crate::pki::jwt::jwt_sign(&key, "", "{}", None, None).unwrap();
        assert_eq!(
            verify_rs256_x5c(&bare).unwrap_err(),
            "the JWT header has no x5c certificate chain"
        );
        assert!(verify_rs256_x5c("not-a-jwt").is_err());
        assert!(verify_rs256_x5c("a.b.c").is_err());
        let damaged =
            crate::pki::jwt::jwt_sign(&key, r#"{"x5c":["AAAA"]}"#, "{}", None, None).unwrap();
        assert!(verify_rs256_x5c(&damaged)
            .unwrap_err()
            .starts_with("the JWT's x5c: certificate 1"));
    }
}
