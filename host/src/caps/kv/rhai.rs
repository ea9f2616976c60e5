//! Rhai registration of the `kv` capability: `kv::get(key)` (a blob, or `()` when absent),
//! `kv::set(key, blob_or_string)`, `kv::delete(key)`, `kv::keys()`.

use crate::caps::rhai_glue::{plugin_error, RhaiResult};
use crate::caps::CapContext;
use rhai::{Array, Blob, Dynamic, Engine, Module};

pub fn register(engine: &mut Engine, ctx: &CapContext) {
    let mut module = Module::new();
    let c = ctx.clone();
    module.set_native_fn("get", move |key: &str| -> RhaiResult<Dynamic> {
        Ok(match c.kv.get(key).map_err(plugin_error)? {
            Some(value) => Dynamic::from_blob(value),
            None => Dynamic::UNIT,
        })
    });
    let c = ctx.clone();
    module.set_native_fn("set", move |key: &str, value: Blob| -> RhaiResult<()> {
        c.kv.set(key, &value).map_err(plugin_error)
    });
    let c = ctx.clone();
    module.set_native_fn("set", move |key: &str, value: &str| -> RhaiResult<()> {
        c.kv.set(key, value.as_bytes()).map_err(plugin_error)
    });
    let c = ctx.clone();
    module.set_native_fn("delete", move |key: &str| -> RhaiResult<bool> {
        c.kv.delete(key).map_err(plugin_error)
    });
    let c = ctx.clone();
    module.set_native_fn("keys", move || -> RhaiResult<Array> {
        Ok(c.kv.keys().into_iter().map(Dynamic::from).collect())
    });
    engine.register_static_module("kv", module.into());
}
