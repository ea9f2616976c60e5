//! What each emulated service received, with the identity it authenticated: kept in memory for
//! tests (`Recorder::wait_for`) and logged as structured lines for `gatehost sandbox`.

use crate::model::Pair;
use serde::Serialize;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
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
}

impl Record {
    pub fn new(service: &'static str, event: &'static str, client_id: &str) -> Record {
        Record {
            service,
            event,
            client_id: client_id.to_string(),
            identity: None,
            topic: None,
            body: Vec::new(),
            properties: Vec::new(),
            detail: String::new(),
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Record {
        self.detail = detail.into();
        self
    }

    pub fn identity(mut self, identity: Option<&str>) -> Record {
        self.identity = identity.map(str::to_string);
        self
    }

    pub fn topic(mut self, topic: &str) -> Record {
        self.topic = Some(topic.to_string());
        self
    }

    pub fn body(mut self, body: &[u8]) -> Record {
        self.body = body.to_vec();
        self
    }

    pub fn properties(mut self, properties: Vec<Pair>) -> Record {
        self.properties = properties;
        self
    }
}

/// Every record, in arrival order.
#[derive(Debug, Default)]
pub struct Recorder {
    records: Mutex<Vec<Record>>,
    arrived: Condvar,
}

impl Recorder {
    pub fn push(&self, record: Record) {
        let body = String::from_utf8_lossy(&record.body);
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
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.push(record);
        self.arrived.notify_all();
    }

    pub fn all(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records of one service and event.
    pub fn of(&self, service: &str, event: &str) -> Vec<Record> {
        self.all()
            .into_iter()
            .filter(|r| r.service == service && r.event == event)
            .collect()
    }

    /// The first record (old or new) that `matches`, waiting up to `timeout` for it.
    pub fn wait_for(&self, timeout: Duration, matches: impl Fn(&Record) -> bool) -> Option<Record> {
        let deadline = Instant::now() + timeout;
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = records.iter().find(|r| matches(r)) {
                return Some(r.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            records = self
                .arrived
                .wait_timeout(records, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
