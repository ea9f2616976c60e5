//! The gatehost plugin SDK: Rust bindings of the `gatehost:plugin` WIT package, for both worlds.
//!
//! A rule plugin is one `impl` and one export line:
//!
//! ```ignore
//! use gatehost_sdk::rule::{Guest, Message, Outbound, Error};
//!
//! struct MyRule;
//! impl Guest for MyRule {
//!     fn translate(msg: Message) -> Result<Vec<Outbound>, Error> { Ok(vec![]) }
//! }
//! gatehost_sdk::export_rule!(MyRule);
//! ```
//!
//! A flow plugin implements `gatehost_sdk::flow::Guest` and ends with `gatehost_sdk::export_flow!(MyFlow);`.
//! Host functions live under `gatehost_sdk::host` (`log`, `kv`, `json`, `crypto`, `certs`, `mqtt`, `http`, `time`).

/// Bindings of the `rule` world (and of every host interface, which both worlds share).
#[allow(clippy::too_many_arguments)] // generated code: one argument per WIT parameter
pub mod rule {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "gatehost:plugin/rule",
        pub_export_macro: true,
        export_macro_name: "export_rule",
        default_bindings_module: "gatehost_sdk::rule",
    });
    pub use self::gatehost::plugin::types::{Destination, ErrorKind};
}

/// Bindings of the `flow` world; its imports are the same modules as the rule world's.
#[allow(clippy::too_many_arguments)] // generated code: one argument per WIT parameter
pub mod flow {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "gatehost:plugin/flow",
        pub_export_macro: true,
        export_macro_name: "export_flow",
        default_bindings_module: "gatehost_sdk::flow",
        with: {
            "gatehost:plugin/types@0.1.0": crate::rule::gatehost::plugin::types,
            "gatehost:plugin/log@0.1.0": crate::rule::gatehost::plugin::log,
            "gatehost:plugin/kv@0.1.0": crate::rule::gatehost::plugin::kv,
            "gatehost:plugin/json@0.1.0": crate::rule::gatehost::plugin::json,
            "gatehost:plugin/crypto@0.1.0": crate::rule::gatehost::plugin::crypto,
            "gatehost:plugin/certs@0.1.0": crate::rule::gatehost::plugin::certs,
            "gatehost:plugin/mqtt@0.1.0": crate::rule::gatehost::plugin::mqtt,
            "gatehost:plugin/http@0.1.0": crate::rule::gatehost::plugin::http,
            "gatehost:plugin/time@0.1.0": crate::rule::gatehost::plugin::time,
        },
    });
    pub use crate::rule::gatehost::plugin::types::{
        Auth, ClientCertificate, ErrorKind, ProtocolVersion,
    };
}

/// The host API, one module per WIT interface.
pub mod host {
    pub use crate::rule::gatehost::plugin::{
        certs, crypto, http, json, kv, log, mqtt, time, types,
    };
}

mod arena;
pub use arena::CallArena;

pub use rule::gatehost::plugin::types::{Error, ErrorKind};

/// Build an [`Error`] of the given kind: `gatehost_sdk::error(ErrorKind::InvalidInput, "...")`.
pub fn error(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error {
        kind,
        message: message.into(),
    }
}

pub use flow::export_flow;
pub use rule::export_rule;

/// The value of flow parameter `name` (the `params` of `onboard`), or `""` when it is absent.
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> &'a str {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}
