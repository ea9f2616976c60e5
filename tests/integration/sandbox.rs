//! The provider sandbox against real clients: the official Python `azure-iot-device` SDK
//! registers through the sandbox DPS (symmetric key, group-derived key, X.509) and sends telemetry
//! to the assigned sandbox hub; gatehost's own MQTT capability exercises every refusal path.

use crate::support::python::venv_python;
use crate::support::sandbox::{ctx, options, start_sandbox, DEVICE_KEY, GROUP_KEY};
use gatehost::caps::mqtt::ConnectOptions;
use gatehost::events::Event;
use gatehost::model::ProtocolVersion;
use gatehost::pki::crypto;
use gatehost::sandbox::{Sandbox, Service};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

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
    args["dps_port"] = sandbox.port(Service::Dps).unwrap().into();
    args["hub_port"] = sandbox.port(Service::IotHub).unwrap().into();
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

fn telemetry_of(sandbox: &Sandbox, device: &str) -> Event {
    sandbox
        .recorder
        .wait_for(Duration::from_secs(10), |r| {
            r.event == "telemetry" && r.client_id == device
        })
        .unwrap_or_else(|| panic!("no telemetry from {device}: {:#?}", sandbox.recorder.all()))
}

fn check_telemetry(t: &Event, identity: &str) {
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

    // X.509 through the group CA, and an individually enrolled certificate; then a device
    // certificate made exactly as the providers' guides say (openssl x509 -req without
    // extensions: X.509 v1), through the group CA.
    crate::support::openssl::guide_leaf(&pki, "tenant-ca", "x509-guide-dev", "x509-guide-dev");
    for name in ["x509-group-dev", "x509-single", "x509-guide-dev"] {
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
    assert_eq!(registers.len(), 5, "{registers:#?}");
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

mod refusals {
    use super::*;
    use gatehost::caps::certs;
    use gatehost::caps::mqtt::MqttSession;
    use gatehost::model::{ErrorKind, Message};

    fn dps_user(id: &str) -> String {
        format!("0ne00SANDBOX/registrations/{id}/api-version=2019-03-31")
    }

    fn dps_token(id: &str, key: &str, expiry: u64) -> String {
        crypto::sas_token(
            &format!("0ne00SANDBOX/registrations/{id}"),
            key,
            Some("registration"),
            expiry,
        )
        .unwrap()
    }

    fn later() -> u64 {
        crypto::now_unix() + 3600
    }

    /// Register and return (status code, body) of the reply.
    fn register(s: &mut MqttSession, rid: &str, body: &str) -> (String, serde_json::Value) {
        s.subscribe("$dps/registrations/res/#", 1).unwrap();
        s.publish(&Message::new(
            format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}"),
            body,
            1,
        ))
        .unwrap();
        let (status, body, _) = reply(s, rid);
        (status, body)
    }

    /// The next DPS reply, which must echo `rid`: (status code, body, topic).
    fn reply(s: &mut MqttSession, rid: &str) -> (String, serde_json::Value, String) {
        let m = s
            .receive(Duration::from_secs(5))
            .unwrap()
            .expect("a DPS reply");
        let status = m
            .topic
            .strip_prefix("$dps/registrations/res/")
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        assert!(m.topic.contains(&format!("$rid={rid}")), "{}", m.topic);
        (status, serde_json::from_slice(&m.payload).unwrap(), m.topic)
    }

    fn poll(s: &mut MqttSession, rid: &str, op: &str) -> (String, serde_json::Value, String) {
        s.publish(&Message::new(
            format!(
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}"
            ),
            "",
            1,
        ))
        .unwrap();
        reply(s, rid)
    }

    #[test]
    fn dps_refuses_bad_connects_and_answers_401_to_bad_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = start_sandbox(dir.path(), "");
        let ctx = ctx(dir.path());
        let port = sandbox.port(Service::Dps).unwrap();

        let e = MqttSession::connect(&ctx, &options(&sandbox, port, "sym-dev", "sym-dev", "x"))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Refused);
        assert_eq!(
            e.message,
            "the broker refused the connection: bad user name or password"
        );
        let e = MqttSession::connect(
            &ctx,
            &options(&sandbox, port, "other", &dps_user("sym-dev"), "x"),
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "the broker refused the connection: client id rejected"
        );

        // Wrong key, expired token, wrong resource: connected, then 401 on register.
        let wrong_key = crypto::base64_encode(b"not the enrolled key");
        for (password, why) in [
            (
                dps_token("sym-dev", &wrong_key, later()),
                "the SAS signature does not match the enrolled key",
            ),
            (
                dps_token("sym-dev", DEVICE_KEY, crypto::now_unix() - 5),
                "the SAS token expired",
            ),
            (
                dps_token("someone-else", DEVICE_KEY, later()),
                "the SAS token is for resource",
            ),
        ] {
            let mut s = MqttSession::connect(
                &ctx,
                &options(&sandbox, port, "sym-dev", &dps_user("sym-dev"), &password),
            )
            .unwrap();
            let (status, body) = register(&mut s, "1", r#"{"registrationId":"sym-dev"}"#);
            assert_eq!(status, "401");
            assert_eq!(body["errorCode"], 401002);
            let refused = sandbox.recorder.wait_for(Duration::from_secs(2), |r| {
                r.event == "unauthorized" && r.detail.starts_with(why)
            });
            assert!(
                refused.is_some(),
                "{why}: {:#?}",
                sandbox.recorder.of("dps", "unauthorized")
            );
        }

        // A certificate from a CA no enrollment trusts.
        let pki = gatehost::sandbox::pki::SandboxPki::open(&dir.path().join("pki")).unwrap();
        pki.new_ca("rogue-ca", "Rogue CA").unwrap();
        pki.issue("rogue-ca", "x509-rogue", "x509-rogue", &[])
            .unwrap();
        let mut o = options(&sandbox, port, "x509-rogue", &dps_user("x509-rogue"), "");
        o.password = None;
        let key = certs::load_key(
            &ctx,
            &pki.path("x509-rogue.key").display().to_string(),
            None,
        )
        .unwrap();
        o.tls.as_mut().unwrap().client_certificate =
            Some((pki.path("x509-rogue_chain.pem").display().to_string(), key));
        let mut s = MqttSession::connect(&ctx, &o).unwrap();
        let (status, _) = register(&mut s, "9", "");
        assert_eq!(status, "401");
        assert!(sandbox
            .recorder
            .wait_for(Duration::from_secs(2), |r| r.client_id == "x509-rogue"
                && r.detail.contains("not issued by a CA"))
            .is_some());

        // A register body naming another device, and a topic DPS does not serve.
        let mut s = MqttSession::connect(
            &ctx,
            &options(
                &sandbox,
                port,
                "sym-dev",
                &dps_user("sym-dev"),
                &dps_token("sym-dev", DEVICE_KEY, later()),
            ),
        )
        .unwrap();
        let (status, _) = register(&mut s, "2", r#"{"registrationId":"someone-else"}"#);
        assert_eq!(status, "400");
        let e = s
            .publish(&Message::new("devices/sym-dev/messages/events/", "x", 1))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Closed, "{e}");
    }

    #[test]
    fn dps_walks_through_assigning_disabled_failed_and_throttling() {
        let dir = tempfile::tempdir().unwrap();
        let extra = format!(
            r#"
[[dps.enrollments]]
attestation = "symmetric-key"
registration_id = "off-dev"
primary_key = "{DEVICE_KEY}"
status = "disabled"
[[dps.enrollments]]
attestation = "symmetric-key"
registration_id = "bad-dev"
primary_key = "{DEVICE_KEY}"
fail = {{ error_code = 400209, error_message = "Custom allocation failed" }}
"#
        );
        let sandbox = start_sandbox(dir.path(), &extra);
        let ctx = ctx(dir.path());
        let port = sandbox.port(Service::Dps).unwrap();
        let session = |id: &str| {
            MqttSession::connect(
                &ctx,
                &options(
                    &sandbox,
                    port,
                    id,
                    &dps_user(id),
                    &dps_token(id, DEVICE_KEY, later()),
                ),
            )
            .unwrap()
        };

        let mut s = session("sym-dev");
        let (status, body) = register(&mut s, "r1", r#"{"registrationId":"sym-dev"}"#);
        assert_eq!(status, "202");
        assert_eq!(body["status"], "assigning");
        let op = body["operationId"].as_str().unwrap().to_string();
        let (status, body, topic) = poll(&mut s, "r2", &op);
        assert_eq!(
            (status.as_str(), body["status"].as_str()),
            ("202", Some("assigning"))
        );
        assert!(topic.ends_with("&retry-after=1"), "{topic}");
        std::thread::sleep(Duration::from_millis(350));
        let (status, body, _) = poll(&mut s, "r3", &op);
        assert_eq!(status, "200");
        assert_eq!(body["registrationState"]["assignedHub"], "localhost");
        assert_eq!(body["registrationState"]["deviceId"], "sym-dev");
        assert_eq!(body["registrationState"]["substatus"], "initialAssignment");

        // Three more polls fill the window of 5; the sixth is throttled with a retry-after.
        for i in 0..2 {
            assert_eq!(poll(&mut s, &format!("t{i}"), &op).0, "200");
        }
        assert_eq!(poll(&mut s, "t2", &op).0, "200");
        let (status, _, topic) = poll(&mut s, "t3", &op);
        assert_eq!(status, "429", "{topic}");
        assert!(topic.contains("&retry-after="), "{topic}");
        // An unknown operation is 404 (counted against the same window, so on another device).

        for (id, want) in [("off-dev", "disabled"), ("bad-dev", "failed")] {
            let mut s = session(id);
            let (_, body) = register(&mut s, "a", "");
            let op = body["operationId"].as_str().unwrap().to_string();
            std::thread::sleep(Duration::from_millis(350));
            let (status, body, _) = poll(&mut s, "b", &op);
            assert_eq!(status, "200");
            assert_eq!(body["status"], want);
            assert_eq!(body["registrationState"]["status"], want);
            if want == "failed" {
                assert_eq!(body["registrationState"]["errorCode"], 400209);
                assert_eq!(
                    body["registrationState"]["errorMessage"],
                    "Custom allocation failed"
                );
            }
            let (status, body, _) = poll(&mut s, "c", "4.no-such-operation");
            assert_eq!(status, "404", "{body}");
        }
        assert!(
            sandbox.devices.get("off-dev").is_none() && sandbox.devices.get("bad-dev").is_none()
        );
    }

    #[test]
    fn dps_replies_reach_only_the_client_that_asked() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = start_sandbox(dir.path(), "");
        let ctx = ctx(dir.path());
        let port = sandbox.port(Service::Dps).unwrap();
        let derived = crypto::derive_device_key(GROUP_KEY, "listener").unwrap();
        let mut listener = MqttSession::connect(
            &ctx,
            &options(
                &sandbox,
                port,
                "listener",
                &dps_user("listener"),
                &dps_token("listener", &derived, later()),
            ),
        )
        .unwrap();
        listener.subscribe("$dps/registrations/res/#", 1).unwrap();
        let mut asker = MqttSession::connect(
            &ctx,
            &options(
                &sandbox,
                port,
                "sym-dev",
                &dps_user("sym-dev"),
                &dps_token("sym-dev", DEVICE_KEY, later()),
            ),
        )
        .unwrap();
        assert_eq!(register(&mut asker, "x", "").0, "202");
        assert_eq!(listener.receive(Duration::from_millis(500)).unwrap(), None);
    }

    fn hub_options(sandbox: &Sandbox, device: &str, key: &str, expiry: u64) -> ConnectOptions {
        let token =
            crypto::sas_token(&format!("localhost/devices/{device}"), key, None, expiry).unwrap();
        options(
            sandbox,
            sandbox.port(Service::IotHub).unwrap(),
            device,
            &format!("localhost/{device}/?api-version=2021-04-12"),
            &token,
        )
    }

    #[test]
    fn the_hub_authenticates_records_telemetry_and_is_strict() {
        let dir = tempfile::tempdir().unwrap();
        let extra = format!("[iothub]\n[[iothub.devices]]\ndevice_id = \"direct01\"\nprimary_key = \"{DEVICE_KEY}\"\n");
        let sandbox = start_sandbox(dir.path(), &extra);
        let ctx = ctx(dir.path());

        // Refusals: unknown device, wrong key, expired token, malformed username.
        let e = MqttSession::connect(&ctx, &hub_options(&sandbox, "nobody", DEVICE_KEY, later()))
            .unwrap_err();
        assert_eq!(
            e.message,
            "the broker refused the connection: not authorized"
        );
        let wrong = crypto::base64_encode(b"wrong");
        assert_eq!(
            MqttSession::connect(&ctx, &hub_options(&sandbox, "direct01", &wrong, later()))
                .unwrap_err()
                .kind,
            ErrorKind::Refused
        );
        assert_eq!(
            MqttSession::connect(&ctx, &hub_options(&sandbox, "direct01", DEVICE_KEY, 10))
                .unwrap_err()
                .kind,
            ErrorKind::Refused
        );
        let mut o = hub_options(&sandbox, "direct01", DEVICE_KEY, later());
        o.username = Some("direct01".into());
        assert_eq!(
            MqttSession::connect(&ctx, &o).unwrap_err().message,
            "the broker refused the connection: bad user name or password"
        );
        let why: Vec<String> = sandbox
            .recorder
            .of("iothub", "refused")
            .into_iter()
            .map(|r| r.detail)
            .collect();
        assert!(
            why.iter()
                .any(|w| w == "device 'nobody' is not registered in localhost"),
            "{why:?}"
        );
        assert!(
            why.iter().any(|w| w.starts_with("the SAS token expired")),
            "{why:?}"
        );

        // Telemetry with a property bag, and a cloud-to-device message back.
        let mut s = MqttSession::connect(
            &ctx,
            &hub_options(&sandbox, "direct01", DEVICE_KEY, later()),
        )
        .unwrap();
        s.subscribe("devices/direct01/messages/devicebound/#", 1)
            .unwrap();
        s.publish(&Message::new(
            "devices/direct01/messages/events/$.ct=application%2Fjson&$.ce=utf-8&unit=%C2%B0C",
            "{\"t\":1}",
            1,
        ))
        .unwrap();
        let t = telemetry_of(&sandbox, "direct01");
        assert_eq!(
            t.properties,
            vec![
                ("$.ct".into(), "application/json".into()),
                ("$.ce".into(), "utf-8".into()),
                ("unit".into(), "°C".into())
            ]
        );
        assert!(sandbox.send_c2d("direct01", b"reboot", &[("cmd".into(), "1".into())]));
        let c2d = s
            .receive(Duration::from_secs(5))
            .unwrap()
            .expect("the C2D message");
        assert_eq!(c2d.payload, b"reboot");
        assert_eq!(c2d.topic, "devices/direct01/messages/devicebound/%24.to=%2Fdevices%2Fdirect01%2Fmessages%2FdeviceBound&cmd=1");
        // Subscriptions IoT Hub does not serve are refused.
        assert_eq!(
            s.subscribe("devices/other/#", 1).unwrap_err().kind,
            ErrorKind::Refused
        );

        // A second connection with the same client id takes over; the first is closed.
        let mut second = MqttSession::connect(
            &ctx,
            &hub_options(&sandbox, "direct01", DEVICE_KEY, later()),
        )
        .unwrap();
        assert_eq!(
            s.receive(Duration::from_secs(3)).unwrap_err().kind,
            ErrorKind::Closed
        );

        // Another topic, QoS 2 and an oversized message each close the connection.
        let e = second
            .publish(&Message::new("plant1/press7", "x", 1))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Closed, "{e}");
        let mut third = MqttSession::connect(
            &ctx,
            &hub_options(&sandbox, "direct01", DEVICE_KEY, later()),
        )
        .unwrap();
        assert_eq!(
            third
                .publish(&Message::new("devices/direct01/messages/events/", "x", 2))
                .unwrap_err()
                .kind,
            ErrorKind::Closed
        );
        let reasons: Vec<String> = sandbox
            .recorder
            .of("iothub", "disconnect")
            .into_iter()
            .map(|r| r.detail)
            .collect();
        for want in ["a newer connection with the same client id took over", "published to 'plant1/press7', which IoT Hub does not accept from device 'direct01'; closed", "published QoS 2 to 'devices/direct01/messages/events/', which is not supported; closed"] {
            assert!(sandbox.recorder.wait_for(Duration::from_secs(2), |r| r.event == "disconnect" && r.detail == want).is_some(), "{want}: {reasons:?}");
        }
        assert!(!sandbox.send_c2d("nobody", b"x", &[]));
    }

    #[test]
    fn two_hundred_devices_register_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = start_sandbox(dir.path(), "");
        let port = sandbox.port(Service::Dps).unwrap();
        let failures: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..200)
                .map(|i| {
                    let (sandbox, dir) = (&sandbox, dir.path());
                    scope.spawn(move || {
                        let id = format!("line-{i:03}");
                        let key = crypto::derive_device_key(GROUP_KEY, &id).unwrap();
                        let ctx = ctx(dir);
                        let o = options(
                            sandbox,
                            port,
                            &id,
                            &dps_user(&id),
                            &dps_token(&id, &key, later()),
                        );
                        let mut s =
                            MqttSession::connect(&ctx, &o).map_err(|e| format!("{id}: {e}"))?;
                        let (status, body) = register(&mut s, "1", "");
                        if status != "202" {
                            return Err(format!("{id}: {status} {body}"));
                        }
                        let op = body["operationId"].as_str().unwrap().to_string();
                        std::thread::sleep(Duration::from_millis(400));
                        let (status, body, _) = poll(&mut s, "2", &op);
                        if status != "200" || body["status"] != "assigned" {
                            return Err(format!("{id}: {status} {body}"));
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap().err())
                .collect()
        });
        assert!(
            failures.is_empty(),
            "{} failed, first: {}",
            failures.len(),
            failures[0]
        );
        assert_eq!(sandbox.recorder.of("dps", "assigned").len(), 200);
        assert!(sandbox.devices.get("line-199").is_some());
    }

    #[test]
    fn garbage_and_wrong_protocols_never_stop_the_sandbox() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let sandbox = start_sandbox(dir.path(), "");
        let ctx = ctx(dir.path());
        let port = sandbox.port(Service::Dps).unwrap();

        // Plain TCP garbage where TLS is expected.
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let _ = raw.read(&mut [0u8; 64]);
        // TLS, then bytes that are no MQTT packet; then a CONNECT claiming protocol level 9.
        for bytes in [
            &b"\xff\xff\xff\xff\xff\x00garbage"[..],
            &b"\x10\x0d\x00\x04MQTT\x09\x02\x00\x3c\x00\x01a"[..],
        ] {
            let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates({
                let mut roots = rustls::RootCertStore::empty();
                let pem = std::fs::read_to_string(sandbox.ca_file()).unwrap();
                for der in gatehost::pki::x509::parse_pem_certs(&pem, "ca").unwrap() {
                    roots.add(der.into()).unwrap();
                }
                roots
            })
            .with_no_client_auth();
            let conn = rustls::ClientConnection::new(
                std::sync::Arc::new(config),
                "localhost".try_into().unwrap(),
            )
            .unwrap();
            let mut tls = rustls::StreamOwned::new(
                conn,
                std::net::TcpStream::connect(("127.0.0.1", port)).unwrap(),
            );
            tls.write_all(bytes).unwrap();
            let mut answer = Vec::new();
            let _ = tls.read_to_end(&mut answer);
            if bytes[6] == 9 {
                assert_eq!(
                    answer, b"\x20\x02\x00\x01",
                    "CONNACK: unacceptable protocol version"
                );
            }
        }
        assert!(sandbox
            .recorder
            .wait_for(Duration::from_secs(2), |r| r.event == "tls-failed")
            .is_some());
        assert!(sandbox
            .recorder
            .wait_for(Duration::from_secs(2), |r| r.event == "malformed")
            .is_some());
        assert!(sandbox
            .recorder
            .wait_for(Duration::from_secs(2), |r| r.event == "refused"
                && r.detail.contains("protocol level 9"))
            .is_some());

        // MQTT 5 from gatehost's own client is refused the same way, and the sandbox still serves.
        let mut o = options(
            &sandbox,
            port,
            "sym-dev",
            &dps_user("sym-dev"),
            &dps_token("sym-dev", DEVICE_KEY, later()),
        );
        o.protocol = ProtocolVersion::Mqtt5;
        // The answer is a 3.1.1 CONNACK (return code 1), which an MQTT 5 client cannot parse.
        let e = MqttSession::connect(&ctx, &o).unwrap_err();
        assert!(
            matches!(e.kind, ErrorKind::Refused | ErrorKind::Closed),
            "{e}"
        );
        assert!(
            sandbox
                .recorder
                .wait_for(Duration::from_secs(2), |r| r.event == "refused"
                    && r.detail.contains("protocol level 5"))
                .is_some(),
            "{:#?}",
            sandbox.recorder.all()
        );
        o.protocol = ProtocolVersion::Mqtt311;
        let mut s = MqttSession::connect(&ctx, &o).unwrap();
        assert_eq!(register(&mut s, "ok", "").0, "202");
    }
}

