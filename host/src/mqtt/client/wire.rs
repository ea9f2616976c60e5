//! MQTT packets of one protocol version (3.1.1 or 5) in a link's own terms: what a link sends
//! ([`Outgoing`]) is encoded into a buffer, what the broker sent is decoded into [`Incoming`],
//! so the connection logic in `link.rs` is written once for both versions. The byte-level
//! codec is rumqttc's `mqttbytes`.

use crate::model::{Message, ProtocolVersion};
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self as codec4, v4, QoS};
use rumqttc::v5::mqttbytes::{self as codec5, v5};

/// A packet the link sends.
pub enum Outgoing<'a> {
    Connect(Connect<'a>),
    Publish {
        /// Taken: its topic and payload move into the packet without a copy.
        message: Message,
        qos: QoS,
        /// 0 for QoS 0.
        pkid: u16,
    },
    Subscribe {
        filter: &'a str,
        qos: QoS,
        pkid: u16,
    },
    /// Acknowledges a QoS 1 message received.
    PubAck(u16),
    /// First answer to a QoS 2 message received.
    PubRec(u16),
    /// Answer to the broker's PUBREC of a QoS 2 publish of ours.
    PubRel(u16),
    /// Answer to the broker's PUBREL of a QoS 2 message received.
    PubComp(u16),
    PingReq,
    Disconnect,
}

/// What a CONNECT says.
pub struct Connect<'a> {
    pub client_id: &'a str,
    pub keep_alive_secs: u16,
    pub clean_session: bool,
    pub credentials: Option<&'a (String, String)>,
}

/// What the broker sent, in protocol-neutral terms.
#[derive(Debug)]
pub enum Incoming {
    /// CONNACK: accepted with the broker's limits, or the refusal in words.
    ConnAck(Result<ServerLimits, String>),
    /// SUBACK for the first filter of the SUBSCRIBE with this packet id.
    SubAck(u16, Result<(), String>),
    /// The publish with this packet id is done: PUBACK, PUBCOMP, or (MQTT 5) a PUBREC refusing it.
    Acked(u16, Result<(), String>),
    /// PUBREC accepting a QoS 2 publish: the link answers PUBREL.
    Received(u16),
    /// PUBREL of a QoS 2 message received: the link answers PUBCOMP.
    Released(u16),
    /// A message from a subscription, with its packet id (0 for QoS 0).
    Publish(Message, u16),
    PingResp,
    /// The broker's DISCONNECT (MQTT 5), its reason in words.
    Disconnect(String),
    /// A packet a broker does not send to a client (CONNECT, SUBSCRIBE, ...); ignored.
    Unexpected,
}

/// What the broker's CONNACK says about how much it takes (MQTT 5; none for 3.1.1).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ServerLimits {
    /// How many QoS 1/2 publishes it takes unacknowledged.
    pub receive_maximum: Option<u16>,
    /// The largest packet it takes, in bytes.
    pub maximum_packet_size: Option<u32>,
    /// The keep-alive it wants instead of ours, in seconds (0: none).
    pub keep_alive_secs: Option<u16>,
}

/// Encodes and decodes one protocol version's packets.
pub(crate) struct Codec {
    protocol: ProtocolVersion,
    /// Largest packet taken from the broker.
    max_incoming: usize,
    /// Largest packet sent (the broker's maximum, MQTT 5).
    max_outgoing: Option<u32>,
}

impl Codec {
    pub fn new(protocol: ProtocolVersion, max_incoming: usize) -> Codec {
        Codec {
            protocol,
            max_incoming,
            max_outgoing: None,
        }
    }

    /// Respect the broker's limits from here on.
    pub(crate) fn set_limits(&mut self, limits: ServerLimits) {
        self.max_outgoing = limits.maximum_packet_size;
    }

    /// Append `packet` to `out`; on error (a packet larger than the broker takes) `out` is left
    /// as it was.
    pub fn encode(&self, packet: Outgoing<'_>, out: &mut BytesMut) -> Result<(), String> {
        let mark = out.len();
        let result = match self.protocol {
            ProtocolVersion::Mqtt311 => v4_packet(packet)
                .write(out, usize::MAX)
                .map_err(|e| e.to_string()),
            ProtocolVersion::Mqtt5 => v5_packet(packet, self.max_incoming)
                .write(out, self.max_outgoing)
                .map_err(|e| match e {
                    codec5::Error::OutgoingPacketTooLarge { pkt_size, max } => format!(
                        "the packet of {pkt_size} bytes is larger than the broker takes ({max} bytes)"
                    ),
                    other => other.to_string(),
                }),
        };
        result.map(|_| ()).inspect_err(|_| out.truncate(mark))
    }

