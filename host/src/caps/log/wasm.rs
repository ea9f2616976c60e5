//! WIT host impl of `gatehost:plugin/log`.

use crate::caps::wasm::WasmCaps;
use crate::caps::wit::plugin::log::{Host, Level as WitLevel};

impl Host for WasmCaps<'_> {
    fn log(&mut self, level: WitLevel, message: String) -> wasmtime::Result<()> {
        let level = match level {
            WitLevel::Trace => super::Level::Trace,
            WitLevel::Debug => super::Level::Debug,
            WitLevel::Info => super::Level::Info,
            WitLevel::Warn => super::Level::Warn,
            WitLevel::Error => super::Level::Error,
        };
        super::log(self.caps, level, &message);
        Ok(())
    }
}
