//! A small MQTT 3.1.1 server for the emulated services, built on rumqttc's packet codec
//! (`rumqttc::mqttbytes::v4`) over tokio and rustls. It owns the protocol mechanics — TLS,
//! CONNECT/CONNACK, keep-alive, SUBACK, PUBACK, QoS, one connection per client id, delivery to
//! subscribed clients only — and asks an [`MqttService`] for every decision a provider makes
//! (who may connect, which subscriptions and publishes are allowed, what to answer).

use super::record::{Record, Recorder};
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode,
};
use rumqttc::mqttbytes::{Error as CodecError, Protocol, QoS};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

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
    /// Close the connection, as IoT Hub does on a publish to a topic it does not serve.
    Disconnect(String),
}

/// A connected client, as services see it.
pub struct Session {
    pub client_id: String,
    pub auth: Result<Identity, String>,
    outbox: mpsc::UnboundedSender<Command>,
}

impl Session {
    /// The label for records: the identity, or `unauthenticated`.
    pub fn label(&self) -> Option<&str> {
        self.auth.as_ref().ok().map(|i| i.label.as_str())
    }

    /// Send a message to this client only (if it subscribed to a matching filter).
    pub fn reply(&self, topic: String, payload: Vec<u8>) {
        let _ = self.outbox.send(Command::Publish {
            topic,
            payload,
            qos: QoS::AtMostOnce,
        });
    }
}

/// The decisions one emulated provider makes.
pub trait MqttService: Send + Sync + 'static {
    /// `dps`, `iothub`, ... (for records).
    fn name(&self) -> &'static str;
    fn connect(&self, request: &ConnectRequest<'_>) -> ConnectVerdict;
    /// The QoS granted, or why the subscription is refused (SUBACK failure).
    fn subscribe(&self, session: &Session, filter: &str, qos: u8) -> Result<u8, String>;
    fn publish(&self, session: &Session, publish: &Publish) -> PublishVerdict;
}

enum Command {
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: QoS,
    },
    Kick(String),
}

/// Connected clients by client id (one connection per id).
#[derive(Default)]
struct Clients {
    by_id: Mutex<HashMap<String, (u64, mpsc::UnboundedSender<Command>)>>,
}

