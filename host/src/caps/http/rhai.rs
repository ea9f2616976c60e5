//! Rhai registration of the `http` capability (same names as the WIT; `unsupported` for now).

use crate::caps::CapContext;
use crate::engine::rhai::{plugin_error, RhaiResult};
use rhai::{Dynamic, Engine, Map, Module};

pub fn register(engine: &mut Engine, _ctx: &CapContext) {
    let mut m = Module::new();
    m.set_native_fn("send", |_request: Map| -> RhaiResult<Dynamic> {
        Err(plugin_error(super::unsupported()))
    });
    engine.register_static_module("http", m.into());
}
