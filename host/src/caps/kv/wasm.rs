//! WIT host impl of `gatehost:plugin/kv`.

use crate::caps::wasm::WasmCaps;
use crate::caps::wit::plugin::kv::Host;
use crate::caps::wit::plugin::types::Error;

impl Host for WasmCaps<'_> {
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
