//! Delivery bookkeeping of one connection: what the server sent the client and waits to have
//! acknowledged ([`Delivery`]), and the client's publishes whose acknowledgement waits for the
//! service ([`Unacked`]), acknowledged in the order they came.

use super::network::{queue_ack, queue_packet};
use super::sessions;
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Packet, Publish};
use rumqttc::mqttbytes::QoS;
use std::collections::VecDeque;
use tokio::sync::oneshot;

/// What the server sends one client: packet ids, and for a persistent session the QoS 1
/// messages sent and not yet acknowledged (sent again when the session resumes).
pub(super) struct Delivery {
    pub(super) persistent: bool,
    pub(super) last_pkid: u16,
    pub(super) sent: VecDeque<Publish>,
}

impl Delivery {
    /// Queue `publish` in `out`; `true` when the oldest unacknowledged message was let go to
    /// keep at most [`sessions::MAX_WAITING`].
    pub(super) fn queue(&mut self, mut publish: Publish, out: &mut BytesMut) -> bool {
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
    pub(super) fn acked(&mut self, pkid: u16) {
        if let Some(i) = self.sent.iter().position(|p| p.pkid == pkid) {
            self.sent.remove(i);
        }
    }
}

/// A publish waiting for the service to settle it.
pub(super) struct Unacked {
    pub(super) pkid: u16,
    pub(super) qos: QoS,
    pub(super) settled: oneshot::Receiver<Result<(), String>>,
}

/// Queue the acknowledgement of a publish the service has settled, or say why the connection
/// must close.
pub(super) fn settle(
    done: Unacked,
    result: Result<(), String>,
    out: &mut BytesMut,
) -> Result<(), String> {
    result?;
    queue_ack(out, done.qos, done.pkid);
    Ok(())
}

/// Acknowledge a publish that needs no settling, behind the deferred ones still waiting (the
/// acknowledgements go out in the order of the publishes).
pub(super) fn ack_in_order(
    unacked: &mut VecDeque<Unacked>,
    out: &mut BytesMut,
    qos: QoS,
    pkid: u16,
) {
    if qos == QoS::AtMostOnce || unacked.is_empty() {
        queue_ack(out, qos, pkid);
        return;
    }
    let (tx, settled) = oneshot::channel();
    let _ = tx.send(Ok(()));
    unacked.push_back(Unacked { pkid, qos, settled });
}
