//! The provider sandbox against real clients: the official Python `azure-iot-device` SDK
//! registers through the sandbox DPS (symmetric key, group-derived key, X.509) and sends telemetry
//! to the assigned sandbox hub; gatehost's own MQTT capability exercises every refusal path.

use crate::signatures::venv_python;
use gatehost::caps::crypto;
use gatehost::sandbox::config::SandboxConfig;
use gatehost::sandbox::record::Record;
use gatehost::sandbox::Sandbox;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub const DEVICE_KEY: &str = "c2FuZGJveCBkZXZpY2Uga2V5IGZvciBkZXYwMQ==";
pub const GROUP_KEY: &str = "c2FuZGJveCBncm91cCBrZXkgZm9yIHRoZSBsaW5l";

/// A sandbox in `dir` with a tenant CA, two device certificates, and one enrollment of each kind.
pub fn start_sandbox(dir: &Path, extra: &str) -> Sandbox {
    let pki = gatehost::sandbox::pki::SandboxPki::open(&dir.join("pki")).unwrap();
    pki.new_ca("tenant-ca", "Tenant CA").unwrap();
    pki.issue("tenant-ca", "x509-group-dev", "x509-group-dev", &[])
        .unwrap();
    pki.issue("tenant-ca", "x509-single", "x509-single", &[])
        .unwrap();
    let text = format!(
        r#"
pki_dir = "pki"
[dps]
assign_delay_ms = 300
[[dps.enrollments]]
attestation = "symmetric-key"
registration_id = "sym-dev"
primary_key = "{DEVICE_KEY}"
[[dps.enrollments]]
attestation = "group-symmetric-key"
group_key = "{GROUP_KEY}"
[[dps.enrollments]]
attestation = "group-x509"
ca = "pki/tenant-ca.pem"
[[dps.enrollments]]
attestation = "x509"
registration_id = "x509-single"
certificate = "pki/x509-single.pem"
{extra}
"#
    );
    let path = dir.join("sandbox.toml");
    std::fs::write(&path, &text).unwrap();
    Sandbox::start(&SandboxConfig::load(&path).unwrap()).unwrap()
}

const SDK_CLIENT: &str = r#"
import json, sys
import paho.mqtt.client as mqtt
from azure.iot.device import IoTHubDeviceClient, Message, ProvisioningDeviceClient, X509

a = json.loads(sys.argv[1])
# The SDK always dials 8883; point it at the sandbox's ephemeral ports instead.
port = [a["dps_port"]]
paho_connect = mqtt.Client.connect
def connect(self, host, *args, **kwargs):
    kwargs["port"] = port[0]
    return paho_connect(self, host, **kwargs)
mqtt.Client.connect = connect

ca = open(a["ca"]).read()
if "key" in a:
    prov = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host="localhost", registration_id=a["id"], id_scope=a["scope"],
        symmetric_key=a["key"], server_verification_cert=ca)
else:
    x509 = X509(cert_file=a["cert"], key_file=a["cert_key"])
    prov = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host="localhost", registration_id=a["id"], id_scope=a["scope"],
        x509=x509, server_verification_cert=ca)
prov.provisioning_payload = {"site": "plant1"}
result = prov.register()
state = result.registration_state
print(json.dumps({"status": result.status, "hub": state.assigned_hub, "device": state.device_id}), flush=True)
if result.status != "assigned":
    sys.exit(0)

port[0] = a["hub_port"]
if "key" in a:
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=a["key"], hostname=state.assigned_hub, device_id=state.device_id,
        server_verification_cert=ca)
else:
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=x509, hostname=state.assigned_hub, device_id=state.device_id,
        server_verification_cert=ca)
client.connect()
msg = Message('{"temperature": 21.5}')
msg.content_type = "application/json"
msg.content_encoding = "utf-8"
msg.custom_properties["line"] = "7"
client.send_message(msg)
client.shutdown()
"#;

