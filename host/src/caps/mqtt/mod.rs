//! The `mqtt` capability: outbound MQTT 3.1.1 and 5 sessions for plugins (our own connection
//! over tokio and rustls, rumqttc's packet codec), only to endpoints the plugin's manifest
//! declares. A connection thread per session drives the connection (pings included); each
//! call waits for its own acknowledgement (CONNACK, SUBACK, PUBACK), and messages that arrive
//! meanwhile are kept for `receive`. The bridge streams publishes instead
//! ([`MqttSession::offer`], [`MqttSession::poll_completed`]). Every failure is a typed error:
//! `refused` (CONNACK refusal, SUBACK failure), `closed` (the broker hung up), `tls`, `timeout`,
//! `io` (unreachable, DNS), `invalid-input`, `permission-denied`, `limit-exceeded`.

pub mod rhai;
pub mod wasm;

use super::tls::{self, TlsOptions};
use super::CapContext;
use crate::model::{ErrorKind, Message, PluginError, ProtocolVersion};
use crate::mqtt::client::inflight::InFlight;
use crate::mqtt::client::{err, Link, LinkEvent, LinkOptions};
use crate::mqtt::client::{Waker, MAX_PAYLOAD_BYTES};
use crate::mqtt::topic::validate_topic_filter;
use rumqttc::mqttbytes::QoS;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for a SUBACK, or for the broker to acknowledge the oldest publish in flight.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many events already waiting are taken with the one [`MqttSession::poll_completed`]
/// waited for.
const DRAIN_AT_ONCE: usize = 1024;
/// How long [`MqttSession::publish_batch`] waits for one connection event at a time.
const BATCH_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive_secs: u16,
    pub clean_session: bool,
    pub protocol: ProtocolVersion,
    /// `None` = plain TCP.
    pub tls: Option<TlsOptions>,
    /// 0 = the default (30 s).
    pub connect_timeout_ms: u32,
}

