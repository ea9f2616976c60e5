//! A client's subscriptions (each filter with the QoS granted for it), and the QoS a message is
//! delivered with to such a client: what connected clients' inboxes and absent clients' sessions
//! both judge messages by.

use crate::mqtt::topic::subscription_matches;
use rumqttc::mqttbytes::QoS;

/// A client's subscriptions: each filter with the QoS granted for it.
pub(super) type Subscriptions = Vec<(String, QoS)>;

/// The QoS a message published at `qos` on `topic` is delivered with to a client with
/// `subscriptions` (the lower of the two, the highest over its matching filters), or `None`
/// when none matches.
pub(super) fn delivery_qos(subscriptions: &[(String, QoS)], topic: &str, qos: QoS) -> Option<QoS> {
    let granted = subscriptions
        .iter()
        .filter(|(filter, _)| subscription_matches(filter, topic))
        .map(|(_, granted)| *granted)
        .reduce(|a, b| if b > a { b } else { a })?;
    Some(if granted < qos { granted } else { qos })
}
