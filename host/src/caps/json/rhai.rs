//! Rhai registration of the `json` capability: `json::kind(blob_or_string)` returns the kind's
//! WIT name ("object", "invalid", ...); `json::quote(s)`.

use crate::caps::CapContext;
use rhai::{Blob, Engine, ImmutableString, Module};

pub fn register(engine: &mut Engine, _ctx: &CapContext) {
    let mut module = Module::new();
    module.set_native_fn("kind", |document: &mut Blob| {
        Ok(ImmutableString::from(super::kind(document).as_str()))
    });
    module.set_native_fn("kind", |document: &str| {
        Ok(ImmutableString::from(
            super::kind(document.as_bytes()).as_str(),
        ))
    });
    module.set_native_fn("quote", |s: &str| Ok(super::quote(s)));
    engine.register_static_module("json", module.into());
}