/// Connect options as plugins write them (WIT record or Rhai map): the client certificate's key
/// is a key reference, resolved by [`ConnectSpec::resolve`].
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConnectSpec {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u16,
    #[serde(default = "default_clean_session")]
    pub clean_session: bool,
    #[serde(default)]
    pub protocol: ProtocolVersion,
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    #[serde(default)]
    pub connect_timeout_ms: u32,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSpec {
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub client_certificate: Option<crate::model::ClientCertificate>,
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub alpn: Vec<String>,
}

fn default_keep_alive() -> u16 {
    60
}

fn default_clean_session() -> bool {
    true
}

impl ConnectSpec {
    /// Open the client certificate's key (checking the plugin's file roots) and build the options.
    pub(crate) fn resolve(self, ctx: &CapContext) -> Result<ConnectOptions, PluginError> {
        let tls = match self.tls {
            None => None,
            Some(t) => Some(TlsOptions {
                ca_file: t.ca_file,
                client_certificate: match t.client_certificate {
                    None => None,
                    Some(c) => Some((c.chain_file, super::certs::open_key(ctx, &c.key_ref)?)),
                },
                server_name: t.server_name,
                alpn: t.alpn,
            }),
        };
        Ok(ConnectOptions {
            host: self.host,
            port: self.port,
            client_id: self.client_id,
            username: self.username,
            password: self.password,
            keep_alive_secs: self.keep_alive_secs,
            clean_session: self.clean_session,
            protocol: self.protocol,
            tls,
            connect_timeout_ms: self.connect_timeout_ms,
        })
    }
}

/// The options to open a flow's `connection` with fresh `credentials` (from `refresh`): the
/// client certificate's key is opened under `ctx` (the flow's file roots), the credentials'
/// username and password win over the connection's.
pub fn connection_options(
    ctx: &CapContext,
    conn: &crate::model::Connection,
    credentials: &crate::model::Credentials,
) -> Result<ConnectOptions, PluginError> {
    use crate::model::Auth;
    let (certificate, password) = match &conn.auth {
        Auth::None => (None, None),
        Auth::Password { password } => (None, Some(password)),
        Auth::ClientCertificate(c) => (Some(c), None),
        Auth::CertificateAndPassword {
            certificate,
            password,
        } => (Some(certificate), Some(password)),
    };
    let client_certificate = match certificate {
        Some(c) => Some((
            c.chain_file.clone(),
            super::certs::open_key(ctx, &c.key_ref)?,
        )),
        None => None,
    };
    Ok(ConnectOptions {
        host: conn.host.clone(),
        port: conn.port,
        client_id: conn.client_id.clone(),
        username: credentials
            .username
            .clone()
            .or_else(|| conn.username.clone()),
        password: credentials
            .password
            .clone()
            .or_else(|| password.filter(|p| !p.is_empty()).cloned()),
        keep_alive_secs: conn.keep_alive_secs,
        clean_session: true,
        protocol: conn.protocol,
        tls: Some(TlsOptions {
            ca_file: conn.ca_file.clone(),
            client_certificate,
            server_name: conn.server_name.clone(),
            alpn: conn.alpn.clone(),
        }),
        connect_timeout_ms: 0,
    })
}

/// The `mqtt` capability's state in one plugin's context: the sessions the plugin holds open,
/// bounded by its limits' `max_sessions`. Clones share the count.
#[derive(Debug, Clone)]
pub struct SessionSlots {
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max: usize,
}

impl SessionSlots {
    pub fn new(max: usize) -> SessionSlots {
        SessionSlots {
            open: Default::default(),
            max,
        }
    }

    /// The same limit with a count of its own (the host's own sessions for a flow's device do
    /// not use up the flow's slots).
    pub fn separate(&self) -> SessionSlots {
        SessionSlots::new(self.max)
    }

    /// Take a slot for a new session of `plugin`, or say that all are taken.
    fn take(&self, plugin: &str) -> Result<(), PluginError> {
        if self.open.fetch_add(1, Ordering::SeqCst) >= self.max {
            self.open.fetch_sub(1, Ordering::SeqCst);
            return Err(err(
                ErrorKind::LimitExceeded,
                format!(
                    "plugin '{plugin}' already has {} MQTT sessions open (limits max_sessions)",
                    self.max
                ),
            ));
        }
        Ok(())
    }

    /// A session ended (or never opened).
    fn give_back(&self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What became of a message offered to an [`MqttSession`].
pub(crate) enum Offered {
    /// It is on its way.
    Taken,
    /// The connection's request channel is full (call [`MqttSession::poll_completed`], then
    /// offer it again).
    Full,
    /// No session could ever publish it (too large, user properties on MQTT 3.1.1, ...): why,
    /// and the message back.
    Refused(PluginError, Message),
}

/// An open MQTT session. Dropping it disconnects and frees the plugin's session slot.
pub struct MqttSession {
    link: Link,
    protocol: ProtocolVersion,
    endpoint: String,
    received: VecDeque<Message>,
    in_flight: InFlight,
    /// A refusal of a publish in flight seen while waiting for something else.
    refusal: Option<PluginError>,
    ctx: CapContext,
    open: bool,
}

impl std::fmt::Debug for MqttSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MqttSession({})", self.endpoint)
    }
}

fn qos(level: u8) -> Result<QoS, PluginError> {
    match level {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        other => Err(err(
            ErrorKind::InvalidInput,
            format!("QoS {other} is not 0, 1 or 2"),
        )),
    }
}

impl MqttSession {
    /// Connect and wait for the CONNACK.
    pub fn connect(ctx: &CapContext, o: &ConnectOptions) -> Result<MqttSession, PluginError> {
        ctx.check_endpoint(&o.host, o.port)?;
        if o.client_id.is_empty() && o.protocol == ProtocolVersion::Mqtt311 {
            return Err(err(
                ErrorKind::InvalidInput,
                "MQTT client id is empty".into(),
            ));
        }
        if o.keep_alive_secs < 5 {
            return Err(err(
                ErrorKind::InvalidInput,
                format!(
                    "keep-alive of {} s is too short (at least 5 s)",
                    o.keep_alive_secs
                ),
            ));
        }
        let tls = match &o.tls {
            Some(tls_options) => Some(tls::client_config(ctx, &o.host, tls_options)?),
            None => None,
        };
        // Wait for the client id's CONNECT slot before taking a session slot.
        crate::retry::connect_gate(&format!("{}:{}", o.host, o.port), &o.client_id);
        ctx.mqtt.take(&ctx.plugin)?;
        let timeout = super::deadline::bound(match o.connect_timeout_ms {
            0 => DEFAULT_CONNECT_TIMEOUT,
            ms => Duration::from_millis(ms.into()),
        });
        let link = Link::open(LinkOptions {
            protocol: o.protocol,
            host: &o.host,
            port: o.port,
            client_id: &o.client_id,
            credentials: (o.username.is_some() || o.password.is_some()).then(|| {
                (
                    o.username.clone().unwrap_or_default(),
                    o.password.clone().unwrap_or_default(),
                )
            }),
            keep_alive: Duration::from_secs(o.keep_alive_secs.into()),
            clean_session: o.clean_session,
            tls,
            // The session's own deadline below answers first, with its clearer message.
            connect_timeout: timeout + Duration::from_secs(1),
        });
        let link = match link {
            Ok(link) => link,
            Err(e) => {
                ctx.mqtt.give_back();
                return Err(e);
            }
        };
        // From here on, dropping `session` frees the slot.
        let mut session = MqttSession {
            link,
            protocol: o.protocol,
            endpoint: format!("{}:{}", o.host, o.port),
            received: VecDeque::new(),
            in_flight: InFlight::default(),
            refusal: None,
            ctx: ctx.clone(),
            open: true,
        };
        session.wait_for(timeout, "the CONNACK", |event| match event {
            LinkEvent::Connected => Some(Ok(())),
            _ => None,
        })?;
        Ok(session)
    }

    /// Connect as a flow's `connection` describes, with the credentials it carries: how a flow
    /// checks the connection it is about to return (and how MindConnect agents get provisioned).
    pub fn open(
        ctx: &CapContext,
        conn: &crate::model::Connection,
    ) -> Result<MqttSession, PluginError> {
        let options = connection_options(ctx, conn, &crate::model::Credentials::default())?;
        MqttSession::connect(ctx, &options)
    }

    pub fn subscribe(&mut self, filter: &str, level: u8) -> Result<(), PluginError> {
        validate_topic_filter(filter).map_err(|why| {
            err(
                ErrorKind::InvalidInput,
                format!("topic filter '{filter}' {why}"),
            )
        })?;
        let qos = qos(level)?;
        let deadline = Instant::now() + ACK_TIMEOUT;
        while !self.link.try_subscribe(filter, qos) {
            // The request channel is full (or closed, which `recv` reports): let it move.
            if Instant::now() >= deadline {
                return Err(err(
                    ErrorKind::Timeout,
                    format!(
                        "{} takes no requests (subscribing to '{filter}')",
                        self.endpoint
                    ),
                ));
            }
            if let Some(event) = self.recv(Duration::from_millis(10))? {
                self.keep(event);
            }
        }
        let endpoint = self.endpoint.clone();
        self.wait_for(ACK_TIMEOUT, "the SUBACK", |event| match event {
            LinkEvent::SubAck(result) => Some(result.clone().map_err(|why| {
                err(
                    ErrorKind::Refused,
                    format!("{endpoint} refused the subscription to '{filter}': {why}"),
                )
            })),
            _ => None,
        })
    }

    /// Check that `msg` can be published; its QoS.
    fn publishable(&self, msg: &Message) -> Result<QoS, PluginError> {
        if msg.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(err(
                ErrorKind::LimitExceeded,
                format!(
                    "payload of {} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit",
                    msg.payload.len()
                ),
            ));
        }
        if msg.topic.is_empty() || msg.topic.bytes().any(|b| matches!(b, b'+' | b'#' | 0)) {
            return Err(err(
                ErrorKind::InvalidInput,
                format!("'{}' is not a topic one can publish to", msg.topic),
            ));
        }
        if self.protocol == ProtocolVersion::Mqtt311 && !msg.properties.is_empty() {
            return Err(err(
                ErrorKind::InvalidInput,
                format!(
                    "the message to '{}' has user properties, which MQTT 3.1.1 cannot carry \
                     (connect with MQTT 5, or put them in the topic)",
                    msg.topic
                ),
            ));
        }
        qos(msg.qos)
    }

    /// Publish one message; for QoS 1 and 2, wait until the broker acknowledges it.
    pub fn publish(&mut self, msg: &Message) -> Result<(), PluginError> {
        self.publish_batch(std::slice::from_ref(msg))
    }

    /// Publish messages in order with many in flight at once, and return when the broker has
    /// acknowledged every QoS 1/2 message (QoS 0 ones when they are sent). Nothing is sent if any
    /// message is invalid. Not to be mixed with [`MqttSession::offer`] on the same session.
    pub fn publish_batch(&mut self, msgs: &[Message]) -> Result<(), PluginError> {
        let levels = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| {
                self.publishable(m).map_err(|e| {
                    let prefix = if msgs.len() > 1 {
                        format!("message {}: ", i + 1)
                    } else {
                        String::new()
                    };
                    PluginError::new(e.kind, format!("{prefix}{}", e.message))
                })
            })
            .collect::<Result<Vec<QoS>, PluginError>>()?;
        let mut next = 0; // the next message to hand to the client
        let mut done = 0;
        // A copy of `msgs[next]` the full request channel gave back, for the next round.
        let mut parked: Option<Message> = None;
        while done < msgs.len() {
            // Hand over as many messages as the request channel takes.
            while next < msgs.len() {
                let msg = parked.take().unwrap_or_else(|| msgs[next].clone());
                match self.hand_over(msg, levels[next]) {
                    Ok(()) => next += 1,
                    Err(msg) => {
                        parked = Some(msg);
                        break;
                    }
                }
            }
            done += self.poll_completed(BATCH_POLL).map_err(|e| {
                PluginError::new(
                    e.kind,
                    format!("{} ({done} of {} acknowledged)", e.message, msgs.len()),
                )
            })?;
        }
        Ok(())
    }

    /// Hand `msg` to the connection without waiting for anything (it is moved, not copied).
    /// Messages complete in the order they were offered.
    pub(crate) fn offer(&mut self, msg: Message) -> Offered {
        match self.publishable(&msg) {
            Err(why) => Offered::Refused(why, msg),
            Ok(qos) => match self.hand_over(msg, qos) {
                Ok(()) => Offered::Taken,
                Err(_) => Offered::Full,
            },
        }
    }

    fn hand_over(&mut self, msg: Message, qos: QoS) -> Result<(), Message> {
        self.link.try_publish(msg, qos)?;
        self.in_flight.push();
        Ok(())
    }

    /// Drive the connection for at most `timeout` (less when something happens): how many of
    /// the oldest offered messages are now complete (acknowledged, or sent for QoS 0). An error
    /// when the connection failed, the broker refused a message (MQTT 5), or it acknowledged
    /// nothing for 30 s while messages were in flight.
    pub(crate) fn poll_completed(&mut self, timeout: Duration) -> Result<usize, PluginError> {
        if let Some(stalled) = self.in_flight.stalled_for() {
            if stalled >= ACK_TIMEOUT {
                return Err(err(
                    ErrorKind::Timeout,
                    format!(
                        "{} acknowledged none of {} messages in flight within {} ms",
                        self.endpoint,
                        self.in_flight.len(),
                        ACK_TIMEOUT.as_millis()
                    ),
                ));
            }
        }
        if let Some(event) = self.recv(timeout)? {
            self.keep(event);
            // Take what else has arrived meanwhile, so a burst of acknowledgements is one
            // wake-up of the caller rather than one each.
            for _ in 0..DRAIN_AT_ONCE {
                match self.recv(Duration::ZERO)? {
                    Some(event) => self.keep(event),
                    None => break,
                }
            }
        }
        if let Some(refusal) = self.refusal.take() {
            return Err(refusal);
        }
        Ok(self.in_flight.take_completed())
    }

    /// Something that makes a [`MqttSession::poll_completed`] waiting now (or next) return at
    /// once: how a caller waits on the connection and on news of its own together.
    pub(crate) fn waker(&self) -> Waker {
        self.link.waker()
    }

    /// The messages received so far (from subscriptions), oldest first, taken.
    pub(crate) fn take_received(&mut self) -> Vec<Message> {
        self.received.drain(..).collect()
    }

    /// The next message received, or `None` after `timeout`.
    pub fn receive(&mut self, timeout: Duration) -> Result<Option<Message>, PluginError> {
        if let Some(msg) = self.received.pop_front() {
            return Ok(Some(msg));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match self.recv(left)? {
                None => return Ok(None),
                Some(event) => {
                    self.keep(event);
                    if let Some(msg) = self.received.pop_front() {
                        return Ok(Some(msg));
                    }
                }
            }
        }
    }

    pub fn disconnect(&mut self) -> Result<(), PluginError> {
        if !self.open {
            return Ok(());
        }
        self.open = false;
        self.link.disconnect();
        // Let the DISCONNECT go out: the connection then ends, and the reader says so.
        let deadline = Instant::now() + Duration::from_millis(200);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.link.recv(left, &self.endpoint) {
                Ok(Some(_)) if !left.is_zero() => continue,
                _ => return Ok(()),
            }
        }
    }

    /// One event from the link; a failed link marks the session closed.
    fn recv(&mut self, timeout: Duration) -> Result<Option<LinkEvent>, PluginError> {
        // Inside a plugin call, no wait outlasts the call's deadline.
        let bounded = super::deadline::bound(timeout);
        if bounded < timeout && bounded.is_zero() {
            let during = format!("an MQTT wait on {}", self.endpoint);
            if let Some(e) = super::deadline::passed(&during) {
                return Err(e);
            }
        }
        let endpoint = &self.endpoint;
        let link = &mut self.link;
        let received = if bounded.is_zero() {
            link.recv(bounded, endpoint)
        } else {
            super::deadline::blocking(|| link.recv(bounded, endpoint))
        };
        received.inspect_err(|e| {
            if e.kind != ErrorKind::Timeout {
                self.open = false;
            }
        })
    }

    /// Poll until `done` says the awaited event came (or failed), keeping incoming messages.
    fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&LinkEvent) -> Option<Result<(), PluginError>>,
    ) -> Result<(), PluginError> {
        // No longer than what is left of the plugin call, if one is running.
        let timeout = super::deadline::bound(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = if left.is_zero() {
                None
            } else {
                self.recv(left)?
            };
            match event {
                None => {
                    if let Some(e) = super::deadline::passed(&format!("waiting for {what}")) {
                        return Err(e);
                    }
                    return Err(err(
                        ErrorKind::Timeout,
                        format!(
                            "{} did not send {what} within {} ms",
                            self.endpoint,
                            timeout.as_millis()
                        ),
                    ));
                }
                Some(event) => {
                    if let Some(result) = done(&event) {
                        return result;
                    }
                    self.keep(event);
                }
            }
        }
    }

    /// Note what an event says about messages in flight, and keep received messages.
    fn keep(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Message(msg) => self.received.push_back(msg),
            LinkEvent::Completed(batch) => {
                for (serial, result) in batch {
                    let ours = self.in_flight.completed(serial);
                    if let (true, Err(why)) = (ours, result) {
                        self.refusal.get_or_insert(err(
                            ErrorKind::Refused,
                            format!("{} refused a message: {why}", self.endpoint),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
}

impl Drop for MqttSession {
    fn drop(&mut self) {
        let _ = self.disconnect();
        self.ctx.mqtt.give_back();
    }
}
