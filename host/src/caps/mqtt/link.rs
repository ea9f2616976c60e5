//! The wire side of an MQTT session: one rumqttc client and connection, MQTT 3.1.1 or 5, with
//! their events and errors turned into one vocabulary ([`LinkEvent`], [`PluginError`]) so the
//! session logic in `mod.rs` is written once for both protocol versions. A reader thread per
//! link drives the connection (so pings go out while nobody waits on the session) and hands its
//! events over a channel, which a [`Waker`] can also interrupt: a caller waits on the
//! connection and on its own news at once, with the channel's precise timeouts.

use super::inflight::PacketIds;
use super::{err, io_failure, tls_failure, MAX_PAYLOAD_BYTES};
use crate::caps::tls;
use crate::model::{ErrorKind, Message, PluginError, ProtocolVersion};
use rumqttc::{v5, QoS, TlsConfiguration, Transport};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// What the connection reported, in protocol-neutral terms.
#[derive(Debug)]
pub enum LinkEvent {
    /// CONNACK: accepted, or the refusal reason.
    ConnAck(Result<(), String>),
    /// SUBACK for the first filter: accepted, or the refusal reason.
    SubAck(Result<(), String>),
    /// The publish with this serial (the n-th handed over, from 0) is complete: acknowledged
    /// (PUBACK or PUBCOMP), or out for QoS 0; accepted, or (MQTT 5) the refusal reason.
    Completed(u64, Result<(), String>),
    /// A message from a subscription.
    Message(Message),
    /// A [`Waker`] was called.
    Woken,
    /// Anything else (pings, outgoing acks).
    Other,
}

type Item = Result<LinkEvent, PluginError>;

/// What the connection reported, with packet ids not yet turned into serials.
enum Wire {
    Event(LinkEvent),
    /// A PUBLISH went out with this packet id (0 for QoS 0).
    Sent(u16),
    /// PUBACK or PUBCOMP for this packet id: accepted, or (MQTT 5) the refusal reason.
    Acked(u16, Result<(), String>),
}

/// Everything needed to open a link.
pub struct LinkOptions<'a> {
    pub protocol: ProtocolVersion,
    pub host: &'a str,
    pub port: u16,
    pub client_id: &'a str,
    pub credentials: Option<(String, String)>,
    pub keep_alive: Duration,
    pub clean_session: bool,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Whole seconds, as rumqttc counts them.
    pub connect_timeout_secs: u64,
}

enum Client {
    V311(rumqttc::Client),
    V5(v5::Client),
}

/// The client half of a connection whose reader thread sends its events to `events`.
pub struct Link {
    client: Client,
    events: Receiver<Item>,
    /// For wakers: the same channel the reader thread sends to.
    sender: SyncSender<Item>,
}

/// Interrupts whoever waits on a link's events ([`LinkEvent::Woken`]); does nothing once the
/// link is gone.
#[derive(Clone)]
pub struct Waker(SyncSender<Item>);

impl Waker {
    pub fn wake(&self) {
        // A full channel wakes its reader anyway.
        let _ = self.0.try_send(Ok(LinkEvent::Woken));
    }
}

/// The request channel's capacity: how many publishes may be queued ahead of the socket.
const CHANNEL_CAPACITY: usize = 64;
/// How many events the reader thread may be ahead of the session (then the connection waits:
/// TCP flow control toward the broker).
const EVENT_CAPACITY: usize = 1024;
const MAX_PACKET: usize = MAX_PAYLOAD_BYTES + 64 * 1024;

