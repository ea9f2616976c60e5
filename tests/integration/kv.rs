//! The `kv` capability as plugins use it: what a plugin keeps is its own (a namespace another
//! plugin cannot claim), shared only between plugins of one publisher that both declare it, and
//! kept across restarts of `gatehost run`.

use crate::support::config_for;
use crate::support::gateway::{
    eventually, mosquitto_pub, payloads, rhai_rule_gateway, Gatehost, Sub,
};
use crate::support::{gatehost, run, wasm, PluginDir};
use gatehost::plugins::registry::Registry;

pub const OWNER: &str = "fn translate(msg) { kv::set(\"device-key/d1\", \"c2VjcmV0\"); certs::generate_key(\"p256\", \"k\"); [] }";

pub const THIEF: &str = "fn translate(msg) { [#{ local: true, topic: \"stolen\", payload: kv::get(\"device-key/d1\"), qos: 0, retain: false }] }";

#[test]
fn a_plugin_cannot_claim_another_plugins_kv_namespace_in_either_engine() {
    let dir = PluginDir::new();
    dir.rhai("r-owner", "rule", OWNER, "");
    dir.rhai(
        "r-thief",
        "rule",
        THIEF,
        "[permissions]\nkv_namespace = \"r-owner\"",
    );
    dir.wasm(
        "w-thief",
        "rule",
        &wasm("fixture_probe_rule"),
        "[permissions]\nkv_namespace = \"r-owner\"",
    );
    let registry = Registry::load(dir.env());
    assert!(registry.get("r-owner").is_ok());
    for thief in ["r-thief", "w-thief"] {
        let e = registry.get(thief).err().unwrap().to_string();
        assert!(
            e.contains(&format!(
                "plugin '{thief}' may not use kv namespace 'r-owner': it is plugin 'r-owner''s own"
            )),
            "{e}"
        );
    }
    // Loaded alone (`gatehost rule test PATH`), the claim is judged against what is installed.
    let e = Registry::load_path(dir.env(), &dir.path().join("r-thief.toml"))
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("it is plugin 'r-owner''s own"),
        "{e}"
    );
}

#[test]
fn only_plugins_of_one_publisher_that_both_declare_it_share_a_namespace() {
    let dir = PluginDir::new();
    let shared = "publisher = \"acme\"\n[permissions]\nkv_namespace = \"line-state\"";
    dir.rhai("acme-a", "rule", OWNER, shared);
    dir.rhai("acme-b", "rule", THIEF, shared);
    dir.rhai(
        "other-c",
        "rule",
        THIEF,
        "publisher = \"other\"\n[permissions]\nkv_namespace = \"line-state\"",
    );
    let registry = Registry::load(dir.env());
    let e = registry.get("other-c").err().unwrap().to_string();
    assert!(
        e.contains("only plugins of one publisher may share a namespace"),
        "{e}"
    );
    // (acme-a and acme-b are refused too while other-c claims their namespace: a namespace is
    // never silently shared.)
    assert!(registry.get("acme-a").is_err());

    let dir = PluginDir::new();
    dir.rhai("acme-a", "rule", OWNER, shared);
    dir.rhai("acme-b", "rule", THIEF, shared);
    let registry = Registry::load(dir.env());
    assert!(registry.get("acme-a").is_ok() && registry.get("acme-b").is_ok());
    let out = run(gatehost()
        .args(["plugin", "list", "--config"])
        .arg(config_for(&dir)));
    assert!(out.stdout.contains("kv:line-state"), "{}", out.stdout);
}

/// Counts the messages it sees in kv and publishes the count back to the local broker.
const COUNTER: &str = r#"fn translate(msg) {
    let seen = kv::get("seen");
    let n = if seen == () { 0 } else { parse_int(seen.as_string()) };
    n += 1;
    kv::set("seen", `${n}`);
    [#{ local: true, topic: "count/out", payload: `${n}`, qos: 1 }]
}
"#;

#[test]
fn what_a_rule_keeps_in_kv_is_there_after_a_restart() {
    let (dir, local, metrics, _) = rhai_rule_gateway("counter", "count/in", COUNTER);
    let d = dir.path();
    let subscribe = || {
        Sub::start(
            d,
            &[
                "-p".into(),
                local.to_string(),
                "-t".into(),
                "count/out".into(),
            ],
        )
    };

    let mut g = Gatehost::start(d, metrics);
    let sub = subscribe();
    for _ in 0..3 {
        mosquitto_pub(local, "count/in", b"x");
    }
    eventually(20, "three counts", || payloads(&sub).len() >= 3);
    assert_eq!(payloads(&sub), ["1", "2", "3"]);
    g.stop();
    drop(sub);

    let _g = Gatehost::start(d, metrics);
    let sub = subscribe();
    mosquitto_pub(local, "count/in", b"x");
    eventually(20, "the count after the restart", || {
        !payloads(&sub).is_empty()
    });
    assert_eq!(payloads(&sub), ["4"], "the count goes on from what kv kept");
}
