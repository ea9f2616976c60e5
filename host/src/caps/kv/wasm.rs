//! WIT host impl of `gatehost:plugin/kv`.

use crate::engine::bindings::plugin::kv::Host;
use crate::engine::bindings::plugin::types::Error;
use crate::engine::wasm::HostState;

impl Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        Ok(self.caps.kv.get(&key).map_err(Into::into))
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), Error>> {
        Ok(self.caps.kv.set(&key, &value).map_err(Into::into))
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, Error>> {
        Ok(self.caps.kv.delete(&key).map_err(Into::into))
    }

    fn keys(&mut self) -> wasmtime::Result<Result<Vec<String>, Error>> {
        Ok(Ok(self.caps.kv.keys()))
    }
}
