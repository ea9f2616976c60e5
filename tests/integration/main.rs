//! gatehost's integration tests: one test binary, shared support code, real plugins built with
//! the real toolchains (cargo for wasm32-wasip2, the Rhai scripts in `scripts/`).
//!
//! Where to look (`cargo test -p gatehost --test integration -- <module>::`):
//!
//! | module | what it covers |
//! |---|---|
//! | `support` | shared helpers: paths, built WASM plugins, plugin dirs, the `gatehost` binary; `support::gateway` (`gatehost run` as a process, local MQTT clients, a TCP relay), `support::mosquitto` (a real broker, a test PKI), `support::openssl` (the guides' commands), `support::sandbox` (the emulators and shipped flows), `support::python` (PyJWT, the Azure SDK), `support::languages` (the JavaScript and Python plugins, built once) |
//! | `guide_certs`, `certs_openssl` | certificates and keys made by the real `openssl` CLI as the providers' guides say |
//! | `first_steps`, `cli` | the command line as a new user meets it |
//! | `bridge`, `upstream` | `gatehost run` end to end: local clients, rules, queue, outages, crashes, clouds |
//! | `hot_reload` | rules rewritten under a running gateway, under load and broken |
//! | `metrics` | `/metrics` parsed as Prometheus does, `/healthz` |
//! | `kv` | what plugins keep: namespaces and restarts |
//! | `containment`, `engine_limits`, `bad_plugins`, `wasi_isolation` | what a hostile or broken plugin cannot do (secrets, file modes, deadlines, limits, WASI) |
//! | `flows`, `flow_twins`, `provider_flows`, `onboard` | onboarding flows in both engines against the sandbox |
//! | `parity` | the example rule byte-identical in Rhai and in Rust, JavaScript and Python components |
//! | `languages` | JavaScript and Python plugins: limits, broken builds, `rule test`, hot reload, bundles, skeletons |
//! | `net_mqtt`, `net_http`, `plugin_certs` | the host capabilities as plugins see them |
//! | `sandbox`, `sandbox_brokers`, `sandbox_rest` | the provider emulators against real clients (the official SDK, curl) |
//! | `bundles`, `signatures` | signed bundles with the real `minisign`; signatures checked by independent code |
//! | `robustness`, `wasm_cache` | no panic on mutated inputs; the compiled-component cache |
//! | `architecture` | the imports of `host/src` follow the layers ARCHITECTURE.md draws |

mod support;

mod architecture;
mod bad_plugins;
mod bridge;
mod bundles;
mod certs_openssl;
mod cli;
mod containment;
mod engine_limits;
mod first_steps;
mod flow_twins;
mod flows;
mod guide_certs;
mod hot_reload;
mod kv;
mod languages;
mod metrics;
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
mod signatures;
mod upstream;
mod wasi_isolation;
mod wasm_cache;