impl Link {
    /// Set up the client and start the reader thread; the CONNECT goes out at once.
    pub fn open(o: LinkOptions<'_>) -> Result<Link, PluginError> {
        // Small MQTT packets must not wait for Nagle's algorithm: with several publishes in
        // flight, the last one would sit until the broker's delayed ACK (about 40 ms).
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(o.connect_timeout_secs);
        let transport = o
            .tls
            .map(|config| Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        let endpoint = format!("{}:{}", o.host, o.port);
        let (sender, events) = sync_channel(EVENT_CAPACITY);
        let tx = sender.clone();
        let name = format!("mqtt {endpoint}");
        let (client, reader): (Client, Box<dyn FnOnce() + Send>) = match o.protocol {
            ProtocolVersion::Mqtt311 => {
                let mut options = rumqttc::MqttOptions::new(o.client_id, o.host, o.port);
                options.set_keep_alive(o.keep_alive);
                options.set_clean_session(o.clean_session);
                options.set_max_packet_size(MAX_PACKET, MAX_PACKET);
                if let Some((user, password)) = o.credentials {
                    options.set_credentials(user, password);
                }
                if let Some(transport) = transport {
                    options.set_transport(transport);
                }
                let (client, mut connection) = rumqttc::Client::new(options, CHANNEL_CAPACITY);
                connection.eventloop.set_network_options(network);
                let read = move || {
                    forward_events(&tx, || match connection.recv() {
                        Err(_) => None,
                        Ok(Ok(event)) => Some(Ok(v311_event(event))),
                        Ok(Err(e)) => Some(Err(v311_error(&endpoint, e))),
                    })
                };
                (Client::V311(client), Box::new(read))
            }
            ProtocolVersion::Mqtt5 => {
                let mut options = v5::MqttOptions::new(o.client_id, o.host, o.port);
                options.set_keep_alive(o.keep_alive);
                options.set_clean_start(o.clean_session);
                options.set_max_packet_size(Some(MAX_PACKET as u32));
                options.set_connection_timeout(o.connect_timeout_secs);
                options.set_network_options(network);
                if let Some((user, password)) = o.credentials {
                    options.set_credentials(user, password);
                }
                if let Some(transport) = transport {
                    options.set_transport(transport);
                }
                let (client, mut connection) = v5::Client::new(options, CHANNEL_CAPACITY);
                let read = move || {
                    forward_events(&tx, || match connection.recv() {
                        Err(_) => None,
                        Ok(Ok(event)) => Some(Ok(v5_event(event))),
                        Ok(Err(e)) => Some(Err(v5_error(&endpoint, e))),
                    })
                };
                (Client::V5(client), Box::new(read))
            }
        };
        std::thread::Builder::new()
            .name(name)
            .spawn(reader)
            .map_err(|e| {
                err(
                    ErrorKind::Io,
                    format!("cannot start an MQTT reader thread: {e}"),
                )
            })?;
        Ok(Link {
            client,
            events,
            sender,
        })
    }

    /// Something that interrupts [`Link::recv`].
    pub fn waker(&self) -> Waker {
        Waker(self.sender.clone())
    }

    /// Queue a SUBSCRIBE unless the request channel is full; `false` = full (or closed: the
    /// next [`Link::recv`] says which).
    pub fn try_subscribe(&self, filter: &str, qos: QoS) -> bool {
        match &self.client {
            Client::V311(client) => client.try_subscribe(filter, qos).is_ok(),
            Client::V5(client) => client.try_subscribe(filter, v5_qos(qos)).is_ok(),
        }
    }

    /// Queue a PUBLISH unless the request channel is full; `false` = full (or closed: the next
    /// [`Link::recv`] says which).
    pub fn try_publish(&self, m: &Message, qos: QoS) -> bool {
        match &self.client {
            Client::V311(client) => client
                .try_publish(m.topic.as_str(), qos, m.retain, m.payload.clone())
                .is_ok(),
            Client::V5(client) => {
                let properties = v5::mqttbytes::v5::PublishProperties {
                    user_properties: m.properties.clone(),
                    ..Default::default()
                };
                client
                    .try_publish_with_properties(
                        m.topic.as_str(),
                        v5_qos(qos),
                        m.retain,
                        m.payload.clone(),
                        properties,
                    )
                    .is_ok()
            }
        }
    }

    /// Queue a DISCONNECT (when the request channel is full, dropping the link ends the
    /// connection all the same).
    pub fn disconnect(&self) {
        // A closed channel means the connection is already gone, which is what was asked for.
        match &self.client {
            Client::V311(client) => drop(client.try_disconnect()),
            Client::V5(client) => drop(client.try_disconnect()),
        }
    }

    /// The next event, or `Ok(None)` after `timeout`. Errors name `endpoint`.
    pub fn recv(
        &mut self,
        timeout: Duration,
        endpoint: &str,
    ) -> Result<Option<LinkEvent>, PluginError> {
        match self.events.recv_timeout(timeout) {
            Ok(item) => item.map(Some),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(err(
                ErrorKind::Closed,
                format!("{endpoint} closed the connection: the session is closed"),
            )),
        }
    }
}

/// The reader thread: pass `next`'s events on until the connection fails (the error is the last
/// item), the client is gone (`None`), or nobody listens any more. Pings, outgoing acks and
/// publishes going out stay here; acknowledgements go on as completions of serials.
fn forward_events(
    tx: &SyncSender<Item>,
    mut next: impl FnMut() -> Option<Result<Wire, PluginError>>,
) {
    let mut ids = PacketIds::default();
    loop {
        let item = match next() {
            None => return,
            Some(Err(e)) => Err(e),
            Some(Ok(Wire::Event(LinkEvent::Other))) => continue,
            Some(Ok(Wire::Event(event))) => Ok(event),
            Some(Ok(Wire::Sent(pkid))) => match ids.sent(pkid) {
                Some(serial) => Ok(LinkEvent::Completed(serial, Ok(()))),
                None => continue,
            },
            Some(Ok(Wire::Acked(pkid, result))) => match ids.acked(pkid) {
                Some(serial) => Ok(LinkEvent::Completed(serial, result)),
                None => continue,
            },
        };
        let last = item.is_err();
        match tx.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(item)) => {
                if tx.send(item).is_err() {
                    return;
                }
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
        if last {
            return;
        }
    }
}

fn v5_qos(qos: QoS) -> v5::mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn v311_event(event: rumqttc::Event) -> Wire {
    use rumqttc::{ConnectReturnCode, Event, Incoming, Outgoing, SubscribeReasonCode};
    Wire::Event(match event {
        Event::Incoming(Incoming::ConnAck(ack)) => LinkEvent::ConnAck(match ack.code {
            ConnectReturnCode::Success => Ok(()),
            code => Err(v311_refusal(code).into()),
        }),
        Event::Incoming(Incoming::SubAck(ack)) => {
            LinkEvent::SubAck(match ack.return_codes.first() {
                Some(SubscribeReasonCode::Failure) => Err("failure".into()),
                _ => Ok(()),
            })
        }
        Event::Outgoing(Outgoing::Publish(pkid)) => return Wire::Sent(pkid),
        Event::Incoming(Incoming::PubAck(ack)) => return Wire::Acked(ack.pkid, Ok(())),
        Event::Incoming(Incoming::PubComp(comp)) => return Wire::Acked(comp.pkid, Ok(())),
        Event::Incoming(Incoming::Publish(p)) => LinkEvent::Message(Message {
            topic: p.topic,
            payload: p.payload.to_vec(),
            qos: p.qos as u8,
            retain: p.retain,
            properties: Vec::new(),
        }),
        _ => LinkEvent::Other,
    })
}

fn v5_event(event: v5::Event) -> Wire {
    use v5::mqttbytes::v5::{ConnectReturnCode, PubAckReason, PubCompReason, SubscribeReasonCode};
    use v5::{Event, Incoming};
    Wire::Event(match event {
        Event::Incoming(Incoming::ConnAck(ack)) => LinkEvent::ConnAck(match ack.code {
            ConnectReturnCode::Success => Ok(()),
            code => Err(reason_text(&format!("{code:?}"))),
        }),
        Event::Incoming(Incoming::SubAck(ack)) => {
            LinkEvent::SubAck(match ack.return_codes.first() {
                Some(SubscribeReasonCode::Success(_)) | None => Ok(()),
                Some(code) => Err(reason_text(&format!("{code:?}"))),
            })
        }
        Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => return Wire::Sent(pkid),
        Event::Incoming(Incoming::PubAck(ack)) => {
            return Wire::Acked(
                ack.pkid,
                match ack.reason {
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                    other => Err(reason_text(&format!("{other:?}"))),
                },
            )
        }
        Event::Incoming(Incoming::PubComp(comp)) => {
            return Wire::Acked(
                comp.pkid,
                match comp.reason {
                    PubCompReason::Success => Ok(()),
                    other => Err(reason_text(&format!("{other:?}"))),
                },
            )
        }
        Event::Incoming(Incoming::Publish(p)) => LinkEvent::Message(v5_message(&p)),
        _ => LinkEvent::Other,
    })
}

/// An MQTT 5 PUBLISH as a message (user properties kept).
pub fn v5_message(p: &v5::mqttbytes::v5::Publish) -> Message {
    Message {
        topic: String::from_utf8_lossy(&p.topic).into_owned(),
        payload: p.payload.to_vec(),
        qos: p.qos as u8,
        retain: p.retain,
        properties: p
            .properties
            .as_ref()
            .map(|props| props.user_properties.clone())
            .unwrap_or_default(),
    }
}

/// `NotAuthorized` → `not authorized`: MQTT 5 reason codes as words.
fn reason_text(debug_name: &str) -> String {
    let mut out = String::new();
    for (i, c) in debug_name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.extend(c.to_lowercase());
    }
    out
}

