//! WIT host impl of `gatehost:plugin/http`.

use crate::engine::bindings::plugin::http::{Host, Request, Response};
use crate::engine::bindings::plugin::types::Error;
use crate::engine::wasm::HostState;

impl Host for HostState {
    fn send(&mut self, _request: Request) -> wasmtime::Result<Result<Response, Error>> {
        Ok(Err(super::unsupported().into()))
    }
}
