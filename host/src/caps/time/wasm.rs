//! WIT host impl of `gatehost:plugin/time`.

use crate::caps::wasm::WasmCaps;
use crate::caps::wit::plugin::time::Host;
use crate::caps::wit::plugin::types::Error;

impl Host for WasmCaps<'_> {
    fn sleep_ms(&mut self, ms: u32) -> wasmtime::Result<Result<(), Error>> {
        Ok(super::sleep_ms(self.caps, ms as u64).map_err(Into::into))
    }
}
