//! Rules hot-reload on a running `gatehost run`: a rule file rewritten under load changes what
//! the next message gets without losing or doubling one, and a broken edit keeps the last good
//! version serving and says why.

use crate::support::gateway::{
    dt_subscriber, eventually, mosquitto_pub, payloads, rhai_rule_gateway, tls_gateway, Gatehost,
    Sub,
};
use crate::support::mosquitto::{Mosquitto, Pki};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn a_rule_replaced_twenty_times_under_load_loses_nothing_and_each_message_has_one_version() {
    let pki = Pki::new();
    let upstream = Mosquitto::start_tls(&pki);
    let sub = dt_subscriber(&pki, upstream.port);
    let (dir, local, metrics) = tls_gateway(
        &pki,
        upstream.port,
        "\n[[rules]]\nname = \"versioned\"\nrule = \"versioned\"\nfrom = [\"load/#\"]\n",
    );
    let d = dir.path().to_path_buf();
    let rules = d.join("plugins");
    let write_rule = |version: u32| {
        let source = format!(
            "fn translate(msg) {{\n    let n = msg.payload.as_string();\n    [#{{ upstream: \"dev01\", topic: `dt/load/v{version}`, payload: `${{n}}|v{version}`, qos: 1 }}]\n}}\n"
        );
        let tmp = rules.join("versioned.rhai.tmp");
        std::fs::write(&tmp, source).unwrap();
        std::fs::rename(&tmp, rules.join("versioned.rhai")).unwrap();
    };
    std::fs::write(
        rules.join("versioned.toml"),
        "name = \"versioned\"\nversion = \"1.0.0\"\nkind = \"rule\"\napi = \"0.1\"\n",
    )
    .unwrap();
    write_rule(0);
    let g = Gatehost::start(&d, metrics);

    // 5 000 msg/s while the rule is replaced 20 times (at least 4 s, and on until the 20th
    // version has run for a while, however long the reloads take).
    let total = 20_000usize;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut options = rumqttc::MqttOptions::new("load", "127.0.0.1", local);
            options.set_inflight(200);
            let (client, mut connection) = rumqttc::Client::new(options, 1000);
            let (acked, acks) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for event in connection.iter() {
                    match event {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                            if acked.send(()).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            });
            let started = Instant::now();
            let mut sent = 0usize;
            while sent < total || !stop.load(Ordering::SeqCst) {
                let due = started + Duration::from_micros(200 * sent as u64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                client
                    .publish("load/x", rumqttc::QoS::AtLeastOnce, false, sent.to_string())
                    .unwrap();
                sent += 1;
            }
            let acknowledged = acks
                .iter()
                .take(sent)
                .take_while(|_| started.elapsed() < Duration::from_secs(120))
                .count();
            (sent, acknowledged)
        })
    };
    for version in 1..=20 {
        std::thread::sleep(Duration::from_millis(180));
        let before = g.metric("gatehost_reloads_total");
        write_rule(version);
        eventually(30, &format!("version {version} applied"), || {
            g.metric("gatehost_reloads_total") > before
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let (total, acknowledged) = publisher.join().unwrap();
    assert_eq!(acknowledged, total);
    eventually(120, "every message upstream", || {
        sub.messages()
            .iter()
            .filter(|(t, _)| t.starts_with("dt/load/"))
            .count()
            >= total
    });
    let mut versions_seen = std::collections::BTreeSet::new();
    let mut numbers = std::collections::BTreeSet::new();
    for (topic, payload) in sub
        .messages()
        .into_iter()
        .filter(|(t, _)| t.starts_with("dt/load/"))
    {
        let text = String::from_utf8(payload).unwrap();
        let (n, version) = text.split_once('|').unwrap();
        // Topic and payload were made by the same version.
        assert_eq!(topic, format!("dt/load/{version}"), "{text}");
        versions_seen.insert(version.to_string());
        numbers.insert(n.parse::<usize>().unwrap());
    }
    assert_eq!(numbers.len(), total, "no message lost");
    let log = g.log();
    let reloads = log.matches("reload applied in").count();
    // For the record (timing is not asserted): how long the swaps took.
    let took: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("reload applied in ").nth(1))
        .collect();
    eprintln!("{reloads} reloads, each took: {took:?}");
    assert!(reloads >= 5, "{reloads} reloads logged:\n{log}");
    assert!(versions_seen.len() >= 5, "{versions_seen:?}");
    assert!(versions_seen.contains("v20"), "{versions_seen:?}");
    assert_eq!(g.metric("gatehost_reload_failures_total"), 0.0);
}

#[test]
fn a_broken_edit_keeps_the_last_good_rule_serving_and_names_the_file_and_the_error() {
    let version = |v: &str| {
        format!("fn translate(msg) {{ [#{{ local: true, topic: \"out\", payload: \"{v}\", qos: 1 }}] }}\n")
    };
    let (dir, local, metrics, plugins) = rhai_rule_gateway("echo", "in/#", &version("v1"));
    let d = dir.path();
    let write = |source: &str| {
        let tmp = plugins.join("echo.rhai.tmp");
        std::fs::write(&tmp, source).unwrap();
        std::fs::rename(&tmp, plugins.join("echo.rhai")).unwrap();
    };
    let g = Gatehost::start(d, metrics);
    let sub = Sub::start(
        d,
        &["-p".into(), local.to_string(), "-t".into(), "out".into()],
    );
    mosquitto_pub(local, "in/a", b"1");
    eventually(20, "v1 answers", || payloads(&sub) == ["v1"]);

    // A syntax error: the reload fails, is counted and logged with the file and the line.
    write("fn translate(msg) { [#{ local: true, topic: \"out\" }\n");
    eventually(20, "the failed reload is counted", || {
        g.metric("gatehost_reload_failures_total") >= 1.0
    });
    let log = g.log();
    assert!(log.contains("echo.rhai"), "the log names the file:\n{log}");
    assert!(
        log.contains("syntax error"),
        "the log says what is wrong:\n{log}"
    );
    mosquitto_pub(local, "in/b", b"2");
    eventually(20, "v1 still answers", || payloads(&sub).len() == 2);
    assert_eq!(payloads(&sub), ["v1", "v1"]);

    // Fixed: the next version serves.
    write(&version("v2"));
    eventually(20, "v2 is loaded", || {
        mosquitto_pub(local, "in/c", b"3");
        std::thread::sleep(Duration::from_millis(200));
        payloads(&sub).last().map(String::as_str) == Some("v2")
    });
    assert!(payloads(&sub)[..2].iter().all(|p| p == "v1"));
}
