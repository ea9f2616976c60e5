//! gatehost: an IoT gateway runtime. Onboarding flows and topic-translation rules are plugins
//! (WASM components or Rhai scripts) that share one host API of capabilities.
//!
//! Layout, from the bottom layer up (ARCHITECTURE.md has the map, the path of one message and
//! the design decisions; `tests/integration/architecture.rs` keeps the layers true):
//!
//! - [`model`]: messages, connections, credentials, the plugin error. [`memory`], `redact`
//!   (secrets out of plugin logs), `private_files` (0600 files).
//! - [`retry`]: backoff and transient errors. [`events`]: what servers and emulators recorded.
//! - [`pki`]: keys, certificates, TLS, hashes and tokens for the whole host.
//! - [`mqtt`]: topic rules, the MQTT client, the server core of the local broker and emulators.
//! - [`sandbox`]: the provider emulators.
//! - [`caps`]: the host capabilities plugins call, each bound to both engines.
//! - [`engine`]: the WASM and Rhai engines. [`rules`]: the built-in template rule.
//! - [`config`]: `gatehost.toml` as plain data.
//! - [`plugins`]: manifests, discovery, signed bundles, the registry.
//! - [`onboard`]: a device's flow with retries. [`upstream`]: a device's cloud session.
//! - [`bridge`]: `gatehost run`. [`cli`]: the commands.

pub mod bridge;
pub mod caps;
pub mod cli;
pub mod config;
pub mod engine;
pub mod events;
pub mod memory;
pub mod model;
pub mod mqtt;
pub mod onboard;
pub mod pki;
pub mod plugins;
pub(crate) mod private_files;
pub(crate) mod redact;
pub mod retry;
pub mod rules;
pub mod sandbox;
pub mod upstream;
