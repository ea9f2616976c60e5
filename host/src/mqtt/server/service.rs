//! The contract between the server core and a service (the embedded broker, each provider
//! emulator): what a client presented ([`ConnectRequest`]), who it is ([`Identity`]), what the
//! service decides ([`ConnectVerdict`], [`PublishVerdict`]), and the connected client as the
//! service sees it ([`Peer`]).

use super::clients::{qos_of, Clients, Inbox};
use rumqttc::mqttbytes::v4::{ConnectReturnCode, Publish};
use rumqttc::mqttbytes::QoS;
use std::sync::Arc;
use tokio::sync::oneshot;

/// What a client presented in its CONNECT (and TLS handshake).
#[derive(Debug)]
pub(crate) struct ConnectRequest<'a> {
    pub client_id: &'a str,
    pub username: &'a str,
    pub password: &'a str,
    /// The client certificate chain (DER, leaf first); empty without a client certificate.
    pub peer_chain: &'a [Vec<u8>],
}

impl ConnectRequest<'_> {
    /// The refusal for a client id that is not the `expected` one the username names (`what`:
    /// "registration id", "device id"), if it is not.
    pub(crate) fn client_id_refusal(&self, expected: &str, what: &str) -> Option<ConnectVerdict> {
        (self.client_id != expected).then(|| {
            ConnectVerdict::Refuse(
                ConnectReturnCode::BadClientId,
                format!(
                    "client id '{}' is not the {what} '{expected}' of the username",
                    self.client_id
                ),
            )
        })
    }
}

/// Who a connected client is, as the service decided.
#[derive(Debug, Clone)]
pub struct Identity {
    /// For records and logs: `sas:<id>`, `x509:<CN>`.
    pub label: String,
    /// The configured entry (enrollment, device, thing) the client matched, by index.
    pub entry: Option<usize>,
    /// When the credentials expire (unix seconds): the session is closed then, as IoT Hub
    /// closes a connection whose SAS token expires.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// A client identified as `label`, matching configured entry `entry`, whose credentials do
    /// not expire while it is connected.
    pub fn new(label: String, entry: Option<usize>) -> Identity {
        Identity {
            label,
            entry,
            expires_at: None,
        }
    }
}

pub(crate) enum ConnectVerdict {
    /// CONNACK accepted. `Err` = the connection is accepted but not authenticated (DPS answers
    /// such a client's requests with 401); the reason is kept for the records.
    Accept(Result<Identity, String>),
    /// CONNACK with a refusal code, then close.
    Refuse(ConnectReturnCode, String),
    /// Close without a CONNACK (as MindConnect does while it provisions an agent).
    Close(String),
}

pub(crate) enum PublishVerdict {
    /// Acknowledge (QoS 1) and carry on.
    Accept,
    /// Acknowledge, and deliver the message to every client subscribed to its topic (a broker).
    Route,
    /// Deliver the message to subscribed clients now and acknowledge it (QoS 1 and 2) once the
    /// receiver says `Ok` — after the service persisted it. `Err` closes the connection with
    /// that reason, unacknowledged, so the client sends the message again. Acknowledgements
    /// keep the order of the publishes, and a client with [`MAX_UNACKED`] messages waiting is
    /// not read from until the oldest is settled.
    Deferred(oneshot::Receiver<Result<(), String>>),
    /// Close the connection, as IoT Hub does on a publish to a topic it does not serve.
    Disconnect(String),
}

/// A connected client, as services see it.
pub(crate) struct Peer {
    pub client_id: String,
    pub auth: Result<Identity, String>,
    pub(super) inbox: Inbox,
    pub(super) clients: Arc<Clients>,
}

impl Peer {
    /// The label for records: the identity, or `unauthenticated`.
    pub fn label(&self) -> Option<&str> {
        self.auth.as_ref().ok().map(|i| i.label.as_str())
    }

    /// Send a message to this client only (if it subscribed to a matching filter).
    pub fn reply(&self, topic: String, payload: Vec<u8>) {
        self.inbox.offer(&topic, || payload, QoS::AtMostOnce);
    }

    /// Deliver a message to every client subscribed to `topic` (QoS 0 or 1).
    pub(crate) fn broadcast(&self, topic: &str, payload: &[u8], qos: u8) {
        self.clients.broadcast(topic, payload, qos_of(qos));
    }

    /// Keep `payload` as `topic`'s retained message (empty: clear it); `Err` says why not.
    pub fn retain(
        &self,
        topic: &str,
        payload: &[u8],
        qos: u8,
    ) -> Result<(), super::retained::RetainError> {
        self.clients.retained.keep(topic, payload, qos_of(qos))
    }
}

/// How many publishes of one client may wait for their acknowledgement (see
/// [`PublishVerdict::Deferred`]) before the server stops reading from it.
pub(crate) const MAX_UNACKED: usize = 1024;

/// The decisions one emulated provider makes.
pub(crate) trait MqttService: Send + Sync + 'static {
    /// `dps`, `iothub`, ... (for records).
    fn name(&self) -> &'static str;
    fn connect(&self, request: &ConnectRequest<'_>) -> ConnectVerdict;
    /// The QoS granted, or why the subscription is refused (SUBACK failure).
    fn subscribe(&self, peer: &Peer, filter: &str, qos: u8) -> Result<u8, String>;
    fn publish(&self, peer: &Peer, publish: &Publish) -> PublishVerdict;
    /// The highest QoS clients may publish with; a QoS 2 publish above it closes the connection.
    fn max_qos(&self) -> u8 {
        1
    }
    /// The largest packet accepted; a larger one closes the connection.
    fn max_packet(&self) -> usize {
        super::MAX_PACKET
    }
    /// A connection was closed because the client broke the protocol (`cause`: a short,
    /// constant phrase for counting; `detail`: the sentence that was recorded).
    fn protocol_error(&self, cause: &'static str, detail: &str) {
        let _ = (cause, detail);
    }
    /// Whether the server keeps retained messages and hands them to new subscriptions (a
    /// broker does; the emulated cloud services do not).
    fn retains(&self) -> bool {
        false
    }
    /// A retained message was not kept (a limit of [`super::retained`]); `detail` says which and why.
    fn retained_refused(&self, detail: &str) {
        let _ = detail;
    }
    /// Whether clients may keep a session while they are away (CleanSession = 0: their
    /// subscriptions and the QoS 1 messages for them wait, see [`super::sessions`]); a broker does.
    fn keeps_sessions(&self) -> bool {
        false
    }
    /// A message was not kept for an absent client (a limit of [`super::sessions`]); `detail` says
    /// which and why.
    fn session_message_dropped(&self, detail: &str) {
        let _ = detail;
    }
    /// A message was not delivered to a connected client whose inbox is full.
    fn outgoing_dropped(&self, detail: &str) {
        let _ = detail;
    }
}
