//! Parity: the example rule in Rhai and as WASM components written in Rust, JavaScript and
//! Python produce byte-identical results (messages and errors) over a corpus of odd topics and
//! payloads.

use crate::support::example_rules_in_every_language as rules;
use gatehost::model::{Message, Outbound, PluginError};

fn topics() -> Vec<String> {
    let mut topics: Vec<String> = [
        "plant1/press7/temperature",
        "plant1/press7/spindle/axis/x",
        "a/b/",
        "/b/c",
        "a//c",
        "plant1",
        "x/y",
        "ü/プレス/温度",
        "plant 1/press 7/temp °C",
        "site/dev\"quote/m\\back",
        "$SYS/broker/load",
        "s/d/emoji 🚀/&=%+",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    topics.push(format!("deep/dev/{}", vec!["l"; 200].join("/")));
    topics
}

fn payloads() -> Vec<Vec<u8>> {
    let mut payloads: Vec<Vec<u8>> = [
        r#"{"value":21.5}"#,
        "{}",
        r#" { "a" : [1,2,{"b":null}] } "#,
        "[1,2]",
        r#""just a string""#,
        "42",
        "-1.5e300",
        "true",
        "null",
        "",
        "not json at all",
        r#"{"a":1"#,
        r#"{"device":"shadowed","site":1}"#,
        r#"{"ü":"プ","emoji":"🚀"}"#,
        "\n\t{\"x\":1}\r\n",
        r#"{"esc":"\u0000\n\"q\""}"#,
        "{ }",
    ]
    .into_iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    payloads.push(vec![0x00, 0x9f, 0x92, 0x96, 0xff]);
    payloads.push(b"\xef\xbb\xbf{\"bom\":1}".to_vec());
    let big = format!(
        "{{\"samples\":[{}]}}",
        (0..4000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    payloads.push(big.into_bytes());
    payloads
}

fn corpus() -> Vec<Message> {
    let mut corpus = Vec::new();
    for (i, topic) in topics().iter().enumerate() {
        for (j, payload) in payloads().iter().enumerate() {
            let mut m = Message::new(topic.clone(), payload.clone(), ((i + j) % 3) as u8);
            m.retain = j % 4 == 0;
            if j % 5 == 0 {
                m.properties = vec![("k".into(), "v".into()), ("k".into(), "dup ü".into())];
            }
            corpus.push(m);
        }
    }
    corpus
}

fn render(result: &Result<Vec<Outbound>, PluginError>) -> String {
    serde_json::to_string(result).expect("results serialize")
}

#[test]
fn every_language_gives_byte_identical_results_over_the_corpus() {
    let rules = rules();
    let (rhai, others) = rules.split_first().unwrap();
    let corpus = corpus();
    assert!(corpus.len() >= 50, "corpus has {} messages", corpus.len());
    let mut ok = 0;
    let mut errors = 0;
    for msg in &corpus {
        let a = rhai.1.translate(msg);
        for (lang, rule) in others {
            assert_eq!(
                render(&a),
                render(&rule.translate(msg)),
                "Rhai and {lang} differ on topic {:?} payload {:?}",
                msg.topic,
                String::from_utf8_lossy(&msg.payload)
            );
        }
        match a {
            Ok(out) => {
                ok += 1;
                assert_eq!(out.len(), 1);
                assert!(out[0].message.qos <= 1, "QoS is downgraded for IoT Hub");
                assert!(!out[0].message.retain);
                assert_eq!(out[0].message.properties, msg.properties);
            }
            Err(_) => errors += 1,
        }
    }
    // The corpus exercises both the success paths and the error paths.
    assert!(ok >= 100, "{ok} translated");
    assert!(errors >= 20, "{errors} refused");
}

#[test]
fn the_example_rule_produces_the_documented_message() {
    let msg = Message::new("plant1/press7/temperature", r#"{"value":21.5}"#, 1);
    for (_, rule) in rules() {
        let out = rule.translate(&msg).expect("translates");
        assert_eq!(
            serde_json::to_string(&out[0]).unwrap(),
            r#"{"destination":{"upstream":"press7"},"topic":"devices/press7/messages/events/$.ct=application%2Fjson&$.ce=utf-8","payload":"{\"site\":\"plant1\",\"device\":\"press7\",\"measurement\":\"temperature\",\"value\":21.5}","qos":1,"retain":false}"#
        );
        // The translated payload is valid JSON holding the original fields and the topic levels.
        let body: serde_json::Value = serde_json::from_slice(&out[0].message.payload).unwrap();
        assert_eq!(body["value"], 21.5);
        assert_eq!(body["measurement"], "temperature");
    }
}

#[test]
fn non_json_payloads_travel_unchanged_with_a_property_bag() {
    let binary = vec![0u8, 159, 146, 150, 255];
    let msg = Message::new("plant 1/press7/temp °C", binary.clone(), 0);
    for (_, rule) in rules() {
        let out = rule.translate(&msg).expect("translates");
        assert_eq!(out[0].message.payload, binary);
        assert_eq!(
            out[0].message.topic,
            "devices/press7/messages/events/site=plant%201&measurement=temp%20%C2%B0C"
        );
    }
}

#[test]
fn short_topics_are_refused_with_the_same_error_in_every_language() {
    let msg = Message::new("plant1/press7", "{}", 0);
    for (_, rule) in rules() {
        let e = rule.translate(&msg).unwrap_err();
        assert_eq!(e.kind, gatehost::model::ErrorKind::InvalidInput);
        assert_eq!(
            e.message,
            "topic 'plant1/press7' does not have the form <site>/<device>/<measurement>"
        );
    }
}

/// Payloads of 64 KiB and more, up to the local broker's default packet limit (1 MiB less the
/// topic and header): binary, text and JSON. Rhai once refused blobs over 65 536 bytes.
fn large_payloads() -> Vec<(String, Vec<u8>)> {
    let binary = |n: usize| (0..n).map(|i| (i * 7 + i / 251) as u8).collect::<Vec<u8>>();
    let text = |n: usize| {
        "a line of plain text, not JSON; "
            .bytes()
            .cycle()
            .take(n)
            .collect::<Vec<u8>>()
    };
    let json = |n: usize| {
        let mut s = String::from("{\"samples\":[");
        let mut i = 0u64;
        while s.len() + 32 < n {
            s.push_str(&format!("{},", i * 1_000_003 % 99_991));
            i += 1;
        }
        s.push_str("0]}");
        s.into_bytes()
    };
    let max = 1024 * 1024 - 256;
    let mut all = Vec::new();
    for (size, name) in [
        (65_536, "64 KiB"),
        (70_000, "70 000 B"),
        (204_800, "200 KiB"),
        (max, "max"),
    ] {
        all.push((format!("binary {name}"), binary(size)));
        all.push((format!("text {name}"), text(size)));
        all.push((format!("JSON {name}"), json(size)));
    }
    all
}

#[test]
fn payloads_up_to_the_packet_limit_pass_every_language_identically() {
    let rules = rules();
    let (rhai, others) = rules.split_first().unwrap();
    for (what, payload) in large_payloads() {
        let msg = Message::new("plant1/press7/blob", payload.clone(), 1);
        let out = rhai
            .1
            .translate(&msg)
            .unwrap_or_else(|e| panic!("Rhai refused the {what} payload: {e}"));
        for (lang, rule) in others {
            let twin = rule
                .translate(&msg)
                .unwrap_or_else(|e| panic!("{lang} refused the {what} payload: {e}"));
            assert_eq!(
                serde_json::to_string(&out).unwrap(),
                serde_json::to_string(&twin).unwrap(),
                "Rhai and {lang} differ on the {what} payload"
            );
        }
        if !what.starts_with("JSON") {
            assert_eq!(out[0].message.payload, payload, "{what} travels unchanged");
        }
    }
}