    /// The next whole packet at the front of `buf` (taken from it), `None` until one has
    /// arrived, or what is wrong with the bytes.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Incoming>, String> {
        match self.protocol {
            ProtocolVersion::Mqtt311 => match v4::Packet::read(buf, self.max_incoming) {
                Ok(packet) => Ok(Some(v4_incoming(packet))),
                Err(codec4::Error::InsufficientBytes(_)) => Ok(None),
                Err(codec4::Error::PayloadSizeLimitExceeded(size)) => {
                    Err(too_large(size, self.max_incoming))
                }
                Err(e) => Err(format!("a malformed packet ({e})")),
            },
            ProtocolVersion::Mqtt5 => match v5::Packet::read(buf, Some(self.max_incoming as u32)) {
                Ok(packet) => Ok(Some(v5_incoming(packet))),
                Err(codec5::Error::InsufficientBytes(_)) => Ok(None),
                Err(codec5::Error::PayloadSizeLimitExceeded { pkt_size, .. }) => {
                    Err(too_large(pkt_size, self.max_incoming))
                }
                Err(e) => Err(format!("a malformed packet ({e})")),
            },
        }
    }
}

fn too_large(size: usize, max: usize) -> String {
    format!("a packet of {size} bytes, over the {max}-byte limit")
}

fn v4_packet(packet: Outgoing<'_>) -> v4::Packet {
    match packet {
        Outgoing::Connect(c) => {
            let mut connect = v4::Connect::new(c.client_id);
            connect.keep_alive = c.keep_alive_secs;
            connect.clean_session = c.clean_session;
            if let Some((user, password)) = c.credentials {
                connect.set_login(user.as_str(), password.as_str());
            }
            v4::Packet::Connect(connect)
        }
        Outgoing::Publish { message, qos, pkid } => v4::Packet::Publish(v4::Publish {
            dup: false,
            qos,
            retain: message.retain,
            topic: message.topic,
            pkid,
            payload: Bytes::from(message.payload),
        }),
        Outgoing::Subscribe { filter, qos, pkid } => {
            let mut subscribe = v4::Subscribe::new(filter, qos);
            subscribe.pkid = pkid;
            v4::Packet::Subscribe(subscribe)
        }
        Outgoing::PubAck(pkid) => v4::Packet::PubAck(v4::PubAck::new(pkid)),
        Outgoing::PubRec(pkid) => v4::Packet::PubRec(v4::PubRec::new(pkid)),
        Outgoing::PubRel(pkid) => v4::Packet::PubRel(v4::PubRel::new(pkid)),
        Outgoing::PubComp(pkid) => v4::Packet::PubComp(v4::PubComp::new(pkid)),
        Outgoing::PingReq => v4::Packet::PingReq,
        Outgoing::Disconnect => v4::Packet::Disconnect,
    }
}

fn v5_qos(qos: QoS) -> codec5::QoS {
    match qos {
        QoS::AtMostOnce => codec5::QoS::AtMostOnce,
        QoS::AtLeastOnce => codec5::QoS::AtLeastOnce,
        QoS::ExactlyOnce => codec5::QoS::ExactlyOnce,
    }
}

fn v5_packet(packet: Outgoing<'_>, max_incoming: usize) -> v5::Packet {
    match packet {
        Outgoing::Connect(c) => v5::Packet::Connect(
            v5::Connect {
                keep_alive: c.keep_alive_secs,
                client_id: c.client_id.to_owned(),
                clean_start: c.clean_session,
                properties: Some(v5::ConnectProperties {
                    max_packet_size: Some(max_incoming as u32),
                    ..v5::ConnectProperties::new()
                }),
            },
            None,
            c.credentials
                .map(|(user, password)| v5::Login::new(user.as_str(), password.as_str())),
        ),
        Outgoing::Publish { message, qos, pkid } => {
            let properties = (!message.properties.is_empty()).then(|| v5::PublishProperties {
                user_properties: message.properties,
                ..Default::default()
            });
            v5::Packet::Publish(v5::Publish {
                dup: false,
                qos: v5_qos(qos),
                retain: message.retain,
                topic: Bytes::from(message.topic.into_bytes()),
                pkid,
                payload: Bytes::from(message.payload),
                properties,
            })
        }
        Outgoing::Subscribe { filter, qos, pkid } => {
            let mut subscribe = v5::Subscribe::new(v5::Filter::new(filter, v5_qos(qos)), None);
            subscribe.pkid = pkid;
            v5::Packet::Subscribe(subscribe)
        }
        Outgoing::PubAck(pkid) => v5::Packet::PubAck(v5::PubAck::new(pkid, None)),
        Outgoing::PubRec(pkid) => v5::Packet::PubRec(v5::PubRec::new(pkid, None)),
        Outgoing::PubRel(pkid) => v5::Packet::PubRel(v5::PubRel::new(pkid, None)),
        Outgoing::PubComp(pkid) => v5::Packet::PubComp(v5::PubComp::new(pkid, None)),
        Outgoing::PingReq => v5::Packet::PingReq(v5::PingReq),
        Outgoing::Disconnect => v5::Packet::Disconnect(v5::Disconnect::new(
            v5::DisconnectReasonCode::NormalDisconnection,
        )),
    }
}

