//! The `gatehost` command line, run as a user would.

use crate::support::{gatehost, run, wasm_dir};

pub const EXPECTED: &str = r#"{"destination":{"upstream":"press7"},"topic":"devices/press7/messages/events/$.ct=application%2Fjson&$.ce=utf-8","payload":"{\"site\":\"plant1\",\"device\":\"press7\",\"measurement\":\"temperature\",\"value\":21.5}","qos":1,"retain":false}"#;

#[test]
fn rule_test_runs_the_example_rule_in_both_engines() {
    wasm_dir();
    for rule in [
        "iothub-telemetry",
        "iothub-telemetry-wasm",
        "scripts/rules/iothub-telemetry.rhai",
    ] {
        let out = run(gatehost().args([
            "rule",
            "test",
            rule,
            "--topic",
            "plant1/press7/temperature",
            "--payload",
            r#"{"value":21.5}"#,
            "--qos",
            "1",
        ]));
        assert_eq!(out.code, 0, "{rule}: {}", out.stderr);
        assert_eq!(out.stdout.trim_end(), EXPECTED, "{rule}");
    }
}

#[test]
fn rule_test_reads_binary_payload_files_and_properties() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reading.bin");
    std::fs::write(&file, [0u8, 255, 7]).unwrap();
    let out = run(gatehost()
        .args([
            "rule",
            "test",
            "iothub-telemetry",
            "--topic",
            "a/b/c",
            "--property",
            "line=4",
        ])
        .arg("--payload-file")
        .arg(&file));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["payload"]["base64"], "AP8H");
    assert_eq!(v["properties"][0], serde_json::json!(["line", "4"]));
}

#[test]
fn rule_test_errors_are_one_sentence_and_exit_one() {
    let out = run(gatehost().args([
        "rule",
        "test",
        "no-such-rule",
        "--topic",
        "a/b/c",
        "--payload",
        "x",
    ]));
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .starts_with("gatehost: no plugin named 'no-such-rule' (available: "),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);

    let out = run(gatehost().args([
        "rule",
        "test",
        "iothub-telemetry",
        "--topic",
        "plant1",
        "--payload",
        "x",
    ]));
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr.trim_end(),
        "gatehost: rule 'iothub-telemetry' failed on topic 'plant1': topic 'plant1' does not have the form <site>/<device>/<measurement> (invalid-input)"
    );

    let out = run(gatehost().args([
        "rule",
        "test",
        "iothub-telemetry",
        "--topic",
        "a/b/c",
        "--property",
        "novalue",
    ]));
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr.trim_end(),
        "gatehost: --property 'novalue' must be KEY=VALUE"
    );

    let out = run(gatehost().args([
        "rule",
        "test",
        "iothub-telemetry",
        "--topic",
        "a/b/c",
        "--config",
        "missing.toml",
    ]));
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr.trim_end(),
        "gatehost: config file missing.toml does not exist"
    );
}