/// Run the SDK client; its one JSON line.
fn sdk_register(sandbox: &Sandbox, args: serde_json::Value) -> serde_json::Value {
    let mut args = args;
    args["dps_port"] = sandbox.dps_port().unwrap().into();
    args["hub_port"] = sandbox.iothub_port().unwrap().into();
    args["ca"] = sandbox.ca_file().display().to_string().into();
    args["scope"] = "0ne00SANDBOX".into();
    let out = Command::new(venv_python())
        .args(["-c", SDK_CLIENT, &args.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SDK client failed: {}\n{stdout}\nthe sandbox recorded: {:#?}",
        String::from_utf8_lossy(&out.stderr),
        sandbox.recorder.all()
    );
    serde_json::from_str(stdout.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn telemetry_of(sandbox: &Sandbox, device: &str) -> Record {
    sandbox
        .recorder
        .wait_for(Duration::from_secs(10), |r| {
            r.event == "telemetry" && r.client_id == device
        })
        .unwrap_or_else(|| panic!("no telemetry from {device}: {:#?}", sandbox.recorder.all()))
}

fn check_telemetry(t: &Record, identity: &str) {
    assert_eq!(t.identity.as_deref(), Some(identity));
    assert_eq!(t.body, br#"{"temperature": 21.5}"#);
    let props: std::collections::BTreeMap<_, _> = t.properties.iter().cloned().collect();
    assert_eq!(props["$.ct"], "application/json");
    assert_eq!(props["$.ce"], "utf-8");
    assert_eq!(props["line"], "7");
}

#[test]
fn the_official_python_sdk_registers_and_sends_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = start_sandbox(dir.path(), "");
    let pki = dir.path().join("pki");

    // Individual symmetric key.
    let got = sdk_register(
        &sandbox,
        serde_json::json!({"id": "sym-dev", "key": DEVICE_KEY}),
    );
    assert_eq!(
        got,
        serde_json::json!({"status": "assigned", "hub": "localhost", "device": "sym-dev"})
    );
    check_telemetry(&telemetry_of(&sandbox, "sym-dev"), "sas:sym-dev");

    // Group enrollment: the device key is derived from the group key.
    let derived = crypto::derive_device_key(GROUP_KEY, "line7-press").unwrap();
    let got = sdk_register(
        &sandbox,
        serde_json::json!({"id": "line7-press", "key": derived}),
    );
    assert_eq!(got["status"], "assigned");
    check_telemetry(&telemetry_of(&sandbox, "line7-press"), "sas:line7-press");

    // X.509 through the group CA, and an individually enrolled certificate.
    for name in ["x509-group-dev", "x509-single"] {
        let got = sdk_register(
            &sandbox,
            serde_json::json!({
                "id": name,
                "cert": pki.join(format!("{name}_chain.pem")),
                "cert_key": pki.join(format!("{name}.key")),
            }),
        );
        assert_eq!(got["status"], "assigned", "{name}");
        check_telemetry(&telemetry_of(&sandbox, name), &format!("x509:{name}"));
    }

    // What DPS recorded: each registration with the SDK's custom payload, and the SDK's
    // username format accepted.
    let registers = sandbox.recorder.of("dps", "register");
    assert_eq!(registers.len(), 4, "{registers:#?}");
    for r in &registers {
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["payload"], serde_json::json!({"site": "plant1"}));
        assert_eq!(body["registrationId"], r.client_id.as_str());
    }
    let assigned = sandbox.recorder.of("dps", "assigned");
    let state: serde_json::Value = serde_json::from_slice(&assigned[0].body).unwrap();
    for field in [
        "registrationId",
        "createdDateTimeUtc",
        "assignedHub",
        "deviceId",
        "status",
        "substatus",
        "lastUpdatedDateTimeUtc",
        "etag",
    ] {
        assert!(
            state.get(field).is_some(),
            "registrationState lacks {field}: {state}"
        );
    }
    assert_eq!(state["payload"], serde_json::json!({"site": "plant1"}));
}
