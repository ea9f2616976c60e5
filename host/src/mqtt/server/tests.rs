//! The server core against rumqttc clients: sessions, redelivery, QoS 2, retained messages,
//! wills, delivery QoS.

use super::subscriptions::delivery_qos;
use super::*;
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Publish;
use rumqttc::mqttbytes::v4::{Packet, PubAck};
use rumqttc::mqttbytes::Error as CodecError;
use rumqttc::mqttbytes::QoS;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet as In};
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Accepts everyone and routes every publish, as a plain broker.
struct Broker;

impl MqttService for Broker {
    fn name(&self) -> &'static str {
        "test"
    }
    fn connect(&self, request: &ConnectRequest<'_>) -> ConnectVerdict {
        ConnectVerdict::Accept(Ok(Identity::new(request.client_id.to_string(), None)))
    }
    fn subscribe(&self, _: &Peer, _: &str, qos: u8) -> Result<u8, String> {
        Ok(qos.min(1))
    }
    fn publish(&self, _: &Peer, _: &Publish) -> PublishVerdict {
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
    fn subscribe(&self, session: &Peer, filter: &str, qos: u8) -> Result<u8, String> {
        Broker.subscribe(session, filter, qos)
    }
    fn publish(&self, session: &Peer, publish: &Publish) -> PublishVerdict {
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
