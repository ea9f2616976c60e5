//! What a new user meets on the way, each found by trying gatehost as one: a closed stdout, a
//! config used from another folder, a config rule run by name, log colours in files, and the
//! generic `mqtt-broker` flow for brokers that have no flow of their own.

use crate::support::openssl::guide_leaf;
use crate::support::sandbox::start;
use crate::support::{gatehost, install_shipped_flows, run};
use gatehost::sandbox::Service;
use std::path::Path;
use std::process::{Command, Stdio};

/// Run gatehost with a stdout whose reader is already gone (as `gatehost ... | head -0`).
fn with_closed_stdout(args: &[&str], dir: &Path) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_gatehost"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_command_ends_quietly_on_a_closed_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("gatehost.toml"), "state_dir = \"state\"\n").unwrap();
    crate::support::openssl::openssl(d, &["genrsa", "-out", "k.pem", "2048"]);
    let repo = crate::support::repo_root();
    let rules = repo
        .join("scripts/rules/iothub-telemetry.rhai")
        .display()
        .to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec!["dead-letters", "list", "--json"],
        vec!["dead-letters", "list"],
        vec!["plugin", "list"],
        vec!["plugin", "list", "--json"],
        vec!["check"],
        vec![
            "sign",
            "sas",
            "--resource",
            "hub/devices/d",
            "--key",
            "a2V5",
            "--ttl",
            "60",
        ],
        vec!["certs", "key", "--alg", "p256", "--out", "new.key"],
        vec![
            "rule",
            "test",
            &rules,
            "--topic",
            "plant1/press7/t",
            "--payload",
            "{}",
        ],
        vec!["--help"],
    ];
    for args in cases {
        let (code, stderr) = with_closed_stdout(&args, d);
        for sign in ["panicked", "Broken pipe", "failed printing"] {
            assert!(!stderr.contains(sign), "{args:?}: {stderr}");
        }
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
    }
}

#[test]
fn a_config_used_from_another_folder_reads_its_paths_from_its_own_folder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sandbox = start(d);
    install_shipped_flows(d);
    // The shipped flows' file roots, as shipped: relative to the config's folder.
    let path = d.join("plugins").join("aws-iot.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("file_roots = [{:?}]", d.display().to_string()),
        r#"file_roots = ["certs", "state"]"#,
    );
    std::fs::write(&path, text).unwrap();
    let certs = d.join("certs");
    std::fs::create_dir(&certs).unwrap();
    for f in ["acme-ca.pem", "acme-ca.key"] {
        std::fs::copy(d.join(f), certs.join(f)).unwrap();
    }
    guide_leaf(&certs, "acme-ca", "thing7", "thing7");
    std::fs::copy(sandbox.ca_file(), certs.join("server-ca.pem")).unwrap();
    let config = d.join("gatehost.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\nplugin_dirs = [\"plugins\"]\n[[devices]]\nname = \"thing7\"\nflow = \"aws-iot\"\ndeadline_secs = 20\n[devices.params]\nendpoint = \"localhost\"\nport = \"{}\"\ncertificate = \"certs/thing7_chain.pem\"\nkey = \"certs/thing7.key\"\nca_file = \"certs/server-ca.pem\"\n",
            sandbox.port(Service::AwsIot).unwrap()
        ),
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = run(Command::new(env!("CARGO_BIN_EXE_gatehost"))
        .args(["onboard", "thing7", "--json", "--config"])
        .arg(&config)
        .current_dir(elsewhere.path()));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let c: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(c["client_id"], "thing7");

    // A path outside the roots is refused without a word on whether it exists.
    for missing in [
        "/etc/passwd",
        "/nonexistent/x.key",
        "certs/../../outside.key",
    ] {
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("certs/thing7.key", missing);
        std::fs::write(d.join("probe.toml"), text).unwrap();
        let out = run(Command::new(env!("CARGO_BIN_EXE_gatehost"))
            .args(["onboard", "thing7", "--force", "--config"])
            .arg(d.join("probe.toml"))
            .current_dir(elsewhere.path()));
        assert_eq!(out.code, 1, "{missing}");
        assert!(
            out.stderr.contains(&format!(
                "plugin 'aws-iot' may not read {missing}: it is outside the plugin's file roots"
            )),
            "{missing}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("No such file"), "{}", out.stderr);
    }
}

