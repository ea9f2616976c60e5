//! Hashing, encodings, and the provider signatures: Azure SAS tokens and DPS group-enrollment
//! derived keys (bit-exact with `providers.md`), and JWTs signed RS256/ES256 by a host-held key
//! (with the MindConnect private-cloud token one call away). The `crypto` capability
//! ([`crate::caps::crypto`]) hands these to plugins.

use crate::model::{ErrorKind, PluginError};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

/// Bytes Azure leaves unencoded: `[A-Za-z0-9_.~-]`.
const AZURE_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'-');

pub fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

pub(crate) fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

pub fn base64_encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn base64_decode(text: &str) -> Result<Vec<u8>, PluginError> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| invalid(format!("'{}' is not valid base64: {e}", shorten(text))))
}

pub(crate) fn base64url_encode(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// Accepts URL-safe base64 with or without padding.
pub(crate) fn base64url_decode(text: &str) -> Result<Vec<u8>, PluginError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim().trim_end_matches('='))
        .map_err(|e| invalid(format!("'{}' is not valid base64url: {e}", shorten(text))))
}

/// Percent-encode every byte outside `[A-Za-z0-9_.~-]` (`/` -> `%2F`, `+` -> `%2B`, `=` -> `%3D`).
pub(crate) fn percent_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, AZURE_SAFE).to_string()
}

pub fn uuid_v4() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An Azure SAS token:
/// `SharedAccessSignature sr=<enc(resource)>&sig=<enc(base64(hmac(key, enc(resource)\n<expiry>)))>&se=<expiry>[&skn=<policy>]`.
pub fn sas_token(
    resource: &str,
    key_base64: &str,
    policy: Option<&str>,
    expiry: u64,
) -> Result<String, PluginError> {
    if resource.is_empty() {
        return Err(invalid("SAS resource is empty".to_string()));
    }
    let key = base64_decode(key_base64)
        .map_err(|_| invalid("SAS key is not valid base64".to_string()))?;
    if key.is_empty() {
        return Err(invalid("SAS key is empty".to_string()));
    }
    let encoded_resource = percent_encode(resource);
    let sig = sas_signature(&encoded_resource, &key, expiry);
    let mut token = format!(
        "SharedAccessSignature sr={encoded_resource}&sig={}&se={expiry}",
        percent_encode(&sig)
    );
    if let Some(policy) = policy.filter(|p| !p.is_empty()) {
        token.push_str("&skn=");
        token.push_str(&percent_encode(policy));
    }
    crate::redact::remember(key_base64);
    crate::redact::remember(&token);
    Ok(token)
}

/// The `sig` of a SAS token before percent-encoding:
/// `base64(HMAC-SHA256(key, <encoded resource> "\n" <expiry>))`.
pub(crate) fn sas_signature(encoded_resource: &str, key: &[u8], expiry: u64) -> String {
    let to_sign = format!("{encoded_resource}\n{expiry}");
    base64_encode(&hmac_sha256(key, to_sign.as_bytes()))
}

/// DPS group enrollment: `base64(HMAC-SHA256(base64decode(group_key), registration_id))`.
pub fn derive_device_key(
    group_key_base64: &str,
    registration_id: &str,
) -> Result<String, PluginError> {
    if registration_id.is_empty() {
        return Err(invalid("registration id is empty".to_string()));
    }
    let key = base64_decode(group_key_base64)
        .map_err(|_| invalid("group key is not valid base64".to_string()))?;
    let derived = base64_encode(&hmac_sha256(&key, registration_id.as_bytes()));
    crate::redact::remember(group_key_base64);
    crate::redact::remember(&derived);
    Ok(derived)
}

fn invalid(message: String) -> PluginError {
    PluginError::new(ErrorKind::InvalidInput, message)
}

/// Inputs echoed in errors are cut so a long (possibly secret) value is never printed whole.
fn shorten(text: &str) -> String {
    if text.chars().count() <= 16 {
        text.to_string()
    } else {
        format!("{}...", text.chars().take(12).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_matches_azure() {
        assert_eq!(
            percent_encode("0ne00/registrations/dev 1+="),
            "0ne00%2Fregistrations%2Fdev%201%2B%3D"
        );
        assert_eq!(percent_encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(percent_encode("ü"), "%C3%BC");
    }

    #[test]
    fn sas_token_matches_an_independent_computation() {
        // Expected value computed with Python's hmac/base64/urllib.parse.quote(safe='').
        let token = sas_token(
            "0ne00055505/registrations/press7",
            "dGhpcyBpcyBhIHRlc3Qga2V5IG9mIDMyIGJ5dGVzIQ==",
            Some("registration"),
            1_700_000_000,
        )
        .unwrap();
        assert_eq!(token, include_str!("testdata/sas_expected.txt").trim());
    }

    #[test]
    fn derived_key_matches_an_independent_computation() {
        let key =
            derive_device_key("dGhpcyBpcyBhIHRlc3Qga2V5IG9mIDMyIGJ5dGVzIQ==", "press7").unwrap();
        assert_eq!(key, include_str!("testdata/derived_expected.txt").trim());
    }

    #[test]
    fn bad_inputs_are_named() {
        let e = sas_token("r", "not base64!", None, 1).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert_eq!(e.message, "SAS key is not valid base64");
        let e = derive_device_key("a2V5", "").unwrap_err();
        assert_eq!(e.message, "registration id is empty");
        assert!(base64_decode("%%%").is_err());
    }

    #[test]
    fn base64url_round_trips_without_padding() {
        let data = [0xfb, 0xff, 0x00];
        let text = base64url_encode(&data);
        assert_eq!(text, "-_8A");
        assert_eq!(base64url_decode(&text).unwrap(), data);
        assert_eq!(base64url_decode("-_8A=").unwrap(), data);
    }
}
