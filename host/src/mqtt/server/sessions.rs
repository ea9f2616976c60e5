//! Persistent sessions (MQTT 3.1.1 CleanSession = 0) of the services that keep them: while such a
//! client is away its subscriptions stay, and the QoS 1 messages that match them wait — behind
//! the ones it had been sent and not acknowledged, which go again marked DUP — until it connects
//! again (CONNACK with session present) or connects with a clean session (then they are
//! discarded). QoS 0 messages are not kept for an absent client. Sessions live in memory while
//! the server runs; each keeps at most [`MAX_WAITING`] messages and at most [`MAX_SESSIONS`]
//! sessions are kept. The owner may [`Sessions::save`] them to a file (one JSON session per line)
//! when the server stops and [`Sessions::load`] them at the next start.

use super::subscriptions::{delivery_qos, Subscriptions};
use crate::model::Message;
use rumqttc::mqttbytes::v4::Publish;
use rumqttc::mqttbytes::QoS;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::path::Path;

/// Messages one absent client's session keeps at most; later ones are dropped and reported.
pub(crate) const MAX_WAITING: usize = 1000;
/// Absent clients' sessions kept at most; beyond it a client's session ends with its connection.
pub(crate) const MAX_SESSIONS: usize = 10_000;

/// An absent client's session.
pub(crate) struct Parked {
    pub filters: Subscriptions,
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
pub(crate) struct Sessions {
    parked: HashMap<String, Parked>,
}

impl Sessions {
    /// Keep `message` for every absent client subscribed to a filter matching `topic`, if it
    /// is delivered at QoS 1; the client ids whose session was full, so it was not kept for
    /// them.
    pub(crate) fn offer(&mut self, topic: &str, payload: &[u8], qos: QoS) -> Vec<String> {
        let mut full = Vec::new();
        for (client_id, session) in &mut self.parked {
            if delivery_qos(&session.filters, topic, qos) != Some(QoS::AtLeastOnce) {
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
    pub(crate) fn park(&mut self, client_id: String, session: Parked) -> Result<(), Parked> {
        if self.parked.len() >= MAX_SESSIONS && !self.parked.contains_key(&client_id) {
            return Err(session);
        }
        self.parked.insert(client_id, session);
        Ok(())
    }

    /// The session `client_id` left, taken out to be served again.
    pub(crate) fn resume(&mut self, client_id: &str) -> Option<Parked> {
        self.parked.remove(client_id)
    }

    /// Write every kept session to `path` (a new file, synced, renamed over the old one; none
    /// removes it): how many sessions and messages were written.
    pub(crate) fn save(&self, path: &Path) -> std::io::Result<(usize, usize)> {
        if self.parked.is_empty() {
            return match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok((0, 0)),
            };
        }
        let mut messages = 0;
        let mut lines = Vec::with_capacity(self.parked.len());
        for (client_id, session) in &self.parked {
            let saved = Saved {
                client_id: client_id.clone(),
                filters: session
                    .filters
                    .iter()
                    .map(|(filter, qos)| (filter.clone(), *qos as u8))
                    .collect(),
                last_pkid: session.last_pkid,
                waiting: session
                    .waiting
                    .iter()
                    .map(|p| SavedMessage {
                        message: Message::new(p.topic.clone(), p.payload.to_vec(), p.qos as u8),
                        pkid: p.pkid,
                        dup: p.dup,
                    })
                    .collect(),
            };
            messages += saved.waiting.len();
            lines.push(saved);
        }
        super::jsonl::save(path, lines)?;
        Ok((self.parked.len(), messages))
    }

    /// Keep the sessions saved in `path` (none when it does not exist): how many were kept, and
    /// the sentences saying which lines were not (unreadable, or beyond [`MAX_SESSIONS`]).
    pub fn load(&mut self, path: &Path) -> std::io::Result<(usize, Vec<String>)> {
        let (mut kept, mut skipped) = (0, Vec::new());
        for line in super::jsonl::load::<Saved>(path)? {
            let saved = match line {
                Ok(s) => s,
                Err(why) => {
                    skipped.push(why);
                    continue;
                }
            };
            let waiting = saved
                .waiting
                .into_iter()
                .take(MAX_WAITING)
                .map(|m| {
                    let mut p = Publish::new(m.message.topic, QoS::AtLeastOnce, m.message.payload);
                    p.pkid = m.pkid;
                    p.dup = m.dup;
                    p
                })
                .collect();
            let session = Parked {
                filters: saved
                    .filters
                    .into_iter()
                    .map(|(filter, qos)| (filter, super::qos_of(qos)))
                    .collect(),
                waiting,
                last_pkid: saved.last_pkid,
            };
            match self.park(saved.client_id.clone(), session) {
                Ok(()) => kept += 1,
                Err(_) => skipped.push(format!(
                    "the session of '{}' in {} was not kept: {MAX_SESSIONS} sessions are kept already",
                    saved.client_id,
                    path.display()
                )),
            }
        }
        Ok((kept, skipped))
    }
}

/// One session in the saved file.
#[derive(Serialize, Deserialize)]
struct Saved {
    client_id: String,
    /// Each filter with its granted QoS (0 or 1).
    filters: Vec<(String, u8)>,
    last_pkid: u16,
    waiting: Vec<SavedMessage>,
}

/// A waiting message: `pkid` and `dup` are set for one the client was sent and did not
/// acknowledge.
#[derive(Serialize, Deserialize)]
struct SavedMessage {
    message: Message,
    #[serde(default)]
    pkid: u16,
    #[serde(default)]
    dup: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked(filter: &str) -> Parked {
        Parked {
            filters: vec![(filter.into(), QoS::AtLeastOnce)],
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
    fn saved_sessions_come_back_with_their_messages_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.jsonl");
        let mut sessions = Sessions::default();
        let mut away = parked("cmd/#");
        let mut unacked = Publish::new("cmd/0", QoS::AtLeastOnce, vec![0u8, 255]);
        unacked.pkid = 7;
        unacked.dup = true;
        away.keep(unacked);
        away.last_pkid = 7;
        sessions.park("away".into(), away).ok().unwrap();
        sessions.offer("cmd/1", b"one", QoS::AtLeastOnce);
        assert_eq!(sessions.save(&path).unwrap(), (1, 2));

        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("not json\n");
        std::fs::write(&path, text).unwrap();
        let mut loaded = Sessions::default();
        let (kept, skipped) = loaded.load(&path).unwrap();
        assert_eq!(kept, 1);
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].contains("line 2"), "{skipped:?}");
        let away = loaded.resume("away").unwrap();
        assert_eq!(away.filters, vec![("cmd/#".to_string(), QoS::AtLeastOnce)]);
        assert_eq!(away.last_pkid, 7);
        let got: Vec<_> = away
            .waiting
            .iter()
            .map(|p| (p.topic.as_str(), p.payload.to_vec(), p.pkid, p.dup))
            .collect();
        assert_eq!(
            got,
            [
                ("cmd/0", vec![0u8, 255], 7, true),
                ("cmd/1", b"one".to_vec(), 0, false)
            ]
        );

        // Nothing kept: no file.
        assert_eq!(loaded.save(&path).unwrap(), (0, 0));
        assert!(!path.exists());
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
        sessions.resume("c1");
        assert!(sessions.resume("c1").is_none());
        assert!(sessions.park("one-more".into(), parked("#")).is_ok());
    }
}
