//! Persistent sessions (MQTT 3.1.1 CleanSession = 0) of the services that keep them: while such a
//! client is away its subscriptions stay, and the QoS 1 messages that match them wait — behind
//! the ones it had been sent and not acknowledged, which go again marked DUP — until it connects
//! again (CONNACK with session present) or connects with a clean session (then they are
//! discarded). QoS 0 messages are not kept for an absent client. Sessions live in memory while
//! the server runs; each keeps at most [`MAX_WAITING`] messages and at most [`MAX_SESSIONS`]
//! sessions are kept.

use super::filter_matches;
use rumqttc::mqttbytes::v4::Publish;
use rumqttc::mqttbytes::QoS;
use std::collections::{HashMap, VecDeque};

/// Messages one absent client's session keeps at most; later ones are dropped and reported.
pub const MAX_WAITING: usize = 1000;
/// Absent clients' sessions kept at most; beyond it a client's session ends with its connection.
pub const MAX_SESSIONS: usize = 10_000;

/// An absent client's session.
pub struct Parked {
    pub filters: Vec<String>,
    /// Oldest first. Messages the client was sent and did not acknowledge keep their packet id
    /// and DUP flag; the others get a packet id when they are delivered (`pkid` 0).
    pub waiting: VecDeque<Publish>,
    /// The last packet id used toward the client.
    pub last_pkid: u16,
}

impl Parked {
    /// Keep `message` if there is room; `false` when the session is full.
    pub fn keep(&mut self, message: Publish) -> bool {
        if self.waiting.len() >= MAX_WAITING {
            return false;
        }
        self.waiting.push_back(message);
        true
    }
}

/// The absent clients' sessions by client id.
#[derive(Default)]
pub struct Sessions {
    parked: HashMap<String, Parked>,
}

impl Sessions {
    /// Keep `message` for every absent client subscribed to a filter matching `topic` (QoS 1
    /// only); the client ids whose session was full, so it was not kept for them.
    pub fn offer(&mut self, topic: &str, payload: &[u8], qos: QoS) -> Vec<String> {
        let mut full = Vec::new();
        if qos == QoS::AtMostOnce {
            return full;
        }
        for (client_id, session) in &mut self.parked {
            if !session.filters.iter().any(|f| filter_matches(f, topic)) {
                continue;
            }
            if !session.keep(Publish::new(topic, QoS::AtLeastOnce, payload.to_vec())) {
                full.push(client_id.clone());
            }
        }
        full
    }

    /// Keep `session` until `client_id` comes back; `Err` (with the session) when
    /// [`MAX_SESSIONS`] are kept already.
    pub fn park(&mut self, client_id: String, session: Parked) -> Result<(), Parked> {
        if self.parked.len() >= MAX_SESSIONS && !self.parked.contains_key(&client_id) {
            return Err(session);
        }
        self.parked.insert(client_id, session);
        Ok(())
    }

    /// The session `client_id` left, taken out to be served again.
    pub fn resume(&mut self, client_id: &str) -> Option<Parked> {
        self.parked.remove(client_id)
    }

    /// Forget `client_id`'s session (it connected with a clean session).
    pub fn discard(&mut self, client_id: &str) {
        self.parked.remove(client_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked(filter: &str) -> Parked {
        Parked {
            filters: vec![filter.into()],
            waiting: VecDeque::new(),
            last_pkid: 0,
        }
    }

    #[test]
    fn qos1_messages_wait_for_the_matching_sessions_up_to_their_limit() {
        let mut sessions = Sessions::default();
        sessions.park("a".into(), parked("cmd/#")).ok().unwrap();
        sessions.park("b".into(), parked("other/#")).ok().unwrap();
        assert!(sessions.offer("cmd/1", b"x", QoS::AtMostOnce).is_empty());
        for _ in 0..MAX_WAITING {
            assert!(sessions.offer("cmd/1", b"x", QoS::AtLeastOnce).is_empty());
        }
        assert_eq!(
            sessions.offer("cmd/1", b"x", QoS::AtLeastOnce),
            vec!["a".to_string()]
        );
        let a = sessions.resume("a").unwrap();
        assert_eq!(a.waiting.len(), MAX_WAITING);
        assert!(a.waiting.iter().all(|p| p.qos == QoS::AtLeastOnce));
        assert!(sessions.resume("b").unwrap().waiting.is_empty());
        assert!(sessions.resume("a").is_none(), "taken once");
    }

    #[test]
    fn no_more_than_the_limit_of_sessions_is_kept() {
        let mut sessions = Sessions::default();
        for i in 0..MAX_SESSIONS {
            assert!(sessions.park(format!("c{i}"), parked("#")).is_ok());
        }
        assert!(sessions.park("one-more".into(), parked("#")).is_err());
        // A session that is kept already may be kept again.
        assert!(sessions.park("c0".into(), parked("#")).is_ok());
        sessions.discard("c1");
        assert!(sessions.resume("c1").is_none());
        assert!(sessions.park("one-more".into(), parked("#")).is_ok());
    }
}
