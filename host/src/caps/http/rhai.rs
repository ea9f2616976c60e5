//! Rhai registration of the `http` capability: `http::send(#{method, url, headers: [[k, v]],
//! body (blob or string), timeout_ms, ca_file, client_certificate: #{chain_file, key_ref}})`
//! returns `#{status, headers: [[k, v]], body (blob)}`; 4xx/5xx answers throw typed errors
//! unless `errors_as_responses: true`.

use crate::caps::rhai_glue::{bytes_from_dynamic, plugin_error, RhaiResult};
use crate::caps::CapContext;
use crate::model::{ErrorKind, PluginError};
use rhai::{Array, Dynamic, Engine, Map, Module};

pub fn register(engine: &mut Engine, ctx: &CapContext) {
    let mut m = Module::new();
    let c = ctx.clone();
    m.set_native_fn("send", move |mut request: Map| -> RhaiResult<Map> {
        let invalid = |m: String| plugin_error(PluginError::new(ErrorKind::InvalidInput, m));
        // The body is a blob or a string (its UTF-8 bytes); serde does not read blobs.
        let body = match request.remove("body") {
            None => Vec::new(),
            Some(b) => {
                bytes_from_dynamic(b, "body").map_err(|e| invalid(format!("http::send {e}")))?
            }
        };
        let mut request: super::Request = rhai::serde::from_dynamic(&request.into())
            .map_err(|e| invalid(format!("http::send request: {e}")))?;
        request.body = body;
        let answer = super::send(&c, &request).map_err(plugin_error)?;
        let headers: Array = answer
            .headers
            .into_iter()
            .map(|(k, v)| Dynamic::from_array(vec![k.into(), v.into()]))
            .collect();
        let mut out = Map::new();
        out.insert("status".into(), (answer.status as rhai::INT).into());
        out.insert("headers".into(), headers.into());
        out.insert("body".into(), Dynamic::from_blob(answer.body));
        Ok(out)
    });
    engine.register_static_module("http", m.into());
}
