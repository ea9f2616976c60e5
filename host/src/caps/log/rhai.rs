//! Rhai registration of the `log` capability: `log::info(msg)` (also trace/debug/warn/error) and
//! `log::log(level, msg)`; Rhai's own `print`/`debug` go to the same place.

use super::{log, Level};
use crate::caps::rhai_glue::{plugin_error, RhaiResult};
use crate::caps::CapContext;
use crate::model::{ErrorKind, PluginError};
use rhai::{Engine, Module};

pub fn register(engine: &mut Engine, ctx: &CapContext) {
    let mut module = Module::new();
    for (name, level) in [
        ("trace", Level::Trace),
        ("debug", Level::Debug),
        ("info", Level::Info),
        ("warn", Level::Warn),
        ("error", Level::Error),
    ] {
        let ctx = ctx.clone();
        module.set_native_fn(name, move |message: &str| {
            log(&ctx, level, message);
            Ok(())
        });
    }
    let c = ctx.clone();
    module.set_native_fn("log", move |level: &str, message: &str| -> RhaiResult<()> {
        let level = Level::parse(level).ok_or_else(|| {
            plugin_error(PluginError::new(
                ErrorKind::InvalidInput,
                format!("unknown log level '{level}' (expected trace, debug, info, warn or error)"),
            ))
        })?;
        log(&c, level, message);
        Ok(())
    });
    engine.register_static_module("log", module.into());

    let c = ctx.clone();
    engine.on_print(move |text| log(&c, Level::Info, text));
    let c = ctx.clone();
    engine.on_debug(move |text, _source, pos| log(&c, Level::Debug, &format!("{text} (at {pos})")));
}
