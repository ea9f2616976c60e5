//! WIT host impl of `gatehost:plugin/http`.

use crate::caps::wasm::WasmCaps;
use crate::caps::wit::plugin::http::{Host, Request, Response};
use crate::caps::wit::plugin::types::Error;

impl Host for WasmCaps<'_> {
    fn send(&mut self, r: Request) -> wasmtime::Result<Result<Response, Error>> {
        let request = super::Request {
            method: r.method,
            url: r.url,
            headers: r.headers,
            body: r.body,
            timeout_ms: r.timeout_ms,
            ca_file: r.ca_file,
            client_certificate: r.client_certificate.map(Into::into),
            errors_as_responses: r.errors_as_responses,
        };
        Ok(super::send(self.caps, &request)
            .map(|a| Response {
                status: a.status,
                headers: a.headers,
                body: a.body,
            })
            .map_err(Into::into))
    }
}
