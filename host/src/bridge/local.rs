//! The local side's decisions: every local message goes through the rules whose filters match
//! it ([`LocalService::route`]); what they send upstream is stored in the queue (with any dead
//! letters) before the publisher gets its acknowledgement ([`LocalService::store`]); what they
//! send back to the local broker is delivered at once. As the embedded broker's service it also
//! delivers every publish to local subscribers, like any broker; on an external broker
//! (`external.rs`) the broker does that.

use super::chain::Current;
use super::commit::{Batch, Committer};
use super::log_once::LogOnce;
use super::metrics::Metrics;
use super::queue::{now_ms, DeadLetter};
use crate::config::Config;
use crate::model::{Destination, Message};
use crate::mqtt::client::MAX_PAYLOAD_BYTES;
use crate::mqtt::server::{
    ConnectRequest, ConnectVerdict, Identity, MqttService, Peer, PublishVerdict,
};
use crate::mqtt::topic::validate_topic_filter;
use rumqttc::mqttbytes::v4::Publish;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::oneshot;

pub(crate) struct LocalService {
    pub current: Current,
    pub committer: Committer,
    pub metrics: Arc<Metrics>,
    pub log: Arc<LogOnce>,
    pub max_packet: usize,
}

/// Why `m`, translated for `device`, cannot go upstream (the dead-letter cause and one
/// sentence), if it cannot.
pub(crate) fn upstream_refusal(
    config: &Config,
    device: &str,
    m: &Message,
) -> Option<(&'static str, String)> {
    if let Err(why) = device_known(config, device) {
        return Some(("unknown device", why));
    }
    if m.payload.len() > MAX_PAYLOAD_BYTES {
        let why = format!(
            "the message for '{device}' has {} bytes, over the upstream limit of {MAX_PAYLOAD_BYTES}",
            m.payload.len()
        );
        return Some(("too large", why));
    }
    None
}

/// `m` as it is queued for a device: IoT Hub and most clouds take QoS 0 and 1 only; retain is
/// a local-broker notion.
pub(crate) fn as_queued(mut m: Message) -> Message {
    m.qos = m.qos.min(1);
    m.retain = false;
    m
}

/// Whether messages for `device` can go upstream: it is listed, or a template takes it.
fn device_known(config: &Config, device: &str) -> Result<(), String> {
    if config.devices.iter().any(|d| d.name == device) {
        return Ok(());
    }
    match config.device_templates.iter().find(|t| t.matches(device)) {
        Some(template) => template
            .instantiate(device)
            .map(drop)
            .map_err(|e| e.to_string()),
        None => Err(format!(
            "no device '{device}' in the config and no [[device_templates]] match it"
        )),
    }
}

/// Where a dead letter's message was when it was set aside.
struct SetAside<'a> {
    rule: &'a str,
    /// The device it was translated for.
    device: Option<&'a str>,
    origin: Origin<'a>,
}

impl LocalService {
    fn dead_letter(
        &self,
        batch: &mut Batch,
        at: SetAside<'_>,
        cause: &str,
        reason: String,
        message: Message,
    ) {
        let rule = at.rule;
        self.metrics.dead_lettered.inc(&[rule, cause]);
        self.log.warn(
            &format!("dead letter {rule} {cause}"),
            &format!(
                "rule '{rule}': {reason}; the message from '{}' was dead-lettered",
                message.topic
            ),
        );
        batch.dead_letters.push(DeadLetter {
            at_ms: now_ms(),
            rule: rule.to_string(),
            cause: cause.to_string(),
            reason,
            message,
            device: at.device.map(str::to_string),
            from_cloud: match at.origin {
                Origin::Local => None,
                Origin::Cloud { device } => Some(device.to_string()),
            },
        });
    }
}

/// Publishes to the local broker from outside a local connection (cloud-to-device messages):
/// the embedded server, or the session on an external broker.
pub(crate) trait LocalOut: Send + Sync {
    fn publish(&self, message: &Message) -> Result<(), String>;
}