fn v4_incoming(packet: v4::Packet) -> Incoming {
    use v4::{ConnectReturnCode, Packet, SubscribeReasonCode};
    match packet {
        Packet::ConnAck(ack) => Incoming::ConnAck(match ack.code {
            ConnectReturnCode::Success => Ok(ServerLimits::default()),
            code => Err(v311_refusal(code).into()),
        }),
        Packet::SubAck(ack) => Incoming::SubAck(
            ack.pkid,
            match ack.return_codes.first() {
                Some(SubscribeReasonCode::Failure) => Err("failure".into()),
                _ => Ok(()),
            },
        ),
        Packet::PubAck(ack) => Incoming::Acked(ack.pkid, Ok(())),
        Packet::PubRec(rec) => Incoming::Received(rec.pkid),
        Packet::PubRel(rel) => Incoming::Released(rel.pkid),
        Packet::PubComp(comp) => Incoming::Acked(comp.pkid, Ok(())),
        Packet::Publish(p) => Incoming::Publish(
            Message {
                topic: p.topic,
                payload: p.payload.to_vec(),
                qos: p.qos as u8,
                retain: p.retain,
                properties: Vec::new(),
            },
            p.pkid,
        ),
        Packet::PingResp => Incoming::PingResp,
        Packet::Connect(_)
        | Packet::Subscribe(_)
        | Packet::Unsubscribe(_)
        | Packet::UnsubAck(_)
        | Packet::PingReq
        | Packet::Disconnect => Incoming::Unexpected,
    }
}

fn v5_incoming(packet: v5::Packet) -> Incoming {
    use v5::{
        ConnectReturnCode, Packet, PubAckReason, PubCompReason, PubRecReason, SubscribeReasonCode,
    };
    match packet {
        Packet::ConnAck(ack) => Incoming::ConnAck(match ack.code {
            ConnectReturnCode::Success => Ok(ServerLimits {
                receive_maximum: ack.properties.as_ref().and_then(|p| p.receive_max),
                maximum_packet_size: ack.properties.as_ref().and_then(|p| p.max_packet_size),
                keep_alive_secs: ack.properties.as_ref().and_then(|p| p.server_keep_alive),
            }),
            code => Err(reason_text(&format!("{code:?}"))),
        }),
        Packet::SubAck(ack) => Incoming::SubAck(
            ack.pkid,
            match ack.return_codes.first() {
                Some(SubscribeReasonCode::Success(_)) | None => Ok(()),
                Some(code) => Err(reason_text(&format!("{code:?}"))),
            },
        ),
        Packet::PubAck(ack) => Incoming::Acked(
            ack.pkid,
            match ack.reason {
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                other => Err(reason_text(&format!("{other:?}"))),
            },
        ),
        Packet::PubRec(rec) => match rec.reason {
            PubRecReason::Success | PubRecReason::NoMatchingSubscribers => {
                Incoming::Received(rec.pkid)
            }
            other => Incoming::Acked(rec.pkid, Err(reason_text(&format!("{other:?}")))),
        },
        Packet::PubRel(rel) => Incoming::Released(rel.pkid),
        Packet::PubComp(comp) => Incoming::Acked(
            comp.pkid,
            match comp.reason {
                PubCompReason::Success => Ok(()),
                other => Err(reason_text(&format!("{other:?}"))),
            },
        ),
        Packet::Publish(p) => Incoming::Publish(v5_message(&p), p.pkid),
        Packet::PingResp(_) => Incoming::PingResp,
        Packet::Disconnect(d) => Incoming::Disconnect(format!(
            "{}{}",
            reason_text(&format!("{:?}", d.reason_code)),
            d.properties
                .and_then(|p| p.reason_string)
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        )),
        Packet::Auth(_)
        | Packet::Connect(..)
        | Packet::Subscribe(_)
        | Packet::Unsubscribe(_)
        | Packet::UnsubAck(_)
        | Packet::PingReq(_) => Incoming::Unexpected,
    }
}

