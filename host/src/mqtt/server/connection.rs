//! One client's connection from accept to close: the TLS handshake, the CONNECT (the service's
//! verdict, an assigned client id, taking over an older connection of the same id, resuming a
//! persistent session), the will when the connection breaks, and what the session leaves
//! behind. While the session runs, [`super::event_loop`] serves it.

use super::clients::{Client, Clients, Command, Inbox};
use super::delivery::Delivery;
use super::network::{malformed_cause, Network, ReadError};
use super::service::{ConnectRequest, ConnectVerdict, Identity, MqttService, Peer, PublishVerdict};
use super::sessions;
use crate::events::{Event, Recorder};
use crate::mqtt::topic::valid_topic_name;
use rumqttc::mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, LastWill, Packet, Publish};
use rumqttc::mqttbytes::{Error as CodecError, Protocol, QoS};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session ended when the client sent DISCONNECT (then its will is not published).
pub(super) const CLIENT_DISCONNECTED: &str = "the client disconnected";
/// Why a session ended when the server closed it to stop (its will is not published either).
pub(super) const SERVER_STOPPING: &str = "the server is stopping";
/// Why a session ended when a newer connection with its client id came.
const TAKEN_OVER: &str = "a newer connection with the same client id took over";

/// How long a connection taking over a client id waits for the older one to end.
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

/// The task serving one accepted connection.
pub(super) struct ClientTask {
    pub(super) id: u64,
    pub(super) service: Arc<dyn MqttService>,
    pub(super) clients: Arc<Clients>,
    pub(super) recorder: Arc<Recorder>,
}

impl ClientTask {
    pub(super) fn record(&self, event: &'static str, client_id: &str) -> Event {
        Event::new(self.service.name(), event, client_id)
    }

