//! gatehost's own MQTT client, over tokio and rustls with rumqttc's packet codec: what the
//! `mqtt` capability's sessions ([`crate::caps::mqtt::MqttSession`]) and the bridge's upstream
//! connections are built on.
//!
//! - [`link`]: one connection driven by its own thread (pings, batched writes, events).
//! - [`wire`]: MQTT 3.1.1 and 5 packets in the link's own terms.
//! - [`inflight`]: the publishes handed to a connection and not yet acknowledged.
//! - [`errors`]: connection failures in one sentence naming the endpoint.

pub(crate) mod errors;
pub(crate) mod inflight;
pub(crate) mod link;
pub(crate) mod wire;

use crate::model::{ErrorKind, PluginError};

pub(crate) use errors::v5_error;
pub(crate) use link::{Link, LinkEvent, LinkOptions, Waker};
pub(crate) use wire::v5_message;

/// Largest payload a plugin may publish: IoT Hub's 256 KB (the largest provider limit).
pub(crate) const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

pub(crate) fn err(kind: ErrorKind, message: String) -> PluginError {
    PluginError::new(kind, message)
}
