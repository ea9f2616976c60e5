//! Rhai registration of the `mqtt` capability: `mqtt::connect(#{host, port, client_id, username,
//! password, keep_alive_secs, clean_session, tls: #{ca_file, client_certificate: #{chain_file,
//! key_ref}, server_name, alpn}, connect_timeout_ms})` or `mqtt::open(connection)` (connect as a
//! flow's connection map describes) returns a `MqttSession` with
//! `subscribe(filter, qos)`, `publish(#{topic, payload, qos, retain})`, `publish_batch([..])`
//! (many in flight, returns when all are acknowledged), `receive(timeout_ms)` (a
//! message map, or `()` on timeout) and `disconnect()`. The session closes when the script drops it.

use super::{ConnectSpec, MqttSession};
use crate::caps::rhai_glue::{message_from_map, message_to_dynamic, plugin_error, RhaiResult};
use crate::caps::CapContext;
use crate::model::{ErrorKind, Message, PluginError};
use rhai::{Dynamic, Engine, Map, Module, INT};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A session as a Rhai value (Rhai values must be `Clone`).
#[derive(Clone)]
pub(crate) struct RhaiSession(Arc<Mutex<MqttSession>>);

impl RhaiSession {
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut MqttSession) -> Result<T, PluginError>,
    ) -> RhaiResult<T> {
        let mut session = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut session).map_err(plugin_error)
    }
}

fn invalid(message: String) -> Box<rhai::EvalAltResult> {
    plugin_error(PluginError::new(ErrorKind::InvalidInput, message))
}

fn message(map: Map) -> RhaiResult<Message> {
    message_from_map(map).map_err(|why| invalid(format!("message: {why}")))
}

pub fn register(engine: &mut Engine, ctx: &CapContext) {
    engine.register_type_with_name::<RhaiSession>("MqttSession");
    engine.register_fn(
        "subscribe",
        |s: &mut RhaiSession, filter: &str, qos: INT| -> RhaiResult<()> {
            let qos =
                u8::try_from(qos).map_err(|_| invalid(format!("QoS {qos} is not 0, 1 or 2")))?;
            s.with(|s| s.subscribe(filter, qos))
        },
    );
    engine.register_fn(
        "publish",
        |s: &mut RhaiSession, msg: Map| -> RhaiResult<()> {
            let msg = message(msg)?;
            s.with(|s| s.publish(&msg))
        },
    );
    engine.register_fn(
        "publish_batch",
        |s: &mut RhaiSession, msgs: rhai::Array| -> RhaiResult<()> {
            let msgs = msgs
                .into_iter()
                .map(|m| {
                    let map = m.try_cast::<Map>().ok_or_else(|| {
                        invalid("publish_batch takes an array of message maps".into())
                    })?;
                    message(map)
                })
                .collect::<RhaiResult<Vec<Message>>>()?;
            s.with(|s| s.publish_batch(&msgs))
        },
    );
    engine.register_fn(
        "receive",
        |s: &mut RhaiSession, timeout_ms: INT| -> RhaiResult<Dynamic> {
            let timeout = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0));
            Ok(match s.with(|s| s.receive(timeout))? {
                Some(msg) => message_to_dynamic(&msg),
                None => Dynamic::UNIT,
            })
        },
    );
    engine.register_fn("disconnect", |s: &mut RhaiSession| -> RhaiResult<()> {
        s.with(|s| s.disconnect())
    });
    engine.register_fn("to_string", |s: &mut RhaiSession| {
        format!("{:?}", s.0.lock().unwrap_or_else(|e| e.into_inner()))
    });

    let mut m = Module::new();
    let c = ctx.clone();
    m.set_native_fn("connect", move |options: Map| -> RhaiResult<RhaiSession> {
        let spec: ConnectSpec = rhai::serde::from_dynamic(&options.into())
            .map_err(|e| invalid(format!("mqtt::connect options: {e}")))?;
        let options = spec.resolve(&c).map_err(plugin_error)?;
        let session = MqttSession::connect(&c, &options).map_err(plugin_error)?;
        Ok(RhaiSession(Arc::new(Mutex::new(session))))
    });
    let c = ctx.clone();
    m.set_native_fn("open", move |conn: Map| -> RhaiResult<RhaiSession> {
        let conn: crate::model::Connection = rhai::serde::from_dynamic(&conn.into())
            .map_err(|e| invalid(format!("mqtt::open connection: {e}")))?;
        let session = MqttSession::open(&c, &conn).map_err(plugin_error)?;
        Ok(RhaiSession(Arc::new(Mutex::new(session))))
    });
    engine.register_static_module("mqtt", m.into());
}