    pub(super) async fn serve(self, tcp: TcpStream, acceptor: Option<tokio_rustls::TlsAcceptor>) {
        let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let Some(acceptor) = acceptor else {
            let (reader, writer) = tokio::io::split(tcp);
            return self.serve_client(peer, Vec::new(), reader, writer).await;
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
        self.serve_client(peer, chain, reader, writer).await
    }

    /// Serve one client from its CONNECT on (`chain`: its TLS client certificates, if any).
    pub(super) async fn serve_client<R, W>(
        self,
        peer: String,
        chain: Vec<Vec<u8>>,
        reader: R,
        writer: W,
    ) where
        R: AsyncReadExt + Unpin,
        W: AsyncWriteExt + Unpin,
    {
        let mut net = Network::new(reader, writer, self.service.max_packet());
        let Some(connect) = self.read_connect(&peer, &mut net).await else {
            return;
        };
        let Some((client_id, auth)) = self.admit(&peer, &chain, &connect, &mut net).await else {
            return;
        };

        let persistent = !connect.clean_session && self.service.keeps_sessions();
        self.await_older(&client_id).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (inbox, resumed) = self.take_over(&client_id, tx, persistent);
        let client = Peer {
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
        let session_present = resumed.is_some();
        if let Some(resumed) = resumed {
            // What waited goes first, before anything new.
            for publish in resumed.waiting {
                self.deliver(&mut delivery, publish, &client_id, &mut net.out);
            }
        }
        let accepted = ConnAck::new(ConnectReturnCode::Success, session_present);
        if !net.send_now(Packet::ConnAck(accepted)).await {
            self.leave(&client, &mut rx, delivery);
            return;
        }
        self.recorder.push(
            self.record("connect", &client_id)
                .identity(client.label())
                .detail(match &client.auth {
                    Ok(_) => format!("connected from {peer}"),
                    Err(why) => format!("connected from {peer}, not authenticated: {why}"),
                }),
        );

        let why = self
            .run(
                &client,
                connect.keep_alive,
                &mut net,
                &mut rx,
                &mut delivery,
            )
            .await;
        // Acknowledgements queued before the session ended still go out (best effort), so the
        // client does not send stored messages again.
        net.flush().await;
        self.leave(&client, &mut rx, delivery);
        if why != CLIENT_DISCONNECTED && why != SERVER_STOPPING {
            if let Some(will) = connect.last_will {
                self.publish_will(&client, will);
            }
        }
        self.recorder.push(
            self.record("disconnect", &client_id)
                .identity(client.label())
                .detail(why),
        );
    }

    /// The client's CONNECT, or `None` once a connection that sent none in time, a malformed
    /// one or one of a protocol level not served was answered (if it can be) and recorded.
    async fn read_connect<R, W>(&self, peer: &str, net: &mut Network<R, W>) -> Option<Connect>
    where
        R: AsyncReadExt + Unpin,
        W: AsyncWriteExt + Unpin,
    {
        let first = tokio::time::timeout(CONNECT_TIMEOUT, net.read_packet()).await;
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
                    ReadError::Eof if net.read.is_empty() => "",
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
        match connect {
            Ok(connect) => Some(connect),
            Err((code, event, cause, detail)) => {
                if let Some(code) = code {
                    net.send_now(Packet::ConnAck(ConnAck::new(code, false)))
                        .await;
                }
                if !cause.is_empty() {
                    self.service.protocol_error(cause, &detail);
                }
                self.recorder.push(self.record(event, "").detail(detail));
                None
            }
        }
    }

    /// Ask the service whether `connect` may connect (a clean session without a client id gets
    /// one assigned): the client id and its identity, or `None` once the refusal was answered and
    /// recorded.
    async fn admit<R, W>(
        &self,
        peer: &str,
        chain: &[Vec<u8>],
        connect: &Connect,
        net: &mut Network<R, W>,
    ) -> Option<(String, Result<Identity, String>)>
    where
        R: AsyncReadExt + Unpin,
        W: AsyncWriteExt + Unpin,
    {
        let (username, password) = connect
            .login
            .as_ref()
            .map(|l| (l.username.as_str(), l.password.as_str()))
            .unwrap_or(("", ""));
        let request = ConnectRequest {
            client_id: &connect.client_id,
            username,
            password,
            peer_chain: chain,
        };
        // MQTT 3.1.1: a client with a clean session may leave its id to the server.
        let assigned;
        let request = if connect.client_id.is_empty() {
            if !connect.clean_session {
                let code = ConnectReturnCode::BadClientId;
                net.send_now(Packet::ConnAck(ConnAck::new(code, false)))
                    .await;
                self.recorder
                    .push(self.record("refused", "").detail(format!(
                        "{peer} asked for a persistent session without a client id"
                    )));
                return None;
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
                net.send_now(Packet::ConnAck(ConnAck::new(code, false)))
                    .await;
                self.recorder
                    .push(self.record("refused", &client_id).detail(why));
                return None;
            }
            ConnectVerdict::Close(why) => {
                self.recorder
                    .push(self.record("closed", &client_id).detail(why));
                return None;
            }
        };
        Some((client_id, auth))
    }

    /// Publish a client's will (MQTT 3.1.1 §3.1.2.5) as if the client had sent it: its
    /// connection ended without a DISCONNECT (it broke, went silent past its keep-alive, broke
    /// the protocol, or a newer connection took its client id over).
    fn publish_will(&self, client: &Peer, will: LastWill) {
        let record = self
            .record("will", &client.client_id)
            .identity(client.label())
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
        match self.service.publish(client, &p) {
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

    /// A connection of the same client id is told to close, and given [`TAKEOVER_WAIT`] to end
    /// (and leave its session) before this one takes over.
    pub(super) async fn await_older(&self, client_id: &str) {
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
    fn leave(&self, client: &Peer, rx: &mut mpsc::UnboundedReceiver<Command>, delivery: Delivery) {
        let mut clients = self.clients.by_id.lock().unwrap_or_else(|e| e.into_inner());
        // A newer connection that took over already did without this one's session.
        if clients
            .get(&client.client_id)
            .is_none_or(|client| client.connection != self.id)
        {
            return;
        }
        clients.remove(&client.client_id);
        if !delivery.persistent {
            return;
        }
        let mut waiting = delivery.sent;
        for publish in &mut waiting {
            publish.dup = true;
        }
        let mut parked = sessions::Parked {
            filters: client.inbox.filters().clone(),
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
            .park(client.client_id.clone(), parked)
            .is_err();
        drop(clients);
        if dropped > 0 {
            self.service.session_message_dropped(&format!(
                "{dropped} messages were not kept for absent client '{}': its session holds {} \
                 already",
                client.client_id,
                sessions::MAX_WAITING
            ));
        }
        if refused {
            self.service.session_message_dropped(&format!(
                "the session of '{}' was not kept: {} absent clients' sessions are kept already",
                client.client_id,
                sessions::MAX_SESSIONS
            ));
        }
    }
}
