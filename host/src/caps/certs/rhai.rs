//! Rhai registration of the `certs` capability (same names as the WIT; `unsupported` for now).

use super::unsupported;
use crate::caps::CapContext;
use crate::engine::rhai::{plugin_error, RhaiResult};
use rhai::{Dynamic, Engine, Module};

pub fn register(engine: &mut Engine, _ctx: &CapContext) {
    let mut m = Module::new();
    m.set_native_fn(
        "generate_key",
        |_alg: &str, _name: &str| -> RhaiResult<Dynamic> {
            Err(plugin_error(unsupported("key-pair.generate")))
        },
    );
    m.set_native_fn(
        "load_key",
        |_path: &str, _pass: Dynamic| -> RhaiResult<Dynamic> {
            Err(plugin_error(unsupported("key-pair.load")))
        },
    );
    m.set_native_fn("open_key", |_reference: &str| -> RhaiResult<Dynamic> {
        Err(plugin_error(unsupported("key-pair.open")))
    });
    m.set_native_fn(
        "create_csr",
        |_k: Dynamic, _s: Dynamic, _d: Dynamic| -> RhaiResult<Dynamic> {
            Err(plugin_error(unsupported("create-csr")))
        },
    );
    m.set_native_fn("read_chain", |_path: &str| -> RhaiResult<Dynamic> {
        Err(plugin_error(unsupported("read-chain")))
    });
    m.set_native_fn(
        "key_matches",
        |_k: Dynamic, _path: &str| -> RhaiResult<bool> {
            Err(plugin_error(unsupported("key-matches")))
        },
    );
    m.set_native_fn(
        "verify_chain",
        |_chain: &str, _ca: &str| -> RhaiResult<()> {
            Err(plugin_error(unsupported("verify-chain")))
        },
    );
    engine.register_static_module("certs", m.into());
}