/// An MQTT 5 PUBLISH as a message (user properties kept).
pub(crate) fn v5_message(p: &v5::Publish) -> Message {
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
pub(crate) fn reason_text(debug_name: &str) -> String {
    let mut out = String::new();
    for (i, c) in debug_name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.extend(c.to_lowercase());
    }
    out
}

fn v311_refusal(code: v4::ConnectReturnCode) -> &'static str {
    use v4::ConnectReturnCode as C;
    match code {
        C::RefusedProtocolVersion => "unacceptable protocol version",
        C::BadClientId => "client id rejected",
        C::ServiceUnavailable => "server unavailable",
        C::BadUserNamePassword => "bad user name or password",
        C::NotAuthorized => "not authorized",
        C::Success => "success",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(properties: Vec<(String, String)>) -> Message {
        Message {
            topic: "dt/dev01/temp".into(),
            payload: b"{\"t\":21.5}".to_vec(),
            qos: 1,
            retain: false,
            properties,
        }
    }

    /// What a broker would read from our bytes, and what we read from a broker's.
    #[test]
    fn a_publish_round_trips_in_both_versions_and_partial_bytes_wait() {
        for (protocol, properties) in [
            (ProtocolVersion::Mqtt311, vec![]),
            (ProtocolVersion::Mqtt5, vec![("$.ct".into(), "json".into())]),
        ] {
            let codec = Codec::new(protocol, 1024);
            let sent = message(properties);
            let mut out = BytesMut::new();
            codec
                .encode(
                    Outgoing::Publish {
                        message: sent.clone(),
                        qos: QoS::AtLeastOnce,
                        pkid: 7,
                    },
                    &mut out,
                )
                .unwrap();
            let whole = out.clone();
            let mut partial = BytesMut::from(&whole[..whole.len() - 1]);
            assert!(codec.decode(&mut partial).unwrap().is_none());
            assert_eq!(partial.len(), whole.len() - 1, "nothing taken");
            match codec.decode(&mut out).unwrap() {
                Some(Incoming::Publish(got, 7)) => assert_eq!(got, sent, "{protocol:?}"),
                other => panic!("{protocol:?}: {other:?}"),
            }
            assert!(out.is_empty());
        }
    }

    #[test]
    fn too_large_and_malformed_packets_are_said_and_nothing_is_half_written() {
        let codec = Codec::new(ProtocolVersion::Mqtt311, 64);
        let mut big = BytesMut::new();
        let mut large = message(vec![]);
        large.payload = vec![b'x'; 200];
        Codec::new(ProtocolVersion::Mqtt311, 1024)
            .encode(
                Outgoing::Publish {
                    message: large.clone(),
                    qos: QoS::AtMostOnce,
                    pkid: 0,
                },
                &mut big,
            )
            .unwrap();
        let e = codec.decode(&mut big).unwrap_err();
        assert!(e.contains("over the 64-byte limit"), "{e}");

        let mut junk = BytesMut::from(&[0xf0u8, 0x00][..]);
        let e = codec.decode(&mut junk).unwrap_err();
        assert!(e.starts_with("a malformed packet"), "{e}");

        let mut v5 = Codec::new(ProtocolVersion::Mqtt5, 1024);
        v5.set_limits(ServerLimits {
            maximum_packet_size: Some(32),
            ..ServerLimits::default()
        });
        let mut out = BytesMut::from(&b"kept"[..]);
        let e = v5
            .encode(
                Outgoing::Publish {
                    message: large.clone(),
                    qos: QoS::AtLeastOnce,
                    pkid: 1,
                },
                &mut out,
            )
            .unwrap_err();
        assert!(e.contains("larger than the broker takes (32 bytes)"), "{e}");
        assert_eq!(&out[..], b"kept");
    }

    #[test]
    fn refusals_are_words() {
        let codec = Codec::new(ProtocolVersion::Mqtt5, 1024);
        let mut buf = BytesMut::new();
        v5::Packet::PubAck(v5::PubAck {
            pkid: 3,
            reason: v5::PubAckReason::QuotaExceeded,
            properties: None,
        })
        .write(&mut buf, None)
        .unwrap();
        match codec.decode(&mut buf).unwrap() {
            Some(Incoming::Acked(3, Err(why))) => assert_eq!(why, "quota exceeded"),
            other => panic!("{other:?}"),
        }
    }
}
