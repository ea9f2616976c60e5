//! Credential checks shared by the emulated services: Azure SAS tokens (signature, expiry,
//! resource, key name) and client certificate chains (to a configured CA, valid now).

use crate::pki::crypto;
use crate::pki::x509;

/// The fields of `SharedAccessSignature sr=..&sig=..&se=..[&skn=..]`, in any order.
#[derive(Debug, Default)]
struct SasFields {
    sr: Option<String>,
    sig: Option<String>,
    se: Option<String>,
    skn: Option<String>,
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// Check a SAS token against the resource it must be for, the key it must be signed with and
/// the key name (`skn`) it may carry, at `now`. The error says what is wrong, for the service's
/// log (never the token itself). Returns the token's expiry (unix seconds).
pub(crate) fn verify_sas(
    token: &str,
    resource: &str,
    key_base64: &str,
    key_name: Option<&str>,
    now: u64,
) -> Result<u64, String> {
    let fields = token
        .strip_prefix("SharedAccessSignature ")
        .ok_or("the password is not a SharedAccessSignature token")?;
    let mut f = SasFields::default();
    for part in fields.split('&') {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("SAS field '{part}' has no '='"))?;
        let slot = match name {
            "sr" => &mut f.sr,
            "sig" => &mut f.sig,
            "se" => &mut f.se,
            "skn" => &mut f.skn,
            other => return Err(format!("unknown SAS field '{other}'")),
        };
        if slot.is_some() {
            return Err(format!("SAS field '{name}' appears twice"));
        }
        *slot = Some(value.to_string());
    }
    // The client signed `sr` exactly as it wrote it (already percent-encoded).
    let signed_sr = f.sr.ok_or("the SAS token has no sr (resource)")?;
    let sr = decode(&signed_sr);
    let sig = decode(&f.sig.ok_or("the SAS token has no sig (signature)")?);
    let se = f.se.ok_or("the SAS token has no se (expiry)")?;
    let skn = f.skn.map(|k| decode(&k));
    let expiry: u64 = se
        .parse()
        .map_err(|_| format!("SAS expiry '{se}' is not a number"))?;
    if !sr.eq_ignore_ascii_case(resource) {
        return Err(format!(
            "the SAS token is for resource '{sr}', not '{resource}'"
        ));
    }
    // DPS tokens may name the `registration` key or name none: the official Python SDK sends
    // none, and the service accepts it. A device token for IoT Hub names none.
    match (skn.as_deref(), key_name) {
        (None, _) => {}
        (Some(got), Some(name)) if got == name => {}
        (Some(got), Some(name)) => {
            return Err(format!(
                "the SAS token names the key '{got}' (skn); only '{name}' is accepted"
            ))
        }
        (Some(got), None) => {
            return Err(format!(
                "a device SAS token names no key, this one names '{got}' (skn)"
            ))
        }
    }
    if expiry <= now {
        return Err(format!("the SAS token expired {} s ago", now - expiry));
    }
    let key = crypto::base64_decode(key_base64).map_err(|e| e.message)?;
    if crypto::sas_signature(&signed_sr, &key, expiry) != sig {
        return Err("the SAS signature does not match the enrolled key".to_string());
    }
    Ok(expiry)
}

/// Check that `chain` (DER, leaf first, as presented in the TLS handshake) leads to one of the
/// `cas` (DER, read once when the sandbox starts) and is valid at `now`; the leaf's Common Name.
pub fn verify_chain(chain: &[Vec<u8>], cas: &[Vec<u8>], now: i64) -> Result<String, String> {
    let leaf = chain.first().ok_or("no client certificate was presented")?;
    x509::verify_chain(
        chain,
        cas,
        now,
        "the client certificate chain",
        "the enrollment's CAs",
    )
    .map_err(|e| e.message)?;
    Ok(x509::info(leaf).subject_cn)
}

/// The SHA-256 thumbprint (upper-case hex) of a DER certificate.
pub fn thumbprint(der: &[u8]) -> String {
    x509::info(der).sha256_thumbprint
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2FuZGJveCBrZXkgZm9yIHRlc3Rz";

    #[test]
    fn sas_tokens_are_checked_field_by_field() {
        let resource = "0ne00SANDBOX/registrations/dev01";
        let good = crypto::sas_token(resource, KEY, Some("registration"), 2000).unwrap();
        assert_eq!(
            verify_sas(&good, resource, KEY, Some("registration"), 1000),
            Ok(2000)
        );
        assert_eq!(
            verify_sas(&good, resource, KEY, Some("registration"), 2000),
            Err("the SAS token expired 0 s ago".into())
        );
        assert_eq!(
            verify_sas(&good, "0ne00SANDBOX/registrations/dev02", KEY, Some("registration"), 1000),
            Err("the SAS token is for resource '0ne00SANDBOX/registrations/dev01', not '0ne00SANDBOX/registrations/dev02'".into())
        );
        assert_eq!(
            verify_sas(&good, resource, KEY, None, 1000),
            Err("a device SAS token names no key, this one names 'registration' (skn)".into())
        );
        let unnamed = crypto::sas_token(resource, KEY, None, 2000).unwrap();
        assert_eq!(
            verify_sas(&unnamed, resource, KEY, Some("registration"), 1000),
            Ok(2000)
        );
        let other = crypto::sas_token(resource, KEY, Some("iothubowner"), 2000).unwrap();
        assert_eq!(
            verify_sas(&other, resource, KEY, Some("registration"), 1000),
            Err(
                "the SAS token names the key 'iothubowner' (skn); only 'registration' is accepted"
                    .into()
            )
        );
        let other_key = crypto::base64_encode(b"another key");
        assert_eq!(
            verify_sas(&good, resource, &other_key, Some("registration"), 1000),
            Err("the SAS signature does not match the enrolled key".into())
        );
        assert!(verify_sas("password", resource, KEY, None, 0).is_err());
        assert!(verify_sas("SharedAccessSignature sr", resource, KEY, None, 0).is_err());
        assert!(verify_sas("SharedAccessSignature sr=a&sr=b", resource, KEY, None, 0).is_err());
        // Field order does not matter.
        let reordered = {
            let body = good.strip_prefix("SharedAccessSignature ").unwrap();
            let mut parts: Vec<&str> = body.split('&').collect();
            parts.reverse();
            format!("SharedAccessSignature {}", parts.join("&"))
        };
        assert_eq!(
            verify_sas(&reordered, resource, KEY, Some("registration"), 1000),
            Ok(2000)
        );
    }
}
