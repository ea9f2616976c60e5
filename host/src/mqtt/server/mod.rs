//! The MQTT 3.1.1 server core of the sandbox's emulated services and of the bridge's embedded
//! local broker, built on rumqttc's packet codec (`rumqttc::mqttbytes::v4`) over tokio, plain TCP
//! or rustls. It owns the protocol mechanics — TLS, CONNECT/CONNACK, keep-alive, SUBACK, PUBACK,
//! QoS 0/1/2 in, one connection per client id, delivery to subscribed clients only, persistent
//! sessions for the services that keep them ([`sessions`]), and
//! acknowledgements held back until the service says the message is safe (persisted) — and asks
//! an [`MqttService`] for every decision (who may connect, which subscriptions and publishes are
//! allowed, what to answer).

mod jsonl;
mod retained;
mod sessions;

use crate::mqtt::topic::{filter_matches, valid_topic_name};
use crate::record::{Record, Recorder};
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, LastWill, Packet, PubAck, Publish, SubAck, SubscribeReasonCode,
};
use rumqttc::mqttbytes::{Error as CodecError, Protocol, QoS};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Largest packet accepted: IoT Hub's 256 KB message plus room for topic and properties.
pub const MAX_PACKET: usize = 256 * 1024 + 16 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client presented in its CONNECT (and TLS handshake).
#[derive(Debug)]
pub struct ConnectRequest<'a> {
    pub client_id: &'a str,
    pub username: &'a str,
    pub password: &'a str,
    /// The client certificate chain (DER, leaf first); empty without a client certificate.
    pub peer_chain: &'a [Vec<u8>],
    pub clean_session: bool,
}