impl LocalOut for crate::mqtt::server::MqttServer {
    fn publish(&self, m: &Message) -> Result<(), String> {
        crate::mqtt::server::MqttServer::publish(self, &m.topic, &m.payload, m.qos.min(1));
        if m.retain {
            self.retain(&m.topic, &m.payload, m.qos)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Where a message came from.
#[derive(Clone, Copy)]
pub(crate) enum Origin<'a> {
    /// A local client (the rules' `from` filters apply).
    Local,
    /// A device's cloud session (the rules' `from_cloud` filters apply).
    Cloud { device: &'a str },
}

/// What the rules made of one message.
pub(crate) struct Routed {
    /// Messages for devices and dead letters, to be stored before the acknowledgement.
    pub batch: Batch,
    /// Messages for the local broker.
    pub to_local: Vec<Message>,
}

impl LocalService {
    /// Run `message` through every rule that receives it from `origin`.
    pub(crate) fn route(&self, message: Message, origin: Origin<'_>) -> Routed {
        let running = self.current.get();
        match origin {
            Origin::Local => {
                self.metrics.received.fetch_add(1, Ordering::Relaxed);
            }
            Origin::Cloud { device } => self.metrics.from_cloud.inc(&[device]),
        }
        let from_cloud = matches!(origin, Origin::Cloud { .. });
        let mut batch = Batch {
            messages: Vec::new(),
            dead_letters: Vec::new(),
            done: None,
        };
        let mut to_local = Vec::new();
        let mut matched = false;
        for rule in running.chain.matching(&message.topic, from_cloud) {
            matched = true;
            self.metrics.translated.inc(&[&rule.name]);
            let outputs = match super::isolation::run(rule.isolation.as_deref(), &rule.name, || {
                rule.plugin.translate(&message)
            }) {
                Ok(outputs) => outputs,
                Err(e) => {
                    let reason = format!("{} failed: {e}", rule.source);
                    let at = SetAside {
                        rule: &rule.name,
                        device: None,
                        origin,
                    };
                    self.dead_letter(&mut batch, at, "rule error", reason, message.clone());
                    continue;
                }
            };
            for out in outputs {
                let m = out.message;
                match out.destination {
                    Destination::Local => {
                        self.metrics.to_local.inc(&[&rule.name]);
                        to_local.push(m);
                    }
                    Destination::Upstream(device) => {
                        match upstream_refusal(&running.config, &device, &m) {
                            Some((cause, why)) => {
                                let at = SetAside {
                                    rule: &rule.name,
                                    device: Some(&device),
                                    origin,
                                };
                                self.dead_letter(&mut batch, at, cause, why, m);
                            }
                            None => batch.messages.push((device, as_queued(m))),
                        }
                    }
                }
            }
        }
        match origin {
            _ if matched => {}
            Origin::Cloud { device } => {
                let reason = format!(
                    "the cloud message for '{device}' on '{}' matches no rule's from_cloud",
                    message.topic
                );
                let at = SetAside {
                    rule: "",
                    device: None,
                    origin,
                };
                self.dead_letter(&mut batch, at, "no rule", reason, message);
            }
            Origin::Local => {
                self.metrics.unrouted.fetch_add(1, Ordering::Relaxed);
                let why = format!(
                    "'{}' matches no rule: delivered to local subscribers only \
                     (counted in gatehost_messages_unrouted_total)",
                    message.topic
                );
                self.log.warn("unrouted", &why);
            }
        }
        Routed { batch, to_local }
    }

    /// Route a cloud-to-device message from `device`'s session: what rules send `local` is
    /// published through `out`, what they send upstream is queued, one that no rule takes is
    /// dead-lettered.
    pub fn cloud_message(&self, device: &str, message: Message, out: &dyn LocalOut) {
        let routed = self.route(message, Origin::Cloud { device });
        self.publish_local(&routed.to_local, out, &format!("the cloud of '{device}'"));
        if let Err(why) = self.store(routed.batch) {
            self.log.warn("from cloud store", &why);
        }
    }

    /// Publish what rules sent `local` through `out`; what it does not take is logged (`from`
    /// names where the messages came from).
    pub(crate) fn publish_local(&self, messages: &[Message], out: &dyn LocalOut, from: &str) {
        for m in messages {
            if let Err(why) = out.publish(m) {
                self.log.warn(
                    &format!("local publish from {from}"),
                    &format!(
                        "a message for '{}' from {from} was not published locally: {why}",
                        m.topic
                    ),
                );
            }
        }
    }

    /// Hand `batch` to the next commit: `Ok(None)` when there is nothing to store (acknowledge
    /// at once), else what says when it is stored; `Err` when the queue is closed.
    pub fn store(
        &self,
        mut batch: Batch,
    ) -> Result<Option<oneshot::Receiver<Result<(), String>>>, String> {
        if batch.messages.is_empty() && batch.dead_letters.is_empty() {
            return Ok(None);
        }
        let (done, settled) = oneshot::channel();
        batch.done = Some(done);
        self.committer.submit(batch).map(|()| Some(settled))
    }
}

impl MqttService for LocalService {
    fn name(&self) -> &'static str {
        "local"
    }

    fn connect(&self, request: &ConnectRequest<'_>) -> ConnectVerdict {
        ConnectVerdict::Accept(Ok(Identity::new(
            format!("local:{}", request.client_id),
            None,
        )))
    }

    fn subscribe(&self, _session: &Peer, filter: &str, qos: u8) -> Result<u8, String> {
        validate_topic_filter(filter).map_err(|why| format!("topic filter '{filter}' {why}"))?;
        Ok(qos.min(1))
    }

    fn publish(&self, session: &Peer, p: &Publish) -> PublishVerdict {
        let routed = self.route(
            Message {
                topic: p.topic.clone(),
                payload: p.payload.to_vec(),
                qos: p.qos as u8,
                retain: p.retain,
                properties: Vec::new(),
            },
            Origin::Local,
        );
        for m in &routed.to_local {
            session.broadcast(&m.topic, &m.payload, m.qos);
            if m.retain {
                if let Err(why) = session.retain(&m.topic, &m.payload, m.qos) {
                    self.retained_refused(&why.to_string());
                }
            }
        }
        match self.store(routed.batch) {
            Ok(None) => PublishVerdict::Route,
            Ok(Some(settled)) => PublishVerdict::Deferred(settled),
            Err(why) => PublishVerdict::Disconnect(why),
        }
    }

    fn max_qos(&self) -> u8 {
        2
    }

    fn max_packet(&self) -> usize {
        self.max_packet
    }

    fn retains(&self) -> bool {
        true
    }

    fn keeps_sessions(&self) -> bool {
        true
    }

    fn session_message_dropped(&self, detail: &str) {
        self.metrics.session_dropped.fetch_add(1, Ordering::Relaxed);
        self.log.warn("local session", detail);
    }

    fn outgoing_dropped(&self, detail: &str) {
        self.metrics
            .outgoing_dropped
            .fetch_add(1, Ordering::Relaxed);
        self.log.warn("local slow subscriber", detail);
    }

    fn retained_refused(&self, detail: &str) {
        self.metrics
            .retained_refused
            .fetch_add(1, Ordering::Relaxed);
        self.log.warn("local retained", detail);
    }

    fn protocol_error(&self, cause: &'static str, detail: &str) {
        self.metrics.protocol_errors.inc(&[cause]);
        self.log.warn(
            &format!("local {cause}"),
            &format!("a local client: {detail}"),
        );
    }
}
