//! gatehost's integration tests: one test binary, shared support code, real plugins built with
//! the real toolchains (cargo for wasm32-wasip2, the Rhai scripts in `scripts/`).

mod support;

mod bad_plugins;
mod bridge;
mod broker;
mod bundles;
mod certs_openssl;
mod cli;
mod containment;
mod engine_limits;
mod first_steps;
mod flow_twins;
mod flows;
mod guide_certs;
mod net_http;
mod net_mqtt;
mod onboard;
mod parity;
mod plugin_certs;
mod provider_flows;
mod robustness;
mod sandbox;
mod sandbox_brokers;
mod sandbox_rest;
mod sandboxing;
mod signatures;
mod upstream;
mod wasm_cache;