#[test]
fn check_accepts_the_quickstart_config() {
    wasm_dir();
    let out = run(gatehost().args(["check", "--config", "examples/quickstart.toml"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("ok: "), "{}", out.stdout);
    let out = run(gatehost().args(["check", "--config", "examples/quickstart.toml", "--json"]));
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["ok"], true);
}

#[test]
fn plugin_list_shows_both_engines() {
    wasm_dir();
    let out = run(gatehost().args(["plugin", "list", "--json"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let engine = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .map(|r| r["engine"].clone())
    };
    assert_eq!(engine("iothub-telemetry"), Some("rhai".into()));
    assert_eq!(engine("iothub-telemetry-wasm"), Some("wasm".into()));
}

#[test]
fn sign_commands_print_only_the_result() {
    let key = "dGhpcyBpcyBhIHRlc3Qga2V5IG9mIDMyIGJ5dGVzIQ==";
    let out = run(gatehost().args([
        "sign",
        "sas",
        "--resource",
        "0ne00055505/registrations/press7",
        "--key",
        key,
        "--policy",
        "registration",
        "--expiry",
        "1700000000",
        // A fixed, past expiry: the known token of these inputs.
        "--allow-expired",
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "SharedAccessSignature sr=0ne00055505%2Fregistrations%2Fpress7&sig=KT4PFXmE3ySltDBlUqpgLQ9j9hoFVVFn792hvcpCdUI%3D&se=1700000000&skn=registration\n"
    );
    let out = run(gatehost().args([
        "sign",
        "sas",
        "--resource",
        "r",
        "--key",
        "###",
        "--ttl",
        "60",
    ]));
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr.trim_end(),
        "gatehost: --key/--resource: SAS key is not valid base64"
    );
}

#[test]
fn derived_keys_match_the_openssl_pipeline_from_the_provider_docs() {
    let group_key = "dGhpcyBpcyBhIHRlc3Qga2V5IG9mIDMyIGJ5dGVzIQ==";
    let hex_key = hex::encode(base64_decode(group_key));
    let script = format!(
        "printf '%s' press7 | openssl sha256 -mac HMAC -macopt hexkey:{hex_key} -binary | base64"
    );
    let openssl = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        openssl.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&openssl.stderr)
    );
    let out = run(gatehost().args([
        "sign",
        "derive-key",
        "--group-key",
        group_key,
        "--registration-id",
        "press7",
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        String::from_utf8_lossy(&openssl.stdout).trim()
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    gatehost::pki::crypto::base64_decode(s).unwrap()
}

#[test]
fn run_refuses_bridge_settings_it_cannot_serve_naming_each() {
    let d = tempfile::tempdir().unwrap();
    let refusals = |config: &str| {
        std::fs::write(d.path().join("gatehost.toml"), config).unwrap();
        let out = run(gatehost()
            .arg("run")
            .arg("--config")
            .arg(d.path().join("gatehost.toml")));
        assert_eq!(out.code, 1, "{}", out.stderr);
        out.stderr
    };
    let cases: [(&str, &[&str]); 4] = [
        (
            "plugin_dirs = []\n[local]\nbroker = \"mqtt://10.0.0.5:99999\"\ntls_cert = \"a.pem\"\n[store]\nsync_interval_ms = 5000\n[metrics]\nlisten = \"nowhere\"\n",
            &[
                "local.broker 'mqtt://10.0.0.5:99999' has port '99999', not a number from 1 to 65535",
                "local.tls_cert and local.tls_key must be given together",
                "store.sync_interval_ms is 5000: at most 1000",
                "metrics.listen 'nowhere' must be an address",
            ],
        ),
        (
            "plugin_dirs = []\n[local]\nbroker = \"mqtt://10.0.0.5\"\ntls_cert = \"a.pem\"\ntls_key = \"a.key\"\nca_file = \"ca.pem\"\nclient_cert = \"gw.pem\"\nshare_group = \"a/b\"\npassword = \"p\"\n",
            &[
                "local.tls_cert, local.tls_key and local.client_ca are for the embedded broker",
                "local.ca_file is set but mqtt://10.0.0.5:1883 is not TLS (use mqtts://)",
                "local.client_cert is set but mqtt://10.0.0.5:1883 is not TLS (use mqtts://)",
                "local.client_cert and local.client_key must be given together",
                "local.share_group 'a/b' must be a non-empty name without '/', '+' or '#'",
                "local.password needs a local.username",
            ],
        ),
        (
            "plugin_dirs = []\n[local]\nbroker = \"tcp://10.0.0.5\"\nshare_group = \"g\"\n",
            &["local.broker 'tcp://10.0.0.5' is not a broker address"],
        ),
        (
            "plugin_dirs = []\n[local]\nclient_key = \"gw.key\"\nclient_ca = \"ca.pem\"\n",
            &[
                "local.client_key is for an external broker; local.broker is \"embedded\"",
                "local.client_ca needs local.tls_cert and local.tls_key",
            ],
        ),
    ];
    for (config, expected) in cases {
        let stderr = refusals(config);
        for e in expected {
            assert!(stderr.contains(e), "{e}: {stderr}");
        }
    }
}

#[test]
fn every_command_has_help_with_an_example() {
    for args in [
        vec!["run"],
        vec!["check"],
        vec!["rule", "test"],
        vec!["plugin", "list"],
        vec!["plugin", "new"],
        vec!["plugin", "pack"],
        vec!["plugin", "keygen"],
        vec!["plugin", "sign"],
        vec!["plugin", "verify"],
        vec!["plugin", "install"],
        vec!["plugin", "remove"],
        vec!["plugin", "sync"],
        vec!["sign", "sas"],
        vec!["onboard"],
        vec!["dead-letters", "list"],
        vec!["dead-letters", "replay"],
        vec!["dead-letters", "drop"],
    ] {
        let mut full = args.clone();
        full.push("--help");
        let out = run(gatehost().args(&full));
        assert_eq!(out.code, 0, "{args:?}");
        assert!(out.stdout.contains("Example"), "{args:?}: {}", out.stdout);
    }
}

#[test]
fn template_rules_run_from_the_config_and_check_names_their_mistakes() {
    let out = run(gatehost().args([
        "rule",
        "test",
        "plant2-to-iothub",
        "--config",
        "examples/quickstart.toml",
        "--topic",
        "plant2/line 7/press7/oil/temperature",
        "--payload",
        r#"{"value":21.5}"#,
        "--qos",
        "2",
        "--property",
        "unit=C",
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        r#"{"destination":{"upstream":"press7"},"topic":"devices/press7/messages/events/$.ct=application%2Fjson&$.ce=utf-8&line=line%207","payload":"{\"line\":\"line 7\",\"machine\":\"press7\",\"value\":21.5}","qos":1,"retain":false,"properties":[["unit","C"]]}"#
    );
    let out = run(gatehost().args([
        "rule",
        "test",
        "plant2-to-iothub",
        "--config",
        "examples/quickstart.toml",
        "--topic",
        "plant2/line7",
    ]));
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr.trim(),
        "gatehost: rule 'plant2-to-iothub' failed on topic 'plant2/line7': topic 'plant2/line7' does not match pattern 'plant2/{line}/{machine}/#' of rule 'plant2-to-iothub' (invalid-input)"
    );

    let d = tempfile::tempdir().unwrap();
    let config = d.path().join("gatehost.toml");
    std::fs::write(
        &config,
        "plugin_dirs = []\n[[rules]]\nname = \"t\"\n[rules.template]\npattern = \"a/{x}\"\ndevice = \"{y}\"\n[[rules]]\nname = \"u\"\nfrom = [\"a/#\"]\n",
    )
    .unwrap();
    let out = run(gatehost().args(["check", "--config"]).arg(&config));
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("rule 't': device '{y}': uses {y}, which the pattern does not capture (it captures {x})"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("rule 'u' needs `rule = \"<plugin>\"` or a [rules.template]"),
        "{}",
        out.stderr
    );
}
