//! WIT host impl of `gatehost:plugin/mqtt`.

use super::{ConnectSpec, MqttSession, TlsSpec};
use crate::caps::wasm::WasmCaps;
use crate::caps::wit::plugin::mqtt::{ConnectOptions, Host, HostSession};
use crate::caps::wit::plugin::types::{Connection, Error, Message, ProtocolVersion};
use std::time::Duration;
use wasmtime::component::Resource;

type WitResult<T> = wasmtime::Result<Result<T, Error>>;

fn spec(o: ConnectOptions) -> ConnectSpec {
    ConnectSpec {
        host: o.host,
        port: o.port,
        client_id: o.client_id,
        username: o.username,
        password: o.password,
        keep_alive_secs: o.keep_alive_secs,
        clean_session: o.clean_session,
        protocol: match o.protocol {
            ProtocolVersion::Mqtt311 => crate::model::ProtocolVersion::Mqtt311,
            ProtocolVersion::Mqtt5 => crate::model::ProtocolVersion::Mqtt5,
        },
        tls: o.tls.map(|t| TlsSpec {
            ca_file: t.ca_file,
            client_certificate: t.client_certificate.map(Into::into),
            server_name: t.server_name,
            alpn: t.alpn,
        }),
        connect_timeout_ms: o.connect_timeout_ms,
    }
}

impl HostSession for WasmCaps<'_> {
    fn connect(&mut self, options: ConnectOptions) -> WitResult<Resource<MqttSession>> {
        let session = spec(options)
            .resolve(self.caps)
            .and_then(|o| MqttSession::connect(self.caps, &o));
        match session {
            Ok(s) => Ok(Ok(self.table.push(s)?)),
            Err(e) => Ok(Err(e.into())),
        }
    }

    fn open(&mut self, conn: Connection) -> WitResult<Resource<MqttSession>> {
        match MqttSession::open(self.caps, &conn.into()) {
            Ok(s) => Ok(Ok(self.table.push(s)?)),
            Err(e) => Ok(Err(e.into())),
        }
    }

    fn subscribe(&mut self, s: Resource<MqttSession>, filter: String, qos: u8) -> WitResult<()> {
        Ok(self
            .table
            .get_mut(&s)?
            .subscribe(&filter, qos)
            .map_err(Into::into))
    }

    fn publish(&mut self, s: Resource<MqttSession>, message: Message) -> WitResult<()> {
        let message = crate::model::Message::from(message);
        Ok(self
            .table
            .get_mut(&s)?
            .publish(&message)
            .map_err(Into::into))
    }

    fn publish_batch(&mut self, s: Resource<MqttSession>, messages: Vec<Message>) -> WitResult<()> {
        let messages: Vec<crate::model::Message> = messages.into_iter().map(Into::into).collect();
        Ok(self
            .table
            .get_mut(&s)?
            .publish_batch(&messages)
            .map_err(Into::into))
    }

    fn receive(&mut self, s: Resource<MqttSession>, timeout_ms: u32) -> WitResult<Option<Message>> {
        let timeout = Duration::from_millis(timeout_ms.into());
        Ok(self
            .table
            .get_mut(&s)?
            .receive(timeout)
            .map(|m| m.map(|m| Message::from(&m)))
            .map_err(Into::into))
    }

    fn disconnect(&mut self, s: Resource<MqttSession>) -> WitResult<()> {
        Ok(self.table.get_mut(&s)?.disconnect().map_err(Into::into))
    }

    fn drop(&mut self, session: Resource<MqttSession>) -> wasmtime::Result<()> {
        self.table.delete(session)?;
        Ok(())
    }
}

impl Host for WasmCaps<'_> {}
