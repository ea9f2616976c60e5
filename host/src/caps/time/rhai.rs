//! Rhai registration of the `time` capability: `time::sleep_ms(ms)`.

use crate::caps::rhai_glue::{plugin_error, RhaiResult};
use crate::caps::CapContext;
use rhai::{Engine, Module, INT};

pub fn register(engine: &mut Engine, ctx: &CapContext) {
    let mut module = Module::new();
    let c = ctx.clone();
    module.set_native_fn("sleep_ms", move |ms: INT| -> RhaiResult<()> {
        super::sleep_ms(&c, u64::try_from(ms).unwrap_or(0)).map_err(plugin_error)
    });
    engine.register_static_module("time", module.into());
}