#[test]
fn rule_test_runs_any_rule_of_the_config_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rules = crate::support::repo_root().join("scripts/rules");
    std::fs::write(
        d.join("gatehost.toml"),
        format!(
            "plugin_dirs = [{:?}]\n[[rules]]\nname = \"rhai-rule\"\nrule = \"iothub-telemetry\"\nfrom = [\"plant1/#\"]\n[[rules]]\nname = \"lost\"\nrule = \"no-such-plugin\"\nfrom = [\"x/#\"]\n",
            rules.display().to_string()
        ),
    )
    .unwrap();
    let out = run(gatehost()
        .args(["rule", "test", "rhai-rule", "--config"])
        .arg(d.join("gatehost.toml"))
        .args([
            "--topic",
            "plant1/press7/temperature",
            "--payload",
            r#"{"value":21.5}"#,
            "--qos",
            "1",
        ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), crate::cli::EXPECTED);
    let out = run(gatehost()
        .args(["rule", "test", "lost", "--config"])
        .arg(d.join("gatehost.toml"))
        .args(["--topic", "x/y"]));
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .starts_with("gatehost: rule 'lost' of the config runs plugin 'no-such-plugin': "),
        "{}",
        out.stderr
    );
}

#[test]
fn log_lines_are_coloured_only_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let d = &dir.path().join("plugins");
    std::fs::create_dir(d).unwrap();
    // A broken plugin makes `plugin list` log an error line.
    std::fs::write(
        d.join("broken.toml"),
        "name = \"broken\"\nversion = \"0.1.0\"\nkind = \"rule\"\napi = \"0.1\"\n",
    )
    .unwrap();
    std::fs::write(d.join("broken.rhai"), "fn translate(msg) {").unwrap();
    let config = dir.path().join("gatehost.toml");
    std::fs::write(&config, "plugin_dirs = [\"plugins\"]\n").unwrap();
    let out = run(Command::new(env!("CARGO_BIN_EXE_gatehost"))
        .args(["plugin", "list", "--config"])
        .arg(&config)
        .env_remove("NO_COLOR"));
    assert!(out.stderr.contains("broken"), "{}", out.stderr);
    assert!(!out.stderr.contains('\u{1b}'), "{:?}", out.stderr);
}

