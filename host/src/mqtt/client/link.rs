//! The wire side of an MQTT session: one connection (TCP, optionally rustls), MQTT 3.1.1 or 5,
//! driven by its own thread so pings go out while nobody waits on the session. The session
//! hands requests over a channel; the connection thread takes every request waiting at once
//! (up to the in-flight window), encodes them into one buffer and writes it with one flush, so
//! a burst of publishes costs one TLS record and one system call rather than one each. What the
//! broker says comes back as [`LinkEvent`]s on a channel a [`Waker`] can also interrupt: a
//! caller waits on the connection and on its own news at once, with precise timeouts.

use super::errors::{io_failure, refused, tls_failure};
use super::inflight::PacketIds;
use super::wire::{Codec, Connect, Incoming, Outgoing};
use super::{err, MAX_PAYLOAD_BYTES};
use crate::model::{ErrorKind, Message, PluginError, ProtocolVersion};
use bytes::BytesMut;
use rumqttc::mqttbytes::QoS;
use rustls_pki_types::ServerName;
use std::collections::{HashSet, VecDeque};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the connection reported, in protocol-neutral terms.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// CONNACK accepting the session (a refusal ends the link with an error).
    Connected,
    /// SUBACK for the first filter: accepted, or the refusal reason.
    SubAck(Result<(), String>),
    /// The publishes with these serials (the n-th handed over is serial n, from 0) are
    /// complete: acknowledged (PUBACK or PUBCOMP), or written for QoS 0; accepted, or the
    /// refusal reason. All the completions of one read or write come as one event, so a burst
    /// of acknowledgements wakes the session once.
    Completed(Vec<(u64, Result<(), String>)>),
    /// A message from a subscription.
    Message(Message),
    /// A [`Waker`] was called.
    Woken,
}

type Item = Result<LinkEvent, PluginError>;

/// Everything needed to open a link.
pub(crate) struct LinkOptions<'a> {
    pub protocol: ProtocolVersion,
    pub host: &'a str,
    pub port: u16,
    pub client_id: &'a str,
    pub credentials: Option<(String, String)>,
    pub keep_alive: Duration,
    pub clean_session: bool,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// For TCP, TLS and the CONNACK together.
    pub connect_timeout: Duration,
}

/// What a session asks of its connection.
enum Request {
    Publish(Message, QoS),
    Subscribe(String, QoS),
    Disconnect,
}

/// The session's half of a connection whose thread sends its events to `events`.
pub(crate) struct Link {
    requests: mpsc::Sender<Request>,
    events: Receiver<Item>,
    /// For wakers: the same channel the connection thread sends to.
    sender: SyncSender<Item>,
}

/// Interrupts whoever waits on a link's events ([`LinkEvent::Woken`]); does nothing once the
/// link is gone.
#[derive(Clone)]
pub(crate) struct Waker(SyncSender<Item>);

impl Waker {
    pub(crate) fn wake(&self) {
        // A full channel wakes its reader anyway.
        let _ = self.0.try_send(Ok(LinkEvent::Woken));
    }
}

/// The request channel's capacity: how many requests may wait for the connection thread.
const CHANNEL_CAPACITY: usize = 64;
/// How many events the connection thread may be ahead of the session. Then it keeps what it
/// read back and stops reading until the session takes some (TCP flow control holds the broker
/// back), while it goes on writing and pinging: a session that reads slowly, or not for a
/// while, keeps its connection.
const EVENT_CAPACITY: usize = 1024;
/// How often a connection whose session's channel is full looks for room.
const BACKLOG_RETRY: Duration = Duration::from_millis(5);
/// QoS 1/2 publishes sent and not yet acknowledged, at most (fewer if the broker says so).
const MAX_IN_FLIGHT: usize = 100;
/// QoS 2 publishes in flight at most with MQTT 3.1.1, whose brokers cannot say how many they
/// take: mosquitto takes `max_inflight_messages` (20 by default) and drops the QoS 2 messages
/// beyond it while acknowledging them as if received (MQTT 3.1.1's PUBREC has no reason code).
/// MQTT 5 brokers say their receive maximum in the CONNACK.
const MQTT311_EXACTLY_ONCE_IN_FLIGHT: usize = 10;
const MAX_PACKET: usize = MAX_PAYLOAD_BYTES + 64 * 1024;
/// How long a write may wait for the broker to take the bytes.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long publishes in flight wait for news before the connection acknowledges at once
/// ([`ack_quickly`]).
const QUIET_BEFORE_ACK: Duration = Duration::from_millis(2);
/// Read in pieces of at least this much.
const READ_CHUNK: usize = 16 * 1024;

