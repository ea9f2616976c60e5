//! WIT host impl of `gatehost:plugin/time`.

use crate::engine::bindings::plugin::time::Host;
use crate::engine::bindings::plugin::types::Error;
use crate::engine::wasm::HostState;

impl Host for HostState {
    fn sleep_ms(&mut self, ms: u32) -> wasmtime::Result<Result<(), Error>> {
        Ok(super::sleep_ms(&self.caps, ms as u64).map_err(Into::into))
    }
}
