//! What each emulated service received, with the identity it authenticated: kept in memory for
//! tests (`Recorder::wait_for`) and logged as structured lines for `gatehost sandbox`. Memory is
//! bounded: past [`Recorder::limit`] records, or [`MAX_BYTES`] of their contents, the oldest are
//! let go (every record was logged, and [`Recorder::dropped`] counts them), so a sandbox left
//! running for days does not grow.

use crate::model::Pair;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// `dps`, `dps-rest`, `iothub`, ...
    pub service: &'static str,
    /// `connect`, `refused`, `register`, `assigned`, `telemetry`, `c2d`, `disconnect`, ...
    pub event: &'static str,
    /// MQTT client id, or the registration id for REST.
    pub client_id: String,
    /// Who the service decided the client is (`sas:<id>`, `x509:<CN>`), when it got that far.
    pub identity: Option<String>,
    pub topic: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub body: Vec<u8>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<Pair>,
    /// One sentence: why it was refused, what was assigned, ...
    pub detail: String,
    /// When it happened, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl Event {
    /// The bytes this record holds beyond its fixed size.
    fn size(&self) -> usize {
        self.body.len()
            + self.detail.len()
            + self.client_id.len()
            + self.identity.as_ref().map_or(0, String::len)
            + self.topic.as_ref().map_or(0, String::len)
            + self
                .properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    pub fn new(service: &'static str, event: &'static str, client_id: &str) -> Event {
        Event {
            service,
            event,
            client_id: client_id.to_string(),
            identity: None,
            topic: None,
            body: Vec::new(),
            properties: Vec::new(),
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            detail: String::new(),
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Event {
        self.detail = detail.into();
        self
    }

    pub fn identity(mut self, identity: Option<&str>) -> Event {
        self.identity = identity.map(str::to_string);
        self
    }

    pub fn topic(mut self, topic: &str) -> Event {
        self.topic = Some(topic.to_string());
        self
    }

    pub fn body(mut self, body: &[u8]) -> Event {
        self.body = body.to_vec();
        self
    }

    pub fn properties(mut self, properties: Vec<Pair>) -> Event {
        self.properties = properties;
        self
    }
}

/// How many records a recorder keeps unless told otherwise.
pub(crate) const DEFAULT_LIMIT: usize = 10_000;
/// The most bytes of record contents (bodies, details, topics, properties) a recorder keeps:
/// 10 000 records of IoT Hub's largest message would otherwise be 2.5 GiB.
pub(crate) const MAX_BYTES: usize = 8 * 1024 * 1024;

/// The newest records, in arrival order.
#[derive(Debug)]
pub struct Recorder {
    kept: Mutex<Kept>,
    arrived: Condvar,
    limit: usize,
}

#[derive(Debug, Default)]
struct Kept {
    records: VecDeque<Event>,
    bytes: usize,
    dropped: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::with_limit(DEFAULT_LIMIT)
    }
}

impl Recorder {
    /// A recorder that keeps the newest `limit` records (at least one).
    pub fn with_limit(limit: usize) -> Recorder {
        Recorder {
            kept: Mutex::new(Kept::default()),
            arrived: Condvar::new(),
            limit: limit.max(1),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How many old records were let go to stay within the limit.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, record: Event) {
        let body = String::from_utf8_lossy(&record.body);
        if record.service == "local" {
            // The bridge's local clients: who connected and why they left.
            tracing::info!(
                target: "gatehost::local",
                event = record.event,
                client_id = %record.client_id,
                "{}",
                record.detail
            );
        } else {
            tracing::info!(
                target: "gatehost::sandbox",
                service = record.service,
                event = record.event,
                client_id = %record.client_id,
                identity = record.identity.as_deref().unwrap_or("-"),
                topic = record.topic.as_deref().unwrap_or("-"),
                body = %body,
                properties = ?record.properties,
                "{}",
                record.detail
            );
        }
        let mut kept = self.lock();
        kept.bytes += record.size();
        kept.records.push_back(record);
        while kept.records.len() > self.limit || (kept.bytes > MAX_BYTES && kept.records.len() > 1)
        {
            let Some(old) = kept.records.pop_front() else {
                break;
            };
            kept.bytes -= old.size();
            kept.dropped += 1;
        }
        self.arrived.notify_all();
    }

    pub fn all(&self) -> Vec<Event> {
        self.lock().records.iter().cloned().collect()
    }

    /// Records of one service and event.
    pub fn of(&self, service: &str, event: &str) -> Vec<Event> {
        self.all()
            .into_iter()
            .filter(|r| r.service == service && r.event == event)
            .collect()
    }

    /// The first record (old or new) that `matches`, waiting up to `timeout` for it.
    pub fn wait_for(&self, timeout: Duration, matches: impl Fn(&Event) -> bool) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        let mut kept = self.lock();
        loop {
            if let Some(r) = kept.records.iter().find(|r| matches(r)) {
                return Some(r.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            kept = self
                .arrived
                .wait_timeout(kept, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_records_go_first_and_are_counted() {
        let recorder = Recorder::with_limit(3);
        for i in 0..5 {
            recorder.push(Event::new("dps", "connect", &format!("d{i}")));
        }
        let ids: Vec<String> = recorder.all().into_iter().map(|r| r.client_id).collect();
        assert_eq!(ids, ["d2", "d3", "d4"]);
        assert_eq!(recorder.dropped(), 2);
        assert_eq!(Recorder::with_limit(0).limit(), 1);
    }

    #[test]
    fn large_bodies_are_bounded_by_bytes_too() {
        let recorder = Recorder::default();
        let body = vec![b'x'; 256 * 1024];
        for i in 0..100 {
            recorder.push(Event::new("iothub", "telemetry", &format!("d{i}")).body(&body));
        }
        let kept = recorder.all();
        let bytes: usize = kept.iter().map(|r| r.body.len()).sum();
        assert!(bytes <= MAX_BYTES, "{bytes} bytes kept");
        assert_eq!(kept.len() as u64 + recorder.dropped(), 100);
        assert_eq!(kept.last().unwrap().client_id, "d99", "the newest stay");
    }
}
