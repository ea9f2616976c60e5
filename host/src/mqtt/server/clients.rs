//! The clients a server knows: the connected ones by client id, each with its [`Inbox`] (its
//! subscriptions and the bounded queue of messages for it), the sessions absent clients left,
//! and the retained messages.

use super::service::MqttService;
use super::subscriptions::{delivery_qos, Subscriptions};
use super::{retained, sessions};
use rumqttc::mqttbytes::QoS;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Where a connected client's messages go: its connection's command channel, behind its
/// subscriptions (shared by the connection, which keeps them, and [`Clients`]). A message is
/// checked against the filters once, when it is offered; the connection delivers what it gets.
#[derive(Clone)]
pub(crate) struct Inbox {
    pub(super) commands: mpsc::UnboundedSender<Command>,
    pub(super) filters: Arc<Mutex<Subscriptions>>,
    /// Messages offered and not yet taken by the connection: bounded, so a client that does
    /// not read (its socket full) cannot make the server buffer without end.
    pub(super) queued: Arc<Queued>,
    pub(super) client_id: Arc<str>,
    pub(super) service: Arc<dyn MqttService>,
}

/// What waits in one client's inbox.
#[derive(Default)]
pub(super) struct Queued {
    messages: std::sync::atomic::AtomicUsize,
    bytes: std::sync::atomic::AtomicUsize,
}

/// Messages waiting for one connected client at most (mosquitto's `max_queued_messages`
/// default); more are dropped for that client and counted.
pub(crate) const MAX_QUEUED: usize = 1000;
/// Payload bytes waiting for one connected client at most.
pub(crate) const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;

impl Inbox {
    /// Queue a message for the client if it subscribed to a filter matching `topic` (at the
    /// QoS granted for it at most); false when it did not or its connection is gone.
    /// A client whose inbox is full ([`MAX_QUEUED`], [`MAX_QUEUED_BYTES`]) does not get it; the
    /// service is told.
    pub(super) fn offer(&self, topic: &str, payload: impl FnOnce() -> Vec<u8>, qos: QoS) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(qos) = delivery_qos(&self.filters(), topic, qos) else {
            return false;
        };
        let payload = payload();
        let (waiting, bytes) = (
            self.queued.messages.load(Relaxed),
            self.queued.bytes.load(Relaxed),
        );
        if waiting >= MAX_QUEUED || bytes + payload.len() > MAX_QUEUED_BYTES {
            self.service.outgoing_dropped(&format!(
                "a message on '{topic}' was not delivered to client '{}': {waiting} messages \
                 ({bytes} bytes) already wait for it (it reads too slowly, or not at all)",
                self.client_id
            ));
            return false;
        }
        self.queued.messages.fetch_add(1, Relaxed);
        self.queued.bytes.fetch_add(payload.len(), Relaxed);
        self.commands
            .send(Command::Publish {
                topic: topic.to_string(),
                payload,
                qos,
            })
            .is_ok()
    }

    /// The connection took a message of `len` bytes from the inbox.
    pub(super) fn taken(&self, len: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.queued.messages.fetch_sub(1, Relaxed);
        self.queued.bytes.fetch_sub(len, Relaxed);
    }

    pub(super) fn filters(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        self.filters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(super) enum Command {
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: QoS,
    },
    Kick(String),
}

/// A connected client: which connection it is on, and its inbox.
pub(super) struct Client {
    pub(super) connection: u64,
    pub(super) inbox: Inbox,
}

/// Connected clients by client id (one connection per id), and the sessions of absent ones.
/// Lock order: `by_id`, then `sessions` — a client moves between the two under both locks, so a
/// message reaches it in exactly one of them.
pub(crate) struct Clients {
    pub(super) by_id: Mutex<HashMap<String, Client>>,
    pub(super) sessions: Mutex<sessions::Sessions>,
    /// Retained messages, for services that keep them ([`MqttService::retains`]).
    pub(super) retained: retained::Retained,
    pub(super) service: Arc<dyn MqttService>,
}

impl Clients {
    pub(super) fn new(service: Arc<dyn MqttService>) -> Clients {
        Clients {
            by_id: Mutex::default(),
            sessions: Mutex::default(),
            retained: retained::Retained::default(),
            service,
        }
    }

    /// Hand a message to every connected client subscribed to a filter matching `topic` (the
    /// others are not woken: a publish costs the same however many clients only publish), and
    /// keep it for the absent ones whose sessions subscribed to it.
    pub(super) fn broadcast(&self, topic: &str, payload: &[u8], qos: QoS) {
        let clients = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        for client in clients.values() {
            client.inbox.offer(topic, || payload.to_vec(), qos);
        }
        if !self.service.keeps_sessions() {
            return;
        }
        let full = self.sessions().offer(topic, payload, qos);
        for client_id in full {
            self.service.session_message_dropped(&format!(
                "the message on '{topic}' was not kept for absent client '{client_id}': its \
                 session holds {} messages already",
                sessions::MAX_WAITING
            ));
        }
    }

    pub(super) fn sessions(&self) -> std::sync::MutexGuard<'_, sessions::Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until the connected clients are as `done` says (connections end on their own
    /// tasks), or `wait` passed.
    pub(super) async fn wait_until(
        &self,
        wait: Duration,
        done: impl Fn(&HashMap<String, Client>) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            if done(&self.by_id.lock().unwrap_or_else(|e| e.into_inner())) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

pub(super) fn qos_of(level: u8) -> QoS {
    if level == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}