impl Clients {
    /// Offer a message to every connected client; each delivers it if it subscribed to a
    /// matching filter.
    fn broadcast(&self, topic: &str, payload: &[u8], qos: QoS) {
        let clients = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        for (_, tx) in clients.values() {
            let _ = tx.send(Command::Publish {
                topic: topic.to_string(),
                payload: payload.to_vec(),
                qos,
            });
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
    pub async fn start(
        addr: &str,
        tls: Arc<rustls::ServerConfig>,
        service: Arc<dyn MqttService>,
        recorder: Arc<Recorder>,
    ) -> std::io::Result<MqttServer> {
        let listener = TcpListener::bind(addr).await?;
        let port = listener.local_addr()?.port();
        let clients = Arc::new(Clients::default());
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
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
        let Some((_, tx)) = clients.get(client_id) else {
            return false;
        };
        tx.send(Command::Publish {
            topic: topic.to_string(),
            payload: payload.to_vec(),
            qos: qos_of(qos),
        })
        .is_ok()
    }

    /// Publish to every connected client subscribed to `topic` (QoS 0 or 1), as a broker's
    /// own message.
    pub fn publish(&self, topic: &str, payload: &[u8], qos: u8) {
        self.clients.broadcast(topic, payload, qos_of(qos));
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
) -> Result<Packet, ReadError> {
    loop {
        // rumqttc's 3.1.1 codec half-parses MQTT 5 CONNECTs; answer them by their level instead.
        if let Some(level) = connect_protocol_level(buf).filter(|l| *l != 4) {
            return Err(ReadError::Codec(CodecError::InvalidProtocolLevel(level)));
        }
        match Packet::read(buf, MAX_PACKET) {
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

async fn write_packet<W: AsyncWriteExt + Unpin>(writer: &mut W, packet: Packet) -> bool {
    let mut out = BytesMut::new();
    if packet.write(&mut out, MAX_PACKET).is_err() {
        return false;
    }
    writer.write_all(&out).await.is_ok() && writer.flush().await.is_ok()
}

/// Does `topic` match the subscription `filter` (`+` one level, `#` the rest)? Given a filter
/// as `topic`, whether `filter` covers every topic that filter can match (how a policy's allowed
/// filter judges a requested subscription).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Connection {
    fn record(&self, event: &'static str, client_id: &str) -> Record {
        Record::new(self.service.name(), event, client_id)
    }

    async fn serve(self, tcp: TcpStream, acceptor: tokio_rustls::TlsAcceptor) {
        let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
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
        let (mut reader, mut writer) = tokio::io::split(tls);
        let mut buf = BytesMut::with_capacity(4096);

        let first = tokio::time::timeout(CONNECT_TIMEOUT, read_packet(&mut reader, &mut buf)).await;
        let unsupported = |level: u8| {
            let detail = format!(
                "{peer} asked for MQTT protocol level {level}; only 3.1.1 (level 4) is served"
            );
            (
                Some(ConnectReturnCode::RefusedProtocolVersion),
                "refused",
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
                format!("{peer} sent {other:?} before CONNECT; closed"),
            )),
            Ok(Err(e)) => Err((
                None,
                "malformed",
                format!("{peer} sent no valid CONNECT ({e}); closed"),
            )),
            Err(_) => Err((
                None,
                "malformed",
                format!(
                    "{peer} sent no CONNECT within {} s; closed",
                    CONNECT_TIMEOUT.as_secs()
                ),
            )),
        };
        let connect = match connect {
            Ok(connect) => connect,
            Err((code, event, detail)) => {
                if let Some(code) = code {
                    write_packet(&mut writer, Packet::ConnAck(ConnAck::new(code, false))).await;
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
        let client_id = connect.client_id.clone();
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

        let (tx, mut rx) = mpsc::unbounded_channel();
        let older = {
            let mut clients = self.clients.by_id.lock().unwrap_or_else(|e| e.into_inner());
            clients.insert(client_id.clone(), (self.id, tx.clone()))
        };
        if let Some((_, older)) = older {
            let _ = older.send(Command::Kick(
                "a newer connection with the same client id took over".into(),
            ));
        }
        let session = Session {
            client_id: client_id.clone(),
            auth,
            outbox: tx,
        };
        let accepted = ConnAck::new(ConnectReturnCode::Success, false);
        if !write_packet(&mut writer, Packet::ConnAck(accepted)).await {
            self.forget(&client_id);
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
                &mut reader,
                &mut writer,
                &mut rx,
                &mut buf,
            )
            .await;
        self.forget(&client_id);
        self.recorder.push(
            self.record("disconnect", &client_id)
                .identity(session.label())
                .detail(why),
        );
    }

    /// Serve an accepted session until it ends; why it ended.
    async fn run<R, W>(
        &self,
        session: &Session,
        keep_alive: u16,
        reader: &mut R,
        writer: &mut W,
        rx: &mut mpsc::UnboundedReceiver<Command>,
        buf: &mut BytesMut,
    ) -> String
    where
        R: AsyncReadExt + Unpin,
        W: AsyncWriteExt + Unpin,
    {
        let mut filters: Vec<String> = Vec::new();
        let mut next_pkid: u16 = 0;
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
                let left = at.saturating_sub(crate::caps::crypto::now_unix());
                tokio::time::Instant::now() + Duration::from_secs(left)
            });
        loop {
            // Handle every complete packet already buffered.
            loop {
                let packet = match Packet::read(buf, MAX_PACKET) {
                    Ok(p) => p,
                    Err(CodecError::InsufficientBytes(_)) => break,
                    Err(e) => return format!("malformed packet ({e:?}); closed"),
                };
                match packet {
                    Packet::Publish(p) => {
                        if p.qos == QoS::ExactlyOnce {
                            return format!(
                                "published QoS 2 to '{}', which is not supported; closed",
                                p.topic
                            );
                        }
                        let route = match self.service.publish(session, &p) {
                            PublishVerdict::Accept => false,
                            PublishVerdict::Route => true,
                            PublishVerdict::Disconnect(why) => return why,
                        };
                        if p.qos == QoS::AtLeastOnce
                            && !write_packet(writer, Packet::PubAck(PubAck::new(p.pkid))).await
                        {
                            return "the connection broke".into();
                        }
                        if route {
                            self.clients.broadcast(&p.topic, &p.payload, p.qos);
                        }
                    }
                    Packet::Subscribe(s) => {
                        let mut codes = Vec::new();
                        for f in &s.filters {
                            match self.service.subscribe(session, &f.path, f.qos as u8) {
                                Ok(granted) => {
                                    filters.push(f.path.clone());
                                    codes.push(SubscribeReasonCode::Success(qos_of(granted)));
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
                        if !write_packet(writer, Packet::SubAck(SubAck::new(s.pkid, codes))).await {
                            return "the connection broke".into();
                        }
                    }
                    Packet::Unsubscribe(u) => {
                        filters.retain(|f| !u.topics.contains(f));
                        let ack = rumqttc::mqttbytes::v4::UnsubAck::new(u.pkid);
                        if !write_packet(writer, Packet::UnsubAck(ack)).await {
                            return "the connection broke".into();
                        }
                    }
                    Packet::PingReq => {
                        if !write_packet(writer, Packet::PingResp).await {
                            return "the connection broke".into();
                        }
                    }
                    Packet::PubAck(_) => {}
                    Packet::Disconnect => return "the client disconnected".into(),
                    other => return format!("unexpected {other:?}; closed"),
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
            tokio::select! {
                read = reader.read_buf(buf) => match read {
                    Ok(0) => return "the client closed the connection".into(),
                    Ok(_) => last_heard = tokio::time::Instant::now(),
                    Err(e) => return format!("read failed: {e}"),
                },
                command = rx.recv() => match command {
                    Some(Command::Publish { topic, payload, qos }) => {
                        if !filters.iter().any(|f| filter_matches(f, &topic)) {
                            continue;
                        }
                        let mut publish = Publish::new(topic, qos, payload);
                        if qos != QoS::AtMostOnce {
                            next_pkid = next_pkid.checked_add(1).unwrap_or(1);
                            publish.pkid = next_pkid;
                        }
                        if !write_packet(writer, Packet::Publish(publish)).await {
                            return "the connection broke".into();
                        }
                    }
                    Some(Command::Kick(why)) => return why,
                    None => return "the server stopped".into(),
                },
                _ = silence => return format!("no packet for 1.5 × the {keep_alive} s keep-alive; closed"),
                _ = expiry => return "the credentials expired; closed".into(),
            }
        }
    }

    fn forget(&self, client_id: &str) {
        let mut clients = self.clients.by_id.lock().unwrap_or_else(|e| e.into_inner());
        if clients.get(client_id).is_some_and(|(id, _)| *id == self.id) {
            clients.remove(client_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::filter_matches;

    #[test]
    fn filters_match_like_mqtt() {
        assert!(filter_matches(
            "$dps/registrations/res/#",
            "$dps/registrations/res/202/?$rid=1"
        ));
        assert!(filter_matches(
            "devices/d1/messages/devicebound/#",
            "devices/d1/messages/devicebound/%24.to=x"
        ));
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(!filter_matches("a/+/c", "a/b/d"));
        assert!(!filter_matches("a/b", "a/b/c"));
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("dt/press7/#", "dt/press7/temp"));
        // Filters against filters: does the first cover the second?
        assert!(filter_matches("dt/press7/#", "dt/press7/+"));
        assert!(filter_matches("dt/press7/#", "dt/press7/#"));
        assert!(filter_matches("dt/+/temp", "dt/press7/temp"));
        assert!(filter_matches("dt/+/temp", "dt/+/temp"));
        assert!(!filter_matches("dt/+/temp", "dt/#"));
        assert!(!filter_matches("dt/press7/temp", "dt/press7/+"));
        assert!(!filter_matches("dt/press7/#", "dt/press8/temp"));
        assert!(!filter_matches("dt/press7", "dt/press7/temp"));
    }
}
