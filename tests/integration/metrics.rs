//! `/metrics` and `/healthz` of `gatehost run`, read as a Prometheus server reads them: the page
//! parses with the Prometheus client library's own text parser (Python `prometheus_client`), every
//! family has its type, and the series the README lists are there and move.

use crate::support::gateway::{bare_gateway, eventually, mosquitto_pub, Gatehost};
use crate::support::python::{python, venv_python};

/// Parses the exposition in the file `argv[1]` with `prometheus_client`; prints
/// `family type sample value` for every sample, or fails on a malformed page.
const PARSE: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    for sample in family.samples:
        print(family.name, family.type, sample.name, sample.value)
"#;

#[test]
fn the_metrics_page_parses_as_prometheus_text_and_counts_what_happened() {
    let (dir, local, metrics) = bare_gateway("");
    let g = Gatehost::start(dir.path(), metrics);
    mosquitto_pub(local, "nowhere/a", b"x");
    mosquitto_pub(local, "nowhere/b", b"y");
    eventually(20, "the unrouted messages are counted", || {
        g.metric("gatehost_messages_unrouted_total") >= 2.0
    });
    let page = g.http("/metrics");
    let scraped = dir.path().join("metrics.txt");
    std::fs::write(&scraped, &page).unwrap();
    let parsed = python(&venv_python(), PARSE, &[scraped.to_str().unwrap()]);
    let families: Vec<(&str, &str)> = parsed
        .lines()
        .map(|l| {
            let mut f = l.split(' ');
            (f.next().unwrap(), f.next().unwrap())
        })
        .collect();
    assert!(!families.is_empty(), "no samples parsed from:\n{page}");
    for (name, kind) in &families {
        assert!(
            ["counter", "gauge", "histogram", "summary"].contains(kind),
            "{name} has no type ({kind}):\n{page}"
        );
    }
    let unrouted = parsed
        .lines()
        .find(|l| l.contains(" gatehost_messages_unrouted_total "))
        .unwrap_or_else(|| panic!("no unrouted counter:\n{parsed}"));
    let value: f64 = unrouted.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(value, 2.0, "{unrouted}");
    let health: serde_json::Value = serde_json::from_str(&g.http("/healthz")).unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["queued"], 0, "{health}");
}