#[test]
fn the_mqtt_broker_flow_reaches_the_brokers_an_operator_grants() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sandbox = start(d);
    install_shipped_flows(d);
    guide_leaf(d, "acme-ca", "meter9", "meter9");
    let aws = sandbox.port(Service::AwsIot).unwrap();
    let hub = sandbox.port(Service::IotHub).unwrap();
    let ca = sandbox.ca_file().display().to_string();
    let sas = run(gatehost().args([
        "sign",
        "sas",
        "--resource",
        "localhost/devices/direct01",
        "--key",
        crate::support::sandbox::DEVICE_KEY,
        "--ttl",
        "600",
    ]));
    assert_eq!(sas.code, 0, "{}", sas.stderr);
    let devices = format!(
        "[[devices]]\nname = \"meter9\"\nflow = \"mqtt-broker\"\ndeadline_secs = 10\n[devices.params]\nhost = \"localhost\"\nport = \"{aws}\"\ncertificate = \"{d}/meter9_chain.pem\"\nkey = \"{d}/meter9.key\"\nca_file = \"{ca}\"\n\
         [[devices]]\nname = \"hub-by-password\"\nflow = \"mqtt-broker\"\ndeadline_secs = 10\n[devices.params]\nhost = \"localhost\"\nport = \"{hub}\"\nclient_id = \"direct01\"\nusername = \"localhost/direct01/?api-version=2021-04-12\"\npassword = \"{}\"\nca_file = \"{ca}\"\n\
         [[devices]]\nname = \"half\"\nflow = \"mqtt-broker\"\n[devices.params]\nhost = \"localhost\"\nusername = \"u\"\n",
        sas.stdout.trim(),
        d = d.display()
    );
    let config = d.join("gatehost.toml");
    let base = "state_dir = \"state\"\nplugin_dirs = [\"plugins\"]\n";

    // Without a grant, the flow may connect nowhere.
    std::fs::write(&config, format!("{base}{devices}")).unwrap();
    let out = crate::support::gateway::gatehost_onboard(&config, "meter9", &[]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains(&format!(
            "plugin 'mqtt-broker' may not connect to localhost:{aws}"
        )),
        "{}",
        out.stderr
    );

    // The operator grants the brokers in the config; the shipped file stays as it is.
    std::fs::write(
        &config,
        format!("{base}[permissions.mqtt-broker]\nadd_endpoints = [\"localhost:{aws}\", \"localhost:{hub}\"]\nfile_roots = [\"{}\"]\n{devices}", d.display()),
    )
    .unwrap();
    let c = crate::support::gateway::onboarded(&config, "meter9", &[]);
    assert_eq!(c["client_id"], "meter9");
    assert_eq!(c["auth"], "client-certificate");
    let c = crate::support::gateway::onboarded(&config, "hub-by-password", &[]);
    assert_eq!(c["auth"], "password");
    assert_eq!(c["username"], "localhost/direct01/?api-version=2021-04-12");
    let connects = sandbox.recorder.of("aws-iot", "connect");
    assert!(
        connects.iter().any(|r| r.client_id == "meter9"),
        "{connects:#?}"
    );
    // Half a credential: one sentence, before connecting.
    let out = crate::support::gateway::gatehost_onboard(&config, "half", &[]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("password authentication needs both username and password"),
        "{}",
        out.stderr
    );
    // Limits for a plugin that is not there, and a grant that is not host:port: each named by
    // `gatehost check`.
    std::fs::write(
        &config,
        format!("{base}[limits.plugins.no-such-flow]\ntimeout_ms = 5000\n"),
    )
    .unwrap();
    let out = run(gatehost().args(["check", "--config"]).arg(&config));
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("[limits.plugins.no-such-flow]: no plugin named 'no-such-flow'"),
        "{}",
        out.stderr
    );
    std::fs::write(
        &config,
        format!("{base}[permissions.mqtt-broker]\nadd_endpoints = [\"localhost\"]\n"),
    )
    .unwrap();
    let out = run(gatehost().args(["check", "--config"]).arg(&config));
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("[permissions.mqtt-broker] add_endpoints: 'localhost' must be host:port"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_sas_token_that_would_be_expired_already_is_refused() {
    for args in [vec!["--ttl", "0"], vec!["--expiry", "1600000000"]] {
        let out = run(gatehost()
            .args([
                "sign",
                "sas",
                "--resource",
                "hub/devices/d",
                "--key",
                "a2V5a2V5a2V5",
            ])
            .args(&args));
        assert_eq!(out.code, 1, "{args:?}: {}", out.stdout);
        assert!(
            out.stderr.contains("the token would have expired already"),
            "{}",
            out.stderr
        );
        assert!(out.stdout.is_empty());
    }
    let out = run(gatehost().args([
        "sign",
        "sas",
        "--resource",
        "hub/devices/d",
        "--key",
        "a2V5a2V5a2V5",
        "--expiry",
        "1600000000",
        "--allow-expired",
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("se=1600000000"));
}

#[test]
fn pack_refuses_a_listed_file_that_links_out_of_the_plugin_folder() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("rule");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(
        src.join("linky.toml"),
        "name = \"linky\"\nversion = \"0.1.0\"\nkind = \"rule\"\napi = \"0.1\"\nfiles = [\"table.csv\"]\n",
    )
    .unwrap();
    std::fs::write(src.join("linky.rhai"), "fn translate(msg) { [] }").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("table.csv")).unwrap();
    let out = run(gatehost()
        .args(["plugin", "pack"])
        .arg(&src)
        .arg("--out")
        .arg(dir.path().join("linky.ghp")));
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("files: 'table.csv' is a link to /etc/passwd, outside the plugin's folder"),
        "{}",
        out.stderr
    );
    assert!(!dir.path().join("linky.ghp").exists());
    // A link inside the folder is fine.
    std::fs::remove_file(src.join("table.csv")).unwrap();
    std::fs::write(src.join("real.csv"), "a,b\n").unwrap();
    std::os::unix::fs::symlink("real.csv", src.join("table.csv")).unwrap();
    let out = run(gatehost()
        .args(["plugin", "pack"])
        .arg(&src)
        .arg("--out")
        .arg(dir.path().join("linky.ghp")));
    assert_eq!(out.code, 0, "{}", out.stderr);
}