#[test]
fn gatehost_sandbox_starts_from_a_config_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sandbox.toml");
    std::fs::write(&config, "pki_dir = \"pki\"\n[dps]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gatehost"))
        .args(["sandbox", "--json", "--for-secs", "1", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(line["dps"].as_str().unwrap().starts_with("localhost:"));
    assert!(line["iothub"].as_str().unwrap().starts_with("localhost:"));
    assert!(line["dps-rest"].as_str().unwrap().starts_with("localhost:"));
    assert!(line.get("aws-iot").is_none());
    assert!(Path::new(line["ca_file"].as_str().unwrap()).exists());

    for (text, want) in [
        ("[dps]\nport = \"x\"\n", "invalid type: string \"x\", expected u16"),
        ("[dps]\n[[dps.enrollments]]\nattestation = \"symmetric-key\"\nregistration_id = \"a\"\n", "dps.enrollments[0]: SymmetricKey attestation needs `primary_key`"),
        ("[dps]\n[[dps.enrollments]]\nattestation = \"group-symmetric-key\"\ngroup_key = \"***\"\n", "dps.enrollments[0]: the key is not valid base64"),
        ("[dps]\n[[dps.enrollments]]\nattestation = \"tpm\"\n", "unknown variant `tpm`"),
        ("colour = \"blue\"\n", "unknown field `colour`"),
        (
            "[iothub]\n[[iothub.devices]]\ndevice_id = \"d\"\n",
            "iothub.devices[0] ('d'): give exactly one of primary_key, certificate or ca",
        ),
        ("[mindconnect]\n[[mindconnect.tenants]]\nname = \"acme\"\nca = \"ca.pem\"\n", "mindconnect: name at least one broker"),
        ("[mindconnect]\neu1 = {}\n", "mindconnect: add at least one [[mindconnect.tenants]]"),
        ("[mindconnect]\neu1 = {}\n[[mindconnect.tenants]]\nname = \"ac_me\"\nca = \"ca.pem\"\n", "tenant name 'ac_me' must be 1 to 36 characters without '_'"),
        ("[mindconnect]\neu1 = {}\n[[mindconnect.tenants]]\nname = \"acme\"\nca = \"missing.pem\"\n", "missing.pem: No such file"),
        ("[aws_iot]\n[[aws_iot.things]]\nname = \"t\"\nallow = [\"a/#\"]\n", "aws_iot.things[0]: give exactly one of certificate or ca"),
        ("[aws_iot]\n[[aws_iot.things]]\ncertificate = \"t.pem\"\n", "a thing registered by certificate needs `name`"),
        ("[aws_iot]\n[[aws_iot.things]]\nca = \"ca.pem\"\nallow = [\"a/#/b\"]\n", "'a/#/b' is not a valid MQTT topic filter"),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_gatehost"))
            .args(["sandbox", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {stderr}");
        // Config errors name the config; a file it names that cannot be read names that file.
        let folder = dir.path().display().to_string();
        assert!(stderr.starts_with("gatehost: ") && stderr.contains(&folder), "{stderr}");
        assert!(stderr.contains(want), "{text}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn gatehost_run_starts_the_configured_sandbox_in_process() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sandbox.toml"),
        "pki_dir = \"pki\"\n[dps]\n",
    )
    .unwrap();
    let config = dir.path().join("gatehost.toml");
    std::fs::write(
        &config,
        "state_dir = \"state\"\nplugin_dirs = []\nsandbox = \"sandbox.toml\"\n[local]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehost"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let mut hub_port = None;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        if let Some(rest) = line.split("IoT Hub:").nth(1) {
            hub_port = rest
                .trim()
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok());
        }
        let done = line.contains("Ctrl-C stops");
        seen.push(line);
        if done {
            break;
        }
    }
    let port = hub_port.unwrap_or_else(|| panic!("no IoT Hub endpoint in {seen:#?}"));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert!(seen.iter().any(|l| l.contains("DPS (REST):")), "{seen:#?}");
    child.kill().unwrap();
    child.wait().unwrap();

    // `gatehost check` reads the sandbox config too.
    std::fs::write(dir.path().join("sandbox.toml"), "[dps]\nport = \"x\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gatehost"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sandbox: ") && stderr.contains("sandbox.toml: TOML parse error"),
        "{stderr}"
    );
}