fn v311_refusal(code: rumqttc::ConnectReturnCode) -> &'static str {
    use rumqttc::ConnectReturnCode as C;
    match code {
        C::RefusedProtocolVersion => "unacceptable protocol version",
        C::BadClientId => "client id rejected",
        C::ServiceUnavailable => "server unavailable",
        C::BadUserNamePassword => "bad user name or password",
        C::NotAuthorized => "not authorized",
        C::Success => "success",
    }
}

fn refused(why: &str) -> PluginError {
    err(
        ErrorKind::Refused,
        format!("the broker refused the connection: {why}"),
    )
}

fn v311_error(endpoint: &str, e: rumqttc::ConnectionError) -> PluginError {
    use rumqttc::ConnectionError as E;
    match e {
        E::ConnectionRefused(code) => refused(v311_refusal(code)),
        E::NetworkTimeout => err(
            ErrorKind::Timeout,
            format!("{endpoint} did not answer in time"),
        ),
        E::Tls(rumqttc::TlsError::Io(io)) | E::Io(io) => io_failure(endpoint, &io),
        E::MqttState(rumqttc::StateError::Io(io))
        | E::MqttState(rumqttc::StateError::Deserialization(rumqttc::mqttbytes::Error::Io(io))) => {
            io_failure(endpoint, &io)
        }
        E::Tls(rumqttc::TlsError::TLS(e)) => tls_failure(endpoint, &tls::describe(&e)),
        E::Tls(e) => tls_failure(endpoint, &e.to_string()),
        other => err(
            ErrorKind::Closed,
            format!("{endpoint} closed the connection: {other}"),
        ),
    }
}

