//! The loop that serves one accepted session until it ends, with one handler per packet the
//! client sends. Every packet for the client is queued in the connection's out buffer and written
//! in one go before the loop waits again; acknowledgements of publishes the service settles
//! later ([`PublishVerdict::Deferred`]) keep the order of the publishes.

use super::clients::{qos_of, Command};
use super::connection::{ClientTask, CLIENT_DISCONNECTED};
use super::delivery::{ack_in_order, settle, Delivery, Unacked};
use super::network::{malformed_cause, queue_packet, Network};
use super::service::{Peer, PublishVerdict, MAX_UNACKED};
use super::sessions;
use crate::mqtt::topic::valid_topic_name;
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    Packet, PubComp, Publish, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, Unsubscribe,
};
use rumqttc::mqttbytes::QoS;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// What the loop keeps for one client between packets.
struct Live<'a> {
    peer: &'a Peer,
    delivery: &'a mut Delivery,
    /// Publishes whose acknowledgement waits for the service, oldest first.
    unacked: VecDeque<Unacked>,
    /// Packet ids of QoS 2 publishes taken and not yet released (PUBREL): the same id again
    /// is the client sending that message again, not a new one.
    receiving: HashSet<u16>,
}

impl Live<'_> {
    /// Queue the acknowledgements the service has settled, in order; `Err` is why the
    /// connection closes.
    fn settle_ready(&mut self, out: &mut BytesMut) -> Result<(), String> {
        while let Some(front) = self.unacked.front_mut() {
            match front.settled.try_recv() {
                Ok(result) => {
                    let done = self.unacked.pop_front().expect("front exists");
                    settle(done, result, out)?;
                }
                Err(oneshot::error::TryRecvError::Empty) => break,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err("the gateway stopped before the message was stored; closed".into())
                }
            }
        }
        Ok(())
    }
}

