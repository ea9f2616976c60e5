//! Sharing plugins between sites: signed bundles (`.ghp`), the trust store, installing with
//! pinning in `gatehost.lock`, and new-plugin skeletons.
//!
//! A bundle is a plain tar archive in one canonical layout:
//!
//! ```text
//! bundle.toml           what the plugin is and may use, and the SHA-256 of every payload file
//! bundle.toml.minisig   minisign (Ed25519) signature of bundle.toml: `minisign -V` checks it
//! payload/<name>.toml   the plugin manifest
//! payload/<name>.rhai   or <name>.wasm, plus any `files` the manifest ships
//! ```

pub mod archive;
pub(crate) mod fetch;
pub mod format;
pub mod lock;
pub mod minisign;
pub mod skeleton;
pub mod store;
pub mod trust;
