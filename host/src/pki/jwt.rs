//! JWTs signed RS256/ES256 by a host-held key, with an `x5c` chain when asked, and the
//! MindConnect private-cloud broker token.

use super::crypto::{base64_encode, base64url_encode, now_unix, uuid_v4};
use crate::model::{ErrorKind, PluginError};

/// The longest JWT lifetime (`exp - iat`) MindConnect accepts, and the CLI's default maximum.
pub(crate) const MAX_JWT_LIFETIME_SECS: u64 = 3600;

/// A compact JWT signed by `key` (RS256 for RSA keys, ES256 for P-256). `header_json` fields are
/// merged over `{"alg", "typ": "JWT"}`; `x5c_chain` (PEM text and its source name) adds an `x5c`
/// header with every certificate's DER in order. With `max_lifetime`, claims whose `exp - iat`
/// exceed it are refused.
pub fn jwt_sign(
    key: &crate::pki::keys::PrivateKey,
    header_json: &str,
    claims_json: &str,
    x5c_chain: Option<(&str, &str)>,
    max_lifetime: Option<u64>,
) -> Result<String, PluginError> {
    let object = |text: &str,
                  what: &str|
     -> Result<serde_json::Map<String, serde_json::Value>, PluginError> {
        if text.trim().is_empty() {
            return Ok(serde_json::Map::new());
        }
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            Ok(_) => Err(invalid(format!("JWT {what} must be a JSON object"))),
            Err(e) => Err(invalid(format!("JWT {what} is not valid JSON: {e}"))),
        }
    };
    let alg = key.algorithm().jwt_alg();
    let mut header = serde_json::Map::new();
    header.insert("alg".into(), alg.into());
    header.insert("typ".into(), "JWT".into());
    for (k, v) in object(header_json, "header")? {
        if k == "alg" && v != alg {
            return Err(invalid(format!(
                "JWT header alg {v} does not match the {} key (it signs {alg})",
                key.algorithm()
            )));
        }
        header.insert(k, v);
    }
    if let Some((pem_text, source)) = x5c_chain {
        let ders = crate::pki::x509::parse_pem_certs(pem_text, source)?;
        let x5c: Vec<serde_json::Value> = ders.iter().map(|d| base64_encode(d).into()).collect();
        header.insert("x5c".into(), x5c.into());
    }
    let claims = object(claims_json, "claims")?;
    if let Some(max) = max_lifetime {
        check_jwt_lifetime(&claims, max)?;
    }
    let encode = |map: &serde_json::Map<String, serde_json::Value>| {
        base64url_encode(&serde_json::to_vec(map).expect("a JSON map serializes"))
    };
    let signing_input = format!("{}.{}", encode(&header), encode(&claims));
    let signature = key.sign_jwt(signing_input.as_bytes())?;
    let token = format!("{signing_input}.{}", base64url_encode(&signature));
    crate::redact::remember(&token);
    Ok(token)
}

fn check_jwt_lifetime(
    claims: &serde_json::Map<String, serde_json::Value>,
    max: u64,
) -> Result<(), PluginError> {
    let number = |name: &str| claims.get(name).and_then(|v| v.as_i64());
    if let (Some(iat), Some(exp)) = (number("iat"), number("exp")) {
        if exp - iat > max as i64 {
            return Err(invalid(format!(
                "JWT lifetime exp - iat = {} s exceeds the provider maximum of {max} s",
                exp - iat
            )));
        }
        if exp <= iat {
            return Err(invalid(format!("JWT exp ({exp}) is not after iat ({iat})")));
        }
    }
    Ok(())
}

/// The MindConnect private-cloud broker password: an RS256 JWT with `x5c` = [agent cert, tenant
/// CA], `iss` = `sub` = client id, `aud` = ["MQTTBroker"], a fresh `jti`, `ten` = tenant and a
/// lifetime of at most one hour.
pub fn mindconnect_jwt(
    key: &crate::pki::keys::PrivateKey,
    chain_pem: &str,
    chain_source: &str,
    client_id: &str,
    tenant: &str,
    ttl_secs: u64,
) -> Result<String, PluginError> {
    if client_id.is_empty() {
        return Err(invalid("MindConnect client id is empty".into()));
    }
    if key.algorithm() == crate::pki::keys::KeyAlgorithm::P256 {
        return Err(invalid(format!(
            "MindConnect tokens are RS256: agent '{client_id}' needs an RSA key, not a P-256 one"
        )));
    }
    if tenant.is_empty() || tenant.chars().count() > 36 {
        return Err(invalid(format!(
            "MindConnect tenant must be 1 to 36 characters, got {}",
            tenant.chars().count()
        )));
    }
    if ttl_secs == 0 || ttl_secs > MAX_JWT_LIFETIME_SECS {
        return Err(invalid(format!(
            "MindConnect token lifetime of {ttl_secs} s is out of range (1 to {MAX_JWT_LIFETIME_SECS})"
        )));
    }
    let iat = now_unix();
    let claims = serde_json::json!({
        "jti": uuid_v4(),
        "iss": client_id,
        "sub": client_id,
        "aud": ["MQTTBroker"],
        "iat": iat,
        "exp": iat + ttl_secs,
        "schemas": ["urn:siemens:mindsphere:v1"],
        "ten": tenant,
    });
    jwt_sign(
        key,
        "",
        &claims.to_string(),
        Some((chain_pem, chain_source)),
        Some(MAX_JWT_LIFETIME_SECS),
    )
}

fn invalid(message: String) -> PluginError {
    PluginError::new(ErrorKind::InvalidInput, message)
}