impl ClientTask {
    /// Serve an accepted session until it ends; why it ended.
    pub(super) async fn run<R, W>(
        &self,
        peer: &Peer,
        keep_alive: u16,
        net: &mut Network<R, W>,
        rx: &mut mpsc::UnboundedReceiver<Command>,
        delivery: &mut Delivery,
    ) -> String
    where
        R: AsyncReadExt + Unpin,
        W: AsyncWriteExt + Unpin,
    {
        let mut live = Live {
            peer,
            delivery,
            unacked: VecDeque::new(),
            receiving: HashSet::new(),
        };
        // MQTT 3.1.1: the server closes a connection silent for 1.5 keep-alive periods.
        let grace = (keep_alive > 0).then(|| Duration::from_millis(keep_alive as u64 * 1500));
        let mut last_heard = tokio::time::Instant::now();
        // IoT Hub style: the session ends when its credentials expire.
        let credentials_expire = peer
            .auth
            .as_ref()
            .ok()
            .and_then(|identity| identity.expires_at)
            .map(|at| {
                let left = at.saturating_sub(crate::pki::crypto::now_unix());
                tokio::time::Instant::now() + Duration::from_secs(left)
            });
        loop {
            if let Err(why) = live.settle_ready(&mut net.out) {
                return why;
            }
            // Handle every complete packet already buffered, while acknowledgements may wait.
            while live.unacked.len() < MAX_UNACKED {
                let packet = match net.next_packet() {
                    Ok(Some(packet)) => packet,
                    Ok(None) => break,
                    Err(e) => {
                        let detail = format!("malformed packet ({e:?}); closed");
                        self.service.protocol_error(malformed_cause(&e), &detail);
                        return detail;
                    }
                };
                if let Err(why) = self.handle(packet, &mut live, &mut net.out) {
                    return why;
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
            if !net.flush().await {
                return "the connection broke".to_string();
            }
            let may_read = live.unacked.len() < MAX_UNACKED;
            let oldest = async {
                match live.unacked.front_mut() {
                    Some(front) => (&mut front.settled).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = net.reader.read_buf(&mut net.read), if may_read => match read {
                    Ok(0) => return "the client closed the connection".into(),
                    Ok(_) => last_heard = tokio::time::Instant::now(),
                    Err(e) => return format!("read failed: {e}"),
                },
                settled = oldest => {
                    let Some(done) = live.unacked.pop_front() else { continue };
                    let result = settled.unwrap_or_else(|_| {
                        Err("the gateway stopped before the message was stored; closed".into())
                    });
                    if let Err(why) = settle(done, result, &mut net.out) {
                        return why;
                    }
                }
                command = rx.recv() => match command {
                    // Offered only if it matched a subscription (`Inbox::offer`).
                    Some(Command::Publish { topic, payload, qos }) => {
                        peer.inbox.taken(payload.len());
                        let publish = Publish::new(topic, qos, payload);
                        self.deliver(live.delivery, publish, &peer.client_id, &mut net.out);
                    }
                    Some(Command::Kick(why)) => return why,
                    None => return "the server stopped".into(),
                },
                _ = silence => return format!("no packet for 1.5 × the {keep_alive} s keep-alive; closed"),
                _ = expiry => return "the credentials expired; closed".into(),
            }
        }
    }

    /// Act on one packet from the client; `Err` is why the connection closes.
    fn handle(
        &self,
        packet: Packet,
        live: &mut Live<'_>,
        out: &mut BytesMut,
    ) -> Result<(), String> {
        match packet {
            Packet::Publish(p) => self.on_publish(p, live, out),
            Packet::PubRel(rel) => {
                live.receiving.remove(&rel.pkid);
                queue_packet(out, Packet::PubComp(PubComp::new(rel.pkid)));
                Ok(())
            }
            Packet::Subscribe(s) => {
                self.on_subscribe(s, live, out);
                Ok(())
            }
            Packet::Unsubscribe(u) => {
                on_unsubscribe(u, live.peer, out);
                Ok(())
            }
            Packet::PingReq => {
                queue_packet(out, Packet::PingResp);
                Ok(())
            }
            Packet::PubAck(ack) => {
                live.delivery.acked(ack.pkid);
                Ok(())
            }
            Packet::PubRec(_) | Packet::PubComp(_) => Ok(()),
            Packet::Disconnect => Err(CLIENT_DISCONNECTED.into()),
            other => {
                let detail = format!("unexpected {other:?}; closed");
                self.service.protocol_error("unexpected packet", &detail);
                Err(detail)
            }
        }
    }

    /// PUBLISH: check it, ask the service, acknowledge it (now, or once the service settled it)
    /// and deliver it to the subscribed clients when the service routes it.
    fn on_publish(
        &self,
        p: Publish,
        live: &mut Live<'_>,
        out: &mut BytesMut,
    ) -> Result<(), String> {
        if p.qos == QoS::ExactlyOnce && self.service.max_qos() < 2 {
            self.service
                .protocol_error("QoS 2 publish", "QoS 2 is not supported");
            return Err(format!(
                "published QoS 2 to '{}', which is not supported; closed",
                p.topic
            ));
        }
        if !valid_topic_name(&p.topic) {
            let detail = format!(
                "published to '{}', which is not a valid topic name; closed",
                p.topic
            );
            self.service.protocol_error("invalid topic name", &detail);
            return Err(detail);
        }
        if p.qos == QoS::ExactlyOnce && !live.receiving.insert(p.pkid) {
            // Taken already (the client did not see our PUBREC in time): acknowledge it again,
            // deliver and store it once.
            ack_in_order(&mut live.unacked, out, p.qos, p.pkid);
            return Ok(());
        }
        let route = match self.service.publish(live.peer, &p) {
            PublishVerdict::Accept => false,
            PublishVerdict::Route => true,
            PublishVerdict::Deferred(settled) => {
                self.clients.broadcast(&p.topic, &p.payload, p.qos);
                self.keep_if_retained(&p);
                live.unacked.push_back(Unacked {
                    pkid: p.pkid,
                    qos: p.qos,
                    settled,
                });
                return Ok(());
            }
            PublishVerdict::Disconnect(why) => return Err(why),
        };
        ack_in_order(&mut live.unacked, out, p.qos, p.pkid);
        if route {
            self.clients.broadcast(&p.topic, &p.payload, p.qos);
            self.keep_if_retained(&p);
        }
        Ok(())
    }

    /// SUBSCRIBE: the service grants or refuses each filter; SUBACK, then the retained messages
    /// of the granted ones.
    fn on_subscribe(&self, s: Subscribe, live: &mut Live<'_>, out: &mut BytesMut) {
        let peer = live.peer;
        let mut codes = Vec::new();
        let mut granted_filters = Vec::new();
        for f in &s.filters {
            match self.service.subscribe(peer, &f.path, f.qos as u8) {
                Ok(granted) => {
                    // A filter subscribed again replaces its subscription.
                    let mut filters = peer.inbox.filters();
                    filters.retain(|(filter, _)| *filter != f.path);
                    filters.push((f.path.clone(), qos_of(granted)));
                    drop(filters);
                    codes.push(SubscribeReasonCode::Success(qos_of(granted)));
                    granted_filters.push((f.path.as_str(), granted));
                }
                Err(why) => {
                    self.recorder.push(
                        self.record("subscribe-refused", &peer.client_id)
                            .identity(peer.label())
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
                self.queue_retained(filter, granted, peer, live.delivery, out);
            }
        }
    }

    /// Keep a broker-routed publish with the retain flag, for services that retain.
    pub(super) fn keep_if_retained(&self, p: &Publish) {
        if p.retain && self.service.retains() {
            if let Err(why) = self.clients.retained.keep(&p.topic, &p.payload, p.qos) {
                self.service.retained_refused(&why.to_string());
            }
        }
    }

    /// Queue the retained messages a new subscription to `filter` (granted at QoS `granted`)
    /// receives, with the retain flag set.
    fn queue_retained(
        &self,
        filter: &str,
        granted: u8,
        client: &Peer,
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
            self.deliver(delivery, publish, &client.client_id, out);
        }
    }

    /// Queue `publish` for the client (a packet id for QoS 1 unless it is sent again and has
    /// one), kept until acknowledged for a persistent session.
    pub(super) fn deliver(
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
}

/// UNSUBSCRIBE: drop the filters, UNSUBACK.
fn on_unsubscribe(u: Unsubscribe, peer: &Peer, out: &mut BytesMut) {
    peer.inbox.filters().retain(|(f, _)| !u.topics.contains(f));
    queue_packet(out, Packet::UnsubAck(UnsubAck::new(u.pkid)));
}
