//! Rhai registration of the `certs` capability. A key is a `KeyPair` value with the methods of the
//! WIT resource (`reference()`, `algorithm()`, `public_key_pem()`); printing it shows only its
//! reference. Functions: `certs::generate_key(alg, name)`, `certs::load_key(path[, passphrase])`,
//! `certs::open_key(reference)`, `certs::create_csr(key, subject, dns_names)` (subject: a map or
//! "/C=../CN=.."), `certs::read_chain(path)`, `certs::key_matches(key, path)`,
//! `certs::verify_chain(chain_path, ca_path)`.

use super::{KeyAlgorithm, KeyHandle, Subject};
use crate::caps::rhai_glue::{plugin_error, RhaiResult};
use crate::caps::CapContext;
use crate::model::{ErrorKind, PluginError};
use rhai::{Array, Dynamic, Engine, Map, Module};

fn algorithm(name: &str) -> RhaiResult<KeyAlgorithm> {
    KeyAlgorithm::parse(name).ok_or_else(|| {
        plugin_error(PluginError::new(
            ErrorKind::InvalidInput,
            format!("key algorithm '{name}' is not one of rsa2048, rsa3072, rsa4096, p256"),
        ))
    })
}

fn subject(value: Dynamic) -> RhaiResult<Subject> {
    if value.is_string() {
        return Subject::parse(&value.into_string().expect("checked is_string"))
            .map_err(plugin_error);
    }
    let map = value.try_cast::<Map>().ok_or_else(|| {
        plugin_error(PluginError::new(
            ErrorKind::InvalidInput,
            "subject must be a map or a \"/C=../CN=..\" string",
        ))
    })?;
    let field = |name: &str| map.get(name).and_then(|v| v.clone().into_string().ok());
    Ok(Subject {
        country: field("country"),
        state: field("state"),
        locality: field("locality"),
        organization: field("organization"),
        organizational_unit: field("organizational_unit"),
        common_name: field("common_name").ok_or_else(|| {
            plugin_error(PluginError::new(
                ErrorKind::InvalidInput,
                "subject has no common_name",
            ))
        })?,
    })
}

pub fn register(engine: &mut Engine, ctx: &CapContext) {
    engine.register_type_with_name::<KeyHandle>("KeyPair");
    engine.register_fn("reference", |k: &mut KeyHandle| k.reference.clone());
    engine.register_fn("algorithm", |k: &mut KeyHandle| {
        k.key.algorithm().as_str().to_string()
    });
    engine.register_fn("public_key_pem", |k: &mut KeyHandle| k.key.public_key_pem());
    engine.register_fn("to_string", |k: &mut KeyHandle| {
        format!("KeyPair({})", k.reference)
    });
    engine.register_fn("to_debug", |k: &mut KeyHandle| {
        format!("KeyPair({})", k.reference)
    });

    let mut m = Module::new();
    let c = ctx.clone();
    m.set_native_fn(
        "generate_key",
        move |alg: &str, name: &str| -> RhaiResult<KeyHandle> {
            super::generate_key(&c, algorithm(alg)?, name).map_err(plugin_error)
        },
    );
    let c = ctx.clone();
    m.set_native_fn("load_key", move |path: &str| -> RhaiResult<KeyHandle> {
        super::load_key(&c, path, None).map_err(plugin_error)
    });
    let c = ctx.clone();
    m.set_native_fn(
        "load_key",
        move |path: &str, passphrase: &str| -> RhaiResult<KeyHandle> {
            super::load_key(&c, path, Some(passphrase)).map_err(plugin_error)
        },
    );
    let c = ctx.clone();
    m.set_native_fn(
        "open_key",
        move |reference: &str| -> RhaiResult<KeyHandle> {
            super::open_key(&c, reference).map_err(plugin_error)
        },
    );
    m.set_native_fn(
        "create_csr",
        |key: KeyHandle, s: Dynamic, dns: Array| -> RhaiResult<String> {
            let dns: Vec<String> = dns.into_iter().map(|d| d.to_string()).collect();
            super::x509::create_csr(&key.key, &subject(s)?, &dns).map_err(plugin_error)
        },
    );
    let c = ctx.clone();
    m.set_native_fn("read_chain", move |path: &str| -> RhaiResult<Array> {
        let infos = super::read_chain(&c, path).map_err(plugin_error)?;
        infos
            .iter()
            .map(|i| {
                rhai::serde::to_dynamic(i)
                    .map_err(|e| plugin_error(PluginError::new(ErrorKind::Io, e.to_string())))
            })
            .collect()
    });
    let c = ctx.clone();
    m.set_native_fn(
        "key_matches",
        move |key: KeyHandle, path: &str| -> RhaiResult<bool> {
            super::key_matches(&c, &key.key, path).map_err(plugin_error)
        },
    );
    let c = ctx.clone();
    m.set_native_fn(
        "verify_chain",
        move |chain: &str, ca: &str| -> RhaiResult<()> {
            super::verify_chain(&c, chain, ca).map_err(plugin_error)
        },
    );
    engine.register_static_module("certs", m.into());
}
