//! Rhai registration of the `mqtt` capability (same names as the WIT; `unsupported` for now).

use super::unsupported;
use crate::caps::CapContext;
use crate::engine::rhai::{plugin_error, RhaiResult};
use rhai::{Dynamic, Engine, Map, Module};

pub fn register(engine: &mut Engine, _ctx: &CapContext) {
    let mut m = Module::new();
    m.set_native_fn("connect", |_options: Map| -> RhaiResult<Dynamic> {
        Err(plugin_error(unsupported("session.connect")))
    });
    engine.register_static_module("mqtt", m.into());
}
