//! WIT host impl of `gatehost:plugin/json`.

use super::JsonKind;
use crate::caps::wasm::WasmCaps;
use crate::caps::wit::plugin::json::{Host, JsonKind as WitKind};

impl Host for WasmCaps<'_> {
    fn kind(&mut self, document: Vec<u8>) -> wasmtime::Result<WitKind> {
        Ok(match super::kind(&document) {
            JsonKind::Invalid => WitKind::Invalid,
            JsonKind::Object => WitKind::Object,
            JsonKind::Array => WitKind::Array,
            JsonKind::String => WitKind::String,
            JsonKind::Number => WitKind::Number,
            JsonKind::Boolean => WitKind::Boolean,
            JsonKind::Null => WitKind::Null,
        })
    }

    fn quote(&mut self, s: String) -> wasmtime::Result<String> {
        Ok(super::quote(&s))
    }
}
