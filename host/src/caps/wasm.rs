//! How the WIT host impls see one plugin instance: [`WasmCaps`], a view of the instance's
//! capability context and resource table. The engine keeps both in its `Store` data and links
//! every interface through [`CapsData`], so a capability never knows the engine's types.

use super::wit::plugin::types;
use super::CapContext;
use wasmtime::component::{HasData, ResourceTable};

/// One plugin instance's capabilities and resources, as the host impls (`caps/*/wasm.rs`) take them.
pub(crate) struct WasmCaps<'a> {
    pub caps: &'a mut CapContext,
    pub table: &'a mut ResourceTable,
}

/// The [`HasData`] marker that links the `gatehost:plugin` interfaces to [`WasmCaps`].
pub(crate) struct CapsData;

impl HasData for CapsData {
    type Data<'a> = WasmCaps<'a>;
}

impl types::Host for WasmCaps<'_> {}