/// An MQTT 5 connection error in one sentence naming `endpoint`.
pub fn v5_error(endpoint: &str, e: v5::ConnectionError) -> PluginError {
    use v5::ConnectionError as E;
    match e {
        E::ConnectionRefused(code) | E::MqttState(v5::StateError::ConnFail { reason: code }) => {
            refused(&reason_text(&format!("{code:?}")))
        }
        E::Timeout(_) => err(
            ErrorKind::Timeout,
            format!("{endpoint} did not answer in time"),
        ),
        E::Tls(rumqttc::TlsError::Io(io)) | E::Io(io) => io_failure(endpoint, &io),
        E::MqttState(v5::StateError::Io(io))
        | E::MqttState(v5::StateError::Deserialization(v5::mqttbytes::Error::Io(io))) => {
            io_failure(endpoint, &io)
        }
        E::MqttState(v5::StateError::ServerDisconnect {
            reason_code,
            reason_string,
        }) => err(
            ErrorKind::Closed,
            format!(
                "{endpoint} closed the connection: {}{}",
                reason_text(&format!("{reason_code:?}")),
                reason_string.map(|s| format!(" ({s})")).unwrap_or_default()
            ),
        ),
        E::Tls(rumqttc::TlsError::TLS(e)) => tls_failure(endpoint, &tls::describe(&e)),
        E::Tls(e) => tls_failure(endpoint, &e.to_string()),
        other => err(
            ErrorKind::Closed,
            format!("{endpoint} closed the connection: {other}"),
        ),
    }
}
