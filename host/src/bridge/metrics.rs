//! The bridge's counters and gauges, and their Prometheus text rendering for `/metrics`.
//! Counters are labelled by rule, device or cause; gauges that live elsewhere (queue depth,
//! upstream state) are read when scraped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// A counter family with labels (`rule`, `device`, `cause`, ...), in a stable order.
#[derive(Default)]
pub struct CounterVec {
    values: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl CounterVec {
    pub fn add(&self, labels: &[&str], n: u64) {
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        // Look up without allocating on the hot path.
        if let Some((_, v)) = values
            .iter_mut()
            .find(|(k, _)| k.iter().map(String::as_str).eq(labels.iter().copied()))
        {
            *v += n;
            return;
        }
        values.insert(labels.iter().map(|s| s.to_string()).collect(), n);
    }

    pub(crate) fn inc(&self, labels: &[&str]) {
        self.add(labels, 1);
    }

    /// The value for exactly these labels (0 when never counted).
    pub fn get(&self, labels: &[&str]) -> u64 {
        let values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        values
            .iter()
            .find(|(k, _)| k.iter().map(String::as_str).eq(labels.iter().copied()))
            .map_or(0, |(_, v)| *v)
    }

    /// The sum over all labels.
    pub fn total(&self) -> u64 {
        let values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        values.values().sum()
    }

    fn snapshot(&self) -> Vec<(Vec<String>, u64)> {
        let values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        values.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Everything the bridge counts.
#[derive(Default)]
pub struct Metrics {
    /// Publishes received from local clients.
    pub received: AtomicU64,
    /// Received messages that matched no rule (still delivered to local subscribers).
    pub unrouted: AtomicU64,
    /// Retained messages the embedded broker did not keep (its limits).
    pub retained_refused: AtomicU64,
    /// Messages the embedded broker did not keep for an absent client's session (its limits).
    pub session_dropped: AtomicU64,
    /// Messages not delivered to a connected local client whose inbox was full.
    pub outgoing_dropped: AtomicU64,
    /// Cloud-to-device messages received, by device.
    pub from_cloud: CounterVec,
    /// Messages a rule took in, by rule.
    pub translated: CounterVec,
    /// Messages a rule sent back to the local broker, by rule.
    pub to_local: CounterVec,
    /// Messages stored for upstream, by device.
    pub queued: CounterVec,
    /// Messages the upstream acknowledged, by device.
    pub sent: CounterVec,
    /// Messages set aside, by rule and cause.
    pub dead_lettered: CounterVec,
    /// Messages dropped by a queue limit, by device and cause.
    pub dropped: CounterVec,
    /// Local connections closed for a protocol error, by cause.
    pub protocol_errors: CounterVec,
    /// Failed upstream connection attempts and broken sessions, by device.
    pub upstream_errors: CounterVec,
    /// Rule chain reloads applied, and reloads that kept (part of) the old chain.
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Whether gatehost is connected to its local broker (the embedded one: always).
    pub local_connected: AtomicBool,
}

/// One gauge sample: labels and value.
pub(crate) type Sample = (Vec<(&'static str, String)>, f64);

/// Gauges read at scrape time.
#[derive(Default)]
pub struct Gauges {
    pub queue_messages: Vec<Sample>,
    pub queue_bytes: f64,
    pub queue_oldest_age_seconds: Vec<Sample>,
    pub upstream_connected: Vec<Sample>,
    pub credential_expiry_seconds: Vec<Sample>,
    pub dead_letters_kept: f64,
    pub rules_loaded: f64,
}

impl Metrics {
    /// The Prometheus text exposition of the counters and `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let plain = |out: &mut String, name: &str, help: &str, kind: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        plain(
            &mut out,
            "gatehost_messages_received_total",
            "Publishes received from local clients.",
            "counter",
            self.received.load(Ordering::Relaxed) as f64,
        );
        plain(
            &mut out,
            "gatehost_messages_unrouted_total",
            "Received messages that matched no rule.",
            "counter",
            self.unrouted.load(Ordering::Relaxed) as f64,
        );
        plain(
            &mut out,
            "gatehost_local_retained_refused_total",
            "Retained messages the embedded broker did not keep (10 000 topics or 64 MiB at most).",
            "counter",
            self.retained_refused.load(Ordering::Relaxed) as f64,
        );
        plain(
            &mut out,
            "gatehost_local_session_dropped_total",
            "Messages (or whole sessions) the embedded broker did not keep for absent clients with persistent sessions (1 000 messages per session, 10 000 sessions at most).",
            "counter",
            self.session_dropped.load(Ordering::Relaxed) as f64,
        );
        plain(
            &mut out,
            "gatehost_local_outgoing_dropped_total",
            "Messages not delivered to a connected local client that had 1 000 messages or 16 MiB waiting for it already (it read too slowly, or not at all).",
            "counter",
            self.outgoing_dropped.load(Ordering::Relaxed) as f64,
        );
        let families: [(&str, &str, &[&str], &CounterVec); 9] = [
            (
                "gatehost_messages_from_cloud_total",
                "Cloud-to-device messages received from a device's cloud session.",
                &["device"],
                &self.from_cloud,
            ),
            (
                "gatehost_messages_translated_total",
                "Messages a rule took in.",
                &["rule"],
                &self.translated,
            ),
            (
                "gatehost_messages_to_local_total",
                "Messages rules sent back to the local broker.",
                &["rule"],
                &self.to_local,
            ),
            (
                "gatehost_messages_queued_total",
                "Messages stored for a device's upstream session.",
                &["device"],
                &self.queued,
            ),
            (
                "gatehost_messages_sent_total",
                "Messages the upstream acknowledged.",
                &["device"],
                &self.sent,
            ),
            (
                "gatehost_messages_dead_lettered_total",
                "Messages set aside because a rule failed or no device could take them.",
                &["rule", "cause"],
                &self.dead_lettered,
            ),
            (
                "gatehost_messages_dropped_total",
                "Queued messages dropped by a queue limit.",
                &["device", "cause"],
                &self.dropped,
            ),
            (
                "gatehost_local_protocol_errors_total",
                "Local connections closed because the client broke the MQTT protocol.",
                &["cause"],
                &self.protocol_errors,
            ),
            (
                "gatehost_upstream_errors_total",
                "Failed upstream connection attempts and broken upstream sessions.",
                &["device"],
                &self.upstream_errors,
            ),
        ];
        for (name, help, labels, counter) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (values, n) in counter.snapshot() {
                let pairs: Vec<(&str, String)> = labels.iter().copied().zip(values).collect();
                let _ = writeln!(out, "{name}{} {n}", label_text(&pairs));
            }
        }
        plain(
            &mut out,
            "gatehost_reloads_total",
            "Rule chain reloads applied.",
            "counter",
            self.reloads.load(Ordering::Relaxed) as f64,
        );
        plain(
            &mut out,
            "gatehost_reload_failures_total",
            "Reloads in which a changed plugin or config was rejected (the old one kept running).",
            "counter",
            self.reload_failures.load(Ordering::Relaxed) as f64,
        );
        plain(
            &mut out,
            "gatehost_local_broker_connected",
            "1 when gatehost is connected to its local broker (always, for the embedded one).",
            "gauge",
            if self.local_connected.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            },
        );
        plain(
            &mut out,
            "gatehost_queue_bytes",
            "Bytes waiting in the store-and-forward queue.",
            "gauge",
            gauges.queue_bytes,
        );
        plain(
            &mut out,
            "gatehost_dead_letters_kept",
            "Dead letters kept in the queue file.",
            "gauge",
            gauges.dead_letters_kept,
        );
        plain(
            &mut out,
            "gatehost_rules_loaded",
            "Rules in the running chain.",
            "gauge",
            gauges.rules_loaded,
        );
        let labelled: [(&str, &str, &Vec<Sample>); 4] = [
            (
                "gatehost_queue_messages",
                "Messages waiting for a device's upstream session.",
                &gauges.queue_messages,
            ),
            (
                "gatehost_queue_oldest_age_seconds",
                "Age of a device's oldest queued message.",
                &gauges.queue_oldest_age_seconds,
            ),
            (
                "gatehost_upstream_connected",
                "1 when the device's upstream session is connected.",
                &gauges.upstream_connected,
            ),
            (
                "gatehost_upstream_credential_expiry_seconds",
                "Seconds until the device's upstream credentials expire.",
                &gauges.credential_expiry_seconds,
            ),
        ];
        for (name, help, samples) in labelled {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{} {value}", label_text(labels));
            }
        }
        out
    }
}

/// `{a="x",b="y"}` with Prometheus escaping.
fn label_text(pairs: &[(&str, String)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_text_with_escaped_labels() {
        let m = Metrics::default();
        m.received.fetch_add(3, Ordering::Relaxed);
        m.translated.inc(&["r1"]);
        m.translated.add(&["r1"], 2);
        m.dead_lettered.inc(&["r\"2", "rule error"]);
        let gauges = Gauges {
            queue_messages: vec![(vec![("device", "press7".into())], 4.0)],
            ..Gauges::default()
        };
        let text = m.render(&gauges);
        assert!(
            text.contains("gatehost_messages_received_total 3\n"),
            "{text}"
        );
        assert!(text.contains("gatehost_messages_translated_total{rule=\"r1\"} 3\n"));
        assert!(text.contains(
            "gatehost_messages_dead_lettered_total{rule=\"r\\\"2\",cause=\"rule error\"} 1\n"
        ));
        assert!(text.contains("gatehost_queue_messages{device=\"press7\"} 4\n"));
        assert_eq!(m.translated.get(&["r1"]), 3);
        assert_eq!(m.translated.total(), 3);
    }
}
