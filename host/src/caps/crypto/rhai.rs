//! Rhai registration of the `crypto` capability. Names follow the WIT (`crypto::sas_token`,
//! `crypto::percent_encode`, ...); byte arguments accept a blob or a string (its UTF-8 bytes).

use crate::caps::certs::KeyHandle;
use crate::caps::rhai_glue::{plugin_error, RhaiResult};
use crate::caps::CapContext;
use crate::model::{ErrorKind, PluginError};
use rhai::{Blob, Dynamic, Engine, Module, INT};

pub fn register(engine: &mut Engine, ctx: &CapContext) {
    let mut m = Module::new();
    m.set_native_fn("sha256", |data: &mut Blob| Ok(super::sha256(data)));
    m.set_native_fn("sha256", |data: &str| Ok(super::sha256(data.as_bytes())));
    m.set_native_fn("hmac_sha256", |key: Blob, data: Blob| {
        Ok(super::hmac_sha256(&key, &data))
    });
    m.set_native_fn("hmac_sha256", |key: Blob, data: &str| {
        Ok(super::hmac_sha256(&key, data.as_bytes()))
    });
    m.set_native_fn("base64_encode", |data: &mut Blob| {
        Ok(super::base64_encode(data))
    });
    m.set_native_fn("base64_encode", |data: &str| {
        Ok(super::base64_encode(data.as_bytes()))
    });
    m.set_native_fn("base64_decode", |text: &str| -> RhaiResult<Blob> {
        super::base64_decode(text).map_err(plugin_error)
    });
    m.set_native_fn("base64url_encode", |data: &mut Blob| {
        Ok(super::base64url_encode(data))
    });
    m.set_native_fn("base64url_encode", |data: &str| {
        Ok(super::base64url_encode(data.as_bytes()))
    });
    m.set_native_fn("base64url_decode", |text: &str| -> RhaiResult<Blob> {
        super::base64url_decode(text).map_err(plugin_error)
    });
    m.set_native_fn("percent_encode", |text: &str| {
        Ok(super::percent_encode(text))
    });
    m.set_native_fn("uuid_v4", || Ok(super::uuid_v4()));
    m.set_native_fn("now_unix", || Ok(super::now_unix() as INT));
    m.set_native_fn(
        "sas_token",
        |resource: &str, key: &str, policy: Dynamic, expiry: INT| -> RhaiResult<String> {
            let policy = optional_string(policy, "policy")?;
            let expiry = non_negative(expiry, "expiry")?;
            super::sas_token(resource, key, policy.as_deref(), expiry).map_err(plugin_error)
        },
    );
    m.set_native_fn(
        "derive_device_key",
        |group_key: &str, registration_id: &str| {
            super::derive_device_key(group_key, registration_id).map_err(plugin_error)
        },
    );
    let c = ctx.clone();
    m.set_native_fn(
        "jwt_sign",
        move |key: KeyHandle, header: &str, claims: &str, x5c: Dynamic| -> RhaiResult<String> {
            let x5c = optional_string(x5c, "x5c_chain_file")?;
            super::plugin_jwt(&c, &key.key, header, claims, x5c.as_deref()).map_err(plugin_error)
        },
    );
    let c = ctx.clone();
    m.set_native_fn(
        "mindconnect_jwt",
        move |key: KeyHandle,
              chain: &str,
              client_id: &str,
              tenant: &str,
              ttl: INT|
              -> RhaiResult<String> {
            let ttl = non_negative(ttl, "ttl_secs")?;
            super::plugin_mindconnect_jwt(&c, &key.key, chain, client_id, tenant, ttl)
                .map_err(plugin_error)
        },
    );
    engine.register_static_module("crypto", m.into());
}

/// `()` means "none"; a string is the value; anything else is a clear error.
pub(crate) fn optional_string(value: Dynamic, name: &str) -> RhaiResult<Option<String>> {
    if value.is_unit() {
        return Ok(None);
    }
    value.into_string().map(Some).map_err(|actual| {
        plugin_error(PluginError::new(
            ErrorKind::InvalidInput,
            format!("{name} must be a string or (), got {actual}"),
        ))
    })
}

pub(crate) fn non_negative(value: INT, name: &str) -> RhaiResult<u64> {
    u64::try_from(value).map_err(|_| {
        plugin_error(PluginError::new(
            ErrorKind::InvalidInput,
            format!("{name} must not be negative, got {value}"),
        ))
    })
}
