//! WIT host impl of `gatehost:plugin/mqtt`.

use super::{unsupported, SessionHandle};
use crate::engine::bindings::plugin::mqtt::{ConnectOptions, Host, HostSession};
use crate::engine::bindings::plugin::types::{Error, Message};
use crate::engine::wasm::HostState;
use wasmtime::component::Resource;

type WitResult<T> = wasmtime::Result<Result<T, Error>>;

impl HostSession for HostState {
    fn connect(&mut self, _options: ConnectOptions) -> WitResult<Resource<SessionHandle>> {
        Ok(Err(unsupported("session.connect").into()))
    }

    fn subscribe(
        &mut self,
        _s: Resource<SessionHandle>,
        _filter: String,
        _qos: u8,
    ) -> WitResult<()> {
        Ok(Err(unsupported("session.subscribe").into()))
    }

    fn publish(&mut self, _s: Resource<SessionHandle>, _message: Message) -> WitResult<()> {
        Ok(Err(unsupported("session.publish").into()))
    }

    fn receive(
        &mut self,
        _s: Resource<SessionHandle>,
        _timeout_ms: u32,
    ) -> WitResult<Option<Message>> {
        Ok(Err(unsupported("session.receive").into()))
    }

    fn disconnect(&mut self, _s: Resource<SessionHandle>) -> WitResult<()> {
        Ok(Err(unsupported("session.disconnect").into()))
    }

    fn drop(&mut self, session: Resource<SessionHandle>) -> wasmtime::Result<()> {
        self.table.delete(session)?;
        Ok(())
    }
}

impl Host for HostState {}
