//! A plugin cannot hang or starve the host: deadlines, memory caps and traps end the call with a
//! clear error, and the plugin (and the host) keep answering afterwards.

use crate::support::{load_rule, wasm, PluginDir};
use gatehost::engine::limits::LimitOverrides;
use gatehost::model::{Destination, ErrorKind, Message};
use std::time::{Duration, Instant};

fn ok_msg() -> Message {
    Message::new("plant1/press7/temperature", "{}", 1)
}

#[test]
fn a_wasm_rule_that_loops_forever_is_stopped_by_the_deadline() {
    let dir = PluginDir::new();
    let m = dir.wasm(
        "looper",
        "rule",
        &wasm("fixture_loop_rule"),
        "[limits]\ntimeout_ms = 200",
    );
    let rule = load_rule(dir.env(), &m);
    for _ in 0..2 {
        let started = Instant::now();
        let e = rule.translate(&ok_msg()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
        assert_eq!(e.message, "did not finish within 200 ms and was stopped");
        // Generous bound: the point is that the call ends, not how fast.
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}

#[test]
fn a_wasm_rule_that_allocates_without_bound_is_stopped_by_the_memory_cap() {
    let dir = PluginDir::new();
    let m = dir.wasm(
        "hog",
        "rule",
        &wasm("fixture_memory_hog_rule"),
        "[limits]\nmemory_mib = 16",
    );
    let rule = load_rule(dir.env(), &m);
    let e = rule.translate(&ok_msg()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::LimitExceeded, "{e}");
    assert_eq!(
        e.message,
        "exceeded its memory limit of 16 MiB and was stopped"
    );
    // The poisoned instance is replaced: the next call fails the same way instead of crashing.
    let e = rule.translate(&ok_msg()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::LimitExceeded);
}

#[test]
fn a_manifest_cannot_raise_its_limits_above_the_configs() {
    // Asking for 1 GiB: the operator's 64 MiB (the default) still applies, in both engines.
    let dir = PluginDir::new();
    let m = dir.wasm(
        "greedy",
        "rule",
        &wasm("fixture_memory_hog_rule"),
        "[limits]\nmemory_mib = 1024",
    );
    let e = load_rule(dir.env(), &m).translate(&ok_msg()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::LimitExceeded, "{e}");
    assert_eq!(
        e.message,
        "exceeded its memory limit of 64 MiB and was stopped"
    );
    let m = dir.rhai(
        "greedy-rhai",
        "rule",
        "fn translate(msg) { let n = 0; loop { n += 1; } }",
        "[limits]\ntimeout_ms = 60000\nmax_operations = 1000000000000",
    );
    let started = Instant::now();
    let e = load_rule(dir.env(), &m).translate(&ok_msg()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::LimitExceeded, "{e}");
    assert!(
        e.message
            .starts_with("exceeded its limit of 1000000 operations"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // The operator can raise one plugin's ceiling in the config.
    let mut env = dir.env();
    env.plugin_limits.insert(
        "greedy".into(),
        LimitOverrides {
            memory_mib: Some(96),
            ..Default::default()
        },
    );
    let m = dir.wasm(
        "greedy",
        "rule",
        &wasm("fixture_memory_hog_rule"),
        "[limits]\nmemory_mib = 80",
    );
    let e = load_rule(env, &m).translate(&ok_msg()).unwrap_err();
    assert_eq!(
        e.message,
        "exceeded its memory limit of 80 MiB and was stopped"
    );
}

#[test]
fn a_wasm_rule_that_traps_fails_that_message_and_serves_the_next() {
    let dir = PluginDir::new();
    let m = dir.wasm("panicky", "rule", &wasm("fixture_panic_rule"), "");
    let rule = load_rule(dir.env(), &m);
    let e = rule.translate(&Message::new("panic", "x", 0)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Plugin);
    assert!(e.message.starts_with("trapped: "), "{e}");
    let out = rule
        .translate(&Message::new("fine", "x", 0))
        .expect("instance was rebuilt");
    assert_eq!(out[0].destination, Destination::Local);
    assert_eq!(out[0].message.payload, b"x");
}

#[test]
fn a_typed_error_from_a_wasm_rule_keeps_its_kind() {
    let dir = PluginDir::new();
    let m = dir.wasm("panicky", "rule", &wasm("fixture_panic_rule"), "");
    let rule = load_rule(dir.env(), &m);
    let e = rule.translate(&Message::new("error", "x", 0)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert_eq!(e.message, "the fixture was asked to fail");
}

#[test]
fn a_rhai_rule_that_loops_forever_is_stopped_by_the_deadline() {
    let dir = PluginDir::new();
    let m = dir.rhai(
        "looper",
        "rule",
        "fn translate(msg) { let n = 0; loop { n += 1; } }",
        "[limits]\ntimeout_ms = 200\nmax_operations = 1000000000000",
    );
    // The operator raised this plugin's ceiling, so the manifest's operations limit holds and
    // the deadline is what stops it.
    let mut env = dir.env();
    env.plugin_limits.insert(
        "looper".into(),
        LimitOverrides {
            max_operations: Some(1_000_000_000_000),
            ..Default::default()
        },
    );
    let rule = load_rule(env, &m);
    let e = rule.translate(&ok_msg()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert_eq!(e.message, "did not finish within 200 ms and was stopped");
}

#[test]
fn a_rhai_rule_is_stopped_by_its_operation_limit() {
    let dir = PluginDir::new();
    let m = dir.rhai(
        "counter",
        "rule",
        "fn translate(msg) { let n = 0; while true { n += 1; } }",
        "[limits]\nmax_operations = 10000",
    );
    let rule = load_rule(dir.env(), &m);
    let e = rule.translate(&ok_msg()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::LimitExceeded, "{e}");
    assert!(
        e.message
            .starts_with("exceeded its limit of 10000 operations"),
        "{e}"
    );
}

#[test]
fn a_rhai_rule_that_grows_a_string_without_bound_is_stopped_by_the_size_limit() {
    let dir = PluginDir::new();
    let m = dir.rhai(
        "strings",
        "rule",
        "fn translate(msg) { let s = \"x\"; loop { s += s; } }",
        "",
    );
    let e = load_rule(dir.env(), &m).translate(&ok_msg()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::LimitExceeded, "{e}");
    assert!(
        e.message.starts_with("Length of string exceeds its limit"),
        "{e}"
    );
    // The limit is named, and no "(none)" position dangles at the end.
    assert!(e.message.contains("(max_string_kib)"), "{e}");
    assert!(!e.message.contains("(none)"), "{e}");
}

#[test]
fn a_rhai_rule_that_grows_an_array_without_bound_is_stopped() {
    // Rhai re-measures the array on every push, so the deadline may end this before the
    // element limit does; either way the call ends with a limit error and memory stays bounded.
    let dir = PluginDir::new();
    let m = dir.rhai(
        "arrays",
        "rule",
        "fn translate(msg) { let a = []; loop { a.push(\"x\"); } }",
        "[limits]\ntimeout_ms = 300",
    );
    let rule = load_rule(dir.env(), &m);
    let e = rule.translate(&ok_msg()).unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::LimitExceeded | ErrorKind::Timeout),
        "{e}"
    );
    // The plugin still answers.
    assert!(rule.translate(&ok_msg()).is_err());
}

#[test]
fn rhai_errors_keep_their_kind_or_become_plugin_errors_with_a_position() {
    let dir = PluginDir::new();
    let m = dir.rhai(
        "thrower",
        "rule",
        r#"
fn translate(msg) {
    if msg.topic == "typed" { throw #{ kind: "not-found", message: "no such press" }; }
    if msg.topic == "text" { throw "plain text"; }
    if msg.topic == "host" { return crypto::base64_decode("%%%"); }
    let x = 1 + "a" * 2;
}
"#,
        "",
    );
    let rule = load_rule(dir.env(), &m);
    let e = rule.translate(&Message::new("typed", "", 0)).unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::NotFound, "no such press")
    );
    let e = rule.translate(&Message::new("text", "", 0)).unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::Plugin, "plain text")
    );
    let e = rule.translate(&Message::new("host", "", 0)).unwrap_err();
    assert_eq!(
        e.kind,
        ErrorKind::InvalidInput,
        "host errors keep their kind: {e}"
    );
    let e = rule.translate(&Message::new("other", "", 0)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Plugin);
    assert!(
        e.message.contains("line 6"),
        "runtime errors say where: {e}"
    );
}

#[test]
fn rhai_rules_must_return_well_formed_messages() {
    let dir = PluginDir::new();
    let cases = [
        ("42", "`translate` must return an array of messages, a message map or (), not i64"),
        ("#{ topic: \"t\" }", "outbound message 1: it needs 'upstream: \"<device>\"' or 'local: true'"),
        ("#{ local: true, topic: \"t\", qos: 7 }", "outbound message 1 has QoS 7; it must be 0, 1 or 2"),
        ("#{ local: true, topic: \"t\", qos: -1 }", "outbound message 1: 'qos' must be 0, 1 or 2, got -1"),
        ("#{ local: true, topic: \"a/#\" }", "outbound message 1 has topic 'a/#' with a wildcard or NUL; a published topic must be concrete"),
        ("[#{ local: true, topic: \"t\" }, #{ local: true, topic: \"t\", colour: 1 }]", "outbound message 2: unknown field 'colour'"),
    ];
    for (i, (ret, expected)) in cases.iter().enumerate() {
        let name = format!("shape{i}");
        let m = dir.rhai(&name, "rule", &format!("fn translate(msg) {{ {ret} }}"), "");
        let e = load_rule(dir.env(), &m).translate(&ok_msg()).unwrap_err();
        assert_eq!(e.message, *expected);
    }
    let m = dir.rhai("nothing", "rule", "fn translate(msg) { () }", "");
    assert!(load_rule(dir.env(), &m)
        .translate(&ok_msg())
        .unwrap()
        .is_empty());
}

#[test]
fn rhai_scripts_cannot_import_modules() {
    let dir = PluginDir::new();
    let m = dir.rhai(
        "importer",
        "rule",
        "fn translate(msg) { import \"/etc/passwd\" as p; () }",
        "",
    );
    let e = load_rule(dir.env(), &m).translate(&ok_msg()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Plugin);
    assert!(e.message.contains("/etc/passwd"), "{e}");
}

#[test]
fn a_wasm_rule_on_the_sdk_call_arena_keeps_every_message_intact_and_its_memory_bounded() {
    let dir = PluginDir::new();
    let m = dir.wasm(
        "arena",
        "rule",
        &wasm("fixture_arena_rule"),
        "[limits]\nmemory_mib = 16",
    );
    let rule = load_rule(dir.env(), &m);
    // Payloads from empty to larger than the arena's chunk; every tenth is kept by the plugin
    // forever, so the chunk fills and later allocations go to the system allocator. Without
    // bounded memory 3 000 calls moving up to 400 KiB each would exceed the 16 MiB cap.
    let sizes = [0usize, 1, 100, 1_000, 10_000, 100_000, 400_000];
    let mut kept = 0;
    for i in 0..3_000usize {
        let size = if i % 10 == 0 {
            64
        } else {
            sizes[i % sizes.len()]
        };
        let payload: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
        let topic = format!("t/{i}");
        let mut msg = Message::new(&topic, payload.clone(), 1);
        msg.properties = vec![("n".into(), i.to_string())];
        let out = rule
            .translate(&msg)
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
        if i % 10 == 0 {
            kept += 1;
        }
        assert_eq!(out.len(), 1);
        let got = &out[0].message;
        assert_eq!(got.topic, format!("echo/{topic}"));
        assert!(
            got.payload == payload,
            "call {i}: payload of {size} bytes changed"
        );
        assert_eq!(
            got.properties,
            vec![
                ("n".to_string(), i.to_string()),
                ("kept".to_string(), kept.to_string())
            ]
        );
    }
}
