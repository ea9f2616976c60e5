//! `gatehost onboard` with the shipped `azure-dps` Rhai flow against the sandbox DPS: every
//! attestation registers and its connection carries telemetry to the sandbox hub; a kept
//! connection is reused across runs and `--force` registers again; bad parameters, bad keys and
//! disabled or failed enrollments are reported with the service's reason.

use crate::support::gateway::{gatehost_onboard, onboarded};
use crate::support::install_shipped_flows;
use crate::support::sandbox::{ctx, start_sandbox, DEVICE_KEY, GROUP_KEY};
use gatehost::caps::mqtt::{connection_options, MqttSession};
use gatehost::config::Config;
use gatehost::model::Message;
use gatehost::onboard::{self, Onboarded};
use gatehost::plugins::registry::{PluginEnv, Registry};
use gatehost::sandbox::{Sandbox, Service};
use std::path::Path;
use std::time::Duration;

fn write_config(dir: &Path, sandbox: &Sandbox) -> std::path::PathBuf {
    let pki = dir.join("pki");
    let common = format!(
        "id_scope = \"0ne00SANDBOX\"\ndps_host = \"localhost\"\ndps_port = \"{}\"\nhub_port = \"{}\"\nca_file = \"{}\"\n",
        sandbox.port(Service::Dps).unwrap(),
        sandbox.port(Service::IotHub).unwrap(),
        sandbox.ca_file().display()
    );
    let device = |name: &str, params: &str| {
        format!("[[devices]]\nname = \"{name}\"\nflow = \"azure-dps\"\n[devices.params]\n{common}{params}\n")
    };
    let x509 = |id: &str| {
        format!(
            "registration_id = \"{id}\"\ncertificate = \"{}\"\nkey = \"{}\"\n",
            pki.join(format!("{id}_chain.pem")).display(),
            pki.join(format!("{id}.key")).display()
        )
    };
    let text = [
        "state_dir = \"state\"\nplugin_dirs = [\"plugins\"]\n".to_string(),
        device("sym", &format!("registration_id = \"sym-dev\"\nsymmetric_key = \"{DEVICE_KEY}\"\n")),
        device("group", &format!("registration_id = \"line7-dev3\"\ngroup_key = \"{GROUP_KEY}\"\n")),
        device("single", &x509("x509-single")),
        device("member", &x509("x509-group-dev")),
        device("wrong-key", "registration_id = \"sym-dev\"\nsymmetric_key = \"d3Jvbmcga2V5\"\n"),
        device("off", &format!("registration_id = \"off-dev\"\nsymmetric_key = \"{DEVICE_KEY}\"\n")),
        device("doomed", &format!("registration_id = \"doomed-dev\"\nsymmetric_key = \"{DEVICE_KEY}\"\n")),
        "[[devices]]\nname = \"bare\"\nflow = \"azure-dps\"\n[devices.params]\nregistration_id = \"x\"\n".into(),
    ]
    .concat();
    let path = dir.join("gatehost.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const EXTRA: &str = r#"
[[dps.enrollments]]
attestation = "symmetric-key"
registration_id = "off-dev"
primary_key = "c2FuZGJveCBkZXZpY2Uga2V5IGZvciBkZXYwMQ=="
status = "disabled"
[[dps.enrollments]]
attestation = "symmetric-key"
registration_id = "doomed-dev"
primary_key = "c2FuZGJveCBkZXZpY2Uga2V5IGZvciBkZXYwMQ=="
fail = { error_code = 400209, error_message = "Custom allocation failed" }
"#;

/// Connect to the hub with the kept connection and fresh credentials, and send one message.
fn send_telemetry(dir: &Path, config_path: &Path, device: &str) -> String {
    let config = Config::load(config_path, true).unwrap();
    let text = std::fs::read_to_string(onboard::state_path(&config, device)).unwrap();
    assert!(
        !text.contains("SharedAccessSignature"),
        "a secret was kept: {text}"
    );
    let kept: Onboarded = serde_json::from_str(&text).unwrap();
    let device_config = onboard::device(&config, device).unwrap();
    let registry = Registry::load(PluginEnv::for_device(&config, &device_config, true));
    let credentials = registry
        .flow("azure-dps")
        .unwrap()
        .refresh(&kept.connection)
        .unwrap();
    let options = connection_options(&ctx(dir), &kept.connection, &credentials).unwrap();
    let mut session = MqttSession::connect(&ctx(dir), &options).unwrap();
    let topic = format!(
        "devices/{}/messages/events/source={device}",
        kept.connection.client_id
    );
    session.publish(&Message::new(topic, "21.5", 1)).unwrap();
    kept.connection.client_id
}

#[test]
fn the_azure_dps_flow_onboards_every_attestation_and_keeps_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sandbox = start_sandbox(d, EXTRA);
    install_shipped_flows(d);
    let config = write_config(d, &sandbox);
    let hub_port = sandbox.port(Service::IotHub).unwrap();

    for (device, client_id, auth, identity) in [
        ("sym", "sym-dev", "password", "sas:sym-dev"),
        ("group", "line7-dev3", "password", "sas:line7-dev3"),
        (
            "single",
            "x509-single",
            "client-certificate",
            "x509:x509-single",
        ),
        (
            "member",
            "x509-group-dev",
            "client-certificate",
            "x509:x509-group-dev",
        ),
    ] {
        let c = onboarded(&config, device, &[]);
        assert_eq!(c["registered"], true, "{c}");
        assert_eq!(c["host"], "localhost");
        assert_eq!(c["port"], hub_port);
        assert_eq!(c["client_id"], client_id);
        assert_eq!(
            c["username"],
            format!("localhost/{client_id}/?api-version=2021-04-12")
        );
        assert_eq!(c["auth"], auth);
        assert_eq!(c["attributes"]["assigned-hub"], "localhost");
        assert_eq!(c["attributes"]["device-id"], client_id);
        assert!(!c.to_string().contains("SharedAccessSignature"));

        assert_eq!(send_telemetry(d, &config, device), client_id);
        let t = sandbox
            .recorder
            .wait_for(Duration::from_secs(5), |r| {
                r.service == "iothub" && r.event == "telemetry" && r.client_id == client_id
            })
            .unwrap_or_else(|| panic!("no telemetry from {client_id}"));
        assert_eq!(t.identity.as_deref(), Some(identity));
        assert_eq!(t.body, b"21.5");
    }

    // A second onboarding reuses the kept connection; --force registers again.
    let registrations = |id: &str| {
        sandbox
            .recorder
            .of("dps", "register")
            .iter()
            .filter(|r| r.client_id == id)
            .count()
    };
    assert_eq!(registrations("sym-dev"), 1);
    assert_eq!(onboarded(&config, "sym", &[])["registered"], false);
    assert_eq!(registrations("sym-dev"), 1);
    assert_eq!(onboarded(&config, "sym", &["--force"])["registered"], true);
    assert_eq!(registrations("sym-dev"), 2);
    // A damaged state file is not trusted: the device registers again.
    let kept = onboard::state_path(&Config::load(&config, true).unwrap(), "sym");
    std::fs::write(&kept, "{ not json").unwrap();
    assert_eq!(onboarded(&config, "sym", &[])["registered"], true);
    assert_eq!(registrations("sym-dev"), 3);
    // A changed parameter registers again by itself.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen(
            "registration_id = \"sym-dev\"\nsymmetric_key",
            "payload = '{\"site\":\"plant1\"}'\nregistration_id = \"sym-dev\"\nsymmetric_key",
            1,
        ),
    )
    .unwrap();
    assert_eq!(onboarded(&config, "sym", &[])["registered"], true);
    assert_eq!(registrations("sym-dev"), 4);
}

#[test]
fn onboarding_failures_say_what_the_service_said() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sandbox = start_sandbox(d, EXTRA);
    install_shipped_flows(d);
    let config = write_config(d, &sandbox);

    for (device, want) in [
        ("bare", "missing parameters: id_scope, symmetric_key | group_key | certificate + key"),
        ("wrong-key", "DPS answered 401 to 'sym-dev' (errorCode 401002: The device is unauthorized.)"),
        ("off", "DPS registration of 'off-dev' ended 'disabled'"),
        ("doomed", "DPS registration of 'doomed-dev' ended 'failed' (errorCode 400209: Custom allocation failed)"),
        ("nobody", "no device 'nobody' in the config"),
    ] {
        let run = gatehost_onboard(&config, device, &[]);
        assert_eq!(run.code, Some(1), "{device}: {}", run.stdout);
        assert!(run.stderr.contains(want), "{device}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(!run.stderr.contains("SharedAccessSignature"));
        assert!(!onboard::state_path(&Config::load(&config, true).unwrap(), device).exists());
    }
}