impl ConnectRequest<'_> {
    /// The refusal for a client id that is not the `expected` one the username names (`what`:
    /// "registration id", "device id"), if it is not.
    pub fn client_id_refusal(&self, expected: &str, what: &str) -> Option<ConnectVerdict> {
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

pub enum ConnectVerdict {
    /// CONNACK accepted. `Err` = the connection is accepted but not authenticated (DPS answers
    /// such a client's requests with 401); the reason is kept for the records.
    Accept(Result<Identity, String>),
    /// CONNACK with a refusal code, then close.
    Refuse(ConnectReturnCode, String),
    /// Close without a CONNACK (as MindConnect does while it provisions an agent).
    Close(String),
}

pub enum PublishVerdict {
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
pub struct Session {
    pub client_id: String,
    pub auth: Result<Identity, String>,
    inbox: Inbox,
    clients: Arc<Clients>,
}

/// Where a connected client's messages go: its connection's command channel, behind its
/// subscriptions (shared by the connection, which keeps them, and [`Clients`]). A message is
/// checked against the filters once, when it is offered; the connection delivers what it gets.
#[derive(Clone)]
struct Inbox {
    commands: mpsc::UnboundedSender<Command>,
    filters: Arc<Mutex<Subscriptions>>,
    /// Messages offered and not yet taken by the connection: bounded, so a client that does
    /// not read (its socket full) cannot make the server buffer without end.
    queued: Arc<Queued>,
    client_id: Arc<str>,
    service: Arc<dyn MqttService>,
}

/// What waits in one client's inbox.
#[derive(Default)]
struct Queued {
    messages: std::sync::atomic::AtomicUsize,
    bytes: std::sync::atomic::AtomicUsize,
}

/// Messages waiting for one connected client at most (mosquitto's `max_queued_messages`
/// default); more are dropped for that client and counted.
pub const MAX_QUEUED: usize = 1000;
/// Payload bytes waiting for one connected client at most.
pub const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;

/// A client's subscriptions: each filter with the QoS granted for it.
type Subscriptions = Vec<(String, QoS)>;

/// The QoS a message published at `qos` on `topic` is delivered with to a client with
/// `subscriptions` (the lower of the two, the highest over its matching filters), or `None`
/// when none matches.
fn delivery_qos(subscriptions: &[(String, QoS)], topic: &str, qos: QoS) -> Option<QoS> {
    let granted = subscriptions
        .iter()
        .filter(|(filter, _)| filter_matches(filter, topic))
        .map(|(_, granted)| *granted)
        .reduce(|a, b| if b > a { b } else { a })?;
    Some(if granted < qos { granted } else { qos })
}

impl Inbox {
    /// Queue a message for the client if it subscribed to a filter matching `topic` (at the
    /// QoS granted for it at most); false when it did not or its connection is gone.
    /// A client whose inbox is full ([`MAX_QUEUED`], [`MAX_QUEUED_BYTES`]) does not get it; the
    /// service is told.
    fn offer(&self, topic: &str, payload: impl FnOnce() -> Vec<u8>, qos: QoS) -> bool {
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
    fn taken(&self, len: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.queued.messages.fetch_sub(1, Relaxed);
        self.queued.bytes.fetch_sub(len, Relaxed);
    }

    fn filters(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        self.filters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Session {
    /// The label for records: the identity, or `unauthenticated`.
    pub fn label(&self) -> Option<&str> {
        self.auth.as_ref().ok().map(|i| i.label.as_str())
    }

    /// Send a message to this client only (if it subscribed to a matching filter).
    pub fn reply(&self, topic: String, payload: Vec<u8>) {
        self.inbox.offer(&topic, || payload, QoS::AtMostOnce);
    }

    /// Deliver a message to every client subscribed to `topic` (QoS 0 or 1).
    pub fn broadcast(&self, topic: &str, payload: &[u8], qos: u8) {
        self.clients.broadcast(topic, payload, qos_of(qos));
    }

    /// Keep `payload` as `topic`'s retained message (empty: clear it); `Err` says why not.
    pub fn retain(&self, topic: &str, payload: &[u8], qos: u8) -> Result<(), String> {
        self.clients.retained.keep(topic, payload, qos_of(qos))
    }
}

/// Why a session ended when the client sent DISCONNECT (then its will is not published).
const CLIENT_DISCONNECTED: &str = "the client disconnected";
/// Why a session ended when the server closed it to stop (its will is not published either).
const SERVER_STOPPING: &str = "the server is stopping";
/// Why a session ended when a newer connection with its client id came.
const TAKEN_OVER: &str = "a newer connection with the same client id took over";

/// How many publishes of one client may wait for their acknowledgement (see
/// [`PublishVerdict::Deferred`]) before the server stops reading from it.
pub const MAX_UNACKED: usize = 1024;

/// The decisions one emulated provider makes.
pub trait MqttService: Send + Sync + 'static {
    /// `dps`, `iothub`, ... (for records).
    fn name(&self) -> &'static str;
    fn connect(&self, request: &ConnectRequest<'_>) -> ConnectVerdict;
    /// The QoS granted, or why the subscription is refused (SUBACK failure).
    fn subscribe(&self, session: &Session, filter: &str, qos: u8) -> Result<u8, String>;
    fn publish(&self, session: &Session, publish: &Publish) -> PublishVerdict;
    /// The highest QoS clients may publish with; a QoS 2 publish above it closes the connection.
    fn max_qos(&self) -> u8 {
        1
    }
    /// The largest packet accepted; a larger one closes the connection.
    fn max_packet(&self) -> usize {
        MAX_PACKET
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
    /// A retained message was not kept (a limit of [`retained`]); `detail` says which and why.
    fn retained_refused(&self, detail: &str) {
        let _ = detail;
    }
    /// Whether clients may keep a session while they are away (CleanSession = 0: their
    /// subscriptions and the QoS 1 messages for them wait, see [`sessions`]); a broker does.
    fn keeps_sessions(&self) -> bool {
        false
    }
    /// A message was not kept for an absent client (a limit of [`sessions`]); `detail` says
    /// which and why.
    fn session_message_dropped(&self, detail: &str) {
        let _ = detail;
    }
    /// A message was not delivered to a connected client whose inbox is full.
    fn outgoing_dropped(&self, detail: &str) {
        let _ = detail;
    }
}

enum Command {
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: QoS,
    },
    Kick(String),
}

/// A connected client: which connection it is on, and its inbox.
struct Client {
    connection: u64,
    inbox: Inbox,
}

/// Connected clients by client id (one connection per id), and the sessions of absent ones.
/// Lock order: `by_id`, then `sessions` — a client moves between the two under both locks, so a
/// message reaches it in exactly one of them.
struct Clients {
    by_id: Mutex<HashMap<String, Client>>,
    sessions: Mutex<sessions::Sessions>,
    /// Retained messages, for services that keep them ([`MqttService::retains`]).
    retained: retained::Retained,
    service: Arc<dyn MqttService>,
}

impl Clients {
    fn new(service: Arc<dyn MqttService>) -> Clients {
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
    fn broadcast(&self, topic: &str, payload: &[u8], qos: QoS) {
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

    fn sessions(&self) -> std::sync::MutexGuard<'_, sessions::Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until the connected clients are as `done` says (connections end on their own
    /// tasks), or `wait` passed.
    async fn wait_until(&self, wait: Duration, done: impl Fn(&HashMap<String, Client>) -> bool) {
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            if done(&self.by_id.lock().unwrap_or_else(|e| e.into_inner())) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn qos_of(level: u8) -> QoS {
    if level == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// A running server.
pub struct MqttServer {
    pub port: u16,
    clients: Arc<Clients>,
}

impl MqttServer {
    /// Listen on `addr` (port 0 = any free port) and serve `service` on the current tokio runtime.
    /// Without `tls`, clients connect over plain TCP.
    pub async fn start(
        addr: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
        service: Arc<dyn MqttService>,
        recorder: Arc<Recorder>,
    ) -> std::io::Result<MqttServer> {
        let listener = TcpListener::bind(addr).await?;
        let port = listener.local_addr()?.port();
        let clients = Arc::new(Clients::new(service.clone()));
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let shared = clients.clone();
        tokio::spawn(async move {
            let ids = AtomicU64::new(1);
            loop {
                let Ok((tcp, _peer)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let conn = Connection {
                    id: ids.fetch_add(1, Ordering::Relaxed),
                    service: service.clone(),
                    clients: shared.clone(),
                    recorder: recorder.clone(),
                };
                let acceptor = acceptor.clone();
                tokio::spawn(conn.serve(tcp, acceptor));
            }
        });
        Ok(MqttServer { port, clients })
    }

    /// Publish to the connected client `client_id` (delivered if it subscribed to a matching
    /// filter). False when that client is not connected.
    pub fn send_to(&self, client_id: &str, topic: &str, payload: &[u8], qos: u8) -> bool {
        let clients = self.clients.by_id.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .get(client_id)
            .is_some_and(|client| client.inbox.offer(topic, || payload.to_vec(), qos_of(qos)))
    }

    /// Publish to every connected client subscribed to `topic` (QoS 0 or 1), as a broker's
    /// own message.
    pub fn publish(&self, topic: &str, payload: &[u8], qos: u8) {
        self.clients.broadcast(topic, payload, qos_of(qos));
    }

    /// Keep `payload` as `topic`'s retained message (empty: clear it); `Err` says why not.
    pub fn retain(&self, topic: &str, payload: &[u8], qos: u8) -> Result<(), String> {
        self.clients.retained.keep(topic, payload, qos_of(qos))
    }

    /// Save the retained messages to `path` if they changed ([`retained::Retained::save`]).
    pub fn save_retained(&self, path: &std::path::Path) -> std::io::Result<bool> {
        self.clients.retained.save(path)
    }

    /// Retain the messages saved in `path` ([`retained::Retained::load`]).
    pub fn load_retained(&self, path: &std::path::Path) -> std::io::Result<(usize, Vec<String>)> {
        self.clients.retained.load(path)
    }

    /// Close every client's connection (no wills are published) and wait up to `wait` for them
    /// to end, so the persistent sessions among them are kept ([`MqttServer::save_sessions`]).
    pub async fn close_all(&self, wait: Duration) {
        {
            let clients = self.clients.by_id.lock().unwrap_or_else(|e| e.into_inner());
            for client in clients.values() {
                let _ = client
                    .inbox
                    .commands
                    .send(Command::Kick(SERVER_STOPPING.into()));
            }
        }
        self.clients.wait_until(wait, HashMap::is_empty).await;
    }

    /// Save the absent clients' sessions to `path` ([`sessions::Sessions::save`]): how many
    /// sessions and messages.
    pub fn save_sessions(&self, path: &std::path::Path) -> std::io::Result<(usize, usize)> {
        self.clients.sessions().save(path)
    }

    /// Keep the sessions saved in `path` ([`sessions::Sessions::load`]).
    pub fn load_sessions(&self, path: &std::path::Path) -> std::io::Result<(usize, Vec<String>)> {
        self.clients.sessions().load(path)
    }

    /// Whether `client_id` is connected now.
    pub fn is_connected(&self, client_id: &str) -> bool {
        let clients = self.clients.by_id.lock().unwrap_or_else(|e| e.into_inner());
        clients.contains_key(client_id)
    }
}

struct Connection {
    id: u64,
    service: Arc<dyn MqttService>,
    clients: Arc<Clients>,
    recorder: Arc<Recorder>,
}

#[derive(Debug)]
enum ReadError {
    Eof,
    Io(std::io::Error),
    Codec(CodecError),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Eof => write!(f, "the connection closed"),
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Codec(e) => write!(f, "{e:?}"),
        }
    }
}

async fn read_packet<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max_packet: usize,
) -> Result<Packet, ReadError> {
    loop {
        // rumqttc's 3.1.1 codec half-parses MQTT 5 CONNECTs; answer them by their level instead.
        if let Some(level) = connect_protocol_level(buf).filter(|l| *l != 4) {
            return Err(ReadError::Codec(CodecError::InvalidProtocolLevel(level)));
        }
        match Packet::read(buf, max_packet) {
            Ok(packet) => return Ok(packet),
            Err(CodecError::InsufficientBytes(_)) => {}
            Err(e) => return Err(ReadError::Codec(e)),
        }
        match reader.read_buf(buf).await {
            Ok(0) => return Err(ReadError::Eof),
            Ok(_) => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

/// The protocol level of the CONNECT at the start of `buf`, once enough of it has arrived.
fn connect_protocol_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let mut i = 1;
    while buf.get(i)? & 0x80 != 0 {
        i += 1;
        if i > 4 {
            return None;
        }
    }
    i += 1;
    let name_len = u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]) as usize;
    buf.get(i + 2 + name_len).copied()
}

/// How long a connection taking over a client id waits for the older one to end.
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

/// What the server sends one client: packet ids, and for a persistent session the QoS 1
/// messages sent and not yet acknowledged (sent again when the session resumes).
struct Delivery {
    persistent: bool,
    last_pkid: u16,
    sent: VecDeque<Publish>,
}

impl Delivery {
    /// Queue `publish` in `out`; `true` when the oldest unacknowledged message was let go to
    /// keep at most [`sessions::MAX_WAITING`].
    fn queue(&mut self, mut publish: Publish, out: &mut BytesMut) -> bool {
        if publish.qos != QoS::AtMostOnce && publish.pkid == 0 {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            publish.pkid = self.last_pkid;
        }
        if !self.persistent || publish.qos == QoS::AtMostOnce {
            queue_packet(out, Packet::Publish(publish));
            return false;
        }
        queue_packet(out, Packet::Publish(publish.clone()));
        self.sent.push_back(publish);
        if self.sent.len() <= sessions::MAX_WAITING {
            return false;
        }
        self.sent.pop_front();
        true
    }

    /// The client acknowledged `pkid`.
    fn acked(&mut self, pkid: u16) {
        if let Some(i) = self.sent.iter().position(|p| p.pkid == pkid) {
            self.sent.remove(i);
        }
    }
}

/// A publish waiting for the service to settle it.
struct Unacked {
    pkid: u16,
    qos: QoS,
    settled: oneshot::Receiver<Result<(), String>>,
}

/// Queue the acknowledgement of a publish the service has settled, or say why the connection
/// must close.
fn settle(done: Unacked, result: Result<(), String>, out: &mut BytesMut) -> Result<(), String> {
    result?;
    queue_ack(out, done.qos, done.pkid);
    Ok(())
}

/// Acknowledge a publish that needs no settling, behind the deferred ones still waiting (the
/// acknowledgements go out in the order of the publishes).
fn ack_in_order(unacked: &mut VecDeque<Unacked>, out: &mut BytesMut, qos: QoS, pkid: u16) {
    if qos == QoS::AtMostOnce || unacked.is_empty() {
        queue_ack(out, qos, pkid);
        return;
    }
    let (tx, settled) = oneshot::channel();
    let _ = tx.send(Ok(()));
    unacked.push_back(Unacked { pkid, qos, settled });
}

/// PUBACK for QoS 1, PUBREC for QoS 2 (the client then releases it), nothing for QoS 0.
fn queue_ack(out: &mut BytesMut, qos: QoS, pkid: u16) {
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => queue_packet(out, Packet::PubAck(PubAck::new(pkid))),
        QoS::ExactlyOnce => {
            let rec = rumqttc::mqttbytes::v4::PubRec::new(pkid);
            queue_packet(out, Packet::PubRec(rec))
        }
    }
}

/// Encode `packet` at the end of `out`. A packet the codec cannot encode is left out with a
/// log line (the packets queued here are built by this server and always encode).
fn queue_packet(out: &mut BytesMut, packet: Packet) {
    let mark = out.len();
    if let Err(e) = packet.write(out, usize::MAX) {
        out.truncate(mark);
        tracing::warn!("an MQTT packet for a local client could not be encoded: {e:?}");
    }
}

/// A topic name a client may publish to: not empty, no wildcards, no NUL.
/// The counting cause of a codec error.
fn malformed_cause(e: &CodecError) -> &'static str {
    match e {
        CodecError::PayloadSizeLimitExceeded(_) => "packet too large",
        _ => "malformed packet",
    }
}

async fn write_packet<W: AsyncWriteExt + Unpin>(writer: &mut W, packet: Packet) -> bool {
    let mut out = BytesMut::new();
    if packet.write(&mut out, usize::MAX).is_err() {
        return false;
    }
    writer.write_all(&out).await.is_ok() && writer.flush().await.is_ok()
}

impl Connection {
    fn record(&self, event: &'static str, client_id: &str) -> Record {
        Record::new(self.service.name(), event, client_id)
    }

    async fn serve(self, tcp: TcpStream, acceptor: Option<tokio_rustls::TlsAcceptor>) {
        let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let Some(acceptor) = acceptor else {
            let (reader, writer) = tokio::io::split(tcp);
            return self.session(peer, Vec::new(), reader, writer).await;
        };
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                self.recorder.push(
                    self.record("tls-failed", "")
                        .detail(format!("TLS handshake with {peer} failed: {e}")),
                );
                return;
            }
            Err(_) => {
                self.recorder
                    .push(self.record("tls-failed", "").detail(format!(
                        "{peer} did not complete the TLS handshake within {} s",
                        HANDSHAKE_TIMEOUT.as_secs()
                    )));
                return;
            }
        };
        let chain: Vec<Vec<u8>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
            .unwrap_or_default();
        let (reader, writer) = tokio::io::split(tls);
        self.session(peer, chain, reader, writer).await
    }

    /// Serve one client from its CONNECT on (`chain`: its TLS client certificates, if any).
    async fn session<R, W>(self, peer: String, chain: Vec<Vec<u8>>, mut reader: R, mut writer: W)
    where
        R: AsyncReadExt + Unpin,
        W: AsyncWriteExt + Unpin,
    {
        let mut buf = BytesMut::with_capacity(4096);
        let max_packet = self.service.max_packet();

        let first = tokio::time::timeout(
            CONNECT_TIMEOUT,
            read_packet(&mut reader, &mut buf, max_packet),
        )
        .await;
        let unsupported = |level: u8| {
            let detail = format!(
                "{peer} asked for MQTT protocol level {level}; only 3.1.1 (level 4) is served"
            );
            (
                Some(ConnectReturnCode::RefusedProtocolVersion),
                "refused",
                "unsupported protocol level",
                detail,
            )
        };
        let connect = match first {
            Ok(Ok(Packet::Connect(c))) if c.protocol == Protocol::V4 => Ok(c),
            Ok(Ok(Packet::Connect(_))) => Err(unsupported(5)),
            Ok(Err(ReadError::Codec(CodecError::InvalidProtocolLevel(level)))) => {
                Err(unsupported(level))
            }
            Ok(Ok(other)) => Err((
                None,
                "malformed",
                "packet before CONNECT",
                format!("{peer} sent {other:?} before CONNECT; closed"),
            )),
            Ok(Err(e)) => Err((
                None,
                "malformed",
                match &e {
                    ReadError::Codec(c) => malformed_cause(c),
                    // A client that went away before sending a byte broke no rule (a port
                    // probe); one that stopped in the middle of a packet did.
                    ReadError::Eof if buf.is_empty() => "",
                    _ => "malformed packet",
                },
                format!("{peer} sent no valid CONNECT ({e}); closed"),
            )),
            Err(_) => Err((
                None,
                "malformed",
                "no CONNECT in time",
                format!(
                    "{peer} sent no CONNECT within {} s; closed",
                    CONNECT_TIMEOUT.as_secs()
                ),
            )),
        };
        let connect = match connect {
            Ok(connect) => connect,
            Err((code, event, cause, detail)) => {
                if let Some(code) = code {
                    write_packet(&mut writer, Packet::ConnAck(ConnAck::new(code, false))).await;
                }
                if !cause.is_empty() {
                    self.service.protocol_error(cause, &detail);
                }
                self.recorder.push(self.record(event, "").detail(detail));
                return;
            }
        };

        let (username, password) = connect
            .login
            .as_ref()
            .map(|l| (l.username.as_str(), l.password.as_str()))
            .unwrap_or(("", ""));
        let request = ConnectRequest {
            client_id: &connect.client_id,
            username,
            password,
            peer_chain: &chain,
            clean_session: connect.clean_session,
        };
        // MQTT 3.1.1: a client with a clean session may leave its id to the server.
        let assigned;
        let request = if connect.client_id.is_empty() {
            if !connect.clean_session {
                let code = ConnectReturnCode::BadClientId;
                write_packet(&mut writer, Packet::ConnAck(ConnAck::new(code, false))).await;
                self.recorder
                    .push(self.record("refused", "").detail(format!(
                        "{peer} asked for a persistent session without a client id"
                    )));
                return;
            }
            assigned = format!("auto-{}", self.id);
            ConnectRequest {
                client_id: &assigned,
                ..request
            }
        } else {
            request
        };
        let client_id = request.client_id.to_string();
        let auth = match self.service.connect(&request) {
            ConnectVerdict::Accept(auth) => auth,
            ConnectVerdict::Refuse(code, why) => {
                write_packet(&mut writer, Packet::ConnAck(ConnAck::new(code, false))).await;
                self.recorder
                    .push(self.record("refused", &client_id).detail(why));
                return;
            }
            ConnectVerdict::Close(why) => {
                self.recorder
                    .push(self.record("closed", &client_id).detail(why));
                return;
            }
        };

        let persistent = !connect.clean_session && self.service.keeps_sessions();
        self.await_older(&client_id).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (inbox, resumed) = self.take_over(&client_id, tx, persistent);
        let session = Session {
            client_id: client_id.clone(),
            auth,
            inbox,
            clients: self.clients.clone(),
        };
        let mut delivery = Delivery {
            persistent,
            last_pkid: resumed.as_ref().map_or(0, |r| r.last_pkid),
            sent: VecDeque::new(),
        };
        let mut out = BytesMut::new();
        let session_present = resumed.is_some();
        if let Some(resumed) = resumed {
            // What waited goes first, before anything new.
            for publish in resumed.waiting {
                self.deliver(&mut delivery, publish, &client_id, &mut out);
            }
        }
        let accepted = ConnAck::new(ConnectReturnCode::Success, session_present);
        if !write_packet(&mut writer, Packet::ConnAck(accepted)).await {
            self.leave(&session, &mut rx, delivery);
            return;
        }
        self.recorder.push(
            self.record("connect", &client_id)
                .identity(session.label())
                .detail(match &session.auth {
                    Ok(_) => format!("connected from {peer}"),
                    Err(why) => format!("connected from {peer}, not authenticated: {why}"),
                }),
        );

        let why = self
            .run(
                &session,
                connect.keep_alive,
                (&mut reader, &mut writer),
                &mut rx,
                &mut buf,
                max_packet,
                &mut out,
                &mut delivery,
            )
            .await;
        // Acknowledgements queued before the session ended still go out (best effort), so the
        // client does not send stored messages again.
        if !out.is_empty() {
            let _ = writer.write_all(&out).await;
            let _ = writer.flush().await;
        }
        self.leave(&session, &mut rx, delivery);
        if why != CLIENT_DISCONNECTED && why != SERVER_STOPPING {
            if let Some(will) = connect.last_will {
                self.publish_will(&session, will);
            }
        }
        self.recorder.push(
            self.record("disconnect", &client_id)
                .identity(session.label())
                .detail(why),
        );
    }

    /// Publish a client's will (MQTT 3.1.1 §3.1.2.5) as if the client had sent it: its
    /// connection ended without a DISCONNECT (it broke, went silent past its keep-alive, broke
    /// the protocol, or a newer connection took its client id over).
    fn publish_will(&self, session: &Session, will: LastWill) {
        let record = self
            .record("will", &session.client_id)
            .identity(session.label())
            .topic(&will.topic);
        if !valid_topic_name(&will.topic) {
            let detail = format!(
                "its will names '{}', which is not a valid topic name; not published",
                will.topic
            );
            self.recorder.push(record.detail(detail));
            return;
        }
        // A will is published at most at the QoS the service takes publishes with.
        let qos = match will.qos {
            QoS::ExactlyOnce if self.service.max_qos() < 2 => QoS::AtLeastOnce,
            qos => qos,
        };
        let mut p = Publish::new(will.topic, qos, will.message.to_vec());
        p.retain = will.retain;
        match self.service.publish(session, &p) {
            PublishVerdict::Accept => {}
            // Nobody waits for a will's acknowledgement; a deferred one is stored all the same.
            PublishVerdict::Route | PublishVerdict::Deferred(_) => {
                self.clients.broadcast(&p.topic, &p.payload, p.qos);
                self.keep_if_retained(&p);
            }
            PublishVerdict::Disconnect(why) => {
                self.recorder
                    .push(record.detail(format!("its will was refused: {why}")));
                return;
            }
        }
        self.recorder
            .push(record.detail("the connection ended without DISCONNECT: will published"));
    }

    /// Serve an accepted session until it ends; why it ended. Every packet for the client is
    /// queued in `out` and written in one go before the loop waits again: a commit that stores
    /// many publishes answers them with one write instead of one per PUBACK.
    #[allow(clippy::too_many_arguments)]
    async fn run<R, W>(
        &self,
        session: &Session,
        keep_alive: u16,
        (reader, writer): (&mut R, &mut W),
        rx: &mut mpsc::UnboundedReceiver<Command>,
        buf: &mut BytesMut,
        max_packet: usize,
        out: &mut BytesMut,
        delivery: &mut Delivery,
    ) -> String
    where
        R: AsyncReadExt + Unpin,
        W: AsyncWriteExt + Unpin,
    {
        // Publishes whose acknowledgement waits for the service, oldest first.
        let mut unacked: VecDeque<Unacked> = VecDeque::new();
        // Packet ids of QoS 2 publishes taken and not yet released (PUBREL): the same id again
        // is the client sending that message again, not a new one.
        let mut receiving: HashSet<u16> = HashSet::new();
        // MQTT 3.1.1: the server closes a connection silent for 1.5 keep-alive periods.
        let grace = (keep_alive > 0).then(|| Duration::from_millis(keep_alive as u64 * 1500));
        let mut last_heard = tokio::time::Instant::now();
        // IoT Hub style: the session ends when its credentials expire.
        let credentials_expire = session
            .auth
            .as_ref()
            .ok()
            .and_then(|identity| identity.expires_at)
            .map(|at| {
                let left = at.saturating_sub(crate::pki::crypto::now_unix());
                tokio::time::Instant::now() + Duration::from_secs(left)
            });
        let broke = || "the connection broke".to_string();
        loop {
            // Settle the acknowledgements that are ready, in order.
            while let Some(front) = unacked.front_mut() {
                match front.settled.try_recv() {
                    Ok(result) => {
                        let done = unacked.pop_front().expect("front exists");
                        if let Err(why) = settle(done, result, out) {
                            return why;
                        }
                    }
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        return "the gateway stopped before the message was stored; closed".into()
                    }
                }
            }
            // Handle every complete packet already buffered, while acknowledgements may wait.
            while unacked.len() < MAX_UNACKED {
                let packet = match Packet::read(buf, max_packet) {
                    Ok(p) => p,
                    Err(CodecError::InsufficientBytes(_)) => break,
                    Err(e) => {
                        let detail = format!("malformed packet ({e:?}); closed");
                        self.service.protocol_error(malformed_cause(&e), &detail);
                        return detail;
                    }
                };
                match packet {
                    Packet::Publish(p) => {
                        if p.qos == QoS::ExactlyOnce && self.service.max_qos() < 2 {
                            self.service
                                .protocol_error("QoS 2 publish", "QoS 2 is not supported");
                            return format!(
                                "published QoS 2 to '{}', which is not supported; closed",
                                p.topic
                            );
                        }
                        if !valid_topic_name(&p.topic) {
                            let detail = format!(
                                "published to '{}', which is not a valid topic name; closed",
                                p.topic
                            );
                            self.service.protocol_error("invalid topic name", &detail);
                            return detail;
                        }
                        if p.qos == QoS::ExactlyOnce && !receiving.insert(p.pkid) {
                            // Taken already (the client did not see our PUBREC in time):
                            // acknowledge it again, deliver and store it once.
                            ack_in_order(&mut unacked, out, p.qos, p.pkid);
                            continue;
                        }
                        let route = match self.service.publish(session, &p) {
                            PublishVerdict::Accept => false,
                            PublishVerdict::Route => true,
                            PublishVerdict::Deferred(settled) => {
                                self.clients.broadcast(&p.topic, &p.payload, p.qos);
                                self.keep_if_retained(&p);
                                unacked.push_back(Unacked {
                                    pkid: p.pkid,
                                    qos: p.qos,
                                    settled,
                                });
                                continue;
                            }
                            PublishVerdict::Disconnect(why) => return why,
                        };
                        ack_in_order(&mut unacked, out, p.qos, p.pkid);
                        if route {
                            self.clients.broadcast(&p.topic, &p.payload, p.qos);
                            self.keep_if_retained(&p);
                        }
                    }
                    Packet::PubRel(rel) => {
                        receiving.remove(&rel.pkid);
                        let comp = rumqttc::mqttbytes::v4::PubComp::new(rel.pkid);
                        queue_packet(out, Packet::PubComp(comp));
                    }
                    Packet::Subscribe(s) => {
                        let mut codes = Vec::new();
                        let mut granted_filters = Vec::new();
                        for f in &s.filters {
                            match self.service.subscribe(session, &f.path, f.qos as u8) {
                                Ok(granted) => {
                                    // A filter subscribed again replaces its subscription.
                                    let mut filters = session.inbox.filters();
                                    filters.retain(|(filter, _)| *filter != f.path);
                                    filters.push((f.path.clone(), qos_of(granted)));
                                    drop(filters);
                                    codes.push(SubscribeReasonCode::Success(qos_of(granted)));
                                    granted_filters.push((f.path.as_str(), granted));
                                }
                                Err(why) => {
                                    self.recorder.push(
                                        self.record("subscribe-refused", &session.client_id)
                                            .identity(session.label())
                                            .topic(&f.path)
                                            .detail(why),
                                    );
                                    codes.push(SubscribeReasonCode::Failure);
                                }
                            }
                        }
                        queue_packet(out, Packet::SubAck(SubAck::new(s.pkid, codes)));
                        if self.service.retains() {
                            for (filter, granted) in granted_filters {
                                self.queue_retained(filter, granted, session, delivery, out);
                            }
                        }
                    }
                    Packet::Unsubscribe(u) => {
                        session
                            .inbox
                            .filters()
                            .retain(|(f, _)| !u.topics.contains(f));
                        let ack = rumqttc::mqttbytes::v4::UnsubAck::new(u.pkid);
                        queue_packet(out, Packet::UnsubAck(ack));
                    }
                    Packet::PingReq => {
                        queue_packet(out, Packet::PingResp);
                    }
                    Packet::PubAck(ack) => delivery.acked(ack.pkid),
                    Packet::PubRec(_) | Packet::PubComp(_) => {}
                    Packet::Disconnect => return CLIENT_DISCONNECTED.into(),
                    other => {
                        let detail = format!("unexpected {other:?}; closed");
                        self.service.protocol_error("unexpected packet", &detail);
                        return detail;
                    }
                }
            }
            let deadline = grace.map(|d| last_heard + d);
            let silence = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let expiry = async move {
                match credentials_expire {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            if !out.is_empty() {
                if writer.write_all(out).await.is_err() || writer.flush().await.is_err() {
                    return broke();
                }
                out.clear();
            }
            let may_read = unacked.len() < MAX_UNACKED;
            let oldest = async {
                match unacked.front_mut() {
                    Some(front) => (&mut front.settled).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = reader.read_buf(buf), if may_read => match read {
                    Ok(0) => return "the client closed the connection".into(),
                    Ok(_) => last_heard = tokio::time::Instant::now(),
                    Err(e) => return format!("read failed: {e}"),
                },
                settled = oldest => {
                    let Some(done) = unacked.pop_front() else { continue };
                    let result = settled.unwrap_or_else(|_| {
                        Err("the gateway stopped before the message was stored; closed".into())
                    });
                    if let Err(why) = settle(done, result, out) {
                        return why;
                    }
                }
                command = rx.recv() => match command {
                    // Offered only if it matched a subscription (`Inbox::offer`).
                    Some(Command::Publish { topic, payload, qos }) => {
                        session.inbox.taken(payload.len());
                        let publish = Publish::new(topic, qos, payload);
                        self.deliver(delivery, publish, &session.client_id, out);
                    }
                    Some(Command::Kick(why)) => return why,
                    None => return "the server stopped".into(),
                },
                _ = silence => return format!("no packet for 1.5 × the {keep_alive} s keep-alive; closed"),
                _ = expiry => return "the credentials expired; closed".into(),
            }
        }
    }

    /// Keep a broker-routed publish with the retain flag, for services that retain.
    fn keep_if_retained(&self, p: &Publish) {
        if p.retain && self.service.retains() {
            if let Err(why) = self.clients.retained.keep(&p.topic, &p.payload, p.qos) {
                self.service.retained_refused(&why);
            }
        }
    }

    /// Queue the retained messages a new subscription to `filter` (granted at QoS `granted`)
    /// receives, with the retain flag set.
    fn queue_retained(
        &self,
        filter: &str,
        granted: u8,
        session: &Session,
        delivery: &mut Delivery,
        out: &mut BytesMut,
    ) {
        for (topic, kept) in self.clients.retained.matching(filter) {
            // Delivery is at QoS 0 or 1 (a QoS 2 retained message goes out as QoS 1).
            let qos = if granted == 0 || kept.qos == QoS::AtMostOnce {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            let mut publish = Publish::new(topic, qos, kept.payload);
            publish.retain = true;
            self.deliver(delivery, publish, &session.client_id, out);
        }
    }

    /// Queue `publish` for the client (a packet id for QoS 1 unless it is sent again and has
    /// one), kept until acknowledged for a persistent session.
    fn deliver(
        &self,
        delivery: &mut Delivery,
        publish: Publish,
        client_id: &str,
        out: &mut BytesMut,
    ) {
        if delivery.queue(publish, out) {
            self.service.session_message_dropped(&format!(
                "client '{client_id}' left {} messages unacknowledged; the oldest will not be \
                 sent again if its session resumes",
                sessions::MAX_WAITING
            ));
        }
    }

    /// A connection of the same client id is told to close, and given [`TAKEOVER_WAIT`] to end
    /// (and leave its session) before this one takes over.
    async fn await_older(&self, client_id: &str) {
        let older = {
            let clients = self.clients.by_id.lock().unwrap_or_else(|e| e.into_inner());
            clients.get(client_id).map(|c| {
                let _ = c.inbox.commands.send(Command::Kick(TAKEN_OVER.into()));
                c.connection
            })
        };
        let Some(older) = older else { return };
        let gone = |clients: &HashMap<String, Client>| {
            clients.get(client_id).is_none_or(|c| c.connection != older)
        };
        self.clients.wait_until(TAKEOVER_WAIT, gone).await;
    }

    /// Register this connection as `client_id`'s, with the session it left if it resumes one
    /// (a clean session discards it).
    fn take_over(
        &self,
        client_id: &str,
        commands: mpsc::UnboundedSender<Command>,
        persistent: bool,
    ) -> (Inbox, Option<sessions::Parked>) {
        let mut clients = self.clients.by_id.lock().unwrap_or_else(|e| e.into_inner());
        let resumed = self
            .clients
            .sessions()
            .resume(client_id)
            .filter(|_| persistent);
        let filters = resumed
            .as_ref()
            .map(|r| r.filters.clone())
            .unwrap_or_default();
        let inbox = Inbox {
            commands,
            filters: Arc::new(Mutex::new(filters)),
            queued: Arc::default(),
            client_id: Arc::from(client_id),
            service: self.service.clone(),
        };
        let client = Client {
            connection: self.id,
            inbox: inbox.clone(),
        };
        // One that did not end in time is closed now.
        if let Some(older) = clients.insert(client_id.to_string(), client) {
            let _ = older.inbox.commands.send(Command::Kick(TAKEN_OVER.into()));
        }
        (inbox, resumed)
    }

    /// The connection ended: the client is no longer connected, and a persistent session keeps
    /// its subscriptions and what it was not sent or did not acknowledge (what it was sent goes
    /// again marked DUP).
    fn leave(
        &self,
        session: &Session,
        rx: &mut mpsc::UnboundedReceiver<Command>,
        delivery: Delivery,
    ) {
        let mut clients = self.clients.by_id.lock().unwrap_or_else(|e| e.into_inner());
        // A newer connection that took over already did without this one's session.
        if clients
            .get(&session.client_id)
            .is_none_or(|client| client.connection != self.id)
        {
            return;
        }
        clients.remove(&session.client_id);
        if !delivery.persistent {
            return;
        }
        let mut waiting = delivery.sent;
        for publish in &mut waiting {
            publish.dup = true;
        }
        let mut parked = sessions::Parked {
            filters: session.inbox.filters().clone(),
            waiting,
            last_pkid: delivery.last_pkid,
        };
        let mut dropped = 0;
        while let Ok(command) = rx.try_recv() {
            // QoS 0 messages are not kept for an absent client.
            if let Command::Publish {
                topic,
                payload,
                qos,
            } = command
            {
                if qos != QoS::AtMostOnce && !parked.keep(Publish::new(topic, qos, payload)) {
                    dropped += 1;
                }
            }
        }
        let refused = self
            .clients
            .sessions()
            .park(session.client_id.clone(), parked)
            .is_err();
        drop(clients);
        if dropped > 0 {
            self.service.session_message_dropped(&format!(
                "{dropped} messages were not kept for absent client '{}': its session holds {} \
                 already",
                session.client_id,
                sessions::MAX_WAITING
            ));
        }
        if refused {
            self.service.session_message_dropped(&format!(
                "the session of '{}' was not kept: {} absent clients' sessions are kept already",
                session.client_id,
                sessions::MAX_SESSIONS
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet as In};

    /// Accepts everyone and routes every publish, as a plain broker.
    struct Broker;

    impl MqttService for Broker {
        fn name(&self) -> &'static str {
            "test"
        }
        fn connect(&self, request: &ConnectRequest<'_>) -> ConnectVerdict {
            ConnectVerdict::Accept(Ok(Identity::new(request.client_id.to_string(), None)))
        }
        fn subscribe(&self, _: &Session, _: &str, qos: u8) -> Result<u8, String> {
            Ok(qos.min(1))
        }
        fn publish(&self, _: &Session, _: &Publish) -> PublishVerdict {
            PublishVerdict::Route
        }
        fn retains(&self) -> bool {
            true
        }
        fn max_qos(&self) -> u8 {
            2
        }
        fn keeps_sessions(&self) -> bool {
            true
        }
    }

    /// A client speaking raw MQTT 3.1.1 packets, for what client libraries do not let a test do.
    struct RawClient {
        stream: TcpStream,
        buf: BytesMut,
    }

    impl RawClient {
        async fn connect(port: u16, id: &str) -> RawClient {
            RawClient::connect_with(port, id, true).await.0
        }

        /// Connect with or without a clean session; the CONNACK's session-present flag.
        async fn connect_with(port: u16, id: &str, clean: bool) -> (RawClient, bool) {
            let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let mut raw = RawClient {
                stream,
                buf: BytesMut::new(),
            };
            let mut connect = rumqttc::mqttbytes::v4::Connect::new(id);
            connect.clean_session = clean;
            raw.send(Packet::Connect(connect)).await;
            match raw.next().await {
                Packet::ConnAck(ack) => (raw, ack.session_present),
                other => panic!("expected a CONNACK, got {other:?}"),
            }
        }

        async fn send(&mut self, packet: Packet) {
            let mut out = BytesMut::new();
            packet.write(&mut out, usize::MAX).unwrap();
            self.stream.write_all(&out).await.unwrap();
        }

        /// The next packet from the server (the test fails after 10 s without one).
        async fn next(&mut self) -> Packet {
            let read = async {
                loop {
                    match Packet::read(&mut self.buf, usize::MAX) {
                        Ok(packet) => return packet,
                        Err(CodecError::InsufficientBytes(_)) => {
                            assert!(self.stream.read_buf(&mut self.buf).await.unwrap() > 0)
                        }
                        Err(e) => panic!("cannot read the server's packet: {e:?}"),
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .expect("no packet within 10 s")
        }
    }

    async fn persistent_client(port: u16, id: &str) -> (AsyncClient, EventLoop, bool) {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_clean_session(false);
        let (client, mut events) = AsyncClient::new(options, 100);
        loop {
            if let Event::Incoming(In::ConnAck(ack)) = events.poll().await.unwrap() {
                return (client, events, ack.session_present);
            }
        }
    }

    #[tokio::test]
    async fn a_persistent_session_keeps_subscriptions_and_qos1_messages_while_the_client_is_away() {
        let server = MqttServer::start("127.0.0.1:0", None, Arc::new(Broker), Arc::default())
            .await
            .unwrap();
        let (watch, mut w_events) = client(server.port, "watch").await;
        watch.subscribe("cmd/#", QoS::AtLeastOnce).await.unwrap();
        until_acked(&mut w_events).await;
        let (publisher, mut p_events) = client(server.port, "publisher").await;
        tokio::spawn(async move { while p_events.poll().await.is_ok() {} });

        let (away, mut a_events, present) = persistent_client(server.port, "away").await;
        assert!(!present, "a new session");
        away.subscribe("cmd/#", QoS::AtLeastOnce).await.unwrap();
        until_acked(&mut a_events).await;
        away.disconnect().await.unwrap();
        while a_events.poll().await.is_ok() {}

        for (topic, qos) in [
            ("cmd/1", QoS::AtLeastOnce),
            ("cmd/2", QoS::AtMostOnce),
            ("cmd/3", QoS::AtLeastOnce),
        ] {
            publisher.publish(topic, qos, false, "x").await.unwrap();
        }
        // The watcher has them: the absent session was offered them too.
        for want in ["cmd/1", "cmd/2", "cmd/3"] {
            assert_eq!(next_topic(&mut w_events).await, want);
        }

        // Back: the subscription is still there and the QoS 1 messages come, in order.
        let (back, mut b_events, present) = persistent_client(server.port, "away").await;
        assert!(present, "the session was kept");
        assert_eq!(next_topic(&mut b_events).await, "cmd/1");
        assert_eq!(next_topic(&mut b_events).await, "cmd/3");
        publisher
            .publish("cmd/4", QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
        assert_eq!(next_topic(&mut b_events).await, "cmd/4", "live again");
        back.disconnect().await.unwrap();
        while b_events.poll().await.is_ok() {}

        // A clean session discards it: no subscription, nothing kept.
        publisher
            .publish("cmd/5", QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
        let (clean, mut c_events) = client(server.port, "away").await;
        clean.subscribe("sync", QoS::AtLeastOnce).await.unwrap();
        until_acked(&mut c_events).await;
        for topic in ["cmd/6", "sync"] {
            publisher
                .publish(topic, QoS::AtLeastOnce, false, "x")
                .await
                .unwrap();
        }
        assert_eq!(next_topic(&mut c_events).await, "sync", "cmd/5 or cmd/6");
        drop((watch, clean));
    }

    /// A broker that writes down what it was told it could not keep for absent clients.
    #[derive(Default)]
    struct Counting {
        dropped: Mutex<Vec<String>>,
    }

    impl MqttService for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn connect(&self, request: &ConnectRequest<'_>) -> ConnectVerdict {
            Broker.connect(request)
        }
        fn subscribe(&self, session: &Session, filter: &str, qos: u8) -> Result<u8, String> {
            Broker.subscribe(session, filter, qos)
        }
        fn publish(&self, session: &Session, publish: &Publish) -> PublishVerdict {
            Broker.publish(session, publish)
        }
        fn keeps_sessions(&self) -> bool {
            true
        }
        fn session_message_dropped(&self, detail: &str) {
            self.dropped.lock().unwrap().push(detail.to_string());
        }
    }

    #[tokio::test]
    async fn an_absent_clients_session_keeps_at_most_its_limit_and_says_what_it_dropped() {
        let service = Arc::new(Counting::default());
        let server = MqttServer::start("127.0.0.1:0", None, service.clone(), Arc::default())
            .await
            .unwrap();
        let (away, mut a_events, _) = persistent_client(server.port, "away").await;
        away.subscribe("cmd/#", QoS::AtLeastOnce).await.unwrap();
        until_acked(&mut a_events).await;
        away.disconnect().await.unwrap();
        while a_events.poll().await.is_ok() {}

        let (publisher, mut p_events) = client(server.port, "publisher").await;
        let (watch, mut w_events) = client(server.port, "watch").await;
        watch.subscribe("cmd/#", QoS::AtMostOnce).await.unwrap();
        until_acked(&mut w_events).await;
        tokio::spawn(async move { while p_events.poll().await.is_ok() {} });
        let count = sessions::MAX_WAITING + 1;
        for i in 0..count {
            publisher
                .publish(format!("cmd/{i}"), QoS::AtLeastOnce, false, "x")
                .await
                .unwrap();
        }
        // All of them were offered once the watcher has the last.
        while next_topic(&mut w_events).await != format!("cmd/{}", count - 1) {}
        assert_eq!(
            *service.dropped.lock().unwrap(),
            [format!(
                "the message on 'cmd/{}' was not kept for absent client 'away': its session \
                 holds {} messages already",
                count - 1,
                sessions::MAX_WAITING
            )]
        );
        let (_back, mut b_events, present) = persistent_client(server.port, "away").await;
        assert!(present);
        assert_eq!(next_topic(&mut b_events).await, "cmd/0");
        drop(watch);
    }

    #[tokio::test]
    async fn a_message_the_client_did_not_acknowledge_is_sent_again_marked_dup_when_it_returns() {
        let server = MqttServer::start("127.0.0.1:0", None, Arc::new(Broker), Arc::default())
            .await
            .unwrap();
        let (publisher, mut p_events) = client(server.port, "publisher").await;
        tokio::spawn(async move { while p_events.poll().await.is_ok() {} });
        let (mut raw, _) = RawClient::connect_with(server.port, "forgetful", false).await;
        let subscribe = rumqttc::mqttbytes::v4::Subscribe::new("cmd/#", QoS::AtLeastOnce);
        raw.send(Packet::Subscribe(subscribe)).await;
        assert!(matches!(raw.next().await, Packet::SubAck(_)));
        publisher
            .publish("cmd/a", QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
        let Packet::Publish(first) = raw.next().await else {
            panic!("expected cmd/a")
        };
        assert!(!first.dup);
        // Gone without acknowledging it.
        drop(raw);

        let (mut raw, present) = RawClient::connect_with(server.port, "forgetful", false).await;
        assert!(present);
        let Packet::Publish(again) = raw.next().await else {
            panic!("expected cmd/a again")
        };
        assert_eq!((again.topic.as_str(), again.pkid), ("cmd/a", first.pkid));
        assert!(again.dup, "sent again: DUP");
        raw.send(Packet::PubAck(PubAck::new(again.pkid))).await;
        raw.send(Packet::Disconnect).await;
        drop(raw);

        // Acknowledged: not sent a third time.
        let (mut raw, present) = RawClient::connect_with(server.port, "forgetful", false).await;
        assert!(present);
        raw.send(Packet::PingReq).await;
        assert!(
            matches!(raw.next().await, Packet::PingResp),
            "nothing before it"
        );
    }

    #[tokio::test]
    async fn a_qos2_message_sent_again_before_its_release_is_delivered_once() {
        let server = MqttServer::start("127.0.0.1:0", None, Arc::new(Broker), Arc::default())
            .await
            .unwrap();
        let (watch, mut w_events) = client(server.port, "watch").await;
        watch.subscribe("q/#", QoS::AtLeastOnce).await.unwrap();
        until_acked(&mut w_events).await;
        let mut raw = RawClient::connect(server.port, "raw").await;
        let publish = |topic: &str, dup: bool| {
            let mut p = Publish::new(topic, QoS::ExactlyOnce, "x");
            p.pkid = 7;
            p.dup = dup;
            Packet::Publish(p)
        };
        raw.send(publish("q/1", false)).await;
        assert!(matches!(raw.next().await, Packet::PubRec(r) if r.pkid == 7));
        // Sent again (DUP) before the PUBREL: acknowledged again, not delivered again.
        raw.send(publish("q/1", true)).await;
        assert!(matches!(raw.next().await, Packet::PubRec(r) if r.pkid == 7));
        raw.send(Packet::PubRel(rumqttc::mqttbytes::v4::PubRel::new(7)))
            .await;
        assert!(matches!(raw.next().await, Packet::PubComp(c) if c.pkid == 7));
        // Released: the same packet id is a new message.
        raw.send(publish("q/2", false)).await;
        assert!(matches!(raw.next().await, Packet::PubRec(r) if r.pkid == 7));
        // Subscriptions are granted QoS 1 at most: that is what subscribers get.
        let mut delivered = Vec::new();
        while delivered.len() < 2 {
            if let Event::Incoming(In::Publish(p)) = w_events.poll().await.unwrap() {
                delivered.push((p.topic, p.qos));
            }
        }
        assert_eq!(
            delivered,
            [
                ("q/1".to_string(), QoS::AtLeastOnce),
                ("q/2".to_string(), QoS::AtLeastOnce)
            ],
            "q/1 once, at QoS 1"
        );
        drop(watch);
    }

    async fn client(port: u16, id: &str) -> (AsyncClient, EventLoop) {
        let (client, mut events) = AsyncClient::new(MqttOptions::new(id, "127.0.0.1", port), 100);
        loop {
            if let Event::Incoming(In::ConnAck(_)) = events.poll().await.unwrap() {
                return (client, events);
            }
        }
    }

    /// The next message's topic, driving the connection until one arrives.
    async fn next_topic(events: &mut EventLoop) -> String {
        loop {
            match events.poll().await.unwrap() {
                Event::Incoming(In::Publish(p)) => return p.topic,
                _ => continue,
            }
        }
    }

    /// Drive the connection until the SUBACK or UNSUBACK.
    async fn until_acked(events: &mut EventLoop) {
        loop {
            if let Event::Incoming(In::SubAck(_) | In::UnsubAck(_)) = events.poll().await.unwrap() {
                return;
            }
        }
    }

    #[tokio::test]
    async fn a_publish_reaches_the_subscribed_clients_only_and_not_after_they_unsubscribe() {
        let server = MqttServer::start("127.0.0.1:0", None, Arc::new(Broker), Arc::default())
            .await
            .unwrap();
        let (a, mut a_events) = client(server.port, "a").await;
        let (b, mut b_events) = client(server.port, "b").await;
        let (publisher, mut p_events) = client(server.port, "publisher").await;
        tokio::spawn(async move { while p_events.poll().await.is_ok() {} });
        a.subscribe("a/#", QoS::AtMostOnce).await.unwrap();
        until_acked(&mut a_events).await;
        b.subscribe("b/#", QoS::AtMostOnce).await.unwrap();
        b.subscribe("sync", QoS::AtMostOnce).await.unwrap();
        until_acked(&mut b_events).await;
        until_acked(&mut b_events).await;

        // One publisher's messages reach each client in the order they were published, so a
        // later `sync` arriving next shows that nothing before it was delivered.
        for topic in ["a/1", "b/1", "sync"] {
            publisher
                .publish(topic, QoS::AtMostOnce, false, "x")
                .await
                .unwrap();
        }
        assert_eq!(next_topic(&mut a_events).await, "a/1");
        assert_eq!(next_topic(&mut b_events).await, "b/1");
        assert_eq!(next_topic(&mut b_events).await, "sync");

        b.unsubscribe("b/#").await.unwrap();
        until_acked(&mut b_events).await;
        for topic in ["b/2", "sync"] {
            publisher
                .publish(topic, QoS::AtMostOnce, false, "x")
                .await
                .unwrap();
        }
        assert_eq!(
            next_topic(&mut b_events).await,
            "sync",
            "b/2 after unsubscribing"
        );
        drop((a, b, publisher));
    }

    /// The next message (topic, payload, retain flag), driving the connection until one arrives
    /// (the test fails after 10 s without one).
    async fn next_message(events: &mut EventLoop) -> (String, Vec<u8>, bool) {
        let next = async {
            loop {
                if let Event::Incoming(In::Publish(p)) = events.poll().await.unwrap() {
                    return (p.topic, p.payload.to_vec(), p.retain);
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), next)
            .await
            .expect("no message within 10 s")
    }

    #[tokio::test]
    async fn a_new_subscription_gets_the_retained_messages_until_an_empty_one_clears_them() {
        let server = MqttServer::start("127.0.0.1:0", None, Arc::new(Broker), Arc::default())
            .await
            .unwrap();
        let (watch, mut w_events) = client(server.port, "watch").await;
        watch.subscribe("#", QoS::AtMostOnce).await.unwrap();
        until_acked(&mut w_events).await;
        let (publisher, mut p_events) = client(server.port, "publisher").await;
        tokio::spawn(async move { while p_events.poll().await.is_ok() {} });
        let publish = |topic: &'static str, retain: bool, payload: &'static str| {
            let publisher = publisher.clone();
            async move {
                publisher
                    .publish(topic, QoS::AtLeastOnce, retain, payload)
                    .await
                    .unwrap()
            }
        };
        publish("r/1", true, "one").await;
        publish("r/2", true, "two").await;
        publish("n/1", false, "not kept").await;
        publish("sync", false, "").await;
        // Established subscribers get them as live messages (retain flag off).
        let mut live = Vec::new();
        while live.last().map(|(t, _, _): &(String, _, _)| t.as_str()) != Some("sync") {
            live.push(next_message(&mut w_events).await);
        }
        assert!(live.iter().all(|(_, _, retain)| !retain), "{live:?}");

        let (late, mut l_events) = client(server.port, "late").await;
        late.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
        assert_eq!(
            next_message(&mut l_events).await,
            ("r/1".into(), b"one".to_vec(), true)
        );
        assert_eq!(
            next_message(&mut l_events).await,
            ("r/2".into(), b"two".to_vec(), true)
        );

        publish("r/1", true, "").await;
        publish("sync", false, "").await;
        while next_message(&mut w_events).await.0 != "sync" {}
        let (later, mut l2_events) = client(server.port, "later").await;
        later.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
        later.subscribe("sync", QoS::AtLeastOnce).await.unwrap();
        assert_eq!(
            next_message(&mut l2_events).await,
            ("r/2".into(), b"two".to_vec(), true)
        );
        publish("sync", false, "").await;
        assert_eq!(
            next_message(&mut l2_events).await.0,
            "sync",
            "r/1 was cleared"
        );
        drop((watch, late, later));
    }

    #[tokio::test]
    async fn a_will_is_published_when_a_connection_breaks_but_not_after_disconnect_or_if_invalid() {
        let server = MqttServer::start("127.0.0.1:0", None, Arc::new(Broker), Arc::default())
            .await
            .unwrap();
        let (watch, mut w_events) = client(server.port, "watch").await;
        watch.subscribe("status/#", QoS::AtLeastOnce).await.unwrap();
        until_acked(&mut w_events).await;
        let with_will = |id: &'static str| {
            let mut options = MqttOptions::new(id, "127.0.0.1", server.port);
            let will =
                rumqttc::LastWill::new(format!("status/{id}"), "offline", QoS::AtLeastOnce, true);
            options.set_last_will(will);
            async move {
                let (client, mut events) = AsyncClient::new(options, 10);
                while !matches!(
                    events.poll().await.unwrap(),
                    Event::Incoming(In::ConnAck(_))
                ) {}
                (client, events)
            }
        };
        // A will naming a wildcard topic is not published (the valid one after it arrives first).
        let mut options = MqttOptions::new("wild", "127.0.0.1", server.port);
        options.set_last_will(rumqttc::LastWill::new(
            "status/#",
            "x",
            QoS::AtLeastOnce,
            false,
        ));
        let (_wild, mut wild_events) = AsyncClient::new(options, 10);
        while !matches!(
            wild_events.poll().await.unwrap(),
            Event::Incoming(In::ConnAck(_))
        ) {}
        drop(wild_events);
        // A clean goodbye: no will.
        let (polite, mut p_events) = with_will("polite").await;
        polite.disconnect().await.unwrap();
        while p_events.poll().await.is_ok() {}
        // A broken connection (the event loop dropped: the socket closes without DISCONNECT).
        let (_broken, b_events) = with_will("broken").await;
        drop(b_events);
        assert_eq!(
            next_message(&mut w_events).await,
            ("status/broken".into(), b"offline".to_vec(), false)
        );
        // Retained as the will asked: a later subscriber gets it, and nothing of `polite`.
        let (late, mut l_events) = client(server.port, "late").await;
        late.subscribe("status/#", QoS::AtLeastOnce).await.unwrap();
        assert_eq!(
            next_message(&mut l_events).await,
            ("status/broken".into(), b"offline".to_vec(), true)
        );
        drop((watch, late));
    }

    #[test]
    fn a_message_goes_at_the_lower_of_its_qos_and_the_best_matching_subscription() {
        let subscriptions = vec![
            ("a/#".to_string(), QoS::AtMostOnce),
            ("a/b".to_string(), QoS::AtLeastOnce),
        ];
        let at = |topic, qos| delivery_qos(&subscriptions, topic, qos);
        assert_eq!(at("a/b", QoS::ExactlyOnce), Some(QoS::AtLeastOnce));
        assert_eq!(at("a/b", QoS::AtMostOnce), Some(QoS::AtMostOnce));
        assert_eq!(at("a/c", QoS::AtLeastOnce), Some(QoS::AtMostOnce));
        assert_eq!(at("b", QoS::AtLeastOnce), None);
    }
}