impl Link {
    /// Start the connection thread; the TCP connection, TLS handshake and CONNECT begin at once.
    pub fn open(o: LinkOptions<'_>) -> Result<Link, PluginError> {
        let (requests, requests_rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (sender, events) = sync_channel(EVENT_CAPACITY);
        let endpoint = format!("{}:{}", o.host, o.port);
        let connection = Driver {
            endpoint: endpoint.clone(),
            host: o.host.to_owned(),
            port: o.port,
            client_id: o.client_id.to_owned(),
            credentials: o.credentials,
            keep_alive: o.keep_alive,
            clean_session: o.clean_session,
            tls: o.tls,
            connect_timeout: o.connect_timeout,
            codec: Codec::new(o.protocol, MAX_PACKET),
            events: sender.clone(),
            out: BytesMut::with_capacity(READ_CHUNK),
            ids: PacketIds::default(),
            last_pkid: 0,
            subscribing: HashSet::new(),
            receiving: HashSet::new(),
            max_in_flight: MAX_IN_FLIGHT,
            exactly_once: HashSet::new(),
            max_exactly_once: match o.protocol {
                ProtocolVersion::Mqtt311 => MQTT311_EXACTLY_ONCE_IN_FLIGHT,
                ProtocolVersion::Mqtt5 => MAX_IN_FLIGHT,
            },
            written: Vec::new(),
            completed: Vec::new(),
            backlog: VecDeque::new(),
        };
        std::thread::Builder::new()
            .name(format!("mqtt {endpoint}"))
            .spawn(move || connection.run(requests_rx))
            .map_err(|e| {
                err(
                    ErrorKind::Io,
                    format!("cannot start an MQTT connection thread: {e}"),
                )
            })?;
        Ok(Link {
            requests,
            events,
            sender,
        })
    }

    /// Something that interrupts [`Link::recv`].
    pub(crate) fn waker(&self) -> Waker {
        Waker(self.sender.clone())
    }

    /// Queue a SUBSCRIBE unless the request channel is full; `false` = full (or closed: the
    /// next [`Link::recv`] says which).
    pub(crate) fn try_subscribe(&self, filter: &str, qos: QoS) -> bool {
        self.requests
            .try_send(Request::Subscribe(filter.to_owned(), qos))
            .is_ok()
    }

    /// Queue a PUBLISH unless the request channel is full; `Err` gives the message back when it
    /// is full (or closed: the next [`Link::recv`] says which).
    pub(crate) fn try_publish(&self, m: Message, qos: QoS) -> Result<(), Message> {
        match self.requests.try_reserve() {
            Ok(permit) => {
                permit.send(Request::Publish(m, qos));
                Ok(())
            }
            Err(_) => Err(m),
        }
    }

    /// Queue a DISCONNECT (when the request channel is full, dropping the link ends the
    /// connection all the same).
    pub fn disconnect(&self) {
        // A closed channel means the connection is already gone, which is what was asked for.
        let _ = self.requests.try_send(Request::Disconnect);
    }

    /// The next event, or `Ok(None)` after `timeout`. Errors name `endpoint`.
    pub(crate) fn recv(
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

/// A byte stream to the broker: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {
    fn tcp(&self) -> &TcpStream;
}

impl Stream for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Stream for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Send the TCP acknowledgement the kernel is holding back (delayed ACK, up to 40 ms) now. A
/// broker that leaves Nagle's algorithm on (mosquitto's default) holds back all but the first of
/// a burst of PUBACKs until its previous segment is acknowledged; while we send publishes the
/// acknowledgement rides on them, but once we wait with nothing to send, every window of
/// publishes would stall up to 40 ms. Done only after [`QUIET_BEFORE_ACK`] without news: ACKing
/// every read costs more packets and CPU under steady load than it saves.
fn ack_quickly(stream: &dyn Stream) {
    #[cfg(target_os = "linux")]
    {
        let _ = socket2::SockRef::from(stream.tcp()).set_tcp_quickack(true);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = stream;
}

/// What drives one link on its own thread: the socket, the codec, the packet ids, the requests.
struct Driver {
    endpoint: String,
    host: String,
    port: u16,
    client_id: String,
    credentials: Option<(String, String)>,
    keep_alive: Duration,
    clean_session: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
    codec: Codec,
    events: SyncSender<Item>,
    /// Packets encoded and not yet written.
    out: BytesMut,
    /// Packet ids of our QoS 1/2 publishes in flight → their serials.
    ids: PacketIds,
    last_pkid: u16,
    /// Packet ids of SUBSCRIBEs waiting for their SUBACK.
    subscribing: HashSet<u16>,
    /// Packet ids of QoS 2 messages received and not yet released by the broker.
    receiving: HashSet<u16>,
    max_in_flight: usize,
    /// Packet ids of our QoS 2 publishes in flight.
    exactly_once: HashSet<u16>,
    /// How many of those at most.
    max_exactly_once: usize,
    /// Serials of QoS 0 publishes in `out`: complete once it is written.
    written: Vec<u64>,
    /// Completions not yet handed to the session.
    completed: Vec<(u64, Result<(), String>)>,
    /// Events the session's full channel did not take yet, oldest first (bounded by one read:
    /// nothing is read while it holds any).
    backlog: VecDeque<Item>,
}

/// Why the connection thread stops.
enum Stop {
    /// The session asked for it, or is gone.
    Done,
    /// Nobody listens for events any more.
    Unheard,
    Failed(PluginError),
}

impl Driver {
    fn run(mut self, requests: mpsc::Receiver<Request>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let stop = match runtime {
            Ok(runtime) => runtime.block_on(self.serve(requests)),
            Err(e) => Stop::Failed(err(
                ErrorKind::Io,
                format!("cannot start an MQTT connection runtime: {e}"),
            )),
        };
        // The last item tells the session the link is over.
        let last = match stop {
            Stop::Unheard => return,
            Stop::Done => err(
                ErrorKind::Closed,
                format!(
                    "{} closed the connection: the session is closed",
                    self.endpoint
                ),
            ),
            Stop::Failed(e) => e,
        };
        // What was read before the end comes first (the connection is over: waiting for the
        // session to take it holds nothing up).
        for item in std::mem::take(&mut self.backlog) {
            if self.events.send(item).is_err() {
                return;
            }
        }
        let _ = self.events.send(Err(last));
    }

    async fn serve(&mut self, mut requests: mpsc::Receiver<Request>) -> Stop {
        let connected = tokio::time::timeout(self.connect_timeout, self.connect()).await;
        let (mut stream, inbuf) = match connected {
            Ok(Ok(connected)) => connected,
            Ok(Err(e)) => return Stop::Failed(e),
            Err(_) => {
                return Stop::Failed(err(
                    ErrorKind::Timeout,
                    format!("{} did not answer in time", self.endpoint),
                ))
            }
        };
        if !self.emit(Ok(LinkEvent::Connected)) {
            return Stop::Unheard;
        }
        let stop = self.exchange(&mut stream, inbuf, &mut requests).await;
        if let Stop::Done = stop {
            // Say goodbye; the session is over whether or not the broker hears it.
            self.out.clear();
            if self
                .codec
                .encode(Outgoing::Disconnect, &mut self.out)
                .is_ok()
            {
                let _ = self.write(&mut stream).await;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), stream.shutdown()).await;
        }
        stop
    }

    /// Open the TCP connection (and TLS), send the CONNECT and wait for the CONNACK: the stream
    /// and what the broker sent after the CONNACK in the same read (a persistent session's
    /// messages may follow it at once).
    async fn connect(&mut self) -> Result<(Box<dyn Stream>, BytesMut), PluginError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| io_failure(&self.endpoint, &e))?;
        // Small packets must not wait for Nagle's algorithm: the last of a burst would sit until
        // the broker's delayed ACK (about 40 ms).
        tcp.set_nodelay(true)
            .map_err(|e| io_failure(&self.endpoint, &e))?;
        let mut stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some(config) => {
                let name = ServerName::try_from(self.host.clone()).map_err(|_| {
                    tls_failure(
                        &self.endpoint,
                        &format!("'{}' is not a valid DNS name or IP address", self.host),
                    )
                })?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| io_failure(&self.endpoint, &e))?;
                Box::new(tls)
            }
        };
        let keep_alive_secs = u16::try_from(self.keep_alive.as_secs()).unwrap_or(u16::MAX);
        self.codec
            .encode(
                Outgoing::Connect(Connect {
                    client_id: &self.client_id,
                    keep_alive_secs,
                    clean_session: self.clean_session,
                    credentials: self.credentials.as_ref(),
                }),
                &mut self.out,
            )
            .map_err(|why| {
                err(
                    ErrorKind::InvalidInput,
                    format!("cannot send the CONNECT: {why}"),
                )
            })?;
        self.write(&mut stream).await?;
        let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            match self.codec.decode(&mut inbuf) {
                Err(why) => return Err(self.protocol_error(&why)),
                Ok(Some(Incoming::ConnAck(Ok(limits)))) => {
                    self.codec.set_limits(limits);
                    // MQTT 5: the broker's keep-alive replaces ours (0 = no pings).
                    if let Some(secs) = limits.keep_alive_secs {
                        self.keep_alive = Duration::from_secs(secs.into());
                    }
                    if let Some(max) = limits.receive_maximum {
                        self.max_in_flight = self.max_in_flight.min(usize::from(max.max(1)));
                    }
                    return Ok((stream, inbuf));
                }
                Ok(Some(Incoming::ConnAck(Err(why)))) => return Err(refused(&why)),
                Ok(Some(Incoming::Disconnect(why))) => return Err(self.disconnected(&why)),
                // Nothing else may come before the CONNACK; wait for it (or the timeout).
                Ok(Some(_)) => continue,
                Ok(None) => self.read(&mut stream, &mut inbuf).await?,
            }
        }
    }

    /// Serve the session until it is done or the connection fails.
    async fn exchange(
        &mut self,
        stream: &mut Box<dyn Stream>,
        mut inbuf: BytesMut,
        requests: &mut mpsc::Receiver<Request>,
    ) -> Stop {
        // Zero when an MQTT 5 broker wants no pings.
        let keep_alive = self.keep_alive;
        // When to ping if nothing else is sent; while a ping is out, when it is overdue.
        let mut ping_at = Instant::now() + keep_alive;
        let mut ping_out = false;
        if let Err(stop) = self.take_incoming(&mut inbuf, &mut ping_out) {
            return stop;
        }
        // When to acknowledge at once if nothing arrives meanwhile, and whether that was done
        // since the last read.
        let quiet = tokio::time::sleep(QUIET_BEFORE_ACK);
        tokio::pin!(quiet);
        let mut acked_quickly = false;
        // A request taken from the channel that waits for room in flight (order is kept).
        let mut parked: Option<Request> = None;
        // Whether reading paused for the session since the last ping went out: then its
        // answer may be waiting unread, and a missing answer proves nothing yet.
        let mut paused_since_ping = false;
        loop {
            if !self.hand_over_backlog() {
                return Stop::Unheard;
            }
            let reading = self.backlog.is_empty();
            paused_since_ping |= !reading;
            if let Some(request) = parked.take() {
                if self.has_room_for(&request) {
                    match self.take_request(request) {
                        Ok(true) => {}
                        Ok(false) => return Stop::Done,
                        Err(stop) => return stop,
                    }
                } else {
                    parked = Some(request);
                }
            }
            if !self.out.is_empty() {
                if let Err(e) = self.write(stream).await {
                    return Stop::Failed(e);
                }
                if !ping_out || ping_at <= Instant::now() {
                    ping_at = Instant::now() + keep_alive;
                }
                for serial in std::mem::take(&mut self.written) {
                    self.completed.push((serial, Ok(())));
                }
            }
            // Acknowledgements read last time round, publishes written or refused just now.
            if !self.flush_completed() {
                return Stop::Unheard;
            }
            if inbuf.capacity() - inbuf.len() < READ_CHUNK / 4 {
                inbuf.reserve(READ_CHUNK);
            }
            let room = parked.is_none() && self.ids.open() < self.max_in_flight;
            tokio::select! {
                read = stream.read_buf(&mut inbuf), if reading => match read {
                    Ok(0) => return Stop::Failed(self.ended()),
                    Ok(_) => {
                        quiet.as_mut().reset(Instant::now() + QUIET_BEFORE_ACK);
                        acked_quickly = false;
                        if let Err(stop) = self.take_incoming(&mut inbuf, &mut ping_out) {
                            return stop;
                        }
                    }
                    Err(e) => return Stop::Failed(io_failure(&self.endpoint, &e)),
                },
                request = requests.recv(), if room => {
                    let Some(mut request) = request else { return Stop::Done };
                    // Everything else already waiting goes out in the same write.
                    loop {
                        if !self.has_room_for(&request) {
                            parked = Some(request);
                            break;
                        }
                        match self.take_request(request) {
                            Ok(true) => {}
                            Ok(false) => return Stop::Done,
                            Err(stop) => return stop,
                        }
                        match requests.try_recv() {
                            Ok(next) => request = next,
                            Err(_) => break,
                        }
                    }
                },
                () = &mut quiet, if !acked_quickly && self.ids.open() > 0 => {
                    ack_quickly(&**stream);
                    acked_quickly = true;
                },
                _ = tokio::time::sleep(BACKLOG_RETRY), if !reading => {},
                _ = tokio::time::sleep_until(ping_at), if !keep_alive.is_zero() => {
                    if ping_out && !paused_since_ping {
                        return Stop::Failed(err(
                            ErrorKind::Timeout,
                            format!(
                                "{} did not answer a ping within {} s",
                                self.endpoint,
                                keep_alive.as_secs()
                            ),
                        ));
                    }
                    if self.codec.encode(Outgoing::PingReq, &mut self.out).is_ok() {
                        ping_out = true;
                        paused_since_ping = !reading;
                    }
                },
            }
        }
    }

    /// Whether `request` may go now: QoS 1/2 publishes wait while the in-flight window is full.
    fn has_room_for(&self, request: &Request) -> bool {
        match request {
            Request::Publish(_, QoS::AtMostOnce) | Request::Subscribe(..) | Request::Disconnect => {
                true
            }
            Request::Publish(_, QoS::AtLeastOnce) => self.ids.open() < self.max_in_flight,
            Request::Publish(_, QoS::ExactlyOnce) => {
                self.ids.open() < self.max_in_flight
                    && self.exactly_once.len() < self.max_exactly_once
            }
        }
    }

    /// Encode one request into `out`; `false` when it is the session's DISCONNECT.
    fn take_request(&mut self, request: Request) -> Result<bool, Stop> {
        match request {
            Request::Disconnect => return Ok(false),
            Request::Subscribe(filter, qos) => {
                let pkid = self.next_pkid();
                let packet = Outgoing::Subscribe {
                    filter: &filter,
                    qos,
                    pkid,
                };
                match self.codec.encode(packet, &mut self.out) {
                    Ok(()) => {
                        self.subscribing.insert(pkid);
                    }
                    Err(why) => {
                        let refusal = format!("cannot subscribe to '{filter}': {why}");
                        if !self.emit(Ok(LinkEvent::SubAck(Err(refusal)))) {
                            return Err(Stop::Unheard);
                        }
                    }
                }
            }
            Request::Publish(message, qos) => {
                let pkid = match qos {
                    QoS::AtMostOnce => 0,
                    _ => self.next_pkid(),
                };
                let packet = Outgoing::Publish { message, qos, pkid };
                match self.codec.encode(packet, &mut self.out) {
                    Ok(()) => {
                        if let Some(serial) = self.ids.sent(pkid) {
                            self.written.push(serial);
                        }
                        if qos == QoS::ExactlyOnce {
                            self.exactly_once.insert(pkid);
                        }
                    }
                    // Not sent: it is complete, with the reason it could not go.
                    Err(why) => {
                        let serial = self.ids.skipped();
                        self.completed.push((serial, Err(why)));
                    }
                }
            }
        }
        Ok(true)
    }

    /// Handle every whole packet in `inbuf`; answers go to `out`.
    fn take_incoming(&mut self, inbuf: &mut BytesMut, ping_out: &mut bool) -> Result<(), Stop> {
        loop {
            let packet = match self.codec.decode(inbuf) {
                Ok(Some(packet)) => packet,
                Ok(None) => return Ok(()),
                Err(why) => return Err(Stop::Failed(self.protocol_error(&why))),
            };
            let event = match packet {
                Incoming::Acked(pkid, result) => {
                    self.exactly_once.remove(&pkid);
                    if let Some(serial) = self.ids.acked(pkid) {
                        self.completed.push((serial, result));
                    }
                    None
                }
                Incoming::Received(pkid) => {
                    self.answer(Outgoing::PubRel(pkid));
                    None
                }
                Incoming::Released(pkid) => {
                    self.receiving.remove(&pkid);
                    self.answer(Outgoing::PubComp(pkid));
                    None
                }
                Incoming::SubAck(pkid, result) => {
                    self.subscribing.remove(&pkid);
                    Some(LinkEvent::SubAck(result))
                }
                Incoming::Publish(message, pkid) => match message.qos {
                    1 => {
                        self.answer(Outgoing::PubAck(pkid));
                        Some(LinkEvent::Message(message))
                    }
                    2 => {
                        self.answer(Outgoing::PubRec(pkid));
                        // A resend before our PUBREC arrived is the same message.
                        self.receiving
                            .insert(pkid)
                            .then_some(LinkEvent::Message(message))
                    }
                    _ => Some(LinkEvent::Message(message)),
                },
                Incoming::PingResp => {
                    *ping_out = false;
                    None
                }
                Incoming::Disconnect(why) => return Err(Stop::Failed(self.disconnected(&why))),
                Incoming::ConnAck(_) | Incoming::Unexpected => None,
            };
            if let Some(event) = event {
                if !self.emit(Ok(event)) {
                    return Err(Stop::Unheard);
                }
            }
        }
    }

    /// Queue an acknowledgement (these are a few bytes and always encode).
    fn answer(&mut self, packet: Outgoing<'_>) {
        let _ = self.codec.encode(packet, &mut self.out);
    }

    /// A packet id no publish or subscription in flight carries.
    fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            let pkid = self.last_pkid;
            if !self.ids.is_open(pkid) && !self.subscribing.contains(&pkid) {
                return pkid;
            }
        }
    }

    /// Write and flush everything in `out`.
    async fn write(&mut self, stream: &mut Box<dyn Stream>) -> Result<(), PluginError> {
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            stream.write_all(&self.out).await?;
            stream.flush().await
        })
        .await;
        self.out.clear();
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_failure(&self.endpoint, &e)),
            Err(_) => Err(err(
                ErrorKind::Timeout,
                format!(
                    "{} took no data for {} s",
                    self.endpoint,
                    WRITE_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    /// Read more bytes into `inbuf`; the end of the stream is an error.
    async fn read(
        &self,
        stream: &mut Box<dyn Stream>,
        inbuf: &mut BytesMut,
    ) -> Result<(), PluginError> {
        inbuf.reserve(READ_CHUNK);
        match stream.read_buf(inbuf).await {
            Ok(0) => Err(self.ended()),
            Ok(_) => Ok(()),
            Err(e) => Err(io_failure(&self.endpoint, &e)),
        }
    }

    /// The broker closed the stream.
    fn ended(&self) -> PluginError {
        io_failure(
            &self.endpoint,
            &std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "end of stream"),
        )
    }

    fn protocol_error(&self, why: &str) -> PluginError {
        err(
            ErrorKind::Closed,
            format!("{} sent {why}; the connection is closed", self.endpoint),
        )
    }

    fn disconnected(&self, why: &str) -> PluginError {
        err(
            ErrorKind::Closed,
            format!("{} closed the connection: {why}", self.endpoint),
        )
    }

    /// Hand the completions gathered so far to the session as one event; `false` when nobody
    /// listens any more.
    fn flush_completed(&mut self) -> bool {
        if self.completed.is_empty() {
            return true;
        }
        let batch = std::mem::take(&mut self.completed);
        self.send(Ok(LinkEvent::Completed(batch)))
    }

    /// Hand an event to the session, after the completions gathered before it; `false` when
    /// nobody listens any more.
    fn emit(&mut self, item: Item) -> bool {
        self.flush_completed() && self.send(item)
    }

    /// Send an item, or keep it in the backlog behind those already there while the session's
    /// channel is full; `false` when nobody listens any more.
    fn send(&mut self, item: Item) -> bool {
        self.backlog.push_back(item);
        self.hand_over_backlog()
    }

    /// Hand the session what its channel has room for from the backlog; `false` when nobody
    /// listens any more.
    fn hand_over_backlog(&mut self) -> bool {
        while let Some(item) = self.backlog.pop_front() {
            match self.events.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Full(item)) => {
                    self.backlog.push_front(item);
                    return true;
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        true
    }
}
