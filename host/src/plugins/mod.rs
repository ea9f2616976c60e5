//! Plugins on disk: manifests, discovery in the plugin directories, and the registry of loaded
//! plugins (bundles and hot reload build on these).

pub mod discovery;
pub mod manifest;
pub mod registry;
