//! Retained messages (MQTT 3.1.1 §3.3.1.3) for a server whose service asks for them: the last
//! retained publish of each topic, handed to every later subscription matching it; a retained
//! publish with an empty payload clears its topic. Kept in memory and bounded: a new topic
//! beyond [`MAX_TOPICS`] or [`MAX_BYTES`] is not retained, and the caller is told why. The owner
//! may [`Retained::save`] them to a file (one JSON message per line) and [`Retained::load`] them
//! at the next start.

use crate::model::Message;
use crate::mqtt::topic::subscription_matches;
use rumqttc::mqttbytes::QoS;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// Topics with a retained message, at most.
pub(crate) const MAX_TOPICS: usize = 10_000;
/// Bytes of retained topics and payloads, at most.
pub(crate) const MAX_BYTES: usize = 64 * 1024 * 1024;

/// A retained message: its payload and the QoS it was published with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Kept {
    pub payload: Vec<u8>,
    pub qos: QoS,
}

#[derive(Default)]
pub struct Retained {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    by_topic: HashMap<String, Kept>,
    bytes: usize,
    /// Changes so far, and how many of them the last save (or load) covered.
    changes: u64,
    saved: u64,
}

/// Why a retained message was not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetainError {
    #[error(
        "the retained message of '{topic}' was not kept: {MAX_TOPICS} topics already hold one"
    )]
    TooManyTopics { topic: String },
    #[error("the retained message of '{topic}' ({bytes} bytes) was not kept: retained messages would exceed {} MiB", MAX_BYTES / (1024 * 1024))]
    TooManyBytes { topic: String, bytes: usize },
}

impl Retained {
    /// Keep `payload` as `topic`'s retained message (an empty one clears the topic); `Err` says
    /// why it was not kept.
    pub fn keep(&self, topic: &str, payload: &[u8], qos: QoS) -> Result<(), RetainError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let old = state
            .by_topic
            .get(topic)
            .map_or(0, |k| topic.len() + k.payload.len());
        if payload.is_empty() {
            if state.by_topic.remove(topic).is_some() {
                state.bytes -= old;
                state.changes += 1;
            }
            return Ok(());
        }
        let new = topic.len() + payload.len();
        if old == 0 && state.by_topic.len() >= MAX_TOPICS {
            return Err(RetainError::TooManyTopics {
                topic: topic.to_string(),
            });
        }
        if state.bytes - old + new > MAX_BYTES {
            return Err(RetainError::TooManyBytes {
                topic: topic.to_string(),
                bytes: payload.len(),
            });
        }
        state.bytes = state.bytes - old + new;
        state.changes += 1;
        let kept = Kept {
            payload: payload.to_vec(),
            qos,
        };
        state.by_topic.insert(topic.to_string(), kept);
        Ok(())
    }

    /// The retained messages whose topics `filter` matches, by topic.
    pub(crate) fn matching(&self, filter: &str) -> Vec<(String, Kept)> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut found: Vec<(String, Kept)> = state
            .by_topic
            .iter()
            .filter(|(topic, _)| subscription_matches(filter, topic))
            .map(|(topic, kept)| (topic.clone(), kept.clone()))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// Write every retained message to `path` if any changed since the last save: a new file,
    /// synced, renamed over the old one. Whether it wrote.
    pub(crate) fn save(&self, path: &Path) -> std::io::Result<bool> {
        let (messages, changes) = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.changes == state.saved {
                return Ok(false);
            }
            let messages: Vec<Message> = state
                .by_topic
                .iter()
                .map(|(topic, kept)| {
                    Message::new(topic.clone(), kept.payload.clone(), kept.qos as u8)
                })
                .collect();
            (messages, state.changes)
        };
        super::jsonl::save(path, messages)?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.saved = state.saved.max(changes);
        Ok(true)
    }

    /// Retain the messages saved in `path` (none when it does not exist): how many were kept,
    /// and the sentences saying which lines were not (unreadable, or over a limit).
    pub fn load(&self, path: &Path) -> std::io::Result<(usize, Vec<String>)> {
        let (mut kept, mut skipped) = (0, Vec::new());
        for line in super::jsonl::load::<Message>(path)? {
            let message = match line {
                Ok(m) => m,
                Err(why) => {
                    skipped.push(why);
                    continue;
                }
            };
            let qos = match message.qos {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            };
            match self.keep(&message.topic, &message.payload, qos) {
                Ok(()) => kept += 1,
                Err(why) => skipped.push(why.to_string()),
            }
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.saved = state.changes;
        Ok((kept, skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_retained_message_of_a_topic_is_kept_until_an_empty_one_clears_it() {
        let r = Retained::default();
        r.keep("a/1", b"one", QoS::AtLeastOnce).unwrap();
        r.keep("a/1", b"two", QoS::AtMostOnce).unwrap();
        r.keep("a/2", b"x", QoS::AtLeastOnce).unwrap();
        r.keep("$SYS/x", b"s", QoS::AtMostOnce).unwrap();
        let topics =
            |f: &str| -> Vec<String> { r.matching(f).into_iter().map(|(t, _)| t).collect() };
        assert_eq!(topics("a/#"), ["a/1", "a/2"]);
        assert_eq!(topics("#"), ["a/1", "a/2"]);
        assert_eq!(topics("$SYS/#"), ["$SYS/x"]);
        assert_eq!(
            r.matching("a/1")[0].1,
            Kept {
                payload: b"two".to_vec(),
                qos: QoS::AtMostOnce
            }
        );
        r.keep("a/1", b"", QoS::AtMostOnce).unwrap();
        assert_eq!(topics("a/+"), ["a/2"]);
        assert_eq!(
            r.state.lock().unwrap().bytes,
            "a/2".len() + 1 + "$SYS/x".len() + 1
        );
    }

    #[test]
    fn saved_messages_come_back_at_load_and_an_unchanged_set_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("retained.jsonl");
        let r = Retained::default();
        assert!(!r.save(&path).unwrap(), "nothing to save yet");
        r.keep("a/1", b"one", QoS::AtLeastOnce).unwrap();
        r.keep("a/2", &[0xff, 0x00], QoS::AtMostOnce).unwrap();
        assert!(r.save(&path).unwrap());
        assert!(!r.save(&path).unwrap(), "unchanged");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{not json\n");
        std::fs::write(&path, text).unwrap();

        let again = Retained::default();
        let (kept, skipped) = again.load(&path).unwrap();
        assert_eq!(kept, 2);
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].contains("line 3"), "{skipped:?}");
        assert_eq!(again.matching("a/#"), r.matching("a/#"));
        assert!(!again.save(&path).unwrap(), "a load is not a change");
        assert_eq!(
            Retained::default()
                .load(&dir.path().join("none"))
                .unwrap()
                .0,
            0
        );
    }

    #[test]
    fn topics_and_bytes_are_bounded_and_a_refusal_says_why() {
        let r = Retained::default();
        for i in 0..MAX_TOPICS {
            r.keep(&format!("t/{i}"), b"x", QoS::AtMostOnce).unwrap();
        }
        let refused = r
            .keep("t/new", b"x", QoS::AtMostOnce)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("10000 topics"), "{refused}");
        // Replacing a kept topic's message is still allowed.
        r.keep("t/1", b"y", QoS::AtMostOnce).unwrap();
        let big = vec![0u8; MAX_BYTES];
        let refused = r
            .keep("t/2", &big, QoS::AtMostOnce)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("64 MiB"), "{refused}");
        assert_eq!(r.matching("t/2")[0].1.payload, b"x");
    }
}
