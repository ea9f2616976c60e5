//! Plugins on disk: manifests, discovery in the plugin directories, signed bundles (packing,
//! trust, the store of installed ones), and the registry of loaded plugins, which finds them in
//! both places.
//!
//! Layers, each using only those before it: [`manifest`] -> [`discovery`] -> [`bundle`] ->
//! [`registry`].

pub mod bundle;
pub(crate) mod discovery;
pub mod manifest;
pub mod registry;
