//! gatehost: an IoT gateway runtime. Onboarding flows and topic-translation rules are plugins
//! (WASM components or Rhai scripts) that share one host API of capabilities.
//!
//! Layout: [`model`] (messages, connections, the plugin error), [`config`] (gatehost.toml),
//! [`caps`] (host capabilities, each bound to both engines), [`engine`] (the WASM and Rhai
//! engines), [`plugins`] (manifests, discovery, registry), [`bundle`] (signed bundles, trust, install), [`cli`] (the `gatehost` commands).

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
